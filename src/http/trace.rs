//! The router's one layer: a span per request (at debug level), so that
//! whatever a request logs carries its method, path and client; the access
//! check; each answer's time to the latency histogram, and at debug level to
//! the log with its status.

use std::convert::Infallible;
use std::net::{IpAddr, Ipv4Addr};
use std::pin::Pin;
use std::task::{Context, Poll};

use axum::extract::{MatchedPath, Request};
use axum::response::{IntoResponse, Response};
use tokio::time::Instant;
use tower_layer::Layer;
use tower_service::Service;
use tracing::Instrument;

use crate::AppState;

/// The client's address as the connection gave it (before any proxy header).
pub fn peer(request: &Request) -> IpAddr {
    request
        .extensions()
        .get::<super::access::Client>()
        .and_then(|client| client.peer)
        .map_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED), |peer| peer.ip())
}

/// The layer every route passes: runs the request inside its span, decides it
/// ([`super::access::admit`]) before any work, and times its answer. Written
/// out rather than with `axum::middleware::from_fn`, which clones and boxes
/// the route below it for every request; the access check is synchronous, so
/// the route is called directly once it has let the request in. The span is
/// at debug level: at info, the log subscriber formats a span's fields when it
/// is made, which measured 17% of the instructions of a whole request
/// (callgrind, `GET /healthz`), for context that only debug logs use.
#[derive(Clone)]
pub struct Front {
    state: AppState,
}

impl Front {
    /// The layer, answering with `state`.
    pub fn new(state: AppState) -> Front {
        Front { state }
    }
}

impl<S> Layer<S> for Front {
    type Service = FrontService<S>;

    fn layer(&self, inner: S) -> FrontService<S> {
        FrontService {
            state: self.state.clone(),
            inner,
        }
    }
}

/// A route behind [`Front`].
#[derive(Clone)]
pub struct FrontService<S> {
    state: AppState,
    inner: S,
}

impl<S> Service<Request> for FrontService<S>
where
    S: Service<Request, Response = Response, Error = Infallible>,
    S::Future: Send + 'static,
{
    type Response = Response;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Response, Infallible>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: Request) -> Self::Future {
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
        let admitted = span.in_scope(|| super::access::admit(&self.state, &mut request));
        let routed = admitted.map(|()| self.inner.call(request));
        let state = self.state.clone();
        Box::pin(async move {
            let response = match routed {
                Ok(routed) => match routed.instrument(span.clone()).await {
                    Ok(response) => response,
                    Err(never) => match never {},
                },
                Err(refused) => refused.into_response(),
            };
            let elapsed = started.elapsed();
            let route = route.as_ref().map_or("unmatched", MatchedPath::as_str);
            answered(&state, &span, method.as_str(), route, &response, elapsed);
            Ok(response)
        })
    }
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
