//! Which threads are running a read of the read lane inline, right now.
//!
//! A read runs on the caller's thread (see `readers`); while it runs, that
//! thread, usually a worker of an async runtime, runs no other task. A
//! server that sees its runtime stop answering wants to know whether SQLite
//! is the reason (every worker inside a read) or the runtime is merely busy
//! (`litebridge serve`'s standby acceptor asks, see [`inline_reads`]).
//!
//! Counting with one shared atomic would make every point read write a cache
//! line the other cores read and write too. Instead each thread owns a flag
//! that only it writes (a store to a line it keeps); the rare reader of the
//! count walks the registered flags. A thread registers on its first inline
//! read and unregisters when it exits.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use crate::sync::lock;

/// The flags of the threads that have run an inline read and not exited.
static THREADS: Mutex<Vec<Arc<AtomicBool>>> = Mutex::new(Vec::new());

struct Registered(Arc<AtomicBool>);

impl Registered {
    fn new() -> Registered {
        let flag = Arc::new(AtomicBool::new(false));
        lock(&THREADS).push(flag.clone());
        Registered(flag)
    }
}

impl Drop for Registered {
    fn drop(&mut self) {
        lock(&THREADS).retain(|f| !Arc::ptr_eq(f, &self.0));
    }
}

thread_local! {
    static MINE: Registered = Registered::new();
}

/// Marks this thread as inside an inline read until dropped.
pub(crate) struct Inline(());

pub(crate) fn enter() -> Inline {
    let _ = MINE.try_with(|m| m.0.store(true, Ordering::Relaxed));
    Inline(())
}

impl Drop for Inline {
    fn drop(&mut self) {
        let _ = MINE.try_with(|m| m.0.store(false, Ordering::Relaxed));
    }
}

/// How many threads are running a read of the read lane on themselves right
/// now, in every database of this process. Each is a thread (normally an
/// async runtime worker) that runs nothing else until its read returns; a
/// read still running after a few milliseconds is moved off it, except
/// inside one step of SQLite that checks nothing.
#[must_use]
pub fn inline_reads() -> usize {
    lock(&THREADS)
        .iter()
        .filter(|f| f.load(Ordering::Relaxed))
        .count()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_thread_counts_while_inside_and_not_after() {
        let before = inline_reads();
        let (entered, leave) = (std::sync::Barrier::new(2), std::sync::Barrier::new(2));
        std::thread::scope(|s| {
            s.spawn(|| {
                let inside = enter();
                entered.wait();
                leave.wait();
                drop(inside);
            });
            entered.wait();
            assert!(inline_reads() > before);
            leave.wait();
        });
        // The thread has exited: its flag is gone with it.
        assert!(inline_reads() <= before);
    }
}
