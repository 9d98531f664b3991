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
//! - **Only reads that were quick alone.** PostgreSQL sends the answers
//!   to a message of several statements at its end (or when 8 KiB of them
//!   are waiting; a notice would send them sooner, but one after each of
//!   eight reads of a message took pgbench from 117,000 reads a second to
//!   51,000, measured), so the reads of
//!   a message wait for each other: a quick read that went with a slow
//!   one waited for it (a review found it). So reads of a statement whose
//!   caller's last read of it alone took longer than
//!   [`PgConfig::reads_together_below`](super::PgConfig::reads_together_below)
//!   (20 ms) go alone, and a message that outlives twice what its reads
//!   took alone, plus that, is cancelled: the reads before the one
//!   cancelled have their answers (an error sends them), that one runs
//!   again alone, the ones after it run again on their own, and each read
//!   of the message goes alone until measured again (the cancel stops
//!   whatever runs when it arrives: which read was slow is not sure). A
//!   cancel sent may reach the connection's next request: that connection
//!   is closed, never kept; one that stops nothing within a grace closes
//!   it too. The paces are kept by caller (another key's reads of the same
//!   text tell nothing of this one's, and must not steer them) and by a
//!   keyed hash of the text, a bounded number.
//! - **Each read keeps its own answer.** A read is answered when its
//!   `ROLLBACK TO` (with replicas, the position after it, which every
//!   primary read answers) is. PostgreSQL skips the rest of the message at
//!   the first error: the failed read gets its error (or goes the long
//!   way, as a lone read with `max_rows` does, `fast`), and those after it
//!   run again on their own. An error found here (too many bytes, other
//!   columns) is its read's alone: the message goes on (a review found a
//!   read too large failing the reads after it).
//! - **Each read keeps its deadline, and its caller's cancel.** The message
//!   runs in a task of its own. The task stops the message (cancels it,
//!   closes the connection) at the deadline of the first read not
//!   answered yet, or when its caller stops waiting; the reads after it
//!   run again on their own. Without that, a read whose caller hung up
//!   would hold its connection, and the reads behind it, until the latest
//!   deadline of the message (a review found it). A read after the first
//!   whose caller gives up goes on in the message, which its cancel bounds.

use std::collections::{HashMap, VecDeque};
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, PoisonError};
use std::task::Poll;
use std::time::Duration;

use deadpool_postgres::Object;
use tokio::sync::{Notify, oneshot};
use tokio::time::Instant;
use tokio_postgres::NoTls;
use tokio_postgres::SimpleQueryMessage as M;
use tokio_postgres::Statement as PgStatement;
use tokio_postgres::error::SqlState;

use super::fast::{Failed, answer, read_text_row, same_columns};
use super::lease::Lease;
use super::{
    Done, MOST_KNOWN_SQL, Node, PgDatabase, Prepared, STOP_GRACE, Token, WAL_INSERT_POSITION, Who,
    found_prepared, names, primary_token, statements_in, value_size,
};
use crate::error::{Error, Result, TimeoutStage};
use crate::sync::lock;
use crate::value::{Rows, Value};

/// The most bytes of SQL and values the reads taken along may add to a
/// message.
const MOST_TAKEN_BYTES: usize = 1 << 20;

/// The most statements whose pace is kept, of every caller.
const MOST_PACES: usize = 4096;

/// What a queue holds: a message carries reads or writes, never both.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(super) enum Kind {
    Read,
    Write,
}

/// The requests waiting for a connection, by caller and kind, in order.
pub(super) type Queues = HashMap<(u64, Kind), VecDeque<Waiting>>;

/// How long a read of each statement last took alone, by caller and a
/// keyed hash of the statement's text (a statement's text is no key to
/// keep: it may be 64 KiB).
#[derive(Default)]
pub(super) struct Paces {
    last: HashMap<(u64, u64), Duration>,
    hasher: std::hash::RandomState,
}

impl Paces {
    fn key(&self, caller: u64, sql: &str) -> (u64, u64) {
        (caller, self.hasher.hash_one(sql))
    }

    /// How long `caller`'s last read of `sql` alone took, when that is
    /// `below` or less: quick enough to go with others.
    pub(super) fn quick(&self, caller: u64, sql: &str, below: Duration) -> Option<Duration> {
        let pace = *self.last.get(&self.key(caller, sql))?;
        (pace <= below).then_some(pace)
    }

    /// Notes `took` for `caller`'s `sql`. A statement too long to be
    /// prepared for one-message reads never goes together, and is not
    /// noted.
    fn set(&mut self, caller: u64, sql: &str, took: Duration) {
        if sql.len() > MOST_KNOWN_SQL {
            return;
        }
        let key = self.key(caller, sql);
        if !self.last.contains_key(&key) && self.last.len() >= MOST_PACES {
            // One goes, not all: every caller's would be measured again.
            let any = self.last.keys().next().copied();
            any.map(|k| self.last.remove(&k));
        }
        self.last.insert(key, took);
    }

    /// Forgets `caller`'s pace of `sql`: its next read goes alone, and is
    /// measured.
    pub(super) fn forget(&mut self, caller: u64, sql: &str) {
        let key = self.key(caller, sql);
        self.last.remove(&key);
    }
}

/// A request waiting for a connection, which another of its caller and
/// kind may take with it.
pub(super) struct Waiting {
    id: u64,
    pub(super) sql: String,
    pub(super) values: Vec<Value>,
    max_rows: usize,
    pub(super) deadline: Instant,
    pub(super) timeout: Duration,
    /// Told when another request took this one (it stops waiting for a
    /// connection).
    taken: Option<oneshot::Sender<()>>,
    pub(super) answer: oneshot::Sender<Answer>,
}

/// What a request that went in another's message gets.
pub(super) enum Answer {
    Ran(Result<(Rows, Option<Token>)>),
    Wrote(Result<Done>),
    /// It did not run, or (a read) its answer cannot be given (see
    /// `run_together`): it runs on its own.
    Alone,
}

impl Answer {
    /// A read's answer: its rows, or `None` to run alone.
    pub(super) fn read(self) -> Option<Result<(Rows, Option<Token>)>> {
        match self {
            Answer::Ran(r) => Some(r),
            Answer::Alone => None,
            Answer::Wrote(_) => Some(Err(Error::Internal {
                message: "a read was answered as a write".into(),
            })),
        }
    }

    /// A write's answer: its outcome, or `None` to run alone.
    pub(super) fn wrote(self) -> Option<Result<Done>> {
        match self {
            Answer::Wrote(r) => Some(r),
            Answer::Alone => None,
            Answer::Ran(_) => Some(Err(Error::Internal {
                message: "a write was answered as a read".into(),
            })),
        }
    }
}

/// A request's turn: to lead a message on the connection it got, or what
/// another's message answered.
pub(super) enum Turn {
    Lead(Lease),
    Answered(Answer),
}

/// One read of a message.
struct Member {
    sql: String,
    /// How long it last took alone.
    pace: Duration,
    stmt: PgStatement,
    execute: String,
    max_rows: usize,
    deadline: Instant,
    timeout: Duration,
}

/// A request's place in its caller's queue, given up when dropped.
struct Queued<'a> {
    db: &'a PgDatabase,
    queue: (u64, Kind),
    id: u64,
}

impl Queued<'_> {
    /// Takes the request out of the queue: whether it was still there (no
    /// other request took it).
    fn withdraw(&self) -> bool {
        let mut queues = lock(&self.db.inner.waiting);
        let Some(queue) = queues.get_mut(&self.queue) else {
            return false;
        };
        let found = queue.iter().position(|w| w.id == self.id);
        if let Some(i) = found {
            queue.remove(i);
        }
        if queue.is_empty() {
            queues.remove(&self.queue);
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

    /// Notes that `caller`'s read of `sql` took `took` alone.
    pub(super) fn paced(&self, caller: u64, sql: &str, took: Duration) {
        lock(&self.inner.paces).set(caller, sql, took);
    }

    /// Counts a read answered from a shared message.
    fn ran_together(&self) {
        self.inner.one_message_reads.fetch_add(1, Ordering::Relaxed);
        self.inner.reads_together.fetch_add(1, Ordering::Relaxed);
    }

    /// Waits for a connection to the primary for `caller`'s request of
    /// `p`, queued meanwhile for another request of `caller` and `kind` to
    /// take with it.
    pub(super) async fn lease_or_join(
        &self,
        p: &Prepared,
        (kind, max_rows): (Kind, usize),
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
            .entry((caller, kind))
            .or_default()
            .push_back(Waiting {
                id,
                sql: p.sql.clone(),
                values: p.values.clone(),
                max_rows,
                deadline,
                timeout,
                taken: Some(taken),
                answer,
            });
        let queued = Queued {
            db: self,
            queue: (caller, kind),
            id,
        };
        // The pool's connection alone is raced, not its reset: a read
        // taken along half way through a reset would close the connection.
        let got = tokio::select! {
            biased;
            _ = &mut was_taken => None,
            got = self.connection(Who::Client, Some(caller), deadline, timeout) => Some(got),
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
        Ok(Turn::Answered(heard(answered, kind, deadline, timeout)))
    }

    /// Runs `one`, the read that got `conn`, with reads of `caller` still
    /// queued whose statements `conn` prepared, in one message: its
    /// answer, or `None` when it must run on its own after all; an error
    /// giving `conn` and `one` back when none was taken along.
    #[allow(clippy::too_many_arguments)]
    pub(super) async fn read_together(
        &self,
        conn: Lease,
        sql: &str,
        one: (PgStatement, String),
        caller: u64,
        track: bool,
        max_rows: usize,
        (deadline, timeout): (Instant, Duration),
    ) -> std::result::Result<Option<Result<(Rows, Option<Token>)>>, (Lease, (PgStatement, String))>
    {
        let below = self.inner.config.reads_together_below;
        let Some(pace) = lock(&self.inner.paces).quick(caller, sql, below) else {
            return Err((conn, one));
        };
        let (mates, answers) = self.read_mates(&conn, caller);
        if mates.is_empty() {
            return Err((conn, one));
        }
        let (answer, answered) = oneshot::channel();
        let mut members = vec![Member {
            sql: sql.to_owned(),
            pace,
            stmt: one.0,
            execute: one.1,
            max_rows,
            deadline,
            timeout,
        }];
        members.extend(mates);
        let mut senders = vec![answer];
        senders.extend(answers);
        tokio::spawn(
            self.clone()
                .run_together(conn, members, senders, caller, track),
        );
        let answered = tokio::time::timeout_at(deadline, answered).await;
        Ok(heard(answered, Kind::Read, deadline, timeout).read())
    }

    /// Reads of `caller` still queued whose statements `conn` prepared,
    /// oldest first, with their answers' senders, taken out of the queue
    /// and told so: about the queue's share of one connection of the pool
    /// (its length over the pool's size), at most
    /// [`PgConfig::reads_per_message`] less one and [`MOST_TAKEN_BYTES`]
    /// of SQL and values ([`PgDatabase::take_mates`]). One whose values
    /// cannot travel as literals is told to run alone.
    ///
    /// [`PgConfig::reads_per_message`]: super::PgConfig::reads_per_message
    fn read_mates(
        &self,
        conn: &Object,
        caller: u64,
    ) -> (Vec<Member>, Vec<oneshot::Sender<Answer>>) {
        let most = self.inner.config.reads_per_message;
        let taken = self.take_mates(conn, (caller, Kind::Read), most, Duration::ZERO);
        let mut members = Vec::with_capacity(taken.len());
        let mut answers = Vec::with_capacity(taken.len());
        for (w, pace) in taken {
            let p = Prepared {
                sql: w.sql,
                values: w.values,
            };
            match self.one_message(conn, &p) {
                Some((stmt, execute)) => {
                    members.push(Member {
                        sql: p.sql,
                        pace,
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

    /// Requests of `queue` (a caller's reads or writes) whose statements
    /// `conn` prepared and that were quick alone, with at least `least`
    /// left before their deadlines, oldest first, with their paces, taken
    /// out of the queue and told so: about the queue's share of one
    /// connection of the pool (its length over the pool's size), at most
    /// `per_message` less one and [`MOST_TAKEN_BYTES`] of SQL and values.
    pub(super) fn take_mates(
        &self,
        conn: &Object,
        (caller, kind): (u64, Kind),
        per_message: usize,
        least: Duration,
    ) -> Vec<(Waiting, Duration)> {
        let config = &self.inner.config;
        let mut taken = Vec::new();
        {
            let mut queues = lock(&self.inner.waiting);
            let Some(queue) = queues.get_mut(&(caller, kind)) else {
                return Vec::new();
            };
            // Spread over the pool: a queue shorter than the pool takes
            // one read along, not every read onto one connection.
            let most = queue
                .len()
                .div_ceil(config.connections)
                .min(per_message.saturating_sub(1));
            let known = lock(&self.inner.known);
            let prepared = known.get(&Object::id(conn));
            let paces = lock(&self.inner.paces);
            let (mut i, mut bytes) = (0, 0);
            // The scan stops a few reads past what it may take: reads of
            // statements this connection did not prepare stay queued.
            let scan = 4 * per_message;
            while i < queue.len() && i < scan && taken.len() < most {
                let w = &queue[i];
                let size = w.sql.len() + w.values.iter().map(value_size).sum::<usize>();
                if w.answer.is_closed() {
                    // Its caller is gone.
                    queue.remove(i);
                } else if bytes + size <= MOST_TAKEN_BYTES
                    && w.deadline.saturating_duration_since(Instant::now()) >= least
                    && prepared.is_some_and(|k| matches!(k.get(&w.sql), Some(Some(_))))
                    && let Some(pace) = paces.quick(caller, &w.sql, config.reads_together_below)
                {
                    bytes += size;
                    taken.extend(queue.remove(i).map(|w| (w, pace)));
                } else {
                    i += 1;
                }
            }
            if queue.is_empty() {
                queues.remove(&(caller, kind));
            }
        }
        for (w, _) in &mut taken {
            w.taken.take().map(|taken| taken.send(()));
        }
        taken
    }
}

impl PgDatabase {
    /// One message of `members`: `BEGIN READ ONLY; SAVEPOINT m;`, each
    /// read's `EXECUTE` followed by `ROLLBACK TO SAVEPOINT m` (what a read
    /// leaves in the transaction, a `set_config(..., true)` or a lock,
    /// reaches no other) and, when `track`, the position after it;
    /// [`END_READ`]. Each read is answered through its sender in `answers`
    /// once its last statement is.
    ///
    /// The message is stopped (cancelled, its connection closed) at the
    /// deadline of the first read not answered yet or when its caller stops
    /// waiting, and cancelled when it outlives what its reads took alone
    /// (the module's design note).
    async fn run_together(
        self,
        conn: Lease,
        members: Vec<Member>,
        answers: Vec<oneshot::Sender<Answer>>,
        caller: u64,
        track: bool,
    ) {
        let started = Instant::now();
        let n = members.len();
        let last = members.iter().map(|m| m.deadline).max().unwrap_or(started);
        let span = Span {
            stride: 2 + usize::from(track),
            n,
        };
        let mut sql = String::with_capacity(
            members
                .iter()
                .map(|m| m.execute.len() + 32 + WAL_INSERT_POSITION.len())
                .sum::<usize>()
                + 128,
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
            if track {
                sql.push_str(WAL_INSERT_POSITION);
                sql.push_str("; ");
            }
        }
        sql.push_str(self.inner.end_read);
        // BEGIN, SAVEPOINT, the reads' statements, then END_READ's.
        let statements = span.execute(n) + statements_in(self.inner.end_read);
        let mut clean = true;
        let max_bytes = self.inner.config.max_result_bytes;
        let mut parts: Vec<Part> = members.iter().map(|_| Part::default()).collect();
        let answers = Mutex::new(answers.into_iter().map(Some).collect::<Vec<_>>());
        // The first read not answered yet, told to the watch below.
        let ran = AtomicUsize::new(0);
        let progress = Notify::new();
        let reading = answer(&conn, &sql, members[0].timeout, |i, m| {
            let Some((k, step)) = span.read_at(i) else {
                if found_prepared(i, statements, &m) {
                    clean = false;
                }
                return Ok(());
            };
            let (member, part) = (&members[k], &mut parts[k]);
            match (step, m) {
                (0, M::RowDescription(described)) => {
                    if let Err(e) = same_columns(&described, member.stmt.columns()) {
                        // Its later reads here go the long way, as they do
                        // once a read alone found it.
                        self.forget(&conn, &member.sql);
                        part.failed.get_or_insert(e);
                    }
                }
                (0, M::Row(_)) if part.failed.is_some() => {}
                (0, M::Row(_)) if part.rows.len() == member.max_rows => part.truncated = true,
                (0, M::Row(row)) => {
                    let columns = member.stmt.columns();
                    match read_text_row(&row, columns, &mut part.bytes, max_bytes) {
                        Ok(row) => part.rows.push(row),
                        // Its own error, which the reads after it do not
                        // share: the rest of its rows are passed over.
                        Err(e) => {
                            part.failed = Some(e);
                            part.rows = Vec::new();
                        }
                    }
                }
                (2, m @ M::Row(_)) => part.position.push(m),
                (step, M::CommandComplete(_)) if step + 1 == span.stride => {
                    let part = std::mem::take(part);
                    let ran_ok = match part.failed {
                        Some(e) => Err(e),
                        None => {
                            // Counted before it is answered: a caller that
                            // has its answer sees it counted.
                            self.ran_together();
                            let at = track.then(|| primary_token(&part.position)).flatten();
                            let rows = Rows {
                                columns: names(member.stmt.columns()),
                                rows: part.rows,
                                truncated: part.truncated,
                            };
                            Ok((rows, self.inner.committed_at(at)))
                        }
                    };
                    if let Some(sender) = lock(&answers)[k].take() {
                        let _ = sender.send(Answer::Ran(ran_ok));
                    }
                    ran.store(k + 1, Ordering::Relaxed);
                    progress.notify_one();
                }
                _ => {}
            }
            Ok(())
        });
        // The first read not answered yet: the message stops at its
        // deadline, or when its caller is gone.
        let watch = async {
            loop {
                let k = ran.load(Ordering::Relaxed);
                if k == n {
                    // Every read answered: the end is the message's own.
                    return std::future::pending().await;
                }
                let gone = std::future::poll_fn(|cx| match lock(&answers).get_mut(k) {
                    Some(Some(sender)) => sender.poll_closed(cx),
                    _ => Poll::Pending,
                });
                tokio::select! {
                    biased;
                    () = progress.notified() => continue,
                    () = gone => {}
                    () = tokio::time::sleep_until(members[k].deadline) => {}
                }
                if ran.load(Ordering::Relaxed) == k {
                    return;
                }
            }
        };
        // A message that outlives what its reads took alone is cancelled:
        // one of them is slow this time, and the reads after it, whose
        // answers PostgreSQL sends at the message's end, would wait for it.
        // The statement cancelled runs again alone.
        let below = self.inner.config.reads_together_below;
        let expected = 2 * members.iter().map(|m| m.pace).sum::<Duration>() + below;
        let mut overran = false;
        let outcome = {
            let overrun = tokio::time::sleep_until(started + expected);
            let mut reading = std::pin::pin!(tokio::time::timeout_at(last, reading));
            let mut watch = std::pin::pin!(watch);
            let mut overrun = std::pin::pin!(overrun);
            // A cancel that stops nothing (lost, or the statement does not
            // heed it): the connection is closed.
            let stuck = tokio::time::sleep_until(last);
            let mut stuck = std::pin::pin!(stuck);
            loop {
                // The message's own end first: a read answered at its deadline
                // keeps its answer.
                tokio::select! {
                    biased;
                    answered = &mut reading => break match answered {
                        Ok(answered) => Ended::Answered(answered),
                        Err(_) => Ended::Expired,
                    },
                    () = &mut watch => break Ended::Stopped,
                    () = &mut stuck, if overran => break Ended::Stuck,
                    () = &mut overrun, if !overran => {
                        overran = true;
                        stuck.as_mut().reset(Instant::now() + STOP_GRACE);
                        send_cancel(&conn);
                    }
                }
            }
        };
        if overran {
            // Which read was slow is not sure (the cancel stops whatever
            // runs when it arrives): each is measured alone again.
            let mut paces = lock(&self.inner.paces);
            for m in &members {
                paces.forget(caller, &m.sql);
            }
        }
        let stuck = matches!(outcome, Ended::Stuck);
        // Why the message ended early: a failure, or none when stopped.
        let mut why = match outcome {
            // Past every read's deadline: each has stopped waiting.
            Ended::Expired => {
                self.stop(Node::Primary, Who::Client, conn);
                return;
            }
            Ended::Stopped | Ended::Stuck => None,
            Ended::Answered(answered) => match answered.failed {
                Some(failed) => Some(failed),
                // A cancel sent may yet reach the connection's next request:
                // it is closed.
                None if answered.done == statements && overran => {
                    self.discard(Node::Primary, Who::Client, conn);
                    return;
                }
                None if answered.done == statements && !clean => {
                    self.prepared_with_sql(Node::Primary, Who::Client, conn);
                    return;
                }
                None if answered.done == statements => {
                    self.keep(Node::Primary, Who::Client, conn, Some(caller));
                    return;
                }
                None => Some(Failed {
                    error: Error::Internal {
                        message: format!(
                            "a one-message read was answered for {} statements of {statements}",
                            answered.done
                        ),
                    },
                    at: statements,
                    code: None,
                    lost: false,
                    sent: true,
                }),
            },
        };
        let stopped = why.is_none();
        // The reads before the first one not answered have their answers;
        // that one answers the end (its own statement failed or was
        // stopped, or, before it, `BEGIN` or `SAVEPOINT` did, as for a read
        // alone); the ones after it run on their own.
        let first = ran.load(Ordering::Relaxed);
        let answers = answers.into_inner().unwrap_or_else(PoisonError::into_inner);
        for (k, (member, sender)) in members.iter().zip(answers).enumerate().skip(first) {
            let Some(sender) = sender else { continue };
            let answer = if k > first {
                Answer::Alone
            } else {
                match why.take() {
                    // Slow, its cancel unheeded: it runs again alone.
                    None if stuck => {
                        self.paced(caller, &member.sql, started.elapsed());
                        Answer::Alone
                    }
                    // Its deadline passed, or its caller is gone.
                    None => Answer::Ran(Err(Error::Timeout {
                        after: member.timeout,
                        stage: TimeoutStage::Running,
                    })),
                    // Cancelled for taking longer than it did alone: it runs
                    // again alone, and does not go with others until it is
                    // quick again.
                    Some(failed)
                        if overran && failed.code.as_ref() == Some(&SqlState::QUERY_CANCELED) =>
                    {
                        self.paced(caller, &member.sql, started.elapsed().max(2 * below));
                        Answer::Alone
                    }
                    Some(failed) => {
                        // As a read alone (`fast`): a statement's own
                        // error on a read with `max_rows` goes the long
                        // way in its time left; a cancel does not run
                        // again.
                        let own = span.read_at(failed.at).is_some_and(|(j, _)| j == k);
                        let statement_failed = own
                            && !failed.lost
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
                            Answer::Ran(Err(its_own(failed.error, member.timeout)))
                        }
                    }
                }
            };
            let _ = sender.send(answer);
        }
        if stopped {
            self.stop(Node::Primary, Who::Client, conn);
        } else {
            self.discard(Node::Primary, Who::Client, conn);
        }
    }
}

/// The statements of a message's reads, `stride` to a read (its
/// `EXECUTE`, its `ROLLBACK TO` and, with replicas, the position), after
/// `BEGIN` and `SAVEPOINT`.
#[derive(Clone, Copy)]
struct Span {
    stride: usize,
    n: usize,
}

impl Span {
    /// The read statement `i` of the message belongs to, and which of its
    /// statements it is.
    fn read_at(self, i: usize) -> Option<(usize, usize)> {
        let j = i.checked_sub(2)?;
        (j < self.stride * self.n).then_some((j / self.stride, j % self.stride))
    }

    /// The index of read `k`'s `EXECUTE` (for `k == n`, the statement
    /// after the reads).
    fn execute(self, k: usize) -> usize {
        2 + self.stride * k
    }
}

/// `error` as the read whose timeout is `timeout` says it: the message's
/// answer was read with the first read's.
pub(super) fn its_own(error: Error, timeout: Duration) -> Error {
    match error {
        Error::Timeout { stage, .. } => Error::Timeout {
            after: timeout,
            stage,
        },
        e => e,
    }
}

/// How a message ended.
enum Ended {
    Answered(super::fast::Answered),
    /// Stopped while the first read not answered ran: its deadline, or
    /// its caller gone.
    Stopped,
    /// Past every read's deadline.
    Expired,
    /// Cancelled for outliving its reads' paces, and still running a grace
    /// later.
    Stuck,
}

/// Sends PostgreSQL's cancel request for what `conn` runs, off the
/// caller's time. The connection must not be kept after it: the cancel
/// may reach its next request.
pub(super) fn send_cancel(conn: &Object) {
    let token = conn.cancel_token();
    tokio::spawn(async move {
        let _ = tokio::time::timeout(STOP_GRACE, token.cancel_query(NoTls)).await;
    });
}

/// What a request of `kind` heard from the message it went in: its
/// answer, or `Alone` to run on its own. Past its deadline with no answer
/// (the message may have ended at that same deadline without it), a read
/// answers `timeout`, and so does a write told to run alone (it did not
/// run); a write taken along that heard nothing may have committed.
pub(super) fn heard(
    answered: std::result::Result<
        std::result::Result<Answer, oneshot::error::RecvError>,
        tokio::time::error::Elapsed,
    >,
    kind: Kind,
    deadline: Instant,
    timeout: Duration,
) -> Answer {
    let timed_out = |stage| Error::Timeout {
        after: timeout,
        stage,
    };
    let past = Instant::now() >= deadline;
    match (answered, kind) {
        (Ok(Ok(a @ (Answer::Ran(_) | Answer::Wrote(_)))), _) => a,
        (Ok(Ok(Answer::Alone)), Kind::Read) if past => {
            Answer::Ran(Err(timed_out(TimeoutStage::Running)))
        }
        (Ok(Ok(Answer::Alone)), Kind::Write) if past => {
            Answer::Wrote(Err(timed_out(TimeoutStage::Queued)))
        }
        (Ok(Ok(Answer::Alone)), _) => Answer::Alone,
        (Ok(Err(_)), Kind::Read) if !past => Answer::Alone,
        (Ok(Err(_)) | Err(_), Kind::Read) => Answer::Ran(Err(timed_out(TimeoutStage::Running))),
        (Ok(Err(_)) | Err(_), Kind::Write) => Answer::Wrote(Err(Error::OutcomeUnknown {
            what: "the write".into(),
            reason: "it went in a message of writes that did not answer for it".into(),
        })),
    }
}

/// What a member's part of the answer holds so far.
#[derive(Default)]
struct Part {
    rows: Vec<Vec<Value>>,
    bytes: usize,
    truncated: bool,
    /// Its own error found here (too large, other columns).
    failed: Option<Error>,
    /// The position after it, with replicas.
    position: Vec<M>,
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);
    const BELOW: Duration = Duration::from_millis(20);

    #[test]
    fn a_pace_is_its_callers_own() {
        let mut paces = Paces::default();
        paces.set(1, "SELECT 1", MS);
        assert_eq!(paces.quick(1, "SELECT 1", BELOW), Some(MS));
        // Another caller's read of the same text, quick or slow, is its own.
        assert_eq!(paces.quick(2, "SELECT 1", BELOW), None);
        paces.set(2, "SELECT 1", 100 * MS);
        assert_eq!(paces.quick(1, "SELECT 1", BELOW), Some(MS));
        assert_eq!(paces.quick(2, "SELECT 1", BELOW), None);
        paces.forget(1, "SELECT 1");
        assert_eq!(paces.quick(1, "SELECT 1", BELOW), None);
    }

    #[test]
    fn paces_are_bounded_and_keep_no_long_text() {
        let mut paces = Paces::default();
        let long = format!("SELECT 1 /*{}*/", "x".repeat(MOST_KNOWN_SQL));
        paces.set(1, &long, MS);
        assert!(paces.last.is_empty(), "a statement too long to go together");
        paces.set(7, "SELECT 7", MS);
        for i in 0..(MOST_PACES as u64 + 1000) {
            paces.set(i + 100, "SELECT 1", MS);
            assert!(paces.last.len() <= MOST_PACES);
        }
        // One goes at a time, not all: the last noted stays.
        assert_eq!(paces.last.len(), MOST_PACES);
        let newest = MOST_PACES as u64 + 1099;
        assert_eq!(paces.quick(newest, "SELECT 1", BELOW), Some(MS));
    }
}
