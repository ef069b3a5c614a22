//! The accept loop of the doors that speak their own protocol over TCP
//! (memcached, syslog): each connection is admitted toward
//! `--max-connections` and served by a task of its own; the loop ends, closing
//! its listener, when shutdown begins.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;

use crate::server::{self, Serving};

/// Longest a connection refused for the limit is kept, to be told so.
const REFUSAL_TIME: Duration = Duration::from_secs(2);
/// Refused connections being told so at once; past it, one more is closed
/// without a word, so that a flood does not become the load the limit prevents.
const MAX_REFUSING: usize = 64;

/// Accepts connections on `listener` until shutdown begins, serving each with
/// `serve`. A connection past `--max-connections` is sent `refusal` (when not
/// empty) and closed.
pub async fn accept<F, Fut>(
    listener: TcpListener,
    serving: Serving,
    refusal: &'static [u8],
    serve: F,
) where
    F: Fn(TcpStream, SocketAddr) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let refusing = Arc::new(Semaphore::new(MAX_REFUSING));
    server::accept_each(listener, &serving, serve, |socket| {
        refuse(socket, refusal, &refusing)
    })
    .await;
}

/// Tells a connection past the limit so, in a task of its own, then closes it.
fn refuse(mut socket: TcpStream, refusal: &'static [u8], refusing: &Arc<Semaphore>) {
    tracing::debug!("connection refused: too many connections");
    let Ok(permit) = refusing.clone().try_acquire_owned() else {
        return;
    };
    tokio::spawn(async move {
        let told = async {
            if !refusal.is_empty() {
                let _ = socket.write_all(refusal).await;
            }
            let _ = socket.shutdown().await;
            // Closing with unread input resets the connection, and the
            // client could lose the answer: read what it still sends.
            let mut buf = [0u8; 1024];
            while let Ok(1..) = socket.read(&mut buf).await {}
        };
        let _ = tokio::time::timeout(REFUSAL_TIME, told).await;
        drop(permit);
    });
}
