//! cp's rsync and cp flags with `--kind daemon`, through the real binary
//! and a real `ferry serve`: `--bwlimit`, `--update` and `--no-clobber` go
//! to the daemon; `ferry limit NAME RATE` changes a daemon transfer's limit
//! while it runs; what the daemon does not take is refused with the
//! option's name, never silently ignored.

mod util;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use ferry::store::{EventFilter, SqliteStore, Store};
use util::daemon::Daemon;
use util::*;

/// A daemon on the scratch store, and the user's own store beside it.
struct Setup {
    s: Scratch,
    daemon: Daemon,
    mine: PathBuf,
}

impl Setup {
    fn new() -> Setup {
        let s = Scratch::new();
        let daemon = Daemon::serve(&s, &[]);
        let mine = s.path("state/mine.db");
        Setup { s, daemon, mine }
    }

    /// `ferry --store MINE --socket SOCKET`: the user, as they run it.
    fn user(&self) -> Command {
        let mut cmd = ferry_at(&self.mine);
        cmd.arg("--socket").arg(&self.daemon.socket);
        cmd
    }

    /// The daemon's events of this name, in order.
    fn events(&self, name: &str) -> Vec<ferry::model::Event> {
        let store = SqliteStore::open(&self.s.store()).unwrap();
        let filter = EventFilter {
            kind: Some(name.into()),
            ..Default::default()
        };
        store.events_since(0, &filter, 1000).unwrap()
    }
}

fn stdout(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// 24 MiB at `--bwlimit 2M` would take 12 s: the daemon records the limit
/// with the dispatch, `ferry limit paced 0` (a plain command: the user's
/// store has no such transfer, the daemon has) lifts it while it runs, as
/// a `transfer.limited` event, and the copy completes.
#[test]
fn bwlimit_goes_to_the_daemon_and_ferry_limit_changes_it_while_it_runs() {
    let setup = Setup::new();
    let s = &setup.s;
    let (src, dest) = (s.path("big"), s.path("copy"));
    let mut rng = fastrand::Rng::with_seed(8);
    write_file(&src, &random_bytes(&mut rng, 24 << 20));
    run_ok(
        setup
            .user()
            .args([
                "cp",
                "--kind",
                "daemon",
                "--name",
                "paced",
                "--bwlimit",
                "2M",
            ])
            .arg(&src)
            .arg(&dest),
    );
    let dispatched = setup.events("transfer.dispatched");
    assert_eq!(dispatched[0].context["bwlimit"], 2 << 20, "{dispatched:?}");
    let out = run_ok(setup.user().args(["limit", "paced", "0"]));
    assert!(
        stdout(&out).contains("in the daemon now moves at no limit"),
        "{out:?}"
    );
    let limited = setup.events("transfer.limited");
    assert_eq!(limited.len(), 1, "{limited:?}");
    assert_eq!(limited[0].context["bytes_per_second"], 0);
    run_ok(setup.user().args(["wait", "paced"]));
    assert_eq!(fs::read(&dest).unwrap(), fs::read(&src).unwrap());
    // Over: nothing to limit, said as such (13), and nothing recorded.
    let out = run(setup.user().args(["--daemon", "limit", "paced", "1M"]));
    assert_eq!(out.status.code(), Some(13), "{out:?}");
    assert_eq!(setup.events("transfer.limited").len(), 1);
}

fn set_mtime(path: &Path, secs: i64) {
    let out = Command::new("touch")
        .arg("-m")
        .arg("-d")
        .arg(format!("@{secs}"))
        .arg(path)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
}

/// `--update` keeps a newer destination, `--no-clobber` every existing
/// one, through the daemon as locally.
#[test]
fn update_and_no_clobber_go_to_the_daemon() {
    let setup = Setup::new();
    let s = &setup.s;
    let src = s.path("src");
    write_file(&src.join("old"), b"source, older");
    write_file(&src.join("new"), b"source, newer");
    write_file(&src.join("fresh"), b"only in the source");
    let dst = s.path("dst");
    write_file(&dst.join("old"), b"theirs, newer");
    write_file(&dst.join("new"), b"theirs, older");
    set_mtime(&src.join("old"), 1_000_000);
    set_mtime(&dst.join("old"), 2_000_000);
    set_mtime(&src.join("new"), 2_000_000);
    set_mtime(&dst.join("new"), 1_000_000);
    run_ok(
        setup
            .user()
            .args(["cp", "--kind", "daemon", "--wait", "-r", "--update"])
            .arg(src.join("old"))
            .arg(src.join("new"))
            .arg(&dst),
    );
    assert_eq!(fs::read(dst.join("old")).unwrap(), b"theirs, newer");
    assert_eq!(fs::read(dst.join("new")).unwrap(), b"source, newer");
    write_file(&dst.join("new"), b"theirs again");
    run_ok(
        setup
            .user()
            .args(["cp", "--kind", "daemon", "--wait", "--new", "--no-clobber"])
            .arg(src.join("new"))
            .arg(src.join("fresh"))
            .arg(&dst),
    );
    assert_eq!(fs::read(dst.join("new")).unwrap(), b"theirs again");
    assert_eq!(fs::read(dst.join("fresh")).unwrap(), b"only in the source");
}

/// What the daemon does not take is refused (exit 2) with the option's
/// name and what to do, before anything is asked of the daemon.
#[test]
fn what_the_daemon_does_not_take_is_refused_by_name() {
    let setup = Setup::new();
    let s = &setup.s;
    write_file(&s.path("src/f"), b"f");
    let list = s.path("list");
    write_file(&list, b"f\n");
    let list = list.to_str().unwrap();
    for (args, named) in [
        (&["--delete"][..], "--delete"),
        (&["--exclude", "*.tmp"][..], "--include/--exclude"),
        (&["--files-from", list][..], "--files-from"),
        (&["-v"][..], "-v"),
    ] {
        let out = run(setup
            .user()
            .args(["cp", "--kind", "daemon", "-r"])
            .args(args)
            .arg(s.path("src"))
            .arg(s.path("dst")));
        assert_eq!(out.status.code(), Some(2), "{args:?}: {out:?}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stderr.contains(named) && stderr.contains("--kind threads"),
            "{args:?}: {stderr}"
        );
    }
    assert!(!s.path("dst").exists());
    assert!(setup.events("transfer.created").is_empty(), "nothing asked");
}

/// `ferry serve --bwlimit 8M`: two transfers of 16 MiB, one writer each,
/// share the daemon's 8 MiB/s. The pace lets through at most one second
/// of idle credit (8 MiB) and one chunk (a quarter second, 2 MiB) per
/// writer ahead of it, so the 32 MiB cannot be done before (32 - 12) / 8
/// = 2.5 s after the first dispatch — where either alone, unlimited,
/// takes a fraction of a second.
#[test]
fn a_node_wide_limit_is_shared_by_all_the_daemons_transfers() {
    let s = Scratch::new();
    let socket = s.path("ferry.sock");
    let mut serve = s.ferry();
    serve
        .arg("--socket")
        .arg(&socket)
        .args(["serve", "--workers", "2", "--bwlimit", "8M"]);
    let daemon = Daemon::spawn(&s, serve, socket);
    let mine = s.path("state/mine.db");
    let user = || {
        let mut cmd = ferry_at(&mine);
        cmd.arg("--socket").arg(&daemon.socket);
        cmd
    };
    let mut rng = fastrand::Rng::with_seed(9);
    for name in ["a", "b"] {
        write_file(&s.path(name), &random_bytes(&mut rng, 16 << 20));
    }
    let started = std::time::Instant::now();
    for name in ["a", "b"] {
        run_ok(
            user()
                .args(["cp", "--kind", "daemon", "--threads", "1", "--name", name])
                .arg(s.path(name))
                .arg(s.path(&format!("{name}.copy"))),
        );
    }
    for name in ["a", "b"] {
        run_ok(user().args(["wait", name]));
    }
    let elapsed = started.elapsed().as_secs_f64();
    assert!(
        elapsed >= 2.5,
        "32 MiB at a shared 8 MiB/s took {elapsed:.2} s: the limit was not shared"
    );
    for name in ["a", "b"] {
        assert_eq!(
            fs::read(s.path(&format!("{name}.copy"))).unwrap(),
            fs::read(s.path(name)).unwrap()
        );
    }
}

/// A copy the daemon refuses (a missing source) leaves no transfer to
/// "resume": resuming it says there is nothing to resume (13), never
/// "completed" with no file, and the same name is free for the corrected
/// command.
#[test]
fn a_refused_daemon_copy_leaves_nothing_to_resume_and_frees_its_name() {
    let setup = Setup::new();
    let s = &setup.s;
    let daemon_cp = |src: &Path| {
        let mut cmd = setup.user();
        cmd.args(["cp", "-a", "--kind", "daemon", "--wait", "--name", "d3"])
            .arg(src)
            .arg(s.path("dst"));
        cmd
    };
    let out = run(&mut daemon_cp(&s.path("missing")));
    assert_eq!(out.status.code(), Some(3), "{out:?}");
    let out = run(setup.user().args(["--daemon", "resume", "d3"]));
    assert_eq!(out.status.code(), Some(13), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("nothing to resume"),
        "{out:?}"
    );
    write_file(&s.path("src/f"), b"at last");
    run_ok(&mut daemon_cp(&s.path("src")));
    assert_eq!(fs::read(s.path("dst/f")).unwrap(), b"at last");
}
