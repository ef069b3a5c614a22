//! The answer shapes of the legacy contract: CRLF-ended lines, and the JSONP
//! variants each route family used in the original.

use axum::body::Body;
use axum::http::header::{CONTENT_TYPE, LOCATION};
use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

use super::params::Callback;

// Header values checked when compiled: answering one copies a pointer, where
// a `&str` would be checked byte by byte on every answer.
const TEXT: HeaderValue = HeaderValue::from_static("text/html; charset=UTF-8");
const JSON: HeaderValue = HeaderValue::from_static("application/json");
const JAVASCRIPT: HeaderValue = HeaderValue::from_static("application/javascript");
const HTML: HeaderValue = HeaderValue::from_static("text/html; charset=UTF-8");

fn with_type(content_type: HeaderValue, body: String) -> Response {
    // A Body, not the String: axum gives a String a text/plain type first,
    // which this one would then replace (two header writes for one).
    let mut response = Response::new(Body::from(body));
    response.headers_mut().insert(CONTENT_TYPE, content_type);
    response
}

fn to_json<T: Serialize + ?Sized>(value: &T) -> String {
    // Serializing our own answer types cannot fail: they hold only strings and numbers.
    serde_json::to_string(value).unwrap_or_else(|_| "null".to_owned())
}

/// `cb(<json>)` followed by what the route family puts after it.
fn jsonp(callback: &Callback, json: &str, tail: &str) -> Response {
    with_type(JAVASCRIPT, format!("{}({json}){tail}", callback.as_str()))
}

/// A text answer of `/`, `/q` and `/p`: `text` + CRLF, or `cb("text");` + CRLF.
pub fn text_line(text: &str, callback: Option<&Callback>) -> Response {
    match callback {
        None => with_type(TEXT, [text, "\r\n"].concat()),
        Some(cb) => jsonp(cb, &to_json(text), ";\r\n"),
    }
}

/// A JSON answer of `/`, `/q` and `/p`: JSON + CRLF, or `cb(JSON);` + CRLF.
pub fn json_line<T: Serialize + ?Sized>(value: &T, callback: Option<&Callback>) -> Response {
    written_json_line(to_json(value), callback)
}

/// As [`json_line`], with the JSON already written.
pub fn written_json_line(mut json: String, callback: Option<&Callback>) -> Response {
    match callback {
        None => {
            json.push_str("\r\n");
            with_type(JSON, json)
        }
        Some(cb) => jsonp(cb, &json, ";\r\n"),
    }
}

/// An answer of `/stats`: JSON, or `cb(JSON)`, neither ended by CRLF.
pub fn stats<T: Serialize + ?Sized>(value: &T, callback: Option<&Callback>) -> Response {
    let json = to_json(value);
    match callback {
        None => with_type(JSON, json),
        Some(cb) => jsonp(cb, &json, ""),
    }
}

/// An answer of `/control`: JSON + CRLF, or `cb(JSON)` + CRLF.
pub fn control<T: Serialize + ?Sized>(value: &T, callback: Option<&Callback>) -> Response {
    let json = to_json(value);
    match callback {
        None => with_type(JSON, json + "\r\n"),
        Some(cb) => jsonp(cb, &json, "\r\n"),
    }
}

/// Several text answers, one CRLF-ended line each (the keys of a batch).
pub fn lines(texts: &[String]) -> Response {
    let mut body = String::new();
    for text in texts {
        body.push_str(text);
        body.push_str("\r\n");
    }
    with_type(TEXT, body)
}

/// A plain JSON answer (the JSON command protocol, JSON listings).
pub fn json<T: Serialize + ?Sized>(value: &T) -> Response {
    with_type(JSON, to_json(value))
}

/// An HTML page.
pub fn html(body: String) -> Response {
    with_type(HTML, body)
}

/// A `302 Found` to `location`, as the original redirected.
pub fn found(location: &'static str) -> Response {
    (StatusCode::FOUND, [(LOCATION, location)]).into_response()
}

/// Escapes text for HTML element content and attribute values.
pub fn escape_html(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}
