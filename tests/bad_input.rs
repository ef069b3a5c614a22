//! Bad input on every route: a table of requests, each sent byte for byte to a
//! real server, each answered with its exact status and the JSON error schema
//! (`{"error": "..."}`), each changing nothing. The state of a fixture (queues
//! with known messages, a policy, a paused queue, settings, a message in flight)
//! is compared after every row. WebSockets sending garbage get an error frame or
//! are closed, and the server goes on serving.

mod common;

use common::raw::{self, RawAnswer};
use common::{DEADLINE, TestServer, eventually};
use futures_util::{SinkExt, StreamExt};
use restmq::config::Config;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_tungstenite::tungstenite::Message as Frame;
use tokio_tungstenite::tungstenite::protocol::frame::Frame as RawFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode};

/// The body limit of the server under test, small so that 413 is cheap.
const MAX_BODY: usize = 4096;

/// What a refused request must answer.
#[derive(Debug, Clone, Copy)]
enum Shape {
    /// `{"error": "<non-empty text>"}` as `application/json`, nothing else.
    Error,
    /// 409: the error and `"stale": [...]` listing the stale receipts.
    Stale,
    /// The JSON protocol's way: 200 with `{"error": ...}` (and `stale` maybe).
    Soft,
    /// Exactly this body (the legacy answers that are not errors).
    Exact(&'static str),
    /// hyper's own answer to a request it cannot parse: status only, no body.
    Bare,
}

/// One bad request.
struct Row {
    method: &'static str,
    /// Path and query, as sent; `{LIVE}`, `{STALE}`, `{LONG}`, `{BIG}`,
    /// `{DEEP}`, `{HEAD20K}` and `{HEAD500K}` are replaced (see [`expand`]),
    /// here and in headers and bodies.
    target: &'static [u8],
    /// Whole header lines.
    headers: &'static [&'static [u8]],
    body: &'static [u8],
    status: u16,
    shape: Shape,
}

const NO: &[&[u8]] = &[];
const FORM: &[&[u8]] = &[b"content-type: application/x-www-form-urlencoded"];
const JSON: &[&[u8]] = &[b"content-type: application/json"];
const TEXT: &[&[u8]] = &[b"content-type: text/plain"];
const NDJSON: &[&[u8]] = &[b"content-type: application/x-ndjson"];
const SSE: &[&[u8]] = &[b"accept: text/event-stream"];

/// `row!(METHOD b"target", headers, b"body" => status, Shape)`; one line each.
macro_rules! row {
    ($method:ident $target:literal, $headers:expr, $body:literal => $status:literal $($shape:tt)+) => {
        Row {
            method: stringify!($method),
            target: $target,
            headers: $headers,
            body: $body,
            status: $status,
            shape: Shape::$($shape)+,
        }
    };
}

#[rustfmt::skip]
static ROWS: &[Row] = &[
    // Publishing, POST /q/<q>: values, numbers, callbacks, encodings, bodies.
    row!(POST b"/q/jobs", FORM, b"" => 400 Error),
    row!(POST b"/q/jobs", FORM, b"value=" => 400 Error),
    row!(POST b"/q/jobs", FORM, b"value=%20+%09" => 400 Error),
    row!(POST b"/q/jobs", FORM, b"msg=&value=" => 400 Error),
    row!(POST b"/q/jobs", FORM, b"value=a&value=" => 400 Error),
    row!(POST b"/q/jobs", FORM, b"value=a&ttl=-1" => 400 Error),
    row!(POST b"/q/jobs", FORM, b"value=a&ttl=1.5" => 400 Error),
    row!(POST b"/q/jobs", FORM, b"value=a&ttl=18446744073709551616" => 400 Error),
    row!(POST b"/q/jobs", FORM, b"value=a&ttl=NaN" => 400 Error),
    row!(POST b"/q/jobs", FORM, b"value=a&ttl=1e3" => 400 Error),
    row!(POST b"/q/jobs", FORM, b"value=a&ttl=" => 400 Error),
    row!(POST b"/q/jobs", FORM, b"value=a&ttl=%2B5" => 400 Error),
    row!(POST b"/q/jobs", FORM, b"value=a&delay=-5" => 400 Error),
    row!(POST b"/q/jobs", FORM, b"value=a&delay=0x10" => 400 Error),
    row!(POST b"/q/jobs", FORM, b"value=a&delay=%zz" => 400 Error),
    row!(POST b"/q/jobs", FORM, b"value=a&callback=alert(1)" => 400 Error),
    row!(POST b"/q/jobs", FORM, b"value=a&callback=1cb" => 400 Error),
    row!(POST b"/q/jobs", FORM, b"value=a&callback=a..b" => 400 Error),
    row!(POST b"/q/jobs", FORM, b"value=%FF" => 400 Error),
    row!(POST b"/q/jobs", FORM, b"value=a&%C3=1" => 400 Error),
    row!(POST b"/q/jobs", FORM, b"value=\xff\xfe" => 400 Error),
    row!(POST b"/q/jobs?ttl=abc", TEXT, b"x" => 400 Error),
    row!(POST b"/q/jobs?x=%C3%28", TEXT, b"x" => 400 Error),
    row!(POST b"/q/jobs", TEXT, b"\xff\xfe" => 400 Error),
    row!(POST b"/q/jobs", TEXT, b"" => 400 Error),
    row!(POST b"/q/jobs", NDJSON, b"\n  \n\r\n" => 400 Error),
    row!(POST b"/q/jobs", NDJSON, b"ok\n\xff\n" => 400 Error),
    row!(POST b"/q/jobs", FORM, b"{BIG}" => 413 Error),
    row!(POST b"/q/jobs", TEXT, b"{BIG}" => 413 Error),
    row!(POST b"/q/full", FORM, b"value=over" => 429 Error),
    row!(POST b"/q/full", NDJSON, b"a\nb\n" => 429 Error),
    // Queue names in paths: empty, too long, control characters, not UTF-8.
    row!(POST b"/q/", FORM, b"value=a" => 400 Error),
    row!(POST b"/q/{LONG}", FORM, b"value=a" => 400 Error),
    row!(GET b"/q/{LONG}", NO, b"" => 400 Error),
    row!(POST b"/q/a%00b", FORM, b"value=a" => 400 Error),
    row!(POST b"/q/a%0Ab", FORM, b"value=a" => 400 Error),
    row!(POST b"/q/%7F", FORM, b"value=a" => 400 Error),
    row!(POST b"/q/%C2%85", FORM, b"value=a" => 400 Error),
    row!(POST b"/q/%FF", FORM, b"value=a" => 400 Error),
    row!(POST b"/q/ok%C3", FORM, b"value=a" => 400 Error),
    row!(GET b"/q/%E2%82", NO, b"" => 400 Error),
    row!(GET b"/q/\xff", NO, b"" => 400 Bare),
    row!(GET b"/q/a b", NO, b"" => 400 Bare),
    row!(POST b"/q/jobs", &[b"content-length: abc"], b"" => 400 Bare),
    // Consuming, GET /q/<q>: max, wait, visibility, callbacks.
    row!(GET b"/q/jobs?max=0", NO, b"" => 400 Error),
    row!(GET b"/q/jobs?max=1001", NO, b"" => 400 Error),
    row!(GET b"/q/jobs?max=-1", NO, b"" => 400 Error),
    row!(GET b"/q/jobs?max=NaN", NO, b"" => 400 Error),
    row!(GET b"/q/jobs?wait=21", NO, b"" => 400 Error),
    row!(GET b"/q/jobs?wait=18446744073709551616", NO, b"" => 400 Error),
    row!(GET b"/q/jobs?visibility=abc", NO, b"" => 400 Error),
    row!(GET b"/q/jobs?visibility=-1", NO, b"" => 400 Error),
    row!(GET b"/q/jobs?visibility=1.0", NO, b"" => 400 Error),
    row!(GET b"/q/jobs?visibility=30&max=0", NO, b"" => 400 Error),
    row!(GET b"/q/jobs?callback=a-b", NO, b"" => 400 Error),
    row!(GET b"/q/jobs?callback=%FF", NO, b"" => 400 Error),
    row!(GET b"/q/jobs?x=%C3%28", NO, b"" => 400 Error),
    row!(HEAD b"/q/jobs", NO, b"" => 405 Bare),
    // The index routes, GET / and POST /.
    row!(GET b"/?queue=", NO, b"" => 400 Error),
    row!(GET b"/?queue=%01", NO, b"" => 400 Error),
    row!(GET b"/?queue={LONG}", NO, b"" => 400 Error),
    row!(GET b"/?queue=never-used", NO, b"" => 404 Error),
    row!(GET b"/?queue=jobs&callback=x(1)", NO, b"" => 400 Error),
    row!(HEAD b"/?queue=jobs", NO, b"" => 405 Bare),
    row!(POST b"/", FORM, b"value=a" => 400 Error),
    row!(POST b"/", FORM, b"queue=&value=a" => 400 Error),
    row!(POST b"/", FORM, b"queue=jobs" => 400 Error),
    row!(POST b"/", FORM, b"queue={LONG}&value=a" => 400 Error),
    row!(POST b"/", FORM, b"queue=jobs&value=a&ttl=x" => 400 Error),
    row!(POST b"/", FORM, b"queue=jo%00bs&value=a" => 400 Error),
    // Purging.
    row!(DELETE b"/q/jobs?callback=alert(1)", NO, b"" => 400 Error),
    row!(DELETE b"/q/%FF", NO, b"" => 400 Error),
    row!(DELETE b"/q/", NO, b"" => 405 Error),
    // Methods and routes that do not exist.
    row!(PUT b"/q/jobs", FORM, b"value=a" => 405 Error),
    row!(PATCH b"/", NO, b"" => 405 Error),
    row!(DELETE b"/queue", NO, b"" => 405 Error),
    row!(PUT b"/ack", NO, b"" => 405 Error),
    row!(GET b"/ack", NO, b"" => 405 Error),
    row!(GET b"/nack?receipt={LIVE}", NO, b"" => 405 Error),
    row!(GET b"/extend", NO, b"" => 405 Error),
    row!(GET b"/redrive/jobs", NO, b"" => 405 Error),
    row!(DELETE b"/stats/jobs", NO, b"" => 405 Error),
    row!(POST b"/c/jobs", NO, b"" => 405 Error),
    row!(POST b"/sse/jobs", NO, b"" => 405 Error),
    row!(PUT b"/config/jobs", JSON, b"{}" => 405 Error),
    row!(DELETE b"/control/paused", NO, b"" => 405 Error),
    row!(BREW b"/q/jobs", NO, b"" => 405 Error),
    row!(GET b"/nope", NO, b"" => 404 Error),
    row!(GET b"/static/%2e%2e%2fCargo.toml", NO, b"" => 404 Error),
    // The JSON protocol, POST /queue.
    row!(POST b"/queue", FORM, b"body={" => 400 Error),
    row!(POST b"/queue", FORM, b"body=%FF" => 400 Error),
    row!(POST b"/queue", FORM, b"" => 400 Error),
    row!(POST b"/queue", JSON, b"{\"cmd\":" => 400 Error),
    row!(POST b"/queue", JSON, b"[]" => 400 Error),
    row!(POST b"/queue", JSON, b"\"add\"" => 400 Error),
    row!(POST b"/queue", JSON, b"null" => 400 Error),
    row!(POST b"/queue", JSON, b"{}" => 400 Error),
    row!(POST b"/queue", JSON, b"{\"cmd\":\"\"}" => 400 Error),
    row!(POST b"/queue", JSON, b"{\"cmd\":5,\"queue\":\"jobs\"}" => 400 Error),
    row!(POST b"/queue", JSON, b"{\"cmd\":null}" => 400 Error),
    row!(POST b"/queue", JSON, b"{DEEP}" => 400 Error),
    row!(POST b"/queue", JSON, b"{\"cmd\":\"add\",\"queue\":\"jobs\",\"value\":\"\xff\"}" => 400 Error),
    row!(POST b"/queue", TEXT, b"{\"cmd\":\"take\",\"queue\":\"jobs\"}" => 400 Error),
    row!(POST b"/queue", JSON, b"{BIG}" => 413 Error),
    row!(POST b"/queue", JSON, b"{\"cmd\":\"add\",\"queue\":\"jobs\",\"value\":5}" => 200 Soft),
    row!(POST b"/queue", JSON, b"{\"cmd\":\"add\",\"queue\":\"jobs\"}" => 200 Soft),
    row!(POST b"/queue", JSON, b"{\"cmd\":\"add\",\"queue\":\"\",\"value\":\"x\"}" => 200 Soft),
    row!(POST b"/queue", JSON, b"{\"cmd\":\"add\",\"queue\":[\"jobs\"],\"value\":\"x\"}" => 200 Soft),
    row!(POST b"/queue", JSON, b"{\"cmd\":\"add\",\"queue\":\"jobs\",\"value\":\"x\",\"ttl\":-1}" => 400 Error),
    row!(POST b"/queue", JSON, b"{\"cmd\":\"add\",\"queue\":\"jobs\",\"value\":\"x\",\"ttl\":\"5\"}" => 400 Error),
    row!(POST b"/queue", JSON, b"{\"cmd\":\"add\",\"queue\":\"jobs\",\"value\":\"x\",\"ttl\":1.5}" => 400 Error),
    row!(POST b"/queue", JSON, b"{\"cmd\":\"add\",\"queue\":\"jobs\",\"value\":\"x\",\"ttl\":1e400}" => 400 Error),
    row!(POST b"/queue", JSON, b"{\"cmd\":\"add\",\"queue\":\"a\\u0000b\",\"value\":\"x\"}" => 400 Error),
    row!(POST b"/queue", JSON, b"{\"cmd\":\"add\",\"queue\":\"{LONG}\",\"value\":\"x\"}" => 400 Error),
    row!(POST b"/queue", JSON, b"{\"cmd\":\"nope\",\"queue\":\"jobs\"}" => 200 Soft),
    row!(POST b"/queue", JSON, b"{\"cmd\":\"take\"}" => 200 Soft),
    row!(POST b"/queue", JSON, b"{\"cmd\":\"take\",\"queue\":\"never-used\"}" => 200 Soft),
    row!(POST b"/queue", JSON, b"{\"cmd\":\"del\",\"queue\":\"jobs\",\"key\":\"jobs:0\"}" => 200 Exact("{\"deleted\":false,\"key\":\"jobs:0\",\"queue\":\"jobs\"}")),
    row!(POST b"/queue", JSON, b"{\"cmd\":\"del\",\"queue\":\"jobs\",\"key\":\"held:2\"}" => 200 Exact("{\"deleted\":false,\"key\":\"held:2\",\"queue\":\"jobs\"}")),
    row!(POST b"/queue", JSON, b"{\"cmd\":\"del\",\"queue\":\"jobs\",\"key\":\"jobs:+1\"}" => 200 Exact("{\"deleted\":false,\"key\":\"jobs:+1\",\"queue\":\"jobs\"}")),
    row!(POST b"/queue", JSON, b"{\"cmd\":\"del\",\"queue\":\"jobs\",\"key\":7}" => 200 Soft),
    row!(POST b"/queue", JSON, b"{\"cmd\":\"receive\",\"queue\":\"jobs\",\"max\":0}" => 400 Error),
    row!(POST b"/queue", JSON, b"{\"cmd\":\"receive\",\"queue\":\"jobs\",\"max\":1001}" => 400 Error),
    row!(POST b"/queue", JSON, b"{\"cmd\":\"receive\",\"queue\":\"jobs\",\"visibility\":-1}" => 400 Error),
    row!(POST b"/queue", JSON, b"{\"cmd\":\"receive\",\"queue\":\"jobs\",\"visibility\":\"30\"}" => 400 Error),
    row!(POST b"/queue", JSON, b"{\"cmd\":\"ack\"}" => 200 Soft),
    row!(POST b"/queue", JSON, b"{\"cmd\":\"ack\",\"receipt\":\"garbage\"}" => 400 Error),
    row!(POST b"/queue", JSON, b"{\"cmd\":\"ack\",\"receipt\":\"{STALE}\"}" => 200 Soft),
    row!(POST b"/queue", JSON, b"{\"cmd\":\"ack\",\"receipts\":\"{LIVE}\"}" => 400 Error),
    row!(POST b"/queue", JSON, b"{\"cmd\":\"ack\",\"receipts\":[]}" => 200 Soft),
    row!(POST b"/queue", JSON, b"{\"cmd\":\"ack\",\"receipts\":[\"{LIVE}\",5]}" => 400 Error),
    row!(POST b"/queue", JSON, b"{\"cmd\":\"ack\",\"receipts\":[\"{LIVE}\",\"{STALE}\"]}" => 200 Soft),
    row!(POST b"/queue", JSON, b"{\"cmd\":\"nack\",\"receipt\":\"{LIVE}\",\"delay\":-1}" => 400 Error),
    row!(POST b"/queue", JSON, b"{\"cmd\":\"nack\",\"receipt\":\"{STALE}\"}" => 200 Soft),
    row!(POST b"/queue", JSON, b"{\"cmd\":\"extend\",\"receipt\":\"{LIVE}\"}" => 200 Soft),
    row!(POST b"/queue", JSON, b"{\"cmd\":\"extend\",\"receipt\":\"{LIVE}\",\"visibility\":\"x\"}" => 400 Error),
    // Acknowledgements: malformed receipts get 400, well-formed stale ones 409.
    row!(POST b"/ack", FORM, b"" => 400 Error),
    row!(POST b"/ack", FORM, b"receipt=" => 400 Error),
    row!(POST b"/ack", FORM, b"receipt=garbage" => 400 Error),
    row!(POST b"/ack", FORM, b"receipt=r1.1.1.zz" => 400 Error),
    row!(POST b"/ack", FORM, b"receipt=r1.1.1.00" => 400 Error),
    row!(POST b"/ack", FORM, b"receipt=R1.1.1.6a6f6273" => 400 Error),
    row!(POST b"/ack", FORM, b"receipt=r1.%2B1.1.6a6f6273" => 400 Error),
    row!(POST b"/ack", FORM, b"receipt=r1.01.1.6a6f6273" => 400 Error),
    row!(POST b"/ack", FORM, b"receipt=r1.1.1.6A6F6273" => 400 Error),
    row!(POST b"/ack", FORM, b"receipt={LIVE}&receipt=garbage" => 400 Error),
    row!(POST b"/ack", FORM, b"receipt={STALE}" => 409 Stale),
    row!(POST b"/ack", FORM, b"receipt={LIVE}&receipt={STALE}" => 409 Stale),
    row!(POST b"/ack", FORM, b"receipt=r1.63.1.6a6f6273" => 409 Stale),
    row!(POST b"/nack", FORM, b"" => 400 Error),
    row!(POST b"/nack", FORM, b"receipt={STALE}" => 409 Stale),
    row!(POST b"/nack", FORM, b"receipt={LIVE}&delay=-1" => 400 Error),
    row!(POST b"/nack", FORM, b"receipt={LIVE}&delay=1s" => 400 Error),
    row!(POST b"/extend", FORM, b"receipt={LIVE}" => 400 Error),
    row!(POST b"/extend", FORM, b"receipt={LIVE}&visibility=x" => 400 Error),
    row!(POST b"/extend", FORM, b"receipt={STALE}&visibility=5" => 409 Stale),
    row!(POST b"/extend", FORM, b"receipt=garbage&visibility=5" => 400 Error),
    // Settings, /config/<q>, and redrive.
    row!(POST b"/config/jobs", FORM, b"body={" => 400 Error),
    row!(POST b"/config/jobs", FORM, b"" => 400 Error),
    row!(POST b"/config/jobs", JSON, b"[1]" => 400 Error),
    row!(POST b"/config/jobs", JSON, b"{\"visibility\":-1}" => 400 Error),
    row!(POST b"/config/jobs", JSON, b"{\"visibility\":\"30\"}" => 400 Error),
    row!(POST b"/config/jobs", JSON, b"{\"visibility\":1.5}" => 400 Error),
    row!(POST b"/config/jobs", JSON, b"{\"max_len\":18446744073709551616}" => 400 Error),
    row!(POST b"/config/jobs", JSON, b"{\"bogus\":1}" => 400 Error),
    row!(POST b"/config/jobs", JSON, b"{\"visibility\":5,\"bogus\":1}" => 400 Error),
    row!(POST b"/config/jobs", JSON, b"{\"dead_letter\":\"jobs\"}" => 400 Error),
    row!(POST b"/config/jobs", JSON, b"{\"dead_letter\":\"\"}" => 400 Error),
    row!(POST b"/config/jobs", JSON, b"{\"dead_letter\":5}" => 400 Error),
    row!(POST b"/config/jobs", JSON, b"{\"dead_letter\":\"a\\nb\"}" => 400 Error),
    row!(POST b"/config/jobs", JSON, b"{\"dead_letter\":\"{LONG}\"}" => 400 Error),
    row!(POST b"/config/jobs", JSON, b"{BIG}" => 413 Error),
    row!(POST b"/config/", JSON, b"{}" => 400 Error),
    row!(GET b"/config/%FF", NO, b"" => 400 Error),
    row!(POST b"/redrive/", NO, b"" => 400 Error),
    row!(POST b"/redrive/%00", NO, b"" => 400 Error),
    // Policies and pause.
    row!(POST b"/p/jobs", FORM, b"" => 400 Error),
    row!(POST b"/p/jobs", FORM, b"policy=sometimes" => 200 Exact("null\r\n")),
    row!(POST b"/p/jobs", FORM, b"policy=broadcast&callback=bad(" => 400 Error),
    row!(GET b"/p/jobs?callback=a-", NO, b"" => 400 Error),
    row!(POST b"/p/", FORM, b"policy=broadcast" => 400 Error),
    row!(POST b"/control/paused", FORM, b"status=go" => 200 Exact("{\"stat\":\"invalid status: go\"}\r\n")),
    row!(POST b"/control/paused", FORM, b"" => 200 Exact("{\"stat\":\"invalid status: None\"}\r\n")),
    row!(POST b"/control/paused", FORM, b"status=start&callback=1" => 400 Error),
    row!(POST b"/control/", FORM, b"status=stop" => 400 Error),
    row!(GET b"/control/%FF", NO, b"" => 400 Error),
    // Statistics and the job view.
    row!(GET b"/stats/?callback=x-y", NO, b"" => 400 Error),
    row!(GET b"/stats/jobs?callback=%3Cscript%3E", NO, b"" => 400 Error),
    row!(GET b"/stats/a%00", NO, b"" => 400 Error),
    row!(GET b"/j/", NO, b"" => 400 Error),
    row!(GET b"/j/%0D", NO, b"" => 400 Error),
    // Streams: refused before they take anything (the first request of a
    // connection is served on the raw path, as real stream clients are).
    row!(GET b"/c/jobs?callback=alert(1)", NO, b"" => 400 Error),
    row!(GET b"/c/%FF", NO, b"" => 400 Error),
    row!(GET b"/c/", NO, b"" => 400 Error),
    row!(GET b"/c/jobs?x=%FF", NO, b"" => 400 Error),
    row!(GET b"/c/jobs", &[b"Bad Header"], b"" => 400 Error),
    row!(GET b"/c/jobs", &[b"x-big: {HEAD20K}"], b"" => 431 Error),
    row!(GET b"/sse/jobs", &[b"x-big: {HEAD20K}"], b"" => 431 Error),
    row!(GET b"/q/jobs", &[b"x-big: {HEAD500K}"], b"" => 431 Bare),
    row!(GET b"/c/jobs", &[b"accept: text/event-stream", b"last-event-id: jobs:x"], b"" => 400 Error),
    row!(GET b"/sse/jobs", &[b"last-event-id: garbage"], b"" => 400 Error),
    row!(GET b"/sse/jobs", &[b"last-event-id: held:1"], b"" => 400 Error),
    row!(GET b"/sse/jobs", &[b"last-event-id: \xff\xfe"], b"" => 400 Error),
    row!(GET b"/sse/jobs?last_event_id=jobs:0", NO, b"" => 400 Error),
    row!(GET b"/sse/{LONG}", SSE, b"" => 400 Error),
    row!(GET b"/sse/", NO, b"" => 400 Error),
    row!(HEAD b"/c/jobs", NO, b"" => 405 Bare),
    row!(HEAD b"/sse/jobs", NO, b"" => 405 Bare),
    // WebSocket handshakes.
    row!(GET b"/ws/jobs", NO, b"" => 426 Error),
    row!(GET b"/ws/jobs?ack=2", NO, b"" => 400 Error),
    row!(GET b"/ws/jobs?ack=1&prefetch=0", NO, b"" => 400 Error),
    row!(GET b"/ws/jobs?ack=1&prefetch=1001", NO, b"" => 400 Error),
    row!(GET b"/ws/jobs?ack=1&visibility=0", NO, b"" => 400 Error),
    row!(GET b"/ws/jobs?ack=1&visibility=-3", NO, b"" => 400 Error),
    row!(GET b"/ws/", NO, b"" => 400 Error),
    row!(GET b"/ws/%FF", NO, b"" => 400 Error),
    row!(GET b"/ws/jobs", &[b"connection: upgrade", b"upgrade: websocket", b"sec-websocket-version: 13"], b"" => 426 Error),
    row!(GET b"/ws/jobs", &[b"connection: upgrade", b"upgrade: websocket", b"sec-websocket-version: 7", b"sec-websocket-key: dGhlIHNhbXBsZSBub25jZQ=="], b"" => 426 Error),
];

/// Bad credentials and rights, against a server with access rules (see
/// [`ACL`]): 401 with a challenge, or 403, before any work is done.
#[rustfmt::skip]
static ACL_ROWS: &[Row] = &[
    row!(POST b"/q/jobs", FORM, b"value=a" => 401 Error),
    row!(POST b"/q/jobs", &[b"content-type: application/x-www-form-urlencoded", b"authorization: Basic !!!"], b"value=a" => 401 Error),
    row!(POST b"/q/jobs", &[b"content-type: application/x-www-form-urlencoded", b"authorization: Basic cHJvZHVjZXI6d3Jvbmc="], b"value=a" => 401 Error),
    row!(POST b"/q/jobs", &[b"content-type: application/x-www-form-urlencoded", b"authorization: Basic bm9jb2xvbg=="], b"value=a" => 401 Error),
    row!(POST b"/q/jobs", &[b"content-type: application/x-www-form-urlencoded", b"authorization: Basic"], b"value=a" => 401 Error),
    row!(POST b"/q/jobs", &[b"content-type: application/x-www-form-urlencoded", b"authorization: Bearer"], b"value=a" => 401 Error),
    row!(POST b"/q/jobs", &[b"content-type: application/x-www-form-urlencoded", b"authorization: Bearer wrong"], b"value=a" => 401 Error),
    row!(POST b"/q/jobs", &[b"content-type: application/x-www-form-urlencoded", b"authorization: \xff\xfe"], b"value=a" => 401 Error),
    row!(POST b"/q/jobs?access_token=%FF", FORM, b"value=a" => 401 Error),
    row!(GET b"/q/jobs", &[b"authorization: Bearer wrong"], b"" => 401 Error),
    row!(GET b"/q/jobs", &[b"authorization: Basic cHJvZHVjZXI6c2VjcmV0"], b"" => 401 Error),
    row!(GET b"/q/jobs?access_token=worker-token%00", NO, b"" => 401 Error),
    row!(POST b"/q/other", &[b"content-type: application/x-www-form-urlencoded", b"authorization: Bearer worker-token"], b"value=a" => 403 Error),
    row!(GET b"/q/other", &[b"authorization: Bearer worker-token"], b"" => 403 Error),
    row!(DELETE b"/q/jobs", &[b"authorization: Bearer worker-token"], b"" => 403 Error),
    row!(GET b"/stats/", &[b"authorization: Bearer worker-token"], b"" => 403 Error),
    row!(POST b"/p/jobs", &[b"content-type: application/x-www-form-urlencoded", b"authorization: Bearer worker-token"], b"policy=roundrobin" => 403 Error),
    row!(POST b"/control/jobs", &[b"content-type: application/x-www-form-urlencoded", b"authorization: Bearer worker-token"], b"status=stop" => 403 Error),
    row!(POST b"/config/jobs", &[b"content-type: application/json", b"authorization: Bearer worker-token"], b"{\"max_len\":1}" => 403 Error),
    row!(POST b"/redrive/jobs", &[b"authorization: Bearer worker-token"], b"" => 403 Error),
    row!(POST b"/", &[b"content-type: application/x-www-form-urlencoded", b"authorization: Bearer worker-token"], b"queue=other&value=a" => 403 Error),
    row!(GET b"/?queue=other", &[b"authorization: Bearer worker-token"], b"" => 403 Error),
    row!(POST b"/queue", &[b"content-type: application/json", b"authorization: Bearer worker-token"], b"{\"cmd\":\"add\",\"queue\":\"other\",\"value\":\"x\"}" => 403 Error),
    row!(POST b"/queue", &[b"content-type: application/json", b"authorization: Bearer worker-token"], b"{\"cmd\":\"take\",\"queue\":\"other\"}" => 403 Error),
    row!(POST b"/ack", &[b"content-type: application/x-www-form-urlencoded", b"authorization: Bearer worker-token"], b"receipt=r1.1.1.6f74686572" => 403 Error),
    row!(POST b"/ack", &[b"content-type: application/x-www-form-urlencoded", b"authorization: Bearer worker-token"], b"receipt={LIVE}&receipt=r1.1.1.6f74686572" => 403 Error),
    row!(POST b"/nack", &[b"content-type: application/x-www-form-urlencoded", b"authorization: Bearer wrong"], b"receipt={LIVE}" => 401 Error),
    row!(GET b"/c/jobs", NO, b"" => 401 Error),
    row!(GET b"/c/jobs?access_token=wrong", NO, b"" => 401 Error),
    row!(GET b"/c/other?access_token=worker-token", NO, b"" => 403 Error),
    row!(GET b"/sse/other", &[b"authorization: Bearer worker-token"], b"" => 403 Error),
    row!(GET b"/ws/other?access_token=worker-token", NO, b"" => 403 Error),
    row!(GET b"/ws/jobs", &[b"cookie: auth=producer:wrong"], b"" => 401 Error),
];

/// The access rules of [`ACL_ROWS`]: HTTP Basic for producers, a worker token
/// with rights on `jobs` only, and an administrator token (`ADMIN_TOKEN`).
const ACL: &str = "[rest:producer]\nusername = producer\npassword = secret\n\n\
                   [token:worker]\nsha256 = {worker}\npublish = jobs\nconsume = jobs\n\n\
                   [token:admin]\nsha256 = {admin}\npublish = *\nconsume = *\nadmin = *\n";
const ADMIN_TOKEN: &str = "admin-token";

/// The fixture's queues, whose state no row may change.
const QUEUES: [&str; 4] = ["jobs", "held", "paused", "full"];

/// Receipts of the fixture: one in flight, one whose delivery is over.
struct Receipts {
    live: String,
    stale: String,
}

/// `a` with every `from` replaced by `to`.
fn replace(a: &[u8], from: &[u8], to: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(a.len());
    let mut rest = a;
    while let Some(at) = rest.windows(from.len()).position(|w| w == from) {
        out.extend_from_slice(&rest[..at]);
        out.extend_from_slice(to);
        rest = &rest[at + from.len()..];
    }
    out.extend_from_slice(rest);
    out
}

/// Fills in a row's placeholders: the fixture's receipts, a queue name one byte
/// over the limit, a body over the limit, JSON nested deeper than the parser's
/// limit, header values too long for a stream request (16 KiB) and for any
/// request (hyper's 400 KiB or so).
fn expand(bytes: &[u8], receipts: &Receipts) -> Vec<u8> {
    let mut out = bytes.to_vec();
    for name in [
        "{LIVE}",
        "{STALE}",
        "{LONG}",
        "{BIG}",
        "{DEEP}",
        "{HEAD20K}",
        "{HEAD500K}",
    ] {
        if !out.windows(name.len()).any(|w| w == name.as_bytes()) {
            continue;
        }
        let value = match name {
            "{LIVE}" => receipts.live.clone(),
            "{STALE}" => receipts.stale.clone(),
            "{LONG}" => "x".repeat(restmq::broker::MAX_QUEUE_NAME + 1),
            "{BIG}" => format!("value={}", "x".repeat(MAX_BODY)),
            "{DEEP}" => format!("{}{}", "[".repeat(300), "]".repeat(300)),
            "{HEAD20K}" => "a".repeat(20_000),
            _ => "a".repeat(500_000),
        };
        out = replace(&out, name.as_bytes(), value.as_bytes());
    }
    out
}

fn describe(row: &Row) -> String {
    format!(
        "{} {} headers {:?} body {:?} (want {} {:?})",
        row.method,
        String::from_utf8_lossy(row.target),
        row.headers
            .iter()
            .map(|h| String::from_utf8_lossy(h))
            .collect::<Vec<_>>(),
        String::from_utf8_lossy(&row.body[..row.body.len().min(120)]),
        row.status,
        row.shape,
    )
}

/// Checks an answer against its row; the reason it does not match, if so.
fn mismatch(row: &Row, answer: &RawAnswer) -> Option<String> {
    if answer.status != row.status {
        return Some(format!(
            "status {} instead of {}",
            answer.status, row.status
        ));
    }
    if answer.status == 401 && answer.header("www-authenticate").is_none() {
        return Some("a 401 without a challenge (WWW-Authenticate)".to_owned());
    }
    let body = answer.text();
    let ok = match row.shape {
        Shape::Error => {
            answer.is_json_error() && answer.json().is_some_and(|j| j.get("stale").is_none())
        }
        Shape::Stale => {
            answer.is_json_error()
                && answer
                    .json()
                    .and_then(|j| j.get("stale").and_then(Value::as_array).map(Vec::len))
                    .is_some_and(|n| n > 0)
        }
        Shape::Soft => answer.is_json_error(),
        Shape::Exact(want) => body == want,
        Shape::Bare => answer.json().is_none() || answer.is_json_error(),
    };
    (!ok).then(|| format!("unexpected answer {:?}: {body:?}", answer.content_type()))
}

/// Everything a bad request might wrongly change about `queues`, read without
/// changing it (as the bearer `token`, when access is restricted).
async fn snapshot(
    server: &TestServer,
    queues: &[&str],
    token: Option<&str>,
) -> Vec<(String, String)> {
    let mut paths = vec![
        "/stats/".to_owned(),
        "/control/".to_owned(),
        "/q/".to_owned(),
    ];
    for queue in queues {
        // `/stats/` has each queue's counts, status and policy; these add
        // its newest messages and its settings.
        for route in ["j", "config"] {
            paths.push(format!("/{route}/{queue}"));
        }
    }
    let mut state = Vec::with_capacity(paths.len());
    for path in paths {
        let mut request = server.client.get(server.url(&path));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        let answer = common::Answer::read(request.send().await).await;
        assert_eq!(answer.status, 200, "snapshot {path}: {}", answer.body);
        state.push((path, answer.body));
    }
    state
}

/// Sends every row to `server`, comparing the snapshot of `queues` after each;
/// what went wrong, row by row.
async fn run_table(
    server: &TestServer,
    rows: &[Row],
    receipts: &Receipts,
    queues: &[&str],
    token: Option<&str>,
) -> Vec<String> {
    let mut before = snapshot(server, queues, token).await;
    let mut failures = Vec::new();
    for (i, row) in rows.iter().enumerate() {
        let target = expand(row.target, receipts);
        let headers: Vec<Vec<u8>> = row.headers.iter().map(|h| expand(h, receipts)).collect();
        let header_refs: Vec<&[u8]> = headers.iter().map(Vec::as_slice).collect();
        let body = expand(row.body, receipts);
        let request = raw::request(row.method, &target, &header_refs, &body);
        let answer = raw::exchange(server.addr, &request, row.method == "HEAD").await;
        if let Some(why) = mismatch(row, &answer) {
            failures.push(format!("row {i}: {}\n    {why}", describe(row)));
        }
        let after = snapshot(server, queues, token).await;
        if let Some(((path, was), (_, now))) = before.iter().zip(&after).find(|(a, b)| a != b) {
            failures.push(format!(
                "row {i}: {}\n    changed {path}\n    before: {was}\n    after:  {now}",
                describe(row)
            ));
            // Goes on from the changed state, to report every row at once.
            before = after;
        }
    }
    failures
}

/// A server with a small body limit, and the fixture: `jobs` (three messages,
/// roundrobin, max_receives 3), `held` (one waiting, one in flight; a live and
/// a stale receipt), `paused` (stopped, one message), `full` (max_len 1, full).
async fn fixture() -> (TestServer, Receipts) {
    let dir = tempfile::tempdir().expect("temporary directory");
    let mut config = Config::new(dir.path());
    config.max_body = MAX_BODY;
    let server = TestServer::start_with(config, Some(dir)).await;
    for value in ["j1", "j2", "j3"] {
        server.publish("jobs", value).await;
    }
    let ok = |answer: common::Answer| {
        assert_eq!(answer.status, 200, "{}", answer.body);
        answer
    };
    ok(server
        .post_form("/p/jobs", &[("policy", "roundrobin")])
        .await);
    ok(server
        .post_raw("/config/jobs", "application/json", r#"{"max_receives":3}"#)
        .await);
    server.publish("held", "h1").await;
    server.publish("held", "h2").await;
    let receive = || async {
        let got = ok(server.get("/q/held?visibility=600").await).json();
        assert_eq!(got["key"], "held:1", "{got}");
        got["receipt"].as_str().expect("a receipt").to_owned()
    };
    let stale = receive().await;
    ok(server.post_form("/nack", &[("receipt", &stale)]).await);
    let live = receive().await;
    assert_ne!(live, stale);
    server.publish("paused", "p1").await;
    ok(server
        .post_form("/control/paused", &[("status", "stop")])
        .await);
    ok(server
        .post_raw("/config/full", "application/json", r#"{"max_len":1}"#)
        .await);
    server.publish("full", "f1").await;
    (server, Receipts { live, stale })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_bad_request_gets_its_4xx_and_a_json_error_and_changes_nothing() {
    assert!(ROWS.len() >= 60, "the table has {} rows", ROWS.len());
    let (server, receipts) = fixture().await;
    let failures = run_table(&server, ROWS, &receipts, &QUEUES, None).await;
    assert!(
        failures.is_empty(),
        "{} of {} rows answered wrongly:\n{}",
        failures.len(),
        ROWS.len(),
        failures.join("\n")
    );
    // Nothing was taken, released or numbered: the fixture goes on as it was.
    assert_eq!(server.publish("jobs", "j4").await, "jobs:4");
    assert_eq!(server.publish("held", "h3").await, "held:3");
    assert_eq!(
        server.pop("jobs").await,
        Some(("jobs:1".to_owned(), "j1".to_owned()))
    );
    let acked = server
        .post_form("/ack", &[("receipt", &receipts.live)])
        .await;
    assert_eq!((acked.status, acked.json()), (200, json!({"acked": 1})));
    let stale = server
        .post_form("/ack", &[("receipt", &receipts.stale)])
        .await;
    assert_eq!(stale.status, 409);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_credentials_and_missing_rights_get_401_or_403_and_change_nothing() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let acl = dir.path().join("acl.conf");
    let rules = ACL
        .replace("{worker}", &restmq::acl::token_digest("worker-token"))
        .replace("{admin}", &restmq::acl::token_digest(ADMIN_TOKEN));
    std::fs::write(&acl, rules).expect("write acl.conf");
    let mut config = Config::new(dir.path().join("data"));
    config.acl = Some(acl);
    let server = TestServer::start_with(config, Some(dir)).await;
    let admin = |request: reqwest::RequestBuilder| async move {
        let answer = common::Answer::read(request.bearer_auth(ADMIN_TOKEN).send().await).await;
        assert_eq!(answer.status, 200, "{}", answer.body);
        answer
    };
    for (queue, value) in [
        ("jobs", "j1"),
        ("jobs", "j2"),
        ("other", "o1"),
        ("other", "o2"),
    ] {
        let url = server.url(&format!("/q/{queue}"));
        admin(server.client.post(url).form(&[("value", value)])).await;
    }
    let got = admin(server.client.get(server.url("/q/jobs?visibility=600"))).await;
    let live = got.json()["receipt"]
        .as_str()
        .expect("a receipt")
        .to_owned();
    let receipts = Receipts {
        stale: live.clone(),
        live,
    };
    let failures = run_table(
        &server,
        ACL_ROWS,
        &receipts,
        &["jobs", "other"],
        Some(ADMIN_TOKEN),
    )
    .await;
    assert!(
        failures.is_empty(),
        "{} of {} rows answered wrongly:\n{}",
        failures.len(),
        ACL_ROWS.len(),
        failures.join("\n")
    );
    // The worker's token does what it may.
    let acked = common::Answer::read(
        server
            .client
            .post(server.url("/ack"))
            .bearer_auth("worker-token")
            .form(&[("receipt", &receipts.live)])
            .send()
            .await,
    )
    .await;
    assert_eq!((acked.status, acked.json()), (200, json!({"acked": 1})));
}

/// A frame read from a socket, or how it ended.
#[derive(Debug)]
enum Got {
    Text(String),
    Binary(Vec<u8>),
    /// A close frame, the end of the stream, or a connection error.
    Closed,
}

async fn next_frame(socket: &mut common::WebSocket) -> Got {
    loop {
        let frame = tokio::time::timeout(DEADLINE, socket.next())
            .await
            .unwrap_or_else(|_| panic!("no WebSocket frame within {DEADLINE:?}"));
        return match frame {
            Some(Ok(Frame::Text(text))) => Got::Text(text.to_string()),
            Some(Ok(Frame::Binary(bytes))) => Got::Binary(bytes.to_vec()),
            Some(Ok(Frame::Ping(_) | Frame::Pong(_))) => continue,
            Some(Ok(Frame::Close(_) | Frame::Frame(_))) | Some(Err(_)) | None => Got::Closed,
        };
    }
}

/// Frames a WebSocket with `ack=1` may send that cannot be carried out: each is
/// answered by a frame with an `error`, and the socket goes on.
#[rustfmt::skip]
static ACK_FRAMES: &[&[u8]] = &[
    b"not json",
    b"",
    b"[]",
    b"null",
    b"\"ack\"",
    b"{}",
    b"{\"cmd\":5}",
    b"{\"cmd\":\"take\",\"queue\":\"jobs\"}",
    b"{\"cmd\":\"add\",\"queue\":\"jobs\",\"value\":\"x\"}",
    b"{\"cmd\":\"ack\"}",
    b"{\"cmd\":\"ack\",\"receipt\":\"garbage\"}",
    b"{\"cmd\":\"ack\",\"receipt\":7}",
    b"{\"cmd\":\"ack\",\"receipt\":\"{STALE}\"}",
    b"{\"cmd\":\"ack\",\"receipts\":[\"{LIVE}\",\"{STALE}\"]}",
    b"{\"cmd\":\"ack\",\"receipts\":[\"{LIVE}\",null]}",
    b"{\"cmd\":\"nack\",\"receipt\":\"{LIVE}\",\"delay\":\"x\"}",
    b"{\"cmd\":\"nack\",\"receipt\":\"{STALE}\"}",
    b"{\"cmd\":\"extend\",\"receipt\":\"{LIVE}\",\"visibility\":-1}",
    b"{\"cmd\":\"extend\",\"receipt\":\"{LIVE}\"}",
    b"{DEEP}",
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websockets_sending_garbage_get_error_frames_or_are_closed() {
    let (server, receipts) = fixture().await;
    let before = snapshot(&server, &QUEUES, None).await;

    // Acknowledging socket, on a queue of its own: every garbage command gets
    // an error frame, and the socket stays usable.
    let mut socket = server.websocket("wsack?ack=1").await;
    for (i, text) in ACK_FRAMES.iter().enumerate() {
        let text = String::from_utf8(expand(text, &receipts)).expect("UTF-8");
        socket
            .send(Frame::Text(text.clone().into()))
            .await
            .expect("send");
        let reply = match next_frame(&mut socket).await {
            Got::Text(reply) => reply,
            other => panic!("frame {i} {text:?}: got {other:?}"),
        };
        let reply: Value = serde_json::from_str(&reply)
            .unwrap_or_else(|e| panic!("frame {i} {text:?}: not JSON ({e}): {reply}"));
        let error = reply["error"].as_str().unwrap_or_default();
        assert!(!error.is_empty(), "frame {i} {text:?}: no error in {reply}");
        assert!(reply.get("reply").is_some(), "frame {i} {text:?}: {reply}");
        assert_eq!(
            snapshot(&server, &QUEUES, None).await,
            before,
            "frame {i} {text:?}"
        );
    }
    socket
        .send(Frame::Binary(vec![0, 159, 146, 150].into()))
        .await
        .expect("send");
    match next_frame(&mut socket).await {
        Got::Text(reply) => {
            let reply: Value = serde_json::from_str(&reply).expect("JSON");
            assert!(
                reply["error"].as_str().is_some_and(|e| !e.is_empty()),
                "{reply}"
            );
        }
        other => panic!("binary frame: got {other:?}"),
    }
    // A message larger than the body limit ends the socket.
    let huge = "x".repeat(MAX_BODY * 2);
    let _ = socket.send(Frame::Text(huge.into())).await;
    assert!(matches!(next_frame(&mut socket).await, Got::Closed));

    // Echoing socket: garbage is echoed as it came (the original's contract);
    // a text frame that is not UTF-8 is a protocol error that ends the socket.
    let mut echo = server.websocket("wsecho").await;
    echo.send(Frame::Binary(vec![0xff, 0, 0xfe].into()))
        .await
        .expect("send");
    assert!(matches!(next_frame(&mut echo).await, Got::Binary(b) if b == [0xff, 0, 0xfe]));
    echo.send(Frame::Text("{\"cmd\":\"take\",\"queue\":\"jobs\"}".into()))
        .await
        .expect("send");
    assert!(matches!(next_frame(&mut echo).await, Got::Text(t) if t.contains("take")));
    let not_utf8 = RawFrame::message(vec![0xff, 0xfe, 0xfd], OpCode::Data(Data::Text), true);
    let _ = echo.send(Frame::Frame(not_utf8)).await;
    assert!(matches!(next_frame(&mut echo).await, Got::Closed));

    // Bytes that are no WebSocket frame at all, after a real handshake.
    for garbage in [
        &b"\x83\x00"[..],      // a reserved opcode
        &b"\x81\x05hello"[..], // an unmasked client frame
        &[0xff; 16][..],       // reserved bits, a length over any limit
    ] {
        let mut socket = handshake(&server, "/ws/wsraw").await;
        socket.write_all(garbage).await.expect("write");
        let mut rest = Vec::new();
        let ended = tokio::time::timeout(DEADLINE, socket.read_to_end(&mut rest)).await;
        assert!(
            ended.is_ok(),
            "the server kept a garbage socket open: {garbage:?}"
        );
    }

    // Nothing changed, every socket is gone, and others are served.
    eventually("the sockets to close", || async {
        (snapshot(&server, &QUEUES, None).await == before).then_some(())
    })
    .await;
    let mut fine = server.websocket("held?ack=1").await;
    let Got::Text(frame) = next_frame(&mut fine).await else {
        panic!("no message on a fresh socket");
    };
    let frame: Value = serde_json::from_str(&frame).expect("JSON");
    assert_eq!(frame["key"], "held:2", "{frame}");
    drop(fine);
    assert_eq!(server.publish("jobs", "j4").await, "jobs:4");
}

/// A raw WebSocket handshake to `path`; the socket after the 101 answer.
async fn handshake(server: &TestServer, path: &str) -> tokio::net::TcpStream {
    let mut socket = tokio::net::TcpStream::connect(server.addr)
        .await
        .expect("connect");
    let request = format!(
        "GET {path} HTTP/1.1\r\nhost: restmq.test\r\nconnection: upgrade\r\nupgrade: websocket\r\n\
         sec-websocket-version: 13\r\nsec-websocket-key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
    );
    socket.write_all(request.as_bytes()).await.expect("write");
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        let n = tokio::time::timeout(DEADLINE, socket.read(&mut byte))
            .await
            .expect("a handshake answer")
            .expect("read");
        assert_eq!(n, 1, "closed during the handshake: {head:?}");
        head.push(byte[0]);
    }
    assert!(
        head.starts_with(b"HTTP/1.1 101"),
        "{}",
        String::from_utf8_lossy(&head)
    );
    socket
}

/// The largest number a parameter takes, and one past it.
const MAX: &str = "18446744073709551615";

/// Numbers at the top of their range are valid: they must work (a time span
/// that long is as good as forever), never overflow a deadline, on every store.
async fn the_largest_numbers_are_taken_without_overflowing(backend: common::Backend) {
    let Some(server) = TestServer::on(backend).await else {
        return;
    };
    let ok = |answer: common::Answer, what: &str| {
        assert_eq!(answer.status, 200, "{what}: {}", answer.body);
        answer
    };
    let form = [("value", "forever"), ("ttl", MAX)];
    ok(server.post_form("/q/edge", &form).await, "ttl");
    assert_eq!(
        server.pop("edge").await,
        Some(("edge:1".to_owned(), "forever".to_owned()))
    );
    let form = [("value", "never"), ("delay", MAX)];
    ok(server.post_form("/q/edge", &form).await, "delay");
    assert_eq!(server.get("/stats/edge").await.json()["delayed"], 1);

    server.publish("held", "h").await;
    let path = format!("/q/held?visibility={MAX}");
    let got = ok(server.get(&path).await, "visibility").json();
    let receipt = got["receipt"].as_str().expect("a receipt").to_owned();
    let form = [("receipt", receipt.as_str()), ("visibility", MAX)];
    ok(server.post_form("/extend", &form).await, "extend");
    let form = [("receipt", receipt.as_str()), ("delay", MAX)];
    ok(server.post_form("/nack", &form).await, "nack");
    let settings =
        format!(r#"{{"visibility":{MAX},"retention":{MAX},"max_len":{MAX},"max_receives":{MAX}}}"#);
    ok(
        server
            .post_raw("/config/wide", "application/json", settings)
            .await,
        "config",
    );
    server.publish("wide", "w1").await;
    let command = format!(r#"{{"cmd":"receive","queue":"wide","visibility":{MAX}}}"#);
    let got = ok(
        server.post_raw("/queue", "application/json", command).await,
        "receive",
    );
    assert_eq!(got.json()["key"], "wide:1", "{}", got.body);

    // WebSockets with acknowledgements: the visibility asked for, the queue's
    // setting, and an extension, all as large as they go.
    for (queue, query) in [
        ("sock", format!("?ack=1&visibility={MAX}")),
        ("wide", "?ack=1".to_owned()),
    ] {
        server.publish(queue, "s1").await;
        let mut socket = server.websocket(&format!("{queue}{query}")).await;
        let Got::Text(frame) = next_frame(&mut socket).await else {
            panic!("{queue}{query}: the socket closed instead of delivering");
        };
        let frame: Value = serde_json::from_str(&frame).expect("JSON");
        let extend = json!({"cmd": "extend", "receipt": frame["receipt"], "visibility": u64::MAX});
        socket
            .send(Frame::Text(extend.to_string().into()))
            .await
            .expect("send");
        let Got::Text(reply) = next_frame(&mut socket).await else {
            panic!("{queue}{query}: the socket closed instead of answering extend");
        };
        let reply: Value = serde_json::from_str(&reply).expect("JSON");
        assert_eq!(reply["reply"], "extend", "{reply}");
        assert!(reply.get("error").is_none(), "{reply}");
    }
    assert_eq!(server.publish("after", "a").await, "after:1");
    assert_eq!(
        server.pop("after").await,
        Some(("after:1".to_owned(), "a".to_owned()))
    );
}

conformance!(the_largest_numbers_are_taken_without_overflowing);

/// A chunked `POST /q/<q>` whose pieces are each `piece_len` bytes of a form
/// body `value=` followed by `value_len` letters, sent whole.
fn chunked_publish(queue: &str, value_len: usize, piece_len: usize) -> Vec<u8> {
    let body = format!("value={}", "v".repeat(value_len));
    let mut request = format!(
        "POST /q/{queue} HTTP/1.1\r\nhost: restmq.test\r\n\
         content-type: application/x-www-form-urlencoded\r\n\
         transfer-encoding: chunked\r\nconnection: close\r\n\r\n"
    )
    .into_bytes();
    for piece in body.as_bytes().chunks(piece_len) {
        request.extend_from_slice(format!("{:x}\r\n", piece.len()).as_bytes());
        request.extend_from_slice(piece);
        request.extend_from_slice(b"\r\n");
    }
    request.extend_from_slice(b"0\r\n\r\n");
    request
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_in_many_pieces_is_read_whole_and_refused_past_the_limit() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let mut config = Config::new(dir.path());
    config.max_body = MAX_BODY;
    let server = TestServer::start_with(config, Some(dir)).await;

    // Just under the limit, in pieces of 100 bytes: each one a frame of its own.
    let fits = MAX_BODY - "value=".len();
    let answer = raw::exchange(server.addr, &chunked_publish("pieces", fits, 100), false).await;
    assert_eq!(
        (answer.status, answer.text()),
        (200, "pieces:1\r\n".to_owned())
    );
    let popped = server.get("/q/pieces").await.json();
    assert_eq!(popped["value"], "v".repeat(fits), "every piece, in order");

    // One byte past it: refused, with no length announced beforehand.
    let answer = raw::exchange(
        server.addr,
        &chunked_publish("pieces", fits + 1, 100),
        false,
    )
    .await;
    assert_eq!(answer.status, 413, "{}", answer.text());
    assert!(answer.is_json_error(), "{}", answer.text());
    assert_eq!(
        server.get("/q/pieces").await.status,
        204,
        "nothing was published"
    );
}
