//! `--include`/`--exclude`: rsync's filter rules. The rules are tried in the
//! order given and the first that matches decides; a path no rule matches
//! is included. An excluded directory is not descended into.
//!
//! A rule's path is the entry's path below the directory being copied (as
//! rsync's `src/ dst/`): in `ferry cp -r data DST`, `data/raw/x` is
//! `raw/x`. The top of each source is never filtered: it was named.
//!
//! Patterns, as rsync reads them: a leading `/` anchors the pattern at that
//! top; without one it matches the end of the path at a `/` (a pattern
//! without `/` matches the last component). A trailing `/` matches only
//! directories. `*` and `?` stop at `/`, `**` crosses it, `dir/***` is
//! `dir` and everything below it. The glob itself is globset's; the rule
//! list is ours.

use std::path::Path;

use globset::{GlobBuilder, GlobMatcher};

/// Upper bound on the rules of one transfer (they are recorded with its
/// dispatch, so that `--delete` after a resume protects what they exclude).
pub const RULES_MAX: usize = 10_000;

/// What a matching rule does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    Include,
    Exclude,
}

struct Rule {
    action: Action,
    /// The rule as written, recorded with the dispatch: `+ PATTERN`.
    text: String,
    /// Only directories match (the pattern ended in `/`).
    dir_only: bool,
    /// Either matching is a match (`dir/***` is two globs).
    globs: Vec<GlobMatcher>,
}

/// An ordered list of include and exclude rules.
#[derive(Default)]
pub struct Filter {
    rules: Vec<Rule>,
}

impl std::fmt::Debug for Filter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list()
            .entries(self.rules.iter().map(|r| &r.text))
            .finish()
    }
}

impl Filter {
    /// Appends a rule; an error names the pattern and what is wrong.
    pub fn push(&mut self, action: Action, pattern: &str) -> Result<(), String> {
        if self.rules.len() >= RULES_MAX {
            return Err(format!("more than {RULES_MAX} include/exclude rules"));
        }
        let sign = match action {
            Action::Include => '+',
            Action::Exclude => '-',
        };
        let mut body = pattern;
        let dir_only = body.len() > 1 && body.ends_with('/');
        body = body.trim_end_matches('/');
        let anchored = body.starts_with('/');
        body = body.trim_start_matches('/');
        if body.is_empty() {
            return Err(format!(
                "pattern {pattern:?} matches nothing: it names no path"
            ));
        }
        let mut bodies = vec![body.to_string()];
        if let Some(dir) = body.strip_suffix("/***") {
            bodies = vec![dir.to_string(), format!("{dir}/**")];
        }
        let mut globs = Vec::with_capacity(bodies.len());
        for body in bodies {
            // Unanchored: at the end of the path, at a component boundary.
            let glob = if anchored { body } else { format!("**/{body}") };
            let matcher = GlobBuilder::new(&glob)
                .literal_separator(true)
                .backslash_escape(true)
                .build()
                .map_err(|e| format!("pattern {pattern:?}: {}", e.kind()))?
                .compile_matcher();
            globs.push(matcher);
        }
        self.rules.push(Rule {
            action,
            text: format!("{sign} {pattern}"),
            dir_only,
            globs,
        });
        Ok(())
    }

    /// Rebuilt from [`Filter::texts`] (a recorded dispatch).
    pub fn from_texts<S: AsRef<str>>(texts: &[S]) -> Result<Filter, String> {
        let mut filter = Filter::default();
        for text in texts {
            let text = text.as_ref();
            let (action, pattern) = match text.split_at_checked(2) {
                Some(("+ ", p)) => (Action::Include, p),
                Some(("- ", p)) => (Action::Exclude, p),
                _ => {
                    return Err(format!(
                        "rule {text:?} is neither '+ PATTERN' nor '- PATTERN'"
                    ));
                }
            };
            filter.push(action, pattern)?;
        }
        Ok(filter)
    }

    /// The rules as written, `+ PATTERN` or `- PATTERN`, in order.
    pub fn texts(&self) -> Vec<String> {
        self.rules.iter().map(|r| r.text.clone()).collect()
    }

    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    /// Whether the entry at `relative` (below the copied directory) is left
    /// out: the first rule that matches decides.
    pub fn excludes(&self, relative: &Path, is_dir: bool) -> bool {
        for rule in &self.rules {
            if rule.dir_only && !is_dir {
                continue;
            }
            if rule.globs.iter().any(|g| g.is_match(relative)) {
                return rule.action == Action::Exclude;
            }
        }
        false
    }
}

/// The patterns of an `--include-from`/`--exclude-from` file: one per line;
/// blank lines and lines starting with `#` or `;` are ignored, as rsync does.
pub fn patterns_of_file(text: &str) -> impl Iterator<Item = &str> {
    text.lines()
        .map(|l| l.strip_suffix('\r').unwrap_or(l))
        .filter(|l| !l.trim().is_empty() && !l.starts_with('#') && !l.starts_with(';'))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn filter(rules: &[(Action, &str)]) -> Filter {
        let mut f = Filter::default();
        for (a, p) in rules {
            f.push(*a, p).unwrap();
        }
        f
    }

    /// The examples of rsync(1), "INCLUDE/EXCLUDE PATTERN RULES".
    #[test]
    fn rsync_documented_examples() {
        use Action::{Exclude as E, Include as I};
        let f = filter(&[(E, "*.o")]);
        assert!(f.excludes(Path::new("a/b.o"), false));
        assert!(f.excludes(Path::new("b.o"), false));
        assert!(!f.excludes(Path::new("b.c"), false));
        // "/foo" excludes foo at the top only.
        let f = filter(&[(E, "/foo")]);
        assert!(f.excludes(Path::new("foo"), false));
        assert!(!f.excludes(Path::new("x/foo"), false));
        // "foo/" excludes directories named foo, not files.
        let f = filter(&[(E, "foo/")]);
        assert!(f.excludes(Path::new("x/foo"), true));
        assert!(!f.excludes(Path::new("x/foo"), false));
        // "/foo/*/bar": one level; "/foo/**/bar": any depth.
        let f = filter(&[(E, "/foo/*/bar")]);
        assert!(f.excludes(Path::new("foo/x/bar"), false));
        assert!(!f.excludes(Path::new("foo/x/y/bar"), false));
        let f = filter(&[(E, "/foo/**/bar")]);
        assert!(f.excludes(Path::new("foo/x/y/bar"), false));
        // "foo/bar" unanchored: at the end of the path, at a boundary.
        let f = filter(&[(E, "foo/bar")]);
        assert!(f.excludes(Path::new("x/foo/bar"), false));
        assert!(!f.excludes(Path::new("x/afoo/bar"), false));
        // "+ */", "+ *.c", "- *": only C files (and every directory).
        let f = filter(&[(I, "*/"), (I, "*.c"), (E, "*")]);
        assert!(!f.excludes(Path::new("d"), true));
        assert!(!f.excludes(Path::new("d/x.c"), false));
        assert!(f.excludes(Path::new("d/x.h"), false));
        // First match wins: "+ foo.o" before "- *.o".
        let f = filter(&[(I, "foo.o"), (E, "*.o")]);
        assert!(!f.excludes(Path::new("foo.o"), false));
        assert!(f.excludes(Path::new("bar.o"), false));
        // "dir/***": the directory and all below it.
        let f = filter(&[(E, "/dir/***")]);
        assert!(f.excludes(Path::new("dir"), true));
        assert!(f.excludes(Path::new("dir/a/b"), false));
        assert!(!f.excludes(Path::new("dirx"), true));
    }

    #[test]
    fn recorded_rules_read_back() {
        let f = filter(&[(Action::Include, "*/"), (Action::Exclude, "*")]);
        let back = Filter::from_texts(&f.texts()).unwrap();
        assert_eq!(back.texts(), ["+ */", "- *"]);
        assert!(back.excludes(Path::new("x"), false));
        assert!(Filter::default().push(Action::Exclude, "/").is_err());
        assert!(Filter::from_texts(&["* x"]).is_err());
    }
}
