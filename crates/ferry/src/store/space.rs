//! What keeps a store usable when its disk fills: the reserve file, the
//! read-only switch, and the probe that switches back.
//!
//! When a write fails for lack of space (SQLITE_FULL, or an I/O error whose
//! errno is ENOSPC or EDQUOT), the store turns read-only: every later
//! mutating call fails at once with [`StoreError::ReadOnly`] without
//! touching the database, reads keep working. The reserve, a preallocated
//! file beside the store (`STORE.reserve`), is deleted at that moment, so
//! that the switch itself and a clean shutdown (transfers ending `failed` or
//! `cancelled`) can still be written. A background probe (one thread per
//! read-only store, stopping when the store is dropped) returns the store to
//! read-write once the file system has [`SpaceGuard::recover_bytes`] free
//! again and the reserve could be re-created. `ferry store check` runs the
//! same probe on demand.
//!
//! Like etcd's NOSPACE alarm, with one difference: we clear it ourselves.
//!
//! [`StoreError::ReadOnly`]: super::StoreError::ReadOnly

use std::fs::OpenOptions;
use std::io;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, Weak};
use std::time::Duration;

/// The reserve's default size on a file system of 256 MiB or more, in
/// bytes: enough for the switch to be recorded and for every transfer of a
/// busy store to end cleanly. Smaller file systems get 1/64 of their size
/// (at least [`RESERVE_BYTES_MIN`]), so that the reserve and its return
/// threshold fit any disk a store fits on.
pub const RESERVE_BYTES_DEFAULT: u64 = 4 << 20;

/// The smallest default reserve: the read-only switch and a clean shutdown
/// of a few transfers (a few pages each, in the WAL).
pub const RESERVE_BYTES_MIN: u64 = 64 << 10;

/// Environment variable that sets the reserve's size in bytes (0: none).
pub const RESERVE_ENV: &str = "FERRY_STORE_RESERVE";

/// The probe checks free space this often at first, backing off to
/// [`PROBE_INTERVAL_MAX`]: statvfs is cheap, and nothing tells us when an
/// administrator frees space.
const PROBE_INTERVAL_MIN: Duration = Duration::from_millis(20);
const PROBE_INTERVAL_MAX: Duration = Duration::from_secs(1);

/// Free space the store wants back, beyond its reserve, before it writes
/// again: a store that flips back at the first free byte only fills up
/// again. 1/16 of the file system, between these bounds, so that the
/// threshold is reachable on a small disk.
const RECOVER_HEADROOM_BYTES_MIN: u64 = 64 << 10;
const RECOVER_HEADROOM_BYTES_MAX: u64 = 1 << 20;

/// The default reserve for a file system of `total` bytes.
pub fn reserve_bytes_for(total: u64) -> u64 {
    (total / 64).clamp(RESERVE_BYTES_MIN, RESERVE_BYTES_DEFAULT) & !4095
}

/// The headroom for a file system of `total` bytes.
fn headroom_bytes_for(total: u64) -> u64 {
    (total / 16).clamp(RECOVER_HEADROOM_BYTES_MIN, RECOVER_HEADROOM_BYTES_MAX)
}

/// Why a store is read-only, for messages.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReadOnlyCause {
    pub detail: String,
}

/// Free-space state of one store; shared with its probe thread.
pub(crate) struct SpaceGuard {
    reserve_path: PathBuf,
    reserve_bytes: u64,
    headroom_bytes: u64,
    read_only: Mutex<Option<ReadOnlyCause>>,
    /// Set by the probe when it returned the store to read-write (the free
    /// bytes it saw), until a write records `store.read_write`.
    recovered: Mutex<Option<u64>>,
    changed: Condvar,
    /// Where free space is read: the store's directory.
    dir: PathBuf,
    /// Tests replace the file system's free-space reading.
    #[cfg(test)]
    free_bytes_override: Mutex<Option<u64>>,
}

impl SpaceGuard {
    /// The guard of the store at `store`; without `with_reserve`, one
    /// whose reserve is 0 bytes (never created, always "present").
    pub(crate) fn new(store: &Path, with_reserve: bool) -> Arc<SpaceGuard> {
        let mut reserve_path = store.as_os_str().to_owned();
        reserve_path.push(".reserve");
        let dir = store
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."))
            .to_path_buf();
        // Sized to the file system the store is on (unknown: as if large).
        let total = rustix::fs::statvfs(&dir)
            .map(|s| s.f_blocks.saturating_mul(s.f_frsize))
            .unwrap_or(u64::MAX);
        let reserve_bytes = if with_reserve {
            std::env::var(RESERVE_ENV)
                .ok()
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or_else(|| reserve_bytes_for(total))
        } else {
            0
        };
        Arc::new(SpaceGuard {
            reserve_path: PathBuf::from(reserve_path),
            reserve_bytes,
            headroom_bytes: headroom_bytes_for(total),
            read_only: Mutex::new(None),
            recovered: Mutex::new(None),
            changed: Condvar::new(),
            dir,
            #[cfg(test)]
            free_bytes_override: Mutex::new(None),
        })
    }

    pub(crate) fn reserve_path(&self) -> &Path {
        &self.reserve_path
    }

    pub(crate) fn reserve_bytes(&self) -> u64 {
        self.reserve_bytes
    }

    /// Free space needed (the reserve's own blocks counted as free) before
    /// a read-only store writes again, and before a process's first write.
    pub(crate) fn recover_bytes(&self) -> u64 {
        self.reserve_bytes + self.headroom_bytes
    }

    /// Free space, counting the reserve's blocks as free: the same number
    /// whether the reserve exists or not, so that every verdict on it does.
    pub(crate) fn free_counting_reserve(&self) -> io::Result<u64> {
        let reserve = if self.reserve_bytes > 0 && self.reserve_present() {
            self.reserve_bytes
        } else {
            0
        };
        Ok(self.free_bytes()?.saturating_add(reserve))
    }

    /// Why the store may not write now, by free space alone (`None`: it may).
    pub(crate) fn room_verdict(&self) -> Option<String> {
        let free = self.free_counting_reserve().unwrap_or(0);
        let recover = self.recover_bytes();
        (free < recover).then(|| {
            format!(
                "its file system has {free} bytes free (its reserve counted) and it needs \
                 {recover}: {} for its reserve ({RESERVE_ENV}) and {} more",
                self.reserve_bytes, self.headroom_bytes
            )
        })
    }

    /// Whether the reserve exists with its blocks.
    pub(crate) fn reserve_present(&self) -> bool {
        self.reserve_bytes == 0
            || std::fs::symlink_metadata(&self.reserve_path)
                .is_ok_and(|m| m.is_file() && m.blocks() * 512 >= self.reserve_bytes)
    }

    pub(crate) fn cause(&self) -> Option<ReadOnlyCause> {
        self.read_only.lock().expect("space guard poisoned").clone()
    }

    /// Creates the reserve, or tops it up, with real blocks: a sparse
    /// reserve would free nothing when deleted.
    pub(crate) fn ensure_reserve(&self) -> io::Result<()> {
        if self.reserve_present() {
            return Ok(());
        }
        // Never through a symlink, and created exclusively: in a directory
        // others can write, a link planted at the name would have root
        // extend whatever it points at.
        let open = |new: bool| {
            OpenOptions::new()
                .write(true)
                .create_new(new)
                .mode(0o600)
                .custom_flags(rustix::fs::OFlags::NOFOLLOW.bits() as i32)
                .open(&self.reserve_path)
        };
        let file = match open(true) {
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => open(false)?,
            opened => opened?,
        };
        if !file.metadata()?.is_file() {
            return Err(io::Error::other("it is not a regular file"));
        }
        let allocated = rustix::fs::fallocate(
            &file,
            rustix::fs::FallocateFlags::empty(),
            0,
            self.reserve_bytes,
        );
        let result = match allocated {
            Ok(()) => Ok(()),
            // No fallocate here (some network file systems): real zeros.
            Err(rustix::io::Errno::OPNOTSUPP) => {
                use std::io::Write;
                let zeros = vec![0u8; 1 << 16];
                let mut w = &file;
                let mut left = self.reserve_bytes;
                let mut written = Ok(());
                while left > 0 && written.is_ok() {
                    let n = left.min(zeros.len() as u64) as usize;
                    written = w.write_all(&zeros[..n]);
                    left -= n as u64;
                }
                written
            }
            Err(e) => Err(e.into()),
        }
        .and_then(|()| file.sync_all());
        if result.is_err() {
            // Half a reserve would hold space and promise too much.
            let _ = std::fs::remove_file(&self.reserve_path);
        }
        result
    }

    /// Removes the reserve of a store that has nothing left to shut down
    /// (finalize's last step); a later writer makes it again before its
    /// first write.
    pub(crate) fn remove_reserve(&self) -> io::Result<()> {
        match std::fs::remove_file(&self.reserve_path) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }

    /// Switches to read-only (once) and frees the reserve. Returns whether
    /// this call made the switch.
    pub(crate) fn enter_read_only(self: &Arc<SpaceGuard>, detail: String) -> bool {
        let mut state = self.read_only.lock().expect("space guard poisoned");
        if state.is_some() {
            return false;
        }
        *state = Some(ReadOnlyCause { detail });
        drop(state);
        let _ = std::fs::remove_file(&self.reserve_path);
        let weak = Arc::downgrade(self);
        let spawned = std::thread::Builder::new()
            .name("ferry-space-probe".into())
            .spawn(move || probe(weak));
        // Without the thread, `ferry store check` (or a reopen) recovers.
        drop(spawned);
        true
    }

    /// Returns to read-write when there is room again and the reserve is
    /// back. Returns whether the store is read-write now.
    pub(crate) fn try_recover(&self) -> bool {
        if self.cause().is_none() {
            return true;
        }
        let free = self.free_counting_reserve().unwrap_or(0);
        if free < self.recover_bytes() || self.ensure_reserve().is_err() {
            return false;
        }
        *self.recovered.lock().expect("space guard poisoned") = Some(free);
        *self.read_only.lock().expect("space guard poisoned") = None;
        self.changed.notify_all();
        true
    }

    /// The free bytes the probe saw when it returned the store to
    /// read-write, once: the next write records it as an event.
    pub(crate) fn take_recovery(&self) -> Option<u64> {
        self.recovered.lock().expect("space guard poisoned").take()
    }

    /// A write that was to record the recovery failed: the next one will.
    pub(crate) fn put_back_recovery(&self, free: u64) {
        self.recovered
            .lock()
            .expect("space guard poisoned")
            .get_or_insert(free);
    }

    /// Blocks until the store is read-write again or `timeout` passed.
    pub(crate) fn wait_read_write(&self, timeout: Duration) -> bool {
        let state = self.read_only.lock().expect("space guard poisoned");
        let (state, _) = self
            .changed
            .wait_timeout_while(state, timeout, |s| s.is_some())
            .expect("space guard poisoned");
        state.is_none()
    }

    pub(crate) fn free_bytes(&self) -> io::Result<u64> {
        #[cfg(test)]
        if let Some(free) = *self.free_bytes_override.lock().unwrap() {
            return Ok(free);
        }
        let stat = rustix::fs::statvfs(&self.dir)?;
        Ok(stat.f_bavail.saturating_mul(stat.f_frsize))
    }

    #[cfg(test)]
    pub(crate) fn set_free_bytes(&self, free: Option<u64>) {
        *self.free_bytes_override.lock().unwrap() = free;
    }
}

/// The background probe of one read-only store: ends when the store is
/// read-write again or dropped.
fn probe(guard: Weak<SpaceGuard>) {
    let mut interval = PROBE_INTERVAL_MIN;
    loop {
        std::thread::sleep(interval);
        let Some(guard) = guard.upgrade() else { return };
        if guard.try_recover() {
            return;
        }
        interval = (interval * 2).min(PROBE_INTERVAL_MAX);
    }
}

/// Whether an I/O error is ENOSPC or EDQUOT.
pub(crate) fn is_errno_out_of_space(e: &io::Error) -> bool {
    e.raw_os_error().is_some_and(|errno| {
        errno == rustix::io::Errno::NOSPC.raw_os_error()
            || errno == rustix::io::Errno::DQUOT.raw_os_error()
    })
}

/// Whether an SQLite failure means the disk (or quota) is full. `errno` is
/// the system error SQLite saw last, for I/O errors that SQLite does not
/// itself report as SQLITE_FULL (EDQUOT, a failed shared-memory resize).
pub(crate) fn is_out_of_space(e: &rusqlite::Error, errno: i32) -> bool {
    match e.sqlite_error_code() {
        Some(rusqlite::ErrorCode::DiskFull) => true,
        Some(rusqlite::ErrorCode::SystemIoFailure) => {
            errno == rustix::io::Errno::NOSPC.raw_os_error()
                || errno == rustix::io::Errno::DQUOT.raw_os_error()
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_reserve_and_its_threshold_fit_the_disk() {
        assert_eq!(reserve_bytes_for(8 << 20), 128 << 10);
        assert_eq!(reserve_bytes_for(1 << 30), RESERVE_BYTES_DEFAULT);
        assert_eq!(reserve_bytes_for(u64::MAX), RESERVE_BYTES_DEFAULT);
        assert_eq!(reserve_bytes_for(0), RESERVE_BYTES_MIN);
        // Reachable: under a quarter of any disk of 1 MiB or more.
        for total in [1u64 << 20, 8 << 20, 64 << 20, 256 << 20, 1 << 40] {
            let recover = reserve_bytes_for(total) + headroom_bytes_for(total);
            assert!(recover <= total / 4, "{total}: {recover}");
        }
    }
}
