//! Model-based test of reliable delivery, on a clock the test moves: random
//! sequences of publish (with ttl and delay), pop, receive, ack, nack, extend,
//! clock advances, max_receives settings and deletes run against each store,
//! and every answer is compared with a simple model: visibility timeouts,
//! redelivery, dead letters, delays and expiry must behave the same everywhere.

mod common;

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use common::Backend;
use common::redis_servers;
use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestRunner};
use restmq::store::{
    Clock, EmbeddedOptions, EmbeddedStore, ManualClock, NewMessage, QueueConfig, RedisOptions,
    RedisStore, RedisTarget, Store, StoreError,
};

const CASES: u32 = 96;
const MAX_OPS: usize = 40;
const QUEUES: usize = 2;

#[derive(Debug, Clone)]
enum Op {
    Publish {
        q: usize,
        ttl: Option<u64>,
        delay: Option<u64>,
    },
    Pop {
        q: usize,
    },
    Receive {
        q: usize,
        max: usize,
        visibility: u64,
    },
    /// Acknowledges the receipt at this index of those issued (modulo).
    Ack {
        receipt: usize,
        tamper: bool,
    },
    Nack {
        receipt: usize,
        delay: u64,
    },
    Extend {
        receipt: usize,
        visibility: u64,
    },
    Advance {
        ms: u64,
    },
    MaxReceives {
        q: usize,
        max: u64,
    },
    /// Sets the queue's `max_len` (0: no limit).
    MaxLen {
        q: usize,
        max: u64,
    },
    Delete {
        q: usize,
        pick: usize,
    },
}

fn op() -> impl Strategy<Value = Op> {
    let q = 0..QUEUES;
    prop_oneof![
        4 => (q.clone(), prop::option::of(prop::sample::select(vec![2u64, 8])),
              prop::option::of(prop::sample::select(vec![1u64, 3])))
            .prop_map(|(q, ttl, delay)| Op::Publish { q, ttl, delay }),
        1 => q.clone().prop_map(|q| Op::Pop { q }),
        3 => (q.clone(), 1..3usize, prop::sample::select(vec![500u64, 2_000, 5_000]))
            .prop_map(|(q, max, visibility)| Op::Receive { q, max, visibility }),
        2 => (any::<usize>(), prop::bool::weighted(0.2))
            .prop_map(|(receipt, tamper)| Op::Ack { receipt, tamper }),
        1 => (any::<usize>(), prop::sample::select(vec![0u64, 1_000]))
            .prop_map(|(receipt, delay)| Op::Nack { receipt, delay }),
        1 => (any::<usize>(), prop::sample::select(vec![1_000u64, 6_000]))
            .prop_map(|(receipt, visibility)| Op::Extend { receipt, visibility }),
        3 => prop::sample::select(vec![100u64, 1_000, 2_500, 6_000])
            .prop_map(|ms| Op::Advance { ms }),
        1 => (q.clone(), 0..3u64).prop_map(|(q, max)| Op::MaxReceives { q, max }),
        1 => (q.clone(), 0..4u64).prop_map(|(q, max)| Op::MaxLen { q, max }),
        1 => (q, any::<usize>()).prop_map(|(q, pick)| Op::Delete { q, pick }),
    ]
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Visible,
    InFlight(u64),
    Delayed(u64),
}

#[derive(Debug, Clone)]
struct Msg {
    value: String,
    expires_at: u64,
    deliveries: u32,
    state: State,
}

#[derive(Debug, Default)]
struct QueueModel {
    msgs: BTreeMap<u64, Msg>,
    last_id: u64,
    max_receives: u64,
    max_len: u64,
}

#[derive(Debug, Default)]
struct Model {
    now: u64,
    queues: HashMap<String, QueueModel>,
}

impl Model {
    fn queue(&mut self, name: &str) -> &mut QueueModel {
        self.queues.entry(name.to_owned()).or_default()
    }

    fn expired(&self, msg: &Msg) -> bool {
        msg.expires_at != 0 && msg.expires_at <= self.now
    }

    /// Hidden messages that came due, by (due, id).
    fn settle(&mut self, name: &str) {
        let now = self.now;
        let mut due: Vec<(u64, u64)> = self
            .queue(name)
            .msgs
            .iter()
            .filter_map(|(&id, m)| match m.state {
                State::InFlight(at) | State::Delayed(at) if at <= now => Some((at, id)),
                _ => None,
            })
            .collect();
        due.sort_unstable();
        let max = self.queue(name).max_receives;
        for (_, id) in due {
            let msg = self.queue(name).msgs[&id].clone();
            if self.expired(&msg) {
                self.queue(name).msgs.remove(&id);
            } else if matches!(msg.state, State::InFlight(_))
                && max > 0
                && u64::from(msg.deliveries) >= max
            {
                self.queue(name).msgs.remove(&id);
                self.dead_letter(name, &msg);
            } else if let Some(m) = self.queue(name).msgs.get_mut(&id) {
                m.state = State::Visible;
            }
        }
    }

    fn dead_letter(&mut self, name: &str, msg: &Msg) {
        let dead = self.queue(&format!("{name}.dead"));
        dead.last_id += 1;
        let id = dead.last_id;
        dead.msgs.insert(
            id,
            Msg {
                value: msg.value.clone(),
                expires_at: msg.expires_at,
                deliveries: 0,
                state: State::Visible,
            },
        );
    }

    /// The lowest visible live message, dropping expired ones on the way.
    fn head(&mut self, name: &str) -> Option<u64> {
        self.settle(name);
        loop {
            let id = self
                .queue(name)
                .msgs
                .iter()
                .find(|(_, m)| m.state == State::Visible)
                .map(|(&id, _)| id)?;
            let msg = self.queue(name).msgs[&id].clone();
            if self.expired(&msg) {
                self.queue(name).msgs.remove(&id);
                continue;
            }
            return Some(id);
        }
    }

    fn valid(&self, name: &str, id: u64, delivery: u32) -> bool {
        self.queues
            .get(name)
            .and_then(|q| q.msgs.get(&id))
            .is_some_and(|m| {
                matches!(m.state, State::InFlight(due) if due > self.now)
                    && m.deliveries == delivery
            })
    }

    /// (len, in flight, delayed) as the stores count them: hidden messages count
    /// by their state until settled, expired visible ones until reached.
    fn counts(&self, name: &str) -> (u64, u64, u64) {
        let Some(q) = self.queues.get(name) else {
            return (0, 0, 0);
        };
        let mut counts = (0, 0, 0);
        for m in q.msgs.values() {
            match m.state {
                State::Visible => counts.0 += 1,
                State::InFlight(_) => counts.1 += 1,
                State::Delayed(_) => counts.2 += 1,
            }
        }
        counts
    }
}

/// A store on `backend` reading `clock`, and what keeps it alive.
async fn store_on(
    backend: Backend,
    clock: Arc<ManualClock>,
) -> Option<(Arc<dyn Store>, Option<tempfile::TempDir>)> {
    let clock: Arc<dyn Clock> = clock;
    if backend != Backend::Embedded && !redis_servers::available() {
        assert!(
            std::env::var_os("CI").is_none(),
            "redis-server is not installed, and CI is set"
        );
        eprintln!("skipping the {backend:?} variant: redis-server is not installed");
        return None;
    }
    let target = match backend {
        Backend::Embedded => {
            let dir = tempfile::tempdir().expect("a directory");
            let path = dir.path().to_owned();
            let store = tokio::task::spawn_blocking(move || {
                EmbeddedStore::open(&path, EmbeddedOptions::default(), clock)
            })
            .await
            .expect("open")
            .expect("an embedded store");
            return Some((Arc::new(store), Some(dir)));
        }
        Backend::Redis => RedisTarget::Ring(
            tokio::task::spawn_blocking(redis_servers::single)
                .await
                .expect("redis"),
        ),
        Backend::Ring => RedisTarget::Ring(
            tokio::task::spawn_blocking(redis_servers::ring)
                .await
                .expect("ring"),
        ),
        Backend::Cluster => {
            let urls = tokio::task::spawn_blocking(redis_servers::cluster)
                .await
                .expect("cluster");
            RedisTarget::Cluster(urls)
        }
    };
    let store = RedisStore::open(&target, &RedisOptions::default(), clock).expect("a Redis store");
    Some((Arc::new(store), None))
}

async fn run_case(
    store: &dyn Store,
    clock: &ManualClock,
    case: usize,
    ops: &[Op],
) -> Result<(), TestCaseError> {
    let names: Vec<String> = (0..QUEUES).map(|q| format!("rm{case}-{q}")).collect();
    let mut model = Model {
        now: clock.now(),
        ..Model::default()
    };
    let mut receipts: Vec<(String, u64, u32)> = Vec::new();
    let mut published = 0usize;
    for (step, op) in ops.iter().enumerate() {
        let at = format!("step {step}: {op:?}");
        match *op {
            Op::Publish { q, ttl, delay } => {
                published += 1;
                let value = format!("v{published}");
                let outcome = store
                    .publish(
                        &names[q],
                        vec![NewMessage {
                            value: value.clone(),
                            ttl,
                            delay,
                        }],
                    )
                    .await;
                let (limit, held) = {
                    let (len, inflight, delayed) = model.counts(&names[q]);
                    (model.queue(&names[q]).max_len, len + inflight + delayed)
                };
                match outcome {
                    Err(StoreError::Full(max)) => {
                        prop_assert_eq!(max, limit, "{}", at);
                        prop_assert!(
                            limit > 0 && held >= limit,
                            "{}: full at {} of {}",
                            at,
                            held,
                            limit
                        );
                    }
                    Err(e) => return Err(TestCaseError::fail(format!("{at}: {e}"))),
                    Ok(ids) => {
                        prop_assert!(
                            limit == 0 || held < limit,
                            "{}: accepted at {} of {}",
                            at,
                            held,
                            limit
                        );
                        let now = model.now;
                        let queue = model.queue(&names[q]);
                        queue.last_id += 1;
                        let id = queue.last_id;
                        prop_assert_eq!(&ids, &vec![id], "{}", at);
                        let state = match delay {
                            Some(d) => State::Delayed(now + d * 1000),
                            None => State::Visible,
                        };
                        let expires_at = ttl.map_or(0, |t| now + t * 1000);
                        queue.msgs.insert(
                            id,
                            Msg {
                                value,
                                expires_at,
                                deliveries: 0,
                                state,
                            },
                        );
                    }
                }
            }
            Op::Pop { q } => {
                let got = store
                    .pop(&names[q])
                    .await
                    .map_err(|e| TestCaseError::fail(format!("{at}: {e}")))?;
                let want = model.head(&names[q]).map(|id| {
                    let msg = model.queue(&names[q]).msgs.remove(&id).expect("the head");
                    (id, msg.value, msg.expires_at)
                });
                prop_assert_eq!(got.map(|m| (m.id, m.value, m.expires_at)), want, "{}", at);
            }
            Op::Receive { q, max, visibility } => {
                let got = store
                    .receive(&names[q], max, visibility)
                    .await
                    .map_err(|e| TestCaseError::fail(format!("{at}: {e}")))?;
                let mut want = Vec::new();
                while want.len() < max {
                    let Some(id) = model.head(&names[q]) else {
                        break;
                    };
                    let now = model.now;
                    let msg = model.queue(&names[q]).msgs.get_mut(&id).expect("the head");
                    msg.deliveries += 1;
                    msg.state = State::InFlight(now + visibility);
                    want.push((id, msg.value.clone(), msg.deliveries));
                }
                let got: Vec<(u64, String, u32)> = got
                    .into_iter()
                    .map(|r| (r.message.id, r.message.value, r.delivery))
                    .collect();
                prop_assert_eq!(&got, &want, "{}", at);
                receipts.extend(got.into_iter().map(|(id, _, d)| (names[q].clone(), id, d)));
            }
            Op::Ack { receipt, tamper } => {
                let Some((name, id, delivery)) = pick(&receipts, receipt) else {
                    continue;
                };
                let delivery = if tamper { delivery + 7 } else { delivery };
                let stale = store
                    .ack(&name, vec![(id, delivery)])
                    .await
                    .map_err(|e| TestCaseError::fail(format!("{at}: {e}")))?;
                let valid = model.valid(&name, id, delivery);
                prop_assert_eq!(stale.is_empty(), valid, "{}", at);
                if valid {
                    model.queue(&name).msgs.remove(&id);
                }
            }
            Op::Nack { receipt, delay } => {
                let Some((name, id, delivery)) = pick(&receipts, receipt) else {
                    continue;
                };
                let done = store
                    .nack(&name, id, delivery, delay)
                    .await
                    .map_err(|e| TestCaseError::fail(format!("{at}: {e}")))?;
                let valid = model.valid(&name, id, delivery);
                prop_assert_eq!(done, valid, "{}", at);
                if valid {
                    let msg = model.queue(&name).msgs[&id].clone();
                    let max = model.queue(&name).max_receives;
                    if model.expired(&msg) {
                        model.queue(&name).msgs.remove(&id);
                    } else if max > 0 && u64::from(msg.deliveries) >= max {
                        model.queue(&name).msgs.remove(&id);
                        model.dead_letter(&name, &msg);
                    } else {
                        let now = model.now;
                        let m = model.queue(&name).msgs.get_mut(&id).expect("in flight");
                        m.state = if delay == 0 {
                            State::Visible
                        } else {
                            State::Delayed(now + delay)
                        };
                    }
                }
            }
            Op::Extend {
                receipt,
                visibility,
            } => {
                let Some((name, id, delivery)) = pick(&receipts, receipt) else {
                    continue;
                };
                let done = store
                    .extend(&name, id, delivery, visibility)
                    .await
                    .map_err(|e| TestCaseError::fail(format!("{at}: {e}")))?;
                let valid = model.valid(&name, id, delivery);
                prop_assert_eq!(done, valid, "{}", at);
                if valid {
                    let now = model.now;
                    let m = model.queue(&name).msgs.get_mut(&id).expect("in flight");
                    m.state = State::InFlight(now + visibility);
                }
            }
            Op::Advance { ms } => {
                clock.advance(ms);
                model.now += ms;
            }
            Op::MaxReceives { q, max } => {
                let queue = model.queue(&names[q]);
                queue.max_receives = max;
                let config = QueueConfig {
                    max_receives: max,
                    max_len: queue.max_len,
                    ..QueueConfig::default()
                };
                store
                    .set_config(&names[q], config)
                    .await
                    .map_err(|e| TestCaseError::fail(format!("{at}: {e}")))?;
            }
            Op::MaxLen { q, max } => {
                let queue = model.queue(&names[q]);
                queue.max_len = max;
                let config = QueueConfig {
                    max_receives: queue.max_receives,
                    max_len: max,
                    ..QueueConfig::default()
                };
                store
                    .set_config(&names[q], config)
                    .await
                    .map_err(|e| TestCaseError::fail(format!("{at}: {e}")))?;
            }
            Op::Delete { q, pick: which } => {
                let ids: Vec<u64> = model.queue(&names[q]).msgs.keys().copied().collect();
                let id = if ids.is_empty() {
                    1
                } else {
                    ids[which % ids.len()]
                };
                let deleted = store
                    .delete(&names[q], id)
                    .await
                    .map_err(|e| TestCaseError::fail(format!("{at}: {e}")))?;
                let want = match model.queue(&names[q]).msgs.remove(&id) {
                    Some(msg) => !model.expired(&msg),
                    None => false,
                };
                prop_assert_eq!(deleted, want, "{}", at);
            }
        }
        for name in names.iter().flat_map(|n| [n.clone(), format!("{n}.dead")]) {
            let info = store
                .queue(&name)
                .await
                .map_err(|e| TestCaseError::fail(format!("{at}: {e}")))?
                .unwrap_or_default();
            prop_assert_eq!(
                (info.len, info.inflight, info.delayed),
                model.counts(&name),
                "{} counts of {}",
                at,
                name
            );
        }
    }
    // Finally, everything still held comes out, in order, with nothing extra.
    clock.advance(3_600_000);
    model.now += 3_600_000;
    for name in names.iter().flat_map(|n| [n.clone(), format!("{n}.dead")]) {
        let mut got = Vec::new();
        while let Some(m) = store
            .pop(&name)
            .await
            .map_err(|e| TestCaseError::fail(e.to_string()))?
        {
            got.push((m.id, m.value));
        }
        let mut want = Vec::new();
        while let Some(id) = model.head(&name) {
            let msg = model.queue(&name).msgs.remove(&id).expect("the head");
            want.push((id, msg.value));
        }
        prop_assert_eq!(got, want, "the rest of {}", name);
    }
    Ok(())
}

fn pick(receipts: &[(String, u64, u32)], index: usize) -> Option<(String, u64, u32)> {
    (!receipts.is_empty()).then(|| receipts[index % receipts.len()].clone())
}

fn model_test(backend: Backend) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a runtime");
    let clock = Arc::new(ManualClock::new(1_800_000_000_000));
    let turn = (backend == Backend::Cluster).then(|| {
        rt.block_on(async {
            let turn = redis_servers::cluster_turn().lock().await;
            if redis_servers::available() {
                tokio::task::spawn_blocking(redis_servers::cluster)
                    .await
                    .expect("cluster");
                redis_servers::flush_cluster().await;
            }
            turn
        })
    });
    let Some((store, _dir)) = rt.block_on(store_on(backend, clock.clone())) else {
        return;
    };
    let cases = AtomicUsize::new(0);
    let mut runner = TestRunner::new(Config {
        cases: CASES,
        failure_persistence: None,
        ..Config::default()
    });
    let result = runner.run(&prop::collection::vec(op(), 0..=MAX_OPS), |ops| {
        let case = cases.fetch_add(1, Ordering::SeqCst);
        rt.block_on(run_case(store.as_ref(), &clock, case, &ops))
    });
    rt.block_on(async {
        let _ = store.close().await;
    });
    drop(turn);
    if let Err(e) = result {
        panic!("{backend:?}: {e}");
    }
}

#[test]
fn embedded() {
    model_test(Backend::Embedded);
}

#[test]
fn redis() {
    model_test(Backend::Redis);
}

#[test]
fn ring() {
    model_test(Backend::Ring);
}

#[test]
fn cluster() {
    model_test(Backend::Cluster);
}
