//! The test harness shared by every integration test: a real restmq server on a
//! free port with its own temporary data directory, and a real HTTP client.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use restmq::config::Config;
use tempfile::TempDir;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// How long a test waits for a condition before failing.
pub const DEADLINE: Duration = Duration::from_secs(10);

/// A server started in this process, on 127.0.0.1 and a port the OS picked.
pub struct TestServer {
    /// Where it listens.
    pub addr: SocketAddr,
    /// A client for it.
    pub client: reqwest::Client,
    dir: Option<TempDir>,
    data_dir: PathBuf,
    shutdown: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<std::io::Result<()>>>,
}

impl TestServer {
    /// A server with default settings on a new, empty data directory.
    pub async fn start() -> TestServer {
        let dir = tempfile::tempdir().expect("temporary directory");
        let config = Config::new(dir.path());
        TestServer::start_with(config, Some(dir)).await
    }

    /// A server with `config`; `dir` (if any) is removed when the server is dropped.
    pub async fn start_with(config: Config, dir: Option<TempDir>) -> TestServer {
        let state = restmq::open(&config).await.expect("open the store");
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("local address");
        let (tx, rx) = oneshot::channel::<()>();
        let task = tokio::spawn(restmq::serve(listener, state, async move {
            let _ = rx.await;
        }));
        TestServer {
            addr,
            client: reqwest::Client::new(),
            data_dir: config.data_dir.clone(),
            dir,
            shutdown: Some(tx),
            task: Some(task),
        }
    }

    /// Stops the server gracefully, then starts a new one on the same data directory.
    pub async fn restart(mut self) -> TestServer {
        let dir = self.dir.take();
        let config = Config::new(&self.data_dir);
        self.stop().await;
        TestServer::start_with(config, dir).await
    }

    /// Stops the server gracefully and waits until its store is closed.
    pub async fn stop(mut self) {
        self.shutdown_now().await;
    }

    async fn shutdown_now(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(task) = self.task.take() {
            task.await.expect("server task").expect("server result");
        }
    }

    /// The server's data directory.
    pub fn data_dir(&self) -> &Path {
        &self.data_dir
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
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
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
