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

use rustix::time::{ClockId, Timespec, clock_getres, clock_gettime};

/// Ticks between a run's last write and its recorded end.
pub const MARGIN_TICKS: i64 = 2;

/// The wait, at most: a clock that does not move (a paused VM) must not
/// hold a run.
const WAIT_MAX: Duration = Duration::from_millis(100);

fn ns(t: Timespec) -> i64 {
    t.tv_sec
        .saturating_mul(1_000_000_000)
        .saturating_add(t.tv_nsec)
}

/// One tick of the coarse clock file times come from, in nanoseconds.
pub fn tick_ns() -> i64 {
    ns(clock_getres(ClockId::RealtimeCoarse)).clamp(1, 100_000_000)
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
    let last_write = ns(clock_gettime(ClockId::Realtime));
    let until = last_write + margin_ns();
    let started = Instant::now();
    while ns(clock_gettime(ClockId::RealtimeCoarse)) <= until && started.elapsed() < WAIT_MAX {
        std::thread::sleep(Duration::from_millis(1));
    }
}
