//! `litebridge keys create | list | revoke`.

use std::path::PathBuf;

use litebridge::auth::{NewKey, Scopes, Tiers, create_key, list_keys, revoke_key};
use litebridge::store::migrate;
use litebridge::{Backend, Database, DbConfig};

use crate::cli::KeysAction;
use crate::output::utc_stamp;
use crate::settings::Settings;
use crate::{CliResult, Failure};

/// Where the keys are: a SQLite file named by `--db`, or the database a
/// configuration file (and the environment) names.
struct Target {
    db: Option<PathBuf>,
    config: Option<PathBuf>,
}

impl Target {
    /// The database, opened (created only for `create`) and migrated, and
    /// how to name it in messages.
    async fn open(&self, create: bool) -> CliResult<(Backend, String)> {
        let path = match (&self.db, &self.config) {
            (Some(path), _) => path.clone(),
            (None, config) => {
                let env: Vec<(String, String)> = std::env::vars().collect();
                let s = Settings::load(config.as_deref(), &env, &[])?;
                if let Some(pg) = s.pg_config()? {
                    let name = format!("PostgreSQL at {}", pg.redacted_url());
                    let db = litebridge::pg::PgDatabase::connect(pg).await?;
                    return Ok((Backend::Postgres(db), name));
                }
                s.db_path()
            }
        };
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
        let new = !path.exists();
        let db = Database::open(&path, config).await?;
        if let Err(e) = migrate(&db).await {
            db.close().await;
            return Err(e.into());
        }
        // Said, so that a mistyped --db is seen (the server on the real
        // database would go on without the key: operator audit).
        let label = if new {
            format!("{}, a new database (it did not exist)", path.display())
        } else {
            path.display().to_string()
        };
        Ok((Backend::Sqlite(db), label))
    }
}

pub(crate) async fn run(action: KeysAction) -> CliResult {
    match action {
        KeysAction::Create {
            db,
            config,
            scope,
            tier,
            name,
        } => create(&Target { db, config }, &scope, tier, name).await,
        KeysAction::List { db, config, json } => list(&Target { db, config }, json).await,
        KeysAction::Revoke { db, config, name } => {
            let (database, label) = Target { db, config }.open(false).await?;
            let revoked = revoke_key(&database, &name).await;
            database.close().await;
            if revoked? {
                println!("revoked key {name:?}; running servers stop accepting it within a second");
                Ok(())
            } else {
                Err(Failure::new(format!(
                    "no active key named {name:?} in {label} (see `litebridge keys list`)"
                )))
            }
        }
    }
}

async fn create(db: &Target, scope: &str, tier: String, name: Option<String>) -> CliResult {
    let scopes = scope
        .parse::<Scopes>()
        .map_err(|e| Failure::new(format!("--scope {scope:?}: {e}")))?;
    // Check what can be checked before a file is created.
    Tiers::default()
        .check(&tier)
        .map_err(|e| Failure::new(format!("--tier: {e}")))?;
    let (database, label) = db.open(true).await?;
    let created = create_key(&database, &Tiers::default(), NewKey { name, scopes, tier }).await;
    database.close().await;
    let (key, secret) = created?;
    // Written, not printed: a closed stdout (`| head -1`) made `println!`
    // panic after the key was made, its secret lost without a word (review
    // 213): now the failure says so.
    use std::io::Write as _;
    let mut out = std::io::stdout().lock();
    writeln!(
        out,
        "created key {:?} (scope {}, tier {}) in {label}",
        key.name, key.scopes, key.tier,
    )
    .and_then(|()| {
        writeln!(
            out,
            "the secret is stored only as a hash and shown only now: {secret}"
        )
    })
    .and_then(|()| out.flush())
    .map_err(|e| {
        Failure::new(format!(
            "key {:?} was created in {label}, but its secret could not be written out ({e}): \
                 revoke it (`litebridge keys revoke --name {:?}`) and create another",
            key.name, key.name
        ))
    })
}

async fn list(db: &Target, json: bool) -> CliResult {
    const COLUMNS: [&str; 6] = ["name", "scopes", "tier", "created", "revoked", "last_used"];
    let (database, _) = db.open(false).await?;
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
