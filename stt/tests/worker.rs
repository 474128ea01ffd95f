//! `jarvis-stt-worker` with the real Whisper tiny.en model (converted from the faster-whisper
//! model by `jarvis models pull`, which scripts/test.sh runs) on speech made by espeak-ng.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};

use jarvis_inference::models::{DEFAULT_STT, ModelStore};
use jarvis_inference::stt_protocol::{self, Event};

fn model() -> PathBuf {
    let path = ModelStore::from_env().unwrap().path(DEFAULT_STT).unwrap();
    assert!(
        path.is_file(),
        "{} is missing: run `jarvis models pull` (scripts/test.sh does)",
        path.display()
    );
    path
}

/// `text` spoken by espeak-ng, resampled by sox to 16 kHz mono 16-bit, with `pad` seconds of
/// silence before and after.
fn speak(dir: &Path, text: &str, pad: f32) -> Vec<i16> {
    let wav = dir.join("speech.wav");
    let status = Command::new("espeak-ng")
        .arg("-w")
        .arg(&wav)
        .arg(text)
        .status()
        .expect("espeak-ng is needed (scripts/common.sh installs it)");
    assert!(status.success());
    let raw = dir.join("speech.raw");
    let pad = pad.to_string();
    let status = Command::new("sox")
        .arg(&wav)
        .args([
            "-r",
            "16000",
            "-c",
            "1",
            "-b",
            "16",
            "-e",
            "signed-integer",
            "-t",
            "raw",
        ])
        .arg(&raw)
        .args(["pad", &pad, &pad])
        .status()
        .expect("sox is needed (scripts/common.sh installs it)");
    assert!(status.success());
    std::fs::read(&raw)
        .unwrap()
        .chunks_exact(2)
        .map(|c| i16::from_le_bytes([c[0], c[1]]))
        .collect()
}

struct Worker {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
}

impl Worker {
    fn start(model: &Path) -> (Self, Event) {
        let mut child = Command::new(env!("CARGO_BIN_EXE_jarvis-stt-worker"))
            .arg("--model")
            .arg(model)
            .args(["--threads", "2"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stdin = child.stdin.take().unwrap();
        let stdout = BufReader::new(child.stdout.take().unwrap());
        let mut worker = Self {
            child,
            stdin,
            stdout,
        };
        let first = worker.next();
        (worker, first)
    }

    fn send(&mut self, line: &str) {
        self.stdin.write_all(line.as_bytes()).unwrap();
        self.stdin.flush().unwrap();
    }

    fn next(&mut self) -> Event {
        let mut line = String::new();
        self.stdout.read_line(&mut line).unwrap();
        stt_protocol::decode_event(line.trim_end()).unwrap_or_else(|e| panic!("{e}: {line:?}"))
    }

    fn transcribe(&mut self, id: u64, samples: &[i16]) -> Event {
        let command = stt_protocol::Command::Transcribe {
            id,
            pcm: stt_protocol::pcm_to_base64(samples),
            partial: false,
        };
        self.send(&stt_protocol::encode(&command));
        self.next()
    }
}

#[test]
fn transcribes_speech_and_keeps_serving_after_bad_requests() {
    let dir = tempfile::tempdir().unwrap();
    let (mut worker, ready) = Worker::start(&model());
    assert!(matches!(ready, Event::Ready { .. }), "{ready:?}");

    let speech = speak(dir.path(), "What is the capital of France?", 0.5);
    let Event::Transcript {
        id, text, audio_ms, ..
    } = worker.transcribe(1, &speech)
    else {
        panic!("no transcript");
    };
    assert_eq!(id, 1);
    let words = text.to_lowercase();
    assert!(words.contains("capital of france"), "{text:?}");
    assert!((2500..5000).contains(&audio_ms), "{audio_ms}");

    // A malformed line and bad audio are answered with errors; the worker carries on.
    worker.send("{\"type\":\"transcribe\"}\n");
    assert!(matches!(worker.next(), Event::Error { id: None, .. }));
    worker.send("{\"type\":\"transcribe\",\"id\":2,\"pcm\":\"AA==\"}\n");
    let Event::Error { id, message } = worker.next() else {
        panic!("bad audio was accepted");
    };
    assert_eq!(id, Some(2));
    assert!(message.contains("whole number of samples"), "{message}");

    // Another sentence on the same state: nothing of the first leaks into it.
    let speech = speak(dir.path(), "Turn on the kitchen lights.", 0.3);
    let Event::Transcript { text, .. } = worker.transcribe(3, &speech) else {
        panic!("no transcript");
    };
    let words = text.to_lowercase();
    assert!(
        words.contains("kitchen") && !words.contains("france"),
        "{text:?}"
    );

    // End of input is a clean shutdown.
    drop(worker.stdin);
    assert!(worker.child.wait().unwrap().success());
}

#[test]
fn a_missing_model_is_reported_and_the_worker_exits() {
    let (mut worker, first) = Worker::start(Path::new("/nonexistent/whisper.bin"));
    let Event::Error { message, .. } = first else {
        panic!("{first:?}");
    };
    assert!(message.contains("/nonexistent/whisper.bin"), "{message}");
    assert!(!worker.child.wait().unwrap().success());
}
