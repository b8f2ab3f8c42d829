//! Architecture invariant: the client library's modules import one another
//! without cycles (docs/ARCHITECTURE.md), at both levels that have grown
//! them before: the crate's top-level modules (`api` ⇄ `error`, `jobs` ⇄
//! `matching`, the library reaching into the CLI's `commands`), and the
//! phases inside `matching/`. Read from the sources' `crate::` and `super::`
//! paths, test modules left out (tests may use any module).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

type Graph = BTreeMap<String, BTreeSet<String>>;

/// Every `.rs` file under `dir`.
fn sources(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).expect("read the source directory") {
        let path = entry.expect("a directory entry").path();
        if path.is_dir() {
            out.extend(sources(&path));
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
    out
}

/// The code of a file without its `#[cfg(test)]` module and comments.
fn code(path: &Path) -> String {
    let text = std::fs::read_to_string(path).expect("read a source file");
    let text = text.split("#[cfg(test)]").next().unwrap_or_default();
    text.lines()
        .filter(|l| !l.trim_start().starts_with("//"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// The first path segment after each `prefix` in `code` (`crate::api::x`
/// gives `api`; `crate::{api::x, error::Y}` gives both).
fn targets(code: &str, prefix: &str) -> BTreeSet<String> {
    let ident = |s: &str| -> String {
        s.chars()
            .take_while(|c| c.is_alphanumeric() || *c == '_')
            .collect()
    };
    let mut out = BTreeSet::new();
    for (i, _) in code.match_indices(prefix) {
        let rest = &code[i + prefix.len()..];
        if let Some(group) = rest.strip_prefix('{') {
            let group = &group[..group.find('}').unwrap_or(group.len())];
            out.extend(group.split(',').map(|s| ident(s.trim())));
        } else {
            out.insert(ident(rest));
        }
    }
    out.retain(|t| !t.is_empty());
    out
}

/// Edges between the modules `module_of` names, from each file's `prefix`
/// paths to other modules in `modules`.
fn graph(
    files: &[PathBuf],
    prefix: &str,
    modules: &BTreeSet<String>,
    module_of: impl Fn(&Path) -> Option<String>,
) -> Graph {
    let mut graph = Graph::new();
    for file in files {
        let Some(from) = module_of(file) else {
            continue;
        };
        let to = targets(&code(file), prefix);
        let edges = graph.entry(from.clone()).or_default();
        edges.extend(to.into_iter().filter(|t| *t != from && modules.contains(t)));
    }
    graph
}

/// A cycle of `graph`, as the modules along it, if there is one.
fn cycle(graph: &Graph) -> Option<Vec<String>> {
    fn visit(
        node: &str,
        graph: &Graph,
        path: &mut Vec<String>,
        done: &mut BTreeSet<String>,
    ) -> Option<Vec<String>> {
        if let Some(at) = path.iter().position(|n| n == node) {
            let mut found = path[at..].to_vec();
            found.push(node.to_owned());
            return Some(found);
        }
        if done.contains(node) {
            return None;
        }
        path.push(node.to_owned());
        for next in graph.get(node).into_iter().flatten() {
            if let Some(found) = visit(next, graph, path, done) {
                return Some(found);
            }
        }
        path.pop();
        done.insert(node.to_owned());
        None
    }
    let mut done = BTreeSet::new();
    graph
        .keys()
        .find_map(|node| visit(node, graph, &mut Vec::new(), &mut done))
}

fn src() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

/// The name of a module file or directory (`matching/job.rs` is `job`).
fn stem(path: &Path) -> String {
    let name = path.file_stem().unwrap_or_default().to_string_lossy();
    if name == "mod" {
        let dir = path.parent().and_then(Path::file_name).unwrap_or_default();
        dir.to_string_lossy().into_owned()
    } else {
        name.into_owned()
    }
}

#[test]
fn the_crates_modules_import_one_another_without_cycles() {
    let src = src();
    let files = sources(&src);
    // The top-level module a file belongs to; `lib.rs` and `main.rs` only
    // declare and re-export.
    let module_of = |file: &Path| -> Option<String> {
        let relative = file.strip_prefix(&src).ok()?;
        let first = relative.components().next()?.as_os_str().to_string_lossy();
        let name = first.trim_end_matches(".rs").to_owned();
        (name != "lib" && name != "main").then_some(name)
    };
    let modules: BTreeSet<String> = files.iter().filter_map(|f| module_of(f)).collect();
    for expected in ["api", "error", "jobs", "matching", "commands", "input"] {
        assert!(modules.contains(expected), "{expected} was not read");
    }
    let graph = graph(&files, "crate::", &modules, module_of);
    // The edges the invariant is about exist, so a broken reader fails here.
    assert!(graph["api"].contains("error") && graph["matching"].contains("jobs"));
    assert!(graph["commands"].contains("matching"));
    assert_eq!(cycle(&graph), None, "an import cycle in the client");
}

#[test]
fn the_matching_phases_import_one_another_without_cycles() {
    let dir = src().join("matching");
    let files: Vec<PathBuf> = sources(&dir)
        .into_iter()
        .filter(|f| !f.ends_with("mod.rs"))
        .collect();
    let phases: BTreeSet<String> = files.iter().map(|f| stem(f)).collect();
    assert_eq!(
        phases,
        ["graph_pass", "job", "plan", "quality", "upload"]
            .map(str::to_owned)
            .into()
    );
    let graph = graph(&files, "super::", &phases, |f| Some(stem(f)));
    assert!(graph["job"].contains("graph_pass") && graph["upload"].contains("plan"));
    assert_eq!(
        cycle(&graph),
        None,
        "an import cycle between matching's phases"
    );
}

#[test]
fn a_cycle_is_found() {
    let edges = |pairs: &[(&str, &str)]| -> Graph {
        let mut graph = Graph::new();
        for (a, b) in pairs {
            graph
                .entry(a.to_string())
                .or_default()
                .insert(b.to_string());
        }
        graph
    };
    assert_eq!(cycle(&edges(&[("a", "b"), ("b", "c"), ("a", "c")])), None);
    assert_eq!(
        cycle(&edges(&[("a", "b"), ("b", "c"), ("c", "a")])),
        Some(vec!["a".into(), "b".into(), "c".into(), "a".into()])
    );
    assert_eq!(
        targets(
            "use crate::{api::X, error};\nlet x = crate::jobs::get();",
            "crate::"
        ),
        ["api", "error", "jobs"].map(str::to_owned).into()
    );
}
