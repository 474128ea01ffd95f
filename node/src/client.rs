//! CLI commands that talk to the running node through its local API: `status`, `ask`,
//! `conversations`, `show`.

// `serde_json::Value[...]` with a string key returns `Null` for a missing key; it never panics.
#![allow(clippy::indexing_slicing)]

use anyhow::{Context, Result};
use serde_json::{Value, json};

use crate::api::Client;
use crate::home::Home;
use crate::output::Output;

fn block_on<T>(f: impl std::future::Future<Output = Result<T>>) -> Result<T> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?
        .block_on(f)
}

pub fn status(home: &Home, out: Output) -> Result<()> {
    let client = Client::for_home(home)?;
    let status = block_on(client.get("/v1/status"))?;
    out.emit(&status, || {
        let mut text = format!(
            "device {}  (user {})\napi    http://{}\n",
            status["device_id"].as_str().unwrap_or("?"),
            status["user"].as_str().unwrap_or("?"),
            status["api"].as_str().unwrap_or("?"),
        );
        for addr in status["listen"].as_array().into_iter().flatten() {
            text.push_str(&format!("listen {}\n", addr.as_str().unwrap_or("?")));
        }
        let peers = status["peers"].as_array().cloned().unwrap_or_default();
        if peers.is_empty() {
            text.push_str("no peers connected");
        }
        for p in peers {
            text.push_str(&format!(
                "peer   {} {:<12} {:<12} {}{}\n",
                p["peer_id"].as_str().unwrap_or("?"),
                p["path"].as_str().unwrap_or("?"),
                p["role"].as_str().unwrap_or("unauthenticated"),
                p["name"].as_str().unwrap_or(""),
                if p["syncing"] == true {
                    "  (syncing)"
                } else {
                    ""
                }
            ));
        }
        text.trim_end().to_owned()
    });
    Ok(())
}

/// The running node's client, or `None` when no node runs on this home (then commands work on
/// the store directly).
fn running(home: &Home) -> Result<Option<Client>> {
    home.load()?;
    if home.dir().join("api.json").exists() {
        Ok(Some(Client::for_home(home)?))
    } else {
        Ok(None)
    }
}

pub fn ask(home: &Home, out: Output, text: &str, conversation: Option<String>) -> Result<()> {
    let (answer, synced) = match running(home)? {
        Some(client) => (
            block_on(client.post(
                "/v1/ask",
                &json!({ "text": text, "conversation": conversation }),
            ))?,
            true,
        ),
        None => {
            let conversation = conversation
                .map(|c| c.parse::<jarvis_crdt::DocId>())
                .transpose()
                .map_err(|_| anyhow::anyhow!("a conversation id is 32 hex characters"))?;
            let (mut replica, recipients) = crate::conversations::open_offline(home)?;
            let added = crate::conversations::add_user_message(
                &mut replica,
                &recipients,
                text,
                conversation,
            )?;
            (added.reply, false)
        }
    };
    out.emit(&answer, || {
        format!(
            "Saved to conversation {}{}.\n(No answer yet: the inference engine is not built.)",
            answer["conversation_id"].as_str().unwrap_or("?"),
            if synced {
                " and synced to your devices"
            } else {
                " (no node is running: it syncs when `jarvis up` runs)"
            }
        )
    });
    Ok(())
}

pub fn conversations(home: &Home, out: Output) -> Result<()> {
    let list = match running(home)? {
        Some(client) => block_on(client.get("/v1/conversations"))?,
        None => crate::conversations::list(&crate::conversations::open_offline(home)?.0),
    };
    out.emit(&list, || {
        let items = list["conversations"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        if items.is_empty() {
            return "No conversations yet. Start one with `jarvis ask \"…\"`.".to_owned();
        }
        items
            .iter()
            .map(|c| {
                format!(
                    "{}  {:>4} messages  {}",
                    c["id"].as_str().unwrap_or("?"),
                    c["messages"],
                    c["title"].as_str().unwrap_or("")
                )
            })
            .collect::<Vec<_>>()
            .join("\n")
    });
    Ok(())
}

pub fn show(home: &Home, out: Output, id: &str) -> Result<()> {
    let conversation: Value = match running(home)? {
        Some(client) => block_on(client.get(&format!("/v1/conversations/{id}")))?,
        None => {
            let doc = id
                .parse::<jarvis_crdt::DocId>()
                .map_err(|_| anyhow::anyhow!("a conversation id is 32 hex characters"))?;
            crate::conversations::show(&crate::conversations::open_offline(home)?.0, doc)
                .map_err(|e| anyhow::anyhow!(e))?
        }
    };
    out.emit(&conversation, || {
        let mut text = format!("{}\n", conversation["title"].as_str().unwrap_or(""));
        for m in conversation["messages"].as_array().into_iter().flatten() {
            text.push_str(&format!(
                "[{}] {}\n",
                m["role"].as_str().unwrap_or("?"),
                m["text"].as_str().unwrap_or("")
            ));
        }
        text.trim_end().to_owned()
    });
    Ok(())
}
