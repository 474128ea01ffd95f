//! Devices on networks that cannot reach each other sync through the relay: two namespaces that
//! cannot route to each other with the relay in a third; then two home networks behind NAT
//! routers (iptables MASQUERADE), where the relayed connection is hole-punched into a direct one.
//! Linux only; needs root (CI runs as root), and talks only to addresses inside the namespaces
//! these tests create.

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

mod common;
use common::{jarvis_bin, wait_for};

fn sh(args: &[&str]) {
    let status = Command::new(args[0]).args(&args[1..]).status().unwrap();
    assert!(status.success(), "`{}` failed", args.join(" "));
}

/// Runs a command inside namespace `ns`.
fn sh_in(ns: &str, args: &[&str]) {
    let mut all = vec!["ip", "netns", "exec", ns];
    all.extend_from_slice(args);
    sh(&all);
}

/// Network namespaces, deleted on drop. Index 0 is the laptop's, 1 the phone's, 2 the relay's
/// (reachable as 10.77.1.1 from the laptop's side and 10.77.2.1 from the phone's); routers
/// follow.
struct Namespaces {
    names: Vec<String>,
}

impl Namespaces {
    fn new(roles: &[&str]) -> Self {
        let tag = std::process::id() % 100_000;
        let mut ns = Self { names: Vec::new() };
        for role in roles {
            let name = format!("jv{tag}{role}");
            sh(&["ip", "netns", "add", &name]);
            // Pushed at once, so a failure below still deletes it.
            ns.names.push(name.clone());
            sh(&["ip", "-n", &name, "link", "set", "lo", "up"]);
        }
        ns
    }

    /// A veth pair from namespace `a` (address `addr_a`) to namespace `b` (address `addr_b`).
    fn link(&self, a: usize, ifa: &str, addr_a: &str, b: usize, ifb: &str, addr_b: &str) {
        let (na, nb) = (&self.names[a], &self.names[b]);
        sh(&[
            "ip", "link", "add", ifa, "netns", na, "type", "veth", "peer", "name", ifb, "netns", nb,
        ]);
        for (n, ifname, addr) in [(na, ifa, addr_a), (nb, ifb, addr_b)] {
            sh(&["ip", "-n", n, "addr", "add", addr, "dev", ifname]);
            sh(&["ip", "-n", n, "link", "set", ifname, "up"]);
        }
    }

    /// `a` and `b` each linked to `r` only; `r` does not forward, so they cannot reach each
    /// other.
    fn unroutable() -> Self {
        let ns = Self::new(&["a", "b", "r"]);
        ns.link(0, "eth0", "10.77.1.2/24", 2, "ra", "10.77.1.1/24");
        ns.link(1, "eth0", "10.77.2.2/24", 2, "rb", "10.77.2.1/24");
        sh_in(&ns.names[2], &["sysctl", "-qw", "net.ipv4.ip_forward=0"]);
        ns
    }

    /// Two home networks (192.168.1.0/24, 192.168.2.0/24), each behind a NAT router whose
    /// public side (10.77.1.2, 10.77.2.2) is linked to `r`; `r` routes between the public
    /// addresses, like the internet, and runs the relay. The routers masquerade outgoing traffic
    /// and drop unsolicited incoming traffic, like home routers: nothing can dial a device, but
    /// a device's outgoing UDP opens a mapping that answers can come back through.
    fn behind_nats() -> Self {
        let ns = Self::new(&["a", "b", "r", "na", "nb"]);
        sh_in(&ns.names[2], &["sysctl", "-qw", "net.ipv4.ip_forward=1"]);
        for (device, router, net) in [(0, 3, "1"), (1, 4, "2")] {
            let r = ns.names[router].clone();
            ns.link(
                router,
                "wan",
                &format!("10.77.{net}.2/24"),
                2,
                &format!("r{net}"),
                &format!("10.77.{net}.1/24"),
            );
            ns.link(
                device,
                "eth0",
                &format!("192.168.{net}.2/24"),
                router,
                "lan",
                &format!("192.168.{net}.1/24"),
            );
            sh(&[
                "ip",
                "-n",
                &ns.names[device],
                "route",
                "add",
                "default",
                "via",
                &format!("192.168.{net}.1"),
            ]);
            sh(&[
                "ip",
                "-n",
                &r,
                "route",
                "add",
                "default",
                "via",
                &format!("10.77.{net}.1"),
            ]);
            sh_in(&r, &["sysctl", "-qw", "net.ipv4.ip_forward=1"]);
            sh_in(
                &r,
                &[
                    "iptables",
                    "-t",
                    "nat",
                    "-A",
                    "POSTROUTING",
                    "-o",
                    "wan",
                    "-j",
                    "MASQUERADE",
                ],
            );
            // Dropped before conntrack confirms them, unsolicited packets leave no state behind
            // that would make the router pick another port for the device's own punch.
            for chain in ["INPUT", "FORWARD"] {
                sh_in(
                    &r,
                    &[
                        "iptables",
                        "-A",
                        chain,
                        "-i",
                        "wan",
                        "-m",
                        "conntrack",
                        "--ctstate",
                        "NEW",
                        "-j",
                        "DROP",
                    ],
                );
            }
        }
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
        // Deleting a namespace removes its veth pairs and iptables rules with it.
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

/// Alice's laptop (which holds her user key) and phone, enrolled in org acme. Returns their
/// homes and the laptop's device id.
fn enrol(d: &Path) -> (PathBuf, PathBuf, String) {
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
    (laptop, phone, laptop_id)
}

/// Keeps reading a child's output, so that its later lines do not fail on a closed pipe.
fn drain(lines: impl Iterator<Item = std::io::Result<String>> + Send + 'static) {
    std::thread::spawn(move || lines.for_each(drop));
}

/// The relay in namespace 2, enrolled in the org administered in `d/admin`, and its peer id.
fn start_relay(ns: &Namespaces, d: &Path) -> (Killed, String) {
    let home = d.join("relay");
    common::enrol_relay(&d.join("admin"), &home);
    let mut relay = ns
        .exec(2, &assert_cmd::cargo::cargo_bin("jarvis-relay"))
        .env("JARVIS_PASSPHRASE", "pw")
        .arg("--home")
        .arg(&home)
        .args(["up", "--listen", "/ip4/0.0.0.0/udp/4001/quic-v1"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(relay.stdout.take().unwrap()).lines();
    let up: Value = serde_json::from_str(&lines.next().unwrap().unwrap()).unwrap();
    let relay_id = up["peer_id"].as_str().unwrap().to_owned();
    drain(lines);
    (Killed(relay), relay_id)
}

fn start_node(ns: &Namespaces, i: usize, home: &Path, extra: &[String]) -> Killed {
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
    drain(lines);
    Killed(child)
}

/// The laptop (namespace 0, listening on `laptop_ip`) takes a reservation on the relay; the
/// phone (namespace 1) dials it through the relay.
fn start_both(
    ns: &Namespaces,
    relay_id: &str,
    (laptop, laptop_ip): (&Path, &str),
    (phone, phone_ip): (&Path, &str),
    laptop_id: &str,
) -> [Killed; 2] {
    let a = start_node(
        ns,
        0,
        laptop,
        &[
            "--listen".into(),
            format!("/ip4/{laptop_ip}/udp/0/quic-v1"),
            "--listen".into(),
            format!("/ip4/10.77.1.1/udp/4001/quic-v1/p2p/{relay_id}/p2p-circuit"),
        ],
    );
    let b = start_node(
        ns,
        1,
        phone,
        &[
            "--listen".into(),
            format!("/ip4/{phone_ip}/udp/0/quic-v1"),
            "--peer".into(),
            format!("/ip4/10.77.2.1/udp/4001/quic-v1/p2p/{relay_id}/p2p-circuit/p2p/{laptop_id}"),
        ],
    );
    [a, b]
}

/// The first `status` of `home` (in namespace `i`) in which `peer` is authenticated and
/// syncing and `ok` holds for its entry; returns that entry.
fn wait_for_peer(
    ns: &Namespaces,
    i: usize,
    home: &Path,
    peer: &str,
    what: &str,
    ok: impl Fn(&Value) -> bool,
) -> Value {
    let deadline = Instant::now() + Duration::from_secs(45);
    loop {
        let s = jarvis(Some((ns, i)), home, &["status"]);
        if let Some(p) = s["peers"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["peer_id"] == peer && p["syncing"] == true && ok(p))
        {
            return p.clone();
        }
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what}; last status: {s}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// A message asked on the laptop shows up on the phone.
fn laptop_message_reaches_phone(ns: &Namespaces, laptop: &Path, phone: &Path, text: &str) {
    let asked = jarvis(Some((ns, 0)), laptop, &["ask", text]);
    let conversation = asked["conversation_id"].as_str().unwrap().to_owned();
    wait_for("the phone to see the message", || {
        let shown = ns
            .exec(1, &jarvis_bin())
            .env("JARVIS_PASSPHRASE", "pw")
            .arg("--home")
            .arg(phone)
            .args(["show", &conversation, "--json"])
            .output()
            .unwrap();
        let v: Value = serde_json::from_slice(&shown.stdout).ok()?;
        (v["messages"][0]["text"] == text).then_some(())
    });
}

#[test]
fn devices_on_unroutable_networks_sync_through_the_relay() {
    let dir = tempfile::tempdir().unwrap();
    let (laptop, phone, laptop_id) = enrol(dir.path());
    let ns = Namespaces::unroutable();
    let (_relay, relay_id) = start_relay(&ns, dir.path());
    let _nodes = start_both(
        &ns,
        &relay_id,
        (&laptop, "10.77.1.2"),
        (&phone, "10.77.2.2"),
        &laptop_id,
    );
    let p = wait_for_peer(
        &ns,
        1,
        &phone,
        &laptop_id,
        "the phone to sync with the laptop through the relay",
        |_| true,
    );
    // No route between the two networks: relayed it stays.
    assert_eq!(p["path"], "relayed", "{p}");
    laptop_message_reaches_phone(&ns, &laptop, &phone, "through the relay");
}

#[test]
fn devices_behind_nat_are_hole_punched_to_a_direct_connection() {
    let dir = tempfile::tempdir().unwrap();
    let (laptop, phone, laptop_id) = enrol(dir.path());
    let phone_id = jarvis(None, &phone, &["whoami"])["device_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let ns = Namespaces::behind_nats();
    let (_relay, relay_id) = start_relay(&ns, dir.path());
    let _nodes = start_both(
        &ns,
        &relay_id,
        (&laptop, "192.168.1.2"),
        (&phone, "192.168.2.2"),
        &laptop_id,
    );
    // They meet through the relay, then DCUtR punches through both NATs; both sides say so,
    // and the phone now reaches the laptop at its router's public address, not the relay.
    let p = wait_for_peer(
        &ns,
        1,
        &phone,
        &laptop_id,
        "the phone's connection to the laptop to be hole-punched",
        |p| p["path"] == "hole-punched",
    );
    let address = p["address"].as_str().unwrap();
    assert!(
        address.starts_with("/ip4/10.77.1.2/udp/") && !address.contains("p2p-circuit"),
        "{p}"
    );
    wait_for_peer(
        &ns,
        0,
        &laptop,
        &phone_id,
        "the laptop's connection to the phone to be hole-punched",
        |p| p["path"] == "hole-punched",
    );
    laptop_message_reaches_phone(&ns, &laptop, &phone, "through the hole");
}
