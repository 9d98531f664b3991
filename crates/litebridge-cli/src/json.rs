//! Reading a request's JSON, refusing an object that names a member twice,
//! and an integer litebridge would read inexactly.
//!
//! JSON allows a member twice and serde_json keeps the last one silently,
//! but a proxy or a filter in front of litebridge may have read the first
//! one: `{"sql": "SELECT 1", "sql": "DROP TABLE t"}` would mean one thing to
//! it and another here. And an integer past 64 bits would be read rounded
//! (`litebridge::exact`), then stored or passed on changed. So the whole
//! message is refused instead (`Invalid Request`).

use std::cell::RefCell;

use serde::de::{self, DeserializeSeed, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Value};

/// Why a message could not be read.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Unreadable {
    /// It is not JSON (serde_json's message, with its position).
    Syntax(String),
    /// An object has this member twice.
    Duplicate(String),
    /// This integer is outside the 64-bit range.
    Inexact(String),
}

impl Unreadable {
    /// What a message that is JSON but cannot be taken as it is, is told.
    pub(crate) fn refusal(&self) -> Option<String> {
        match self {
            Unreadable::Syntax(_) => None,
            Unreadable::Duplicate(member) => Some(duplicate_refusal(member)),
            Unreadable::Inexact(number) => Some(format!(
                "{}: send it as a string; nothing was done",
                litebridge::exact::inexact_integer_named(number)
            )),
        }
    }
}

/// What a request that names a member twice is told.
pub(crate) fn duplicate_refusal(member: &str) -> String {
    format!(
        "an object names the member {member:?} twice; which one was meant is not clear, so nothing was done"
    )
}

/// Parses `input` as one JSON value whose objects name each member once.
pub(crate) fn parse(input: &[u8]) -> Result<Value, Unreadable> {
    let duplicate = RefCell::new(None);
    let mut de = serde_json::Deserializer::from_slice(input);
    let parsed = Strict(&duplicate)
        .deserialize(&mut de)
        .and_then(|v| de.end().map(|()| v));
    match (parsed, duplicate.into_inner()) {
        (_, Some(member)) => Err(Unreadable::Duplicate(member)),
        (Ok(v), None) => match litebridge::exact::inexact_integer(input) {
            Some(number) => Err(Unreadable::Inexact(number.to_owned())),
            None => Ok(v),
        },
        (Err(e), None) => Err(Unreadable::Syntax(e.to_string())),
    }
}

/// Builds a `Value`, noting the first duplicated member (and failing there).
#[derive(Clone, Copy)]
struct Strict<'a>(&'a RefCell<Option<String>>);

impl<'de> DeserializeSeed<'de> for Strict<'_> {
    type Value = Value;

    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Strict<'_> {
    type Value = Value;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }

    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(Value::from(v))
    }

    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(Value::from(v))
    }

    fn visit_f64<E>(self, v: f64) -> Result<Value, E> {
        Ok(serde_json::Number::from_f64(v).map_or(Value::Null, Value::Number))
    }

    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(v.to_owned()))
    }

    fn visit_string<E>(self, v: String) -> Result<Value, E> {
        Ok(Value::String(v))
    }

    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut items = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(1024));
        while let Some(item) = seq.next_element_seed(self)? {
            items.push(item);
        }
        Ok(Value::Array(items))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut members = Map::new();
        while let Some(key) = map.next_key::<String>()? {
            if members.contains_key(&key) {
                let shown: String = key.chars().take(64).collect();
                *self.0.borrow_mut() = Some(shown);
                return Err(de::Error::custom("a member appears twice"));
            }
            let value = map.next_value_seed(self)?;
            members.insert(key, value);
        }
        Ok(Value::Object(members))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_member_named_twice_is_refused_at_any_depth() {
        for text in [
            r#"{"a": 1, "a": 2}"#,
            r#"{"jsonrpc":"2.0","method":"sql.query","params":{"sql":"SELECT 1","sql":"DROP TABLE t"},"id":1}"#,
            r#"[{"id": 1}, {"x": [{"k": 1, "k": 1}]}]"#,
        ] {
            assert!(
                matches!(parse(text.as_bytes()), Err(Unreadable::Duplicate(_))),
                "{text}"
            );
        }
    }

    #[test]
    fn everything_else_reads_as_serde_json_reads_it() {
        for text in [
            r#"{"a": 1, "b": [1, 2.5, -3, 18446744073709551615, "x", null, true, {}]}"#,
            r#"[]"#,
            r#""\u00e9""#,
            r#"1.7976931348623157e308"#,
        ] {
            let expected: Value = serde_json::from_str(text).unwrap();
            assert_eq!(parse(text.as_bytes()).unwrap(), expected, "{text}");
        }
        assert!(matches!(parse(b"{"), Err(Unreadable::Syntax(_))));
        // Found by review 121: rounded to 1.8446744073709552e19 before.
        assert_eq!(
            parse(br#"{"params": [18446744073709551617]}"#),
            Err(Unreadable::Inexact("18446744073709551617".into()))
        );
        assert!(matches!(parse(b"1 2"), Err(Unreadable::Syntax(_))));
        let deep = format!("{}1{}", "[".repeat(200), "]".repeat(200));
        assert!(matches!(parse(deep.as_bytes()), Err(Unreadable::Syntax(_))));
    }
}
