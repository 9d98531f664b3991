//! Values between litebridge and PostgreSQL, both ways (docs/postgres.md has
//! the table).
//!
//! litebridge's [`Value`] is SQLite's five types, so that a client sees the
//! same JSON from both backends wherever the types allow:
//!
//! - **Parameters** are prepared without types; the server infers each one's
//!   type from the statement, and the value is encoded for that type. An
//!   integer binds to any integer type (range-checked), to floats, numeric and
//!   bool (0 or 1); text binds to text types as itself and to every other type
//!   in text format, so PostgreSQL's own input function parses it (numeric,
//!   uuid, date, timestamptz, interval, inet, ...); a blob binds to bytea; JSON
//!   text to json and jsonb.
//! - **Results** come in binary (tokio-postgres asks for it): booleans as
//!   1 and 0 (as SQLite gives them), integers exact, floats as reals (NaN as
//!   the text `"NaN"`, which JSON cannot hold otherwise), numeric as its exact
//!   decimal text, bytea as a blob, json and jsonb as their text, uuid, date,
//!   time, timestamp and timestamptz as ISO text in UTC, void as null. Any
//!   other type is refused naming the column and its type, with the cast
//!   that reads it.

use std::error::Error as StdError;
use std::fmt::Write as _;

use bytes::{BufMut, BytesMut};
use tokio_postgres::types::{Format, FromSql, IsNull, ToSql, Type, to_sql_checked};

use crate::calendar::civil_from_days;
use crate::value::Value;

type BoxError = Box<dyn StdError + Sync + Send>;

/// One parameter, encoded for the type the server inferred.
#[derive(Debug)]
pub(crate) struct Param<'a>(pub(crate) &'a Value);

/// How a value travels for a parameter type: its own binary encoding, or
/// text that the type's input function parses.
fn travels_as_text(ty: &Type) -> bool {
    !matches!(
        *ty,
        Type::BOOL
            | Type::INT2
            | Type::INT4
            | Type::INT8
            | Type::OID
            | Type::FLOAT4
            | Type::FLOAT8
            | Type::TEXT
            | Type::VARCHAR
            | Type::BPCHAR
            | Type::NAME
            | Type::UNKNOWN
            | Type::BYTEA
            | Type::JSON
            | Type::JSONB
    )
}

impl ToSql for Param<'_> {
    fn to_sql(&self, ty: &Type, out: &mut BytesMut) -> Result<IsNull, BoxError> {
        let v = self.0;
        if matches!(v, Value::Null) {
            return Ok(IsNull::Yes);
        }
        if travels_as_text(ty) {
            match v {
                Value::Text(s) => out.put_slice(s.as_bytes()),
                Value::Integer(i) => write!(Writer(out), "{i}")?,
                Value::Real(f) => write!(Writer(out), "{}", real_text(*f))?,
                Value::Blob(_) => return Err(mismatch(v, ty)),
                Value::Null => unreachable!("handled above"),
            }
            return Ok(IsNull::No);
        }
        match (v, ty) {
            (Value::Integer(i), &Type::BOOL) if matches!(i, 0 | 1) => out.put_u8(*i as u8),
            (Value::Integer(i), &Type::INT2) => out.put_i16(narrow(*i, ty)?),
            (Value::Integer(i), &Type::INT4) => out.put_i32(narrow(*i, ty)?),
            (Value::Integer(i), &Type::OID) => out.put_u32(narrow(*i, ty)?),
            (Value::Integer(i), &Type::INT8) => out.put_i64(*i),
            (Value::Integer(i), &Type::FLOAT4) => out.put_f32(*i as f32),
            (Value::Integer(i), &Type::FLOAT8) => out.put_f64(*i as f64),
            (Value::Real(f), &Type::FLOAT4) => out.put_f32(real4(*f, ty)?),
            (Value::Real(f), &Type::FLOAT8) => out.put_f64(*f),
            (Value::Real(f), &Type::INT2 | &Type::INT4 | &Type::INT8)
                if f.fract() == 0.0 && f.abs() < 9.0e15 =>
            {
                return Param(&Value::Integer(*f as i64)).to_sql(ty, out);
            }
            (Value::Text(s), &Type::JSONB) => {
                out.put_u8(1);
                out.put_slice(s.as_bytes());
            }
            (Value::Integer(_) | Value::Real(_), &Type::JSON | &Type::JSONB) => {
                if *ty == Type::JSONB {
                    out.put_u8(1);
                }
                let text = match v {
                    Value::Integer(i) => i.to_string(),
                    Value::Real(f) if f.is_finite() => real_text(*f),
                    _ => return Err(mismatch(v, ty)),
                };
                out.put_slice(text.as_bytes());
            }
            (
                Value::Text(s),
                &Type::TEXT
                | &Type::VARCHAR
                | &Type::BPCHAR
                | &Type::NAME
                | &Type::UNKNOWN
                | &Type::JSON
                | &Type::BYTEA,
            ) => out.put_slice(s.as_bytes()),
            (
                Value::Integer(_) | Value::Real(_),
                &Type::TEXT | &Type::VARCHAR | &Type::BPCHAR | &Type::NAME | &Type::UNKNOWN,
            ) => {
                let text = match v {
                    Value::Integer(i) => i.to_string(),
                    Value::Real(f) => real_text(*f),
                    _ => unreachable!("matched above"),
                };
                out.put_slice(text.as_bytes());
            }
            (Value::Text(s), &Type::BOOL) => match s.to_ascii_lowercase().as_str() {
                "true" | "t" | "1" => out.put_u8(1),
                "false" | "f" | "0" => out.put_u8(0),
                _ => return Err(mismatch(v, ty)),
            },
            (Value::Text(s), _) => {
                // An integer or float column given text: parsed as PostgreSQL would.
                match *ty {
                    Type::INT2 | Type::INT4 | Type::INT8 | Type::OID => {
                        let i: i64 = s.trim().parse().map_err(|_| mismatch(v, ty))?;
                        return Param(&Value::Integer(i)).to_sql(ty, out);
                    }
                    Type::FLOAT4 | Type::FLOAT8 => {
                        let f: f64 = s.trim().parse().map_err(|_| mismatch(v, ty))?;
                        // Past a double's range, as PostgreSQL refuses it (Rust's
                        // parser gives an infinity or a zero).
                        if f.is_infinite() && !names_infinity(s) || f == 0.0 && nonzero(s) {
                            return Err(out_of_range(s, ty));
                        }
                        return Param(&Value::Real(f)).to_sql(ty, out);
                    }
                    _ => return Err(mismatch(v, ty)),
                }
            }
            (Value::Blob(b), &Type::BYTEA) => out.put_slice(b),
            _ => return Err(mismatch(v, ty)),
        }
        Ok(IsNull::No)
    }

    fn accepts(_: &Type) -> bool {
        true
    }

    fn encode_format(&self, ty: &Type) -> Format {
        if travels_as_text(ty) {
            Format::Text
        } else {
            Format::Binary
        }
    }

    to_sql_checked!();
}

/// A float as text that PostgreSQL's input functions read back exactly
/// (the shortest that round-trips, at the float's own width).
pub(super) fn real_text<F: std::fmt::Debug + Into<f64> + Copy>(f: F) -> String {
    let wide: f64 = f.into();
    if wide.is_nan() {
        "NaN".into()
    } else if wide.is_infinite() {
        if wide > 0.0 { "Infinity" } else { "-Infinity" }.into()
    } else {
        format!("{f:?}")
    }
}

fn narrow<T: TryFrom<i64>>(i: i64, ty: &Type) -> Result<T, BoxError> {
    T::try_from(i).map_err(|_| format!("{i} is out of range for type {}", ty.name()).into())
}

/// `f` as a `real`, refused where the narrowing would make it an infinity
/// or a zero (PostgreSQL refuses such a value as out of range; it was
/// stored changed: review 247).
fn real4(f: f64, ty: &Type) -> Result<f32, BoxError> {
    let narrowed = f as f32;
    if narrowed.is_infinite() && f.is_finite() || narrowed == 0.0 && f != 0.0 {
        return Err(format!("{} is out of range for type {}", real_text(f), ty.name()).into());
    }
    Ok(narrowed)
}

/// Whether `text` spells an infinity (`inf`, `Infinity`, signed).
fn names_infinity(text: &str) -> bool {
    let t = text
        .trim()
        .trim_start_matches(['+', '-'])
        .to_ascii_lowercase();
    t == "inf" || t == "infinity"
}

/// Whether `text`, a number, has a digit other than 0 before its exponent.
fn nonzero(text: &str) -> bool {
    text.split(['e', 'E'])
        .next()
        .is_some_and(|m| m.bytes().any(|b| matches!(b, b'1'..=b'9')))
}

/// The refusal of `text`, a number past `ty`'s range.
fn out_of_range(text: &str, ty: &Type) -> BoxError {
    format!("{:?} is out of range for type {}", text.trim(), ty.name()).into()
}

fn mismatch(v: &Value, ty: &Type) -> BoxError {
    let what = match v {
        Value::Null => "NULL".to_owned(),
        Value::Integer(i) => format!("the integer {i}"),
        Value::Real(f) => format!("the number {}", real_text(*f)),
        Value::Text(s) if s.chars().count() > 40 => {
            format!("the text {:?}...", s.chars().take(40).collect::<String>())
        }
        Value::Text(s) => format!("the text {s:?}"),
        Value::Blob(b) => format!("a blob of {} bytes", b.len()),
    };
    format!(
        "{what} cannot be bound to a parameter of type {}",
        ty.name()
    )
    .into()
}

/// `fmt::Write` into a `BytesMut`.
struct Writer<'a>(&'a mut BytesMut);

impl std::fmt::Write for Writer<'_> {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        self.0.put_slice(s.as_bytes());
        Ok(())
    }
}

/// One result cell.
pub(crate) struct Cell(pub(crate) Value);

/// Whether results of this type can be read (else the column is refused).
pub(crate) fn readable(ty: &Type) -> bool {
    matches!(
        *ty,
        Type::BOOL
            | Type::INT2
            | Type::INT4
            | Type::INT8
            | Type::OID
            | Type::FLOAT4
            | Type::FLOAT8
            | Type::NUMERIC
            | Type::TEXT
            | Type::VARCHAR
            | Type::BPCHAR
            | Type::NAME
            | Type::UNKNOWN
            | Type::CHAR
            | Type::BYTEA
            | Type::JSON
            | Type::JSONB
            | Type::UUID
            | Type::DATE
            | Type::TIME
            | Type::TIMESTAMP
            | Type::TIMESTAMPTZ
            | Type::VOID
    ) || citext(ty)
}

/// The `citext` extension's type (a base type, read as its text); a
/// composite type or domain a key named `citext` is not read as text
/// (review 247: its binary form came back as text).
fn citext(ty: &Type) -> bool {
    ty.name() == "citext" && matches!(ty.kind(), tokio_postgres::types::Kind::Simple)
}

/// A `"char"` byte as PostgreSQL prints it: nothing for 0, the character
/// for ASCII, `\ooo` past it (review 247: it was read as U+FFFD and NUL).
pub(crate) fn char_text(byte: u8) -> String {
    match byte {
        0 => String::new(),
        b if b.is_ascii() => char::from(b).to_string(),
        b => format!("\\{b:03o}"),
    }
}

impl<'a> FromSql<'a> for Cell {
    fn from_sql(ty: &Type, raw: &'a [u8]) -> Result<Cell, BoxError> {
        let text = |b: &[u8]| -> Result<Value, BoxError> {
            Ok(Value::Text(std::str::from_utf8(b)?.to_owned()))
        };
        Ok(Cell(match *ty {
            Type::BOOL => Value::Integer(i64::from(bool::from_sql(ty, raw)?)),
            Type::INT2 => Value::Integer(i64::from(i16::from_sql(ty, raw)?)),
            Type::INT4 => Value::Integer(i64::from(i32::from_sql(ty, raw)?)),
            Type::INT8 => Value::Integer(i64::from_sql(ty, raw)?),
            Type::OID => Value::Integer(i64::from(u32::from_sql(ty, raw)?)),
            // `"char"`: one byte, read as text as PostgreSQL prints it.
            Type::CHAR => Value::Text(char_text(raw.first().copied().unwrap_or(0))),
            Type::FLOAT4 => real(f64::from(f32::from_sql(ty, raw)?)),
            Type::FLOAT8 => real(f64::from_sql(ty, raw)?),
            Type::NUMERIC => Value::Text(numeric(raw)?),
            Type::BYTEA => Value::Blob(raw.to_vec()),
            Type::JSONB => match raw.split_first() {
                Some((1, rest)) => text(rest)?,
                _ => return Err("unknown jsonb version".into()),
            },
            Type::UUID => Value::Text(uuid(raw)?),
            Type::DATE => Value::Text(date(i32::from_sql(ty, raw)?)),
            Type::TIME => Value::Text(time_of_day(i64::from_sql(ty, raw)?)),
            Type::TIMESTAMP => Value::Text(timestamp(i64::from_sql(ty, raw)?, "")),
            Type::TIMESTAMPTZ => Value::Text(timestamp(i64::from_sql(ty, raw)?, "+00")),
            // What a function that returns nothing returns (`SELECT
            // pg_notify(..)` run as a write).
            Type::VOID => Value::Null,
            _ => text(raw)?,
        }))
    }

    fn from_sql_null(_: &Type) -> Result<Cell, BoxError> {
        Ok(Cell(Value::Null))
    }

    fn accepts(ty: &Type) -> bool {
        readable(ty)
    }
}

/// NaN has no JSON number and no `$real` form: it is read as the text `NaN`.
fn real(f: f64) -> Value {
    if f.is_nan() {
        Value::Text("NaN".into())
    } else {
        Value::Real(f)
    }
}

/// PostgreSQL's binary numeric: digit count, weight, sign, display scale,
/// then base-10000 digits. Read into its exact decimal text.
fn numeric(raw: &[u8]) -> Result<String, BoxError> {
    let word = |i: usize| -> Result<u16, BoxError> {
        raw.get(i * 2..i * 2 + 2)
            .map(|b| u16::from_be_bytes([b[0], b[1]]))
            .ok_or_else(|| "short numeric".into())
    };
    let ndigits = usize::from(word(0)?);
    let weight = i32::from(word(1)? as i16);
    let sign = word(2)?;
    let dscale = usize::from(word(3)?);
    match sign {
        0xC000 => return Ok("NaN".into()),
        0xD000 => return Ok("Infinity".into()),
        0xF000 => return Ok("-Infinity".into()),
        0x0000 | 0x4000 => {}
        _ => return Err("bad numeric sign".into()),
    }
    let digits: Vec<u16> = (0..ndigits)
        .map(|i| word(4 + i))
        .collect::<Result<_, _>>()?;
    let digit = |pos: i32| -> u16 {
        // The base-10000 digit at position `pos` (0 = units, -1 = first after the point).
        let i = weight - pos;
        if i >= 0 && (i as usize) < digits.len() {
            digits[i as usize]
        } else {
            0
        }
    };
    let mut s = String::new();
    if sign == 0x4000 {
        s.push('-');
    }
    if weight < 0 {
        s.push('0');
    } else {
        for pos in (0..=weight).rev() {
            let d = digit(pos);
            if pos == weight {
                let _ = write!(s, "{d}");
            } else {
                let _ = write!(s, "{d:04}");
            }
        }
    }
    if dscale > 0 {
        s.push('.');
        let mut frac = String::new();
        let mut pos = -1;
        while frac.len() < dscale {
            let _ = write!(frac, "{:04}", digit(pos));
            pos -= 1;
        }
        frac.truncate(dscale);
        s.push_str(&frac);
    }
    Ok(s)
}

fn uuid(raw: &[u8]) -> Result<String, BoxError> {
    if raw.len() != 16 {
        return Err("a uuid is 16 bytes".into());
    }
    let mut s = String::with_capacity(36);
    for (i, b) in raw.iter().enumerate() {
        if matches!(i, 4 | 6 | 8 | 10) {
            s.push('-');
        }
        let _ = write!(s, "{b:02x}");
    }
    Ok(s)
}

/// Days from 2000-01-01 (PostgreSQL's epoch) to 1970-01-01.
const PG_EPOCH_DAYS: i64 = 10_957;

fn date(days: i32) -> String {
    match days {
        i32::MAX => "infinity".into(),
        i32::MIN => "-infinity".into(),
        d => {
            let (y, m, d) = civil_from_days(i64::from(d) + PG_EPOCH_DAYS);
            civil(y, m, d)
        }
    }
}

fn civil(y: i64, m: i64, d: i64) -> String {
    if y <= 0 {
        // PostgreSQL prints year 0 as 1 BC.
        format!("{:04}-{m:02}-{d:02} BC", 1 - y)
    } else {
        format!("{y:04}-{m:02}-{d:02}")
    }
}

fn time_of_day(us: i64) -> String {
    let (secs, frac) = (us.div_euclid(1_000_000), us.rem_euclid(1_000_000));
    let mut s = format!("{:02}:{:02}:{:02}", secs / 3600, secs / 60 % 60, secs % 60);
    if frac != 0 {
        let f = format!("{frac:06}");
        s.push('.');
        s.push_str(f.trim_end_matches('0'));
    }
    s
}

fn timestamp(us: i64, zone: &str) -> String {
    match us {
        i64::MAX => "infinity".into(),
        i64::MIN => "-infinity".into(),
        us => {
            let day = us.div_euclid(86_400_000_000);
            let (y, m, d) = civil_from_days(day + PG_EPOCH_DAYS);
            let date = civil(y, m, d);
            let t = time_of_day(us.rem_euclid(86_400_000_000));
            match date.strip_suffix(" BC") {
                Some(date) => format!("{date} {t}{zone} BC"),
                None => format!("{date} {t}{zone}"),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn num(words: &[u16]) -> String {
        let raw: Vec<u8> = words.iter().flat_map(|w| w.to_be_bytes()).collect();
        numeric(&raw).expect("decodes")
    }

    #[test]
    fn numerics_read_exactly() {
        // 12345.678: digits 1, 2345, 6780; weight 1; scale 3.
        assert_eq!(num(&[3, 1, 0, 3, 1, 2345, 6780]), "12345.678");
        // -0.0012: digit 12 at weight -1; scale 4.
        assert_eq!(num(&[1, 0xFFFF, 0x4000, 4, 12]), "-0.0012");
        // 0 with scale 2.
        assert_eq!(num(&[0, 0, 0, 2]), "0.00");
        // 1e20: digit 1 at weight 5.
        assert_eq!(num(&[1, 5, 0, 0, 1]), "100000000000000000000");
        assert_eq!(num(&[0, 0, 0xC000, 0]), "NaN");
    }

    #[test]
    fn dates_and_times_read_as_iso_text() {
        assert_eq!(date(0), "2000-01-01");
        assert_eq!(date(-1), "1999-12-31");
        assert_eq!(timestamp(1_500_000, ""), "2000-01-01 00:00:01.5");
        assert_eq!(timestamp(-1, "+00"), "1999-12-31 23:59:59.999999+00");
        assert_eq!(time_of_day(3_723_000_000), "01:02:03");
        assert_eq!(date(i32::MAX), "infinity");
    }
}
