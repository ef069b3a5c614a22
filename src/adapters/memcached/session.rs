//! One memcached connection: reads command lines (several may come in one
//! packet), answers each in order, and closes when the client quits, sends
//! something it cannot follow, or shutdown begins. A command being answered is
//! finished first: a message enqueued always gets its `STORED` written.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tracing::Instrument;

use super::Counters;
use super::command::{self, Command, LineError, MAX_LINE, Verb};
use super::reply::{failure, one_line};
use crate::AppState;
use crate::acl::Category;
use crate::adapters::access;
use crate::broker::QueueName;
use crate::store::NewMessage;

/// Replies gathered past this many bytes are written before the next command.
const FLUSH_AT: usize = 64 * 1024;
/// Room made in the input buffer before each read.
const READ_CHUNK: usize = 4096;
/// Most room made at once for a data block still coming.
const MAX_RESERVE: usize = 64 * 1024;
/// The first byte of every request of memcached's binary protocol.
const BINARY_MAGIC: u8 = 0x80;
/// Longest a closing connection is kept to read what its client still sends.
const LINGER: Duration = Duration::from_secs(2);
/// The suffix of a key that peeks at its queue (Kestrel's convention).
const PEEK: &[u8] = b"/peek";

/// What a step through the input came to.
enum Step {
    /// A command was answered; there may be another.
    Done,
    /// The input holds no whole command: read more.
    More,
    /// Close the connection once the replies are written.
    Close,
}

/// Serves one client until it leaves or shutdown begins.
pub async fn serve(
    socket: TcpStream,
    peer: SocketAddr,
    state: AppState,
    counters: Arc<Counters>,
    stop: watch::Receiver<bool>,
) {
    // Replies must not wait for Nagle.
    let _ = socket.set_nodelay(true);
    let client = peer.ip().to_canonical();
    let session = Session {
        socket,
        client,
        state,
        counters,
        input: BytesMut::with_capacity(READ_CHUNK),
        output: Vec::new(),
        swallow: 0,
        started: false,
    };
    let span = tracing::debug_span!("memcached", %client);
    session.run(stop).instrument(span).await;
}

struct Session {
    socket: TcpStream,
    client: IpAddr,
    state: AppState,
    counters: Arc<Counters>,
    input: BytesMut,
    output: Vec<u8>,
    /// Bytes of a refused data block still to drop as they arrive.
    swallow: usize,
    /// Whether the first byte has been looked at.
    started: bool,
}

impl Session {
    async fn run(mut self, mut stop: watch::Receiver<bool>) {
        loop {
            loop {
                // Between commands, shutdown wins: what is not answered yet
                // was not acted on either.
                if *stop.borrow() {
                    let _ = self.flush().await;
                    return;
                }
                match self.step().await {
                    Step::Done if self.output.len() >= FLUSH_AT => {
                        if self.flush().await.is_err() {
                            return;
                        }
                    }
                    Step::Done => {}
                    Step::More => break,
                    Step::Close => {
                        self.close().await;
                        return;
                    }
                }
            }
            if self.flush().await.is_err() {
                return;
            }
            self.input.reserve(READ_CHUNK);
            let read = tokio::select! {
                read = self.socket.read_buf(&mut self.input) => read,
                // Sent once, at shutdown (or the sender is gone: shutting down too).
                _ = stop.changed() => return,
            };
            match read {
                Ok(0) => return,
                Ok(_) => {}
                Err(e) => {
                    tracing::debug!(error = %e, "memcached connection failed");
                    return;
                }
            }
        }
    }

    /// Writes the last replies and closes, reading (for a little while) what
    /// the client still sends: closing with unread input would reset the
    /// connection, and the client could lose those replies.
    async fn close(mut self) {
        let closing = async {
            if self.flush().await.is_ok() {
                let _ = self.socket.shutdown().await;
                let mut rest = [0u8; 1024];
                while let Ok(1..) = self.socket.read(&mut rest).await {}
            }
        };
        let _ = tokio::time::timeout(LINGER, closing).await;
    }

    async fn flush(&mut self) -> std::io::Result<()> {
        if !self.output.is_empty() {
            self.socket.write_all(&self.output).await?;
            self.output.clear();
        }
        Ok(())
    }

    /// Adds a reply line, unless the command asked for none.
    fn reply(&mut self, noreply: bool, line: &str) {
        if noreply {
            tracing::debug!(reply = line, "reply left out (noreply)");
            return;
        }
        self.output.extend_from_slice(line.as_bytes());
        self.output.extend_from_slice(b"\r\n");
    }

    /// Answers the next command if the input holds it whole.
    async fn step(&mut self) -> Step {
        if self.swallow > 0 {
            let n = self.swallow.min(self.input.len());
            self.input.advance(n);
            self.swallow -= n;
            if self.swallow > 0 {
                return Step::More;
            }
        }
        let Some(&first) = self.input.first() else {
            return Step::More;
        };
        if !self.started {
            self.started = true;
            if first == BINARY_MAGIC {
                tracing::debug!(
                    "binary protocol request: closing (only the text protocol is spoken)"
                );
                return Step::Close;
            }
        }
        let window = &self.input[..self.input.len().min(MAX_LINE + 2)];
        let Some(end) = window.iter().position(|&b| b == b'\n') else {
            if self.input.len() >= MAX_LINE + 2 {
                self.reply(false, "CLIENT_ERROR line too long");
                return Step::Close;
            }
            return Step::More;
        };
        let line_len = end + 1;
        let mut line = self.input[..end].to_vec();
        if line.last() == Some(&b'\r') {
            line.pop();
        }
        if line.len() > MAX_LINE {
            self.reply(false, "CLIENT_ERROR line too long");
            return Step::Close;
        }
        let parsed = command::parse(&line);
        // A storage command's line stays in until its data block is in too.
        if !matches!(parsed, Ok(Command::Store { .. })) {
            self.input.advance(line_len);
        }
        match parsed {
            Ok(Command::Store {
                verb,
                key,
                exptime,
                bytes,
                noreply,
            }) => {
                return self
                    .store(line_len, verb, key, exptime, bytes, noreply)
                    .await;
            }
            Err(LineError::Unknown) => self.reply(false, "ERROR"),
            Err(LineError::Malformed { reason, noreply }) => {
                self.reply(noreply, &format!("CLIENT_ERROR {reason}"));
            }
            Ok(Command::Get { keys, cas }) => self.get(&keys, cas).await,
            Ok(Command::Delete { key, noreply }) => self.delete(key, noreply).await,
            Ok(Command::Stats { detail }) => self.stats(detail).await,
            Ok(Command::Version) => {
                self.reply(false, concat!("VERSION ", env!("CARGO_PKG_VERSION")));
            }
            Ok(Command::Verbosity { noreply }) => self.reply(noreply, "OK"),
            Ok(Command::Quit) => return Step::Close,
            Ok(Command::FlushAll { noreply }) => self.reply(
                noreply,
                "CLIENT_ERROR flush_all is not supported: it would empty every queue; \
                 purge one queue with delete <queue>",
            ),
            Ok(Command::Unsupported { name, noreply }) => self.reply(
                noreply,
                &format!("CLIENT_ERROR {name} is not supported: queue messages cannot be changed"),
            ),
        }
        Step::Done
    }

    /// A storage command whose line is `line_len` bytes: once its data block
    /// is in, enqueues it (`set`, `add`) or refuses it.
    async fn store(
        &mut self,
        line_len: usize,
        verb: Verb,
        key: &[u8],
        exptime: i64,
        bytes: usize,
        noreply: bool,
    ) -> Step {
        if bytes > self.state.max_body {
            // As memcached does: the data is dropped as it comes, so that the
            // next line read is the next command.
            self.input.advance(line_len);
            self.swallow = bytes + 2;
            Counters::add(&self.counters.cmd_set, 1);
            self.reply(noreply, "SERVER_ERROR object too large for cache");
            return Step::Done;
        }
        let whole = line_len + bytes + 2;
        if self.input.len() < whole {
            // Room grows as the data comes, not as much as the client claims.
            self.input
                .reserve((whole - self.input.len()).min(MAX_RESERVE));
            return Step::More;
        }
        let block = self.input.split_to(whole);
        let data = &block[line_len..line_len + bytes];
        Counters::add(&self.counters.cmd_set, 1);
        if &block[line_len + bytes..] != b"\r\n" {
            self.reply(noreply, "CLIENT_ERROR bad data chunk");
            return Step::Done;
        }
        match verb {
            Verb::Set | Verb::Add => {}
            Verb::Replace | Verb::Append | Verb::Prepend | Verb::Cas => {
                let name = verb.name();
                self.reply(
                    noreply,
                    &format!(
                        "CLIENT_ERROR {name} is not supported: queue messages cannot be changed; \
                         set enqueues"
                    ),
                );
                return Step::Done;
            }
        }
        let queue = match command::queue_name(key) {
            Ok(queue) => queue,
            Err(reason) => {
                self.reply(noreply, &format!("CLIENT_ERROR {reason}"));
                return Step::Done;
            }
        };
        if let Err(why) = access::check(&self.state, Category::RestProducer, self.client) {
            self.reply(noreply, &format!("CLIENT_ERROR access denied: {why}"));
            return Step::Done;
        }
        let Ok(value) = std::str::from_utf8(data) else {
            self.reply(noreply, "CLIENT_ERROR the data must be UTF-8 text");
            return Step::Done;
        };
        if value.is_empty() {
            self.reply(
                noreply,
                "CLIENT_ERROR the data is empty: a message needs a value",
            );
            return Step::Done;
        }
        let now = crate::store::now_millis() / 1000;
        let ttl = match command::ttl(exptime, now) {
            Ok(ttl) => ttl,
            Err(reason) => {
                self.reply(noreply, &format!("CLIENT_ERROR {reason}"));
                return Step::Done;
            }
        };
        let message = NewMessage {
            value: value.to_owned(),
            ttl,
            delay: None,
        };
        match self.state.broker.publish(&queue, message).await {
            Ok(_) => self.reply(noreply, "STORED"),
            Err(e) => self.reply(noreply, &failure(&e)),
        }
        Step::Done
    }

    /// `get`/`gets`: takes the head of each queue named (peeks for
    /// `<q>/peek`), in order.
    async fn get(&mut self, keys: &[&[u8]], cas: bool) {
        let mut queues = Vec::with_capacity(keys.len());
        for &key in keys {
            let (name, peek) = match key.strip_suffix(PEEK) {
                Some(base) if !base.is_empty() => (base, true),
                Some(_) | None => (key, false),
            };
            match command::queue_name(name) {
                Ok(queue) => queues.push((key, queue, peek)),
                Err(reason) => {
                    self.reply(false, &format!("CLIENT_ERROR {reason}"));
                    return;
                }
            }
        }
        if let Err(why) = access::check(&self.state, Category::RestConsumer, self.client) {
            self.reply(false, &format!("CLIENT_ERROR access denied: {why}"));
            return;
        }
        Counters::add(&self.counters.cmd_get, keys.len() as u64);
        let mut values = Vec::new();
        let mut taken = 0u64;
        for (key, queue, peek) in queues {
            let got = if peek {
                self.state
                    .broker
                    .peek(&queue)
                    .await
                    .map(|head| head.map(|(message, _)| message))
            } else {
                self.state.broker.pop(&queue).await
            };
            match got {
                Ok(Some(message)) => {
                    taken += 1;
                    values.extend_from_slice(b"VALUE ");
                    values.extend_from_slice(key);
                    let head = if cas {
                        format!(" 0 {} {}\r\n", message.value.len(), message.id)
                    } else {
                        format!(" 0 {}\r\n", message.value.len())
                    };
                    values.extend_from_slice(head.as_bytes());
                    values.extend_from_slice(message.value.as_bytes());
                    values.extend_from_slice(b"\r\n");
                }
                Ok(None) => Counters::add(&self.counters.get_misses, 1),
                // Messages already taken are delivered rather than lost: the
                // answer ends with them, as if the remaining queues were empty.
                Err(e) if taken > 0 => {
                    tracing::warn!(error = %e, "memcached get failed part way; answering what was taken");
                    break;
                }
                Err(e) => {
                    self.reply(false, &failure(&e));
                    return;
                }
            }
        }
        Counters::add(&self.counters.get_hits, taken);
        self.output.extend_from_slice(&values);
        self.reply(false, "END");
    }

    /// `delete <q>`: purges the queue.
    async fn delete(&mut self, key: &[u8], noreply: bool) {
        let queue = match command::queue_name(key) {
            Ok(queue) => queue,
            Err(reason) => {
                self.reply(noreply, &format!("CLIENT_ERROR {reason}"));
                return;
            }
        };
        // As DELETE /q/<q> over HTTP: purging is the producers' to do.
        if let Err(why) = access::check(&self.state, Category::RestProducer, self.client) {
            self.reply(noreply, &format!("CLIENT_ERROR access denied: {why}"));
            return;
        }
        match self.state.broker.purge(&queue).await {
            Ok(true) => self.reply(noreply, "DELETED"),
            Ok(false) => self.reply(noreply, "NOT_FOUND"),
            Err(e) => self.reply(noreply, &failure(&e)),
        }
    }

    /// `stats`: the door's counters and each queue's length.
    async fn stats(&mut self, detail: bool) {
        if let Err(why) = access::check(&self.state, Category::RestConsumer, self.client) {
            self.reply(false, &format!("CLIENT_ERROR access denied: {why}"));
            return;
        }
        if detail {
            // No sub-statistic (items, slabs, …) means anything for queues.
            self.reply(false, "END");
            return;
        }
        let queues = match self.state.broker.queues().await {
            Ok(queues) => queues,
            Err(e) => {
                self.reply(false, &failure(&e));
                return;
            }
        };
        let c = &self.counters;
        let now = crate::store::now_millis() / 1000;
        let items: u64 = queues.iter().map(|(_, info)| info.len).sum();
        let mut lines = vec![
            format!("pid {}", std::process::id()),
            format!("uptime {}", c.started.elapsed().as_secs()),
            format!("time {now}"),
            format!("version {}", env!("CARGO_PKG_VERSION")),
            format!("curr_connections {}", Counters::read(&c.curr_connections)),
            format!("total_connections {}", Counters::read(&c.total_connections)),
            format!("cmd_get {}", Counters::read(&c.cmd_get)),
            format!("cmd_set {}", Counters::read(&c.cmd_set)),
            format!("get_hits {}", Counters::read(&c.get_hits)),
            format!("get_misses {}", Counters::read(&c.get_misses)),
            format!("curr_items {items}"),
        ];
        for (name, info) in &queues {
            // A name with a space (possible over HTTP) would break the line's
            // three words; such a queue is no memcached key anyway.
            if QueueName::parse(name).is_err() || name.contains(' ') {
                continue;
            }
            let name = one_line(name);
            lines.push(format!("queue_{name}_items {}", info.len));
            lines.push(format!("queue_{name}_inflight {}", info.inflight));
        }
        for line in lines {
            self.reply(false, &format!("STAT {line}"));
        }
        self.reply(false, "END");
    }
}
