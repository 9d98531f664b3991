//! `sql.*`: the client's SQL, read and written.

use schemars::JsonSchema;
use serde::Deserialize;

use super::params::{Handler, Sql, SqlParams, TimeoutMs};
use super::*;

/// Values of an optional `params`.
fn values(p: Option<SqlParams>) -> Params {
    p.map_or(Params::None, |p| p.0)
}

fn write_options(timeout: Option<TimeoutMs>) -> WriteOptions {
    WriteOptions {
        timeout: timeout.map(|t| t.0),
        ..WriteOptions::default()
    }
}

/// `sql.query`.
#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct SqlQuery {
    sql: Sql,
    #[serde(default)]
    params: Option<SqlParams>,
    #[serde(default)]
    timeout_ms: Option<TimeoutMs>,
    #[serde(default)]
    max_rows: Option<MaxRows>,
    #[serde(default)]
    lane: Option<LaneName>,
}

/// Rows returned at most: [`DEFAULT_MAX_ROWS`] unless given, at most
/// [`MAX_ROWS`].
#[derive(Deserialize)]
#[serde(try_from = "u64")]
struct MaxRows(usize);

impl TryFrom<u64> for MaxRows {
    type Error = String;
    fn try_from(n: u64) -> Result<MaxRows, String> {
        match usize::try_from(n) {
            Ok(n) if n <= MAX_ROWS => Ok(MaxRows(n)),
            _ => Err(format!("is at most {MAX_ROWS}")),
        }
    }
}

impl JsonSchema for MaxRows {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "MaxRows".into()
    }
    fn inline_schema() -> bool {
        true
    }
    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({"type": "integer", "minimum": 0, "maximum": MAX_ROWS, "description": format!("Most rows to return (default {DEFAULT_MAX_ROWS}; 100 as an MCP tool).")})
    }
}

/// `read` or `heavy`.
#[derive(Deserialize)]
#[serde(try_from = "String")]
struct LaneName(Lane);

impl TryFrom<String> for LaneName {
    type Error = String;
    fn try_from(s: String) -> Result<LaneName, String> {
        s.parse().map(LaneName).map_err(|e: Error| match e {
            Error::InvalidArgument { message, .. } => message,
            other => other.to_string(),
        })
    }
}

impl JsonSchema for LaneName {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "Lane".into()
    }
    fn inline_schema() -> bool {
        true
    }
    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({"type": "string", "enum": ["read", "heavy"], "description": "`heavy` for long scans and aggregates, so point reads are not held up (default `read`)."})
    }
}

#[cfg(test)]
impl SqlQuery {
    /// What was read, for the tests of `params`.
    pub(super) fn describe(&self) -> String {
        format!(
            "{} {:?} {:?} {:?} {:?}",
            self.sql.0,
            self.params.as_ref().map_or(Params::None, |p| p.0.clone()),
            self.timeout_ms.as_ref().map(|t| t.0),
            self.max_rows.as_ref().map(|m| m.0),
            self.lane.as_ref().map(|l| l.0)
        )
    }
}

impl Handler for SqlQuery {
    fn run(self, cx: Ctx<'_>) -> Answer<'_> {
        Box::pin(async move {
            let options = QueryOptions {
                timeout: self.timeout_ms.map(|t| t.0),
                max_rows: Some(self.max_rows.map_or(DEFAULT_MAX_ROWS, |m| m.0)),
                lane: self.lane.map_or(Lane::Read, |l| l.0),
            };
            let rows = cx
                .app
                .service
                .db
                .query_with(&self.sql.0, values(self.params), options)
                .await
                .map_err(|e| match e {
                    Error::ReadOnly { .. } => RpcError::App(Error::ReadOnly {
                        message:
                            "sql.query runs read-only statements; send writes with sql.execute"
                                .into(),
                    }),
                    other => other.into(),
                })?;
            to_json(&rows)
        })
    }
}

/// `sql.execute`.
#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct SqlExecute {
    sql: Sql,
    #[serde(default)]
    params: Option<SqlParams>,
    #[serde(default)]
    timeout_ms: Option<TimeoutMs>,
}

impl Handler for SqlExecute {
    fn run(self, cx: Ctx<'_>) -> Answer<'_> {
        Box::pin(async move {
            let r = cx
                .app
                .service
                .db
                .execute_with(
                    self.sql.0,
                    values(self.params),
                    write_options(self.timeout_ms),
                )
                .await?;
            to_json(&r)
        })
    }
}

/// `sql.batch`.
#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct SqlBatch {
    statements: Statements,
    #[serde(default)]
    timeout_ms: Option<TimeoutMs>,
}

/// One statement of a batch.
#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct BatchStatement {
    sql: Sql,
    #[serde(default)]
    params: Option<SqlParams>,
}

/// A batch's statements: 1 to [`MAX_STATEMENTS`].
#[derive(Deserialize)]
#[serde(try_from = "Vec<BatchStatement>")]
struct Statements(Vec<BatchStatement>);

impl TryFrom<Vec<BatchStatement>> for Statements {
    type Error = String;
    fn try_from(v: Vec<BatchStatement>) -> Result<Statements, String> {
        match v.len() {
            0 => Err("must hold at least one statement".into()),
            n if n > MAX_STATEMENTS => Err(format!(
                "{n} statements; at most {MAX_STATEMENTS} are allowed"
            )),
            _ => Ok(Statements(v)),
        }
    }
}

impl JsonSchema for Statements {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "Statements".into()
    }
    fn inline_schema() -> bool {
        true
    }
    fn json_schema(generator: &mut schemars::SchemaGenerator) -> schemars::Schema {
        let item = generator.subschema_for::<BatchStatement>();
        schemars::json_schema!({"type": "array", "minItems": 1, "maxItems": MAX_STATEMENTS, "items": item, "description": "The statements, in order."})
    }
}

impl Handler for SqlBatch {
    fn run(self, cx: Ctx<'_>) -> Answer<'_> {
        Box::pin(async move {
            let statements = self
                .statements
                .0
                .into_iter()
                .map(|s| Statement::new(s.sql.0, values(s.params)))
                .collect();
            let results = cx
                .app
                .service
                .db
                .batch(statements, write_options(self.timeout_ms))
                .await?;
            Ok(json!({ "results": to_json(&results)? }))
        })
    }
}

/// `sql.execute_many`.
#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct SqlExecuteMany {
    sql: Sql,
    rows: ManyRows,
    #[serde(default)]
    timeout_ms: Option<TimeoutMs>,
}

/// One parameter list per run, at most [`MAX_MANY_ROWS`].
#[derive(Deserialize)]
#[serde(try_from = "Vec<SqlParams>")]
struct ManyRows(Vec<Params>);

impl TryFrom<Vec<SqlParams>> for ManyRows {
    type Error = String;
    fn try_from(v: Vec<SqlParams>) -> Result<ManyRows, String> {
        if v.len() > MAX_MANY_ROWS {
            return Err(format!(
                "{} rows; at most {MAX_MANY_ROWS} are allowed",
                v.len()
            ));
        }
        Ok(ManyRows(v.into_iter().map(|p| p.0).collect()))
    }
}

impl JsonSchema for ManyRows {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "ManyRows".into()
    }
    fn inline_schema() -> bool {
        true
    }
    fn json_schema(generator: &mut schemars::SchemaGenerator) -> schemars::Schema {
        let item = generator.subschema_for::<SqlParams>();
        schemars::json_schema!({"type": "array", "maxItems": MAX_MANY_ROWS, "items": item, "description": "One parameter list (or object) per run."})
    }
}

impl Handler for SqlExecuteMany {
    fn run(self, cx: Ctx<'_>) -> Answer<'_> {
        Box::pin(async move {
            let r = cx
                .app
                .service
                .db
                .execute_many(&self.sql.0, self.rows.0, write_options(self.timeout_ms))
                .await?;
            Ok(json!({ "changes": r.changes }))
        })
    }
}

/// `sql.schema`.
#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct SqlSchema {}

impl Handler for SqlSchema {
    fn run(self, cx: Ctx<'_>) -> Answer<'_> {
        Box::pin(
            async move { Ok(json!({ "tables": to_json(&cx.app.service.db.schema().await?)? })) },
        )
    }
}
