//! Echo cancellation, so the assistant does not hear (and wake or barge in on) its own voice:
//! a normalised least-mean-squares (NLMS) adaptive filter, the textbook core of acoustic echo
//! cancellers such as speexdsp's. It learns the path from what is played (the reference) to
//! what the microphone picks up, and subtracts its estimate of that echo from the microphone.
//! Sans-IO: samples in, samples out.

/// An NLMS echo canceller.
#[derive(Debug, Clone)]
pub struct EchoCanceller {
    weights: Vec<f32>,
    /// The last `weights.len()` reference samples, newest last, in a ring.
    history: Vec<f32>,
    at: usize,
    energy: f32,
    step: f32,
}

impl EchoCanceller {
    /// A canceller modelling echo paths up to `taps` samples long (at 16 kHz, 512 taps is
    /// 32 ms), adapting with step `step` (0 < step < 2). A small step (0.05) learns a room in about a
    /// second and, unlike a large one, does not chase the user's voice when they talk over the
    /// answer (which would cancel them too).
    pub fn new(taps: usize, step: f32) -> Self {
        Self {
            weights: vec![0.0; taps.max(1)],
            history: vec![0.0; taps.max(1)],
            at: 0,
            energy: 0.0,
            step,
        }
    }

    /// Removes the echo of `reference` (what was played, sample-aligned with `mic`) from `mic`.
    pub fn process(&mut self, mic: &[f32], reference: &[f32]) -> Vec<f32> {
        let n = self.weights.len();
        let mut out = Vec::with_capacity(mic.len());
        for (i, &m) in mic.iter().enumerate() {
            let x = reference.get(i).copied().unwrap_or(0.0);
            // Slide the window: drop the oldest sample's energy, add the new one.
            let old = self.history.get(self.at).copied().unwrap_or(0.0);
            self.energy = (self.energy - old * old + x * x).max(0.0);
            if let Some(slot) = self.history.get_mut(self.at) {
                *slot = x;
            }
            self.at = (self.at + 1) % n;
            // history[(at + k) % n] is x[t - (n - 1 - k)]; weights[j] multiplies x[t - j].
            let mut estimate = 0.0;
            for (j, w) in self.weights.iter().enumerate() {
                let idx = (self.at + n - 1 - j) % n;
                estimate += w * self.history.get(idx).copied().unwrap_or(0.0);
            }
            let error = m - estimate;
            if self.energy > 1e-6 {
                let g = self.step * error / (self.energy + 1e-3);
                for (j, w) in self.weights.iter_mut().enumerate() {
                    let idx = (self.at + n - 1 - j) % n;
                    *w += g * self.history.get(idx).copied().unwrap_or(0.0);
                }
            }
            out.push(error);
        }
        out
    }
}

/// Reference samples of lag searched by [`echo_likeness`] (30 ms at 16 kHz): how much later
/// than it was played an echo may reach the microphone.
pub const MAX_LAG: usize = 480;

/// How much `residual` looks like a delayed copy of what was played: the largest normalised
/// correlation between it and `history` (the reference, oldest first, ending with the samples
/// played at the same time as `residual`, and [`MAX_LAG`] samples longer) at any lag. Near 1: it
/// is echo the canceller has not removed (yet); low: someone else is speaking.
pub fn echo_likeness(residual: &[f32], history: &[f32]) -> f32 {
    let n = residual.len();
    let Some(max_lag) = history.len().checked_sub(n) else {
        return 0.0;
    };
    let energy = |x: &[f32]| x.iter().map(|s| s * s).sum::<f32>();
    let e_res = energy(residual);
    if e_res < 1e-9 {
        return 0.0;
    }
    let mut best = 0.0_f32;
    // Every other lag: speech has little energy above 4 kHz, so the peak is not missed.
    for lag in (0..=max_lag).step_by(2) {
        let start = max_lag - lag;
        let Some(window) = history.get(start..start + n) else {
            continue;
        };
        let e_ref = energy(window);
        if e_ref < 1e-9 {
            continue;
        }
        let dot: f32 = residual.iter().zip(window).map(|(a, b)| a * b).sum();
        best = best.max(dot.abs() / (e_res * e_ref).sqrt());
    }
    best
}

#[cfg(test)]
mod tests {
    use super::*;

    fn energy(x: &[f32]) -> f32 {
        x.iter().map(|s| s * s).sum::<f32>() / x.len().max(1) as f32
    }

    /// A speech-like test signal: a few tones (one voice's, scaled by `pitch`) with a wobbling
    /// envelope.
    fn signal(len: usize, pitch: f32) -> Vec<f32> {
        (0..len)
            .map(|i| {
                let t = i as f32 / 16_000.0;
                let env = 0.5 + 0.5 * (t * 3.0 + pitch).sin();
                let f = 220.0 * pitch * std::f32::consts::TAU;
                env * 0.3 * ((t * f).sin() + 0.5 * (t * f * 2.4).sin() + 0.3 * (t * f * 5.3).sin())
            })
            .collect()
    }

    #[test]
    fn the_echo_of_the_played_audio_is_removed() {
        let played = signal(32_000, 1.0);
        // The room: 10 ms of delay, 60% of the level, a faint reflection 5 ms later.
        let mic: Vec<f32> = (0..played.len())
            .map(|i| {
                0.6 * i.checked_sub(160).map_or(0.0, |j| played[j])
                    + 0.2 * i.checked_sub(240).map_or(0.0, |j| played[j])
            })
            .collect();
        let mut aec = EchoCanceller::new(512, 0.05);
        let out = aec.process(&mic, &played);
        // After the first second of learning, the echo is 20 dB down or better.
        let before = energy(&mic[16_000..]);
        let after = energy(&out[16_000..]);
        assert!(after < before / 100.0, "{after} vs {before}");
    }

    #[test]
    fn the_user_speaking_over_the_echo_is_kept() {
        let played = signal(32_000, 1.0);
        let user = signal(32_000, 1.37);
        let mut aec = EchoCanceller::new(512, 0.05);
        // First the echo alone, then the user speaks over it.
        let echo = |i: usize| 0.6 * i.checked_sub(160).map_or(0.0, |j| played[j]);
        let mic: Vec<f32> = (0..32_000)
            .map(|i| echo(i) + if i >= 16_000 { user[i] * 0.5 } else { 0.0 })
            .collect();
        let out = aec.process(&mic, &played);
        let user_energy = energy(&user[16_000..].iter().map(|s| s * 0.5).collect::<Vec<_>>());
        let kept = energy(&out[16_000..]);
        // Most of the user's voice survives (the filter keeps adapting, so not all).
        assert!(kept > user_energy * 0.5, "{kept} vs {user_energy}");
    }

    #[test]
    fn an_echo_looks_like_the_reference_and_a_voice_does_not() {
        let played = signal(4_000, 1.0);
        let user = signal(4_000, 1.37);
        // The last 320 samples heard, with 800 of reference behind them.
        let history = &played[2_880..4_000];
        let echo: Vec<f32> = (3_680..4_000).map(|i| 0.6 * played[i - 160]).collect();
        assert!(echo_likeness(&echo, history) > 0.95);
        let voice: Vec<f32> = user[3_680..4_000].to_vec();
        assert!(
            echo_likeness(&voice, history) < 0.5,
            "{}",
            echo_likeness(&voice, history)
        );
        let both: Vec<f32> = echo.iter().zip(&voice).map(|(e, v)| e + v).collect();
        assert!(echo_likeness(&both, history) < 0.8);
        assert_eq!(echo_likeness(&[0.0; 320], history), 0.0);
        assert_eq!(echo_likeness(&voice, &[]), 0.0);
    }

    #[test]
    fn silence_passes_through() {
        let mut aec = EchoCanceller::new(64, 0.5);
        let mic = signal(1000, 1.0);
        assert_eq!(aec.process(&mic, &[]), mic);
    }
}
