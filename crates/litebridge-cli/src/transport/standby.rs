//! The standby acceptor: `/health`, `/ready` and `/metrics` answered while
//! every thread of the async runtime is held.
//!
//! Reads run SQLite on the runtime's threads (the read lane's design: a hop
//! to another thread costs more than a point read). A read still running
//! after a few milliseconds is moved off its thread, but only when SQLite
//! looks at its progress handler or allocates (see `litebridge`'s `db::heap`),
//! and a few single steps do neither for a long time (hundreds of comparisons
//! of large values in one row). A few of those at once hold every
//! runtime thread for as long as they run: nothing accepts, and a health
//! probe times out on a process that is alive and will recover.
//!
//! So a second, single-threaded runtime on a thread of its own shares the
//! listening socket (a duplicate of its descriptor). The main runtime stores
//! a heartbeat every [`BEAT`]; the standby reads it at the same pace. The
//! main runtime counts as *held* when its heartbeat is older than [`STALE`]
//! and every one of its workers is inside a read
//! ([`litebridge::inline_reads`]), or when the heartbeat is older than
//! [`HELD_ANYWAY`] whatever the reason; a runtime that is only busy (many
//! short tasks queued) is not held, and is left alone.
//!
//! While it is held, the standby accepts too, racing the main loop for new
//! connections (the kernel gives each to one of them), up to [`RESERVE`]
//! connections of its own outside `server.max_connections`, so that a cap
//! already taken by waiting clients cannot keep a probe out. It answers the
//! control paths itself: `/ready` with 503 naming the stall (a load balancer
//! stops sending work to a jammed process), `/health` with 200 until the
//! stall passes [`LIVENESS`] and 503 after (a process held that long is
//! restarted by its liveness probe), `/metrics` as always. Every other
//! request is handed to the main runtime, to run there when a thread frees,
//! holding one of the `server.max_connections` slots meanwhile (none free:
//! 503 with `Retry-After`); a client that goes away cancels it once the
//! runtime runs again. Its connections are not kept alive, so clients come
//! back to the main loop once it runs. After SIGTERM it hands nothing more
//! to the main runtime (503).
//!
//! Connections already open on the main loop are not helped: a kept-alive
//! scrape of `/metrics` waits with the rest. Only new connections reach the
//! standby.
//!
//! It costs the hot path nothing: a read sets a flag of its own thread, the
//! heartbeat is one timer every 50 ms, and the standby wakes at that pace.

use std::convert::Infallible;
use std::future::Future;
use std::os::fd::AsFd as _;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Body;
use axum::http::{Request, Response, StatusCode, header};
use hyper::body::Incoming;
use hyper::service::Service as _;
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::runtime::Handle;
use tokio::sync::{Notify, Semaphore, oneshot};
use tokio_util::task::AbortOnDropHandle;

use crate::transport::accept::{Limits, http1, io};

/// How often the main runtime proves it runs.
pub(crate) const BEAT: Duration = Duration::from_millis(50);

/// A heartbeat older than this, with every worker inside a read: held.
pub(crate) const STALE: Duration = Duration::from_millis(200);

/// A heartbeat older than this is held, whatever holds it.
pub(crate) const HELD_ANYWAY: Duration = Duration::from_secs(2);

/// Held for longer than this, `/health` fails.
pub(crate) const LIVENESS: Duration = Duration::from_secs(60);

/// What the standby goes by; [`Rules::default`] in a server, other values in
/// tests (which hold threads without SQLite, and cannot wait a minute).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Rules {
    /// How many threads are inside a read ([`litebridge::inline_reads`]).
    pub(crate) inline_reads: fn() -> usize,
    /// Held for longer than this, `/health` fails ([`LIVENESS`]).
    pub(crate) liveness: Duration,
}

impl Default for Rules {
    fn default() -> Rules {
        Rules {
            inline_reads: litebridge::inline_reads,
            liveness: LIVENESS,
        }
    }
}

/// Connections the standby may hold at once, beyond `server.max_connections`.
pub(crate) const RESERVE: usize = 8;

/// The paths the standby answers itself; every other one runs on the main runtime.
const CONTROL: [&str; 3] = ["/health", "/ready", "/metrics"];

/// Set once a shutdown signal arrived (by the exit watchdog's thread, which
/// hears it even while the main runtime is held).
static SIGNALLED: AtomicBool = AtomicBool::new(false);

/// Notes that the process is shutting down: the standby hands no more work
/// to the main runtime.
pub(crate) fn note_signal() {
    SIGNALLED.store(true, Ordering::Relaxed);
}

/// Put on requests the standby served while the main runtime was held: how
/// long it has not run. `/ready` reports it.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Stalled(pub(crate) Duration);

/// A request's answer, run here or on the main runtime.
type Answer = Pin<Box<dyn Future<Output = Result<Response<Body>, Infallible>> + Send>>;

/// The main runtime's last sign of life, and how to tell held from busy.
struct Heartbeat {
    epoch: Instant,
    /// Milliseconds from `epoch` to the last beat.
    last: AtomicU64,
    /// The main runtime's worker threads.
    workers: usize,
    rules: Rules,
}

impl Heartbeat {
    fn now(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    fn beat(&self) {
        self.last.store(self.now(), Ordering::Relaxed);
    }

    /// How long the main runtime has been held, if it is (see the module docs).
    fn held(&self) -> Option<Duration> {
        let age =
            Duration::from_millis(self.now().saturating_sub(self.last.load(Ordering::Relaxed)));
        let held = age > HELD_ANYWAY
            || (age > STALE && (self.rules.inline_reads)() >= self.workers.max(1));
        held.then_some(age)
    }
}

/// A running standby acceptor and the main runtime's heartbeat. Dropping it
/// stops both (without waiting for the standby's connections).
pub(crate) struct Standby {
    stop: Arc<Notify>,
    done: Option<oneshot::Receiver<()>>,
    heart: tokio::task::JoinHandle<()>,
}

impl Standby {
    /// Starts the heartbeat on the current (main) runtime and the standby on
    /// a thread of its own. `None` (with a warning) if the thread or the
    /// duplicate socket cannot be had: the server then runs without it.
    pub(crate) fn start(
        listener: &TcpListener,
        router: Router,
        limits: Limits,
        permits: Arc<Semaphore>,
        rules: Rules,
    ) -> Option<Standby> {
        let socket = match listener.as_fd().try_clone_to_owned() {
            Ok(fd) => std::net::TcpListener::from(fd),
            Err(e) => {
                tracing::warn!("no standby acceptor (duplicating the listening socket: {e})");
                return None;
            }
        };
        let main = Handle::current();
        let heartbeat = Arc::new(Heartbeat {
            epoch: Instant::now(),
            last: AtomicU64::new(0),
            workers: main.metrics().num_workers(),
            rules,
        });
        let stop = Arc::new(Notify::new());
        let (finished, done) = oneshot::channel();
        let standby = Acceptor {
            router,
            limits,
            permits,
            heartbeat: heartbeat.clone(),
            main,
            stop: stop.clone(),
        };
        let spawned = std::thread::Builder::new()
            .name("litebridge-standby".into())
            .spawn(move || {
                match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(runtime) => runtime.block_on(standby.run(socket)),
                    Err(e) => tracing::warn!("no standby acceptor (its runtime: {e})"),
                }
                let _ = finished.send(());
            });
        if let Err(e) = spawned {
            tracing::warn!("no standby acceptor (its thread: {e})");
            return None;
        }
        let heart = tokio::spawn(async move {
            loop {
                heartbeat.beat();
                tokio::time::sleep(BEAT).await;
            }
        });
        Some(Standby {
            stop,
            done: Some(done),
            heart,
        })
    }

    /// Stops accepting and waits for the standby's connections to drain.
    pub(crate) async fn stop(mut self) {
        self.heart.abort();
        self.stop.notify_one();
        if let Some(done) = self.done.take() {
            let _ = done.await;
        }
    }
}

impl Drop for Standby {
    fn drop(&mut self) {
        self.heart.abort();
        self.stop.notify_one();
    }
}

struct Acceptor {
    router: Router,
    limits: Limits,
    /// The main loop's connection slots (`server.max_connections`).
    permits: Arc<Semaphore>,
    heartbeat: Arc<Heartbeat>,
    main: Handle,
    stop: Arc<Notify>,
}

impl Acceptor {
    async fn run(self, socket: std::net::TcpListener) {
        let listener = match TcpListener::from_std(socket) {
            Ok(l) => l,
            Err(e) => {
                tracing::warn!("no standby acceptor (registering the socket: {e})");
                return;
            }
        };
        // As `serve` decides it: a listener beyond loopback is exposed.
        let exposed = listener
            .local_addr()
            .map_or(true, |a| !a.ip().to_canonical().is_loopback());
        let reserve = Arc::new(Semaphore::new(RESERVE));
        let graceful = GracefulShutdown::new();
        let mut builder = http1(self.limits);
        builder.keep_alive(false);
        let stopped = self.stop.notified();
        tokio::pin!(stopped);
        loop {
            if self.heartbeat.held().is_none() || SIGNALLED.load(Ordering::Relaxed) {
                tokio::select! {
                    biased;
                    () = &mut stopped => break,
                    () = tokio::time::sleep(BEAT) => continue,
                }
            }
            let permit = tokio::select! {
                biased;
                () = &mut stopped => break,
                p = reserve.clone().acquire_owned() => match p {
                    Ok(p) => p,
                    Err(_) => break,
                },
                () = tokio::time::sleep(BEAT) => continue,
            };
            let (stream, remote) = tokio::select! {
                biased;
                () = &mut stopped => break,
                accepted = listener.accept() => match accepted {
                    Ok(accepted) => accepted,
                    Err(e) => {
                        tracing::warn!("the standby acceptor could not accept a connection: {e}");
                        tokio::time::sleep(BEAT).await;
                        continue;
                    }
                },
                () = tokio::time::sleep(BEAT) => continue,
            };
            tracing::debug!("accepted a connection on the standby: the request threads are held");
            let peer =
                crate::transport::peer::Peer::new(stream.local_addr().unwrap_or(remote), remote);
            let conn =
                builder.serve_connection(io(stream, self.limits), self.service(exposed, peer));
            let conn = graceful.watch(conn);
            tokio::spawn(async move {
                if let Err(e) = conn.await {
                    tracing::debug!("standby connection ended: {e}");
                }
                drop(permit);
            });
        }
        drop(listener);
        graceful.shutdown().await;
    }

    /// Control paths answered here; everything else run on the main runtime.
    /// What a web page could have sent is refused first, as on the main
    /// loop (the router's rules), before any answer made here.
    fn service(
        &self,
        exposed: bool,
        peer: crate::transport::peer::Peer,
    ) -> impl hyper::service::Service<
        Request<Incoming>,
        Response = Response<Body>,
        Error = Infallible,
        Future = Answer,
    > + use<> {
        let local = TowerToHyperService::new(self.router.clone());
        let (main, heartbeat, permits) = (
            self.main.clone(),
            self.heartbeat.clone(),
            self.permits.clone(),
        );
        hyper::service::service_fn(move |mut request: Request<Incoming>| -> Answer {
            request.extensions_mut().insert(peer.clone());
            let path = request.uri().path();
            if let Err(reason) = crate::transport::http::check_site(
                exposed,
                request.method(),
                request.uri(),
                request.headers(),
            ) {
                return Box::pin(std::future::ready(Ok(crate::transport::http::forbidden(
                    reason,
                ))));
            }
            let held = heartbeat.held();
            if path == "/health"
                && let Some(age) = held.filter(|age| *age > heartbeat.rules.liveness)
            {
                return answer_now(
                    StatusCode::SERVICE_UNAVAILABLE,
                    format!(
                        "{{\"status\":\"held\",\"held_ms\":{},\"reason\":\"every request thread has been busy for longer than {} s\"}}",
                        age.as_millis(),
                        heartbeat.rules.liveness.as_secs_f64()
                    ),
                );
            }
            let control = CONTROL.contains(&path);
            if let Some(age) = held {
                request.extensions_mut().insert(Stalled(age));
            }
            if control {
                return Box::pin(local.call(request));
            }
            if SIGNALLED.load(Ordering::Relaxed) {
                return answer_now(
                    StatusCode::SERVICE_UNAVAILABLE,
                    r#"{"error":"the server is shutting down"}"#.to_owned(),
                );
            }
            // The request holds a connection slot while it waits for the
            // main runtime, as it would on a connection of the main loop.
            let Ok(slot) = permits.clone().try_acquire_owned() else {
                return answer_now(
                    StatusCode::SERVICE_UNAVAILABLE,
                    r#"{"error":"every request thread is busy and every connection is taken (server.max_connections); retry later"}"#.to_owned(),
                );
            };
            // A POST runs something (`/rpc`, `/mcp`): dropped half way, it
            // may have run. Anything else reads.
            let runs = request.method() == hyper::Method::POST;
            // Whether the main runtime began it: one dropped before that
            // never ran.
            let began = Arc::new(AtomicBool::new(false));
            let beginning = began.clone();
            let answer = local.call(request);
            let run = main.spawn(async move {
                beginning.store(true, Ordering::Release);
                let answer = answer.await;
                drop(slot);
                answer
            });
            Box::pin(async move {
                // A client that goes away cancels its request, once the main
                // runtime runs it. A POST the main runtime dropped as it shut
                // down may have run: answered as such (a JSON-RPC error of
                // kind `outcome_unknown`, not a 503 that says "try again").
                AbortOnDropHandle::new(run).await.unwrap_or_else(|_| {
                    if runs && began.load(Ordering::Acquire) {
                        answer_now_sync(
                            StatusCode::INTERNAL_SERVER_ERROR,
                            r#"{"jsonrpc":"2.0","id":null,"error":{"code":-32013,"message":"the request ended without an answer as the server shut down; it may or may not have run","data":{"kind":"outcome_unknown","recoverable":false}}}"#.to_owned(),
                        )
                    } else {
                        answer_now_sync(
                            StatusCode::SERVICE_UNAVAILABLE,
                            r#"{"error":"the request ended without an answer (the server is shutting down)"}"#.to_owned(),
                        )
                    }
                })
            })
        })
    }
}

/// The header on the standby's 503s for requests it did not run: a client
/// may send them again (a proxy's 503 without it may have passed the
/// request on).
pub(crate) const NOT_RUN: &str = "litebridge-not-run";

/// A JSON answer of the standby's own; a 503 is a request not run
/// ([`NOT_RUN`], `Retry-After: 1`).
fn answer_now_sync(status: StatusCode, body: String) -> Result<Response<Body>, Infallible> {
    let mut response = Response::new(Body::from(body));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        "application/json".parse().expect("a header value"),
    );
    if status == StatusCode::SERVICE_UNAVAILABLE {
        headers.insert(header::RETRY_AFTER, "1".parse().expect("a header value"));
        headers.insert(NOT_RUN, "1".parse().expect("a header value"));
    }
    Ok(response)
}

fn answer_now(status: StatusCode, body: String) -> Answer {
    Box::pin(std::future::ready(answer_now_sync(status, body)))
}

#[cfg(test)]
mod tests {
    use std::io::{Read as _, Write as _};
    use std::sync::atomic::AtomicUsize;

    use axum::Extension;
    use axum::routing::get;

    use super::*;
    use crate::transport::accept;

    /// A server on a runtime of two workers, with routes that hold their
    /// thread as a long step of SQLite run inline does. Each test has its
    /// own counter of held threads (tests run in parallel).
    struct Held {
        runtime: tokio::runtime::Runtime,
        addr: std::net::SocketAddr,
        stop: Option<oneshot::Sender<()>>,
        server: Option<tokio::task::JoinHandle<()>>,
    }

    impl Held {
        fn start(rules: Rules, max_connections: usize) -> Held {
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .unwrap();
            let router = Router::new()
                .route("/health", get(|| async { "ok" }))
                .route(
                    "/ready",
                    get(|stalled: Option<Extension<Stalled>>| async move {
                        if stalled.is_some() {
                            "stalled"
                        } else {
                            "ready"
                        }
                    }),
                )
                // Busy, not held: 20 ms of work that is not a read.
                .route(
                    "/busy",
                    get(|| async {
                        std::thread::sleep(Duration::from_millis(20));
                        "busy"
                    }),
                )
                .route("/work", get(|| async { "done" }));
            let listener = runtime.block_on(TcpListener::bind("127.0.0.1:0")).unwrap();
            let addr = listener.local_addr().unwrap();
            let (stop, stopped) = oneshot::channel::<()>();
            let limits = accept::Limits {
                max_connections,
                read_timeout: Duration::from_secs(10),
            };
            let server = runtime.spawn(accept::serve_with(
                listener,
                router,
                limits,
                async {
                    let _ = stopped.await;
                },
                rules,
            ));
            Held {
                runtime,
                addr,
                stop: Some(stop),
                server: Some(server),
            }
        }

        /// Holds both runtime threads for 2 s, as two long steps of SQLite
        /// run inline do; returns once both are held. (Spawned from outside
        /// the runtime, each goes to an idle worker: requests could meet in
        /// one worker's LIFO slot, where the other cannot take the second.)
        fn hold_both(&self, inside: &'static AtomicUsize) -> Vec<tokio::task::JoinHandle<()>> {
            let holders = (0..2)
                .map(|_| {
                    self.runtime.spawn(async move {
                        inside.fetch_add(1, Ordering::SeqCst);
                        std::thread::sleep(Duration::from_secs(2));
                        inside.fetch_sub(1, Ordering::SeqCst);
                    })
                })
                .collect();
            let started = Instant::now();
            while inside.load(Ordering::SeqCst) < 2 {
                assert!(
                    started.elapsed() < Duration::from_secs(5),
                    "the threads were not held"
                );
                std::thread::sleep(Duration::from_millis(1));
            }
            holders
        }

        fn release(&self, holders: Vec<tokio::task::JoinHandle<()>>) {
            for holder in holders {
                self.runtime.block_on(holder).unwrap();
            }
        }
    }

    impl Drop for Held {
        fn drop(&mut self) {
            if let Some(stop) = self.stop.take() {
                let _ = stop.send(());
            }
            if let Some(server) = self.server.take() {
                let _ = self.runtime.block_on(server);
            }
        }
    }

    /// GETs `path` on a connection of its own; the status line and body.
    fn get_path(addr: std::net::SocketAddr, path: &str) -> String {
        get_path_as(addr, path, "127.0.0.1")
    }

    /// [`get_path`] with `host` as the Host header.
    fn get_path_as(addr: std::net::SocketAddr, path: &str, host: &str) -> String {
        let mut s = std::net::TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        write!(
            s,
            "GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"
        )
        .unwrap();
        let mut answer = String::new();
        let _ = s.read_to_string(&mut answer);
        let status = answer.lines().next().unwrap_or_default().to_owned();
        let body = answer.split("\r\n\r\n").nth(1).unwrap_or_default();
        format!("{status} {body}")
    }

    /// The rules of a test whose held threads are counted by `count`.
    fn counted_by(count: fn() -> usize) -> Rules {
        Rules {
            inline_reads: count,
            liveness: LIVENESS,
        }
    }

    #[test]
    fn control_paths_are_answered_while_every_runtime_thread_is_held() {
        static HELD_A: AtomicUsize = AtomicUsize::new(0);
        let server = Held::start(counted_by(|| HELD_A.load(Ordering::SeqCst)), 64);
        let holders = server.hold_both(&HELD_A);
        let started = Instant::now();
        assert!(get_path(server.addr, "/health").ends_with(" ok"));
        let took = started.elapsed();
        assert!(took < STALE * 2 + BEAT * 4, "/health took {took:?}");
        assert!(get_path(server.addr, "/ready").ends_with(" stalled"));
        // Any other request waits for the main runtime and runs there.
        assert!(get_path(server.addr, "/work").ends_with(" done"));
        server.release(holders);
        // Running again: nothing reports a stall any more.
        let started = Instant::now();
        while !get_path(server.addr, "/ready").ends_with(" ready") {
            assert!(started.elapsed() < Duration::from_secs(5), "still stalled");
        }
    }

    /// Clients waiting for the held runtime take every connection slot; a
    /// probe still gets in (the standby has a reserve of its own), and
    /// requests beyond the slots are refused at once instead of piling up.
    #[test]
    fn a_probe_gets_in_when_waiting_clients_take_every_slot() {
        static HELD_B: AtomicUsize = AtomicUsize::new(0);
        let server = Held::start(counted_by(|| HELD_B.load(Ordering::SeqCst)), 4);
        let holders = server.hold_both(&HELD_B);
        let waiting: Vec<_> = (0..6)
            .map(|_| {
                let addr = server.addr;
                std::thread::spawn(move || get_path(addr, "/work"))
            })
            .collect();
        std::thread::sleep(STALE + BEAT * 4);
        let started = Instant::now();
        assert!(get_path(server.addr, "/health").ends_with(" ok"));
        assert!(
            started.elapsed() < Duration::from_millis(500),
            "{:?}",
            started.elapsed()
        );
        let answers: Vec<String> = waiting.into_iter().map(|w| w.join().unwrap()).collect();
        let done = answers.iter().filter(|a| a.ends_with(" done")).count();
        let refused = answers.iter().filter(|a| a.contains(" 503 ")).count();
        assert_eq!(done + refused, 6, "{answers:?}");
        assert!(
            refused >= 1,
            "more waited than there are slots: {answers:?}"
        );
        server.release(holders);
    }

    /// A client that sends a request and goes away during the stall leaves
    /// no task behind beyond the connection slots.
    #[test]
    fn clients_that_go_away_during_a_stall_leave_no_pile_of_tasks() {
        static HELD_C: AtomicUsize = AtomicUsize::new(0);
        let server = Held::start(counted_by(|| HELD_C.load(Ordering::SeqCst)), 8);
        let holders = server.hold_both(&HELD_C);
        std::thread::sleep(STALE + BEAT * 4);
        for _ in 0..200 {
            if let Ok(mut s) = std::net::TcpStream::connect(server.addr) {
                let padding = "x".repeat(8_000);
                let _ = write!(
                    s,
                    "GET /work HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Pad: {padding}\r\n\r\n"
                );
                // Gone without waiting for the answer.
            }
        }
        let alive = server.runtime.metrics().num_alive_tasks();
        // The server, its heartbeat, the two held requests' connections, and
        // at most one waiting request per slot.
        assert!(alive <= 4 + 8, "{alive} tasks alive");
        server.release(holders);
    }

    /// A runtime busy with short tasks that are not reads is not held: the
    /// standby stays out and `/ready` never reports a stall.
    #[test]
    fn a_busy_runtime_is_not_reported_as_held() {
        static HELD_D: AtomicUsize = AtomicUsize::new(0);
        let server = Held::start(counted_by(|| HELD_D.load(Ordering::SeqCst)), 256);
        let stop = Arc::new(AtomicBool::new(false));
        // Enough clients that a task waits longer than `STALE` for a thread.
        let load: Vec<_> = (0..40)
            .map(|_| {
                let (addr, stop) = (server.addr, stop.clone());
                std::thread::spawn(move || {
                    while !stop.load(Ordering::Relaxed) {
                        get_path(addr, "/busy");
                    }
                })
            })
            .collect();
        let started = Instant::now();
        while started.elapsed() < Duration::from_millis(1_500) {
            let answer = get_path(server.addr, "/ready");
            assert!(answer.ends_with(" ready"), "{answer}");
        }
        stop.store(true, Ordering::Relaxed);
        for l in load {
            l.join().unwrap();
        }
    }

    /// Held past the liveness bound, `/health` fails, so that a process
    /// held for good is restarted by its liveness probe.
    #[test]
    fn health_fails_once_held_past_the_liveness_bound() {
        static HELD_E: AtomicUsize = AtomicUsize::new(0);
        let rules = Rules {
            inline_reads: || HELD_E.load(Ordering::SeqCst),
            liveness: Duration::from_millis(600),
        };
        let server = Held::start(rules, 64);
        let holders = server.hold_both(&HELD_E);
        std::thread::sleep(STALE + BEAT * 4);
        assert!(get_path(server.addr, "/health").ends_with(" ok"));
        std::thread::sleep(Duration::from_millis(600));
        let answer = get_path(server.addr, "/health");
        assert!(
            answer.contains(" 503 ") && answer.contains("held_ms"),
            "{answer}"
        );
        // A page whose name was rebound to 127.0.0.1 learns nothing of it:
        // the standby's own answers follow every route's rules.
        let answer = get_path_as(server.addr, "/health", "evil.example");
        assert!(
            answer.contains(" 403 ") && !answer.contains("held_ms"),
            "{answer}"
        );
        server.release(holders);
    }
}
