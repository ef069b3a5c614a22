//! Model-based test: random sequences of queue operations over HTTP, each answer
//! compared exactly with a simple in-memory model of the queues.
//!
//! The model of a queue is its waiting messages in FIFO order (number, value,
//! times peeked) and the last number it handed out. Every case gets fresh queue
//! names on one shared in-process server, which a case restarts now and then
//! (gracefully: everything, peek counts included, must survive).

mod common;

use std::cell::RefCell;
use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use common::{Answer, Backend, TestServer};
use proptest::prelude::*;
use proptest::sample::Index;
use proptest::test_runner::{Config, TestCaseError, TestRunner};
use serde_json::{Value, json};

/// Random operation sequences tried.
const CASES: u32 = 128;
/// Longest operation sequence.
const MAX_OPS: usize = 40;
/// Queues each case works on.
const QUEUES: usize = 2;

/// One operation; `q` picks one of the case's queues.
#[derive(Debug, Clone)]
enum Op {
    /// `POST /q/<q>` with `value` (sent as is; the server trims it).
    Publish { q: usize, value: String },
    /// `GET /q/<q>`.
    Pop { q: usize },
    /// `POST /queue` `{"cmd":"get"}`.
    Peek { q: usize },
    /// `POST /queue` `{"cmd":"take"}`.
    Take { q: usize },
    /// `POST /queue` `{"cmd":"del"}`.
    Del { q: usize, target: Target },
    /// `DELETE /q/<q>`.
    Purge { q: usize },
    /// `GET /stats/<q>`.
    Stats { q: usize },
    /// A graceful restart of the server on the same data directory.
    Restart,
}

/// Which key a `del` names.
#[derive(Debug, Clone)]
enum Target {
    /// A message waiting in the queue (the first number never issued when empty).
    Waiting(Index),
    /// Any key the queue ever issued, waiting or gone.
    Issued(Index),
    /// A key issued by the case's other queue.
    OtherQueue(Index),
    /// A key that names no message of the queue, though it may look like one.
    Bogus(Bogus),
}

#[derive(Debug, Clone, Copy)]
enum Bogus {
    /// `q:0`.
    Zero,
    /// `q:`.
    NoNumber,
    /// `q`.
    NoColon,
    /// `q:abc`.
    Letters,
    /// `q:+n` for the head's n.
    Plus,
    /// `q:-1`.
    Negative,
    /// ` q:n` for the head's n.
    LeadingSpace,
    /// `q:n ` for the head's n.
    TrailingSpace,
    /// `q:nx` for the head's n.
    Suffix,
    /// A number beyond u64.
    Huge,
    /// The next number, not issued yet.
    Next,
}

fn bogus_strategy() -> impl Strategy<Value = Bogus> {
    prop_oneof![
        Just(Bogus::Zero),
        Just(Bogus::NoNumber),
        Just(Bogus::NoColon),
        Just(Bogus::Letters),
        Just(Bogus::Plus),
        Just(Bogus::Negative),
        Just(Bogus::LeadingSpace),
        Just(Bogus::TrailingSpace),
        Just(Bogus::Suffix),
        Just(Bogus::Huge),
        Just(Bogus::Next),
    ]
}

fn value_strategy() -> impl Strategy<Value = String> {
    prop_oneof![
        // Mostly values kept as sent: form and JSON special characters, unicode,
        // spaces and newlines inside.
        8 => "[a-zA-Z0-9&=+%é漢😀\"\\\\/?#;][a-zA-Z0-9 &=+%é漢😀\"\\\\/?#;\n]{0,10}[a-zA-Z0-9&=+%é漢😀]",
        2 => "[a-z&=+%]",
        // Sometimes surrounded by whitespace (trimmed) or blank (refused).
        1 => "[ \t\n\u{a0}\u{3000}]{0,2}[a&+ ]{0,2}[ \t\n\u{a0}\u{3000}]{0,2}",
    ]
}

fn op_strategy() -> impl Strategy<Value = Op> {
    let q = 0..QUEUES;
    let target = prop_oneof![
        3 => any::<Index>().prop_map(Target::Waiting),
        2 => any::<Index>().prop_map(Target::Issued),
        1 => any::<Index>().prop_map(Target::OtherQueue),
        2 => bogus_strategy().prop_map(Target::Bogus),
    ];
    prop_oneof![
        7 => (q.clone(), value_strategy()).prop_map(|(q, value)| Op::Publish { q, value }),
        3 => q.clone().prop_map(|q| Op::Pop { q }),
        3 => q.clone().prop_map(|q| Op::Peek { q }),
        2 => q.clone().prop_map(|q| Op::Take { q }),
        3 => (q.clone(), target).prop_map(|(q, target)| Op::Del { q, target }),
        1 => q.clone().prop_map(|q| Op::Purge { q }),
        1 => q.prop_map(|q| Op::Stats { q }),
        1 => Just(Op::Restart),
    ]
}

/// How often the interesting outcomes happened over the whole run, printed at the
/// end so a reader sees what was exercised.
#[derive(Debug, Default)]
struct Tally {
    published: AtomicUsize,
    refused_blank: AtomicUsize,
    popped: AtomicUsize,
    empty_pops: AtomicUsize,
    peeked_again: AtomicUsize,
    deleted: AtomicUsize,
    not_deleted: AtomicUsize,
    purged_nonempty: AtomicUsize,
    restarts_with_waiting: AtomicUsize,
}

impl Tally {
    fn add(counter: &AtomicUsize) {
        counter.fetch_add(1, Ordering::Relaxed);
    }
}

#[derive(Debug, Clone)]
struct Message {
    n: u64,
    value: String,
    peeks: u64,
}

#[derive(Debug, Clone)]
struct QueueModel {
    name: String,
    /// The last number handed out (0: none yet).
    last: u64,
    waiting: VecDeque<Message>,
}

impl QueueModel {
    fn key(&self, n: u64) -> String {
        format!("{}:{n}", self.name)
    }

    /// The number of the head, or of the next message when empty.
    fn head_number(&self) -> u64 {
        self.waiting.front().map_or(self.last + 1, |m| m.n)
    }
}

/// The key a `del` sends to queue `q`.
fn del_key(queues: &[QueueModel], q: usize, target: &Target) -> String {
    let queue = &queues[q];
    let name = &queue.name;
    match target {
        Target::Waiting(i) => match queue.waiting.len() {
            0 => queue.key(queue.last + 1),
            len => queue.key(queue.waiting[i.index(len)].n),
        },
        Target::Issued(i) => match queue.last {
            0 => queue.key(1),
            last => queue.key(1 + i.index(last as usize) as u64),
        },
        Target::OtherQueue(i) => {
            let other = &queues[(q + 1) % queues.len()];
            other.key(1 + i.index(other.last.max(1) as usize) as u64)
        }
        Target::Bogus(bogus) => {
            let n = queue.head_number();
            match bogus {
                Bogus::Zero => format!("{name}:0"),
                Bogus::NoNumber => format!("{name}:"),
                Bogus::NoColon => name.clone(),
                Bogus::Letters => format!("{name}:abc"),
                Bogus::Plus => format!("{name}:+{n}"),
                Bogus::Negative => format!("{name}:-1"),
                Bogus::LeadingSpace => format!(" {name}:{n}"),
                Bogus::TrailingSpace => format!("{name}:{n} "),
                Bogus::Suffix => format!("{name}:{n}x"),
                Bogus::Huge => format!("{name}:99999999999999999999999"),
                Bogus::Next => queue.key(queue.last + 1),
            }
        }
    }
}

/// Checks an answer's status and its JSON body (exactly), and whether the body
/// ends with CRLF.
fn check_json(
    answer: &Answer,
    status: u16,
    expected: &Value,
    crlf: bool,
) -> Result<(), TestCaseError> {
    prop_assert_eq!(answer.status, status, "status; body {:?}", answer.body);
    prop_assert_eq!(
        answer.body.ends_with("\r\n"),
        crlf,
        "CRLF at the end of {:?}",
        answer.body
    );
    let body: Value = serde_json::from_str(answer.body.trim_end_matches("\r\n"))
        .map_err(|e| TestCaseError::fail(format!("not JSON ({e}): {:?}", answer.body)))?;
    prop_assert_eq!(&body, expected, "body {:?}", answer.body);
    Ok(())
}

async fn command(server: &TestServer, command: Value) -> Answer {
    server
        .post_form("/queue", &[("body", &command.to_string())])
        .await
}

/// Runs `op` (anything but a restart) and compares the answer with the model.
async fn step(
    server: &TestServer,
    queues: &mut [QueueModel],
    op: &Op,
    tally: &Tally,
) -> Result<(), TestCaseError> {
    match op {
        Op::Publish { q, value } => {
            let queue = &mut queues[*q];
            let answer = server
                .post_form(&format!("/q/{}", queue.name), &[("value", value)])
                .await;
            let stored = value.trim();
            if stored.is_empty() {
                Tally::add(&tally.refused_blank);
                prop_assert_eq!(answer.status, 400, "blank value refused: {:?}", answer.body);
                let body = answer.json();
                prop_assert!(body["error"].is_string(), "an error: {:?}", answer.body);
            } else {
                Tally::add(&tally.published);
                queue.last += 1;
                let n = queue.last;
                prop_assert_eq!(answer.status, 200, "body {:?}", answer.body);
                prop_assert_eq!(&answer.body, &format!("{}\r\n", queue.key(n)));
                queue.waiting.push_back(Message {
                    n,
                    value: stored.to_owned(),
                    peeks: 0,
                });
            }
        }
        Op::Pop { q } => {
            let queue = &mut queues[*q];
            let answer = server.get(&format!("/q/{}", queue.name)).await;
            match queue.waiting.pop_front() {
                None => {
                    Tally::add(&tally.empty_pops);
                    prop_assert_eq!(answer.status, 204, "empty: body {:?}", answer.body);
                    prop_assert_eq!(&answer.body, "");
                }
                Some(m) => {
                    Tally::add(&tally.popped);
                    check_json(
                        &answer,
                        200,
                        &json!({"key": queue.key(m.n), "value": m.value, "count": 0}),
                        true,
                    )?;
                }
            }
        }
        Op::Peek { q } => {
            let queue = &mut queues[*q];
            let answer = command(server, json!({"cmd": "get", "queue": queue.name})).await;
            let name = queue.name.clone();
            let expected = match queue.waiting.front_mut() {
                None => json!({"error": "empty queue"}),
                Some(m) => {
                    m.peeks += 1;
                    if m.peeks > 1 {
                        Tally::add(&tally.peeked_again);
                    }
                    json!({
                        "queue": name,
                        "value": m.value,
                        "key": format!("{name}:{}", m.n),
                        "count": m.peeks,
                    })
                }
            };
            check_json(&answer, 200, &expected, false)?;
        }
        Op::Take { q } => {
            let queue = &mut queues[*q];
            let answer = command(server, json!({"cmd": "take", "queue": queue.name})).await;
            let expected = match queue.waiting.pop_front() {
                None => json!({"error": "empty queue"}),
                Some(m) => json!({"queue": queue.name, "value": m.value, "key": queue.key(m.n)}),
            };
            check_json(&answer, 200, &expected, false)?;
        }
        Op::Del { q, target } => {
            let key = del_key(queues, *q, target);
            let queue = &mut queues[*q];
            let answer = command(
                server,
                json!({"cmd": "del", "queue": queue.name, "key": key}),
            )
            .await;
            let at = queue
                .waiting
                .iter()
                .position(|m| format!("{}:{}", queue.name, m.n) == key);
            if let Some(at) = at {
                queue.waiting.remove(at);
            }
            Tally::add(if at.is_some() {
                &tally.deleted
            } else {
                &tally.not_deleted
            });
            let expected = json!({"queue": queue.name, "deleted": at.is_some(), "key": key});
            check_json(&answer, 200, &expected, false)?;
        }
        Op::Purge { q } => {
            let queue = &mut queues[*q];
            let answer = server.delete(&format!("/q/{}", queue.name)).await;
            let status = u8::from(!queue.waiting.is_empty());
            if status == 1 {
                Tally::add(&tally.purged_nonempty);
            }
            queue.waiting.clear();
            check_json(
                &answer,
                200,
                &json!({"queue": queue.name, "status": status}),
                true,
            )?;
        }
        Op::Stats { q } => check_stats(server, &queues[*q]).await?,
        Op::Restart => unreachable!("restarts are run by the caller"),
    }
    Ok(())
}

/// `GET /stats/<q>`: `{"redis","queue","len",…}` with the model's length
/// (and no streaming consumers).
async fn check_stats(server: &TestServer, queue: &QueueModel) -> Result<(), TestCaseError> {
    let answer = server.get(&format!("/stats/{}", queue.name)).await;
    prop_assert_eq!(answer.status, 200, "stats: body {:?}", answer.body);
    let mut body = answer.json();
    prop_assert!(
        body["redis"].is_string(),
        "stats names the store: {:?}",
        answer.body
    );
    body["redis"] = json!("");
    prop_assert_eq!(
        body,
        json!({"redis": "", "queue": queue.name, "len": queue.waiting.len(), "consumers": 0, "waiting": 0, "inflight": 0, "delayed": 0, "published": queue.last}),
        "stats of {}",
        queue.name
    );
    Ok(())
}

/// Runs one case on `server`; gives the server back (it may have been restarted).
async fn run_case(
    mut server: TestServer,
    case: usize,
    ops: &[Op],
    tally: &Tally,
) -> (TestServer, Result<(), TestCaseError>) {
    // Names that share a prefix and hold a colon: keys of one look like the other's.
    let mut queues = [format!("mq{case}"), format!("mq{case}:sub")].map(|name| QueueModel {
        name,
        last: 0,
        waiting: VecDeque::new(),
    });
    for (i, op) in ops.iter().enumerate() {
        if let Op::Restart = op {
            if queues.iter().any(|q| !q.waiting.is_empty()) {
                Tally::add(&tally.restarts_with_waiting);
            }
            server = server.restart().await;
            continue;
        }
        if let Err(e) = step(&server, &mut queues, op, tally).await {
            let failure = TestCaseError::fail(format!(
                "operation #{i} {op:?} on {:?}: {e}",
                queues.iter().map(|q| &q.name).collect::<Vec<_>>()
            ));
            return (server, Err(failure));
        }
    }
    for queue in &queues {
        if let Err(e) = check_stats(&server, queue).await {
            return (server, Err(TestCaseError::fail(format!("at the end: {e}"))));
        }
    }
    (server, Ok(()))
}

/// Runs the model test against `backend`.
fn http_answers_match_a_model_of_the_queues(backend: Backend) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a tokio runtime");
    // The server lives across cases; a case that panics drops it, and the next
    // case starts a new one.
    let slot: RefCell<Option<TestServer>> = RefCell::new(None);
    let cases = AtomicUsize::new(0);
    let ops_run = AtomicUsize::new(0);
    let restarts = AtomicUsize::new(0);
    let tally = Tally::default();
    let started = Instant::now();
    let mut runner = TestRunner::new(Config {
        cases: CASES,
        failure_persistence: None,
        ..Config::default()
    });
    let result = runner.run(
        &proptest::collection::vec(op_strategy(), 0..=MAX_OPS),
        |ops| {
            let case = cases.fetch_add(1, Ordering::SeqCst);
            ops_run.fetch_add(ops.len(), Ordering::SeqCst);
            restarts.fetch_add(
                ops.iter().filter(|op| matches!(op, Op::Restart)).count(),
                Ordering::SeqCst,
            );
            let server = slot.borrow_mut().take();
            let (server, outcome) = rt.block_on(async {
                let server = match server {
                    Some(server) => server,
                    None => match TestServer::on(backend).await {
                        Some(server) => server,
                        None => return (None, Ok(())),
                    },
                };
                let (server, outcome) = run_case(server, case, &ops, &tally).await;
                (Some(server), outcome)
            });
            *slot.borrow_mut() = server;
            outcome
        },
    );
    if let Some(server) = slot.borrow_mut().take() {
        rt.block_on(server.stop());
    }
    eprintln!(
        "model test ({backend:?}): {} cases, {} operations ({} restarts) in {:?}; {tally:?}",
        cases.load(Ordering::SeqCst),
        ops_run.load(Ordering::SeqCst),
        restarts.load(Ordering::SeqCst),
        started.elapsed()
    );
    if let Err(e) = result {
        panic!("{e}");
    }
}

#[test]
fn embedded() {
    http_answers_match_a_model_of_the_queues(Backend::Embedded);
}

#[test]
fn redis() {
    http_answers_match_a_model_of_the_queues(Backend::Redis);
}

#[test]
fn ring() {
    http_answers_match_a_model_of_the_queues(Backend::Ring);
}

#[test]
fn cluster() {
    http_answers_match_a_model_of_the_queues(Backend::Cluster);
}
