//! Every route of the original RestMQ contract, over real HTTP, with the exact
//! status codes, body shapes, trailing CRLFs and JSONP forms.

mod common;

use common::{Backend, TestServer, eventually};
use serde_json::json;

async fn post_answers_the_key_as_a_crlf_line(backend: Backend) {
    let Some(server) = TestServer::on(backend).await else {
        return;
    };
    let answer = server.post_form("/q/jobs", &[("value", "hello")]).await;
    assert_eq!(answer.status, 200);
    assert_eq!(answer.body, "jobs:1\r\n");
    assert!(
        answer.content_type.starts_with("text/html"),
        "{}",
        answer.content_type
    );
    assert_eq!(server.publish("jobs", "again").await, "jobs:2");
    // Numbering is per queue.
    assert_eq!(server.publish("other", "x").await, "other:1");
}

async fn msg_wins_over_value_and_whitespace_is_stripped(backend: Backend) {
    let Some(server) = TestServer::on(backend).await else {
        return;
    };
    let answer = server
        .post_form("/q/q", &[("value", "from value"), ("msg", "  from msg \n")])
        .await;
    assert_eq!(answer.body, "q:1\r\n");
    assert_eq!(
        server.pop("q").await,
        Some(("q:1".into(), "from msg".into()))
    );
    // An empty msg falls back to value, as `msg or value` did.
    server
        .post_form("/q/q", &[("msg", ""), ("value", "v")])
        .await;
    assert_eq!(server.pop("q").await, Some(("q:2".into(), "v".into())));
}

async fn values_are_opaque_strings(backend: Backend) {
    let Some(server) = TestServer::on(backend).await else {
        return;
    };
    for value in [
        "42",
        "1.5e3",
        "{\"a\": [1, 2]}",
        "true",
        "null",
        "a&b=c+d%",
        "é ✓ 😀",
    ] {
        server.publish("v", value).await;
        let answer = server.get("/q/v").await;
        assert_eq!(answer.json()["value"], json!(value), "{value}");
    }
}

async fn pop_is_fifo_and_answers_204_when_empty(backend: Backend) {
    let Some(server) = TestServer::on(backend).await else {
        return;
    };
    for i in 1..=5 {
        server.publish("fifo", &format!("m{i}")).await;
    }
    let answer = server.get("/q/fifo").await;
    assert_eq!(answer.status, 200);
    assert_eq!(
        answer.body,
        "{\"key\":\"fifo:1\",\"value\":\"m1\",\"count\":0}\r\n"
    );
    for i in 2..=5 {
        assert_eq!(
            server.pop("fifo").await,
            Some((format!("fifo:{i}"), format!("m{i}")))
        );
    }
    let empty = server.get("/q/fifo").await;
    assert_eq!((empty.status, empty.body.as_str()), (204, ""));
    // A queue that never existed is just empty.
    assert_eq!(server.get("/q/never").await.status, 204);
}

async fn jsonp_wraps_answers_of_q(backend: Backend) {
    let Some(server) = TestServer::on(backend).await else {
        return;
    };
    let answer = server
        .post_form("/q/cbq?callback=app.got", &[("value", "x")])
        .await;
    assert_eq!(answer.body, "app.got(\"cbq:1\");\r\n");
    assert_eq!(answer.content_type, "application/javascript");
    let answer = server.get("/q/cbq?callback=cb").await;
    assert_eq!(
        answer.body,
        "cb({\"key\":\"cbq:1\",\"value\":\"x\",\"count\":0});\r\n"
    );
    server.publish("cbq", "y").await;
    let answer = server.delete("/q/cbq?callback=cb").await;
    assert_eq!(answer.body, "cb({\"queue\":\"cbq\",\"status\":1});\r\n");
}

async fn a_hostile_callback_is_refused_and_changes_nothing(backend: Backend) {
    let Some(server) = TestServer::on(backend).await else {
        return;
    };
    for callback in ["alert(1)", "a-b", "1x", "a..b", "<script>"] {
        let path = format!("/q/safe?callback={}", urlencode(callback));
        let answer = server.post_form(&path, &[("value", "x")]).await;
        assert_eq!(answer.status, 400, "{callback}");
        assert!(
            answer.json()["error"]
                .as_str()
                .unwrap_or("")
                .contains("callback")
        );
    }
    assert_eq!(server.get("/stats/safe").await.json()["len"], 0);
    assert_eq!(server.publish("safe", "ok").await, "safe:1");
}

async fn index_routes_publish_pop_and_redirect(backend: Backend) {
    let Some(server) = TestServer::on(backend).await else {
        return;
    };
    let answer = server
        .post_form("/", &[("queue", "idx"), ("value", "a")])
        .await;
    assert_eq!((answer.status, answer.body.as_str()), (200, "idx:1\r\n"));
    // The original failed on msg alone; it obviously meant to accept it.
    let answer = server
        .post_form("/", &[("queue", "idx"), ("msg", "b")])
        .await;
    assert_eq!(answer.body, "idx:2\r\n");
    let answer = server.get("/?queue=idx").await;
    assert_eq!(
        answer.body,
        "{\"key\":\"idx:1\",\"value\":\"a\",\"count\":0}\r\n"
    );
    let answer = server.get("/?queue=idx&callback=f").await;
    assert_eq!(
        answer.body,
        "f({\"key\":\"idx:2\",\"value\":\"b\",\"count\":0});\r\n"
    );
    // Empty: 404 here, where /q/ answers 204.
    let answer = server.get("/?queue=idx").await;
    assert_eq!(answer.status, 404);
    assert_eq!(answer.json(), json!({"error": "queue is empty"}));

    let missing = server.post_form("/", &[("value", "a")]).await;
    assert_eq!(missing.status, 400);
    assert_eq!(missing.json(), json!({"error": "missing parameter: queue"}));

    let client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("client");
    let answer = client.get(server.url("/")).send().await.expect("GET /");
    assert_eq!(answer.status(), 302);
    assert_eq!(answer.headers()["location"], "/static/index.html");
    let page = server.get("/static/index.html").await;
    assert_eq!(page.status, 200);
    assert!(page.content_type.starts_with("text/html"));
    assert!(
        page.body.contains("/static/dashboard.js"),
        "the page loads its script"
    );
    let script = server.get("/static/dashboard.js").await;
    assert!(script.content_type.starts_with("text/javascript"));
    assert!(
        script.body.contains("/stats/"),
        "the dashboard reads /stats/"
    );
    assert_eq!(server.get("/static/nope.js").await.status, 404);
}

async fn delete_purges_keeps_the_queue_listed_and_the_numbering(backend: Backend) {
    let Some(server) = TestServer::on(backend).await else {
        return;
    };
    server.publish("p", "1").await;
    server.publish("p", "2").await;
    let answer = server.delete("/q/p").await;
    assert_eq!(
        (answer.status, answer.body.as_str()),
        (200, "{\"queue\":\"p\",\"status\":1}\r\n")
    );
    assert_eq!(server.get("/q/p").await.status, 204);
    let answer = server.delete("/q/p").await;
    assert_eq!(answer.body, "{\"queue\":\"p\",\"status\":0}\r\n");
    let stats = server.get("/stats/").await.json();
    assert_eq!(stats["queues"]["p"]["len"], 0);
    assert_eq!(server.publish("p", "3").await, "p:3");
    // Purging a queue that never existed is harmless.
    assert_eq!(
        server.delete("/q/ghost").await.body,
        "{\"queue\":\"ghost\",\"status\":0}\r\n"
    );
}

async fn queue_list_in_html_and_json(backend: Backend) {
    let Some(server) = TestServer::on(backend).await else {
        return;
    };
    for q in ["b", "a/b", "with space", "<x>"] {
        server.publish(&urlencode(q), "v").await;
    }
    let page = server.get("/q/").await;
    assert_eq!(page.status, 200);
    assert!(page.content_type.starts_with("text/html"));
    assert!(page.body.contains("href=\"/q/b\""), "{}", page.body);
    assert!(page.body.contains("href=\"/q/a/b\""));
    assert!(page.body.contains("href=\"/q/with%20space\""));
    assert!(page.body.contains("&lt;x&gt;") && !page.body.contains("<x>"));
    let answer = server
        .client
        .get(server.url("/q/"))
        .header("accept", "application/json")
        .send()
        .await
        .expect("GET /q/");
    let answer = common::Answer::read(Ok(answer)).await;
    assert_eq!(
        answer.json(),
        json!({"queues": ["<x>", "a/b", "b", "with space"], "count": 4})
    );
}

async fn policies_get_and_set(backend: Backend) {
    let Some(server) = TestServer::on(backend).await else {
        return;
    };
    let answer = server.get("/p/pol").await;
    assert_eq!(answer.json(), json!({"queue": "pol", "value": "unknown"}));
    assert!(answer.body.ends_with("\r\n"));
    let answer = server
        .post_form("/p/pol", &[("policy", "roundrobin")])
        .await;
    assert_eq!((answer.status, answer.body.as_str()), (200, "OK\r\n"));
    assert_eq!(server.get("/p/pol").await.json()["value"], "roundrobin");
    let answer = server.post_form("/p/pol", &[("policy", "sometimes")]).await;
    assert_eq!((answer.status, answer.body.as_str()), (200, "null\r\n"));
    assert_eq!(server.get("/p/pol").await.json()["value"], "roundrobin");
    let answer = server.post_form("/p/pol", &[("other", "x")]).await;
    assert_eq!(answer.status, 400);
    assert_eq!(answer.json(), json!({"error": "missing parameter: policy"}));
    let answer = server
        .post_form("/p/pol?callback=cb", &[("policy", "broadcast")])
        .await;
    assert_eq!(answer.body, "cb(\"OK\");\r\n");
    let answer = server.get("/p/pol?callback=cb").await;
    assert_eq!(
        answer.body,
        "cb({\"queue\":\"pol\",\"value\":\"broadcast\"});\r\n"
    );
    // Setting a policy does not list the queue: only a message does.
    assert_eq!(server.get("/stats/").await.json()["count"], 0);
}

async fn control_reads_and_sets_the_status(backend: Backend) {
    let Some(server) = TestServer::on(backend).await else {
        return;
    };
    let answer = server.get("/control/c").await;
    assert_eq!(answer.status, 200);
    assert_eq!(answer.content_type, "application/json");
    assert!(answer.body.ends_with("\r\n"));
    let json = answer.json();
    assert_eq!(json["queue"], "c");
    assert_eq!(json["status"], json!({"queue": "c", "status": null}));
    assert!(json["redis"].is_string());

    server.publish("c", "x").await;
    assert_eq!(server.get("/control/c").await.json()["status"]["status"], 1);
    let answer = server.post_form("/control/c", &[("status", "stop")]).await;
    assert_eq!(answer.body, "{\"stat\":{\"queue\":\"c\",\"status\":0}}\r\n");
    assert_eq!(server.get("/control/c").await.json()["status"]["status"], 0);
    let answer = server
        .post_form("/control/c?callback=cb", &[("status", "start")])
        .await;
    assert_eq!(
        answer.body,
        "cb({\"stat\":{\"queue\":\"c\",\"status\":1}})\r\n"
    );
    let answer = server.post_form("/control/c", &[("status", "pause")]).await;
    assert_eq!(answer.body, "{\"stat\":\"invalid status: pause\"}\r\n");
    assert_eq!(server.get("/control/c").await.json()["status"]["status"], 1);

    // GET /control ignores callback; the list covers every queue, and nothing else.
    server.publish("d", "x").await;
    server.post_form("/control/d", &[("status", "stop")]).await;
    let all = server.get("/control/?callback=cb").await;
    assert!(all.body.ends_with("\r\n"));
    let all = all.json();
    assert_eq!(all["count"], 2);
    assert_eq!(all["queues"]["c"], json!({"queue": "c", "status": 1}));
    assert_eq!(all["queues"]["d"], json!({"queue": "d", "status": 0}));
    assert_eq!(all["queues"].as_object().map(|m| m.len()), Some(2));
}

async fn a_queue_stopped_before_its_first_message_stays_stopped(backend: Backend) {
    let Some(server) = TestServer::on(backend).await else {
        return;
    };
    server
        .post_form("/control/early", &[("status", "stop")])
        .await;
    server.publish("early", "x").await;
    assert_eq!(
        server.get("/control/early").await.json()["status"]["status"],
        0
    );
}

async fn stats_of_all_queues_and_of_one(backend: Backend) {
    let Some(server) = TestServer::on(backend).await else {
        return;
    };
    server.publish("s1", "a").await;
    server.publish("s1", "b").await;
    server.publish("s2", "c").await;
    server.post_form("/p/s1", &[("policy", "roundrobin")]).await;
    server.post_form("/control/s2", &[("status", "stop")]).await;
    let answer = server.get("/stats/").await;
    assert_eq!(answer.content_type, "application/json");
    assert!(!answer.body.ends_with("\r\n"));
    let stats = answer.json();
    assert_eq!(stats["count"], 2);
    assert!(stats["redis"].is_string());
    assert_eq!(
        stats["queues"]["s1"],
        json!({"name": "s1", "len": 2, "status": 1, "policy": 2, "consumers": 0, "waiting": 0, "inflight": 0, "delayed": 0, "published": 2})
    );
    assert_eq!(
        stats["queues"]["s2"],
        json!({"name": "s2", "len": 1, "status": "", "policy": "", "consumers": 0, "waiting": 0, "inflight": 0, "delayed": 0, "published": 1})
    );
    let one = server.get("/stats/s1").await;
    assert_eq!(one.json()["len"], 2);
    assert_eq!(one.json()["queue"], "s1");
    assert_eq!(one.json()["published"], 2);
    assert_eq!(server.get("/stats/unknown").await.json()["len"], 0);
    assert_eq!(server.get("/stats/unknown").await.json()["published"], 0);

    let answer = server.get("/stats/s1?callback=cb").await;
    assert!(
        answer.body.starts_with("cb({") && answer.body.ends_with("})"),
        "{}",
        answer.body
    );
    let answer = server.get("/stats/?callback=cb").await;
    assert!(
        answer.body.starts_with("cb({") && answer.body.ends_with("})"),
        "{}",
        answer.body
    );
}

async fn job_view_lists_the_newest_messages_escaped(backend: Backend) {
    let Some(server) = TestServer::on(backend).await else {
        return;
    };
    for i in 1..=12 {
        server.publish("jv", &format!("job {i}")).await;
    }
    server.publish("jv", "<script>alert(1)</script>").await;
    server.pop("jv").await;
    let page = server.get("/j/jv").await;
    assert_eq!(page.status, 200);
    assert!(page.content_type.starts_with("text/html"));
    assert!(
        page.body.contains("<dd id=\"len\">12</dd>"),
        "{}",
        page.body
    );
    assert!(page.body.contains("<dd id=\"published\">13</dd>"));
    assert!(page.body.contains("&lt;script&gt;") && !page.body.contains("<script>alert"));
    assert!(page.body.contains("job 4") && !page.body.contains("job 3<"));
    assert_eq!(page.body.matches("<li>").count(), 10);
}

async fn ttl_expired_messages_are_never_delivered(backend: Backend) {
    let Some(server) = TestServer::on(backend).await else {
        return;
    };
    let short = server
        .post_form("/q/ttl", &[("value", "short"), ("ttl", "1")])
        .await;
    assert_eq!(short.body, "ttl:1\r\n");
    let long = server.publish("ttl", "long").await;
    // Peek (which does not consume) until the head is no longer the expiring message.
    let head = eventually("the ttl=1 message to expire", || async {
        let answer = server
            .post_form("/queue", &[("body", "{\"cmd\":\"get\",\"queue\":\"ttl\"}")])
            .await;
        let key = answer.json()["key"].as_str().map(str::to_owned)?;
        (key != "ttl:1").then_some(key)
    })
    .await;
    assert_eq!(head, long);
    assert_eq!(server.pop("ttl").await, Some((long, "long".into())));
    assert_eq!(server.pop("ttl").await, None);
}

async fn bad_publishes_get_400_and_change_nothing(backend: Backend) {
    let Some(server) = TestServer::on(backend).await else {
        return;
    };
    server.publish("bad", "first").await;
    type Case<'a> = (&'a str, &'a [(&'a str, &'a str)], &'a str);
    let cases: &[Case] = &[
        ("/q/bad", &[], "missing parameter: value"),
        ("/q/bad", &[("value", "")], "missing parameter: value"),
        ("/q/bad", &[("value", "   ")], "missing parameter: value"),
        (
            "/q/bad",
            &[("value", "x"), ("ttl", "-1")],
            "invalid parameter ttl",
        ),
        (
            "/q/bad",
            &[("value", "x"), ("ttl", "1.5")],
            "invalid parameter ttl",
        ),
        (
            "/q/bad",
            &[("value", "x"), ("ttl", "soon")],
            "invalid parameter ttl",
        ),
        (
            "/q/bad",
            &[("value", "x"), ("ttl", "99999999999999999999999")],
            "invalid parameter ttl",
        ),
        (
            "/q/bad",
            &[("value", "x"), ("callback", "x y")],
            "invalid callback",
        ),
    ];
    for (path, form, error) in cases {
        let answer = server.post_form(path, form).await;
        assert_eq!(answer.status, 400, "{form:?}");
        assert_eq!(answer.content_type, "application/json");
        let message = answer.json()["error"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        assert!(message.starts_with(error), "{form:?}: {message}");
    }
    assert_eq!(server.get("/stats/bad").await.json()["len"], 1);
    assert_eq!(server.publish("bad", "second").await, "bad:2");
}

async fn bad_queue_names_get_400(backend: Backend) {
    let Some(server) = TestServer::on(backend).await else {
        return;
    };
    let long = "x".repeat(257);
    let paths = [
        format!("/q/{long}"),
        "/q/a%0Ab".to_owned(),
        "/q/%07".to_owned(),
        "/q/%FF%FE".to_owned(),
        "/p/".to_owned(),
        "/j/".to_owned(),
        "/stats/a%00".to_owned(),
    ];
    for path in &paths {
        let answer = server.get(path).await;
        assert_eq!(answer.status, 400, "{path}: {}", answer.body);
        let error = answer.json()["error"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        assert!(error.starts_with("invalid queue name"), "{path}: {error}");
    }
    for path in [
        format!("/q/{long}"),
        "/q/".to_owned(),
        "/control/".to_owned(),
    ] {
        let answer = server
            .post_form(&path, &[("value", "x"), ("status", "stop")])
            .await;
        assert_eq!(answer.status, 400, "POST {path}");
    }
    let answer = server
        .post_form("/", &[("queue", "a\u{1}b"), ("value", "x")])
        .await;
    assert_eq!(answer.status, 400);
    // 256 bytes is fine, and so are slashes, colons and spaces.
    let ok = "y".repeat(256);
    assert_eq!(server.publish(&ok, "v").await, format!("{ok}:1"));
    assert_eq!(server.publish("a/b:c%20d", "v").await, "a/b:c d:1");
    assert_eq!(server.get("/stats/").await.json()["count"], 2);
}

async fn invalid_utf8_in_a_form_is_refused(backend: Backend) {
    let Some(server) = TestServer::on(backend).await else {
        return;
    };
    let answer = server
        .post_raw(
            "/q/utf",
            "application/x-www-form-urlencoded",
            "value=%FF%FE",
        )
        .await;
    assert_eq!(answer.status, 400);
    let answer = server.get("/q/utf?callback=%FF").await;
    assert_eq!(answer.status, 400);
    assert_eq!(server.get("/stats/utf").await.json()["len"], 0);
}

async fn oversized_bodies_get_413(backend: Backend) {
    let Some(server) = TestServer::configured(backend, |c| c.max_body = 1024).await else {
        return;
    };
    let big = format!("value={}", "x".repeat(2000));
    let answer = server
        .post_raw("/q/big", "application/x-www-form-urlencoded", big)
        .await;
    assert_eq!(answer.status, 413);
    assert_eq!(
        answer.json(),
        json!({"error": "request body is larger than the limit of 1024 bytes"})
    );
    let fits = format!("value={}", "x".repeat(1000));
    let answer = server
        .post_raw("/q/big", "application/x-www-form-urlencoded", fits)
        .await;
    assert_eq!(answer.status, 200);
    assert_eq!(server.get("/stats/big").await.json()["len"], 1);
}

async fn the_default_body_limit_is_one_mebibyte(backend: Backend) {
    let Some(server) = TestServer::on(backend).await else {
        return;
    };
    let over = format!("value={}", "x".repeat(1024 * 1024));
    let answer = server
        .post_raw("/q/big", "application/x-www-form-urlencoded", over)
        .await;
    assert_eq!(answer.status, 413);
    let under = format!("value={}", "x".repeat(1024 * 1024 - 100));
    let answer = server
        .post_raw("/q/big", "application/x-www-form-urlencoded", under)
        .await;
    assert_eq!(answer.status, 200);
}

async fn wrong_methods_get_405_and_unknown_routes_404_in_json(backend: Backend) {
    let Some(server) = TestServer::on(backend).await else {
        return;
    };
    let client = &server.client;
    let cases = [
        (reqwest::Method::PUT, "/q/x"),
        (reqwest::Method::PATCH, "/q/x"),
        (reqwest::Method::DELETE, "/"),
        (reqwest::Method::DELETE, "/stats/"),
        (reqwest::Method::POST, "/stats/x"),
        (reqwest::Method::PUT, "/queue"),
        (reqwest::Method::DELETE, "/p/x"),
        (reqwest::Method::POST, "/j/x"),
    ];
    for (method, path) in cases {
        let answer = common::Answer::read(
            client
                .request(method.clone(), server.url(path))
                .send()
                .await,
        )
        .await;
        assert_eq!(answer.status, 405, "{method} {path}");
        assert_eq!(answer.json(), json!({"error": "method not allowed"}));
    }
    for path in ["/nope", "/q", "/stats", "/static/"] {
        let answer = server.get(path).await;
        assert_eq!(answer.status, 404, "{path}");
        assert_eq!(answer.json(), json!({"error": "not found"}));
    }
    assert_eq!(server.get("/stats/").await.json()["count"], 0);
}

fn urlencode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' | b'/' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

conformance!(
    post_answers_the_key_as_a_crlf_line,
    msg_wins_over_value_and_whitespace_is_stripped,
    values_are_opaque_strings,
    pop_is_fifo_and_answers_204_when_empty,
    jsonp_wraps_answers_of_q,
    a_hostile_callback_is_refused_and_changes_nothing,
    index_routes_publish_pop_and_redirect,
    delete_purges_keeps_the_queue_listed_and_the_numbering,
    queue_list_in_html_and_json,
    policies_get_and_set,
    control_reads_and_sets_the_status,
    a_queue_stopped_before_its_first_message_stays_stopped,
    stats_of_all_queues_and_of_one,
    job_view_lists_the_newest_messages_escaped,
    ttl_expired_messages_are_never_delivered,
    bad_publishes_get_400_and_change_nothing,
    bad_queue_names_get_400,
    invalid_utf8_in_a_form_is_refused,
    oversized_bodies_get_413,
    the_default_body_limit_is_one_mebibyte,
    wrong_methods_get_405_and_unknown_routes_404_in_json,
);

/// The router alone, as `restmq::app` makes it, serving `config`'s store on a
/// free port: what restmq's own server answers without its direct routes.
struct RouterOnly {
    addr: std::net::SocketAddr,
    state: restmq::AppState,
    stop: tokio::sync::oneshot::Sender<()>,
    served: tokio::task::JoinHandle<()>,
}

impl RouterOnly {
    async fn start(config: &restmq::config::Config) -> RouterOnly {
        let state = restmq::open(config).await.expect("open the store");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("local address");
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let app = restmq::app(state.clone());
        let served = tokio::spawn(async move {
            axum::serve(listener, app)
                .with_graceful_shutdown(async move {
                    let _ = stopped.await;
                })
                .await
                .expect("the router serves");
        });
        RouterOnly {
            addr,
            state,
            stop,
            served,
        }
    }

    async fn stop(self) {
        let _ = self.stop.send(());
        self.served.await.expect("the router stops");
        self.state.broker.close().await.expect("close the store");
    }
}

/// A request by its method, target, header lines and body.
type Case<'a> = (&'a str, &'a [u8], &'a [&'a [u8]], &'a [u8]);

/// restmq's server answers `GET` and `POST` of `/q/<q>` without its router
/// (`http::direct`): every answer there, good or bad, must be the router's to
/// the byte (but the date and the headers' order), in the same order on two stores alike.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_direct_queue_routes_answer_exactly_as_the_router() {
    use common::raw;
    let direct_dir = tempfile::tempdir().expect("temporary directory");
    let router_dir = tempfile::tempdir().expect("temporary directory");
    let mut direct_config = restmq::config::Config::new(direct_dir.path());
    direct_config.max_body = 200;
    let mut router_config = direct_config.clone();
    router_config.data_dir = router_dir.path().to_path_buf();
    let direct = TestServer::start_with(direct_config, Some(direct_dir)).await;
    let router = RouterOnly::start(&router_config).await;

    let form: &[&[u8]] = &[b"content-type: application/x-www-form-urlencoded"];
    let ndjson: &[&[u8]] = &[b"content-type: application/x-ndjson"];
    let text: &[&[u8]] = &[b"content-type: text/plain"];
    let big = format!("value={}", "x".repeat(300));
    let cases: Vec<Case> = vec![
        ("GET", b"/q/jobs", &[], b""),
        ("POST", b"/q/jobs", form, b"value=one"),
        ("POST", b"/q/jobs", ndjson, b"two\nthree\n"),
        ("POST", b"/q/jobs?callback=cb", form, b"value=four&ttl=60"),
        ("POST", b"/q/jobs", text, b"five"),
        ("POST", b"/q/%6Aobs", form, b"msg=six"),
        ("GET", b"/q/jobs", &[], b""),
        ("GET", b"/q/jobs?max=2", &[], b""),
        ("GET", b"/q/jobs?callback=cb", &[], b""),
        ("GET", b"/q/%6Aobs", &[], b""),
        ("GET", b"/q/jobs?max=0", &[], b""),
        ("GET", b"/q/jobs?max=%FF", &[], b""),
        ("GET", b"/q/jobs?wait=999999999", &[], b""),
        ("GET", b"/q/%FF", &[], b""),
        ("GET", b"/q/%zz", &[], b""),
        ("GET", b"/q/a%2Fb", &[], b""),
        ("POST", b"/q/a/b", form, b"value=nested"),
        ("GET", b"/q/a/b", &[], b""),
        ("GET", b"/q/bad%20name", &[], b""),
        ("POST", b"/q/bad%20name", form, b"value=x"),
        ("POST", b"/q/%FF", form, b"value=x"),
        ("POST", b"/q/jobs", form, big.as_bytes()),
        ("POST", b"/q/jobs", form, b"other=x"),
        ("POST", b"/q/jobs", text, b"\xff\xfe"),
        ("GET", b"/q/", &[], b""),
        ("HEAD", b"/q/jobs", &[], b""),
        ("PUT", b"/q/jobs", form, b"value=x"),
        ("DELETE", b"/q/jobs", &[], b""),
        ("GET", b"/q/jobs", &[], b""),
    ];
    for (method, target, headers, body) in cases {
        let request = raw::request(method, target, headers, body);
        let head = method == "HEAD";
        let ours = raw::exchange(direct.addr, &request, head).await;
        let routed = raw::exchange(router.addr, &request, head).await;
        // Headers in any order (hyper writes a length it counts itself after
        // the others, one axum counted before them).
        let undated = |answer: &raw::RawAnswer| {
            let mut headers: Vec<_> = answer
                .headers
                .iter()
                .filter(|(name, _)| name != "date")
                .map(|(name, value)| format!("{name}: {}", String::from_utf8_lossy(value)))
                .collect();
            headers.sort();
            (answer.status, headers, answer.text())
        };
        assert_eq!(
            undated(&ours),
            undated(&routed),
            "{method} {}",
            String::from_utf8_lossy(target)
        );
    }
    router.stop().await;
    direct.stop().await;
}
