//! Crash, or fail with EIO, at every step of the commit protocol in turn
//! (`FERRY_FAILPOINT`), and show that the store never says more than the
//! disk holds and that `ferry resume` converges from each point.

mod util;

use std::fs;
use std::os::unix::process::ExitStatusExt;
use std::path::Path;

use ferry::failpoint::CommitStep;
use ferry::store::{SqliteStore, Store};
use ferry::{EntryKind, FileState};
use util::*;

/// 72 MiB: ranges of 16 MiB, durable progress recorded at 32 and 64 MiB.
/// The copies run with one worker, so ranges finish in order and the n-th
/// hit of each fail point is the same from run to run.
const LARGE_BYTES: usize = 72 << 20;

fn make_tree(root: &Path) {
    let mut rng = fastrand::Rng::with_seed(11);
    for i in 0..30 {
        let len = rng.usize(0..100_000);
        write_file(
            &root.join(format!("d{}/f{i}", i % 2)),
            &random_bytes(&mut rng, len),
        );
    }
    write_file(&root.join("large"), &random_bytes(&mut rng, LARGE_BYTES));
    std::os::unix::fs::symlink("d0/f0", root.join("link")).unwrap();
    let old = std::process::Command::new("touch")
        .args(["-d", "2003-04-05 06:07:08.5"])
        .arg(root.join("d1"))
        .status()
        .unwrap();
    assert!(old.success());
}

/// What the store claims, the disk holds: `committed` entries are in place
/// with their content, `copied` ones are complete in their temporary (or
/// already renamed), `copying` ones hold their durable prefix.
fn assert_store_within_disk(store: &Path) {
    let store = SqliteStore::open(store).unwrap();
    for transfer in store.transfers().unwrap() {
        for entry in store.entries(transfer.id).unwrap() {
            if entry.kind != EntryKind::File {
                continue;
            }
            // Beside its destination, or in its staged directory.
            let temp = ferry::engine::staging::temporary_left(
                &entry,
                &transfer.temp_suffix,
                transfer.id,
                &mut Default::default(),
            );
            let source = fs::read(&entry.source).unwrap();
            match entry.state {
                FileState::Committed => {
                    assert_eq!(
                        fs::read(&entry.dest).ok(),
                        Some(source),
                        "{:?} committed",
                        entry.dest
                    );
                }
                FileState::Copied => {
                    let in_temp = fs::read(&temp).ok();
                    let in_place = fs::read(&entry.dest).ok();
                    assert!(
                        in_temp.as_ref() == Some(&source)
                            || in_temp.is_none() && in_place == Some(source),
                        "{:?} recorded copied but neither its temporary nor its final name holds it",
                        entry.dest
                    );
                }
                // A failed file may have failed after its rename, and then
                // has no temporary; one that still has it holds its prefix.
                FileState::Copying | FileState::Failed if entry.progress_bytes_durable > 0 => {
                    let prefix = entry.progress_bytes_durable as usize;
                    let held = fs::read(&temp).ok();
                    assert!(
                        held.is_some() || entry.state == FileState::Failed,
                        "{:?} is copying but its temporary is gone",
                        entry.dest
                    );
                    if let Some(held) = held {
                        assert!(
                            held.len() >= prefix && held[..prefix] == source[..prefix],
                            "{:?} prefix",
                            entry.dest
                        );
                    }
                }
                _ => {}
            }
        }
    }
}

/// `ferry cp -a --name fp --threads 1 SRC DST` with one fail point armed.
fn cp_with_failpoint(s: &Scratch, spec: &str, src: &Path, dst: &Path) -> std::process::Output {
    run(s
        .ferry()
        .env("FERRY_FAILPOINT", spec)
        .args(["cp", "-a", "--name", "fp", "--threads", "1"])
        .arg(src)
        .arg(dst))
}

/// `ferry resume fp`; or, when the fault came before the transfer was
/// recorded (`store.commit:1`) or dispatched (its plan is added to it by
/// `store.commit:2`), the same `ferry cp` again.
fn resume_converges(s: &Scratch, src: &Path, dst: &Path) -> serde_json::Value {
    let dispatched = planned(s).is_some_and(|t| t.state != ferry::TransferState::Created);
    let out = if dispatched {
        run(s.ferry().args(["resume", "fp", "--json"]))
    } else {
        run(s
            .ferry()
            .args(["cp", "-a", "--json", "--name", "fp"])
            .arg(src)
            .arg(dst))
    };
    assert!(out.status.success(), "resume must converge");
    let report = json(&out);
    assert_eq!(report["state"], "completed");
    assert_same_tree(src, dst);
    assert_store_within_disk(&s.store());
    report
}

/// The transfer `fp`, if it is recorded.
fn planned(s: &Scratch) -> Option<ferry::model::TransferRecord> {
    SqliteStore::open(&s.store())
        .unwrap()
        .transfer_by_name("fp")
        .unwrap()
}

#[test]
fn crash_at_every_commit_step_then_resume_converges() {
    let source = Scratch::new();
    let src = source.path("src");
    make_tree(&src);
    for step in CommitStep::ALL {
        for nth in [1, 2, 3] {
            let s = Scratch::new();
            let dst = s.path("dst");
            let spec = format!("{}:{nth}", step.name());
            println!("== crash at {spec}");
            let out = cp_with_failpoint(&s, &spec, &src, &dst);
            let killed = out.status.signal() == Some(9);
            // Every step is reached at least once in a copy of this tree.
            assert!(killed || nth > 1, "{spec} was never reached: {out:?}");
            if !killed {
                assert!(out.status.success(), "{spec}: {out:?}");
                assert_same_tree(&src, &dst);
                continue;
            }
            assert_no_partial_files(&src, &dst);
            assert_store_within_disk(&s.store());
            let dispatched = planned(&s).is_some_and(|t| t.state != ferry::TransferState::Created);
            if !dispatched {
                // Killed while the transfer itself was being recorded, or
                // its plan added to it (the first commits, with the owner's
                // first heartbeat among them).
                assert_eq!(step, CommitStep::StoreCommit, "{spec}");
                resume_converges(&s, &src, &dst);
                continue;
            }
            let (large_progress, last_seq) = {
                let store = SqliteStore::open(&s.store()).unwrap();
                let t = store.transfer_by_name("fp").unwrap().unwrap();
                let large = store
                    .entries(t.id)
                    .unwrap()
                    .into_iter()
                    .find(|e| e.source.ends_with("large"))
                    .unwrap();
                let last = store
                    .events_since(0, &Default::default(), 1 << 20)
                    .unwrap()
                    .last()
                    .unwrap()
                    .seq;
                let unfinished = matches!(large.state, FileState::Copying);
                (unfinished.then_some(large.progress_bytes_durable), last)
            };
            resume_converges(&s, &src, &dst);
            if step == CommitStep::RecordProgress && nth == 2 {
                // The first checkpoint (32 MiB) was recorded; the resume
                // continues from it instead of starting over.
                assert_eq!(large_progress, Some(32 << 20));
                let store = SqliteStore::open(&s.store()).unwrap();
                let restart = store
                    .events_since(last_seq, &Default::default(), 1 << 20)
                    .unwrap()
                    .into_iter()
                    .find(|e| e.name == "file.copying")
                    .expect("the large file was resumed");
                assert_eq!(restart.context["offset"].as_u64(), Some(32 << 20));
            }
        }
    }
}

/// EIO, then ENOSPC, at every step of the commit protocol and at every
/// transaction of the store, one point after another (SQLite's way): each
/// fails with a message that names the fault, claims nothing the disk does
/// not hold, and `ferry resume` converges from it.
#[test]
fn io_errors_at_every_step_fail_cleanly_then_resume_converges() {
    let source = Scratch::new();
    let src = source.path("src");
    make_tree(&src);
    for (action, expected) in [
        ("eio", &["input/output error"][..]),
        (
            "enospc",
            &[
                "no space left writing",
                "no space left on device",
                "is read-only",
            ][..],
        ),
    ] {
        for step in CommitStep::ALL {
            // Every store transaction in turn; the others at a few hits.
            let nths: Vec<u64> = match (step, action) {
                (CommitStep::StoreCommit, _) => (1..=64).collect(),
                (_, "eio") => vec![1, 3],
                _ => vec![1],
            };
            let mut ran_clean = false;
            for nth in nths {
                let s = Scratch::new();
                let dst = s.path("dst");
                let spec = format!("{}:{nth}={action}", step.name());
                println!("== {spec}");
                let out = cp_with_failpoint(&s, &spec, &src, &dst);
                let stderr = String::from_utf8_lossy(&out.stderr);
                assert!(
                    out.status.code().is_some(),
                    "{spec}: ferry must not die of a signal"
                );
                assert!(!stderr.contains("panicked"), "{spec}: {stderr}");
                assert_no_partial_files(&src, &dst);
                assert_store_within_disk(&s.store());
                if out.status.success() {
                    assert!(nth > 1, "{spec}: the injected error was swallowed");
                    assert_same_tree(&src, &dst);
                    // Past the last store transaction: every one was hit.
                    ran_clean = true;
                    break;
                }
                assert!(
                    expected.iter().any(|e| stderr.contains(e)),
                    "{spec}: the error is reported: {stderr}"
                );
                if (step, action) == (CommitStep::StoreCommit, "enospc") {
                    assert_eq!(out.status.code(), Some(19), "{spec}: read-only store");
                }
                resume_converges(&s, &src, &dst);
            }
            assert!(
                ran_clean || step != CommitStep::StoreCommit,
                "more store transactions than the test walks"
            );
        }
    }
}

/// Crashes right before the second progress record of the large file, so
/// that 32 MiB of it are recorded durable, and returns its temporary.
fn crash_mid_large_file(s: &Scratch, src: &Path, dst: &Path) -> std::path::PathBuf {
    let out = cp_with_failpoint(s, "commit.record_progress:2", src, dst);
    assert_eq!(out.status.signal(), Some(9));
    let store = SqliteStore::open(&s.store()).unwrap();
    let t = store.transfer_by_name("fp").unwrap().unwrap();
    let large = store
        .entries(t.id)
        .unwrap()
        .into_iter()
        .find(|e| e.source.ends_with("large"))
        .unwrap();
    assert_eq!(large.progress_bytes_durable, 32 << 20);
    ferry::temp_path(&large.dest, &t.temp_suffix, t.id)
}

fn resumed_offset_of_large(s: &Scratch) -> Option<u64> {
    let store = SqliteStore::open(&s.store()).unwrap();
    let t = store.transfer_by_name("fp").unwrap().unwrap();
    let large = store
        .entries(t.id)
        .unwrap()
        .into_iter()
        .find(|e| e.source.ends_with("large"))
        .unwrap();
    store
        .events_since(0, &Default::default(), 1 << 20)
        .unwrap()
        .into_iter()
        .rev()
        .find(|e| e.name == "file.copying" && e.entry == Some(large.index))
        .and_then(|e| e.context["offset"].as_u64())
}

#[test]
fn a_shorter_or_missing_temporary_restarts_its_file() {
    let source = Scratch::new();
    let src = source.path("src");
    make_tree(&src);
    for damage in ["shorter", "missing"] {
        let s = Scratch::new();
        let dst = s.path("dst");
        let temp = crash_mid_large_file(&s, &src, &dst);
        match damage {
            "shorter" => fs::OpenOptions::new()
                .write(true)
                .open(&temp)
                .unwrap()
                .set_len(1 << 20)
                .unwrap(),
            _ => fs::remove_file(&temp).unwrap(),
        }
        resume_converges(&s, &src, &dst);
        assert_eq!(
            resumed_offset_of_large(&s),
            Some(0),
            "{damage} temporary: the file restarts"
        );
    }
}

#[test]
fn cancel_keeps_temporaries_and_resume_continues() {
    let source = Scratch::new();
    let src = source.path("src");
    make_tree(&src);
    let s = Scratch::new();
    let dst = s.path("dst");
    let temp = crash_mid_large_file(&s, &src, &dst);
    run_ok(s.ferry().args(["cancel", "fp"]));
    let status = json(&run_ok(s.ferry().args(["status", "fp", "--json"])));
    assert_eq!(status["state"], "cancelled");
    assert!(temp.exists(), "a cancelled file keeps its temporary");
    resume_converges(&s, &src, &dst);
    assert_eq!(resumed_offset_of_large(&s), Some(32 << 20));
}

#[test]
fn cp_with_the_name_of_a_dead_transfer_reattaches_and_continues() {
    let source = Scratch::new();
    let src = source.path("src");
    make_tree(&src);
    let s = Scratch::new();
    let dst = s.path("dst");
    crash_mid_large_file(&s, &src, &dst);
    let id_before = json(&run_ok(s.ferry().args(["status", "fp", "--json"])))["id"].clone();
    let out = run_ok(
        s.ferry()
            .args(["cp", "-a", "--json", "--name", "fp"])
            .arg(&src)
            .arg(&dst),
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("re-attached"));
    assert_eq!(
        json(&out)["id"],
        id_before,
        "the same transfer, not a second one"
    );
    assert_same_tree(&src, &dst);
    assert_eq!(resumed_offset_of_large(&s), Some(32 << 20));
}

/// A source deleted, replaced, grown or truncated while it is being copied
/// fails as "changed during transfer": the copy is paused (fail point
/// `pause`) right before its first chunk, the source is changed, and the
/// copy continued.
#[test]
fn a_source_changed_mid_copy_fails_and_never_arrives() {
    for change in ["deleted", "replaced", "grown", "truncated"] {
        let s = Scratch::new();
        let src = s.path("src");
        let mut rng = fastrand::Rng::with_seed(21);
        write_file(&src.join("f"), &random_bytes(&mut rng, 300_000));
        let dst = s.path("dst");
        let fifo = s.path("pause");
        run_ok(std::process::Command::new("mkfifo").arg(&fifo));
        let child = s
            .ferry()
            .env("FERRY_FAILPOINT", "commit.write_data=pause")
            .env("FERRY_FAILPOINT_FIFO", &fifo)
            .args(["cp", "-r", "--threads", "1"])
            .arg(&src)
            .arg(&dst)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        // Returns once ferry is paused right before the first chunk.
        let pause = fs::OpenOptions::new().write(true).open(&fifo).unwrap();
        let f = src.join("f");
        match change {
            "deleted" => fs::remove_file(&f).unwrap(),
            "replaced" => {
                write_file(&src.join("other"), b"another file");
                fs::rename(src.join("other"), &f).unwrap();
            }
            "grown" => {
                use std::io::Write;
                fs::OpenOptions::new()
                    .append(true)
                    .open(&f)
                    .unwrap()
                    .write_all(b"more")
                    .unwrap();
            }
            _ => fs::OpenOptions::new()
                .write(true)
                .open(&f)
                .unwrap()
                .set_len(1000)
                .unwrap(),
        }
        drop(pause);
        let out = child.wait_with_output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{change}: {stderr}");
        assert!(
            stderr.contains("changed during transfer") && stderr.contains("src/f"),
            "{change}: {stderr}"
        );
        assert!(
            !dst.join("f").exists(),
            "{change}: nothing under the final name"
        );
        if change == "deleted" {
            assert!(stderr.contains("deleted"), "{stderr}");
        }
        if change == "replaced" {
            assert!(stderr.contains("replaced"), "{stderr}");
        }
    }
}

/// A copy killed after it gave a temporary its final mode (step 5 on the
/// open temporary) but before it recorded `copied`: the resume rewrites
/// the file from the start in a new owner-only inode, never in the old
/// one, whose mode would show the partial data to everyone.
#[test]
fn a_whole_file_rewritten_by_a_resume_starts_in_a_new_owner_only_inode() {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let s = Scratch::new();
    let src = s.path("src");
    let mut rng = fastrand::Rng::with_seed(5);
    write_file(&src.join("f"), &random_bytes(&mut rng, 5000));
    fs::set_permissions(src.join("f"), fs::Permissions::from_mode(0o644)).unwrap();
    let dst = s.path("dst");
    let out = run(s
        .ferry()
        .env("FERRY_FAILPOINT", "commit.sync_data:1=crash")
        .args(["cp", "-a", "--name", "r", "--threads", "1"])
        .arg(&src)
        .arg(&dst));
    assert_eq!(out.status.signal(), Some(9), "{out:?}");
    // `dst/f._ferry-ID`, or `dst._ferry-ID/f` (a staged directory).
    let root = s.path("");
    let temps: Vec<_> = walk(&root)
        .into_iter()
        .filter(|p| final_path_of(p).1 && root.join(p).is_file())
        .collect();
    let [temp] = temps.as_slice() else {
        panic!("one temporary: {temps:?}");
    };
    let temp = root.join(temp);
    let killed = fs::symlink_metadata(&temp).unwrap();
    assert_eq!(killed.mode() & 0o777, 0o644, "the kill came after step 5");
    // The resume, held before its first read of the source: the file's
    // temporary is already open for its new start.
    let fifo = s.path("pause");
    run_ok(std::process::Command::new("mkfifo").arg(&fifo));
    let child = s
        .ferry()
        .env("FERRY_FAILPOINT", "source.read:1=pause")
        .env("FERRY_FAILPOINT_FIFO", &fifo)
        .args(["cp", "-a", "--name", "r", "--threads", "1"])
        .arg(&src)
        .arg(&dst)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let pause = fs::OpenOptions::new().write(true).open(&fifo).unwrap();
    // (The file system may give the new inode the old one's number.)
    let now = fs::symlink_metadata(&temp).unwrap();
    if is_temp(&temp) {
        assert_eq!(now.mode() & 0o777, 0o600, "owner-only while written");
    } else {
        // In a staged directory a file is written with its own mode from
        // the start; the directory keeps others out, and it is a new inode
        // all the same.
        let dir = fs::symlink_metadata(temp.parent().unwrap()).unwrap();
        assert_eq!(dir.mode() & 0o077, 0, "the staged directory is owner-only");
        assert!(
            now.created().unwrap() > killed.created().unwrap(),
            "a new inode, not the killed run's rewritten"
        );
    }
    assert_eq!(now.len(), 0, "started over");
    drop(pause);
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{out:?}");
    assert_same_tree(&src, &dst);
}
