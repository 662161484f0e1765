//! AXL's conventions through axl.h alone (tests/c/axl_api.c): enum values,
//! return values, reference-counted init, reload from a state file left by
//! a dead process (and its type check), one id per transfer, destination
//! rules, Test/Wait before dispatch, cancel after completion, Stop,
//! AXL_MKDIR=0, a bad environment value. Every error prints one line.

mod util;

use util::{Link, compile, run};

#[test]
fn axl_conventions() {
    let dir = tempfile::Builder::new()
        .prefix("ferry-axl-api-")
        .tempdir()
        .expect("tempdir");
    let program = compile("axl_api.c", "axl", Link::Dynamic);
    // No daemon answers: AXL_XFER_DEFAULT runs on threads here.
    let no_daemon = dir.path().join("no-daemon.sock");
    let (code, stderr) = run(
        &program,
        &[dir.path().to_str().expect("utf-8")],
        &[
            ("AXL_MKDIR", "1"),
            ("FERRY_SOCKET", no_daemon.to_str().expect("utf-8")),
        ],
    );
    assert_eq!(code, 0, "{stderr}");
    for expected in [
        "is waited for already: invalid state to wait (as in AXL)",
        "is waited for already: invalid state to cancel (as in AXL)",
        "is dispatched: invalid state to free (as in AXL: AXL_Wait or AXL_Cancel it first)",
        "is dispatched: invalid state to dispatch",
        "AXL: AXL_Free: no transfer with id",
        "AXL: AXL_Create: unknown transfer type 0",
        "AXL: AXL_Create: unknown transfer type 42",
        "AXL: AXL_Test: transfer",
        "AXL: AXL_Add: cannot overwrite non-directory",
        "does-not-exist",
        "records transfer reloaded",
        "is already open as id",
        "holds no transfer named reloaded",
        "AXL_MKDIR=0",
        "AXL_COPY_METADATA=yes is not a non-negative integer",
    ] {
        assert!(
            stderr.contains(expected),
            "stderr lacks {expected:?}:\n{stderr}"
        );
    }
    // One line per error, each saying which call failed.
    for line in stderr.lines().filter(|l| !l.starts_with("axl_api")) {
        assert!(
            line.starts_with("AXL: AXL_"),
            "not an AXL error line: {line}"
        );
    }
}

/// `AXL_Config` set and read back through the caller's KVTree (a stand-in
/// with KVTree's names, exported with -rdynamic so libaxl finds it), and
/// the setting applied.
#[test]
fn axl_config_sets_and_reads_back() {
    let dir = tempfile::tempdir().expect("tempdir");
    let program = util::compile_with("axl_config.c", "axl", util::Link::Dynamic, &["-rdynamic"]);
    let (code, stderr) = util::run(&program, &[dir.path().to_str().expect("utf-8")], &[]);
    assert_eq!(code, 0, "{stderr}");
    assert!(
        stderr.contains("AXL: AXL_Config: unknown configuration key BOGUS"),
        "{stderr}"
    );
}
