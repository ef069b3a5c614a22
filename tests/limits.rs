//! Limits with clear answers: slow clients are dropped without hurting the
//! others, connections and streaming consumers past their limits get 503 with
//! Retry-After, a body too slow to arrive gets 408.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use common::raw::{self, RawAnswer};
use common::{DEADLINE, Streaming, TestServer, eventually};
use restmq::config::Config;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A server whose settings `tweak` changes.
async fn server_with(tweak: impl FnOnce(&mut Config)) -> TestServer {
    let dir = tempfile::tempdir().expect("temporary directory");
    let mut config = Config::new(dir.path());
    tweak(&mut config);
    TestServer::start_with(config, Some(dir)).await
}

/// Everything the server sends until it closes the connection.
async fn read_to_close(socket: &mut TcpStream) -> String {
    let mut answer = Vec::new();
    tokio::time::timeout(DEADLINE, socket.read_to_end(&mut answer))
        .await
        .expect("the server answers and closes within the deadline")
        .expect("a readable answer");
    String::from_utf8(answer).expect("a UTF-8 answer")
}

/// The JSON body of a raw HTTP answer.
fn body_json(answer: &str) -> Value {
    let (_, body) = answer.split_once("\r\n\r\n").expect("a head and a body");
    serde_json::from_str(body).unwrap_or_else(|e| panic!("not JSON ({e}): {body:?}"))
}

/// Whether a raw HTTP answer's head has `name: value` (name in any case).
fn has_header(answer: &str, name: &str, value: &str) -> bool {
    let head = answer.split("\r\n\r\n").next().unwrap_or("");
    head.lines().any(|line| {
        line.split_once(':')
            .is_some_and(|(n, v)| n.trim().eq_ignore_ascii_case(name) && v.trim() == value)
    })
}

/// Sends `start`, then trickles `rest` one byte per `pace`, never finishing
/// the request's head; counts itself in `started` once it has sent its first
/// byte, and returns true once the server closed the connection.
async fn loris(
    addr: std::net::SocketAddr,
    (start, rest): (&'static [u8], &'static [u8]),
    pace: Duration,
    started: &AtomicUsize,
) -> bool {
    let Ok(mut socket) = TcpStream::connect(addr).await else {
        return false;
    };
    let (mut reader, mut writer) = socket.split();
    let trickle = async {
        if writer.write_all(start).await.is_err() {
            return;
        }
        let mut first = true;
        for byte in rest {
            if writer.write_all(&[*byte]).await.is_err() {
                return;
            }
            if std::mem::take(&mut first) {
                started.fetch_add(1, Ordering::SeqCst);
            }
            tokio::time::sleep(pace).await;
        }
        // The head is never finished: wait for the server to give up.
        std::future::pending::<()>().await;
    };
    let closed = async {
        let mut buf = [0u8; 256];
        loop {
            match reader.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    };
    tokio::select! {
        () = trickle => false,
        () = closed => true,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_loris_clients_are_dropped_and_others_are_served_meanwhile() {
    let server = server_with(|c| c.header_timeout = Duration::from_secs(2)).await;
    // Three kinds: a request line never finished (before hyper), headers never
    // finished (in hyper), a stream request's headers never finished (the raw
    // stream path). Each sends a byte every 100 ms, far slower than the timeout.
    let trickled: &'static [u8] = b"X-Slow: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
    let heads: [(&'static [u8], &'static [u8]); 3] = [
        (
            b"",
            b"GET /q/loris HTTP/1.1 and more and more and more and more",
        ),
        (b"GET /q/loris HTTP/1.1\r\nHost: x\r\n", trickled),
        (b"GET /c/loris HTTP/1.1\r\nHost: x\r\n", trickled),
    ];
    let started = Arc::new(AtomicUsize::new(0));
    let closed = Arc::new(AtomicUsize::new(0));
    let count = 48;
    let mut lorises = Vec::new();
    for i in 0..count {
        let started = started.clone();
        let closed = closed.clone();
        let head = heads[i % heads.len()];
        let addr = server.addr;
        lorises.push(tokio::spawn(async move {
            if loris(addr, head, Duration::from_millis(100), &started).await {
                closed.fetch_add(1, Ordering::SeqCst);
            }
        }));
    }
    eventually("every slow client sending", || async {
        (started.load(Ordering::SeqCst) == count).then_some(())
    })
    .await;
    // Meanwhile a well-behaved client is served, request after request, while
    // every slow client still holds its connection.
    let served = async {
        for i in 0..10 {
            let key = server.publish("loris", &format!("v{i}")).await;
            assert_eq!(key, format!("loris:{}", i + 1));
        }
    };
    tokio::time::timeout(DEADLINE, served)
        .await
        .expect("publishes answered while slow clients hang on");
    assert_eq!(
        closed.load(Ordering::SeqCst),
        0,
        "the publishes waited for slow clients to be dropped"
    );
    eventually("every slow client dropped by the server", || async {
        (closed.load(Ordering::SeqCst) == count).then_some(())
    })
    .await;
    for loris in lorises {
        loris.await.expect("the slow client's task ends");
    }
    assert_eq!(
        server.pop("loris").await.map(|(_, v)| v).as_deref(),
        Some("v0")
    );
}

/// Sends `GET /healthz` on a keep-alive connection and reads its whole answer;
/// `None` once the server has closed.
async fn health_on(socket: &mut TcpStream) -> Option<RawAnswer> {
    socket
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .ok()?;
    let mut answer = Vec::new();
    let mut buf = [0u8; 1024];
    loop {
        let read = tokio::time::timeout(DEADLINE, socket.read(&mut buf))
            .await
            .expect("an answer within the deadline")
            .ok()?;
        if read == 0 {
            return None;
        }
        answer.extend_from_slice(&buf[..read]);
        if let Some(whole) = raw::parse(&answer, false) {
            return Some(whole);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_busy_keep_alive_connection_outlives_the_header_timeout_and_an_idle_one_is_closed() {
    let timeout = Duration::from_secs(1);
    let server = server_with(|c| c.header_timeout = timeout).await;
    let mut socket = TcpStream::connect(server.addr).await.expect("connect");
    // Request after request for three timeouts: each head comes at once, so
    // none is late, though the connection's first head was awaited long ago.
    let busy = tokio::time::Instant::now();
    let mut answered = 0;
    while busy.elapsed() < 3 * timeout {
        let answer = health_on(&mut socket)
            .await
            .unwrap_or_else(|| panic!("closed after {answered} answers, while busy"));
        assert_eq!(answer.status, 200, "{}", answer.text());
        answered += 1;
    }
    // Then idle: closed once the next head is a timeout late.
    let idle = tokio::time::Instant::now();
    let rest = read_to_close(&mut socket).await;
    assert_eq!(
        rest, "",
        "nothing is sent to an idle connection but its close"
    );
    assert!(
        idle.elapsed() >= timeout / 2,
        "an idle connection was closed before its header timeout"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_past_the_limit_get_503_and_the_server_goes_on() {
    let limit = 6;
    let server = server_with(|c| c.max_connections = limit).await;
    // Held open without a request: each counts until it closes.
    let mut held = Vec::new();
    for _ in 0..limit {
        held.push(TcpStream::connect(server.addr).await.expect("connect"));
    }
    for _ in 0..4 {
        let mut extra = TcpStream::connect(server.addr).await.expect("connect");
        extra
            .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .expect("send a request");
        let answer = read_to_close(&mut extra).await;
        assert!(answer.starts_with("HTTP/1.1 503 "), "{answer}");
        assert!(has_header(&answer, "retry-after", "1"), "{answer}");
        assert!(
            has_header(&answer, "content-type", "application/json"),
            "{answer}"
        );
        let error = body_json(&answer)["error"]
            .as_str()
            .unwrap_or("")
            .to_owned();
        assert!(error.contains("too many connections"), "{error}");
        assert!(error.contains(&limit.to_string()), "{error}");
    }
    // An ordinary client is told the same.
    let refused = reqwest::Client::new()
        .get(server.url("/healthz"))
        .send()
        .await
        .expect("an answer");
    assert_eq!(refused.status(), 503);
    assert_eq!(refused.headers()["retry-after"], "1");
    drop(held);
    // The held connections are released as the server sees them close.
    eventually("a fresh client served once the others left", || async {
        let fresh = reqwest::Client::new();
        let answer = fresh.get(server.url("/healthz")).send().await.ok()?;
        (answer.status() == 200).then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_that_does_not_arrive_in_time_gets_408() {
    let server = server_with(|c| c.body_timeout = Duration::from_secs(1)).await;
    let mut socket = TcpStream::connect(server.addr).await.expect("connect");
    socket
        .write_all(
            b"POST /q/slowbody HTTP/1.1\r\nHost: x\r\n\
              Content-Type: application/x-www-form-urlencoded\r\n\
              Content-Length: 100\r\n\r\nvalue=only-part",
        )
        .await
        .expect("send a partial request");
    let answer = read_to_close(&mut socket).await;
    assert!(answer.starts_with("HTTP/1.1 408 "), "{answer}");
    assert_eq!(
        body_json(&answer),
        serde_json::json!({"error": "the request body did not arrive within 1 s"})
    );
    assert_eq!(server.pop("slowbody").await, None, "nothing was published");
    // A body that arrives in time is unaffected.
    server.publish("slowbody", "whole").await;
}

/// Opens a stream on the connection's first request (served on the raw path):
/// its status and `Retry-After`, and the response to keep it open.
async fn open_raw(server: &TestServer, path: &str) -> (u16, Option<String>, reqwest::Response) {
    let fresh = reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .build()
        .expect("an HTTP client");
    let response = fresh
        .get(server.url(path))
        .send()
        .await
        .expect("the server answers");
    let retry = response
        .headers()
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    (response.status().as_u16(), retry, response)
}

/// Opens a stream as a connection's second request (served by hyper).
async fn open_on_used_connection(
    server: &TestServer,
    path: &str,
) -> (u16, Option<String>, reqwest::Response) {
    let client = reqwest::Client::new();
    let health = client
        .get(server.url("/healthz"))
        .send()
        .await
        .expect("healthz");
    assert_eq!(health.status(), 200);
    health.bytes().await.expect("healthz body");
    let response = client
        .get(server.url(path))
        .send()
        .await
        .expect("the server answers");
    let retry = response
        .headers()
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    (response.status().as_u16(), retry, response)
}

/// Asserts a refused stream: 503, Retry-After, the JSON error naming `limit`.
async fn assert_refused(refused: (u16, Option<String>, reqwest::Response), expected: &str) {
    let (status, retry, response) = refused;
    assert_eq!(status, 503);
    assert_eq!(retry.as_deref(), Some("1"));
    let body: Value = response.json().await.expect("a JSON error");
    let error = body["error"].as_str().unwrap_or("");
    assert!(error.contains(expected), "{error}");
}

/// A WebSocket handshake refused with an HTTP status: that status and
/// `Retry-After`.
async fn websocket_refused(server: &TestServer, path: &str) -> (u16, Option<String>) {
    let url = format!("ws://{}{path}", server.addr);
    match tokio_tungstenite::connect_async(url).await {
        Ok(_) => panic!("the WebSocket to {path} was accepted"),
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => (
            response.status().as_u16(),
            response
                .headers()
                .get("retry-after")
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned),
        ),
        Err(e) => panic!("unexpected WebSocket error: {e}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consumers_past_the_server_limit_get_503_until_one_leaves() {
    let server = server_with(|c| c.streams.max_consumers = Some(3)).await;
    let sse = Streaming::sse(&server, "/sse/all-a", &[]).await;
    let _comet = Streaming::comet(&server, "/all-b").await;
    let _socket = server.websocket("all-c").await;
    let everywhere = "too many streaming consumers: the server's limit of 3";
    // Every kind of consumer, on any queue, on either path, is refused now.
    assert_refused(open_raw(&server, "/sse/all-d").await, everywhere).await;
    assert_refused(open_raw(&server, "/c/all-d").await, everywhere).await;
    assert_refused(
        open_on_used_connection(&server, "/c/all-d").await,
        everywhere,
    )
    .await;
    assert_refused(
        open_on_used_connection(&server, "/sse/all-a").await,
        everywhere,
    )
    .await;
    assert_eq!(
        websocket_refused(&server, "/ws/all-d").await,
        (503, Some("1".to_owned()))
    );
    assert_eq!(
        websocket_refused(&server, "/ws/all-d?ack=1").await,
        (503, Some("1".to_owned()))
    );
    // Plain requests are not consumers.
    server.publish("all-d", "still served").await;
    drop(sse);
    let mut stream = eventually("a consumer accepted once one left", || async {
        let (status, _, response) = open_raw(&server, "/c/all-d").await;
        (status == 200).then_some(response)
    })
    .await;
    let chunk = tokio::time::timeout(DEADLINE, stream.chunk())
        .await
        .expect("the backlog arrives")
        .expect("a readable stream")
        .expect("a chunk");
    assert!(String::from_utf8_lossy(&chunk).contains("still served"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consumers_past_the_queue_limit_get_503_and_other_queues_are_free() {
    let server = server_with(|c| c.streams.max_queue_consumers = Some(1)).await;
    let first = Streaming::comet(&server, "busy").await;
    let per_queue = "too many streaming consumers of this queue: the limit of 1 per queue";
    assert_refused(open_raw(&server, "/c/busy").await, per_queue).await;
    assert_refused(open_raw(&server, "/sse/busy").await, per_queue).await;
    assert_refused(
        open_on_used_connection(&server, "/sse/busy").await,
        per_queue,
    )
    .await;
    assert_eq!(
        websocket_refused(&server, "/ws/busy").await,
        (503, Some("1".to_owned()))
    );
    assert_eq!(
        websocket_refused(&server, "/ws/busy?ack=1").await,
        (503, Some("1".to_owned()))
    );
    // Another queue has its own count.
    let _other = Streaming::sse(&server, "/sse/quiet", &[]).await;
    drop(first);
    let url = format!("ws://{}/ws/busy", server.addr);
    let mut socket = eventually("a WebSocket accepted once the consumer left", || async {
        tokio_tungstenite::connect_async(url.as_str())
            .await
            .ok()
            .map(|(socket, _)| socket)
    })
    .await;
    server.wait_consumers("busy", 1).await;
    let key = server.publish("busy", "after").await;
    let frame = common::ws_text(&mut socket).await.expect("a message");
    let frame: Value = serde_json::from_str(&frame).expect("a JSON frame");
    assert_eq!(frame, serde_json::json!({"key": key, "value": "after"}));
}
