//! `restmq tail <queue>`: prints a queue's messages as they are streamed.

use bytes::Bytes;
use http_body_util::BodyExt;
use hyper::header::{ACCEPT, HeaderValue};
use hyper::{Method, StatusCode};
use tokio::time::timeout;

use super::pop::value_text;
use super::{CliError, Client, ClientArgs, check, print_line, queue_uri};
use crate::client::{Event, REQUEST_TIMEOUT, SseParser};

/// Options of `restmq tail`.
#[derive(Debug, clap::Args)]
pub struct TailArgs {
    /// The queue to stream.
    pub queue: String,
    /// Stop after N messages. Messages the server already sent past the Nth
    /// are delivered to this client and lost with it, as for any streaming
    /// consumer that leaves.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    pub count: Option<u64>,
    #[command(flatten)]
    pub client: ClientArgs,
}

/// How the stream went.
enum Seen {
    /// Enough messages (`--count`).
    Enough,
    /// The queue was deleted: the server ended the stream after a `deleted` event.
    Deleted,
}

/// Streams `GET /sse/<queue>` and prints each message's value (`--json`: its
/// `{"key","value"}` object), until `--count`, Ctrl-C, or the end of the stream.
pub(super) async fn run(args: &TailArgs) -> Result<(), CliError> {
    let uri = queue_uri("sse", &args.queue, &[])?;
    let mut client = Client::open(&args.client).await?;
    let mut request = client.request(Method::GET, &uri, Bytes::new(), None);
    request
        .headers_mut()
        .insert(ACCEPT, HeaderValue::from_static("text/event-stream"));
    let opened = async {
        let sender = client.sender().await?;
        let ready = async {
            sender.ready().await?;
            sender.send_request(request).await
        };
        match timeout(REQUEST_TIMEOUT, ready).await {
            Ok(response) => response.map_err(|e| CliError::Failed(format!("GET {uri}: {e}"))),
            Err(_) => Err(CliError::Failed(format!(
                "GET {uri}: no answer within {}s",
                REQUEST_TIMEOUT.as_secs()
            ))),
        }
    };
    let response = opened.await?;
    let status = response.status();
    let mut body = response.into_body();
    if status != StatusCode::OK {
        // An error answer is short and complete: read it for its message.
        let text = timeout(REQUEST_TIMEOUT, body.collect())
            .await
            .ok()
            .and_then(Result::ok)
            .map(|collected| collected.to_bytes())
            .unwrap_or_default();
        check(status, &text)?;
        return Err(CliError::Failed(format!(
            "GET {uri} answered {status}, not a stream"
        )));
    }
    let mut events = SseParser::default();
    let mut printed = 0u64;
    let wanted = args.count.unwrap_or(u64::MAX);
    let seen = loop {
        let Some(frame) = body.frame().await else {
            return Err(CliError::Failed(format!(
                "the server ended the stream of queue {}",
                args.queue
            )));
        };
        let frame = frame.map_err(|e| CliError::Failed(format!("the stream broke: {e}")))?;
        // Trailers carry no events.
        let Ok(data) = frame.into_data() else {
            continue;
        };
        let mut seen = None;
        let mut failure = None;
        events
            .feed(&data, &mut |event| {
                if seen.is_some() || failure.is_some() {
                    return;
                }
                match event {
                    Event::Message(json) => {
                        if let Err(e) = print_message(json, args.client.json) {
                            failure = Some(e);
                            return;
                        }
                        printed += 1;
                        if printed >= wanted {
                            seen = Some(Seen::Enough);
                        }
                    }
                    Event::Deleted => seen = Some(Seen::Deleted),
                }
            })
            .map_err(|e| CliError::Failed(format!("the stream is not valid: {e}")))?;
        if let Some(e) = failure {
            return Err(e);
        }
        if let Some(seen) = seen {
            break seen;
        }
    };
    if let Seen::Deleted = seen {
        eprintln!(
            "restmq: queue {} was purged; the server ended its stream",
            args.queue
        );
    }
    Ok(())
}

/// Prints one streamed message: its value, or with `json` its JSON as sent.
fn print_message(json: &[u8], as_json: bool) -> Result<(), CliError> {
    if as_json {
        return print_line(&String::from_utf8_lossy(json));
    }
    let message: serde_json::Value = serde_json::from_slice(json).map_err(|e| {
        CliError::Failed(format!(
            "a streamed message is not JSON ({e}): {}",
            String::from_utf8_lossy(json)
        ))
    })?;
    print_line(&value_text(&message))
}
