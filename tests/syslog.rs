//! The syslog door end to end: util-linux `logger` and raw sockets send over
//! TCP and UDP, and each message is read back over HTTP from the queue
//! `syslogd:<sender ip>` as JSON.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::{Backend, TestServer, eventually};
use restmq::config::Config;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream, UdpSocket};

const QUEUE: &str = "syslogd:127.0.0.1";

async fn server_with(tweak: impl FnOnce(&mut Config)) -> TestServer {
    TestServer::configured(Backend::Embedded, |config| {
        config.doors.syslog = Some(0);
        tweak(config);
    })
    .await
    .expect("an embedded server")
}

fn door(server: &TestServer) -> SocketAddr {
    server.doors.syslog.expect("the syslog door is on")
}

/// Pops the head of `queue` over HTTP, parsed as JSON.
async fn pop(server: &TestServer, queue: &str) -> Option<Value> {
    let (_, value) = server.pop(queue).await?;
    Some(serde_json::from_str(&value).unwrap_or_else(|e| panic!("not JSON ({e}): {value}")))
}

/// The next message of `queue`, waiting for it.
async fn next(server: &TestServer, queue: &str) -> Value {
    eventually(&format!("a message in {queue}"), || pop(server, queue)).await
}

/// Messages waiting in `queue`.
async fn len(server: &TestServer, queue: &str) -> u64 {
    server.get(&format!("/stats/{queue}")).await.json()["len"]
        .as_u64()
        .expect("a length")
}

fn now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("after 1970")
        .as_secs_f64()
}

/// Checks the fields every record has, for a message that arrived just now.
fn check_arrival(record: &Value) {
    assert_eq!(record["sender"], "127.0.0.1", "{record}");
    let tstamp = record["tstamp"].as_f64().expect("tstamp is a number");
    assert!((now() - tstamp).abs() < 120.0, "{record}");
    let received = record["received"].as_str().expect("received is text");
    assert!(
        received.len() == 24 && received.ends_with('Z') && received.as_bytes()[10] == b'T',
        "{record}"
    );
}

/// Whether util-linux `logger` can be run; when not, the test skips (or
/// fails, under CI).
fn have_logger() -> bool {
    match std::process::Command::new("logger")
        .arg("--version")
        .output()
    {
        Ok(output) if output.status.success() => true,
        Ok(_) | Err(_) => {
            assert!(
                std::env::var_os("CI").is_none(),
                "util-linux logger is missing, and CI is set: the syslog tests must run"
            );
            eprintln!("skipping: util-linux logger is not installed");
            false
        }
    }
}

/// Sends `message` with `logger` to the door, with `flags` added.
async fn logger(port: u16, flags: &[&str], message: &str) {
    let mut command = std::process::Command::new("logger");
    command
        .args(["--server", "127.0.0.1", "--port", &port.to_string()])
        .args(flags)
        .args(["-p", "local3.warning", "-t", "myapp", message]);
    let output = tokio::task::spawn_blocking(move || command.output())
        .await
        .expect("the logger runner")
        .expect("logger runs");
    assert!(
        output.status.success(),
        "logger {flags:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

/// This machine's host name, as `logger` writes it (up to the first dot).
fn short_hostname() -> String {
    let name = std::fs::read_to_string("/proc/sys/kernel/hostname").expect("a host name");
    name.trim().split('.').next().unwrap_or("").to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logger_over_tcp_and_udp() {
    if !have_logger() {
        return;
    }
    let server = server_with(|_| {}).await;
    let port = door(&server).port();
    let host = short_hostname();
    let variants: [&[&str]; 6] = [
        &["--tcp", "--rfc5424", "--id=4242", "--msgid", "M1"],
        &["--tcp", "--rfc3164", "--id=4242"],
        &["--udp", "--rfc5424"],
        &["--udp", "--rfc3164"],
        &["--tcp", "--octet-count"],
        &["--tcp", "--rfc3164", "--octet-count"],
    ];
    for (i, flags) in variants.iter().enumerate() {
        let message = format!("hello from logger, variant {i}");
        logger(port, flags, &message).await;
        let record = next(&server, QUEUE).await;
        let context = format!("{flags:?}: {record}");
        check_arrival(&record);
        assert_eq!(record["facility"], "local3", "{context}");
        assert_eq!(record["severity"], "warning", "{context}");
        assert_eq!(record["app"], "myapp", "{context}");
        assert_eq!(record["message"], message, "{context}");
        let line = record["line"].as_str().expect("line");
        assert!(
            line.starts_with("<156>") && line.ends_with(&message),
            "{context}"
        );
        let sent_host = record["host"].as_str().expect("a host");
        assert!(
            sent_host == host || sent_host.starts_with(&format!("{host}.")),
            "{context}"
        );
        let timestamp = record["timestamp"].as_str().expect("a timestamp");
        if flags.contains(&"--rfc3164") {
            assert_eq!(record["format"], "rfc3164", "{context}");
            assert_eq!(timestamp.len(), 15, "{context}");
            assert_eq!(record["msgid"], Value::Null, "{context}");
        } else {
            assert_eq!(record["format"], "rfc5424", "{context}");
            assert!(
                timestamp.starts_with("20") && timestamp.contains('T'),
                "{context}"
            );
            let sd = record["structured_data"].as_str().expect("structured data");
            assert!(sd.starts_with("[timeQuality "), "{context}");
        }
        if flags.contains(&"--id=4242") {
            assert_eq!(record["pid"], "4242", "{context}");
        }
        if flags.contains(&"--msgid") {
            assert_eq!(record["msgid"], "M1", "{context}");
        }
    }
    assert_eq!(pop(&server, QUEUE).await, None);
}

/// `message` with its RFC 6587 octet count before it.
fn counted(message: &str) -> String {
    format!("{} {message}", message.len())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn raw_messages_over_tcp() {
    let server = server_with(|_| {}).await;
    let mut stream = TcpStream::connect(door(&server)).await.expect("connect");
    let mut sent = Vec::new();
    sent.extend_from_slice(
        b"<165>1 2003-10-11T22:14:15.003Z mymachine.example.com evntslog - ID47 \
          [exampleSDID@32473 iut=\"3\" eventSource=\"Application\"] An application event\n",
    );
    sent.extend_from_slice(b"<13>Feb  5 17:32:18 10.0.0.99 sshd[4321]: Accepted key\r\n");
    sent.extend_from_slice(b"no pri at all\n");
    sent.extend_from_slice(b"\xff\xfe\x00\x01 binary\x00\n\n\n");
    sent.extend_from_slice(counted("<14>1 - - - - - - counted\nwith a line feed").as_bytes());
    sent.extend_from_slice(b"<14>last, without a line end");
    stream.write_all(&sent).await.expect("send");
    stream.shutdown().await.expect("close for writing");

    let r = next(&server, QUEUE).await;
    check_arrival(&r);
    assert_eq!(r["format"], "rfc5424");
    assert_eq!(
        (&r["facility"], &r["severity"]),
        (&json!("local4"), &json!("notice"))
    );
    assert_eq!(r["timestamp"], "2003-10-11T22:14:15.003Z");
    assert_eq!(r["host"], "mymachine.example.com");
    assert_eq!(r["app"], "evntslog");
    assert_eq!(r["pid"], Value::Null);
    assert_eq!(r["msgid"], "ID47");
    assert_eq!(
        r["structured_data"],
        "[exampleSDID@32473 iut=\"3\" eventSource=\"Application\"]"
    );
    assert_eq!(r["message"], "An application event");

    let r = next(&server, QUEUE).await;
    assert_eq!(r["format"], "rfc3164");
    assert_eq!(
        (&r["facility"], &r["severity"]),
        (&json!("user"), &json!("notice"))
    );
    assert_eq!(r["timestamp"], "Feb  5 17:32:18");
    assert_eq!(r["host"], "10.0.0.99");
    assert_eq!((&r["app"], &r["pid"]), (&json!("sshd"), &json!("4321")));
    assert_eq!(r["message"], "Accepted key");
    assert_eq!(
        r["line"],
        "<13>Feb  5 17:32:18 10.0.0.99 sshd[4321]: Accepted key"
    );

    let r = next(&server, QUEUE).await;
    assert_eq!(r["format"], "unknown");
    assert_eq!(
        (&r["facility"], &r["severity"]),
        (&Value::Null, &Value::Null)
    );
    assert_eq!(
        (&r["host"], &r["app"], &r["timestamp"]),
        (&Value::Null, &Value::Null, &Value::Null)
    );
    assert_eq!(r["message"], "no pri at all");
    assert_eq!(r["line"], "no pri at all");
    check_arrival(&r);

    // Invalid UTF-8 replaced, NUL and control characters kept inside (JSON
    // escapes them), the trailing NUL and the blank lines dropped.
    let r = next(&server, QUEUE).await;
    assert_eq!(r["line"], "\u{fffd}\u{fffd}\u{0}\u{1} binary");
    assert_eq!(r["format"], "unknown");

    let r = next(&server, QUEUE).await;
    assert_eq!(r["format"], "rfc5424");
    assert_eq!(r["message"], "counted\nwith a line feed");

    let r = next(&server, QUEUE).await;
    assert_eq!(r["format"], "rfc3164");
    assert_eq!(r["message"], "last, without a line end");
    assert_eq!(r.get("truncated"), None);

    assert_eq!(pop(&server, QUEUE).await, None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn raw_messages_over_udp() {
    let server = server_with(|_| {}).await;
    let socket = UdpSocket::bind("127.0.0.1:0").await.expect("a UDP socket");
    socket.connect(door(&server)).await.expect("connect");
    for datagram in [
        &b"<34>1 2026-01-01T00:00:00Z h app 77 - - udp 5424\n"[..],
        b"<13>Nov  1 00:00:00 h tag: udp 3164",
        b"plain udp\r\n\x00",
        b"\n",
        b"<7>last",
    ] {
        socket.send(datagram).await.expect("send");
    }
    let r = next(&server, QUEUE).await;
    check_arrival(&r);
    assert_eq!(r["format"], "rfc5424");
    assert_eq!(
        (&r["facility"], &r["severity"]),
        (&json!("auth"), &json!("crit"))
    );
    assert_eq!(
        (&r["host"], &r["app"], &r["pid"]),
        (&json!("h"), &json!("app"), &json!("77"))
    );
    assert_eq!(r["message"], "udp 5424");
    assert_eq!(
        r["line"],
        "<34>1 2026-01-01T00:00:00Z h app 77 - - udp 5424"
    );

    let r = next(&server, QUEUE).await;
    assert_eq!(r["format"], "rfc3164");
    assert_eq!((&r["host"], &r["app"]), (&json!("h"), &json!("tag")));
    assert_eq!(r["message"], "udp 3164");

    let r = next(&server, QUEUE).await;
    assert_eq!(r["line"], "plain udp");
    assert_eq!(r["format"], "unknown");

    // The blank datagram carried nothing.
    let r = next(&server, QUEUE).await;
    assert_eq!(r["line"], "<7>last");
    assert_eq!(
        (&r["facility"], &r["severity"]),
        (&json!("kern"), &json!("debug"))
    );
    assert_eq!(pop(&server, QUEUE).await, None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn too_long_messages_are_cut_to_max_body() {
    let server = server_with(|config| config.max_body = 64).await;
    let long = format!("<14>{}", "a".repeat(196));
    let mut stream = TcpStream::connect(door(&server)).await.expect("connect");
    let sent = format!(
        "{long}\n<14>short\n{}<14>after\n",
        counted(&format!("<14>{}", "b".repeat(96)))
    );
    stream.write_all(sent.as_bytes()).await.expect("send");
    let cut = |r: &Value, fill: char| {
        assert_eq!(r["truncated"], true, "{r}");
        assert_eq!(r["line"], format!("<14>{}", fill.to_string().repeat(60)));
    };
    cut(&next(&server, QUEUE).await, 'a');
    let r = next(&server, QUEUE).await;
    assert_eq!(
        (&r["line"], r.get("truncated")),
        (&json!("<14>short"), None)
    );
    cut(&next(&server, QUEUE).await, 'b');
    assert_eq!(next(&server, QUEUE).await["line"], "<14>after");

    let socket = UdpSocket::bind("127.0.0.1:0").await.expect("a UDP socket");
    socket
        .send_to(long.as_bytes(), door(&server))
        .await
        .expect("send");
    cut(&next(&server, QUEUE).await, 'a');
    assert_eq!(pop(&server, QUEUE).await, None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_connections_close_at_shutdown() {
    let server = server_with(|_| {}).await;
    let mut stream = TcpStream::connect(door(&server)).await.expect("connect");
    stream.write_all(b"<14>ping\n").await.expect("send");
    assert_eq!(next(&server, QUEUE).await["message"], "ping");
    // The connection is idle now; shutdown closes it, well before the grace
    // period would have run out.
    let stopping = tokio::spawn(server.stop());
    let mut rest = Vec::new();
    let closed = tokio::time::timeout(
        restmq::server::SHUTDOWN_GRACE - Duration::from_secs(1),
        stream.read_to_end(&mut rest),
    )
    .await;
    assert!(
        matches!(closed, Ok(Ok(0))),
        "the connection was not closed at shutdown: {closed:?}"
    );
    stopping.await.expect("the server stops");
}

/// Sends `line` over TCP from `from`, and waits until the server has read
/// it all and closed: by then it has published it, or dropped it.
async fn send_from(from: &str, to: SocketAddr, line: &str) {
    let socket = TcpSocket::new_v4().expect("a socket");
    socket
        .bind(format!("{from}:0").parse().expect("an address"))
        .expect("bind");
    let mut stream = socket.connect(to).await.expect("connect");
    stream.write_all(line.as_bytes()).await.expect("send");
    stream.shutdown().await.expect("close for writing");
    let mut rest = Vec::new();
    tokio::time::timeout(common::DEADLINE, stream.read_to_end(&mut rest))
        .await
        .expect("the server closes in time")
        .expect("a clean close");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn access_rules_drop_refused_senders() {
    let rules = tempfile::tempdir().expect("a directory");
    let file = rules.path().join("acl.conf");
    std::fs::write(
        &file,
        "[rest:producer]\nhosts_allow = 127.0.0.2\nhosts_deny = all\n",
    )
    .expect("write the rules");
    let server = server_with(|config| config.acl = Some(file.clone())).await;
    let to = door(&server);

    send_from("127.0.0.1", to, "<14>refused over tcp\n").await;
    assert_eq!(len(&server, QUEUE).await, 0);
    send_from("127.0.0.2", to, "<14>allowed over tcp\n").await;
    let r = pop(&server, "syslogd:127.0.0.2")
        .await
        .expect("published before the connection closed");
    assert_eq!(
        (&r["message"], &r["sender"]),
        (&json!("allowed over tcp"), &json!("127.0.0.2"))
    );

    // One socket reads datagrams in order: once the allowed one is in, the
    // refused one, sent before it, was dropped.
    let refused = UdpSocket::bind("127.0.0.1:0").await.expect("a UDP socket");
    let allowed = UdpSocket::bind("127.0.0.2:0").await.expect("a UDP socket");
    refused
        .send_to(b"<14>refused over udp", to)
        .await
        .expect("send");
    allowed
        .send_to(b"<14>allowed over udp", to)
        .await
        .expect("send");
    let r = next(&server, "syslogd:127.0.0.2").await;
    assert_eq!(r["message"], "allowed over udp");
    assert_eq!(len(&server, QUEUE).await, 0);
    let listed = server.get("/stats/").await.json();
    assert_eq!(
        listed["count"], 1,
        "only 127.0.0.2's queue exists: {listed}"
    );
    drop(rules);
}
