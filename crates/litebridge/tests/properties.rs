//! Property tests for value conversion and parameter binding: whatever JSON
//! arrives, conversion answers (a value or an error naming the parameter),
//! never panics, and what binds comes back from SQLite unchanged.

use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};
use serde_json::Value as Json;

use litebridge::{Database, DbConfig, ErrorKind, Params, Value};

/// Arbitrary JSON, a few levels deep, including `$blob` look-alikes.
fn json() -> impl Strategy<Value = Json> {
    let leaf = prop_oneof![
        Just(Json::Null),
        any::<bool>().prop_map(Json::Bool),
        any::<i64>().prop_map(Json::from),
        any::<u64>().prop_map(Json::from),
        any::<f64>().prop_map(|f| serde_json::Number::from_f64(f).map_or(Json::Null, Json::Number)),
        any::<String>().prop_map(Json::String),
        "[A-Za-z0-9+/=]{0,12}".prop_map(|s| serde_json::json!({ "$blob": s })),
    ];
    leaf.prop_recursive(4, 32, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Json::Array),
            prop::collection::btree_map(any::<String>(), inner, 0..6)
                .prop_map(|m| Json::Object(m.into_iter().collect())),
        ]
    })
}

/// Every value SQLite can hold: infinities travel as `{"$real": ...}` (SQLite
/// stores no NaN).
fn value() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(Value::Null),
        any::<i64>().prop_map(Value::Integer),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(Value::Real),
        Just(Value::Real(f64::INFINITY)),
        Just(Value::Real(f64::NEG_INFINITY)),
        any::<String>().prop_map(Value::Text),
        prop::collection::vec(any::<u8>(), 0..64).prop_map(Value::Blob),
    ]
}

fn runner(cases: u32) -> TestRunner {
    TestRunner::new(Config {
        cases,
        failure_persistence: None,
        ..Config::default()
    })
}

#[test]
fn any_json_converts_or_is_refused_naming_the_parameter() {
    runner(30_000)
        .run(&json(), |j| {
            let scalar = !matches!(j, Json::Array(_) | Json::Object(_));
            match Value::from_json(&j) {
                Ok(_) => prop_assert!(scalar || j.get("$blob").is_some()),
                Err(m) => prop_assert!(!m.is_empty()),
            }
            match Params::from_json(Some(&j)) {
                Ok(_) => prop_assert!(matches!(j, Json::Null | Json::Array(_) | Json::Object(_))),
                Err(e) => {
                    prop_assert_eq!(e.kind(), ErrorKind::InvalidArgument);
                    prop_assert!(e.to_string().contains("params"), "{}", e);
                }
            }
            Ok(())
        })
        .unwrap();
}

#[test]
fn values_round_trip_through_json() {
    runner(30_000)
        .run(&value(), |v| {
            let text = serde_json::to_string(&v.to_json()).unwrap();
            let back: Json = serde_json::from_str(&text).unwrap();
            prop_assert_eq!(Value::from_json(&back).unwrap(), v);
            Ok(())
        })
        .unwrap();
}

#[test]
fn bound_values_come_back_unchanged_and_bad_bindings_are_refused() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let db = rt
        .block_on(Database::open(dir.path().join("p.db"), DbConfig::default()))
        .unwrap();
    runner(12_000)
        .run(
            &(value(), value(), json(), "[a-z]{1,8}"),
            |(a, b, raw, name)| {
                rt.block_on(async {
                    let rows = db
                        .query("SELECT ?1, ?2", vec![a.clone(), b.clone()])
                        .await
                        .unwrap();
                    prop_assert_eq!(&rows.rows[0], &vec![a.clone(), b.clone()]);
                    let named = Params::Named(vec![(format!(":{name}"), a.clone())]);
                    let sql = format!("SELECT :{name}");
                    let rows = db.query(&sql, named).await.unwrap();
                    prop_assert_eq!(&rows.rows[0][0], &a);
                    // Arbitrary JSON as the parameters of a one-parameter
                    // statement: a row or InvalidArgument, nothing else.
                    match Params::from_json(Some(&raw)) {
                        Ok(p) => match db.query("SELECT ?1", p).await {
                            Ok(rows) => prop_assert_eq!(rows.rows.len(), 1),
                            Err(e) => {
                                prop_assert_eq!(e.kind(), ErrorKind::InvalidArgument, "{}", e)
                            }
                        },
                        Err(e) => prop_assert_eq!(e.kind(), ErrorKind::InvalidArgument),
                    }
                    Ok(())
                })
            },
        )
        .unwrap();
    rt.block_on(db.close());
}
