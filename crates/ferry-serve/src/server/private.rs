//! The daemon's store is private: it holds every user's paths, names, uids
//! and the checksums of files they may not read, and a lock any user could
//! take on its `-shm` file would stop every write. So its directory is the
//! daemon's (created 0700), no other user may write there (a sticky
//! directory such as /tmp keeps them from replacing our files, not from
//! planting theirs first, so every file we use beside the store must be
//! ours), and its files are 0600 whatever the umask.

use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use ferry::store::SqliteStore;

use crate::error::ServeError;

/// The files SQLite and the store keep beside `STORE`.
const SUFFIXES: [&str; 4] = ["-wal", "-shm", "-journal", ".reserve"];

fn beside(store: &Path, suffix: &str) -> PathBuf {
    let mut name = store.as_os_str().to_owned();
    name.push(suffix);
    PathBuf::from(name)
}

/// Opens the daemon's store privately: refuses a directory other users
/// can write and files beside the store that are not the daemon's, creates
/// what is missing owner-only, and makes the files 0600 (stores made by an
/// older ferry were 0644).
pub(super) fn open_store(store: &Path, uid: u32) -> Result<SqliteStore, ServeError> {
    let unsafe_store = |detail: String| ServeError::UnsafeStore {
        path: store.to_path_buf(),
        detail,
    };
    let dir = store
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    if !dir.exists() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(|e| unsafe_store(format!("cannot create {}: {e}", dir.display())))?;
    }
    let meta = std::fs::metadata(dir)
        .map_err(|e| unsafe_store(format!("cannot stat {}: {e}", dir.display())))?;
    let sticky = meta.mode() & 0o1000 != 0;
    if meta.uid() != uid && meta.uid() != 0 {
        return Err(unsafe_store(format!(
            "its directory {} belongs to uid {}, who could replace the store: give the daemon a \
             directory of its own (mkdir -m 0700)",
            dir.display(),
            meta.uid()
        )));
    }
    if meta.mode() & 0o022 != 0 && !sticky {
        return Err(unsafe_store(format!(
            "its directory {} is writable by other users (mode {:o}), who could replace the \
             store or its -shm file: chmod go-w it, or give the daemon a directory of its own",
            dir.display(),
            meta.mode() & 0o7777
        )));
    }
    let mut files = vec![store.to_path_buf()];
    files.extend(SUFFIXES.iter().map(|s| beside(store, s)));
    for file in &files {
        match std::fs::symlink_metadata(file) {
            Ok(m) if !m.is_file() || m.uid() != uid => {
                return Err(unsafe_store(format!(
                    "{} is {} of uid {}, not the daemon's file: remove it (someone may have \
                     planted it) and start again",
                    file.display(),
                    if m.file_type().is_symlink() {
                        "a symbolic link"
                    } else if m.is_file() {
                        "a file"
                    } else {
                        "not a regular file"
                    },
                    m.uid()
                )));
            }
            _ => {}
        }
    }
    // New files owner-only; SQLite gives its -wal and -shm the store's
    // mode. Set back at once: the movers' files get their caller's umask
    // explicitly, but nothing else should depend on this one.
    let old = rustix::process::umask(rustix::fs::Mode::from_raw_mode(0o077));
    let opened = SqliteStore::open(store);
    rustix::process::umask(old);
    let sqlite = opened.map_err(ferry::Error::from)?;
    for file in &files {
        if let Ok(m) = std::fs::symlink_metadata(file)
            && m.is_file()
            && m.mode() & 0o077 != 0
        {
            std::fs::set_permissions(file, std::fs::Permissions::from_mode(0o600))
                .map_err(|e| unsafe_store(format!("cannot chmod {}: {e}", file.display())))?;
        }
    }
    Ok(sqlite)
}
