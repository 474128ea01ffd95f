//! Answering while the user may still be speaking. At each pause the voice pipeline transcribes
//! what was said so far ([`Stage::Heard`]); the [`Answerer`] asks the node for a *held* answer to
//! those words at once ([`crate::ask::Asking::ask_held`], in-process or as `POST /v1/ask` with
//! `"hold": true`: generated and streamed, saved by nobody) and synthesises its first sentence,
//! but plays nothing. When the end of the turn is certain it keeps that answer if the final
//! transcript is the one it answered (same end of speech): the node is told to save it
//! ([`crate::ask::Asking::confirm`], `POST /v1/ask/confirm`) and the gate opens, so the
//! sentence already synthesised plays at once. Otherwise (the user went on after the pause) the
//! held answer is dropped (its stream closed, which cancels the generation) and the final words
//! are asked for as usual.
//!
//! The pause comes 64 ms into the silence, the end 320 ms in: the transcript, the model's
//! first sentence and its synthesis overlap the rest of that wait instead of following it. (At
//! 96 ms the pause's transcript often came after the end, so 2–5 of 7 answers in
//! `jarvis-bench voice-turn` started at the pause; at 64 ms, 6–7 of 7.)

use std::collections::BTreeMap;
use std::sync::{Arc, Condvar, Mutex};
use std::time::Instant;

use anyhow::{Result, anyhow};
use jarvis_voice::pipeline::Stage;
use jarvis_voice::playback::Playback;
use jarvis_voice::tts::{Sentences, Voice};
use serde_json::Value;
use tokio::sync::oneshot;

use crate::handle::NodeHandle;

/// The request in a transcript: all of it with push-to-talk, else what follows the wake phrase.
pub fn request(transcript: &str, push_to_talk: bool) -> String {
    if push_to_talk {
        transcript.trim().to_owned()
    } else {
        jarvis_voice::strip_wake_phrase(transcript).to_owned()
    }
}

/// Whether an answer may play: open from the start for an answer to a final transcript; closed
/// for a held one until the turn's end decides.
#[derive(Debug, Default)]
pub struct Gate {
    state: Mutex<Option<bool>>,
    decided: Condvar,
}

impl Gate {
    /// A gate that is already open.
    pub fn open() -> Arc<Self> {
        let gate = Self::default();
        gate.decide(true);
        Arc::new(gate)
    }

    /// Opens (`true`) or drops (`false`) what waits; the first decision stands.
    pub fn decide(&self, play: bool) {
        if let Ok(mut state) = self.state.lock()
            && state.is_none()
        {
            *state = Some(play);
            self.decided.notify_all();
        }
    }

    /// Whether it was dropped (without waiting).
    pub fn dropped(&self) -> bool {
        self.state.lock().map_or(true, |s| *s == Some(false))
    }

    /// Whether it is open (without waiting).
    pub fn is_open(&self) -> bool {
        self.state.lock().is_ok_and(|s| *s == Some(true))
    }

    /// Blocks until decided; whether to play.
    pub fn wait(&self) -> bool {
        let Ok(state) = self.state.lock() else {
            return false;
        };
        self.decided
            .wait_while(state, |s| s.is_none())
            .is_ok_and(|s| *s == Some(true))
    }
}

/// One answer being asked for and spoken: the request streaming from the node on a task, the
/// speaking thread turning its pieces into audio. Dropping it drops the answer (its request is
/// aborted, which closes the stream; the gate is dropped, which ends the speaking).
pub struct Attempt {
    /// The pause whose words it answers (a held answer), or `None` for a final transcript.
    end_of_speech: Option<u64>,
    gate: Arc<Gate>,
    ticket: Option<oneshot::Receiver<String>>,
    asking: Option<tokio::task::JoinHandle<Result<Value>>>,
    speaking: Option<std::thread::JoinHandle<Result<usize, String>>>,
    first_token: FirstToken,
    on_first_token: Arc<dyn Fn() + Send + Sync>,
}

impl Attempt {
    /// When its first piece of text came.
    pub fn first_token(&self) -> Option<Instant> {
        self.first_token.lock().ok().and_then(|f| *f)
    }

    /// Whether it was started at a pause, before the end was certain.
    pub fn speculative(&self) -> bool {
        self.end_of_speech.is_some()
    }

    /// The answer, once the node has written it all (or failed).
    pub async fn answer(&mut self) -> Result<Value> {
        let asking = self
            .asking
            .as_mut()
            .ok_or_else(|| anyhow!("the answer was already taken"))?;
        let answer = asking.await.map_err(|e| anyhow!("the request task: {e}"))?;
        self.asking = None;
        answer
    }

    /// Waits for the speaking thread (after [`Self::answer`], or after stopping the playback):
    /// how many pieces it spoke.
    pub async fn spoken(mut self) -> Result<usize> {
        // The request holds the sender of the pieces: it must be over first.
        if let Some(asking) = self.asking.take() {
            asking.abort();
        }
        let Some(speaking) = self.speaking.take() else {
            return Ok(0);
        };
        tokio::task::spawn_blocking(move || speaking.join())
            .await
            .map_err(|e| anyhow!("the speaking thread: {e}"))?
            .map_err(|_| anyhow!("the speaking thread failed"))?
            .map_err(|e| anyhow!("speaking the answer: {e}"))
    }
}

impl Drop for Attempt {
    fn drop(&mut self) {
        self.gate.decide(false);
        if let Some(asking) = self.asking.take() {
            asking.abort();
        }
    }
}

/// Asks the node and speaks the answer, speculatively where it can.
pub struct Answerer {
    node: NodeHandle,
    voice: Arc<Mutex<Voice>>,
    playback: Arc<Playback>,
    /// Called once the answer's first words are known to be the answer (the UI says "speaking").
    on_first_token: Arc<dyn Fn() + Send + Sync>,
    held: Option<Attempt>,
    /// Held answers dropped because the user went on after the pause.
    pub dropped: usize,
}

impl Answerer {
    pub fn new(
        node: NodeHandle,
        voice: Arc<Mutex<Voice>>,
        playback: Arc<Playback>,
        on_first_token: Arc<dyn Fn() + Send + Sync>,
    ) -> Self {
        Self {
            node,
            voice,
            playback,
            on_first_token,
            held: None,
            dropped: 0,
        }
    }

    /// Drives `hearing` (the pipeline's turn) to its end, answering the words it reports at each
    /// pause as they come ([`Stage::Heard`]), and dropping that answer when the user goes on
    /// ([`Stage::Resumed`]).
    pub async fn hear<R>(
        &mut self,
        hearing: impl std::future::Future<Output = R>,
        stages: &mut tokio::sync::mpsc::Receiver<Stage>,
        push_to_talk: bool,
        conversation: Option<String>,
    ) -> R {
        tokio::pin!(hearing);
        // Where the speech last resumed: words heard at an earlier pause are not the request.
        let mut resumed = 0;
        loop {
            tokio::select! {
                result = &mut hearing => return result,
                Some(stage) = stages.recv() => match stage {
                    Stage::Heard { text, end_of_speech } if end_of_speech > resumed => {
                        self.speculate(end_of_speech, &request(&text, push_to_talk), conversation.clone());
                    }
                    Stage::Resumed { at } => {
                        resumed = resumed.max(at);
                        if self.held.as_ref().is_some_and(|h| h.end_of_speech < Some(at)) {
                            self.held = None;
                            self.dropped += 1;
                        }
                    }
                    _ => {}
                },
            }
        }
    }

    /// The words heard at a pause: answers them, held (an earlier held answer is dropped).
    pub fn speculate(&mut self, end_of_speech: u64, request: &str, conversation: Option<String>) {
        if self.held.take().is_some() {
            self.dropped += 1;
        }
        if request.is_empty() {
            return;
        }
        self.held = Some(self.start(request, conversation, Ask::Held { end_of_speech }));
    }

    /// The turn's end: the answer to `request` (whose speech ended at `end_of_speech`), the held
    /// one if it answered these words (confirmed with `timings`), else a new one.
    pub async fn answer(
        &mut self,
        end_of_speech: u64,
        request: &str,
        conversation: Option<String>,
        timings: &BTreeMap<String, u64>,
    ) -> Attempt {
        if let Some(mut held) = self.held.take() {
            if held.end_of_speech == Some(end_of_speech) {
                match self.confirm(&mut held, timings).await {
                    Ok(()) => return held,
                    Err(e) => {
                        tracing::debug!("the held answer cannot be kept ({e:#}): asking again")
                    }
                }
            }
            self.dropped += 1;
        }
        self.start(
            request,
            conversation,
            Ask::Final {
                timings: timings.clone(),
            },
        )
    }

    async fn confirm(&self, held: &mut Attempt, timings: &BTreeMap<String, u64>) -> Result<()> {
        let ticket = held
            .ticket
            .take()
            .ok_or_else(|| anyhow!("no ticket"))?
            .await
            .map_err(|_| anyhow!("the held request ended before it started"))?;
        self.node.confirm(&ticket, timings).await?;
        held.gate.decide(true);
        if held.first_token().is_some() {
            (held.on_first_token)();
        }
        Ok(())
    }

    /// Starts asking and speaking: held (answering a pause) or for good (at the turn's end).
    fn start(&self, request: &str, conversation: Option<String>, kind: Ask) -> Attempt {
        let held = match kind {
            Ask::Held { end_of_speech } => Some(end_of_speech),
            Ask::Final { .. } => None,
        };
        let gate = match held {
            Some(_) => Arc::new(Gate::default()),
            None => Gate::open(),
        };
        let (on_piece, speaking, first_token) = speak(
            &self.voice,
            &self.playback,
            &gate,
            Arc::clone(&self.on_first_token),
        );
        let node = self.node.clone();
        let request = request.to_owned();
        let (ticket_tx, ticket) = oneshot::channel();
        let asking = tokio::spawn(async move {
            match kind {
                Ask::Final { timings } => node.ask(&request, conversation, timings, on_piece).await,
                Ask::Held { .. } => {
                    node.ask_held(&request, conversation, ticket_tx, on_piece)
                        .await
                }
            }
        });
        Attempt {
            end_of_speech: held,
            gate,
            ticket: Some(ticket),
            asking: Some(asking),
            speaking: Some(speaking),
            first_token,
            on_first_token: Arc::clone(&self.on_first_token),
        }
    }
}

/// How an answer is asked for.
enum Ask {
    /// Held, answering the words heard at the pause after `end_of_speech`.
    Held { end_of_speech: u64 },
    /// For good, at the turn's end, with its timings.
    Final { timings: BTreeMap<String, u64> },
}

/// When an answer's first piece of text came.
pub type FirstToken = Arc<Mutex<Option<Instant>>>;

/// The speaking half of an answer: a thread speaking (into `playback`, once `gate` opens) what
/// is given to the returned `on_piece`, which also records when the first piece came and calls
/// `notify` then if the gate is open. The thread ends when `on_piece` is dropped.
pub fn speak(
    voice: &Arc<Mutex<Voice>>,
    playback: &Arc<Playback>,
    gate: &Arc<Gate>,
    notify: Arc<dyn Fn() + Send + Sync>,
) -> (
    impl FnMut(&str) + Send + 'static,
    std::thread::JoinHandle<Result<usize, String>>,
    FirstToken,
) {
    let (pieces_tx, pieces) = std::sync::mpsc::channel::<String>();
    let speaking = {
        let (voice, playback, gate) = (Arc::clone(voice), Arc::clone(playback), Arc::clone(gate));
        std::thread::spawn(move || speak_thread(&voice, pieces, &playback, &gate))
    };
    let first_token: FirstToken = Arc::new(Mutex::new(None));
    let on_piece = {
        let (first_token, gate) = (Arc::clone(&first_token), Arc::clone(gate));
        move |piece: &str| {
            if let Ok(mut first) = first_token.lock()
                && first.is_none()
            {
                *first = Some(Instant::now());
                if gate.is_open() {
                    notify();
                }
            }
            // The receiver lives until every piece is spoken; unbounded is bounded here by the
            // answer's token limit.
            let _ = pieces_tx.send(piece.to_owned());
        }
    };
    (on_piece, speaking, first_token)
}

/// Speaks pieces of the answer as they arrive, a sentence at a time, into `playback` (which
/// starts playing with the first) once `gate` opens; stops speaking when the user barges in, or
/// when the gate drops the answer (a held answer the user did not finish at). Returns the
/// sentences spoken.
pub fn speak_thread(
    voice: &Mutex<Voice>,
    pieces: std::sync::mpsc::Receiver<String>,
    playback: &Playback,
    gate: &Gate,
) -> Result<usize, String> {
    let mut sentences = Sentences::new();
    let mut count = 0;
    let mut speak = |sentence: String| -> Result<(), String> {
        if playback.stopped().is_some() || gate.dropped() {
            return Ok(());
        }
        let spoken = voice
            .lock()
            .map_err(|_| "the voice failed".to_owned())?
            .speak(&sentence)
            .map_err(|e| e.to_string())?;
        if gate.wait() {
            playback.queue(&spoken, Instant::now());
            count += 1;
        }
        Ok(())
    };
    for piece in pieces {
        for sentence in sentences.push(&piece) {
            speak(sentence)?;
        }
    }
    if let Some(rest) = sentences.finish() {
        speak(rest)?;
    }
    // A dropped answer leaves the playback to the one that replaces it.
    if !gate.dropped() {
        playback.complete();
    }
    Ok(count)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn a_gate_holds_until_decided_and_the_first_decision_stands() {
        let gate = Arc::new(Gate::default());
        assert!(!gate.is_open() && !gate.dropped());
        let waiter = {
            let gate = Arc::clone(&gate);
            std::thread::spawn(move || gate.wait())
        };
        std::thread::sleep(std::time::Duration::from_millis(20));
        assert!(!waiter.is_finished(), "it waits while undecided");
        gate.decide(true);
        assert!(waiter.join().unwrap());
        gate.decide(false);
        assert!(
            gate.is_open() && !gate.dropped(),
            "a kept answer stays kept"
        );

        let dropped = Gate::default();
        dropped.decide(false);
        dropped.decide(true);
        assert!(dropped.dropped() && !dropped.wait());
        assert!(Gate::open().wait());
    }

    #[test]
    fn the_request_is_what_follows_the_wake_phrase() {
        assert_eq!(
            request("Hey Jarvis, what time is it?", false),
            "what time is it?"
        );
        assert_eq!(request("  what time is it? ", true), "what time is it?");
        assert_eq!(request("Hey Jarvis.", false), "");
    }
}
