//! Signals to worker process groups: the one place the worker code calls libc.

/// Sends `sig` to the process group led by `pid` (each worker is started as
/// the leader of its own group, so this reaches everything it started).
#[allow(unsafe_code)]
pub(crate) fn kill_group(pid: u32, sig: i32) {
    let Ok(pgid) = libc::pid_t::try_from(pid) else {
        return;
    };
    if pgid <= 1 {
        return; // never signal init or our own group by mistake
    }
    // SAFETY: killpg only sends a signal; a group that no longer exists gives
    // ESRCH, which is ignored.
    unsafe {
        libc::killpg(pgid, sig);
    }
}

/// The usual name of a signal number.
pub(crate) fn name(sig: i32) -> &'static str {
    match sig {
        libc::SIGHUP => "SIGHUP",
        libc::SIGINT => "SIGINT",
        libc::SIGQUIT => "SIGQUIT",
        libc::SIGILL => "SIGILL",
        libc::SIGABRT => "SIGABRT",
        libc::SIGBUS => "SIGBUS",
        libc::SIGFPE => "SIGFPE",
        libc::SIGKILL => "SIGKILL",
        libc::SIGSEGV => "SIGSEGV",
        libc::SIGPIPE => "SIGPIPE",
        libc::SIGTERM => "SIGTERM",
        _ => "signal",
    }
}

/// The size of a memory page, for `/proc/PID/statm`.
#[allow(unsafe_code)]
pub(crate) fn page_size() -> u64 {
    // SAFETY: sysconf only reads a system constant.
    let n = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    u64::try_from(n).unwrap_or(4096)
}
