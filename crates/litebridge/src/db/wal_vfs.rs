//! A thin VFS over SQLite's `unix` VFS that writes each commit's WAL frames
//! in one system call. Only the writer's connection uses it.
//!
//! # Why
//!
//! SQLite appends a commit to the WAL one frame at a time, and each frame in
//! two `pwrite`s: its 24-byte header, then the page. A frame is not aligned
//! to the file system's blocks, so every call dirties one or two page-cache
//! pages the previous call dirtied already, and the kernel's per-page work
//! (`write_begin`/`write_end`, marking buffers dirty) runs about three times
//! per page written. Under a pipelined insert load that was ~7 % of all CPU
//! (BENCHMARKS.md, "Profile"). Here the frames of a commit are gathered in
//! memory and handed to the `unix` VFS as one write when the commit frame's
//! page arrives.
//!
//! # Why this is safe
//!
//! SQLite publishes a commit to other connections only after the frames are
//! written: `sqlite3WalFrames` writes every frame (the commit frame last),
//! syncs if asked, and only then updates the wal-index that readers consult.
//! Nothing is acknowledged before COMMIT returns. So the one thing that must
//! hold is: **when a write that completes a commit returns, every byte of it
//! is in the file**, and nothing written later is put before it.
//!
//! - Only *appends* are gathered: a write at exactly the end of what this
//!   log generation holds (`end`: one past the highest byte written since
//!   the log last restarted at offset 0), starting at a frame's header (or
//!   the log's), so a frame is gathered whole or not at all. Anything else is SQLite writing in
//!   place over frames of the open transaction (a page changed again after
//!   it spilled, or `walRewriteChecksums` rewriting frame headers at commit):
//!   the buffer is written out first, then that write goes straight through.
//!   (An earlier version buffered a rewritten commit frame header, waiting for
//!   a page that never comes: the acknowledged transaction was in memory only
//!   until the next write. `tests/wal_writes.rs` keeps that case.)
//! - An appended commit frame is a header saying the database size (non-zero
//!   only for a commit frame) followed by its page: the buffer is written out
//!   as part of the write of that page, so the commit's last append returns
//!   only once everything is in the file, and a commit's checksum rewrites
//!   and syncs come after it in order.
//! - The buffer is also written out before anything that could observe the
//!   file (a read, the size, a sync, a truncate, a file-control, close), and
//!   whenever it passes 1 MiB (a transaction spilling pages before it commits).
//!
//! So the buffer only ever holds frames of a transaction that has not
//! committed. When a write transaction ends (the database's shared-memory
//! write lock is released) or the file closes, whatever is still gathered
//! was rolled back and is dropped, never written: another connection (or
//! process) may have committed frames at the same offsets since. If writing
//! it out fails:
//!
//! - during a write or a sync, SQLite gets the error of its own write and
//!   abandons the transaction: the frames are dropped (they belong to a
//!   transaction that will never commit, and writing them later could only
//!   put a rolled-back commit frame in the log);
//! - during anything else (a read, the size, a file-control whose result
//!   SQLite may ignore), they are kept and written with the next write,
//!   which fails in turn if the disk still refuses: an error SQLite might
//!   ignore never loses a frame it believes written.
//!
//! Every other file, the database and its shared-memory index included,
//! goes straight to `unix`.
//!
//! The shim also tells `foreign_commits` where the writer's connection
//! mapped the database's shared index and when it takes and releases the
//! write lock ([`watch`]): what tells this process's commits from others'.
//!
//! The shim also tells the writer whether a COMMIT that failed had written
//! its commit frame ([`commit_written`]): after that, a failure (a sync
//! the disk refused, an index that could not grow) leaves a transaction
//! SQLite rolled back but a crash would recover from the log, so its
//! outcome is unknown rather than "not saved".
//!
//! Proven by `tests/wal_writes.rs` (a transaction that spills and rewrites in
//! place, recovered from a copy of the files taken right after COMMIT
//! returns, with no later write; failing flushes injected at each point) and
//! the crash harness (`litebridge-cli/tests/crash_safety.rs`: SIGKILL under
//! load and right after a spilling transaction is acknowledged, every
//! acknowledged write present exactly once, in both durability modes).

#![allow(unsafe_code)]

use std::cell::Cell;
use std::ffi::{CStr, c_int, c_void};
use std::sync::{Arc, OnceLock};

use rusqlite::ffi;

use crate::db::foreign_commits::ForeignCommits;

/// The name the writer's connection opens with.
pub(crate) const NAME: &CStr = c"litebridge-wal";

/// A buffer larger than this is written out even without a commit.
const MAX_BUFFER: usize = 1 << 20;
/// The largest single write handed to the unix VFS.
const WRITE_PIECE: usize = 64 * 1024;
/// The size of a WAL frame header.
const FRAME_HEADER: c_int = 24;

thread_local! {
    /// Whether a commit frame reached a WAL through this thread since
    /// [`forget_commit_written`]: SQLite calls a connection's VFS on the
    /// thread that runs its statement, and only the writer's thread uses
    /// the shim.
    static COMMIT_WRITTEN: Cell<bool> = const { Cell::new(false) };
}

/// Starts watching for a commit frame written by this thread (before a
/// COMMIT).
pub(crate) fn forget_commit_written() {
    COMMIT_WRITTEN.set(false);
}

/// Whether a commit frame (its header and its page) was written to a WAL by
/// this thread since [`forget_commit_written`]. A transaction whose commit frame is in the
/// file is recovered from it after a crash, whatever SQLite answered.
pub(crate) fn commit_written() -> bool {
    COMMIT_WRITTEN.get()
}

/// Has `watch` told of the write lock and the shared index of `conn`'s
/// database file, from now until it closes; false when the file is not
/// this shim's (it was opened without it).
pub(crate) fn watch(conn: &rusqlite::Connection, watch: Arc<ForeignCommits>) -> bool {
    let Some(file) = crate::db::ffi::main_file(conn) else {
        return false;
    };
    // SAFETY: a file SQLite gave whose methods are ours is an open
    // ShimFile of the connection, used on this thread only.
    unsafe {
        if !std::ptr::eq((*file).pMethods, &PASS_METHODS) {
            return false;
        }
        let shim = file.cast::<ShimFile>();
        if !(*shim).region.is_null() {
            watch.mapped((*shim).region);
        }
        let old = std::mem::replace(&mut (*shim).watch, Arc::into_raw(watch));
        if !old.is_null() {
            let old = Arc::from_raw(old);
            old.unmapped();
        }
    }
    true
}

/// The watch of `file`, if it has one.
///
/// # Safety
/// `file` must be an open `ShimFile`.
unsafe fn watch_of<'a>(file: *mut ffi::sqlite3_file) -> Option<&'a ForeignCommits> {
    // SAFETY: (caller) an open ShimFile; its watch, when not null, is an
    // `Arc` it holds until it closes.
    unsafe { (*file.cast::<ShimFile>()).watch.as_ref() }
}

/// Registers the VFS (once per process) and returns its name, or `None` if
/// SQLite has no `unix` VFS to wrap (then the default VFS is used).
pub(crate) fn name() -> Option<&'static CStr> {
    static REGISTERED: OnceLock<bool> = OnceLock::new();
    REGISTERED.get_or_init(register).then_some(NAME)
}

fn register() -> bool {
    // SAFETY: sqlite3_vfs_find only reads SQLite's VFS list; the returned
    // VFS lives for the whole process (VFSes are never unregistered here).
    let unix = unsafe { ffi::sqlite3_vfs_find(c"unix".as_ptr()) };
    if unix.is_null() {
        return false;
    }
    // SAFETY: `unix` is a valid, registered VFS: copying its struct copies
    // its function pointers, which stay valid for the process's lifetime.
    let mut vfs: ffi::sqlite3_vfs = unsafe { *unix };
    let Ok(unix_size) = usize::try_from(vfs.szOsFile) else {
        return false;
    };
    let Ok(size) = c_int::try_from(std::mem::size_of::<ShimFile>() + unix_size) else {
        return false;
    };
    vfs.szOsFile = size;
    vfs.pNext = std::ptr::null_mut();
    vfs.zName = NAME.as_ptr();
    vfs.pAppData = unix.cast();
    vfs.xOpen = Some(shim_open);
    // The other methods are the `unix` ones: none of them reads the VFS
    // struct it is called with beyond fields copied unchanged (only xOpen
    // reads pAppData, and xOpen is ours).
    let vfs: &'static mut ffi::sqlite3_vfs = Box::leak(Box::new(vfs));
    // SAFETY: `vfs` is a complete, 'static VFS; registering it as
    // non-default does not affect connections that do not name it.
    unsafe { ffi::sqlite3_vfs_register(vfs, 0) == ffi::SQLITE_OK }
}

/// The file as SQLite sees it: our header, then the `unix` file it wraps
/// (in the same allocation of `szOsFile` bytes, which SQLite makes 8-byte
/// aligned).
#[repr(C)]
struct ShimFile {
    base: ffi::sqlite3_file,
    /// The WAL's pending frames; null for every other file.
    buffer: *mut Pending,
    /// The WAL's database file, and the database's WAL (while both are open;
    /// null otherwise): the end of a write transaction shows on the
    /// database's shared-memory locks, and empties the WAL's buffer.
    link: *mut ShimFile,
    /// A database file's watch of others' commits ([`watch`]; null for
    /// none), an `Arc` of its own: released when the file closes.
    watch: *const ForeignCommits,
    /// Where a database file's shared index has its first region mapped
    /// (null while it is not).
    region: *mut c_void,
}

struct Pending {
    data: Vec<u8>,
    /// The file offset of `data[0]`.
    start: i64,
    /// A commit frame's header is in `data`; its page comes next.
    commit_header: bool,
    /// A commit frame's header was written straight through: where its
    /// page goes, which completes the commit frame once written.
    commit_page_at: Option<i64>,
    /// One past the highest byte written in this log generation (buffered
    /// or not), once known: a write here is an append.
    end: Option<i64>,
}

/// What happens to pending frames that could not be written out.
#[derive(Clone, Copy, PartialEq, Eq)]
enum OnError {
    /// SQLite sees the error as the failure of its own write or sync and
    /// abandons the transaction.
    Drop,
    /// SQLite might ignore the error: keep them for the next attempt.
    Keep,
}

/// The `unix` file inside a shim file.
///
/// # Safety
/// `file` must point at a `ShimFile` allocation of the size this VFS asked for.
unsafe fn real(file: *mut ffi::sqlite3_file) -> *mut ffi::sqlite3_file {
    // SAFETY: (caller) the allocation holds a ShimFile followed by the unix file.
    unsafe {
        file.cast::<u8>()
            .add(std::mem::size_of::<ShimFile>())
            .cast()
    }
}

/// # Safety
/// `file` must point at an open `ShimFile` whose real file is open.
unsafe fn methods(file: *mut ffi::sqlite3_file) -> &'static ffi::sqlite3_io_methods {
    // SAFETY: (caller) an open unix file's pMethods points at a static table.
    unsafe { &*(*real(file)).pMethods }
}

unsafe extern "C" fn shim_open(
    vfs: *mut ffi::sqlite3_vfs,
    name: ffi::sqlite3_filename,
    file: *mut ffi::sqlite3_file,
    flags: c_int,
    out_flags: *mut c_int,
) -> c_int {
    // SAFETY: SQLite gives us our VFS (whose pAppData is the unix VFS) and
    // an uninitialised allocation of szOsFile bytes for `file`.
    unsafe {
        let unix = (*vfs).pAppData.cast::<ffi::sqlite3_vfs>();
        let shim = file.cast::<ShimFile>();
        (*shim).base.pMethods = std::ptr::null();
        (*shim).buffer = std::ptr::null_mut();
        (*shim).link = std::ptr::null_mut();
        (*shim).watch = std::ptr::null();
        (*shim).region = std::ptr::null_mut();
        let inner = real(file);
        let Some(open) = (*unix).xOpen else {
            return ffi::SQLITE_CANTOPEN;
        };
        let rc = open(unix, name, inner, flags, out_flags);
        if rc != ffi::SQLITE_OK || (*inner).pMethods.is_null() {
            return rc;
        }
        if flags & ffi::SQLITE_OPEN_WAL != 0 {
            (*shim).buffer = Box::into_raw(Box::new(Pending {
                data: Vec::with_capacity(64 * 1024),
                start: 0,
                commit_header: false,
                commit_page_at: None,
                end: None,
            }));
            // The database file of this WAL, opened by the same connection
            // through this VFS (so a ShimFile too).
            let db = ffi::sqlite3_database_file_object(name);
            if !db.is_null() {
                let db = db.cast::<ShimFile>();
                (*db).link = shim;
                (*shim).link = db;
            }
        }
        (*shim).base.pMethods = &PASS_METHODS;
        rc
    }
}

/// Writes out the pending frames, if any. On failure `on_error` decides
/// whether they are kept for another attempt (see the module docs).
///
/// # Safety
/// `file` must be an open `ShimFile`.
unsafe fn flush(file: *mut ffi::sqlite3_file, on_error: OnError) -> c_int {
    // SAFETY: (caller) open shim file; its buffer, when not null, is ours.
    unsafe {
        let pending = (*file.cast::<ShimFile>()).buffer;
        if pending.is_null() || (*pending).data.is_empty() {
            return ffi::SQLITE_OK;
        }
        let p = &mut *pending;
        let Some(write) = methods(file).xWrite else {
            return ffi::SQLITE_IOERR_WRITE;
        };
        let mut rc = if crate::fault::take_wal_flush_failure() {
            ffi::SQLITE_IOERR_WRITE
        } else {
            ffi::SQLITE_OK
        };
        // The unix VFS writes at most 128 KiB - 1 bytes per call (it masks
        // the length to 17 bits): hand it pieces it takes whole.
        let mut offset = p.start;
        let mut written = 0;
        if rc == ffi::SQLITE_OK {
            for piece in p.data.chunks(WRITE_PIECE) {
                let len = c_int::try_from(piece.len()).expect("a piece fits an int");
                rc = write(real(file), piece.as_ptr().cast(), len, offset);
                if rc != ffi::SQLITE_OK {
                    break;
                }
                offset += i64::from(len);
                written += piece.len();
            }
        }
        if rc == ffi::SQLITE_OK {
            if p.commit_header {
                COMMIT_WRITTEN.set(true);
            }
            p.data.clear();
            p.commit_header = false;
        } else if on_error == OnError::Drop {
            // Nothing past `start` is in the file for sure.
            p.end = Some(p.start);
            p.data.clear();
            p.commit_header = false;
        } else {
            // Keep what is not written yet, from where the file stopped.
            p.data.drain(..written);
            p.start = offset;
        }
        rc
    }
}

unsafe extern "C" fn x_close(file: *mut ffi::sqlite3_file) -> c_int {
    // SAFETY: SQLite closes an open file once; the buffer is freed here only,
    // and the link of the other file is cleared before this one goes.
    unsafe {
        let shim = file.cast::<ShimFile>();
        // Whatever is still gathered belongs to no committed transaction
        // (a commit leaves the buffer empty): it is dropped, never written.
        if !(*shim).buffer.is_null() {
            drop(Box::from_raw((*shim).buffer));
            (*shim).buffer = std::ptr::null_mut();
        }
        if !(*shim).link.is_null() {
            (*(*shim).link).link = std::ptr::null_mut();
            (*shim).link = std::ptr::null_mut();
        }
        let watch = std::mem::replace(&mut (*shim).watch, std::ptr::null());
        if !watch.is_null() {
            let watch = Arc::from_raw(watch);
            watch.unmapped();
        }
        (*shim).region = std::ptr::null_mut();
        match methods(file).xClose {
            Some(close) => close(real(file)),
            None => ffi::SQLITE_OK,
        }
    }
}

/// The index of the WAL's write lock among the shared-memory locks.
const WAL_WRITE_LOCK: c_int = 0;

/// Drops the frames gathered for a transaction that ended without
/// committing (see [`x_shm_lock`]).
///
/// # Safety
/// `wal` must be null or an open WAL `ShimFile`.
unsafe fn discard(wal: *mut ShimFile) {
    // SAFETY: (caller) null or an open WAL shim whose buffer is ours.
    unsafe {
        if wal.is_null() || (*wal).buffer.is_null() {
            return;
        }
        let p = &mut *(*wal).buffer;
        if !p.data.is_empty() {
            p.data.clear();
            p.commit_header = false;
            // What the file holds past the last write that reached it is
            // not known: the next write goes straight through and tells.
            p.end = None;
        }
    }
}

/// Writes out the pending frames, then forwards the call, unless the
/// write failed.
///
/// # Safety
/// `file` must be an open `ShimFile`; `forward` gets the unix file and its
/// methods.
unsafe fn after_flush(
    file: *mut ffi::sqlite3_file,
    on_error: OnError,
    forward: impl FnOnce(&'static ffi::sqlite3_io_methods, *mut ffi::sqlite3_file) -> c_int,
) -> c_int {
    // SAFETY: (caller) an open shim file wrapping an open unix file.
    unsafe {
        let rc = flush(file, on_error);
        if rc != ffi::SQLITE_OK {
            return rc;
        }
        forward(methods(file), real(file))
    }
}

unsafe extern "C" fn x_read(
    file: *mut ffi::sqlite3_file,
    buf: *mut c_void,
    amount: c_int,
    offset: i64,
) -> c_int {
    // SAFETY: SQLite calls with an open file and a buffer of `amount` bytes.
    unsafe {
        after_flush(file, OnError::Keep, |m, f| {
            m.xRead
                .map_or(ffi::SQLITE_IOERR_READ, |read| read(f, buf, amount, offset))
        })
    }
}

unsafe extern "C" fn x_write(
    file: *mut ffi::sqlite3_file,
    data: *const c_void,
    amount: c_int,
    offset: i64,
) -> c_int {
    // SAFETY: SQLite calls with an open file and `amount` readable bytes.
    // The buffer is only reached through `pending`, one borrow at a time
    // (`flush` borrows it too).
    unsafe {
        let pending = (*file.cast::<ShimFile>()).buffer;
        let Ok(len) = usize::try_from(amount) else {
            return ffi::SQLITE_IOERR_WRITE;
        };
        let forward = |file: *mut ffi::sqlite3_file| {
            methods(file)
                .xWrite
                .map_or(ffi::SQLITE_IOERR_WRITE, |write| {
                    write(real(file), data, amount, offset)
                })
        };
        if pending.is_null() {
            return forward(file);
        }
        let until = offset + i64::from(amount);
        // A commit frame's header (bytes 4..8, the database size, non-zero
        // only there) written straight through: its page follows the same
        // way, and the commit frame is written once that page is.
        let commit_header = amount == FRAME_HEADER
            && offset >= 32
            && std::slice::from_raw_parts(data.cast::<u8>(), len)[4..8] != [0, 0, 0, 0];
        // Only the write right after a commit header written straight
        // through is that commit frame's page.
        let commit_page_at = (*pending).commit_page_at.take();
        let append = {
            let p = &mut *pending;
            if offset == 0 {
                // The log starts over (a new header): what follows overwrites
                // the old generation from the start.
                p.end = Some(0);
            }
            if p.data.is_empty() {
                // Gathering starts only at the log's header or a frame's
                // header, at the end: a frame's page always follows its
                // header the same way (gathered or straight through), so a
                // commit frame's page is never held while its header is out.
                p.end == Some(offset) && (offset == 0 || amount == FRAME_HEADER)
            } else {
                offset == p.start + p.data.len() as i64
            }
        };
        if !append {
            // A write in place (or where the log's end is not known yet):
            // everything gathered goes first, then this write, straight through.
            let rc = flush(file, OnError::Drop);
            if rc != ffi::SQLITE_OK {
                return rc;
            }
            let rc = forward(file);
            let p = &mut *pending;
            if rc == ffi::SQLITE_OK {
                p.end = Some(p.end.map_or(until, |e| e.max(until)));
                if commit_page_at == Some(offset) {
                    COMMIT_WRITTEN.set(true);
                }
            }
            p.commit_page_at = (rc == ffi::SQLITE_OK && commit_header).then_some(until);
            return rc;
        }
        let bytes = std::slice::from_raw_parts(data.cast::<u8>(), len);
        let must_flush = {
            let p = &mut *pending;
            if p.data.is_empty() {
                p.start = offset;
            }
            p.data.extend_from_slice(bytes);
            p.end = Some(until);
            if amount == FRAME_HEADER && offset >= 32 {
                // An appended frame header: bytes 4..8 are the database size
                // after the commit for a commit frame, zero otherwise. Its
                // page comes next.
                p.commit_header = bytes[4..8] != [0, 0, 0, 0];
                false
            } else {
                p.commit_header || p.data.len() >= MAX_BUFFER
            }
        };
        if must_flush {
            flush(file, OnError::Drop)
        } else {
            ffi::SQLITE_OK
        }
    }
}

unsafe extern "C" fn x_truncate(file: *mut ffi::sqlite3_file, size: i64) -> c_int {
    // SAFETY: SQLite calls with an open file.
    unsafe {
        let rc = after_flush(file, OnError::Keep, |m, f| {
            m.xTruncate
                .map_or(ffi::SQLITE_IOERR_TRUNCATE, |truncate| truncate(f, size))
        });
        let pending = (*file.cast::<ShimFile>()).buffer;
        if rc == ffi::SQLITE_OK && !pending.is_null() {
            let p = &mut *pending;
            p.end = p.end.map(|e| e.min(size));
        }
        rc
    }
}

unsafe extern "C" fn x_sync(file: *mut ffi::sqlite3_file, flags: c_int) -> c_int {
    // SAFETY: SQLite calls with an open file.
    unsafe {
        let is_wal = !(*file.cast::<ShimFile>()).buffer.is_null();
        let rc = after_flush(file, OnError::Drop, |m, f| {
            m.xSync
                .map_or(ffi::SQLITE_IOERR_FSYNC, |sync| sync(f, flags))
        });
        if rc == ffi::SQLITE_OK
            && is_wal
            && COMMIT_WRITTEN.get()
            && crate::fault::take_wal_sync_failure()
        {
            return ffi::SQLITE_IOERR_FSYNC;
        }
        rc
    }
}

unsafe extern "C" fn x_file_size(file: *mut ffi::sqlite3_file, size: *mut i64) -> c_int {
    // SAFETY: SQLite calls with an open file and a place for the size.
    unsafe {
        after_flush(file, OnError::Keep, |m, f| {
            m.xFileSize
                .map_or(ffi::SQLITE_IOERR_FSTAT, |file_size| file_size(f, size))
        })
    }
}

unsafe extern "C" fn x_file_control(
    file: *mut ffi::sqlite3_file,
    op: c_int,
    arg: *mut c_void,
) -> c_int {
    // SAFETY: SQLite calls with an open file; `arg` is for the unix VFS.
    unsafe {
        after_flush(file, OnError::Keep, |m, f| {
            m.xFileControl
                .map_or(ffi::SQLITE_NOTFOUND, |control| control(f, op, arg))
        })
    }
}

// The rest only forward to the unix file.

unsafe extern "C" fn x_lock(file: *mut ffi::sqlite3_file, level: c_int) -> c_int {
    // SAFETY: forwarding an open file's call to the file it wraps.
    unsafe {
        methods(file)
            .xLock
            .map_or(ffi::SQLITE_OK, |f| f(real(file), level))
    }
}

unsafe extern "C" fn x_unlock(file: *mut ffi::sqlite3_file, level: c_int) -> c_int {
    // SAFETY: forwarding an open file's call to the file it wraps.
    unsafe {
        methods(file)
            .xUnlock
            .map_or(ffi::SQLITE_OK, |f| f(real(file), level))
    }
}

unsafe extern "C" fn x_check_reserved_lock(file: *mut ffi::sqlite3_file, out: *mut c_int) -> c_int {
    // SAFETY: forwarding an open file's call to the file it wraps.
    unsafe {
        methods(file)
            .xCheckReservedLock
            .map_or(ffi::SQLITE_OK, |f| f(real(file), out))
    }
}

unsafe extern "C" fn x_sector_size(file: *mut ffi::sqlite3_file) -> c_int {
    // SAFETY: forwarding an open file's call to the file it wraps.
    unsafe { methods(file).xSectorSize.map_or(4096, |f| f(real(file))) }
}

unsafe extern "C" fn x_device_characteristics(file: *mut ffi::sqlite3_file) -> c_int {
    // SAFETY: forwarding an open file's call to the file it wraps.
    unsafe {
        methods(file)
            .xDeviceCharacteristics
            .map_or(0, |f| f(real(file)))
    }
}

unsafe extern "C" fn x_shm_map(
    file: *mut ffi::sqlite3_file,
    page: c_int,
    size: c_int,
    extend: c_int,
    out: *mut *mut c_void,
) -> c_int {
    // SAFETY: forwarding an open file's call to the file it wraps; a
    // region SQLite got stays mapped until it unmaps the index.
    unsafe {
        let rc = methods(file).xShmMap.map_or(ffi::SQLITE_IOERR_SHMMAP, |f| {
            f(real(file), page, size, extend, out)
        });
        if rc == ffi::SQLITE_OK && page == 0 && !(*out).is_null() {
            (*file.cast::<ShimFile>()).region = *out;
            if let Some(w) = watch_of(file) {
                w.mapped(*out);
            }
        }
        rc
    }
}

unsafe extern "C" fn x_shm_lock(
    file: *mut ffi::sqlite3_file,
    offset: c_int,
    n: c_int,
    flags: c_int,
) -> c_int {
    // SAFETY: forwarding an open file's call to the file it wraps; `link`
    // of a database file is null or its open WAL shim.
    unsafe {
        let write_lock = offset <= WAL_WRITE_LOCK && WAL_WRITE_LOCK < offset + n;
        let watch = watch_of(file).filter(|_| write_lock);
        // What the header says as the lock goes is this connection's doing:
        // read before, so no other commit can come between.
        if flags & ffi::SQLITE_SHM_UNLOCK != 0
            && let Some(w) = watch
        {
            w.releasing();
        }
        let rc = methods(file)
            .xShmLock
            .map_or(ffi::SQLITE_IOERR_SHMLOCK, |f| {
                f(real(file), offset, n, flags)
            });
        if rc == ffi::SQLITE_OK
            && flags == ffi::SQLITE_SHM_LOCK | ffi::SQLITE_SHM_EXCLUSIVE
            && let Some(w) = watch
        {
            w.acquired();
        }
        // The write lock released: the write transaction is over. A commit
        // left the buffer empty; anything still in it was rolled back, and
        // written later it would land over frames another connection may
        // commit at the same offsets meanwhile.
        if rc == ffi::SQLITE_OK && flags & ffi::SQLITE_SHM_UNLOCK != 0 && write_lock {
            discard((*file.cast::<ShimFile>()).link);
        }
        rc
    }
}

unsafe extern "C" fn x_shm_barrier(file: *mut ffi::sqlite3_file) {
    // SAFETY: forwarding an open file's call to the file it wraps.
    unsafe {
        if let Some(f) = methods(file).xShmBarrier {
            f(real(file));
        }
    }
}

unsafe extern "C" fn x_shm_unmap(file: *mut ffi::sqlite3_file, delete: c_int) -> c_int {
    // SAFETY: forwarding an open file's call to the file it wraps; the
    // watch lets go of the region before it goes.
    unsafe {
        (*file.cast::<ShimFile>()).region = std::ptr::null_mut();
        if let Some(w) = watch_of(file) {
            w.unmapped();
        }
        methods(file)
            .xShmUnmap
            .map_or(ffi::SQLITE_OK, |f| f(real(file), delete))
    }
}

unsafe extern "C" fn x_fetch(
    file: *mut ffi::sqlite3_file,
    offset: i64,
    amount: c_int,
    out: *mut *mut c_void,
) -> c_int {
    // SAFETY: forwarding an open file's call to the file it wraps.
    unsafe {
        match methods(file).xFetch {
            Some(f) => f(real(file), offset, amount, out),
            None => {
                *out = std::ptr::null_mut();
                ffi::SQLITE_OK
            }
        }
    }
}

unsafe extern "C" fn x_unfetch(file: *mut ffi::sqlite3_file, offset: i64, p: *mut c_void) -> c_int {
    // SAFETY: forwarding an open file's call to the file it wraps.
    unsafe {
        methods(file)
            .xUnfetch
            .map_or(ffi::SQLITE_OK, |f| f(real(file), offset, p))
    }
}

static PASS_METHODS: ffi::sqlite3_io_methods = ffi::sqlite3_io_methods {
    iVersion: 3,
    xClose: Some(x_close),
    xRead: Some(x_read),
    xWrite: Some(x_write),
    xTruncate: Some(x_truncate),
    xSync: Some(x_sync),
    xFileSize: Some(x_file_size),
    xLock: Some(x_lock),
    xUnlock: Some(x_unlock),
    xCheckReservedLock: Some(x_check_reserved_lock),
    xFileControl: Some(x_file_control),
    xSectorSize: Some(x_sector_size),
    xDeviceCharacteristics: Some(x_device_characteristics),
    xShmMap: Some(x_shm_map),
    xShmLock: Some(x_shm_lock),
    xShmBarrier: Some(x_shm_barrier),
    xShmUnmap: Some(x_shm_unmap),
    xFetch: Some(x_fetch),
    xUnfetch: Some(x_unfetch),
};
