//! Writes of one caller sent together: with one-message writes on
//! (`fast`), a caller's single-statement writes that wait for a connection
//! go in the message of the next of its writes to get one, each in a
//! transaction of its own, up to
//! [`PgConfig::writes_per_message`](super::PgConfig::writes_per_message).
//!
//! # Design
//!
//! A one-message write still costs PostgreSQL two wake-ups, two flushes and
//! a tidy-up, and those are most of its work: pgbench on the loopback
//! cluster (16 clients, an `INSERT ... ON CONFLICT DO NOTHING` of one row)
//! ran 7,400-8,200 writes a second as `BEGIN; INSERT` then `COMMIT;
//! UNLISTEN *; CLOSE ALL`, and 24,000-35,500 and 28,000-42,600 writes a
//! second with four and eight writes to a message in the shape below. The
//! queue, the spread over the pool and the paces are the reads' (`together`).
//!
//! - **Each write a transaction of its own**: `BEGIN; EXECUTE ...; COMMIT;`
//!   for each, then `DISCARD TEMP`, as after a write alone (a review found
//!   the next write of a message seeing a temporary table the one before
//!   made), then the tidy-up. Not one
//!   transaction for all: what a write leaves in its transaction (a
//!   `set_config(..., true)` that a row-level policy reads) would reach the
//!   writes after it, and no savepoint undoes it while keeping the write.
//!   Locks are held for the write's own transaction, as alone.
//! - **What an answer means.** PostgreSQL runs the message in order and
//!   skips the rest at the first error. A write is answered once its
//!   `COMMIT` (and, with replicas, the position after it) is: committed.
//!   A write whose statement or `COMMIT` failed did not commit, and
//!   answers its error, as alone; the writes after it did not run, and run
//!   alone. The one change: `COMMIT` travels in the message, so a
//!   connection lost during it leaves every write not answered yet whose
//!   `COMMIT` was not answered `outcome_unknown` (alone, a write knows
//!   whether it sent its `COMMIT`). A read-only server (a standby, a
//!   demoted primary) answers `unavailable`, as alone. A write with an
//!   idempotency key goes the long way, always.
//! - **Only writes with time to spare.** A write goes together only with at
//!   least [`STOP_GRACE`] plus twice the message's most pace left, and the
//!   message is cancelled when it outlives its writes' paces (as reads'
//!   are): so it answers before any of its writes' deadlines. A write
//!   whose deadline passed while its `COMMIT` might run could only answer
//!   `outcome_unknown`.
//! - **A cancel stops one write.** The overrun's cancel lands on whichever
//!   statement runs: that write did not commit and runs again alone; the
//!   ones before it committed and have their answers; the ones after it
//!   run alone. An error of `COMMIT` means it did not commit, as alone.
//!   A cancel that stops nothing within a grace closes the connection, and
//!   the writes not answered are `outcome_unknown`.
//! - **Only single statements**, not batches (`execute_many`, a batch's
//!   statements), nor writes whose rows are read (`RETURNING`): their
//!   answers would have to be checked before their `COMMIT`.

use std::time::Duration;

use tokio::sync::oneshot;
use tokio::time::Instant;
use tokio_postgres::SimpleQueryMessage as M;
use tokio_postgres::error::SqlState;

use super::fast::{Failed, WriteInOne, answer};
use super::lease::Lease;
use super::together::{Answer, Kind, heard, its_own, send_cancel};
use super::{
    Done, Node, PgDatabase, Prepared, STOP_GRACE, WAL_INSERT_POSITION, Who, found_prepared,
    not_the_primary, primary_token, statements_in, unknown_position,
};
use crate::error::{Error, Result};
use crate::sync::lock;
use crate::value::ExecResult;

/// One write of a message.
struct Member {
    sql: String,
    /// How long it last took alone.
    pace: Duration,
    /// `EXECUTE ...; `
    execute: String,
    timeout: Duration,
}

impl PgDatabase {
    /// Writes of the clients' SQL answered from a message shared with
    /// other writes of their caller (the module's design note).
    pub fn writes_together(&self) -> u64 {
        self.inner
            .writes_together
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// The least time a write must have left to go with others: the grace
    /// of a cancel, and twice the longest a message may run before it.
    fn least_for_together(&self) -> Duration {
        let config = &self.inner.config;
        let most = u32::try_from(config.writes_per_message).unwrap_or(u32::MAX);
        STOP_GRACE + config.reads_together_below.saturating_mul(4 * most + 2)
    }

    /// Whether a write with `deadline` may go with others (its pace
    /// aside).
    pub(super) fn may_write_together(&self, deadline: Instant) -> bool {
        deadline.saturating_duration_since(Instant::now()) >= self.least_for_together()
    }

    /// Runs `one`, the write of `p` that got `conn`, with writes of
    /// `caller` still queued whose statements `conn` prepared, in one
    /// message: its outcome, or `None` when it must run on its own after
    /// all; an error giving `conn` and `one` back when none was taken
    /// along.
    pub(super) async fn write_together(
        &self,
        conn: Lease,
        p: &Prepared,
        one: WriteInOne,
        caller: u64,
        (deadline, timeout): (Instant, Duration),
    ) -> std::result::Result<Option<Result<Done>>, (Lease, WriteInOne)> {
        let config = &self.inner.config;
        let below = config.reads_together_below;
        let least = self.least_for_together();
        let pace = lock(&self.inner.paces).quick(caller, &p.sql, below);
        let (Some(pace), true) = (pace, self.may_write_together(deadline)) else {
            return Err((conn, one));
        };
        let taken = self.take_mates(
            &conn,
            (caller, Kind::Write),
            config.writes_per_message,
            least,
        );
        let mut members = Vec::with_capacity(taken.len() + 1);
        let mut answers = Vec::with_capacity(taken.len() + 1);
        for (w, pace) in taken {
            let mate = Prepared {
                sql: w.sql,
                values: w.values,
            };
            match self.write_message(&conn, std::slice::from_ref(&mate)) {
                Some(message) => {
                    members.push(Member {
                        sql: mate.sql,
                        pace,
                        execute: message.statements,
                        timeout: w.timeout,
                    });
                    answers.push(w.answer);
                }
                None => {
                    let _ = w.answer.send(Answer::Alone);
                }
            }
        }
        if members.is_empty() {
            return Err((conn, one));
        }
        let (answer, answered) = oneshot::channel();
        members.insert(
            0,
            Member {
                sql: p.sql.clone(),
                pace,
                execute: one.statements,
                timeout,
            },
        );
        answers.insert(0, answer);
        let track = self.inner.tracks_writes(Who::Client);
        tokio::spawn(
            self.clone()
                .run_writes(conn, members, answers, caller, track),
        );
        let answered = tokio::time::timeout_at(deadline, answered).await;
        Ok(heard(answered, Kind::Write, deadline, timeout).wrote())
    }

    /// One message of `members`, each `BEGIN; EXECUTE ...; COMMIT;` and,
    /// when `track`, the position after it; then the tidy-up. Each write is
    /// answered through its sender in `answers` once its last statement
    /// is; the message is cancelled when it outlives what its writes took
    /// alone (the module's design note).
    async fn run_writes(
        self,
        conn: Lease,
        members: Vec<Member>,
        answers: Vec<oneshot::Sender<Answer>>,
        caller: u64,
        track: bool,
    ) {
        let started = Instant::now();
        let n = members.len();
        let tidy = self.inner.tidy;
        // Temporary objects a write made go with it, as alone (a review
        // found the next write of the message seeing them). Every tidy-up
        // has the `DISCARD TEMP`.
        debug_assert!(tidy.contains("DISCARD TEMP"));
        let stride = 4 + usize::from(track);
        let mut sql = String::with_capacity(
            members
                .iter()
                .map(|m| m.execute.len() + 32 + WAL_INSERT_POSITION.len())
                .sum::<usize>()
                + tidy.len(),
        );
        for m in &members {
            sql.push_str("BEGIN; ");
            sql.push_str(&m.execute);
            sql.push_str("COMMIT; ");
            if track {
                sql.push_str(WAL_INSERT_POSITION);
                sql.push_str("; ");
            }
            sql.push_str("DISCARD TEMP; ");
        }
        sql.push_str(tidy);
        let statements = stride * n + statements_in(tidy);
        // The write statement `i` belongs to, and which of its statements
        // it is: 0 `BEGIN`, 1 the `EXECUTE`, 2 `COMMIT`, then the position
        // (with replicas) and `DISCARD TEMP`.
        let write_at = |i: usize| (i < stride * n).then_some((i / stride, i % stride));
        let mut answers: Vec<Option<oneshot::Sender<Answer>>> =
            answers.into_iter().map(Some).collect();
        let mut changes = vec![0; n];
        // Whose `COMMIT` was answered: committed, whatever comes after.
        let mut committed = vec![false; n];
        let mut positions: Vec<Vec<M>> = members.iter().map(|_| Vec::new()).collect();
        // The first write not answered yet.
        let mut ran = 0;
        if self.inner.faults.take_lose_before_commit() {
            self.lose(&conn).await;
        }
        // A statement prepared with SQL found in the session by the tidy-up.
        let mut clean = true;
        let reading = answer(&conn, &sql, members[0].timeout, |i, m| {
            let Some((k, step)) = write_at(i) else {
                if found_prepared(i, statements, &m) {
                    clean = false;
                }
                return Ok(());
            };
            match (step, m) {
                (1, M::CommandComplete(c)) => changes[k] = c,
                (2, M::CommandComplete(_)) => committed[k] = true,
                (3, m @ M::Row(_)) if track => positions[k].push(m),
                (step, M::CommandComplete(_)) if step + 1 == stride => {
                    let token = track.then(|| {
                        self.inner
                            .committed_at(primary_token(&positions[k]))
                            .unwrap_or_else(unknown_position)
                    });
                    let done = Done {
                        result: ExecResult {
                            changes: changes[k],
                            last_insert_rowid: 0,
                            returning: None,
                        },
                        token,
                    };
                    // Counted before it is answered: a caller that has its
                    // answer sees it counted.
                    self.wrote_together();
                    if let Some(sender) = answers[k].take() {
                        let _ = sender.send(Answer::Wrote(Ok(done)));
                    }
                    ran = k + 1;
                }
                _ => {}
            }
            Ok(())
        });
        let below = self.inner.config.reads_together_below;
        let expected = 2 * members.iter().map(|m| m.pace).sum::<Duration>() + below;
        let mut overran = false;
        let outcome = {
            let mut reading = std::pin::pin!(reading);
            let overrun = tokio::time::sleep_until(started + expected);
            let mut overrun = std::pin::pin!(overrun);
            // A cancel that stops nothing: the connection is closed.
            let stuck = tokio::time::sleep_until(started + expected + STOP_GRACE);
            let mut stuck = std::pin::pin!(stuck);
            loop {
                tokio::select! {
                    biased;
                    answered = &mut reading => break Some(answered),
                    () = &mut stuck, if overran => break None,
                    () = &mut overrun, if !overran => {
                        overran = true;
                        stuck.as_mut().reset(Instant::now() + STOP_GRACE);
                        send_cancel(&conn);
                    }
                }
            }
        };
        if overran {
            // Which write was slow is not sure: each is measured alone
            // again.
            let mut paces = lock(&self.inner.paces);
            for m in &members {
                paces.forget(caller, &m.sql);
            }
        }
        let Some(answered) = outcome else {
            self.stop(Node::Primary, Who::Client, conn);
            let reason = "its message of writes did not stop at a cancel";
            tell_unknown(answers, &committed, &changes, track, reason);
            return;
        };
        let failed = match answered.failed {
            None if answered.done == statements => {
                // A cancel sent may yet reach the connection's next
                // request: it is closed.
                if !clean {
                    self.prepared_with_sql(Node::Primary, Who::Client, conn);
                } else if overran {
                    self.discard(Node::Primary, Who::Client, conn);
                } else {
                    self.keep(Node::Primary, Who::Client, conn, Some(caller));
                }
                return;
            }
            Some(failed) if !failed.lost => failed,
            // Never sent, the connection closed: each runs alone.
            Some(failed) if !failed.sent => {
                self.discard(Node::Primary, Who::Client, conn);
                for sender in answers.into_iter().flatten() {
                    let _ = sender.send(Answer::Alone);
                }
                return;
            }
            lost => {
                self.discard(Node::Primary, Who::Client, conn);
                let reason = lost.map_or_else(
                    || format!("{} statements of {statements} answered", answered.done),
                    |f| f.error.to_string(),
                );
                let reason =
                    format!("the connection failed during its message of writes: {reason}");
                tell_unknown(answers, &committed, &changes, track, &reason);
                return;
            }
        };
        self.discard(Node::Primary, Who::Client, conn);
        let Failed {
            error, at, code, ..
        } = failed;
        let mut error = Some(error);
        for (k, (member, sender)) in members.iter().zip(answers).enumerate().skip(ran) {
            let Some(sender) = sender else { continue };
            let answer = match write_at(at) {
                Some((j, step)) if j == k => match error.take() {
                    // Its COMMIT answered; what came after it failed:
                    // committed, at a position not known.
                    Some(_) if step > 2 => Answer::Wrote(Ok(committed_unknown(changes[k], track))),
                    // Cancelled for outliving its paces: it did not
                    // commit, and runs again alone.
                    Some(_) if overran && code == Some(SqlState::QUERY_CANCELED) => {
                        self.paced(caller, &member.sql, started.elapsed().max(2 * below));
                        Answer::Alone
                    }
                    // A read-only server: nothing was written, as alone.
                    Some(Error::ReadOnly { message }) => {
                        Answer::Wrote(Err(not_the_primary(&message)))
                    }
                    // Its own error: it did not commit, as alone.
                    Some(e) => Answer::Wrote(Err(its_own(e, member.timeout))),
                    None => Answer::Alone,
                },
                // Past it (the tidy-up): every write was answered.
                _ => Answer::Alone,
            };
            let _ = sender.send(answer);
        }
    }

    /// Counts a write answered from a shared message.
    fn wrote_together(&self) {
        use std::sync::atomic::Ordering::Relaxed;
        self.inner.one_message_writes.fetch_add(1, Relaxed);
        self.inner.writes_together.fetch_add(1, Relaxed);
    }
}

/// Tells the writes not answered yet what is known: committed for those
/// whose `COMMIT` was answered (at a position not known), their outcome
/// unknown for the others.
fn tell_unknown(
    answers: Vec<Option<oneshot::Sender<Answer>>>,
    committed: &[bool],
    changes: &[u64],
    track: bool,
    reason: &str,
) {
    for (k, sender) in answers.into_iter().enumerate() {
        let Some(sender) = sender else { continue };
        let answer = if committed[k] {
            Ok(committed_unknown(changes[k], track))
        } else {
            Err(Error::OutcomeUnknown {
                what: "the write".into(),
                reason: reason.to_owned(),
            })
        };
        let _ = sender.send(Answer::Wrote(answer));
    }
}

/// A write that committed, its position (with replicas) not known.
fn committed_unknown(changes: u64, track: bool) -> Done {
    Done {
        result: ExecResult {
            changes,
            last_insert_rowid: 0,
            returning: None,
        },
        token: track.then(unknown_position),
    }
}
