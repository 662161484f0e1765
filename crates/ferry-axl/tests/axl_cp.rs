//! A `cp` written only against axl.h (tests/c/axl_cp.c), linked statically
//! and dynamically, for `sync` and `pthread`: copy a tree and compare it;
//! cancel it surely mid-transfer; kill -9 it mid-transfer and resume from
//! the state file; metadata with and without `-a`.

mod util;

use std::path::Path;

use rustix::process::{Pid, Signal, kill_process};
use util::{Link, compile, files, ls_l, make_tree, run, same_tree, spawn, wait_for_line};

const FILES: usize = 50;
/// Bytes after which the debug pause stops the movers: a few of the 50
/// files (1.3 MB in all) are copied by then, most are not.
const PAUSE_AFTER: &str = "200000";

fn scratch() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("ferry-axl-")
        .tempdir()
        .expect("tempdir")
}

fn axl_cp(link: Link) -> std::path::PathBuf {
    compile("axl_cp.c", "axl", link)
}

fn s(p: &Path) -> &str {
    p.to_str().expect("utf-8 temp path")
}

fn copies_a_tree(link: Link, kind: &str) {
    let dir = scratch();
    let (src, dst) = (dir.path().join("src"), dir.path().join("dst"));
    make_tree(&src, FILES);
    let (code, stderr) = run(&axl_cp(link), &["-r", "-X", kind, s(&src), s(&dst)], &[]);
    assert_eq!(code, 0, "axl_cp failed: {stderr}");
    assert!(
        same_tree(&src, &dst),
        "diff -r {} {} differs",
        src.display(),
        dst.display()
    );
    // Without -a, times are new (and modes follow the umask), as with cp.
    assert_ne!(ls_l(&src), ls_l(&dst), "without -a, ls -l should differ");

    // A file onto an existing directory lands as DIR/basename.
    let one = src.join("d1/e1/file1");
    let (code, stderr) = run(&axl_cp(link), &["-X", kind, s(&one), s(&dst)], &[]);
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(
        std::fs::read(dst.join("file1")).unwrap(),
        std::fs::read(&one).unwrap()
    );
}

fn archive_keeps_metadata(link: Link, kind: &str) {
    let dir = scratch();
    let (src, dst) = (dir.path().join("src"), dir.path().join("dst"));
    make_tree(&src, FILES);
    let (code, stderr) = run(&axl_cp(link), &["-a", "-X", kind, s(&src), s(&dst)], &[]);
    assert_eq!(code, 0, "axl_cp -a failed: {stderr}");
    assert!(same_tree(&src, &dst));
    assert_eq!(
        ls_l(&src),
        ls_l(&dst),
        "with -a, ls -l of source and destination should match"
    );
}

fn cancel_mid_transfer(link: Link, kind: &str) {
    let dir = scratch();
    let (src, dst) = (dir.path().join("src"), dir.path().join("dst"));
    make_tree(&src, FILES);
    let mut child = spawn(
        &axl_cp(link),
        &["-r", "-X", kind, s(&src), s(&dst)],
        &[("AXL_DEBUG_PAUSE_AFTER", PAUSE_AFTER)],
    );
    // The mover says it paused: the transfer is surely still running.
    wait_for_line(&mut child, "paused after");
    let pid = Pid::from_child(&child);
    kill_process(pid, Signal::TERM).expect("SIGTERM");
    let status = child.wait().expect("wait");
    assert_eq!(
        status.code(),
        Some(2),
        "the SIGTERM handler should cancel, free and finalize"
    );
    // Not everything arrived, and whatever carries a final name is whole.
    assert!(
        !same_tree(&src, &dst),
        "a cancelled transfer cannot have copied everything"
    );
    let arrived: Vec<_> = files(&dst)
        .into_iter()
        .filter(|f| !f.to_string_lossy().contains("._ferry-"))
        .collect();
    assert!(arrived.len() < FILES);
    for file in arrived {
        assert_eq!(
            std::fs::read(dst.join(&file)).unwrap(),
            std::fs::read(src.join(&file)).unwrap(),
            "{} is partial",
            file.display()
        );
    }
}

fn kill_and_resume(link: Link, kind: &str) {
    let dir = scratch();
    let (src, dst, state) = (
        dir.path().join("src"),
        dir.path().join("dst"),
        dir.path().join("state.db"),
    );
    make_tree(&src, FILES);
    let mut child = spawn(
        &axl_cp(link),
        &["-r", "-S", s(&state), "-X", kind, s(&src), s(&dst)],
        &[("AXL_DEBUG_PAUSE_AFTER", PAUSE_AFTER)],
    );
    wait_for_line(&mut child, "paused after");
    child.kill().expect("kill -9");
    child.wait().expect("reap");
    assert!(!same_tree(&src, &dst), "killed mid-transfer, yet complete");

    // The restarted program finds its transfer by name in the state file.
    let (code, stderr) = run(
        &axl_cp(link),
        &["-S", s(&state), "-U", "-X", "state_file"],
        &[],
    );
    assert_eq!(code, 0, "resume failed: {stderr}");
    assert!(
        same_tree(&src, &dst),
        "the resumed copy differs from its source"
    );
    let leftovers: Vec<_> = files(&dst)
        .into_iter()
        .filter(|f| f.to_string_lossy().contains("._ferry-"))
        .collect();
    assert!(leftovers.is_empty(), "temporaries left: {leftovers:?}");
    no_reserve_beside(&state);
}

/// Nothing of ferry's beside the user's state file but the state file and
/// SQLite's journal: no `state.db.reserve` (up to 4 MiB) after a run, a
/// kill and a resume.
fn no_reserve_beside(state: &Path) {
    let name = state.file_name().expect("file name").to_string_lossy();
    let beside: Vec<String> = std::fs::read_dir(state.parent().expect("parent"))
        .expect("read_dir")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(name.as_ref()))
        .collect();
    for file in &beside {
        let suffix = &file[name.len()..];
        assert!(
            ["", "-wal", "-shm", "-journal"].contains(&suffix),
            "{file} was created beside the state file: {beside:?}"
        );
    }
}

/// The killed program stays a zombie (this test is its parent and does not
/// reap it until the end, as a parent that never reaps): the same command
/// line resumes at once, without waiting for anyone to reap it.
#[test]
fn resume_while_the_killed_owner_is_an_unreaped_zombie() {
    use rustix::process::{WaitId, WaitIdOptions, waitid};
    let dir = scratch();
    let (src, dst, state) = (
        dir.path().join("src"),
        dir.path().join("dst"),
        dir.path().join("state.db"),
    );
    make_tree(&src, FILES);
    let mut child = spawn(
        &axl_cp(Link::Dynamic),
        &["-r", "-S", s(&state), "-X", "pthread", s(&src), s(&dst)],
        &[("AXL_DEBUG_PAUSE_AFTER", PAUSE_AFTER)],
    );
    wait_for_line(&mut child, "paused after");
    let pid = Pid::from_child(&child);
    kill_process(pid, Signal::KILL).expect("kill -9");
    // Waits for the exit but leaves it unreaped: a zombie.
    waitid(
        WaitId::Pid(pid),
        WaitIdOptions::EXITED | WaitIdOptions::NOWAIT,
    )
    .expect("waitid");
    let stat = std::fs::read_to_string(format!("/proc/{}/stat", pid.as_raw_nonzero()))
        .expect("the zombie is still listed");
    assert!(stat.contains(") Z "), "not a zombie: {stat}");

    let (code, stderr) = run(
        &axl_cp(Link::Dynamic),
        &["-S", s(&state), "-U", "-X", "state_file"],
        &[],
    );
    assert_eq!(
        code, 0,
        "resume with the old owner a zombie failed: {stderr}"
    );
    assert!(same_tree(&src, &dst), "the resumed copy differs");
    child.wait().expect("reap at last");
}

#[test]
fn state_file_type_needs_an_existing_state_file() {
    let dir = scratch();
    let state = dir.path().join("missing.db");
    let (code, stderr) = run(
        &axl_cp(Link::Dynamic),
        &["-S", s(&state), "-U", "-X", "state_file"],
        &[],
    );
    assert_eq!(code, 1);
    assert!(
        stderr.contains("AXL: AXL_Create:") && stderr.contains(s(&state)),
        "{stderr}"
    );
    assert!(!state.exists(), "a missing state file must not be created");
}

macro_rules! for_each_link_and_kind {
    ($($name:ident: $body:ident, $link:expr, $kind:expr;)*) => {
        $(#[test] fn $name() { $body($link, $kind) })*
    };
}

for_each_link_and_kind! {
    copy_sync_dynamic: copies_a_tree, Link::Dynamic, "sync";
    copy_pthread_dynamic: copies_a_tree, Link::Dynamic, "pthread";
    copy_sync_static: copies_a_tree, Link::Static, "sync";
    copy_pthread_static: copies_a_tree, Link::Static, "pthread";
    archive_sync_dynamic: archive_keeps_metadata, Link::Dynamic, "sync";
    archive_pthread_dynamic: archive_keeps_metadata, Link::Dynamic, "pthread";
    archive_sync_static: archive_keeps_metadata, Link::Static, "sync";
    archive_pthread_static: archive_keeps_metadata, Link::Static, "pthread";
    cancel_sync_dynamic: cancel_mid_transfer, Link::Dynamic, "sync";
    cancel_pthread_dynamic: cancel_mid_transfer, Link::Dynamic, "pthread";
    cancel_sync_static: cancel_mid_transfer, Link::Static, "sync";
    cancel_pthread_static: cancel_mid_transfer, Link::Static, "pthread";
    resume_sync_dynamic: kill_and_resume, Link::Dynamic, "sync";
    resume_pthread_dynamic: kill_and_resume, Link::Dynamic, "pthread";
    resume_sync_static: kill_and_resume, Link::Static, "sync";
    resume_pthread_static: kill_and_resume, Link::Static, "pthread";
}
