//! ferry.h's own promises (tests/c/native.c): a transfer killed mid-copy
//! is re-attached by name by the next process and resumed to an identical
//! tree, with its `transfer.reattached` event in the log; or
//! `ferry_finalize` cleans up what the dead owner left.

mod util;

use std::path::Path;

use util::{Link, compile, files, make_tree, run, same_tree, spawn, wait_for_line};

fn killed_mid_copy(dir: &Path) -> (std::path::PathBuf, std::path::PathBuf, std::path::PathBuf) {
    let (src, dst, store) = (dir.join("src"), dir.join("dst"), dir.join("ferry.db"));
    make_tree(&src, 50);
    let program = compile("native.c", "ferry", Link::Dynamic);
    let args = [
        "copy",
        store.to_str().unwrap(),
        src.to_str().unwrap(),
        dst.to_str().unwrap(),
        "200000",
    ];
    let mut child = spawn(&program, &args, &[]);
    wait_for_line(&mut child, "paused after");
    child.kill().expect("kill -9");
    child.wait().expect("reap");
    assert!(!same_tree(&src, &dst));
    (src, dst, store)
}

#[test]
fn reattach_by_name_and_resume() {
    let dir = tempfile::Builder::new()
        .prefix("ferry-native-")
        .tempdir()
        .expect("tempdir");
    let (src, dst, store) = killed_mid_copy(dir.path());
    let program = compile("native.c", "ferry", Link::Dynamic);
    let output = std::process::Command::new(&program)
        .args(["resume", store.to_str().unwrap()])
        .output()
        .expect("run");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        stdout.contains("50 of 50 files") && stdout.contains("reattached events 1"),
        "{stdout}"
    );
    assert!(same_tree(&src, &dst), "the resumed tree differs");
}

#[test]
fn finalize_cleans_what_a_dead_owner_left() {
    let dir = tempfile::Builder::new()
        .prefix("ferry-native-")
        .tempdir()
        .expect("tempdir");
    let (_src, dst, store) = killed_mid_copy(dir.path());
    assert!(
        files(&dst)
            .iter()
            .any(|f| f.to_string_lossy().contains("._ferry-")),
        "no temporary to clean"
    );
    let program = compile("native.c", "ferry", Link::Static);
    let (code, stderr) = run(&program, &["finalize", store.to_str().unwrap()], &[]);
    assert_eq!(code, 0, "{stderr}");
    let left: Vec<_> = files(&dst)
        .into_iter()
        .filter(|f| f.to_string_lossy().contains("._ferry-"))
        .collect();
    assert!(left.is_empty(), "temporaries left after finalize: {left:?}");
}

#[test]
fn typed_setters_reach_the_library() {
    let dir = tempfile::Builder::new()
        .prefix("ferry-native-")
        .tempdir()
        .expect("tempdir");
    let (file, dest, store) = (
        dir.path().join("data"),
        dir.path().join("copy"),
        dir.path().join("ferry.db"),
    );
    std::fs::write(&file, vec![7u8; 100_000]).expect("write");
    let program = compile("native.c", "ferry", Link::Dynamic);
    let output = std::process::Command::new(&program)
        .args([
            "twice",
            store.to_str().unwrap(),
            file.to_str().unwrap(),
            dest.to_str().unwrap(),
        ])
        .output()
        .expect("run");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    // The second round skips the file (same size): nothing copied.
    assert!(
        stdout.contains("round 0: 100000 bytes copied")
            && stdout.contains("round 1: 0 bytes copied"),
        "{stdout}"
    );
    assert_eq!(std::fs::read(&dest).unwrap(), std::fs::read(&file).unwrap());
}
