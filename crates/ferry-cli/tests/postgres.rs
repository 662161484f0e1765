//! The `ferry` command on a PostgreSQL store (`--store postgres://…`): the
//! same copies, crashes, resumes, watches, finalize and HSM queue as on
//! SQLite, and a clear refusal from `store check`, which needs a store file.
//! (`ferry serve` on PostgreSQL: `serve_shared.rs`.) Needs the test
//! server (`ferry_postgres::testing`; `.ci/run` starts it): a test that
//! cannot reach it fails, it never skips.

mod util;

use std::fs;
use std::path::Path;
use std::process::Command;

use ferry_postgres::testing::TestSchema;
use util::{Scratch, assert_same_tree, ferry_at, json, run, run_ok};

fn ferry(schema: &TestSchema) -> Command {
    ferry_at(Path::new(&schema.url))
}

#[test]
fn cp_status_watch_and_verify_on_a_postgres_store() {
    let s = Scratch::new();
    let schema = TestSchema::new();
    let (src, dst) = (s.path("src"), s.path("dst"));
    util::random_files(&src, 60, 4, 7, |i| i * 1_000);
    run_ok(
        ferry(&schema)
            .args(["cp", "-a", "--name", "pg1"])
            .arg(&src)
            .arg(&dst),
    );
    assert_same_tree(&src, &dst);
    // Nothing was written beside the scratch tree: the state is in the database.
    assert!(!s.store().exists());

    let status = json(&run_ok(ferry(&schema).args(["status", "pg1", "--json"])));
    assert_eq!(status["state"], "completed", "{status}");
    let watched = run_ok(ferry(&schema).args([
        "watch",
        "--since",
        "0",
        "--transfer",
        "pg1",
        "--until-done",
        "pg1",
        "--json",
    ]));
    let events: Vec<serde_json::Value> = String::from_utf8_lossy(&watched.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let seqs: Vec<u64> = events.iter().map(|e| e["seq"].as_u64().unwrap()).collect();
    assert!(seqs.windows(2).all(|w| w[0] < w[1]), "in order: {seqs:?}");
    let copied = events
        .iter()
        .filter(|e| e["event"] == "file.committed")
        .count();
    assert!(copied >= 60, "every file's commit is in the log: {copied}");
    assert_eq!(events.last().unwrap()["event"], "transfer.completed");

    run_ok(ferry(&schema).args(["verify", "pg1"]));
    let victim = dst.join("d1/f5");
    let mut bytes = fs::read(&victim).unwrap();
    bytes[100] ^= 0x40;
    fs::write(&victim, bytes).unwrap();
    let bad = run(ferry(&schema).args(["verify", "pg1"]));
    assert_eq!(bad.status.code(), Some(21));
    assert!(
        String::from_utf8_lossy(&bad.stdout).contains("d1/f5"),
        "{bad:?}"
    );
}

#[test]
fn a_copy_killed_mid_commit_resumes_from_the_postgres_store() {
    let s = Scratch::new();
    let schema = TestSchema::new();
    let (src, dst) = (s.path("src"), s.path("dst"));
    util::random_files(&src, 40, 3, 11, |i| 500 + i * 700);
    let crashed = run(ferry(&schema)
        .env("FERRY_FAILPOINT", "commit.rename:10")
        .args(["cp", "-a", "--threads", "1", "--name", "pg2"])
        .arg(&src)
        .arg(&dst));
    assert!(
        crashed.status.code().is_none(),
        "killed by its fail point: {crashed:?}"
    );
    let before = json(&run_ok(ferry(&schema).args(["status", "pg2", "--json"])));
    assert_ne!(before["state"], "completed", "{before}");
    run_ok(ferry(&schema).args(["resume", "pg2"]));
    assert_same_tree(&src, &dst);
    assert!(util::temps(&dst).is_empty(), "no temporary left");
}

#[test]
fn finalize_takes_a_postgres_store_and_the_names_of_its_transfers() {
    let s = Scratch::new();
    let schema = TestSchema::new();
    let (src, dst) = (s.path("src"), s.path("dst"));
    util::random_files(&src, 40, 3, 12, |i| 500 + i * 700);
    let crashed = run(ferry(&schema)
        .env("FERRY_FAILPOINT", "commit.rename:10")
        .args(["cp", "-a", "--threads", "1", "--name", "pg3"])
        .arg(&src)
        .arg(&dst));
    assert!(crashed.status.code().is_none(), "killed: {crashed:?}");
    // A name the store lacks: refused before anything is done.
    let missing = run(ferry(&schema).args(["finalize", "pg3", "nosuch"]));
    assert_eq!(missing.status.code(), Some(10), "{missing:?}");
    assert!(
        String::from_utf8_lossy(&missing.stderr).contains("nosuch"),
        "{missing:?}"
    );
    // `--store URL finalize NAME`: the dead owner's copy finalized (renamed
    // from its durable temporaries), or continued first when the crash came
    // before every file was copied.
    let out = run_ok(ferry(&schema).args(["finalize", "--resume", "--json", "pg3"]));
    let report = json(&out);
    let done = |o: &str| report["outcomes"][o].as_u64().unwrap_or(0);
    assert_eq!(done("finalized") + done("resumed"), 1, "{report}");
    assert_same_tree(&src, &dst);
    assert!(util::temps(&dst).is_empty(), "no temporary left");
    let status = json(&run_ok(ferry(&schema).args(["status", "pg3", "--json"])));
    assert_eq!(status["state"], "finalized", "{status}");
    // `finalize URL`: the URL is a store, every transfer of it finalized
    // (this one already).
    let again = json(&run_ok(Command::new(util::FERRY).args([
        "finalize",
        "--json",
        &schema.url,
    ])));
    assert_eq!(again["stores"], 1, "{again}");
    assert_eq!(again["outcomes"]["already_finalized"], 1, "{again}");
}

#[test]
fn the_hsm_queue_on_a_postgres_store_archives_and_restores() {
    let s = Scratch::new();
    let schema = TestSchema::new();
    let archive = s.path("archive");
    fs::create_dir_all(&archive).unwrap();
    let f = s.path("fs/f");
    let data: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
    util::write_file(&f, &data);
    let worker = |schema: &TestSchema| {
        run_ok(
            ferry(schema)
                .args(["hsm", "worker", "--lease-ms", "2000", "--until-idle"])
                .arg("--archive")
                .arg(format!("posix:{}", archive.display())),
        );
    };
    run_ok(ferry(&schema).args(["hsm", "archive"]).arg(&f));
    worker(&schema);
    run_ok(ferry(&schema).args(["hsm", "release"]).arg(&f));
    run_ok(ferry(&schema).args(["hsm", "restore"]).arg(&f));
    worker(&schema);
    assert_eq!(fs::read(&f).unwrap(), data);
    let status = json(&run_ok(
        ferry(&schema).args(["hsm", "status", "--json"]).arg(&f),
    ));
    assert_eq!(status["state"], "archived", "{status}");
}

#[test]
fn store_check_refuses_a_postgres_url_and_an_unreachable_server_is_named() {
    let schema = TestSchema::new();
    let check = run(ferry(&schema).args(["store", "check"]));
    assert_eq!(check.status.code(), Some(8));
    assert!(
        String::from_utf8_lossy(&check.stderr).contains("PostgreSQL"),
        "{check:?}"
    );

    let nowhere = run(ferry_at(Path::new("postgres://u:hunter2@127.0.0.1:1/db")).arg("status"));
    assert_eq!(nowhere.status.code(), Some(15));
    let stderr = String::from_utf8_lossy(&nowhere.stderr);
    assert!(
        stderr.contains("cannot reach store postgres://u@127.0.0.1:1/db"),
        "{stderr}"
    );
    assert!(!stderr.contains("hunter2"), "{stderr}");
}
