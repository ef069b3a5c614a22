//! restmq on real Redis servers: the original RestMQ's keyspace read and written
//! both ways, two restmq servers sharing one Redis, a ring gaining a server under
//! load, and Redis killed under load or down when restmq starts.
//!
//! Every test needs `redis-server`: without it a test says so and passes, unless
//! `CI` is set, where it fails.

mod common;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use common::redis_servers::{self, RedisServer};
use common::{DEADLINE, Streaming, TestServer, eventually};
use redis::aio::MultiplexedConnection;
use restmq::config::{Config, Storage};
use restmq::store::{Clock, ManualClock, Message, RedisOptions, RedisStore, RedisTarget, Store};
use tokio::sync::mpsc;

/// Whether `redis-server` can be run; false (after saying so) when it is not
/// installed, unless `CI` is set: then the test fails.
fn redis_available(test: &str) -> bool {
    if redis_servers::available() {
        return true;
    }
    assert!(
        std::env::var_os("CI").is_none(),
        "redis-server is not installed, and CI is set: the Redis tests must run"
    );
    eprintln!("skipping {test}: redis-server is not installed");
    false
}

/// A database of the shared single Redis server that no other test uses.
async fn fresh_database() -> String {
    let mut urls = tokio::task::spawn_blocking(redis_servers::single)
        .await
        .expect("start redis-server");
    urls.pop().expect("the URL of the shared server")
}

/// A restmq server on the Redis servers at `urls` (one: a single server; more:
/// a ring).
async fn restmq_on(urls: Vec<String>) -> TestServer {
    let dir = tempfile::tempdir().expect("temporary directory");
    let mut config = Config::new(dir.path());
    config.storage = Storage::Redis(RedisTarget::Ring(urls));
    TestServer::start_with(config, Some(dir)).await
}

/// A `redis-server` of this test's own (started off the async runtime: it
/// waits for the server to answer PING).
async fn own_redis(args: &'static [&'static str]) -> RedisServer {
    tokio::task::spawn_blocking(move || RedisServer::start(args))
        .await
        .expect("start redis-server")
}

/// Runs a blocking step (kill, restart) on `server` off the async runtime.
async fn blocking(mut server: RedisServer, step: fn(&mut RedisServer)) -> RedisServer {
    tokio::task::spawn_blocking(move || {
        step(&mut server);
        server
    })
    .await
    .expect("the redis-server step ends without panicking")
}

/// `n` in `<queue>:<n>`.
fn key_number(queue: &str, key: &str) -> Option<u64> {
    let n = key.strip_prefix(queue)?.strip_prefix(':')?;
    if n.is_empty() || !n.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    n.parse().ok()
}

/// Pops `queue` on `server` until it is empty: (key, value) in the order they came.
async fn drain(server: &TestServer, queue: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    while let Some(message) = server.pop(queue).await {
        out.push(message);
    }
    out
}

// ---------------------------------------------------------------------------
// Interoperability with the original RestMQ's keyspace.
// ---------------------------------------------------------------------------

/// When a message written the original's way expires.
enum Expire {
    Seconds(u64),
    Millis(u64),
}

/// Publishes `value` to `queue` with the original RestMQ's exact commands:
/// INCR q:UUID -> n; SET q:n value; (EXPIRE q:n ttl); on the first message
/// SADD QUEUESET q and SET queuestat::q 1; LPUSH q:queue q:n. Returns the key.
async fn legacy_publish(
    conn: &mut MultiplexedConnection,
    queue: &str,
    value: &str,
    expire: Option<Expire>,
) -> String {
    let n: u64 = redis::cmd("INCR")
        .arg(format!("{queue}:UUID"))
        .query_async(conn)
        .await
        .expect("INCR q:UUID");
    let key = format!("{queue}:{n}");
    redis::cmd("SET")
        .arg(&key)
        .arg(value)
        .query_async::<()>(conn)
        .await
        .expect("SET q:n");
    match expire {
        None => {}
        Some(Expire::Seconds(ttl)) => {
            redis::cmd("EXPIRE")
                .arg(&key)
                .arg(ttl)
                .query_async::<()>(conn)
                .await
                .expect("EXPIRE q:n");
        }
        Some(Expire::Millis(ttl)) => {
            redis::cmd("PEXPIRE")
                .arg(&key)
                .arg(ttl)
                .query_async::<()>(conn)
                .await
                .expect("PEXPIRE q:n");
        }
    }
    if n == 1 {
        redis::cmd("SADD")
            .arg("QUEUESET")
            .arg(queue)
            .query_async::<()>(conn)
            .await
            .expect("SADD QUEUESET");
        redis::cmd("SET")
            .arg(format!("queuestat::{queue}"))
            .arg(1)
            .query_async::<()>(conn)
            .await
            .expect("SET queuestat::q");
    }
    redis::cmd("LPUSH")
        .arg(format!("{queue}:queue"))
        .arg(&key)
        .query_async::<()>(conn)
        .await
        .expect("LPUSH q:queue");
    key
}

/// Pops `queue` the original's way: RPOP q:queue, then GET the key.
async fn legacy_pop(
    conn: &mut MultiplexedConnection,
    queue: &str,
) -> Option<(String, Option<String>)> {
    let key: Option<String> = redis::cmd("RPOP")
        .arg(format!("{queue}:queue"))
        .query_async(conn)
        .await
        .expect("RPOP q:queue");
    let key = key?;
    let value: Option<String> = redis::cmd("GET")
        .arg(&key)
        .query_async(conn)
        .await
        .expect("GET q:n");
    Some((key, value))
}

async fn get_string(conn: &mut MultiplexedConnection, key: &str) -> Option<String> {
    redis::cmd("GET")
        .arg(key)
        .query_async(conn)
        .await
        .unwrap_or_else(|e| panic!("GET {key}: {e}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restmq_serves_what_the_original_wrote() {
    if !redis_available("restmq_serves_what_the_original_wrote") {
        return;
    }
    let url = fresh_database().await;
    let mut conn = redis_servers::direct(&url).await;

    assert_eq!(
        legacy_publish(&mut conn, "old", "first", None).await,
        "old:1"
    );
    let expired = legacy_publish(&mut conn, "old", "gone", Some(Expire::Millis(1))).await;
    assert_eq!(expired, "old:2");
    eventually("the expired message's value to be gone", || {
        let mut conn = conn.clone();
        let key = expired.clone();
        async move {
            let exists: u64 = redis::cmd("EXISTS")
                .arg(&key)
                .query_async(&mut conn)
                .await
                .expect("EXISTS");
            (exists == 0).then_some(())
        }
    })
    .await;
    assert_eq!(
        legacy_publish(&mut conn, "old", "third", None).await,
        "old:3"
    );
    let lasting = legacy_publish(&mut conn, "old", "fourth", Some(Expire::Seconds(3600))).await;
    assert_eq!(lasting, "old:4");
    // The original's policy values: 1 broadcast, 2 roundrobin.
    redis::cmd("SET")
        .arg("old:queuepolicy")
        .arg(2)
        .query_async::<()>(&mut conn)
        .await
        .expect("SET q:queuepolicy");

    let server = restmq_on(vec![url.clone()]).await;

    // The queue is listed, with its length, status and policy.
    let all = server.get("/stats/").await;
    assert_eq!(all.status, 200, "{}", all.body);
    let listed = &all.json()["queues"]["old"];
    let len = listed["len"].as_u64().expect("a length in /stats/");
    // The original counted list entries (LLEN), the expired one included until
    // a pop drops it; not counting it is right too.
    assert!(matches!(len, 3 | 4), "/stats/ len {len}: {}", all.body);
    assert_eq!(listed["status"], 1, "{}", all.body);
    assert_eq!(listed["policy"], 2, "{}", all.body);
    let one = server.get("/stats/old").await.json();
    assert_eq!(one["queue"], "old");
    assert_eq!(one["len"], len, "/stats/old and /stats/ disagree");
    let control = server.get("/control/old").await;
    assert_eq!(control.status, 200, "{}", control.body);
    assert_eq!(control.json()["status"]["status"], 1, "{}", control.body);
    assert_eq!(server.get("/p/old").await.json()["value"], "roundrobin");

    // FIFO, under the original's keys, the expired message skipped.
    let head = server.get("/q/old").await;
    assert_eq!(head.status, 200, "{}", head.body);
    assert_eq!(
        head.json(),
        serde_json::json!({"key": "old:1", "value": "first", "count": 0})
    );
    assert_eq!(
        server.pop("old").await,
        Some(("old:3".into(), "third".into()))
    );
    assert_eq!(server.get("/stats/old").await.json()["len"], 1);
    assert_eq!(
        server.pop("old").await,
        Some(("old:4".into(), "fourth".into()))
    );
    assert_eq!(server.pop("old").await, None);
    assert_eq!(server.get("/stats/old").await.json()["len"], 0);

    // restmq goes on with the original's counter, and its keys and values are
    // where the original looks for them.
    assert_eq!(server.publish("old", "fifth").await, "old:5");
    assert_eq!(
        get_string(&mut conn, "old:5").await.as_deref(),
        Some("fifth")
    );
    let waiting: Vec<String> = redis::cmd("LRANGE")
        .arg("old:queue")
        .arg(0)
        .arg(-1)
        .query_async(&mut conn)
        .await
        .expect("LRANGE q:queue");
    assert_eq!(waiting, ["old:5"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn values_another_client_wrote_are_served_as_text_whatever_their_bytes() {
    if !redis_available("values_another_client_wrote_are_served_as_text_whatever_their_bytes") {
        return;
    }
    let url = fresh_database().await;
    let mut conn = redis_servers::direct(&url).await;
    let values: [&[u8]; 3] = ["café ✓".as_bytes(), b"bad \xff\xfe end", b""];
    for (n, value) in values.iter().enumerate() {
        redis::cmd("SET")
            .arg(format!("raw:{}", n + 1))
            .arg(*value)
            .query_async::<()>(&mut conn)
            .await
            .expect("SET q:n");
        redis::cmd("LPUSH")
            .arg("raw:queue")
            .arg(format!("raw:{}", n + 1))
            .query_async::<()>(&mut conn)
            .await
            .expect("LPUSH q:queue");
    }
    redis::cmd("SET")
        .arg("raw:UUID")
        .arg(values.len())
        .query_async::<()>(&mut conn)
        .await
        .expect("SET q:UUID");

    let server = restmq_on(vec![url]).await;
    // UTF-8 comes through as it is; other bytes become replacement characters.
    assert_eq!(
        server.pop("raw").await,
        Some(("raw:1".into(), "café ✓".into()))
    );
    assert_eq!(
        server.pop("raw").await,
        Some(("raw:2".into(), "bad \u{fffd}\u{fffd} end".into()))
    );
    assert_eq!(
        server.pop("raw").await,
        Some(("raw:3".into(), String::new()))
    );
    assert_eq!(server.pop("raw").await, None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn popped_messages_leave_nothing_behind_in_redis() {
    if !redis_available("popped_messages_leave_nothing_behind_in_redis") {
        return;
    }
    let url = fresh_database().await;
    let mut conn = redis_servers::direct(&url).await;
    let server = restmq_on(vec![url]).await;

    // Plain messages only: the queue has neither the expiry nor the delivery
    // hash, nor any other of restmq's keys. A peek counts its reads in a
    // refcount, which the pop deletes with the message.
    server.publish("tidy", "plain").await;
    let peeked = server
        .post_raw(
            "/queue",
            "application/json",
            r#"{"cmd":"get","queue":"tidy"}"#,
        )
        .await;
    assert_eq!(peeked.json()["count"], 1, "{}", peeked.body);
    assert!(
        keys_starting(&mut conn, "tidy:")
            .await
            .contains(&"tidy:1:refcount".to_owned())
    );
    assert_eq!(
        server.pop("tidy").await,
        Some(("tidy:1".into(), "plain".into()))
    );
    assert_eq!(keys_starting(&mut conn, "tidy:").await, ["tidy:UUID"]);
    // With an expiry, and one received and given back, so both hashes exist
    // when the pops come.
    for value in ["kept 1", "kept 2", "kept 3"] {
        let published = server
            .post_form("/q/tidy", &[("value", value), ("ttl", "3600")])
            .await;
        assert_eq!(published.status, 200, "{}", published.body);
    }
    server.publish("tidy", "plain again").await;
    let received = server.get("/q/tidy?visibility=30").await;
    assert_eq!(received.status, 200, "{}", received.body);
    let receipt = received.json()["receipt"]
        .as_str()
        .expect("a receipt")
        .to_owned();
    let released = server.post_form("/nack", &[("receipt", &receipt)]).await;
    assert_eq!(released.status, 200, "{}", released.body);
    let before = keys_starting(&mut conn, "tidy:").await;
    for hash in ["tidy:expires", "tidy:deliveries"] {
        assert!(before.iter().any(|k| k == hash), "no {hash} in {before:?}");
    }

    let mut popped = Vec::new();
    while let Some((_, value)) = server.pop("tidy").await {
        popped.push(value);
    }
    assert_eq!(popped, ["kept 1", "kept 2", "kept 3", "plain again"]);
    // Only the counter is left: no message, refcount, expiry or delivery count.
    assert_eq!(keys_starting(&mut conn, "tidy:").await, ["tidy:UUID"]);
}

/// A message the original wrote with a ttl (an EXPIRE on its key) keeps its
/// expiry through a pop: popped for a client that went away, it is given back
/// with it, and still expires when its ttl runs out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expiry_the_original_set_survives_a_pop_given_back() {
    if !redis_available("an_expiry_the_original_set_survives_a_pop_given_back") {
        return;
    }
    let url = fresh_database().await;
    let mut conn = redis_servers::direct(&url).await;
    legacy_publish(&mut conn, "lease", "an hour", Some(Expire::Seconds(3600))).await;
    legacy_publish(&mut conn, "lease", "for ever", None).await;
    let clock = Arc::new(ManualClock::new(1_800_000_000_000));
    let store = RedisStore::open(
        &RedisTarget::Ring(vec![url]),
        &RedisOptions::default(),
        clock.clone(),
    )
    .expect("a Redis store");
    let values = |messages: &[Message]| -> Vec<String> {
        messages.iter().map(|m| m.value.clone()).collect()
    };

    let popped = store.pop_many("lease", 10).await.expect("a pop");
    assert_eq!(values(&popped), ["an hour", "for ever"]);
    // An hour from restmq's clock, less what passed since the EXPIRE.
    let now = clock.now();
    let expires = popped[0].expires_at;
    assert!(
        (now + 3_500_000..=now + 3_600_000).contains(&expires),
        "expires at {expires}, now {now}"
    );
    assert_eq!(popped[1].expires_at, 0, "no ttl, no expiry");

    store.restore("lease", popped).await.expect("given back");
    clock.advance(expires - now);
    let left = store.pop_many("lease", 10).await.expect("a pop");
    assert_eq!(values(&left), ["for ever"], "the hour has passed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_original_reads_what_restmq_wrote() {
    if !redis_available("the_original_reads_what_restmq_wrote") {
        return;
    }
    let url = fresh_database().await;
    let server = restmq_on(vec![url.clone()]).await;
    assert_eq!(server.publish("new", "one").await, "new:1");
    let answer = server
        .post_form("/q/new", &[("value", "two"), ("ttl", "3600")])
        .await;
    assert_eq!(answer.status, 200, "{}", answer.body);
    assert_eq!(answer.body, "new:2\r\n");
    assert_eq!(server.publish("new", "three").await, "new:3");

    let mut conn = redis_servers::direct(&url).await;
    let member: u64 = redis::cmd("SISMEMBER")
        .arg("QUEUESET")
        .arg("new")
        .query_async(&mut conn)
        .await
        .expect("SISMEMBER QUEUESET");
    assert_eq!(member, 1, "QUEUESET lists the queue");
    assert_eq!(
        get_string(&mut conn, "queuestat::new").await.as_deref(),
        Some("1")
    );
    assert_eq!(
        get_string(&mut conn, "new:UUID").await.as_deref(),
        Some("3")
    );
    let ttl: i64 = redis::cmd("TTL")
        .arg("new:2")
        .query_async(&mut conn)
        .await
        .expect("TTL");
    assert!((1..=3600).contains(&ttl), "the ttl'd message has TTL {ttl}");
    let ttl: i64 = redis::cmd("TTL")
        .arg("new:1")
        .query_async(&mut conn)
        .await
        .expect("TTL");
    assert_eq!(ttl, -1, "a message without ttl does not expire");

    for (key, value) in [("new:1", "one"), ("new:2", "two"), ("new:3", "three")] {
        assert_eq!(
            legacy_pop(&mut conn, "new").await,
            Some((key.to_owned(), Some(value.to_owned())))
        );
    }
    assert_eq!(legacy_pop(&mut conn, "new").await, None);
    // What the original popped is gone for restmq too.
    assert_eq!(server.pop("new").await, None);

    // Policy and status changed through HTTP hold the original's values.
    for (policy, code) in [("roundrobin", "2"), ("broadcast", "1")] {
        let answer = server.post_form("/p/new", &[("policy", policy)]).await;
        assert_eq!(answer.status, 200, "{}", answer.body);
        assert_eq!(
            get_string(&mut conn, "new:queuepolicy").await.as_deref(),
            Some(code),
            "policy {policy}"
        );
    }
    for (status, code) in [("stop", "0"), ("start", "1")] {
        let answer = server
            .post_form("/control/new", &[("status", status)])
            .await;
        assert_eq!(answer.status, 200, "{}", answer.body);
        assert_eq!(
            get_string(&mut conn, "queuestat::new").await.as_deref(),
            Some(code),
            "status {status}"
        );
    }
}

// ---------------------------------------------------------------------------
// Two restmq servers on one Redis database.
// ---------------------------------------------------------------------------

/// Waits until `servers` restmq servers listen to the announcements of the
/// database at `url` (`restmq:<db>:changed` and `restmq:<db>:streamed`).
async fn wait_subscribed(url: &str, servers: i64) {
    let db = url.rsplit('/').next().expect("a database in the URL");
    let channels = [
        format!("restmq:{db}:changed"),
        format!("restmq:{db}:streamed"),
    ];
    let conn = redis_servers::direct(url).await;
    eventually("every server listening to the announcements", || {
        let mut conn = conn.clone();
        let channels = channels.clone();
        async move {
            let counts: HashMap<String, i64> = redis::cmd("PUBSUB")
                .arg("NUMSUB")
                .arg(&channels)
                .query_async(&mut conn)
                .await
                .expect("PUBSUB NUMSUB");
            channels
                .iter()
                .all(|c| counts.get(c) == Some(&servers))
                .then_some(())
        }
    })
    .await;
}

/// Two restmq servers on one fresh Redis database, each listening to the
/// other's announcements; `None` when redis-server is not installed.
async fn two_servers(test: &str) -> Option<(TestServer, TestServer)> {
    if !redis_available(test) {
        return None;
    }
    let url = fresh_database().await;
    let a = restmq_on(vec![url.clone()]).await;
    let b = restmq_on(vec![url.clone()]).await;
    wait_subscribed(&url, 2).await;
    Some((a, b))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consumer_on_one_server_receives_what_another_publishes() {
    let Some((a, b)) =
        two_servers("a_consumer_on_one_server_receives_what_another_publishes").await
    else {
        return;
    };
    let mut comet = Streaming::comet(&b, "shared").await;
    b.wait_consumers("shared", 1).await;
    // Consumers are counted per server.
    assert_eq!(a.get("/stats/shared").await.json()["consumers"], 0);
    for i in 1..=20 {
        assert_eq!(
            a.publish("shared", &format!("m{i}")).await,
            format!("shared:{i}")
        );
    }
    for i in 1..=20 {
        assert_eq!(
            comet.message().await,
            (format!("shared:{i}"), format!("m{i}"))
        );
    }
    assert_eq!(a.get("/stats/shared").await.json()["len"], 0);
    assert_eq!(b.get("/stats/shared").await.json()["len"], 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn policy_and_pause_set_on_one_server_apply_on_the_other() {
    let Some((a, b)) = two_servers("policy_and_pause_set_on_one_server_apply_on_the_other").await
    else {
        return;
    };
    let answer = a.post_form("/p/held", &[("policy", "roundrobin")]).await;
    assert_eq!(answer.status, 200, "{}", answer.body);
    assert_eq!(b.get("/p/held").await.json()["value"], "roundrobin");
    let answer = b.post_form("/p/held", &[("policy", "broadcast")]).await;
    assert_eq!(answer.status, 200, "{}", answer.body);
    assert_eq!(a.get("/p/held").await.json()["value"], "broadcast");

    let mut comet = Streaming::comet(&b, "held").await;
    b.wait_consumers("held", 1).await;
    assert_eq!(a.publish("held", "before").await, "held:1");
    assert_eq!(comet.message().await, ("held:1".into(), "before".into()));

    // Paused on A: B streams nothing, whoever publishes.
    let answer = a.post_form("/control/held", &[("status", "stop")]).await;
    assert_eq!(answer.status, 200, "{}", answer.body);
    assert_eq!(b.get("/control/held").await.json()["status"]["status"], 0);
    for i in 2..=6 {
        assert_eq!(
            a.publish("held", &format!("m{i}")).await,
            format!("held:{i}")
        );
    }
    for server in [&a, &b] {
        assert_eq!(server.get("/stats/held").await.json()["len"], 5);
    }
    for i in 7..=11 {
        assert_eq!(
            b.publish("held", &format!("m{i}")).await,
            format!("held:{i}")
        );
    }
    for server in [&a, &b] {
        assert_eq!(server.get("/stats/held").await.json()["len"], 10);
    }

    // Resumed on A: B's consumer gets everything, in order.
    let answer = a.post_form("/control/held", &[("status", "start")]).await;
    assert_eq!(answer.status, 200, "{}", answer.body);
    assert_eq!(b.get("/control/held").await.json()["status"]["status"], 1);
    for i in 2..=11 {
        assert_eq!(
            comet.message().await,
            (format!("held:{i}"), format!("m{i}"))
        );
    }
    for server in [&a, &b] {
        assert_eq!(server.get("/stats/held").await.json()["len"], 0);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broadcast_reaches_the_consumers_of_both_servers() {
    let Some((a, b)) = two_servers("broadcast_reaches_the_consumers_of_both_servers").await else {
        return;
    };
    let answer = a.post_form("/p/fan", &[("policy", "broadcast")]).await;
    assert_eq!(answer.status, 200, "{}", answer.body);
    let mut on_a = Streaming::comet(&a, "fan").await;
    let mut on_b = Streaming::comet(&b, "fan").await;
    a.wait_consumers("fan", 1).await;
    b.wait_consumers("fan", 1).await;

    let mut published = Vec::new();
    for i in 0..20 {
        let server = if i % 2 == 0 { &a } else { &b };
        let value = format!("m{i}");
        published.push((server.publish("fan", &value).await, value));
    }
    published.sort();
    for (name, stream) in [("A", &mut on_a), ("B", &mut on_b)] {
        let mut got = Vec::new();
        for _ in 0..published.len() {
            got.push(stream.message().await);
        }
        got.sort();
        assert_eq!(got, published, "the consumer on {name}");
    }
    for server in [&a, &b] {
        assert_eq!(server.get("/stats/fan").await.json()["len"], 0);
    }
}

/// Reads a COMET stream to its end, passing each message on as it comes.
async fn read_to_end(
    mut stream: Streaming,
    seen: mpsc::UnboundedSender<(String, String)>,
) -> Vec<(String, String)> {
    let mut got = Vec::new();
    while let Some(line) = stream.line().await {
        let json: serde_json::Value = serde_json::from_str(&line)
            .unwrap_or_else(|e| panic!("not a JSON line ({e}): {line:?}"));
        let message = (
            json["key"].as_str().expect("key").to_owned(),
            json["value"].as_str().expect("value").to_owned(),
        );
        let _ = seen.send(message.clone());
        got.push(message);
    }
    got
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn roundrobin_delivers_each_message_once_across_servers() {
    let Some((a, b)) = two_servers("roundrobin_delivers_each_message_once_across_servers").await
    else {
        return;
    };
    let answer = a.post_form("/p/rr", &[("policy", "roundrobin")]).await;
    assert_eq!(answer.status, 200, "{}", answer.body);
    assert_eq!(b.get("/p/rr").await.json()["value"], "roundrobin");

    let (seen, mut arrivals) = mpsc::unbounded_channel();
    let mut readers = Vec::new();
    for server in [&a, &a, &b, &b] {
        let stream = Streaming::comet(server, "rr").await;
        readers.push(tokio::spawn(read_to_end(stream, seen.clone())));
    }
    drop(seen);
    a.wait_consumers("rr", 2).await;
    b.wait_consumers("rr", 2).await;

    let mut published = Vec::new();
    for i in 0..40 {
        let server = if i % 2 == 0 { &a } else { &b };
        let value = format!("m{i}");
        published.push((server.publish("rr", &value).await, value));
    }
    for received in 0..published.len() {
        tokio::time::timeout(DEADLINE, arrivals.recv())
            .await
            .unwrap_or_else(|_| panic!("only {received} of 40 messages streamed"))
            .expect("the readers run");
    }
    // Ending the streams shows whatever else they would have sent.
    a.stop().await;
    b.stop().await;
    let mut all = Vec::new();
    for (at, reader) in readers.into_iter().enumerate() {
        let got = reader.await.expect("the reader ends without panicking");
        let numbers: Vec<u64> = got
            .iter()
            .map(|(key, _)| key_number("rr", key).expect("a key rr:<n>"))
            .collect();
        assert!(
            numbers.windows(2).all(|w| w[0] < w[1]),
            "consumer {at} got keys out of order: {numbers:?}"
        );
        all.extend(got);
    }
    all.sort();
    published.sort();
    assert_eq!(all, published, "each message streamed exactly once");
}

// ---------------------------------------------------------------------------
// Publishing under load through failures.
// ---------------------------------------------------------------------------

/// Tasks publishing at once.
const PUBLISHERS: usize = 4;

/// What the publishers did.
#[derive(Debug, Default)]
struct Published {
    /// `(queue, key, value)` of every acknowledged publish.
    acked: Vec<(String, String, String)>,
    /// `value -> queue` of everything sent, acknowledged or not.
    sent: HashMap<String, String>,
    /// Answers that were neither 200 nor a 503 with a JSON error.
    unexpected: Vec<String>,
}

/// Publishers sending unique values to `queues` until stopped; a publish not
/// acknowledged (refused, or no answer) is retried with a new value, since the
/// first may or may not have been stored.
struct Load {
    base: Arc<RwLock<String>>,
    stop: Arc<AtomicBool>,
    acked: Arc<AtomicUsize>,
    failed: Arc<AtomicUsize>,
    tasks: Vec<tokio::task::JoinHandle<Published>>,
}

impl Load {
    fn start(base: String, queues: &[String]) -> Load {
        let load = Load {
            base: Arc::new(RwLock::new(base)),
            stop: Arc::new(AtomicBool::new(false)),
            acked: Arc::new(AtomicUsize::new(0)),
            failed: Arc::new(AtomicUsize::new(0)),
            tasks: Vec::new(),
        };
        let queues: Arc<Vec<String>> = Arc::new(queues.to_vec());
        let tasks = (0..PUBLISHERS)
            .map(|task| {
                tokio::spawn(publish_until_stopped(
                    task,
                    queues.clone(),
                    load.base.clone(),
                    load.stop.clone(),
                    load.acked.clone(),
                    load.failed.clone(),
                ))
            })
            .collect();
        Load { tasks, ..load }
    }

    /// Sends what follows to the server at `base`.
    fn retarget(&self, base: String) {
        *self.base.write().expect("the base URL") = base;
    }

    fn acked(&self) -> usize {
        self.acked.load(Ordering::SeqCst)
    }

    fn failed(&self) -> usize {
        self.failed.load(Ordering::SeqCst)
    }

    async fn wait_acked(&self, count: usize) {
        eventually(&format!("{count} acknowledged publishes"), || async {
            (self.acked() >= count).then_some(())
        })
        .await;
    }

    /// Stops the publishers and gathers what they did.
    async fn finish(self) -> Published {
        self.stop.store(true, Ordering::SeqCst);
        let mut all = Published::default();
        for task in self.tasks {
            let done = task.await.expect("a publisher ends without panicking");
            all.acked.extend(done.acked);
            all.sent.extend(done.sent);
            all.unexpected.extend(done.unexpected);
        }
        all
    }
}

async fn publish_until_stopped(
    task: usize,
    queues: Arc<Vec<String>>,
    base: Arc<RwLock<String>>,
    stop: Arc<AtomicBool>,
    acked: Arc<AtomicUsize>,
    failed: Arc<AtomicUsize>,
) -> Published {
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .expect("an HTTP client");
    let mut out = Published::default();
    let mut seq = 0usize;
    'publishing: while !stop.load(Ordering::SeqCst) {
        // Every publisher goes round every queue, from a different start.
        let queue = &queues[(seq + task * queues.len() / PUBLISHERS) % queues.len()];
        let mut attempt = 0;
        loop {
            let value = format!("t{task}-s{seq}-a{attempt}");
            out.sent.insert(value.clone(), queue.clone());
            let url = format!("{}/q/{queue}", base.read().expect("the base URL"));
            let answer = match http.post(&url).form(&[("value", &value)]).send().await {
                Ok(response) => {
                    let status = response.status().as_u16();
                    response.text().await.map(|body| (status, body))
                }
                Err(e) => Err(e),
            };
            match answer {
                Ok((200, body)) => match body.strip_suffix("\r\n") {
                    Some(key) if key_number(queue, key).is_some() => {
                        out.acked.push((queue.clone(), key.to_owned(), value));
                        acked.fetch_add(1, Ordering::SeqCst);
                        break;
                    }
                    _ => out
                        .unexpected
                        .push(format!("publish {value} to {queue}: 200 {body:?}")),
                },
                Ok((503, body)) => {
                    let error = serde_json::from_str::<serde_json::Value>(body.trim_end())
                        .ok()
                        .and_then(|json| json["error"].as_str().map(str::to_owned));
                    if error.is_none() {
                        out.unexpected
                            .push(format!("publish {value} to {queue}: 503 {body:?}"));
                    }
                }
                Ok((status, body)) => out
                    .unexpected
                    .push(format!("publish {value} to {queue}: {status} {body:?}")),
                // The server restarting, or gone: try again.
                Err(_) => {}
            }
            failed.fetch_add(1, Ordering::SeqCst);
            if stop.load(Ordering::SeqCst) {
                break 'publishing;
            }
            attempt += 1;
            // Paces retries while the store or the server is away.
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        seq += 1;
    }
    out
}

/// Checks what was drained (per queue, in order) against what was published:
/// every acknowledged value exactly once, under its key; nothing never sent;
/// each queue's keys increasing (FIFO, and no key used twice).
fn check_drained(published: &Published, drained: &BTreeMap<String, Vec<(String, String)>>) {
    let mut found: HashMap<&str, (&str, &str)> = HashMap::new();
    for (queue, messages) in drained {
        let numbers: Vec<u64> = messages
            .iter()
            .map(|(key, _)| {
                key_number(queue, key).unwrap_or_else(|| panic!("{key:?} is not a key of {queue}"))
            })
            .collect();
        if let Some(at) = numbers.windows(2).position(|w| w[0] >= w[1]) {
            panic!(
                "{queue}: keys out of order or reused: {} then {}",
                numbers[at],
                numbers[at + 1]
            );
        }
        for (key, value) in messages {
            let sent_to = published
                .sent
                .get(value)
                .unwrap_or_else(|| panic!("{queue} held {value:?}, which was never sent"));
            assert_eq!(sent_to, queue, "{value:?} was sent to another queue");
            if let Some((other, _)) = found.insert(value, (queue, key)) {
                panic!("{value:?} came out twice: under {other} and {key}");
            }
        }
    }
    let mut keys = BTreeSet::new();
    for (queue, key, value) in &published.acked {
        assert!(keys.insert(key), "key {key} was acknowledged twice");
        match found.get(value.as_str()) {
            Some(&(q, k)) => assert_eq!(
                (q, k),
                (queue.as_str(), key.as_str()),
                "{value:?} came out under another key"
            ),
            None => panic!("{value:?}, acknowledged as {key}, was lost"),
        }
    }
}

/// Drains every queue of `queues` through `server`.
async fn drain_all(
    server: &TestServer,
    queues: &[String],
) -> BTreeMap<String, Vec<(String, String)>> {
    let mut drained = BTreeMap::new();
    for queue in queues {
        drained.insert(queue.clone(), drain(server, queue).await);
    }
    drained
}

async fn llen(conn: &mut MultiplexedConnection, queue: &str) -> u64 {
    redis::cmd("LLEN")
        .arg(format!("{queue}:queue"))
        .query_async(conn)
        .await
        .expect("LLEN q:queue")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ring_gains_a_server_under_load_without_losing_a_message() {
    if !redis_available("a_ring_gains_a_server_under_load_without_losing_a_message") {
        return;
    }
    let mut redis = Vec::new();
    for _ in 0..4 {
        redis.push(own_redis(&[]).await);
    }
    let urls: Vec<String> = redis.iter().map(|r| r.url(0)).collect();
    // About a quarter of the queues move to the fourth server.
    let queues: Vec<String> = (0..40).map(|i| format!("ring{i}")).collect();

    let three = restmq_on(urls[..3].to_vec()).await;
    let load = Load::start(three.url(""), &queues);
    load.wait_acked(400).await;
    three.stop().await;
    let four = restmq_on(urls.clone()).await;
    load.retarget(four.url(""));
    let at_restart = load.acked();
    load.wait_acked(at_restart + 400).await;
    let published = load.finish().await;
    assert!(
        published.unexpected.is_empty(),
        "unexpected answers: {:?}",
        published.unexpected
    );

    // Where the messages are: the migration was exercised when some queue has
    // messages both on a server of the first ring and on the fourth.
    let mut conns = Vec::new();
    for url in &urls {
        conns.push(redis_servers::direct(url).await);
    }
    // Queue -> the keys waiting on the servers of the first ring.
    let mut split: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for queue in &queues {
        let mut lens = Vec::new();
        for conn in &mut conns {
            lens.push(llen(conn, queue).await);
        }
        if lens[3] > 0 && lens[..3].iter().any(|&l| l > 0) {
            let mut old = BTreeSet::new();
            for conn in &mut conns[..3] {
                let keys: Vec<String> = redis::cmd("LRANGE")
                    .arg(format!("{queue}:queue"))
                    .arg(0)
                    .arg(-1)
                    .query_async(conn)
                    .await
                    .expect("LRANGE q:queue");
                old.extend(keys);
            }
            split.insert(queue.clone(), old);
        }
        let stats = four.get(&format!("/stats/{queue}")).await.json();
        assert_eq!(
            stats["len"],
            lens.iter().sum::<u64>(),
            "{queue}: /stats/ counts the messages of every server ({lens:?})"
        );
    }
    assert!(
        !split.is_empty(),
        "no queue had messages on two servers: the ring's growth was not exercised"
    );

    let drained = drain_all(&four, &queues).await;
    check_drained(&published, &drained);
    // A moved queue's messages on its old server came first, then its new ones.
    for (queue, old) in &split {
        let first: BTreeSet<String> = drained[queue]
            .iter()
            .take(old.len())
            .map(|(key, _)| key.clone())
            .collect();
        assert_eq!(&first, old, "{queue}: the old server's messages first");
        assert!(
            drained[queue].len() > old.len(),
            "{queue}: new messages too"
        );
    }
    for queue in &queues {
        for (at, conn) in conns.iter_mut().enumerate() {
            assert_eq!(llen(conn, queue).await, 0, "{queue} left on server {at}");
        }
    }
    four.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_publishes_survive_redis_being_killed_and_restarted() {
    if !redis_available("acknowledged_publishes_survive_redis_being_killed_and_restarted") {
        return;
    }
    let redis = own_redis(&["--appendonly", "yes", "--appendfsync", "always"]).await;
    let server = restmq_on(vec![redis.url(0)]).await;
    let queues: Vec<String> = (0..8).map(|i| format!("k{i}")).collect();
    let load = Load::start(server.url(""), &queues);
    load.wait_acked(200).await;
    assert_eq!(load.failed(), 0, "publishes failed while Redis was up");

    let redis = blocking(redis, RedisServer::kill).await;
    eventually("/readyz to answer 503 while Redis is down", || async {
        let answer = server.get("/readyz").await;
        (answer.status == 503).then_some(answer)
    })
    .await
    .json()["error"]
        .as_str()
        .expect("a 503 from /readyz says why");
    eventually("a publish refused while Redis is down", || async {
        (load.failed() > 0).then_some(())
    })
    .await;
    assert_eq!(server.get("/healthz").await.status, 200);

    let redis = blocking(redis, RedisServer::restart).await;
    eventually("/readyz to answer 200 once Redis is back", || async {
        (server.get("/readyz").await.status == 200).then_some(())
    })
    .await;
    let back = load.acked();
    load.wait_acked(back + 200).await;
    let published = load.finish().await;
    assert!(
        published.unexpected.is_empty(),
        "unexpected answers: {:?}",
        published.unexpected
    );

    let drained = drain_all(&server, &queues).await;
    check_drained(&published, &drained);
    // restmq did not crash: it still answers, and stops cleanly.
    assert_eq!(server.get("/healthz").await.status, 200);
    server.stop().await;
    drop(redis);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restmq_starts_while_redis_is_down_and_connects_when_it_comes_up() {
    if !redis_available("restmq_starts_while_redis_is_down_and_connects_when_it_comes_up") {
        return;
    }
    // A port where nothing listens, until the same server starts again there.
    let redis = blocking(own_redis(&[]).await, RedisServer::kill).await;
    let server = restmq_on(vec![redis.url(0)]).await;

    let answer = server.post_form("/q/x", &[("value", "early")]).await;
    assert_eq!(answer.status, 503, "{}", answer.body);
    assert!(
        answer.content_type.starts_with("application/json"),
        "{}",
        answer.content_type
    );
    assert!(answer.json()["error"].is_string(), "{}", answer.body);
    let ready = server.get("/readyz").await;
    assert_eq!(ready.status, 503, "{}", ready.body);
    assert!(ready.json()["error"].is_string(), "{}", ready.body);
    assert_eq!(server.get("/healthz").await.status, 200);

    let redis = blocking(redis, RedisServer::restart).await;
    let mut attempt = 0;
    let (key, value) = eventually("a publish accepted once Redis is up", || {
        attempt += 1;
        let value = format!("late{attempt}");
        let server = &server;
        async move {
            let answer = server.post_form("/q/x", &[("value", &value)]).await;
            match answer.status {
                200 => Some((answer.body.trim_end().to_owned(), value)),
                503 => None,
                other => panic!("publish: unexpected {other}: {}", answer.body),
            }
        }
    })
    .await;
    assert_eq!(server.get("/readyz").await.status, 200);
    let drained = drain(&server, "x").await;
    assert!(
        drained.contains(&(key.clone(), value.clone())),
        "{key} = {value:?} not in {drained:?}"
    );
    server.stop().await;
    drop(redis);
}

/// Two restmq servers on a Redis of their own (with an append-only file, so
/// its data survives a restart), each listening to the other's announcements.
async fn two_servers_on_own_redis() -> (RedisServer, TestServer, TestServer) {
    let redis = own_redis(&["--appendonly", "yes", "--appendfsync", "always"]).await;
    let url = redis.url(0);
    let a = restmq_on(vec![url.clone()]).await;
    let b = restmq_on(vec![url.clone()]).await;
    wait_subscribed(&url, 2).await;
    (redis, a, b)
}

/// Kills Redis, waits until both servers see it down, restarts it, waits until
/// both see it back.
async fn bounce(redis: RedisServer, servers: [&TestServer; 2]) -> RedisServer {
    let redis = blocking(redis, RedisServer::kill).await;
    for server in servers {
        eventually("/readyz to answer 503 while Redis is down", || async {
            (server.get("/readyz").await.status == 503).then_some(())
        })
        .await;
    }
    let redis = blocking(redis, RedisServer::restart).await;
    for server in servers {
        eventually("/readyz to answer 200 once Redis is back", || async {
            (server.get("/readyz").await.status == 200).then_some(())
        })
        .await;
    }
    redis
}

// After a Redis restart a dispatcher may meet a pooled connection that found its
// socket dead; what woke it must still be delivered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_go_on_across_servers_after_redis_restarts() {
    if !redis_available("streams_go_on_across_servers_after_redis_restarts") {
        return;
    }
    let (redis, a, b) = two_servers_on_own_redis().await;
    let mut comet = Streaming::comet(&b, "live").await;
    b.wait_consumers("live", 1).await;
    assert_eq!(a.publish("live", "before").await, "live:1");
    assert_eq!(comet.message().await, ("live:1".into(), "before".into()));

    let redis = bounce(redis, [&a, &b]).await;
    let key = eventually("a publish accepted after the restart", || async {
        let answer = a.post_form("/q/live", &[("value", "after")]).await;
        (answer.status == 200).then(|| answer.body.trim_end().to_owned())
    })
    .await;
    assert_eq!(comet.message().await, (key, "after".into()));
    drop(comet);
    a.stop().await;
    b.stop().await;
    drop(redis);
}

// Every pooled connection meets its dead socket after a Redis restart; once
// /readyz answers 200, no request may get 503 for it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn once_ready_again_after_a_redis_restart_requests_succeed() {
    if !redis_available("once_ready_again_after_a_redis_restart_requests_succeed") {
        return;
    }
    let (redis, a, b) = two_servers_on_own_redis().await;
    for server in [&a, &b] {
        server.publish("warm", "up").await;
    }
    let redis = bounce(redis, [&a, &b]).await;
    for server in [&a, &b] {
        let mut statuses = Vec::new();
        for _ in 0..30 {
            statuses.push(server.get("/stats/warm").await.status);
        }
        assert!(
            statuses.iter().all(|&s| s == 200),
            "answers after /readyz said ready: {statuses:?}"
        );
    }
    a.stop().await;
    b.stop().await;
    drop(redis);
}

/// The keys of the database starting with `prefix`, sorted.
async fn keys_starting(conn: &mut MultiplexedConnection, prefix: &str) -> Vec<String> {
    let mut keys: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{prefix}*"))
        .query_async(conn)
        .await
        .expect("KEYS");
    keys.sort();
    keys
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn purging_a_queue_of_a_million_messages_succeeds_and_deletes_them_all() {
    if !redis_available("purging_a_queue_of_a_million_messages_succeeds_and_deletes_them_all") {
        return;
    }
    // A server of its own: filling it holds it for a moment, which would
    // stall the other tests' databases on the shared one. Its slow log keeps
    // every command that held it for 200 ms or more.
    let redis = own_redis(&["--slowlog-log-slower-than", "200000"]).await;
    let url = redis.url(0);
    let mut conn = redis_servers::direct(&url).await;
    // The original's layout, written in slices of 100,000 per script.
    let fill = redis::Script::new(
        r"
for i = tonumber(ARGV[1]), tonumber(ARGV[2]) do
  redis.call('SET', 'big:' .. i, 'v' .. i)
  redis.call('LPUSH', 'big:queue', 'big:' .. i)
end
redis.call('SET', 'big:UUID', ARGV[2])
redis.call('SADD', 'QUEUESET', 'big')
",
    );
    const MESSAGES: u64 = 1_000_000;
    for start in (1..=MESSAGES).step_by(100_000) {
        fill.arg(start)
            .arg(start + 99_999)
            .invoke_async::<()>(&mut conn)
            .await
            .expect("fill the queue");
    }
    redis::cmd("SLOWLOG")
        .arg("RESET")
        .query_async::<()>(&mut conn)
        .await
        .expect("SLOWLOG RESET");
    let server = restmq_on(vec![url.clone()]).await;
    assert_eq!(
        server.get("/stats/big").await.json()["len"],
        MESSAGES,
        "the queue holds every message before the purge"
    );

    let answer = server.delete("/q/big").await;
    assert_eq!(
        (answer.status, answer.body.as_str()),
        (200, "{\"queue\":\"big\",\"status\":1}\r\n")
    );
    assert_eq!(server.get("/q/big").await.status, 204);
    // A purge works in slices of about a millisecond, 200 times below the
    // slow log's bar: one script deleting every key held Redis, and every
    // other client, for the whole purge.
    let slow: Vec<redis::Value> = redis::cmd("SLOWLOG")
        .arg("GET")
        .query_async(&mut conn)
        .await
        .expect("SLOWLOG GET");
    assert!(slow.is_empty(), "no command held Redis: {slow:?}");
    assert_eq!(
        keys_starting(&mut conn, "big:").await,
        ["big:UUID"],
        "every message key and every key set aside is gone"
    );
    assert_eq!(server.publish("big", "after").await, "big:1000001");
    drop(redis);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_purge_left_unfinished_is_finished_by_the_next_one() {
    if !redis_available("a_purge_left_unfinished_is_finished_by_the_next_one") {
        return;
    }
    let url = fresh_database().await;
    let mut conn = redis_servers::direct(&url).await;
    let server = restmq_on(vec![url.clone()]).await;
    for value in ["a", "b", "c"] {
        server.publish("q", value).await;
    }
    // What a purge that stopped after setting the queue aside leaves: the list
    // under a name of its own, listed as unfinished, its messages still there.
    redis::pipe()
        .cmd("RENAME")
        .arg("q:queue")
        .arg("q:purged-1-list")
        .ignore()
        .cmd("RPUSH")
        .arg("q:purging")
        .arg("q:purged-1-list")
        .ignore()
        .cmd("SET")
        .arg("q:purges")
        .arg(1)
        .ignore()
        .query_async::<()>(&mut conn)
        .await
        .expect("set a purge up as unfinished");
    assert_eq!(server.get("/q/q").await.status, 204, "the queue is empty");
    server.publish("q", "d").await;

    let answer = server.delete("/q/q").await;
    assert_eq!(answer.body, "{\"queue\":\"q\",\"status\":1}\r\n");
    assert_eq!(
        keys_starting(&mut conn, "q:").await,
        ["q:UUID"],
        "the earlier purge's messages are gone too"
    );
}
