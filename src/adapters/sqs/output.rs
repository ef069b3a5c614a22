//! Answers in each protocol's shape: JSON for the JSON protocol, XML for
//! the query protocol (written by hand, every text escaped).

use std::sync::atomic::{AtomicU64, Ordering};

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Map, Value};

use super::error::SqsError;
use super::input::Protocol;
use super::sign::sha256_hex;

/// The query protocol's XML namespace.
pub const XMLNS: &str = "http://queue.amazonaws.com/doc/2012-11-05/";

/// A request id, UUID-shaped: unique within the process, and unlikely to
/// repeat across processes.
pub fn request_id() -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let seed = format!("{n}:{}:{}", std::process::id(), crate::store::now_millis());
    uuid_shaped(&sha256_hex(seed.as_bytes()))
}

/// The first 32 hex digits of `hex` as `8-4-4-4-12`.
pub fn uuid_shaped(hex: &str) -> String {
    let digits: String = hex.chars().chain(std::iter::repeat('0')).take(32).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &digits[0..8],
        &digits[8..12],
        &digits[12..16],
        &digits[16..20],
        &digits[20..32]
    )
}

/// Escapes text for XML. Characters XML 1.0 cannot carry at all (control
/// characters other than tab, line feed and carriage return) become U+FFFD;
/// SQS refuses them in what it is sent, but a message published over HTTP
/// may hold them.
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            '\r' => out.push_str("&#xD;"),
            '\t' | '\n' => out.push(c),
            c if c < ' ' || c == '\u{FFFE}' || c == '\u{FFFF}' => out.push('\u{FFFD}'),
            c => out.push(c),
        }
    }
    out
}

fn element(out: &mut String, name: &str, inner: &str) {
    out.push('<');
    out.push_str(name);
    out.push('>');
    out.push_str(inner);
    out.push_str("</");
    out.push_str(name);
    out.push('>');
}

fn scalar(value: &Value) -> String {
    match value {
        Value::String(s) => escape(s),
        Value::Null => String::new(),
        Value::Bool(_) | Value::Number(_) | Value::Array(_) | Value::Object(_) => {
            escape(&value.to_string())
        }
    }
}

/// The element each list's items are written as.
fn item_name(action: &str, list: &str) -> String {
    match list {
        "Messages" => "Message".into(),
        "QueueUrls" => "QueueUrl".into(),
        "Successful" => format!("{action}ResultEntry"),
        "Failed" => "BatchResultErrorEntry".into(),
        other => other.trim_end_matches('s').into(),
    }
}

/// The fields of a result object as XML.
fn fields(action: &str, map: &Map<String, Value>) -> String {
    let mut out = String::new();
    for (name, value) in map {
        match (name.as_str(), value) {
            ("Attributes", Value::Object(attributes)) => {
                for (key, value) in attributes {
                    let mut inner = String::new();
                    element(&mut inner, "Name", &escape(key));
                    element(&mut inner, "Value", &scalar(value));
                    element(&mut out, "Attribute", &inner);
                }
            }
            ("MessageAttributes", Value::Object(attributes)) => {
                for (key, value) in attributes {
                    let mut inner = String::new();
                    element(&mut inner, "Name", &escape(key));
                    let body = match value {
                        Value::Object(map) => fields(action, map),
                        other => scalar(other),
                    };
                    element(&mut inner, "Value", &body);
                    element(&mut out, "MessageAttribute", &inner);
                }
            }
            (_, Value::Array(items)) => {
                let item = item_name(action, name);
                for value in items {
                    let inner = match value {
                        Value::Object(map) => fields(action, map),
                        other => scalar(other),
                    };
                    element(&mut out, &item, &inner);
                }
            }
            (_, Value::Object(map)) => element(&mut out, name, &fields(action, map)),
            (_, other) => element(&mut out, name, &scalar(other)),
        }
    }
    out
}

fn with_id(mut response: Response, id: &str) -> Response {
    if let Ok(value) = HeaderValue::from_str(id) {
        response.headers_mut().insert("x-amzn-requestid", value);
    }
    response
}

/// A successful answer: `result` is the JSON protocol's output.
pub fn success(
    protocol: Protocol,
    action: &str,
    result: &Map<String, Value>,
    id: &str,
) -> Response {
    let response = match protocol {
        Protocol::Json => (
            StatusCode::OK,
            [(header::CONTENT_TYPE, "application/x-amz-json-1.0")],
            Value::Object(result.clone()).to_string(),
        )
            .into_response(),
        Protocol::Query => {
            let mut body = format!("<?xml version=\"1.0\"?><{action}Response xmlns=\"{XMLNS}\">");
            if !result.is_empty() {
                element(
                    &mut body,
                    &format!("{action}Result"),
                    &fields(action, result),
                );
            }
            body.push_str(&format!(
                "<ResponseMetadata><RequestId>{id}</RequestId></ResponseMetadata></{action}Response>"
            ));
            (StatusCode::OK, [(header::CONTENT_TYPE, "text/xml")], body).into_response()
        }
    };
    with_id(response, id)
}

/// An error answer.
pub fn failure(protocol: Protocol, error: &SqsError, id: &str) -> Response {
    let code = error.code;
    let fault = if code.sender_fault() {
        "Sender"
    } else {
        "Receiver"
    };
    let response = match protocol {
        Protocol::Json => {
            let body = serde_json::json!({
                "__type": format!("com.amazonaws.sqs#{}", code.name()),
                "message": error.message,
            });
            let mut response = (
                code.status(),
                [(header::CONTENT_TYPE, "application/x-amz-json-1.0")],
                body.to_string(),
            )
                .into_response();
            if let Ok(value) = HeaderValue::from_str(&format!("{};{fault}", code.query_code())) {
                response.headers_mut().insert("x-amzn-query-error", value);
            }
            response
        }
        Protocol::Query => {
            let body = format!(
                "<?xml version=\"1.0\"?><ErrorResponse xmlns=\"{XMLNS}\"><Error><Type>{fault}</Type>\
                 <Code>{}</Code><Message>{}</Message><Detail/></Error>\
                 <RequestId>{id}</RequestId></ErrorResponse>",
                escape(code.query_code()),
                escape(&error.message)
            );
            (code.status(), [(header::CONTENT_TYPE, "text/xml")], body).into_response()
        }
    };
    with_id(response, id)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn xml_escapes_everything_it_writes() {
        assert_eq!(
            escape("a<b>&\"'\r\n\u{1}"),
            "a&lt;b&gt;&amp;&quot;&apos;&#xD;\n\u{FFFD}"
        );
        let result = json!({
            "Messages": [{
                "Body": "<x>",
                "Attributes": {"SentTimestamp": "1"},
                "MessageAttributes": {"k&": {"DataType": "String", "StringValue": "v<"}},
            }],
        });
        let map = result.as_object().cloned().expect("an object");
        let xml = fields("ReceiveMessage", &map);
        assert_eq!(
            xml,
            "<Message><Attribute><Name>SentTimestamp</Name><Value>1</Value></Attribute>\
             <Body>&lt;x&gt;</Body><MessageAttribute><Name>k&amp;</Name><Value>\
             <DataType>String</DataType><StringValue>v&lt;</StringValue></Value>\
             </MessageAttribute></Message>"
        );
    }

    #[test]
    fn request_ids_are_uuid_shaped_and_differ() {
        let (a, b) = (request_id(), request_id());
        assert_ne!(a, b);
        assert_eq!(a.len(), 36);
        assert_eq!(a.matches('-').count(), 4);
    }
}
