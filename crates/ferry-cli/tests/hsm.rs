//! `ferry hsm`: the upcall, the friendly commands, real worker processes
//! (one SIGKILLed mid-archive), exit codes and request events.

mod util;

use std::fs;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};
use std::time::{Duration, Instant};

use util::{Scratch, json, run, run_ok};

fn archive_dir(s: &Scratch) -> PathBuf {
    let dir = s.path("archive");
    fs::create_dir_all(&dir).unwrap();
    dir
}

fn worker_args(s: &Scratch) -> Vec<String> {
    vec![
        "hsm".into(),
        "worker".into(),
        "--archive".into(),
        format!("posix:{}", archive_dir(s).display()),
        "--lease-ms".into(),
        "300".into(),
        "--until-idle".into(),
    ]
}

fn run_worker(s: &Scratch) -> Output {
    run_ok(s.ferry().args(worker_args(s)))
}

fn code(out: &Output) -> Option<i32> {
    out.status.code()
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The request id in "… queued as request N" / "joined request N".
fn request_id(out: &Output) -> i64 {
    let text = stdout(out);
    let tail = text
        .split("request ")
        .nth(1)
        .unwrap_or_else(|| panic!("no request id in {text:?}"));
    tail.split(|c: char| !c.is_ascii_digit())
        .next()
        .unwrap()
        .parse()
        .unwrap()
}

fn request(s: &Scratch, id: i64) -> serde_json::Value {
    json(&run_ok(s.ferry().args([
        "hsm",
        "status",
        &id.to_string(),
        "--json",
    ])))
}

fn file_status(s: &Scratch, path: &Path) -> serde_json::Value {
    json(&run_ok(
        s.ferry().args(["hsm", "status"]).arg(path).arg("--json"),
    ))
}

fn data(len: usize) -> Vec<u8> {
    let mut rng = fastrand::Rng::with_seed(8);
    util::random_bytes(&mut rng, len)
}

#[test]
fn worker_killed_mid_archive_loses_its_lease_and_another_completes_it() {
    let s = Scratch::new();
    let file = s.path("fs/big");
    util::write_file(&file, &data(6 << 20));
    let id = request_id(&run_ok(s.ferry().args(["hsm", "archive"]).arg(&file)));

    // Worker A dies by SIGKILL at its third chunk, its lease held.
    let a = run(s
        .ferry()
        .args(worker_args(&s))
        .args(["--name", "worker-a"])
        .env("FERRY_FAILPOINT", "hsm.archive_data:3"));
    assert_eq!(a.status.signal(), Some(9), "worker A was killed");
    let r = request(&s, id);
    assert_eq!(r["state"], "started");
    assert_eq!(r["attempts"], 1);
    assert_eq!(r["lease_holder"], "worker-a");
    assert_eq!(
        file_status_code(&s, &file),
        Some(22),
        "nothing archived yet"
    );

    // Worker B waits for A's lease to expire, then completes the request.
    let b = run_ok(s.ferry().args(worker_args(&s)).args(["--name", "worker-b"]));
    assert!(String::from_utf8_lossy(&b.stderr).contains("1 succeeded"));
    let r = request(&s, id);
    assert_eq!(r["state"], "succeed");
    assert_eq!(r["attempts"], 2);
    let entry = file_status(&s, &file);
    assert_eq!(entry["state"], "archived");
    assert_eq!(entry["xattr"], "archived");
    let object = entry["object"].as_str().unwrap().to_owned();
    assert!(object.ends_with(&format!("-{id}-2")), "{object}");
    let path = archive_dir(&s)
        .join(&object[..2])
        .join(&object[2..4])
        .join(&object);
    assert_eq!(fs::read(&path).unwrap(), data(6 << 20));
    // Attempt 1 never got an object under its name, and what it was
    // writing when it died is gone once attempt 2 completed.
    let stale = path.with_file_name(object.replace(&format!("-{id}-2"), &format!("-{id}-1")));
    assert!(!stale.exists());
    let left: Vec<_> = util::walk(&archive_dir(&s))
        .into_iter()
        .filter(|p| p.to_string_lossy().ends_with(".tmp"))
        .collect();
    assert!(left.is_empty(), "partial objects left: {left:?}");

    // The log tells the story, in order (read as `ferry watch --json` prints it).
    let store = ferry::store::SqliteStore::open(&s.store()).unwrap();
    let filter = ferry::store::EventFilter {
        kind: Some("request".into()),
        ..Default::default()
    };
    let lines: Vec<serde_json::Value> = ferry::store::Store::events_since(&store, 0, &filter, 100)
        .unwrap()
        .iter()
        .map(|e| e.to_json())
        .collect();
    let names: Vec<&str> = lines.iter().map(|v| v["event"].as_str().unwrap()).collect();
    assert_eq!(
        names,
        [
            "request.waiting",
            "request.started",
            "request.waiting",
            "request.started",
            "request.succeed"
        ]
    );
    assert_eq!(lines[2]["context"]["reason"], "lease expired");
    assert_eq!(lines[2]["context"]["worker"], "worker-a");
    assert!(
        lines
            .iter()
            .all(|v| v["subject"] == serde_json::json!({"request": id}))
    );
}

fn file_status_code(s: &Scratch, path: &Path) -> Option<i32> {
    code(&run(s.ferry().args(["hsm", "status"]).arg(path)))
}

#[test]
fn upcall_enqueue_then_worker_archives_by_fid() {
    let s = Scratch::new();
    let a = s.path("fs/a");
    let b = s.path("fs/b");
    util::write_file(&a, b"alpha");
    util::write_file(&b, b"bravo");
    let out = run_ok(
        s.ferry()
            .args([
                "hsm", "enqueue", "archive", "lustre0", "1", "0x10", "opaque",
            ])
            .arg(&a)
            .arg(&b),
    );
    assert_eq!(stdout(&out).lines().count(), 2);
    assert!(stdout(&out).contains("queued as request"));
    let listed = run_ok(
        s.ferry()
            .args(["hsm", "list", "--state", "waiting", "--json"]),
    );
    let requests: Vec<serde_json::Value> = stdout(&listed)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(requests.len(), 2);
    assert_eq!(requests[0]["fsname"], "lustre0");
    assert_eq!(requests[0]["flags"], 16);
    run_worker(&s);
    for path in [&a, &b] {
        assert_eq!(file_status(&s, path)["state"], "archived");
    }
    let stats = json(&run_ok(s.ferry().args(["hsm", "stats", "--json"])));
    assert_eq!(
        stats["counts"][0],
        serde_json::json!(["archive", "succeed", 2])
    );
    // The upcall never looks at the file system: a FID that names nothing
    // (yet) is queued all the same; the worker finds out.
    let ghost = run_ok(s.ferry().args([
        "hsm",
        "enqueue",
        "archive",
        "lustre0",
        "1",
        "0",
        "",
        "[0x200000400:0x7:0x0]",
    ]));
    let ghost_id = request_id(&ghost);
    assert_eq!(request(&s, ghost_id)["state"], "waiting");
    // Without --fid-root, a relative FID is refused, never looked up in
    // the worker's current directory (where a file of that name waits).
    let cwd = s.path("cwd");
    util::write_file(&cwd.join("[0x200000400:0x7:0x0]"), b"not this one");
    run_ok(s.ferry().args(worker_args(&s)).current_dir(&cwd));
    let r = request(&s, ghost_id);
    assert_eq!(r["state"], "failed");
    let error = r["error"].as_str().unwrap();
    assert!(
        error.contains("0x200000400") && error.contains("--fid-root"),
        "{error}"
    );
    // A FID that is not a path is found under the worker's --fid-root (for
    // Lustre, MOUNT/.lustre/fid).
    let fid = "[0x200000400:0x8:0x0]";
    util::write_file(&s.path("fid-root").join(fid), b"by fid");
    let by_fid = request_id(&run_ok(
        s.ferry()
            .args(["hsm", "enqueue", "archive", "lustre0", "1", "0", "", fid]),
    ));
    run_ok(
        s.ferry()
            .args(worker_args(&s))
            .arg("--fid-root")
            .arg(s.path("fid-root")),
    );
    assert_eq!(request(&s, by_fid)["state"], "succeed");
    // Archiving again while unchanged: nothing to do.
    let again = run_ok(s.ferry().args(["hsm", "archive"]).arg(&a));
    assert!(
        stdout(&again).contains("nothing to do"),
        "{}",
        stdout(&again)
    );
}

#[test]
fn remove_cancels_a_pending_archive() {
    let s = Scratch::new();
    let f = s.path("fs/f");
    util::write_file(&f, b"data");
    let id = request_id(&run_ok(s.ferry().args(["hsm", "archive"]).arg(&f)));
    let out = run_ok(s.ferry().args(["hsm", "remove"]).arg(&f));
    // It did something: it canceled the archive, and says so.
    let said = stdout(&out);
    assert!(
        !said.contains("nothing to do") && said.contains("canceled its waiting archive"),
        "{said}"
    );
    let r = request(&s, id);
    assert_eq!(r["state"], "canceled");
    assert!(r["error"].as_str().unwrap().contains("remove"));
    // The worker has nothing left to do, and the file was never archived.
    run_worker(&s);
    assert_eq!(file_status_code(&s, &f), Some(22));
}

/// A changed file's new archive canceled by a remove used to leave the
/// catalog with the old archived size.
#[test]
fn a_remove_after_a_change_records_the_file_as_it_is_now() {
    let s = Scratch::new();
    let f = s.path("fs/f");
    util::write_file(&f, b"data");
    run_ok(s.ferry().args(["hsm", "archive"]).arg(&f));
    run_worker(&s);
    fs::write(&f, b"longer data now").unwrap();
    let id = request_id(&run_ok(s.ferry().args(["hsm", "archive"]).arg(&f)));
    run_ok(s.ferry().args(["hsm", "remove"]).arg(&f));
    assert_eq!(request(&s, id)["state"], "canceled");
    run_worker(&s);
    let entry = file_status(&s, &f);
    assert_eq!(entry["state"], "exists", "{entry}");
    assert_eq!(entry["size"], 15, "{entry}");
}

#[test]
fn release_restore_and_dirty_files_with_exit_codes() {
    let s = Scratch::new();
    let f = s.path("fs/f");
    util::write_file(&f, &data(300_000));
    run_ok(s.ferry().args(["hsm", "archive"]).arg(&f));
    run_worker(&s);
    run_ok(s.ferry().args(["hsm", "release"]).arg(&f));
    assert_eq!(file_status(&s, &f)["state"], "released");
    assert_eq!(fs::metadata(&f).unwrap().len(), 300_000);

    // restore --wait blocks until a worker has brought the data back.
    let waiting = s
        .ferry()
        .args(["hsm", "restore", "--wait"])
        .arg(&f)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let listed = run_ok(s.ferry().args(["hsm", "list", "--state", "waiting"]));
        if stdout(&listed).contains("restore") {
            break;
        }
        assert!(Instant::now() < deadline, "the restore was never queued");
    }
    run_worker(&s);
    let out = waiting.wait_with_output().unwrap();
    assert_eq!(code(&out), Some(0), "{out:?}");
    assert!(stdout(&out).contains("succeed"));
    assert_eq!(fs::read(&f).unwrap(), data(300_000));

    // Changed since archiving: release is refused (24) and the file is dirty.
    fs::write(&f, b"new contents").unwrap();
    let refused = run(s.ferry().args(["hsm", "release"]).arg(&f));
    assert_eq!(code(&refused), Some(24));
    assert!(String::from_utf8_lossy(&refused.stderr).contains("archive it again"));
    assert_eq!(file_status(&s, &f)["state"], "dirty");
    assert_eq!(fs::read(&f).unwrap(), b"new contents");
}

#[test]
fn user_mistakes_have_their_own_exit_codes() {
    let s = Scratch::new();
    let f = s.path("fs/f");
    util::write_file(&f, b"x");
    // Not in the catalog; no such request.
    assert_eq!(file_status_code(&s, &f), Some(22));
    assert_eq!(
        code(&run(s.ferry().args(["hsm", "release"]).arg(&f))),
        Some(22)
    );
    assert_eq!(
        code(&run(s.ferry().args(["hsm", "cancel", "12345"]))),
        Some(22)
    );
    // A bad archive.
    let bad = run(s.ferry().args(["hsm", "worker", "--archive", "tape:0"]));
    assert_eq!(code(&bad), Some(27));
    let missing = run(s
        .ferry()
        .args(["hsm", "worker", "--archive"])
        .arg(format!("posix:{}", s.path("nope").display())));
    assert_eq!(code(&missing), Some(27));
    // A restore of a file never archived is refused at once (22)...
    let refused = run(s.ferry().args(["hsm", "restore"]).arg(&f));
    assert_eq!(code(&refused), Some(22), "{refused:?}");
    assert_eq!(stdout(&run_ok(s.ferry().args(["hsm", "list"]))), "");
    // ...and one whose archived copy was removed fails: --wait exits 23.
    run_ok(s.ferry().args(["hsm", "archive"]).arg(&f));
    run_worker(&s);
    run_ok(s.ferry().args(["hsm", "remove"]).arg(&f));
    run_worker(&s);
    let id = request_id(&run_ok(s.ferry().args(["hsm", "restore"]).arg(&f)));
    let waiting = spawn_waiting(&s, "restore", &f, id);
    run_worker(&s);
    let out = waiting.wait_with_output().unwrap();
    assert_eq!(code(&out), Some(23), "{out:?}");
    let r = request(&s, id);
    assert_eq!(r["state"], "failed");
    assert!(r["error"].as_str().unwrap().contains("no archived copy"));
    // Cancelling something that is over: 26.
    assert_eq!(
        code(&run(s.ferry().args(["hsm", "cancel", &id.to_string()]))),
        Some(26)
    );
    // A canceled request: --wait exits 25.
    let id = request_id(&run_ok(s.ferry().args(["hsm", "archive"]).arg(&f)));
    let waiting = spawn_waiting(&s, "archive", &f, id);
    run_ok(s.ferry().args(["hsm", "cancel", &id.to_string()]));
    let out = waiting.wait_with_output().unwrap();
    assert_eq!(code(&out), Some(25), "{out:?}");
}

/// `ferry hsm ACTION --wait PATH`, once it has joined request `id`.
fn spawn_waiting(s: &Scratch, action: &str, path: &Path, id: i64) -> std::process::Child {
    let child = s
        .ferry()
        .args(["hsm", action, "--wait"])
        .arg(path)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while request(s, id)["waiters"] != 2 {
        assert!(Instant::now() < deadline, "the waiter never joined");
    }
    child
}

/// A byte rewritten in place, then the mtime set back (what time-preserving
/// tools do): size and mtime look unchanged, but release used to punch the
/// file (exit 0) and the change was lost for good. The change time gives
/// it away: release refuses, the file is untouched and dirty; archived
/// again, it releases and restores with the new byte. Data written into a
/// released stub the same way is not restored over either.
#[test]
fn release_refuses_a_file_changed_in_place_with_its_mtime_set_back() {
    use std::os::unix::fs::FileExt;
    let s = Scratch::new();
    let f = s.path("fs/f");
    util::write_file(&f, &data(300_000));
    run_ok(s.ferry().args(["hsm", "archive"]).arg(&f));
    run_worker(&s);
    let rewrite = |at: u64, byte: u8| {
        let before = fs::metadata(&f).unwrap();
        let file = fs::OpenOptions::new().write(true).open(&f).unwrap();
        file.write_all_at(&[byte], at).unwrap();
        file.set_modified(before.modified().unwrap()).unwrap();
        drop(file);
        let after = fs::metadata(&f).unwrap();
        assert_eq!(after.len(), before.len());
        assert_eq!(after.modified().unwrap(), before.modified().unwrap());
    };
    rewrite(1000, b'Z');
    let mut changed = data(300_000);
    changed[1000] = b'Z';

    let refused = run(s.ferry().args(["hsm", "release"]).arg(&f));
    assert_eq!(code(&refused), Some(24));
    assert!(String::from_utf8_lossy(&refused.stderr).contains("archive it again"));
    assert_eq!(file_status(&s, &f)["state"], "dirty");
    assert_eq!(fs::read(&f).unwrap(), changed, "the file is untouched");

    run_ok(s.ferry().args(["hsm", "archive"]).arg(&f));
    run_worker(&s);
    run_ok(s.ferry().args(["hsm", "release"]).arg(&f));
    run_ok(s.ferry().args(["hsm", "restore"]).arg(&f));
    run_worker(&s);
    assert_eq!(
        fs::read(&f).unwrap(),
        changed,
        "the restore brings back the new byte"
    );

    // Into a released stub: the restore fails rather than overwrite it.
    run_ok(s.ferry().args(["hsm", "release"]).arg(&f));
    rewrite(7, b'Q');
    let id = request_id(&run_ok(s.ferry().args(["hsm", "restore"]).arg(&f)));
    run_worker(&s);
    let r = request(&s, id);
    assert_eq!(r["state"], "failed", "{r}");
    assert!(
        r["error"].as_str().unwrap().contains("written to since"),
        "{r}"
    );
    assert_eq!(fs::read(&f).unwrap()[7], b'Q');
}

/// The store's disk filling used to end the worker with exit 19, for a
/// supervisor to restart. Now it pauses while the store is read-only and
/// goes on when the store's probe finds room. The I/O seam fails the
/// worker's second store transaction as a full disk (the real read-only
/// path: the reserve is released, the probe finds the room there is).
#[test]
fn a_worker_pauses_while_the_store_is_read_only_and_completes_its_queue() {
    let s = Scratch::new();
    let mut ids = Vec::new();
    for i in 0..3 {
        let f = s.path(&format!("fs/f{i}"));
        util::write_file(&f, &data(1000 + i));
        ids.push(request_id(&run_ok(
            s.ferry().args(["hsm", "archive"]).arg(&f),
        )));
    }
    let out = run(s
        .ferry()
        .args(worker_args(&s))
        .env("FERRY_FAILPOINT", "store.commit:2=enospc"));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(code(&out), Some(0), "{stderr}");
    assert!(
        stderr.contains("worker paused") && stderr.contains("read-only"),
        "{stderr}"
    );
    assert!(stderr.contains("worker resumed"), "{stderr}");
    for id in ids {
        assert_eq!(request(&s, id)["state"], "succeed");
    }
}

/// Per-action caps (`--max-archive 1` of three slots): with the first of
/// three archives held mid-copy by a fail point, the two restores queued
/// behind them (FIFO) are served in the other slots and no second archive
/// starts. Without the cap those slots took the next archives and the
/// restores waited behind the flood.
#[test]
fn a_worker_capped_at_one_archive_serves_restores_beside_it() {
    let s = Scratch::new();
    let stubs: Vec<PathBuf> = (0..2).map(|i| s.path(&format!("fs/r{i}"))).collect();
    for f in &stubs {
        util::write_file(f, &data(100_000));
        run_ok(s.ferry().args(["hsm", "archive"]).arg(f));
    }
    run_worker(&s);
    for f in &stubs {
        run_ok(s.ferry().args(["hsm", "release"]).arg(f));
    }
    run_ok(s.ferry().args(["hsm", "policy", "--fifo"]));
    let archives: Vec<i64> = (0..3)
        .map(|i| {
            let f = s.path(&format!("fs/a{i}"));
            util::write_file(&f, &data(100_000));
            request_id(&run_ok(s.ferry().args(["hsm", "archive"]).arg(&f)))
        })
        .collect();
    let restores: Vec<i64> = stubs
        .iter()
        .map(|f| request_id(&run_ok(s.ferry().args(["hsm", "restore"]).arg(f))))
        .collect();
    let fifo = s.path("pause");
    run_ok(std::process::Command::new("mkfifo").arg(&fifo));
    let worker = s
        .ferry()
        .args(["hsm", "worker", "--until-idle", "--archive"])
        .arg(format!("posix:{}", archive_dir(&s).display()))
        .args([
            "--lease-ms",
            "60000",
            "--max-inflight",
            "3",
            "--max-archive",
            "1",
        ])
        .env("FERRY_FAILPOINT", "hsm.archive_data=pause")
        .env("FERRY_FAILPOINT_FIFO", &fifo)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Opened once the worker is held in its first archive.
    let pause = fs::OpenOptions::new().write(true).open(&fifo).unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while restores
        .iter()
        .any(|id| request(&s, *id)["state"] != "succeed")
    {
        assert!(
            Instant::now() < deadline,
            "the restores waited behind the archives"
        );
    }
    let states: Vec<serde_json::Value> = archives
        .iter()
        .map(|id| request(&s, *id)["state"].clone())
        .collect();
    assert_eq!(
        states,
        ["started", "waiting", "waiting"],
        "one archive at a time"
    );
    drop(pause);
    let out = worker.wait_with_output().unwrap();
    assert_eq!(code(&out), Some(0), "{out:?}");
    for id in archives {
        assert_eq!(request(&s, id)["state"], "succeed");
    }
    for f in &stubs {
        assert_eq!(fs::read(f).unwrap(), data(100_000));
    }
}
