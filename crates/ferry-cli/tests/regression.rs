//! One test per fixed bug, named after it.

mod util;

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::process::ExitStatusExt;
use std::sync::Arc;

use ferry::model::{NewTransfer, Owner};
use ferry::store::{SqliteStore, Store};
use ferry::{Kind, Preserve, Transfer};
use util::*;

#[test]
fn two_sources_with_one_base_name_are_refused() {
    let s = Scratch::new();
    write_file(&s.path("a/x"), &vec![b'A'; 100_000]);
    write_file(&s.path("b/x"), &vec![b'B'; 100_000]);
    fs::create_dir(s.path("dest")).unwrap();
    let out = run(s
        .ferry()
        .arg("cp")
        .arg(s.path("a/x"))
        .arg(s.path("b/x"))
        .arg(s.path("dest")));
    assert_eq!(out.status.code(), Some(6), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("dest/x"));
    assert!(!s.path("dest/x").exists());
}

/// A transfer left by a process that is gone: its owner is a child that
/// has exited.
fn dead_transfer(store: &Arc<SqliteStore>, s: &Scratch) -> ferry::TransferId {
    let child = std::process::Command::new("true").spawn().unwrap();
    let pid = child.id();
    let mut child = child;
    child.wait().unwrap();
    write_file(&s.path("src/f"), b"data");
    let entries = ferry::plan(&[s.path("src")], &s.path("dst"), true).unwrap();
    let owner = Owner {
        pid,
        ..Owner::current()
    };
    let new = NewTransfer {
        replaces: None,
        checksum: None,
        name: Some("orphan".into()),
        kind: Kind::Threads,
        caller: None,
        owner,
        preserve: Preserve::ALL,
        temp_suffix: ferry::model::DEFAULT_TEMP_SUFFIX.into(),
    };
    store.create_transfer(&new, &entries).unwrap().id
}

#[test]
fn two_resumes_of_one_dead_transfer_never_run_two_movers() {
    let s = Scratch::new();
    let store = Arc::new(SqliteStore::open(&s.store()).unwrap());
    dead_transfer(&store, &s);
    // Both handles saw the dead owner; only the first re-attach wins.
    let mut first = Transfer::open(store.clone(), "orphan").unwrap();
    let mut second = Transfer::open(store.clone(), "orphan").unwrap();
    first.resume(1).unwrap();
    let Err(err) = second.resume(1) else {
        panic!("the second resume must be refused");
    };
    assert!(matches!(err, ferry::Error::OwnerAlive { .. }), "{err}");
    assert_eq!(first.wait().unwrap().state, ferry::TransferState::Completed);
}

#[test]
fn a_large_file_whose_checkpoint_failed_is_never_committed() {
    // The first 32 MiB are a hole: the ranges holding data finish first
    // and the failing checkpoint races with the last range.
    let s = Scratch::new();
    let f = fs::File::create(s.path("big")).unwrap();
    f.set_len(48 << 20).unwrap();
    use std::os::unix::fs::FileExt;
    f.write_all_at(&vec![7u8; 16 << 20], 32 << 20).unwrap();
    drop(f);
    for i in 0..8 {
        let dst = s.path(&format!("copy{i}"));
        let store = s.path(&format!("state/{i}.db"));
        let out = run(ferry_at(&store)
            .env("FERRY_FAILPOINT", "commit.record_progress=eio")
            .args(["cp", "--threads", "3"])
            .arg(s.path("big"))
            .arg(&dst));
        // Either the checkpoint was reached (the file fails, nothing under
        // its final name) or the file finished first (and completed).
        match out.status.code() {
            Some(1) => assert!(!dst.exists(), "a failed file must not be visible"),
            Some(0) => assert_eq!(fs::read(&dst).unwrap(), fs::read(s.path("big")).unwrap()),
            other => panic!("exit {other:?}: {out:?}"),
        }
    }
}

#[test]
fn a_symlink_named_without_r_copies_its_target() {
    let s = Scratch::new();
    write_file(&s.path("target"), b"the content");
    std::os::unix::fs::symlink("target", s.path("link")).unwrap();
    run_ok(s.ferry().arg("cp").arg(s.path("link")).arg(s.path("out")));
    assert!(fs::symlink_metadata(s.path("out")).unwrap().is_file());
    assert_eq!(fs::read(s.path("out")).unwrap(), b"the content");
}

#[test]
fn dot_source_copies_the_contents_into_the_destination() {
    let s = Scratch::new();
    write_file(&s.path("src/a"), b"a");
    write_file(&s.path("src/sub/b"), b"b");
    fs::create_dir(s.path("dest")).unwrap();
    let mut dot = s.path("src").into_os_string();
    dot.push("/.");
    run_ok(s.ferry().args(["cp", "-r"]).arg(&dot).arg(s.path("dest")));
    assert_eq!(fs::read(s.path("dest/a")).unwrap(), b"a");
    assert_eq!(fs::read(s.path("dest/sub/b")).unwrap(), b"b");
    assert!(!s.path("dest/src").exists());
}

#[test]
fn an_existing_destination_directory_keeps_its_mode_without_p() {
    let s = Scratch::new();
    write_file(&s.path("src/f"), b"f");
    fs::set_permissions(s.path("src"), fs::Permissions::from_mode(0o755)).unwrap();
    fs::create_dir(s.path("project")).unwrap();
    fs::set_permissions(s.path("project"), fs::Permissions::from_mode(0o2775)).unwrap();
    let mut dot = s.path("src").into_os_string();
    dot.push("/.");
    run_ok(
        s.ferry()
            .args(["cp", "-r"])
            .arg(&dot)
            .arg(s.path("project")),
    );
    assert_eq!(
        fs::metadata(s.path("project")).unwrap().mode() & 0o7777,
        0o2775
    );
    assert_eq!(fs::read(s.path("project/f")).unwrap(), b"f");
    // With -a the source's mode is what cp -a gives it.
    run_ok(
        s.ferry()
            .args(["cp", "-a"])
            .arg(&dot)
            .arg(s.path("project")),
    );
    assert_eq!(
        fs::metadata(s.path("project")).unwrap().mode() & 0o7777,
        0o755
    );
}

#[test]
fn an_mtime_beyond_2262_does_not_overflow() {
    let s = Scratch::new();
    write_file(&s.path("future"), b"f");
    let touched = std::process::Command::new("touch")
        .args(["-d", "2300-01-01"])
        .arg(s.path("future"))
        .status()
        .unwrap();
    assert!(touched.success());
    let out = run(s
        .ferry()
        .args(["cp", "-p"])
        .arg(s.path("future"))
        .arg(s.path("copy")));
    assert!(out.status.success(), "{out:?}");
    assert_eq!(fs::read(s.path("copy")).unwrap(), b"f");
}

#[test]
fn a_symlink_planted_at_the_temporary_name_is_not_followed() {
    let s = Scratch::new();
    write_file(&s.path("x"), b"new content");
    write_file(&s.path("victim"), b"precious");
    fs::create_dir(s.path("dst")).unwrap();
    // Ids are handed out in order: the next transfer gets the last one's + 1.
    let last = {
        let store: Arc<dyn Store> = Arc::new(SqliteStore::open(&s.store()).unwrap());
        let t = Transfer::create(store, Some("probe"), Kind::Sync, Preserve::NONE, &[]).unwrap();
        t.record().id.0
    };
    std::os::unix::fs::symlink("../victim", s.path(&format!("dst/x._ferry-{}", last + 1))).unwrap();
    run_ok(s.ferry().arg("cp").arg(s.path("x")).arg(s.path("dst")));
    assert_eq!(fs::read(s.path("victim")).unwrap(), b"precious");
    assert!(fs::symlink_metadata(s.path("dst/x")).unwrap().is_file());
    assert_eq!(fs::read(s.path("dst/x")).unwrap(), b"new content");
}

#[test]
fn a_source_changed_after_it_was_added_fails_instead_of_arriving_mixed() {
    let s = Scratch::new();
    write_file(&s.path("src"), &vec![1u8; 50_000]);
    let store: Arc<dyn Store> = Arc::new(SqliteStore::open(&s.store()).unwrap());
    let entries = ferry::plan(&[s.path("src")], &s.path("dst"), false).unwrap();
    let mut t = Transfer::create(store, Some("t"), Kind::Sync, Preserve::NONE, &entries).unwrap();
    write_file(&s.path("src"), &vec![2u8; 20_000]);
    t.dispatch(1).unwrap();
    let report = t.wait().unwrap();
    assert_eq!(report.state, ferry::TransferState::Failed);
    assert!(
        report.failures[0].error.contains("changed during transfer"),
        "{:?}",
        report.failures
    );
    assert!(!s.path("dst").exists());
}

#[test]
fn a_resume_racing_a_resume_leaves_one_winner_and_an_identical_file() {
    // The same race through the CLI: two `ferry resume` at once after a crash.
    let s = Scratch::new();
    let mut rng = fastrand::Rng::with_seed(5);
    write_file(&s.path("src/big"), &random_bytes(&mut rng, 72 << 20));
    let out = run(s
        .ferry()
        .env("FERRY_FAILPOINT", "commit.record_progress:2")
        .args(["cp", "-r", "--threads", "1", "--name", "r"])
        .arg(s.path("src"))
        .arg(s.path("dst")));
    assert_eq!(out.status.signal(), Some(9));
    let a = s.ferry().args(["resume", "r"]).spawn().unwrap();
    let b = s.ferry().args(["resume", "r"]).spawn().unwrap();
    let codes: Vec<i32> = [a, b]
        .map(|c| c.wait_with_output().unwrap().status.code().unwrap())
        .to_vec();
    assert!(codes.contains(&0), "one resume completes: {codes:?}");
    assert!(
        codes.iter().all(|c| [0, 11, 13].contains(c)),
        "the other is refused: {codes:?}"
    );
    assert_eq!(
        fs::read(s.path("dst/big")).unwrap(),
        fs::read(s.path("src/big")).unwrap()
    );
}

#[test]
fn transfer_ids_of_two_fresh_stores_differ() {
    // Temporaries are named after ids; the stores of two ranks writing one
    // directory must not collide.
    let s = Scratch::new();
    let id = |name: &str| {
        let store: Arc<dyn Store> = Arc::new(SqliteStore::open(&s.path(name)).unwrap());
        Transfer::create(store, None, Kind::Sync, Preserve::NONE, &[])
            .unwrap()
            .record()
            .id
            .0
    };
    assert_ne!(id("a.db"), id("b.db"));
}

#[test]
fn a_freed_transfer_takes_no_more_changes() {
    let s = Scratch::new();
    write_file(&s.path("src/f"), b"f");
    let out = run(s
        .ferry()
        .env("FERRY_FAILPOINT", "commit.rename")
        .args(["cp", "-r", "--name", "gone"])
        .arg(s.path("src"))
        .arg(s.path("dst")));
    assert_eq!(out.status.signal(), Some(9));
    let store: Arc<dyn Store> = Arc::new(SqliteStore::open(&s.store()).unwrap());
    let mut handle = Transfer::open(store.clone(), "gone").unwrap();
    run_ok(s.ferry().arg("stop"));
    assert!(
        handle.resume(1).is_err(),
        "a freed transfer cannot be resumed"
    );
    let last = store.last_seq().unwrap();
    ferry::events::snapshot_at(store.as_ref(), last).expect("the log still replays");
}

/// `ferry hsm list | head -1` panicked (exit 101) on the closed pipe. The
/// reader end is closed before ferry starts, so its first line meets EPIPE
/// every time, not only when `head` wins a race.
#[test]
fn listing_commands_into_a_closed_pipe_never_panic() {
    let s = Scratch::new();
    for i in 0..3 {
        write_file(&s.path(&format!("src/d0/f{i}")), &[b'x'; 1000]);
    }
    run_ok(
        s.ferry()
            .args(["cp", "-r", "--name", "t"])
            .arg(s.path("src"))
            .arg(s.path("dst")),
    );
    let f = s.path("src/d0/f0");
    for action in ["archive", "restore"] {
        let _ = run(s.ferry().args(["hsm", action]).arg(&f));
    }
    let commands: &[&[&str]] = &[
        &["status"],
        &["status", "t", "--files"],
        &["status", "--json"],
        &["status", "--at", "1"],
        &["hsm", "list"],
        &["hsm", "list", "--json"],
        &["hsm", "stats"],
        &["hsm", "stats", "--json"],
        &["hsm", "status", "1"],
        &["verify", "t"],
        &["store", "check"],
        &["watch", "--until-done", "t"],
    ];
    for args in commands {
        let (reader, writer) = std::io::pipe().unwrap();
        drop(reader);
        let out = s
            .ferry()
            .args(*args)
            .stdout(writer)
            .stderr(std::process::Stdio::piped())
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        eprintln!("ferry {args:?}: {:?} {stderr}", out.status);
        assert!(
            matches!(out.status.code(), Some(0) | Some(141)),
            "ferry {args:?} into a closed pipe: {:?} {stderr}",
            out.status
        );
        assert!(!stderr.contains("panicked"), "{stderr}");
    }
}

/// Found by a new user: cancelling a finished transfer exited 16 with the
/// store's "cannot become cancelled from completed".
#[test]
fn cancelling_a_finished_transfer_says_there_is_nothing_to_cancel() {
    let s = Scratch::new();
    write_file(&s.path("src/f"), b"done");
    run_ok(
        s.ferry()
            .args(["cp", "--name", "done"])
            .arg(s.path("src/f"))
            .arg(s.path("dst")),
    );
    let out = run(s.ferry().args(["cancel", "done"]));
    assert_eq!(out.status.code(), Some(13), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("is completed: nothing to cancel"),
        "{stderr}"
    );
    let store = SqliteStore::open(&s.store()).unwrap();
    assert_eq!(
        store.transfer_by_name("done").unwrap().unwrap().state,
        ferry::TransferState::Completed
    );
}

/// Found by a new user: "verified 56 files of 1 transfers".
#[test]
fn verify_counts_in_words_that_agree_with_their_numbers() {
    let s = Scratch::new();
    write_file(&s.path("src/f"), b"one");
    run_ok(
        s.ferry()
            .args(["cp", "--name", "one"])
            .arg(s.path("src/f"))
            .arg(s.path("dst")),
    );
    let out = run_ok(s.ferry().args(["verify", "one"]));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("verified 1 file of 1 transfer:"),
        "{stderr}"
    );
}

/// Two processes opening a new store at the same moment (`hsm archive` and
/// `hsm worker` started together): one failed at once with exit 16
/// "database is locked" instead of waiting for the other's set-up. Twenty
/// processes of three kinds, held on one pipe and let go together (end of
/// file for all at once), all succeed and leave a sound store.
#[test]
fn twenty_processes_opening_one_new_store_at_once_all_succeed() {
    let s = Scratch::new();
    let store = s.path("state/fresh.db");
    let archive = s.path("archive");
    fs::create_dir(&archive).unwrap();
    fs::create_dir(s.path("dst")).unwrap();
    for i in 0..20 {
        write_file(
            &s.path(&format!("src/f{i}")),
            format!("file {i}").as_bytes(),
        );
    }
    let (gate, held) = std::io::pipe().unwrap();
    let children: Vec<_> = (0..20)
        .map(|i| {
            let source = s.path(&format!("src/f{i}"));
            let mut cmd = std::process::Command::new("sh");
            cmd.args(["-c", "read go; exec \"$0\" \"$@\""])
                .arg(FERRY)
                .arg("--store")
                .arg(&store);
            match i % 3 {
                0 => cmd.arg("cp").arg(&source).arg(s.path(&format!("dst/f{i}"))),
                1 => cmd.args(["hsm", "archive"]).arg(&source),
                _ => cmd
                    .args(["hsm", "worker", "--until-idle", "--archive"])
                    .arg(format!("posix:{}", archive.display())),
            };
            cmd.env_remove("FERRY_FAILPOINT")
                .stdin(gate.try_clone().unwrap())
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    drop(gate);
    assert!(!store.exists(), "nobody has opened it yet");
    drop(held);
    for child in children {
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "{}: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    run_ok(ferry_at(&store).args(["store", "check"]));
}
