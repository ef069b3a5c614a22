//! Fuzz targets, with proptest:
//!
//! - (a) the JSON command protocol (`POST /queue`) over a real server: arbitrary
//!   bytes and structured-but-wrong commands;
//! - (b) form bodies and query strings of `/q/<q>`, `/` and `/ack` over a real
//!   server, and the query parser in process;
//! - (c) queue names, message keys and receipts, in process;
//! - (d) the ACL file parser, in process: arbitrary text and mutated valid files.
//!
//! Over HTTP: no answer is a 5xx, every refusal is the JSON error schema and
//! changes nothing (`/stats/` before and after), the server never dies. In
//! process: nothing panics, and what has a format/parse pair round-trips.
//!
//! `RESTMQ_FUZZ_CASES` sets the cases of each in-process target (default 256);
//! the HTTP targets run a tenth of that (at least 64), or
//! `RESTMQ_FUZZ_HTTP_CASES`. Each target prints how many cases it ran
//! (`-- --nocapture`). For a long run:
//! `RESTMQ_FUZZ_CASES=200000 cargo test --release --test fuzz -- --nocapture`.

mod common;

use std::cell::Cell;
use std::time::Instant;

use common::TestServer;
use common::raw::{self, is_error_object};
use percent_encoding::{NON_ALPHANUMERIC, utf8_percent_encode};
use proptest::prelude::*;
use proptest::sample::Index;
use proptest::test_runner::{Config as RunnerConfig, TestCaseError, TestRunner};
use restmq::acl;
use restmq::broker::{MAX_QUEUE_NAME, QueueName, Receipt};
use restmq::config::Config;
use restmq::http::params::{Callback, Params};
use serde_json::{Value, json};

/// Cases of each in-process target.
fn cases() -> u32 {
    std::env::var("RESTMQ_FUZZ_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(256)
}

/// Cases of each target that talks HTTP.
fn http_cases() -> u32 {
    std::env::var("RESTMQ_FUZZ_HTTP_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| (cases() / 10).max(64))
}

/// Runs `test` on `cases` inputs from `strategy`, then says how many ran.
fn fuzz<S: Strategy>(
    name: &str,
    cases: u32,
    strategy: S,
    test: impl Fn(S::Value) -> Result<(), TestCaseError>,
) {
    let ran = Cell::new(0u64);
    let started = Instant::now();
    let mut runner = TestRunner::new(RunnerConfig {
        cases,
        failure_persistence: None,
        ..RunnerConfig::default()
    });
    let result = runner.run(&strategy, |input| {
        ran.set(ran.get() + 1);
        test(input)
    });
    eprintln!(
        "fuzz {name}: {} executions ({cases} cases asked) in {:.1?}{}",
        ran.get(),
        started.elapsed(),
        if result.is_ok() { ", no failure" } else { "" }
    );
    if let Err(e) = result {
        panic!("fuzz {name}: {e}");
    }
}

// ---------------------------------------------------------------------------
// A server for the HTTP targets.

/// The body limit of the fuzzed servers: small, so that 413 comes up.
const MAX_BODY: usize = 8192;

/// A server (no long polls: `wait` above 0 is refused at once) and a runtime
/// to drive clients from proptest's synchronous cases.
struct Http {
    rt: tokio::runtime::Runtime,
    server: TestServer,
}

impl Http {
    fn start() -> Http {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("a tokio runtime");
        let server = rt.block_on(async {
            let dir = tempfile::tempdir().expect("temporary directory");
            let mut config = Config::new(dir.path());
            config.max_body = MAX_BODY;
            config.max_wait = 0;
            TestServer::start_with(config, Some(dir)).await
        });
        Http { rt, server }
    }

    /// `GET /stats/`: what a refused request must leave as it was.
    fn stats(&self) -> String {
        let answer = self.rt.block_on(self.server.get("/stats/"));
        assert_eq!(answer.status, 200, "{}", answer.body);
        answer.body
    }

    /// Sends raw request bytes on a new connection.
    fn send(&self, request: &[u8]) -> raw::RawAnswer {
        self.rt
            .block_on(raw::exchange(self.server.addr, request, false))
    }

    /// The server still publishes and pops as usual.
    fn still_serves(&self) {
        self.rt.block_on(async {
            let key = self.server.publish("after-fuzz", "still here").await;
            let popped = self.server.pop("after-fuzz").await;
            assert_eq!(popped, Some((key, "still here".to_owned())));
        });
    }
}

fn fail(what: impl Into<String>) -> TestCaseError {
    TestCaseError::fail(what.into())
}

// ---------------------------------------------------------------------------
// (a) The JSON command protocol.

/// Any JSON value, a few levels deep.
fn json_value() -> BoxedStrategy<Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<f64>().prop_map(Value::from),
        "[ -~]{0,12}".prop_map(Value::from),
        any::<String>().prop_map(Value::from),
    ];
    leaf.prop_recursive(3, 24, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::vec(("[a-z_]{0,6}", inner), 0..4)
                .prop_map(|fields| Value::Object(fields.into_iter().collect())),
        ]
    })
    .boxed()
}

/// A value of the wrong type for most fields.
fn odd_value() -> BoxedStrategy<Value> {
    prop_oneof![
        Just(Value::Null),
        Just(json!(true)),
        Just(json!([])),
        Just(json!({})),
        Just(json!([1, "a"])),
        Just(json!(1.5)),
        Just(json!(-0.0)),
        Just(json!(1e300)),
    ]
    .boxed()
}

/// A time span (ttl, delay, visibility): never a small positive number, so
/// that nothing comes due or expires during a run and `/stats/` moves only
/// when a request changes something.
fn span() -> BoxedStrategy<Value> {
    prop_oneof![
        Just(json!(0)),
        (1_000_000u64..).prop_map(Value::from),
        Just(json!(u64::MAX)),
        (i64::MIN..0).prop_map(Value::from),
        Just(json!("30")),
        Just(json!("")),
        odd_value(),
    ]
    .boxed()
}

fn count() -> BoxedStrategy<Value> {
    prop_oneof![
        (0u64..=3).prop_map(Value::from),
        Just(json!(1000)),
        Just(json!(1001)),
        any::<u64>().prop_map(Value::from),
        (i64::MIN..0).prop_map(Value::from),
        Just(json!("2")),
        odd_value(),
    ]
    .boxed()
}

/// Queue names: the fuzzed queue, odd valid ones, invalid ones, anything.
fn queue_value() -> BoxedStrategy<Value> {
    prop_oneof![
        4 => Just(json!("fz")),
        1 => Just(json!("fz/b:c d")),
        1 => Just(json!("")),
        1 => Just(json!("a\u{0}b")),
        1 => Just(json!("a\u{85}b")),
        1 => Just(json!("x".repeat(MAX_QUEUE_NAME))),
        1 => Just(json!("x".repeat(MAX_QUEUE_NAME + 1))),
        1 => "[A-C]{1,2}".prop_map(Value::from),
        1 => any::<String>().prop_map(Value::from),
        1 => odd_value(),
    ]
    .boxed()
}

fn hex(text: &str) -> String {
    text.bytes().map(|b| format!("{b:02x}")).collect()
}

/// Receipts: real-looking ones of `fz` (some may be live), near misses, junk.
fn receipt_value() -> BoxedStrategy<Value> {
    prop_oneof![
        3 => (1u64..40, 1u32..4)
            .prop_map(|(id, d)| json!(format!("r1.{id:x}.{d:x}.{}", hex("fz")))),
        1 => "r1\\.[0-9a-fA-F+]{1,3}\\.[0-9a-f]{1,2}\\.[0-9a-fA-F]{0,8}".prop_map(Value::from),
        1 => "[ -~]{0,20}".prop_map(Value::from),
        1 => odd_value(),
    ]
    .boxed()
}

/// A command: a known (or unknown, or missing, or mistyped) `cmd` with some of
/// the fields commands read, each of a fitting or a wrong type, plus others.
fn command() -> BoxedStrategy<Value> {
    let cmd = prop_oneof![
        8 => prop::sample::select(vec![
            "add", "get", "take", "del", "receive", "ack", "nack", "extend",
        ])
        .prop_map(Value::from),
        1 => Just(json!("")),
        1 => "[a-z]{1,6}".prop_map(Value::from),
        1 => odd_value(),
    ];
    let value = prop_oneof![
        "[ -~]{0,16}".prop_map(Value::from),
        any::<String>().prop_map(Value::from),
        odd_value(),
    ];
    let key = prop_oneof![
        "fz:[0-9]{1,3}".prop_map(Value::from),
        "[ -~]{0,10}".prop_map(Value::from),
        odd_value(),
    ];
    let receipts = prop_oneof![
        3 => prop::collection::vec(receipt_value(), 0..4).prop_map(Value::Array),
        1 => receipt_value(),
    ];
    let maybe = |s: BoxedStrategy<Value>| prop::option::weighted(0.6, s);
    (
        prop::option::weighted(0.95, cmd),
        maybe(queue_value()),
        maybe(value.boxed()),
        maybe(key.boxed()),
        (maybe(span()), maybe(span()), maybe(span())),
        maybe(count()),
        maybe(receipt_value()),
        prop::option::weighted(0.2, receipts),
        prop::collection::vec(("x_[a-z]{0,4}", json_value()), 0..2),
    )
        .prop_map(
            |(cmd, queue, value, key, (ttl, visibility, delay), max, receipt, receipts, extra)| {
                let mut object = serde_json::Map::new();
                let named = [
                    ("cmd", cmd),
                    ("queue", queue),
                    ("value", value),
                    ("key", key),
                    ("ttl", ttl),
                    ("visibility", visibility),
                    ("delay", delay),
                    ("max", max),
                    ("receipt", receipt),
                    ("receipts", receipts),
                ];
                for (name, field) in named {
                    if let Some(field) = field {
                        object.insert(name.to_owned(), field);
                    }
                }
                object.extend(extra);
                Value::Object(object)
            },
        )
        .boxed()
}

/// How a command reaches `POST /queue`.
#[derive(Debug, Clone)]
enum Carried {
    /// An `application/json` body.
    Json(Vec<u8>),
    /// A form body, as given.
    Form(Vec<u8>),
}

fn urlencode(text: &[u8]) -> String {
    percent_encoding::percent_encode(text, NON_ALPHANUMERIC).to_string()
}

fn json_protocol_input() -> BoxedStrategy<Carried> {
    let text = |v: Value| v.to_string().into_bytes();
    prop_oneof![
        6 => command().prop_map(move |c| Carried::Json(text(c))),
        2 => (command(), any::<Index>(), any::<u8>()).prop_map(move |(c, at, byte)| {
            // A command with one byte changed: broken JSON, or a near miss.
            let mut bytes = text(c);
            let at = at.index(bytes.len());
            bytes[at] = byte;
            Carried::Json(bytes)
        }),
        1 => (command(), any::<Index>()).prop_map(move |(c, at)| {
            let mut bytes = text(c);
            bytes.truncate(at.index(bytes.len() + 1));
            Carried::Json(bytes)
        }),
        2 => prop::collection::vec(any::<u8>(), 0..300).prop_map(Carried::Json),
        1 => json_value().prop_map(move |v| Carried::Json(text(v))),
        3 => (command(), prop::sample::select(vec!["body", "msg"])).prop_map(move |(c, field)| {
            Carried::Form(format!("{field}={}", urlencode(&text(c))).into_bytes())
        }),
        1 => prop::collection::vec(any::<u8>(), 0..300).prop_map(Carried::Form),
        1 => (9000usize..12000).prop_map(|n| Carried::Json(vec![b' '; n])),
    ]
    .boxed()
}

#[test]
fn json_protocol_over_http() {
    let http = Http::start();
    fuzz(
        "(a) JSON protocol, POST /queue",
        http_cases(),
        json_protocol_input(),
        |input| {
            let (content_type, body): (&[u8], &Vec<u8>) = match &input {
                Carried::Json(body) => (b"content-type: application/json", body),
                Carried::Form(body) => (b"content-type: application/x-www-form-urlencoded", body),
            };
            let before = http.stats();
            let answer = http.send(&raw::request("POST", b"/queue", &[content_type], body));
            let status = answer.status;
            if !matches!(status, 200 | 400 | 413) {
                return Err(fail(format!("status {status}: {}", answer.text())));
            }
            let Some(json) = answer.json() else {
                return Err(fail(format!("{status}, not JSON: {:?}", answer.text())));
            };
            if !answer.content_type().starts_with("application/json") {
                return Err(fail(format!("content type {:?}", answer.content_type())));
            }
            let refused = status != 200 || json.get("error").is_some();
            if refused && !is_error_object(&json) {
                return Err(fail(format!("{status}, not the error schema: {json}")));
            }
            if refused && http.stats() != before {
                return Err(fail(format!(
                    "refused ({status} {json}) yet /stats/ changed"
                )));
            }
            Ok(())
        },
    );
    http.still_serves();
}

// ---------------------------------------------------------------------------
// (b) Forms and query strings.

/// Text as it appears in a form or a query: plain characters, good and bad
/// percent escapes, `+`.
fn form_text() -> BoxedStrategy<String> {
    let piece = prop_oneof![
        4 => "[A-Za-z0-9._~-]{1,4}",
        2 => any::<u8>().prop_map(|b| format!("%{b:02X}")),
        1 => Just("+".to_owned()),
        1 => prop::sample::select(vec!["%", "%z", "%G1", "%0", "%%", "%C3", "%E2%82"])
            .prop_map(str::to_owned),
        1 => any::<char>().prop_map(|c| urlencode(c.to_string().as_bytes())),
    ];
    prop::collection::vec(piece, 0..6)
        .prop_map(|pieces| pieces.concat())
        .boxed()
}

/// A number as a parameter: fine, negative, fractional, overflowing, not one.
/// Small positive ones are left out where they would make messages come due.
fn form_number() -> BoxedStrategy<String> {
    prop_oneof![
        Just("0".to_owned()),
        (1_000_000u64..).prop_map(|n| n.to_string()),
        Just(u64::MAX.to_string()),
        Just("18446744073709551616".to_owned()),
        (1u64..2000).prop_map(|n| format!("-{n}")),
        Just("1.5".to_owned()),
        Just("1e3".to_owned()),
        Just("%2B5".to_owned()),
        Just("NaN".to_owned()),
        Just(String::new()),
        form_text(),
    ]
    .boxed()
}

/// `name=value&…` with the parameters the routes read, and others.
fn form_pairs(queues: &'static [&'static str]) -> BoxedStrategy<String> {
    let pair = prop_oneof![
        3 => (prop::sample::select(vec!["value", "msg"]), form_text()),
        2 => (
            prop::sample::select(vec!["ttl", "delay", "visibility", "wait"]),
            form_number()
        ),
        1 => (Just("max"), prop_oneof![(0u64..=3).prop_map(|n| n.to_string()), form_number()]),
        1 => (
            Just("callback"),
            prop_oneof![Just("cb".to_owned()), Just("a.b".to_owned()), form_text()]
        ),
        1 => (
            Just("queue"),
            prop_oneof![
                prop::sample::select(queues.to_vec()).prop_map(str::to_owned),
                form_text()
            ]
        ),
        1 => (prop::sample::select(vec!["receipt", "x", ""]), form_text()),
    ];
    let joined = prop::collection::vec((pair, any::<bool>()), 0..6).prop_map(|pairs| {
        pairs
            .into_iter()
            .map(|((name, value), with_value)| {
                if with_value {
                    format!("{name}={value}")
                } else {
                    name.to_owned()
                }
            })
            .collect::<Vec<_>>()
            .join("&")
    });
    joined.boxed()
}

/// One request to the routes that read forms and queries.
#[derive(Debug, Clone)]
struct FormRequest {
    method: &'static str,
    target: Vec<u8>,
    content_type: Option<&'static str>,
    body: Vec<u8>,
    /// Bytes a request line may not hold: hyper's own bare 400 is fine.
    raw_bytes: bool,
}

fn form_request() -> BoxedStrategy<FormRequest> {
    let form = "application/x-www-form-urlencoded";
    let body = prop_oneof![
        4 => form_pairs(&["fzf"]).prop_map(String::into_bytes),
        2 => prop::collection::vec(any::<u8>(), 0..300),
        1 => (MAX_BODY + 1..MAX_BODY + 3000).prop_map(|n| vec![b'v'; n]),
    ];
    let content_type = prop_oneof![
        4 => Just(Some(form)),
        1 => Just(None),
        1 => Just(Some("application/x-ndjson")),
        1 => Just(Some("text/plain")),
    ];
    let query = prop_oneof![
        6 => form_pairs(&["fzg"]).prop_map(|q| (q.into_bytes(), false)),
        1 => prop::collection::vec(any::<u8>(), 0..60).prop_map(|q| (q, true)),
    ];
    let with_query = |path: &str, (query, raw): (Vec<u8>, bool)| {
        let mut target = path.as_bytes().to_vec();
        target.push(b'?');
        target.extend_from_slice(&query);
        (target, raw)
    };
    prop_oneof![
        (query.clone(), content_type.clone(), body.clone()).prop_map(
            move |(query, content_type, body)| {
                let (target, raw_bytes) = with_query("/q/fzf", query);
                FormRequest {
                    method: "POST",
                    target,
                    content_type,
                    body,
                    raw_bytes,
                }
            }
        ),
        (content_type, body.clone()).prop_map(move |(content_type, body)| FormRequest {
            method: "POST",
            target: b"/".to_vec(),
            content_type,
            body,
            raw_bytes: false,
        }),
        query.clone().prop_map(move |query| {
            let (target, raw_bytes) = with_query("/q/fzg", query);
            FormRequest {
                method: "GET",
                target,
                content_type: None,
                body: Vec::new(),
                raw_bytes,
            }
        }),
        query.prop_map(move |query| {
            let (target, raw_bytes) = with_query("/", query);
            FormRequest {
                method: "GET",
                target,
                content_type: None,
                body: Vec::new(),
                raw_bytes,
            }
        }),
        body.prop_map(move |body| FormRequest {
            method: "POST",
            target: b"/ack".to_vec(),
            content_type: Some(form),
            body,
            raw_bytes: false,
        }),
    ]
    .boxed()
}

#[test]
fn forms_and_queries_over_http() {
    let http = Http::start();
    // Messages for the GETs to take.
    http.rt.block_on(async {
        for round in 0..20 {
            let lines: String = (0..50).map(|i| format!("m{round}-{i}\n")).collect();
            let answer = http
                .server
                .post_raw("/q/fzg", "application/x-ndjson", lines)
                .await;
            assert_eq!(answer.status, 200, "{}", answer.body);
        }
    });
    fuzz(
        "(b) forms and queries, /q/<q>, / and /ack",
        http_cases(),
        form_request(),
        |request| {
            let content_type = request
                .content_type
                .map(|t| format!("content-type: {t}").into_bytes());
            let headers: Vec<&[u8]> = content_type.iter().map(Vec::as_slice).collect();
            let bytes = raw::request(request.method, &request.target, &headers, &request.body);
            let before = http.stats();
            let answer = http.send(&bytes);
            let status = answer.status;
            if !matches!(status, 200 | 204 | 302 | 400 | 404 | 409 | 413) {
                return Err(fail(format!("status {status}: {:?}", answer.text())));
            }
            if status >= 400 {
                let bare = request.raw_bytes && status == 400 && answer.body.is_empty();
                if !bare && !answer.is_json_error() {
                    return Err(fail(format!(
                        "{status}, not the error schema: {:?} {:?}",
                        answer.content_type(),
                        answer.text()
                    )));
                }
                if http.stats() != before {
                    return Err(fail(format!("refused ({status}) yet /stats/ changed")));
                }
            }
            Ok(())
        },
    );
    http.still_serves();
}

/// Arbitrary pairs, percent-encoded then parsed back: the same pairs.
#[test]
fn query_parsing_in_process() {
    let pairs = prop::collection::vec((any::<String>(), any::<String>()), 0..5);
    let input = prop_oneof![
        1 => any::<String>().prop_map(|q| (q, None)),
        1 => form_pairs(&["q"]).prop_map(|q| (q, None)),
        2 => pairs.prop_map(|pairs| {
            let query = pairs
                .iter()
                .map(|(k, v)| {
                    let k = utf8_percent_encode(k, NON_ALPHANUMERIC);
                    let v = utf8_percent_encode(v, NON_ALPHANUMERIC);
                    format!("{k}={v}")
                })
                .collect::<Vec<_>>()
                .join("&");
            (query, Some(pairs))
        }),
    ];
    fuzz(
        "(b) query and form parsing, in process",
        cases(),
        input,
        |(query, pairs)| {
            let parsed = Params::from_query(&query);
            if let Some(pairs) = pairs {
                let parsed = parsed.map_err(|e| fail(format!("{query:?}: {e}")))?;
                for (name, _) in &pairs {
                    let want: Vec<&str> = pairs
                        .iter()
                        .filter(|(k, _)| k == name)
                        .map(|(_, v)| v.as_str())
                        .collect();
                    prop_assert_eq!(parsed.all(name), want, "{:?}", query);
                }
            } else if let Ok(parsed) = parsed {
                // Whatever parses reads back as text; numbers are checked strictly.
                if let Ok(Some(n)) = parsed.number("ttl") {
                    let raw = parsed.raw("ttl").unwrap_or_default().trim();
                    prop_assert_eq!(raw.parse::<u64>().ok(), Some(n));
                    prop_assert!(raw.bytes().all(|b| b.is_ascii_digit()));
                }
                if let Ok(Some(callback)) = parsed.callback() {
                    prop_assert!(callback_is_identifier_path(callback.as_str()));
                }
            }
            Ok(())
        },
    );
    fuzz(
        "(b) callbacks, in process",
        cases(),
        prop_oneof!["[A-Za-z_$.0-9]{0,12}", any::<String>()],
        |name| {
            let parsed = Callback::parse(&name);
            prop_assert_eq!(
                parsed.is_ok(),
                callback_is_identifier_path(&name),
                "{:?}",
                name
            );
            Ok(())
        },
    );
}

/// `[A-Za-z_$][A-Za-z0-9_$]*`, dot-joined, at most 256 bytes.
fn callback_is_identifier_path(name: &str) -> bool {
    name.len() <= 256
        && name.split('.').all(|part| {
            part.bytes()
                .next()
                .is_some_and(|b| b.is_ascii_alphabetic() || b == b'_' || b == b'$')
                && part
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'$')
        })
}

// ---------------------------------------------------------------------------
// (c) Queue names, keys and receipts.

/// Strings near the edges of what a queue name may be.
fn name_text() -> BoxedStrategy<String> {
    prop_oneof![
        3 => any::<String>(),
        2 => "[a-z/: ]{0,8}",
        1 => "[a-z\\x00-\\x1f\\x7f\\x{80}-\\x{9f}]{0,6}",
        1 => (250usize..262).prop_map(|n| "x".repeat(n)),
        1 => (60usize..70).prop_map(|n| "é€".repeat(n)),
    ]
    .boxed()
}

/// A valid name made of any text: control characters dropped, cut to the
/// limit (no filtering, so that long runs reject nothing).
fn valid_name() -> BoxedStrategy<QueueName> {
    name_text()
        .prop_map(|text| {
            let mut name: String = text.chars().filter(|c| !c.is_control()).collect();
            let mut end = name.len().min(MAX_QUEUE_NAME);
            while !name.is_char_boundary(end) {
                end -= 1;
            }
            name.truncate(end);
            if name.is_empty() {
                name.push('q');
            }
            QueueName::parse(&name).expect("a valid name")
        })
        .boxed()
}

#[test]
fn queue_names_and_keys() {
    fuzz("(c) queue names", cases(), name_text(), |text| {
        let valid =
            !text.is_empty() && text.len() <= MAX_QUEUE_NAME && !text.chars().any(char::is_control);
        match QueueName::parse(&text) {
            Ok(name) => {
                prop_assert!(valid, "{:?} accepted", text);
                prop_assert_eq!(name.as_str(), text.as_str());
            }
            Err(e) => {
                prop_assert!(!valid, "{:?} refused: {}", text, e);
                prop_assert_eq!(e.status().as_u16(), 400);
            }
        }
        Ok(())
    });
    let key_input = (
        valid_name(),
        prop_oneof![1u64..100, any::<u64>()],
        prop_oneof![
            any::<String>(),
            "[0-9:+-]{0,6}",
            any::<u64>().prop_map(|n| n.to_string())
        ],
    );
    fuzz(
        "(c) message keys",
        cases(),
        key_input,
        |(name, id, tail)| {
            if id > 0 {
                prop_assert_eq!(name.parse_key(&name.key(id)), Some(id));
            }
            // Only a canonical key of this queue reads as a number.
            for key in [
                tail.clone(),
                format!("{name}:{tail}"),
                format!("{name}{tail}"),
            ] {
                if let Some(n) = name.parse_key(&key) {
                    prop_assert!(n > 0);
                    prop_assert_eq!(name.key(n), key);
                }
            }
            Ok(())
        },
    );
}

#[test]
fn receipts() {
    let made = (valid_name(), 1u64.., 1u32..).prop_map(|(queue, id, delivery)| Receipt {
        queue,
        id,
        delivery,
    });
    let text = prop_oneof![
        2 => any::<String>(),
        2 => "r1\\.[0-9a-fA-F+-]{0,4}\\.[0-9a-fA-F+]{0,3}\\.[0-9a-fA-F]{0,10}",
        // A real receipt with one character changed, or cut.
        3 => (made.clone(), any::<Index>(), any::<char>()).prop_map(|(r, at, c)| {
            let mut chars: Vec<char> = r.to_string().chars().collect();
            let at = at.index(chars.len());
            chars[at] = c;
            chars.into_iter().collect()
        }),
        1 => (made.clone(), any::<Index>()).prop_map(|(r, at)| {
            let text = r.to_string();
            text[..at.index(text.len() + 1)].to_owned()
        }),
    ];
    fuzz(
        "(c) receipts: format then parse",
        cases(),
        made,
        |receipt| {
            prop_assert_eq!(Receipt::parse(&receipt.to_string()), Some(receipt));
            Ok(())
        },
    );
    fuzz("(c) receipts: parse anything", cases(), text, |text| {
        if let Some(receipt) = Receipt::parse(&text) {
            // Only the spelling restmq gives parses.
            prop_assert_eq!(receipt.to_string(), text.trim());
            prop_assert!(receipt.id > 0 && receipt.delivery > 0);
        }
        Ok(())
    });
}

// ---------------------------------------------------------------------------
// (d) The ACL parser.

/// A file that uses every section and key.
const VALID_ACL: &str = "\
# restmq access rules
[rest:producer]
hosts_allow = 127.0.0.1 10.0.0.0/8 ::1
hosts_deny = all
username = producer
password = secret

; the original's comment style
[rest:consumer]
hosts_allow = 192.168.
  172.16.0.0/12
hosts_deny = 10.0.0.1

[comet:consumer]
hosts_deny = 203.0.113.0/24

[websocket:consumer]
username = ws
password = p:w

[token:deployer]
sha256 = 9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08
publish = jobs/* builds
consume = jobs/*
admin = jobs/*

[token: reader ]
sha256 = 2c26b46b68ffc68ff99b453c1d30413413422d706483bfa0f98a5e886266e7ae
consume = *
";

/// Lines a mutation may insert: near misses of valid lines, and nonsense.
const FRAGMENTS: &[&str] = &[
    "[token:]",
    "[token:deployer]",
    "[rest:producer",
    "[Rest:Producer]",
    "[nope]",
    "[]",
    "hosts_allow =",
    "hosts_allow = all 10.0.0.1",
    "hosts_allow = 10.0.0.0/33",
    "hosts_allow = ::/129",
    "hosts_allow = 1.2.3.4/x",
    "hosts_allow = 300.1.1.1/8",
    "hosts_allow = example.com",
    "hosts_deny = ALL",
    "username = someone",
    "password =",
    "sha256 = 1234",
    "sha256 = +f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08",
    "sha256 = 9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00aé",
    "publish = *",
    "bogus = 1",
    "=",
    ":",
    "  indented continuation",
    "\tall",
    "# comment",
    "; comment",
    "no separator at all",
    "[token:a]\nconsume = x",
];

#[derive(Debug, Clone)]
enum Mutation {
    Delete(Index),
    Duplicate(Index),
    Insert(Index, String),
    Swap(Index, Index),
    ReplaceChar(Index, char),
    Truncate(Index),
}

fn mutation() -> BoxedStrategy<Mutation> {
    let fragment = prop_oneof![
        4 => prop::sample::select(FRAGMENTS).prop_map(str::to_owned),
        1 => "[ -~]{0,20}",
        1 => any::<String>(),
    ];
    prop_oneof![
        2 => any::<Index>().prop_map(Mutation::Delete),
        1 => any::<Index>().prop_map(Mutation::Duplicate),
        3 => (any::<Index>(), fragment).prop_map(|(at, f)| Mutation::Insert(at, f)),
        1 => (any::<Index>(), any::<Index>()).prop_map(|(a, b)| Mutation::Swap(a, b)),
        2 => (any::<Index>(), prop_oneof![any::<char>(), Just('['), Just('='), Just(' '), Just('\n')])
            .prop_map(|(at, c)| Mutation::ReplaceChar(at, c)),
        1 => any::<Index>().prop_map(Mutation::Truncate),
    ]
    .boxed()
}

fn mutate(text: &str, mutations: &[Mutation]) -> String {
    let mut lines: Vec<String> = text.lines().map(str::to_owned).collect();
    for mutation in mutations {
        match mutation {
            Mutation::Delete(at) if !lines.is_empty() => {
                lines.remove(at.index(lines.len()));
            }
            Mutation::Duplicate(at) if !lines.is_empty() => {
                let at = at.index(lines.len());
                lines.insert(at, lines[at].clone());
            }
            Mutation::Insert(at, line) => lines.insert(at.index(lines.len() + 1), line.clone()),
            Mutation::Swap(a, b) if !lines.is_empty() => {
                let (a, b) = (a.index(lines.len()), b.index(lines.len()));
                lines.swap(a, b);
            }
            Mutation::ReplaceChar(at, c) if !lines.is_empty() => {
                let len = lines.len();
                let line = &mut lines[at.index(len)];
                let mut chars: Vec<char> = line.chars().collect();
                if !chars.is_empty() {
                    let i = at.index(chars.len());
                    chars[i] = *c;
                    *line = chars.into_iter().collect();
                }
            }
            Mutation::Truncate(at) => {
                let joined = lines.join("\n");
                let mut end = at.index(joined.len() + 1);
                while !joined.is_char_boundary(end) {
                    end -= 1;
                }
                lines = joined[..end].lines().map(str::to_owned).collect();
            }
            Mutation::Delete(_)
            | Mutation::Duplicate(_)
            | Mutation::Swap(..)
            | Mutation::ReplaceChar(..) => {}
        }
    }
    lines.join("\n")
}

/// An error must name a line of the text that holds something: not past the
/// end, not blank, not a comment.
fn check_acl(text: &str) -> Result<(), TestCaseError> {
    let Err(error) = acl::parse(text) else {
        return Ok(());
    };
    let lines: Vec<&str> = text.lines().collect();
    prop_assert!(
        (1..=lines.len()).contains(&error.line),
        "{} names line {} of {}",
        error,
        error.line,
        lines.len()
    );
    let named = lines[error.line - 1].trim();
    prop_assert!(
        !named.is_empty() && !named.starts_with('#') && !named.starts_with(';'),
        "{} names the line {:?}",
        error,
        named
    );
    let shown = error.to_string();
    prop_assert!(
        shown.starts_with(&format!("line {}: ", error.line)),
        "{}",
        shown
    );
    prop_assert!(
        shown.len() > format!("line {}: ", error.line).len(),
        "{}",
        shown
    );
    Ok(())
}

#[test]
fn acl_parser() {
    acl::parse(VALID_ACL).expect("the template is valid");
    let text = prop_oneof![
        2 => any::<String>(),
        1 => prop::collection::vec(prop::sample::select(FRAGMENTS), 0..8)
            .prop_map(|lines| lines.join("\n")),
        1 => "[\\[\\]a-z:=# \\n\\t0-9./*]{0,80}",
    ];
    fuzz("(d) ACL parser, arbitrary text", cases(), text, |text| {
        check_acl(&text)
    });
    fuzz(
        "(d) ACL parser, mutated valid files",
        cases(),
        prop::collection::vec(mutation(), 1..5),
        |mutations| check_acl(&mutate(VALID_ACL, &mutations)),
    );
    // A token's digest is 64 hexadecimal digits, nothing else.
    let nearly_hex = prop::collection::vec(
        prop_oneof![
            60 => prop::sample::select(b"0123456789abcdefABCDEF".to_vec()),
            1 => prop::sample::select(b"+- gx".to_vec()),
        ],
        64,
    )
    .prop_map(|bytes| String::from_utf8(bytes).unwrap_or_default());
    let digest = prop_oneof![
        3 => "[0-9a-fA-F]{64}",
        3 => nearly_hex,
        1 => "[0-9a-f]{60,68}",
        1 => any::<String>(),
    ];
    fuzz("(d) ACL parser, token digests", cases(), digest, |digest| {
        let file = format!("[token:t]\nsha256 = {digest}\nconsume = *\n");
        let value = digest.trim();
        let hex = value.len() == 64 && value.bytes().all(|b| b.is_ascii_hexdigit());
        let parsed = acl::parse(&file);
        prop_assert_eq!(parsed.is_ok(), hex, "{:?}: {:?}", digest, parsed.err());
        check_acl(&file)
    });
    fuzz(
        "(d) address lists",
        cases(),
        prop_oneof!["[0-9a-f.:/, ]{0,30}", any::<String>()],
        |text| {
            let _ = acl::AddressList::parse(&text);
            Ok(())
        },
    );
}
