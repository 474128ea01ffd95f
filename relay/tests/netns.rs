//! Two devices in network namespaces that cannot route to each other sync through the relay,
//! which sits in a third namespace reachable from both. Linux only; needs root (CI runs as
//! root), and talks only to addresses inside the namespaces this test creates.

#![cfg(target_os = "linux")]
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

fn sh(args: &[&str]) {
    let status = Command::new(args[0]).args(&args[1..]).status().unwrap();
    assert!(status.success(), "`{}` failed", args.join(" "));
}

/// Three namespaces: `a` and `b` each linked to `r` only; `r` does not forward.
struct Namespaces {
    names: [String; 3],
}

impl Namespaces {
    fn create() -> Self {
        let tag = std::process::id() % 100_000;
        let names = [
            format!("jv{tag}a"),
            format!("jv{tag}b"),
            format!("jv{tag}r"),
        ];
        let [a, b, r] = &names;
        for n in &names {
            sh(&["ip", "netns", "add", n]);
            sh(&["ip", "-n", n, "link", "set", "lo", "up"]);
        }
        let ns = Self {
            names: names.clone(),
        };
        for (side, net, ifa, ifr) in [
            (a, "1", format!("va{tag}"), format!("ra{tag}")),
            (b, "2", format!("vb{tag}"), format!("rb{tag}")),
        ] {
            sh(&[
                "ip", "link", "add", &ifa, "netns", side, "type", "veth", "peer", "name", &ifr,
                "netns", r,
            ]);
            sh(&[
                "ip",
                "-n",
                side,
                "addr",
                "add",
                &format!("10.77.{net}.2/24"),
                "dev",
                &ifa,
            ]);
            sh(&[
                "ip",
                "-n",
                r,
                "addr",
                "add",
                &format!("10.77.{net}.1/24"),
                "dev",
                &ifr,
            ]);
            sh(&["ip", "-n", side, "link", "set", &ifa, "up"]);
            sh(&["ip", "-n", r, "link", "set", &ifr, "up"]);
        }
        sh(&[
            "ip",
            "netns",
            "exec",
            r,
            "sysctl",
            "-qw",
            "net.ipv4.ip_forward=0",
        ]);
        ns
    }

    fn exec(&self, which: usize, program: &Path) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.names[which]]).arg(program);
        cmd
    }
}

impl Drop for Namespaces {
    fn drop(&mut self) {
        for n in &self.names {
            let _ = Command::new("ip").args(["netns", "del", n]).status();
        }
    }
}

struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-INT", &self.0.id().to_string()])
            .status();
        let _ = self.0.wait();
    }
}

const NO_MODELS: &str = "/nonexistent/jarvis-models";

fn jarvis_bin() -> PathBuf {
    let path = assert_cmd::cargo::cargo_bin("jarvis");
    assert!(
        path.exists(),
        "{} is not built: run the workspace's tests (cargo nextest run --workspace)",
        path.display()
    );
    path
}

fn jarvis(ns: Option<(&Namespaces, usize)>, home: &Path, args: &[&str]) -> Value {
    let mut cmd = match ns {
        Some((ns, i)) => ns.exec(i, &jarvis_bin()),
        None => Command::new(jarvis_bin()),
    };
    let out = cmd
        .env("JARVIS_PASSPHRASE", "pw")
        .env("JARVIS_KDF_WORK_FACTOR", "10")
        // About sync, not answers: without a model `ask` saves the message and answers nothing.
        .env("JARVIS_MODELS", NO_MODELS)
        .arg("--home")
        .arg(home)
        .args(args)
        .arg("--json")
        .output()
        .unwrap();
    if args.first() == Some(&"ask") {
        let reply: Value = serde_json::from_slice(&out.stdout).unwrap();
        assert!(
            reply["error"].as_str().unwrap().contains("no answer"),
            "{reply}"
        );
        return reply;
    }
    assert!(
        out.status.success(),
        "jarvis {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

fn wait_for<T>(what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + Duration::from_secs(45);
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn devices_on_unroutable_networks_sync_through_the_relay() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let admin = d.join("admin");
    jarvis(None, &admin, &["admin", "init", "--org", "acme"]);
    let token = jarvis(None, &admin, &["admin", "invite", "alice"])["token"]
        .as_str()
        .unwrap()
        .to_owned();
    let laptop = d.join("laptop");
    jarvis(None, &laptop, &["join", &token, "--device-name", "laptop"]);
    let phone = d.join("phone");
    let request = jarvis(None, &phone, &["devices", "request"])["request"]
        .as_str()
        .unwrap()
        .to_owned();
    let bundle = jarvis(None, &laptop, &["devices", "approve", &request])["bundle"]
        .as_str()
        .unwrap()
        .to_owned();
    jarvis(None, &phone, &["join", &bundle]);
    let laptop_id = jarvis(None, &laptop, &["whoami"])["device_id"]
        .as_str()
        .unwrap()
        .to_owned();

    let ns = Namespaces::create();
    let mut relay = ns
        .exec(2, &assert_cmd::cargo::cargo_bin("jarvis-relay"))
        .args(["up", "--listen", "/ip4/0.0.0.0/udp/4001/quic-v1"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(relay.stdout.take().unwrap()).lines();
    let up: Value = serde_json::from_str(&lines.next().unwrap().unwrap()).unwrap();
    let relay_id = up["peer_id"].as_str().unwrap().to_owned();
    let _relay = Killed(relay);

    let start = |i: usize, home: &Path, extra: Vec<String>| {
        let mut cmd = ns.exec(i, &jarvis_bin());
        cmd.env("JARVIS_PASSPHRASE", "pw")
            .env("JARVIS_MODELS", NO_MODELS)
            .arg("--home")
            .arg(home)
            .args(["up", "--json", "--no-mdns", "--api", "127.0.0.1:0"])
            .args(extra)
            .stdout(Stdio::piped())
            .stderr(Stdio::null());
        let mut child = cmd.spawn().unwrap();
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let first: Value = serde_json::from_str(&lines.next().unwrap().unwrap()).unwrap();
        assert_eq!(first["event"], "up");
        Killed(child)
    };
    // The laptop (net 1) takes a reservation on the relay; the phone (net 2) dials it through
    // the relay.
    let _a = start(
        0,
        &laptop,
        vec![
            "--listen".into(),
            "/ip4/10.77.1.2/udp/0/quic-v1".into(),
            "--listen".into(),
            format!("/ip4/10.77.1.1/udp/4001/quic-v1/p2p/{relay_id}/p2p-circuit"),
        ],
    );
    let _b = start(
        1,
        &phone,
        vec![
            "--listen".into(),
            "/ip4/10.77.2.2/udp/0/quic-v1".into(),
            "--peer".into(),
            format!("/ip4/10.77.2.1/udp/4001/quic-v1/p2p/{relay_id}/p2p-circuit/p2p/{laptop_id}"),
        ],
    );
    let status = wait_for(
        "the phone to sync with the laptop through the relay",
        || {
            let s = jarvis(Some((&ns, 1)), &phone, &["status"]);
            let synced = s["peers"]
                .as_array()
                .unwrap()
                .iter()
                .any(|p| p["peer_id"] == laptop_id.as_str() && p["syncing"] == true);
            synced.then_some(s)
        },
    );
    let p = status["peers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["peer_id"] == laptop_id.as_str())
        .unwrap()
        .clone();
    assert_eq!(p["path"], "relayed", "{status}");

    let asked = jarvis(Some((&ns, 0)), &laptop, &["ask", "through the relay"]);
    let conversation = asked["conversation_id"].as_str().unwrap().to_owned();
    wait_for("the phone to see the message", || {
        let shown = ns
            .exec(1, &jarvis_bin())
            .env("JARVIS_PASSPHRASE", "pw")
            .arg("--home")
            .arg(&phone)
            .args(["show", &conversation, "--json"])
            .output()
            .unwrap();
        let v: Value = serde_json::from_slice(&shown.stdout).ok()?;
        (v["messages"][0]["text"] == "through the relay").then_some(())
    });
}
