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
//! So litebridge checks for itself, after each write's `COMMIT`. The
//! write's position is read in the `COMMIT`'s message. Then, **on the same
//! session**, [`PgDatabase::replicated_on`] counts the physical standbys
//! streaming from the primary whose flush position is at or past it
//! (`<schema>_claims.standbys_flushed`, a function of litebridge's role,
//! which may read the senders' positions; `pg_stat_get_wal_senders()`,
//! less the logical senders, whose sessions are in a database, and those
//! that report no replay position (`pg_receivewal`, `pg_basebackup`: they
//! keep the log but could never be promoted), and, when
//! [`PgConfig::replicated_standbys`](super::PgConfig::replicated_standbys)
//! names them, the others). The session is what ties the count to the
//! server that committed: a pooled connection could reach another primary
//! on the same timeline number (two promotions that did not see each
//! other's history), or the same server after a crash restart that lost
//! an asynchronous commit's record and wrote others over its position.
//! Neither keeps a session: a crash restart ends every one, so the count
//! fails and the write answers `outcome_unknown`. (So each of litebridge's
//! connections must be one server session: a direct connection, or a
//! pooler in session mode. The message of the `COMMIT` reads its session,
//! its server process and when that started (`<schema>_claims.this_session()`,
//! as litebridge's role: review 226), and each count reads its own: another
//! session, as a pooler in transaction mode would give, answers
//! `outcome_unknown` (review 223). The timeline is compared too.)
//!
//! A standby's flush position only moves forward, and a promotion replays
//! everything a standby flushed. When the count falls short, litebridge
//! asks again: at once a few times (a standby on the same network reports
//! within a round trip or two), then after 1 ms, doubling up to 20 ms,
//! until the write's deadline. Then it answers `outcome_unknown`: the
//! write committed on the primary and may be lost with it. A retry with
//! the write's idempotency key finds its record if the write survived (and
//! waits for the standbys again, from the new primary's position, past
//! it), or runs it again if it did not.
//!
//! What the count cannot know: which standby the cluster's manager will
//! promote. `replicated_to` as large as the number of standbys that can be
//! promoted is safe whatever the manager picks; a smaller one relies on
//! the manager promoting the most advanced standby, and on the old primary
//! taking no more writes once another node is promoted (docs/postgres.md,
//! "Failover").

use std::time::Duration;

use tokio::time::Instant;

use deadpool_postgres::Object;

use super::{PgDatabase, Who, first_two, walfile_timeline};
use crate::consistency::Token;
use crate::error::{Error, Result};

/// Counts asked again at once, before the first pause.
const AT_ONCE: u32 = 8;

/// The longest pause between two counts.
const MOST_PAUSE: Duration = Duration::from_millis(20);

impl PgDatabase {
    /// Waits, on `conn` (the session that committed the write), until
    /// [`PgConfig::replicated_to`](super::PgConfig::replicated_to)
    /// standbys have flushed the write committed at `token`, by
    /// `deadline`.
    ///
    /// # Errors
    /// [`Error::OutcomeUnknown`] when they do not by then, when the position
    /// was not read, or when the session fails. The caller closes `conn`
    /// then.
    pub(super) async fn replicated_on(
        &self,
        conn: &Object,
        who: Who,
        token: Option<Token>,
        session: Option<String>,
        deadline: Instant,
        timeout: Duration,
    ) -> Result<()> {
        let need = self.inner.config.replicated_to;
        let retry = match who {
            Who::Client => "retry it with its idempotency key",
            Who::Own | Who::Keys => "it may be there or not",
        };
        let unknown = |why: String| Error::OutcomeUnknown {
            what: "the write".into(),
            reason: format!(
                "it committed on the primary, but {why}, so it is not known to be on the \
                 {need} standbys postgres.replicated_to asks for and may be lost with the \
                 primary: {retry}"
            ),
        };
        let (Some(token), Some(session)) = (token.filter(|t| t.timeline != 0), session) else {
            return Err(unknown("its position was not read after its COMMIT".into()));
        };
        let sql = count_sql(
            self.own_schema(),
            token,
            &self.inner.config.replicated_standbys,
        );
        // The fault of a pooler in transaction mode: another session.
        let elsewhere = match self.inner.faults.take_count_elsewhere() {
            true => Some(self.inner.own.get().await.map_err(|e| {
                unknown(format!("no other session for the fault to count on ({e})"))
            })?),
            false => None,
        };
        let conn = elsewhere.as_ref().unwrap_or(conn);
        let mut pause = Duration::from_millis(1);
        let mut asked = 0;
        // The last count and the furthest flush position, for the message
        // when the deadline comes.
        let mut last = None;
        let short = loop {
            let answer = match tokio::time::timeout_at(deadline, conn.simple_query(&sql)).await {
                Ok(Ok(answer)) => answer,
                Ok(Err(e)) => {
                    return Err(unknown(format!(
                        "its session failed before its standbys were counted ({})",
                        super::error::error_chain(&e)
                    )));
                }
                Err(_) => break last,
            };
            let (flushed, furthest) = first_two(&answer).unwrap_or_default();
            let column = |i| {
                answer.iter().find_map(|m| match m {
                    tokio_postgres::SimpleQueryMessage::Row(r) => r.try_get(i).ok().flatten(),
                    _ => None,
                })
            };
            // The session that counts must be the one that committed: a
            // pooler in transaction mode gives each transaction a session
            // of its own (review 223).
            let counting = column(3).unwrap_or_default();
            if counting != session {
                return Err(unknown(format!(
                    "its standbys were counted on another server session than the one that \
                     committed it (process and start {counting:?}, not {session:?}: a pooler \
                     in transaction mode between litebridge and PostgreSQL?)"
                )));
            }
            // Its timeline is checked too, should something between them
            // make the session another server's.
            let timeline = column(2).and_then(walfile_timeline).unwrap_or(0);
            if timeline != token.timeline {
                return Err(unknown(format!(
                    "the server its session reaches now writes on timeline {timeline}, not \
                     the write's {}",
                    token.timeline
                )));
            }
            let flushed: usize = flushed.parse().unwrap_or(0);
            if flushed >= need {
                return Ok(());
            }
            last = Some((flushed, furthest.to_owned()));
            if asked < AT_ONCE {
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
                if furthest.is_empty() {
                    "none"
                } else {
                    &furthest
                },
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

/// How many of the standbys counted flushed `token`'s position, the
/// furthest flush position among them (for the error message), the log
/// file written now (its name's first eight digits are the timeline), and
/// the session counting (`this_session()` of `claims`).
fn count_sql(schema: &str, token: Token, names: &[String]) -> String {
    let at = Token::new(0, token.lsn);
    format!(
        "SELECT flushed::pg_catalog.text, COALESCE(furthest, ''), \
         pg_catalog.pg_walfile_name(pg_catalog.pg_current_wal_insert_lsn()), \
         {schema}_claims.this_session() \
         FROM {schema}_claims.standbys_flushed('{at}'::pg_catalog.pg_lsn, {})",
        names_sql(names)
    )
}

/// `names` as a text array (NULL: every physical sender). Each was
/// checked to need no quoting (`PgConfig::validate`).
pub(super) fn names_sql(names: &[String]) -> String {
    if names.is_empty() {
        "NULL::pg_catalog.text[]".to_owned()
    } else {
        let quoted: Vec<String> = names.iter().map(|n| format!("'{n}'")).collect();
        format!("ARRAY[{}]::pg_catalog.text[]", quoted.join(", "))
    }
}
