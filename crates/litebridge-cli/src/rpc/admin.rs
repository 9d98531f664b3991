//! `admin.*` and `rpc.discover`: backups, checks, checkpoints, keys, the table itself.

use schemars::JsonSchema;
use serde::Deserialize;

use super::params::{Handler, parameter};
use super::stats::without_params;
use super::*;

/// `admin.backup`.
#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct AdminBackup {
    /// A file name for the backup in the backup directory (no directory; a
    /// new name; not starting with `.` or `-`, nor ending in `-wal`, `-shm`
    /// or `-journal`). Default: a timestamped name.
    #[serde(default)]
    to: Option<String>,
}

impl Handler for AdminBackup {
    fn run(self, cx: Ctx<'_>) -> Answer<'_> {
        Box::pin(async move {
            let service = &cx.app.service;
            let db = service.db.require_sqlite(
                "admin.backup",
                "back up the cluster with its own tools (pg_basebackup, pgBackRest)",
            )?;
            let policy = service.backups.as_ref().ok_or_else(|| {
                RpcError::App(Error::Unavailable {
                    what: "backups",
                    reason: "this service has no backup directory configured".into(),
                })
            })?;
            let r = match self.to {
                // A name in the backup directory, never a path: a request
                // does not choose where the service writes (SECURITY.md).
                Some(name) => litebridge::backups::take_named(db, policy, &name).await?,
                None => litebridge::backups::take(db, policy).await?,
            };
            crate::metrics::backups_changed();
            Ok(json!({
                "path": r.path.display().to_string(), "bytes": r.bytes, "pages": r.pages,
                "elapsed_ms": r.elapsed.as_millis() as u64,
                // Whole, or only as far as the check could read (why).
                "verified": r.partly_verified.is_none(), "partly_verified": r.partly_verified,
            }))
        })
    }
}

/// `admin.check`.
#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct AdminCheck {
    /// The full integrity check instead of the quick one (default false).
    #[serde(default)]
    full: Option<bool>,
}

impl Handler for AdminCheck {
    fn run(self, cx: Ctx<'_>) -> Answer<'_> {
        Box::pin(async move {
            let depth = match self.full {
                Some(true) => litebridge::CheckDepth::Full,
                _ => litebridge::CheckDepth::Quick,
            };
            let db = cx.app.service.db.require_sqlite(
                "admin.check",
                "check the cluster with PostgreSQL's own tools (pg_amcheck)",
            )?;
            let r = db.check(depth).await?;
            Ok(json!({
                "ok": r.ok, "problems": r.problems, "virtual_table_problems": r.virtual_table_problems,
                "data_problems": r.data_problems, "foreign_key_violations": r.foreign_key_violations,
                "unfinished": r.unfinished,
                "elapsed_ms": r.elapsed.as_millis() as u64,
            }))
        })
    }
}

/// `admin.checkpoint`.
#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct AdminCheckpoint {
    #[serde(default)]
    mode: Option<Mode>,
}

parameter!(
    /// SQLite's checkpoint mode.
    Mode(CheckpointMode) from String = "String",
    |s| s.parse().map_err(|e: Error| match e {
        Error::InvalidArgument { message, .. } => message,
        other => other.to_string(),
    }),
    schemars::json_schema!({"type": "string", "enum": ["passive", "full", "restart", "truncate"], "description": "SQLite's checkpoint mode (default passive)."})
);

impl Handler for AdminCheckpoint {
    fn run(self, cx: Ctx<'_>) -> Answer<'_> {
        Box::pin(async move {
            let db = cx.app.service.db.require_sqlite(
                "admin.checkpoint",
                "PostgreSQL checkpoints on its own (checkpoint_timeout, max_wal_size)",
            )?;
            let mode = self.mode.map_or(CheckpointMode::Passive, |m| m.0);
            let r = db.checkpoint(mode).await?;
            Ok(json!({
                "busy": r.busy, "log_pages": r.log_pages, "checkpointed_pages": r.checkpointed_pages,
                "wal_bytes": db.wal_bytes(),
            }))
        })
    }
}

/// `admin.keys.create`.
#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct KeysCreate {
    /// Comma-separated scopes: metrics, read, write, bridge, admin.
    scope: String,
    /// Its quota tier (default free).
    #[serde(default)]
    #[schemars(extend("enum" = ["free", "pro", "enterprise"]))]
    tier: Option<String>,
    /// Its name (default: generated).
    #[serde(default)]
    name: Option<String>,
}

impl Handler for KeysCreate {
    fn run(self, cx: Ctx<'_>) -> Answer<'_> {
        Box::pin(async move {
            let Ctx { app, caller, .. } = cx;
            let scopes = self.scope.parse::<litebridge::auth::Scopes>()?;
            let tier = self.tier.unwrap_or_else(|| "free".to_owned());
            let (key, secret) = litebridge::auth::create_key(
                &app.service.db,
                app.auth.tiers(),
                litebridge::auth::NewKey {
                    name: self.name,
                    scopes,
                    tier,
                },
            )
            .await?;
            app.auth.refresh().await?;
            tracing::info!(by = caller.key().map(|k| k.name()), key = %key.name, scopes = %key.scopes, "API key created");
            Ok(json!({
                "name": key.name, "scopes": key.scopes.to_string(), "tier": key.tier, "secret": secret,
            }))
        })
    }
}

without_params!(
    /// `admin.keys.list`.
    KeysList,
    |cx| {
        let keys = litebridge::auth::list_keys(&cx.app.service.db).await?;
        Ok(json!({ "keys": keys.iter().map(|k| json!({
            "name": k.name, "scopes": k.scopes.to_string(), "tier": k.tier,
            "created": rfc3339(k.created),
            "revoked": k.revoked.map(rfc3339),
            "last_used": k.last_used.map(rfc3339),
        })).collect::<Vec<_>>() }))
    }
);

/// `admin.keys.revoke`.
#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct KeysRevoke {
    /// The key's name.
    name: String,
}

impl Handler for KeysRevoke {
    fn run(self, cx: Ctx<'_>) -> Answer<'_> {
        Box::pin(async move {
            let Ctx { app, caller, .. } = cx;
            // Refused here at once, whatever the write waits behind.
            app.auth.revoke_here(&self.name);
            let revoked = litebridge::auth::revoke_key(&app.service.db, &self.name).await?;
            // Effective at once here; other servers on the file at their next refresh.
            app.auth.refresh().await?;
            tracing::info!(by = caller.key().map(|k| k.name()), key = %self.name, revoked, "API key revoked");
            Ok(json!({ "revoked": revoked }))
        })
    }
}

without_params!(
    /// `rpc.discover`.
    Discover,
    |cx| {
        let _ = cx;
        Ok(table::openrpc())
    }
);
