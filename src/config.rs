//! Server settings: command-line flags, each also an environment variable.

use std::path::PathBuf;
use std::time::Duration;

use clap::Args;

use crate::broker::hub::StreamLimits;
use crate::store::{EmbeddedOptions, RedisOptions, RedisTarget};

/// Default limit of a request body, in bytes (1 MiB).
pub const DEFAULT_MAX_BODY: usize = 1024 * 1024;
/// Default longest long poll, in seconds.
pub const DEFAULT_MAX_WAIT: u64 = 20;
/// Highest `--max-body` accepted (1 GiB): a message is held in memory whole.
const MAX_BODY_CEILING: u64 = 1 << 30;
/// Default memory the embedded store keeps of its file, in MiB: the store's
/// own default.
pub const DEFAULT_CACHE_SIZE: u64 = (EmbeddedOptions::DEFAULT_CACHE_BYTES >> 20) as u64;
/// Highest `--cache-size` accepted, in MiB (1 TiB).
const CACHE_SIZE_CEILING: u64 = 1 << 20;
/// Default time a client has to send a request's head, in seconds.
pub const DEFAULT_HEADER_TIMEOUT: u64 = 10;
/// Default time a client has to send a request's body, in seconds.
pub const DEFAULT_BODY_TIMEOUT: u64 = 30;
/// Default limit of open connections.
///
/// Past the process's open-file limit the kernel refuses `accept` itself, and
/// then no client gets an answer; below this limit every extra one still gets a
/// clear 503. 16384 stays above the 10,000 idle streams restmq is measured with
/// (and matches the nginx baseline's `worker_connections`), while the memory
/// it allows stays bounded: an idle stream costs a few hundred bytes, a
/// connection served by hyper about 24 KB, so at most about 400 MB. Raise
/// `ulimit -n` above the limit chosen.
pub const DEFAULT_MAX_CONNECTIONS: usize = 16_384;

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

    /// Memory the embedded store keeps of its file, in MiB (its page cache and
    /// write buffer). The store's memory grows with its data up to about this.
    #[arg(long, env = "RESTMQ_CACHE_SIZE", value_name = "MIB", default_value_t = DEFAULT_CACHE_SIZE,
          value_parser = clap::value_parser!(u64).range(1..=CACHE_SIZE_CEILING))]
    pub cache_size: u64,

    /// Largest request body accepted, in bytes; larger ones get 413.
    #[arg(long, env = "RESTMQ_MAX_BODY", default_value_t = DEFAULT_MAX_BODY as u64,
          value_parser = clap::value_parser!(u64).range(1..=MAX_BODY_CEILING))]
    pub max_body: u64,

    /// How logs are written to stderr. With `RUST_LOG=debug`, each request is
    /// a span (method, path, client) and each answer is logged with its status
    /// and time.
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

    /// Serve HTTPS with this certificate chain (PEM, the server's certificate
    /// first); needs --tls-key.
    #[arg(
        long,
        env = "RESTMQ_TLS_CERT",
        value_name = "FILE",
        requires = "tls_key"
    )]
    pub tls_cert: Option<PathBuf>,

    /// The private key of --tls-cert (PEM: PKCS#8, PKCS#1 or SEC1).
    #[arg(
        long,
        env = "RESTMQ_TLS_KEY",
        value_name = "FILE",
        requires = "tls_cert"
    )]
    pub tls_key: Option<PathBuf>,

    /// Seconds a client has to send a request's head (and to finish the TLS
    /// handshake); a connection that takes longer is closed. An idle keep-alive
    /// connection is closed after as long.
    #[arg(long, env = "RESTMQ_HEADER_TIMEOUT", value_name = "SECS",
          default_value_t = DEFAULT_HEADER_TIMEOUT,
          value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub header_timeout: u64,

    /// Seconds a client has to send a request's body once its head arrived;
    /// past it the request gets 408.
    #[arg(long, env = "RESTMQ_BODY_TIMEOUT", value_name = "SECS",
          default_value_t = DEFAULT_BODY_TIMEOUT,
          value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub body_timeout: u64,

    /// Open connections, at most; each one past it is answered 503 with
    /// Retry-After and closed. Keep it below the open-file limit (`ulimit -n`).
    #[arg(long, env = "RESTMQ_MAX_CONNECTIONS", value_name = "N",
          default_value_t = DEFAULT_MAX_CONNECTIONS as u32,
          value_parser = clap::value_parser!(u32).range(1..=10_000_000))]
    pub max_connections: u32,

    /// Streaming consumers (COMET, SSE, WebSocket) of all queues together, at
    /// most; one more gets 503 with Retry-After. Unset: only --max-connections
    /// bounds them.
    #[arg(long, env = "RESTMQ_MAX_CONSUMERS", value_name = "N",
          value_parser = clap::value_parser!(u32).range(1..=10_000_000))]
    pub max_consumers: Option<u32>,

    /// Streaming consumers of one queue, at most; one more gets 503 with
    /// Retry-After. Unset: no limit per queue.
    #[arg(long, env = "RESTMQ_MAX_CONSUMERS_PER_QUEUE", value_name = "N",
          value_parser = clap::value_parser!(u32).range(1..=10_000_000))]
    pub max_consumers_per_queue: Option<u32>,

    /// Acknowledge changes once written to the operating system, without waiting
    /// for the disk (no fsync). A crash of restmq still loses nothing; a crash of
    /// the machine can lose the changes of the last seconds.
    #[arg(long, env = "RESTMQ_NO_FSYNC")]
    pub no_fsync: bool,

    /// Serve the SQS-compatible API (JSON and query protocols) on this port, on
    /// the same interface; 9324 is customary. Off when not given.
    #[arg(long, env = "RESTMQ_SQS_PORT", value_name = "PORT")]
    pub sqs_port: Option<u16>,

    /// Serve the memcached text protocol on this port (`set <q>` enqueues,
    /// `get <q>` dequeues). Off when not given.
    #[arg(long, env = "RESTMQ_MEMCACHED_PORT", value_name = "PORT")]
    pub memcached_port: Option<u16>,

    /// Receive syslog lines on this port, over TCP and UDP, into the queue
    /// `syslogd:<sender ip>`. Off when not given.
    #[arg(long, env = "RESTMQ_SYSLOG_PORT", value_name = "PORT")]
    pub syslog_port: Option<u16>,
}

/// The ports of the other front doors; `None` leaves a door off, 0 picks a
/// free port.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DoorPorts {
    /// The SQS-compatible API.
    pub sqs: Option<u16>,
    /// The memcached text protocol.
    pub memcached: Option<u16>,
    /// syslog, TCP and UDP.
    pub syslog: Option<u16>,
}

/// Where the queues are stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Storage {
    /// The embedded store in [`Config::data_dir`].
    Embedded,
    /// Redis.
    Redis(RedisTarget),
}

/// The files of a TLS identity.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    /// The certificate chain, PEM, the server's own certificate first.
    pub cert: PathBuf,
    /// Its private key, PEM.
    pub key: PathBuf,
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
    /// Memory the embedded store keeps of its file, in bytes.
    pub cache_bytes: usize,
    /// Limits of streaming delivery.
    pub streams: StreamLimits,
    /// The ACL file, if any.
    pub acl: Option<PathBuf>,
    /// Proxies whose `X-Forwarded-For` is believed.
    pub trusted_proxies: Option<String>,
    /// Serve HTTPS with this identity; plain HTTP without.
    pub tls: Option<TlsFiles>,
    /// Time a client has to send a request's head (and finish the TLS handshake).
    pub header_timeout: Duration,
    /// Time a client has to send a request's body.
    pub body_timeout: Duration,
    /// Open connections, at most.
    pub max_connections: usize,
    /// The other front doors to open.
    pub doors: DoorPorts,
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
            cache_bytes: EmbeddedOptions::DEFAULT_CACHE_BYTES,
            streams: StreamLimits::default(),
            acl: None,
            trusted_proxies: None,
            tls: None,
            header_timeout: Duration::from_secs(DEFAULT_HEADER_TIMEOUT),
            body_timeout: Duration::from_secs(DEFAULT_BODY_TIMEOUT),
            max_connections: DEFAULT_MAX_CONNECTIONS,
            doors: DoorPorts::default(),
        }
    }
}

/// `n` MiB in bytes, saturating where `usize` is narrower.
fn mib(n: u64) -> usize {
    usize::try_from(n.saturating_mul(1 << 20)).unwrap_or(usize::MAX)
}

/// Why flags do not make a configuration.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// One TLS file named without the other.
    #[error("--tls-cert and --tls-key go together: {0} is missing")]
    TlsIncomplete(&'static str),
}

impl TryFrom<&ServeArgs> for Config {
    type Error = ConfigError;

    fn try_from(args: &ServeArgs) -> Result<Config, ConfigError> {
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
        let tls = match (&args.tls_cert, &args.tls_key) {
            (Some(cert), Some(key)) => Some(TlsFiles {
                cert: cert.clone(),
                key: key.clone(),
            }),
            (Some(_), None) => return Err(ConfigError::TlsIncomplete("--tls-key")),
            (None, Some(_)) => return Err(ConfigError::TlsIncomplete("--tls-cert")),
            (None, None) => None,
        };
        Ok(Config {
            storage,
            redis: RedisOptions {
                pool: args.redis_pool as usize,
                timeout: Duration::from_millis(args.redis_timeout),
            },
            data_dir: args.data_dir.clone(),
            max_body: usize::try_from(args.max_body).unwrap_or(usize::MAX),
            max_wait: args.max_wait,
            fsync: !args.no_fsync,
            cache_bytes: mib(args.cache_size),
            streams: StreamLimits {
                consumer_buffer: args.stream_buffer as usize,
                resume_buffer: args.resume_buffer as usize,
                max_consumers: args.max_consumers.map(|n| n as usize),
                max_queue_consumers: args.max_consumers_per_queue.map(|n| n as usize),
            },
            acl: args.acl.clone(),
            trusted_proxies: args.trusted_proxies.clone(),
            tls,
            header_timeout: Duration::from_secs(args.header_timeout),
            body_timeout: Duration::from_secs(args.body_timeout),
            max_connections: args.max_connections as usize,
            doors: DoorPorts {
                sqs: args.sqs_port,
                memcached: args.memcached_port,
                syslog: args.syslog_port,
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        serve: ServeArgs,
    }

    fn config(args: &[&str]) -> Result<Config, clap::Error> {
        let cli = Cli::try_parse_from(std::iter::once("restmq").chain(args.iter().copied()))?;
        Ok(Config::try_from(&cli.serve).expect("a configuration"))
    }

    #[test]
    fn the_cache_size_is_given_in_mib_and_defaults_to_a_gib() {
        assert_eq!(config(&[]).expect("defaults").cache_bytes, 1 << 30);
        assert_eq!(
            config(&[]).expect("defaults").cache_bytes,
            Config::new("d").cache_bytes
        );
        let small = config(&["--cache-size", "64"]).expect("64 MiB");
        assert_eq!(small.cache_bytes, 64 << 20);
        for refused in ["0", "-1", "lots", "1048577"] {
            let error = config(&[&format!("--cache-size={refused}")])
                .err()
                .unwrap_or_else(|| panic!("--cache-size {refused} was accepted"));
            assert!(error.to_string().contains("--cache-size"), "{error}");
        }
    }
}
