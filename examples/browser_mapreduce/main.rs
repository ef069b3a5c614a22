//! Map/reduce in the browser: a web page maps, this program reduces.
//!
//! This program serves restmq with one more route, `/example/`, a page whose
//! workers are WebSockets on `/ws/mr:tasks?ack=1&prefetch=1`. It publishes the
//! text in chunks to `mr:tasks`; restmq hands each chunk to one worker at a
//! time; the worker counts the chunk's words in the browser, POSTs the counts
//! to `mr:results`, then acknowledges the chunk. This program receives the
//! results, counts each chunk once, and prints the totals when every chunk is
//! in, checked against a direct count.
//!
//! Page and queues share one origin (restmq's router merged with the page's),
//! so the page needs no CORS. With `--server`, the page is served alone and
//! talks to that restmq across origins (see page.html).

#[path = "../common/mod.rs"]
mod common;

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use axum::Router;
use axum::response::{Html, Redirect};
use axum::routing::get;
use clap::Parser;
use serde::{Deserialize, Serialize};
use tokio::sync::oneshot;

use common::Restmq;

/// Counts the words of a text by map/reduce, mapped in a browser page over WebSockets.
#[derive(Parser)]
struct Args {
    /// The text: a file, or `-` for standard input; a bundled sample when left out.
    input: Option<PathBuf>,
    /// A running restmq to use (say http://127.0.0.1:8888); without it, one is
    /// started in this process with a temporary data directory.
    #[arg(long)]
    server: Option<String>,
    /// Address the page (and restmq, unless --server) is served on.
    #[arg(long, default_value = "127.0.0.1")]
    listen: String,
    /// Port the page is served on (0 picks a free one).
    #[arg(long, default_value_t = 8889)]
    port: u16,
    /// Words per chunk (a chunk is a run of whole lines).
    #[arg(long, default_value_t = 50)]
    chunk_words: usize,
    /// How many of the most frequent words to print.
    #[arg(long, default_value_t = 10)]
    top: usize,
}

const TASKS: &str = "mr:tasks";
const RESULTS: &str = "mr:results";
const PAGE: &str = include_str!("page.html");
const SAMPLE: &str = include_str!("../wordcount/sample.txt");

/// A chunk to map, as published to `mr:tasks`.
#[derive(Serialize)]
struct Task<'a> {
    /// This run: the queues may hold leftovers of another.
    run: &'a str,
    chunk: usize,
    of: usize,
    text: &'a str,
}

/// A page's counts of one chunk, as it publishes them to `mr:results`.
#[derive(Deserialize)]
struct Mapped {
    run: String,
    chunk: usize,
    worker: u64,
    counts: HashMap<String, u64>,
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse();
    let text = common::read_input(args.input.as_deref(), SAMPLE)?;
    let chunks = common::chunks(&text, args.chunk_words);
    if chunks.is_empty() {
        bail!("the input has no words");
    }

    let listener = tokio::net::TcpListener::bind((args.listen.as_str(), args.port))
        .await
        .with_context(|| format!("binding {}:{}", args.listen, args.port))?;
    let here = format!("http://{}", listener.local_addr()?);
    // Our own restmq, unless told to use another.
    let embedded = match args.server {
        Some(_) => None,
        None => Some(common::open_temporary().await?),
    };
    let page_for = match &args.server {
        Some(url) => url.trim_end_matches('/').to_string(),
        None => String::new(),
    };
    // The page learns where restmq is from one constant; a JSON string is a
    // JavaScript string.
    let page = PAGE.replace(
        "\"__RESTMQ__\"",
        &serde_json::to_string(&page_for).context("quoting the restmq URL")?,
    );
    let mut app = Router::new()
        .route("/example/", get(move || async move { Html(page) }))
        .route(
            "/example",
            get(|| async { Redirect::permanent("/example/") }),
        );
    if let Some((state, _)) = &embedded {
        // restmq's router keeps its fallback (404 as JSON) and its access
        // guard, which covers its own routes only: the page is public.
        app = app.merge(restmq::app(state.clone()));
    }
    let (stop, stopped) = oneshot::channel::<()>();
    let server = tokio::spawn(async move {
        // restmq's handlers learn the client's address from ConnectInfo.
        let app = app.into_make_service_with_connect_info::<SocketAddr>();
        axum::serve(listener, app)
            .with_graceful_shutdown(async {
                let _ = stopped.await;
            })
            .await
    });
    let mq = Restmq::connect(args.server.as_deref().unwrap_or(&here)).await?;

    let run = common::run_id();
    let of = chunks.len();
    let tasks = chunks
        .iter()
        .enumerate()
        .map(|(chunk, text)| {
            serde_json::to_string(&Task {
                run: &run,
                chunk,
                of,
                text,
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    mq.publish_batch(TASKS, &tasks).await?;
    println!("restmq: {}", mq.base);
    println!(
        "published {of} chunks of about {} words to {TASKS}",
        args.chunk_words
    );
    println!("open {here}/example/ in a browser to map them (?workers=8 for more workers)");

    let reduced = tokio::select! {
        reduced = reduce(&mq, &run, of) => reduced,
        () = common::stop_signal() => Err(anyhow::anyhow!("interrupted")),
    };
    let ok = match reduced {
        Ok(totals) => common::report(&totals, &text, args.top),
        Err(e) => {
            eprintln!("{e:#}");
            false
        }
    };

    // The page's sockets are ended first: a graceful shutdown does not wait
    // for upgraded connections.
    let _ = stop.send(());
    if let Some((state, dir)) = embedded {
        state.broker.end_streams();
        let _ = server.await;
        state.broker.close().await?;
        drop(dir);
    } else {
        let _ = server.await;
    }
    if !ok {
        std::process::exit(1);
    }
    Ok(())
}

/// Receives results until every chunk of `run` is counted once.
async fn reduce(mq: &Restmq, run: &str, of: usize) -> Result<HashMap<String, u64>> {
    let mut seen = HashSet::new();
    let mut totals = HashMap::new();
    while seen.len() < of {
        let deliveries = mq.receive(RESULTS, 30, 100).await?;
        let mut receipts = Vec::new();
        for delivery in deliveries {
            match serde_json::from_str::<Mapped>(&delivery.value) {
                // A chunk whose worker went away before acknowledging it is
                // mapped again, and its counts arrive twice: count them once.
                Ok(mapped) if mapped.run == run && seen.insert(mapped.chunk) => {
                    println!(
                        "chunk {}/{of} counted by worker {}",
                        mapped.chunk + 1,
                        mapped.worker
                    );
                    for (word, n) in mapped.counts {
                        *totals.entry(word).or_insert(0) += n;
                    }
                }
                Ok(_) => {} // a repeat, or from another run
                Err(e) => eprintln!("dropping {}: {e}", delivery.key),
            }
            receipts.push(delivery.receipt);
        }
        mq.ack(&receipts).await?;
    }
    Ok(totals)
}
