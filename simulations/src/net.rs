//! The modelled network between devices and relay instances.
//!
//! Each direction of a device's connection is a link: a FIFO with a bandwidth (a message leaves
//! once the ones before it have) and a one-way latency drawn from a log-normal distribution
//! given by its median and 95th percentile. The transport is QUIC, so a lost packet is
//! retransmitted, not lost: with probability `loss` a message is delayed by a retransmission
//! timeout (three round trips' worth of its median, at least 200 ms) instead. A connection has a
//! generation; a partition or a device going offline ends the generation, and messages still in
//! flight on it are dropped when they arrive, as a closed QUIC connection drops them.

use crate::engine::{Draws, MS, Micros, SECOND};

/// How one kind of link behaves.
#[derive(Debug, Clone, Copy, serde::Serialize)]
pub struct LinkModel {
    /// One-way latency, median and 95th percentile, in ms.
    pub median_ms: f64,
    pub p95_ms: f64,
    /// Probability that a message meets a loss and waits for its retransmission.
    pub loss: f64,
    /// Bytes per second.
    pub bandwidth: f64,
}

impl LinkModel {
    /// A home or office connection to a cloud region: 20 ms median, 45 ms p95, 0.5% loss,
    /// 20 Mbit/s.
    pub const WAN: Self = Self {
        median_ms: 20.0,
        p95_ms: 45.0,
        loss: 0.005,
        bandwidth: 2.5e6,
    };

    fn sigma(&self) -> f64 {
        (self.p95_ms / self.median_ms).max(1.0).ln() / 1.644_853_6
    }

    /// One message's latency, its `counter`-th on the link `stream`.
    pub fn latency(&self, draws: &Draws, stream: u64, counter: u64) -> Micros {
        let z = draws.normal(stream, counter);
        let mut ms = self.median_ms * (self.sigma() * z).exp();
        if draws.unit(stream ^ LOSS_STREAM, counter) < self.loss {
            ms += (3.0 * 2.0 * self.median_ms).max(200.0);
        }
        (ms * MS as f64) as Micros
    }

    /// Time on the wire for `bytes`.
    pub fn transmit(&self, bytes: usize) -> Micros {
        ((bytes as f64 / self.bandwidth) * SECOND as f64) as Micros
    }
}

const LOSS_STREAM: u64 = 0x4C05_5000_0000_0000;

/// One direction of a connection: when it is free again, how many messages it carried.
#[derive(Debug, Default, Clone, Copy)]
pub struct Link {
    busy_until: Micros,
    /// The last arrival of [`Link::send_ordered`].
    last_arrival: Micros,
    pub sent: u64,
    pub bytes: u64,
}

impl Link {
    /// Sends `bytes` at `now`: when the message arrives, and its number on this link.
    pub fn send(
        &mut self,
        model: &LinkModel,
        draws: &Draws,
        stream: u64,
        now: Micros,
        bytes: usize,
    ) -> (Micros, u64) {
        let leaves = self.busy_until.max(now) + model.transmit(bytes);
        self.busy_until = leaves;
        let n = self.sent;
        self.sent += 1;
        self.bytes += bytes as u64;
        (leaves + model.latency(draws, stream, n), n)
    }

    /// As [`Link::send`], on one ordered stream: a message never arrives before the one sent
    /// ahead of it (a late one holds up those behind it, as on one QUIC stream).
    pub fn send_ordered(
        &mut self,
        model: &LinkModel,
        draws: &Draws,
        stream: u64,
        now: Micros,
        bytes: usize,
    ) -> (Micros, u64) {
        let (at, n) = self.send(model, draws, stream, now, bytes);
        let at = at.max(self.last_arrival);
        self.last_arrival = at;
        (at, n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::quantile;

    #[test]
    fn latencies_follow_the_model() {
        let draws = Draws::new(42);
        let model = LinkModel {
            loss: 0.0,
            ..LinkModel::WAN
        };
        let mut v: Vec<u64> = (0..20_000).map(|i| model.latency(&draws, 1, i)).collect();
        let p50 = quantile(&mut v, 0.5) as f64 / 1000.0;
        let p95 = quantile(&mut v, 0.95) as f64 / 1000.0;
        assert!((p50 - 20.0).abs() < 1.0, "p50 {p50}");
        assert!((p95 - 45.0).abs() < 2.5, "p95 {p95}");
    }

    #[test]
    fn a_link_is_a_fifo_with_a_bandwidth() {
        let draws = Draws::new(1);
        let model = LinkModel {
            median_ms: 10.0,
            p95_ms: 10.0,
            loss: 0.0,
            bandwidth: 1e6,
        };
        let mut link = Link::default();
        // Two 1 MB messages at once: the second leaves a second after the first.
        let (a, _) = link.send(&model, &draws, 0, 0, 1_000_000);
        let (b, _) = link.send(&model, &draws, 0, 0, 1_000_000);
        assert_eq!(a, SECOND + 10 * MS);
        assert_eq!(b, 2 * SECOND + 10 * MS);
        assert_eq!(link.sent, 2);
    }
}
