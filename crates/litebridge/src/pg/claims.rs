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
//! `standbys_flushed(at, names)` is not about claims either: it counts
//! the standbys (senders that replay what they receive, not pg_receivewal)
//! that flushed a write, on the session that committed it, which
//! PostgreSQL shows only to roles with `pg_read_all_stats` (`replicated`);
//! nor is `this_session()`, which names that session (its server process
//! and when that started) for the same reason.
//!
//! A third function, `received_timeline()`, is not about claims: on a
//! replica it answers the timeline its WAL receiver last received, which
//! PostgreSQL shows only to roles with `pg_read_all_stats` (NULL without it),
//! and only while the replica has replayed no further than the receiver
//! wrote (NULL otherwise: a replica restarted after a crash can replay its
//! own log of a history the cluster gave up, past where a receiver on the
//! new timeline starts). Written, not flushed: after a restart the flushed
//! position starts at its segment's beginning, behind the replay, until new
//! WAL comes, which on an idle primary can take hours.
//! Reads on replicas check it against their token's timeline (see `mod.rs`,
//! `guard_sql`); the schema is where litebridge keeps what the clients' role
//! may call.
//!
//! Front ends claim through `claim(k, f)`, which checks `f`, SHA-256 of
//! the secret the front end holds, against the database's first: a
//! failover that lost the secret, and a front end started after it that
//! made another, had front ends keying records differently, so a retry
//! through another front end applied a write again (review 223). A front
//! end told so reads the secret again (or makes it, and the functions,
//! again when a failover lost them: `PgDatabase::reinstall`) and answers
//! `unavailable` (nothing was written). `claim(k)` stays for front ends of
//! earlier versions.
//!
//! The clients' SQL can call the functions too, so the row's key is not the
//! caller's key itself but SHA-256 of a secret (made once, kept in
//! litebridge's schema, which the clients' role cannot read) and that key:
//! nobody can claim another caller's key first. Records are kept for
//! [`KEEP`](crate::idempotency::KEEP) and swept with the expired entries.

use sha2::Digest as _;

use crate::error::{Error, Result};
use crate::idempotency::IdempotencyKey;

/// Creates (or updates) the claims' table, schema and functions, and gives
/// back the secret. Idempotent; under a lock, as front ends start together.
pub(super) async fn install(
    owner: &mut tokio_postgres::Client,
    schema: &str,
    client_user: &str,
) -> Result<Secret> {
    let fail = |e: tokio_postgres::Error| Error::Unavailable {
        what: "the PostgreSQL schema",
        reason: format!(
            "cannot install the idempotency functions in {schema}_claims: {}",
            super::error::error_chain(&e)
        ),
    };
    let tx = owner.transaction().await.map_err(fail)?;
    // A lock only litebridge's role can take (an advisory lock's number
    // could be held by any key's SQL): the table the secret is kept in.
    tx.batch_execute(&format!(
        "LOCK TABLE {schema}.litebridge_meta IN SHARE ROW EXCLUSIVE MODE"
    ))
    .await
    .map_err(fail)?;
    // The functions' schema must be litebridge's: one made first by someone
    // else would let its owner replace the functions.
    let foreign: Option<String> = tx
        .query_opt(
            "SELECT pg_catalog.pg_get_userbyid(nspowner)::text FROM pg_catalog.pg_namespace
              WHERE nspname = $1 AND nspowner <> (SELECT oid FROM pg_catalog.pg_roles WHERE rolname = current_user)",
            &[&format!("{schema}_claims")],
        )
        .await
        .map_err(fail)?
        .map(|r| r.get(0));
    if let Some(owner) = foreign {
        return Err(Error::Forbidden {
            message: format!(
                "the schema {schema}_claims, where litebridge keeps its idempotency functions, \
                 belongs to {owner:?}, not to litebridge's role: drop it (DROP SCHEMA \
                 {schema}_claims CASCADE) and start again"
            ),
        });
    }
    // Made only where missing: `CREATE INDEX IF NOT EXISTS` takes its
    // table's share lock before it looks, so a start waited for any keyed
    // write in flight, and every keyed write of every front end then waited
    // for the start (review 247: a write key's long keyed write held them
    // all).
    let indexed: bool = tx
        .query_one(
            "SELECT pg_catalog.to_regclass($1) IS NOT NULL",
            &[&format!("{schema}.litebridge_claims_created")],
        )
        .await
        .map_err(fail)?
        .get(0);
    if !indexed {
        tx.batch_execute(&format!(
            "CREATE TABLE IF NOT EXISTS {schema}.litebridge_claims(
                 key BYTEA PRIMARY KEY,
                 result TEXT NOT NULL,
                 created_at BIGINT NOT NULL
             );
             CREATE INDEX IF NOT EXISTS litebridge_claims_created ON {schema}.litebridge_claims(created_at);"
        ))
        .await
        .map_err(fail)?;
    }
    // The client's role name is quoted as an identifier; the schema's is
    // checked to need no quoting (config.rs).
    let client = format!("\"{}\"", client_user.replace('"', "\"\""));
    tx.batch_execute(&format!(
        "CREATE SCHEMA IF NOT EXISTS {schema}_claims;
         REVOKE ALL ON SCHEMA {schema}_claims FROM PUBLIC;
         CREATE OR REPLACE FUNCTION {schema}_claims.claim(k pg_catalog.bytea)
             RETURNS pg_catalog.text
             LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $f$
         DECLARE r pg_catalog.text;
         BEGIN
             IF k IS NULL OR pg_catalog.octet_length(k) <> 32 THEN
                 RAISE EXCEPTION 'a claim is 32 bytes';
             END IF;
             LOOP
                 INSERT INTO {schema}.litebridge_claims(key, result, created_at)
                     VALUES (k, '', (pg_catalog.date_part('epoch', pg_catalog.clock_timestamp())
                                     * 1000000)::pg_catalog.int8)
                     ON CONFLICT (key) DO NOTHING;
                 IF FOUND THEN
                     RETURN NULL;
                 END IF;
                 SELECT c.result INTO r FROM {schema}.litebridge_claims c WHERE c.key = k;
                 -- (Swept between the two: claim it again.)
                 IF FOUND THEN
                     RETURN r;
                 END IF;
             END LOOP;
         END $f$;
         -- The claim of front ends of this version: the secret the key was
         -- made with must be the database's. A failover that lost the one a
         -- front end read, and a front end started after it that made
         -- another, left front ends keying records differently, so a
         -- retry through the other applied a write twice (review 223).
         CREATE OR REPLACE FUNCTION {schema}_claims.claim(k pg_catalog.bytea, f pg_catalog.bytea)
             RETURNS pg_catalog.text
             LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $f$
         BEGIN
             IF f IS DISTINCT FROM (SELECT pg_catalog.sha256(pg_catalog.convert_to(m.value, 'UTF8'))
                                      FROM {schema}.litebridge_meta m
                                     WHERE m.key OPERATOR(pg_catalog.=) 'claims_secret') THEN
                 RAISE EXCEPTION 'litebridge: this front end''s idempotency secret is not the database''s'
                     USING ERRCODE = 'LB001';
             END IF;
             RETURN {schema}_claims.claim(k);
         END $f$;
         CREATE OR REPLACE FUNCTION {schema}_claims.settle(k pg_catalog.bytea, r pg_catalog.text)
             RETURNS void
             LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $f$
         BEGIN
             -- Refused, not dropped: a write whose record was not kept
             -- committed with its key claimed and no result, and every
             -- retry of the key failed for a day.
             IF pg_catalog.octet_length(r) > 1000000 THEN
                 RAISE EXCEPTION 'litebridge: this write''s idempotency record would take % bytes, past 1000000: send it without a key, or in smaller writes (nothing was written)',
                     pg_catalog.octet_length(r);
             END IF;
             UPDATE {schema}.litebridge_claims SET result = r WHERE key = k AND result = '';
         END $f$;
         CREATE OR REPLACE FUNCTION {schema}_claims.received_timeline()
             RETURNS pg_catalog.int4
             LANGUAGE sql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $f$
             SELECT r.received_tli FROM pg_catalog.pg_stat_wal_receiver r
              WHERE pg_catalog.pg_last_wal_replay_lsn() OPERATOR(pg_catalog.<=) r.written_lsn
         $f$;
         CREATE OR REPLACE FUNCTION {schema}_claims.standbys_flushed(
                 at pg_catalog.pg_lsn, names pg_catalog.text[])
             RETURNS TABLE(flushed pg_catalog.int8, furthest pg_catalog.text)
             LANGUAGE sql VOLATILE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $f$
             SELECT pg_catalog.count(*) FILTER (WHERE w.flush_lsn OPERATOR(pg_catalog.>=) at),
                    pg_catalog.max(w.flush_lsn)::pg_catalog.text
               FROM pg_catalog.pg_stat_get_wal_senders() w
              WHERE w.state OPERATOR(pg_catalog.=) 'streaming'
                -- A standby: it replays what it receives. pg_receivewal and
                -- pg_basebackup (archivers use them) report no replay
                -- position, and could never be promoted (review 223).
                AND w.replay_lsn IS NOT NULL
                AND EXISTS (SELECT 1 FROM pg_catalog.pg_stat_get_activity(w.pid) a
                             WHERE a.datid IS NULL
                               AND (names IS NULL
                                    OR a.application_name OPERATOR(pg_catalog.~~) ANY (names)))
         $f$;
         -- The session that runs it (its server process, and when that
         -- started), which `replicated_to` reads after a COMMIT and at each
         -- count: as litebridge's role, as the clients' role may not read
         -- pg_stat_get_activity (docs/postgres.md revokes it: review 226).
         -- NULL when it cannot be read.
         CREATE OR REPLACE FUNCTION {schema}_claims.this_session()
             RETURNS pg_catalog.text
             LANGUAGE sql VOLATILE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $f$
             SELECT pg_catalog.pg_backend_pid()::pg_catalog.text OPERATOR(pg_catalog.||) ' '
                    OPERATOR(pg_catalog.||)
                    pg_catalog.extract('epoch', a.backend_start)::pg_catalog.text
               FROM pg_catalog.pg_stat_get_activity(pg_catalog.pg_backend_pid()) a
         $f$;
         REVOKE ALL ON FUNCTION {schema}_claims.claim(BYTEA), {schema}_claims.claim(BYTEA, BYTEA),
             {schema}_claims.settle(BYTEA, TEXT),
             {schema}_claims.received_timeline(), {schema}_claims.this_session(),
             {schema}_claims.standbys_flushed(pg_lsn, text[]) FROM PUBLIC;
         GRANT USAGE ON SCHEMA {schema}_claims TO {client};
         GRANT EXECUTE ON FUNCTION {schema}_claims.claim(BYTEA), {schema}_claims.claim(BYTEA, BYTEA),
             {schema}_claims.settle(BYTEA, TEXT),
             {schema}_claims.received_timeline(), {schema}_claims.this_session(),
             {schema}_claims.standbys_flushed(pg_lsn, text[]) TO {client};"
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
    let stored = stored(&tx, schema).await.map_err(fail)?.unwrap_or_default();
    tx.commit().await.map_err(fail)?;
    Secret::new(&stored, schema)
}

/// The secret, and what `claim(k, f)` checks it by: SHA-256 of its text
/// as stored.
#[derive(Clone)]
pub(super) struct Secret {
    pub(super) key: [u8; 32],
    pub(super) fingerprint: Vec<u8>,
    /// The cache's channel ([`channel`]), named once.
    pub(super) channel: String,
}

impl Secret {
    fn new(stored: &str, schema: &str) -> Result<Secret> {
        let mut key = [0u8; 32];
        for (i, b) in key.iter_mut().enumerate() {
            *b = stored
                .get(2 * i..2 * i + 2)
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .ok_or_else(|| Error::Internal {
                    message: format!(
                        "the idempotency secret in {schema}.litebridge_meta is not 64 hex digits"
                    ),
                })?;
        }
        Ok(Secret {
            key,
            fingerprint: sha2::Sha256::digest(stored.as_bytes()).to_vec(),
            channel: channel(&key, schema),
        })
    }
}

/// The secret as the database holds it now, if it does.
pub(super) async fn read(owner: &tokio_postgres::Client, schema: &str) -> Result<Option<Secret>> {
    stored(owner, schema)
        .await
        .map_err(|e| Error::Unavailable {
            what: "the PostgreSQL schema",
            reason: format!(
                "cannot read the idempotency secret in {schema}.litebridge_meta: {}",
                super::error::error_chain(&e)
            ),
        })?
        .map(|stored| Secret::new(&stored, schema))
        .transpose()
}

/// The secret's text, as stored.
async fn stored(
    conn: &impl tokio_postgres::GenericClient,
    schema: &str,
) -> std::result::Result<Option<String>, tokio_postgres::Error> {
    Ok(conn
        .query_opt(&stored_sql(schema), &[])
        .await?
        .map(|r| r.get(0)))
}

/// The query of the secret's text (one row, or none).
pub(super) fn stored_sql(schema: &str) -> String {
    format!("SELECT value FROM {schema}.litebridge_meta WHERE key = 'claims_secret'")
}

/// Whether `stored` (the secret's text, as read) is the secret
/// fingerprinted `fingerprint`.
pub(super) fn is(stored: &str, fingerprint: &[u8]) -> bool {
    sha2::Sha256::digest(stored.as_bytes()).as_slice() == fingerprint
}

/// The code `claim(k, f)` raises when the secret is not the database's.
pub(super) const OTHER_SECRET: &str = "LB001";

/// The channel of the cache's notifications between front ends
/// (`store/cache_peers.rs`): the schema's name (cut to fit, for operators
/// reading `pg_stat_activity`), then 64 bits of SHA-256 of the secret. Any
/// role can notify any channel it can name, and the clients' role cannot
/// name this one: it cannot read the secret, nor see litebridge's own
/// sessions' statements.
pub(super) fn channel(secret: &[u8; 32], schema: &str) -> String {
    let mut h = sha2::Sha256::new();
    h.update(b"litebridge cache notifications\0");
    h.update(secret);
    let digest = h.finalize();
    let suffix: String = digest[..8].iter().map(|b| format!("{b:02x}")).collect();
    // Channels are identifiers of at most 63 bytes; schema names are ASCII.
    format!("lbc_{}_{suffix}", &schema[..schema.len().min(42)])
}

/// The row's key for `key`: SHA-256 of the secret and the caller's key.
pub(super) fn row_key(secret: &[u8; 32], key: IdempotencyKey) -> Vec<u8> {
    let mut h = sha2::Sha256::new();
    h.update(secret);
    h.update(key.0);
    h.finalize().to_vec()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cache_channel_is_the_secrets_and_fits_an_identifier() {
        let (a, b) = ([1u8; 32], [2u8; 32]);
        assert_eq!(channel(&a, "litebridge"), channel(&a, "litebridge"));
        assert_ne!(channel(&a, "litebridge"), channel(&b, "litebridge"));
        assert!(channel(&a, "litebridge").starts_with("lbc_litebridge_"));
        assert_eq!(channel(&a, &"s".repeat(63)).len(), 63);
    }
}
