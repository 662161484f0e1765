//! `ferry_finalize`: the post-stage over many stores, from C.

use super::*;

/// Post-stage finalize of `count` stores or directories holding stores
/// (searched recursively), or `postgres://` URLs (every transfer of that
/// shared store): see `ferry finalize`. `flags`: `FERRY_FINALIZE_RESUME`
/// (continue dead owners' transfers instead of aborting them),
/// `FERRY_FINALIZE_FORCE` (treat owners on other hosts as dead),
/// `FERRY_FINALIZE_VERIFY` (read each file back against its stored checksum
/// before the rename). `jobs` 0:
/// one per core. `FERRY_OK`, `FERRY_E_TRANSFER_FAILED` when anything failed,
/// `FERRY_E_LEFT_ALONE` when live transfers were left alone. `summary` may be NULL.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn ferry_finalize(
    paths: *const *const c_char,
    count: usize,
    flags: u32,
    jobs: u32,
    summary: *mut FerryFinalizeSummary,
) -> c_int {
    status("ferry_finalize", || {
        if paths.is_null() || count == 0 {
            return Err(CError::invalid("no paths to finalize"));
        }
        let mut roots = Vec::with_capacity(count);
        for i in 0..count {
            // SAFETY: C passes `count` string pointers.
            roots.push(unsafe { path_arg(*paths.add(i), "path") }?);
        }
        let (urls, roots): (Vec<PathBuf>, Vec<PathBuf>) =
            roots.into_iter().partition(|r| postgres_url(r).is_some());
        let stores = ferry::finalize::find_stores(&roots)?;
        let options = FinalizeOptions {
            dead: if flags & FERRY_FINALIZE_RESUME != 0 {
                DeadPolicy::Resume
            } else {
                DeadPolicy::Abort
            },
            force: flags & FERRY_FINALIZE_FORCE != 0,
            verify: flags & FERRY_FINALIZE_VERIFY != 0,
            jobs: if jobs == 0 {
                ferry::default_workers()
            } else {
                jobs as usize
            },
        };
        let mut counts = FerryFinalizeSummary::default();
        let mut failures = Vec::new();
        let mut outcomes = ferry::finalize::finalize(&stores, options);
        for url in urls.iter().filter_map(|u| postgres_url(u)) {
            outcomes.extend(ferry::finalize::finalize_shared(
                open_postgres(url)?,
                &[],
                options,
            )?);
        }
        for outcome in outcomes {
            match outcome.outcome {
                Outcome::Finalized => counts.finalized += 1,
                Outcome::Resumed => counts.resumed += 1,
                Outcome::Cleaned => counts.cleaned += 1,
                Outcome::AlreadyFinalized => counts.already_finalized += 1,
                Outcome::LeftLive | Outcome::LeftUnknown => counts.left_alone += 1,
                Outcome::Failed => {
                    counts.failed += 1;
                    failures.push(format!(
                        "{} {}: {}",
                        outcome.store.display(),
                        outcome.transfer,
                        outcome.detail.unwrap_or_default()
                    ));
                }
            }
        }
        let (failed, left) = (counts.failed, counts.left_alone);
        if !summary.is_null() {
            // SAFETY: C passes a writable pointer (checked for NULL).
            unsafe { put(summary, counts, "summary") }?;
        }
        if failed > 0 {
            return Err(CError {
                code: FERRY_E_TRANSFER_FAILED,
                message: format!(
                    "finalize: {failed} transfer(s) failed: {}",
                    failures.join("; ")
                ),
            });
        }
        if left > 0 {
            return Err(CError {
                code: FERRY_E_LEFT_ALONE,
                message: format!("finalize: {left} transfer(s) left alone: their owner is alive"),
            });
        }
        Ok(())
    })
}
