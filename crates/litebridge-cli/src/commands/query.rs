//! `litebridge query`: one statement, printed as a table or JSON.

use std::path::Path;
use std::time::Duration;

use litebridge::{Database, DbConfig, Params, QueryOptions, Value, WriteOptions};

use crate::output::print_table;
use crate::{CliResult, Failure};

pub(crate) async fn run(
    path: &Path,
    sql: &str,
    raw_params: &[String],
    json: bool,
    create: bool,
    timeout_ms: u64,
) -> CliResult {
    if !create && !path.exists() {
        return Err(Failure::new(format!(
            "database {} does not exist (pass --create to create it)",
            path.display()
        )));
    }
    let params = Params::Positional(
        raw_params
            .iter()
            .enumerate()
            .map(|(i, p)| parse_param(i, p))
            .collect::<CliResult<Vec<_>>>()?,
    );
    let config = DbConfig::builder()
        .readers(1)
        .heavy_readers(1)
        .quick_check_on_open(false)
        .create(create)
        .build()?;
    let db = Database::open(path, config).await?;
    let timeout = Some(Duration::from_millis(timeout_ms.max(1)));
    let options = QueryOptions {
        timeout,
        ..QueryOptions::default()
    };
    let result = match db.query_with(sql, params.clone(), options).await {
        Ok(rows) => {
            if json {
                println!("{}", serde_json::to_string(&rows).unwrap_or_default());
            } else {
                print_table(&rows);
            }
            Ok(())
        }
        Err(e) if e.belongs_on_the_writer() => {
            let write = WriteOptions {
                timeout,
                ..WriteOptions::default()
            };
            let r = db.execute_with(sql.to_owned(), params, write).await?;
            if json {
                println!("{}", serde_json::to_string(&r).unwrap_or_default());
            } else {
                if let Some(rows) = &r.returning {
                    print_table(rows);
                }
                println!(
                    "{} row(s) changed; last insert rowid {}",
                    r.changes, r.last_insert_rowid
                );
            }
            Ok(())
        }
        Err(e) => Err(e.into()),
    };
    db.close().await;
    result
}

fn parse_param(i: usize, raw: &str) -> CliResult<Value> {
    match serde_json::from_str::<serde_json::Value>(raw) {
        Ok(v) => Value::from_json(&v)
            .map_err(|m| Failure::new(format!("parameter {} ({raw}): {m}", i + 1))),
        Err(_) => Ok(Value::Text(raw.to_owned())),
    }
}
