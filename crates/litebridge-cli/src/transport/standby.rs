//! The standby acceptor: `/health`, `/ready` and `/metrics` answered while
//! every thread of the async runtime is held.
//!
//! Reads run SQLite on the runtime's threads (the read lane's design: a hop
//! to another thread costs more than a point read). A read still running
//! after a few milliseconds is moved off its thread, but only when SQLite
//! looks at its progress handler, and some single steps never do (one row of
//! hundreds of expensive columns over a large value). A few of those at once
//! hold every runtime thread for as long as they run: nothing accepts, and a
//! health probe times out on a process that is alive and will recover.
//!
//! So a second, single-threaded runtime on a thread of its own shares the
//! listening socket (a duplicate of its descriptor). The main runtime stores
//! a heartbeat every [`BEAT`]; while it is fresh the standby only looks at
//! it. Once it is [`STALE`] the standby accepts too, racing the main loop for
//! new connections (the kernel gives each to one of them): it answers the
//! control paths itself and hands every other request to the main runtime,
//! to run there when a thread frees (holding its connection meanwhile, as the
//! backlog would have). `/ready` served this way reports the stall as a
//! problem, so a load balancer stops sending work to a jammed process while
//! its liveness probe still passes. Connections the standby accepted are not
//! kept alive, so clients come back to the main loop once it runs again.
//!
//! It costs the hot path nothing: the heartbeat is one timer every 50 ms,
//! the standby wakes at the same pace to read it, and it shares the
//! connection cap (`server.max_connections`) with the main loop.

use std::convert::Infallible;
use std::future::Future;
use std::os::fd::AsFd as _;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Body;
use axum::http::{Request, Response, StatusCode};
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

/// A heartbeat older than this means every runtime thread is held.
pub(crate) const STALE: Duration = Duration::from_millis(200);

/// The paths the standby answers itself; every other one runs on the main runtime.
const CONTROL: [&str; 3] = ["/health", "/ready", "/metrics"];

/// A request's answer, run here or on the main runtime.
type Answer = Pin<Box<dyn Future<Output = Result<Response<Body>, Infallible>> + Send>>;

/// Put on requests the standby served while the main runtime was held: how
/// long it has not run. `/ready` reports it.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Stalled(pub(crate) Duration);

/// The main runtime's last sign of life.
struct Heartbeat {
    epoch: Instant,
    /// Milliseconds from `epoch` to the last beat.
    last: AtomicU64,
}

impl Heartbeat {
    fn now(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    fn beat(&self) {
        self.last.store(self.now(), Ordering::Relaxed);
    }

    /// How long the main runtime has not run, once that is past [`STALE`].
    fn stalled(&self) -> Option<Duration> {
        let age =
            Duration::from_millis(self.now().saturating_sub(self.last.load(Ordering::Relaxed)));
        (age > STALE).then_some(age)
    }
}

/// A running standby acceptor and the main runtime's heartbeat.
pub(crate) struct Standby {
    stop: Arc<Notify>,
    done: oneshot::Receiver<()>,
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
    ) -> Option<Standby> {
        let socket = match listener.as_fd().try_clone_to_owned() {
            Ok(fd) => std::net::TcpListener::from(fd),
            Err(e) => {
                tracing::warn!("no standby acceptor (duplicating the listening socket: {e})");
                return None;
            }
        };
        let heartbeat = Arc::new(Heartbeat {
            epoch: Instant::now(),
            last: AtomicU64::new(0),
        });
        let stop = Arc::new(Notify::new());
        let (finished, done) = oneshot::channel();
        let standby = Acceptor {
            router,
            limits,
            permits,
            heartbeat: heartbeat.clone(),
            main: Handle::current(),
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
        Some(Standby { stop, done, heart })
    }

    /// Stops accepting and waits for the standby's connections to drain.
    pub(crate) async fn stop(self) {
        self.heart.abort();
        self.stop.notify_one();
        let _ = self.done.await;
    }
}

struct Acceptor {
    router: Router,
    limits: Limits,
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
        let graceful = GracefulShutdown::new();
        let mut builder = http1(self.limits);
        builder.keep_alive(false);
        let stopped = self.stop.notified();
        tokio::pin!(stopped);
        loop {
            if self.heartbeat.stalled().is_none() {
                tokio::select! {
                    biased;
                    () = &mut stopped => break,
                    () = tokio::time::sleep(BEAT) => continue,
                }
            }
            let permit = tokio::select! {
                biased;
                () = &mut stopped => break,
                p = self.permits.clone().acquire_owned() => match p {
                    Ok(p) => p,
                    Err(_) => break,
                },
                () = tokio::time::sleep(BEAT) => continue,
            };
            let stream = tokio::select! {
                biased;
                () = &mut stopped => break,
                accepted = listener.accept() => match accepted {
                    Ok((stream, _)) => stream,
                    Err(e) => {
                        tracing::warn!("the standby acceptor could not accept a connection: {e}");
                        tokio::time::sleep(BEAT).await;
                        continue;
                    }
                },
                () = tokio::time::sleep(BEAT) => continue,
            };
            tracing::debug!("accepted a connection on the standby: the request threads are held");
            let conn = builder.serve_connection(io(stream, self.limits), self.service());
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
    fn service(
        &self,
    ) -> impl hyper::service::Service<
        Request<Incoming>,
        Response = Response<Body>,
        Error = Infallible,
        Future = Answer,
    > + use<> {
        let local = TowerToHyperService::new(self.router.clone());
        let (main, heartbeat) = (self.main.clone(), self.heartbeat.clone());
        hyper::service::service_fn(move |mut request: Request<Incoming>| {
            let control = CONTROL.contains(&request.uri().path());
            if let Some(age) = heartbeat.stalled() {
                request.extensions_mut().insert(Stalled(age));
            }
            let answer = local.call(request);
            let main = main.clone();
            Box::pin(async move {
                if control {
                    return answer.await;
                }
                // A client that goes away cancels its request, as on the main loop.
                AbortOnDropHandle::new(main.spawn(answer))
                    .await
                    .unwrap_or_else(|_| {
                        let mut lost = Response::new(Body::from(
                            "the request ended without an answer (the server is shutting down)",
                        ));
                        *lost.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
                        Ok(lost)
                    })
            }) as Answer
        })
    }
}

#[cfg(test)]
mod tests {
    use std::io::{Read as _, Write as _};
    use std::sync::atomic::AtomicUsize;

    use axum::Extension;
    use axum::routing::get;

    use super::*;
    use crate::transport::accept;

    /// GETs `path` on a connection of its own; the answer's status line and body.
    fn get_path(addr: std::net::SocketAddr, path: &str) -> String {
        let mut s = std::net::TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        write!(
            s,
            "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
        )
        .unwrap();
        let mut answer = String::new();
        s.read_to_string(&mut answer).unwrap();
        let status = answer.lines().next().unwrap_or_default().to_owned();
        let body = answer.split("\r\n\r\n").nth(1).unwrap_or_default();
        format!("{status} {body}")
    }

    #[test]
    fn control_paths_are_answered_while_every_runtime_thread_is_held() {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let holding = Arc::new(AtomicUsize::new(0));
        let router = {
            let holding = holding.clone();
            Router::new()
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
                // A handler that holds its runtime thread, as a long step of
                // SQLite run inline does.
                .route(
                    "/hold",
                    get(move || async move {
                        holding.fetch_add(1, Ordering::SeqCst);
                        std::thread::sleep(Duration::from_secs(2));
                        "held"
                    }),
                )
                .route("/work", get(|| async { "done" }))
        };
        let listener = runtime.block_on(TcpListener::bind("127.0.0.1:0")).unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = oneshot::channel::<()>();
        let limits = accept::Limits {
            max_connections: 64,
            read_timeout: Duration::from_secs(10),
        };
        let server = runtime.spawn(accept::serve(listener, router, limits, async {
            let _ = stopped.await;
        }));
        let holders: Vec<_> = (0..2)
            .map(|_| std::thread::spawn(move || get_path(addr, "/hold")))
            .collect();
        while holding.load(Ordering::SeqCst) < 2 {
            std::thread::yield_now();
        }
        let started = Instant::now();
        assert!(get_path(addr, "/health").ends_with(" ok"));
        let took = started.elapsed();
        assert!(took < STALE * 2 + BEAT * 4, "/health took {took:?}");
        assert!(get_path(addr, "/ready").ends_with(" stalled"));
        // Any other request waits for the main runtime and runs there.
        assert!(get_path(addr, "/work").ends_with(" done"));
        for holder in holders {
            assert!(holder.join().unwrap().ends_with(" held"));
        }
        // Running again: nothing reports a stall any more.
        let started = Instant::now();
        while !get_path(addr, "/ready").ends_with(" ready") {
            assert!(started.elapsed() < Duration::from_secs(5), "still stalled");
        }
        stop.send(()).unwrap();
        runtime.block_on(server).unwrap();
    }
}
