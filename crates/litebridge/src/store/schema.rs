//! litebridge's own tables and their versioned migrations, run at open.
//!
//! The version lives in `litebridge_meta`, not in `PRAGMA user_version`: that
//! pragma belongs to the application whose data shares the file (and requests
//! may set it), so litebridge keeping its schema there would be clobbered or
//! clobber it. Every table litebridge owns starts with `litebridge_`.
//!
//! Migrations run in one write, so a database is at one version or the next,
//! never in between. A database written by a newer litebridge is refused.
//!
//! Every statement names its schema (`main.`), and a migration after the
//! first creates its tables with plain `CREATE TABLE`: a table of the same
//! name that someone else made first is an error, never adopted. The one
//! exception is the idempotency records' table (3 -> 4), which a keyed
//! write may have made first (`db/claims.rs`): it is adopted only if its
//! definition, and its index's, are exactly litebridge's. After migrating,
//! anything in litebridge's namespace that litebridge did not create (a
//! trigger on one of its tables, an extra table or view) stops the open:
//! client SQL cannot make such an object, so finding one means the file was
//! tampered with.

use crate::db::Database;
use crate::error::{Error, Result};

/// The schema version this build writes.
pub const SCHEMA_VERSION: i64 = 4;

/// Migration `n` takes a database from version `n` to `n + 1`.
const MIGRATIONS: &[&str] = &[
    // 0 -> 1: the three stores. `IF NOT EXISTS` here only: the cache table
    // predates versioning, and a file at version 0 has never been served (a
    // server migrates before it answers anyone), so nothing in it came from a
    // client. Every later migration uses plain `CREATE`.
    "CREATE TABLE IF NOT EXISTS main.litebridge_cache(
         key TEXT PRIMARY KEY,
         value TEXT NOT NULL,
         expires_at INTEGER
     ) WITHOUT ROWID;
     CREATE TABLE IF NOT EXISTS main.litebridge_state(
         run_id TEXT PRIMARY KEY,
         state TEXT NOT NULL,
         status TEXT,
         total_steps INTEGER,
         error_message TEXT,
         execution_time_ms INTEGER,
         memory_usage_mb REAL,
         created_at INTEGER NOT NULL,
         updated_at INTEGER NOT NULL
     ) WITHOUT ROWID;
     CREATE INDEX IF NOT EXISTS main.litebridge_state_status ON litebridge_state(status, run_id);
     CREATE TABLE IF NOT EXISTS main.litebridge_memory(
         namespace TEXT NOT NULL,
         key TEXT NOT NULL,
         value TEXT NOT NULL,
         expires_at INTEGER,
         updated_at INTEGER NOT NULL,
         PRIMARY KEY (namespace, key)
     ) WITHOUT ROWID;
     CREATE INDEX IF NOT EXISTS main.litebridge_memory_expiry ON litebridge_memory(expires_at)
         WHERE expires_at IS NOT NULL;",
    // 1 -> 2: API keys (hashes only) and their quota counters.
    "CREATE TABLE main.litebridge_keys(
         id INTEGER PRIMARY KEY,
         name TEXT NOT NULL UNIQUE,
         hash TEXT NOT NULL UNIQUE,
         scopes TEXT NOT NULL,
         tier TEXT NOT NULL,
         created_at INTEGER NOT NULL,
         revoked_at INTEGER,
         last_used_at INTEGER
     );
     CREATE TABLE main.litebridge_quota(
         key_id INTEGER NOT NULL,
         period TEXT NOT NULL,
         count INTEGER NOT NULL,
         PRIMARY KEY (key_id, period)
     ) WITHOUT ROWID;",
    // 2 -> 3: the cache's expired rows are found by index and swept.
    "CREATE INDEX main.litebridge_cache_expiry ON litebridge_cache(expires_at)
         WHERE expires_at IS NOT NULL;",
    // 3 -> 4: the records of idempotency keys. `IF NOT EXISTS`: a keyed
    // write on a database never migrated makes them with the same
    // statement (see `db/claims.rs`); client SQL cannot make objects of
    // litebridge's.
    crate::db::CLAIMS_TABLE.0,
];

// One migration per version.
const _: () = assert!(MIGRATIONS.len() as i64 == SCHEMA_VERSION);

/// Every object litebridge creates, as (type, name, table): tables and
/// their indexes; SQLite's own `sqlite_autoindex_*` indexes of these
/// tables are expected too.
const OWN_OBJECTS: &[(&str, &str, &str)] = &[
    ("table", "litebridge_meta", "litebridge_meta"),
    ("table", "litebridge_cache", "litebridge_cache"),
    ("index", "litebridge_cache_expiry", "litebridge_cache"),
    ("table", "litebridge_state", "litebridge_state"),
    ("index", "litebridge_state_status", "litebridge_state"),
    ("table", "litebridge_memory", "litebridge_memory"),
    ("index", "litebridge_memory_expiry", "litebridge_memory"),
    ("table", "litebridge_keys", "litebridge_keys"),
    ("table", "litebridge_quota", "litebridge_quota"),
    ("table", "litebridge_claims", "litebridge_claims"),
    ("index", "litebridge_claims_created", "litebridge_claims"),
    ("index", "litebridge_claims_clock", "litebridge_claims"),
];

/// Objects named `litebridge_*`, or attached to such a table, that
/// litebridge did not create, as `type name`. The records' table, which a
/// migration may find made already (`IF NOT EXISTS`, see `db/claims.rs`),
/// must also be defined as litebridge defines it.
fn foreign_objects(c: &rusqlite::Connection) -> rusqlite::Result<Vec<String>> {
    let mut stmt = c.prepare(
        "SELECT type, name, tbl_name, sql FROM main.sqlite_schema
         WHERE (name LIKE 'litebridge\\_%' ESCAPE '\\' OR tbl_name LIKE 'litebridge\\_%' ESCAPE '\\')
           AND NOT (type = 'index' AND name LIKE 'sqlite\\_autoindex\\_litebridge\\_%' ESCAPE '\\')
         ORDER BY name",
    )?;
    let rows = stmt.query_map([], |r| {
        Ok((
            r.get::<_, String>(0)?,
            r.get::<_, String>(1)?,
            r.get::<_, String>(2)?,
            r.get::<_, Option<String>>(3)?,
        ))
    })?;
    // Their text is compared as SQLite keeps it: never edit them (a new
    // shape is a new migration).
    let defined = [
        ("litebridge_claims", crate::db::CLAIMS_TABLE.1),
        (
            "litebridge_claims_created",
            "CREATE INDEX litebridge_claims_created ON litebridge_claims(created_at)",
        ),
        (
            "litebridge_claims_clock",
            "CREATE INDEX litebridge_claims_clock ON litebridge_claims(clock_at, created_at)",
        ),
    ];
    let mut foreign = Vec::new();
    for row in rows {
        let (kind, name, table, sql) = row?;
        let own = OWN_OBJECTS.iter().any(|(k, n, t)| {
            k == &kind && n.eq_ignore_ascii_case(&name) && t.eq_ignore_ascii_case(&table)
        });
        let redefined = defined
            .iter()
            .any(|(n, d)| name.eq_ignore_ascii_case(n) && sql.as_deref() != Some(*d));
        if !own || redefined {
            foreign.push(format!("{kind} {name}"));
        }
    }
    Ok(foreign)
}

/// Brings the database to [`SCHEMA_VERSION`]; returns the version it found.
///
/// # Errors
/// [`Error::Unavailable`] naming both versions when the database was written
/// by a newer litebridge, or naming the objects in litebridge's namespace
/// that it did not create; SQLite errors from a migration (nothing applied).
pub async fn migrate(db: &Database) -> Result<i64> {
    let path = db.path().display().to_string();
    db.write_own(move |c| {
        c.execute_batch(
            "CREATE TABLE IF NOT EXISTS main.litebridge_meta(key TEXT PRIMARY KEY, value TEXT NOT NULL) WITHOUT ROWID",
        )?;
        let found: i64 = c
            .query_row(
                "SELECT CAST(value AS INTEGER) FROM main.litebridge_meta WHERE key = 'schema_version'",
                [],
                |r| r.get(0),
            )
            .or_else(|e| match e {
                rusqlite::Error::QueryReturnedNoRows => Ok(0),
                other => Err(other),
            })?;
        if found > SCHEMA_VERSION {
            return Err(Error::Unavailable {
                what: "database",
                reason: format!(
                    "{path} was written by a newer litebridge (schema version {found}; this one knows up to {SCHEMA_VERSION}); upgrade litebridge or restore an older backup"
                ),
            });
        }
        // Before anything is written: a trigger someone made on
        // litebridge's tables refuses litebridge's writes (see `guard`), and
        // this says which and what to do (review 213).
        refuse_foreign(c, &path)?;
        for (from, sql) in MIGRATIONS.iter().enumerate().skip(found as usize) {
            c.execute_batch(sql).map_err(|e| Error::Internal {
                message: format!("schema migration {from} -> {} failed: {e}", from + 1),
            })?;
        }
        c.execute(
            "INSERT INTO main.litebridge_meta(key, value) VALUES ('schema_version', ?1)
             ON CONFLICT(key) DO UPDATE SET value = excluded.value",
            [SCHEMA_VERSION.to_string()],
        )?;
        // Drawn once; its copies (backups, restores) carry it, and a backup
        // replaces only a file that has it (`litebridge backup --replace`).
        // A file served is no backup of anything, whatever it was copied
        // from (a backup served directly).
        c.execute_batch(
            "INSERT OR IGNORE INTO main.litebridge_meta(key, value)
             VALUES ('database_id', lower(hex(randomblob(16))));
             DELETE FROM main.litebridge_meta WHERE key = 'backup_of';",
        )?;
        refuse_foreign(c, &path)?;
        Ok(found)
    })
    .await
}

/// Refuses the file at `path` when it holds objects in litebridge's
/// namespace that litebridge did not create, naming them.
fn refuse_foreign(c: &rusqlite::Connection, path: &str) -> Result<()> {
    let mut foreign = foreign_objects(c)?;
    if let Some((table, parent)) = crate::db::foreign_key_to_own(c)? {
        foreign.push(format!("table {table} (a foreign key to {parent})"));
    }
    if foreign.is_empty() {
        return Ok(());
    }
    Err(Error::Unavailable {
        what: "database",
        reason: format!(
            "{path} has objects in litebridge's namespace that litebridge did not create: {}; \
             review them and the API keys (`SELECT name, scopes, revoked_at FROM litebridge_keys` \
             in the sqlite3 shell: litebridge opens no such file), drop them with the sqlite3 \
             shell (litebridge's SQL cannot touch its own tables), then start again",
            foreign.join(", ")
        ),
    })
}
