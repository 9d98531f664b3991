//! Fault injection for tests: switches that make the real components fail in
//! the ways production ones do (a connection whose statements all fail, a
//! COMMIT that SQLite refuses, a writer thread that dies mid-batch), so the
//! recovery paths under test are the production paths.
//!
//! Hidden from the documentation; it costs one `Option` check where it hooks in.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

/// Switches read by the database's components. All start off.
#[derive(Debug, Default)]
pub struct Faults {
    break_readers: AtomicUsize,
    fail_commits: AtomicUsize,
    panic_writer: AtomicBool,
}

impl Faults {
    /// Makes the next `n` read-lane checkouts break their connection: every
    /// statement on it fails from then on, until the pool replaces it.
    pub fn break_readers(&self, n: usize) {
        self.break_readers.store(n, Ordering::SeqCst);
    }

    /// Makes SQLite refuse the next `n` COMMITs of the writer (through a commit hook).
    pub fn fail_commits(&self, n: usize) {
        self.fail_commits.store(n, Ordering::SeqCst);
    }

    /// Makes the writer thread panic in the middle of its next batch.
    pub fn panic_writer(&self) {
        self.panic_writer.store(true, Ordering::SeqCst);
    }

    pub(crate) fn take_break_reader(&self) -> bool {
        take_one(&self.break_readers)
    }

    pub(crate) fn take_fail_commit(&self) -> bool {
        take_one(&self.fail_commits)
    }

    pub(crate) fn take_panic_writer(&self) -> bool {
        self.panic_writer.swap(false, Ordering::SeqCst)
    }
}

fn take_one(counter: &AtomicUsize) -> bool {
    counter
        .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
        .is_ok()
}
