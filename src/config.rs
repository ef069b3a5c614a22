//! Server settings: command-line flags, each also an environment variable.

use std::path::PathBuf;

use clap::Args;

use crate::broker::hub::StreamLimits;

/// Default limit of a request body, in bytes (1 MiB).
pub const DEFAULT_MAX_BODY: usize = 1024 * 1024;
/// Highest `--max-body` accepted (1 GiB): a message is held in memory whole.
const MAX_BODY_CEILING: u64 = 1 << 30;

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

    /// Acknowledge changes once written to the operating system, without waiting
    /// for the disk (no fsync). A crash of restmq still loses nothing; a crash of
    /// the machine can lose the changes of the last seconds.
    #[arg(long, env = "RESTMQ_NO_FSYNC")]
    pub no_fsync: bool,
}

/// Validated settings of a server.
#[derive(Debug, Clone)]
pub struct Config {
    /// Directory of the embedded store.
    pub data_dir: PathBuf,
    /// Largest request body accepted, in bytes.
    pub max_body: usize,
    /// Whether changes are fsynced before they are acknowledged.
    pub fsync: bool,
    /// Limits of streaming delivery.
    pub streams: StreamLimits,
}

impl Config {
    /// Settings for a store in `data_dir` with every other option at its default.
    pub fn new(data_dir: impl Into<PathBuf>) -> Config {
        Config {
            data_dir: data_dir.into(),
            max_body: DEFAULT_MAX_BODY,
            fsync: true,
            streams: StreamLimits::default(),
        }
    }
}

impl From<&ServeArgs> for Config {
    fn from(args: &ServeArgs) -> Config {
        Config {
            data_dir: args.data_dir.clone(),
            max_body: usize::try_from(args.max_body).unwrap_or(usize::MAX),
            fsync: !args.no_fsync,
            streams: StreamLimits {
                consumer_buffer: args.stream_buffer as usize,
                resume_buffer: args.resume_buffer as usize,
            },
        }
    }
}
