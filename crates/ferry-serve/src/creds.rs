//! Who is calling, and acting as them on the file system.
//!
//! The caller is known by the socket's peer credentials (`SO_PEERCRED`:
//! uid, gid, pid; `SO_PEERGROUPS`: supplementary groups), taken by the
//! kernel when the caller connected: they cannot be forged.
//!
//! Data is read and written with the caller's credentials: [`as_caller`]
//! runs a closure on a fresh thread whose file-system uid and gid
//! (`setfsuid`/`setfsgid`) and supplementary groups are the caller's. On
//! Linux these are per-thread credentials (the raw system calls; glibc's
//! `setgroups` would change every thread of the process, so it is not
//! used), and threads started by that thread inherit them: the engine's
//! workers and committer run as the caller too. A root daemon's thread
//! also drops every capability (a non-zero fsuid alone only clears
//! CAP_DAC_OVERRIDE, CAP_CHOWN, CAP_FOWNER and friends; CAP_SETFCAP or
//! CAP_SYS_ADMIN would let a caller's copy carry file capabilities or
//! `trusted.*` attributes), so the kernel treats it exactly as the caller.
//! The thread ends with its closure, so no pooled thread ever keeps
//! someone's credentials.
//!
//! **Invariant:** this module is the only place in ferry that changes
//! credentials.

use std::io;
use std::os::fd::AsRawFd;

use ferry::Caller;

/// The peer of a connection on the daemon's socket.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Peer {
    pub pid: i32,
    pub caller: Caller,
}

/// Supplementary groups read at most (Linux's `NGROUPS_MAX`).
const GROUPS_MAX: usize = 65_536;

/// The peer credentials of a connected Unix socket.
pub fn peer(stream: &tokio::net::UnixStream) -> io::Result<Peer> {
    let cred = stream.peer_cred()?;
    let groups = peer_groups(stream)?;
    Ok(Peer {
        pid: cred.pid().unwrap_or(0),
        caller: Caller {
            uid: cred.uid(),
            gid: cred.gid(),
            groups,
        },
    })
}

fn peer_groups(stream: &tokio::net::UnixStream) -> io::Result<Vec<u32>> {
    let mut groups: Vec<libc::gid_t> = vec![0; 64];
    loop {
        let mut len = (groups.len() * size_of::<libc::gid_t>()) as libc::socklen_t;
        // SAFETY: `groups` holds `len` bytes, and the kernel writes at most
        // that many (it sets `len` to what it needs and fails with ERANGE
        // when that is more).
        let rc = unsafe {
            libc::getsockopt(
                stream.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_PEERGROUPS,
                groups.as_mut_ptr().cast(),
                &mut len,
            )
        };
        let needed = len as usize / size_of::<libc::gid_t>();
        if rc == 0 {
            groups.truncate(needed);
            return Ok(groups);
        }
        let e = io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::ERANGE) || needed > GROUPS_MAX || needed <= groups.len() {
            return Err(e);
        }
        groups.resize(needed, 0);
    }
}

/// `uid`'s primary group and supplementary groups as the system reports
/// them now (`getpwuid_r`, `getgrouplist`): what a transfer resumed after a
/// restart runs with, since its user may have lost a group since it was
/// created. A uid the user database does not know has no supplementary
/// groups and keeps `recorded_gid`.
pub fn current_groups(uid: u32, recorded_gid: u32) -> io::Result<(u32, Vec<u32>)> {
    // Bounded: a user's groups fit in NGROUPS_MAX, a passwd line in 1 MiB.
    let mut buf = vec![0 as libc::c_char; 16 * 1024];
    let (name, gid) = loop {
        // SAFETY: `pwd` is plain old data that getpwuid_r fills in; `buf`
        // holds `buf.len()` bytes for the strings it points into; `found`
        // is set to `&pwd` or null.
        let mut pwd: libc::passwd = unsafe { std::mem::zeroed() };
        let mut found: *mut libc::passwd = std::ptr::null_mut();
        let rc =
            unsafe { libc::getpwuid_r(uid, &mut pwd, buf.as_mut_ptr(), buf.len(), &mut found) };
        if rc == libc::ERANGE && buf.len() < (1 << 20) {
            buf.resize(buf.len() * 2, 0);
            continue;
        }
        if rc != 0 && rc != libc::ENOENT {
            return Err(io::Error::from_raw_os_error(rc));
        }
        if found.is_null() {
            return Ok((recorded_gid, Vec::new()));
        }
        // SAFETY: getpwuid_r succeeded, so pw_name points to a NUL-ended
        // string inside `buf`, which lives until the end of this function.
        let name = unsafe { std::ffi::CStr::from_ptr(pwd.pw_name) }.to_owned();
        break (name, pwd.pw_gid);
    };
    let mut groups: Vec<libc::gid_t> = vec![0; 64];
    loop {
        let mut n = groups.len() as libc::c_int;
        // SAFETY: `name` is NUL-ended; `groups` holds `n` entries and
        // getgrouplist writes at most that many (it sets `n` to what it
        // needs and returns -1 when that is more).
        let rc = unsafe { libc::getgrouplist(name.as_ptr(), gid, groups.as_mut_ptr(), &mut n) };
        if rc >= 0 {
            groups.truncate(n as usize);
            return Ok((gid, groups));
        }
        let needed = (n as usize).max(groups.len() * 2);
        if needed > GROUPS_MAX {
            return Err(io::Error::other(format!(
                "uid {uid} is in more than {GROUPS_MAX} groups"
            )));
        }
        groups.resize(needed, 0);
    }
}

/// This process's effective uid: a root daemon acts as each caller; any
/// other serves only its own uid (it could not switch).
pub fn daemon_uid() -> u32 {
    rustix::process::geteuid().as_raw()
}

/// Runs `f` on a fresh thread with `caller`'s file-system credentials (and
/// so does every thread `f` starts). A daemon that is not root runs `f` as
/// itself: it serves only its own uid (see the server's authorisation).
pub fn as_caller<T: Send>(caller: &Caller, f: impl FnOnce() -> T + Send) -> io::Result<T> {
    std::thread::scope(|scope| {
        let thread = std::thread::Builder::new()
            .name(format!("ferry-uid-{}", caller.uid))
            .spawn_scoped(scope, || {
                switch_this_thread(caller)?;
                Ok(f())
            })?;
        match thread.join() {
            Ok(result) => result,
            Err(panic) => std::panic::resume_unwind(panic),
        }
    })
}

fn switch_this_thread(caller: &Caller) -> io::Result<()> {
    if daemon_uid() != 0 {
        return Ok(());
    }
    let groups: Vec<_> = caller
        .groups
        .iter()
        .map(|&g| rustix::process::Gid::from_raw(g))
        .collect();
    // Groups and gid first: changing the fsuid away from 0 drops the
    // capabilities that file checks use, not CAP_SETGID, but keep the
    // order obvious anyway.
    rustix::thread::set_thread_groups(&groups)?;
    // SAFETY: setfsgid/setfsuid take plain integers and change only this
    // thread's file-system ids; they return the previous id and cannot
    // fail in a way other than leaving it unchanged, which is checked by
    // reading it back (an argument of -1 changes nothing).
    unsafe {
        libc::setfsgid(caller.gid);
        libc::setfsuid(caller.uid);
        let (gid, uid) = (libc::setfsgid(u32::MAX), libc::setfsuid(u32::MAX));
        if gid as u32 != caller.gid || uid as u32 != caller.uid {
            return Err(io::Error::other(format!(
                "could not take the file credentials of uid {} gid {} (have {uid}/{gid})",
                caller.uid, caller.gid
            )));
        }
    }
    // A non-zero fsuid drops only the file-permission capabilities: a root
    // daemon's thread would keep CAP_SETFCAP, CAP_SYS_ADMIN (trusted.*
    // attributes), CAP_SYS_RESOURCE (quotas, reserved blocks) and more. The
    // caller has none of them, so neither does this thread (nor the
    // threads it starts, which inherit its credentials).
    if caller.uid == 0 {
        return Ok(());
    }
    let none = rustix::thread::CapabilitySet::empty();
    rustix::thread::set_capabilities(
        None,
        rustix::thread::CapabilitySets {
            effective: none,
            permitted: none,
            inheritable: none,
        },
    )?;
    let now = rustix::thread::capabilities(None)?;
    if !now.effective.is_empty() || !now.permitted.is_empty() {
        return Err(io::Error::other(
            "could not drop the daemon's capabilities for a caller's thread",
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_peer_is_known_by_its_kernel_credentials() {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async {
            let (a, _b) = tokio::net::UnixStream::pair().unwrap();
            let peer = peer(&a).unwrap();
            assert_eq!(peer.pid as u32, std::process::id());
            assert_eq!(peer.caller.uid, rustix::process::geteuid().as_raw());
            assert_eq!(peer.caller.gid, rustix::process::getegid().as_raw());
            let groups: Vec<u32> = rustix::process::getgroups()
                .unwrap()
                .iter()
                .map(|g| g.as_raw())
                .collect();
            assert_eq!(peer.caller.groups, groups);
        });
    }

    #[test]
    fn as_caller_changes_only_its_own_thread() {
        let me = Caller {
            uid: daemon_uid(),
            gid: rustix::process::getegid().as_raw(),
            groups: vec![],
        };
        let fsuid = || {
            // SAFETY: -1 reads the fsuid without changing it.
            unsafe { libc::setfsuid(u32::MAX) as u32 }
        };
        let before = fsuid();
        let inside = as_caller(&me, fsuid).unwrap();
        assert_eq!(inside, me.uid);
        assert_eq!(fsuid(), before, "the calling thread is untouched");
        if daemon_uid() == 0 {
            let nobody = Caller {
                uid: 65_534,
                gid: 65_534,
                groups: vec![],
            };
            assert_eq!(as_caller(&nobody, fsuid).unwrap(), 65_534);
            // Threads started inside inherit it.
            let nested = as_caller(&nobody, || std::thread::spawn(fsuid).join().unwrap());
            assert_eq!(nested.unwrap(), 65_534);
            assert_eq!(fsuid(), 0);
            // And no capability is left to them (CAP_SETFCAP, CAP_SYS_ADMIN…),
            // in the thread or in those it starts; the daemon keeps its own.
            let caps = || rustix::thread::capabilities(None).unwrap();
            let inside = as_caller(&nobody, || {
                (caps(), std::thread::spawn(caps).join().unwrap())
            });
            let (inside, nested) = inside.unwrap();
            assert!(inside.effective.is_empty() && inside.permitted.is_empty());
            assert!(nested.effective.is_empty() && nested.permitted.is_empty());
            assert!(
                !caps().effective.is_empty(),
                "the daemon's own thread keeps them"
            );
        }
    }
}
