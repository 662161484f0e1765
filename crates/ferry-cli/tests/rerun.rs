//! No surprises when things go wrong: the same command run again is the
//! same transfer, waits end, resumes keep their options.

mod util;

use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::time::{Duration, Instant};

use ferry::TransferState;
use ferry::store::{SqliteStore, Store};
use util::*;

fn tree(root: &Path, files: usize, seed: u64) {
    random_files(root, files, 3, seed, |i| 1000 + i * 97);
}

fn killed(out: &std::process::Output) -> bool {
    out.status.signal() == Some(9)
}

fn stderr(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// `ferry cp -a SRC DST`, killed in its first batch's renames: DST exists
/// (directories come first), so cp's rule alone would nest the re-run.
fn killed_copy(s: &Scratch, src: &Path, dst: &Path) {
    let out = run(s
        .ferry()
        .env("FERRY_FAILPOINT", "commit.rename:3")
        .args(["cp", "-a", "--threads", "2"])
        .arg(src)
        .arg(dst));
    assert!(killed(&out), "{out:?}");
    assert!(dst.is_dir(), "the first run made {dst:?}");
}

#[test]
fn the_same_cp_after_a_kill_continues_the_transfer_and_never_nests() {
    let s = Scratch::new();
    let (src, dst) = (s.path("src"), s.path("dst"));
    tree(&src, 40, 1);
    killed_copy(&s, &src, &dst);
    let killed_pid = SqliteStore::open(&s.store()).unwrap().transfers().unwrap()[0]
        .owner
        .pid;
    let out = run_ok(s.ferry().args(["cp", "-a"]).arg(&src).arg(&dst));
    assert!(stderr(&out).contains("continuing it"), "{out:?}");
    // The message names the killed process, not the one that took over.
    assert!(
        stderr(&out).contains(&format!("dead process {killed_pid} ")),
        "{out:?}"
    );
    assert!(!dst.join("src").exists(), "the re-run nested into DST/src");
    assert_same_tree(&src, &dst);
    assert!(temps(&dst).is_empty(), "{:?}", temps(&dst));
    // One transfer, continued, not a second one.
    let store = SqliteStore::open(&s.store()).unwrap();
    let transfers = store.transfers().unwrap();
    assert_eq!(transfers.len(), 1, "{transfers:?}");
    assert_eq!(transfers[0].state, TransferState::Completed);
}

/// A job script's copy, its post-stage `ferry finalize`, then the same
/// copy again: nothing to do, and the exit status says success (it said
/// "some files failed", naming none, while the transfer read `finalized`).
#[test]
fn the_same_cp_after_finalize_has_nothing_to_do_and_exits_0() {
    let s = Scratch::new();
    let (src, dst) = (s.path("src"), s.path("dst"));
    tree(&src, 5, 4);
    run_ok(s.ferry().args(["cp", "-a"]).arg(&src).arg(&dst));
    run_ok(s.ferry().arg("finalize").arg(s.store()));
    let out = run(s.ferry().args(["cp", "-a", "--json"]).arg(&src).arg(&dst));
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert_eq!(json(&out)["files_failed"], 0, "{out:?}");
    assert!(!dst.join("src").exists(), "the re-run nested into DST/src");
    assert_same_tree(&src, &dst);
}

#[test]
fn the_same_cp_after_it_completed_brings_the_destination_up_to_date_in_place() {
    let s = Scratch::new();
    let (src, dst) = (s.path("src"), s.path("dst"));
    tree(&src, 10, 2);
    run_ok(s.ferry().args(["cp", "-a"]).arg(&src).arg(&dst));
    write_file(&src.join("d0/new"), b"added later");
    write_file(&src.join("d1/f1"), b"changed");
    // verify's suggested fix is this command line: it must not nest either.
    let out = run_ok(
        s.ferry()
            .args(["cp", "-a", "--skip", "checksum", "--json"])
            .arg(&src)
            .arg(&dst),
    );
    assert!(stderr(&out).contains("up to date"), "{out:?}");
    assert!(!dst.join("src").exists(), "the re-run nested into DST/src");
    assert_same_tree(&src, &dst);
    let report = json(&out);
    assert_eq!(
        report["bytes_copied"], 18,
        "only the two changed files: {report}"
    );
    // Without --skip: the files that match by size and mtime are skipped.
    let out = run_ok(s.ferry().args(["cp", "-a", "--json"]).arg(&src).arg(&dst));
    assert_eq!(json(&out)["bytes_copied"], 0, "{out:?}");
    // --new: cp's rules, a new copy nested into the existing DST.
    run_ok(s.ferry().args(["cp", "-a", "--new"]).arg(&src).arg(&dst));
    assert_same_tree(&src, &dst.join("src"));
}

/// rsync's second run: what already matches is left exactly as it is (no
/// chown, chmod or utimens: its ctime does not move), and only what differs
/// — a mode, an owner, an ACL — is put back.
#[test]
fn a_rerun_over_an_unchanged_tree_touches_no_inode_and_restores_what_differs() {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let s = Scratch::new();
    let (src, dst) = (s.path("src"), s.path("dst"));
    tree(&src, 12, 4);
    run_ok(s.ferry().args(["cp", "-a"]).arg(&src).arg(&dst));
    let files: Vec<_> = walk(&dst)
        .into_iter()
        .filter(|rel| dst.join(rel).is_file())
        .collect();
    assert!(files.len() >= 12, "{files:?}");
    let ctime = |rel: &Path| {
        let m = std::fs::symlink_metadata(dst.join(rel)).unwrap();
        (m.ctime(), m.ctime_nsec())
    };
    let (moded, acled) = (&files[0], &files[1]);
    std::fs::set_permissions(dst.join(moded), std::fs::Permissions::from_mode(0o640)).unwrap();
    let setfacl = std::process::Command::new("setfacl")
        .args(["-m", "u:65534:r"])
        .arg(dst.join(acled))
        .status()
        .unwrap();
    assert!(setfacl.success());
    let before: Vec<_> = files.iter().map(|rel| ctime(rel)).collect();

    let out = run_ok(s.ferry().args(["cp", "-a", "--json"]).arg(&src).arg(&dst));
    assert_eq!(json(&out)["bytes_copied"], 0, "{out:?}");
    assert_same_tree(&src, &dst);
    let acl = std::process::Command::new("getfacl")
        .args(["-c", "-p"])
        .arg(dst.join(acled))
        .output()
        .unwrap();
    assert!(
        !String::from_utf8_lossy(&acl.stdout).contains("user:65534"),
        "the ACL the source lacks is removed again: {acl:?}"
    );
    for (rel, before) in files.iter().zip(before) {
        let restored = rel == moded || rel == acled;
        assert_eq!(
            ctime(rel) != before,
            restored,
            "{rel:?}: only what differed is written (ctime {:?} before, {:?} after)",
            before,
            ctime(rel)
        );
    }
}

#[test]
fn wait_and_watch_until_done_end_when_the_owner_was_killed() {
    let s = Scratch::new();
    let (src, dst) = (s.path("src"), s.path("dst"));
    tree(&src, 20, 3);
    let out = run(s
        .ferry()
        .env("FERRY_FAILPOINT", "commit.rename:3")
        .args(["cp", "-r", "--name", "job"])
        .arg(&src)
        .arg(&dst));
    assert!(killed(&out), "{out:?}");
    for args in [&["wait", "job"][..], &["watch", "--until-done", "job"][..]] {
        let mut child = s
            .ferry()
            .args(args)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(30);
        let status = loop {
            if let Some(status) = child.try_wait().unwrap() {
                break status;
            }
            if Instant::now() > deadline {
                child.kill().unwrap();
                panic!("`ferry {args:?}` still waits on a dead owner after 30 s");
            }
            std::thread::park_timeout(Duration::from_millis(20));
        };
        let out = child.wait_with_output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(status.code(), Some(28), "{args:?}: {err}");
        assert!(err.contains("ferry resume job"), "{args:?}: {err}");
    }
}

/// Dispatched with `--verify copied`, killed, resumed with a bit flipped
/// as it is written: the resume must read it back and refuse to rename it.
#[test]
fn resume_runs_with_the_options_the_transfer_was_dispatched_with() {
    let s = Scratch::new();
    let (src, dst) = (s.path("src"), s.path("dst"));
    tree(&src, 20, 5);
    let out = run(s
        .ferry()
        .env("FERRY_FAILPOINT", "commit.write_data:5")
        .args([
            "cp",
            "-a",
            "--name",
            "v",
            "--verify",
            "copied",
            "--threads",
            "3",
        ])
        .arg(&src)
        .arg(&dst));
    assert!(killed(&out), "{out:?}");
    let out = run(s
        .ferry()
        .env("FERRY_FAILPOINT", "commit.write_data:1=corrupt")
        .args(["resume", "v"]));
    let err = stderr(&out);
    assert!(err.contains("--verify copied"), "{err}");
    assert!(err.contains("--threads 3"), "{err}");
    assert_eq!(
        out.status.code(),
        Some(1),
        "the flipped bit was committed: {err}"
    );
    assert!(err.contains("verification failed"), "{err}");
    // What the store recorded for the resume, not only what it printed.
    let store = SqliteStore::open(&s.store()).unwrap();
    let id = store.transfer_by_name("v").unwrap().unwrap().id;
    let filter = ferry::store::EventFilter {
        transfer: Some(id),
        kind: Some("transfer.dispatched".into()),
        ..Default::default()
    };
    let dispatches = store.events_since(0, &filter, 100).unwrap();
    assert_eq!(dispatches.len(), 2);
    let resumed = &dispatches[1].context;
    assert_eq!(resumed["action"], "resume", "{resumed}");
    assert_eq!(resumed["verify"], "copied", "{resumed}");
    assert_eq!(resumed["workers"], 3, "{resumed}");
    // Given on the command line, an option wins over the recorded one.
    let out = run_ok(s.ferry().args(["resume", "v", "--verify", "none"]));
    assert!(stderr(&out).contains("--verify none"), "{out:?}");
    assert_same_tree(&src, &dst);
}

/// A job script with a fixed `--name`, run twice, then cleaned up.
#[test]
fn a_fixed_name_runs_twice_and_only_forget_or_stop_all_frees_a_finished_transfer() {
    let s = Scratch::new();
    let (src, dst) = (s.path("src"), s.path("dst"));
    tree(&src, 5, 6);
    for _ in 0..2 {
        run_ok(
            s.ferry()
                .args(["cp", "-a", "--name", "job"])
                .arg(&src)
                .arg(&dst),
        );
    }
    assert_same_tree(&src, &dst);
    run_ok(
        s.ferry()
            .args(["cp", "-a", "--name", "other"])
            .arg(&src)
            .arg(s.path("dst2")),
    );
    // Plain stop keeps finished transfers, and says how to free them.
    let out = run_ok(s.ferry().arg("stop"));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("ferry forget NAME"), "{text}");
    assert!(text.contains("--all"), "{text}");
    run_ok(s.ferry().args(["status", "job"]));
    // forget frees one.
    let out = run_ok(s.ferry().args(["forget", "job"]));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("job"),
        "{out:?}"
    );
    assert_eq!(
        run(s.ferry().args(["status", "job"])).status.code(),
        Some(10)
    );
    run_ok(s.ferry().args(["status", "other"]));
    assert_eq!(
        run(s.ferry().args(["forget", "job"])).status.code(),
        Some(10)
    );
    // stop --all frees the rest.
    run_ok(s.ferry().args(["stop", "--all"]));
    assert_eq!(
        run(s.ferry().args(["status", "other"])).status.code(),
        Some(10)
    );
    assert_same_tree(&src, &dst);
}

/// `cp afile newdir/` with newdir missing: refused up front, as cp does,
/// with nothing written (no `newdir._ferry-ID`, no resume that can never
/// succeed).
#[test]
fn a_missing_directory_named_with_a_trailing_slash_is_refused_before_anything_is_written() {
    let s = Scratch::new();
    write_file(&s.path("afile"), b"data");
    let dest = format!("{}/", s.path("newdir").display());
    let out = run(s.ferry().arg("cp").arg(s.path("afile")).arg(&dest));
    assert_eq!(out.status.code(), Some(37), "{out:?}");
    let err = stderr(&out);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.contains("newdir/") && err.contains("no such directory"),
        "{err}"
    );
    let left: Vec<_> = std::fs::read_dir(s.dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .filter(|n| n.to_string_lossy().starts_with("newdir"))
        .collect();
    assert!(left.is_empty(), "{left:?}");
    let store = SqliteStore::open(&s.store()).unwrap();
    assert!(store.transfers().unwrap().is_empty());

    // Below a file (`cp f afile/x`): that file is named, as not a
    // directory, never as a permission it does not lack.
    let under_a_file = s.path("afile").join("x");
    let out = run(s.ferry().arg("cp").arg(s.path("afile")).arg(&under_a_file));
    assert_eq!(out.status.code(), Some(37), "{out:?}");
    let err = stderr(&out);
    assert!(
        err.contains("afile") && err.contains("not a directory") && !err.contains("permission"),
        "{err}"
    );
}

/// A destination directory owned by another user: one line naming it and
/// the permission, nothing written (root: runs ferry as uid 64002).
#[test]
fn a_destination_owned_by_another_user_is_refused_in_one_line() {
    if !rustix::process::geteuid().is_root() {
        eprintln!("skipped: needs root to act as two users");
        return;
    }
    let s = Scratch::new();
    // Both users must reach the scratch directory, the store and the source.
    std::fs::set_permissions(
        s.dir.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o777),
    )
    .unwrap();
    write_file(&s.path("src/f"), b"data");
    let theirs = s.path("theirs");
    std::fs::create_dir(&theirs).unwrap();
    std::os::unix::fs::chown(&theirs, Some(64001), Some(64001)).unwrap();
    let store = s.path("mine/ferry.db");
    std::fs::create_dir(s.path("mine")).unwrap();
    std::os::unix::fs::chown(s.path("mine"), Some(64002), Some(64002)).unwrap();
    let out = run(std::process::Command::new("setpriv")
        .args(["--reuid=64002", "--regid=64002", "--clear-groups", FERRY])
        .arg("--store")
        .arg(&store)
        .args(["cp", "-r"])
        .arg(s.path("src"))
        .arg(theirs.join("copy")));
    assert_eq!(out.status.code(), Some(37), "{out:?}");
    let err = stderr(&out);
    assert_eq!(err.lines().count(), 1, "one line, not a cascade: {err}");
    assert!(
        err.contains(&*theirs.to_string_lossy()) && err.contains("permission denied"),
        "{err}"
    );
    assert!(std::fs::read_dir(&theirs).unwrap().next().is_none());
}

/// SIGINT (Ctrl-C) or SIGTERM to a `ferry cp` surely mid-transfer (paused
/// at its first write through the fail point's FIFO): it records the
/// interruption, says how to continue, exits 128 + the signal; the resume
/// it names completes the copy.
#[test]
fn a_signal_to_cp_records_the_interruption_and_names_the_resume() {
    for (signal, code) in [(libc::SIGINT, 130), (libc::SIGTERM, 143)] {
        let s = Scratch::new();
        let (src, dst) = (s.path("src"), s.path("dst"));
        tree(&src, 6, 7);
        let fifo = s.path("pause");
        run_ok(std::process::Command::new("mkfifo").arg(&fifo));
        let child = s
            .ferry()
            .env("FERRY_FAILPOINT", "commit.write_data=pause")
            .env("FERRY_FAILPOINT_FIFO", &fifo)
            .args(["cp", "-a", "--threads", "1", "--name", "ctrl-c"])
            .arg(&src)
            .arg(&dst)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        // Returns once ferry is paused at its first write.
        let pause = std::fs::OpenOptions::new().write(true).open(&fifo).unwrap();
        let store = SqliteStore::open(&s.store()).unwrap();
        let filter = ferry::store::EventFilter {
            kind: Some("transfer.cancelled".into()),
            ..Default::default()
        };
        let mut watch = ferry::events::Watch::new(&store, 0, filter).unwrap();
        // SAFETY: kill(2) on our own child's pid.
        assert_eq!(unsafe { libc::kill(child.id() as i32, signal) }, 0);
        let deadline = Instant::now() + Duration::from_secs(30);
        let cancelled = loop {
            let left = deadline.saturating_duration_since(Instant::now());
            assert!(!left.is_zero(), "no interruption recorded within 30 s");
            if let Some(ferry::events::WatchItem::Event(e)) =
                watch.next_timeout(Some(left)).unwrap()
            {
                break e;
            }
        };
        let expected = if signal == libc::SIGINT {
            "SIGINT"
        } else {
            "SIGTERM"
        };
        assert_eq!(cancelled.context["interrupted"], expected, "{cancelled:?}");
        drop(pause);
        let out = child.wait_with_output().unwrap();
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(code), "{err}");
        assert!(err.contains("interrupted"), "{err}");
        assert!(err.contains("`ferry resume ctrl-c`"), "{err}");
        run_ok(s.ferry().args(["resume", "ctrl-c"]));
        assert_same_tree(&src, &dst);
    }
}

/// A store in a directory the user cannot write: exit 15 and the cause
/// (the directory and the permission), not SQLite's bare "unable to open
/// database file". Reading commands create nothing. (Root: runs ferry as
/// uid 64002.)
#[test]
fn a_store_that_cannot_be_opened_names_its_cause_and_reading_creates_nothing() {
    let s = Scratch::new();
    write_file(&s.path("f"), b"data");
    // Reading a store that is not there: "no store", and nothing made.
    let missing = s.path("state/none.db");
    let out = run(ferry_at(&missing).arg("status"));
    assert_eq!(out.status.code(), Some(15), "{out:?}");
    assert!(stderr(&out).contains("no store at"), "{out:?}");
    assert!(!missing.exists());
    let out = run(ferry_at(&missing).args(["wait", "x"]));
    assert_eq!(out.status.code(), Some(15), "{out:?}");
    assert!(!missing.exists());
    if !rustix::process::geteuid().is_root() {
        eprintln!("skipped the second part: needs root to act as another user");
        return;
    }
    std::fs::set_permissions(
        s.dir.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o777),
    )
    .unwrap();
    let locked = s.path("locked");
    std::fs::create_dir(&locked).unwrap();
    let out = run(std::process::Command::new("setpriv")
        .args(["--reuid=64002", "--regid=64002", "--clear-groups", FERRY])
        .arg("--store")
        .arg(locked.join("x.db"))
        .arg("cp")
        .arg(s.path("f"))
        .arg(s.path("g")));
    assert_eq!(out.status.code(), Some(15), "{out:?}");
    let err = stderr(&out);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.contains(&*locked.to_string_lossy()) && err.contains("permission denied"),
        "{err}"
    );
}

/// 64 per-rank stores of one small transfer each, finalized.
fn finalized_rank_stores(s: &Scratch) -> std::path::PathBuf {
    let ranks = s.path("ranks");
    std::fs::create_dir(&ranks).unwrap();
    write_file(&s.path("src/f"), &[7u8; 4096]);
    for rank in 0..64 {
        run_ok(
            ferry_at(&ranks.join(format!("rank.{rank}.db")))
                .arg("cp")
                .arg(s.path("src/f"))
                .arg(s.path(&format!("out.{rank}"))),
        );
    }
    let out = run(std::process::Command::new(FERRY)
        .arg("finalize")
        .arg(&ranks));
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    ranks
}

#[test]
fn finalize_leaves_each_store_checkpointed_without_wal_or_shm() {
    let s = Scratch::new();
    let ranks = finalized_rank_stores(&s);
    let journals: Vec<_> = std::fs::read_dir(&ranks)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with("-wal") || n.ends_with("-shm"))
        .collect();
    assert!(journals.is_empty(), "{journals:?}");
    // What finalize controls (the stores and their journals, not the
    // reserve beside each, sized elsewhere) fits 256 KiB a rank.
    use std::os::unix::fs::MetadataExt;
    let bytes: u64 = std::fs::read_dir(&ranks)
        .unwrap()
        .map(|e| e.unwrap())
        .filter(|e| !e.file_name().to_string_lossy().ends_with(".reserve"))
        .map(|e| e.metadata().unwrap().blocks() * 512)
        .sum();
    assert!(
        bytes < 64 * 256 * 1024,
        "{bytes} bytes besides the reserves"
    );
    // Settled, not damaged: each store still reads, finalized.
    for rank in [0, 63] {
        let store = SqliteStore::open(&ranks.join(format!("rank.{rank}.db"))).unwrap();
        assert_eq!(
            store.transfers().unwrap()[0].state,
            TransferState::Finalized
        );
    }
}

#[test]
fn sixty_four_finalized_rank_stores_take_under_256_kib_each_on_disk() {
    use std::os::unix::fs::MetadataExt;
    let s = Scratch::new();
    let ranks = finalized_rank_stores(&s);
    let bytes: u64 = std::fs::read_dir(&ranks)
        .unwrap()
        .map(|e| e.unwrap().metadata().unwrap().blocks() * 512)
        .sum();
    assert!(
        bytes < 64 * 256 * 1024,
        "64 rank stores take {bytes} bytes on disk"
    );
}

/// Found by a new user: the message named the process that took over as
/// the dead one.
#[test]
fn a_named_cp_after_a_kill_names_the_killed_process() {
    let s = Scratch::new();
    let (src, dst) = (s.path("src"), s.path("dst"));
    tree(&src, 40, 1);
    let out = run(s
        .ferry()
        .env("FERRY_FAILPOINT", "commit.rename:3")
        .args(["cp", "-a", "--name", "ckpt"])
        .arg(&src)
        .arg(&dst));
    assert!(killed(&out), "{out:?}");
    let killed_pid = SqliteStore::open(&s.store()).unwrap().transfers().unwrap()[0]
        .owner
        .pid;
    // The same name, another destination: not the same copy, so `create`
    // re-attaches the name's dead transfer (which keeps its destination).
    let out = run_ok(
        s.ferry()
            .args(["cp", "-a", "--name", "ckpt"])
            .arg(&src)
            .arg(s.path("elsewhere")),
    );
    assert!(
        stderr(&out).contains(&format!("dead process {killed_pid} ")),
        "{out:?}"
    );
    assert_same_tree(&src, &dst);
}

/// The same `cp --kind daemon` command line, run again: after a kill -9 of
/// the daemon mid-copy and its restart (the restarted daemon holds the
/// resumed transfer mid-copy: the re-run meets it running), and after it
/// completed. Each converges to the one tree, never nested into DST/src.
#[test]
fn the_same_daemon_cp_after_a_daemon_kill_and_after_it_completed_converges() {
    use std::io::BufRead;
    use util::daemon::{Daemon, mkfifo, paused};
    let s = Scratch::new();
    let (src, dst) = (s.path("src"), s.path("dst"));
    random_files(&src, 8, 2, 5, |i| 60_000 + i * 1000);
    let socket = s.path("ferry.sock");
    let cp = || {
        let mut cmd = s.ferry();
        cmd.arg("--socket")
            .arg(&socket)
            .args(["cp", "--kind", "daemon", "-a", "--threads", "1"])
            .arg(&src)
            .arg(&dst);
        cmd
    };
    // The daemon, held at its third write, is killed there (kill -9).
    let fifo = s.path("pause");
    mkfifo(&fifo);
    let mut first = Daemon::serve_paused(&s, "commit.write_data:3", &fifo);
    run_ok(&mut cp());
    let pause = paused(&fifo);
    first.child.kill().unwrap();
    assert_eq!(first.exited().signal(), Some(9), "{}", first.log());
    drop(pause);
    assert!(dst.is_dir(), "the first run made {dst:?}");
    // Restarted, it resumes the copy and is held at its first write.
    let second = Daemon::serve_paused(&s, "commit.write_data", &fifo);
    let pause = paused(&fifo);
    let mut again = cp()
        .arg("--wait")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut err = std::io::BufReader::new(again.stderr.take().unwrap());
    let mut said = String::new();
    err.read_line(&mut said).unwrap();
    assert!(
        said.contains("this copy is transfer") && said.contains("the daemon is moving it"),
        "{said}"
    );
    drop(pause);
    let out = again.wait_with_output().unwrap();
    assert!(out.status.success(), "{out:?}\n{}", second.log());
    assert!(!dst.join("src").exists(), "the re-run nested into DST/src");
    assert_same_tree(&src, &dst);
    // Once more, now that it completed: brought up to date in place.
    let out = run_ok(cp().arg("--wait"));
    assert!(stderr(&out).contains("already copied this"), "{out:?}");
    assert!(!dst.join("src").exists(), "the re-run nested into DST/src");
    assert_same_tree(&src, &dst);
    // One copy made the tree; the up-to-date run copied nothing again.
    let rows = json(&run_ok(
        s.ferry()
            .arg("--socket")
            .arg(&socket)
            .args(["--daemon", "status", "--json"]),
    ));
    let completed: Vec<_> = rows
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["state"] == "completed")
        .collect();
    assert_eq!(completed.len(), 2, "{rows}");
    assert_eq!(completed[0]["counts"]["copied"], 8, "{rows}");
    assert_eq!(completed[1]["counts"]["skipped"], 8, "{rows}");
}

/// Names no one could type or print are refused before anything is made:
/// exit 29, the name and why, no store entry, no destination.
#[test]
fn names_that_cannot_be_typed_or_printed_are_refused_with_exit_29() {
    let s = Scratch::new();
    write_file(&s.path("f"), b"data");
    let long = "n".repeat(256);
    for (name, why) in [
        ("", "empty"),
        ("two\nlines", "control character"),
        (long.as_str(), "too long"),
        (" padded", "space"),
    ] {
        let out = run(s
            .ferry()
            .args(["cp", "--name", name])
            .arg(s.path("f"))
            .arg(s.path("g")));
        assert_eq!(out.status.code(), Some(29), "{name:?}: {out:?}");
        assert!(stderr(&out).contains(why), "{name:?}: {out:?}");
        assert!(!s.path("g").exists(), "{name:?}: nothing is written");
    }
    let ok = "n".repeat(255);
    run_ok(
        s.ferry()
            .args(["cp", "--name", &ok])
            .arg(s.path("f"))
            .arg(s.path("g")),
    );
}

/// rsync's second run, by the record: the same `cp -a` over a finished copy
/// compares each source and destination with what the copy recorded, writes
/// nothing to the store when nothing changed, and makes a transfer of what
/// changed only — a changed file, an xattr given to a source, a hard link
/// removed at the destination (its whole group comes back linked) — after
/// which `verify` checks each destination against its newest record.
#[test]
fn a_rerun_over_a_finished_copy_writes_only_what_changed() {
    use std::os::unix::fs::MetadataExt;
    let s = Scratch::new();
    let (src, dst) = (s.path("src"), s.path("dst"));
    tree(&src, 30, 7);
    write_file(&src.join("linked"), b"one inode, two names");
    std::fs::hard_link(src.join("linked"), src.join("d0/linked-too")).unwrap();
    std::os::unix::fs::symlink("d0", src.join("to-d0")).unwrap();
    run_ok(s.ferry().args(["cp", "-a"]).arg(&src).arg(&dst));
    assert_same_tree(&src, &dst);
    let store = SqliteStore::open(&s.store()).unwrap();
    let seq = store.last_seq().unwrap();
    let store_bytes = || std::fs::metadata(s.store()).unwrap().len();
    let before = store_bytes();

    // Nothing changed: nothing is written, and the summary says so.
    let out = run_ok(s.ferry().args(["cp", "-a", "--json"]).arg(&src).arg(&dst));
    assert!(stderr(&out).contains("nothing changed since"), "{out:?}");
    let report = json(&out);
    assert_eq!(report["bytes_copied"], 0, "{report}");
    assert_eq!(report["files"], report["files_skipped"], "{report}");
    assert_eq!(
        store.last_seq().unwrap(),
        seq,
        "no event for an unchanged tree"
    );
    assert_eq!(store.transfers().unwrap().len(), 1);
    assert_eq!(store_bytes(), before);

    // Three changes: content, an xattr at the source, a link removed at the
    // destination.
    write_file(&src.join("d1/f1"), b"changed");
    let xattr = std::process::Command::new("setfattr")
        .args(["-n", "user.tag", "-v", "new"])
        .arg(src.join("d2/f2"))
        .status()
        .unwrap();
    assert!(xattr.success());
    std::fs::remove_file(dst.join("d0/linked-too")).unwrap();
    let out = run_ok(s.ferry().args(["cp", "-a", "--json"]).arg(&src).arg(&dst));
    assert!(stderr(&out).contains("new or changed"), "{out:?}");
    assert_same_tree(&src, &dst);
    let transfers = store.transfers().unwrap();
    assert_eq!(transfers.len(), 2, "{transfers:?}");
    let files: Vec<_> = store
        .entries(transfers[1].id)
        .unwrap()
        .into_iter()
        .filter(|e| e.kind != ferry::model::EntryKind::Dir)
        .map(|e| e.dest.strip_prefix(&dst).unwrap().to_path_buf())
        .collect();
    let mut expected: Vec<_> = ["d0/linked-too", "d1/f1", "d2/f2", "linked"]
        .iter()
        .map(std::path::PathBuf::from)
        .collect();
    let mut files_sorted = files.clone();
    files_sorted.sort();
    expected.sort();
    assert_eq!(
        files_sorted, expected,
        "only what changed is in the new transfer"
    );
    let (a, b) = (
        std::fs::metadata(dst.join("linked")).unwrap(),
        std::fs::metadata(dst.join("d0/linked-too")).unwrap(),
    );
    assert_eq!(a.ino(), b.ino(), "the hard link group came back linked");
    let got = std::process::Command::new("getfattr")
        .args(["--only-values", "-n", "user.tag"])
        .arg(dst.join("d2/f2"))
        .output()
        .unwrap();
    assert_eq!(got.stdout, b"new", "{got:?}");
    // The first transfer's record of d1/f1 is superseded, not a mismatch.
    let verified = run(s.ferry().arg("verify"));
    assert!(verified.status.success(), "{verified:?}");
    // And again: nothing changed since the second.
    let out = run_ok(s.ferry().args(["cp", "-a"]).arg(&src).arg(&dst));
    assert!(stderr(&out).contains("nothing changed since"), "{out:?}");
    assert_eq!(store.transfers().unwrap().len(), 2);
}

/// A re-run bringing a finished copy up to date, killed before its
/// transfer was dispatched, left a plan that may be partial: the same
/// command again ends it and compares with the finished copy, which kept
/// its place (nothing copied, nothing nested).
#[test]
fn a_rerun_killed_before_it_was_dispatched_is_planned_anew_and_copies_nothing() {
    let s = Scratch::new();
    let (src, dst) = (s.path("src"), s.path("dst"));
    tree(&src, 6, 9);
    run_ok(s.ferry().args(["cp", "-a"]).arg(&src).arg(&dst));
    // --skip size plans every file again: its transfer is created (commit
    // 1), and the process dies at its next commit.
    let out = run(s
        .ferry()
        .env("FERRY_FAILPOINT", "store.commit:2=crash")
        .args(["cp", "-a", "--skip", "size"])
        .arg(&src)
        .arg(&dst));
    assert!(killed(&out), "{out:?}");
    let store = SqliteStore::open(&s.store()).unwrap();
    let left = store.transfers().unwrap();
    assert_eq!(left[1].state, TransferState::Created, "{left:?}");
    let out = run_ok(s.ferry().args(["cp", "-a", "--json"]).arg(&src).arg(&dst));
    assert!(
        stderr(&out).contains(&format!(
            "transfer {} (id {}) was never dispatched",
            left[1].name, left[1].id
        )),
        "{out:?}"
    );
    assert!(stderr(&out).contains("nothing changed since"), "{out:?}");
    let report = json(&out);
    assert_eq!(report["bytes_copied"], 0, "{report}");
    assert_same_tree(&src, &dst);
    assert!(store.transfer(left[1].id).unwrap().is_none());
    let ids: Vec<_> = store.transfers().unwrap().iter().map(|t| t.id).collect();
    assert_eq!(ids, [left[0].id]);
}

/// With `--name`, the transfer that brings a finished copy up to date takes
/// the name over (the finished one gives it up, with its records): so it
/// holds every entry, the unchanged ones skipped, and the next run compares
/// with it.
#[test]
fn a_named_rerun_keeps_every_entry_under_its_name() {
    let s = Scratch::new();
    let (src, dst) = (s.path("src"), s.path("dst"));
    tree(&src, 8, 3);
    let cp = || {
        let mut cmd = s.ferry();
        cmd.args(["cp", "-a", "--json", "--name", "job"])
            .arg(&src)
            .arg(&dst);
        cmd
    };
    run_ok(&mut cp());
    write_file(&src.join("d1/f1"), b"changed");
    let report = json(&run_ok(&mut cp()));
    assert_eq!(report["bytes_copied"], 7, "{report}");
    assert_eq!(report["files"], 8, "{report}");
    assert_eq!(report["files_skipped"], 7, "{report}");
    let out = run_ok(&mut cp());
    assert!(stderr(&out).contains("nothing changed since"), "{out:?}");
    assert_eq!(json(&out)["bytes_copied"], 0);
    assert_same_tree(&src, &dst);
}

/// `--name` added to the same command (no transfer has that name yet) is
/// still the same copy: brought up to date in place, never nested.
#[test]
fn a_name_added_to_a_rerun_does_not_nest_it() {
    let s = Scratch::new();
    let (src, dst) = (s.path("src"), s.path("dst"));
    tree(&src, 5, 8);
    run_ok(s.ferry().args(["cp", "-a"]).arg(&src).arg(&dst));
    let out = run_ok(
        s.ferry()
            .args(["cp", "-a", "--json", "--name", "later"])
            .arg(&src)
            .arg(&dst),
    );
    assert!(stderr(&out).contains("already copied this"), "{out:?}");
    assert_eq!(json(&out)["bytes_copied"], 0, "{out:?}");
    assert!(!dst.join("src").exists(), "the re-run nested into DST/src");
    assert_same_tree(&src, &dst);
}
