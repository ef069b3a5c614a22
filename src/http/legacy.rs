//! The original RestMQ's routes: `/`, `/q/<q>`, `/q/`, `/p/<q>`, `/control/<q>`
//! and `/j/<q>`, with the original's parameters and answer shapes.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::time::Duration;

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

use super::access::{self, Granted};
use super::answer::{self, control, json_line, text_line, written_json_line};
use super::params::{Params, Queue, wants_json};
use super::ui;
use crate::AppState;
use crate::acl::Right;
use crate::broker::QueueName;
use crate::error::Error;
use crate::store::{Message, NewMessage, Policy, Status};

/// A popped message: `{"key","value","count":0}`.
#[derive(Serialize)]
struct Popped<'a> {
    key: String,
    value: &'a str,
    count: u64,
}

impl<'a> Popped<'a> {
    fn new(queue: &QueueName, message: &'a Message) -> Popped<'a> {
        Popped {
            key: queue.key(message.id),
            value: &message.value,
            count: 0,
        }
    }
}

/// `{"queue","status"}`: the status is a number (1, 0) or null when never set.
#[derive(Serialize)]
struct QueueStatus<'a> {
    queue: &'a str,
    status: Option<u8>,
}

/// `GET /`: pops from `queue=`, answering 404 when it is empty; without `queue`,
/// redirects to the dashboard.
pub async fn index(
    State(state): State<AppState>,
    Granted(grant): Granted,
    params: Params,
) -> Result<Response, Error> {
    let callback = params.callback()?;
    let Some(queue) = params.raw("queue") else {
        return Ok(answer::found("/static/index.html"));
    };
    let queue = QueueName::parse(queue.trim())?;
    access::require(&grant, Right::Consume, &queue)?;
    match state.broker.pop(&queue).await? {
        Some(message) => Ok(json_line(&Popped::new(&queue, &message), callback.as_ref())),
        None => Err(Error::EmptyQueue),
    }
}

/// `POST /`: publishes `msg` or `value` to `queue=`.
pub async fn index_publish(
    State(state): State<AppState>,
    Granted(grant): Granted,
    params: Params,
) -> Result<Response, Error> {
    let queue = params
        .text("queue")
        .ok_or(Error::MissingParameter("queue"))?;
    let queue = QueueName::parse(queue)?;
    access::require(&grant, Right::Publish, &queue)?;
    publish(&state, &queue, &params).await
}

/// `POST /q/<q>`: publishes `msg` or `value` (msg wins), with an optional `ttl`.
pub async fn queue_publish(
    State(state): State<AppState>,
    Queue(queue): Queue,
    params: Params,
) -> Result<Response, Error> {
    publish(&state, &queue, &params).await
}

async fn publish(state: &AppState, queue: &QueueName, params: &Params) -> Result<Response, Error> {
    let callback = params.callback()?;
    let ttl = params.number("ttl")?;
    let delay = params.number("delay")?;
    let values = message_values(params)?;
    let messages = values
        .into_iter()
        .map(|value| NewMessage { value, ttl, delay })
        .collect();
    let ids = state.broker.publish_batch(queue, messages).await?;
    if let [id] = ids[..] {
        return Ok(text_line(&queue.key(id), callback.as_ref()));
    }
    let keys: Vec<String> = ids.iter().map(|&id| queue.key(id)).collect();
    Ok(match &callback {
        Some(_) => json_line(&keys, callback.as_ref()),
        None => answer::lines(&keys),
    })
}

/// The messages a publish carries: `msg`, or every `value` field, of a form;
/// one per line of an `application/x-ndjson` body; any other body, as is.
fn message_values(params: &Params) -> Result<Vec<String>, Error> {
    if !params.is_form() {
        let body = std::str::from_utf8(&params.body).map_err(|_| Error::InvalidParameter {
            name: "body",
            reason: "it is not valid UTF-8",
        })?;
        let ndjson = matches!(
            params.media_type.as_deref(),
            Some("application/x-ndjson" | "application/ndjson" | "application/jsonl")
        );
        let values: Vec<String> = if ndjson {
            body.lines()
                .map(|line| line.strip_suffix('\r').unwrap_or(line))
                .filter(|line| !line.trim().is_empty())
                .map(str::to_owned)
                .collect()
        } else if body.is_empty() {
            Vec::new()
        } else {
            vec![body.to_owned()]
        };
        return if values.is_empty() {
            Err(Error::MissingParameter("value"))
        } else {
            Ok(values)
        };
    }
    // The original took `msg or value`: msg, when not empty, wins.
    if let Some(msg) = params.text("msg") {
        return Ok(vec![msg.to_owned()]);
    }
    let values: Vec<&str> = params.all("value").into_iter().map(str::trim).collect();
    if values.is_empty() || values.iter().any(|v| v.is_empty()) {
        return Err(Error::MissingParameter("value"));
    }
    Ok(values.into_iter().map(str::to_owned).collect())
}

/// Most messages one `GET /q/<q>?max=` returns.
const MAX_BATCH: u64 = 1000;

/// A message taken by a GET: `{"key","value","count"}`, with `"receipt"` when
/// received with a visibility timeout (then `count` is the deliveries so far).
struct Taken {
    key: String,
    value: String,
    count: u64,
    receipt: Option<String>,
}

impl Taken {
    /// Room for the JSON form besides the key and value.
    const FRAME: usize = 64;

    /// Appends its JSON form to `out`.
    fn write(&self, out: &mut String) {
        crate::json::open_message(out, &self.key, &self.value);
        // A plain pop's count is 0: no formatting for it.
        if self.count == 0 {
            out.push_str(",\"count\":0");
        } else {
            // Writing to a String cannot fail.
            let _ = write!(out, ",\"count\":{}", self.count);
        }
        if let Some(receipt) = &self.receipt {
            out.push_str(",\"receipt\":");
            crate::json::push_str(out, receipt);
        }
        out.push('}');
    }

    /// The JSON form of one taken message, with room left for the line's end.
    fn one(&self) -> String {
        let mut out = String::with_capacity(self.key.len() + self.value.len() + Self::FRAME);
        self.write(&mut out);
        out
    }

    /// The JSON array of `taken`.
    fn array(taken: &[Taken]) -> String {
        let size = taken
            .iter()
            .map(|t| t.key.len() + t.value.len() + Self::FRAME)
            .sum::<usize>();
        let mut out = String::with_capacity(size + 4);
        out.push('[');
        for (i, one) in taken.iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            one.write(&mut out);
        }
        out.push(']');
        out
    }
}

/// `GET /q/<q>`: pops the head of the queue; 204 when it is empty. With
/// `visibility=S` the message is received instead (hidden for S seconds, with a
/// receipt to acknowledge it); with `max=K` up to K messages come as a JSON
/// array; with `wait=S` an empty queue is waited on for up to S seconds.
pub async fn queue_pop(
    State(state): State<AppState>,
    Queue(queue): Queue,
    params: Params,
) -> Result<Response, Error> {
    let callback = params.callback()?;
    let visibility = params.number("visibility")?;
    let max = params.number("max")?;
    let wait = params.number("wait")?.unwrap_or(0);
    if let Some(max) = max {
        if !(1..=MAX_BATCH).contains(&max) {
            return Err(Error::InvalidParameter {
                name: "max",
                reason: "it must be from 1 to 1000",
            });
        }
    }
    if wait > state.max_wait {
        return Err(Error::InvalidParameter {
            name: "wait",
            reason: "it is longer than the server's --max-wait",
        });
    }
    let count = usize::try_from(max.unwrap_or(1)).unwrap_or(1);
    let take = || async {
        match visibility {
            Some(seconds) => Ok(state
                .broker
                .receive(&queue, count, Some(seconds))
                .await?
                .into_iter()
                .map(|(received, receipt)| Taken {
                    key: queue.key(received.message.id),
                    value: received.message.value,
                    count: u64::from(received.delivery),
                    receipt: Some(receipt.to_string()),
                })
                .collect()),
            None => Ok(state
                .broker
                .pop_many(&queue, count)
                .await?
                .into_iter()
                .map(|message| Taken {
                    key: queue.key(message.id),
                    value: message.value,
                    count: 0,
                    receipt: None,
                })
                .collect::<Vec<Taken>>()),
        }
    };
    let taken = if wait > 0 {
        state
            .broker
            .wait_for(&queue, Duration::from_secs(wait), take)
            .await?
    } else {
        take().await?
    };
    if max.is_some() {
        return Ok(written_json_line(Taken::array(&taken), callback.as_ref()));
    }
    match taken.first() {
        Some(one) => Ok(written_json_line(one.one(), callback.as_ref())),
        None => Ok(StatusCode::NO_CONTENT.into_response()),
    }
}

/// `DELETE /q/<q>`: purges the queue; status 1 when messages were waiting.
pub async fn queue_purge(
    State(state): State<AppState>,
    Queue(queue): Queue,
    params: Params,
) -> Result<Response, Error> {
    let callback = params.callback()?;
    let purged = state.broker.purge(&queue).await?;
    let answer = QueueStatus {
        queue: queue.as_str(),
        status: Some(u8::from(purged)),
    };
    Ok(json_line(&answer, callback.as_ref()))
}

/// `GET /q/`: the queue list, as HTML links, or JSON for `Accept: application/json`.
pub async fn queue_list(
    State(state): State<AppState>,
    headers: HeaderMap,
) -> Result<Response, Error> {
    let queues = state.broker.queues().await?;
    let names: Vec<&str> = queues.iter().map(|(name, _)| name.as_str()).collect();
    if wants_json(&headers) {
        let count = names.len();
        return Ok(answer::json(
            &serde_json::json!({ "queues": names, "count": count }),
        ));
    }
    Ok(answer::html(ui::queue_list_page("q", &names)))
}

/// `GET /p/<q>`: the queue's policy name, `unknown` when never set.
pub async fn policy_get(
    State(state): State<AppState>,
    Queue(queue): Queue,
    params: Params,
) -> Result<Response, Error> {
    let callback = params.callback()?;
    let policy = state.broker.queue(&queue).await?.and_then(|q| q.policy);
    let answer = serde_json::json!({
        "queue": queue.as_str(),
        "value": policy.map_or("unknown", Policy::name),
    });
    Ok(json_line(&answer, callback.as_ref()))
}

/// `POST /p/<q>`: sets the policy; `OK`, or `null` for an unknown policy.
pub async fn policy_set(
    State(state): State<AppState>,
    Queue(queue): Queue,
    params: Params,
) -> Result<Response, Error> {
    let callback = params.callback()?;
    let name = params
        .text("policy")
        .ok_or(Error::MissingParameter("policy"))?;
    match Policy::from_name(name) {
        Some(policy) => {
            state.broker.set_policy(&queue, policy).await?;
            Ok(text_line("OK", callback.as_ref()))
        }
        None => Ok(json_line(&serde_json::Value::Null, callback.as_ref())),
    }
}

/// `GET /control/<q>`: the queue's status (null when never used).
pub async fn control_get(
    State(state): State<AppState>,
    Queue(queue): Queue,
) -> Result<Response, Error> {
    let status = state.broker.queue(&queue).await?.and_then(|q| q.status);
    let answer = serde_json::json!({
        "redis": state.broker.describe(),
        "queue": queue.as_str(),
        "status": QueueStatus { queue: queue.as_str(), status: status.map(Status::code) },
    });
    Ok(control(&answer, None))
}

/// `GET /control/`: the status of every queue.
pub async fn control_list(State(state): State<AppState>) -> Result<Response, Error> {
    let queues = state.broker.queues().await?;
    let all: BTreeMap<&str, QueueStatus> = queues
        .iter()
        .map(|(name, info)| {
            let status = QueueStatus {
                queue: name,
                status: info.status.map(Status::code),
            };
            (name.as_str(), status)
        })
        .collect();
    let answer = serde_json::json!({
        "redis": state.broker.describe(),
        "queues": all,
        "count": all.len(),
    });
    Ok(control(&answer, None))
}

/// `POST /control/<q>`: `status=start` or `status=stop` streaming delivery.
pub async fn control_set(
    State(state): State<AppState>,
    Queue(queue): Queue,
    params: Params,
) -> Result<Response, Error> {
    let callback = params.callback()?;
    let status = match params.text("status") {
        Some("start") => Status::Started,
        Some("stop") => Status::Stopped,
        // The original printed Python's None for a missing status.
        other => {
            let stat = format!("invalid status: {}", other.unwrap_or("None"));
            return Ok(control(
                &serde_json::json!({ "stat": stat }),
                callback.as_ref(),
            ));
        }
    };
    state.broker.set_status(&queue, status).await?;
    let stat = QueueStatus {
        queue: queue.as_str(),
        status: Some(status.code()),
    };
    Ok(control(
        &serde_json::json!({ "stat": stat }),
        callback.as_ref(),
    ))
}

/// `GET /j/<q>`: an HTML page of the queue's latest messages and counts.
pub async fn job_view(
    State(state): State<AppState>,
    Queue(queue): Queue,
) -> Result<Response, Error> {
    let info = state.broker.queue(&queue).await?.unwrap_or_default();
    let latest = state.broker.latest(&queue, ui::JOB_VIEW_ITEMS).await?;
    Ok(answer::html(ui::job_page(&queue, &info, &latest)))
}

/// A route family's prefix without a queue name (`/p/`, `/j/`, `POST /control/`).
pub async fn no_queue() -> Error {
    Error::InvalidQueueName("it is empty")
}
