//! What is being played, on a timeline: the answer's audio is queued sentence by sentence as it
//! is synthesised and plays from the first sentence on, in real time. The listening thread asks
//! it what was playing at each moment (the reference the echo canceller removes) and stops it
//! when the user barges in; what was played before the stop is what the user heard.
//!
//! It is the clock of a sound device without one: a file or test "plays" at wall-clock speed.

use std::sync::Mutex;
use std::time::Instant;

use crate::audio::{Audio, RATE, resample};

#[derive(Debug, Default)]
struct State {
    /// The answer at its own rate (what `played` returns).
    audio: Vec<f32>,
    rate: u32,
    /// The same at 16 kHz (the echo reference).
    reference: Vec<f32>,
    started: Option<Instant>,
    stopped: Option<Instant>,
    complete: bool,
    /// How far a sound device has rendered, in the answer's samples.
    cursor: f64,
}

/// A playback timeline, shared between the speaking and listening threads.
#[derive(Debug, Default)]
pub struct Playback {
    state: Mutex<State>,
}

impl Playback {
    /// Nothing playing yet.
    pub fn new() -> Self {
        Self::default()
    }

    fn with<T>(&self, f: impl FnOnce(&mut State) -> T) -> T {
        match self.state.lock() {
            Ok(mut s) => f(&mut s),
            Err(poisoned) => f(&mut poisoned.into_inner()),
        }
    }

    /// Forgets the last answer: the next one starts a new timeline (a speaker keeps playing
    /// the same `Playback` turn after turn).
    pub fn reset(&self) {
        self.with(|s| *s = State::default());
    }

    /// Queues audio; the first queued starts playing at `now`. Ignored once stopped.
    pub fn queue(&self, audio: &Audio, now: Instant) {
        self.with(|s| {
            if s.stopped.is_some() {
                return;
            }
            if s.started.is_none() {
                s.started = Some(now);
                s.rate = audio.rate;
            } else {
                // The last piece already played out (the voice was slower than real time): the
                // gap was silence, and this piece starts now.
                let at = Self::position(s, now);
                if s.reference.len() < at {
                    s.reference.resize(at, 0.0);
                    let own = (at as f64 * f64::from(s.rate) / f64::from(RATE)) as usize;
                    if s.audio.len() < own {
                        s.audio.resize(own, 0.0);
                    }
                }
            }
            let samples = resample(&audio.samples, audio.rate, s.rate);
            s.reference.extend(resample(&samples, s.rate, RATE));
            s.audio.extend(samples);
        });
    }

    /// Nothing more will be queued.
    pub fn complete(&self) {
        self.with(|s| s.complete = true);
    }

    /// Whether everything has been queued.
    pub fn is_complete(&self) -> bool {
        self.with(|s| s.complete)
    }

    /// Stops at `now`; returns whether anything was still to play (a barge-in, not an end).
    pub fn stop(&self, now: Instant) -> bool {
        self.with(|s| {
            if s.stopped.is_some() {
                return false;
            }
            let pending = !Self::ended(s, now);
            s.stopped = Some(now);
            pending
        })
    }

    fn position(s: &State, now: Instant) -> usize {
        let end = s.stopped.map_or(now, |stop| stop.min(now));
        s.started.map_or(0, |start| {
            (end.saturating_duration_since(start).as_secs_f64() * f64::from(RATE)) as usize
        })
    }

    fn ended(s: &State, now: Instant) -> bool {
        s.stopped.is_some() || (s.complete && Self::position(s, now) >= s.reference.len())
    }

    /// Whether the answer is still to be heard (queued, playing, or not yet started).
    pub fn pending(&self, now: Instant) -> bool {
        self.with(|s| !Self::ended(s, now))
    }

    /// Whether it was stopped before its end.
    pub fn stopped(&self) -> Option<Instant> {
        self.with(|s| s.stopped)
    }

    /// When it started.
    pub fn started(&self) -> Option<Instant> {
        self.with(|s| s.started)
    }

    /// The 16 kHz samples playing during the `len` samples from `from` (silence where nothing
    /// plays).
    pub fn reference(&self, from: Instant, len: usize) -> Vec<f32> {
        self.with(|s| {
            let mut out = vec![0.0; len];
            let (Some(start), false) = (s.started, s.stopped.is_some_and(|stop| stop <= from))
            else {
                return out;
            };
            let offset = from.saturating_duration_since(start).as_secs_f64() * f64::from(RATE);
            let lead =
                (start.saturating_duration_since(from).as_secs_f64() * f64::from(RATE)) as usize;
            let first = offset as usize;
            for (i, o) in out.iter_mut().enumerate().skip(lead) {
                if let Some(&x) = s.reference.get(first + i - lead) {
                    *o = x;
                }
            }
            out
        })
    }

    /// Fills `out` (mono, at `rate`) with the next samples for a sound device, silence when
    /// nothing is queued or after a stop (linear interpolation between the rates).
    pub fn render(&self, out: &mut [f32], rate: u32) {
        self.with(|s| {
            out.fill(0.0);
            if s.stopped.is_some() || s.rate == 0 || rate == 0 {
                return;
            }
            let step = f64::from(s.rate) / f64::from(rate);
            for o in out.iter_mut() {
                let i = s.cursor as usize;
                let (Some(&a), b) = (s.audio.get(i), s.audio.get(i + 1)) else {
                    break;
                };
                let frac = (s.cursor - i as f64) as f32;
                *o = a + (b.copied().unwrap_or(a) - a) * frac;
                s.cursor += step;
            }
        });
    }

    /// What the user heard: everything, or what played before the stop.
    pub fn played(&self) -> Audio {
        self.with(|s| {
            let samples = match (s.started, s.stopped) {
                (Some(start), Some(stop)) => {
                    let n = (stop.saturating_duration_since(start).as_secs_f64()
                        * f64::from(s.rate)) as usize;
                    s.audio
                        .get(..n.min(s.audio.len()))
                        .unwrap_or_default()
                        .to_vec()
                }
                _ => s.audio.clone(),
            };
            Audio {
                samples,
                rate: if s.rate == 0 { RATE } else { s.rate },
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn audio(seconds: f32) -> Audio {
        Audio {
            samples: vec![0.5; (seconds * 16_000.0) as usize],
            rate: 16_000,
        }
    }

    #[test]
    fn it_plays_in_real_time_and_a_stop_cuts_what_was_heard() {
        let p = Playback::new();
        let t0 = Instant::now();
        assert!(p.pending(t0));
        p.queue(&audio(1.0), t0);
        p.queue(&audio(1.0), t0 + Duration::from_millis(300));
        p.complete();
        assert!(p.pending(t0 + Duration::from_millis(1900)));
        assert!(!p.pending(t0 + Duration::from_millis(2100)));
        // The reference follows the timeline: silence before the start.
        let r = p.reference(t0 - Duration::from_millis(10), 320);
        assert_eq!(r[..160].iter().sum::<f32>(), 0.0);
        assert_eq!(r[170], 0.5);
        assert!(
            p.stop(t0 + Duration::from_millis(500)),
            "stopped with audio left"
        );
        assert_eq!(p.played().samples.len(), 8000);
        assert!(!p.pending(t0 + Duration::from_millis(600)));
        assert_eq!(
            p.reference(t0 + Duration::from_millis(600), 10),
            vec![0.0; 10]
        );
        assert!(
            !p.stop(t0 + Duration::from_millis(700)),
            "a second stop is not a barge-in"
        );
    }

    #[test]
    fn a_device_renders_the_queue_then_silence() {
        let p = Playback::new();
        let mut out = vec![1.0; 4];
        p.render(&mut out, 16_000);
        assert_eq!(out, vec![0.0; 4], "nothing queued");
        p.queue(
            &Audio {
                samples: vec![0.0, 1.0, 2.0],
                rate: 8_000,
            },
            Instant::now(),
        );
        let mut out = vec![9.0; 8];
        p.render(&mut out, 16_000);
        assert_eq!(out, vec![0.0, 0.5, 1.0, 1.5, 2.0, 2.0, 0.0, 0.0]);
    }

    #[test]
    fn a_piece_that_comes_after_the_last_played_out_starts_when_it_comes() {
        let p = Playback::new();
        let t0 = Instant::now();
        p.queue(&audio(0.5), t0);
        p.queue(&audio(0.5), t0 + Duration::from_millis(800));
        p.complete();
        // 300 ms of silence between them, on both timelines.
        assert_eq!(p.played().samples.len(), 16_000 + 4_800);
        assert_eq!(
            p.reference(t0 + Duration::from_millis(600), 10),
            vec![0.0; 10]
        );
        assert_eq!(
            p.reference(t0 + Duration::from_millis(900), 10),
            vec![0.5; 10]
        );
        assert!(p.pending(t0 + Duration::from_millis(1250)));
        assert!(!p.pending(t0 + Duration::from_millis(1350)));
    }

    #[test]
    fn a_stop_after_the_end_is_not_a_barge_in() {
        let p = Playback::new();
        let t0 = Instant::now();
        p.queue(&audio(0.5), t0);
        p.complete();
        assert!(!p.stop(t0 + Duration::from_secs(1)));
        assert_eq!(p.played().samples.len(), 8000);
    }
}
