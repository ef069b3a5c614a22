//! `POST /collectd/data` and `POST /collectd/event`: what collectd's
//! `write_http` plugin (and a `NotificationExec` script's `curl`) sends, into
//! the queues `collectd_data` and `collectd_event`. The payloads are read by
//! [`crate::adapters::collectd`]; the answer is the message's key, as for
//! `POST /q/<q>`.

use axum::extract::{Request, State};
use axum::response::Response;

use super::answer::text_line;
use super::params::{self, Params};
use crate::AppState;
use crate::adapters::collectd::{self, DATA_QUEUE, EVENT_QUEUE, PayloadError};
use crate::broker::QueueName;
use crate::error::Error;
use crate::store::NewMessage;

/// Value lists: PUTVAL lines (`text/plain`, `Format Command`) or collectd's
/// JSON (`application/json`, `Format JSON`).
pub async fn data(State(state): State<AppState>, request: Request) -> Result<Response, Error> {
    let (query, media_type, body) = read(&state, request).await?;
    let value = match media_type.as_deref() {
        Some("text/plain") => {
            let now = crate::store::now_millis() as f64 / 1000.0;
            collectd::putval_lines(body.trim(), now)
                .map_err(invalid)?
                .to_string()
        }
        Some("application/json") => {
            collectd::json_data(&body).map_err(invalid)?;
            body.trim().to_owned()
        }
        Some(other) => return Err(unsupported(other)),
        None => return Err(unsupported("none")),
    };
    publish(&state, DATA_QUEUE, value, &query).await
}

/// Notifications: collectd's text form (`Key: value` headers, a blank line,
/// the message), whatever the Content-Type says (a script posting with
/// `curl -d` sends a form's), or collectd's JSON (`application/json`).
pub async fn event(State(state): State<AppState>, request: Request) -> Result<Response, Error> {
    let (query, media_type, body) = read(&state, request).await?;
    let value = match media_type.as_deref() {
        Some("application/json") => {
            collectd::json_event(&body).map_err(invalid)?;
            body.trim().to_owned()
        }
        Some(_) | None => collectd::notification(&body).map_err(invalid)?.to_string(),
    };
    publish(&state, EVENT_QUEUE, value, &query).await
}

/// The query's parameters, the body's media type and the body as text.
async fn read(
    state: &AppState,
    request: Request,
) -> Result<(Params, Option<String>, String), Error> {
    let query = Params::from_query(request.uri().query().unwrap_or(""))?;
    let media_type = params::media_type(request.headers());
    let body = params::body(request.into_body(), state).await?;
    let body = String::from_utf8(Vec::from(body)).map_err(|_| Error::InvalidParameter {
        name: "body",
        reason: "it is not valid UTF-8",
    })?;
    Ok((query, media_type, body))
}

async fn publish(
    state: &AppState,
    queue: &str,
    value: String,
    query: &Params,
) -> Result<Response, Error> {
    let callback = query.callback()?;
    let queue = QueueName::parse(queue)?;
    let id = state
        .broker
        .publish(
            &queue,
            NewMessage {
                value,
                ttl: None,
                delay: None,
            },
        )
        .await?;
    Ok(text_line(&queue.key(id), callback.as_ref()))
}

fn invalid(error: PayloadError) -> Error {
    Error::InvalidBody(format!("not a collectd payload: {error}"))
}

fn unsupported(media_type: &str) -> Error {
    Error::UnsupportedMediaType(format!(
        "{media_type}: collectd data is text/plain (Format Command) or application/json (Format JSON)"
    ))
}
