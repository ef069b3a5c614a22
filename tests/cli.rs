//! The command-line client (`restmq push`, `pop`, `tail`, …): the real binary
//! against a real server, checking what it prints, its exit code and what the
//! server then holds.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::process::{Child, Command, Output, Stdio};

use common::{DEADLINE, TestServer, eventually};
use restmq::config::Config;

/// What a run of the binary came to.
#[derive(Debug)]
struct Run {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

impl From<Output> for Run {
    fn from(output: Output) -> Run {
        Run {
            code: output.status.code(),
            stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        }
    }
}

impl Run {
    /// Asserts exit code 0 and returns stdout.
    fn ok(self) -> String {
        assert_eq!(self.code, Some(0), "{self:#?}");
        self.stdout
    }

    /// Asserts exit code `code`, nothing on stdout, and returns stderr.
    fn fails(self, code: i32) -> String {
        assert_eq!(self.code, Some(code), "{self:#?}");
        assert_eq!(self.stdout, "", "{self:#?}");
        self.stderr
    }
}

/// The binary as a client of the server at `url` (through `RESTMQ_SERVER`),
/// without whatever credentials the environment running the tests has.
fn restmq(url: &str, args: &[&str]) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_restmq"));
    command
        .args(args)
        .env("RESTMQ_SERVER", url)
        .env_remove("RESTMQ_TOKEN")
        .env_remove("RESTMQ_USER")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    command
}

fn url(server: &TestServer) -> String {
    format!("http://{}", server.addr)
}

/// Waits for `child` to exit, off the runtime, killing it and failing the
/// test if it takes longer than the harness's deadline.
async fn finish(child: Child) -> Run {
    let pid = child.id();
    let waiting = tokio::task::spawn_blocking(move || child.wait_with_output());
    match tokio::time::timeout(DEADLINE, waiting).await {
        Ok(output) => output
            .expect("the waiting task")
            .expect("restmq ran")
            .into(),
        Err(_) => {
            kill(pid);
            panic!("restmq did not exit within {DEADLINE:?}");
        }
    }
}

/// Kills a child that overran its deadline, so that a failing test does not
/// leave it behind.
fn kill(pid: u32) {
    let pid = i32::try_from(pid).expect("a pid");
    // SAFETY: kill(2) on our own child's pid has no memory effects.
    unsafe { libc::kill(pid, libc::SIGKILL) };
}

/// Runs `restmq <args>` against `server` to its end.
async fn run(server: &TestServer, args: &[&str]) -> Run {
    let child = restmq(&url(server), args).spawn().expect("restmq starts");
    finish(child).await
}

/// Runs `restmq <args>` against `server` with `input` on stdin.
async fn run_with_stdin(server: &TestServer, args: &[&str], input: &str) -> Run {
    let mut child = restmq(&url(server), args)
        .stdin(Stdio::piped())
        .spawn()
        .expect("restmq starts");
    let mut stdin = child.stdin.take().expect("a stdin pipe");
    stdin.write_all(input.as_bytes()).expect("write stdin");
    drop(stdin);
    finish(child).await
}

#[tokio::test]
async fn push_prints_the_key() {
    let server = TestServer::start().await;
    assert_eq!(
        run(&server, &["push", "jobs", "hello"]).await.ok(),
        "jobs:1\n"
    );
    let json = run(&server, &["push", "jobs", " as is ", "--json"])
        .await
        .ok();
    let json: serde_json::Value = serde_json::from_str(&json).expect("a JSON line");
    assert_eq!(json, serde_json::json!({"queue": "jobs", "key": "jobs:2"}));
    assert_eq!(
        server.pop("jobs").await,
        Some(("jobs:1".into(), "hello".into()))
    );
    assert_eq!(
        server.pop("jobs").await,
        Some(("jobs:2".into(), " as is ".into())),
        "a value given on the command line is stored as given"
    );
    server.stop().await;
}

#[tokio::test]
async fn push_publishes_each_line_of_stdin() {
    let server = TestServer::start().await;
    let stdout = run_with_stdin(&server, &["push", "lines"], "one\ntwo\n\n  \nthree\r\nfour")
        .await
        .ok();
    assert_eq!(
        stdout, "lines:1\nlines:2\nlines:3\nlines:4\n",
        "blank lines skipped"
    );
    for (n, value) in ["one", "two", "three", "four"].into_iter().enumerate() {
        let key = format!("lines:{}", n + 1);
        assert_eq!(server.pop("lines").await, Some((key, value.to_owned())));
    }
    assert_eq!(server.pop("lines").await, None);
    // Nothing on stdin publishes nothing, and is no error.
    assert_eq!(
        run_with_stdin(&server, &["push", "lines"], "").await.ok(),
        ""
    );
    server.stop().await;
}

#[tokio::test]
async fn push_splits_a_long_stdin_into_batches() {
    let server = TestServer::start().await;
    // More lines than one request carries (1000): several batches, one key each.
    let input: String = (1..=2500).map(|n| format!("message {n}\n")).collect();
    let stdout = run_with_stdin(&server, &["push", "many"], &input)
        .await
        .ok();
    let keys: Vec<String> = (1..=2500).map(|n| format!("many:{n}")).collect();
    assert_eq!(stdout.lines().collect::<Vec<_>>(), keys);
    assert_eq!(server.get("/stats/many").await.json()["len"], 2500);
    assert_eq!(
        server.pop("many").await,
        Some(("many:1".into(), "message 1".into()))
    );
    server.stop().await;
}

#[tokio::test]
async fn push_passes_delay_and_ttl() {
    let server = TestServer::start().await;
    run(
        &server,
        &["push", "later", "x", "--delay", "60", "--ttl", "120"],
    )
    .await
    .ok();
    run_with_stdin(&server, &["push", "later", "--delay", "60"], "y\nz\n")
        .await
        .ok();
    let stats = server.get("/stats/later").await.json();
    assert_eq!(stats["delayed"], 3, "{stats}");
    assert_eq!(
        server.pop("later").await,
        None,
        "delayed messages are invisible"
    );
    server.stop().await;
}

#[tokio::test]
async fn push_reports_a_server_error() {
    let server = TestServer::start().await;
    let stderr = run(&server, &["push", "jobs", ""]).await.fails(1);
    assert_eq!(
        stderr,
        "restmq: 400 Bad Request: missing parameter: value\n"
    );
    let stderr = run(&server, &["push", "", "x"]).await.fails(2);
    assert!(stderr.contains("queue name"), "{stderr}");
    server.stop().await;
}

#[tokio::test]
async fn pop_prints_the_value_then_fails_on_an_empty_queue() {
    let server = TestServer::start().await;
    server.publish("jobs", "hello world").await;
    assert_eq!(run(&server, &["pop", "jobs"]).await.ok(), "hello world\n");
    let stderr = run(&server, &["pop", "jobs"]).await.fails(1);
    assert_eq!(stderr, "restmq: queue jobs is empty\n");
    let stderr = run(&server, &["pop", "jobs", "--max", "3", "--json"])
        .await
        .fails(1);
    assert!(stderr.contains("empty"), "{stderr}");
    server.stop().await;
}

#[tokio::test]
async fn pop_prints_json_and_several_messages() {
    let server = TestServer::start().await;
    for value in ["a", "b", "c"] {
        server.publish("jobs", value).await;
    }
    let one = run(&server, &["pop", "jobs", "--json"]).await.ok();
    let one: serde_json::Value = serde_json::from_str(&one).expect("JSON");
    assert_eq!(one["key"], "jobs:1");
    assert_eq!(one["value"], "a");
    assert_eq!(
        run(&server, &["pop", "jobs", "--max", "5"]).await.ok(),
        "b\nc\n"
    );
    assert_eq!(server.pop("jobs").await, None);
    server.stop().await;
}

#[tokio::test]
async fn pop_waits_for_a_message() {
    let server = TestServer::start().await;
    let child = restmq(&url(&server), &["pop", "jobs", "--wait", "10"])
        .spawn()
        .expect("restmq starts");
    // Published once the long poll is counted, so the wait is what gets it.
    eventually("the long poll", || async {
        let stats = server.get("/stats/jobs").await.json();
        (stats["waiting"] == 1).then_some(())
    })
    .await;
    server.publish("jobs", "worth the wait").await;
    assert_eq!(finish(child).await.ok(), "worth the wait\n");
    server.stop().await;
}

#[tokio::test]
async fn tail_prints_messages_published_after_it_started() {
    let server = TestServer::start().await;
    let child = restmq(&url(&server), &["tail", "feed", "--count", "2"])
        .spawn()
        .expect("restmq starts");
    server.wait_consumers("feed", 1).await;
    server.publish("feed", "first").await;
    server.publish("feed", "second").await;
    let run = finish(child).await;
    assert_eq!(run.stderr, "", "{run:#?}");
    assert_eq!(run.ok(), "first\nsecond\n");
    server.stop().await;
}

#[tokio::test]
async fn tail_json_ends_when_the_queue_is_purged() {
    let server = TestServer::start().await;
    let mut child = restmq(&url(&server), &["tail", "feed", "--json"])
        .spawn()
        .expect("restmq starts");
    server.wait_consumers("feed", 1).await;
    let key = server.publish("feed", "only").await;
    // Purged only once the message is printed, so that it is not in flight.
    let stdout = child.stdout.take().expect("a stdout pipe");
    let pid = child.id();
    let reading = tokio::task::spawn_blocking(move || {
        let mut reader = BufReader::new(stdout);
        let mut line = String::new();
        reader.read_line(&mut line).map(|_| (line, reader))
    });
    let Ok(read) = tokio::time::timeout(DEADLINE, reading).await else {
        kill(pid);
        panic!("tail printed nothing within {DEADLINE:?}");
    };
    let (line, mut rest) = read.expect("the reading task").expect("read stdout");
    let line: serde_json::Value = serde_json::from_str(&line).expect("a JSON line");
    assert_eq!(line, serde_json::json!({"key": key, "value": "only"}));
    assert_eq!(server.delete("/q/feed").await.status, 200);
    let run = finish(child).await;
    assert_eq!(run.code, Some(0), "{run:#?}");
    assert_eq!(
        run.stderr, "restmq: queue feed was purged; the server ended its stream\n",
        "{run:#?}"
    );
    let mut after = String::new();
    rest.read_to_string(&mut after).expect("read stdout");
    assert_eq!(after, "", "nothing after the message");
    server.stop().await;
}

#[tokio::test]
async fn stats_prints_a_table_of_every_queue() {
    let server = TestServer::start().await;
    assert_eq!(run(&server, &["stats"]).await.ok(), "no queues\n");
    server.publish("jobs", "a").await;
    server.publish("jobs", "b").await;
    server.publish("mail", "c").await;
    server
        .post_form("/p/mail", &[("policy", "roundrobin")])
        .await;
    server
        .post_form("/control/mail", &[("status", "stop")])
        .await;
    let stdout = run(&server, &["stats"]).await.ok();
    let rows: Vec<Vec<&str>> = stdout
        .lines()
        .map(|line| line.split_whitespace().collect())
        .collect();
    assert_eq!(
        rows,
        [
            vec![
                "queue",
                "len",
                "status",
                "policy",
                "consumers",
                "waiting",
                "inflight",
                "delayed"
            ],
            vec!["jobs", "2", "running", "default", "0", "0", "0", "0"],
            vec!["mail", "1", "paused", "roundrobin", "0", "0", "0", "0"],
        ],
        "{stdout}"
    );
    // Aligned: every line as wide as the header.
    let widths: Vec<usize> = stdout.lines().map(str::len).collect();
    assert!(widths.iter().all(|&w| w == widths[0]), "{stdout}");

    let one = run(&server, &["stats", "jobs"]).await.ok();
    assert!(
        one.lines().any(|l| l.split_whitespace().eq(["len", "2"])),
        "{one}"
    );
    assert!(
        one.lines()
            .any(|l| l.split_whitespace().eq(["queue", "jobs"])),
        "{one}"
    );
    server.stop().await;
}

#[tokio::test]
async fn stats_json_prints_the_servers_answer() {
    let server = TestServer::start().await;
    server.publish("jobs", "a").await;
    let all = run(&server, &["stats", "--json"]).await.ok();
    let all: serde_json::Value = serde_json::from_str(&all).expect("JSON");
    assert_eq!(all["count"], 1, "{all}");
    assert_eq!(all["queues"]["jobs"]["len"], 1, "{all}");
    let one = run(&server, &["stats", "jobs", "--json"]).await.ok();
    let one: serde_json::Value = serde_json::from_str(&one).expect("JSON");
    assert_eq!(one["queue"], "jobs");
    assert_eq!(one["len"], 1);
    server.stop().await;
}

#[tokio::test]
async fn purge_deletes_the_waiting_messages() {
    let server = TestServer::start().await;
    server.publish("jobs", "a").await;
    server.publish("jobs", "b").await;
    let stdout = run(&server, &["purge", "jobs"]).await.ok();
    assert_eq!(
        stdout,
        "purged queue jobs: its waiting messages are deleted\n"
    );
    assert_eq!(server.pop("jobs").await, None);
    let again = run(&server, &["purge", "jobs", "--json"]).await.ok();
    let again: serde_json::Value = serde_json::from_str(&again).expect("JSON");
    assert_eq!(again, serde_json::json!({"queue": "jobs", "status": 0}));
    assert_eq!(
        run(&server, &["purge", "jobs"]).await.ok(),
        "queue jobs had no waiting messages\n"
    );
    server.stop().await;
}

#[tokio::test]
async fn policy_shows_and_sets() {
    let server = TestServer::start().await;
    assert_eq!(
        run(&server, &["policy", "jobs"]).await.ok(),
        "broadcast (the default: never set)\n"
    );
    assert_eq!(
        run(&server, &["policy", "jobs", "roundrobin"]).await.ok(),
        "policy of queue jobs set to roundrobin\n"
    );
    assert_eq!(server.get("/p/jobs").await.json()["value"], "roundrobin");
    assert_eq!(run(&server, &["policy", "jobs"]).await.ok(), "roundrobin\n");
    let json = run(&server, &["policy", "jobs", "broadcast", "--json"])
        .await
        .ok();
    let json: serde_json::Value = serde_json::from_str(&json).expect("JSON");
    assert_eq!(
        json,
        serde_json::json!({"queue": "jobs", "value": "broadcast"})
    );
    assert_eq!(server.get("/p/jobs").await.json()["value"], "broadcast");
    // An unknown policy is refused before anything is sent.
    let stderr = run(&server, &["policy", "jobs", "fastest"]).await.fails(2);
    assert!(stderr.contains("possible values"), "{stderr}");
    server.stop().await;
}

#[tokio::test]
async fn pause_and_resume_switch_the_queue() {
    let server = TestServer::start().await;
    server.publish("jobs", "a").await;
    let status = || async { server.get("/control/jobs").await.json()["status"]["status"].clone() };
    assert_eq!(
        run(&server, &["pause", "jobs"]).await.ok(),
        "paused queue jobs\n"
    );
    assert_eq!(status().await, 0);
    let json = run(&server, &["resume", "jobs", "--json"]).await.ok();
    let json: serde_json::Value = serde_json::from_str(&json).expect("JSON");
    assert_eq!(
        json,
        serde_json::json!({"stat": {"queue": "jobs", "status": 1}})
    );
    assert_eq!(status().await, 1);
    assert_eq!(
        run(&server, &["resume", "jobs"]).await.ok(),
        "resumed queue jobs\n"
    );
    server.stop().await;
}

#[tokio::test]
async fn credentials_open_a_locked_server() {
    let rules = [
        restmq::acl::token_section("cli", "rmq_cli_secret", "*", "*", "*"),
        restmq::acl::token_section("mailer", "rmq_mail_secret", "mail", "mail", ""),
    ]
    .map(|section| section.expect("a valid section"))
    .join("\n");
    let data = tempfile::tempdir().expect("a directory");
    let acl = data.path().join("acl.conf");
    std::fs::write(&acl, rules).expect("write the rules");
    let mut config = Config::new(data.path().join("data"));
    config.acl = Some(acl);
    let server = TestServer::start_with(config, Some(data)).await;

    let stderr = run(&server, &["stats"]).await.fails(1);
    assert!(stderr.starts_with("restmq: 401 Unauthorized: "), "{stderr}");
    assert!(stderr.contains("--token"), "{stderr}");
    let stderr = run(&server, &["push", "jobs", "x", "--token", "rmq_wrong"])
        .await
        .fails(1);
    assert!(stderr.starts_with("restmq: 401"), "{stderr}");

    assert_eq!(
        run(&server, &["push", "jobs", "x", "--token", "rmq_cli_secret"])
            .await
            .ok(),
        "jobs:1\n"
    );
    let mut child = restmq(&url(&server), &["pop", "jobs"]);
    child.env("RESTMQ_TOKEN", "rmq_cli_secret");
    assert_eq!(
        finish(child.spawn().expect("restmq starts")).await.ok(),
        "x\n"
    );

    // A token without the right on that queue: 403.
    let stderr = run(
        &server,
        &["push", "jobs", "x", "--token", "rmq_mail_secret"],
    )
    .await
    .fails(1);
    assert!(stderr.starts_with("restmq: 403 Forbidden: "), "{stderr}");
    server.stop().await;
}

#[tokio::test]
async fn user_sends_basic_credentials() {
    let data = tempfile::tempdir().expect("a directory");
    let acl = data.path().join("acl.conf");
    let rules = "[rest:producer]\nusername = writer\npassword = s3cret\n\n\
                 [rest:consumer]\nusername = writer\npassword = s3cret\n";
    std::fs::write(&acl, rules).expect("write the rules");
    let mut config = Config::new(data.path().join("data"));
    config.acl = Some(acl);
    let server = TestServer::start_with(config, Some(data)).await;

    let stderr = run(&server, &["push", "jobs", "x"]).await.fails(1);
    assert!(stderr.starts_with("restmq: 401 Unauthorized: "), "{stderr}");
    assert!(stderr.contains("--user"), "{stderr}");
    let stderr = run(&server, &["push", "jobs", "x", "--user", "writer:wrong"])
        .await
        .fails(1);
    assert!(stderr.starts_with("restmq: 401"), "{stderr}");
    assert_eq!(
        run(&server, &["push", "jobs", "x", "--user", "writer:s3cret"])
            .await
            .ok(),
        "jobs:1\n"
    );
    let mut child = restmq(&url(&server), &["pop", "jobs"]);
    child.env("RESTMQ_USER", "writer:s3cret");
    assert_eq!(
        finish(child.spawn().expect("restmq starts")).await.ok(),
        "x\n"
    );
    let stderr = run(&server, &["pop", "jobs", "--user", "no-colon"])
        .await
        .fails(2);
    assert!(stderr.contains("USER:PASSWORD"), "{stderr}");
    server.stop().await;
}

#[tokio::test]
async fn an_unreachable_server_is_named() {
    // Bind then drop a listener to get a port nothing listens on.
    let addr = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port");
    let down = format!("http://{addr}");
    let child = restmq("http://unused.invalid", &["stats", "--server", &down])
        .spawn()
        .expect("restmq starts");
    let stderr = finish(child).await.fails(1);
    assert!(
        stderr.contains(&format!("cannot reach the restmq server at {down}")),
        "{stderr}"
    );
    assert!(stderr.contains("--server"), "{stderr}");

    let child = restmq("https://127.0.0.1:8443", &["pop", "jobs"])
        .spawn()
        .expect("restmq starts");
    let stderr = finish(child).await.fails(2);
    assert!(stderr.contains("https:// is not supported"), "{stderr}");
}
