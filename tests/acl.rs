//! Access control end to end: the original's `acl.conf` (addresses and HTTP
//! Basic per route category), bearer tokens with rights on queue patterns,
//! trusted proxies, and the file being re-read. Requests go over real
//! connections, one per request, so the direct streaming path (`/c/`, `/sse/`
//! as a connection's first request) and the router's path are both exercised.

mod common;

use std::net::SocketAddr;
use std::path::PathBuf;

use base64::Engine;
use bytes::Bytes;
use common::{TestServer, eventually};
use http_body_util::{BodyExt, Full};
use hyper::header::HeaderMap;
use hyper_util::rt::TokioIo;
use restmq::config::Config;
use tempfile::TempDir;

/// One answer, read over a connection of its own.
#[derive(Debug)]
struct Reply {
    status: u16,
    headers: HeaderMap,
    body: String,
}

/// A request to send.
#[derive(Debug, Clone)]
struct Call {
    method: &'static str,
    path: String,
    headers: Vec<(String, String)>,
    body: String,
    /// Sent after a first request on the same connection, so that a stream
    /// route goes through the router rather than the direct path.
    warm: bool,
    /// A stream: its body never ends, so only the head is read.
    stream: bool,
}

impl Call {
    fn new(method: &'static str, path: &str) -> Call {
        Call {
            method,
            path: path.to_owned(),
            headers: Vec::new(),
            body: String::new(),
            warm: false,
            stream: false,
        }
    }

    fn form(mut self, body: &str) -> Call {
        self.headers.push((
            "content-type".into(),
            "application/x-www-form-urlencoded".into(),
        ));
        self.body = body.to_owned();
        self
    }

    fn json(mut self, body: &str) -> Call {
        self.headers
            .push(("content-type".into(), "application/json".into()));
        self.body = body.to_owned();
        self
    }

    fn header(mut self, name: &str, value: &str) -> Call {
        self.headers.push((name.to_owned(), value.to_owned()));
        self
    }

    fn stream(mut self) -> Call {
        self.stream = true;
        self
    }

    fn warm(mut self) -> Call {
        self.warm = true;
        self
    }

    fn websocket(self) -> Call {
        self.header("connection", "upgrade")
            .header("upgrade", "websocket")
            .header("sec-websocket-version", "13")
            .header("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ==")
            .stream()
    }

    async fn send(&self, addr: SocketAddr) -> Reply {
        let socket = tokio::net::TcpStream::connect(addr).await.expect("connect");
        let (mut sender, connection) =
            hyper::client::conn::http1::handshake::<_, Full<Bytes>>(TokioIo::new(socket))
                .await
                .expect("handshake");
        tokio::spawn(connection.with_upgrades());
        if self.warm {
            let first = hyper::Request::get("/healthz")
                .header("host", "restmq")
                .body(Full::new(Bytes::new()))
                .expect("a request");
            let answer = sender.send_request(first).await.expect("a first answer");
            answer.into_body().collect().await.expect("its body");
            sender
                .ready()
                .await
                .expect("the connection takes another request");
        }
        let mut request = hyper::Request::builder()
            .method(self.method)
            .uri(&self.path)
            .header("host", "restmq");
        for (name, value) in &self.headers {
            request = request.header(name, value);
        }
        let request = request
            .body(Full::new(Bytes::from(self.body.clone())))
            .expect("a request");
        let response = tokio::time::timeout(common::DEADLINE, sender.send_request(request))
            .await
            .expect("an answer in time")
            .expect("an answer");
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        let body = if self.stream && (status == 200 || status == 101) {
            String::new()
        } else {
            let bytes = tokio::time::timeout(common::DEADLINE, response.into_body().collect())
                .await
                .expect("a body in time")
                .expect("a body")
                .to_bytes();
            String::from_utf8_lossy(&bytes).into_owned()
        };
        Reply {
            status,
            headers,
            body,
        }
    }
}

fn basic(user: &str, password: &str) -> String {
    let encoded = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
    format!("Basic {encoded}")
}

/// A server on a fresh store whose rules are `acl`, believing
/// `X-Forwarded-For` from `trusted`.
async fn server(acl: &str, trusted: Option<&str>) -> (TestServer, PathBuf, TempDir) {
    let rules_dir = tempfile::tempdir().expect("a directory");
    let file = rules_dir.path().join("acl.conf");
    std::fs::write(&file, acl).expect("write the rules");
    let data = tempfile::tempdir().expect("a directory");
    let mut config = Config::new(data.path());
    config.acl = Some(file.clone());
    config.trusted_proxies = trusted.map(str::to_owned);
    (
        TestServer::start_with(config, Some(data)).await,
        file,
        rules_dir,
    )
}

/// Every category admits 127.0.0.1 and 10.0.0.0/8 only, each with a user of
/// its own.
const MATRIX_RULES: &str = "\
[rest:producer]
hosts_allow = 127.0.0.1 10.0.0.0/8
hosts_deny = all
username = producer
password = p-secret

[rest:consumer]
hosts_allow = 127.0.0.1 10.0.0.0/8
hosts_deny = all
username = consumer
password = c-secret

[comet:consumer]
hosts_allow = 127.0.0.1 10.0.0.0/8
hosts_deny = all
username = comet
password = m-secret

[websocket:consumer]
hosts_allow = 127.0.0.1 10.
hosts_deny = all
username = ws
password = w-secret
";

/// The state a refused request must leave as it was: every queue's counts,
/// status and policy, and the settings of the queue the matrix uses.
async fn snapshot(server: &TestServer) -> (String, String) {
    let consumer = basic("consumer", "c-secret");
    let stats = Call::new("GET", "/stats/")
        .header("authorization", &consumer)
        .send(server.addr)
        .await;
    assert_eq!(stats.status, 200, "{}", stats.body);
    let config = Call::new("GET", "/config/mx")
        .header("authorization", &consumer)
        .send(server.addr)
        .await;
    assert_eq!(config.status, 200, "{}", config.body);
    (stats.body, config.body)
}

/// Waits until no stream consumes `mx`, after an admitted stream closed.
async fn no_consumers(server: &TestServer) {
    let consumer = basic("consumer", "c-secret");
    eventually("the stream to leave", || {
        let call = Call::new("GET", "/stats/mx").header("authorization", &consumer);
        async move {
            let reply = call.send(server.addr).await;
            let json: serde_json::Value = serde_json::from_str(&reply.body).ok()?;
            (json["consumers"] == 0 && json["waiting"] == 0).then_some(())
        }
    })
    .await;
}

/// A route of each kind, with the credentials of its category and the
/// status it answers once let in.
fn routes() -> Vec<(Call, (&'static str, &'static str), u16)> {
    const PRODUCER: (&str, &str) = ("producer", "p-secret");
    const CONSUMER: (&str, &str) = ("consumer", "c-secret");
    const COMET: (&str, &str) = ("comet", "m-secret");
    const WS: (&str, &str) = ("ws", "w-secret");
    vec![
        (Call::new("POST", "/q/mx").form("value=new"), PRODUCER, 200),
        (
            Call::new("POST", "/").form("queue=mx&value=new"),
            PRODUCER,
            200,
        ),
        (
            Call::new("POST", "/queue").json(r#"{"cmd":"add","queue":"mx","value":"v"}"#),
            PRODUCER,
            200,
        ),
        (
            Call::new("POST", "/p/mx").form("policy=roundrobin"),
            PRODUCER,
            200,
        ),
        (
            Call::new("POST", "/control/mx").form("status=start"),
            PRODUCER,
            200,
        ),
        (
            Call::new("POST", "/config/mx").json(r#"{"max_receives":7}"#),
            PRODUCER,
            200,
        ),
        (Call::new("POST", "/redrive/mx"), PRODUCER, 200),
        (
            Call::new("POST", "/collectd/data").json(r#"[{"values":[1],"host":"h"}]"#),
            PRODUCER,
            200,
        ),
        (
            Call::new("POST", "/collectd/event").form("Severity: OKAY\n\nfine"),
            PRODUCER,
            200,
        ),
        (Call::new("GET", "/q/mx"), CONSUMER, 200),
        (Call::new("GET", "/?queue=mx"), CONSUMER, 200),
        (Call::new("GET", "/q/"), CONSUMER, 200),
        (Call::new("GET", "/stats/"), CONSUMER, 200),
        (Call::new("GET", "/metrics"), CONSUMER, 200),
        (Call::new("GET", "/stats/mx"), CONSUMER, 200),
        (Call::new("GET", "/p/mx"), CONSUMER, 200),
        (Call::new("GET", "/control/mx"), CONSUMER, 200),
        (Call::new("GET", "/control/"), CONSUMER, 200),
        (Call::new("GET", "/config/mx"), CONSUMER, 200),
        (Call::new("GET", "/j/mx"), CONSUMER, 200),
        (
            Call::new("POST", "/ack").form("receipt=r1.1.1.6d78"),
            CONSUMER,
            409,
        ),
        (
            Call::new("POST", "/nack").form("receipt=r1.1.1.6d78"),
            CONSUMER,
            409,
        ),
        (
            Call::new("POST", "/extend").form("receipt=r1.1.1.6d78&visibility=5"),
            CONSUMER,
            409,
        ),
        (Call::new("GET", "/c/mx").stream(), COMET, 200),
        (Call::new("GET", "/c/mx").stream().warm(), COMET, 200),
        (Call::new("GET", "/sse/mx").stream(), COMET, 200),
        (Call::new("GET", "/sse/mx").stream().warm(), COMET, 200),
        (Call::new("GET", "/ws/mx").websocket(), WS, 101),
        (Call::new("DELETE", "/q/mx"), PRODUCER, 200),
    ]
}

/// Every route category x an allowed, a denied and the connection's own
/// address x right, wrong and missing credentials: the exact status, the
/// challenge, the JSON error, and nothing changed by a refusal.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acl_matrix() {
    let (server, _file, _rules) = server(MATRIX_RULES, Some("127.0.0.1")).await;
    let producer = basic("producer", "p-secret");
    for value in ["a", "b", "c"] {
        let reply = Call::new("POST", "/q/mx")
            .form(&format!("value={value}"))
            .header("authorization", &producer)
            .send(server.addr)
            .await;
        assert_eq!(reply.status, 200, "{}", reply.body);
    }
    // Addresses: the connection's own (127.0.0.1), and two forwarded by it.
    let addresses: [(Option<&str>, bool); 3] = [
        (None, true),
        (Some("10.20.30.40"), true),
        (Some("192.168.1.5"), false),
    ];
    let mut checked = 0;
    for (call, (user, password), admitted) in routes() {
        let right = basic(user, password);
        let other = if user == "producer" {
            basic("consumer", "c-secret")
        } else {
            basic("producer", "p-secret")
        };
        let wrong_password = basic(user, "guess");
        let credentials: [(&str, Option<&str>, bool); 4] = [
            ("right", Some(right.as_str()), true),
            ("another category's", Some(other.as_str()), false),
            ("a wrong password", Some(wrong_password.as_str()), false),
            ("missing", None, false),
        ];
        for (forwarded, address_ok) in addresses {
            for (which, authorization, credentials_ok) in credentials {
                let mut attempt = call.clone();
                if let Some(forwarded) = forwarded {
                    attempt = attempt.header("x-forwarded-for", forwarded);
                }
                if let Some(authorization) = authorization {
                    attempt = attempt.header("authorization", authorization);
                }
                let what = format!(
                    "{} {} from {} with {which} credentials{}",
                    call.method,
                    call.path,
                    forwarded.unwrap_or("127.0.0.1"),
                    if call.warm {
                        " (after a first request)"
                    } else {
                        ""
                    }
                );
                let before = snapshot(&server).await;
                let reply = attempt.send(server.addr).await;
                checked += 1;
                if address_ok && credentials_ok {
                    assert_eq!(reply.status, admitted, "{what}: {}", reply.body);
                    if call.stream {
                        no_consumers(&server).await;
                    }
                    continue;
                }
                let (status, challenged) = if address_ok {
                    (401, true)
                } else {
                    (403, false)
                };
                assert_eq!(reply.status, status, "{what}: {}", reply.body);
                let json: serde_json::Value = serde_json::from_str(&reply.body)
                    .unwrap_or_else(|e| panic!("{what}: not JSON ({e}): {}", reply.body));
                assert!(
                    json["error"].as_str().is_some_and(|e| !e.is_empty()),
                    "{what}: {}",
                    reply.body
                );
                let challenge = reply
                    .headers
                    .get("www-authenticate")
                    .and_then(|v| v.to_str().ok());
                if challenged {
                    assert!(
                        challenge.is_some_and(|c| c.starts_with("Basic realm=\"restmq\"")),
                        "{what}: challenge {challenge:?}"
                    );
                } else {
                    assert_eq!(challenge, None, "{what}");
                    assert!(
                        json["error"]
                            .as_str()
                            .is_some_and(|e| e.contains("192.168.1.5"))
                    );
                }
                assert_eq!(snapshot(&server).await, before, "{what} changed the state");
            }
        }
    }
    assert_eq!(checked, routes().len() * 3 * 4);
}

/// The WebSocket cookie `auth=user:password` counts for the WebSocket routes,
/// as in the original, and nowhere else.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_websocket_cookie_counts_for_websockets_only() {
    let (server, _file, _rules) = server(MATRIX_RULES, None).await;
    let socket = Call::new("GET", "/ws/mx")
        .websocket()
        .header("cookie", "theme=dark; auth=ws:w-secret")
        .send(server.addr)
        .await;
    assert_eq!(socket.status, 101);
    let wrong = Call::new("GET", "/ws/mx")
        .websocket()
        .header("cookie", "auth=ws:nope")
        .send(server.addr)
        .await;
    assert_eq!(wrong.status, 401, "{}", wrong.body);
    for path in ["/c/mx", "/sse/mx"] {
        let comet = Call::new("GET", path)
            .stream()
            .header("cookie", "auth=comet:m-secret")
            .send(server.addr)
            .await;
        assert_eq!(comet.status, 401, "{path}: {}", comet.body);
    }
    let rest = Call::new("POST", "/q/mx")
        .form("value=x")
        .header("cookie", "auth=producer:p-secret")
        .send(server.addr)
        .await;
    assert_eq!(rest.status, 401, "{}", rest.body);
}

const ADMIN_TOKEN: &str = "rmq_admin_token";
const PUBLISHER_TOKEN: &str = "rmq_publisher_token";
const READER_TOKEN: &str = "rmq_reader_token";

fn token_rules() -> String {
    [
        restmq::acl::token_section("admin", ADMIN_TOKEN, "*", "*", "*"),
        restmq::acl::token_section("publisher", PUBLISHER_TOKEN, "jobs/* builds", "", ""),
        restmq::acl::token_section("reader", READER_TOKEN, "", "jobs/*", ""),
    ]
    .into_iter()
    .map(|section| section.expect("a valid section"))
    .collect::<Vec<_>>()
    .join("\n")
}

fn bearer(token: &str) -> String {
    format!("Bearer {token}")
}

/// Tokens: each right on its queue patterns, in every way a token can be
/// presented; anything else refused, with nothing changed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_grant_rights_on_queue_patterns() {
    let (server, _file, _rules) = server(&token_rules(), None).await;
    let admin = bearer(ADMIN_TOKEN);
    let publisher = bearer(PUBLISHER_TOKEN);
    let reader = bearer(READER_TOKEN);
    let token_as_basic = basic("reader", READER_TOKEN);
    let stats = || async {
        let reply = Call::new("GET", "/stats/")
            .header("authorization", &admin)
            .send(server.addr)
            .await;
        assert_eq!(reply.status, 200, "{}", reply.body);
        reply.body
    };
    let cases: Vec<(&str, Call, Option<&str>, u16)> = vec![
        (
            "publish in its pattern",
            Call::new("POST", "/q/jobs/a").form("value=1"),
            Some(&publisher),
            200,
        ),
        (
            "publish to a named queue",
            Call::new("POST", "/q/builds").form("value=1"),
            Some(&publisher),
            200,
        ),
        (
            "publish outside its patterns",
            Call::new("POST", "/q/other").form("value=1"),
            Some(&publisher),
            403,
        ),
        (
            "publish where a pattern is a prefix only",
            Call::new("POST", "/q/builds2").form("value=1"),
            Some(&publisher),
            403,
        ),
        (
            "publish by parameter",
            Call::new("POST", "/").form("queue=other&value=1"),
            Some(&publisher),
            403,
        ),
        (
            "publish by command",
            Call::new("POST", "/queue").json(r#"{"cmd":"add","queue":"other","value":"1"}"#),
            Some(&publisher),
            403,
        ),
        (
            "take by command without consume",
            Call::new("POST", "/queue").json(r#"{"cmd":"take","queue":"jobs/a"}"#),
            Some(&publisher),
            403,
        ),
        (
            "pop without consume",
            Call::new("GET", "/q/jobs/a"),
            Some(&publisher),
            403,
        ),
        (
            "purge without admin",
            Call::new("DELETE", "/q/jobs/a"),
            Some(&publisher),
            403,
        ),
        (
            "policy without admin",
            Call::new("POST", "/p/jobs/a").form("policy=roundrobin"),
            Some(&publisher),
            403,
        ),
        (
            "pause without admin",
            Call::new("POST", "/control/jobs/a").form("status=stop"),
            Some(&publisher),
            403,
        ),
        (
            "listing without admin",
            Call::new("GET", "/q/"),
            Some(&reader),
            403,
        ),
        (
            "every queue's stats without admin",
            Call::new("GET", "/stats/"),
            Some(&reader),
            403,
        ),
        (
            "publish without publish",
            Call::new("POST", "/q/jobs/a").form("value=1"),
            Some(&reader),
            403,
        ),
        (
            "stream outside its patterns",
            Call::new("GET", "/sse/builds").stream(),
            Some(&reader),
            403,
        ),
        (
            "a websocket outside its patterns",
            Call::new("GET", "/ws/builds").websocket(),
            Some(&reader),
            403,
        ),
        (
            "anonymous",
            Call::new("POST", "/q/jobs/a").form("value=1"),
            None,
            401,
        ),
        (
            "an unknown token",
            Call::new("POST", "/q/jobs/a").form("value=1"),
            Some("Bearer rmq_forged"),
            401,
        ),
        (
            "a token as Basic",
            Call::new("GET", "/q/jobs/a"),
            Some(&token_as_basic),
            401,
        ),
        (
            "pop in its pattern",
            Call::new("GET", "/q/jobs/a"),
            Some(&reader),
            200,
        ),
        (
            "take by command",
            Call::new("POST", "/queue").json(r#"{"cmd":"take","queue":"jobs/a"}"#),
            Some(&reader),
            200,
        ),
        (
            "stream in its pattern",
            Call::new("GET", "/sse/jobs/a").stream(),
            Some(&reader),
            200,
        ),
        (
            "a websocket in its pattern",
            Call::new("GET", "/ws/jobs/a").websocket(),
            Some(&reader),
            101,
        ),
        (
            "admin purges",
            Call::new("DELETE", "/q/builds"),
            Some(&admin),
            200,
        ),
        ("admin lists", Call::new("GET", "/q/"), Some(&admin), 200),
    ];
    for (what, call, authorization, expected) in cases {
        let call = match authorization {
            Some(value) => call.header("authorization", value),
            None => call,
        };
        let before = stats().await;
        let reply = call.send(server.addr).await;
        assert_eq!(reply.status, expected, "{what}: {}", reply.body);
        if expected == 401 {
            let challenge = reply
                .headers
                .get("www-authenticate")
                .and_then(|v| v.to_str().ok());
            assert_eq!(challenge, Some(r#"Bearer realm="restmq""#), "{what}");
        }
        if expected >= 400 {
            let json: serde_json::Value = serde_json::from_str(&reply.body).expect("a JSON error");
            assert!(json["error"].is_string(), "{what}: {}", reply.body);
            assert_eq!(stats().await, before, "{what} changed the state");
        }
    }
    // The token as the `access_token` parameter, for clients (EventSource)
    // that cannot set headers; on the direct path and the router's.
    for call in [
        Call::new("GET", &format!("/sse/jobs/a?access_token={READER_TOKEN}")).stream(),
        Call::new("GET", &format!("/c/jobs/a?access_token={READER_TOKEN}"))
            .stream()
            .warm(),
        Call::new("GET", &format!("/q/jobs/a?access_token={READER_TOKEN}")),
    ] {
        let reply = call.send(server.addr).await;
        assert!(
            reply.status == 200 || reply.status == 204,
            "{}: {} {}",
            call.path,
            reply.status,
            reply.body
        );
    }
    let refused = Call::new("GET", &format!("/sse/builds?access_token={READER_TOKEN}"))
        .stream()
        .send(server.addr)
        .await;
    assert_eq!(refused.status, 403, "{}", refused.body);
}

/// `X-Forwarded-For` is believed only from a trusted proxy, and then only its
/// nearest untrusted address.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwarded_addresses_are_believed_from_trusted_proxies_only() {
    let rules = "[rest:producer]\nhosts_allow = 10.0.0.0/8\n";
    let publish = |forwarded: &str| {
        Call::new("POST", "/q/jobs")
            .form("value=1")
            .header("x-forwarded-for", forwarded)
    };
    let (untrusting, _file, _dir) = server(rules, None).await;
    assert_eq!(publish("10.1.1.1").send(untrusting.addr).await.status, 403);

    let (trusting, _file, _dir) = server(rules, Some("127.0.0.0/8")).await;
    assert_eq!(publish("10.1.1.1").send(trusting.addr).await.status, 200);
    // A client cannot pass itself off by prepending: the last untrusted hop counts.
    assert_eq!(
        publish("10.1.1.1, 192.168.1.5")
            .send(trusting.addr)
            .await
            .status,
        403
    );
    assert_eq!(
        publish("192.168.1.5, 10.1.1.1, 127.0.0.1")
            .send(trusting.addr)
            .await
            .status,
        200
    );
    // Without the header, the connection's own address (not allowed here).
    let direct = Call::new("POST", "/q/jobs")
        .form("value=1")
        .send(trusting.addr)
        .await;
    assert_eq!(direct.status, 403, "{}", direct.body);
    // The direct streaming path believes the same.
    let sse = Call::new("GET", "/sse/jobs")
        .stream()
        .header("x-forwarded-for", "10.1.1.1");
    assert_eq!(sse.send(trusting.addr).await.status, 200);
}

/// The file is read again when it changes; a broken file keeps the rules in
/// force, and a good one after it applies.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_rules_follow_the_file() {
    let (server, file, _dir) = server("[rest:producer]\nhosts_allow = all\n", None).await;
    let publish = Call::new("POST", "/q/jobs").form("value=1");
    assert_eq!(publish.send(server.addr).await.status, 200);
    std::fs::write(&file, "[rest:producer]\nusername = a\npassword = b\n").expect("write");
    eventually("the new rules to apply", || {
        let publish = publish.clone();
        async move { (publish.send(server.addr).await.status == 401).then_some(()) }
    })
    .await;
    let admitted = publish.clone().header("authorization", &basic("a", "b"));
    assert_eq!(admitted.send(server.addr).await.status, 200);
}

#[test]
fn a_broken_file_keeps_the_last_good_rules() {
    let dir = tempfile::tempdir().expect("a directory");
    let file = dir.path().join("acl.conf");
    std::fs::write(&file, "[rest:producer]\nhosts_allow = 10.\n").expect("write");
    let access = restmq::acl::Access::load(Some(&file), None).expect("loads");
    let good = access.rules();
    assert!(!good.is_open());
    assert!(!access.is_open(), "the flag follows the rules loaded");
    std::fs::write(&file, "[rest:producer]\nhosts_alow = all\n").expect("write");
    access.reload();
    assert_eq!(*access.rules(), *good, "a broken file changes nothing");
    std::fs::write(&file, "[rest:producer]\n").expect("write");
    access.reload();
    assert!(access.rules().is_open(), "a good file after it applies");
    assert!(access.is_open(), "the flag follows the rules reloaded");
    // A broken file at start is an error that names the line.
    std::fs::write(&file, "[rest:producer]\n\nbogus = 1\n").expect("write");
    let refused = restmq::acl::Access::load(Some(&file), None).expect_err("refused");
    assert!(refused.to_string().contains("line 3"), "{refused}");
}

/// `restmq token` prints a token and the section that admits it, holding only
/// its digest; pasted into the file, the token works.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_token_command_prints_a_working_section() {
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_restmq"))
        .args(["token", "ci", "--publish", "builds/*", "--consume", ""])
        .output()
        .expect("run restmq token");
    assert!(output.status.success());
    let text = String::from_utf8(output.stdout).expect("UTF-8");
    let token = text
        .lines()
        .find_map(|line| line.strip_prefix("# rmq_"))
        .map(|rest| format!("rmq_{rest}"))
        .expect("the token is printed");
    assert_eq!(token.len(), 4 + 64, "32 random bytes in hex");
    let section: String = text
        .lines()
        .filter(|line| !line.starts_with('#'))
        .map(|line| format!("{line}\n"))
        .collect();
    assert!(!section.contains(&token), "the file holds only the digest");
    let (server, _file, _dir) = server(&section, None).await;
    let publish = |queue: &str| {
        Call::new("POST", &format!("/q/{queue}"))
            .form("value=1")
            .header("authorization", &bearer(&token))
    };
    assert_eq!(publish("builds/1").send(server.addr).await.status, 200);
    assert_eq!(publish("other").send(server.addr).await.status, 403);
    let pop = Call::new("GET", "/q/builds/1").header("authorization", &bearer(&token));
    assert_eq!(pop.send(server.addr).await.status, 403, "no consume right");
}
