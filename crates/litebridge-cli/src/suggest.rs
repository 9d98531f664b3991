//! "Did you mean": the names a misspelt one was probably meant to be, for
//! configuration keys and JSON-RPC methods.

/// Names longer than this get no guess: the distance costs the product of
/// the two lengths, and a caller controls the name it sends.
const MAX_GUESSED: usize = 64;

/// The name of `known` closest to `wanted` by edit distance (case aside),
/// when it is close: a letter or two off in a short name, a few in a long
/// one (3 of 12 letters).
pub(crate) fn closest<'a>(
    wanted: &str,
    known: impl IntoIterator<Item = &'a str>,
) -> Option<&'a str> {
    if wanted.len() > MAX_GUESSED {
        return None;
    }
    let wanted = wanted.to_ascii_lowercase();
    known
        .into_iter()
        .map(|k| (strsim::normalized_damerau_levenshtein(&wanted, k), k))
        .filter(|(score, _)| *score >= 0.75)
        .max_by(|a, b| a.0.total_cmp(&b.0))
        .map(|(_, k)| k)
}

/// "; did you mean a or b?", or nothing for no names.
pub(crate) fn did_you_mean(names: &[String]) -> String {
    if names.is_empty() {
        String::new()
    } else {
        format!("; did you mean {}?", names.join(" or "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn close_names_are_guessed_and_far_or_long_ones_are_not() {
        let known = ["sql.query", "sql.execute", "state.load"];
        assert_eq!(closest("sql.querry", known), Some("sql.query"));
        assert_eq!(closest("SQL.Query", known), Some("sql.query"));
        assert_eq!(closest("sql.exectue", known), Some("sql.execute"));
        assert_eq!(closest("state.get", known), None);
        assert_eq!(closest(&"sql.query".repeat(8), known), None);
        assert_eq!(did_you_mean(&[]), "");
        assert_eq!(
            did_you_mean(&["`a`".into(), "`b`".into()]),
            "; did you mean `a` or `b`?"
        );
    }
}
