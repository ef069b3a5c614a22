//! `restmq bench`: a load generator for a running server.

use clap::Args;

/// Options of `restmq bench`.
#[derive(Debug, Clone, Args)]
pub struct BenchArgs {
    /// Base URL of the server.
    #[arg(long, default_value = "http://127.0.0.1:8888")]
    pub server: String,
}

/// Runs the benchmark and prints its report.
pub async fn run(args: &BenchArgs) -> Result<(), String> {
    Err(format!("not implemented yet ({})", args.server))
}
