//! Architecture invariants (ARCHITECTURE.md, "Invariants"), checked rather than hoped for:
//! `identity` and `crdt` never depend on an async runtime, and their code does no I/O and reads
//! no clock (crdt's sled store, `crdt/src/store/sled.rs`, is the one exception).

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

use std::path::{Path, PathBuf};
use std::process::Command;

/// Read at run time: a test binary reused from a build in another checkout (a shared target
/// directory) must look at this checkout, not at the one it was compiled in.
fn workspace_root() -> PathBuf {
    let manifest_dir =
        std::env::var("CARGO_MANIFEST_DIR").unwrap_or_else(|_| env!("CARGO_MANIFEST_DIR").into());
    Path::new(&manifest_dir).parent().unwrap().to_path_buf()
}

fn cargo() -> String {
    std::env::var("CARGO").unwrap_or_else(|_| env!("CARGO").into())
}

/// The names of every package in `package`'s normal and build dependency graph.
fn dependency_names(package: &str) -> Vec<String> {
    let out = Command::new(cargo())
        .current_dir(workspace_root())
        .args([
            "tree",
            "--offline",
            "-p",
            package,
            "-e",
            "normal,build",
            "--prefix",
            "none",
            "--format",
            "{p}",
        ])
        .output()
        .expect("running cargo tree");
    assert!(
        out.status.success(),
        "cargo tree failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .filter_map(|l| l.split_whitespace().next().map(str::to_owned))
        .collect()
}

#[test]
fn identity_and_crdt_do_not_depend_on_an_async_runtime() {
    for package in ["jarvis-identity", "jarvis-crdt"] {
        let deps = dependency_names(package);
        assert!(deps.len() > 1, "cargo tree listed nothing for {package}");
        for forbidden in ["tokio", "async-std", "smol", "mio", "libp2p-swarm", "quinn"] {
            assert!(
                !deps.iter().any(|d| d == forbidden),
                "{package} depends on {forbidden}: {deps:?}"
            );
        }
    }
}

/// whisper.cpp and llama.cpp each vendor a different ggml, and one binary linking both aborts at
/// run time (testing.md): each engine lives in its own worker crate, and nothing else links one.
#[test]
fn the_two_ml_engines_never_share_a_binary() {
    for (package, allowed) in [
        ("jarvis-llm", Some("llama-cpp-sys-2")),
        ("jarvis-stt", Some("whisper-rs-sys")),
        ("jarvis-node", None),
        ("jarvis-cli", None),
        ("jarvis-bench", None),
        ("jarvis-relay", None),
        ("jarvis-inference", None),
    ] {
        let deps = dependency_names(package);
        assert!(deps.len() > 1, "cargo tree listed nothing for {package}");
        for engine in ["llama-cpp-sys-2", "whisper-rs-sys"] {
            assert_eq!(
                deps.iter().any(|d| d == engine),
                allowed == Some(engine),
                "{package} and {engine}: {deps:?}"
            );
        }
    }
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

#[test]
fn identity_and_crdt_do_no_io_and_read_no_clock() {
    let root = workspace_root();
    let mut files = Vec::new();
    rust_files(&root.join("identity/src"), &mut files);
    rust_files(&root.join("crdt/src"), &mut files);
    // The sled store is the one module of crdt allowed to touch the disk.
    files.retain(|f| *f != root.join("crdt/src/store/sled.rs"));
    assert!(files.len() > 5);
    let forbidden = [
        "std::fs",
        "std::net",
        "std::process",
        "std::env",
        "tokio",
        "SystemTime::now",
        "Instant::now",
        "File::open",
        "File::create",
        "println!",
        "stdin()",
    ];
    for file in files {
        let text = std::fs::read_to_string(&file).unwrap();
        for (n, line) in text.lines().enumerate() {
            let code = line.split("//").next().unwrap_or_default();
            for word in forbidden {
                assert!(
                    !code.contains(word),
                    "{}:{}: `{word}` in a crate that must not do I/O: {line}",
                    file.display(),
                    n + 1
                );
            }
        }
    }
}
