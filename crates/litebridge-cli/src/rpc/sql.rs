//! `sql.*`: the client's SQL, read and written.

use super::*;

/// `sql.query`.
pub(super) fn sql_query(cx: Ctx<'_>, mut a: Args) -> Answer<'_> {
    Box::pin(async move {
        let Ctx { app, .. } = cx;
        let service = &app.service;
        let db = &service.db;
        let sql = a.sql()?;
        let p = a.sql_params()?;
        let timeout = a.timeout()?;
        let max_rows = a
            .opt_u64("max_rows")?
            .map_or(DEFAULT_MAX_ROWS, |n| n as usize);
        if max_rows > MAX_ROWS {
            return Err(RpcError::InvalidParams(format!(
                "sql.query: `max_rows` is at most {MAX_ROWS}"
            )));
        }
        let lane = match a.opt_string("lane")? {
            Some(l) => l.parse::<Lane>()?,
            None => Lane::Read,
        };
        let rows = db
            .query_with(
                &sql,
                p,
                QueryOptions {
                    timeout,
                    max_rows: Some(max_rows),
                    lane,
                },
            )
            .await
            .map_err(|e| match e {
                Error::ReadOnly { .. } => RpcError::App(Error::ReadOnly {
                    message: "sql.query runs read-only statements; send writes with sql.execute"
                        .into(),
                }),
                other => other.into(),
            })?;
        to_json(&rows)
    })
}

/// `sql.execute`.
pub(super) fn sql_execute(cx: Ctx<'_>, mut a: Args) -> Answer<'_> {
    Box::pin(async move {
        let Ctx { app, .. } = cx;
        let service = &app.service;
        let db = &service.db;
        let sql = a.sql()?;
        let p = a.sql_params()?;
        let timeout = a.timeout()?;
        let r = db
            .execute_with(
                sql,
                p,
                WriteOptions {
                    timeout,
                    ..WriteOptions::default()
                },
            )
            .await?;
        to_json(&r)
    })
}

/// `sql.batch`.
pub(super) fn sql_batch(cx: Ctx<'_>, mut a: Args) -> Answer<'_> {
    Box::pin(async move {
        let Ctx { app, .. } = cx;
        let service = &app.service;
        let db = &service.db;
        let timeout = a.timeout()?;
        let statements = match a.take("statements") {
            Some(Json::Array(items)) if items.len() > MAX_STATEMENTS => {
                return Err(RpcError::InvalidParams(format!(
                    "sql.batch: {} statements; at most {MAX_STATEMENTS} are allowed",
                    items.len()
                )));
            }
            Some(Json::Array(items)) if !items.is_empty() => items
                .into_iter()
                .enumerate()
                .map(|(i, s)| {
                    let mut st = Args::new("sql.batch", &["sql", "params"], Some(s)).map_err(
                        |e| match e {
                            RpcError::InvalidParams(m) => {
                                RpcError::InvalidParams(format!("statements[{i}]: {m}"))
                            }
                            other => other,
                        },
                    )?;
                    Ok(Statement::new(st.sql()?, st.sql_params()?))
                })
                .collect::<Result<Vec<_>, RpcError>>()?,
            Some(other) => {
                return Err(a.bad("statements", "a non-empty array of {sql, params}", &other));
            }
            None => {
                return Err(RpcError::InvalidParams(
                    "sql.batch: `statements` is required".into(),
                ));
            }
        };
        let results = db
            .batch(
                statements,
                WriteOptions {
                    timeout,
                    ..WriteOptions::default()
                },
            )
            .await?;
        Ok(json!({ "results": to_json(&results)? }))
    })
}

/// `sql.execute_many`.
pub(super) fn sql_execute_many(cx: Ctx<'_>, mut a: Args) -> Answer<'_> {
    Box::pin(async move {
        let Ctx { app, .. } = cx;
        let service = &app.service;
        let db = &service.db;
        let sql = a.sql()?;
        let timeout = a.timeout()?;
        let rows = match a.take("rows") {
            Some(Json::Array(rows)) if rows.len() > MAX_MANY_ROWS => {
                return Err(RpcError::InvalidParams(format!(
                    "sql.execute_many: {} rows; at most {MAX_MANY_ROWS} are allowed",
                    rows.len()
                )));
            }
            Some(Json::Array(rows)) => rows
                .iter()
                .enumerate()
                .map(|(i, r)| {
                    Params::from_json(Some(r))
                        .map_err(|e| RpcError::InvalidParams(format!("rows[{i}]: {e}")))
                })
                .collect::<Result<Vec<_>, _>>()?,
            Some(other) => return Err(a.bad("rows", "an array of parameter lists", &other)),
            None => {
                return Err(RpcError::InvalidParams(
                    "sql.execute_many: `rows` is required".into(),
                ));
            }
        };
        let r = db
            .execute_many(
                &sql,
                rows,
                WriteOptions {
                    timeout,
                    ..WriteOptions::default()
                },
            )
            .await?;
        Ok(json!({ "changes": r.changes }))
    })
}

/// `sql.schema`.
pub(super) fn sql_schema(cx: Ctx<'_>, _a: Args) -> Answer<'_> {
    Box::pin(async move {
        let Ctx { app, .. } = cx;
        let service = &app.service;
        let db = &service.db;
        Ok(json!({ "tables": to_json(&db.schema().await?)? }))
    })
}
