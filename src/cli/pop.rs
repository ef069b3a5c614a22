//! `restmq pop <queue>`: takes the oldest message (or up to `--max`) and
//! prints its value.

use std::time::Duration;

use bytes::Bytes;
use hyper::{Method, StatusCode};
use serde_json::Value;

use super::{CliError, Client, ClientArgs, body_json, body_text, check, print_line, queue_uri};
use crate::client::REQUEST_TIMEOUT;

/// Options of `restmq pop`.
#[derive(Debug, clap::Args)]
pub struct PopArgs {
    /// The queue to take from.
    pub queue: String,
    /// Wait up to SECS for a message when the queue is empty (a long poll,
    /// answered the moment one arrives; the server caps it at its --max-wait).
    #[arg(long, value_name = "SECS")]
    pub wait: Option<u64>,
    /// Take up to N messages at once (1 to 1000), printed one per line.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..=1000))]
    pub max: Option<u64>,
    #[command(flatten)]
    pub client: ClientArgs,
}

/// Pops and prints the values (`--json`: the server's JSON, an object, or an
/// array with `--max`); an empty queue is exit code 1.
pub(super) async fn run(args: &PopArgs) -> Result<(), CliError> {
    let uri = queue_uri("q", &args.queue, &[("wait", args.wait), ("max", args.max)])?;
    let mut client = Client::open(&args.client).await?;
    let request = client.request(Method::GET, &uri, Bytes::new(), None);
    // A long poll legitimately takes up to its wait before answering.
    let limit = REQUEST_TIMEOUT + Duration::from_secs(args.wait.unwrap_or(0));
    let (status, body) = client.exchange(request, limit).await?;
    check(status, &body)?;
    let empty = || {
        CliError::Empty(match args.wait {
            Some(wait) if wait > 0 => {
                format!("no message in queue {} within {wait}s", args.queue)
            }
            _ => format!("queue {} is empty", args.queue),
        })
    };
    if status == StatusCode::NO_CONTENT {
        return Err(empty());
    }
    let answer = body_json(&body, "pop")?;
    let messages = match &answer {
        Value::Array(messages) => messages.as_slice(),
        one => std::slice::from_ref(one),
    };
    if messages.is_empty() {
        return Err(empty());
    }
    if args.client.json {
        return print_line(&body_text(&body));
    }
    for message in messages {
        print_line(&value_text(message))?;
    }
    Ok(())
}

/// A message's value as text: the string itself, or (should the server ever
/// send another type) its JSON.
pub(super) fn value_text(message: &Value) -> String {
    match message.get("value") {
        Some(Value::String(value)) => value.clone(),
        Some(other) => other.to_string(),
        None => message.to_string(),
    }
}
