//! At-least-once consumption: acknowledging, releasing and extending deliveries
//! (`POST /ack`, `/nack`, `/extend`), a queue's settings (`/config/<q>`), and
//! moving dead letters back (`POST /redrive/<q>`).

use axum::extract::State;
use axum::response::Response;
use serde_json::{Map, Value, json};

use super::access::{self, Granted};
use super::answer;
use super::params::{Params, Queue};
use crate::AppState;
use crate::acl::Right;
use crate::broker::{QueueName, Receipt};
use crate::error::Error;
use crate::store::QueueConfig;

/// Reads a receipt parameter.
pub(super) fn receipt(text: &str) -> Result<Receipt, Error> {
    Receipt::parse(text).ok_or(Error::InvalidParameter {
        name: "receipt",
        reason: "it is not a receipt restmq gave",
    })
}

fn one_receipt(params: &Params) -> Result<Receipt, Error> {
    receipt(
        params
            .text("receipt")
            .ok_or(Error::MissingParameter("receipt"))?,
    )
}

/// `POST /ack`: acknowledges deliveries (`receipt`, repeated for a batch):
/// their messages are deleted. A stale receipt gets 409, and then none of its
/// queue's receipts is acknowledged.
pub async fn ack(
    State(state): State<AppState>,
    Granted(grant): Granted,
    params: Params,
) -> Result<Response, Error> {
    let receipts = params
        .all("receipt")
        .into_iter()
        .map(receipt)
        .collect::<Result<Vec<_>, _>>()?;
    if receipts.is_empty() {
        return Err(Error::MissingParameter("receipt"));
    }
    for receipt in &receipts {
        access::require(&grant, Right::Consume, &receipt.queue)?;
    }
    state.broker.ack(&receipts).await?;
    Ok(answer::json(&json!({ "acked": receipts.len() })))
}

/// `POST /nack`: releases a delivery (`receipt`): visible again at once, or after
/// `delay` seconds.
pub async fn nack(
    State(state): State<AppState>,
    Granted(grant): Granted,
    params: Params,
) -> Result<Response, Error> {
    let receipt = one_receipt(&params)?;
    access::require(&grant, Right::Consume, &receipt.queue)?;
    let delay = params.number("delay")?.unwrap_or(0);
    state.broker.nack(&receipt, delay).await?;
    Ok(answer::json(&json!({
        "queue": receipt.queue.as_str(),
        "key": receipt.queue.key(receipt.id),
        "released": true,
        "delay": delay,
    })))
}

/// `POST /extend`: hides a delivered message `visibility` more seconds from now.
pub async fn extend(
    State(state): State<AppState>,
    Granted(grant): Granted,
    params: Params,
) -> Result<Response, Error> {
    let receipt = one_receipt(&params)?;
    access::require(&grant, Right::Consume, &receipt.queue)?;
    let visibility = params
        .number("visibility")?
        .ok_or(Error::MissingParameter("visibility"))?;
    state.broker.extend(&receipt, visibility).await?;
    Ok(answer::json(&json!({
        "queue": receipt.queue.as_str(),
        "key": receipt.queue.key(receipt.id),
        "visibility": visibility,
    })))
}

/// The settings as answered: a flat object, the dead-letter queue by name.
fn settings(queue: &QueueName, config: &QueueConfig) -> Value {
    json!({
        "visibility": config.visibility,
        "max_receives": config.max_receives,
        "dead_letter": config.dead_letter_of(queue.as_str()),
        "max_len": config.max_len,
        "retention": config.retention,
    })
}

/// `GET /config/<q>`: the queue's settings.
pub async fn config_get(
    State(state): State<AppState>,
    Queue(queue): Queue,
) -> Result<Response, Error> {
    let config = state.broker.config(&queue).await?;
    Ok(answer::json(&settings(&queue, &config)))
}

/// `POST /config/<q>`: changes the settings named in a JSON object (the body,
/// or the form field `body`); the others stay. Answers the new settings.
pub async fn config_set(
    State(state): State<AppState>,
    Queue(queue): Queue,
    params: Params,
) -> Result<Response, Error> {
    let source: &[u8] = match params.text("body") {
        Some(text) => text.as_bytes(),
        None if !params.is_form() => &params.body,
        None => return Err(Error::MissingParameter("body")),
    };
    let changes: Value =
        serde_json::from_slice(source).map_err(|e| Error::MalformedJson(e.to_string()))?;
    let Value::Object(changes) = changes else {
        return Err(Error::MalformedJson(
            "the settings must be a JSON object".into(),
        ));
    };
    let mut config = state.broker.config(&queue).await?;
    apply(&mut config, &changes)?;
    state.broker.set_config(&queue, config.clone()).await?;
    Ok(answer::json(&settings(&queue, &config)))
}

/// Applies the named settings; an unknown name or a wrong type gets 400.
fn apply(config: &mut QueueConfig, changes: &Map<String, Value>) -> Result<(), Error> {
    let number = |name: &'static str, value: &Value| {
        value.as_u64().ok_or(Error::InvalidParameter {
            name,
            reason: "it must be a non-negative integer",
        })
    };
    for (name, value) in changes {
        match name.as_str() {
            "visibility" => config.visibility = number("visibility", value)?,
            "max_receives" => config.max_receives = number("max_receives", value)?,
            "max_len" => config.max_len = number("max_len", value)?,
            "retention" => config.retention = number("retention", value)?,
            "dead_letter" => {
                config.dead_letter = match value {
                    Value::Null => None,
                    Value::String(name) => Some(name.clone()),
                    _ => {
                        return Err(Error::InvalidParameter {
                            name: "dead_letter",
                            reason: "it must be a queue name or null",
                        });
                    }
                };
            }
            _ => {
                return Err(Error::InvalidParameter {
                    name: "settings",
                    reason: "known settings are visibility, max_receives, dead_letter, max_len and retention",
                });
            }
        }
    }
    Ok(())
}

/// `POST /redrive/<q>`: moves every message of the queue's dead-letter queue
/// back to the queue's tail.
pub async fn redrive(
    State(state): State<AppState>,
    Queue(queue): Queue,
) -> Result<Response, Error> {
    let (from, moved) = state.broker.redrive(&queue).await?;
    Ok(answer::json(&json!({
        "queue": queue.as_str(),
        "from": from,
        "moved": moved,
    })))
}
