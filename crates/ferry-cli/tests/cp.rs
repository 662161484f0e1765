//! `ferry cp`: what arrives is what left, and every user mistake gets one
//! clear line and its own exit code.

mod util;

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt, symlink};
use std::path::PathBuf;

use util::*;

/// Nested directories, empty files, a 0444 file, a non-UTF-8 name, a sparse
/// 100 MiB file and a symlink, with old times on files and directories.
fn fidelity_tree(root: &std::path::Path) {
    let mut rng = fastrand::Rng::with_seed(7);
    write_file(
        &root.join("a/b/c/deep.bin"),
        &random_bytes(&mut rng, 300_000),
    );
    write_file(&root.join("a/empty"), b"");
    write_file(&root.join("a/b/empty2"), b"");
    fs::create_dir_all(root.join("a/empty_dir")).unwrap();
    write_file(&root.join("readonly"), b"do not touch\n");
    fs::set_permissions(root.join("readonly"), fs::Permissions::from_mode(0o444)).unwrap();
    write_file(
        &root.join(os(b"caf\xe9-latin1")),
        b"not UTF-8 in the name\n",
    );
    write_file(&root.join("exec.sh"), b"#!/bin/sh\necho hi\n");
    fs::set_permissions(root.join("exec.sh"), fs::Permissions::from_mode(0o750)).unwrap();
    // Sparse: 100 MiB with two islands of data.
    let sparse = fs::File::create(root.join("sparse.img")).unwrap();
    sparse.set_len(100 << 20).unwrap();
    use std::os::unix::fs::FileExt;
    sparse.write_all_at(b"start", 4096).unwrap();
    sparse
        .write_all_at(&random_bytes(&mut rng, 1 << 20), 60 << 20)
        .unwrap();
    drop(sparse);
    symlink("a/b/c/deep.bin", root.join("link")).unwrap();
    symlink("/nonexistent/target", root.join("a/dangling")).unwrap();
    fs::set_permissions(root.join("a/b"), fs::Permissions::from_mode(0o750)).unwrap();
    // Old times, to the nanosecond, set last (children first).
    for rel in walk(root).into_iter().rev() {
        let path = root.join(&rel);
        let status = std::process::Command::new("touch")
            .args(["-h", "-d", "2001-02-03 04:05:06.123456789"])
            .arg(&path)
            .status()
            .unwrap();
        assert!(status.success());
    }
}

#[test]
fn archive_copy_keeps_content_mode_times_sparseness_and_symlinks() {
    let s = Scratch::new();
    let (src, dst) = (s.path("src"), s.path("dst"));
    fidelity_tree(&src);
    let out = run_ok(
        s.ferry()
            .args(["cp", "-a", "-r", "--json"])
            .arg(&src)
            .arg(&dst),
    );
    let summary = json(&out);
    assert_eq!(summary["state"], "completed");
    assert_same_tree(&src, &dst);
    let sparse = fs::metadata(dst.join("sparse.img")).unwrap();
    assert_eq!(sparse.len(), 100 << 20);
    assert!(
        sparse.blocks() * 512 < 8 << 20,
        "the sparse file must stay sparse: {} bytes allocated",
        sparse.blocks() * 512
    );
    assert_eq!(
        fs::read_link(dst.join("link")).unwrap(),
        PathBuf::from("a/b/c/deep.bin")
    );
    // Only the data islands were copied, not the holes.
    assert!(
        summary["bytes_copied"].as_u64().unwrap() < 10 << 20,
        "{summary}"
    );
}

#[test]
fn without_preserve_modes_follow_umask_and_times_are_new() {
    let s = Scratch::new();
    let (src, dst) = (s.path("f"), s.path("g"));
    write_file(&src, b"x");
    fs::set_permissions(&src, fs::Permissions::from_mode(0o755)).unwrap();
    let old = std::process::Command::new("touch")
        .args(["-d", "2001-01-01"])
        .arg(&src)
        .status()
        .unwrap();
    assert!(old.success());
    run_ok(s.ferry().arg("cp").arg(&src).arg(&dst));
    let (sm, dm) = (fs::metadata(&src).unwrap(), fs::metadata(&dst).unwrap());
    assert_ne!(sm.mtime(), dm.mtime(), "times are not kept without -p");
    let status = fs::read_to_string("/proc/self/status").unwrap();
    let umask = status
        .lines()
        .find_map(|l| l.strip_prefix("Umask:"))
        .map(|v| u32::from_str_radix(v.trim(), 8).unwrap())
        .unwrap();
    assert_eq!(dm.mode() & 0o7777, 0o755 & !umask);
    assert_eq!(fs::read(&dst).unwrap(), b"x");
}

#[test]
fn file_into_existing_directory_takes_its_base_name() {
    let s = Scratch::new();
    write_file(&s.path("one"), b"1");
    write_file(&s.path("two"), b"2");
    fs::create_dir(s.path("into")).unwrap();
    run_ok(
        s.ferry()
            .arg("cp")
            .arg(s.path("one"))
            .arg(s.path("two"))
            .arg(s.path("into")),
    );
    assert_eq!(fs::read(s.path("into/one")).unwrap(), b"1");
    assert_eq!(fs::read(s.path("into/two")).unwrap(), b"2");
    // A second copy overwrites in place, atomically.
    write_file(&s.path("one"), b"one, again");
    run_ok(s.ferry().arg("cp").arg(s.path("one")).arg(s.path("into")));
    assert_eq!(fs::read(s.path("into/one")).unwrap(), b"one, again");
    assert!(temps(&s.path("into")).is_empty());
}

/// One line on stderr that names the path, and the documented exit code.
fn assert_refused(out: &std::process::Output, code: i32, names: &str) {
    assert_eq!(out.status.code(), Some(code), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(stderr.lines().count(), 1, "one line: {stderr}");
    assert!(stderr.starts_with("ferry: "), "{stderr}");
    assert!(stderr.contains(names), "{stderr:?} should name {names}");
    assert!(!stderr.contains("panicked"), "{stderr}");
}

#[test]
fn user_mistakes_get_a_clear_line_and_a_distinct_code() {
    let s = Scratch::new();
    write_file(&s.path("file"), b"f");
    fs::create_dir_all(s.path("dir/sub")).unwrap();
    let path = |p: &str| s.path(p).to_string_lossy().into_owned();

    let out = run(s.ferry().arg("cp").arg(s.path("missing")).arg(s.path("x")));
    assert_refused(&out, 3, &path("missing"));

    let out = run(s.ferry().arg("cp").arg(s.path("dir")).arg(s.path("x")));
    assert_refused(&out, 5, &path("dir"));
    assert!(String::from_utf8_lossy(&out.stderr).contains("-r"));

    let out = run(s
        .ferry()
        .args(["cp", "-r"])
        .arg(s.path("dir"))
        .arg(s.path("file")));
    assert_refused(&out, 6, &path("file"));

    let out = run(s.ferry().arg("cp").arg(s.path("file")).arg(s.path("file")));
    assert_refused(&out, 7, &path("file"));

    let out = run(s
        .ferry()
        .args(["cp", "-r"])
        .arg(s.path("dir"))
        .arg(s.path("dir/sub")));
    assert_refused(&out, 7, &path("dir"));

    // A garbage store is refused, named, and left as it was.
    write_file(&s.path("garbage.db"), &b"garbage".repeat(1000));
    let out = run(std::process::Command::new(FERRY)
        .arg("--store")
        .arg(s.path("garbage.db"))
        .arg("status"));
    assert_refused(&out, 8, &path("garbage.db"));
    assert_eq!(
        fs::read(s.path("garbage.db")).unwrap(),
        b"garbage".repeat(1000)
    );

    let out = run(s.ferry().args(["resume", "no-such-transfer"]));
    assert_refused(&out, 10, "no-such-transfer");
}

#[test]
fn permission_denied_names_the_path() {
    // Root reads everything; drop to nobody for this check when we are root.
    let s = Scratch::new();
    write_file(&s.path("secret"), b"s");
    fs::set_permissions(s.path("secret"), fs::Permissions::from_mode(0o000)).unwrap();
    let root = rustix::process::geteuid().is_root();
    let mut cmd = s.ferry();
    if root {
        // setpriv is in util-linux, on every Debian system.
        fs::set_permissions(s.dir.path(), fs::Permissions::from_mode(0o777)).unwrap();
        cmd = std::process::Command::new("setpriv");
        cmd.args(["--reuid=65534", "--regid=65534", "--clear-groups", FERRY])
            .arg("--store")
            .arg(s.path("nobody.db"));
    }
    let out = run(cmd.arg("cp").arg(s.path("secret")).arg(s.path("copy")));
    assert_refused(&out, 4, &s.path("secret").to_string_lossy());
    assert!(!s.path("copy").exists());
}

#[test]
fn status_lists_transfers_and_a_finished_name_is_used_again() {
    let s = Scratch::new();
    write_file(&s.path("f"), b"f");
    run_ok(
        s.ferry()
            .args(["cp", "--name", "ckpt-1"])
            .arg(s.path("f"))
            .arg(s.path("g")),
    );
    let out = run_ok(s.ferry().args(["status", "ckpt-1", "--json", "--files"]));
    let status = json(&out);
    assert_eq!(status["state"], "completed");
    assert_eq!(status["files"][0]["state"], "committed");
    let first = status["id"].clone();
    // Nothing to resume in a completed transfer.
    let out = run(s.ferry().args(["resume", "ckpt-1"]));
    assert_refused(&out, 13, "ckpt-1");
    // A job script with a fixed name, run again: the finished transfer
    // gives up its name to a new one.
    run_ok(
        s.ferry()
            .args(["cp", "--name", "ckpt-1"])
            .arg(s.path("f"))
            .arg(s.path("h")),
    );
    let status = json(&run_ok(s.ferry().args(["status", "ckpt-1", "--json"])));
    assert_ne!(status["id"], first, "{status}");
    assert_eq!(fs::read(s.path("h")).unwrap(), b"f");
    // Names no one could type or print are refused before anything is made.
    for bad in ["", "two\nlines", " padded", &"x".repeat(256)] {
        let out = run(s
            .ferry()
            .args(["cp", "--name", bad])
            .arg(s.path("f"))
            .arg(s.path("i")));
        assert_refused(&out, 29, "cannot name a transfer");
        assert!(!s.path("i").exists());
    }
}

#[test]
fn copies_across_file_systems_through_the_buffered_path() {
    // /dev/shm is a tmpfs on every Linux system: copy_file_range from the
    // scratch file system into it fails with EXDEV, and ferry falls back.
    let shm = std::path::Path::new("/dev/shm");
    assert!(shm.is_dir(), "this test needs /dev/shm");
    let s = Scratch::new();
    let src = s.path("src");
    let mut rng = fastrand::Rng::with_seed(3);
    write_file(&src.join("small"), &random_bytes(&mut rng, 100_000));
    write_file(&src.join("large"), &random_bytes(&mut rng, 40 << 20));
    let dst = tempfile::tempdir_in(shm).unwrap();
    assert_ne!(
        fs::metadata(&src).unwrap().dev(),
        fs::metadata(dst.path()).unwrap().dev()
    );
    run_ok(
        s.ferry()
            .args(["cp", "-a"])
            .arg(&src)
            .arg(dst.path().join("copy")),
    );
    assert_same_tree(&src, &dst.path().join("copy"));
}

#[test]
fn sync_kind_copies_in_the_callers_thread() {
    let s = Scratch::new();
    let src = s.path("src");
    fidelity_tree(&src);
    let out = run_ok(
        s.ferry()
            .args(["cp", "-a", "--kind", "sync", "--json"])
            .arg(&src)
            .arg(s.path("dst")),
    );
    assert_eq!(json(&out)["state"], "completed");
    assert_same_tree(&src, &s.path("dst"));
    let status = json(&run_ok(s.ferry().args(["status", "--json"])));
    assert_eq!(status[0]["kind"], "sync");
}

#[test]
fn default_store_is_ferry_store_then_xdg_state_home_then_home() {
    let s = Scratch::new();
    write_file(&s.path("f"), b"f");
    let ferry = |command: &[&str], env: &[(&str, PathBuf)]| {
        let mut cmd = std::process::Command::new(FERRY);
        cmd.args(command)
            .env_remove("FERRY_STORE")
            .env_remove("XDG_STATE_HOME");
        for (k, v) in env {
            cmd.env(k, v);
        }
        run(&mut cmd)
    };
    let copy = |env: &[(&str, PathBuf)]| {
        let out = ferry(
            &[
                "cp",
                "--new",
                &s.path("f").to_string_lossy(),
                &s.path("g").to_string_lossy(),
            ],
            env,
        );
        assert!(out.status.success(), "{out:?}");
    };
    // Reading commands never create a store, nor its directory.
    let out = ferry(&["status"], &[("HOME", s.path("home"))]);
    assert_eq!(out.status.code(), Some(15), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("no store at"),
        "{out:?}"
    );
    assert!(!s.path("home").exists());
    copy(&[("HOME", s.path("home"))]);
    assert!(s.path("home/.local/state/ferry/ferry.db").is_file());
    copy(&[("HOME", s.path("home")), ("XDG_STATE_HOME", s.path("xdg"))]);
    assert!(s.path("xdg/ferry/ferry.db").is_file());
    copy(&[
        ("XDG_STATE_HOME", s.path("xdg")),
        ("FERRY_STORE", s.path("explicit.db")),
    ]);
    assert!(s.path("explicit.db").is_file());
    // A store named by the user never gets a directory made for it.
    let out = ferry(
        &[
            "cp",
            &s.path("f").to_string_lossy(),
            &s.path("h").to_string_lossy(),
        ],
        &[("FERRY_STORE", s.path("nonexistent/dir/x.db"))],
    );
    assert_eq!(out.status.code(), Some(15), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("does not exist"),
        "{out:?}"
    );
    assert!(!s.path("nonexistent").exists());
    assert!(!s.path("h").exists());
}

/// `cp -a` plans into the store a batch of 4,096 entries at a time: hard
/// links whose first name is in one batch and others in later batches
/// stay hard links (one inode, data copied once), as do links within a
/// batch.
#[test]
fn hard_links_across_the_batches_of_a_plan_stay_hard_links() {
    let s = Scratch::new();
    let src = s.path("src");
    for d in 0..10 {
        fs::create_dir_all(src.join(format!("d{d}"))).unwrap();
        for f in 0..1000 {
            fs::write(src.join(format!("d{d}/f{f:04}")), b"").unwrap();
        }
    }
    fs::write(src.join("d0/a-leader"), b"shared").unwrap();
    // Listed first (d0), then in the third batch (d9) and in the same.
    fs::hard_link(src.join("d0/a-leader"), src.join("d9/z-far")).unwrap();
    fs::hard_link(src.join("d0/a-leader"), src.join("d0/b-near")).unwrap();
    run_ok(
        s.ferry()
            .args(["cp", "-a", "-q"])
            .arg(&src)
            .arg(s.path("dst")),
    );
    let ino = |rel: &str| fs::metadata(s.path("dst").join(rel)).unwrap().ino();
    assert_eq!(ino("d0/a-leader"), ino("d9/z-far"));
    assert_eq!(ino("d0/a-leader"), ino("d0/b-near"));
    assert_eq!(fs::metadata(s.path("dst/d9/z-far")).unwrap().nlink(), 3);
    assert_eq!(fs::read(s.path("dst/d9/z-far")).unwrap(), b"shared");
    assert_same_tree(&src, &s.path("dst"));
}
