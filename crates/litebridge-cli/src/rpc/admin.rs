//! `admin.*` and `rpc.discover`: backups, checks, checkpoints, keys, the table itself.

use super::*;

/// `admin.backup`.
pub(super) fn admin_backup(cx: Ctx<'_>, mut a: Args) -> Answer<'_> {
    Box::pin(async move {
        let Ctx { app, .. } = cx;
        let service = &app.service;
        let db = &service.db;
        let policy = service.backups.as_ref().ok_or_else(|| {
            RpcError::App(Error::Unavailable {
                what: "backups",
                reason: "this service has no backup directory configured".into(),
            })
        })?;
        let r = match a.opt_string("to")? {
            // A name in the backup directory, never a path: a request
            // does not choose where the service writes (SECURITY.md).
            Some(name) => litebridge::backups::take_named(db, policy, &name).await?,
            None => litebridge::backups::take(db, policy).await?,
        };
        Ok(json!({
            "path": r.path.display().to_string(), "bytes": r.bytes, "pages": r.pages,
            "elapsed_ms": r.elapsed.as_millis() as u64, "verified": true,
        }))
    })
}

/// `admin.check`.
pub(super) fn admin_check(cx: Ctx<'_>, mut a: Args) -> Answer<'_> {
    Box::pin(async move {
        let Ctx { app, .. } = cx;
        let service = &app.service;
        let db = &service.db;
        let depth = match a.opt_bool("full")? {
            Some(true) => litebridge::CheckDepth::Full,
            _ => litebridge::CheckDepth::Quick,
        };
        let r = db.check(depth).await?;
        Ok(json!({
            "ok": r.ok, "problems": r.problems, "virtual_table_problems": r.virtual_table_problems,
            "foreign_key_violations": r.foreign_key_violations,
            "elapsed_ms": r.elapsed.as_millis() as u64,
        }))
    })
}

/// `admin.checkpoint`.
pub(super) fn admin_checkpoint(cx: Ctx<'_>, mut a: Args) -> Answer<'_> {
    Box::pin(async move {
        let Ctx { app, .. } = cx;
        let service = &app.service;
        let db = &service.db;
        let mode = match a.opt_string("mode")? {
            Some(m) => m.parse::<CheckpointMode>()?,
            None => CheckpointMode::Passive,
        };
        let r = db.checkpoint(mode).await?;
        Ok(json!({
            "busy": r.busy, "log_pages": r.log_pages, "checkpointed_pages": r.checkpointed_pages,
            "wal_bytes": db.wal_bytes(),
        }))
    })
}

/// `admin.keys.create`.
pub(super) fn admin_keys_create(cx: Ctx<'_>, mut a: Args) -> Answer<'_> {
    Box::pin(async move {
        let Ctx { app, caller, .. } = cx;
        let service = &app.service;
        let db = &service.db;
        let scopes = a.string("scope")?.parse::<litebridge::auth::Scopes>()?;
        let tier = a.opt_string("tier")?.unwrap_or_else(|| "free".to_owned());
        let name = a.opt_string("name")?;
        let (key, secret) = litebridge::auth::create_key(
            db,
            app.auth.tiers(),
            litebridge::auth::NewKey { name, scopes, tier },
        )
        .await?;
        app.auth.refresh().await?;
        tracing::info!(by = caller.key().map(|k| k.name()), key = %key.name, scopes = %key.scopes, "API key created");
        Ok(json!({
            "name": key.name, "scopes": key.scopes.to_string(), "tier": key.tier, "secret": secret,
        }))
    })
}

/// `admin.keys.list`.
pub(super) fn admin_keys_list(cx: Ctx<'_>, _a: Args) -> Answer<'_> {
    Box::pin(async move {
        let Ctx { app, .. } = cx;
        let service = &app.service;
        let db = &service.db;
        let keys = litebridge::auth::list_keys(db).await?;
        Ok(json!({ "keys": keys.iter().map(|k| json!({
            "name": k.name, "scopes": k.scopes.to_string(), "tier": k.tier,
            "created": rfc3339(k.created),
            "revoked": k.revoked.map(rfc3339),
            "last_used": k.last_used.map(rfc3339),
        })).collect::<Vec<_>>() }))
    })
}

/// `admin.keys.revoke`.
pub(super) fn admin_keys_revoke(cx: Ctx<'_>, mut a: Args) -> Answer<'_> {
    Box::pin(async move {
        let Ctx { app, caller, .. } = cx;
        let service = &app.service;
        let db = &service.db;
        let name = a.string("name")?;
        let revoked = litebridge::auth::revoke_key(db, &name).await?;
        // Effective at once here; other servers on the file at their next refresh.
        app.auth.refresh().await?;
        tracing::info!(by = caller.key().map(|k| k.name()), key = %name, revoked, "API key revoked");
        Ok(json!({ "revoked": revoked }))
    })
}

/// `rpc.discover`.
pub(super) fn rpc_discover(_cx: Ctx<'_>, _a: Args) -> Answer<'_> {
    Box::pin(async move { Ok(table::openrpc()) })
}
