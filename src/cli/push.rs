//! `restmq push <queue> [value]`: publishes one message, or every line of stdin.

use std::io::{self, BufRead, IsTerminal};

use bytes::Bytes;
use hyper::Method;
use tokio::sync::mpsc;

use super::{CliError, Client, ClientArgs, body_text, print_line, queue_uri};

/// Most lines published in one request when reading stdin.
const BATCH_LINES: usize = 1000;

/// Bytes after which a batch is sent: well under the server's default
/// `--max-body` (1 MiB), so that a server configured smaller still takes it.
const BATCH_BYTES: usize = 64 << 10;

/// Options of `restmq push`.
#[derive(Debug, clap::Args)]
pub struct PushArgs {
    /// The queue to publish to.
    pub queue: String,
    /// The message, stored as given; without it, each line of stdin is one
    /// message (blank lines are skipped).
    pub value: Option<String>,
    /// Seconds after which a message not yet delivered is dropped (0: never).
    #[arg(long, value_name = "SECS")]
    pub ttl: Option<u64>,
    /// Seconds a message stays invisible before it can be delivered.
    #[arg(long, value_name = "SECS")]
    pub delay: Option<u64>,
    #[command(flatten)]
    pub client: ClientArgs,
}

/// Publishes and prints each key (`--json`: `{"queue","key"}` per line).
pub(super) async fn run(args: &PushArgs) -> Result<(), CliError> {
    // `ttl` and `delay` go in the query: the body is the message itself.
    let uri = queue_uri(
        "q",
        &args.queue,
        &[("ttl", args.ttl), ("delay", args.delay)],
    )?;
    let mut client = Client::open(&args.client).await?;
    if let Some(value) = &args.value {
        // A body that is not a form is stored byte for byte, as a message given
        // on the command line is expected to be.
        let body = value.clone().into_bytes();
        return publish(
            &mut client,
            &uri,
            args,
            body,
            "text/plain; charset=utf-8",
            1,
        )
        .await;
    }
    let mut lines = read_stdin();
    // Whatever stdin already has goes in one request (up to a batch), but a
    // line is never held back waiting for the next: `tail -f log | restmq push
    // logs` publishes each line as it comes.
    while let Some(first) = lines.recv().await {
        let mut batch = Vec::new();
        let mut count = 0;
        let mut failure = None;
        let mut next = Some(first);
        while let Some(line) = next.take() {
            match line {
                // The server skips blank lines of a batch: so must the count of keys.
                Ok(line) if line.trim().is_empty() => {}
                Ok(line) => {
                    batch.extend_from_slice(line.as_bytes());
                    batch.push(b'\n');
                    count += 1;
                }
                Err(e) => {
                    failure = Some(e);
                    break;
                }
            }
            if count < BATCH_LINES && batch.len() < BATCH_BYTES {
                next = lines.try_recv().ok();
            }
        }
        // What came before a bad line is published, so that the keys printed
        // are exactly the lines published.
        if count > 0 {
            publish(
                &mut client,
                &uri,
                args,
                batch,
                "application/x-ndjson",
                count,
            )
            .await?;
        }
        if let Some(e) = failure {
            return Err(e);
        }
    }
    Ok(())
}

/// Publishes `expected` messages in one request and prints their keys.
async fn publish(
    client: &mut Client,
    uri: &hyper::Uri,
    args: &PushArgs,
    body: Vec<u8>,
    content_type: &'static str,
    expected: usize,
) -> Result<(), CliError> {
    let (_, answer) = client
        .call(Method::POST, uri, Bytes::from(body), Some(content_type))
        .await?;
    let answer = body_text(&answer);
    let keys: Vec<&str> = answer.lines().map(str::trim_end).collect();
    if keys.len() != expected {
        return Err(CliError::Failed(format!(
            "published {expected} messages, but the server answered {} keys: {answer}",
            keys.len()
        )));
    }
    for key in keys {
        print_key(&args.queue, key, args.client.json)?;
    }
    Ok(())
}

/// Prints a key as a human or a script wants it.
fn print_key(queue: &str, key: &str, json: bool) -> Result<(), CliError> {
    if json {
        print_line(&serde_json::json!({ "queue": queue, "key": key }).to_string())
    } else {
        print_line(key)
    }
}

/// The lines of stdin, read on a thread of their own: a blocking read of a
/// terminal or a pipe cannot be cancelled, and a thread (unlike a runtime's
/// blocking task) does not keep the process alive once the command is done.
fn read_stdin() -> mpsc::Receiver<Result<String, CliError>> {
    let (sender, receiver) = mpsc::channel(BATCH_LINES);
    let stdin = io::stdin();
    if stdin.is_terminal() {
        eprintln!("restmq: reading messages from stdin, one per line; Ctrl-D ends");
    }
    std::thread::spawn(move || {
        for (number, line) in stdin.lock().lines().enumerate() {
            let line = line.map_err(|e| match e.kind() {
                io::ErrorKind::InvalidData => CliError::Usage(format!(
                    "stdin line {} is not UTF-8: neither it nor the lines after it were published",
                    number + 1
                )),
                _ => CliError::Failed(format!("cannot read stdin: {e}")),
            });
            let stop = line.is_err();
            if sender.blocking_send(line).is_err() || stop {
                break;
            }
        }
    });
    receiver
}
