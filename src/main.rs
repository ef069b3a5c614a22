//! The `restmq` command: the server (`restmq` or `restmq serve`) and its tools.

use std::io::IsTerminal;

use anyhow::Context;
use clap::{Parser, Subcommand};
use tracing_subscriber::EnvFilter;

use restmq::bench::{self, BenchArgs};
use restmq::config::{Config, ServeArgs};

// glibc's malloc showed up at ~13% of server CPU under load (malloc_consolidate
// among the top symbols); mimalloc measured +10% pops per second in the same run.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// A message queue over plain HTTP, compatible with RestMQ.
#[derive(Debug, Parser)]
#[command(
    name = "restmq",
    version,
    about,
    args_conflicts_with_subcommands = true
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    serve: ServeArgs,
}

// Parsed once at startup: the size of the serve options does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Subcommand)]
enum Command {
    /// Serve the queues over HTTP (the default).
    Serve(ServeArgs),
    /// Measure a running server: publish and pop from many connections, or fan-out
    /// to many streaming subscribers (`--mode fanout`).
    Bench(BenchArgs),
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .init();
    match cli.command {
        None => serve(cli.serve).await,
        Some(Command::Serve(args)) => serve(args).await,
        Some(Command::Bench(args)) => Ok(bench::run(&args).await?),
    }
}

async fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let config = Config::try_from(&args)?;
    let state = restmq::open(&config).await.context("cannot start")?;
    let listener = restmq::server::bind(&args.listen, args.port)
        .await
        .with_context(|| format!("cannot listen on {}:{}", args.listen, args.port))?;
    let addr = listener.local_addr()?;
    let scheme = if config.tls.is_some() {
        "https"
    } else {
        "http"
    };
    tracing::info!(
        %addr,
        store = %state.broker.describe(),
        fsync = config.fsync,
        "restmq listening on {scheme}://{addr}/"
    );
    restmq::serve(listener, state, shutdown_signal()).await?;
    tracing::info!("restmq stopped");
    Ok(())
}

/// Resolves on SIGINT (Ctrl-C) or SIGTERM.
async fn shutdown_signal() {
    let interrupt = async {
        if let Err(e) = tokio::signal::ctrl_c().await {
            tracing::error!(error = %e, "cannot listen for Ctrl-C");
            std::future::pending::<()>().await;
        }
    };
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    tokio::select! {
        () = interrupt => {}
        () = terminate => {}
    }
    tracing::info!("shutting down: finishing requests in progress");
}
