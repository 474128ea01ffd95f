//! A memory ramp, shared by the relay capacity benchmark and its iroh-relay reference: a
//! process's resident memory, and how many connections fit the budget.

use anyhow::{Context, Result};

/// The per-service memory budget of the plan.
pub const RSS_BUDGET_BYTES: u64 = 200 * 1000 * 1000;

/// Resident memory of a process, in bytes.
pub fn rss_bytes(pid: u32) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .context("no VmRSS")?;
    Ok(kb * 1024)
}

/// A capacity ramp: `(connections, rss_bytes)` after each step, stopping past the budget.
pub struct Ramp {
    pub points: Vec<(usize, u64)>,
}

impl Ramp {
    /// Connections within the budget: where the ramp crossed it (between the last step under it
    /// and the first over it, linearly), or else projected from the memory per connection over
    /// the ramp. Returns (count, projected?).
    pub fn within_budget(&self) -> (f64, bool) {
        let budget = RSS_BUDGET_BYTES as f64;
        if let Some(over) = self
            .points
            .iter()
            .position(|(_, rss)| *rss > RSS_BUDGET_BYTES)
        {
            let (n2, r2) = self
                .points
                .get(over)
                .map_or((0.0, 0.0), |(n, r)| (*n as f64, *r as f64));
            let (n1, r1) = over
                .checked_sub(1)
                .and_then(|i| self.points.get(i))
                .map_or((0.0, 0.0), |(n, r)| (*n as f64, *r as f64));
            if r2 <= r1 || r1 > budget {
                return (n1, false);
            }
            return (n1 + (budget - r1) * (n2 - n1) / (r2 - r1), false);
        }
        (
            self.per_connection().map_or(f64::NAN, |(base, per)| {
                (RSS_BUDGET_BYTES as f64 - base) / per
            }),
            true,
        )
    }

    /// (baseline bytes, bytes per connection) by least squares over the ramp.
    pub fn per_connection(&self) -> Option<(f64, f64)> {
        let n = self.points.len() as f64;
        if self.points.len() < 2 {
            return None;
        }
        let (sx, sy) = self
            .points
            .iter()
            .fold((0.0, 0.0), |(a, b), (x, y)| (a + *x as f64, b + *y as f64));
        let (mx, my) = (sx / n, sy / n);
        let (mut sxy, mut sxx) = (0.0, 0.0);
        for (x, y) in &self.points {
            sxy += (*x as f64 - mx) * (*y as f64 - my);
            sxx += (*x as f64 - mx).powi(2);
        }
        (sxx > 0.0).then(|| {
            let slope = sxy / sxx;
            (my - slope * mx, slope)
        })
    }
}
