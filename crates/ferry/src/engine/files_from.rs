//! `--files-from`: the entries named by a list, below one source directory,
//! as rsync does it: each name keeps its path below the source (`a/b/c`
//! lands at `DST/a/b/c`), the directories on the way are created with their
//! source's metadata, and a listed directory is copied alone unless `-r`
//! asks for its contents too.

use std::collections::HashSet;
use std::ffi::OsStr;
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};

use super::filter::Filter;
use super::plan::{self, Fidelity};
use crate::error::{Error, Result};
use crate::model::NewEntry;

/// Upper bound on the names of one list (the entries of a transfer are
/// bounded the same way).
pub const NAMES_MAX: usize = plan::ENTRIES_MAX;

/// The names of a list: one per line, or NUL-separated with `nul` (names
/// holding newlines). Blank names are skipped; a leading `/` is dropped, as
/// rsync does (every name is below the source directory).
pub fn parse_list(bytes: &[u8], nul: bool) -> Result<Vec<PathBuf>> {
    let separator = if nul { b'\0' } else { b'\n' };
    let mut names = Vec::new();
    for raw in bytes.split(|b| *b == separator) {
        let raw = if nul {
            raw
        } else {
            raw.strip_suffix(b"\r").unwrap_or(raw)
        };
        if raw.is_empty() {
            continue;
        }
        let name = Path::new(OsStr::from_bytes(raw));
        let below: PathBuf = name
            .components()
            .filter(|c| !matches!(c, Component::RootDir | Component::CurDir))
            .collect();
        if below.components().any(|c| c == Component::ParentDir) {
            return Err(Error::BadOption {
                option: "--files-from",
                why: format!(
                    "{} climbs out of the source directory with '..': list names below it",
                    name.display()
                ),
            });
        }
        if below.as_os_str().is_empty() {
            continue;
        }
        if names.len() >= NAMES_MAX {
            return Err(Error::BadOption {
                option: "--files-from",
                why: format!("more than {NAMES_MAX} names: split the list"),
            });
        }
        names.push(below);
    }
    Ok(names)
}

/// The entries that copying `names` (below `source_dir`) to the directory
/// `dest` creates; `recursive`: a listed directory with its contents.
pub fn plan_listed(
    source_dir: &Path,
    names: &[PathBuf],
    dest: &Path,
    recursive: bool,
    fidelity: Fidelity,
    filter: &Filter,
) -> Result<Vec<NewEntry>> {
    let dest_meta = fs::metadata(dest).ok();
    plan::check_destination(dest, dest_meta.as_ref())?;
    if dest_meta.as_ref().is_some_and(|m| !m.is_dir()) {
        return Err(Error::TargetNotADirectory {
            path: dest.to_path_buf(),
        });
    }
    let root_meta = fs::metadata(source_dir).map_err(|e| plan::stat_error(source_dir, e))?;
    if !root_meta.is_dir() {
        return Err(Error::BadOption {
            option: "--files-from",
            why: format!(
                "{} is not a directory: with a list, the one source is the directory its names \
                 are below",
                source_dir.display()
            ),
        });
    }
    // The source directory becomes the destination, as `cp -r SRC/. DST`.
    let mut entries = vec![plan::entry(source_dir, &root_meta, dest.to_path_buf())?];
    let mut listed: HashSet<PathBuf> = HashSet::new();
    for name in names {
        // The directories on the way first: pre-order.
        let mut on_the_way = PathBuf::new();
        let mut parts = name.components().peekable();
        while let Some(part) = parts.next() {
            if parts.peek().is_none() {
                break;
            }
            on_the_way.push(part);
            if listed.insert(on_the_way.clone()) {
                let source = source_dir.join(&on_the_way);
                let meta =
                    fs::symlink_metadata(&source).map_err(|e| plan::stat_error(&source, e))?;
                entries.push(plan::entry(&source, &meta, dest.join(&on_the_way))?);
            }
        }
        let source = source_dir.join(name);
        let meta = fs::symlink_metadata(&source).map_err(|e| plan::stat_error(&source, e))?;
        if filter.excludes(name, meta.is_dir()) || !listed.insert(name.clone()) {
            continue;
        }
        if meta.is_dir() && recursive {
            plan::walk_below(
                &source,
                &meta,
                &dest.join(name),
                name.clone(),
                filter,
                &mut entries,
                plan::ENTRIES_MAX,
            )?;
        } else {
            entries.push(plan::entry(&source, &meta, dest.join(name))?);
        }
        if entries.len() > plan::ENTRIES_MAX {
            return Err(Error::BadOption {
                option: "--files-from",
                why: format!(
                    "more than {} entries in one transfer: split the list",
                    plan::ENTRIES_MAX
                ),
            });
        }
    }
    // A name listed and also found below a listed directory: once.
    let mut seen = HashSet::with_capacity(entries.len());
    entries.retain(|e| seen.insert(e.dest.clone()));
    plan::finish_plan(&mut entries)?;
    plan::capture_fidelity(&mut entries, fidelity)?;
    Ok(entries)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_split_on_newlines_or_nuls() {
        let names = parse_list(b"a\n/b/c\r\n\n./d\n", false).unwrap();
        assert_eq!(names, ["a", "b/c", "d"].map(PathBuf::from));
        let names = parse_list(b"with\nnewline\0with space\0", true).unwrap();
        assert_eq!(names, ["with\nnewline", "with space"].map(PathBuf::from));
        assert!(parse_list(b"../etc/passwd\n", false).is_err());
    }
}
