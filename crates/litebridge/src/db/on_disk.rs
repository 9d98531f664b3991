//! Whether the database litebridge has open is still the file at its path.
//!
//! A database file removed (`rm`) or replaced (`mv` over it) while
//! litebridge has it open goes on taking writes:
//! SQLite writes to the inode it opened, which no path names any more, and
//! every write acknowledged since is lost when the process ends (an
//! operator's audit saw a minute of writes acknowledged, read back, and
//! gone at the restart, with `/ready` at 200 throughout). The same holds
//! for the log beside it (`-wal`): its commits not yet copied into the
//! database go with it.
//!
//! So the writer looks before each batch: one `stat` of the database's path
//! and one of its log's (about a microsecond each, a batch at a time), and
//! a batch is refused, nothing of it written, once either is not the file
//! litebridge opened (`unavailable`: restart litebridge to open the file
//! now there). `/ready` says so too. A file changed between the look and
//! the batch's COMMIT is caught at the next batch. litebridge's own restore
//! replaces a database's content in place, so the file stays the same one.
//!
//! Not seen: a file overwritten in place (`cp backup.db app.db` keeps the
//! inode), which SQLite cannot tell from its own pages; litebridge's next
//! checkpoint writes over the copy. A backup goes back with `litebridge
//! restore`, with litebridge stopped (review 142).

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use crate::error::Error;

/// The files of one database as they were when the writer opened them.
#[derive(Debug, Default)]
pub(crate) struct OnDisk {
    main: OnceLock<Identity>,
    wal: OnceLock<Identity>,
}

/// A file: its device and inode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Identity(u64, u64);

fn identity(path: &Path) -> std::io::Result<Identity> {
    std::fs::metadata(path).map(|m| Identity(m.dev(), m.ino()))
}

fn wal_path(path: &Path) -> PathBuf {
    let mut p = path.as_os_str().to_owned();
    p.push("-wal");
    PathBuf::from(p)
}

impl OnDisk {
    /// Notes the files at `path` (once each: a writer opened again later
    /// must find the same ones), after the writer opened the database.
    pub(crate) fn note(&self, path: &Path) {
        if let Ok(id) = identity(path) {
            let _ = self.main.set(id);
        }
        if let Ok(id) = identity(&wal_path(path)) {
            let _ = self.wal.set(id);
        }
    }

    /// Why the files at `path` are no longer those noted, if they are not.
    /// A look that fails for another reason than the file's absence (a
    /// permission) says nothing.
    pub(crate) fn changed(&self, path: &Path) -> Option<String> {
        let look = |noted: &OnceLock<Identity>, at: &Path, what: &str| {
            let noted = noted.get()?;
            match identity(at) {
                Ok(id) if id == *noted => None,
                Ok(_) => Some(format!(
                    "{what} {} was replaced by another file while litebridge had it open",
                    at.display()
                )),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Some(format!(
                    "{what} {} was removed while litebridge had it open",
                    at.display()
                )),
                Err(_) => None,
            }
        };
        look(&self.main, path, "the database file")
            .or_else(|| look(&self.wal, &wal_path(path), "its log"))
    }

    /// The error a write gets while [`changed`](Self::changed) says why.
    pub(crate) fn refusal(why: &str) -> Error {
        Error::Unavailable {
            what: "database",
            reason: format!(
                "{why}: writes would go to a file no path names, lost when litebridge stops, so \
                 nothing of this request was written; restart litebridge to open the file now \
                 at that path (or put the original back)"
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_removed_or_replaced_is_told_apart_from_the_one_noted() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("a.db");
        std::fs::write(&db, b"one").unwrap();
        std::fs::write(wal_path(&db), b"log").unwrap();
        let on_disk = OnDisk::default();
        on_disk.note(&db);
        assert_eq!(on_disk.changed(&db), None);
        // Written in place: the same file.
        std::fs::write(&db, b"two").unwrap();
        assert_eq!(on_disk.changed(&db), None);
        let other = dir.path().join("b.db");
        std::fs::write(&other, b"other").unwrap();
        std::fs::rename(&other, &db).unwrap();
        assert!(on_disk.changed(&db).unwrap().contains("replaced"));
        std::fs::remove_file(&db).unwrap();
        assert!(on_disk.changed(&db).unwrap().contains("removed"));

        let fresh = OnDisk::default();
        std::fs::write(&db, b"one").unwrap();
        fresh.note(&db);
        std::fs::remove_file(wal_path(&db)).unwrap();
        let why = fresh.changed(&db).unwrap();
        assert!(why.contains("log") && why.contains("-wal"), "{why}");
    }
}
