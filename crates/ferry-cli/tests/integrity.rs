//! Integrity and fidelity: checksums computed as the data is read, `ferry
//! verify`, `--verify copied`, skip rules, and what `cp -a` keeps (hard
//! links, extended attributes, ACLs, directory modes and times), also when
//! finalize applies it after a kill with the sources gone.
//!
//! Needs `getfattr`/`setfattr` (attr) and `getfacl`/`setfacl` (acl), which
//! `.ci/run` installs, on a file system with user xattrs and ACLs (ext4,
//! tmpfs ≥ 6.6, XFS…): the scratch directory's.

mod util;

use std::fs;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use ferry::store::{SqliteStore, Store};
use util::*;

fn tool(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(out.status.success(), "{cmd:?}: {out:?}");
    String::from_utf8(out.stdout).unwrap()
}

/// A tree with a hard-linked pair, files with `user.*` attributes and an
/// ACL, and nested directories with old times and unusual modes.
fn make_fidelity_tree(root: &Path) {
    let mut rng = fastrand::Rng::with_seed(7);
    write_file(&root.join("a/b/c/deep"), &random_bytes(&mut rng, 5000));
    write_file(&root.join("a/linked"), &random_bytes(&mut rng, 70_000));
    fs::hard_link(root.join("a/linked"), root.join("a/b/also-linked")).unwrap();
    write_file(&root.join("a/tagged"), b"tagged");
    tool(
        Command::new("setfattr")
            .args(["-n", "user.project", "-v", "ckpt-42"])
            .arg(root.join("a/tagged")),
    );
    tool(
        Command::new("setfattr")
            .args(["-n", "user.empty"])
            .arg(root.join("a/b")),
    );
    tool(
        Command::new("setfacl")
            .args(["-m", "u:65534:r,g:65534:rw"])
            .arg(root.join("a/b/c/deep")),
    );
    tool(
        Command::new("setfacl")
            .args(["-d", "-m", "u:65534:rx"])
            .arg(root.join("a/b/c")),
    );
    fs::set_permissions(
        root.join("a/b"),
        std::os::unix::fs::PermissionsExt::from_mode(0o750),
    )
    .unwrap();
    for (dir, when) in [
        ("a/b/c", "2001-02-03 04:05:06.123456789"),
        ("a/b", "2002-03-04 05:06:07.5"),
        ("a", "2003-04-05 06:07:08"),
    ] {
        tool(
            Command::new("touch")
                .args(["-h", "-d", when])
                .arg(root.join(dir)),
        );
    }
}

/// `getfattr -d` and `getfacl` of every entry under `root`, paths relative.
fn attributes(root: &Path) -> String {
    let mut out = String::new();
    for rel in walk(root) {
        let path = root.join(&rel);
        if fs::symlink_metadata(&path)
            .unwrap()
            .file_type()
            .is_symlink()
        {
            continue;
        }
        let xattrs = tool(
            Command::new("getfattr")
                .args(["-d", "-m", "^user\\.", "--absolute-names"])
                .arg(&path),
        );
        let acl = tool(
            Command::new("getfacl")
                .args(["-p", "--omit-header"])
                .arg(&path),
        );
        out += &format!("== {}\n{}{}", rel.display(), strip_names(&xattrs), acl);
    }
    out
}

fn strip_names(getfattr: &str) -> String {
    getfattr
        .lines()
        .filter(|l| !l.starts_with("# file:"))
        .map(|l| format!("{l}\n"))
        .collect()
}

fn assert_fidelity(reference: &Path, dst: &Path) {
    assert_same_tree(reference, dst);
    assert_eq!(attributes(reference), attributes(dst), "xattrs and ACLs");
    let a = fs::metadata(dst.join("a/linked")).unwrap();
    let b = fs::metadata(dst.join("a/b/also-linked")).unwrap();
    assert_eq!(a.ino(), b.ino(), "the hard-linked pair is one inode");
    assert_eq!(a.nlink(), 2);
}

#[test]
fn archive_copy_keeps_hard_links_xattrs_acls_and_directory_times() {
    let s = Scratch::new();
    let src = s.path("src");
    make_fidelity_tree(&src);
    let dst = s.path("dst");
    let out = run_ok(s.ferry().args(["cp", "-a", "--json"]).arg(&src).arg(&dst));
    let report = json(&out);
    assert_eq!(
        report["bytes_copied"].as_u64(),
        Some(5000 + 70_000 + 6),
        "the hard-linked data is copied once"
    );
    assert!(report["warnings"].as_array().unwrap().is_empty());
    assert_fidelity(&src, &dst);
}

#[test]
fn killed_archive_copy_finalized_without_its_sources_keeps_the_same_fidelity() {
    let s = Scratch::new();
    let src = s.path("src");
    make_fidelity_tree(&src);
    // The reference: what a complete copy looks like.
    let reference = s.path("reference");
    run_ok(s.ferry().args(["cp", "-a"]).arg(&src).arg(&reference));
    assert_fidelity(&src, &reference);

    let store = s.path("killed.db");
    let dst = s.path("dst");
    let out = run(ferry_at(&store)
        .env("FERRY_FAILPOINT", "commit.rename")
        .args(["cp", "-a", "--threads", "1"])
        .arg(&src)
        .arg(&dst));
    assert_eq!(out.status.signal(), Some(9), "killed before any rename");
    fs::remove_dir_all(&src).unwrap();
    run_ok(Command::new(FERRY).arg("finalize").arg(&store));
    assert_fidelity(&reference, &dst);
}

#[test]
fn verify_names_exactly_the_file_whose_byte_flipped() {
    let s = Scratch::new();
    let src = s.path("src");
    random_files(&src, 20, 3, 8, |i| 1000 + i * 997);
    let dst = s.path("dst");
    run_ok(
        s.ferry()
            .args(["cp", "-a", "--name", "v"])
            .arg(&src)
            .arg(&dst),
    );
    let out = run_ok(s.ferry().args(["verify", "v"]));
    assert!(out.stdout.is_empty(), "nothing to report");

    // Each file's checksum is in its record (status) and its copied event.
    let status = json(&run_ok(
        s.ferry().args(["status", "v", "--json", "--files"]),
    ));
    let store = SqliteStore::open(&s.store()).unwrap();
    let events = store.events_since(0, &Default::default(), 1 << 20).unwrap();
    for f in status["files"].as_array().unwrap() {
        if f["kind"] != "file" {
            continue;
        }
        let checksum = f["checksum"].as_str().unwrap();
        assert!(
            checksum.starts_with("xxh3:") && checksum.len() == 5 + 32,
            "{f}"
        );
        let copied = events
            .iter()
            .find(|e| {
                e.name == "file.copied" && e.entry.map(|i| u64::from(i.0)) == f["index"].as_u64()
            })
            .unwrap();
        assert_eq!(copied.context["checksum"], checksum);
    }

    let victim = dst.join("d1/f7");
    let mut bytes = fs::read(&victim).unwrap();
    bytes[1234] ^= 0x20;
    fs::write(&victim, &bytes).unwrap();
    let out = run(s.ferry().args(["verify", "v"]));
    assert_eq!(out.status.code(), Some(21));
    let stdout = String::from_utf8(out.stdout).unwrap();
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 1, "{stdout}");
    assert!(lines[0].starts_with(&format!("{}: expected xxh3:", victim.display())));

    // By path, as JSON, and a deleted file is named missing.
    fs::remove_file(dst.join("d2/f2")).unwrap();
    let out = run(s.ferry().args(["verify", "--json"]).arg(&dst));
    assert_eq!(out.status.code(), Some(21));
    let findings: Vec<serde_json::Value> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(findings.len(), 20);
    let bad: Vec<_> = findings
        .iter()
        .filter(|f| f["finding"] != "match")
        .collect();
    assert_eq!(bad.len(), 2);
    assert!(
        bad.iter()
            .any(|f| f["finding"] == "mismatch" && f["dest"].as_str().unwrap().ends_with("d1/f7"))
    );
    assert!(
        bad.iter()
            .any(|f| f["finding"] == "missing" && f["dest"].as_str().unwrap().ends_with("d2/f2"))
    );
}

/// The I/O seam flips a bit between what was read (and hashed) and what is
/// written: without verification the corrupt file would be committed; with
/// `--verify copied` it fails and never gets its final name.
#[test]
fn verify_copied_fails_a_file_whose_temporary_differs_from_what_was_read() {
    let s = Scratch::new();
    let src = s.path("src");
    let mut rng = fastrand::Rng::with_seed(9);
    for i in 0..8 {
        write_file(&src.join(format!("f{i}")), &random_bytes(&mut rng, 10_000));
    }
    // Without --verify: committed, and only `ferry verify` notices.
    let unverified = s.path("unverified");
    run_ok(
        s.ferry()
            .env("FERRY_FAILPOINT", "commit.write_data:3=corrupt")
            .args(["cp", "-a", "--threads", "1", "--name", "plain"])
            .arg(&src)
            .arg(&unverified),
    );
    assert_eq!(
        run(s.ferry().args(["verify", "plain"])).status.code(),
        Some(21)
    );

    let dst = s.path("dst");
    let out = run(s
        .ferry()
        .env("FERRY_FAILPOINT", "commit.write_data:3=corrupt")
        .args(["cp", "-a", "--threads", "1", "--verify", "copied", "--json"])
        .arg(&src)
        .arg(&dst));
    assert_eq!(out.status.code(), Some(1));
    let report = json(&out);
    let failures = report["failures"].as_array().unwrap();
    assert_eq!(failures.len(), 1, "{failures:?}");
    assert!(
        failures[0]["error"]
            .as_str()
            .unwrap()
            .contains("verification failed")
    );
    let failed = Path::new(failures[0]["path"].as_str().unwrap());
    assert!(
        !failed.exists(),
        "a file that failed verification is never renamed"
    );
    assert_eq!(report["files_committed"], 7);
    assert_no_partial_files(&src, &dst);
}

fn large_file_checksum(store: &Path) -> String {
    let store = SqliteStore::open(store).unwrap();
    let t = store.transfers().unwrap().pop().unwrap();
    let large = store
        .entries(t.id)
        .unwrap()
        .into_iter()
        .find(|e| e.dest.ends_with("large"))
        .unwrap();
    large
        .checksum
        .expect("the large file has a checksum")
        .to_string()
}

#[test]
fn a_killed_and_resumed_large_file_gets_the_checksum_of_an_uninterrupted_copy() {
    let s = Scratch::new();
    let src = s.path("src");
    let mut rng = fastrand::Rng::with_seed(10);
    // 72 MiB: pieces of 16 MiB, durable progress recorded at 32 and 64 MiB.
    write_file(&src.join("large"), &random_bytes(&mut rng, 72 << 20));
    for algo in ["xxh3", "blake3"] {
        let whole = s.path(&format!("whole-{algo}.db"));
        run_ok(
            ferry_at(&whole)
                .args(["cp", "-a", "--checksum", algo])
                .arg(&src)
                .arg(s.path(&format!("whole-{algo}"))),
        );
        let expected = large_file_checksum(&whole);
        assert!(expected.starts_with(algo));

        let killed = s.path(&format!("killed-{algo}.db"));
        let dst = s.path(&format!("killed-{algo}"));
        let out = run(ferry_at(&killed)
            .env("FERRY_FAILPOINT", "commit.record_progress:2")
            .args([
                "cp",
                "-a",
                "--threads",
                "1",
                "--name",
                "big",
                "--checksum",
                algo,
            ])
            .arg(&src)
            .arg(&dst));
        assert_eq!(out.status.signal(), Some(9));
        let report = json(&run_ok(ferry_at(&killed).args(["resume", "big", "--json"])));
        assert_eq!(
            report["bytes_reused"].as_u64(),
            Some(32 << 20),
            "the resume continued from the durable 32 MiB"
        );
        assert_eq!(large_file_checksum(&killed), expected, "{algo}");
        run_ok(ferry_at(&killed).args(["verify", "big"]));
    }
}

/// A large hashed file's ranges are written `O_DIRECT` (where the file
/// system allows it): an unaligned last block and data between holes at
/// odd offsets must still arrive exactly, with the checksum of the bytes.
#[test]
fn large_hashed_files_are_written_direct_and_unaligned_ends_still_arrive() {
    let s = Scratch::new();
    let src = s.path("src");
    let mut rng = fastrand::Rng::with_seed(12);
    // Dense, 40 MiB and 1,234 bytes: three ranges, the last ends mid-block.
    write_file(
        &src.join("dense"),
        &random_bytes(&mut rng, (40 << 20) + 1_234),
    );
    // Sparse: data, a hole, data at an odd offset, a hole to an odd size.
    let sparse = fs::File::create(src.join("sparse")).unwrap();
    sparse
        .write_all_at(&random_bytes(&mut rng, 1 << 20), 0)
        .unwrap();
    sparse
        .write_all_at(&random_bytes(&mut rng, 4_900), (20 << 20) + 100)
        .unwrap();
    sparse.set_len((40 << 20) + 333).unwrap();
    drop(sparse);

    let dst = s.path("dst");
    let trace = s.path("trace");
    let out = Command::new("strace")
        .args(["-f", "-e", "trace=openat,fcntl", "-o"])
        .arg(&trace)
        .arg(FERRY)
        .arg("--store")
        .arg(s.store())
        .args(["cp", "-a", "--name", "direct"])
        .arg(&src)
        .arg(&dst)
        .output()
        .expect("strace runs (.ci/run installs it)");
    assert!(out.status.success(), "{out:?}");
    assert_same_tree(&src, &dst);
    run_ok(s.ferry().args(["verify", "direct"]));
    let trace = fs::read_to_string(&trace).unwrap();
    let direct_opens: Vec<&str> = trace
        .lines()
        .filter(|l| l.contains("._ferry-") && l.contains("O_DIRECT"))
        .collect();
    assert!(
        !direct_opens.is_empty(),
        "the ranges' temporaries were opened O_DIRECT:\n{trace}"
    );
    if direct_opens.iter().any(|l| !l.contains("= -1")) {
        assert!(
            trace.contains("F_SETFL"),
            "the unaligned last block went through the page cache:\n{trace}"
        );
    }
}

#[test]
fn skip_mtime_copies_nothing_and_skip_checksum_recopies_only_the_changed_file() {
    let s = Scratch::new();
    let src = s.path("src");
    random_files(&src, 40, 4, 11, |i| 2000 + i * 100);
    let dst = s.path("dst");
    let contents = format!("{}/.", src.display());
    run_ok(s.ferry().args(["cp", "-a", &contents]).arg(&dst));

    let out = run_ok(
        s.ferry()
            .args([
                "cp", "-a", "--skip", "mtime", "--json", "--name", "again", &contents,
            ])
            .arg(&dst),
    );
    let report = json(&out);
    assert_eq!(report["bytes_copied"], 0, "no file data read or written");
    let status = json(&run_ok(
        s.ferry().args(["status", "again", "--json", "--files"]),
    ));
    assert_eq!(status["counts"]["skipped"], 40);
    assert_eq!(status["counts"]["copied"], 0, "nothing copied again");
    assert_same_tree(&src, &dst);

    // One destination changes behind our back, keeping its size and mtime:
    // the mtime rule cannot see it, the checksum rule recopies just it.
    let victim = dst.join("d2/f6");
    let meta = fs::metadata(&victim).unwrap();
    let mut bytes = fs::read(&victim).unwrap();
    bytes[100] ^= 0xff;
    fs::write(&victim, &bytes).unwrap();
    tool(
        Command::new("touch")
            .arg("-r")
            .arg(src.join("d2/f6"))
            .arg(&victim),
    );
    assert_eq!(fs::metadata(&victim).unwrap().mtime(), meta.mtime());
    let report = json(&run_ok(
        s.ferry()
            .args([
                "cp", "-a", "--skip", "checksum", "--json", "--name", "third", &contents,
            ])
            .arg(&dst),
    ));
    assert_eq!(report["bytes_copied"].as_u64(), Some(meta.len()));
    let status = json(&run_ok(
        s.ferry().args(["status", "third", "--json", "--files"]),
    ));
    assert_eq!(status["counts"]["skipped"], 39);
    let recopied: Vec<_> = status["files"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|f| f["kind"] == "file" && f["state"] == "committed")
        .collect();
    assert_eq!(recopied.len(), 1);
    assert!(recopied[0]["dest"].as_str().unwrap().ends_with("d2/f6"));
    assert_same_tree(&src, &dst);
}

/// Finalize checks the stored checksums too: a temporary damaged after the
/// copy (between the kill and the post-stage) fails, unrenamed, while the
/// others get their final names.
#[test]
fn finalize_verify_refuses_a_temporary_that_changed_after_the_copy() {
    let s = Scratch::new();
    let src = s.path("src");
    let mut rng = fastrand::Rng::with_seed(12);
    for i in 0..6 {
        write_file(&src.join(format!("f{i}")), &random_bytes(&mut rng, 30_000));
    }
    let store = s.path("rank.db");
    let dst = s.path("dst");
    let out = run(ferry_at(&store)
        .env("FERRY_FAILPOINT", "commit.rename")
        .args(["cp", "-a", "--threads", "1"])
        .arg(&src)
        .arg(&dst));
    assert_eq!(out.status.signal(), Some(9));
    // `dst/f3._ferry-ID`, or `dst._ferry-ID/f3` (a staged directory).
    let root = s.path("");
    let damaged = walk(&root)
        .into_iter()
        .find(|t| final_path_of(t) == (PathBuf::from("dst/f3"), true))
        .expect("f3's temporary");
    let damaged = root.join(damaged);
    let mut bytes = fs::read(&damaged).unwrap();
    bytes[10] ^= 1;
    fs::write(&damaged, &bytes).unwrap();

    let out = run(Command::new(FERRY)
        .args(["finalize", "--verify", "--json"])
        .arg(&store));
    assert_eq!(out.status.code(), Some(1), "the transfer failed");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("verification failed") && stdout.contains("f3"),
        "{stdout}"
    );
    assert!(!dst.join("f3").exists(), "never renamed");
    for i in [0, 1, 2, 4, 5] {
        assert_eq!(
            fs::read(dst.join(format!("f{i}"))).unwrap(),
            fs::read(src.join(format!("f{i}"))).unwrap()
        );
    }
}

/// A large file that failed `--verify copied` starts over on resume: its
/// durable prefix held the corruption, so nothing of it is trusted.
#[test]
fn a_large_file_that_failed_verification_is_copied_again_on_resume() {
    let s = Scratch::new();
    let src = s.path("src");
    let mut rng = fastrand::Rng::with_seed(13);
    write_file(&src.join("large"), &random_bytes(&mut rng, 72 << 20));
    let dst = s.path("dst");
    let out = run(s
        .ferry()
        .env("FERRY_FAILPOINT", "commit.write_data:1=corrupt")
        .args([
            "cp",
            "-a",
            "--threads",
            "1",
            "--verify",
            "copied",
            "--name",
            "v",
        ])
        .arg(&src)
        .arg(&dst));
    assert_eq!(out.status.code(), Some(1));
    assert!(!dst.join("large").exists());
    let report = json(&run_ok(
        s.ferry()
            .args(["resume", "v", "--verify", "copied", "--json"]),
    ));
    assert_eq!(report["state"], "completed");
    assert_eq!(
        report["bytes_copied"].as_u64(),
        Some(72 << 20),
        "copied again whole"
    );
    assert_eq!(
        fs::read(dst.join("large")).unwrap(),
        fs::read(src.join("large")).unwrap()
    );
    run_ok(s.ferry().args(["verify", "v"]));
}

/// A hard link whose leader fails before any data moves fails too, named,
/// and the run ends (it is never left waiting for its leader).
#[test]
fn a_hard_link_whose_leader_fails_early_fails_with_it() {
    let s = Scratch::new();
    let src = s.path("src");
    let mut rng = fastrand::Rng::with_seed(14);
    write_file(&src.join("big"), &random_bytes(&mut rng, 40 << 20));
    fs::hard_link(src.join("big"), src.join("link")).unwrap();
    let dst = s.path("dst");
    let out = run(s
        .ferry()
        .env("FERRY_FAILPOINT", "commit.record_progress")
        .args(["cp", "-a", "--threads", "1", "--name", "h"])
        .arg(&src)
        .arg(&dst));
    assert_eq!(out.status.signal(), Some(9));
    // The leader's temporary becomes something it cannot be reopened as.
    let temp = temps(&dst)
        .into_iter()
        .find(|t| t.to_string_lossy().starts_with("big."))
        .unwrap();
    fs::remove_file(dst.join(&temp)).unwrap();
    fs::create_dir(dst.join(&temp)).unwrap();
    let out = run(s.ferry().args(["resume", "h", "--json"]));
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("panicked"), "{stderr}");
    let report = json(&out);
    let failures = report["failures"].as_array().unwrap();
    assert!(
        failures
            .iter()
            .any(|f| f["path"].as_str().unwrap().ends_with("/link")
                && f["error"].as_str().unwrap().contains("a hard link to"))
    );
}

#[test]
fn rerunning_archive_copy_with_skip_over_hard_links_leaves_no_temporary() {
    let s = Scratch::new();
    let src = s.path("src");
    make_fidelity_tree(&src);
    let dst = s.path("dst");
    run_ok(s.ferry().args(["cp", "-a"]).arg(&src).arg(&dst));
    let contents = format!("{}/.", src.display());
    let report = json(&run_ok(
        s.ferry()
            .args(["cp", "-a", "--skip", "mtime", "--json", &contents])
            .arg(&dst),
    ));
    assert_eq!(report["bytes_copied"], 0);
    assert_fidelity(&src, &dst);
}

/// Paths given relative to one directory are recorded absolute, so that
/// verify (and resume, finalize) work from anywhere.
#[test]
fn relative_paths_are_recorded_absolute() {
    let s = Scratch::new();
    write_file(&s.path("src/f"), b"relative");
    run_ok(
        s.ferry()
            .current_dir(s.dir.path())
            .args(["cp", "-r", "--name", "rel", "src", "dst"]),
    );
    let out = run_ok(s.ferry().current_dir("/").args(["verify", "rel"]));
    assert!(out.stdout.is_empty());
    let status = json(&run_ok(
        s.ferry().args(["status", "rel", "--json", "--files"]),
    ));
    for f in status["files"].as_array().unwrap() {
        assert!(f["dest"].as_str().unwrap().starts_with('/'), "{f}");
        assert!(f["source"].as_str().unwrap().starts_with('/'), "{f}");
    }
}

#[test]
fn verify_without_checksums_is_refused() {
    let s = Scratch::new();
    write_file(&s.path("src/f"), b"x");
    let out = run(s
        .ferry()
        .args(["cp", "-r", "--checksum", "none", "--verify", "copied"])
        .arg(s.path("src"))
        .arg(s.path("dst")));
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--checksum none"));
}

/// As `cp -a`: a destination directory's default ACL does not stay on the
/// copies of files and directories that have no ACL at the source.
#[test]
fn archive_copy_drops_acls_inherited_from_the_destination() {
    let s = Scratch::new();
    let src = s.path("src");
    make_fidelity_tree(&src);
    let dst = s.path("dst");
    fs::create_dir(&dst).unwrap();
    tool(
        Command::new("setfacl")
            .args(["-d", "-m", "u:65534:rwx"])
            .arg(&dst),
    );
    let contents = format!("{}/.", src.display());
    run_ok(s.ferry().args(["cp", "-a", &contents]).arg(&dst));
    assert_fidelity(&src, &dst);
}
