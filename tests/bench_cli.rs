//! `restmq bench` against a real server: the library entry point and the binary.

mod common;

use clap::Parser;
use common::TestServer;
use restmq::bench::{self, BenchArgs, BenchError, FanoutReport, Phase, Transport};

/// Parses `restmq bench` options the way the binary does.
#[derive(Parser)]
struct Cli {
    #[command(flatten)]
    bench: BenchArgs,
}

fn bench_args(args: &[&str]) -> BenchArgs {
    Cli::try_parse_from(std::iter::once("bench").chain(args.iter().copied()))
        .expect("valid bench options")
        .bench
}

#[tokio::test(flavor = "multi_thread")]
async fn publishes_then_pops_every_message() {
    let server = TestServer::start().await;
    let url = format!("http://{}", server.addr);
    let args = bench_args(&[
        "--server",
        &url,
        "--duration",
        "1",
        "--connections",
        "4",
        "--mode",
        "both",
        "--queue",
        "bench-test",
    ]);
    let report = bench::measure(&args).await.expect("the bench runs");
    assert_eq!(report.phases.len(), 2);
    let publish = &report.phases[0];
    let pop = &report.phases[1];
    assert_eq!(publish.phase, Phase::Publish);
    assert_eq!(pop.phase, Phase::Pop);

    assert!(publish.ok > 0, "nothing published: {publish:?}");
    assert_eq!(publish.errors, 0, "{publish:?}");
    assert_eq!(publish.other, 0, "{publish:?}");
    assert_eq!(publish.empty, 0, "{publish:?}");
    assert!(publish.p50_ms.is_some() && publish.p99_ms >= publish.p50_ms);
    assert!(publish.max_ms >= publish.p99_ms);

    assert_eq!(pop.errors, 0, "{pop:?}");
    assert_eq!(pop.other, 0, "{pop:?}");

    let mut remaining = 0;
    while let Some((_, value)) = server.pop("bench-test").await {
        assert_eq!(value.len(), 100);
        remaining += 1;
    }
    assert_eq!(
        publish.ok,
        pop.ok + remaining,
        "every published message is popped by the bench or left in the queue"
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn receives_and_acknowledges_every_message() {
    let server = TestServer::start().await;
    let url = format!("http://{}", server.addr);
    let args = bench_args(&[
        "--server",
        &url,
        "--duration",
        "1",
        "--connections",
        "4",
        "--mode",
        "reliable",
        "--queue",
        "bench-acked",
    ]);
    let report = bench::measure(&args).await.expect("the bench runs");
    let phases: Vec<Phase> = report.phases.iter().map(|p| p.phase).collect();
    assert_eq!(phases, [Phase::Publish, Phase::Receive]);
    let (publish, receive) = (&report.phases[0], &report.phases[1]);
    assert!(publish.ok > 0, "nothing published: {publish:?}");
    assert!(receive.ok > 0, "nothing received: {receive:?}");
    assert_eq!((receive.errors, receive.other), (0, 0), "{receive:?}");

    // What the bench received it acknowledged: nothing is left in flight.
    let stats = server.get("/stats/bench-acked").await.json();
    assert_eq!(stats["inflight"], 0, "{stats}");
    assert_eq!(
        stats["len"].as_u64(),
        Some(publish.ok - receive.ok),
        "every published message is acknowledged by the bench or left waiting: {stats}"
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn the_binary_prints_a_table() {
    let server = TestServer::start().await;
    let url = format!("http://{}", server.addr);
    // The server runs on this test's runtime: wait for the child off the runtime.
    let output = tokio::task::spawn_blocking(move || {
        std::process::Command::new(env!("CARGO_BIN_EXE_restmq"))
            .args(["bench", "--server", &url, "--duration", "1"])
            .args(["--connections", "2"])
            .output()
    })
    .await
    .expect("the blocking task")
    .expect("restmq runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "exit {}\nstdout:\n{stdout}\nstderr:\n{stderr}",
        output.status
    );
    assert!(
        stdout.lines().any(|line| line.starts_with("publish")),
        "no publish row:\n{stdout}"
    );
    assert!(
        stdout.lines().any(|line| line.starts_with("pop")),
        "no pop row:\n{stdout}"
    );
    server.stop().await;
}

#[tokio::test]
async fn rejects_a_non_http_server() {
    let args = bench_args(&["--server", "ftp://x", "--duration", "1"]);
    let error = bench::measure(&args).await.expect_err("ftp is refused");
    assert!(
        matches!(error, BenchError::InvalidServer { .. }),
        "{error:?}"
    );
    let message = error.to_string();
    assert!(message.contains("ftp://x"), "{message}");
    assert!(message.contains("only http://"), "{message}");
}

#[test]
fn the_binary_explains_a_bad_server() {
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_restmq"))
        .args(["bench", "--server", "ftp://x", "--duration", "1"])
        .output()
        .expect("restmq runs");
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("only http://"), "{stderr}");
}

#[tokio::test]
async fn reports_a_server_that_is_down() {
    // Bind then drop a listener to get a port nothing listens on.
    let addr = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port");
    let args = bench_args(&["--server", &format!("http://{addr}"), "--duration", "1"]);
    let error = bench::measure(&args).await.expect_err("nothing listens");
    assert!(matches!(error, BenchError::Connect { .. }), "{error:?}");
}

/// Runs `--mode fanout` with 3 subscribers and 20 messages, plus `extra` options.
async fn fan_out(server: &TestServer, transport: &str, extra: &[&str]) -> FanoutReport {
    let url = format!("http://{}", server.addr);
    let mut options = vec![
        "--server",
        &url,
        "--mode",
        "fanout",
        "--transport",
        transport,
        "--subscribers",
        "3",
        "--messages",
        "20",
    ];
    options.extend_from_slice(extra);
    let report = bench::measure_fanout(&bench_args(&options))
        .await
        .expect("the fan-out runs");
    assert_eq!(report.subscribers, 3, "{report:#?}");
    assert_eq!(report.connected, 3, "{report:#?}");
    assert_eq!(report.publish.ok, 20, "{report:#?}");
    assert_eq!(
        report.publish.errors + report.publish.other,
        0,
        "{report:#?}"
    );
    assert_eq!(
        report.complete_subscribers, 3,
        "every subscriber gets every message, in order: {report:#?}"
    );
    assert_eq!(report.deliveries, 60, "{report:#?}");
    assert_eq!(report.expected_deliveries, 60, "{report:#?}");
    assert_eq!(report.malformed, 0, "{report:#?}");
    assert!(report.first_incomplete.is_none(), "{report:#?}");
    assert!(
        report.p50_ms.is_some(),
        "latencies are measured: {report:#?}"
    );
    assert!(report.p99_ms >= report.p50_ms && report.max_ms >= report.p99_ms);
    assert!(report.elapsed_secs > 0.0 && report.deliveries_per_sec > 0.0);
    // Broadcast hands each message out once: nothing is left in the queue.
    assert_eq!(server.pop(&report.queue).await, None, "{report:#?}");
    report
}

#[tokio::test(flavor = "multi_thread")]
async fn fans_out_over_server_sent_events() {
    let server = TestServer::start().await;
    let report = fan_out(&server, "sse", &[]).await;
    assert_eq!(report.transport, Transport::Sse);
    assert!(
        report.queue.starts_with("fanout-"),
        "a fresh queue: {report:?}"
    );
    assert_eq!(report.connections, 1, "one publisher by default");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn fans_out_over_websockets() {
    let server = TestServer::start().await;
    let report = fan_out(&server, "ws", &["--connections", "2"]).await;
    assert_eq!(report.transport, Transport::Ws);
    assert_eq!(report.connections, 2);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_fan_out_ignores_what_a_reused_queue_held() {
    let server = TestServer::start().await;
    // Waiting with no consumer, it goes to the first subscriber to connect.
    server.publish("fanout-reused", "from an earlier run").await;
    let report = fan_out(&server, "sse", &["--queue", "fanout-reused"]).await;
    assert_eq!(report.queue, "fanout-reused");
    // Whichever subscribers were connected when the dispatcher took it got it.
    assert!((1..=3).contains(&report.foreign), "{report:#?}");
    server.stop().await;
}

#[tokio::test]
async fn measure_refuses_the_fan_out() {
    let args = bench_args(&["--mode", "fanout"]);
    let error = bench::measure(&args).await.expect_err("not its mode");
    assert!(matches!(error, BenchError::InvalidOption(_)), "{error:?}");
}

#[tokio::test]
async fn a_fan_out_needs_room_for_its_stamp() {
    let args = bench_args(&["--mode", "fanout", "--size", "10"]);
    let error = bench::measure_fanout(&args).await.expect_err("too small");
    assert!(error.to_string().contains("--size"), "{error}");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_binary_reports_a_fan_out_as_json() {
    let server = TestServer::start().await;
    let url = format!("http://{}", server.addr);
    // The server runs on this test's runtime: wait for the child off the runtime.
    let output = tokio::task::spawn_blocking(move || {
        std::process::Command::new(env!("CARGO_BIN_EXE_restmq"))
            .args(["bench", "--server", &url, "--mode", "fanout"])
            .args(["--subscribers", "2", "--messages", "5", "--json"])
            .output()
    })
    .await
    .expect("the blocking task")
    .expect("restmq runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "exit {}\nstdout:\n{stdout}\nstderr:\n{stderr}",
        output.status
    );
    let report: serde_json::Value = serde_json::from_str(&stdout).expect("JSON on stdout");
    assert_eq!(report["complete_subscribers"], 2, "{report:#}");
    assert_eq!(report["deliveries"], 10, "{report:#}");
    assert_eq!(report["transport"], "sse", "{report:#}");
    assert!(
        stderr.lines().any(|line| line.starts_with("deliver")),
        "the table goes to stderr:\n{stderr}"
    );
    server.stop().await;
}
