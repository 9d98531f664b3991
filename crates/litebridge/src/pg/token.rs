//! Read-your-writes on replicas: a write's position in the log, and reads
//! that ask for a node which has replayed that far.
//!
//! A write's answer carries a [`Token`]: `pg_current_wal_insert_lsn()`, read
//! right after its `COMMIT` in the same round trip, so it is past the commit
//! record. A read with [`Consistency::Session`] and that token runs on a
//! replica in one round trip: `BEGIN READ ONLY`, the replica's replay
//! position, the query, `COMMIT`. The query takes its snapshot after the
//! position was read, and replay only moves forward, so when the position
//! is at or past the token the rows include the write. When it is not, the
//! rows are thrown away and the read goes to the primary (which always has
//! it). The answer's token is the later of the two positions, so a client
//! that passes it on never reads backwards in time.

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

/// The server's WAL page and segment sizes, which decide where page headers
/// sit (read at connect; PostgreSQL's defaults are 8 KiB and 16 MiB).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct WalLayout {
    pub(crate) page: u64,
    pub(crate) segment: u64,
}

impl Token {
    /// The token for an insert position read after a commit. When the
    /// commit record ended exactly at the end of a page, the insert position
    /// is past the next page's header (24 bytes; 40 at the start of a
    /// segment), where no replica reports a replay position until more WAL
    /// comes; the page boundary, where the commit record ends, is the token
    /// then. (No record can end inside a page header.)
    pub(crate) fn after_commit(insert: Token, wal: WalLayout) -> Token {
        const SHORT_HEADER: u64 = 24;
        const LONG_HEADER: u64 = 40;
        if wal.segment > 0 && insert.0 % wal.segment == LONG_HEADER {
            Token(insert.0 - LONG_HEADER)
        } else if wal.page > 0 && insert.0 % wal.page == SHORT_HEADER {
            Token(insert.0 - SHORT_HEADER)
        } else {
            insert
        }
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
    fn a_position_past_a_page_header_is_the_page_boundary() {
        let wal = WalLayout {
            page: 8192,
            segment: 16 << 20,
        };
        assert_eq!(
            Token::after_commit(Token(3 * 8192 + 24), wal),
            Token(3 * 8192)
        );
        assert_eq!(
            Token::after_commit(Token((16 << 20) + 40), wal),
            Token(16 << 20)
        );
        // Anywhere else, the position as it is.
        for p in [3 * 8192 + 23, 3 * 8192 + 25, 3 * 8192, (16 << 20) + 16] {
            assert_eq!(Token::after_commit(Token(p), wal), Token(p));
        }
        // Another page size: its own boundaries only.
        let big = WalLayout {
            page: 16384,
            segment: 16 << 20,
        };
        assert_eq!(Token::after_commit(Token(8192 + 24), big), Token(8192 + 24));
        assert_eq!(Token::after_commit(Token(16384 + 24), big), Token(16384));
    }

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
