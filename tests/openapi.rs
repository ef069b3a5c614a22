//! `/openapi.json`: it describes exactly the routes the router has, each
//! documented operation answers with a status it documents, and the document is
//! valid OpenAPI 3.1 (checked by `openapi-spec-validator` from PyPI).

mod common;

use std::collections::{BTreeMap, BTreeSet};

use common::TestServer;

/// The routes in `src/http/mod.rs`: path (as OpenAPI writes it) to methods.
fn router_routes() -> BTreeMap<String, BTreeSet<String>> {
    let source = include_str!("../src/http/mod.rs");
    let mut routes = BTreeMap::new();
    for block in source.split(".route(").skip(1) {
        let path = block
            .split('"')
            .nth(1)
            .expect("a route starts with its path")
            .replace("{*", "{");
        // The handlers end where the next builder call starts.
        let handlers = block
            .split("\n        .")
            .next()
            .expect("a route's handlers");
        let methods: BTreeSet<String> = ["get", "post", "delete"]
            .into_iter()
            .filter(|m| {
                handlers.contains(&format!(" {m}("))
                    || handlers.contains(&format!("({m}("))
                    || handlers.contains(&format!(".{m}("))
            })
            .map(str::to_owned)
            .collect();
        assert!(!methods.is_empty(), "no method found for {path}");
        routes.insert(path, methods);
    }
    assert!(routes.len() > 25, "found only {routes:?}");
    routes
}

async fn document(server: &TestServer) -> serde_json::Value {
    let answer = server.get("/openapi.json").await;
    assert_eq!(answer.status, 200);
    assert!(answer.content_type.starts_with("application/json"));
    answer.json()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_route_is_described_and_nothing_else() {
    let server = TestServer::start().await;
    let document = document(&server).await;
    assert_eq!(document["openapi"], "3.1.0");
    let described: BTreeMap<String, BTreeSet<String>> = document["paths"]
        .as_object()
        .expect("paths")
        .iter()
        .map(|(path, item)| {
            let methods = item
                .as_object()
                .expect("a path item")
                .keys()
                .cloned()
                .collect();
            (path.clone(), methods)
        })
        .collect();
    assert_eq!(described, router_routes());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_operation_answers_as_described() {
    let server = TestServer::start().await;
    server.publish("docq", "hello").await;
    let document = document(&server).await;
    let client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("a client");
    for (path, item) in document["paths"].as_object().expect("paths") {
        for (method, operation) in item.as_object().expect("a path item") {
            let url = server.url(
                &path
                    .replace("{queue}", "docq")
                    .replace("{path}", "help.html"),
            );
            let request = match method.as_str() {
                "get" => client.get(&url),
                "post" => client.post(&url),
                "delete" => client.delete(&url),
                other => panic!("unexpected method {other}"),
            };
            let answer = request.send().await.expect("an answer");
            let status = answer.status().as_u16().to_string();
            let documented = operation["responses"].as_object().expect("responses");
            assert!(
                documented.contains_key(&status),
                "{method} {path} answered {status}, documented {:?}",
                documented.keys().collect::<Vec<_>>()
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_document_is_valid_openapi() {
    let validator = std::process::Command::new("python3")
        .args(["-c", "import openapi_spec_validator"])
        .status();
    if !validator.is_ok_and(|status| status.success()) {
        assert!(
            std::env::var_os("CI").is_none(),
            "openapi-spec-validator is not installed, and CI is set: .ci/run installs it"
        );
        eprintln!("skipping: pip install openapi-spec-validator to validate the document");
        return;
    }
    let server = TestServer::start().await;
    let dir = tempfile::tempdir().expect("a directory");
    let file = dir.path().join("openapi.json");
    std::fs::write(&file, document(&server).await.to_string()).expect("write");
    let output = std::process::Command::new("python3")
        .args([
            "-c",
            "import sys, json; from openapi_spec_validator import validate; \
             validate(json.load(open(sys.argv[1]))); print('valid')",
        ])
        .arg(&file)
        .output()
        .expect("run the validator");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
}
