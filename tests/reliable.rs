//! At-least-once consumption over HTTP: receiving with a visibility timeout,
//! receipts (`/ack`, `/nack`, `/extend`), redelivery, dead letters and redrive,
//! queue settings (`/config/<q>`), delays, long polls, `max=` arrays, batches,
//! and the JSON commands `receive`, `ack`, `nack` and `extend`.
//!
//! Visibility timeouts and delays run on real time: they are 1 or 2 seconds,
//! every wait for one to run out polls with a deadline ([`eventually`]), and
//! what must still be hidden is hidden for 30 seconds, which no test outlasts.

mod common;

use common::{Answer, Backend, TestServer, eventually};
use serde_json::{Value, json};

/// Visibility (seconds) of deliveries the test must still act on (ack, extend)
/// before they run out, and then waits to run out: a margin over one second,
/// so that a slow request cannot make the delivery stale first.
const WINDOW: u64 = 2;

/// One delivery received through `GET /q/<q>?visibility=`.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Delivery {
    key: String,
    value: String,
    count: u64,
    receipt: String,
}

impl Delivery {
    /// Reads `{"key","value","count","receipt"}`, nothing more, nothing less.
    fn from_json(json: &Value) -> Delivery {
        let object = json.as_object().expect("a delivery is a JSON object");
        let mut fields: Vec<&str> = object.keys().map(String::as_str).collect();
        fields.sort_unstable();
        assert_eq!(fields, ["count", "key", "receipt", "value"], "{json}");
        Delivery {
            key: json["key"].as_str().expect("key is a string").to_owned(),
            value: json["value"]
                .as_str()
                .expect("value is a string")
                .to_owned(),
            count: json["count"].as_u64().expect("count is a number"),
            receipt: json["receipt"]
                .as_str()
                .expect("receipt is a string")
                .to_owned(),
        }
    }

    /// `(key, count)`, for short assertions.
    fn at(&self) -> (&str, u64) {
        (&self.key, self.count)
    }
}

/// `GET /q/<queue>?visibility=<seconds>`: the delivery, or `None` on 204.
async fn receive(server: &TestServer, queue: &str, visibility: u64) -> Option<Delivery> {
    let answer = server
        .get(&format!("/q/{queue}?visibility={visibility}"))
        .await;
    match answer.status {
        204 => {
            assert_eq!(answer.body, "", "a 204 has no body");
            None
        }
        200 => {
            assert!(answer.body.ends_with("\r\n"), "{:?}", answer.body);
            Some(Delivery::from_json(&answer.json()))
        }
        other => panic!("receive {queue}: unexpected {other}: {}", answer.body),
    }
}

/// `GET /q/<queue>?max=<max>&visibility=<seconds>`: the deliveries of the array.
async fn receive_many(
    server: &TestServer,
    queue: &str,
    max: usize,
    visibility: u64,
) -> Vec<Delivery> {
    let answer = server
        .get(&format!("/q/{queue}?max={max}&visibility={visibility}"))
        .await;
    assert_eq!(
        answer.status, 200,
        "receive {max} of {queue}: {}",
        answer.body
    );
    assert!(answer.body.ends_with("\r\n"), "{:?}", answer.body);
    answer
        .json()
        .as_array()
        .expect("max= answers an array")
        .iter()
        .map(Delivery::from_json)
        .collect()
}

/// `POST /ack` with every receipt as a `receipt` field.
async fn ack(server: &TestServer, receipts: &[&str]) -> Answer {
    let form: Vec<(&str, &str)> = receipts.iter().map(|r| ("receipt", *r)).collect();
    server.post_form("/ack", &form).await
}

/// `POST /nack` of `receipt`, with `delay` when given.
async fn nack(server: &TestServer, receipt: &str, delay: Option<&str>) -> Answer {
    let mut form = vec![("receipt", receipt)];
    form.extend(delay.map(|delay| ("delay", delay)));
    server.post_form("/nack", &form).await
}

/// `POST /extend` of `receipt` by `visibility` seconds.
async fn extend(server: &TestServer, receipt: &str, visibility: &str) -> Answer {
    server
        .post_form(
            "/extend",
            &[("receipt", receipt), ("visibility", visibility)],
        )
        .await
}

/// Asserts a 200 answering `want` as JSON.
fn assert_ok(answer: &Answer, want: Value) {
    assert_eq!(answer.status, 200, "{}", answer.body);
    assert_eq!(answer.content_type, "application/json");
    assert_eq!(answer.json(), want);
}

/// Asserts a 409 for stale receipts, naming exactly `stale`.
fn assert_stale(answer: &Answer, stale: &[&str]) {
    assert_eq!(answer.status, 409, "{}", answer.body);
    let json = answer.json();
    let error = json["error"].as_str().expect("an error message");
    assert!(error.starts_with("stale receipt"), "{error}");
    assert_eq!(json["stale"], json!(stale), "{}", answer.body);
}

/// Asserts a 400 with an `{"error": ...}` body.
fn assert_bad_request(answer: &Answer, what: &str) {
    assert_eq!(answer.status, 400, "{what}: {}", answer.body);
    assert!(
        answer.json()["error"].is_string(),
        "{what}: {}",
        answer.body
    );
}

/// `(len, inflight, delayed)` of `/stats/<queue>`.
async fn stats(server: &TestServer, queue: &str) -> (u64, u64, u64) {
    let answer = server.get(&format!("/stats/{queue}")).await;
    assert_eq!(answer.status, 200, "stats of {queue}: {}", answer.body);
    let json = answer.json();
    let field = |name: &str| {
        json[name]
            .as_u64()
            .unwrap_or_else(|| panic!("{name} in the stats of {queue}: {json}"))
    };
    (field("len"), field("inflight"), field("delayed"))
}

/// Runs a JSON command of `POST /queue`.
async fn command(server: &TestServer, body: Value) -> Answer {
    server
        .post_form("/queue", &[("body", &body.to_string())])
        .await
}

/// The key at the head of `queue`, peeked without taking it (the JSON `get`).
async fn head(server: &TestServer, queue: &str) -> Option<String> {
    let answer = command(server, json!({"cmd": "get", "queue": queue})).await;
    assert_eq!(answer.status, 200, "peek {queue}: {}", answer.body);
    let json = answer.json();
    if json == json!({"error": "empty queue"}) {
        return None;
    }
    Some(json["key"].as_str().expect("a peeked key").to_owned())
}

/// `GET /config/<queue>`.
async fn config(server: &TestServer, queue: &str) -> Value {
    let answer = server.get(&format!("/config/{queue}")).await;
    assert_eq!(answer.status, 200, "settings of {queue}: {}", answer.body);
    assert_eq!(answer.content_type, "application/json");
    answer.json()
}

/// `POST /config/<queue>` with a JSON body.
async fn set_config(server: &TestServer, queue: &str, body: &str) -> Answer {
    server
        .post_raw(
            &format!("/config/{queue}"),
            "application/json",
            body.to_owned(),
        )
        .await
}

/// `POST /config/<queue>`, asserting a 200.
async fn configure(server: &TestServer, queue: &str, body: &str) -> Value {
    let answer = set_config(server, queue, body).await;
    assert_eq!(answer.status, 200, "configure {queue}: {}", answer.body);
    answer.json()
}

/// `GET path` on a task of its own, for long polls.
fn spawn_get(server: &TestServer, path: &str) -> tokio::task::JoinHandle<Answer> {
    let request = server.client.get(server.url(path));
    tokio::spawn(async move { Answer::read(request.send().await).await })
}

/// Waits until `count` long polls are parked on `queue`, so that what the test
/// does next must wake them.
async fn parked(server: &TestServer, queue: &str, count: u64) {
    eventually(&format!("{count} long polls parked on {queue}"), || async {
        let stats = server.get(&format!("/stats/{queue}")).await.json();
        (stats["waiting"] == count).then_some(())
    })
    .await;
}

async fn receive_hides_the_head_until_acked(backend: Backend) {
    let Some(server) = TestServer::on(backend).await else {
        return;
    };
    server.publish("jobs", "first").await;
    server.publish("jobs", "second").await;
    let answer = server.get("/q/jobs?visibility=30").await;
    assert_eq!(answer.status, 200);
    assert_eq!(answer.content_type, "application/json");
    assert!(answer.body.ends_with("\r\n"), "{:?}", answer.body);
    let first = Delivery::from_json(&answer.json());
    assert_eq!(first.at(), ("jobs:1", 1));
    assert_eq!(first.value, "first");
    assert_eq!(stats(&server, "jobs").await, (1, 1, 0));

    let second = receive(&server, "jobs", 30).await.expect("the second one");
    assert_eq!(second.at(), ("jobs:2", 1));
    assert_eq!(second.value, "second");
    assert_ne!(first.receipt, second.receipt);
    assert_eq!(receive(&server, "jobs", 30).await, None);
    assert_eq!(server.pop("jobs").await, None, "in flight is not waiting");

    assert_ok(&ack(&server, &[&first.receipt]).await, json!({"acked": 1}));
    assert_eq!(stats(&server, "jobs").await, (0, 1, 0));
    assert_ok(&ack(&server, &[&second.receipt]).await, json!({"acked": 1}));
    assert_eq!(stats(&server, "jobs").await, (0, 0, 0));
    assert_eq!(receive(&server, "jobs", 30).await, None);
}

async fn an_acked_message_never_comes_back(backend: Backend) {
    let Some(server) = TestServer::on(backend).await else {
        return;
    };
    server.publish("q", "a").await;
    server.publish("q", "b").await;
    let both = receive_many(&server, "q", 2, WINDOW).await;
    let keys: Vec<(&str, u64)> = both.iter().map(Delivery::at).collect();
    assert_eq!(keys, [("q:1", 1), ("q:2", 1)]);
    assert_ok(
        &ack(&server, &[&both[0].receipt]).await,
        json!({"acked": 1}),
    );

    // Both ran out together: had the ack not deleted q:1, it would come back
    // with q:2, ahead of it.
    let back = eventually("q:2 to come back", || async {
        receive(&server, "q", 30).await
    })
    .await;
    assert_eq!(back.at(), ("q:2", 2));
    assert_eq!(back.value, "b");
    assert_eq!(receive(&server, "q", 30).await, None);
    assert_stale(
        &ack(&server, &[&both[0].receipt]).await,
        &[&both[0].receipt],
    );
    assert_ok(&ack(&server, &[&back.receipt]).await, json!({"acked": 1}));
    assert_eq!(stats(&server, "q").await, (0, 0, 0));
}

async fn stale_receipts_get_409_and_change_nothing(backend: Backend) {
    let Some(server) = TestServer::on(backend).await else {
        return;
    };
    server.publish("q", "one").await;
    server.publish("q", "two").await;

    // Acknowledged: every later use is stale.
    let one = receive(&server, "q", 30).await.expect("one");
    assert_ok(&ack(&server, &[&one.receipt]).await, json!({"acked": 1}));
    assert_stale(&ack(&server, &[&one.receipt]).await, &[&one.receipt]);
    assert_stale(&nack(&server, &one.receipt, None).await, &[&one.receipt]);
    assert_stale(&extend(&server, &one.receipt, "30").await, &[&one.receipt]);
    assert_eq!(stats(&server, "q").await, (1, 0, 0));

    // Released: the message waits again, and the receipt is over.
    let two = receive(&server, "q", 30).await.expect("two");
    assert_eq!(two.at(), ("q:2", 1));
    assert_ok(
        &nack(&server, &two.receipt, None).await,
        json!({"queue": "q", "key": "q:2", "released": true, "delay": 0}),
    );
    assert_stale(&ack(&server, &[&two.receipt]).await, &[&two.receipt]);
    assert_stale(&nack(&server, &two.receipt, None).await, &[&two.receipt]);
    assert_stale(&extend(&server, &two.receipt, "30").await, &[&two.receipt]);
    assert_eq!(stats(&server, "q").await, (1, 0, 0));

    // Superseded by a later delivery: the old receipt does not touch it.
    let again = receive(&server, "q", 30).await.expect("two again");
    assert_eq!(again.at(), ("q:2", 2));
    assert_stale(&ack(&server, &[&two.receipt]).await, &[&two.receipt]);
    assert_stale(&nack(&server, &two.receipt, None).await, &[&two.receipt]);
    assert_eq!(stats(&server, "q").await, (0, 1, 0));
    assert_eq!(receive(&server, "q", 30).await, None);
    assert_ok(&ack(&server, &[&again.receipt]).await, json!({"acked": 1}));
    assert_eq!(stats(&server, "q").await, (0, 0, 0));
}

async fn garbage_or_missing_receipts_get_400(backend: Backend) {
    let Some(server) = TestServer::on(backend).await else {
        return;
    };
    server.publish("q", "x").await;
    let delivery = receive(&server, "q", 30).await.expect("x");
    let receipt = delivery.receipt.as_str();
    for bad in [
        "",
        "garbage",
        "r1.1.1",
        "r1.0.1.71",
        "r1.1.0.71",
        "r1.1.1.zz",
        "r2.1.1.71",
    ] {
        assert_bad_request(&ack(&server, &[bad]).await, bad);
        assert_bad_request(&nack(&server, bad, None).await, bad);
        assert_bad_request(&extend(&server, bad, "30").await, bad);
    }
    // One garbage receipt spoils the batch.
    assert_bad_request(&ack(&server, &[receipt, "garbage"]).await, "batch");
    assert_bad_request(&server.post_form("/ack", &[]).await, "no receipt");
    assert_bad_request(&server.post_form("/nack", &[]).await, "no receipt");
    assert_bad_request(
        &server.post_form("/extend", &[("visibility", "30")]).await,
        "no receipt",
    );
    assert_bad_request(
        &server.post_form("/extend", &[("receipt", receipt)]).await,
        "no visibility",
    );
    for bad in ["-1", "x", "1.5", "", "1e3"] {
        assert_bad_request(&extend(&server, receipt, bad).await, bad);
        assert_bad_request(&nack(&server, receipt, Some(bad)).await, bad);
    }
    // None of it touched the delivery.
    assert_eq!(stats(&server, "q").await, (0, 1, 0));
    assert_ok(&ack(&server, &[receipt]).await, json!({"acked": 1}));
    assert_eq!(stats(&server, "q").await, (0, 0, 0));
}

async fn a_batch_ack_is_all_or_nothing_per_queue(backend: Backend) {
    let Some(server) = TestServer::on(backend).await else {
        return;
    };
    for value in ["a", "b", "c"] {
        server.publish("q", value).await;
    }
    server.publish("other", "z").await;
    let got = receive_many(&server, "q", 3, 30).await;
    let keys: Vec<(&str, u64)> = got.iter().map(Delivery::at).collect();
    assert_eq!(keys, [("q:1", 1), ("q:2", 1), ("q:3", 1)]);
    let z = receive(&server, "other", 30).await.expect("z");
    assert_ok(&ack(&server, &[&got[0].receipt]).await, json!({"acked": 1}));

    let batch = [
        got[1].receipt.as_str(),
        got[0].receipt.as_str(),
        z.receipt.as_str(),
        got[2].receipt.as_str(),
    ];
    assert_stale(&ack(&server, &batch).await, &[&got[0].receipt]);
    // None of q's receipts was acknowledged; the other queue's was.
    assert_eq!(stats(&server, "q").await, (0, 2, 0));
    assert_eq!(stats(&server, "other").await, (0, 0, 0));
    assert_stale(&ack(&server, &[&z.receipt]).await, &[&z.receipt]);

    let rest = [got[1].receipt.as_str(), got[2].receipt.as_str()];
    assert_ok(&ack(&server, &rest).await, json!({"acked": 2}));
    assert_eq!(stats(&server, "q").await, (0, 0, 0));
}

async fn nack_requeues_at_the_head_in_key_order_keeping_the_count(backend: Backend) {
    let Some(server) = TestServer::on(backend).await else {
        return;
    };
    for value in ["m1", "m2", "m3"] {
        server.publish("q", value).await;
    }
    let first = receive(&server, "q", 30).await.expect("m1");
    let second = receive(&server, "q", 30).await.expect("m2");
    assert_eq!((first.at(), second.at()), (("q:1", 1), ("q:2", 1)));
    // Released in reverse order, they still come back in key order.
    assert_ok(
        &nack(&server, &second.receipt, None).await,
        json!({"queue": "q", "key": "q:2", "released": true, "delay": 0}),
    );
    assert_ok(
        &nack(&server, &first.receipt, Some("0")).await,
        json!({"queue": "q", "key": "q:1", "released": true, "delay": 0}),
    );
    assert_eq!(stats(&server, "q").await, (3, 0, 0));
    let again = receive(&server, "q", 30).await.expect("m1 again");
    assert_eq!((again.at(), again.value.as_str()), (("q:1", 2), "m1"));
    let next = receive(&server, "q", 30).await.expect("m2 again");
    assert_eq!((next.at(), next.value.as_str()), (("q:2", 2), "m2"));
    let last = receive(&server, "q", 30).await.expect("m3");
    assert_eq!((last.at(), last.value.as_str()), (("q:3", 1), "m3"));

    assert_ok(
        &nack(&server, &again.receipt, None).await,
        json!({"queue": "q", "key": "q:1", "released": true, "delay": 0}),
    );
    let third = receive(&server, "q", 30).await.expect("m1 a third time");
    assert_eq!(third.at(), ("q:1", 3));
}

async fn nack_with_a_delay_hides_the_message_that_long(backend: Backend) {
    let Some(server) = TestServer::on(backend).await else {
        return;
    };
    server.publish("q", "a").await;
    server.publish("q", "b").await;
    let a = receive(&server, "q", 30).await.expect("a");
    assert_ok(
        &nack(&server, &a.receipt, Some("30")).await,
        json!({"queue": "q", "key": "q:1", "released": true, "delay": 30}),
    );
    assert_eq!(stats(&server, "q").await, (1, 0, 1));
    let b = receive(&server, "q", 30)
        .await
        .expect("b, while a is delayed");
    assert_eq!(b.at(), ("q:2", 1));
    assert_eq!(receive(&server, "q", 30).await, None);

    // A short delay runs out, and the count goes on.
    assert_ok(
        &nack(&server, &b.receipt, Some("1")).await,
        json!({"queue": "q", "key": "q:2", "released": true, "delay": 1}),
    );
    let back = eventually("b to come back", || async {
        receive(&server, "q", 30).await
    })
    .await;
    assert_eq!(back.at(), ("q:2", 2));

    // A long poll wakes when a delayed message comes due.
    assert_eq!(nack(&server, &back.receipt, Some("1")).await.status, 200);
    let answer = server.get("/q/q?visibility=30&wait=10").await;
    assert_eq!(answer.status, 200, "the delayed message came due");
    assert_eq!(Delivery::from_json(&answer.json()).at(), ("q:2", 3));
    assert_eq!(stats(&server, "q").await, (0, 1, 1));
}

async fn extend_keeps_a_delivery_hidden(backend: Backend) {
    let Some(server) = TestServer::on(backend).await else {
        return;
    };
    server.publish("q", "a").await;
    server.publish("q", "b").await;
    let both = receive_many(&server, "q", 2, WINDOW).await;
    let keys: Vec<(&str, u64)> = both.iter().map(Delivery::at).collect();
    assert_eq!(keys, [("q:1", 1), ("q:2", 1)]);
    assert_ok(
        &extend(&server, &both[0].receipt, "30").await,
        json!({"queue": "q", "key": "q:1", "visibility": 30}),
    );
    // Both were due together: had the extension not held, q:1 would come back
    // first.
    let back = eventually("q:2 to come back", || async {
        receive(&server, "q", 30).await
    })
    .await;
    assert_eq!(back.at(), ("q:2", 2));
    assert_eq!(receive(&server, "q", 30).await, None, "q:1 is still hidden");
    assert_stale(
        &extend(&server, &both[1].receipt, "30").await,
        &[&both[1].receipt],
    );
    // The extended delivery is still the current one.
    assert_ok(
        &ack(&server, &[&both[0].receipt]).await,
        json!({"acked": 1}),
    );
    assert_eq!(stats(&server, "q").await, (0, 1, 0));
}

async fn a_delivery_that_runs_out_comes_back_at_the_head(backend: Backend) {
    let Some(server) = TestServer::on(backend).await else {
        return;
    };
    server.publish("q", "a").await;
    let first = receive(&server, "q", 1).await.expect("a");
    assert_eq!(first.at(), ("q:1", 1));
    server.publish("q", "b").await;
    // Back ahead of q:2, which waited all along.
    eventually("q:1 back at the head", || async {
        (head(&server, "q").await.as_deref() == Some("q:1")).then_some(())
    })
    .await;
    let again = receive(&server, "q", 30).await.expect("a again");
    assert_eq!((again.at(), again.value.as_str()), (("q:1", 2), "a"));
    assert_ne!(again.receipt, first.receipt);
    assert_stale(&ack(&server, &[&first.receipt]).await, &[&first.receipt]);
    assert_stale(
        &nack(&server, &first.receipt, None).await,
        &[&first.receipt],
    );
    assert_stale(
        &extend(&server, &first.receipt, "30").await,
        &[&first.receipt],
    );
    assert_eq!(stats(&server, "q").await, (1, 1, 0));
    let b = receive(&server, "q", 30).await.expect("b");
    assert_eq!(b.at(), ("q:2", 1));
    assert_ok(
        &ack(&server, &[&again.receipt, &b.receipt]).await,
        json!({"acked": 2}),
    );
    assert_eq!(stats(&server, "q").await, (0, 0, 0));
}

async fn released_too_often_a_message_goes_dead(backend: Backend) {
    let Some(server) = TestServer::on(backend).await else {
        return;
    };
    let settings = configure(&server, "q", r#"{"max_receives": 2}"#).await;
    assert_eq!(settings["max_receives"], 2);
    assert_eq!(settings["dead_letter"], "q.dead");
    server.publish("q", "m1").await;
    server.publish("q", "m2").await;
    let first = receive(&server, "q", 30).await.expect("m1");
    assert_eq!(nack(&server, &first.receipt, None).await.status, 200);
    let second = receive(&server, "q", 30).await.expect("m1 again");
    assert_eq!(second.at(), ("q:1", 2));
    assert_ok(
        &nack(&server, &second.receipt, None).await,
        json!({"queue": "q", "key": "q:1", "released": true, "delay": 0}),
    );
    // Received twice without an ack: to q.dead, not back.
    let next = receive(&server, "q", 30).await.expect("m2");
    assert_eq!((next.at(), next.value.as_str()), (("q:2", 1), "m2"));
    assert_eq!(receive(&server, "q", 30).await, None);
    assert_eq!(stats(&server, "q.dead").await, (1, 0, 0));
    assert_eq!(
        server.pop("q.dead").await,
        Some(("q.dead:1".into(), "m1".into()))
    );
    // An ack on the last allowed receive still deletes it.
    assert_ok(&ack(&server, &[&next.receipt]).await, json!({"acked": 1}));
    assert_eq!(stats(&server, "q").await, (0, 0, 0));
    assert_eq!(stats(&server, "q.dead").await, (0, 0, 0));
}

async fn expired_deliveries_go_dead_and_redrive_brings_them_back(backend: Backend) {
    let Some(server) = TestServer::on(backend).await else {
        return;
    };
    let settings = configure(
        &server,
        "work",
        r#"{"max_receives": 1, "dead_letter": "graveyard"}"#,
    )
    .await;
    assert_eq!(settings["dead_letter"], "graveyard");
    server.publish("work", "x").await;
    let delivery = receive(&server, "work", 1).await.expect("x");
    assert_eq!(delivery.at(), ("work:1", 1));
    // Its visibility runs out: to the graveyard, never back to work.
    let dead = eventually("x in the graveyard", || async {
        assert_eq!(
            receive(&server, "work", 30).await,
            None,
            "a dead letter came back"
        );
        head(&server, "graveyard").await
    })
    .await;
    assert_eq!(dead, "graveyard:1");
    assert_stale(
        &ack(&server, &[&delivery.receipt]).await,
        &[&delivery.receipt],
    );

    server.publish("work", "y").await;
    let answer = server.post_form("/redrive/work", &[]).await;
    assert_ok(
        &answer,
        json!({"queue": "work", "from": "graveyard", "moved": 1}),
    );
    assert_eq!(stats(&server, "graveyard").await, (0, 0, 0));
    // Back at the tail, under a new key.
    assert_eq!(
        server.pop("work").await,
        Some(("work:2".into(), "y".into()))
    );
    assert_eq!(
        server.pop("work").await,
        Some(("work:3".into(), "x".into()))
    );
    let answer = server.post_form("/redrive/work", &[]).await;
    assert_ok(
        &answer,
        json!({"queue": "work", "from": "graveyard", "moved": 0}),
    );
}

async fn settings_have_defaults_change_by_field_and_refuse_nonsense(backend: Backend) {
    let Some(server) = TestServer::on(backend).await else {
        return;
    };
    let defaults = json!({
        "visibility": 30, "max_receives": 0, "dead_letter": "cfg.dead",
        "max_len": 0, "retention": 0,
    });
    assert_eq!(config(&server, "cfg").await, defaults);

    let answer = set_config(&server, "cfg", r#"{"max_receives": 2}"#).await;
    let mut want = defaults.clone();
    want["max_receives"] = json!(2);
    assert_ok(&answer, want.clone());
    // As the form field `body`.
    let answer = server
        .post_form(
            "/config/cfg",
            &[("body", r#"{"visibility": 5, "dead_letter": "elsewhere"}"#)],
        )
        .await;
    want["visibility"] = json!(5);
    want["dead_letter"] = json!("elsewhere");
    assert_ok(&answer, want.clone());
    assert_ok(&set_config(&server, "cfg", "{}").await, want.clone());
    assert_eq!(config(&server, "cfg").await, want);

    let long_name = format!(r#"{{"dead_letter": "{}"}}"#, "d".repeat(300));
    let refused = [
        r#"{"bogus": 1}"#,
        r#"{"visibility": 9, "bogus": 1}"#,
        r#"{"visibility": "9"}"#,
        r#"{"visibility": -1}"#,
        r#"{"visibility": 1.5}"#,
        r#"{"max_receives": null}"#,
        r#"{"max_len": true}"#,
        r#"{"retention": [1]}"#,
        r#"{"dead_letter": 5}"#,
        r#"{"dead_letter": ""}"#,
        r#"{"dead_letter": "cfg"}"#,
        r#"{"visibility": 9, "dead_letter": "cfg"}"#,
        r#"{"dead_letter": "bad\u0001name"}"#,
        &long_name,
        "[]",
        "5",
        r#""visibility""#,
        "null",
        "{",
        "",
        r#"{"visibility": 9} trailing"#,
    ];
    for body in refused {
        assert_bad_request(&set_config(&server, "cfg", body).await, body);
        assert_eq!(config(&server, "cfg").await, want, "after {body}");
    }
    let answer = server
        .post_form("/config/cfg", &[("body", r#"{"visibility": "9"}"#)])
        .await;
    assert_bad_request(&answer, "a form body of the wrong type");
    assert_bad_request(&server.post_form("/config/cfg", &[]).await, "no body");
    assert_eq!(config(&server, "cfg").await, want);

    // null names the default dead-letter queue again.
    let answer = set_config(
        &server,
        "cfg",
        r#"{"dead_letter": null, "max_len": 10, "retention": 60}"#,
    )
    .await;
    want["dead_letter"] = json!("cfg.dead");
    want["max_len"] = json!(10);
    want["retention"] = json!(60);
    assert_ok(&answer, want);
    // Other queues keep their defaults.
    let mut other = defaults;
    other["dead_letter"] = json!("other.dead");
    assert_eq!(config(&server, "other").await, other);
}

async fn settings_persist_across_a_restart(backend: Backend) {
    let Some(server) = TestServer::on(backend).await else {
        return;
    };
    let want = json!({
        "visibility": 7, "max_receives": 3, "dead_letter": "morgue",
        "max_len": 50, "retention": 600,
    });
    assert_eq!(configure(&server, "kept", &want.to_string()).await, want);
    let server = server.restart().await;
    assert_eq!(config(&server, "kept").await, want);
}

async fn receive_without_visibility_uses_the_queue_setting(backend: Backend) {
    let Some(server) = TestServer::on(backend).await else {
        return;
    };
    let receive_cmd = |visibility: Option<u64>| {
        let mut body = json!({"cmd": "receive", "queue": "q"});
        if let Some(seconds) = visibility {
            body["visibility"] = json!(seconds);
        }
        command(&server, body)
    };
    // Never set: 30 seconds, so it stays hidden.
    server.publish("q", "plain").await;
    let answer = receive_cmd(None).await;
    assert_eq!(answer.json()["key"], "q:1", "{}", answer.body);
    assert_eq!(
        receive_cmd(None).await.json(),
        json!({"error": "empty queue"})
    );

    assert_eq!(
        configure(&server, "q", r#"{"visibility": 1}"#).await["visibility"],
        1
    );
    server.publish("q", "explicit").await;
    server.publish("q", "by setting").await;
    let explicit = receive_cmd(Some(30)).await.json();
    assert_eq!(explicit["key"], "q:2", "{explicit}");
    let by_setting = receive_cmd(None).await.json();
    assert_eq!(by_setting["key"], "q:3", "{by_setting}");
    // The one received on the queue's setting comes back; had the explicit
    // visibility not won, q:2 would come back with it, ahead of it.
    let back = eventually("q:3 to come back", || async {
        let json = receive_cmd(Some(30)).await.json();
        json.get("key").is_some().then_some(json)
    })
    .await;
    assert_eq!((&back["key"], &back["count"]), (&json!("q:3"), &json!(2)));
    assert_eq!(
        receive_cmd(Some(30)).await.json(),
        json!({"error": "empty queue"})
    );
}

async fn a_full_queue_refuses_publishes_with_429(backend: Backend) {
    let Some(server) = TestServer::on(backend).await else {
        return;
    };
    configure(&server, "cap", r#"{"max_len": 2}"#).await;
    let refused = |what: &'static str| {
        let server = &server;
        async move {
            let answer = server.post_form("/q/cap", &[("value", "more")]).await;
            assert_eq!(answer.status, 429, "{what}: {}", answer.body);
            let error = answer.json()["error"]
                .as_str()
                .expect("an error message")
                .to_owned();
            assert!(error.contains("full"), "{what}: {error}");
        }
    };
    server.publish("cap", "x").await;
    server.publish("cap", "y").await;
    refused("two waiting").await;
    assert_eq!(stats(&server, "cap").await, (2, 0, 0));

    let delivery = receive(&server, "cap", 30).await.expect("x");
    refused("one waiting, one in flight").await;
    assert_eq!(
        nack(&server, &delivery.receipt, Some("30")).await.status,
        200
    );
    refused("one waiting, one delayed").await;
    assert_eq!(stats(&server, "cap").await, (1, 0, 1));

    assert_eq!(server.pop("cap").await, Some(("cap:2".into(), "y".into())));
    // One place left: a batch of two is refused whole.
    let answer = server
        .post_form("/q/cap", &[("value", "b1"), ("value", "b2")])
        .await;
    assert_eq!(answer.status, 429, "{}", answer.body);
    assert_eq!(stats(&server, "cap").await, (0, 0, 1));
    let answer = server
        .post_form("/q/cap", &[("value", "later"), ("delay", "30")])
        .await;
    assert_eq!(answer.status, 200, "{}", answer.body);
    refused("two delayed").await;
    assert_eq!(stats(&server, "cap").await, (0, 0, 2));
}

/// Publishes that arrive together (which the Redis store sends in one call)
/// are each all-or-none, and each refused only if it would have been alone.
async fn concurrent_publishes_fill_a_capped_queue_exactly(backend: Backend) {
    let Some(server) = TestServer::on(backend).await else {
        return;
    };
    configure(&server, "cap", r#"{"max_len": 10}"#).await;
    let mut publishes = tokio::task::JoinSet::new();
    for i in 0..20 {
        let (client, url) = (server.client.clone(), server.url("/q/cap"));
        publishes.spawn(async move {
            let form = [("value", format!("{i}a")), ("value", format!("{i}b"))];
            (
                i,
                Answer::read(client.post(url).form(&form).send().await).await,
            )
        });
    }
    let mut taken = Vec::new();
    while let Some(joined) = publishes.join_next().await {
        let (i, answer) = joined.expect("a publishing task");
        match answer.status {
            200 => taken.push(i),
            429 => {}
            other => panic!("publish {i}: {other} {}", answer.body),
        }
    }
    assert_eq!(taken.len(), 5, "five batches of two fill ten places");
    assert_eq!(stats(&server, "cap").await, (10, 0, 0));
    let mut popped = std::collections::HashMap::new();
    while let Some((key, value)) = server.pop("cap").await {
        popped.insert(value, key);
    }
    for i in taken {
        let number = |value: String| {
            let key = popped
                .get(&value)
                .unwrap_or_else(|| panic!("{value} was stored"));
            key.trim_start_matches("cap:")
                .parse::<u64>()
                .expect("a key number")
        };
        let (first, second) = (number(format!("{i}a")), number(format!("{i}b")));
        assert_eq!(second, first + 1, "a batch keeps its messages together");
    }
}

async fn retention_expires_every_message(backend: Backend) {
    let Some(server) = TestServer::on(backend).await else {
        return;
    };
    configure(&server, "brief", r#"{"retention": 1}"#).await;
    configure(&server, "long", r#"{"retention": 3600}"#).await;
    server.publish("brief", "plain").await;
    let answer = server
        .post_form("/q/brief", &[("value", "with ttl"), ("ttl", "3600")])
        .await;
    assert_eq!(answer.status, 200, "{}", answer.body);
    server.publish("long", "kept").await;
    eventually("brief to expire", || async {
        head(&server, "brief").await.is_none().then_some(())
    })
    .await;
    assert_eq!(server.pop("brief").await, None);
    assert_eq!(head(&server, "long").await.as_deref(), Some("long:1"));
    assert_eq!(
        server.pop("long").await,
        Some(("long:1".into(), "kept".into()))
    );
}

async fn delayed_publishes_stay_hidden_then_appear(backend: Backend) {
    let Some(server) = TestServer::on(backend).await else {
        return;
    };
    let answer = server
        .post_form("/q/d", &[("value", "later"), ("delay", "30")])
        .await;
    assert_eq!((answer.status, answer.body.as_str()), (200, "d:1\r\n"));
    assert_eq!(server.get("/q/d").await.status, 204);
    assert_eq!(receive(&server, "d", 30).await, None);
    assert_eq!(stats(&server, "d").await, (0, 0, 1));
    // Published after it without a delay, it pops first.
    assert_eq!(server.publish("d", "now").await, "d:2");
    assert_eq!(server.pop("d").await, Some(("d:2".into(), "now".into())));
    assert_eq!(server.pop("d").await, None);

    let answer = server
        .post_form("/q/d", &[("value", "soon"), ("delay", "1")])
        .await;
    assert_eq!(answer.body, "d:3\r\n");
    let popped = eventually("d:3 to come due", || async { server.pop("d").await }).await;
    assert_eq!(popped, ("d:3".into(), "soon".into()));

    // A long poll wakes when a delayed message comes due.
    let answer = server
        .post_form("/q/d", &[("value", "waited"), ("delay", "1")])
        .await;
    assert_eq!(answer.body, "d:4\r\n");
    let answer = server.get("/q/d?wait=10").await;
    assert_eq!(answer.status, 200, "d:4 came due");
    assert_eq!(
        answer.json(),
        json!({"key": "d:4", "value": "waited", "count": 0})
    );
    assert_eq!(stats(&server, "d").await, (0, 0, 1));
}

async fn a_long_poll_is_answered_by_an_arrival(backend: Backend) {
    let Some(server) = TestServer::on(backend).await else {
        return;
    };
    let waiting = spawn_get(&server, "/q/lp?wait=10");
    parked(&server, "lp", 1).await;
    server.publish("lp", "hello").await;
    let answer = waiting.await.expect("the long poll");
    assert_eq!(answer.status, 200, "{}", answer.body);
    assert_eq!(
        answer.json(),
        json!({"key": "lp:1", "value": "hello", "count": 0})
    );

    let waiting = spawn_get(&server, "/q/lp?wait=10&max=5&visibility=30");
    parked(&server, "lp", 1).await;
    server.publish("lp", "again").await;
    let answer = waiting.await.expect("the long poll");
    assert_eq!(answer.status, 200, "{}", answer.body);
    let got: Vec<Delivery> = answer
        .json()
        .as_array()
        .expect("an array")
        .iter()
        .map(Delivery::from_json)
        .collect();
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!((got[0].at(), got[0].value.as_str()), (("lp:2", 1), "again"));

    // A released delivery wakes long polls too.
    let waiting = spawn_get(&server, "/q/lp?wait=10&visibility=30");
    parked(&server, "lp", 1).await;
    assert_eq!(nack(&server, &got[0].receipt, None).await.status, 200);
    let answer = waiting.await.expect("the long poll");
    assert_eq!(answer.status, 200, "{}", answer.body);
    assert_eq!(Delivery::from_json(&answer.json()).at(), ("lp:2", 2));
}

async fn a_long_poll_runs_out_empty(backend: Backend) {
    let Some(server) = TestServer::on(backend).await else {
        return;
    };
    let (single, popped, received) = tokio::join!(
        server.get("/q/idle?wait=1"),
        server.get("/q/idle?wait=1&max=3"),
        server.get("/q/idle?wait=1&max=3&visibility=30"),
    );
    assert_eq!((single.status, single.body.as_str()), (204, ""));
    assert_eq!((popped.status, popped.body.as_str()), (200, "[]\r\n"));
    assert_eq!((received.status, received.body.as_str()), (200, "[]\r\n"));

    server.publish("idle", "m").await;
    assert_bad_request(&server.get("/q/idle?wait=21").await, "wait=21");
    assert_eq!(stats(&server, "idle").await, (1, 0, 0));
    // With a message waiting, even the longest wait answers at once.
    let answer = server.get("/q/idle?wait=20").await;
    assert_eq!(answer.status, 200, "{}", answer.body);
    assert_eq!(answer.json()["key"], "idle:1");
}

async fn max_answers_a_json_array(backend: Backend) {
    let Some(server) = TestServer::on(backend).await else {
        return;
    };
    for value in ["m1", "m2", "m3"] {
        server.publish("b", value).await;
    }
    let answer = server.get("/q/b?max=2").await;
    assert_eq!(answer.status, 200);
    assert_eq!(answer.content_type, "application/json");
    assert!(answer.body.ends_with("\r\n"), "{:?}", answer.body);
    assert_eq!(
        answer.json(),
        json!([
            {"key": "b:1", "value": "m1", "count": 0},
            {"key": "b:2", "value": "m2", "count": 0},
        ])
    );
    let answer = server.get("/q/b?max=1").await;
    assert_eq!(
        answer.json(),
        json!([{"key": "b:3", "value": "m3", "count": 0}])
    );
    let answer = server.get("/q/b?max=5").await;
    assert_eq!((answer.status, answer.body.as_str()), (200, "[]\r\n"));

    server.publish("b", "n1").await;
    server.publish("b", "n2").await;
    let got = receive_many(&server, "b", 1000, 30).await;
    let keys: Vec<(&str, u64)> = got.iter().map(Delivery::at).collect();
    assert_eq!(keys, [("b:4", 1), ("b:5", 1)]);
    assert_eq!(receive_many(&server, "b", 10, 30).await, []);
    let receipts: Vec<&str> = got.iter().map(|d| d.receipt.as_str()).collect();
    assert_ok(&ack(&server, &receipts).await, json!({"acked": 2}));

    server.publish("b", "p").await;
    for bad in ["0", "1001", "-1", "x", ""] {
        assert_bad_request(&server.get(&format!("/q/b?max={bad}")).await, bad);
    }
    let answer = server.get("/q/b?max=2&callback=cb").await;
    assert_eq!(
        answer.body,
        "cb([{\"key\":\"b:6\",\"value\":\"p\",\"count\":0}]);\r\n"
    );
}

async fn numeric_parameters_must_be_non_negative_integers(backend: Backend) {
    let Some(server) = TestServer::on(backend).await else {
        return;
    };
    server.publish("n", "kept").await;
    for name in ["visibility", "max", "wait"] {
        for bad in ["-1", "x", "1.5", "", "1e3"] {
            let answer = server.get(&format!("/q/n?{name}={bad}")).await;
            assert_bad_request(&answer, &format!("{name}={bad}"));
        }
    }
    assert_eq!(stats(&server, "n").await, (1, 0, 0));
    for name in ["ttl", "delay"] {
        for bad in ["-1", "x", "1.5", "", "1e3"] {
            let answer = server
                .post_form("/q/n", &[("value", "v"), (name, bad)])
                .await;
            assert_bad_request(&answer, &format!("{name}={bad}"));
        }
    }
    assert_eq!(stats(&server, "n").await, (1, 0, 0));
    assert_eq!(server.pop("n").await, Some(("n:1".into(), "kept".into())));
    assert_eq!(server.pop("n").await, None);
}

async fn batches_are_stored_whole(backend: Backend) {
    let Some(server) = TestServer::on(backend).await else {
        return;
    };
    let answer = server
        .post_form("/q/b", &[("value", "a"), ("value", "b"), ("value", "c")])
        .await;
    assert_eq!(
        (answer.status, answer.body.as_str()),
        (200, "b:1\r\nb:2\r\nb:3\r\n")
    );
    let answer = server
        .post_form("/q/b?callback=cb", &[("value", "d"), ("value", "e")])
        .await;
    assert_eq!(answer.body, "cb([\"b:4\",\"b:5\"]);\r\n");
    assert_eq!(answer.content_type, "application/javascript");
    // An empty value spoils the batch.
    for form in [
        [("value", "f"), ("value", ""), ("value", "g")],
        [("value", "f"), ("value", "g"), ("value", "   ")],
    ] {
        assert_bad_request(&server.post_form("/q/b", &form).await, "empty value");
    }
    assert_eq!(stats(&server, "b").await, (5, 0, 0));

    // One message per non-empty line, as is.
    let answer = server
        .post_raw("/q/b", "application/x-ndjson", "x\n  y  \n\n{\"z\": 1}\r\n")
        .await;
    assert_eq!(
        (answer.status, answer.body.as_str()),
        (200, "b:6\r\nb:7\r\nb:8\r\n")
    );
    // Any other body is one message, as is.
    let document = "{\n  \"whole\": [1, 2]\n}\n";
    let answer = server
        .post_raw("/q/b", "application/json", document.to_owned())
        .await;
    assert_eq!(answer.body, "b:9\r\n");
    let answer = server
        .post_raw("/q/b", "text/plain; charset=utf-8", "  as is  ")
        .await;
    assert_eq!(answer.body, "b:10\r\n");

    for content_type in ["text/plain", "application/x-ndjson"] {
        let answer = server
            .post_raw("/q/b", content_type, vec![b'o', b'k', 0xff, b'\n'])
            .await;
        assert_bad_request(&answer, content_type);
    }
    let answer = server
        .post_raw("/q/b", "application/x-ndjson", "\n  \n")
        .await;
    assert_bad_request(&answer, "blank ndjson");
    assert_eq!(stats(&server, "b").await, (10, 0, 0));

    let popped: Vec<String> = server
        .get("/q/b?max=20")
        .await
        .json()
        .as_array()
        .expect("an array")
        .iter()
        .map(|m| m["value"].as_str().expect("a value").to_owned())
        .collect();
    assert_eq!(
        popped,
        [
            "a",
            "b",
            "c",
            "d",
            "e",
            "x",
            "  y  ",
            "{\"z\": 1}",
            document,
            "  as is  "
        ]
    );
}

/// More messages than the Redis scripts hand to one command (4,000 arguments),
/// half of them with a ttl, come back whole and in order through pops of the
/// most a request may ask for.
async fn a_batch_larger_than_one_store_command_keeps_its_order(backend: Backend) {
    let Some(server) = TestServer::on(backend).await else {
        return;
    };
    let lines: String = (1..=4500).map(|n| format!("m{n}\n")).collect();
    for path in ["/q/big", "/q/big?ttl=3600"] {
        let answer = server
            .post_raw(path, "application/x-ndjson", lines.clone())
            .await;
        assert_eq!(answer.status, 200, "{path}: {}", answer.body);
    }
    assert_eq!(stats(&server, "big").await, (9000, 0, 0));
    let mut popped = Vec::new();
    loop {
        let answer = server.get("/q/big?max=1000").await;
        assert_eq!(answer.status, 200, "{}", answer.body);
        let batch = answer.json();
        let batch = batch.as_array().expect("an array");
        if batch.is_empty() {
            break;
        }
        popped.extend(
            batch
                .iter()
                .map(|m| m["value"].as_str().expect("a value").to_owned()),
        );
    }
    let want: Vec<String> = (1..=4500)
        .chain(1..=4500)
        .map(|n| format!("m{n}"))
        .collect();
    assert_eq!(popped, want);
    assert_eq!(stats(&server, "big").await, (0, 0, 0));
}

/// Pops that arrive together (which the embedded store takes in one pass, and
/// the Redis store in one call) share the queue out: every message goes to
/// exactly one of them, and each consumer sees its messages in key order.
async fn concurrent_pops_take_each_message_once_in_order(backend: Backend) {
    let Some(server) = TestServer::on(backend).await else {
        return;
    };
    let lines: String = (1..=600).map(|n| format!("m{n}\n")).collect();
    let answer = server
        .post_raw("/q/shared", "application/x-ndjson", lines)
        .await;
    assert_eq!(answer.status, 200, "{}", answer.body);
    let mut consumers = tokio::task::JoinSet::new();
    for c in 0..24 {
        let (client, url) = (server.client.clone(), server.url("/q/shared"));
        consumers.spawn(async move {
            // Some take one message at a time, others up to three.
            let max = 1 + c % 3;
            let mut taken = Vec::new();
            loop {
                let answer =
                    Answer::read(client.get(format!("{url}?max={max}")).send().await).await;
                assert_eq!(answer.status, 200, "{}", answer.body);
                let batch = answer.json();
                let batch = batch.as_array().expect("an array").clone();
                assert!(batch.len() <= max, "{max} at most: {batch:?}");
                if batch.is_empty() {
                    return taken;
                }
                for message in batch {
                    let key = message["key"].as_str().expect("a key");
                    let number: u64 = key
                        .trim_start_matches("shared:")
                        .parse()
                        .expect("a key number");
                    let value = message["value"].as_str().expect("a value");
                    assert_eq!(value, format!("m{number}"), "{key} holds its own value");
                    taken.push(number);
                }
            }
        });
    }
    let mut all = Vec::new();
    while let Some(joined) = consumers.join_next().await {
        let taken = joined.expect("a consumer");
        assert!(
            taken.windows(2).all(|w| w[0] < w[1]),
            "one consumer's messages come in key order: {taken:?}"
        );
        all.extend(taken);
    }
    all.sort_unstable();
    assert_eq!(all, (1..=600).collect::<Vec<u64>>(), "each message once");
    assert_eq!(stats(&server, "shared").await, (0, 0, 0));
}

async fn json_commands_receive_ack_nack_and_extend(backend: Backend) {
    let Some(server) = TestServer::on(backend).await else {
        return;
    };
    for value in ["a", "b", "c"] {
        server.publish("j", value).await;
    }
    let answer = command(
        &server,
        json!({"cmd": "receive", "queue": "j", "visibility": 30}),
    )
    .await;
    assert_eq!(answer.status, 200);
    let got = answer.json();
    let receipt = got["receipt"].as_str().expect("a receipt").to_owned();
    assert_eq!(
        got,
        json!({"queue": "j", "value": "a", "key": "j:1", "count": 1, "receipt": receipt})
    );
    let answer = command(
        &server,
        json!({"cmd": "extend", "receipt": receipt, "visibility": 30}),
    )
    .await;
    assert_ok(
        &answer,
        json!({"queue": "j", "key": "j:1", "visibility": 30}),
    );
    let answer = command(&server, json!({"cmd": "nack", "receipt": receipt})).await;
    assert_ok(
        &answer,
        json!({"queue": "j", "key": "j:1", "released": true, "delay": 0}),
    );
    let stale = json!({"error": "stale receipt", "stale": [receipt]});
    for cmd in [
        json!({"cmd": "ack", "receipt": receipt}),
        json!({"cmd": "ack", "receipts": [receipt]}),
        json!({"cmd": "nack", "receipt": receipt}),
        json!({"cmd": "extend", "receipt": receipt, "visibility": 30}),
    ] {
        assert_ok(&command(&server, cmd).await, stale.clone());
    }

    let answer = command(
        &server,
        json!({"cmd": "receive", "queue": "j", "visibility": 30, "max": 5}),
    )
    .await;
    let many = answer.json();
    let many = many.as_array().expect("max answers an array");
    let shapes: Vec<(&str, &str, u64)> = many
        .iter()
        .map(|m| {
            assert_eq!(m["queue"], "j");
            (
                m["key"].as_str().expect("a key"),
                m["value"].as_str().expect("a value"),
                m["count"].as_u64().expect("a count"),
            )
        })
        .collect();
    assert_eq!(shapes, [("j:1", "a", 2), ("j:2", "b", 1), ("j:3", "c", 1)]);
    let receipts: Vec<&str> = many
        .iter()
        .map(|m| m["receipt"].as_str().expect("a receipt"))
        .collect();
    let answer = command(&server, json!({"cmd": "ack", "receipt": receipts[0]})).await;
    assert_ok(&answer, json!({"acked": 1}));
    let answer = command(
        &server,
        json!({"cmd": "ack", "receipts": [receipts[0], receipts[1]]}),
    )
    .await;
    assert_ok(
        &answer,
        json!({"error": "stale receipt", "stale": [receipts[0]]}),
    );
    assert_eq!(stats(&server, "j").await, (0, 2, 0));
    let answer = command(
        &server,
        json!({"cmd": "nack", "receipt": receipts[2], "delay": 30}),
    )
    .await;
    assert_ok(
        &answer,
        json!({"queue": "j", "key": "j:3", "released": true, "delay": 30}),
    );
    assert_eq!(stats(&server, "j").await, (0, 1, 1));
    let answer = command(&server, json!({"cmd": "ack", "receipts": [receipts[1]]})).await;
    assert_ok(&answer, json!({"acked": 1}));

    let empty = json!({"error": "empty queue"});
    for cmd in [
        json!({"cmd": "receive", "queue": "j"}),
        json!({"cmd": "receive", "queue": "j", "visibility": 30, "max": 3}),
    ] {
        assert_ok(&command(&server, cmd).await, empty.clone());
    }
    for cmd in [
        json!({"cmd": "ack", "receipt": "nope"}),
        json!({"cmd": "ack", "receipts": ["nope"]}),
        json!({"cmd": "ack", "receipts": [5]}),
        json!({"cmd": "ack", "receipts": "nope"}),
        json!({"cmd": "nack", "receipt": "nope"}),
        json!({"cmd": "extend", "receipt": "nope", "visibility": 30}),
        json!({"cmd": "receive", "queue": "j", "visibility": -1}),
        json!({"cmd": "receive", "queue": "j", "max": "2"}),
    ] {
        assert_bad_request(&command(&server, cmd.clone()).await, &cmd.to_string());
    }
    assert_eq!(stats(&server, "j").await, (0, 0, 1));
}

conformance!(
    receive_hides_the_head_until_acked,
    an_acked_message_never_comes_back,
    stale_receipts_get_409_and_change_nothing,
    garbage_or_missing_receipts_get_400,
    a_batch_ack_is_all_or_nothing_per_queue,
    nack_requeues_at_the_head_in_key_order_keeping_the_count,
    nack_with_a_delay_hides_the_message_that_long,
    extend_keeps_a_delivery_hidden,
    a_delivery_that_runs_out_comes_back_at_the_head,
    released_too_often_a_message_goes_dead,
    expired_deliveries_go_dead_and_redrive_brings_them_back,
    settings_have_defaults_change_by_field_and_refuse_nonsense,
    settings_persist_across_a_restart,
    receive_without_visibility_uses_the_queue_setting,
    a_full_queue_refuses_publishes_with_429,
    concurrent_publishes_fill_a_capped_queue_exactly,
    retention_expires_every_message,
    delayed_publishes_stay_hidden_then_appear,
    a_long_poll_is_answered_by_an_arrival,
    a_long_poll_runs_out_empty,
    max_answers_a_json_array,
    numeric_parameters_must_be_non_negative_integers,
    batches_are_stored_whole,
    a_batch_larger_than_one_store_command_keeps_its_order,
    concurrent_pops_take_each_message_once_in_order,
    json_commands_receive_ack_nack_and_extend,
);
