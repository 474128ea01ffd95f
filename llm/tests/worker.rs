//! The worker process with the real SmolLM2 model (testing.md): answers, batching that lets a short
//! request finish while a long one runs, cancellation, stop strings, max tokens, a prompt too long
//! for the context, and bad input that does not stop it.
//!
//! The model comes from the machine's model cache (`scripts/test.sh` runs `jarvis models pull`).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

use std::io::{BufRead, BufReader, Write};
use std::path::PathBuf;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc::{Receiver, channel};
use std::time::Duration;

use jarvis_inference::protocol::{
    self, ChatMessage, Command as Cmd, ErrorKind, Event, FinishReason, Sampling,
};

fn model() -> PathBuf {
    let dir = std::env::var_os("JARVIS_MODELS")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            directories::ProjectDirs::from("", "", "jarvis")
                .unwrap()
                .cache_dir()
                .join("models")
        });
    let path = dir.join("SmolLM2-135M-Instruct.Q4_1.gguf");
    assert!(
        path.is_file(),
        "{} is missing: run `jarvis models pull` (scripts/test.sh does)",
        path.display()
    );
    path
}

struct Worker {
    child: Child,
    stdin: ChildStdin,
    events: Receiver<Event>,
}

impl Worker {
    fn start(slots: u32) -> Self {
        Self::start_with(slots, &[])
    }

    fn start_with(slots: u32, more: &[&str]) -> Self {
        let mut child = Command::new(env!("CARGO_BIN_EXE_jarvis-llm-worker"))
            .arg("--model")
            .arg(model())
            .args([
                "--slots",
                &slots.to_string(),
                "--ctx",
                "512",
                "--threads",
                "2",
            ])
            .args(more)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let stdin = child.stdin.take().unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, events) = channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let event: Event = protocol::decode(line.unwrap().as_bytes()).unwrap();
                if tx.send(event).is_err() {
                    return;
                }
            }
        });
        let worker = Self {
            child,
            stdin,
            events,
        };
        match worker.next() {
            Event::Ready {
                slots: s,
                n_ctx,
                devices,
                ..
            } => {
                assert_eq!(s, slots);
                assert_eq!(n_ctx, 512);
                // The compute devices this build found: this machine's CPU at least, last.
                assert!(
                    devices.last().is_some_and(|d| d.starts_with("CPU")),
                    "{devices:?}"
                );
            }
            other => panic!("expected ready, got {other:?}"),
        }
        worker
    }

    fn send(&mut self, command: &Cmd) {
        self.stdin
            .write_all(&protocol::encode(command).unwrap())
            .unwrap();
        self.stdin.flush().unwrap();
    }

    fn ask(&mut self, id: u64, question: &str, sampling: Sampling) {
        self.send(&Cmd::Generate {
            id,
            messages: vec![
                ChatMessage::new("system", "You are a helpful assistant."),
                ChatMessage::new("user", question),
            ],
            sampling,
            prefix: String::new(),
        });
    }

    fn next(&self) -> Event {
        self.events
            .recv_timeout(Duration::from_secs(120))
            .expect("the worker went quiet")
    }

    /// Reads events until `id` ends; returns its text and its end.
    fn finish(&self, id: u64) -> (String, Event) {
        let mut text = String::new();
        loop {
            match self.next() {
                Event::Token { id: i, text: t } if i == id => text.push_str(&t),
                end @ (Event::Done { id: i, .. } | Event::Error { id: Some(i), .. }) if i == id => {
                    return (text, end);
                }
                _ => {}
            }
        }
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn greedy(max_tokens: u32) -> Sampling {
    Sampling {
        max_tokens,
        temperature: 0.0,
        ..Sampling::default()
    }
}

/// `--nice` lowers the priority of every thread of the worker, llama.cpp's included (Linux keeps a
/// nice value per thread), so generation yields to the voice turn's real-time work.
#[cfg(target_os = "linux")]
#[test]
fn nice_lowers_the_priority_of_every_thread() {
    let mut w = Worker::start_with(1, &["--nice", "7"]);
    w.ask(1, "What is the capital of France?", greedy(8));
    let (text, _) = w.finish(1);
    assert!(!text.is_empty());
    let tasks = format!("/proc/{}/task", w.child.id());
    let mut threads = 0;
    for task in std::fs::read_dir(tasks).unwrap() {
        let stat = std::fs::read_to_string(task.unwrap().path().join("stat")).unwrap();
        // The fields after the command name (which may hold spaces): state is the 3rd, nice the 19th.
        let after = stat.rsplit_once(") ").unwrap().1;
        let nice: i32 = after.split_whitespace().nth(16).unwrap().parse().unwrap();
        assert_eq!(nice, 7, "{stat}");
        threads += 1;
    }
    assert!(threads >= 2, "{threads} threads");
}

#[test]
fn answers_with_the_real_model_and_stops_where_asked() {
    let mut w = Worker::start(2);
    w.ask(1, "What is the capital of France?", greedy(64));
    let (answer, end) = w.finish(1);
    assert!(answer.contains("Paris"), "{answer:?}");
    let Event::Done {
        finish_reason,
        completion_tokens,
        prompt_tokens,
        ..
    } = end
    else {
        panic!("{end:?}")
    };
    assert_eq!(finish_reason, FinishReason::Stop);
    assert!(completion_tokens > 0 && prompt_tokens > 10);

    // The same greedy answer cut at a word in its middle: everything before it, nothing after.
    let words: Vec<&str> = answer.split_whitespace().collect();
    assert!(words.len() >= 3, "{answer:?}");
    let stop = format!(" {}", words[words.len() / 2]);
    w.ask(
        2,
        "What is the capital of France?",
        Sampling {
            stop: vec![stop.clone()],
            ..greedy(64)
        },
    );
    let (cut, end) = w.finish(2);
    assert_eq!(cut, answer[..answer.find(&stop).unwrap()], "stop {stop:?}");
    assert!(matches!(
        end,
        Event::Done {
            finish_reason: FinishReason::Stop,
            ..
        }
    ));

    // max_tokens ends it with `length`.
    w.ask(3, "Tell me a long story about a dragon.", greedy(5));
    let (_, end) = w.finish(3);
    assert!(
        matches!(
            end,
            Event::Done {
                finish_reason: FinishReason::Length,
                completion_tokens: 5,
                ..
            }
        ),
        "{end:?}"
    );
}

#[test]
fn a_short_request_finishes_while_a_long_one_is_generating() {
    let mut w = Worker::start(2);
    w.ask(
        1,
        "Write a long story about a dragon who learns to fly.",
        greedy(200),
    );
    // Let the long one start generating before the short one arrives.
    loop {
        if let Event::Token { id: 1, .. } = w.next() {
            break;
        }
    }
    w.ask(2, "What is the capital of France?", greedy(32));
    let mut long_tokens_after_short_started = 0;
    let mut short_done = false;
    loop {
        match w.next() {
            Event::Token { id: 1, .. } if !short_done => long_tokens_after_short_started += 1,
            Event::Done { id: 2, .. } => short_done = true,
            Event::Done {
                id: 1,
                completion_tokens,
                ..
            } => {
                assert!(short_done, "the short request finished first");
                assert_eq!(completion_tokens, 200);
                break;
            }
            Event::Error { message, .. } => panic!("{message}"),
            _ => {}
        }
    }
    assert!(
        long_tokens_after_short_started > 0,
        "both generated in the same steps"
    );
}

#[test]
fn cancelling_frees_the_slot_at_once() {
    let mut w = Worker::start(1);
    w.ask(
        1,
        "Write a long story about a dragon who learns to fly.",
        greedy(400),
    );
    let mut seen = 0;
    while seen < 3 {
        if let Event::Token { id: 1, .. } = w.next() {
            seen += 1;
        }
    }
    w.send(&Cmd::Cancel { id: 1 });
    // With one slot, the next request can only run once the first is gone.
    w.ask(2, "What is the capital of France?", greedy(32));
    let (_, end) = w.finish(1);
    let Event::Done {
        finish_reason,
        completion_tokens,
        ..
    } = end
    else {
        panic!("{end:?}")
    };
    assert_eq!(finish_reason, FinishReason::Cancelled);
    assert!(completion_tokens < 400, "{completion_tokens}");
    let (answer, end) = w.finish(2);
    assert!(
        matches!(
            end,
            Event::Done {
                finish_reason: FinishReason::Stop,
                ..
            }
        ),
        "{end:?}"
    );
    assert!(answer.contains("Paris"), "{answer}");
}

#[test]
fn refuses_a_prompt_too_long_and_ignores_bad_lines_then_keeps_serving() {
    let mut w = Worker::start(1);
    w.ask(1, &"word ".repeat(2000), greedy(8));
    let (_, end) = w.finish(1);
    let Event::Error { kind, message, .. } = end else {
        panic!("{end:?}")
    };
    assert_eq!(kind, ErrorKind::ContextLengthExceeded);
    assert!(message.contains("512"), "{message}");

    w.stdin
        .write_all(b"this is not json\n{\"type\":\"generate\"}\n\n")
        .unwrap();
    w.ask(2, "What is the capital of France?", greedy(32));
    let (answer, _) = w.finish(2);
    assert!(answer.contains("Paris"), "{answer}");
}

#[test]
fn a_seed_makes_sampling_repeatable() {
    let mut w = Worker::start(2);
    let sampled = |seed| Sampling {
        max_tokens: 24,
        temperature: 1.0,
        top_p: 0.95,
        seed: Some(seed),
        stop: Vec::new(),
    };
    w.ask(1, "Invent a name for a cat.", sampled(7));
    let (first, _) = w.finish(1);
    w.ask(2, "Invent a name for a cat.", sampled(7));
    let (again, _) = w.finish(2);
    assert_eq!(first, again, "same seed, same text");
    let others: Vec<String> = (100..104)
        .map(|seed| {
            w.ask(
                seed,
                "Invent a name for a cat.",
                sampled(u32::try_from(seed).unwrap()),
            );
            w.finish(seed).0
        })
        .collect();
    assert!(
        others.iter().any(|t| *t != first),
        "other seeds sample differently: {first:?} {others:?}"
    );
}

/// A request that starts like an earlier one (the same system prompt; the same conversation one
/// turn later) reads only the new part, and answers exactly as it would from scratch.
#[test]
fn a_shared_start_is_read_once_and_changes_nothing() {
    let mut w = Worker::start(1);
    let turn = |question: &str| {
        vec![
            ChatMessage::new("system", "You are a helpful assistant."),
            ChatMessage::new("user", question),
        ]
    };
    let started = |w: &Worker, id: u64| loop {
        match w.next() {
            Event::Started {
                id: i,
                prompt_tokens,
                cached_tokens,
            } if i == id => return (prompt_tokens, cached_tokens),
            Event::Error { message, .. } => panic!("{message}"),
            _ => {}
        }
    };
    w.send(&Cmd::Generate {
        id: 1,
        messages: turn("What is the capital of France?"),
        sampling: greedy(32),
        prefix: String::new(),
    });
    let (_, cached) = started(&w, 1);
    assert_eq!(cached, 0, "nothing cached at first");
    let (first, _) = w.finish(1);

    // The same system prompt, another question: the system part is reused.
    w.send(&Cmd::Generate {
        id: 2,
        messages: turn("What is the capital of Italy?"),
        sampling: greedy(32),
        prefix: String::new(),
    });
    let (prompt, cached) = started(&w, 2);
    assert!(
        cached >= 5 && cached < prompt,
        "reused {cached} of {prompt}"
    );
    w.finish(2);

    // The first question again: the answer is the same as from an empty cache.
    w.send(&Cmd::Generate {
        id: 3,
        messages: turn("What is the capital of France?"),
        sampling: greedy(32),
        prefix: String::new(),
    });
    let (prompt, cached) = started(&w, 3);
    assert!(cached > 0 && cached < prompt, "reused {cached} of {prompt}");
    let (again, _) = w.finish(3);
    assert_eq!(again, first);

    // The conversation one turn later: everything up to the new question is reused.
    let mut follow_up = turn("What is the capital of France?");
    follow_up.push(ChatMessage::new("assistant", again.clone()));
    follow_up.push(ChatMessage::new("user", "And of Spain?"));
    w.send(&Cmd::Generate {
        id: 4,
        messages: follow_up,
        sampling: greedy(32),
        prefix: String::new(),
    });
    let (prompt, cached) = started(&w, 4);
    assert!(
        cached + 20 > prompt,
        "most of the conversation is reused: {cached} of {prompt}"
    );
    w.finish(4);
}

/// A resumed answer (the GPU peer making it went away): with the text so far as `prefix`, the
/// model goes on from there instead of starting again.
#[test]
fn an_answer_given_its_beginning_is_continued_not_restarted() {
    let mut w = Worker::start(1);
    let question = vec![
        ChatMessage::new("system", "You are a helpful assistant."),
        ChatMessage::new("user", "What is the capital of France?"),
    ];
    w.send(&Cmd::Generate {
        id: 1,
        messages: question.clone(),
        sampling: greedy(32),
        prefix: String::new(),
    });
    let (whole, _) = w.finish(1);
    let cut = whole.find("Paris").expect("the model knows");
    // Without the space before "Paris": tokenizers attach it to the word (the node's
    // `resume_from` trims it the same way).
    let before = whole.split_at(cut).0.trim_end();
    w.send(&Cmd::Generate {
        id: 2,
        messages: question,
        sampling: greedy(32),
        prefix: before.to_owned(),
    });
    let (rest, _) = w.finish(2);
    assert!(
        rest.trim_start().starts_with("Paris"),
        "{before:?} + {rest:?}"
    );
    assert!(!rest.contains(before.trim()), "not restarted: {rest:?}");
}
