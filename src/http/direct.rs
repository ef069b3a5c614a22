//! The busiest routes served without the router: `GET` and `POST` of
//! `/q/<q>`, a pop and a publish. The router's matching, its path parameters
//! and matched path in the request's extensions, and the extractors built on
//! them measured about a fifth of the instructions a pop costs where
//! connections are served (callgrind). Here the path is read once, and the
//! same handlers answer, behind the same front ([`super::trace::front`]):
//! span, access check, timing. Every other method and route, `HEAD` and
//! `DELETE` of `/q/<q>` among them, goes to the router.

use std::convert::Infallible;
use std::future::Future;
use std::net::IpAddr;
use std::pin::Pin;

use axum::extract::{FromRequest, Request, State};
use axum::http::Method;
use axum::response::{IntoResponse, Response};

use super::legacy;
use super::params::{Params, Queue};
use super::trace::{Fronted, Route, front};
use crate::AppState;
use crate::error::Error;

/// The router's pattern for the routes served here, so that their answers
/// are counted under the same series either way.
const QUEUE_ROUTE: &str = "/q/{*queue}";
/// What precedes the queue's name in their paths.
const PREFIX: &str = "/q/";

/// A route served here.
#[derive(Clone, Copy)]
pub enum Direct {
    /// `GET /q/<q>`.
    Pop,
    /// `POST /q/<q>`.
    Publish,
}

impl Direct {
    /// The route served here that `method` and `path` name, if any: the
    /// router's `/q/{*queue}` matches any non-empty rest, as this does.
    pub fn of(method: &Method, path: &str) -> Option<Direct> {
        let rest = path.strip_prefix(PREFIX)?;
        if rest.is_empty() {
            return None;
        }
        match *method {
            Method::GET => Some(Direct::Pop),
            Method::POST => Some(Direct::Publish),
            _ => None,
        }
    }
}

/// The answer of a direct route, boxed as the router boxes its routes'.
pub type Answered = Pin<Box<dyn Future<Output = Result<Response, Infallible>> + Send>>;

/// Serves `request` from `peer`, which [`Direct::of`] found to be `route`.
/// Its handlers take no grant (the access check decided on the queue of the
/// path) and no peer from the request's extensions, so it needs none.
pub fn serve(state: &AppState, request: Request, peer: IpAddr, route: Direct) -> Fronted<Answered> {
    let served = state.clone();
    let route_name = Route::Named(QUEUE_ROUTE);
    front(state, request, peer, route_name, move |request, _grant| {
        let answered: Answered =
            Box::pin(async move { Ok(answer(served, request, route).await.into_response()) });
        answered
    })
}

/// As the router would: the queue from the path, then the parameters (which
/// reads the body), then the handler.
async fn answer(state: AppState, request: Request, route: Direct) -> Result<Response, Error> {
    // `Direct::of` found the prefix there.
    let rest = request
        .uri()
        .path()
        .strip_prefix(PREFIX)
        .unwrap_or_default();
    let queue = Queue::from_path(rest)?;
    let params = Params::from_request(request, &state).await?;
    match route {
        Direct::Pop => legacy::queue_pop(State(state), queue, params).await,
        Direct::Publish => legacy::queue_publish(State(state), queue, params).await,
    }
}
