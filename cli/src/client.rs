//! CLI commands that talk to the running node through its local API: `status`, `ask`,
//! `conversations`, `show`.

// `serde_json::Value[...]` with a string key returns `Null` for a missing key; it never panics.
#![allow(clippy::indexing_slicing)]

use anyhow::Result;
use jarvis_home::Home;
use jarvis_node::local_api::{Client, block_on, running};
use jarvis_node::offline::ask_offline;
use jarvis_node::output::Output;
use jarvis_node::remote::ask_node;
use serde_json::Value;

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
        for model in status["models"].as_array().into_iter().flatten() {
            text.push_str(&format!(
                "model  {} ({}{})\n",
                model["name"].as_str().unwrap_or("?"),
                model["state"].as_str().unwrap_or("?"),
                model["problem"]
                    .as_str()
                    .map(|p| format!(": {p}"))
                    .unwrap_or_default()
            ));
        }
        let offload = &status["offload"];
        text.push_str(&format!(
            "answers {}\n",
            match offload["policy"].as_str() {
                Some("local") => "on this machine only (offload policy: local)",
                Some("gpu") => "on the org's GPU peers first (offload policy: gpu)",
                _ => "here, or on a GPU peer when that is better (offload policy: auto)",
            }
        ));
        for g in offload["gpu_peers"].as_array().into_iter().flatten() {
            text.push_str(&format!(
                "gpu    {} {} ({}, {} busy of {} slots; {} answers for you{})\n",
                g["name"].as_str().unwrap_or("?"),
                g["model"].as_str().unwrap_or("no report yet"),
                if g["ready"] == true {
                    "ready"
                } else {
                    "not ready"
                },
                g["busy"].as_u64().unwrap_or(0),
                g["slots"].as_u64().unwrap_or(0),
                g["answers"].as_u64().unwrap_or(0),
                g["last_error"]
                    .as_str()
                    .map(|e| format!("; last error: {e}"))
                    .unwrap_or_default(),
            ));
        }
        let directory = &status["directory"];
        let names = |list: &serde_json::Value| -> Vec<String> {
            list.as_array()
                .into_iter()
                .flatten()
                .filter_map(|e| e["name"].as_str().map(str::to_owned))
                .collect()
        };
        let (online, gpus) = (names(&directory["devices"]), names(&directory["gpus"]));
        if !online.is_empty() || !gpus.is_empty() {
            text.push_str(&format!(
                "relay directory: your devices online {}; GPU peers {}\n",
                if online.is_empty() {
                    "none".to_owned()
                } else {
                    online.join(", ")
                },
                if gpus.is_empty() {
                    "none".to_owned()
                } else {
                    gpus.join(", ")
                },
            ));
        }
        // Addresses kept dialled (the org's relays, `--peer`) that cannot be reached, or that
        // refused this device (a revoked device, an invite claimed twice): said, with what to do.
        for d in status["dialing"].as_array().into_iter().flatten() {
            let (Some(error), false) = (d["error"].as_str(), d["connected"] == true) else {
                continue;
            };
            let kind = d["kind"].as_str().unwrap_or("peer");
            let address = d["address"].as_str().unwrap_or("?");
            let reason = d["reason"].as_str().unwrap_or(error);
            text.push_str(&match d["problem"].as_str() {
                // The reason is the peer's own words: shown as they are, never parsed.
                Some("refused-us") => format!(
                    "{kind:<6} {address} refuses this device: {reason}\n       your org's admin can see why (`jarvis admin members`)\n"
                ),
                Some("not-accepted") => format!(
                    "{kind:<6} {address} reached, but this device does not accept it: {reason}\n"
                ),
                _ => format!("{kind:<6} {address} unreachable: {error}\n"),
            });
        }
        let set_aside = status["quarantined"]["changes"].as_u64().unwrap_or(0);
        let unreadable = status["quarantined"]["documents"]
            .as_array()
            .map_or(0, Vec::len);
        if set_aside > 0 || unreadable > 0 {
            text.push_str(&format!(
                "store  set aside {set_aside} change(s) that do not open and {unreadable} conversation(s) that do not load; everything else is readable\n"
            ));
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

/// `jarvis ask`: through the running node (streaming its answer), or, with no node running, with
/// the model run here and the exchange written to the store for the node to sync later.
pub fn ask(
    home: &Home,
    out: Output,
    text: &str,
    conversation: Option<String>,
    model: Option<&str>,
) -> Result<()> {
    let print = |piece: &str| print_piece(out, piece);
    let answer = match running(home)? {
        Some(client) => {
            let answer = block_on(ask_node(
                &client,
                text,
                conversation,
                model,
                Default::default(),
                print,
            ))?;
            print_end(out, &answer);
            // Where it was made, when not here (stderr: the answer alone stays on stdout).
            let offload = &answer["offload"];
            if let Some(name) = offload["name"].as_str() {
                match offload["failed"].as_str() {
                    Some(why) => out.note(&format!(
                        "(GPU peer {name} failed mid-answer ({why}); this machine finished it)"
                    )),
                    None => out.note(&format!("(answered by the org's GPU peer {name})")),
                }
            }
            answer
        }
        None => {
            if let Some(model) = model {
                anyhow::bail!(
                    "`--model {model}` asks the org's GPU peers, through the running node: start it with `jarvis up`"
                );
            }
            let answer = block_on(ask_offline(
                home,
                None,
                text,
                conversation,
                Default::default,
                print,
            ))?;
            print_end(out, &answer);
            out.note(&offline_note(&answer));
            answer
        }
    };
    if out.json {
        out.emit(&answer, String::new);
    }
    if let Some(error) = answer["error"].as_str() {
        anyhow::bail!("{error}");
    }
    Ok(())
}

/// Prints text as it streams (not with --json, which prints the whole answer at the end).
fn print_piece(out: Output, piece: &str) {
    use std::io::Write;
    if !out.json {
        let mut stdout = std::io::stdout().lock();
        let _ = stdout.write_all(piece.as_bytes());
        let _ = stdout.flush();
    }
}

fn print_end(out: Output, answer: &Value) {
    if !out.json && answer["status"] == "done" {
        println!();
    }
}

pub fn conversations(home: &Home, out: Output) -> Result<()> {
    let list = match running(home)? {
        Some(client) => block_on(client.get("/v1/conversations"))?,
        None => {
            jarvis_node::conversations::list(&jarvis_node::conversations::open_offline(home)?.0)
        }
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
            jarvis_node::conversations::show(
                &jarvis_node::conversations::open_offline(home)?.0,
                doc,
            )
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

/// The note printed after answering with no node running.
fn offline_note(answer: &Value) -> String {
    format!(
        "(no node is running: the conversation {} syncs when `jarvis up` runs)",
        answer["conversation_id"].as_str().unwrap_or("?")
    )
}
