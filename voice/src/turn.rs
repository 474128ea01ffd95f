//! When a turn starts and ends: a sans-IO state machine fed the voice detector's probabilities
//! (one per 32 ms) and the wake word's scores (one per 80 ms), positioned by sample index.
//!
//! It tracks speech segments with hysteresis (speech above `speech_threshold`, silence below
//! `silence_threshold` for `end_silence_ms`). A wake score above `wake_threshold` wakes it; the
//! utterance then runs from the start of the speech that carried the wake word (so "hey jarvis,
//! what time is it" said in one breath is one utterance) to the first end of speech that comes
//! well after the wake (so "hey jarvis … what time is it" with a pause is one utterance too). A
//! wake followed by nothing times out. Without a wake word (push-to-talk, or a file that is
//! only the request) the first speech segment is the utterance.

/// Samples per millisecond at 16 kHz.
const PER_MS: u64 = 16;

/// The knobs.
#[derive(Debug, Clone, Copy)]
pub struct TurnConfig {
    /// Wake-word score that wakes.
    pub wake_threshold: f32,
    /// Voice probability that starts (or continues) speech.
    pub speech_threshold: f32,
    /// Voice probability below which a frame is silence.
    pub silence_threshold: f32,
    /// Silence that ends an utterance.
    pub end_silence_ms: u64,
    /// Silence after which a transcript of what was said so far starts, in case it is the end;
    /// that much audio after the last voiced frame goes to whisper (it misses final consonants
    /// without it).
    pub pause_ms: u64,
    /// Audio kept before the speech start (whisper does better with a little lead-in).
    pub pre_roll_ms: u64,
    /// How far before the wake the utterance may start.
    pub wake_lookback_ms: u64,
    /// Speech needed after the wake for an end of speech to count (less is the wake phrase's own
    /// tail).
    pub after_wake_ms: u64,
    /// A wake with no request within this ends the turn.
    pub no_speech_timeout_ms: u64,
    /// The longest utterance.
    pub max_utterance_ms: u64,
    /// Whether the turn waits for the wake word.
    pub require_wake: bool,
}

impl Default for TurnConfig {
    fn default() -> Self {
        Self {
            wake_threshold: 0.5,
            speech_threshold: 0.5,
            silence_threshold: 0.35,
            end_silence_ms: 320,
            pause_ms: 64,
            pre_roll_ms: 200,
            wake_lookback_ms: 3000,
            after_wake_ms: 300,
            no_speech_timeout_ms: 6000,
            max_utterance_ms: 20_000,
            require_wake: true,
        }
    }
}

/// What happened. Positions are sample indices at 16 kHz from the start of the stream.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum TurnEvent {
    /// The wake word was heard; the step that scored `score` ended at `at`.
    Woke {
        /// End of the step.
        at: u64,
        /// The score.
        score: f32,
    },
    /// Speech began (after a wake, or at once without one).
    SpeechStarted {
        /// Its start.
        at: u64,
    },
    /// The user finished: transcribe `start..end`.
    Utterance {
        /// Where the audio to transcribe starts (with pre-roll).
        start: u64,
        /// The end of the last voiced frame.
        end_of_speech: u64,
        /// Where the audio to transcribe ends (`pause_ms` after the end of speech).
        end: u64,
        /// When this was decided (the end of the frame that made it certain).
        decided_at: u64,
    },
    /// Speech stopped; if it does not resume this is the utterance, so a transcript of
    /// `start..end_of_speech` can begin now, before the end is certain.
    Paused {
        /// Where the audio to transcribe starts.
        start: u64,
        /// The end of the last voiced frame.
        end_of_speech: u64,
        /// Where the audio to transcribe ends (`pause_ms` after the end of speech).
        end: u64,
    },
    /// Speech went on after a [`TurnEvent::Paused`]: that pause was not the end.
    Resumed {
        /// Where the speech resumed.
        at: u64,
    },
    /// Woken, but nothing was said.
    TimedOut {
        /// When it gave up.
        at: u64,
    },
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Phase {
    /// Waiting for the wake word.
    Asleep,
    /// Woken at `woke_at` (or armed at 0 without a wake word); the utterance starts at `start`.
    Awake { woke_at: u64, start: Option<u64> },
    /// The turn has ended.
    Done,
}

/// The state machine.
#[derive(Debug, Clone)]
pub struct Turn {
    config: TurnConfig,
    phase: Phase,
    in_speech: bool,
    segment_start: u64,
    last_voiced_end: u64,
    /// Start of the latest segment (kept after it ends, for a wake that scores just after).
    latest_segment: Option<u64>,
    /// Whether the current pause was announced.
    paused: bool,
}

impl Turn {
    /// A new turn.
    pub fn new(config: TurnConfig) -> Self {
        let phase = if config.require_wake {
            Phase::Asleep
        } else {
            Phase::Awake {
                woke_at: 0,
                start: None,
            }
        };
        Self {
            config,
            phase,
            in_speech: false,
            segment_start: 0,
            last_voiced_end: 0,
            latest_segment: None,
            paused: false,
        }
    }

    /// Whether the turn has ended (an utterance or a time-out was reported).
    pub fn is_done(&self) -> bool {
        self.phase == Phase::Done
    }

    /// Whether the wake word has been heard (or is not needed).
    pub fn is_awake(&self) -> bool {
        matches!(self.phase, Phase::Awake { .. })
    }

    /// Whether the voice detector currently hears speech.
    pub fn in_speech(&self) -> bool {
        self.in_speech
    }

    /// The earliest sample the turn may still need (older audio can be dropped).
    pub fn keep_from(&self, now: u64) -> u64 {
        let lookback = (self.config.wake_lookback_ms + self.config.pre_roll_ms) * PER_MS;
        match self.phase {
            Phase::Awake { start: Some(s), .. } => s,
            _ => now.saturating_sub(lookback).min(if self.in_speech {
                self.segment_start
                    .saturating_sub(self.config.pre_roll_ms * PER_MS)
            } else {
                u64::MAX
            }),
        }
    }

    fn pre_roll(&self, at: u64) -> u64 {
        at.saturating_sub(self.config.pre_roll_ms * PER_MS)
    }

    /// One voice-detector frame, ending at sample `end`, of `len` samples.
    pub fn voice(&mut self, end: u64, len: u64, probability: f32) -> Option<TurnEvent> {
        let c = self.config;
        let mut event = None;
        if probability >= c.speech_threshold {
            if !self.in_speech {
                self.in_speech = true;
                self.segment_start = end.saturating_sub(len);
                self.latest_segment = Some(self.segment_start);
                if let Phase::Awake {
                    woke_at,
                    start: None,
                } = self.phase
                {
                    let start = self.pre_roll(self.segment_start);
                    self.phase = Phase::Awake {
                        woke_at,
                        start: Some(start),
                    };
                    event = Some(TurnEvent::SpeechStarted {
                        at: self.segment_start,
                    });
                }
            }
            if self.paused {
                // What was transcribed at the pause is not the whole request after all.
                event = Some(TurnEvent::Resumed {
                    at: end.saturating_sub(len),
                });
            }
            self.last_voiced_end = end;
            self.paused = false;
        } else if self.in_speech
            && !self.paused
            && end.saturating_sub(self.last_voiced_end) >= c.pause_ms * PER_MS
            && end.saturating_sub(self.last_voiced_end) < c.end_silence_ms * PER_MS
            && let Phase::Awake {
                woke_at,
                start: Some(start),
            } = self.phase
            && (!c.require_wake
                || self.last_voiced_end.saturating_sub(woke_at) >= c.after_wake_ms * PER_MS)
        {
            self.paused = true;
            event = Some(TurnEvent::Paused {
                start,
                end_of_speech: self.last_voiced_end,
                end: self.last_voiced_end + c.pause_ms * PER_MS,
            });
        } else if self.in_speech
            && probability < c.silence_threshold
            && end.saturating_sub(self.last_voiced_end) >= c.end_silence_ms * PER_MS
        {
            self.in_speech = false;
            if let Phase::Awake {
                woke_at,
                start: Some(start),
            } = self.phase
            {
                let after_wake = self.last_voiced_end.saturating_sub(woke_at);
                if !c.require_wake || after_wake >= c.after_wake_ms * PER_MS {
                    self.phase = Phase::Done;
                    return Some(TurnEvent::Utterance {
                        start,
                        end_of_speech: self.last_voiced_end,
                        end: self.last_voiced_end + c.pause_ms * PER_MS,
                        decided_at: end,
                    });
                }
            }
        }
        if let Phase::Awake { woke_at, start } = self.phase {
            if let Some(start) = start
                && end.saturating_sub(start) >= c.max_utterance_ms * PER_MS
            {
                self.phase = Phase::Done;
                return Some(TurnEvent::Utterance {
                    start,
                    end_of_speech: end,
                    end,
                    decided_at: end,
                });
            }
            let quiet_since = if self.in_speech {
                end
            } else {
                self.last_voiced_end.max(woke_at)
            };
            if c.require_wake && end.saturating_sub(quiet_since) >= c.no_speech_timeout_ms * PER_MS
            {
                self.phase = Phase::Done;
                return Some(TurnEvent::TimedOut { at: end });
            }
        }
        event
    }

    /// Changes the score that wakes (the user's sensitivity setting).
    pub fn set_wake_threshold(&mut self, threshold: f32) {
        self.config.wake_threshold = threshold;
    }

    /// One wake-word score, for the step ending at sample `end`.
    pub fn wake(&mut self, end: u64, score: f32) -> Option<TurnEvent> {
        if self.phase != Phase::Asleep || score < self.config.wake_threshold {
            return None;
        }
        // The utterance starts where the speech carrying the wake word started, if that was
        // recent enough; else just before the wake.
        let lookback = end.saturating_sub(self.config.wake_lookback_ms * PER_MS);
        let start = match self.latest_segment {
            Some(s) if s >= lookback => self.pre_roll(s),
            _ => self.pre_roll(lookback.max(end.saturating_sub(1600 * PER_MS))),
        };
        self.phase = Phase::Awake {
            woke_at: end,
            start: Some(start),
        };
        Some(TurnEvent::Woke { at: end, score })
    }

    /// Push-to-talk at sample `end`: awake as if the wake word had just been heard, with the
    /// utterance starting now (not back at earlier speech, which was not meant for us).
    pub fn talk(&mut self, end: u64) -> Option<TurnEvent> {
        if self.phase != Phase::Asleep {
            return None;
        }
        self.phase = Phase::Awake {
            woke_at: end,
            start: Some(self.pre_roll(end)),
        };
        Some(TurnEvent::Woke {
            at: end,
            score: 1.0,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FRAME: u64 = 512;

    /// Drives a turn with speech (`true`) and silence per 32 ms frame, and a wake score of 1.0
    /// at the given frames. Returns the events with the frame they came at.
    fn drive(config: TurnConfig, frames: &[bool], wake_at: &[usize]) -> Vec<(usize, TurnEvent)> {
        drive_all(config, frames, wake_at, false)
    }

    /// [`drive`], with the `Paused` events when `paused`.
    fn drive_all(
        config: TurnConfig,
        frames: &[bool],
        wake_at: &[usize],
        paused: bool,
    ) -> Vec<(usize, TurnEvent)> {
        let mut turn = Turn::new(config);
        let mut events = Vec::new();
        for (i, &speech) in frames.iter().enumerate() {
            let end = (i as u64 + 1) * FRAME;
            match turn.voice(end, FRAME, if speech { 0.9 } else { 0.05 }) {
                Some(TurnEvent::Paused { .. } | TurnEvent::Resumed { .. }) if !paused => {}
                Some(e) => events.push((i, e)),
                None => {}
            }
            if wake_at.contains(&i)
                && let Some(e) = turn.wake(end, 0.99)
            {
                events.push((i, e));
            }
        }
        events
    }

    fn pattern(parts: &[(bool, usize)]) -> Vec<bool> {
        parts
            .iter()
            .flat_map(|&(s, n)| std::iter::repeat_n(s, n))
            .collect()
    }

    #[test]
    fn one_breath_wake_and_request_is_one_utterance_from_the_first_word() {
        // 1 s silence, 3 s speech with the wake word scoring at 1.6 s, 1 s silence.
        let frames = pattern(&[(false, 31), (true, 94), (false, 31)]);
        let events = drive(TurnConfig::default(), &frames, &[50]);
        assert!(matches!(events[0].1, TurnEvent::Woke { .. }));
        let TurnEvent::Utterance {
            start,
            end_of_speech,
            end,
            decided_at,
        } = events[1].1
        else {
            panic!("{events:?}")
        };
        assert_eq!(start, 31 * FRAME - 200 * 16);
        assert_eq!(end_of_speech, 125 * FRAME);
        assert_eq!(end, 125 * FRAME + 64 * 16);
        // Decided once the silence lasted 320 ms (10 frames).
        assert_eq!(decided_at, 135 * FRAME);
        assert_eq!(events.len(), 2);
    }

    #[test]
    fn a_pause_is_announced_64_ms_into_the_silence_and_again_after_a_false_end() {
        let config = TurnConfig {
            require_wake: false,
            ..TurnConfig::default()
        };
        // Speech, a 200 ms dip (a pause, not the end), speech, the end.
        let frames = pattern(&[(true, 30), (false, 6), (true, 30), (false, 20)]);
        let events: Vec<_> = drive_all(config, &frames, &[], true);
        let kinds: Vec<_> = events
            .iter()
            .map(|(i, e)| (*i, std::mem::discriminant(e)))
            .collect();
        let paused = |start, end_of_speech: u64| TurnEvent::Paused {
            start,
            end_of_speech,
            end: end_of_speech + 64 * 16,
        };
        // 64 ms is 2 frames into the silence; the speech resuming is told.
        assert_eq!(events[1], (31, paused(0, 30 * FRAME)));
        assert_eq!(events[2], (36, TurnEvent::Resumed { at: 36 * FRAME }));
        assert_eq!(events[3], (67, paused(0, 66 * FRAME)));
        assert!(
            matches!(events[4].1, TurnEvent::Utterance { end_of_speech, .. } if end_of_speech == 66 * FRAME),
            "{kinds:?}"
        );
        // Before the wake's own phrase is over, nothing is announced.
        let frames = pattern(&[(false, 10), (true, 19), (false, 31)]);
        let events = drive_all(TurnConfig::default(), &frames, &[28], true);
        assert!(
            !events
                .iter()
                .any(|(_, e)| matches!(e, TurnEvent::Paused { .. })),
            "{events:?}"
        );
    }

    #[test]
    fn the_wake_threshold_can_be_changed_while_asleep() {
        let mut turn = Turn::new(TurnConfig::default());
        turn.voice(FRAME, FRAME, 0.9);
        turn.set_wake_threshold(0.8);
        assert!(
            turn.wake(FRAME, 0.7).is_none(),
            "below the stricter threshold"
        );
        turn.set_wake_threshold(0.3);
        assert!(matches!(
            turn.wake(FRAME, 0.4),
            Some(TurnEvent::Woke { .. })
        ));
    }

    #[test]
    fn speech_without_the_wake_word_never_starts_a_turn() {
        let frames = pattern(&[(false, 10), (true, 90), (false, 300)]);
        let events = drive(TurnConfig::default(), &frames, &[]);
        assert!(events.is_empty(), "{events:?}");
    }

    #[test]
    fn a_pause_after_the_wake_word_waits_for_the_request() {
        // "hey jarvis" (0.6 s), woken at its end, 1 s pause, the request (2 s), silence.
        let frames = pattern(&[
            (false, 10),
            (true, 19),
            (false, 31),
            (true, 62),
            (false, 20),
        ]);
        let events = drive(TurnConfig::default(), &frames, &[28]);
        assert_eq!(events.len(), 2, "{events:?}");
        let TurnEvent::Utterance {
            start,
            end_of_speech,
            ..
        } = events[1].1
        else {
            panic!("{events:?}")
        };
        assert_eq!(start, 10 * FRAME - 200 * 16, "starts with the wake phrase");
        assert_eq!(end_of_speech, 122 * FRAME, "ends after the request");
    }

    #[test]
    fn a_wake_with_nothing_after_it_times_out() {
        let frames = pattern(&[(false, 10), (true, 19), (false, 400)]);
        let events = drive(TurnConfig::default(), &frames, &[28]);
        assert_eq!(events.len(), 2, "{events:?}");
        let TurnEvent::TimedOut { at } = events[1].1 else {
            panic!("{events:?}")
        };
        assert!(at >= 28 * FRAME + 6000 * 16, "{at}");
    }

    #[test]
    fn a_talk_button_wakes_the_turn_and_the_utterance_starts_at_the_press() {
        // Someone else talking (not for us), the button pressed in the silence after, the
        // request, silence.
        let frames = pattern(&[(true, 30), (false, 20), (true, 40), (false, 30)]);
        let mut turn = Turn::new(TurnConfig::default());
        let mut events = Vec::new();
        for (i, &speech) in frames.iter().enumerate() {
            let end = (i as u64 + 1) * FRAME;
            if i == 40 {
                events.extend(turn.talk(end));
                assert!(turn.talk(end).is_none(), "awake already");
            }
            events.extend(turn.voice(end, FRAME, if speech { 0.9 } else { 0.05 }));
        }
        let events: Vec<_> = events
            .into_iter()
            .filter(|e| !matches!(e, TurnEvent::Paused { .. }))
            .collect();
        assert!(
            matches!(events[0], TurnEvent::Woke { at, .. } if at == 41 * FRAME),
            "{events:?}"
        );
        let Some(TurnEvent::Utterance {
            start,
            end_of_speech,
            ..
        }) = events.last()
        else {
            panic!("{events:?}")
        };
        assert!(
            *start > 30 * FRAME,
            "the earlier talk is not part of it: {start}"
        );
        assert!(*start <= 41 * FRAME, "{start}");
        assert_eq!(*end_of_speech, 90 * FRAME);
    }

    #[test]
    fn push_to_talk_takes_the_first_speech() {
        let config = TurnConfig {
            require_wake: false,
            ..TurnConfig::default()
        };
        let frames = pattern(&[(false, 20), (true, 40), (false, 20)]);
        let events = drive(config, &frames, &[]);
        assert!(matches!(events[0].1, TurnEvent::SpeechStarted { at } if at == 20 * FRAME));
        assert!(
            matches!(events[1].1, TurnEvent::Utterance { end_of_speech, .. } if end_of_speech == 60 * FRAME)
        );
    }

    #[test]
    fn a_short_dip_in_the_middle_of_a_sentence_does_not_end_it() {
        let config = TurnConfig {
            require_wake: false,
            ..TurnConfig::default()
        };
        // 200 ms of silence inside the sentence is less than the 320 ms that ends it.
        let frames = pattern(&[(true, 30), (false, 6), (true, 30), (false, 20)]);
        let events = drive(config, &frames, &[]);
        assert!(
            matches!(events[1].1, TurnEvent::Utterance { end_of_speech, .. } if end_of_speech == 66 * FRAME),
            "{events:?}"
        );
    }

    #[test]
    fn an_endless_utterance_is_cut_at_the_limit() {
        let config = TurnConfig {
            require_wake: false,
            max_utterance_ms: 2000,
            ..TurnConfig::default()
        };
        let frames = pattern(&[(true, 200)]);
        let events = drive(config, &frames, &[]);
        assert!(
            matches!(events[1].1, TurnEvent::Utterance { .. }),
            "{events:?}"
        );
        assert_eq!(events.len(), 2);
    }
}
