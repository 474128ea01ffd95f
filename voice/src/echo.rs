//! Echo cancellation, so the assistant does not hear (and wake or barge in on) its own voice.
//! The canceller is speexdsp's (through `aec-rs`): a multi-delay block frequency-domain
//! adaptive filter whose per-frequency step makes it learn a room from speech in a few hundred
//! milliseconds (a plain time-domain NLMS filter, which we had first, took one to two seconds
//! on speech's coloured spectrum, long enough for its leftover echo to interrupt the answer)
//! and whose double-talk detection keeps it from cancelling a user who talks over the answer.
//! Speex's residual-echo suppressor is left off: it also suppresses the start of the user's
//! words, which is what barge-in listens for. What the filter leaves is judged by
//! [`echo_likeness`] instead. Sans-IO: samples in, samples out.

/// Samples per canceller frame (10 ms at 16 kHz).
const FRAME: usize = 160;

/// An acoustic echo canceller for 16 kHz audio.
pub struct EchoCanceller {
    aec: aec_rs::Aec,
}

impl std::fmt::Debug for EchoCanceller {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EchoCanceller").finish_non_exhaustive()
    }
}

impl EchoCanceller {
    /// A canceller modelling echo paths (the delay from speaker to microphone plus the room's
    /// reverberation) up to `tail_ms` long; 100 ms suits a desk or a small room.
    pub fn new(tail_ms: u32) -> Self {
        let filter_length = i32::try_from(tail_ms.saturating_mul(16)).unwrap_or(i32::MAX);
        Self {
            aec: aec_rs::Aec::new(&aec_rs::AecConfig {
                frame_size: FRAME,
                filter_length,
                sample_rate: 16_000,
                enable_preprocess: false,
            }),
        }
    }

    /// Removes the echo of `reference` (what was played, sample-aligned with `mic`) from `mic`.
    /// Works in 10 ms frames: a last partial frame (or samples without a reference) passes
    /// through as it is.
    pub fn process(&mut self, mic: &[f32], reference: &[f32]) -> Vec<f32> {
        let to_i16 = |x: &[f32]| -> Vec<i16> {
            x.iter()
                .map(|s| (s.clamp(-1.0, 1.0) * f32::from(i16::MAX)) as i16)
                .collect()
        };
        let (mic16, reference16) = (to_i16(mic), to_i16(reference));
        let mut out = mic.to_vec();
        let mut cleaned = [0_i16; FRAME];
        for ((m, r), o) in mic16
            .chunks_exact(FRAME)
            .zip(reference16.chunks_exact(FRAME))
            .zip(out.chunks_exact_mut(FRAME))
        {
            self.aec.cancel_echo(m, r, &mut cleaned);
            for (o, &c) in o.iter_mut().zip(&cleaned) {
                *o = f32::from(c) / 32_768.0;
            }
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
    /// envelope and a little coloured noise (most energy low, as in speech).
    fn signal(len: usize, pitch: f32) -> Vec<f32> {
        let mut seed = (pitch * 1000.0) as u32;
        let mut noise = 0.0;
        (0..len)
            .map(|i| {
                let t = i as f32 / 16_000.0;
                let env = 0.5 + 0.5 * (t * 3.0 + pitch).sin();
                let f = 220.0 * pitch * std::f32::consts::TAU;
                seed = seed.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
                let white = (seed >> 8) as f32 / (1 << 24) as f32 - 0.5;
                noise = 0.9 * noise + 0.1 * white;
                env * 0.3
                    * ((t * f).sin()
                        + 0.5 * (t * f * 2.4).sin()
                        + 0.3 * (t * f * 5.3).sin()
                        + noise)
            })
            .collect()
    }

    #[test]
    fn the_echo_of_the_played_audio_is_removed_within_half_a_second() {
        let played = signal(32_000, 1.0);
        // The room: 10 ms of delay, 60% of the level, a faint reflection 5 ms later.
        let mic: Vec<f32> = (0..played.len())
            .map(|i| {
                0.6 * i.checked_sub(160).map_or(0.0, |j| played[j])
                    + 0.2 * i.checked_sub(240).map_or(0.0, |j| played[j])
            })
            .collect();
        let mut aec = EchoCanceller::new(100);
        // Fed as the listener does, 20 ms at a time.
        let out: Vec<f32> = mic
            .chunks(320)
            .zip(played.chunks(320))
            .flat_map(|(m, r)| aec.process(m, r))
            .collect();
        // After half a second of learning, the echo is 20 dB down or better.
        let before = energy(&mic[8_000..]);
        let after = energy(&out[8_000..]);
        assert!(after < before / 100.0, "{after} vs {before}");
    }

    #[test]
    fn the_user_speaking_over_the_echo_is_kept() {
        let played = signal(32_000, 1.0);
        let user = signal(32_000, 1.37);
        let mut aec = EchoCanceller::new(100);
        // First the echo alone, then the user speaks over it.
        let echo = |i: usize| 0.6 * i.checked_sub(160).map_or(0.0, |j| played[j]);
        let mic: Vec<f32> = (0..32_000)
            .map(|i| echo(i) + if i >= 16_000 { user[i] * 0.5 } else { 0.0 })
            .collect();
        let out = aec.process(&mic, &played);
        let user_energy = energy(&user[16_000..].iter().map(|s| s * 0.5).collect::<Vec<_>>());
        let kept = energy(&out[16_000..]);
        // Most of the user's voice survives, and little of the echo.
        assert!(kept > user_energy * 0.5, "{kept} vs {user_energy}");
        assert!(kept < user_energy * 1.5, "{kept} vs {user_energy}");
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
    fn without_anything_played_the_microphone_passes_through() {
        let mut aec = EchoCanceller::new(100);
        // (Speex's DC filter takes a little off the lowest tones; 1 kHz passes whole.)
        let mic: Vec<f32> = (0..16_000)
            .map(|i| 0.3 * (i as f32 / 16_000.0 * 1000.0 * std::f32::consts::TAU).sin())
            .collect();
        let out = aec.process(&mic, &[0.0; 16_000]);
        let (before, after) = (energy(&mic[1_600..]), energy(&out[1_600..]));
        assert!((after / before - 1.0).abs() < 0.1, "{after} vs {before}");
        // A partial frame, or samples with no reference, are passed as they are.
        assert_eq!(aec.process(&mic[..100], &[]), mic[..100].to_vec());
    }
}
