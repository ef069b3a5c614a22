//! Streaming consumers: COMET (`GET /c/<q>`), Server-Sent Events (`GET /sse/<q>`,
//! or `/c/<q>` with `Accept: text/event-stream`) and WebSocket (`GET /ws/<q>`).
//!
//! Each stream is a [`Subscription`] to the queue's dispatcher. A message is
//! marked written once its bytes are handed to the connection; messages that
//! never were go back to their queue when the stream ends.

use std::convert::Infallible;
use std::fmt::Write as _;
use std::pin::Pin;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::ws::{Message as Frame, Utf8Bytes, WebSocket, WebSocketUpgrade};
use axum::http::HeaderMap;
use axum::http::header::{ACCEPT, CACHE_CONTROL, CONTENT_TYPE};
use axum::response::{IntoResponse, Response};
use bytes::BytesMut;
use futures_util::{SinkExt, StreamExt, stream};
use percent_encoding::percent_decode_str;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::time::{Instant, Sleep};

use super::access::{self, Granted};
use super::params::{Callback, Params, Queue};
use super::ws_ack;
use crate::AppState;
use crate::broker::QueueName;
use crate::broker::hub::{End, Held, Next, Resume, Streamed, Subscription};
use crate::error::Error;

/// An idle Server-Sent Events stream sends a comment this often, so that
/// proxies and clients see it alive.
const KEEP_ALIVE: Duration = Duration::from_secs(15);
/// Read buffer of a WebSocket connection.
const WS_READ_BUFFER: usize = 4096;
/// Frames gathered before a WebSocket write, unless flushed first.
const WS_WRITE_BUFFER: usize = 8192;
/// Messages already waiting gathered into one write, at most.
const CHUNK_MESSAGES: usize = 64;
/// Buffer bytes a raw stream keeps between writes, at most.
const KEEP_BUFFER: usize = 4096;

/// What a COMET or SSE request asks for.
struct StreamRequest {
    queue: QueueName,
    format: Format,
    resume: Resume,
}

impl StreamRequest {
    /// Reads a request to `route` (`c` or `sse`) for `queue`, given its
    /// `Accept` and `Last-Event-ID` headers and its parameters.
    fn new(
        route: Route,
        queue: QueueName,
        accept: Option<&str>,
        last_event_id: Option<&str>,
        params: &Params,
    ) -> Result<StreamRequest, Error> {
        let sse = route == Route::Sse || accept.is_some_and(|a| a.contains("text/event-stream"));
        if !sse {
            return Ok(StreamRequest {
                queue,
                format: Format::Comet(params.callback()?),
                resume: Resume::Live,
            });
        }
        let last = last_event_id.or_else(|| params.text("last_event_id"));
        let resume = match last.map(str::trim).filter(|id| !id.is_empty()) {
            None => Resume::Live,
            Some(key) => Resume::After(queue.parse_key(key).ok_or(Error::InvalidParameter {
                name: "Last-Event-ID",
                reason: "it must be the key of a message of this queue",
            })?),
        };
        Ok(StreamRequest {
            queue,
            format: Format::Sse,
            resume,
        })
    }

    /// Subscribes; returns the stream and its content type.
    fn start(self, state: &AppState) -> Result<(Streaming, &'static str), Error> {
        let subscription = state.broker.subscribe(&self.queue, self.resume)?;
        let (content_type, first) = match self.format {
            Format::Sse => (
                "text/event-stream",
                // A first comment makes the response go out now, not with the
                // first message.
                Some(Bytes::from_static(b": restmq\n\n")),
            ),
            Format::Comet(_) => ("text/plain; charset=utf-8", None),
        };
        Ok((
            Streaming::new(subscription, self.format, first),
            content_type,
        ))
    }
}

/// The two HTTP streaming routes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Route {
    /// `/c/<q>`: COMET, or SSE when accepted.
    Comet,
    /// `/sse/<q>`.
    Sse,
}

/// `GET /c/<q>`: one `{"key","value"}` line per message (CRLF-ended), or JSONP
/// lines with `callback=`; Server-Sent Events when the client accepts them.
pub async fn comet(
    State(state): State<AppState>,
    Queue(queue): Queue,
    headers: HeaderMap,
    params: Params,
) -> Result<Response, Error> {
    respond(&state, Route::Comet, queue, &headers, &params)
}

/// `GET /sse/<q>`: Server-Sent Events, `id:` the key, `data:` the JSON message.
pub async fn sse(
    State(state): State<AppState>,
    Queue(queue): Queue,
    headers: HeaderMap,
    params: Params,
) -> Result<Response, Error> {
    respond(&state, Route::Sse, queue, &headers, &params)
}

fn respond(
    state: &AppState,
    route: Route,
    queue: QueueName,
    headers: &HeaderMap,
    params: &Params,
) -> Result<Response, Error> {
    let header = |name: &str| headers.get(name).map(|v| v.to_str().unwrap_or("\u{fffd}"));
    let request = StreamRequest::new(
        route,
        queue,
        header(ACCEPT.as_str()),
        header("last-event-id"),
        params,
    )?;
    let (streaming, content_type) = request.start(state)?;
    Ok((
        [(CONTENT_TYPE, content_type), (CACHE_CONTROL, "no-cache")],
        Body::from_stream(body(streaming)),
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

/// An HTTP stream in progress.
struct Streaming {
    subscription: Subscription,
    format: Format,
    first: Option<Bytes>,
    done: bool,
    /// SSE only: fires [`KEEP_ALIVE`] after the last chunk. Moved on lazily,
    /// when it fires early, rather than for every message: a timer set and
    /// cancelled per message cost each delivery two trips to the timer wheel.
    keep_alive: Option<Pin<Box<Sleep>>>,
    /// When the last chunk was made.
    last_sent: Instant,
}

/// Bytes to send, with the messages they carry.
struct Chunk {
    bytes: Bytes,
    held: Vec<Held>,
}

/// The connection took the chunk carrying `held`: its messages count as
/// delivered.
fn written(held: impl IntoIterator<Item = Held>) {
    for held in held {
        held.written();
    }
}

impl Streaming {
    fn new(subscription: Subscription, format: Format, first: Option<Bytes>) -> Streaming {
        let keep_alive =
            matches!(format, Format::Sse).then(|| Box::pin(tokio::time::sleep(KEEP_ALIVE)));
        Streaming {
            subscription,
            format,
            first,
            done: false,
            keep_alive,
            last_sent: Instant::now(),
        }
    }

    /// Appends the next chunk to send to `out`, the messages already waiting
    /// gathered into one, and what it carries to `held`; false once the
    /// stream is over.
    async fn next(&mut self, out: &mut BytesMut, held: &mut Vec<Held>) -> bool {
        if self.done {
            return false;
        }
        if let Some(first) = self.first.take() {
            out.extend_from_slice(&first);
        }
        if let Some((after, oldest)) = self.subscription.gap.take() {
            let queue = self.subscription.queue().clone();
            self.format.gap(out, &queue, after, oldest.as_deref());
        }
        while let Some(streamed) = self.subscription.replay.pop_front() {
            self.format.message(out, &streamed);
        }
        if !out.is_empty() {
            self.last_sent = Instant::now();
            return true;
        }
        let next = match &mut self.keep_alive {
            None => self.subscription.next().await,
            Some(timer) => loop {
                tokio::select! {
                    biased;
                    next = self.subscription.next() => break next,
                    () = timer.as_mut() => {
                        let idle_until = self.last_sent + KEEP_ALIVE;
                        let now = Instant::now();
                        if now < idle_until {
                            timer.as_mut().reset(idle_until);
                            continue;
                        }
                        timer.as_mut().reset(now + KEEP_ALIVE);
                        self.last_sent = now;
                        out.extend_from_slice(b": keep-alive\n\n");
                        return true;
                    }
                }
            },
        };
        match next {
            Next::Message(first) => {
                let mut add = |message: Held| {
                    if let Some(streamed) = message.streamed() {
                        self.format.message(out, streamed);
                    }
                    held.push(message);
                };
                add(first);
                // Gathers what else is waiting into the same write.
                for _ in 1..CHUNK_MESSAGES {
                    match self.subscription.try_next() {
                        Some(message) => add(message),
                        None => break,
                    }
                }
                self.last_sent = Instant::now();
                true
            }
            Next::End(Some(End::Deleted)) => {
                self.done = true;
                out.extend_from_slice(&self.format.deleted());
                true
            }
            Next::End(_) => false,
        }
    }
}

/// The body of a COMET or SSE response served by hyper.
///
/// A chunk's messages count as written once hyper asks for the next chunk,
/// having taken that one; if the connection fails first, they are dropped
/// unwritten and go back to their queue.
fn body(
    streaming: Streaming,
) -> impl futures_util::Stream<Item = Result<Bytes, Infallible>> + Send {
    stream::unfold(
        (streaming, None::<Chunk>),
        |(mut streaming, sent)| async move {
            if let Some(sent) = sent {
                written(sent.held);
            }
            let mut out = BytesMut::new();
            let mut held = Vec::new();
            if !streaming.next(&mut out, &mut held).await {
                return None;
            }
            let chunk = Chunk {
                bytes: out.freeze(),
                held,
            };
            let bytes = chunk.bytes.clone();
            Some((Ok(bytes), (streaming, Some(chunk))))
        },
    )
}

/// Whether a connection whose first bytes are `first` opens a COMET or SSE
/// stream that [`serve_raw`] can answer: its request line arrived whole, and is
/// `GET /c/…` or `GET /sse/…` over HTTP/1.1.
pub fn opens_stream(first: &[u8]) -> bool {
    let Some(end) = first.windows(2).position(|w| w == b"\r\n") else {
        return false;
    };
    let line = &first[..end];
    (line.starts_with(b"GET /c/") || line.starts_with(b"GET /sse/")) && line.ends_with(b" HTTP/1.1")
}

/// Serves a connection (TCP or TLS) whose first request opens a stream,
/// directly on it: reads the request's head (whole before `deadline`), answers
/// with a chunked stream, and closes the connection when the stream ends.
pub async fn serve_raw<S>(
    mut socket: S,
    peer: std::net::SocketAddr,
    deadline: tokio::time::Instant,
    state: AppState,
) where
    S: AsyncRead + AsyncWrite + Unpin,
{
    // The request's span (at debug level, as on the router) covers reading
    // and deciding the request, not the stream's whole life: the log
    // subscriber keeps about 2 KB per live span, which would double what an
    // idle stream costs.
    let span = tracing::debug_span!(
        "request",
        method = "GET",
        path = tracing::field::Empty,
        client = %peer.ip(),
    );
    // Boxed: reading the head takes buffers an idle stream's task must not
    // keep carrying once the stream runs.
    let opening = Box::pin(open(&mut socket, peer, deadline, &state));
    let opened = tracing::Instrument::instrument(opening, span).await;
    let Some((mut streaming, content_type)) = opened else {
        return;
    };
    let response_head = format!(
        "HTTP/1.1 200 OK\r\ncontent-type: {content_type}\r\ncache-control: no-cache\r\n\
         transfer-encoding: chunked\r\nconnection: close\r\ndate: {}\r\n\r\n",
        httpdate::fmt_http_date(std::time::SystemTime::now())
    );
    if write_flushed(&mut socket, response_head.as_bytes())
        .await
        .is_err()
    {
        return;
    }
    // Kept from chunk to chunk: a delivery allocates nothing here.
    let (mut out, mut framed, mut held) = (BytesMut::new(), BytesMut::new(), Vec::new());
    loop {
        out.clear();
        let more = tokio::select! {
            more = streaming.next(&mut out, &mut held) => more,
            () = closed(&mut socket) => return,
        };
        if !more {
            break;
        }
        framed.clear();
        // Writing to a BytesMut cannot fail.
        let _ = write!(framed, "{:x}\r\n", out.len());
        framed.extend_from_slice(&out);
        framed.extend_from_slice(b"\r\n");
        // A failed write drops the chunk unwritten: its messages go back.
        if write_flushed(&mut socket, &framed).await.is_err() {
            return;
        }
        written(held.drain(..));
        if framed.capacity() > KEEP_BUFFER {
            // A burst's buffers are not kept: an idle stream holds little.
            (out, framed, held) = (BytesMut::new(), BytesMut::new(), Vec::new());
        }
    }
    let _ = write_flushed(&mut socket, b"0\r\n\r\n").await;
    let _ = socket.shutdown().await;
}

/// Reads and decides a raw stream request, and subscribes it; on a refusal,
/// answers it and closes the connection (`None`).
async fn open<S>(
    socket: &mut S,
    peer: std::net::SocketAddr,
    deadline: tokio::time::Instant,
    state: &AppState,
) -> Option<(Streaming, &'static str)>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let head = match tokio::time::timeout_at(deadline, read_head(socket)).await {
        Ok(Ok(head)) => head,
        Ok(Err(Some(error))) => {
            answer_error(socket, &error).await;
            return None;
        }
        Ok(Err(None)) | Err(_) => return None,
    };
    let started = raw_request(&head, state, peer).and_then(|request| request.start(state));
    drop(head);
    match started {
        Ok(started) => Some(started),
        Err(error) => {
            answer_error(socket, &error).await;
            let _ = socket.shutdown().await;
            None
        }
    }
}

/// Writes `bytes` and flushes them: TLS holds written bytes until flushed.
async fn write_flushed<S: AsyncWrite + Unpin>(socket: &mut S, bytes: &[u8]) -> std::io::Result<()> {
    socket.write_all(bytes).await?;
    socket.flush().await
}

/// Largest request head a raw stream request may have.
const MAX_HEAD: usize = 16 * 1024;

/// Reads the request head (up to the blank line); the error to answer when it
/// is longer than [`MAX_HEAD`], none when the client goes away.
async fn read_head<S: AsyncRead + Unpin>(socket: &mut S) -> Result<Vec<u8>, Option<Error>> {
    let mut head = Vec::with_capacity(1024);
    let mut buf = [0u8; 512];
    loop {
        let n = socket.read(&mut buf).await.map_err(|_| None)?;
        if n == 0 {
            return Err(None);
        }
        head.extend_from_slice(&buf[..n]);
        if head.windows(4).any(|w| w == b"\r\n\r\n") {
            return Ok(head);
        }
        if head.len() > MAX_HEAD {
            return Err(Some(Error::HeadTooLarge { limit: MAX_HEAD }));
        }
    }
}

/// Reads a raw stream request's head, and decides it, as the routes would.
fn raw_request(
    head: &[u8],
    state: &AppState,
    peer: std::net::SocketAddr,
) -> Result<StreamRequest, Error> {
    let mut headers = [httparse::EMPTY_HEADER; 64];
    let mut request = httparse::Request::new(&mut headers);
    match request.parse(head) {
        Ok(httparse::Status::Complete(_)) => {}
        Ok(httparse::Status::Partial) | Err(_) => {
            return Err(Error::BadBody("malformed request head".into()));
        }
    }
    let target = request.path.unwrap_or("/");
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    tracing::Span::current().record("path", path);
    let header = |name: &str| {
        request
            .headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case(name))
            .map(|h| std::str::from_utf8(h.value).unwrap_or("\u{fffd}"))
    };
    // Authorized before anything else is read, as the other routes are.
    if let Some(need) = access::classify(&axum::http::Method::GET, path) {
        let credentials = access::Credentials::read(header, Some(query));
        access::decide(
            state,
            &need,
            peer.ip(),
            header("x-forwarded-for"),
            &credentials,
        )?;
    }
    let (route, raw_queue) = if let Some(rest) = path.strip_prefix("/c/") {
        (Route::Comet, rest)
    } else if let Some(rest) = path.strip_prefix("/sse/") {
        (Route::Sse, rest)
    } else {
        return Err(Error::NotFound);
    };
    let name = percent_decode_str(raw_queue)
        .decode_utf8()
        .map_err(|_| Error::InvalidQueueName("it is not valid UTF-8 once percent-decoded"))?;
    let queue = QueueName::parse(&name)?;
    let params = Params::from_query(query)?;
    StreamRequest::new(
        route,
        queue,
        header("accept"),
        header("last-event-id"),
        &params,
    )
}

/// Answers `error` as the routes would, with `connection: close`, straight on
/// a connection that hyper does not serve (a raw stream request, a connection
/// refused before any request). The caller closes the connection.
pub async fn answer_error<S: AsyncWrite + Unpin>(socket: &mut S, error: &Error) {
    let status = error.status();
    let body = serde_json::json!({ "error": error.to_string() }).to_string();
    let extra: String = error
        .headers()
        .iter()
        .map(|(name, value)| format!("{name}: {value}\r\n"))
        .collect();
    let response = format!(
        "HTTP/1.1 {} {}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\
         {extra}connection: close\r\n\r\n{body}",
        status.as_u16(),
        status.canonical_reason().unwrap_or(""),
        body.len()
    );
    let _ = write_flushed(socket, response.as_bytes()).await;
}

/// Resolves when the client closes its side (or the connection fails); what a
/// client sends on a stream connection is read and ignored.
async fn closed<S: AsyncRead + Unpin>(reader: &mut S) {
    let mut buf = [0u8; 64];
    loop {
        match reader.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
    }
}

/// `GET /ws/<q>`: a WebSocket carrying each message as a text frame
/// `{"key","value"}`; frames the client sends are echoed back, as the original
/// did. With `ack=1`, messages come with receipts to settle instead (see
/// [`ws_ack`]).
pub async fn websocket(
    State(state): State<AppState>,
    Queue(queue): Queue,
    Granted(grant): Granted,
    upgrade: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
    params: Params,
) -> Result<Response, Error> {
    let acking = ws_ack::Options::from_params(&params)?;
    let upgrade = upgrade.map_err(|_| Error::UpgradeRequired)?;
    let upgrade = upgrade
        // tungstenite's defaults allocate 128 KiB per connection up front; frames
        // here are small, and a batch is flushed as a whole.
        .read_buffer_size(WS_READ_BUFFER)
        .write_buffer_size(WS_WRITE_BUFFER)
        .max_message_size(state.max_body);
    Ok(match acking {
        Some(options) => {
            let subscription = state.broker.watch(&queue)?;
            upgrade.on_upgrade(move |socket| {
                ws_ack::session(socket, state, queue, subscription, options, grant)
            })
        }
        None => {
            let subscription = state.broker.subscribe(&queue, Resume::Live)?;
            upgrade.on_upgrade(move |socket| websocket_session(socket, subscription))
        }
    })
}

async fn websocket_session(socket: WebSocket, mut subscription: Subscription) {
    let (mut sink, mut incoming) = socket.split();
    loop {
        tokio::select! {
            next = subscription.next() => match next {
                Next::Message(first) => {
                    // What else is waiting goes out in the same write.
                    let mut batch = vec![first];
                    while batch.len() < CHUNK_MESSAGES {
                        match subscription.try_next() {
                            Some(held) => batch.push(held),
                            None => break,
                        }
                    }
                    for held in &batch {
                        let text = held.streamed().and_then(|s| Utf8Bytes::try_from(s.json.clone()).ok());
                        if let Some(text) = text {
                            if sink.feed(Frame::Text(text)).await.is_err() {
                                return;
                            }
                        }
                    }
                    // Dropped unwritten if sending fails: the messages go back.
                    if sink.flush().await.is_err() {
                        return;
                    }
                    for held in batch {
                        held.written();
                    }
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

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::broker::hub::{Hub, StreamLimits};
    use crate::store::{EmbeddedOptions, EmbeddedStore, Message, SystemClock};

    /// An SSE stream with nothing to send says it is alive once
    /// [`KEEP_ALIVE`] has passed since it last sent anything, not sooner: a
    /// message in between moves the next keep-alive on.
    #[tokio::test(start_paused = true)]
    async fn an_idle_sse_stream_sends_a_keep_alive_after_each_silence() {
        let dir = tempfile::tempdir().expect("temp dir");
        let store = EmbeddedStore::open(
            dir.path(),
            EmbeddedOptions::default(),
            Arc::new(SystemClock),
        )
        .expect("open");
        let hub = Hub::new(Arc::new(store), StreamLimits::default());
        let queue = QueueName::parse("q").expect("a queue name");
        let subscription = hub.subscribe(&queue, Resume::Live).expect("subscribe");
        let mut streaming = Streaming::new(subscription, Format::Sse, None);
        let (mut out, mut held) = (BytesMut::new(), Vec::new());
        let start = Instant::now();

        // The paused clock jumps to each timer's deadline, rounded up to the
        // timer wheel's millisecond.
        let at = |due: Duration| {
            let elapsed = start.elapsed();
            assert!(
                elapsed >= due && elapsed <= due + Duration::from_millis(2),
                "{elapsed:?} for {due:?}"
            );
        };
        assert!(streaming.next(&mut out, &mut held).await);
        assert_eq!(&out[..], b": keep-alive\n\n");
        at(KEEP_ALIVE);

        tokio::time::advance(Duration::from_secs(10)).await;
        let message = Message {
            id: 1,
            value: "v".into(),
            expires_at: 0,
        };
        hub.deliver_shared(&queue, vec![message]);
        out.clear();
        assert!(streaming.next(&mut out, &mut held).await);
        assert!(out.starts_with(b"id: q:1\ndata: "), "{out:?}");
        assert_eq!(held.len(), 1);
        written(held.drain(..));

        out.clear();
        assert!(streaming.next(&mut out, &mut held).await);
        assert_eq!(&out[..], b": keep-alive\n\n");
        // A full silence after the message, not the first timer's 15 s again.
        at(KEEP_ALIVE + Duration::from_secs(10) + KEEP_ALIVE);
    }
}
