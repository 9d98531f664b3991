//! `sql.*`: the client's SQL, read and written.

use schemars::JsonSchema;
use serde::Deserialize;

use super::params::{Handler, Sql, SqlParams, TimeoutMs, parameter};
use super::*;

/// Values of an optional `params`.
fn values(p: Option<SqlParams>) -> Params {
    p.map_or(Params::None, |p| p.0)
}

/// What a session (stdio keeps one per connection) knows of how far its
/// `session` reads must see.
#[derive(Debug, Default)]
pub(crate) struct SessionTokens {
    /// The latest token of its answers.
    latest: Option<Token>,
    /// Its `sql.*` requests begun so far: each takes the next number.
    begun: u64,
    /// Set after a write whose position is unknown (it got no token, or
    /// answered `outcome_unknown`): requests numbered from here on began
    /// after it. Until one of them brings a token, the session reads on the
    /// primary: every token it holds may be short of that write.
    unknown_from: Option<u64>,
}

impl SessionTokens {
    fn begin(&mut self) -> u64 {
        self.begun += 1;
        self.begun
    }

    /// The token its reads wait for: the latest, or one on no timeline
    /// (read on the primary) while a write's position is unknown.
    fn current(&self) -> Option<Token> {
        if self.unknown_from.is_some() {
            Some(Token::default())
        } else {
            self.latest
        }
    }

    /// Request `n` answered with `token`. A token lowers nothing; one of a
    /// request begun after an unknown write covers it, unless an `any`
    /// read's (a replica however far behind).
    fn answered(&mut self, n: u64, token: Token, any_read: bool) {
        self.latest = self.latest.max(Some(token));
        if !any_read && self.unknown_from.is_some_and(|from| n > from) {
            self.unknown_from = None;
        }
    }

    fn wrote_unknown(&mut self) {
        self.unknown_from = Some(self.begun);
    }
}

/// What a request did, for the session's tokens.
#[derive(Clone, Copy, PartialEq)]
enum Did {
    Read { any: bool },
    Wrote,
}

/// This request's number in its session (on transports that keep one).
fn begin() -> Option<u64> {
    super::SESSION
        .try_with(|s| crate::lock(&s.token).begin())
        .ok()
}

/// The session's token for its reads.
fn session_token() -> Option<Token> {
    super::SESSION
        .try_with(|s| crate::lock(&s.token).current())
        .ok()
        .flatten()
}

/// Keeps what request `n`'s answer tells of the session's position, and
/// gives its token back.
fn remember(n: Option<u64>, token: Option<Token>, did: Did) -> Option<Token> {
    let _ = super::SESSION.try_with(|s| {
        let mut tokens = crate::lock(&s.token);
        match (n, token) {
            // A write's token on no timeline: its position is unknown.
            (_, Some(t)) if did == Did::Wrote && t.timeline == 0 => tokens.wrote_unknown(),
            (Some(n), Some(t)) => tokens.answered(n, t, did == Did::Read { any: true }),
            (_, None) if did == Did::Wrote => tokens.wrote_unknown(),
            _ => {}
        }
    });
    token
}

/// A write that failed: when it may have committed (`outcome_unknown`),
/// the session no longer knows how far its reads must see.
fn failed_write(e: Error) -> RpcError {
    if e.kind() == ErrorKind::OutcomeUnknown {
        let _ = super::SESSION.try_with(|s| crate::lock(&s.token).wrote_unknown());
    }
    RpcError::App(e)
}

/// An answer with its position token when it has one.
fn with_token(mut answer: Json, n: Option<u64>, token: Option<Token>, did: Did) -> Json {
    if let (Some(t), Json::Object(map)) = (remember(n, token, did), &mut answer) {
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
    let idempotency_key = match (once, cx.caller.key()) {
        (Some(k), Some(_)) => Some(litebridge::IdempotencyKey::new(
            caller.unwrap_or(u64::MAX),
            &k.0,
        )?),
        (Some(k), None) => Some(litebridge::IdempotencyKey::local(cx.caller.scopes(), &k.0)?),
        (None, _) => None,
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
    schemars::json_schema!({"type": "string", "minLength": 1, "maxLength": 200, "description": "The write applies at most once for this key (per API key, kept 24 hours): a retry with the same key, after a lost answer or `outcome_unknown`, answers with the first one's result instead of running again. The same key with another write is refused."})
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
            let n = begin();
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
            let did = Did::Read {
                any: consistency == Consistency::Any,
            };
            Ok(with_token(to_json(&rows)?, n, token, did))
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
            let n = begin();
            let (r, token) = cx
                .app
                .service
                .db
                .execute_at(
                    self.sql.0,
                    values(self.params),
                    write_options(self.timeout_ms, self.idempotency_key, &cx)?,
                )
                .await
                .map_err(failed_write)?;
            Ok(with_token(to_json(&r)?, n, token, Did::Wrote))
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
            let n = begin();
            let (results, token) = cx
                .app
                .service
                .db
                .batch_at(
                    statements,
                    write_options(self.timeout_ms, self.idempotency_key, &cx)?,
                )
                .await
                .map_err(failed_write)?;
            Ok(with_token(
                // Moved in: `json!` would copy the tree.
                Json::Object(serde_json::Map::from_iter([(
                    "results".to_owned(),
                    to_json(&results)?,
                )])),
                n,
                token,
                Did::Wrote,
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
            let n = begin();
            let (r, token) = cx
                .app
                .service
                .db
                .execute_many_at(
                    &self.sql.0,
                    self.rows.0,
                    write_options(self.timeout_ms, self.idempotency_key, &cx)?,
                )
                .await
                .map_err(failed_write)?;
            Ok(with_token(
                json!({ "changes": r.changes }),
                n,
                token,
                Did::Wrote,
            ))
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
    fn a_write_of_unknown_position_sends_the_sessions_reads_to_the_primary() {
        let mut s = SessionTokens::default();
        let t = |tl, lsn| Token::new(tl, lsn);
        let tell = |s: &SessionTokens| session_read(None, s.current());
        assert_eq!(tell(&s), Consistency::Any);
        let n = s.begin();
        s.answered(n, t(1, 80), false);
        // A later token moves it on; an earlier one does not.
        let n = s.begin();
        s.answered(n, t(1, 60), false);
        assert_eq!(s.current(), Some(t(1, 80)));
        // A write that got no token: the primary...
        let late = s.begin(); // begun before the write below ended
        s.begin(); // the write
        s.wrote_unknown();
        assert_eq!(tell(&s), Consistency::Session(Token::default()));
        assert_eq!(
            session_read(Some(t(1, 90)), s.current()),
            Consistency::Session(Token::default()),
            "a token given does not cover the write of unknown position"
        );
        // ...even after an older request's token, or an `any` read's...
        s.answered(late, t(1, 200), false);
        let n = s.begin();
        s.answered(n, t(1, 70), true);
        assert_eq!(tell(&s), Consistency::Session(Token::default()));
        // ...until a request begun after it brings one.
        let n = s.begin();
        s.answered(n, t(1, 100), false);
        assert_eq!(tell(&s), Consistency::Session(t(1, 200)));
        // A token from before timelines, given: the primary.
        assert_eq!(
            session_read(Some(t(0, 5)), s.current()),
            Consistency::Session(Token::default())
        );
        assert_eq!(
            session_read(Some(t(2, 5)), s.current()),
            Consistency::Session(t(2, 5)),
            "a later timeline is later"
        );
    }

    #[test]
    fn the_session_is_kept_through_the_task_local() {
        let session = super::super::Session {
            events: std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false)),
            token: std::sync::Arc::new(std::sync::Mutex::new(SessionTokens::default())),
        };
        super::super::SESSION.sync_scope(session, || {
            let n = begin();
            assert_eq!(n, Some(1));
            remember(n, Some(Token::new(1, 5)), Did::Read { any: false });
            assert_eq!(session_token(), Some(Token::new(1, 5)));
            remember(begin(), None, Did::Read { any: false });
            assert_eq!(
                session_token(),
                Some(Token::new(1, 5)),
                "a read without a token"
            );
            remember(begin(), None, Did::Wrote);
            assert_eq!(session_token(), Some(Token::default()));
            remember(begin(), Some(Token::new(1, 9)), Did::Wrote);
            assert_eq!(session_token(), Some(Token::new(1, 9)));
            let _ = failed_write(Error::OutcomeUnknown {
                what: "a write".into(),
                reason: "the connection closed after COMMIT was sent".into(),
            });
            assert_eq!(session_token(), Some(Token::default()), "outcome_unknown");
            remember(begin(), Some(Token::new(2, 12)), Did::Wrote);
            assert_eq!(session_token(), Some(Token::new(2, 12)));
            // A write whose position could not be read answers a token on no
            // timeline, which the session takes as an unknown write: a later
            // token of an earlier request does not cover it.
            let earlier = begin();
            let answered = remember(begin(), Some(Token::default()), Did::Wrote);
            assert_eq!(answered.map(|t| t.to_string()).as_deref(), Some("0/0"));
            remember(earlier, Some(Token::new(2, 30)), Did::Read { any: false });
            assert_eq!(session_token(), Some(Token::default()), "still the primary");
            assert_eq!(
                session_read(answered, None),
                Consistency::Session(Token::default()),
                "over HTTP, the token alone sends the read to the primary"
            );
        });
    }
}
