//! The one error type of restmq, and how each error is answered over HTTP.

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};

use crate::store::StoreError;

/// Everything that can go wrong in a request. Each variant maps to one status.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A queue name that is empty, too long or holds control characters.
    #[error("invalid queue name: {0}")]
    InvalidQueueName(&'static str),
    /// A required parameter is absent or empty.
    #[error("missing parameter: {0}")]
    MissingParameter(&'static str),
    /// A parameter is present but unusable.
    #[error("invalid parameter {name}: {reason}")]
    InvalidParameter {
        /// The parameter's name.
        name: &'static str,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// A JSONP callback that is not a JavaScript identifier path.
    #[error("invalid callback: it must be a JavaScript identifier path such as cb or app.cb")]
    InvalidCallback,
    /// A JSON command that is not a JSON object with a non-empty `cmd`.
    #[error("malformed JSON: {0}")]
    MalformedJson(String),
    /// A request body over the configured limit.
    #[error("request body is larger than the limit of {limit} bytes")]
    BodyTooLarge {
        /// The limit in bytes.
        limit: usize,
    },
    /// A request head over the limit of a stream request served on its socket.
    #[error("the request head is larger than the limit of {limit} bytes")]
    HeadTooLarge {
        /// The limit in bytes.
        limit: usize,
    },
    /// A request body that could not be read.
    #[error("cannot read the request body: {0}")]
    BadBody(String),
    /// A body in a format the route takes, but not well formed (a collectd
    /// payload, say).
    #[error("invalid body: {0}")]
    InvalidBody(String),
    /// A body in a format the route does not take.
    #[error("unsupported Content-Type: {0}")]
    UnsupportedMediaType(String),
    /// A request body that did not arrive whole in time (`--body-timeout`).
    #[error("the request body did not arrive within {seconds} s")]
    BodyTimeout {
        /// The limit, in seconds.
        seconds: f64,
    },
    /// A plain HTTP request sent to a port that speaks TLS.
    #[error("this port speaks HTTPS: send the request over TLS")]
    TlsRequired,
    /// `GET /?queue=` found the queue empty (the original answers 404 there).
    #[error("queue is empty")]
    EmptyQueue,
    /// Receipts of deliveries that are over: acknowledged, released, or their
    /// visibility ran out (another delivery may have started).
    #[error(
        "stale receipt: the delivery is over (acknowledged, released, or its visibility ran out)"
    )]
    StaleReceipts(Vec<String>),
    /// A WebSocket route reached without a WebSocket handshake.
    #[error("this route speaks WebSocket: send an upgrade request")]
    UpgradeRequired,
    /// The server is shutting down and takes no new streams.
    #[error("the server is shutting down")]
    ShuttingDown,
    /// The server holds as many connections as it may (`--max-connections`).
    #[error("too many connections: the server's limit of {limit} is reached; retry later")]
    TooManyConnections {
        /// The limit.
        limit: usize,
    },
    /// The server has as many streaming consumers as it may (`--max-consumers`).
    #[error("too many streaming consumers: the server's limit of {limit} is reached; retry later")]
    TooManyConsumers {
        /// The limit.
        limit: usize,
    },
    /// The queue has as many streaming consumers as it may
    /// (`--max-consumers-per-queue`).
    #[error(
        "too many streaming consumers of this queue: the limit of {limit} per queue is reached; retry later"
    )]
    TooManyQueueConsumers {
        /// The limit.
        limit: usize,
    },
    /// No route answers this path.
    #[error("not found")]
    NotFound,
    /// The route exists but not for this method.
    #[error("method not allowed")]
    MethodNotAllowed,
    /// Credentials are missing or wrong.
    #[error("authentication required: {}", challenge_text(*basic, *bearer))]
    Unauthorized {
        /// Whether HTTP Basic credentials would do.
        basic: bool,
        /// Whether a bearer token would do.
        bearer: bool,
    },
    /// The client may not do this: its address is refused, or its token lacks
    /// the right.
    #[error("forbidden: {0}")]
    Forbidden(String),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

fn challenge_text(basic: bool, bearer: bool) -> &'static str {
    match (basic, bearer) {
        (true, true) => "send HTTP Basic credentials or a bearer token",
        (true, false) => "send HTTP Basic credentials",
        (false, true) | (false, false) => "send a bearer token",
    }
}

impl Error {
    /// The HTTP status this error is answered with.
    pub fn status(&self) -> StatusCode {
        match self {
            Error::InvalidQueueName(_) => StatusCode::BAD_REQUEST,
            Error::MissingParameter(_) => StatusCode::BAD_REQUEST,
            Error::InvalidParameter { .. } => StatusCode::BAD_REQUEST,
            Error::InvalidCallback => StatusCode::BAD_REQUEST,
            Error::MalformedJson(_) => StatusCode::BAD_REQUEST,
            Error::BodyTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            Error::HeadTooLarge { .. } => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            Error::BadBody(_) => StatusCode::BAD_REQUEST,
            Error::InvalidBody(_) => StatusCode::BAD_REQUEST,
            Error::UnsupportedMediaType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Error::BodyTimeout { .. } => StatusCode::REQUEST_TIMEOUT,
            Error::TlsRequired => StatusCode::BAD_REQUEST,
            Error::EmptyQueue => StatusCode::NOT_FOUND,
            Error::StaleReceipts(_) => StatusCode::CONFLICT,
            Error::UpgradeRequired => StatusCode::UPGRADE_REQUIRED,
            Error::ShuttingDown => StatusCode::SERVICE_UNAVAILABLE,
            Error::TooManyConnections { .. } => StatusCode::SERVICE_UNAVAILABLE,
            Error::TooManyConsumers { .. } => StatusCode::SERVICE_UNAVAILABLE,
            Error::TooManyQueueConsumers { .. } => StatusCode::SERVICE_UNAVAILABLE,
            Error::NotFound => StatusCode::NOT_FOUND,
            Error::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            Error::Unauthorized { .. } => StatusCode::UNAUTHORIZED,
            Error::Forbidden(_) => StatusCode::FORBIDDEN,
            Error::Store(StoreError::Unavailable(_)) => StatusCode::SERVICE_UNAVAILABLE,
            Error::Store(StoreError::Closed) => StatusCode::SERVICE_UNAVAILABLE,
            Error::Store(StoreError::Corrupted(_)) => StatusCode::INTERNAL_SERVER_ERROR,
            Error::Store(StoreError::Full(_)) => StatusCode::TOO_MANY_REQUESTS,
        }
    }
}

/// Every error is answered as `{"error": "<message>"}` with its status.
impl IntoResponse for Error {
    fn into_response(self) -> Response {
        let status = self.status();
        if self.is_limit() {
            // Expected under load, and answered clearly: not worth an error line each.
            tracing::debug!(error = %self, "request refused");
        } else if status.is_server_error() {
            tracing::error!(error = %self, "request failed");
        }
        let mut body = serde_json::json!({ "error": self.to_string() });
        if let Error::StaleReceipts(stale) = &self {
            body["stale"] = serde_json::json!(stale);
        }
        let mut response = (status, Json(body)).into_response();
        for (name, value) in self.headers() {
            if let Ok(value) = axum::http::HeaderValue::from_str(&value) {
                response.headers_mut().append(name, value);
            }
        }
        response
    }
}

/// Seconds a client refused for a limit is told to wait (`Retry-After`): a
/// stream or connection is usually freed within that.
pub const RETRY_AFTER_SECS: u64 = 1;

impl Error {
    /// Whether this refuses a client for a limit of the server, to retry later.
    pub fn is_limit(&self) -> bool {
        matches!(
            self,
            Error::TooManyConnections { .. }
                | Error::TooManyConsumers { .. }
                | Error::TooManyQueueConsumers { .. }
        )
    }

    /// Headers the answer carries besides its body: the challenges of a 401,
    /// the `Retry-After` of a refusal for a limit.
    pub fn headers(&self) -> Vec<(axum::http::HeaderName, String)> {
        let www = axum::http::header::WWW_AUTHENTICATE;
        match self {
            Error::TooManyConnections { .. }
            | Error::TooManyConsumers { .. }
            | Error::TooManyQueueConsumers { .. } => vec![(
                axum::http::header::RETRY_AFTER,
                RETRY_AFTER_SECS.to_string(),
            )],
            Error::Unauthorized { basic, bearer } => {
                let mut headers = Vec::new();
                if *basic {
                    headers.push((
                        www.clone(),
                        r#"Basic realm="restmq", charset="UTF-8""#.to_owned(),
                    ));
                }
                if *bearer || !*basic {
                    headers.push((www, r#"Bearer realm="restmq""#.to_owned()));
                }
                headers
            }
            _ => Vec::new(),
        }
    }
}
