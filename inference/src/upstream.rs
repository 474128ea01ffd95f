//! An OpenAI-compatible server (vLLM, SGLang, TGI, llama.cpp's `llama-server`, Ollama) as a GPU
//! peer's engine (`jarvis gpu up --backend openai=URL`), sans-IO: the request body it is sent,
//! its streamed answer (server-sent events of chat-completion chunks) read into [`Event`]s (which
//! the shell turns into the engine's updates), and its load read from what it publishes
//! (Prometheus metrics or `llama-server`'s `/slots`). The shell that does the HTTP is
//! `node/src/upstream.rs`; the fuzzer drives this.
//!
//! Everything the server sends is bounded before it is read: an event line longer than
//! [`MAX_EVENT_BYTES`], or a metrics or slots document longer than [`MAX_LOAD_BYTES`], is an
//! error, not an allocation.
//!
//! A half-streamed answer continues after a failover by **assistant prefill**: the text so far
//! goes as a last `assistant` message, with vLLM's `continue_final_message: true` and
//! `add_generation_prompt: false` (`llama-server` continues a last assistant message by itself
//! and ignores those fields). [`Flavor`] says which the server is, when it can be told.

use crate::protocol::FinishReason;
use crate::supervisor::Request;

/// The longest line of the event stream read (one chunk of an answer is a few hundred bytes).
pub const MAX_EVENT_BYTES: usize = 256 * 1024;
/// The largest metrics page or `/slots` answer read.
pub const MAX_LOAD_BYTES: usize = 4 * 1024 * 1024;

/// What the server is, as far as its answers tell: it decides how a load is read and whether a
/// continued answer is trusted to continue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flavor {
    /// `llama-server` (its `/slots`, its `llamacpp:` metrics).
    LlamaServer,
    /// vLLM (its `vllm:` metrics).
    Vllm,
    /// Anything else that speaks the API.
    Other,
}

/// The chat-completions body for `request` on `model`, streamed, with the token counts asked
/// for at the end. A request's `prefix` (the answer so far, after a failover) is sent as the
/// last assistant message to be continued.
pub fn chat_body(request: &Request, model: &str) -> serde_json::Value {
    use serde_json::{Value, json};
    let mut messages: Vec<Value> = request
        .messages
        .iter()
        .map(|m| json!({ "role": m.role, "content": m.content }))
        .collect();
    let mut body = serde_json::Map::new();
    body.insert("model".into(), model.into());
    body.insert("stream".into(), true.into());
    body.insert("stream_options".into(), json!({ "include_usage": true }));
    body.insert("max_tokens".into(), request.sampling.max_tokens.into());
    body.insert("temperature".into(), request.sampling.temperature.into());
    body.insert("top_p".into(), request.sampling.top_p.into());
    if let Some(seed) = request.sampling.seed {
        body.insert("seed".into(), seed.into());
    }
    if !request.sampling.stop.is_empty() {
        body.insert("stop".into(), request.sampling.stop.clone().into());
    }
    if !request.prefix.is_empty() {
        messages.push(json!({ "role": "assistant", "content": request.prefix }));
        body.insert("continue_final_message".into(), true.into());
        body.insert("add_generation_prompt".into(), false.into());
    }
    body.insert("messages".into(), messages.into());
    Value::Object(body)
}

/// One event of the answer's stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// More text (possibly empty: a role-only first chunk).
    Text(String),
    /// The answer ended, and why.
    Finished(FinishReason),
    /// The token counts (the last chunk, when asked for).
    Usage {
        prompt_tokens: u32,
        completion_tokens: u32,
    },
    /// `data: [DONE]`: nothing follows.
    Done,
    /// The server reported an error in the stream.
    Failed(String),
}

/// What is wrong with what the server sent.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UpstreamError {
    #[error("the server sent a line of more than {MAX_EVENT_BYTES} bytes")]
    LineTooLong,
    #[error("the server sent a chunk that is not a chat completion chunk: {0}")]
    Malformed(String),
}

/// Server-sent events, read as they arrive: bytes in, [`Event`]s out.
#[derive(Debug, Default)]
pub struct Events {
    /// The line not complete yet.
    partial: Vec<u8>,
}

#[derive(serde::Deserialize)]
struct Chunk {
    #[serde(default)]
    choices: Vec<Choice>,
    #[serde(default)]
    usage: Option<Usage>,
    #[serde(default)]
    error: Option<serde_json::Value>,
}

#[derive(serde::Deserialize)]
struct Choice {
    #[serde(default)]
    delta: Option<Delta>,
    #[serde(default)]
    finish_reason: Option<String>,
}

#[derive(serde::Deserialize)]
struct Delta {
    #[serde(default)]
    content: Option<String>,
}

#[derive(serde::Deserialize)]
struct Usage {
    #[serde(default)]
    prompt_tokens: u32,
    #[serde(default)]
    completion_tokens: u32,
}

impl Events {
    /// Takes what arrived; returns the events its complete lines carry, in order.
    pub fn push(&mut self, bytes: &[u8]) -> Result<Vec<Event>, UpstreamError> {
        let mut events = Vec::new();
        let mut rest = bytes;
        while let Some(at) = rest.iter().position(|b| *b == b'\n') {
            let (line, after) = rest.split_at(at);
            rest = after.get(1..).unwrap_or_default();
            if self.partial.len() + line.len() > MAX_EVENT_BYTES {
                return Err(UpstreamError::LineTooLong);
            }
            self.partial.extend_from_slice(line);
            let line = std::mem::take(&mut self.partial);
            events.extend(Self::line(&line)?);
        }
        if self.partial.len() + rest.len() > MAX_EVENT_BYTES {
            return Err(UpstreamError::LineTooLong);
        }
        self.partial.extend_from_slice(rest);
        Ok(events)
    }

    /// One line: only `data:` lines carry anything (comments, `event:`, `id:` and blank lines
    /// are the format's own).
    fn line(line: &[u8]) -> Result<Vec<Event>, UpstreamError> {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let Some(data) = line.strip_prefix(b"data:") else {
            return Ok(Vec::new());
        };
        let data = data.strip_prefix(b" ").unwrap_or(data);
        if data == b"[DONE]" {
            return Ok(vec![Event::Done]);
        }
        let chunk: Chunk =
            serde_json::from_slice(data).map_err(|e| UpstreamError::Malformed(e.to_string()))?;
        if let Some(error) = chunk.error {
            let message = error
                .get("message")
                .and_then(serde_json::Value::as_str)
                .map_or_else(|| error.to_string(), str::to_owned);
            return Ok(vec![Event::Failed(message.chars().take(1000).collect())]);
        }
        let mut events = Vec::new();
        // One answer (`n` is 1): the first choice.
        if let Some(choice) = chunk.choices.into_iter().next() {
            if let Some(text) = choice.delta.and_then(|d| d.content) {
                events.push(Event::Text(text));
            }
            if let Some(reason) = choice.finish_reason {
                events.push(Event::Finished(match reason.as_str() {
                    "length" => FinishReason::Length,
                    _ => FinishReason::Stop,
                }));
            }
        }
        if let Some(usage) = chunk.usage {
            events.push(Event::Usage {
                prompt_tokens: usage.prompt_tokens,
                completion_tokens: usage.completion_tokens,
            });
        }
        Ok(events)
    }
}

/// How busy the server says it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Busy {
    /// Answers generating now.
    pub running: u32,
    /// Answers waiting for a slot.
    pub waiting: u32,
    /// Answers it generates at once, where it says (`llama-server`'s `/slots`).
    pub slots: Option<u32>,
}

impl Busy {
    /// What the load report's `busy` counts: generating and waiting.
    pub fn in_flight(&self) -> u32 {
        self.running.saturating_add(self.waiting)
    }
}

/// The gauges that say how busy an engine is, by flavor: (name, counts as running).
const GAUGES: &[(&str, Flavor, bool)] = &[
    ("vllm:num_requests_running", Flavor::Vllm, true),
    ("vllm:num_requests_waiting", Flavor::Vllm, false),
    ("llamacpp:requests_processing", Flavor::LlamaServer, true),
    ("llamacpp:requests_deferred", Flavor::LlamaServer, false),
    ("sglang:num_running_reqs", Flavor::Other, true),
    ("sglang:num_queue_reqs", Flavor::Other, false),
    ("tgi_batch_current_size", Flavor::Other, true),
    ("tgi_queue_size", Flavor::Other, false),
];

/// A Prometheus text page: the engine's running and waiting gauges (summed over labels, such
/// as vLLM's per-model ones), and which engine published them. `None` when it has none of
/// them (or is too large to read).
pub fn parse_metrics(page: &[u8]) -> Option<(Busy, Flavor)> {
    if page.len() > MAX_LOAD_BYTES {
        return None;
    }
    let page = std::str::from_utf8(page).ok()?;
    let mut busy = Busy::default();
    let mut flavor = None;
    for line in page.lines() {
        if line.starts_with('#') {
            continue;
        }
        let mut parts = line.split_whitespace();
        let (Some(series), Some(value)) = (parts.next(), parts.next()) else {
            continue;
        };
        let name = series.split('{').next().unwrap_or(series);
        let Some((_, f, running)) = GAUGES.iter().find(|(n, _, _)| *n == name) else {
            continue;
        };
        let Ok(value) = value.parse::<f64>() else {
            continue;
        };
        if !value.is_finite() || value < 0.0 {
            continue;
        }
        // Saturating: a gauge is a count of requests, never near u32::MAX.
        #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
        let value = value.min(f64::from(u32::MAX)) as u32;
        let gauge = if *running {
            &mut busy.running
        } else {
            &mut busy.waiting
        };
        *gauge = gauge.saturating_add(value);
        flavor = Some(*f);
    }
    flavor.map(|f| (busy, f))
}

#[derive(serde::Deserialize)]
struct Slot {
    #[serde(default)]
    is_processing: bool,
}

/// `llama-server`'s `/slots`: its slots, and how many are generating.
pub fn parse_slots(body: &[u8]) -> Option<Busy> {
    if body.len() > MAX_LOAD_BYTES {
        return None;
    }
    let slots: Vec<Slot> = serde_json::from_slice(body).ok()?;
    let running = slots.iter().filter(|s| s.is_processing).count();
    Some(Busy {
        running: u32::try_from(running).unwrap_or(u32::MAX),
        waiting: 0,
        slots: Some(u32::try_from(slots.len()).unwrap_or(u32::MAX)),
    })
}

/// A model a `/v1/models` answer lists.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listed {
    pub id: String,
    /// Its size in bytes, where the server says (`llama-server`'s `meta.size`): how the
    /// devices' `auto` policy compares it with their own model.
    pub bytes: Option<u64>,
}

/// The models of a `/v1/models` answer (at most 64, each id at most 256 bytes).
pub fn parse_models(body: &[u8]) -> Option<Vec<Listed>> {
    #[derive(serde::Deserialize)]
    struct Models {
        data: Vec<Model>,
    }
    #[derive(serde::Deserialize)]
    struct Model {
        id: String,
        #[serde(default)]
        meta: Option<Meta>,
    }
    #[derive(serde::Deserialize)]
    struct Meta {
        #[serde(default)]
        size: Option<u64>,
    }
    if body.len() > MAX_LOAD_BYTES {
        return None;
    }
    let models: Models = serde_json::from_slice(body).ok()?;
    Some(
        models
            .data
            .into_iter()
            .filter(|m| !m.id.is_empty() && m.id.len() <= 256)
            .take(64)
            .map(|m| Listed {
                id: m.id,
                bytes: m.meta.and_then(|meta| meta.size),
            })
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::indexing_slicing)]

    use super::*;
    use crate::protocol::{ChatMessage, Sampling};

    #[test]
    fn a_continued_answer_is_sent_as_an_assistant_prefill() {
        let mut request = Request {
            client: "alice".into(),
            messages: vec![ChatMessage {
                role: "user".into(),
                content: "count to five".into(),
            }],
            sampling: Sampling {
                max_tokens: 32,
                temperature: 0.0,
                top_p: 1.0,
                seed: Some(7),
                stop: vec!["\n\n".into()],
            },
            prefix: String::new(),
            voice: false,
            traceparent: None,
        };
        let fresh = chat_body(&request, "qwen");
        assert_eq!(fresh["model"], "qwen");
        assert_eq!(fresh["stream"], true);
        assert_eq!(fresh["stream_options"]["include_usage"], true);
        assert_eq!(fresh["max_tokens"], 32);
        assert_eq!(fresh["seed"], 7);
        assert_eq!(fresh["stop"][0], "\n\n");
        assert_eq!(fresh["messages"].as_array().unwrap().len(), 1);
        assert!(fresh.get("continue_final_message").is_none());
        request.prefix = "one, two,".into();
        let continued = chat_body(&request, "qwen");
        let messages = continued["messages"].as_array().unwrap();
        assert_eq!(messages.len(), 2);
        assert_eq!(messages[1]["role"], "assistant");
        assert_eq!(messages[1]["content"], "one, two,");
        assert_eq!(continued["continue_final_message"], true);
        assert_eq!(continued["add_generation_prompt"], false);
    }

    #[test]
    fn a_stream_split_anywhere_reads_the_same() {
        let stream = concat!(
            ": keep-alive\n\n",
            "data: {\"choices\":[{\"delta\":{\"role\":\"assistant\"},\"finish_reason\":null}]}\n\n",
            "data: {\"choices\":[{\"delta\":{\"content\":\"Hel\"},\"finish_reason\":null}]}\r\n\r\n",
            "data:{\"choices\":[{\"delta\":{\"content\":\"lo ✓\"},\"finish_reason\":null}]}\n\n",
            "data: {\"choices\":[{\"delta\":{},\"finish_reason\":\"length\"}]}\n\n",
            "data: {\"choices\":[],\"usage\":{\"prompt_tokens\":9,\"completion_tokens\":2}}\n\n",
            "data: [DONE]\n\n",
        )
        .as_bytes();
        let want = vec![
            Event::Text("Hel".into()),
            Event::Text("lo ✓".into()),
            Event::Finished(FinishReason::Length),
            Event::Usage {
                prompt_tokens: 9,
                completion_tokens: 2,
            },
            Event::Done,
        ];
        for split in 0..stream.len() {
            let mut events = Events::default();
            let (a, b) = stream.split_at(split);
            let mut got = events.push(a).unwrap();
            got.extend(events.push(b).unwrap());
            assert_eq!(got, want, "split at {split}");
        }
    }

    #[test]
    fn errors_and_oversized_or_malformed_lines_are_said_not_taken() {
        let mut events = Events::default();
        assert_eq!(
            events
                .push(b"data: {\"error\":{\"message\":\"the model crashed\"}}\n")
                .unwrap(),
            vec![Event::Failed("the model crashed".into())]
        );
        assert!(matches!(
            Events::default().push(b"data: {not json\n"),
            Err(UpstreamError::Malformed(_))
        ));
        let mut long = Events::default();
        let half = vec![b'a'; MAX_EVENT_BYTES / 2 + 1];
        assert!(long.push(&half).is_ok());
        assert_eq!(long.push(&half), Err(UpstreamError::LineTooLong));
    }

    #[test]
    fn the_load_is_read_from_each_engines_own_gauges() {
        let vllm = b"# HELP vllm:num_requests_running Number of requests\n\
            # TYPE vllm:num_requests_running gauge\n\
            vllm:num_requests_running{engine=\"0\",model_name=\"qwen\"} 3.0\n\
            vllm:num_requests_waiting{engine=\"0\",model_name=\"qwen\"} 2.0\n\
            vllm:num_requests_running{engine=\"1\",model_name=\"qwen\"} 1.0\n\
            vllm:gpu_cache_usage_perc 0.5\n";
        let (busy, flavor) = parse_metrics(vllm).unwrap();
        assert_eq!((busy.running, busy.waiting, flavor), (4, 2, Flavor::Vllm));
        assert_eq!(busy.in_flight(), 6);
        let llama = b"llamacpp:requests_processing 1\nllamacpp:requests_deferred 0\n";
        let (busy, flavor) = parse_metrics(llama).unwrap();
        assert_eq!((busy.running, flavor), (1, Flavor::LlamaServer));
        assert_eq!(parse_metrics(b"process_cpu_seconds_total 3\n"), None);
        // Values that are no count are no reading.
        assert_eq!(parse_metrics(b"vllm:num_requests_running NaN\n"), None);
        assert_eq!(parse_metrics(b"vllm:num_requests_running -4\n"), None);
        assert_eq!(
            parse_metrics(b"vllm:num_requests_running 1e30\n")
                .unwrap()
                .0
                .running,
            u32::MAX
        );
        let slots = br#"[{"id":0,"is_processing":true},{"id":1,"is_processing":false}]"#;
        assert_eq!(
            parse_slots(slots),
            Some(Busy {
                running: 1,
                waiting: 0,
                slots: Some(2)
            })
        );
        assert_eq!(parse_slots(b"{\"error\":1}"), None);
        assert_eq!(
            parse_models(br#"{"object":"list","data":[{"id":"qwen"},{"id":""}]}"#),
            Some(vec![Listed {
                id: "qwen".to_owned(),
                bytes: None
            }])
        );
        // llama-server says how large its model is.
        let llama = br#"{"object":"list","data":[{"id":"a","owned_by":"llamacpp","meta":{"n_params":134515008,"size":96576768}}]}"#;
        assert_eq!(parse_models(llama).unwrap()[0].bytes, Some(96_576_768));
    }
}
