//! `ferry serve` against a hostile neighbour on the node: a local user who
//! reads or locks the daemon's store, plants symlinks and FIFOs, or relies
//! on the daemon's umask, groups or privileges instead of their own.
//!
//! Each test starts its own daemon on a scratch store and socket and waits
//! for the socket to answer, or for its exit, with a bounded deadline. The
//! tests that act as a second user need root (CI runs as root) and use
//! uids with no user database entry (`setpriv`).

mod util;

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use ferry_serve::api::RunRequest;
use ferry_serve::client::Client;
use util::daemon::{DEADLINE, Daemon, add};
use util::*;

const A: u32 = 64_011;
const B: u32 = 64_012;

/// `ferry serve` through `sh -c 'umask U; exec …'`: the daemon's umask is
/// the test's choice, not the runner's.
fn serve(s: &Scratch, umask: &str, env: &[(&str, &Path)]) -> Command {
    let mut cmd = Command::new("sh");
    cmd.arg("-c")
        .arg(format!("umask {umask}; exec \"$0\" \"$@\""))
        .arg(FERRY)
        .arg("--store")
        .arg(s.store())
        .arg("--socket")
        .arg(s.path("ferry.sock"))
        .args(["serve", "--workers", "2"])
        .env_remove("FERRY_FAILPOINT")
        .stdin(Stdio::null())
        .stdout(Stdio::null());
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd
}

impl Daemon {
    fn start(s: &Scratch, umask: &str, env: &[(&str, &Path)]) -> Daemon {
        Daemon::spawn(s, serve(s, umask, env), s.path("ferry.sock"))
    }
}

/// `ferry serve` that must refuse to start: its exit code and stderr,
/// within the deadline (a daemon that serves instead fails the test).
fn refused(s: &Scratch) -> (Option<i32>, String) {
    let err = s.path("refused.log");
    let mut child = serve(s, "022", &[])
        .stderr(fs::File::create(&err).unwrap())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + DEADLINE;
    let client = Client::new(&s.path("ferry.sock")).unwrap();
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return (status.code(), fs::read_to_string(&err).unwrap());
        }
        if client.answers() || Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("ferry serve started instead of refusing");
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// `PROGRAM ARGS…` as another user, with no supplementary group.
fn as_user(uid: u32, program: &str) -> Command {
    let mut cmd = Command::new("setpriv");
    cmd.arg(format!("--reuid={uid}"))
        .arg(format!("--regid={uid}"))
        .arg("--clear-groups")
        .arg(program)
        .env_remove("FERRY_FAILPOINT");
    cmd
}

fn own(path: &Path, uid: u32, gid: u32, mode: u32) {
    rustix::fs::chown(
        path,
        Some(rustix::fs::Uid::from_raw(uid)),
        Some(rustix::fs::Gid::from_raw(gid)),
    )
    .unwrap();
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).unwrap();
}

fn mode(path: &Path) -> u32 {
    fs::symlink_metadata(path).unwrap().mode() & 0o7777
}

fn beside(store: &Path, suffix: &str) -> PathBuf {
    let mut name = store.as_os_str().to_owned();
    name.push(suffix);
    PathBuf::from(name)
}

/// Waits (bounded) for `name` to end; returns its final state.
fn ended(client: &Client, name: &str) -> String {
    let deadline = Instant::now() + DEADLINE;
    loop {
        let w = client.wait_once(name, Duration::from_secs(1)).unwrap();
        if w.done {
            return w.state;
        }
        assert!(
            Instant::now() < deadline,
            "transfer {name} did not end: a mover is stuck"
        );
    }
}

#[test]
fn another_user_can_neither_read_nor_lock_the_daemons_store() {
    if !root_or_skip("reading the store as another user") {
        return;
    }
    let s = Scratch::new();
    fs::set_permissions(s.dir.path(), fs::Permissions::from_mode(0o755)).unwrap();
    // The daemon makes its store's directory itself (Scratch makes one for
    // the command-line tests).
    fs::remove_dir(s.store().parent().unwrap()).unwrap();
    write_file(&s.path("src/f"), b"a secret path's data");
    // umask 0: without the daemon's own care its files would be 0666.
    let daemon = Daemon::start(&s, "000", &[]);
    let client = daemon.client();
    add(&client, "t", &[&s.path("src/f")], &s.path("out"));
    client.dispatch("t", &RunRequest::default()).unwrap();
    assert_eq!(ended(&client, "t"), "completed");
    let store = s.store();
    for file in [
        store.clone(),
        beside(&store, "-wal"),
        beside(&store, "-shm"),
    ] {
        assert!(
            file.exists(),
            "{} exists while the daemon runs",
            file.display()
        );
        assert_eq!(mode(&file), 0o600, "{}", file.display());
    }
    // Even with the directory opened up, the files themselves refuse.
    fs::set_permissions(store.parent().unwrap(), fs::Permissions::from_mode(0o755)).unwrap();
    let read = run(as_user(A, "cat").arg(&store));
    assert!(!read.status.success(), "uid {A} read the daemon's store");
    // A shared lock on the -shm file (what stopped every write) needs it open.
    let lock = run(as_user(A, "flock")
        .args(["--shared", "--nonblock"])
        .arg(beside(&store, "-shm"))
        .arg("true"));
    assert!(
        !lock.status.success(),
        "uid {A} opened the -shm file to lock it"
    );
    assert!(String::from_utf8_lossy(&lock.stderr).contains("ermission denied"));
}

#[test]
fn an_old_world_readable_store_is_made_private_at_start() {
    let s = Scratch::new();
    write_file(&s.path("src/f"), b"data");
    run_ok(s.ferry().arg("cp").arg(s.path("src/f")).arg(s.path("out")));
    let store = s.store();
    fs::set_permissions(&store, fs::Permissions::from_mode(0o644)).unwrap();
    let _daemon = Daemon::start(&s, "022", &[]);
    assert_eq!(mode(&store), 0o600);
}

#[test]
fn a_store_directory_others_can_write_is_refused_at_start() {
    let s = Scratch::new();
    let dir = s.store().parent().unwrap().to_path_buf();
    fs::create_dir_all(&dir).unwrap();
    fs::set_permissions(&dir, fs::Permissions::from_mode(0o777)).unwrap();
    let (code, err) = refused(&s);
    assert_eq!(code, Some(39), "{err}");
    assert!(
        err.contains(&dir.display().to_string()) && err.contains("writable by other users"),
        "{err}"
    );
    assert!(!s.store().exists(), "nothing was created there");
    // Sticky (as /tmp) keeps others from replacing our files: served.
    fs::set_permissions(&dir, fs::Permissions::from_mode(0o1777)).unwrap();
    let _daemon = Daemon::start(&s, "022", &[]);
}

#[test]
fn a_symlink_planted_at_the_reserve_is_refused_and_its_target_unchanged() {
    let s = Scratch::new();
    let victim = s.path("victim");
    write_file(&victim, b"precious");
    let store = s.store();
    fs::create_dir_all(store.parent().unwrap()).unwrap();
    std::os::unix::fs::symlink(&victim, beside(&store, ".reserve")).unwrap();
    // The daemon refuses to start on it…
    let (code, err) = refused(&s);
    assert_eq!(code, Some(39), "{err}");
    assert!(
        err.contains(".reserve") && err.contains("symbolic link"),
        "{err}"
    );
    // …and a local store never writes through it (it did: 4 MiB of zeros).
    write_file(&s.path("src/f"), b"data");
    run_ok(s.ferry().arg("cp").arg(s.path("src/f")).arg(s.path("out")));
    assert_eq!(fs::read(&victim).unwrap(), b"precious");
    assert!(
        fs::symlink_metadata(beside(&store, ".reserve"))
            .unwrap()
            .file_type()
            .is_symlink()
    );
}

#[test]
fn a_fifo_swapped_in_after_add_fails_that_file_and_blocks_no_mover() {
    let s = Scratch::new();
    let daemon = Daemon::start(&s, "022", &[]);
    let client = daemon.client();
    // One FIFO per mover (the daemon has 2): each would hold its mover in
    // open() for ever.
    for name in ["fifo-1", "fifo-2"] {
        let src = s.path(&format!("src/{name}"));
        write_file(&src, b"a plain file when added");
        add(&client, name, &[&src], &s.path(&format!("out/{name}")));
        fs::remove_file(&src).unwrap();
        run_ok(Command::new("mkfifo").arg(&src));
        client.dispatch(name, &RunRequest::default()).unwrap();
    }
    write_file(&s.path("src/next"), b"the next user's file");
    add(&client, "next", &[&s.path("src/next")], &s.path("out/next"));
    client.dispatch("next", &RunRequest::default()).unwrap();
    assert_eq!(ended(&client, "next"), "completed");
    assert_eq!(
        fs::read(s.path("out/next")).unwrap(),
        b"the next user's file"
    );
    for name in ["fifo-1", "fifo-2"] {
        assert_eq!(ended(&client, name), "failed");
        let view = client.status(name).unwrap();
        assert_eq!(view.failures.len(), 1, "{view:?}");
        assert!(
            view.failures[0].error.contains("no longer a regular file"),
            "{view:?}"
        );
    }
    assert!(!s.path("out/fifo-1").exists());
    assert!(daemon.log().is_empty() || !daemon.log().contains("panicked"));
}

#[test]
fn the_callers_umask_is_honoured_through_the_daemon() {
    let s = Scratch::new();
    write_file(&s.path("src/dir/f"), b"data");
    fs::set_permissions(s.path("src/dir/f"), fs::Permissions::from_mode(0o644)).unwrap();
    fs::set_permissions(s.path("src/dir"), fs::Permissions::from_mode(0o755)).unwrap();
    // The daemon's umask is 022: it must not be the one applied.
    let daemon = Daemon::start(&s, "022", &[]);
    let cp = |umask: &str, dest: &str| {
        let mut cmd = Command::new("sh");
        cmd.arg("-c")
            .arg(format!("umask {umask}; exec \"$0\" \"$@\""))
            .arg(FERRY)
            .arg("--socket")
            .arg(&daemon.socket)
            .args(["cp", "--kind", "daemon", "--wait", "-r"])
            .arg(s.path("src/dir"))
            .arg(s.path(dest))
            .env_remove("FERRY_FAILPOINT");
        run_ok(&mut cmd);
    };
    cp("077", "private");
    assert_eq!(mode(&s.path("private/f")), 0o600);
    assert_eq!(mode(&s.path("private")), 0o700);
    cp("027", "group");
    assert_eq!(mode(&s.path("group/f")), 0o640);
    assert_eq!(mode(&s.path("group")), 0o750);
}

#[test]
fn setid_bits_are_cleared_when_ownership_cannot_be_kept() {
    if !root_or_skip("a copy by one user of another user's setuid file") {
        return;
    }
    let s = Scratch::new();
    fs::set_permissions(s.dir.path(), fs::Permissions::from_mode(0o755)).unwrap();
    // B's set-user-ID and set-group-ID program, readable by all.
    write_file(&s.path("b/prog"), b"#!/bin/sh\necho hi\n");
    own(&s.path("b/prog"), B, B, 0o6755);
    own(&s.path("b"), B, B, 0o755);
    fs::create_dir(s.path("a")).unwrap();
    own(&s.path("a"), A, A, 0o755);
    let daemon = Daemon::start(&s, "022", &[]);
    // Through the daemon…
    let out = run(as_user(A, FERRY)
        .arg("--socket")
        .arg(&daemon.socket)
        .args(["cp", "--kind", "daemon", "--wait", "-a"])
        .arg(s.path("b/prog"))
        .arg(s.path("a/via-daemon")));
    assert!(out.status.success(), "{out:?}");
    // …and locally (a store of A's own).
    let local = run(as_user(A, FERRY)
        .arg("--store")
        .arg(s.path("a/ferry.db"))
        .args(["cp", "-a"])
        .arg(s.path("b/prog"))
        .arg(s.path("a/local")));
    assert!(local.status.success(), "{local:?}");
    for (copy, out) in [("a/via-daemon", &out), ("a/local", &local)] {
        let meta = fs::metadata(s.path(copy)).unwrap();
        assert_eq!(meta.uid(), A, "{copy}");
        assert_eq!(
            meta.mode() & 0o7777,
            0o755,
            "{copy}: a set-id program of uid {A}'s making"
        );
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains("warning:") && err.contains("not kept") && err.contains("cleared"),
            "{copy}: the caller is told: {err}"
        );
    }
}

#[test]
fn groups_lost_before_a_restart_no_longer_open_files() {
    if !root_or_skip("a transfer by a user with a supplementary group") {
        return;
    }
    const GROUP: u32 = 64_100;
    let s = Scratch::new();
    fs::set_permissions(s.dir.path(), fs::Permissions::from_mode(0o755)).unwrap();
    let mut rng = fastrand::Rng::with_seed(18);
    write_file(&s.path("shared/f"), &random_bytes(&mut rng, 200_000));
    own(&s.path("shared/f"), 0, GROUP, 0o640);
    fs::create_dir(s.path("a")).unwrap();
    own(&s.path("a"), A, A, 0o755);
    let fifo = s.path("pause");
    run_ok(Command::new("mkfifo").arg(&fifo));
    let mut daemon = Daemon::start(
        &s,
        "022",
        &[
            ("FERRY_FAILPOINT", Path::new("commit.write_data=pause")),
            ("FERRY_FAILPOINT_FIFO", &fifo),
        ],
    );
    // A, in GROUP when the transfer is made (uid A has no user database
    // entry: the system gives it no supplementary group).
    let mut cp = Command::new("setpriv");
    cp.arg(format!("--reuid={A}"))
        .arg(format!("--regid={A}"))
        .arg(format!("--groups={GROUP}"))
        .arg(FERRY)
        .arg("--socket")
        .arg(&daemon.socket)
        .args(["cp", "--kind", "daemon", "--name", "grp"])
        .arg(s.path("shared/f"))
        .arg(s.path("a/f"));
    run_ok(&mut cp);
    // Held mid-copy, then killed.
    let pause = fs::OpenOptions::new().write(true).open(&fifo).unwrap();
    daemon.child.kill().unwrap();
    daemon.child.wait().unwrap();
    drop(pause);
    drop(daemon);
    let daemon = Daemon::start(&s, "022", &[]);
    let client = daemon.client();
    assert_eq!(ended(&client, "grp"), "failed");
    let view = client.status("grp").unwrap();
    assert!(
        view.failures
            .iter()
            .any(|f| f.error.contains("ermission denied")),
        "{view:?}"
    );
    assert!(!s.path("a/f").exists(), "copied with a group A lost");
}

/// Opens `n` connections as whoever runs it, holds them, then one more,
/// whose whole answer it prints; exits when its stdin closes.
const HOLD_CONNECTIONS: &str = r#"
import os, socket, sys
path, n = sys.argv[1], int(sys.argv[2])
held = []
for _ in range(n):
    s = socket.socket(socket.AF_UNIX)
    s.connect(path)
    held.append(s)
s = socket.socket(socket.AF_UNIX)
s.connect(path)
s.settimeout(60)
answer = b""
while True:
    chunk = s.recv(4096)
    if not chunk:
        break
    answer += chunk
sys.stdout.write(answer.decode())
sys.stdout.flush()
os.close(1)  # sys.stdout.close() would leave the descriptor open
sys.stdin.read()
"#;

#[test]
fn one_users_idle_connections_leave_the_others_served() {
    if !root_or_skip("connections from two other users") {
        return;
    }
    use std::io::Read;
    let s = Scratch::new();
    fs::set_permissions(s.dir.path(), fs::Permissions::from_mode(0o755)).unwrap();
    let daemon = Daemon::start(&s, "022", &[]);
    let mut hog = as_user(A, "/usr/bin/python3")
        .arg("-c")
        .arg(HOLD_CONNECTIONS)
        .arg(&daemon.socket)
        .arg("128")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut answer = String::new();
    hog.stdout
        .take()
        .unwrap()
        .read_to_string(&mut answer)
        .unwrap();
    let head = answer.to_ascii_lowercase();
    assert!(head.starts_with("http/1.1 503"), "{answer}");
    assert!(head.contains("retry-after: 1"), "{answer}");
    assert!(head.contains("content-type: application/json"), "{answer}");
    let body: serde_json::Value =
        serde_json::from_str(answer.split("\r\n\r\n").nth(1).unwrap()).unwrap();
    assert_eq!(body["kind"], "busy");
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .contains(&format!("uid {A}"))
    );
    // While A holds its 128, B is served.
    let status = run(as_user(B, FERRY)
        .arg("--socket")
        .arg(&daemon.socket)
        .args(["--daemon", "status"]));
    assert!(status.status.success(), "{status:?}");
    drop(hog.stdin.take());
    hog.wait().unwrap();
}

#[test]
fn idle_and_trickling_connections_are_closed_but_a_long_poll_is_not() {
    use std::io::{Read, Write};
    let s = Scratch::new();
    let daemon = Daemon::start(&s, "022", &[("FERRY_SERVE_IDLE_MS", Path::new("300"))]);
    let closed = |send: &[u8]| {
        let mut c = std::os::unix::net::UnixStream::connect(&daemon.socket).unwrap();
        c.set_read_timeout(Some(DEADLINE)).unwrap();
        c.write_all(send).unwrap();
        let mut rest = Vec::new();
        match c.read_to_end(&mut rest) {
            Ok(_) => assert!(rest.is_empty(), "closed without an answer: {rest:?}"),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
            Err(e) => panic!("the daemon kept an idle connection open: {e}"),
        }
    };
    closed(b"");
    closed(b"GET /v1/transf");
    // A long-poll longer than the idle timeout is a request in flight.
    let client = daemon.client();
    write_file(&s.path("src/f"), b"data");
    add(&client, "t", &[&s.path("src/f")], &s.path("out"));
    let w = client.wait_once("t", Duration::from_secs(1)).unwrap();
    assert!(!w.done, "never dispatched, so the long-poll timed out");
}

#[test]
fn a_transfer_over_the_entry_bound_and_a_user_over_the_transfer_bound_get_a_4xx() {
    let s = Scratch::new();
    fs::set_permissions(s.dir.path(), fs::Permissions::from_mode(0o755)).unwrap();
    for i in 0..5 {
        write_file(&s.path(&format!("src/f{i}")), b"x");
    }
    fs::set_permissions(s.path("src"), fs::Permissions::from_mode(0o755)).unwrap();
    let socket = s.path("ferry.sock");
    let log = s.path("bounded.log");
    // A's first transfer is held mid-copy (unfinished) at this fail point.
    let fifo = s.path("pause");
    run_ok(Command::new("mkfifo").arg(&fifo));
    fs::create_dir(s.path("a-out")).unwrap();
    own(&s.path("a-out"), A, A, 0o755);
    let mut child = s
        .ferry()
        .arg("--socket")
        .arg(&socket)
        .args(["serve", "--workers", "1"])
        .args(["--max-entries-per-transfer", "4"])
        .args(["--max-transfers-per-user", "1"])
        .env("FERRY_FAILPOINT", "commit.write_data=pause")
        .env("FERRY_FAILPOINT_FIFO", &fifo)
        .stderr(fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let daemon_log = || fs::read_to_string(&log).unwrap_or_default();
    let client = Client::new(&socket).unwrap();
    let deadline = Instant::now() + DEADLINE;
    while !client.answers() {
        assert!(child.try_wait().unwrap().is_none(), "{}", daemon_log());
        assert!(Instant::now() < deadline, "the daemon never answered");
        std::thread::sleep(Duration::from_millis(5));
    }
    // A directory of 5 files and itself: 6 entries, over 4.
    let cp = run(s
        .ferry()
        .arg("--socket")
        .arg(&socket)
        .args(["cp", "--kind", "daemon", "--name", "big", "-r"])
        .arg(s.path("src"))
        .arg(s.path("out")));
    assert_eq!(cp.status.code(), Some(40), "{cp:?}");
    let err = String::from_utf8_lossy(&cp.stderr);
    assert!(
        err.contains("entries per transfer: 4") && err.contains("big"),
        "{err}"
    );
    assert_eq!(client.status("big").unwrap().files, 0, "nothing was added");
    if root_or_skip("the per-user transfer bound (root is not bound)") {
        let as_a = |name: &str| {
            let out = run(as_user(A, FERRY)
                .arg("--socket")
                .arg(&socket)
                .args(["cp", "--kind", "daemon", "--name", name])
                .arg(s.path("src/f0"))
                .arg(s.path(&format!("a-out/{name}"))));
            (
                out.status.code(),
                String::from_utf8_lossy(&out.stderr).into_owned(),
            )
        };
        let (first, err) = as_a("a-1");
        assert_eq!(first, Some(0), "{err}");
        // Held mid-copy: unfinished while the FIFO is open.
        let pause = fs::OpenOptions::new().write(true).open(&fifo).unwrap();
        let (code, err) = as_a("a-2");
        drop(pause);
        assert_eq!(code, Some(40), "{err}");
        assert!(
            err.contains(&format!("uid {A}")) && err.contains("transfers per user: 1"),
            "{err}"
        );
    }
    let _ = child.kill();
    let _ = child.wait();
}
