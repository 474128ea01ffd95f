//! What the node's integration tests share: the `jarvis` binary on a home, and a started
//! `jarvis up --json` read up to its "up" line.
// Each test file uses part of this.
#![allow(
    dead_code,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

use std::io::{BufRead, BufReader, Lines};
use std::path::Path;
use std::process::{Child, ChildStdout, Command, Stdio};

use serde_json::Value;

/// The passphrase of every test home.
pub const PASSPHRASE: &str = "pw";

/// `jarvis --home HOME`, with the test passphrase and a low scrypt work factor (new key files
/// only; the library's tests cover the default).
pub fn jarvis(home: &Path) -> Command {
    let mut cmd = Command::new(assert_cmd::cargo::cargo_bin("jarvis"));
    cmd.env_remove("JARVIS_HOME")
        .env("JARVIS_PASSPHRASE", PASSPHRASE)
        .env("JARVIS_KDF_WORK_FACTOR", "10")
        .arg("--home")
        .arg(home);
    cmd
}

/// Spawns `cmd` (a `jarvis … up --json …`) and reads its first line, which must be the "up"
/// event; returns the process, the rest of its output, and that event.
pub fn spawn_up(cmd: &mut Command) -> (Child, Lines<BufReader<ChildStdout>>, Value) {
    let mut child = cmd.stdout(Stdio::piped()).spawn().unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let first: Value = serde_json::from_str(&lines.next().unwrap().unwrap()).unwrap();
    assert_eq!(first["event"], "up", "{first}");
    (child, lines, first)
}

/// Runs `cmd ARGS --json`, which must succeed, and returns its JSON.
pub fn json_ok(mut cmd: Command, args: &[&str]) -> Value {
    let out = cmd.args(args).arg("--json").output().unwrap();
    assert!(
        out.status.success(),
        "jarvis {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// Polls `f` until it returns Some (generous deadline: these machines are shared and slow).
pub fn wait_for<T>(what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}
