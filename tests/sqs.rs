//! The SQS-compatible door end to end: boto3's whole flow (JSON protocol),
//! the query protocol's XML, SigV4 verification with configured keys, the
//! access rules, bad input, and long polls at shutdown.

mod common;

use std::path::Path;
use std::process::Command;

use common::{Backend, TestServer, eventually};
use restmq::config::Config;

/// Runs the boto3 script against `server`; `extra` are more arguments.
async fn boto3(server: &TestServer, extra: &[&str]) {
    let sqs = format!("http://{}", server.doors.sqs.expect("the SQS door is on"));
    let http = format!("http://{}", server.addr);
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/python/sqs_boto3.py");
    let mut command = Command::new("python3");
    command.arg(script).arg(&sqs).arg(&http).args(extra);
    let output = tokio::task::spawn_blocking(move || command.output())
        .await
        .expect("join")
        .expect("python3 runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "the boto3 script failed ({}):\n{stdout}\n{stderr}",
        output.status
    );
    println!("{stdout}{stderr}");
}

fn with_sqs(config: &mut Config) {
    config.doors.sqs = Some(0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn boto3_flow() {
    let server = TestServer::configured(Backend::Embedded, with_sqs)
        .await
        .expect("the embedded store");
    boto3(&server, &[]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn boto3_flow_on_redis() {
    let Some(server) = TestServer::configured(Backend::Redis, with_sqs).await else {
        return;
    };
    boto3(&server, &[]).await;
}

/// A server with the SQS door and the ACL `rules`.
async fn with_rules(rules: &str) -> (TestServer, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("a directory");
    let file = dir.path().join("acl.conf");
    std::fs::write(&file, rules).expect("write the rules");
    let server = TestServer::configured(Backend::Embedded, |config| {
        with_sqs(config);
        config.acl = Some(file);
    })
    .await
    .expect("the embedded store");
    (server, dir)
}

fn sqs_url(server: &TestServer, path: &str) -> String {
    format!(
        "http://{}{path}",
        server.doors.sqs.expect("the SQS door is on")
    )
}

/// A JSON protocol request, unsigned.
async fn json_call(
    server: &TestServer,
    target: &str,
    body: &str,
) -> (u16, reqwest::header::HeaderMap, serde_json::Value) {
    let response = server
        .client
        .post(sqs_url(server, "/"))
        .header("x-amz-target", target)
        .header("content-type", "application/x-amz-json-1.0")
        .body(body.to_owned())
        .send()
        .await
        .expect("the door answers");
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    let text = response.text().await.expect("a body");
    let json = serde_json::from_str(&text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"));
    (status, headers, json)
}

/// A query protocol request (a form POST to `path`).
async fn query(server: &TestServer, path: &str, form: &[(&str, &str)]) -> (u16, String) {
    let response = server
        .client
        .post(sqs_url(server, path))
        .form(form)
        .send()
        .await
        .expect("the door answers");
    let status = response.status().as_u16();
    assert_eq!(
        response.headers()["content-type"],
        "text/xml",
        "query answers are XML"
    );
    (status, response.text().await.expect("a body"))
}

/// The text of every `<tag>` element of `xml`, in order.
fn texts(xml: &str, tag: &str) -> Vec<String> {
    let (open, close) = (format!("<{tag}>"), format!("</{tag}>"));
    xml.split(&open)
        .skip(1)
        .filter_map(|rest| rest.split_once(&close).map(|(text, _)| text.to_owned()))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signatures_are_verified_with_keys() {
    let rules = "[sqs:AKIDADMIN]\nsecret_key = admin/Secret+Key\npublish = *\nconsume = *\nadmin = *\n\
                 [sqs:AKIDNARROW]\nsecret_key = narrow-secret\npublish = signed*\n";
    let (server, _dir) = with_rules(rules).await;
    boto3(
        &server,
        &[
            "--keys",
            "AKIDADMIN:admin/Secret+Key,AKIDNARROW:narrow-secret",
        ],
    )
    .await;
    // Unsigned and half-signed requests are refused too.
    let (status, _, body) = json_call(&server, "AmazonSQS.ListQueues", "{}").await;
    assert_eq!(status, 403);
    assert_eq!(
        body["__type"],
        "com.amazonaws.sqs#MissingAuthenticationToken"
    );
    let response = server
        .client
        .post(sqs_url(&server, "/"))
        .header("x-amz-target", "AmazonSQS.ListQueues")
        .header("content-type", "application/x-amz-json-1.0")
        .header(
            "authorization",
            "AWS4-HMAC-SHA256 Credential=AKIDADMIN/20250101",
        )
        .body("{}")
        .send()
        .await
        .expect("answers");
    assert_eq!(response.status(), 400);
    assert!(
        response
            .text()
            .await
            .expect("a body")
            .contains("IncompleteSignature")
    );
}

/// `now` as `x-amz-date` writes it: RFC 3339 without separators or fraction.
fn amz_date(now: std::time::SystemTime) -> String {
    let ms = now
        .duration_since(std::time::UNIX_EPOCH)
        .expect("after 1970")
        .as_millis();
    let rfc3339 = restmq::adapters::syslog::rfc3339(u64::try_from(ms).expect("in range"));
    format!("{}Z", rfc3339[..19].replace(['-', ':'], ""))
}

/// A query protocol request to `path_and_query` with a form `body`, signed
/// with `secret` by restmq's own signer, as an SDK would.
async fn signed_query(
    server: &TestServer,
    path_and_query: &str,
    body: &str,
    secret: &str,
) -> (u16, String) {
    use restmq::adapters::sqs::sign::{Signed, hex, hmac, signing_key, string_to_sign};
    let door = server.doors.sqs.expect("the SQS door is on");
    let date = amz_date(std::time::SystemTime::now());
    let mut headers = reqwest::header::HeaderMap::new();
    headers.insert("host", door.to_string().parse().expect("a value"));
    headers.insert("x-amz-date", date.parse().expect("a value"));
    headers.insert(
        "content-type",
        "application/x-www-form-urlencoded; charset=utf-8"
            .parse()
            .expect("a value"),
    );
    let (path, query) = path_and_query
        .split_once('?')
        .unwrap_or((path_and_query, ""));
    let signed_headers: Vec<String> = ["content-type", "host", "x-amz-date"]
        .map(String::from)
        .to_vec();
    let canonical = Signed {
        method: "POST",
        path,
        query,
        headers: &headers,
        body: body.as_bytes(),
    }
    .canonical_request(&signed_headers);
    let scope = format!("{}/us-east-1/sqs/aws4_request", &date[..8]);
    let key = signing_key(secret, &date[..8], "us-east-1", "sqs");
    let signature = hex(&hmac(
        &key,
        string_to_sign(&date, &scope, &canonical).as_bytes(),
    ));
    let response = server
        .client
        .post(sqs_url(server, path_and_query))
        .headers(headers)
        .header(
            "authorization",
            format!(
                "AWS4-HMAC-SHA256 Credential=AKIDQUERY/{scope}, SignedHeaders=content-type;host;x-amz-date, Signature={signature}"
            ),
        )
        .body(body.to_owned())
        .send()
        .await
        .expect("the door answers");
    (
        response.status().as_u16(),
        response.text().await.expect("a body"),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signed_query_requests_at_a_queue_url() {
    let (server, _dir) =
        with_rules("[sqs:AKIDQUERY]\nsecret_key = query-secret\npublish = *\n").await;
    let body = "MessageBody=a%20b%2Bc%26d&Version=2012-11-05";
    let (status, xml) = signed_query(
        &server,
        "/000000000000/signed-q?Action=SendMessage",
        body,
        "query-secret",
    )
    .await;
    assert_eq!(status, 200, "{xml}");
    assert_eq!(server.pop("signed-q").await.expect("sent").1, "a b+c&d");
    let (status, xml) = signed_query(
        &server,
        "/000000000000/signed-q?Action=SendMessage",
        body,
        "another secret",
    )
    .await;
    assert_eq!(status, 403, "{xml}");
    assert_eq!(texts(&xml, "Code"), ["SignatureDoesNotMatch"]);
    // The key may publish only: a refused purge leaves the message.
    let (status, xml) = signed_query(
        &server,
        "/000000000000/signed-q?Action=SendMessage",
        "MessageBody=kept",
        "query-secret",
    )
    .await;
    assert_eq!(status, 200, "{xml}");
    let (status, xml) = signed_query(
        &server,
        "/000000000000/signed-q?Action=PurgeQueue",
        "",
        "query-secret",
    )
    .await;
    assert_eq!(status, 403, "{xml}");
    assert_eq!(texts(&xml, "Code"), ["AccessDenied"]);
    assert_eq!(server.pop("signed-q").await.expect("kept").1, "kept");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn query_protocol_speaks_xml() {
    let server = TestServer::configured(Backend::Embedded, with_sqs)
        .await
        .expect("the embedded store");
    let (status, xml) = query(
        &server,
        "/",
        &[
            ("Action", "CreateQueue"),
            ("Version", "2012-11-05"),
            ("QueueName", "xml"),
            ("Attribute.1.Name", "VisibilityTimeout"),
            ("Attribute.1.Value", "40"),
        ],
    )
    .await;
    assert_eq!(status, 200, "{xml}");
    assert!(
        xml.contains(
            "<CreateQueueResponse xmlns=\"http://queue.amazonaws.com/doc/2012-11-05/\"><CreateQueueResult><QueueUrl>"
        ),
        "{xml}"
    );
    let url = texts(&xml, "QueueUrl").remove(0);
    assert!(url.ends_with("/000000000000/xml"), "{url}");
    assert_eq!(texts(&xml, "RequestId").len(), 1, "{xml}");

    // At the queue's URL, with attributes; the body needs escaping.
    let (status, xml) = query(
        &server,
        "/000000000000/xml",
        &[
            ("Action", "SendMessage"),
            ("MessageBody", "a <b> & 'c'"),
            ("MessageAttribute.1.Name", "SellerName"),
            ("MessageAttribute.1.Value.DataType", "String"),
            ("MessageAttribute.1.Value.StringValue", "Example Store"),
        ],
    )
    .await;
    assert_eq!(status, 200, "{xml}");
    assert!(xml.starts_with("<?xml"), "{xml}");
    assert!(xml.contains("<SendMessageResponse"), "{xml}");
    assert_eq!(
        texts(&xml, "MD5OfMessageAttributes"),
        ["cd28f3b68aeee4b2eac9c66f2f694b58"],
        "AWS's documented example"
    );
    let body_md5 = texts(&xml, "MD5OfMessageBody").remove(0);

    // Received with GET at /, with QueueUrl.
    let receive = format!(
        "/?Action=ReceiveMessage&Version=2012-11-05&QueueUrl={}&AttributeName.1=All&MessageAttributeName.1=All",
        url.replace(':', "%3A").replace('/', "%2F")
    );
    let response = server
        .client
        .get(sqs_url(&server, &receive))
        .send()
        .await
        .expect("answers");
    assert_eq!(response.status(), 200);
    let xml = response.text().await.expect("a body");
    assert_eq!(
        texts(&xml, "Body"),
        ["a &lt;b&gt; &amp; &apos;c&apos;"],
        "{xml}"
    );
    assert_eq!(texts(&xml, "MD5OfBody"), [body_md5], "{xml}");
    assert!(
        xml.contains("<MessageAttribute><Name>SellerName</Name><Value><DataType>String</DataType><StringValue>Example Store</StringValue></Value></MessageAttribute>"),
        "{xml}"
    );
    assert!(
        xml.contains("<Attribute><Name>ApproximateReceiveCount</Name><Value>1</Value></Attribute>"),
        "{xml}"
    );
    let receipt = texts(&xml, "ReceiptHandle").remove(0);

    // A batch: one good entry, one refused, answered per entry.
    let (status, xml) = query(
        &server,
        "/000000000000/xml",
        &[
            ("Action", "SendMessageBatch"),
            ("SendMessageBatchRequestEntry.1.Id", "good"),
            ("SendMessageBatchRequestEntry.1.MessageBody", "fine"),
            ("SendMessageBatchRequestEntry.2.Id", "bad"),
            ("SendMessageBatchRequestEntry.2.MessageBody", "x"),
            ("SendMessageBatchRequestEntry.2.DelaySeconds", "901"),
        ],
    )
    .await;
    assert_eq!(status, 200, "{xml}");
    assert_eq!(texts(&xml, "SendMessageBatchResultEntry").len(), 1, "{xml}");
    assert!(
        texts(&xml, "BatchResultErrorEntry")[0].contains("<Id>bad</Id>"),
        "{xml}"
    );
    assert!(xml.contains("<Code>InvalidParameterValue</Code>"), "{xml}");

    // A batch refused whole.
    let (status, xml) = query(
        &server,
        "/000000000000/xml",
        &[
            ("Action", "DeleteMessageBatch"),
            ("DeleteMessageBatchRequestEntry.1.Id", "same"),
            ("DeleteMessageBatchRequestEntry.1.ReceiptHandle", &receipt),
            ("DeleteMessageBatchRequestEntry.2.Id", "same"),
            ("DeleteMessageBatchRequestEntry.2.ReceiptHandle", &receipt),
        ],
    )
    .await;
    assert_eq!(status, 400, "{xml}");
    assert!(xml.contains("<ErrorResponse"), "{xml}");
    assert_eq!(texts(&xml, "Type"), ["Sender"]);
    assert_eq!(
        texts(&xml, "Code"),
        ["AWS.SimpleQueueService.BatchEntryIdsNotDistinct"]
    );
    assert!(xml.contains("<Detail/>"), "{xml}");
    // The refused batch deleted nothing: the message is still in flight.
    let (_, xml) = query(
        &server,
        "/000000000000/xml",
        &[("Action", "GetQueueAttributes"), ("AttributeName.1", "All")],
    )
    .await;
    assert!(
        xml.contains("<Attribute><Name>ApproximateNumberOfMessagesNotVisible</Name><Value>1</Value></Attribute>"),
        "{xml}"
    );
    assert!(
        xml.contains("<Attribute><Name>VisibilityTimeout</Name><Value>40</Value></Attribute>"),
        "{xml}"
    );
    assert!(
        xml.contains("<Value>arn:aws:sqs:us-east-1:000000000000:xml</Value>"),
        "{xml}"
    );

    let (status, xml) = query(
        &server,
        "/000000000000/xml",
        &[("Action", "DeleteMessage"), ("ReceiptHandle", &receipt)],
    )
    .await;
    assert_eq!(status, 200, "{xml}");
    assert!(
        xml.contains("<DeleteMessageResponse xmlns=\"http://queue.amazonaws.com/doc/2012-11-05/\"><ResponseMetadata>"),
        "{xml}"
    );

    // Unknown and missing actions, unsupported ones.
    let (status, xml) = query(&server, "/", &[("Action", "Explode")]).await;
    assert_eq!(status, 400);
    assert_eq!(texts(&xml, "Code"), ["InvalidAction"]);
    let (status, xml) = query(&server, "/", &[("QueueName", "x")]).await;
    assert_eq!(status, 400);
    assert_eq!(texts(&xml, "Code"), ["MissingParameter"]);
    let (status, xml) = query(&server, "/", &[("Action", "TagQueue")]).await;
    assert_eq!(status, 400);
    assert_eq!(
        texts(&xml, "Code"),
        ["AWS.SimpleQueueService.UnsupportedOperation"]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_changes_nothing() {
    let server = TestServer::configured(Backend::Embedded, |config| {
        with_sqs(config);
        config.max_body = 64 * 1024;
    })
    .await
    .expect("the embedded store");
    let queue_url = "http://127.0.0.1/000000000000/bad";
    let cases: Vec<(&str, String, u16, &str, &str)> = vec![
        (
            "AmazonSQS.SendMessage",
            "{not json".into(),
            400,
            "SerializationException",
            "MalformedQueryString",
        ),
        (
            "AmazonSQS.SendMessage",
            "[1, 2]".into(),
            400,
            "SerializationException",
            "MalformedQueryString",
        ),
        (
            "AmazonSQS.Explode",
            "{}".into(),
            400,
            "InvalidAction",
            "InvalidAction",
        ),
        (
            "SendMessage",
            "{}".into(),
            400,
            "InvalidAction",
            "InvalidAction",
        ),
        (
            "AmazonSQS.SendMessage",
            format!(r#"{{"QueueUrl": "{queue_url}"}}"#),
            400,
            "MissingParameter",
            "MissingParameter",
        ),
        (
            "AmazonSQS.SendMessage",
            format!(r#"{{"QueueUrl": "{queue_url}", "MessageBody": 5}}"#),
            400,
            "InvalidParameterValue",
            "InvalidParameterValue",
        ),
        (
            "AmazonSQS.SendMessage",
            format!(
                r#"{{"QueueUrl": "{queue_url}", "MessageBody": "x", "MessageAttributes": {{"k": {{"DataType": "Number", "StringValue": "nan?"}}}}}}"#
            ),
            400,
            "InvalidParameterValue",
            "InvalidParameterValue",
        ),
        (
            "AmazonSQS.SendMessage",
            r#"{"QueueUrl": "http://h/000000000000/no such", "MessageBody": "x"}"#.into(),
            400,
            "QueueDoesNotExist",
            "AWS.SimpleQueueService.NonExistentQueue",
        ),
        (
            "AmazonSQS.SendMessageBatch",
            format!(
                r#"{{"QueueUrl": "{queue_url}", "Entries": [{}]}}"#,
                (0..11)
                    .map(|i| format!(r#"{{"Id": "e{i}", "MessageBody": "m"}}"#))
                    .collect::<Vec<_>>()
                    .join(",")
            ),
            400,
            "TooManyEntriesInBatchRequest",
            "AWS.SimpleQueueService.TooManyEntriesInBatchRequest",
        ),
        (
            "AmazonSQS.SendMessageBatch",
            format!(r#"{{"QueueUrl": "{queue_url}", "Entries": []}}"#),
            400,
            "EmptyBatchRequest",
            "AWS.SimpleQueueService.EmptyBatchRequest",
        ),
        (
            "AmazonSQS.SendMessageBatch",
            format!(
                r#"{{"QueueUrl": "{queue_url}", "Entries": [{{"Id": "a b", "MessageBody": "m"}}]}}"#
            ),
            400,
            "InvalidBatchEntryId",
            "AWS.SimpleQueueService.InvalidBatchEntryId",
        ),
        (
            "AmazonSQS.SendMessage",
            format!(
                r#"{{"QueueUrl": "{queue_url}", "MessageBody": "{}"}}"#,
                "x".repeat(70 * 1024)
            ),
            413,
            "RequestEntityTooLarge",
            "RequestEntityTooLarge",
        ),
        (
            "AmazonSQS.ReceiveMessage",
            format!(r#"{{"QueueUrl": "{queue_url}", "WaitTimeSeconds": 21}}"#),
            400,
            "InvalidParameterValue",
            "InvalidParameterValue",
        ),
        (
            "AmazonSQS.ChangeMessageVisibility",
            format!(
                r#"{{"QueueUrl": "{queue_url}", "ReceiptHandle": "r1.1.1.626164", "VisibilityTimeout": 5}}"#
            ),
            400,
            "MessageNotInflight",
            "AWS.SimpleQueueService.MessageNotInflight",
        ),
    ];
    for (target, body, status, name, query_code) in cases {
        let (got, headers, json) = json_call(&server, target, &body).await;
        let shown = &body[..body.len().min(120)];
        assert_eq!(got, status, "{target} {shown}: {json}");
        assert_eq!(
            json["__type"],
            format!("com.amazonaws.sqs#{name}"),
            "{target} {shown}"
        );
        assert!(json["message"].is_string(), "{json}");
        assert_eq!(
            headers["x-amzn-query-error"],
            format!("{query_code};Sender").as_str(),
            "{target} {shown}"
        );
    }
    let stats = server.get("/stats/bad").await.json();
    assert_eq!(stats["len"], 0, "nothing was sent: {stats}");
    // Timed by action; unknown actions mint no label.
    let metrics = server.get("/metrics").await.body;
    assert!(
        metrics.contains(r#"method="POST",route="sqs:SendMessage""#),
        "{metrics}"
    );
    assert!(metrics.contains(r#"route="sqs""#), "{metrics}");
    assert!(!metrics.contains("Explode"), "{metrics}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn address_rules_and_credentials_apply() {
    // Producers only from 10.0.0.1: this client may receive, not send.
    let (server, _dir) = with_rules("[rest:producer]\nhosts_allow = 10.0.0.1\n").await;
    let url = format!(
        r#"{{"QueueUrl": "{}"}}"#,
        sqs_url(&server, "/000000000000/acl")
    );
    let send = r#"{"QueueUrl": "http://h/000000000000/acl", "MessageBody": "x"}"#;
    let (status, headers, body) = json_call(&server, "AmazonSQS.SendMessage", send).await;
    assert_eq!(status, 403, "{body}");
    assert_eq!(body["__type"], "com.amazonaws.sqs#AccessDenied");
    assert_eq!(headers["x-amzn-query-error"], "AccessDenied;Sender");
    let (status, _, body) = json_call(&server, "AmazonSQS.ReceiveMessage", &url).await;
    assert_eq!(status, 200, "{body}");
    drop(server);

    // HTTP Basic on consumers: an SQS client cannot present it, and is told
    // to use access keys.
    let (server, _dir) = with_rules("[rest:consumer]\nusername = u\npassword = p\n").await;
    let (status, _, body) = json_call(&server, "AmazonSQS.ReceiveMessage", &url).await;
    assert_eq!(status, 403, "{body}");
    assert!(
        body["message"]
            .as_str()
            .is_some_and(|m| m.contains("[sqs:")),
        "{body}"
    );
    let (status, _, body) = json_call(&server, "AmazonSQS.SendMessage", send).await;
    assert_eq!(status, 200, "producers need no credentials here: {body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queue_attributes_survive_a_restart() {
    let server = TestServer::configured(Backend::Embedded, with_sqs)
        .await
        .expect("the embedded store");
    let set = r#"{"QueueUrl": "http://h/000000000000/kept", "Attributes": {"DelaySeconds": "7", "VisibilityTimeout": "50"}}"#;
    let (status, _, body) = json_call(&server, "AmazonSQS.SetQueueAttributes", set).await;
    assert_eq!(status, 200, "{body}");
    // A change over HTTP keeps the SQS door's delay.
    let answer = server
        .post_raw("/config/kept", "application/json", r#"{"max_len": 5}"#)
        .await;
    assert_eq!(answer.status, 200, "{}", answer.body);
    let server = server.restart().await;
    let get = r#"{"QueueUrl": "http://h/000000000000/kept", "AttributeNames": ["DelaySeconds", "VisibilityTimeout"]}"#;
    let (status, _, body) = json_call(&server, "AmazonSQS.GetQueueAttributes", get).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body["Attributes"],
        serde_json::json!({"DelaySeconds": "7", "VisibilityTimeout": "50"})
    );
    assert_eq!(server.get("/config/kept").await.json()["max_len"], 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn long_polls_answer_at_shutdown() {
    let server = TestServer::configured(Backend::Embedded, with_sqs)
        .await
        .expect("the embedded store");
    let client = server.client.clone();
    let url = sqs_url(&server, "/");
    let poll = tokio::spawn(async move {
        let response = client
            .post(url)
            .header("x-amz-target", "AmazonSQS.ReceiveMessage")
            .header("content-type", "application/x-amz-json-1.0")
            .body(r#"{"QueueUrl": "http://h/000000000000/idle", "WaitTimeSeconds": 20}"#)
            .send()
            .await
            .expect("the long poll is answered");
        (
            response.status().as_u16(),
            response.text().await.expect("a body"),
        )
    });
    eventually("the long poll to wait", || async {
        let stats = server.get("/stats/idle").await.json();
        (stats["waiting"] == 1).then_some(())
    })
    .await;
    let started = std::time::Instant::now();
    server.stop().await;
    let (status, body) = poll.await.expect("join");
    assert_eq!(status, 200, "{body}");
    assert_eq!(body, "{}");
    assert!(
        started.elapsed() < std::time::Duration::from_secs(15),
        "answered at shutdown, not after its 20 s"
    );
}
