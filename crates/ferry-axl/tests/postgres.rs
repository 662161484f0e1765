//! The C libraries on the PostgreSQL store many nodes share: a
//! `postgres://` URL given to `ferry_store_open` or `ferry_finalize`
//! (ferry.h) or as AXL's state file (`AXL_Create`) opens it. Each program is killed mid-copy, and the
//! next one re-attaches its transfer by name in the shared store and
//! resumes it to an identical tree. Needs the PostgreSQL test server
//! (`ferry_postgres::testing`); fails without it.

mod util;

use std::path::{Path, PathBuf};

use ferry_postgres::testing::TestSchema;
use util::{Link, compile, files, make_tree, run, same_tree, spawn, wait_for_line};

fn s(p: &Path) -> &str {
    p.to_str().expect("utf-8 temp path")
}

/// Runs `program ARGS…` until the debug pause, then kills it (-9).
fn killed_mid_copy(program: &Path, args: &[&str], env: &[(&str, &str)]) {
    let mut child = spawn(program, args, env);
    wait_for_line(&mut child, "paused after");
    child.kill().expect("kill -9");
    child.wait().expect("reap");
}

fn no_temporaries(dst: &Path) {
    let left: Vec<PathBuf> = files(dst)
        .into_iter()
        .filter(|f| f.to_string_lossy().contains("._ferry-"))
        .collect();
    assert!(left.is_empty(), "temporaries left: {left:?}");
}

#[test]
fn ferry_store_open_takes_a_postgres_url() {
    let schema = TestSchema::new();
    let dir = tempfile::Builder::new()
        .prefix("ferry-pg-native-")
        .tempdir()
        .expect("tempdir");
    let (src, dst) = (dir.path().join("src"), dir.path().join("dst"));
    make_tree(&src, 50);
    let program = compile("native.c", "ferry", Link::Dynamic);
    killed_mid_copy(
        &program,
        &["copy", &schema.url, s(&src), s(&dst), "200000"],
        &[],
    );
    assert!(!same_tree(&src, &dst), "killed mid-copy, yet complete");
    let (code, out) = {
        let output = std::process::Command::new(&program)
            .args(["resume", &schema.url])
            .output()
            .expect("run");
        (
            output.status.code().unwrap_or(-1),
            format!(
                "{}{}",
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr)
            ),
        )
    };
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("50 of 50 files") && out.contains("reattached events 1"),
        "{out}"
    );
    assert!(same_tree(&src, &dst), "the resumed tree differs");
    no_temporaries(&dst);
    // Its history is in the shared store's log (the program freed it), not
    // in a file of that name.
    let store = schema.open();
    let seq = ferry::store::Store::last_seq(&store).expect("read the store");
    assert!(seq > 0, "no event in the PostgreSQL store");
    assert!(!Path::new(&schema.url).exists());
}

#[test]
fn ferry_finalize_takes_a_postgres_url() {
    let schema = TestSchema::new();
    let dir = tempfile::Builder::new()
        .prefix("ferry-pg-finalize-")
        .tempdir()
        .expect("tempdir");
    let (src, dst) = (dir.path().join("src"), dir.path().join("dst"));
    make_tree(&src, 50);
    let program = compile("native.c", "ferry", Link::Static);
    killed_mid_copy(
        &program,
        &["copy", &schema.url, s(&src), s(&dst), "200000"],
        &[],
    );
    assert!(
        files(&dst)
            .iter()
            .any(|f| f.to_string_lossy().contains("._ferry-")),
        "no temporary to clean"
    );
    // The dead owner's transfer in the shared store is aborted and its
    // temporaries removed (the program checks: cleaned 1).
    let (code, stderr) = run(&program, &["finalize", &schema.url], &[]);
    assert_eq!(code, 0, "{stderr}");
    no_temporaries(&dst);
}

#[test]
fn axl_state_file_may_be_a_postgres_url() {
    let schema = TestSchema::new();
    let dir = tempfile::Builder::new()
        .prefix("ferry-pg-axl-")
        .tempdir()
        .expect("tempdir");
    let (src, dst) = (dir.path().join("src"), dir.path().join("dst"));
    make_tree(&src, 50);
    let axl_cp = compile("axl_cp.c", "axl", Link::Static);
    killed_mid_copy(
        &axl_cp,
        &["-r", "-S", &schema.url, "-X", "pthread", s(&src), s(&dst)],
        &[("AXL_DEBUG_PAUSE_AFTER", "200000")],
    );
    assert!(!same_tree(&src, &dst), "killed mid-copy, yet complete");
    // The restarted program finds its transfer by name in the shared store.
    let (code, stderr) = run(&axl_cp, &["-S", &schema.url, "-U", "-X", "state_file"], &[]);
    assert_eq!(code, 0, "resume failed: {stderr}");
    assert!(same_tree(&src, &dst), "the resumed copy differs");
    no_temporaries(&dst);
    // Reloading from a store that holds no such transfer is refused,
    // naming the store without the URL's password.
    let empty = TestSchema::new();
    let with_password = empty
        .url
        .replacen("://postgres@", "://postgres:hunter2@", 1);
    assert_ne!(
        with_password, empty.url,
        "the test URL has a user: {}",
        empty.url
    );
    let (code, stderr) = run(
        &axl_cp,
        &["-S", &with_password, "-U", "-X", "state_file"],
        &[],
    );
    assert_ne!(code, 0, "{stderr}");
    assert!(
        stderr.contains("holds no transfer named axl_cp") && !stderr.contains("hunter2"),
        "{stderr}"
    );
}
