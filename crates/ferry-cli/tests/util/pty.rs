//! `ferry` on a pseudo-terminal, as a person runs it: its own session with
//! the terminal as its controlling one (so ^C written to the master is a
//! SIGINT from the line discipline), everything it prints collected from
//! the master, and a small screen model to read what is left on screen.

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{FromRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Instant;

use super::daemon::DEADLINE;

/// The terminal's width: a fixed one, so that what is drawn is the same
/// on every machine.
pub const COLUMNS: u16 = 160;

pub struct Pty {
    pub child: Child,
    /// The terminal's width: a line that fills it wraps (as xterm does).
    columns: usize,
    master: File,
    output: Arc<(Mutex<Output>, Condvar)>,
}

#[derive(Default)]
struct Output {
    bytes: Vec<u8>,
    /// The slave side is closed (the child and its children are gone).
    closed: bool,
}

impl Pty {
    /// Spawns `cmd` with stdin, stdout and stderr on a new pseudo-terminal
    /// of `COLUMNS` x 24.
    pub fn spawn(cmd: Command) -> Pty {
        Pty::spawn_sized(cmd, COLUMNS)
    }

    /// Spawns `cmd` on a pseudo-terminal of `columns` x 24 (and no
    /// $COLUMNS: the terminal says its width).
    pub fn spawn_sized(mut cmd: Command, columns: u16) -> Pty {
        cmd.env_remove("COLUMNS");
        let (mut master, mut slave) = (-1, -1);
        let size = libc::winsize {
            ws_row: 24,
            ws_col: columns,
            ws_xpixel: 0,
            ws_ypixel: 0,
        };
        // SAFETY: openpty(3) writes two descriptors into the locals; the
        // name and termios pointers may be null.
        let rc = unsafe {
            libc::openpty(
                &mut master,
                &mut slave,
                std::ptr::null_mut(),
                std::ptr::null(),
                &size,
            )
        };
        assert_eq!(rc, 0, "openpty: {}", std::io::Error::last_os_error());
        // SAFETY: both descriptors were just opened by openpty and are
        // owned by nothing else.
        let (master, slave) =
            unsafe { (OwnedFd::from_raw_fd(master), OwnedFd::from_raw_fd(slave)) };
        cmd.stdin(Stdio::from(slave.try_clone().unwrap()))
            .stdout(Stdio::from(slave.try_clone().unwrap()))
            .stderr(Stdio::from(slave));
        // SAFETY: setsid(2) and ioctl(2) are async-signal-safe; the child
        // makes itself a session leader and takes its stdin (the slave) as
        // its controlling terminal, whose foreground group it then is.
        unsafe {
            cmd.pre_exec(|| {
                if libc::setsid() == -1 || libc::ioctl(0, libc::TIOCSCTTY, 0) == -1 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = cmd.spawn().expect("ferry starts on the pty");
        // The parent's copies of the slave go with the command.
        drop(cmd);
        let master = File::from(master);
        let output = Arc::new((Mutex::new(Output::default()), Condvar::new()));
        let mut reader = master.try_clone().unwrap();
        let shared = Arc::clone(&output);
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            loop {
                // EIO once the slave is closed by its last holder.
                let n = reader.read(&mut buf).unwrap_or(0);
                let (lock, cv) = &*shared;
                let mut out = lock.lock().unwrap();
                if n == 0 {
                    out.closed = true;
                    cv.notify_all();
                    return;
                }
                out.bytes.extend_from_slice(&buf[..n]);
                cv.notify_all();
            }
        });
        Pty {
            child,
            columns: usize::from(columns),
            master,
            output,
        }
    }

    /// Everything printed so far, as bytes.
    pub fn bytes(&self) -> Vec<u8> {
        self.output.0.lock().unwrap().bytes.clone()
    }

    /// Waits (bounded) until what was printed satisfies `done`.
    pub fn wait_for(&self, what: &str, done: impl Fn(&str) -> bool) {
        let deadline = Instant::now() + DEADLINE;
        let (lock, cv) = &*self.output;
        let mut out = lock.lock().unwrap();
        loop {
            if done(&String::from_utf8_lossy(&out.bytes)) {
                return;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            assert!(
                !left.is_zero() && !out.closed,
                "never saw {what} on the terminal: {:?}",
                String::from_utf8_lossy(&out.bytes)
            );
            out = cv.wait_timeout(out, left).unwrap().0;
        }
    }

    /// Types `bytes` at the terminal (`b"\x03"`: Ctrl-C).
    pub fn type_in(&mut self, bytes: &[u8]) {
        self.master.write_all(bytes).unwrap();
    }

    /// Waits (bounded) for the child's exit and for the terminal to have
    /// everything it printed; returns its exit code and the screen.
    pub fn finish(mut self) -> (Option<i32>, Vec<String>) {
        let deadline = Instant::now() + DEADLINE;
        let status = loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                break status;
            }
            assert!(Instant::now() < deadline, "ferry did not exit");
            std::thread::sleep(std::time::Duration::from_millis(5));
        };
        let (lock, cv) = &*self.output;
        let mut out = lock.lock().unwrap();
        while !out.closed {
            let left = deadline.saturating_duration_since(Instant::now());
            assert!(!left.is_zero(), "the terminal was never closed");
            out = cv.wait_timeout(out, left).unwrap().0;
        }
        (status.code(), screen(&out.bytes, self.columns))
    }
}

/// What a terminal `columns` wide shows after `bytes`: text, `\r`, `\n`,
/// the escapes a progress bar draws with (erase line, erase to its end,
/// cursor up and down), and xterm's wrap (a character after a full line
/// goes to the next); others (colours, cursor visibility) are dropped.
/// Lines are trimmed at their end; trailing empty lines are dropped.
pub fn screen(bytes: &[u8], columns: usize) -> Vec<String> {
    let text = String::from_utf8_lossy(bytes);
    let mut lines: Vec<Vec<char>> = vec![Vec::new()];
    let (mut row, mut col) = (0usize, 0usize);
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\r' => col = 0,
            '\n' => {
                row += 1;
                col = 0;
                if lines.len() <= row {
                    lines.push(Vec::new());
                }
            }
            '\x1b' => {
                if chars.peek() != Some(&'[') {
                    continue;
                }
                chars.next();
                let mut params = String::new();
                let mut end = ' ';
                for p in chars.by_ref() {
                    if p.is_ascii_alphabetic() {
                        end = p;
                        break;
                    }
                    params.push(p);
                }
                let n: usize = params.trim_start_matches('?').parse().unwrap_or(0);
                // A cursor at the end of a full line stays on it.
                col = col.min(columns.saturating_sub(1));
                match end {
                    'K' if n == 2 => lines[row].clear(),
                    'K' => lines[row].truncate(col),
                    'A' => row = row.saturating_sub(n.max(1)),
                    'B' => {
                        row += n.max(1);
                        while lines.len() <= row {
                            lines.push(Vec::new());
                        }
                    }
                    'G' => col = n.saturating_sub(1),
                    _ => {}
                }
            }
            c if c.is_control() => {}
            c => {
                if col >= columns {
                    row += 1;
                    col = 0;
                    if lines.len() <= row {
                        lines.push(Vec::new());
                    }
                }
                let line = &mut lines[row];
                if line.len() <= col {
                    line.resize(col, ' ');
                    line.push(c);
                } else {
                    line[col] = c;
                }
                col += 1;
            }
        }
    }
    let mut out: Vec<String> = lines
        .into_iter()
        .map(|l| l.into_iter().collect::<String>().trim_end().to_owned())
        .collect();
    while out.last().is_some_and(String::is_empty) {
        out.pop();
    }
    out
}
