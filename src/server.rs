//! The accept loop: every connection is served by hyper (HTTP/1.1, with upgrades
//! for WebSockets), except one whose first request opens a COMET or Server-Sent
//! Events stream: that one is answered directly on the socket
//! ([`crate::http::stream::serve_raw`]), since an idle stream then costs a few
//! hundred bytes instead of hyper's per-connection buffers (about 24 KB).

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use axum::Router;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::{Notify, watch};
use tracing::Instrument;

use crate::AppState;
use crate::http::stream;

/// How long shutdown waits for streams and connections to finish.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);
/// How long a client may take to send a request's head.
const HEADER_TIMEOUT: Duration = Duration::from_secs(30);
/// Pause after a failed accept (out of file descriptors, say), so the loop does
/// not spin while the condition lasts.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);

/// Connections the kernel may hold waiting to be accepted. The default of 128
/// overflowed when a thousand stream clients connected at once (dropped SYNs are
/// retried only after a second); the kernel caps this at `net.core.somaxconn`.
const BACKLOG: u32 = 4096;

/// Listens on `host` (an address or a name) and `port`, with a deep accept queue.
pub async fn bind(host: &str, port: u16) -> std::io::Result<TcpListener> {
    let mut last_error = None;
    for addr in tokio::net::lookup_host((host, port)).await? {
        let socket = if addr.is_ipv4() {
            TcpSocket::new_v4()?
        } else {
            TcpSocket::new_v6()?
        };
        socket.set_reuseaddr(true)?;
        match socket.bind(addr) {
            Ok(()) => return socket.listen(BACKLOG),
            Err(e) => last_error = Some(e),
        }
    }
    Err(last_error.unwrap_or_else(|| {
        std::io::Error::new(
            std::io::ErrorKind::NotFound,
            format!("{host} has no address"),
        )
    }))
}

/// Connections being served, to wait for at shutdown.
#[derive(Default)]
struct Connections {
    live: AtomicUsize,
    idle: Notify,
}

/// Counts a connection while it lives.
struct Tracked(Arc<Connections>);

impl Tracked {
    fn new(connections: &Arc<Connections>) -> Tracked {
        connections.live.fetch_add(1, Ordering::AcqRel);
        Tracked(connections.clone())
    }
}

impl Drop for Tracked {
    fn drop(&mut self) {
        if self.0.live.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.idle.notify_waiters();
        }
    }
}

/// Serves `listener` until `shutdown` resolves, then shuts down without losing
/// anything: stops accepting, ends every stream (messages buffered for a stream
/// and not yet sent go back to their queues), lets requests in progress finish
/// (for at most [`SHUTDOWN_GRACE`]), and closes the store.
pub async fn run(
    listener: TcpListener,
    state: AppState,
    shutdown: impl Future<Output = ()> + Send,
) -> std::io::Result<()> {
    let router = crate::app(state.clone());
    let connections = Arc::new(Connections::default());
    let (stopping, stop) = watch::channel(false);
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((socket, peer)) => {
                    let state = state.clone();
                    let router = router.clone();
                    let stop = stop.clone();
                    let tracked = Tracked::new(&connections);
                    tokio::spawn(async move {
                        connection(socket, peer, state, router, stop).await;
                        drop(tracked);
                    });
                }
                Err(e) => {
                    tracing::warn!(error = %e, "accepting a connection failed");
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                }
            },
            () = &mut shutdown => break,
        }
    }
    drop(listener);
    state.broker.end_streams();
    let _ = stopping.send(true);
    let all_closed = async {
        loop {
            let idle = connections.idle.notified();
            if connections.live.load(Ordering::Acquire) == 0 {
                break;
            }
            idle.await;
        }
    };
    if tokio::time::timeout(SHUTDOWN_GRACE, all_closed)
        .await
        .is_err()
    {
        tracing::warn!(
            connections = connections.live.load(Ordering::Acquire),
            "connections still open after the grace period; closing them"
        );
    }
    state.broker.streams_closed(SHUTDOWN_GRACE).await;
    if let Err(e) = state.broker.close().await {
        tracing::error!(error = %e, "closing the store failed");
    }
    Ok(())
}

async fn connection(
    socket: TcpStream,
    peer: SocketAddr,
    state: AppState,
    router: Router,
    mut stop: watch::Receiver<bool>,
) {
    // Small writes (a streamed message, an answer) must not wait for Nagle.
    let _ = socket.set_nodelay(true);
    // Clients open connections they may never use (a pool racing a new connection
    // against an idle one): waiting for a first request gives way to shutdown and
    // to the header timeout, as hyper's own wait does.
    let opens = tokio::select! {
        opens = tokio::time::timeout(HEADER_TIMEOUT, stream::opens_stream(&socket)) => opens,
        _ = stop.changed() => return,
    };
    match opens {
        Ok(true) => {
            let span = tracing::info_span!(
                "request",
                method = "GET",
                path = tracing::field::Empty,
                client = %peer.ip(),
            );
            return stream::serve_raw(socket, peer, state)
                .instrument(span)
                .await;
        }
        Ok(false) => {}
        Err(_) => return,
    }
    // Handlers learn the peer's address as axum's `ConnectInfo`.
    let service = TowerToHyperService::new(WithPeer { router, peer });
    // Boxed, so that a connection on the direct path above does not carry the
    // size of hyper's connection state in its task.
    let mut conn = Box::pin(
        http1::Builder::new()
            .timer(TokioTimer::new())
            .header_read_timeout(HEADER_TIMEOUT)
            .serve_connection(TokioIo::new(socket), service)
            .with_upgrades(),
    );
    let served = tokio::select! {
        served = conn.as_mut() => served,
        // Sent once, at shutdown (or the sender is gone: shutting down too).
        _ = stop.changed() => {
            conn.as_mut().graceful_shutdown();
            conn.await
        }
    };
    if let Err(e) = served {
        tracing::debug!(error = %e, "connection ended with an error");
    }
}

/// The router, adding the peer's address to every request it serves.
#[derive(Clone)]
struct WithPeer {
    router: Router,
    peer: SocketAddr,
}

impl tower_service::Service<axum::extract::Request<hyper::body::Incoming>> for WithPeer {
    type Response = axum::response::Response;
    type Error = std::convert::Infallible;
    type Future =
        <Router as tower_service::Service<axum::extract::Request<hyper::body::Incoming>>>::Future;

    fn poll_ready(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        tower_service::Service::<axum::extract::Request<hyper::body::Incoming>>::poll_ready(
            &mut self.router,
            cx,
        )
    }

    fn call(&mut self, mut request: axum::extract::Request<hyper::body::Incoming>) -> Self::Future {
        request
            .extensions_mut()
            .insert(axum::extract::ConnectInfo(self.peer));
        self.router.call(request)
    }
}
