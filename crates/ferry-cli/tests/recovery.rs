//! Recovery: owners alive or dead, re-attachment by name, stale
//! temporaries, `stop`, and `finalize` for post-stage without the sources.
//! (Re-running `cp --name` after a SIGKILL re-attaches the same id and
//! completes: `failpoints.rs`, cp_with_the_name_of_a_dead_transfer….)

mod util;

use std::fs;
use std::io::Write;
use std::path::Path;
use std::process::Stdio;
use std::sync::Arc;

use ferry::events::{Watch, WatchItem};
use ferry::model::{NewTransfer, Owner};
use ferry::owner::{Liveness, process_start_time};
use ferry::store::{EventFilter, SqliteStore, Store};
use ferry::{Kind, Preserve, Transfer, TransferState};
use util::*;

fn tree(root: &Path, files: usize, seed: u64) {
    let mut rng = fastrand::Rng::with_seed(seed);
    for i in 0..files {
        let len = rng.usize(0..30_000);
        write_file(
            &root.join(format!("d{}/f{i}", i % 2)),
            &random_bytes(&mut rng, len),
        );
    }
    let old = std::process::Command::new("touch")
        .args(["-d", "2002-02-02 02:02:02.2"])
        .arg(root.join("d0"))
        .arg(root.join("d0/f0"))
        .status()
        .unwrap();
    assert!(old.success());
}

/// Every live transfer of `store` completed: none is left half planned.
fn assert_all_completed(store: &SqliteStore) {
    let live: Vec<_> = store
        .transfers()
        .unwrap()
        .into_iter()
        .filter(|t| t.state != TransferState::Completed)
        .collect();
    assert!(live.is_empty(), "{live:?}");
}

/// 9,000 empty files in 90 directories (9,091 entries): a plan of three
/// batches.
fn planned_in_batches(src: &Path) {
    for d in 0..90 {
        fs::create_dir_all(src.join(format!("d{d:02}"))).unwrap();
        for f in 0..100 {
            fs::write(src.join(format!("d{d:02}/f{f}")), b"").unwrap();
        }
    }
}

/// A transfer recorded with `owner`, its entries planned from `src` to `dst`.
fn transfer_with_owner(
    store: &SqliteStore,
    name: &str,
    owner: Owner,
    src: &Path,
    dst: &Path,
) -> ferry::TransferId {
    let entries = ferry::plan(&[src.to_path_buf()], dst, true).unwrap();
    let new = NewTransfer {
        replaces: None,
        checksum: None,
        name: Some(name.into()),
        kind: Kind::Threads,
        caller: None,
        owner,
        preserve: Preserve::ALL,
        temp_suffix: ferry::model::DEFAULT_TEMP_SUFFIX.into(),
    };
    store.create_transfer(&new, &entries).unwrap().id
}

/// A transfer `remote` of `src` (a small tree) to `dst` in the scratch
/// store, whose owner is on another host (so never known dead).
fn remote_transfer(s: &Scratch) -> ferry::TransferId {
    tree(&s.path("src"), 2, 9);
    let store = SqliteStore::open(&s.store()).unwrap();
    let elsewhere = Owner {
        host: format!("{}-elsewhere", Owner::current().host),
        ..dead_owner()
    };
    transfer_with_owner(&store, "remote", elsewhere, &s.path("src"), &s.path("dst"))
}

fn parent_owner() -> Owner {
    let pid = rustix::process::getppid().unwrap().as_raw_nonzero().get() as u32;
    Owner {
        pid,
        start_time: process_start_time(pid).unwrap(),
        ..Owner::current()
    }
}

fn dead_owner() -> Owner {
    let mut child = std::process::Command::new("true").spawn().unwrap();
    let pid = child.id();
    child.wait().unwrap();
    Owner {
        pid,
        start_time: 1,
        ..Owner::current()
    }
}

#[test]
fn the_same_name_while_its_owner_is_alive_but_stopped_is_refused() {
    let s = Scratch::new();
    let mut rng = fastrand::Rng::with_seed(9);
    write_file(&s.path("big"), &random_bytes(&mut rng, 200 << 20));
    let store = SqliteStore::open(&s.store()).unwrap();
    let mut watch = Watch::new(
        &store,
        0,
        EventFilter {
            transfer: None,
            kind: Some("transfer.running".into()),
            ..Default::default()
        },
    )
    .unwrap();
    let mut owner = s
        .ferry()
        .args(["cp", "--threads", "1", "--name", "busy"])
        .arg(s.path("big"))
        .arg(s.path("copy"))
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    // Wait for the event, then freeze the owner: alive, but not moving.
    while !matches!(watch.next().unwrap().unwrap(), WatchItem::Event(_)) {}
    rustix::process::kill_process(
        rustix::process::Pid::from_raw(owner.id() as i32).unwrap(),
        rustix::process::Signal::STOP,
    )
    .unwrap();
    let out = run(s
        .ferry()
        .args(["cp", "--name", "busy"])
        .arg(s.path("big"))
        .arg(s.path("other")));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(11), "{out:?}");
    assert!(
        stderr.contains(&format!("pid {}", owner.id())) && stderr.contains("busy"),
        "{stderr}"
    );
    let out = run(s.ferry().args(["resume", "busy"]));
    assert_eq!(out.status.code(), Some(11));
    rustix::process::kill_process(
        rustix::process::Pid::from_raw(owner.id() as i32).unwrap(),
        rustix::process::Signal::CONT,
    )
    .unwrap();
    assert!(owner.wait().unwrap().success());
    assert_eq!(
        fs::read(s.path("copy")).unwrap(),
        fs::read(s.path("big")).unwrap()
    );
}

#[test]
fn a_live_pid_with_another_start_time_is_a_dead_owner() {
    let s = Scratch::new();
    tree(&s.path("src"), 3, 1);
    let store = Arc::new(SqliteStore::open(&s.store()).unwrap());
    // The pid is alive (our parent) but started at another time: reused.
    let reused = Owner {
        start_time: parent_owner().start_time + 1,
        ..parent_owner()
    };
    assert_eq!(reused.liveness_with(None, 0), Liveness::Dead);
    let id = transfer_with_owner(&store, "reused", reused, &s.path("src"), &s.path("dst"));
    let status = json(&run_ok(s.ferry().args(["status", "--json"])));
    assert_eq!(status[0]["owner"]["liveness"], "dead");
    let mut t = Transfer::create(
        store.clone(),
        Some("reused"),
        Kind::Threads,
        Preserve::ALL,
        &[],
    )
    .unwrap();
    assert!(t.reattached());
    assert_eq!(t.record().id, id, "re-attached: the same id");
    t.resume(2).unwrap();
    assert_eq!(t.wait().unwrap().state, TransferState::Completed);
    assert_same_tree(&s.path("src"), &s.path("dst"));
}

#[test]
fn stale_temporaries_of_dead_transfers_are_cleaned_and_live_ones_left_alone() {
    let s = Scratch::new();
    tree(&s.path("src"), 4, 2);
    let store = SqliteStore::open(&s.store()).unwrap();
    let src = s.path("src");
    let dst = s.path("dst");
    let dead = transfer_with_owner(&store, "dead", dead_owner(), &src, &dst);
    let live = transfer_with_owner(&store, "live", parent_owner(), &src, &dst);
    let dead_temp = dst.join(format!("d0/f0._ferry-{dead}"));
    let live_temp = dst.join(format!("d1/f1._ferry-{live}"));
    let orphan_temp = dst.join("d0/f2._ferry-999");
    for t in [&dead_temp, &live_temp, &orphan_temp] {
        write_file(t, b"partial");
    }
    let out = run_ok(
        s.ferry()
            .args(["cp", "-r", "--json", "--name", "again"])
            .arg(src.join("."))
            .arg(&dst),
    );
    let warnings = json(&out)["warnings"].to_string();
    assert!(
        !dead_temp.exists(),
        "the dead transfer's temporary is removed"
    );
    assert!(
        live_temp.exists(),
        "a live transfer's temporary is never touched"
    );
    assert!(orphan_temp.exists(), "an orphan is only reported");
    assert!(
        warnings.contains("f1._ferry-") && warnings.contains("alive"),
        "{warnings}"
    );
    assert!(
        warnings.contains("f2._ferry-999") && warnings.contains("--clean-orphans"),
        "{warnings}"
    );
    let store = SqliteStore::open(&s.store()).unwrap();
    assert_eq!(
        store.transfer_by_name("dead").unwrap().unwrap().state,
        TransferState::Cancelled
    );
    assert_eq!(
        store.transfer_by_name("live").unwrap().unwrap().state,
        TransferState::Created
    );
    // With --clean-orphans the orphan goes too; the live one still stays.
    run_ok(
        s.ferry()
            .args(["cp", "-r", "--clean-orphans"])
            .arg(src.join("."))
            .arg(&dst),
    );
    assert!(!orphan_temp.exists());
    assert!(live_temp.exists());
}

#[test]
fn stop_dead_frees_only_transfers_whose_owner_is_dead() {
    let s = Scratch::new();
    tree(&s.path("src"), 2, 3);
    let store = SqliteStore::open(&s.store()).unwrap();
    let dead = transfer_with_owner(&store, "dead", dead_owner(), &s.path("src"), &s.path("a"));
    transfer_with_owner(&store, "live", parent_owner(), &s.path("src"), &s.path("b"));
    let temp = s.path(&format!("a/d0/f0._ferry-{dead}"));
    write_file(&temp, b"partial");
    run_ok(s.ferry().args(["stop", "--dead"]));
    assert!(!temp.exists());
    let names: Vec<String> = store
        .transfers()
        .unwrap()
        .into_iter()
        .map(|t| t.name)
        .collect();
    assert_eq!(names, ["live"]);
    // The name of a freed transfer can be used again.
    run_ok(
        s.ferry()
            .args(["cp", "-r", "--name", "dead"])
            .arg(s.path("src"))
            .arg(s.path("c")),
    );
    // Plain stop keeps the completed one; --all frees it too.
    run_ok(s.ferry().arg("stop"));
    let names: Vec<String> = store
        .transfers()
        .unwrap()
        .into_iter()
        .map(|t| t.name)
        .collect();
    assert_eq!(names, ["dead"]);
    run_ok(s.ferry().args(["stop", "--all"]));
    assert!(store.transfers().unwrap().is_empty());
}

/// A transfer crashed between `copied` and its renames, then its sources
/// deleted: what a post-stage finalize on another node finds.
fn crashed_before_rename(store: &Path, src: &Path, dst: &Path) {
    run_killed(
        ferry_at(store)
            .env("FERRY_FAILPOINT", "commit.rename:3")
            .args(["cp", "-a", "--name", "ckpt"])
            .arg(src)
            .arg(dst),
    );
}

fn finalize(paths: &[&Path], extra: &[&str]) -> std::process::Output {
    let mut cmd = std::process::Command::new(FERRY);
    cmd.arg("finalize").args(extra);
    for p in paths {
        cmd.arg(p);
    }
    run(&mut cmd)
}

#[test]
fn finalize_commits_copied_files_without_their_sources_and_a_second_run_changes_nothing() {
    let s = Scratch::new();
    let src = s.path("src");
    tree(&src, 20, 4);
    let reference = s.path("reference");
    run_ok(
        std::process::Command::new("cp")
            .arg("-a")
            .arg(&src)
            .arg(&reference),
    );
    crashed_before_rename(&s.store(), &src, &s.path("dst"));
    fs::remove_dir_all(&src).unwrap();
    let out = finalize(&[&s.store()], &["--json"]);
    assert!(out.status.success(), "{out:?}");
    let report = json(&out);
    assert_eq!(report["outcomes"]["finalized"], 1);
    assert_same_tree(&reference, &s.path("dst"));
    let store = SqliteStore::open(&s.store()).unwrap();
    assert_eq!(
        store.transfer_by_name("ckpt").unwrap().unwrap().state,
        TransferState::Finalized
    );
    // Idempotent: nothing left to do, and it says so.
    let before = store.last_seq().unwrap();
    let out = finalize(&[&s.store()], &[]);
    assert!(out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("nothing to do"),
        "{out:?}"
    );
    assert_eq!(
        store.last_seq().unwrap(),
        before,
        "a second run writes nothing"
    );
    assert_same_tree(&reference, &s.path("dst"));
}

#[test]
fn finalize_cleans_failed_cancelled_and_dead_running_transfers_and_leaves_live_ones() {
    let s = Scratch::new();
    let src = s.path("src");
    tree(&src, 6, 5);
    let mut rng = fastrand::Rng::with_seed(6);
    write_file(&src.join("large"), &random_bytes(&mut rng, 72 << 20));
    let stores = s.path("ranks");
    let store = |i: usize| stores.join(format!("node{}/rank.{i}.db", i % 2));
    // ferry makes no directory for a store it is given.
    for node in ["node0", "node1"] {
        fs::create_dir_all(stores.join(node)).unwrap();
    }
    // rank 0: failed (EIO while writing); rank 1: cancelled; rank 2: running,
    // owner dead mid large file; rank 3: live owner.
    let out = run(ferry_at(&store(0))
        .env("FERRY_FAILPOINT", "commit.write_data:3=eio")
        .args(["cp", "-r", "--threads", "1", "--name", "r0"])
        .arg(&src)
        .arg(s.path("out0")));
    assert_eq!(out.status.code(), Some(1));
    run_killed(
        ferry_at(&store(1))
            .env("FERRY_FAILPOINT", "commit.record_progress:1")
            .args(["cp", "-r", "--threads", "1", "--name", "r1"])
            .arg(&src)
            .arg(s.path("out1")),
    );
    run_ok(ferry_at(&store(1)).args(["cancel", "r1"]));
    run_killed(
        ferry_at(&store(2))
            .env("FERRY_FAILPOINT", "commit.record_progress:2")
            .args(["cp", "-r", "--threads", "1", "--name", "r2"])
            .arg(&src)
            .arg(s.path("out2")),
    );
    {
        let live = SqliteStore::open(&store(3)).unwrap();
        transfer_with_owner(&live, "r3", parent_owner(), &src, &s.path("out3"));
    }
    // Post-stage runs where the sources are gone.
    let reference = s.path("reference");
    run_ok(
        std::process::Command::new("cp")
            .arg("-a")
            .arg(&src)
            .arg(&reference),
    );
    fs::remove_dir_all(&src).unwrap();
    // A non-store file among them is skipped.
    let mut junk = fs::File::create(stores.join("node0/notes.txt")).unwrap();
    junk.write_all(b"not a store").unwrap();
    // One that looks like a store and is not: skipped, and said so.
    write_file(&stores.join("node1/rank.9.db"), b"truncated by a full disk");

    let out = finalize(&[&stores], &["--json", "--jobs", "2"]);
    assert_eq!(
        out.status.code(),
        Some(38),
        "a transfer was aborted and partial data removed: {out:?}"
    );
    let report = json(&out);
    assert_eq!(report["aborted"], 1, "{report}");
    let removed = report["removed"].as_array().unwrap();
    assert!(!removed.is_empty(), "{report}");
    for path in removed {
        let path = path.as_str().unwrap();
        assert!(path.contains("/out"), "{path}");
        assert!(!Path::new(path).exists(), "{path} never reached its name");
    }
    let skipped = report["skipped"].to_string();
    assert!(skipped.contains("rank.9.db"), "{report}");
    assert!(!skipped.contains("notes.txt"), "{report}");
    assert_eq!(report["stores"], 4);
    assert_eq!(report["outcomes"]["cleaned"], 3, "{report}");
    // The counts are keyed as `details` names each outcome.
    assert_eq!(report["outcomes"]["left_live"], 1, "{report}");
    for detail in report["details"].as_array().unwrap() {
        let key = detail["outcome"].as_str().unwrap();
        assert!(report["outcomes"][key].as_u64() >= Some(1), "{report}");
    }
    for i in 0..3 {
        assert!(
            temps(&s.path(&format!("out{i}"))).is_empty(),
            "rank {i}: temporaries removed"
        );
        let state = SqliteStore::open(&store(i))
            .unwrap()
            .transfer_by_name(&format!("r{i}"))
            .unwrap()
            .unwrap()
            .state;
        assert_eq!(state, TransferState::Finalized);
    }
    assert_no_partial_files(&reference, &s.path("out2"));
    let out = finalize(&[&stores], &[]);
    assert_eq!(out.status.code(), Some(18));
    assert!(String::from_utf8_lossy(&out.stdout).contains("already finalized: 3"));
}

#[test]
fn finalize_resume_continues_a_dead_owners_transfer() {
    let s = Scratch::new();
    let src = s.path("src");
    tree(&src, 6, 7);
    let mut rng = fastrand::Rng::with_seed(8);
    write_file(&src.join("large"), &random_bytes(&mut rng, 72 << 20));
    run_killed(
        s.ferry()
            .env("FERRY_FAILPOINT", "commit.record_progress:2")
            .args(["cp", "-a", "--threads", "1", "--name", "r"])
            .arg(&src)
            .arg(s.path("dst")),
    );
    let out = finalize(&[&s.store()], &["--resume", "--json"]);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(json(&out)["outcomes"]["resumed"], 1);
    assert_same_tree(&src, &s.path("dst"));
}

#[test]
fn finalize_leaves_owners_on_other_hosts_alone_unless_forced() {
    let s = Scratch::new();
    let id = remote_transfer(&s);
    let temp = s.path(&format!("dst/d0/f0._ferry-{id}"));
    write_file(&temp, b"partial");
    let out = finalize(&[&s.store()], &[]);
    assert_eq!(out.status.code(), Some(18), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("another host"));
    assert!(temp.exists(), "never guess about an owner on another host");
    let out = finalize(&[&s.store()], &["--force"]);
    assert_eq!(out.status.code(), Some(38), "aborted and removed: {out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("aborted transfer") && err.contains("removed"),
        "{err}"
    );
    assert!(!temp.exists());
}

#[test]
fn finalize_resume_force_continues_a_transfer_whose_owner_is_on_another_host() {
    let s = Scratch::new();
    remote_transfer(&s);
    let out = finalize(&[&s.store()], &["--resume"]);
    assert_eq!(
        out.status.code(),
        Some(18),
        "left alone without --force: {out:?}"
    );
    let out = finalize(&[&s.store()], &["--resume", "--force", "--json"]);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(json(&out)["outcomes"]["resumed"], 1);
    assert_same_tree(&s.path("src"), &s.path("dst"));
}

/// `ferry status` says what to do with each transfer that needs a hand
/// (a dead owner's, a failed one), counts directories apart from files,
/// gives bytes done and the last change, and filters by `--state` and
/// `--limit`; a finished transfer's owner is not called dead.
#[test]
fn status_says_what_to_do_next_and_filters_by_state_and_limit() {
    let s = Scratch::new();
    let src = s.path("src");
    tree(&src, 6, 4);
    run_ok(
        s.ferry()
            .args(["cp", "-r", "--name", "done"])
            .arg(&src)
            .arg(s.path("a")),
    );
    run_killed(
        s.ferry()
            .env("FERRY_FAILPOINT", "commit.rename:2")
            .args(["cp", "-r", "--name", "dead"])
            .arg(&src)
            .arg(s.path("b")),
    );
    let out = run_ok(s.ferry().arg("status"));
    let table = String::from_utf8_lossy(&out.stdout);
    let said = String::from_utf8_lossy(&out.stderr);
    let heading = table.lines().next().unwrap();
    for column in ["files", "dirs", "done", "updated", "owner"] {
        assert!(heading.contains(column), "{heading}");
    }
    let row = |name: &str| {
        table
            .lines()
            .skip(1)
            .find(|l| l.split_whitespace().nth(1) == Some(name))
            .unwrap_or_else(|| panic!("{name} in {table}"))
    };
    let done_row = row("done");
    assert!(done_row.contains("100% of "), "{done_row}");
    assert!(!done_row.contains("(dead)"), "{done_row}");
    let dead_row = row("dead");
    assert!(dead_row.contains("(dead)"), "{dead_row}");
    assert!(
        said.contains("ferry: dead: its owner died: ferry resume dead continues it"),
        "{said}"
    );
    assert!(!said.contains("ferry: done:"), "{said}");
    // JSON: directories apart, bytes durable, the last change, the hint.
    let rows = json(&run_ok(s.ferry().args(["status", "--json"])));
    let dead = rows
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["name"] == "dead")
        .unwrap();
    assert!(dead["dirs"].as_u64().unwrap() >= 1, "{dead}");
    assert_eq!(dead["counts"]["files"], 6, "{dead}");
    assert!(dead["updated"].as_str().unwrap().ends_with('Z'), "{dead}");
    assert!(
        dead["next"].as_str().unwrap().contains("ferry resume dead"),
        "{dead}"
    );
    let finished = rows
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["name"] == "done")
        .unwrap();
    assert!(finished["next"].is_null(), "{finished}");
    // --state, --limit.
    let only = json(&run_ok(s.ferry().args([
        "status",
        "--json",
        "--state",
        "completed",
    ])));
    let names: Vec<_> = only
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["name"].clone())
        .collect();
    assert_eq!(names, ["done"]);
    let newest = json(&run_ok(
        s.ferry().args(["status", "--json", "--limit", "1"]),
    ));
    let names: Vec<_> = newest
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["name"].clone())
        .collect();
    assert_eq!(names, ["dead"]);
    let refused = run(s.ferry().args(["status", "--state", "done"]));
    assert_eq!(refused.status.code(), Some(2), "{refused:?}");
}

/// A copy is planned into the store a batch at a time (4,096 entries), so
/// SIGKILL between two batches leaves a `created` transfer holding part
/// of the plan. `status` says so, `ferry resume` refuses it (a partial
/// list would be copied as if whole), and the same command again, named
/// or not, cancels it and plans the copy anew: the whole tree, once.
#[test]
fn a_copy_killed_while_it_is_planned_is_planned_anew_by_the_same_command() {
    let s = Scratch::new();
    let src = s.path("src");
    planned_in_batches(&src);
    for (name, dst) in [(Some("big"), "dst-named"), (None, "dst")] {
        let cp = || {
            let mut cp = s.ferry();
            cp.args(["cp", "-a"]);
            if let Some(name) = name {
                cp.args(["--name", name]);
            }
            cp.arg(&src).arg(s.path(dst));
            cp
        };
        run_killed(cp().env("FERRY_FAILPOINT", "plan.add_batch:2=crash"));
        assert!(
            !s.path(dst).exists(),
            "nothing is copied before the plan ends"
        );
        let store = SqliteStore::open(&s.store()).unwrap();
        let killed = store
            .transfers()
            .unwrap()
            .into_iter()
            .find(|t| t.state == TransferState::Created)
            .expect("the killed copy's transfer");
        let planned = store.entry_tally(killed.id).unwrap().entries;
        assert!(
            (4096..9091).contains(&planned),
            "one batch of the plan is in the store: {planned}"
        );

        let out = run_ok(s.ferry().arg("status"));
        let said = String::from_utf8_lossy(&out.stderr);
        assert!(
            said.contains(
                "its owner died before dispatching it, so its list of files may be incomplete"
            ),
            "{said}"
        );
        let out = run(s.ferry().args(["resume", &killed.name]));
        assert_eq!(out.status.code(), Some(13), "{out:?}");
        let said = String::from_utf8_lossy(&out.stderr);
        assert!(said.contains("was never dispatched"), "{said}");
        assert!(
            said.contains("run the command that made it again"),
            "{said}"
        );

        let out = run_ok(&mut cp());
        let said = String::from_utf8_lossy(&out.stderr);
        assert!(
            said.contains(&format!(
                "transfer {} (id {}) was never dispatched",
                killed.name, killed.id
            )),
            "{said}"
        );
        assert_same_tree(&src, &s.path(dst));
        assert_all_completed(&store);
        let transfers = store.transfers().unwrap();
        let done = transfers
            .iter()
            .find(|t| name.is_none_or(|name| t.name == name) && t.id != killed.id)
            .unwrap_or_else(|| panic!("{transfers:?}"));
        assert_eq!(store.entry_tally(done.id).unwrap().entries, 9091);
        // Cancelled and freed: its events say why.
        assert!(store.transfer(killed.id).unwrap().is_none());
        let filter = EventFilter {
            transfer: Some(killed.id),
            kind: Some("transfer.cancelled".into()),
            ..Default::default()
        };
        let cancelled = store.events_since(0, &filter, 10).unwrap();
        assert_eq!(cancelled.len(), 1, "{cancelled:?}");
        assert_eq!(
            cancelled[0].context["abandoned"],
            "never dispatched: its owner died while planning it"
        );
    }
}

/// A re-run over a finished copy (`--skip checksum`: planned anew, a
/// batch at a time) killed between two batches of its plan leaves the
/// finished copy where the same command finds it: under its name while
/// the new plan is provisional, or beside the unnamed new one. The same
/// command again ends the killed plan and brings the copy up to date in
/// place, never nested into `DST/src`.
#[test]
fn a_rerun_killed_while_it_is_planned_leaves_the_finished_copy_found() {
    let s = Scratch::new();
    let src = s.path("src");
    planned_in_batches(&src);
    let store = SqliteStore::open(&s.store()).unwrap();
    for (name, dst) in [(Some("job"), "dst-named"), (None, "dst")] {
        let cp = || {
            let mut cp = s.ferry();
            cp.args(["cp", "-a", "--skip", "checksum"]);
            if let Some(name) = name {
                cp.args(["--name", name]);
            }
            cp.arg(&src).arg(s.path(dst));
            cp
        };
        run_ok(&mut cp());
        let finished = |id| store.transfer(id).unwrap();
        let first = store
            .transfers()
            .unwrap()
            .into_iter()
            .rfind(|t| t.state == TransferState::Completed)
            .unwrap();
        fs::write(src.join("d00/f0"), b"changed since the first copy").unwrap();

        run_killed(cp().env("FERRY_FAILPOINT", "plan.add_batch:2=crash"));
        let killed = store
            .transfers()
            .unwrap()
            .into_iter()
            .find(|t| t.state == TransferState::Created)
            .expect("the killed re-run's transfer");
        assert!(finished(first.id).is_some(), "the finished copy stays live");
        if let Some(name) = name {
            // The name stays the finished copy's until the new plan is whole.
            assert_eq!(store.transfer_by_name(name).unwrap().unwrap().id, first.id);
            assert!(
                killed
                    .name
                    .starts_with(&format!(" {name} (planned by pid ")),
                "{killed:?}"
            );
            let out = run_ok(s.ferry().args(["status", name]));
            let said = String::from_utf8_lossy(&out.stdout);
            assert!(said.contains("completed"), "{said}");
            // The dead plan's advice can be typed as printed.
            let out = run_ok(s.ferry().arg("status"));
            let said = format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
            assert!(
                said.contains(&format!("ferry forget ' {name} (planned by pid ")),
                "{said}"
            );
        }

        let out = run_ok(&mut cp());
        let said = String::from_utf8_lossy(&out.stderr);
        assert!(!s.path(dst).join("src").exists(), "nested: {said}");
        assert_same_tree(&src, &s.path(dst));
        assert!(finished(killed.id).is_none(), "the killed plan is ended");
        assert_all_completed(&store);
        if let Some(name) = name {
            let now = store.transfer_by_name(name).unwrap().unwrap();
            assert_ne!(now.id, first.id, "a new transfer brought it up to date");
            assert_eq!(store.entry_tally(now.id).unwrap().entries, 9091);
            assert!(finished(first.id).is_none(), "it gave its name up");
            // Killed again while planned; then a plain re-run finds nothing
            // changed, and ends the dead plan all the same.
            run_killed(cp().env("FERRY_FAILPOINT", "plan.add_batch:2=crash"));
            let out = run_ok(
                s.ferry()
                    .args(["cp", "-a", "--name", name])
                    .arg(&src)
                    .arg(s.path(dst)),
            );
            assert!(
                String::from_utf8_lossy(&out.stderr).contains("nothing changed since"),
                "{out:?}"
            );
            assert_all_completed(&store);
        }
    }
}

/// `ferry cancel` of a copy still being planned never leaves a partial
/// plan to continue: a live planner stops at its next batch (exit 12,
/// saying so) and drops it; a dead planner's is dropped by the cancel.
/// Either way the same command then copies the whole tree.
#[test]
fn a_copy_cancelled_while_it_is_planned_is_dropped_and_copied_anew() {
    let s = Scratch::new();
    let src = s.path("src");
    planned_in_batches(&src);
    let cp = |dst: &str| {
        let mut cp = s.ferry();
        cp.args(["cp", "-a", "--name", dst])
            .arg(&src)
            .arg(s.path(dst));
        cp
    };
    let store = SqliteStore::open(&s.store()).unwrap();

    // A live planner, paused before its second batch.
    let fifo = s.path("pause");
    run_ok(std::process::Command::new("mkfifo").arg(&fifo));
    let child = cp("live")
        .env("FERRY_FAILPOINT", "plan.add_batch:2=pause")
        .env("FERRY_FAILPOINT_FIFO", &fifo)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pause = fs::OpenOptions::new().write(true).open(&fifo).unwrap();
    let out = run_ok(s.ferry().args(["cancel", "live"]));
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(said.contains("was planning it, and stops"), "{said}");
    assert!(store.transfers().unwrap().is_empty(), "dropped at once");
    drop(pause);
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(12), "{out:?}");
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(
        said.contains("was cancelled while it was planned")
            && said.contains("run the same command again"),
        "{said}"
    );
    assert!(store.transfers().unwrap().is_empty(), "dropped");

    // A dead planner.
    run_killed(cp("dead").env("FERRY_FAILPOINT", "plan.add_batch:2=crash"));
    let out = run_ok(s.ferry().args(["cancel", "dead"]));
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        said.contains("dropped it: it was never dispatched"),
        "{said}"
    );
    assert!(store.transfers().unwrap().is_empty(), "dropped");

    for dst in ["live", "dead"] {
        run_ok(&mut cp(dst));
        assert_same_tree(&src, &s.path(dst));
        let t = store.transfer_by_name(dst).unwrap().unwrap();
        assert_eq!(store.entry_tally(t.id).unwrap().entries, 9091);
    }
}

/// `ferry cancel` after the last batch of a plan and before its dispatch
/// (fail point `plan.dispatch`, paused): the dispatch is refused and the
/// copy never starts, as the cancel said.
#[test]
fn a_copy_cancelled_between_its_plan_and_its_dispatch_never_starts() {
    let s = Scratch::new();
    let src = s.path("src");
    write_file(&src.join("a/f"), b"data");
    let fifo = s.path("pause");
    run_ok(std::process::Command::new("mkfifo").arg(&fifo));
    let child = s
        .ferry()
        .env("FERRY_FAILPOINT", "plan.dispatch=pause")
        .env("FERRY_FAILPOINT_FIFO", &fifo)
        .args(["cp", "-a", "--name", "small"])
        .arg(&src)
        .arg(s.path("dst"))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pause = fs::OpenOptions::new().write(true).open(&fifo).unwrap();
    let out = run_ok(s.ferry().args(["cancel", "small"]));
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        said.contains("dropped it: it was never dispatched"),
        "{said}"
    );
    drop(pause);
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(12), "{out:?}");
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(
        said.contains("was cancelled while it was planned"),
        "{said}"
    );
    assert!(!s.path("dst").exists(), "nothing was copied");
    let store = SqliteStore::open(&s.store()).unwrap();
    assert!(store.transfers().unwrap().is_empty(), "dropped");

    // A re-run of a finished copy, planned under a provisional name: `ferry
    // cancel NAME` finds the plan, not the finished copy.
    let cp = || {
        let mut cp = s.ferry();
        cp.args(["cp", "-a", "--skip", "checksum", "--name", "small"])
            .arg(&src)
            .arg(s.path("dst"));
        cp
    };
    run_ok(&mut cp());
    let finished = store.transfer_by_name("small").unwrap().unwrap();
    let child = cp()
        .env("FERRY_FAILPOINT", "plan.dispatch=pause")
        .env("FERRY_FAILPOINT_FIFO", &fifo)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pause = fs::OpenOptions::new().write(true).open(&fifo).unwrap();
    let out = run_ok(s.ferry().args(["status"]));
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(said.contains(" small (planned by pid"), "{said}");
    let out = run_ok(s.ferry().args(["cancel", "small"]));
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        said.contains("dropped it: it was never dispatched"),
        "{said}"
    );
    drop(pause);
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(12), "{out:?}");
    let now = store.transfers().unwrap();
    assert_eq!(now.len(), 1, "{now:?}");
    assert_eq!(
        (now[0].id, now[0].state),
        (finished.id, TransferState::Completed)
    );
}
