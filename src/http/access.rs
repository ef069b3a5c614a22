//! Access control at the HTTP door: which rules each route answers to, what a
//! request presents, and [`admit`], which the router's one middleware
//! ([`super::trace::Front`]) calls to let a request in, or refuse it, before
//! any work is done.
//!
//! A route's queue, when its path names one, is checked here. Routes whose
//! queue comes in the body (`POST /`, `POST /queue`, `/ack`, …) are let in by
//! category here and check their queue with [`require`] once they know it.

use std::net::{IpAddr, SocketAddr};

use axum::extract::{FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::{HeaderMap, Method};
use percent_encoding::percent_decode_str;

use crate::AppState;
use crate::acl::{Category, Denial, Grant, Presented, Right};
use crate::adapters::collectd;
use crate::broker::QueueName;
use crate::error::Error;

/// Which queues a route's right applies to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scope {
    /// The queue its path names.
    Queue(QueueName),
    /// Every queue at once (a listing).
    Every,
    /// The handler checks, once it has read which queue.
    InHandler,
    /// The path names no valid queue: the handler refuses the request anyway.
    Refused,
}

/// What a route needs to be let in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Need {
    /// The rules it answers to.
    pub category: Category,
    /// The right a token needs, and on what.
    pub right: Right,
    /// Where that right applies.
    pub scope: Scope,
}

/// The queue named by the path after `prefix`, as the routes decode it.
fn scope(rest: &str) -> Scope {
    match percent_decode_str(rest).decode_utf8() {
        Ok(name) => QueueName::parse(&name).map_or(Scope::Refused, Scope::Queue),
        Err(_) => Scope::Refused,
    }
}

/// The needs of a route; `None` for what is open to all (health checks,
/// the dashboard and static assets, the help redirect, unknown paths).
pub fn classify(method: &Method, path: &str) -> Option<Need> {
    use Category::{CometConsumer, RestConsumer, RestProducer, WebsocketConsumer};
    use Right::{Admin, Consume, Publish};
    let need = |category, right, scope| {
        Some(Need {
            category,
            right,
            scope,
        })
    };
    let get = method == Method::GET || method == Method::HEAD;
    let post = method == Method::POST;
    let delete = method == Method::DELETE;
    match path {
        // The dashboard's page; what it then asks for is checked as usual.
        "/ui" => return None,
        "/" if get => return need(RestConsumer, Consume, Scope::InHandler),
        "/" if post => return need(RestProducer, Publish, Scope::InHandler),
        "/queue" if post => return need(RestProducer, Publish, Scope::InHandler),
        "/collectd/data" if post => {
            return need(RestProducer, Publish, queue(collectd::DATA_QUEUE));
        }
        "/collectd/event" if post => {
            return need(RestProducer, Publish, queue(collectd::EVENT_QUEUE));
        }
        "/ack" | "/nack" | "/extend" if post => {
            return need(RestConsumer, Consume, Scope::InHandler);
        }
        "/q/" | "/stats/" | "/control/" | "/metrics" if get => {
            return need(RestConsumer, Admin, Scope::Every);
        }
        _ => {}
    }
    let (prefix, rest) = path.get(1..)?.split_once('/')?;
    if rest.is_empty() {
        // A route prefix without a queue: the handlers answer 400.
        return None;
    }
    let scope = scope(rest);
    match prefix {
        "q" if get => need(RestConsumer, Consume, scope),
        "q" if post => need(RestProducer, Publish, scope),
        "q" if delete => need(RestProducer, Admin, scope),
        "p" | "control" | "config" if get => need(RestConsumer, Consume, scope),
        "p" | "control" | "config" | "redrive" if post => need(RestProducer, Admin, scope),
        "stats" | "j" if get => need(RestConsumer, Consume, scope),
        "c" | "sse" if get => need(CometConsumer, Consume, scope),
        "ws" if get => need(WebsocketConsumer, Consume, scope),
        _ => None,
    }
}

/// The scope of a route whose queue is fixed.
fn queue(name: &str) -> Scope {
    QueueName::parse(name).map_or(Scope::Refused, Scope::Queue)
}

/// What a request presents, read from its headers and query string.
#[derive(Debug, Default)]
pub struct Credentials {
    authorization: Option<String>,
    cookie: Option<String>,
    token: Option<String>,
}

impl Credentials {
    /// Reads the `Authorization` header, the `auth` cookie and the
    /// `access_token` parameter.
    pub fn read<'a>(header: impl Fn(&str) -> Option<&'a str>, query: Option<&str>) -> Credentials {
        let cookie = header("cookie").and_then(|cookies| {
            cookies.split(';').find_map(|pair| {
                let (name, value) = pair.trim().split_once('=')?;
                (name == "auth").then(|| decode(value))
            })
        });
        let token = query.and_then(|query| {
            query.split('&').find_map(|pair| {
                let (name, value) = pair.split_once('=')?;
                (name == "access_token").then(|| decode(value))
            })
        });
        Credentials {
            authorization: header("authorization").map(str::to_owned),
            cookie,
            token,
        }
    }

    /// As the rules take them.
    pub fn presented(&self) -> Presented<'_> {
        Presented {
            authorization: self.authorization.as_deref(),
            auth_cookie: self.cookie.as_deref(),
            access_token: self.token.as_deref(),
        }
    }
}

fn decode(value: &str) -> String {
    percent_decode_str(value).decode_utf8_lossy().into_owned()
}

/// Decides a request: who it is let in as, or why not. `peer` is the
/// connection's address; `forwarded` its `X-Forwarded-For`.
pub fn decide(
    state: &AppState,
    need: &Need,
    peer: IpAddr,
    forwarded: Option<&str>,
    credentials: &Credentials,
) -> Result<Grant, Error> {
    let rules = state.access.rules();
    if rules.is_open() {
        return Ok(Grant::Full);
    }
    let client = state.access.client(peer, forwarded);
    let grant = rules
        .decide(need.category, client, &credentials.presented())
        .map_err(|denial| match denial {
            Denial::Address => Error::Forbidden(format!(
                "the address {client} may not use the {} routes",
                need.category
            )),
            Denial::Credentials { basic, bearer } => Error::Unauthorized { basic, bearer },
        })?;
    match &need.scope {
        Scope::Queue(queue) => require(&grant, need.right, queue)?,
        Scope::Every => {
            if !grant.allows(need.right, None) {
                return Err(refusal(&grant, need.right, "every queue"));
            }
        }
        Scope::InHandler | Scope::Refused => {}
    }
    Ok(grant)
}

/// Checks that `grant` may do `right` to `queue`.
pub fn require(grant: &Grant, right: Right, queue: &QueueName) -> Result<(), Error> {
    if grant.allows(right, Some(queue.as_str())) {
        Ok(())
    } else {
        Err(refusal(grant, right, queue.as_str()))
    }
}

fn refusal(grant: &Grant, right: Right, what: &str) -> Error {
    let who = match grant {
        Grant::Token(token) => format!("the token {}", token.name),
        Grant::Full => "this client".to_owned(),
    };
    Error::Forbidden(format!("{who} has no {right} right on {what}"))
}

/// Decides a request from `peer` (see [`super::trace::peer`]) before any
/// work: the grant it is let in with, or the refusal to answer.
pub fn admit(state: &AppState, request: &Request, peer: IpAddr) -> Result<Grant, Error> {
    // Open rules (the default) skip classifying, which decodes the queue name.
    let open = state.access.is_open();
    let need = if open {
        None
    } else {
        classify(request.method(), request.uri().path())
    };
    match need {
        None => Ok(Grant::Full),
        Some(need) => {
            let headers = request.headers();
            let credentials =
                Credentials::read(|name| header(headers, name), request.uri().query());
            let forwarded = header(headers, "x-forwarded-for");
            decide(state, &need, peer, forwarded, &credentials)
        }
    }
}

/// Hands `grant` to the handlers behind the router, in the request's [`Client`].
pub fn hand_over(request: &mut Request, grant: Grant) {
    match request.extensions_mut().get_mut::<Client>() {
        Some(client) => client.grant = Some(grant),
        None => {
            request.extensions_mut().insert(Client {
                peer: None,
                grant: Some(grant),
            });
        }
    }
}

/// What is known of a request's client: the address its connection came from,
/// and once [`admit`] has decided, its grant. One extension for both, so that
/// with axum's two (the matched path, the path parameters) a request's
/// extension map fits its first allocation.
#[derive(Clone)]
pub struct Client {
    /// The connection's peer, before any proxy header; none when the request
    /// was served without restmq's accept loop.
    pub peer: Option<SocketAddr>,
    grant: Option<Grant>,
}

impl Client {
    /// A client connected from `peer`, not yet decided.
    pub fn at(peer: SocketAddr) -> Client {
        Client {
            peer: Some(peer),
            grant: None,
        }
    }
}

fn header<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

/// Who the request was let in as: handlers whose queue comes in the body
/// check it with [`require`].
pub struct Granted(pub Grant);

impl<S: Send + Sync> FromRequestParts<S> for Granted {
    type Rejection = Error;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Granted, Error> {
        // The front layer decides every request; none comes here undecided.
        parts
            .extensions
            .get::<Client>()
            .and_then(|client| client.grant.clone())
            .map(Granted)
            .ok_or_else(|| Error::Forbidden("the request was not checked".into()))
    }
}
