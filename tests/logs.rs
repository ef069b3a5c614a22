//! Structured logs: `--log-format json` writes one JSON object per line, and
//! each request's lines carry its span (method, path, client).

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

/// The real binary, serving on a free port with `args`, logging at `level`;
/// its stderr lines arrive on the channel.
fn serve(dir: &std::path::Path, args: &[&str], level: &str) -> (Child, mpsc::Receiver<String>) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_restmq"))
        .args(["--port", "0", "--data-dir"])
        .arg(dir)
        .args(args)
        .env("RUST_LOG", level)
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .expect("start restmq");
    let stderr = child.stderr.take().expect("stderr");
    let (lines, received) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if lines.send(line).is_err() {
                break;
            }
        }
    });
    (child, received)
}

/// The next line, parsed, within the deadline.
fn next_json(lines: &mpsc::Receiver<String>) -> serde_json::Value {
    let line = lines
        .recv_timeout(Duration::from_secs(10))
        .expect("a log line in time");
    serde_json::from_str(&line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"))
}

#[tokio::test]
async fn json_logs_carry_each_requests_span() {
    let dir = tempfile::tempdir().expect("a directory");
    let (mut child, lines) = serve(dir.path(), &["--log-format", "json"], "restmq=debug");
    let addr = loop {
        let line = next_json(&lines);
        if let Some(addr) = line["fields"]["addr"].as_str() {
            break addr.to_owned();
        }
    };
    let client = reqwest::Client::new();
    let published = client
        .post(format!("http://{addr}/q/logged"))
        .form(&[("value", "hello")])
        .send()
        .await
        .expect("an answer");
    assert_eq!(published.status(), 200);
    let answered = loop {
        let line = next_json(&lines);
        if line["fields"]["message"] == "answered" {
            break line;
        }
    };
    assert_eq!(answered["level"], "DEBUG");
    assert_eq!(answered["fields"]["status"], 200);
    assert!(answered["fields"]["micros"].is_u64(), "{answered}");
    assert_eq!(answered["span"]["name"], "request");
    assert_eq!(answered["span"]["method"], "POST");
    assert_eq!(answered["span"]["path"], "/q/logged");
    assert_eq!(answered["span"]["client"], "127.0.0.1");
    let _ = child.kill();
    let _ = child.wait();
}

/// Listening beyond loopback with no `--acl`, the server says that it is open.
#[test]
fn an_open_server_beyond_loopback_says_so() {
    let dir = tempfile::tempdir().expect("a directory");
    let (mut child, lines) = serve(dir.path(), &["--listen", "0.0.0.0"], "info");
    let warned = std::iter::from_fn(|| lines.recv_timeout(Duration::from_secs(10)).ok())
        .any(|line| line.contains("no --acl"));
    let _ = child.kill();
    let _ = child.wait();
    assert!(warned, "no warning that every route is open");
}
