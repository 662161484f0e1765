//! No leak over 1,000 create/add/dispatch/wait/free cycles through axl.h
//! and 1,000 through ferry.h (tests/c/cycles.c), under valgrind: definitely
//! and indirectly lost must be 0. The store lives in /dev/shm so that the
//! fsyncs of 2,000 transfers cost nothing; this takes about a minute.
//! `.ci/run` installs valgrind; a machine without it fails here, loudly.

mod util;

use std::process::Command;

use util::{Link, compile};

const CYCLES: &str = "1000";

#[test]
fn no_leak_over_a_thousand_cycles() {
    let dir = tempfile::Builder::new()
        .prefix("ferry-leaks-")
        .tempdir_in("/dev/shm")
        .expect("tempdir in /dev/shm");
    let (src, dst, state) = (
        dir.path().join("src"),
        dir.path().join("dst"),
        dir.path().join("state.db"),
    );
    std::fs::write(&src, b"one small file, copied 2,000 times\n").expect("write source");
    std::fs::create_dir(&dst).expect("mkdir dst");
    let program = compile("cycles.c", "axl", Link::Dynamic);
    let output = Command::new("valgrind")
        .args([
            "--leak-check=full",
            "--errors-for-leak-kinds=definite,indirect",
            "--show-leak-kinds=definite,indirect",
            "--error-exitcode=99",
        ])
        .arg(&program)
        .args([&state, &src, &dst])
        .arg(CYCLES)
        .output()
        .expect("run valgrind (is it installed? .ci/run installs it)");
    let report = String::from_utf8_lossy(&output.stderr);
    let summary: Vec<&str> = report
        .lines()
        .filter(|l| l.contains("lost:") || l.contains("ERROR SUMMARY"))
        .collect();
    eprintln!("{}", summary.join("\n"));
    assert!(
        output.status.success(),
        "valgrind found leaks or errors (exit {:?}):\n{report}",
        output.status.code()
    );
    for kind in ["definitely lost: 0 bytes", "indirectly lost: 0 bytes"] {
        assert!(
            report.contains(kind) || !report.contains("LEAK SUMMARY"),
            "{kind} expected:\n{report}"
        );
    }
    assert_eq!(
        std::fs::read(dst.join("src")).expect("copied"),
        std::fs::read(&src).expect("source")
    );
}
