//! The router's one middleware: a span per request (at debug level), so that
//! whatever a request logs carries its method, path and client; the access
//! check; each answer's time to the latency histogram, and at debug level to
//! the log with its status.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use axum::extract::{ConnectInfo, MatchedPath, Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use tokio::time::Instant;
use tracing::Instrument;

use crate::AppState;

/// The client's address as the connection gave it (before any proxy header).
pub fn peer(request: &Request) -> IpAddr {
    request
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED), |info| info.0.ip())
}

/// The middleware every route passes: runs the request inside its span,
/// decides it ([`super::access::admit`]) before any work, and times its
/// answer. One layer rather than two: each `from_fn` layer clones and boxes
/// the service below it per request. The span is at debug level: at info, the
/// log subscriber formats a span's fields when it is made, which measured 17%
/// of the instructions of a whole request (callgrind, `GET /healthz`), for
/// context that only debug logs use.
pub async fn front(State(state): State<AppState>, mut request: Request, next: Next) -> Response {
    let span = tracing::debug_span!(
        "request",
        method = %request.method(),
        path = %request.uri().path(),
        client = %peer(&request),
    );
    let method = request.method().clone();
    // The route's pattern, not the path: one series per route, whatever the queues.
    let route = request.extensions().get::<MatchedPath>().cloned();
    let started = Instant::now();
    let response = async {
        match super::access::admit(&state, &mut request) {
            Ok(()) => next.run(request).await,
            Err(refused) => refused.into_response(),
        }
    }
    .instrument(span.clone())
    .await;
    let elapsed = started.elapsed();
    let route = route.as_ref().map_or("unmatched", MatchedPath::as_str);
    answered(&state, &span, method.as_str(), route, &response, elapsed);
    response
}

/// Counts an answered request in the latency histogram under `route`, and
/// logs it in its span (at debug level) with its status and time.
pub fn answered(
    state: &AppState,
    span: &tracing::Span,
    method: &str,
    route: &str,
    response: &Response,
    elapsed: std::time::Duration,
) {
    state.metrics.http(method, route, elapsed);
    span.in_scope(|| {
        tracing::debug!(
            status = response.status().as_u16(),
            micros = u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX),
            "answered"
        );
    });
}
