//! `bench --cores N`: the figures of a smaller machine on this one.
//!
//! Pins the process to N of the CPUs it may use, before the runtime starts:
//! every thread started afterwards (the runtime's workers, litebridge's
//! writer and checkpoint threads, the baselines' threads) and every child
//! (the bridge cases' Python workers) inherits the set, and the runtime
//! sizes itself to it, as under `taskset -c 0` (Linux's own tool, which the
//! earlier figures in BENCHMARKS.md used).

use crate::{CliResult, Failure};

/// Pins the calling thread, and so everything it starts, to the first `n`
/// CPUs of those it may use; returns their numbers.
#[cfg(target_os = "linux")]
#[allow(unsafe_code)]
pub(crate) fn pin(n: usize) -> CliResult<Vec<usize>> {
    // SAFETY: `set` is a plain bit set owned by this frame; both calls read
    // or write exactly `size_of::<cpu_set_t>()` bytes of it, as their size
    // argument says, and pid 0 names the calling thread.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    let size = std::mem::size_of::<libc::cpu_set_t>();
    if unsafe { libc::sched_getaffinity(0, size, &mut set) } != 0 {
        return Err(Failure::new(format!(
            "--cores: cannot read which CPUs this process may use: {}",
            std::io::Error::last_os_error()
        )));
    }
    let allowed: Vec<usize> = (0..libc::CPU_SETSIZE as usize)
        .filter(|&c| unsafe { libc::CPU_ISSET(c, &set) })
        .collect();
    if n == 0 || n > allowed.len() {
        return Err(Failure::new(format!(
            "--cores {n} is out of range: this process may use {} CPU{} ({allowed:?})",
            allowed.len(),
            if allowed.len() == 1 { "" } else { "s" }
        )));
    }
    let chosen = allowed[..n].to_vec();
    // SAFETY: as above; CPU_ZERO and CPU_SET write inside `set`.
    unsafe {
        libc::CPU_ZERO(&mut set);
        for &c in &chosen {
            libc::CPU_SET(c, &mut set);
        }
        if libc::sched_setaffinity(0, size, &set) != 0 {
            return Err(Failure::new(format!(
                "--cores {n}: cannot pin this process to CPUs {chosen:?}: {}",
                std::io::Error::last_os_error()
            )));
        }
    }
    Ok(chosen)
}

/// Without Linux's affinity calls: refuse, naming the option.
#[cfg(not(target_os = "linux"))]
pub(crate) fn pin(n: usize) -> CliResult<Vec<usize>> {
    Err(Failure::new(format!(
        "--cores {n} needs Linux; pin the process with this system's own tool instead"
    )))
}

/// A warning when this machine's idle CPUs halt at once: Linux's
/// `haltpoll` idle driver and governor (on virtual machines) with
/// `guest_halt_poll_ns = 0`. (Other idle set-ups are not read.) Each wake-up sent to such a CPU costs tens of
/// microseconds, and sequential cases on two cores or more make several
/// a call (docs/workers-nats.md, "Latency on virtual machines").
pub(crate) fn idle_warning() -> Option<String> {
    let read = |path: &str| std::fs::read_to_string(path).ok();
    let idle = |what: &str| read(&format!("/sys/devices/system/cpu/cpuidle/{what}"));
    // The setting is the haltpoll governor's, over the haltpoll driver.
    if idle("current_driver")?.trim() != "haltpoll"
        || idle("current_governor")?.trim() != "haltpoll"
    {
        return None;
    }
    let poll_ns = read("/sys/module/haltpoll/parameters/guest_halt_poll_ns")?;
    (poll_ns.trim() == "0").then(|| {
        "this machine's idle CPUs halt at once (haltpoll, guest_halt_poll_ns = 0): \
         on two cores or more, every wake-up sent to an idle CPU costs tens of \
         microseconds, which the sequential cases' latencies show"
            .to_owned()
    })
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::*;

    #[test]
    fn pins_a_thread_to_the_cpus_asked_for_and_refuses_more_than_it_has() {
        // On a thread of its own: the pin outlives the call.
        std::thread::spawn(|| {
            let chosen = pin(1).unwrap();
            assert_eq!(chosen.len(), 1);
            // Threads started afterwards inherit it: the standard library sees one CPU.
            let seen = std::thread::spawn(|| std::thread::available_parallelism().unwrap().get())
                .join()
                .unwrap();
            assert_eq!(seen, 1);
            let err = pin(2).unwrap_err();
            assert!(
                err.message.contains("--cores 2 is out of range"),
                "{}",
                err.message
            );
            assert!(pin(0).is_err());
        })
        .join()
        .unwrap();
    }
}
