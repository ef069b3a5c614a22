//! The test harness shared by every integration test: a real restmq server on a
//! free port with its own temporary data directory, and a real HTTP client.
#![allow(dead_code)]

pub mod raw;
pub mod redis_servers;

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use restmq::config::{Config, Storage};
use restmq::store::RedisTarget;
use tempfile::TempDir;
use tokio::net::TcpListener;
use tokio::sync::oneshot;

/// How long a test waits for a condition before failing.
pub const DEADLINE: Duration = Duration::from_secs(10);

/// Where a test server keeps its queues.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// The embedded store, in a temporary directory.
    Embedded,
    /// One Redis server.
    Redis,
    /// A ring of three Redis servers.
    Ring,
    /// A Redis Cluster of three masters.
    Cluster,
}

/// Runs the same test against every store: `conformance!(a, b)` makes, for each
/// `async fn a(backend: Backend)`, one test per backend (`embedded::a`, `redis::a`,
/// `ring::a`, `cluster::a`).
#[macro_export]
macro_rules! conformance {
    ($($test:ident),* $(,)?) => {
        mod embedded {
            $( #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
               async fn $test() { super::$test($crate::common::Backend::Embedded).await } )*
        }
        mod redis {
            $( #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
               async fn $test() { super::$test($crate::common::Backend::Redis).await } )*
        }
        mod ring {
            $( #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
               async fn $test() { super::$test($crate::common::Backend::Ring).await } )*
        }
        mod cluster {
            $( #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
               async fn $test() { super::$test($crate::common::Backend::Cluster).await } )*
        }
    };
}

/// A server running on a thread of its own, on 127.0.0.1 and a port the OS picked.
/// Dropping it stops it and waits until it has stopped.
pub struct TestServer {
    /// Where it listens.
    pub addr: SocketAddr,
    /// Where its other front doors listen (those its config turns on).
    pub doors: restmq::adapters::DoorAddrs,
    /// A client for it.
    pub client: reqwest::Client,
    /// The store it uses.
    pub backend: Backend,
    config: Config,
    dir: Option<TempDir>,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
    /// The shared cluster, held while this test uses it.
    turn: Option<tokio::sync::MutexGuard<'static, ()>>,
}

impl TestServer {
    /// A server with default settings on a new, empty data directory.
    pub async fn start() -> TestServer {
        let dir = tempfile::tempdir().expect("temporary directory");
        let config = Config::new(dir.path());
        TestServer::start_with(config, Some(dir)).await
    }

    /// A server on `backend`, with default settings and empty queues; `None`
    /// (after saying so) when the backend needs `redis-server` and it is not
    /// installed, unless `CI` is set: then the test fails.
    pub async fn on(backend: Backend) -> Option<TestServer> {
        TestServer::configured(backend, |_| {}).await
    }

    /// Like [`TestServer::on`], with settings changed by `tweak`.
    pub async fn configured(
        backend: Backend,
        tweak: impl FnOnce(&mut Config),
    ) -> Option<TestServer> {
        let dir = tempfile::tempdir().expect("temporary directory");
        let mut config = Config::new(dir.path());
        if backend != Backend::Embedded && !redis_servers::available() {
            assert!(
                std::env::var_os("CI").is_none(),
                "redis-server is not installed, and CI is set: the Redis tests must run"
            );
            eprintln!("skipping the {backend:?} variant: redis-server is not installed");
            return None;
        }
        let mut turn = None;
        match backend {
            Backend::Embedded => {}
            Backend::Redis => {
                let urls = tokio::task::spawn_blocking(redis_servers::single)
                    .await
                    .expect("start redis-server");
                config.storage = Storage::Redis(RedisTarget::Ring(urls));
            }
            Backend::Ring => {
                let urls = tokio::task::spawn_blocking(redis_servers::ring)
                    .await
                    .expect("start redis-servers");
                config.storage = Storage::Redis(RedisTarget::Ring(urls));
            }
            Backend::Cluster => {
                turn = Some(redis_servers::cluster_turn().lock().await);
                let urls = tokio::task::spawn_blocking(redis_servers::cluster)
                    .await
                    .expect("start a Redis Cluster");
                redis_servers::flush_cluster().await;
                config.storage = Storage::Redis(RedisTarget::Cluster(urls));
            }
        }
        tweak(&mut config);
        let mut server = TestServer::start_with(config, Some(dir)).await;
        server.backend = backend;
        server.turn = turn;
        Some(server)
    }

    /// A server with `config`; `dir` (if any) is removed when the server is dropped.
    pub async fn start_with(config: Config, dir: Option<TempDir>) -> TestServer {
        let (ready, address) = oneshot::channel::<(SocketAddr, restmq::adapters::DoorAddrs)>();
        let (stop, stopped) = oneshot::channel::<()>();
        let server_config = config.clone();
        let thread = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .expect("a runtime for the server");
            runtime.block_on(async move {
                let state = restmq::open(&server_config).await.expect("open the store");
                let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
                let doors = restmq::adapters::Doors::bind("127.0.0.1", &server_config.doors)
                    .await
                    .expect("bind the front doors");
                let _ = ready.send((listener.local_addr().expect("local address"), doors.addrs()));
                let shutdown = async move {
                    let _ = stopped.await;
                };
                restmq::serve_with(listener, doors, state, shutdown)
                    .await
                    .expect("the server runs");
            });
        });
        let (addr, doors) = address.await.expect("the server starts");
        TestServer {
            addr,
            doors,
            client: reqwest::Client::new(),
            backend: Backend::Embedded,
            config,
            dir,
            stop: Some(stop),
            thread: Some(thread),
            turn: None,
        }
    }

    /// Stops the server gracefully, then starts a new one on the same store.
    pub async fn restart(mut self) -> TestServer {
        let dir = self.dir.take();
        let turn = self.turn.take();
        let backend = self.backend;
        let config = self.config.clone();
        self.stop().await;
        let mut server = TestServer::start_with(config, dir).await;
        server.backend = backend;
        server.turn = turn;
        server
    }

    /// Stops the server gracefully and waits until its store is closed.
    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            tokio::task::spawn_blocking(move || thread.join())
                .await
                .expect("join")
                .expect("the server thread ends without panicking");
        }
    }

    /// The server's data directory (of the embedded store).
    pub fn data_dir(&self) -> &Path {
        &self.config.data_dir
    }

    /// The URL of `path` on this server (`path` starts with `/`).
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    /// `GET path`.
    pub async fn get(&self, path: &str) -> Answer {
        Answer::read(self.client.get(self.url(path)).send().await).await
    }

    /// `POST path` with a form body.
    pub async fn post_form(&self, path: &str, form: &[(&str, &str)]) -> Answer {
        Answer::read(self.client.post(self.url(path)).form(form).send().await).await
    }

    /// `POST path` with a raw body and content type.
    pub async fn post_raw(
        &self,
        path: &str,
        content_type: &str,
        body: impl Into<reqwest::Body>,
    ) -> Answer {
        let request = self
            .client
            .post(self.url(path))
            .header("content-type", content_type)
            .body(body);
        Answer::read(request.send().await).await
    }

    /// `DELETE path`.
    pub async fn delete(&self, path: &str) -> Answer {
        Answer::read(self.client.delete(self.url(path)).send().await).await
    }

    /// Publishes `value` to `queue` through `POST /q/<queue>`, asserting a 200; returns the key.
    pub async fn publish(&self, queue: &str, value: &str) -> String {
        let answer = self
            .post_form(&format!("/q/{queue}"), &[("value", value)])
            .await;
        assert_eq!(answer.status, 200, "publish to {queue}: {}", answer.body);
        answer
            .body
            .strip_suffix("\r\n")
            .expect("a key ends with CRLF")
            .to_owned()
    }

    /// Pops `queue` through `GET /q/<queue>`: `Some((key, value))`, or `None` on 204.
    pub async fn pop(&self, queue: &str) -> Option<(String, String)> {
        let answer = self.get(&format!("/q/{queue}")).await;
        match answer.status {
            204 => None,
            200 => {
                let json = answer.json();
                Some((
                    json["key"].as_str().expect("key").to_owned(),
                    json["value"].as_str().expect("value").to_owned(),
                ))
            }
            other => panic!("pop {queue}: unexpected {other}: {}", answer.body),
        }
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        // The server runs on its own thread and runtime: waiting here cannot
        // deadlock, and the next test to take the shared cluster finds it idle.
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// A response read whole.
#[derive(Debug)]
pub struct Answer {
    /// The status code.
    pub status: u16,
    /// The `content-type` header, empty when absent.
    pub content_type: String,
    /// Every header.
    pub headers: reqwest::header::HeaderMap,
    /// The body as text.
    pub body: String,
}

impl Answer {
    /// Reads a whole response.
    pub async fn read(response: reqwest::Result<reqwest::Response>) -> Answer {
        let response = response.expect("the server answers");
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        let content_type = headers
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_owned();
        let body = response.text().await.expect("a readable body");
        Answer {
            status,
            content_type,
            headers,
            body,
        }
    }

    /// The body parsed as JSON (a CRLF at its end is allowed).
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(self.body.trim_end_matches("\r\n"))
            .unwrap_or_else(|e| panic!("not JSON ({e}): {:?}", self.body))
    }
}

/// Polls `check` until it returns `Some`, failing the test after [`DEADLINE`].
pub async fn eventually<T, F, Fut>(what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + DEADLINE;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// A streaming HTTP response read incrementally: COMET lines or SSE events.
pub struct Streaming {
    /// The response's status.
    pub status: u16,
    /// The response's `content-type`.
    pub content_type: String,
    body: std::pin::Pin<Box<dyn futures_util::Stream<Item = reqwest::Result<bytes::Bytes>> + Send>>,
    buf: Vec<u8>,
}

/// One Server-Sent Event.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Event {
    /// `event:`, empty for a plain message.
    pub event: String,
    /// `id:`.
    pub id: String,
    /// `data:` (lines joined by `\n`).
    pub data: String,
}

impl Streaming {
    /// `GET path` with extra headers on a new connection, kept open. (A stream
    /// opened as a connection's first request is served directly on the socket;
    /// `tests/streaming.rs` also opens some on a used connection, served by hyper.)
    pub async fn open(server: &TestServer, path: &str, headers: &[(&str, &str)]) -> Streaming {
        let fresh = reqwest::Client::builder()
            .pool_max_idle_per_host(0)
            .build()
            .expect("an HTTP client");
        let mut request = fresh.get(server.url(path));
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let response = request.send().await.expect("the server answers");
        let status = response.status().as_u16();
        let content_type = response
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_owned();
        Streaming {
            status,
            content_type,
            body: Box::pin(response.bytes_stream()),
            buf: Vec::new(),
        }
    }

    /// A COMET stream of `queue`.
    pub async fn comet(server: &TestServer, queue: &str) -> Streaming {
        let stream = Streaming::open(server, &format!("/c/{queue}"), &[]).await;
        assert_eq!(stream.status, 200);
        stream
    }

    /// An SSE stream at `path`.
    pub async fn sse(server: &TestServer, path: &str, headers: &[(&str, &str)]) -> Streaming {
        let stream = Streaming::open(server, path, headers).await;
        assert_eq!(stream.status, 200, "SSE {path}");
        assert_eq!(stream.content_type, "text/event-stream");
        stream
    }

    /// More bytes, or `false` at the end of the stream; fails after [`DEADLINE`].
    async fn fill(&mut self) -> bool {
        use futures_util::StreamExt;
        match tokio::time::timeout(DEADLINE, self.body.next()).await {
            Err(_) => panic!("nothing arrived on the stream within {DEADLINE:?}"),
            Ok(None) => false,
            Ok(Some(chunk)) => {
                self.buf
                    .extend_from_slice(&chunk.expect("a readable stream"));
                true
            }
        }
    }

    /// The next line without its end (`\r\n` or `\n`); `None` at the end of the stream.
    pub async fn line(&mut self) -> Option<String> {
        loop {
            if let Some(at) = self.buf.iter().position(|&b| b == b'\n') {
                let mut line: Vec<u8> = self.buf.drain(..=at).collect();
                line.pop();
                if line.last() == Some(&b'\r') {
                    line.pop();
                }
                return Some(String::from_utf8(line).expect("UTF-8 lines"));
            }
            if !self.fill().await {
                assert!(self.buf.is_empty(), "stream ended mid-line: {:?}", self.buf);
                return None;
            }
        }
    }

    /// The next event, comments skipped; `None` at the end of the stream.
    pub async fn event(&mut self) -> Option<Event> {
        let mut event = Event::default();
        let mut fields = 0;
        loop {
            let line = self.line().await?;
            if line.is_empty() {
                if fields > 0 {
                    return Some(event);
                }
                continue;
            }
            if line.starts_with(':') {
                continue;
            }
            fields += 1;
            let (name, value) = line.split_once(':').unwrap_or((&line, ""));
            let value = value.strip_prefix(' ').unwrap_or(value).to_owned();
            match name {
                "event" => event.event = value,
                "id" => event.id = value,
                "data" if event.data.is_empty() => event.data = value,
                "data" => event.data = format!("{}\n{value}", event.data),
                _ => {}
            }
        }
    }

    /// The next COMET message as `(key, value)`; panics on anything else.
    pub async fn message(&mut self) -> (String, String) {
        let line = self
            .line()
            .await
            .expect("a message, not the end of the stream");
        let json: serde_json::Value = serde_json::from_str(&line)
            .unwrap_or_else(|e| panic!("not a JSON line ({e}): {line:?}"));
        (
            json["key"].as_str().expect("key").to_owned(),
            json["value"].as_str().expect("value").to_owned(),
        )
    }

    /// Asserts the stream ends here.
    pub async fn ends(&mut self) {
        let rest = self.line().await;
        assert_eq!(rest, None, "expected the end of the stream");
    }
}

/// A WebSocket client.
pub type WebSocket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

impl TestServer {
    /// A WebSocket to `/ws/<queue>`.
    pub async fn websocket(&self, queue: &str) -> WebSocket {
        let url = format!("ws://{}/ws/{queue}", self.addr);
        let (socket, response) = tokio_tungstenite::connect_async(url)
            .await
            .expect("the WebSocket handshake succeeds");
        assert_eq!(response.status(), 101);
        socket
    }

    /// Waits until `queue` has `count` streaming consumers.
    pub async fn wait_consumers(&self, queue: &str, count: u64) {
        eventually(&format!("{count} consumers on {queue}"), || async {
            let stats = self.get(&format!("/stats/{queue}")).await.json();
            (stats["consumers"] == count).then_some(())
        })
        .await;
    }
}

/// The next text frame of a WebSocket (pings skipped); `None` when it closes.
pub async fn ws_text(socket: &mut WebSocket) -> Option<String> {
    use futures_util::StreamExt;
    use tokio_tungstenite::tungstenite::Message;
    loop {
        let frame = tokio::time::timeout(DEADLINE, socket.next())
            .await
            .unwrap_or_else(|_| panic!("no WebSocket frame within {DEADLINE:?}"));
        match frame {
            None | Some(Ok(Message::Close(_))) => return None,
            Some(Ok(Message::Text(text))) => return Some(text.to_string()),
            Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
            Some(Ok(other)) => panic!("unexpected frame {other:?}"),
            Some(Err(e)) => panic!("WebSocket error: {e}"),
        }
    }
}
