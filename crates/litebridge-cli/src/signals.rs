//! The signals that stop litebridge: SIGTERM, SIGINT, and SIGHUP (the
//! terminal closed: a drain, not the default death).
//!
//! # Design
//!
//! **Counted, from the first time anything asks.** Once asked, the default
//! action is gone for good (tokio never puts it back), so every command
//! that asks must act on them; counted, a signal that comes between two
//! waits is not lost (review 155: one during the start, between the start's
//! listener and serve's, was). The first stops a command as it should
//! stop (a drain); the second leaves at once.
//!
//! **On a thread and runtime of their own.** The count goes on while every
//! thread of the main runtime is held (a long step of SQLite) or it is
//! being dropped (review 156), and anyone may wait for it from any thread.
//!
//! **What is not a second signal.** A signal within [`ECHO`] of the first
//! (the last one counted) is the same stop delivered twice: Ctrl-C in a terminal
//! reaches the whole foreground process group, so a wrapper that forwards
//! it (`npm run`, a shell script with a trap) delivers it to litebridge a
//! second time a few milliseconds later, as SIGINT again or as SIGTERM
//! (honcho, foreman), which skipped the drain (review 160).
//!
//! **SIGHUP ignored at the start stays ignored** (`nohup`: a closed
//! terminal must not stop it). SIGTERM and SIGINT are always heard: they
//! come only when someone asks for a stop, and a script's background job
//! starts with SIGINT ignored, where `kill -INT` (or `timeout -s INT`, a
//! supervisor's stop signal) must still stop litebridge, as it did before;
//! so CI's test run, started in the background, found.
//!
//! **Exit statuses, the same for every command.** Stopped as asked by the
//! first signal (drained, or at the end of its grace period): 0, or 130 for
//! SIGINT, as a shell expects of a program Ctrl-C stopped (a script running
//! litebridge stops too), whatever came after it. Left at once at a second
//! signal: 128 + its number.

use std::time::{Duration, Instant};

use tokio::sync::watch;

/// Signals this close after the first are the same stop (see the module's
/// design note). Measured from the first, not the last, so that Ctrl-C
/// held down (repeated every 30 ms or so) still leaves at once after it;
/// a person pressing Ctrl-C twice to leave at once presses again if the
/// second came within it.
pub(crate) const ECHO: Duration = Duration::from_millis(200);

/// The signals counted so far.
#[derive(Debug, Clone, Copy, Default)]
struct Count {
    count: u64,
    /// The first one's number.
    first: i32,
    /// The last one's number.
    last: i32,
}

/// The signals counted so far. `None` without signal handlers.
fn count() -> Option<watch::Receiver<Count>> {
    static COUNT: std::sync::OnceLock<Option<watch::Receiver<Count>>> = std::sync::OnceLock::new();
    COUNT
        .get_or_init(|| {
            let (ready_tx, ready_rx) = std::sync::mpsc::channel();
            let spawned = std::thread::Builder::new()
                .name("litebridge-signals".into())
                .spawn(move || {
                    use tokio::signal::unix::{SignalKind, signal};
                    let Ok(runtime) = tokio::runtime::Builder::new_current_thread()
                        .enable_io()
                        .build()
                    else {
                        let _ = ready_tx.send(None);
                        return;
                    };
                    runtime.block_on(async move {
                        // Read before tokio installs its handler, which
                        // replaces the ignoring: SIGHUP ignored is never
                        // listened for.
                        let listen = |number: i32, kind: SignalKind| {
                            if number == libc::SIGHUP && ignored(number) {
                                Ok(None)
                            } else {
                                signal(kind).map(Some)
                            }
                        };
                        let (Ok(mut term), Ok(mut int), Ok(mut hup)) = (
                            listen(libc::SIGTERM, SignalKind::terminate()),
                            listen(libc::SIGINT, SignalKind::interrupt()),
                            listen(libc::SIGHUP, SignalKind::hangup()),
                        ) else {
                            let _ = ready_tx.send(None);
                            return;
                        };
                        // Listening before the caller goes on.
                        let (tx, rx) = watch::channel(Count::default());
                        let _ = ready_tx.send(Some(rx));
                        let mut echoes = Echoes::default();
                        loop {
                            let number = tokio::select! {
                                Some(()) = heard(term.as_mut()) => libc::SIGTERM,
                                Some(()) = heard(int.as_mut()) => libc::SIGINT,
                                Some(()) = heard(hup.as_mut()) => libc::SIGHUP,
                                else => break,
                            };
                            if echoes.counts(Instant::now()) {
                                tx.send_modify(|c| {
                                    if c.count == 0 {
                                        c.first = number;
                                    }
                                    c.count += 1;
                                    c.last = number;
                                });
                            }
                        }
                    });
                });
            spawned.ok()?;
            ready_rx.recv().ok().flatten()
        })
        .clone()
}

/// The next delivery of a signal listened for; never for one that is not.
async fn heard(signal: Option<&mut tokio::signal::unix::Signal>) -> Option<()> {
    match signal {
        Some(s) => s.recv().await,
        None => std::future::pending().await,
    }
}

/// Whether signal `number` is ignored now (as `nohup` leaves SIGHUP).
#[allow(unsafe_code)]
fn ignored(number: i32) -> bool {
    // SAFETY: sigaction with a null new action only reads the current one
    // into `old`, a plain C struct for which all-zero bytes are valid.
    unsafe {
        let mut old: libc::sigaction = std::mem::zeroed();
        libc::sigaction(number, std::ptr::null(), &mut old) == 0
            && old.sa_sigaction == libc::SIG_IGN
    }
}

/// Which signals count: not one within [`ECHO`] of the last counted.
#[derive(Debug, Default)]
struct Echoes {
    last: Option<Instant>,
}

impl Echoes {
    /// Whether a signal come at `now` counts (and is then the last).
    fn counts(&mut self, now: Instant) -> bool {
        if self
            .last
            .is_some_and(|at| now.saturating_duration_since(at) < ECHO)
        {
            return false;
        }
        self.last = Some(now);
        true
    }
}

/// Waits until the `n`th signal has come; the first's number for `n` = 1,
/// the last's otherwise. Without signal handlers, never.
pub(crate) async fn nth(n: u64) -> i32 {
    let Some(mut rx) = count() else {
        return std::future::pending().await;
    };
    let last = rx
        .wait_for(|c| c.count >= n)
        .await
        .map(|c| if n == 1 { c.first } else { c.last });
    match last {
        Ok(number) => number,
        Err(_) => std::future::pending().await,
    }
}

/// The first signal's number, once it has come.
pub(crate) async fn first() -> i32 {
    nth(1).await
}

/// [`nth`] on a thread outside any runtime; `None` if it cannot wait.
pub(crate) fn nth_blocking(n: u64) -> Option<i32> {
    let runtime = tokio::runtime::Builder::new_current_thread().build().ok()?;
    Some(runtime.block_on(nth(n)))
}

/// Listens for signals now, before a start that cannot be cut short before
/// its first wait: from here on a signal is counted, not the default death.
pub(crate) fn listen() {
    let _ = count();
}

/// The first signal's number, if one has come.
pub(crate) fn came() -> Option<i32> {
    count().and_then(|rx| {
        let c = *rx.borrow();
        (c.count > 0).then_some(c.first)
    })
}

/// The exit status of a command stopped as asked by signal `number`: 0, or
/// 130 for SIGINT.
pub(crate) fn stopped_status(number: i32) -> u8 {
    if number == libc::SIGINT { 130 } else { 0 }
}

/// How a command stopped by the first signal ends: `Ok` for a status of 0,
/// a silent failure for 130 (SIGINT); `Ok` when no signal came.
pub(crate) fn stopped() -> crate::CliResult {
    match came().map(stopped_status) {
        Some(code) if code != 0 => Err(crate::Failure {
            message: String::new(),
            code,
        }),
        _ => Ok(()),
    }
}

/// The exit status of a command that left at once at signal `number` (a
/// second one): 128 + its number.
pub(crate) fn left_status(number: i32) -> i32 {
    128 + number
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_signal_within_the_echo_is_one() {
        let mut echoes = Echoes::default();
        let t0 = Instant::now();
        assert!(echoes.counts(t0));
        // Forwarded by a wrapper a few milliseconds later, as the same
        // signal or another: the same stop.
        assert!(!echoes.counts(t0 + Duration::from_millis(3)));
        assert!(!echoes.counts(t0 + Duration::from_millis(150)));
        // Past the echo of the last counted: a second.
        assert!(echoes.counts(t0 + ECHO));
        assert!(!echoes.counts(t0 + ECHO + Duration::from_millis(10)));
    }

    #[test]
    fn statuses_say_how_it_stopped() {
        assert_eq!(stopped_status(libc::SIGTERM), 0);
        assert_eq!(stopped_status(libc::SIGHUP), 0);
        assert_eq!(stopped_status(libc::SIGINT), 130);
        assert_eq!(left_status(libc::SIGTERM), 143);
        assert_eq!(left_status(libc::SIGINT), 130);
    }
}
