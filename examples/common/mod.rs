//! What the examples share: a restmq server to talk to, and the few HTTP calls
//! they make to it.
//!
//! By default an example starts its own restmq in-process, on a free port of
//! 127.0.0.1 with a temporary data directory, so that it runs with one command
//! and leaves nothing behind. With `--server URL` it talks to a restmq that is
//! already running (`cargo run --release` in another terminal) instead. Either
//! way the example's parts speak plain HTTP to it, as separate processes would.
#![allow(dead_code)] // each example uses a part of this module

use std::time::Duration;

use anyhow::{Context, Result, bail};
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};
use serde::Deserialize;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// Longest long poll the examples ask for, in seconds: under restmq's default
/// `--max-wait` (20), so a server run with default settings accepts it.
pub const WAIT: u64 = 10;

/// A restmq server and a client for it.
pub struct Restmq {
    /// Where it answers, without a trailing slash: `http://127.0.0.1:8888`.
    pub base: String,
    /// Keeps connections alive between calls.
    pub http: reqwest::Client,
    embedded: Option<Embedded>,
}

/// A server this process started, and what it needs to stop it.
struct Embedded {
    stop: oneshot::Sender<()>,
    task: JoinHandle<std::io::Result<()>>,
    // Removed when dropped, after the server has stopped.
    _dir: tempfile::TempDir,
}

/// One message received with a visibility timeout.
#[derive(Debug, Deserialize)]
pub struct Delivery {
    /// `<queue>:<n>`, the same on every delivery of the message.
    pub key: String,
    /// The message, as published.
    pub value: String,
    /// How many times it has been delivered, this time included.
    pub count: u64,
    /// What `/ack` needs to delete it.
    pub receipt: String,
}

/// Opens a restmq store in a new temporary directory, for a server of our own.
pub async fn open_temporary() -> Result<(restmq::AppState, tempfile::TempDir)> {
    let dir = tempfile::tempdir().context("creating a temporary data directory")?;
    let state = restmq::open(&restmq::config::Config::new(dir.path()))
        .await
        .context("opening restmq's store")?;
    Ok((state, dir))
}

/// A client whose timeout outlasts the longest long poll.
pub fn client() -> Result<reqwest::Client> {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(WAIT + 20))
        .build()
        .context("building an HTTP client")
}

impl Restmq {
    /// Connects to `server` when given, else starts a restmq of our own.
    pub async fn start_or_connect(server: Option<&str>) -> Result<Restmq> {
        match server {
            Some(url) => Restmq::connect(url).await,
            None => Restmq::start().await,
        }
    }

    /// Starts restmq in this process, on a free port of 127.0.0.1.
    pub async fn start() -> Result<Restmq> {
        let (state, dir) = open_temporary().await?;
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .context("binding a port for restmq")?;
        let base = format!("http://{}", listener.local_addr()?);
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(restmq::serve(listener, state, async {
            let _ = stopped.await;
        }));
        Ok(Restmq {
            base,
            http: client()?,
            embedded: Some(Embedded {
                stop,
                task,
                _dir: dir,
            }),
        })
    }

    /// Uses the restmq at `url`, after checking that it answers.
    pub async fn connect(url: &str) -> Result<Restmq> {
        let base = url.trim_end_matches('/').to_string();
        let http = client()?;
        let health = http
            .get(format!("{base}/healthz"))
            .send()
            .await
            .with_context(|| format!("no restmq answers at {base}"))?;
        if !health.status().is_success() {
            bail!("{base}/healthz answered {}", health.status());
        }
        Ok(Restmq {
            base,
            http,
            embedded: None,
        })
    }

    /// Says which server this is, for the first line an example prints.
    pub fn describe(&self) -> String {
        match self.embedded {
            Some(_) => format!("{} (in-process, temporary data directory)", self.base),
            None => self.base.clone(),
        }
    }

    /// The URL of `route` (`q`, `ws`, …) for `queue`.
    pub fn url(&self, route: &str, queue: &str) -> String {
        format!("{}/{route}/{}", self.base, encode(queue))
    }

    /// Publishes one message (JSON, or any text), stored as is.
    pub async fn publish(&self, queue: &str, body: String) -> Result<()> {
        let answer = self
            .http
            .post(self.url("q", queue))
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await?;
        expect_success(answer, "publishing").await
    }

    /// Publishes many messages in one request, stored all or none: an
    /// `application/x-ndjson` body holds one message per line.
    pub async fn publish_batch(&self, queue: &str, lines: &[String]) -> Result<()> {
        // restmq refuses bodies over 1 MiB by default: send big batches in parts.
        let mut part = String::new();
        for line in lines {
            if !part.is_empty() && part.len() + line.len() > 512 * 1024 {
                self.publish_lines(queue, std::mem::take(&mut part)).await?;
            }
            part.push_str(line);
            part.push('\n');
        }
        if !part.is_empty() {
            self.publish_lines(queue, part).await?;
        }
        Ok(())
    }

    async fn publish_lines(&self, queue: &str, body: String) -> Result<()> {
        let answer = self
            .http
            .post(self.url("q", queue))
            .header("content-type", "application/x-ndjson")
            .body(body)
            .send()
            .await?;
        expect_success(answer, "publishing a batch").await
    }

    /// Receives up to `max` messages, waiting up to [`WAIT`] seconds for the
    /// first; each stays hidden from other consumers for `visibility` seconds,
    /// and comes back unless acknowledged in time.
    pub async fn receive(&self, queue: &str, visibility: u64, max: u32) -> Result<Vec<Delivery>> {
        let answer = self
            .http
            .get(format!(
                "{}?wait={WAIT}&visibility={visibility}&max={max}",
                self.url("q", queue)
            ))
            .send()
            .await?;
        if answer.status() == reqwest::StatusCode::NO_CONTENT {
            return Ok(Vec::new());
        }
        if !answer.status().is_success() {
            return expect_success(answer, "receiving")
                .await
                .map(|()| Vec::new());
        }
        answer.json().await.context("reading the messages received")
    }

    /// Acknowledges deliveries: their messages are done, and deleted.
    pub async fn ack(&self, receipts: &[String]) -> Result<()> {
        if receipts.is_empty() {
            return Ok(());
        }
        let form: Vec<(&str, &str)> = receipts.iter().map(|r| ("receipt", r.as_str())).collect();
        let answer = self
            .http
            .post(format!("{}/ack", self.base))
            .form(&form)
            .send()
            .await?;
        expect_success(answer, "acknowledging").await
    }

    /// Stops the server, if this process started it, and removes its data.
    pub async fn stop(self) -> Result<()> {
        if let Some(embedded) = self.embedded {
            let _ = embedded.stop.send(());
            embedded.task.await.context("restmq's task")??;
        }
        Ok(())
    }
}

/// Characters left as they are in a queue name in a URL path: restmq takes the
/// whole rest of the path as the name, `/` and `:` included.
const PATH: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'~')
    .remove(b':')
    .remove(b'/');

fn encode(queue: &str) -> String {
    utf8_percent_encode(queue, PATH).to_string()
}

/// Turns an unsuccessful answer into an error that quotes restmq's reason.
async fn expect_success(answer: reqwest::Response, doing: &str) -> Result<()> {
    let status = answer.status();
    if status.is_success() {
        return Ok(());
    }
    let body = answer.text().await.unwrap_or_default();
    bail!("{doing} failed: {status} {}", body.trim())
}

/// FNV-1a, a hash that every process computes the same way (std's hasher
/// promises no such thing across Rust versions): mappers in separate processes
/// must agree on which reducer owns a word.
pub fn fnv1a(text: &str) -> u64 {
    text.bytes().fold(0xcbf2_9ce4_8422_2325, |hash, byte| {
        (hash ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// The words of `text`, lowercased: runs of letters, digits and inner
/// apostrophes ("don't" is one word). The browser example's page splits the
/// same way, so that its counts can be checked against this.
pub fn words(text: &str) -> impl Iterator<Item = String> + '_ {
    text.split(|c: char| !(c.is_alphanumeric() || c == '\''))
        .map(|word| word.trim_matches('\''))
        .filter(|word| !word.is_empty())
        .map(str::to_lowercase)
}

/// Counts the words of `text`.
pub fn count_words(text: &str) -> std::collections::HashMap<String, u64> {
    let mut counts = std::collections::HashMap::new();
    for word in words(text) {
        *counts.entry(word).or_insert(0) += 1;
    }
    counts
}

/// Splits `text` into chunks of whole lines holding at least `words_per_chunk`
/// words each (the last may hold fewer); lines without words are kept with
/// their neighbours so that nothing is dropped.
pub fn chunks(text: &str, words_per_chunk: usize) -> Vec<String> {
    let mut chunks = Vec::new();
    let mut chunk = String::new();
    let mut in_chunk = 0;
    for line in text.lines() {
        chunk.push_str(line);
        chunk.push('\n');
        in_chunk += words(line).count();
        if in_chunk >= words_per_chunk.max(1) {
            chunks.push(std::mem::take(&mut chunk));
            in_chunk = 0;
        }
    }
    if in_chunk > 0 {
        chunks.push(chunk);
    }
    chunks
}

/// The `top` most frequent words, most frequent first (ties alphabetically).
pub fn top(counts: &std::collections::HashMap<String, u64>, top: usize) -> Vec<(&str, u64)> {
    let mut all: Vec<(&str, u64)> = counts.iter().map(|(w, n)| (w.as_str(), *n)).collect();
    all.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(b.0)));
    all.truncate(top);
    all
}

/// Prints the top words and totals, and whether `counted` equals a direct count
/// of `text`; true when it does.
pub fn report(counted: &std::collections::HashMap<String, u64>, text: &str, top_n: usize) -> bool {
    println!("top {top_n} words:");
    for (word, n) in top(counted, top_n) {
        println!("{n:>7}  {word}");
    }
    let total: u64 = counted.values().sum();
    println!("total: {total} words, {} distinct", counted.len());
    let direct = count_words(text);
    if &direct == counted {
        println!("ok: equal to a direct count");
        true
    } else {
        let expected: u64 = direct.values().sum();
        println!(
            "MISMATCH: a direct count finds {expected} words, {} distinct",
            direct.len()
        );
        false
    }
}

/// A short identifier for this run, so that runs sharing a server keep apart.
pub fn run_id() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos() ^ d.as_secs() as u32)
        .unwrap_or(0);
    format!("{:08x}", nanos ^ std::process::id().rotate_left(16))
}

/// Reads the input text: a file, `-` for standard input, or `sample` when none.
pub fn read_input(path: Option<&std::path::Path>, sample: &str) -> Result<String> {
    use std::io::Read;
    match path {
        None => Ok(sample.to_string()),
        Some(p) if p.as_os_str() == "-" => {
            let mut text = String::new();
            std::io::stdin()
                .read_to_string(&mut text)
                .context("reading standard input")?;
            Ok(text)
        }
        Some(p) => std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display())),
    }
}

/// Resolves at Ctrl-C or SIGTERM, so that an example stopped either way still
/// stops its restmq and removes its temporary data directory.
pub async fn stop_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        if let Ok(mut term) = signal(SignalKind::terminate()) {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
            return;
        }
    }
    let _ = tokio::signal::ctrl_c().await;
}
