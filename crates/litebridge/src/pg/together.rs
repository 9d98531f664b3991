//! Reads of one caller sent together: with one-message reads on
//! (`fast`), a caller's reads that wait for a connection go in the message
//! of the next of its reads to get one, up to
//! [`PgConfig::reads_per_message`](super::PgConfig::reads_per_message).
//!
//! # Design
//!
//! A one-message read still costs PostgreSQL a wake-up, a `BEGIN`, a
//! `COMMIT`, a tidy-up and a flush, and those, not the statements, are most
//! of its work: pgbench on the loopback cluster (16 clients, a primary key
//! lookup) ran 25,000-30,000 one-read messages a second, and 57,000 and
//! 74,000 reads a second with four and eight reads to a message in the
//! shape below. The raw pipelined client's reads share their wake-ups the
//! same way.
//!
//! - **Only reads that would wait.** A read that finds the pool at its
//!   size and no connection idle puts itself in its caller's queue, then
//!   waits for a connection. The next read of that caller to get one takes
//!   with it queued reads whose statements that connection prepared; those
//!   stop waiting for a connection of their own. Reads share a message
//!   only when there are more of them than connections, so this adds no
//!   wait. (Queued while the pool could still grow, a read taken along
//!   would drop the connection it was making: the pool stayed at one
//!   connection under load, measured, and a test holds it.)
//! - **Spread over the pool.** A read takes along the queue's share of one
//!   connection (its length over the pool's size), not every read it may:
//!   a burst of slow reads would otherwise pile onto the first connection
//!   to come free while the others find the queue empty.
//! - **One caller's reads only, each in a transaction of its own in
//!   effect.** Reads of one message share a session, which a caller's
//!   requests share already (the reset between callers keeps callers
//!   apart), and a transaction, which they must not: a function that sets
//!   `set_config(..., true)` for the rows a policy shows would set it for
//!   the reads after it. So each `EXECUTE` is followed by `ROLLBACK TO
//!   SAVEPOINT m`, which undoes what it left (settings, locks) once its
//!   rows are sent; a review found it, a test holds it. In `READ
//!   COMMITTED` each statement takes its own snapshot.
//! - **Each read keeps its own answer.** PostgreSQL skips the rest of the
//!   message at the first error: the reads before it have their rows, the
//!   failed one its error (or goes the long way, as a lone read with
//!   `max_rows` does, `fast`), and those after it run again on their own.
//!   With replicas, every primary read answers the position after it,
//!   which a message that failed never read: its reads run again too.
//! - **Each read keeps its deadline, and its caller's cancel.** The message
//!   runs in a task of its own. While a read runs, the task stops the
//!   message (cancels it, closes the connection) at that read's deadline,
//!   or when its caller stops waiting; the reads after it run again on
//!   their own. Without that, a read whose caller hung up would hold its
//!   connection, and the reads behind it, until the latest deadline of the
//!   message (a review found it).

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use deadpool_postgres::Object;
use tokio::sync::{Notify, oneshot};
use tokio::time::Instant;
use tokio_postgres::SimpleQueryMessage as M;
use tokio_postgres::Statement as PgStatement;
use tokio_postgres::error::SqlState;

use super::fast::{Failed, answer, read_text_row, same_columns};
use super::lease::Lease;
use super::{
    END_READ, Node, PgDatabase, Prepared, Token, WAL_INSERT_POSITION, Who, names, primary_token,
    value_size,
};
use crate::error::{Error, Result, TimeoutStage};
use crate::sync::lock;
use crate::value::{Rows, Value};

/// The most bytes of SQL and values the reads taken along may add to a
/// message.
const MOST_TAKEN_BYTES: usize = 1 << 20;

/// The reads waiting for a connection, by caller, in order.
pub(super) type Queues = HashMap<u64, VecDeque<Waiting>>;

/// A read waiting for a connection, which another read of its caller may
/// take with it.
pub(super) struct Waiting {
    id: u64,
    sql: String,
    values: Vec<Value>,
    max_rows: usize,
    deadline: Instant,
    timeout: Duration,
    /// Told when another read took this one (it stops waiting for a
    /// connection).
    taken: oneshot::Sender<()>,
    answer: oneshot::Sender<Answer>,
}

/// What a read that went in another's message gets.
enum Answer {
    Ran(Result<(Rows, Option<Token>)>),
    /// It did not run, or its answer cannot be given (see `run_together`):
    /// it runs on its own.
    Alone,
}

/// A read's turn: to lead a message on the connection it got, answered by
/// another's message, or to run alone.
pub(super) enum Turn {
    Lead(Lease),
    Answered(Result<(Rows, Option<Token>)>),
    Alone,
}

/// One read of a message.
struct Member {
    stmt: PgStatement,
    execute: String,
    max_rows: usize,
    deadline: Instant,
    timeout: Duration,
}

/// A read's place in its caller's queue, given up when dropped.
struct Queued<'a> {
    db: &'a PgDatabase,
    caller: u64,
    id: u64,
}

impl Queued<'_> {
    /// Takes the read out of the queue: whether it was still there (no
    /// other read took it).
    fn withdraw(&self) -> bool {
        let mut queues = lock(&self.db.inner.waiting);
        let Some(queue) = queues.get_mut(&self.caller) else {
            return false;
        };
        let found = queue.iter().position(|w| w.id == self.id);
        if let Some(i) = found {
            queue.remove(i);
        }
        if queue.is_empty() {
            queues.remove(&self.caller);
        }
        found.is_some()
    }
}

impl Drop for Queued<'_> {
    fn drop(&mut self) {
        self.withdraw();
    }
}

impl PgDatabase {
    /// Reads of the clients' SQL answered in a message shared with other
    /// reads of their caller (the module's design note).
    pub fn reads_together(&self) -> u64 {
        self.inner.reads_together.load(Ordering::Relaxed)
    }

    /// Counts `n` reads answered from a shared message.
    fn ran_together(&self, n: usize) {
        self.inner
            .one_message_reads
            .fetch_add(n as u64, Ordering::Relaxed);
        self.inner
            .reads_together
            .fetch_add(n as u64, Ordering::Relaxed);
    }

    /// Waits for a connection to the primary for `caller`'s read of `p`,
    /// queued meanwhile for another read of `caller` to take with it.
    pub(super) async fn lease_or_join(
        &self,
        p: &Prepared,
        max_rows: usize,
        caller: u64,
        (deadline, timeout): (Instant, Duration),
    ) -> Result<Turn> {
        // Only a read that would wait for a connection is queued: one that
        // may be made (taken along, the read would drop it half made, and
        // the pool would never grow), or one idle, is simply taken.
        let pool = self.inner.client.status();
        if pool.size < pool.max_size || pool.available > 0 {
            let lease = self.lease(Node::Primary, Who::Client, Some(caller), deadline, timeout);
            return lease.await.map(Turn::Lead);
        }
        let id = self.inner.next_waiting.fetch_add(1, Ordering::Relaxed);
        let (taken, mut was_taken) = oneshot::channel();
        let (answer, answered) = oneshot::channel();
        lock(&self.inner.waiting)
            .entry(caller)
            .or_default()
            .push_back(Waiting {
                id,
                sql: p.sql.clone(),
                values: p.values.clone(),
                max_rows,
                deadline,
                timeout,
                taken,
                answer,
            });
        let queued = Queued {
            db: self,
            caller,
            id,
        };
        // The pool's connection alone is raced, not its reset: a read
        // taken along half way through a reset would close the connection.
        let got = tokio::select! {
            biased;
            _ = &mut was_taken => None,
            got = self.connection(Who::Client, Some(caller), deadline) => Some(got),
        };
        if let Some(got) = got {
            if queued.withdraw() {
                let conn = got?;
                let settled = self
                    .settle(
                        Node::Primary,
                        Who::Client,
                        Some(caller),
                        conn,
                        deadline,
                        timeout,
                    )
                    .await?;
                return match settled {
                    Some(conn) => Ok(Turn::Lead(conn)),
                    None => {
                        let lease =
                            self.lease(Node::Primary, Who::Client, Some(caller), deadline, timeout);
                        lease.await.map(Turn::Lead)
                    }
                };
            }
            // Taken as the connection came: it goes back untouched, its
            // last caller unchanged.
            if let Ok(conn) = got {
                conn.release();
            }
        }
        drop(queued);
        let answered = tokio::time::timeout_at(deadline, answered).await;
        Ok(heard(answered, deadline, timeout).map_or(Turn::Alone, Turn::Answered))
    }

    /// Runs `one`, the read that got `conn`, with reads of `caller` still
    /// queued whose statements `conn` prepared, in one message: its
    /// answer, or `None` when it must run on its own after all; an error
    /// giving `conn` and `one` back when none was taken along.
    #[allow(clippy::too_many_arguments)]
    pub(super) async fn read_together(
        &self,
        conn: Lease,
        one: (PgStatement, String),
        caller: u64,
        track: bool,
        max_rows: usize,
        (deadline, timeout): (Instant, Duration),
    ) -> std::result::Result<Option<Result<(Rows, Option<Token>)>>, (Lease, (PgStatement, String))>
    {
        let (mates, answers) = self.take_mates(&conn, caller);
        if mates.is_empty() {
            return Err((conn, one));
        }
        let (answer, answered) = oneshot::channel();
        let mut members = vec![Member {
            stmt: one.0,
            execute: one.1,
            max_rows,
            deadline,
            timeout,
        }];
        members.extend(mates);
        let mut senders = vec![Some(answer)];
        senders.extend(answers.into_iter().map(Some));
        tokio::spawn(
            self.clone()
                .run_together(conn, members, senders, caller, track),
        );
        let answered = tokio::time::timeout_at(deadline, answered).await;
        Ok(heard(answered, deadline, timeout))
    }

    /// Reads of `caller` still queued whose statements `conn` prepared,
    /// oldest first, with their answers' senders, taken out of the queue
    /// and told so: about the queue's share of one connection of the pool
    /// (its length over the pool's size), at most
    /// [`PgConfig::reads_per_message`] less one and [`MOST_TAKEN_BYTES`]
    /// of SQL and values. One whose values cannot travel as literals is
    /// told to run alone.
    ///
    /// [`PgConfig::reads_per_message`]: super::PgConfig::reads_per_message
    fn take_mates(
        &self,
        conn: &Object,
        caller: u64,
    ) -> (Vec<Member>, Vec<oneshot::Sender<Answer>>) {
        let config = &self.inner.config;
        let mut taken = Vec::new();
        {
            let mut queues = lock(&self.inner.waiting);
            let Some(queue) = queues.get_mut(&caller) else {
                return (Vec::new(), Vec::new());
            };
            // Spread over the pool: a queue shorter than the pool takes
            // one read along, not every read onto one connection.
            let most = queue
                .len()
                .div_ceil(config.connections)
                .min(config.reads_per_message.saturating_sub(1));
            let known = lock(&self.inner.known);
            let prepared = known.get(&Object::id(conn));
            let (mut i, mut bytes) = (0, 0);
            // The scan stops a few reads past what it may take: reads of
            // statements this connection did not prepare stay queued.
            let scan = 4 * config.reads_per_message;
            while i < queue.len() && i < scan && taken.len() < most {
                let w = &queue[i];
                let size = w.sql.len() + w.values.iter().map(value_size).sum::<usize>();
                if w.answer.is_closed() {
                    // Its caller is gone.
                    queue.remove(i);
                } else if bytes + size <= MOST_TAKEN_BYTES
                    && prepared.is_some_and(|k| matches!(k.get(&w.sql), Some(Some(_))))
                {
                    bytes += size;
                    taken.extend(queue.remove(i));
                } else {
                    i += 1;
                }
            }
            if queue.is_empty() {
                queues.remove(&caller);
            }
        }
        let mut members = Vec::with_capacity(taken.len());
        let mut answers = Vec::with_capacity(taken.len());
        for w in taken {
            let _ = w.taken.send(());
            let p = Prepared {
                sql: w.sql,
                values: w.values,
            };
            match self.one_message(conn, &p) {
                Some((stmt, execute)) => {
                    members.push(Member {
                        stmt,
                        execute,
                        max_rows: w.max_rows,
                        deadline: w.deadline,
                        timeout: w.timeout,
                    });
                    answers.push(w.answer);
                }
                None => {
                    let _ = w.answer.send(Answer::Alone);
                }
            }
        }
        (members, answers)
    }

    /// One message of `members`: `BEGIN READ ONLY; SAVEPOINT m;`, each
    /// read's `EXECUTE` followed by `ROLLBACK TO SAVEPOINT m` (what a read
    /// leaves in the transaction, a `set_config(..., true)` or a lock,
    /// reaches no other), the position when `track`, [`END_READ`]; each
    /// read answered through its sender in `answers`.
    ///
    /// While a read runs, the message is stopped (cancelled, its
    /// connection closed) at that read's deadline or when its caller stops
    /// waiting: the reads before it have their answers, the ones after it
    /// run on their own.
    async fn run_together(
        self,
        conn: Lease,
        members: Vec<Member>,
        mut answers: Vec<Option<oneshot::Sender<Answer>>>,
        caller: u64,
        track: bool,
    ) {
        let started = Instant::now();
        let n = members.len();
        let last = members.iter().map(|m| m.deadline).max().unwrap_or(started);
        let mut sql = String::with_capacity(
            members.iter().map(|m| m.execute.len() + 32).sum::<usize>() + 128,
        );
        sql.push_str(if self.inner.faults.take_fail_read_begin() {
            "SELECT 1/0; "
        } else {
            "BEGIN READ ONLY; "
        });
        sql.push_str("SAVEPOINT m; ");
        for m in &members {
            sql.push_str(&m.execute);
            sql.push_str("; ROLLBACK TO SAVEPOINT m; ");
        }
        if track {
            sql.push_str(WAL_INSERT_POSITION);
            sql.push_str("; ");
        }
        sql.push_str(END_READ);
        // BEGIN, SAVEPOINT, the reads and their ROLLBACK TOs, the position,
        // COMMIT, UNLISTEN, CLOSE ALL. Read `k`'s `EXECUTE` is statement
        // `2 + 2k`.
        let statements = 2 + 2 * n + usize::from(track) + 3;
        let read_at =
            |i: usize| (i >= 2 && i < 2 + 2 * n && i.is_multiple_of(2)).then(|| (i - 2) / 2);
        let max_bytes = self.inner.config.max_result_bytes;
        let mut parts: Vec<Part> = members.iter().map(|_| Part::default()).collect();
        let mut position = Vec::new();
        // The reads whose `EXECUTE` has answered, told to the watch below.
        let ran = AtomicUsize::new(0);
        let progress = Notify::new();
        let reading = answer(&conn, &sql, members[0].timeout, |i, m| {
            match (read_at(i), m) {
                (Some(k), M::RowDescription(described)) => {
                    same_columns(&described, members[k].stmt.columns())?;
                }
                (Some(k), M::Row(row)) => {
                    let part = &mut parts[k];
                    if part.rows.len() == members[k].max_rows {
                        part.truncated = true;
                    } else {
                        part.rows.push(read_text_row(
                            &row,
                            members[k].stmt.columns(),
                            &mut part.bytes,
                            max_bytes,
                        )?);
                    }
                }
                (Some(k), M::CommandComplete(_)) => {
                    ran.store(k + 1, Ordering::Relaxed);
                    progress.notify_one();
                }
                (None, m @ M::Row(_)) if track && i == 2 + 2 * n => position.push(m),
                _ => {}
            }
            Ok(())
        });
        // The read running now: the message stops at its deadline, or
        // when its caller is gone.
        let watch = async {
            loop {
                let k = ran.load(Ordering::Relaxed);
                let Some(Some(sender)) = answers.get_mut(k) else {
                    // Every read answered: the end is the message's own.
                    return std::future::pending().await;
                };
                tokio::select! {
                    biased;
                    () = progress.notified() => continue,
                    () = sender.closed() => {}
                    () = tokio::time::sleep_until(members[k].deadline) => {}
                }
                if ran.load(Ordering::Relaxed) == k {
                    return k;
                }
            }
        };
        let outcome = tokio::select! {
            answered = tokio::time::timeout_at(last, reading) => match answered {
                Ok(answered) => Ended::Answered(answered),
                Err(_) => Ended::Expired,
            },
            k = watch => Ended::Stopped(k),
        };
        let rows = |stmt: &PgStatement, part: Part| Rows {
            columns: names(stmt.columns()),
            rows: part.rows,
            truncated: part.truncated,
        };
        let reads = members.into_iter().zip(parts).zip(answers);
        // Where the message ended early, and why.
        let (at, mut why) = match outcome {
            // Past every read's deadline: each has stopped waiting.
            Ended::Expired => {
                self.stop(Node::Primary, Who::Client, conn);
                return;
            }
            Ended::Stopped(k) => (2 + 2 * k, None),
            Ended::Answered(answered) => match answered.failed {
                Some(failed) => (failed.at, Some(failed)),
                None if answered.done == statements => {
                    let at = self.inner.committed_at(if track {
                        primary_token(&position)
                    } else {
                        None
                    });
                    for ((member, part), sender) in reads {
                        if let Some(sender) = sender {
                            let _ = sender.send(Answer::Ran(Ok((rows(&member.stmt, part), at))));
                        }
                    }
                    self.ran_together(n);
                    self.keep(Node::Primary, Who::Client, conn, Some(caller));
                    return;
                }
                None => (
                    statements,
                    Some(Failed {
                        error: Error::Internal {
                            message: format!(
                                "a one-message read was answered for {} statements of {statements}",
                                answered.done
                            ),
                        },
                        at: statements,
                        code: None,
                        lost: false,
                    }),
                ),
            },
        };
        let stopped = why.is_none();
        let mut count = 0;
        for (k, ((member, part), sender)) in reads.enumerate() {
            let execute = 2 + 2 * k;
            let answer = if at < 2 || at >= 2 + 2 * n {
                // `BEGIN` or `SAVEPOINT` failed, or the reads' end did (on
                // a primary that is not one any more, the position): the
                // first read answers it, as a read alone would, the others
                // run again.
                match why.take() {
                    Some(failed) if k == 0 => Answer::Ran(Err(failed.error)),
                    _ => Answer::Alone,
                }
            } else if execute + 1 < at {
                // It ran before the failure. Its position is not known
                // (the message did not get to it): with replicas, it runs
                // again rather than answer without one.
                if track {
                    Answer::Alone
                } else {
                    count += 1;
                    Answer::Ran(Ok((rows(&member.stmt, part), None)))
                }
            } else if execute <= at {
                match why.take() {
                    // Its deadline passed, or its caller is gone.
                    None => Answer::Ran(Err(Error::Timeout {
                        after: member.timeout,
                        stage: TimeoutStage::Running,
                    })),
                    Some(failed) => {
                        // As a read alone (`fast`): a statement's own
                        // error on a read with `max_rows` goes the long
                        // way in its time left; a cancel does not run
                        // again.
                        let statement_failed = !failed.lost
                            && failed
                                .code
                                .as_ref()
                                .is_some_and(|c| *c != SqlState::QUERY_CANCELED);
                        let left = member.deadline.saturating_duration_since(Instant::now());
                        if statement_failed
                            && member.max_rows != usize::MAX
                            && left > started.elapsed()
                        {
                            Answer::Alone
                        } else {
                            Answer::Ran(Err(failed.error))
                        }
                    }
                }
            } else {
                Answer::Alone
            };
            if let Some(sender) = sender {
                let _ = sender.send(answer);
            }
        }
        self.ran_together(count);
        if stopped {
            self.stop(Node::Primary, Who::Client, conn);
        } else {
            self.discard(Node::Primary, Who::Client, conn);
        }
    }
}

/// How a message ended.
enum Ended {
    Answered(super::fast::Answered),
    /// Stopped while read `k` ran: its deadline, or its caller gone.
    Stopped(usize),
    /// Past every read's deadline.
    Expired,
}

/// What a read heard from the message it went in: its answer; `None`, to
/// run on its own; or, past its deadline (the message may have ended at
/// that same deadline without it), `timeout`.
fn heard(
    answered: std::result::Result<
        std::result::Result<Answer, oneshot::error::RecvError>,
        tokio::time::error::Elapsed,
    >,
    deadline: Instant,
    timeout: Duration,
) -> Option<Result<(Rows, Option<Token>)>> {
    let timed_out = || {
        Some(Err(Error::Timeout {
            after: timeout,
            stage: TimeoutStage::Running,
        }))
    };
    match answered {
        Ok(Ok(Answer::Ran(r))) => Some(r),
        Ok(Ok(Answer::Alone) | Err(_)) if Instant::now() >= deadline => timed_out(),
        Ok(Ok(Answer::Alone) | Err(_)) => None,
        Err(_) => timed_out(),
    }
}

/// What a member's part of the answer holds so far.
#[derive(Default)]
struct Part {
    rows: Vec<Vec<Value>>,
    bytes: usize,
    truncated: bool,
}
