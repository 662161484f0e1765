//! SIGINT and SIGTERM during `cp` and `resume`: the transfer is cancelled
//! (recorded, with the signal's name), its mover stops at its next chunk
//! after committing what is durable, and the command says how to continue
//! and exits 128 + the signal's number, as shells expect.
//!
//! The handler only writes the signal's number to a pipe; a thread reading
//! that pipe does the rest, outside the handler.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicI32, Ordering};

use ferry::Canceller;

/// The signal that interrupted this process (0: none).
static RECEIVED: AtomicI32 = AtomicI32::new(0);

/// The handler's end of the pipe (a socket pair); set once, before any
/// handler runs.
static WRITER: OnceLock<UnixStream> = OnceLock::new();

fn name(signal: i32) -> &'static str {
    match signal {
        libc::SIGINT => "SIGINT",
        libc::SIGTERM => "SIGTERM",
        _ => "a signal",
    }
}

/// From now on SIGINT and SIGTERM cancel the transfer `canceller` names
/// instead of killing the process. Call once, before its dispatch.
pub fn cancel_on_interrupt(canceller: Canceller) -> std::io::Result<()> {
    let (mut reader, writer) = UnixStream::pair()?;
    if WRITER.set(writer).is_err() {
        return Ok(());
    }
    for signal in [libc::SIGINT, libc::SIGTERM] {
        // SAFETY: the action only stores to an atomic and writes one byte
        // to a socket (write(2)), both async-signal-safe; it allocates and
        // locks nothing.
        unsafe {
            signal_hook_registry::register(signal, move || {
                RECEIVED.store(signal, Ordering::SeqCst);
                if let Some(mut w) = WRITER.get() {
                    let _ = w.write(&[signal as u8]);
                }
            })
        }?;
    }
    std::thread::spawn(move || {
        let mut byte = [0u8; 1];
        if reader.read_exact(&mut byte).is_ok() {
            // Already over (the cancel is then refused): nothing to stop.
            let _ = canceller.interrupt(name(i32::from(byte[0])));
        }
    });
    Ok(())
}

/// The signal that interrupted this process, if one did.
pub fn received() -> Option<i32> {
    match RECEIVED.load(Ordering::SeqCst) {
        0 => None,
        signal => Some(signal),
    }
}

/// What a `cp` or `resume` that a signal stopped ends with.
pub fn report_interrupted(name_of_transfer: &str, signal: i32) -> u8 {
    eprintln!(
        "ferry: interrupted by {}: what is durable is kept; `ferry resume {name_of_transfer}` \
         continues it",
        name(signal)
    );
    128u8.saturating_add(signal as u8)
}
