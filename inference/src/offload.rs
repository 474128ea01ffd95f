//! Offloading answers to the org's GPU peers, sans-IO: the wire protocol spoken on a libp2p
//! stream (`/jarvis/infer/1`), the choice of a peer, and the policy that decides local or
//! offloaded.
//!
//! ```text
//!   node                                   GPU peer
//!    │ ── Load ──────────────────────────▶  │   (on connecting, then every few seconds)
//!    │ ◀───────────────── Load{model, …} ── │
//!    │ ── Generate{messages, sampling} ──▶  │   (one stream per answer)
//!    │ ◀─ Started · Token… · Done|Failed ── │   (closing the stream cancels the answer)
//!    │ ◀───────────────────── Busy{load} ── │   (or, asked not to wait: every slot taken)
//! ```
//!
//! Every frame is a big-endian `u32` length and that many bytes of JSON, bounded on both sides
//! ([`MAX_REQUEST`], [`MAX_EVENT`]): the payloads are text, and the volume (one frame per token,
//! a few per second per answer) makes a binary format not worth its cost in debuggability.

use serde::{Deserialize, Serialize};

use crate::protocol::{ChatMessage, ErrorKind, FinishReason, Sampling};

/// The libp2p protocol name.
pub const PROTOCOL: &str = "/jarvis/infer/1";
/// The largest frame a GPU peer reads (a request carries the whole conversation).
pub const MAX_REQUEST: usize = 4 * 1024 * 1024;
/// The largest frame a node reads (one event: a few characters, or a summary).
pub const MAX_EVENT: usize = 64 * 1024;

/// What a node asks on a stream (its first and only frame).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Ask {
    /// The peer's model and load.
    Load,
    /// An answer to `messages`.
    Generate {
        /// The conversation, oldest first.
        messages: Vec<ChatMessage>,
        /// How to sample.
        sampling: Sampling,
        /// The answer so far, to continue (an answer resumed after another peer failed).
        #[serde(default, skip_serializing_if = "String::is_empty")]
        prefix: String,
        /// A spoken turn: the peer queues it ahead of typed and API requests.
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        voice: bool,
        /// Rather than wait for a slot there, the peer says [`Reply::Busy`] at once (the
        /// device has other peers to try; it sends its last try without this).
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        bounce: bool,
        /// The device's W3C trace context for this answer (`traceparent`), so the GPU peer's
        /// work and its backend's join the device's trace. Untrusted: bounded and checked by
        /// the peer (`jarvis_telemetry::adopt`).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        traceparent: Option<String>,
    },
}

/// What a GPU peer says back.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Reply {
    /// Its model and load.
    Load(Load),
    /// Every slot is taken and the request asked not to wait ([`Ask::Generate::bounce`]): its
    /// load now. Nothing was generated.
    Busy(Load),
    /// The prompt is read; text follows.
    Started {
        /// Tokens in the prompt.
        prompt_tokens: u32,
    },
    /// More of the answer.
    Token {
        /// The text.
        text: String,
    },
    /// The answer is complete.
    Done {
        /// Why it ended.
        finish_reason: FinishReason,
        /// Tokens in the prompt.
        prompt_tokens: u32,
        /// Tokens generated.
        completion_tokens: u32,
        /// From the first token to the last, on the peer.
        generation_ms: f64,
        /// The model that answered.
        model: String,
    },
    /// The request failed, or was refused.
    Failed {
        /// What kind of failure.
        kind: ErrorKind,
        /// What happened, for a person.
        message: String,
    },
}

/// A GPU peer's model and load, as it reports them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Load {
    /// The model it serves.
    pub model: String,
    /// The model file's size in bytes (a rough measure of how capable it is).
    pub model_bytes: u64,
    /// Requests it generates at once.
    pub slots: u32,
    /// Requests generating or waiting now.
    pub busy: u32,
    /// Whether its engine is ready.
    pub ready: bool,
    /// What answers there: `llama.cpp` (the built-in engine) or `openai` (a server the org
    /// runs, such as vLLM, behind the peer). Empty from peers that do not say.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub backend: String,
    /// What the built-in engine runs on: its first compute device (`CUDA0 (NVIDIA …)`, else
    /// the CPU). Empty behind a third-party server, and from peers that do not say.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub accelerator: String,
}

/// Why a frame could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// The length prefix says more than the side accepts.
    #[error("a frame of {0} bytes is larger than allowed ({1})")]
    TooLarge(usize, usize),
    /// The bytes are not the JSON expected.
    #[error("a malformed frame: {0}")]
    Malformed(String),
}

/// One frame: the length, then the JSON.
pub fn encode<T: Serialize>(message: &T) -> Vec<u8> {
    // Serialising these types cannot fail (no maps with non-string keys, no custom impls).
    let body = serde_json::to_vec(message).unwrap_or_default();
    let len = u32::try_from(body.len()).unwrap_or(u32::MAX);
    let mut out = Vec::with_capacity(4 + body.len());
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(&body);
    out
}

/// Frames from a byte stream that arrives in pieces.
#[derive(Debug)]
pub struct Frames {
    buffer: Vec<u8>,
    max: usize,
}

impl Frames {
    /// A reader refusing frames longer than `max` bytes.
    pub fn new(max: usize) -> Self {
        Self {
            buffer: Vec::new(),
            max,
        }
    }

    /// Adds bytes read from the stream.
    pub fn push(&mut self, bytes: &[u8]) {
        self.buffer.extend_from_slice(bytes);
    }

    /// How many more bytes the next frame needs before [`Self::next_frame`] can return it (at least
    /// 1 when it cannot return one now); 0 when a whole frame is buffered.
    pub fn wanted(&self) -> usize {
        match self.length() {
            None => 4 - self.buffer.len().min(4),
            Some(len) => (4 + len).saturating_sub(self.buffer.len()),
        }
    }

    fn length(&self) -> Option<usize> {
        let prefix: [u8; 4] = self.buffer.get(..4)?.try_into().ok()?;
        usize::try_from(u32::from_be_bytes(prefix)).ok()
    }

    /// The next whole frame, if one is buffered.
    ///
    /// # Errors
    /// When the frame is too large or not the JSON of `T`; the stream is then unusable.
    pub fn next_frame<T: for<'de> Deserialize<'de>>(&mut self) -> Result<Option<T>, FrameError> {
        let Some(len) = self.length() else {
            return Ok(None);
        };
        if len > self.max {
            return Err(FrameError::TooLarge(len, self.max));
        }
        let Some(body) = self.buffer.get(4..4 + len) else {
            return Ok(None);
        };
        let message =
            serde_json::from_slice(body).map_err(|e| FrameError::Malformed(e.to_string()));
        self.buffer.drain(..4 + len);
        message.map(Some)
    }
}

/// The answer so far, split for resuming it: the text to give the model as its prefix (without
/// trailing whitespace, which tokenizers attach to the next word: a prefix ending in a space
/// makes the model start an unlikely token), and a [`Rejoin`] that drops that whitespace again
/// from the start of the continuation, since the client already has it.
pub fn resume_from(text: &str) -> (String, Rejoin) {
    let kept = text.trim_end();
    let skip = text.get(kept.len()..).unwrap_or_default().to_owned();
    (kept.to_owned(), Rejoin { skip })
}

/// Drops from a continuation the whitespace the client already has (see [`resume_from`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Rejoin {
    skip: String,
}

impl Rejoin {
    /// The piece as the client should get it.
    pub fn piece(&mut self, piece: String) -> String {
        if self.skip.is_empty() {
            return piece;
        }
        let mut rest = piece.as_str();
        while let (Some(want), Some(got)) = (self.skip.chars().next(), rest.chars().next()) {
            if want != got {
                // The model went on without it: nothing more to drop.
                self.skip.clear();
                break;
            }
            self.skip.drain(..want.len_utf8());
            rest = rest.get(got.len_utf8()..).unwrap_or_default();
        }
        if rest.is_empty() {
            String::new()
        } else {
            self.skip.clear();
            rest.to_owned()
        }
    }
}

/// Local or offloaded: the user's setting. A GPU peer's operator can read what is sent to it
/// (the conversation so far, for that answer), so nothing leaves this machine until the user
/// chooses: the default is `Local`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Policy {
    /// Never: every answer is made on this machine.
    #[default]
    Local,
    /// A GPU peer when it is the better choice: it serves a larger model than this machine,
    /// or this machine cannot answer now (no model, or every slot busy), or the prompt is long.
    Auto,
    /// A GPU peer whenever one is reachable; this machine only when none is.
    Gpu,
}

impl Policy {
    /// Its name in settings and the UI.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Local => "local",
            Self::Auto => "auto",
            Self::Gpu => "gpu",
        }
    }
}

impl std::str::FromStr for Policy {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "local" => Ok(Self::Local),
            "auto" => Ok(Self::Auto),
            "gpu" => Ok(Self::Gpu),
            other => Err(format!(
                "unknown offload policy {other:?}: use local, auto or gpu"
            )),
        }
    }
}

/// A prompt longer than this (in characters, about 4 per token) goes to a GPU peer under
/// [`Policy::Auto`]: reading it is where a GPU helps most.
pub const LONG_PROMPT_CHARS: usize = 8_000;

/// What the node knows of a GPU peer, for choosing one.
#[derive(Debug, Clone, PartialEq)]
pub struct Candidate<P> {
    /// The peer.
    pub peer: P,
    /// What it last reported (none until it has).
    pub load: Option<Load>,
    /// Answers this node has in flight on it (more recent than its report).
    pub in_flight: u32,
    /// The round trip to it, in milliseconds.
    pub rtt_ms: f64,
    /// How long its answers took here on average (an estimate before the first).
    pub answer_ms: f64,
    /// When its last answer failed, a penalty in milliseconds that fades as it succeeds again.
    pub penalty_ms: f64,
}

impl<P> Candidate<P> {
    /// A peer just met: no report yet, a guess of a second per answer.
    pub fn new(peer: P) -> Self {
        Self {
            peer,
            load: None,
            in_flight: 0,
            rtt_ms: 0.0,
            answer_ms: 1_000.0,
            penalty_ms: 0.0,
        }
    }

    /// The expected time until an answer sent now would be complete: the round trip, the wait
    /// for a free slot (the queue ahead of it, in answers per slot), and the answer itself.
    /// None when the peer cannot answer (not ready, or no report yet).
    pub fn expected_ms(&self) -> Option<f64> {
        let load = self.load.as_ref().filter(|l| l.ready)?;
        let slots = f64::from(load.slots.max(1));
        let ahead = f64::from(load.busy.max(self.in_flight));
        // It starts once all but `slots - 1` of those ahead have finished: none to wait for
        // while a slot is free, and each one more queued adds a slot's share of an answer (so
        // a queue one longer is always slower, which spreads a burst evenly).
        let waves = ((ahead + 1.0 - slots) / slots).max(0.0);
        Some(self.rtt_ms + waves * self.answer_ms + self.answer_ms + self.penalty_ms)
    }

    /// Folds in a finished answer's duration (an exponential average) and clears or sets the
    /// failure penalty.
    pub fn record(&mut self, took_ms: f64, failed: bool) {
        if failed {
            self.penalty_ms = (self.penalty_ms * 2.0).clamp(5_000.0, 600_000.0);
        } else {
            self.answer_ms = 0.7 * self.answer_ms + 0.3 * took_ms.max(1.0);
            self.penalty_ms /= 2.0;
            if self.penalty_ms < 1.0 {
                self.penalty_ms = 0.0;
            }
        }
    }
}

/// How this machine stands, for [`choose`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Local {
    /// Whether the local engine can answer at all.
    pub ready: bool,
    /// Its model file's size in bytes.
    pub model_bytes: u64,
    /// Whether every slot is busy.
    pub saturated: bool,
}

/// Expected finish times this close to the best count as a tie: within a tenth of it, and a few
/// milliseconds (round-trip noise on a LAN).
const TIE_SHARE: f64 = 0.1;
const TIE_MS: f64 = 5.0;

/// Of `candidates` (with their expected finish times), the one expected to finish first; among
/// those about as quick (a tie: [`TIE_SHARE`], [`TIE_MS`]), the `draw`-th (modulo their
/// number). Devices draw at random: many devices whose reports say the same peers are idle
/// (reports are seconds old) then spread over them instead of all choosing the same one.
fn quickest<'a, P>(
    candidates: impl Iterator<Item = (&'a Candidate<P>, f64)>,
    draw: u64,
) -> Option<&'a Candidate<P>> {
    let scored: Vec<(&Candidate<P>, f64)> = candidates.collect();
    let best = scored.iter().map(|(_, ms)| *ms).min_by(f64::total_cmp)?;
    let tied: Vec<&Candidate<P>> = scored
        .iter()
        .filter(|(_, ms)| *ms <= best + best.abs() * TIE_SHARE + TIE_MS)
        .map(|(c, _)| *c)
        .collect();
    let count = u64::try_from(tied.len()).ok()?.max(1);
    let at = usize::try_from(draw % count).ok()?;
    tied.get(at).copied()
}

/// The GPU peer to send an answer to, or none to answer here: the candidate expected to finish
/// first (among ties, the `draw`-th: the caller draws at random), if the policy says to
/// offload.
pub fn choose<'a, P>(
    policy: Policy,
    local: Local,
    prompt_chars: usize,
    candidates: &'a [Candidate<P>],
    excluded: &[P],
    draw: u64,
) -> Option<&'a Candidate<P>>
where
    P: PartialEq,
{
    // Under `Auto`, when this machine could answer, only a peer with a larger model is worth
    // it (decided before the draw, so the draw never decides whether to offload).
    let only_bigger = match policy {
        Policy::Local => return None,
        Policy::Gpu => false,
        Policy::Auto => local.ready && !local.saturated && prompt_chars <= LONG_PROMPT_CHARS,
    };
    quickest(
        candidates
            .iter()
            .filter(|c| !excluded.contains(&c.peer))
            .filter(|c| {
                !only_bigger
                    || c.load
                        .as_ref()
                        .is_some_and(|l| l.model_bytes > local.model_bytes)
            })
            .filter_map(|c| c.expected_ms().map(|ms| (c, ms))),
        draw,
    )
}

/// The GPU peer to send an answer to when the request names `model`, one this device does not
/// run (a model pinned by the user or an API client): of the peers serving it, the one expected
/// to finish first (among ties, the `draw`-th). None when the policy keeps answers here or no
/// peer serves it now.
pub fn choose_serving<'a, P>(
    policy: Policy,
    model: &str,
    candidates: &'a [Candidate<P>],
    excluded: &[P],
    draw: u64,
) -> Option<&'a Candidate<P>>
where
    P: PartialEq,
{
    if policy == Policy::Local {
        return None;
    }
    quickest(
        candidates
            .iter()
            .filter(|c| !excluded.contains(&c.peer))
            .filter(|c| c.load.as_ref().is_some_and(|l| l.model == model))
            .filter_map(|c| c.expected_ms().map(|ms| (c, ms))),
        draw,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(model_bytes: u64, slots: u32, busy: u32) -> Load {
        Load {
            model: "m".into(),
            model_bytes,
            slots,
            busy,
            ready: true,
            backend: String::new(),
            accelerator: String::new(),
        }
    }

    fn candidate(peer: u8, load: Load, answer_ms: f64) -> Candidate<u8> {
        Candidate {
            load: Some(load),
            answer_ms,
            ..Candidate::new(peer)
        }
    }

    const LOCAL: Local = Local {
        ready: true,
        model_bytes: 100,
        saturated: false,
    };

    #[test]
    fn frames_round_trip_in_any_pieces() {
        let asks = [
            Ask::Load,
            Ask::Generate {
                messages: vec![ChatMessage::new("user", "héllo")],
                sampling: Sampling::default(),
                prefix: "Par".into(),
                voice: true,
                bounce: false,
                traceparent: Some("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".into()),
            },
            Ask::Generate {
                messages: vec![ChatMessage::new("user", "hi")],
                sampling: Sampling::default(),
                prefix: String::new(),
                voice: false,
                bounce: true,
                traceparent: None,
            },
        ];
        let bytes: Vec<u8> = asks.iter().flat_map(encode).collect();
        for piece in 1..bytes.len() {
            let mut frames = Frames::new(MAX_REQUEST);
            let mut got = Vec::new();
            for chunk in bytes.chunks(piece) {
                assert!(frames.wanted() > 0);
                frames.push(chunk);
                while let Some(ask) = frames.next_frame::<Ask>().unwrap() {
                    got.push(ask);
                }
            }
            assert_eq!(got, asks);
            assert_eq!(frames.wanted(), 4);
        }
    }

    #[test]
    fn an_oversized_or_malformed_frame_is_refused() {
        let mut frames = Frames::new(10);
        frames.push(&11u32.to_be_bytes());
        assert_eq!(
            frames.next_frame::<Ask>(),
            Err(FrameError::TooLarge(11, 10))
        );
        let mut frames = Frames::new(10);
        frames.push(&3u32.to_be_bytes());
        frames.push(b"{x}");
        assert!(matches!(
            frames.next_frame::<Ask>(),
            Err(FrameError::Malformed(_))
        ));
    }

    #[test]
    fn the_local_policy_never_offloads() {
        let c = [candidate(1, load(1_000, 4, 0), 10.0)];
        let down = Local {
            ready: false,
            ..LOCAL
        };
        assert!(choose(Policy::Local, down, 100_000, &c, &[], 0).is_none());
    }

    #[test]
    fn auto_offloads_for_a_bigger_model_a_busy_or_missing_engine_or_a_long_prompt() {
        let same = [candidate(1, load(100, 4, 0), 10.0)];
        assert!(choose(Policy::Auto, LOCAL, 10, &same, &[], 0).is_none());
        let bigger = [candidate(1, load(1_000, 4, 0), 10.0)];
        assert_eq!(
            choose(Policy::Auto, LOCAL, 10, &bigger, &[], 0).map(|c| c.peer),
            Some(1)
        );
        let busy = Local {
            saturated: true,
            ..LOCAL
        };
        assert!(choose(Policy::Auto, busy, 10, &same, &[], 0).is_some());
        let missing = Local {
            ready: false,
            ..LOCAL
        };
        assert!(choose(Policy::Auto, missing, 10, &same, &[], 0).is_some());
        assert!(choose(Policy::Auto, LOCAL, LONG_PROMPT_CHARS + 1, &same, &[], 0).is_some());
        // Two peers as quick, one with a larger model: whatever the draw, that one (the draw
        // never decides whether to offload).
        let mixed = [
            candidate(1, load(100, 4, 0), 10.0),
            candidate(2, load(1_000, 4, 0), 10.0),
        ];
        for draw in 0..4 {
            assert_eq!(
                choose(Policy::Auto, LOCAL, 10, &mixed, &[], draw).map(|c| c.peer),
                Some(2)
            );
        }
    }

    #[test]
    fn gpu_picks_the_earliest_expected_finish_and_skips_excluded_and_unready_peers() {
        let mut unready = load(1_000, 4, 0);
        unready.ready = false;
        let peers = [
            // Fast but queued: 8 ahead on 2 slots = 3.5 waves of 100 ms, then its own: 450.
            candidate(1, load(100, 2, 8), 100.0),
            // Slower per answer but free: 300.
            candidate(2, load(100, 4, 1), 300.0),
            candidate(3, unready, 1.0),
            Candidate::new(4),
        ];
        assert_eq!(
            choose(Policy::Gpu, LOCAL, 10, &peers, &[], 0).map(|c| c.peer),
            Some(2)
        );
        assert_eq!(
            choose(Policy::Gpu, LOCAL, 10, &peers, &[2], 0).map(|c| c.peer),
            Some(1)
        );
        assert!(choose(Policy::Gpu, LOCAL, 10, &peers, &[1, 2], 0).is_none());
    }

    #[test]
    fn a_pinned_model_goes_to_the_quickest_peer_serving_it_and_never_under_local() {
        let named = |model: &str, busy: u32| Load {
            model: model.into(),
            ..load(1, 4, busy)
        };
        let peers = [
            candidate(1, named("qwen", 0), 800.0),
            candidate(2, named("llama", 0), 100.0),
            candidate(3, named("qwen", 0), 300.0),
        ];
        let chosen = |policy, model, excluded: &[u8]| {
            choose_serving(policy, model, &peers, excluded, 0).map(|c| c.peer)
        };
        assert_eq!(chosen(Policy::Gpu, "qwen", &[]), Some(3));
        assert_eq!(chosen(Policy::Auto, "qwen", &[]), Some(3));
        assert_eq!(chosen(Policy::Auto, "qwen", &[3]), Some(1));
        assert_eq!(chosen(Policy::Gpu, "qwen", &[1, 3]), None);
        assert_eq!(chosen(Policy::Gpu, "phi", &[]), None);
        assert_eq!(chosen(Policy::Local, "llama", &[]), None);
    }

    #[test]
    fn devices_spread_over_peers_that_look_equally_quick() {
        // Three idle peers, their round trips a millisecond apart, and a busier fourth.
        let peers = [
            candidate(1, load(100, 2, 0), 600.0),
            candidate(2, load(100, 2, 0), 600.0),
            candidate(3, load(100, 2, 0), 600.0),
            candidate(4, load(100, 2, 2), 600.0),
        ];
        let mut peers = peers.to_vec();
        for (i, p) in peers.iter_mut().enumerate() {
            p.rtt_ms = 1.0 + f64::from(u8::try_from(i).unwrap());
        }
        let mut counts = std::collections::BTreeMap::new();
        for draw in 0..30u64 {
            let chosen = choose(Policy::Gpu, LOCAL, 10, &peers, &[], draw)
                .unwrap()
                .peer;
            *counts.entry(chosen).or_insert(0) += 1;
        }
        assert_eq!(
            counts,
            [(1, 10), (2, 10), (3, 10)].into_iter().collect(),
            "the idle ones share the draws; the busy one gets none"
        );
        // A clearly quicker peer is chosen whatever the draw.
        peers[1].answer_ms = 300.0;
        for draw in 0..5 {
            assert_eq!(
                choose(Policy::Gpu, LOCAL, 10, &peers, &[], draw).map(|c| c.peer),
                Some(2)
            );
        }
    }

    #[test]
    fn a_failed_peer_is_avoided_until_it_succeeds_again() {
        let mut a = candidate(1, load(100, 4, 0), 100.0);
        let b = candidate(2, load(100, 4, 0), 400.0);
        a.record(0.0, true);
        let both = [a.clone(), b.clone()];
        assert_eq!(
            choose(Policy::Gpu, LOCAL, 10, &both, &[], 0).map(|c| c.peer),
            Some(2)
        );
        for _ in 0..20 {
            a.record(100.0, false);
        }
        assert_eq!(a.penalty_ms, 0.0);
        let both = [a, b];
        assert_eq!(
            choose(Policy::Gpu, LOCAL, 10, &both, &[], 0).map(|c| c.peer),
            Some(1)
        );
    }

    #[test]
    fn a_resumed_answer_does_not_repeat_or_lose_whitespace() {
        let (prefix, mut rejoin) = resume_from("The capital of France is ");
        assert_eq!(prefix, "The capital of France is");
        assert_eq!(rejoin.piece(" Paris".into()), "Paris");
        assert_eq!(rejoin.piece(" and".into()), " and");
        // Whitespace split over pieces, or not produced at all.
        let (_, mut rejoin) = resume_from("one,\n ");
        assert_eq!(rejoin.piece("\n".into()), "");
        assert_eq!(rejoin.piece(" two".into()), "two");
        let (_, mut rejoin) = resume_from("one ");
        assert_eq!(rejoin.piece("two".into()), "two");
        let (prefix, mut rejoin) = resume_from("no space");
        assert_eq!(prefix, "no space");
        assert_eq!(rejoin.piece(" more".into()), " more");
    }

    #[test]
    fn policies_parse_from_their_names() {
        for p in [Policy::Local, Policy::Auto, Policy::Gpu] {
            assert_eq!(p.as_str().parse::<Policy>(), Ok(p));
        }
        assert!(
            "cloud"
                .parse::<Policy>()
                .unwrap_err()
                .contains("local, auto or gpu")
        );
    }
}
