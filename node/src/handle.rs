//! How a voice loop reaches the node's answers: in-process (the loop inside `jarvis up` holds
//! the node's [`Asking`]) or over the local API (`jarvis listen`, a process of its own). The
//! speculation in [`crate::speculate`] is written once against this.

use std::collections::BTreeMap;

use anyhow::{Context, Result, bail};
use serde_json::Value;
use tokio::sync::{mpsc, oneshot};

use crate::ask::{Answer, AnswerEvent, Asking, Question};
use crate::local_api::Client;

/// The node, as a voice loop asks it.
#[derive(Clone)]
pub enum NodeHandle {
    /// The node in this process.
    InProcess(Asking),
    /// A node in another process, through its local API.
    Http(Client),
}

impl NodeHandle {
    /// Asks for good: each piece of the answer to `on_piece`; the answer when it is done.
    pub async fn ask(
        &self,
        text: &str,
        conversation: Option<String>,
        timings: BTreeMap<String, u64>,
        on_piece: impl FnMut(&str),
    ) -> Result<Value> {
        match self {
            Self::Http(client) => {
                crate::remote::ask_node(client, text, conversation, None, timings, on_piece).await
            }
            Self::InProcess(asking) => {
                let question = Question {
                    text: text.to_owned(),
                    conversation: parse(conversation)?,
                    timings_ms: timings,
                    model: None,
                };
                match asking.ask(question, true).await? {
                    Answer::Streaming { events, .. } => finish(events, on_piece).await,
                    Answer::Whole(done) => {
                        crate::ask::kept(done.await.context("the node ended the answer early")?)
                    }
                }
            }
        }
    }

    /// Asks for a held answer: streamed to `on_piece` at once, kept only once
    /// [`NodeHandle::confirm`]ed with the ticket sent to `ticket` (before the first piece).
    pub async fn ask_held(
        &self,
        text: &str,
        conversation: Option<String>,
        ticket: oneshot::Sender<String>,
        on_piece: impl FnMut(&str),
    ) -> Result<Value> {
        match self {
            Self::Http(client) => {
                crate::remote::ask_node_held(client, text, conversation, ticket, on_piece).await
            }
            Self::InProcess(asking) => {
                let question = Question {
                    text: text.to_owned(),
                    conversation: parse(conversation)?,
                    timings_ms: BTreeMap::new(),
                    model: None,
                };
                let (id, events) = asking.ask_held(question).await?;
                let _ = ticket.send(id);
                finish(events, on_piece).await
            }
        }
    }

    /// Keeps a held answer, with the timings of the turn.
    pub async fn confirm(&self, ticket: &str, timings: &BTreeMap<String, u64>) -> Result<()> {
        match self {
            Self::Http(client) => crate::remote::confirm(client, ticket, timings).await,
            Self::InProcess(asking) => Ok(asking.confirm(ticket, timings.clone())?),
        }
    }
}

fn parse(conversation: Option<String>) -> Result<Option<jarvis_crdt::DocId>> {
    conversation
        .map(|c| c.parse())
        .transpose()
        .map_err(|_| anyhow::anyhow!("a conversation id is 32 hex characters"))
}

/// Reads an answer's events to its end.
async fn finish(
    mut events: mpsc::Receiver<AnswerEvent>,
    mut on_piece: impl FnMut(&str),
) -> Result<Value> {
    while let Some(event) = events.recv().await {
        match event {
            AnswerEvent::Token(piece) => on_piece(&piece),
            AnswerEvent::Done(answer) => return crate::ask::kept(answer),
        }
    }
    bail!("the node ended the answer early")
}
