//! AXL's own axl_cp cancels from its SIGTERM handler: AXL_Cancel, AXL_Free
//! and AXL_Finalize, then exit(0), while the main thread is in AXL_Wait
//! (tests/c/axl_cp_handler.c). The program must exit 0 and leave no
//! temporaries behind.

mod util;

use std::path::Path;

use rustix::process::{Pid, Signal, kill_process};
use util::{Link, compile, files, make_tree, same_tree, spawn, wait_for_line};

fn s(p: &Path) -> &str {
    p.to_str().expect("utf-8 temp path")
}

fn cancelled_by_sigterm_in_a_handler(kind: &str) {
    let dir = tempfile::Builder::new()
        .prefix("ferry-axl-handler-")
        .tempdir()
        .expect("tempdir");
    let (src, dst) = (dir.path().join("src"), dir.path().join("dst"));
    make_tree(&src, 50);
    let program = compile("axl_cp_handler.c", "axl", Link::Dynamic);
    let mut child = spawn(
        &program,
        &[kind, s(&src), s(&dst)],
        &[
            ("AXL_DEBUG_PAUSE_AFTER", "200000"),
            ("TMPDIR", s(dir.path())),
        ],
    );
    // Paused mid-copy: the main thread is in AXL_Wait (sync: AXL_Dispatch).
    wait_for_line(&mut child, "paused after");
    kill_process(Pid::from_child(&child), Signal::TERM).expect("SIGTERM");
    let output = child.wait_with_output().expect("wait");
    assert_eq!(
        output.status.code(),
        Some(0),
        "the handler's AXL_Cancel, AXL_Free, AXL_Finalize must all succeed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(!same_tree(&src, &dst), "cancelled, yet everything arrived");
    let left: Vec<_> = files(&dst)
        .into_iter()
        .filter(|f| f.to_string_lossy().contains("._ferry-"))
        .collect();
    assert!(left.is_empty(), "temporaries left: {left:?}");
    // The private store went with the last AXL_Finalize.
    let private: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("ferry-axl-"))
        .collect();
    assert!(private.is_empty(), "private store left: {private:?}");
}

#[test]
fn sigterm_handler_cancels_frees_and_finalizes_a_pthread_transfer_in_wait() {
    cancelled_by_sigterm_in_a_handler("pthread");
}
