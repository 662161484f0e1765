//! The event log: watchers never miss, repeat or reorder a transition, the
//! log rebuilds any past state, and a compacted cursor is an error.

mod util;

use std::io::{BufRead, BufReader};
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use ferry::events::{Watch, WatchItem, snapshot_at, snapshot_now};
use ferry::store::{EventFilter, SqliteStore, Store};
use ferry::{Kind, Preserve, Transfer};
use proptest::prelude::*;
use util::*;

fn small_tree(root: &Path, files: usize, seed: u64) {
    let mut rng = fastrand::Rng::with_seed(seed);
    for i in 0..files {
        let len = rng.usize(0..20_000);
        write_file(
            &root.join(format!("d{}/f{i}", i % 3)),
            &random_bytes(&mut rng, len),
        );
    }
}

fn event_lines(lines: &[String]) -> Vec<serde_json::Value> {
    lines
        .iter()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|v| v.get("seq").is_some())
        .collect()
}

#[test]
fn a_watcher_started_before_the_transfer_and_one_started_after_see_the_same_sequence() {
    let s = Scratch::new();
    let src = s.path("src");
    small_tree(&src, 12, 1);
    // The store exists before the watcher starts (reading commands never
    // create one).
    ferry::store::SqliteStore::open(&s.store()).unwrap();
    let mut early = s
        .ferry()
        .args(["watch", "--json", "--transfer", "T", "--until-done", "T"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut reader = BufReader::new(early.stdout.take().unwrap());
    let mut early_lines = Vec::new();
    // Wait for the watcher's bookmark: it is watching before T exists.
    loop {
        let mut line = String::new();
        assert!(
            reader.read_line(&mut line).unwrap() > 0,
            "the watcher ended early"
        );
        let done = line.contains("bookmark");
        early_lines.push(line);
        if done {
            break;
        }
    }
    run_ok(
        s.ferry()
            .args(["cp", "-a", "--name", "T"])
            .arg(&src)
            .arg(s.path("dst")),
    );
    for line in reader.lines() {
        early_lines.push(line.unwrap());
    }
    assert!(
        early.wait().unwrap().success(),
        "--until-done exits 0 for a completed transfer"
    );

    let late = run_ok(
        s.ferry()
            .args(["watch", "--json", "--transfer", "T", "--until-done", "T"]),
    );
    let late_lines: Vec<String> = String::from_utf8(late.stdout)
        .unwrap()
        .lines()
        .map(str::to_owned)
        .collect();

    let (early, late) = (event_lines(&early_lines), event_lines(&late_lines));
    assert_eq!(early, late, "both watchers see the same events");
    let seqs: Vec<u64> = early.iter().map(|e| e["seq"].as_u64().unwrap()).collect();
    assert!(
        seqs.windows(2).all(|w| w[0] < w[1]),
        "strictly increasing: {seqs:?}"
    );
    let names: Vec<&str> = early.iter().map(|e| e["event"].as_str().unwrap()).collect();
    assert_eq!(names.first(), Some(&"transfer.created"));
    assert_eq!(names.last(), Some(&"transfer.completed"));
    assert_eq!(
        names.iter().filter(|n| **n == "file.committed").count(),
        12 + 4,
        "12 files and 4 directories"
    );
    assert!(early.iter().all(|e| e["subject"]["name"] == "T"));
    assert!(early[0]["time"].as_str().unwrap().ends_with('Z'));
}

#[test]
fn status_at_a_past_event_equals_the_state_seen_then() {
    let s = Scratch::new();
    let src = s.path("src");
    small_tree(&src, 30, 2);
    let out = run(s
        .ferry()
        .env("FERRY_FAILPOINT", "commit.rename:5")
        .args(["cp", "-a", "--name", "x", "--threads", "1"])
        .arg(&src)
        .arg(s.path("dst")));
    assert_eq!(out.status.signal(), Some(9));
    let (then, seq) = {
        let store = SqliteStore::open(&s.store()).unwrap();
        (snapshot_now(&store).unwrap(), store.last_seq().unwrap())
    };
    run_ok(s.ferry().args(["resume", "x"]));
    run_ok(
        s.ferry()
            .args(["cp", "--name", "y"])
            .arg(src.join("d0/f0"))
            .arg(s.path("single")),
    );

    let at = json(&run_ok(
        s.ferry()
            .args(["status", "--json", "--at"])
            .arg(seq.to_string()),
    ));
    assert_eq!(at, serde_json::to_value(&then).unwrap());
    // Mid-way: the crash left the transfer running with files copied, not committed.
    assert_eq!(then[0].state, ferry::TransferState::Running);
    assert!(
        then[0]
            .entries
            .iter()
            .any(|e| e.state == ferry::FileState::Copied)
    );
    assert!(
        then[0]
            .entries
            .iter()
            .all(|e| e.state != ferry::FileState::Committed)
    );

    let store = SqliteStore::open(&s.store()).unwrap();
    let last = store.last_seq().unwrap();
    let now = json(&run_ok(
        s.ferry()
            .args(["status", "--json", "--at"])
            .arg(last.to_string()),
    ));
    assert_eq!(
        now,
        serde_json::to_value(snapshot_now(&store).unwrap()).unwrap()
    );
}

#[test]
fn a_cursor_below_the_compaction_horizon_is_a_distinct_error() {
    let s = Scratch::new();
    let src = s.path("src");
    small_tree(&src, 5, 3);
    run_ok(s.ferry().args(["cp", "-r"]).arg(&src).arg(s.path("dst")));
    let store = SqliteStore::open(&s.store()).unwrap();
    let last = store.last_seq().unwrap();
    run_ok(s.ferry().args(["store", "compact", "--keep", "3"]));
    let horizon = last - 3;
    let out = run(s.ferry().args(["watch", "--since", "1"]));
    assert_eq!(out.status.code(), Some(17), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("compacted") && stderr.contains(&horizon.to_string()),
        "{stderr}"
    );
    // From the horizon on, the watcher sees every remaining event.
    let mut watch = Watch::new(&store, horizon, EventFilter::default()).unwrap();
    let mut seen = Vec::new();
    while let Some(WatchItem::Event(e)) = watch.next_timeout(Some(Duration::ZERO)).unwrap() {
        seen.push(e.seq);
    }
    assert_eq!(seen, ((horizon + 1)..=last).collect::<Vec<_>>());
    // A cursor past the end is not from this log: an error, not a silent skip.
    let out = run(s
        .ferry()
        .args(["watch", "--since"])
        .arg((last + 100).to_string()));
    assert_eq!(out.status.code(), Some(17), "{out:?}");
    // A cursor saved before a restart continues exactly there.
    let mut watch = Watch::new(&store, last - 1, EventFilter::default()).unwrap();
    assert!(
        matches!(watch.next_timeout(Some(Duration::ZERO)).unwrap(), Some(WatchItem::Event(e)) if e.seq == last)
    );
}

#[test]
fn wait_tells_the_outcome_by_its_exit_code() {
    let s = Scratch::new();
    let src = s.path("src");
    small_tree(&src, 3, 4);
    run_ok(
        s.ferry()
            .args(["cp", "-r", "--name", "ok"])
            .arg(&src)
            .arg(s.path("a")),
    );
    assert_eq!(run(s.ferry().args(["wait", "ok"])).status.code(), Some(0));
    let out = run(s
        .ferry()
        .env("FERRY_FAILPOINT", "commit.write_data=eio")
        .args(["cp", "-r", "--name", "bad"])
        .arg(&src)
        .arg(s.path("b")));
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(run(s.ferry().args(["wait", "bad"])).status.code(), Some(1));
    run_ok(s.ferry().args(["cancel", "bad"]));
    assert_eq!(run(s.ferry().args(["wait", "bad"])).status.code(), Some(12));
}

/// One concurrent run: writer threads (through the library) and writer
/// processes (`ferry cp`) on one store, and watchers that start at random
/// moments from random cursors.
fn concurrent_run(threads: usize, processes: usize, watchers: usize, files: usize, picks: &[u64]) {
    let s = Scratch::new();
    let src = s.path("src");
    small_tree(&src, files, picks[0]);
    let store = Arc::new(SqliteStore::open(&s.store()).unwrap());
    let final_seq = Arc::new(AtomicU64::new(u64::MAX));

    std::thread::scope(|scope| {
        let mut watcher_handles = Vec::new();
        let mut writers = Vec::new();
        let mut children = Vec::new();
        for k in 0..threads.max(processes).max(watchers) {
            if k < watchers {
                // Each watcher has its own store handle: its wake-ups come
                // from data_version, not from this process's notifier.
                let own = SqliteStore::open(&s.store()).unwrap();
                let start = picks[k % picks.len()] % (store.last_seq().unwrap() + 1);
                let final_seq = Arc::clone(&final_seq);
                watcher_handles.push(scope.spawn(move || {
                    let mut watch = Watch::new(&own, start, EventFilter::default()).unwrap();
                    let mut seen = Vec::new();
                    loop {
                        match watch.next_timeout(Some(Duration::from_millis(50))).unwrap() {
                            Some(WatchItem::Event(e)) => seen.push(e.seq),
                            Some(WatchItem::CaughtUp(_)) | None => {}
                        }
                        if watch.cursor() >= final_seq.load(Ordering::SeqCst) {
                            return (start, seen);
                        }
                    }
                }));
            }
            if k < threads {
                let store: Arc<dyn Store> = store.clone();
                let (src, dst) = (src.clone(), s.path(&format!("thread{k}")));
                writers.push(scope.spawn(move || {
                    let entries = ferry::plan(&[src], &dst, true).unwrap();
                    let mut t = Transfer::create(
                        store,
                        Some(&format!("t{k}")),
                        Kind::Threads,
                        Preserve::ALL,
                        &entries,
                    )
                    .unwrap();
                    t.dispatch(1).unwrap();
                    let report = t.wait().unwrap();
                    assert_eq!(report.state, ferry::TransferState::Completed);
                }));
            }
            if k < processes {
                children.push(
                    s.ferry()
                        .args(["cp", "-r", "--name", &format!("p{k}")])
                        .arg(&src)
                        .arg(s.path(&format!("process{k}")))
                        .stdout(Stdio::null())
                        .spawn()
                        .unwrap(),
                );
            }
        }
        for w in writers {
            w.join().unwrap();
        }
        for mut c in children {
            assert!(c.wait().unwrap().success());
        }
        final_seq.store(store.last_seq().unwrap(), Ordering::SeqCst);
        let all: Vec<u64> = store
            .events_since(0, &EventFilter::default(), usize::MAX >> 1)
            .unwrap()
            .iter()
            .map(|e| e.seq)
            .collect();
        for handle in watcher_handles {
            let (start, seen) = handle.join().unwrap();
            let expected: Vec<u64> = all.iter().copied().filter(|seq| *seq > start).collect();
            assert_eq!(
                seen, expected,
                "a watcher from {start} sees every later event once, in order"
            );
        }
    });
    let replayed = snapshot_at(store.as_ref(), store.last_seq().unwrap()).unwrap();
    assert_eq!(
        replayed,
        snapshot_now(store.as_ref()).unwrap(),
        "replaying the log rebuilds the tables"
    );
    assert_eq!(replayed.len(), threads + processes);
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 10, ..ProptestConfig::default() })]

    #[test]
    fn concurrent_writers_and_watchers_never_miss_repeat_or_reorder(
        threads in 1usize..4,
        processes in 0usize..3,
        watchers in 1usize..4,
        files in 1usize..15,
        picks in proptest::collection::vec(any::<u64>(), 4),
    ) {
        concurrent_run(threads, processes, watchers, files, &picks);
    }
}

/// `watch --event` with a name no store writes would watch nothing,
/// forever: refused (exit 2) with the names there are. A family and a full
/// name are taken.
#[test]
fn watch_refuses_an_event_name_no_store_writes() {
    let s = Scratch::new();
    let out = run(s.ferry().args(["watch", "--event", "transfer.complete"]));
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(
        said.contains("transfer.complete'") && said.contains("transfer.completed"),
        "{said}"
    );
    write_file(&s.path("f"), b"data");
    run_ok(
        s.ferry()
            .args(["cp", "--name", "w"])
            .arg(s.path("f"))
            .arg(s.path("copy")),
    );
    for event in ["transfer", "transfer.completed"] {
        let out =
            run_ok(
                s.ferry()
                    .args(["watch", "--json", "--event", event, "--until-done", "w"]),
            );
        assert!(
            String::from_utf8_lossy(&out.stdout).contains("transfer.completed"),
            "{event}: {out:?}"
        );
    }
}
