//! Streaming consumers over real connections: COMET and Server-Sent Events read
//! incrementally, WebSockets with tokio-tungstenite, stuck consumers as raw sockets.

mod common;

use std::collections::HashSet;

use common::{Backend, Streaming, TestServer, eventually, ws_text};
use futures_util::SinkExt;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message as Frame;

fn message_json(key: &str, value: &str) -> Value {
    json!({"key": key, "value": value})
}

fn parse(text: &str) -> Value {
    serde_json::from_str(text).unwrap_or_else(|e| panic!("not JSON ({e}): {text:?}"))
}

async fn broadcast_reaches_every_consumer_over_every_transport(backend: Backend) {
    let Some(server) = TestServer::on(backend).await else {
        return;
    };
    let mut comets = vec![
        Streaming::comet(&server, "fan").await,
        Streaming::comet(&server, "fan").await,
    ];
    let mut events = vec![
        Streaming::sse(&server, "/sse/fan", &[]).await,
        Streaming::sse(&server, "/c/fan", &[("accept", "text/event-stream")]).await,
    ];
    let mut sockets = vec![server.websocket("fan").await, server.websocket("fan").await];
    server.wait_consumers("fan", 6).await;

    for i in 1..=20 {
        server.publish("fan", &format!("m{i}")).await;
    }
    for comet in &mut comets {
        for i in 1..=20 {
            assert_eq!(comet.message().await, (format!("fan:{i}"), format!("m{i}")));
        }
    }
    for sse in &mut events {
        for i in 1..=20 {
            let event = sse.event().await.expect("an event");
            assert_eq!(event.id, format!("fan:{i}"));
            assert_eq!(event.event, "");
            assert_eq!(
                parse(&event.data),
                message_json(&format!("fan:{i}"), &format!("m{i}"))
            );
        }
    }
    for socket in &mut sockets {
        for i in 1..=20 {
            let text = ws_text(socket).await.expect("a frame");
            assert_eq!(
                parse(&text),
                message_json(&format!("fan:{i}"), &format!("m{i}"))
            );
        }
    }
    // Streamed messages are consumed.
    assert_eq!(server.get("/stats/fan").await.json()["len"], 0);
    assert_eq!(server.get("/q/fan").await.status, 204);
}

async fn comet_lines_end_with_crlf_and_jsonp_wraps_them(backend: Backend) {
    let Some(server) = TestServer::on(backend).await else {
        return;
    };
    let mut raw = Streaming::comet(&server, "lines").await;
    assert!(
        raw.content_type.starts_with("text/plain"),
        "{}",
        raw.content_type
    );
    server.wait_consumers("lines", 1).await;
    server.publish("lines", "a \"quoted\" value").await;
    let line = raw.line().await.expect("a line");
    assert_eq!(line, r#"{"key":"lines:1","value":"a \"quoted\" value"}"#);
    drop(raw);
    server.wait_consumers("lines", 0).await;

    let mut wrapped = Streaming::open(&server, "/c/lines?callback=app.got", &[]).await;
    server.wait_consumers("lines", 1).await;
    server.publish("lines", "x").await;
    let line = wrapped.line().await.expect("a line");
    assert_eq!(line, r#"app.got({"key":"lines:2","value":"x"});"#);
    let bad = server.get("/c/lines?callback=alert(1)").await;
    assert_eq!(bad.status, 400);
}

async fn roundrobin_spreads_messages_evenly(backend: Backend) {
    let Some(server) = TestServer::on(backend).await else {
        return;
    };
    server.post_form("/p/rr", &[("policy", "roundrobin")]).await;
    let mut consumers = Vec::new();
    for _ in 0..3 {
        consumers.push(Streaming::comet(&server, "rr").await);
    }
    server.wait_consumers("rr", 3).await;
    for i in 1..=30 {
        server.publish("rr", &format!("m{i}")).await;
    }
    let mut seen = HashSet::new();
    for consumer in &mut consumers {
        let mut last = 0;
        for _ in 0..10 {
            let (key, _) = consumer.message().await;
            let n: u64 = key.trim_start_matches("rr:").parse().expect("a key");
            assert!(n > last, "each consumer gets its share in order");
            last = n;
            assert!(seen.insert(key.clone()), "{key} delivered twice");
        }
    }
    assert_eq!(seen.len(), 30);
}

async fn a_paused_queue_accumulates_and_resuming_delivers_the_backlog(backend: Backend) {
    let Some(server) = TestServer::on(backend).await else {
        return;
    };
    server.post_form("/control/pz", &[("status", "stop")]).await;
    let mut consumer = Streaming::comet(&server, "pz").await;
    server.wait_consumers("pz", 1).await;
    for i in 1..=5 {
        server.publish("pz", &format!("m{i}")).await;
    }
    // Nothing was streamed: the queue holds all five, and GET still pops (as in
    // the original, pausing affects streaming only).
    assert_eq!(server.get("/stats/pz").await.json()["len"], 5);
    assert_eq!(server.pop("pz").await, Some(("pz:1".into(), "m1".into())));
    // A consumer connecting meanwhile wakes the dispatcher, which must still hold back.
    let mut second = Streaming::comet(&server, "pz").await;
    server.wait_consumers("pz", 2).await;
    assert_eq!(server.get("/stats/pz").await.json()["len"], 4);

    let started = server
        .post_form("/control/pz", &[("status", "start")])
        .await;
    assert_eq!(started.json()["stat"]["status"], 1);
    for i in 2..=5 {
        assert_eq!(
            consumer.message().await,
            (format!("pz:{i}"), format!("m{i}"))
        );
        assert_eq!(second.message().await, (format!("pz:{i}"), format!("m{i}")));
    }
}

async fn delete_ends_every_stream_after_a_last_null(backend: Backend) {
    let Some(server) = TestServer::on(backend).await else {
        return;
    };
    let mut comet = Streaming::comet(&server, "del").await;
    let mut jsonp = Streaming::open(&server, "/c/del?callback=cb", &[]).await;
    let mut sse = Streaming::sse(&server, "/sse/del", &[]).await;
    let mut socket = server.websocket("del").await;
    server.wait_consumers("del", 4).await;
    server.publish("del", "before").await;
    assert_eq!(comet.message().await.1, "before");
    assert_eq!(
        jsonp.line().await.as_deref(),
        Some(r#"cb({"key":"del:1","value":"before"});"#)
    );
    assert_eq!(sse.event().await.map(|e| e.id), Some("del:1".into()));
    assert_eq!(
        ws_text(&mut socket).await.map(|t| parse(&t)["key"].clone()),
        Some(json!("del:1"))
    );
    server
        .post_form("/control/del", &[("status", "stop")])
        .await;
    server.publish("del", "waiting").await;

    let answer = server.delete("/q/del").await;
    assert_eq!(answer.body, "{\"queue\":\"del\",\"status\":1}\r\n");

    assert_eq!(comet.line().await.as_deref(), Some("null"));
    comet.ends().await;
    assert_eq!(jsonp.line().await.as_deref(), Some("cb(null);"));
    jsonp.ends().await;
    let last = sse.event().await.expect("a last event");
    assert_eq!(
        (last.event.as_str(), last.data.as_str()),
        ("deleted", "null")
    );
    assert_eq!(sse.event().await, None);
    assert_eq!(ws_text(&mut socket).await.as_deref(), Some("null"));
    assert_eq!(ws_text(&mut socket).await, None);

    server.wait_consumers("del", 0).await;
    let stats = server.get("/stats/").await.json();
    assert_eq!(stats["queues"]["del"]["len"], 0);
    assert_eq!(server.publish("del", "after").await, "del:3");
}

async fn a_late_consumer_receives_the_backlog(backend: Backend) {
    let Some(server) = TestServer::on(backend).await else {
        return;
    };
    for i in 1..=5 {
        server.publish("late", &format!("m{i}")).await;
    }
    let mut consumer = Streaming::comet(&server, "late").await;
    for i in 1..=5 {
        assert_eq!(
            consumer.message().await,
            (format!("late:{i}"), format!("m{i}"))
        );
    }
    server.publish("late", "live").await;
    assert_eq!(consumer.message().await, ("late:6".into(), "live".into()));
}

async fn a_consumer_may_connect_before_its_queue_exists(backend: Backend) {
    let Some(server) = TestServer::on(backend).await else {
        return;
    };
    let mut socket = server.websocket("a/future%20queue").await;
    server.wait_consumers("a/future%20queue", 1).await;
    assert_eq!(server.get("/stats/").await.json()["count"], 0);
    server.publish("a/future%20queue", "first").await;
    let text = ws_text(&mut socket).await.expect("a frame");
    assert_eq!(parse(&text), message_json("a/future queue:1", "first"));
}

async fn sse_resumes_after_the_last_event_id(backend: Backend) {
    let Some(server) = TestServer::on(backend).await else {
        return;
    };
    let mut first = Streaming::sse(&server, "/sse/r", &[]).await;
    server.wait_consumers("r", 1).await;
    for i in 1..=5 {
        server.publish("r", &format!("m{i}")).await;
    }
    for i in 1..=5 {
        assert_eq!(first.event().await.map(|e| e.id), Some(format!("r:{i}")));
    }
    drop(first);
    server.wait_consumers("r", 0).await;
    // Published while nobody listens: they wait in the queue.
    for i in 6..=8 {
        server.publish("r", &format!("m{i}")).await;
    }
    let mut resumed = Streaming::sse(&server, "/sse/r", &[("last-event-id", "r:3")]).await;
    for i in 4..=8 {
        let event = resumed.event().await.expect("an event");
        assert_eq!(event.id, format!("r:{i}"), "{event:?}");
        assert_eq!(parse(&event.data)["value"], format!("m{i}"));
    }
    // The parameter works as the header does, also on /c/ with Accept.
    let mut again = Streaming::sse(
        &server,
        "/c/r?last_event_id=r:6",
        &[("accept", "text/event-stream")],
    )
    .await;
    for i in 7..=8 {
        assert_eq!(again.event().await.map(|e| e.id), Some(format!("r:{i}")));
    }
    // Up to date: nothing to replay, then live messages.
    let mut current = Streaming::sse(&server, "/sse/r", &[("last-event-id", "r:8")]).await;
    server.wait_consumers("r", 3).await;
    server.publish("r", "m9").await;
    assert_eq!(current.event().await.map(|e| e.id), Some("r:9".into()));

    for bad in ["other:3", "r:x", "r:0", "r"] {
        let answer = server
            .client
            .get(server.url("/sse/r"))
            .header("last-event-id", bad)
            .send()
            .await
            .expect("an answer");
        assert_eq!(answer.status(), 400, "{bad}");
    }
}

async fn sse_says_when_the_resume_buffer_no_longer_reaches_back(backend: Backend) {
    let Some(server) = TestServer::configured(backend, |c| c.streams.resume_buffer = 2).await
    else {
        return;
    };
    let mut first = Streaming::sse(&server, "/sse/g", &[]).await;
    server.wait_consumers("g", 1).await;
    for i in 1..=5 {
        server.publish("g", &format!("m{i}")).await;
    }
    for i in 1..=5 {
        assert_eq!(first.event().await.map(|e| e.id), Some(format!("g:{i}")));
    }
    let mut resumed = Streaming::sse(&server, "/sse/g", &[("last-event-id", "g:1")]).await;
    let gap = resumed.event().await.expect("a gap event");
    assert_eq!(gap.event, "gap");
    assert_eq!(
        parse(&gap.data),
        json!({"last_event_id": "g:1", "oldest": "g:4"})
    );
    assert_eq!(resumed.event().await.map(|e| e.id), Some("g:4".into()));
    assert_eq!(resumed.event().await.map(|e| e.id), Some("g:5".into()));
}

async fn websockets_echo_what_clients_send(backend: Backend) {
    let Some(server) = TestServer::on(backend).await else {
        return;
    };
    let mut socket = server.websocket("echo").await;
    socket
        .send(Frame::Text("hello".into()))
        .await
        .expect("send");
    assert_eq!(ws_text(&mut socket).await.as_deref(), Some("hello"));
    let plain = server.get("/ws/echo").await;
    assert_eq!(plain.status, 426);
    assert!(
        plain.json()["error"]
            .as_str()
            .unwrap_or("")
            .contains("WebSocket")
    );
    for path in ["/ws/", "/c/", "/sse/"] {
        assert_eq!(server.get(path).await.status, 400, "{path}");
    }
}

/// A consumer that sends its request and then never reads: its socket fills up.
async fn stuck_consumer(server: &TestServer, queue: &str) -> TcpStream {
    let mut socket = TcpStream::connect(server.addr).await.expect("connect");
    let request = format!("GET /c/{queue} HTTP/1.1\r\nHost: restmq\r\n\r\n");
    socket
        .write_all(request.as_bytes())
        .await
        .expect("send the request");
    socket
}

async fn a_slow_broadcast_consumer_is_disconnected_and_the_others_get_everything(backend: Backend) {
    let Some(server) = TestServer::configured(backend, |c| c.streams.consumer_buffer = 8).await
    else {
        return;
    };
    let stuck = stuck_consumer(&server, "slow").await;
    let mut reader = Streaming::comet(&server, "slow").await;
    server.wait_consumers("slow", 2).await;
    let big = "x".repeat(256 * 1024);
    let count = 60;
    let publisher = {
        let client = server.client.clone();
        let url = server.url("/q/slow");
        let big = big.clone();
        tokio::spawn(async move {
            for _ in 0..count {
                let answer = client.post(&url).form(&[("value", &big)]).send().await;
                assert_eq!(answer.expect("publish").status(), 200);
            }
        })
    };
    for i in 1..=count {
        let (key, value) = reader.message().await;
        assert_eq!(key, format!("slow:{i}"));
        assert_eq!(value.len(), big.len());
    }
    publisher.await.expect("the publisher");
    server.wait_consumers("slow", 1).await;
    drop(stuck);
}

async fn messages_buffered_for_a_consumer_that_vanishes_go_back_to_the_queue(backend: Backend) {
    let Some(server) = TestServer::on(backend).await else {
        return;
    };
    server
        .post_form("/p/gone", &[("policy", "roundrobin")])
        .await;
    // First in turn: it gets the odd keys.
    let stuck = stuck_consumer(&server, "gone").await;
    server.wait_consumers("gone", 1).await;
    let mut reader = Streaming::comet(&server, "gone").await;
    server.wait_consumers("gone", 2).await;
    let count = 80u64;
    let big = "y".repeat(256 * 1024);
    for _ in 0..count {
        let answer = server.post_form("/q/gone", &[("value", &big)]).await;
        assert_eq!(answer.status, 200);
    }
    // The reader gets its half; the stuck consumer's half fills its socket, and the
    // rest waits in its buffer.
    for i in 1..=count / 2 {
        assert_eq!(reader.message().await.0, format!("gone:{}", 2 * i));
    }
    assert_eq!(server.get("/stats/gone").await.json()["len"], 0);
    // Paused, so that what comes back stays in the queue, then the stuck one vanishes.
    server
        .post_form("/control/gone", &[("status", "stop")])
        .await;
    drop(stuck);
    server.wait_consumers("gone", 1).await;
    drop(reader);
    // A graceful stop waits until returned messages are back in their queue.
    let server = server.restart().await;
    let mut back = Vec::new();
    while let Some((key, _)) = server.pop("gone").await {
        back.push(
            key.trim_start_matches("gone:")
                .parse::<u64>()
                .expect("a key"),
        );
    }
    // What came back is the stuck consumer's share from some point on, in order:
    // only what it had already handed to its connection is gone with it.
    let share: Vec<u64> = (1..=count).step_by(2).collect();
    let from = share.len() - back.len();
    assert!(!back.is_empty(), "the buffered messages came back");
    assert_eq!(back, share[from..], "back in order, and nothing else");
}

async fn gets_and_streams_never_deliver_the_same_message(backend: Backend) {
    // GET keeps popping while streams run; the two never deliver the same message.
    let Some(server) = TestServer::on(backend).await else {
        return;
    };
    let mut stream = Streaming::comet(&server, "mix").await;
    server.wait_consumers("mix", 1).await;
    let mut got = HashSet::new();
    for i in 1..=40 {
        server.publish("mix", &format!("m{i}")).await;
        if let Some((key, _)) = server.pop("mix").await {
            assert!(got.insert(key));
        }
    }
    while got.len() < 40 {
        let (key, _) = stream.message().await;
        assert!(got.insert(key.clone()), "{key} delivered twice");
    }
}

async fn shutdown_ends_streams_cleanly(backend: Backend) {
    let Some(server) = TestServer::on(backend).await else {
        return;
    };
    let mut comet = Streaming::comet(&server, "bye").await;
    let mut sse = Streaming::sse(&server, "/sse/bye", &[]).await;
    let mut socket = server.websocket("bye").await;
    server.wait_consumers("bye", 3).await;
    server.publish("bye", "one").await;
    assert_eq!(comet.message().await.1, "one");
    assert_eq!(sse.event().await.map(|e| e.id), Some("bye:1".into()));
    assert!(ws_text(&mut socket).await.is_some());
    server.stop().await;
    comet.ends().await;
    assert_eq!(sse.event().await, None);
    assert_eq!(ws_text(&mut socket).await, None);
}

/// A long poll in progress at shutdown is answered (empty) rather than cut
/// off when the grace period ends.
async fn shutdown_answers_long_polls(backend: Backend) {
    let Some(server) = TestServer::on(backend).await else {
        return;
    };
    let client = server.client.clone();
    let url = server.url("/q/idle?wait=20");
    let poll = tokio::spawn(async move {
        client
            .get(url)
            .send()
            .await
            .map(|answer| answer.status().as_u16())
    });
    eventually("the long poll to park", || async {
        (server.get("/stats/idle").await.json()["waiting"] == 1).then_some(())
    })
    .await;
    server.stop().await;
    let status = poll
        .await
        .expect("the poll task")
        .expect("an answer, not a cut connection");
    assert_eq!(status, 204);
}

async fn a_raw_http_client_sees_a_chunked_comet_stream(backend: Backend) {
    let Some(server) = TestServer::on(backend).await else {
        return;
    };
    server.publish("raw", "hello").await;
    let mut socket = TcpStream::connect(server.addr).await.expect("connect");
    socket
        .write_all(b"GET /c/raw HTTP/1.1\r\nHost: restmq\r\n\r\n")
        .await
        .expect("send");
    let deadline = tokio::time::Instant::now() + common::DEADLINE;
    let mut seen = Vec::new();
    let text = loop {
        let mut buf = [0u8; 4096];
        let n = tokio::time::timeout_at(deadline, socket.read(&mut buf))
            .await
            .expect("the first message within the deadline")
            .expect("a readable socket");
        assert!(
            n > 0,
            "the stream closed early: {:?}",
            String::from_utf8_lossy(&seen)
        );
        seen.extend_from_slice(&buf[..n]);
        let text = String::from_utf8_lossy(&seen).into_owned();
        if text.contains("hello") {
            break text;
        }
    };
    assert!(text.starts_with("HTTP/1.1 200 OK\r\n"), "{text}");
    assert!(
        text.to_ascii_lowercase()
            .contains("transfer-encoding: chunked"),
        "{text}"
    );
    assert!(
        text.contains("{\"key\":\"raw:1\",\"value\":\"hello\"}\r\n"),
        "{text}"
    );
}

/// Reads from `socket` until what arrived contains `needle`; returns all of it.
async fn read_until(socket: &mut TcpStream, needle: &str) -> String {
    let deadline = tokio::time::Instant::now() + common::DEADLINE;
    let mut seen = Vec::new();
    loop {
        let text = String::from_utf8_lossy(&seen).into_owned();
        if text.contains(needle) {
            return text;
        }
        let mut buf = [0u8; 4096];
        let n = tokio::time::timeout_at(deadline, socket.read(&mut buf))
            .await
            .unwrap_or_else(|_| panic!("{needle:?} did not arrive; got {text:?}"))
            .expect("a readable socket");
        assert!(n > 0, "closed before {needle:?} arrived; got {text:?}");
        seen.extend_from_slice(&buf[..n]);
    }
}

async fn streams_opened_on_a_used_connection_are_served_too(backend: Backend) {
    // The first request of this connection is a publish, so the stream that follows
    // is served by hyper rather than directly on the socket.
    let Some(server) = TestServer::on(backend).await else {
        return;
    };
    let mut socket = TcpStream::connect(server.addr).await.expect("connect");
    socket
        .write_all(
            b"POST /q/used HTTP/1.1\r\nHost: restmq\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: 9\r\n\r\nvalue=one",
        )
        .await
        .expect("publish");
    read_until(&mut socket, "used:1\r\n").await;
    socket
        .write_all(b"GET /c/used HTTP/1.1\r\nHost: restmq\r\n\r\n")
        .await
        .expect("open a stream");
    let text = read_until(&mut socket, "{\"key\":\"used:1\",\"value\":\"one\"}\r\n").await;
    assert!(text.contains("HTTP/1.1 200 OK"), "{text}");
    server.publish("used", "two").await;
    read_until(&mut socket, "{\"key\":\"used:2\",\"value\":\"two\"}\r\n").await;

    let mut socket = TcpStream::connect(server.addr).await.expect("connect");
    socket
        .write_all(b"GET /stats/used HTTP/1.1\r\nHost: restmq\r\n\r\n")
        .await
        .expect("stats");
    read_until(&mut socket, "\"consumers\":1").await;
    socket
        .write_all(b"GET /sse/used HTTP/1.1\r\nHost: restmq\r\nLast-Event-ID: used:1\r\n\r\n")
        .await
        .expect("open an SSE stream");
    read_until(
        &mut socket,
        "id: used:2\ndata: {\"key\":\"used:2\",\"value\":\"two\"}\n\n",
    )
    .await;
}

async fn refused_stream_requests_get_json_errors_on_either_path(backend: Backend) {
    let Some(server) = TestServer::on(backend).await else {
        return;
    };
    for (request, status, error) in [
        (
            "GET /c/%FF HTTP/1.1\r\nHost: x\r\n\r\n",
            "400",
            "invalid queue name",
        ),
        (
            "GET /c/q?callback=alert(1) HTTP/1.1\r\nHost: x\r\n\r\n",
            "400",
            "invalid callback",
        ),
        (
            "GET /sse/q HTTP/1.1\r\nHost: x\r\nLast-Event-ID: other:1\r\n\r\n",
            "400",
            "invalid parameter Last-Event-ID",
        ),
        (
            "GET /c/ HTTP/1.1\r\nHost: x\r\n\r\n",
            "400",
            "invalid queue name",
        ),
    ] {
        // Directly on the socket (a connection's first request)...
        let mut socket = TcpStream::connect(server.addr).await.expect("connect");
        socket.write_all(request.as_bytes()).await.expect("send");
        let text = read_until(&mut socket, "\"}").await;
        assert!(
            text.starts_with(&format!("HTTP/1.1 {status} ")),
            "{request:?}: {text}"
        );
        assert!(
            text.contains(&format!("{{\"error\":\"{error}")),
            "{request:?}: {text}"
        );
        // ...and through the routes (a later request of a connection).
        let mut socket = TcpStream::connect(server.addr).await.expect("connect");
        socket
            .write_all(b"GET /stats/ HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .expect("send");
        read_until(&mut socket, "\"count\"").await;
        socket.write_all(request.as_bytes()).await.expect("send");
        let text = read_until(&mut socket, &format!("{{\"error\":\"{error}")).await;
        assert!(
            text.contains(&format!("HTTP/1.1 {status} ")),
            "{request:?}: {text}"
        );
    }
    assert_eq!(server.get("/stats/q").await.json()["consumers"], 0);
}

conformance!(
    broadcast_reaches_every_consumer_over_every_transport,
    comet_lines_end_with_crlf_and_jsonp_wraps_them,
    roundrobin_spreads_messages_evenly,
    a_paused_queue_accumulates_and_resuming_delivers_the_backlog,
    delete_ends_every_stream_after_a_last_null,
    a_late_consumer_receives_the_backlog,
    a_consumer_may_connect_before_its_queue_exists,
    sse_resumes_after_the_last_event_id,
    sse_says_when_the_resume_buffer_no_longer_reaches_back,
    websockets_echo_what_clients_send,
    a_slow_broadcast_consumer_is_disconnected_and_the_others_get_everything,
    messages_buffered_for_a_consumer_that_vanishes_go_back_to_the_queue,
    gets_and_streams_never_deliver_the_same_message,
    shutdown_ends_streams_cleanly,
    shutdown_answers_long_polls,
    a_raw_http_client_sees_a_chunked_comet_stream,
    streams_opened_on_a_used_connection_are_served_too,
    refused_stream_requests_get_json_errors_on_either_path,
);
