//! `restmq bench`: a load generator for a running server.
//!
//! Each connection is one task holding one keep-alive HTTP/1 connection and
//! issuing requests back to back until the phase's deadline, so the number of
//! requests in flight is exactly `--connections`. A phase publishes
//! (`POST /q/<queue>`) or pops (`GET /q/<queue>`); `--mode both` publishes for
//! `--duration` seconds, then pops the same queue for as long, or until it is
//! drained: each connection stops at its first empty answer (204).
//!
//! `--mode fanout` measures streaming delivery instead (see [`measure_fanout`]):
//! `--subscribers` Server-Sent Events or WebSocket consumers of one queue, then
//! `--messages` publishes, each value carrying its send time, so that every
//! subscriber times every message from publish to receipt.

use std::borrow::Cow;
use std::fmt;
use std::hash::{BuildHasher, RandomState};
use std::io::{self, Write};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::{Buf, Bytes, BytesMut};
use clap::{Args, ValueEnum};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::client::conn::http1::SendRequest;
use hyper::header::{ACCEPT, HeaderValue};
use hyper::{Method, Request, StatusCode, Uri};
use serde::{Deserialize, Serialize};
use tokio::net::TcpStream;
use tokio::sync::{Semaphore, mpsc, watch};
use tokio::task::JoinSet;
use tokio::time::{Instant, sleep, sleep_until, timeout, timeout_at};

use crate::client::{
    self, Endpoint, Event, Failure, MAX_MESSAGE, REQUEST_TIMEOUT, ResolveError, SseParser, connect,
    exchange_body, request,
};
use crate::progress::{Goal, Progress, bump};

/// Pause after a failed connection attempt, so that a refusing server is not
/// hammered by a tight reconnect loop that would only inflate the error count.
const RECONNECT_PAUSE: Duration = Duration::from_millis(50);

/// Options of `restmq bench`.
#[derive(Debug, Clone, Args)]
pub struct BenchArgs {
    /// Base URL of the server (http only: `http://host[:port]`).
    #[arg(long, env = "RESTMQ_SERVER", default_value = "http://127.0.0.1:8888")]
    pub server: String,
    /// Concurrent keep-alive connections, each with one request in flight
    /// [default: 64; with --mode fanout, 1: the publishing connections].
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
    pub connections: Option<u32>,
    /// Length of each phase, in seconds (publish and pop phases only).
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..))]
    pub duration: u64,
    /// Size of each published message, in bytes.
    #[arg(long, default_value_t = 100)]
    pub size: usize,
    /// Queue to publish to and pop from [default: bench; with --mode fanout, a
    /// fresh queue for each run, `fanout-<pid>-<milliseconds>`].
    // The brackets are clap's help text, not a link.
    #[allow(rustdoc::broken_intra_doc_links)]
    #[arg(long)]
    pub queue: Option<String>,
    /// Which phases to run.
    #[arg(long, value_enum, default_value_t = Mode::Both)]
    pub mode: Mode,
    /// Streaming consumers of the queue (--mode fanout).
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..))]
    pub subscribers: u32,
    /// Messages published, each to be received by every subscriber (--mode fanout).
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u64).range(1..))]
    pub messages: u64,
    /// How the subscribers receive (--mode fanout).
    #[arg(long, value_enum, default_value_t = Transport::Sse)]
    pub transport: Transport,
    /// Print the report as JSON on stdout (the table then goes to stderr).
    #[arg(long)]
    pub json: bool,
}

impl BenchArgs {
    /// The connections to use: `--connections`, or the mode's default (64 for
    /// the publish and pop phases, 1 publisher for the fan-out).
    pub fn connection_count(&self) -> u32 {
        self.connections.unwrap_or(match self.mode {
            Mode::Fanout => 1,
            Mode::Publish | Mode::Pop | Mode::Both | Mode::Reliable => 64,
        })
    }
}

/// Which phases a run has.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Mode {
    /// Publish only.
    Publish,
    /// Pop only (from whatever the queue already holds).
    Pop,
    /// Publish, then pop the same queue.
    Both,
    /// Publish, then receive each message with a visibility timeout and
    /// acknowledge it (at-least-once consumption).
    Reliable,
    /// Streaming fan-out: open the subscribers, then publish, timing every
    /// message from its publish to its receipt by each subscriber.
    Fanout,
}

impl Mode {
    fn phases(self) -> &'static [Phase] {
        match self {
            Mode::Publish => &[Phase::Publish],
            Mode::Pop => &[Phase::Pop],
            Mode::Both => &[Phase::Publish, Phase::Pop],
            Mode::Reliable => &[Phase::Publish, Phase::Receive],
            Mode::Fanout => &[],
        }
    }
}

/// How fan-out subscribers receive their messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Transport {
    /// Server-Sent Events, `GET /sse/<queue>`: one event per message.
    Sse,
    /// WebSocket, `GET /ws/<queue>`: one text frame per message.
    Ws,
}

impl Transport {
    fn route(self) -> &'static str {
        match self {
            Transport::Sse => "sse",
            Transport::Ws => "ws",
        }
    }
}

impl fmt::Display for Transport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.route())
    }
}

/// What a phase's requests do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Phase {
    /// `POST /q/<queue>` with `value=<size bytes>`.
    Publish,
    /// `GET /q/<queue>`.
    Pop,
    /// `GET /q/<queue>?visibility=30`, then `POST /ack` with its receipt: one
    /// message consumed at least once, timed from the GET to the ack's answer.
    Receive,
}

impl fmt::Display for Phase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Phase::Publish => "publish",
            Phase::Pop => "pop",
            Phase::Receive => "receive",
        })
    }
}

/// Why a benchmark could not run.
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    /// `--server` is not a URL this tool can use.
    #[error("invalid --server {url:?}: {reason}")]
    InvalidServer {
        /// The URL as given.
        url: String,
        /// What is wrong with it.
        reason: String,
    },
    /// Another option is out of range.
    #[error("invalid option: {0}")]
    InvalidOption(String),
    /// The server's host name did not resolve.
    #[error("cannot resolve {host}: {source}")]
    Resolve {
        /// The host and port looked up.
        host: String,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// The server could not be reached before the run started.
    #[error("cannot connect to {addr}: {source}")]
    Connect {
        /// The address tried.
        addr: SocketAddr,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// The fan-out needs more open files than this process may have.
    #[error(
        "{subscribers} subscribers need about {needed} open files, but this process may \
         open only {soft}: {advice}; the server needs as many in its own process"
    )]
    FileLimit {
        /// Subscribers asked for.
        subscribers: u32,
        /// Files the run needs: one per connection, and some to spare.
        needed: u64,
        /// The soft limit now.
        soft: u64,
        /// What to do: raise the soft limit, or, beyond the hard limit, ask for less.
        advice: String,
    },
    /// Not one fan-out subscriber could connect.
    #[error("no subscriber could connect: {0}")]
    NoSubscriber(String),
    /// The server did not count every connected subscriber in time.
    #[error("the server did not count all {wanted} subscribers within {}s: {detail}", READY_TIMEOUT.as_secs())]
    NotReady {
        /// Subscribers connected, which the server should count.
        wanted: u64,
        /// What it counted last, or why it could not be asked.
        detail: String,
    },
    /// A connection task stopped abnormally.
    #[error("a connection task failed: {0}")]
    Task(#[from] tokio::task::JoinError),
    /// Writing the report failed.
    #[error("cannot write the report: {0}")]
    Output(#[from] io::Error),
    /// Encoding the report as JSON failed.
    #[error("cannot encode the report as JSON: {0}")]
    Json(#[from] serde_json::Error),
}

impl From<ResolveError> for BenchError {
    fn from(error: ResolveError) -> BenchError {
        match error {
            ResolveError::InvalidServer { url, reason } => {
                BenchError::InvalidServer { url, reason }
            }
            ResolveError::Resolve { host, source } => BenchError::Resolve { host, source },
            ResolveError::Connect { addr, source } => BenchError::Connect { addr, source },
        }
    }
}

/// The result of a whole run.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// The server measured, as given.
    pub server: String,
    /// The queue used.
    pub queue: String,
    /// Concurrent connections.
    pub connections: u32,
    /// Planned length of each phase, in seconds.
    pub duration_secs: u64,
    /// Size of each published message, in bytes.
    pub size: usize,
    /// One entry per phase run, in order.
    pub phases: Vec<PhaseReport>,
}

/// The result of one phase.
#[derive(Debug, Clone, Serialize)]
pub struct PhaseReport {
    /// What the phase did.
    pub phase: Phase,
    /// Requests answered 200: messages published or popped.
    pub ok: u64,
    /// Pops answered 204 because the queue was empty (always 0 when publishing).
    pub empty: u64,
    /// Requests answered with any other status.
    pub other: u64,
    /// The first status counted in `other`, to tell what they were.
    pub first_other: Option<u16>,
    /// Requests or connection attempts that failed without an HTTP answer
    /// (refused, reset, closed, timed out).
    pub errors: u64,
    /// The first transport error seen, to tell what `errors` were.
    pub first_error: Option<String>,
    /// Time from the phase's start until its last request finished, in seconds.
    pub elapsed_secs: f64,
    /// `ok` per second of `elapsed_secs`.
    pub msgs_per_sec: f64,
    /// Median latency of OK requests, in milliseconds (`None` without any).
    pub p50_ms: Option<f64>,
    /// 99th percentile latency of OK requests, in milliseconds.
    pub p99_ms: Option<f64>,
    /// Largest latency of an OK request, in milliseconds.
    pub max_ms: Option<f64>,
}

/// The result of a fan-out run (`--mode fanout`).
#[derive(Debug, Clone, Serialize)]
pub struct FanoutReport {
    /// The server measured, as given.
    pub server: String,
    /// The queue used.
    pub queue: String,
    /// How the subscribers received.
    pub transport: Transport,
    /// Subscribers asked for.
    pub subscribers: u32,
    /// Subscribers whose stream opened.
    pub connected: u32,
    /// Messages asked for.
    pub messages: u64,
    /// Publishing connections.
    pub connections: u32,
    /// Size of each published value, in bytes.
    pub size: usize,
    /// Time from opening the first subscriber until the server counted them
    /// all, in seconds.
    pub ready_secs: f64,
    /// The publishing: `ok` is the messages the server accepted; the latencies
    /// are those of the publish requests.
    pub publish: PhaseReport,
    /// Messages received, summed over the subscribers.
    pub deliveries: u64,
    /// `connected` times `publish.ok`: the deliveries of a lossless run.
    pub expected_deliveries: u64,
    /// Subscribers that received every accepted message, in order of key.
    pub complete_subscribers: u32,
    /// Subscribers that received every message, but not in order of key.
    pub out_of_order_subscribers: u32,
    /// Subscribers still missing messages at the deadline.
    pub timed_out_subscribers: u32,
    /// Subscribers whose stream the server ended early (its buffer for a
    /// slow consumer overflowed, the queue was deleted, the server stopped).
    pub ended_subscribers: u32,
    /// Subscribers that could not connect, or whose connection failed.
    pub failed_subscribers: u32,
    /// The first incomplete subscriber, and what happened to it.
    pub first_incomplete: Option<String>,
    /// Messages received that this run did not publish (left in a reused
    /// `--queue` earlier); not counted as deliveries.
    pub foreign: u64,
    /// Messages received that could not be read as `{"key","value"}`.
    pub malformed: u64,
    /// Time from the first publish until the last delivery, in seconds.
    pub elapsed_secs: f64,
    /// `deliveries` per second of `elapsed_secs`.
    pub deliveries_per_sec: f64,
    /// Median time from sending a publish to receiving its message, over every
    /// delivery, in milliseconds (`None` without any).
    pub p50_ms: Option<f64>,
    /// 99th percentile publish-to-receipt time, in milliseconds.
    pub p99_ms: Option<f64>,
    /// Largest publish-to-receipt time, in milliseconds.
    pub max_ms: Option<f64>,
}

/// Where and what to send, shared by every connection task.
struct Target {
    addr: SocketAddr,
    host: HeaderValue,
    uri: Uri,
    /// `uri` with `?visibility=30`.
    receive_uri: Uri,
    ack_uri: Uri,
    form: Bytes,
}

impl Target {
    fn request(&self, phase: Phase) -> Request<Full<Bytes>> {
        match phase {
            Phase::Publish => request(Method::POST, &self.uri, &self.host, self.form.clone()),
            Phase::Pop => request(Method::GET, &self.uri, &self.host, Bytes::new()),
            Phase::Receive => request(Method::GET, &self.receive_uri, &self.host, Bytes::new()),
        }
    }
}

/// What one connection task counted.
#[derive(Default)]
struct Tally {
    ok: u64,
    empty: u64,
    other: u64,
    first_other: Option<u16>,
    errors: u64,
    first_error: Option<String>,
    /// Latencies of OK requests, in microseconds.
    latencies: Vec<u32>,
}

impl Tally {
    fn error(&mut self, error: impl fmt::Display) {
        self.errors += 1;
        if self.first_error.is_none() {
            self.first_error = Some(error.to_string());
        }
    }

    fn ok(&mut self, latency: Duration) {
        self.ok += 1;
        self.latencies.push(micros(latency));
    }

    fn other(&mut self, status: StatusCode) {
        self.other += 1;
        self.first_other.get_or_insert(status.as_u16());
    }

    fn merge(&mut self, other: Tally) {
        self.ok += other.ok;
        self.empty += other.empty;
        self.other += other.other;
        self.first_other = self.first_other.or(other.first_other);
        self.errors += other.errors;
        if self.first_error.is_none() {
            self.first_error = other.first_error;
        }
        self.latencies.extend(other.latencies);
    }
}

/// A duration in whole microseconds, saturating at `u32::MAX` (71 minutes),
/// which keeps the latency vectors of large runs at 4 bytes a sample.
fn micros(duration: Duration) -> u32 {
    u32::try_from(duration.as_micros()).unwrap_or(u32::MAX)
}

/// Checks a queue name, then makes it the path `/<route>/<queue>`.
fn queue_uri(route: &str, queue: &str) -> Result<Uri, BenchError> {
    client::queue_uri(route, queue).map_err(|e| BenchError::InvalidOption(format!("--queue: {e}")))
}

/// The queue of the publish and pop phases.
fn phase_queue(args: &BenchArgs) -> &str {
    args.queue.as_deref().unwrap_or("bench")
}

/// Checks the options and resolves the server once.
async fn target(args: &BenchArgs) -> Result<Target, BenchError> {
    if args.connection_count() == 0 {
        return Err(BenchError::InvalidOption(
            "--connections must be at least 1".into(),
        ));
    }
    if args.duration == 0 {
        return Err(BenchError::InvalidOption(
            "--duration must be at least 1".into(),
        ));
    }
    let uri = queue_uri("q", phase_queue(args))?;
    let server = client::resolve(&args.server).await?;
    let mut form = Vec::with_capacity(args.size + 6);
    form.extend_from_slice(b"value=");
    form.resize(6 + args.size, b'x');
    let receive_uri = format!("{uri}?visibility=30")
        .parse::<Uri>()
        .map_err(|e| BenchError::InvalidOption(format!("--queue gives no valid path: {e}")))?;
    Ok(Target {
        addr: server.addr,
        host: server.host,
        uri,
        receive_uri,
        ack_uri: Uri::from_static("/ack"),
        form: Bytes::from(form),
    })
}

/// Sends one request and reads the whole answer: its status and latency.
async fn exchange(
    sender: &mut SendRequest<Full<Bytes>>,
    request: Request<Full<Bytes>>,
) -> Result<(StatusCode, Duration), Failure> {
    let send = async {
        sender.ready().await?;
        let started = Instant::now();
        let response = sender.send_request(request).await?;
        let status = response.status();
        response.into_body().collect().await?;
        Ok::<_, hyper::Error>((status, started.elapsed()))
    };
    match timeout(REQUEST_TIMEOUT, send).await {
        Ok(answer) => Ok(answer?),
        Err(_) => Err(Failure::Timeout(REQUEST_TIMEOUT)),
    }
}

/// Receives one message and acknowledges it: the ack's status (or the
/// receive's, when it is not 200) and the latency of both.
async fn receive_and_ack(
    sender: &mut SendRequest<Full<Bytes>>,
    target: &Target,
) -> Result<(StatusCode, Duration), Failure> {
    let started = Instant::now();
    let (status, body) =
        exchange_body(sender, target.request(Phase::Receive), REQUEST_TIMEOUT).await?;
    if status != StatusCode::OK {
        return Ok((status, started.elapsed()));
    }
    let receipt = serde_json::from_slice::<serde_json::Value>(&body)
        .ok()
        .and_then(|answer| answer["receipt"].as_str().map(str::to_owned));
    let Some(receipt) = receipt else {
        // Counted as an unexpected answer: 200 without a receipt.
        return Ok((StatusCode::INTERNAL_SERVER_ERROR, started.elapsed()));
    };
    let form = Bytes::from(format!("receipt={receipt}"));
    let ack = request(Method::POST, &target.ack_uri, &target.host, form);
    let (status, _) = exchange_body(sender, ack, REQUEST_TIMEOUT).await?;
    Ok((status, started.elapsed()))
}

/// One connection's loop: requests back to back until `deadline`, reconnecting
/// after any failure.
async fn worker(
    target: Arc<Target>,
    phase: Phase,
    deadline: Instant,
    progress: Option<Arc<AtomicU64>>,
) -> Tally {
    let mut tally = Tally::default();
    let mut connection: Option<SendRequest<Full<Bytes>>> = None;
    while Instant::now() < deadline {
        let sender = match connection.as_mut() {
            Some(sender) => sender,
            // A connection attempt still pending at the deadline sent nothing,
            // so abandoning it loses no request.
            None => match timeout_at(deadline, connect(target.addr)).await {
                Err(_) => break,
                Ok(Err(e)) => {
                    tally.error(e);
                    sleep_until((Instant::now() + RECONNECT_PAUSE).min(deadline)).await;
                    continue;
                }
                Ok(Ok(sender)) => connection.insert(sender),
            },
        };
        let answer = match phase {
            Phase::Publish | Phase::Pop => exchange(sender, target.request(phase)).await,
            Phase::Receive => receive_and_ack(sender, &target).await,
        };
        match answer {
            Ok((status, latency)) => match status {
                StatusCode::OK => {
                    tally.ok(latency);
                    bump(progress.as_ref(), 1);
                }
                // Nothing publishes while consuming: once empty, the queue
                // stays empty, and consuming on would only dilute the rate.
                StatusCode::NO_CONTENT if phase != Phase::Publish => {
                    tally.empty += 1;
                    break;
                }
                _ => tally.other(status),
            },
            Err(e) => {
                tally.error(e);
                connection = None;
            }
        }
    }
    tally
}

/// The `q`-quantile (nearest rank) of sorted microseconds, in milliseconds.
fn percentile_ms(sorted: &[u32], q: f64) -> Option<f64> {
    if sorted.is_empty() {
        return None;
    }
    // Float to index: the rank is within 1..=len, so the cast cannot truncate.
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    Some(f64::from(sorted[rank - 1]) / 1000.0)
}

/// `count` per second of `elapsed`, 0 when no time passed.
#[allow(clippy::cast_precision_loss)]
fn rate(count: u64, elapsed: Duration) -> f64 {
    let secs = elapsed.as_secs_f64();
    if secs > 0.0 { count as f64 / secs } else { 0.0 }
}

/// Sums up a phase from what its connections counted.
fn phase_report(phase: Phase, mut total: Tally, elapsed: Duration) -> PhaseReport {
    total.latencies.sort_unstable();
    PhaseReport {
        phase,
        ok: total.ok,
        empty: total.empty,
        other: total.other,
        first_other: total.first_other,
        errors: total.errors,
        first_error: total.first_error,
        elapsed_secs: elapsed.as_secs_f64(),
        msgs_per_sec: rate(total.ok, elapsed),
        p50_ms: percentile_ms(&total.latencies, 0.50),
        p99_ms: percentile_ms(&total.latencies, 0.99),
        max_ms: total.latencies.last().map(|&us| f64::from(us) / 1000.0),
    }
}

/// Runs one phase on `connections` connections for `duration`, with a bar of
/// its progress when `progress` shows them.
async fn run_phase(
    target: &Arc<Target>,
    phase: Phase,
    connections: u32,
    duration: Duration,
    progress: Progress,
) -> Result<PhaseReport, BenchError> {
    let counter = progress.counter();
    let bar = progress.start(&phase.to_string(), Goal::Time(duration), counter.clone());
    let started = Instant::now();
    let deadline = started + duration;
    let mut tasks = JoinSet::new();
    for _ in 0..connections {
        tasks.spawn(worker(Arc::clone(target), phase, deadline, counter.clone()));
    }
    let mut total = Tally::default();
    while let Some(tally) = tasks.join_next().await {
        total.merge(tally?);
    }
    let elapsed = started.elapsed();
    bar.finish().await;
    Ok(phase_report(phase, total, elapsed))
}

/// Runs the publish and pop phases `args` ask for against a running server and
/// measures them. `--mode fanout` is measured by [`measure_fanout`] instead,
/// whose report differs; asking this function for it is an invalid option.
///
/// Fails before any load is sent if the options are wrong or the server cannot
/// be reached; once running, failed requests are counted, not returned.
pub async fn measure(args: &BenchArgs) -> Result<Report, BenchError> {
    measure_with(args, Progress::hidden()).await
}

/// [`measure`], drawing the progress of each phase when `progress` says so.
async fn measure_with(args: &BenchArgs, progress: Progress) -> Result<Report, BenchError> {
    if args.mode == Mode::Fanout {
        return Err(BenchError::InvalidOption(
            "--mode fanout is measured by bench::measure_fanout".into(),
        ));
    }
    let target = Arc::new(target(args).await?);
    let duration = Duration::from_secs(args.duration);
    let connections = args.connection_count();
    let mut phases = Vec::new();
    for &phase in args.mode.phases() {
        phases.push(run_phase(&target, phase, connections, duration, progress).await?);
    }
    Ok(Report {
        server: args.server.clone(),
        queue: phase_queue(args).to_owned(),
        connections,
        duration_secs: args.duration,
        size: args.size,
        phases,
    })
}

// The fan-out mode.
//
// Every subscriber is one task reading one stream, every publisher one task
// holding one keep-alive connection. Values carry their send time as
// microseconds since an `Instant` all tasks share, so that a subscriber times
// a message with one clock read per chunk, without any message bookkeeping.

/// Subscriber connections being opened at once: enough to open thousands in
/// a second, few enough to stay within a listen backlog of 128 (std's and
/// tokio's default, and restmq's). With 200, a server slow to accept for a
/// moment overflowed it: the dropped SYNs are retried after the kernel's
/// 1 s timeout, which stalled every run started right after a large one.
const OPEN_CONCURRENCY: usize = 100;

/// How long the server may take to count the connected subscribers.
const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// How often `GET /stats/<queue>` is asked while waiting for the subscribers.
const READY_POLL: Duration = Duration::from_millis(10);

/// The least time the deliveries may take, from the first publish, before the
/// subscribers still waiting are given up on.
const MIN_DELIVERY_TIME: Duration = Duration::from_secs(30);

/// Deliveries per second under which a large run is given up on: it sizes the
/// deadline of runs too large for [`MIN_DELIVERY_TIME`].
const SLOWEST_DELIVERIES_PER_SEC: u64 = 50_000;

/// Open files kept for what is not a subscriber or a publisher: the standard
/// streams, the runtime's own, the connection asking for statistics.
const SPARE_FILES: u64 = 64;

/// Bytes read from a WebSocket at once: each subscriber keeps a buffer this
/// large, so 10,000 of them hold 40 MiB (16 KiB made it 206 MiB of resident
/// memory at that count).
const READ_CHUNK: usize = 4 << 10;

/// The most a WebSocket handshake answer may take before its blank line.
const MAX_HANDSHAKE: usize = 16 << 10;

/// Hex digits of the run's tag, which starts every value it publishes so that
/// messages left in a reused queue are told apart from its own.
const TAG_LEN: usize = 8;

/// Digits of the send time (microseconds) after the tag: 11 days' worth.
const STAMP_DIGITS: usize = 12;

/// The shortest value a fan-out publishes: the tag and the send time.
const STAMP_LEN: usize = TAG_LEN + STAMP_DIGITS;

/// What every fan-out task shares.
struct Fanout {
    server: Endpoint,
    /// `/sse/<queue>` or `/ws/<queue>`.
    stream_uri: Uri,
    /// `/q/<queue>`.
    publish_uri: Uri,
    /// `/stats/<queue>`.
    stats_uri: Uri,
    transport: Transport,
    /// Starts every value published by this run.
    tag: String,
    /// Value size, in bytes.
    size: usize,
    /// Messages to publish.
    messages: u64,
    /// The clock the send times are read from.
    base: Instant,
    /// Bounds the subscriber connections being opened at once.
    gate: Semaphore,
    /// Messages accepted, counted for the progress bar (when it is shown).
    published: Option<Arc<AtomicU64>>,
    /// Messages received by every subscriber, for the progress bar.
    delivered: Option<Arc<AtomicU64>>,
}

impl Fanout {
    /// The form publishing a value sent `sent` after `base`: the tag, the
    /// zero-padded microseconds, then `x` up to the value size.
    fn form(&self, sent: Duration) -> Bytes {
        let mut form = Vec::with_capacity(6 + self.size);
        form.extend_from_slice(b"value=");
        form.extend_from_slice(self.tag.as_bytes());
        form.extend_from_slice(format!("{:012}", sent.as_micros()).as_bytes());
        form.resize(6 + self.size.max(STAMP_LEN), b'x');
        Bytes::from(form)
    }
}

/// What the run tells the subscribers once they read.
#[derive(Debug, Clone, Copy)]
struct Control {
    /// Messages each subscriber is to receive: `--messages` until the
    /// publishing ends, then the number the server accepted.
    target: u64,
    /// The deadline passed: stop now.
    stop: bool,
}

/// A message as the server streams it; the fields borrow from the received
/// bytes unless they hold escapes.
#[derive(Deserialize)]
struct Streamed<'a> {
    #[serde(borrow)]
    key: Cow<'a, str>,
    #[serde(borrow)]
    value: Cow<'a, str>,
}

/// What one subscriber received.
#[derive(Debug, Default)]
struct Received {
    /// Messages of this run.
    count: u64,
    /// The number of the last one's key.
    last_id: Option<u64>,
    /// A key was not greater than the one before it.
    out_of_order: bool,
    /// Messages this run did not publish.
    foreign: u64,
    /// Messages that are not `{"key","value"}` with a numbered key.
    malformed: u64,
    /// Publish-to-receipt times, in microseconds.
    latencies: Vec<u32>,
    /// When the last message of this run arrived.
    last_at: Option<Instant>,
}

impl Received {
    /// Counts one message (a JSON payload), received at `now`; false when it is
    /// the `null` that ends the stream of a deleted queue.
    fn take(&mut self, payload: &[u8], tag: &str, base: Instant, now: Instant) -> bool {
        if payload == b"null" {
            return false;
        }
        let Ok(message) = serde_json::from_slice::<Streamed<'_>>(payload) else {
            self.malformed += 1;
            return true;
        };
        let Some(stamp) = message.value.strip_prefix(tag) else {
            self.foreign += 1;
            return true;
        };
        let sent = stamp
            .get(..STAMP_DIGITS)
            .and_then(|digits| digits.parse::<u64>().ok());
        let id = message
            .key
            .rsplit_once(':')
            .and_then(|(_, id)| id.parse::<u64>().ok());
        let (Some(sent), Some(id)) = (sent, id) else {
            self.malformed += 1;
            return true;
        };
        if self.last_id.is_some_and(|last| id <= last) {
            self.out_of_order = true;
        }
        self.last_id = Some(id);
        self.count += 1;
        let received = now.saturating_duration_since(base);
        let received = u64::try_from(received.as_micros()).unwrap_or(u64::MAX);
        self.latencies
            .push(micros(Duration::from_micros(received.saturating_sub(sent))));
        self.last_at = Some(now);
        true
    }
}

/// WebSocket opcodes (RFC 6455, 5.2).
const OP_CONTINUATION: u8 = 0x0;
const OP_TEXT: u8 = 0x1;
const OP_BINARY: u8 = 0x2;
const OP_CLOSE: u8 = 0x8;
const OP_PING: u8 = 0x9;
const OP_PONG: u8 = 0xa;

/// A WebSocket frame's header.
#[derive(Debug, PartialEq, Eq)]
struct FrameHead {
    fin: bool,
    opcode: u8,
    /// Where the payload starts: the header's length.
    start: usize,
    /// The payload's length.
    len: usize,
}

/// The header of the frame at the start of `buf`, `None` until it has all
/// arrived. Server frames are unmasked (RFC 6455, 5.1); a masked one, or one
/// using an extension this client did not negotiate, is an error.
fn frame_head(buf: &[u8]) -> Result<Option<FrameHead>, String> {
    let [b0, b1, ref rest @ ..] = *buf else {
        return Ok(None);
    };
    if b1 & 0x80 != 0 {
        return Err("the server sent a masked frame".into());
    }
    if b0 & 0x70 != 0 {
        return Err("the server set reserved frame bits".into());
    }
    let (start, len) = match b1 & 0x7f {
        126 => match rest.first_chunk::<2>() {
            Some(&len) => (4, u64::from(u16::from_be_bytes(len))),
            None => return Ok(None),
        },
        127 => match rest.first_chunk::<8>() {
            Some(&len) => (10, u64::from_be_bytes(len)),
            None => return Ok(None),
        },
        len => (2, u64::from(len)),
    };
    let len = usize::try_from(len)
        .ok()
        .filter(|&len| len <= MAX_MESSAGE)
        .ok_or_else(|| format!("a frame larger than {MAX_MESSAGE} bytes"))?;
    Ok(Some(FrameHead {
        fin: b0 & 0x80 != 0,
        opcode: b0 & 0x0f,
        start,
        len,
    }))
}

/// Reassembles WebSocket messages from frames.
#[derive(Debug, Default)]
struct WsParser {
    /// A message whose last frame has not arrived yet.
    partial: Option<Vec<u8>>,
}

impl WsParser {
    /// Consumes the complete frames at the start of `buf`, handing every
    /// complete message to `on`; true once a close frame came.
    fn feed(&mut self, buf: &mut BytesMut, on: &mut impl FnMut(&[u8])) -> Result<bool, String> {
        loop {
            let Some(head) = frame_head(buf)? else {
                return Ok(false);
            };
            let end = head.start + head.len;
            let Some(payload) = buf.get(head.start..end) else {
                return Ok(false);
            };
            let mut closed = false;
            match head.opcode {
                OP_TEXT | OP_BINARY => {
                    if self.partial.is_some() {
                        return Err("a message began inside a fragmented one".into());
                    }
                    if head.fin {
                        on(payload);
                    } else {
                        self.partial = Some(payload.to_vec());
                    }
                }
                OP_CONTINUATION => {
                    let Some(partial) = self.partial.as_mut() else {
                        return Err("a continuation frame outside a message".into());
                    };
                    if partial.len() + payload.len() > MAX_MESSAGE {
                        return Err(format!("a message larger than {MAX_MESSAGE} bytes"));
                    }
                    partial.extend_from_slice(payload);
                    if head.fin {
                        if let Some(message) = self.partial.take() {
                            on(&message);
                        }
                    }
                }
                OP_CLOSE => closed = true,
                // The server does not ping in practice, and a run is short:
                // an unanswered ping costs nothing here.
                OP_PING | OP_PONG => {}
                other => return Err(format!("unknown WebSocket opcode {other:#x}")),
            }
            buf.advance(end);
            if closed {
                return Ok(true);
            }
        }
    }
}

/// Standard base64 (RFC 4648, with padding).
fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let byte = |i: usize| u32::from(chunk.get(i).copied().unwrap_or(0));
        let triple = (byte(0) << 16) | (byte(1) << 8) | byte(2);
        for i in 0..4 {
            if i <= chunk.len() {
                let sextet = (triple >> (18 - 6 * i)) & 0x3f;
                out.push(char::from(ALPHABET[sextet as usize]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// A `Sec-WebSocket-Key`: 16 random bytes in base64. The server only echoes
/// it hashed, so `RandomState`'s per-instance random keys are random enough.
fn websocket_key(index: u32) -> String {
    let state = RandomState::new();
    let mut nonce = [0u8; 16];
    nonce[..8].copy_from_slice(&state.hash_one(index).to_le_bytes());
    nonce[8..].copy_from_slice(&state.hash_one(!index).to_le_bytes());
    base64(&nonce)
}

/// Reads what the socket has (at least one byte, waiting for it) onto the end
/// of `buf`; 0 at the end of the stream. Cancel-safe: bytes are only ever
/// taken in the synchronous `try_read`.
///
/// It uses the socket's own `readable`/`try_read`, not `AsyncReadExt`, so as
/// not to depend on tokio's `io-util` feature, which this crate does not ask for.
async fn read_some(socket: &TcpStream, buf: &mut BytesMut) -> io::Result<usize> {
    loop {
        socket.readable().await?;
        let len = buf.len();
        buf.resize(len + READ_CHUNK, 0);
        match socket.try_read(&mut buf[len..]) {
            Ok(n) => {
                buf.truncate(len + n);
                return Ok(n);
            }
            Err(e) => {
                buf.truncate(len);
                // Readiness can be a false positive.
                if e.kind() != io::ErrorKind::WouldBlock {
                    return Err(e);
                }
            }
        }
    }
}

/// Writes all of `data` (see [`read_some`] on why not `AsyncWriteExt`).
async fn write_all(socket: &TcpStream, mut data: &[u8]) -> io::Result<()> {
    while !data.is_empty() {
        socket.writable().await?;
        match socket.try_write(data) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => data = &data[n..],
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// A subscriber's open stream.
enum Feed {
    Sse {
        body: Incoming,
        events: SseParser,
        /// Kept so that the connection stays up while the body streams.
        _sender: SendRequest<Full<Bytes>>,
    },
    Ws {
        socket: TcpStream,
        /// Received bytes not yet made into frames.
        buf: BytesMut,
        frames: WsParser,
    },
}

/// What a read of a stream came to.
enum Flow {
    /// More may come.
    More,
    /// The stream is over, for this reason.
    Ended(&'static str),
}

const DELETED: &str = "the queue was deleted";

impl Feed {
    /// `GET /sse/<queue>`, up to its response's head.
    async fn open_sse(ctx: &Fanout) -> Result<Feed, String> {
        let mut sender = connect(ctx.server.addr).await.map_err(|e| e.to_string())?;
        let mut request = request(Method::GET, &ctx.stream_uri, &ctx.server.host, Bytes::new());
        request
            .headers_mut()
            .insert(ACCEPT, HeaderValue::from_static("text/event-stream"));
        sender.ready().await.map_err(|e| e.to_string())?;
        let response = sender
            .send_request(request)
            .await
            .map_err(|e| e.to_string())?;
        if response.status() != StatusCode::OK {
            return Err(format!(
                "GET {} answered {}",
                ctx.stream_uri,
                response.status()
            ));
        }
        Ok(Feed::Sse {
            body: response.into_body(),
            events: SseParser::default(),
            _sender: sender,
        })
    }

    /// `GET /ws/<queue>` with the WebSocket upgrade, up to the `101` answer's
    /// head. `Sec-WebSocket-Accept` is not checked: this client talks to the
    /// server it was pointed at, with no proxy that could cache the answer.
    async fn open_ws(ctx: &Fanout, index: u32) -> Result<Feed, String> {
        let socket = TcpStream::connect(ctx.server.addr)
            .await
            .map_err(|e| format!("connect: {e}"))?;
        socket.set_nodelay(true).map_err(|e| e.to_string())?;
        let handshake = format!(
            "GET {} HTTP/1.1\r\nHost: {}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: {}\r\n\r\n",
            ctx.stream_uri,
            ctx.server.authority,
            websocket_key(index)
        );
        write_all(&socket, handshake.as_bytes())
            .await
            .map_err(|e| format!("send the handshake: {e}"))?;
        let mut buf = BytesMut::with_capacity(READ_CHUNK);
        let head_len = loop {
            if let Some(at) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break at + 4;
            }
            if buf.len() > MAX_HANDSHAKE {
                return Err(format!(
                    "no end to the handshake answer in {MAX_HANDSHAKE} bytes"
                ));
            }
            let read = read_some(&socket, &mut buf)
                .await
                .map_err(|e| format!("read the handshake answer: {e}"))?;
            if read == 0 {
                return Err("the server closed the connection instead of answering".into());
            }
        };
        let status_line = buf[..head_len]
            .split(|&b| b == b'\n')
            .next()
            .map(|line| String::from_utf8_lossy(line).trim_end().to_owned())
            .unwrap_or_default();
        if status_line.split_whitespace().nth(1) != Some("101") {
            return Err(format!(
                "GET {} answered {status_line:?}, not 101",
                ctx.stream_uri
            ));
        }
        // Frames sent right after the answer may have come with it.
        buf.advance(head_len);
        Ok(Feed::Ws {
            socket,
            buf,
            frames: WsParser::default(),
        })
    }

    /// Waits for what the server sends next and counts the messages in it.
    async fn read(&mut self, received: &mut Received, ctx: &Fanout) -> Result<Flow, String> {
        let mut live = true;
        match self {
            Feed::Sse { body, events, .. } => {
                let Some(frame) = body.frame().await else {
                    return Ok(Flow::Ended("the server ended the stream"));
                };
                let frame = frame.map_err(|e| e.to_string())?;
                // Trailers carry no events.
                let Ok(data) = frame.into_data() else {
                    return Ok(Flow::More);
                };
                // One clock read for the whole chunk: every message in it
                // arrived at once.
                let now = Instant::now();
                events.feed(&data, &mut |event| match event {
                    Event::Message(json) => {
                        live &= received.take(json, &ctx.tag, ctx.base, now);
                    }
                    Event::Deleted => live = false,
                })?;
            }
            Feed::Ws {
                socket,
                buf,
                frames,
            } => {
                let read = read_some(socket, buf).await.map_err(|e| e.to_string())?;
                if read == 0 {
                    return Ok(Flow::Ended("the server closed the connection"));
                }
                let now = Instant::now();
                let closed = frames.feed(buf, &mut |json| {
                    live &= received.take(json, &ctx.tag, ctx.base, now);
                })?;
                if closed && live {
                    return Ok(Flow::Ended("the server closed the WebSocket"));
                }
            }
        }
        Ok(if live {
            Flow::More
        } else {
            Flow::Ended(DELETED)
        })
    }

    /// Says goodbye where the protocol has a way to: a WebSocket close frame
    /// (masked, as client frames must be, with an all-zero key). Best effort:
    /// the connection is dropped right after either way.
    fn close(self) {
        if let Feed::Ws { socket, .. } = self {
            let _ = socket.try_write(&[0x80 | OP_CLOSE, 0x80, 0, 0, 0, 0]);
        }
    }
}

/// How a subscriber finished.
#[derive(Debug)]
enum Ending {
    /// It received as many messages as were published.
    Complete,
    /// The deadline passed first.
    TimedOut,
    /// The server ended the stream first.
    Ended(&'static str),
    /// Connecting or reading failed.
    Failed(String),
}

/// What a subscriber task hands back.
struct Outcome {
    index: u32,
    received: Received,
    ending: Ending,
}

/// One subscriber: opens its stream (at most [`OPEN_CONCURRENCY`] at once),
/// says on `ready` whether it could, then counts messages until it has all the
/// run published, the stream ends or `control` says stop.
async fn subscriber(
    ctx: Arc<Fanout>,
    index: u32,
    ready: mpsc::UnboundedSender<Result<(), String>>,
    mut control: watch::Receiver<Control>,
) -> Outcome {
    let mut outcome = Outcome {
        index,
        received: Received::default(),
        ending: Ending::TimedOut,
    };
    let opened = {
        // Held while connecting only: streams being read need no permit. The
        // semaphore is never closed, so an error cannot happen; going ahead
        // without a permit would be harmless anyway.
        let _permit = ctx.gate.acquire().await;
        let open = async {
            match ctx.transport {
                Transport::Sse => Feed::open_sse(&ctx).await,
                Transport::Ws => Feed::open_ws(&ctx, index).await,
            }
        };
        match timeout(REQUEST_TIMEOUT, open).await {
            Ok(opened) => opened,
            Err(_) => Err(format!(
                "no answer to GET {} within {}s",
                ctx.stream_uri,
                REQUEST_TIMEOUT.as_secs()
            )),
        }
    };
    let mut feed = match opened {
        Ok(feed) => feed,
        Err(e) => {
            let _ = ready.send(Err(e.clone()));
            outcome.ending = Ending::Failed(e);
            return outcome;
        }
    };
    // The run waits for every subscriber's word, so it cannot be gone yet;
    // if it were, the control channel below would say so.
    let _ = ready.send(Ok(()));
    drop(ready);
    let mut target = control.borrow_and_update().target;
    enum Step {
        Control(bool),
        Read(Result<Flow, String>),
    }
    outcome.ending = loop {
        if outcome.received.count >= target {
            break Ending::Complete;
        }
        let before = outcome.received.count;
        let step = tokio::select! {
            // Control first: past the deadline, stop even if messages keep coming.
            biased;
            changed = control.changed() => Step::Control(changed.is_ok()),
            read = feed.read(&mut outcome.received, &ctx) => Step::Read(read),
        };
        match step {
            // The run was abandoned (it failed, or was dropped).
            Step::Control(false) => break Ending::TimedOut,
            Step::Control(true) => {
                let now = *control.borrow_and_update();
                if now.stop {
                    break Ending::TimedOut;
                }
                target = now.target;
            }
            Step::Read(Ok(Flow::More)) => {
                // Counted per read, not per message: one atomic add per chunk.
                bump(ctx.delivered.as_ref(), outcome.received.count - before);
            }
            Step::Read(Ok(Flow::Ended(why))) => break Ending::Ended(why),
            Step::Read(Err(e)) => break Ending::Failed(e),
        }
    };
    feed.close();
    outcome
}

/// One publishing connection: takes message numbers from `next` until
/// `--messages` are taken or `deadline` passes, and publishes each with its
/// send time. A failed publish is counted, not retried: the server may have
/// taken it, and a retry would then deliver it twice.
async fn publisher(ctx: Arc<Fanout>, next: Arc<AtomicU64>, deadline: Instant) -> Tally {
    let mut tally = Tally::default();
    let mut connection: Option<SendRequest<Full<Bytes>>> = None;
    while Instant::now() < deadline {
        let sender = match connection.as_mut() {
            Some(sender) => sender,
            None => match timeout_at(deadline, connect(ctx.server.addr)).await {
                Err(_) => break,
                Ok(Err(e)) => {
                    tally.error(e);
                    sleep_until((Instant::now() + RECONNECT_PAUSE).min(deadline)).await;
                    continue;
                }
                Ok(Ok(sender)) => connection.insert(sender),
            },
        };
        // Taken only once connected, so that a failed connection loses no message.
        if next.fetch_add(1, Ordering::Relaxed) >= ctx.messages {
            break;
        }
        let form = ctx.form(ctx.base.elapsed());
        let publish = request(Method::POST, &ctx.publish_uri, &ctx.server.host, form);
        match exchange(sender, publish).await {
            Ok((StatusCode::OK, latency)) => {
                tally.ok(latency);
                bump(ctx.published.as_ref(), 1);
            }
            Ok((status, _)) => tally.other(status),
            Err(e) => {
                tally.error(e);
                connection = None;
            }
        }
    }
    tally
}

/// Asks `GET /stats/<queue>` how many streaming consumers the queue has.
async fn count_consumers(
    sender: &mut SendRequest<Full<Bytes>>,
    ctx: &Fanout,
) -> Result<u64, String> {
    let ask = async {
        sender.ready().await?;
        let stats = request(Method::GET, &ctx.stats_uri, &ctx.server.host, Bytes::new());
        let response = sender.send_request(stats).await?;
        let status = response.status();
        let body = response.into_body().collect().await?.to_bytes();
        Ok::<_, hyper::Error>((status, body))
    };
    let (status, body) = match timeout(REQUEST_TIMEOUT, ask).await {
        Ok(Ok(answer)) => answer,
        Ok(Err(e)) => return Err(format!("GET {}: {e}", ctx.stats_uri)),
        Err(_) => {
            return Err(format!(
                "GET {}: {}",
                ctx.stats_uri,
                Failure::Timeout(REQUEST_TIMEOUT)
            ));
        }
    };
    if status != StatusCode::OK {
        return Err(format!("GET {} answered {status}", ctx.stats_uri));
    }
    let stats: serde_json::Value = serde_json::from_slice(&body)
        .map_err(|e| format!("GET {} answered no JSON: {e}", ctx.stats_uri))?;
    stats
        .get("consumers")
        .and_then(serde_json::Value::as_u64)
        .ok_or_else(|| format!("GET {} answered no \"consumers\" count", ctx.stats_uri))
}

/// Waits until the server counts at least `wanted` consumers of the queue: a
/// stream that is open on this side may not be registered on the server's yet,
/// and a message published before it is would never reach it.
async fn wait_ready(ctx: &Fanout, wanted: u64) -> Result<(), BenchError> {
    let deadline = Instant::now() + READY_TIMEOUT;
    let mut connection: Option<SendRequest<Full<Bytes>>> = None;
    loop {
        let detail = match connection.as_mut() {
            None => match connect(ctx.server.addr).await {
                Ok(sender) => {
                    connection = Some(sender);
                    continue;
                }
                Err(e) => e.to_string(),
            },
            Some(sender) => match count_consumers(sender, ctx).await {
                Ok(count) if count >= wanted => return Ok(()),
                Ok(count) => format!("it counted {count}"),
                Err(e) => {
                    connection = None;
                    e
                }
            },
        };
        if Instant::now() >= deadline {
            return Err(BenchError::NotReady { wanted, detail });
        }
        sleep(READY_POLL).await;
    }
}

/// A queue name no earlier run used: `fanout-<pid>-<milliseconds since 1970>`.
fn fresh_queue() -> String {
    let millis = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |since| since.as_millis());
    format!("fanout-{}-{millis}", std::process::id())
}

/// The soft limit on open files (`u64::MAX` when unlimited) and the hard one
/// as shown, read from the text of `/proc/self/limits`.
pub(crate) fn parse_file_limit(limits: &str) -> Option<(u64, String)> {
    let line = limits
        .lines()
        .find_map(|line| line.strip_prefix("Max open files"))?;
    let mut fields = line.split_whitespace();
    let soft = match fields.next()? {
        "unlimited" => u64::MAX,
        soft => soft.parse().ok()?,
    };
    Some((soft, fields.next()?.to_owned()))
}

/// Fails early when the subscribers cannot all have a socket: raising the
/// limit takes `setrlimit`, which needs `libc`, so the user is told to do it.
/// Where `/proc` does not say, connections fail one by one instead.
fn check_file_limit(subscribers: u32, connections: u32) -> Result<(), BenchError> {
    let Some((soft, hard)) = std::fs::read_to_string("/proc/self/limits")
        .ok()
        .and_then(|limits| parse_file_limit(&limits))
    else {
        return Ok(());
    };
    let needed = u64::from(subscribers) + u64::from(connections) + SPARE_FILES;
    if needed <= soft {
        return Ok(());
    }
    let within_hard = hard == "unlimited" || hard.parse::<u64>().is_ok_and(|hard| needed <= hard);
    let advice = if within_hard {
        format!("raise it first, e.g. `ulimit -n {needed}` (hard limit: {hard})")
    } else {
        format!(
            "that is above the hard limit ({hard}) too: use fewer --subscribers, or have \
             the hard limit raised"
        )
    };
    Err(BenchError::FileLimit {
        subscribers,
        needed,
        soft,
        advice,
    })
}

/// How long the deliveries may take, from the first publish: at least
/// [`MIN_DELIVERY_TIME`], more for runs too large to finish in it even at
/// [`SLOWEST_DELIVERIES_PER_SEC`].
fn delivery_time(messages: u64, subscribers: u32) -> Duration {
    let deliveries = messages.saturating_mul(u64::from(subscribers));
    Duration::from_secs(deliveries / SLOWEST_DELIVERIES_PER_SEC).max(MIN_DELIVERY_TIME)
}

/// Measures streaming fan-out (`--mode fanout`) against a running server.
///
/// Opens `--subscribers` streams of the queue (`--transport`), waits until
/// `GET /stats/<queue>` counts them all, then publishes `--messages` messages
/// over `--connections` keep-alive connections. Each value is a run tag, the
/// send time in microseconds, then `x` up to `--size` bytes; each subscriber
/// reads its stream until it has every message the server accepted, timing
/// each from its send to its receipt and checking that keys increase.
/// Subscribers still waiting after `max(30 s, deliveries / 50,000 s)` from the
/// first publish are counted as timed out rather than waited for.
///
/// Use a queue nobody else publishes to or consumes (the default is a fresh
/// one) with the default broadcast policy: under roundrobin each message goes
/// to one subscriber only, and the run reports them incomplete.
///
/// Fails before any load is sent if the options are wrong, the server cannot be
/// reached, there are too few file descriptors, no subscriber can connect, or
/// the server does not count them; once running, failures are counted.
pub async fn measure_fanout(args: &BenchArgs) -> Result<FanoutReport, BenchError> {
    measure_fanout_with(args, Progress::hidden()).await
}

/// [`measure_fanout`], drawing the progress of each step when `progress` says so.
async fn measure_fanout_with(
    args: &BenchArgs,
    progress: Progress,
) -> Result<FanoutReport, BenchError> {
    if args.size < STAMP_LEN {
        return Err(BenchError::InvalidOption(format!(
            "--size must be at least {STAMP_LEN} with --mode fanout: each value carries \
             a run tag and its send time"
        )));
    }
    if args.subscribers == 0 || args.messages == 0 {
        return Err(BenchError::InvalidOption(
            "--subscribers and --messages must be at least 1".into(),
        ));
    }
    let connections = args.connection_count();
    if connections == 0 {
        return Err(BenchError::InvalidOption(
            "--connections must be at least 1".into(),
        ));
    }
    let queue = args.queue.clone().unwrap_or_else(fresh_queue);
    let stream_uri = queue_uri(args.transport.route(), &queue)?;
    let publish_uri = queue_uri("q", &queue)?;
    let stats_uri = queue_uri("stats", &queue)?;
    check_file_limit(args.subscribers, connections)?;
    let server = client::resolve(&args.server).await?;
    let ctx = Arc::new(Fanout {
        server,
        stream_uri,
        publish_uri,
        stats_uri,
        transport: args.transport,
        tag: format!("{:08x}", RandomState::new().hash_one(&queue) & 0xffff_ffff),
        size: args.size,
        messages: args.messages,
        base: Instant::now(),
        gate: Semaphore::new(OPEN_CONCURRENCY),
        published: progress.counter(),
        delivered: progress.counter(),
    });

    let opening = Instant::now();
    let (control, control_rx) = watch::channel(Control {
        target: args.messages,
        stop: false,
    });
    let (ready_tx, mut ready) = mpsc::unbounded_channel();
    let mut subscribers = JoinSet::new();
    for index in 0..args.subscribers {
        subscribers.spawn(subscriber(
            Arc::clone(&ctx),
            index,
            ready_tx.clone(),
            control_rx.clone(),
        ));
    }
    drop(ready_tx);
    let opened = progress.counter();
    let bar = progress.start(
        "connect",
        Goal::Count(u64::from(args.subscribers)),
        opened.clone(),
    );
    // Each task reports once, then drops its sender: this ends when all have.
    let mut connected = 0u32;
    let mut first_failure = None;
    while let Some(report) = ready.recv().await {
        bump(opened.as_ref(), 1);
        match report {
            Ok(()) => connected += 1,
            Err(e) => {
                first_failure.get_or_insert(e);
            }
        }
    }
    bar.finish().await;
    if connected == 0 {
        return Err(BenchError::NoSubscriber(first_failure.unwrap_or_default()));
    }
    // Returning early drops `subscribers`, which aborts their tasks.
    wait_ready(&ctx, u64::from(connected)).await?;
    let ready_secs = opening.elapsed().as_secs_f64();

    let published_at = Instant::now();
    let deadline = published_at + delivery_time(args.messages, args.subscribers);
    let next = Arc::new(AtomicU64::new(0));
    let mut publishers = JoinSet::new();
    for _ in 0..connections {
        publishers.spawn(publisher(Arc::clone(&ctx), Arc::clone(&next), deadline));
    }
    let bar = progress.start("publish", Goal::Count(args.messages), ctx.published.clone());
    let mut published = Tally::default();
    while let Some(tally) = publishers.join_next().await {
        published.merge(tally?);
    }
    let publish_elapsed = published_at.elapsed();
    bar.finish().await;
    let accepted = published.ok;
    // Subscribers wait for what was accepted, not for what was asked.
    control.send_modify(|control| control.target = accepted);
    let bar = progress.start(
        "deliver",
        Goal::Count(u64::from(connected) * accepted),
        ctx.delivered.clone(),
    );

    let mut outcomes = Vec::with_capacity(subscribers.len());
    loop {
        match timeout_at(deadline, subscribers.join_next()).await {
            Ok(Some(outcome)) => outcomes.push(outcome?),
            Ok(None) => break,
            Err(_) => {
                control.send_modify(|control| control.stop = true);
                while let Some(outcome) = subscribers.join_next().await {
                    outcomes.push(outcome?);
                }
                break;
            }
        }
    }
    bar.finish().await;
    outcomes.sort_unstable_by_key(|outcome| outcome.index);

    let mut report = FanoutReport {
        server: args.server.clone(),
        queue,
        transport: args.transport,
        subscribers: args.subscribers,
        connected,
        messages: args.messages,
        connections,
        size: args.size,
        ready_secs,
        publish: phase_report(Phase::Publish, published, publish_elapsed),
        deliveries: 0,
        expected_deliveries: u64::from(connected) * accepted,
        complete_subscribers: 0,
        out_of_order_subscribers: 0,
        timed_out_subscribers: 0,
        ended_subscribers: 0,
        failed_subscribers: 0,
        first_incomplete: None,
        foreign: 0,
        malformed: 0,
        elapsed_secs: 0.0,
        deliveries_per_sec: 0.0,
        p50_ms: None,
        p99_ms: None,
        max_ms: None,
    };
    let mut latencies = Vec::new();
    let mut last_delivery: Option<Instant> = None;
    for outcome in outcomes {
        let Outcome {
            index,
            received,
            ending,
        } = outcome;
        let got = received.count;
        let incomplete = match ending {
            Ending::Complete if !received.out_of_order => {
                report.complete_subscribers += 1;
                None
            }
            Ending::Complete => {
                report.out_of_order_subscribers += 1;
                Some("keys out of order".to_owned())
            }
            Ending::TimedOut => {
                report.timed_out_subscribers += 1;
                Some(format!("{got} of {accepted} messages by the deadline"))
            }
            Ending::Ended(why) => {
                report.ended_subscribers += 1;
                Some(format!("{why} after {got} of {accepted} messages"))
            }
            Ending::Failed(e) => {
                report.failed_subscribers += 1;
                Some(format!("{e} (after {got} of {accepted} messages)"))
            }
        };
        if report.first_incomplete.is_none() {
            report.first_incomplete = incomplete.map(|what| format!("subscriber {index}: {what}"));
        }
        report.deliveries += got;
        report.foreign += received.foreign;
        report.malformed += received.malformed;
        last_delivery = last_delivery.max(received.last_at);
        latencies.extend(received.latencies);
    }
    latencies.sort_unstable();
    let elapsed = last_delivery.map_or(Duration::ZERO, |last| {
        last.saturating_duration_since(published_at)
    });
    report.elapsed_secs = elapsed.as_secs_f64();
    report.deliveries_per_sec = rate(report.deliveries, elapsed);
    report.p50_ms = percentile_ms(&latencies, 0.50);
    report.p99_ms = percentile_ms(&latencies, 0.99);
    report.max_ms = latencies.last().map(|&us| f64::from(us) / 1000.0);
    Ok(report)
}

fn header_line(args: &BenchArgs) -> String {
    match args.mode {
        Mode::Fanout => format!(
            "restmq bench: {} fanout transport={} queue={} subscribers={} messages={} \
             connections={} size={}B",
            args.server,
            args.transport,
            args.queue.as_deref().unwrap_or("(fresh)"),
            args.subscribers,
            args.messages,
            args.connection_count(),
            args.size
        ),
        Mode::Publish | Mode::Pop | Mode::Both | Mode::Reliable => format!(
            "restmq bench: {} queue={} connections={} duration={}s size={}B",
            args.server,
            phase_queue(args),
            args.connection_count(),
            args.duration,
            args.size
        ),
    }
}

fn millis(value: Option<f64>) -> String {
    value.map_or_else(|| "-".to_owned(), |ms| format!("{ms:.2}"))
}

/// Writes `report` as a table, one row per phase.
fn write_table(out: &mut dyn Write, report: &Report) -> io::Result<()> {
    writeln!(
        out,
        "{:<8} {:>10} {:>10} {:>8} {:>8} {:>8} {:>8} {:>7} {:>7}",
        "phase", "ok", "msgs/s", "p50 ms", "p99 ms", "max ms", "empty", "other", "errors"
    )?;
    for row in &report.phases {
        let empty = match row.phase {
            Phase::Publish => "-".to_owned(),
            Phase::Pop | Phase::Receive => row.empty.to_string(),
        };
        writeln!(
            out,
            "{:<8} {:>10} {:>10.0} {:>8} {:>8} {:>8} {:>8} {:>7} {:>7}",
            row.phase.to_string(),
            row.ok,
            row.msgs_per_sec,
            millis(row.p50_ms),
            millis(row.p99_ms),
            millis(row.max_ms),
            empty,
            row.other,
            row.errors,
        )?;
    }
    for row in &report.phases {
        write_firsts(out, row)?;
    }
    Ok(())
}

/// The first odd status and the first error of a phase, to tell what they were.
fn write_firsts(out: &mut dyn Write, row: &PhaseReport) -> io::Result<()> {
    if let Some(status) = row.first_other {
        writeln!(out, "{}: first other status: {status}", row.phase)?;
    }
    if let Some(error) = &row.first_error {
        writeln!(out, "{}: first error: {error}", row.phase)?;
    }
    Ok(())
}

/// Writes a fan-out report: a publish row (latency of the publish requests),
/// a deliver row (latency from publish sent to message received), then the
/// subscribers' fates.
fn write_fanout_table(out: &mut dyn Write, report: &FanoutReport) -> io::Result<()> {
    writeln!(
        out,
        "{:<8} {:>10} {:>10} {:>10} {:>8} {:>8} {:>8} {:>7}",
        "phase", "msgs", "elapsed s", "msgs/s", "p50 ms", "p99 ms", "max ms", "failed"
    )?;
    let publish = &report.publish;
    writeln!(
        out,
        "{:<8} {:>10} {:>10.3} {:>10.0} {:>8} {:>8} {:>8} {:>7}",
        "publish",
        publish.ok,
        publish.elapsed_secs,
        publish.msgs_per_sec,
        millis(publish.p50_ms),
        millis(publish.p99_ms),
        millis(publish.max_ms),
        publish.other + publish.errors,
    )?;
    writeln!(
        out,
        "{:<8} {:>10} {:>10.3} {:>10.0} {:>8} {:>8} {:>8} {:>7}",
        "deliver",
        report.deliveries,
        report.elapsed_secs,
        report.deliveries_per_sec,
        millis(report.p50_ms),
        millis(report.p99_ms),
        millis(report.max_ms),
        report.subscribers - report.complete_subscribers,
    )?;
    writeln!(
        out,
        "subscribers: {} of {} connected ({}), ready in {:.2}s; {} complete, \
         {} of {} deliveries",
        report.connected,
        report.subscribers,
        report.transport,
        report.ready_secs,
        report.complete_subscribers,
        report.deliveries,
        report.expected_deliveries,
    )?;
    if report.complete_subscribers < report.subscribers {
        writeln!(
            out,
            "incomplete: {} out of order, {} timed out, {} ended by the server, {} failed",
            report.out_of_order_subscribers,
            report.timed_out_subscribers,
            report.ended_subscribers,
            report.failed_subscribers,
        )?;
    }
    if let Some(first) = &report.first_incomplete {
        writeln!(out, "first incomplete: {first}")?;
    }
    writeln!(
        out,
        "latency: publish = request round trip; deliver = publish sent to message received"
    )?;
    if report.foreign > 0 || report.malformed > 0 {
        writeln!(
            out,
            "ignored: {} messages of earlier runs, {} malformed",
            report.foreign, report.malformed
        )?;
    }
    write_firsts(out, publish)
}

/// Prints the header, then the report from `measured`: a table on stdout, or
/// with `--json` the report as JSON on stdout and the table on stderr, so that
/// stdout stays machine-readable.
async fn print<R: Serialize>(
    json: bool,
    header: &str,
    measured: impl Future<Output = Result<R, BenchError>>,
    table: fn(&mut dyn Write, &R) -> io::Result<()>,
) -> Result<(), BenchError> {
    if json {
        eprintln!("{header}");
    } else {
        let mut stdout = io::stdout().lock();
        writeln!(stdout, "{header}")?;
        stdout.flush()?;
    }
    let report = measured.await?;
    if json {
        table(&mut io::stderr().lock(), &report)?;
        let mut stdout = io::stdout().lock();
        serde_json::to_writer_pretty(&mut stdout, &report)?;
        writeln!(stdout)?;
    } else {
        table(&mut io::stdout().lock(), &report)?;
    }
    Ok(())
}

/// Runs the benchmark `args` describe and prints its report: a table on
/// stdout, or with `--json` the report as JSON on stdout and the table on
/// stderr.
pub async fn run(args: &BenchArgs) -> Result<(), BenchError> {
    if args.mode == Mode::Fanout {
        // The fresh queue is named here, so that the header shows the queue used.
        let mut args = args.clone();
        args.queue.get_or_insert_with(fresh_queue);
        let header = header_line(&args);
        return print(
            args.json,
            &header,
            measure_fanout_with(&args, Progress::on_terminal()),
            write_fanout_table,
        )
        .await;
    }
    let measured = measure_with(args, Progress::on_terminal());
    print(args.json, &header_line(args), measured, write_table).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn takes_nearest_rank_percentiles() {
        let sorted: Vec<u32> = (1..=100).map(|ms| ms * 1000).collect();
        assert_eq!(percentile_ms(&sorted, 0.50), Some(50.0));
        assert_eq!(percentile_ms(&sorted, 0.99), Some(99.0));
        assert_eq!(percentile_ms(&[7000], 0.99), Some(7.0));
        assert_eq!(percentile_ms(&[], 0.50), None);
    }

    /// An unmasked server frame.
    fn frame(fin: bool, opcode: u8, payload: &[u8]) -> Vec<u8> {
        let mut out = vec![if fin { 0x80 } else { 0 } | opcode];
        match payload.len() {
            len @ 0..=125 => out.push(u8::try_from(len).unwrap_or(0)),
            len @ 126..=0xffff => {
                out.push(126);
                out.extend_from_slice(&u16::try_from(len).unwrap_or(0).to_be_bytes());
            }
            len => {
                out.push(127);
                out.extend_from_slice(&(len as u64).to_be_bytes());
            }
        }
        out.extend_from_slice(payload);
        out
    }

    #[test]
    fn parses_websocket_frames_across_reads() {
        let big = vec![b'z'; 70_000];
        let mut stream = Vec::new();
        stream.extend(frame(true, OP_TEXT, b"one"));
        stream.extend(frame(true, OP_PING, b""));
        stream.extend(frame(false, OP_TEXT, b"tw"));
        stream.extend(frame(true, OP_CONTINUATION, b"o"));
        stream.extend(frame(true, OP_TEXT, &[b'y'; 300]));
        stream.extend(frame(true, OP_TEXT, &big));
        stream.extend(frame(true, OP_CLOSE, b""));
        stream.extend(frame(true, OP_TEXT, b"after close"));
        for step in [1, 7, stream.len()] {
            let mut parser = WsParser::default();
            let mut buf = BytesMut::new();
            let mut seen = Vec::new();
            let mut closed = false;
            for chunk in stream.chunks(step) {
                buf.extend_from_slice(chunk);
                closed = parser
                    .feed(&mut buf, &mut |message| seen.push(message.len()))
                    .expect("valid frames");
                if closed {
                    break;
                }
            }
            assert!(closed, "step {step}");
            assert_eq!(seen, [3, 3, 300, 70_000], "step {step}");
        }
    }

    #[test]
    fn rejects_bad_websocket_frames() {
        assert!(frame_head(&[0x81, 0x83, 1, 2, 3, 4]).is_err(), "masked");
        assert!(frame_head(&[0xc1, 0x00]).is_err(), "compressed");
        let mut huge = vec![0x81, 127];
        huge.extend_from_slice(&u64::MAX.to_be_bytes());
        assert!(frame_head(&huge).is_err(), "too large");
        assert_eq!(frame_head(&[0x81]), Ok(None));
        assert_eq!(frame_head(&[0x81, 126, 1]), Ok(None));
    }

    #[test]
    fn encodes_base64() {
        // RFC 6455's example key, and RFC 4648's padding cases.
        assert_eq!(base64(b"the sample nonce"), "dGhlIHNhbXBsZSBub25jZQ==");
        assert_eq!(base64(b"f"), "Zg==");
        assert_eq!(base64(b"fo"), "Zm8=");
        assert_eq!(base64(b"foo"), "Zm9v");
        assert_eq!(websocket_key(7).len(), 24);
    }

    #[test]
    fn reads_the_open_file_limit() {
        let limits = "Limit                     Soft Limit           Hard Limit           Units     \n\
                      Max processes             63704                63704                processes \n\
                      Max open files            1024                 524288               files     \n";
        assert_eq!(parse_file_limit(limits), Some((1024, "524288".into())));
        let unlimited =
            "Max open files            unlimited            unlimited            files\n";
        assert_eq!(
            parse_file_limit(unlimited),
            Some((u64::MAX, "unlimited".into()))
        );
        assert_eq!(parse_file_limit("nothing"), None);
    }

    #[test]
    fn times_and_orders_received_messages() {
        let base = Instant::now();
        let now = base + Duration::from_millis(5);
        let mut received = Received::default();
        let message = |id: u64, sent_us: u64| {
            format!("{{\"key\":\"q:{id}\",\"value\":\"abcdef01{sent_us:012}xxx\"}}")
        };
        assert!(received.take(message(1, 1000).as_bytes(), "abcdef01", base, now));
        assert!(received.take(message(2, 2000).as_bytes(), "abcdef01", base, now));
        assert!(received.take(
            br#"{"key":"q:0","value":"leftover"}"#,
            "abcdef01",
            base,
            now
        ));
        assert!(received.take(b"{}", "abcdef01", base, now));
        assert_eq!(received.count, 2);
        assert_eq!(received.foreign, 1);
        assert_eq!(received.malformed, 1);
        assert!(!received.out_of_order);
        assert_eq!(received.latencies, [4000, 3000]);
        assert!(received.take(message(2, 3000).as_bytes(), "abcdef01", base, now));
        assert!(received.out_of_order, "a repeated key is out of order");
        assert!(
            !received.take(b"null", "abcdef01", base, now),
            "null ends the stream"
        );
    }

    #[test]
    fn sizes_the_delivery_deadline() {
        assert_eq!(delivery_time(1000, 100), MIN_DELIVERY_TIME);
        assert_eq!(delivery_time(100_000, 1000), Duration::from_secs(2000));
    }
}
