//! `/metrics`: scraped before and after known traffic, every counter moved by
//! exactly that traffic, and the gauges read the queues as they are.

mod common;

use std::collections::BTreeMap;

use common::{Backend, Streaming, TestServer, eventually};

/// The samples of a scrape: `name{labels}` to value.
async fn scrape(server: &TestServer) -> BTreeMap<String, f64> {
    let answer = server.get("/metrics").await;
    assert_eq!(answer.status, 200, "{}", answer.body);
    assert!(
        answer.content_type.starts_with("text/plain"),
        "{}",
        answer.content_type
    );
    answer
        .body
        .lines()
        .filter(|line| !line.starts_with('#') && !line.is_empty())
        .map(|line| {
            let (series, value) = line.rsplit_once(' ').expect("a sample");
            let value = value.parse().unwrap_or_else(|e| panic!("{line}: {e}"));
            (series.to_owned(), value)
        })
        .collect()
}

fn moved(before: &BTreeMap<String, f64>, after: &BTreeMap<String, f64>, series: &str) -> f64 {
    let read = |m: &BTreeMap<String, f64>| m.get(series).copied().unwrap_or(0.0);
    read(after) - read(before)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn counters_move_by_exactly_the_traffic() {
    let server = TestServer::start().await;
    // Another queue, so that a counter attributed to the wrong queue shows.
    server.publish("other", "x").await;
    let before = scrape(&server).await;

    let batch = server
        .post_form("/q/m", &[("value", "1"), ("value", "2"), ("value", "3")])
        .await;
    assert_eq!(batch.status, 200);
    for value in ["4", "5", "6"] {
        server.publish("m", value).await;
    }
    assert!(server.pop("m").await.is_some());
    assert!(server.pop("m").await.is_some());
    let received = server.get("/q/m?visibility=30&max=2").await.json();
    let receipts: Vec<&str> = received
        .as_array()
        .expect("an array")
        .iter()
        .map(|m| m["receipt"].as_str().expect("a receipt"))
        .collect();
    assert_eq!(receipts.len(), 2);
    let acked = server.post_form("/ack", &[("receipt", receipts[0])]).await;
    assert_eq!(acked.status, 200, "{}", acked.body);
    let stale = server.post_form("/ack", &[("receipt", receipts[0])]).await;
    assert_eq!(stale.status, 409, "a stale ack counts nothing");
    let released = server.post_form("/nack", &[("receipt", receipts[1])]).await;
    assert_eq!(released.status, 200, "{}", released.body);
    // The released message comes again: a redelivery, held in flight.
    let again = server.get("/q/m?visibility=30").await.json();
    assert_eq!(again["count"], 2, "{again}");
    // The two messages left waiting go to a stream.
    let mut stream = Streaming::sse(&server, "/sse/m", &[]).await;
    for _ in 0..2 {
        let event = stream.event().await.expect("a message");
        assert!(event.id.starts_with("m:"), "{event:?}");
    }

    let after = scrape(&server).await;
    let counter =
        |name: &str, queue: &str| moved(&before, &after, &format!("{name}{{queue=\"{queue}\"}}"));
    assert_eq!(counter("restmq_published_total", "m"), 6.0);
    assert_eq!(
        counter("restmq_consumed_total", "m"),
        7.0,
        "2 pops, 2 receives, 1 redelivery, the 2 left streamed"
    );
    assert_eq!(counter("restmq_acked_total", "m"), 1.0);
    assert_eq!(counter("restmq_redelivered_total", "m"), 1.0);
    assert_eq!(counter("restmq_published_total", "other"), 0.0);
    assert_eq!(counter("restmq_consumed_total", "other"), 0.0);
    let gauge = |name: &str| after.get(&format!("{name}{{queue=\"m\"}}")).copied();
    assert_eq!(gauge("restmq_queue_depth"), Some(0.0));
    assert_eq!(gauge("restmq_queue_inflight"), Some(1.0));
    assert_eq!(gauge("restmq_stream_consumers"), Some(1.0));
    assert_eq!(after.get("restmq_queue_depth{queue=\"other\"}"), Some(&1.0));
    // Every POST /q/<q> was timed: the batch and the three single publishes.
    let posts = r#"restmq_http_request_duration_seconds_count{method="POST",route="/q/{*queue}"}"#;
    assert_eq!(moved(&before, &after, posts), 4.0);
    let publishes = r#"restmq_store_operation_duration_seconds_count{operation="publish"}"#;
    assert_eq!(moved(&before, &after, publishes), 4.0);
    let inf = r#"restmq_http_request_duration_seconds_bucket{method="POST",route="/q/{*queue}",le="+Inf"}"#;
    assert_eq!(
        after.get(inf),
        after.get(posts),
        "the +Inf bucket holds every request"
    );

    drop(stream);
    eventually("the stream to leave", || async {
        let now = scrape(&server).await;
        (now.get("restmq_stream_consumers{queue=\"m\"}") == Some(&0.0)).then_some(())
    })
    .await;
}

/// A message released once more than `max_receives` allows leaves for the
/// dead-letter queue: counted under the queue it left, on every store.
async fn dead_letters_are_counted(backend: Backend) {
    let Some(server) = TestServer::on(backend).await else {
        return;
    };
    let set = server
        .post_raw("/config/dl", "application/json", r#"{"max_receives":1}"#)
        .await;
    assert_eq!(set.status, 200, "{}", set.body);
    let before = scrape(&server).await;
    for value in ["a", "b"] {
        server.publish("dl", value).await;
    }
    for _ in 0..2 {
        let received = server.get("/q/dl?visibility=30").await.json();
        let receipt = received["receipt"].as_str().expect("a receipt");
        let released = server.post_form("/nack", &[("receipt", receipt)]).await;
        assert_eq!(released.status, 200, "{}", released.body);
    }
    assert!(
        server.pop("dl.dead").await.is_some(),
        "the first dead letter"
    );
    let after = scrape(&server).await;
    assert_eq!(
        moved(&before, &after, r#"restmq_dead_lettered_total{queue="dl"}"#),
        2.0
    );
    assert_eq!(
        moved(
            &before,
            &after,
            r#"restmq_dead_lettered_total{queue="dl.dead"}"#
        ),
        0.0
    );
    assert_eq!(
        after.get(r#"restmq_queue_depth{queue="dl.dead"}"#),
        Some(&1.0)
    );
}

conformance!(dead_letters_are_counted);
