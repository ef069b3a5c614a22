//! Word count by map/reduce, with restmq queues between the stages.
//!
//! The driver cuts the text into chunks and publishes them to `wc:<run>:map`.
//! Mappers receive chunks with a visibility timeout, count their words, publish
//! one partial count per reducer to `wc:<run>:reduce:<k>` (a word goes to
//! reducer `hash(word) % reducers`), and only then acknowledge the chunk: a
//! mapper that dies half-way leaves its chunk to be delivered again. Reducers
//! merge the partials of their partition, ignoring repeats (a chunk mapped
//! twice sends its partials twice), and publish their totals to
//! `wc:<run>:result` once every chunk is in. The driver merges those, prints
//! the top words, and checks them against a direct count.
//!
//! Mappers and reducers are tasks that share nothing but restmq's HTTP API:
//! they could as well be processes on other machines.

#[path = "../common/mod.rs"]
mod common;

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::Parser;
use serde::{Deserialize, Serialize};

use common::Restmq;

/// Counts the words of a text by map/reduce over restmq queues.
#[derive(Parser)]
struct Args {
    /// The text: a file, or `-` for standard input; a bundled sample when left out.
    input: Option<PathBuf>,
    /// A running restmq to use (say http://127.0.0.1:8888); without it, one is
    /// started in this process with a temporary data directory.
    #[arg(long)]
    server: Option<String>,
    /// Mapper tasks.
    #[arg(long, default_value_t = 4)]
    mappers: usize,
    /// Reducer tasks, one partition of the words each.
    #[arg(long, default_value_t = 2)]
    reducers: usize,
    /// Words per chunk (a chunk is a run of whole lines).
    #[arg(long, default_value_t = 50)]
    chunk_words: usize,
    /// How many of the most frequent words to print.
    #[arg(long, default_value_t = 10)]
    top: usize,
    /// Chunks on which a mapper "crashes": it drops them without acknowledging,
    /// and restmq delivers them again when their visibility timeout runs out.
    #[arg(long, default_value_t = 0)]
    crash: usize,
    /// Seconds a chunk stays hidden from other mappers while one works on it.
    #[arg(long, default_value_t = 2)]
    visibility: u64,
}

/// Longest the driver waits for the reducers' results.
const DEADLINE: Duration = Duration::from_secs(120);

/// The bundled input.
const SAMPLE: &str = include_str!("sample.txt");

/// A map task: one chunk of the text.
#[derive(Serialize, Deserialize)]
struct Chunk {
    /// Which chunk, from 0.
    chunk: usize,
    /// How many chunks the text has: reducers learn from it when they are done.
    of: usize,
    text: String,
}

/// A mapper's counts of one chunk, for one reducer.
#[derive(Serialize, Deserialize)]
struct Partial {
    chunk: usize,
    of: usize,
    counts: HashMap<String, u64>,
}

/// The queues of one run.
#[derive(Clone)]
struct Queues {
    map: String,
    reduce: Vec<String>,
    result: String,
}

impl Queues {
    fn new(run: &str, reducers: usize) -> Queues {
        Queues {
            map: format!("wc:{run}:map"),
            reduce: (0..reducers)
                .map(|k| format!("wc:{run}:reduce:{k}"))
                .collect(),
            result: format!("wc:{run}:result"),
        }
    }
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse();
    if args.mappers == 0 || args.reducers == 0 {
        bail!("--mappers and --reducers must be at least 1");
    }
    let text = common::read_input(args.input.as_deref(), SAMPLE)?;
    let chunks = common::chunks(&text, args.chunk_words);
    if chunks.is_empty() {
        bail!("the input has no words");
    }

    let mq = Arc::new(Restmq::start_or_connect(args.server.as_deref()).await?);
    let queues = Queues::new(&common::run_id(), args.reducers);
    println!("restmq: {}", mq.describe());
    println!(
        "{} chunks of about {} words on {}, {} mappers, {} reducers",
        chunks.len(),
        args.chunk_words,
        queues.map,
        args.mappers,
        args.reducers
    );

    // The tasks start first and wait on empty queues: restmq wakes them at
    // the publish, as it would wake workers that had been running all along.
    let crashes = Arc::new(AtomicUsize::new(args.crash));
    let mut workers = Vec::new();
    for id in 0..args.mappers {
        let (mq, queues, crashes) = (mq.clone(), queues.clone(), crashes.clone());
        workers.push(tokio::spawn(mapper(
            id,
            mq,
            queues,
            args.visibility,
            crashes,
        )));
    }
    for k in 0..args.reducers {
        let (mq, queues) = (mq.clone(), queues.clone());
        workers.push(tokio::spawn(async move {
            if let Err(e) = reducer(k, &mq, &queues).await {
                eprintln!("reducer {k}: {e:#}");
            }
        }));
    }

    let of = chunks.len();
    let tasks = chunks
        .into_iter()
        .enumerate()
        .map(|(chunk, text)| serde_json::to_string(&Chunk { chunk, of, text }))
        .collect::<Result<Vec<_>, _>>()?;
    mq.publish_batch(&queues.map, &tasks).await?;

    let totals = tokio::select! {
        totals = tokio::time::timeout(DEADLINE, collect(&mq, &queues, args.reducers)) => {
            totals.context("the reducers did not finish in time")
        }
        () = common::stop_signal() => Err(anyhow::anyhow!("interrupted")),
    };
    // Mappers wait for work forever, as workers do; this run is over.
    for worker in &workers {
        worker.abort();
    }
    for worker in workers {
        let _ = worker.await; // until it has let go of its client
    }
    let totals = match totals {
        Ok(Ok(totals)) => totals,
        Ok(Err(e)) | Err(e) => {
            // Stopped first, so that its temporary data directory is removed.
            if let Ok(mq) = Arc::try_unwrap(mq) {
                mq.stop().await?;
            }
            return Err(e);
        }
    };
    let ok = common::report(&totals, &text, args.top);
    if let Ok(mq) = Arc::try_unwrap(mq) {
        mq.stop().await?;
    }
    if !ok {
        std::process::exit(1);
    }
    Ok(())
}

/// Maps chunks until aborted; an error costs only the chunk at hand, which
/// restmq delivers again.
async fn mapper(
    id: usize,
    mq: Arc<Restmq>,
    queues: Queues,
    visibility: u64,
    crashes: Arc<AtomicUsize>,
) {
    loop {
        if let Err(e) = map_some(id, &mq, &queues, visibility, &crashes).await {
            eprintln!("mapper {id}: {e:#}");
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }
}

async fn map_some(
    id: usize,
    mq: &Restmq,
    queues: &Queues,
    visibility: u64,
    crashes: &AtomicUsize,
) -> Result<()> {
    // One chunk at a time, so that the chunks spread over the mappers.
    for delivery in mq.receive(&queues.map, visibility, 1).await? {
        let chunk: Chunk = match serde_json::from_str(&delivery.value) {
            Ok(chunk) => chunk,
            Err(e) => {
                // Not ours to redo forever: drop it, and say so.
                eprintln!("mapper {id}: dropping {}: {e}", delivery.key);
                mq.ack(&[delivery.receipt]).await?;
                continue;
            }
        };
        if crashes
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| n.checked_sub(1))
            .is_ok()
        {
            println!(
                "mapper {id}: crashed on chunk {} (delivery {}); restmq delivers it again in {visibility} s",
                chunk.chunk, delivery.count
            );
            continue;
        }
        if delivery.count > 1 {
            println!(
                "mapper {id}: maps chunk {} again (delivery {})",
                chunk.chunk, delivery.count
            );
        }
        let reducers = queues.reduce.len();
        let mut partitions = vec![HashMap::new(); reducers];
        for word in common::words(&chunk.text) {
            let k = (common::fnv1a(&word) % reducers as u64) as usize;
            *partitions[k].entry(word).or_insert(0) += 1;
        }
        // Every reducer gets a partial, even an empty one: that is how it
        // knows the chunk is accounted for.
        for (k, counts) in partitions.into_iter().enumerate() {
            let partial = Partial {
                chunk: chunk.chunk,
                of: chunk.of,
                counts,
            };
            mq.publish(&queues.reduce[k], serde_json::to_string(&partial)?)
                .await?;
        }
        // Acknowledged only now that its partials are durable in restmq.
        mq.ack(&[delivery.receipt]).await?;
    }
    Ok(())
}

/// Merges partition `k` until every chunk is in, then publishes the totals.
async fn reducer(k: usize, mq: &Restmq, queues: &Queues) -> Result<()> {
    let mut seen = HashSet::new();
    let mut of = None;
    let mut totals: HashMap<String, u64> = HashMap::new();
    while of.is_none_or(|of| seen.len() < of) {
        let deliveries = match mq.receive(&queues.reduce[k], 30, 100).await {
            Ok(deliveries) => deliveries,
            Err(e) => {
                eprintln!("reducer {k}: {e:#}");
                tokio::time::sleep(Duration::from_millis(500)).await;
                continue;
            }
        };
        let mut receipts = Vec::new();
        for delivery in deliveries {
            match serde_json::from_str::<Partial>(&delivery.value) {
                // A chunk mapped twice (its mapper died before acknowledging)
                // sends its partial twice: count it once.
                Ok(partial) if seen.insert(partial.chunk) => {
                    of = Some(partial.of);
                    for (word, n) in partial.counts {
                        *totals.entry(word).or_insert(0) += n;
                    }
                }
                Ok(_) => {}
                Err(e) => eprintln!("reducer {k}: dropping {}: {e}", delivery.key),
            }
            receipts.push(delivery.receipt);
        }
        // Acknowledging after merging; should it fail, the partials come
        // back and are recognised as repeats.
        if let Err(e) = mq.ack(&receipts).await {
            eprintln!("reducer {k}: {e:#}");
        }
    }
    mq.publish(&queues.result, serde_json::to_string(&totals)?)
        .await
}

/// Waits for one result per reducer and merges them (the partitions do not
/// overlap, so this is a union).
async fn collect(mq: &Restmq, queues: &Queues, reducers: usize) -> Result<HashMap<String, u64>> {
    let mut totals = HashMap::new();
    let mut received = 0;
    while received < reducers {
        let deliveries = mq.receive(&queues.result, 30, 100).await?;
        let mut receipts = Vec::new();
        for delivery in deliveries {
            let part: HashMap<String, u64> = serde_json::from_str(&delivery.value)
                .with_context(|| format!("reading {}", delivery.key))?;
            totals.extend(part);
            received += 1;
            receipts.push(delivery.receipt);
        }
        mq.ack(&receipts).await?;
    }
    Ok(totals)
}
