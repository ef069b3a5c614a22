//! The memcached text protocol: `set <q>` enqueues, `get <q>` dequeues (the
//! MemcacheQ and Kestrel convention).

use tokio::net::TcpListener;

use crate::server::Serving;

/// Serves memcached clients on `listener` until shutdown.
pub async fn run(listener: TcpListener, serving: Serving) {
    serving.stopped().await;
    drop(listener);
}
