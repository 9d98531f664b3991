//! How a worker is started: the one place that knows workers are operating
//! system processes.
//!
//! `Process` (the protocol, the reader and writer tasks, crash handling)
//! and the pool see a started worker only as three byte streams, a way to
//! signal it and a future of its exit. [`Processes`] starts real ones (its
//! own process group, piped stdio); the tests start fakes that hang, crash,
//! print garbage or start slowly on cue (`fake`), so the pool's behaviours
//! are tested under paused time, with end-to-end tests on real Python
//! workers beside them.

use std::future::Future;
use std::pin::Pin;
use std::process::Stdio;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::process::Command;

use crate::error::{Error, Result};
use crate::workers::config::WorkerConfig;
use crate::workers::signal;

/// Starts workers.
pub(crate) trait Launcher: Send + Sync + 'static {
    /// Starts one worker as `config` says.
    ///
    /// # Errors
    /// [`Error::Unavailable`] naming the command when it cannot start.
    fn launch(&self, config: &WorkerConfig) -> Result<Launched>;
}

/// A started worker, as the rest of the bridge sees it.
pub(crate) struct Launched {
    /// Its process id (0 when it has none).
    pub(crate) pid: u32,
    pub(crate) stdin: Pin<Box<dyn AsyncWrite + Send>>,
    pub(crate) stdout: Pin<Box<dyn AsyncRead + Send>>,
    pub(crate) stderr: Pin<Box<dyn AsyncRead + Send>>,
    /// Signals to it (and to whatever it started).
    pub(crate) control: std::sync::Arc<dyn Control>,
    /// Resolves when it has ended, to how (`exit code 3`, `signal 9 (SIGKILL)`).
    pub(crate) exit: Pin<Box<dyn Future<Output = String> + Send>>,
}

/// Signals a started worker.
pub(crate) trait Control: Send + Sync + std::fmt::Debug {
    /// Sends `sig` (`libc::SIGTERM`, `libc::SIGKILL`); nothing once it ended.
    fn signal(&self, sig: i32);
}

/// Real worker processes: each the leader of its own process group (so a
/// signal reaches what it started, wrappers included), killed if dropped.
#[derive(Debug, Default)]
pub(crate) struct Processes;

impl Launcher for Processes {
    fn launch(&self, config: &WorkerConfig) -> Result<Launched> {
        let mut cmd = Command::new(&config.command[0]);
        cmd.args(&config.command[1..])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0)
            .kill_on_drop(true);
        if let Some(dir) = &config.cwd {
            cmd.current_dir(dir);
        }
        // litebridge's own settings are not the workers' business, and some
        // are secrets (`LITEBRIDGE_POSTGRES_URL`, `LITEBRIDGE_NATS_PASSWORD`,
        // ...): a handler that shows its environment would hand them to
        // whoever reads its output. `workers.env` may still give any.
        for (k, _) in std::env::vars_os() {
            if k.as_encoded_bytes().starts_with(b"LITEBRIDGE_") {
                cmd.env_remove(k);
            }
        }
        for (k, v) in &config.env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().map_err(|e| Error::Unavailable {
            what: "workers",
            reason: format!("cannot start `{}`: {e}", config.command.join(" ")),
        })?;
        let pid = child.id().unwrap_or(0);
        let (Some(stdin), Some(stdout), Some(stderr)) =
            (child.stdin.take(), child.stdout.take(), child.stderr.take())
        else {
            return Err(Error::Internal {
                message: "a worker's stdio was not piped".into(),
            });
        };
        Ok(Launched {
            pid,
            stdin: Box::pin(stdin),
            stdout: Box::pin(stdout),
            stderr: Box::pin(stderr),
            control: std::sync::Arc::new(Group(pid)),
            exit: Box::pin(async move { describe_exit(child.wait().await.ok()) }),
        })
    }
}

/// The process group a worker leads.
#[derive(Debug)]
struct Group(u32);

impl Control for Group {
    fn signal(&self, sig: i32) {
        signal::kill_group(self.0, sig);
    }
}

fn describe_exit(status: Option<std::process::ExitStatus>) -> String {
    use std::os::unix::process::ExitStatusExt;
    match status {
        None => "exit status unknown".into(),
        Some(s) => match (s.code(), s.signal()) {
            (Some(c), _) => format!("exit code {c}"),
            (None, Some(sig)) => format!("signal {sig} ({})", signal::name(sig)),
            _ => "exit status unknown".into(),
        },
    }
}
