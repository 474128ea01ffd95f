//! The benchmark harness: every benchmark measures our code and a reference on the same input in
//! the same run, interleaved round by round so that a noisy neighbour slows both alike, and
//! reports the median of the per-round figures.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};

use serde::Serialize;

/// One reported figure, exactly the `jarvis-bench` JSON of cli.md.
#[derive(Debug, Clone, Serialize)]
pub struct Figure {
    pub bench: &'static str,
    pub metric: &'static str,
    pub ours: f64,
    /// Measured in the same run; `None` for absolute figures.
    pub reference: Option<f64>,
    /// `ours / reference`.
    pub ratio: Option<f64>,
    /// What the ratio (or absolute figure) should reach, as text such as ">= 0.8".
    pub goal: Option<String>,
    pub unit: &'static str,
}

impl Figure {
    pub fn compared(
        bench: &'static str,
        metric: &'static str,
        ours: f64,
        reference: f64,
        goal: &str,
        unit: &'static str,
    ) -> Self {
        Self {
            bench,
            metric,
            ours,
            reference: Some(reference),
            ratio: (reference != 0.0).then(|| ours / reference),
            goal: Some(goal.to_owned()),
            unit,
        }
    }
}

/// How long to measure.
#[derive(Debug, Clone, Copy)]
pub struct Budget {
    pub rounds: usize,
    pub round_time: Duration,
}

impl Budget {
    pub fn new(quick: bool) -> Self {
        if quick {
            Self {
                rounds: 5,
                round_time: Duration::from_millis(300),
            }
        } else {
            Self {
                rounds: 15,
                round_time: Duration::from_secs(1),
            }
        }
    }
}

/// Runs `op` repeatedly for about `time`; returns operations per second. `op` returns a value
/// that is passed to `black_box` so the work cannot be optimised away.
fn rate<T>(time: Duration, op: &mut impl FnMut() -> T) -> f64 {
    let start = Instant::now();
    let mut n: u64 = 0;
    while start.elapsed() < time {
        for _ in 0..16 {
            std::hint::black_box(op());
        }
        n += 16;
    }
    n as f64 / start.elapsed().as_secs_f64()
}

/// The median (the upper one of an even count); NaN for none.
pub fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(f64::total_cmp);
    xs.get(xs.len() / 2).copied().unwrap_or(f64::NAN)
}

/// Measures the throughput (operations per second) of `ours` and `reference`, alternating which
/// goes first each round; returns the two medians.
pub fn compare_rates<A, B>(
    budget: Budget,
    mut ours: impl FnMut() -> A,
    mut reference: impl FnMut() -> B,
) -> (f64, f64) {
    // Warm caches and branch predictors for both before measuring.
    rate(budget.round_time / 4, &mut ours);
    rate(budget.round_time / 4, &mut reference);
    let mut ours_rates = Vec::with_capacity(budget.rounds);
    let mut ref_rates = Vec::with_capacity(budget.rounds);
    for round in 0..budget.rounds {
        if round % 2 == 0 {
            ours_rates.push(rate(budget.round_time, &mut ours));
            ref_rates.push(rate(budget.round_time, &mut reference));
        } else {
            ref_rates.push(rate(budget.round_time, &mut reference));
            ours_rates.push(rate(budget.round_time, &mut ours));
        }
    }
    (median(ours_rates), median(ref_rates))
}

/// Times single runs of two long operations, alternating which goes first, `rounds` times each;
/// returns the median seconds of each.
pub fn compare_times<A, B>(
    rounds: usize,
    mut ours: impl FnMut() -> A,
    mut reference: impl FnMut() -> B,
) -> (f64, f64) {
    let time = |f: &mut dyn FnMut()| {
        let start = Instant::now();
        f();
        start.elapsed().as_secs_f64()
    };
    let mut ours_times = Vec::with_capacity(rounds);
    let mut ref_times = Vec::with_capacity(rounds);
    for round in 0..rounds {
        let mut o = || {
            std::hint::black_box(ours());
        };
        let mut r = || {
            std::hint::black_box(reference());
        };
        if round % 2 == 0 {
            ours_times.push(time(&mut o));
            ref_times.push(time(&mut r));
        } else {
            ref_times.push(time(&mut r));
            ours_times.push(time(&mut o));
        }
    }
    (median(ours_times), median(ref_times))
}

/// The program `name` next to this one (the release build puts the node and its workers there).
pub fn sibling(name: &str) -> Result<PathBuf> {
    let exe = std::env::current_exe()?;
    let path = exe.parent().map(|d| d.join(name)).context("no directory")?;
    if !path.is_file() {
        bail!(
            "{} is not built: run `cargo build --release -p jarvis-cli -p jarvis-relay -p jarvis-llm -p jarvis-stt -p jarvis-bench`",
            path.display()
        );
    }
    Ok(path)
}

/// The passphrase of the homes benchmarks make.
pub const PASSPHRASE: &str = "bench";

/// Runs `BIN --home HOME ARGS --json` (`jarvis` or `jarvis-relay`) to completion with the
/// benchmark passphrase and a low key-derivation cost; returns its JSON.
pub fn cli_json(
    bin: &std::path::Path,
    home: &std::path::Path,
    args: &[&str],
) -> Result<serde_json::Value> {
    let out = std::process::Command::new(bin)
        .env("JARVIS_PASSPHRASE", PASSPHRASE)
        .env("JARVIS_KDF_WORK_FACTOR", "10")
        .arg("--home")
        .arg(home)
        .args(args)
        .arg("--json")
        .output()
        .with_context(|| format!("running {} {args:?}", bin.display()))?;
    if !out.status.success() {
        bail!(
            "{} {args:?} failed: {}",
            bin.display(),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    serde_json::from_slice(&out.stdout).with_context(|| format!("{args:?} printed no JSON"))
}

/// The string `key` of a JSON object.
pub fn field(v: &serde_json::Value, key: &str) -> Result<String> {
    v.get(key)
        .and_then(serde_json::Value::as_str)
        .map(str::to_owned)
        .with_context(|| format!("no {key} in {v}"))
}

/// Stops a `jarvis up` the way Ctrl-C does (so it shuts down cleanly) and waits for it.
pub fn interrupt(child: &mut std::process::Child) {
    let _ = std::process::Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status();
    let _ = child.wait();
}
