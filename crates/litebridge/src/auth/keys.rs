//! API keys in `litebridge_keys`: created with a random secret shown once,
//! stored only as its SHA-256, listed without secrets, revoked by name.
//!
//! A secret is `lb_` and 32 random bytes from the operating system
//! (base64url, 46 characters). With 256 bits of entropy a plain SHA-256 is
//! the right hash: a slow password hash protects guessable secrets, and these
//! are not guessable, while verifying one costs well under a microsecond on
//! every request. Every change bumps `keys_version` in `litebridge_meta` in
//! the same transaction, which is how running servers notice (see
//! [`super::Auth::refresh`]).

use std::time::{Duration, SystemTime};

use base64::Engine as _;
use rusqlite::OptionalExtension as _;
use sha2::Digest as _;

use crate::auth::quota::Tiers;
use crate::auth::scope::Scopes;
use crate::db::Database;
use crate::error::{Error, Result};

/// What `keys create` asks for.
#[derive(Debug, Clone)]
pub struct NewKey {
    /// A unique name (letters, digits, `.`, `_`, `-`; at most 64); one is
    /// made up when absent.
    pub name: Option<String>,
    /// What the key may do.
    pub scopes: Scopes,
    /// Its tier (quotas).
    pub tier: String,
}

/// A key as listed: everything but the secret, which is never stored.
#[derive(Debug, Clone, PartialEq)]
pub struct KeyInfo {
    /// Row id.
    pub id: i64,
    /// Unique name.
    pub name: String,
    /// What it may do.
    pub scopes: Scopes,
    /// Its tier.
    pub tier: String,
    /// When it was created.
    pub created: SystemTime,
    /// When it was revoked, if it was.
    pub revoked: Option<SystemTime>,
    /// When it was last used (as of the last flush of the counters).
    pub last_used: Option<SystemTime>,
}

/// The SHA-256 of a secret.
pub(crate) fn hash(secret: &str) -> [u8; 32] {
    sha2::Sha256::digest(secret.as_bytes()).into()
}

pub(crate) fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    bytes
        .iter()
        .fold(String::with_capacity(bytes.len() * 2), |mut s, b| {
            let _ = write!(s, "{b:02x}");
            s
        })
}

pub(crate) fn unhex(s: &str) -> Option<[u8; 32]> {
    let mut out = [0u8; 32];
    if s.len() != 64 {
        return None;
    }
    for (i, o) in out.iter_mut().enumerate() {
        *o = u8::from_str_radix(s.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

fn random_bytes<const N: usize>() -> Result<[u8; N]> {
    let mut buf = [0u8; N];
    getrandom::fill(&mut buf).map_err(|e| Error::Internal {
        message: format!("the operating system gave no random bytes: {e}"),
    })?;
    Ok(buf)
}

fn check_name(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(Error::invalid(
            "name",
            format!("{name:?} is not a key name; use 1 to 64 letters, digits, '.', '_' or '-'"),
        ))
    }
}

pub(crate) fn unix_ms(t: SystemTime) -> i64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

pub(crate) fn from_unix_ms(ms: i64) -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_millis(ms.max(0) as u64)
}

pub(crate) const BUMP_VERSION: &str =
    "INSERT INTO main.litebridge_meta(key, value) VALUES ('keys_version', '1')
     ON CONFLICT(key) DO UPDATE SET value = CAST(value AS INTEGER) + 1";

/// Creates a key; returns it and its secret, which exists nowhere else.
///
/// # Errors
/// [`Error::InvalidArgument`] for a bad name, an unknown tier, no scope or a
/// name already in use (revoked keys keep their names).
pub async fn create_key(db: &Database, tiers: &Tiers, new: NewKey) -> Result<(KeyInfo, String)> {
    tiers.check(&new.tier)?;
    if new.scopes == Scopes::NONE {
        return Err(Error::invalid("scope", "a key needs at least one scope"));
    }
    let name = match new.name {
        Some(n) => {
            check_name(&n)?;
            n
        }
        None => format!("key-{}", hex(&random_bytes::<4>()?)),
    };
    let secret = format!(
        "lb_{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(random_bytes::<32>()?)
    );
    let digest = hex(&hash(&secret));
    let created = SystemTime::now();
    let (scopes, tier) = (new.scopes, new.tier);
    let (n, t) = (name.clone(), tier.clone());
    let id = db
        .write(move |c| {
            let taken: bool = c.query_row(
                "SELECT EXISTS(SELECT 1 FROM main.litebridge_keys WHERE name = ?1)",
                [&n],
                |r| r.get(0),
            )?;
            if taken {
                return Err(Error::invalid(
                    "name",
                    format!("a key named {n:?} exists already (names of revoked keys stay taken)"),
                ));
            }
            c.execute(
                "INSERT INTO main.litebridge_keys(name, hash, scopes, tier, created_at) VALUES (?1, ?2, ?3, ?4, ?5)",
                rusqlite::params![n, digest, scopes.to_string(), t, unix_ms(created)],
            )?;
            c.execute(BUMP_VERSION, [])?;
            Ok(c.last_insert_rowid())
        })
        .await?;
    let info = KeyInfo {
        id,
        name,
        scopes,
        tier,
        created: from_unix_ms(unix_ms(created)),
        revoked: None,
        last_used: None,
    };
    Ok((info, secret))
}

/// Every key, active and revoked, oldest first.
///
/// # Errors
/// SQLite errors.
pub async fn list_keys(db: &Database) -> Result<Vec<KeyInfo>> {
    db.read(|c| {
        let mut stmt = c.prepare_cached(
            "SELECT id, name, scopes, tier, created_at, revoked_at, last_used_at
             FROM main.litebridge_keys ORDER BY id",
        )?;
        let rows = stmt.query_map([], |r| {
            Ok((
                r.get::<_, i64>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, String>(2)?,
                r.get::<_, String>(3)?,
                r.get::<_, i64>(4)?,
                r.get::<_, Option<i64>>(5)?,
                r.get::<_, Option<i64>>(6)?,
            ))
        })?;
        let mut out = Vec::new();
        for row in rows {
            let (id, name, scopes, tier, created, revoked, last_used) = row?;
            out.push(KeyInfo {
                id,
                name,
                scopes: scopes.parse::<Scopes>().unwrap_or(Scopes::NONE),
                tier,
                created: from_unix_ms(created),
                revoked: revoked.map(from_unix_ms),
                last_used: last_used.map(from_unix_ms),
            });
        }
        Ok(out)
    })
    .await
}

/// Revokes the active key named `name`; false when there is none. Servers
/// sharing the file stop accepting it at their next refresh (a second by
/// default), the server that revokes it at once.
///
/// # Errors
/// SQLite errors.
pub async fn revoke_key(db: &Database, name: &str) -> Result<bool> {
    let name = name.to_owned();
    let now = unix_ms(SystemTime::now());
    db.write(move |c| {
        let n = c.execute(
            "UPDATE main.litebridge_keys SET revoked_at = ?2 WHERE name = ?1 AND revoked_at IS NULL",
            rusqlite::params![name, now],
        )?;
        if n > 0 {
            c.execute(BUMP_VERSION, [])?;
        }
        Ok(n > 0)
    })
    .await
}

/// The version of the key table, bumped by every change.
pub(crate) fn version(c: &rusqlite::Connection) -> Result<Option<String>> {
    Ok(c.query_row(
        "SELECT value FROM main.litebridge_meta WHERE key = 'keys_version'",
        [],
        |r| r.get(0),
    )
    .optional()?)
}
