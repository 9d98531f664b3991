//! Workflow state: one row per run in `litebridge_state` (WITHOUT ROWID,
//! integer epoch-microsecond timestamps), saved with `ON CONFLICT DO UPDATE`
//! so `created_at` survives updates, listed in pages by key.

use std::sync::Arc;
use std::time::UNIX_EPOCH;

use serde::Serialize;
use serde_json::Value as Json;

use super::cache::Clock;
use crate::backend::Backend;
use crate::error::{Error, Result};
use crate::params;
use crate::value::Value;

/// Longest run id accepted.
pub const MAX_RUN_ID: usize = 1024;

/// What `save` writes. Monitoring fields left `None` keep their stored value.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct StateUpdate {
    /// The run.
    pub run_id: String,
    /// Its state (any JSON).
    pub state: Json,
    /// `running`, `completed`, `failed`, ...
    pub status: Option<String>,
    /// Steps in the run.
    pub total_steps: Option<i64>,
    /// Why it failed.
    pub error_message: Option<String>,
    /// How long it ran.
    pub execution_time_ms: Option<i64>,
    /// Memory it used.
    pub memory_usage_mb: Option<f64>,
}

/// A stored run.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct StateRecord {
    /// The run.
    pub run_id: String,
    /// Its state.
    pub state: Json,
    /// Its status.
    pub status: Option<String>,
    /// Steps in the run.
    pub total_steps: Option<i64>,
    /// Why it failed.
    pub error_message: Option<String>,
    /// How long it ran.
    pub execution_time_ms: Option<i64>,
    /// Memory it used.
    pub memory_usage_mb: Option<f64>,
    /// First saved, microseconds since the epoch.
    pub created_at: i64,
    /// Last saved, microseconds since the epoch.
    pub updated_at: i64,
}

/// The state store.
#[derive(Clone)]
pub struct StateStore {
    db: Backend,
    clock: Arc<dyn Clock>,
}

impl std::fmt::Debug for StateStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StateStore").finish_non_exhaustive()
    }
}

fn now_us(clock: &dyn Clock) -> i64 {
    i64::try_from(
        clock
            .now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_micros(),
    )
    .unwrap_or(i64::MAX)
}

fn check_run_id(run_id: &str) -> Result<()> {
    if run_id.is_empty() || run_id.len() > MAX_RUN_ID {
        return Err(Error::invalid(
            "run_id",
            format!("must be 1 to {MAX_RUN_ID} bytes"),
        ));
    }
    Ok(())
}

const COLUMNS: &str = "run_id, state, status, total_steps, error_message, execution_time_ms, memory_usage_mb, created_at, updated_at";

/// A run's row, as [`COLUMNS`] lists it, in `db`.
fn record(row: Vec<Value>, db: &Backend) -> Result<StateRecord> {
    let mut it = row.into_iter();
    let mut next = || it.next().unwrap_or(Value::Null);
    let text = |v: Value| match v {
        Value::Text(t) => Some(t),
        _ => None,
    };
    let int = |v: Value| match v {
        Value::Integer(i) => Some(i),
        _ => None,
    };
    let run_id = text(next()).unwrap_or_default();
    let state = match text(next()) {
        Some(t) => super::read_tree(&t, db, || format!("the state of run {run_id:?}"))?
            .unwrap_or(Json::Null),
        None => Json::Null,
    };
    Ok(StateRecord {
        run_id,
        state,
        status: text(next()),
        total_steps: int(next()),
        error_message: text(next()),
        execution_time_ms: int(next()),
        memory_usage_mb: match next() {
            Value::Real(f) => Some(f),
            Value::Integer(i) => Some(i as f64),
            _ => None,
        },
        created_at: int(next()).unwrap_or(0),
        updated_at: int(next()).unwrap_or(0),
    })
}

impl StateStore {
    /// The store over `db` (its table comes from the schema migrations).
    pub fn new(db: impl Into<Backend>, clock: Arc<dyn Clock>) -> StateStore {
        StateStore {
            db: db.into(),
            clock,
        }
    }

    /// Inserts or updates a run; returns it as stored.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] for an empty or overlong run id;
    /// [`Error::TooLarge`] for a state whose tree would pass the database's
    /// `max_result_bytes`; write errors.
    pub async fn save(&self, u: StateUpdate) -> Result<StateRecord> {
        check_run_id(&u.run_id)?;
        let now = now_us(self.clock.as_ref());
        let state =
            serde_json::to_string(&u.state).map_err(|e| Error::invalid("state", e.to_string()))?;
        super::storable(&state, &self.db, "state")?;
        // One trip through the writer: the upsert returns the row as stored,
        // in the same transaction, so no concurrent save can come between.
        let sql = format!(
            "INSERT INTO {table}(run_id, state, status, total_steps, error_message,
                 execution_time_ms, memory_usage_mb, created_at, updated_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?8)
             ON CONFLICT(run_id) DO UPDATE SET
                 state = excluded.state,
                 status = COALESCE(excluded.status, litebridge_state.status),
                 total_steps = COALESCE(excluded.total_steps, litebridge_state.total_steps),
                 error_message = COALESCE(excluded.error_message, litebridge_state.error_message),
                 execution_time_ms = COALESCE(excluded.execution_time_ms, litebridge_state.execution_time_ms),
                 memory_usage_mb = COALESCE(excluded.memory_usage_mb, litebridge_state.memory_usage_mb),
                 updated_at = excluded.updated_at
             RETURNING {COLUMNS}",
            table = self.db.own("state")
        );
        let rows = self
            .db
            .own_write_rows(
                sql,
                params![
                    u.run_id,
                    state,
                    u.status,
                    u.total_steps,
                    u.error_message,
                    u.execution_time_ms,
                    u.memory_usage_mb,
                    now
                ],
            )
            .await?;
        let row = rows
            .rows
            .into_iter()
            .next()
            .ok_or_else(|| Error::Internal {
                message: "an upsert returned no row".into(),
            })?;
        record(row, &self.db)
    }

    /// The run, or `None`.
    ///
    /// # Errors
    /// Read errors; [`Error::InvalidArgument`] for a bad run id.
    pub async fn load(&self, run_id: &str) -> Result<Option<StateRecord>> {
        check_run_id(run_id)?;
        let rows = self
            .db
            .own_query(
                &format!(
                    "SELECT {COLUMNS} FROM {} WHERE run_id = ?1",
                    self.db.own("state")
                ),
                params![run_id],
            )
            .await?;
        rows.rows
            .into_iter()
            .next()
            .map(|row| record(row, &self.db))
            .transpose()
    }

    /// Up to `limit` runs after the run id `after` (in key order), optionally
    /// with one status; the last run id is the cursor for the next page.
    ///
    /// # Errors
    /// Read errors.
    pub async fn list(
        &self,
        status: Option<&str>,
        limit: usize,
        after: Option<&str>,
    ) -> Result<Vec<StateRecord>> {
        let rows = self.rows(status, limit, after).await?;
        rows.into_iter().map(|row| record(row, &self.db)).collect()
    }

    /// As [`list`](Self::list), a page that ends early once its states'
    /// trees take [`PAGE_BYTES`](super::PAGE_BYTES) (or the result limit,
    /// where lower), or before a value too large to read, with the cursor
    /// of the next page: what a server answers a caller with.
    ///
    /// # Errors
    /// Read errors.
    pub async fn page(
        &self,
        status: Option<&str>,
        limit: usize,
        after: Option<&str>,
    ) -> Result<super::Page<StateRecord>> {
        let (rows, left) = super::text_bounded(self.select(status, limit, after, true).await?);
        let full = rows.len() == limit;
        // A run's status and error message count too (review 250: runs of
        // 15 MiB error messages passed the result limit, failing every
        // listing).
        let text = |t: &Option<String>| t.as_ref().map_or(0, |t| t.len() as u64);
        let (items, cut) = super::within_page_bytes(
            &self.db,
            rows.into_iter().map(|row| record(row, &self.db)),
            |r| super::footprint(&r.state) + text(&r.status) + text(&r.error_message),
        )?;
        let next = (full || left || cut)
            .then(|| items.last().map(|r| r.run_id.clone()))
            .flatten();
        Ok(super::Page { items, next })
    }

    /// The rows of a [`list`](Self::list), as [`record`] reads them.
    async fn rows(
        &self,
        status: Option<&str>,
        limit: usize,
        after: Option<&str>,
    ) -> Result<Vec<Vec<Value>>> {
        self.select(status, limit, after, false).await
    }

    /// [`rows`](Self::rows), or with `bounded` the first and those after
    /// it while their states' text comes to at most
    /// [`page_text_bytes`](super::page_text_bytes), each with the count of
    /// rows there were (see [`text_bounded`](super::text_bounded)).
    async fn select(
        &self,
        status: Option<&str>,
        limit: usize,
        after: Option<&str>,
        bounded: bool,
    ) -> Result<Vec<Vec<Value>>> {
        if let Some(after) = after
            && after.len() > MAX_RUN_ID
        {
            return Err(Error::invalid(
                "after",
                format!("must be at most {MAX_RUN_ID} bytes, as a run id is"),
            ));
        }
        let t = self.db.own("state");
        let chosen = format!(
            "FROM {t} WHERE (?1 IS NULL OR status = ?1) AND run_id > ?2 ORDER BY run_id LIMIT ?3"
        );
        let sql = if bounded {
            // The ids and sizes first, then the states of those that fit
            // (as memory's pages: review 207).
            format!(
                "SELECT {COLUMNS}, sized.lb_chosen
                   FROM (SELECT lb_id,
                                sum(lb_own) OVER (ORDER BY lb_id ROWS UNBOUNDED PRECEDING) AS lb_upto,
                                row_number() OVER (ORDER BY lb_id) AS lb_n,
                                count(*) OVER () AS lb_chosen
                           FROM (SELECT run_id AS lb_id,
                                        octet_length(state) + coalesce(octet_length(status), 0)
                                            + coalesce(octet_length(error_message), 0) AS lb_own
                                   {chosen}) AS chosen)
                        AS sized
                   JOIN {t} ON run_id = sized.lb_id
                  WHERE sized.lb_upto <= ?4 OR sized.lb_n = 1
                  ORDER BY run_id"
            )
        } else {
            format!("SELECT {COLUMNS} {chosen}")
        };
        let mut params = vec![
            Value::from(status),
            Value::from(after.unwrap_or("")),
            Value::from(i64::try_from(limit).unwrap_or(i64::MAX)),
        ];
        if bounded {
            params.push(Value::from(super::page_text_bytes(&self.db)));
        }
        let rows = self
            .db
            .own_query(&sql, crate::Params::Positional(params))
            .await?;
        Ok(rows.rows)
    }

    /// Deletes a run; whether it existed.
    ///
    /// # Errors
    /// Write errors.
    pub async fn delete(&self, run_id: &str) -> Result<bool> {
        check_run_id(run_id)?;
        Ok(self
            .db
            .own_execute(
                format!("DELETE FROM {} WHERE run_id = ?1", self.db.own("state")),
                params![run_id],
            )
            .await?
            .changes
            > 0)
    }
}
