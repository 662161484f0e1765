//! ferry's own threads (movers, workers, heartbeats) never take
//! asynchronous signals: a program's SIGTERM handler (an AXL program's, say,
//! which calls back into the library) must run on one of the program's own
//! threads, never on a ferry thread interrupted while it holds the store.

/// Runs `spawn` with every asynchronous signal blocked in this thread, so
/// that the threads it starts inherit that mask; the mask is restored
/// after. Signals that arrive meanwhile stay pending and are delivered to
/// this thread once restored.
pub(crate) fn spawn_blocked<T>(spawn: impl FnOnce() -> T) -> T {
    // SAFETY: sigset_t is plain data, initialised by sigfillset/sigdelset;
    // pthread_sigmask only changes this thread's mask, and `old` is written
    // by it before being read to restore.
    unsafe {
        let mut all: libc::sigset_t = std::mem::zeroed();
        libc::sigfillset(&mut all);
        // Faults are delivered to the thread that caused them: never block.
        for sync in [libc::SIGSEGV, libc::SIGBUS, libc::SIGFPE, libc::SIGILL] {
            libc::sigdelset(&mut all, sync);
        }
        let mut old: libc::sigset_t = std::mem::zeroed();
        libc::pthread_sigmask(libc::SIG_BLOCK, &all, &mut old);
        let value = spawn();
        libc::pthread_sigmask(libc::SIG_SETMASK, &old, std::ptr::null_mut());
        value
    }
}
