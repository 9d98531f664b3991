//! PostgreSQL cases (`bench --postgres URL`): the HTTP cases' load on a
//! server whose backend is PostgreSQL, against a raw pipelined
//! tokio-postgres client sending the same statements to the same server in
//! the same run, and two front ends against one.
//!
//! The URL's user must be able to create a role and a schema: the bench
//! makes `lb_bench_client` (a plain login role, once) and a schema of its
//! own for the run, owned by that role, with the `kv` table the HTTP cases
//! read, and drops the schema (and litebridge's own schema for the run)
//! when it ends. The figures are the server's as configured: on a test
//! cluster with `fsync = off` (`scripts/pg-cluster.sh`) a write costs CPU,
//! not a disk flush, on both sides.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::time::Instant;

use litebridge::pg::{PgConfig, PgDatabase};
use litebridge::{Backend, Service, ServiceConfig};
use tokio_postgres::NoTls;

use super::cases::{READ_ROWS, VALUE};
use super::http::{Bench, Load};
use super::measure::{Figures, Rng, Samples, gather_tasks, stop_after};
use crate::output::Progress;
use crate::{CliResult, Failure};

/// The role the clients' SQL runs as.
const CLIENT_ROLE: &str = "lb_bench_client";

/// Connections of the raw client; each carries many requests at once.
const RAW_CONNECTIONS: usize = 4;

/// `postgres.connections` of the `-together` cases: as many as the raw
/// client's.
const TOGETHER_CONNECTIONS: usize = RAW_CONNECTIONS;

/// A schema made for one run, dropped by [`Setup::drop_now`].
pub(crate) struct Setup {
    url: String,
    schema: String,
}

fn failed(what: &str) -> impl Fn(tokio_postgres::Error) -> Failure + '_ {
    move |e| {
        let detail = e
            .as_db_error()
            .map_or_else(|| e.to_string(), |d| d.message().to_owned());
        Failure::new(format!("bench --postgres: {what}: {detail}"))
    }
}

async fn connect(url: &str) -> CliResult<tokio_postgres::Client> {
    let (client, conn) = tokio_postgres::connect(url, NoTls)
        .await
        .map_err(failed("cannot connect"))?;
    tokio::spawn(conn);
    Ok(client)
}

impl Setup {
    /// The role (once), the run's schema and its `kv` table, filled.
    pub(crate) async fn new(url: &str) -> CliResult<Setup> {
        let admin = connect(url).await?;
        admin
            .batch_execute(&format!(
                "DO $$ BEGIN CREATE ROLE {CLIENT_ROLE} LOGIN; \
                 EXCEPTION WHEN duplicate_object OR unique_violation THEN NULL; END $$"
            ))
            .await
            .map_err(failed("cannot create the role lb_bench_client"))?;
        let schema = format!("lb_bench_{}", std::process::id());
        admin
            .batch_execute(&format!(
                "DROP SCHEMA IF EXISTS {schema} CASCADE;
                 DROP SCHEMA IF EXISTS {schema}_own CASCADE;
                 CREATE SCHEMA {schema} AUTHORIZATION {CLIENT_ROLE};
                 CREATE TABLE {schema}.kv(k bigint PRIMARY KEY, v text);
                 INSERT INTO {schema}.kv SELECT g, '{VALUE}' FROM generate_series(0, {}) g;
                 ALTER TABLE {schema}.kv OWNER TO {CLIENT_ROLE};
                 ANALYZE {schema}.kv;",
                READ_ROWS - 1
            ))
            .await
            .map_err(failed("cannot create the bench's schema"))?;
        Ok(Setup {
            url: url.to_owned(),
            schema,
        })
    }

    fn config(&self) -> PgConfig {
        PgConfig::new(self.url.clone())
            .client(CLIENT_ROLE, None)
            .client_schema(self.schema.clone())
            .schema(format!("{}_own", self.schema))
    }

    /// A litebridge HTTP server on the run's schema, with
    /// `postgres.one_message_reads` and `postgres.one_message_writes` as
    /// asked, `postgres.connections` when given, and
    /// `postgres.isolate_requests` as `isolate` says.
    async fn front_end(
        &self,
        one_message: bool,
        connections: Option<usize>,
        isolate: bool,
    ) -> CliResult<Bench> {
        let mut config = self.config();
        config.one_message_reads = one_message;
        config.one_message_writes = one_message;
        config.isolate_requests = isolate;
        if let Some(n) = connections {
            config.connections = n;
        }
        let db = PgDatabase::connect(config).await?;
        let service =
            Service::with_backend(Backend::Postgres(db), ServiceConfig::default()).await?;
        Bench::serve(service, false).await
    }

    /// The clients' URL: the same server, as the clients' role.
    fn client_url(&self) -> CliResult<tokio_postgres::Config> {
        let mut c: tokio_postgres::Config =
            self.url.parse().map_err(failed("the URL cannot be read"))?;
        c.user(CLIENT_ROLE);
        c.options(format!("-c search_path={}", self.schema));
        Ok(c)
    }

    pub(crate) async fn drop_now(self) {
        if let Ok(admin) = connect(&self.url).await {
            let _ = admin
                .batch_execute(&format!(
                    "DROP SCHEMA IF EXISTS {0} CASCADE; DROP SCHEMA IF EXISTS {0}_own CASCADE",
                    self.schema
                ))
                .await;
        }
    }
}

/// `clients` tasks sharing [`RAW_CONNECTIONS`] connections, one request in
/// flight each: tokio-postgres pipelines what the tasks of one connection
/// send. Reads look up a random key; writes insert keys from `next_key`.
async fn raw(
    setup: &Setup,
    load: Load,
    clients: usize,
    seconds: f64,
    next_key: &Arc<AtomicI64>,
) -> CliResult<Figures> {
    let config = setup.client_url()?;
    let mut conns = Vec::with_capacity(RAW_CONNECTIONS);
    for _ in 0..RAW_CONNECTIONS {
        let (client, conn) = config
            .connect(NoTls)
            .await
            .map_err(failed("the raw client cannot connect"))?;
        tokio::spawn(conn);
        let sql = match load {
            Load::Execute => "INSERT INTO kv VALUES ($1, $2)",
            _ => "SELECT v FROM kv WHERE k = $1",
        };
        let stmt = client
            .prepare(sql)
            .await
            .map_err(failed("the raw client cannot prepare"))?;
        conns.push(Arc::new((client, stmt)));
    }
    let stop = stop_after(seconds);
    let started = Instant::now();
    let tasks: Vec<_> = (0..clients)
        .map(|c| {
            let conn = conns[c % conns.len()].clone();
            let (stop, next_key): (Arc<AtomicBool>, _) = (stop.clone(), next_key.clone());
            tokio::spawn(async move {
                let (client, stmt) = &*conn;
                let mut rng = Rng::new(c as u64 + 7);
                let mut samples = Samples::with_capacity(1 << 16);
                while !stop.load(Ordering::Relaxed) {
                    let start = Instant::now();
                    match load {
                        Load::Execute => {
                            let k = next_key.fetch_add(1, Ordering::Relaxed);
                            client.execute(stmt, &[&k, &VALUE]).await
                        }
                        _ => {
                            let k = rng.below(READ_ROWS) as i64;
                            client.query(stmt, &[&k]).await.map(|r| r.len() as u64)
                        }
                    }
                    .map_err(failed("a raw client request failed"))?;
                    samples.record(start);
                }
                Ok::<_, Failure>(samples)
            })
        })
        .collect();
    gather_tasks(tasks, started).await
}

/// One PostgreSQL case and its baseline, in alternating rounds.
pub(crate) async fn run_case(
    name: &str,
    url: &str,
    seconds: f64,
    rounds: usize,
    progress: &Progress,
) -> CliResult<(Figures, Figures)> {
    let setup = Setup::new(url).await?;
    let measured = measure(name, &setup, seconds, rounds, progress).await;
    setup.drop_now().await;
    measured
}

async fn measure(
    name: &str,
    setup: &Setup,
    seconds: f64,
    rounds: usize,
    progress: &Progress,
) -> CliResult<(Figures, Figures)> {
    let slice = seconds / rounds as f64;
    let one = match name {
        // A pool smaller than the clients: requests wait, and go together.
        // `-shared`: requests not isolated from their caller's others.
        "pg-http-query-together"
        | "pg-http-execute-together"
        | "pg-http-query-together-shared"
        | "pg-http-execute-together-shared" => {
            let isolate = !name.ends_with("-shared");
            setup
                .front_end(true, Some(TOGETHER_CONNECTIONS), isolate)
                .await?
        }
        _ => {
            setup
                .front_end(name.ends_with("-one-message"), None, true)
                .await?
        }
    };
    let two = match name {
        "pg-two-front-ends" => match setup.front_end(false, None, true).await {
            Ok(b) => Some(b),
            Err(e) => {
                one.shutdown().await;
                return Err(e);
            }
        },
        _ => None,
    };
    // The raw client's keys, past litebridge's (which start at 2^40).
    let raw_keys = Arc::new(AtomicI64::new(1 << 50));
    let result = async {
        let (mut figures, mut baselines) = (Vec::new(), Vec::new());
        for _ in 0..rounds {
            match (name, &two) {
                ("pg-two-front-ends", Some(two)) => {
                    progress.message(&format!("pg-one-front-end ({slice} s)"));
                    baselines.push(Bench::run_on(&[&one], Load::Query, 32, slice).await?);
                    progress.message(&format!("pg-two-front-ends ({slice} s)"));
                    figures.push(Bench::run_on(&[&one, two], Load::Query, 32, slice).await?);
                }
                _ => {
                    let (load, clients) = match name {
                        "pg-http-execute"
                        | "pg-http-execute-one-message"
                        | "pg-http-execute-together"
                        | "pg-http-execute-together-shared" => (Load::Execute, 64),
                        _ => (Load::Query, 32),
                    };
                    progress.message(&format!("raw tokio-postgres ({slice} s)"));
                    baselines.push(raw(setup, load, clients, slice, &raw_keys).await?);
                    progress.message(&format!("{name} ({slice} s)"));
                    figures.push(one.run(load, clients, slice).await?);
                }
            }
        }
        Ok::<_, Failure>((Figures::mean(&figures), Figures::mean(&baselines)))
    }
    .await;
    one.shutdown().await;
    if let Some(two) = two {
        two.shutdown().await;
    }
    result
}
