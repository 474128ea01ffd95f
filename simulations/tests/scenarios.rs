//! The simulator end to end: determinism, convergence after a partition, and the CLI.

#![allow(clippy::panic, clippy::indexing_slicing)]

use assert_cmd::Command;
use jarvis_sim::engine::{MINUTE, SECOND};
use jarvis_sim::net::LinkModel;
use jarvis_sim::scenario::{self, Model, Options};
use jarvis_sim::world::{Shape, Traffic, World};

fn run(name: &str, devices: u32, seed: u64) -> scenario::Report {
    run_model(name, devices, seed, None)
}

fn run_model(name: &str, devices: u32, seed: u64, model: Option<Model>) -> scenario::Report {
    let options = Options {
        devices: Some(devices),
        model,
        ..Options::new(seed)
    };
    let run =
        scenario::run(name, &options, &mut |_, _| {}).unwrap_or_else(|e| panic!("{name}: {e}"));
    match run.report {
        scenario::Outcome::Sync(report) => *report,
        scenario::Outcome::Gpu(_) => panic!("{name} is not a sync scenario"),
    }
}

fn report_bytes(dir: &std::path::Path, seed: &str) -> Vec<u8> {
    report_bytes_of(dir, seed, "full")
}

fn report_bytes_of(dir: &std::path::Path, seed: &str, model: &str) -> Vec<u8> {
    Command::cargo_bin("jarvis-sim")
        .unwrap_or_else(|e| panic!("{e}"))
        .args(["run", "org-day", "--devices", "9", "--seed", seed])
        .args(["--model", model, "--out"])
        .arg(dir)
        .assert()
        .success();
    std::fs::read(dir.join("report.json")).unwrap_or_else(|e| panic!("{e}"))
}

#[test]
fn the_same_seed_and_arguments_give_the_same_report_byte_for_byte() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let a = report_bytes(&dir.path().join("a"), "7");
    let b = report_bytes(&dir.path().join("b"), "7");
    let c = report_bytes(&dir.path().join("c"), "8");
    assert_eq!(a, b, "two runs with seed 7 wrote different reports");
    assert_ne!(a, c, "another seed should give another run");
    let report: serde_json::Value = serde_json::from_slice(&a).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(report["devices"], 9);
    assert_eq!(report["converged"], true);
    // Wall time and memory are kept out of the report (they differ run to run), in run.json.
    let run: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.path().join("a/run.json")).unwrap_or_default())
            .unwrap_or_else(|e| panic!("{e}"));
    assert!(run["wall_s"].as_f64().is_some_and(|w| w > 0.0), "{run}");
    let plot = std::fs::read_to_string(dir.path().join("a/convergence.svg")).unwrap_or_default();
    assert!(
        plot.starts_with("<svg") && plot.contains("p95"),
        "{plot:.200}"
    );
}

#[test]
fn an_org_day_delivers_every_change_at_about_two_link_latencies() {
    let report = run("org-day", 30, 1);
    assert!(report.converged, "{report:?}");
    assert_eq!(report.undelivered_changes, 0);
    assert!(report.tally.changes_written > 300, "{:?}", report.tally);
    // Every change reaches the user's two other devices.
    assert_eq!(report.tally.deliveries, report.tally.changes_written * 2);
    assert_eq!(report.tally.session_errors, 0);
    assert_eq!(report.tally.malformed, 0);
    // Device → relay → device: two one-way latencies of 20 ms median.
    let p50 = report.convergence_ms.p50;
    assert!((35.0..60.0).contains(&p50), "p50 {p50} ms");
    // With every device online, nothing waits for a resync (5 s).
    let max = report.convergence_ms.max;
    assert!(max < 2_000.0, "max {max} ms");
    assert!(report.relay_storage_bytes.iter().all(|&b| b > 0));
}

#[test]
fn after_a_partition_heals_every_replica_converges() {
    let report = run("partition", 12, 3);
    assert!(report.converged, "{report:?}");
    assert_eq!(report.undelivered_changes, 0);
    let partition = report.partition.unwrap_or_else(|| panic!("no partition"));
    let after = partition
        .backlog_delivered_after_s
        .unwrap_or_else(|| panic!("the backlog never arrived"));
    // Reconnection within 5 s, then the backlog in a few round trips.
    assert!(after < 30.0, "{after} s after the heal");
    // The cut held changes back: some waited most of the hour.
    assert!(
        report.convergence_ms.max > 30.0 * 60.0 * 1000.0,
        "max {} ms",
        report.convergence_ms.max
    );
    assert!(report.tally.dropped_with_connection > 0 || report.tally.connects > 12);
}

#[test]
fn losing_a_relay_instance_loses_no_change_and_its_devices_move() {
    let report = run("relay-loss", 30, 2);
    let loss = report.relay_loss.unwrap_or_else(|| panic!("no relay loss"));
    // Devices were spread over both instances; half of them moved.
    assert_eq!(loss.devices_moved, 15, "{loss:?}");
    assert_eq!(loss.changes_missing_from_database, 0, "{loss:?}");
    assert!(report.converged, "{report:?}");
    assert_eq!(report.undelivered_changes, 0);
    assert_eq!(report.tally.deliveries, report.tally.changes_written * 2);
    // A user's devices sat on different instances: their changes crossed through the shared
    // database's announcements, still at about two link latencies.
    let p50 = report.convergence_ms.p50;
    assert!((35.0..70.0).contains(&p50), "p50 {p50} ms");
    assert_eq!(report.relay_connections_at_end, vec![0, 30]);
}

#[test]
fn a_failed_gpu_peer_s_answers_move_to_the_others_chosen_by_the_nodes_scheduler() {
    let options = Options {
        devices: Some(1_000),
        ..Options::new(4)
    };
    let run =
        scenario::run("gpu-failure", &options, &mut |_, _| {}).unwrap_or_else(|e| panic!("{e}"));
    let scenario::Outcome::Gpu(outcome) = run.report else {
        panic!("not the GPU tier's report");
    };
    let gpu = &outcome.gpu;
    assert!(gpu.asked > 10_000, "{gpu:?}");
    // Every answer completed, some of them on a second peer.
    assert_eq!(gpu.answered, gpu.asked, "{gpu:?}");
    assert!(gpu.failed_over > 0, "{gpu:?}");
    assert_eq!(gpu.unanswered, 0);
    // The load spread: every peer served a share (the failed one until half time).
    let served = &gpu.served_per_peer;
    assert_eq!(served.len(), 4);
    let total: u64 = served.iter().sum();
    assert!(
        served.iter().all(|&s| s * 10 > total),
        "one peer served under a tenth: {served:?}"
    );
    assert!(
        served[0] < served[1],
        "the failed peer served less: {served:?}"
    );
    // A first token: two link latencies and the engine's 60 ms; under a second after a failover.
    let p50 = gpu.first_token_ms.p50;
    assert!((80.0..200.0).contains(&p50), "p50 {p50} ms");
    assert!(gpu.first_token_after_failover_ms.p95 < 1_000.0, "{gpu:?}");
}

#[test]
fn a_device_put_away_for_a_day_catches_up_on_its_return() {
    let shape = Shape {
        users: 1,
        devices_per_user: 3,
        relays: 1,
        sites: 1,
        shared_database: false,
    };
    let traffic = Traffic {
        changes_per_device_per_hour: 30.0,
        start_hour: 10.0,
    };
    let day = 24 * 60 * MINUTE;
    let end = day + 2 * 60 * MINUTE;
    let mut world = World::new(6, shape, traffic, LinkModel::WAN, end - 2 * MINUTE)
        .unwrap_or_else(|e| panic!("{e}"));
    world.away(0, 60 * MINUTE, day + 60 * MINUTE);
    world.run_until(day + 60 * MINUTE - SECOND);
    assert!(
        !world.unconverged().is_empty(),
        "away, it cannot hold the others' changes"
    );
    world.run_until(end);
    // The others wrote through the day; all of it arrived once it was back.
    assert!(
        world.backlog_at_return() > 100,
        "{}",
        world.backlog_at_return()
    );
    let caught_up = world
        .healed_in()
        .unwrap_or_else(|| panic!("it never caught up"));
    assert!(caught_up < 30 * SECOND, "{caught_up} µs");
    assert!(world.unconverged().is_empty());
}

#[test]
fn a_site_that_never_heals_is_reported_unconverged() {
    let shape = Shape {
        users: 2,
        devices_per_user: 2,
        relays: 1,
        sites: 2,
        shared_database: false,
    };
    let traffic = Traffic {
        changes_per_device_per_hour: 120.0,
        start_hour: 10.0,
    };
    let mut world = World::new(5, shape, traffic, LinkModel::WAN, 10 * MINUTE)
        .unwrap_or_else(|e| panic!("{e}"));
    world.partition(1, MINUTE, 100 * MINUTE);
    world.run_until(12 * MINUTE);
    let behind = world.unconverged();
    assert!(
        !behind.is_empty(),
        "a cut site's devices cannot have converged"
    );
    assert!(world.undelivered() > 0);
    assert_eq!(world.healed_in(), None);
    // Healing it brings everything together.
    world.partition(1, 12 * MINUTE + SECOND, 12 * MINUTE + 2 * SECOND);
    world.run_until(14 * MINUTE);
    assert!(world.unconverged().is_empty());
    assert_eq!(world.undelivered(), 0);
}

#[test]
fn a_scale_series_runs_each_size_and_plots_time_and_memory() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    Command::cargo_bin("jarvis-sim")
        .unwrap_or_else(|e| panic!("{e}"))
        .args(["scale", "org-day", "--devices", "6,12", "--out"])
        .arg(dir.path())
        .assert()
        .success();
    let scale: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.path().join("scale.json")).unwrap_or_default())
            .unwrap_or_else(|e| panic!("{e}"));
    let runs = scale["runs"].as_array().cloned().unwrap_or_default();
    let devices: Vec<u64> = runs.iter().filter_map(|r| r["devices"].as_u64()).collect();
    assert_eq!(devices, vec![6, 12], "{scale}");
    // Twice the devices, more events and more memory.
    assert!(
        runs[1]["events"].as_u64() > runs[0]["events"].as_u64(),
        "{scale}"
    );
    assert!(
        runs[1]["peak_rss_bytes"].as_u64() > runs[0]["peak_rss_bytes"].as_u64(),
        "{scale}"
    );
    let plot = std::fs::read_to_string(dir.path().join("scale.svg")).unwrap_or_default();
    assert!(plot.contains("peak memory"), "{plot:.200}");
}

#[test]
fn the_cli_names_every_scenario_and_says_which_are_not_built() {
    let out = Command::cargo_bin("jarvis-sim")
        .unwrap_or_else(|e| panic!("{e}"))
        .arg("list")
        .output()
        .unwrap_or_else(|e| panic!("{e}"));
    let text = String::from_utf8_lossy(&out.stdout);
    for name in [
        "org-day",
        "partition",
        "mass-revocation",
        "relay-loss",
        "gpu-failure",
        "month-offline",
    ] {
        assert!(text.contains(name), "{name} missing from:\n{text}");
    }
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    for (args, says) in [
        (
            &["mass-revocation", "--model", "full"][..],
            "light model only",
        ),
        (&["org-day", "--model", "heavy"][..], "full or light"),
        (&["no-such"][..], "jarvis-sim list"),
    ] {
        let scenario = args.join(" ");
        let out = Command::cargo_bin("jarvis-sim")
            .unwrap_or_else(|e| panic!("{e}"))
            .arg("run")
            .args(args)
            .arg("--out")
            .arg(dir.path())
            .output()
            .unwrap_or_else(|e| panic!("{e}"));
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{scenario} ran");
        assert!(stderr.contains(says), "{scenario}: {stderr}");
    }
}

#[test]
fn the_light_model_is_deterministic_and_plots_the_relay_fleet() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let a = report_bytes_of(&dir.path().join("a"), "5", "light");
    let b = report_bytes_of(&dir.path().join("b"), "5", "light");
    assert_eq!(a, b, "two light runs with seed 5 wrote different reports");
    let report: serde_json::Value = serde_json::from_slice(&a).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(report["model"], "light");
    assert!(
        report["costs"]["seal_us"].as_f64().is_some_and(|c| c > 0.0),
        "{report}"
    );
    assert!(
        report["sizes"]["change"].as_u64().is_some_and(|c| c > 72),
        "{report}"
    );
    assert_eq!(
        report["series"].as_array().map(Vec::len),
        Some(60),
        "a sample a minute"
    );
    let plot = std::fs::read_to_string(dir.path().join("a/relays.svg")).unwrap_or_default();
    assert!(
        plot.contains("CPU") && plot.contains("connections"),
        "{plot:.200}"
    );
}

/// The light model stands in for the full one at scale only because the two agree where both
/// run: the same org, seed and writes, compared figure by figure.
#[test]
fn the_light_model_agrees_with_the_full_one_on_the_same_org() {
    let full = run_model("org-day", 150, 3, Some(Model::Full));
    let light = run_model("org-day", 150, 3, Some(Model::Light));
    assert_eq!(light.tally.changes_written, full.tally.changes_written);
    assert_eq!(light.tally.deliveries, full.tally.deliveries);
    assert!(full.converged && light.converged);
    let close = |what: &str, a: f64, b: f64, within: f64| {
        assert!(
            (a - b).abs() <= b * within,
            "{what}: light {a} vs full {b} (more than {within} apart)"
        );
    };
    close(
        "p50",
        light.convergence_ms.p50,
        full.convergence_ms.p50,
        0.05,
    );
    close(
        "p95",
        light.convergence_ms.p95,
        full.convergence_ms.p95,
        0.10,
    );
    // A relay instance lost: the same devices move, nothing acknowledged is lost.
    let full = run_model("relay-loss", 60, 3, Some(Model::Full));
    let light = run_model("relay-loss", 60, 3, Some(Model::Light));
    let (f, l) = (
        full.relay_loss
            .unwrap_or_else(|| panic!("no relay-loss figures")),
        light
            .relay_loss
            .unwrap_or_else(|| panic!("no relay-loss figures")),
    );
    assert_eq!(l.devices_moved, f.devices_moved);
    assert_eq!(
        (
            l.changes_missing_from_database,
            f.changes_missing_from_database
        ),
        (0, 0)
    );
    assert!(light.converged);
}

#[test]
fn a_mass_revocation_is_refused_everywhere_and_every_remaining_key_rotated() {
    let report = run("mass-revocation", 3_000, 2);
    assert_eq!(report.model, Model::Light);
    let rv = report
        .revocation
        .clone()
        .unwrap_or_else(|| panic!("no revocation figures"));
    assert_eq!(rv.revoked_devices, 100, "one device of every tenth user");
    assert_eq!(rv.users_affected, 100);
    // Instance 0 at once, the other through the database's notification (5 ms).
    assert_eq!(rv.all_relays_refuse_after_ms, Some(5.0));
    // Every revoked device was refused once: dropped where it was connected, or at its hello
    // when it came back.
    assert_eq!(rv.connections_refused, 100);
    // Devices away at the revocation learn when they come back; by the end all have.
    assert_eq!(rv.devices_unaware_at_end, 0);
    assert_eq!(rv.users_not_rotated_at_end, 0);
    assert!(rv.spread_ms.p50 < 1_000.0, "{:?}", rv.spread_ms);
    assert!(
        rv.spread_ms.max > 60_000.0,
        "the away devices are in the tail: {:?}",
        rv.spread_ms
    );
    // The remaining devices converge; revoked ones are left out.
    assert!(
        report.converged,
        "{} undelivered",
        report.undelivered_changes
    );
}

#[test]
fn a_plan_sizes_a_fleet_that_meets_the_targets_and_says_when_none_does() {
    let out = Command::cargo_bin("jarvis-sim")
        .unwrap_or_else(|e| panic!("{e}"))
        .args([
            "plan",
            "--users",
            "300",
            "--voice-turns-per-user-per-hour",
            "12",
            "--json",
        ])
        .output()
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let plan: serde_json::Value =
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(plan["meets_targets"], true, "{plan}");
    let relays = plan["relay_instances"].as_f64().unwrap_or(0.0);
    let peers = plan["gpu_peers"].as_f64().unwrap_or(0.0);
    // One spare of each, so one can be down.
    assert!(relays >= 2.0 && peers >= 2.0, "{plan}");
    assert!(
        plan["sync_ms"]["p95"].as_f64().is_some_and(|p| p <= 100.0),
        "{plan}"
    );
    assert!(
        plan["gpu_first_token_ms"]["p95"]
            .as_f64()
            .is_some_and(|p| p <= 500.0),
        "{plan}"
    );
    let per_user = (relays * 15.0 + peers * 1_200.0) / 300.0;
    let cost = plan["cost_per_user_per_month"].as_f64().unwrap_or(0.0);
    assert!((cost - per_user).abs() < 1e-9, "{cost} vs {per_user}");
    // A GPU whose first token alone is over the target: no fleet can meet it, and it says so.
    let out = Command::cargo_bin("jarvis-sim")
        .unwrap_or_else(|e| panic!("{e}"))
        .args(["plan", "--users", "30", "--gpu-ttft-ms", "600"])
        .output()
        .unwrap_or_else(|e| panic!("{e}"));
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(!out.status.success(), "{stdout}");
    assert!(
        stdout.contains("TARGETS NOT MET") && stdout.contains("tried: "),
        "{stdout}"
    );
    assert!(
        stderr.contains("no fleet tried meets the targets"),
        "{stderr}"
    );
}

/// The org shape in small: users × 3 devices with the GPU peers answering their voice
/// turns on the same clock, chosen by the node's own scheduler.
#[test]
fn an_org_day_runs_its_gpu_tier_alongside_the_sync() {
    let options = Options {
        devices: Some(3_000),
        relays: Some(2),
        model: Some(Model::Light),
        gpu_peers: Some(3),
        voice_turns_per_user_per_hour: 10.0,
        ..Options::new(6)
    };
    let run = scenario::run("org-day", &options, &mut |_, _| {}).unwrap_or_else(|e| panic!("{e}"));
    let scenario::Outcome::Sync(report) = run.report else {
        panic!("not a sync report");
    };
    assert!(report.converged);
    let gpu = report
        .gpu
        .clone()
        .unwrap_or_else(|| panic!("no GPU tier in the report"));
    assert_eq!(gpu.model.peers, 3);
    // 1,000 users at 10 an hour for 58 minutes: about 9,700 turns.
    assert!((9_000..10_500).contains(&gpu.asked), "{gpu:?}");
    assert!(gpu.answered_share >= 0.999, "{gpu:?}");
    assert!(gpu.first_token_ms.p95 < 500.0, "{gpu:?}");
    assert!(report.assumptions.iter().any(|a| a.contains("GPU tier")));
}
