//! Streaming consumers: COMET (`GET /c/<q>`), Server-Sent Events (`GET /sse/<q>`,
//! or `/c/<q>` with `Accept: text/event-stream`) and WebSocket (`GET /ws/<q>`).
//!
//! Each stream is a [`Subscription`] to the queue's dispatcher. A message is
//! marked written once its bytes are handed to the connection; messages that
//! never were go back to their queue when the stream ends.

use std::convert::Infallible;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::ws::{Message as Frame, WebSocket, WebSocketUpgrade};
use axum::http::HeaderMap;
use axum::http::header::{ACCEPT, CACHE_CONTROL, CONTENT_TYPE};
use axum::response::{IntoResponse, Response};
use bytes::BytesMut;
use futures_util::{SinkExt, StreamExt, stream};

use super::params::{Callback, Params, Queue};
use crate::AppState;
use crate::broker::QueueName;
use crate::broker::hub::{End, Held, Next, Resume, Streamed, Subscription};
use crate::error::Error;

/// An idle Server-Sent Events stream sends a comment this often, so that
/// proxies and clients see it alive.
const KEEP_ALIVE: Duration = Duration::from_secs(15);
/// Messages already waiting gathered into one write, at most.
const CHUNK_MESSAGES: usize = 64;

/// `GET /c/<q>`: one `{"key","value"}` line per message (CRLF-ended), or JSONP
/// lines with `callback=`; Server-Sent Events when the client accepts them.
pub async fn comet(
    State(state): State<AppState>,
    Queue(queue): Queue,
    headers: HeaderMap,
    params: Params,
) -> Result<Response, Error> {
    if accepts_event_stream(&headers) {
        return event_stream(&state, &queue, &headers, &params);
    }
    let callback = params.callback()?;
    let subscription = state.broker.subscribe(&queue, Resume::Live)?;
    let body = Body::from_stream(chunks(subscription, Format::Comet(callback), None));
    Ok((
        [
            (CONTENT_TYPE, "text/plain; charset=utf-8"),
            (CACHE_CONTROL, "no-cache"),
        ],
        body,
    )
        .into_response())
}

/// `GET /sse/<q>`: Server-Sent Events, `id:` the key, `data:` the JSON message.
pub async fn sse(
    State(state): State<AppState>,
    Queue(queue): Queue,
    headers: HeaderMap,
    params: Params,
) -> Result<Response, Error> {
    event_stream(&state, &queue, &headers, &params)
}

fn accepts_event_stream(headers: &HeaderMap) -> bool {
    headers
        .get_all(ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| v.contains("text/event-stream"))
}

fn event_stream(
    state: &AppState,
    queue: &QueueName,
    headers: &HeaderMap,
    params: &Params,
) -> Result<Response, Error> {
    let last = headers
        .get("last-event-id")
        .map(|v| v.to_str().unwrap_or("\u{fffd}"))
        .or_else(|| params.text("last_event_id"));
    let resume = match last.map(str::trim).filter(|id| !id.is_empty()) {
        None => Resume::Live,
        Some(key) => Resume::After(queue.parse_key(key).ok_or(Error::InvalidParameter {
            name: "Last-Event-ID",
            reason: "it must be the key of a message of this queue",
        })?),
    };
    let subscription = state.broker.subscribe(queue, resume)?;
    // A first comment makes the response headers go out now, not with the first message.
    let hello = Bytes::from_static(b": restmq\n\n");
    let body = Body::from_stream(chunks(subscription, Format::Sse, Some(hello)));
    Ok((
        [
            (CONTENT_TYPE, "text/event-stream"),
            (CACHE_CONTROL, "no-cache"),
        ],
        body,
    )
        .into_response())
}

/// How an HTTP stream frames what it sends.
enum Format {
    /// `<json>\r\n`, or `cb(<json>);\r\n`.
    Comet(Option<Callback>),
    /// Server-Sent Events.
    Sse,
}

impl Format {
    fn message(&self, out: &mut BytesMut, streamed: &Streamed) {
        match self {
            Format::Comet(None) => {
                out.extend_from_slice(&streamed.json);
                out.extend_from_slice(b"\r\n");
            }
            Format::Comet(Some(cb)) => {
                out.extend_from_slice(cb.as_str().as_bytes());
                out.extend_from_slice(b"(");
                out.extend_from_slice(&streamed.json);
                out.extend_from_slice(b");\r\n");
            }
            Format::Sse => {
                out.extend_from_slice(b"id: ");
                out.extend_from_slice(streamed.key.as_bytes());
                out.extend_from_slice(b"\ndata: ");
                out.extend_from_slice(&streamed.json);
                out.extend_from_slice(b"\n\n");
            }
        }
    }

    /// The last line of a stream whose queue was deleted: `null`, as the original.
    fn deleted(&self) -> Bytes {
        match self {
            Format::Comet(None) => Bytes::from_static(b"null\r\n"),
            Format::Comet(Some(cb)) => Bytes::from(format!("{}(null);\r\n", cb.as_str())),
            Format::Sse => Bytes::from_static(b"event: deleted\ndata: null\n\n"),
        }
    }

    fn gap(&self, out: &mut BytesMut, queue: &QueueName, after: u64, oldest: Option<&str>) {
        if let Format::Sse = self {
            let data = serde_json::json!({ "last_event_id": queue.key(after), "oldest": oldest });
            out.extend_from_slice(format!("event: gap\ndata: {data}\n\n").as_bytes());
        }
    }
}

/// What an HTTP stream still has to do.
struct Streaming {
    subscription: Subscription,
    format: Format,
    first: Option<Bytes>,
    /// The messages of the last chunk returned. They count as written once the
    /// connection asks for the next chunk, having taken that one; if it fails
    /// first, they are dropped unwritten and go back to their queue.
    sent: Vec<Held>,
    done: bool,
}

/// The body of a COMET or SSE response: chunks of framed messages, the messages
/// already waiting gathered into one write.
fn chunks(
    subscription: Subscription,
    format: Format,
    first: Option<Bytes>,
) -> impl futures_util::Stream<Item = Result<Bytes, Infallible>> + Send {
    let state = Streaming {
        subscription,
        format,
        first,
        sent: Vec::new(),
        done: false,
    };
    stream::unfold(state, |mut s| async move {
        for held in s.sent.drain(..) {
            held.written();
        }
        let chunk = next_chunk(&mut s).await?;
        Some((Ok(chunk), s))
    })
}

async fn next_chunk(s: &mut Streaming) -> Option<Bytes> {
    if s.done {
        return None;
    }
    let mut out = BytesMut::new();
    if let Some(first) = s.first.take() {
        out.extend_from_slice(&first);
    }
    if let Some((after, oldest)) = s.subscription.gap.take() {
        s.format
            .gap(&mut out, s.subscription.queue(), after, oldest.as_deref());
    }
    while let Some(streamed) = s.subscription.replay.pop_front() {
        s.format.message(&mut out, &streamed);
    }
    if !out.is_empty() {
        return Some(out.freeze());
    }
    let next = match s.format {
        Format::Sse => match tokio::time::timeout(KEEP_ALIVE, s.subscription.next()).await {
            Ok(next) => next,
            Err(_) => return Some(Bytes::from_static(b": keep-alive\n\n")),
        },
        Format::Comet(_) => s.subscription.next().await,
    };
    match next {
        Next::Message(held) => {
            add(s, &mut out, held);
            // Gathers what else is waiting into the same write.
            for _ in 1..CHUNK_MESSAGES {
                match s.subscription.try_next() {
                    Some(held) => add(s, &mut out, held),
                    None => break,
                }
            }
            Some(out.freeze())
        }
        Next::End(Some(End::Deleted)) => {
            s.done = true;
            Some(s.format.deleted())
        }
        Next::End(_) => None,
    }
}

fn add(s: &mut Streaming, out: &mut BytesMut, held: Held) {
    if let Some(streamed) = held.streamed() {
        s.format.message(out, streamed);
    }
    s.sent.push(held);
}

/// `GET /ws/<q>`: a WebSocket carrying each message as a text frame
/// `{"key","value"}`; frames the client sends are echoed back, as the original did.
pub async fn websocket(
    State(state): State<AppState>,
    Queue(queue): Queue,
    upgrade: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Result<Response, Error> {
    let upgrade = upgrade.map_err(|_| Error::UpgradeRequired)?;
    let subscription = state.broker.subscribe(&queue, Resume::Live)?;
    Ok(upgrade.on_upgrade(move |socket| websocket_session(socket, subscription)))
}

async fn websocket_session(socket: WebSocket, mut subscription: Subscription) {
    let (mut sink, mut incoming) = socket.split();
    loop {
        tokio::select! {
            next = subscription.next() => match next {
                Next::Message(held) => {
                    let Some(streamed) = held.streamed() else { continue };
                    let text = String::from_utf8_lossy(&streamed.json).into_owned();
                    // Dropped unwritten if the send fails: the message goes back.
                    if sink.send(Frame::Text(text.into())).await.is_err() {
                        return;
                    }
                    held.written();
                }
                Next::End(Some(End::Deleted)) => {
                    let _ = sink.send(Frame::Text("null".into())).await;
                    let _ = sink.send(Frame::Close(None)).await;
                    return;
                }
                Next::End(_) => {
                    let _ = sink.send(Frame::Close(None)).await;
                    return;
                }
            },
            frame = incoming.next() => match frame {
                Some(Ok(frame @ (Frame::Text(_) | Frame::Binary(_)))) => {
                    if sink.send(frame).await.is_err() {
                        return;
                    }
                }
                // Pings are answered by the WebSocket layer itself.
                Some(Ok(Frame::Ping(_) | Frame::Pong(_))) => {}
                Some(Ok(Frame::Close(_)) | Err(_)) | None => return,
            },
        }
    }
}
