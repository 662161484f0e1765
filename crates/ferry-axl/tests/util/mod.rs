//! Shared by the C tests: build libferry and libaxl, compile C programs
//! against them with `cc`, make source trees and compare them.

#![allow(dead_code)] // Each test binary uses part of this.

use std::fs::{self, File, FileTimes};
use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, SystemTime};

/// What the Rust standard library needs when a Rust staticlib is linked
/// into a C program (`rustc --print native-static-libs`).
pub const STATIC_LIBS: &[&str] = &[
    "-lgcc_s",
    "-lutil",
    "-lrt",
    "-lpthread",
    "-lm",
    "-ldl",
    "-lc",
];

/// How a C program gets the library.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Link {
    /// `-laxl` → libaxl.so, found at run time through an rpath.
    Dynamic,
    /// libaxl.a linked in: the program needs no ferry library at run time.
    Static,
}

impl Link {
    pub fn as_str(self) -> &'static str {
        match self {
            Link::Dynamic => "dynamic",
            Link::Static => "static",
        }
    }
}

/// The directory that holds libferry.{so,a} and libaxl.{so,a}.
///
/// `cargo test` builds this crate's library only as the tests need it, not
/// necessarily as the cdylib and staticlib a C program links; so the first
/// test that needs them runs `cargo build -p libferry -p ferry-axl` (the
/// cargo that runs the tests, same profile, same target directory: cargo
/// holds no lock on it while tests run, and an up-to-date build is a no-op).
/// The libraries land next to the test binary's `deps/` directory.
pub fn lib_dir() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let exe = std::env::current_exe().expect("current_exe");
        // target/<profile>/deps/<test>-<hash>
        let profile_dir = exe
            .parent()
            .and_then(Path::parent)
            .expect("profile dir")
            .to_path_buf();
        cargo_build(&profile_dir, &["-p", "libferry", "-p", "ferry-axl"]);
        for lib in ["libferry.so", "libferry.a", "libaxl.so", "libaxl.a"] {
            assert!(
                profile_dir.join(lib).exists(),
                "{lib} not built in {}",
                profile_dir.display()
            );
        }
        profile_dir
    })
}

/// `cargo build --locked ARGS` in the profile of `profile_dir` (the one
/// that runs the tests), into the same target directory.
fn cargo_build(profile_dir: &Path, args: &[&str]) {
    let mut cargo = Command::new(env!("CARGO"));
    cargo
        .args(["build", "--locked"])
        .args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"));
    if profile_dir.file_name().is_some_and(|n| n == "release") {
        cargo.arg("--release");
    }
    let status = cargo.status().expect("run cargo build");
    assert!(status.success(), "cargo build {args:?} failed");
}

fn include_dirs() -> [PathBuf; 2] {
    let crates = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("crates/");
    [
        crates.join("ferry-axl/include"),
        crates.join("ferry-capi/include"),
    ]
}

/// Compiles `source` (in tests/c/) with `cc` against `lib` (`axl` or
/// `ferry`), once per test binary and link kind; returns the program.
pub fn compile(source: &str, lib: &str, link: Link) -> PathBuf {
    compile_with(source, lib, link, &[])
}

/// As [`compile`], with extra `cc` flags (a sanitizer, say).
pub fn compile_with(source: &str, lib: &str, link: Link, flags: &[&str]) -> PathBuf {
    type Built = Vec<(String, Link, Vec<String>, PathBuf)>;
    static BUILT: Mutex<Built> = Mutex::new(Vec::new());
    let mut built = BUILT.lock().unwrap_or_else(|p| p.into_inner());
    if let Some((.., exe)) = built
        .iter()
        .find(|(s, l, f, _)| s == source && *l == link && f.iter().eq(flags.iter()))
    {
        return exe.clone();
    }
    let exe = compile_now(source, lib, link, flags, built.len());
    let flags = flags.iter().map(|f| f.to_string()).collect();
    built.push((source.to_owned(), link, flags, exe.clone()));
    exe
}

fn compile_now(source: &str, lib: &str, link: Link, flags: &[&str], n: usize) -> PathBuf {
    let libs = lib_dir();
    let out_dir = libs.join("c-tests");
    fs::create_dir_all(&out_dir).expect("c-tests dir");
    let stem = source.trim_end_matches(".c");
    let exe = out_dir.join(format!(
        "{stem}-{}-{}-{n}",
        link.as_str(),
        std::process::id()
    ));
    let src = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/c")
        .join(source);
    let mut cc = Command::new("cc");
    cc.args([
        "-std=c11",
        "-D_GNU_SOURCE",
        "-Wall",
        "-Wextra",
        "-Werror",
        "-g",
    ])
    .args(flags)
    .arg("-o")
    .arg(&exe)
    .arg(&src);
    for dir in include_dirs() {
        cc.arg("-I").arg(dir);
    }
    match link {
        Link::Dynamic => {
            cc.arg("-L")
                .arg(libs)
                .arg(format!("-l{lib}"))
                .arg(format!("-Wl,-rpath,{}", libs.display()));
        }
        Link::Static => {
            cc.arg(libs.join(format!("lib{lib}.a")));
        }
    }
    cc.arg("-lpthread");
    if link == Link::Static {
        cc.args(STATIC_LIBS);
    }
    let output = cc.output().expect("run cc");
    assert!(
        output.status.success(),
        "cc {source} ({}) failed:\n{}",
        link.as_str(),
        String::from_utf8_lossy(&output.stderr)
    );
    if link == Link::Static {
        // Proof that it is static: it needs no ferry library to run.
        let needed = Command::new("ldd").arg(&exe).output().expect("ldd");
        let needed = String::from_utf8_lossy(&needed.stdout);
        assert!(
            !needed.contains(&format!("lib{lib}.so")),
            "{source} links lib{lib}.so:\n{needed}"
        );
    }
    exe
}

/// A tree of `files` files of 1 KiB × i in nested directories, modes
/// varied, every time set in the past (so that a copy without metadata
/// differs from its source).
pub fn make_tree(root: &Path, files: usize) {
    let past = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000_000);
    let mut dirs = vec![root.to_path_buf()];
    for i in 1..=files {
        let dir = root.join(format!("d{}", i % 3)).join(format!("e{}", i % 4));
        fs::create_dir_all(&dir).expect("mkdir");
        let path = dir.join(format!("file{i}"));
        let data: Vec<u8> = (0..1024 * i).map(|b| (b * 31 + i * 7) as u8).collect();
        fs::write(&path, &data).expect("write source");
        let mode = [0o644, 0o600, 0o755, 0o640][i % 4];
        fs::set_permissions(&path, fs::Permissions::from_mode(mode)).expect("chmod");
        let time = past + Duration::from_secs(i as u64 * 3600);
        File::options()
            .write(true)
            .open(&path)
            .and_then(|f| f.set_times(FileTimes::new().set_accessed(time).set_modified(time)))
            .expect("set times");
        dirs.push(dir.clone());
        dirs.push(dir.parent().expect("parent").to_path_buf());
    }
    // Directories last, deepest first, as their contents changed their times.
    dirs.sort_by_key(|d| std::cmp::Reverse(d.components().count()));
    dirs.dedup();
    for dir in dirs {
        File::open(&dir)
            .and_then(|f| f.set_times(FileTimes::new().set_accessed(past).set_modified(past)))
            .expect("set dir times");
    }
}

/// `diff -r a b` succeeds.
pub fn same_tree(a: &Path, b: &Path) -> bool {
    Command::new("diff")
        .arg("-r")
        .arg(a)
        .arg(b)
        .output()
        .expect("run diff")
        .status
        .success()
}

/// `ls -lR` of a tree (mode, links, owner, size, mtime to the ns, name),
/// without the "total" lines, listed from inside so the two compare.
pub fn ls_l(dir: &Path) -> String {
    let output = Command::new("ls")
        .args(["-lR", "--time-style=full-iso", "."])
        .current_dir(dir)
        .output()
        .expect("run ls");
    assert!(output.status.success());
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter(|l| !l.starts_with("total "))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Regular files under `dir`, relative.
pub fn files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in fs::read_dir(&d).expect("read_dir") {
            let path = entry.expect("entry").path();
            if path.is_dir() {
                stack.push(path);
            } else {
                out.push(path.strip_prefix(dir).expect("prefix").to_path_buf());
            }
        }
    }
    out.sort();
    out
}

/// Starts `program` with `args` and `env`, stderr piped.
pub fn spawn(program: &Path, args: &[&str], env: &[(&str, &str)]) -> Child {
    let mut cmd = Command::new(program);
    cmd.args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.spawn().expect("spawn")
}

/// Reads the child's stderr until a line containing `marker` (the debug
/// pause says "paused after"); returns what was read. The line is written
/// by the mover when it has paused, so this waits on the event itself. A
/// child that exits first (stderr closes) fails the test.
pub fn wait_for_line(child: &mut Child, marker: &str) -> String {
    let stderr = child.stderr.take().expect("stderr piped");
    let mut reader = BufReader::new(stderr);
    let mut seen = String::new();
    loop {
        let mut line = String::new();
        let n = reader.read_line(&mut line).expect("read stderr");
        assert!(
            n > 0,
            "the program ended before printing {marker:?}; stderr:\n{seen}"
        );
        seen.push_str(&line);
        if line.contains(marker) {
            // Keep draining in the background so the child never blocks on a full pipe.
            std::thread::spawn(move || std::io::copy(&mut reader, &mut std::io::sink()));
            return seen;
        }
    }
}

/// Runs to the end; (exit code, stderr).
pub fn run(program: &Path, args: &[&str], env: &[(&str, &str)]) -> (i32, String) {
    let output = spawn(program, args, env).wait_with_output().expect("wait");
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    std::io::stderr().write_all(stderr.as_bytes()).ok();
    (output.status.code().unwrap_or(-1), stderr)
}

/// Runs the documented install step, `scripts/install-clib --prefix
/// DIR/prefix` (`--debug` for a debug build), after building the
/// libraries so that the script's own build is a no-op; returns the prefix.
pub fn install_clib(dir: &Path) -> PathBuf {
    let profile = if lib_dir().ends_with("release") {
        [].as_slice()
    } else {
        ["--debug"].as_slice()
    };
    let prefix = dir.join("prefix");
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts/install-clib");
    let status = Command::new(&script)
        .args(profile)
        .arg("--prefix")
        .arg(&prefix)
        .status()
        .expect("run install-clib");
    assert!(status.success(), "scripts/install-clib failed");
    prefix
}

/// Builds `source` with `compiler` (`cc`, `mpicc`) and nothing but
/// `pkg-config --cflags --libs PACKAGE…` of the installed `prefix`, as a
/// user would.
pub fn cc_with_pkg_config(compiler: &str, prefix: &Path, source: &Path, package: &str, exe: &Path) {
    let flags = Command::new("pkg-config")
        .args(["--cflags", "--libs"])
        .args(package.split_whitespace())
        .env("PKG_CONFIG_PATH", prefix.join("lib/pkgconfig"))
        .output()
        .expect("run pkg-config (.ci/run installs it)");
    assert!(
        flags.status.success(),
        "pkg-config {package}: {}",
        String::from_utf8_lossy(&flags.stderr)
    );
    let flags = String::from_utf8(flags.stdout).expect("utf-8");
    let output = Command::new(compiler)
        .args([
            "-std=c11",
            "-D_GNU_SOURCE",
            "-Wall",
            "-Wextra",
            "-Werror",
            "-o",
        ])
        .arg(exe)
        .arg(source)
        .args(flags.split_whitespace())
        .arg(format!("-Wl,-rpath,{}", prefix.join("lib").display()))
        .arg("-lpthread")
        .output()
        .unwrap_or_else(|e| panic!("run {compiler}: {e} (.ci/run installs it)"));
    assert!(
        output.status.success(),
        "{compiler} {}: {}",
        source.display(),
        String::from_utf8_lossy(&output.stderr)
    );
}

/// The `ferry` binary of this build (for `ferry serve` and `ferry --daemon
/// wait`), built as [`lib_dir`] builds the libraries.
pub fn ferry_binary() -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        let profile_dir = lib_dir();
        cargo_build(profile_dir, &["-p", "ferry-cli", "--bin", "ferry"]);
        let bin = profile_dir.join("ferry");
        assert!(bin.exists(), "ferry not built in {}", profile_dir.display());
        bin
    })
    .clone()
}
