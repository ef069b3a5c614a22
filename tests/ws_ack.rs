//! WebSockets that acknowledge (`/ws/<q>?ack=1`): receipts on every frame,
//! commands as frames, the prefetch limit, redelivery after the visibility
//! timeout, release on close, on every store.

mod common;

use common::{Backend, TestServer, eventually, ws_text};
use futures_util::SinkExt;
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message as Frame;

type Socket = common::WebSocket;

fn parse(text: &str) -> Value {
    serde_json::from_str(text).unwrap_or_else(|e| panic!("not JSON ({e}): {text:?}"))
}

async fn next_json(socket: &mut Socket) -> Value {
    parse(&ws_text(socket).await.expect("a frame"))
}

async fn command(socket: &mut Socket, command: Value) -> Value {
    socket
        .send(Frame::Text(command.to_string().into()))
        .await
        .expect("send a command");
    next_json(socket).await
}

async fn stats(server: &TestServer, queue: &str) -> Value {
    server.get(&format!("/stats/{queue}")).await.json()
}

async fn frames_carry_receipts_and_prefetch_bounds_what_is_outstanding(backend: Backend) {
    let Some(server) = TestServer::on(backend).await else {
        return;
    };
    for i in 1..=3 {
        server.publish("jobs", &format!("m{i}")).await;
    }
    let mut socket = server.websocket("jobs?ack=1&prefetch=2").await;
    let first = next_json(&mut socket).await;
    let second = next_json(&mut socket).await;
    assert_eq!(first["key"], "jobs:1");
    assert_eq!(first["value"], "m1");
    assert_eq!(first["count"], 1);
    assert!(
        first["receipt"]
            .as_str()
            .is_some_and(|r| r.starts_with("r1."))
    );
    assert_eq!(second["key"], "jobs:2");
    // Two outstanding: the third waits in the queue until one is settled.
    let held = stats(&server, "jobs").await;
    assert_eq!(held["inflight"], 2, "{held}");
    assert_eq!(held["len"], 1, "{held}");
    assert_eq!(held["consumers"], 1, "{held}");

    let acked = command(
        &mut socket,
        json!({"cmd": "ack", "receipt": first["receipt"]}),
    )
    .await;
    assert_eq!(acked, json!({"reply": "ack", "acked": 1}));
    let third = next_json(&mut socket).await;
    assert_eq!(third["key"], "jobs:3");
    assert_eq!(third["value"], "m3");

    let both = json!({"cmd": "ack", "receipts": [second["receipt"], third["receipt"]]});
    assert_eq!(
        command(&mut socket, both).await,
        json!({"reply": "ack", "acked": 2})
    );
    let done = stats(&server, "jobs").await;
    assert_eq!(
        (done["len"].clone(), done["inflight"].clone()),
        (json!(0), json!(0))
    );

    // A message published now reaches the waiting socket.
    server.publish("jobs", "m4").await;
    let fourth = next_json(&mut socket).await;
    assert_eq!(
        (fourth["key"].clone(), fourth["count"].clone()),
        (json!("jobs:4"), json!(1))
    );
}

async fn unsettled_messages_come_back_after_the_visibility_timeout(backend: Backend) {
    let Some(server) = TestServer::on(backend).await else {
        return;
    };
    server.publish("slow", "work").await;
    let mut socket = server.websocket("slow?ack=1&visibility=1&prefetch=1").await;
    let first = next_json(&mut socket).await;
    assert_eq!(
        (first["key"].clone(), first["count"].clone()),
        (json!("slow:1"), json!(1))
    );
    // Not acknowledged: a second later it is delivered again, with a new receipt.
    let again = next_json(&mut socket).await;
    assert_eq!(
        (again["key"].clone(), again["count"].clone()),
        (json!("slow:1"), json!(2))
    );
    assert_ne!(again["receipt"], first["receipt"]);

    let stale = command(
        &mut socket,
        json!({"cmd": "ack", "receipt": first["receipt"]}),
    )
    .await;
    assert_eq!(stale["reply"], "ack");
    assert_eq!(stale["error"], "stale receipt");
    assert_eq!(stale["stale"], json!([first["receipt"]]));
    let acked = command(
        &mut socket,
        json!({"cmd": "ack", "receipt": again["receipt"]}),
    )
    .await;
    assert_eq!(acked["acked"], 1);
    let after = stats(&server, "slow").await;
    assert_eq!(
        (after["len"].clone(), after["inflight"].clone()),
        (json!(0), json!(0))
    );
}

async fn nack_releases_and_extend_answers(backend: Backend) {
    let Some(server) = TestServer::on(backend).await else {
        return;
    };
    server.publish("retry", "once more").await;
    let mut socket = server
        .websocket("retry?ack=1&visibility=60&prefetch=1")
        .await;
    let first = next_json(&mut socket).await;
    let extended = command(
        &mut socket,
        json!({"cmd": "extend", "receipt": first["receipt"], "visibility": 120}),
    )
    .await;
    assert_eq!(
        extended,
        json!({"reply": "extend", "queue": "retry", "key": "retry:1", "visibility": 120})
    );
    let released = command(
        &mut socket,
        json!({"cmd": "nack", "receipt": first["receipt"]}),
    )
    .await;
    assert_eq!(released["reply"], "nack");
    assert_eq!(released["released"], true);
    // Released at once, it comes straight back to the socket that has room.
    let again = next_json(&mut socket).await;
    assert_eq!(
        (again["key"].clone(), again["count"].clone()),
        (json!("retry:1"), json!(2))
    );
    assert_eq!(
        command(
            &mut socket,
            json!({"cmd": "ack", "receipt": again["receipt"]})
        )
        .await["acked"],
        1
    );
}

async fn bad_commands_get_error_frames_and_the_socket_goes_on(backend: Backend) {
    let Some(server) = TestServer::on(backend).await else {
        return;
    };
    let mut socket = server.websocket("strict?ack=1").await;
    let cases = [
        ("not json", "malformed JSON"),
        ("[1,2]", "a command is a JSON object"),
        (
            r#"{"cmd":"take","queue":"strict"}"#,
            "the command must be ack, nack or extend",
        ),
        (r#"{"cmd":"ack"}"#, "missing field: receipt"),
        (r#"{"cmd":"ack","receipt":"forged"}"#, "receipt"),
        (r#"{"cmd":"extend","receipt":"forged"}"#, "receipt"),
    ];
    for (sent, wanted) in cases {
        socket
            .send(Frame::Text(sent.into()))
            .await
            .expect("send a frame");
        let answer = next_json(&mut socket).await;
        let error = answer["error"].as_str().unwrap_or_default();
        assert!(error.contains(wanted), "{sent}: {answer}");
    }
    socket
        .send(Frame::Binary(vec![1, 2, 3].into()))
        .await
        .expect("send a frame");
    assert_eq!(
        next_json(&mut socket).await["error"],
        "commands are JSON text frames"
    );
    // Still consuming.
    server.publish("strict", "fine").await;
    assert_eq!(next_json(&mut socket).await["value"], "fine");

    for query in [
        "ack=maybe",
        "ack=1&prefetch=0",
        "ack=1&prefetch=1001",
        "ack=1&visibility=0",
        "ack=1&visibility=x",
    ] {
        let refused = server.get(&format!("/ws/strict?{query}")).await;
        assert_eq!(refused.status, 400, "{query}");
        assert!(refused.json()["error"].is_string(), "{query}");
    }
}

async fn closing_the_socket_releases_what_it_held(backend: Backend) {
    let Some(server) = TestServer::on(backend).await else {
        return;
    };
    server.publish("handover", "job").await;
    let mut socket = server.websocket("handover?ack=1&visibility=300").await;
    let first = next_json(&mut socket).await;
    assert_eq!(first["count"], 1);
    socket.close(None).await.expect("close");
    drop(socket);
    // Visible again long before its 300 seconds run out.
    let taken = eventually("the released message", || async {
        let answer = server.get("/q/handover?visibility=30").await;
        (answer.status == 200).then(|| answer.json())
    })
    .await;
    assert_eq!(
        (taken["key"].clone(), taken["count"].clone()),
        (json!("handover:1"), json!(2))
    );
}

async fn sockets_share_the_work_and_end_when_the_queue_is_deleted(backend: Backend) {
    let Some(server) = TestServer::on(backend).await else {
        return;
    };
    let mut a = server.websocket("shared?ack=1&prefetch=1").await;
    let mut b = server.websocket("shared?ack=1&prefetch=1").await;
    server.wait_consumers("shared", 2).await;
    server.publish("shared", "one").await;
    server.publish("shared", "two").await;
    let got_a = next_json(&mut a).await;
    let got_b = next_json(&mut b).await;
    let mut values = [got_a["value"].clone(), got_b["value"].clone()];
    values.sort_by_key(ToString::to_string);
    assert_eq!(values, [json!("one"), json!("two")]);

    // Stopped, a queue streams nothing; started again, it goes on.
    assert_eq!(
        command(&mut a, json!({"cmd": "ack", "receipt": got_a["receipt"]})).await["acked"],
        1
    );
    let stop = server
        .post_form("/control/shared", &[("status", "stop")])
        .await;
    assert_eq!(stop.status, 200);
    server.publish("shared", "three").await;
    let held = stats(&server, "shared").await;
    assert_eq!(held["len"], 1, "{held}");
    let start = server
        .post_form("/control/shared", &[("status", "start")])
        .await;
    assert_eq!(start.status, 200);
    assert_eq!(next_json(&mut a).await["value"], "three");

    assert_eq!(server.delete("/q/shared").await.status, 200);
    for socket in [&mut a, &mut b] {
        assert_eq!(ws_text(socket).await.as_deref(), Some("null"));
        assert_eq!(ws_text(socket).await, None);
    }
}

conformance!(
    frames_carry_receipts_and_prefetch_bounds_what_is_outstanding,
    unsettled_messages_come_back_after_the_visibility_timeout,
    nack_releases_and_extend_answers,
    bad_commands_get_error_frames_and_the_socket_goes_on,
    closing_the_socket_releases_what_it_held,
    sockets_share_the_work_and_end_when_the_queue_is_deleted,
);
