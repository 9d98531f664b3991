//! `sql.*`: the client's SQL, read and written.

use schemars::JsonSchema;
use serde::Deserialize;

use super::params::{Handler, Sql, SqlParams, TimeoutMs, parameter};
use super::*;

/// Values of an optional `params`.
fn values(p: Option<SqlParams>) -> Params {
    p.map_or(Params::None, |p| p.0)
}

/// The session's latest token, on transports that keep sessions (stdio).
fn session_token() -> Option<Token> {
    super::SESSION
        .try_with(|s| *crate::lock(&s.token))
        .ok()
        .flatten()
}

/// Keeps `token` as the session's latest, when it is later, and gives it
/// back for the answer. After a write that got none (on PostgreSQL, its
/// position could not be read), the session's mark says "unknown" (a
/// token on no timeline), so that its `session` reads go to the primary
/// until a later token comes: the earlier token would let a replica short
/// of the write serve them.
fn remember(token: Option<Token>, wrote: bool) -> Option<Token> {
    let _ = super::SESSION.try_with(|s| {
        let mut latest = crate::lock(&s.token);
        *latest = match token {
            Some(t) => (*latest).max(Some(t)),
            None if wrote => Some(Token::default()),
            None => *latest,
        };
    });
    token
}

/// An answer with its position token when it has one (`wrote`: a write's).
fn with_token(mut answer: Json, token: Option<Token>, wrote: bool) -> Json {
    if let (Some(t), Json::Object(map)) = (remember(token, wrote), &mut answer) {
        map.insert("token".into(), json!(t.to_string()));
    }
    answer
}

/// Where a `session` read goes, from the token given and the session's.
fn session_read(given: Option<Token>, session: Option<Token>) -> Consistency {
    match (given, session) {
        // No token (none given, and no session that wrote or read):
        // nothing to see at least, so any replica.
        (None, None) => Consistency::Any,
        // A token on no timeline (written before tokens had one, or the
        // session's mark after a write that got none) is read on the
        // primary, whatever else is known.
        (g, s) if [g, s].iter().flatten().any(|t| t.timeline == 0) => {
            Consistency::Session(Token::default())
        }
        (g, s) => g.max(s).map_or(Consistency::Any, Consistency::Session),
    }
}

fn write_options(
    timeout: Option<TimeoutMs>,
    once: Option<OnceKey>,
    cx: &Ctx<'_>,
) -> Result<WriteOptions, RpcError> {
    let caller = caller(cx);
    let idempotency_key = match once {
        Some(k) => Some(litebridge::IdempotencyKey::new(
            caller.unwrap_or(u64::MAX),
            &k.0,
        )?),
        None => None,
    };
    Ok(WriteOptions {
        timeout: timeout.map(|t| t.0),
        caller,
        idempotency_key,
        ..WriteOptions::default()
    })
}

parameter!(
    /// A write's idempotency key: 1 to 200 bytes.
    OnceKey(String) from String = "String",
    |s| {
        if s.is_empty() || s.len() > litebridge::MAX_IDEMPOTENCY_KEY {
            Err(format!(
                "is {} bytes; give 1 to {}",
                s.len(),
                litebridge::MAX_IDEMPOTENCY_KEY
            ))
        } else {
            Ok(s)
        }
    },
    schemars::json_schema!({"type": "string", "minLength": 1, "maxLength": 200, "description": "On PostgreSQL: the write applies at most once for this key (per API key, kept 24 hours): a retry with the same key, after a lost answer or `outcome_unknown`, answers with the first one's result instead of running again. SQLite answers `unsupported`."})
);

/// The caller whose requests may share database sessions (PostgreSQL): its
/// key's id, 0 for local callers; `None` (a fresh session each time) for an
/// id that is not a key's.
fn caller(cx: &Ctx<'_>) -> Option<u64> {
    match cx.caller.key() {
        None => Some(0),
        Some(k) => u64::try_from(k.id()).ok().filter(|id| *id > 0),
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
    #[serde(default)]
    consistency: Option<Level>,
    #[serde(default)]
    token: Option<TokenParam>,
}

/// How fresh a read must be (see `docs/postgres.md`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum LevelName {
    Strong,
    Session,
    Any,
}

parameter!(
    /// `strong`, `session` or `any`.
    Level(LevelName) from String = "String",
    |s| match s.as_str() {
        "strong" => Ok(LevelName::Strong),
        "session" => Ok(LevelName::Session),
        "any" => Ok(LevelName::Any),
        _ => Err(format!("{s:?} is not a consistency level (strong, session or any)")),
    },
    schemars::json_schema!({"type": "string", "enum": ["strong", "session", "any"], "description": "On PostgreSQL with replicas: `strong` (default) reads the primary; `session` reads a replica that has replayed past `token` (and the session's own writes), else the primary; `any` reads any replica however far behind. SQLite serves every read from its file: all three see every acknowledged write."})
);

parameter!(
    /// A position token, as writes and non-strong reads return it.
    TokenParam(Token) from String = "String",
    |s| {
        if s.len() > 32 {
            return Err("is not a position token (a log position and a timeline: 0/16B3748@2)".into());
        }
        s.parse::<Token>().map_err(|_| format!("{s:?} is not a position token (a log position and a timeline: 0/16B3748@2)"))
    },
    schemars::json_schema!({"type": "string", "maxLength": 32, "description": "The `token` a write (or an earlier read) returned: a `session` read sees at least that far. Given alone, it implies `consistency: \"session\"`."})
);

parameter!(
    /// Rows returned at most: [`DEFAULT_MAX_ROWS`] unless given, at most
    /// [`MAX_ROWS`].
    MaxRows(usize) from u64 = "u64",
    |n| match usize::try_from(n) {
        Ok(n) if n <= MAX_ROWS => Ok(n),
        _ => Err(format!("is at most {MAX_ROWS}")),
    },
    schemars::json_schema!({"type": "integer", "minimum": 0, "maximum": MAX_ROWS, "description": format!("Most rows to return (default {DEFAULT_MAX_ROWS}; 100 as an MCP tool).")})
);

parameter!(
    /// `read` or `heavy`.
    LaneName(Lane) from String = "String",
    |s| s.parse().map_err(|e: Error| match e {
        Error::InvalidArgument { message, .. } => message,
        other => other.to_string(),
    }),
    schemars::json_schema!({"type": "string", "enum": ["read", "heavy"], "description": "`heavy` for long scans and aggregates, so point reads are not held up (default `read`)."})
);

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
                caller: caller(&cx),
            };
            let given = self.token.map(|t| t.0);
            let level = self.consistency.map(|c| c.0).unwrap_or(if given.is_some() {
                LevelName::Session
            } else {
                LevelName::Strong
            });
            let consistency = match level {
                LevelName::Strong => Consistency::Strong,
                LevelName::Any => Consistency::Any,
                LevelName::Session => session_read(given, session_token()),
            };
            let (rows, token) = cx
                .app
                .service
                .db
                .query_at(&self.sql.0, values(self.params), options, consistency)
                .await
                .map_err(|e| match e {
                    Error::ReadOnly { .. } => RpcError::App(Error::ReadOnly {
                        message:
                            "sql.query runs read-only statements; send writes with sql.execute"
                                .into(),
                    }),
                    other => other.into(),
                })?;
            Ok(with_token(to_json(&rows)?, token, false))
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
    #[serde(default)]
    idempotency_key: Option<OnceKey>,
}

impl Handler for SqlExecute {
    fn run(self, cx: Ctx<'_>) -> Answer<'_> {
        Box::pin(async move {
            let (r, token) = cx
                .app
                .service
                .db
                .execute_at(
                    self.sql.0,
                    values(self.params),
                    write_options(self.timeout_ms, self.idempotency_key, &cx)?,
                )
                .await?;
            Ok(with_token(to_json(&r)?, token, true))
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
    #[serde(default)]
    idempotency_key: Option<OnceKey>,
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
struct Statements(Vec<BatchStatement>);

impl<'de> Deserialize<'de> for Statements {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Statements, D::Error> {
        bounded(d, MAX_STATEMENTS, "statements").and_then(|v: Vec<BatchStatement>| {
            if v.is_empty() {
                Err(serde::de::Error::custom("must hold at least one statement"))
            } else {
                Ok(Statements(v))
            }
        })
    }
}

/// An array of at most `max` items, refused by its length before any item
/// is read (a body of millions of rows is not converted to be refused).
fn bounded<'de, D, T>(d: D, max: usize, what: &'static str) -> Result<Vec<T>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Deserialize<'de>,
{
    struct Items<T> {
        max: usize,
        what: &'static str,
        item: std::marker::PhantomData<T>,
    }
    impl<'de, T: Deserialize<'de>> serde::de::Visitor<'de> for Items<T> {
        type Value = Vec<T>;
        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            write!(f, "an array of at most {} {}", self.max, self.what)
        }
        fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<T>, A::Error> {
            let too_many = |n: &dyn std::fmt::Display| {
                serde::de::Error::custom(format!(
                    "{n} {}; at most {} are allowed",
                    self.what, self.max
                ))
            };
            if let Some(n) = seq.size_hint().filter(|n| *n > self.max) {
                return Err(too_many(&n));
            }
            let mut items = Vec::new();
            while let Some(item) = seq.next_element()? {
                if items.len() == self.max {
                    return Err(too_many(&"more"));
                }
                items.push(item);
            }
            Ok(items)
        }
    }
    d.deserialize_seq(Items {
        max,
        what,
        item: std::marker::PhantomData,
    })
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
            let (results, token) = cx
                .app
                .service
                .db
                .batch_at(
                    statements,
                    write_options(self.timeout_ms, self.idempotency_key, &cx)?,
                )
                .await?;
            Ok(with_token(
                json!({ "results": to_json(&results)? }),
                token,
                true,
            ))
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
    #[serde(default)]
    idempotency_key: Option<OnceKey>,
}

/// One parameter list per run, at most [`MAX_MANY_ROWS`].
struct ManyRows(Vec<Params>);

impl<'de> Deserialize<'de> for ManyRows {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<ManyRows, D::Error> {
        let rows: Vec<SqlParams> = bounded(d, MAX_MANY_ROWS, "rows")?;
        Ok(ManyRows(rows.into_iter().map(|p| p.0).collect()))
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
            let (r, token) = cx
                .app
                .service
                .db
                .execute_many_at(
                    &self.sql.0,
                    self.rows.0,
                    write_options(self.timeout_ms, self.idempotency_key, &cx)?,
                )
                .await?;
            Ok(with_token(json!({ "changes": r.changes }), token, true))
        })
    }
}

/// `sql.schema`.
#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct SqlSchema {}

impl Handler for SqlSchema {
    fn run(self, cx: Ctx<'_>) -> Answer<'_> {
        Box::pin(async move {
            let options = QueryOptions {
                caller: caller(&cx),
                ..QueryOptions::default()
            };
            Ok(json!({ "tables": to_json(&cx.app.service.db.schema(options).await?)? }))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_write_without_a_token_sends_the_sessions_reads_to_the_primary() {
        let session = super::super::Session {
            events: std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false)),
            token: std::sync::Arc::new(std::sync::Mutex::new(None)),
        };
        super::super::SESSION.sync_scope(session, || {
            let t = |tl, lsn| Some(Token::new(tl, lsn));
            assert_eq!(session_read(None, session_token()), Consistency::Any);
            remember(t(1, 50), true);
            assert_eq!(session_token(), t(1, 50));
            // A later read's token moves it on; an earlier one does not.
            remember(t(1, 80), false);
            remember(t(1, 60), false);
            assert_eq!(session_token(), t(1, 80));
            // A write that got no token: the primary, until a later token.
            remember(None, true);
            assert_eq!(
                session_read(None, session_token()),
                Consistency::Session(Token::default())
            );
            assert_eq!(
                session_read(t(1, 90), session_token()),
                Consistency::Session(Token::default()),
                "a token given does not cover the write that got none"
            );
            remember(t(1, 100), false);
            assert_eq!(
                session_read(None, session_token()),
                Consistency::Session(Token::new(1, 100))
            );
            // A read that got no token changes nothing.
            remember(None, false);
            assert_eq!(session_token(), t(1, 100));
            // A token from before timelines, given: the primary.
            assert_eq!(
                session_read(t(0, 5), session_token()),
                Consistency::Session(Token::default())
            );
            assert_eq!(
                session_read(t(2, 5), session_token()),
                Consistency::Session(Token::new(2, 5)),
                "a later timeline is later"
            );
        });
    }
}
