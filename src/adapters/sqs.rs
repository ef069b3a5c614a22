//! The SQS-compatible API: Amazon SQS's JSON and query protocols over HTTP, on
//! queues that are restmq's own.

use axum::Router;

use crate::AppState;
use crate::error::Error;

/// Every SQS action, at `/` and at each queue's URL.
pub fn router(state: AppState) -> Router {
    Router::new()
        .fallback(|| async { Error::NotFound })
        .with_state(state)
}
