//! The end of a run and the kernel's clock for inode times.
//!
//! Linux stamps ctimes from a coarse clock (one tick, 1–10 ms, behind the
//! fine one). A re-run tells a destination changed since the copy by its
//! ctime against the time the copy ended (`crate::rerun`); so that a
//! change made just after the end cannot carry a ctime from before it, a
//! run waits, before it records its end, until the coarse clock is past
//! its last write by [`MARGIN_TICKS`] ticks, and the comparison allows
//! that margin.

use std::time::{Duration, Instant};

/// Ticks between a run's last write and its recorded end.
pub const MARGIN_TICKS: i64 = 2;

/// The wait, at most: a clock that does not move (a paused VM) must not
/// hold a run.
const WAIT_MAX: Duration = Duration::from_millis(100);

/// `clock` now, or its resolution (`res`), in nanoseconds. Through libc,
/// not a vDSO parser of our own: valgrind's auxiliary vector trips those.
fn read(clock: libc::clockid_t, res: bool) -> i64 {
    let mut t = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `t` is a live, writable timespec; both calls only write it
    // (and fail only for an unknown clock id, which these are not).
    let rc = unsafe {
        if res {
            libc::clock_getres(clock, &mut t)
        } else {
            libc::clock_gettime(clock, &mut t)
        }
    };
    assert_eq!(rc, 0, "clock {clock} unreadable");
    t.tv_sec
        .saturating_mul(1_000_000_000)
        .saturating_add(t.tv_nsec)
}

/// One tick of the coarse clock file times come from, in nanoseconds.
pub fn tick_ns() -> i64 {
    read(libc::CLOCK_REALTIME_COARSE, true).clamp(1, 100_000_000)
}

/// How far before a copy's recorded end a destination's ctime must be to
/// be the copy's own (see the module's doc).
pub fn margin_ns() -> i64 {
    MARGIN_TICKS * tick_ns()
}

/// Waits (bounded) until the coarse clock is [`MARGIN_TICKS`] ticks past
/// now: every inode time written so far is then that far before what the
/// run records next.
pub fn wait_past_last_write() {
    let last_write = read(libc::CLOCK_REALTIME, false);
    let until = last_write + margin_ns();
    let started = Instant::now();
    while read(libc::CLOCK_REALTIME_COARSE, false) <= until && started.elapsed() < WAIT_MAX {
        std::thread::sleep(Duration::from_millis(1));
    }
}
