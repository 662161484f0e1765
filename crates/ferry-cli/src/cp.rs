//! `ferry cp`: the command line of a copy, the rsync and cp habits among
//! it (filters, a file list, a dry run, --update, --no-clobber, --delete),
//! turned into the library's plan and run settings.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use clap::{ArgMatches, Args};
use ferry::engine::filter::{Action, Filter};
use ferry::engine::plan::{DestRule, Fidelity};
use ferry::rerun::Rerun;
use ferry::store::Store;
use ferry::{Kind, Preserve, RunSettings, Transfer};

use crate::exit::Exit;
use crate::{RunArgs, Start, move_and_wait};

/// One include/exclude option as given: a pattern, or a file of them.
#[derive(Clone, Debug)]
pub(crate) enum Rule {
    Pattern(Action, String),
    File(Action, PathBuf),
}

#[derive(Args)]
pub(crate) struct CpArgs {
    /// Copy directories recursively
    #[arg(short, long)]
    pub(crate) recursive: bool,
    /// Archive: -r, and keep mode, ownership and times
    #[arg(short, long)]
    pub(crate) archive: bool,
    /// Keep mode, ownership and times
    #[arg(short, long)]
    pub(crate) preserve: bool,
    /// Name the transfer, to find it again (a dead owner's transfer of this
    /// name is re-attached and continued)
    #[arg(long)]
    pub(crate) name: Option<String>,
    /// How bytes move: sync (this thread), threads (a pool), daemon (handed
    /// to `ferry serve`; returns once dispatched unless --wait), default
    /// (daemon when one answers on the socket, else threads)
    #[arg(long, default_value = "threads", value_parser = ["sync", "threads", "daemon", "default"])]
    pub(crate) kind: String,
    /// With --kind daemon or --distributed: return when the transfer is
    /// over, not when it is dispatched
    #[arg(long)]
    pub(crate) wait: bool,
    /// Moved by `ferry worker`s on any number of nodes, which share its
    /// PostgreSQL store: this only records the transfer and its first work
    /// items (directories are listed by the workers)
    #[arg(long)]
    pub(crate) distributed: bool,
    /// A new transfer under cp's destination rules, even when a transfer of
    /// the store already copied these sources to this destination (which a
    /// re-run otherwise continues, or brings up to date)
    #[arg(long)]
    pub(crate) new: bool,
    /// The checksum every copied file gets, computed as it is read
    #[arg(long, default_value = "xxh3", value_parser = ["xxh3", "blake3", "none"])]
    pub(crate) checksum: String,
    /// Extended attributes and ACLs to keep [default: all with -a, none otherwise]
    #[arg(long, value_parser = ["all", "none", "no-lustre"])]
    pub(crate) xattrs: Option<String>,
    /// Plan only: list what would be copied, skipped and removed, and
    /// write nothing (not even a store)
    #[arg(short = 'n', long)]
    pub(crate) dry_run: bool,
    /// Leave out what matches PATTERN (rsync's rules: first matching
    /// --include/--exclude wins, a leading / anchors at the copied
    /// directory, a trailing / matches directories only, * stops at /, **
    /// does not)
    #[arg(long, value_name = "PATTERN")]
    pub(crate) exclude: Vec<String>,
    /// Keep what matches PATTERN, whatever a later --exclude says
    #[arg(long, value_name = "PATTERN")]
    pub(crate) include: Vec<String>,
    /// --exclude each pattern of FILE (one a line; # and ; start comments)
    #[arg(long, value_name = "FILE")]
    pub(crate) exclude_from: Vec<PathBuf>,
    /// --include each pattern of FILE (one a line; # and ; start comments)
    #[arg(long, value_name = "FILE")]
    pub(crate) include_from: Vec<PathBuf>,
    /// Copy only the names listed in FILE (one a line, - for stdin), each
    /// below the one source directory and landing at the same path below
    /// DST; a listed directory brings its contents only with -r
    #[arg(long, value_name = "FILE", conflicts_with = "delete")]
    pub(crate) files_from: Option<PathBuf>,
    /// --files-from's names end with a NUL byte, not a newline (for names
    /// holding newlines: find -print0)
    #[arg(short = '0', long, requires = "files_from")]
    pub(crate) from0: bool,
    /// Keep destination files that are newer than their source (rsync -u)
    #[arg(short, long)]
    pub(crate) update: bool,
    /// Never overwrite an existing destination (cp -n)
    #[arg(long)]
    pub(crate) no_clobber: bool,
    /// Once every file is committed, remove what the destination's
    /// directories hold that the sources do not (but what --exclude
    /// leaves out), each removal recorded and listed
    #[arg(long)]
    pub(crate) delete: bool,
    /// The include/exclude options in command-line order (clap keeps
    /// each option's values apart): filled in by `main`.
    #[arg(skip)]
    pub(crate) rules_in_order: Vec<(usize, Rule)>,
    #[command(flatten)]
    pub(crate) run: RunArgs,
    /// Sources, then the destination
    #[arg(required = true, num_args = 2.., value_name = "PATH")]
    pub(crate) paths: Vec<PathBuf>,
}

impl CpArgs {
    /// Records the order of the include/exclude options, which clap keeps
    /// per option: rsync's rule list is first-match-wins across them.
    pub(crate) fn order_rules(&mut self, matches: &ArgMatches) {
        let mut rules = Vec::new();
        let mut take = |id: &str, make: &dyn Fn(usize) -> Rule| {
            if let Some(indices) = matches.indices_of(id) {
                for (n, at) in indices.enumerate() {
                    rules.push((at, make(n)));
                }
            }
        };
        take("exclude", &|n| {
            Rule::Pattern(Action::Exclude, self.exclude[n].clone())
        });
        take("include", &|n| {
            Rule::Pattern(Action::Include, self.include[n].clone())
        });
        take("exclude_from", &|n| {
            Rule::File(Action::Exclude, self.exclude_from[n].clone())
        });
        take("include_from", &|n| {
            Rule::File(Action::Include, self.include_from[n].clone())
        });
        rules.sort_by_key(|(at, _)| *at);
        self.rules_in_order = rules;
    }

    /// Options the daemon's API does not take yet (refused, never ignored).
    pub(crate) fn local_only(&self) -> Option<&'static str> {
        [
            (self.dry_run, "--dry-run"),
            (!self.rules_in_order.is_empty(), "--include/--exclude"),
            (self.files_from.is_some(), "--files-from"),
            (self.delete, "--delete"),
            // The daemon's run is not followed file by file.
            (self.run.verbose, "-v (one line per committed file)"),
        ]
        .into_iter()
        .find_map(|(given, name)| given.then_some(name))
    }

    fn filter(&self) -> Result<Filter, Exit> {
        let mut filter = Filter::default();
        let bad = |why: String| {
            Exit::Error(ferry::Error::BadOption {
                option: "--include/--exclude",
                why,
            })
        };
        for (_, rule) in &self.rules_in_order {
            match rule {
                Rule::Pattern(action, pattern) => filter.push(*action, pattern).map_err(bad)?,
                Rule::File(action, path) => {
                    let text = std::fs::read_to_string(path).map_err(|e| {
                        bad(format!(
                            "cannot read pattern file {}: {}",
                            path.display(),
                            ferry::words::cause(&e)
                        ))
                    })?;
                    for pattern in ferry::engine::filter::patterns_of_file(&text) {
                        filter
                            .push(*action, pattern)
                            .map_err(|why| bad(format!("{}: {why}", path.display())))?;
                    }
                }
            }
        }
        Ok(filter)
    }

    /// Whether this copy takes every entry of its sources as they are: no
    /// filter, file list, --update, --no-clobber or --delete (which a
    /// re-run compared by metadata alone would not honour).
    fn compares_whole_trees(&self) -> bool {
        self.exclude.is_empty()
            && self.include.is_empty()
            && self.exclude_from.is_empty()
            && self.include_from.is_empty()
            && self.files_from.is_none()
            && !self.update
            && !self.no_clobber
            && !self.delete
    }

    /// The settings of a new dispatch that only cp's flags give.
    fn settings_over(&self, base: RunSettings, filter: &Filter) -> RunSettings {
        RunSettings {
            update: self.update,
            no_clobber: self.no_clobber,
            delete: self.delete,
            filter: filter.texts(),
            ..base
        }
    }

    /// The new transfer's options.
    fn options(&self, kind: Kind, preserve: Preserve) -> ferry::TransferOptions {
        ferry::TransferOptions {
            name: self.name.clone(),
            kind,
            preserve,
            checksum: ferry::model::ChecksumAlgo::parse(&self.checksum),
            caller: None,
        }
    }

    /// What the copy keeps beyond mode, ownership and times.
    fn fidelity(&self) -> Fidelity {
        let xattrs = match self.xattrs.as_deref() {
            Some(mode) => ferry::engine::plan::XattrMode::parse(mode).expect("clap checked"),
            None if self.archive => ferry::engine::plan::XattrMode::All,
            None => ferry::engine::plan::XattrMode::None,
        };
        Fidelity {
            hard_links: self.archive,
            xattrs,
        }
    }

    /// The entries, by the file list or by cp's rules under `rule`.
    fn plan(&self, rule: DestRule, filter: &Filter) -> Result<Vec<ferry::model::NewEntry>, Exit> {
        self.plan_keeping(rule, filter, self.fidelity())
    }

    /// [`CpArgs::plan`] without a file list, handed to `sink` a batch at
    /// a time.
    fn plan_into(
        &self,
        rule: DestRule,
        filter: &Filter,
        sink: &mut dyn FnMut(&mut Vec<ferry::model::NewEntry>) -> ferry::Result<()>,
    ) -> ferry::Result<()> {
        let (dest, sources) = self.paths.split_last().expect("clap requires two paths");
        ferry::engine::plan::plan_streaming(
            sources,
            dest,
            self.recursive || self.archive,
            self.fidelity(),
            rule,
            filter,
            sink,
        )?;
        Ok(())
    }

    /// [`CpArgs::plan`], capturing what `fidelity` asks.
    fn plan_keeping(
        &self,
        rule: DestRule,
        filter: &Filter,
        fidelity: Fidelity,
    ) -> Result<Vec<ferry::model::NewEntry>, Exit> {
        let (dest, sources) = self.paths.split_last().expect("clap requires two paths");
        let Some(list) = &self.files_from else {
            return Ok(ferry::engine::plan::plan_onto(
                sources,
                dest,
                self.recursive || self.archive,
                fidelity,
                rule,
                filter,
            )?);
        };
        let [source] = sources else {
            return Err(Exit::Error(ferry::Error::BadOption {
                option: "--files-from",
                why: format!(
                    "{} sources given: with a list, give the one directory its names are below, \
                     then the destination",
                    sources.len()
                ),
            }));
        };
        let bytes = read_list(list)?;
        let names = ferry::engine::files_from::parse_list(&bytes, self.from0)?;
        // rsync: -a does not recurse into listed directories, -r does.
        Ok(ferry::engine::files_from::plan_listed(
            source,
            &names,
            dest,
            self.recursive,
            fidelity,
            filter,
        )?)
    }
}

fn read_list(path: &Path) -> Result<Vec<u8>, Exit> {
    use std::io::Read;
    let mut bytes = Vec::new();
    let read = if path == Path::new("-") {
        std::io::stdin().lock().read_to_end(&mut bytes).map(|_| ())
    } else {
        std::fs::File::open(path).and_then(|mut f| f.read_to_end(&mut bytes).map(|_| ()))
    };
    read.map_err(|e| {
        Exit::Error(ferry::Error::BadOption {
            option: "--files-from",
            why: format!(
                "cannot read {}: {}",
                path.display(),
                ferry::words::cause(&e)
            ),
        })
    })?;
    Ok(bytes)
}

/// `--dry-run`: the plan, and what a run would do with each entry, on
/// stdout; nothing is written. A run of the same copy again continues it
/// or brings it up to date in place (see `cp`): `store`, when there is one,
/// is read for it, so that the preview is that run's.
pub(crate) fn dry_run(args: &CpArgs, store: Option<&dyn Store>) -> Result<Exit, Exit> {
    let filter = args.filter()?;
    let (dest, sources) = args.paths.split_last().expect("clap requires two paths");
    let found = match store {
        Some(store) if !args.new => {
            ferry::rerun::find_same_copy(store, args.name.as_deref(), sources, dest)?
        }
        _ => None,
    };
    let mut base = RunSettings::default();
    let rule = match &found {
        Some(same) => {
            if same.record.state == ferry::TransferState::Completed {
                base.skip = ferry::engine::skip::SkipRule::Mtime;
            }
            if !args.run.quiet {
                eprintln!(
                    "ferry: dry run: transfer {} (id {}, {}) already copies this to {}: a run \
                     works on it in place (`--new` copies anew with cp's rules)",
                    same.record.name,
                    same.record.id,
                    same.record.state,
                    dest.display()
                );
            }
            same.rule
        }
        None => DestRule::Cp,
    };
    let entries = args.plan(rule, &filter)?;
    let skip = args.run.settings(base).skip;
    let algo = ferry::model::ChecksumAlgo::parse(&args.checksum);
    let (mut copied, mut bytes, mut skipped) = (0u64, 0u64, 0u64);
    for entry in &entries {
        match ferry::engine::skip::would_skip(entry, skip, args.update, args.no_clobber, algo) {
            Some(rule) => {
                skipped += 1;
                if !args.run.quiet {
                    println!("skip {} ({rule})", ferry::words::escaped_path(&entry.dest));
                }
            }
            None => {
                copied += 1;
                bytes += entry.meta.size;
                if !args.run.quiet {
                    println!("copy {}", ferry::words::escaped_path(&entry.dest));
                }
            }
        }
    }
    let mut removed = 0;
    if args.delete {
        let temp_suffix = ferry::model::DEFAULT_TEMP_SUFFIX;
        let extras = ferry::engine::delete::extras(
            entries.iter().map(|e| (e.kind, e.dest.as_path())),
            &filter,
            temp_suffix,
        )?;
        for extra in &extras {
            if !args.run.quiet {
                println!("remove {}", ferry::words::escaped_path(&extra.path));
            }
        }
        removed = extras.len();
    }
    if !args.run.quiet {
        eprintln!(
            "ferry: dry run: {copied} entries to copy ({}), {skipped} skipped, {removed} to \
             remove; nothing was written",
            indicatif::HumanBytes(bytes)
        );
    }
    Ok(Exit::Ok)
}

pub(crate) fn cp(store: Arc<dyn Store>, args: CpArgs) -> Result<Exit, Exit> {
    // `default` without a daemon answering: threads.
    let kind = Kind::parse(&args.kind).unwrap_or(Kind::Threads);
    let preserve = if args.archive || args.preserve {
        Preserve::ALL
    } else {
        Preserve::NONE
    };
    let (dest, sources) = args.paths.split_last().expect("clap requires two paths");
    // The same command run again is the same transfer: found before cp's
    // destination rule could nest it into what the first run created.
    let find = || -> Result<_, Exit> {
        Ok(if args.new {
            None
        } else {
            ferry::rerun::find_same_copy(store.as_ref(), args.name.as_deref(), sources, dest)?
        })
    };
    let mut found = find()?;
    let mut rule = DestRule::Cp;
    let mut base = RunSettings::default();
    // Each pass frees the transfer it abandons: it ends within the store's
    // transfers.
    let (mut before, mut up_to_date);
    let taken = loop {
        before = found.as_ref().map(|f| f.record.clone());
        // A transfer bringing a completed copy up to date, killed before it
        // was dispatched, recorded no skip rule: it continues with the re-run's.
        up_to_date = found.as_ref().is_some_and(|f| !f.copies.is_empty());
        let taken = found
            .take()
            .map(|found| ferry::rerun::take_up(Arc::clone(&store), found))
            .transpose()?;
        let Some(Rerun::Abandoned(record)) = taken else {
            break taken;
        };
        if !args.run.quiet {
            eprintln!(
                "ferry: transfer {} (id {}) was never dispatched: its owner, process {} on {}, \
                 died while planning it, so its list of files may be incomplete; it is \
                 cancelled, and this copy is planned anew",
                record.name, record.id, record.owner.pid, record.owner.host
            );
        }
        found = find()?;
    };
    match taken {
        Some(Rerun::Continue(transfer)) => {
            let before = before.expect("found");
            return continue_rerun(*transfer, &before, &args, up_to_date);
        }
        Some(Rerun::UpToDate(same)) => {
            rule = same.rule;
            base.skip = ferry::engine::skip::SkipRule::Mtime;
            let skip = args.run.skip.as_deref().unwrap_or("mtime");
            if skip == "mtime" && args.compares_whole_trees() {
                return refresh(store, *same, &args, kind, preserve);
            }
            if !args.run.quiet {
                eprintln!(
                    "ferry: transfer {} (id {}) already copied this to {}; bringing it up to date \
                     (--skip {skip}: files that match are not copied again; --new copies anew \
                     with cp's rules)",
                    same.record.name,
                    same.record.id,
                    dest.display()
                );
            }
        }
        Some(Rerun::Abandoned(_)) => unreachable!("the loop above takes up another"),
        None => {}
    }
    let filter = args.filter()?;
    let base = args.settings_over(base, &filter);
    // Planned into the store a batch at a time: memory holds a batch of
    // the plan, never the tree.
    // A file list is read whole, and so planned whole, first.
    let listed = match &args.files_from {
        Some(_) => Some(args.plan(rule, &filter)?),
        None => None,
    };
    let mut transfer = Transfer::create_planned(
        store,
        &args.options(kind, preserve),
        &mut |sink| match &listed {
            Some(entries) => ferry::plan_in_batches(entries, sink),
            None => args.plan_into(rule, &filter, sink),
        },
    )?;
    let (start, workers) = if transfer.reattached() {
        let record = transfer.record();
        let left_by = transfer.previous_owner().unwrap_or(&record.owner);
        if !args.run.quiet {
            eprintln!(
                "ferry: re-attached transfer {} (id {}) left by dead process {} on {}; continuing it",
                record.name, record.id, left_by.pid, left_by.host
            );
        }
        let workers = args.run.apply_to_resume(&mut transfer)?;
        (Start::Resume, workers)
    } else {
        (Start::Dispatch, args.run.apply(&mut transfer, base))
    };
    move_and_wait(transfer, start, workers, &args.run)
}

/// A re-run of a completed copy by the mtime rule, with no filter, file
/// list, --update, --no-clobber or --delete: the sources and destinations
/// are compared with what the earlier copies recorded (one `lstat` each,
/// no extended attribute read, nothing written for what did not change),
/// and only what changed becomes a new transfer.
fn refresh(
    store: Arc<dyn Store>,
    same: ferry::rerun::SameCopy,
    args: &CpArgs,
    kind: Kind,
    preserve: Preserve,
) -> Result<Exit, Exit> {
    let dest = args.paths.last().expect("clap requires two paths");
    // Files and symlinks, as a run's summary counts them.
    let files = |entries: &[ferry::model::NewEntry]| {
        entries
            .iter()
            .filter(|e| e.kind != ferry::model::EntryKind::Dir)
            .fold((0u64, 0u64), |(n, bytes), e| (n + 1, bytes + e.meta.size))
    };
    let mut total = (0, 0);
    let plan = || {
        let planned = args.plan_keeping(same.rule, &Filter::default(), Fidelity::default())?;
        total = files(&planned);
        Ok::<_, Exit>(planned)
    };
    let refresh = ferry::rerun::changed_since(store.as_ref(), &same, plan, preserve)?;
    let (files_total, bytes_total) = total;
    let record = &same.record;
    // A name no transfer has yet is made, even when nothing changed: the
    // caller will ask for it by that name.
    let named_anew = args.name.as_deref().is_some_and(|name| name != record.name);
    if !named_anew && refresh.changed.iter().all(|changed| !changed) {
        // A plan of this name killed before its dispatch ends here too.
        if let Some(name) = args.name.as_deref() {
            ferry::abandon_stale_plans(&store, name)?;
        }
        if !args.run.quiet {
            eprintln!(
                "ferry: transfer {} (id {}) already copied this to {}, and nothing changed \
                 since: {} entries compared by size, mtime, mode and owner (--skip checksum \
                 compares contents; --new copies anew with cp's rules)",
                record.name,
                record.id,
                dest.display(),
                refresh.unchanged()
            );
        }
        // The summary of that transfer, as this run found it: every file
        // in place, none copied.
        let report = ferry::RunReport {
            id: record.id,
            name: record.name.clone(),
            state: record.state,
            files_total,
            files_committed: files_total,
            files_skipped: files_total,
            bytes_total,
            bytes_copied: 0,
            bytes_reused: bytes_total,
            failures: Vec::new(),
            warnings: Vec::new(),
        };
        return Ok(crate::finish(&report, args.run.json, args.run.quiet));
    }
    // A name is taken over by the new transfer (the finished one gives it
    // up, and with it the place where its records are found): the new one
    // holds every entry, the unchanged ones recorded skipped.
    let mut entries = if args.name.is_some() {
        refresh.planned
    } else {
        refresh.into_changed()
    };
    if !args.run.quiet {
        let (files_changed, _) = files(&entries);
        let unchanged_files = files_total - files_changed;
        let what = if args.name.is_some() {
            "compared again by size and mtime".to_owned()
        } else {
            format!(
                "{unchanged_files} of {files_total} files unchanged since, {files_changed} new or changed"
            )
        };
        eprintln!(
            "ferry: transfer {} (id {}) already copied this to {}; bringing it up to date: \
             {what} (--skip checksum compares contents; --new copies anew with cp's rules)",
            record.name,
            record.id,
            dest.display(),
        );
    }
    ferry::engine::plan::capture_fidelity(&mut entries, args.fidelity())?;
    // As `cp` plans: a kill before the dispatch leaves the finished copy
    // found by the same command.
    let mut transfer =
        Transfer::create_planned(store, &args.options(kind, preserve), &mut |sink| {
            ferry::plan_in_batches(&entries, sink)
        })?;
    // In the store now (see `cp`).
    drop(entries);
    let base = RunSettings {
        skip: ferry::engine::skip::SkipRule::Mtime,
        ..RunSettings::default()
    };
    let workers = args.run.apply(&mut transfer, base);
    move_and_wait(transfer, Start::Dispatch, workers, &args.run)
}

/// A re-run of a copy whose transfer is not over (or failed, or was
/// cancelled): continue it, as `ferry resume` would.
fn continue_rerun(
    mut transfer: Transfer,
    before: &ferry::model::TransferRecord,
    args: &CpArgs,
    up_to_date: bool,
) -> Result<Exit, Exit> {
    let how = if transfer.reattached() {
        format!(
            "re-attached it from dead process {} on {}",
            before.owner.pid, before.owner.host
        )
    } else {
        "it is this process's".into()
    };
    if !args.run.quiet {
        eprintln!(
            "ferry: this copy is transfer {} (id {}), left {}; {how}; continuing it \
             (`ferry cp --new` copies anew with cp's rules)",
            before.name, before.id, before.state
        );
    }
    let unrecorded = RunSettings {
        skip: if up_to_date {
            ferry::engine::skip::SkipRule::Mtime
        } else {
            ferry::engine::skip::SkipRule::Never
        },
        ..RunSettings::default()
    };
    let workers = args.run.apply_to_resume_or(&mut transfer, unrecorded)?;
    move_and_wait(transfer, Start::Resume, workers, &args.run)
}
