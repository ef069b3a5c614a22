//! `restmq policy <queue> [broadcast|roundrobin]`: shows or sets how a queue's
//! streamed messages are shared among its consumers.

use std::fmt;

use bytes::Bytes;
use hyper::Method;

use super::{CliError, Client, ClientArgs, body_json, body_text, print_line, queue_uri};

/// Options of `restmq policy`.
#[derive(Debug, clap::Args)]
pub struct PolicyArgs {
    /// The queue.
    pub queue: String,
    /// The policy to set; without it, the current one is shown.
    #[arg(value_enum)]
    pub policy: Option<PolicyName>,
    #[command(flatten)]
    pub client: ClientArgs,
}

/// A streaming policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum PolicyName {
    /// Every streamed message goes to every consumer.
    Broadcast,
    /// Each streamed message goes to one consumer, in turn.
    Roundrobin,
}

impl fmt::Display for PolicyName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            PolicyName::Broadcast => "broadcast",
            PolicyName::Roundrobin => "roundrobin",
        })
    }
}

/// `GET /p/<queue>` or `POST /p/<queue>` and prints the policy (`--json`:
/// `{"queue","value"}`, the shape `GET /p/` answers).
pub(super) async fn run(args: &PolicyArgs) -> Result<(), CliError> {
    let uri = queue_uri("p", &args.queue, &[])?;
    let mut client = Client::open(&args.client).await?;
    let Some(policy) = args.policy else {
        let body = client.get(&uri).await?;
        if args.client.json {
            return print_line(&body_text(&body));
        }
        let answer = body_json(&body, "policy")?;
        return match answer["value"].as_str() {
            Some("unknown") => print_line("broadcast (the default: never set)"),
            Some(name) => print_line(name),
            None => Err(CliError::Failed(format!(
                "policy: unexpected answer {answer}"
            ))),
        };
    };
    let form = match policy {
        PolicyName::Broadcast => "policy=broadcast",
        PolicyName::Roundrobin => "policy=roundrobin",
    };
    let (_, body) = client
        .call(
            Method::POST,
            &uri,
            Bytes::from_static(form.as_bytes()),
            None,
        )
        .await?;
    // `OK`; `null` would mean the server does not know the policy.
    let answer = body_text(&body);
    if answer != "OK" {
        return Err(CliError::Failed(format!(
            "the server did not set policy {policy}: it answered {answer}"
        )));
    }
    if args.client.json {
        print_line(
            &serde_json::json!({ "queue": args.queue, "value": policy.to_string() }).to_string(),
        )
    } else {
        print_line(&format!("policy of queue {} set to {policy}", args.queue))
    }
}
