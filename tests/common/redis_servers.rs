//! Real `redis-server` processes for the tests, on free ports (never 6379).
//!
//! Fleets shared by the tests of one binary are started once: one server for
//! the single mode, three for the ring (each test uses its own database number,
//! so they run in parallel), and a three-master cluster (database 0 only: tests
//! take turns, and each empties it first). Shared processes are started from a
//! thread that lives as long as the test binary, with the parent-death signal
//! set, so they end with it. A test that needs its own servers (killing one)
//! starts a [`RedisServer`], stopped when dropped.

use std::net::TcpListener;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Mutex, OnceLock, mpsc};
use std::time::{Duration, Instant};

use tempfile::TempDir;

/// Databases each shared server has, one per test server.
const DATABASES: i64 = 16_384;

/// Whether `redis-server` can be run here.
pub fn available() -> bool {
    static FOUND: OnceLock<bool> = OnceLock::new();
    *FOUND.get_or_init(|| {
        Command::new("redis-server")
            .arg("--version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    })
}

/// A port free now, whose cluster bus port (+10000) is free too.
pub fn free_port() -> u16 {
    loop {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind a free port");
        let port = listener.local_addr().expect("local address").port();
        if port < 55_000 && TcpListener::bind(("127.0.0.1", port + 10_000)).is_ok() {
            return port;
        }
    }
}

/// Spawns `command` so that it dies with the test binary: from a thread that
/// never ends, with the parent-death signal (which follows the spawning thread).
fn spawn_for_life(command: Command) -> std::io::Result<Child> {
    type Request = (Command, mpsc::Sender<std::io::Result<Child>>);
    static SPAWNER: OnceLock<Mutex<mpsc::Sender<Request>>> = OnceLock::new();
    let spawner = SPAWNER.get_or_init(|| {
        let (tx, rx) = mpsc::channel::<Request>();
        std::thread::spawn(move || {
            for (mut command, reply) in rx {
                // SAFETY: prctl is async-signal-safe; nothing else runs here.
                unsafe {
                    command.pre_exec(|| {
                        libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                        Ok(())
                    });
                }
                let _ = reply.send(command.spawn());
            }
        });
        Mutex::new(tx)
    });
    let (reply, answer) = mpsc::channel();
    spawner
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .send((command, reply))
        .expect("the spawner thread runs");
    answer.recv().expect("the spawner answers")
}

/// One `redis-server` on a free port with its own directory.
pub struct RedisServer {
    /// Its port.
    pub port: u16,
    child: Option<Child>,
    dir: TempDir,
    args: Vec<String>,
}

impl RedisServer {
    /// A server with extra arguments (`--appendonly yes`, …), stopped when dropped.
    pub fn start(args: &[&str]) -> RedisServer {
        let dir = tempfile::tempdir().expect("a directory for redis-server");
        let mut server = RedisServer {
            port: free_port(),
            child: None,
            dir,
            args: args.iter().map(|a| a.to_string()).collect(),
        };
        server.run(false);
        server
    }

    fn command(&self) -> Command {
        let mut command = Command::new("redis-server");
        command
            .arg("--port")
            .arg(self.port.to_string())
            .arg("--bind")
            .arg("127.0.0.1")
            .arg("--save")
            .arg("")
            .arg("--dir")
            .arg(self.dir.path())
            .arg("--databases")
            .arg(DATABASES.to_string())
            .args(&self.args)
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        command
    }

    fn run(&mut self, for_life: bool) {
        let command = self.command();
        let child = if for_life {
            spawn_for_life(command)
        } else {
            let mut command = command;
            command.spawn()
        };
        self.child = Some(child.expect("start redis-server"));
        wait_for_ping(self.port);
    }

    /// Its URL for database `db`.
    pub fn url(&self, db: i64) -> String {
        format!("redis://127.0.0.1:{}/{db}", self.port)
    }

    /// Its directory (where an append-only file goes).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Kills it (SIGKILL) and waits until it is gone.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts it again on the same port and directory.
    pub fn restart(&mut self) {
        self.kill();
        self.run(false);
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}

fn wait_for_ping(port: u16) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let pong = Command::new("redis-cli")
            .args(["-p", &port.to_string(), "ping"])
            .output()
            .is_ok_and(|o| o.stdout.starts_with(b"PONG"));
        if pong {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "redis-server on {port} did not start"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Servers shared by the tests of this binary.
struct Fleet {
    servers: Vec<RedisServer>,
    next_db: AtomicI64,
}

impl Fleet {
    fn start(count: usize, args: &[&str]) -> Fleet {
        let servers = (0..count)
            .map(|_| {
                let dir = tempfile::tempdir().expect("a directory for redis-server");
                let mut server = RedisServer {
                    port: free_port(),
                    child: None,
                    dir,
                    args: args.iter().map(|a| a.to_string()).collect(),
                };
                server.run(true);
                server
            })
            .collect();
        Fleet {
            servers,
            next_db: AtomicI64::new(0),
        }
    }

    /// URLs of every server, for a database no other test uses.
    fn fresh_urls(&self) -> Vec<String> {
        let db = self.next_db.fetch_add(1, Ordering::Relaxed) % DATABASES;
        self.servers.iter().map(|s| s.url(db)).collect()
    }
}

/// URL of the shared single server, on a database of the caller's own.
pub fn single() -> Vec<String> {
    static FLEET: OnceLock<Fleet> = OnceLock::new();
    FLEET.get_or_init(|| Fleet::start(1, &[])).fresh_urls()
}

/// URLs of the shared three-server ring, on a database of the caller's own.
pub fn ring() -> Vec<String> {
    static FLEET: OnceLock<Fleet> = OnceLock::new();
    FLEET.get_or_init(|| Fleet::start(3, &[])).fresh_urls()
}

/// The shared three-master cluster: its node URLs.
pub fn cluster() -> Vec<String> {
    static FLEET: OnceLock<Fleet> = OnceLock::new();
    let fleet = FLEET.get_or_init(|| {
        let fleet = Fleet::start(
            3,
            &[
                "--cluster-enabled",
                "yes",
                "--cluster-node-timeout",
                "5000",
                "--databases",
                "1",
            ],
        );
        let nodes: Vec<String> = fleet
            .servers
            .iter()
            .map(|s| format!("127.0.0.1:{}", s.port))
            .collect();
        let created = Command::new("redis-cli")
            .args(["--cluster", "create"])
            .args(&nodes)
            .args(["--cluster-replicas", "0", "--cluster-yes"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .expect("run redis-cli --cluster create");
        assert!(created.success(), "redis-cli --cluster create failed");
        let deadline = Instant::now() + Duration::from_secs(30);
        for server in &fleet.servers {
            loop {
                let info = Command::new("redis-cli")
                    .args(["-p", &server.port.to_string(), "cluster", "info"])
                    .output()
                    .expect("redis-cli cluster info");
                if String::from_utf8_lossy(&info.stdout).contains("cluster_state:ok") {
                    break;
                }
                assert!(Instant::now() < deadline, "the cluster did not come up");
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        fleet
    });
    fleet.servers.iter().map(|s| s.url(0)).collect()
}

/// A test's own connection to the Redis server at `url`, to set up or check
/// its data behind restmq's back.
///
/// The client's default response timeout (500 ms) is shorter than what a
/// fixture's bulk script can take on a loaded machine; this one waits as long
/// as the tests' deadline.
pub async fn direct(url: &str) -> redis::aio::MultiplexedConnection {
    let config = redis::AsyncConnectionConfig::new()
        .set_connection_timeout(Some(super::DEADLINE))
        .set_response_timeout(Some(super::DEADLINE));
    redis::Client::open(url)
        .expect("a valid Redis URL")
        .get_multiplexed_async_connection_with_config(&config)
        .await
        .expect("connect to Redis directly")
}

/// Empties every node of the shared cluster (its tests take turns).
pub async fn flush_cluster() {
    for url in cluster() {
        let mut conn = direct(&url).await;
        redis::cmd("FLUSHALL")
            .query_async::<()>(&mut conn)
            .await
            .expect("FLUSHALL");
    }
}

/// The turn of the test using the shared cluster.
pub fn cluster_turn() -> &'static tokio::sync::Mutex<()> {
    static TURN: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
    &TURN
}
