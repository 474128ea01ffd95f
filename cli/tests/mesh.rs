//! The mesh with real processes over real QUIC on loopback: two devices of one user sync a
//! conversation both ways; a device of another org, a device of another user and a revoked device
//! get none of it.

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

use common::wait_for;

fn jarvis(home: &Path) -> Command {
    let mut cmd = common::jarvis(home);
    // These tests are about sync: no model, so `ask` saves the question and answers nothing
    // (the answer path has its own tests in llm.rs).
    cmd.env("JARVIS_MODELS", "/nonexistent/jarvis-models");
    cmd
}

/// `jarvis ask` with no model: the message is saved (and synced), the command says there is no
/// answer and fails.
fn say(home: &Path, args: &[&str]) -> Value {
    let out = jarvis(home)
        .arg("ask")
        .args(args)
        .arg("--json")
        .output()
        .unwrap();
    let reply: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "jarvis ask {args:?}: {e}: {}",
            String::from_utf8_lossy(&out.stderr)
        )
    });
    assert!(!out.status.success(), "no model, so no answer: {reply}");
    assert!(
        reply["error"].as_str().unwrap().contains("no answer"),
        "{reply}"
    );
    assert!(reply["conversation_id"].is_string(), "{reply}");
    reply
}

fn ok(home: &Path, args: &[&str]) -> Value {
    common::json_ok(jarvis(home), args)
}

/// A running `jarvis up`, stopped (SIGINT, then reaped) when dropped.
struct Running {
    child: Child,
    home: PathBuf,
}

impl Running {
    fn start(home: &Path, peers: &[String]) -> Self {
        Self::start_on(home, "/ip4/127.0.0.1/udp/0/quic-v1", peers)
    }

    fn start_on(home: &Path, listen: &str, peers: &[String]) -> Self {
        let mut cmd = jarvis(home);
        cmd.args([
            "up",
            "--json",
            "--no-mdns",
            "--api",
            "127.0.0.1:0",
            "--listen",
            listen,
        ]);
        for p in peers {
            cmd.args(["--peer", p]);
        }
        let (child, _, _) = common::spawn_up(cmd.stderr(Stdio::null()));
        Self {
            child,
            home: home.to_path_buf(),
        }
    }

    fn status(&self) -> Value {
        ok(&self.home, &["status"])
    }

    /// The node's QUIC address, once it listens.
    fn address(&self) -> String {
        wait_for("a listen address", || {
            self.status()["listen"]
                .as_array()
                .and_then(|a| a.first())
                .and_then(Value::as_str)
                .map(str::to_owned)
        })
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-INT", &self.child.id().to_string()])
            .status();
        let _ = self.child.wait();
    }
}

fn peer<'a>(status: &'a Value, id: &str) -> Option<&'a Value> {
    status["peers"]
        .as_array()?
        .iter()
        .find(|p| p["peer_id"] == id)
}

/// An org with one admin; returns the admin home.
fn org(dir: &Path, name: &str) -> PathBuf {
    let admin = dir.join(format!("{name}-admin"));
    ok(&admin, &["admin", "init", "--org", name]);
    admin
}

/// A user's first device, joined with an invite.
fn first_device(dir: &Path, admin: &Path, user: &str, device: &str) -> PathBuf {
    let token = ok(admin, &["admin", "invite", user])["token"]
        .as_str()
        .unwrap()
        .to_owned();
    let home = dir.join(device);
    ok(&home, &["join", &token, "--device-name", device]);
    home
}

/// Another device of the same user, paired offline from `first`.
fn paired_device(dir: &Path, first: &Path, device: &str) -> PathBuf {
    let home = dir.join(device);
    let request = ok(&home, &["devices", "request", "--device-name", device])["request"]
        .as_str()
        .unwrap()
        .to_owned();
    let bundle = ok(first, &["devices", "approve", &request])["bundle"]
        .as_str()
        .unwrap()
        .to_owned();
    ok(&home, &["join", &bundle]);
    home
}

fn device_id(home: &Path) -> String {
    ok(home, &["whoami"])["device_id"]
        .as_str()
        .unwrap()
        .to_owned()
}

fn texts(home: &Path, conversation: &str) -> Vec<String> {
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

#[test]
fn two_devices_of_one_user_sync_and_strangers_get_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let acme = org(d, "acme");
    let laptop = first_device(d, &acme, "alice", "laptop");
    let phone = paired_device(d, &laptop, "phone");
    let old_tablet = paired_device(d, &laptop, "tablet");
    let carol = first_device(d, &acme, "carol", "carol-laptop");
    // Another user who happens to be named alice too (a second invite for the name): the same
    // user is the same user key, not the same name (#20, finding 3).
    let other_alice = first_device(d, &acme, "alice", "other-alice-laptop");
    let globex = org(d, "globex");
    let mallory = first_device(d, &globex, "mallory", "mallory-laptop");

    // The admin revokes alice's tablet; the laptop has heard of it (revocations reach devices
    // through the relay; here the file is handed over).
    let tablet_id = device_id(&old_tablet);
    ok(&acme, &["admin", "revoke", "--device", &tablet_id]);
    std::fs::copy(acme.join("revocations"), laptop.join("revocations")).unwrap();

    let a = Running::start(&laptop, &[]);
    let a_addr = a.address();
    let b = Running::start(&phone, std::slice::from_ref(&a_addr));
    let phone_id = device_id(&phone);
    wait_for("the phone to authenticate and sync", || {
        peer(&a.status(), &phone_id)
            .filter(|p| p["syncing"] == true)
            .map(|_| ())
    });
    let p = peer(&a.status(), &phone_id).cloned().unwrap();
    assert_eq!(p["role"], "own-device");
    assert_eq!(p["path"], "direct");
    assert_eq!(p["authenticated"], true);

    // An edit on one device reaches the other...
    let asked = say(&laptop, &["what is the capital of France?"]);
    let conversation = asked["conversation_id"].as_str().unwrap().to_owned();
    wait_for("the phone to see the laptop's message", || {
        (texts(&phone, &conversation) == ["what is the capital of France?"]).then_some(())
    });
    // ...and back.
    say(&phone, &["and of Italy?", "--conversation", &conversation]);
    wait_for("the laptop to see the phone's message", || {
        (texts(&laptop, &conversation).len() == 2).then_some(())
    });
    // The phone lists the laptop among alice's devices, with when they last synced.
    let laptop_id = device_id(&laptop);
    wait_for("the phone to record its last sync with the laptop", || {
        let devices = ok(&phone, &["devices"]);
        devices["devices"]
            .as_array()
            .unwrap()
            .iter()
            .find(|d| d["id"] == laptop_id.as_str() && d["last_sync"].is_string())
            .map(|d| assert_eq!(d["name"], "laptop"))
    });
    let listed = ok(&phone, &["conversations"]);
    assert_eq!(listed["conversations"][0]["id"], conversation.as_str());
    assert_eq!(listed["conversations"][0]["messages"], 2);

    // Strangers dial the laptop: each is refused or kept out of sync, and learns nothing.
    let strangers = [
        (mallory.clone(), "another org"),
        (carol.clone(), "another user"),
        (other_alice.clone(), "another user named alice"),
        (old_tablet.clone(), "revoked"),
    ];
    for (home, why) in &strangers {
        let s = Running::start(home, std::slice::from_ref(&a_addr));
        let id = device_id(home);
        // The stranger's node dials the laptop and the handshake runs; a refused peer may be
        // disconnected before it ever shows up in `status`, so wait a while either way.
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            let met = peer(&a.status(), &id)
                .is_some_and(|p| p["authenticated"] == true || p["refused"].is_string());
            if met {
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        std::thread::sleep(Duration::from_millis(1500));
        let status = a.status();
        if let Some(p) = peer(&status, &id) {
            assert_ne!(
                p["syncing"], true,
                "{why} device is syncing with the laptop"
            );
        }
        if *why == "revoked" {
            // The revoked device is told why (not just cut off), and its user sees it.
            let error = wait_for("the revoked tablet to hear why it was refused", || {
                s.status()["dialing"]
                    .as_array()?
                    .iter()
                    .find_map(|d| d["error"].as_str().map(str::to_owned))
                    .filter(|e| e.starts_with("the peer refused us"))
            });
            assert!(error.contains("revoked"), "{error}");
        }
        let theirs = ok(home, &["conversations"]);
        assert_eq!(
            theirs["conversations"].as_array().unwrap().len(),
            0,
            "{why} device got conversations"
        );
        assert!(
            texts(home, &conversation).is_empty(),
            "{why} device can read the conversation"
        );
    }

    // The phone goes offline, the laptop keeps writing; the phone catches up when it returns.
    drop(b);
    say(
        &laptop,
        &["while you were away", "--conversation", &conversation],
    );
    let _b = Running::start(&phone, &[a_addr]);
    wait_for("the phone to catch up", || {
        (texts(&phone, &conversation).len() == 3).then_some(())
    });
    assert_eq!(texts(&phone, &conversation)[2], "while you were away");
}

#[test]
fn devices_sync_over_tcp_when_udp_is_not_available() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let acme = org(d, "acme");
    let laptop = first_device(d, &acme, "alice", "laptop");
    let phone = paired_device(d, &laptop, "phone");
    let tcp = "/ip4/127.0.0.1/tcp/0";
    let a = Running::start_on(&laptop, tcp, &[]);
    let a_addr = a.address();
    assert!(a_addr.contains("/tcp/"), "{a_addr}");
    let _b = Running::start_on(&phone, tcp, &[a_addr]);
    let asked = say(&laptop, &["over tcp"]);
    let conversation = asked["conversation_id"].as_str().unwrap().to_owned();
    wait_for("the phone to see the message over TCP", || {
        (texts(&phone, &conversation) == ["over tcp"]).then_some(())
    });
}

#[test]
fn a_new_device_pairs_over_the_network_with_a_code_and_then_syncs() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let acme = org(d, "acme");
    let laptop = first_device(d, &acme, "alice", "laptop");
    let tablet = d.join("tablet");

    let mut pair = jarvis(&laptop)
        .args([
            "devices",
            "pair",
            "--json",
            "--listen",
            "/ip4/127.0.0.1/udp/0/quic-v1",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(pair.stdout.take().unwrap()).lines();
    let first: Value = serde_json::from_str(&lines.next().unwrap().unwrap()).unwrap();
    let code = first["code"].as_str().unwrap().to_owned();
    assert!(code.starts_with("jvpair_"));
    assert!(first["expires_at"].is_string());

    let joined = ok(&tablet, &["join", &code, "--device-name", "tablet"]);
    assert_eq!(joined["user"], "alice");
    let last: Value = serde_json::from_str(&lines.next().unwrap().unwrap()).unwrap();
    assert_eq!(last["joined"], joined["device_id"]);
    assert!(pair.wait().unwrap().success());

    // The code works once: the laptop no longer listens for it.
    let again = jarvis(&d.join("tablet-2"))
        .args(["join", &code])
        .output()
        .unwrap();
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("could not reach"));

    // The paired tablet is a full device of alice: it syncs with the laptop.
    assert_eq!(
        ok(&laptop, &["whoami"])["user"],
        ok(&tablet, &["whoami"])["user"]
    );
    let a = Running::start(&laptop, &[]);
    let _t = Running::start(&tablet, std::slice::from_ref(&a.address()));
    let asked = say(&laptop, &["paired over the mesh"]);
    let conversation = asked["conversation_id"].as_str().unwrap().to_owned();
    wait_for("the tablet to see the laptop's message", || {
        (texts(&tablet, &conversation) == ["paired over the mesh"]).then_some(())
    });
}

/// A raw HTTP GET against a running node's local API, with or without its token.
fn api_get(home: &Path, path: &str, with_token: bool) -> (u16, String) {
    use std::io::{Read, Write};
    let info: Value =
        serde_json::from_slice(&std::fs::read(home.join("api.json")).unwrap()).unwrap();
    let addr = info["addr"].as_str().unwrap().to_owned();
    let token = String::from_utf8(std::fs::read(home.join("api-token")).unwrap()).unwrap();
    let mut stream = std::net::TcpStream::connect(&addr).unwrap();
    let auth = if with_token {
        format!("Authorization: Bearer {}\r\n", token.trim())
    } else {
        String::new()
    };
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\n{auth}Connection: close\r\n\r\n"
    )
    .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    let status = response.split_whitespace().nth(1).unwrap().parse().unwrap();
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (status, body)
}

/// Opens the SSE stream of a running node's API; returns a reader past the response headers.
fn open_events(home: &Path) -> BufReader<std::net::TcpStream> {
    use std::io::Write;
    let info: Value =
        serde_json::from_slice(&std::fs::read(home.join("api.json")).unwrap()).unwrap();
    let addr = info["addr"].as_str().unwrap().to_owned();
    let token = String::from_utf8(std::fs::read(home.join("api-token")).unwrap()).unwrap();
    let mut stream = std::net::TcpStream::connect(&addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    write!(
        stream,
        "GET /v1/events HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {}\r\n\r\n",
        token.trim()
    )
    .unwrap();
    let mut reader = BufReader::new(stream);
    let mut status = String::new();
    reader.read_line(&mut status).unwrap();
    assert!(status.contains(" 200 "), "{status}");
    reader
}

/// Reads events until one matches (the read timeout bounds the wait).
fn next_event(
    mut reader: BufReader<std::net::TcpStream>,
    wanted: impl Fn(&Value) -> bool,
) -> Value {
    loop {
        let mut line = String::new();
        let n = reader
            .read_line(&mut line)
            .expect("an event before the timeout");
        assert!(n > 0, "the event stream ended");
        if let Some(data) = line.trim().strip_prefix("data:") {
            let event: Value = serde_json::from_str(data.trim()).unwrap();
            if wanted(&event) {
                return event;
            }
        }
    }
}

fn metric(body: &str, name: &str) -> f64 {
    body.lines()
        .find(|l| l.starts_with(name) && !l.starts_with('#'))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

#[test]
fn the_local_api_wants_its_token_and_serves_metrics() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let acme = org(d, "acme");
    let laptop = first_device(d, &acme, "alice", "laptop");
    let phone = paired_device(d, &laptop, "phone");
    let globex = org(d, "globex");
    let mallory = first_device(d, &globex, "mallory", "mallory-laptop");
    let a = Running::start(&laptop, &[]);
    let _b = Running::start(&phone, std::slice::from_ref(&a.address()));
    wait_for("the devices to start syncing", || {
        let status = ok(&phone, &["status"]);
        let syncing = status["peers"]
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p["syncing"] == true);
        syncing.then_some(())
    });

    // Subscribe to the phone's events, then write on the laptop: the phone streams the change.
    let events = open_events(&phone);
    let conversation = say(&laptop, &["count me"])["conversation_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let event = next_event(events, |e| {
        e["type"] == "conversation" && e["id"] == conversation.as_str() && e["messages"] == 1
    });
    assert_eq!(event["title"], "count me");
    wait_for("the phone to get the message", || {
        (texts(&phone, &conversation).len() == 1).then_some(())
    });

    let (status, _) = api_get(&laptop, "/v1/status", false);
    assert_eq!(status, 401);
    let (status, body) = api_get(&phone, "/metrics", true);
    assert_eq!(status, 200);
    assert!(
        metric(&body, "jarvis_changes_stored_total") >= 2.0,
        "{body}"
    );
    assert!(
        metric(&body, "jarvis_sync_messages_received_total") >= 1.0,
        "{body}"
    );

    let _m = Running::start(&mallory, std::slice::from_ref(&a.address()));
    wait_for("the laptop to count a refused peer", || {
        let (_, body) = api_get(&laptop, "/metrics", true);
        (metric(&body, "jarvis_peers_refused_total") >= 1.0).then_some(())
    });
}

#[test]
fn learning_a_revocation_rotates_keys_and_the_remaining_devices_keep_syncing() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let acme = org(d, "acme");
    let laptop = first_device(d, &acme, "alice", "laptop");
    let phone = paired_device(d, &laptop, "phone");
    let tablet = paired_device(d, &laptop, "tablet");
    let a = Running::start(&laptop, &[]);
    let a_addr = a.address();
    let conversation = say(&laptop, &["before"])["conversation_id"]
        .as_str()
        .unwrap()
        .to_owned();
    {
        // The tablet syncs once, so the laptop knows it as one of alice's devices.
        let _t = Running::start(&tablet, std::slice::from_ref(&a_addr));
        wait_for("the tablet to sync", || {
            (texts(&tablet, &conversation) == ["before"]).then_some(())
        });
    }
    // The admin revokes the tablet; the phone has heard of it and tells the laptop in its hello.
    let tablet_id = device_id(&tablet);
    ok(
        &acme,
        &[
            "admin", "revoke", "--device", &tablet_id, "--reason", "stolen",
        ],
    );
    std::fs::copy(acme.join("revocations"), phone.join("revocations")).unwrap();
    let _b = Running::start(&phone, std::slice::from_ref(&a_addr));
    wait_for("the laptop to learn the revocation", || {
        (a.status()["revocations"] == 1).then_some(())
    });
    say(&laptop, &["after", "--conversation", &conversation]);
    wait_for(
        "the phone to read what was written after the rotation",
        || (texts(&phone, &conversation) == ["before", "after"]).then_some(()),
    );
    // The tablet is refused from now on, and learns nothing new.
    let _t = Running::start(&tablet, std::slice::from_ref(&a_addr));
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(texts(&tablet, &conversation), ["before"]);
    let devices: Value =
        serde_json::from_slice(&std::fs::read(laptop.join("devices.json")).unwrap()).unwrap();
    assert!(devices.get(&tablet_id).is_none(), "{devices}");
}

#[test]
fn ask_works_without_a_running_node_and_syncs_when_it_starts() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let acme = org(d, "acme");
    let laptop = first_device(d, &acme, "alice", "laptop");
    let phone = paired_device(d, &laptop, "phone");
    // No node runs: the message goes straight into the laptop's store.
    let asked = say(&laptop, &["written offline"]);
    let conversation = asked["conversation_id"].as_str().unwrap().to_owned();
    assert_eq!(texts(&laptop, &conversation), ["written offline"]);
    assert_eq!(
        ok(&laptop, &["conversations"])["conversations"][0]["messages"],
        1
    );
    // When both devices run, it reaches the phone.
    let a = Running::start(&laptop, &[]);
    let _b = Running::start(&phone, std::slice::from_ref(&a.address()));
    wait_for("the phone to get the offline message", || {
        (texts(&phone, &conversation) == ["written offline"]).then_some(())
    });
}
