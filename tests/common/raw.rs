//! A raw HTTP/1.1 client: sends a request's bytes exactly as given (invalid
//! UTF-8, bad percent-encoding, odd methods, malformed heads), which a URL-parsing
//! client would refuse or normalize, and reads the whole answer.

use std::net::SocketAddr;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::DEADLINE;

/// An answer read whole.
#[derive(Debug, Clone)]
pub struct RawAnswer {
    /// The status code.
    pub status: u16,
    /// The headers, names lower-cased.
    pub headers: Vec<(String, Vec<u8>)>,
    /// The body, de-chunked.
    pub body: Vec<u8>,
}

impl RawAnswer {
    /// The value of header `name`, when present and text.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .and_then(|(_, v)| std::str::from_utf8(v).ok())
    }

    /// The `content-type`, empty when absent.
    pub fn content_type(&self) -> &str {
        self.header("content-type").unwrap_or("")
    }

    /// The body as text (lossy).
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The body parsed as JSON (a trailing CRLF allowed), if it is JSON.
    pub fn json(&self) -> Option<serde_json::Value> {
        let body = self.body.strip_suffix(b"\r\n").unwrap_or(&self.body);
        serde_json::from_slice(body).ok()
    }

    /// Whether the body is `{"error": "<non-empty text>"}`, with `"stale"` (a
    /// list of strings) as the only other field allowed, served as JSON.
    pub fn is_json_error(&self) -> bool {
        self.content_type().starts_with("application/json")
            && self.json().as_ref().is_some_and(is_error_object)
    }
}

/// Whether `value` is `{"error": "<non-empty text>"}`, optionally with `"stale"`.
pub fn is_error_object(value: &serde_json::Value) -> bool {
    let Some(object) = value.as_object() else {
        return false;
    };
    let error = object
        .get("error")
        .and_then(serde_json::Value::as_str)
        .is_some_and(|e| !e.trim().is_empty());
    let others = object.iter().all(|(name, value)| match name.as_str() {
        "error" => true,
        "stale" => value
            .as_array()
            .is_some_and(|list| list.iter().all(serde_json::Value::is_string)),
        _ => false,
    });
    error && others
}

/// The bytes of a request: its line, `Host`, the `headers` given (whole lines
/// without CRLF), `Content-Length` when there is a body (or the method usually
/// has one), `Connection: close`, then the body.
pub fn request(method: &str, target: &[u8], headers: &[&[u8]], body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(128 + body.len());
    out.extend_from_slice(method.as_bytes());
    out.push(b' ');
    out.extend_from_slice(target);
    out.extend_from_slice(b" HTTP/1.1\r\nhost: restmq.test\r\n");
    for header in headers {
        out.extend_from_slice(header);
        out.extend_from_slice(b"\r\n");
    }
    if !body.is_empty() || matches!(method, "POST" | "PUT" | "PATCH") {
        out.extend_from_slice(format!("content-length: {}\r\n", body.len()).as_bytes());
    }
    out.extend_from_slice(b"connection: close\r\n\r\n");
    out.extend_from_slice(body);
    out
}

/// Sends `request` on a new connection and reads the answer until the server
/// closes it; `head` says the request was a HEAD (the answer has no body).
pub async fn exchange(addr: SocketAddr, request: &[u8], head: bool) -> RawAnswer {
    let read = async {
        let mut socket = TcpStream::connect(addr).await.expect("connect");
        // The server may answer (413) and close before reading all of a body.
        let _ = socket.write_all(request).await;
        let mut got = Vec::new();
        let mut buf = [0u8; 8192];
        loop {
            match socket.read(&mut buf).await {
                Ok(0) => break,
                Ok(n) => got.extend_from_slice(&buf[..n]),
                // A reset after the answer (the rest of the body unread).
                Err(_) if !got.is_empty() => break,
                Err(e) => panic!("reading the answer failed: {e}"),
            }
        }
        got
    };
    let bytes = tokio::time::timeout(DEADLINE, read)
        .await
        .unwrap_or_else(|_| panic!("no whole answer within {DEADLINE:?}"));
    parse(&bytes, head).unwrap_or_else(|| {
        panic!(
            "not an HTTP answer: {:?}",
            String::from_utf8_lossy(&bytes[..bytes.len().min(500)])
        )
    })
}

/// Parses a whole HTTP/1.1 answer.
pub fn parse(bytes: &[u8], head: bool) -> Option<RawAnswer> {
    let mut headers = [httparse::EMPTY_HEADER; 64];
    let mut response = httparse::Response::new(&mut headers);
    let httparse::Status::Complete(at) = response.parse(bytes).ok()? else {
        return None;
    };
    let status = response.code?;
    let headers: Vec<(String, Vec<u8>)> = response
        .headers
        .iter()
        .map(|h| (h.name.to_ascii_lowercase(), h.value.to_vec()))
        .collect();
    let rest = &bytes[at..];
    let find = |name: &str| {
        headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| String::from_utf8_lossy(v).to_ascii_lowercase())
    };
    let body = if head || status == 204 || status == 304 {
        Vec::new()
    } else if find("transfer-encoding").is_some_and(|te| te.contains("chunked")) {
        dechunk(rest)?
    } else if let Some(length) = find("content-length") {
        let length: usize = length.trim().parse().ok()?;
        rest.get(..length)?.to_vec()
    } else {
        rest.to_vec()
    };
    Some(RawAnswer {
        status,
        headers,
        body,
    })
}

fn dechunk(mut rest: &[u8]) -> Option<Vec<u8>> {
    let mut body = Vec::new();
    loop {
        let end = rest.windows(2).position(|w| w == b"\r\n")?;
        let size = std::str::from_utf8(&rest[..end]).ok()?;
        let size = usize::from_str_radix(size.split(';').next()?.trim(), 16).ok()?;
        rest = &rest[end + 2..];
        if size == 0 {
            return Some(body);
        }
        body.extend_from_slice(rest.get(..size)?);
        rest = rest.get(size + 2..)?;
    }
}
