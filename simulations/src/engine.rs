//! The discrete-event core: a virtual clock, an event queue ordered by (time, key), and a
//! counter-based random source.
//!
//! Determinism: nothing here reads the wall clock or the OS's randomness. Events that fall at
//! the same microsecond run in the order of their keys, which callers make from stable names
//! (a link and its message counter, a device and its timer), never from insertion order, so
//! iteration order elsewhere (a hash map's) cannot change what happens. Random draws are a pure
//! function of (seed, stream, counter): a link's latencies depend only on that link's own
//! messages.

use std::cmp::{Ordering, Reverse};
use std::collections::BinaryHeap;

use serde::Serialize;

/// Virtual time, in microseconds since the start of the run.
pub type Micros = u64;

pub const MS: Micros = 1_000;
pub const SECOND: Micros = 1_000_000;
pub const MINUTE: Micros = 60 * SECOND;
pub const HOUR: Micros = 60 * MINUTE;

/// An event due at `at`, ordered among events of the same time by `key`.
struct Scheduled<E> {
    at: Micros,
    key: (u64, u64),
    event: E,
}

impl<E> PartialEq for Scheduled<E> {
    fn eq(&self, other: &Self) -> bool {
        (self.at, self.key) == (other.at, other.key)
    }
}
impl<E> Eq for Scheduled<E> {}
impl<E> PartialOrd for Scheduled<E> {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl<E> Ord for Scheduled<E> {
    fn cmp(&self, other: &Self) -> Ordering {
        (self.at, self.key).cmp(&(other.at, other.key))
    }
}

/// Width of one slot of the queue's wheel.
const SLOT: Micros = 1_000;
/// Slots in the wheel (65 s of them): events due within this many slots of the cursor live in
/// the wheel, later ones in `far` until the cursor comes near.
const SLOTS: usize = 1 << 16;

type Heap<E> = BinaryHeap<Reverse<Scheduled<E>>>;

/// The event queue and the clock it drives: a calendar queue (a wheel of 1 ms slots, each a
/// small heap, and one heap for what is due beyond the wheel), so that taking the next event
/// costs about the same for a million devices as for a thousand. The order is exactly (time,
/// key), as one heap of everything would give.
pub struct Queue<E> {
    wheel: Vec<Heap<E>>,
    /// A bit per slot: set while it holds something (to skip empty ones quickly).
    occupied: Vec<u64>,
    far: Heap<E>,
    in_wheel: usize,
    /// The start of the slot being drained; every event in the wheel is due in
    /// `[cursor, cursor + SLOTS × SLOT)`, so each slot holds one slot's worth of time.
    cursor: Micros,
    now: Micros,
    /// Events run so far.
    pub ran: u64,
}

impl<E> Default for Queue<E> {
    fn default() -> Self {
        Self {
            wheel: (0..SLOTS).map(|_| BinaryHeap::new()).collect(),
            occupied: vec![0; SLOTS / 64],
            far: BinaryHeap::new(),
            in_wheel: 0,
            cursor: 0,
            now: 0,
            ran: 0,
        }
    }
}

impl<E> Queue<E> {
    pub fn now(&self) -> Micros {
        self.now
    }

    fn horizon(&self) -> Micros {
        self.cursor + SLOT * SLOTS as Micros
    }

    fn slot(at: Micros) -> usize {
        ((at / SLOT) % SLOTS as Micros) as usize
    }

    /// How many slots from the cursor's to the next occupied one (the wheel is not empty).
    fn to_next_occupied(&self) -> usize {
        let start = Self::slot(self.cursor);
        let words = self.occupied.len();
        let (first, bit) = (start / 64, start % 64);
        for step in 0..=words {
            let w = (first + step) % words;
            let mut word = self.occupied.get(w).copied().unwrap_or(0);
            if step == 0 {
                word &= !0u64 << bit;
            }
            if word != 0 {
                let found = w * 64 + word.trailing_zeros() as usize;
                return (found + SLOTS - start) % SLOTS;
            }
        }
        0
    }

    fn place(&mut self, scheduled: Scheduled<E>) {
        if scheduled.at < self.horizon() {
            let slot = Self::slot(scheduled.at);
            if let Some(heap) = self.wheel.get_mut(slot) {
                heap.push(Reverse(scheduled));
                self.in_wheel += 1;
                if let Some(w) = self.occupied.get_mut(slot / 64) {
                    *w |= 1 << (slot % 64);
                }
            }
        } else {
            self.far.push(Reverse(scheduled));
        }
    }

    /// Moves what the wheel now reaches out of `far`.
    fn pull_far(&mut self) {
        while self
            .far
            .peek()
            .is_some_and(|Reverse(s)| s.at < self.horizon())
        {
            if let Some(Reverse(s)) = self.far.pop() {
                self.place(s);
            }
        }
    }

    /// Schedules `event` at `at` (never before now). `key` orders events of the same time and
    /// must be unique among them.
    pub fn at(&mut self, at: Micros, key: (u64, u64), event: E) {
        self.place(Scheduled {
            at: at.max(self.now),
            key,
            event,
        });
    }

    /// The next event due at or before `until`, advancing the clock to it.
    pub fn next(&mut self, until: Micros) -> Option<E> {
        loop {
            if self.in_wheel == 0 {
                match self.far.peek() {
                    Some(Reverse(s)) if s.at <= until => {
                        self.cursor = s.at / SLOT * SLOT;
                        self.pull_far();
                    }
                    _ => {
                        self.now = self.now.max(until);
                        return None;
                    }
                }
            }
            let slot = Self::slot(self.cursor);
            let heap = self.wheel.get_mut(slot)?;
            if let Some(Reverse(s)) = heap.peek() {
                if s.at > until {
                    self.now = self.now.max(until);
                    return None;
                }
                let Reverse(s) = heap.pop()?;
                if heap.is_empty() {
                    // A burst's slot gives its memory back, so the wheel stays small.
                    if heap.capacity() > 32 {
                        heap.shrink_to(8);
                    }
                    if let Some(w) = self.occupied.get_mut(slot / 64) {
                        *w &= !(1 << (slot % 64));
                    }
                }
                self.in_wheel -= 1;
                self.now = s.at;
                self.ran += 1;
                return Some(s.event);
            }
            // On to the next slot that holds something (far events only become due beyond
            // the wheel's old end, after it).
            let next = self.cursor + self.to_next_occupied().max(1) as Micros * SLOT;
            if next > until {
                self.now = self.now.max(until);
                return None;
            }
            self.cursor = next;
            self.pull_far();
        }
    }

    pub fn len(&self) -> usize {
        self.in_wheel + self.far.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// SplitMix64's finaliser: a good 64-bit mix, cheap and stateless.
fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Random draws as a pure function of (seed, stream, counter).
#[derive(Debug, Clone, Copy)]
pub struct Draws {
    seed: u64,
}

impl Draws {
    pub fn new(seed: u64) -> Self {
        Self { seed: mix(seed) }
    }

    pub fn u64(&self, stream: u64, counter: u64) -> u64 {
        mix(self.seed ^ mix(stream ^ mix(counter)))
    }

    /// Uniform in [0, 1).
    pub fn unit(&self, stream: u64, counter: u64) -> f64 {
        (self.u64(stream, counter) >> 11) as f64 / (1u64 << 53) as f64
    }

    /// A standard normal (Box–Muller over two draws of the stream).
    pub fn normal(&self, stream: u64, counter: u64) -> f64 {
        let u1 = self
            .unit(stream, counter.wrapping_mul(2))
            .max(f64::MIN_POSITIVE);
        let u2 = self.unit(stream, counter.wrapping_mul(2).wrapping_add(1));
        (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
    }

    /// Exponential with the given mean (the gaps of a Poisson process).
    pub fn exponential(&self, stream: u64, counter: u64, mean: f64) -> f64 {
        let u = self.unit(stream, counter).max(f64::MIN_POSITIVE);
        -mean * u.ln()
    }

    /// A seed of 32 bytes for a key, from (stream, counter).
    pub fn seed32(&self, stream: u64, counter: u64) -> [u8; 32] {
        let mut out = [0u8; 32];
        for (i, chunk) in out.chunks_mut(8).enumerate() {
            chunk.copy_from_slice(
                &self
                    .u64(stream, counter.wrapping_mul(4) + i as u64)
                    .to_le_bytes(),
            );
        }
        out
    }
}

/// The `p`-quantile (nearest rank) of `values`, sorted in place; 0 when empty.
pub fn quantile(values: &mut [u64], p: f64) -> u64 {
    if values.is_empty() {
        return 0;
    }
    values.sort_unstable();
    let rank = ((p * values.len() as f64).ceil() as usize).clamp(1, values.len());
    values.get(rank - 1).copied().unwrap_or(0)
}

/// Latency figures, in milliseconds.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Quantiles {
    pub count: usize,
    pub p50: f64,
    pub p95: f64,
    pub p99: f64,
    pub max: f64,
}

impl Quantiles {
    /// Of latencies in microseconds (sorted in place).
    pub fn of(values: &mut [u64]) -> Self {
        let ms = |us: u64| us as f64 / 1000.0;
        Self {
            count: values.len(),
            p50: ms(quantile(values, 0.50)),
            p95: ms(quantile(values, 0.95)),
            p99: ms(quantile(values, 0.99)),
            max: ms(quantile(values, 1.0)),
        }
    }
}

/// Latencies in microseconds, counted in buckets of at most 0.2% relative width (exact below
/// 1,024 µs): constant memory however many are recorded, for runs of millions of deliveries.
#[derive(Debug, Clone)]
pub struct Histogram {
    counts: Vec<u64>,
    total: u64,
    max: u64,
}

const EXACT: u64 = 1024;
const MANTISSA_BITS: u32 = 9;

impl Default for Histogram {
    fn default() -> Self {
        Self {
            counts: vec![0; Self::bucket(u64::MAX) + 1],
            total: 0,
            max: 0,
        }
    }
}

impl Histogram {
    fn bucket(v: u64) -> usize {
        if v < EXACT {
            return v as usize;
        }
        let exponent = 63 - v.leading_zeros(); // ≥ 10
        let shift = exponent - MANTISSA_BITS;
        let mantissa = (v >> shift) & ((1 << MANTISSA_BITS) - 1);
        (EXACT + u64::from(exponent - 10) * (1 << MANTISSA_BITS) + mantissa) as usize
    }

    /// The smallest value of bucket `b`.
    fn floor(b: usize) -> u64 {
        let b = b as u64;
        if b < EXACT {
            return b;
        }
        let exponent = (b - EXACT) / (1 << MANTISSA_BITS) + 10;
        let mantissa = (b - EXACT) % (1 << MANTISSA_BITS);
        (1 << exponent) | (mantissa << (exponent - u64::from(MANTISSA_BITS)))
    }

    pub fn record(&mut self, us: u64) {
        if let Some(c) = self.counts.get_mut(Self::bucket(us)) {
            *c += 1;
        }
        self.total += 1;
        self.max = self.max.max(us);
    }

    pub fn len(&self) -> u64 {
        self.total
    }

    pub fn is_empty(&self) -> bool {
        self.total == 0
    }

    /// The `p`-quantile (nearest rank), as its bucket's smallest value; the maximum exactly.
    pub fn quantile(&self, p: f64) -> u64 {
        if self.total == 0 {
            return 0;
        }
        if p >= 1.0 {
            return self.max;
        }
        let rank = ((p * self.total as f64).ceil() as u64).clamp(1, self.total);
        let mut seen = 0;
        for (b, &c) in self.counts.iter().enumerate() {
            seen += c;
            if seen >= rank {
                return Self::floor(b).min(self.max);
            }
        }
        self.max
    }

    pub fn quantiles(&self) -> Quantiles {
        let ms = |us: u64| us as f64 / 1000.0;
        Quantiles {
            count: self.total as usize,
            p50: ms(self.quantile(0.50)),
            p95: ms(self.quantile(0.95)),
            p99: ms(self.quantile(0.99)),
            max: ms(self.quantile(1.0)),
        }
    }

    /// `n + 1` values at evenly spaced ranks (for a plot of the distribution).
    pub fn ranks(&self, n: usize) -> Vec<u64> {
        if self.total == 0 {
            return Vec::new();
        }
        (0..=n)
            .map(|i| self.quantile(i as f64 / n.max(1) as f64))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_of_one_time_run_in_key_order_whatever_the_insertion_order() {
        let mut q = Queue::default();
        q.at(5, (2, 0), "c");
        q.at(5, (1, 9), "b");
        q.at(1, (9, 9), "a");
        q.at(7, (0, 0), "late");
        let mut seen = Vec::new();
        while let Some(e) = q.next(6) {
            seen.push((q.now(), e));
        }
        assert_eq!(seen, vec![(1, "a"), (5, "b"), (5, "c")]);
        assert_eq!(
            q.now(),
            6,
            "the clock moves to the horizon when nothing more is due"
        );
        assert_eq!(q.next(10), Some("late"));
    }

    #[test]
    fn draws_are_a_function_of_seed_stream_and_counter() {
        let (a, b) = (Draws::new(1), Draws::new(1));
        assert_eq!(a.u64(3, 4), b.u64(3, 4));
        assert_ne!(a.u64(3, 4), a.u64(3, 5));
        assert_ne!(a.u64(3, 4), Draws::new(2).u64(3, 4));
        // A normal's mean and spread, over many draws.
        let n = 20_000;
        let xs: Vec<f64> = (0..n).map(|i| a.normal(7, i)).collect();
        let mean = xs.iter().sum::<f64>() / n as f64;
        let var = xs.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / n as f64;
        assert!(mean.abs() < 0.03, "mean {mean}");
        assert!((var - 1.0).abs() < 0.05, "variance {var}");
    }

    #[test]
    fn quantiles_by_nearest_rank() {
        let mut v: Vec<u64> = (1..=100).rev().collect();
        assert_eq!(quantile(&mut v, 0.5), 50);
        assert_eq!(quantile(&mut v, 0.95), 95);
        assert_eq!(quantile(&mut v, 1.0), 100);
        assert_eq!(quantile(&mut [], 0.5), 0);
    }

    #[test]
    fn a_histogram_keeps_quantiles_within_its_bucket_width() {
        let mut h = Histogram::default();
        let mut exact: Vec<u64> = Vec::new();
        let draws = Draws::new(9);
        for i in 0..50_000 {
            let v = (draws.exponential(1, i, 40_000.0) as u64) + 1;
            h.record(v);
            exact.push(v);
        }
        for p in [0.5, 0.95, 0.99] {
            let want = quantile(&mut exact, p) as f64;
            let got = h.quantile(p) as f64;
            assert!(
                (got - want).abs() <= want * 0.002 + 1.0,
                "p{p}: {got} vs {want}"
            );
        }
        assert_eq!(h.quantile(1.0), quantile(&mut exact, 1.0));
        for v in [0, 1, 1023, 1024, 1025, 99_999, 1 << 40, u64::MAX] {
            let b = Histogram::bucket(v);
            assert!(Histogram::floor(b) <= v, "{v}");
            assert_eq!(Histogram::bucket(Histogram::floor(b)), b, "{v}");
        }
    }

    #[test]
    fn the_wheel_gives_the_order_one_heap_would_across_slots_and_far_events() {
        let draws = Draws::new(3);
        let mut q = Queue::default();
        let mut want = Vec::new();
        // Due from now to ten minutes out (most beyond the wheel), some at the same time.
        for i in 0..20_000u64 {
            let at = draws.u64(1, i) % (600 * SECOND) / 7 * 7;
            q.at(at, (draws.u64(2, i) % 5, i), (at, i));
            want.push((at, draws.u64(2, i) % 5, i));
        }
        want.sort_unstable();
        let mut got = Vec::new();
        let mut until = 0;
        while got.len() < want.len() {
            until += 37 * SECOND / 10;
            while let Some((at, i)) = q.next(until) {
                assert!(at <= until);
                assert_eq!(q.now(), at);
                got.push((at, draws.u64(2, i) % 5, i));
                // Events scheduled while running, some at the same instant.
                if i < 1_000_000 && i % 1_000 == 0 {
                    let later = at + draws.u64(3, i) % (20 * SECOND);
                    q.at(later, (9, i), (later, i + 1_000_000));
                    want.push((later, 9, i + 1_000_000));
                }
            }
            assert_eq!(q.now(), until);
        }
        want.sort_unstable();
        let got: Vec<(u64, u64)> = got.iter().map(|g| (g.0, g.2)).collect();
        let want: Vec<(u64, u64)> = want.iter().map(|w| (w.0, w.2)).collect();
        assert_eq!(got.len(), want.len());
        assert!(got == want, "the wheel's order differs from (time, key)");
        assert!(q.is_empty());
    }
}
