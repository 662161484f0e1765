//! `ferry_config_*`: a transfer's options, set one typed call at a time
//! (the C form of `ferry cp`'s flags).

use super::*;

/// A configuration with the defaults: kind threads, nothing preserved, one
/// worker per core. Free it with `ferry_config_free`.
#[unsafe(no_mangle)]
pub extern "C" fn ferry_config_new() -> *mut FerryConfig {
    Box::into_raw(Box::new(FerryConfig::default()))
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn ferry_config_free(config: *mut FerryConfig) {
    if !config.is_null() {
        // SAFETY: a handle from ferry_config_new, freed once.
        let config = unsafe { Box::from_raw(config) };
        let _ = catch("ferry_config_free", || {
            drop(config);
            Ok(())
        });
    }
}

/// `FERRY_KIND_SYNC` (dispatch copies and returns when done),
/// `FERRY_KIND_THREADS` (a pool of threads; wait for it),
/// `FERRY_KIND_DAEMON` (`ferry serve` moves it, also after this process
/// exits: the transfer lives in the daemon's store, not the one passed to
/// `ferry_transfer_create`) or `FERRY_KIND_DEFAULT` (the daemon when one
/// answers on the socket at create, else threads). The socket:
/// `ferry_config_set_socket`, else `$FERRY_SOCKET`, else `ferry serve`'s
/// default.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn ferry_config_set_kind(config: *mut FerryConfig, kind: c_int) -> c_int {
    status("ferry_config_set_kind", || {
        // SAFETY: C passes a config handle or NULL.
        let config = unsafe { handle_mut(config, "config") }?;
        config.kind = match kind {
            FERRY_KIND_SYNC => Kind::Sync,
            FERRY_KIND_THREADS | FERRY_KIND_DEFAULT => Kind::Threads,
            FERRY_KIND_DAEMON => Kind::Daemon,
            other => return Err(CError::invalid(format!("unknown kind {other}"))),
        };
        config.daemon_if_it_answers = kind == FERRY_KIND_DEFAULT;
        Ok(())
    })
}

/// The daemon's socket for `FERRY_KIND_DAEMON` and `FERRY_KIND_DEFAULT`;
/// NULL: `$FERRY_SOCKET`, else `ferry serve`'s default.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn ferry_config_set_socket(
    config: *mut FerryConfig,
    socket: *const c_char,
) -> c_int {
    status("ferry_config_set_socket", || {
        // SAFETY: C passes a config handle (or NULL) and a string (or NULL).
        let (config, socket) = unsafe {
            (
                handle_mut(config, "config")?,
                opt_path_arg(socket, "socket")?,
            )
        };
        config.socket = socket;
        Ok(())
    })
}

/// Which source metadata destinations get (as `cp -p`; all three is `-a`).
#[unsafe(no_mangle)]
pub unsafe extern "C" fn ferry_config_set_preserve(
    config: *mut FerryConfig,
    mode: bool,
    ownership: bool,
    times: bool,
) -> c_int {
    status("ferry_config_set_preserve", || {
        // SAFETY: C passes a config handle or NULL.
        let config = unsafe { handle_mut(config, "config") }?;
        config.preserve = Preserve {
            mode,
            ownership,
            times,
        };
        Ok(())
    })
}

/// Worker threads of a `threads` transfer, 1 to 256.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn ferry_config_set_workers(config: *mut FerryConfig, workers: u32) -> c_int {
    status("ferry_config_set_workers", || {
        // SAFETY: C passes a config handle or NULL.
        let config = unsafe { handle_mut(config, "config") }?;
        if workers == 0 || workers as usize > ferry::engine::WORKERS_MAX {
            return Err(CError::invalid(format!(
                "workers {workers}: give 1 to {}",
                ferry::engine::WORKERS_MAX
            )));
        }
        config.workers = workers as usize;
        Ok(())
    })
}

/// Whether dispatch removes temporaries at the destinations that no
/// transfer of this store wrote (they are only reported otherwise).
#[unsafe(no_mangle)]
pub unsafe extern "C" fn ferry_config_set_clean_orphans(
    config: *mut FerryConfig,
    clean: bool,
) -> c_int {
    status("ferry_config_set_clean_orphans", || {
        // SAFETY: C passes a config handle or NULL.
        unsafe { handle_mut(config, "config") }?.clean_orphans = clean;
        Ok(())
    })
}

/// The checksum every copied file gets, computed as its bytes are read:
/// `FERRY_CHECKSUM_XXH3` (the default), `FERRY_CHECKSUM_BLAKE3` or
/// `FERRY_CHECKSUM_NONE`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn ferry_config_set_checksum(
    config: *mut FerryConfig,
    checksum: c_int,
) -> c_int {
    status("ferry_config_set_checksum", || {
        // SAFETY: C passes a config handle or NULL.
        let config = unsafe { handle_mut(config, "config") }?;
        config.checksum = match checksum {
            FERRY_CHECKSUM_NONE => None,
            FERRY_CHECKSUM_XXH3 => Some(ChecksumAlgo::Xxh3),
            FERRY_CHECKSUM_BLAKE3 => Some(ChecksumAlgo::Blake3),
            other => return Err(CError::invalid(format!("unknown checksum {other}"))),
        };
        Ok(())
    })
}

/// Whether dispatch first checks that the destinations have room for what
/// is left to copy (`FERRY_E_NOT_ENOUGH_SPACE` otherwise) and reserves the
/// space of large files (`ferry cp --check-space`).
#[unsafe(no_mangle)]
pub unsafe extern "C" fn ferry_config_set_check_space(
    config: *mut FerryConfig,
    check: bool,
) -> c_int {
    status("ferry_config_set_check_space", || {
        // SAFETY: C passes a config handle or NULL.
        unsafe { handle_mut(config, "config") }?.check_space = check;
        Ok(())
    })
}

/// Which destinations count as already there (recorded skipped, no data
/// copied): `FERRY_SKIP_NEVER` (the default), `FERRY_SKIP_EXISTS`,
/// `FERRY_SKIP_SIZE`, `FERRY_SKIP_MTIME` (size and mtime) or
/// `FERRY_SKIP_CHECKSUM` (size and checksum) — `ferry cp --skip`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn ferry_config_set_skip(config: *mut FerryConfig, skip: c_int) -> c_int {
    status("ferry_config_set_skip", || {
        // SAFETY: C passes a config handle or NULL.
        let config = unsafe { handle_mut(config, "config") }?;
        config.skip = match skip {
            FERRY_SKIP_NEVER => SkipRule::Never,
            FERRY_SKIP_EXISTS => SkipRule::Exists,
            FERRY_SKIP_SIZE => SkipRule::Size,
            FERRY_SKIP_MTIME => SkipRule::Mtime,
            FERRY_SKIP_CHECKSUM => SkipRule::Checksum,
            other => return Err(CError::invalid(format!("unknown skip rule {other}"))),
        };
        Ok(())
    })
}

/// How much a run reads back what it wrote: `FERRY_VERIFY_NONE` (the
/// default), `FERRY_VERIFY_COPIED` (each file before its rename) or
/// `FERRY_VERIFY_FULL` (and every file at the end) — `ferry cp --verify`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn ferry_config_set_verify(config: *mut FerryConfig, verify: c_int) -> c_int {
    status("ferry_config_set_verify", || {
        // SAFETY: C passes a config handle or NULL.
        let config = unsafe { handle_mut(config, "config") }?;
        config.verify = match verify {
            FERRY_VERIFY_NONE => Verify::None,
            FERRY_VERIFY_COPIED => Verify::Copied,
            FERRY_VERIFY_FULL => Verify::Full,
            other => return Err(CError::invalid(format!("unknown verify mode {other}"))),
        };
        Ok(())
    })
}

/// For tests: once a run has copied at least `bytes` (0: never), its movers
/// stop and wait for a cancel, after saying so on stderr.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn ferry_config_set_debug_pause_after(
    config: *mut FerryConfig,
    bytes: u64,
) -> c_int {
    status("ferry_config_set_debug_pause_after", || {
        // SAFETY: C passes a config handle or NULL.
        unsafe { handle_mut(config, "config") }?.pause_after_bytes = bytes;
        Ok(())
    })
}
