//! The workspace's shape, as rules a test can hold (ARCHITECTURE.md draws the same picture):
//!
//! - The crate graph points one way: each crate may depend on the crates [`ALLOWED`] lists for
//!   it and on no other of ours (a new crate gets a line here, deliberately).
//! - No import cycle between the files of one crate: the picture a newcomer draws from the
//!   `crate::` and `super::` paths is a layering, not a knot (a `mod.rs` counts as a file like any
//!   other: a parent and its child do not lean on each other either). Test modules are left
//!   out (a test may reach anywhere), and so is the crate root (`lib.rs`/`main.rs`, the table of
//!   contents).
//! - The inference workers link only what they use: no async runtime, no HTTP, no archives.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;

/// Each of our crates, and the crates of ours it may depend on (normal dependencies).
const ALLOWED: &[(&str, &[&str])] = &[
    // The sans-IO cores.
    ("jarvis-identity", &[]),
    ("jarvis-crdt", &["jarvis-identity"]),
    // Logs and traces across processes (OpenTelemetry): used by the programs and the node.
    ("jarvis-telemetry", &[]),
    ("jarvis-inference-protocol", &[]),
    ("jarvis-inference", &["jarvis-inference-protocol"]),
    // A home on disk.
    ("jarvis-home", &["jarvis-identity"]),
    // The protocols every peer speaks: no storage, no inference.
    ("jarvis-mesh", &["jarvis-identity", "jarvis-crdt"]),
    // The inference workers and the voice pipeline.
    // The workers link the protocol and their engine only.
    ("jarvis-llm", &["jarvis-inference-protocol"]),
    ("jarvis-stt", &["jarvis-inference-protocol"]),
    ("jarvis-voice", &["jarvis-inference"]),
    // The programs.
    (
        "jarvis-relay",
        &[
            "jarvis-identity",
            "jarvis-crdt",
            "jarvis-home",
            "jarvis-mesh",
            "jarvis-telemetry",
        ],
    ),
    // The node as a library, and the command line over it.
    (
        "jarvis-node",
        &[
            "jarvis-identity",
            "jarvis-crdt",
            "jarvis-home",
            "jarvis-mesh",
            "jarvis-inference",
            "jarvis-voice",
            "jarvis-telemetry",
        ],
    ),
    (
        "jarvis-cli",
        &[
            "jarvis-identity",
            "jarvis-crdt",
            "jarvis-home",
            "jarvis-mesh",
            "jarvis-inference",
            "jarvis-voice",
            "jarvis-node",
            "jarvis-telemetry",
        ],
    ),
    ("jarvis-desktop", &[]),
    // Measuring them.
    // The simulator drives the sans-IO cores themselves (sync, replicas, the relay hub, the
    // offload scheduler).
    (
        "jarvis-sim",
        &[
            "jarvis-identity",
            "jarvis-crdt",
            "jarvis-relay",
            "jarvis-inference",
        ],
    ),
    (
        "jarvis-bench",
        &[
            "jarvis-identity",
            "jarvis-crdt",
            "jarvis-home",
            "jarvis-mesh",
            "jarvis-inference",
            "jarvis-voice",
            "jarvis-sim",
        ],
    ),
    ("jarvis-tidy", &[]),
];

/// What the workers (`jarvis-llm-worker`, `jarvis-stt-worker`) must not link.
const NOT_IN_WORKERS: &[&str] = &["tokio", "reqwest", "zip", "hyper", "axum"];

/// What the node library must not link: parsing a command line is the `jarvis` binary's
/// (`cli/`); a program that embeds the node (the desktop app, a test) does its own. (Progress
/// bars and the passphrase prompt still come in from below: `inference`'s download takes an
/// indicatif bar, `home` prompts with rpassword.) Setting up the process's logging and trace
/// export is the binary's too, but `tracing-subscriber` is linked (tracing-opentelemetry's span
/// extension, which carries trace context, needs its registry): that rule is checked in the
/// sources instead ([`NOT_CALLED_IN_NODE_LIBRARY`]).
const NOT_IN_NODE_LIBRARY: &[&str] = &["clap"];

/// What the node library's sources must not call: the process-wide logging and trace set-up.
const NOT_CALLED_IN_NODE_LIBRARY: &[&str] = &["tracing_subscriber::", "jarvis_telemetry::init"];

fn workspace_root() -> PathBuf {
    // The running package's directory (cargo and nextest set it when running tests), not the
    // one compiled in: the shared target directory may hold a binary built from another
    // checkout (CI's clone, since deleted).
    PathBuf::from(
        std::env::var("CARGO_MANIFEST_DIR").unwrap_or_else(|_| env!("CARGO_MANIFEST_DIR").into()),
    )
    .parent()
    .unwrap()
    .to_path_buf()
}

fn cargo() -> Command {
    let mut command = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    command.current_dir(workspace_root());
    command
}

fn metadata() -> serde_json::Value {
    let out = cargo()
        .args([
            "metadata",
            "--format-version",
            "1",
            "--no-deps",
            "--offline",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn the_crate_graph_points_one_way() {
    let allowed: BTreeMap<&str, BTreeSet<&str>> = ALLOWED
        .iter()
        .map(|(name, deps)| (*name, deps.iter().copied().collect()))
        .collect();
    let mut wrong = Vec::new();
    for package in metadata()["packages"].as_array().unwrap() {
        let name = package["name"].as_str().unwrap();
        let Some(may) = allowed.get(name) else {
            wrong.push(format!("{name} is not in ALLOWED: give it a line"));
            continue;
        };
        for dep in package["dependencies"].as_array().unwrap() {
            let dep_name = dep["name"].as_str().unwrap();
            let normal = dep["kind"].is_null();
            if normal && dep_name.starts_with("jarvis-") && !may.contains(dep_name) {
                wrong.push(format!("{name} depends on {dep_name}"));
            }
        }
    }
    assert!(
        wrong.is_empty(),
        "dependencies against the layering:\n{}",
        wrong.join("\n")
    );
}

/// The source of `file` that counts: no test module, no comments.
fn code_of(text: &str) -> String {
    // Test modules come last in a file, behind a top-level `#[cfg(test)]`.
    let text = text
        .find("\n#[cfg(test)]")
        .map_or(text, |at| text.get(..at).unwrap_or(text));
    text.lines()
        .map(|line| line.split("//").next().unwrap_or(""))
        .collect::<Vec<_>>()
        .join("\n")
}

/// The module path a file holds (`a/b.rs` and `a/b/mod.rs` → `a::b`); `None` for the root.
fn module_of(src: &Path, file: &Path) -> Option<String> {
    let rel = file.strip_prefix(src).ok()?.with_extension("");
    let mut parts: Vec<String> = rel
        .components()
        .map(|c| c.as_os_str().to_string_lossy().into_owned())
        .collect();
    if parts.last().is_some_and(|p| p == "mod") {
        parts.pop();
    }
    if parts.len() == 1 && (parts[0] == "lib" || parts[0] == "main") {
        return None;
    }
    Some(parts.join("::"))
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            // A directory of binaries is its own crate root each.
            if path.file_name().is_some_and(|n| n == "bin") {
                continue;
            }
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The paths `code` names from the crate root: `crate::a::b`, and `super::…` resolved against
/// `module`, with the braces of `use crate::{a, b::c}` expanded one level.
fn crate_paths(module: &str, code: &str) -> Vec<String> {
    let parent: Vec<&str> = {
        let mut parts: Vec<&str> = module.split("::").collect();
        parts.pop();
        parts
    };
    let mut paths = Vec::new();
    for (prefix, base) in [("crate::", Vec::new()), ("super::", parent)] {
        let mut rest = code;
        while let Some(at) = rest.find(prefix) {
            let before = rest[..at].chars().last();
            let after = &rest[at + prefix.len()..];
            rest = after;
            // `self::super::` and the like, or part of a longer name.
            if before.is_some_and(|c| c.is_alphanumeric() || c == '_' || c == ':') {
                continue;
            }
            let items: Vec<String> = if let Some(group) = after.strip_prefix('{') {
                let end = group.find('}').unwrap_or(group.len());
                group[..end].split(',').map(|i| path_at(i.trim())).collect()
            } else {
                vec![path_at(after)]
            };
            for item in items.into_iter().filter(|i| !i.is_empty()) {
                let mut full = base.join("::");
                if !full.is_empty() {
                    full.push_str("::");
                }
                full.push_str(&item);
                paths.push(full);
            }
        }
    }
    paths
}

fn path_at(text: &str) -> String {
    text.chars()
        .take_while(|c| c.is_alphanumeric() || *c == '_' || *c == ':')
        .collect()
}

/// Each module's file-level dependencies within its crate.
fn module_graph(src: &Path) -> BTreeMap<String, BTreeSet<String>> {
    let mut files = Vec::new();
    rust_files(src, &mut files);
    let modules: BTreeMap<String, PathBuf> = files
        .iter()
        .filter_map(|f| module_of(src, f).map(|m| (m, f.clone())))
        .collect();
    let mut graph = BTreeMap::new();
    for (module, file) in &modules {
        let code = code_of(&std::fs::read_to_string(file).unwrap());
        let mut deps = BTreeSet::new();
        for path in crate_paths(module, &code) {
            // The longest prefix that is a module of its own file.
            let segments: Vec<&str> = path.split("::").filter(|s| !s.is_empty()).collect();
            let target = (1..=segments.len())
                .rev()
                .map(|n| segments[..n].join("::"))
                .find(|m| modules.contains_key(m));
            if let Some(target) = target
                && target != *module
            {
                deps.insert(target);
            }
        }
        graph.insert(module.clone(), deps);
    }
    graph
}

/// The strongly connected components with more than one module (Tarjan).
fn cycles(graph: &BTreeMap<String, BTreeSet<String>>) -> Vec<Vec<String>> {
    struct Tarjan<'a> {
        graph: &'a BTreeMap<String, BTreeSet<String>>,
        index: BTreeMap<&'a str, usize>,
        low: BTreeMap<&'a str, usize>,
        stack: Vec<&'a str>,
        on_stack: BTreeSet<&'a str>,
        found: Vec<Vec<String>>,
    }
    impl<'a> Tarjan<'a> {
        fn visit(&mut self, v: &'a str) {
            let i = self.index.len();
            self.index.insert(v, i);
            self.low.insert(v, i);
            self.stack.push(v);
            self.on_stack.insert(v);
            for w in self.graph.get(v).into_iter().flatten() {
                let w = w.as_str();
                if !self.index.contains_key(w) {
                    self.visit(w);
                    let low = self.low[v].min(self.low[w]);
                    self.low.insert(v, low);
                } else if self.on_stack.contains(w) {
                    let low = self.low[v].min(self.index[w]);
                    self.low.insert(v, low);
                }
            }
            if self.low[v] == self.index[v] {
                let mut component = Vec::new();
                while let Some(w) = self.stack.pop() {
                    self.on_stack.remove(w);
                    component.push(w.to_owned());
                    if w == v {
                        break;
                    }
                }
                if component.len() > 1 {
                    component.sort();
                    self.found.push(component);
                }
            }
        }
    }
    let mut tarjan = Tarjan {
        graph,
        index: BTreeMap::new(),
        low: BTreeMap::new(),
        stack: Vec::new(),
        on_stack: BTreeSet::new(),
        found: Vec::new(),
    };
    for v in graph.keys() {
        if !tarjan.index.contains_key(v.as_str()) {
            tarjan.visit(v);
        }
    }
    tarjan.found
}

#[test]
fn no_import_cycle_between_the_files_of_a_crate() {
    let mut knots = Vec::new();
    for package in metadata()["packages"].as_array().unwrap() {
        let name = package["name"].as_str().unwrap();
        let roots: BTreeSet<PathBuf> = package["targets"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|t| {
                t["kind"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .any(|k| k == "lib" || k == "bin")
            })
            .filter_map(|t| {
                Path::new(t["src_path"].as_str()?)
                    .parent()
                    .map(Path::to_path_buf)
            })
            .filter(|dir| dir.ends_with("src"))
            .collect();
        for src in roots {
            let graph = module_graph(&src);
            for cycle in cycles(&graph) {
                let edges: Vec<String> = cycle
                    .iter()
                    .flat_map(|m| {
                        graph[m]
                            .iter()
                            .filter(|d| cycle.contains(d))
                            .map(move |d| format!("{m} → {d}"))
                    })
                    .collect();
                knots.push(format!(
                    "{name}: {}\n  {}",
                    cycle.join(", "),
                    edges.join("\n  ")
                ));
            }
        }
    }
    assert!(knots.is_empty(), "import cycles:\n{}", knots.join("\n"));
}

#[test]
fn the_scan_sees_a_cycle_when_there_is_one() {
    let dir = std::env::temp_dir().join(format!("jarvis-tidy-{}", std::process::id()));
    let src = dir.join("src");
    std::fs::create_dir_all(src.join("b")).unwrap();
    std::fs::write(src.join("lib.rs"), "mod a; mod b; mod c;").unwrap();
    std::fs::write(
        src.join("a.rs"),
        "use crate::b::x::Thing;\n// crate::c in a comment\n",
    )
    .unwrap();
    std::fs::write(src.join("b/mod.rs"), "pub mod x;\npub mod y;").unwrap();
    std::fs::write(
        src.join("b/x.rs"),
        "use crate::{c::f, a};\nuse super::y::Y;",
    )
    .unwrap();
    std::fs::write(src.join("b/y.rs"), "pub struct Y;").unwrap();
    std::fs::write(
        src.join("c.rs"),
        "pub fn f() {}\n#[cfg(test)]\nmod tests { use crate::a; }",
    )
    .unwrap();
    let graph = module_graph(&src);
    assert_eq!(
        cycles(&graph),
        vec![vec!["a".to_owned(), "b::x".to_owned()]]
    );
    assert!(
        graph["c"].is_empty(),
        "test modules and comments do not count"
    );
    assert!(
        graph["b::x"].contains("b::y"),
        "super:: resolved: {graph:?}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

/// The crates `package` links in a normal build (`cargo tree -e normal`).
fn linked(package: &str) -> BTreeSet<String> {
    let out = cargo()
        .args([
            "tree",
            "-p",
            package,
            "-e",
            "normal",
            "--prefix",
            "none",
            "--offline",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let tree = String::from_utf8_lossy(&out.stdout);
    let linked: BTreeSet<String> = tree
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .map(str::to_owned)
        .collect();
    assert!(linked.len() > 1, "cargo tree listed nothing for {package}");
    linked
}

#[test]
fn the_workers_link_only_what_they_use() {
    for worker in ["jarvis-llm", "jarvis-stt"] {
        let linked = linked(worker);
        let unwanted: Vec<&&str> = NOT_IN_WORKERS
            .iter()
            .filter(|c| linked.contains(**c))
            .collect();
        assert!(unwanted.is_empty(), "{worker} links {unwanted:?}");
    }
}

#[test]
fn the_node_library_knows_no_command_line() {
    let node = linked("jarvis-node");
    let unwanted: Vec<&&str> = NOT_IN_NODE_LIBRARY
        .iter()
        .filter(|c| node.contains(**c))
        .collect();
    assert!(unwanted.is_empty(), "jarvis-node links {unwanted:?}");
    let root = workspace_root();
    let mut files = vec![root.join("node/src")];
    while let Some(path) = files.pop() {
        if path.is_dir() {
            files.extend(std::fs::read_dir(&path).unwrap().map(|e| e.unwrap().path()));
        } else if path.extension().is_some_and(|e| e == "rs") {
            let text = std::fs::read_to_string(&path).unwrap();
            for call in NOT_CALLED_IN_NODE_LIBRARY {
                assert!(
                    !text.contains(call),
                    "{} calls {call}: the process's logging is set up by the program",
                    path.display()
                );
            }
        }
    }
    // And the binary does link what it needs: the check above looks at the right names.
    assert!(linked("jarvis-cli").contains("clap"));
}
