//! The accept loop: every connection is served by hyper (HTTP/1.1, with upgrades
//! for WebSockets), except one whose first request opens a COMET or Server-Sent
//! Events stream: that one is answered directly on the socket
//! ([`crate::http::stream::serve_raw`]), since an idle stream then costs a few
//! hundred bytes instead of hyper's per-connection buffers (about 24 KB).
//!
//! Both ways work over plain TCP and over TLS alike. Everything that may wait
//! on a client (the TLS handshake, the first request's head) happens in the
//! connection's own task under the header timeout, so the accept loop never
//! waits on anyone. Past `max_connections`, a new connection gets a short 503
//! and is closed, by a small task of its own.

mod head_timer;

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use bytes::{Buf, Bytes, BytesMut};
use futures_util::future::Either;
use hyper::server::conn::http1;
use hyper_util::rt::TokioIo;
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore, watch};
use tokio::time::Instant;
use tokio_rustls::TlsAcceptor;

use crate::AppState;
use crate::adapters::Doors;
use crate::error::Error;
use crate::http::direct::{self, Direct};
use crate::http::stream;

/// How long shutdown waits for streams and connections to finish.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);
/// Connections refused for the limit that may be in the middle of being told
/// so at once; past it, one more is closed without an answer. Each is short
/// ([`REFUSAL_TIME`]) and small, and the bound keeps a flood from turning them
/// into the very load the limit prevents.
const MAX_REFUSING: usize = 256;
/// Longest a refused connection is kept: to finish a TLS handshake, send the
/// 503, and read what the client still sends (closing a socket with unread
/// input resets it, and the client may lose the answer).
const REFUSAL_TIME: Duration = Duration::from_secs(2);
/// Bytes of a refused connection's request read, at most, before answering.
const REFUSED_HEAD: usize = 16 * 1024;
/// The first byte of a TLS record carrying a handshake (the ClientHello).
const TLS_HANDSHAKE: u8 = 0x16;
/// Bytes of a new connection read to recognise a stream request.
const FIRST_LINE_BYTES: usize = 1024;
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

/// How connections are accepted and bounded.
#[derive(Clone)]
pub struct Settings {
    /// Serve HTTPS with this acceptor; plain HTTP without.
    pub tls: Option<TlsAcceptor>,
    /// Time a client has to finish the TLS handshake and send its first
    /// request's head (hyper then gives each head as long again).
    pub header_timeout: Duration,
    /// Open connections, at most.
    pub max_connections: usize,
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

/// What every front door shares while the server runs: the state, the
/// shutdown signal, and the connection count and limit that shutdown waits on.
#[derive(Clone)]
pub struct Serving {
    /// The queues and settings.
    pub state: AppState,
    stop: watch::Receiver<bool>,
    connections: Arc<Connections>,
    permits: Arc<Semaphore>,
}

/// A connection let in: it counts toward `--max-connections` and is waited for
/// at shutdown until dropped.
pub struct Admitted {
    _permit: OwnedSemaphorePermit,
    _tracked: Tracked,
}

impl Serving {
    /// Lets a connection in, or `None` when `--max-connections` are open.
    pub fn admit(&self) -> Option<Admitted> {
        let permit = self.permits.clone().try_acquire_owned().ok()?;
        Some(Admitted {
            _permit: permit,
            _tracked: Tracked::new(&self.connections),
        })
    }

    /// A receiver that changes (to `true`) when shutdown begins.
    pub fn stop_signal(&self) -> watch::Receiver<bool> {
        self.stop.clone()
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
    run_with(listener, Doors::default(), state, shutdown).await
}

/// Like [`run`], serving the other front doors in `doors` too: they stop with
/// the HTTP listener, and the store closes once their work is done.
pub async fn run_with(
    listener: TcpListener,
    doors: Doors,
    state: AppState,
    shutdown: impl Future<Output = ()> + Send,
) -> std::io::Result<()> {
    warn_if_files_run_out(state.server.max_connections);
    let (stopping, stop) = watch::channel(false);
    let serving = Serving {
        state: state.clone(),
        stop,
        connections: Arc::new(Connections::default()),
        permits: Arc::new(Semaphore::new(state.server.max_connections)),
    };
    let mut loops = vec![tokio::spawn(accept(
        listener,
        crate::app(state.clone()),
        true,
        serving.clone(),
    ))];
    loops.extend(doors.spawn(&serving));
    shutdown.await;
    state.broker.end_streams();
    let _ = stopping.send(true);
    for accepting in loops {
        if let Err(e) = accepting.await {
            tracing::error!(error = %e, "a listener's task failed");
        }
    }
    let connections = &serving.connections;
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

/// Accepts HTTP connections on `listener` for `router` until shutdown begins.
/// With `direct` (the main port), a connection whose first request opens a
/// COMET or SSE stream is answered on the socket directly, and the routes of
/// [`crate::http::direct`] skip the router; without (the SQS port),
/// everything goes through the router.
pub async fn accept(listener: TcpListener, router: Router, direct: bool, serving: Serving) {
    let site = Site { router, direct };
    let settings = serving.state.server.clone();
    let refusals = Arc::new(Semaphore::new(MAX_REFUSING));
    let state = serving.state.clone();
    let stop = serving.stop_signal();
    accept_each(
        listener,
        &serving,
        |socket, peer| connection(socket, peer, state.clone(), site.clone(), stop.clone()),
        |socket| refuse(socket, &settings, &refusals),
    )
    .await;
}

/// Accepts connections on `listener` until shutdown begins: each one let in
/// (see [`Serving::admit`]) is served by `serve` in a task of its own, which
/// holds its admission; each past `--max-connections` goes to `refuse`.
pub async fn accept_each<S, Fut, R>(listener: TcpListener, serving: &Serving, serve: S, refuse: R)
where
    S: Fn(TcpStream, SocketAddr) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
    R: Fn(TcpStream),
{
    let mut stop = serving.stop_signal();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((socket, peer)) => {
                    let Some(admitted) = serving.admit() else {
                        refuse(socket);
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

/// Open files the server needs besides its connections: its store, Redis
/// connections, the listener, the connections being refused.
const SPARE_FILES: u64 = 256 + MAX_REFUSING as u64;

/// Warns when the open-file limit is reached before `max_connections`: past
/// it `accept` fails, and new clients get no answer at all, not even a 503.
fn warn_if_files_run_out(max_connections: usize) {
    let Some((soft, _)) = std::fs::read_to_string("/proc/self/limits")
        .ok()
        .and_then(|limits| crate::bench::parse_file_limit(&limits))
    else {
        return;
    };
    let needed = (max_connections as u64).saturating_add(SPARE_FILES);
    if soft < needed {
        tracing::warn!(
            max_connections,
            open_file_limit = soft,
            "the open-file limit is lower than --max-connections needs ({needed}): \
             raise it (ulimit -n) or lower --max-connections, or clients past it get no answer"
        );
    }
}

/// Answers a connection past the limit with a 503 and closes it, in a task of
/// its own so that the accept loop goes on at once.
fn refuse(socket: TcpStream, settings: &Settings, refusals: &Arc<Semaphore>) {
    let Ok(refusing) = refusals.clone().try_acquire_owned() else {
        tracing::debug!("too many connections refused at once: closing one unanswered");
        return;
    };
    let error = Error::TooManyConnections {
        limit: settings.max_connections,
    };
    tracing::debug!(%error, "connection refused");
    let tls = settings.tls.clone();
    tokio::spawn(async move {
        let answer = async {
            match tls {
                None => answer_and_close(socket, &error).await,
                Some(acceptor) => {
                    if let Ok(socket) = acceptor.accept(socket).await {
                        answer_and_close(socket, &error).await;
                    }
                }
            }
        };
        let _ = tokio::time::timeout(REFUSAL_TIME, answer).await;
        drop(refusing);
    });
}

/// Answers the client's first request with `error`, then reads and drops what
/// it still sends until it closes: closing with unread input would reset the
/// connection, and the client could lose the answer. The caller bounds the time.
async fn answer_and_close<S: AsyncRead + AsyncWrite + Unpin>(mut socket: S, error: &Error) {
    // Clients (hyper's among them) take an answer that comes before their
    // request for a broken connection: wait for the request's head first.
    let mut head = Vec::with_capacity(1024);
    let mut buf = [0u8; 1024];
    while let Ok(n @ 1..) = socket.read(&mut buf).await {
        head.extend_from_slice(&buf[..n]);
        if head.len() > REFUSED_HEAD || head.windows(4).any(|w| w == b"\r\n\r\n") {
            break;
        }
    }
    drop(head);
    stream::answer_error(&mut socket, error).await;
    let _ = socket.shutdown().await;
    while let Ok(1..) = socket.read(&mut buf).await {}
}

/// What a listener serves.
#[derive(Clone)]
struct Site {
    router: Router,
    /// Whether this is the main site: a first request opening a COMET or SSE
    /// stream is answered on the socket directly, and the routes of
    /// [`crate::http::direct`] skip the router.
    direct: bool,
}

/// The task serving a connection. Not an async fn: its future is the serving
/// one itself, so that a plain connection's task holds nothing more.
fn connection(
    socket: TcpStream,
    peer: SocketAddr,
    state: AppState,
    site: Site,
    stop: watch::Receiver<bool>,
) -> impl Future<Output = ()> + Send {
    // Small writes (a streamed message, an answer) must not wait for Nagle.
    let _ = socket.set_nodelay(true);
    let deadline = Instant::now() + state.server.header_timeout;
    match state.server.tls.clone() {
        None => Either::Left(serve(socket, peer, deadline, state, site, stop)),
        // Boxed: a TLS session takes several kilobytes, which a plain
        // connection's task (an idle stream's, say) must not carry.
        Some(acceptor) => Either::Right(Box::pin(serve_tls(
            acceptor, socket, peer, deadline, state, site, stop,
        ))),
    }
}

/// Completes the TLS handshake before `deadline`, then serves the connection.
async fn serve_tls(
    acceptor: TlsAcceptor,
    socket: TcpStream,
    peer: SocketAddr,
    deadline: Instant,
    state: AppState,
    site: Site,
    mut stop: watch::Receiver<bool>,
) {
    let handshake = async {
        let mut first = [0u8; 1];
        match socket.peek(&mut first).await {
            Ok(1) if first[0] != TLS_HANDSHAKE => return Err(Some(socket)),
            Ok(_) => {}
            Err(_) => return Err(None),
        }
        acceptor.accept(socket).await.map_err(|e| {
            tracing::debug!(%peer, error = %e, "TLS handshake failed");
            None
        })
    };
    let shaken = tokio::select! {
        shaken = tokio::time::timeout_at(deadline, handshake) => shaken,
        _ = stop.changed() => return,
    };
    match shaken {
        Ok(Ok(tls)) => serve(tls, peer, deadline, state, site, stop).await,
        // Not TLS at all: most likely plain HTTP, which can be told what to do.
        Ok(Err(Some(plain))) => {
            let _ =
                tokio::time::timeout(REFUSAL_TIME, answer_and_close(plain, &Error::TlsRequired))
                    .await;
        }
        Ok(Err(None)) => {}
        Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
    }
}

/// Serves a connection (TCP or TLS) whose first request's head must begin
/// before `deadline`.
async fn serve<S>(
    mut io: S,
    peer: SocketAddr,
    deadline: Instant,
    state: AppState,
    site: Site,
    mut stop: watch::Receiver<bool>,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    // Clients open connections they may never use (a pool racing a new connection
    // against an idle one): waiting for a first request gives way to shutdown and
    // to the header timeout, as hyper's own wait does.
    let first = tokio::select! {
        first = tokio::time::timeout_at(deadline, first_line(&mut io)) => first,
        _ = stop.changed() => return,
    };
    let first = match first {
        Ok(Some(first)) => first,
        Ok(None) | Err(_) => return,
    };
    let opens_stream = site.direct && stream::opens_stream(&first);
    let io = Rewind::new(first, io);
    if opens_stream {
        return stream::serve_raw(io, peer, deadline, state).await;
    }
    // Handlers behind the router learn the peer's address from the request's
    // `access::Client`; the direct routes are handed it.
    let header_timeout = state.server.header_timeout;
    let service = TowerToHyperService::new(WithPeer {
        router: site.router,
        peer,
        direct: site.direct.then_some(state),
    });
    // Boxed, so that a connection on the direct path above does not carry the
    // size of hyper's connection state in its task.
    let mut conn = Box::pin(
        http1::Builder::new()
            .timer(head_timer::HeadTimer::default())
            .header_read_timeout(header_timeout)
            .serve_connection(TokioIo::new(io), service)
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

/// Reads the start of a connection: up to the end of the first line, or
/// [`FIRST_LINE_BYTES`]; `None` if the client goes away before sending anything.
async fn first_line<S: AsyncRead + Unpin>(io: &mut S) -> Option<Bytes> {
    let mut buf = BytesMut::with_capacity(FIRST_LINE_BYTES);
    loop {
        match io.read_buf(&mut buf).await {
            Ok(0) | Err(_) if buf.is_empty() => return None,
            Ok(0) | Err(_) => return Some(buf.freeze()),
            Ok(_) => {}
        }
        if buf.len() >= FIRST_LINE_BYTES || buf.windows(2).any(|w| w == b"\r\n") {
            return Some(buf.freeze());
        }
    }
}

/// A connection whose first bytes were already read: it gives them back
/// before reading on.
struct Rewind<S> {
    prefix: Bytes,
    inner: S,
}

impl<S> Rewind<S> {
    fn new(prefix: Bytes, inner: S) -> Rewind<S> {
        Rewind { prefix, inner }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Rewind<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        if self.prefix.is_empty() {
            return Pin::new(&mut self.inner).poll_read(cx, buf);
        }
        let n = self.prefix.len().min(buf.remaining());
        buf.put_slice(&self.prefix[..n]);
        self.prefix.advance(n);
        if self.prefix.is_empty() {
            // Frees the buffer now rather than with the connection.
            self.prefix = Bytes::new();
        }
        Poll::Ready(Ok(()))
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Rewind<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// The router, adding the peer's address to every request it serves; on the
/// main site, the routes of [`crate::http::direct`] skip it.
#[derive(Clone)]
struct WithPeer {
    router: Router,
    peer: SocketAddr,
    /// Set on the main site: the state the direct routes answer with.
    direct: Option<AppState>,
}

impl tower_service::Service<axum::extract::Request<hyper::body::Incoming>> for WithPeer {
    type Response = axum::response::Response;
    type Error = std::convert::Infallible;
    type Future = Either<
        <Router as tower_service::Service<axum::extract::Request<hyper::body::Incoming>>>::Future,
        crate::http::trace::Fronted<direct::Answered>,
    >;

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
        if let Some(state) = &self.direct {
            if let Some(route) = Direct::of(request.method(), request.uri().path()) {
                let request = request.map(axum::body::Body::new);
                return Either::Right(direct::serve(state, request, self.peer.ip(), route));
            }
        }
        request
            .extensions_mut()
            .insert(crate::http::access::Client::at(self.peer));
        Either::Left(self.router.call(request))
    }
}
