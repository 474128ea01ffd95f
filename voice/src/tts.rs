//! Text to speech: a Piper voice (VITS, ONNX) when one is installed, else espeak-ng.
//!
//! Piper reads phonemes; like Piper itself this gets them from espeak-ng (`--ipa`, the voice's
//! espeak voice) and maps each character through the voice's `phoneme_id_map`, with the pad
//! symbol between phonemes and the begin/end symbols around them. Both engines speak one
//! sentence at a time: [`Sentences`] cuts a streaming answer so the first sentence is spoken
//! while the rest is still being written.

use std::collections::HashMap;
use std::path::Path;
use std::process::{Command, Stdio};

use ort::environment::Environment;
use ort::session::Session;
use ort::value::Tensor;

use crate::audio::Audio;
use crate::onnx::run_error;
use crate::{Result, VoiceError};

/// Cuts streaming text into sentences.
#[derive(Debug, Default)]
pub struct Sentences {
    buffer: String,
    /// Whether a piece was given out yet: the first is cut early so speech starts soon.
    started: bool,
}

/// A sentence shorter than this waits for more text (so "1." or "Dr." is not spoken alone).
const MIN_SENTENCE: usize = 12;
/// A sentence longer than this is spoken up to its last comma or semicolon within it: a run-on
/// answer still starts speaking soon, and in pieces.
const MAX_CLAUSE: usize = 120;
/// The first piece of an answer ends at its first comma, or after this many words if that comes
/// first: the user hears the answer begin while the rest of its first sentence is written.
const FIRST_WORDS: usize = 6;

impl Sentences {
    /// A new splitter.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds text; returns the sentences it completed.
    pub fn push(&mut self, text: &str) -> Vec<String> {
        self.buffer.push_str(text);
        let mut out = Vec::new();
        loop {
            let cut = self.buffer.char_indices().find_map(|(i, c)| {
                let next = self.buffer.get(i + c.len_utf8()..)?.chars().next()?;
                let ends =
                    matches!(c, '.' | '!' | '?' | ';' | ':') && next.is_whitespace() || c == '\n';
                (ends && i + 1 >= MIN_SENTENCE).then_some(i + c.len_utf8())
            });
            let cut = cut.or_else(|| self.first_cut()).or_else(|| {
                if self.buffer.len() < MAX_CLAUSE {
                    return None;
                }
                let commas = self.buffer.char_indices().filter(|&(i, c)| {
                    matches!(c, ',' | ';')
                        && i + 1 >= MIN_SENTENCE
                        && self.buffer.get(i + 1..).is_some_and(|r| r.starts_with(' '))
                });
                // The last comma within the limit, else the first one after it.
                let mut within = None;
                for (i, _) in commas {
                    if i < MAX_CLAUSE || within.is_none() {
                        within = Some(i + 1);
                    }
                    if i >= MAX_CLAUSE {
                        break;
                    }
                }
                within
            });
            let Some(cut) = cut else { break };
            self.started = true;
            let rest = self.buffer.split_off(cut);
            let sentence = std::mem::replace(&mut self.buffer, rest.trim_start().to_owned());
            if !sentence.trim().is_empty() {
                out.push(sentence.trim().to_owned());
            }
        }
        out
    }

    /// Where the first piece ends early, if it can: a comma, or the end of the
    /// [`FIRST_WORDS`]th word once another word has begun.
    fn first_cut(&self) -> Option<usize> {
        if self.started {
            return None;
        }
        let mut words = 0;
        let mut in_word = false;
        for (i, c) in self.buffer.char_indices() {
            if c == ',' && i + 1 >= MIN_SENTENCE {
                let rest = self.buffer.get(i + 1..)?;
                return rest.starts_with(' ').then_some(i + 1);
            }
            if c.is_whitespace() {
                if in_word {
                    words += 1;
                    if words == FIRST_WORDS {
                        return Some(i);
                    }
                }
                in_word = false;
            } else {
                in_word = true;
            }
        }
        None
    }

    /// The text left at the end.
    pub fn finish(&mut self) -> Option<String> {
        let rest = std::mem::take(&mut self.buffer);
        let rest = rest.trim();
        (!rest.is_empty()).then(|| rest.to_owned())
    }
}

/// Text without what should not be read aloud: markdown emphasis, code fences, headings.
pub fn speakable(text: &str) -> String {
    text.chars()
        .filter(|c| !matches!(c, '*' | '_' | '`' | '#' | '~'))
        .collect::<String>()
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
}

/// A Piper voice.
pub struct Piper {
    session: Session,
    ids: HashMap<char, Vec<i64>>,
    espeak_voice: String,
    rate: u32,
    scales: [f32; 3],
    /// Whether the model takes `input_lengths`/`scales` (all published Piper voices do).
    has_scales: bool,
}

#[derive(serde::Deserialize)]
struct PiperConfig {
    audio: PiperAudio,
    espeak: PiperEspeak,
    #[serde(default)]
    inference: PiperInference,
    phoneme_id_map: HashMap<String, Vec<i64>>,
}

#[derive(serde::Deserialize)]
struct PiperAudio {
    sample_rate: u32,
}

#[derive(serde::Deserialize)]
struct PiperEspeak {
    voice: String,
}

#[derive(serde::Deserialize)]
struct PiperInference {
    noise_scale: f32,
    length_scale: f32,
    noise_w: f32,
}

impl Default for PiperInference {
    fn default() -> Self {
        Self {
            noise_scale: 0.667,
            length_scale: 1.0,
            noise_w: 0.8,
        }
    }
}

impl Piper {
    /// Loads a voice: `model` (`….onnx`) and its `config` (`….onnx.json`).
    ///
    /// # Errors
    /// A missing or malformed file, named.
    pub fn load(environment: &Environment, model: &Path, config: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(config).map_err(|e| {
            VoiceError::Model(format!(
                "cannot read the voice's settings {}: {e}",
                config.display()
            ))
        })?;
        let parsed: PiperConfig = serde_json::from_str(&text).map_err(|e| {
            VoiceError::Model(format!(
                "{} is not a Piper voice's settings: {e}",
                config.display()
            ))
        })?;
        let mut ids = HashMap::new();
        for (symbol, id) in parsed.phoneme_id_map {
            let mut chars = symbol.chars();
            if let (Some(c), None) = (chars.next(), chars.next()) {
                ids.insert(c, id);
            }
        }
        for needed in ['^', '$', '_'] {
            if !ids.contains_key(&needed) {
                return Err(VoiceError::Model(format!(
                    "{}: the phoneme map has no {needed:?}",
                    config.display()
                )));
            }
        }
        // Two threads: a sentence is synthesised while the user waits for it.
        let session = crate::onnx::session_with(environment, model, 2)?;
        let has_scales = session.inputs().iter().any(|i| i.name() == "scales");
        Ok(Self {
            session,
            ids,
            espeak_voice: parsed.espeak.voice,
            rate: parsed.audio.sample_rate,
            scales: [
                parsed.inference.noise_scale,
                parsed.inference.length_scale,
                parsed.inference.noise_w,
            ],
            has_scales,
        })
    }

    /// Speaks a word and throws it away: onnxruntime's first run of a session allocates and
    /// plans (several times the cost of the next), which would otherwise fall on the first
    /// sentence of the first answer.
    ///
    /// # Errors
    /// As [`Self::speak`].
    pub fn warm_up(&mut self) -> Result<()> {
        self.speak("Hello.").map(drop)
    }

    /// Phoneme ids for IPA text: `^ _ p _ p _ … $`.
    pub fn phoneme_ids(&self, phonemes: &str) -> Vec<i64> {
        let get = |c: char| self.ids.get(&c).cloned().unwrap_or_default();
        let mut out = get('^');
        out.extend(get('_'));
        for c in phonemes.chars() {
            if let Some(id) = self.ids.get(&c) {
                out.extend(id);
                out.extend(get('_'));
            }
        }
        out.extend(get('$'));
        out
    }

    /// Speaks one sentence.
    ///
    /// # Errors
    /// espeak-ng's or onnxruntime's.
    pub fn speak(&mut self, text: &str) -> Result<Audio> {
        let phonemes = phonemize(&self.espeak_voice, text)?;
        let ids = self.phoneme_ids(&phonemes);
        let err = run_error("Piper");
        let len = ids.len();
        let mut inputs = ort::inputs![
            "input" => Tensor::from_array(([1_usize, len], ids)).map_err(&err)?,
        ];
        if self.has_scales {
            inputs.push((
                "input_lengths".into(),
                Tensor::from_array(([1_usize], vec![len as i64]))
                    .map_err(&err)?
                    .into(),
            ));
            inputs.push((
                "scales".into(),
                Tensor::from_array(([3_usize], self.scales.to_vec()))
                    .map_err(&err)?
                    .into(),
            ));
        }
        let outputs = self.session.run(inputs).map_err(&err)?;
        let samples = crate::onnx::first_output(&outputs, "Piper")?;
        Ok(Audio {
            samples,
            rate: self.rate,
        })
    }
}

/// IPA phonemes for `text` from espeak-ng, clause by clause, with the sentence's final
/// punctuation kept (Piper voices were trained with it).
///
/// # Errors
/// When espeak-ng is missing or fails.
pub fn phonemize(voice: &str, text: &str) -> Result<String> {
    let output = espeak(&["-q", "-v", voice, "--ipa"], text)?;
    let lines: Vec<&str> = std::str::from_utf8(&output)
        .map_err(|_| VoiceError::Speech("espeak-ng printed something that is not text".into()))?
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    let mut phonemes = lines.join(", ");
    if let Some(end) = text
        .trim_end()
        .chars()
        .last()
        .filter(|c| matches!(c, '.' | '?' | '!'))
    {
        phonemes.push(end);
    }
    Ok(phonemes)
}

/// Runs espeak-ng on `text`, given on its standard input: on its command line, any local user
/// could read what is being said (`ps`).
fn espeak(args: &[&str], text: &str) -> Result<Vec<u8>> {
    let mut child = Command::new("espeak-ng")
        .args(args)
        .arg("--stdin")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| {
            VoiceError::Speech(format!(
                "cannot run espeak-ng ({e}); install it (`apt-get install espeak-ng`, or `brew install espeak-ng`)"
            ))
        })?;
    // Written from a thread of its own: espeak-ng writes as it reads, and a long text would
    // otherwise fill its output pipe while we were still writing its input.
    let writer = child.stdin.take().map(|mut stdin| {
        let text = text.to_owned();
        std::thread::spawn(move || {
            use std::io::Write;
            let _ = stdin.write_all(text.as_bytes());
        })
    });
    let output = child
        .wait_with_output()
        .map_err(|e| VoiceError::Speech(format!("espeak-ng failed: {e}")))?;
    if let Some(writer) = writer {
        let _ = writer.join();
    }
    if !output.status.success() {
        return Err(VoiceError::Speech(format!(
            "espeak-ng failed: {}",
            String::from_utf8_lossy(&output.stderr).trim()
        )));
    }
    Ok(output.stdout)
}

/// Speaks with espeak-ng itself (no Piper voice installed).
///
/// # Errors
/// When espeak-ng is missing or fails.
pub fn espeak_speak(voice: &str, text: &str) -> Result<Audio> {
    let wav = espeak(&["-q", "-v", voice, "--stdout"], text)?;
    parse_espeak_wav(&wav)
}

/// Parses espeak-ng's `--stdout` WAV: a 44-byte header (its sizes unset when streaming), then 16-bit
/// mono samples.
pub fn parse_espeak_wav(wav: &[u8]) -> Result<Audio> {
    let bad = || VoiceError::Speech("espeak-ng's output is not a 16-bit WAV".to_owned());
    let u16_at = |at: usize| -> Option<u16> {
        Some(u16::from_le_bytes(wav.get(at..at + 2)?.try_into().ok()?))
    };
    let u32_at = |at: usize| -> Option<u32> {
        Some(u32::from_le_bytes(wav.get(at..at + 4)?.try_into().ok()?))
    };
    if wav.get(0..4) != Some(b"RIFF") || wav.get(8..12) != Some(b"WAVE") || u16_at(34) != Some(16) {
        return Err(bad());
    }
    let rate = u32_at(24).ok_or_else(bad)?;
    // Find the data chunk.
    let mut at = 12;
    while let (Some(id), Some(size)) = (wav.get(at..at + 4), u32_at(at + 4)) {
        if id == b"data" {
            let samples = wav
                .get(at + 8..)
                .unwrap_or_default()
                .chunks_exact(2)
                .map(|c| {
                    f32::from(i16::from_le_bytes([
                        c.first().copied().unwrap_or(0),
                        c.last().copied().unwrap_or(0),
                    ])) / 32768.0
                })
                .collect();
            return Ok(Audio { samples, rate });
        }
        at = at.saturating_add(8).saturating_add(size as usize);
    }
    Err(bad())
}

/// The voice answers are spoken with.
pub enum Voice {
    /// A Piper model.
    Piper(Box<Piper>),
    /// espeak-ng with this voice.
    Espeak(String),
}

impl Voice {
    /// Its name, for timings and `status`.
    pub fn name(&self) -> &'static str {
        match self {
            Self::Piper(_) => "piper",
            Self::Espeak(_) => "espeak-ng",
        }
    }

    /// Speaks one sentence.
    ///
    /// # Errors
    /// The engine's.
    pub fn speak(&mut self, text: &str) -> Result<Audio> {
        let text = speakable(text);
        match self {
            Self::Piper(p) => p.speak(&text),
            Self::Espeak(v) => espeak_speak(v, &text),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sentences_come_out_as_soon_as_they_end() {
        let mut s = Sentences::new();
        assert!(s.push("The capital of France").is_empty());
        assert!(s.push(" is Paris").is_empty());
        assert_eq!(
            s.push(". It is also"),
            vec!["The capital of France is Paris."]
        );
        assert!(s.push(" its largest city").is_empty());
        assert_eq!(s.finish().as_deref(), Some("It is also its largest city"));
        assert_eq!(s.finish(), None);
    }

    #[test]
    fn numbers_and_short_fragments_are_not_cut() {
        let mut s = Sentences::new();
        assert!(s.push("Yes. ").is_empty(), "too short to stand alone");
        assert!(
            s.push("It costs 3.50").is_empty(),
            "a decimal point ends nothing"
        );
        assert_eq!(s.push(" euros! More"), vec!["Yes. It costs 3.50 euros!"]);
    }

    #[test]
    fn the_first_piece_is_cut_early_and_the_rest_by_sentence() {
        let mut s = Sentences::new();
        let out = s.push("The largest ocean on Earth is the Pacific Ocean which covers ");
        assert_eq!(out, vec!["The largest ocean on Earth is"]);
        assert!(
            s.push("a third of the planet").is_empty(),
            "later pieces wait for the end"
        );
        assert_eq!(
            s.push(". Next"),
            vec!["the Pacific Ocean which covers a third of the planet."]
        );
        let mut s = Sentences::new();
        assert_eq!(
            s.push("Well, that depends "),
            vec!["Well, that depends"]
                .into_iter()
                .filter(|_| false)
                .collect::<Vec<&str>>()
        );
    }

    #[test]
    fn a_run_on_sentence_is_spoken_in_clauses() {
        let mut s = Sentences::new();
        let clause = "and it is a tale of the unyielding, ";
        let mut out = Vec::new();
        for _ in 0..6 {
            out.extend(s.push(clause));
        }
        assert!(out.len() >= 2);
        // After the (early) first piece, each ends at a comma within the limit.
        assert!(
            out[1..].iter().all(|c| c.len() <= 130 && c.ends_with(',')),
            "{out:?}"
        );
    }

    #[test]
    fn markdown_is_not_read_aloud() {
        assert_eq!(
            speakable("**Paris** is `the` _capital_"),
            "Paris is the capital"
        );
    }

    #[test]
    fn espeak_headers_without_sizes_are_read() {
        let mut wav = Vec::new();
        wav.extend(b"RIFF");
        wav.extend(0xffff_ffff_u32.to_le_bytes());
        wav.extend(b"WAVEfmt ");
        wav.extend(16_u32.to_le_bytes());
        wav.extend(1_u16.to_le_bytes());
        wav.extend(1_u16.to_le_bytes());
        wav.extend(22_050_u32.to_le_bytes());
        wav.extend(44_100_u32.to_le_bytes());
        wav.extend(2_u16.to_le_bytes());
        wav.extend(16_u16.to_le_bytes());
        wav.extend(b"data");
        wav.extend(0xffff_ffff_u32.to_le_bytes());
        wav.extend(16384_i16.to_le_bytes());
        wav.extend((-16384_i16).to_le_bytes());
        let audio = parse_espeak_wav(&wav).unwrap();
        assert_eq!(audio.rate, 22_050);
        assert_eq!(audio.samples, vec![0.5, -0.5]);
        assert!(parse_espeak_wav(b"RIFF....WAVEjunk").is_err());
        assert!(parse_espeak_wav(b"").is_err());
    }
}
