//! Durability under SIGKILL: the real `restmq` binary is killed in the middle of a
//! publishing load, restarted on the same data directory, and drained. Every
//! acknowledged message must come back exactly once, under the key it was
//! acknowledged with, in the order each client sent it. And a message answered
//! to a GET before the kill must not come back after it; a message received
//! with a visibility timeout and not yet acknowledged must.

mod common;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::oneshot;
use tokio::task::JoinSet;
use tokio::time::Instant;

/// Concurrent publishing clients.
const CLIENTS: usize = 32;
/// Queues the clients publish to: client `c` publishes to `crash{c % QUEUES}`.
const QUEUES: usize = 4;
/// Acknowledged publishes to wait for before the kill.
const TARGET_ACKS: usize = 2000;
/// How long the load may take to reach [`TARGET_ACKS`] (debug builds, slow disks).
const LOAD_DEADLINE: Duration = Duration::from_secs(120);
/// How long a single request may take before the client gives up on it.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);
/// What the server logs once it serves.
const LISTENING: &str = "restmq listening on http://";

fn queue_of(client: usize) -> String {
    format!("crash{}", client % QUEUES)
}

/// A `restmq` process; killed (SIGKILL) and reaped when dropped, even on a panic.
struct Server {
    child: Child,
    /// `host:port` it listens on.
    addr: String,
    /// Every line it logged so far, for failure messages.
    log: Arc<Mutex<Vec<String>>>,
}

impl Server {
    /// Starts the binary on `data_dir` and a free port; returns once it listens.
    async fn start(data_dir: &Path) -> Server {
        let mut command = Command::new(env!("CARGO_BIN_EXE_restmq"));
        command
            .arg("--port")
            .arg("0")
            .arg("--data-dir")
            .arg(data_dir)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        // The test's settings only: none of the environment's RESTMQ_* (such as
        // RESTMQ_NO_FSYNC, which would make the test meaningless).
        for (name, _) in std::env::vars_os() {
            if name.to_string_lossy().starts_with("RESTMQ_") {
                command.env_remove(name);
            }
        }
        let log = Arc::new(Mutex::new(Vec::new()));
        // The guard exists before anything can fail, so the child is always killed.
        let mut server = Server {
            child: command.spawn().expect("start the restmq binary"),
            addr: String::new(),
            log: log.clone(),
        };
        let stderr = server.child.stderr.take().expect("stderr is piped");

        // Told the address by the log reader; dropped (so the wait ends) when the
        // log closes without it.
        let (tx, rx) = oneshot::channel::<String>();
        let tx = Arc::new(Mutex::new(Some(tx)));
        drain_lines(stderr, "stderr", log, tx);

        match tokio::time::timeout(common::DEADLINE, rx).await {
            Ok(Ok(addr)) => {
                assert!(
                    addr.starts_with("127.0.0.1:") && addr.len() > "127.0.0.1:".len(),
                    "unexpected listening address {addr:?}\n{}",
                    server.log_text()
                );
                server.addr = addr;
                server
            }
            Ok(Err(_)) => {
                let status = server.child.wait().expect("wait for the server");
                panic!(
                    "restmq exited ({status}) before listening:\n{}",
                    server.log_text()
                );
            }
            Err(_) => panic!(
                "restmq did not log {LISTENING:?} within {:?}:\n{}",
                common::DEADLINE,
                server.log_text()
            ),
        }
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    fn log_text(&self) -> String {
        self.log
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .join("\n")
    }

    /// SIGKILL, then waits until the process is gone (so its file lock is released).
    fn kill(&mut self) {
        self.child.kill().expect("SIGKILL the server");
        let status = self.child.wait().expect("reap the server");
        assert!(
            !status.success(),
            "the server exited on its own ({status}) instead of being killed:\n{}",
            self.log_text()
        );
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Reads `stream` to its end in a thread (so the pipe never fills and blocks the
/// server), keeping its lines in `log` and sending the listening address to `tx`.
fn drain_lines(
    stream: impl std::io::Read + Send + 'static,
    name: &'static str,
    log: Arc<Mutex<Vec<String>>>,
    tx: Arc<Mutex<Option<oneshot::Sender<String>>>>,
) {
    std::thread::spawn(move || {
        let mut reader = BufReader::new(stream);
        let mut raw = Vec::new();
        loop {
            raw.clear();
            match reader.read_until(b'\n', &mut raw) {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
            let line = String::from_utf8_lossy(&raw).trim_end().to_owned();
            if let Some(at) = line.find(LISTENING) {
                let rest = &line[at + LISTENING.len()..];
                let addr = rest.split('/').next().unwrap_or("").to_owned();
                let sender = tx.lock().unwrap_or_else(|e| e.into_inner()).take();
                if let Some(sender) = sender {
                    let _ = sender.send(addr);
                }
            }
            log.lock()
                .unwrap_or_else(|e| e.into_inner())
                .push(format!("[{name}] {line}"));
        }
    });
}

/// What happened to one publish.
#[derive(Debug, Clone)]
enum Outcome {
    /// 200 with this key: the message is durable.
    Acked(String),
    /// The server answered with another status: it refused the message.
    Refused(u16, String),
    /// No complete answer (the server died with the request in flight).
    Lost(String),
}

#[derive(Debug, Clone)]
struct Attempt {
    seq: u64,
    value: String,
    outcome: Outcome,
}

/// Publishes `c{client}-{seq}` for seq = 0, 1, ... one at a time until `stop`
/// is set or a publish is not acknowledged.
async fn publish_load(
    base: String,
    client: usize,
    stop: Arc<AtomicBool>,
    acked: Arc<AtomicUsize>,
) -> (usize, Vec<Attempt>) {
    let http = reqwest::Client::builder()
        .timeout(REQUEST_TIMEOUT)
        .build()
        .expect("an HTTP client");
    let url = format!("{base}/q/{}", queue_of(client));
    let mut attempts = Vec::new();
    let mut seq = 0u64;
    while !stop.load(Ordering::SeqCst) {
        let value = format!("c{client}-{seq}");
        let outcome = match http.post(&url).form(&[("value", &value)]).send().await {
            Err(e) => Outcome::Lost(e.to_string()),
            Ok(response) => {
                let status = response.status().as_u16();
                match response.text().await {
                    Err(e) => Outcome::Lost(format!("status {status}, body unreadable: {e}")),
                    Ok(body) if status == 200 => match body.strip_suffix("\r\n") {
                        Some(key) => Outcome::Acked(key.to_owned()),
                        None => Outcome::Refused(status, body),
                    },
                    Ok(body) => Outcome::Refused(status, body),
                }
            }
        };
        let go_on = matches!(outcome, Outcome::Acked(_));
        if go_on {
            acked.fetch_add(1, Ordering::SeqCst);
        }
        attempts.push(Attempt {
            seq,
            value,
            outcome,
        });
        if !go_on {
            break;
        }
        seq += 1;
    }
    (client, attempts)
}

/// Pops `queue` until 204: the (key, value) pairs in the order they came.
async fn drain(http: reqwest::Client, base: String, queue: String) -> (String, Vec<(u64, String)>) {
    let url = format!("{base}/q/{queue}");
    let mut out = Vec::new();
    loop {
        let response = http
            .get(&url)
            .send()
            .await
            .expect("the restarted server answers a pop");
        let status = response.status().as_u16();
        let body = response.text().await.expect("a readable pop answer");
        match status {
            204 => break,
            200 => {
                let json: serde_json::Value = serde_json::from_str(body.trim_end())
                    .unwrap_or_else(|e| panic!("pop {queue}: not JSON ({e}): {body:?}"));
                let key = json["key"]
                    .as_str()
                    .unwrap_or_else(|| panic!("pop {queue}: no key in {body:?}"));
                let value = json["value"]
                    .as_str()
                    .unwrap_or_else(|| panic!("pop {queue}: no value in {body:?}"));
                assert_eq!(json["count"], 0, "pop {queue}: {body:?}");
                let n = key_number(&queue, key)
                    .unwrap_or_else(|| panic!("pop {queue}: key {key:?} is not {queue}:<n>"));
                out.push((n, value.to_owned()));
            }
            other => panic!("pop {queue}: unexpected status {other}: {body:?}"),
        }
    }
    (queue, out)
}

/// `n` in `<queue>:<n>`.
fn key_number(queue: &str, key: &str) -> Option<u64> {
    let n = key.strip_prefix(queue)?.strip_prefix(':')?;
    if n.is_empty() || !n.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    n.parse().ok()
}

/// `(client, seq)` of a value `c{client}-{seq}`.
fn parse_value(value: &str) -> Option<(usize, u64)> {
    let (client, seq) = value.strip_prefix('c')?.split_once('-')?;
    Some((client.parse().ok()?, seq.parse().ok()?))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn acknowledged_publishes_survive_sigkill() {
    let dir = tempfile::tempdir().expect("a temporary data directory");
    let mut server = Server::start(dir.path()).await;
    let base = server.url("");

    // The load: CLIENTS clients publishing one message at a time, until killed.
    let stop = Arc::new(AtomicBool::new(false));
    let acked = Arc::new(AtomicUsize::new(0));
    let mut load = JoinSet::new();
    for client in 0..CLIENTS {
        load.spawn(publish_load(
            base.clone(),
            client,
            stop.clone(),
            acked.clone(),
        ));
    }

    let deadline = Instant::now() + LOAD_DEADLINE;
    loop {
        let done = acked.load(Ordering::SeqCst);
        if done >= TARGET_ACKS {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "only {done} of {TARGET_ACKS} publishes acknowledged within {LOAD_DEADLINE:?}"
        );
        // Polls again in a few milliseconds, unless a client stops (which it must not).
        if let Ok(Some(joined)) =
            tokio::time::timeout(Duration::from_millis(5), load.join_next()).await
        {
            let (client, attempts) = joined.expect("a client task");
            panic!(
                "client {client} stopped before the kill: {:?}\n{}",
                attempts.last(),
                server.log_text()
            );
        }
    }
    let clients_running = load.len();
    server.kill();
    let acked_at_kill = acked.load(Ordering::SeqCst);
    stop.store(true, Ordering::SeqCst);
    assert_eq!(
        clients_running, CLIENTS,
        "every client was running at the kill"
    );

    let mut attempts_of: BTreeMap<usize, Vec<Attempt>> = BTreeMap::new();
    while let Some(joined) = load.join_next().await {
        let (client, attempts) = joined.expect("a client task");
        attempts_of.insert(client, attempts);
    }
    assert_eq!(attempts_of.len(), CLIENTS);

    // What the clients know: acknowledged values (with their keys) and lost ones.
    // value -> (queue, n)
    let mut acknowledged: HashMap<String, (String, u64)> = HashMap::new();
    // value -> queue
    let mut lost: HashMap<String, String> = HashMap::new();
    let mut lost_example = None;
    for (&client, attempts) in &attempts_of {
        let queue = queue_of(client);
        for (i, attempt) in attempts.iter().enumerate() {
            assert_eq!(attempt.seq, i as u64, "client {client} numbers its values");
            match &attempt.outcome {
                Outcome::Acked(key) => {
                    let n = key_number(&queue, key).unwrap_or_else(|| {
                        panic!(
                            "client {client}: {} acknowledged with key {key:?}, not {queue}:<n>",
                            attempt.value
                        )
                    });
                    acknowledged.insert(attempt.value.clone(), (queue.clone(), n));
                }
                Outcome::Refused(status, body) => panic!(
                    "client {client}: publish of {} refused with {status}: {body:?}",
                    attempt.value
                ),
                Outcome::Lost(why) => {
                    lost_example.get_or_insert_with(|| why.clone());
                    assert_eq!(
                        i + 1,
                        attempts.len(),
                        "client {client} stops at its first unacknowledged publish"
                    );
                    lost.insert(attempt.value.clone(), queue.clone());
                }
            }
        }
    }
    assert_eq!(acknowledged.len(), acked.load(Ordering::SeqCst));
    assert!(
        acknowledged.len() >= TARGET_ACKS,
        "{} acknowledged",
        acknowledged.len()
    );
    // Keys handed out before the kill are unique per queue.
    let mut acked_keys = HashSet::new();
    for (value, (queue, n)) in &acknowledged {
        assert!(
            acked_keys.insert((queue.clone(), *n)),
            "key {queue}:{n} acknowledged twice (again for {value})"
        );
    }

    // Restart on the same data directory and drain every queue.
    let server = Server::start(dir.path()).await;
    let base = server.url("");
    let http = reqwest::Client::builder()
        .timeout(REQUEST_TIMEOUT)
        .build()
        .expect("an HTTP client");
    let mut drains = JoinSet::new();
    for q in 0..QUEUES {
        drains.spawn(drain(http.clone(), base.clone(), queue_of(q)));
    }
    let mut recovered: BTreeMap<String, Vec<(u64, String)>> = BTreeMap::new();
    while let Some(joined) = drains.join_next().await {
        let (queue, messages) = joined.expect("a drain task");
        recovered.insert(queue, messages);
    }

    let mut seen: HashMap<String, (String, u64)> = HashMap::new();
    let mut lost_recovered = 0usize;
    for (queue, messages) in &recovered {
        let mut last_n = 0u64;
        let mut last_seq: HashMap<usize, u64> = HashMap::new();
        for (n, value) in messages {
            assert!(
                *n > last_n,
                "{queue}: key {queue}:{n} came after {queue}:{last_n}"
            );
            last_n = *n;
            if let Some((first_queue, first_n)) = seen.insert(value.clone(), (queue.clone(), *n)) {
                panic!("{value} recovered twice: as {first_queue}:{first_n} and as {queue}:{n}");
            }
            let (client, seq) = parse_value(value)
                .unwrap_or_else(|| panic!("{queue}:{n} holds {value:?}, which nobody sent"));
            assert_eq!(
                queue_of(client),
                *queue,
                "{value} recovered from the wrong queue"
            );
            if let Some(previous) = last_seq.insert(client, seq) {
                assert!(
                    seq > previous,
                    "{queue}: client {client}'s c{client}-{seq} came after c{client}-{previous}"
                );
            }
            match (acknowledged.get(value), lost.get(value)) {
                (Some((_, acked_n)), _) => assert_eq!(
                    acked_n, n,
                    "{value} was acknowledged as {queue}:{acked_n} but recovered as {queue}:{n}"
                ),
                (None, Some(_)) => lost_recovered += 1,
                (None, None) => panic!("{queue}:{n} holds {value:?}, which nobody sent"),
            }
        }
    }
    let mut missing: Vec<(&String, &(String, u64))> = acknowledged
        .iter()
        .filter(|(value, _)| !seen.contains_key(*value))
        .collect();
    missing.sort_by_key(|(_, (queue, n))| (queue.clone(), *n));
    assert!(
        missing.is_empty(),
        "{} acknowledged messages lost after SIGKILL, e.g. {:?}",
        missing.len(),
        &missing[..missing.len().min(10)]
    );

    // The restarted server goes on publishing, after the highest number it kept.
    for (queue, messages) in &recovered {
        let highest = messages.last().map_or(0, |(n, _)| *n);
        let response = http
            .post(server.url(&format!("/q/{queue}")))
            .form(&[("value", "after the crash")])
            .send()
            .await
            .expect("the restarted server answers a publish");
        assert_eq!(response.status().as_u16(), 200, "publish to {queue}");
        let body = response.text().await.expect("a readable publish answer");
        let key = body
            .strip_suffix("\r\n")
            .unwrap_or_else(|| panic!("a key ends with CRLF: {body:?}"));
        let n = key_number(queue, key)
            .unwrap_or_else(|| panic!("publish to {queue}: key {key:?} is not {queue}:<n>"));
        assert!(
            n > highest,
            "{queue}: new key {key} reuses a number (highest recovered: {highest})"
        );
        let (popped_queue, popped) = drain(http.clone(), base.clone(), queue.clone()).await;
        assert_eq!(
            popped,
            vec![(n, "after the crash".to_owned())],
            "{popped_queue} after the restart"
        );
    }

    let recovered_total: usize = recovered.values().map(Vec::len).sum();
    eprintln!(
        "crash test: {} publishes acknowledged ({} counted when the kill returned), {} not \
         acknowledged (in flight at the kill, or refused connections just after it), {} \
         messages recovered ({} acknowledged + {} unacknowledged); per queue: {:?}; an \
         unacknowledged publish failed with: {:?}",
        acknowledged.len(),
        acked_at_kill,
        lost.len(),
        recovered_total,
        recovered_total - lost_recovered,
        lost_recovered,
        recovered
            .iter()
            .map(|(q, m)| (q.as_str(), m.len()))
            .collect::<Vec<_>>(),
        lost_example
    );
    drop(server);
}

/// Pops `queue` one message at a time until `stop` is set: the values answered
/// with 200, and whether a pop was left without an answer (in flight at the kill).
async fn pop_load(
    base: String,
    queue: String,
    stop: Arc<AtomicBool>,
    popped: Arc<AtomicUsize>,
) -> (Vec<String>, bool) {
    let http = reqwest::Client::builder()
        .timeout(REQUEST_TIMEOUT)
        .build()
        .expect("an HTTP client");
    let url = format!("{base}/q/{queue}");
    let mut values = Vec::new();
    while !stop.load(Ordering::SeqCst) {
        let Ok(response) = http.get(&url).send().await else {
            return (values, true);
        };
        let status = response.status().as_u16();
        let Ok(body) = response.text().await else {
            return (values, true);
        };
        match status {
            200 => {
                let json: serde_json::Value =
                    serde_json::from_str(body.trim_end()).expect("a JSON pop answer");
                values.push(json["value"].as_str().expect("a value").to_owned());
                popped.fetch_add(1, Ordering::SeqCst);
            }
            204 => panic!("{queue} ran empty before the kill"),
            other => panic!("pop {queue}: unexpected status {other}: {body:?}"),
        }
    }
    (values, false)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn popped_messages_stay_popped_after_sigkill() {
    const MESSAGES: usize = 3000;
    const CONSUMERS: usize = 16;
    let dir = tempfile::tempdir().expect("a temporary data directory");
    let mut server = Server::start(dir.path()).await;
    let base = server.url("");
    let queue = "popped".to_owned();
    let http = reqwest::Client::new();
    for i in 0..MESSAGES {
        let response = http
            .post(format!("{base}/q/{queue}"))
            .form(&[("value", format!("m{i}"))])
            .send()
            .await
            .expect("publish");
        assert_eq!(response.status(), 200);
    }

    let stop = Arc::new(AtomicBool::new(false));
    let popped = Arc::new(AtomicUsize::new(0));
    let mut consumers = JoinSet::new();
    for _ in 0..CONSUMERS {
        consumers.spawn(pop_load(
            base.clone(),
            queue.clone(),
            stop.clone(),
            popped.clone(),
        ));
    }
    common::eventually("a third of the messages to be popped", || {
        let popped = popped.clone();
        async move { (popped.load(Ordering::SeqCst) >= MESSAGES / 3).then_some(()) }
    })
    .await;
    server.kill();
    stop.store(true, Ordering::SeqCst);
    let mut before = Vec::new();
    let mut unanswered = 0;
    while let Some(joined) = consumers.join_next().await {
        let (values, in_flight) = joined.expect("a consumer task");
        before.extend(values);
        unanswered += usize::from(in_flight);
    }

    let server = Server::start(dir.path()).await;
    let (_, after) = drain(reqwest::Client::new(), server.url(""), queue.clone()).await;
    eprintln!(
        "popped before the kill: {}, unanswered pops: {unanswered}, recovered: {}",
        before.len(),
        after.len()
    );
    let before: HashSet<String> = before.into_iter().collect();
    let mut seen = HashSet::new();
    for (_, value) in &after {
        assert!(
            !before.contains(value),
            "{value} was popped before the kill, and came back"
        );
        assert!(seen.insert(value.clone()), "{value} recovered twice");
    }
    // Every message is either popped before the kill or still there, except those
    // taken by pops whose answers the kill cut off (legacy GET is pop-and-forget).
    let missing = MESSAGES - before.len() - after.len();
    assert!(
        missing <= unanswered,
        "{missing} messages vanished, with only {unanswered} pops unanswered"
    );
    let mut last = 0;
    for (n, _) in &after {
        assert!(*n > last, "recovered out of order");
        last = *n;
    }
}

/// What an acknowledging consumer saw: values whose ack was answered 200, and
/// values whose ack the kill cut off (acknowledged or not, nobody knows).
#[derive(Default)]
struct Settled {
    acked: Vec<String>,
    unanswered: Vec<String>,
}

/// A received message: its value and its receipt.
fn received(body: &str) -> Vec<(String, String)> {
    let json: serde_json::Value = serde_json::from_str(body.trim_end())
        .unwrap_or_else(|e| panic!("not JSON ({e}): {body:?}"));
    json.as_array()
        .unwrap_or_else(|| panic!("not an array: {body:?}"))
        .iter()
        .map(|m| {
            let value = m["value"].as_str().expect("a value").to_owned();
            let receipt = m["receipt"].as_str().expect("a receipt").to_owned();
            (value, receipt)
        })
        .collect()
}

/// Receives and acknowledges `queue` in batches until `stop` is set or the
/// server goes away. A stale receipt (its time ran out while we worked) is not
/// an acknowledgement: that message will come again.
async fn ack_load(
    base: String,
    queue: String,
    stop: Arc<AtomicBool>,
    acked: Arc<AtomicUsize>,
) -> Settled {
    let http = reqwest::Client::builder()
        .timeout(REQUEST_TIMEOUT)
        .build()
        .expect("an HTTP client");
    let mut settled = Settled::default();
    while !stop.load(Ordering::SeqCst) {
        let Ok(response) = http
            .get(format!("{base}/q/{queue}?visibility=5&max=10"))
            .send()
            .await
        else {
            break;
        };
        let Ok(body) = response.text().await else {
            break;
        };
        let batch = received(&body);
        if batch.is_empty() {
            continue;
        }
        let form: Vec<(&str, &str)> = batch.iter().map(|(_, r)| ("receipt", r.as_str())).collect();
        let values = batch.iter().map(|(v, _)| v.clone());
        let answer = match http.post(format!("{base}/ack")).form(&form).send().await {
            Ok(response) => match response.status().as_u16() {
                200 => Some(true),
                409 => Some(false),
                other => panic!("ack: unexpected status {other}"),
            },
            Err(_) => None,
        };
        match answer {
            Some(true) => {
                acked.fetch_add(batch.len(), Ordering::SeqCst);
                settled.acked.extend(values);
            }
            Some(false) => {}
            None => {
                settled.unanswered.extend(values);
                break;
            }
        }
    }
    settled
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn inflight_messages_come_back_after_sigkill() {
    const MESSAGES: usize = 3000;
    const CONSUMERS: usize = 8;
    /// Received before the load and never acknowledged: in flight at the kill.
    const HELD: usize = 50;
    let dir = tempfile::tempdir().expect("a temporary data directory");
    let mut server = Server::start(dir.path()).await;
    let base = server.url("");
    let queue = "inflight".to_owned();
    let http = reqwest::Client::new();
    let values: Vec<String> = (0..MESSAGES).map(|i| format!("m{i}")).collect();
    for chunk in values.chunks(500) {
        let response = http
            .post(format!("{base}/q/{queue}"))
            .header("content-type", "application/x-ndjson")
            .body(chunk.join("\n"))
            .send()
            .await
            .expect("publish a batch");
        assert_eq!(response.status(), 200);
    }
    let held = http
        .get(format!("{base}/q/{queue}?visibility=5&max={HELD}"))
        .send()
        .await
        .expect("receive")
        .text()
        .await
        .expect("a receive answer");
    let held: Vec<String> = received(&held).into_iter().map(|(v, _)| v).collect();
    assert_eq!(held.len(), HELD);

    let stop = Arc::new(AtomicBool::new(false));
    let acked = Arc::new(AtomicUsize::new(0));
    let mut consumers = JoinSet::new();
    for _ in 0..CONSUMERS {
        consumers.spawn(ack_load(
            base.clone(),
            queue.clone(),
            stop.clone(),
            acked.clone(),
        ));
    }
    common::eventually("a third of the messages to be acknowledged", || {
        let acked = acked.clone();
        async move { (acked.load(Ordering::SeqCst) >= MESSAGES / 3).then_some(()) }
    })
    .await;
    server.kill();
    stop.store(true, Ordering::SeqCst);
    let mut before = Settled::default();
    while let Some(joined) = consumers.join_next().await {
        let settled = joined.expect("a consumer task");
        before.acked.extend(settled.acked);
        before.unanswered.extend(settled.unanswered);
    }

    // After the restart, drain everything: what was in flight comes back once
    // its time runs out, with its deliveries counted.
    let server = Server::start(dir.path()).await;
    let base = server.url("");
    let mut after: Vec<(String, u64)> = Vec::new();
    let deadline = Instant::now() + LOAD_DEADLINE;
    loop {
        assert!(Instant::now() < deadline, "the queue never drained");
        let body = http
            .get(format!("{base}/q/{queue}?visibility=60&max=100&wait=1"))
            .send()
            .await
            .expect("receive after the restart")
            .text()
            .await
            .expect("a receive answer");
        let json: serde_json::Value = serde_json::from_str(body.trim_end()).expect("JSON");
        let batch = json.as_array().expect("an array").clone();
        if batch.is_empty() {
            let stats: serde_json::Value = http
                .get(format!("{base}/stats/{queue}"))
                .send()
                .await
                .expect("stats")
                .json()
                .await
                .expect("JSON stats");
            if stats["len"] == 0 && stats["inflight"] == 0 && stats["delayed"] == 0 {
                break;
            }
            continue;
        }
        let form: Vec<(&str, &str)> = batch
            .iter()
            .map(|m| ("receipt", m["receipt"].as_str().expect("a receipt")))
            .collect();
        let ack = http
            .post(format!("{base}/ack"))
            .form(&form)
            .send()
            .await
            .expect("ack after the restart");
        assert_eq!(ack.status(), 200);
        for m in &batch {
            let value = m["value"].as_str().expect("a value").to_owned();
            after.push((value, m["count"].as_u64().expect("a count")));
        }
    }
    eprintln!(
        "acknowledged before the kill: {}, acks cut off: {}, acknowledged after: {}",
        before.acked.len(),
        before.unanswered.len(),
        after.len()
    );

    let acked_before: HashSet<&str> = before.acked.iter().map(String::as_str).collect();
    assert_eq!(
        acked_before.len(),
        before.acked.len(),
        "a message was acknowledged twice"
    );
    let cut_off: HashSet<&str> = before.unanswered.iter().map(String::as_str).collect();
    let mut acked_after = HashSet::new();
    for (value, _) in &after {
        assert!(
            !acked_before.contains(value.as_str()),
            "{value} was acknowledged before the kill, and came back"
        );
        assert!(
            acked_after.insert(value.as_str()),
            "{value} was acknowledged twice after the restart"
        );
    }
    for value in &values {
        let v = value.as_str();
        assert!(
            acked_before.contains(v) || acked_after.contains(v) || cut_off.contains(v),
            "{value} was lost"
        );
    }
    // The held messages were in flight at the kill (unless their time ran out
    // during the load): delivered again, counted.
    let mut redelivered = 0;
    for value in &held {
        let again = after.iter().find(|(v, _)| v == value);
        if let Some((_, count)) = again {
            assert!(*count >= 2, "{value} came back with count {count}");
            redelivered += 1;
        } else {
            assert!(
                acked_before.contains(value.as_str()) || cut_off.contains(value.as_str()),
                "{value} was held at the kill and never came back"
            );
        }
    }
    eprintln!("held at the kill and delivered again: {redelivered} of {HELD}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_ends_streams_and_exits() {
    let dir = tempfile::tempdir().expect("a temporary data directory");
    let mut server = Server::start(dir.path()).await;
    let http = reqwest::Client::new();
    let mut comet = http
        .get(server.url("/c/term"))
        .send()
        .await
        .expect("a COMET stream");
    let mut sse = http
        .get(server.url("/sse/term"))
        .send()
        .await
        .expect("an SSE stream");
    common::eventually("two consumers", || async {
        let stats: serde_json::Value = http
            .get(server.url("/stats/term"))
            .send()
            .await
            .ok()?
            .json()
            .await
            .ok()?;
        (stats["consumers"] == 2).then_some(())
    })
    .await;
    let published = http
        .post(server.url("/q/term"))
        .form(&[("value", "before")])
        .send()
        .await
        .expect("publish");
    assert_eq!(published.status(), 200);
    let first = comet.chunk().await.expect("a chunk").expect("a message");
    assert!(String::from_utf8_lossy(&first).contains("before"));

    let pid = server.child.id().to_string();
    let sent = Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .expect("run kill");
    assert!(sent.success());
    // The streams end cleanly (no error, just the end)...
    let rest = tokio::time::timeout(common::DEADLINE, async {
        while comet
            .chunk()
            .await
            .expect("a clean end of the COMET stream")
            .is_some()
        {}
        while sse
            .chunk()
            .await
            .expect("a clean end of the SSE stream")
            .is_some()
        {}
    })
    .await;
    assert!(rest.is_ok(), "the streams did not end after SIGTERM");
    // ...and the process exits, with success.
    let deadline = Instant::now() + common::DEADLINE;
    let status = loop {
        if let Some(status) = server.child.try_wait().expect("poll the process") {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "restmq did not exit after SIGTERM:\n{}",
            server.log_text()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(
        status.success(),
        "exit status {status}:\n{}",
        server.log_text()
    );
    assert!(server.log_text().contains("restmq stopped"));
}

/// The log is started over at each checkpoint, after a few MiB of it: its file
/// stays small however much is published, and a kill after several
/// checkpoints loses nothing acknowledged and brings back nothing popped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_log_stays_small_and_a_kill_after_checkpoints_loses_nothing() {
    /// 40 MiB of messages in all, several times what a checkpoint waits for.
    const MESSAGES: usize = 160;
    const SIZE: usize = 256 << 10;
    /// Popped before the kill.
    const POPPED: usize = 40;
    /// A bound on the log's file: the checkpoint's threshold, a step of growth
    /// and a frame, well under the 40 MiB published.
    const LOG_BOUND: u64 = 16 << 20;
    let value = |i: usize| format!("{i:06}{}", "m".repeat(SIZE - 6));

    let dir = tempfile::tempdir().expect("a temporary data directory");
    let mut server = Server::start(dir.path()).await;
    let queue = "checkpointed";
    let http = reqwest::Client::new();
    for i in 0..MESSAGES {
        let response = http
            .post(server.url(&format!("/q/{queue}")))
            .form(&[("value", value(i))])
            .send()
            .await
            .expect("publish");
        assert_eq!(response.status(), 200, "publish {i}");
    }
    for i in 0..POPPED {
        let response = http
            .get(server.url(&format!("/q/{queue}")))
            .send()
            .await
            .expect("pop");
        assert_eq!(response.status(), 200, "pop {i}");
        let json: serde_json::Value = response.json().await.expect("a JSON pop");
        assert_eq!(json["value"].as_str(), Some(value(i).as_str()), "pop {i}");
    }
    let log = std::fs::metadata(dir.path().join("restmq.wal"))
        .expect("the log's file")
        .len();
    assert!(
        log <= LOG_BOUND,
        "the log's file holds {log} bytes after {} MiB published",
        (MESSAGES * SIZE) >> 20
    );
    server.kill();

    let server = Server::start(dir.path()).await;
    let (_, after) = drain(http, server.url(""), queue.to_owned()).await;
    let values: Vec<&str> = after.iter().map(|(_, v)| v.as_str()).collect();
    let expected: Vec<String> = (POPPED..MESSAGES).map(value).collect();
    assert_eq!(values.len(), expected.len(), "messages back after the kill");
    for (got, want) in values.iter().zip(&expected) {
        assert!(
            got == want,
            "message {} came back as {:?}… ({} bytes)",
            &want[..6],
            got.get(..6),
            got.len()
        );
    }
}
