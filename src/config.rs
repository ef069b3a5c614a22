//! Server settings: command-line flags, each also an environment variable.

use std::path::PathBuf;

use clap::Args;

use crate::broker::hub::StreamLimits;
use crate::store::{RedisOptions, RedisTarget};

/// Default limit of a request body, in bytes (1 MiB).
pub const DEFAULT_MAX_BODY: usize = 1024 * 1024;
/// Default longest long poll, in seconds.
pub const DEFAULT_MAX_WAIT: u64 = 20;
/// Highest `--max-body` accepted (1 GiB): a message is held in memory whole.
const MAX_BODY_CEILING: u64 = 1 << 30;

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// For people: one line per event, with its span's fields.
    Text,
    /// For machines: one JSON object per line, with the span's fields.
    Json,
}

/// The options of `restmq serve` (also accepted by plain `restmq`).
#[derive(Debug, Clone, Args)]
pub struct ServeArgs {
    /// Interface (address or host name) to listen on.
    #[arg(long, env = "RESTMQ_LISTEN", default_value = "127.0.0.1")]
    pub listen: String,

    /// Port to listen on (0 picks a free one).
    #[arg(long, env = "RESTMQ_PORT", default_value_t = 8888)]
    pub port: u16,

    /// Directory of the embedded store; created when missing.
    #[arg(long, env = "RESTMQ_DATA_DIR", default_value = "./restmq-data")]
    pub data_dir: PathBuf,

    /// Largest request body accepted, in bytes; larger ones get 413.
    #[arg(long, env = "RESTMQ_MAX_BODY", default_value_t = DEFAULT_MAX_BODY as u64,
          value_parser = clap::value_parser!(u64).range(1..=MAX_BODY_CEILING))]
    pub max_body: u64,

    /// How logs are written to stderr. Each request is a span (method, path,
    /// client); `RUST_LOG=debug` also logs each answer with its status and time.
    #[arg(long, env = "RESTMQ_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,

    /// Access rules: a file in the original's acl.conf format, plus bearer
    /// tokens. It is read again when it changes. Without it, every route is open.
    #[arg(long, env = "RESTMQ_ACL")]
    pub acl: Option<PathBuf>,

    /// Proxies whose `X-Forwarded-For` is believed: addresses, prefixes or CIDR
    /// blocks, separated by commas. Without it, the header is ignored.
    #[arg(long, env = "RESTMQ_TRUSTED_PROXIES")]
    pub trusted_proxies: Option<String>,

    /// Longest `wait=` a long-polling GET may ask for, in seconds.
    #[arg(long, env = "RESTMQ_MAX_WAIT", default_value_t = DEFAULT_MAX_WAIT,
          value_parser = clap::value_parser!(u64).range(0..=3600))]
    pub max_wait: u64,

    /// Messages buffered for one streaming consumer. A broadcast consumer that
    /// falls this far behind is disconnected, rather than slowing the others.
    #[arg(long, env = "RESTMQ_STREAM_BUFFER", default_value_t = 1000,
          value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub stream_buffer: u32,

    /// Recently streamed messages kept per queue, for Server-Sent Events clients
    /// that reconnect with Last-Event-ID.
    #[arg(long, env = "RESTMQ_RESUME_BUFFER", default_value_t = 100,
          value_parser = clap::value_parser!(u32).range(0..=1_000_000))]
    pub resume_buffer: u32,

    /// Store the queues in Redis at this URL (`redis://host:port/db`) instead of
    /// the embedded store. Repeat it, or give a comma-separated list, for a
    /// consistent-hash ring of servers.
    #[arg(
        long = "redis",
        env = "RESTMQ_REDIS",
        value_delimiter = ',',
        value_name = "URL"
    )]
    pub redis: Vec<String>,

    /// Store the queues in a Redis Cluster reached through these nodes.
    #[arg(
        long,
        env = "RESTMQ_REDIS_CLUSTER",
        value_delimiter = ',',
        value_name = "URL",
        conflicts_with = "redis"
    )]
    pub redis_cluster: Vec<String>,

    /// Redis host, as the original RestMQ's option (same as --redis redis://HOST:PORT/DB).
    #[arg(long, env = "RESTMQ_REDIS_HOST", conflicts_with_all = ["redis", "redis_cluster"])]
    pub redis_host: Option<String>,

    /// Redis port, with --redis-host (the original's option).
    #[arg(long, env = "RESTMQ_REDIS_PORT", default_value_t = 6379)]
    pub redis_port: u16,

    /// Redis database, with --redis-host (the original's option).
    #[arg(long, env = "RESTMQ_REDIS_DB", default_value_t = 0)]
    pub redis_db: u32,

    /// Connections to each Redis server (each carries many requests at once).
    #[arg(long, env = "RESTMQ_REDIS_POOL", default_value_t = 10,
          value_parser = clap::value_parser!(u32).range(1..=1024))]
    pub redis_pool: u32,

    /// Longest wait for Redis to connect or answer, in milliseconds; past it the
    /// request gets 503.
    #[arg(long, env = "RESTMQ_REDIS_TIMEOUT", default_value_t = 2000,
          value_parser = clap::value_parser!(u64).range(1..=600_000))]
    pub redis_timeout: u64,

    /// Acknowledge changes once written to the operating system, without waiting
    /// for the disk (no fsync). A crash of restmq still loses nothing; a crash of
    /// the machine can lose the changes of the last seconds.
    #[arg(long, env = "RESTMQ_NO_FSYNC")]
    pub no_fsync: bool,
}

/// Where the queues are stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Storage {
    /// The embedded store in [`Config::data_dir`].
    Embedded,
    /// Redis.
    Redis(RedisTarget),
}

/// Validated settings of a server.
#[derive(Debug, Clone)]
pub struct Config {
    /// Where the queues are stored.
    pub storage: Storage,
    /// How to reach Redis, when the queues are there.
    pub redis: RedisOptions,
    /// Directory of the embedded store.
    pub data_dir: PathBuf,
    /// Largest request body accepted, in bytes.
    pub max_body: usize,
    /// Longest long poll, in seconds.
    pub max_wait: u64,
    /// Whether changes are fsynced before they are acknowledged.
    pub fsync: bool,
    /// Limits of streaming delivery.
    pub streams: StreamLimits,
    /// The ACL file, if any.
    pub acl: Option<PathBuf>,
    /// Proxies whose `X-Forwarded-For` is believed.
    pub trusted_proxies: Option<String>,
}

impl Config {
    /// Settings for a store in `data_dir` with every other option at its default.
    pub fn new(data_dir: impl Into<PathBuf>) -> Config {
        Config {
            storage: Storage::Embedded,
            redis: RedisOptions::default(),
            data_dir: data_dir.into(),
            max_body: DEFAULT_MAX_BODY,
            max_wait: DEFAULT_MAX_WAIT,
            fsync: true,
            streams: StreamLimits::default(),
            acl: None,
            trusted_proxies: None,
        }
    }
}

impl From<&ServeArgs> for Config {
    fn from(args: &ServeArgs) -> Config {
        let storage = if !args.redis_cluster.is_empty() {
            Storage::Redis(RedisTarget::Cluster(args.redis_cluster.clone()))
        } else if !args.redis.is_empty() {
            Storage::Redis(RedisTarget::Ring(args.redis.clone()))
        } else if let Some(host) = &args.redis_host {
            let url = format!("redis://{host}:{}/{}", args.redis_port, args.redis_db);
            Storage::Redis(RedisTarget::Ring(vec![url]))
        } else {
            Storage::Embedded
        };
        Config {
            storage,
            redis: RedisOptions {
                pool: args.redis_pool as usize,
                timeout: std::time::Duration::from_millis(args.redis_timeout),
            },
            data_dir: args.data_dir.clone(),
            max_body: usize::try_from(args.max_body).unwrap_or(usize::MAX),
            max_wait: args.max_wait,
            fsync: !args.no_fsync,
            streams: StreamLimits {
                consumer_buffer: args.stream_buffer as usize,
                resume_buffer: args.resume_buffer as usize,
            },
            acl: args.acl.clone(),
            trusted_proxies: args.trusted_proxies.clone(),
        }
    }
}
