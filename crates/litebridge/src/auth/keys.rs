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
use sha2::Digest as _;

use crate::auth::quota::Tiers;
use crate::auth::scope::Scopes;
use crate::backend::Backend;
use crate::error::{Error, Result};
use crate::params;
use crate::value::{Params, Value};

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

pub(crate) fn bump_version(db: &Backend) -> String {
    format!(
        "INSERT INTO {t}(key, value) VALUES ('keys_version', '1')
         ON CONFLICT(key) DO UPDATE
             SET value = CAST(CAST(litebridge_meta.value AS INTEGER) + 1 AS TEXT)",
        t = db.own("meta")
    )
}

/// Creates a key; returns it and its secret, which exists nowhere else.
///
/// # Errors
/// [`Error::InvalidArgument`] for a bad name, an unknown tier, no scope or a
/// name already in use (revoked keys keep their names).
pub async fn create_key(
    db: impl Into<Backend>,
    tiers: &Tiers,
    new: NewKey,
) -> Result<(KeyInfo, String)> {
    let db = db.into();
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
    let taken = |e: Error| match &e {
        // SQLite's SQLITE_CONSTRAINT_UNIQUE, PostgreSQL's unique_violation:
        // the name is the only unique column a new key can collide on (a
        // 32-byte random secret's hash does not).
        Error::Sql { extended_code, .. } if *extended_code == 2067 => name_taken(&name),
        Error::Postgres { sqlstate, .. } if sqlstate == "23505" => name_taken(&name),
        _ => e,
    };
    db.own_batch(vec![
        (
            format!(
                "INSERT INTO {}(name, hash, scopes, tier, created_at) VALUES (?1, ?2, ?3, ?4, ?5)",
                db.own("keys")
            ),
            params![
                name.clone(),
                digest,
                scopes.to_string(),
                tier.clone(),
                unix_ms(created)
            ],
        ),
        (bump_version(&db), Params::None),
    ])
    .await
    .map_err(taken)?;
    let rows = db
        .keys_query(
            &format!("SELECT id FROM {} WHERE name = ?1", db.own("keys")),
            params![name.clone()],
        )
        .await?;
    let id = match rows.rows.first().and_then(|r| r.first()) {
        Some(Value::Integer(id)) => *id,
        _ => {
            return Err(Error::Internal {
                message: format!("key {name:?} was created but cannot be read back"),
            });
        }
    };
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
pub async fn list_keys(db: impl Into<Backend>) -> Result<Vec<KeyInfo>> {
    let db = db.into();
    let rows = db
        .keys_query(
            &format!(
                "SELECT id, name, scopes, tier, created_at, revoked_at, last_used_at
                 FROM {} ORDER BY id",
                db.own("keys")
            ),
            (),
        )
        .await?;
    Ok(rows
        .rows
        .into_iter()
        .map(|r| KeyInfo {
            id: int(&r[0]).unwrap_or(0),
            name: text(&r[1]),
            scopes: text(&r[2]).parse::<Scopes>().unwrap_or(Scopes::NONE),
            tier: text(&r[3]),
            created: from_unix_ms(int(&r[4]).unwrap_or(0)),
            revoked: int(&r[5]).map(from_unix_ms),
            last_used: int(&r[6]).map(from_unix_ms),
        })
        .collect())
}

/// A column read as an integer (`None` for NULL).
pub(crate) fn int(v: &Value) -> Option<i64> {
    match v {
        Value::Integer(i) => Some(*i),
        _ => None,
    }
}

/// A column read as text (empty for NULL).
pub(crate) fn text(v: &Value) -> String {
    match v {
        Value::Text(t) => t.clone(),
        _ => String::new(),
    }
}

fn name_taken(name: &str) -> Error {
    Error::invalid(
        "name",
        format!("a key named {name:?} exists already (names of revoked keys stay taken)"),
    )
}

/// Revokes the active key named `name`; false when there is none. Servers
/// sharing the file stop accepting it at their next refresh (a second by
/// default), the server that revokes it at once.
///
/// # Errors
/// SQLite errors.
pub async fn revoke_key(db: impl Into<Backend>, name: &str) -> Result<bool> {
    let db = db.into();
    let now = unix_ms(SystemTime::now());
    // The revocation and the version bump commit together, so every server
    // sees the revocation at its next refresh. The bump runs even when no
    // key matched: a spare refresh, never a missed one.
    let done = db
        .own_batch(vec![
            (
                format!(
                    "UPDATE {} SET revoked_at = ?2 WHERE name = ?1 AND revoked_at IS NULL",
                    db.own("keys")
                ),
                params![name, now],
            ),
            (bump_version(&db), Params::None),
        ])
        .await?;
    Ok(done.first().is_some_and(|r| r.changes > 0))
}

/// The version of the key table, bumped by every change.
pub(crate) async fn version(db: &Backend) -> Result<Option<String>> {
    let rows = db
        .keys_query(
            &format!(
                "SELECT value FROM {} WHERE key = 'keys_version'",
                db.own("meta")
            ),
            (),
        )
        .await?;
    Ok(rows.rows.first().and_then(|r| r.first()).map(text))
}
