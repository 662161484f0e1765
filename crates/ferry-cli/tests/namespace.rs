//! One namespace for a user's transfers: a transfer handed to the daemon
//! (`cp --kind daemon`, on the daemon's own store) is found by the plain
//! commands, with no `--daemon`, and shown in the same table and the same
//! JSON shape as one of the user's store.

mod util;

use std::collections::BTreeSet;
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use util::daemon::{Daemon, mkfifo, paused};
use util::*;

/// A daemon on the scratch store, and the user's own store beside it,
/// which has never heard of the daemon's transfers.
struct Setup {
    s: Scratch,
    daemon: Daemon,
    mine: PathBuf,
}

impl Setup {
    fn new(env: &[(&str, &Path)], s: Scratch) -> Setup {
        let daemon = Daemon::serve(&s, env);
        let mine = s.path("state/mine.db");
        ferry::store::SqliteStore::open(&mine).unwrap();
        Setup { s, daemon, mine }
    }

    /// `ferry --store MINE --socket SOCKET`: the user, as they run it.
    fn user(&self) -> Command {
        let mut cmd = ferry_at(&self.mine);
        cmd.arg("--socket").arg(&self.daemon.socket);
        cmd
    }
}

fn stdout(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn a_daemon_transfer_is_found_by_plain_status_wait_and_watch() {
    let s = Scratch::new();
    write_file(&s.path("src/f"), b"to the daemon");
    let fifo = s.path("pause");
    mkfifo(&fifo);
    let setup = Setup::new(
        &[
            ("FERRY_FAILPOINT", Path::new("commit.write_data=pause")),
            ("FERRY_FAILPOINT_FIFO", &fifo),
        ],
        s,
    );
    let s = &setup.s;
    run_ok(
        setup
            .user()
            .args(["cp", "--kind", "daemon", "--name", "handed", "-r"])
            .arg(s.path("src"))
            .arg(s.path("dst")),
    );
    let pause = paused(&fifo);
    let out = run_ok(setup.user().args(["status", "handed", "--json"]));
    assert_eq!(json(&out)["state"], "running", "{out:?}");
    // Plain `status`, no name: the daemon's transfer is listed too.
    let out = run_ok(setup.user().arg("status"));
    assert!(stdout(&out).contains("handed"), "{out:?}");
    // A user with no store at all still has the daemon's transfers.
    let out = run_ok(
        ferry_at(&s.path("state/none.db"))
            .arg("--socket")
            .arg(&setup.daemon.socket)
            .arg("status"),
    );
    assert!(stdout(&out).contains("handed"), "{out:?}");
    assert!(!s.path("state/none.db").exists(), "status made no store");
    let waiting = setup
        .user()
        .args(["wait", "handed"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let watching = setup
        .user()
        .args(["watch", "--until-done", "handed"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    drop(pause);
    let out = waiting.wait_with_output().unwrap();
    assert!(out.status.success(), "wait: {out:?}");
    let out = watching.wait_with_output().unwrap();
    assert!(out.status.success(), "watch --until-done: {out:?}");
    let events = stdout(&out);
    assert!(
        events
            .lines()
            .last()
            .unwrap_or("")
            .contains("transfer.completed"),
        "the watch ends with the transfer's end: {events}"
    );
    assert_eq!(fs::read(s.path("dst/f")).unwrap(), b"to the daemon");
    // `verify NAME`: the daemon reads its files back; a changed byte is
    // found (exit 21) and named.
    let out = run_ok(setup.user().args(["verify", "handed"]));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("verified 1 file of 1 transfer: 1 match"),
        "{out:?}"
    );
    fs::write(s.path("dst/f"), b"to the dAemon").unwrap();
    let out = run(setup.user().args(["verify", "handed"]));
    assert_eq!(out.status.code(), Some(21), "{out:?}");
    assert!(stdout(&out).contains("dst/f: expected"), "{out:?}");
    // A name neither side has: refused, exit 10, and both sides named.
    let out = run(setup.user().args(["status", "nowhere"]));
    assert_eq!(out.status.code(), Some(10), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("mine.db") && err.contains("the daemon at"),
        "{err}"
    );
}

/// Every key path of a JSON value (`owner.pid`, `counts.files`…).
fn keys(value: &serde_json::Value) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    if let Some(map) = value.as_object() {
        for (k, v) in map {
            out.insert(k.clone());
            for sub in keys(v) {
                out.insert(format!("{k}.{sub}"));
            }
        }
    }
    out
}

/// The cells of a table line and where each starts and ends (cells are
/// separated by two spaces or more; a cell holds single spaces).
fn cells(line: &str) -> Vec<(usize, usize, String)> {
    let mut out = Vec::new();
    let chars: Vec<char> = line.chars().collect();
    let mut i = 0;
    while i < chars.len() {
        if chars[i] == ' ' {
            i += 1;
            continue;
        }
        let start = i;
        while i < chars.len() && !(chars[i] == ' ' && chars.get(i + 1).is_none_or(|c| *c == ' ')) {
            i += 1;
        }
        out.push((start, i, chars[start..i].iter().collect()));
    }
    out
}

/// Each column of `table` under its heading: words start where their
/// heading starts, numbers (id, dirs, done) end where theirs ends.
fn assert_aligned(table: &str) {
    let lines: Vec<&str> = table.lines().collect();
    let header = cells(lines[0]);
    let names: Vec<&str> = header.iter().map(|c| c.2.as_str()).collect();
    assert_eq!(
        names,
        [
            "id", "name", "kind", "state", "files", "dirs", "done", "updated", "owner"
        ],
        "{table}"
    );
    for line in &lines[1..] {
        let row = cells(line);
        assert_eq!(
            row.len(),
            header.len(),
            "a cell per column: {line:?}\n{table}"
        );
        for (column, (cell, heading)) in row.iter().zip(&header).enumerate() {
            if matches!(heading.2.as_str(), "id" | "dirs" | "done") {
                assert_eq!(
                    cell.1, heading.1,
                    "column {column} ends under its heading:\n{table}"
                );
            } else {
                assert_eq!(
                    cell.0, heading.0,
                    "column {column} starts under its heading:\n{table}"
                );
            }
        }
    }
}

#[test]
fn status_is_one_table_and_one_json_shape_for_local_and_daemon_transfers() {
    let s = Scratch::new();
    write_file(&s.path("src/a"), b"one");
    write_file(&s.path("src/d/b"), b"two");
    let setup = Setup::new(&[], s);
    let s = &setup.s;
    // A local one with a long name, and one handed to the daemon.
    let long = "a-job-name-longer-than-the-column-it-had";
    run_ok(
        setup
            .user()
            .args(["cp", "-r", "--name", long])
            .arg(s.path("src"))
            .arg(s.path("here")),
    );
    run_ok(
        setup
            .user()
            .args(["cp", "--kind", "daemon", "--wait", "--name", "there", "-r"])
            .arg(s.path("src"))
            .arg(s.path("there")),
    );
    let local = json(&run_ok(setup.user().args(["status", long, "--json"])));
    let handed = json(&run_ok(setup.user().args(["status", "there", "--json"])));
    let via_daemon = json(&run_ok(
        setup.user().args(["--daemon", "status", "there", "--json"]),
    ));
    assert_eq!(keys(&local), keys(&handed), "{local}\n{handed}");
    assert_eq!(handed, via_daemon);
    for row in [&local, &handed] {
        assert_eq!(row["state"], "completed", "{row}");
        assert_eq!(row["counts"]["files"], 2, "{row}");
        assert_eq!(row["counts"]["copied"], 2, "{row}");
        assert_eq!(row["bytes"], 6, "{row}");
    }
    assert_eq!(handed["kind"], "daemon");
    // Every transfer in one array, each of the one shape.
    let all = json(&run_ok(setup.user().args(["status", "--json"])));
    let all = all.as_array().unwrap();
    assert_eq!(all.len(), 2, "{all:?}");
    assert_eq!(keys(&all[0]), keys(&all[1]));
    // One table, its columns under their headings whatever the lengths.
    let table = stdout(&run_ok(setup.user().arg("status")));
    assert_eq!(table.lines().count(), 3, "{table}");
    assert_aligned(&table);
    let words = |t: &str, name: &str| {
        t.lines()
            .find(|l| l.contains(name))
            .map(|l| {
                cells(l)
                    .into_iter()
                    .map(|c| c.2)
                    .skip(1)
                    .collect::<Vec<_>>()
            })
            .unwrap()
    };
    // Refused on this side: said as ferry's, not as the daemon's.
    let odd = s.path("odd").join(std::ffi::OsStr::from_bytes(b"\xff"));
    write_file(&odd, b"x");
    let out = run(setup
        .user()
        .args(["cp", "--kind", "daemon"])
        .arg(&odd)
        .arg(s.path("o")));
    assert_eq!(out.status.code(), Some(32), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("not sent to the daemon") && !err.contains("the daemon says"),
        "{err}"
    );
    let out = run(setup.user().args(["--daemon", "store", "check"]));
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert!(
        !String::from_utf8_lossy(&out.stderr).contains("the daemon says"),
        "{out:?}"
    );
    let daemon_table = stdout(&run_ok(setup.user().args(["--daemon", "status"])));
    assert_aligned(&daemon_table);
    assert_eq!(words(&table, "there"), words(&daemon_table, "there"));
    assert!(
        words(&table, "there").contains(&"2 files: 2 copied, 0 skipped, 0 failed".to_string()),
        "{table}"
    );
}
