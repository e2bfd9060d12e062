//! The boundary guard: the layers ARCHITECTURE.md promises, checked against
//! the source on every `cargo test`.
//!
//! Dependencies run one way, `cli -> {send, portal} -> kafka -> logging ->
//! protocol -> util`; `send` and `portal` never import each other; only
//! `kafka` names the Kafka client libraries, only `protocol::wire` the byte
//! layout's codec, only `cli` clap, and no module below `cli` prints or
//! watches signals. No two modules import each other, however indirectly.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// The layers, lowest first; a module may use its own layer and those below.
const LAYERS: &[&[&str]] = &[
    &["util", "alloc"],
    &["protocol"],
    &["logging", "telemetry"],
    &["kafka"],
    &["send", "portal"],
    &["cli"],
];

/// Text that only some files may hold, as `(pattern, where it may appear)`;
/// a pattern is a plain substring, or a word when it starts with `\b`.
const ONLY_IN: &[(&str, &[&str])] = &[
    ("rskafka::", &["kafka/"]),
    ("kafka_protocol::", &["kafka/"]),
    ("bincode", &["protocol/wire.rs"]),
    ("hpke::", &["protocol/seal/"]),
    ("clap::", &["cli/"]),
    ("crate::cli", &["cli/"]),
    ("\\bhyper", &["cli/", "portal/"]),
    ("tokio::signal", &["cli/"]),
    ("println!", &["cli/"]),
    ("eprintln!", &["cli/"]),
];

/// Files the guard does not read: the executable's entry, the crate root
/// and the helpers only tests compile.
const NOT_LAYERED: &[&str] = &["main.rs", "lib.rs", "test_support.rs", "layering.rs"];

/// One source file: its path under `src/`, module path and text.
struct Source {
    rel: String,
    module: String,
    text: String,
}

fn sources() -> Vec<Source> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    let mut dirs = vec![root.clone()];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path: PathBuf = entry.unwrap().path();
            if path.is_dir() {
                dirs.push(path);
            } else if path.extension().is_some_and(|e| e == "rs") {
                files.push(path);
            }
        }
    }
    files.sort();
    files
        .into_iter()
        .map(|path| {
            let rel = path
                .strip_prefix(&root)
                .unwrap()
                .to_string_lossy()
                .replace('\\', "/");
            let module = rel
                .trim_end_matches(".rs")
                .trim_end_matches("/mod")
                .replace('/', "::");
            let text = std::fs::read_to_string(&path).unwrap();
            Source { rel, module, text }
        })
        .filter(|s| !NOT_LAYERED.contains(&s.rel.as_str()))
        .collect()
}

fn layer_of(module: &str) -> Option<usize> {
    let top = module.split("::").next().unwrap_or(module);
    LAYERS.iter().position(|l| l.contains(&top))
}

/// Lines that are code, not comments.
fn code_lines(text: &str) -> impl Iterator<Item = (usize, &str)> {
    text.lines()
        .enumerate()
        .map(|(i, l)| (i + 1, l))
        .filter(|(_, l)| !l.trim_start().starts_with("//"))
}

/// Every `crate::a::b...` path in `line`, as written.
fn crate_paths(line: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = line;
    while let Some(at) = rest.find("crate::") {
        let before = rest[..at].chars().next_back();
        let tail = &rest[at + "crate::".len()..];
        let len = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == ':'))
            .unwrap_or(tail.len());
        if !before.is_some_and(|c| c.is_ascii_alphanumeric() || c == '_') {
            out.push(tail[..len].trim_end_matches(':').to_string());
        }
        rest = &tail[len..];
    }
    out
}

/// The longest known module a path starts with.
fn module_of<'a>(path: &str, modules: &'a BTreeSet<String>) -> Option<&'a String> {
    let parts: Vec<&str> = path.split("::").collect();
    (1..=parts.len())
        .rev()
        .map(|n| parts[..n].join("::"))
        .find_map(|m| modules.get(&m))
}

fn contains_pattern(line: &str, pattern: &str) -> bool {
    match pattern.strip_prefix("\\b") {
        None => line.contains(pattern),
        Some(word) => line.match_indices(word).any(|(i, _)| {
            !line[..i]
                .chars()
                .next_back()
                .is_some_and(|c| c.is_ascii_alphanumeric() || c == '_')
        }),
    }
}

/// Which modules each module uses.
fn module_graph(sources: &[Source]) -> BTreeMap<String, BTreeSet<String>> {
    let modules: BTreeSet<String> = sources.iter().map(|s| s.module.clone()).collect();
    let mut graph = BTreeMap::new();
    for s in sources {
        let used: BTreeSet<String> = code_lines(&s.text)
            .flat_map(|(_, l)| crate_paths(l))
            .filter_map(|p| module_of(&p, &modules).cloned())
            .filter(|m| *m != s.module)
            .collect();
        graph.insert(s.module.clone(), used);
    }
    graph
}

/// Groups of modules that import each other, directly or not.
fn circles(graph: &BTreeMap<String, BTreeSet<String>>) -> Vec<Vec<String>> {
    let reaches = |from: &String| {
        let mut seen = BTreeSet::new();
        let mut todo = vec![from.clone()];
        while let Some(m) = todo.pop() {
            for next in graph.get(&m).into_iter().flatten() {
                if seen.insert(next.clone()) {
                    todo.push(next.clone());
                }
            }
        }
        seen
    };
    let reach: BTreeMap<&String, BTreeSet<String>> =
        graph.keys().map(|m| (m, reaches(m))).collect();
    let mut found: BTreeSet<Vec<String>> = BTreeSet::new();
    for (m, r) in &reach {
        if !r.contains(*m) {
            continue;
        }
        let mut group: Vec<String> = r
            .iter()
            .filter(|o| reach.get(o).is_some_and(|back| back.contains(*m)))
            .cloned()
            .collect();
        group.sort();
        found.insert(group);
    }
    found.into_iter().collect()
}

#[test]
fn layers_hold() {
    let sources = sources();
    assert!(
        sources.iter().any(|s| s.rel == "protocol/wire.rs"),
        "the guard found no sources under src/"
    );
    let modules: BTreeSet<String> = sources.iter().map(|s| s.module.clone()).collect();
    let mut crossings = Vec::new();
    for s in &sources {
        let Some(own) = layer_of(&s.module) else {
            crossings.push(format!("src/{}: in no layer; add it to LAYERS", s.rel));
            continue;
        };
        let own_top = s.module.split("::").next().unwrap_or_default();
        for (n, line) in code_lines(&s.text) {
            for path in crate_paths(line) {
                let Some(target) = module_of(&path, &modules) else {
                    continue;
                };
                let top = target.split("::").next().unwrap_or_default();
                let Some(theirs) = layer_of(target) else {
                    continue;
                };
                if theirs > own || (theirs == own && top != own_top) {
                    crossings.push(format!(
                        "src/{}:{n}: {} uses crate::{path}, which is not below it",
                        s.rel, s.module
                    ));
                }
            }
        }
    }
    assert!(
        crossings.is_empty(),
        "layers crossed:\n{}",
        crossings.join("\n")
    );
}

#[test]
fn libraries_stay_in_their_layer() {
    let mut misplaced = Vec::new();
    for s in sources() {
        for (pattern, allowed) in ONLY_IN {
            if allowed.iter().any(|a| s.rel.starts_with(a)) {
                continue;
            }
            for (n, line) in s.text.lines().enumerate() {
                if contains_pattern(line, pattern) {
                    misplaced.push(format!("src/{}:{}: {pattern}", s.rel, n + 1));
                }
            }
        }
    }
    assert!(
        misplaced.is_empty(),
        "outside the layer that owns it:\n{}",
        misplaced.join("\n")
    );
}

#[test]
fn no_module_imports_one_that_imports_it() {
    let found = circles(&module_graph(&sources()));
    assert!(
        found.is_empty(),
        "import circles: {}",
        found
            .iter()
            .map(|g| g.join(" <-> "))
            .collect::<Vec<_>>()
            .join("; ")
    );
}

#[test]
fn the_guard_sees_a_crossing_and_a_circle() {
    assert_eq!(
        crate_paths("use crate::portal::policy::{A, B}; x(crate::util::f)"),
        ["portal::policy", "util::f"]
    );
    assert!(crate_paths("let not_crate::x = 1;").is_empty());
    assert!(contains_pattern("use hyper::Uri;", "\\bhyper"));
    assert!(!contains_pattern("use my_hyper::Uri;", "\\bhyper"));
    let graph: BTreeMap<String, BTreeSet<String>> = [
        ("a", vec!["b"]),
        ("b", vec!["c"]),
        ("c", vec!["a"]),
        ("d", vec!["a"]),
    ]
    .into_iter()
    .map(|(m, used)| (m.to_string(), used.into_iter().map(String::from).collect()))
    .collect();
    assert_eq!(circles(&graph), [vec!["a", "b", "c"]]);
    assert!(layer_of("send::ui") > layer_of("kafka::window"));
    assert_eq!(layer_of("send"), layer_of("portal"));
}
