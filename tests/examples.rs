//! The examples (`examples/*`), run as a user runs them: their compiled
//! binaries, each starting its own restmq, checked by what they print and
//! answer. `cargo test` builds the examples before it runs the tests;
//! `cargo test --test examples` does not: run `cargo build --examples` first.

use std::collections::HashMap;
use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::Value;
use tokio::sync::mpsc;
use tokio::time::{Instant, timeout};
use tokio_tungstenite::tungstenite::Message as Frame;

/// How long a test waits for an example to say or do something.
const DEADLINE: Duration = Duration::from_secs(10);

/// Three lines, ten times: 170 words, 9 distinct, "the" 60 times.
const TEXT: &str = "The cat sat on the mat.\nThe dog sat on the log.\nIt's the end, the END!\n";

/// The compiled example `name`, beside the test binary's directory:
/// target/<profile>/deps/examples-<hash> -> target/<profile>/examples/<name>.
fn example(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("the test binary's path");
    let profile = exe
        .parent()
        .and_then(Path::parent)
        .expect("the test binary is in target/<profile>/deps");
    let path = profile
        .join("examples")
        .join(format!("{name}{}", std::env::consts::EXE_SUFFIX));
    // `cargo test` builds the examples first; `cargo test --test examples`
    // does not (and `--examples` builds them as test harnesses, elsewhere).
    let built = std::fs::metadata(&path)
        .and_then(|m| m.modified())
        .unwrap_or_else(|_| {
            panic!(
                "{} is missing: run `cargo build --examples`",
                path.display()
            )
        });
    // Cargo's own rule: stale when a file it was built from (listed in its
    // dep-info file) changed since.
    let sources = std::fs::read_to_string(path.with_extension("d")).unwrap_or_default();
    let changed: Vec<&str> = sources
        .lines()
        .next()
        .and_then(|line| line.split_once(": "))
        .into_iter()
        .flat_map(|(_, files)| files.split_whitespace())
        .filter(|file| {
            std::fs::metadata(file)
                .and_then(|m| m.modified())
                .is_ok_and(|changed| changed > built)
        })
        .collect();
    assert!(
        changed.is_empty(),
        "{} is older than {changed:?}: run `cargo build --examples`",
        path.display()
    );
    path
}

/// A file holding `TEXT` ten times.
fn input() -> tempfile::NamedTempFile {
    let file = tempfile::NamedTempFile::new().expect("a temporary file");
    std::fs::write(file.path(), TEXT.repeat(10)).expect("write the input");
    file
}

/// An example running, its standard output read line by line. Killed when
/// dropped, should a test fail half-way.
struct Running {
    child: Child,
    lines: mpsc::UnboundedReceiver<String>,
    output: String,
}

impl Running {
    fn start(name: &str, args: &[&str]) -> Running {
        let mut child = Command::new(example(name))
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("start the example {name}: {e}"));
        let stdout = child.stdout.take().expect("the example's stdout");
        let (send, lines) = mpsc::unbounded_channel();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if send.send(line).is_err() {
                    break;
                }
            }
        });
        Running {
            child,
            lines,
            output: String::new(),
        }
    }

    /// Waits for the line that starts with `prefix`; answers the rest of it.
    async fn line_after(&mut self, prefix: &str) -> String {
        let deadline = Instant::now() + DEADLINE;
        loop {
            let line = tokio::time::timeout_at(deadline, self.lines.recv()).await;
            match line {
                Ok(Some(line)) => {
                    self.output.push_str(&line);
                    self.output.push('\n');
                    if let Some(rest) = line.strip_prefix(prefix) {
                        return rest.to_string();
                    }
                }
                Ok(None) => panic!("no line {prefix:?} before the end:\n{}", self.output),
                Err(_) => panic!("no line {prefix:?} within {DEADLINE:?}:\n{}", self.output),
            }
        }
    }

    /// Waits for the example to exit; answers how, and all it printed.
    async fn finish(mut self) -> (ExitStatus, String) {
        let deadline = Instant::now() + DEADLINE;
        loop {
            match tokio::time::timeout_at(deadline, self.lines.recv()).await {
                Ok(Some(line)) => {
                    self.output.push_str(&line);
                    self.output.push('\n');
                }
                Ok(None) => break,
                Err(_) => panic!("still running after {DEADLINE:?}:\n{}", self.output),
            }
        }
        // Its output is closed: it is exiting.
        loop {
            if let Some(status) = self.child.try_wait().expect("the example's status") {
                return (status, std::mem::take(&mut self.output));
            }
            assert!(Instant::now() < deadline, "closed its output but runs on");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

impl Drop for Running {
    /// Stops the example as Ctrl-C would, so that it removes its temporary
    /// data directory; kills it if it does not stop in time.
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            #[cfg(unix)]
            if let Ok(pid) = libc::pid_t::try_from(self.child.id()) {
                // SAFETY: kill(2) on the process this test started and has
                // not waited for yet, so the id is still its own.
                unsafe { libc::kill(pid, libc::SIGTERM) };
                let deadline = std::time::Instant::now() + DEADLINE;
                while let Ok(None) = self.child.try_wait() {
                    if std::time::Instant::now() > deadline {
                        break;
                    }
                    std::thread::sleep(Duration::from_millis(10));
                }
            }
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test]
async fn wordcount_counts_right_even_when_mappers_crash() {
    let input = input();
    let path = input.path().to_str().expect("a UTF-8 path");
    // Two chunks are dropped by their mapper and must come back after their
    // one-second visibility timeout.
    let args = [
        path,
        "--chunk-words",
        "10",
        "--mappers",
        "3",
        "--reducers",
        "2",
        "--crash",
        "2",
        "--visibility",
        "1",
    ];
    let (status, output) = Running::start("wordcount", &args).finish().await;
    assert!(status.success(), "{status}:\n{output}");
    for line in [
        "     60  the\n",
        "     20  end\n",
        "     10  it's\n",
        "total: 170 words, 9 distinct\n",
        "ok: equal to a direct count\n",
    ] {
        assert!(output.contains(line), "no {line:?} in:\n{output}");
    }
    assert_eq!(output.matches("crashed on chunk").count(), 2, "{output}");
}

#[tokio::test]
async fn wordcount_counts_the_bundled_sample() {
    let (status, output) = Running::start("wordcount", &[]).finish().await;
    assert!(status.success(), "{status}:\n{output}");
    assert!(output.contains("ok: equal to a direct count"), "{output}");
}

#[tokio::test]
async fn shortener_counts_clicks_through_restmq() {
    let mut app = Running::start("shortener", &["--port", "0"]);
    let base = app.line_after("shortener: ").await;
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("an HTTP client");
    let long = "https://example.com/a/long/page?with=query";
    let shorten = || {
        http.post(format!("{base}/shorten"))
            .form(&[("url", long)])
            .send()
    };
    let answer = shorten().await.expect("shorten");
    assert_eq!(answer.status(), 200);
    let short = answer
        .text()
        .await
        .expect("the short URL")
        .trim()
        .to_string();
    let again = shorten().await.expect("shorten again");
    assert_eq!(again.text().await.expect("the short URL").trim(), short);
    let code = short.rsplit('/').next().expect("a code").to_string();

    for referer in [
        Some("https://news.example/"),
        Some("https://news.example/"),
        None,
    ] {
        let mut click = http.get(format!("{base}/{code}"));
        if let Some(referer) = referer {
            click = click.header("referer", referer);
        }
        let answer = click.send().await.expect("click");
        assert_eq!(answer.status(), 302);
        assert_eq!(answer.headers()["location"], long);
    }
    let missing = http
        .get(format!("{base}/nosuch"))
        .send()
        .await
        .expect("GET");
    assert_eq!(missing.status(), 404);
    let bad = http
        .post(format!("{base}/shorten"))
        .form(&[("url", "not a url")])
        .send()
        .await
        .expect("shorten");
    assert_eq!(bad.status(), 400);

    // The consumer counts the clicks as they come out of restmq.
    let deadline = Instant::now() + DEADLINE;
    let stats = loop {
        let stats: Value = http
            .get(format!("{base}/stats/{code}"))
            .send()
            .await
            .expect("stats")
            .json()
            .await
            .expect("stats as JSON");
        if stats["clicks"] == 3 {
            break stats;
        }
        assert!(
            Instant::now() < deadline,
            "still {stats} after {DEADLINE:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(stats["url"], long, "{stats}");
    assert_eq!(stats["referers"]["https://news.example/"], 2, "{stats}");
    assert_eq!(stats["referers"]["(none)"], 1, "{stats}");
    assert!(stats["last_click"].is_u64(), "{stats}");
}

/// Counts words as the page does.
fn count_words(text: &str) -> HashMap<String, u64> {
    let mut counts = HashMap::new();
    for word in text
        .split(|c: char| !(c.is_alphanumeric() || c == '\''))
        .map(|w| w.trim_matches('\'').to_lowercase())
        .filter(|w| !w.is_empty())
    {
        *counts.entry(word).or_insert(0) += 1;
    }
    counts
}

/// What the page's workers do, over a WebSocket of restmq's: map each chunk,
/// publish the counts, acknowledge the chunk. Answers the chunks it mapped.
async fn page_worker(base: String, id: u64) -> usize {
    let ws = format!(
        "{}/ws/mr:tasks?ack=1&prefetch=1",
        base.replacen("http", "ws", 1)
    );
    let (mut socket, _) = tokio_tungstenite::connect_async(ws)
        .await
        .expect("the page's WebSocket");
    let http = reqwest::Client::new();
    let mut mapped = 0;
    // Ends when the example, done, closes the socket.
    while let Some(Ok(frame)) = socket.next().await {
        let Frame::Text(text) = frame else { continue };
        let message: Value = serde_json::from_str(&text).expect("a JSON frame");
        if message.is_null() || message.get("reply").is_some() {
            continue;
        }
        let task: Value =
            serde_json::from_str(message["value"].as_str().expect("a value")).expect("a task");
        let result = serde_json::json!({
            "run": task["run"],
            "chunk": task["chunk"],
            "of": task["of"],
            "worker": id,
            "counts": count_words(task["text"].as_str().expect("a text")),
        });
        let published = http
            .post(format!("{base}/q/mr:results"))
            .form(&[("value", result.to_string())])
            .send()
            .await
            .expect("publish a result");
        assert_eq!(published.status(), 200);
        let ack = serde_json::json!({"cmd": "ack", "receipt": message["receipt"]});
        if socket
            .send(Frame::Text(ack.to_string().into()))
            .await
            .is_err()
        {
            break;
        }
        mapped += 1;
    }
    mapped
}

#[tokio::test]
async fn browser_mapreduce_reduces_what_the_page_maps() {
    let input = input();
    let path = input.path().to_str().expect("a UTF-8 path");
    let mut app = Running::start(
        "browser_mapreduce",
        &[path, "--port", "0", "--chunk-words", "10"],
    );
    let url = app.line_after("open ").await;
    let page_url = url.split(' ').next().expect("the page's URL").to_string();
    let base = page_url
        .strip_suffix("/example/")
        .expect("the page at /example/")
        .to_string();

    // The page, and restmq beside it on the same origin.
    let http = reqwest::Client::new();
    let page = http.get(&page_url).send().await.expect("the page");
    assert_eq!(page.status(), 200);
    let page = page.text().await.expect("the page's text");
    assert!(page.contains("const RESTMQ = \"\";"), "{page}");
    assert!(page.contains("/ws/mr:tasks?ack=1&prefetch=1"), "{page}");
    let tasks: Value = http
        .get(format!("{base}/stats/mr:tasks"))
        .send()
        .await
        .expect("restmq's stats")
        .json()
        .await
        .expect("stats as JSON");
    assert_eq!(tasks["len"], 15, "{tasks}");
    let missing = http
        .get(format!("{base}/nosuch"))
        .send()
        .await
        .expect("GET");
    assert_eq!(missing.status(), 404);

    let workers: Vec<_> = (1..=3)
        .map(|id| tokio::spawn(page_worker(base.clone(), id)))
        .collect();
    let (status, output) = app.finish().await;
    assert!(status.success(), "{status}:\n{output}");
    for line in [
        "     60  the\n",
        "total: 170 words, 9 distinct\n",
        "ok: equal to a direct count\n",
    ] {
        assert!(output.contains(line), "no {line:?} in:\n{output}");
    }
    assert_eq!(output.matches("counted by worker").count(), 15, "{output}");
    let mut mapped = 0;
    for worker in workers {
        mapped += timeout(DEADLINE, worker)
            .await
            .expect("the worker ends with the example")
            .expect("the worker");
    }
    assert!(mapped >= 15, "the workers mapped {mapped} chunks");
}
