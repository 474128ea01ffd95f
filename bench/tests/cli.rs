//! `jarvis-bench` keeps the cli.md contract: `list`, and one JSON object per figure with a
//! reference measured in the same run.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

use assert_cmd::Command;

#[test]
fn list_names_identity_verify() {
    let out = Command::cargo_bin("jarvis-bench")
        .unwrap()
        .arg("list")
        .output()
        .unwrap();
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("identity-verify"));
}

#[test]
fn identity_verify_quick_prints_contract_json() {
    let out = Command::cargo_bin("jarvis-bench")
        .unwrap()
        .args(["identity-verify", "--quick", "--json"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let line = String::from_utf8(out.stdout).unwrap();
    let figure: serde_json::Value = serde_json::from_str(line.trim()).unwrap();
    for key in [
        "bench",
        "metric",
        "ours",
        "reference",
        "ratio",
        "goal",
        "unit",
    ] {
        assert!(figure.get(key).is_some(), "missing {key} in {figure}");
    }
    let ours = figure["ours"].as_f64().unwrap();
    let reference = figure["reference"].as_f64().unwrap();
    assert!(ours > 0.0 && reference > 0.0);
    let ratio = figure["ratio"].as_f64().unwrap();
    assert!((ratio - ours / reference).abs() < 1e-9);
}

#[test]
fn unknown_benchmarks_are_named_in_the_error() {
    let out = Command::cargo_bin("jarvis-bench")
        .unwrap()
        .arg("nope")
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("identity-verify"));
}
