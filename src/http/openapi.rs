//! `GET /openapi.json`: an OpenAPI 3.1 description of every route, built once.
//! The README explains the routes at length; this is for tools.

use std::sync::OnceLock;

use axum::Json;
use serde_json::{Value, json};

/// The document.
pub async fn document() -> Json<Value> {
    static DOCUMENT: OnceLock<Value> = OnceLock::new();
    Json(DOCUMENT.get_or_init(build).clone())
}

/// A parameter in the query string.
fn query(name: &str, description: &str, schema: Value) -> Value {
    json!({ "name": name, "in": "query", "required": false, "description": description, "schema": schema })
}

fn integer(minimum: u64) -> Value {
    json!({ "type": "integer", "minimum": minimum })
}

fn string() -> Value {
    json!({ "type": "string" })
}

/// The queue named by the rest of the path.
fn queue_path() -> Value {
    json!({
        "name": "queue", "in": "path", "required": true,
        "description": "The queue: the whole rest of the path, 1 to 256 bytes once percent-decoded, no control characters; it may contain `/`.",
        "schema": { "type": "string", "minLength": 1, "maxLength": 256 }
    })
}

fn callback() -> Value {
    query(
        "callback",
        "JSONP: wrap the answer as `NAME(...);`",
        json!({ "type": "string", "pattern": "^[A-Za-z_$][A-Za-z0-9_$]*(\\.[A-Za-z_$][A-Za-z0-9_$]*)*$" }),
    )
}

/// A JSON answer with a schema reference or inline schema.
fn json_answer(description: &str, schema: Value) -> Value {
    json!({ "description": description, "content": { "application/json": { "schema": schema } } })
}

fn text_answer(description: &str) -> Value {
    json!({ "description": description, "content": { "text/html": { "schema": string() } } })
}

fn error_ref() -> Value {
    json!({ "$ref": "#/components/schemas/Error" })
}

/// The errors every route may answer, plus those given.
fn with_errors(mut responses: Value, statuses: &[&str]) -> Value {
    for status in statuses.iter().chain(&["401", "403", "503"]) {
        responses[*status] = json!({ "$ref": format!("#/components/responses/E{status}") });
    }
    responses
}

/// A form body (or the same fields as query parameters) with these fields.
fn form(properties: Value, required: &[&str]) -> Value {
    json!({
        "required": !required.is_empty(),
        "content": {
            "application/x-www-form-urlencoded": {
                "schema": { "type": "object", "properties": properties, "required": required }
            }
        }
    })
}

fn operation(summary: &str, parameters: Vec<Value>, responses: Value) -> Value {
    json!({ "summary": summary, "parameters": parameters, "responses": responses })
}

/// The answer of a route prefix named without its queue.
fn no_queue(summary: &str) -> Value {
    operation(
        summary,
        vec![],
        json!({ "400": { "$ref": "#/components/responses/E400" } }),
    )
}

fn publish_body() -> Value {
    json!({
        "required": true,
        "content": {
            "application/x-www-form-urlencoded": { "schema": { "type": "object", "properties": {
                "value": { "description": "The message; repeat it for a batch.", "type": "string" },
                "msg": { "description": "The message (wins over value).", "type": "string" },
                "ttl": { "description": "Seconds before an undelivered message is dropped; 0 never.", "type": "integer", "minimum": 0 },
                "delay": { "description": "Seconds the message stays invisible.", "type": "integer", "minimum": 0 },
                "queue": { "description": "The queue (POST / only).", "type": "string" }
            } } },
            "application/x-ndjson": { "schema": { "type": "string", "description": "One message per line." } },
            "*/*": { "schema": { "type": "string", "description": "One message, the body as is (UTF-8)." } }
        }
    })
}

fn consume_parameters() -> Vec<Value> {
    vec![
        query(
            "max",
            "Up to this many messages, as a JSON array.",
            json!({ "type": "integer", "minimum": 1, "maximum": 1000 }),
        ),
        query(
            "wait",
            "Long poll: seconds to wait for a message (at most --max-wait).",
            integer(0),
        ),
        query(
            "visibility",
            "Receive instead of take: hide the message this many seconds and return a receipt.",
            integer(1),
        ),
        callback(),
    ]
}

fn build() -> Value {
    let message = json!({ "$ref": "#/components/schemas/Message" });
    let taken = json_answer(
        "The oldest message (or, with max, an array of messages).",
        json!({ "oneOf": [message, { "type": "array", "items": message }] }),
    );
    let receipts = form(
        json!({
            "receipt": { "type": "string", "description": "A receipt from a receive; repeat it for several of one queue." },
            "delay": { "type": "integer", "minimum": 0, "description": "nack: seconds before the message is visible again." },
            "visibility": { "type": "integer", "minimum": 1, "description": "extend: seconds from now." }
        }),
        &["receipt"],
    );
    let settled = |summary: &str| {
        let mut op = operation(
            summary,
            vec![],
            with_errors(
                json!({ "200": json_answer("Done.", json!({ "type": "object" })) }),
                &["400", "409"],
            ),
        );
        op["requestBody"] = receipts.clone();
        op
    };
    let stream = |summary: &str, media: &str| {
        operation(
            summary,
            vec![
                queue_path(),
                callback(),
                query(
                    "last_event_id",
                    "Resume after this key (as the Last-Event-ID header).",
                    string(),
                ),
            ],
            with_errors(
                json!({ "200": { "description": "A stream of messages until the queue is deleted or the client leaves.", "content": { media: { "schema": string() } } } }),
                &["400"],
            ),
        )
    };
    let mut publish = operation(
        "Publish one message, or a batch (all or none). Answers the keys, one per line.",
        vec![queue_path(), callback()],
        with_errors(
            json!({ "200": text_answer("The keys, one per line, each ended by CRLF.") }),
            &["400", "413", "429"],
        ),
    );
    publish["requestBody"] = publish_body();
    let mut publish_root = operation(
        "Publish to the queue named by the `queue` parameter.",
        vec![callback()],
        with_errors(
            json!({ "200": text_answer("The keys, one per line.") }),
            &["400", "413", "429"],
        ),
    );
    publish_root["requestBody"] = publish_body();
    let mut policy_set = operation(
        "Set the queue's streaming policy.",
        vec![queue_path(), callback()],
        with_errors(
            json!({ "200": text_answer("`OK`, or `null` for an unknown policy.") }),
            &["400"],
        ),
    );
    policy_set["requestBody"] = form(
        json!({ "policy": { "enum": ["broadcast", "roundrobin"] } }),
        &["policy"],
    );
    let mut control_set = operation(
        "Pause (stop) or resume (start) streaming of the queue.",
        vec![queue_path(), callback()],
        with_errors(
            json!({ "200": json_answer("The new status.", json!({ "type": "object" })) }),
            &["400"],
        ),
    );
    control_set["requestBody"] = form(
        json!({ "status": { "enum": ["start", "stop"] } }),
        &["status"],
    );
    let settings = json!({ "$ref": "#/components/schemas/Settings" });
    let mut config_set = operation(
        "Change the settings named; answers them all.",
        vec![queue_path()],
        with_errors(
            json!({ "200": json_answer("Every setting.", settings.clone()) }),
            &["400"],
        ),
    );
    config_set["requestBody"] = json!({
        "required": true,
        "content": {
            "application/json": { "schema": settings },
            "application/x-www-form-urlencoded": { "schema": { "type": "object", "properties": { "body": { "type": "string", "description": "The settings as JSON." } } } }
        }
    });
    let collectd = |summary: &str, text: &str, json: &str| {
        let mut op = operation(
            summary,
            vec![callback()],
            with_errors(
                json!({ "200": text_answer("The message's key, as for POST /q/<q>.") }),
                &["400", "413", "415"],
            ),
        );
        op["requestBody"] = json!({
            "required": true,
            "content": {
                "text/plain": { "schema": { "type": "string", "description": text } },
                "application/json": { "schema": { "type": "array", "items": { "type": "object" }, "description": json } }
            }
        });
        op
    };
    let collectd_data = collectd(
        "collectd's write_http value lists, into the queue collectd_data as one message (collectd's JSON shape).",
        "PUTVAL lines (Format Command).",
        "Value lists (Format JSON), stored as sent.",
    );
    let collectd_event = collectd(
        "A collectd notification, into the queue collectd_event as one message (collectd's JSON shape).",
        "Header lines (Severity: …), a blank line, the message; any other Content-Type is read so too.",
        "Notifications (collectd's JSON), stored as sent.",
    );
    let mut command = operation(
        "Run one command of the JSON protocol: add, get, take, del, receive, ack, nack, extend.",
        vec![],
        with_errors(
            json!({ "200": json_answer("The command's answer.", json!({ "type": "object" })) }),
            &["400", "409", "413", "429"],
        ),
    );
    command["requestBody"] = json!({
        "required": true,
        "content": {
            "application/json": { "schema": { "$ref": "#/components/schemas/Command" } },
            "application/x-www-form-urlencoded": { "schema": { "type": "object", "properties": { "body": { "type": "string", "description": "The command as JSON." } } } }
        }
    });
    let mut document = json!({
        "openapi": "3.1.0",
        "info": {
            "title": "restmq",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "A message queue over plain HTTP, compatible with RestMQ. Queues are created by the first POST and drained by GET; streamed over COMET, Server-Sent Events and WebSockets.",
            "license": { "name": "MIT", "identifier": "MIT" }
        },
        "paths": {
            "/": {
                "get": operation("Take the oldest message of the queue named by `queue` (404 when empty); without `queue`, redirect to the dashboard.",
                    [vec![query("queue", "The queue.", string())], consume_parameters()].concat(),
                    with_errors(json!({ "200": taken.clone(), "302": { "description": "To /static/index.html." } }), &["400", "404"])),
                "post": publish_root
            },
            "/q/": {
                "get": operation("List the queues: HTML links, or JSON with Accept: application/json.", vec![callback()],
                    with_errors(json!({ "200": json_answer("The queues.", json!({ "type": "object", "properties": { "queues": { "type": "array", "items": string() }, "count": { "type": "integer" } } })) }), &[])),
                "post": no_queue("A publish without a queue name: 400.")
            },
            "/q/{queue}": {
                "get": operation("Take (or, with visibility, receive) the oldest message; 204 when empty.",
                    [vec![queue_path()], consume_parameters()].concat(),
                    with_errors(json!({ "200": taken, "204": { "description": "The queue is empty." } }), &["400"])),
                "post": publish,
                "delete": operation("Purge the queue and end its streams.", vec![queue_path(), callback()],
                    with_errors(json!({ "200": json_answer("Whether anything was waiting.", json!({ "type": "object", "properties": { "queue": string(), "status": { "type": "integer" } } })) }), &["400"]))
            },
            "/queue": {
                "get": operation("Redirect to the protocol's help page.", vec![], json!({ "302": { "description": "To /static/help.html." } })),
                "post": command
            },
            "/p/": { "get": no_queue("Without a queue: 400."), "post": no_queue("Without a queue: 400.") },
            "/p/{queue}": {
                "get": operation("The queue's streaming policy.", vec![queue_path(), callback()],
                    with_errors(json!({ "200": json_answer("The policy.", json!({ "type": "object", "properties": { "queue": string(), "value": string() } })) }), &["400"])),
                "post": policy_set
            },
            "/control/": {
                "get": operation("Every queue's status.", vec![callback()], with_errors(json!({ "200": json_answer("Statuses.", json!({ "type": "object" })) }), &[])),
                "post": no_queue("Without a queue: 400.")
            },
            "/control/{queue}": {
                "get": operation("The queue's status (1 started, 0 stopped).", vec![queue_path(), callback()],
                    with_errors(json!({ "200": json_answer("The status.", json!({ "type": "object" })) }), &["400"])),
                "post": control_set
            },
            "/ack": { "post": settled("Acknowledge: the message is done and deleted.") },
            "/nack": { "post": settled("Release: the message is visible again, now or after delay.") },
            "/extend": { "post": settled("Keep the message hidden for visibility more seconds, from now.") },
            "/config/": { "get": no_queue("Without a queue: 400."), "post": no_queue("Without a queue: 400.") },
            "/config/{queue}": {
                "get": operation("The queue's settings.", vec![queue_path()], with_errors(json!({ "200": json_answer("Every setting.", json!({ "$ref": "#/components/schemas/Settings" })) }), &["400"])),
                "post": config_set
            },
            "/redrive/": { "post": no_queue("Without a queue: 400.") },
            "/redrive/{queue}": {
                "post": operation("Move the dead letters back to the tail of the queue.", vec![queue_path()],
                    with_errors(json!({ "200": json_answer("What moved.", json!({ "type": "object", "properties": { "from": string(), "moved": { "type": "integer" }, "queue": string() } })) }), &["400"]))
            },
            "/healthz": { "get": operation("The process is up.", vec![], json!({ "200": json_answer("Up.", json!({ "type": "object" })) })) },
            "/readyz": { "get": operation("The store is reachable.", vec![], json!({ "200": json_answer("Ready.", json!({ "type": "object" })), "503": { "$ref": "#/components/responses/E503" } })) },
            "/metrics": {
                "get": operation("Prometheus metrics: counters per queue since the process started, the queues' gauges, request and store latency histograms.", vec![],
                    with_errors(json!({ "200": { "description": "The text exposition format.", "content": { "text/plain": { "schema": string() } } } }), &[]))
            },
            "/stats/": { "get": operation("Every queue's counts.", vec![callback()], with_errors(json!({ "200": json_answer("Counts per queue.", json!({ "type": "object" })) }), &[])) },
            "/stats/{queue}": {
                "get": operation("The queue's counts: len, consumers, waiting, inflight, delayed, published (the last message's number).", vec![queue_path(), callback()],
                    with_errors(json!({ "200": json_answer("Counts.", json!({ "type": "object" })) }), &["400"]))
            },
            "/j/": { "get": no_queue("Without a queue: 400.") },
            "/j/{queue}": { "get": operation("An HTML view of the queue.", vec![queue_path()], with_errors(json!({ "200": text_answer("The page.") }), &["400"])) },
            "/c/": { "get": no_queue("Without a queue: 400.") },
            "/c/{queue}": { "get": stream("COMET: one JSON line per message (SSE with Accept: text/event-stream).", "text/plain") },
            "/sse/": { "get": no_queue("Without a queue: 400.") },
            "/sse/{queue}": { "get": stream("Server-Sent Events: id is the key, data the message.", "text/event-stream") },
            "/ws/": { "get": no_queue("Without a queue: 400.") },
            "/ws/{queue}": {
                "get": operation("WebSocket: a text frame per message; with ack=1, receive and settle by commands.",
                    vec![queue_path(), query("ack", "1: receive with receipts, settled by ack/nack/extend frames.", json!({ "enum": ["1"] })),
                         query("prefetch", "With ack=1: most unsettled messages at once.", json!({ "type": "integer", "minimum": 1, "maximum": 1000 })),
                         query("visibility", "With ack=1: seconds each message is hidden.", integer(1))],
                    with_errors(json!({ "101": { "description": "Switching to WebSocket." }, "426": { "$ref": "#/components/responses/E426" } }), &["400"]))
            },
            "/static/{path}": {
                "get": operation("Bundled pages and assets.", vec![json!({ "name": "path", "in": "path", "required": true, "schema": string() })],
                    json!({ "200": { "description": "The file." }, "404": { "$ref": "#/components/responses/E404" } }))
            },
            "/ui": {
                "get": operation("The dashboard (the page of /static/index.html): queues, rates, live tail, publish, pause, policy and purge.", vec![],
                    json!({ "200": { "description": "The page.", "content": { "text/html": { "schema": string() } } } }))
            },
            "/openapi.json": { "get": operation("This document.", vec![], json!({ "200": json_answer("OpenAPI 3.1.", json!({ "type": "object" })) })) }
        },
        "components": {
            "schemas": {
                "Error": {
                    "type": "object", "required": ["error"],
                    "properties": {
                        "error": { "type": "string", "description": "What went wrong." },
                        "stale": { "type": "array", "items": string(), "description": "409: the stale receipts." }
                    }
                },
                "Message": {
                    "type": "object", "required": ["key", "value"],
                    "properties": {
                        "key": { "type": "string", "description": "`<queue>:<n>`." },
                        "value": string(),
                        "count": { "type": "integer", "description": "Deliveries so far, this one included." },
                        "receipt": { "type": "string", "description": "With visibility: settles this delivery." }
                    }
                },
                "Settings": {
                    "type": "object",
                    "properties": {
                        "visibility": { "type": "integer", "minimum": 1 },
                        "max_receives": { "type": "integer", "minimum": 0 },
                        "dead_letter": { "type": ["string", "null"] },
                        "max_len": { "type": "integer", "minimum": 0 },
                        "retention": { "type": "integer", "minimum": 0 }
                    }
                },
                "Command": {
                    "type": "object", "required": ["cmd"],
                    "properties": {
                        "cmd": { "enum": ["add", "get", "take", "del", "receive", "ack", "nack", "extend"] },
                        "queue": string(), "value": string(), "key": string(),
                        "receipt": string(), "receipts": { "type": "array", "items": string() },
                        "visibility": { "type": "integer", "minimum": 1 }, "delay": { "type": "integer", "minimum": 0 }
                    }
                }
            },
            "responses": {
                "E400": json_answer("Bad input: an invalid queue name, parameter or body.", error_ref()),
                "E401": json_answer("Credentials missing or wrong; WWW-Authenticate says which kind would do.", error_ref()),
                "E403": json_answer("The address is refused, or the token has no such right.", error_ref()),
                "E404": json_answer("Not found.", error_ref()),
                "E409": json_answer("Stale receipts.", error_ref()),
                "E413": json_answer("The body is over --max-body.", error_ref()),
                "E426": json_answer("A WebSocket route reached without a handshake.", error_ref()),
                "E429": json_answer("The queue is at its max_len.", error_ref()),
                "E503": json_answer("The store cannot be reached, or the server is shutting down.", error_ref())
            },
            "securitySchemes": {
                "basic": { "type": "http", "scheme": "basic" },
                "bearer": { "type": "http", "scheme": "bearer" },
                "access_token": { "type": "apiKey", "in": "query", "name": "access_token" }
            }
        },
        "security": [{}, { "basic": [] }, { "bearer": [] }, { "access_token": [] }]
    });
    // Added apart: one json! literal of everything passes the macro's
    // recursion limit.
    document["paths"]["/collectd/data"] = json!({ "post": collectd_data });
    document["paths"]["/collectd/event"] = json!({ "post": collectd_event });
    document["components"]["responses"]["E415"] = json_answer(
        "The body's Content-Type is not one the route takes.",
        error_ref(),
    );
    document
}
