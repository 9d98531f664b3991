//! Writes acknowledged once standbys have them
//! ([`PgConfig::replicated_to`](super::PgConfig::replicated_to)).
//!
//! # Design
//!
//! PostgreSQL's synchronous replication makes a `COMMIT` wait for the
//! standbys that `synchronous_standby_names` lists, but a cluster's
//! manager may empty that list, and then promote a standby that did not
//! have every commit. pg_auto_failover does both: while a standby catches
//! up, the primary runs in `wait_primary` with the list empty, and the
//! monitor may already count that standby as a candidate for promotion
//! (read in its 2.0 source, `group_state_machine.c`; its only check of the
//! candidate's position is a 16 MB threshold). litebridge's failover test
//! lost about 4,000 acknowledged writes that way once: the standby lagged
//! seconds behind the primary it followed, which was killed.
//!
//! So litebridge checks for itself, after each write's `COMMIT`, on the
//! primary: the write's position is read in the `COMMIT`'s message, and
//! [`PgDatabase::replicated`] counts the physical standbys streaming from the
//! primary (`pg_stat_replication`, without the logical senders, which
//! connect to a database) whose flush position is at or past it. A
//! standby's flush position only moves forward and comes from the standby's
//! own report, so once it passes the write the standby holds it on disk,
//! and a promotion replays everything a standby flushed. When the primary
//! has synchronous replication on, the `COMMIT` waited for this already and
//! the first count passes; otherwise litebridge polls, 1 ms then doubling
//! up to 20 ms, until the write's deadline.
//!
//! The count must be read on the server that committed the write: the
//! position is compared only on the timeline it was read on. A primary on
//! another timeline (a failover between the two) answers
//! `outcome_unknown`, as does a position that could not be read: the write
//! committed on a primary that may be gone. A retry with the write's
//! idempotency key finds its record if the write survived (and waits for
//! the standbys again, from the new primary's position, which is past it),
//! or runs it again if it did not.
//!
//! Not counted for more than they are: each physical sender counts, so a
//! `pg_receivewal` streaming from the primary counts as a standby (it holds
//! the log, but is no server to fail over to). List in
//! `replicated_to` only as many as the standbys that can be promoted.

use std::time::Duration;

use tokio::time::Instant;

use super::{PgDatabase, Who, first_two};
use crate::consistency::Token;
use crate::error::{Error, Result};

/// Counts asked again at once, before the first pause.
const AT_ONCE: u32 = 8;

/// The longest pause between two counts.
const MOST_PAUSE: Duration = Duration::from_millis(20);

impl PgDatabase {
    /// Waits until [`PgConfig::replicated_to`](super::PgConfig::replicated_to)
    /// standbys have flushed the write committed at `token`, by `deadline`.
    ///
    /// # Errors
    /// [`Error::OutcomeUnknown`] when they do not by then, when the position
    /// was not read, or when the primary changed before they did.
    pub(super) async fn replicated(
        &self,
        token: Option<Token>,
        deadline: Instant,
        timeout: Duration,
    ) -> Result<()> {
        let need = self.inner.config.replicated_to;
        let unknown = |why: String| Error::OutcomeUnknown {
            what: "the write".into(),
            reason: format!(
                "it committed on the primary, but {why}, so it is not known to be on the \
                 {need} standbys postgres.replicated_to asks for and may be lost with the \
                 primary: retry it with its idempotency key"
            ),
        };
        let Some(token) = token.filter(|t| t.timeline != 0) else {
            return Err(unknown("its position was not read after its COMMIT".into()));
        };
        let sql = count_sql(token);
        let lost = |e: tokio_postgres::Error| {
            unknown(format!(
                "the primary did not answer how far its standbys flushed ({})",
                super::error::error_chain(&e)
            ))
        };
        let conn = match self.connection(Who::Own, None, deadline).await {
            Ok(conn) => conn,
            Err(e) => return Err(unknown(format!("no connection to the primary ({e})"))),
        };
        let mut pause = Duration::from_millis(1);
        let mut asked = 0;
        // The last count and the furthest flush position, for the message
        // when the deadline comes.
        let mut last = None;
        let short = loop {
            let answer = match tokio::time::timeout_at(deadline, conn.simple_query(&sql)).await {
                Ok(Ok(answer)) => answer,
                Ok(Err(e)) => return Err(lost(e)),
                Err(_) => break last,
            };
            let (file, flushed) = first_two(&answer).unwrap_or_default();
            let timeline = file
                .get(..8)
                .and_then(|t| u32::from_str_radix(t, 16).ok())
                .unwrap_or(0);
            if timeline != token.timeline {
                return Err(unknown(format!(
                    "the primary reached now writes on timeline {timeline}, not the write's \
                     {}: a failover came between the two",
                    token.timeline
                )));
            }
            let flushed: usize = flushed.parse().unwrap_or(0);
            if flushed >= need {
                conn.release();
                return Ok(());
            }
            let furthest = answer.iter().find_map(|m| match m {
                tokio_postgres::SimpleQueryMessage::Row(r) => r.get(2).map(str::to_owned),
                _ => None,
            });
            last = Some((flushed, furthest));
            if asked < AT_ONCE {
                // A standby on the same network reports its flush within
                // a round trip or two: asked again at once.
                asked += 1;
                continue;
            }
            if Instant::now() + pause >= deadline {
                break last;
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(MOST_PAUSE);
        };
        Err(unknown(match short {
            Some((flushed, furthest)) => format!(
                "{flushed} of them flushed it (at {}; the furthest standby at {}) within its \
                 deadline of {} ms",
                Token::new(0, token.lsn),
                furthest.as_deref().unwrap_or("none"),
                timeout.as_millis()
            ),
            None => format!(
                "the primary did not answer how far its standbys flushed within the write's \
                 deadline of {} ms",
                timeout.as_millis()
            ),
        }))
    }
}

/// The log file written now (its name's first eight digits are the
/// timeline), how many physical standbys flushed `token`'s position, and
/// the furthest flush position of any sender (for the error message):
/// the WAL senders whose session is in no database (a logical sender's
/// is). Read from the senders' function, not `pg_stat_replication`, which
/// joins every session's activity: a fifth of the time.
fn count_sql(token: Token) -> String {
    let at = Token::new(0, token.lsn);
    format!(
        "SELECT pg_catalog.pg_walfile_name(pg_catalog.pg_current_wal_insert_lsn()), \
         (SELECT pg_catalog.count(*) FROM pg_catalog.pg_stat_get_wal_senders() w \
          WHERE w.flush_lsn OPERATOR(pg_catalog.>=) '{at}'::pg_catalog.pg_lsn \
          AND (SELECT a.datid FROM pg_catalog.pg_stat_get_activity(w.pid) a) IS NULL), \
         (SELECT pg_catalog.max(w.flush_lsn)::pg_catalog.text \
          FROM pg_catalog.pg_stat_get_wal_senders() w)"
    )
}
