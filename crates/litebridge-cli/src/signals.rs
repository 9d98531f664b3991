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
//! **What is not a second signal.** A signal of the same number within
//! [`ECHO`] of the last one counted is the same one delivered twice: Ctrl-C
//! in a terminal reaches the whole foreground process group, so a wrapper
//! that forwards it (`npm run`, a shell script with a trap) delivers it to
//! litebridge a second time a few milliseconds later, which skipped the
//! drain. SIGHUP ignored when litebridge starts (`nohup`) stays ignored: a
//! closed terminal then must not stop it.
//!
//! **Exit statuses, the same for every command.** Stopped as asked by the
//! first signal (drained, or at the end of its grace period): 0, or 130 for
//! SIGINT, as a shell expects of a program Ctrl-C stopped (a script running
//! litebridge stops too). Left at once at a second signal: 128 + its number.

use std::time::{Duration, Instant};

use tokio::sync::watch;

/// Two signals of one number this close together are one (see the module's
/// design note). A person pressing Ctrl-C twice to leave at once takes
/// longer.
pub(crate) const ECHO: Duration = Duration::from_millis(200);

/// The count of signals so far, and the last one's number. `None` without
/// signal handlers.
fn count() -> Option<watch::Receiver<(u64, i32)>> {
    static COUNT: std::sync::OnceLock<Option<watch::Receiver<(u64, i32)>>> =
        std::sync::OnceLock::new();
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
                        // replaces the ignoring.
                        let hangup_ignored = ignored(libc::SIGHUP);
                        let (Ok(mut term), Ok(mut int)) = (
                            signal(SignalKind::terminate()),
                            signal(SignalKind::interrupt()),
                        ) else {
                            let _ = ready_tx.send(None);
                            return;
                        };
                        let mut hup = if hangup_ignored {
                            None
                        } else {
                            match signal(SignalKind::hangup()) {
                                Ok(hup) => Some(hup),
                                Err(_) => {
                                    let _ = ready_tx.send(None);
                                    return;
                                }
                            }
                        };
                        // Listening before the caller goes on.
                        let (tx, rx) = watch::channel((0, 0));
                        let _ = ready_tx.send(Some(rx));
                        let mut echoes = Echoes::default();
                        loop {
                            let number = tokio::select! {
                                _ = term.recv() => libc::SIGTERM,
                                _ = int.recv() => libc::SIGINT,
                                Some(()) = async {
                                    match hup.as_mut() {
                                        Some(h) => h.recv().await,
                                        None => std::future::pending().await,
                                    }
                                } => libc::SIGHUP,
                            };
                            if echoes.counts(number, Instant::now()) {
                                tx.send_modify(|(count, last)| {
                                    *count += 1;
                                    *last = number;
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

/// Which signals count: not one repeating the last counted within [`ECHO`].
#[derive(Debug, Default)]
struct Echoes {
    last: Option<(i32, Instant)>,
}

impl Echoes {
    /// Whether signal `number`, come at `now`, counts (and is then the last).
    fn counts(&mut self, number: i32, now: Instant) -> bool {
        if let Some((last, at)) = self.last
            && last == number
            && now.saturating_duration_since(at) < ECHO
        {
            return false;
        }
        self.last = Some((number, now));
        true
    }
}

/// Waits until the `n`th signal has come; its number. Without signal
/// handlers, never.
pub(crate) async fn nth(n: u64) -> i32 {
    let Some(mut rx) = count() else {
        return std::future::pending().await;
    };
    let last = rx
        .wait_for(|(count, _)| *count >= n)
        .await
        .map(|seen| seen.1);
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

/// The number of the last signal counted, if one has come: the first's,
/// as long as no second one came.
pub(crate) fn came() -> Option<i32> {
    count().and_then(|rx| {
        let (n, last) = *rx.borrow();
        (n > 0).then_some(last)
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
    fn a_signal_repeated_within_the_echo_is_one() {
        let mut echoes = Echoes::default();
        let t0 = Instant::now();
        assert!(echoes.counts(libc::SIGINT, t0));
        // Forwarded by a wrapper a few milliseconds later: the same one.
        assert!(!echoes.counts(libc::SIGINT, t0 + Duration::from_millis(3)));
        // Another signal at once is another.
        assert!(echoes.counts(libc::SIGTERM, t0 + Duration::from_millis(5)));
        // The same number again past the echo, from the last counted.
        assert!(!echoes.counts(libc::SIGTERM, t0 + Duration::from_millis(150)));
        assert!(echoes.counts(libc::SIGTERM, t0 + Duration::from_millis(5) + ECHO));
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
