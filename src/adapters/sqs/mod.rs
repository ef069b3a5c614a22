//! The SQS-compatible API: Amazon SQS's JSON and query protocols over HTTP,
//! on queues that are restmq's own (a message sent to `jobs` here is popped
//! by `GET /q/jobs`, and the other way round).
//!
//! Each request is read into the JSON protocol's shape ([`input`]),
//! admitted by the access rules ([`access`], with SigV4 in [`sign`]),
//! served by its action ([`queues`], [`messages`]) and answered in the
//! protocol it came in ([`output`]).

mod access;
pub mod error;
pub mod input;
pub mod message;
mod messages;
pub mod output;
mod queues;
pub mod sign;

use std::net::IpAddr;

use axum::Router;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, Method, request::Parts};
use axum::response::Response;
use serde_json::{Map, Value};
use tracing::Instrument;

use self::error::{Code, SqsError};
use self::input::{Call, Protocol};
use crate::AppState;
use crate::acl::{Category, Grant, Right};
use crate::broker::QueueName;

/// The account id in queue URLs and ARNs.
pub const ACCOUNT: &str = "000000000000";

/// The region in ARNs.
pub const REGION: &str = "us-east-1";

/// Longest SQS queue name.
pub const MAX_NAME: usize = 80;

/// Every SQS action, at `/` and at each queue's URL.
pub fn router(state: AppState) -> Router {
    Router::new().fallback(handle).with_state(state)
}

/// What an action needs to be let in: the rules it answers to, as its HTTP
/// equivalent does, and the right a key needs on its queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Need {
    /// The category of rules.
    pub category: Category,
    /// The right.
    pub right: Right,
}

/// The actions restmq serves, with what each needs; `None` for the rest.
fn need(action: &str) -> Option<Need> {
    use Category::{RestConsumer, RestProducer};
    let need = |category, right| Some(Need { category, right });
    match action {
        "SendMessage" | "SendMessageBatch" => need(RestProducer, Right::Publish),
        "ReceiveMessage"
        | "DeleteMessage"
        | "DeleteMessageBatch"
        | "ChangeMessageVisibility"
        | "ChangeMessageVisibilityBatch"
        | "GetQueueUrl"
        | "GetQueueAttributes" => need(RestConsumer, Right::Consume),
        "ListQueues" => need(RestConsumer, Right::Admin),
        "CreateQueue" | "DeleteQueue" | "PurgeQueue" | "SetQueueAttributes" => {
            need(RestProducer, Right::Admin)
        }
        _ => None,
    }
}

/// SQS actions restmq does not serve.
const UNSUPPORTED: &[&str] = &[
    "AddPermission",
    "RemovePermission",
    "ListDeadLetterSourceQueues",
    "ListQueueTags",
    "TagQueue",
    "UntagQueue",
    "StartMessageMoveTask",
    "CancelMessageMoveTask",
    "ListMessageMoveTasks",
];

/// What an action works with.
pub struct Ctx {
    state: AppState,
    grant: Grant,
    /// `http://<Host header>` (https with TLS).
    base: String,
    /// The queue named by the request's path, for the query protocol.
    path_queue: Option<String>,
}

impl Ctx {
    fn broker(&self) -> &crate::broker::Broker {
        &self.state.broker
    }

    /// The URL of `queue`.
    fn url(&self, queue: &str) -> String {
        format!("{}/{ACCOUNT}/{queue}", self.base)
    }

    /// The queue a request names: `QueueUrl`, or the path it was sent to.
    fn queue(&self, input: &Map<String, Value>) -> Result<QueueName, SqsError> {
        let name = match input::text(input, "QueueUrl")? {
            Some(url) => last_segment(url_path(url)).to_owned(),
            None => self
                .path_queue
                .clone()
                .ok_or_else(|| SqsError::missing("QueueUrl"))?,
        };
        existing(&name)
    }

    /// Checks that the grant may do `right` to `queue` (`None`: every queue).
    fn require(&self, right: Right, queue: Option<&QueueName>) -> Result<(), SqsError> {
        if self.grant.allows(right, queue.map(QueueName::as_str)) {
            return Ok(());
        }
        let who = match &self.grant {
            Grant::Token(token) => {
                format!("The access key {}", token.name.trim_start_matches("sqs:"))
            }
            Grant::Full => "This client".to_owned(),
        };
        let what = queue.map_or("every queue", QueueName::as_str);
        Err(SqsError::new(
            Code::AccessDenied,
            format!("{who} has no {right} right on {what}."),
        ))
    }
}

/// The path of a URL (`http://host/a/b` gives `/a/b`), or the text itself.
fn url_path(url: &str) -> &str {
    match url.split_once("://") {
        Some((_, rest)) => rest.find('/').map_or("", |at| &rest[at..]),
        None => url,
    }
}

/// The last non-empty segment of a path, without any query.
fn last_segment(path: &str) -> &str {
    let path = path.split(['?', '#']).next().unwrap_or("");
    path.trim_end_matches('/').rsplit('/').next().unwrap_or("")
}

/// Checks a queue name as SQS does: 1 to 80 of `A-Za-z0-9_-`. A `.fifo`
/// name is refused as unsupported.
fn sqs_name(name: &str) -> Result<QueueName, SqsError> {
    if name.ends_with(".fifo") {
        return Err(SqsError::new(
            Code::UnsupportedOperation,
            "FIFO queues are not supported by restmq.",
        ));
    }
    let valid = !name.is_empty()
        && name.len() <= MAX_NAME
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    if !valid {
        return Err(SqsError::invalid(format!(
            "Can only include alphanumeric characters, hyphens, or underscores. 1 to 80 in length: {name:?}."
        )));
    }
    QueueName::parse(name).map_err(|e| SqsError::invalid(e.to_string()))
}

/// A queue named by a URL or `GetQueueUrl`: one that cannot exist does not.
fn existing(name: &str) -> Result<QueueName, SqsError> {
    sqs_name(name).map_err(|error| match error.code {
        Code::UnsupportedOperation => error,
        _ => SqsError::new(
            Code::QueueDoesNotExist,
            format!("The specified queue {name:?} does not exist."),
        ),
    })
}

/// The queue ARN of `name`.
pub fn arn(name: &str) -> String {
    format!("arn:aws:sqs:{REGION}:{ACCOUNT}:{name}")
}

fn header<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

/// The decoded pairs of a query string or form body.
fn form_pairs(raw: &[u8], out: &mut Vec<(String, String)>) -> Result<(), SqsError> {
    let params =
        crate::http::params::Params::from_query(&String::from_utf8_lossy(raw)).map_err(|_| {
            SqsError::invalid("The parameters are not valid UTF-8 once percent-decoded.")
        })?;
    out.extend(params.pairs().iter().cloned());
    Ok(())
}

/// Reads the call of a request in its protocol.
fn call(protocol: Protocol, parts: &Parts, body: &[u8]) -> Result<Call, SqsError> {
    match protocol {
        Protocol::Json => {
            if parts.method != Method::POST {
                return Err(SqsError::new(
                    Code::InvalidAction,
                    "The JSON protocol takes POST requests.",
                ));
            }
            input::json_call(header(&parts.headers, "x-amz-target"), body)
        }
        Protocol::Query => {
            if parts.method != Method::POST && parts.method != Method::GET {
                return Err(SqsError::new(
                    Code::InvalidAction,
                    "The query protocol takes GET and POST requests.",
                ));
            }
            let mut pairs = Vec::new();
            if let Some(query) = parts.uri.query() {
                form_pairs(query.as_bytes(), &mut pairs)?;
            }
            let form = header(&parts.headers, "content-type").is_none_or(|t| {
                t.trim()
                    .to_ascii_lowercase()
                    .starts_with("application/x-www-form-urlencoded")
            });
            if parts.method == Method::POST && form {
                form_pairs(body, &mut pairs)?;
            }
            input::query_call(&pairs)
        }
    }
}

/// Serves one request, in a span naming its client, and times it in the
/// HTTP latency histogram under the route `sqs:<Action>` (`sqs` when the
/// action is unknown, so clients cannot mint labels).
async fn handle(State(state): State<AppState>, request: Request) -> Response {
    let started = tokio::time::Instant::now();
    let peer = crate::http::trace::peer(&request);
    let method = request.method().clone();
    let span = tracing::debug_span!("sqs", client = %peer, action = tracing::field::Empty);
    let (response, route) = answer(&state, peer, request).instrument(span.clone()).await;
    let elapsed = started.elapsed();
    crate::http::trace::answered(&state, &span, method.as_str(), &route, &response, elapsed);
    response
}

/// The answer to a request, and its route for the metrics.
async fn answer(state: &AppState, peer: IpAddr, request: Request) -> (Response, String) {
    let id = output::request_id();
    let (parts, body_stream) = request.into_parts();
    let protocol = input::protocol(
        header(&parts.headers, "x-amz-target"),
        header(&parts.headers, "content-type"),
    );
    let unknown = "sqs".to_owned();
    let body = match crate::http::params::body(body_stream, state).await {
        Ok(body) => body,
        Err(error) => return (output::failure(protocol, &error.into(), &id), unknown),
    };
    let call = match call(protocol, &parts, &body) {
        Ok(call) => call,
        Err(error) => return (output::failure(protocol, &error, &id), unknown),
    };
    let route = match need(&call.action) {
        Some(_) => {
            tracing::Span::current().record("action", call.action.as_str());
            format!("sqs:{}", call.action)
        }
        None => unknown,
    };
    let response = match serve(state, peer, &parts, &body, &call).await {
        Ok(result) => output::success(protocol, &call.action, &result, &id),
        Err(error) => output::failure(protocol, &error, &id),
    };
    (response, route)
}

async fn serve(
    state: &AppState,
    peer: IpAddr,
    parts: &Parts,
    body: &[u8],
    call: &Call,
) -> Result<Map<String, Value>, SqsError> {
    let Some(need) = need(&call.action) else {
        if UNSUPPORTED.contains(&call.action.as_str()) {
            return Err(SqsError::new(
                Code::UnsupportedOperation,
                format!("{} is not supported by restmq.", call.action),
            ));
        }
        return Err(SqsError::new(
            Code::InvalidAction,
            format!(
                "The action {:?} is not valid for this endpoint.",
                call.action
            ),
        ));
    };
    let grant = access::admit(state, need, peer, parts, body)?;
    let scheme = if state.server.tls.is_some() {
        "https"
    } else {
        "http"
    };
    let host = header(&parts.headers, "host").unwrap_or("localhost");
    let path = parts.uri.path();
    let path_queue = (!path.trim_matches('/').is_empty()).then(|| last_segment(path).to_owned());
    let ctx = Ctx {
        state: state.clone(),
        grant,
        base: format!("{scheme}://{host}"),
        path_queue,
    };
    let input = &call.input;
    match call.action.as_str() {
        "CreateQueue" => queues::create(&ctx, input).await,
        "GetQueueUrl" => queues::url(&ctx, input).await,
        "ListQueues" => queues::list(&ctx, input).await,
        "DeleteQueue" => queues::delete(&ctx, input).await,
        "PurgeQueue" => queues::purge(&ctx, input).await,
        "GetQueueAttributes" => queues::get_attributes(&ctx, input).await,
        "SetQueueAttributes" => queues::set_attributes(&ctx, input).await,
        "SendMessage" => messages::send(&ctx, input).await,
        "SendMessageBatch" => messages::send_batch(&ctx, input).await,
        "ReceiveMessage" => messages::receive(&ctx, input).await,
        "DeleteMessage" => messages::delete(&ctx, input).await,
        "DeleteMessageBatch" => messages::delete_batch(&ctx, input).await,
        "ChangeMessageVisibility" => messages::change_visibility(&ctx, input).await,
        "ChangeMessageVisibilityBatch" => messages::change_visibility_batch(&ctx, input).await,
        other => Err(SqsError::new(
            Code::InvalidAction,
            format!("The action {other:?} is not valid for this endpoint."),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queue_urls_name_their_last_segment() {
        assert_eq!(
            last_segment(url_path("http://h:9324/000000000000/jobs")),
            "jobs"
        );
        assert_eq!(last_segment(url_path("http://h/any/jobs/")), "jobs");
        assert_eq!(last_segment(url_path("jobs")), "jobs");
        assert_eq!(last_segment(url_path("http://h")), "");
        assert!(existing("jobs-1_A").is_ok());
        assert_eq!(
            existing("").map_err(|e| e.code),
            Err(Code::QueueDoesNotExist)
        );
        assert_eq!(
            existing("a b").map_err(|e| e.code),
            Err(Code::QueueDoesNotExist)
        );
        assert_eq!(
            existing(&"x".repeat(81)).map_err(|e| e.code),
            Err(Code::QueueDoesNotExist)
        );
        assert_eq!(
            existing("q.fifo").map_err(|e| e.code),
            Err(Code::UnsupportedOperation)
        );
        assert_eq!(arn("q"), "arn:aws:sqs:us-east-1:000000000000:q");
    }
}
