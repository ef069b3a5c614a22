//! The JSON command protocol of `POST /queue`.

mod common;

use common::{Answer, Backend, TestServer};
use serde_json::{Value, json};

async fn command(server: &TestServer, body: &str) -> Answer {
    server.post_form("/queue", &[("body", body)]).await
}

async fn add_get_take_del(backend: Backend) {
    let Some(server) = TestServer::on(backend).await else {
        return;
    };
    let added = command(&server, r#"{"cmd":"add","queue":"jq","value":" spaced "}"#).await;
    assert_eq!(added.status, 200);
    assert_eq!(added.content_type, "application/json");
    assert!(!added.body.ends_with("\r\n"));
    assert_eq!(
        added.json(),
        json!({"queue": "jq", "value": " spaced ", "key": "jq:1"})
    );
    command(&server, r#"{"cmd":"add","queue":"jq","value":"second"}"#).await;

    // get peeks and counts the reads of the head.
    for count in 1..=3 {
        let got = command(&server, r#"{"cmd":"get","queue":"jq"}"#).await;
        assert_eq!(
            got.json(),
            json!({"queue": "jq", "value": " spaced ", "key": "jq:1", "count": count})
        );
    }
    let taken = command(&server, r#"{"cmd":"take","queue":"jq"}"#).await;
    assert_eq!(
        taken.json(),
        json!({"queue": "jq", "value": " spaced ", "key": "jq:1"})
    );
    // The next head starts its own count.
    let got = command(&server, r#"{"cmd":"get","queue":"jq"}"#).await;
    assert_eq!(got.json()["count"], 1);

    let deleted = command(&server, r#"{"cmd":"del","queue":"jq","key":"jq:2"}"#).await;
    assert_eq!(
        deleted.json(),
        json!({"queue": "jq", "deleted": true, "key": "jq:2"})
    );
    let again = command(&server, r#"{"cmd":"del","queue":"jq","key":"jq:2"}"#).await;
    assert_eq!(again.json()["deleted"], false);
    let empty = command(&server, r#"{"cmd":"take","queue":"jq"}"#).await;
    assert_eq!(
        (empty.status, empty.json()),
        (200, json!({"error": "empty queue"}))
    );
    let empty = command(&server, r#"{"cmd":"get","queue":"jq"}"#).await;
    assert_eq!(empty.json(), json!({"error": "empty queue"}));
}

async fn del_removes_the_message_from_the_queue(backend: Backend) {
    // The original deleted only the value, leaving an entry that later popped as null.
    let Some(server) = TestServer::on(backend).await else {
        return;
    };
    server.publish("d", "one").await;
    server.publish("d", "two").await;
    server.publish("d", "three").await;
    let deleted = command(&server, r#"{"cmd":"del","queue":"d","key":"d:2"}"#).await;
    assert_eq!(deleted.json()["deleted"], true);
    assert_eq!(server.get("/stats/d").await.json()["len"], 2);
    assert_eq!(server.pop("d").await, Some(("d:1".into(), "one".into())));
    assert_eq!(server.pop("d").await, Some(("d:3".into(), "three".into())));
    assert_eq!(server.pop("d").await, None);
}

async fn del_with_a_foreign_or_bogus_key_deletes_nothing(backend: Backend) {
    let Some(server) = TestServer::on(backend).await else {
        return;
    };
    server.publish("mine", "m").await;
    server.publish("other", "o").await;
    for key in [
        "other:1", "mine", "mine:", "mine:0", "mine:x", "mine:99", ":1", "mine:1:1",
    ] {
        let body = json!({"cmd": "del", "queue": "mine", "key": key}).to_string();
        let answer = command(&server, &body).await;
        assert_eq!(
            answer.json(),
            json!({"queue": "mine", "deleted": false, "key": key})
        );
    }
    assert_eq!(server.get("/stats/mine").await.json()["len"], 1);
    assert_eq!(server.get("/stats/other").await.json()["len"], 1);
}

async fn commands_may_come_as_msg_or_as_a_json_body(backend: Backend) {
    let Some(server) = TestServer::on(backend).await else {
        return;
    };
    let answer = server
        .post_form(
            "/queue",
            &[
                ("msg", r#"{"cmd":"add","queue":"m","value":"from msg"}"#),
                ("body", "ignored"),
            ],
        )
        .await;
    assert_eq!(answer.json()["key"], "m:1");
    let answer = server
        .post_raw(
            "/queue",
            "application/json",
            r#"{"cmd":"take","queue":"m"}"#,
        )
        .await;
    assert_eq!(
        answer.json(),
        json!({"queue": "m", "value": "from msg", "key": "m:1"})
    );
}

async fn soft_errors_answer_200_with_an_error_field(backend: Backend) {
    let Some(server) = TestServer::on(backend).await else {
        return;
    };
    let cases: &[(&str, Value)] = &[
        (
            r#"{"cmd":"fly","queue":"q"}"#,
            json!({"error": "null resultset"}),
        ),
        (
            r#"{"cmd":"add","queue":"q"}"#,
            json!({"error": "missing field: value"}),
        ),
        (
            r#"{"cmd":"add","value":"v"}"#,
            json!({"error": "missing field: queue"}),
        ),
        (
            r#"{"cmd":"add","queue":"q","value":""}"#,
            json!({"error": "missing field: value"}),
        ),
        (
            r#"{"cmd":"add","queue":"q","value":5}"#,
            json!({"error": "field value must be a string"}),
        ),
        (
            r#"{"cmd":"add","queue":7,"value":"v"}"#,
            json!({"error": "field queue must be a string"}),
        ),
        (r#"{"cmd":"get"}"#, json!({"error": "missing field: queue"})),
        (
            r#"{"cmd":"del","queue":"q"}"#,
            json!({"error": "missing field: key"}),
        ),
        (
            r#"{"cmd":"del","queue":"q","key":["q:1"]}"#,
            json!({"error": "field key must be a string"}),
        ),
    ];
    for (body, want) in cases {
        let answer = command(&server, body).await;
        assert_eq!(
            (answer.status, answer.json()),
            (200, want.clone()),
            "{body}"
        );
    }
    assert_eq!(server.get("/stats/").await.json()["count"], 0);
}

async fn malformed_commands_get_400(backend: Backend) {
    let Some(server) = TestServer::on(backend).await else {
        return;
    };
    for body in [
        "{not json",
        "[1,2]",
        "\"add\"",
        "42",
        r#"{"queue":"q"}"#,
        r#"{"cmd":"","queue":"q"}"#,
        r#"{"cmd":3,"queue":"q"}"#,
    ] {
        let answer = command(&server, body).await;
        assert_eq!(answer.status, 400, "{body}");
        let error = answer.json()["error"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        assert!(error.starts_with("malformed JSON"), "{body}: {error}");
    }
    let answer = server.post_form("/queue", &[]).await;
    assert_eq!(answer.status, 400);
    assert_eq!(answer.json(), json!({"error": "missing parameter: body"}));
    let answer = command(&server, r#"{"cmd":"add","queue":"","value":"v"}"#).await;
    assert_eq!(answer.json(), json!({"error": "missing field: queue"}));
    let long = "q".repeat(300);
    let body = json!({"cmd": "add", "queue": long, "value": "v"}).to_string();
    assert_eq!(command(&server, &body).await.status, 400);
    let body = json!({"cmd": "add", "queue": "q", "value": "v", "ttl": -3}).to_string();
    assert_eq!(command(&server, &body).await.status, 400);
    assert_eq!(server.get("/stats/").await.json()["count"], 0);
}

async fn get_queue_redirects_to_the_help_page(backend: Backend) {
    let Some(server) = TestServer::on(backend).await else {
        return;
    };
    let client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("client");
    let answer = client
        .get(server.url("/queue"))
        .send()
        .await
        .expect("GET /queue");
    assert_eq!(answer.status(), 302);
    assert_eq!(answer.headers()["location"], "/static/help.html");
    let help = server.get("/static/help.html").await;
    assert_eq!(help.status, 200);
    assert!(help.body.contains("\"cmd\""));
}

conformance!(
    add_get_take_del,
    del_removes_the_message_from_the_queue,
    del_with_a_foreign_or_bogus_key_deletes_nothing,
    commands_may_come_as_msg_or_as_a_json_body,
    soft_errors_answer_200_with_an_error_field,
    malformed_commands_get_400,
    get_queue_redirects_to_the_help_page,
);
