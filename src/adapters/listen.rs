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

use crate::server::Serving;

/// Pause after a failed accept (out of file descriptors, say), so the loop
/// does not spin while the condition lasts.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);
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
    let mut stop = serving.stop_signal();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((socket, peer)) => {
                    // Admission lives as long as the connection's task.
                    let Some(admitted) = serving.admit() else {
                        refuse(socket, refusal, &refusing);
                        continue;
                    };
                    let served = serve(socket, peer);
                    tokio::spawn(async move {
                        served.await;
                        drop(admitted);
                    });
                }
                Err(e) => {
                    tracing::warn!(error = %e, "accepting a connection failed");
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                }
            },
            // Sent once, at shutdown (or the sender is gone: shutting down too).
            _ = stop.changed() => break,
        }
    }
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
