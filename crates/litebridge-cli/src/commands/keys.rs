//! `litebridge keys create | list | revoke`.

use std::path::Path;

use litebridge::auth::{NewKey, Scopes, Tiers, create_key, list_keys, revoke_key};
use litebridge::store::migrate;
use litebridge::{Database, DbConfig};

use crate::cli::KeysAction;
use crate::output::utc_stamp;
use crate::{CliResult, Failure};

async fn open(path: &Path, create: bool) -> CliResult<Database> {
    if !create && !path.exists() {
        return Err(Failure::new(format!(
            "database {} does not exist",
            path.display()
        )));
    }
    let config = DbConfig::builder()
        .readers(1)
        .heavy_readers(1)
        .quick_check_on_open(false)
        .create(create)
        .build()?;
    let db = Database::open(path, config).await?;
    if let Err(e) = migrate(&db).await {
        db.close().await;
        return Err(e.into());
    }
    Ok(db)
}

pub(crate) async fn run(action: KeysAction) -> CliResult {
    match action {
        KeysAction::Create {
            db,
            scope,
            tier,
            name,
        } => create(&db, &scope, tier, name).await,
        KeysAction::List { db, json } => list(&db, json).await,
        KeysAction::Revoke { db, name } => {
            let database = open(&db, false).await?;
            let revoked = revoke_key(&database, &name).await;
            database.close().await;
            if revoked? {
                println!("revoked key {name:?}; running servers stop accepting it within a second");
                Ok(())
            } else {
                Err(Failure::new(format!(
                    "no active key named {name:?} in {} (see `litebridge keys list`)",
                    db.display()
                )))
            }
        }
    }
}

async fn create(db: &Path, scope: &str, tier: String, name: Option<String>) -> CliResult {
    let scopes = scope
        .parse::<Scopes>()
        .map_err(|e| Failure::new(format!("--scope {scope:?}: {e}")))?;
    // Check what can be checked before a file is created.
    Tiers::default()
        .check(&tier)
        .map_err(|e| Failure::new(format!("--tier: {e}")))?;
    let database = open(db, true).await?;
    let created = create_key(&database, &Tiers::default(), NewKey { name, scopes, tier }).await;
    database.close().await;
    let (key, secret) = created?;
    println!(
        "created key {:?} (scope {}, tier {}) in {}",
        key.name,
        key.scopes,
        key.tier,
        db.display()
    );
    println!("the secret is stored only as a hash and shown only now: {secret}");
    Ok(())
}

async fn list(db: &Path, json: bool) -> CliResult {
    const COLUMNS: [&str; 6] = ["name", "scopes", "tier", "created", "revoked", "last_used"];
    let database = open(db, false).await?;
    let keys = list_keys(&database).await;
    database.close().await;
    let stamp = |t: Option<std::time::SystemTime>| t.map(utc_stamp);
    let rows: Vec<serde_json::Value> = keys?
        .iter()
        .map(|k| {
            serde_json::json!({
                "name": k.name, "scopes": k.scopes.to_string(), "tier": k.tier,
                "created": utc_stamp(k.created),
                "revoked": stamp(k.revoked), "last_used": stamp(k.last_used),
            })
        })
        .collect();
    if json {
        println!("{}", serde_json::Value::Array(rows));
        return Ok(());
    }
    let text = |v: &serde_json::Value| v.as_str().unwrap_or("-").to_owned();
    let table = litebridge::Rows {
        columns: COLUMNS.map(str::to_owned).to_vec(),
        rows: rows
            .iter()
            .map(|r| {
                COLUMNS
                    .map(|c| litebridge::Value::Text(text(&r[c])))
                    .to_vec()
            })
            .collect(),
        truncated: false,
    };
    crate::output::print_table(&table);
    Ok(())
}
