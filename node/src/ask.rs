//! Asking the running node a question, in-process: the orchestration of one answer (save the
//! question, pick where the answer is made, stream it to the asker and into the conversation,
//! record how it ended), with the speculative "held" answers a voice turn starts at a pause and
//! confirms at its end. The local API serves it over HTTP (`POST /v1/ask`, `/v1/ask/confirm`,
//! in [`crate::api`]); the voice loop inside `jarvis up` calls it directly, through
//! [`crate::handle::NodeHandle`]. Errors are typed: each caller says them its own way (an HTTP
//! status, a line on the terminal).

use std::collections::BTreeMap;
use std::sync::Arc;

use jarvis_crdt::DocId;
use jarvis_inference::supervisor::{EngineHandle, Request};
use serde_json::{Value, json};
use tokio::sync::{mpsc, oneshot};

use crate::node::Command;

/// The longest question accepted: a pasted document, not a disk image.
pub const MAX_ASK_BYTES: usize = 256 * 1024;
/// Held answers at once: a voice turn holds one at a time, so this is plenty for a machine.
pub const MAX_HELD: usize = 8;
/// How long a held answer waits to be confirmed.
pub const HOLD_FOR: std::time::Duration = std::time::Duration::from_secs(30);
/// Events of one answer waiting for their reader.
const EVENTS: usize = 256;

/// Everything answering needs: the node's command queue (which owns the conversations), the
/// local engine, where answers are made (here or on a GPU peer), and the held answers.
#[derive(Clone)]
pub struct Asking {
    pub commands: mpsc::Sender<Command>,
    pub engine: EngineHandle,
    pub offload: crate::offload::Offload,
    held: Arc<HeldAnswers>,
}

/// A question.
#[derive(Debug, Clone, Default)]
pub struct Question {
    pub text: String,
    /// The conversation to continue; a new one when `None`.
    pub conversation: Option<DocId>,
    /// Timings of what came before the question (a voice turn's wake, end of speech and
    /// transcript), stored with the answer's own.
    pub timings_ms: BTreeMap<String, u64>,
    /// A model of the org's GPU peers to answer with (the question is then theirs to answer,
    /// as the user's setting allows); none: wherever the setting says, with the local model.
    pub model: Option<String>,
}

/// What an answer says as it goes.
#[derive(Debug, Clone, PartialEq)]
pub enum AnswerEvent {
    /// A piece of its text.
    Token(String),
    /// The end: the question's reply fields and the answer's (`status`, `answer`, `model`,
    /// timings…).
    Done(Value),
}

/// An answer under way.
pub enum Answer {
    /// Streamed: `start` (the conversation and message ids, the answer's id), then the events.
    Streaming {
        start: Value,
        events: mpsc::Receiver<AnswerEvent>,
    },
    /// Whole, once it is done (it goes on if the asker leaves).
    Whole(oneshot::Receiver<Value>),
}

/// Why a question got no answer.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum AskError {
    #[error("the text must be 1 byte to 256 KiB")]
    BadText,
    /// The node would not take the question (an unknown conversation…).
    #[error("{0}")]
    Refused(String),
    /// The question is saved (and syncs), but nothing can answer it now.
    #[error("your message is saved, but there is no answer: {why}")]
    Saved { reply: Value, why: String },
    /// Nothing can answer now, and (held) nothing was saved.
    #[error("no answer (nothing was saved): {0}")]
    Unavailable(String),
    #[error("{MAX_HELD} held answers are already waiting; confirm or close one first")]
    TooManyHeld,
    /// No held answer has that ticket.
    #[error(
        "no held answer has that ticket: its stream closed, it waited too long, or it was already confirmed"
    )]
    NoSuchTicket,
    #[error("the node is shutting down")]
    Stopping,
}

impl Asking {
    pub fn new(
        commands: mpsc::Sender<Command>,
        engine: EngineHandle,
        offload: crate::offload::Offload,
    ) -> Self {
        Self {
            commands,
            engine,
            offload,
            held: Arc::default(),
        }
    }

    /// Asks the node (its actor) and waits for its reply.
    async fn node<T>(
        &self,
        make: impl FnOnce(oneshot::Sender<T>) -> Command,
    ) -> Result<T, AskError> {
        let (tx, rx) = oneshot::channel();
        self.commands
            .send(make(tx))
            .await
            .map_err(|_| AskError::Stopping)?;
        rx.await.map_err(|_| AskError::Stopping)
    }

    /// Why nothing can answer now, if nothing can (a GPU peer can when this machine has no
    /// model).
    async fn problem(&self) -> Option<String> {
        if self.offload.available() {
            return None;
        }
        let problem = crate::llm::engine_problem(&self.engine).await?;
        // A GPU peer is there, but this user has not let answers leave this computer.
        Some(if self.offload.could_answer() {
            format!(
                "{problem}. Your org's GPU peer could answer: let it in Settings → \"Where answers are made\" (its operator can read what is sent to it)"
            )
        } else {
            problem
        })
    }

    /// Saves the question and answers it with the local model or a GPU peer, streamed or whole,
    /// saving the answer with its model and timings as it goes. With no model the question is
    /// still saved and synced ([`AskError::Saved`]).
    pub async fn ask(&self, question: Question, stream: bool) -> Result<Answer, AskError> {
        check(&question.text)?;
        let problem = self.problem().await;
        let started = self
            .node(|reply| Command::Ask {
                text: question.text,
                conversation: question.conversation,
                answer: problem.is_none(),
                reply,
            })
            .await?
            .map_err(AskError::Refused)?;
        let Some(answer_id) = started.answer_id else {
            return Err(AskError::Saved {
                reply: started.reply,
                why: problem.unwrap_or_default(),
            });
        };
        let request = Request {
            client: "ask".into(),
            messages: started.history,
            sampling: crate::answer::ask_sampling(),
            prefix: String::new(),
            // A voice turn's question comes with the timings of its wake and speech.
            voice: !question.timings_ms.is_empty(),
            traceparent: None,
        };
        let pinned = question
            .model
            .clone()
            .filter(|m| m != self.engine.model_name());
        let routed = match self.offload.submit_for(&self.engine, request, pinned).await {
            Ok(routed) => routed,
            Err(e) => {
                let _ = self
                    .commands
                    .send(Command::AnswerDone {
                        doc: started.doc,
                        id: answer_id,
                        status: jarvis_crdt::Status::Failed,
                        model: None,
                        served_by: None,
                        timings_ms: BTreeMap::default(),
                    })
                    .await;
                return Err(AskError::Saved {
                    reply: started.reply,
                    why: e.to_string(),
                });
            }
        };
        let (done_tx, done_rx) = oneshot::channel();
        let task = AnswerTask {
            target: Target {
                commands: self.commands.clone(),
                started: tokio::sync::OnceCell::new_with(Some(Some((
                    started.doc,
                    answer_id.clone(),
                    started.reply.clone(),
                )))),
                question: None,
            },
            model: self.engine.model_name().to_owned(),
            timings_ms: question.timings_ms,
        };
        if !stream {
            tokio::spawn(task.run(routed, None, done_tx, None));
            return Ok(Answer::Whole(done_rx));
        }
        let (events_tx, events) = mpsc::channel(EVENTS);
        tokio::spawn(task.run(routed, Some(events_tx), done_tx, None));
        // The answer's message id too, so a client can tell its own answer among the changes
        // `/v1/events` reports.
        let mut start = started.reply;
        if let Some(fields) = start.as_object_mut() {
            fields.insert("answer_id".into(), json!(answer_id));
        }
        Ok(Answer::Streaming { start, events })
    }

    /// A held answer: generated and streamed from the conversation as it would be with the
    /// question added, and nothing saved until [`Asking::confirm`] names its ticket (within
    /// [`HOLD_FOR`]; dropping the events first drops it). A voice turn starts one on the words
    /// heard at a pause, before it is sure the user has finished, and confirms it once the
    /// silence is long enough. Returns the ticket and the events.
    pub async fn ask_held(
        &self,
        question: Question,
    ) -> Result<(String, mpsc::Receiver<AnswerEvent>), AskError> {
        check(&question.text)?;
        if let Some(problem) = self.problem().await {
            return Err(AskError::Unavailable(problem));
        }
        let history = self
            .node(|reply| Command::Preview {
                text: question.text.clone(),
                conversation: question.conversation,
                reply,
            })
            .await?
            .map_err(AskError::Refused)?;
        let (confirm, confirmed) = oneshot::channel();
        let ticket = self.held.add(confirm).ok_or(AskError::TooManyHeld)?;
        let guard = Ticket(Arc::clone(&self.held), ticket.clone());
        let request = Request {
            client: "ask".into(),
            messages: history,
            sampling: crate::answer::ask_sampling(),
            prefix: String::new(),
            // Held answers are the voice loop's: spoken while the user is still talking.
            voice: true,
            traceparent: None,
        };
        let routed = self
            .offload
            .submit(&self.engine, request)
            .await
            .map_err(|e| AskError::Unavailable(e.to_string()))?;
        let task = AnswerTask {
            target: Target {
                commands: self.commands.clone(),
                started: tokio::sync::OnceCell::new(),
                question: Some((question.text, question.conversation)),
            },
            model: self.engine.model_name().to_owned(),
            timings_ms: question.timings_ms,
        };
        let hold = crate::answer::Hold {
            confirm: confirmed,
            until: std::time::Instant::now() + HOLD_FOR,
        };
        let (events_tx, events) = mpsc::channel(EVENTS);
        let (done_tx, _) = oneshot::channel();
        tokio::spawn(async move {
            task.run(routed, Some(events_tx), done_tx, Some(hold)).await;
            drop(guard);
        });
        Ok((ticket, events))
    }

    /// Keeps a held answer: its question and answer are saved, the answer streaming on to
    /// whoever holds its events. `timings` are stored with it.
    pub fn confirm(&self, ticket: &str, timings: BTreeMap<String, u64>) -> Result<(), AskError> {
        let confirm = self.held.take(ticket).ok_or(AskError::NoSuchTicket)?;
        confirm.send(timings).map_err(|_| AskError::NoSuchTicket)
    }
}

fn check(text: &str) -> Result<(), AskError> {
    if text.trim().is_empty() || text.len() > MAX_ASK_BYTES {
        return Err(AskError::BadText);
    }
    Ok(())
}

/// Speculative answers waiting for their confirmation, by ticket.
#[derive(Default)]
struct HeldAnswers(std::sync::Mutex<std::collections::HashMap<String, HeldConfirm>>);

type HeldConfirm = oneshot::Sender<BTreeMap<String, u64>>;

impl HeldAnswers {
    /// A new ticket, or `None` when [`MAX_HELD`] are waiting.
    fn add(&self, confirm: HeldConfirm) -> Option<String> {
        let mut held = self.0.lock().ok()?;
        if held.len() >= MAX_HELD {
            return None;
        }
        let ticket = hex::encode(jarvis_identity::keys::random_bytes::<16>());
        held.insert(ticket.clone(), confirm);
        Some(ticket)
    }

    fn take(&self, ticket: &str) -> Option<HeldConfirm> {
        self.0.lock().ok()?.remove(ticket)
    }
}

/// Forgets a held answer's ticket when its task ends, however it ends.
struct Ticket(Arc<HeldAnswers>, String);

impl Drop for Ticket {
    fn drop(&mut self) {
        drop(self.0.take(&self.1));
    }
}

/// Where an answer is written: known from the start, or (held) made once it is confirmed.
struct Target {
    commands: mpsc::Sender<Command>,
    /// The conversation, the answer's message id, and the question's reply fields; `None` when
    /// a confirmed answer could not be saved.
    started: tokio::sync::OnceCell<Option<(DocId, String, Value)>>,
    /// A held answer's question and conversation, added when it is confirmed.
    question: Option<(String, Option<DocId>)>,
}

impl Target {
    /// Where the answer goes, adding the question and the answer's message first if held.
    async fn get(&self) -> Option<&(DocId, String, Value)> {
        self.started
            .get_or_init(|| async {
                let (text, conversation) = self.question.clone()?;
                let (reply, started) = oneshot::channel();
                self.commands
                    .send(Command::Ask {
                        text,
                        conversation,
                        answer: true,
                        reply,
                    })
                    .await
                    .ok()?;
                match started.await.ok()? {
                    Ok(s) => Some((s.doc, s.answer_id?, s.reply)),
                    Err(e) => {
                        tracing::warn!("a confirmed answer could not be saved: {e}");
                        None
                    }
                }
            })
            .await
            .as_ref()
    }
}

/// Streams one answer to its client and into the conversation, then records how it ended.
struct AnswerTask {
    target: Target,
    model: String,
    /// Timings from before the question, stored with the answer's own.
    timings_ms: BTreeMap<String, u64>,
}

impl AnswerTask {
    async fn run(
        self,
        routed: crate::offload::Routed,
        client: Option<mpsc::Sender<AnswerEvent>>,
        done: oneshot::Sender<Value>,
        hold: Option<crate::answer::Hold>,
    ) {
        let Self {
            target,
            model,
            timings_ms: before,
        } = self;
        let crate::offload::Routed { generation, route } = routed;
        let finished = crate::answer::run(
            generation,
            client.as_ref(),
            AnswerEvent::Token,
            |text| {
                let target = &target;
                async move {
                    if let Some((doc, id, _)) = target.get().await {
                        let _ = target
                            .commands
                            .send(Command::AnswerChunk {
                                doc: *doc,
                                id: id.clone(),
                                text,
                            })
                            .await;
                    }
                }
            },
            hold,
        )
        .await;
        let send_done = |body: Value| async {
            if let Some(client) = &client {
                let _ = client.send(AnswerEvent::Done(body.clone())).await;
            }
            let _ = done.send(body);
        };
        if finished.discarded {
            send_done(json!({ "status": "discarded", "answer": finished.text })).await;
            return;
        }
        let Some((doc, id, reply)) = target.get().await.cloned() else {
            send_done(json!({
                "status": "failed",
                "answer": finished.text,
                "error": "the answer could not be saved (is the node stopping?)",
            }))
            .await;
            return;
        };
        // An offloaded answer names the GPU peer's model.
        let model = finished.summary.as_ref().map_or(model, |s| s.model.clone());
        let route = route.borrow().clone();
        let _ = target
            .commands
            .send(Command::AnswerDone {
                doc,
                id,
                status: finished.status,
                model: Some(model.clone()),
                served_by: route.served_by(),
                timings_ms: before
                    .into_iter()
                    .chain(finished.confirmed.clone().unwrap_or_default())
                    .chain(finished.timings())
                    .collect(),
            })
            .await;
        let mut body = reply;
        if let (Some(fields), Value::Object(answer)) =
            (body.as_object_mut(), finished.json(&model, &route))
        {
            fields.extend(answer);
        }
        send_done(body).await;
    }
}

/// An answer that ended without being kept is an error for the one who asked.
pub fn kept(answer: Value) -> anyhow::Result<Value> {
    match answer.get("status").and_then(Value::as_str) {
        Some("cancelled") => anyhow::bail!("the answer was cancelled"),
        Some("discarded") => anyhow::bail!("the held answer was not confirmed in time"),
        _ => Ok(answer),
    }
}
