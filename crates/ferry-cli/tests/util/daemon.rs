//! A `ferry serve` child for the daemon's tests: started, waited for until
//! its socket answers (bounded), killed when dropped.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use ferry_serve::api::{AddRequest, CreateRequest};
use ferry_serve::client::Client;

use super::Scratch;

/// Anything a daemon test waits for: a socket, an event, an exit.
pub const DEADLINE: Duration = Duration::from_secs(60);

pub struct Daemon {
    pub child: Child,
    pub socket: PathBuf,
    pub log: PathBuf,
}

impl Daemon {
    /// Spawns `serve` (a `ferry … serve` command line listening on
    /// `socket`), its stderr to a log in the scratch directory, and returns
    /// once the socket answers.
    pub fn spawn(s: &Scratch, mut serve: Command, socket: PathBuf) -> Daemon {
        let log = s.path(&format!("daemon-{}.log", fastrand::u32(..)));
        let mut child = serve
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(fs::File::create(&log).unwrap())
            .spawn()
            .expect("ferry serve starts");
        let deadline = Instant::now() + DEADLINE;
        let client = Client::new(&socket).unwrap();
        while !client.answers() {
            if let Some(status) = child.try_wait().unwrap() {
                panic!(
                    "ferry serve exited ({status}) before answering: {}",
                    fs::read_to_string(&log).unwrap_or_default()
                );
            }
            assert!(Instant::now() < deadline, "the daemon never answered");
            std::thread::sleep(Duration::from_millis(5));
        }
        Daemon { child, socket, log }
    }

    /// `ferry serve` on the scratch store and a socket in the scratch
    /// directory, with `env` (fail points), once its socket answers.
    pub fn serve(s: &Scratch, env: &[(&str, &Path)]) -> Daemon {
        let socket = s.path("ferry.sock");
        let mut cmd = s.ferry();
        cmd.arg("--socket")
            .arg(&socket)
            .args(["serve", "--workers", "2"]);
        for (k, v) in env {
            cmd.env(k, v);
        }
        Daemon::spawn(s, cmd, socket)
    }

    /// [`Daemon::serve`] with the `pause` fail point armed at `step`
    /// (`commit.write_data:3`) on `fifo` (see [`paused`]).
    pub fn serve_paused(s: &Scratch, step: &str, fifo: &Path) -> Daemon {
        let failpoint = format!("{step}=pause");
        Daemon::serve(
            s,
            &[
                ("FERRY_FAILPOINT", Path::new(&failpoint)),
                ("FERRY_FAILPOINT_FIFO", fifo),
            ],
        )
    }

    pub fn client(&self) -> Client {
        Client::new(&self.socket).unwrap()
    }

    /// Waits (bounded) for the daemon to exit; returns how.
    pub fn exited(&mut self) -> std::process::ExitStatus {
        let deadline = Instant::now() + DEADLINE;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(Instant::now() < deadline, "the daemon did not exit");
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    pub fn log(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A transfer of `sources` into `dest` through the daemon, as the test.
pub fn add(client: &Client, name: &str, sources: &[&Path], dest: &Path) {
    client
        .create(&CreateRequest {
            name: Some(name.into()),
            ..CreateRequest::default()
        })
        .unwrap();
    client
        .add(
            name,
            &AddRequest {
                sources: sources
                    .iter()
                    .map(|p| p.to_str().unwrap().to_owned())
                    .collect(),
                dest: dest.to_str().unwrap().to_owned(),
                ..AddRequest::default()
            },
        )
        .unwrap();
}

pub fn mkfifo(path: &Path) {
    super::run_ok(Command::new("mkfifo").arg(path));
}

/// Holds until the daemon is paused at its fail point (the open returns
/// when the daemon opened the other end); dropping it lets the daemon go.
pub fn paused(fifo: &Path) -> fs::File {
    fs::OpenOptions::new().write(true).open(fifo).unwrap()
}
