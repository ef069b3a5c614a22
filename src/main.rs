//! The `restmq` command: the server (`restmq` or `restmq serve`), its client
//! (`push`, `pop`, `tail`, `stats`, …, in `restmq::cli`) and its tools.

use std::alloc::{GlobalAlloc, Layout};
use std::io::IsTerminal;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use libmimalloc_sys as mi;
use tracing_subscriber::EnvFilter;

use restmq::bench::{self, BenchArgs};
use restmq::config::{Config, LogFormat, ServeArgs};

// glibc's malloc showed up at ~13% of server CPU under load (malloc_consolidate
// among the top symbols); mimalloc measured +10% pops per second in the same run.
#[global_allocator]
static GLOBAL: Mimalloc = Mimalloc;

/// mimalloc, asked for alignment only when a layout needs more than it gives.
///
/// The `mimalloc` crate passes every layout to `mi_malloc_aligned`, whose fast
/// path only serves sizes up to 1 KiB whose free block happens to fall on the
/// alignment; anything else (hyper's read buffers, the boxed route futures)
/// took the over-allocating path, ~200 instructions and four times per
/// request. `mi_malloc` aligns every block to a word at least, which serves
/// any layout asking for no more than that (and no more than its size).
struct Mimalloc;

impl Mimalloc {
    /// Whether plain `mi_malloc` meets `layout`'s alignment.
    fn plain(layout: Layout) -> bool {
        layout.align() <= std::mem::align_of::<usize>() && layout.align() <= layout.size()
    }
}

// SAFETY: every block comes from mimalloc, with the alignment the layout asks
// for (see `plain`), and goes back through `mi_free`, which takes either kind.
unsafe impl GlobalAlloc for Mimalloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: mimalloc's functions take any size and alignment.
        unsafe {
            if Self::plain(layout) {
                mi::mi_malloc(layout.size()).cast()
            } else {
                mi::mi_malloc_aligned(layout.size(), layout.align()).cast()
            }
        }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: as for `alloc`.
        unsafe {
            if Self::plain(layout) {
                mi::mi_zalloc(layout.size()).cast()
            } else {
                mi::mi_zalloc_aligned(layout.size(), layout.align()).cast()
            }
        }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, _layout: Layout) {
        // SAFETY: `ptr` came from one of the functions above.
        unsafe { mi::mi_free(ptr.cast()) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: `ptr` came from one of the functions above; the caller
        // guarantees `new_size` is a valid size for `layout.align()`.
        unsafe {
            if Self::plain(Layout::from_size_align_unchecked(new_size, layout.align())) {
                mi::mi_realloc(ptr.cast(), new_size).cast()
            } else {
                mi::mi_realloc_aligned(ptr.cast(), new_size, layout.align()).cast()
            }
        }
    }
}

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
    /// Make a bearer token: prints the token (give it to the client) and the
    /// `[token:NAME]` section holding only its digest (put it in the ACL file).
    Token(TokenArgs),
    #[command(flatten)]
    Client(restmq::cli::Command),
}

#[derive(Debug, clap::Args)]
struct TokenArgs {
    /// The token's name in the ACL file.
    #[arg(default_value = "client")]
    name: String,
    /// Queue patterns it may publish to (`*` matches any run of characters).
    #[arg(long, default_value = "*")]
    publish: String,
    /// Queue patterns it may consume from.
    #[arg(long, default_value = "*")]
    consume: String,
    /// Queue patterns it may administer (empty for none).
    #[arg(long, default_value = "")]
    admin: String,
}

#[tokio::main]
async fn main() -> anyhow::Result<ExitCode> {
    let cli = Cli::parse();
    let format = match &cli.command {
        None => cli.serve.log_format,
        Some(Command::Serve(args)) => args.log_format,
        Some(Command::Bench(_) | Command::Token(_) | Command::Client(_)) => LogFormat::Text,
    };
    let logs = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        );
    match format {
        LogFormat::Text => logs.with_ansi(std::io::stderr().is_terminal()).init(),
        LogFormat::Json => logs
            .json()
            .with_current_span(true)
            .with_span_list(false)
            .init(),
    }
    match cli.command {
        None => serve(cli.serve).await,
        Some(Command::Serve(args)) => serve(args).await,
        Some(Command::Bench(args)) => Ok(bench::run(&args).await?),
        Some(Command::Token(args)) => token(&args),
        // The client prints its own errors: it has exit codes to tell apart.
        Some(Command::Client(command)) => return Ok(restmq::cli::run(command).await),
    }
    .map(|()| ExitCode::SUCCESS)
}

/// Prints a new token and the ACL section that admits it.
fn token(args: &TokenArgs) -> anyhow::Result<()> {
    let mut secret = [0u8; 32];
    std::io::Read::read_exact(
        &mut std::fs::File::open("/dev/urandom").context("cannot open /dev/urandom")?,
        &mut secret,
    )
    .context("cannot read /dev/urandom")?;
    let token: String = std::iter::once("rmq_".to_owned())
        .chain(secret.iter().map(|b| format!("{b:02x}")))
        .collect();
    let section = restmq::acl::token_section(
        &args.name,
        &token,
        &args.publish,
        &args.consume,
        &args.admin,
    )
    .context("cannot make the token's section")?;
    println!("# token (give it to the client; it is not stored anywhere):");
    println!("# {token}");
    println!("{section}");
    Ok(())
}

async fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let config = Config::try_from(&args)?;
    let state = restmq::open(&config).await.context("cannot start")?;
    let listener = restmq::server::bind(&args.listen, args.port)
        .await
        .with_context(|| format!("cannot listen on {}:{}", args.listen, args.port))?;
    let doors = restmq::adapters::Doors::bind(&args.listen, &config.doors).await?;
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
    if state.access.is_open() && !addr.ip().is_loopback() {
        tracing::warn!(
            %addr,
            "no --acl: every route is open to anyone who can reach {addr}; see the README's Security section"
        );
    }
    let at = doors.addrs();
    for (door, addr) in [
        ("SQS-compatible API", at.sqs),
        ("memcached protocol", at.memcached),
        ("syslog (TCP and UDP)", at.syslog),
    ] {
        if let Some(addr) = addr {
            tracing::info!(%addr, "{door} on {addr}");
        }
    }
    restmq::serve_with(listener, doors, state, shutdown_signal()).await?;
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Every layout gets a block at its alignment, zeroed when asked, that
    /// keeps its bytes when it grows and when it shrinks.
    #[test]
    fn the_allocator_honours_every_alignment() {
        let sizes = [1, 2, 3, 7, 8, 9, 15, 16, 24, 100, 1024, 1025, 5000, 70_000];
        for size in sizes {
            for align in (0..13).map(|shift| 1usize << shift) {
                let layout = Layout::from_size_align(size, align).expect("a valid layout");
                // SAFETY: every size is non-zero, each block is used within
                // its size and freed once, with the layout it has then.
                unsafe {
                    let zeroed = GLOBAL.alloc_zeroed(layout);
                    assert_eq!(zeroed as usize % align, 0, "zeroed {layout:?}");
                    assert!((0..size).all(|i| *zeroed.add(i) == 0), "zeroed {layout:?}");
                    GLOBAL.dealloc(zeroed, layout);

                    let block = GLOBAL.alloc(layout);
                    assert_eq!(block as usize % align, 0, "{layout:?}");
                    for i in 0..size {
                        *block.add(i) = i as u8;
                    }
                    let grown = GLOBAL.realloc(block, layout, size * 3);
                    assert_eq!(grown as usize % align, 0, "{layout:?} grown");
                    assert!(
                        (0..size).all(|i| *grown.add(i) == i as u8),
                        "{layout:?} grown"
                    );
                    let grown_layout = Layout::from_size_align(size * 3, align).expect("valid");
                    let half = size.div_ceil(2);
                    let shrunk = GLOBAL.realloc(grown, grown_layout, half);
                    assert_eq!(shrunk as usize % align, 0, "{layout:?} shrunk");
                    assert!(
                        (0..half).all(|i| *shrunk.add(i) == i as u8),
                        "{layout:?} shrunk"
                    );
                    GLOBAL.dealloc(shrunk, Layout::from_size_align(half, align).expect("valid"));
                }
            }
        }
    }
}
