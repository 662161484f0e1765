//! Archive back ends: where archived copies live. [`Archive`] is the trait
//! (object storage plugs in behind it later); [`PosixArchive`] keeps objects
//! in a directory tree.
//!
//! **Fencing:** an object's id names the request *and the attempt* that
//! wrote it ([`object_id`]), and [`Archive::put`] checks its [`Fence`] (a
//! heartbeat on the lease) right before the rename. A worker whose lease
//! was re-granted elsewhere is stopped by that check, and even if it raced
//! past it, it renames to its own attempt's name: never over the newer
//! attempt's object. The catalog only ever points at the object of the
//! attempt whose ack the store accepted.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::RequestId;
use ferry::failpoint::{self, CommitStep};

/// Bytes moved per read/write (and per fence check).
pub const CHUNK: usize = 1 << 20;

/// The checksum of a stream: XXH3-128, written `xxh3-128:<32 hex digits>`.
/// Fast (memory speed) and well kept; detects corruption, not tampering.
pub struct Checksum(xxhash_rust::xxh3::Xxh3);

impl Checksum {
    pub fn new() -> Checksum {
        Checksum(xxhash_rust::xxh3::Xxh3::new())
    }

    pub fn update(&mut self, bytes: &[u8]) {
        self.0.update(bytes);
    }

    pub fn finish(&self) -> String {
        format!("xxh3-128:{:032x}", self.0.digest128())
    }

    /// The checksum of a whole file.
    pub fn of_file(path: &Path) -> io::Result<String> {
        let mut file = File::open(path)?;
        let mut sum = Checksum::new();
        let mut buf = vec![0; CHUNK];
        loop {
            let n = file.read(&mut buf)?;
            if n == 0 {
                return Ok(sum.finish());
            }
            sum.update(&buf[..n]);
        }
    }
}

impl Default for Checksum {
    fn default() -> Checksum {
        Checksum::new()
    }
}

/// Checked while data moves: an error stops the copy. The worker's fence
/// heartbeats its lease; `before_commit` forces a check (not rate-limited)
/// right before anything becomes visible under its final name.
pub trait Fence {
    fn check(&mut self, before_commit: bool) -> io::Result<()>;
}

/// A fence that never stops anything (tests, tools).
pub struct NoFence;

impl Fence for NoFence {
    fn check(&mut self, _before_commit: bool) -> io::Result<()> {
        Ok(())
    }
}

/// The small record kept beside each object.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ObjectMeta {
    pub fid: String,
    pub path: Option<PathBuf>,
    pub size: u64,
    pub mtime_ns: i64,
    pub mode: u32,
    /// Filled in by [`Archive::put`].
    pub checksum: String,
    pub request: i64,
    pub attempt: u32,
}

/// The id of the object that attempt `attempt` of request `request` writes
/// for file `fid`: unique per attempt (see the module's fencing note).
pub fn object_id(fid: &str, request: RequestId, attempt: u32) -> String {
    format!(
        "{:016x}-{}-{}",
        xxhash_rust::xxh3::xxh3_64(fid.as_bytes()),
        request.0,
        attempt
    )
}

pub trait Archive: Send + Sync {
    /// For messages: `posix:/archive`.
    fn describe(&self) -> String;

    /// Copies `src` into object `object`, durably, and returns its
    /// checksum. Nothing is visible under the object's name unless the
    /// whole copy is durable and `fence.check(true)` passed just before.
    fn put(
        &self,
        object: &str,
        src: &mut dyn Read,
        meta: &ObjectMeta,
        fence: &mut dyn Fence,
    ) -> io::Result<String>;

    /// Copies object `object` into `dst` and returns the checksum of what
    /// was read; the caller compares it with the catalog's.
    fn get(&self, object: &str, dst: &mut dyn Write, fence: &mut dyn Fence) -> io::Result<String>;

    /// Removes an object and its record, and what an attempt that died
    /// writing them left (temporaries); a missing one is not an error.
    fn remove(&self, object: &str) -> io::Result<()>;

    /// The record written with the object.
    fn meta(&self, object: &str) -> io::Result<ObjectMeta>;
}

/// Opens the back end an `--archive` spec names: `posix:DIR`.
pub fn open(spec: &str) -> Result<Box<dyn Archive>, String> {
    match spec.split_once(':') {
        Some(("posix", dir)) if !dir.is_empty() => {
            PosixArchive::open(Path::new(dir)).map(|a| Box::new(a) as Box<dyn Archive>)
        }
        _ => Err(format!(
            "unknown archive {spec:?}: the back ends are posix:DIR"
        )),
    }
}

/// Objects at `DIR/ab/cd/<object id>` (`ab`, `cd`: the id's first hex
/// digits, so no directory grows past 65,536 entries per level), each with
/// `<object id>.meta`. Written as the commit protocol writes files:
/// temporary, fsync, rename, fsync of the directory.
pub struct PosixArchive {
    root: PathBuf,
}

impl PosixArchive {
    /// The archive at `root`, which must be an existing directory.
    pub fn open(root: &Path) -> Result<PosixArchive, String> {
        match fs::metadata(root) {
            Ok(m) if m.is_dir() => Ok(PosixArchive {
                root: root.to_path_buf(),
            }),
            Ok(_) => Err(format!("{} is not a directory", root.display())),
            Err(e) => Err(format!(
                "{}: {e}: create the archive directory first",
                root.display()
            )),
        }
    }

    /// Where object `object` lives.
    pub fn object_path(&self, object: &str) -> PathBuf {
        assert!(
            object.len() > 4
                && object
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-'),
            "object ids are [0-9a-z-]: {object:?}"
        );
        self.root
            .join(&object[0..2])
            .join(&object[2..4])
            .join(object)
    }

    fn with_suffix(path: &Path, suffix: &str) -> PathBuf {
        let mut p = path.as_os_str().to_owned();
        p.push(suffix);
        PathBuf::from(p)
    }

    /// Writes `data` to a fresh temporary next to `final_path` and syncs it.
    fn write_temp(
        final_path: &Path,
        mut fill: impl FnMut(&mut File) -> io::Result<()>,
    ) -> io::Result<PathBuf> {
        let temp = Self::with_suffix(final_path, ".tmp");
        // A temporary left by a crashed attempt of the same id is ours to reuse.
        let mut file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .custom_flags(rustix::fs::OFlags::NOFOLLOW.bits() as i32)
            .open(&temp)?;
        fill(&mut file)?;
        file.sync_all()?;
        Ok(temp)
    }
}

fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

impl Archive for PosixArchive {
    fn describe(&self) -> String {
        format!("posix:{}", self.root.display())
    }

    fn put(
        &self,
        object: &str,
        src: &mut dyn Read,
        meta: &ObjectMeta,
        fence: &mut dyn Fence,
    ) -> io::Result<String> {
        let path = self.object_path(object);
        let dir = path.parent().expect("objects live in a directory");
        fs::create_dir_all(dir)?;
        let mut sum = Checksum::new();
        let mut size = 0u64;
        let data_temp = Self::write_temp(&path, |file| {
            let mut buf = vec![0; CHUNK];
            loop {
                let n = src.read(&mut buf)?;
                if n == 0 {
                    return Ok(());
                }
                failpoint::hit(CommitStep::ArchiveData)?;
                fence.check(false)?;
                sum.update(&buf[..n]);
                file.write_all(&buf[..n])?;
                size += n as u64;
            }
        })?;
        if size != meta.size {
            let _ = fs::remove_file(&data_temp);
            return Err(io::Error::other(format!(
                "read {size} bytes, expected {}: the file changed while it was archived",
                meta.size
            )));
        }
        let checksum = sum.finish();
        let record = ObjectMeta {
            checksum: checksum.clone(),
            ..meta.clone()
        };
        let meta_path = Self::with_suffix(&path, ".meta");
        let meta_temp = Self::write_temp(&meta_path, |file| {
            serde_json::to_writer(&mut *file, &record).map_err(io::Error::other)
        })?;
        // Fencing: only the current attempt makes its object visible.
        if let Err(e) = fence.check(true) {
            let _ = fs::remove_file(&data_temp);
            let _ = fs::remove_file(&meta_temp);
            return Err(e);
        }
        failpoint::hit(CommitStep::ArchiveRename)?;
        // The record first: an object under its name always has one.
        fs::rename(&meta_temp, &meta_path)?;
        fs::rename(&data_temp, &path)?;
        sync_dir(dir)?;
        Ok(checksum)
    }

    fn get(&self, object: &str, dst: &mut dyn Write, fence: &mut dyn Fence) -> io::Result<String> {
        let mut file = File::open(self.object_path(object))?;
        let mut sum = Checksum::new();
        let mut buf = vec![0; CHUNK];
        loop {
            let n = file.read(&mut buf)?;
            if n == 0 {
                return Ok(sum.finish());
            }
            failpoint::hit(CommitStep::RestoreData)?;
            fence.check(false)?;
            sum.update(&buf[..n]);
            dst.write_all(&buf[..n])?;
        }
    }

    fn remove(&self, object: &str) -> io::Result<()> {
        let path = self.object_path(object);
        let meta = Self::with_suffix(&path, ".meta");
        let temps = [
            Self::with_suffix(&path, ".tmp"),
            Self::with_suffix(&meta, ".tmp"),
        ];
        for p in [path.clone(), meta].into_iter().chain(temps) {
            match fs::remove_file(&p) {
                Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
                _ => {}
            }
        }
        sync_dir(path.parent().expect("objects live in a directory"))
    }

    fn meta(&self, object: &str) -> io::Result<ObjectMeta> {
        let path = Self::with_suffix(&self.object_path(object), ".meta");
        let bytes = fs::read(&path)?;
        serde_json::from_slice(&bytes).map_err(|e| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("{}: {e}", path.display()),
            )
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Refuse;
    impl Fence for Refuse {
        fn check(&mut self, before_commit: bool) -> io::Result<()> {
            if before_commit {
                return Err(io::Error::other("lease lost"));
            }
            Ok(())
        }
    }

    fn meta(size: u64) -> ObjectMeta {
        ObjectMeta {
            fid: "/fs/f".into(),
            path: Some("/fs/f".into()),
            size,
            mtime_ns: 1,
            mode: 0o644,
            checksum: String::new(),
            request: 1,
            attempt: 1,
        }
    }

    #[test]
    fn put_get_remove_round_trip_with_hashed_layout() {
        let dir = tempfile::tempdir().unwrap();
        let archive = PosixArchive::open(dir.path()).unwrap();
        let data: Vec<u8> = (0..3 * CHUNK + 17).map(|i| (i * 7) as u8).collect();
        let object = object_id("/fs/f", RequestId(1), 1);
        let sum = archive
            .put(
                &object,
                &mut &data[..],
                &meta(data.len() as u64),
                &mut NoFence,
            )
            .unwrap();
        let path = archive.object_path(&object);
        assert_eq!(
            path,
            dir.path()
                .join(&object[..2])
                .join(&object[2..4])
                .join(&object)
        );
        assert_eq!(fs::read(&path).unwrap(), data);
        let record = archive.meta(&object).unwrap();
        assert_eq!(
            (record.size, record.checksum.as_str()),
            (data.len() as u64, sum.as_str())
        );
        let mut back = Vec::new();
        assert_eq!(archive.get(&object, &mut back, &mut NoFence).unwrap(), sum);
        assert_eq!(back, data);
        assert_eq!(sum, {
            let mut c = Checksum::new();
            c.update(&data);
            c.finish()
        });
        archive.remove(&object).unwrap();
        archive.remove(&object).unwrap();
        assert!(!path.exists());
    }

    #[test]
    fn a_fenced_off_attempt_never_renames_and_attempts_never_share_a_name() {
        let dir = tempfile::tempdir().unwrap();
        let archive = PosixArchive::open(dir.path()).unwrap();
        let newer = object_id("/fs/f", RequestId(1), 2);
        archive
            .put(&newer, &mut &b"new"[..], &meta(3), &mut NoFence)
            .unwrap();
        let stale = object_id("/fs/f", RequestId(1), 1);
        assert_ne!(stale, newer);
        let err = archive
            .put(&stale, &mut &b"old"[..], &meta(3), &mut Refuse)
            .unwrap_err();
        assert!(err.to_string().contains("lease lost"));
        assert!(!archive.object_path(&stale).exists());
        assert_eq!(fs::read(archive.object_path(&newer)).unwrap(), b"new");
        // Nothing but the newer object and its record is left.
        let names: Vec<_> = fs::read_dir(archive.object_path(&newer).parent().unwrap())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names.len(), 2, "{names:?}");
    }

    #[test]
    fn bad_specs_are_refused() {
        assert!(open("s3:bucket").is_err());
        assert!(open("posix:/no/such/dir").err().unwrap().contains("create"));
    }
}
