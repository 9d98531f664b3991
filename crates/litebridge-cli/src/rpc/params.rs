//! Methods' parameters as typed structs: read once by serde (named, or
//! positional in the order the fields are declared), unknown names refused,
//! each limit checked where its type is defined, every complaint naming the
//! method and the parameter; and their JSON schemas (MCP tools,
//! `rpc.discover`, `docs/methods.md`) derived from the same definitions by
//! schemars. A method's struct and its [`Handler::run`] live in the file of
//! its part (`sql`, `bridge`, `stores`, `stats`, `admin`); the table names
//! it with [`handler`].
//!
//! The types below are the parameters several methods share, each with its
//! limit and its schema side by side.

use std::borrow::Cow;
use std::time::Duration;

use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::{Map, Value as Json};

use crate::rpc::{Answer, Ctx, MAX_METHOD_NAME, MAX_SQL, MAX_TIMEOUT, RpcError};

/// A method's parameters, and what the method does with them.
pub(crate) trait Handler: DeserializeOwned + JsonSchema + Send + 'static {
    fn run(self, cx: Ctx<'_>) -> Answer<'_>;
}

/// What the table holds of a method's parameters: how to run it from raw
/// JSON, its parameters' schema, and their names in positional order.
#[derive(Clone, Copy)]
pub(crate) struct Typed {
    pub(crate) run: for<'a> fn(Ctx<'a>, &'static str, Option<Json>) -> Answer<'a>,
    pub(crate) schema: fn() -> Json,
    pub(crate) names: fn() -> &'static [&'static str],
}

/// The table's entry for the method whose parameters are `P`.
pub(crate) const fn handler<P: Handler>() -> Typed {
    Typed {
        run: run::<P>,
        schema: schema::<P>,
        names: field_names::<P>,
    }
}

fn run<'a, P: Handler>(cx: Ctx<'a>, method: &'static str, raw: Option<Json>) -> Answer<'a> {
    match parse::<P>(method, raw) {
        Ok(p) => p.run(cx),
        Err(e) => Box::pin(async move { Err(e) }),
    }
}

/// Reads `raw` (an object, an array, or nothing) into `P`; a complaint
/// names `method` and the parameter (`sql.query: \`timeout_ms\`: ...`).
/// Positional parameters are named first, in the order of `P`'s fields, so
/// a missing or null one is named like a named one.
pub(crate) fn parse<P: DeserializeOwned>(method: &str, raw: Option<Json>) -> Result<P, RpcError> {
    let value = match raw {
        None | Some(Json::Null) => Json::Object(Map::new()),
        Some(Json::Array(items)) => {
            let names = field_names::<P>();
            if items.len() > names.len() {
                return Err(RpcError::InvalidParams(format!(
                    "{method} takes at most {} positional parameters ({}), {} were given",
                    names.len(),
                    names.join(", "),
                    items.len()
                )));
            }
            Json::Object(names.iter().map(|n| (*n).to_owned()).zip(items).collect())
        }
        Some(v @ Json::Object(_)) => v,
        Some(_) => {
            return Err(RpcError::InvalidParams(
                "params must be an array or an object".into(),
            ));
        }
    };
    serde_path_to_error::deserialize(value).map_err(|e| {
        let path = shortened(&e.path().to_string(), 80);
        let inner = shortened(&e.into_inner().to_string(), 300);
        RpcError::InvalidParams(if path == "." || inner.starts_with("unknown field") {
            // (serde names an unknown field itself.)
            format!("{method}: {inner}")
        } else {
            format!("{method}: `{path}`: {inner}")
        })
    })
}

/// `text` cut to about `max` bytes (at a character boundary) with a marker:
/// a complaint never echoes a megabyte the client sent.
pub(crate) fn shortened(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_owned();
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}... ({} bytes)", &text[..end], text.len())
}

/// `P`'s parameters as the JSON schema of one object (draft 7, every
/// subschema inline, optional parameters not nullable).
fn schema<P: JsonSchema>() -> Json {
    let generator = schemars::generate::SchemaSettings::draft07()
        .with(|s| s.inline_subschemas = true)
        .into_generator();
    let mut schema = generator.into_root_schema_for::<P>().to_value();
    tidy(&mut schema);
    if let Some(o) = schema.as_object_mut() {
        o.remove("$schema");
        o.remove("title");
        o.remove("description");
        o.entry("properties")
            .or_insert_with(|| Json::Object(Map::new()));
        o.entry("required")
            .or_insert_with(|| Json::Array(Vec::new()));
    }
    schema
}

/// Takes out of a derived schema what describes Rust rather than the
/// parameters: `null` as a value of an optional parameter (null means "not
/// given", which leaving it out says), and the line breaks of doc comments.
fn tidy(schema: &mut Json) {
    match schema {
        Json::Object(o) => {
            if let Some(Json::Array(types)) = o.get_mut("type") {
                types.retain(|t| t != "null");
                if types.len() == 1 {
                    let only = types.remove(0);
                    o.insert("type".into(), only);
                }
            }
            if let Some(Json::Array(values)) = o.get_mut("enum") {
                values.retain(|v| !v.is_null());
            }
            if o.get("default").is_some_and(Json::is_null) {
                o.remove("default");
            }
            if let Some(Json::String(d)) = o.get_mut("description") {
                *d = d.split_whitespace().collect::<Vec<_>>().join(" ");
            }
            o.values_mut().for_each(tidy);
        }
        Json::Array(items) => items.iter_mut().for_each(tidy),
        _ => {}
    }
}

/// `P`'s field names in declaration order: the order of positional
/// parameters. serde hands them to `deserialize_struct`; this deserializer
/// only writes them down.
fn field_names<P: DeserializeOwned>() -> &'static [&'static str] {
    struct Names(&'static [&'static str]);
    #[derive(Debug)]
    struct Done;
    impl std::fmt::Display for Done {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("names read")
        }
    }
    impl std::error::Error for Done {}
    impl serde::de::Error for Done {
        fn custom<T: std::fmt::Display>(_: T) -> Done {
            Done
        }
    }
    impl<'de> serde::Deserializer<'de> for &mut Names {
        type Error = Done;
        fn deserialize_any<V: serde::de::Visitor<'de>>(self, _: V) -> Result<V::Value, Done> {
            Err(Done)
        }
        fn deserialize_struct<V: serde::de::Visitor<'de>>(
            self,
            _: &'static str,
            fields: &'static [&'static str],
            _: V,
        ) -> Result<V::Value, Done> {
            self.0 = fields;
            Err(Done)
        }
        serde::forward_to_deserialize_any! {
            bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string
            bytes byte_buf option unit unit_struct newtype_struct seq tuple
            tuple_struct map enum identifier ignored_any
        }
    }
    let mut names = Names(&[]);
    let _ = P::deserialize(&mut names);
    names.0
}

/// Defines a newtype parameter: how it is read (from `$from`, checked by
/// `$check`) and its schema.
macro_rules! parameter {
    ($(#[$doc:meta])* $name:ident($inner:ty) from $from:ty = $from_name:literal, $check:expr, $schema:expr) => {
        $(#[$doc])*
        #[derive(Debug, Clone, ::serde::Deserialize)]
        #[serde(try_from = $from_name)]
        pub(crate) struct $name(pub(crate) $inner);

        impl TryFrom<$from> for $name {
            type Error = String;
            fn try_from(v: $from) -> Result<$name, String> {
                let check: fn($from) -> Result<$inner, String> = $check;
                check(v).map($name)
            }
        }

        impl ::schemars::JsonSchema for $name {
            fn schema_name() -> ::std::borrow::Cow<'static, str> {
                stringify!($name).into()
            }
            fn inline_schema() -> bool {
                true
            }
            fn json_schema(_: &mut ::schemars::SchemaGenerator) -> ::schemars::Schema {
                $schema
            }
        }
    };
}
pub(crate) use parameter;

parameter!(
    /// One SQLite statement, at most [`MAX_SQL`] bytes.
    Sql(String) from String = "String",
    |s| {
        if s.len() > MAX_SQL {
            Err(format!("{} bytes; at most {MAX_SQL} are allowed", s.len()))
        } else {
            Ok(s)
        }
    },
    json_schema!({"type": "string", "description": "One SQLite statement (at most 1 MiB). Use ?1, ?2 or :name placeholders for values instead of pasting them into the text."})
);

parameter!(
    /// Values for a statement's placeholders.
    SqlParams(litebridge::Params) from Json = "serde_json::Value",
    |v| litebridge::Params::from_json(Some(&v)).map_err(|e| e.to_string()),
    json_schema!({
        "type": ["array", "object"],
        "description": "Values for ?1, ?2, ... (an array) or for :name parameters (an object). Numbers, strings, booleans, null; a blob is {\"$blob\": \"<base64>\"}.",
    })
);

/// A deadline in milliseconds: 1 to [`MAX_TIMEOUT`].
fn deadline_ms(ms: u64) -> Result<Duration, String> {
    if ms == 0 {
        Err("must be positive".into())
    } else if Duration::from_millis(ms) > MAX_TIMEOUT {
        Err(format!("is at most {}", MAX_TIMEOUT.as_millis()))
    } else {
        Ok(Duration::from_millis(ms))
    }
}

parameter!(
    /// A database request's deadline in milliseconds, 1 to [`MAX_TIMEOUT`].
    TimeoutMs(Duration) from u64 = "u64",
    deadline_ms,
    json_schema!({"type": "integer", "minimum": 1, "maximum": MAX_TIMEOUT.as_millis() as u64, "description": "Give up after this many milliseconds (a write that times out did not commit). Default: the server's db.timeout_ms."})
);

parameter!(
    /// A worker call's deadline in milliseconds, 1 to [`MAX_TIMEOUT`].
    CallTimeoutMs(Duration) from u64 = "u64",
    deadline_ms,
    json_schema!({"type": "integer", "minimum": 1, "maximum": MAX_TIMEOUT.as_millis() as u64, "description": "Give up after this many milliseconds (a call that times out in its worker may have done its work: the error says). Default: the server's workers.timeout_ms."})
);

/// The longest lifetime a value may be given: 100 years.
const MAX_TTL_S: f64 = 100.0 * 365.25 * 86_400.0;

parameter!(
    /// A lifetime in seconds: positive, at most [`MAX_TTL_S`].
    Ttl(Duration) from f64 = "f64",
    |s| {
        if s > 0.0 && s <= MAX_TTL_S {
            Duration::try_from_secs_f64(s).map_err(|e| e.to_string())
        } else {
            Err(format!("must be a number of seconds above 0 and at most {MAX_TTL_S} (100 years), got {s}"))
        }
    },
    json_schema!({"type": "number", "exclusiveMinimum": 0, "maximum": MAX_TTL_S, "description": "Forget it after this many seconds."})
);

/// The longest cache key a caller may give, in bytes (as memory keys and
/// run ids).
pub(crate) const MAX_CACHE_KEY: usize = 1024;

parameter!(
    /// A cache key: 1 to [`MAX_CACHE_KEY`] bytes.
    CacheKeyName(String) from String = "String",
    |s| {
        if s.is_empty() || s.len() > MAX_CACHE_KEY {
            Err(format!("must be 1 to {MAX_CACHE_KEY} bytes, got {}", s.len()))
        } else {
            Ok(s)
        }
    },
    json_schema!({"type": "string", "minLength": 1, "maxLength": MAX_CACHE_KEY, "description": "The cache key (1 to 1024 bytes)."})
);

parameter!(
    /// Any JSON value but null (null means "not given").
    AnyValue(Json) from Json = "serde_json::Value",
    |v| {
        if v.is_null() {
            Err("is required (null is not a value here)".into())
        } else {
            Ok(v)
        }
    },
    json_schema!({"not": {"type": "null"}, "description": "Any JSON value but null."})
);

parameter!(
    /// A worker method's name: 1 to [`MAX_METHOD_NAME`] characters, none a
    /// control character.
    MethodName(String) from String = "String",
    |s| {
        if s.is_empty()
            || s.chars().count() > MAX_METHOD_NAME
            || s.chars().any(crate::printable::unprintable)
        {
            let shown: String = s.chars().take(64).collect();
            Err(format!(
                "must be a method name of 1 to {MAX_METHOD_NAME} characters, without control \
                 or invisible characters, got {shown:?}"
            ))
        } else {
            Ok(s)
        }
    },
    json_schema!({"type": "string", "minLength": 1, "maxLength": MAX_METHOD_NAME, "description": "The worker method's name."})
);

parameter!(
    /// A count or a duration the stores keep as a 64-bit signed integer:
    /// 0 to `i64::MAX`.
    Count(i64) from u64 = "u64",
    |n| i64::try_from(n).map_err(|_| format!("is at most {}", i64::MAX)),
    json_schema!({"type": "integer", "minimum": 0, "maximum": i64::MAX})
);

/// How many entries a list returns: 100 unless given, at most 10,000 (a
/// larger number is taken as 10,000).
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(from = "u64")]
pub(crate) struct Limit(pub(crate) usize);

impl From<u64> for Limit {
    fn from(n: u64) -> Limit {
        Limit(n.min(10_000) as usize)
    }
}

impl Default for Limit {
    fn default() -> Limit {
        Limit(100)
    }
}

impl JsonSchema for Limit {
    fn schema_name() -> Cow<'static, str> {
        "Limit".into()
    }
    fn inline_schema() -> bool {
        true
    }
    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({"type": "integer", "minimum": 0, "description": "Most entries to return (default 100; more than 10,000 returns 10,000)."})
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::rpc::bridge::BridgeCall;
    use crate::rpc::sql::{SqlBatch, SqlQuery};
    use crate::rpc::stores::StateSave;

    fn complaint<P: DeserializeOwned>(method: &str, raw: Json) -> String {
        match parse::<P>(method, Some(raw)) {
            Err(RpcError::InvalidParams(m)) => m,
            Ok(_) => panic!("accepted"),
            Err(other) => panic!("{other:?}"),
        }
    }

    #[test]
    fn complaints_name_the_method_and_the_parameter() {
        let cases = [
            (
                json!({"sql": 5}),
                "sql.query: `sql`: invalid type: integer `5`, expected a string",
            ),
            (json!([]), "sql.query: missing field `sql`"),
            (json!({}), "sql.query: missing field `sql`"),
            (
                json!({"sql": "SELECT 1", "sqll": 1}),
                "sql.query: unknown field `sqll`, expected one of `sql`, `params`, `timeout_ms`, `max_rows`, `lane`, `consistency`, `token`",
            ),
            (
                json!({"sql": "SELECT 1", "timeout_ms": 0}),
                "sql.query: `timeout_ms`: must be positive",
            ),
            (
                json!({"sql": "SELECT 1", "timeout_ms": 3_600_001}),
                "sql.query: `timeout_ms`: is at most 3600000",
            ),
            (
                json!({"sql": "SELECT 1", "max_rows": 2_000_000}),
                "sql.query: `max_rows`: is at most 1000000",
            ),
            (
                json!({"sql": "SELECT 1", "lane": "fast"}),
                "sql.query: `lane`: \"fast\" is not a lane; expected \"read\" or \"heavy\"",
            ),
            (
                json!(["SELECT 1", [], 5, 10, "read", "strong", "0/1", "extra"]),
                "sql.query takes at most 7 positional parameters (sql, params, timeout_ms, max_rows, lane, consistency, token), 8 were given",
            ),
            (
                json!(["SELECT 1", [], 5, 10, "read", "extra"]),
                "sql.query: `consistency`: \"extra\" is not a consistency level (strong, session or any)",
            ),
        ];
        for (raw, expected) in cases {
            assert_eq!(complaint::<SqlQuery>("sql.query", raw), expected);
        }
        let long = "x".repeat(MAX_SQL + 1);
        assert_eq!(
            complaint::<SqlQuery>("sql.query", json!({ "sql": long })),
            format!(
                "sql.query: `sql`: {} bytes; at most {MAX_SQL} are allowed",
                MAX_SQL + 1
            )
        );
        assert_eq!(
            complaint::<SqlBatch>(
                "sql.batch",
                json!({"statements": [{"sql": "SELECT 1"}, {"sql": 1}]})
            ),
            "sql.batch: `statements[1].sql`: invalid type: integer `1`, expected a string"
        );
        assert_eq!(
            complaint::<SqlBatch>("sql.batch", json!({"statements": []})),
            "sql.batch: `statements`: must hold at least one statement"
        );
        for raw in [json!({"run_id": "r", "state": null}), json!(["r", null])] {
            assert_eq!(
                complaint::<StateSave>("state.save", raw),
                "state.save: `state`: is required (null is not a value here)"
            );
        }
        assert_eq!(
            complaint::<crate::rpc::stores::CacheSet>(
                "cache.set",
                json!({"key": "k", "value": 1, "ttl_s": 1e19})
            ),
            "cache.set: `ttl_s`: must be a number of seconds above 0 and at most 3155760000 (100 years), got 10000000000000000000"
        );
        assert_eq!(
            complaint::<StateSave>(
                "state.save",
                json!({"run_id": "r", "state": 1, "total_steps": 1u64 << 63})
            ),
            "state.save: `total_steps`: is at most 9223372036854775807"
        );
        // Counted before any item is read.
        let statements = vec![json!({"sql": "SELECT 1"}); crate::rpc::MAX_STATEMENTS + 1];
        assert_eq!(
            complaint::<SqlBatch>("sql.batch", json!({ "statements": statements })),
            "sql.batch: `statements`: 10001 statements; at most 10000 are allowed"
        );
        let rows = vec![json!([]); crate::rpc::MAX_MANY_ROWS + 1];
        assert_eq!(
            complaint::<crate::rpc::sql::SqlExecuteMany>(
                "sql.execute_many",
                json!({ "sql": "INSERT INTO t VALUES (1)", "rows": rows })
            ),
            "sql.execute_many: `rows`: 1000001 rows; at most 1000000 are allowed"
        );
        // Nothing the client sent is echoed at length.
        let huge = "k".repeat(1 << 20);
        let m = complaint::<SqlQuery>("sql.query", json!({ "sql": "SELECT 1", huge.clone(): 1 }));
        assert!(m.len() < 600, "{}", m.len());
        let m = complaint::<SqlQuery>("sql.query", json!({ "sql": "SELECT 1", "lane": huge }));
        assert!(m.len() < 600, "{}", m.len());
        assert_eq!(
            complaint::<BridgeCall>("bridge.call", json!({"method": "m", "params": 3})),
            "bridge.call: `params`: must be an array or an object, got 3"
        );
        assert_eq!(
            complaint::<BridgeCall>("bridge.call", json!({"method": "a\u{7}b"})),
            "bridge.call: `method`: must be a method name of 1 to 256 characters, without control or invisible characters, got \"a\\u{7}b\""
        );
        match parse::<SqlQuery>("sql.query", Some(json!("SELECT 1"))) {
            Err(RpcError::InvalidParams(m)) => {
                assert_eq!(m, "params must be an array or an object")
            }
            _ => panic!("a string was accepted as parameters"),
        }
    }

    #[test]
    fn positional_parameters_follow_the_declared_order_and_null_is_not_given() {
        assert_eq!(
            field_names::<SqlQuery>(),
            [
                "sql",
                "params",
                "timeout_ms",
                "max_rows",
                "lane",
                "consistency",
                "token"
            ]
        );
        let q: SqlQuery = parse("sql.query", Some(json!(["SELECT ?1", [7], null, 3]))).unwrap();
        let named: SqlQuery = parse(
            "sql.query",
            Some(json!({"sql": "SELECT ?1", "params": [7], "timeout_ms": null, "max_rows": 3})),
        )
        .unwrap();
        for q in [q, named] {
            assert_eq!(
                q.describe(),
                "SELECT ?1 Positional([Integer(7)]) None Some(3) None"
            );
        }
        // Nothing at all: every optional parameter left out.
        let none: Result<SqlQuery, _> = parse("sql.query", None);
        assert!(
            matches!(none, Err(RpcError::InvalidParams(m)) if m == "sql.query: missing field `sql`")
        );
    }

    #[test]
    fn every_limit_is_in_the_schema_beside_it() {
        let schema = schema::<SqlQuery>();
        assert_eq!(schema["required"], json!(["sql"]));
        assert_eq!(schema["additionalProperties"], json!(false));
        assert_eq!(
            schema["properties"]["timeout_ms"]["maximum"],
            json!(3_600_000)
        );
        assert_eq!(schema["properties"]["timeout_ms"]["type"], json!("integer"));
        assert_eq!(
            schema["properties"]["lane"]["enum"],
            json!(["read", "heavy"])
        );
    }
}
