//! The memcached door end to end: a raw TCP client checks every reply byte
//! for byte, then HTTP and the door see the same queues, the access rules
//! apply, connections close at shutdown, and a real client (pymemcache) works.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::{Backend, DEADLINE, TestServer};
use restmq::config::Config;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const VERSION: &str = env!("CARGO_PKG_VERSION");

/// A raw memcached connection.
struct Mc {
    stream: TcpStream,
}

impl Mc {
    async fn connect(addr: SocketAddr) -> Mc {
        Mc {
            stream: TcpStream::connect(addr)
                .await
                .expect("connect to memcached"),
        }
    }

    async fn send(&mut self, bytes: impl AsRef<[u8]>) {
        self.stream
            .write_all(bytes.as_ref())
            .await
            .expect("send to memcached");
    }

    /// Reads exactly as many bytes as `expected` holds and compares them.
    async fn expect(&mut self, expected: impl AsRef<[u8]>) {
        let expected = expected.as_ref();
        let mut got = vec![0u8; expected.len()];
        tokio::time::timeout(DEADLINE, self.stream.read_exact(&mut got))
            .await
            .unwrap_or_else(|_| {
                panic!(
                    "no reply within {DEADLINE:?}; expected {:?}",
                    String::from_utf8_lossy(expected)
                )
            })
            .unwrap_or_else(|e| {
                panic!(
                    "reading {:?} failed: {e}",
                    String::from_utf8_lossy(expected)
                )
            });
        assert_eq!(
            String::from_utf8_lossy(&got),
            String::from_utf8_lossy(expected)
        );
    }

    /// Sends `request` and checks the reply.
    async fn ask(&mut self, request: impl AsRef<[u8]>, reply: impl AsRef<[u8]>) {
        self.send(request).await;
        self.expect(reply).await;
    }

    /// Reads lines up to `END`, the lines before it returned.
    async fn lines_to_end(&mut self) -> Vec<String> {
        let mut text = Vec::new();
        let mut byte = [0u8; 1];
        while !text.ends_with(b"END\r\n") {
            tokio::time::timeout(DEADLINE, self.stream.read_exact(&mut byte))
                .await
                .expect("a reply in time")
                .expect("a reply");
            text.push(byte[0]);
        }
        let text = String::from_utf8(text).expect("UTF-8 reply");
        let mut lines: Vec<String> = text.split("\r\n").map(str::to_owned).collect();
        lines.truncate(lines.len() - 2);
        lines
    }

    /// Asserts the server closes the connection without sending anything more.
    async fn closed(&mut self) {
        let mut rest = Vec::new();
        tokio::time::timeout(DEADLINE, self.stream.read_to_end(&mut rest))
            .await
            .expect("the server closes the connection in time")
            .expect("a clean close");
        assert_eq!(
            String::from_utf8_lossy(&rest),
            "",
            "nothing after the last reply"
        );
    }
}

async fn server_with(tweak: impl FnOnce(&mut Config)) -> TestServer {
    TestServer::configured(Backend::Embedded, |config| {
        config.doors.memcached = Some(0);
        tweak(config);
    })
    .await
    .expect("an embedded server")
}

fn door(server: &TestServer) -> SocketAddr {
    server.doors.memcached.expect("the memcached door is on")
}

/// Messages waiting in `queue`, read over HTTP.
async fn len(server: &TestServer, queue: &str) -> u64 {
    server.get(&format!("/stats/{queue}")).await.json()["len"]
        .as_u64()
        .expect("a length")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn storage_and_retrieval() {
    let server = server_with(|_| {}).await;
    let mut mc = Mc::connect(door(&server)).await;
    mc.ask("version\r\n", format!("VERSION {VERSION}\r\n"))
        .await;
    mc.ask("set jobs 0 0 5\r\nhello\r\n", "STORED\r\n").await;
    mc.ask("set jobs 7 60 6\r\nworld!\r\n", "STORED\r\n").await;
    mc.ask("add jobs 0 0 3\r\nabc\r\n", "STORED\r\n").await;
    // Kestrel's peek: the head, left in place; the key comes back as asked.
    mc.ask(
        "get jobs/peek\r\n",
        "VALUE jobs/peek 0 5\r\nhello\r\nEND\r\n",
    )
    .await;
    mc.ask("get jobs\r\n", "VALUE jobs 0 5\r\nhello\r\nEND\r\n")
        .await;
    // gets: the cas unique is the message's number.
    mc.ask("gets jobs\r\n", "VALUE jobs 0 6 2\r\nworld!\r\nEND\r\n")
        .await;
    // Several keys, one missing, one repeated: in order, the missing left out.
    mc.ask("set other 0 0 2\r\nhi\r\n", "STORED\r\n").await;
    mc.ask(
        "get jobs nothing other jobs\r\n",
        "VALUE jobs 0 3\r\nabc\r\nVALUE other 0 2\r\nhi\r\nEND\r\n",
    )
    .await;
    mc.ask("get jobs\r\n", "END\r\n").await;
    mc.ask("get jobs/peek\r\n", "END\r\n").await;
    // UTF-8 values: the length counts bytes.
    mc.ask("set u 0 0 6\r\nh\u{e9}llo\r\n", "STORED\r\n").await;
    mc.ask("get u\r\n", "VALUE u 0 6\r\nh\u{e9}llo\r\nEND\r\n")
        .await;
    // A value with CRLF inside it is carried whole.
    mc.ask("set crlf 0 0 4\r\na\r\nb\r\n", "STORED\r\n").await;
    mc.ask("get crlf\r\n", "VALUE crlf 0 4\r\na\r\nb\r\nEND\r\n")
        .await;
    // noreply: nothing comes back, the next reply is the next command's.
    mc.ask(
        "set quiet 0 0 1 noreply\r\nq\r\nget quiet\r\n",
        "VALUE quiet 0 1\r\nq\r\nEND\r\n",
    )
    .await;
    // delete purges.
    mc.ask(
        "set d 0 0 1\r\n1\r\nset d 0 0 1\r\n2\r\n",
        "STORED\r\nSTORED\r\n",
    )
    .await;
    mc.ask("delete d\r\n", "DELETED\r\n").await;
    mc.ask("delete d\r\n", "NOT_FOUND\r\n").await;
    mc.ask("delete never-used 0\r\n", "NOT_FOUND\r\n").await;
    mc.ask(
        "set d 0 0 1\r\n3\r\ndelete d noreply\r\nget d\r\n",
        "STORED\r\nEND\r\n",
    )
    .await;
    mc.ask("verbosity 1\r\n", "OK\r\n").await;
    mc.ask("quit\r\n", "").await;
    mc.closed().await;
    assert_eq!(len(&server, "jobs").await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_commands_are_answered_in_order() {
    let server = server_with(|_| {}).await;
    let mut mc = Mc::connect(door(&server)).await;
    mc.ask(
        "set p 0 0 1\r\n1\r\nset p 0 0 1\r\n2\r\nget p\r\nbogus\r\nget p p\r\ndelete p\r\nversion\r\n",
        format!(
            "STORED\r\nSTORED\r\nVALUE p 0 1\r\n1\r\nEND\r\nERROR\r\nVALUE p 0 1\r\n2\r\nEND\r\nNOT_FOUND\r\nVERSION {VERSION}\r\n"
        ),
    )
    .await;
    // A command split across packets, and a data block across three.
    mc.send("se").await;
    mc.send("t p 0 0 10\r").await;
    mc.send("\n01234").await;
    mc.send("56789\r").await;
    mc.ask(
        "\nget p\r\n",
        "STORED\r\nVALUE p 0 10\r\n0123456789\r\nEND\r\n",
    )
    .await;
    // A large value, arriving over many reads.
    let big = "x".repeat(300_000);
    mc.ask(
        format!("set big 0 0 {}\r\n{big}\r\n", big.len()),
        "STORED\r\n",
    )
    .await;
    mc.ask(
        "get big\r\n",
        format!("VALUE big 0 {}\r\n{big}\r\nEND\r\n", big.len()),
    )
    .await;
    // Bare LF line ends are accepted, as memcached does.
    mc.ask(
        "set p 0 0 1\nz\r\nget p\n",
        "STORED\r\nVALUE p 0 1\r\nz\r\nEND\r\n",
    )
    .await;
    // Many at once: each answered.
    let many: String = (0..200)
        .map(|i| format!("set m 0 0 {}\r\n{i}\r\n", i.to_string().len()))
        .collect();
    mc.ask(many, "STORED\r\n".repeat(200)).await;
    let gets: String = (0..200).map(|_| "get m\r\n").collect();
    let values: String = (0..200)
        .map(|i| format!("VALUE m 0 {}\r\n{i}\r\nEND\r\n", i.to_string().len()))
        .collect();
    mc.ask(gets, values).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_are_answered_and_change_nothing() {
    let server = server_with(|config| config.max_body = 16).await;
    let mut mc = Mc::connect(door(&server)).await;
    // Unknown commands and malformed lines.
    mc.ask("bogus a b\r\n", "ERROR\r\n").await;
    mc.ask("GET q\r\n", "ERROR\r\n").await;
    mc.ask("get\r\n", "ERROR\r\n").await;
    mc.ask("\r\n", "ERROR\r\n").await;
    mc.ask(
        "set q 0 0 x\r\n",
        "CLIENT_ERROR bad command line format\r\n",
    )
    .await;
    mc.ask("set q 0 0\r\n", "CLIENT_ERROR bad command line format\r\n")
        .await;
    mc.ask("set q 0 0 x noreply\r\nget q\r\n", "END\r\n").await;
    mc.ask(
        "delete q 5\r\n",
        "CLIENT_ERROR bad command line format.  Usage: delete <key> [noreply]\r\n",
    )
    .await;
    // Over --max-body: refused, and the data swallowed, even when it comes later.
    mc.ask(
        "set q 0 0 17\r\n01234567890123456\r\nget q\r\n",
        "SERVER_ERROR object too large for cache\r\nEND\r\n",
    )
    .await;
    mc.ask(
        "set q 0 0 40\r\n",
        "SERVER_ERROR object too large for cache\r\n",
    )
    .await;
    mc.send("0123456789").await;
    mc.send("012345678901234567890123456789\r").await;
    mc.ask("\nget q\r\n", "END\r\n").await;
    // Exactly --max-body is fine.
    mc.ask(
        "set q 0 0 16\r\n0123456789abcdef\r\nget q\r\n",
        "STORED\r\nVALUE q 0 16\r\n0123456789abcdef\r\nEND\r\n",
    )
    .await;
    // A data block not ended by CRLF.
    mc.ask(
        "set q 0 0 3\r\nabcXYget q\r\n",
        "CLIENT_ERROR bad data chunk\r\nEND\r\n",
    )
    .await;
    // Keys: too long, control characters, not UTF-8; the data is swallowed.
    let long = "k".repeat(251);
    mc.ask(
        format!("set {long} 0 0 1\r\nx\r\nget q\r\n"),
        "CLIENT_ERROR invalid key: longer than 250 bytes\r\nEND\r\n",
    )
    .await;
    mc.ask(
        format!("get {long}\r\n"),
        "CLIENT_ERROR invalid key: longer than 250 bytes\r\n",
    )
    .await;
    mc.ask(
        b"get a\x01b\r\n".as_slice(),
        "CLIENT_ERROR invalid key: it contains control characters\r\n",
    )
    .await;
    mc.ask(
        b"delete \xff\r\n".as_slice(),
        "CLIENT_ERROR invalid key: not UTF-8\r\n",
    )
    .await;
    // A bad key among good ones: nothing is taken.
    mc.ask("set q 0 0 1\r\nv\r\n", "STORED\r\n").await;
    mc.ask(
        b"get q \x7f\r\n".as_slice(),
        "CLIENT_ERROR invalid key: it contains control characters\r\n",
    )
    .await;
    assert_eq!(len(&server, "q").await, 1);
    mc.ask("get q\r\n", "VALUE q 0 1\r\nv\r\nEND\r\n").await;
    // Values: UTF-8 text, not empty; no expiry in the past.
    mc.ask(
        b"set q 0 0 2\r\n\xff\xfe\r\n".as_slice(),
        "CLIENT_ERROR the data must be UTF-8 text\r\n",
    )
    .await;
    mc.ask(
        "set q 0 0 0\r\n\r\n",
        "CLIENT_ERROR the data is empty: a message needs a value\r\n",
    )
    .await;
    let past = "CLIENT_ERROR exptime is in the past: the message would never be delivered\r\n";
    mc.ask("set q 0 -1 1\r\nx\r\n", past).await;
    mc.ask("set q 0 1000000000 1\r\nx\r\n", past).await;
    // What queues cannot do.
    for verb in ["replace", "append", "prepend"] {
        mc.ask(
            format!("{verb} q 0 0 1\r\nx\r\n"),
            format!(
                "CLIENT_ERROR {verb} is not supported: queue messages cannot be changed; set enqueues\r\n"
            ),
        )
        .await;
    }
    mc.ask(
        "cas q 0 0 1 5\r\nx\r\n",
        "CLIENT_ERROR cas is not supported: queue messages cannot be changed; set enqueues\r\n",
    )
    .await;
    mc.ask(
        "cas q 0 0 1\r\n",
        "CLIENT_ERROR bad command line format\r\n",
    )
    .await;
    mc.ask("replace q 0 0 1 noreply\r\nx\r\nget q\r\n", "END\r\n")
        .await;
    for name in ["incr", "decr", "touch"] {
        mc.ask(
            format!("{name} q 1\r\n"),
            format!("CLIENT_ERROR {name} is not supported: queue messages cannot be changed\r\n"),
        )
        .await;
    }
    mc.ask(
        "flush_all\r\n",
        "CLIENT_ERROR flush_all is not supported: it would empty every queue; purge one queue with delete <queue>\r\n",
    )
    .await;
    mc.ask("flush_all 0 noreply\r\nget q\r\n", "END\r\n").await;
    assert_eq!(len(&server, "q").await, 0);
    let listed = server.get("/stats/").await.json();
    assert_eq!(listed["count"], 1, "only q was ever published to: {listed}");
    // The connection is still in step.
    mc.ask(
        "set q 0 0 2\r\nok\r\nget q\r\n",
        "STORED\r\nVALUE q 0 2\r\nok\r\nEND\r\n",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lines_too_long_and_binary_requests_close() {
    let server = server_with(|_| {}).await;
    let mut mc = Mc::connect(door(&server)).await;
    mc.ask(
        format!("get {}", "k ".repeat(1500)),
        "CLIENT_ERROR line too long\r\n",
    )
    .await;
    mc.closed().await;
    // A line of 2049 bytes ended by CRLF is one too many.
    let mut mc = Mc::connect(door(&server)).await;
    let line = format!("get {}", "k".repeat(2045));
    assert_eq!(line.len(), 2049);
    mc.ask(format!("{line}\r\n"), "CLIENT_ERROR line too long\r\n")
        .await;
    mc.closed().await;
    // 2048 bytes is fine (a key that long is not).
    let mut mc = Mc::connect(door(&server)).await;
    let keys = std::iter::repeat_n("k".repeat(200), 10)
        .collect::<Vec<_>>()
        .join(" ");
    let line = format!("get {keys} {}", "k".repeat(2048 - 4 - keys.len() - 1));
    assert_eq!(line.len(), 2048);
    mc.ask(format!("{line}\r\n"), "END\r\n").await;
    // The binary protocol's magic byte: closed without a word.
    let mut mc = Mc::connect(door(&server)).await;
    mc.send([
        0x80u8, 0x0b, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
    ])
    .await;
    mc.closed().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stats_counts_commands_and_queues() {
    let server = server_with(|_| {}).await;
    server.publish("over http", "x").await;
    let mut mc = Mc::connect(door(&server)).await;
    let mut second = Mc::connect(door(&server)).await;
    second
        .ask("version\r\n", format!("VERSION {VERSION}\r\n"))
        .await;
    mc.ask(
        "set a 0 0 1\r\n1\r\nset a 0 0 1\r\n2\r\nset b/c 0 0 1\r\n3\r\nget a nothing\r\n",
        "STORED\r\nSTORED\r\nSTORED\r\nVALUE a 0 1\r\n1\r\nEND\r\n",
    )
    .await;
    mc.send("stats\r\n").await;
    let lines = mc.lines_to_end().await;
    let stat = |name: &str| -> String {
        lines
            .iter()
            .find_map(|l| l.strip_prefix(&format!("STAT {name} ")))
            .unwrap_or_else(|| panic!("no STAT {name} in {lines:?}"))
            .to_owned()
    };
    assert_eq!(stat("pid"), std::process::id().to_string());
    assert!(stat("uptime").parse::<u64>().is_ok());
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    assert!(stat("time").parse::<u64>().unwrap().abs_diff(now) < 60);
    assert_eq!(stat("version"), VERSION);
    assert_eq!(stat("curr_connections"), "2");
    assert_eq!(stat("total_connections"), "2");
    assert_eq!(stat("cmd_set"), "3");
    assert_eq!(stat("cmd_get"), "2");
    assert_eq!(stat("get_hits"), "1");
    assert_eq!(stat("get_misses"), "1");
    assert_eq!(stat("curr_items"), "3");
    assert_eq!(stat("queue_a_items"), "1");
    assert_eq!(stat("queue_a_inflight"), "0");
    assert_eq!(stat("queue_b/c_items"), "1");
    // A queue whose name has a space is no memcached key: not listed.
    assert!(lines.iter().all(|l| !l.contains("over")), "{lines:?}");
    assert!(lines.iter().all(|l| l.starts_with("STAT ")), "{lines:?}");
    mc.ask("stats items\r\n", "END\r\n").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn interop_with_http() {
    let server = server_with(|_| {}).await;
    let mut mc = Mc::connect(door(&server)).await;
    mc.ask("set shared 0 0 11\r\nfrom mc \u{2713}\r\n", "STORED\r\n")
        .await;
    assert_eq!(
        server.pop("shared").await,
        Some(("shared:1".to_owned(), "from mc \u{2713}".to_owned()))
    );
    let key = server.publish("shared", "from http").await;
    assert_eq!(key, "shared:2");
    mc.ask(
        "gets shared\r\n",
        "VALUE shared 0 9 2\r\nfrom http\r\nEND\r\n",
    )
    .await;
    assert_eq!(server.pop("shared").await, None);
    // A ttl from exptime: the message carries it (seen by HTTP as usual).
    mc.ask("set later 0 3600 1\r\nx\r\n", "STORED\r\n").await;
    assert_eq!(
        server.pop("later").await,
        Some(("later:1".into(), "x".into()))
    );
    // delete over memcached is a purge: HTTP sees the queue empty, still listed.
    server.publish("purged", "a").await;
    mc.ask("delete purged\r\n", "DELETED\r\n").await;
    assert_eq!(len(&server, "purged").await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn access_rules_apply_by_address() {
    let rules = tempfile::tempdir().expect("a directory");
    let file = rules.path().join("acl.conf");
    std::fs::write(
        &file,
        "[rest:producer]\nhosts_allow = 10.0.0.0/8\nhosts_deny = all\n\n\
         [rest:consumer]\nusername = reader\npassword = secret\n",
    )
    .expect("write the rules");
    let server = server_with(|config| config.acl = Some(file.clone())).await;
    let mut mc = Mc::connect(door(&server)).await;
    let address = "CLIENT_ERROR access denied: the address 127.0.0.1 may not use the rest:producer routes\r\n";
    mc.ask("set q 0 0 1\r\nx\r\n", address).await;
    mc.ask("delete q\r\n", address).await;
    mc.ask("set q 0 0 1 noreply\r\nx\r\n", "").await;
    let credentials = "CLIENT_ERROR access denied: the rest:consumer routes need credentials, which this protocol cannot carry\r\n";
    mc.ask("get q\r\n", credentials).await;
    mc.ask("stats\r\n", credentials).await;
    // What needs no rights still works.
    mc.ask("version\r\n", format!("VERSION {VERSION}\r\n"))
        .await;
    // Nothing was published: the consumer, with its password, finds q empty.
    let stats = server
        .client
        .get(server.url("/stats/q"))
        .basic_auth("reader", Some("secret"))
        .send()
        .await
        .expect("an answer");
    assert_eq!(stats.status(), 200);
    let stats: serde_json::Value = stats.json().await.expect("JSON");
    assert_eq!(stats["len"], 0);
    drop(rules);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_close_at_shutdown_and_past_the_limit() {
    let server = server_with(|config| config.max_connections = 2).await;
    let addr = door(&server);
    let mut idle = Mc::connect(addr).await;
    idle.ask("version\r\n", format!("VERSION {VERSION}\r\n"))
        .await;
    let mut second = Mc::connect(addr).await;
    second
        .ask("version\r\n", format!("VERSION {VERSION}\r\n"))
        .await;
    let mut third = Mc::connect(addr).await;
    third
        .expect("SERVER_ERROR too many open connections\r\n")
        .await;
    third.closed().await;
    drop(second);
    // An idle connection is closed at shutdown, well before the grace period
    // would have run out.
    let stopping = tokio::spawn(server.stop());
    let closed = tokio::time::timeout(
        restmq::server::SHUTDOWN_GRACE - Duration::from_secs(1),
        idle.closed(),
    )
    .await;
    assert!(
        closed.is_ok(),
        "the idle connection was not closed at shutdown"
    );
    stopping.await.expect("the server stops");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_backend() {
    let Some(server) = TestServer::configured(Backend::Redis, |config| {
        config.doors.memcached = Some(0);
    })
    .await
    else {
        return;
    };
    let mut mc = Mc::connect(door(&server)).await;
    mc.ask(
        "set r 0 0 2\r\nr1\r\nset r 0 0 2\r\nr2\r\n",
        "STORED\r\nSTORED\r\n",
    )
    .await;
    mc.ask(
        "get r/peek r\r\n",
        "VALUE r/peek 0 2\r\nr1\r\nVALUE r 0 2\r\nr1\r\nEND\r\n",
    )
    .await;
    assert_eq!(server.pop("r").await, Some(("r:2".into(), "r2".into())));
    server.publish("r", "r3").await;
    mc.ask("delete r\r\n", "DELETED\r\n").await;
    mc.ask("get r\r\n", "END\r\n").await;
}

/// pymemcache, a real client, against the door (see the script).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pymemcache_client() {
    let server = server_with(|_| {}).await;
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/python/memcached_pymemcache.py"
    );
    let addr = door(&server);
    let http = format!("http://{}", server.addr);
    // The script's client times out each request after 10 s: it cannot hang.
    let run = tokio::task::spawn_blocking(move || {
        std::process::Command::new("python3")
            .arg(script)
            .arg(addr.ip().to_string())
            .arg(addr.port().to_string())
            .arg(&http)
            .output()
    });
    let output = match run.await.expect("the script's runner") {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            assert!(
                std::env::var_os("CI").is_none(),
                "python3 is missing, and CI is set: the pymemcache test must run"
            );
            eprintln!("skipping the pymemcache test: python3 is not installed");
            return;
        }
        Err(e) => panic!("cannot run python3: {e}"),
        Ok(output) => output,
    };
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "the pymemcache script failed ({}):\n{stdout}\n{stderr}",
        output.status
    );
    eprintln!("{stdout}{stderr}");
}
