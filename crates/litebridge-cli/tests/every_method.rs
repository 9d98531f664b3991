//! Every method `rpc.discover` lists is served over HTTP and over stdio: its
//! example (from the method table, in table order) succeeds on a real server
//! with real Python workers, so no method is listed without working on
//! every transport (the `events.*` methods, over HTTP, answer `unsupported`
//! naming `GET /events`, HTTP's own event stream).

use serde_json::{Value, json};

mod common;

/// The methods and their examples' parameters, in table order, as
/// `rpc.discover` gives them.
fn examples(doc: &Value) -> Vec<(String, Value)> {
    doc["methods"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            let params: serde_json::Map<String, Value> = m["examples"][0]["params"]
                .as_array()
                .unwrap()
                .iter()
                .map(|p| (p["name"].as_str().unwrap().to_owned(), p["value"].clone()))
                .collect();
            (
                m["name"].as_str().unwrap().to_owned(),
                Value::Object(params),
            )
        })
        .collect()
}

fn call(id: usize, method: &str, params: &Value) -> Value {
    json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params})
}

fn assert_succeeded(transport: &str, method: &str, reply: &Value) {
    assert!(
        reply.get("result").is_some() && reply.get("error").is_none(),
        "{method} over {transport}: {reply}"
    );
}

#[test]
fn every_method_s_example_succeeds_over_http_and_stdio() {
    let dir = tempfile::tempdir().unwrap();
    let workers = ["--workers", "python3 examples/worker.py"];

    // HTTP, with a key (the example of admin.keys.create makes another).
    let db = dir.path().join("h.db");
    let key = common::create_key(&db, "tests", "admin", "enterprise");
    let server = common::Server::start(&db, &workers);
    let (status, doc) = server.rpc_as(Some(&key), &call(0, "rpc.discover", &json!({})));
    assert_eq!(status, 200, "{doc}");
    let methods = examples(&doc["result"]);
    assert!(methods.len() > 25, "{doc}");
    for (i, (method, params)) in methods.iter().enumerate() {
        let (_, reply) = server.rpc_as(Some(&key), &call(i + 1, method, params));
        if method.starts_with("events.") {
            // HTTP cannot push: its event stream is GET /events, and the
            // method says so (tests/events.rs reads that stream).
            assert_eq!(reply["error"]["data"]["kind"], "unsupported", "{reply}");
            continue;
        }
        assert_succeeded("HTTP", method, &reply);
    }
    assert!(server.stop().success());

    // stdio: the same examples, one line each, answered in order.
    let db = dir.path().join("s.db").display().to_string();
    let mut s = common::StdioSession::start(&["--db", &db, workers[0], workers[1]], &[]);
    for (i, (method, params)) in methods.iter().enumerate() {
        let reply = s.call(&call(i + 1, method, params).to_string());
        assert_eq!(reply["id"], json!(i + 1), "{reply}");
        assert_succeeded("stdio", method, &reply);
    }
    s.finish();
}
