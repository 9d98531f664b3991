//! The writer's queue: bounded, many producers, one consumer that takes
//! everything at once.
//!
//! # Why not a channel
//!
//! A channel hands messages over one at a time: every receive takes the
//! channel's lock and copies the message out of the channel's ring into the
//! writer's batch, while producers on the other core contend for the same
//! lock. Group commit does not want messages one at a time; it wants *all
//! that is queued*. So the queue is a `Vec` behind a mutex, and the writer
//! swaps it for its own empty one: one lock per batch instead of one per
//! request, no copy between the queue and the batch, and both buffers keep
//! their capacity (producers never regrow from nothing). With flume the
//! receive side was ~5 % of the CPU of a pipelined insert load, plus lock
//! contention on the producers' side (measured, BENCHMARKS.md).
//!
//! # Waiting
//!
//! The writer spins briefly on an empty queue (waking a parked thread costs
//! ~50 us here, more than a batch; see `writer::SPIN`) and then parks on a
//! condition variable; a producer signals it only when it is parked, which
//! it knows under the same lock, so no wake-up is lost. Callers waiting for
//! room in a full queue wait on a [`Notify`] that the writer fires each time
//! it empties the queue. Checkpoint requests and the stop signal travel in
//! the same state, so the writer sees them between two batches.

use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tokio::sync::{Notify, oneshot};

use crate::db::group_commit::Request;
use crate::db::writer::{CheckpointMode, CheckpointReport};
use crate::error::Result;
use crate::sync::lock;

/// A checkpoint asked of the writer, with where to send its report.
pub(crate) type Asked = (CheckpointMode, oneshot::Sender<Result<CheckpointReport>>);

/// Why a request was not queued. The request is given back: it carries the
/// caller's reply channel, and boxing it to make this error small would cost
/// an allocation on every request (the error is the rare path).
pub(crate) enum Refused {
    /// The queue holds `capacity` requests.
    Full(Request),
    /// The writer was told to stop: nothing more is accepted (the request
    /// is dropped, which answers nobody: the caller is told directly).
    Stopped,
}

/// What [`WriteQueue::take`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Taken {
    /// Requests and/or checkpoint requests.
    Work,
    /// Nothing arrived within the wait.
    Idle,
    /// Stop: what was taken is the last of it.
    Stop,
}

struct State {
    jobs: Vec<Request>,
    asked: Vec<Asked>,
    stop: bool,
    /// The writer is waiting on `wake`.
    parked: bool,
}

pub(crate) struct WriteQueue {
    state: Mutex<State>,
    wake: Condvar,
    room: Notify,
    capacity: usize,
}

impl WriteQueue {
    pub(crate) fn new(capacity: usize) -> Self {
        WriteQueue {
            state: Mutex::new(State {
                jobs: Vec::with_capacity(capacity.min(4096)),
                asked: Vec::new(),
                stop: false,
                parked: false,
            }),
            wake: Condvar::new(),
            room: Notify::new(),
            capacity,
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding this lock leaves the state consistent (every
        // change is a single push or swap), so a poisoned lock is still usable.
        lock(&self.state)
    }

    pub(crate) fn capacity(&self) -> usize {
        self.capacity
    }

    pub(crate) fn len(&self) -> usize {
        self.lock().jobs.len()
    }

    /// Queues a request if there is room now.
    #[allow(clippy::result_large_err)] // see `Refused`
    pub(crate) fn push(&self, job: Request) -> std::result::Result<(), Refused> {
        let mut s = self.lock();
        if s.stop {
            return Err(Refused::Stopped);
        }
        if s.jobs.len() >= self.capacity {
            return Err(Refused::Full(job));
        }
        s.jobs.push(job);
        self.signal(s);
        Ok(())
    }

    /// Queues a request, waiting for room until `deadline` (if any). On
    /// timeout the request is given back as `Full`.
    #[allow(clippy::result_large_err)] // see `Refused`
    pub(crate) async fn push_waiting(
        &self,
        mut job: Request,
        deadline: Option<Instant>,
    ) -> std::result::Result<(), Refused> {
        loop {
            // Registered before looking, so an emptying that happens between
            // the look and the wait still wakes this caller.
            let room = self.room.notified();
            tokio::pin!(room);
            room.as_mut().enable();
            job = match self.push(job) {
                Ok(()) => return Ok(()),
                Err(Refused::Full(job)) => job,
                Err(Refused::Stopped) => return Err(Refused::Stopped),
            };
            match deadline {
                Some(d) => {
                    if tokio::time::timeout_at(d.into(), room).await.is_err() {
                        return Err(Refused::Full(job));
                    }
                }
                None => room.await,
            }
        }
    }

    /// Asks the writer for a checkpoint between two batches. Gives the
    /// request back when the writer was told to stop.
    pub(crate) fn ask(&self, asked: Asked) -> std::result::Result<(), Asked> {
        let mut s = self.lock();
        if s.stop {
            return Err(asked);
        }
        s.asked.push(asked);
        self.signal(s);
        Ok(())
    }

    /// Whether [`WriteQueue::stop`] was called.
    pub(crate) fn stopped(&self) -> bool {
        self.lock().stop
    }

    /// Tells the writer to commit what is queued and exit; nothing is
    /// accepted after this.
    pub(crate) fn stop(&self) {
        let mut s = self.lock();
        s.stop = true;
        self.signal(s);
        self.room.notify_waiters();
    }

    fn signal(&self, s: MutexGuard<'_, State>) {
        let parked = s.parked;
        drop(s);
        if parked {
            self.wake.notify_one();
        }
    }

    /// The writer's side: swaps everything queued into `jobs` (which must be
    /// empty) and moves checkpoint requests into `asked`. Polls for `spin`
    /// (yielding the core), then parks for up to `park`.
    pub(crate) fn take(
        &self,
        jobs: &mut Vec<Request>,
        asked: &mut Vec<Asked>,
        spin: Duration,
        park: Duration,
    ) -> Taken {
        debug_assert!(jobs.is_empty());
        let start = Instant::now();
        loop {
            let mut s = self.lock();
            if s.has_work() {
                return self.hand_over(s, jobs, asked);
            }
            if start.elapsed() >= spin {
                s.parked = true;
                let (mut s, _) = self
                    .wake
                    .wait_timeout_while(s, park, |s| !s.has_work())
                    .unwrap_or_else(|p| p.into_inner());
                s.parked = false;
                if s.has_work() {
                    return self.hand_over(s, jobs, asked);
                }
                return Taken::Idle;
            }
            drop(s);
            std::thread::yield_now();
        }
    }

    /// Adds to `jobs` what arrives until `until` or until `jobs` holds
    /// `max` requests (the optional `max_wait` of group commit).
    pub(crate) fn take_more(
        &self,
        jobs: &mut Vec<Request>,
        asked: &mut Vec<Asked>,
        max: usize,
        until: Instant,
    ) -> Taken {
        let mut s = self.lock();
        loop {
            jobs.append(&mut s.jobs);
            asked.append(&mut s.asked);
            if s.stop {
                drop(s);
                self.room.notify_waiters();
                return Taken::Stop;
            }
            let now = Instant::now();
            if jobs.len() >= max || now >= until {
                drop(s);
                self.room.notify_waiters();
                return Taken::Work;
            }
            s.parked = true;
            s = self
                .wake
                .wait_timeout_while(s, until - now, |s| !s.has_work())
                .unwrap_or_else(|p| p.into_inner())
                .0;
            s.parked = false;
        }
    }

    /// Takes out the requests whose deadline has passed (while the writer
    /// is busy with a long batch they would otherwise wait for it), keeping
    /// the others in order. They never ran: the caller answers them.
    pub(crate) fn expire(&self, now: Instant) -> Vec<Request> {
        let mut s = self.lock();
        if !s.jobs.iter().any(|j| j.budget().expired_at(now)) {
            return Vec::new();
        }
        let (expired, kept): (Vec<Request>, Vec<Request>) = std::mem::take(&mut s.jobs)
            .into_iter()
            .partition(|j| j.budget().expired_at(now));
        s.jobs = kept;
        drop(s);
        self.room.notify_waiters();
        expired
    }

    fn hand_over(
        &self,
        mut s: MutexGuard<'_, State>,
        jobs: &mut Vec<Request>,
        asked: &mut Vec<Asked>,
    ) -> Taken {
        std::mem::swap(&mut s.jobs, jobs);
        asked.append(&mut s.asked);
        let stop = s.stop;
        drop(s);
        self.room.notify_waiters();
        if stop { Taken::Stop } else { Taken::Work }
    }

    /// Takes whatever is queued without waiting (for answering it when the
    /// writer cannot run it).
    pub(crate) fn take_now(&self, jobs: &mut Vec<Request>, asked: &mut Vec<Asked>) {
        let s = self.lock();
        if s.has_work() {
            self.hand_over(s, jobs, asked);
        }
    }
}

impl State {
    fn has_work(&self) -> bool {
        !self.jobs.is_empty() || !self.asked.is_empty() || self.stop
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::db::group_commit::ExecJob;
    use crate::db::guard::Budget;
    use crate::value::Params;

    fn job(
        n: i64,
    ) -> (
        Request,
        oneshot::Receiver<crate::db::group_commit::ExecReply>,
    ) {
        let (job, rx) = ExecJob::new(
            Budget::new(None),
            format!("SELECT {n}").into(),
            Params::None,
        );
        (Request::Exec(job), rx)
    }

    fn sql_of(r: &Request) -> String {
        match r {
            Request::Exec(j) => j.sql().to_owned(),
            Request::Other(_) => unreachable!(),
        }
    }

    const NO_SPIN: Duration = Duration::ZERO;
    const SHORT: Duration = Duration::from_millis(20);

    #[test]
    fn take_hands_over_everything_in_order_and_keeps_both_buffers() {
        let q = WriteQueue::new(8);
        let mut keep = Vec::new();
        for n in 0..5 {
            let (j, rx) = job(n);
            assert!(q.push(j).is_ok());
            keep.push(rx);
        }
        let (mut jobs, mut asked) = (Vec::with_capacity(8), Vec::new());
        assert_eq!(q.take(&mut jobs, &mut asked, NO_SPIN, SHORT), Taken::Work);
        let order: Vec<String> = jobs.iter().map(sql_of).collect();
        assert_eq!(
            order,
            ["SELECT 0", "SELECT 1", "SELECT 2", "SELECT 3", "SELECT 4"]
        );
        assert_eq!(q.len(), 0);
        // The queue now holds the writer's old buffer, with its capacity.
        assert!(q.lock().jobs.capacity() >= 8);
        jobs.clear();
        assert_eq!(q.take(&mut jobs, &mut asked, NO_SPIN, SHORT), Taken::Idle);
    }

    #[test]
    fn a_full_queue_gives_the_request_back() {
        let q = WriteQueue::new(2);
        let mut keep = Vec::new();
        for n in 0..2 {
            let (j, rx) = job(n);
            assert!(q.push(j).is_ok());
            keep.push(rx);
        }
        let (j, _rx) = job(2);
        match q.push(j) {
            Err(Refused::Full(back)) => assert_eq!(sql_of(&back), "SELECT 2"),
            _ => panic!("a third request fitted a queue of two"),
        }
    }

    #[test]
    fn after_stop_nothing_is_accepted_and_the_writer_sees_stop_with_the_last_requests() {
        let q = WriteQueue::new(8);
        let (j, _rx) = job(1);
        assert!(q.push(j).is_ok());
        q.stop();
        let (j, _rx2) = job(2);
        assert!(matches!(q.push(j), Err(Refused::Stopped)));
        let (reply, _answer) = oneshot::channel();
        assert!(q.ask((CheckpointMode::Passive, reply)).is_err());
        let (mut jobs, mut asked) = (Vec::new(), Vec::new());
        assert_eq!(q.take(&mut jobs, &mut asked, NO_SPIN, SHORT), Taken::Stop);
        assert_eq!(jobs.len(), 1, "what came before the stop is handed over");
    }

    #[test]
    fn a_parked_writer_is_woken_by_a_push() {
        let q = Arc::new(WriteQueue::new(8));
        let writer = {
            let q = q.clone();
            std::thread::spawn(move || {
                let (mut jobs, mut asked) = (Vec::new(), Vec::new());
                let started = Instant::now();
                let taken = q.take(&mut jobs, &mut asked, NO_SPIN, Duration::from_secs(30));
                (taken, jobs.len(), started.elapsed())
            })
        };
        // Wait until the writer is parked, then push.
        while !q.lock().parked {
            std::thread::yield_now();
        }
        let (j, _rx) = job(1);
        assert!(q.push(j).is_ok());
        let (taken, n, waited) = writer.join().unwrap();
        assert_eq!((taken, n), (Taken::Work, 1));
        assert!(waited < Duration::from_secs(30), "woken, not timed out");
    }

    #[test]
    fn checkpoint_requests_reach_the_writer() {
        let q = WriteQueue::new(8);
        let (reply, _answer) = oneshot::channel();
        assert!(q.ask((CheckpointMode::Truncate, reply)).is_ok());
        let (mut jobs, mut asked) = (Vec::new(), Vec::new());
        assert_eq!(q.take(&mut jobs, &mut asked, NO_SPIN, SHORT), Taken::Work);
        assert!(jobs.is_empty());
        assert_eq!(asked.len(), 1);
        assert_eq!(asked[0].0, CheckpointMode::Truncate);
    }

    #[test]
    fn take_more_collects_until_the_deadline_or_the_limit() {
        let q = WriteQueue::new(8);
        let mut keep = Vec::new();
        for n in 0..3 {
            let (j, rx) = job(n);
            assert!(q.push(j).is_ok());
            keep.push(rx);
        }
        let (mut jobs, mut asked) = (Vec::new(), Vec::new());
        let until = Instant::now() + Duration::from_secs(30);
        // Three are queued and the limit is three: no waiting.
        assert_eq!(q.take_more(&mut jobs, &mut asked, 3, until), Taken::Work);
        assert_eq!(jobs.len(), 3);
        // Nothing queued: returns at the deadline with what it has.
        let until = Instant::now() + SHORT;
        assert_eq!(q.take_more(&mut jobs, &mut asked, 10, until), Taken::Work);
        assert!(Instant::now() >= until);
        assert_eq!(jobs.len(), 3);
    }

    #[tokio::test]
    async fn a_caller_waiting_for_room_gets_in_when_the_writer_takes() {
        let q = Arc::new(WriteQueue::new(1));
        let (j, _rx1) = job(1);
        assert!(q.push(j).is_ok());
        let waiter = {
            let q = q.clone();
            tokio::spawn(async move {
                let (j, _rx) = job(2);
                q.push_waiting(j, None).await.is_ok()
            })
        };
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished(), "no room yet");
        let (mut jobs, mut asked) = (Vec::new(), Vec::new());
        assert_eq!(q.take(&mut jobs, &mut asked, NO_SPIN, SHORT), Taken::Work);
        assert!(
            waiter.await.unwrap(),
            "queued once the writer emptied the queue"
        );
        assert_eq!(q.len(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn waiting_for_room_ends_at_the_deadline_with_the_request_given_back() {
        let q = WriteQueue::new(1);
        let (j, _rx1) = job(1);
        assert!(q.push(j).is_ok());
        let (j, _rx2) = job(2);
        let deadline = Instant::now() + Duration::from_millis(50);
        match q.push_waiting(j, Some(deadline)).await {
            Err(Refused::Full(back)) => assert_eq!(sql_of(&back), "SELECT 2"),
            _ => panic!("expected the request back at the deadline"),
        }
    }
}
