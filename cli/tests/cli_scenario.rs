//! The admin and enrolment scenario of issue 2, run through the real `jarvis` binary with real
//! homes on disk: init, invite, join, offline pairing, whoami, members, revocation, audit, and
//! each refusal a user can meet.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

use std::path::{Path, PathBuf};
use std::process::Output;

use assert_cmd::Command;
use serde_json::Value;
use tempfile::TempDir;

const PASSPHRASE: &str = "correct horse battery staple";

struct Env {
    dir: TempDir,
}

impl Env {
    fn new() -> Self {
        Self {
            dir: tempfile::tempdir().unwrap(),
        }
    }

    fn home(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn cmd(&self, home: &str, args: &[&str]) -> Command {
        let mut cmd = Command::cargo_bin("jarvis").unwrap();
        cmd.env_remove("JARVIS_HOME")
            .env("JARVIS_PASSPHRASE", PASSPHRASE)
            // The lowest work factor the library accepts keeps key sealing fast in tests; the
            // default is exercised by the identity crate's own tests.
            .env("JARVIS_KDF_WORK_FACTOR", "10")
            .arg("--home")
            .arg(self.home(home))
            .args(args);
        cmd
    }

    /// Runs and expects success; returns stdout.
    fn ok(&self, home: &str, args: &[&str]) -> String {
        let out = self.cmd(home, args).output().unwrap();
        assert!(
            out.status.success(),
            "`jarvis {}` failed:\n{}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap().trim().to_owned()
    }

    fn json(&self, home: &str, args: &[&str]) -> Value {
        let mut all = args.to_vec();
        all.push("--json");
        serde_json::from_str(&self.ok(home, &all)).unwrap()
    }

    /// Runs and expects failure; returns stderr.
    fn fails(&self, home: &str, args: &[&str]) -> String {
        self.fails_with(self.cmd(home, args).output().unwrap(), args)
    }

    fn fails_with(&self, out: Output, args: &[&str]) -> String {
        assert!(
            !out.status.success(),
            "`jarvis {}` should have failed but printed:\n{}",
            args.join(" "),
            String::from_utf8_lossy(&out.stdout)
        );
        let stderr = String::from_utf8(out.stderr).unwrap();
        assert!(!stderr.contains("panicked"), "{stderr}");
        assert!(stderr.starts_with("error: "), "{stderr}");
        stderr
    }
}

fn flip_char(token: &str, at: usize) -> String {
    let mut chars: Vec<char> = token.chars().collect();
    chars[at] = if chars[at] == 'x' { 'y' } else { 'x' };
    chars.into_iter().collect()
}

#[test]
fn admin_invite_join_pair_revoke_audit() {
    let env = Env::new();
    let org_id = env.json("admin", &["admin", "init", "--org", "acme"])["org_id"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(org_id.starts_with("12D3KooW"));

    let invite = env.json("admin", &["admin", "invite", "alice", "--expires", "1h"]);
    let token = invite["token"].as_str().unwrap().to_owned();
    assert!(token.starts_with("jvinvite_"));
    assert!(invite["expires_at"].as_str().unwrap().ends_with('Z'));

    // First device: the invite.
    env.ok(
        "laptop",
        &["join", &token, "--device-name", "laptop", "--org", &org_id],
    );
    // Second device: offline pairing (request on the new device, approve on the first, install).
    let request = env.json("phone", &["devices", "request", "--device-name", "phone"]);
    let request = request["request"].as_str().unwrap().to_owned();
    let bundle = env.json("laptop", &["devices", "approve", &request]);
    let bundle = bundle["bundle"].as_str().unwrap().to_owned();
    env.ok("phone", &["join", &bundle]);

    let w1 = env.json("laptop", &["whoami"]);
    let w2 = env.json("phone", &["whoami"]);
    for w in [&w1, &w2] {
        assert_eq!(w["org_id"], org_id.as_str());
        assert_eq!(w["user"], "alice");
        assert_eq!(w["roles"], serde_json::json!(["member"]));
        assert_eq!(w["status"], "active");
        assert!(w["expires_at"].as_str().unwrap().ends_with('Z'));
    }
    assert_ne!(w1["device_id"], w2["device_id"]);
    assert_eq!(w1["device_name"], "laptop");
    assert_eq!(w2["device_name"], "phone");

    // The first device lists both.
    let devices = env.json("laptop", &["devices"]);
    let ids: Vec<&str> = devices["devices"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["id"].as_str().unwrap())
        .collect();
    assert_eq!(
        ids,
        [
            w1["device_id"].as_str().unwrap(),
            w2["device_id"].as_str().unwrap()
        ]
    );

    let members = env.json("admin", &["admin", "members"]);
    let alice = &members["members"][0];
    assert_eq!(alice["kind"], "user");
    assert_eq!(alice["name"], "alice");
    assert_eq!(alice["status"], "active");

    // Revoke the phone by the id its whoami shows, then the user.
    let phone_id = w2["device_id"].as_str().unwrap();
    env.ok(
        "admin",
        &["admin", "revoke", "--device", phone_id, "--reason", "lost"],
    );
    env.ok("admin", &["admin", "revoke", "--user", "alice"]);
    let members = env.json("admin", &["admin", "members"]);
    let status_of = |kind: &str, id: &str| {
        members["members"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["kind"] == kind && m["id"] == id)
            .map(|m| m["status"].as_str().unwrap().to_owned())
    };
    assert_eq!(status_of("user", "alice").as_deref(), Some("revoked"));
    assert_eq!(status_of("device", phone_id).as_deref(), Some("revoked"));

    // The audit log verifies and lists every action...
    let audit = env.json("admin", &["admin", "audit"]);
    assert_eq!(audit["verified"], true);
    let actions: Vec<&str> = audit["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["action"].as_str().unwrap())
        .collect();
    assert_eq!(actions, ["org-created", "invited", "revoked", "revoked"]);

    // ...and flipping one byte anywhere in it makes verification fail.
    let log_path = env.home("admin").join("audit.log");
    let original = std::fs::read(&log_path).unwrap();
    for at in [
        0,
        original.len() / 3,
        original.len() / 2,
        original.len() - 1,
    ] {
        let mut bad = original.clone();
        bad[at] ^= 0x20;
        std::fs::write(&log_path, &bad).unwrap();
        let out = env
            .cmd("admin", &["admin", "audit", "--json"])
            .output()
            .unwrap();
        let stderr = env.fails_with(out.clone(), &["admin", "audit"]);
        assert!(stderr.contains("does NOT verify"), "{stderr}");
        let report: Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(report["verified"], false);
        // Admin actions refuse to build on a broken log.
        let stderr = env.fails("admin", &["admin", "invite", "bob"]);
        assert!(stderr.contains("audit log"), "{stderr}");
    }
    std::fs::write(&log_path, &original).unwrap();
    assert_eq!(env.json("admin", &["admin", "audit"])["verified"], true);
}

#[test]
fn refusals_are_clear_and_nonzero() {
    let env = Env::new();
    let acme = env.json("acme", &["admin", "init", "--org", "acme"]);
    let acme_id = acme["org_id"].as_str().unwrap().to_owned();
    env.json("globex", &["admin", "init", "--org", "globex"]);

    // An expired invite.
    let expired = env.json("acme", &["admin", "invite", "bob", "--expires", "1s"]);
    std::thread::sleep(std::time::Duration::from_millis(2100));
    let stderr = env.fails("d-expired", &["join", expired["token"].as_str().unwrap()]);
    assert!(stderr.contains("expired"), "{stderr}");

    // A tampered invite.
    let token = env.json("acme", &["admin", "invite", "carol"])["token"]
        .as_str()
        .unwrap()
        .to_owned();
    let stderr = env.fails("d-tampered", &["join", &flip_char(&token, token.len() / 2)]);
    assert!(stderr.contains("damaged"), "{stderr}");
    assert!(!env.home("d-tampered").join("home.json").exists());

    // An invite from another org, when the device was told which org to expect.
    let foreign = env.json("globex", &["admin", "invite", "carol"])["token"]
        .as_str()
        .unwrap()
        .to_owned();
    let stderr = env.fails("d-foreign", &["join", &foreign, "--org", &acme_id]);
    assert!(stderr.contains("another org"), "{stderr}");

    // A device of acme cannot join globex too.
    env.ok("carol-laptop", &["join", &token, "--device-name", "laptop"]);
    let stderr = env.fails("carol-laptop", &["join", &foreign]);
    assert!(stderr.contains("already belongs to org `acme`"), "{stderr}");

    // A bundle from another org's device, and a tampered bundle, are refused.
    let request = env.json("carol-phone", &["devices", "request"])["request"]
        .as_str()
        .unwrap()
        .to_owned();
    env.ok("dave-globex", &["join", &foreign, "--device-name", "dave"]);
    let foreign_bundle = env.json("dave-globex", &["devices", "approve", &request])["bundle"]
        .as_str()
        .unwrap()
        .to_owned();
    let stderr = env.fails("carol-phone", &["join", &foreign_bundle, "--org", &acme_id]);
    assert!(stderr.contains("another org"), "{stderr}");
    let bundle = env.json("carol-laptop", &["devices", "approve", &request])["bundle"]
        .as_str()
        .unwrap()
        .to_owned();
    let stderr = env.fails("carol-phone", &["join", &flip_char(&bundle, 40)]);
    assert!(stderr.contains("damaged"), "{stderr}");
    // The untampered one works, and the phone cannot approve devices itself.
    env.ok("carol-phone", &["join", &bundle, "--org", &acme_id]);
    let stderr = env.fails("carol-phone", &["devices", "approve", &request]);
    assert!(stderr.contains("does not hold your user key"), "{stderr}");

    // A wrong passphrase.
    let out = env
        .cmd("acme", &["admin", "invite", "erin"])
        .env("JARVIS_PASSPHRASE", "not it")
        .output()
        .unwrap();
    let stderr = env.fails_with(out, &["admin", "invite"]);
    assert!(stderr.contains("wrong passphrase"), "{stderr}");

    // No passphrase and no terminal to ask on.
    let out = env
        .cmd("acme", &["admin", "invite", "erin"])
        .env_remove("JARVIS_PASSPHRASE")
        .output()
        .unwrap();
    let stderr = env.fails_with(out, &["admin", "invite"]);
    assert!(stderr.contains("JARVIS_PASSPHRASE"), "{stderr}");

    // Bad arguments.
    let stderr = env.fails("acme", &["admin", "revoke", "--device", "not-an-id"]);
    assert!(stderr.contains("not a Jarvis id"), "{stderr}");
    let own = env.json("acme", &["whoami"])["device_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let stderr = env.fails("acme", &["admin", "revoke", "--peer", &own]);
    assert!(stderr.contains("--force"), "{stderr}");
    let stderr = env.fails("nowhere", &["whoami"]);
    assert!(stderr.contains("not a Jarvis home yet"), "{stderr}");
    let stderr = env.fails("acme", &["admin", "init", "--org", "again"]);
    assert!(stderr.contains("already a Jarvis home"), "{stderr}");
    let stderr = env.fails("acme", &["admin", "relays", "add", "not a multiaddr"]);
    assert!(stderr.contains("not a multiaddr"), "{stderr}");
}

#[test]
fn gpu_peer_enrolment_and_relay_addresses() {
    let env = Env::new();
    env.json("admin", &["admin", "init", "--org", "acme"]);
    let relay = "/ip4/127.0.0.1/udp/4001/quic-v1";
    env.ok("admin", &["admin", "relays", "add", relay]);
    let req = env.json("gpu", &["gpu", "request", "--name", "big-gpu"]);
    let bundle = env.json(
        "admin",
        &[
            "admin",
            "enroll",
            "--request",
            req["request"].as_str().unwrap(),
            "--role",
            "gpu",
        ],
    );
    assert_eq!(bundle["peer_id"], req["peer_id"]);
    env.ok(
        "gpu",
        &["gpu", "install", bundle["bundle"].as_str().unwrap()],
    );
    let who = env.json("gpu", &["whoami"]);
    assert_eq!(who["kind"], "gpu");
    assert_eq!(who["roles"], serde_json::json!(["gpu"]));
    // A GPU request enrolled as a relay is refused.
    let req2 = env.json("gpu2", &["gpu", "request"]);
    let stderr = env.fails(
        "admin",
        &[
            "admin",
            "enroll",
            "--request",
            req2["request"].as_str().unwrap(),
            "--role",
            "relay",
        ],
    );
    assert!(stderr.contains("asks to be a gpu"), "{stderr}");

    let members = env.json("admin", &["admin", "members"]);
    assert_eq!(members["members"][0]["kind"], "gpu");
    assert_eq!(members["members"][0]["status"], "active");
    // Invites made after a relay was added carry it.
    let token = env.json("admin", &["admin", "invite", "zed"])["token"]
        .as_str()
        .unwrap()
        .to_owned();
    let bytes =
        jarvis_identity::token::dearmor(jarvis_identity::TokenKind::Invite, &token).unwrap();
    assert!(bytes.windows(relay.len()).any(|w| w == relay.as_bytes()));
}

fn assert_private(path: &Path) {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(path).unwrap().permissions().mode();
        assert_eq!(mode & 0o077, 0, "{} is readable by others", path.display());
    }
}

#[test]
fn secret_keys_are_sealed_and_private() {
    let env = Env::new();
    env.json("admin", &["admin", "init", "--org", "acme"]);
    for key in ["identity.age", "root.age"] {
        let path = env.home("admin").join("keys").join(key);
        assert_private(&path);
        let bytes = std::fs::read(&path).unwrap();
        assert!(bytes.starts_with(b"age-encryption.org/v1"));
    }
    // #20 (low): the home itself is this user's alone, whatever the umask.
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(env.home("admin"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o077, 0, "the home is {mode:o}");
    }
    // No command prints a secret: nothing on stdout looks like an age secret key.
    let out = env.ok("admin", &["whoami"]);
    assert!(!out.contains("AGE-SECRET-KEY"));
}

/// #20, finding 8 (in part): a node that died leaves `api.json` behind, and its port may then be
/// any local program's. A command must not send the token there: it works as if no node ran.
#[test]
fn a_stale_api_file_gets_no_token() {
    let env = Env::new();
    env.json("acme", &["admin", "init", "--org", "acme"]);
    let token = env.json("acme", &["admin", "invite", "dana"])["token"]
        .as_str()
        .unwrap()
        .to_owned();
    env.json("laptop", &["join", &token, "--device-name", "laptop"]);
    // A squatter on a port, and an api.json naming it with the pid of a process that has ended.
    let squatter = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    squatter.set_nonblocking(true).unwrap();
    let mut ended = std::process::Command::new("true").spawn().unwrap();
    let pid = ended.id();
    ended.wait().unwrap();
    std::fs::write(
        env.home("laptop").join("api.json"),
        serde_json::json!({ "addr": squatter.local_addr().unwrap(), "pid": pid }).to_string(),
    )
    .unwrap();
    let out = env.cmd("laptop", &["status", "--json"]).output().unwrap();
    let reached = squatter.accept().is_ok();
    assert!(
        !reached,
        "the token went to whatever holds the dead node's port"
    );
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(!text.contains("panicked"), "{text}");
}

/// #20 finding 4: the org root cancels a wrongful revocation; the record stays held (peers agree
/// on the set) but is no longer in force, and the audit log says who cancelled what.
#[test]
fn a_wrongful_revocation_is_cancelled_with_the_root_key() {
    let env = Env::new();
    env.json("admin", &["admin", "init", "--org", "acme"]);
    env.ok(
        "admin",
        &["admin", "revoke", "--user", "bob", "--reason", "wrong bob"],
    );
    let listed = env.json("admin", &["admin", "revocations"]);
    let records = listed["revocations"].as_array().unwrap();
    assert_eq!(records.len(), 1);
    assert_eq!(records[0]["in_force"], true);
    assert_eq!(records[0]["target"], "user `bob`");
    // #20 finding 6: the reason stays with the admin; the record that travels carries none.
    assert_eq!(records[0]["reason"], "wrong bob");
    let published = std::fs::read(env.home("admin").join("revocations")).unwrap();
    assert!(!published.windows(9).any(|w| w == b"wrong bob"));
    let id = records[0]["id"].as_str().unwrap().to_owned();

    let cancelled = env.json(
        "admin",
        &["admin", "unrevoke", &id, "--reason", "the other bob"],
    );
    assert_eq!(cancelled["cancelled"], id.as_str());
    let listed = env.json("admin", &["admin", "revocations"]);
    let records = listed["revocations"].as_array().unwrap();
    assert_eq!(records.len(), 2);
    let wrongful = records.iter().find(|r| r["id"] == id.as_str()).unwrap();
    assert_eq!(wrongful["in_force"], false);
    let cancel = records.iter().find(|r| r["id"] != id.as_str()).unwrap();
    assert_eq!(cancel["signer"], "org root");
    let cancel_id = cancel["id"].as_str().unwrap().to_owned();

    let audit = env.json("admin", &["admin", "audit"]);
    let last = audit["entries"].as_array().unwrap().last().unwrap().clone();
    assert!(last.to_string().contains("cancelled revocation"), "{last}");

    let stderr = env.fails("admin", &["admin", "unrevoke", &cancel_id]);
    assert!(stderr.contains("cannot be undone"), "{stderr}");
    let stderr = env.fails("admin", &["admin", "unrevoke", &"0".repeat(64)]);
    assert!(stderr.contains("jarvis admin revocations"), "{stderr}");
    let stderr = env.fails("admin", &["admin", "unrevoke", "xyz"]);
    assert!(stderr.contains("64 hex digits"), "{stderr}");
}
