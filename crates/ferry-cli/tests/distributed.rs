//! Distributed copies: `ferry cp --distributed` on a PostgreSQL store, moved
//! by `ferry worker`s, each in its own UTS namespace with its own host name
//! (a "node"). Needs the test server (`ferry_postgres::testing`) and root
//! (for `unshare -u`): without them a test fails, it never skips.

mod util;

use std::collections::{HashMap, HashSet};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use ferry_postgres::testing::TestSchema;
use util::daemon::{mkfifo, paused};
use util::{Scratch, assert_same_tree, ferry_at, json, run_ok, write_file};
use xxhash_rust::xxh3::xxh3_128;

fn ferry(schema: &TestSchema) -> Command {
    ferry_at(Path::new(&schema.url))
}

/// `cp --distributed --name NAME SRC DST`, then a watcher of every event of
/// NAME from the first, until it ends (its JSON lines on a pipe).
fn dispatch_and_watch(schema: &TestSchema, name: &str, src: &Path, dst: &Path) -> Child {
    run_ok(
        ferry(schema)
            .args(["cp", "-a", "--distributed", "--name", name])
            .arg(src)
            .arg(dst),
    );
    ferry(schema)
        .args(["watch", "--since", "0", "--json", "--until-done", name])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap()
}

/// An `item.done` event: which item, by which lease.
struct ItemDone {
    item: u64,
    attempt: u64,
    host: String,
    kind: String,
}

/// Asserts that in `events` every leased item is done exactly once, by
/// the lease (attempt and host) it had last; returns the completions.
fn items_done_once_by_their_lease(events: &[serde_json::Value]) -> Vec<ItemDone> {
    let mut lease_of: HashMap<u64, (u64, String)> = HashMap::new();
    let mut done: Vec<ItemDone> = Vec::new();
    let mut done_items = HashSet::new();
    for e in events {
        let c = &e["context"];
        let item = c["item"].as_u64().unwrap_or(0);
        let attempt = c["attempt"].as_u64().unwrap_or(0);
        let host = c["host"].as_str().unwrap_or("").to_string();
        match e["event"].as_str().unwrap() {
            "item.leased" => {
                lease_of.insert(item, (attempt, host));
            }
            "item.done" => {
                assert_eq!(
                    lease_of.get(&item),
                    Some(&(attempt, host.clone())),
                    "item {item}: {e}"
                );
                assert!(done_items.insert(item), "item {item} done twice");
                let kind = c["kind"].as_str().unwrap_or("").to_string();
                done.push(ItemDone {
                    item,
                    attempt,
                    host,
                    kind,
                });
            }
            _ => {}
        }
    }
    let never_done: Vec<_> = lease_of
        .keys()
        .filter(|i| !done_items.contains(i))
        .collect();
    assert!(
        never_done.is_empty(),
        "items leased and never done: {never_done:?}: {:?}",
        events
            .iter()
            .filter(|e| e["context"]["item"]
                .as_u64()
                .is_some_and(|i| never_done.contains(&&i)))
            .collect::<Vec<_>>()
    );
    done
}

/// `ferry worker` as node `host`: in a UTS namespace of its own, so that
/// the host name it records is `host`.
fn node(schema: &TestSchema, host: &str, args: &[&str]) -> Child {
    node_command(schema, host, args)
        .spawn()
        .expect("unshare runs (root needed)")
}

fn node_command(schema: &TestSchema, host: &str, args: &[&str]) -> Command {
    let ferry = env!("CARGO_BIN_EXE_ferry");
    let mut cmd = Command::new("unshare");
    cmd.arg("-u")
        .arg("sh")
        .arg("-c")
        .arg(r#"hostname "$1" && shift && exec "$@""#)
        .arg("sh")
        .arg(host)
        .arg(ferry)
        .arg("--store")
        .arg(&schema.url)
        .arg("worker")
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    cmd
}

/// Workers run in UTS namespaces (`unshare -u`): the test fails, never
/// skips, without root.
fn needs_root() {
    assert!(
        rustix::process::geteuid().is_root(),
        "this test runs workers in UTS namespaces (unshare -u): run it as root"
    );
}

fn finished(child: Child) -> String {
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "worker failed: {stderr}");
    stderr
}

#[test]
fn two_nodes_copy_a_tree_and_status_shows_each_node() {
    needs_root();
    let s = Scratch::new();
    let schema = TestSchema::new();
    let (src, dst) = (s.path("src"), s.path("dst"));
    util::random_files(&src, 700, 5, 3, |i| (i * 37) % 9000);
    // A large file (copied in ranges, by both nodes) and a symlink.
    let mut rng = fastrand::Rng::with_seed(9);
    write_file(
        &src.join("d1/large"),
        &util::random_bytes(&mut rng, 70 << 20),
    );
    std::os::unix::fs::symlink("f1", src.join("d1/link")).unwrap();
    std::fs::create_dir_all(src.join("empty")).unwrap();

    run_ok(
        ferry(&schema)
            .args(["cp", "-a", "--distributed", "--name", "dist1"])
            .arg(&src)
            .arg(&dst),
    );
    let status = json(&run_ok(ferry(&schema).args(["status", "dist1", "--json"])));
    assert_eq!(status["state"], "dispatched", "{status}");
    assert_eq!(status["kind"], "distributed", "{status}");

    let workers: Vec<Child> = ["node1", "node2"]
        .iter()
        .map(|host| node(&schema, host, &["--transfer", "dist1"]))
        .collect();
    for worker in workers {
        finished(worker);
    }
    assert_same_tree(&src, &dst);

    let status = json(&run_ok(ferry(&schema).args(["status", "dist1", "--json"])));
    assert_eq!(status["state"], "completed", "{status}");
    let nodes = status["nodes"].as_array().expect("per-node progress");
    let hosts: Vec<&str> = nodes.iter().map(|n| n["host"].as_str().unwrap()).collect();
    assert!(
        hosts.iter().all(|h| ["node1", "node2"].contains(h)),
        "{hosts:?}"
    );
    let files: u64 = nodes.iter().map(|n| n["files"].as_u64().unwrap()).sum();
    // Every file and symlink once: 700 + the large file + the link.
    assert_eq!(files, 702, "{status}");
    // The log replays to the same end (`status --at`), item events and all.
    let log =
        run_ok(ferry(&schema).args(["watch", "--since", "0", "--json", "--until-done", "dist1"]));
    let last = String::from_utf8_lossy(&log.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok()?["seq"].as_u64())
        .max()
        .unwrap();
    let at = json(&run_ok(ferry(&schema).args([
        "status",
        "--at",
        &last.to_string(),
        "dist1",
        "--json",
    ])));
    assert_eq!(at[0]["state"], "completed", "{at}");
    let text = String::from_utf8_lossy(&run_ok(ferry(&schema).args(["status", "dist1"])).stdout)
        .into_owned();
    assert!(
        text.contains("node node1") || text.contains("node node2"),
        "{text}"
    );
}

#[test]
fn distributed_needs_a_postgres_store() {
    let s = Scratch::new();
    write_file(&s.path("src/f"), b"x");
    let out = util::run(
        s.ferry()
            .args(["cp", "--distributed"])
            .arg(s.path("src"))
            .arg(s.path("dst")),
    );
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("needs a PostgreSQL store"), "{stderr}");
    assert!(!s.store().exists(), "no SQLite store was made");
}

/// Directory items hold up to 32 sibling directories and stop listing at a
/// budget of entries, leaving the rest to new items. A tree of many small
/// directories (some nested) beside one of 6,000 files: the item that lists
/// the large one is killed (SIGKILL) once leased, so mid-listing; the next
/// node takes it over when its lease expires and the copy ends identical,
/// every item done once by the lease it had then.
#[test]
fn a_worker_killed_mid_listing_of_grouped_directories_is_continued_by_another() {
    needs_root();
    let s = Scratch::new();
    let schema = TestSchema::new();
    let (src, dst) = (s.path("src"), s.path("dst"));
    let big = ferry_postgres::items::LISTING_ENTRIES_BUDGET + 1904;
    for i in 0..big {
        write_file(&src.join(format!("a_big/f{i:05}")), &vec![b'b'; i % 50]);
    }
    for d in 0..70 {
        for f in 0..3 {
            write_file(
                &src.join(format!("d{d:02}/f{f}")),
                format!("{d}.{f}").as_bytes(),
            );
        }
        if d % 7 == 0 {
            write_file(&src.join(format!("d{d:02}/n/deeper/f")), b"nested");
        }
    }
    std::fs::create_dir_all(src.join("d05/empty")).unwrap();
    write_file(&src.join("top"), b"top");

    let mut watcher = dispatch_and_watch(&schema, "grouped", &src, &dst);
    // A lease long enough that the transfer's, last renewed by node1 up to
    // a third of it before the kill, outlives node2's start: with none
    // alive in between, `watch --until-done` would rightly give up on it.
    let lease = ["--transfer", "grouped", "--lease", "10s"];
    let mut first = Some(node(&schema, "node1", &lease));
    let mut second = None;
    let mut root_item = None;
    let mut killed_item = None;
    let mut events = Vec::new();
    let lines = std::io::BufReader::new(watcher.stdout.take().unwrap());
    for line in std::io::BufRead::lines(lines) {
        let event: serde_json::Value = serde_json::from_str(&line.unwrap()).unwrap();
        if event.get("bookmark").is_some() {
            continue;
        }
        let c = &event["context"];
        if event["event"] == "item.leased" && c["kind"] == "dir" {
            let item = c["item"].as_u64().unwrap();
            if root_item.is_none() {
                root_item = Some(item);
            } else if killed_item.is_none() {
                // The first group of the root's subdirectories: `a_big`
                // and 31 small ones, the budget reached after `a_big`.
                let mut child = first.take().unwrap();
                child.kill().unwrap();
                child.wait().unwrap();
                killed_item = Some(item);
                second = Some(node(&schema, "node2", &lease));
            }
        }
        events.push(event);
    }
    assert!(watcher.wait().unwrap().success());
    finished(second.expect("node1 was killed"));
    assert_same_tree(&src, &dst);
    assert!(util::temps(&dst).is_empty(), "{:?}", util::temps(&dst));

    let killed_item = killed_item.unwrap();
    let mut dir_items = 0;
    for done in items_done_once_by_their_lease(&events) {
        if done.kind == "dir" {
            dir_items += 1;
        }
        if done.item == killed_item {
            assert_eq!(
                (done.attempt, done.host.as_str()),
                (2, "node2"),
                "the killed listing is done by the next lease"
            );
        }
    }
    // 93 directories in 11 items: the root; its 71 subdirectories in 3
    // groups, the first listing `a_big` only (past the budget) and leaving
    // 31 to 1 new item; the `n`s and `empty` in 3 (one per parent item),
    // the `deeper`s in 3.
    assert_eq!(dir_items, 11, "directory items");
    let committed = events
        .iter()
        .filter(|e| e["event"] == "file.committed")
        .count();
    let entries = big + 70 * 3 + 10 + 1 + (1 + 71 + 10 + 10 + 1);
    assert_eq!(committed, entries, "every entry committed exactly once");
}

/// The source tree of the Done-when test: `small` files of 0–4 KiB in
/// directories of 1,000, and `large` files of `large_bytes` (a random
/// MiB, varied per MiB, so no two MiB are alike). Returns each file's size
/// and XXH3, by path relative to `root`.
fn big_tree(
    root: &Path,
    small: usize,
    large: usize,
    large_bytes: usize,
    seed: u64,
) -> HashMap<PathBuf, (u64, u128)> {
    let mut rng = fastrand::Rng::with_seed(seed);
    let mut sums = HashMap::new();
    for i in 0..small {
        let rel = PathBuf::from(format!("s{}/f{i}", i / 1000));
        let len = rng.usize(0..4096);
        let data = util::random_bytes(&mut rng, len);
        write_file(&root.join(&rel), &data);
        sums.insert(rel, (data.len() as u64, xxh3_128(&data)));
    }
    let block = util::random_bytes(&mut rng, 1 << 20);
    for n in 0..large {
        let rel = PathBuf::from(format!("large/l{n}"));
        let mut data = Vec::with_capacity(large_bytes);
        for mib in 0..large_bytes.div_ceil(1 << 20) {
            let mut chunk = block.clone();
            chunk[..16].copy_from_slice(&((n as u64) << 32 | mib as u64).to_le_bytes().repeat(2));
            data.extend_from_slice(&chunk[..(large_bytes - data.len()).min(1 << 20)]);
        }
        write_file(&root.join(&rel), &data);
        sums.insert(rel, (data.len() as u64, xxh3_128(&data)));
    }
    sums
}

/// Polls `dst` until `stop`: every file under its final name (not a
/// temporary) must have its source's size and hash, checked once per inode.
/// Returns how many files it checked.
fn watch_final_names(
    dst: PathBuf,
    sums: Arc<HashMap<PathBuf, (u64, u128)>>,
    stop: Arc<AtomicBool>,
) -> std::thread::JoinHandle<usize> {
    std::thread::spawn(move || {
        let mut checked: HashSet<(PathBuf, u64)> = HashSet::new();
        loop {
            let last_round = stop.load(Ordering::Relaxed);
            let mut stack = vec![dst.clone()];
            while let Some(dir) = stack.pop() {
                let Ok(read) = std::fs::read_dir(&dir) else {
                    continue;
                };
                for child in read.flatten() {
                    let path = child.path();
                    let Ok(meta) = std::fs::symlink_metadata(&path) else {
                        continue;
                    };
                    if meta.is_dir() {
                        stack.push(path);
                        continue;
                    }
                    if util::is_temp(&path) || !meta.is_file() {
                        continue;
                    }
                    let rel = path.strip_prefix(&dst).unwrap().to_path_buf();
                    if !checked.insert((rel.clone(), meta.ino())) {
                        continue;
                    }
                    let (size, sum) = sums[&rel];
                    let data = std::fs::read(&path).unwrap();
                    assert_eq!(
                        data.len() as u64,
                        size,
                        "{rel:?} visible with a partial size"
                    );
                    assert_eq!(xxh3_128(&data), sum, "{rel:?} visible with wrong content");
                }
            }
            if last_round {
                return checked.len();
            }
        }
    })
}

/// The Done-when test of issue #22. Scale: `FERRY_DIST_SMALL` small files
/// (default 20,000) and 4 large files of `FERRY_DIST_LARGE_MIB` (default
/// 200); `FERRY_CRASH_SEED` replays the kill moments.
#[test]
fn four_nodes_two_killed_copy_everything_exactly_once() {
    needs_root();
    let env = |name: &str, default: usize| {
        std::env::var(name)
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(default)
    };
    let small = env("FERRY_DIST_SMALL", 20_000);
    let large_mib = env("FERRY_DIST_LARGE_MIB", 200);
    let seed = std::env::var("FERRY_CRASH_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| fastrand::u64(..));
    eprintln!("FERRY_CRASH_SEED={seed} ({small} small files, 4 x {large_mib} MiB)");
    let mut rng = fastrand::Rng::with_seed(seed);

    let s = Scratch::new();
    let schema = TestSchema::new();
    let (src, dst) = (s.path("src"), s.path("dst"));
    let sums = Arc::new(big_tree(&src, small, 4, large_mib << 20, seed));

    let mut watcher = dispatch_and_watch(&schema, "big", &src, &dst);
    let stop = Arc::new(AtomicBool::new(false));
    let final_names = watch_final_names(dst.clone(), Arc::clone(&sums), Arc::clone(&stop));

    let hosts = ["node1", "node2", "node3", "node4"];
    let mut workers: Vec<Option<Child>> = hosts
        .iter()
        .map(|h| Some(node(&schema, h, &["--transfer", "big", "--lease", "3s"])))
        .collect();
    // Kill moments: after the n-th item done, for two random nodes, both
    // in the first three quarters of the items (batches of at most 512
    // files, directory items of at most a listing budget of entries, four
    // ranges and a commit per large file, the finish).
    let ranges = (large_mib << 20).div_ceil(ferry_postgres::items::RANGE_ITEM_BYTES as usize);
    let budget = ferry_postgres::items::LISTING_ENTRIES_BUDGET;
    let items = small.div_ceil(512) + small.div_ceil(budget) + 2 + 4 * (ranges + 1) + 1;
    let first = rng.usize(1..items / 2);
    let second = rng.usize(first + 1..items * 3 / 4);
    let victim = rng.usize(0..4);
    let kills = [(first, victim), (second, (victim + rng.usize(1..4)) % 4)];
    eprintln!("kills after items done: {kills:?}");

    let mut events = Vec::new();
    let mut done = 0;
    let mut killed = Vec::new();
    let lines = std::io::BufReader::new(watcher.stdout.take().unwrap());
    for line in std::io::BufRead::lines(lines) {
        let event: serde_json::Value = serde_json::from_str(&line.unwrap()).unwrap();
        if event.get("bookmark").is_some() {
            // Caught up with the backlog: live events follow.
            continue;
        }
        if event["event"] == "item.done" {
            done += 1;
            for (at, victim) in kills {
                if done == at
                    && let Some(mut child) = workers[victim].take()
                {
                    child.kill().unwrap();
                    child.wait().unwrap();
                    killed.push(hosts[victim]);
                }
            }
        }
        events.push(event);
    }
    assert!(watcher.wait().unwrap().success());
    for worker in workers.into_iter().flatten() {
        finished(worker);
    }
    stop.store(true, Ordering::Relaxed);
    let checked = final_names
        .join()
        .expect("nothing partial under a final name");
    assert_eq!(killed.len(), 2, "two nodes killed: {killed:?}");
    assert_same_tree(&src, &dst);
    assert_eq!(checked, small + 4, "the watcher saw every file");

    // The watcher saw every event once, in order, with no gap.
    let seqs: Vec<u64> = events.iter().map(|e| e["seq"].as_u64().unwrap()).collect();
    assert_eq!(seqs[0], 1);
    assert!(seqs.windows(2).all(|w| w[1] == w[0] + 1), "gap or repeat");
    assert_eq!(events.last().unwrap()["event"], "transfer.completed");

    // Every item completed exactly once, by the lease it had then.
    let done_items = items_done_once_by_their_lease(&events);
    let retried = events
        .iter()
        .filter(|e| e["event"] == "item.leased" && e["context"]["attempt"].as_u64() > Some(1))
        .count();
    eprintln!(
        "{} items, {retried} leased again after a kill",
        done_items.len()
    );
    let committed = events
        .iter()
        .filter(|e| e["event"] == "file.committed")
        .count();
    // Each file and directory committed once: the entries, as many times.
    let entries = small + 4 + small.div_ceil(1000) + 2;
    assert_eq!(committed, entries, "every entry committed exactly once");
}

/// A PostgreSQL cluster of this test's own (never the shared one other
/// tests use), run as user postgres on a free port; stopped when dropped.
struct PrivateCluster {
    dir: tempfile::TempDir,
    port: u16,
}

impl PrivateCluster {
    fn start() -> PrivateCluster {
        let dir = tempfile::tempdir().unwrap();
        let port = {
            let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            listener.local_addr().unwrap().port()
        };
        let chown = Command::new("chown")
            .arg("postgres:postgres")
            .arg(dir.path())
            .status()
            .unwrap();
        assert!(chown.success());
        let cluster = PrivateCluster { dir, port };
        cluster.as_postgres(&format!(
            "initdb -D {}/data -A trust -U postgres >/dev/null",
            cluster.dir.path().display()
        ));
        cluster.pg_ctl("start");
        cluster
    }

    fn as_postgres(&self, script: &str) {
        let out = Command::new("setpriv")
            .args(["--reuid=postgres", "--regid=postgres", "--init-groups"])
            .args(["sh", "-c", script])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{script}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// `pg_ctl ACTION`, waiting for it to take effect.
    fn pg_ctl(&self, action: &str) {
        let dir = self.dir.path().display();
        self.as_postgres(&format!(
            "pg_ctl -D {dir}/data -w -m fast -l {dir}/log \
             -o '-p {} -k {dir} -c listen_addresses=127.0.0.1' {action} >/dev/null",
            self.port
        ));
    }

    fn url(&self, schema: &str) -> String {
        format!(
            "postgres://postgres@127.0.0.1:{}/postgres?schema={schema}",
            self.port
        )
    }
}

impl Drop for PrivateCluster {
    fn drop(&mut self) {
        let dir = self.dir.path().display();
        let _ = Command::new("setpriv")
            .args(["--reuid=postgres", "--regid=postgres", "--init-groups"])
            .args([
                "sh",
                "-c",
                &format!("pg_ctl -D {dir}/data -m immediate stop"),
            ])
            .output();
    }
}

#[test]
fn workers_pause_through_a_postgres_restart_and_complete_the_copy() {
    assert!(
        rustix::process::geteuid().is_root(),
        "this test runs its own PostgreSQL cluster as user postgres: run it as root"
    );
    let cluster = PrivateCluster::start();
    let url = cluster.url("restart");
    let s = Scratch::new();
    let (src, dst) = (s.path("src"), s.path("dst"));
    let sums = big_tree(&src, 4000, 2, 64 << 20, 5);
    let at = || ferry_at(Path::new(&url));
    run_ok(
        at().args(["cp", "-a", "--distributed", "--name", "restart"])
            .arg(&src)
            .arg(&dst),
    );
    let workers: Vec<Child> = (0..2)
        .map(|_| {
            at().args(["worker", "--transfer", "restart", "--lease", "3s"])
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    // Restart once a few items are done: the copy is under way.
    let mut watcher = at()
        .args(["watch", "--since", "0", "--json"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let lines = std::io::BufRead::lines(std::io::BufReader::new(watcher.stdout.take().unwrap()));
    let mut done = 0;
    for line in lines {
        if line.unwrap().contains("item.done") {
            done += 1;
            if done == 3 {
                break;
            }
        }
    }
    watcher.kill().unwrap();
    watcher.wait().unwrap();
    cluster.pg_ctl("restart");

    let mut waited_out = 0;
    for worker in workers {
        let stderr = finished(worker);
        waited_out += stderr.matches("trying again").count();
    }
    eprintln!("store errors waited out by the workers: {waited_out}");
    let status = json(&run_ok(at().args(["status", "restart", "--json"])));
    assert_eq!(status["state"], "completed", "{status}");
    assert_same_tree(&src, &dst);
    assert_eq!(
        util::walk(&dst)
            .iter()
            .filter(|p| sums.contains_key(*p))
            .count(),
        sums.len()
    );
}

/// `ferry wait` follows a distributed copy while any worker lives: one
/// waiting for the items of a killed one keeps the transfer's lease (it
/// takes them over once their lease runs out), so `wait` does not give
/// up in between. Once no worker is left, `wait` says so (exit 28) and
/// names the command that continues it, which, run as printed, does.
#[test]
fn wait_holds_while_any_worker_lives_and_gives_up_when_none_does() {
    needs_root();
    let s = Scratch::new();
    let schema = TestSchema::new();
    let fifo = s.path("pause");
    mkfifo(&fifo);
    // A node that holds the transfer's one batch, paused before its sync.
    let paused_node = |name: &str, host: &str| {
        let lease = ["--transfer", name, "--lease", "3s"];
        let child = node_command(&schema, host, &lease)
            .env("FERRY_FAILPOINT", "commit.sync_data=pause")
            .env("FERRY_FAILPOINT_FIFO", &fifo)
            .spawn()
            .unwrap();
        (child, paused(&fifo))
    };
    let wait = |name: &str| {
        ferry(&schema)
            .args(["wait", name])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    };
    for (name, survivor) in [("alive", true), ("dead", false)] {
        let (src, dst) = (
            s.path(&format!("{name}/src")),
            s.path(&format!("{name}/dst")),
        );
        util::random_files(&src, 20, 1, 1, |i| i * 100);
        run_ok(
            ferry(&schema)
                .args(["cp", "-a", "--distributed", "--name", name])
                .arg(&src)
                .arg(&dst),
        );
        let (mut holder, pause) = paused_node(name, "node1");
        let waiter = wait(name);
        // With nothing to lease until node1's lease runs out.
        let second =
            survivor.then(|| node(&schema, "node2", &["--transfer", name, "--lease", "3s"]));
        holder.kill().unwrap();
        holder.wait().unwrap();
        drop(pause);
        let out = waiter.wait_with_output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        if let Some(second) = second {
            assert!(out.status.success(), "{name}: {stderr}");
            finished(second);
            assert_same_tree(&src, &dst);
        } else {
            assert_eq!(out.status.code(), Some(28), "{name}: {stderr}");
            assert!(
                stderr.contains("every `ferry worker` on it is gone"),
                "{stderr}"
            );
            // The advice, run as printed, finishes the copy.
            let advice = stderr
                .split('`')
                .find(|part| part.starts_with("ferry worker --store '"))
                .unwrap_or_else(|| panic!("no worker command in: {stderr}"));
            assert!(
                advice.contains(&format!("--store '{}'", schema.url)),
                "{advice}"
            );
            let command = advice.replacen("ferry", env!("CARGO_BIN_EXE_ferry"), 1);
            run_ok(Command::new("sh").arg("-c").arg(&command));
            run_ok(ferry(&schema).args(["wait", name]));
            assert_same_tree(&src, &dst);
        }
    }
}

/// A batch item is committed in chunks while its next files are copied. A
/// worker killed (by its own fail point, a SIGKILL) inside the second
/// chunk's commit, its data durable but not yet recorded: the next node
/// takes the item over, skips the first chunk (committed), copies the rest
/// again, and the copy ends identical, every item done once by its lease.
#[test]
fn a_worker_killed_between_the_commits_of_one_batch_is_continued_by_another() {
    needs_root();
    let s = Scratch::new();
    let schema = TestSchema::new();
    let (src, dst) = (s.path("src"), s.path("dst"));
    // One directory of 300 files: one batch item, in two chunks or more.
    util::random_files(&src, 300, 1, 4, |i| (i * 53) % 5000);
    let mut watcher = dispatch_and_watch(&schema, "chunks", &src, &dst);
    // Long enough that the transfer's lease, last renewed by node1 up to a
    // third of it before its crash, outlives node2's start on a busy
    // machine: with no worker alive in between, `watch --until-done`
    // would rightly give up.
    let lease = ["--transfer", "chunks", "--lease", "6s"];
    let first = node_command(&schema, "node1", &lease)
        .env("FERRY_FAILPOINT", "commit.record_copied:2=crash")
        .output()
        .unwrap();
    assert_eq!(
        std::os::unix::process::ExitStatusExt::signal(&first.status),
        Some(libc::SIGKILL),
        "node1 crashed at its fail point: {first:?}"
    );
    let second = node(&schema, "node2", &lease);
    let mut events = Vec::new();
    let lines = std::io::BufReader::new(watcher.stdout.take().unwrap());
    for line in std::io::BufRead::lines(lines) {
        let event: serde_json::Value = serde_json::from_str(&line.unwrap()).unwrap();
        if event.get("bookmark").is_none() {
            events.push(event);
        }
    }
    assert!(watcher.wait().unwrap().success());
    finished(second);
    assert_same_tree(&src, &dst);
    assert!(util::temps(&dst).is_empty(), "{:?}", util::temps(&dst));
    let done = items_done_once_by_their_lease(&events);
    let batch = done
        .iter()
        .find(|d| d.kind == "batch")
        .expect("a batch item");
    assert_eq!((batch.attempt, batch.host.as_str()), (2, "node2"));
    // The first chunk was committed by node1 and never again.
    let committed: Vec<u64> = events
        .iter()
        .filter(|e| e["event"] == "file.committed")
        .filter_map(|e| e["subject"]["entry"].as_u64())
        .collect();
    let unique: HashSet<&u64> = committed.iter().collect();
    assert_eq!(unique.len(), committed.len(), "a file committed twice");
    assert_eq!(
        committed.len(),
        300 + 2,
        "300 files, the directory and the root"
    );
    let retaken = events
        .iter()
        .position(|e| e["event"] == "item.leased" && e["context"]["attempt"] == 2)
        .expect("the batch leased again");
    let by_node1 = events[..retaken]
        .iter()
        .filter(|e| e["event"] == "file.committed")
        .count();
    // A chunk is at least 64 files: the commit thread takes one as soon as
    // it is free, from the 64th file on.
    assert!(
        (64..300).contains(&by_node1),
        "node1 committed its first chunk: {by_node1}"
    );
}
