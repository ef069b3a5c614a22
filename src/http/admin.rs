//! Statistics (`GET /stats/`, `GET /stats/<q>`) and health (`GET /healthz`,
//! `GET /readyz`).

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use serde_json::{Map, Value, json};

use super::answer::stats;
use super::params::{Params, Queue};
use crate::AppState;
use crate::broker::QueueName;
use crate::error::Error;
use crate::metrics::QueueGauges;
use crate::store::{Policy, Status};

/// `GET /stats/`: every listed queue with its length, status, policy and
/// streaming consumers (`consumers` and the counts after it are restmq's
/// additions; `published` is the number of the last message published, which
/// only grows, so its change between two reads is the publish rate).
///
/// As in the original, `status` is 1 when started and `""` otherwise, and
/// `policy` is 1 (broadcast), 2 (roundrobin) or `""` when never set.
pub async fn all(State(state): State<AppState>, params: Params) -> Result<Response, Error> {
    let callback = params.callback()?;
    let queues = state.broker.queues().await?;
    let mut all = Map::new();
    for (name, info) in &queues {
        let status = match info.status {
            Some(Status::Started) => json!(1),
            Some(Status::Stopped) | None => json!(""),
        };
        let policy = info.policy.map_or(json!(""), |p: Policy| json!(p.code()));
        let (consumers, waiting) = QueueName::parse(name).map_or((0, 0), |q| {
            (state.broker.consumers(&q), state.broker.waiting(&q))
        });
        all.insert(
            name.clone(),
            json!({
                "name": name,
                "len": info.len,
                "status": status,
                "policy": policy,
                "consumers": consumers,
                "waiting": waiting,
                "inflight": info.inflight,
                "delayed": info.delayed,
                "published": info.last_id,
            }),
        );
    }
    let answer = json!({
        "queues": Value::Object(all),
        "redis": state.broker.describe(),
        "count": queues.len(),
    });
    Ok(stats(&answer, callback.as_ref()))
}

/// `GET /metrics`: the Prometheus text exposition: counters since the process
/// started, and the queues' gauges read now.
pub async fn metrics(State(state): State<AppState>) -> Result<Response, Error> {
    let queues = state.broker.queues().await?;
    let gauges: Vec<QueueGauges> = queues
        .into_iter()
        .map(|(name, info)| {
            let consumers = QueueName::parse(&name).map_or(0, |q| state.broker.consumers(&q));
            QueueGauges {
                queue: name,
                depth: info.len,
                inflight: info.inflight,
                delayed: info.delayed,
                consumers: consumers as u64,
            }
        })
        .collect();
    Ok((
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        state.metrics.render(&gauges, &state.broker.dead_lettered()),
    )
        .into_response())
}

/// `GET /stats/<q>`: the queue's length (0 for an unknown queue), its
/// streaming consumers, long polls waiting, messages in flight or delayed, and
/// the number of the last message published.
pub async fn one(
    State(state): State<AppState>,
    Queue(queue): Queue,
    params: Params,
) -> Result<Response, Error> {
    let callback = params.callback()?;
    let info = state.broker.queue(&queue).await?.unwrap_or_default();
    let answer = json!({
        "redis": state.broker.describe(),
        "queue": queue.as_str(),
        "len": info.len,
        "consumers": state.broker.consumers(&queue),
        "waiting": state.broker.waiting(&queue),
        "inflight": info.inflight,
        "delayed": info.delayed,
        "published": info.last_id,
    });
    Ok(stats(&answer, callback.as_ref()))
}

/// `GET /healthz`: the process is up.
pub async fn healthz() -> Response {
    super::answer::json(&json!({ "status": "ok" }))
}

/// `GET /readyz`: the store can be reached; 503 with the reason otherwise.
pub async fn readyz(State(state): State<AppState>) -> Result<Response, Error> {
    state.broker.ready().await?;
    Ok(super::answer::json(
        &json!({ "status": "ready", "store": state.broker.describe() }),
    ))
}
