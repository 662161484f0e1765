//! `ferry serve --store postgres://…`: daemons of many nodes share one
//! store. Each runs what is dispatched to it, owning it under a lease; when
//! one dies, another (another node: a UTS namespace with its own host
//! name, `unshare -u`) takes its transfers over once the lease ran out, and
//! completes them; a node that does not mount the paths (a mount namespace
//! hiding them) leaves them to one that does. The per-user rules hold on the shared store, and the
//! URL's password appears in no log, error or metric.
//!
//! Needs root (`unshare -u`, `setpriv`) and the PostgreSQL test server
//! (`ferry_postgres::testing`); fails without them, never skips.

mod util;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use ferry::store::Store;
use ferry_postgres::testing::TestSchema;
use util::daemon::{DEADLINE, Daemon, mkfifo, paused};
use util::*;

/// Short, so that the take-over comes within a second or two of the kill;
/// the takeover loop runs every lease.
const LEASE: &str = "1s";

/// The schema's URL with a password (the test server trusts local
/// connections, so any password works): it must never be shown.
fn with_password(schema: &TestSchema) -> String {
    let url = schema
        .url
        .replacen("://postgres@", "://postgres:hunter2@", 1);
    assert_ne!(
        url, schema.url,
        "the test URL names its user: {}",
        schema.url
    );
    url
}

/// `ferry --store URL --socket SOCKET serve` on a node of its own (`host`),
/// with `env`, once it answers.
fn daemon_on(s: &Scratch, host: &str, url: &str, env: &[(&str, &Path)]) -> Daemon {
    daemon_without(s, host, url, env, None)
}

/// [`daemon_on`], on a node that does not see `hidden` (an empty file
/// system mounted over it in the daemon's own mount namespace).
fn daemon_without(
    s: &Scratch,
    host: &str,
    url: &str,
    env: &[(&str, &Path)],
    hidden: Option<&Path>,
) -> Daemon {
    let socket = s.path(&format!("{host}.sock"));
    let mut cmd = Command::new("unshare");
    let hide = hidden.map_or_else(String::new, |h| {
        format!("mount -t tmpfs none '{}' && ", h.display())
    });
    cmd.args(["-u", "-m", "sh", "-c"])
        .arg(format!("hostname {host} && {hide}exec \"$0\" \"$@\""))
        .arg(FERRY)
        .args(["--store", url, "--socket"])
        .arg(&socket)
        .args(["serve", "--workers", "1"])
        .env("FERRY_OWNER_LEASE", LEASE)
        .env_remove("FERRY_FAILPOINT");
    for (k, v) in env {
        cmd.env(k, v);
    }
    Daemon::spawn(s, cmd, socket)
}

fn transfer(schema: &TestSchema, name: &str) -> ferry::model::TransferRecord {
    schema
        .open()
        .transfer_by_name(name)
        .unwrap()
        .unwrap_or_else(|| panic!("no transfer {name} in the shared store"))
}

#[test]
fn a_dead_daemons_transfer_is_taken_over_by_a_daemon_of_another_node() {
    assert!(
        rustix::process::geteuid().is_root(),
        "this test needs root (unshare -u, setpriv): run it as root, as CI does"
    );
    let s = Scratch::new();
    let schema = TestSchema::new();
    let url = with_password(&schema);
    // The sources are on a file system node c does not mount.
    let (src, dst) = (s.path("data/src"), s.path("dst"));
    random_files(&src, 30, 3, 21, |i| 20_000 + i * 3_000);
    let fifo = s.path("pause");
    mkfifo(&fifo);
    let mut a = daemon_on(
        &s,
        "ferry-node-a",
        &url,
        &[
            ("FERRY_FAILPOINT", Path::new("commit.write_data:3=pause")),
            ("FERRY_FAILPOINT_FIFO", &fifo),
        ],
    );
    // Dispatched to node a's daemon, which stops mid-copy at its fail point.
    run_ok(
        ferry_at(&s.path("state/mine.db"))
            .arg("--socket")
            .arg(&a.socket)
            .args(["cp", "--kind", "daemon", "--name", "shared1", "-a"])
            .arg(&src)
            .arg(&dst),
    );
    let pause = paused(&fifo);
    let held = transfer(&schema, "shared1");
    assert_eq!(held.owner.host, "ferry-node-a");
    assert_eq!(held.state, ferry::TransferState::Running);

    // Node b's daemon starts while a lives: its start-up recovery (done
    // before it answers) leaves a's transfer alone, its lease being fresh.
    let b = daemon_on(&s, "ferry-node-b", &url, &[]);
    assert_eq!(transfer(&schema, "shared1").owner.host, "ferry-node-a");
    // The same user sees it through b too (one shared store); another
    // user does not.
    let listed = json(&run_ok(
        Command::new(FERRY)
            .arg("--socket")
            .arg(&b.socket)
            .args(["status", "--daemon", "--json"]),
    ));
    assert!(listed.to_string().contains("shared1"), "{listed}");
    let other = run(Command::new("setpriv")
        .args(["--reuid=64001", "--regid=64001", "--clear-groups", FERRY])
        .arg("--socket")
        .arg(&b.socket)
        .args(["status", "shared1", "--daemon"]));
    assert_ne!(other.status.code(), Some(0), "{other:?}");
    assert!(
        !String::from_utf8_lossy(&other.stdout).contains("running"),
        "{other:?}"
    );

    // Node a dies mid-copy. Node c, which does not mount the sources,
    // finds the lease run out and leaves the transfer alone.
    let c = daemon_without(&s, "ferry-node-c", &url, &[], Some(&s.path("data")));
    drop(b);
    a.child.kill().unwrap();
    a.exited();
    drop(pause);
    let deadline = Instant::now() + DEADLINE;
    while !c.log().contains("not reachable here") {
        assert!(
            Instant::now() < deadline,
            "node c never looked at the dead daemon's transfer: {}",
            c.log()
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let left = transfer(&schema, "shared1");
    assert_eq!(left.owner.host, "ferry-node-a", "{}", c.log());
    assert!(!left.state.is_terminal(), "{left:?}");

    // Node b (it reaches the paths) starts again, takes the transfer over
    // and completes it.
    let b = daemon_on(&s, "ferry-node-b", &url, &[]);
    let done = loop {
        let record = transfer(&schema, "shared1");
        if record.state.is_terminal() {
            break record;
        }
        assert!(
            Instant::now() < deadline,
            "node b never completed the dead daemon's transfer: {record:?}\n{}",
            b.log()
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    };
    assert_eq!(done.state, ferry::TransferState::Completed, "{}", b.log());
    assert_eq!(done.owner.host, "ferry-node-b");
    assert_same_tree(&src, &dst);
    assert!(
        temps(&dst).is_empty(),
        "temporaries left: {:?}",
        temps(&dst)
    );

    // The password is in no log, answer or metric.
    let metrics = b.client().metrics().unwrap();
    for (what, text) in [
        ("a's log", a.log()),
        ("b's log", b.log()),
        ("metrics", metrics),
    ] {
        assert!(
            !text.contains("hunter2"),
            "{what} shows the password: {text}"
        );
    }
    assert!(b.log().contains("postgres://postgres@"), "{}", b.log());
}

#[test]
fn a_second_daemon_of_the_same_store_on_another_node_runs_its_own_transfers() {
    assert!(
        rustix::process::geteuid().is_root(),
        "this test needs root (unshare -u): run it as root, as CI does"
    );
    let s = Scratch::new();
    let schema = TestSchema::new();
    let a = daemon_on(&s, "ferry-node-a", &schema.url, &[]);
    let b = daemon_on(&s, "ferry-node-b", &schema.url, &[]);
    let copy = |d: &Daemon, name: &str| -> PathBuf {
        let (src, dst) = (
            s.path(&format!("{name}-src")),
            s.path(&format!("{name}-dst")),
        );
        random_files(&src, 10, 2, 5, |i| 1_000 + i * 100);
        run_ok(
            ferry_at(&s.path("state/mine.db"))
                .arg("--socket")
                .arg(&d.socket)
                .args(["cp", "--kind", "daemon", "--wait", "--name", name, "-a"])
                .arg(&src)
                .arg(&dst),
        );
        assert_same_tree(&src, &dst);
        dst
    };
    copy(&a, "on-a");
    copy(&b, "on-b");
    // Each ran its own, recorded in the one store.
    assert_eq!(transfer(&schema, "on-a").owner.host, "ferry-node-a");
    assert_eq!(transfer(&schema, "on-b").owner.host, "ferry-node-b");
    for name in ["on-a", "on-b"] {
        assert_eq!(
            transfer(&schema, name).state,
            ferry::TransferState::Completed
        );
    }
}
