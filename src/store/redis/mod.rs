//! The Redis store: the original RestMQ's keyspace on one Redis server, on a
//! client-side consistent-hash ring of servers, or on a Redis Cluster.
//!
//! Every multi-key step is one Lua script ([`scripts`]). A legacy RestMQ can
//! share the data: each reads what the other writes. Several restmq servers can
//! share it too: publishes and resumes are announced on the channel
//! `restmq:<db>:changed` (each server's dispatchers wake), and a broadcast
//! message one server streamed is shared on `restmq:<db>:streamed` for the
//! consumers of the others.
//!
//! On a ring, a queue whose owner changed (a server was added) is drained from
//! the servers that still hold its messages before its new owner, and its
//! counter on the new owner is raised past theirs, so no message is lost and no
//! key is reused.

mod keys;
mod ring;
mod scripts;

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::cluster_async::ClusterConnection;
use redis::{Cmd, Pipeline, RedisError, RedisFuture, Value};
use tokio::sync::{OnceCell, mpsc};

pub use self::keys::Naming;
use self::keys::QueueKeys;
use self::ring::Ring;
use super::{
    Message, NewMessage, Policy, QueueInfo, Status, Store, StoreError, StoreEvent, StoreFuture,
    now_millis,
};

/// Where publishes and resumes are announced, per database:
/// `restmq:<db>:changed` (pub/sub channels are shared by every database).
fn changed_channel(db: i64) -> String {
    format!("restmq:{db}:changed")
}

/// Where broadcast messages one server streamed are shared with the others.
fn streamed_channel(db: i64) -> String {
    format!("restmq:{db}:streamed")
}
/// Pause between attempts to (re)subscribe to a server's announcements.
const RESUBSCRIBE_DELAY: Duration = Duration::from_millis(500);

/// How restmq connects to Redis.
#[derive(Debug, Clone)]
pub struct RedisOptions {
    /// Connections per server (each multiplexes many requests).
    pub pool: usize,
    /// Longest wait for a connection or an answer.
    pub timeout: Duration,
}

impl Default for RedisOptions {
    fn default() -> Self {
        RedisOptions {
            pool: 10,
            timeout: Duration::from_secs(2),
        }
    }
}

/// Which Redis servers, and how they are used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RedisTarget {
    /// One server, or several as a consistent-hash ring (URLs).
    Ring(Vec<String>),
    /// A Redis Cluster, reached through any of these nodes.
    Cluster(Vec<String>),
}

fn redis_error(e: RedisError) -> StoreError {
    StoreError::Unavailable(format!("redis: {e}"))
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// A connection to a single server or to the cluster.
#[derive(Clone)]
enum Conn {
    Node(ConnectionManager),
    Cluster(ClusterConnection),
}

/// A connection that found its socket dead (Redis restarted, say) fails its
/// next command once, then reconnects: that command is sent once more. After a
/// restart it never reached the new Redis; when a connection drops after Redis
/// ran it, sending it again is what a client answered 503 would do anyway.
fn resend(e: &RedisError) -> bool {
    e.is_connection_dropped()
}

impl ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        Box::pin(async move {
            match self.send(cmd).await {
                Err(e) if resend(&e) => self.send(cmd).await,
                answer => answer,
            }
        })
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        Box::pin(async move {
            match self.send_all(pipeline, offset, count).await {
                Err(e) if resend(&e) => self.send_all(pipeline, offset, count).await,
                answer => answer,
            }
        })
    }

    fn get_db(&self) -> i64 {
        match self {
            Conn::Node(c) => c.get_db(),
            Conn::Cluster(c) => c.get_db(),
        }
    }
}

impl Conn {
    async fn send(&mut self, cmd: &Cmd) -> Result<Value, RedisError> {
        match self {
            Conn::Node(c) => c.req_packed_command(cmd).await,
            Conn::Cluster(c) => c.req_packed_command(cmd).await,
        }
    }

    async fn send_all(
        &mut self,
        pipeline: &Pipeline,
        offset: usize,
        count: usize,
    ) -> Result<Vec<Value>, RedisError> {
        match self {
            Conn::Node(c) => c.req_packed_commands(pipeline, offset, count).await,
            Conn::Cluster(c) => c.req_packed_commands(pipeline, offset, count).await,
        }
    }
}

/// One Redis server: a few multiplexed connections, used in turn.
struct Node {
    url: String,
    db: i64,
    client: redis::Client,
    conns: Vec<ConnectionManager>,
    next: AtomicUsize,
}

impl Node {
    fn new(url: &str, options: &RedisOptions) -> Result<Node, StoreError> {
        let client = redis::Client::open(url)
            .map_err(|e| StoreError::Unavailable(format!("invalid Redis URL {url}: {e}")))?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(options.timeout))
            .set_response_timeout(Some(options.timeout))
            .set_number_of_retries(1)
            .set_max_delay(options.timeout);
        let conns = (0..options.pool.max(1))
            .map(|_| ConnectionManager::new_lazy_with_config(client.clone(), config.clone()))
            .collect::<Result<Vec<_>, _>>()
            .map_err(redis_error)?;
        Ok(Node {
            url: url.to_owned(),
            db: client.get_connection_info().redis_settings().db(),
            client,
            conns,
            next: AtomicUsize::new(0),
        })
    }

    fn conn(&self) -> Conn {
        let at = self.next.fetch_add(1, Ordering::Relaxed) % self.conns.len();
        Conn::Node(self.conns[at].clone())
    }
}

/// Where a queue's messages are on a ring.
struct Route {
    owner: usize,
    /// Other servers still holding messages of the queue (a previous ring), oldest
    /// first; drained before the owner.
    holders: Mutex<Vec<usize>>,
}

struct RingBackend {
    nodes: Vec<Node>,
    ring: Ring,
    routes: Mutex<HashMap<String, Arc<Route>>>,
}

struct ClusterBackend {
    client: redis::cluster::ClusterClient,
    urls: Vec<String>,
    conn: OnceCell<ClusterConnection>,
}

enum Backend {
    Ring(RingBackend),
    Cluster(Box<ClusterBackend>),
}

/// Queue storage on Redis.
pub struct RedisStore {
    backend: Backend,
    naming: Naming,
    /// This process, to tell its own shared messages from others'.
    origin: String,
    events: Mutex<Option<mpsc::UnboundedReceiver<StoreEvent>>>,
    description: String,
}

/// Parses the key, value, ttl triples a script returns.
fn messages(keys: &QueueKeys, values: Vec<Value>, now: u64) -> Result<Vec<Message>, StoreError> {
    let bad = || StoreError::Corrupted("unexpected answer from a Redis script".into());
    let mut out = Vec::with_capacity(values.len() / 3);
    for triple in values.chunks(3) {
        let [
            Value::BulkString(key),
            Value::BulkString(value),
            Value::Int(ttl),
        ] = triple
        else {
            return Err(bad());
        };
        let id = keys
            .id_of(key)
            .ok_or_else(|| StoreError::Corrupted(format!("a foreign key in {}", keys.list)))?;
        out.push(Message {
            id,
            value: String::from_utf8_lossy(value).into_owned(),
            expires_at: expiry(now, *ttl),
        });
    }
    Ok(out)
}

/// An absolute expiry from a remaining ttl in ms (negative: none).
fn expiry(now: u64, ttl_ms: i64) -> u64 {
    u64::try_from(ttl_ms).map_or(0, |ttl| now.saturating_add(ttl.max(1)))
}

fn status_of(value: Option<String>) -> Option<Status> {
    match value.as_deref().map(str::trim) {
        Some("1") => Some(Status::Started),
        Some("0") => Some(Status::Stopped),
        _ => None,
    }
}

fn policy_of(value: Option<String>) -> Option<Policy> {
    value
        .as_deref()
        .and_then(|v| v.trim().parse::<u8>().ok())
        .and_then(Policy::from_code)
}

/// Counter, length, status and policy of a queue on one server.
async fn read_info(conn: &mut Conn, keys: &QueueKeys) -> Result<QueueInfo, StoreError> {
    let (last, len, status, policy): (Option<u64>, u64, Option<String>, Option<String>) =
        redis::pipe()
            .get(&keys.counter)
            .llen(&keys.list)
            .get(&keys.status)
            .get(&keys.policy)
            .query_async(conn)
            .await
            .map_err(redis_error)?;
    Ok(QueueInfo {
        len,
        last_id: last.unwrap_or(0),
        status: status_of(status),
        policy: policy_of(policy),
    })
}

fn known(info: &QueueInfo) -> bool {
    info.last_id > 0 || info.len > 0 || info.status.is_some() || info.policy.is_some()
}

impl RedisStore {
    /// Connects (lazily: it starts even while Redis is unreachable) to `target`.
    pub fn open(target: &RedisTarget, options: &RedisOptions) -> Result<RedisStore, StoreError> {
        let (tx, rx) = mpsc::unbounded_channel();
        // A random name: RandomState is seeded from the OS's randomness.
        let origin = format!(
            "{:x}-{:x}",
            std::process::id(),
            std::hash::BuildHasher::hash_one(&std::collections::hash_map::RandomState::new(), 0u8)
        );
        let (backend, naming, description) = match target {
            RedisTarget::Ring(urls) if !urls.is_empty() => {
                let nodes = urls
                    .iter()
                    .map(|url| Node::new(url, options))
                    .collect::<Result<Vec<_>, _>>()?;
                let description = if urls.len() == 1 {
                    format!("redis {}", urls[0])
                } else {
                    format!("redis ring {}", urls.join(","))
                };
                let backend = RingBackend {
                    ring: Ring::new(urls),
                    nodes,
                    routes: Mutex::new(HashMap::new()),
                };
                for node in &backend.nodes {
                    tokio::spawn(subscribe_loop(
                        vec![node.client.clone()],
                        node.db,
                        origin.clone(),
                        tx.clone(),
                    ));
                }
                (Backend::Ring(backend), Naming::Legacy, description)
            }
            RedisTarget::Cluster(urls) if !urls.is_empty() => {
                let client = redis::cluster::ClusterClientBuilder::new(urls.clone())
                    .connection_timeout(options.timeout)
                    .response_timeout(options.timeout)
                    .build()
                    .map_err(|e| StoreError::Unavailable(format!("invalid cluster: {e}")))?;
                let nodes = urls
                    .iter()
                    .map(|url| {
                        redis::Client::open(url.as_str()).map_err(|e| {
                            StoreError::Unavailable(format!("invalid Redis URL {url}: {e}"))
                        })
                    })
                    .collect::<Result<Vec<_>, _>>()?;
                // Every node hears every PUBLISH of the cluster: one listening
                // node is enough, the others stand by for when it fails.
                tokio::spawn(subscribe_loop(nodes, 0, origin.clone(), tx.clone()));
                let backend = Box::new(ClusterBackend {
                    client,
                    urls: urls.clone(),
                    conn: OnceCell::new(),
                });
                let description = format!("redis cluster {}", urls.join(","));
                (Backend::Cluster(backend), Naming::Tagged, description)
            }
            RedisTarget::Ring(_) | RedisTarget::Cluster(_) => {
                return Err(StoreError::Unavailable("no Redis server given".into()));
            }
        };
        Ok(RedisStore {
            backend,
            naming,
            origin,
            events: Mutex::new(Some(rx)),
            description,
        })
    }

    fn keys(&self, queue: &str) -> QueueKeys {
        self.naming.keys(queue)
    }

    async fn cluster_conn(cluster: &ClusterBackend) -> Result<Conn, StoreError> {
        let conn = cluster
            .conn
            .get_or_try_init(|| cluster.client.get_async_connection())
            .await
            .map_err(|e| {
                StoreError::Unavailable(format!(
                    "redis cluster {} unreachable: {e}",
                    cluster.urls.join(",")
                ))
            })?;
        Ok(Conn::Cluster(conn.clone()))
    }

    /// Where `queue` lives: on a ring, its owner and the servers still holding
    /// some of its messages (found, and the owner's counter raised past theirs,
    /// on first use); on a cluster, the cluster.
    async fn route(&self, queue: &str) -> Result<(Conn, Vec<(usize, Conn)>), StoreError> {
        let ring = match &self.backend {
            Backend::Cluster(cluster) => {
                return Ok((Self::cluster_conn(cluster).await?, Vec::new()));
            }
            Backend::Ring(ring) => ring,
        };
        let route = self.ring_route(ring, queue).await?;
        let holders = lock(&route.holders)
            .iter()
            .map(|&i| (i, ring.nodes[i].conn()))
            .collect();
        Ok((ring.nodes[route.owner].conn(), holders))
    }

    async fn ring_route(&self, ring: &RingBackend, queue: &str) -> Result<Arc<Route>, StoreError> {
        if let Some(route) = lock(&ring.routes).get(queue) {
            return Ok(route.clone());
        }
        let owner = ring.ring.owner(queue);
        let mut holders = Vec::new();
        if ring.nodes.len() > 1 {
            let keys = self.keys(queue);
            let mut found = Vec::new();
            for (index, node) in ring.nodes.iter().enumerate() {
                found.push((index, read_info(&mut node.conn(), &keys).await?));
            }
            let highest = found
                .iter()
                .map(|(_, info)| info.last_id)
                .max()
                .unwrap_or(0);
            let mut elsewhere: Vec<(usize, QueueInfo)> = found
                .iter()
                .filter(|(i, info)| *i != owner && known(info))
                .copied()
                .collect();
            if !elsewhere.is_empty() {
                let mut conn = ring.nodes[owner].conn();
                scripts::RAISE_COUNTER
                    .key(&keys.counter)
                    .arg(highest)
                    .invoke_async::<()>(&mut conn)
                    .await
                    .map_err(redis_error)?;
                let owned = found[owner].1;
                let carried = elsewhere.iter().map(|(_, info)| info);
                let mut pipe = redis::pipe();
                if owned.status.is_none() {
                    if let Some(status) = carried.clone().find_map(|info| info.status) {
                        pipe.set(&keys.status, status.code()).ignore();
                    }
                }
                if owned.policy.is_none() {
                    if let Some(policy) = carried.clone().find_map(|info| info.policy) {
                        pipe.set(&keys.policy, policy.code()).ignore();
                    }
                }
                if highest > 0 {
                    pipe.sadd("QUEUESET", queue).ignore();
                }
                pipe.query_async::<()>(&mut conn)
                    .await
                    .map_err(redis_error)?;
                elsewhere.sort_by_key(|(_, info)| info.last_id);
                holders = elsewhere
                    .into_iter()
                    .filter(|(_, info)| info.len > 0)
                    .map(|(i, _)| i)
                    .collect();
            }
        }
        let route = Arc::new(Route {
            owner,
            holders: Mutex::new(holders),
        });
        Ok(lock(&ring.routes)
            .entry(queue.to_owned())
            .or_insert(route)
            .clone())
    }

    /// A holder of `queue` turned out empty: drain it no more.
    fn drained(&self, queue: &str, holder: usize) {
        if let Backend::Ring(ring) = &self.backend {
            if let Some(route) = lock(&ring.routes).get(queue) {
                lock(&route.holders).retain(|&i| i != holder);
            }
        }
    }

    /// The channel announcing changes of `queue`.
    fn changed_for(&self, queue: &str) -> String {
        changed_channel(self.db_of(queue))
    }

    /// The database `queue` lives in (a cluster has only 0).
    fn db_of(&self, queue: &str) -> i64 {
        match &self.backend {
            Backend::Ring(ring) => ring.nodes[ring.ring.owner(queue)].db,
            Backend::Cluster(_) => 0,
        }
    }

    async fn all_conns(&self) -> Result<Vec<Conn>, StoreError> {
        match &self.backend {
            Backend::Ring(ring) => Ok(ring.nodes.iter().map(Node::conn).collect()),
            Backend::Cluster(cluster) => Ok(vec![Self::cluster_conn(cluster).await?]),
        }
    }

    async fn info(&self, queue: &str) -> Result<Option<QueueInfo>, StoreError> {
        let keys = self.keys(queue);
        let (mut owner, holders) = self.route(queue).await?;
        let mut info = read_info(&mut owner, &keys).await?;
        for (_, mut holder) in holders {
            info.len += read_info(&mut holder, &keys).await?.len;
        }
        Ok(known(&info).then_some(info))
    }

    async fn pop_from(&self, queue: &str, max: usize) -> Result<Vec<Message>, StoreError> {
        let keys = self.keys(queue);
        let (mut owner, holders) = self.route(queue).await?;
        let mut out = Vec::new();
        for (index, mut holder) in holders {
            let got = self.pop_one(&mut holder, &keys, max - out.len()).await?;
            if got.is_empty() {
                self.drained(queue, index);
                continue;
            }
            out.extend(got);
            if out.len() >= max {
                return Ok(out);
            }
        }
        let got = self.pop_one(&mut owner, &keys, max - out.len()).await?;
        out.extend(got);
        Ok(out)
    }

    async fn pop_one(
        &self,
        conn: &mut Conn,
        keys: &QueueKeys,
        max: usize,
    ) -> Result<Vec<Message>, StoreError> {
        let values: Vec<Value> = scripts::POP
            .key(&keys.list)
            .arg(max)
            .invoke_async(conn)
            .await
            .map_err(redis_error)?;
        messages(keys, values, now_millis())
    }
}

/// Listens to a server's announcements (trying `clients` in turn), resubscribing
/// after failures, until the store (the receiving end) is gone.
async fn subscribe_loop(
    clients: Vec<redis::Client>,
    db: i64,
    origin: String,
    events: mpsc::UnboundedSender<StoreEvent>,
) {
    use futures_util::StreamExt;
    let (changed, streamed) = (changed_channel(db), streamed_channel(db));
    let mut attempt = 0usize;
    while !events.is_closed() {
        let client = &clients[attempt % clients.len()];
        attempt += 1;
        let mut pubsub = match client.get_async_pubsub().await {
            Ok(pubsub) => pubsub,
            Err(e) => {
                tracing::debug!(error = %e, "cannot subscribe to Redis announcements yet");
                tokio::time::sleep(RESUBSCRIBE_DELAY).await;
                continue;
            }
        };
        if let Err(e) = pubsub.subscribe(&[&changed, &streamed]).await {
            tracing::debug!(error = %e, "cannot subscribe to Redis announcements yet");
            tokio::time::sleep(RESUBSCRIBE_DELAY).await;
            continue;
        }
        // Something may have changed while we were not listening.
        if events.send(StoreEvent::Resync).is_err() {
            return;
        }
        let mut stream = pubsub.on_message();
        while let Some(message) = stream.next().await {
            let channel = message.get_channel_name();
            let event = if channel == changed {
                Some(StoreEvent::Changed(
                    String::from_utf8_lossy(message.get_payload_bytes()).into_owned(),
                ))
            } else if channel == streamed {
                decode_streamed(message.get_payload_bytes(), &origin)
            } else {
                None
            };
            if let Some(event) = event {
                if events.send(event).is_err() {
                    return;
                }
            }
        }
        tracing::warn!("lost the Redis announcements; resubscribing");
        tokio::time::sleep(RESUBSCRIBE_DELAY).await;
    }
}

/// `origin \n queue \n [[id, value, expires_at], …]`; `None` for our own.
fn encode_streamed(origin: &str, queue: &str, messages: &[Message]) -> String {
    let list: Vec<(u64, &str, u64)> = messages
        .iter()
        .map(|m| (m.id, m.value.as_str(), m.expires_at))
        .collect();
    let json = serde_json::to_string(&list).unwrap_or_else(|_| "[]".to_owned());
    format!("{origin}\n{queue}\n{json}")
}

fn decode_streamed(payload: &[u8], origin: &str) -> Option<StoreEvent> {
    let text = std::str::from_utf8(payload).ok()?;
    let mut parts = text.splitn(3, '\n');
    let (from, queue, json) = (parts.next()?, parts.next()?, parts.next()?);
    if from == origin {
        return None;
    }
    let list: Vec<(u64, String, u64)> = serde_json::from_str(json).ok()?;
    let messages = list
        .into_iter()
        .map(|(id, value, expires_at)| Message {
            id,
            value,
            expires_at,
        })
        .collect();
    Some(StoreEvent::Streamed {
        queue: queue.to_owned(),
        messages,
    })
}

impl Store for RedisStore {
    fn describe(&self) -> String {
        self.description.clone()
    }

    fn publish<'a>(
        &'a self,
        queue: &'a str,
        messages: Vec<NewMessage>,
    ) -> StoreFuture<'a, Vec<u64>> {
        Box::pin(async move {
            let keys = self.keys(queue);
            let (mut conn, _) = self.route(queue).await?;
            let cluster = matches!(self.backend, Backend::Cluster(_));
            let mut invocation = scripts::PUBLISH.prepare_invoke();
            invocation
                .key(&keys.counter)
                .key(&keys.list)
                .key(&keys.status)
                .arg(&keys.prefix)
                .arg(queue)
                .arg(if cluster { "0" } else { "1" })
                .arg(self.changed_for(queue));
            for message in &messages {
                invocation.arg(&message.value).arg(message.ttl.unwrap_or(0));
            }
            let ids: Vec<u64> = invocation
                .invoke_async(&mut conn)
                .await
                .map_err(redis_error)?;
            // On a cluster QUEUESET lives in another slot than the queue's keys.
            if cluster && ids.first() == Some(&1) {
                redis::cmd("SADD")
                    .arg("QUEUESET")
                    .arg(queue)
                    .query_async::<()>(&mut conn)
                    .await
                    .map_err(redis_error)?;
            }
            Ok(ids)
        })
    }

    fn pop<'a>(&'a self, queue: &'a str) -> StoreFuture<'a, Option<Message>> {
        Box::pin(async move { Ok(self.pop_from(queue, 1).await?.into_iter().next()) })
    }

    fn pop_many<'a>(&'a self, queue: &'a str, max: usize) -> StoreFuture<'a, Vec<Message>> {
        Box::pin(async move { self.pop_from(queue, max.max(1)).await })
    }

    fn restore<'a>(&'a self, queue: &'a str, mut messages: Vec<Message>) -> StoreFuture<'a, ()> {
        Box::pin(async move {
            let keys = self.keys(queue);
            let (mut conn, _) = self.route(queue).await?;
            let now = now_millis();
            messages.retain(|m| m.expires_at == 0 || m.expires_at > now);
            if messages.is_empty() {
                return Ok(());
            }
            // Highest first: each goes to the head, so the lowest ends up first.
            messages.sort_by_key(|m| std::cmp::Reverse(m.id));
            let mut invocation = scripts::RESTORE.prepare_invoke();
            invocation
                .key(&keys.list)
                .arg(&keys.prefix)
                .arg(self.changed_for(queue))
                .arg(queue);
            for message in &messages {
                let ttl = if message.expires_at == 0 {
                    -1
                } else {
                    i64::try_from(message.expires_at - now).unwrap_or(i64::MAX)
                };
                invocation.arg(message.id).arg(&message.value).arg(ttl);
            }
            invocation
                .invoke_async::<()>(&mut conn)
                .await
                .map_err(redis_error)
        })
    }

    fn peek<'a>(&'a self, queue: &'a str) -> StoreFuture<'a, Option<(Message, u64)>> {
        Box::pin(async move {
            let keys = self.keys(queue);
            let (owner, holders) = self.route(queue).await?;
            let mut candidates: Vec<(Option<usize>, Conn)> =
                holders.into_iter().map(|(i, c)| (Some(i), c)).collect();
            candidates.push((None, owner));
            for (holder, mut conn) in candidates {
                let answer: Option<(Vec<u8>, Vec<u8>, u64, i64)> = scripts::PEEK
                    .key(&keys.list)
                    .invoke_async(&mut conn)
                    .await
                    .map_err(redis_error)?;
                match answer {
                    Some((key, value, count, ttl)) => {
                        let id = keys.id_of(&key).ok_or_else(|| {
                            StoreError::Corrupted(format!("a foreign key in {}", keys.list))
                        })?;
                        let message = Message {
                            id,
                            value: String::from_utf8_lossy(&value).into_owned(),
                            expires_at: expiry(now_millis(), ttl),
                        };
                        return Ok(Some((message, count)));
                    }
                    None => {
                        if let Some(holder) = holder {
                            self.drained(queue, holder);
                        }
                    }
                }
            }
            Ok(None)
        })
    }

    fn delete<'a>(&'a self, queue: &'a str, id: u64) -> StoreFuture<'a, bool> {
        Box::pin(async move {
            let keys = self.keys(queue);
            let (owner, holders) = self.route(queue).await?;
            let message = keys.message(id);
            for mut conn in std::iter::once(owner).chain(holders.into_iter().map(|(_, c)| c)) {
                let deleted: u8 = scripts::DELETE
                    .key(&keys.list)
                    .key(&message)
                    .invoke_async(&mut conn)
                    .await
                    .map_err(redis_error)?;
                if deleted == 1 {
                    return Ok(true);
                }
            }
            Ok(false)
        })
    }

    fn purge<'a>(&'a self, queue: &'a str) -> StoreFuture<'a, bool> {
        Box::pin(async move {
            let keys = self.keys(queue);
            let (owner, holders) = self.route(queue).await?;
            let mut existed = false;
            for (holder, mut conn) in
                std::iter::once((None, owner)).chain(holders.into_iter().map(|(i, c)| (Some(i), c)))
            {
                let found: u8 = scripts::PURGE
                    .key(&keys.list)
                    .invoke_async(&mut conn)
                    .await
                    .map_err(redis_error)?;
                existed |= found == 1;
                if let Some(holder) = holder {
                    self.drained(queue, holder);
                }
            }
            Ok(existed)
        })
    }

    fn set_policy<'a>(&'a self, queue: &'a str, policy: Policy) -> StoreFuture<'a, ()> {
        Box::pin(async move {
            let keys = self.keys(queue);
            let (mut conn, _) = self.route(queue).await?;
            redis::cmd("SET")
                .arg(&keys.policy)
                .arg(policy.code())
                .query_async::<()>(&mut conn)
                .await
                .map_err(redis_error)
        })
    }

    fn set_status<'a>(&'a self, queue: &'a str, status: Status) -> StoreFuture<'a, ()> {
        Box::pin(async move {
            let keys = self.keys(queue);
            let (mut conn, _) = self.route(queue).await?;
            let channel = if status == Status::Started {
                self.changed_for(queue)
            } else {
                String::new()
            };
            scripts::SET_STATUS
                .key(&keys.status)
                .arg(status.code())
                .arg(channel)
                .arg(queue)
                .invoke_async::<()>(&mut conn)
                .await
                .map_err(redis_error)
        })
    }

    fn queue<'a>(&'a self, queue: &'a str) -> StoreFuture<'a, Option<QueueInfo>> {
        Box::pin(async move { self.info(queue).await })
    }

    fn queues(&self) -> StoreFuture<'_, Vec<(String, QueueInfo)>> {
        Box::pin(async move {
            let mut names = BTreeSet::new();
            for mut conn in self.all_conns().await? {
                let members: Vec<Vec<u8>> = redis::cmd("SMEMBERS")
                    .arg("QUEUESET")
                    .query_async(&mut conn)
                    .await
                    .map_err(redis_error)?;
                names.extend(
                    members
                        .into_iter()
                        .map(|m| String::from_utf8_lossy(&m).into_owned()),
                );
            }
            let mut out = Vec::with_capacity(names.len());
            for name in names {
                if let Some(info) = self.info(&name).await? {
                    if info.listed() {
                        out.push((name, info));
                    }
                }
            }
            Ok(out)
        })
    }

    fn latest<'a>(&'a self, queue: &'a str, count: usize) -> StoreFuture<'a, Vec<Message>> {
        Box::pin(async move {
            let keys = self.keys(queue);
            let (owner, holders) = self.route(queue).await?;
            let now = now_millis();
            let mut out = Vec::new();
            for mut conn in std::iter::once(owner).chain(holders.into_iter().map(|(_, c)| c)) {
                if out.len() >= count {
                    break;
                }
                let wanted = isize::try_from(count - out.len()).unwrap_or(isize::MAX);
                let listed: Vec<Vec<u8>> = redis::cmd("LRANGE")
                    .arg(&keys.list)
                    .arg(0)
                    .arg(wanted - 1)
                    .query_async(&mut conn)
                    .await
                    .map_err(redis_error)?;
                if listed.is_empty() {
                    continue;
                }
                let values: Vec<Option<Vec<u8>>> = redis::cmd("MGET")
                    .arg(&listed)
                    .query_async(&mut conn)
                    .await
                    .map_err(redis_error)?;
                for (key, value) in listed.iter().zip(values) {
                    if let (Some(id), Some(value)) = (keys.id_of(key), value) {
                        out.push(Message {
                            id,
                            value: String::from_utf8_lossy(&value).into_owned(),
                            expires_at: expiry(now, -1),
                        });
                    }
                }
            }
            Ok(out)
        })
    }

    fn close(&self) -> StoreFuture<'_, ()> {
        Box::pin(async { Ok(()) })
    }

    fn ping(&self) -> StoreFuture<'_, ()> {
        Box::pin(async move {
            let targets: Vec<(String, Conn)> = match &self.backend {
                Backend::Ring(ring) => ring
                    .nodes
                    .iter()
                    .map(|node| (node.url.clone(), node.conn()))
                    .collect(),
                Backend::Cluster(cluster) => {
                    vec![(cluster.urls.join(","), Self::cluster_conn(cluster).await?)]
                }
            };
            for (url, mut conn) in targets {
                redis::cmd("PING")
                    .query_async::<()>(&mut conn)
                    .await
                    .map_err(|e| StoreError::Unavailable(format!("redis {url}: {e}")))?;
            }
            Ok(())
        })
    }

    fn events(&self) -> Option<mpsc::UnboundedReceiver<StoreEvent>> {
        lock(&self.events).take()
    }

    fn shared(&self) -> bool {
        true
    }

    fn share<'a>(&'a self, queue: &'a str, messages: &'a [Message]) -> StoreFuture<'a, ()> {
        Box::pin(async move {
            let payload = encode_streamed(&self.origin, queue, messages);
            let (mut conn, _) = self.route(queue).await?;
            redis::cmd("PUBLISH")
                .arg(streamed_channel(self.db_of(queue)))
                .arg(payload)
                .query_async::<()>(&mut conn)
                .await
                .map_err(redis_error)
        })
    }
}
