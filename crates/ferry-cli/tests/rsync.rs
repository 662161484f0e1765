//! The habits an rsync or cp user brings: a dry run, include/exclude
//! rules, a file list, -v/-q, --update, --no-clobber, --delete. Each
//! through the real binary, as a user meets it.

mod util;

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::Output;

use ferry::store::{EventFilter, SqliteStore, Store};
use util::*;

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Every path below `root` with its content (files), link target
/// (symlinks) and mtime: what a run that writes nothing leaves equal.
fn snapshot(root: &Path) -> BTreeMap<PathBuf, (Vec<u8>, i64, i64, u32)> {
    walk(root)
        .into_iter()
        .map(|rel| {
            let path = root.join(&rel);
            let meta = fs::symlink_metadata(&path).unwrap();
            let content = if meta.is_file() {
                fs::read(&path).unwrap()
            } else {
                Vec::new()
            };
            (rel, (content, meta.mtime(), meta.mtime_nsec(), meta.mode()))
        })
        .collect()
}

/// The relative paths below `root`, as strings.
fn names(root: &Path) -> Vec<String> {
    walk(root)
        .into_iter()
        .map(|p| p.to_string_lossy().into_owned())
        .collect()
}

/// Events of the store's only transfer named `name` (or of every kind).
fn events(store: &Path, name: Option<&str>) -> Vec<ferry::model::Event> {
    let store = SqliteStore::open(store).unwrap();
    let filter = EventFilter {
        kind: name.map(String::from),
        ..Default::default()
    };
    store.events_since(0, &filter, 1_000_000).unwrap()
}

fn set_mtime(path: &Path, secs: i64) {
    let time = std::time::UNIX_EPOCH + std::time::Duration::from_secs(secs as u64);
    fs::File::options()
        .write(true)
        .open(path)
        .unwrap()
        .set_modified(time)
        .unwrap();
}

#[test]
fn dry_run_lists_and_writes_nothing_not_even_a_store() {
    let s = Scratch::new();
    let (src, dst) = (s.path("src"), s.path("dst"));
    write_file(&src.join("new"), b"new");
    write_file(&src.join("same"), b"same");
    write_file(&src.join("sub/deep"), b"deep");
    write_file(&dst.join("same"), b"same");
    write_file(&dst.join("extra"), b"extra");
    // --skip size: "same" is skipped; --delete: "extra" would go.
    fs::set_permissions(&dst, fs::Permissions::from_mode_compat(0o755)).unwrap();
    let before = snapshot(&dst);
    let dst_meta = fs::metadata(&dst).unwrap();
    let out = run_ok(
        s.ferry()
            .args(["cp", "-r", "-n", "--delete", "--skip", "size"])
            .arg(src.join("."))
            .arg(&dst),
    );
    let listed = stdout(&out);
    for line in [
        format!("copy {}", dst.join("new").display()),
        format!("copy {}", dst.join("sub/deep").display()),
        format!("skip {} (size)", dst.join("same").display()),
        format!("remove {}", dst.join("extra").display()),
    ] {
        assert!(listed.lines().any(|l| l == line), "{line:?} in {listed}");
    }
    assert!(stderr(&out).contains("nothing was written"), "{out:?}");
    assert!(!s.store().exists(), "the dry run created the store");
    assert_eq!(
        fs::read_dir(s.path("state")).unwrap().count(),
        0,
        "the store's directory stays empty"
    );
    assert_eq!(snapshot(&dst), before, "the destination changed");
    assert_eq!(
        fs::metadata(&dst).unwrap().mtime_nsec(),
        dst_meta.mtime_nsec()
    );

    // Without --store: the default store's directory is not made either.
    let state = s.path("xdg-state");
    let out = run_ok(
        std::process::Command::new(FERRY)
            .env_remove("FERRY_STORE")
            .env("XDG_STATE_HOME", &state)
            .args(["cp", "--dry-run", "-r"])
            .arg(&src)
            .arg(s.path("fresh")),
    );
    assert!(stdout(&out).contains("copy "), "{out:?}");
    assert!(!state.exists(), "the dry run made {state:?}");
    assert!(!s.path("fresh").exists());
}

/// rsync's safety check before a `--delete`: `-n` of the same command that
/// copied a tree shows what that command would do now — in place, never
/// nested into what the first run made — and writes nothing.
#[test]
fn dry_run_of_a_completed_copy_previews_the_rerun_in_place() {
    let s = Scratch::new();
    let (src, dst) = (s.path("src"), s.path("dst"));
    write_file(&src.join("a"), b"a");
    write_file(&src.join("sub/b"), b"b");
    run_ok(s.ferry().args(["cp", "-a"]).arg(&src).arg(&dst));
    write_file(&dst.join("extra"), b"extra");
    write_file(&src.join("new"), b"new");
    let before = snapshot(&dst);
    let events_before = events(&s.store(), None).len();
    let out = run_ok(
        s.ferry()
            .args(["cp", "-a", "--delete", "-n"])
            .arg(&src)
            .arg(&dst),
    );
    let listed = stdout(&out);
    for line in [
        format!("copy {}", dst.join("new").display()),
        format!("skip {} (mtime)", dst.join("a").display()),
        format!("skip {} (mtime)", dst.join("sub/b").display()),
        format!("remove {}", dst.join("extra").display()),
    ] {
        assert!(listed.lines().any(|l| l == line), "{line:?} in {listed}");
    }
    assert!(!listed.contains("dst/src"), "the preview nested: {listed}");
    assert!(stderr(&out).contains("already copies this"), "{out:?}");
    assert_eq!(snapshot(&dst), before, "the destination changed");
    assert_eq!(
        events(&s.store(), None).len(),
        events_before,
        "the store changed"
    );
    // And the run does what the preview said.
    run_ok(s.ferry().args(["cp", "-a", "--delete"]).arg(&src).arg(&dst));
    assert!(!dst.join("extra").exists() && dst.join("new").exists());
    assert!(!dst.join("src").exists());
}

/// `fs::Permissions::from_mode`, without importing the trait at each use.
trait FromModeCompat {
    fn from_mode_compat(mode: u32) -> fs::Permissions;
}

impl FromModeCompat for fs::Permissions {
    fn from_mode_compat(mode: u32) -> fs::Permissions {
        std::os::unix::fs::PermissionsExt::from_mode(mode)
    }
}

/// A tree for the filter cases, with a named pipe inside `cache/`: ferry
/// refuses pipes (exit 14), so a plan that succeeds never descended there.
fn filter_tree(src: &Path) {
    for name in [
        "a.c",
        "a.o",
        "keep.o",
        "sub/b.c",
        "sub/b.h",
        "sub/foo",
        "foo/x.c",
        "deep/foo/bar",
        "deep/one/foo/bar",
    ] {
        write_file(&src.join(name), name.as_bytes());
    }
    fs::create_dir_all(src.join("sub/cache")).unwrap();
    let fifo = src.join("sub/cache/pipe");
    rustix::fs::mknodat(
        rustix::fs::CWD,
        &fifo,
        rustix::fs::FileType::Fifo,
        rustix::fs::Mode::from_raw_mode(0o600),
        0,
    )
    .unwrap();
}

/// Copies `src/.` to a fresh `dst` with `rules`; returns what landed.
fn copy_filtered(s: &Scratch, dst: &str, rules: &[&str]) -> Vec<String> {
    let dst = s.path(dst);
    run_ok(
        s.ferry()
            .args(["cp", "-r", "--new"])
            .args(rules)
            .arg(s.path("src/."))
            .arg(&dst),
    );
    names(&dst)
}

/// The examples of rsync(1)'s "INCLUDE/EXCLUDE PATTERN RULES" and "FILTER
/// RULES", each with what rsync copies.
#[test]
fn include_and_exclude_follow_rsyncs_documented_examples() {
    let s = Scratch::new();
    filter_tree(&s.path("src"));
    // Without a rule the pipe is found and refused: the tree is a real test.
    let out = run(s
        .ferry()
        .args(["cp", "-r"])
        .arg(s.path("src/."))
        .arg(s.path("refused")));
    assert_eq!(out.status.code(), Some(14), "{out:?}");

    // "- *.o": every .o at any depth; "/cache" unanchored dir: not read.
    let got = copy_filtered(&s, "d1", &["--exclude", "*.o", "--exclude", "cache/"]);
    assert_eq!(
        got,
        [
            "a.c",
            "deep",
            "deep/foo",
            "deep/foo/bar",
            "deep/one",
            "deep/one/foo",
            "deep/one/foo/bar",
            "foo",
            "foo/x.c",
            "sub",
            "sub/b.c",
            "sub/b.h",
            "sub/foo"
        ]
    );
    // "+ */", "+ *.c", "- *": only C files, in every directory.
    let got = copy_filtered(
        &s,
        "d2",
        &["--include", "*/", "--include", "*.c", "--exclude", "*"],
    );
    assert_eq!(
        got,
        [
            "a.c",
            "deep",
            "deep/foo",
            "deep/one",
            "deep/one/foo",
            "foo",
            "foo/x.c",
            "sub",
            "sub/b.c",
            "sub/cache"
        ]
    );
    // "/foo" is the top one only; "foo/" a directory named foo anywhere
    // (sub/foo, a file, stays); with "/sub/cache/" anchored.
    let got = copy_filtered(&s, "d3", &["--exclude", "/foo", "--exclude", "/sub/cache/"]);
    assert!(!got.contains(&"foo".into()) && got.contains(&"deep/foo/bar".into()));
    let got = copy_filtered(&s, "d4", &["--exclude", "foo/", "--exclude", "cache"]);
    assert!(got.contains(&"sub/foo".into()), "{got:?}");
    assert!(!got.iter().any(|p| p.ends_with("foo/bar") || p == "foo"));
    // "/deep/*/bar": one level; "/deep/**/bar": any depth.
    let got = copy_filtered(
        &s,
        "d5",
        &["--exclude", "/deep/*/bar", "--exclude", "cache"],
    );
    assert!(!got.contains(&"deep/foo/bar".into()));
    assert!(got.contains(&"deep/one/foo/bar".into()));
    let got = copy_filtered(
        &s,
        "d6",
        &["--exclude", "/deep/**/bar", "--exclude", "cache"],
    );
    assert!(!got.iter().any(|p| p.ends_with("bar")), "{got:?}");
    // First match wins, across --include and --exclude, in the order given.
    let got = copy_filtered(
        &s,
        "d7",
        &[
            "--include",
            "keep.o",
            "--exclude",
            "*.o",
            "--exclude",
            "cache",
        ],
    );
    assert!(got.contains(&"keep.o".into()) && !got.contains(&"a.o".into()));
    let got = copy_filtered(
        &s,
        "d8",
        &[
            "--exclude",
            "*.o",
            "--include",
            "keep.o",
            "--exclude",
            "cache",
        ],
    );
    assert!(!got.contains(&"keep.o".into()), "{got:?}");
    // --exclude-from: one pattern a line, comments and blanks ignored.
    fs::write(
        s.path("rules"),
        "# objects\n*.o\n\n; and the cache\ncache/\n",
    )
    .unwrap();
    let rules = s.path("rules");
    let got = copy_filtered(&s, "d9", &["--exclude-from", rules.to_str().unwrap()]);
    assert_eq!(
        got,
        copy_filtered(&s, "d10", &["--exclude", "*.o", "--exclude", "cache/"])
    );
    // A pattern globset cannot read is refused, named, exit 2.
    let out = run(s
        .ferry()
        .args(["cp", "-r", "--exclude", "[unclosed"])
        .arg(s.path("src/."))
        .arg(s.path("d11")));
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert!(stderr(&out).contains("[unclosed"), "{out:?}");
}

#[test]
fn files_from_copies_exactly_the_listed_names_nul_separated() {
    let s = Scratch::new();
    let src = s.path("src");
    let odd = "line\nbreak and space";
    write_file(&src.join("dir one").join(odd), b"odd");
    write_file(&src.join("plain"), b"plain");
    write_file(&src.join("not listed"), b"no");
    write_file(&src.join("dir one/not listed either"), b"no");
    let mut list = Vec::new();
    for name in [format!("dir one/{odd}"), "plain".into()] {
        list.extend_from_slice(name.as_bytes());
        list.push(0);
    }
    fs::write(s.path("list"), &list).unwrap();
    let dst = s.path("dst");
    run_ok(
        s.ferry()
            .args(["cp", "-a", "-0", "--files-from"])
            .arg(s.path("list"))
            .arg(&src)
            .arg(&dst),
    );
    assert_eq!(names(&dst), ["dir one", &format!("dir one/{odd}"), "plain"]);
    assert_eq!(fs::read(dst.join("dir one").join(odd)).unwrap(), b"odd");
    // Read by lines, the same list names files that do not exist.
    let out = run(s
        .ferry()
        .args(["cp", "-r", "--files-from"])
        .arg(s.path("list"))
        .arg(&src)
        .arg(s.path("dst2")));
    assert_eq!(out.status.code(), Some(3), "{out:?}");
    // --delete is refused with a list (which extras would be "extra"?).
    let out = run(s
        .ferry()
        .args(["cp", "-r", "--delete", "--files-from"])
        .arg(s.path("list"))
        .arg(&src)
        .arg(s.path("dst3")));
    assert_eq!(out.status.code(), Some(2), "{out:?}");
}

#[test]
fn verbose_lists_each_committed_file_and_quiet_prints_nothing() {
    let s = Scratch::new();
    let src = s.path("src");
    random_files(&src, 30, 3, 7, |i| 100 + i);
    let dst = s.path("dst");
    let out = run_ok(s.ferry().args(["cp", "-r", "-v"]).arg(&src).arg(&dst));
    let mut listed: Vec<String> = stdout(&out)
        .lines()
        .filter(|l| !l.starts_with("ferry:"))
        .map(String::from)
        .collect();
    listed.sort();
    let mut expected: Vec<String> = walk(&dst)
        .into_iter()
        .map(|rel| dst.join(rel).display().to_string())
        .collect();
    expected.push(dst.display().to_string());
    expected.sort();
    assert_eq!(listed, expected, "one line per committed entry");

    let out = run_ok(
        s.ferry()
            .args(["cp", "-r", "-q"])
            .arg(&src)
            .arg(s.path("q")),
    );
    assert!(out.stdout.is_empty() && out.stderr.is_empty(), "{out:?}");
    assert_same_tree_content(&src, &s.path("q"));
    // An error still says what went wrong.
    let out = run(s
        .ferry()
        .args(["cp", "-q"])
        .arg(s.path("missing"))
        .arg(s.path("x")));
    assert_eq!(out.status.code(), Some(3));
    assert!(stderr(&out).contains("missing"), "{out:?}");
}

fn assert_same_tree_content(src: &Path, dst: &Path) {
    assert_eq!(names(src), names(dst));
    for rel in walk(src) {
        if src.join(&rel).is_file() {
            assert_eq!(
                fs::read(src.join(&rel)).unwrap(),
                fs::read(dst.join(&rel)).unwrap()
            );
        }
    }
}

#[test]
fn update_keeps_newer_destinations_and_no_clobber_keeps_every_existing_one() {
    let s = Scratch::new();
    let (src, dst) = (s.path("src"), s.path("dst"));
    for name in ["older", "newer", "absent"] {
        write_file(&src.join(name), format!("source {name}").as_bytes());
        set_mtime(&src.join(name), 2_000_000_000);
    }
    write_file(&dst.join("older"), b"old destination");
    set_mtime(&dst.join("older"), 1_000_000_000);
    write_file(&dst.join("newer"), b"newer destination");
    set_mtime(&dst.join("newer"), 2_100_000_000);
    let out = run_ok(
        s.ferry()
            .args(["cp", "-a", "-u", "-v"])
            .arg(src.join("."))
            .arg(&dst),
    );
    assert_eq!(fs::read(dst.join("older")).unwrap(), b"source older");
    assert_eq!(fs::read(dst.join("newer")).unwrap(), b"newer destination");
    // Kept as it was: its own time, not the source's.
    assert_eq!(
        fs::metadata(dst.join("newer")).unwrap().mtime(),
        2_100_000_000
    );
    assert_eq!(fs::read(dst.join("absent")).unwrap(), b"source absent");
    assert!(
        stdout(&out).contains(&format!(
            "{} (skipped: update)",
            dst.join("newer").display()
        )),
        "{out:?}"
    );

    // --no-clobber: whatever exists stays, byte for byte and mode for mode.
    let dst2 = s.path("dst2");
    write_file(&dst2.join("older"), b"keep me");
    fs::set_permissions(dst2.join("older"), fs::Permissions::from_mode_compat(0o640)).unwrap();
    set_mtime(&dst2.join("older"), 1_000_000_000);
    run_ok(
        s.ferry()
            .args(["cp", "-a", "--no-clobber"])
            .arg(src.join("."))
            .arg(&dst2),
    );
    let kept = fs::metadata(dst2.join("older")).unwrap();
    assert_eq!(fs::read(dst2.join("older")).unwrap(), b"keep me");
    assert_eq!((kept.mode() & 0o777, kept.mtime()), (0o640, 1_000_000_000));
    assert_eq!(fs::read(dst2.join("newer")).unwrap(), b"source newer");
}

/// `src/.` onto a `dst` holding extras: files, a directory tree, and a
/// `*.keep` file the filter protects.
fn tree_with_extras(s: &Scratch, extras: usize) -> (PathBuf, PathBuf) {
    let (src, dst) = (s.path("src"), s.path("dst"));
    random_files(&src, 40, 4, 3, |i| 200 + i);
    random_files(&dst, 40, 4, 3, |i| 200 + i);
    for i in 0..extras {
        write_file(&dst.join(format!("d{}/extra{i}", i % 4)), b"x");
    }
    write_file(&dst.join("gone/deep/tree"), b"x");
    // At the top: DST itself is not compared by assert_same_tree, so the
    // test may remove it afterwards without changing a compared mtime.
    write_file(&dst.join("notes.keep"), b"mine");
    (src, dst)
}

#[test]
fn delete_removes_exactly_the_extras_after_every_copy_is_committed() {
    let s = Scratch::new();
    let (src, dst) = tree_with_extras(&s, 10);
    let out = run_ok(
        s.ferry()
            .args(["cp", "-a", "-v", "--delete", "--exclude", "*.keep"])
            .arg(src.join("."))
            .arg(&dst),
    );
    let mut expected = names(&src);
    expected.push("notes.keep".into());
    expected.sort();
    assert_eq!(names(&dst), expected, "exactly the extras went");
    assert_eq!(
        stdout(&out)
            .lines()
            .filter(|l| l.starts_with("removed "))
            .count(),
        11,
        "{out:?}"
    );
    // Each removal recorded, every one after the last commit.
    let removed = events(&s.store(), Some("file.removed"));
    assert_eq!(removed.len(), 11);
    assert!(
        removed
            .iter()
            .any(|e| e.context["path"] == dst.join("gone").to_str().unwrap())
    );
    // (Directories get their times, and their `committed`, after: removing
    // from them changes their times.)
    let store = SqliteStore::open(&s.store()).unwrap();
    let transfer = &store.transfers().unwrap()[0];
    let files: std::collections::HashSet<u32> = store
        .entries(transfer.id)
        .unwrap()
        .into_iter()
        .filter(|e| e.kind == ferry::model::EntryKind::File)
        .map(|e| e.index.0)
        .collect();
    let committed = events(&s.store(), Some("file.committed"));
    let last_file_commit = committed
        .iter()
        .filter(|e| e.entry.is_some_and(|i| files.contains(&i.0)))
        .map(|e| e.seq)
        .max()
        .unwrap();
    assert!(removed.iter().all(|e| e.seq > last_file_commit));
}

#[test]
fn delete_killed_midway_then_resume_converges_on_the_source() {
    let s = Scratch::new();
    let (src, dst) = tree_with_extras(&s, 1200);
    // Killed (SIGKILL, as kill -9) at the 700th removal: the first batch of
    // 512 is recorded, the second is not.
    let out = run(s
        .ferry()
        .env("FERRY_FAILPOINT", "delete.remove:700")
        .args([
            "cp",
            "-a",
            "--delete",
            "--exclude",
            "*.keep",
            "--name",
            "mirror",
        ])
        .arg(src.join("."))
        .arg(&dst));
    assert_eq!(out.status.signal(), Some(9), "{out:?}");
    assert_eq!(events(&s.store(), Some("file.removed")).len(), 512);
    assert!(names(&dst).len() > names(&src).len(), "extras are left");

    let out = run_ok(s.ferry().args(["resume", "mirror"]));
    assert!(
        stderr(&out).contains("--delete"),
        "the resume keeps --delete: {out:?}"
    );
    // And the rule that protects what it excludes.
    assert_eq!(fs::read(dst.join("notes.keep")).unwrap(), b"mine");
    fs::remove_file(dst.join("notes.keep")).unwrap();
    assert_same_tree(&src, &dst);
}

/// The size of `dest`'s temporary (`dest._ferry-ID`), if it is there.
fn temporary_size(dest: &Path) -> Option<u64> {
    let dir = dest.parent().unwrap();
    let prefix = format!("{}._ferry-", dest.file_name().unwrap().to_string_lossy());
    fs::read_dir(dir)
        .unwrap()
        .filter_map(|e| e.ok())
        .find(|e| e.file_name().to_string_lossy().starts_with(&prefix))
        .and_then(|e| e.metadata().ok())
        .map(|m| m.len())
}

#[test]
fn bwlimit_paces_the_copy_and_ferry_limit_changes_it_while_it_runs() {
    let s = Scratch::new();
    let (src, dest) = (s.path("big"), s.path("copy"));
    let mut rng = fastrand::Rng::with_seed(5);
    write_file(&src, &random_bytes(&mut rng, 24 << 20));
    const RATE: u64 = 2 << 20;
    // 24 MiB at 2 MiB/s: 12 s, unless the limit changes.
    let spawned = std::time::Instant::now();
    let mut child = s
        .ferry()
        .args(["cp", "--name", "paced", "--bwlimit", "2M", "--threads", "2"])
        .arg(&src)
        .arg(&dest)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    // Paced: what has landed is never more than the rate allows since the
    // process started, plus one chunk (a quarter second) per worker.
    let deadline = spawned + std::time::Duration::from_secs(60);
    let seen = loop {
        assert!(
            std::time::Instant::now() < deadline,
            "the copy never got to 4 MiB"
        );
        let landed = temporary_size(&dest).unwrap_or(0);
        let allowed = RATE as f64 * spawned.elapsed().as_secs_f64() + (RATE / 4 * 2) as f64;
        assert!(
            landed as f64 <= allowed,
            "{landed} bytes landed, {allowed} allowed"
        );
        if landed >= 4 << 20 {
            break landed;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    };
    assert!(seen < 24 << 20);

    // Lifted while it runs: the rest goes at full speed.
    let lifted = std::time::Instant::now();
    let out = run_ok(s.ferry().args(["limit", "paced", "0"]));
    assert!(stdout(&out).contains("no limit"), "{out:?}");
    assert!(child.wait().unwrap().success());
    assert!(
        lifted.elapsed() < std::time::Duration::from_secs(8),
        "the new limit was not taken: {:?} for the last 20 MiB at 2 MiB/s would be 10 s",
        lifted.elapsed()
    );
    assert_eq!(fs::read(&dest).unwrap(), fs::read(&src).unwrap());
    let limited = events(&s.store(), Some("transfer.limited"));
    assert_eq!(limited.len(), 1);
    assert_eq!(limited[0].context["bytes_per_second"], 0);
    let dispatched = events(&s.store(), Some("transfer.dispatched"));
    assert_eq!(dispatched[0].context["bwlimit"], RATE);
    // Over: no mover will read a rate again, and it is not said to.
    let out = run(s.ferry().args(["limit", "paced", "1M"]));
    assert_eq!(out.status.code(), Some(13), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("is completed: nothing to limit"),
        "{out:?}"
    );
    assert_eq!(events(&s.store(), Some("transfer.limited")).len(), 1);
}

/// The resume of a killed copy runs with what the copy was given: the
/// rule of #17, for the flags of this file.
#[test]
fn a_resume_keeps_update_no_clobber_the_rules_and_the_limit() {
    let s = Scratch::new();
    let (src, dst) = (s.path("src"), s.path("dst"));
    random_files(&src, 30, 2, 9, |i| 100 + i);
    write_file(&dst.join("d1/f1"), b"theirs");
    let out = run(s
        .ferry()
        .env("FERRY_FAILPOINT", "commit.rename:2")
        .args(["cp", "-a", "--no-clobber", "-u", "--exclude", "f2"])
        .args(["--bwlimit", "100M", "--name", "k"])
        .arg(src.join("."))
        .arg(&dst));
    assert_eq!(out.status.signal(), Some(9), "{out:?}");
    let out = run_ok(s.ferry().args(["resume", "k"]));
    let said = stderr(&out);
    for words in [
        "--update --no-clobber",
        "--bwlimit 100M (100.00 MiB/s)",
        "(1 include/exclude rules)",
    ] {
        assert!(said.contains(words), "{words:?} in {said}");
    }
    assert_eq!(fs::read(dst.join("d1/f1")).unwrap(), b"theirs");
    assert!(!dst.join("d0/f2").exists(), "the exclude held");
    assert_eq!(names(&dst).len(), names(&src).len() - 1);
}
