//! collectd's `write_http` into `collectd_data` and `collectd_event`: payloads
//! as collectd sends them (both formats), bad ones refused without a trace,
//! the ACL, and a real collectd daemon posting to a real server.

mod common;

use common::{Backend, TestServer, eventually};
use serde_json::{Value, json};

/// What `write_http` sends with `Format Command` (collectd 5.12): PUTVAL lines,
/// the identifier quoted, CRLF-ended.
const PUTVAL: &str = "PUTVAL \"web1/load/load\" interval=10.000 1700000000.123:0.15:0.2:0.25\r\n\
PUTVAL \"web1/memory/memory-used\" interval=10.000 1700000000.123:1234567168\r\n\
PUTVAL \"web1/interface-eth0/if_octets\" interval=10.000 1700000000.123:U:987654\r\n";

/// What `write_http` sends with `Format JSON`.
const JSON_DATA: &str = r#"[{"values":[0.15,0.2,0.25],"dstypes":["gauge","gauge","gauge"],"dsnames":["shortterm","midterm","longterm"],"time":1700000000.123,"interval":10.000,"host":"web1","plugin":"load","plugin_instance":"","type":"load","type_instance":""}]"#;

/// What `NotificationExec` hands its program on stdin, posted with `curl -d`.
const NOTIFICATION: &str = "Severity: WARNING\nTime: 1700000000.500\nHost: web1\nPlugin: df\nPluginInstance: root\nType: df_complex\nTypeInstance: used\nDataSource: value\nCurrentValue: 9.500000e+09\nWarningMin: nan\nWarningMax: 8.000000e+09\nFailureMin: nan\nFailureMax: nan\n\nHost web1, plugin df (instance root) type df_complex (instance used): Data source \"value\" is currently 9500000000.000000. That is above the warning threshold of 8000000000.000000.\n";

/// A notification in collectd's JSON.
const JSON_EVENT: &str = r#"[{"time":1700000000.5,"severity":"FAILURE","message":"Host web1 is down","host":"web1","plugin":"ping","plugin_instance":"","type":"ping","type_instance":"10.0.0.1"}]"#;

async fn popped(server: &TestServer, queue: &str) -> Value {
    let (_, value) = server.pop(queue).await.expect("a message");
    serde_json::from_str(&value).expect("the message is JSON")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn putval_lines_are_queued_in_collectd_json_shape() {
    let server = TestServer::start().await;
    let answer = server
        .post_raw("/collectd/data", "text/plain", PUTVAL)
        .await;
    assert_eq!(answer.status, 200, "{}", answer.body);
    assert_eq!(answer.body, "collectd_data:1\r\n");
    let message = popped(&server, "collectd_data").await;
    assert_eq!(
        message,
        json!([
            {"host": "web1", "plugin": "load", "plugin_instance": "", "type": "load",
             "type_instance": "", "time": 1700000000.123, "interval": 10.0,
             "values": [0.15, 0.2, 0.25]},
            {"host": "web1", "plugin": "memory", "plugin_instance": "", "type": "memory",
             "type_instance": "used", "time": 1700000000.123, "interval": 10.0,
             "values": [1234567168u64]},
            {"host": "web1", "plugin": "interface", "plugin_instance": "eth0", "type": "if_octets",
             "type_instance": "", "time": 1700000000.123, "interval": 10.0,
             "values": [null, 987654]},
        ])
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_value_lists_are_queued_as_sent() {
    let server = TestServer::start().await;
    let answer = server
        .post_raw(
            "/collectd/data",
            "application/json; charset=utf-8",
            JSON_DATA,
        )
        .await;
    assert_eq!(answer.status, 200, "{}", answer.body);
    let (key, value) = server.pop("collectd_data").await.expect("a message");
    assert_eq!(key, "collectd_data:1");
    assert_eq!(value, JSON_DATA);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn notifications_are_queued_as_one_object() {
    let server = TestServer::start().await;
    // `curl -d @-` sends a form's Content-Type: the text is read all the same.
    let answer = server
        .post_raw(
            "/collectd/event",
            "application/x-www-form-urlencoded",
            NOTIFICATION,
        )
        .await;
    assert_eq!(answer.status, 200, "{}", answer.body);
    assert_eq!(answer.body, "collectd_event:1\r\n");
    let message = popped(&server, "collectd_event").await;
    assert_eq!(message[0]["severity"], "WARNING");
    assert_eq!(message[0]["time"], json!(1700000000.5));
    assert_eq!(message[0]["host"], "web1");
    assert_eq!(message[0]["plugin_instance"], "root");
    assert_eq!(message[0]["type_instance"], "used");
    assert_eq!(message[0]["data_source"], "value");
    assert_eq!(message[0]["warning_max"], "8.000000e+09");
    assert!(
        message[0]["message"]
            .as_str()
            .expect("a message")
            .starts_with("Host web1, plugin df (instance root)"),
        "{message}"
    );

    let answer = server
        .post_raw("/collectd/event", "application/json", JSON_EVENT)
        .await;
    assert_eq!(answer.status, 200, "{}", answer.body);
    let (_, value) = server.pop("collectd_event").await.expect("a message");
    assert_eq!(value, JSON_EVENT);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_answer_takes_a_jsonp_callback() {
    let server = TestServer::start().await;
    let answer = server
        .post_raw("/collectd/data?callback=got", "text/plain", PUTVAL)
        .await;
    assert_eq!(answer.status, 200);
    assert_eq!(answer.body, "got(\"collectd_data:1\");\r\n");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_payloads_are_refused_and_change_nothing() {
    let server = TestServer::start().await;
    let cases: [(&str, &str, &[u8], u16, &str); 11] = [
        (
            "/collectd/data",
            "text/plain",
            b"PUTVAL web1/load 1:1\r\n",
            400,
            "line 1",
        ),
        (
            "/collectd/data",
            "text/plain",
            b"PUTVAL \"a/b/c\" 1:1\r\nGETVAL a/b/c\r\n",
            400,
            "line 2",
        ),
        ("/collectd/data", "text/plain", b"", 400, "no PUTVAL line"),
        (
            "/collectd/data",
            "text/plain",
            b"PUTVAL a/b/c 1:\xff",
            400,
            "UTF-8",
        ),
        (
            "/collectd/data",
            "application/json",
            b"[{\"host\":\"h\"}]",
            400,
            "values",
        ),
        (
            "/collectd/data",
            "application/json",
            b"{",
            400,
            "invalid JSON",
        ),
        (
            "/collectd/data",
            "application/xml",
            b"<x/>",
            415,
            "application/xml",
        ),
        (
            "/collectd/data",
            "application/x-www-form-urlencoded",
            b"a=b",
            415,
            "text/plain",
        ),
        ("/collectd/event", "text/plain", b"", 400, "empty"),
        (
            "/collectd/event",
            "text/plain",
            b"Host: h\n\nno severity",
            400,
            "Severity",
        ),
        (
            "/collectd/event",
            "application/json",
            b"[{\"message\":\"m\"}]",
            400,
            "severity",
        ),
    ];
    for (path, content_type, body, status, says) in cases {
        let answer = server.post_raw(path, content_type, body.to_vec()).await;
        assert_eq!(
            answer.status, status,
            "{path} {content_type}: {}",
            answer.body
        );
        let error = answer.json()["error"]
            .as_str()
            .expect("a JSON error")
            .to_owned();
        assert!(
            error.contains(says),
            "{path}: {error:?} should say {says:?}"
        );
    }
    let answer = server
        .client
        .post(server.url("/collectd/data"))
        .body("PUTVAL a/b/c 1:1")
        .send()
        .await
        .expect("an answer");
    assert_eq!(answer.status(), 415, "no Content-Type");
    for queue in ["collectd_data", "collectd_event"] {
        let stats = server.get(&format!("/stats/{queue}")).await;
        assert_eq!(stats.status, 200);
        assert_eq!(stats.json()["published"], 0, "{queue}: {}", stats.body);
    }
    assert_eq!(server.get("/collectd/data").await.status, 405);
    assert_eq!(
        server
            .post_raw("/collectd/other", "text/plain", PUTVAL)
            .await
            .status,
        404
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_routes_answer_to_the_producer_rules() {
    let dir = tempfile::tempdir().expect("a directory");
    let acl = dir.path().join("acl.conf");
    std::fs::write(
        &acl,
        "[rest:producer]\nusername = collectd\npassword = weCh3ik0\n",
    )
    .expect("write the ACL");
    let mut config = restmq::config::Config::new(dir.path().join("data"));
    config.acl = Some(acl);
    let server = TestServer::start_with(config, Some(dir)).await;
    let url = server.url("/collectd/data");
    let refused = server
        .client
        .post(&url)
        .header("content-type", "text/plain")
        .body(PUTVAL)
        .send()
        .await
        .expect("an answer");
    assert_eq!(refused.status(), 401);
    let wrong = server
        .client
        .post(&url)
        .basic_auth("collectd", Some("nope"))
        .header("content-type", "text/plain")
        .body(PUTVAL)
        .send()
        .await
        .expect("an answer");
    assert_eq!(wrong.status(), 401);
    let stats = server.get("/stats/collectd_data").await;
    assert_eq!(stats.json()["published"], 0, "{}", stats.body);
    // The credentials collectd.conf's `User` and `Password` send.
    let let_in = server
        .client
        .post(&url)
        .basic_auth("collectd", Some("weCh3ik0"))
        .header("content-type", "text/plain")
        .body(PUTVAL)
        .send()
        .await
        .expect("an answer");
    assert_eq!(let_in.status(), 200);
    assert_eq!(
        server.pop("collectd_data").await.expect("a message").0,
        "collectd_data:1"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn collectd_payloads_reach_the_redis_store() {
    let Some(server) = TestServer::on(Backend::Redis).await else {
        return;
    };
    let answer = server
        .post_raw("/collectd/data", "text/plain", PUTVAL)
        .await;
    assert_eq!(answer.status, 200, "{}", answer.body);
    let message = popped(&server, "collectd_data").await;
    assert_eq!(message[2]["values"], json!([null, 987654]));
}

/// The collectd daemon, if installed (Debian's collectd-core; `.ci/run`
/// installs it).
fn collectd_binary() -> Option<std::path::PathBuf> {
    ["/usr/sbin/collectd", "/usr/bin/collectd"]
        .into_iter()
        .map(std::path::PathBuf::from)
        .find(|path| path.exists())
}

/// Stops the daemon when the test ends, however it ends.
struct Daemon(std::process::Child);

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_real_collectd_posts_both_formats() {
    let Some(collectd) = collectd_binary() else {
        assert!(
            std::env::var_os("CI").is_none(),
            "collectd is not installed, and CI is set: .ci/run installs collectd-core"
        );
        eprintln!("skipping: apt-get install collectd-core to run a real collectd");
        return;
    };
    let server = TestServer::start().await;
    let dir = tempfile::tempdir().expect("a directory");
    let plugins = ["/usr/lib/collectd", "/usr/lib64/collectd"]
        .into_iter()
        .find(|dir| std::path::Path::new(dir).join("write_http.so").exists())
        .expect("collectd's write_http plugin");
    // The original's way to queue notifications: NotificationExec hands each
    // to a script on stdin, which posts it with curl. collectd will not run
    // it as root, so it runs as nobody then, and must reach the script.
    let notify = dir.path().join("notify.sh");
    std::fs::write(
        &notify,
        format!(
            "#!/bin/sh\nexec curl -s -o /dev/null --data-binary @- http://{}/collectd/event\n",
            server.addr
        ),
    )
    .expect("write the notification script");
    use std::os::unix::fs::PermissionsExt;
    for (path, mode) in [(dir.path(), 0o755), (notify.as_path(), 0o755)] {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
            .expect("make the script reachable");
    }
    // SAFETY: geteuid has no preconditions and cannot fail.
    let user = if unsafe { libc::geteuid() } == 0 {
        "nobody".to_owned()
    } else {
        std::env::var("USER").unwrap_or_else(|_| "nobody".to_owned())
    };
    let conf = dir.path().join("collectd.conf");
    std::fs::write(
        &conf,
        format!(
            r#"Hostname "restmq-test"
FQDNLookup false
Interval 1
PluginDir "{plugins}"
BaseDir "{base}"
PIDFile "{base}/collectd.pid"
TypesDB "/usr/share/collectd/types.db"
LoadPlugin load
<LoadPlugin write_http>
  FlushInterval 1
</LoadPlugin>
<Plugin write_http>
  <Node "command">
    URL "http://{addr}/collectd/data"
    Format "Command"
  </Node>
  <Node "json">
    URL "http://{addr}/collectd/data"
    Format "JSON"
  </Node>
</Plugin>
LoadPlugin exec
<Plugin exec>
  NotificationExec "{user}" "{notify}"
</Plugin>
LoadPlugin threshold
<Plugin threshold>
  <Plugin "load">
    <Type "load">
      DataSource "shortterm"
      WarningMin 1000000
    </Type>
  </Plugin>
</Plugin>
"#,
            base = dir.path().display(),
            addr = server.addr,
            notify = notify.display(),
        ),
    )
    .expect("write collectd.conf");
    let _daemon = Daemon(
        std::process::Command::new(collectd)
            .arg("-f")
            .arg("-C")
            .arg(&conf)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("start collectd"),
    );
    // One message per POST; each node posts its own. collectd flushes
    // write_http's buffer on its own schedule, so wait for one of each.
    let seen = std::sync::Mutex::new((None, None));
    let (command, json) = eventually("a POST of each format from collectd", || {
        let (server, seen) = (&server, &seen);
        async move {
            while let Some((_, value)) = server.pop("collectd_data").await {
                let Ok(Value::Array(lists)) = serde_json::from_str::<Value>(&value) else {
                    panic!("not a JSON array: {value}");
                };
                let Some(load) = lists.iter().find(|list| list["plugin"] == "load") else {
                    continue;
                };
                let mut seen = seen.lock().expect("not poisoned");
                // Only Format JSON carries the data source names.
                if load.get("dsnames").is_some() {
                    seen.1 = Some(load.clone());
                } else {
                    seen.0 = Some(load.clone());
                }
            }
            match &*seen.lock().expect("not poisoned") {
                (Some(command), Some(json)) => Some((command.clone(), json.clone())),
                _ => None,
            }
        }
    })
    .await;
    for load in [command, json] {
        assert_eq!(load["host"], "restmq-test", "{load}");
        assert_eq!(load["type"], "load", "{load}");
        assert_eq!(load["values"].as_array().map(Vec::len), Some(3), "{load}");
        assert!(load["time"].as_f64().is_some_and(|t| t > 1.6e9), "{load}");
    }
    // The threshold (load below a million) warns on every reading.
    let event = eventually("a notification from collectd", || async {
        server.pop("collectd_event").await
    })
    .await;
    let event: Value = serde_json::from_str(&event.1).expect("JSON");
    assert_eq!(event[0]["severity"], "WARNING", "{event}");
    assert_eq!(event[0]["host"], "restmq-test", "{event}");
    assert_eq!(event[0]["plugin"], "load", "{event}");
    assert_eq!(event[0]["data_source"], "shortterm", "{event}");
    assert!(
        event[0]["message"]
            .as_str()
            .is_some_and(|m| m.contains("below the warning threshold")),
        "{event}"
    );
}
