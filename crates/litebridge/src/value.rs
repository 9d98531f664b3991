//! SQLite values, statement parameters and results, with their JSON mapping
//! (shared by every transport; the README's "The command line" shows it).
//!
//! SQLite to JSON: INTEGER to a number (exact 64-bit), REAL to a number, TEXT to
//! a string, NULL to null, BLOB to `{"$blob": "<base64>"}`. A REAL that JSON
//! has no number for (infinity: `SELECT 1e999`; SQLite stores no NaN) is
//! `{"$real": "Infinity"}` or `{"$real": "-Infinity"}`, never a null or
//! another number. JSON to SQLite: the reverse; booleans bind as 0/1; arrays
//! and other objects are refused.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use rusqlite::types::{ToSql, ToSqlOutput, ValueRef};
use serde::ser::{SerializeMap, Serializer};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// One SQLite value.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    /// NULL.
    Null,
    /// A 64-bit integer.
    Integer(i64),
    /// A double.
    Real(f64),
    /// UTF-8 text. (A TEXT value of SQLite's that is not valid UTF-8 is read
    /// as a [`Value::Blob`] of its bytes, never changed.)
    Text(String),
    /// Bytes.
    Blob(Vec<u8>),
}

impl Value {
    /// Converts one JSON value to a SQLite value.
    ///
    /// # Errors
    /// A message saying why the value cannot be bound (arrays, objects other
    /// than `{"$blob": ...}`, integers beyond 64 bits, bad base64).
    pub fn from_json(v: &serde_json::Value) -> std::result::Result<Value, String> {
        use serde_json::Value as J;
        Ok(match v {
            J::Null => Value::Null,
            J::Bool(b) => Value::Integer(i64::from(*b)),
            J::Number(n) => {
                if let Some(i) = n.as_i64() {
                    Value::Integer(i)
                } else if n.is_u64() {
                    return Err(format!("{n} does not fit in a 64-bit signed integer"));
                } else {
                    Value::Real(n.as_f64().unwrap_or(f64::NAN))
                }
            }
            J::String(s) => Value::Text(s.clone()),
            J::Object(map) => match (map.len(), map.get("$blob"), map.get("$real")) {
                (1, Some(J::String(b64)), _) => Value::Blob(
                    BASE64
                        .decode(b64)
                        .map_err(|e| format!("`$blob` is not valid base64: {e}"))?,
                ),
                (1, _, Some(J::String(r))) => match r.as_str() {
                    "Infinity" => Value::Real(f64::INFINITY),
                    "-Infinity" => Value::Real(f64::NEG_INFINITY),
                    other => {
                        return Err(format!(
                            "`$real` is \"Infinity\" or \"-Infinity\" (finite numbers are plain JSON numbers), not {other:?}"
                        ));
                    }
                },
                _ => {
                    return Err(
                        "objects cannot be bound, except {\"$blob\": \"<base64>\"} for a blob \
                         and {\"$real\": \"Infinity\"} for an infinite REAL"
                            .into(),
                    );
                }
            },
            J::Array(_) => return Err("arrays cannot be bound to a parameter".into()),
        })
    }

    /// Converts to JSON (see the module documentation for the mapping).
    pub fn to_json(&self) -> serde_json::Value {
        use serde_json::Value as J;
        match self {
            Value::Null => J::Null,
            Value::Integer(i) => J::from(*i),
            Value::Real(f) => match serde_json::Number::from_f64(*f) {
                Some(n) => J::Number(n),
                None => {
                    let mut m = serde_json::Map::with_capacity(1);
                    m.insert("$real".into(), J::String(non_finite(*f).into()));
                    J::Object(m)
                }
            },
            Value::Text(s) => J::String(s.clone()),
            Value::Blob(b) => {
                let mut m = serde_json::Map::with_capacity(1);
                m.insert("$blob".into(), J::String(BASE64.encode(b)));
                J::Object(m)
            }
        }
    }

    /// What this value counts against `db.max_result_bytes` (see [`cost`]).
    #[cfg(feature = "postgres")]
    pub(crate) fn cost(&self) -> usize {
        match self {
            Value::Null | Value::Integer(_) => cost(ValueRef::Null),
            Value::Real(f) => cost(ValueRef::Real(*f)),
            Value::Text(t) => cost(ValueRef::Text(t.as_bytes())),
            Value::Blob(b) => cost(ValueRef::Blob(b)),
        }
    }

    pub(crate) fn from_ref(v: ValueRef<'_>) -> Value {
        match v {
            ValueRef::Null => Value::Null,
            ValueRef::Integer(i) => Value::Integer(i),
            ValueRef::Real(f) => Value::Real(f),
            // Text that is not UTF-8 (SQLite stores what it is given) has no
            // `String`, and replacing its bad bytes would change the value
            // unseen: its bytes come back unchanged, as a blob.
            ValueRef::Text(t) => match std::str::from_utf8(t) {
                Ok(s) => Value::Text(s.to_owned()),
                Err(_) => Value::Blob(t.to_vec()),
            },
            ValueRef::Blob(b) => Value::Blob(b.to_vec()),
        }
    }
}

/// What a value of a result counts against `db.max_result_bytes`, before
/// it is copied: its bytes as the reply writes them (a text's escapes
/// too), and what it costs beyond them on its way to the wire. A value takes a slot in its row and another in the JSON tree the
/// reply is made from ([`CELL`]); a blob, or a REAL JSON has no number for,
/// is a JSON object there ([`OBJECT`]), and a blob's base64 a third more
/// than its bytes. Counted so, a result's memory on its way out stays
/// within a few times the limit whatever it holds. Values counted by their
/// bytes alone (8 for a number) let `SELECT x'' FROM` a long series count
/// 0 bytes: review 246 had one read key's query take 9 GB of memory, and
/// one under a memory limit end the server.
pub(crate) fn cost(v: ValueRef<'_>) -> usize {
    match v {
        ValueRef::Null | ValueRef::Integer(_) => CELL,
        ValueRef::Real(f) if f.is_finite() => CELL,
        ValueRef::Real(_) => CELL + OBJECT,
        // Text that is not UTF-8 goes out as a blob (`from_ref`), and costs
        // what one does (review 249: `CAST(x'ff' AS TEXT)` counted 17 bytes).
        ValueRef::Text(t) if std::str::from_utf8(t).is_err() => cost(ValueRef::Blob(t)),
        ValueRef::Text(t) => CELL + t.len() + escapes(t),
        ValueRef::Blob(b) => CELL + OBJECT + b.len().div_ceil(3) * 4,
    }
}

/// What JSON adds to `text` escaping it, as serde_json writes it: 5 bytes
/// for a control character (`\u0001` for one byte), 1 for `"`, `\` and the
/// five written short (`\b`, `\t`, `\n`, `\f`, `\r`). A text of control
/// characters is six times its length in the reply (review 248: 60 MB of
/// `char(1)` took 745 MB).
fn escapes(text: &[u8]) -> usize {
    text.iter()
        .map(|&b| match b {
            0x08 | 0x09 | 0x0a | 0x0c | 0x0d | b'"' | b'\\' => 1,
            0..=0x1f => 5,
            _ => 0,
        })
        .sum()
}

/// A value's slots, counted against `db.max_result_bytes` (see [`cost`]).
const CELL: usize = 16;

/// A JSON object's node in the reply's tree, counted (see [`cost`]): the
/// B-tree node of a map of one member (`json.rs` measures 648 bytes with
/// its blocks; review 249 found 192 too few).
const OBJECT: usize = 640;

/// How a REAL JSON has no number for is written (`$real`).
fn non_finite(f: f64) -> &'static str {
    if f.is_nan() {
        // SQLite stores NaN as NULL; a NaN can only come from the application.
        "NaN"
    } else if f > 0.0 {
        "Infinity"
    } else {
        "-Infinity"
    }
}

impl Serialize for Value {
    fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        match self {
            Value::Null => s.serialize_unit(),
            Value::Integer(i) => s.serialize_i64(*i),
            Value::Real(f) if f.is_finite() => s.serialize_f64(*f),
            Value::Real(f) => {
                let mut m = s.serialize_map(Some(1))?;
                m.serialize_entry("$real", non_finite(*f))?;
                m.end()
            }
            Value::Text(t) => s.serialize_str(t),
            Value::Blob(b) => {
                let mut m = s.serialize_map(Some(1))?;
                m.serialize_entry("$blob", &BASE64.encode(b))?;
                m.end()
            }
        }
    }
}

impl<'de> Deserialize<'de> for Value {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let v = serde_json::Value::deserialize(d)?;
        Value::from_json(&v).map_err(serde::de::Error::custom)
    }
}

impl ToSql for Value {
    fn to_sql(&self) -> rusqlite::Result<ToSqlOutput<'_>> {
        Ok(ToSqlOutput::Borrowed(match self {
            Value::Null => ValueRef::Null,
            Value::Integer(i) => ValueRef::Integer(*i),
            Value::Real(f) => ValueRef::Real(*f),
            Value::Text(t) => ValueRef::Text(t.as_bytes()),
            Value::Blob(b) => ValueRef::Blob(b),
        }))
    }
}

macro_rules! from_int {
    ($($t:ty),*) => {$(
        impl From<$t> for Value {
            fn from(v: $t) -> Value { Value::Integer(i64::from(v)) }
        }
    )*};
}
from_int!(i8, i16, i32, i64, u8, u16, u32, bool);

impl From<f64> for Value {
    fn from(v: f64) -> Value {
        Value::Real(v)
    }
}
impl From<&str> for Value {
    fn from(v: &str) -> Value {
        Value::Text(v.to_owned())
    }
}
impl From<String> for Value {
    fn from(v: String) -> Value {
        Value::Text(v)
    }
}
impl From<Vec<u8>> for Value {
    fn from(v: Vec<u8>) -> Value {
        Value::Blob(v)
    }
}
impl From<f32> for Value {
    fn from(v: f32) -> Value {
        Value::Real(f64::from(v))
    }
}
impl From<&String> for Value {
    fn from(v: &String) -> Value {
        Value::Text(v.clone())
    }
}
impl From<&[u8]> for Value {
    fn from(v: &[u8]) -> Value {
        Value::Blob(v.to_vec())
    }
}

/// An unsigned integer past `i64::MAX` has no SQLite INTEGER: refused, not
/// wrapped.
macro_rules! try_from_unsigned {
    ($($t:ty),*) => {$(
        impl TryFrom<$t> for Value {
            type Error = Error;
            fn try_from(v: $t) -> Result<Value> {
                i64::try_from(v).map(Value::Integer).map_err(|_| {
                    Error::invalid(
                        "params",
                        format!("{v} does not fit in a 64-bit signed integer"),
                    )
                })
            }
        }
    )*};
}
try_from_unsigned!(u64, usize);

/// Reading a value of a known type (`None` for any other type).
impl Value {
    /// The integer, for an INTEGER.
    pub fn as_i64(&self) -> Option<i64> {
        match self {
            Value::Integer(i) => Some(*i),
            _ => None,
        }
    }

    /// The number, for a REAL, or an INTEGER as the nearest `f64` (exact
    /// up to 2^53; use [`Value::as_i64`] for integers).
    pub fn as_f64(&self) -> Option<f64> {
        match self {
            Value::Real(f) => Some(*f),
            Value::Integer(i) => Some(*i as f64),
            _ => None,
        }
    }

    /// The text, for TEXT.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::Text(t) => Some(t),
            _ => None,
        }
    }

    /// The bytes, for a BLOB.
    pub fn as_bytes(&self) -> Option<&[u8]> {
        match self {
            Value::Blob(b) => Some(b),
            _ => None,
        }
    }

    /// Whether it is NULL.
    pub fn is_null(&self) -> bool {
        matches!(self, Value::Null)
    }
}

impl<T: Into<Value>> From<Option<T>> for Value {
    fn from(v: Option<T>) -> Value {
        v.map_or(Value::Null, Into::into)
    }
}

/// The parameters of one statement: none, positional (`?`, `?N`) or named
/// (`:name`, `@name`, `$name`; a name given without its prefix matches any).
#[derive(Debug, Clone, PartialEq, Default)]
pub enum Params {
    /// No parameters.
    #[default]
    None,
    /// Bound in order to `?1`, `?2`, ...
    Positional(Vec<Value>),
    /// Bound by name.
    Named(Vec<(String, Value)>),
}

impl Params {
    /// Converts the JSON `params` of a request: absent or null, an array, or an object.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] naming the offending parameter (`params[2]`, `params.name`).
    pub fn from_json(v: Option<&serde_json::Value>) -> Result<Params> {
        use serde_json::Value as J;
        match v {
            None | Some(J::Null) => Ok(Params::None),
            Some(J::Array(items)) => items
                .iter()
                .enumerate()
                .map(|(i, v)| {
                    Value::from_json(v).map_err(|m| Error::invalid(format!("params[{i}]"), m))
                })
                .collect::<Result<Vec<_>>>()
                .map(Params::Positional),
            Some(J::Object(map)) => map
                .iter()
                .map(|(k, v)| {
                    Value::from_json(v)
                        .map(|v| (k.clone(), v))
                        .map_err(|m| Error::invalid(format!("params.{k}"), m))
                })
                .collect::<Result<Vec<_>>>()
                .map(Params::Named),
            Some(_) => Err(Error::invalid(
                "params",
                "expected an array (positional) or an object (named)",
            )),
        }
    }

    /// Whether there are no parameters.
    pub fn is_empty(&self) -> bool {
        match self {
            Params::None => true,
            Params::Positional(v) => v.is_empty(),
            Params::Named(v) => v.is_empty(),
        }
    }
}

impl From<()> for Params {
    fn from(_: ()) -> Params {
        Params::None
    }
}
impl From<Vec<Value>> for Params {
    fn from(v: Vec<Value>) -> Params {
        Params::Positional(v)
    }
}
impl<const N: usize> From<[Value; N]> for Params {
    fn from(v: [Value; N]) -> Params {
        Params::Positional(v.into())
    }
}
impl<K: Into<String>> From<Vec<(K, Value)>> for Params {
    fn from(v: Vec<(K, Value)>) -> Params {
        Params::Named(v.into_iter().map(|(k, v)| (k.into(), v)).collect())
    }
}

/// Positional [`Params`] from expressions convertible to [`Value`]:
/// `params![1, "two", 3.0]`.
#[macro_export]
macro_rules! params {
    () => { $crate::Params::None };
    ($($v:expr),+ $(,)?) => {
        $crate::Params::Positional(vec![$($crate::Value::from($v)),+])
    };
}

/// The result of a query.
#[derive(Debug, Clone, PartialEq, Serialize, Default)]
pub struct Rows {
    /// Column names, in order.
    pub columns: Vec<String>,
    /// Rows, each with one value per column.
    pub rows: Vec<Vec<Value>>,
    /// Whether rows were left out because of `max_rows`.
    pub truncated: bool,
}

/// The result of a statement that writes.
///
/// In JSON: `{"changes": .., "last_insert_rowid": ..}`, with `columns` and
/// `rows` when the statement returned rows.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ExecResult {
    /// Rows changed by the statement.
    pub changes: u64,
    /// The rowid of the last row inserted through this connection (0 on
    /// PostgreSQL: use `RETURNING`).
    pub last_insert_rowid: i64,
    /// The rows the statement returned, when it returns any columns (a
    /// `RETURNING` clause): all of them, up to `max_result_bytes` (past it
    /// the write fails with `too_large` and nothing of it is written).
    /// `None` for a statement without columns, and for each row of
    /// `execute_many`, whose rows are not kept.
    pub returning: Option<Box<Rows>>,
}

impl Serialize for ExecResult {
    fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        let fields = if self.returning.is_some() { 4 } else { 2 };
        let mut m = s.serialize_map(Some(fields))?;
        m.serialize_entry("changes", &self.changes)?;
        m.serialize_entry("last_insert_rowid", &self.last_insert_rowid)?;
        if let Some(r) = &self.returning {
            m.serialize_entry("columns", &r.columns)?;
            m.serialize_entry("rows", &r.rows)?;
        }
        m.end()
    }
}

/// One statement of a [`batch`](crate::Database::batch).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Statement {
    /// The SQL text: exactly one statement.
    pub sql: String,
    /// Its parameters.
    pub params: Params,
}

impl Statement {
    /// A statement with parameters.
    pub fn new(sql: impl Into<String>, params: impl Into<Params>) -> Statement {
        Statement {
            sql: sql.into(),
            params: params.into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn values_convert_from_rust_types_and_read_back() {
        let name = String::from("ada");
        let bytes: &[u8] = &[0, 255];
        assert_eq!(Value::from(&name).as_str(), Some("ada"));
        assert_eq!(Value::from(bytes).as_bytes(), Some(bytes));
        assert_eq!(Value::from(0.5f32).as_f64(), Some(0.5));
        assert_eq!(Value::from(7).as_f64(), Some(7.0));
        assert_eq!(Value::try_from(7u64).unwrap().as_i64(), Some(7));
        let e = Value::try_from(u64::MAX).unwrap_err();
        assert!(e.to_string().contains("18446744073709551615"), "{e}");
        assert!(Value::from(None::<i64>).is_null());
        assert_eq!(Value::Text("7".into()).as_i64(), None);
    }

    #[test]
    fn json_round_trip_is_exact_for_64_bit_integers() {
        let big = i64::MAX;
        let v = Value::from_json(&json!(big)).unwrap();
        assert_eq!(v, Value::Integer(big));
        assert_eq!(serde_json::to_string(&v).unwrap(), big.to_string());
    }

    #[test]
    fn blobs_use_the_dollar_blob_object() {
        let v = Value::Blob(vec![0, 1, 255]);
        let j = serde_json::to_value(&v).unwrap();
        assert_eq!(j, json!({"$blob": "AAH/"}));
        assert_eq!(Value::from_json(&j).unwrap(), v);
        assert_eq!(v.to_json(), j);
    }

    #[test]
    fn arrays_and_objects_are_refused_naming_the_parameter() {
        let err = Params::from_json(Some(&json!([1, [2]]))).unwrap_err();
        assert_eq!(
            err.to_string(),
            "invalid parameter `params[1]`: arrays cannot be bound to a parameter"
        );
        let err = Params::from_json(Some(&json!({"a": {"b": 1}}))).unwrap_err();
        assert!(err.to_string().contains("params.a"), "{err}");
        let err = Params::from_json(Some(&json!(18446744073709551615u64))).unwrap_err();
        assert!(err.to_string().contains("`params`"), "{err}");
    }

    #[test]
    fn booleans_bind_as_integers() {
        assert_eq!(Value::from_json(&json!(true)).unwrap(), Value::Integer(1));
    }
}
