//! A memory budget per request for SQLite's own allocations.
//!
//! SQLite's length limit caps one value and `max_result_bytes` caps what a
//! request returns, but one step of a statement can still hold many values
//! at once: a row of 2,000 columns each just under the length limit, a
//! subquery's row, a sort in memory. SQLite has no per-connection heap limit
//! (`sqlite3_hard_heap_limit64` is one for the whole process, so one request
//! would make every other one fail), so litebridge gives SQLite its own
//! allocator (`SQLITE_CONFIG_MALLOC`): `malloc` with an 8-byte size header,
//! as SQLite's own default is when it cannot ask the C library for a
//! block's size, plus one thread-local counter.
//!
//! The counter is armed by `guard::enter` for client SQL and disarmed when
//! the operation ends. SQLite runs a statement on the thread that steps it,
//! so what the counter sees is what that request made SQLite allocate,
//! minus what it freed meanwhile; past the budget an allocation fails,
//! SQLite answers `SQLITE_NOMEM` and unwinds the statement (it is tested to
//! do so cleanly at every allocation), and `guard` reports `too_large`
//! naming `db.max_request_memory`. Blocks freed on another thread than the
//! one that took them just move credit between requests; the budget bounds
//! what one request *adds*, which is what matters. The page cache is part of
//! SQLite's heap, so the budget must leave room for it to grow to
//! `cache_size` (checked when the configuration is built).
//!
//! The same counter is where a long step of SQLite is stopped. SQLite looks
//! at its progress handler (deadlines, holds, the read lane's move off the
//! caller's thread) only between the steps of a loop, so one row of hundreds
//! of expensive columns over a large value ran for tens of seconds without a
//! check. Expensive work over large values makes values, large or many:
//! every [`CHECK_EVERY`] bytes or 16 allocations an operation makes, the
//! allocator asks `guard` whether it must stop, and if so refuses that
//! allocation; SQLite unwinds
//! as for any `SQLITE_NOMEM`, and `guard` reports what the progress handler
//! would have (`timeout`, the hold, the caller gone, or a read moved off the
//! runtime thread).
//!
//! The allocator can only be installed before SQLite initializes, which the
//! first connection of the process does: [`install`] runs before litebridge
//! opens its first connection. If something else in the process opened a
//! SQLite connection first, the budget is not enforced and a warning says so.

#![allow(unsafe_code)]

use std::alloc::{Layout, alloc, dealloc, realloc};
use std::cell::Cell;
use std::ffi::{c_int, c_void};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};

use rusqlite::ffi;

/// Bytes in front of every block, holding its usable size.
const HEADER: usize = 8;
/// What SQLite expects of its allocator's alignment.
const ALIGN: usize = 8;
/// Not armed: allocations are not counted.
const UNLIMITED: i64 = i64::MAX;
/// Bytes an operation may allocate between two checks of whether it must
/// stop: a check costs ~50 ns, and making a megabyte costs far more.
const CHECK_EVERY: i64 = 1 << 20;
/// What an allocation counts towards the next check at least, so that many
/// small ones are checked too (every 16 of them): a call that walks a
/// large value to return a small one (`json_extract` with many paths into a
/// document of megabytes) still allocates its answer.
const CHECK_MIN: i64 = 1 << 16;

thread_local! {
    /// Bytes the operation on this thread may still make SQLite allocate.
    static LEFT: Cell<i64> = const { Cell::new(UNLIMITED) };
    /// An allocation was refused since the budget was armed.
    static REFUSED: Cell<bool> = const { Cell::new(false) };
    /// Bytes still to allocate before the next check.
    static UNTIL_CHECK: Cell<i64> = const { Cell::new(CHECK_EVERY) };
    /// An allocation was refused because the operation must stop.
    static STOPPED: Cell<bool> = const { Cell::new(false) };
    /// Inside [`lenient`]: SQLite's allocations are counted, never refused.
    static LENIENT: Cell<bool> = const { Cell::new(false) };
    /// A flag that stops the operation on this thread once set ([`stop_when`]).
    static WATCHED: std::cell::RefCell<Option<Arc<AtomicBool>>> =
        const { std::cell::RefCell::new(None) };
}

/// While the returned value lives, SQLite's allocations on this thread are
/// counted (without a budget) and, at each check, refused once `stop` is
/// set: a long step on a connection no request's guard watches (a check of
/// the file, a backup's verification) stops as a request's does, where the
/// progress handler is never reached (review 151: one row computing
/// megabytes in straight-line code ran on for seconds after
/// `Database::interrupt`). Dropped on the thread that made it.
pub(crate) fn stop_when(stop: Arc<AtomicBool>) -> StopWhen {
    let unarmed = LEFT.with(|l| {
        let unarmed = l.get() == UNLIMITED;
        if unarmed {
            l.set(UNLIMITED - 1);
        }
        unarmed
    });
    let before = WATCHED.with(|w| w.replace(Some(stop.clone())));
    StopWhen {
        unarmed,
        before,
        own: stop,
        flags: (REFUSED.with(Cell::get), STOPPED.with(Cell::get)),
        _not_send: std::marker::PhantomData,
    }
}

/// See [`stop_when`].
pub(crate) struct StopWhen {
    unarmed: bool,
    before: Option<Arc<AtomicBool>>,
    own: Arc<AtomicBool>,
    /// `REFUSED` and `STOPPED` as they were (an operation already armed).
    flags: (bool, bool),
    _not_send: std::marker::PhantomData<*const ()>,
}

impl Drop for StopWhen {
    fn drop(&mut self) {
        // Put back only what this one set: dropped out of order, a later
        // one's flag stays where it is rather than a stale one coming back.
        WATCHED.with(|w| {
            let mut w = w.borrow_mut();
            if w.as_ref().is_some_and(|f| Arc::ptr_eq(f, &self.own)) {
                *w = self.before.take();
            }
        });
        if self.unarmed {
            disarm();
        } else {
            REFUSED.with(|r| r.set(self.flags.0));
            STOPPED.with(|s| s.set(self.flags.1));
        }
    }
}

/// Runs `f`, reading a value SQLite has already made, with SQLite's
/// allocations counted but never refused. Reading a text can make SQLite
/// add its terminating NUL (a reallocation of a few bytes), and rusqlite
/// panics when that fails ("unexpected SQLITE_TEXT ... NULL data"): so every
/// read of a column or of a function's argument goes through here. The
/// statement's next step is checked as usual.
pub(crate) fn lenient<T>(f: impl FnOnce() -> T) -> T {
    let before = LENIENT.with(|l| l.replace(true));
    let r = f();
    LENIENT.with(|l| l.set(before));
    r
}

/// Installs the allocator, once per process, before SQLite initializes.
/// Returns whether budgets are enforced.
pub(crate) fn install() -> bool {
    static INSTALLED: OnceLock<bool> = OnceLock::new();
    *INSTALLED.get_or_init(|| {
        let methods = ffi::sqlite3_mem_methods {
            xMalloc: Some(x_malloc),
            xFree: Some(x_free),
            xRealloc: Some(x_realloc),
            xSize: Some(x_size),
            xRoundup: Some(x_roundup),
            xInit: Some(x_init),
            xShutdown: Some(x_shutdown),
            pAppData: std::ptr::null_mut(),
        };
        // SAFETY: SQLITE_CONFIG_MALLOC takes a pointer to a methods struct,
        // which SQLite copies; it fails with SQLITE_MISUSE (and changes
        // nothing) once SQLite is initialized.
        let rc = unsafe { ffi::sqlite3_config(ffi::SQLITE_CONFIG_MALLOC, &raw const methods) };
        if rc != ffi::SQLITE_OK {
            tracing::warn!(
                "db.max_request_memory is not enforced in this process: SQLite was initialized \
                 before litebridge opened its first database (open litebridge's database first)"
            );
        }
        rc == ffi::SQLITE_OK
    })
}

/// Arms the budget of the operation on this thread.
pub(crate) fn arm(bytes: usize) {
    LEFT.with(|l| l.set(i64::try_from(bytes).unwrap_or(UNLIMITED)));
    REFUSED.with(|r| r.set(false));
    UNTIL_CHECK.with(|u| u.set(CHECK_EVERY));
    STOPPED.with(|s| s.set(false));
}

/// Disarms it: allocations are no longer counted, and what the operation
/// ran into is forgotten.
pub(crate) fn disarm() {
    LEFT.with(|l| l.set(UNLIMITED));
    REFUSED.with(|r| r.set(false));
    STOPPED.with(|s| s.set(false));
}

/// Runs `f` (litebridge's own statements inside a client operation) with
/// the operation's budget put aside: its own work is never refused for what
/// the client used, and not charged to it.
pub(crate) fn unbudgeted<T>(f: impl FnOnce() -> T) -> T {
    let left = LEFT.with(|l| l.replace(UNLIMITED));
    let r = f();
    LEFT.with(|l| l.set(left));
    r
}

/// Whether an allocation was refused since the budget was last armed.
pub(crate) fn refused() -> bool {
    REFUSED.with(Cell::get)
}

/// Whether an allocation was refused since the budget was last armed
/// because the operation must stop (`guard::should_interrupt`).
pub(crate) fn stopped() -> bool {
    STOPPED.with(Cell::get)
}

/// Memory litebridge's own SQL functions hold outside SQLite's allocator
/// (a lookup table, a result being built), taken from the budget of the
/// operation on this thread while it lives and given back when dropped.
pub(crate) struct Charge(usize);

impl Charge {
    /// Takes `bytes`, or fails with SQLITE_NOMEM (which `guard` reports as
    /// `too_large`, naming `db.max_request_memory`) past the budget.
    pub(crate) fn take(bytes: usize) -> rusqlite::Result<Charge> {
        if take(bytes) {
            Ok(Charge(bytes))
        } else {
            Err(out_of_memory())
        }
    }

    /// Takes `bytes` more.
    pub(crate) fn grow(&mut self, bytes: usize) -> rusqlite::Result<()> {
        if take(bytes) {
            self.0 += bytes;
            Ok(())
        } else {
            Err(out_of_memory())
        }
    }
}

fn out_of_memory() -> rusqlite::Error {
    rusqlite::Error::SqliteFailure(ffi::Error::new(ffi::SQLITE_NOMEM), None)
}

impl Drop for Charge {
    fn drop(&mut self) {
        give(self.0);
    }
}

/// Takes `bytes` from the budget; false (and nothing taken) if that would
/// overdraw it.
fn take(bytes: usize) -> bool {
    LEFT.with(|l| {
        let left = l.get();
        if left == UNLIMITED {
            return true;
        }
        let bytes = i64::try_from(bytes).unwrap_or(UNLIMITED);
        if LENIENT.with(Cell::get) {
            l.set(left.saturating_sub(bytes));
            return true;
        }
        if bytes > left {
            REFUSED.with(|r| r.set(true));
            return false;
        }
        if must_stop(bytes) {
            STOPPED.with(|s| s.set(true));
            return false;
        }
        l.set(left - bytes);
        true
    })
}

/// Counts `bytes` towards the next check; at the check, whether the
/// operation must stop.
fn must_stop(bytes: i64) -> bool {
    UNTIL_CHECK.with(|u| {
        let until = u.get().saturating_sub(bytes.max(CHECK_MIN));
        if until > 0 {
            u.set(until);
            return false;
        }
        u.set(CHECK_EVERY);
        crate::db::guard::should_interrupt()
            || WATCHED.with(|w| {
                w.borrow()
                    .as_ref()
                    .is_some_and(|stop| stop.load(Ordering::Relaxed))
            })
    })
}

/// Gives `bytes` back to the budget.
fn give(bytes: usize) {
    LEFT.with(|l| {
        let left = l.get();
        if left != UNLIMITED {
            let bytes = i64::try_from(bytes).unwrap_or(0);
            l.set(left.saturating_add(bytes).min(UNLIMITED - 1));
        }
    });
}

fn round_up(n: usize) -> usize {
    n.div_ceil(ALIGN) * ALIGN
}

fn layout(usable: usize) -> Option<Layout> {
    Layout::from_size_align(usable.checked_add(HEADER)?, ALIGN).ok()
}

/// The usable size stored in front of a block SQLite holds.
///
/// # Safety
/// `p` was returned by `x_malloc` or `x_realloc` and not freed.
unsafe fn usable(p: *mut c_void) -> usize {
    // SAFETY: the caller's promise: the header is the HEADER bytes before `p`.
    unsafe { p.cast::<u8>().sub(HEADER).cast::<usize>().read() }
}

unsafe extern "C" fn x_malloc(n: c_int) -> *mut c_void {
    let Ok(n) = usize::try_from(n) else {
        return std::ptr::null_mut();
    };
    let n = round_up(n);
    let Some(layout) = layout(n) else {
        return std::ptr::null_mut();
    };
    if !take(n) {
        return std::ptr::null_mut();
    }
    // SAFETY: the layout has a non-zero size (HEADER > 0).
    let base = unsafe { alloc(layout) };
    if base.is_null() {
        give(n);
        return std::ptr::null_mut();
    }
    // SAFETY: `base` holds at least HEADER bytes, aligned for usize.
    unsafe {
        base.cast::<usize>().write(n);
        base.add(HEADER).cast()
    }
}

unsafe extern "C" fn x_free(p: *mut c_void) {
    if p.is_null() {
        return;
    }
    // SAFETY: SQLite frees only blocks this allocator gave it.
    let n = unsafe { usable(p) };
    give(n);
    let layout = layout(n).expect("the layout it was allocated with");
    // SAFETY: the block starts HEADER bytes before `p`, with this layout.
    unsafe { dealloc(p.cast::<u8>().sub(HEADER), layout) }
}

unsafe extern "C" fn x_realloc(p: *mut c_void, n: c_int) -> *mut c_void {
    if p.is_null() {
        // SAFETY: as for a fresh allocation.
        return unsafe { x_malloc(n) };
    }
    let Ok(n) = usize::try_from(n) else {
        return std::ptr::null_mut();
    };
    let n = round_up(n);
    // SAFETY: SQLite reallocates only blocks this allocator gave it.
    let old = unsafe { usable(p) };
    let Some(new_layout) = layout(n) else {
        return std::ptr::null_mut();
    };
    if n > old && !take(n - old) {
        return std::ptr::null_mut();
    }
    let old_layout = layout(old).expect("the layout it was allocated with");
    // SAFETY: the block starts HEADER bytes before `p`, with `old_layout`;
    // the new size is non-zero and does not overflow (checked by `layout`).
    let base = unsafe { realloc(p.cast::<u8>().sub(HEADER), old_layout, new_layout.size()) };
    if base.is_null() {
        if n > old {
            give(n - old);
        }
        return std::ptr::null_mut();
    }
    if n < old {
        give(old - n);
    }
    // SAFETY: `base` holds at least HEADER bytes, aligned for usize.
    unsafe {
        base.cast::<usize>().write(n);
        base.add(HEADER).cast()
    }
}

unsafe extern "C" fn x_size(p: *mut c_void) -> c_int {
    if p.is_null() {
        return 0;
    }
    // SAFETY: SQLite asks only about blocks this allocator gave it.
    c_int::try_from(unsafe { usable(p) }).unwrap_or(c_int::MAX)
}

unsafe extern "C" fn x_roundup(n: c_int) -> c_int {
    usize::try_from(n)
        .ok()
        .and_then(|u| c_int::try_from(round_up(u)).ok())
        .unwrap_or(n)
}

unsafe extern "C" fn x_init(_: *mut c_void) -> c_int {
    ffi::SQLITE_OK
}

unsafe extern "C" fn x_shutdown(_: *mut c_void) {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_budget_counts_growth_and_refuses_past_it() {
        arm(100);
        assert!(take(60));
        assert!(!take(50));
        assert!(refused());
        give(20);
        assert!(take(50));
        disarm();
        assert!(take(usize::MAX / 2), "disarmed, nothing is counted");
        arm(10);
        assert!(!refused(), "arming clears the refusal");
        disarm();
    }

    /// Reading a value (`lenient`) is never refused, but still counted;
    /// litebridge's own statements (`unbudgeted`) are neither refused nor
    /// charged to the operation.
    #[test]
    fn reads_are_counted_never_refused_and_own_work_is_not_charged() {
        arm(100);
        assert!(lenient(|| take(150)), "a read past the budget is allowed");
        assert!(!take(1), "and counted: the budget is spent");
        assert!(refused());
        disarm();
        assert!(!refused(), "disarming forgets what the operation ran into");
        arm(100);
        assert!(unbudgeted(|| take(1_000)));
        assert!(take(100), "own work was not charged");
        disarm();
    }
}
