//! Counters and latency histograms, kept in atomics and rendered in the
//! Prometheus text format by `GET /metrics`. Counters live as long as the
//! process, as Prometheus expects; gauges (depth, in flight, consumers) are
//! read from the queues when scraped.

use std::collections::HashMap;
use std::collections::hash_map::RandomState;
use std::fmt::Write;
use std::hash::{BuildHasher, BuildHasherDefault, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, PoisonError, RwLock};
use std::time::Duration;

/// Upper bounds of the latency buckets, in microseconds (100 µs to 10 s).
const BUCKETS_MICROS: [u64; 14] = [
    100, 250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 1_000_000,
    2_500_000, 10_000_000,
];

/// A latency histogram.
#[derive(Debug, Default)]
pub struct Histogram {
    buckets: [AtomicU64; BUCKETS_MICROS.len()],
    count: AtomicU64,
    sum_micros: AtomicU64,
}

impl Histogram {
    /// Counts one observation.
    pub fn observe(&self, elapsed: Duration) {
        let micros = u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX);
        if let Some(i) = BUCKETS_MICROS.iter().position(|&bound| micros <= bound) {
            self.buckets[i].fetch_add(1, Ordering::Relaxed);
        }
        self.count.fetch_add(1, Ordering::Relaxed);
        self.sum_micros.fetch_add(micros, Ordering::Relaxed);
    }

    fn render(&self, out: &mut String, name: &str, labels: &str) {
        let mut cumulative = 0;
        for (bound, bucket) in BUCKETS_MICROS.iter().zip(&self.buckets) {
            cumulative += bucket.load(Ordering::Relaxed);
            let le = *bound as f64 / 1e6;
            let _ = writeln!(out, "{name}_bucket{{{labels},le=\"{le}\"}} {cumulative}");
        }
        let count = self.count.load(Ordering::Relaxed);
        let _ = writeln!(out, "{name}_bucket{{{labels},le=\"+Inf\"}} {count}");
        let sum = self.sum_micros.load(Ordering::Relaxed) as f64 / 1e6;
        let _ = writeln!(out, "{name}_sum{{{labels}}} {sum}");
        let _ = writeln!(out, "{name}_count{{{labels}}} {count}");
    }
}

/// Methods the router answers, each with its histogram per route; the last
/// slot takes any other.
const METHODS: [&str; 5] = ["GET", "POST", "DELETE", "HEAD", "OTHER"];

/// The latencies of one route, by method.
#[derive(Debug, Default)]
pub struct RouteLatency {
    by_method: [Histogram; METHODS.len()],
}

/// What happened to one queue's messages since the process started.
#[derive(Debug, Default)]
pub struct QueueCounters {
    /// Messages published.
    pub published: AtomicU64,
    /// Messages taken or received from the queue (by GET, a command or a stream).
    pub consumed: AtomicU64,
    /// Deliveries acknowledged.
    pub acked: AtomicU64,
    /// Messages received again after a delivery that was not acknowledged.
    pub redelivered: AtomicU64,
    /// Messages taken for a stream and put back undelivered.
    pub returned: AtomicU64,
}

/// A map from a label to its value, created on first use. Reads (the hot
/// path, once the label exists) take a shared lock only.
#[derive(Debug)]
struct Family<T, H = RandomState> {
    members: RwLock<HashMap<String, Arc<T>, H>>,
}

impl<T, H: Default> Default for Family<T, H> {
    fn default() -> Self {
        Family {
            members: RwLock::new(HashMap::default()),
        }
    }
}

impl<T: Default, H: BuildHasher> Family<T, H> {
    /// Runs `f` on the member of `label`, made if new.
    fn with<R>(&self, label: &str, f: impl FnOnce(&T) -> R) -> R {
        if let Some(member) = self
            .members
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(label)
        {
            return f(member);
        }
        let member = self
            .members
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .entry(label.to_owned())
            .or_default()
            .clone();
        f(&member)
    }

    /// Every member, sorted by label, so that scrapes read the same order.
    fn sorted(&self) -> Vec<(String, Arc<T>)> {
        let mut all: Vec<_> = self
            .members
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .map(|(label, member)| (label.clone(), member.clone()))
            .collect();
        all.sort_by(|a, b| a.0.cmp(&b.0));
        all
    }
}

/// The store operations timed, each with its histogram: a fixed set, so
/// timing one is an index into an array, with no lock and no lookup. Each
/// is the [`crate::store::Store`] method of the same name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoreOp {
    Ack,
    Config,
    Delete,
    Extend,
    Latest,
    Nack,
    NextDue,
    Peek,
    Ping,
    Pop,
    Publish,
    Purge,
    Queue,
    Queues,
    Receive,
    Redrive,
    Restore,
    SetConfig,
    SetPolicy,
    SetStatus,
    Share,
}

impl StoreOp {
    /// Every operation, in the order of their names (the order `/metrics`
    /// lists them in).
    const ALL: [StoreOp; 21] = [
        StoreOp::Ack,
        StoreOp::Config,
        StoreOp::Delete,
        StoreOp::Extend,
        StoreOp::Latest,
        StoreOp::Nack,
        StoreOp::NextDue,
        StoreOp::Peek,
        StoreOp::Ping,
        StoreOp::Pop,
        StoreOp::Publish,
        StoreOp::Purge,
        StoreOp::Queue,
        StoreOp::Queues,
        StoreOp::Receive,
        StoreOp::Redrive,
        StoreOp::Restore,
        StoreOp::SetConfig,
        StoreOp::SetPolicy,
        StoreOp::SetStatus,
        StoreOp::Share,
    ];

    /// The operation's label in `/metrics`.
    pub fn name(self) -> &'static str {
        match self {
            StoreOp::Ack => "ack",
            StoreOp::Config => "config",
            StoreOp::Delete => "delete",
            StoreOp::Extend => "extend",
            StoreOp::Latest => "latest",
            StoreOp::Nack => "nack",
            StoreOp::NextDue => "next_due",
            StoreOp::Peek => "peek",
            StoreOp::Ping => "ping",
            StoreOp::Pop => "pop",
            StoreOp::Publish => "publish",
            StoreOp::Purge => "purge",
            StoreOp::Queue => "queue",
            StoreOp::Queues => "queues",
            StoreOp::Receive => "receive",
            StoreOp::Redrive => "redrive",
            StoreOp::Restore => "restore",
            StoreOp::SetConfig => "set_config",
            StoreOp::SetPolicy => "set_policy",
            StoreOp::SetStatus => "set_status",
            StoreOp::Share => "share",
        }
    }
}

/// Every metric of a server. Cheap to share.
#[derive(Debug, Default)]
pub struct Metrics {
    /// By queue: names come from clients, so hashed with a random key.
    queues: Family<QueueCounters>,
    /// By route: the router's pattern, so the set stays small and ours.
    http: Family<RouteLatency, Fnv>,
    /// By store operation, indexed by [`StoreOp`].
    store: [Histogram; StoreOp::ALL.len()],
}

/// FNV-1a, for the labels restmq chooses itself (routes, operations): a few
/// instructions a byte where the default hasher, keyed against collisions a
/// client could craft, takes many more.
#[derive(Debug, Clone, Copy)]
struct FnvHasher(u64);

impl Default for FnvHasher {
    fn default() -> Self {
        FnvHasher(0xcbf2_9ce4_8422_2325)
    }
}

impl Hasher for FnvHasher {
    fn write(&mut self, bytes: &[u8]) {
        for &byte in bytes {
            self.0 = (self.0 ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3);
        }
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

type Fnv = BuildHasherDefault<FnvHasher>;

/// What the scrape reads from the queues at that moment.
#[derive(Debug, Clone, Default)]
pub struct QueueGauges {
    /// The queue.
    pub queue: String,
    /// Messages waiting.
    pub depth: u64,
    /// Messages received and not yet acknowledged.
    pub inflight: u64,
    /// Messages not yet visible.
    pub delayed: u64,
    /// Streaming consumers connected to this server.
    pub consumers: u64,
}

impl Metrics {
    /// Runs `f` on the counters of `queue`.
    pub fn count(&self, queue: &str, f: impl FnOnce(&QueueCounters)) {
        self.queues.with(queue, f);
    }

    /// Counts an answered HTTP request.
    pub fn http(&self, method: &str, route: &str, elapsed: Duration) {
        let slot = METHODS
            .iter()
            .position(|m| *m == method)
            .unwrap_or(METHODS.len() - 1);
        self.http
            .with(route, |latency| latency.by_method[slot].observe(elapsed));
    }

    /// Counts a store operation.
    pub fn store(&self, operation: StoreOp, elapsed: Duration) {
        self.store[operation as usize].observe(elapsed);
    }

    /// The Prometheus text exposition of every metric, with `gauges` read from
    /// the queues.
    pub fn render(&self, gauges: &[QueueGauges], dead_lettered: &[(String, u64)]) -> String {
        let mut out = String::new();
        let queues = self.queues.sorted();
        let counters: [Described<CounterField>; 5] = [
            ("restmq_published_total", "Messages published.", |c| {
                &c.published
            }),
            (
                "restmq_consumed_total",
                "Messages taken or received (GET, commands, streams).",
                |c| &c.consumed,
            ),
            ("restmq_acked_total", "Deliveries acknowledged.", |c| {
                &c.acked
            }),
            (
                "restmq_redelivered_total",
                "Messages received again after an unacknowledged delivery.",
                |c| &c.redelivered,
            ),
            (
                "restmq_returned_total",
                "Messages taken for a stream and put back undelivered.",
                |c| &c.returned,
            ),
        ];
        for (name, help, field) in counters {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter");
            for (queue, counters) in &queues {
                let value = field(counters).load(Ordering::Relaxed);
                let _ = writeln!(out, "{name}{{queue=\"{}\"}} {value}", escape(queue));
            }
        }
        let name = "restmq_dead_lettered_total";
        let _ = writeln!(
            out,
            "# HELP {name} Messages moved to a dead-letter queue, by the queue they left.\n# TYPE {name} counter"
        );
        let mut dead_lettered = dead_lettered.to_vec();
        dead_lettered.sort();
        for (queue, count) in dead_lettered {
            let _ = writeln!(out, "{name}{{queue=\"{}\"}} {count}", escape(&queue));
        }
        let gauge_fields: [Described<GaugeField>; 4] = [
            ("restmq_queue_depth", "Messages waiting.", |g| g.depth),
            (
                "restmq_queue_inflight",
                "Messages received and not yet acknowledged.",
                |g| g.inflight,
            ),
            (
                "restmq_queue_delayed",
                "Messages not yet visible (delayed).",
                |g| g.delayed,
            ),
            (
                "restmq_stream_consumers",
                "Streaming consumers connected (COMET, SSE, WebSocket).",
                |g| g.consumers,
            ),
        ];
        for (name, help, field) in gauge_fields {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge");
            for gauge in gauges {
                let _ = writeln!(
                    out,
                    "{name}{{queue=\"{}\"}} {}",
                    escape(&gauge.queue),
                    field(gauge)
                );
            }
        }
        let name = "restmq_http_request_duration_seconds";
        let _ = writeln!(
            out,
            "# HELP {name} Time to answer a request (to the head of a stream).\n# TYPE {name} histogram"
        );
        for (route, latency) in self.http.sorted() {
            for (method, histogram) in METHODS.iter().zip(&latency.by_method) {
                if histogram.count.load(Ordering::Relaxed) > 0 {
                    let labels = format!("method=\"{method}\",route=\"{}\"", escape(&route));
                    histogram.render(&mut out, name, &labels);
                }
            }
        }
        let name = "restmq_store_operation_duration_seconds";
        let _ = writeln!(
            out,
            "# HELP {name} Time a store operation took.\n# TYPE {name} histogram"
        );
        for (operation, histogram) in StoreOp::ALL.iter().zip(&self.store) {
            // Operations never run are left out, as before their first use.
            if histogram.count.load(Ordering::Relaxed) > 0 {
                let labels = format!("operation=\"{}\"", operation.name());
                histogram.render(&mut out, name, &labels);
            }
        }
        out
    }
}

/// A metric's name and help, with how to read it.
type Described<F> = (&'static str, &'static str, F);
/// Reads a counter of a queue.
type CounterField = fn(&QueueCounters) -> &AtomicU64;
/// Reads a gauge of a queue.
type GaugeField = fn(&QueueGauges) -> u64;

/// A label value as the text format writes it.
fn escape(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Each operation's histogram is the one `/metrics` labels with its name,
    /// listed in the order of the names.
    #[test]
    fn store_operations_index_their_own_histograms_in_name_order() {
        for (i, operation) in StoreOp::ALL.iter().enumerate() {
            assert_eq!(*operation as usize, i, "{operation:?}");
        }
        let names: Vec<&str> = StoreOp::ALL.iter().map(|op| op.name()).collect();
        let mut sorted = names.clone();
        sorted.sort_unstable();
        assert_eq!(names, sorted);
    }

    #[test]
    fn histograms_are_cumulative_and_labels_escaped() {
        let metrics = Metrics::default();
        metrics.store(StoreOp::Pop, Duration::from_micros(90));
        metrics.store(StoreOp::Pop, Duration::from_micros(2_000));
        metrics.store(StoreOp::Pop, Duration::from_secs(20));
        metrics.count("a \"b\"\n", |counters| {
            counters.published.fetch_add(2, Ordering::Relaxed);
        });
        let text = metrics.render(&[], &[("q".into(), 3)]);
        assert!(text.contains("restmq_dead_lettered_total{queue=\"q\"} 3"));
        assert!(text.contains(r#"restmq_published_total{queue="a \"b\"\n"} 2"#));
        assert!(text.contains(
            r#"restmq_store_operation_duration_seconds_bucket{operation="pop",le="0.0001"} 1"#
        ));
        assert!(text.contains(
            r#"restmq_store_operation_duration_seconds_bucket{operation="pop",le="0.0025"} 2"#
        ));
        assert!(text.contains(
            r#"restmq_store_operation_duration_seconds_bucket{operation="pop",le="10"} 2"#
        ));
        assert!(text.contains(
            r#"restmq_store_operation_duration_seconds_bucket{operation="pop",le="+Inf"} 3"#
        ));
        assert!(
            text.contains(r#"restmq_store_operation_duration_seconds_count{operation="pop"} 3"#)
        );
    }
}
