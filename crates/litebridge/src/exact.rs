//! Integers that JSON can carry but litebridge would read inexactly.
//!
//! JSON puts no bound on an integer; serde_json (without its
//! `arbitrary_precision`, which would slow every number everywhere) reads
//! one outside the 64-bit range as a float, silently rounded:
//! `18446744073709551617` arrives as `1.8446744073709552e19`. A caller's
//! parameter or a worker's answer would then be stored or passed on
//! changed, with no word. So such text is found before it is read, and
//! refused with a message that says to send the number as a string.

/// The first integer in the JSON text `input` (outside its strings) that
/// is outside both `i64` and `u64`, as written; `None` when there is none
/// (or `input` is no JSON this scan understands: the parser will say).
/// One pass over the bytes, nothing allocated.
pub fn inexact_integer(input: &[u8]) -> Option<&str> {
    let mut i = 0;
    while i < input.len() {
        match input[i] {
            b'"' => {
                // Past the string, escapes included.
                i += 1;
                while i < input.len() {
                    match input[i] {
                        b'\\' => i += 2,
                        b'"' => break,
                        _ => i += 1,
                    }
                }
                i += 1;
            }
            b'-' | b'0'..=b'9' => {
                let start = i;
                while i < input.len()
                    && matches!(input[i], b'-' | b'+' | b'.' | b'e' | b'E' | b'0'..=b'9')
                {
                    i += 1;
                }
                let token = &input[start..i];
                // `i64::MIN` has 19 digits: shorter integers always fit.
                if token.len() >= 19 && !token.iter().any(|b| matches!(b, b'.' | b'e' | b'E')) {
                    let text = std::str::from_utf8(token).ok()?;
                    if text.parse::<i64>().is_err() && text.parse::<u64>().is_err() {
                        return Some(text);
                    }
                }
            }
            _ => i += 1,
        }
    }
    None
}

/// A refused integer, for a message: `the integer N, outside the 64-bit
/// range ...` (the number as written, cut short).
pub fn inexact_integer_named(number: &str) -> String {
    let shown: String = number.chars().take(40).collect();
    let more = if number.len() > 40 { "..." } else { "" };
    format!(
        "the integer {shown}{more}, outside the 64-bit range litebridge reads exactly \
         (-9223372036854775808 to 18446744073709551615)"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn integers_past_64_bits_are_found_outside_strings_only() {
        for (text, found) in [
            (r#"{"a": 18446744073709551615}"#, None),
            (
                r#"{"a": 18446744073709551616}"#,
                Some("18446744073709551616"),
            ),
            (r#"[-9223372036854775808]"#, None),
            (r#"[-9223372036854775809]"#, Some("-9223372036854775809")),
            (
                r#"[1, 2.5e300, 1.8446744073709552e19, 123456789012345678901.5]"#,
                None,
            ),
            (
                r#"{"s": "18446744073709551617 \" 99999999999999999999"}"#,
                None,
            ),
            (
                r#"{"s": "\\", "n": 99999999999999999999}"#,
                Some("99999999999999999999"),
            ),
            ("00000000000000000000000001", None),
        ] {
            assert_eq!(inexact_integer(text.as_bytes()), found, "{text}");
        }
        assert!(
            inexact_integer_named(&"9".repeat(50)).contains(&format!("{}...,", "9".repeat(40)))
        );
    }

    #[test]
    fn what_is_found_is_what_serde_json_would_have_rounded() {
        for text in ["18446744073709551616", "-9223372036854775809", "1e2", "12"] {
            let v: serde_json::Value = serde_json::from_str(text).unwrap();
            assert_eq!(
                inexact_integer(text.as_bytes()).is_some(),
                v.is_f64() && !text.contains('e'),
                "{text}"
            );
        }
    }
}
