//! The documented install step (`scripts/install-clib --prefix DIR`) puts
//! headers, libraries and pkg-config files where `cc` finds them: the
//! C example of docs/c-libraries.md and axl_cp.c build with nothing but
//! `pkg-config --cflags --libs ferry|axl`, and run.

mod util;

use std::path::Path;

use util::{cc_with_pkg_config, install_clib, make_tree, run, same_tree};

const MARKER: &str = "<!-- C example: built and run by crates/ferry-axl/tests/install.rs -->";

/// The C block that follows the marker in docs/c-libraries.md.
fn docs_example() -> String {
    let doc = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/c-libraries.md");
    let text = std::fs::read_to_string(doc).expect("docs/c-libraries.md");
    let after = text
        .split_once(MARKER)
        .expect("docs/c-libraries.md has the C example marker")
        .1;
    let code = after
        .split_once("```c\n")
        .expect("a ```c block after the marker")
        .1;
    code.split_once("\n```").expect("closed block").0.to_owned()
}

#[test]
fn install_then_build_with_pkg_config() {
    let dir = tempfile::Builder::new()
        .prefix("ferry-install-")
        .tempdir()
        .expect("tempdir");
    let prefix = install_clib(dir.path());
    for file in [
        "include/ferry.h",
        "include/axl.h",
        "lib/libferry.so",
        "lib/libferry.a",
        "lib/libaxl.so",
        "lib/libaxl.a",
        "lib/pkgconfig/ferry.pc",
        "lib/pkgconfig/axl.pc",
    ] {
        assert!(prefix.join(file).exists(), "{file} not installed");
    }

    // The documented example, as a user would build it.
    let example = dir.path().join("copy.c");
    std::fs::write(&example, docs_example()).expect("write example");
    let copy = dir.path().join("copy");
    cc_with_pkg_config("cc", &prefix, &example, "ferry", &copy);
    let (src, dst, store) = (
        dir.path().join("src"),
        dir.path().join("dst"),
        dir.path().join("ferry.db"),
    );
    make_tree(&src, 10);
    let (code, stderr) = run(
        &copy,
        &[
            store.to_str().unwrap(),
            src.to_str().unwrap(),
            dst.to_str().unwrap(),
        ],
        &[],
    );
    assert_eq!(code, 0, "the docs/c-libraries.md example failed: {stderr}");
    assert!(same_tree(&src, &dst));

    // A program written for AXL builds unchanged against the installed libaxl.
    let axl_cp = dir.path().join("axl_cp");
    cc_with_pkg_config(
        "cc",
        &prefix,
        &Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/c/axl_cp.c"),
        "axl",
        &axl_cp,
    );
    let dst2 = dir.path().join("dst2");
    let (code, stderr) = run(
        &axl_cp,
        &[
            "-r",
            "-X",
            "pthread",
            src.to_str().unwrap(),
            dst2.to_str().unwrap(),
        ],
        &[],
    );
    assert_eq!(code, 0, "{stderr}");
    assert!(same_tree(&src, &dst2));

    // Both libraries in one program: AXL_* and ferry_* calls side by side.
    let cycles = dir.path().join("cycles");
    cc_with_pkg_config(
        "cc",
        &prefix,
        &Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/c/cycles.c"),
        "ferry axl",
        &cycles,
    );
    let one = src.join("d1/e1/file1");
    let dst3 = dir.path().join("dst3");
    std::fs::create_dir(&dst3).expect("mkdir");
    let state = dir.path().join("cycles.db");
    let (code, stderr) = run(
        &cycles,
        &[
            state.to_str().unwrap(),
            one.to_str().unwrap(),
            dst3.to_str().unwrap(),
            "4",
        ],
        &[],
    );
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(
        std::fs::read(dst3.join("file1")).unwrap(),
        std::fs::read(&one).unwrap()
    );
}
