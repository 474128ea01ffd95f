//! The deployment files in `deploy/` are what their tools accept: the systemd unit passes
//! `systemd-analyze verify` with nothing to say (an unknown key or a bad value is a warning
//! there, not a failure, so the test fails on any output about the unit).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::process::Command;

#[test]
fn the_systemd_unit_verifies_cleanly() {
    // The running package's directory, not the one compiled in (the shared target directory
    // may hold a binary built from another checkout).
    let manifest =
        std::env::var("CARGO_MANIFEST_DIR").unwrap_or_else(|_| env!("CARGO_MANIFEST_DIR").into());
    let deploy = Path::new(&manifest).join("../deploy");
    let unit = std::fs::read_to_string(deploy.join("jarvis-relay.service")).unwrap();
    // `verify` checks that ExecStart's program exists: point it at the one just built.
    let bin = assert_cmd::cargo::cargo_bin("jarvis-relay");
    assert!(unit.contains("ExecStart=/usr/local/bin/jarvis-relay up --store-file %d/store-url"));
    let unit = unit.replace("/usr/local/bin/jarvis-relay", bin.to_str().unwrap());
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("jarvis-relay.service");
    std::fs::write(&path, unit).unwrap();
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&path)
        .output()
        .expect("systemd-analyze (the systemd package; scripts/test.sh installs it)");
    let said = String::from_utf8_lossy(&out.stderr);
    let about_unit: Vec<&str> = said
        .lines()
        .filter(|l| l.contains("jarvis-relay.service"))
        .collect();
    assert!(out.status.success() && about_unit.is_empty(), "{said}");
    // The secrets are credentials, never on the command line or in the environment.
    let text = std::fs::read_to_string(&path).unwrap();
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        assert!(
            !line.contains("JARVIS_PASSPHRASE="),
            "a passphrase in the unit: {line}"
        );
        assert!(
            !line.contains("postgres://"),
            "a database URL in the unit: {line}"
        );
    }
    assert!(
        text.contains("LoadCredential=store-url:") && text.contains("--store-file %d/store-url")
    );
}
