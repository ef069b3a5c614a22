//! `restmq bench` against a real server: the library entry point and the binary.

mod common;

use clap::Parser;
use common::TestServer;
use restmq::bench::{self, BenchArgs, BenchError, Phase};

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
