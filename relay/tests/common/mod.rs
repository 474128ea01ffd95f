//! Helpers shared by the relay's integration tests.

#![allow(dead_code)]

pub mod adversary;
pub mod postgres;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

pub fn jarvis_bin() -> PathBuf {
    let path = assert_cmd::cargo::cargo_bin("jarvis");
    assert!(
        path.exists(),
        "{} is not built: run the workspace's tests (cargo nextest run --workspace)",
        path.display()
    );
    path
}

/// `jarvis-relay --home HOME …` with the test passphrase.
pub fn relay_cmd(home: &Path) -> Command {
    let mut cmd = Command::new(assert_cmd::cargo::cargo_bin("jarvis-relay"));
    cmd.env("JARVIS_PASSPHRASE", "pw")
        .env("JARVIS_KDF_WORK_FACTOR", "10")
        .arg("--home")
        .arg(home);
    cmd
}

/// Runs `cmd ARGS --json`, which must succeed; its JSON.
pub fn json_ok(mut cmd: Command, args: &[&str]) -> Value {
    let out = cmd.args(args).arg("--json").output().unwrap();
    assert!(
        out.status.success(),
        "{args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// Enrols a relay at `home` in the org administered at `admin`: `jarvis-relay request`, the
/// admin's `jarvis admin enroll`, `jarvis-relay install`. Returns the relay's peer id.
pub fn enrol_relay(admin: &Path, home: &Path) -> String {
    enrol_relay_named(admin, home, "relay-1")
}

/// [`enrol_relay`] under another name (several instances of one fleet).
pub fn enrol_relay_named(admin: &Path, home: &Path, name: &str) -> String {
    let request = json_ok(relay_cmd(home), &["request", "--name", name]);
    let mut enroll = Command::new(jarvis_bin());
    enroll
        .env("JARVIS_PASSPHRASE", "pw")
        .arg("--home")
        .arg(admin);
    let bundle = json_ok(
        enroll,
        &[
            "admin",
            "enroll",
            "--request",
            request["request"].as_str().unwrap(),
        ],
    );
    let installed = json_ok(
        relay_cmd(home),
        &["install", bundle["bundle"].as_str().unwrap()],
    );
    assert_eq!(installed["peer_id"], request["peer_id"]);
    installed["peer_id"].as_str().unwrap().to_owned()
}

/// Polls `f` until it returns Some (a generous deadline: these machines are shared and slow).
pub fn wait_for<T>(what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + Duration::from_secs(45);
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// A child stopped with SIGINT (a clean stop) when dropped.
pub struct Running(pub Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-INT", &self.0.id().to_string()])
            .status();
        let _ = self.0.wait();
    }
}

/// The relay (with metrics on a free port), the address devices dial, and the metrics address.
pub fn start_relay(home: &Path) -> (Running, String, String) {
    start_relay_with(home, &[])
}

pub fn start_relay_with(home: &Path, extra: &[&str]) -> (Running, String, String) {
    start_relay_from(relay_cmd(home), extra)
}

/// [`start_relay_with`] from a command of the caller's (another environment).
pub fn start_relay_from(mut cmd: Command, extra: &[&str]) -> (Running, String, String) {
    let mut child = cmd
        .args([
            "up",
            "--listen",
            "/ip4/127.0.0.1/udp/0/quic-v1",
            "--metrics",
            "127.0.0.1:0",
        ])
        .args(extra)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut next = || -> Value { serde_json::from_str(&lines.next().unwrap().unwrap()).unwrap() };
    let up = next();
    assert_eq!(up["event"], "up", "{up}");
    let metrics = next();
    assert_eq!(metrics["event"], "metrics", "{metrics}");
    let listening = next();
    let address = listening["address"].as_str().unwrap().to_owned();
    std::thread::spawn(move || lines.for_each(drop));
    (
        Running(child),
        address,
        metrics["address"].as_str().unwrap().to_owned(),
    )
}

/// `cmd` (a `jarvis --home …` command) running `up --json --no-mdns --no-voice` on a free API
/// port with `args` (listen and peer addresses) added; waits for its "up" line.
pub fn node_up(mut cmd: Command, args: &[&str]) -> Running {
    let mut child = cmd
        .args([
            "up",
            "--json",
            "--no-mdns",
            "--no-voice",
            "--api",
            "127.0.0.1:0",
        ])
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let up: Value = serde_json::from_str(&lines.next().unwrap().unwrap()).unwrap();
    assert_eq!(up["event"], "up", "{up}");
    std::thread::spawn(move || lines.for_each(drop));
    Running(child)
}

/// `jarvis --home HOME …` with the test passphrase, and no model: these tests are about sync,
/// not answers.
pub fn jarvis(home: &Path) -> Command {
    let mut cmd = Command::new(jarvis_bin());
    cmd.env("JARVIS_PASSPHRASE", "pw")
        .env("JARVIS_KDF_WORK_FACTOR", "10")
        // About sync, not answers: without a model `ask` saves the message and answers nothing.
        .env("JARVIS_MODELS", "/nonexistent/jarvis-models")
        .arg("--home")
        .arg(home);
    cmd
}

pub fn ok(home: &Path, args: &[&str]) -> Value {
    json_ok(jarvis(home), args)
}

/// `jarvis ask` without a model: the message is saved (and synced); returns its conversation.
pub fn say(home: &Path, args: &[&str]) -> String {
    let out = jarvis(home)
        .arg("ask")
        .args(args)
        .arg("--json")
        .output()
        .unwrap();
    let reply: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(
        reply["error"].as_str().unwrap().contains("no answer"),
        "{reply}"
    );
    reply["conversation_id"].as_str().unwrap().to_owned()
}

pub fn texts(home: &Path, conversation: &str) -> Vec<String> {
    let shown = jarvis(home)
        .args(["show", conversation, "--json"])
        .output()
        .unwrap();
    if !shown.status.success() {
        return Vec::new();
    }
    let v: Value = serde_json::from_slice(&shown.stdout).unwrap();
    v["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["text"].as_str().unwrap().to_owned())
        .collect()
}

/// `home` becomes another device of `first`'s user, the offline way: `devices request` there,
/// `devices approve` on `first`, `join <bundle>` there.
pub fn approve_offline(first: &Path, home: &Path, name: &str) {
    let request = ok(home, &["devices", "request", "--device-name", name])["request"]
        .as_str()
        .unwrap()
        .to_owned();
    let bundle = ok(first, &["devices", "approve", &request])["bundle"]
        .as_str()
        .unwrap()
        .to_owned();
    ok(home, &["join", &bundle]);
}

/// The relay's Prometheus text.
pub fn scrape(metrics: &str) -> String {
    reqwest::blocking::get(format!("http://{metrics}/metrics"))
        .unwrap()
        .text()
        .unwrap()
}

/// The value of the sample whose line starts with `name` (with its labels), if present.
pub fn sample(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.starts_with(name))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}
