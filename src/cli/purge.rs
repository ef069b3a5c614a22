//! `restmq purge <queue>`: deletes every message waiting in a queue.

use bytes::Bytes;
use hyper::Method;

use super::{CliError, Client, ClientArgs, body_json, body_text, print_line, queue_uri};

/// Options of `restmq purge`.
#[derive(Debug, clap::Args)]
pub struct PurgeArgs {
    /// The queue to purge. Its streams end; it stays listed and its keys keep
    /// counting.
    pub queue: String,
    #[command(flatten)]
    pub client: ClientArgs,
}

/// `DELETE /q/<queue>`, then says whether there was anything to purge
/// (`--json`: the server's `{"queue","status"}`).
pub(super) async fn run(args: &PurgeArgs) -> Result<(), CliError> {
    let uri = queue_uri("q", &args.queue, &[])?;
    let mut client = Client::open(&args.client).await?;
    let (_, body) = client
        .call(Method::DELETE, &uri, Bytes::new(), None)
        .await?;
    if args.client.json {
        return print_line(&body_text(&body));
    }
    let answer = body_json(&body, "purge")?;
    if answer["status"].as_u64() == Some(1) {
        print_line(&format!(
            "purged queue {}: its waiting messages are deleted",
            args.queue
        ))
    } else {
        print_line(&format!("queue {} had no waiting messages", args.queue))
    }
}
