//! Distributed copies: `ferry cp --distributed` on a PostgreSQL store, moved
//! by `ferry worker`s, each in its own UTS namespace with its own host name
//! (a "node"). Needs the test server (`ferry_postgres::testing`) and root
//! (for `unshare -u`): without them a test fails, it never skips.

mod util;

use std::path::Path;
use std::process::{Child, Command, Stdio};

use ferry_postgres::testing::TestSchema;
use util::{Scratch, assert_same_tree, ferry_at, json, run_ok, write_file};

fn ferry(schema: &TestSchema) -> Command {
    ferry_at(Path::new(&schema.url))
}

/// `ferry worker` as node `host`: in a UTS namespace of its own, so that
/// the host name it records is `host`.
fn node(schema: &TestSchema, host: &str, args: &[&str]) -> Child {
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
    cmd.spawn().expect("unshare runs (root needed)")
}

fn finished(child: Child) -> String {
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "worker failed: {stderr}");
    stderr
}

#[test]
fn two_nodes_copy_a_tree_and_status_shows_each_node() {
    assert!(
        rustix::process::geteuid().is_root(),
        "this test runs workers in UTS namespaces (unshare -u): run it as root"
    );
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
