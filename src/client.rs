//! The HTTP/1.1 client plumbing shared by `restmq bench` and the command-line
//! client: the `--server` URL, connections, whole exchanges and a Server-Sent
//! Events parser.
//!
//! It is hyper's client connection, not reqwest: the binary needs nothing more
//! than plain HTTP/1.1 to one server, and reqwest (with its TLS and pool) would
//! more than double what the server binary carries for its tools.

use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::{self, SendRequest};
use hyper::header::{CONTENT_TYPE, HOST, HeaderValue};
use hyper::{Method, Request, StatusCode, Uri};
use hyper_util::rt::TokioIo;
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};
use tokio::net::TcpStream;
use tokio::time::timeout;

/// How long one request may take by default before it counts as failed.
pub(crate) const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// The largest Server-Sent Event (or WebSocket message) accepted: a bound on
/// what a broken or hostile server can make a client buffer.
pub(crate) const MAX_MESSAGE: usize = 16 << 20;

/// Characters escaped in a queue's path segment: all but RFC 3986's unreserved.
/// A queue name may contain `/`; escaped, it stays one segment and the server
/// decodes it back.
const PATH_SEGMENT: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'~');

/// Why `--server` could not be used.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ResolveError {
    /// The URL is not one this client can use.
    #[error("invalid --server {url:?}: {reason}")]
    InvalidServer { url: String, reason: String },
    /// The host name did not resolve.
    #[error("cannot resolve {host}: {source}")]
    Resolve {
        host: String,
        #[source]
        source: io::Error,
    },
    /// No address of the server accepted a connection.
    #[error("cannot connect to {addr}: {source}")]
    Connect {
        addr: SocketAddr,
        #[source]
        source: io::Error,
    },
}

/// A server, resolved once so that every connection reuses the same address
/// instead of a fresh DNS lookup.
#[derive(Debug, Clone)]
pub(crate) struct Endpoint {
    /// The address that accepted a connection.
    pub addr: SocketAddr,
    /// `host[:port]`, as `--server` gave it.
    pub authority: String,
    /// `authority` as a `Host` header.
    pub host: HeaderValue,
}

/// The host, port and `Host` header value of an `http://host[:port][/]` URL.
pub(crate) fn parse_server(url: &str) -> Result<(String, u16, String), ResolveError> {
    let invalid = |reason: &str| ResolveError::InvalidServer {
        url: url.to_owned(),
        reason: reason.to_owned(),
    };
    let rest = match url.split_once("://") {
        Some((scheme, rest)) if scheme.eq_ignore_ascii_case("http") => rest,
        Some((scheme, _)) if scheme.eq_ignore_ascii_case("https") => {
            return Err(invalid(
                "https:// is not supported by this client yet: only http:// (reach a \
                 TLS-only server through a local tunnel or proxy)",
            ));
        }
        Some((scheme, _)) => {
            return Err(invalid(&format!(
                "only http:// is supported, not {scheme}://"
            )));
        }
        None => return Err(invalid("expected http://host[:port]")),
    };
    let authority = rest.strip_suffix('/').unwrap_or(rest);
    if authority.contains(['/', '?', '#']) {
        return Err(invalid(
            "a path, query or fragment is not supported; give http://host[:port]",
        ));
    }
    if authority.contains('@') {
        return Err(invalid("user information is not supported"));
    }
    let (host, port) = if let Some(bracketed) = authority.strip_prefix('[') {
        let (host, after) = bracketed
            .split_once(']')
            .ok_or_else(|| invalid("an IPv6 address lacks its closing ]"))?;
        match after {
            "" => (host, None),
            _ => match after.strip_prefix(':') {
                Some(port) => (host, Some(port)),
                None => return Err(invalid("unexpected text after the IPv6 address")),
            },
        }
    } else {
        match authority.split_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (authority, None),
        }
    };
    if host.is_empty() {
        return Err(invalid("the host is missing"));
    }
    let port = match port {
        None => 80,
        Some(port) => port
            .parse::<u16>()
            .ok()
            .filter(|&p| p != 0)
            .ok_or_else(|| invalid(&format!("{port:?} is not a port number")))?,
    };
    Ok((host.to_owned(), port, authority.to_owned()))
}

/// The first of `candidates` that accepts a connection, or the last failure
/// (`None` when there is no candidate at all).
///
/// Probing up front means a server that is down is reported as such rather
/// than as a failed request, and a name such as `localhost` that resolves to
/// both `::1` and `127.0.0.1` lands on the one the server listens on.
async fn reachable(
    candidates: &[SocketAddr],
) -> Result<SocketAddr, Option<(SocketAddr, io::Error)>> {
    let mut failure = None;
    for &addr in candidates {
        match TcpStream::connect(addr).await {
            Ok(_) => return Ok(addr),
            Err(e) => failure = Some((addr, e)),
        }
    }
    Err(failure)
}

/// Resolves a `--server` URL and checks that it accepts connections.
pub(crate) async fn resolve(url: &str) -> Result<Endpoint, ResolveError> {
    let (host, port, authority) = parse_server(url)?;
    let host_header =
        HeaderValue::from_str(&authority).map_err(|_| ResolveError::InvalidServer {
            url: url.to_owned(),
            reason: "the host is not a valid Host header".into(),
        })?;
    let lookup = format!("{host}:{port}");
    let candidates: Vec<SocketAddr> = tokio::net::lookup_host((host.as_str(), port))
        .await
        .map_err(|source| ResolveError::Resolve {
            host: lookup.clone(),
            source,
        })?
        .collect();
    let addr = reachable(&candidates).await.map_err(|e| match e {
        Some((addr, source)) => ResolveError::Connect { addr, source },
        None => ResolveError::Resolve {
            host: lookup,
            source: io::Error::new(io::ErrorKind::NotFound, "no address"),
        },
    })?;
    Ok(Endpoint {
        addr,
        authority,
        host: host_header,
    })
}

/// Checks a queue name, then makes it the path `/<route>/<queue>`; the error
/// says what is wrong with the name.
pub(crate) fn queue_uri(route: &str, queue: &str) -> Result<Uri, String> {
    if queue.is_empty() || queue.chars().any(char::is_control) {
        return Err("a queue name must be non-empty, without control characters".into());
    }
    let path = format!("/{route}/{}", utf8_percent_encode(queue, PATH_SEGMENT));
    path.parse::<Uri>()
        .map_err(|e| format!("the queue name gives no valid path: {e}"))
}

/// A request with the `Host` header; a POST carries a form unless the caller
/// sets another `Content-Type`.
pub(crate) fn request(
    method: Method,
    uri: &Uri,
    host: &HeaderValue,
    body: Bytes,
) -> Request<Full<Bytes>> {
    let form = method == Method::POST;
    let mut request = Request::new(Full::new(body));
    *request.method_mut() = method;
    *request.uri_mut() = uri.clone();
    request.headers_mut().insert(HOST, host.clone());
    if form {
        request.headers_mut().insert(
            CONTENT_TYPE,
            HeaderValue::from_static("application/x-www-form-urlencoded"),
        );
    }
    request
}

/// A failed exchange, from connecting to reading the whole response.
#[derive(Debug, thiserror::Error)]
pub(crate) enum Failure {
    #[error("connect: {0}")]
    Connect(#[from] io::Error),
    #[error("{0}")]
    Http(#[from] hyper::Error),
    #[error("no answer within {}s", .0.as_secs())]
    Timeout(Duration),
}

/// Opens one keep-alive HTTP/1 connection.
pub(crate) async fn connect(addr: SocketAddr) -> Result<SendRequest<Full<Bytes>>, Failure> {
    let stream = TcpStream::connect(addr).await?;
    // Requests are small and latency matters: don't let Nagle hold them.
    stream.set_nodelay(true)?;
    let (sender, connection) = http1::handshake(TokioIo::new(stream)).await?;
    // The connection's own error also fails the request in flight, which is
    // where it is reported, so the result here carries nothing new.
    tokio::spawn(async move {
        let _ = connection.await;
    });
    Ok(sender)
}

/// Sends one request and reads the whole answer, its status and body, within
/// `limit`.
pub(crate) async fn exchange_body(
    sender: &mut SendRequest<Full<Bytes>>,
    request: Request<Full<Bytes>>,
    limit: Duration,
) -> Result<(StatusCode, Bytes), Failure> {
    let send = async {
        sender.ready().await?;
        let response = sender.send_request(request).await?;
        let status = response.status();
        let body = response.into_body().collect().await?.to_bytes();
        Ok::<_, hyper::Error>((status, body))
    };
    match timeout(limit, send).await {
        Ok(answer) => Ok(answer?),
        Err(_) => Err(Failure::Timeout(limit)),
    }
}

/// What a Server-Sent Events stream carries that a restmq client cares about.
#[derive(Debug)]
pub(crate) enum Event<'a> {
    /// A message's data: its JSON.
    Message(&'a [u8]),
    /// The queue was deleted: the stream ends.
    Deleted,
}

/// Splits a Server-Sent Events stream into events, whatever the chunks'
/// boundaries: fields accumulate line by line, a blank line dispatches them.
#[derive(Debug, Default)]
pub(crate) struct SseParser {
    /// The start of a line whose end has not arrived yet.
    line: Vec<u8>,
    /// The event's data lines, joined by `\n`.
    data: Vec<u8>,
    /// Whether the event has a data line (an empty one counts).
    has_data: bool,
    /// The event's type (`event:`); empty for the default, `message`.
    event: Vec<u8>,
}

impl SseParser {
    /// Reads `chunk`, handing every event it completes to `on`.
    pub(crate) fn feed(
        &mut self,
        mut chunk: &[u8],
        on: &mut impl FnMut(Event<'_>),
    ) -> Result<(), String> {
        while let Some(at) = chunk.iter().position(|&b| b == b'\n') {
            let (head, rest) = chunk.split_at(at);
            chunk = &rest[1..];
            if self.line.is_empty() {
                self.line_done(head, on)?;
            } else {
                // Taken out so that the line can be read while the fields change;
                // put back empty to keep its allocation.
                let mut line = std::mem::take(&mut self.line);
                line.extend_from_slice(head);
                let done = self.line_done(&line, on);
                line.clear();
                self.line = line;
                done?;
            }
        }
        self.line.extend_from_slice(chunk);
        if self.line.len() > MAX_MESSAGE {
            return Err(format!("an event line longer than {MAX_MESSAGE} bytes"));
        }
        Ok(())
    }

    fn line_done(&mut self, line: &[u8], on: &mut impl FnMut(Event<'_>)) -> Result<(), String> {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.is_empty() {
            if self.has_data {
                match self.event.as_slice() {
                    b"" | b"message" => on(Event::Message(&self.data)),
                    b"deleted" => on(Event::Deleted),
                    // `gap` only follows a resume, which these clients never ask for.
                    _ => {}
                }
            }
            self.data.clear();
            self.has_data = false;
            self.event.clear();
            return Ok(());
        }
        // A comment: the greeting and the keep-alives.
        if line.starts_with(b":") {
            return Ok(());
        }
        let (field, value) = match line.iter().position(|&b| b == b':') {
            Some(at) => (&line[..at], &line[at + 1..]),
            None => (line, &b""[..]),
        };
        let value = value.strip_prefix(b" ").unwrap_or(value);
        match field {
            b"data" => {
                if self.has_data {
                    self.data.push(b'\n');
                }
                self.data.extend_from_slice(value);
                self.has_data = true;
                if self.data.len() > MAX_MESSAGE {
                    return Err(format!("an event larger than {MAX_MESSAGE} bytes"));
                }
            }
            b"event" => {
                self.event.clear();
                self.event.extend_from_slice(value);
            }
            // `id` and `retry` matter only to clients that reconnect.
            _ => {}
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_server_urls() {
        let parsed = parse_server("http://127.0.0.1:8888").ok();
        assert_eq!(
            parsed,
            Some(("127.0.0.1".into(), 8888, "127.0.0.1:8888".into()))
        );
        let parsed = parse_server("http://localhost/").ok();
        assert_eq!(parsed, Some(("localhost".into(), 80, "localhost".into())));
        let parsed = parse_server("http://[::1]:9000").ok();
        assert_eq!(parsed, Some(("::1".into(), 9000, "[::1]:9000".into())));
    }

    #[test]
    fn rejects_other_urls() {
        for url in [
            "ftp://x",
            "https://x",
            "x:8888",
            "http://",
            "http://x:port",
            "http://x:0",
            "http://x/q/",
            "http://u@x",
            "http://[::1",
        ] {
            assert!(
                matches!(parse_server(url), Err(ResolveError::InvalidServer { .. })),
                "{url} should be rejected"
            );
        }
        let https = parse_server("https://x").map(|_| ()).unwrap_err();
        assert!(https.to_string().contains("https:// is not supported"));
    }

    #[test]
    fn escapes_queue_names() {
        assert_eq!(
            queue_uri("q", "jobs/a b").map(|uri| uri.to_string()),
            Ok("/q/jobs%2Fa%20b".to_owned())
        );
        assert!(queue_uri("q", "").is_err());
        assert!(queue_uri("q", "a\nb").is_err());
    }

    /// Every message an SSE parser hands out, as text; `deleted` for the end.
    fn events(chunks: &[&[u8]]) -> Vec<String> {
        let mut parser = SseParser::default();
        let mut seen = Vec::new();
        for chunk in chunks {
            parser
                .feed(chunk, &mut |event| {
                    seen.push(match event {
                        Event::Message(data) => String::from_utf8_lossy(data).into_owned(),
                        Event::Deleted => "deleted".to_owned(),
                    });
                })
                .expect("a valid stream");
        }
        seen
    }

    #[test]
    fn parses_server_sent_events_across_chunks() {
        let stream: &[u8] = b": restmq\n\nid: q:1\ndata: {\"a\":1}\n\n: keep-alive\n\n\
            id: q:2\ndata: {\"a\":2}\n\nevent: deleted\ndata: null\n\n";
        let whole = events(&[stream]);
        assert_eq!(whole, ["{\"a\":1}", "{\"a\":2}", "deleted"]);
        // Byte by byte: every boundary falls somewhere.
        let bytes: Vec<&[u8]> = stream.chunks(1).collect();
        assert_eq!(events(&bytes), whole);
        // CRLF line ends, several data lines, a field without a space.
        let crlf = events(&[b"data:x\r\ndata: y\r\n\r\nevent: gap\r\ndata: {}\r\n\r\n"]);
        assert_eq!(crlf, ["x\ny"]);
    }
}
