//! `litebridge serve` (HTTP) and `litebridge stdio`.

use std::sync::Arc;

use litebridge::Service;
use litebridge::auth::{Auth, Caller};

use crate::cli::ServiceArgs;
use crate::rpc;
use crate::settings::Settings;
use crate::signals;
use crate::{CliResult, Failure};

/// The effective settings: defaults, file, environment, then these flags.
fn settings(args: &ServiceArgs, listen: Option<String>, no_dashboard: bool) -> CliResult<Settings> {
    let mut flags = Vec::new();
    if let Some(db) = &args.db {
        flags.push(("db.path", "db", db.display().to_string()));
    }
    if let Some(w) = &args.workers {
        flags.push(("workers.command", "workers", w.clone()));
    }
    if let Some(n) = args.processes {
        flags.push(("workers.processes", "processes", n.to_string()));
    }
    if let Some(l) = listen {
        flags.push(("server.listen", "listen", l));
    }
    if let Some(f) = &args.log_format {
        flags.push(("server.log_format", "log-format", f.clone()));
    }
    if no_dashboard {
        flags.push(("server.dashboard", "no-dashboard", "false".to_owned()));
    }
    let env: Vec<(String, String)> = std::env::vars().collect();
    Settings::load(args.config.as_deref(), &env, &flags)
}

/// Opens the service and its keys; keeps the keys fresh and the quota
/// counters written every `security.key_refresh_ms`.
async fn open_app(
    s: &Settings,
    recover: bool,
) -> CliResult<(rpc::App, tokio::task::JoinHandle<()>)> {
    // A signal while starting (workers loading a model for minutes) stops
    // the start: the workers started so far are stopped, their process
    // groups with them, and it leaves with the status of a stop (see
    // `signals`: 0, or 130 for SIGINT). It killed
    // litebridge at once, and a worker still loading lived on until it was
    // ready and read the end of its stdin. `biased`: the handlers are
    // installed only once the opening first waits, after what it does at
    // once (a `--recover` restore, which the default action may stop at
    // any point: it writes a new file and moves it into place).
    let opened = tokio::select! {
        biased;
        opened = open(s, recover) => Ok(opened?),
        number = signals::first() => Err(number),
    };
    let service = match opened {
        Ok(service) => service,
        Err(number) => {
            // The opening is dropped by now: workers still starting were
            // killed with their process groups, and those ready see their
            // stdin end with us. Left at once, not by dropping the runtime,
            // which would wait for the database's opening (its check at
            // open may take a minute) with every later signal ignored
            // (review 155). As safe as the signal's default action was.
            eprintln!("litebridge: stopped by a signal while starting, before serving anything");
            std::process::exit(i32::from(signals::stopped_status(number)));
        }
    };
    let clock: Arc<dyn litebridge::store::Clock> = Arc::new(litebridge::store::SystemClock);
    let auth = match Auth::open(service.db.clone(), s.tiers(), clock).await {
        Ok(a) => a,
        Err(e) => {
            service.shutdown().await;
            return Err(e.into());
        }
    };
    let upkeep = auth.maintain(s.key_refresh());
    Ok((rpc::App::new(service, auth), upkeep))
}

/// Opens the service on the configured backend.
async fn open(s: &Settings, recover: bool) -> CliResult<Service> {
    match s.pg_config()? {
        None => open_sqlite(s, recover).await,
        Some(pg) => open_postgres(s, recover, pg).await,
    }
}

/// Connects to PostgreSQL (migrating litebridge's schema) and serves it.
/// SQLite's file operations are refused here, naming the setting.
async fn open_postgres(
    s: &Settings,
    recover: bool,
    pg: litebridge::pg::PgConfig,
) -> CliResult<Service> {
    if recover {
        return Err(Failure::new(
            "--recover restores a SQLite file from its backups; with `backend.kind` = \"postgres\" recovery is the cluster's (pg_auto_failover, pgBackRest, pg_basebackup)",
        ));
    }
    if s.backup_enabled() {
        return Err(Failure::new(
            "`backup.enabled` takes SQLite file backups; with `backend.kind` = \"postgres\" back up the cluster with its own tools (pg_basebackup, pgBackRest) and set backup.enabled = false",
        ));
    }
    let db = litebridge::pg::PgDatabase::connect(pg).await?;
    let service = Service::with_backend(
        litebridge::Backend::Postgres(db),
        litebridge::ServiceConfig {
            db: litebridge::DbConfig::default(),
            workers: s.worker_config()?,
            nats: s.worker_transport()?,
            cache: s.cache_config(),
            cache_worker_results: s.cache_enabled(),
        },
    )
    .await?;
    Ok(service)
}

/// Recovers first when asked, opens the service, schedules backups when
/// configured; a damaged database is refused naming the newest verified backup.
async fn open_sqlite(s: &Settings, recover: bool) -> CliResult<Service> {
    let db = s.db_path();
    if db.as_os_str().is_empty() {
        return Err(Failure::new(format!(
            "db.path ({}) is empty: give the database file",
            s.source("db.path")
        )));
    }
    let policy = s.backup_policy();
    if let Some(key) = s.backup_settings_unused() {
        tracing::warn!(
            "`{key}` is set but backup.enabled is false: no backups are taken on a schedule"
        );
    }
    if s.backup_enabled()
        && let Ok(m) = std::fs::metadata(&policy.dir)
        && !m.is_dir()
    {
        return Err(Failure::new(format!(
            "backup.dir {} is not a directory: give a directory for the scheduled backups",
            policy.dir.display()
        )));
    }
    if recover {
        let bar = crate::output::Progress::new(format!("recover {}", db.display()));
        let recovery = litebridge::backups::recover(
            &db,
            &policy.dir,
            litebridge::backups::When::Damaged,
            |done, total| bar.ratio(done, total),
        );
        bar.finish();
        match recovery? {
            litebridge::backups::Recovery::Sound => {
                tracing::info!("{} passes quick_check; nothing to recover", db.display());
            }
            litebridge::backups::Recovery::Restored { from, age, report } => {
                eprintln!(
                    "recovered {}: restored {} (taken {} ago); the damaged file is kept at {}",
                    db.display(),
                    from.display(),
                    crate::output::human_age(age),
                    report
                        .replaced_kept_at
                        .map_or_else(|| "-".into(), |p| p.display().to_string())
                );
            }
        }
    }
    // A database gone while its backups are there (deleted by mistake, a
    // volume not mounted) is not started again empty in silence: clients
    // would write a second history beside the one the backups hold. Nor
    // one emptied (truncated to 0 bytes, a volume made afresh: review 180),
    // which SQLite would open as a new database.
    let missing =
        // Through a link too: a dangling one (its volume not mounted) is
        // a missing database, which SQLite would create at its target.
        matches!(std::fs::metadata(&db), Err(e) if e.kind() == std::io::ErrorKind::NotFound);
    let emptied = litebridge::backups::is_empty_file(&db);
    // Any backup of its file name stops it: one of another place may be its
    // own still (a volume mounted elsewhere: review 184); `--recover`
    // restores only its own, and says so of the others.
    if !recover
        && (missing || emptied)
        && let backups @ 1.. = litebridge::backups::list(&policy.dir, &db).len()
    {
        return Err(Failure::new(format!(
            "database {} {}, but {} holds {backups} backup(s) of a database of that name: start with --recover to restore the newest verified one of its own, or give it a backup directory of its own (or move the backups away) to start with an empty database",
            db.display(),
            if missing {
                "does not exist"
            } else {
                "is empty (0 bytes)"
            },
            policy.dir.display()
        )));
    }
    let opened = Service::open(
        &db,
        litebridge::ServiceConfig {
            db: s.db_config()?,
            workers: s.worker_config()?,
            nats: s.worker_transport()?,
            cache: s.cache_config(),
            cache_worker_results: s.cache_enabled(),
        },
    )
    .await;
    let mut service = match opened {
        Ok(service) => service,
        Err(e) if matches!(e, litebridge::Error::Corrupt { .. }) || e.is_not_a_database() => {
            let hint = match litebridge::backups::newest_verified(&policy.dir, &db) {
                Some((p, age)) => format!(
                    "; the newest verified backup is {} (taken {} ago): start with --recover to restore it",
                    p.display(),
                    crate::output::human_age(age)
                ),
                None => format!(
                    "; no verified backup of its own was found in {} (`--recover` says why)",
                    policy.dir.display()
                ),
            };
            return Err(Failure::new(format!("{e}{hint}")));
        }
        Err(e) => return Err(e.into()),
    };
    if s.backup_enabled()
        && let Some(db) = service.db.sqlite()
    {
        litebridge::backups::schedule(db.clone(), policy.clone());
    }
    service.backups = Some(policy);
    Ok(service)
}

/// Serves HTTP until SIGTERM or SIGINT: stops accepting, lets requests in
/// flight finish, then stops the workers and closes the database (commit,
/// checkpoint). A second signal exits at once.
pub(crate) async fn http(
    args: &ServiceArgs,
    listen: Option<String>,
    no_dashboard: bool,
) -> CliResult {
    let s = settings(args, listen, no_dashboard)?;
    if args.print_config {
        // What start would refuse without opening the database, refused
        // here too; what needs it (keys), said.
        let addr = listen_addr(&s)?;
        s.local_scopes()?;
        print!("{}", s.describe());
        if !addr.ip().to_canonical().is_loopback() {
            println!(
                "\n# server.listen {addr} reaches beyond this machine: `serve` refuses it until the \
                 database holds an API key (`litebridge keys create`)"
            );
        }
        return Ok(());
    }
    crate::logging::init(s.log_level(), s.log_format());
    let Bound {
        app,
        upkeep,
        listener,
        access,
    } = bind(&s, args.recover).await?;
    let local = listener
        .local_addr()
        .map_err(|e| Failure::new(format!("cannot read the listening address: {e}")))?;
    println!("listening on {local}");
    // In the log too, with what it serves (the line above is stdout's, for
    // the programs that start it).
    tracing::info!(
        version = crate::VERSION,
        listen = %local,
        db = %app
            .service
            .db
            .sqlite()
            .map_or_else(|| "PostgreSQL (backend.kind)".to_owned(), |d| d.path().display().to_string()),
        workers = app.service.workers.as_ref().map_or("none", |w| w.transport()),
        "serving"
    );
    use std::io::Write as _;
    let _ = std::io::stdout().flush();
    // Never cancelled: `/mcp` is stateless JSON (no stream stays open), so
    // its requests end as `/rpc`'s do, by the database's interrupt and the
    // workers' kill at the end of the grace period; cancelled, rmcp answered
    // a bare 500 even for a write that committed (reviews 142, 143).
    let mcp_stop = tokio_util::sync::CancellationToken::new();
    let limits = s.accept_limits();
    let router = crate::transport::http::router(
        app.clone(),
        s.max_concurrent_requests(),
        access,
        limits.read_timeout,
        Some(mcp_stop.clone()),
        s.dashboard(),
    );
    // The dashboard's history, sampled while the server runs.
    let sampler = s
        .dashboard()
        .then(|| app.history.clone().run(app.clone(), s.backup_enabled()));
    let signalled = Arc::new(tokio::sync::Notify::new());
    let notify = signalled.clone();
    let grace = s.shutdown_grace();
    let workers = app.service.workers.clone();
    exit_after_grace(grace, move || kill_workers(workers.as_ref()));
    let events = app.events.clone();
    let stopping = app.clone();
    let server = crate::transport::accept::serve(listener, router, limits, async move {
        signals::first().await;
        tracing::info!("shutting down: finishing requests in flight");
        stopping
            .draining
            .store(true, std::sync::atomic::Ordering::Release);
        // /events streams stay open by design: end them (after a `shutdown`
        // event) so the drain can finish. MCP's requests are answered
        // one by one, and finish as `/rpc`'s do (cancelled at the signal,
        // a write in flight was interrupted: review 142).
        events.close();
        notify.notify_one();
    });
    // After the signal, requests in flight get the grace period less a
    // reserve, then the connections still open are dropped; the reserve is
    // for closing the database, which gets what is still running interrupted
    // if it is not done by the end of the grace period (nothing half-done is
    // committed: each request is atomic).
    let reserve = (grace / 2).min(std::time::Duration::from_secs(2));
    let mut deadline = None;
    tokio::select! {
        () = server => {}
        () = async {
            signalled.notified().await;
            deadline = Some(tokio::time::Instant::now() + grace);
            tokio::select! {
                () = tokio::time::sleep(grace - reserve) => {}
                number = signals::nth(2) => leave_now(&app, number),
            }
        } => {
            tracing::warn!("requests still running after {} ms: closing them", (grace - reserve).as_millis());
        }
    }
    let deadline = deadline.unwrap_or_else(|| tokio::time::Instant::now() + reserve);
    if let Some(sampler) = sampler {
        sampler.abort();
    }
    close(&app, upkeep, deadline, reserve).await;
    signals::stopped()
}

/// What `http` serves: the application, its upkeep task, the bound listener
/// and who may reach it.
struct Bound {
    app: Arc<rpc::App>,
    upkeep: tokio::task::JoinHandle<()>,
    listener: tokio::net::TcpListener,
    access: crate::transport::http::Access,
}

/// `server.listen` as an address, or why it is not one.
fn listen_addr(s: &Settings) -> CliResult<std::net::SocketAddr> {
    let listen = s.listen();
    listen.parse().map_err(|_| {
        Failure::new(format!(
            "server.listen {listen:?} ({}) is not an address; expected IP:PORT, e.g. 127.0.0.1:7070",
            s.source("server.listen")
        ))
    })
}

/// Opens the application and binds the listening address, refusing an
/// address other hosts can reach unless keys exist.
async fn bind(s: &Settings, recover: bool) -> CliResult<Bound> {
    let addr = listen_addr(s)?;
    let local_scopes = s.local_scopes()?;
    let exposed = !addr.ip().to_canonical().is_loopback();
    let no_keys = || {
        Failure::new(format!(
            "refusing to listen on {addr} without API keys: anyone who can reach it could read and \
             change {}; create one with `litebridge keys create --db {} --scope read` (clients send \
             `Authorization: Bearer KEY`), or listen on 127.0.0.1",
            s.db_path().display(),
            s.db_path().display()
        ))
    };
    // A file that does not exist holds no keys: refuse before creating it.
    if exposed && !s.db_path().exists() {
        return Err(no_keys());
    }
    let (app, upkeep) = open_app(s, recover).await?;
    if exposed && !app.auth.has_keys() {
        upkeep.abort();
        app.service.shutdown().await;
        return Err(no_keys());
    }
    match tokio::net::TcpListener::bind(addr).await {
        Ok(listener) => Ok(Bound {
            app: Arc::new(app),
            upkeep,
            listener,
            access: crate::transport::http::Access {
                exposed,
                local: local_scopes,
            },
        }),
        Err(e) => {
            upkeep.abort();
            app.service.shutdown().await;
            Err(Failure::new(format!("cannot listen on {addr}: {e}")))
        }
    }
}

/// Writes the quota counters, stops `upkeep` (the keys' refresh and the
/// counters' flush), stops the workers and closes the database by
/// `deadline`: what still runs `reserve / 2` before it is interrupted (it
/// is not committed); a second signal leaves at once.
async fn close(
    app: &rpc::App,
    upkeep: tokio::task::JoinHandle<()>,
    deadline: tokio::time::Instant,
    reserve: std::time::Duration,
) {
    let close = async {
        // After a flush under way, if any (its counts are taken out of the
        // keys' until it is done: aborted, it lost them, review 251).
        if let Err(e) = app.auth.flush().await {
            tracing::warn!("writing the quota counters at shutdown failed: {e}");
        }
        upkeep.abort();
        app.service.shutdown().await;
    };
    tokio::pin!(close);
    tokio::select! {
        () = &mut close => {}
        number = signals::nth(2) => leave_now(app, number),
        () = tokio::time::sleep_until(deadline.checked_sub(reserve / 2).unwrap_or(deadline)) => {
            tracing::warn!(
                "the shutdown is still under way at the end of the grace period (calls in the workers, or statements in the database): killing the workers and interrupting the database (nothing uncommitted is kept)"
            );
            kill_workers(app.service.workers.as_ref());
            app.service.db.interrupt();
            if tokio::time::timeout_at(deadline, &mut close).await.is_err() {
                // One step of SQLite can run on past an interrupt (a long
                // function call): leave without waiting for it. Nothing
                // uncommitted survives; the next start recovers the log.
                tracing::warn!("leaving with the database still closing; its log is recovered at the next start");
                std::process::exit(i32::from(signals::came().map_or(0, signals::stopped_status)));
            }
        }
    }
}

/// Kills the workers at once: none outlives litebridge running a call
/// nobody waits for (recycled ones too, see `WorkerPool::kill_now`).
fn kill_workers(workers: Option<&litebridge::workers::Bridge>) {
    if let Some(w) = workers {
        w.kill_now();
    }
}

/// A second signal (`number`) while stopping: leave now, with no worker
/// left behind (review 142).
fn leave_now(app: &rpc::App, number: i32) -> ! {
    kill_workers(app.service.workers.as_ref());
    std::process::exit(signals::left_status(number))
}

/// Exits the process `grace` after the first signal (see `signals`), on a thread
/// and a signal listener of its own: the drain below runs on the async
/// runtime, whose threads a long step of SQLite can hold past the grace
/// period (a row of many expensive columns runs with no check), and then
/// neither its timers nor its signal listener would run on time. Leaving
/// then is as safe as a crash: nothing uncommitted survives, and the next
/// start recovers the log.
fn exit_after_grace(grace: std::time::Duration, before_leaving: impl FnOnce() + Send + 'static) {
    let spawned = std::thread::Builder::new()
        .name("litebridge-exit".into())
        .spawn(move || {
            // The first signal, also one that came before this thread
            // started (review 156), heard even while every thread of the
            // main runtime is held.
            let Some(first) = signals::nth_blocking(1) else {
                return;
            };
            crate::transport::standby::note_signal();
            // Until the grace ends, or a second signal, which leaves at
            // once even while the main runtime is held (review 157).
            let Ok(runtime) = tokio::runtime::Builder::new_current_thread()
                .enable_time()
                .build()
            else {
                return;
            };
            let second = runtime.block_on(async {
                tokio::select! {
                    () = tokio::time::sleep(grace) => None,
                    number = signals::nth(2) => Some(number),
                }
            });
            // No worker outlives litebridge running a call nobody waits
            // for: killed first, then said (a stalled stderr cannot hold
            // it up: review 157).
            before_leaving();
            tracing::warn!(
                "{}: killed the workers, leaving with the database still closing; its log is recovered at the next start",
                if second.is_some() { "a second signal" } else { "the grace period is over" }
            );
            std::process::exit(second.map_or_else(
                || i32::from(signals::stopped_status(first)),
                signals::left_status,
            ));
        });
    if let Err(e) = spawned {
        tracing::warn!("no watchdog for the grace period: {e}");
    }
}

/// `stdio` and `mcp` once started: a signal ends the session at once, as
/// the default action did before litebridge listened for signals at the
/// start, but with no worker left behind; the exit status is a stop's (0,
/// or 130 for SIGINT: see `signals`). On a thread of its own: a long step of
/// SQLite holding the runtime's threads does not hold it up (review 156).
fn leave_at_signal(workers: Option<litebridge::workers::Bridge>) {
    let spawned = std::thread::Builder::new()
        .name("litebridge-leave".into())
        .spawn(move || {
            if let Some(number) = signals::nth_blocking(1) {
                kill_workers(workers.as_ref());
                std::process::exit(i32::from(signals::stopped_status(number)));
            }
        });
    if let Err(e) = spawned {
        tracing::warn!("no thread to leave at a signal: {e}");
    }
}

/// What `stdio` and `mcp` share: a session of the local user. `None` when
/// only the configuration was asked for (printed on stderr: stdout belongs
/// to the protocol).
async fn local_session(
    args: &ServiceArgs,
) -> CliResult<Option<(rpc::App, Caller, tokio::task::JoinHandle<()>)>> {
    let s = settings(args, None, false)?;
    if args.print_config {
        eprint!("{}", s.describe());
        return Ok(None);
    }
    crate::logging::init(s.log_level(), s.log_format());
    let caller = Caller::local(s.local_scopes()?);
    let (app, upkeep) = open_app(&s, args.recover).await?;
    leave_at_signal(app.service.workers.clone());
    Ok(Some((app, caller, upkeep)))
}

/// `litebridge mcp`: MCP over stdin/stdout as the local user.
pub(crate) async fn mcp(args: &ServiceArgs) -> CliResult {
    let Some((app, caller, upkeep)) = local_session(args).await? else {
        return Ok(());
    };
    let app = Arc::new(app);
    let served = crate::transport::mcp::serve_stdio(app.clone(), caller).await;
    // After a flush under way (aborted, it lost its counts).
    if let Err(e) = app.auth.flush().await {
        tracing::warn!("writing the quota counters at shutdown failed: {e}");
    }
    upkeep.abort();
    app.service.shutdown().await;
    served.map_err(|e| Failure::new(format!("mcp: {e}")))
}

/// `litebridge stdio`: the JSON-RPC method table on stdin/stdout.
pub(crate) async fn stdio(args: &ServiceArgs) -> CliResult {
    let Some((app, caller, upkeep)) = local_session(args).await? else {
        return Ok(());
    };
    let served =
        crate::transport::stdio::serve(app, caller, tokio::io::stdin(), tokio::io::stdout()).await;
    upkeep.abort();
    served.map_err(|e| Failure::new(format!("stdio transport: {e}")))
}
