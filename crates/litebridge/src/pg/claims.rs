//! Idempotency keys on PostgreSQL: a write that carries one records it in
//! its own transaction, so that the record and the write commit together or
//! not at all, and a second write with the same key finds the record and
//! answers with the first one's result instead of running.
//!
//! # Design
//!
//! The write runs as the clients' role, which has no rights on
//! litebridge's schema; the record is made through two `SECURITY DEFINER`
//! functions in a schema of their own (`<schema>_claims`), the only thing
//! that role may use there:
//!
//! - `claim(k)` inserts the key's row with an empty result, or returns the
//!   stored result when the row is there. A second transaction with the
//!   same key waits on the first's row (the primary key), then sees it
//!   committed: two sends of one write never both run.
//! - `settle(k, result)` stores the result, sent before `COMMIT`.
//!
//! The clients' SQL can call the functions too, so the row's key is not the
//! caller's key itself but SHA-256 of a secret (made once, kept in
//! litebridge's schema, which the clients' role cannot read) and that key:
//! nobody can claim another caller's key first. Records are kept for
//! [`KEEP`] and swept with the expired entries.

use std::time::Duration;

use sha2::Digest as _;

use crate::error::{Error, Result};
use crate::idempotency::IdempotencyKey;
use crate::value::ExecResult;

/// How long a claim is kept: a retry later than this runs again.
pub(crate) const KEEP: Duration = Duration::from_secs(24 * 3600);

/// Creates (or updates) the claims' table, schema and functions, and gives
/// back the secret. Idempotent; under a lock, as front ends start together.
pub(super) async fn install(
    owner: &mut tokio_postgres::Client,
    schema: &str,
    client_user: &str,
) -> Result<[u8; 32]> {
    let fail = |e: tokio_postgres::Error| Error::Unavailable {
        what: "the PostgreSQL schema",
        reason: format!(
            "cannot install the idempotency functions in {schema}_claims: {}",
            super::error::error_chain(&e)
        ),
    };
    let tx = owner.transaction().await.map_err(fail)?;
    tx.execute(
        "SELECT pg_catalog.pg_advisory_xact_lock(pg_catalog.hashtext('litebridge claims ' || $1::text))",
        &[&schema],
    )
    .await
    .map_err(fail)?;
    // The client's role name is quoted as an identifier; the schema's is
    // checked to need no quoting (config.rs).
    let client = format!("\"{}\"", client_user.replace('"', "\"\""));
    tx.batch_execute(&format!(
        "CREATE TABLE IF NOT EXISTS {schema}.litebridge_claims(
             key BYTEA PRIMARY KEY,
             result TEXT NOT NULL,
             created_at BIGINT NOT NULL
         );
         CREATE INDEX IF NOT EXISTS litebridge_claims_created ON {schema}.litebridge_claims(created_at);
         CREATE SCHEMA IF NOT EXISTS {schema}_claims;
         REVOKE ALL ON SCHEMA {schema}_claims FROM PUBLIC;
         CREATE OR REPLACE FUNCTION {schema}_claims.claim(k BYTEA) RETURNS TEXT
             LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog AS $f$
         DECLARE r TEXT;
         BEGIN
             IF k IS NULL OR octet_length(k) <> 32 THEN
                 RAISE EXCEPTION 'a claim is 32 bytes';
             END IF;
             INSERT INTO {schema}.litebridge_claims(key, result, created_at)
                 VALUES (k, '', (extract(epoch FROM clock_timestamp()) * 1000000)::bigint)
                 ON CONFLICT (key) DO NOTHING;
             IF FOUND THEN
                 RETURN NULL;
             END IF;
             SELECT c.result INTO r FROM {schema}.litebridge_claims c WHERE c.key = k;
             RETURN r;
         END $f$;
         CREATE OR REPLACE FUNCTION {schema}_claims.settle(k BYTEA, r TEXT) RETURNS VOID
             LANGUAGE sql SECURITY DEFINER SET search_path = pg_catalog AS $f$
             UPDATE {schema}.litebridge_claims SET result = r WHERE key = k AND result = ''
         $f$;
         REVOKE ALL ON FUNCTION {schema}_claims.claim(BYTEA), {schema}_claims.settle(BYTEA, TEXT) FROM PUBLIC;
         GRANT USAGE ON SCHEMA {schema}_claims TO {client};
         GRANT EXECUTE ON FUNCTION {schema}_claims.claim(BYTEA), {schema}_claims.settle(BYTEA, TEXT) TO {client};"
    ))
    .await
    .map_err(fail)?;
    let mut fresh = [0u8; 32];
    getrandom::fill(&mut fresh).map_err(|e| Error::Internal {
        message: format!("no randomness for the idempotency secret: {e}"),
    })?;
    let hex: String = fresh.iter().map(|b| format!("{b:02x}")).collect();
    tx.execute(
        &format!(
            "INSERT INTO {schema}.litebridge_meta(key, value) VALUES ('claims_secret', $1)
             ON CONFLICT (key) DO NOTHING"
        ),
        &[&hex],
    )
    .await
    .map_err(fail)?;
    let stored: String = tx
        .query_one(
            &format!("SELECT value FROM {schema}.litebridge_meta WHERE key = 'claims_secret'"),
            &[],
        )
        .await
        .map_err(fail)?
        .get(0);
    tx.commit().await.map_err(fail)?;
    let mut secret = [0u8; 32];
    for (i, b) in secret.iter_mut().enumerate() {
        *b = stored
            .get(2 * i..2 * i + 2)
            .and_then(|h| u8::from_str_radix(h, 16).ok())
            .ok_or_else(|| Error::Internal {
                message: format!(
                    "the idempotency secret in {schema}.litebridge_meta is not 64 hex digits"
                ),
            })?;
    }
    Ok(secret)
}

/// The row's key for `key`: SHA-256 of the secret and the caller's key.
pub(super) fn row_key(secret: &[u8; 32], key: IdempotencyKey) -> Vec<u8> {
    let mut h = sha2::Sha256::new();
    h.update(secret);
    h.update(key.0);
    h.finalize().to_vec()
}

/// A write's results as stored: the changes of each statement.
pub(super) fn encode(results: &[ExecResult]) -> String {
    serde_json::to_string(&results.iter().map(|r| r.changes).collect::<Vec<_>>())
        .unwrap_or_default()
}

/// The results a stored record answers with.
pub(super) fn decode(stored: &str) -> Result<Vec<ExecResult>> {
    let changes: Vec<u64> = serde_json::from_str(stored).map_err(|_| Error::Internal {
        message: "an idempotency record holds no result (was it made outside litebridge?)".into(),
    })?;
    Ok(changes
        .into_iter()
        .map(|changes| ExecResult {
            changes,
            last_insert_rowid: 0,
        })
        .collect())
}
