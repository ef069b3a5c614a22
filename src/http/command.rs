//! The JSON command protocol of `POST /queue`: `add`, `get` (peek), `take`,
//! `del`, and for at-least-once consumption `receive`, `ack`, `nack`, `extend`.
//!
//! The command comes in the form field `msg` or `body` (msg wins), or as the
//! whole body when it is sent as `application/json`. Like the original, a command
//! that cannot be carried out answers 200 with `{"error": ...}`; only a body that
//! is no command at all gets a 400.

use axum::extract::State;
use axum::response::Response;
use serde::Serialize;
use serde_json::{Map, Value};

use super::access::{self, Granted};
use super::answer::{self, found};
use super::params::Params;
use crate::AppState;
use crate::acl::{Grant, Right};
use crate::broker::QueueName;
use crate::error::Error;
use crate::store::NewMessage;

type Command = Map<String, Value>;

/// `GET /queue`: the original sent browsers to a help page with a form.
pub async fn help() -> Response {
    found("/static/help.html")
}

/// `POST /queue`: runs one JSON command.
pub async fn run(
    State(state): State<AppState>,
    Granted(grant): Granted,
    params: Params,
) -> Result<Response, Error> {
    let source: &[u8] = match params.text("msg").or_else(|| params.text("body")) {
        Some(text) => text.as_bytes(),
        None if params.media_type.as_deref() == Some("application/json") => &params.body,
        None => return Err(Error::MissingParameter("body")),
    };
    let command: Value =
        serde_json::from_slice(source).map_err(|e| Error::MalformedJson(e.to_string()))?;
    let Value::Object(command) = command else {
        return Err(Error::MalformedJson(
            "the command must be a JSON object".into(),
        ));
    };
    let name = match command.get("cmd") {
        Some(Value::String(name)) if !name.is_empty() => name.as_str(),
        _ => {
            return Err(Error::MalformedJson(
                "the command needs a non-empty string \"cmd\"".into(),
            ));
        }
    };
    authorize(&grant, name, &command)?;
    let answer = match name {
        "add" => add(&state, &command).await,
        "get" => get(&state, &command).await,
        "take" => take(&state, &command).await,
        "del" => del(&state, &command).await,
        "receive" => receive(&state, &command).await,
        "ack" => ack(&state, &command).await,
        "nack" => nack(&state, &command).await,
        "extend" => extend(&state, &command).await,
        _ => Ok(soft_error("null resultset")),
    }?;
    Ok(answer::json(&answer))
}

/// Settles a delivery as a WebSocket client asks: `ack`, `nack` or `extend`,
/// answered as the JSON protocol answers them.
pub(super) async fn settle(
    state: &AppState,
    grant: &Grant,
    command: &Command,
) -> Result<Value, Error> {
    if let Some(name) = command.get("cmd").and_then(Value::as_str) {
        authorize(grant, name, command)?;
    }
    match command.get("cmd").and_then(Value::as_str) {
        Some("ack") => ack(state, command).await,
        Some("nack") => nack(state, command).await,
        Some("extend") => extend(state, command).await,
        _ => Ok(soft_error("the command must be ack, nack or extend")),
    }
}

/// Checks that `grant` may run the command on the queue it names, or on the
/// queues of its receipts. What cannot be read is left to the command, which
/// refuses it.
fn authorize(grant: &Grant, name: &str, command: &Command) -> Result<(), Error> {
    let right = match name {
        "add" => Right::Publish,
        "get" | "take" | "del" | "receive" | "ack" | "nack" | "extend" => Right::Consume,
        _ => return Ok(()),
    };
    if let Ok(Ok(queue)) = queue_field(command) {
        access::require(grant, right, &queue)?;
    }
    let receipts = command
        .get("receipts")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .chain(command.get("receipt"))
        .filter_map(Value::as_str)
        .filter_map(|text| super::reliable::receipt(text).ok());
    for receipt in receipts {
        access::require(grant, right, &receipt.queue)?;
    }
    Ok(())
}

fn soft_error(message: &str) -> Value {
    serde_json::json!({ "error": message })
}

/// An answer as a JSON value; our answer types hold only strings and numbers.
fn to_value<T: Serialize>(answer: &T) -> Value {
    serde_json::to_value(answer).unwrap_or(Value::Null)
}

/// A required non-empty string field, or the message of the soft error to answer.
fn string_field<'a>(command: &'a Command, name: &str) -> Result<&'a str, String> {
    match command.get(name) {
        Some(Value::String(s)) if !s.is_empty() => Ok(s),
        Some(Value::String(_)) | None | Some(Value::Null) => Err(format!("missing field: {name}")),
        Some(_) => Err(format!("field {name} must be a string")),
    }
}

/// The command's `queue`: missing is a soft error, an invalid name a 400.
fn queue_field(command: &Command) -> Result<Result<QueueName, String>, Error> {
    match string_field(command, "queue") {
        Ok(name) => QueueName::parse(name).map(Ok),
        Err(soft) => Ok(Err(soft)),
    }
}

macro_rules! field {
    ($e:expr) => {
        match $e {
            Ok(v) => v,
            Err(soft) => return Ok(soft_error(&soft)),
        }
    };
}

/// The answer of `add` and `take`.
#[derive(Serialize)]
struct Entry<'a> {
    queue: &'a str,
    value: &'a str,
    key: String,
}

async fn add(state: &AppState, command: &Command) -> Result<Value, Error> {
    let queue = field!(queue_field(command)?);
    let value = field!(string_field(command, "value"));
    let ttl = match command.get("ttl") {
        None | Some(Value::Null) => None,
        Some(ttl) => Some(ttl.as_u64().ok_or(Error::InvalidParameter {
            name: "ttl",
            reason: "it must be a non-negative integer",
        })?),
    };
    let message = NewMessage {
        value: value.to_owned(),
        ttl,
        delay: None,
    };
    let id = state.broker.publish(&queue, message).await?;
    Ok(to_value(&Entry {
        queue: queue.as_str(),
        value,
        key: queue.key(id),
    }))
}

#[derive(Serialize)]
struct Peeked<'a> {
    queue: &'a str,
    value: &'a str,
    key: String,
    count: u64,
}

async fn get(state: &AppState, command: &Command) -> Result<Value, Error> {
    let queue = field!(queue_field(command)?);
    match state.broker.peek(&queue).await? {
        Some((message, count)) => Ok(to_value(&Peeked {
            queue: queue.as_str(),
            value: &message.value,
            key: queue.key(message.id),
            count,
        })),
        None => Ok(soft_error("empty queue")),
    }
}

async fn take(state: &AppState, command: &Command) -> Result<Value, Error> {
    let queue = field!(queue_field(command)?);
    match state.broker.pop(&queue).await? {
        Some(message) => Ok(to_value(&Entry {
            queue: queue.as_str(),
            value: &message.value,
            key: queue.key(message.id),
        })),
        None => Ok(soft_error("empty queue")),
    }
}

#[derive(Serialize)]
struct Deleted<'a> {
    queue: &'a str,
    deleted: bool,
    key: &'a str,
}

async fn del(state: &AppState, command: &Command) -> Result<Value, Error> {
    let queue = field!(queue_field(command)?);
    let key = field!(string_field(command, "key"));
    let deleted = state.broker.delete(&queue, key).await?;
    Ok(to_value(&Deleted {
        queue: queue.as_str(),
        deleted,
        key,
    }))
}

/// An optional non-negative integer field; a wrong type gets 400.
fn number_field(command: &Command, name: &'static str) -> Result<Option<u64>, Error> {
    match command.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(value) => value.as_u64().map(Some).ok_or(Error::InvalidParameter {
            name,
            reason: "it must be a non-negative integer",
        }),
    }
}

#[derive(Serialize)]
struct ReceivedAnswer<'a> {
    queue: &'a str,
    value: String,
    key: String,
    count: u32,
    receipt: String,
}

/// `receive`: like `get`, but the message is hidden for `visibility` seconds
/// (the queue's setting by default) and comes with a receipt; with `max`, an
/// array of up to `max` messages.
async fn receive(state: &AppState, command: &Command) -> Result<Value, Error> {
    let queue = field!(queue_field(command)?);
    let visibility = number_field(command, "visibility")?;
    let max = number_field(command, "max")?;
    if max.is_some_and(|max| !(1..=1000).contains(&max)) {
        return Err(Error::InvalidParameter {
            name: "max",
            reason: "it must be from 1 to 1000",
        });
    }
    let count = usize::try_from(max.unwrap_or(1)).unwrap_or(1);
    let received = state.broker.receive(&queue, count, visibility).await?;
    if received.is_empty() {
        return Ok(soft_error("empty queue"));
    }
    let answers: Vec<ReceivedAnswer> = received
        .into_iter()
        .map(|(r, receipt)| ReceivedAnswer {
            queue: queue.as_str(),
            key: queue.key(r.message.id),
            value: r.message.value,
            count: r.delivery,
            receipt: receipt.to_string(),
        })
        .collect();
    match (max, answers.first()) {
        (None, Some(one)) => Ok(to_value(one)),
        _ => Ok(to_value(&answers)),
    }
}

/// The command's receipt; missing is a soft error, one restmq never gave a 400.
fn receipt_field(command: &Command) -> Result<Result<crate::broker::Receipt, String>, Error> {
    match string_field(command, "receipt") {
        Ok(text) => super::reliable::receipt(text).map(Ok),
        Err(soft) => Ok(Err(soft)),
    }
}

/// A stale receipt is a soft error here, as the protocol answers failures.
fn settled(outcome: Result<(), Error>, success: Value) -> Result<Value, Error> {
    match outcome {
        Ok(()) => Ok(success),
        Err(Error::StaleReceipts(stale)) => Ok(serde_json::json!({
            "error": "stale receipt",
            "stale": stale,
        })),
        Err(other) => Err(other),
    }
}

/// `ack`: acknowledges `receipt` (or every one of `receipts`).
async fn ack(state: &AppState, command: &Command) -> Result<Value, Error> {
    let receipts = match command.get("receipts") {
        Some(Value::Array(list)) => list
            .iter()
            .map(|v| {
                v.as_str()
                    .ok_or(Error::InvalidParameter {
                        name: "receipts",
                        reason: "it must be an array of receipts",
                    })
                    .and_then(super::reliable::receipt)
            })
            .collect::<Result<Vec<_>, _>>()?,
        Some(_) => {
            return Err(Error::InvalidParameter {
                name: "receipts",
                reason: "it must be an array of receipts",
            });
        }
        None => vec![field!(receipt_field(command)?)],
    };
    if receipts.is_empty() {
        return Ok(soft_error("missing field: receipt"));
    }
    let outcome = state.broker.ack(&receipts).await;
    settled(outcome, serde_json::json!({ "acked": receipts.len() }))
}

/// `nack`: releases `receipt`, visible again after `delay` seconds (default 0).
async fn nack(state: &AppState, command: &Command) -> Result<Value, Error> {
    let receipt = field!(receipt_field(command)?);
    let delay = number_field(command, "delay")?.unwrap_or(0);
    let outcome = state.broker.nack(&receipt, delay).await;
    settled(
        outcome,
        serde_json::json!({
            "queue": receipt.queue.as_str(),
            "key": receipt.queue.key(receipt.id),
            "released": true,
            "delay": delay,
        }),
    )
}

/// `extend`: hides `receipt`'s message `visibility` more seconds from now.
async fn extend(state: &AppState, command: &Command) -> Result<Value, Error> {
    let receipt = field!(receipt_field(command)?);
    let Some(visibility) = number_field(command, "visibility")? else {
        return Ok(soft_error("missing field: visibility"));
    };
    let outcome = state.broker.extend(&receipt, visibility).await;
    settled(
        outcome,
        serde_json::json!({
            "queue": receipt.queue.as_str(),
            "key": receipt.queue.key(receipt.id),
            "visibility": visibility,
        }),
    )
}
