//! Whether a connection other than this process's writer committed to the
//! database since this process last looked: what keeps the cache's memory
//! from serving a key another process changed, without polling and without
//! mistaking this process's own writes for another's.
//!
//! # Design
//!
//! Every connection on a WAL database shares the wal-index header at the
//! start of the `-shm` file, mapped into every process that has the file
//! open. A commit rewrites it (its count of commits `iChange`, the last
//! frame, the log's salts and checksums), and so do a log restart and a
//! rebuild of the index; SQLite writes it only while holding the WAL's
//! write lock, and before releasing it.
//!
//! All of this process's writes go through the writer's connection, whose
//! files pass through `wal_vfs`. The shim tells this module where the
//! header is mapped, and when that connection takes and releases the write
//! lock:
//!
//! - **taking it**, the header is read: different from what was seen last,
//!   someone else changed the file since (a change is counted);
//! - **releasing it**, the header this connection leaves is remembered as
//!   seen, *before* the lock goes, so no other commit can come between;
//! - **a look** ([`ForeignCommits::generation`]) while the writer holds the
//!   lock reads nothing (nobody else can change the header then, and what
//!   happened before it took the lock was counted when it did); otherwise
//!   it reads the header and compares it with what was seen last.
//!
//! One mutex orders the three, so a look never sees the writer halfway
//! through. A look costs that mutex and a read of 64 bytes of shared memory:
//! this process's own writes never count, whatever their rate, and a change
//! by another process is counted at the first look after it, however long
//! this one was idle.
//!
//! The header is read as SQLite reads it: both of its copies (a writer
//! writes the second, then the first). Copies that differ, or a header not
//! initialised yet, are a change being published: counted, and not kept as
//! seen (so it is counted again once whole).
//!
//! What is compared is what a commit changes and a restart of the log does
//! not: the count of commits, the page size, the database's size in pages
//! and the running checksum of the log's frames. A restart (the log
//! written from its start again after a whole checkpoint: another
//! process's `TRUNCATE` checkpoint, as every `litebridge` command makes as
//! it exits) changes only the last frame's number and the salts; counted,
//! it emptied the cache's memory for every `litebridge query` run beside a
//! server (review 211). Every commit moves the count. A rebuilt index
//! (SQLite's recovery, after a process died while writing the header)
//! starts the count from 0 again, and could land on the count seen last;
//! the frames' checksum, rebuilt from the log, would have to land on the
//! one seen last too. Over an empty log it lands on every field of a
//! header no commit has touched since the index was made (a server that
//! only read since it opened a file closed cleanly): review 212 had one
//! rebuilt so after another process's commit, and the cache served the old
//! value for good. So a header whose count is 0 is never taken as seen:
//! every look at it counts a change, until a commit moves the count. A
//! process that only reads would never make one (SQLite writes no frame for
//! a row overwritten with the same bytes, as a migration's upsert of the
//! schema version is): the cache, reading such a header, has the writer
//! make one ([`ForeignCommits::uncounted`]).
//!
//! # What it cannot see
//!
//! - A process that opens the file without the shared index (exclusive
//!   locking mode taken before its first read, `nolock=1`, the `unix-none`
//!   VFS) rewrites no shared header. SQLite does not support sharing a WAL
//!   database with such a process either.
//! - Without the shim (no `unix` VFS to wrap) nothing is mapped here, and
//!   [`ForeignCommits::generation`] answers `None`: the caller must not
//!   trust what it kept.
//!
//! A change this process did not make but that is not another's commit
//! (another process's `RESTART` checkpoint, a connection of this process
//! other than the writer rebuilding a damaged index) is counted too: it
//! costs the cache its memory, never a wrong value.

#![allow(unsafe_code)]

use std::ffi::c_void;
use std::sync::Mutex;

use crate::sync::lock;

/// Counts the changes of the database's shared header made by anyone but
/// this process's writer. Shared by the writer's shim and the cache.
#[derive(Debug, Default)]
pub(crate) struct ForeignCommits {
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    /// The writer's mapping of the index's first region (null while it has
    /// none): valid until the shim is told it is unmapped.
    header: Header,
    /// The writer holds the write lock.
    held: bool,
    /// The header as seen last (`None`: not seen whole yet).
    seen: Option<[u8; COMPARED]>,
    /// Changes counted so far.
    generation: u64,
    /// The header read last counts no commit (see [`Read::Uncounted`]).
    uncounted: bool,
}

/// What a read of the header found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Read {
    /// Not mapped, copies that differ (being written) or not initialised.
    Torn,
    /// Whole, with a count of commits of 0: as a rebuilt index has it.
    Uncounted,
    /// Whole, the compared part.
    Whole([u8; COMPARED]),
}

/// The address of the index's first region, as mapped by the writer.
#[derive(Debug, Clone, Copy)]
struct Header(*const u8);

impl Default for Header {
    fn default() -> Self {
        Header(std::ptr::null())
    }
}

// SAFETY: the pointer is only read under the state's mutex, and the shim
// clears it (under the same mutex) before the region is unmapped.
unsafe impl Send for Header {}

/// Where the part of a copy of the header read starts, and its length:
/// `iChange`, `isInit`, `bigEndCksum`, `szPage`, `mxFrame`, `nPage`,
/// `aFrameCksum`, `aSalt` (SQLite's `WalIndexHdr`, 48 bytes a copy).
const FROM: usize = 8;
const COMPARED: usize = 32;
/// Within a copy: `mxFrame`, and `aSalt`, which a restart of the log
/// changes (not compared).
const MX_FRAME: std::ops::Range<usize> = 16..20;
const SALTS: std::ops::Range<usize> = 32..40;
/// Where the second copy starts.
const SECOND: usize = 48;
/// `isInit`, within a copy.
const IS_INIT: usize = 12;

impl Header {
    /// The header.
    fn read(self) -> Read {
        if self.0.is_null() {
            return Read::Torn;
        }
        let copy = |at: usize| {
            let mut out = [0u8; COMPARED];
            for (i, word) in out.chunks_exact_mut(8).enumerate() {
                // SAFETY: the region is at least 32 KiB, page-aligned (so
                // these 8-byte words at offsets 8 to 88 are aligned) and
                // mapped while `self` is not null (see `State::header`);
                // other processes write it concurrently, so each word is
                // read volatile, as SQLite reads it without locks.
                let w =
                    unsafe { std::ptr::read_volatile(self.0.add(at + FROM + 8 * i).cast::<u64>()) };
                word.copy_from_slice(&w.to_ne_bytes());
            }
            out
        };
        let mut first = copy(0);
        std::sync::atomic::fence(std::sync::atomic::Ordering::Acquire);
        let second = copy(SECOND);
        if first != second || first[IS_INIT - FROM] == 0 {
            return Read::Torn;
        }
        if first[..4] == [0; 4] {
            return Read::Uncounted;
        }
        for range in [MX_FRAME, SALTS] {
            first[range.start - FROM..range.end - FROM].fill(0);
        }
        Read::Whole(first)
    }
}

impl State {
    /// Compares the header with what was seen last; counts a change.
    fn look(&mut self) {
        let now = self.header.read();
        match now {
            Read::Whole(h) if self.seen == Some(h) => {}
            Read::Whole(h) => {
                self.generation += 1;
                self.seen = Some(h);
            }
            Read::Torn | Read::Uncounted => {
                self.generation += 1;
                self.seen = None;
            }
        }
        self.uncounted = now == Read::Uncounted;
    }
}

/// What a look at the header found.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Look {
    /// The count of changes by others seen so far.
    pub(crate) generation: u64,
    /// The header read last counts no commit: until one is made, every
    /// look counts a change (the module's note), and the caller should
    /// have the writer commit one.
    pub(crate) uncounted: bool,
}

impl ForeignCommits {
    /// Looks at the header now; `None` while the writer's index is not
    /// mapped (then nothing can be told).
    pub(crate) fn look(&self) -> Option<Look> {
        let mut s = lock(&self.state);
        if s.header.0.is_null() {
            return None;
        }
        if !s.held {
            s.look();
        }
        Some(Look {
            generation: s.generation,
            uncounted: s.uncounted,
        })
    }

    #[cfg(test)]
    fn generation(&self) -> Option<u64> {
        self.look().map(|l| l.generation)
    }

    /// The writer's connection mapped the index's first region at `region`
    /// (it may hold the write lock already: SQLite can take it first).
    pub(super) fn mapped(&self, region: *mut c_void) {
        lock(&self.state).header = Header(region.cast_const().cast());
    }

    /// The writer's connection is about to unmap the index, or to close.
    pub(super) fn unmapped(&self) {
        let mut s = lock(&self.state);
        s.header = Header::default();
        s.held = false;
    }

    /// The writer's connection took the write lock.
    pub(super) fn acquired(&self) {
        let mut s = lock(&self.state);
        s.look();
        s.held = true;
    }

    /// The writer's connection is about to release the write lock: what
    /// the header says now is its own doing.
    pub(super) fn releasing(&self) {
        let mut s = lock(&self.state);
        if s.held {
            s.held = false;
            let now = s.header.read();
            s.seen = match now {
                Read::Whole(h) => Some(h),
                Read::Torn | Read::Uncounted => None,
            };
            s.uncounted = now == Read::Uncounted;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The first region of an index (aligned as a mapping is): a header
    /// of `iChange = change`, initialised, in both copies.
    struct Region(Vec<u64>);

    impl Region {
        fn new(change: u8) -> Region {
            let mut r = Region(vec![0u64; 17]);
            for at in [0, SECOND] {
                r.set(at + FROM, change);
                r.set(at + IS_INIT, 1);
            }
            r
        }

        fn set(&mut self, at: usize, byte: u8) {
            // Written through the pointer the watch holds.
            let p = self.0.as_mut_ptr().cast::<u8>();
            // SAFETY: `at` is within the region's 136 bytes.
            unsafe { p.add(at).write_volatile(byte) };
        }

        fn map(&mut self, w: &ForeignCommits) {
            w.mapped(self.0.as_mut_ptr().cast());
        }
    }

    #[test]
    fn own_changes_do_not_count_and_anothers_do_when_next_looked_at() {
        let w = ForeignCommits::default();
        assert_eq!(w.generation(), None, "nothing mapped: nothing can be told");
        let mut r = Region::new(1);
        r.map(&w);
        let first = w.generation().unwrap();
        assert_eq!(w.generation(), Some(first), "nothing changed");
        // The writer commits: its own.
        w.acquired();
        r.set(SECOND + FROM, 2);
        r.set(FROM, 2);
        assert_eq!(w.generation(), Some(first), "held: not read");
        w.releasing();
        assert_eq!(w.generation(), Some(first), "its own commit");
        // Someone else commits while the writer is idle.
        r.set(SECOND + FROM, 3);
        r.set(FROM, 3);
        let seen = w.generation().unwrap();
        assert!(seen > first, "another's commit");
        assert_eq!(w.generation(), Some(seen), "counted once");
        // Someone else commits, then the writer takes the lock.
        r.set(SECOND + FROM, 4);
        r.set(FROM, 4);
        w.acquired();
        let during = w.generation().unwrap();
        assert!(during > seen, "counted when the lock was taken");
        w.releasing();
        assert_eq!(w.generation(), Some(during));
        // Someone else restarts the log (a whole checkpoint): no commit.
        for at in [0, SECOND] {
            r.set(at + MX_FRAME.start, 9);
            r.set(at + SALTS.start, 9);
        }
        assert_eq!(w.generation(), Some(during), "a restart is not a change");
        // Someone else commits: the count and the frames' checksum move.
        r.set(SECOND + FROM, 5);
        r.set(SECOND + 24, 5);
        r.set(FROM, 5);
        r.set(24, 5);
        assert!(w.generation().unwrap() > during);
        w.unmapped();
        assert_eq!(w.generation(), None);
    }

    #[test]
    fn a_count_of_0_is_never_seen() {
        let w = ForeignCommits::default();
        let mut r = Region::new(0);
        r.map(&w);
        let a = w.generation().unwrap();
        let b = w.generation().unwrap();
        assert!(
            b > a,
            "a header as a rebuilt index has it: every look counts"
        );
        r.set(SECOND + FROM, 1);
        r.set(FROM, 1);
        let c = w.generation().unwrap();
        assert_eq!(w.generation(), Some(c), "counted commits: seen");
        w.unmapped();
    }

    #[test]
    fn a_header_being_written_counts_until_whole() {
        let w = ForeignCommits::default();
        let mut r = Region::new(7);
        r.map(&w);
        let g = w.generation().unwrap();
        // The second copy is written first.
        r.set(SECOND + FROM, 8);
        let mid = w.generation().unwrap();
        assert!(mid > g);
        r.set(FROM, 8);
        let whole = w.generation().unwrap();
        assert!(whole > mid, "counted again once whole");
        assert_eq!(w.generation(), Some(whole));
        // Not initialised: a change.
        r.set(IS_INIT, 0);
        r.set(SECOND + IS_INIT, 0);
        assert!(w.generation().unwrap() > whole);
        // A release the writer did not take is nobody's: it hides nothing.
        r.set(IS_INIT, 1);
        r.set(SECOND + IS_INIT, 1);
        let before = w.generation().unwrap();
        r.set(SECOND + FROM, 9);
        r.set(FROM, 9);
        w.releasing();
        assert!(w.generation().unwrap() > before);
        w.unmapped();
    }
}
