//! The dashboard (`/ui`, `/static/index.html`) in a real browser: headless
//! Chromium, driven by `tests/dashboard/dashboard.mjs` (playwright-core),
//! publishes through the page, sees the message in the live tail, pauses and
//! resumes, switches the policy and purges; then the server's state is checked
//! here. Once open, once with an ACL whose token is typed into the page, and
//! once with an ACL of HTTP Basic credentials, which the browser presents.
//!
//! Needs `node`, `/usr/bin/chromium` and `npm ci --prefix tests/dashboard`
//! (`.ci/run` installs them). Without them the browser tests are skipped with a
//! notice, unless `CI` is set: then they fail.

mod common;

use std::path::{Path, PathBuf};

use base64::Engine as _;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use common::{Streaming, TestServer};
use restmq::config::Config;

/// The longest the browser script may run.
const SCRIPT_DEADLINE: Duration = Duration::from_secs(90);

const TOKEN: &str = "rmq_dashboard_test_token";

fn script_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/dashboard")
}

fn chromium() -> PathBuf {
    std::env::var_os("CHROMIUM").map_or_else(|| PathBuf::from("/usr/bin/chromium"), PathBuf::from)
}

/// What the browser test needs and is missing, if anything.
fn missing() -> Option<String> {
    let node = Command::new("node")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
    if !node.is_ok_and(|status| status.success()) {
        return Some("node is not installed".into());
    }
    if !chromium().exists() {
        return Some(format!("{} is not installed", chromium().display()));
    }
    if !script_dir().join("node_modules/playwright-core").is_dir() {
        return Some("playwright-core is not installed (npm ci --prefix tests/dashboard)".into());
    }
    None
}

/// Whether the browser test can run: `false` (after saying why) when
/// something is missing and `CI` is unset; under CI a missing piece fails.
fn browser_available() -> bool {
    let Some(what) = missing() else {
        return true;
    };
    assert!(
        std::env::var_os("CI").is_none(),
        "{what}, and CI is set: .ci/run installs chromium, node and playwright-core"
    );
    eprintln!("skipping the dashboard browser test: {what}");
    false
}

/// Runs the browser script against `server`; panics with its output when it
/// fails. `vars` are added to its environment.
async fn run_script(server: &TestServer, screenshot: &Path, vars: Vec<(&'static str, String)>) {
    let mut command = Command::new("node");
    command
        .current_dir(script_dir())
        .arg("dashboard.mjs")
        .arg(server.url(""))
        .arg(screenshot)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (name, value) in vars {
        command.env(name, value);
    }
    let output = tokio::task::spawn_blocking(move || {
        let mut child = command.spawn().expect("start node");
        let started = Instant::now();
        loop {
            if child.try_wait().expect("wait for node").is_some() {
                break;
            }
            if started.elapsed() > SCRIPT_DEADLINE {
                let _ = child.kill();
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        child.wait_with_output().expect("the script's output")
    })
    .await
    .expect("join");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "the dashboard script failed ({}):\n{stderr}\n{stdout}",
        output.status
    );
    eprint!("{stdout}");
    assert!(
        screenshot.is_file(),
        "no screenshot at {}",
        screenshot.display()
    );
}

/// Publishes to a few queues until stopped, so the page has rates to draw
/// and a busy queue to tail. Bounded: at most a few thousand messages.
fn traffic(
    server: &TestServer,
    token: Option<&str>,
) -> (Arc<AtomicBool>, tokio::task::JoinHandle<()>) {
    let stop = Arc::new(AtomicBool::new(false));
    let client = server.client.clone();
    let base = server.url("");
    let auth = token.map(|t| format!("Bearer {t}"));
    let flag = stop.clone();
    let task = tokio::spawn(async move {
        for tick in 0u64..3000 {
            if flag.load(Ordering::Relaxed) {
                break;
            }
            // orders: a wave between 2 and 20 a second; emails: steady;
            // audit/log: a burst every few seconds.
            let wave = (tick as f64 / 40.0).sin().mul_add(9.0, 11.0) as u64;
            let mut targets = Vec::new();
            if tick % (20 / wave.max(1)).max(1) == 0 {
                targets.push((
                    "orders",
                    format!(
                        r#"{{"order":{},"total":"{}.90"}}"#,
                        1000 + tick,
                        10 + tick % 70
                    ),
                ));
            }
            if tick % 5 == 0 {
                targets.push(("emails", format!("welcome mail to user {}", tick / 5)));
            }
            if (tick / 20) % 4 == 0 && tick % 2 == 0 {
                targets.push(("audit/log", format!("login user={} ok", tick % 97)));
            }
            for (queue, value) in targets {
                let mut request = client
                    .post(format!("{base}/q/{queue}"))
                    .form(&[("value", value.as_str())]);
                if let Some(auth) = &auth {
                    request = request.header("authorization", auth);
                }
                let _ = request.send().await;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    });
    (stop, task)
}

/// Queues in other states for the table to show: one paused with messages
/// waiting, one roundrobin with a COMET consumer (the stream returned).
async fn scenery(server: &TestServer) -> Streaming {
    for i in 1..=4 {
        server.publish("reports", &format!("report {i}")).await;
    }
    let paused = server
        .post_form("/control/reports", &[("status", "stop")])
        .await;
    assert_eq!(paused.status, 200);
    server.publish("notifications", "hi").await;
    let policy = server
        .post_form("/p/notifications", &[("policy", "roundrobin")])
        .await;
    assert_eq!(policy.status, 200);
    Streaming::comet(server, "notifications").await
}

/// A server whose rules are `acl`; the rules' directory is kept with it.
async fn server_with_acl(acl: &str) -> (TestServer, tempfile::TempDir) {
    let rules = tempfile::tempdir().expect("a directory");
    let file = rules.path().join("acl.conf");
    std::fs::write(&file, acl).expect("write the rules");
    let data = tempfile::tempdir().expect("a directory");
    let mut config = Config::new(data.path());
    config.acl = Some(file);
    (TestServer::start_with(config, Some(data)).await, rules)
}

/// `CHROMIUM`, passed on when set.
fn chromium_var() -> Vec<(&'static str, String)> {
    std::env::var("CHROMIUM")
        .map(|value| vec![("CHROMIUM", value)])
        .unwrap_or_default()
}

/// The state the script leaves: the demo queue resumed and empty; after the
/// full flow, roundrobin and purged after three messages, after the short
/// one, its only message taken by the tail.
async fn check_state(server: &TestServer, auth: Option<&str>, full: bool) {
    let get = |path: &str| {
        let mut request = server.client.get(server.url(path));
        if let Some(auth) = auth {
            request = request.header("authorization", auth);
        }
        async move {
            let answer = request.send().await.expect("the server answers");
            assert_eq!(answer.status(), 200);
            let body = answer.text().await.expect("a body");
            serde_json::from_str::<serde_json::Value>(body.trim_end())
                .unwrap_or_else(|e| panic!("not JSON ({e}): {body}"))
        }
    };
    let control = get("/control/dash/demo").await;
    assert_eq!(control["status"]["status"], 1, "resumed: {control}");
    let policy = get("/p/dash/demo").await;
    let (policy_set, published) = if full {
        ("roundrobin", 3)
    } else {
        ("unknown", 1)
    };
    assert_eq!(policy["value"], policy_set, "{policy}");
    let stats = get("/stats/dash/demo").await;
    assert_eq!(stats["len"], 0, "purged or taken: {stats}");
    assert_eq!(
        stats["published"], published,
        "published through the page: {stats}"
    );
    assert_eq!(stats["consumers"], 0, "the tail closed: {stats}");
}

fn screenshot(name: &str) -> PathBuf {
    Path::new(env!("CARGO_TARGET_TMPDIR")).join(name)
}

/// The page and its assets are served, open, with the content security
/// policy that keeps it to its own scripts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_page_is_served_at_ui_and_static_index() {
    let server = TestServer::start().await;
    let ui = server.get("/ui").await;
    let index = server.get("/static/index.html").await;
    assert_eq!(ui.status, 200);
    assert_eq!(ui.body, index.body);
    assert!(ui.content_type.starts_with("text/html"));
    let policy = ui.headers["content-security-policy"]
        .to_str()
        .expect("ASCII");
    assert!(policy.contains("script-src 'self'"), "{policy}");
    assert!(
        !ui.body.contains("http://") && !ui.body.contains("https://"),
        "no CDN"
    );
    for (asset, kind) in [
        ("dashboard.js", "text/javascript"),
        ("dashboard.css", "text/css"),
        ("favicon.svg", "image/svg+xml"),
    ] {
        let answer = server.get(&format!("/static/{asset}")).await;
        assert_eq!(answer.status, 200, "{asset}");
        assert!(
            answer.content_type.starts_with(kind),
            "{asset}: {}",
            answer.content_type
        );
        assert!(
            !answer.body.contains("https://"),
            "{asset} loads nothing from elsewhere"
        );
    }
    let script = server.get("/static/dashboard.js").await.body;
    assert!(
        !script.contains("innerHTML"),
        "data goes in as text, never as HTML"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_works_in_a_browser() {
    if !browser_available() {
        return;
    }
    let server = TestServer::start().await;
    let _consumer = scenery(&server).await;
    let (stop, task) = traffic(&server, None);
    let shot = screenshot("dashboard.png");
    let mut vars = vec![("DASHBOARD_TAIL", "orders".to_owned())];
    for name in ["DASHBOARD_SAMPLES", "DASHBOARD_SCHEME", "DASHBOARD_VERBOSE"] {
        if let Ok(value) = std::env::var(name) {
            vars.push((name, value));
        }
    }
    vars.extend(chromium_var());
    run_script(&server, &shot, vars).await;
    stop.store(true, Ordering::Relaxed);
    task.await.expect("the traffic stops");
    check_state(&server, None, true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_works_with_the_acl_on() {
    if !browser_available() {
        return;
    }
    let section =
        restmq::acl::token_section("dashboard", TOKEN, "*", "*", "*").expect("a valid section");
    let (server, _rules) = server_with_acl(&section).await;

    // The page is open; what it asks for is not, without the token.
    assert_eq!(server.get("/ui").await.status, 200);
    assert_eq!(server.get("/static/dashboard.js").await.status, 200);
    assert_eq!(server.get("/stats/").await.status, 401);

    let auth = format!("Bearer {TOKEN}");
    let odd = "<b>not bold</b>";
    let answer = server
        .client
        .post(server.url("/"))
        .header("authorization", &auth)
        .form(&[("queue", odd), ("value", "x")])
        .send()
        .await
        .expect("the server answers");
    assert_eq!(answer.status(), 200);

    let shot = screenshot("dashboard-acl.png");
    let mut vars = vec![
        ("DASHBOARD_FLOW", "short".to_owned()),
        ("DASHBOARD_TOKEN", TOKEN.to_owned()),
        ("DASHBOARD_ODD_QUEUE", odd.to_owned()),
    ];
    vars.extend(chromium_var());
    run_script(&server, &shot, vars).await;
    check_state(&server, Some(&auth), false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_works_with_http_basic() {
    if !browser_available() {
        return;
    }
    let (user, password) = ("operator", "op:secret");
    let section = |name: &str| format!("[{name}]\nusername = {user}\npassword = {password}\n");
    let acl = ["rest:producer", "rest:consumer", "comet:consumer"]
        .map(section)
        .join("\n");
    let (server, _rules) = server_with_acl(&acl).await;
    assert_eq!(server.get("/ui").await.status, 200);
    let refused = server.get("/stats/").await;
    assert_eq!(refused.status, 401);
    assert!(
        refused.headers["www-authenticate"]
            .to_str()
            .is_ok_and(|challenge| challenge.starts_with("Basic")),
        "the browser is asked for Basic credentials"
    );

    let shot = screenshot("dashboard-basic.png");
    let mut vars = vec![
        ("DASHBOARD_FLOW", "short".to_owned()),
        ("DASHBOARD_BASIC", format!("{user}:{password}")),
    ];
    vars.extend(chromium_var());
    run_script(&server, &shot, vars).await;
    let auth = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"))
    );
    check_state(&server, Some(&auth), false).await;
}
