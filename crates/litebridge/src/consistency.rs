//! Where a read may be served, and the position token that gives
//! read-your-writes on replicas.
//!
//! On SQLite every read is served by the one file and sees every
//! acknowledged write: the levels make no difference there and no write
//! returns a token. On PostgreSQL with replicas (see the `pg` module),
//! [`Consistency::Session`] reads go to a replica that has replayed as far
//! as the token, else to the primary.

use std::fmt;
use std::str::FromStr;

use crate::error::{Error, Result};

/// A position in PostgreSQL's write-ahead log (`pg_lsn`), written `X/Y` in hex.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Token(pub u64);

impl FromStr for Token {
    type Err = Error;
    fn from_str(s: &str) -> Result<Token> {
        let bad = || {
            Error::invalid(
                "token",
                format!("{s:?} is not a position token (two hex numbers: 0/16B3748)"),
            )
        };
        let (hi, lo) = s.split_once('/').ok_or_else(bad)?;
        let hi = u32::from_str_radix(hi, 16).map_err(|_| bad())?;
        let lo = u32::from_str_radix(lo, 16).map_err(|_| bad())?;
        Ok(Token((u64::from(hi) << 32) | u64::from(lo)))
    }
}

impl fmt::Display for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:X}/{:X}", self.0 >> 32, self.0 & 0xFFFF_FFFF)
    }
}

/// Where a read may be served.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Consistency {
    /// The primary: every committed write. The default.
    #[default]
    Strong,
    /// A node that has replayed at least this far (else the primary): the
    /// caller's own writes, and never older than what it read before.
    Session(Token),
    /// Any node, however far behind.
    Any,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_read_and_print_as_postgres_does() {
        let t: Token = "16/B374D848".parse().expect("a token");
        assert_eq!(t.0, 0x16_B374_D848);
        assert_eq!(t.to_string(), "16/B374D848");
        assert!("0/1".parse::<Token>().expect("ok") < "1/0".parse::<Token>().expect("ok"));
        for bad in ["", "1", "x/1", "1/2/3", "100000000/0"] {
            assert!(bad.parse::<Token>().is_err(), "{bad}");
        }
    }
}
