//! Whether another process has a SQLite database open, asked of the kernel.
//!
//! Every SQLite connection that has opened a WAL database's `-shm` file holds
//! a shared POSIX lock on one byte of it (`UNIX_SHM_DMS`, byte 128: SQLite's
//! "dead-man switch") until it closes. `F_GETLK` for a write lock on that
//! byte names a conflicting lock held by *another* process (a process never
//! conflicts with its own POSIX locks), whatever its PID namespace, which
//! `/proc/locks` hides inside containers. SQLite asks the same question the
//! same way (`unixIsSharingShmNode`).
//!
//! The question needs a descriptor of the file, one this module neither
//! opens nor closes: closing *any* descriptor of a file drops every POSIX
//! lock the process holds on it, SQLite's included. So it finds SQLite's
//! own by its device and inode among the process's open descriptors
//! (`/proc/self/fd`, or `/dev/fd` elsewhere: a system listing only 0-2 there
//! never finds it), remembers its number, and checks before and after each
//! question that the number still names that file (SQLite may close it and
//! the number be reused); after a scan that found none, the next waits a
//! second. When any of that fails the answer is "yes, somebody else": the
//! caller then stays out of everyone's way.

use std::path::Path;
use std::time::{Duration, Instant};

/// A file's device and inode.
pub(crate) type FileId = (u64, u64);

/// The file at `path`'s identity, following links.
pub(crate) fn file_id(path: &Path) -> Option<FileId> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        std::fs::metadata(path).ok().map(|m| (m.dev(), m.ino()))
    }
    #[cfg(not(unix))]
    {
        let _ = path;
        None
    }
}

/// Remembers which descriptor of this process is SQLite's on a `-shm` file.
#[derive(Debug, Default)]
pub(crate) struct Peers {
    fd: Option<i32>,
    /// When a scan last found none: the next scans wait a second (a server
    /// may hold thousands of descriptors).
    missed: Option<Instant>,
}

impl Peers {
    /// Whether a process other than this one has the database whose `-shm`
    /// file is `shm` open (true when that cannot be told).
    pub(crate) fn another_process_has_open(&mut self, shm: &Path) -> bool {
        let Some(id) = file_id(shm) else { return true };
        let fd = match self.fd.filter(|&fd| names(fd, id)) {
            Some(fd) => fd,
            None if self.missed.is_some_and(|t| t.elapsed() < RESCAN) => return true,
            None => match find(id) {
                Some(fd) => {
                    self.fd = Some(fd);
                    self.missed = None;
                    fd
                }
                None => {
                    self.missed = Some(Instant::now());
                    return true;
                }
            },
        };
        let held = locked_by_another(fd);
        // Closed and reused while asking: the answer was about another file.
        if !names(fd, id) {
            self.fd = None;
            return true;
        }
        held.unwrap_or(true)
    }
}

/// SQLite's byte of the `-shm` file every open connection holds shared.
const SHM_DMS: i64 = 128;

/// How long after a scan that found no descriptor the next one may run.
const RESCAN: Duration = Duration::from_secs(1);

/// The descriptor of this process open on the file `id`, if any.
fn find(id: FileId) -> Option<i32> {
    let dir = if cfg!(target_os = "linux") {
        "/proc/self/fd"
    } else {
        "/dev/fd"
    };
    std::fs::read_dir(dir)
        .ok()?
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .find(|&fd| names(fd, id))
}

/// Whether descriptor `fd` is open on the file `id`.
#[cfg(unix)]
#[allow(unsafe_code)]
fn names(fd: i32, id: FileId) -> bool {
    // SAFETY: `st` is a plain struct owned by this frame, written by fstat;
    // fstat on a descriptor that is not open fails with EBADF and no effect.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    if unsafe { libc::fstat(fd, &mut st) } != 0 {
        return false;
    }
    #[allow(clippy::unnecessary_cast, clippy::useless_conversion)]
    let found = (st.st_dev as u64, u64::from(st.st_ino));
    found == id
}

#[cfg(not(unix))]
fn names(_fd: i32, _id: FileId) -> bool {
    false
}

/// `Some(true)` when another process holds a lock on SQLite's byte of the
/// file `fd` is open on; `None` when the kernel would not say.
#[cfg(unix)]
#[allow(unsafe_code)]
// F_UNLCK is a c_int on Linux and a c_short on the BSDs and macOS.
#[allow(clippy::useless_conversion)]
fn locked_by_another(fd: i32) -> Option<bool> {
    // SAFETY: `lock` is a plain struct owned by this frame; F_GETLK reads
    // and writes exactly one `flock` through the pointer and takes no lock.
    let mut lock: libc::flock = unsafe { std::mem::zeroed() };
    lock.l_type = libc::F_WRLCK as _;
    lock.l_whence = libc::SEEK_SET as _;
    lock.l_start = SHM_DMS as _;
    lock.l_len = 1;
    if unsafe { libc::fcntl(fd, libc::F_GETLK, &mut lock) } != 0 {
        return None;
    }
    Some(i32::from(lock.l_type) != i32::from(libc::F_UNLCK))
}

#[cfg(not(unix))]
fn locked_by_another(_fd: i32) -> Option<bool> {
    None
}

#[cfg(all(test, unix))]
pub(crate) mod tests {
    use super::*;

    /// Another process (python3's sqlite3) with `db` open, read once, until
    /// its stdin closes; `None` without python3 (the caller skips).
    pub(crate) fn hold_from_another_process(db: &Path) -> Option<std::process::Child> {
        let Ok(mut other) = std::process::Command::new("python3")
            .args([
                "-c",
                "import sqlite3, sys\n\
                 c = sqlite3.connect(sys.argv[1])\n\
                 c.execute('SELECT count(*) FROM t').fetchall()\n\
                 print('open', flush=True)\n\
                 sys.stdin.read()",
            ])
            .arg(db)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
        else {
            eprintln!("skipped: no python3 to hold the file from another process");
            return None;
        };
        let mut line = String::new();
        std::io::BufRead::read_line(
            &mut std::io::BufReader::new(other.stdout.take().unwrap()),
            &mut line,
        )
        .unwrap();
        assert_eq!(line.trim(), "open");
        Some(other)
    }

    #[test]
    fn another_process_on_the_file_is_seen_and_this_one_is_not() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("p.db");
        let shm = dir.path().join("p.db-shm");
        let conn = rusqlite::Connection::open(&db).unwrap();
        conn.execute_batch("PRAGMA journal_mode = WAL; CREATE TABLE t(a);")
            .unwrap();
        let mut peers = Peers::default();
        assert!(
            !peers.another_process_has_open(&shm),
            "our own lock counted"
        );
        let Some(mut other) = hold_from_another_process(&db) else {
            return;
        };
        assert!(peers.another_process_has_open(&shm));
        drop(other.stdin.take());
        other.wait().unwrap();
        assert!(!peers.another_process_has_open(&shm));
        // Without SQLite's descriptor (closed), nobody can be asked: "yes".
        drop(conn);
        assert!(peers.another_process_has_open(&shm));
    }
}
