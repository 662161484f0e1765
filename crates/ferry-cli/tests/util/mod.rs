//! Shared by the integration tests: a scratch directory, the `ferry` binary,
//! tree generators and tree comparisons.
#![allow(dead_code)]

pub mod daemon;
pub mod pty;

use std::ffi::OsStr;
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

pub const FERRY: &str = env!("CARGO_BIN_EXE_ferry");

pub struct Scratch {
    pub dir: tempfile::TempDir,
}

impl Scratch {
    pub fn new() -> Scratch {
        Scratch::new_in(&std::env::temp_dir())
    }

    /// A scratch directory below `parent` (a tmpfs, for a test whose files
    /// are many and whose point is not the disk).
    pub fn new_in(parent: &Path) -> Scratch {
        let dir = tempfile::Builder::new()
            .prefix("ferry-test-")
            .tempdir_in(parent)
            .expect("a scratch directory");
        // ferry never makes the directory of a store given with --store.
        fs::create_dir(dir.path().join("state")).expect("the store's directory");
        Scratch { dir }
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    pub fn store(&self) -> PathBuf {
        self.path("state/ferry.db")
    }

    /// `ferry --store <scratch store> ARGS…`
    pub fn ferry(&self) -> Command {
        ferry_at(&self.store())
    }
}

/// `ferry --store STORE`, with no fail point armed.
pub fn ferry_at(store: &Path) -> Command {
    let mut cmd = Command::new(FERRY);
    cmd.arg("--store").arg(store);
    cmd.env_remove("FERRY_FAILPOINT");
    cmd
}

pub fn run(cmd: &mut Command) -> Output {
    let out = cmd.output().expect("ferry runs");
    eprintln!(
        "$ {:?}\n  status: {}\n  stdout: {}\n  stderr: {}",
        cmd,
        out.status,
        String::from_utf8_lossy(&out.stdout).trim(),
        String::from_utf8_lossy(&out.stderr).trim()
    );
    out
}

/// [`run`], which must end by SIGKILL (a `crash` fail point).
pub fn run_killed(cmd: &mut Command) -> Output {
    let out = run(cmd);
    assert_eq!(
        std::os::unix::process::ExitStatusExt::signal(&out.status),
        Some(9),
        "{out:?}"
    );
    out
}

pub fn run_ok(cmd: &mut Command) -> Output {
    let out = run(cmd);
    assert!(out.status.success(), "ferry failed: {out:?}");
    out
}

pub fn json(out: &Output) -> serde_json::Value {
    serde_json::from_slice(&out.stdout).expect("JSON on stdout")
}

/// Deterministic pseudo-random bytes.
pub fn random_bytes(rng: &mut fastrand::Rng, len: usize) -> Vec<u8> {
    let mut buf = vec![0u8; len];
    rng.fill(&mut buf);
    buf
}

/// `count` files of random bytes, `DIR/d<i % dirs>/f<i>`, the i-th `len(i)`
/// bytes long, the same for the same `seed`.
pub fn random_files(
    root: &Path,
    count: usize,
    dirs: usize,
    seed: u64,
    len: impl Fn(usize) -> usize,
) {
    let mut rng = fastrand::Rng::with_seed(seed);
    for i in 0..count {
        write_file(
            &root.join(format!("d{}/f{i}", i % dirs)),
            &random_bytes(&mut rng, len(i)),
        );
    }
}

pub fn write_file(path: &Path, data: &[u8]) {
    if let Some(parent) = path.parent() {
        fs::create_dir_all(parent).unwrap();
    }
    fs::write(path, data).unwrap();
}

/// Every path below `root` (relative), sorted, not following symlinks.
pub fn walk(root: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![PathBuf::new()];
    while let Some(rel) = stack.pop() {
        let dir = root.join(&rel);
        for child in fs::read_dir(&dir).unwrap() {
            let child = child.unwrap();
            let rel_child = rel.join(child.file_name());
            if child.file_type().unwrap().is_dir() {
                stack.push(rel_child.clone());
            }
            out.push(rel_child);
        }
    }
    out.sort();
    out
}

pub fn is_temp(path: &Path) -> bool {
    path.file_name()
        .is_some_and(|n| n.as_bytes().windows(8).any(|w| w == b"._ferry-"))
}

/// Temporaries left anywhere below `root`.
pub fn temps(root: &Path) -> Vec<PathBuf> {
    if !root.exists() {
        return Vec::new();
    }
    walk(root).into_iter().filter(|p| is_temp(p)).collect()
}

/// `rel` with every `._ferry-ID` suffix of its components taken off, and
/// whether there was one.
pub fn final_path_of(rel: &Path) -> (PathBuf, bool) {
    let mut temporary = false;
    let path = rel
        .components()
        .map(|c| {
            let name = c.as_os_str().as_bytes();
            match name.windows(8).rposition(|w| w == b"._ferry-") {
                Some(at) => {
                    temporary = true;
                    OsStr::from_bytes(&name[..at]).to_owned()
                }
                None => c.as_os_str().to_owned(),
            }
        })
        .collect();
    (path, temporary)
}

/// Every file visible under its final name below `dst` has exactly the
/// content of its source: nothing partial is ever visible.
pub fn assert_no_partial_files(src: &Path, dst: &Path) {
    if !dst.exists() {
        return;
    }
    for rel in walk(dst) {
        // A temporary, or a file in a directory written under a temporary
        // name (a staged directory): not under its final path.
        let (final_rel, temporary) = final_path_of(&rel);
        if temporary {
            let meta = fs::symlink_metadata(dst.join(&rel)).unwrap();
            let mode = meta.permissions().mode() & 0o7777;
            if meta.is_file() && !is_temp(&rel) {
                // Inside a staged directory, written with its own mode from
                // the start: the directory keeps others out until it is
                // complete and put in place.
                let dir = rel.ancestors().find(|a| is_temp(a)).unwrap();
                let dir_mode = fs::symlink_metadata(dst.join(dir))
                    .unwrap()
                    .permissions()
                    .mode();
                assert_eq!(
                    dir_mode & 0o077,
                    0,
                    "staged directory {dir:?} must be owner-only while its files are written"
                );
            } else if meta.is_file() && mode != 0o600 {
                // Given its final metadata through its descriptor once its
                // data was complete: then it must be complete, with its
                // source's mode. Partial data is never readable by others.
                let source = src.join(&final_rel);
                let source_mode = fs::symlink_metadata(&source).unwrap().permissions().mode();
                assert_eq!(
                    mode,
                    source_mode & 0o7777,
                    "temporary {rel:?} must be owner-only, or complete with its source's mode"
                );
                assert!(
                    fs::read(&source).unwrap() == fs::read(dst.join(&rel)).unwrap(),
                    "temporary {rel:?} has its final mode but not its final content"
                );
            }
            continue;
        }
        let (s, d) = (src.join(&rel), dst.join(&rel));
        let dm = fs::symlink_metadata(&d).unwrap();
        if dm.is_file() {
            let expected = fs::read(&s)
                .unwrap_or_else(|e| panic!("{rel:?} exists at the destination only: {e}"));
            let actual = fs::read(&d).unwrap();
            assert!(
                expected == actual,
                "{rel:?} is visible under its final name with wrong or partial content"
            );
        }
    }
}

/// `diff -r` agrees, and mode and mtime (to the ns) match for every entry,
/// symlinks included; `dst` holds no temporary.
pub fn assert_same_tree(src: &Path, dst: &Path) {
    let diff = Command::new("diff")
        .arg("-r")
        .arg("--no-dereference")
        .arg(src)
        .arg(dst)
        .output()
        .unwrap();
    assert!(
        diff.status.success(),
        "diff -r differs:\n{}{}",
        String::from_utf8_lossy(&diff.stdout),
        String::from_utf8_lossy(&diff.stderr)
    );
    assert_eq!(walk(src), walk(dst), "the same names on both sides");
    for rel in walk(src) {
        let s = fs::symlink_metadata(src.join(&rel)).unwrap();
        let d = fs::symlink_metadata(dst.join(&rel)).unwrap();
        assert_eq!(s.file_type(), d.file_type(), "{rel:?}: type");
        if !s.file_type().is_symlink() {
            assert_eq!(s.mode() & 0o7777, d.mode() & 0o7777, "{rel:?}: mode");
        }
        assert_eq!(
            (s.mtime(), s.mtime_nsec()),
            (d.mtime(), d.mtime_nsec()),
            "{rel:?}: mtime"
        );
        if s.is_file() {
            assert_eq!(s.size(), d.size(), "{rel:?}: size");
        }
    }
    assert!(temps(dst).is_empty(), "temporaries left: {:?}", temps(dst));
}

pub fn os(s: &[u8]) -> &OsStr {
    OsStr::from_bytes(s)
}

/// Tests that need root say so and skip outside CI; under CI (which runs
/// as root) they must not skip.
pub fn root_or_skip(what: &str) -> bool {
    if rustix::process::geteuid().is_root() {
        return true;
    }
    assert!(
        std::env::var_os("CI").is_none_or(|v| v != "true"),
        "{what} needs root, and CI=true: run CI as root"
    );
    eprintln!("skipped: {what} needs root (to act as other users)");
    false
}
