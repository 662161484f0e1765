//! The workspace's import structure, checked from the sources: no import
//! circle between the files of any crate, and no module of `ferry` that
//! imports from a higher layer than its own (the layers of
//! docs/architecture.md). A module may use its ancestors (`super::…` up to
//! its `mod.rs`): that is the folder it lives in, not an import circle.
//!
//! What is read: every `crate::a::b` and `super::a` path outside comments
//! and outside `#[cfg(test)]` code, in `src/` of each crate. Tests, whose
//! suites sit above everything they test, are left out.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// `ferry`'s top-level modules, bottom layer first. A module imports only
/// from its own layer or below (and never in a circle within a layer).
const FERRY_LAYERS: &[&[&str]] = &[
    &["model", "checksum", "failpoint", "signals", "words"],
    &["store"],
    &["error", "events", "owner", "heartbeat"],
    &["engine", "verify"],
    &["transfer", "rerun", "finalize"],
    &["conformance"],
];

/// One source file, as a module path: `["engine", "pool"]`.
type Module = Vec<String>;

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn crates() -> Vec<PathBuf> {
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(workspace().join("crates"))
        .expect("crates/")
        .map(|e| e.expect("crates/ entry").path())
        .filter(|p| p.join("src").is_dir())
        .collect();
    dirs.sort();
    dirs
}

/// Every `.rs` file below `src`, keyed by its module path. `mod.rs`,
/// `lib.rs` and `main.rs` are their folder's module.
fn modules(src: &Path) -> BTreeMap<Module, PathBuf> {
    let mut out = BTreeMap::new();
    let mut stack = vec![src.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).expect("source folder") {
            let path = entry.expect("source entry").path();
            if path.is_dir() {
                stack.push(path);
                continue;
            }
            if path.extension().is_none_or(|e| e != "rs") {
                continue;
            }
            let rel = path.strip_prefix(src).expect("below src");
            let mut module: Module = rel
                .with_extension("")
                .iter()
                .map(|c| c.to_string_lossy().into_owned())
                .collect();
            if matches!(
                module.last().map(String::as_str),
                Some("mod" | "lib" | "main")
            ) {
                module.pop();
            }
            // Test-only files: a module's `tests.rs`, `regression.rs` below
            // a test module, and the like are declared under #[cfg(test)].
            if module
                .last()
                .is_some_and(|m| m == "tests" || m == "regression")
            {
                continue;
            }
            out.insert(module, path);
        }
    }
    out
}

/// The code of a file without comments and without what follows its first
/// `#[cfg(test)]` (test modules sit at the end of a file in this workspace).
fn code(path: &Path) -> String {
    let text = std::fs::read_to_string(path).expect("source file");
    let text = match text.find("#[cfg(test)]") {
        Some(at) => &text[..at],
        None => &text[..],
    };
    text.lines()
        .map(|line| match line.find("//") {
            Some(at) => &line[..at],
            None => line,
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// The module paths a file's code names: `crate::a::b::C` → `[a, b, C]`,
/// `super::x` → its parent's path + `[x]`, `use super::{a, b}` → both.
fn references(module: &Module, is_folder: bool, code: &str) -> Vec<Module> {
    let ident = |c: char| c.is_alphanumeric() || c == '_';
    let mut out = Vec::new();
    // `super` of `a::b` is `a`, whether `b` is a file or a folder's mod.rs.
    let parent: Module = module[..module.len().saturating_sub(1)].to_vec();
    let base_of = |root: &str| -> Option<Module> {
        match root {
            "crate" => Some(Vec::new()),
            "super" => Some(parent.clone()),
            "self" if is_folder => Some(module.clone()),
            _ => None,
        }
    };
    for root in ["crate::", "super::", "self::"] {
        let mut rest = code;
        while let Some(at) = rest.find(root) {
            let before = rest[..at].chars().next_back();
            let tail = &rest[at + root.len()..];
            rest = tail;
            if before.is_some_and(|c| ident(c) || c == '$' || c == ':') {
                continue;
            }
            let Some(base) = base_of(&root[..root.len() - 2]) else {
                continue;
            };
            if let Some(group) = tail.strip_prefix('{') {
                let end = group.find('}').unwrap_or(group.len());
                for item in group[..end].split(',') {
                    let path: Module = item
                        .trim()
                        .split("::")
                        .map(|s| s.trim().split(' ').next().unwrap_or("").to_string())
                        .take_while(|s| !s.is_empty() && s.chars().all(ident))
                        .collect();
                    out.push(base.iter().cloned().chain(path).collect());
                }
                continue;
            }
            let path: Module = tail
                .split("::")
                .map(|s| s.chars().take_while(|&c| ident(c)).collect::<String>())
                .scan(true, |go, s| {
                    if !*go || s.is_empty() {
                        return None;
                    }
                    Some(s)
                })
                .collect();
            out.push(base.iter().cloned().chain(path).collect());
        }
    }
    out
}

/// The longest known module a path starts with.
fn resolve<'a>(known: &'a BTreeMap<Module, PathBuf>, path: &Module) -> Option<&'a Module> {
    (1..=path.len())
        .rev()
        .find_map(|n| known.get_key_value(&path[..n]).map(|(k, _)| k))
}

/// The file-level import graph of one crate, without edges to ancestors.
fn graph(src: &Path) -> BTreeMap<Module, BTreeSet<Module>> {
    let known = modules(src);
    let mut edges = BTreeMap::new();
    for (module, path) in &known {
        let folder = matches!(
            path.file_stem().and_then(|s| s.to_str()),
            Some("mod" | "lib" | "main")
        );
        let mut to = BTreeSet::new();
        for reference in references(module, folder, &code(path)) {
            let Some(target) = resolve(&known, &reference) else {
                continue;
            };
            // Itself, or a folder it lives in.
            if target.len() <= module.len() && module[..target.len()] == target[..] {
                continue;
            }
            to.insert(target.clone());
        }
        edges.insert(module.clone(), to);
    }
    edges
}

/// A circle in `edges`, if there is one.
fn find_circle(edges: &BTreeMap<Module, BTreeSet<Module>>) -> Option<Vec<Module>> {
    #[derive(Clone, Copy, PartialEq)]
    enum Mark {
        Open,
        Done,
    }
    fn visit(
        node: &Module,
        edges: &BTreeMap<Module, BTreeSet<Module>>,
        marks: &mut BTreeMap<Module, Mark>,
        stack: &mut Vec<Module>,
    ) -> Option<Vec<Module>> {
        match marks.get(node) {
            Some(Mark::Done) => return None,
            Some(Mark::Open) => {
                let at = stack.iter().position(|m| m == node).expect("open on stack");
                return Some(stack[at..].to_vec());
            }
            None => {}
        }
        marks.insert(node.clone(), Mark::Open);
        stack.push(node.clone());
        for next in edges.get(node).into_iter().flatten() {
            if let Some(circle) = visit(next, edges, marks, stack) {
                return Some(circle);
            }
        }
        stack.pop();
        marks.insert(node.clone(), Mark::Done);
        None
    }
    let mut marks = BTreeMap::new();
    edges
        .keys()
        .find_map(|node| visit(node, edges, &mut marks, &mut Vec::new()))
}

fn show(circle: &[Module]) -> String {
    circle
        .iter()
        .map(|m| m.join("::"))
        .collect::<Vec<_>>()
        .join(" → ")
}

#[test]
fn no_crate_has_an_import_circle_between_its_files() {
    let mut seen = 0;
    for dir in crates() {
        let edges = graph(&dir.join("src"));
        seen += edges.len();
        if let Some(circle) = find_circle(&edges) {
            panic!("{}: import circle {}", dir.display(), show(&circle));
        }
    }
    assert!(
        seen > 50,
        "read only {seen} files: is the workspace where it was?"
    );
}

#[test]
fn no_module_of_ferry_imports_from_a_higher_layer() {
    let layer_of = |top: &str| {
        FERRY_LAYERS
            .iter()
            .position(|layer| layer.contains(&top))
            .unwrap_or_else(|| panic!("module {top} has no layer in FERRY_LAYERS: give it one"))
    };
    let edges = graph(&workspace().join("crates/ferry/src"));
    let mut upward = Vec::new();
    let mut tops = BTreeSet::new();
    for (from, targets) in &edges {
        let Some(from_top) = from.first() else {
            continue; // lib.rs: the crate's front, above every layer
        };
        tops.insert(from_top.clone());
        for to in targets {
            let Some(to_top) = to.first() else { continue };
            if layer_of(to_top) > layer_of(from_top) {
                upward.push(format!("{} → {}", from.join("::"), to.join("::")));
            }
        }
    }
    assert!(
        upward.is_empty(),
        "imports from a higher layer: {upward:#?}"
    );
    // The top-level modules must not import each other in a circle either.
    let mut top_edges: BTreeMap<Module, BTreeSet<Module>> = BTreeMap::new();
    for (from, targets) in &edges {
        let Some(from_top) = from.first() else {
            continue;
        };
        let entry = top_edges.entry(vec![from_top.clone()]).or_default();
        for to in targets.iter().filter_map(|t| t.first()) {
            if to != from_top {
                entry.insert(vec![to.clone()]);
            }
        }
    }
    if let Some(circle) = find_circle(&top_edges) {
        panic!(
            "ferry's modules import each other in a circle: {}",
            show(&circle)
        );
    }
    assert!(tops.len() >= 10, "found only {tops:?}");
}

#[test]
fn the_checker_sees_a_circle_and_an_upward_import() {
    // The checker itself, on a made-up crate: a test that cannot fail is
    // worth nothing, so show that it does.
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src");
    std::fs::create_dir_all(src.join("engine")).unwrap();
    std::fs::write(src.join("lib.rs"), "pub mod engine;\npub mod model;\n").unwrap();
    std::fs::write(src.join("model.rs"), "use crate::engine::pool::Work;\n").unwrap();
    std::fs::write(src.join("engine/mod.rs"), "mod pool;\nmod ranges;\n").unwrap();
    std::fs::write(
        src.join("engine/pool.rs"),
        "use super::ranges::Tracker;\n// use super::nothing;\n",
    )
    .unwrap();
    std::fs::write(
        src.join("engine/ranges.rs"),
        "use super::{pool::Done, Engine};\n#[cfg(test)]\nuse crate::model::X;\n",
    )
    .unwrap();
    let edges = graph(&src);
    let circle = find_circle(&edges).expect("pool ↔ ranges is a circle");
    assert_eq!(circle.len(), 2, "{}", show(&circle));
    assert!(edges[&vec!["model".to_string()]].contains(&vec!["engine".into(), "pool".into()]));
    // The test-only import and the comment are not edges.
    assert!(!edges[&vec!["engine".to_string(), "ranges".into()]].contains(&vec!["model".into()]));
}
