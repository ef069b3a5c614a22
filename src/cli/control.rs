//! `restmq pause <queue>` and `restmq resume <queue>`: stop and restart a
//! queue's streaming delivery.

use super::{CliError, Client, ClientArgs, body_json, body_text, print_line, queue_uri};

/// Options of `restmq pause` and `restmq resume`.
#[derive(Debug, clap::Args)]
pub struct ControlArgs {
    /// The queue.
    pub queue: String,
    #[command(flatten)]
    pub client: ClientArgs,
}

/// Which way to switch the queue.
#[derive(Debug, Clone, Copy)]
pub(super) enum Action {
    Pause,
    Resume,
}

/// `POST /control/<queue>` with `status=stop` or `start` (`--json`: the
/// server's `{"stat":{"queue","status"}}`).
pub(super) async fn run(args: &ControlArgs, action: Action) -> Result<(), CliError> {
    let uri = queue_uri("control", &args.queue, &[])?;
    let mut client = Client::open(&args.client).await?;
    let (form, wanted, done) = match action {
        Action::Pause => ("status=stop", 0, "paused"),
        Action::Resume => ("status=start", 1, "resumed"),
    };
    let body = client.post_form(&uri, form).await?;
    let answer = body_json(&body, "control")?;
    // An invalid status is answered 200 `{"stat":"invalid status: …"}`.
    if answer["stat"]["status"].as_u64() != Some(wanted) {
        return Err(CliError::Failed(format!(
            "the server did not switch queue {}: it answered {}",
            args.queue,
            body_text(&body)
        )));
    }
    if args.client.json {
        return print_line(&body_text(&body));
    }
    print_line(&format!("{done} queue {}", args.queue))
}
