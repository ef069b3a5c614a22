//! The memcached text protocol: `set <q>` enqueues, `get <q>` dequeues (the
//! MemcacheQ and Kestrel convention). `add` enqueues like `set`; `get <q>/peek`
//! returns the head without removing it; `delete <q>` purges the queue;
//! `stats` lists each queue's length. What memcached does to values in place
//! (`replace`, `append`, `prepend`, `cas`, `incr`, `decr`, `touch`) and
//! `flush_all` are refused with `CLIENT_ERROR`. Flags are not stored: values
//! come back with flags 0. The binary protocol is not spoken.

mod command;
mod reply;
mod session;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use tokio::net::TcpListener;

use crate::server::Serving;

/// What a connection past `--max-connections` is told before it is closed.
const TOO_MANY: &[u8] = b"SERVER_ERROR too many open connections\r\n";

/// The door's counters, for `stats`.
#[derive(Debug)]
struct Counters {
    started: Instant,
    curr_connections: AtomicU64,
    total_connections: AtomicU64,
    cmd_get: AtomicU64,
    cmd_set: AtomicU64,
    get_hits: AtomicU64,
    get_misses: AtomicU64,
}

impl Counters {
    fn new() -> Counters {
        Counters {
            started: Instant::now(),
            curr_connections: AtomicU64::new(0),
            total_connections: AtomicU64::new(0),
            cmd_get: AtomicU64::new(0),
            cmd_set: AtomicU64::new(0),
            get_hits: AtomicU64::new(0),
            get_misses: AtomicU64::new(0),
        }
    }

    fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    fn read(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }
}

/// Counts a connection as current while it lives.
struct Current(Arc<Counters>);

impl Current {
    fn new(counters: &Arc<Counters>) -> Current {
        Counters::add(&counters.curr_connections, 1);
        Counters::add(&counters.total_connections, 1);
        Current(counters.clone())
    }
}

impl Drop for Current {
    fn drop(&mut self) {
        self.0.curr_connections.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Serves memcached clients on `listener` until shutdown.
pub async fn run(listener: TcpListener, serving: Serving) {
    let counters = Arc::new(Counters::new());
    let state = serving.state.clone();
    let stop = serving.stop_signal();
    super::listen::accept(listener, serving, TOO_MANY, move |socket, peer| {
        let current = Current::new(&counters);
        let served = session::serve(socket, peer, state.clone(), counters.clone(), stop.clone());
        async move {
            served.await;
            drop(current);
        }
    })
    .await;
}
