//! The command-line client: `restmq push`, `pop`, `tail`, `stats`, `purge`,
//! `policy`, `pause` and `resume`, one file per command.
//!
//! Each command makes one keep-alive connection to `--server` and prints for a
//! human by default (values, keys, an aligned table), or with `--json` what the
//! server answered, so that scripts get the documented shapes. Errors go to
//! stderr as `restmq: <what>`; the exit code is 0 on success, 1 when the request
//! failed or found nothing (an empty queue), 2 when the invocation itself is
//! wrong (an unusable URL, queue name or credentials).

mod control;
mod policy;
mod pop;
mod purge;
mod push;
mod stats;
mod tail;

use std::fmt;
use std::io::{self, Write};
use std::process::ExitCode;
use std::time::Duration;

use base64::Engine;
use bytes::Bytes;
use http_body_util::Full;
use hyper::client::conn::http1::SendRequest;
use hyper::header::{AUTHORIZATION, CONTENT_TYPE, HeaderValue};
use hyper::{Method, Request, StatusCode, Uri};

use crate::client::{self, Endpoint, REQUEST_TIMEOUT, ResolveError};

pub use control::ControlArgs;
pub use policy::{PolicyArgs, PolicyName};
pub use pop::PopArgs;
pub use purge::PurgeArgs;
pub use push::PushArgs;
pub use stats::StatsArgs;
pub use tail::TailArgs;

/// The client's subcommands, flattened into `restmq`'s own.
#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// Publish a message and print its key; without a value, publish every
    /// line of stdin (one message per line).
    Push(PushArgs),
    /// Take the oldest message of a queue and print its value (exit code 1
    /// when the queue is empty).
    Pop(PopArgs),
    /// Print a queue's messages as they arrive (Server-Sent Events) until
    /// Ctrl-C. Streamed messages are taken from the queue, as `pop` takes them.
    Tail(TailArgs),
    /// Show every queue (length, status, policy, consumers, waiting long polls,
    /// messages in flight and delayed), or one queue.
    Stats(StatsArgs),
    /// Delete every message waiting in a queue (no confirmation is asked).
    Purge(PurgeArgs),
    /// Show a queue's streaming policy, or set it: broadcast or roundrobin.
    Policy(PolicyArgs),
    /// Pause a queue's streaming delivery: messages wait in the queue (pop
    /// still takes them) until `resume`.
    Pause(ControlArgs),
    /// Resume a paused queue's streaming delivery, backlog first.
    Resume(ControlArgs),
}

/// The options every client command takes: where the server is, how to
/// authenticate, and how to print.
#[derive(Debug, Clone, clap::Args)]
pub struct ClientArgs {
    /// Base URL of the server (plain http: `http://host[:port]`).
    #[arg(long, env = "RESTMQ_SERVER", default_value = "http://127.0.0.1:8888")]
    pub server: String,
    /// Print what the server answered, as JSON, instead of text for humans.
    #[arg(long)]
    pub json: bool,
    /// Bearer token (see `restmq token`), sent as `Authorization: Bearer`; it
    /// wins over --user when both are given.
    #[arg(long, env = "RESTMQ_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// HTTP Basic credentials, as in the ACL file's `username` and `password`.
    #[arg(
        long,
        env = "RESTMQ_USER",
        hide_env_values = true,
        value_name = "USER:PASSWORD"
    )]
    pub user: Option<String>,
}

/// Why a client command failed; each kind has its exit code.
#[derive(Debug)]
pub enum CliError {
    /// The invocation or its input is wrong; nothing was sent for it (exit 2).
    Usage(String),
    /// The server cannot be reached (exit 1).
    Unreachable(String),
    /// The server refused the request with this status and message (exit 1).
    Refused {
        /// The answer's status.
        status: StatusCode,
        /// The server's `error`, or the body when it is not JSON.
        message: String,
    },
    /// There was nothing to take (exit 1).
    Empty(String),
    /// The request failed on the way, or the answer made no sense (exit 1).
    Failed(String),
    /// Standard output could not be written (exit 1; silent for a closed pipe).
    Output(io::Error),
}

impl CliError {
    /// The process's exit code for this failure.
    pub fn exit_code(&self) -> u8 {
        match self {
            CliError::Usage(_) => 2,
            CliError::Unreachable(_)
            | CliError::Refused { .. }
            | CliError::Empty(_)
            | CliError::Failed(_)
            | CliError::Output(_) => 1,
        }
    }
}

impl fmt::Display for CliError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CliError::Usage(what)
            | CliError::Unreachable(what)
            | CliError::Empty(what)
            | CliError::Failed(what) => f.write_str(what),
            CliError::Refused { status, message } => {
                write!(f, "{status}: {message}")?;
                match *status {
                    StatusCode::UNAUTHORIZED => f.write_str(
                        " (the server wants credentials: give --token or --user, or set \
                         RESTMQ_TOKEN or RESTMQ_USER)",
                    ),
                    StatusCode::FORBIDDEN => f.write_str(
                        " (this address, or these credentials, may not do that: check \
                         --token or --user and the server's ACL)",
                    ),
                    _ => Ok(()),
                }
            }
            CliError::Output(e) => write!(f, "cannot write the output: {e}"),
        }
    }
}

impl From<io::Error> for CliError {
    fn from(error: io::Error) -> CliError {
        CliError::Output(error)
    }
}

/// Runs a client command, prints its error if any, and gives the exit code.
pub async fn run(command: Command) -> ExitCode {
    let result = match command {
        Command::Push(args) => push::run(&args).await,
        Command::Pop(args) => pop::run(&args).await,
        Command::Tail(args) => tail::run(&args).await,
        Command::Stats(args) => stats::run(&args).await,
        Command::Purge(args) => purge::run(&args).await,
        Command::Policy(args) => policy::run(&args).await,
        Command::Pause(args) => control::run(&args, control::Action::Pause).await,
        Command::Resume(args) => control::run(&args, control::Action::Resume).await,
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        // The reader went away (`restmq tail q | head -1`): that is how a
        // pipeline says it has enough, not an error worth a message.
        Err(CliError::Output(e)) if e.kind() == io::ErrorKind::BrokenPipe => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("restmq: {e}");
            ExitCode::from(e.exit_code())
        }
    }
}

/// Writes one line to stdout. Rust's stdout flushes at each newline, so a
/// line reaches a pipe as soon as it is printed (which `tail` relies on).
fn print_line(line: &str) -> Result<(), CliError> {
    let mut stdout = io::stdout().lock();
    stdout.write_all(line.as_bytes())?;
    stdout.write_all(b"\n")?;
    Ok(())
}

/// A server's answer body as text, without the CRLF that ends most of them.
fn body_text(body: &[u8]) -> String {
    String::from_utf8_lossy(body).trim_end().to_owned()
}

/// The body parsed as JSON, or a failure naming what was asked.
fn body_json(body: &[u8], what: &str) -> Result<serde_json::Value, CliError> {
    serde_json::from_slice(body).map_err(|e| {
        CliError::Failed(format!(
            "{what}: the server answered no JSON ({e}): {}",
            body_text(body)
        ))
    })
}

/// `/<route>/<queue>` with the parameters that are set as its query.
fn queue_uri(route: &str, queue: &str, params: &[(&str, Option<u64>)]) -> Result<Uri, CliError> {
    let path = client::queue_uri(route, queue).map_err(CliError::Usage)?;
    let query: Vec<String> = params
        .iter()
        .filter_map(|(name, value)| value.map(|value| format!("{name}={value}")))
        .collect();
    if query.is_empty() {
        return Ok(path);
    }
    format!("{path}?{}", query.join("&"))
        .parse()
        .map_err(|e| CliError::Usage(format!("no valid path for queue {queue:?}: {e}")))
}

/// The `Authorization` header the options ask for, if any.
fn authorization(args: &ClientArgs) -> Result<Option<HeaderValue>, CliError> {
    let value = match (&args.token, &args.user) {
        (Some(token), _) => format!("Bearer {}", token.trim()),
        (None, Some(user)) => {
            if !user.contains(':') {
                return Err(CliError::Usage(
                    "--user takes USER:PASSWORD (RESTMQ_USER likewise)".into(),
                ));
            }
            format!(
                "Basic {}",
                base64::engine::general_purpose::STANDARD.encode(user)
            )
        }
        (None, None) => return Ok(None),
    };
    let mut header = HeaderValue::from_str(&value).map_err(|_| {
        CliError::Usage("--token has characters that cannot go in an HTTP header".into())
    })?;
    header.set_sensitive(true);
    Ok(Some(header))
}

/// One server, one keep-alive connection, the credentials every request carries.
pub(crate) struct Client {
    /// `--server` as given, for messages.
    url: String,
    endpoint: Endpoint,
    auth: Option<HeaderValue>,
    sender: Option<SendRequest<Full<Bytes>>>,
}

impl Client {
    /// Checks the options, then finds the server.
    async fn open(args: &ClientArgs) -> Result<Client, CliError> {
        let auth = authorization(args)?;
        let endpoint = client::resolve(&args.server).await.map_err(|e| match e {
            ResolveError::InvalidServer { .. } => CliError::Usage(e.to_string()),
            ResolveError::Resolve { .. } | ResolveError::Connect { .. } => {
                CliError::Unreachable(unreachable_message(&args.server, &e))
            }
        })?;
        Ok(Client {
            url: args.server.clone(),
            endpoint,
            auth,
            sender: None,
        })
    }

    /// A request carrying the `Host` and `Authorization` headers; a body goes
    /// with its `content_type`.
    fn request(
        &self,
        method: Method,
        uri: &Uri,
        body: Bytes,
        content_type: Option<&'static str>,
    ) -> Request<Full<Bytes>> {
        let mut request = client::request(method, uri, &self.endpoint.host, body);
        if let Some(content_type) = content_type {
            request
                .headers_mut()
                .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
        }
        if let Some(auth) = &self.auth {
            request.headers_mut().insert(AUTHORIZATION, auth.clone());
        }
        request
    }

    /// The open connection, or a new one when there is none or the server
    /// closed it while idle (between two batches of a slow stdin, say):
    /// nothing was sent on a closed connection, so opening another is safe.
    async fn sender(&mut self) -> Result<&mut SendRequest<Full<Bytes>>, CliError> {
        if let Some(sender) = self.sender.as_mut() {
            if sender.ready().await.is_err() {
                self.sender = None;
            }
        }
        match self.sender {
            Some(ref mut sender) => Ok(sender),
            None => {
                let sender = client::connect(self.endpoint.addr)
                    .await
                    .map_err(|e| CliError::Unreachable(unreachable_message(&self.url, &e)))?;
                Ok(self.sender.insert(sender))
            }
        }
    }

    /// Sends `request` and reads the whole answer within `limit`: its status
    /// and body, whatever the status. A failed exchange is not retried: the
    /// server may have carried it out.
    async fn exchange(
        &mut self,
        request: Request<Full<Bytes>>,
        limit: Duration,
    ) -> Result<(StatusCode, Bytes), CliError> {
        let what = format!("{} {}", request.method(), request.uri());
        let sender = self.sender().await?;
        match client::exchange_body(sender, request, limit).await {
            Ok(answer) => Ok(answer),
            Err(e) => {
                self.sender = None;
                Err(CliError::Failed(format!("{what} on {}: {e}", self.url)))
            }
        }
    }

    /// Like [`Client::exchange`] within the usual time, but an answer that is
    /// not 2xx is an error carrying the server's message.
    async fn call(
        &mut self,
        method: Method,
        uri: &Uri,
        body: Bytes,
        content_type: Option<&'static str>,
    ) -> Result<(StatusCode, Bytes), CliError> {
        let request = self.request(method, uri, body, content_type);
        let (status, body) = self.exchange(request, REQUEST_TIMEOUT).await?;
        check(status, &body)?;
        Ok((status, body))
    }

    /// `GET uri` and its whole body, which must come with a 2xx.
    async fn get(&mut self, uri: &Uri) -> Result<Bytes, CliError> {
        Ok(self.call(Method::GET, uri, Bytes::new(), None).await?.1)
    }

    /// `POST uri` with a form body (its fields already encoded).
    async fn post_form(&mut self, uri: &Uri, form: &'static str) -> Result<Bytes, CliError> {
        let body = Bytes::from_static(form.as_bytes());
        Ok(self.call(Method::POST, uri, body, None).await?.1)
    }
}

/// Why the server at `url` could not be reached, and what to check.
fn unreachable_message(url: &str, error: &dyn fmt::Display) -> String {
    format!(
        "cannot reach the restmq server at {url}: {error} (is it running? the server is \
         chosen with --server or RESTMQ_SERVER)"
    )
}

/// An answer that is not 2xx as an error: the server's `{"error": …}`, or
/// its body, or the status's name.
fn check(status: StatusCode, body: &[u8]) -> Result<(), CliError> {
    if status.is_success() {
        return Ok(());
    }
    let message = serde_json::from_slice::<serde_json::Value>(body)
        .ok()
        .and_then(|answer| {
            answer
                .get("error")
                .and_then(|e| e.as_str())
                .map(str::to_owned)
        })
        .unwrap_or_else(|| {
            let text = body_text(body);
            if text.is_empty() {
                status
                    .canonical_reason()
                    .unwrap_or("no reason given")
                    .to_owned()
            } else {
                text.chars().take(500).collect()
            }
        });
    Err(CliError::Refused { status, message })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(token: Option<&str>, user: Option<&str>) -> ClientArgs {
        ClientArgs {
            server: "http://127.0.0.1:8888".into(),
            json: false,
            token: token.map(str::to_owned),
            user: user.map(str::to_owned),
        }
    }

    #[test]
    fn makes_the_authorization_header() {
        let header = |token, user| {
            authorization(&args(token, user))
                .ok()
                .flatten()
                .and_then(|h| h.to_str().ok().map(str::to_owned))
        };
        assert_eq!(header(None, None), None);
        assert_eq!(
            header(Some("rmq_ab"), None).as_deref(),
            Some("Bearer rmq_ab")
        );
        assert_eq!(
            header(None, Some("producer:change-me")).as_deref(),
            Some("Basic cHJvZHVjZXI6Y2hhbmdlLW1l")
        );
        assert_eq!(
            header(Some("t"), Some("u:p")).as_deref(),
            Some("Bearer t"),
            "the token wins"
        );
        assert!(matches!(
            authorization(&args(None, Some("nocolon"))),
            Err(CliError::Usage(_))
        ));
        assert!(matches!(
            authorization(&args(Some("a\nb"), None)),
            Err(CliError::Usage(_))
        ));
    }

    #[test]
    fn reads_server_errors() {
        let refused = check(
            StatusCode::BAD_REQUEST,
            b"{\"error\":\"missing value\"}\r\n",
        );
        assert_eq!(
            refused.map_err(|e| e.to_string()),
            Err("400 Bad Request: missing value".to_owned())
        );
        let message = check(StatusCode::UNAUTHORIZED, b"")
            .map_err(|e| e.to_string())
            .err()
            .unwrap_or_default();
        assert!(
            message.starts_with("401 Unauthorized: Unauthorized"),
            "{message}"
        );
        assert!(message.contains("--token"), "{message}");
        assert!(check(StatusCode::NO_CONTENT, b"").is_ok());
    }

    #[test]
    fn puts_parameters_in_the_query() {
        let uri = queue_uri("q", "a/b", &[("ttl", Some(5)), ("delay", None)])
            .map(|uri| uri.to_string())
            .ok();
        assert_eq!(uri.as_deref(), Some("/q/a%2Fb?ttl=5"));
        assert!(matches!(queue_uri("q", "", &[]), Err(CliError::Usage(_))));
    }
}
