//! Who owns a transfer, and whether that process is still alive.
//!
//! A pid alone is not an identity: pids are reused. An owner is (host, boot
//! id, pid, start time); it is dead when it ran on this host and either the
//! host rebooted, or no process with that pid has that start time, or that
//! process is a zombie (killed, not yet reaped: it will never write again,
//! and a parent that never reaps would otherwise hold the transfer forever).
//! Owners on other hosts are never guessed about.

use std::sync::OnceLock;

use crate::model::Owner;

/// What we can say about an owner from this host.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Liveness {
    /// This very process.
    Me,
    Alive,
    Dead,
    /// The owner ran on another host.
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

    pub fn liveness(&self) -> Liveness {
        let me = Owner::current();
        if self.host != me.host {
            return Liveness::Unknown;
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
        assert_eq!(me.liveness(), Liveness::Me);
        let reused = Owner {
            start_time: me.start_time + 1,
            ..me.clone()
        };
        assert_eq!(reused.liveness(), Liveness::Dead);
        let rebooted = Owner {
            boot_id: "another boot".into(),
            ..me.clone()
        };
        assert_eq!(rebooted.liveness(), Liveness::Dead);
        let remote = Owner {
            host: format!("{}-elsewhere", me.host),
            ..me
        };
        assert_eq!(remote.liveness(), Liveness::Unknown);
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
        assert_eq!(owner.liveness(), Liveness::Alive);
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
        assert_eq!(owner.liveness(), Liveness::Dead);
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
        assert_eq!(owner.liveness(), Liveness::Alive);
    }
}
