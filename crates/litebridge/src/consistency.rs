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

/// A position in PostgreSQL's write-ahead log on a timeline: a write's, or
/// the latest a read saw. Written `X/Y@T`: the position as `pg_lsn` prints
/// it (two hex numbers) and the timeline in decimal, `0/16B3748@2`.
///
/// The timeline tells histories apart after a failover: the new primary
/// writes on a new timeline, and a node left on the old one may have
/// replayed past a position without holding what the new primary wrote
/// there. A token read without one (`X/Y`, as litebridge wrote them before
/// timelines) has timeline 0, "unknown", and is served by the primary. A
/// write whose position could not be read answers `0/0` (the default): a
/// read with it goes to the primary.
///
/// Tokens order by timeline, then position: a later timeline's history
/// holds everything of the earlier ones that survived the failover. A
/// token on timeline 0 orders lowest, so a caller keeping the highest of
/// its tokens must keep "a timeline-0 token came after" apart (as the
/// stdio session does), or it loses the write that token stands for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Token {
    /// The timeline, 0 when unknown.
    pub timeline: u32,
    /// The position in the log, in bytes.
    pub lsn: u64,
}

impl Token {
    /// The position `lsn` on `timeline`.
    pub const fn new(timeline: u32, lsn: u64) -> Token {
        Token { timeline, lsn }
    }
}

impl FromStr for Token {
    type Err = Error;
    fn from_str(s: &str) -> Result<Token> {
        let bad = || {
            Error::invalid(
                "token",
                format!(
                    "{s:?} is not a position token (a log position and a timeline: 0/16B3748@2)"
                ),
            )
        };
        let (position, timeline) = match s.split_once('@') {
            Some((p, t)) if !t.is_empty() && t.bytes().all(|b| b.is_ascii_digit()) => {
                let t: u32 = t.parse().map_err(|_| bad())?;
                // PostgreSQL shows timelines as `integer`.
                if t == 0 || t > i32::MAX as u32 {
                    return Err(bad());
                }
                (p, t)
            }
            Some(_) => return Err(bad()),
            None => (s, 0),
        };
        let (hi, lo) = position.split_once('/').ok_or_else(bad)?;
        let hex = |h: &str| {
            if h.is_empty() || h.len() > 8 || !h.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(bad());
            }
            u32::from_str_radix(h, 16).map_err(|_| bad())
        };
        let lsn = (u64::from(hex(hi)?) << 32) | u64::from(hex(lo)?);
        Ok(Token { timeline, lsn })
    }
}

impl fmt::Display for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:X}/{:X}", self.lsn >> 32, self.lsn & 0xFFFF_FFFF)?;
        if self.timeline > 0 {
            write!(f, "@{}", self.timeline)?;
        }
        Ok(())
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
    fn tokens_read_and_print_with_their_timeline() {
        let t: Token = "16/B374D848@2".parse().expect("a token");
        assert_eq!(t, Token::new(2, 0x16_B374_D848));
        assert_eq!(t.to_string(), "16/B374D848@2");
        // Written before timelines: timeline unknown.
        let old: Token = "16/B374D848".parse().expect("an old token");
        assert_eq!(old, Token::new(0, 0x16_B374_D848));
        assert_eq!(old.to_string(), "16/B374D848");
        for bad in [
            "",
            "1",
            "x/1",
            "1/2/3",
            "100000000/0",
            "+1/2",
            "1/-2",
            "1/2@",
            "1/2@0",
            "1/2@x",
            "1/2@+3",
            "1/2@2147483648",
            "1/2@1@2",
            "@1",
            "/2@1",
        ] {
            assert!(bad.parse::<Token>().is_err(), "{bad}");
        }
    }

    #[test]
    fn a_later_timeline_is_later_whatever_the_position() {
        let t = |s: &str| s.parse::<Token>().expect("a token");
        assert!(t("0/1@1") < t("1/0@1"));
        assert!(t("5/0@1") < t("0/1@2"));
        assert!(t("5/0") < t("0/1@1"), "an unknown timeline is the earliest");
    }
}
