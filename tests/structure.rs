//! The shape of the code, checked: no two files of `src/proxy` or `src/cluster` need each
//! other, directly or around a circle. A circle means neither file can be read, changed or
//! tested without the other; the interfaces that break them live in the file both sides
//! already need (`proxy::backend::job` for the way to a node, `cluster::journal` for
//! etcd). The directories inside them that hold several files are checked the same way.
//!
//! A file's edges are the sibling modules it names through `super::` or
//! `crate::<dir>::`, in `use` lists and in paths, its tests included. The directory's
//! `mod.rs` is the parent every file may lean on, and is left out.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// Each module of `dir` (a file, or a directory of files) and the siblings it names.
fn edges(dir: &Path, name: &str) -> BTreeMap<String, BTreeSet<String>> {
    let mut sources: BTreeMap<String, String> = BTreeMap::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        let stem = path.file_stem().unwrap().to_string_lossy().into_owned();
        if stem == "mod" {
            continue;
        }
        let text = sources.entry(stem).or_default();
        if path.is_dir() {
            for file in walk(&path) {
                text.push_str(&std::fs::read_to_string(file).unwrap());
            }
        } else if path.extension().is_some_and(|e| e == "rs") {
            text.push_str(&std::fs::read_to_string(&path).unwrap());
        }
    }
    let modules: BTreeSet<String> = sources.keys().cloned().collect();
    let prefixes = ["super::".to_string(), format!("crate::{name}::")];
    sources
        .iter()
        .map(|(module, text)| {
            let text = without_comments(text);
            let mut named = BTreeSet::new();
            for prefix in &prefixes {
                for (at, _) in text.match_indices(prefix.as_str()) {
                    let rest = &text[at + prefix.len()..];
                    for first in first_segments(rest) {
                        if modules.contains(&first) && first != *module {
                            named.insert(first);
                        }
                    }
                }
            }
            (module.clone(), named)
        })
        .collect()
}

fn walk(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            out.extend(walk(&path));
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
    out
}

fn without_comments(text: &str) -> String {
    text.lines()
        .map(|l| l.split("//").next().unwrap_or(""))
        .collect::<Vec<_>>()
        .join("\n")
}

/// The first path segment after `super::`: `job` of `job::Job`, or each of a `{a, b::c}`
/// list.
fn first_segments(rest: &str) -> Vec<String> {
    let ident = |s: &str| -> String {
        s.trim_start()
            .chars()
            .take_while(|c| c.is_alphanumeric() || *c == '_')
            .collect()
    };
    let Some(list) = rest.strip_prefix('{') else {
        return vec![ident(rest)];
    };
    let (mut depth, mut item, mut out) = (0, String::new(), Vec::new());
    for c in list.chars() {
        match c {
            '{' => depth += 1,
            '}' if depth == 0 => break,
            '}' => depth -= 1,
            ',' if depth == 0 => {
                out.push(ident(&item));
                item.clear();
                continue;
            }
            _ => {}
        }
        item.push(c);
    }
    out.push(ident(&item));
    out
}

/// The circles of `graph`: its strongly connected parts of more than one module.
fn circles(graph: &BTreeMap<String, BTreeSet<String>>) -> Vec<Vec<String>> {
    // Two modules are in one circle when each reaches the other.
    let reach = |from: &str| -> BTreeSet<String> {
        let mut seen = BTreeSet::new();
        let mut todo = vec![from.to_string()];
        while let Some(m) = todo.pop() {
            for next in graph.get(&m).into_iter().flatten() {
                if seen.insert(next.clone()) {
                    todo.push(next.clone());
                }
            }
        }
        seen
    };
    let reaches: BTreeMap<&String, BTreeSet<String>> =
        graph.keys().map(|m| (m, reach(m))).collect();
    let mut found: BTreeSet<Vec<String>> = BTreeSet::new();
    for (m, from_m) in &reaches {
        let circle: Vec<String> = from_m
            .iter()
            .filter(|n| *n != *m && reaches[n].contains(*m))
            .cloned()
            .chain(std::iter::once((*m).clone()))
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
        if circle.len() > 1 {
            found.insert(circle);
        }
    }
    found.into_iter().collect()
}

#[test]
fn no_two_files_of_proxy_or_cluster_need_each_other() {
    // Each directory, and the directories inside them that hold several files.
    for (name, fewest) in [
        ("proxy", 20),
        ("cluster", 8),
        ("proxy::backend", 4),
        ("proxy::router", 4),
        ("cluster::mover", 3),
    ] {
        let dir = name.split("::").fold(
            Path::new(env!("CARGO_MANIFEST_DIR")).join("src"),
            |d, part| d.join(part),
        );
        let graph = edges(&dir, name);
        assert!(
            graph.len() >= fewest,
            "{name}: {} modules read",
            graph.len()
        );
        let found = circles(&graph);
        assert!(
            found.is_empty(),
            "src/{name}: files that need each other: {found:?}"
        );
    }
}

/// The check finds what it looks for: a circle through a `use` list, a path and a test.
#[test]
fn a_circle_is_found() {
    let dir = std::env::temp_dir().join(format!("slotguard-structure-{}", std::process::id()));
    std::fs::create_dir_all(dir.join("c")).unwrap();
    let files = [
        ("mod.rs", "pub mod a; pub mod b; pub mod c; use a::A;"),
        ("a.rs", "use super::{b::{B, Bee}, Proxy};"),
        (
            "b.rs",
            "fn f() { crate::x::c::g(); } // super::a is a comment",
        ),
        ("c/mod.rs", "#[cfg(test)] mod t { use super::super::a; }"),
    ];
    for (path, text) in files {
        std::fs::write(dir.join(path), text).unwrap();
    }
    // `c`'s test reaches `a` as `super::super::a`.
    let graph = edges(&dir, "x");
    std::fs::remove_dir_all(&dir).unwrap();
    assert_eq!(graph["a"], BTreeSet::from(["b".to_string()]));
    assert_eq!(graph["b"], BTreeSet::from(["c".to_string()]));
    assert_eq!(graph["c"], BTreeSet::from(["a".to_string()]));
    assert_eq!(
        circles(&graph),
        vec![vec!["a".to_string(), "b".to_string(), "c".to_string()]]
    );
}
