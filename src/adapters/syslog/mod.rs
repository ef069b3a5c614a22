//! syslog over TCP and UDP: each message, read as RFC 5424 or RFC 3164 (or
//! neither), becomes a JSON object ([`record`]) in the queue
//! `syslogd:<sender ip>`. Over UDP a datagram is a message; over TCP messages
//! are octet-counted or one per line ([`framing`]). Messages longer than
//! `--max-body` are cut to it and marked `"truncated": true`. Messages that
//! arrive together from one sender are published together, in order.
//!
//! syslog has no replies: a message refused by the access rules (the sender's
//! address needs `rest:producer`) or that the store cannot take is dropped
//! and logged.

mod framing;
mod parse;
mod record;

pub use record::rfc3339;

use std::net::{IpAddr, SocketAddr};

use bytes::BytesMut;
use tokio::io::AsyncReadExt;
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::watch;
use tracing::Instrument;

use self::framing::{Frame, Framer};
use crate::AppState;
use crate::acl::Category;
use crate::adapters::{access, listen};
use crate::broker::QueueName;
use crate::server::Serving;
use crate::store::{NewMessage, now_millis};

/// Room made in a connection's buffer before each read.
const READ_CHUNK: usize = 8 * 1024;
/// The largest UDP payload.
const MAX_DATAGRAM: usize = 65_535;
/// Datagrams already waiting that are read before publishing what came.
const MAX_DATAGRAMS: usize = 256;
/// Most messages published at once.
const MAX_BATCH: usize = 512;

/// Receives syslog messages on `tcp` and `udp` until shutdown.
pub async fn run(tcp: TcpListener, udp: UdpSocket, serving: Serving) {
    let state = serving.state.clone();
    let stop = serving.stop_signal();
    let streams = listen::accept(tcp, serving.clone(), b"", move |socket, peer| {
        connection(socket, peer, state.clone(), stop.clone())
    });
    let datagrams = datagrams(udp, serving.state.clone(), serving.stop_signal());
    tokio::join!(streams, datagrams);
}

/// The queue of a sender's messages.
fn queue_of(sender: IpAddr) -> Option<QueueName> {
    QueueName::parse(&format!("syslogd:{sender}")).ok()
}

/// Publishes the JSON `messages` of `sender`, in order, unless its address
/// may not publish.
async fn publish(state: &AppState, sender: IpAddr, messages: Vec<String>) {
    if messages.is_empty() {
        return;
    }
    if let Err(why) = access::check(state, Category::RestProducer, sender) {
        tracing::debug!(%sender, dropped = messages.len(), reason = %why, "syslog messages refused");
        return;
    }
    let Some(queue) = queue_of(sender) else {
        tracing::warn!(%sender, "no queue name for this sender: syslog messages dropped");
        return;
    };
    let mut messages = messages.into_iter().peekable();
    while messages.peek().is_some() {
        let batch: Vec<NewMessage> = messages
            .by_ref()
            .take(MAX_BATCH)
            .map(|value| NewMessage {
                value,
                ttl: None,
                delay: None,
            })
            .collect();
        let count = batch.len();
        if let Err(e) = state.broker.publish_batch(&queue, batch).await {
            tracing::warn!(%sender, error = %e, dropped = count, "syslog messages could not be stored");
        }
    }
}

/// The JSON of a message received from `sender` at `received_ms`.
fn message(bytes: &[u8], truncated: bool, sender: IpAddr, received_ms: u64) -> String {
    record::json(
        &String::from_utf8_lossy(bytes),
        sender,
        received_ms,
        truncated,
    )
}

/// Reads one TCP stream's messages until it ends or shutdown begins (a
/// message not yet whole then is dropped).
async fn connection(
    mut socket: TcpStream,
    peer: SocketAddr,
    state: AppState,
    mut stop: watch::Receiver<bool>,
) {
    let sender = peer.ip().to_canonical();
    let span = tracing::debug_span!("syslog", %sender);
    async move {
        let mut framer = Framer::new(state.max_body);
        let mut buf = BytesMut::with_capacity(READ_CHUNK);
        let mut frames: Vec<Frame> = Vec::new();
        loop {
            buf.reserve(READ_CHUNK);
            let read = tokio::select! {
                read = socket.read_buf(&mut buf) => read,
                // Sent once, at shutdown (or the sender is gone: shutting down too).
                _ = stop.changed() => {
                    if !buf.is_empty() {
                        tracing::debug!(bytes = buf.len(), "shutdown: a partial syslog message dropped");
                    }
                    return;
                }
            };
            let ended = match read {
                Ok(0) => true,
                Ok(_) => false,
                Err(e) => {
                    tracing::debug!(error = %e, "syslog connection failed");
                    true
                }
            };
            framer.frames(&mut buf, &mut frames);
            if ended {
                frames.extend(framer.finish(&mut buf));
            }
            let now = now_millis();
            let messages = frames
                .drain(..)
                .map(|f| message(&f.bytes, f.truncated, sender, now))
                .collect();
            publish(&state, sender, messages).await;
            if ended {
                return;
            }
        }
    }
    .instrument(span)
    .await;
}

/// Reads datagrams until shutdown, each a message.
async fn datagrams(udp: UdpSocket, state: AppState, mut stop: watch::Receiver<bool>) {
    let mut buf = vec![0u8; MAX_DATAGRAM];
    loop {
        let first = tokio::select! {
            received = udp.recv_from(&mut buf) => received,
            // Sent once, at shutdown (or the sender is gone: shutting down too).
            _ = stop.changed() => return,
        };
        let now = now_millis();
        // Messages by sender, in the order they came.
        let mut senders: Vec<(IpAddr, Vec<String>)> = Vec::new();
        let mut add = |n: usize, peer: SocketAddr, buf: &[u8]| {
            let sender = peer.ip().to_canonical();
            let Some(bytes) = datagram(&buf[..n], state.max_body) else {
                return;
            };
            let json = message(bytes, bytes.len() < trimmed_len(&buf[..n]), sender, now);
            match senders.iter_mut().find(|(s, _)| *s == sender) {
                Some((_, list)) => list.push(json),
                None => senders.push((sender, vec![json])),
            }
        };
        match first {
            Ok((n, peer)) => add(n, peer, &buf),
            Err(e) => {
                tracing::debug!(error = %e, "receiving a syslog datagram failed");
                continue;
            }
        }
        for _ in 1..MAX_DATAGRAMS {
            match udp.try_recv_from(&mut buf) {
                Ok((n, peer)) => add(n, peer, &buf),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(e) => {
                    tracing::debug!(error = %e, "receiving a syslog datagram failed");
                    break;
                }
            }
        }
        for (sender, messages) in senders {
            publish(&state, sender, messages).await;
        }
    }
}

/// A datagram's length without its trailing line end and NULs.
fn trimmed_len(bytes: &[u8]) -> usize {
    bytes
        .iter()
        .rposition(|&b| !matches!(b, b'\r' | b'\n' | b'\0'))
        .map_or(0, |i| i + 1)
}

/// The message of a datagram, cut to `max` bytes; `None` when blank.
fn datagram(bytes: &[u8], max: usize) -> Option<&[u8]> {
    let len = trimmed_len(bytes);
    (len > 0).then(|| &bytes[..len.min(max)])
}
