//! Eight threads of one C program run their own transfers at once: through
//! ferry.h (tests/c/threads.c), linked dynamically against libferry and
//! statically against libaxl (which carries the same ferry.h functions);
//! and through axl.h with eight AXL ids (tests/c/axl_threads.c).

mod util;

use util::{Link, compile, make_tree, run, same_tree};

fn eight_threads(program: &str, lib: &str, link: Link) {
    let dir = tempfile::Builder::new()
        .prefix("ferry-threads-")
        .tempdir()
        .expect("tempdir");
    for i in 0..8 {
        make_tree(&dir.path().join("src").join(i.to_string()), 20);
    }
    std::fs::create_dir(dir.path().join("dst")).expect("mkdir dst");
    let program = compile(program, lib, link);
    let (code, stderr) = run(&program, &[dir.path().to_str().expect("utf-8")], &[]);
    assert_eq!(code, 0, "threads failed:\n{stderr}");
    for i in 0..8 {
        let (src, dst) = (
            dir.path().join("src").join(i.to_string()),
            dir.path().join("dst").join(i.to_string()),
        );
        assert!(same_tree(&src, &dst), "thread {i}: diff -r differs");
    }
}

#[test]
fn eight_threads_libferry_dynamic() {
    eight_threads("threads.c", "ferry", Link::Dynamic);
}

#[test]
fn eight_threads_libaxl_static() {
    eight_threads("threads.c", "axl", Link::Static);
}

#[test]
fn eight_threads_eight_axl_ids() {
    eight_threads("axl_threads.c", "axl", Link::Dynamic);
}
