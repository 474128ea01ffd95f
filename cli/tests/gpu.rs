//! GPU peers with real processes over real QUIC on loopback and the real SmolLM2 model: an
//! enrolled `jarvis gpu up` answers the org's devices, the user's policy decides local or
//! offloaded, a GPU peer that dies mid-answer hands the answer back (it is finished here, from
//! what was received), and a device of another org gets nothing from it.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use serde_json::{Value, json};

mod common;

use common::wait_for;

const NO_MODELS: &str = "/nonexistent/jarvis-models";

fn jarvis(home: &Path) -> Command {
    let mut cmd = common::jarvis(home);
    cmd.env_remove("JARVIS_MODEL")
        .env("JARVIS_LLM_THREADS", "1");
    cmd
}

fn ok(home: &Path, args: &[&str]) -> Value {
    common::json_ok(jarvis(home), args)
}

/// A process stopped (SIGINT, then reaped) when dropped.
struct Running(Child);

impl Running {
    fn kill_now(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-INT", &self.0.id().to_string()])
            .status();
        let _ = self.0.wait();
    }
}

struct Org {
    admin: PathBuf,
}

impl Org {
    fn new(dir: &Path, name: &str) -> Self {
        let admin = dir.join(format!("{name}-admin"));
        ok(&admin, &["admin", "init", "--org", name]);
        Self { admin }
    }

    fn device(&self, dir: &Path, user: &str, device: &str) -> PathBuf {
        let token = ok(&self.admin, &["admin", "invite", user])["token"]
            .as_str()
            .unwrap()
            .to_owned();
        let home = dir.join(device);
        ok(&home, &["join", &token, "--device-name", device]);
        home
    }

    /// An enrolled GPU peer's home.
    fn gpu(&self, dir: &Path, name: &str) -> PathBuf {
        let home = dir.join(name);
        common::enrol_gpu(&self.admin, &home, name);
        home
    }
}

/// `jarvis gpu up` with the machine's default model; returns it, its peer id and address.
fn gpu_up(home: &Path) -> (Running, String, String) {
    let (child, id, address) = common::gpu_up(jarvis(home).args([
        "gpu",
        "up",
        "--json",
        "--no-mdns",
        "--slots",
        "2",
        "--listen",
        "/ip4/127.0.0.1/udp/0/quic-v1",
    ]));
    (Running(child), id, address)
}

/// `jarvis up` dialling `peer`; `models` is the model cache it sees (none: no local model).
fn device_up(home: &Path, peer: &str, models: Option<&str>) -> Running {
    let mut cmd = jarvis(home);
    if let Some(models) = models {
        cmd.env("JARVIS_MODELS", models);
    }
    cmd.args([
        "up",
        "--json",
        "--no-voice",
        "--no-mdns",
        "--api",
        "127.0.0.1:0",
        "--listen",
        "/ip4/127.0.0.1/udp/0/quic-v1",
        "--peer",
        peer,
    ]);
    let (child, _, _) = common::spawn_up(cmd.stderr(Stdio::null()));
    Running(child)
}

fn gpu_peer(home: &Path, id: &str) -> Option<Value> {
    ok(home, &["status"])["offload"]["gpu_peers"]
        .as_array()?
        .iter()
        .find(|p| p["peer_id"] == id)
        .cloned()
}

/// Waits until the device has the GPU peer's load report (it can then offload to it).
fn wait_ready(home: &Path, id: &str) {
    wait_for("the GPU peer's load report", || {
        gpu_peer(home, id).filter(|p| p["ready"] == true)
    });
}

fn api(home: &Path) -> (String, String) {
    let info: Value =
        serde_json::from_slice(&std::fs::read(home.join("api.json")).unwrap()).unwrap();
    let token = std::fs::read_to_string(home.join("api-token")).unwrap();
    (
        info["addr"].as_str().unwrap().to_owned(),
        token.trim().to_owned(),
    )
}

/// Sends one request to the device's API; returns the stream past the response headers.
fn send(
    home: &Path,
    method: &str,
    path: &str,
    body: &Value,
) -> (u16, BufReader<std::net::TcpStream>) {
    let (addr, token) = api(home);
    let body = body.to_string();
    let mut stream = std::net::TcpStream::connect(&addr).unwrap();
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {token}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut reader = BufReader::new(stream);
    let mut status_line = String::new();
    reader.read_line(&mut status_line).unwrap();
    let status = status_line.split(' ').nth(1).unwrap().parse().unwrap();
    loop {
        let mut line = String::new();
        reader.read_line(&mut line).unwrap();
        if line == "\r\n" || line.is_empty() {
            break;
        }
    }
    (status, reader)
}

fn set_policy(home: &Path, policy: &str) {
    let (status, mut reader) = send(home, "PUT", "/v1/settings", &json!({ "offload": policy }));
    let mut body = String::new();
    reader.read_to_string(&mut body).unwrap();
    assert_eq!(status, 200, "{body}");
    assert!(
        body.contains(&format!("\"offload\":\"{policy}\"")),
        "{body}"
    );
}

#[test]
fn a_device_without_a_model_is_answered_by_its_orgs_gpu_peer_and_a_stranger_is_not() {
    let dir = tempfile::tempdir().unwrap();
    let acme = Org::new(dir.path(), "acme");
    let gpu_home = acme.gpu(dir.path(), "big-gpu");
    let laptop = acme.device(dir.path(), "ann", "laptop");
    let (_gpu, gpu_id, gpu_addr) = gpu_up(&gpu_home);

    // No model on the laptop, and the GPU peer is there: still nothing leaves the laptop until
    // its user chooses (#20, finding 7: the default is `local`; before, it was `auto`).
    let _laptop = device_up(&laptop, &gpu_addr, Some(NO_MODELS));
    wait_ready(&laptop, &gpu_id);
    let out = jarvis(&laptop)
        .env("JARVIS_MODELS", NO_MODELS)
        .args(["ask", "Something private", "--json"])
        .output()
        .unwrap();
    let kept: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(!out.status.success(), "{kept}");
    assert!(
        kept["error"].as_str().unwrap().contains("no answer"),
        "{kept}"
    );
    assert!(
        kept["error"]
            .as_str()
            .unwrap()
            .contains("GPU peer could answer"),
        "the user is told how to let it: {kept}"
    );
    assert_eq!(gpu_peer(&laptop, &gpu_id).unwrap()["answers"], 0);
    // The user lets the org's GPU peers answer (Settings → "Where answers are made").
    set_policy(&laptop, "auto");
    let peer = gpu_peer(&laptop, &gpu_id).unwrap();
    assert_eq!(peer["name"], "big-gpu", "{peer}");
    assert_eq!(peer["model"], "smollm2-135m-instruct", "{peer}");
    // What its engine runs on, as its worker found it: this machine has no GPU, and the
    // default build has the CPU backend only (a `cuda` build on a GPU machine says CUDA0 first).
    assert!(
        peer["accelerator"]
            .as_str()
            .is_some_and(|a| a.starts_with("CPU")),
        "{peer}"
    );
    let asked = ok(&laptop, &["ask", "What is the capital of France?"]);
    assert_eq!(asked["where"], gpu_id.as_str(), "{asked}");
    assert_eq!(asked["offload"]["name"], "big-gpu", "{asked}");
    assert_eq!(asked["model"], "smollm2-135m-instruct", "{asked}");
    assert!(
        asked["answer"].as_str().unwrap().contains("Paris"),
        "{asked}"
    );
    assert!(
        asked["timings_ms"]["completion_tokens"].as_u64().unwrap() > 0,
        "{asked}"
    );
    // The exchange is in the conversation, with the model that answered.
    let shown = ok(
        &laptop,
        &["show", asked["conversation_id"].as_str().unwrap()],
    );
    assert_eq!(shown["messages"][1]["text"], asked["answer"], "{shown}");
    assert_eq!(shown["messages"][1]["served_by"], "big-gpu", "{shown}");
    assert_eq!(shown["messages"][0]["served_by"], Value::Null, "{shown}");
    let peer = gpu_peer(&laptop, &gpu_id).unwrap();
    assert_eq!(peer["answers"], 1, "{peer}");
    assert_eq!(peer["in_flight"], 0, "{peer}");

    // A device of another org reaches the GPU peer's address but is refused: no answer.
    let other = Org::new(dir.path(), "other");
    let stranger = other.device(dir.path(), "eve", "stranger");
    let _stranger = device_up(&stranger, &gpu_addr, Some(NO_MODELS));
    std::thread::sleep(std::time::Duration::from_secs(2));
    assert!(gpu_peer(&stranger, &gpu_id).is_none());
    let out = jarvis(&stranger)
        .env("JARVIS_MODELS", NO_MODELS)
        .args(["ask", "What is the capital of France?", "--json"])
        .output()
        .unwrap();
    let reply: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(!out.status.success(), "{reply}");
    assert!(
        reply["error"].as_str().unwrap().contains("no answer"),
        "{reply}"
    );
}

/// Reads SSE `data:` lines of a streamed ask (skipping chunk sizes): tokens until `stop` says
/// so, then the rest.
fn sse_events(
    reader: &mut BufReader<std::net::TcpStream>,
) -> impl Iterator<Item = (String, Value)> + '_ {
    let mut event = String::new();
    std::iter::from_fn(move || {
        loop {
            let mut line = String::new();
            if reader.read_line(&mut line).ok()? == 0 {
                return None;
            }
            let line = line.trim_end();
            if let Some(name) = line.strip_prefix("event: ") {
                event = name.to_owned();
            } else if let Some(data) = line.strip_prefix("data: ") {
                return Some((event.clone(), serde_json::from_str(data).unwrap()));
            }
        }
    })
}

/// Asks `home`'s node for a long story, streamed, and calls `kill` once a few characters have
/// arrived; returns what the client received in all, what it had when `kill` was called, and
/// the `done` event.
fn interrupted_answer(home: &Path, kill: impl FnOnce()) -> (String, String, Value) {
    let question = json!({ "text": "Write a very long story about a dragon who learns to fly.", "stream": true });
    let (status, mut reader) = send(home, "POST", "/v1/ask", &question);
    assert_eq!(status, 200);
    let mut received = String::new();
    let mut kill = Some(kill);
    let mut at_kill = None;
    for (event, data) in sse_events(&mut reader) {
        match event.as_str() {
            "token" => {
                received.push_str(data["text"].as_str().unwrap());
                if received.len() > 10
                    && let Some(kill) = kill.take()
                {
                    kill();
                    at_kill = Some(received.clone());
                }
            }
            "done" => {
                let at_kill = at_kill.expect("the answer was long enough to interrupt");
                return (received, at_kill, data);
            }
            _ => {}
        }
    }
    panic!("the answer did not end: {received:?}");
}

/// The `done` event of an answer `peer` failed mid-way and this device finished.
fn assert_finished_here(done: &Value, peer: &str) {
    assert_eq!(done["status"], "done", "{done}");
    assert_eq!(done["where"], "local", "finished here: {done}");
    assert_eq!(done["offload"]["peer_id"], peer, "{done}");
    assert!(done["offload"]["failed"].is_string(), "{done}");
}

#[test]
fn the_policy_decides_where_and_a_gpu_peer_that_dies_mid_answer_hands_it_back() {
    let dir = tempfile::tempdir().unwrap();
    let acme = Org::new(dir.path(), "acme");
    let gpu_home = acme.gpu(dir.path(), "gpu-1");
    let laptop = acme.device(dir.path(), "ann", "laptop");
    let (mut gpu, gpu_id, gpu_addr) = gpu_up(&gpu_home);
    // The laptop has the same model: auto keeps answers here, gpu sends them out.
    let _laptop = device_up(&laptop, &gpu_addr, None);
    wait_ready(&laptop, &gpu_id);
    let asked = ok(&laptop, &["ask", "What is the capital of France?"]);
    assert_eq!(asked["where"], "local", "auto, same model: {asked}");
    set_policy(&laptop, "gpu");
    let asked = ok(&laptop, &["ask", "What is the capital of France?"]);
    assert_eq!(asked["where"], gpu_id.as_str(), "{asked}");
    set_policy(&laptop, "local");
    let asked = ok(&laptop, &["ask", "What is the capital of France?"]);
    assert_eq!(asked["where"], "local", "{asked}");
    // The setting is kept in the home.
    let saved = std::fs::read_to_string(laptop.join("settings.json")).unwrap();
    assert!(saved.contains("\"local\""), "{saved}");

    // Offloaded, streamed: the GPU peer is killed after the first pieces arrive.
    set_policy(&laptop, "gpu");
    let (received, at_kill, done) = interrupted_answer(&laptop, || gpu.kill_now());
    assert_finished_here(&done, &gpu_id);
    let answer = done["answer"].as_str().unwrap();
    eprintln!("received before the kill: {at_kill:?}\nthe whole answer: {answer:?}");
    assert_eq!(answer, received, "the client saw the whole answer");
    // It went on from where the GPU peer stopped (a peer's last pieces can still arrive after
    // the kill: they are part of the answer too).
    assert!(answer.starts_with(&at_kill), "{answer}");
    assert!(answer.len() > at_kill.len() + 20, "finished here: {answer}");
    // The conversation keeps the whole answer, and that the GPU peer failed it.
    let shown = ok(
        &laptop,
        &["show", done["conversation_id"].as_str().unwrap()],
    );
    let kept = &shown["messages"][1];
    assert_eq!(kept["text"], answer, "{shown}");
    assert!(
        kept["served_by"]
            .as_str()
            .unwrap()
            .starts_with("gpu-1 (failed"),
        "{shown}"
    );
}

/// llama.cpp's own `llama-server` (a third-party OpenAI-compatible server, built once into the
/// cache by `ensure_llama_server` in scripts/common.sh) serving the machine's SmolLM2 with two
/// slots and its metrics, on a free loopback port. Stopped when dropped.
struct LlamaServer {
    process: Running,
    /// `http://127.0.0.1:PORT`.
    url: String,
}

fn llama_server() -> LlamaServer {
    llama_server_as("smollm2-135m-instruct")
}

/// [`llama_server`], its model served under the name `alias`.
fn llama_server_as(alias: &str) -> LlamaServer {
    let cache = std::env::var_os("JARVIS_CACHE").map_or_else(
        || PathBuf::from(std::env::var_os("HOME").unwrap()).join(".cache/jarvis"),
        PathBuf::from,
    );
    let binary = std::env::var_os("JARVIS_LLAMA_SERVER").map_or_else(
        || cache.join("llama-server/11434.0.0/bin/llama-server"),
        PathBuf::from,
    );
    assert!(
        binary.is_file(),
        "llama.cpp's llama-server is not built at {}: run scripts/test.sh, or `source scripts/common.sh && ensure_llama_server`",
        binary.display()
    );
    let models =
        std::env::var_os("JARVIS_MODELS").map_or_else(|| cache.join("models"), PathBuf::from);
    let model = models.join("SmolLM2-135M-Instruct.Q4_1.gguf");
    assert!(model.is_file(), "run `jarvis models pull` first");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let child = Command::new(&binary)
        .args([
            "-m",
            model.to_str().unwrap(),
            "--host",
            "127.0.0.1",
            "--port",
        ])
        .arg(port.to_string())
        .args([
            "--alias",
            alias,
            "-np",
            "2",
            "-c",
            "4096",
            "-t",
            "1",
            "--metrics",
        ])
        // Weight repacking uses AMX where the CPU reports it; the CI machine's VM reports it
        // without enabling it, and llama-server crashes loading the model (in
        // `ggml_backend_amx_mul_mat`).
        .arg("--no-repack")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let server = LlamaServer {
        process: Running(child),
        url: format!("http://127.0.0.1:{port}"),
    };
    wait_for("llama-server to load its model", || {
        (server.get("/health").map(|r| r.0) == Some(200)).then_some(())
    });
    server
}

impl LlamaServer {
    /// A GET to the server: (status, body).
    fn get(&self, path: &str) -> Option<(u16, String)> {
        let host = self.url.trim_start_matches("http://");
        let mut stream = std::net::TcpStream::connect(host).ok()?;
        write!(
            stream,
            "GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"
        )
        .ok()?;
        let mut response = String::new();
        stream.read_to_string(&mut response).ok()?;
        let status = response.split(' ').nth(1)?.parse().ok()?;
        let body = response.split_once("\r\n\r\n")?.1.to_owned();
        Some((status, body))
    }

    /// Whether any of its slots is generating.
    fn generating(&self) -> bool {
        let (_, body) = self.get("/slots").unwrap_or_default();
        body.contains("\"is_processing\":true")
    }
}

/// `jarvis gpu up --backend openai=URL/v1`: a GPU peer fronting the server at `url`, with
/// `extra` arguments.
fn gpu_up_fronting(home: &Path, url: &str, extra: &[&str]) -> (Running, String, String) {
    let backend = format!("openai={url}/v1");
    let (child, id, address) = common::gpu_up(
        jarvis(home)
            .args([
                "gpu",
                "up",
                "--json",
                "--no-mdns",
                "--backend",
                &backend,
                "--listen",
                "/ip4/127.0.0.1/udp/0/quic-v1",
            ])
            .args(extra),
    );
    (Running(child), id, address)
}

/// A GET on loopback: (status, body).
fn http_get(host: &str, path: &str) -> Option<(u16, String)> {
    let mut stream = std::net::TcpStream::connect(host).ok()?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    let status = response.split(' ').nth(1)?.parse().ok()?;
    let body = response.split_once("\r\n\r\n")?.1.to_owned();
    Some((status, body))
}

/// A GPU peer in front of llama.cpp's own server: the org's device without a model is answered
/// through it, the load the device sees is the server's (its two slots), an answer the device
/// abandons is cancelled on the server at once, and when the server dies mid-answer the device
/// finishes the same answer itself.
#[test]
fn a_gpu_peer_fronting_llama_server_answers_cancels_and_hands_back() {
    let dir = tempfile::tempdir().unwrap();
    let acme = Org::new(dir.path(), "acme");
    let gpu_home = acme.gpu(dir.path(), "vllm-box");
    let laptop = acme.device(dir.path(), "ann", "laptop");
    let mut server = llama_server();
    let metrics_port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let metrics = format!("127.0.0.1:{metrics_port}");
    let (_gpu, gpu_id, gpu_addr) =
        gpu_up_fronting(&gpu_home, &server.url, &["--metrics", &metrics]);
    let (status, health) = http_get(&metrics, "/health").unwrap();
    assert_eq!(status, 200, "{health}");
    assert!(health.contains("\"backend\":\"openai\""), "{health}");

    // A device without a model, policy `gpu`: answered through the third-party server.
    let device = device_up(&laptop, &gpu_addr, Some(NO_MODELS));
    wait_ready(&laptop, &gpu_id);
    let peer = gpu_peer(&laptop, &gpu_id).unwrap();
    assert_eq!(peer["model"], "smollm2-135m-instruct", "{peer}");
    assert_eq!(peer["slots"], 2, "the server's own slots: {peer}");
    // The model's size, as llama-server says it (the `auto` policy compares it with the device's).
    assert!(peer["model_bytes"].as_u64().unwrap() > 50_000_000, "{peer}");
    set_policy(&laptop, "gpu");
    let asked = common::json_ok(
        {
            let mut cmd = jarvis(&laptop);
            cmd.env("JARVIS_MODELS", NO_MODELS);
            cmd
        },
        &["ask", "What is the capital of France?"],
    );
    assert_eq!(asked["where"], gpu_id.as_str(), "{asked}");
    assert_eq!(asked["model"], "smollm2-135m-instruct", "{asked}");
    assert!(
        asked["answer"].as_str().unwrap().contains("Paris"),
        "{asked}"
    );
    assert!(
        asked["timings_ms"]["completion_tokens"].as_u64().unwrap() > 0,
        "{asked}"
    );

    // Abandoned mid-answer: the client goes, and the server stops generating at once.
    let long = json!({ "text": "Write a very long story about a dragon who learns to fly.", "stream": true });
    let (status, mut reader) = send(&laptop, "POST", "/v1/ask", &long);
    assert_eq!(status, 200);
    let mut received = String::new();
    for (event, data) in sse_events(&mut reader) {
        if event == "token" {
            received.push_str(data["text"].as_str().unwrap());
            if received.len() > 10 {
                break;
            }
        }
    }
    assert!(server.generating(), "the answer is being generated");
    drop(reader);
    let gone = std::time::Instant::now();
    wait_for("the server to stop generating the abandoned answer", || {
        (!server.generating()).then_some(())
    });
    eprintln!("client gone → server idle: {:?}", gone.elapsed());
    assert!(gone.elapsed() < std::time::Duration::from_secs(3));
    drop(device);
    // The GPU peer's metrics count both answers, and not by name.
    let (_, page) = http_get(&metrics, "/metrics").unwrap();
    assert!(
        page.contains("jarvis_gpu_answers_total{outcome=\"done\"} 1"),
        "{page}"
    );
    assert!(
        page.contains("jarvis_gpu_answers_total{outcome=\"cancelled\"} 1"),
        "{page}"
    );
    assert!(
        page.contains("jarvis_gpu_user_answers_total{user=\"u-"),
        "{page}"
    );
    assert!(!page.contains("ann"), "{page}");
    assert!(
        page.contains("jarvis_gpu_time_to_first_token_seconds_count 2"),
        "{page}"
    );

    // The server dies mid-answer: the device (with the model, this time) finishes it.
    let _device = device_up(&laptop, &gpu_addr, None);
    wait_ready(&laptop, &gpu_id);
    let (received, at_kill, done) = interrupted_answer(&laptop, || server.process.kill_now());
    assert_finished_here(&done, &gpu_id);
    let answer = done["answer"].as_str().unwrap();
    assert_eq!(answer, received, "the client saw one answer");
    assert!(answer.starts_with(&at_kill), "{answer}");
    // The GPU peer stays up, and says its backend is gone.
    wait_for("the GPU peer to report its backend down", || {
        gpu_peer(&laptop, &gpu_id).filter(|p| p["ready"] == false)
    });
    let (status, health) = http_get(&metrics, "/health").unwrap();
    assert_eq!(status, 503, "{health}");
}

/// An OpenAI client (the official Python package) on a device that has its own model: the
/// device lists its model and the GPU peer's, a request for the GPU peer's model goes there (the
/// user allows GPU peers), and when llama-server dies mid-answer the client still reads one
/// answer to the end, finished on the device. A user who keeps answers local is told why that
/// model is not served.
#[test]
fn an_openai_client_is_answered_by_the_gpu_peers_model_and_sees_one_answer_when_it_dies() {
    let dir = tempfile::tempdir().unwrap();
    let acme = Org::new(dir.path(), "acme");
    let gpu_home = acme.gpu(dir.path(), "gpu-box");
    let laptop = acme.device(dir.path(), "ann", "laptop");
    let server = llama_server_as("smollm2-on-gpu");
    let (_gpu, gpu_id, gpu_addr) = gpu_up_fronting(&gpu_home, &server.url, &[]);
    let _device = device_up(&laptop, &gpu_addr, None);
    wait_ready(&laptop, &gpu_id);
    set_policy(&laptop, "auto");
    // `jarvis ask --model`: the GPU peer's model, though the laptop has its own.
    let asked = ok(
        &laptop,
        &[
            "ask",
            "What is the capital of France?",
            "--model",
            "smollm2-on-gpu",
        ],
    );
    assert_eq!(asked["where"], gpu_id.as_str(), "{asked}");
    assert_eq!(asked["model"], "smollm2-on-gpu", "{asked}");
    let out = jarvis(&laptop)
        .args(["ask", "Hello", "--model", "no-such-model", "--json"])
        .output()
        .unwrap();
    let refused: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(!out.status.success(), "{refused}");
    assert!(
        refused["error"]
            .as_str()
            .unwrap()
            .contains("no GPU peer serves `no-such-model`"),
        "{refused}"
    );
    let (addr, token) = api(&laptop);
    let script = r#"
import json, os, signal, sys
import openai
from openai import OpenAI
base, key, pid = sys.argv[1], sys.argv[2], int(sys.argv[3])
client = OpenAI(base_url=base, api_key=key, max_retries=0)
out = {"models": sorted(m.id for m in client.models.list())}
stream = client.chat.completions.create(model="smollm2-on-gpu", stream=True, temperature=0,
    messages=[{"role": "user", "content": "Write a very long story about a dragon who learns to fly."}])
text, at_kill, finish = "", None, None
for chunk in stream:
    for choice in chunk.choices:
        text += choice.delta.content or ""
        finish = choice.finish_reason or finish
    if at_kill is None and len(text) > 10:
        os.kill(pid, signal.SIGKILL)
        at_kill = text
out.update(text=text, at_kill=at_kill, finish=finish)
print(json.dumps(out))
"#;
    let out = Command::new("python3")
        .args([
            "-c",
            script,
            &format!("http://{addr}/v1"),
            &token,
            &server.process.0.id().to_string(),
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "python: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let got: Value = serde_json::from_slice(&out.stdout).unwrap();
    eprintln!("{got}");
    assert_eq!(
        got["models"],
        json!(["smollm2-135m-instruct", "smollm2-on-gpu"]),
        "{got}"
    );
    let text = got["text"].as_str().unwrap();
    let at_kill = got["at_kill"].as_str().expect("long enough to interrupt");
    assert!(text.starts_with(at_kill), "one answer, continued: {got}");
    assert!(
        text.len() > at_kill.len() + 20,
        "finished after the kill: {got}"
    );
    assert!(got["finish"].is_string(), "{got}");
    // It was the GPU peer's, and it failed there.
    let peer = gpu_peer(&laptop, &gpu_id).unwrap();
    assert_eq!(peer["failures"], 1, "{peer}");
    drop(server);

    // Answers kept on this device: the GPU peer's model is refused, saying why.
    set_policy(&laptop, "local");
    let (status, mut reader) = send(
        &laptop,
        "POST",
        "/v1/chat/completions",
        &json!({ "model": "smollm2-on-gpu", "messages": [{ "role": "user", "content": "hi" }] }),
    );
    let mut body = String::new();
    reader.read_to_string(&mut body).unwrap();
    // The peer still lists its model until its backend is seen gone: either way, not served.
    assert!(status == 503 || status == 404, "{status} {body}");
}

/// A small stand-in for vLLM (its `/v1/models`, its `vllm:` gauges at `/metrics`, no `/slots`,
/// and a streamed chat completion of numbered words, one every 30 ms), recording each chat
/// request's body: for what only vLLM-flavoured servers do (its metric names, continuing a
/// final assistant message), beside the real llama-server above.
struct FakeVllm {
    url: String,
    bodies: std::sync::Arc<std::sync::Mutex<Vec<Value>>>,
    /// Each answer: its question, when it started and when it ended.
    served: std::sync::Arc<std::sync::Mutex<Vec<Served>>>,
}

/// An answer a fake server made.
#[derive(Debug, Clone)]
struct Served {
    question: String,
    start: std::time::Instant,
    end: Option<std::time::Instant>,
    /// Whether it was answered to the end (not cancelled).
    done: bool,
    /// The W3C trace context the request carried.
    traceparent: Option<String>,
}

/// What a fake server's `/metrics` says it runs: always 3 running and 4 waiting, or the
/// answers it is making now (and none waiting).
#[derive(Clone)]
enum Gauges {
    Fixed,
    Live(std::sync::Arc<std::sync::atomic::AtomicU32>),
}

fn fake_vllm(model: &'static str) -> FakeVllm {
    fake_vllm_with(model, Gauges::Fixed)
}

fn fake_vllm_with(model: &'static str, gauges: Gauges) -> FakeVllm {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let bodies = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let served = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let (recorded, log) = (
        std::sync::Arc::clone(&bodies),
        std::sync::Arc::clone(&served),
    );
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(stream) = stream else { continue };
            let (recorded, log, gauges) = (
                std::sync::Arc::clone(&recorded),
                std::sync::Arc::clone(&log),
                gauges.clone(),
            );
            std::thread::spawn(move || fake_vllm_serve(stream, model, &recorded, &log, &gauges));
        }
    });
    FakeVllm {
        url,
        bodies,
        served,
    }
}

fn fake_vllm_serve(
    stream: std::net::TcpStream,
    model: &str,
    recorded: &std::sync::Mutex<Vec<Value>>,
    served: &std::sync::Mutex<Vec<Served>>,
    gauges: &Gauges,
) {
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut request_line = String::new();
    if reader.read_line(&mut request_line).is_err() {
        return;
    }
    let mut length = 0usize;
    let mut traceparent = None;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
            break;
        }
        if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
            length = v.trim().parse().unwrap_or(0);
        }
        if let Some(v) = line.to_ascii_lowercase().strip_prefix("traceparent:") {
            traceparent = Some(v.trim().to_owned());
        }
    }
    let mut body = vec![0u8; length];
    let _ = reader.read_exact(&mut body);
    let mut out = stream;
    let reply = |out: &mut std::net::TcpStream, status: &str, kind: &str, body: &str| {
        let _ = write!(
            out,
            "HTTP/1.1 {status}\r\nContent-Type: {kind}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        );
    };
    let path = request_line.split(' ').nth(1).unwrap_or("");
    match path {
        "/v1/models" => reply(
            &mut out,
            "200 OK",
            "application/json",
            &json!({ "object": "list", "data": [{ "id": model, "object": "model" }] }).to_string(),
        ),
        "/metrics" => {
            let (running, waiting) = match gauges {
                Gauges::Fixed => (3, 4),
                Gauges::Live(running) => (running.load(std::sync::atomic::Ordering::SeqCst), 0),
            };
            reply(
                &mut out,
                "200 OK",
                "text/plain",
                &format!(
                    "# TYPE vllm:num_requests_running gauge\nvllm:num_requests_running{{model_name=\"m\"}} {running}.0\nvllm:num_requests_waiting{{model_name=\"m\"}} {waiting}.0\n"
                ),
            );
        }
        "/v1/chat/completions" => {
            let body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
            let question = body["messages"]
                .as_array()
                .and_then(|m| m.last())
                .and_then(|m| m["content"].as_str())
                .unwrap_or_default()
                .to_owned();
            recorded.lock().unwrap().push(body);
            let at = {
                let mut served = served.lock().unwrap();
                served.push(Served {
                    question,
                    start: std::time::Instant::now(),
                    end: None,
                    done: false,
                    traceparent,
                });
                served.len() - 1
            };
            if let Gauges::Live(running) = gauges {
                running.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            }
            // Counted out, and its end noted, however it ends.
            struct Ended<'a>(&'a std::sync::Mutex<Vec<Served>>, usize, &'a Gauges);
            impl Drop for Ended<'_> {
                fn drop(&mut self) {
                    if let Some(s) = self.0.lock().unwrap().get_mut(self.1) {
                        s.end = Some(std::time::Instant::now());
                    }
                    if let Gauges::Live(running) = self.2 {
                        running.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
                    }
                }
            }
            let _ended = Ended(served, at, gauges);
            let _ = write!(
                out,
                "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nConnection: close\r\n\r\n"
            );
            let chunk = |delta: Value, finish: Value| {
                format!(
                    "data: {}\n\n",
                    json!({ "choices": [{ "index": 0, "delta": delta, "finish_reason": finish }] })
                )
            };
            let _ = out.write_all(chunk(json!({ "role": "assistant" }), Value::Null).as_bytes());
            for i in 0..20 {
                std::thread::sleep(std::time::Duration::from_millis(30));
                let word = chunk(json!({ "content": format!(" w{i}") }), Value::Null);
                if out.write_all(word.as_bytes()).is_err() {
                    return;
                }
            }
            // Every word went out: answered (marked before the end reaches the device).
            if let Some(s) = served.lock().unwrap().get_mut(at) {
                s.done = true;
            }
            let _ = out.write_all(chunk(json!({}), json!("stop")).as_bytes());
            let usage =
                json!({ "choices": [], "usage": { "prompt_tokens": 11, "completion_tokens": 20 } });
            let _ = write!(out, "data: {usage}\n\ndata: [DONE]\n\n");
        }
        _ => reply(&mut out, "404 Not Found", "text/plain", "not found"),
    }
}

/// Asks `home`'s node `text` (a spoken turn if `spoken`: it comes with wake timings) on a
/// thread of its own; the answer's JSON, once it is 200.
fn ask_in_thread(home: &Path, text: String, spoken: bool) -> std::thread::JoinHandle<Value> {
    let home = home.to_owned();
    std::thread::spawn(move || {
        let timings = if spoken {
            json!({ "wake_ms": 3 })
        } else {
            json!({})
        };
        let (status, mut reader) = send(
            &home,
            "POST",
            "/v1/ask",
            &json!({ "text": text, "timings_ms": timings }),
        );
        let mut body = String::new();
        reader.read_to_string(&mut body).unwrap();
        assert_eq!(status, 200, "{body}");
        serde_json::from_str(&body).unwrap()
    })
}

/// Two GPU peers serving one model: one fronts llama-server, the other a vLLM-like server whose
/// metrics say it is busy. The device goes to the idle one; when llama-server dies mid-answer
/// the answer moves to the vLLM-like one, which is asked to continue the final assistant message
/// (vLLM's `continue_final_message`), and the client reads one answer.
#[test]
fn an_answer_moves_to_a_vllm_backed_peer_that_continues_it() {
    let dir = tempfile::tempdir().unwrap();
    let acme = Org::new(dir.path(), "acme");
    let (home_a, home_b) = (acme.gpu(dir.path(), "gpu-a"), acme.gpu(dir.path(), "gpu-b"));
    let laptop = acme.device(dir.path(), "ann", "laptop");
    let mut server = llama_server();
    let vllm = fake_vllm("smollm2-135m-instruct");
    let (_a, id_a, addr_a) = gpu_up_fronting(&home_a, &server.url, &[]);
    // Two at once, so its 7 answers in flight make it the busier peer (llama-server's is 0 of 2).
    let (_b, id_b, addr_b) = gpu_up_fronting(&home_b, &vllm.url, &["--slots", "2"]);
    let mut cmd = jarvis(&laptop);
    cmd.env("JARVIS_MODELS", NO_MODELS).args([
        "up",
        "--json",
        "--no-voice",
        "--no-mdns",
        "--api",
        "127.0.0.1:0",
        "--listen",
        "/ip4/127.0.0.1/udp/0/quic-v1",
        "--peer",
        &addr_a,
        "--peer",
        &addr_b,
    ]);
    let (child, _, _) = common::spawn_up(cmd.stderr(Stdio::null()));
    let _device = Running(child);
    wait_ready(&laptop, &id_a);
    wait_ready(&laptop, &id_b);
    // The vLLM-like peer's load is what its server's gauges say: 3 running and 4 waiting.
    let busy = gpu_peer(&laptop, &id_b).unwrap();
    assert_eq!(busy["busy"], 7, "{busy}");
    assert_eq!(busy["backend"], "openai", "{busy}");
    set_policy(&laptop, "gpu");

    let (received, _, done) = interrupted_answer(&laptop, || server.process.kill_now());
    assert_eq!(done["status"], "done", "{done}");
    assert_eq!(
        done["where"],
        id_b.as_str(),
        "finished on the other peer: {done}"
    );
    let answer = done["answer"].as_str().unwrap();
    assert_eq!(answer, received, "one answer");
    assert!(
        answer.ends_with(" w19"),
        "the vLLM-like server wrote the rest: {answer}"
    );
    // What the vLLM-like server was asked: to continue the answer so far.
    let bodies = vllm.bodies.lock().unwrap().clone();
    assert_eq!(bodies.len(), 1, "{bodies:?}");
    let body = &bodies[0];
    assert_eq!(body["continue_final_message"], true, "{body}");
    assert_eq!(body["add_generation_prompt"], false, "{body}");
    let last = body["messages"].as_array().unwrap().last().unwrap();
    assert_eq!(last["role"], "assistant", "{body}");
    let prefix = last["content"].as_str().unwrap();
    assert!(
        !prefix.is_empty() && answer.starts_with(prefix.trim_end()),
        "{body}"
    );
}

/// Behind a third-party server, answers beyond those sent to it at once (`--slots 1`) wait at
/// the GPU peer, and a spoken turn goes before typed questions that came earlier.
#[test]
fn a_spoken_turn_overtakes_typed_ones_waiting_for_a_busy_backend() {
    let dir = tempfile::tempdir().unwrap();
    let acme = Org::new(dir.path(), "acme");
    let gpu_home = acme.gpu(dir.path(), "gpu-box");
    let laptop = acme.device(dir.path(), "ann", "laptop");
    let vllm = fake_vllm("smollm2-135m-instruct");
    let metrics_port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let metrics = format!("127.0.0.1:{metrics_port}");
    // One typed answer at once, and no place kept for a spoken turn: it must queue too.
    let (_gpu, gpu_id, gpu_addr) = gpu_up_fronting(
        &gpu_home,
        &vllm.url,
        &["--slots", "1", "--voice-slots", "0", "--metrics", &metrics],
    );
    let _device = device_up(&laptop, &gpu_addr, Some(NO_MODELS));
    wait_ready(&laptop, &gpu_id);
    set_policy(&laptop, "gpu");
    let asked = |text: &str, spoken: bool| ask_in_thread(&laptop, text.to_owned(), spoken);
    let asked_of = |i: usize| -> String {
        let bodies = vllm.bodies.lock().unwrap();
        bodies[i]["messages"].as_array().unwrap().last().unwrap()["content"]
            .as_str()
            .unwrap()
            .to_owned()
    };
    let first = asked("The first typed question", false);
    wait_for("the first question at the server", || {
        (vllm.bodies.lock().unwrap().len() == 1).then_some(())
    });
    // While it is answered (about 600 ms), a second typed question, then a spoken one.
    let second = asked("The second typed question", false);
    std::thread::sleep(std::time::Duration::from_millis(150));
    let spoken = asked("The spoken question", true);
    // The peer's metrics say what waits, by priority.
    wait_for("a spoken and a typed answer waiting in the metrics", || {
        let (_, page) = http_get(&metrics, "/metrics")?;
        (page.contains("jarvis_gpu_queue_depth{priority=\"voice\"} 1")
            && page.contains("jarvis_gpu_queue_depth{priority=\"typed\"} 1"))
        .then_some(())
    });
    for question in [first, second, spoken] {
        question.join().unwrap();
    }
    assert_eq!(vllm.bodies.lock().unwrap().len(), 3);
    let order: Vec<String> = (0..3).map(asked_of).collect();
    assert!(order[0].contains("first typed"), "{order:?}");
    assert!(
        order[1].contains("spoken"),
        "the spoken turn went first: {order:?}"
    );
    assert!(order[2].contains("second typed"), "{order:?}");
}

/// How many devices ask at once in [`three_gpu_peers_share_a_burst_and_spoken_turns_go_first`]
/// (the issue's 30; `jarvis-bench gpu-fleet` measures the same set-up's timings).
const FLEET_DEVICES: usize = 30;

/// Three GPU peers (each fronting a vLLM-like server, two typed answers at once and a place
/// for a spoken turn) and 30 devices of 30 users asking at once: every answer completes, the
/// load spreads over the three (a device sent to a full peer tries the others, then waits at
/// the one with the shortest queue), and spoken questions asked while typed ones queue start
/// before those typed ones.
#[test]
fn three_gpu_peers_share_a_burst_and_spoken_turns_go_first() {
    use std::sync::Arc;
    use std::sync::atomic::AtomicU32;
    let dir = tempfile::tempdir().unwrap();
    let acme = Org::new(dir.path(), "acme");
    let mut peers = Vec::new();
    let mut fakes = Vec::new();
    for i in 0..3 {
        let home = acme.gpu(dir.path(), &format!("gpu-{i}"));
        let fake = fake_vllm_with(
            "smollm2-135m-instruct",
            Gauges::Live(Arc::new(AtomicU32::new(0))),
        );
        peers.push(gpu_up_fronting(&home, &fake.url, &["--slots", "2"]));
        fakes.push(fake);
    }
    let addresses: Vec<String> = peers.iter().map(|p| p.2.clone()).collect();
    let homes: Vec<PathBuf> = (0..FLEET_DEVICES)
        .map(|i| acme.device(dir.path(), &format!("user{i}"), &format!("device{i}")))
        .collect();
    let mut devices = Vec::new();
    for home in &homes {
        let mut cmd = jarvis(home);
        cmd.env("JARVIS_MODELS", NO_MODELS).args([
            "up",
            "--json",
            "--no-voice",
            "--no-mdns",
            "--api",
            "127.0.0.1:0",
            "--listen",
            "/ip4/127.0.0.1/udp/0/quic-v1",
        ]);
        for address in &addresses {
            cmd.args(["--peer", address]);
        }
        let (child, _, _) = common::spawn_up(cmd.stderr(Stdio::null()));
        devices.push(Running(child));
    }
    for home in &homes {
        for (_, id, _) in &peers {
            wait_ready(home, id);
        }
        set_policy(home, "gpu");
    }
    let ask = ask_in_thread;
    let typed: Vec<_> = homes
        .iter()
        .enumerate()
        .map(|(i, home)| ask(home, format!("Typed question {i}"), false))
        .collect();
    // Once every peer's typed slots are taken (and the rest wait), three spoken questions.
    wait_for("the typed questions to fill every peer", || {
        fakes
            .iter()
            .all(|f| f.served.lock().unwrap().len() >= 2)
            .then_some(())
    });
    let spoken: Vec<_> = homes
        .iter()
        .take(3)
        .enumerate()
        .map(|(i, home)| ask(home, format!("Spoken question {i}"), true))
        .collect();
    let answered_by: Vec<String> = typed
        .into_iter()
        .chain(spoken)
        .map(|t| {
            let done = t.join().unwrap();
            assert_eq!(done["status"], "done", "{done}");
            done["where"].as_str().unwrap().to_owned()
        })
        .collect();
    assert_eq!(answered_by.len(), FLEET_DEVICES + 3);
    let timelines: Vec<Vec<Served>> = fakes
        .iter()
        .map(|f| f.served.lock().unwrap().clone())
        .collect();
    // Answers a server made to the end (one that started in two queues at once is cancelled
    // in the slower).
    let answered = |served: &[Served]| served.iter().filter(|s| s.done).count();
    let shares: Vec<usize> = timelines.iter().map(|t| answered(t)).collect();
    for (i, ((_, id, _), served)) in peers.iter().zip(&timelines).enumerate() {
        let by_id = answered_by.iter().filter(|w| *w == id).count();
        assert_eq!(
            by_id,
            answered(served),
            "peer {i}'s answers are its server's"
        );
        // An even share is 11 of 33: each peer gets a fair part of the burst.
        assert!(answered(served) >= 8, "the load spreads: {shares:?}");
    }
    for served in &timelines {
        for voice in served.iter().filter(|s| s.question.starts_with("Spoken")) {
            let overtaken = served
                .iter()
                .filter(|s| s.done && s.question.starts_with("Typed") && s.start > voice.start)
                .count();
            assert!(
                overtaken > 0,
                "a spoken question went ahead of typed ones waiting at its peer: {served:?}"
            );
        }
    }
    // No peer sat with a free typed slot while another still had typed questions waiting:
    // until the last typed question started anywhere, the share of slot time left idle. A
    // loose bound here (all at one peer would leave two thirds idle; this machine shared with
    // other tests measures a few percent): `jarvis-bench gpu-fleet` measures it.
    let first = timelines.iter().flatten().map(|s| s.start).min().unwrap();
    let last_start = timelines
        .iter()
        .flatten()
        .filter(|s| s.question.starts_with("Typed"))
        .map(|s| s.start)
        .max()
        .unwrap();
    let window = last_start.duration_since(first).as_secs_f64();
    let mut idle = 0.0;
    for served in &timelines {
        // 2 typed slots; busy slot time of typed answers within the window.
        let busy: f64 = served
            .iter()
            .filter(|s| s.question.starts_with("Typed"))
            .map(|s| {
                let end = s.end.unwrap().min(last_start);
                end.saturating_duration_since(s.start).as_secs_f64()
            })
            .sum();
        idle += (2.0 * window - busy).max(0.0);
    }
    let share = idle / (6.0 * window);
    eprintln!(
        "answers per peer {shares:?} (started and cancelled: {}); typed slot time idle while others waited: {:.1} %",
        timelines.iter().flatten().filter(|s| !s.done).count(),
        share * 100.0
    );
    assert!(
        share < 0.3,
        "peers sat idle while others had a queue ({:.0} % of slot time)",
        share * 100.0
    );
}

/// One trace per request across processes: a device (policy `gpu`) asks, a GPU peer fronting a
/// vLLM-like server answers, and both export their spans over OTLP/HTTP to a receiver built on
/// OpenTelemetry's own protobuf definitions. The device's `offload` and `gpu_peer` spans, the
/// peer's `serve` and `backend` spans are one trace, each the child of the one before, and the
/// server's request carries that trace's context (W3C `traceparent`, parent: `backend`).
#[test]
fn an_offloaded_answer_is_one_trace_over_the_device_the_gpu_peer_and_its_backend() {
    let receiver_script =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/support/otlp_receiver.py");
    let mut receiver = Command::new("python3")
        .arg(&receiver_script)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut spans_out = BufReader::new(receiver.stdout.take().unwrap());
    let mut port = String::new();
    spans_out.read_line(&mut port).unwrap();
    assert!(
        port.trim().parse::<u16>().is_ok(),
        "the OTLP receiver did not start (scripts/test.sh installs opentelemetry-proto): {port:?}"
    );
    let receiver = Running(receiver);
    let endpoint = format!("http://127.0.0.1:{}", port.trim());
    let traced = |mut cmd: Command| {
        cmd.env("OTEL_EXPORTER_OTLP_ENDPOINT", &endpoint)
            .env("OTEL_BSP_SCHEDULE_DELAY", "200");
        cmd
    };

    let dir = tempfile::tempdir().unwrap();
    let acme = Org::new(dir.path(), "acme");
    let gpu_home = acme.gpu(dir.path(), "gpu-box");
    let laptop = acme.device(dir.path(), "ann", "laptop");
    let vllm = fake_vllm("smollm2-135m-instruct");
    let backend = format!("openai={}/v1", vllm.url);
    let mut gpu_cmd = traced(jarvis(&gpu_home));
    gpu_cmd.args([
        "gpu",
        "up",
        "--json",
        "--no-mdns",
        "--backend",
        &backend,
        "--listen",
        "/ip4/127.0.0.1/udp/0/quic-v1",
    ]);
    let (gpu_child, gpu_id, gpu_addr) = common::gpu_up(&mut gpu_cmd);
    let gpu = Running(gpu_child);
    let mut device_cmd = traced(jarvis(&laptop));
    device_cmd.env("JARVIS_MODELS", NO_MODELS).args([
        "up",
        "--json",
        "--no-voice",
        "--no-mdns",
        "--api",
        "127.0.0.1:0",
        "--listen",
        "/ip4/127.0.0.1/udp/0/quic-v1",
        "--peer",
        &gpu_addr,
    ]);
    let (device_child, _, _) = common::spawn_up(device_cmd.stderr(Stdio::null()));
    let device = Running(device_child);
    wait_ready(&laptop, &gpu_id);
    set_policy(&laptop, "gpu");
    let (status, mut reader) = send(
        &laptop,
        "POST",
        "/v1/ask",
        &json!({ "text": "What is the capital of France?" }),
    );
    let mut body = String::new();
    reader.read_to_string(&mut body).unwrap();
    assert_eq!(status, 200, "{body}");
    assert!(body.contains(&gpu_id), "answered by the GPU peer: {body}");
    // Stopping them flushes what they have not exported yet.
    drop(device);
    drop(gpu);
    let wanted = ["offload", "gpu_peer", "serve", "backend"];
    let mut spans: Vec<Value> = Vec::new();
    let (lines_tx, lines) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in spans_out.lines() {
            let Ok(line) = line else { return };
            if lines_tx.send(line).is_err() {
                return;
            }
        }
    });
    while !wanted.iter().all(|w| spans.iter().any(|s| s["name"] == *w)) {
        let line = lines
            .recv_timeout(std::time::Duration::from_secs(30))
            .unwrap_or_else(|_| panic!("spans missing; received: {spans:#?}"));
        spans.push(serde_json::from_str(&line).unwrap());
    }
    drop(receiver);
    let span = |name: &str| spans.iter().find(|s| s["name"] == name).unwrap().clone();
    let (offload, attempt, serve, backend_span) = (
        span("offload"),
        span("gpu_peer"),
        span("serve"),
        span("backend"),
    );
    assert_eq!(offload["service"], "jarvis-node", "{offload}");
    assert_eq!(attempt["service"], "jarvis-node", "{attempt}");
    assert_eq!(serve["service"], "jarvis-gpu", "{serve}");
    assert_eq!(backend_span["service"], "jarvis-gpu", "{backend_span}");
    let trace = offload["trace_id"].as_str().unwrap();
    for s in [&attempt, &serve, &backend_span] {
        assert_eq!(s["trace_id"], trace, "one trace: {spans:#?}");
    }
    assert_eq!(attempt["parent_span_id"], offload["span_id"], "{spans:#?}");
    assert_eq!(
        serve["parent_span_id"], attempt["span_id"],
        "across the mesh: {spans:#?}"
    );
    assert_eq!(
        backend_span["parent_span_id"], serve["span_id"],
        "{spans:#?}"
    );
    // And on to the backend's HTTP request.
    let served = vllm.served.lock().unwrap().clone();
    let traceparent = served[0].traceparent.clone().expect("a traceparent header");
    assert_eq!(
        traceparent,
        format!(
            "00-{trace}-{}-01",
            backend_span["span_id"].as_str().unwrap()
        )
    );
}
