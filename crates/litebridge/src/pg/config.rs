//! [`PgConfig`]: where the PostgreSQL backend connects, and as whom.

use std::time::Duration;

use crate::error::{Error, Result};

/// The configuration of a [`PgDatabase`](super::PgDatabase). Its `Debug`
/// shows neither password.
#[derive(Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct PgConfig {
    /// The connection URL, as `pg_autoctl show uri` prints it: it may list
    /// several hosts (`postgres://u@h1:5432,h2:5432/db?target_session_attrs=read-write`).
    /// Its user owns litebridge's own schema.
    pub url: String,
    /// The login role that runs the clients' SQL: another role than the
    /// URL's user, not a superuser, with no rights on litebridge's schema
    /// (checked at connect). Required.
    pub client_user: Option<String>,
    /// That role's password, when it needs one.
    pub client_password: Option<String>,
    /// The schema the clients' SQL resolves names in first (its
    /// `search_path`). `None` keeps the role's own.
    pub client_schema: Option<String>,
    /// litebridge's own schema (the stores, keys, quotas), owned by the URL's
    /// user. Default: `litebridge`.
    pub schema: String,
    /// Connections for the clients' SQL. Default: 16.
    pub connections: usize,
    /// How long to wait for a connection to be made. Default: 5 s.
    pub connect_timeout: Duration,
    /// The deadline of a request that gives none. Default: 30 s.
    pub default_timeout: Duration,
    /// The most bytes a query's rows may hold, and the rows a write's
    /// statements return (`RETURNING`), all of a request's together; and
    /// the most a stored value may take read back into a JSON tree.
    /// Default: the SQLite backend's
    /// [`DEFAULT_MAX_RESULT_BYTES`](crate::DEFAULT_MAX_RESULT_BYTES).
    pub max_result_bytes: usize,
    /// Prepared statements kept per connection. Default: 256.
    pub statement_cache: usize,
    /// Whether a statement's later reads on a connection go in one round
    /// trip, their values written into the query's text (`fast`). Other
    /// sessions of the clients' role (other API keys) can then read those
    /// values in `pg_stat_activity`, and the server's log holds them when
    /// such a read fails. Default: off.
    pub one_message_reads: bool,
    /// Whether a write whose statements its connection prepared already
    /// sends its `BEGIN` and statements in one message (two round trips
    /// with its `COMMIT`, where the long way takes three), their values
    /// written into the query's text (`fast`), as
    /// [`PgConfig::one_message_reads`] does. Writes with an idempotency key
    /// go the long way. Default: off.
    pub one_message_writes: bool,
    /// With [`PgConfig::one_message_reads`], the most reads of one caller
    /// sent in one message: reads that wait for a connection go with the
    /// next read of their caller to get one (`together`). 1 sends each
    /// read alone. Default: 8.
    pub reads_per_message: usize,
    /// With [`PgConfig::reads_per_message`] (or
    /// [`PgConfig::writes_per_message`]) above 1, reads (writes) of a
    /// statement whose caller's last one alone took longer than this go
    /// alone: the requests of a message wait for each other, and a message
    /// that outlives what its requests took alone is cancelled, its slow
    /// request run again alone (`together`). Default: 20 ms.
    pub reads_together_below: Duration,
    /// After every clients' request, every setting back to the
    /// connection's start-up options, and a connection where the clients'
    /// code prepared a statement with SQL closed: a `write` key's function
    /// that another key's request runs (a view, a trigger) then cannot
    /// reach that caller's later requests through its session (its
    /// `search_path`, `synchronous_commit`, a statement under the name of
    /// one of litebridge's). It costs PostgreSQL three statements more a
    /// request, measured in docs/postgres.md. Off only where every key that
    /// may create functions is trusted by every other key. Default: on.
    pub isolate_requests: bool,
    /// With [`PgConfig::one_message_writes`], the most single-statement
    /// writes of one caller sent in one message, each in a transaction of
    /// its own: writes that wait for a connection go with the next write
    /// of their caller to get one (`writes_together`), when their
    /// statements were quick alone
    /// ([`PgConfig::reads_together_below`]). A connection lost in such a
    /// message makes its writes not answered yet `outcome_unknown`. 1
    /// sends each write alone. Default: 8.
    pub writes_per_message: usize,
    /// Streaming replicas to read from when a read asks for it
    /// ([`Consistency`](super::Consistency)), as `host:port`; the URL's
    /// database, user and settings. Default: none (every read on the primary).
    pub replicas: Vec<String>,
    /// How often the primary and the replicas are probed for health and
    /// lag. Default: 5 s.
    pub health_check_interval: Duration,
    /// How many standbys must have flushed a write before it is
    /// acknowledged: after its `COMMIT`, litebridge waits, within the
    /// write's deadline, until that many physical standbys streaming from
    /// the primary report a flush position at or past the commit, and
    /// answers `outcome_unknown` when they do not (the write committed on
    /// the primary and may be lost with it) or when the primary changed
    /// before they did. The primary's own `synchronous_standby_names` is
    /// not enough where the cluster's manager turns it off while a standby
    /// catches up (pg_auto_failover's `wait_primary`) and may then promote
    /// that standby (docs/postgres.md). Needs litebridge's own role to read
    /// `pg_stat_replication` in full (`pg_read_all_stats`). 0 trusts the
    /// server's acknowledgement. Default: 0.
    pub replicated_to: usize,
    /// The standbys [`PgConfig::replicated_to`] counts, as patterns of
    /// their `application_name` (`LIKE`: `%` any run, `_` any one
    /// character), such as pg_auto_failover's `pgautofailover_standby_%`:
    /// a `pg_receivewal`, a `pg_basebackup` or an archiver streams from the
    /// primary too, and holds the log without being a server to fail over
    /// to. Empty counts every physical sender that streams. Default: empty.
    pub replicated_standbys: Vec<String>,
}

impl std::fmt::Debug for PgConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgConfig")
            .field("url", &self.redacted_url())
            .field("client_user", &self.client_user)
            .field(
                "client_password",
                &self.client_password.as_ref().map(|_| "(set, not shown)"),
            )
            .field("client_schema", &self.client_schema)
            .field("schema", &self.schema)
            .field("connections", &self.connections)
            .field("connect_timeout", &self.connect_timeout)
            .field("default_timeout", &self.default_timeout)
            .field("max_result_bytes", &self.max_result_bytes)
            .field("statement_cache", &self.statement_cache)
            .field("one_message_reads", &self.one_message_reads)
            .field("one_message_writes", &self.one_message_writes)
            .field("reads_per_message", &self.reads_per_message)
            .field("reads_together_below", &self.reads_together_below)
            .field("isolate_requests", &self.isolate_requests)
            .field("writes_per_message", &self.writes_per_message)
            .field("replicas", &self.replicas)
            .field("health_check_interval", &self.health_check_interval)
            .field("replicated_to", &self.replicated_to)
            .field("replicated_standbys", &self.replicated_standbys)
            .finish()
    }
}

impl PgConfig {
    /// A configuration for `url` with the defaults.
    pub fn new(url: impl Into<String>) -> PgConfig {
        PgConfig {
            url: url.into(),
            client_user: None,
            client_password: None,
            client_schema: None,
            schema: "litebridge".into(),
            connections: 16,
            connect_timeout: Duration::from_secs(5),
            default_timeout: Duration::from_secs(30),
            max_result_bytes: crate::DEFAULT_MAX_RESULT_BYTES,
            statement_cache: 256,
            one_message_reads: false,
            one_message_writes: false,
            reads_per_message: 8,
            reads_together_below: Duration::from_millis(20),
            isolate_requests: true,
            writes_per_message: 8,
            replicas: Vec::new(),
            health_check_interval: Duration::from_secs(5),
            replicated_to: 0,
            replicated_standbys: Vec::new(),
        }
    }

    /// Whether one-message reads or writes are on: the clients' values may
    /// travel in the query's text.
    pub(crate) fn values_in_text(&self) -> bool {
        self.one_message_reads || self.one_message_writes
    }

    /// Sets [`PgConfig::replicas`].
    #[must_use]
    pub fn replicas(mut self, replicas: impl IntoIterator<Item = impl Into<String>>) -> PgConfig {
        self.replicas = replicas.into_iter().map(Into::into).collect();
        self
    }

    /// Sets [`PgConfig::client_user`] (and its password).
    #[must_use]
    pub fn client(mut self, user: impl Into<String>, password: Option<String>) -> PgConfig {
        self.client_user = Some(user.into());
        self.client_password = password;
        self
    }

    /// Sets [`PgConfig::schema`].
    #[must_use]
    pub fn schema(mut self, schema: impl Into<String>) -> PgConfig {
        self.schema = schema.into();
        self
    }

    /// Sets [`PgConfig::client_schema`].
    #[must_use]
    pub fn client_schema(mut self, schema: impl Into<String>) -> PgConfig {
        self.client_schema = Some(schema.into());
        self
    }

    /// The URL parsed, refused with the reason when it is not one.
    pub(crate) fn parsed(&self) -> Result<tokio_postgres::Config> {
        let mut c: tokio_postgres::Config = self.url.parse().map_err(|e| Error::Config {
            key: "postgres.url".into(),
            value: redact(&self.url),
            expected: format!("a PostgreSQL connection URL or key=value string ({e})"),
        })?;
        if c.get_hosts().is_empty() {
            return Err(Error::Config {
                key: "postgres.url".into(),
                value: redact(&self.url),
                expected: "a URL that names at least one host".into(),
            });
        }
        if c.get_user().is_none() {
            return Err(Error::Config {
                key: "postgres.url".into(),
                value: redact(&self.url),
                expected: "a URL that names its user (postgres://user@host/db)".into(),
            });
        }
        c.connect_timeout(self.connect_timeout);
        c.application_name("litebridge");
        Ok(c)
    }

    /// The connection settings of the clients' SQL. Settings that decide
    /// how litebridge reads the SQL and its results, and the server's
    /// `synchronous_commit`, are fixed in the connection's start-up options,
    /// which win over a role's own defaults (`ALTER ROLE ... SET`, which the
    /// clients' role can run on itself) and which `RESET ALL` returns to.
    pub(crate) fn client_config(&self, server: &Server) -> Result<tokio_postgres::Config> {
        let synchronous_commit = server.synchronous_commit.as_str();
        let mut c = self.parsed()?;
        if let Some(user) = &self.client_user {
            c.user(user);
            match &self.client_password {
                Some(p) => c.password(p),
                None => c.password(Vec::<u8>::new()),
            };
        }
        let mut options = format!("{SESSION} {CLIENT_SESSION}");
        if self.values_in_text() {
            options.push_str(ONE_MESSAGE_SESSION);
        }
        if !synchronous_commit.is_empty() {
            if !synchronous_commit
                .chars()
                .all(|c| c.is_ascii_lowercase() || c == '_')
            {
                return Err(Error::Config {
                    key: "synchronous_commit (the server's)".into(),
                    value: format!("{synchronous_commit:?}"),
                    expected: "one of PostgreSQL's values".into(),
                });
            }
            options.push_str(" -c synchronous_commit=");
            options.push_str(synchronous_commit);
        }
        // A statement can catch its cancel and go on: once litebridge gives
        // up on it and closes its connection, the server ends the session
        // within a second of noticing (a FATAL error, which no handler
        // catches). Pinned, so that no role-level default turns it off.
        if server.watches_clients {
            options.push_str(" -c client_connection_check_interval=1000");
        }
        // PostgreSQL 17's; an older server refuses the name at start-up.
        if server.version >= 170_000 {
            options.push_str(" -c transaction_timeout=0");
        }
        options.push_str(" -c tcp_user_timeout=0");
        // Every release of 17 knows it (and the minor releases of 12-16
        // of August 2024): a role's default of `view` failed every key's
        // query of a view (review 248). Pinned from 17 only: the version
        // read is the primary's, and a standby of an older minor release
        // would refuse the name (review 249).
        if server.version >= 170_000 {
            options.push_str(" -c restrict_nonsystem_relation_kind=");
        }
        // Pinned too when not configured (PostgreSQL's own default), so
        // that a role-level default cannot put the clients' functions
        // before pg_catalog's in every new session.
        options.push_str(" -c search_path=");
        match &self.client_schema {
            Some(schema) => {
                schema_name("postgres.client_schema", schema, 63)?;
                options.push_str(schema);
            }
            None => options.push_str("\"$user\",public"),
        }
        c.options(&options);
        Ok(c)
    }

    /// The clients' connection settings for one replica (`host:port`).
    pub(crate) fn replica_config(
        &self,
        replica: &str,
        server: &Server,
    ) -> Result<tokio_postgres::Config> {
        self.on_replica(replica, &self.client_config(server)?)
    }

    /// litebridge's own role's connection settings for one replica
    /// (`host:port`): it ends the clients' statements there that go on
    /// after litebridge gave up on them (`backend`).
    pub(crate) fn own_replica_config(&self, replica: &str) -> Result<tokio_postgres::Config> {
        self.on_replica(replica, &self.own_config()?)
    }

    /// `base`'s user, password, database and options, on `replica`.
    fn on_replica(
        &self,
        replica: &str,
        base: &tokio_postgres::Config,
    ) -> Result<tokio_postgres::Config> {
        let bad = || Error::Config {
            key: "postgres.replicas".into(),
            value: format!("{replica:?}"),
            expected: "host:port".into(),
        };
        let (host, port) = replica.rsplit_once(':').ok_or_else(bad)?;
        let port: u16 = port.parse().map_err(|_| bad())?;
        if host.is_empty() {
            return Err(bad());
        }
        let mut c = tokio_postgres::Config::new();
        c.host(host).port(port);
        if let Some(u) = base.get_user() {
            c.user(u);
        }
        if let Some(p) = base.get_password() {
            c.password(p);
        }
        if let Some(d) = base.get_dbname() {
            c.dbname(d);
        }
        if let Some(o) = base.get_options() {
            c.options(o);
        }
        c.application_name("litebridge");
        c.connect_timeout(self.connect_timeout);
        Ok(c)
    }

    /// The connection settings of litebridge's own work (the stores).
    pub(crate) fn own_config(&self) -> Result<tokio_postgres::Config> {
        let mut c = self.parsed()?;
        // litebridge's own statements qualify their tables; pg_catalog alone
        // keeps a database- or role-level search_path (which a database's
        // owner may set) from putting someone's operator in front of `=`.
        c.options(format!("{SESSION} -c search_path=pg_catalog"));
        Ok(c)
    }

    /// The URL with its password, if any, not shown.
    pub fn redacted_url(&self) -> String {
        redact(&self.url)
    }

    /// The URL's hosts, `host:port` joined by commas (no user, no password).
    pub(crate) fn hosts(&self) -> String {
        let Ok(c) = self.parsed() else {
            return String::new();
        };
        let ports = c.get_ports();
        c.get_hosts()
            .iter()
            .enumerate()
            .map(|(i, h)| {
                let host = match h {
                    tokio_postgres::config::Host::Tcp(h) => h.clone(),
                    #[cfg(unix)]
                    tokio_postgres::config::Host::Unix(p) => p.display().to_string(),
                };
                let port = ports.get(i).or(ports.first()).copied().unwrap_or(5432);
                format!("{host}:{port}")
            })
            .collect::<Vec<_>>()
            .join(",")
    }

    /// Checks the values.
    ///
    /// # Errors
    /// [`Error::Config`] naming the first invalid setting.
    pub fn validate(&self) -> Result<()> {
        self.client_config(&Server::default())?;
        schema_name("postgres.schema", &self.schema, 56)?;
        let owner = self.parsed()?.get_user().map(str::to_owned);
        match &self.client_user {
            None => {
                return Err(Error::Config {
                    key: "postgres.client_user".into(),
                    value: "(none)".into(),
                    expected: "the role that runs the clients' SQL: another role than the URL's \
                               user, which owns litebridge's own tables (docs/postgres.md)"
                        .into(),
                });
            }
            Some(u) if Some(u) == owner.as_ref() => {
                return Err(Error::Config {
                    key: "postgres.client_user".into(),
                    value: format!("{u:?}"),
                    expected: "another role than the URL's user, which owns litebridge's own \
                               tables: the clients' SQL must not be able to reach them"
                        .into(),
                });
            }
            Some(_) => {}
        }
        let range = |key: &str, v: usize, lo: usize, hi: usize| {
            if (lo..=hi).contains(&v) {
                Ok(())
            } else {
                Err(Error::Config {
                    key: key.into(),
                    value: v.to_string(),
                    expected: format!("{lo} to {hi}"),
                })
            }
        };
        range("postgres.connections", self.connections, 1, 1000)?;
        range("postgres.statement_cache", self.statement_cache, 1, 100_000)?;
        range("postgres.reads_per_message", self.reads_per_message, 1, 64)?;
        range(
            "postgres.writes_per_message",
            self.writes_per_message,
            1,
            64,
        )?;
        range("postgres.replicated_to", self.replicated_to, 0, 64)?;
        for name in &self.replicated_standbys {
            let plain = |c: char| c.is_ascii_alphanumeric() || "_%.-".contains(c);
            if name.is_empty() || name.len() > 63 || !name.chars().all(plain) {
                return Err(Error::Config {
                    key: "postgres.replicated_standbys".into(),
                    value: format!("{name:?}"),
                    expected: "application_name patterns of up to 63 letters, digits, `_`, `%`, \
                               `.` or `-`, separated by commas"
                        .into(),
                });
            }
        }
        let below = self.reads_together_below.as_millis();
        range(
            "postgres.reads_together_below_ms",
            below as usize,
            1,
            60_000,
        )?;
        for r in &self.replicas {
            self.replica_config(r, &Server::default())?;
        }
        if !(Duration::from_millis(100)..=Duration::from_secs(60))
            .contains(&self.health_check_interval)
        {
            return Err(Error::Config {
                key: "postgres.health_check_interval_ms".into(),
                value: self.health_check_interval.as_millis().to_string(),
                expected: "100 to 60000 (health goes stale after two intervals)".into(),
            });
        }
        Ok(())
    }
}

/// What the primary's own settings and version decide of the clients'
/// sessions' start-up options (read at connect; replicas and failover
/// nodes run the primary's major version).
#[derive(Debug, Clone, Default)]
pub(crate) struct Server {
    /// Its `synchronous_commit`, pinned so that a role-level setting
    /// cannot lower it (empty: not pinned).
    pub(crate) synchronous_commit: String,
    /// `server_version_num`: settings newer than the server are left out.
    pub(crate) version: u32,
    /// Whether it takes `client_connection_check_interval` (its platform
    /// can watch a socket for its peer's close).
    pub(crate) watches_clients: bool,
}

/// Every session's settings: times printed as the result mapping reads them.
const SESSION: &str = "-c TimeZone=UTC -c DateStyle=ISO -c IntervalStyle=iso_8601";

/// The clients' sessions also fix what decides how their SQL is read and
/// run, whatever a role's own defaults say (`ALTER ROLE CURRENT_USER SET`),
/// and what such a default could use to lock the role out or make the
/// server log other keys' statements and values: no
/// `local_preload_libraries` (one naming a library that is not there
/// failed every later connection, review 247), no bound values in the log
/// of a failed statement, no parse trees or plans in the log (they hold
/// each statement's literals, review 248).
/// Not `default_transaction_read_only`: pg_auto_failover fences a node it
/// is promoting with it (the server's own setting), and a write must meet
/// that fence, not override it (the failover test caught writes accepted
/// there).
const CLIENT_SESSION: &str = "-c role=none -c standard_conforming_strings=on \
     -c default_transaction_isolation=read\\ committed \
     -c statement_timeout=0 -c lock_timeout=0 -c idle_in_transaction_session_timeout=0 \
     -c idle_session_timeout=0 -c row_security=on -c transform_null_equals=off \
     -c array_nulls=on -c exit_on_error=off -c timezone_abbreviations=Default \
     -c gin_fuzzy_search_limit=0 -c local_preload_libraries= \
     -c log_parameter_max_length_on_error=0 -c debug_print_parse=off \
     -c debug_print_rewritten=off -c debug_print_plan=off";

/// With one-message requests on, what decides how their text results read
/// (`fast`), whatever a role's own defaults say.
const ONE_MESSAGE_SESSION: &str = " -c extra_float_digits=1 -c bytea_output=hex";

/// Refuses a schema name that would need quoting (litebridge writes it
/// into SQL as it is): lower-case letters, digits and `_`, a letter first.
fn schema_name(key: &str, name: &str, max: usize) -> Result<()> {
    let ok = name.len() <= max
        && name.starts_with(|c: char| c.is_ascii_lowercase())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
    if ok {
        Ok(())
    } else {
        Err(Error::Config {
            key: key.into(),
            value: format!("{name:?}"),
            expected: format!(
                "a schema name of lower-case letters, digits and underscores, a letter first, \
                 at most {max} bytes"
            ),
        })
    }
}

/// The URL with any password replaced, for messages.
pub(crate) fn redact(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        if url.to_ascii_lowercase().contains("pass") {
            return "(a key=value string with a password, not shown)".into();
        }
        return url.to_owned();
    };
    // postgres://user:secret@host -> postgres://user:***@host. The last
    // `@`: a password may hold one (more is starred if the query does).
    let (auth, hosts) = match rest.rsplit_once('@') {
        Some((auth, hosts)) => {
            let user = auth.split_once(':').map_or(auth, |(user, _)| user);
            let stars = if auth.contains(':') { ":***" } else { "" };
            (format!("{user}{stars}@"), hosts)
        }
        None => (String::new(), rest),
    };
    // ?password=... too, however its name is written (review 206:
    // tokio-postgres reads `pass%77ord` as `password`).
    let hosts = match hosts.split_once('?') {
        Some((before, query)) => {
            let query: Vec<String> = query
                .split('&')
                .map(|pair| match pair.split_once('=') {
                    Some((k, _)) if percent_decoded(k).eq_ignore_ascii_case("password") => {
                        format!("{k}=***")
                    }
                    _ => pair.to_owned(),
                })
                .collect();
            format!("{before}?{}", query.join("&"))
        }
        None => hosts.to_owned(),
    };
    format!("{scheme}://{auth}{hosts}")
}

/// `text` with its `%XX` escapes read (as bytes; a broken escape kept).
fn percent_decoded(text: &str) -> String {
    let b = text.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex = |c: u8| (c as char).to_digit(16);
        match (
            b[i],
            b.get(i + 1).copied().and_then(hex),
            b.get(i + 2).copied().and_then(hex),
        ) {
            (b'%', Some(h), Some(l)) => {
                out.push((h * 16 + l) as u8);
                i += 3;
            }
            (c, _, _) => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_in_a_url_are_never_shown() {
        for (url, shown) in [
            ("postgres://u:pw@h:5432/db", "postgres://u:***@h:5432/db"),
            ("postgres://u:p@w@h/db", "postgres://u:***@h/db"),
            (
                "postgres://u:decoy@h:1/db?password=S2&x=1",
                "postgres://u:***@h:1/db?password=***&x=1",
            ),
            (
                "postgres://u@h:1/db?pass%77ord=S3",
                "postgres://u@h:1/db?pass%77ord=***",
            ),
            (
                "postgres://u:@h/db?%70assword=S4",
                "postgres://u:***@h/db?%70assword=***",
            ),
            (
                "postgres://h1:1,h2:2/db?sslmode=disable",
                "postgres://h1:1,h2:2/db?sslmode=disable",
            ),
            (
                "host=h password=S5",
                "(a key=value string with a password, not shown)",
            ),
        ] {
            assert_eq!(redact(url), shown, "{url}");
        }
    }

    #[test]
    fn more_standbys_than_a_cluster_could_have_are_refused_naming_the_key() {
        let mut c = PgConfig::new("postgres://u@h/db").client("c", None);
        c.replicated_to = 64;
        c.validate().unwrap();
        c.replicated_to = 65;
        let e = c.validate().unwrap_err().to_string();
        assert!(
            e.contains("postgres.replicated_to") && e.contains("65"),
            "{e}"
        );
        c.replicated_to = 1;
        c.replicated_standbys = vec!["pgautofailover_standby_%".into()];
        c.validate().unwrap();
        c.replicated_standbys = vec!["x', NULL]); DROP TABLE t; --".into()];
        let e = c.validate().unwrap_err().to_string();
        assert!(
            e.contains("postgres.replicated_standbys") && e.contains("DROP"),
            "{e}"
        );
    }

    #[test]
    fn a_bad_url_is_refused_without_its_password() {
        let e = PgConfig::new("postgres://u:hunter2@")
            .validate()
            .expect_err("no host");
        assert!(!e.to_string().contains("hunter2"), "{e}");
        assert!(e.to_string().contains("postgres.url"), "{e}");
        let e = PgConfig::new("postgres://127.0.0.1/db")
            .validate()
            .expect_err("no user");
        assert!(e.to_string().contains("user"), "{e}");
        let e = PgConfig::new("postgres://u@h/db")
            .client_schema("x; DROP")
            .validate()
            .expect_err("bad schema");
        assert!(e.to_string().contains("client_schema"), "{e}");
        PgConfig::new("postgres://u@h1:5432,h2:5433/db?target_session_attrs=read-write")
            .client("c", None)
            .validate()
            .expect("two hosts");
        let e = PgConfig::new("postgres://u@h/db")
            .validate()
            .expect_err("no client role");
        assert!(e.to_string().contains("client_user"), "{e}");
        let e = PgConfig::new("postgres://u@h/db")
            .client("u", None)
            .validate()
            .expect_err("the owner runs client SQL");
        assert!(e.to_string().contains("client_user"), "{e}");
        let e = PgConfig::new("postgres://u@h/db")
            .client("c", None)
            .schema("Lb")
            .validate()
            .expect_err("needs quoting");
        assert!(e.to_string().contains("postgres.schema"), "{e}");
    }

    /// Found by a hostile review: PostgreSQL 17's `transaction_timeout`,
    /// set by a key on the clients' role (`ALTER ROLE CURRENT_USER SET`),
    /// would cut every other key's transactions short. It is pinned on a
    /// server that knows it, and left out for one that would refuse it
    /// (PostgreSQL 15 and 16 refuse a connection naming it).
    #[test]
    fn settings_a_server_knows_are_pinned_and_only_those() {
        let options = |version, watches_clients| {
            let c = PgConfig::new("postgres://u@h/db").client("c", None);
            let server = Server {
                synchronous_commit: "on".into(),
                version,
                watches_clients,
            };
            c.client_config(&server)
                .unwrap()
                .get_options()
                .unwrap()
                .to_owned()
        };
        assert!(options(170_002, true).contains("-c transaction_timeout=0"));
        assert!(!options(150_010, true).contains("transaction_timeout"));
        assert!(options(150_010, true).contains("-c synchronous_commit=on"));
        assert!(options(150_010, true).contains("-c idle_session_timeout=0"));
        // A server whose platform cannot watch its clients' sockets refuses
        // any value but 0.
        assert!(options(150_010, true).contains("-c client_connection_check_interval=1000"));
        assert!(!options(150_010, false).contains("client_connection_check_interval"));
    }
}
