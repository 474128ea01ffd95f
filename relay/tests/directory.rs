//! The relay's directory and roster over real QUIC on loopback, with real processes: an invite
//! claimed a second time is refused by the relay and the admin sees both claims in `members` and
//! the audit log; devices see their own user's devices online (and nobody else's) and the org's
//! GPU peers, and a device with no model of its own finds a GPU peer through the relay alone and
//! is answered by it (the real SmolLM2 model).

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use serde_json::Value;

mod common;
use common::{Running, jarvis_bin, json_ok, relay_cmd, start_relay, wait_for};

const NO_MODELS: &str = "/nonexistent/jarvis-models";

/// `jarvis --home HOME` with the test passphrase; without a model unless `models` says where.
fn jarvis(home: &Path) -> Command {
    let mut cmd = Command::new(jarvis_bin());
    cmd.env("JARVIS_PASSPHRASE", "pw")
        .env("JARVIS_KDF_WORK_FACTOR", "10")
        .env("JARVIS_MODELS", NO_MODELS)
        .env_remove("JARVIS_MODEL")
        .env("JARVIS_LLM_THREADS", "1")
        .arg("--home")
        .arg(home);
    cmd
}

fn ok(home: &Path, args: &[&str]) -> Value {
    json_ok(jarvis(home), args)
}

/// An org with an enrolled, running relay that its invites and bundles carry.
struct Org {
    admin: PathBuf,
    dir: PathBuf,
    relay_home: PathBuf,
    _relay: Running,
}

impl Org {
    fn new(dir: &Path) -> Self {
        let admin = dir.join("admin");
        ok(&admin, &["admin", "init", "--org", "acme"]);
        let relay_home = dir.join("relay");
        common::enrol_relay(&admin, &relay_home);
        let (relay, address, _) = start_relay(&relay_home);
        ok(&admin, &["admin", "relays", "add", &address]);
        Self {
            admin,
            dir: dir.to_path_buf(),
            relay_home,
            _relay: relay,
        }
    }

    fn invite(&self, user: &str) -> String {
        ok(&self.admin, &["admin", "invite", user])["token"]
            .as_str()
            .unwrap()
            .to_owned()
    }

    fn join(&self, token: &str, device: &str) -> PathBuf {
        let home = self.dir.join(device);
        ok(&home, &["join", token, "--device-name", device]);
        home
    }

    /// A device paired from `from` (the same user).
    fn pair(&self, from: &Path, device: &str) -> PathBuf {
        let home = self.dir.join(device);
        let request = ok(&home, &["devices", "request", "--device-name", device])["request"]
            .as_str()
            .unwrap()
            .to_owned();
        let bundle = ok(from, &["devices", "approve", &request])["bundle"]
            .as_str()
            .unwrap()
            .to_owned();
        ok(&home, &["join", &bundle]);
        home
    }

    fn relay_status(&self) -> Value {
        json_ok(relay_cmd(&self.relay_home), &["status"])
    }
}

/// `jarvis up` with no `--peer`: the org's relay (from its bundle) is all it knows.
fn up(home: &Path) -> Running {
    common::node_up(jarvis(home), &["--listen", "/ip4/127.0.0.1/udp/0/quic-v1"])
}

fn names(list: &Value) -> Vec<String> {
    let mut names: Vec<String> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["name"].as_str().unwrap().to_owned())
        .collect();
    names.sort();
    names
}

#[test]
fn an_invite_claimed_twice_is_refused_by_the_relay_and_the_admin_sees_both_claims() {
    let dir = tempfile::tempdir().unwrap();
    let org = Org::new(dir.path());
    let token = org.invite("alice");
    let laptop = org.join(&token, "laptop");
    // The same token used again on another machine: joining is offline, so it "works" there.
    let other = org.join(&token, "mallory-pc");

    let _laptop = up(&laptop);
    wait_for("the relay to admit alice's laptop", || {
        (org.relay_status()["devices"] == 1).then_some(())
    });
    let _other = up(&other);

    // The second claimant is told why, and its user sees it in `jarvis status`. (Waited for
    // before the admin's first `admin members`, which signs the first claim: from then on the
    // relay refuses a second claimant by that record, before its roster sees the claim.)
    let refusal = wait_for("the second claimant to hear why it was refused", || {
        let status = ok(&other, &["status"]);
        status["dialing"]
            .as_array()
            .unwrap()
            .iter()
            .find(|d| d["kind"] == "relay")
            .and_then(|d| d["error"].as_str().map(str::to_owned))
            .filter(|e| e.starts_with("the peer refused us"))
    });
    assert!(refusal.contains("already claimed"), "{refusal}");
    let text = jarvis(&other).args(["status"]).output().unwrap();
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(
        text.contains("refuses this device") && text.contains("already claimed"),
        "{text}"
    );
    let members = wait_for("the admin to see both claims", || {
        let members = ok(&org.admin, &["admin", "members"]);
        (members["claims"].as_array().unwrap().len() == 2).then_some(members)
    });

    // What alice writes never reaches the second claimant.
    let said = jarvis(&laptop)
        .args(["ask", "the vault code is 4417", "--json"])
        .output()
        .unwrap();
    let said: Value = serde_json::from_slice(&said.stdout).unwrap();
    assert!(said["conversation_id"].is_string(), "{said}");
    wait_for("the relay to store alice's message", || {
        (org.relay_status()["stored_bytes"].as_u64().unwrap() > 0).then_some(())
    });
    assert_eq!(org.relay_status()["devices"], 1, "{}", org.relay_status());
    let theirs = ok(&other, &["conversations"]);
    assert!(
        theirs["conversations"].as_array().unwrap().is_empty(),
        "{theirs}"
    );

    // The admin sees both claims, and the members the relay admitted.
    let claims = members["claims"].as_array().unwrap();
    assert_eq!(claims.len(), 2, "{members}");
    assert_eq!(claims[0]["accepted"], true, "{members}");
    assert_eq!(claims[0]["device_name"], "laptop", "{members}");
    assert_eq!(claims[1]["accepted"], false, "{members}");
    assert_eq!(claims[1]["device_name"], "mallory-pc", "{members}");
    assert_eq!(claims[0]["invite"], claims[1]["invite"], "{members}");
    assert_ne!(claims[0]["user_key"], claims[1]["user_key"], "{members}");
    let laptop_id = ok(&laptop, &["whoami"])["device_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let member = members["members"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["id"] == laptop_id.as_str())
        .unwrap_or_else(|| panic!("the laptop is not a member: {members}"));
    assert_eq!(member["kind"], "device", "{member}");
    assert_eq!(member["user"], "alice", "{member}");
    assert_eq!(member["online"], true, "{member}");

    // …and in the audit log, once each however often members is asked.
    ok(&org.admin, &["admin", "members"]);
    let audit = ok(&org.admin, &["admin", "audit"]);
    let kinds: Vec<&str> = audit["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["action"].as_str().unwrap())
        .collect();
    assert_eq!(
        kinds.iter().filter(|k| **k == "invite-claimed").count(),
        1,
        "{audit}"
    );
    assert_eq!(
        kinds
            .iter()
            .filter(|k| **k == "invite-claim-refused")
            .count(),
        1,
        "{audit}"
    );
    assert_eq!(audit["verified"], true, "{audit}");
    let text = jarvis(&org.admin)
        .args(["admin", "members"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(text.contains("REFUSED"), "{text}");

    // #20 finding 3: the admin signed alice's claim (checked against the chain the relay
    // reported), the relay passed it to alice's laptop, and now the laptop itself refuses the
    // second claimant when it dials the laptop directly, with no relay in between (before, it
    // admitted mallory-pc as a member of the org).
    assert_eq!(members["claims_signed"], 1, "{members}");
    assert!(
        audit.to_string().contains("users of invite"),
        "the signed claim is in the audit log: {audit}"
    );
    wait_for("alice's laptop to hold the signed claim", || {
        (ok(&laptop, &["status"])["revocations"] == 1).then_some(())
    });
    let laptop_status = ok(&laptop, &["status"]);
    let direct = format!(
        "{}/p2p/{}",
        laptop_status["listen"][0].as_str().unwrap(),
        laptop_status["device_id"].as_str().unwrap()
    );
    drop(_other);
    let _other = common::node_up(
        jarvis(&other),
        &[
            "--listen",
            "/ip4/127.0.0.1/udp/0/quic-v1",
            "--peer",
            &direct,
        ],
    );
    let refusal = wait_for("alice's laptop to refuse the second claimant", || {
        ok(&other, &["status"])["dialing"]
            .as_array()
            .unwrap()
            .iter()
            .find(|d| d["kind"] == "peer")
            .filter(|d| d["problem"] == "refused-us")
            .and_then(|d| d["reason"].as_str().map(str::to_owned))
    });
    assert!(refusal.contains("claimed by another user key"), "{refusal}");

    // A third claimant, after the claim was signed: the relay refuses it by the signed record
    // (before its roster's own check), and still records who tried, for the admin.
    let third = org.join(&token, "eve-pc");
    let _third = up(&third);
    let members = wait_for("the admin to see the third claimant too", || {
        let members = ok(&org.admin, &["admin", "members"]);
        (members["claims"].as_array().unwrap().len() == 3).then_some(members)
    });
    let late = &members["claims"][2];
    assert_eq!(late["accepted"], false, "{members}");
    assert_eq!(late["device_name"], "eve-pc", "{members}");
}

#[test]
fn the_directory_shows_a_users_devices_to_that_user_only_and_leads_to_the_orgs_gpu_peer() {
    let dir = tempfile::tempdir().unwrap();
    let org = Org::new(dir.path());
    let laptop = org.join(&org.invite("alice"), "laptop");
    let phone = org.pair(&laptop, "phone");
    let bobs = org.join(&org.invite("bob"), "bobs-laptop");
    let gpu = dir.path().join("gpu");
    let request = ok(&gpu, &["gpu", "request", "--name", "gpu-1"])["request"]
        .as_str()
        .unwrap()
        .to_owned();
    let bundle = ok(
        &org.admin,
        &["admin", "enroll", "--request", &request, "--role", "gpu"],
    )["bundle"]
        .as_str()
        .unwrap()
        .to_owned();
    ok(&gpu, &["gpu", "install", &bundle]);

    // The GPU peer with the machine's model; nobody is told its address but the relay.
    let mut gpu_cmd = jarvis(&gpu);
    match std::env::var_os("JARVIS_MODELS") {
        Some(models) => gpu_cmd.env("JARVIS_MODELS", models),
        None => gpu_cmd.env_remove("JARVIS_MODELS"),
    };
    let mut child = gpu_cmd
        .args([
            "gpu",
            "up",
            "--json",
            "--no-mdns",
            "--slots",
            "1",
            "--listen",
            "/ip4/127.0.0.1/udp/0/quic-v1",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let gpu_up: Value = serde_json::from_str(&lines.next().unwrap().unwrap()).unwrap();
    assert_eq!(
        gpu_up["model"]["state"], "ready",
        "run `jarvis models pull` first: {gpu_up}"
    );
    std::thread::spawn(move || lines.for_each(drop));
    let _gpu = Running(child);
    let gpu_id = gpu_up["peer_id"].as_str().unwrap().to_owned();

    // Its user lets the org's GPU peers answer (the default, `local`, sends nothing out).
    std::fs::write(laptop.join("settings.json"), r#"{"offload": "auto"}"#).unwrap();
    let _laptop = up(&laptop);
    let phone_node = up(&phone);
    let _bobs = up(&bobs);
    let directory = |home: &Path| ok(home, &["status"])["directory"].clone();
    let seen = wait_for("alice's laptop to see her phone and the GPU peer", || {
        let d = directory(&laptop);
        (names(&d["devices"]) == ["phone"] && names(&d["gpus"]) == ["gpu-1"]).then_some(d)
    });
    assert_eq!(seen["gpus"][0]["model"], "smollm2-135m-instruct", "{seen}");
    let bob_sees = wait_for("bob to see the GPU peer", || {
        let d = directory(&bobs);
        (names(&d["gpus"]) == ["gpu-1"]).then_some(d)
    });
    assert!(
        names(&bob_sees["devices"]).is_empty(),
        "bob sees alice's devices: {bob_sees}"
    );
    wait_for("the relay's status to count them", || {
        let status = org.relay_status();
        (status["online_devices"] == 3 && status["gpu_peers"] == 1).then_some(())
    });

    // The laptop has no model and was never told the GPU peer's address: the relay's directory
    // led it there, and the GPU peer answers.
    wait_for(
        "the laptop to connect to the GPU peer and have its load",
        || {
            ok(&laptop, &["status"])["offload"]["gpu_peers"]
                .as_array()?
                .iter()
                .any(|p| p["peer_id"] == gpu_id.as_str() && p["ready"] == true)
                .then_some(())
        },
    );
    let asked = ok(&laptop, &["ask", "What is the capital of France?"]);
    assert_eq!(asked["where"], gpu_id.as_str(), "{asked}");
    assert!(
        asked["answer"].as_str().unwrap().contains("Paris"),
        "{asked}"
    );

    // The phone goes away: it leaves alice's directory.
    drop(phone_node);
    wait_for("the phone to leave the directory", || {
        names(&directory(&laptop)["devices"])
            .is_empty()
            .then_some(())
    });
}
