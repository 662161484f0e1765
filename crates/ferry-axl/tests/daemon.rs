//! The burst buffer's post-stage case from C: a program hands a copy to a
//! running `ferry serve` (`AXL_XFER_ASYNC_DAEMON` through axl.h,
//! `FERRY_KIND_DAEMON` through ferry.h; tests/c/axl_daemon.c) and exits at
//! once; the daemon completes the transfer after it. The daemon is held
//! mid-copy by a fail point (`pause` on a FIFO) until the program has
//! exited, so "after" is certain, not timing. Without a daemon the same
//! types run on threads, as AXL falls back to pthreads.

mod util;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use util::{Link, compile, ferry_binary, make_tree, run, same_tree};

/// Anything this test waits for: the socket, the daemon's pause.
const DEADLINE: Duration = Duration::from_secs(60);

/// `ferry serve` on a scratch store and socket, killed when dropped.
struct Serve {
    child: Child,
    socket: PathBuf,
    log: PathBuf,
}

impl Serve {
    fn start(dir: &Path, env: &[(&str, &Path)]) -> Serve {
        let (socket, log) = (dir.join("ferry.sock"), dir.join("serve.log"));
        let mut cmd = Command::new(ferry_binary());
        cmd.arg("--store")
            .arg(dir.join("daemon.db"))
            .arg("--socket")
            .arg(&socket)
            .args(["serve", "--workers", "2"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(fs::File::create(&log).expect("log"));
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("ferry serve starts");
        let deadline = Instant::now() + DEADLINE;
        while std::os::unix::net::UnixStream::connect(&socket).is_err() {
            if let Some(status) = child.try_wait().expect("try_wait") {
                panic!(
                    "ferry serve exited ({status}): {}",
                    fs::read_to_string(&log).unwrap_or_default()
                );
            }
            assert!(Instant::now() < deadline, "the daemon never answered");
            std::thread::sleep(Duration::from_millis(5));
        }
        Serve { child, socket, log }
    }

    /// `ferry --daemon wait NAME`: (exit code, stdout and stderr).
    fn wait(&self, name: &str) -> (i32, String) {
        let out = Command::new(ferry_binary())
            .arg("--socket")
            .arg(&self.socket)
            .args(["--daemon", "wait", name])
            .output()
            .expect("ferry wait");
        let text = format!(
            "{}{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
            fs::read_to_string(&self.log).unwrap_or_default()
        );
        (out.status.code().unwrap_or(-1), text)
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn s(p: &Path) -> &str {
    p.to_str().expect("utf-8")
}

#[test]
fn a_c_program_dispatches_to_the_daemon_exits_and_the_transfer_completes_after() {
    let dir = tempfile::Builder::new()
        .prefix("ferry-axl-daemon-")
        .tempdir()
        .expect("tempdir");
    let src = dir.path().join("src");
    make_tree(&src, 10);
    let fifo = dir.path().join("pause");
    let made = Command::new("mkfifo").arg(&fifo).status().expect("mkfifo");
    assert!(made.success());
    let serve = Serve::start(
        dir.path(),
        &[
            ("FERRY_FAILPOINT", Path::new("commit.write_data=pause")),
            ("FERRY_FAILPOINT_FIFO", &fifo),
        ],
    );
    let program = compile("axl_daemon.c", "axl", Link::Dynamic);
    let env = [("FERRY_SOCKET", s(&serve.socket))];

    // axl.h: dispatched, finalized, exited 0 while the daemon is (or will
    // be) held at its first chunk.
    let dst = dir.path().join("dst-axl");
    let (code, stderr) = run(&program, &["axl", "poststage", s(&src), s(&dst)], &env);
    assert_eq!(code, 0, "{stderr}");
    // Returns once the daemon is paused mid-copy: after the program's exit.
    let pause = fs::OpenOptions::new()
        .write(true)
        .open(&fifo)
        .expect("open the fifo");
    assert!(!same_tree(&src, &dst), "complete before the daemon went on");
    drop(pause);
    let (code, text) = serve.wait("poststage");
    assert_eq!(code, 0, "{text}");
    assert!(text.contains("completed"), "{text}");
    assert!(same_tree(&src, &dst), "the daemon's copy differs");

    // ferry.h: FERRY_KIND_DAEMON, no store, closed at once.
    let dst = dir.path().join("dst-ferry");
    let (code, stderr) = run(&program, &["ferry", "native", s(&src), s(&dst)], &env);
    assert_eq!(code, 0, "{stderr}");
    let (code, text) = serve.wait("native");
    assert_eq!(code, 0, "{text}");
    assert!(same_tree(&src, &dst), "the daemon's copy differs");
}

/// No daemon answers: AXL_XFER_ASYNC_BBAPI (and DW, DAEMON, DEFAULT) run on
/// threads in the program, as AXL falls back to pthreads; FERRY_KIND_DAEMON,
/// which asks for the daemon, fails with FERRY_E_NO_DAEMON (30).
#[test]
fn without_a_daemon_axl_falls_back_to_threads_and_ferry_kind_daemon_says_so() {
    let dir = tempfile::tempdir().expect("tempdir");
    let src = dir.path().join("src");
    make_tree(&src, 10);
    let nobody = dir.path().join("nobody.sock");
    let env = [("FERRY_SOCKET", s(&nobody))];
    let axl_cp = compile("axl_cp.c", "axl", Link::Dynamic);
    for kind in ["bbapi", "dw", "daemon", "default"] {
        let dst = dir.path().join(format!("dst-{kind}"));
        let (code, stderr) = run(&axl_cp, &["-r", "-X", kind, s(&src), s(&dst)], &env);
        assert_eq!(code, 0, "{kind}: {stderr}");
        assert!(same_tree(&src, &dst), "{kind}: the copy differs");
    }
    let program = compile("axl_daemon.c", "axl", Link::Dynamic);
    let dst = dir.path().join("dst-ferry");
    let (code, stderr) = run(&program, &["ferry", "x", s(&src), s(&dst)], &env);
    assert_eq!(code, 1, "{stderr}");
    assert!(
        stderr.contains("no ferry daemon answers on") && stderr.contains(s(&nobody)),
        "{stderr}"
    );
}
