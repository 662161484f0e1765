//! AXL's MPI interface: `scripts/install-clib` builds `libaxl_mpi` and
//! `axl_mpi.pc` with mpicc; a program of 4 ranks written only against
//! `axl_mpi.h` (tests/c/axl_mpi.c), built with `mpicc $(pkg-config
//! --cflags --libs axl_mpi)`, calls every `_comm` function under
//! `mpirun -np 4`: files copied, every rank returns the same code, and one
//! rank failing a call makes it fail on all. `.ci/run` installs Open MPI; a
//! machine without `mpicc`/`mpirun` fails here, loudly.

mod util;

use std::path::Path;
use std::process::Command;

use util::{cc_with_pkg_config, install_clib};

#[test]
fn four_ranks_use_every_comm_call_and_agree() {
    let dir = tempfile::Builder::new()
        .prefix("ferry-axl-mpi-")
        .tempdir()
        .expect("tempdir");
    let prefix = install_clib(dir.path());
    for file in [
        "include/axl_mpi.h",
        "lib/libaxl_mpi.so",
        "lib/libaxl_mpi.a",
        "lib/pkgconfig/axl_mpi.pc",
    ] {
        assert!(
            prefix.join(file).exists(),
            "{file} not installed (is mpicc installed? .ci/run installs Open MPI)"
        );
    }
    let program = dir.path().join("axl_mpi");
    cc_with_pkg_config(
        "mpicc",
        &prefix,
        &Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/c/axl_mpi.c"),
        "axl_mpi",
        &program,
    );
    let work = dir.path().join("work");
    std::fs::create_dir(&work).expect("mkdir");
    let output = Command::new("mpirun")
        .args(["-np", "4", "--oversubscribe", "--allow-run-as-root"])
        .arg(&program)
        .arg(&work)
        .output()
        .expect("run mpirun (.ci/run installs Open MPI)");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "mpirun failed ({}):\n{stdout}\n{stderr}",
        output.status
    );
    assert!(
        stdout.contains("every check held on 4 ranks"),
        "{stdout}\n{stderr}"
    );
    // What each failure said, once per failing rank.
    for expected in [
        "AXL: AXL_Create: unknown transfer type 0",
        "no-such-file-2",
        "AXL: AXL_Stop:",
    ] {
        assert!(
            stderr.contains(expected),
            "stderr lacks {expected:?}:\n{stderr}"
        );
    }
    // Each rank's files, copied.
    for rank in 0..4 {
        for name in ["a", "b"] {
            let (src, dst) = (
                work.join(format!("{name}-{rank}")),
                work.join(format!("out/{name}-{rank}")),
            );
            assert_eq!(std::fs::read(&src).unwrap(), std::fs::read(&dst).unwrap());
        }
    }
}
