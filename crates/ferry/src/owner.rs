//! Who owns a transfer, and whether that process is still alive.
//!
//! A pid alone is not an identity: pids are reused. An owner is (host, boot
//! id, pid, start time); it is dead when it ran on this host and either the
//! host rebooted, or no process with that pid has that start time, or that
//! process is a zombie (killed, not yet reaped: it will never write again,
//! and a parent that never reaps would otherwise hold the transfer forever).
//!
//! Owners on other hosts (or behind another PID namespace with another
//! host name) cannot be checked from here: they hold a lease instead. While
//! a process holds a transfer it renews a heartbeat in the store every
//! third of its lease ([`lease`]: `FERRY_OWNER_LEASE`, default
//! [`DEFAULT_LEASE`]); an owner elsewhere whose heartbeat is older than the
//! lease it promised is dead, one whose heartbeat is fresh is alive, and one
//! with no heartbeat (a store from before leases) is unknown. The lease is
//! judged with the reader's clock against the owner's: hosts sharing a
//! store must keep their clocks within a fraction of the lease (NTP does).
//! [`TransferRecord::owner_liveness`] is the one place this is decided.

use std::sync::OnceLock;
use std::time::Duration;

use crate::model::{Lease, Owner, TransferRecord};

/// How long an owner's heartbeat holds when `FERRY_OWNER_LEASE` is unset:
/// a restart on another node waits at most this long after a crash.
pub const DEFAULT_LEASE: Duration = Duration::from_secs(30);
/// The shortest lease accepted: shorter ones would have the heartbeat
/// write the store many times a second.
pub const LEASE_MIN: Duration = Duration::from_millis(300);

/// This process's lease, from `FERRY_OWNER_LEASE` (read once). A value that
/// is not a duration is an error naming the variable.
pub fn lease() -> Result<Duration, crate::Error> {
    static LEASE: OnceLock<Result<Duration, String>> = OnceLock::new();
    let parsed = LEASE.get_or_init(|| match std::env::var("FERRY_OWNER_LEASE") {
        Err(_) => Ok(DEFAULT_LEASE),
        Ok(v) if v.trim().is_empty() => Ok(DEFAULT_LEASE),
        Ok(v) => humantime::parse_duration(v.trim())
            .ok()
            .filter(|d| *d >= LEASE_MIN)
            .ok_or(v),
    });
    parsed.clone().map_err(|value| crate::Error::BadSetting {
        name: "FERRY_OWNER_LEASE",
        value,
        expected: "a duration of at least 300ms, such as 30s, 2s, 500ms or 1m",
    })
}

impl TransferRecord {
    /// Whether the owner of this transfer is alive: from this host's
    /// process table when it ran here, else from its lease.
    pub fn owner_liveness(&self) -> Liveness {
        self.owner.liveness_with(self.lease, wall_clock_ns())
    }
}

fn wall_clock_ns() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as i64)
}

/// What we can say about an owner from this host.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Liveness {
    /// This very process.
    Me,
    Alive,
    Dead,
    /// The owner ran on another host and has no lease to judge it by.
    Unknown,
}

impl Owner {
    /// The calling process.
    pub fn current() -> Owner {
        static CURRENT: OnceLock<Owner> = OnceLock::new();
        // The pid changes across fork; everything else is fixed for a process.
        let pid = std::process::id();
        let cached = CURRENT.get_or_init(|| Owner {
            host: host_name(),
            boot_id: boot_id(),
            pid,
            start_time: process_start_time(pid).unwrap_or(0),
        });
        if cached.pid == pid {
            cached.clone()
        } else {
            Owner {
                pid,
                start_time: process_start_time(pid).unwrap_or(0),
                ..cached.clone()
            }
        }
    }

    /// See [`TransferRecord::owner_liveness`]; `now_ns` is the wall clock.
    pub fn liveness_with(&self, lease: Option<Lease>, now_ns: i64) -> Liveness {
        let me = Owner::current();
        if self.host != me.host {
            return match lease {
                None => Liveness::Unknown,
                Some(lease) => {
                    let age_ns = now_ns.saturating_sub(lease.heartbeat_ns);
                    if age_ns > (lease.lease_ms as i64).saturating_mul(1_000_000) {
                        Liveness::Dead
                    } else {
                        Liveness::Alive
                    }
                }
            };
        }
        if self.boot_id != me.boot_id {
            return Liveness::Dead;
        }
        if self.pid == me.pid && self.start_time == me.start_time {
            return Liveness::Me;
        }
        match process_stat(self.pid) {
            Some(stat) if stat.start_time == self.start_time && !stat.exited() => Liveness::Alive,
            _ => Liveness::Dead,
        }
    }
}

fn host_name() -> String {
    rustix::system::uname()
        .nodename()
        .to_string_lossy()
        .into_owned()
}

fn boot_id() -> String {
    std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .map(|s| s.trim().to_owned())
        .unwrap_or_default()
}

/// Field 22 of `/proc/PID/stat`, or `None` when there is no such process.
pub fn process_start_time(pid: u32) -> Option<u64> {
    process_stat(pid).map(|s| s.start_time)
}

/// What liveness needs of `/proc/PID/stat`.
struct ProcStat {
    /// Field 3.
    state: char,
    /// Field 22.
    start_time: u64,
}

impl ProcStat {
    /// Zombie (Z) or dead (X): the process has exited, whether or not its
    /// parent has reaped it yet.
    fn exited(&self) -> bool {
        matches!(self.state, 'Z' | 'X' | 'x')
    }
}

/// The command name (field 2) may contain spaces and parentheses, so fields
/// are counted from the last `)`.
fn process_stat(pid: u32) -> Option<ProcStat> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let mut fields = stat[stat.rfind(')')? + 1..].split_whitespace();
    // The fields start with field 3 (state); field 22 is the 20th from there.
    let state = fields.next()?.chars().next()?;
    let start_time = fields.nth(18)?.parse().ok()?;
    Some(ProcStat { state, start_time })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn current_process_is_me_and_a_reused_pid_is_dead() {
        let me = Owner::current();
        assert!(me.start_time > 0);
        assert_eq!(me.liveness_with(None, 0), Liveness::Me);
        let reused = Owner {
            start_time: me.start_time + 1,
            ..me.clone()
        };
        assert_eq!(reused.liveness_with(None, 0), Liveness::Dead);
        let rebooted = Owner {
            boot_id: "another boot".into(),
            ..me.clone()
        };
        assert_eq!(rebooted.liveness_with(None, 0), Liveness::Dead);
        let remote = Owner {
            host: format!("{}-elsewhere", me.host),
            ..me.clone()
        };
        assert_eq!(remote.liveness_with(None, 0), Liveness::Unknown);
        // Elsewhere, the lease decides: fresh is alive, expired is dead.
        let lease = Lease {
            heartbeat_ns: 1_000_000_000,
            lease_ms: 2000,
        };
        let fresh = 1_000_000_000 + 2_000_000_000;
        assert_eq!(remote.liveness_with(Some(lease), fresh), Liveness::Alive);
        assert_eq!(remote.liveness_with(Some(lease), fresh + 1), Liveness::Dead);
        // Here, the process table decides whatever the lease says.
        assert_eq!(me.liveness_with(Some(lease), fresh + 1), Liveness::Me);
    }

    #[test]
    fn an_unreaped_child_is_dead() {
        let mut child = std::process::Command::new("sleep")
            .arg("1000")
            .spawn()
            .expect("spawn sleep");
        let pid = child.id();
        let owner = Owner {
            pid,
            start_time: process_start_time(pid).unwrap(),
            ..Owner::current()
        };
        assert_eq!(owner.liveness_with(None, 0), Liveness::Alive);
        child.kill().expect("kill -9");
        // Waits for the exit but leaves the child unreaped: a zombie.
        use rustix::process::{Pid, WaitId, WaitIdOptions, waitid};
        let raw = Pid::from_raw(pid as i32).expect("a pid");
        waitid(
            WaitId::Pid(raw),
            WaitIdOptions::EXITED | WaitIdOptions::NOWAIT,
        )
        .expect("waitid");
        assert!(process_stat(pid).expect("still listed").exited());
        assert_eq!(owner.liveness_with(None, 0), Liveness::Dead);
        child.wait().expect("reap");
    }

    #[test]
    fn parent_process_is_alive() {
        let parent = rustix::process::getppid()
            .expect("a parent")
            .as_raw_nonzero()
            .get() as u32;
        let owner = Owner {
            pid: parent,
            start_time: process_start_time(parent).unwrap(),
            ..Owner::current()
        };
        assert_eq!(owner.liveness_with(None, 0), Liveness::Alive);
    }
}
