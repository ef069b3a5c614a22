//! The HTTP front door: the router and its handlers, by route family.

pub mod access;
mod admin;
mod answer;
mod collectd;
mod command;
pub(crate) mod direct;
mod legacy;
mod openapi;
pub mod params;
mod reliable;
pub mod stream;
pub(crate) mod trace;
mod ui;
mod ws_ack;

use axum::Router;
use axum::routing::{get, post};

use crate::AppState;
use crate::error::Error;

/// Every route, with the body limit, the 404 and the 405 answers.
///
/// axum answers HEAD with the GET handler, dropping the body: on the routes
/// whose GET takes messages (`/`, `/q/<q>`, `/c/<q>`, `/sse/<q>`) a HEAD would
/// take them and deliver them to nobody. There HEAD gets 405, as in the
/// original, whose handlers defined no `head`.
pub fn router(state: AppState) -> Router {
    Router::new()
        .route(
            "/",
            get(legacy::index)
                .head(method_not_allowed)
                .post(legacy::index_publish),
        )
        .route("/q/", get(legacy::queue_list).post(legacy::no_queue))
        .route(
            "/q/{*queue}",
            get(legacy::queue_pop)
                .head(method_not_allowed)
                .post(legacy::queue_publish)
                .delete(legacy::queue_purge),
        )
        .route("/queue", get(command::help).post(command::run))
        .route("/p/", get(legacy::no_queue).post(legacy::no_queue))
        .route(
            "/p/{*queue}",
            get(legacy::policy_get).post(legacy::policy_set),
        )
        .route(
            "/control/",
            get(legacy::control_list).post(legacy::no_queue),
        )
        .route(
            "/control/{*queue}",
            get(legacy::control_get).post(legacy::control_set),
        )
        .route("/ack", post(reliable::ack))
        .route("/nack", post(reliable::nack))
        .route("/extend", post(reliable::extend))
        .route("/config/", get(legacy::no_queue).post(legacy::no_queue))
        .route(
            "/config/{*queue}",
            get(reliable::config_get).post(reliable::config_set),
        )
        .route("/redrive/", post(legacy::no_queue))
        .route("/redrive/{*queue}", post(reliable::redrive))
        .route("/collectd/data", post(collectd::data))
        .route("/collectd/event", post(collectd::event))
        .route("/healthz", get(admin::healthz))
        .route("/readyz", get(admin::readyz))
        .route("/metrics", get(admin::metrics))
        .route("/stats/", get(admin::all))
        .route("/stats/{*queue}", get(admin::one))
        .route("/j/", get(legacy::no_queue))
        .route("/j/{*queue}", get(legacy::job_view))
        .route("/c/", get(legacy::no_queue))
        .route("/c/{*queue}", get(stream::comet).head(method_not_allowed))
        .route("/sse/", get(legacy::no_queue))
        .route("/sse/{*queue}", get(stream::sse).head(method_not_allowed))
        .route("/ws/", get(legacy::no_queue))
        .route("/ws/{*queue}", get(stream::websocket))
        .route("/static/{*path}", get(ui::asset))
        .route("/ui", get(ui::dashboard))
        .route("/openapi.json", get(openapi::document))
        .fallback(|| async { Error::NotFound })
        .method_not_allowed_fallback(method_not_allowed)
        .layer(trace::Front::new(state.clone()))
        .with_state(state)
}

/// The answer to a method a route does not have.
async fn method_not_allowed() -> Error {
    Error::MethodNotAllowed
}
