//! Property tests of the JSON-RPC decoder and dispatcher: any bytes, any
//! JSON, any shape of request is answered as JSON-RPC 2.0 says (or not at
//! all, for notifications), and nothing panics.

use std::sync::Arc;

use litebridge::Service;
use litebridge::auth::{Auth, Caller, Scopes, Tiers};
use litebridge::store::SystemClock;
use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};
use serde_json::{Value as Json, json};

use super::{App, METHODS, handle};

const CODES: &[i64] = &[
    -32700, -32600, -32601, -32602, -32603, -32000, -32001, -32002, -32003, -32004, -32005, -32006,
    -32007, -32008, -32009, -32010, -32011, -32012,
];

fn json_value() -> impl Strategy<Value = Json> {
    let leaf = prop_oneof![
        Just(Json::Null),
        any::<bool>().prop_map(Json::Bool),
        any::<i64>().prop_map(Json::from),
        any::<f64>().prop_map(|f| serde_json::Number::from_f64(f).map_or(Json::Null, Json::Number)),
        any::<String>().prop_map(Json::String),
        prop::sample::select(vec![
            "SELECT 1",
            "SELECT ?1, ?2",
            "INSERT INTO t VALUES (?1)",
            "sql",
            "params",
            "$blob",
            "SELECT * FROM litebridge_keys",
            "DROP TABLE t"
        ])
        .prop_map(|s| Json::String(s.to_owned())),
    ];
    leaf.prop_recursive(3, 24, 5, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..5).prop_map(Json::Array),
            prop::collection::btree_map(
                prop::sample::select(vec![
                    "sql",
                    "params",
                    "timeout_ms",
                    "max_rows",
                    "lane",
                    "statements",
                    "rows",
                    "key",
                    "value",
                    "namespace",
                    "run_id",
                    "state",
                    "x"
                ])
                .prop_map(str::to_owned),
                inner,
                0..5
            )
            .prop_map(|m| Json::Object(m.into_iter().collect())),
        ]
    })
}

/// Requests shaped like JSON-RPC, with each member sometimes wrong or absent.
fn request() -> impl Strategy<Value = Json> {
    let method = prop_oneof![
        prop::sample::select(
            METHODS
                .iter()
                .map(|m| m.name.to_owned())
                .collect::<Vec<_>>()
        )
        .prop_map(Json::String),
        any::<String>().prop_map(Json::String),
        json_value(),
    ];
    (
        prop::option::of(prop_oneof![Just(json!("2.0")), json_value()]),
        prop::option::of(method),
        prop::option::of(json_value()),
        prop::option::of(json_value()),
    )
        .prop_map(|(version, method, params, id)| {
            let mut m = serde_json::Map::new();
            for (k, v) in [
                ("jsonrpc", version),
                ("method", method),
                ("params", params),
                ("id", id),
            ] {
                if let Some(v) = v {
                    m.insert(k.to_owned(), v);
                }
            }
            Json::Object(m)
        })
}

fn input() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        3 => request().prop_map(|r| r.to_string().into_bytes()),
        1 => prop::collection::vec(request(), 0..4).prop_map(|b| Json::Array(b).to_string().into_bytes()),
        1 => json_value().prop_map(|j| j.to_string().into_bytes()),
        1 => prop::collection::vec(any::<u8>(), 0..64),
        1 => request().prop_flat_map(|r| {
            let text = r.to_string().into_bytes();
            let len = text.len();
            (Just(text), 0..=len).prop_map(|(t, cut)| t[..cut].to_vec())
        }),
    ]
}

/// One reply object per the specification.
fn check_reply(r: &Json) -> Result<(), TestCaseError> {
    let o = r
        .as_object()
        .ok_or_else(|| TestCaseError::fail(format!("not an object: {r}")))?;
    prop_assert_eq!(o.get("jsonrpc"), Some(&json!("2.0")));
    prop_assert!(o.contains_key("id"), "no id: {}", r);
    prop_assert!(matches!(
        o["id"],
        Json::Null | Json::String(_) | Json::Number(_)
    ));
    match (o.get("result"), o.get("error")) {
        (Some(_), None) => {}
        (None, Some(e)) => {
            let code = e["code"].as_i64().unwrap_or(0);
            prop_assert!(CODES.contains(&code), "unknown code: {}", r);
            prop_assert!(e["message"].as_str().is_some_and(|m| !m.is_empty()));
            if (-32010..=-32000).contains(&code) {
                prop_assert!(
                    e["data"]["kind"].is_string() && e["data"]["recoverable"].is_boolean(),
                    "{}",
                    r
                );
            }
        }
        _ => prop_assert!(false, "not exactly one of result and error: {}", r),
    }
    Ok(())
}

/// A service with no workers, and its keys, on a new file at `path`.
async fn open_app(path: &std::path::Path) -> App {
    let service = Service::open(path, litebridge::ServiceConfig::default())
        .await
        .unwrap();
    let auth = Auth::open(service.db.clone(), Tiers::default(), Arc::new(SystemClock))
        .await
        .unwrap();
    App::new(service, auth)
}

#[test]
fn every_input_is_answered_per_the_specification() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let app = rt.block_on(async {
        let app = open_app(&dir.path().join("p.db")).await;
        app.service
            .db
            .execute("CREATE TABLE t(x)", ())
            .await
            .unwrap();
        app
    });
    // Everything but admin: no backups written to random paths.
    let caller = Caller::local("write,bridge".parse::<Scopes>().unwrap());
    let mut runner = TestRunner::new(Config {
        cases: 40_000,
        failure_persistence: None,
        ..Config::default()
    });
    runner
        .run(&input(), |bytes| {
            let reply = rt
                .block_on(handle(&app, &caller, &bytes, "prop"))
                .map(super::Reply::into_json);
            let parsed: Result<Json, _> = serde_json::from_slice(&bytes);
            match (&parsed, &reply) {
                (Err(_), Some(r)) => {
                    prop_assert_eq!(&r["error"]["code"], &json!(-32700));
                    prop_assert_eq!(&r["id"], &Json::Null);
                }
                (Err(_), None) => prop_assert!(false, "invalid JSON unanswered"),
                (Ok(Json::Array(items)), None) => {
                    // Only a batch of notifications goes unanswered.
                    prop_assert!(!items.is_empty());
                    prop_assert!(items.iter().all(|i| i.is_object() && i.get("id").is_none()));
                }
                (Ok(Json::Array(items)), Some(Json::Array(replies))) => {
                    prop_assert!(!items.is_empty() && replies.len() <= items.len());
                    for r in replies {
                        check_reply(r)?;
                    }
                }
                (Ok(Json::Array(items)), Some(r)) => {
                    prop_assert!(items.is_empty() || items.len() > super::MAX_BATCH, "{}", r);
                    prop_assert_eq!(&r["error"]["code"], &json!(-32600));
                }
                (Ok(v), None) => {
                    prop_assert!(v.is_object() && v.get("id").is_none(), "unanswered: {}", v)
                }
                (Ok(v), Some(r)) => {
                    check_reply(r)?;
                    if let Some(id) = v
                        .get("id")
                        .filter(|id| matches!(id, Json::Null | Json::String(_) | Json::Number(_)))
                    {
                        prop_assert_eq!(&r["id"], id);
                    }
                }
            }
            Ok(())
        })
        .unwrap();
    rt.block_on(app.service.shutdown());
}

/// Every method of the table reaches its implementation: none is listed
/// (and offered as a tool and in `rpc.discover`) without being served.
#[test]
fn every_method_of_the_table_is_served() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    rt.block_on(async {
        let app = open_app(&dir.path().join("m.db")).await;
        let caller = Caller::local("read,write,bridge,admin".parse::<Scopes>().unwrap());
        for m in METHODS {
            let request = json!({"jsonrpc": "2.0", "method": m.name, "params": {}, "id": 1});
            let reply = handle(&app, &caller, request.to_string().as_bytes(), "m")
                .await
                .unwrap()
                .into_json();
            assert_ne!(reply["error"]["code"], json!(-32601), "{}: {reply}", m.name);
        }
        let discovered = handle(
            &app,
            &caller,
            br#"{"jsonrpc":"2.0","method":"rpc.discover","id":1}"#,
            "m",
        )
        .await
        .unwrap()
        .into_json();
        assert_eq!(discovered["result"]["openrpc"], "1.3.2");
        app.service.shutdown().await;
    });
}
