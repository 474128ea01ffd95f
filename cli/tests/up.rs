//! `jarvis up` in personal mode: creates a one-person org, reports its identity, and stops
//! cleanly on SIGINT (Ctrl-C) and SIGTERM.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

use std::process::{Command, Stdio};

use serde_json::Value;

mod common;
use common::jarvis;

/// Starts `jarvis up --json`, waits for its "up" line, sends `signal`, and returns the device id
/// and the exit status.
fn up_then_signal(
    home: &std::path::Path,
    signal: &str,
) -> (String, std::process::ExitStatus, Vec<Value>) {
    let mut child = jarvis(home);
    child
        .args(["up", "--json", "--user", "pat"])
        // Tests run in parallel: an ephemeral API port and loopback only, no mDNS.
        .args([
            "--api",
            "127.0.0.1:0",
            "--no-mdns",
            "--listen",
            "/ip4/127.0.0.1/udp/0/quic-v1",
        ])
        .stderr(Stdio::piped());
    let (mut child, lines, first) = common::spawn_up(&mut child);
    // A client following the event stream (as the desktop app does) must not keep the node from
    // stopping.
    let _events = follow_events(home, first["api"].as_str().unwrap());
    let status = Command::new("kill")
        .args([signal, &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let rest: Vec<Value> = lines
        .map(|l| serde_json::from_str(&l.unwrap()).unwrap())
        .collect();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let exit = loop {
        if let Some(exit) = child.try_wait().unwrap() {
            break exit;
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            panic!("jarvis up did not stop within 20 s of {signal}");
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    (first["device_id"].as_str().unwrap().to_owned(), exit, rest)
}

/// Opens `GET /v1/events` on the node's API and reads until the stream has started.
fn follow_events(home: &std::path::Path, api: &str) -> std::net::TcpStream {
    use std::io::{Read, Write};
    let out = jarvis(home).arg("token").output().unwrap();
    let token = String::from_utf8(out.stdout).unwrap();
    let mut stream = std::net::TcpStream::connect(api).unwrap();
    write!(
        stream,
        "GET /v1/events HTTP/1.1\r\nHost: {api}\r\nAuthorization: Bearer {}\r\n\r\n",
        token.trim()
    )
    .unwrap();
    let mut head = [0u8; 12];
    stream.read_exact(&mut head).unwrap();
    assert_eq!(&head, b"HTTP/1.1 200", "the event stream did not open");
    stream
}

#[cfg(unix)]
#[test]
fn personal_mode_starts_reports_and_stops_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path().join("node");

    let (device_id, exit, rest) = up_then_signal(&home, "-INT");
    assert!(exit.success(), "exit status {exit:?}");
    assert_eq!(rest.last().unwrap()["event"], "stopped");

    // The identity persists: a second run is the same device, and SIGTERM also stops it cleanly.
    let (again, exit, _) = up_then_signal(&home, "-TERM");
    assert!(exit.success());
    assert_eq!(again, device_id);

    let out = jarvis(&home).args(["whoami", "--json"]).output().unwrap();
    let who: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(who["personal"], true);
    assert_eq!(who["user"], "pat");
    assert_eq!(who["device_id"], device_id.as_str());
    assert_eq!(who["roles"], serde_json::json!(["member", "admin"]));
}

#[test]
fn up_with_a_wrong_passphrase_fails_without_starting() {
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path().join("node");
    let (_, exit, _) = up_then_signal(&home, "-INT");
    assert!(exit.success());
    let out = jarvis(&home)
        .env("JARVIS_PASSPHRASE", "wrong")
        .args(["up", "--api", "127.0.0.1:0", "--no-mdns"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("wrong passphrase"), "{stderr}");
}
