//! SIGKILL at random moments: nothing partial is ever visible under a final
//! name, and `ferry resume` always converges to an identical tree without
//! copying again what was durable.
//!
//! The seed is printed; `FERRY_CRASH_SEED=N` replays a run.

mod util;

use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use ferry::store::{SqliteStore, Store};
use util::*;

const KILLS_MIN: usize = 20;
const ITERATIONS_MAX: usize = 60;
const LARGE_FILES: usize = 3;
const LARGE_BYTES: usize = 56 << 20;
const SMALL_FILES: usize = 197;

fn make_tree(root: &Path, rng: &mut fastrand::Rng) {
    for i in 0..SMALL_FILES {
        let len = rng.usize(0..256 << 10);
        write_file(
            &root.join(format!("d{}/s{}/f{i}", i % 7, i % 3)),
            &random_bytes(rng, len),
        );
    }
    for i in 0..LARGE_FILES {
        write_file(
            &root.join(format!("large/big{i}")),
            &random_bytes(rng, LARGE_BYTES + i * 4099),
        );
    }
}

/// Durable progress of large files that were mid-copy: (entry, bytes).
fn progress_of_unfinished(store: &Path) -> (Vec<(u32, u64)>, u64) {
    let store = SqliteStore::open(store).unwrap();
    let Some(t) = store.transfer_by_name("crash").unwrap() else {
        return (Vec::new(), 0);
    };
    let unfinished = store
        .entries(t.id)
        .unwrap()
        .into_iter()
        .filter(|e| {
            e.progress_bytes_durable > 0
                && matches!(
                    e.state,
                    ferry::FileState::Copying | ferry::FileState::Failed
                )
        })
        .map(|e| (e.index.0, e.progress_bytes_durable))
        .collect();
    let last_seq = store
        .events_since(0, &Default::default(), usize::MAX >> 1)
        .unwrap()
        .last()
        .map_or(0, |e| e.seq);
    (unfinished, last_seq)
}

#[test]
fn sigkill_at_random_moments_then_resume_converges() {
    let seed = std::env::var("FERRY_CRASH_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| fastrand::u64(..));
    println!("crash test seed: {seed} (FERRY_CRASH_SEED={seed} replays it)");
    let mut rng = fastrand::Rng::with_seed(seed);
    let s = Scratch::new();
    let src = s.path("src");
    make_tree(&src, &mut rng);

    // Clean runs, to learn how long a whole copy takes here: the faster of
    // two, since the first may read a cold source (then most kill moments
    // would fall after the end, and too few runs would be killed).
    let mut full = Duration::MAX;
    for reference in ["reference", "reference2"] {
        let started = Instant::now();
        run_ok(
            s.ferry()
                .args(["cp", "-a"])
                .arg(&src)
                .arg(s.path(reference)),
        );
        full = full.min(started.elapsed());
        assert_same_tree(&src, &s.path(reference));
    }
    println!("uninterrupted copy: {full:?}");

    let (mut kills, mut resumed_mid_file) = (0, 0);
    for iteration in 0..ITERATIONS_MAX {
        if kills >= KILLS_MIN {
            break;
        }
        let dst = s.path(&format!("dst{iteration}"));
        let store = s.path(&format!("state/crash{iteration}.db"));
        // Each kill moment comes from its own seed, printed with it.
        let kill_seed = rng.u64(..);
        let delay = Duration::from_micros(
            fastrand::Rng::with_seed(kill_seed).u64(0..full.as_micros() as u64 + 1),
        );
        let mut child = ferry_at(&store)
            .args(["cp", "-a", "--name", "crash"])
            .arg(&src)
            .arg(&dst)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        // The fault is injected at a random moment: this sleep is the
        // injection, not a wait for an event.
        std::thread::sleep(delay);
        let finished_first = child.try_wait().unwrap().is_some();
        let _ = child.kill();
        child.wait().unwrap();
        if !finished_first {
            kills += 1;
        }
        println!(
            "iteration {iteration}: kill seed {kill_seed}, killed after {delay:?} (finished first: {finished_first})"
        );

        assert_no_partial_files(&src, &dst);
        let (unfinished, last_seq) = progress_of_unfinished(&store);

        let mut again = ferry_at(&store);
        // Recorded and dispatched: a transfer killed while its plan was
        // added is left `created`, and only the same `cp` continues it.
        let exists = SqliteStore::open(&store)
            .unwrap()
            .transfer_by_name("crash")
            .unwrap()
            .is_some_and(|t| t.state != ferry::TransferState::Created);
        if exists {
            again.args(["resume", "crash", "--json"]);
        } else {
            // Killed before the transfer was recorded or dispatched: the
            // same command again.
            again
                .args(["cp", "-a", "--json", "--name", "crash"])
                .arg(&src)
                .arg(&dst);
        }
        let out = run(&mut again);
        if exists && out.status.code() == Some(13) {
            // It completed before the kill landed: nothing to resume.
            let status = json(&run_ok(
                ferry_at(&store).args(["status", "crash", "--json"]),
            ));
            assert_eq!(
                status["state"], "completed",
                "only a completed transfer has nothing to resume"
            );
            assert_same_tree(&src, &dst);
            continue;
        }
        assert!(out.status.success(), "resume must converge");
        assert_eq!(json(&out)["state"], "completed");
        assert_same_tree(&src, &dst);

        // A large file with durable progress continued from it.
        let events = SqliteStore::open(&store)
            .unwrap()
            .events_since(last_seq, &Default::default(), 1 << 20)
            .unwrap();
        for (index, progress) in unfinished {
            let restart = events
                .iter()
                .find(|e| e.name == "file.copying" && e.entry.map(|i| i.0) == Some(index))
                .unwrap_or_else(|| panic!("entry {index} was not resumed"));
            assert_eq!(
                restart.context["offset"].as_u64(),
                Some(progress),
                "entry {index} had {progress} durable bytes and must continue from there"
            );
            resumed_mid_file += 1;
        }
    }
    println!("{kills} kills; {resumed_mid_file} large files resumed from durable progress");
    assert!(
        kills >= KILLS_MIN,
        "only {kills} of the runs were killed mid-way"
    );
}
