//! Request parameters as the original read them: query and form fields merged,
//! the last occurrence winning, surrounding whitespace stripped.

use std::borrow::Cow;
use std::task::Poll;

use axum::body::Bytes;
use axum::extract::{FromRequest, FromRequestParts, Path, Request};
use axum::http::HeaderMap;
use axum::http::header::CONTENT_TYPE;
use axum::http::request::Parts;
use bytes::BytesMut;
use http_body_util::BodyExt;
use percent_encoding::percent_decode;

use crate::AppState;
use crate::broker::QueueName;
use crate::error::Error;

/// The queue named by the rest of the path after the route's prefix.
pub struct Queue(pub QueueName);

impl<S: Send + Sync> FromRequestParts<S> for Queue {
    type Rejection = Error;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Queue, Error> {
        match Path::<String>::from_request_parts(parts, state).await {
            Ok(Path(name)) => QueueName::parse(&name).map(Queue),
            Err(_) => Err(NOT_UTF8),
        }
    }
}

/// A queue name whose percent-decoding is not text.
const NOT_UTF8: Error = Error::InvalidQueueName("it is not valid UTF-8 once percent-decoded");

impl Queue {
    /// The queue named by `raw`, the rest of a path as sent: percent-decoded,
    /// as the router decodes its path parameters.
    pub fn from_path(raw: &str) -> Result<Queue, Error> {
        let name = percent_decode(raw.as_bytes())
            .decode_utf8()
            .map_err(|_| NOT_UTF8)?;
        QueueName::parse(&name).map(Queue)
    }
}

/// Query and form fields of a request, and its raw body.
pub struct Params {
    pairs: Vec<(String, String)>,
    /// The request body as received.
    pub body: Bytes,
    /// The request's media type, lower-cased, without parameters.
    pub media_type: Option<String>,
}

impl FromRequest<AppState> for Params {
    type Rejection = Error;

    async fn from_request(req: Request, state: &AppState) -> Result<Params, Error> {
        let mut pairs = Vec::new();
        if let Some(query) = req.uri().query() {
            parse_pairs(query.as_bytes(), "query string", &mut pairs)?;
        }
        let media_type = media_type(req.headers());
        let body = body(req.into_body(), state).await?;
        let mut params = Params {
            pairs,
            body,
            media_type,
        };
        if params.is_form() {
            let body = params.body.clone();
            parse_pairs(&body, "form body", &mut params.pairs)?;
        }
        Ok(params)
    }
}

/// A request's body, read within `--body-timeout` and `--max-body`; every
/// front door reading a body whole reads it so.
pub async fn body(body: axum::body::Body, state: &AppState) -> Result<Bytes, Error> {
    // Most requests without a body (a pop) need no timer.
    if axum::body::HttpBody::is_end_stream(&body) {
        return Ok(Bytes::new());
    }
    let mut whole = std::pin::pin!(whole(body, state.max_body));
    // A small body mostly comes in with the request's head: read at once, it
    // needs no timer either.
    let at_once = std::future::poll_fn(|cx| Poll::Ready(whole.as_mut().poll(cx))).await;
    match at_once {
        Poll::Ready(read) => read,
        // Bounded in time, so that a client trickling its body cannot hold the
        // request (and its connection) for ever.
        Poll::Pending => {
            let limit = state.body_timeout;
            tokio::time::timeout(limit, whole)
                .await
                .map_err(|_| Error::BodyTimeout {
                    seconds: limit.as_secs_f64(),
                })?
        }
    }
}

/// Reads `body` whole, refusing it once it passes `limit` bytes. A body that
/// comes in one piece (most do) is that piece, neither copied nor queued:
/// axum's `to_bytes` collects every body through a queue of its pieces.
async fn whole(mut body: axum::body::Body, limit: usize) -> Result<Bytes, Error> {
    let mut first = Bytes::new();
    let mut more: Option<BytesMut> = None;
    let mut length = 0usize;
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|error| Error::BadBody(error.into_inner().to_string()))?;
        // Trailers carry no data.
        let Ok(data) = frame.into_data() else {
            continue;
        };
        length = length.saturating_add(data.len());
        if length > limit {
            return Err(Error::BodyTooLarge { limit });
        }
        match &mut more {
            Some(more) => more.extend_from_slice(&data),
            None if first.is_empty() => first = data,
            None => {
                let mut joined = BytesMut::with_capacity(length);
                joined.extend_from_slice(&first);
                joined.extend_from_slice(&data);
                more = Some(joined);
            }
        }
    }
    Ok(more.map_or(first, BytesMut::freeze))
}

impl Params {
    /// The parameters of a query string alone (a request without a body).
    pub fn from_query(query: &str) -> Result<Params, Error> {
        let mut pairs = Vec::new();
        parse_pairs(query.as_bytes(), "query string", &mut pairs)?;
        Ok(Params {
            pairs,
            body: Bytes::new(),
            media_type: None,
        })
    }

    /// Every parameter, in order, as sent.
    pub fn pairs(&self) -> &[(String, String)] {
        &self.pairs
    }

    /// The last value of `name`, as sent.
    pub fn raw(&self, name: &str) -> Option<&str> {
        self.pairs
            .iter()
            .rev()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// Every value of `name`, as sent, in order.
    pub fn all(&self, name: &str) -> Vec<&str> {
        self.pairs
            .iter()
            .filter(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
            .collect()
    }

    /// Whether the body is a form (or absent): its fields are parameters.
    pub fn is_form(&self) -> bool {
        match self.media_type.as_deref() {
            None => true,
            Some(t) => t == "application/x-www-form-urlencoded",
        }
    }

    /// The last value of `name` without surrounding whitespace; `None` when absent or blank.
    pub fn text(&self, name: &str) -> Option<&str> {
        self.raw(name).map(str::trim).filter(|v| !v.is_empty())
    }

    /// A non-negative integer parameter; `None` when absent.
    pub fn number(&self, name: &'static str) -> Result<Option<u64>, Error> {
        let Some(raw) = self.raw(name) else {
            return Ok(None);
        };
        let raw = raw.trim();
        let invalid = Error::InvalidParameter {
            name,
            reason: "it must be a non-negative integer",
        };
        if raw.is_empty() || !raw.bytes().all(|b| b.is_ascii_digit()) {
            return Err(invalid);
        }
        raw.parse().map(Some).map_err(|_| invalid)
    }

    /// The JSONP callback, checked; `None` when absent or empty.
    pub fn callback(&self) -> Result<Option<Callback>, Error> {
        self.text("callback").map(Callback::parse).transpose()
    }
}

/// The request's media type, lower-cased and without parameters.
pub fn media_type(headers: &HeaderMap) -> Option<String> {
    let value = headers.get(CONTENT_TYPE)?.to_str().ok()?;
    let essence = value.split(';').next().unwrap_or(value).trim();
    Some(essence.to_ascii_lowercase())
}

/// Whether the client asked for JSON (`Accept: application/json`).
pub fn wants_json(headers: &HeaderMap) -> bool {
    headers
        .get_all(axum::http::header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| v.contains("application/json"))
}

/// Parses `application/x-www-form-urlencoded` pairs, refusing invalid UTF-8.
///
/// The input is checked as UTF-8 whole first: `&` and `=` are ASCII, which a
/// multi-byte character never contains, so the input is valid exactly when
/// every key and value is. As text, it is split with the byte searches `str`
/// uses for a character, rather than one byte at a time.
fn parse_pairs(
    input: &[u8],
    what: &'static str,
    out: &mut Vec<(String, String)>,
) -> Result<(), Error> {
    let text = std::str::from_utf8(input).map_err(|_| not_utf8(what))?;
    for part in text.split('&').filter(|p| !p.is_empty()) {
        let (key, value) = part.split_once('=').unwrap_or((part, ""));
        out.push((decode(key, what)?, decode(value, what)?));
    }
    Ok(())
}

fn not_utf8(what: &'static str) -> Error {
    Error::InvalidParameter {
        name: what,
        reason: "it is not valid UTF-8 once percent-decoded",
    }
}

fn decode(text: &str, what: &'static str) -> Result<String, Error> {
    // Most values have nothing to decode: a byte search for each of '+' and
    // '%' is all they cost.
    let raw = text.as_bytes();
    let plus = raw.contains(&b'+');
    if !plus && !raw.contains(&b'%') {
        return Ok(text.to_owned());
    }
    let spaced: Cow<[u8]> = if plus {
        raw.iter()
            .map(|&b| if b == b'+' { b' ' } else { b })
            .collect::<Vec<u8>>()
            .into()
    } else {
        raw.into()
    };
    let bytes = if spaced.contains(&b'%') {
        Cow::from(percent_decode(&spaced)).into_owned()
    } else {
        spaced.into_owned()
    };
    String::from_utf8(bytes).map_err(|_| not_utf8(what))
}

/// A JSONP callback name: a JavaScript identifier path such as `cb` or `app.on_msg`.
/// Anything else is refused, since a reflected callback is a script-injection hole.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Callback(String);

impl Callback {
    /// Checks a callback name.
    pub fn parse(name: &str) -> Result<Callback, Error> {
        let identifier = |part: &str| {
            let mut chars = part.chars();
            chars
                .next()
                .is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == '$')
                && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '$')
        };
        if name.len() <= 256 && name.split('.').all(identifier) {
            Ok(Callback(name.to_owned()))
        } else {
            Err(Error::InvalidCallback)
        }
    }

    /// The callback's name.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn callbacks_must_be_identifier_paths() {
        for ok in ["cb", "$", "_x1", "app.cb", "a.$b.c_9"] {
            assert!(Callback::parse(ok).is_ok(), "{ok}");
        }
        for bad in ["", "1cb", "a..b", "a.", ".a", "alert(1)", "a-b", "a b", "é"] {
            assert!(Callback::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn form_pairs_decode_strictly() {
        let mut out = Vec::new();
        parse_pairs(b"a=1+2&b=%C3%A9&c&&d=%zz", "form body", &mut out).unwrap();
        let want = [("a", "1 2"), ("b", "é"), ("c", ""), ("d", "%zz")];
        let got: Vec<(&str, &str)> = out.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        assert_eq!(got, want);
        assert!(parse_pairs(b"a=%FF", "form body", &mut out).is_err());
        // Raw bytes are UTF-8 or refused, split at a delimiter or not.
        assert!(parse_pairs(b"a=\xff", "form body", &mut out).is_err());
        assert!(parse_pairs(b"a=\xc3&b=\xa9", "form body", &mut out).is_err());
        out.clear();
        parse_pairs("k\u{e9}=v\u{e9}+%2B".as_bytes(), "form body", &mut out).unwrap();
        assert_eq!(out, [("k\u{e9}".to_owned(), "v\u{e9} +".to_owned())]);
    }
}
