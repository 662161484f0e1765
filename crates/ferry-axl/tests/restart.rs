//! Restarts the way SCR does them: the same AXL program (tests/c/axl_cp.c)
//! started again after a crash, on another node (a UTS namespace with
//! another host name, `unshare -u`), with the state file shared. The old
//! owner's lease decides: refused while it is fresh, resumed once it ran
//! out; and an old owner that comes back after the take-over cannot write.
//!
//! Needs root (`unshare -u`); CI runs as root.

mod util;

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::Child;

use ferry::store::{SqliteStore, Store};
use rustix::process::{Pid, Signal, WaitId, WaitIdOptions, kill_process, waitid};
use util::{Link, compile, files, make_tree, run, same_tree, spawn, wait_for_line};

const FILES: usize = 50;
const PAUSE_AFTER: &str = "200000";
/// The first owner's lease: long enough that the refusal below cannot
/// race its expiry on a loaded machine; the expiry is then injected.
const LEASE: &str = "60s";
const OTHER_HOST: &str = "ferry-other-node";

fn s(p: &Path) -> &str {
    p.to_str().expect("utf-8 temp path")
}

fn axl_cp() -> PathBuf {
    compile("axl_cp.c", "axl", Link::Dynamic)
}

/// `unshare -u` with another host name, then `program args`.
fn on_other_host(program: &Path, args: &[&str]) -> Vec<String> {
    let mut argv = vec![
        "-u".to_owned(),
        "sh".to_owned(),
        "-c".to_owned(),
        format!("hostname {OTHER_HOST} && exec \"$0\" \"$@\""),
        s(program).to_owned(),
    ];
    argv.extend(args.iter().map(|a| a.to_string()));
    argv
}

fn unshare() -> &'static Path {
    Path::new("unshare")
}

fn run_other_host(program: &Path, args: &[&str], env: &[(&str, &str)]) -> (i32, String) {
    let argv = on_other_host(program, args);
    let argv: Vec<&str> = argv.iter().map(String::as_str).collect();
    run(unshare(), &argv, env)
}

/// The lease ran out: the recorded heartbeat is made older than any lease
/// (fault injection in place of waiting a lease out).
fn expire_lease(state: &Path) {
    let store = SqliteStore::open(state).expect("open the state file");
    let record = store
        .transfer_by_name("axl_cp")
        .unwrap()
        .expect("transfer axl_cp");
    assert!(record.lease.is_some(), "the owner never renewed its lease");
    store
        .write(|tx| {
            tx.execute(
                "UPDATE transfers SET owner_heartbeat_ns = owner_heartbeat_ns - 3600000000000
                 WHERE id = ?1",
                [record.id.0],
            )
            .map_err(|e| store.err(e))
        })
        .expect("age the heartbeat");
}

fn kill_mid_copy(src: &Path, dst: &Path, state: &Path) {
    let mut child = spawn(
        &axl_cp(),
        &["-r", "-S", s(state), "-X", "pthread", s(src), s(dst)],
        &[
            ("AXL_DEBUG_PAUSE_AFTER", PAUSE_AFTER),
            ("FERRY_OWNER_LEASE", LEASE),
        ],
    );
    wait_for_line(&mut child, "paused after");
    child.kill().expect("kill -9");
    child.wait().expect("reap");
}

struct Scratch {
    _dir: tempfile::TempDir,
    src: PathBuf,
    dst: PathBuf,
    state: PathBuf,
}

fn scratch() -> Scratch {
    let dir = tempfile::Builder::new()
        .prefix("ferry-axl-restart-")
        .tempdir()
        .expect("tempdir");
    let p = dir.path().to_path_buf();
    make_tree(&p.join("src"), FILES);
    Scratch {
        src: p.join("src"),
        dst: p.join("dst"),
        state: p.join("state.db"),
        _dir: dir,
    }
}

fn no_temporaries(dst: &Path) {
    let left: Vec<_> = files(dst)
        .into_iter()
        .filter(|f| f.to_string_lossy().contains("._ferry-"))
        .collect();
    assert!(left.is_empty(), "temporaries left: {left:?}");
}

#[test]
fn another_host_is_refused_while_the_lease_is_fresh_and_resumes_after() {
    let t = scratch();
    kill_mid_copy(&t.src, &t.dst, &t.state);
    let resume = ["-S", s(&t.state), "-U", "-X", "state_file"];

    let (code, stderr) = run_other_host(&axl_cp(), &resume, &[]);
    assert_eq!(code, 1, "a fresh lease must refuse the take-over: {stderr}");
    assert!(
        stderr.contains("belongs to a live process") && !stderr.contains(OTHER_HOST),
        "the refusal names the old owner's host: {stderr}"
    );
    assert!(!same_tree(&t.src, &t.dst));

    expire_lease(&t.state);
    let (code, stderr) = run_other_host(&axl_cp(), &resume, &[]);
    assert_eq!(code, 0, "the lease ran out, yet no take-over: {stderr}");
    assert!(same_tree(&t.src, &t.dst), "the resumed copy differs");
    no_temporaries(&t.dst);
}

fn pid(child: &Child) -> Pid {
    Pid::from_child(child)
}

#[test]
fn an_old_owner_that_comes_back_after_a_take_over_cannot_commit() {
    let t = scratch();
    let fifo = t.state.with_file_name("pause.fifo");
    rustix::fs::mknodat(
        rustix::fs::CWD,
        &fifo,
        rustix::fs::FileType::Fifo,
        rustix::fs::Mode::from_raw_mode(0o600),
        0,
    )
    .expect("mkfifo");
    // The old owner pauses just before it records its first batch `copied`.
    let old = spawn(
        &axl_cp(),
        &[
            "-r",
            "-S",
            s(&t.state),
            "-X",
            "pthread",
            s(&t.src),
            s(&t.dst),
        ],
        &[
            ("FERRY_OWNER_LEASE", LEASE),
            ("FERRY_FAILPOINT", "commit.record_copied=pause"),
            ("FERRY_FAILPOINT_FIFO", s(&fifo)),
        ],
    );
    // Opening returns once it is paused there.
    let release = File::options().write(true).open(&fifo).expect("open fifo");
    // Then it hangs (SIGSTOP): no heartbeat, and its lease runs out.
    kill_process(pid(&old), Signal::STOP).expect("SIGSTOP");
    waitid(
        WaitId::Pid(pid(&old)),
        WaitIdOptions::STOPPED | WaitIdOptions::NOWAIT,
    )
    .expect("waitid stopped");
    expire_lease(&t.state);

    // Another node takes over and is mid-copy.
    let resume = ["-S", s(&t.state), "-U", "-X", "state_file"];
    let argv = on_other_host(&axl_cp(), &resume);
    let argv: Vec<&str> = argv.iter().map(String::as_str).collect();
    let mut new = spawn(unshare(), &argv, &[("AXL_DEBUG_PAUSE_AFTER", PAUSE_AFTER)]);
    wait_for_line(&mut new, "paused after");

    // The old owner comes back and goes on to record its batch.
    kill_process(pid(&old), Signal::CONT).expect("SIGCONT");
    drop(release);
    let output = old.wait_with_output().expect("wait for the old owner");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("has another owner now") && stderr.contains(OTHER_HOST),
        "the old owner must learn it lost the transfer: {stderr}"
    );
    let store = SqliteStore::open(&t.state).unwrap();
    let record = store.transfer_by_name("axl_cp").unwrap().unwrap();
    assert_eq!(record.owner.host, OTHER_HOST, "the new owner keeps it");

    // The new owner dies too; a third run (on its host) finishes the copy.
    new.kill().expect("kill -9");
    new.wait().expect("reap");
    let (code, stderr) = run_other_host(&axl_cp(), &resume, &[]);
    assert_eq!(code, 0, "{stderr}");
    assert!(same_tree(&t.src, &t.dst), "the final copy differs");
    no_temporaries(&t.dst);
}
