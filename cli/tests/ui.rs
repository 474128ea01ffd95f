//! The UI, end to end, in a real browser: Playwright (npm `playwright-core`) driving the system's
//! headless Chromium (`desktop/e2e/ui.mjs`) against real nodes with the real models. This test
//! makes the org (an admin, alice's laptop and phone), a microphone (an ALSA capture device
//! reading a FIFO the test writes a tone into), starts both nodes, runs the script, and checks
//! what it reports and the screenshots it saved (in `target/tmp/ui-screenshots`).
//!
//! Also here, without a browser: the API's same-origin and host checks, and the token on every
//! route the UI added.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use jarvis_inference::models::ModelStore;
use serde_json::Value;

mod common;

use common::wait_for;

/// A well-formed peer id no process here has.
const UNREACHABLE_PEER: &str = "12D3KooWEpGjQeY9VAVJEYLQxa7dhxM21JUrt6KtsNoprCSEKurW";

fn jarvis(home: &Path) -> Command {
    let mut cmd = common::jarvis(home);
    cmd.env_remove("JARVIS_MODEL")
        .env_remove("JARVIS_ADMIN_HOME")
        .env("JARVIS_LLM_THREADS", "1");
    cmd
}

fn ok(home: &Path, args: &[&str]) -> Value {
    common::json_ok(jarvis(home), args)
}

/// A running node, stopped (SIGINT, then reaped) when dropped.
struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-INT", &self.0.id().to_string()])
            .status();
        let _ = self.0.wait();
    }
}

/// alice's laptop (holding her user key) and phone, in the org of `admin`.
fn org(dir: &Path) -> (PathBuf, PathBuf, PathBuf) {
    let admin = dir.join("admin");
    ok(&admin, &["admin", "init", "--org", "acme"]);
    let token = ok(&admin, &["admin", "invite", "alice"])["token"]
        .as_str()
        .unwrap()
        .to_owned();
    let laptop = dir.join("laptop");
    ok(&laptop, &["join", &token, "--device-name", "laptop"]);
    let phone = dir.join("phone");
    let request = ok(&phone, &["devices", "request", "--device-name", "phone"])["request"]
        .as_str()
        .unwrap()
        .to_owned();
    let bundle = ok(&laptop, &["devices", "approve", &request])["bundle"]
        .as_str()
        .unwrap()
        .to_owned();
    ok(&phone, &["join", &bundle]);
    (admin, laptop, phone)
}

/// The org's GPU peer `gpu-1`, enrolled and started; returns it and its address.
fn gpu_peer(dir: &Path, admin: &Path, models: &Path) -> (Running, String) {
    let home = dir.join("gpu-1");
    common::enrol_gpu(admin, &home, "gpu-1");
    // The default model under another name, so the UI's model picker can tell the GPU peer's
    // model from this computer's.
    let renamed = dir.join("smollm2-on-gpu.gguf");
    std::os::unix::fs::symlink(models.join("SmolLM2-135M-Instruct.Q4_1.gguf"), &renamed).unwrap();
    let (child, _, address) = common::gpu_up(
        jarvis(&home)
            .env("JARVIS_MODELS", models)
            .env("JARVIS_LLM_THREADS", "1")
            .args(["gpu", "up", "--json", "--no-mdns", "--slots", "1"])
            .arg("--model")
            .arg(&renamed)
            .args(["--listen", "/ip4/127.0.0.1/udp/0/quic-v1"]),
    );
    (Running(child), address)
}

/// A microphone playing a second of a 440 Hz tone, then a second of silence, over and over
/// (`common::fifo_microphone`).
fn microphone(dir: &Path, stop: Arc<AtomicBool>) -> std::thread::JoinHandle<()> {
    common::fifo_microphone(dir, stop, |i| {
        let t = i as f32 / 16_000.0;
        if (i / 16_000) % 2 == 0 {
            0.4 * (2.0 * std::f32::consts::PI * 440.0 * t).sin()
        } else {
            0.0
        }
    })
}

#[test]
fn the_ui_works_end_to_end_in_chromium() {
    // The running package's directory, not the one compiled in (the shared target directory
    // may hold a binary built from another checkout).
    let manifest =
        std::env::var("CARGO_MANIFEST_DIR").unwrap_or_else(|_| env!("CARGO_MANIFEST_DIR").into());
    let e2e = Path::new(&manifest).join("../desktop/e2e");
    assert!(
        e2e.join("node_modules/playwright-core").is_dir(),
        "run `npm ci` in desktop/e2e first (scripts/test.sh does)"
    );
    assert!(
        Path::new("/usr/bin/chromium").exists() || std::env::var_os("CHROMIUM").is_some(),
        "install chromium (scripts/test.sh does), or set CHROMIUM"
    );
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (admin, laptop, phone) = org(d);
    let models = ModelStore::from_env().unwrap().dir().to_owned();
    let stop = Arc::new(AtomicBool::new(false));
    let mic = microphone(d, Arc::clone(&stop));

    let up = |home: &Path, extra: &[&str]| {
        let mut cmd = jarvis(home);
        cmd.env("HOME", d).env("JARVIS_MODELS", &models).args([
            "up",
            "--json",
            "--no-mdns",
            "--api",
            "127.0.0.1:0",
            "--listen",
            "/ip4/127.0.0.1/udp/0/quic-v1",
        ]);
        cmd.args(extra);
        let (child, _, started) = common::spawn_up(cmd.stderr(Stdio::null()));
        (Running(child), started)
    };
    let admin_arg = admin.to_str().unwrap();
    // Also a peer that cannot be reached (nothing listens there): the Peers screen says so.
    let dead = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let unreachable = format!("/ip4/127.0.0.1/tcp/{dead}/p2p/{UNREACHABLE_PEER}");
    // The org's GPU peer, which the laptop reaches (Peers, Settings, and an offloaded answer).
    let (_gpu, gpu_addr) = gpu_peer(d, &admin, &models);
    let (_laptop_node, started) = up(
        &laptop,
        &[
            "--mic",
            "alsa:jarvis_mic",
            "--admin-home",
            admin_arg,
            "--peer",
            &unreachable,
            "--peer",
            &gpu_addr,
        ],
    );
    let status = wait_for("the laptop to say the dead peer is unreachable", || {
        let status = ok(&laptop, &["status"]);
        let dialing = status["dialing"]
            .as_array()?
            .iter()
            .find(|d| d["address"] == unreachable.as_str())?
            .clone();
        dialing["error"].is_string().then_some(dialing)
    });
    assert_eq!(status["kind"], "peer", "{status}");
    assert_eq!(status["connected"], false, "{status}");
    let laptop_addr = wait_for("the laptop's address", || {
        ok(&laptop, &["status"])["listen"][0]
            .as_str()
            .map(str::to_owned)
    });
    let (_phone_node, _) = up(&phone, &["--no-voice", "--peer", &laptop_addr]);
    let phone_id = ok(&phone, &["whoami"])["device_id"]
        .as_str()
        .unwrap()
        .to_owned();
    wait_for("the phone to connect", || {
        ok(&laptop, &["status"])["peers"]
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p["peer_id"] == phone_id.as_str() && p["authenticated"] == true)
            .then_some(())
    });

    let shots = Path::new(env!("CARGO_TARGET_TMPDIR")).join("ui-screenshots");
    let _ = std::fs::remove_dir_all(&shots);
    std::fs::create_dir_all(&shots).unwrap();
    let token = String::from_utf8(jarvis(&laptop).arg("token").output().unwrap().stdout)
        .unwrap()
        .trim()
        .to_owned();
    let out = Command::new("node")
        .arg("ui.mjs")
        .current_dir(&e2e)
        .env("JARVIS_BIN", assert_cmd::cargo::cargo_bin("jarvis"))
        .env("JARVIS_PASSPHRASE", common::PASSPHRASE)
        .env("JARVIS_KDF_WORK_FACTOR", "10")
        .env("JARVIS_MODELS", &models)
        .env(
            "UI_ORIGIN",
            format!("http://{}", started["api"].as_str().unwrap()),
        )
        .env("UI_TOKEN", &token)
        .env("LAPTOP_HOME", &laptop)
        .env("PHONE_HOME", &phone)
        .env("NEW_HOME", d.join("tablet"))
        .env("ADMIN_HOME", &admin)
        .env("PHONE_ID", &phone_id)
        .env("SCREENSHOTS", &shots)
        .output()
        .unwrap();
    stop.store(true, Ordering::Relaxed);
    let _ = mic.join();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "the browser test failed:\n{}\n{stdout}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: Value = serde_json::from_str(stdout.lines().last().unwrap()).unwrap();
    assert_eq!(report["without_token"], 401, "{report}");
    assert_eq!(report["other_origin"], "refused", "{report}");
    assert!(!report["answer"].as_str().unwrap().is_empty(), "{report}");
    assert_eq!(report["revoked"]["status"], "revoked", "{report}");
    // The new device really joined: it holds a certificate of alice's.
    let tablet = ok(&d.join("tablet"), &["whoami"]);
    assert_eq!(tablet["user"], "alice", "{tablet}");
    for name in [
        "no-token",
        "conversation",
        "search",
        "voice",
        "pairing",
        "devices",
        "peers",
        "models",
        "settings-dark",
        "conversation-dark",
        "admin",
        "admin-revoked",
    ] {
        let png = std::fs::read(shots.join(format!("{name}.png"))).unwrap();
        assert!(
            png.starts_with(b"\x89PNG") && png.len() > 10_000,
            "{name}.png is not a real screenshot"
        );
    }
}

/// A node on a fresh personal home with no voice and the given environment: the process (stopped
/// when dropped), its API address and its token.
fn plain_node(home: &Path, env: &[(&str, &str)]) -> (Running, String, String) {
    let mut cmd = jarvis(home);
    cmd.envs(env.iter().copied()).args([
        "up",
        "--json",
        "--no-mdns",
        "--no-voice",
        "--api",
        "127.0.0.1:0",
        "--listen",
        "/ip4/127.0.0.1/udp/0/quic-v1",
    ]);
    let (child, _, started) = common::spawn_up(cmd.stderr(Stdio::null()));
    let running = Running(child);
    let addr = started["api"].as_str().unwrap().to_owned();
    let token = String::from_utf8(jarvis(home).arg("token").output().unwrap().stdout)
        .unwrap()
        .trim()
        .to_owned();
    (running, addr, token)
}

/// One HTTP/1.1 request on a raw socket (so nothing adds or fixes headers): `head` is the
/// request line and headers, each ending in CRLF.
fn request(addr: &str, head: &str) -> (u16, String) {
    request_with_body(addr, head, "")
}

fn request_with_body(addr: &str, head: &str, body: &str) -> (u16, String) {
    use std::io::Read;
    let mut stream = std::net::TcpStream::connect(addr).unwrap();
    stream
        .write_all(
            format!(
                "{head}Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            )
            .as_bytes(),
        )
        .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    let status = response
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap();
    (status, response)
}

/// The API answers only its own origin and host names, and every UI route wants the token; the
/// page itself is public (it holds no data) and locked down by its content security policy.
#[test]
fn the_api_refuses_other_origins_hosts_and_requests_without_the_token() {
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path().join("home");
    let (_node, addr, token) =
        plain_node(&home, &[("JARVIS_MODELS", "/nonexistent/jarvis-models")]);
    let addr = addr.as_str();
    let auth = format!("Authorization: Bearer {token}\r\n");

    let (status, page) = request(addr, &format!("GET / HTTP/1.1\r\nHost: {addr}\r\n"));
    assert_eq!(status, 200);
    assert!(page.contains("<title>Jarvis</title>"), "{page}");
    assert!(
        page.to_lowercase()
            .contains("content-security-policy: default-src 'none'"),
        "{page}"
    );
    let (status, _) = request(
        addr,
        &format!("GET /v1/status HTTP/1.1\r\nHost: {addr}\r\n{auth}Origin: http://{addr}\r\n"),
    );
    assert_eq!(status, 200, "the UI's own origin");
    for origin in ["http://evil.example", "null", "http://127.0.0.1:1"] {
        let (status, body) = request(
            addr,
            &format!("GET /v1/status HTTP/1.1\r\nHost: {addr}\r\n{auth}Origin: {origin}\r\n"),
        );
        assert_eq!(status, 403, "origin {origin}: {body}");
        assert!(body.contains("other web origins"), "{body}");
    }
    // A preflight from elsewhere is refused too, so a browser never sends the real request.
    let (status, _) = request(
        addr,
        &format!(
            "OPTIONS /v1/ask HTTP/1.1\r\nHost: {addr}\r\nOrigin: http://evil.example\r\nAccess-Control-Request-Method: POST\r\n"
        ),
    );
    assert_eq!(status, 403);
    // DNS rebinding: a name that resolves to 127.0.0.1 but is not ours.
    let (status, body) = request(
        addr,
        &format!(
            "GET /v1/status HTTP/1.1\r\nHost: evil.example:{}\r\n{auth}",
            &addr[addr.rfind(':').unwrap() + 1..]
        ),
    );
    assert_eq!(status, 403, "{body}");
    for (method, path) in [
        ("GET", "/v1/devices"),
        ("POST", "/v1/devices/pair"),
        ("POST", "/v1/devices/reload"),
        ("GET", "/v1/local-models"),
        ("GET", "/v1/voice"),
        ("POST", "/v1/voice/mute"),
        ("GET", "/v1/admin/members"),
        ("POST", "/v1/admin/invite"),
        ("POST", "/v1/admin/revoke"),
    ] {
        let (status, body) = request(
            addr,
            &format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\n"),
        );
        assert_eq!(status, 401, "{method} {path} without the token: {body}");
    }
    // #20 (low): without the token, a request's body is not even read: a request announcing a
    // body it never sends is answered at once.
    for path in ["/v1/ask", "/v1/chat/completions", "/v1/admin/invite"] {
        use std::io::Read;
        let mut stream = std::net::TcpStream::connect(addr).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        stream
            .write_all(
                format!(
                    "POST {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: 100000\r\n\r\n{{"
                )
                .as_bytes(),
            )
            .unwrap();
        let mut response = [0u8; 12];
        stream
            .read_exact(&mut response)
            .unwrap_or_else(|e| panic!("{path}: no answer while the body is pending: {e}"));
        assert_eq!(&response, b"HTTP/1.1 401", "{path}");
    }
    // With the token: voice is off here and says so; there is no admin home.
    let (status, body) = request(
        addr,
        &format!("GET /v1/voice HTTP/1.1\r\nHost: {addr}\r\n{auth}"),
    );
    assert_eq!(status, 200);
    assert!(body.contains("\"state\":\"off\""), "{body}");
    let (status, body) = request(
        addr,
        &format!("GET /v1/admin/members HTTP/1.1\r\nHost: {addr}\r\n{auth}"),
    );
    assert_eq!(status, 404);
    assert!(body.contains("--admin-home"), "{body}");
    let (status, body) = request_with_body(
        addr,
        &format!(
            "POST /v1/voice/mute HTTP/1.1\r\nHost: {addr}\r\n{auth}Content-Type: application/json\r\n"
        ),
        "{\"muted\": \"loud\"}",
    );
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("muted"), "{body}");
    let (status, body) = request_with_body(
        addr,
        &format!(
            "POST /v1/voice/mute HTTP/1.1\r\nHost: {addr}\r\n{auth}Content-Type: application/json\r\n"
        ),
        "{\"muted\": true}",
    );
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("\"muted\":true"), "{body}");
    // `jarvis ui --print` gives the address with the token in the fragment.
    let ui = ok(&home, &["ui", "--print"]);
    assert_eq!(
        ui["url"].as_str().unwrap(),
        format!("http://{addr}/#token={token}")
    );
    assert_eq!(ui["opened"], false);
}

/// A model downloads from the Models screen's route with progress: `POST /v1/models/pull` runs
/// `jarvis models pull` against a local server standing in for the hub (serving the real file,
/// slowly, so progress shows), and the event stream reports progress, then the model pulled.
#[test]
fn a_model_downloads_through_the_api_with_progress_events() {
    use std::io::{BufRead, BufReader};
    // The real model file from the machine's cache, served by the stand-in hub.
    let entry = jarvis_inference::models::catalog("smollm2-135m-instruct").unwrap();
    let source = ModelStore::from_env().unwrap().dir().join(entry.file);
    assert!(source.is_file(), "run `jarvis models pull` first");
    let bytes = std::fs::read(&source).unwrap();
    let file = entry.file;
    // The hub: every path answers with the file, in 1 MiB pieces 15 ms apart.
    let hub = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let hub_addr = hub.local_addr().unwrap();
    std::thread::spawn(move || {
        for stream in hub.incoming() {
            let Ok(mut stream) = stream else { continue };
            let bytes = bytes.clone();
            std::thread::spawn(move || {
                let mut request = [0u8; 4096];
                let _ = std::io::Read::read(&mut stream, &mut request);
                let _ = write!(
                    stream,
                    "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                    bytes.len()
                );
                for piece in bytes.chunks(1024 * 1024) {
                    if stream.write_all(piece).is_err() {
                        return;
                    }
                    std::thread::sleep(Duration::from_millis(15));
                }
            });
        }
    });
    let dead = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path().join("home");
    let models = dir.path().join("models");
    let hub = format!("http://{hub_addr}");
    let pypi = format!("http://{dead}/simple");
    let (_node, addr, token) = plain_node(
        &home,
        &[
            ("JARVIS_MODELS", models.to_str().unwrap()),
            ("JARVIS_HUB_URL", &hub),
            ("JARVIS_PYPI_INDEX", &pypi),
        ],
    );
    let auth = format!("Authorization: Bearer {token}\r\n");
    let mut events = std::net::TcpStream::connect(&addr).unwrap();
    write!(
        events,
        "GET /v1/events HTTP/1.1\r\nHost: {addr}\r\n{auth}\r\n"
    )
    .unwrap();
    events
        .set_read_timeout(Some(Duration::from_secs(60)))
        .unwrap();
    let mut events = BufReader::new(events);
    let mut line = String::new();
    // Up to the stream's opening comment.
    while !line.starts_with(": connected") {
        line.clear();
        events.read_line(&mut line).unwrap();
    }
    let json_header = "Content-Type: application/json\r\n";
    let (status, body) = request_with_body(
        &addr,
        &format!("POST /v1/models/pull HTTP/1.1\r\nHost: {addr}\r\n{auth}{json_header}"),
        "{\"name\": \"no-such-model\"}",
    );
    assert_eq!(status, 404, "{body}");
    let (status, body) = request_with_body(
        &addr,
        &format!("POST /v1/models/pull HTTP/1.1\r\nHost: {addr}\r\n{auth}{json_header}"),
        "{\"name\": \"smollm2-135m-instruct\"}",
    );
    assert_eq!(status, 202, "{body}");
    let (status, body) = request_with_body(
        &addr,
        &format!("POST /v1/models/pull HTTP/1.1\r\nHost: {addr}\r\n{auth}{json_header}"),
        "{\"name\": \"smollm2-135m-instruct\"}",
    );
    assert_eq!(status, 409, "one download per model at a time: {body}");
    let mut progress = Vec::new();
    // The event stream's keep-alives would keep a read timeout from firing: a deadline of its own.
    let deadline = Instant::now() + Duration::from_secs(120);
    let pulled = loop {
        assert!(
            Instant::now() < deadline,
            "no model_pulled event: progress {progress:?}"
        );
        line.clear();
        events.read_line(&mut line).unwrap();
        let Some(data) = line.strip_prefix("data: ") else {
            continue;
        };
        let event: Value = serde_json::from_str(data).unwrap();
        match event["type"].as_str() {
            Some("model_progress") => progress.push(event["bytes"].as_u64().unwrap()),
            Some("model_pulled") => break event,
            Some("model_pull_failed") => panic!("{event}"),
            _ => {}
        }
    };
    assert!(
        progress.len() >= 2 && progress.windows(2).all(|w| w[0] < w[1]),
        "progress grows: {progress:?}"
    );
    assert_eq!(pulled["name"], "smollm2-135m-instruct");
    assert_eq!(
        std::fs::read(models.join(file)).unwrap(),
        std::fs::read(&source).unwrap(),
        "the installed file is the served one"
    );
}

/// #20 finding 8. Before: `jarvis ui` put the API token in the browser's command line (any
/// local user can read it), the token never changed, and the token alone could mint admin
/// invites with the node's cached passphrase. Now the browser is given a page in the home
/// (mode 0600) that sends it on, `jarvis token --rotate` replaces the token in the running
/// node at once, and admin actions ask for the passphrase again.
#[test]
fn the_token_stays_off_command_lines_rotates_and_admin_actions_ask_again() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let (admin, laptop, _) = org(dir.path());
    let admin_home = admin.to_str().unwrap().to_owned();
    let (_node, addr, token) = plain_node(&laptop, &[("JARVIS_ADMIN_HOME", &admin_home)]);
    let auth = format!("Authorization: Bearer {token}\r\n");
    let invite = |body: &str, auth: &str| {
        request_with_body(
            &addr,
            &format!(
                "POST /v1/admin/invite HTTP/1.1\r\nHost: {addr}\r\n{auth}Content-Type: application/json\r\n"
            ),
            body,
        )
    };

    // The token alone mints nothing; with the admin passphrase, an invite.
    let (status, body) = invite("{\"user\": \"bob\"}", &auth);
    assert_eq!(status, 403, "{body}");
    assert!(body.contains("passphrase again"), "{body}");
    let (status, body) = invite("{\"user\": \"bob\", \"passphrase\": \"wrong\"}", &auth);
    assert_ne!(status, 200, "{body}");
    let (status, body) = invite(
        &format!(
            "{{\"user\": \"bob\", \"passphrase\": \"{}\"}}",
            common::PASSPHRASE
        ),
        &auth,
    );
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("jvinvite_"), "{body}");

    // The browser's command line names a private page, not the token.
    let argv = dir.path().join("argv.txt");
    let browser = dir.path().join("browser.sh");
    std::fs::write(
        &browser,
        format!("#!/bin/sh\necho \"$@\" > '{}'\n", argv.display()),
    )
    .unwrap();
    std::fs::set_permissions(&browser, std::fs::Permissions::from_mode(0o755)).unwrap();
    let opened = jarvis(&laptop)
        .arg("ui")
        .env("BROWSER", &browser)
        .output()
        .unwrap();
    assert!(opened.status.success(), "{opened:?}");
    let args = std::fs::read_to_string(&argv).unwrap();
    assert!(
        !args.contains(&token),
        "the token is on the browser's command line: {args}"
    );
    let page = args.trim().strip_prefix("file://").unwrap().to_owned();
    let meta = std::fs::metadata(&page).unwrap();
    assert_eq!(meta.permissions().mode() & 0o077, 0, "the page is private");
    assert!(
        std::fs::read_to_string(&page)
            .unwrap()
            .contains(&format!("#token={token}"))
    );

    // Rotating: the running node takes the new token at once and refuses the old one.
    let rotated = String::from_utf8(
        jarvis(&laptop)
            .args(["token", "--rotate"])
            .output()
            .unwrap()
            .stdout,
    )
    .unwrap()
    .trim()
    .to_owned();
    assert_eq!(rotated.len(), 64);
    assert_ne!(rotated, token);
    let status_with = |token: &str| {
        request(
            &addr,
            &format!(
                "GET /v1/status HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {token}\r\n"
            ),
        )
        .0
    };
    assert_eq!(status_with(&token), 401);
    assert_eq!(status_with(&rotated), 200);
    let printed = String::from_utf8(jarvis(&laptop).arg("token").output().unwrap().stdout).unwrap();
    assert_eq!(printed.trim(), rotated);
}
