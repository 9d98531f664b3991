//! The read lane: a pool of read-only connections used *on the caller's thread*.
//!
//! A point read costs a few microseconds in SQLite; handing it to another
//! thread and back costs ~50 us on this class of machine (an idle vCPU is
//! slow to wake). So a read takes a permit (waiting asynchronously, up to its deadline,
//! when every connection is busy), checks out a connection, runs the statement
//! right there, and puts the connection back. The price is that a read blocks
//! the calling task's thread while it runs: a read still running after a few
//! milliseconds is interrupted and run again inside `block_in_place`, which
//! hands that thread's other tasks to another thread first
//! (`guard::run_inline`, client SQL only), so long queries do not freeze the
//! service (a single step of SQLite is interrupted only when it returns; the
//! quadratic ones are made short, see `functions` and `open`). Long queries
//! still belong on the heavy lane, and every read carries a deadline
//! enforced inside SQLite.
//!
//! One connection more than `db.readers` is kept for the reads of the keys
//! and quotas (their refresh, revocations), taken only when the others are
//! all busy: a key sending long reads to every reader held revocation back
//! until they ended (review 246). Not for the stores' reads, which clients
//! ask for (review 248).
//!
//! Read-your-writes: WAL readers see every transaction committed before their
//! read transaction starts. A statement here starts and ends its own read
//! transaction (statements are reset when returned to the cache, and the
//! authorizer refuses `BEGIN`), so a read that starts after a write was
//! acknowledged sees it.

use std::collections::VecDeque;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use rusqlite::Connection;
use tokio::sync::Semaphore;

use crate::db::exec::is_connection_failure;
use crate::db::guard::{self, Budget, Mode};
use crate::db::inline;
use crate::db::keeper::Keeper;
use crate::db::open::Opener;
use crate::error::{Error, Result, TimeoutStage};
use crate::stats::Counters;
use crate::sync::lock;

struct Slot {
    conn: Connection,
    checked: Instant,
}

/// The read-lane connections.
pub(crate) struct ReaderPool {
    idle: Mutex<VecDeque<Slot>>,
    permits: Semaphore,
    /// The place kept for litebridge's own reads (its connection is one
    /// of `idle`'s).
    reserved: Semaphore,
    size: usize,
    opener: Opener,
    counters: Arc<Counters>,
    keeper: Arc<Keeper>,
}

impl ReaderPool {
    pub(crate) fn new(
        opener: Opener,
        counters: Arc<Counters>,
        keeper: Arc<Keeper>,
    ) -> Result<ReaderPool> {
        let size = opener.config.readers;
        let idle = (0..=size)
            .map(|_| {
                Ok(Slot {
                    conn: opener.open_reader()?,
                    checked: Instant::now(),
                })
            })
            .collect::<Result<VecDeque<_>>>()?;
        Ok(ReaderPool {
            idle: Mutex::new(idle),
            permits: Semaphore::new(size),
            reserved: Semaphore::new(1),
            size,
            opener,
            counters,
            keeper,
        })
    }

    fn idle(&self) -> MutexGuard<'_, VecDeque<Slot>> {
        // A panic while holding this lock cannot leave the queue inconsistent
        // (push and pop are single operations), so poisoning is ignored.
        lock(&self.idle)
    }

    pub(crate) fn size(&self) -> usize {
        self.size
    }

    pub(crate) fn available(&self) -> usize {
        self.permits.available_permits()
    }

    /// Runs `f` on a read-only connection, on this thread.
    ///
    /// A connection that fails as a connection (not because of the statement)
    /// is replaced and `f` is tried once more on the fresh one.
    ///
    /// With `inline`, `f` is client SQL that propagates every error: if it
    /// is still running after a few milliseconds it is interrupted and run
    /// again inside `block_in_place` (see `guard::run_inline`). Closures of
    /// the application are never run twice for that (one that swallowed the
    /// interrupt would return a wrong answer).
    pub(crate) async fn run<T>(
        &self,
        budget: &Budget,
        inline: bool,
        mut f: impl FnMut(&Connection) -> Result<T>,
    ) -> Result<T> {
        // Interrupted for good (`Database::interrupt`): a statement too
        // short to meet the progress handler would run all the same.
        if self.opener.halt.load(Ordering::Relaxed) {
            return Err(guard::halted_error());
        }
        let _permit = self.place(budget).await?;
        self.keeper.used();
        let mut slot = self.checkout();
        let mut result = match Self::attempt(&mut slot, budget, &mut f, inline) {
            Some(r) => r,
            // Past its deadline already: not run again.
            None if budget.expired() => Err(budget.timeout_error(TimeoutStage::Running)),
            // Still running after a few milliseconds on the caller's thread:
            // again, with that thread's other work handed elsewhere.
            None => tokio::task::block_in_place(|| {
                Self::attempt(&mut slot, budget, &mut f, false)
                    .unwrap_or_else(|| Err(Error::closed()))
            }),
        };
        if let Err(e) = &result
            && is_connection_failure(e)
            && !budget.expired()
        {
            self.counters
                .failed_connections
                .fetch_add(1, Ordering::Relaxed);
            match self.opener.open_reader() {
                Ok(conn) => {
                    slot.conn = conn;
                    result = Self::attempt(&mut slot, budget, &mut f, false)
                        .unwrap_or_else(|| Err(Error::closed()));
                }
                Err(open) => result = Err(open),
            }
        }
        self.idle().push_back(slot);
        result
    }

    /// A place on the lane, waited for up to the budget's deadline: one of
    /// `size`, or for the keys' reads the one kept for them too.
    async fn place(&self, budget: &Budget) -> Result<tokio::sync::SemaphorePermit<'_>> {
        if let Ok(p) = self.permits.try_acquire() {
            return Ok(p);
        }
        if budget.keys
            && let Ok(p) = self.reserved.try_acquire()
        {
            return Ok(p);
        }
        self.counters.read_waiters.fetch_add(1, Ordering::Relaxed);
        let wait = async {
            if budget.keys {
                tokio::select! {
                    p = self.permits.acquire() => p,
                    p = self.reserved.acquire() => p,
                }
            } else {
                self.permits.acquire().await
            }
        };
        let acquired = match budget.deadline {
            Some(d) => tokio::time::timeout_at(d.into(), wait)
                .await
                .map_err(|_| budget.timeout_error(TimeoutStage::Queued)),
            None => Ok(wait.await),
        };
        self.counters.read_waiters.fetch_sub(1, Ordering::Relaxed);
        acquired?.map_err(|_| Error::closed())
    }

    /// Runs `f` once; `None` when it ran `inline` past its budget there and
    /// was interrupted to be run again off this thread.
    fn attempt<T>(
        slot: &mut Slot,
        budget: &Budget,
        f: &mut impl FnMut(&Connection) -> Result<T>,
        inline: bool,
    ) -> Option<Result<T>> {
        let scope = guard::enter(budget, Mode::Reader);
        let _inline = inline.then(|| {
            guard::run_inline();
            inline::enter()
        });
        let r = f(&slot.conn).map_err(|e| scope.map_err(e));
        let moved = r.is_err() && scope.inline_exceeded();
        drop(scope);
        if !slot.conn.is_autocommit() {
            // Cannot happen through the authorizer; a connection left inside a
            // transaction would stop seeing new commits, so close it cleanly.
            let _ = slot.conn.execute_batch("ROLLBACK");
        }
        (!moved).then_some(r)
    }

    fn checkout(&self) -> Slot {
        let mut slot = self
            .idle()
            .pop_back()
            .expect("a permit guarantees an idle connection");
        if let Some(faults) = &self.opener.config.faults
            && faults.take_break_reader()
        {
            // Every statement on this connection now fails, as on a broken one.
            let _ = slot.conn.progress_handler(1, Some(|| true));
        }
        slot
    }

    /// Checks idle connections not checked within `interval`, replacing broken ones.
    /// Runs on the health thread; never waits for a busy connection.
    pub(crate) fn health_check(&self, interval: Duration) {
        for _ in 0..=self.size {
            let Ok(permit) = self
                .permits
                .try_acquire()
                .or_else(|_| self.reserved.try_acquire())
            else {
                return;
            };
            let Some(mut slot) = self.idle().pop_front() else {
                return;
            };
            if slot.checked.elapsed() >= interval / 2 {
                if let Err(e) = probe(&slot.conn) {
                    self.counters
                        .failed_connections
                        .fetch_add(1, Ordering::Relaxed);
                    match self.opener.open_reader() {
                        Ok(conn) => slot.conn = conn,
                        Err(open) => {
                            // Keep the old one; the next check tries again.
                            let _ = (e, open);
                        }
                    }
                }
                slot.checked = Instant::now();
            }
            self.idle().push_back(slot);
            drop(permit);
        }
    }

    pub(crate) fn close(&self) {
        self.permits.close();
        self.reserved.close();
        self.idle().clear();
    }
}

/// A cheap statement that fails on a broken connection.
pub(crate) fn probe(conn: &Connection) -> Result<()> {
    let _scope = guard::enter(&Budget::new(Some(Duration::from_secs(5))), Mode::Internal);
    conn.prepare_cached(&guard::internal_sql().probe)?
        .query_row([], |r| r.get::<_, i64>(0))?;
    Ok(())
}
