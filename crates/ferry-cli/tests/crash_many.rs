//! SIGKILL during a 100,000-file copy, through the batched paths: the store
//! commits per batch, the destination is synced per batch, each file is
//! committed through its open temporary, and a re-run over a finished copy
//! records its skips in bulk.
//!
//! The same `ferry cp -a --name` command line is killed once the store holds
//! a seeded-random number of finished entries (waited on as a change of the
//! store, never a sleep), then run again until it completes: first the copy
//! (killed several times), then a re-run over the finished copy after some
//! sources were touched, then a `--skip checksum` re-run (each killed once).
//! A watcher thread reads the destination all along: every file under its
//! final name is whole, with its source's content. After each completed run
//! the trees are identical (content, mode, mtime to the ns, xattrs, hard
//! links, symlinks), the store holds every entry committed or skipped, and
//! no temporary is left anywhere.
//!
//! The seed is printed; `FERRY_CRASH_SEED=N` replays a run.

mod util;

use std::collections::{HashMap, HashSet};
use std::ffi::OsStr;
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime};

use ferry::model::FileState;
use ferry::store::{SqliteStore, Store};
use util::*;

/// The number: regular files, hard links among them.
const FILES: usize = 100_000;
const TOP_DIRS: usize = 20;
/// Directories holding the files, spread below the top ones.
const DIRS: usize = 400;
const FILE_BYTES_MAX: usize = 8 << 10;
/// Every this-many-th file is a hard link to an earlier one.
const HARD_LINK_EVERY: usize = 200;
const SYMLINKS: usize = 300;
const XATTR_FILES: usize = 64;
/// Sources touched before the re-run; every third one rewritten.
const TOUCHED: usize = 2_000;
/// New files added before the re-run.
const ADDED: usize = 20;
/// Kills of the first copy, each at a later moment than the one before.
const FIRST_COPY_KILLS: usize = 3;
/// No run here takes this long, however busy the machine.
const RUN_DEADLINE: Duration = Duration::from_secs(900);
/// How long one wait for a change of the store blocks before the child is
/// looked at again (it may have exited without writing).
const STORE_WAIT: Duration = Duration::from_millis(200);
const NAME: &str = "many";

/// A file's content, as far as the test tells contents apart: XXH3-128
/// (ferry's, built optimized; std's SipHash in a debug build took seconds).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Content {
    len: u64,
    hash: u128,
}

fn content_of(bytes: &[u8]) -> Content {
    let mut h = ferry::checksum::Hasher::new(ferry::model::ChecksumAlgo::Xxh3);
    h.update(bytes);
    Content {
        len: bytes.len() as u64,
        hash: u128::from_be_bytes(h.finish().digest().try_into().unwrap()),
    }
}

/// What the destination may show under each final name.
#[derive(Default)]
struct Expected {
    /// Regular files: every content acceptable under this name while a run
    /// is under way (the old and the new one of a rewritten source).
    files: HashMap<PathBuf, Vec<Content>>,
    symlinks: HashMap<PathBuf, PathBuf>,
    /// Names that share their inode with another: not rewritten.
    linked: HashSet<PathBuf>,
}

/// File `i`'s bytes: its number, then a slice of a random pool, so that the
/// tree is made without generating 400 MB of random bytes.
fn file_bytes(pool: &[u8], rng: &mut fastrand::Rng, i: usize) -> Vec<u8> {
    let len = rng.usize(0..=FILE_BYTES_MAX);
    let mut bytes = (i as u64).to_le_bytes().to_vec();
    let at = rng.usize(0..pool.len() - FILE_BYTES_MAX);
    bytes.extend_from_slice(&pool[at..at + len]);
    bytes.truncate(len);
    bytes
}

fn set_xattr(path: &Path, name: &str, value: &[u8]) {
    rustix::fs::lsetxattr(path, name, value, rustix::fs::XattrFlags::empty()).unwrap_or_else(|e| {
        panic!("setxattr {name} on {path:?}: {e} (a file system with user xattrs is needed)")
    });
}

fn make_tree(root: &Path, rng: &mut fastrand::Rng) -> Expected {
    let pool = random_bytes(rng, 1 << 20);
    let dirs: Vec<PathBuf> = (0..DIRS)
        .map(|d| PathBuf::from(format!("t{}/d{d}", d % TOP_DIRS)))
        .collect();
    for dir in &dirs {
        fs::create_dir_all(root.join(dir)).unwrap();
    }
    let mut expected = Expected::default();
    let mut names = Vec::with_capacity(FILES);
    for i in 0..FILES {
        let rel = dirs[i % DIRS].join(format!("f{i}"));
        if i % HARD_LINK_EVERY == HARD_LINK_EVERY - 1 {
            let leader: &PathBuf = &names[rng.usize(0..i)];
            fs::hard_link(root.join(leader), root.join(&rel)).unwrap();
            let content = expected.files[leader].clone();
            expected.linked.insert(leader.clone());
            expected.linked.insert(rel.clone());
            expected.files.insert(rel.clone(), content);
        } else {
            let bytes = file_bytes(&pool, rng, i);
            fs::write(root.join(&rel), &bytes).unwrap();
            let mode = match i % 23 {
                0 => Some(0o640),
                1 => Some(0o755),
                2 => Some(0o600),
                3 => Some(0o444),
                _ => None,
            };
            if let Some(mode) = mode {
                fs::set_permissions(root.join(&rel), fs::Permissions::from_mode(mode)).unwrap();
            }
            expected.files.insert(rel.clone(), vec![content_of(&bytes)]);
        }
        names.push(rel);
    }
    for k in 0..XATTR_FILES {
        let rel = &names[rng.usize(0..FILES)];
        set_xattr(&root.join(rel), "user.project", format!("p{k}").as_bytes());
        if k % 4 == 0 {
            set_xattr(&root.join(rel), "user.empty", b"");
        }
    }
    set_xattr(&root.join(&dirs[1]), "user.dir", b"tagged directory");
    for k in 0..SYMLINKS {
        let dir = &dirs[rng.usize(0..DIRS)];
        let target = match k % 3 {
            // A sibling, a file elsewhere, and one that points nowhere.
            0 => PathBuf::from(format!("f{}", rng.usize(0..FILES))),
            1 => Path::new("../..").join(&names[rng.usize(0..FILES)]),
            _ => PathBuf::from(format!("missing-{k}")),
        };
        let rel = dir.join(format!("l{k}"));
        std::os::unix::fs::symlink(&target, root.join(&rel)).unwrap();
        expected.symlinks.insert(rel, target);
    }
    fs::set_permissions(root.join(&dirs[2]), fs::Permissions::from_mode(0o750)).unwrap();
    expected
}

/// Some sources touched (a new mtime), every third one rewritten, and new
/// files added: what the re-run over the finished copy must bring over.
fn touch_sources(root: &Path, rng: &mut fastrand::Rng, expected: &mut Expected) {
    let mut names: Vec<PathBuf> = expected
        .files
        .keys()
        .filter(|rel| !expected.linked.contains(*rel))
        .cloned()
        .collect();
    names.sort();
    rng.shuffle(&mut names);
    for (k, rel) in names.iter().take(TOUCHED).enumerate() {
        let path = root.join(rel);
        if k % 3 == 0 {
            let len = rng.usize(0..=FILE_BYTES_MAX);
            let bytes = random_bytes(rng, len);
            // Owner-writable for the rewrite; the mode is put back.
            let mode = fs::metadata(&path).unwrap().permissions();
            fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).unwrap();
            fs::write(&path, &bytes).unwrap();
            fs::set_permissions(&path, mode).unwrap();
            expected
                .files
                .get_mut(rel)
                .unwrap()
                .push(content_of(&bytes));
        } else {
            let when = SystemTime::now() - Duration::from_nanos(rng.u64(1..1 << 40));
            fs::File::open(&path).unwrap().set_modified(when).unwrap();
        }
    }
    for k in 0..ADDED {
        let rel = PathBuf::from(format!("t{}/d{k}/added{k}", k % TOP_DIRS));
        let len = rng.usize(0..=FILE_BYTES_MAX);
        let bytes = random_bytes(rng, len);
        fs::write(root.join(&rel), &bytes).unwrap();
        expected.files.insert(rel, vec![content_of(&bytes)]);
    }
}

fn name_is_temp(name: &[u8]) -> Option<usize> {
    name.windows(8).rposition(|w| w == b"._ferry-")
}

/// What one look at the destination found.
#[derive(Default)]
struct Seen {
    /// Files read under their final names, each whole.
    files: usize,
}

/// Every file under its final name below `dst` is whole: one of the
/// contents its source had, symlinks pointing where theirs do; and a
/// temporary with a mode other than owner-only has its source's mode. With
/// `racing`, ferry runs meanwhile: a temporary may vanish (renamed) between
/// the listing and the read.
fn check_visible(src: &Path, dst: &Path, expected: &Expected, racing: bool) -> Seen {
    let mut seen = Seen::default();
    let mut stack = vec![PathBuf::new()];
    while let Some(dir) = stack.pop() {
        let listing = match fs::read_dir(dst.join(&dir)) {
            Ok(listing) => listing,
            Err(e) if racing && e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => panic!("{:?}: {e}", dst.join(&dir)),
        };
        for child in listing {
            let child = child.unwrap();
            let name = child.file_name();
            let rel = dir.join(&name);
            let path = dst.join(&rel);
            let temp_at = name_is_temp(name.as_bytes());
            let meta = match fs::symlink_metadata(&path) {
                Ok(meta) => meta,
                Err(e)
                    if racing && temp_at.is_some() && e.kind() == std::io::ErrorKind::NotFound =>
                {
                    continue;
                }
                Err(e) => panic!("{rel:?} was listed, then: {e}"),
            };
            if meta.is_dir() {
                if temp_at.is_none() {
                    stack.push(rel);
                }
                continue;
            }
            let final_rel = match temp_at {
                None => rel.clone(),
                Some(at) => rel.with_file_name(OsStr::from_bytes(&name.as_bytes()[..at])),
            };
            if meta.file_type().is_symlink() {
                if temp_at.is_none() {
                    let target = fs::read_link(&path).unwrap();
                    assert_eq!(
                        Some(&target),
                        expected.symlinks.get(&rel),
                        "symlink {rel:?} under its final name points elsewhere"
                    );
                }
                continue;
            }
            if temp_at.is_some() {
                // Owner-only while its data is written; a temporary with
                // another mode was given its final metadata, so it is whole.
                let source_mode = fs::symlink_metadata(src.join(&final_rel))
                    .map(|m| m.mode() & 0o7777)
                    .ok();
                if meta.mode() & 0o7777 == 0o600 || source_mode == Some(0o600) {
                    continue;
                }
                assert_eq!(
                    Some(meta.mode() & 0o7777),
                    source_mode,
                    "temporary {rel:?} must be owner-only, or complete with its source's mode"
                );
                // Mode and bytes of one inode: a resume may put a new,
                // owner-only temporary at this name in between.
                let Ok(mut file) = fs::File::open(&path) else {
                    assert!(racing, "{rel:?} was listed, then could not be opened");
                    continue;
                };
                let open_mode = file.metadata().unwrap().mode() & 0o7777;
                if open_mode == 0o600 && source_mode != Some(0o600) {
                    continue;
                }
                let mut bytes = Vec::new();
                std::io::Read::read_to_end(&mut file, &mut bytes).unwrap();
                let found = content_of(&bytes);
                let acceptable = expected
                    .files
                    .get(&final_rel)
                    .unwrap_or_else(|| panic!("{rel:?} exists at the destination only"));
                assert!(
                    acceptable.contains(&found),
                    "temporary {rel:?} has its final mode {open_mode:o} but partial or wrong \
                     content {found:?} (a resume rewrote it in place?): {acceptable:?}"
                );
                continue;
            }
            let bytes = match fs::read(&path) {
                Ok(bytes) => bytes,
                Err(e)
                    if racing && temp_at.is_some() && e.kind() == std::io::ErrorKind::NotFound =>
                {
                    continue;
                }
                Err(e) => panic!("{rel:?}: {e}"),
            };
            let found = content_of(&bytes);
            let acceptable = expected
                .files
                .get(&final_rel)
                .unwrap_or_else(|| panic!("{rel:?} exists at the destination only"));
            assert!(
                acceptable.contains(&found),
                "{rel:?} is visible under its final name with wrong or partial content: \
                 {found:?}, its source's: {acceptable:?}"
            );
            seen.files += 1;
        }
    }
    seen
}

/// Reads the destination over and over while ferry runs.
struct Watcher {
    stop: Arc<AtomicBool>,
    thread: std::thread::JoinHandle<Watched>,
}

impl Watcher {
    fn start(src: &Path, dst: &Path, expected: &Arc<Expected>) -> Watcher {
        let stop = Arc::new(AtomicBool::new(false));
        let (src, dst, expected) = (src.to_owned(), dst.to_owned(), Arc::clone(expected));
        let flag = Arc::clone(&stop);
        let thread = std::thread::spawn(move || {
            let mut all = Watched::default();
            while !flag.load(Ordering::Relaxed) {
                if dst.exists() {
                    let seen = check_visible(&src, &dst, &expected, true);
                    all.passes += 1;
                    all.seen.files += seen.files;
                } else {
                    std::thread::yield_now();
                }
            }
            all
        });
        Watcher { stop, thread }
    }

    /// Stops it; its failure is the test's.
    fn finish(self) -> Watched {
        self.stop.store(true, Ordering::Relaxed);
        self.thread
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
    }
}

#[derive(Default)]
struct Watched {
    passes: usize,
    seen: Seen,
}

impl std::fmt::Display for Watched {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "watcher: {} passes, {} files read",
            self.passes, self.seen.files
        )
    }
}

/// Finished entries (committed or skipped) of the live transfer `NAME`
/// other than `not` (a finished run that the next one replaces).
fn finished_entries(store: &SqliteStore, not: Option<ferry::TransferId>) -> Option<u64> {
    let t = store.transfer_by_name(NAME).unwrap()?;
    if Some(t.id) == not && t.state.is_terminal() {
        return None;
    }
    let tally = store.entry_tally(t.id).unwrap();
    Some(tally.files_committed + tally.files_skipped)
}

enum Ended {
    Killed,
    Completed,
}

/// One store, one source tree and one destination, copied again and again.
struct Copy {
    store_path: PathBuf,
    store: SqliteStore,
    scratch: PathBuf,
    src: PathBuf,
    dst: PathBuf,
}

impl Copy {
    /// `ferry cp -a --json --name NAME EXTRA… SRC DST`, SIGKILLed once the
    /// store holds `kill_after` finished entries of it (`None`: run to the
    /// end), with a watcher reading the destination all along.
    fn run(
        &self,
        extra: &[&str],
        kill_after: Option<u64>,
        expected: &Arc<Expected>,
        what: &str,
    ) -> Ended {
        let before = self.store.transfer_by_name(NAME).unwrap().map(|t| t.id);
        let mut reader = self.store.event_reader().unwrap();
        let started = Instant::now();
        let watcher = Watcher::start(&self.src, &self.dst, expected);
        let mut child = ferry_at(&self.store_path)
            .args(["cp", "-a", "--json", "--name", NAME])
            .args(extra)
            .arg(&self.src)
            .arg(&self.dst)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut finished_at_kill = None;
        // The most entries one look at the store found finished since the
        // look before: how coarse the batches' commits are.
        let (mut last_seen, mut largest_step) = (None, 0);
        loop {
            // Taken before looking, so a change in between is not missed.
            let token = reader.change_token().unwrap();
            if child.try_wait().unwrap().is_some() {
                break;
            }
            if let Some(after) = kill_after {
                let finished = finished_entries(&self.store, before);
                if let (Some(last), Some(now)) = (last_seen, finished) {
                    largest_step = largest_step.max(now.saturating_sub(last));
                }
                last_seen = finished.or(last_seen);
                if finished.is_some_and(|n| n >= after) {
                    child.kill().unwrap();
                    finished_at_kill = finished;
                    break;
                }
            }
            assert!(
                started.elapsed() < RUN_DEADLINE,
                "{what}: still running after {RUN_DEADLINE:?}"
            );
            reader.wait_changed(token, STORE_WAIT).unwrap();
        }
        let out = child.wait_with_output().unwrap();
        let watched = watcher.finish();
        let took = started.elapsed();
        if let Some(after) = finished_at_kill.filter(|_| out.status.signal() == Some(9)) {
            println!(
                "{what}: killed at {after} finished entries after {took:.1?} \
                 (at most {largest_step} more between two looks at the store); {watched}"
            );
            return Ended::Killed;
        }
        assert!(
            out.status.success(),
            "{what}: ferry failed: {}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(report["state"], "completed", "{what}: {report}");
        println!(
            "{what}: completed in {took:.1?}, {} bytes copied; {watched}",
            report["bytes_copied"]
        );
        Ended::Completed
    }

    /// Runs the same command line, killed at each of `kills` (counts of
    /// finished entries), then once more to the end; after each kill the
    /// destination shows nothing partial, and at the end it is identical.
    /// Returns how many runs were killed before they finished.
    fn killed_then_completed(
        &self,
        extra: &[&str],
        kills: &[u64],
        expected: &Arc<Expected>,
        what: &str,
    ) -> usize {
        let mut killed = 0;
        for (k, &after) in kills.iter().enumerate() {
            let label = format!("{what}, run {k} (kill at {after})");
            if let Ended::Killed = self.run(extra, Some(after), expected, &label) {
                killed += 1;
                let seen = check_visible(&self.src, &self.dst, expected, false);
                println!(
                    "{label}: after the kill, {} files visible, all whole",
                    seen.files
                );
            }
        }
        self.run(extra, None, expected, &format!("{what}, last run"));
        let started = Instant::now();
        assert_identical(&self.src, &self.dst);
        self.assert_store_finished(expected);
        println!(
            "{what}: identical, store finished (checked in {:.1?})",
            started.elapsed()
        );
        killed
    }

    /// The transfer completed with every entry committed or skipped, and no
    /// temporary is left, at the destination or beside it.
    fn assert_store_finished(&self, expected: &Expected) {
        let t = self.store.transfer_by_name(NAME).unwrap().unwrap();
        assert_eq!(t.state, ferry::TransferState::Completed);
        let entries = self.store.entries(t.id).unwrap();
        let unfinished: Vec<_> = entries
            .iter()
            .filter(|e| !matches!(e.state, FileState::Committed | FileState::Skipped))
            .map(|e| (&e.dest, e.state))
            .take(10)
            .collect();
        assert!(
            unfinished.is_empty(),
            "entries not finished: {unfinished:?}"
        );
        let files = entries
            .iter()
            .filter(|e| e.kind != ferry::EntryKind::Dir)
            .count();
        assert_eq!(files, expected.files.len() + expected.symlinks.len());
        let beside: Vec<_> = fs::read_dir(&self.scratch)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| is_temp(p))
            .collect();
        assert!(
            beside.is_empty(),
            "temporaries beside the destination: {beside:?}"
        );
        let left = temps(&self.dst);
        assert!(left.is_empty(), "temporaries left: {left:?}");
    }
}

/// `user.*` extended attributes, sorted. The tree's names and values are
/// short: a few KiB hold them.
fn user_xattrs(path: &Path) -> Vec<(Vec<u8>, Vec<u8>)> {
    let mut names = [0u8; 4096];
    let len = rustix::fs::llistxattr(path, &mut names[..]).unwrap();
    let mut out: Vec<_> = names[..len]
        .split(|&b| b == 0)
        .filter(|name| name.starts_with(b"user."))
        .map(|name| {
            let mut value = [0u8; 4096];
            let n = rustix::fs::lgetxattr(path, OsStr::from_bytes(name), &mut value[..]).unwrap();
            (name.to_vec(), value[..n].to_vec())
        })
        .collect();
    out.sort();
    out
}

/// The trees are the same: content, type, mode, mtime to the ns, symlink
/// targets (`assert_same_tree`), `user.*` xattrs, and hard links (the same
/// names share an inode).
fn assert_identical(src: &Path, dst: &Path) {
    assert_same_tree(src, dst);
    let mut inodes: HashMap<u64, (PathBuf, u64)> = HashMap::new();
    let mut xattrs = 0;
    for rel in walk(src) {
        let (s, d) = (src.join(&rel), dst.join(&rel));
        let sm = fs::symlink_metadata(&s).unwrap();
        if sm.file_type().is_symlink() {
            continue;
        }
        let want = user_xattrs(&s);
        xattrs += want.len();
        assert_eq!(want, user_xattrs(&d), "{rel:?}: xattrs");
        if sm.is_file() && sm.nlink() > 1 {
            let dm = fs::symlink_metadata(&d).unwrap();
            assert_eq!(sm.nlink(), dm.nlink(), "{rel:?}: links");
            let (first, ino) = inodes
                .entry(sm.ino())
                .or_insert_with(|| (rel.clone(), dm.ino()));
            assert_eq!(
                *ino,
                dm.ino(),
                "{rel:?} and {first:?} are one inode at the source"
            );
        }
    }
    assert!(xattrs >= XATTR_FILES, "the tree has xattrs to compare");
    assert!(
        inodes.len() >= FILES / HARD_LINK_EVERY / 2,
        "the tree has hard links"
    );
}

#[test]
fn sigkill_during_a_hundred_thousand_file_copy_and_its_reruns_then_identical() {
    let seed = std::env::var("FERRY_CRASH_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| fastrand::u64(..));
    println!("crash test seed: {seed} (FERRY_CRASH_SEED={seed} replays it)");
    let mut rng = fastrand::Rng::with_seed(seed);
    // On tmpfs: making and removing 200,000 files on this machine's shared
    // disk took minutes, and what is tested is the kills, not the disk.
    let s = Scratch::new_in(Path::new("/dev/shm"));
    let (src, dst, store_path) = (s.path("src"), s.path("dst"), s.store());

    let started = Instant::now();
    let expected = Arc::new(make_tree(&src, &mut rng));
    println!(
        "tree: {} files, {} symlinks, made in {:.1?}",
        expected.files.len(),
        expected.symlinks.len(),
        started.elapsed()
    );
    // Made before ferry runs, so the test reads it from the start.
    let copy = Copy {
        store: SqliteStore::open(&store_path).unwrap(),
        store_path,
        scratch: s.path(""),
        src,
        dst,
    };

    // The copy, killed at increasing moments, the first possibly before
    // any file is committed (while the tree is still being planned).
    let mut kills: Vec<u64> = (0..FIRST_COPY_KILLS)
        .map(|_| rng.u64(0..FILES as u64 * 9 / 10))
        .collect();
    kills.sort_unstable();
    let mut killed = copy.killed_then_completed(&[], &kills, &expected, "copy");

    // A re-run over the finished copy after sources were touched: the
    // unchanged ones are recorded skipped in bulk.
    let mut expected = Arc::into_inner(expected).expect("no watcher holds it now");
    touch_sources(&copy.src, &mut rng, &mut expected);
    let expected = Arc::new(expected);
    // Each re-run is killed twice: as soon as its transfer is recorded
    // (while the destinations are compared: the skips are recorded in bulk
    // after that, so no count of finished entries falls inside it), and at
    // a random count.
    let kills = [0, rng.u64(1..FILES as u64 * 9 / 10)];
    killed += copy.killed_then_completed(&[], &kills, &expected, "re-run over the finished copy");

    // --skip checksum reads both sides of every file.
    let kills = [0, rng.u64(1..FILES as u64 * 9 / 10)];
    killed += copy.killed_then_completed(
        &["--skip", "checksum"],
        &kills,
        &expected,
        "--skip checksum re-run",
    );
    println!("{killed} kills in {:.1?}", started.elapsed());
    assert!(
        killed >= FIRST_COPY_KILLS + 2,
        "only {killed} runs were killed before they finished"
    );
}
