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

mod combine;
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
    Clock, Message, NewMessage, Policy, QueueConfig, QueueInfo, Received, Status, Store,
    StoreError, StoreEvent, StoreFuture,
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
/// Messages published by one script call of a round at most (a request with
/// more has a call of its own): bounds how long one call holds Redis.
const ROUND_MESSAGES: usize = 1000;

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

/// Queue storage on Redis. Cheap to clone: a round of pops runs in a task
/// of its own (see [`combine`]), which holds the store.
#[derive(Clone)]
pub struct RedisStore(Arc<Shared>);

impl std::ops::Deref for RedisStore {
    type Target = Shared;

    fn deref(&self) -> &Shared {
        &self.0
    }
}

impl RedisStore {
    /// Connects (lazily) to `target`.
    pub fn open(
        target: &RedisTarget,
        options: &RedisOptions,
        clock: Arc<dyn Clock>,
    ) -> Result<RedisStore, StoreError> {
        Shared::open(target, options, clock).map(|shared| RedisStore(Arc::new(shared)))
    }

    /// Pops up to `max` messages of `queue`, in one script call with the
    /// other pops of the queue arriving meanwhile (see [`combine`]).
    async fn pop_combined(&self, queue: &str, max: usize) -> Result<Vec<Message>, StoreError> {
        let make = || {
            let (store, name) = (self.clone(), queue.to_owned());
            let round = move |asks: Vec<usize>| {
                let (store, name) = (store.clone(), name.clone());
                async move {
                    let wanted = asks.iter().sum();
                    let taken = store.take(&name, wanted, &scripts::POP, &[]).await;
                    combine::shares(
                        &asks,
                        taken.map(|t| t.into_iter().map(|(m, _)| m).collect()),
                    )
                }
            };
            let (store, name) = (self.clone(), queue.to_owned());
            let restore = move |gone: Vec<Vec<Message>>| {
                let (store, name) = (store.clone(), name.clone());
                async move { Store::restore(&store, &name, gone.concat()).await }
            };
            (round, restore)
        };
        self.pops.run(queue, max, make).await
    }

    /// Publishes `messages` to `queue`, in one script call with the other
    /// publishes of the queue arriving meanwhile (see [`combine`]).
    async fn publish_combined(
        &self,
        queue: &str,
        messages: Vec<NewMessage>,
    ) -> Result<Vec<u64>, StoreError> {
        let make = || {
            let (store, name) = (self.clone(), queue.to_owned());
            let round = move |asks: Vec<Vec<NewMessage>>| {
                let (store, name) = (store.clone(), name.clone());
                async move { store.publish_round(&name, asks).await }
            };
            // A publish whose caller went away is published all the same.
            let gone = |_: Vec<Vec<u64>>| async { Ok(()) };
            (round, gone)
        };
        self.publishes.run(queue, messages, make).await
    }

    /// Publishes each request of a round, all-or-none each: requests together
    /// in one call, up to [`ROUND_MESSAGES`] messages a call. When a queue's
    /// `max_len` refuses a call, its requests are tried one by one, so each is
    /// refused only if it would have been alone.
    async fn publish_round(
        &self,
        queue: &str,
        asks: Vec<Vec<NewMessage>>,
    ) -> Vec<Result<Vec<u64>, StoreError>> {
        let counts: Vec<usize> = asks.iter().map(Vec::len).collect();
        let all: Vec<NewMessage> = asks.into_iter().flatten().collect();
        let mut answers = Vec::with_capacity(counts.len());
        let (mut group, mut start) = (0, 0);
        while group < counts.len() {
            // The requests of this call: at least one, then while they fit.
            let mut end = group + 1;
            let mut size = counts[group];
            while end < counts.len() && size + counts[end] <= ROUND_MESSAGES {
                size += counts[end];
                end += 1;
            }
            let called = self.publish_many(queue, &all[start..start + size]).await;
            match called {
                Ok(ids) => {
                    let mut ids = ids.into_iter();
                    for &count in &counts[group..end] {
                        answers.push(Ok(ids.by_ref().take(count).collect()));
                    }
                }
                Err(StoreError::Full(_)) if end - group > 1 => {
                    let mut at = start;
                    for &count in &counts[group..end] {
                        answers.push(self.publish_many(queue, &all[at..at + count]).await);
                        at += count;
                    }
                }
                Err(e) => answers.extend(counts[group..end].iter().map(|_| Err(e.clone()))),
            }
            (group, start) = (end, start + size);
        }
        answers
    }
}

/// What a [`RedisStore`] holds.
pub struct Shared {
    backend: Backend,
    naming: Naming,
    clock: Arc<dyn Clock>,
    /// This process, to tell its own shared messages from others'.
    origin: String,
    events: Mutex<Option<mpsc::UnboundedReceiver<StoreEvent>>>,
    description: String,
    /// Messages this process moved to dead-letter queues.
    dead_lettered: super::DeadLettered,
    /// Pops arriving together, taken by one script call.
    pops: combine::Combiner<usize, Vec<Message>>,
    /// Publishes arriving together, appended by one script call.
    publishes: combine::Combiner<Vec<NewMessage>, Vec<u64>>,
}

/// Parses `per` values per message from a script's answer: key, value, expiry
/// (ms, 0: none), then numbers returned with the message.
fn parse_messages(
    keys: &QueueKeys,
    values: &[Value],
    per: usize,
) -> Result<Vec<(Message, Vec<i64>)>, StoreError> {
    let bad = || StoreError::Corrupted("unexpected answer from a Redis script".into());
    let mut out = Vec::with_capacity(values.len() / per.max(1));
    for chunk in values.chunks(per) {
        let (Value::BulkString(key), Value::BulkString(value)) = (&chunk[0], &chunk[1]) else {
            return Err(bad());
        };
        let numbers = chunk[2..]
            .iter()
            .map(|v| match v {
                Value::Int(n) => Ok(*n),
                _ => Err(bad()),
            })
            .collect::<Result<Vec<i64>, _>>()?;
        out.push(taken_message(keys, key, value, numbers)?);
    }
    Ok(out)
}

/// A message a script took, as its key, value and numbers (expiry in ms, 0:
/// none; then any other) came back, with those numbers.
fn taken_message(
    keys: &QueueKeys,
    key: &[u8],
    value: &[u8],
    numbers: Vec<i64>,
) -> Result<(Message, Vec<i64>), StoreError> {
    let id = keys
        .id_of(key)
        .ok_or_else(|| StoreError::Corrupted(format!("a foreign key in {}", keys.list)))?;
    let expires_at = numbers
        .first()
        .and_then(|&at| u64::try_from(at).ok())
        .unwrap_or(0);
    let message = Message {
        id,
        value: text(value),
        expires_at,
    };
    Ok((message, numbers))
}

/// A message's value as text. Values restmq wrote are UTF-8, and checking
/// that is several times cheaper than the lossy conversion's scan; another
/// client's bytes that are not UTF-8 get replacement characters.
fn text(value: &[u8]) -> String {
    match std::str::from_utf8(value) {
        Ok(valid) => valid.to_owned(),
        Err(_) => String::from_utf8_lossy(value).into_owned(),
    }
}

/// Bytes of the header a taking script packs before each message.
const PACKED_HEADER: usize = 24;

/// Parses the messages a taking script packed into one string (see the
/// scripts' `pack`): for each, its key's and value's lengths (little-endian
/// u32), its expiry (ms, 0: none) and receive count (little-endian doubles),
/// then the key and the value. Each comes with its expiry and receive count.
fn parse_packed(keys: &QueueKeys, rest: &[Value]) -> Result<Vec<(Message, Vec<i64>)>, StoreError> {
    let bad = || StoreError::Corrupted("unexpected answer from a Redis script".into());
    let mut packed: &[u8] = match rest {
        [Value::BulkString(packed)] => packed,
        _ => return Err(bad()),
    };
    let mut out = Vec::new();
    while !packed.is_empty() {
        let (header, body) = packed.split_at_checked(PACKED_HEADER).ok_or_else(bad)?;
        let u32_at = |at: usize| header[at..at + 4].try_into().map(u32::from_le_bytes);
        let f64_at = |at: usize| header[at..at + 8].try_into().map(f64::from_le_bytes);
        let (Ok(key_len), Ok(value_len), Ok(expiry), Ok(count)) =
            (u32_at(0), u32_at(4), f64_at(8), f64_at(16))
        else {
            return Err(bad());
        };
        let (key_len, value_len) = (key_len as usize, value_len as usize);
        let (key, body) = body.split_at_checked(key_len).ok_or_else(bad)?;
        let (value, body) = body.split_at_checked(value_len).ok_or_else(bad)?;
        // Whole numbers well within a double's exact range.
        let numbers = vec![expiry as i64, count as i64];
        out.push(taken_message(keys, key, value, numbers)?);
        packed = body;
    }
    Ok(out)
}

/// The header numbers of a script's answer, and the rest.
fn header(values: &[Value], count: usize) -> Result<(Vec<i64>, &[Value]), StoreError> {
    if values.len() < count {
        return Err(StoreError::Corrupted(
            "short answer from a Redis script".into(),
        ));
    }
    let numbers = values[..count]
        .iter()
        .map(|v| match v {
            Value::Int(n) => Ok(*n),
            _ => Err(StoreError::Corrupted(
                "unexpected answer from a Redis script".into(),
            )),
        })
        .collect::<Result<Vec<i64>, _>>()?;
    Ok((numbers, &values[count..]))
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

/// Message keys a [`scripts::PURGE_STEP`] deletes at most: about a
/// millisecond of Redis's time.
const PURGE_SLICE: usize = 1000;

/// Adds the eight keys every reliable-delivery script takes first.
fn with_keys<'a>(script: &'a redis::Script, keys: &'a QueueKeys) -> redis::ScriptInvocation<'a> {
    let mut invocation = script.prepare_invoke();
    for key in &keys.eight {
        invocation.key(key);
    }
    invocation
}

/// Runs [`scripts::ACK`] at one place: only checks, or applies. Answers the
/// numbers of the stale, absent and current receipts.
async fn ack_at(
    place: &mut Place,
    keys: &QueueKeys,
    now: u64,
    apply: bool,
    receipts: &[(u64, u32)],
) -> Result<(Vec<u64>, Vec<u64>, Vec<u64>), StoreError> {
    let mut invocation = with_keys(&scripts::ACK, keys);
    invocation.arg(&keys.prefix).arg(now).arg(u8::from(apply));
    for (id, delivery) in receipts {
        invocation.arg(*id).arg(*delivery);
    }
    invocation
        .invoke_async(&mut place.conn)
        .await
        .map_err(redis_error)
}

/// What a queue holds on one server.
async fn read_info(conn: &mut Conn, keys: &QueueKeys) -> Result<QueueInfo, StoreError> {
    let (last, status, policy): (Option<u64>, Option<String>, Option<String>) = redis::pipe()
        .get(&keys.counter)
        .get(&keys.status)
        .get(&keys.policy)
        .query_async(conn)
        .await
        .map_err(redis_error)?;
    let (len, inflight, delayed): (u64, u64, u64) = with_keys(&scripts::COUNTS, keys)
        .invoke_async(conn)
        .await
        .map_err(redis_error)?;
    Ok(QueueInfo {
        len,
        last_id: last.unwrap_or(0),
        status: status_of(status),
        policy: policy_of(policy),
        inflight,
        delayed,
    })
}

fn known(info: &QueueInfo) -> bool {
    info.last_id > 0
        || info.len + info.inflight + info.delayed > 0
        || info.status.is_some()
        || info.policy.is_some()
}

/// Members of a sorted set with their scores.
type Scored = Vec<(String, f64)>;

/// What a receipt asks of its delivery.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Change {
    /// Visible again (after a delay).
    Release,
    /// Hidden longer.
    Extend,
}

/// One server a queue's messages may be on: an old holder (a ring that grew),
/// or the owner.
struct Place {
    holder: Option<usize>,
    conn: Conn,
}

impl Shared {
    /// Connects (lazily: it starts even while Redis is unreachable) to `target`;
    /// it reads the time from `clock`.
    fn open(
        target: &RedisTarget,
        options: &RedisOptions,
        clock: Arc<dyn Clock>,
    ) -> Result<Shared, StoreError> {
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
        Ok(Shared {
            backend,
            naming,
            clock,
            origin,
            events: Mutex::new(Some(rx)),
            description,
            dead_lettered: super::DeadLettered::default(),
            pops: combine::Combiner::default(),
            publishes: combine::Combiner::default(),
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

    /// Where `queue`'s messages may be, to take them in order: on a ring, the
    /// servers still holding some (found, and the owner's counter raised past
    /// theirs, on first use), oldest first, then the owner; on a cluster, the
    /// cluster. The last place is where new messages go.
    async fn places(&self, queue: &str) -> Result<Vec<Place>, StoreError> {
        let ring = match &self.backend {
            Backend::Cluster(cluster) => {
                let conn = Self::cluster_conn(cluster).await?;
                return Ok(vec![Place { holder: None, conn }]);
            }
            Backend::Ring(ring) => ring,
        };
        let route = self.ring_route(ring, queue).await?;
        let mut places: Vec<Place> = lock(&route.holders)
            .iter()
            .map(|&i| Place {
                holder: Some(i),
                conn: ring.nodes[i].conn(),
            })
            .collect();
        places.push(Place {
            holder: None,
            conn: ring.nodes[route.owner].conn(),
        });
        Ok(places)
    }

    /// Where new messages of `queue` go.
    async fn owner(&self, queue: &str) -> Result<Conn, StoreError> {
        let mut places = self.places(queue).await?;
        places
            .pop()
            .map(|place| place.conn)
            .ok_or_else(|| StoreError::Unavailable("no Redis server for the queue".into()))
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
                    .filter(|(_, info)| info.len + info.inflight + info.delayed > 0)
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
        let mut places = self.places(queue).await?;
        let Some(mut owner) = places.pop() else {
            return Ok(None);
        };
        let mut info = read_info(&mut owner.conn, &keys).await?;
        for mut place in places {
            let held = read_info(&mut place.conn, &keys).await?;
            info.len += held.len;
            info.inflight += held.inflight;
            info.delayed += held.delayed;
        }
        Ok(known(&info).then_some(info))
    }

    /// Takes up to `max` messages from wherever they are, oldest place first,
    /// with `script` (POP, or RECEIVE with `extra` ARGV after max and now);
    /// returns each message with the script's numbers for it.
    async fn take(
        &self,
        queue: &str,
        max: usize,
        script: &redis::Script,
        extra: &[u64],
    ) -> Result<Vec<(Message, Vec<i64>)>, StoreError> {
        let keys = self.keys(queue);
        let mut out = Vec::new();
        for mut place in self.places(queue).await? {
            let now = self.clock.now();
            let mut invocation = with_keys(script, &keys);
            invocation.arg(max - out.len()).arg(now);
            for arg in extra {
                invocation.arg(*arg);
            }
            let values: Vec<Value> = invocation
                .invoke_async(&mut place.conn)
                .await
                .map_err(redis_error)?;
            let (counts, rest) = header(&values, 2)?;
            if counts[0] > 0 {
                self.bury(queue, &keys, &mut place.conn).await?;
            }
            out.extend(parse_packed(&keys, rest)?);
            if let (Some(holder), 0) = (place.holder, counts[1]) {
                self.drained(queue, holder);
            }
            if out.len() >= max {
                break;
            }
        }
        Ok(out)
    }

    /// Moves the messages a script found received too often to the dead-letter
    /// queue: each is copied there first, then removed here, so a crash in
    /// between leaves it in both places, never in neither.
    async fn bury(&self, queue: &str, keys: &QueueKeys, conn: &mut Conn) -> Result<(), StoreError> {
        let config = self.read_config(queue, conn).await?;
        let dead = config.dead_letter_of(queue);
        loop {
            let dying: Vec<Vec<u8>> = redis::cmd("LRANGE")
                .arg(keys.dying())
                .arg(0)
                .arg(63)
                .query_async(conn)
                .await
                .map_err(redis_error)?;
            if dying.is_empty() {
                return Ok(());
            }
            for key in dying {
                let id = keys.id_of(&key).unwrap_or(0);
                let (value, expires_at): (Option<String>, Option<u64>) = redis::pipe()
                    .get(&key)
                    .hget(keys.expires(), id)
                    .query_async(conn)
                    .await
                    .map_err(redis_error)?;
                if let Some(value) = value {
                    let now = self.clock.now();
                    let ttl = expires_at
                        .filter(|&at| at > 0)
                        .map(|at| at.saturating_sub(now).div_ceil(1000).max(1));
                    let message = NewMessage {
                        value,
                        ttl,
                        delay: None,
                    };
                    self.publish_many(&dead, &[message]).await?;
                    self.dead_lettered.add(queue, 1);
                }
                with_keys(&scripts::BURY, keys)
                    .arg(&key)
                    .invoke_async::<()>(conn)
                    .await
                    .map_err(redis_error)?;
            }
        }
    }

    async fn read_config(&self, queue: &str, conn: &mut Conn) -> Result<QueueConfig, StoreError> {
        let keys = self.keys(queue);
        let fields: HashMap<String, String> = redis::cmd("HGETALL")
            .arg(keys.config())
            .query_async(conn)
            .await
            .map_err(redis_error)?;
        let number = |name: &str, default: u64| {
            fields
                .get(name)
                .and_then(|v| v.parse().ok())
                .unwrap_or(default)
        };
        let defaults = QueueConfig::default();
        Ok(QueueConfig {
            visibility: number("visibility", defaults.visibility),
            max_receives: number("max_receives", defaults.max_receives),
            dead_letter: fields.get("dead_letter").cloned(),
            max_len: number("max_len", defaults.max_len),
            retention: number("retention", defaults.retention),
            delay: number("delay", defaults.delay),
        })
    }

    async fn publish_many(
        &self,
        queue: &str,
        messages: &[NewMessage],
    ) -> Result<Vec<u64>, StoreError> {
        let keys = self.keys(queue);
        let mut conn = self.owner(queue).await?;
        let cluster = matches!(self.backend, Backend::Cluster(_));
        let mut invocation = with_keys(&scripts::PUBLISH, &keys);
        invocation
            .key(&keys.counter)
            .key(&keys.status)
            .arg(&keys.prefix)
            .arg(queue)
            .arg(if cluster { "0" } else { "1" })
            .arg(self.changed_for(queue))
            .arg(self.clock.now());
        for message in messages {
            let delay = message.delay.unwrap_or(0).saturating_mul(1000);
            invocation
                .arg(&message.value)
                .arg(message.ttl.unwrap_or(0))
                .arg(delay);
        }
        let answer: Vec<i64> = invocation
            .invoke_async(&mut conn)
            .await
            .map_err(redis_error)?;
        let ids: Vec<u64> = match answer[..] {
            [-1, max_len] => return Err(StoreError::Full(u64::try_from(max_len).unwrap_or(0))),
            [first, count] if first > 0 && usize::try_from(count) == Ok(messages.len()) => {
                let first = first.unsigned_abs();
                (first..first + count.unsigned_abs()).collect()
            }
            _ => {
                return Err(StoreError::Corrupted(
                    "unexpected answer from the publish script".into(),
                ));
            }
        };
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
    }

    /// Releases (`ms` of delay) or extends (`ms` of visibility) a delivery, on
    /// whichever place has it in flight.
    async fn settle_delivery(
        &self,
        queue: &str,
        change: Change,
        id: u64,
        delivery: u32,
        ms: u64,
    ) -> Result<bool, StoreError> {
        let keys = self.keys(queue);
        let key = keys.message(id);
        let script = match change {
            Change::Release => &*scripts::NACK,
            Change::Extend => &*scripts::EXTEND,
        };
        for mut place in self.places(queue).await? {
            let mut invocation = with_keys(script, &keys);
            invocation
                .arg(&key)
                .arg(delivery)
                .arg(self.clock.now())
                .arg(ms);
            if change == Change::Release {
                invocation.arg(self.changed_for(queue)).arg(queue);
            }
            let outcome: u8 = invocation
                .invoke_async(&mut place.conn)
                .await
                .map_err(redis_error)?;
            if outcome == 2 {
                self.bury(queue, &keys, &mut place.conn).await?;
            }
            if outcome > 0 {
                return Ok(true);
            }
        }
        Ok(false)
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
        Box::pin(self.publish_combined(queue, messages))
    }

    fn pop<'a>(&'a self, queue: &'a str) -> StoreFuture<'a, Option<Message>> {
        Box::pin(async move { Ok(self.pop_combined(queue, 1).await?.into_iter().next()) })
    }

    fn pop_many<'a>(&'a self, queue: &'a str, max: usize) -> StoreFuture<'a, Vec<Message>> {
        Box::pin(self.pop_combined(queue, max.max(1)))
    }

    fn restore<'a>(&'a self, queue: &'a str, mut messages: Vec<Message>) -> StoreFuture<'a, ()> {
        Box::pin(async move {
            let keys = self.keys(queue);
            let mut conn = self.owner(queue).await?;
            let now = self.clock.now();
            messages.retain(|m| m.expires_at == 0 || m.expires_at > now);
            if messages.is_empty() {
                return Ok(());
            }
            let mut invocation = with_keys(&scripts::RESTORE, &keys);
            invocation
                .arg(&keys.prefix)
                .arg(self.changed_for(queue))
                .arg(queue)
                .arg(now);
            for message in &messages {
                invocation
                    .arg(message.id)
                    .arg(&message.value)
                    .arg(message.expires_at);
            }
            invocation
                .invoke_async::<()>(&mut conn)
                .await
                .map_err(redis_error)
        })
    }

    fn receive<'a>(
        &'a self,
        queue: &'a str,
        max: usize,
        visibility_ms: u64,
    ) -> StoreFuture<'a, Vec<Received>> {
        Box::pin(async move {
            let taken = self
                .take(queue, max.max(1), &scripts::RECEIVE, &[visibility_ms])
                .await?;
            Ok(taken
                .into_iter()
                .map(|(message, numbers)| Received {
                    message,
                    delivery: numbers
                        .get(1)
                        .and_then(|&d| u32::try_from(d).ok())
                        .unwrap_or(1),
                })
                .collect())
        })
    }

    fn ack<'a>(
        &'a self,
        queue: &'a str,
        receipts: Vec<(u64, u32)>,
    ) -> StoreFuture<'a, Vec<(u64, u32)>> {
        Box::pin(async move {
            let keys = self.keys(queue);
            let mut places = self.places(queue).await?;
            if let [place] = &mut places[..] {
                let (stale, _, _) = ack_at(place, &keys, self.clock.now(), true, &receipts).await?;
                return Ok(receipts
                    .into_iter()
                    .filter(|(id, _)| stale.contains(id))
                    .collect());
            }
            // The queue is spread over several places (the ring grew): find
            // where each receipt's message is, and settle them only when none
            // is stale, so that a batch stays all or none.
            let mut left = receipts.clone();
            let mut found: Vec<Vec<(u64, u32)>> = Vec::with_capacity(places.len());
            let mut stale = Vec::new();
            for place in places.iter_mut().rev() {
                let (stale_here, absent, current) =
                    ack_at(place, &keys, self.clock.now(), false, &left).await?;
                stale.extend(left.iter().filter(|(id, _)| stale_here.contains(id)));
                found.push(
                    left.iter()
                        .filter(|(id, _)| current.contains(id))
                        .copied()
                        .collect(),
                );
                left.retain(|(id, _)| absent.contains(id));
            }
            // Receipts of messages in flight nowhere are stale too.
            stale.extend(left);
            if !stale.is_empty() {
                return Ok(stale);
            }
            for (place, here) in places.iter_mut().rev().zip(found) {
                if here.is_empty() {
                    continue;
                }
                let (stale_here, _, _) =
                    ack_at(place, &keys, self.clock.now(), true, &here).await?;
                stale.extend(here.iter().filter(|(id, _)| stale_here.contains(id)));
            }
            Ok(stale)
        })
    }

    fn nack<'a>(
        &'a self,
        queue: &'a str,
        id: u64,
        delivery: u32,
        delay_ms: u64,
    ) -> StoreFuture<'a, bool> {
        Box::pin(async move {
            self.settle_delivery(queue, Change::Release, id, delivery, delay_ms)
                .await
        })
    }

    fn extend<'a>(
        &'a self,
        queue: &'a str,
        id: u64,
        delivery: u32,
        visibility_ms: u64,
    ) -> StoreFuture<'a, bool> {
        Box::pin(async move {
            self.settle_delivery(queue, Change::Extend, id, delivery, visibility_ms)
                .await
        })
    }

    fn next_due<'a>(&'a self, queue: &'a str) -> StoreFuture<'a, Option<u64>> {
        Box::pin(async move {
            let keys = self.keys(queue);
            let mut next: Option<u64> = None;
            for mut place in self.places(queue).await? {
                let (inflight, delayed): (Scored, Scored) = redis::pipe()
                    .cmd("ZRANGE")
                    .arg(keys.inflight())
                    .arg(0)
                    .arg(0)
                    .arg("WITHSCORES")
                    .cmd("ZRANGE")
                    .arg(keys.delayed())
                    .arg(0)
                    .arg(0)
                    .arg("WITHSCORES")
                    .query_async(&mut place.conn)
                    .await
                    .map_err(redis_error)?;
                for (_, due) in inflight.into_iter().chain(delayed) {
                    // Scores are whole milliseconds.
                    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
                    let due = due as u64;
                    next = Some(next.map_or(due, |n| n.min(due)));
                }
            }
            Ok(next)
        })
    }

    fn config<'a>(&'a self, queue: &'a str) -> StoreFuture<'a, QueueConfig> {
        Box::pin(async move {
            let mut conn = self.owner(queue).await?;
            self.read_config(queue, &mut conn).await
        })
    }

    fn set_config<'a>(&'a self, queue: &'a str, config: QueueConfig) -> StoreFuture<'a, ()> {
        Box::pin(async move {
            let keys = self.keys(queue);
            let mut conn = self.owner(queue).await?;
            let mut pipe = redis::pipe();
            pipe.atomic().del(keys.config()).ignore();
            pipe.hset_multiple(
                keys.config(),
                &[
                    ("visibility", config.visibility),
                    ("max_receives", config.max_receives),
                    ("max_len", config.max_len),
                    ("retention", config.retention),
                    ("delay", config.delay),
                ],
            )
            .ignore();
            if let Some(dead) = &config.dead_letter {
                pipe.hset(keys.config(), "dead_letter", dead).ignore();
            }
            pipe.query_async::<()>(&mut conn).await.map_err(redis_error)
        })
    }

    fn redrive<'a>(&'a self, from: &'a str, to: &'a str) -> StoreFuture<'a, u64> {
        Box::pin(async move {
            // Hidden while copied, deleted once copied: a crash in between makes
            // it visible in `from` again, so it is never lost.
            let mut moved = 0;
            loop {
                let batch = self.receive(from, 64, 600_000).await?;
                if batch.is_empty() {
                    return Ok(moved);
                }
                let now = self.clock.now();
                let messages: Vec<NewMessage> = batch
                    .iter()
                    .map(|r| NewMessage {
                        value: r.message.value.clone(),
                        ttl: (r.message.expires_at > 0)
                            .then(|| r.message.expires_at.saturating_sub(now).div_ceil(1000)),
                        delay: None,
                    })
                    .collect();
                self.publish_many(to, &messages).await?;
                let receipts = batch.iter().map(|r| (r.message.id, r.delivery)).collect();
                self.ack(from, receipts).await?;
                moved += batch.len() as u64;
            }
        })
    }

    fn peek<'a>(&'a self, queue: &'a str) -> StoreFuture<'a, Option<(Message, u64)>> {
        Box::pin(async move {
            let keys = self.keys(queue);
            for mut place in self.places(queue).await? {
                let now = self.clock.now();
                let values: Vec<Value> = with_keys(&scripts::PEEK, &keys)
                    .arg(now)
                    .invoke_async(&mut place.conn)
                    .await
                    .map_err(redis_error)?;
                let (counts, rest) = header(&values, 1)?;
                if counts[0] > 0 {
                    self.bury(queue, &keys, &mut place.conn).await?;
                }
                if rest.len() == 4 {
                    let mut parsed = parse_messages(&keys, rest, 4)?;
                    if let Some((message, numbers)) = parsed.pop() {
                        let count = numbers
                            .get(1)
                            .and_then(|&c| u64::try_from(c).ok())
                            .unwrap_or(1);
                        return Ok(Some((message, count)));
                    }
                }
                if let Some(holder) = place.holder {
                    self.drained(queue, holder);
                }
            }
            Ok(None)
        })
    }

    fn delete<'a>(&'a self, queue: &'a str, id: u64) -> StoreFuture<'a, bool> {
        Box::pin(async move {
            let keys = self.keys(queue);
            let message = keys.message(id);
            for mut place in self.places(queue).await?.into_iter().rev() {
                let deleted: u8 = with_keys(&scripts::DELETE, &keys)
                    .key(&message)
                    .arg(self.clock.now())
                    .invoke_async(&mut place.conn)
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
            let mut existed = false;
            let (purging, purges) = (keys.purging(), keys.purges());
            for mut place in self.places(queue).await? {
                let found: u8 = with_keys(&scripts::PURGE, &keys)
                    .key(&purging)
                    .key(&purges)
                    .arg(&keys.prefix)
                    .invoke_async(&mut place.conn)
                    .await
                    .map_err(redis_error)?;
                existed |= found == 1;
                // The queue is empty already; its messages' keys go a slice
                // per call, so that other clients are served in between.
                loop {
                    let more: u8 = scripts::PURGE_STEP
                        .key(&purging)
                        .key(&purges)
                        .arg(PURGE_SLICE)
                        .invoke_async(&mut place.conn)
                        .await
                        .map_err(redis_error)?;
                    if more == 0 {
                        break;
                    }
                }
                if let Some(holder) = place.holder {
                    self.drained(queue, holder);
                }
            }
            Ok(existed)
        })
    }

    fn set_policy<'a>(&'a self, queue: &'a str, policy: Policy) -> StoreFuture<'a, ()> {
        Box::pin(async move {
            let keys = self.keys(queue);
            let mut conn = self.owner(queue).await?;
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
            let mut conn = self.owner(queue).await?;
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
            let mut out = Vec::new();
            // Newest first: the owner's list, then what came back, then holders.
            for mut place in self.places(queue).await?.into_iter().rev() {
                if out.len() >= count {
                    break;
                }
                let wanted = isize::try_from(count - out.len()).unwrap_or(isize::MAX);
                let (mut listed, ready): (Vec<Vec<u8>>, Vec<Vec<u8>>) = redis::pipe()
                    .lrange(&keys.list, 0, wanted - 1)
                    .zrevrange(&keys.eight[1], 0, wanted - 1)
                    .query_async(&mut place.conn)
                    .await
                    .map_err(redis_error)?;
                listed.extend(ready);
                if listed.is_empty() {
                    continue;
                }
                let values: Vec<Option<Vec<u8>>> = redis::cmd("MGET")
                    .arg(&listed)
                    .query_async(&mut place.conn)
                    .await
                    .map_err(redis_error)?;
                for (key, value) in listed.iter().zip(values) {
                    if out.len() >= count {
                        break;
                    }
                    if let (Some(id), Some(value)) = (keys.id_of(key), value) {
                        out.push(Message {
                            id,
                            value: String::from_utf8_lossy(&value).into_owned(),
                            expires_at: 0,
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

    fn dead_lettered(&self) -> Vec<(String, u64)> {
        self.dead_lettered.counts()
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
                    vec![(cluster.urls.join(","), Shared::cluster_conn(cluster).await?)]
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
            let mut conn = self.owner(queue).await?;
            redis::cmd("PUBLISH")
                .arg(streamed_channel(self.db_of(queue)))
                .arg(payload)
                .query_async::<()>(&mut conn)
                .await
                .map_err(redis_error)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A message as the taking scripts' `pack` writes it.
    fn packed(key: &[u8], value: &[u8], expiry: f64, count: f64) -> Vec<u8> {
        let mut out = Vec::new();
        for length in [key.len(), value.len()] {
            out.extend(u32::try_from(length).unwrap_or(u32::MAX).to_le_bytes());
        }
        out.extend(expiry.to_le_bytes());
        out.extend(count.to_le_bytes());
        out.extend(key);
        out.extend(value);
        out
    }

    #[test]
    fn packed_messages_parse_and_damaged_answers_are_refused() {
        let keys = Naming::Legacy.keys("jobs");
        let mut answer = packed(b"jobs:7", b"first", 1_795_838_252_000.0, 0.0);
        answer.extend(packed(b"jobs:8", "é\n\0".as_bytes(), 0.0, 3.0));
        let parsed = parse_packed(&keys, &[Value::BulkString(answer.clone())]);
        let Ok(parsed) = parsed else {
            panic!("a well-formed answer was refused: {parsed:?}");
        };
        assert_eq!(
            parsed,
            vec![
                (
                    Message {
                        id: 7,
                        value: "first".into(),
                        expires_at: 1_795_838_252_000,
                    },
                    vec![1_795_838_252_000, 0],
                ),
                (
                    Message {
                        id: 8,
                        value: "é\n\0".into(),
                        expires_at: 0,
                    },
                    vec![0, 3],
                ),
            ]
        );
        assert!(matches!(
            parse_packed(&keys, &[Value::BulkString(Vec::new())]),
            Ok(none) if none.is_empty()
        ));
        for damaged in [
            answer[..answer.len() - 1].to_vec(),
            answer[..PACKED_HEADER - 1].to_vec(),
            packed(b"other:7", b"x", 0.0, 0.0),
        ] {
            assert!(matches!(
                parse_packed(&keys, &[Value::BulkString(damaged)]),
                Err(StoreError::Corrupted(_))
            ));
        }
        assert!(matches!(
            parse_packed(&keys, &[Value::Int(1)]),
            Err(StoreError::Corrupted(_))
        ));
    }
}
