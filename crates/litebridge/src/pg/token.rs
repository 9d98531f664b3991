//! Read-your-writes on replicas: a write's position in the log, and reads
//! that ask for a node which has replayed that far.
//!
//! A write's answer carries a [`Token`]: `pg_current_wal_insert_lsn()`, read
//! right after its `COMMIT` in the same round trip, so it is past the commit
//! record. A read with [`Consistency::Session`] and that token runs on a
//! replica: `BEGIN READ ONLY` (awaited; and a Parse, awaited, for a
//! statement not cached yet), then in one round trip a guard
//! that aborts the transaction unless the replica's replay position is at
//! or past the token, the query, the replica's position again, `COMMIT`. The guard runs
//! before the query is parsed, and replay only moves forward, so when it
//! passes the rows include the write. When it does not, the read goes to
//! the primary (which always has it). The answer's token is the later of
//! the token given and the position read after the query, so a client that
//! passes it on never reads backwards in time.
//!
//! [`Consistency::Session`]: crate::Consistency::Session

use crate::consistency::Token;

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
        let back = if wal.segment > 0 && insert.lsn % wal.segment == LONG_HEADER {
            LONG_HEADER
        } else if wal.page > 0 && insert.lsn % wal.page == SHORT_HEADER {
            SHORT_HEADER
        } else {
            0
        };
        Token::new(insert.timeline, insert.lsn - back)
    }
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
            Token::after_commit(Token::new(1, 3 * 8192 + 24), wal),
            Token::new(1, 3 * 8192)
        );
        assert_eq!(
            Token::after_commit(Token::new(1, (16 << 20) + 40), wal),
            Token::new(1, 16 << 20)
        );
        // Anywhere else, the position as it is.
        for p in [3 * 8192 + 23, 3 * 8192 + 25, 3 * 8192, (16 << 20) + 16] {
            assert_eq!(Token::after_commit(Token::new(1, p), wal), Token::new(1, p));
        }
        // Another page size: its own boundaries only.
        let big = WalLayout {
            page: 16384,
            segment: 16 << 20,
        };
        assert_eq!(
            Token::after_commit(Token::new(1, 8192 + 24), big),
            Token::new(1, 8192 + 24)
        );
        assert_eq!(
            Token::after_commit(Token::new(1, 16384 + 24), big),
            Token::new(1, 16384)
        );
    }
}
