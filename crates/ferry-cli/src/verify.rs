//! `ferry verify`: which transfers to check, and how to say what was found.

use std::path::{Path, PathBuf};

use ferry::store::Store;
use ferry::verify::{Checked, Finding, verify_transfer_where};

use crate::exit::Exit;
use crate::store::OpenedStore;

pub fn run(
    store: &dyn Store,
    socket: &Path,
    targets: &[PathBuf],
    json: bool,
) -> Result<Exit, Exit> {
    let mut found = Found::default();
    if targets.is_empty() {
        found.all_of(store, &|_| true)?;
    }
    for target in targets {
        if let Some(name) = target.to_str()
            && let Some(t) = store.transfer_by_name(name).map_err(ferry::Error::from)?
        {
            found.one(store, &t, &|_| true)?;
            continue;
        }
        if OpenedStore::is_store(target) {
            let other = OpenedStore::open(target, crate::store::Create::Nothing)?.store();
            found.all_of(other.as_ref(), &|_| true)?;
            continue;
        }
        if target.exists() {
            let root = canonical(target);
            found.all_of(store, &|dest| canonical(dest).starts_with(&root))?;
            continue;
        }
        // One namespace: a transfer handed to the daemon.
        if let Some(name) = target.to_str()
            && crate::daemon::has(socket, name)
        {
            found.daemon(socket, name)?;
            continue;
        }
        return Err(ferry::Error::TransferNotFound {
            name: target.display().to_string(),
            store: store.location(),
        }
        .into());
    }
    report(&found.checked, found.transfers, json)
}

/// `verify NAME…` of the daemon's transfers only (the user has no store).
pub fn run_in_daemon(socket: &Path, names: &[PathBuf], json: bool) -> Result<Exit, Exit> {
    let mut found = Found::default();
    for name in names {
        found.daemon(socket, &name.to_string_lossy())?;
    }
    report(&found.checked, found.transfers, json)
}

#[derive(Default)]
struct Found {
    checked: Vec<Checked>,
    transfers: usize,
}

impl Found {
    /// The daemon reads back the files of its transfer `name` as their
    /// user and compares them.
    fn daemon(&mut self, socket: &Path, name: &str) -> Result<(), Exit> {
        let client = ferry_serve::client::Client::new(socket).map_err(Exit::Daemon)?;
        self.transfers += 1;
        self.checked
            .extend(client.verify(name).map_err(Exit::Daemon)?);
        Ok(())
    }

    /// Every transfer, newest first: a destination that a later transfer
    /// wrote again (a re-run that found its source changed) is checked
    /// against that transfer's record only, not the superseded one.
    fn all_of(&mut self, store: &dyn Store, keep: &dyn Fn(&Path) -> bool) -> Result<(), Exit> {
        let mut transfers = store.transfers().map_err(ferry::Error::from)?;
        transfers.sort_by_key(|t| std::cmp::Reverse((t.created_ns, t.id.0)));
        let seen = std::cell::RefCell::new(std::collections::HashSet::new());
        for t in transfers {
            self.one(store, &t, &|dest| {
                keep(dest) && seen.borrow_mut().insert(dest.to_path_buf())
            })?;
        }
        Ok(())
    }

    fn one(
        &mut self,
        store: &dyn Store,
        t: &ferry::model::TransferRecord,
        keep: &dyn Fn(&Path) -> bool,
    ) -> Result<(), Exit> {
        self.transfers += 1;
        let checked = verify_transfer_where(store, t, keep).map_err(ferry::Error::from)?;
        self.checked.extend(checked);
        Ok(())
    }
}

/// The absolute path, resolved as far as it exists.
fn canonical(path: &Path) -> PathBuf {
    if let Ok(p) = path.canonicalize() {
        return p;
    }
    match (path.parent(), path.file_name()) {
        (Some(parent), Some(name)) if !parent.as_os_str().is_empty() => {
            canonical(parent).join(name)
        }
        _ => std::env::current_dir().unwrap_or_default().join(path),
    }
}

fn report(checked: &[Checked], transfers: usize, json: bool) -> Result<Exit, Exit> {
    let mut problems = 0;
    let mut unchecked = 0;
    for c in checked {
        let problem = match &c.finding {
            Finding::Match => None,
            Finding::Unchecked => {
                unchecked += 1;
                None
            }
            Finding::Mismatch { expected, found } => {
                Some(format!("expected {expected}, found {found}"))
            }
            Finding::Missing => Some("missing".to_string()),
            Finding::Unreadable { error } => {
                Some(format!("unreadable: {}", ferry::words::in_words(error)))
            }
        };
        if json {
            println!("{}", serde_json::to_string(c).expect("serialisable"));
        } else if let Some(problem) = &problem {
            println!("{}: {problem} (transfer {})", c.dest.display(), c.transfer);
        }
        problems += usize::from(problem.is_some());
    }
    let count =
        |n: usize, one: &str, many: &str| format!("{n} {}", if n == 1 { one } else { many });
    eprintln!(
        "ferry: verified {} of {}: {} match, {problems} do not, {unchecked} have no checksum",
        count(checked.len(), "file", "files"),
        count(transfers, "transfer", "transfers"),
        checked.len() - problems - unchecked
    );
    if problems > 0 {
        return Err(ferry::Error::VerifyFailed {
            checked: checked.len(),
            problems,
        }
        .into());
    }
    Ok(Exit::Ok)
}
