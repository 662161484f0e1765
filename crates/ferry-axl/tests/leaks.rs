//! No leak over 1,000 create/add/dispatch/wait/free cycles through axl.h
//! and 1,000 through ferry.h (tests/c/cycles.c): LeakSanitizer (`cc
//! -fsanitize=leak`, at native speed) must report no direct and no
//! indirect leak; and valgrind's memcheck over a few cycles must find no
//! invalid access and nothing definitely or indirectly lost (valgrind runs
//! ferry's debug build ~50x slower, hence few). Stores live in /dev/shm so
//! that the fsyncs of 2,000 transfers cost nothing. `.ci/run` installs
//! valgrind; a machine without it fails here, loudly.

mod util;

use std::path::PathBuf;
use std::process::{Command, Output};

use util::{Link, compile, compile_with};

const CYCLES: &str = "1000";
const VALGRIND_CYCLES: &str = "10";

struct Scratch {
    _dir: tempfile::TempDir,
    src: PathBuf,
    dst: PathBuf,
    state: PathBuf,
}

fn scratch() -> Scratch {
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
    Scratch {
        _dir: dir,
        src,
        dst,
        state,
    }
}

fn args<'a>(s: &'a Scratch, cycles: &'a str) -> [&'a std::ffi::OsStr; 4] {
    [
        s.state.as_os_str(),
        s.src.as_os_str(),
        s.dst.as_os_str(),
        cycles.as_ref(),
    ]
}

fn check_copied(s: &Scratch) {
    let copied = std::fs::read(s.dst.join("src")).expect("copied");
    assert_eq!(copied, std::fs::read(&s.src).expect("source"));
}

fn report(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

#[test]
fn no_leak_over_a_thousand_cycles() {
    let s = scratch();
    let program = compile_with("cycles.c", "axl", Link::Dynamic, &["-fsanitize=leak"]);
    // Pointers left in dead stack slots or registers at exit do not hide a
    // leak (valgrind's "definitely lost" counts them as lost too).
    let output = Command::new(&program)
        .args(args(&s, CYCLES))
        .env("LSAN_OPTIONS", "use_stacks=0:use_registers=0:exitcode=99")
        .output()
        .expect("run cycles");
    let report = report(&output);
    assert!(
        !report.contains("LeakSanitizer"),
        "leaks over {CYCLES} cycles:\n{report}"
    );
    assert!(
        output.status.success(),
        "cycles failed ({:?}):\n{report}",
        output.status.code()
    );
    check_copied(&s);
}

#[test]
fn valgrind_finds_no_memory_error_and_no_leak() {
    let s = scratch();
    let program = compile("cycles.c", "axl", Link::Dynamic);
    let output = Command::new("valgrind")
        .args([
            "--leak-check=full",
            "--errors-for-leak-kinds=definite,indirect",
            "--show-leak-kinds=definite,indirect",
            "--error-exitcode=99",
        ])
        .arg(&program)
        .args(args(&s, VALGRIND_CYCLES))
        .output()
        .expect("run valgrind (is it installed? .ci/run installs it)");
    let report = report(&output);
    let summary: Vec<&str> = report
        .lines()
        .filter(|l| l.contains("lost:") || l.contains("ERROR SUMMARY"))
        .collect();
    eprintln!("{}", summary.join("\n"));
    assert!(
        output.status.success(),
        "valgrind found errors or leaks (exit {:?}):\n{report}",
        output.status.code()
    );
    assert!(report.contains("ERROR SUMMARY: 0 errors"), "{report}");
    check_copied(&s);
}
