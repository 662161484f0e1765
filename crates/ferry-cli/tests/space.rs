//! Running out of space for real, on small tmpfs mounts: the destination
//! fills (the file fails, its temporary stays, a resume copies only what is
//! missing), and the store's own disk fills (the store turns read-only,
//! loses nothing it acknowledged, and comes back once there is room).
//!
//! Mounting needs root: CI runs as root; elsewhere these tests print why
//! they did not run (and fail under `CI=true`, so that CI never skips them
//! silently).

mod util;

use std::fs;
use std::io::Write;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use ferry::store::{EventFilter, SqliteStore, Store};
use ferry::{EntryKind, FileState};
use util::*;

/// A tmpfs of a chosen size, unmounted when dropped.
struct Tmpfs {
    dir: PathBuf,
}

impl Tmpfs {
    /// `None` (with the reason printed) when we may not mount.
    fn mount(at: &Path, size: &str) -> Option<Tmpfs> {
        if !rustix::process::geteuid().is_root() {
            assert!(
                std::env::var_os("CI").is_none(),
                "CI must run the out-of-space tests as root"
            );
            println!("skipped: mounting a tmpfs needs root");
            return None;
        }
        fs::create_dir_all(at).unwrap();
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(at)
            .output()
            .unwrap();
        assert!(out.status.success(), "mount tmpfs: {out:?}");
        Some(Tmpfs {
            dir: at.to_path_buf(),
        })
    }

    fn resize(&self, size: &str) {
        let out = Command::new("mount")
            .args(["-o", &format!("remount,size={size}")])
            .arg(&self.dir)
            .output()
            .unwrap();
        assert!(out.status.success(), "remount: {out:?}");
    }

    /// Fills the file system to the last byte with `name`, then gives back
    /// `leave` bytes: a deterministic amount of room.
    fn fill(&self, name: &str, leave: u64) -> PathBuf {
        let path = self.dir.join(name);
        let mut file = fs::File::create(&path).unwrap();
        let chunk = vec![0x5a_u8; 64 << 10];
        loop {
            match file.write(&chunk) {
                Ok(0) => break,
                Ok(_) => {}
                Err(e) if e.raw_os_error() == Some(28) => break,
                Err(e) => panic!("filling {path:?}: {e}"),
            }
        }
        let len = file.metadata().unwrap().len();
        file.set_len(len.saturating_sub(leave)).unwrap();
        path
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.dir).status();
    }
}

fn make_small_files(root: &Path, count: usize, len: usize, seed: u64) {
    random_files(root, count, 7, seed, |_| len);
}

/// What each file of a transfer still needs copied, by the store's record.
fn bytes_left(store: &Path, name: &str) -> u64 {
    let store = SqliteStore::open(store).unwrap();
    let t = store.transfer_by_name(name).unwrap().unwrap();
    store
        .entries(t.id)
        .unwrap()
        .iter()
        .filter(|e| e.kind == EntryKind::File)
        .map(|e| match e.state {
            FileState::Committed | FileState::Copied => 0,
            _ => e.meta.size - e.progress_bytes_durable,
        })
        .sum()
}

/// The store claims nothing the disk does not hold: committed files are in
/// place with their content, copied ones complete in their temporary (or
/// already renamed).
fn assert_records_within_disk(store: &Path) {
    let store = SqliteStore::open(store).unwrap();
    for t in store.transfers().unwrap() {
        for e in store.entries(t.id).unwrap() {
            if e.kind != EntryKind::File {
                continue;
            }
            let source = fs::read(&e.source).unwrap();
            // Beside its destination, or in its staged directory.
            let temp = ferry::engine::staging::temporary_left(
                &e,
                &t.temp_suffix,
                t.id,
                &mut Default::default(),
            );
            match e.state {
                FileState::Committed => assert_eq!(
                    fs::read(&e.dest).ok().as_ref(),
                    Some(&source),
                    "{:?} recorded committed",
                    e.dest
                ),
                FileState::Copied => assert!(
                    fs::read(&temp).ok().as_ref() == Some(&source)
                        || fs::read(&e.dest).ok().as_ref() == Some(&source),
                    "{:?} recorded copied",
                    e.dest
                ),
                _ => {}
            }
        }
    }
}

#[test]
fn a_full_destination_fails_the_file_keeps_its_temporary_and_resume_copies_only_what_is_missing() {
    let s = Scratch::new();
    let Some(tmpfs) = Tmpfs::mount(&s.path("dest-fs"), "24m") else {
        return;
    };
    let src = s.path("src");
    make_small_files(&src, 20, 50 << 10, 1);
    let mut rng = fastrand::Rng::with_seed(2);
    // Ranges of 16 MiB: the first fits, the second does not.
    write_file(&src.join("large"), &random_bytes(&mut rng, 40 << 20));
    let dst = tmpfs.dir.join("dst");

    let out = run(s
        .ferry()
        .args(["cp", "-a", "--json", "--threads", "1", "--name", "full"])
        .arg(&src)
        .arg(&dst));
    assert_eq!(out.status.code(), Some(1), "the transfer fails");
    let report = json(&out);
    assert_eq!(report["state"], "failed");
    let failures = report["failures"].as_array().unwrap();
    let large = failures
        .iter()
        .find(|f| f["path"].as_str().unwrap().ends_with("/large"))
        .expect("the large file failed");
    let message = large["error"].as_str().unwrap();
    assert!(
        message.contains("no space left writing")
            && message.contains("._ferry-")
            && message.contains(&format!("of {} bytes written", 40 << 20))
            && message.contains("more needed"),
        "{message}"
    );
    assert!(
        temps(&dst).iter().any(|t| t
            .file_name()
            .unwrap()
            .to_string_lossy()
            .starts_with("large.")),
        "the temporary is kept"
    );
    assert_no_partial_files(&src, &dst);
    assert_records_within_disk(&s.store());

    let missing = bytes_left(&s.store(), "full");
    let total: u64 = 20 * (50 << 10) + (40 << 20);
    let written = bytes_written_in(message);
    assert!(
        written >= 16 << 20,
        "the first range, complete when the disk filled, is recorded durable: {message}"
    );
    assert_eq!(
        missing,
        total - written,
        "what the message says was written is what the store recorded"
    );

    tmpfs.resize("64m");
    let out = run_ok(s.ferry().args(["resume", "full", "--json"]));
    let report = json(&out);
    assert_eq!(report["state"], "completed");
    assert_eq!(
        report["bytes_copied"].as_u64(),
        Some(missing),
        "resume copies exactly what was not durable"
    );
    assert_same_tree(&src, &dst);
}

/// W in "no space left writing …: W of S bytes written, … more needed".
fn bytes_written_in(message: &str) -> u64 {
    let (_, tail) = message.rsplit_once(": ").expect("a message with a colon");
    tail.split(' ').next().unwrap().parse().expect("a number")
}

/// A full destination used to record nothing below the first whole range
/// (a file under 32 MiB restarted from zero), and its message counted
/// bytes still in flight. Now the bytes that landed are made durable and
/// recorded at the failure, and the message names them. A 1 MiB filler
/// puts the failure inside a piece, so that the resume's checksum of that
/// piece joins the durable head (read from the temporary) to the rest.
#[test]
fn a_full_destination_records_every_byte_that_landed_and_resume_continues_from_it() {
    let s = Scratch::new();
    let Some(tmpfs) = Tmpfs::mount(&s.path("dest-fs"), "16m") else {
        return;
    };
    let src = s.path("src");
    let mut rng = fastrand::Rng::with_seed(23);
    write_file(&src.join("large"), &random_bytes(&mut rng, 40 << 20));
    write_file(&tmpfs.dir.join("filler"), &vec![1u8; 1 << 20]);
    let dst = tmpfs.dir.join("dst");
    let out = run(s
        .ferry()
        .args(["cp", "--json", "--threads", "1", "--name", "full"])
        .arg(src.join("large"))
        .arg(&dst));
    assert_eq!(out.status.code(), Some(1), "the transfer fails");
    let report = json(&out);
    let message = report["failures"][0]["error"].as_str().unwrap().to_owned();
    let written = bytes_written_in(&message);
    let temp = tmpfs
        .dir
        .join(temps(&tmpfs.dir).pop().expect("the temporary is kept"));
    let on_disk = std::os::unix::fs::MetadataExt::blocks(&fs::metadata(&temp).unwrap()) * 512;
    assert_eq!(
        written, on_disk,
        "the message names the bytes on disk: {message}"
    );
    assert_eq!(
        written,
        15 << 20,
        "the file system held 15 MiB besides the filler"
    );
    assert_eq!(bytes_left(&s.store(), "full"), (40 << 20) - written);

    tmpfs.resize("64m");
    let report = json(&run_ok(s.ferry().args(["resume", "full", "--json"])));
    assert_eq!(report["state"], "completed");
    assert_eq!(report["bytes_reused"].as_u64(), Some(written));
    assert_eq!(report["bytes_copied"].as_u64(), Some((40 << 20) - written));
    assert_eq!(
        fs::read(&dst).unwrap(),
        fs::read(src.join("large")).unwrap()
    );
    // The recorded checksum is the source's: verify re-reads and agrees.
    run_ok(s.ferry().args(["verify", "full"]));
}

#[test]
fn check_space_refuses_to_start_when_the_destination_is_too_small() {
    let s = Scratch::new();
    let Some(tmpfs) = Tmpfs::mount(&s.path("dest-fs"), "4m") else {
        return;
    };
    let src = s.path("src");
    let mut rng = fastrand::Rng::with_seed(3);
    write_file(&src.join("big"), &random_bytes(&mut rng, 6 << 20));
    let dst = tmpfs.dir.join("dst");
    let out = run(s
        .ferry()
        .args(["cp", "-a", "--check-space", "--name", "big"])
        .arg(&src)
        .arg(&dst));
    assert_eq!(out.status.code(), Some(20), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("not enough space") && stderr.contains(&tmpfs.dir.display().to_string()),
        "{stderr}"
    );
    assert!(temps(&tmpfs.dir).is_empty(), "nothing was written");
    tmpfs.resize("16m");
    run_ok(s.ferry().args(["resume", "big", "--check-space"]));
    assert_same_tree(&src, &dst);
}

#[test]
fn a_read_only_destination_is_refused_up_front_with_its_path() {
    let s = Scratch::new();
    let Some(tmpfs) = Tmpfs::mount(&s.path("dest-fs"), "4m") else {
        return;
    };
    let src = s.path("src");
    make_small_files(&src, 3, 100, 4);
    fs::create_dir_all(tmpfs.dir.join("dst/src")).unwrap();
    tmpfs.resize("4m,ro");
    let out = run(s
        .ferry()
        .args(["cp", "-r"])
        .arg(&src)
        .arg(tmpfs.dir.join("dst")));
    // Refused before anything is written, in one line (not one per file).
    assert_eq!(out.status.code(), Some(37), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.contains("read-only"), "{stderr}");
    assert!(
        stderr.contains(&tmpfs.dir.display().to_string()),
        "{stderr}"
    );
}

/// The store's disk fills during a transfer: the CLI says the store is
/// read-only, the store keeps every record it acknowledged and claims
/// nothing the disk does not hold, reads keep working, and once space is
/// freed the store is writable again and the transfer completes.
#[test]
fn a_full_store_disk_turns_the_store_read_only_and_the_transfer_completes_after_space_returns() {
    let s = Scratch::new();
    let Some(tmpfs) = Tmpfs::mount(&s.path("store-fs"), "8m") else {
        return;
    };
    let store = tmpfs.dir.join("ferry.db");
    let ferry = || {
        let mut cmd = ferry_at(&store);
        cmd.env("FERRY_STORE_RESERVE", (1 << 20).to_string());
        cmd
    };
    let src = s.path("src");
    make_small_files(&src, 1500, 1024, 5);
    let dst = s.path("dst");

    // The transfer and its 1,500 entries are recorded, then the process is
    // killed before the first file is: all the rest is still to write.
    let out = run(ferry()
        .env("FERRY_FAILPOINT", "commit.record_copied")
        .args(["cp", "-a", "--threads", "1", "--name", "t"])
        .arg(&src)
        .arg(&dst));
    assert_eq!(out.status.signal(), Some(9));
    let before = {
        let store = SqliteStore::open(&store).unwrap();
        store
            .events_since(0, &EventFilter::default(), 1 << 20)
            .unwrap()
    };
    assert!(tmpfs.dir.join("ferry.db.reserve").exists());

    // 96 KiB of room: far less than recording 1,500 files takes.
    let filler = tmpfs.fill("filler", 96 << 10);
    let out = run(ferry().args(["resume", "t", "--threads", "1"]));
    assert_eq!(out.status.code(), Some(19), "read-only store: {out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("is read-only") && stderr.contains("full") && stderr.contains("ferry.db"),
        "{stderr}"
    );
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(
        !tmpfs.dir.join("ferry.db.reserve").exists(),
        "the reserve was released"
    );

    // Nothing acknowledged is lost, nothing unwritten is claimed, and
    // reads still work while the disk is full.
    {
        let reopened = SqliteStore::open(&store).unwrap();
        let after = reopened
            .events_since(0, &EventFilter::default(), 1 << 20)
            .unwrap();
        assert!(after.len() >= before.len());
        assert!(
            after
                .iter()
                .any(|e| e.name == "store.read_only" && e.transfer.is_none()),
            "the switch is an event of the store"
        );
        for (a, b) in before.iter().zip(&after) {
            assert_eq!((a.seq, &a.name), (b.seq, &b.name), "an event was lost");
        }
    }
    assert_records_within_disk(&store);
    let status = json(&run_ok(ferry().args(["status", "t", "--json"])));
    assert_eq!(status["state"], "failed", "the clean shutdown was recorded");
    let check = run(ferry().args(["store", "check", "--json"]));
    assert_eq!(check.status.code(), Some(19), "still no room: {check:?}");
    assert_eq!(json(&check)["integrity"], "ok");

    // Space returns: the store is read-write again, the transfer completes.
    fs::remove_file(filler).unwrap();
    let check = json(&run_ok(ferry().args(["store", "check", "--json"])));
    assert_eq!(check["read_only"], serde_json::Value::Null);
    assert_eq!(check["reserve_present"], true);
    let report = json(&run_ok(ferry().args(["resume", "t", "--json"])));
    assert_eq!(report["state"], "completed");
    assert_same_tree(&src, &dst);
    assert_no_partial_files(&src, &dst);
}

/// With the default reserve (no FERRY_STORE_RESERVE), an 8 MiB store file
/// system used to need 8 MiB free to come back, so it never did by itself;
/// `store check` said 19 while a resume wrote anyway, and then check said
/// read-write. Now the reserve and its threshold scale to the disk, and
/// check, resume and the probe apply one rule, reserve file or not.
#[test]
fn a_small_store_disk_with_the_default_reserve_comes_back_and_check_agrees_with_resume() {
    let s = Scratch::new();
    let Some(tmpfs) = Tmpfs::mount(&s.path("store-fs"), "8m") else {
        return;
    };
    let store = tmpfs.dir.join("ferry.db");
    let ferry = || {
        let mut cmd = ferry_at(&store);
        cmd.env_remove("FERRY_STORE_RESERVE");
        cmd
    };
    let src = s.path("src");
    make_small_files(&src, 1500, 1024, 7);
    let dst = s.path("dst");
    let out = run(ferry()
        .env("FERRY_FAILPOINT", "commit.record_copied")
        .args(["cp", "-a", "--threads", "1", "--name", "t"])
        .arg(&src)
        .arg(&dst));
    assert_eq!(out.status.signal(), Some(9));
    let check = json(&run_ok(ferry().args(["store", "check", "--json"])));
    let reserve = check["reserve_bytes"].as_u64().unwrap();
    let recover = check["recover_bytes"].as_u64().unwrap();
    assert!(reserve < 4 << 20, "the reserve fits the disk: {check}");
    assert!(recover < 2 << 20, "the threshold is reachable: {check}");

    let filler = tmpfs.fill("filler", 96 << 10);
    let out = run(ferry().args(["resume", "t", "--threads", "1"]));
    assert_eq!(out.status.code(), Some(19), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("FERRY_STORE_RESERVE"), "{stderr}");
    // Full: check and resume say the same, before and after each other.
    for _ in 0..2 {
        let check = run(ferry().args(["store", "check", "--json"]));
        assert_eq!(check.status.code(), Some(19), "{check:?}");
        let out = run(ferry().args(["resume", "t", "--threads", "1"]));
        assert_eq!(out.status.code(), Some(19), "{out:?}");
    }

    // Room again: read-write with no help, then the same after a resume.
    fs::remove_file(filler).unwrap();
    let check = run(ferry().args(["store", "check", "--json"]));
    assert_eq!(check.status.code(), Some(0), "{check:?}");
    assert_eq!(json(&check)["read_only"], serde_json::Value::Null);
    let report = json(&run_ok(ferry().args(["resume", "t", "--json"])));
    assert_eq!(report["state"], "completed");
    let after = run(ferry().args(["store", "check", "--json"]));
    assert_eq!(after.status.code(), Some(0), "{after:?}");
    assert_eq!(json(&after)["recover_bytes"], json(&check)["recover_bytes"]);
    assert_same_tree(&src, &dst);
}

/// The daemon's store disk fills while one of its transfers runs: the
/// transfer ends `failed` (not `running`, not `cancelled`) with the reason,
/// naming the store and what to do; the caller's `--wait` says so; the
/// daemon keeps answering, and once space returns a resume completes it.
#[test]
fn a_daemon_transfer_on_a_full_store_ends_failed_and_the_daemon_serves_on() {
    let s = Scratch::new();
    let Some(tmpfs) = Tmpfs::mount(&s.path("store-fs"), "8m") else {
        return;
    };
    let store = tmpfs.dir.join("ferry.db");
    let fifo = s.path("pause");
    run_ok(Command::new("mkfifo").arg(&fifo));
    let socket = s.path("ferry.sock");
    let mut serve = ferry_at(&store);
    serve
        .env("FERRY_STORE_RESERVE", (1 << 20).to_string())
        .env("FERRY_FAILPOINT", "commit.write_data=pause")
        .env("FERRY_FAILPOINT_FIFO", &fifo)
        .arg("--socket")
        .arg(&socket)
        .args(["serve", "--workers", "2"]);
    let mut daemon = util::daemon::Daemon::spawn(&s, serve, socket);
    let src = s.path("src");
    make_small_files(&src, 1500, 1024, 11);
    let caller = s
        .ferry()
        .arg("--socket")
        .arg(&daemon.socket)
        .args(["cp", "--kind", "daemon", "--wait", "--name", "t", "-a"])
        .arg(&src)
        .arg(s.path("dst"))
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // The daemon holds the transfer mid-copy while its disk fills.
    let pause = fs::OpenOptions::new().write(true).open(&fifo).unwrap();
    let client = daemon.client();
    assert_eq!(client.status("t").unwrap().state, "running");
    let filler = tmpfs.fill("filler", 96 << 10);
    drop(pause);

    let out = exited_within(caller, util::daemon::DEADLINE);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "the transfer failed: {stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    let view = client.status("t").unwrap();
    assert_eq!(view.state, "failed", "{}", daemon.log());
    let error = view.error.unwrap_or_default();
    for said in ["is read-only", "ferry.db", "FERRY_STORE_RESERVE"] {
        assert!(error.contains(said), "{said:?} in {error:?}");
        assert!(stderr.contains(said), "{said:?} in {stderr}");
    }
    // The daemon serves on: it answers, lists, and has not exited.
    assert!(client.answers());
    assert_eq!(client.list().unwrap().len(), 1);
    assert!(
        daemon.child.try_wait().unwrap().is_none(),
        "the daemon lives"
    );

    // Space returns: the daemon notices by itself (its probe), and a resume
    // then completes the transfer.
    fs::remove_file(filler).unwrap();
    let deadline = Instant::now() + util::daemon::DEADLINE;
    let run = ferry_serve::api::RunRequest::default();
    while let Err(e) = client.resume("t", &run) {
        assert!(Instant::now() < deadline, "never writable again: {e}");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(client.wait("t").unwrap().state, "completed");
    assert_same_tree(&src, &s.path("dst"));
}

/// Waits (bounded) for `child` to exit and returns its output; kills it
/// and fails past the deadline (a transfer left `running` never ends).
fn exited_within(mut child: Child, deadline: Duration) -> std::process::Output {
    let until = Instant::now() + deadline;
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > until {
            let _ = child.kill();
            panic!(
                "still waiting after {deadline:?}: {:?}",
                child.wait_with_output()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child.wait_with_output().unwrap()
}

/// At most this long for the soak, whatever the machine.
const SOAK_LIMIT: Duration = Duration::from_secs(120);

/// Fills and frees the store's tmpfs again and again while three transfers
/// run: no acknowledged record is lost, nothing panics, and every transfer
/// ends completed after the last free. Each round waits on the store's own
/// progress (its event log) before filling, not on a clock.
#[test]
fn soak_filling_and_freeing_the_store_disk_while_transfers_run() {
    let s = Scratch::new();
    let Some(tmpfs) = Tmpfs::mount(&s.path("store-fs"), "8m") else {
        return;
    };
    let started = Instant::now();
    let store = tmpfs.dir.join("ferry.db");
    let ferry = || {
        let mut cmd = ferry_at(&store);
        cmd.env("FERRY_STORE_RESERVE", (512 << 10).to_string());
        cmd
    };
    let names = ["a", "b", "c"];
    for (i, name) in names.iter().enumerate() {
        make_small_files(&s.path(&format!("src-{name}")), 1500, 512, 10 + i as u64);
    }
    let mut done = [false; 3];
    let mut acknowledged: Vec<(u64, String)> = Vec::new();
    let mut rounds = 0;
    let mut exits: std::collections::BTreeMap<i32, usize> = Default::default();
    while !done.iter().all(|d| *d) {
        rounds += 1;
        assert!(rounds <= 40, "the transfers never completed");
        assert!(started.elapsed() < SOAK_LIMIT, "soak ran over its bound");
        let last = SqliteStore::open(&store)
            .map(|st| st.last_seq().unwrap())
            .unwrap_or(0);
        let mut children: Vec<(usize, Child)> = Vec::new();
        for (i, name) in names.iter().enumerate() {
            if done[i] {
                continue;
            }
            let mut cmd = ferry();
            let recorded = SqliteStore::open(&store)
                .is_ok_and(|st| st.transfer_by_name(name).is_ok_and(|t| t.is_some()));
            if !recorded {
                cmd.args(["cp", "-a", "--threads", "1", "--json", "--name", name])
                    .arg(s.path(&format!("src-{name}")))
                    .arg(s.path(&format!("dst-{name}")));
            } else {
                cmd.args(["resume", name, "--threads", "1", "--json"]);
            }
            cmd.stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped());
            children.push((i, cmd.spawn().unwrap()));
        }
        // Fill once the transfers have written something this round (or
        // one of them has already finished).
        let reader_store = SqliteStore::open(&store).unwrap();
        let mut reader = reader_store.event_reader().unwrap();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let token = reader.change_token().unwrap();
            let page = reader
                .events_since(last, &EventFilter::default(), 1 << 16)
                .unwrap();
            let exited = children
                .iter_mut()
                .any(|(_, c)| c.try_wait().unwrap().is_some());
            if page.last_seq >= last + 20 || exited || Instant::now() > deadline {
                break;
            }
            reader
                .wait_changed(token, Duration::from_millis(200))
                .unwrap();
        }
        drop(reader);
        drop(reader_store);
        let filler = tmpfs.fill("filler", 32 << 10);
        for (i, child) in children {
            let out = child.wait_with_output().unwrap();
            let stderr = String::from_utf8_lossy(&out.stderr);
            assert!(out.status.code().is_some(), "killed by a signal: {stderr}");
            *exits.entry(out.status.code().unwrap()).or_default() += 1;
            assert!(!stderr.contains("panicked"), "{stderr}");
            if out.status.success() {
                done[i] = true;
            } else {
                assert!(
                    [1, 15, 16, 19].contains(&out.status.code().unwrap()),
                    "{stderr}"
                );
            }
        }
        fs::remove_file(filler).unwrap();
        // Every event acknowledged in earlier rounds is still there, in
        // order, and the records claim nothing the disk does not hold.
        let reopened = SqliteStore::open(&store).unwrap();
        let now: Vec<(u64, String)> = reopened
            .events_since(0, &EventFilter::default(), 1 << 20)
            .unwrap()
            .into_iter()
            .map(|e| (e.seq, e.name))
            .collect();
        assert!(
            now.starts_with(&acknowledged),
            "round {rounds}: acknowledged events were lost"
        );
        acknowledged = now;
        drop(reopened);
        assert_records_within_disk(&store);
    }
    for name in names {
        let status = json(&run_ok(ferry().args(["status", name, "--json"])));
        assert_eq!(status["state"], "completed");
        assert_same_tree(
            &s.path(&format!("src-{name}")),
            &s.path(&format!("dst-{name}")),
        );
    }
    println!(
        "soak: {rounds} rounds of fill and free in {:.1} s; exit codes {exits:?}",
        started.elapsed().as_secs_f64()
    );
    assert!(
        exits.get(&19).is_some_and(|n| *n >= 3),
        "the store turned read-only under the transfers: {exits:?}"
    );
}
