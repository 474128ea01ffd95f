//! `jarvis-llm-worker`: runs the llama.cpp engine in a process of its own, so that a crash in C++
//! costs one request rather than the node, and so that llama.cpp's ggml never meets whisper.cpp's
//! in one binary (testing.md).
//!
//! The node starts it as `jarvis-llm-worker --model FILE [--slots N] [--ctx N] [--threads N]` and
//! speaks the worker protocol of `jarvis_inference_protocol::protocol` over stdin and stdout. A thread reads
//! stdin into a bounded queue; the main thread loads the model, then alternates between taking
//! commands and running one engine step. End of stdin is a shutdown.
//!
//! `jarvis-llm-worker direct --model FILE --prompt TEXT` is the benchmark's reference: llama-cpp-2
//! called directly, the textbook loop, with no engine, protocol or process in between.

use std::io::{BufRead, BufReader, Read, Write};
use std::path::PathBuf;
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender, TryRecvError, sync_channel};
use std::time::Duration;

use anyhow::Context as _;
use jarvis_inference_protocol::protocol::{self, Command, ErrorKind, Event};
use jarvis_llm::engine::{Engine, EngineConfig, Loaded};

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = if args.first().map(String::as_str) == Some("direct") {
        jarvis_llm::direct::main(args.get(1..).unwrap_or_default())
    } else {
        serve(&args)
    };
    if let Err(error) = result {
        eprintln!("jarvis-llm-worker: {error:#}");
        std::process::exit(1);
    }
}

const USAGE: &str = "usage: jarvis-llm-worker --model FILE [--slots N] [--ctx N] [--threads N] [--nice N] [--gpu-layers N] [--verbose]\n\
       jarvis-llm-worker direct --model FILE --prompt TEXT [--max-tokens N] [--threads N]\n\
This program is started by the Jarvis node; it speaks JSON lines on stdin and stdout.";

fn serve(args: &[String]) -> anyhow::Result<()> {
    let mut model: Option<PathBuf> = None;
    let mut config = EngineConfig::default();
    let mut verbose = false;
    let mut nice = 0;
    let mut gpu_layers = None;
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        let mut value = || {
            it.next()
                .with_context(|| format!("{arg} needs a value\n{USAGE}"))
        };
        match arg.as_str() {
            "--model" => model = Some(PathBuf::from(value()?)),
            "--slots" => config.slots = value()?.parse().context("--slots")?,
            "--ctx" => config.ctx_per_slot = value()?.parse().context("--ctx")?,
            "--threads" => config.threads = value()?.parse().context("--threads")?,
            "--nice" => nice = value()?.parse().context("--nice")?,
            "--gpu-layers" => gpu_layers = Some(value()?.parse().context("--gpu-layers")?),
            "--verbose" => verbose = true,
            "--help" | "-h" => {
                println!("{USAGE}");
                return Ok(());
            }
            other => anyhow::bail!("unknown argument {other}\n{USAGE}"),
        }
    }
    let model = model.with_context(|| format!("--model is required\n{USAGE}"))?;
    config.slots = config.slots.clamp(1, 64);
    // Before any thread starts, so that llama.cpp's threads inherit it (Linux sets the nice value
    // per thread).
    lower_priority(nice);

    // Commands arrive on a bounded queue so a flood from the node waits in the pipe, not here.
    let (commands, inbox) = sync_channel::<Command>(64);
    std::thread::Builder::new()
        .name("stdin".into())
        .spawn(move || read_commands(&commands))
        .context("starting the stdin reader")?;

    let mut out = Out(std::io::stdout().lock());
    let loaded = match Loaded::load_with(&model, verbose, gpu_layers) {
        Ok(loaded) => loaded,
        Err(error) => {
            out.send(Event::Error {
                id: None,
                kind: ErrorKind::Engine,
                message: format!("{error:#}"),
            });
            return Err(error);
        }
    };
    let mut engine = Engine::new(&loaded, config)?;
    out.send(engine.ready());
    run(&mut engine, &inbox, &mut out)
}

/// Lowers this process's CPU priority by `nice` (0: unchanged): generation then yields to the
/// real-time work of a voice turn (speech recognition, synthesis, playback) and to the user's
/// own programs on a busy machine, and runs at full speed on an idle one. Failing to is not
/// fatal.
fn lower_priority(nice: i32) {
    if nice == 0 {
        return;
    }
    #[cfg(unix)]
    if let Err(error) = rustix::process::nice(nice) {
        eprintln!("jarvis-llm-worker: could not lower the priority by {nice}: {error}");
    }
    #[cfg(not(unix))]
    eprintln!("jarvis-llm-worker: --nice is not supported here");
}

/// Reads command lines until stdin ends; a bad line is answered, not fatal.
fn read_commands(commands: &SyncSender<Command>) {
    let stdin = std::io::stdin();
    let mut reader = BufReader::new(stdin.lock());
    let mut line = Vec::new();
    loop {
        line.clear();
        match reader
            .by_ref()
            .take(protocol::MAX_LINE as u64 + 1)
            .read_until(b'\n', &mut line)
        {
            Ok(0) | Err(_) => break,
            Ok(_) => {}
        }
        let trimmed = line.strip_suffix(b"\n").unwrap_or(&line);
        if trimmed.is_empty() {
            continue;
        }
        match protocol::decode::<Command>(trimmed) {
            Ok(command) => {
                if commands.send(command).is_err() {
                    return;
                }
            }
            Err(error) => {
                // Answered on stderr: stdout belongs to the main thread, and the node logs stderr.
                eprintln!("jarvis-llm-worker: ignoring a line: {error}");
                if line.len() > protocol::MAX_LINE {
                    // The rest of an over-long line would be read as lines of its own: stop.
                    break;
                }
            }
        }
    }
    let _ = commands.send(Command::Shutdown);
}

fn run(
    engine: &mut Engine<'_>,
    inbox: &Receiver<Command>,
    out: &mut Out<'_>,
) -> anyhow::Result<()> {
    let mut emit = |event: Event| out.send(event);
    loop {
        // Idle: wait for work. Busy: take whatever has come, then step.
        let mut next = if engine.idle() {
            match inbox.recv_timeout(Duration::from_secs(3600)) {
                Ok(command) => Some(command),
                Err(RecvTimeoutError::Timeout) => continue,
                Err(RecvTimeoutError::Disconnected) => return Ok(()),
            }
        } else {
            None
        };
        loop {
            let command = match next.take() {
                Some(command) => command,
                None => match inbox.try_recv() {
                    Ok(command) => command,
                    Err(TryRecvError::Empty) => break,
                    Err(TryRecvError::Disconnected) => return Ok(()),
                },
            };
            match command {
                Command::Generate {
                    id,
                    messages,
                    sampling,
                    prefix,
                } => engine.submit(id, messages, sampling, prefix),
                Command::Cancel { id } => engine.cancel(id, &mut emit),
                Command::Shutdown => {
                    engine.cancel_all(&mut emit);
                    return Ok(());
                }
            }
        }
        // A decode failure has failed its requests already; the engine goes on with new ones.
        if let Err(error) = engine.step(&mut emit) {
            eprintln!("jarvis-llm-worker: {error:#}");
        }
    }
}

/// Stdout, one event per line; if the node has gone, the worker exits.
struct Out<'a>(std::io::StdoutLock<'a>);

impl Out<'_> {
    fn send(&mut self, event: Event) {
        let written = protocol::encode(&event)
            .map_err(std::io::Error::other)
            .and_then(|line| self.0.write_all(&line))
            .and_then(|()| self.0.flush());
        if written.is_err() {
            std::process::exit(0);
        }
    }
}
