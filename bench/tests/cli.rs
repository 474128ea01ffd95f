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

/// `mesh-sync` drives two real `jarvis up` processes (the debug `jarvis` built beside this
/// `jarvis-bench`) and a quinn pair: every figure is measured, nothing is a placeholder.
#[test]
fn mesh_sync_quick_measures_both_paths() {
    let jarvis = assert_cmd::cargo::cargo_bin("jarvis");
    assert!(
        jarvis.exists(),
        "{} is not built: run the workspace's tests (cargo nextest run --workspace)",
        jarvis.display()
    );
    let out = Command::cargo_bin("jarvis-bench")
        .unwrap()
        .args(["mesh-sync", "--quick", "--json"])
        .timeout(std::time::Duration::from_secs(240))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let figures: Vec<serde_json::Value> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let metrics: Vec<&str> = figures
        .iter()
        .map(|f| f["metric"].as_str().unwrap())
        .collect();
    assert_eq!(
        metrics,
        [
            "throughput_changes_per_s",
            "propagation_p50_ms",
            "propagation_p99_ms"
        ]
    );
    for f in &figures {
        assert_eq!(f["bench"], "mesh-sync");
        let (ours, reference) = (
            f["ours"].as_f64().unwrap(),
            f["reference"].as_f64().unwrap(),
        );
        assert!(ours.is_finite() && ours > 0.0, "{f}");
        assert!(reference.is_finite() && reference > 0.0, "{f}");
    }
    assert!(figures[1]["ours"].as_f64() <= figures[2]["ours"].as_f64());
}

/// Runs `jarvis-bench NAME --quick --json` against the debug build; returns its figures.
fn quick(name: &str) -> Vec<serde_json::Value> {
    let out = Command::cargo_bin("jarvis-bench")
        .unwrap()
        .args([name, "--quick", "--json"])
        .timeout(std::time::Duration::from_secs(300))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// `stt` runs the voice pipeline and whisper-rs direct on the same generated speech.
#[test]
fn stt_quick_measures_streaming_and_direct() {
    let figures = quick("stt");
    let metrics: Vec<&str> = figures
        .iter()
        .map(|f| f["metric"].as_str().unwrap())
        .collect();
    assert_eq!(
        metrics,
        [
            "end_of_speech_to_transcript",
            "transcribe",
            "true_end_of_speech_to_transcript_p50"
        ]
    );
    for f in &figures[..2] {
        assert!(f["reference"].as_f64().unwrap() > 0.0, "{f}");
        assert!(f["ratio"].as_f64().is_some(), "{f}");
    }
    assert!(figures[1]["ours"].as_f64().unwrap() > 0.0, "{}", figures[1]);
    assert!(figures[2]["ours"].as_f64().unwrap() > 0.0, "{}", figures[2]);
}

/// `voice-turn` speaks to a running node through `jarvis listen`.
#[test]
fn voice_turn_quick_measures_first_audio() {
    let figures = quick("voice-turn");
    assert_eq!(figures[0]["metric"], "end_of_speech_to_first_audio_p50_ms");
    assert_eq!(figures[0]["goal"], "<= 500");
    for f in &figures {
        assert!(f["ours"].as_f64().unwrap() > 0.0, "{f}");
    }
}

/// `relay-ack` runs a real `jarvis-relay` (the debug one beside this `jarvis-bench`) with
/// active devices and then a flooder: the flooder is held to its rate (throttled, not served
/// faster), and every figure is measured.
#[test]
fn relay_ack_quick_measures_and_holds_the_flooder_to_its_rate() {
    let figures = quick("relay-ack");
    let metric = |name: &str| {
        figures
            .iter()
            .find(|f| f["metric"] == name)
            .unwrap_or_else(|| panic!("no {name} in {figures:?}"))
            .clone()
    };
    for name in ["ack_p95_ms", "ack_p50_ms"] {
        let ours = metric(name)["ours"].as_f64().unwrap();
        assert!(ours.is_finite() && ours > 0.0, "{name}: {ours}");
    }
    let flood = metric("ack_p95_under_flood_ms");
    assert!(flood["ours"].as_f64().unwrap() > 0.0, "{flood}");
    let held = metric("flooder_taken_bytes_per_s");
    let ratio = held["ratio"].as_f64().unwrap();
    assert!(
        ratio > 0.0 && ratio < 1.5,
        "the flooder took {ratio} × its rate: {held}"
    );
}

/// `relay-capacity` ramps idle devices on a real `jarvis-relay` and iroh-relay clients on an
/// iroh-relay server: both are measured.
#[test]
fn relay_capacity_quick_measures_ours_and_iroh_relay() {
    let figures = quick("relay-capacity");
    assert_eq!(figures.len(), 2, "{figures:?}");
    for f in &figures {
        assert_eq!(f["bench"], "relay-capacity");
        let (ours, reference) = (
            f["ours"].as_f64().unwrap(),
            f["reference"].as_f64().unwrap(),
        );
        assert!(ours.is_finite() && ours > 0.0, "{f}");
        assert!(reference.is_finite() && reference > 0.0, "{f}");
    }
}

/// `sim-validate` runs the simulator and real processes on the same org and load: over the
/// delayed link the two agree within the 20%, and relay-ack's figures are measured on
/// both sides.
#[test]
fn sim_validate_quick_compares_the_simulator_with_real_runs() {
    let figures = quick("sim-validate");
    let metric = |name: &str| {
        figures
            .iter()
            .find(|f| f["metric"] == name)
            .cloned()
            .unwrap_or_else(|| panic!("no {name} in {figures:?}"))
    };
    for name in ["delayed_convergence_p50_ms", "delayed_convergence_p95_ms"] {
        let f = metric(name);
        let ratio = f["ratio"].as_f64().unwrap();
        assert!(
            (0.8..=1.2).contains(&ratio),
            "{name}: simulated ÷ real = {ratio}: {f}"
        );
    }
    for name in ["relay_ack_p50_ms", "relay_ack_p95_ms"] {
        let f = metric(name);
        assert!(f["ours"].as_f64().unwrap() > 0.0, "{f}");
        assert!(f["reference"].as_f64().unwrap() > 0.0, "{f}");
    }
}
