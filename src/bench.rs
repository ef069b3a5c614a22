//! `restmq bench`: a load generator for a running server.
//!
//! Each connection is one task holding one keep-alive HTTP/1 connection and
//! issuing requests back to back until the phase's deadline, so the number of
//! requests in flight is exactly `--connections`. A phase publishes
//! (`POST /q/<queue>`) or pops (`GET /q/<queue>`); `--mode both` publishes for
//! `--duration` seconds, then pops the same queue for as long, or until it is
//! drained: each connection stops at its first empty answer (204).

use std::fmt;
use std::io::{self, Write};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use clap::{Args, ValueEnum};
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::{self, SendRequest};
use hyper::header::{CONTENT_TYPE, HOST, HeaderValue};
use hyper::{Method, Request, StatusCode, Uri};
use hyper_util::rt::TokioIo;
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};
use serde::Serialize;
use tokio::net::TcpStream;
use tokio::task::JoinSet;
use tokio::time::{Instant, sleep_until, timeout, timeout_at};

/// How long one request may take before it counts as an error and its
/// connection is replaced. Requests in flight at the deadline are allowed to
/// finish (cutting them off would lose track of publishes the server did
/// accept), so this also bounds how far a phase can overrun a stuck server.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// Pause after a failed connection attempt, so that a refusing server is not
/// hammered by a tight reconnect loop that would only inflate the error count.
const RECONNECT_PAUSE: Duration = Duration::from_millis(50);

/// Characters escaped in the queue's path segment: all but RFC 3986's unreserved.
const PATH_SEGMENT: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'~');

/// Options of `restmq bench`.
#[derive(Debug, Clone, Args)]
pub struct BenchArgs {
    /// Base URL of the server (http only: `http://host[:port]`).
    #[arg(long, default_value = "http://127.0.0.1:8888")]
    pub server: String,
    /// Concurrent keep-alive connections, each with one request in flight.
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u32).range(1..))]
    pub connections: u32,
    /// Length of each phase, in seconds.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..))]
    pub duration: u64,
    /// Size of each published message, in bytes.
    #[arg(long, default_value_t = 100)]
    pub size: usize,
    /// Queue to publish to and pop from.
    #[arg(long, default_value = "bench")]
    pub queue: String,
    /// Which phases to run.
    #[arg(long, value_enum, default_value_t = Mode::Both)]
    pub mode: Mode,
    /// Print the report as JSON on stdout (the table then goes to stderr).
    #[arg(long)]
    pub json: bool,
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
}

impl Mode {
    fn phases(self) -> &'static [Phase] {
        match self {
            Mode::Publish => &[Phase::Publish],
            Mode::Pop => &[Phase::Pop],
            Mode::Both => &[Phase::Publish, Phase::Pop],
        }
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
}

impl fmt::Display for Phase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Phase::Publish => "publish",
            Phase::Pop => "pop",
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

/// Where and what to send, shared by every connection task.
struct Target {
    addr: SocketAddr,
    host: HeaderValue,
    uri: Uri,
    form: Bytes,
}

impl Target {
    fn request(&self, phase: Phase) -> Request<Full<Bytes>> {
        let mut request = match phase {
            Phase::Publish => Request::new(Full::new(self.form.clone())),
            Phase::Pop => Request::new(Full::new(Bytes::new())),
        };
        *request.uri_mut() = self.uri.clone();
        request.headers_mut().insert(HOST, self.host.clone());
        if phase == Phase::Publish {
            *request.method_mut() = Method::POST;
            request.headers_mut().insert(
                CONTENT_TYPE,
                HeaderValue::from_static("application/x-www-form-urlencoded"),
            );
        }
        request
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

/// A failed exchange, from connecting to reading the whole response.
#[derive(Debug, thiserror::Error)]
enum Transport {
    #[error("connect: {0}")]
    Connect(#[from] io::Error),
    #[error("{0}")]
    Http(#[from] hyper::Error),
    #[error("no answer within {}s", REQUEST_TIMEOUT.as_secs())]
    Timeout,
}

/// The host, port and `Host` header value of an `http://host[:port][/]` URL.
fn parse_server(url: &str) -> Result<(String, u16, String), BenchError> {
    let invalid = |reason: &str| BenchError::InvalidServer {
        url: url.to_owned(),
        reason: reason.to_owned(),
    };
    let rest = match url.split_once("://") {
        Some((scheme, rest)) if scheme.eq_ignore_ascii_case("http") => rest,
        Some((scheme, _)) => {
            return Err(invalid(&format!(
                "only http:// is supported, not {scheme}://"
            )));
        }
        None => return Err(invalid("expected http://host[:port]")),
    };
    let authority = rest.strip_suffix('/').unwrap_or(rest);
    if authority.contains(['/', '?', '#']) {
        return Err(invalid(
            "a path, query or fragment is not supported; give http://host[:port]",
        ));
    }
    if authority.contains('@') {
        return Err(invalid("user information is not supported"));
    }
    let (host, port) = if let Some(bracketed) = authority.strip_prefix('[') {
        let (host, after) = bracketed
            .split_once(']')
            .ok_or_else(|| invalid("an IPv6 address lacks its closing ]"))?;
        match after {
            "" => (host, None),
            _ => match after.strip_prefix(':') {
                Some(port) => (host, Some(port)),
                None => return Err(invalid("unexpected text after the IPv6 address")),
            },
        }
    } else {
        match authority.split_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (authority, None),
        }
    };
    if host.is_empty() {
        return Err(invalid("the host is missing"));
    }
    let port = match port {
        None => 80,
        Some(port) => port
            .parse::<u16>()
            .ok()
            .filter(|&p| p != 0)
            .ok_or_else(|| invalid(&format!("{port:?} is not a port number")))?,
    };
    Ok((host.to_owned(), port, authority.to_owned()))
}

/// The first of `candidates` that accepts a connection, or the last failure
/// (`None` when there is no candidate at all).
///
/// Probing up front means a server that is down is reported as such rather
/// than as a table of nothing but errors, and a name such as `localhost` that
/// resolves to both `::1` and `127.0.0.1` lands on the one the server listens on.
async fn reachable(
    candidates: &[SocketAddr],
) -> Result<SocketAddr, Option<(SocketAddr, io::Error)>> {
    let mut failure = None;
    for &addr in candidates {
        match TcpStream::connect(addr).await {
            Ok(_) => return Ok(addr),
            Err(e) => failure = Some((addr, e)),
        }
    }
    Err(failure)
}

/// Checks the options and resolves the server once, so that every
/// reconnection reuses the same address instead of a fresh DNS lookup.
async fn target(args: &BenchArgs) -> Result<Target, BenchError> {
    if args.connections == 0 {
        return Err(BenchError::InvalidOption(
            "--connections must be at least 1".into(),
        ));
    }
    if args.duration == 0 {
        return Err(BenchError::InvalidOption(
            "--duration must be at least 1".into(),
        ));
    }
    if args.queue.is_empty() || args.queue.chars().any(char::is_control) {
        return Err(BenchError::InvalidOption(
            "--queue must be non-empty, without control characters".into(),
        ));
    }
    let (host, port, authority) = parse_server(&args.server)?;
    let host_header = HeaderValue::from_str(&authority).map_err(|_| BenchError::InvalidServer {
        url: args.server.clone(),
        reason: "the host is not a valid Host header".into(),
    })?;
    let lookup = format!("{host}:{port}");
    let candidates: Vec<SocketAddr> = tokio::net::lookup_host((host.as_str(), port))
        .await
        .map_err(|source| BenchError::Resolve {
            host: lookup.clone(),
            source,
        })?
        .collect();
    let addr = reachable(&candidates).await.map_err(|e| match e {
        Some((addr, source)) => BenchError::Connect { addr, source },
        None => BenchError::Resolve {
            host: lookup,
            source: io::Error::new(io::ErrorKind::NotFound, "no address"),
        },
    })?;
    let path = format!("/q/{}", utf8_percent_encode(&args.queue, PATH_SEGMENT));
    let uri = path
        .parse::<Uri>()
        .map_err(|e| BenchError::InvalidOption(format!("--queue gives no valid path: {e}")))?;
    let mut form = Vec::with_capacity(args.size + 6);
    form.extend_from_slice(b"value=");
    form.resize(6 + args.size, b'x');
    Ok(Target {
        addr,
        host: host_header,
        uri,
        form: Bytes::from(form),
    })
}

/// Opens one keep-alive HTTP/1 connection.
async fn connect(addr: SocketAddr) -> Result<SendRequest<Full<Bytes>>, Transport> {
    let stream = TcpStream::connect(addr).await?;
    // Requests are small and latency is what is measured: don't let Nagle hold them.
    stream.set_nodelay(true)?;
    let (sender, connection) = http1::handshake(TokioIo::new(stream)).await?;
    // The connection's own error also fails the request in flight, which is
    // where it is counted, so the result here carries nothing new.
    tokio::spawn(async move {
        let _ = connection.await;
    });
    Ok(sender)
}

/// Sends one request and reads the whole answer: its status and latency.
async fn exchange(
    sender: &mut SendRequest<Full<Bytes>>,
    request: Request<Full<Bytes>>,
) -> Result<(StatusCode, Duration), Transport> {
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
        Err(_) => Err(Transport::Timeout),
    }
}

/// One connection's loop: requests back to back until `deadline`, reconnecting
/// after any failure.
async fn worker(target: Arc<Target>, phase: Phase, deadline: Instant) -> Tally {
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
        match exchange(sender, target.request(phase)).await {
            Ok((status, latency)) => match status {
                StatusCode::OK => {
                    tally.ok += 1;
                    tally
                        .latencies
                        .push(u32::try_from(latency.as_micros()).unwrap_or(u32::MAX));
                }
                // Nothing publishes during a pop phase: once empty, the queue
                // stays empty, and popping on would only dilute the rate.
                StatusCode::NO_CONTENT if phase == Phase::Pop => {
                    tally.empty += 1;
                    break;
                }
                _ => {
                    tally.other += 1;
                    tally.first_other.get_or_insert(status.as_u16());
                }
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

/// Runs one phase on `connections` connections for `duration`.
async fn run_phase(
    target: &Arc<Target>,
    phase: Phase,
    connections: u32,
    duration: Duration,
) -> Result<PhaseReport, BenchError> {
    let started = Instant::now();
    let deadline = started + duration;
    let mut tasks = JoinSet::new();
    for _ in 0..connections {
        tasks.spawn(worker(Arc::clone(target), phase, deadline));
    }
    let mut total = Tally::default();
    while let Some(tally) = tasks.join_next().await {
        total.merge(tally?);
    }
    let elapsed = started.elapsed().as_secs_f64();
    total.latencies.sort_unstable();
    #[allow(clippy::cast_precision_loss)]
    let msgs_per_sec = if elapsed > 0.0 {
        total.ok as f64 / elapsed
    } else {
        0.0
    };
    Ok(PhaseReport {
        phase,
        ok: total.ok,
        empty: total.empty,
        other: total.other,
        first_other: total.first_other,
        errors: total.errors,
        first_error: total.first_error,
        elapsed_secs: elapsed,
        msgs_per_sec,
        p50_ms: percentile_ms(&total.latencies, 0.50),
        p99_ms: percentile_ms(&total.latencies, 0.99),
        max_ms: total.latencies.last().map(|&us| f64::from(us) / 1000.0),
    })
}

/// Runs the phases `args` ask for against a running server and measures them.
///
/// Fails before any load is sent if the options are wrong or the server cannot
/// be reached; once running, failed requests are counted, not returned.
pub async fn measure(args: &BenchArgs) -> Result<Report, BenchError> {
    let target = Arc::new(target(args).await?);
    let duration = Duration::from_secs(args.duration);
    let mut phases = Vec::new();
    for &phase in args.mode.phases() {
        phases.push(run_phase(&target, phase, args.connections, duration).await?);
    }
    Ok(Report {
        server: args.server.clone(),
        queue: args.queue.clone(),
        connections: args.connections,
        duration_secs: args.duration,
        size: args.size,
        phases,
    })
}

fn header_line(args: &BenchArgs) -> String {
    format!(
        "restmq bench: {} queue={} connections={} duration={}s size={}B",
        args.server, args.queue, args.connections, args.duration, args.size
    )
}

fn millis(value: Option<f64>) -> String {
    value.map_or_else(|| "-".to_owned(), |ms| format!("{ms:.2}"))
}

/// Writes `report` as a table, one row per phase.
fn write_table(out: &mut impl Write, report: &Report) -> io::Result<()> {
    writeln!(
        out,
        "{:<8} {:>10} {:>10} {:>8} {:>8} {:>8} {:>8} {:>7} {:>7}",
        "phase", "ok", "msgs/s", "p50 ms", "p99 ms", "max ms", "empty", "other", "errors"
    )?;
    for row in &report.phases {
        let empty = match row.phase {
            Phase::Publish => "-".to_owned(),
            Phase::Pop => row.empty.to_string(),
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
        if let Some(status) = row.first_other {
            writeln!(out, "{}: first other status: {status}", row.phase)?;
        }
        if let Some(error) = &row.first_error {
            writeln!(out, "{}: first error: {error}", row.phase)?;
        }
    }
    Ok(())
}

/// Runs the benchmark and prints its report: a table on stdout, or with
/// `--json` the report as JSON on stdout and the table on stderr, so that
/// stdout stays machine-readable.
pub async fn run(args: &BenchArgs) -> Result<(), BenchError> {
    let header = header_line(args);
    if args.json {
        eprintln!("{header}");
    } else {
        let mut stdout = io::stdout().lock();
        writeln!(stdout, "{header}")?;
        stdout.flush()?;
    }
    let report = measure(args).await?;
    if args.json {
        write_table(&mut io::stderr().lock(), &report)?;
        let mut stdout = io::stdout().lock();
        serde_json::to_writer_pretty(&mut stdout, &report)?;
        writeln!(stdout)?;
    } else {
        write_table(&mut io::stdout().lock(), &report)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_server_urls() {
        let parsed = parse_server("http://127.0.0.1:8888").ok();
        assert_eq!(
            parsed,
            Some(("127.0.0.1".into(), 8888, "127.0.0.1:8888".into()))
        );
        let parsed = parse_server("http://localhost/").ok();
        assert_eq!(parsed, Some(("localhost".into(), 80, "localhost".into())));
        let parsed = parse_server("http://[::1]:9000").ok();
        assert_eq!(parsed, Some(("::1".into(), 9000, "[::1]:9000".into())));
    }

    #[test]
    fn rejects_other_urls() {
        for url in [
            "ftp://x",
            "https://x",
            "x:8888",
            "http://",
            "http://x:port",
            "http://x:0",
            "http://x/q/",
            "http://u@x",
            "http://[::1",
        ] {
            assert!(
                matches!(parse_server(url), Err(BenchError::InvalidServer { .. })),
                "{url} should be rejected"
            );
        }
    }

    #[test]
    fn takes_nearest_rank_percentiles() {
        let sorted: Vec<u32> = (1..=100).map(|ms| ms * 1000).collect();
        assert_eq!(percentile_ms(&sorted, 0.50), Some(50.0));
        assert_eq!(percentile_ms(&sorted, 0.99), Some(99.0));
        assert_eq!(percentile_ms(&[7000], 0.99), Some(7.0));
        assert_eq!(percentile_ms(&[], 0.50), None);
    }
}
