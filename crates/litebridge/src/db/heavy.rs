//! The heavy lane: a few read-only connections, each owned by its own thread,
//! for long queries (reports, scans, exports). They have their own bounded
//! queue, so a burst of slow queries waits here instead of holding the read
//! lane's connections and starving point reads.
//!
//! A job whose caller has gone away (its future dropped) or whose deadline
//! passed in the queue is never started; one already running is interrupted
//! by the progress handler through the caller's cancellation flag.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use rusqlite::Connection;
use tokio::sync::oneshot;

use crate::db::exec::is_connection_failure;
use crate::db::guard::{self, Budget, Mode};
use crate::db::open::Opener;
use crate::db::readers::probe;
use crate::error::{Error, Result, TimeoutStage};
use crate::stats::Counters;
use crate::sync::lock;

type Job = Box<dyn FnOnce(&Connection) -> bool + Send>;

/// The heavy-lane threads and their queue. `None` on the queue stops one thread.
pub(crate) struct HeavyLane {
    tx: flume::Sender<Option<Job>>,
    drain: flume::Receiver<Option<Job>>,
    threads: Mutex<Vec<JoinHandle<()>>>,
    closed: AtomicBool,
    /// The database's `Database::interrupt` flag.
    halt: Arc<AtomicBool>,
    size: usize,
    capacity: usize,
    counters: Arc<Counters>,
}

impl HeavyLane {
    pub(crate) fn start(opener: &Opener, counters: Arc<Counters>) -> Result<HeavyLane> {
        let size = opener.config.heavy_readers;
        let capacity = opener.config.heavy_queue;
        let (tx, rx) = flume::bounded::<Option<Job>>(capacity);
        let mut threads = Vec::with_capacity(size);
        for i in 0..size {
            let conn = opener.open_reader()?;
            let rx = rx.clone();
            let opener = opener.clone();
            let counters = counters.clone();
            let handle = std::thread::Builder::new()
                .name(format!("litebridge-heavy-{i}"))
                .spawn(move || heavy_thread(conn, rx, opener, counters))
                .map_err(|e| {
                    Error::io("cannot start a heavy-lane thread", "litebridge-heavy", e)
                })?;
            threads.push(handle);
        }
        Ok(HeavyLane {
            tx,
            drain: rx,
            threads: Mutex::new(threads),
            closed: AtomicBool::new(false),
            halt: opener.halt.clone(),
            size,
            capacity,
            counters,
        })
    }

    pub(crate) fn size(&self) -> usize {
        self.size
    }

    pub(crate) fn queued(&self) -> usize {
        self.tx.len()
    }

    /// Runs `f` on a heavy-lane connection and waits for its result.
    pub(crate) async fn run<T, F>(&self, budget: Budget, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T> + Send + 'static,
    {
        if self.closed.load(Ordering::Acquire) {
            return Err(Error::closed());
        }
        if self.halt.load(Ordering::Relaxed) {
            return Err(guard::halted_error());
        }
        let (budget, _cancel_on_drop) = budget.cancellable();
        let (reply_tx, reply_rx) = oneshot::channel();
        let counters = self.counters.clone();
        let job: Job = Box::new(move |conn| {
            if reply_tx.is_closed() {
                return false;
            }
            if budget.expired() {
                let _ = reply_tx.send(Err(budget.timeout_error(TimeoutStage::Queued)));
                return false;
            }
            counters.heavy_active.fetch_add(1, Ordering::Relaxed);
            let scope = guard::enter(&budget, Mode::Reader);
            let result = f(conn).map_err(|e| scope.map_err(e));
            drop(scope);
            counters.heavy_active.fetch_sub(1, Ordering::Relaxed);
            let broken = matches!(&result, Err(e) if is_connection_failure(e));
            let _ = reply_tx.send(result);
            broken
        });
        match self.tx.try_send(Some(job)) {
            Ok(()) => {
                if self.closed.load(Ordering::Acquire) {
                    self.fail_queued();
                }
            }
            Err(flume::TrySendError::Full(_)) => {
                self.counters.overloaded.fetch_add(1, Ordering::Relaxed);
                return Err(Error::Overloaded {
                    queue: "heavy",
                    capacity: self.capacity,
                    retry_after: Duration::from_millis(100),
                });
            }
            Err(flume::TrySendError::Disconnected(_)) => return Err(Error::closed()),
        }
        reply_rx.await.map_err(|_| Error::Unavailable {
            what: "heavy lane",
            reason: "the connection thread stopped while running this query".into(),
        })?
    }

    /// Answers (by dropping them) jobs still queued after the threads stopped.
    fn fail_queued(&self) {
        while self.drain.try_recv().is_ok() {}
    }

    /// Stops the threads after the queries already queued.
    pub(crate) fn shutdown(&self) {
        if self.closed.swap(true, Ordering::AcqRel) {
            return;
        }
        for _ in 0..self.size {
            let _ = self.tx.send(None);
        }
        let threads = std::mem::take(&mut *lock(&self.threads));
        for t in threads {
            let _ = t.join();
        }
        self.fail_queued();
    }
}

fn heavy_thread(
    mut conn: Connection,
    rx: flume::Receiver<Option<Job>>,
    opener: Opener,
    counters: Arc<Counters>,
) {
    let interval = opener.config.health_check_interval;
    let mut checked = Instant::now();
    loop {
        match rx.recv_timeout(interval) {
            Ok(None) => return,
            Ok(Some(job)) => {
                if job(&conn) {
                    counters.failed_connections.fetch_add(1, Ordering::Relaxed);
                    if let Ok(fresh) = opener.open_reader() {
                        conn = fresh;
                    }
                }
            }
            Err(flume::RecvTimeoutError::Timeout) => {}
            Err(flume::RecvTimeoutError::Disconnected) => return,
        }
        if checked.elapsed() >= interval {
            checked = Instant::now();
            if probe(&conn).is_err() {
                counters.failed_connections.fetch_add(1, Ordering::Relaxed);
                if let Ok(fresh) = opener.open_reader() {
                    conn = fresh;
                }
            }
        }
    }
}
