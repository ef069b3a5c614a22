//! `GET /ws/<q>?ack=1`: a WebSocket consumer that acknowledges what it gets.
//!
//! Each message is received with a visibility timeout and sent as a text frame
//! `{"key","value","count","receipt"}`. The client settles it with the JSON
//! protocol's commands sent as text frames (`{"cmd":"ack","receipt":…}`, `nack`,
//! `extend`), each answered by a frame carrying `"reply"`: the command's name.
//! At most `prefetch` messages are outstanding at once; one left unsettled past
//! its visibility timeout is visible again, and delivered again (to this socket
//! or another consumer). When the socket closes, what it still holds is
//! released at once.

use std::collections::HashMap;
use std::time::Duration;

use axum::extract::ws::{Message as Frame, Utf8Bytes, WebSocket};
use futures_util::{SinkExt, StreamExt};
use serde::Serialize;
use serde_json::Value;
use tokio::time::Instant;

use super::command;
use super::params::Params;
use crate::AppState;
use crate::acl::Grant;
use crate::broker::hub::{End, Next, Subscription};
use crate::broker::{QueueName, Receipt};
use crate::error::Error;

/// Messages outstanding at once unless the client asks for another number.
const DEFAULT_PREFETCH: u64 = 10;
/// Most messages outstanding at once a client may ask for.
const MAX_PREFETCH: u64 = 1000;

/// How an acknowledging socket consumes.
pub struct Options {
    /// Seconds each message stays hidden; the queue's setting when `None`.
    visibility: Option<u64>,
    /// Most messages outstanding at once.
    prefetch: usize,
}

impl Options {
    /// Reads `ack`, `visibility` and `prefetch`; `None` when `ack` is not asked
    /// for (the socket echoes, as the original did).
    pub fn from_params(params: &Params) -> Result<Option<Options>, Error> {
        match params.text("ack") {
            None | Some("0" | "false" | "no") => return Ok(None),
            Some("1" | "true" | "yes") => {}
            Some(_) => {
                return Err(Error::InvalidParameter {
                    name: "ack",
                    reason: "it must be 1 or 0",
                });
            }
        }
        let visibility = params.number("visibility")?;
        if visibility == Some(0) {
            return Err(Error::InvalidParameter {
                name: "visibility",
                reason: "a socket's messages must stay hidden at least 1 second",
            });
        }
        let prefetch = params.number("prefetch")?.unwrap_or(DEFAULT_PREFETCH);
        if !(1..=MAX_PREFETCH).contains(&prefetch) {
            return Err(Error::InvalidParameter {
                name: "prefetch",
                reason: "it must be from 1 to 1000",
            });
        }
        Ok(Some(Options {
            visibility,
            prefetch: usize::try_from(prefetch).unwrap_or(1),
        }))
    }
}

/// The instant `seconds` from now, at most a century away. A visibility is any
/// non-negative integer, and adding u64::MAX seconds to an instant panics.
fn after(seconds: u64) -> Instant {
    Instant::now() + Duration::from_secs(seconds.min(crate::broker::LONGEST))
}

/// A message as an acknowledging socket sends it.
#[derive(Serialize)]
struct Delivered<'a> {
    key: String,
    value: &'a str,
    count: u32,
    receipt: String,
}

/// Deliveries sent and not yet settled, by receipt, with when they run out.
#[derive(Default)]
struct Outstanding(HashMap<String, (Receipt, Instant)>);

impl Outstanding {
    /// Forgets deliveries whose time ran out: their messages are visible again.
    fn expire(&mut self, now: Instant) {
        self.0.retain(|_, (_, deadline)| *deadline > now);
    }

    fn earliest(&self) -> Option<Instant> {
        self.0.values().map(|(_, deadline)| *deadline).min()
    }

    /// Notes what a settling command changed, judged by its answer.
    fn settled(&mut self, command: &serde_json::Map<String, Value>, answer: &Value) {
        if let Some(stale) = answer.get("stale").and_then(Value::as_array) {
            for receipt in stale.iter().filter_map(Value::as_str) {
                self.0.remove(receipt);
            }
            return;
        }
        if answer.get("error").is_some() {
            return;
        }
        let named = command
            .get("receipts")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .chain(command.get("receipt"))
            .filter_map(Value::as_str);
        match command.get("cmd").and_then(Value::as_str) {
            Some("extend") => {
                let seconds = command.get("visibility").and_then(Value::as_u64);
                for receipt in named {
                    if let (Some(seconds), Some((_, deadline))) = (seconds, self.0.get_mut(receipt))
                    {
                        *deadline = after(seconds);
                    }
                }
            }
            _ => {
                for receipt in named {
                    self.0.remove(receipt);
                }
            }
        }
    }
}

/// Runs an acknowledging socket until either side ends it.
pub async fn session(
    socket: WebSocket,
    state: AppState,
    queue: QueueName,
    mut subscription: Subscription,
    options: Options,
    grant: Grant,
) {
    let (mut sink, mut incoming) = socket.split();
    let visibility = match options.visibility {
        Some(seconds) => seconds,
        None => match state.broker.config(&queue).await {
            Ok(config) => config.visibility.max(1),
            Err(e) => {
                let _ = sink.send(error_frame(&e.to_string())).await;
                let _ = sink.send(Frame::Close(None)).await;
                return;
            }
        },
    };
    let arrivals = state.broker.arrivals(&queue);
    let mut outstanding = Outstanding::default();
    loop {
        let arrival = arrivals.notified();
        tokio::pin!(arrival);
        arrival.as_mut().enable();
        outstanding.expire(Instant::now());
        let room = options.prefetch.saturating_sub(outstanding.0.len());
        let mut wake = outstanding.earliest();
        if room > 0 {
            match deliver(
                &state,
                &queue,
                room,
                visibility,
                &mut sink,
                &mut outstanding,
            )
            .await
            {
                Ok(true) => continue,
                Ok(false) => {}
                Err(Gone) => break,
            }
            if let Ok(Some(due)) = state.broker.next_due(&queue).await {
                let after = Duration::from_millis(due.saturating_sub(crate::store::now_millis()));
                let due = Instant::now() + after;
                wake = Some(wake.map_or(due, |w| w.min(due)));
            }
        }
        let sleep = async {
            match wake {
                Some(at) => tokio::time::sleep_until(at).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            next = subscription.next() => {
                let last = match next {
                    Next::End(Some(End::Deleted)) => Some(Frame::Text("null".into())),
                    Next::End(_) | Next::Message(_) => None,
                };
                if let Some(last) = last {
                    let _ = sink.send(last).await;
                }
                let _ = sink.send(Frame::Close(None)).await;
                break;
            }
            frame = incoming.next() => match frame {
                Some(Ok(Frame::Text(text))) => {
                    let reply = answer(&state, &grant, text.as_str(), &mut outstanding).await;
                    if sink.send(reply).await.is_err() {
                        break;
                    }
                }
                Some(Ok(Frame::Binary(_))) => {
                    let reply = error_frame("commands are JSON text frames");
                    if sink.send(reply).await.is_err() {
                        break;
                    }
                }
                // Pings are answered by the WebSocket layer itself.
                Some(Ok(Frame::Ping(_) | Frame::Pong(_))) => {}
                Some(Ok(Frame::Close(_)) | Err(_)) | None => break,
            },
            () = arrival => {}
            () = sleep => {}
        }
    }
    release(&state, outstanding).await;
}

/// The connection failed: stop.
struct Gone;

/// Receives up to `room` messages and sends them in one write; whether any came.
async fn deliver(
    state: &AppState,
    queue: &QueueName,
    room: usize,
    visibility: u64,
    sink: &mut futures_util::stream::SplitSink<WebSocket, Frame>,
    outstanding: &mut Outstanding,
) -> Result<bool, Gone> {
    let received = match state
        .broker
        .receive_unless_stopped(queue, room, Some(visibility))
        .await
    {
        Ok(received) => received,
        Err(e) => {
            tracing::warn!(%queue, error = %e, "cannot receive for a socket");
            return Ok(false);
        }
    };
    if received.is_empty() {
        return Ok(false);
    }
    let deadline = after(visibility);
    for (received, receipt) in received {
        let text = receipt.to_string();
        let frame = serde_json::to_string(&Delivered {
            key: queue.key(received.message.id),
            value: &received.message.value,
            count: received.delivery,
            receipt: text.clone(),
        })
        .unwrap_or_default();
        outstanding.0.insert(text, (receipt, deadline));
        if sink.feed(Frame::Text(frame.into())).await.is_err() {
            return Err(Gone);
        }
    }
    sink.flush().await.map_err(|_| Gone)?;
    Ok(true)
}

/// Carries out a command frame and makes its answer frame.
async fn answer(
    state: &AppState,
    grant: &Grant,
    text: &str,
    outstanding: &mut Outstanding,
) -> Frame {
    let command = match serde_json::from_str::<Value>(text) {
        Ok(Value::Object(command)) => command,
        Ok(_) => return error_frame("a command is a JSON object"),
        Err(e) => return error_frame(&format!("malformed JSON: {e}")),
    };
    let mut answer = match command::settle(state, grant, &command).await {
        Ok(answer) => answer,
        Err(e) => serde_json::json!({ "error": e.to_string() }),
    };
    outstanding.settled(&command, &answer);
    if let Value::Object(fields) = &mut answer {
        let name = command.get("cmd").cloned().unwrap_or(Value::Null);
        fields.insert("reply".to_owned(), name);
    }
    Frame::Text(Utf8Bytes::from(answer.to_string()))
}

fn error_frame(message: &str) -> Frame {
    Frame::Text(Utf8Bytes::from(
        serde_json::json!({ "reply": null, "error": message }).to_string(),
    ))
}

/// Makes what a closed socket still held visible again at once.
async fn release(state: &AppState, outstanding: Outstanding) {
    for (_, (receipt, _)) in outstanding.0 {
        match state.broker.nack(&receipt, 0).await {
            Ok(()) | Err(Error::StaleReceipts(_)) => {}
            Err(e) => {
                tracing::warn!(queue = %receipt.queue, error = %e, "cannot release a closed socket's message")
            }
        }
    }
}
