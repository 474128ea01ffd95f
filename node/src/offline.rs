//! Answering with no node running: the model is loaded in this process and the exchange
//! saved to the store, which syncs when `jarvis up` next runs.

// `serde_json::Value[...]` with a string key returns `Null` for a missing key; it never panics.
#![allow(clippy::indexing_slicing)]

use std::collections::BTreeMap;

use anyhow::Result;
use jarvis_inference::metrics::EngineMetrics;
use jarvis_inference::supervisor::EngineHandle;
use serde_json::{Value, json};

use crate::home::Home;

/// Answers in this process (no node runs): the model is loaded here, the exchange saved to the
/// store; `engine` is the one to use, or none to start one. Pieces go to `on_piece`; `timings` is asked for just before the answer is saved (a
/// voice turn adds its own then).
pub async fn ask_offline(
    home: &Home,
    engine: Option<EngineHandle>,
    text: &str,
    conversation: Option<String>,
    timings: impl FnOnce() -> BTreeMap<String, u64>,
    mut on_piece: impl FnMut(&str),
) -> Result<Value> {
    use crate::conversations as conv;
    let conversation = conversation
        .map(|c| c.parse::<jarvis_crdt::DocId>())
        .transpose()
        .map_err(|_| anyhow::anyhow!("a conversation id is 32 hex characters"))?;
    let (mut replica, recipients) = conv::open_offline(home)?;
    // Started here unless the caller started it earlier (a voice turn loads it while listening).
    let engine = engine.unwrap_or_else(|| crate::llm::start_engine(EngineMetrics::default()));
    let problem = crate::llm::engine_problem(&engine).await;
    let added = conv::add_user_message(&mut replica, &recipients, text, conversation)?;
    let mut reply = added.reply;
    let set = |reply: &mut Value, key: &str, value: Value| {
        if let Some(fields) = reply.as_object_mut() {
            fields.insert(key.into(), value);
        }
    };
    if let Some(problem) = problem {
        set(
            &mut reply,
            "error",
            json!(format!(
                "your message is saved, but there is no answer: {problem}"
            )),
        );
        return Ok(reply);
    }
    let history = replica
        .doc(added.doc)
        .map(conv::history)
        .unwrap_or_default();
    let (answer_id, _) = conv::start_answer(&mut replica, added.doc)?;
    let request = jarvis_inference::supervisor::Request {
        client: "ask".into(),
        messages: history,
        sampling: crate::answer::ask_sampling(),
        prefix: String::new(),
        voice: false,
        traceparent: None,
    };
    let generation = engine.submit(request).await?;
    let (pieces, mut printer) = tokio::sync::mpsc::channel::<String>(256);
    let print = async move {
        while let Some(piece) = printer.recv().await {
            on_piece(&piece);
        }
    };
    // Nobody else reads this store while no node runs: the text is written once, at the end.
    let answer = async move {
        crate::answer::run(generation, Some(&pieces), |p| p, |_| async {}, None).await
    };
    let (finished, ()) = tokio::join!(answer, print);
    conv::stream_answer(&mut replica, added.doc, &answer_id, &finished.text)?;
    let model = engine.model_name().to_owned();
    conv::finish_answer(
        &mut replica,
        added.doc,
        &answer_id,
        finished.status,
        Some(&model),
        None,
        &timings().into_iter().chain(finished.timings()).collect(),
    )?;
    engine.shutdown().await;
    if let Value::Object(answer) = finished.json(&model, &crate::offload::Where::Local)
        && let Some(fields) = reply.as_object_mut()
    {
        fields.extend(answer);
    }
    Ok(reply)
}
