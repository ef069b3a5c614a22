//! HTTPS: every way in (requests, COMET and SSE on either path, WebSockets)
//! over TLS, a plain HTTP client told off without harm, and a TLS identity
//! that cannot be used refused at startup with the file named.
//!
//! The client is hyper's over tokio-rustls (and tungstenite over the same TLS
//! stream): giving reqwest a rustls feature would make every reqwest client
//! of the other suites build a TLS configuration, needing a process-wide
//! crypto provider or aws-lc.

mod common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use common::{DEADLINE, TestServer, eventually};
use futures_util::{SinkExt, StreamExt};
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use restmq::config::{Config, TlsFiles};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;
use tokio_tungstenite::tungstenite::Message;

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

fn identity() -> TlsFiles {
    TlsFiles {
        cert: fixture("tls-cert.pem"),
        key: fixture("tls-key.pem"),
    }
}

/// A server speaking HTTPS, with settings changed by `tweak`.
async fn tls_server(tweak: impl FnOnce(&mut Config)) -> TestServer {
    let dir = tempfile::tempdir().expect("temporary directory");
    let mut config = Config::new(dir.path());
    config.tls = Some(identity());
    tweak(&mut config);
    TestServer::start_with(config, Some(dir)).await
}

/// A client that trusts the test certificate only.
fn connector() -> TlsConnector {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(fixture("tls-cert.pem")).expect("the certificate") {
        roots.add(cert.expect("a PEM certificate")).expect("a root");
    }
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("TLS versions")
    .with_root_certificates(roots)
    .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    TlsConnector::from(Arc::new(config))
}

/// A TLS connection to the server, checked against the name `localhost`.
async fn connect_tls(addr: SocketAddr) -> TlsStream<TcpStream> {
    let tcp = TcpStream::connect(addr).await.expect("connect");
    let name = ServerName::try_from("localhost").expect("a server name");
    connector()
        .connect(name, tcp)
        .await
        .expect("the TLS handshake succeeds")
}

/// An HTTP/1.1 connection over TLS.
async fn https_connection(addr: SocketAddr) -> SendRequest<Full<Bytes>> {
    let tls = connect_tls(addr).await;
    let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
        .await
        .expect("an HTTP connection");
    tokio::spawn(connection);
    sender
}

/// Sends a request on `sender`; `form` (if any) is the form body.
async fn send(
    sender: &mut SendRequest<Full<Bytes>>,
    method: &str,
    path: &str,
    form: Option<&str>,
) -> hyper::Response<hyper::body::Incoming> {
    let mut request = hyper::Request::builder()
        .method(method)
        .uri(path)
        .header("host", "localhost");
    if form.is_some() {
        request = request.header("content-type", "application/x-www-form-urlencoded");
    }
    let body = Full::new(Bytes::from(form.unwrap_or("").to_owned()));
    let request = request.body(body).expect("a request");
    // The previous exchange on the connection may still be finishing.
    sender
        .ready()
        .await
        .expect("the connection takes a request");
    tokio::time::timeout(DEADLINE, sender.send_request(request))
        .await
        .expect("an answer within the deadline")
        .expect("an answer")
}

/// Sends a request and reads the whole answer: status and body.
async fn fetch(
    sender: &mut SendRequest<Full<Bytes>>,
    method: &str,
    path: &str,
    form: Option<&str>,
) -> (u16, String) {
    let response = send(sender, method, path, form).await;
    let status = response.status().as_u16();
    let body = response
        .into_body()
        .collect()
        .await
        .expect("a readable body")
        .to_bytes();
    (status, String::from_utf8(body.to_vec()).expect("UTF-8"))
}

/// Publishes over HTTPS on a connection of its own; returns the key.
async fn publish(addr: SocketAddr, queue: &str, value: &str) -> String {
    let mut sender = https_connection(addr).await;
    let (status, body) = fetch(
        &mut sender,
        "POST",
        &format!("/q/{queue}"),
        Some(&format!("value={value}")),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    body.trim_end().to_owned()
}

/// Streaming consumers of `queue`, asked over HTTPS.
async fn consumers(addr: SocketAddr, queue: &str) -> u64 {
    let mut sender = https_connection(addr).await;
    let (_, body) = fetch(&mut sender, "GET", &format!("/stats/{queue}"), None).await;
    let stats: Value = serde_json::from_str(&body).expect("JSON stats");
    stats["consumers"].as_u64().unwrap_or(0)
}

/// Reads a streaming body until `needle` has arrived; returns all read.
async fn read_until(body: &mut hyper::body::Incoming, seen: &mut String, needle: &str) {
    while !seen.contains(needle) {
        let frame = tokio::time::timeout(DEADLINE, body.frame())
            .await
            .unwrap_or_else(|_| panic!("{needle:?} did not arrive; got {seen:?}"))
            .expect("the stream goes on")
            .expect("a readable stream");
        if let Ok(data) = frame.into_data() {
            seen.push_str(std::str::from_utf8(&data).expect("UTF-8"));
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_and_pop_over_https() {
    let server = tls_server(|_| {}).await;
    let mut sender = https_connection(server.addr).await;
    // Several requests on one kept-alive connection.
    let (status, key) = fetch(&mut sender, "POST", "/q/secure", Some("value=hello")).await;
    assert_eq!((status, key.as_str()), (200, "secure:1\r\n"));
    let (status, body) = fetch(&mut sender, "GET", "/q/secure", None).await;
    assert_eq!(status, 200);
    let message: Value = serde_json::from_str(body.trim_end()).expect("JSON");
    assert_eq!(message["value"], "hello");
    let (status, _) = fetch(&mut sender, "GET", "/q/secure", None).await;
    assert_eq!(status, 204);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sse_and_comet_stream_over_https_on_either_path() {
    let server = tls_server(|_| {}).await;
    // A stream as the connection's first request: the raw path.
    let mut raw_sse = https_connection(server.addr).await;
    let response = send(&mut raw_sse, "GET", "/sse/feed", None).await;
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-type"], "text/event-stream");
    let mut sse = response.into_body();
    let mut sse_seen = String::new();
    read_until(&mut sse, &mut sse_seen, ": restmq").await;
    let mut raw_comet = https_connection(server.addr).await;
    let response = send(&mut raw_comet, "GET", "/c/feed", None).await;
    assert_eq!(response.status(), 200);
    let mut comet = response.into_body();
    // A stream after another request on the same connection: served by hyper.
    let mut used = https_connection(server.addr).await;
    let (status, _) = fetch(&mut used, "GET", "/healthz", None).await;
    assert_eq!(status, 200);
    let response = send(&mut used, "GET", "/c/feed", None).await;
    assert_eq!(response.status(), 200);
    let mut hyper_comet = response.into_body();
    eventually("three consumers of feed", || async {
        (consumers(server.addr, "feed").await == 3).then_some(())
    })
    .await;
    let key = publish(server.addr, "feed", "over-tls").await;
    read_until(&mut sse, &mut sse_seen, "over-tls").await;
    assert!(sse_seen.contains(&format!("id: {key}\n")), "{sse_seen}");
    let line = format!("{{\"key\":\"{key}\",\"value\":\"over-tls\"}}\r\n");
    let mut comet_seen = String::new();
    read_until(&mut comet, &mut comet_seen, &line).await;
    let mut hyper_seen = String::new();
    read_until(&mut hyper_comet, &mut hyper_seen, &line).await;
}

/// The next text frame of a WebSocket over TLS; `None` when it closes.
async fn wss_text(
    socket: &mut tokio_tungstenite::WebSocketStream<TlsStream<TcpStream>>,
) -> Option<String> {
    loop {
        let frame = tokio::time::timeout(DEADLINE, socket.next())
            .await
            .expect("a WebSocket frame within the deadline");
        match frame {
            None | Some(Ok(Message::Close(_))) => return None,
            Some(Ok(Message::Text(text))) => return Some(text.to_string()),
            Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
            Some(Ok(other)) => panic!("unexpected frame {other:?}"),
            Some(Err(e)) => panic!("WebSocket error: {e}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websockets_work_over_wss() {
    let server = tls_server(|_| {}).await;
    let tls = connect_tls(server.addr).await;
    let (mut socket, response) = tokio_tungstenite::client_async("wss://localhost/ws/wsq", tls)
        .await
        .expect("the WebSocket handshake succeeds");
    assert_eq!(response.status(), 101);
    eventually("a WebSocket consumer of wsq", || async {
        (consumers(server.addr, "wsq").await == 1).then_some(())
    })
    .await;
    let key = publish(server.addr, "wsq", "framed").await;
    let frame = wss_text(&mut socket).await.expect("a message frame");
    let frame: Value = serde_json::from_str(&frame).expect("a JSON frame");
    assert_eq!(frame, serde_json::json!({"key": key, "value": "framed"}));
    socket
        .send(Message::Text("echo me".into()))
        .await
        .expect("send a frame");
    assert_eq!(wss_text(&mut socket).await.as_deref(), Some("echo me"));
    socket.close(None).await.expect("close");
    while let Some(Ok(_)) = socket.next().await {}
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_http_to_the_tls_port_is_told_so_and_harms_nothing() {
    let server = tls_server(|_| {}).await;
    let mut plain = TcpStream::connect(server.addr).await.expect("connect");
    plain
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .await
        .expect("send plain HTTP");
    let mut answer = Vec::new();
    tokio::time::timeout(DEADLINE, plain.read_to_end(&mut answer))
        .await
        .expect("answered and closed")
        .expect("readable");
    let answer = String::from_utf8(answer).expect("UTF-8");
    assert!(answer.starts_with("HTTP/1.1 400 "), "{answer}");
    assert!(answer.contains("this port speaks HTTPS"), "{answer}");
    // The server goes on serving HTTPS.
    assert_eq!(publish(server.addr, "after", "fine").await, "after:1");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_handshakes_neither_block_others_nor_stay_open() {
    let server = tls_server(|c| c.header_timeout = Duration::from_secs(1)).await;
    // Silent connections, and one that stops in the middle of its ClientHello.
    let mut stalled = Vec::new();
    for _ in 0..5 {
        stalled.push(TcpStream::connect(server.addr).await.expect("connect"));
    }
    let mut partial = TcpStream::connect(server.addr).await.expect("connect");
    partial
        .write_all(&[0x16, 0x03, 0x01, 0x02, 0x00, 0x01])
        .await
        .expect("send a partial ClientHello");
    stalled.push(partial);
    assert_eq!(publish(server.addr, "busy", "served").await, "busy:1");
    for mut socket in stalled {
        let mut rest = Vec::new();
        let read = tokio::time::timeout(DEADLINE, socket.read_to_end(&mut rest))
            .await
            .expect("the server closes a stalled handshake");
        // A TLS alert may come first; either way the connection is over.
        assert!(read.is_ok() || rest.is_empty());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_past_the_limit_get_503_over_tls_too() {
    let server = tls_server(|c| c.max_connections = 2).await;
    let _held = [
        TcpStream::connect(server.addr).await.expect("connect"),
        TcpStream::connect(server.addr).await.expect("connect"),
    ];
    let mut sender = https_connection(server.addr).await;
    let response = send(&mut sender, "GET", "/healthz", None).await;
    assert_eq!(response.status(), 503);
    assert_eq!(response.headers()["retry-after"], "1");
    let body = response
        .into_body()
        .collect()
        .await
        .expect("body")
        .to_bytes();
    let body: Value = serde_json::from_slice(&body).expect("a JSON error");
    assert!(
        body["error"]
            .as_str()
            .is_some_and(|e| e.contains("too many connections")),
        "{body}"
    );
}

/// The error `restmq::open` gives for a TLS identity.
async fn open_error(files: TlsFiles) -> String {
    let dir = tempfile::tempdir().expect("temporary directory");
    let mut config = Config::new(dir.path());
    config.tls = Some(files);
    match restmq::open(&config).await {
        Ok(_) => panic!("a server opened with an unusable TLS identity"),
        Err(restmq::OpenError::Tls(error)) => error.to_string(),
        Err(other) => panic!("not a TLS error: {other}"),
    }
}

#[tokio::test]
async fn a_key_that_does_not_match_the_certificate_is_refused_at_startup() {
    let files = TlsFiles {
        cert: fixture("tls-cert.pem"),
        key: fixture("tls-other-key.pem"),
    };
    let error = open_error(files).await;
    assert!(error.contains("does not match"), "{error}");
    assert!(error.contains("tls-other-key.pem"), "{error}");
    assert!(error.contains("tls-cert.pem"), "{error}");
}

#[tokio::test]
async fn missing_or_garbled_files_are_refused_naming_the_file() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let garbage = dir.path().join("garbage.pem");
    std::fs::write(&garbage, "this is not PEM at all\n").expect("write");
    let broken = dir.path().join("broken.pem");
    std::fs::write(
        &broken,
        "-----BEGIN CERTIFICATE-----\n%%% not base64 %%%\n-----END CERTIFICATE-----\n",
    )
    .expect("write");
    let missing = dir.path().join("missing.pem");
    let cases = [
        (
            missing.clone(),
            fixture("tls-key.pem"),
            ["cannot read the TLS certificate", "missing.pem"],
        ),
        (
            fixture("tls-cert.pem"),
            missing,
            ["cannot read the TLS key", "missing.pem"],
        ),
        (
            garbage.clone(),
            fixture("tls-key.pem"),
            ["holds no certificate", "garbage.pem"],
        ),
        (
            fixture("tls-cert.pem"),
            garbage,
            ["holds no private key", "garbage.pem"],
        ),
        (
            fixture("tls-cert.pem"),
            fixture("tls-cert.pem"),
            ["holds no private key", "tls-cert.pem"],
        ),
        (
            broken,
            fixture("tls-key.pem"),
            ["cannot read the TLS certificate", "broken.pem"],
        ),
    ];
    for (cert, key, expected) in cases {
        let error = open_error(TlsFiles { cert, key }).await;
        for part in expected {
            assert!(error.contains(part), "{part}: {error}");
        }
    }
}

/// Runs the `restmq` binary with `args` and `env`, expecting it to exit
/// before serving; its exit code and standard error.
fn run_restmq(args: &[&str], env: &[(&str, &Path)]) -> (Option<i32>, String) {
    let dir = tempfile::tempdir().expect("temporary directory");
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_restmq"));
    command
        .args(["--port", "0", "--data-dir"])
        .arg(dir.path())
        .args(args)
        .env_remove("RESTMQ_TLS_CERT")
        .env_remove("RESTMQ_TLS_KEY")
        .stdin(std::process::Stdio::null());
    for (name, value) in env {
        command.env(name, value);
    }
    let output = command.output().expect("run restmq");
    (
        output.status.code(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[test]
fn the_command_refuses_half_or_unusable_tls_settings() {
    let cert = fixture("tls-cert.pem");
    let other = fixture("tls-other-key.pem");
    let cert_arg = cert.to_str().expect("a UTF-8 path");
    let (code, stderr) = run_restmq(&["--tls-cert", cert_arg], &[]);
    assert_ne!(code, Some(0), "{stderr}");
    assert!(stderr.contains("--tls-key"), "{stderr}");
    let (code, stderr) = run_restmq(&[], &[("RESTMQ_TLS_KEY", &other)]);
    assert_ne!(code, Some(0), "{stderr}");
    assert!(stderr.contains("--tls-cert"), "{stderr}");
    let (code, stderr) = run_restmq(
        &[],
        &[("RESTMQ_TLS_CERT", &cert), ("RESTMQ_TLS_KEY", &other)],
    );
    assert_eq!(code, Some(1), "{stderr}");
    assert!(stderr.contains("does not match"), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
}
