//! `jarvis-stt-worker`: runs whisper.cpp in a process of its own (its ggml cannot share a binary
//! with llama.cpp's, and a crash in C++ then costs one transcript, not the node).
//!
//! The node starts it as `jarvis-stt-worker --model FILE [--threads N]` and speaks
//! `jarvis_inference_protocol::stt_protocol` over stdin and stdout: one request at a time, in order.
//! End of stdin is a shutdown.

use std::io::{BufRead, BufReader, Read, Write};
use std::path::PathBuf;
use std::time::Instant;

use anyhow::Context as _;
use jarvis_inference_protocol::stt_protocol::{self, Command, Event};
use jarvis_stt::Transcriber;

const USAGE: &str = "usage: jarvis-stt-worker --model FILE [--threads N]\n\
       jarvis-stt-worker direct --model FILE --raw PCM [--threads N] [--runs N]\n\
This program is started by the Jarvis node; it speaks JSON lines on stdin and stdout.\n\
`direct` is the benchmark's reference: whisper-rs called directly on raw 16 kHz mono 16-bit\n\
little-endian PCM, timed inside this process, one JSON line per run.";

/// whisper's threads meet at a barrier after every operation, so one that is preempted stalls the
/// rest. With as many threads as cores, anything else running (the listener's voice detector
/// every 32 ms, Piper, the model) preempts one: in `jarvis-bench stt` on 2 cores the worker took
/// 110–249 ms with 2 threads and 96–102 ms with 1 on the same clips, and `voice-turn`'s p50 went
/// from 484–488 ms to 440–455 ms. So one core is left free, and at most 4 are used.
fn default_threads() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get().saturating_sub(1).clamp(1, 4))
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = if args.first().map(String::as_str) == Some("direct") {
        direct(args.get(1..).unwrap_or_default())
    } else {
        serve(args)
    };
    if let Err(error) = result {
        eprintln!("jarvis-stt-worker: {error:#}");
        std::process::exit(1);
    }
}

/// whisper-rs on a whole recording, with the parameters the worker uses, timed around the call.
fn direct(args: &[String]) -> anyhow::Result<()> {
    let mut model: Option<PathBuf> = None;
    let mut raw: Option<PathBuf> = None;
    let mut threads = default_threads();
    let mut runs = 1_usize;
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        let mut value = || {
            it.next()
                .with_context(|| format!("{arg} needs a value\n{USAGE}"))
        };
        match arg.as_str() {
            "--model" => model = Some(PathBuf::from(value()?)),
            "--raw" => raw = Some(PathBuf::from(value()?)),
            "--threads" => threads = value()?.parse().context("--threads")?,
            "--runs" => runs = value()?.parse().context("--runs")?,
            other => anyhow::bail!("unknown argument {other}\n{USAGE}"),
        }
    }
    let model = model.with_context(|| format!("--model is required\n{USAGE}"))?;
    let raw = raw.with_context(|| format!("--raw is required\n{USAGE}"))?;
    let bytes = std::fs::read(&raw).with_context(|| format!("reading {}", raw.display()))?;
    let samples = stt_protocol::pcm_from_bytes(&bytes);
    let mut transcriber = Transcriber::load(&model, threads)?;
    let mut out = std::io::stdout().lock();
    for _ in 0..runs.max(1) {
        let start = Instant::now();
        let t = transcriber.transcribe(&samples)?;
        let ms = start.elapsed().as_secs_f64() * 1000.0;
        writeln!(
            out,
            "{}",
            serde_json::json!({ "decode_ms": ms, "text": t.text, "audio_ms": t.audio_ms })
        )?;
    }
    Ok(())
}

fn serve(args: Vec<String>) -> anyhow::Result<()> {
    let mut model: Option<PathBuf> = None;
    let mut threads = default_threads();
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        let mut value = || {
            it.next()
                .with_context(|| format!("{arg} needs a value\n{USAGE}"))
        };
        match arg.as_str() {
            "--model" => model = Some(PathBuf::from(value()?)),
            "--threads" => threads = value()?.parse().context("--threads")?,
            "--help" | "-h" => {
                println!("{USAGE}");
                return Ok(());
            }
            other => anyhow::bail!("unknown argument {other}\n{USAGE}"),
        }
    }
    let model = model.with_context(|| format!("--model is required\n{USAGE}"))?;
    let mut out = std::io::stdout().lock();
    let mut send = |event: &Event| -> anyhow::Result<()> {
        out.write_all(stt_protocol::encode(event).as_bytes())?;
        out.flush()?;
        Ok(())
    };
    let start = Instant::now();
    let mut transcriber = match Transcriber::load(&model, threads) {
        Ok(t) => t,
        Err(e) => {
            send(&Event::Error {
                id: None,
                message: format!("{e:#}"),
            })?;
            return Err(e);
        }
    };
    send(&Event::Ready {
        model: model.display().to_string(),
        load_ms: u64::try_from(start.elapsed().as_millis()).unwrap_or(u64::MAX),
    })?;
    // Lines are bounded: a longer one is refused without reading it all into memory.
    let mut input = BufReader::new(std::io::stdin().lock());
    let mut line = String::new();
    loop {
        line.clear();
        let read = (&mut input)
            .take(stt_protocol::MAX_LINE as u64 + 1)
            .read_line(&mut line)
            .context("reading stdin")?;
        if read == 0 {
            return Ok(());
        }
        if read > stt_protocol::MAX_LINE {
            send(&Event::Error {
                id: None,
                message: format!("a line longer than {} bytes", stt_protocol::MAX_LINE),
            })?;
            // Skip the rest of the oversized line.
            input.skip_until(b'\n')?;
            continue;
        }
        let command = match stt_protocol::decode_command(line.trim_end()) {
            Ok(command) => command,
            Err(e) => {
                send(&Event::Error {
                    id: None,
                    message: e.to_string(),
                })?;
                continue;
            }
        };
        match command {
            Command::Shutdown => return Ok(()),
            Command::Transcribe { id, pcm, partial } => {
                let event = match stt_protocol::pcm_from_base64(&pcm)
                    .map_err(anyhow::Error::from)
                    .and_then(|samples| transcriber.transcribe(&samples))
                {
                    Ok(t) => Event::Transcript {
                        id,
                        text: t.text,
                        audio_ms: t.audio_ms,
                        decode_ms: t.decode_ms,
                        partial,
                    },
                    Err(e) => Event::Error {
                        id: Some(id),
                        message: format!("{e:#}"),
                    },
                };
                send(&event)?;
            }
        }
    }
}
