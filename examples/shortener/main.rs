//! A URL shortener whose clicks flow through restmq.
//!
//! `POST /shorten url=…` answers a short URL; `GET /<code>` redirects to the
//! long one and publishes a click event `{"code","at","referer","agent"}` to
//! the restmq queue `clicks`. A consumer receives the events (with a visibility
//! timeout, acknowledging each batch once counted) and keeps per-link
//! statistics, served at `GET /stats/<code>`.
//!
//! The redirect does not wait for the statistics: it only waits for restmq to
//! have the event on disk. The consumer talks to restmq over HTTP only, so it
//! could run elsewhere, stop and catch up: clicks wait in the queue meanwhile.

#[path = "../common/mod.rs"]
mod common;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result};
use axum::Router;
use axum::extract::{Form, Path, State};
use axum::http::{HeaderMap, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use clap::Parser;
use serde::{Deserialize, Serialize};

use common::Restmq;

/// A URL shortener whose click events flow through restmq to a statistics consumer.
#[derive(Parser)]
struct Args {
    /// A running restmq to use (say http://127.0.0.1:8888); without it, one is
    /// started in this process with a temporary data directory.
    #[arg(long)]
    server: Option<String>,
    /// Address the shortener listens on.
    #[arg(long, default_value = "127.0.0.1")]
    listen: String,
    /// Port the shortener listens on (0 picks a free one).
    #[arg(long, default_value_t = 8890)]
    port: u16,
}

/// The queue click events go through.
const CLICKS: &str = "clicks";

/// A click, as published to restmq.
#[derive(Serialize, Deserialize)]
struct Click {
    code: String,
    /// Milliseconds since 1970.
    at: u64,
    referer: Option<String>,
    agent: Option<String>,
}

/// What is known of one link.
#[derive(Default, Serialize)]
struct LinkStats {
    clicks: u64,
    /// Milliseconds since 1970 of the latest click counted.
    last_click: Option<u64>,
    referers: BTreeMap<String, u64>,
    agents: BTreeMap<String, u64>,
}

/// The links, kept in memory: this example is about the clicks.
#[derive(Default)]
struct Links {
    by_code: HashMap<String, String>,
    by_url: HashMap<String, String>,
}

struct Shortener {
    mq: Restmq,
    links: Mutex<Links>,
    stats: Mutex<HashMap<String, LinkStats>>,
}

type Shared = Arc<Shortener>;

#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse();
    let mq = Restmq::start_or_connect(args.server.as_deref()).await?;
    let listener = tokio::net::TcpListener::bind((args.listen.as_str(), args.port))
        .await
        .with_context(|| format!("binding {}:{}", args.listen, args.port))?;
    let here = format!("http://{}", listener.local_addr()?);
    let restmq_base = mq.base.clone();
    let shared = Arc::new(Shortener {
        mq,
        links: Mutex::default(),
        stats: Mutex::default(),
    });

    println!("shortener: {here}");
    println!("restmq: {}", shared.mq.describe());
    println!("try:");
    println!("  curl -d url=https://www.rust-lang.org/ {here}/shorten");
    println!("  curl -i -e https://example.com/ {here}/<code>");
    println!("  curl {here}/stats/<code>");
    println!("  curl {restmq_base}/stats/{CLICKS}     # the queue, at restmq");

    let consumer = tokio::spawn(consume(shared.clone()));
    let app = Router::new()
        .route("/", get(usage))
        .route("/shorten", post(shorten))
        .route("/stats/{code}", get(stats))
        .route("/{code}", get(follow))
        .with_state(shared.clone());
    axum::serve(listener, app)
        .with_graceful_shutdown(common::stop_signal())
        .await?;

    consumer.abort();
    let _ = consumer.await;
    if let Ok(shortener) = Arc::try_unwrap(shared) {
        shortener.mq.stop().await?;
    }
    Ok(())
}

async fn usage() -> &'static str {
    "POST /shorten url=URL   a short URL for URL\n\
     GET /<code>             redirects, and counts the click\n\
     GET /stats/<code>       the link's clicks, last click, referers and agents\n"
}

#[derive(Deserialize)]
struct ShortenForm {
    url: String,
}

/// `POST /shorten url=…`: the short URL, one line; the same one for the same URL.
async fn shorten(
    State(shared): State<Shared>,
    headers: HeaderMap,
    Form(form): Form<ShortenForm>,
) -> Response {
    let url = form.url.trim();
    // Checked here, so that the redirect's Location header is always valid.
    let valid = url.parse::<Uri>().is_ok_and(|uri| {
        matches!(uri.scheme_str(), Some("http" | "https")) && uri.authority().is_some()
    });
    if !valid {
        return (StatusCode::BAD_REQUEST, "url must be an http(s) URL\n").into_response();
    }
    let code = {
        let mut links = shared.links.lock().unwrap_or_else(PoisonError::into_inner);
        match links.by_url.get(url) {
            Some(code) => code.clone(),
            None => {
                let code = new_code(&links.by_code, url);
                links.by_code.insert(code.clone(), url.to_string());
                links.by_url.insert(url.to_string(), code.clone());
                code
            }
        }
    };
    let host = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or("localhost");
    format!("http://{host}/{code}\n").into_response()
}

/// Six base-62 characters from a hash of the URL; on a collision, the hash of
/// the URL with a counter, until free.
fn new_code(taken: &HashMap<String, String>, url: &str) -> String {
    const DIGITS: &[u8] = b"0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ";
    (0u64..)
        .map(|attempt| {
            let mut hash = common::fnv1a(&format!("{attempt}:{url}"));
            (0..6)
                .map(|_| {
                    let digit = DIGITS[(hash % 62) as usize];
                    hash /= 62;
                    char::from(digit)
                })
                .collect::<String>()
        })
        .find(|code| !taken.contains_key(code))
        .unwrap_or_default() // unreachable: the codes never run out before the attempts
}

/// `GET /<code>`: publishes the click, then redirects.
async fn follow(
    State(shared): State<Shared>,
    Path(code): Path<String>,
    headers: HeaderMap,
) -> Response {
    let url = shared
        .links
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .by_code
        .get(&code)
        .cloned();
    let Some(url) = url else {
        return (StatusCode::NOT_FOUND, "no such link\n").into_response();
    };
    let text = |name| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    };
    let click = Click {
        code,
        at: now_millis(),
        referer: text(header::REFERER),
        agent: text(header::USER_AGENT),
    };
    // Awaited, so that a click answered is a click counted, sooner or later.
    // Should restmq be down, the visitor is still sent on: the click is lost,
    // and the log says so.
    let published = match serde_json::to_string(&click) {
        Ok(event) => shared.mq.publish(CLICKS, event).await,
        Err(e) => Err(e.into()),
    };
    if let Err(e) = published {
        eprintln!("click on {} not recorded: {e:#}", click.code);
    }
    (StatusCode::FOUND, [(header::LOCATION, url)]).into_response()
}

/// `GET /stats/<code>`: the link's statistics as JSON.
async fn stats(State(shared): State<Shared>, Path(code): Path<String>) -> Response {
    let Some(url) = shared
        .links
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .by_code
        .get(&code)
        .cloned()
    else {
        return (StatusCode::NOT_FOUND, "no such link\n").into_response();
    };
    let stats = shared.stats.lock().unwrap_or_else(PoisonError::into_inner);
    let empty = LinkStats::default();
    let link = stats.get(&code).unwrap_or(&empty);
    axum::Json(serde_json::json!({
        "code": code,
        "url": url,
        "clicks": link.clicks,
        "last_click": link.last_click,
        "referers": link.referers,
        "agents": link.agents,
    }))
    .into_response()
}

/// Counts clicks as they arrive, until aborted.
async fn consume(shared: Shared) {
    // Messages counted whose acknowledgement failed: restmq delivers them
    // again (under the same key), and they must not be counted twice.
    let mut unconfirmed: HashSet<String> = HashSet::new();
    loop {
        let deliveries = match shared.mq.receive(CLICKS, 30, 100).await {
            Ok(deliveries) => deliveries,
            Err(e) => {
                eprintln!("receiving clicks: {e:#}");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        let mut receipts = Vec::new();
        let mut keys = Vec::new();
        {
            let mut stats = shared.stats.lock().unwrap_or_else(PoisonError::into_inner);
            for delivery in deliveries {
                if !unconfirmed.remove(&delivery.key) {
                    match serde_json::from_str::<Click>(&delivery.value) {
                        Ok(click) => record(&mut stats, click),
                        // Redelivering it would not make it readable.
                        Err(e) => eprintln!("skipping {}: {e}", delivery.key),
                    }
                }
                receipts.push(delivery.receipt);
                keys.push(delivery.key);
            }
        }
        if let Err(e) = shared.mq.ack(&receipts).await {
            eprintln!("acknowledging clicks: {e:#}");
            unconfirmed.extend(keys);
        }
    }
}

fn record(stats: &mut HashMap<String, LinkStats>, click: Click) {
    let link = stats.entry(click.code).or_default();
    link.clicks += 1;
    link.last_click = link.last_click.max(Some(click.at));
    let referer = click.referer.unwrap_or_else(|| "(none)".into());
    *link.referers.entry(referer).or_insert(0) += 1;
    let agent = click.agent.unwrap_or_else(|| "(none)".into());
    *link.agents.entry(agent).or_insert(0) += 1;
}

fn now_millis() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}
