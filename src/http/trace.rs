//! The router's one layer, which the routes served without the router
//! ([`super::direct`]) pass too: a span per request (at debug level), so that
//! whatever a request logs carries its method, path and client; the access
//! check; each answer's time to the latency histogram, and at debug level to
//! the log with its status.

use std::convert::Infallible;
use std::net::{IpAddr, Ipv4Addr};
use std::pin::Pin;
use std::task::{Context, Poll};

use axum::extract::{MatchedPath, Request};
use axum::http::Method;
use axum::response::{IntoResponse, Response};
use tokio::time::Instant;
use tower_layer::Layer;
use tower_service::Service;
use tracing::Instrument;

use crate::AppState;

/// The client's address as the connection gave it (before any proxy header).
/// Served without restmq's accept loop (which adds the peer), nothing is known
/// of the client: the unspecified address, which no rule allows.
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
    S::Future: Unpin,
{
    type Response = Response;
    type Error = Infallible;
    type Future = Fronted<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request) -> Self::Future {
        // The route's pattern, not the path: one series per route, whatever the queues.
        let route = match request.extensions().get::<MatchedPath>() {
            Some(matched) => Route::Matched(matched.clone()),
            None => Route::Named("unmatched"),
        };
        let peer = peer(&request);
        front(&self.state, request, peer, route, |mut request, grant| {
            super::access::hand_over(&mut request, grant);
            self.inner.call(request)
        })
    }
}

/// The route an answer is counted under.
pub enum Route {
    /// The router's pattern for the request.
    Matched(MatchedPath),
    /// A pattern named by whatever served the request without the router.
    Named(&'static str),
}

impl Route {
    fn as_str(&self) -> &str {
        match self {
            Route::Matched(matched) => matched.as_str(),
            Route::Named(name) => name,
        }
    }
}

/// What [`Front`] does for every request, for whatever serves it: opens its
/// span, decides it from `peer` ([`super::access::admit`]) and, once let in,
/// hands it to `call` with its grant; the answer is timed and counted under
/// `route`.
pub fn front<F>(
    state: &AppState,
    request: Request,
    peer: IpAddr,
    route: Route,
    call: impl FnOnce(Request, crate::acl::Grant) -> F,
) -> Fronted<F> {
    let span = tracing::debug_span!(
        "request",
        method = %request.method(),
        path = %request.uri().path(),
        client = %peer,
    );
    let method = request.method().clone();
    let started = Instant::now();
    let admitted = span.in_scope(|| super::access::admit(state, &request, peer));
    let answer = match admitted {
        Ok(grant) => Answer::Routed(call(request, grant).instrument(span.clone())),
        Err(refused) => Answer::Refused(Some(refused.into_response())),
    };
    Fronted {
        answer,
        state: state.clone(),
        span,
        method,
        route,
        started,
    }
}

/// The answer to a request behind [`front`], timed when it is ready. A
/// future of its own rather than an async block, which would be boxed once
/// more on top of the box every route's future is in.
pub struct Fronted<F> {
    answer: Answer<F>,
    state: AppState,
    span: tracing::Span,
    method: Method,
    route: Route,
    started: Instant,
}

enum Answer<F> {
    /// Let in: the route's answer, in the request's span.
    Routed(tracing::instrument::Instrumented<F>),
    /// Refused by the access check; taken once answered.
    Refused(Option<Response>),
}

impl<F> Future for Fronted<F>
where
    F: Future<Output = Result<Response, Infallible>> + Unpin,
{
    type Output = Result<Response, Infallible>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = &mut *self;
        let response = match &mut this.answer {
            Answer::Routed(routed) => match std::task::ready!(Pin::new(routed).poll(cx)) {
                Ok(response) => response,
                Err(never) => match never {},
            },
            Answer::Refused(refused) => refused
                .take()
                .expect("a refused request's answer is polled once"),
        };
        let elapsed = this.started.elapsed();
        answered(
            &this.state,
            &this.span,
            this.method.as_str(),
            this.route.as_str(),
            &response,
            elapsed,
        );
        Poll::Ready(Ok(response))
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
