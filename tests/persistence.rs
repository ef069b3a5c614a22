//! What must survive a restart: messages, key counters, policies, pause states.

mod common;

use common::{Backend, TestServer};
use serde_json::json;

async fn queues_survive_a_restart(backend: Backend) {
    let Some(server) = TestServer::on(backend).await else {
        return;
    };
    for i in 1..=3 {
        server.publish("keep", &format!("m{i}")).await;
    }
    server.pop("keep").await;
    server.publish("purged", "gone").await;
    server.delete("/q/purged").await;
    server
        .post_form("/p/keep", &[("policy", "roundrobin")])
        .await;
    server
        .post_form("/control/keep", &[("status", "stop")])
        .await;
    server
        .post_form("/control/unlisted", &[("status", "stop")])
        .await;
    let peek = server
        .post_form("/queue", &[("body", r#"{"cmd":"get","queue":"keep"}"#)])
        .await;
    assert_eq!(peek.json()["count"], 1);

    let server = server.restart().await;

    let stats = server.get("/stats/").await.json();
    assert_eq!(stats["count"], 2);
    assert_eq!(
        stats["queues"]["keep"],
        json!({"name": "keep", "len": 2, "status": "", "policy": 2, "consumers": 0, "waiting": 0, "inflight": 0, "delayed": 0, "published": 3})
    );
    assert_eq!(stats["queues"]["purged"]["len"], 0);
    assert_eq!(stats["queues"]["purged"]["published"], 1);
    assert_eq!(
        server.get("/control/unlisted").await.json()["status"]["status"],
        0
    );
    assert_eq!(server.get("/p/keep").await.json()["value"], "roundrobin");
    // Numbering continues, also after a purge.
    assert_eq!(server.publish("keep", "m4").await, "keep:4");
    assert_eq!(server.publish("purged", "again").await, "purged:2");
    for i in 2..=4 {
        assert_eq!(
            server.pop("keep").await,
            Some((format!("keep:{i}"), format!("m{i}")))
        );
    }
    server.stop().await;
}

#[tokio::test]
async fn a_second_server_on_the_same_directory_is_refused() {
    let server = TestServer::start().await;
    let config = restmq::config::Config::new(server.data_dir());
    let second = restmq::open(&config).await;
    let Err(error) = second else {
        panic!("a second store opened the same directory")
    };
    assert!(error.to_string().contains("in use"), "{error}");
    server.stop().await;
}

#[tokio::test]
async fn requests_after_the_store_closed_get_503() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let state = restmq::open(&restmq::config::Config::new(dir.path()))
        .await
        .expect("open");
    state.broker.close().await.expect("close");
    let queue = restmq::broker::QueueName::parse("q").expect("name");
    let message = restmq::store::NewMessage {
        value: "x".into(),
        ..Default::default()
    };
    let error = state
        .broker
        .publish(&queue, message)
        .await
        .expect_err("a closed store refuses writes");
    assert_eq!(error.status(), 503);
}

conformance!(queues_survive_a_restart);

/// With the smallest cache (`--cache-size 1`, 1 MiB), a store many times its
/// size is written out and read back from the file: every message comes back,
/// in order, after a restart.
#[tokio::test]
async fn a_store_larger_than_its_cache_comes_back_whole() {
    let Some(server) = TestServer::configured(Backend::Embedded, |config| {
        config.cache_bytes = 1 << 20;
    })
    .await
    else {
        return;
    };
    const BATCHES: usize = 40;
    const PER_BATCH: usize = 100;
    let value = |i: usize| format!("{i:06}-{}", "x".repeat(1000));
    for batch in 0..BATCHES {
        let body: String = (0..PER_BATCH)
            .map(|n| value(batch * PER_BATCH + n) + "\n")
            .collect();
        let answer = server
            .post_raw("/q/big", "application/x-ndjson", body)
            .await;
        assert_eq!(answer.status, 200, "batch {batch}: {}", answer.body);
    }
    let server = server.restart().await;
    let total = BATCHES * PER_BATCH;
    assert_eq!(server.get("/stats/big").await.json()["len"], total);
    for i in 0..total {
        assert_eq!(
            server.pop("big").await,
            Some((format!("big:{}", i + 1), value(i))),
            "message {i}"
        );
    }
    assert_eq!(server.pop("big").await, None);
    server.stop().await;
}
