//! The wake word, with openWakeWord's pipeline: 16 kHz audio in 1,280-sample (80 ms) steps →
//! melspectrogram model (8 new frames of 32 mel bins per step, scaled `x/10 + 2`) → Google's
//! speech-embedding model on the last 76 frames (one 96-d embedding per step) → the wake-word
//! model on the last N embeddings (16 for "hey jarvis") → a score in [0, 1].
//!
//! The two feature models are shared by every wake word; the wake-word model is "hey jarvis"
//! (openWakeWord's, licensed CC BY-NC-SA 4.0: non-commercial) or any openWakeWord-format model
//! the user trains or provides (`JARVIS_WAKE_MODEL`), whose window length is read from its input
//! shape.

use std::collections::VecDeque;
use std::path::Path;

use ort::environment::Environment;
use ort::session::Session;
use ort::value::Tensor;

use crate::onnx::run_error;
use crate::{Result, VoiceError};

/// Samples per step (80 ms at 16 kHz).
pub const STEP: usize = 1280;
/// Extra samples before each step the melspectrogram needs (its window overlaps the last step).
const OVERLAP: usize = 480;
const MEL_BINS: usize = 32;
const MEL_WINDOW: usize = 76;
const EMBEDDING: usize = 96;
/// Mel frames kept (10 s, as openWakeWord keeps).
const MEL_KEEP: usize = 970;
/// Scores forced to 0 while the buffers fill with real audio (openWakeWord does the same).
const WARM_UP: usize = 5;

/// The three model files.
#[derive(Debug, Clone)]
pub struct WakeModels<'a> {
    /// openWakeWord's `melspectrogram.onnx`.
    pub melspectrogram: &'a Path,
    /// openWakeWord's `embedding_model.onnx`.
    pub embedding: &'a Path,
    /// The wake word's classifier (e.g. `hey_jarvis_v0.1.onnx`).
    pub wake_word: &'a Path,
}

/// A wake-word detector with its streaming state.
pub struct WakeWord {
    mel: Session,
    embedding: Session,
    classifier: Session,
    classifier_input: String,
    /// Embeddings the classifier looks at.
    window: usize,
    raw: VecDeque<f32>,
    pending: Vec<f32>,
    mels: VecDeque<[f32; MEL_BINS]>,
    embeddings: VecDeque<Vec<f32>>,
    silent_embedding: Vec<f32>,
    steps: usize,
}

impl WakeWord {
    /// Loads the models.
    ///
    /// # Errors
    /// A missing or unusable model, named.
    pub fn load(environment: &Environment, models: &WakeModels<'_>) -> Result<Self> {
        let mel = crate::onnx::session(environment, models.melspectrogram)?;
        let embedding = crate::onnx::session(environment, models.embedding)?;
        let classifier = crate::onnx::session(environment, models.wake_word)?;
        let input = classifier.inputs().first().ok_or_else(|| {
            VoiceError::Model(format!("{} has no input", models.wake_word.display()))
        })?;
        let shape: Vec<i64> = input
            .dtype()
            .tensor_shape()
            .map(|s| s.iter().copied().collect())
            .unwrap_or_default();
        let (window, features) = match shape.as_slice() {
            [_, n, f] if *n > 0 => (*n as usize, *f),
            _ => {
                return Err(VoiceError::Model(format!(
                    "{} is not an openWakeWord model: its input has shape {shape:?}, not [1, N, 96]",
                    models.wake_word.display()
                )));
            }
        };
        if features != EMBEDDING as i64 {
            return Err(VoiceError::Model(format!(
                "{} is not an openWakeWord model: it reads {features} features, not 96",
                models.wake_word.display()
            )));
        }
        let classifier_input = input.name().to_owned();
        let mut wake = Self {
            mel,
            embedding,
            classifier,
            classifier_input,
            window,
            raw: VecDeque::with_capacity(STEP + OVERLAP),
            pending: Vec::with_capacity(STEP),
            mels: VecDeque::with_capacity(MEL_KEEP),
            embeddings: VecDeque::with_capacity(window),
            silent_embedding: Vec::new(),
            steps: 0,
        };
        // openWakeWord starts from the embedding of silence and a mel buffer of ones.
        let silence = vec![0.0; MEL_WINDOW * 160 + OVERLAP];
        let frames = wake.melspectrogram(&silence)?;
        let start = frames.len().saturating_sub(MEL_WINDOW);
        let window_frames: Vec<[f32; MEL_BINS]> = frames.get(start..).unwrap_or_default().to_vec();
        wake.silent_embedding = wake.embed(window_frames.iter())?;
        wake.reset();
        Ok(wake)
    }

    /// Forgets the audio so far (after a wake, so one phrase wakes once).
    pub fn reset(&mut self) {
        self.raw.clear();
        self.pending.clear();
        self.mels.clear();
        self.mels
            .extend(std::iter::repeat_n([1.0; MEL_BINS], MEL_WINDOW));
        self.embeddings.clear();
        self.embeddings.extend(std::iter::repeat_n(
            self.silent_embedding.clone(),
            self.window,
        ));
        self.steps = 0;
    }

    /// Feeds 16 kHz samples in [-1, 1]; returns one score per completed 80 ms step.
    ///
    /// # Errors
    /// onnxruntime's.
    pub fn push(&mut self, samples: &[f32]) -> Result<Vec<f32>> {
        let mut scores = Vec::new();
        for &s in samples {
            self.pending.push(s * 32_768.0);
            if self.pending.len() == STEP {
                let step = std::mem::take(&mut self.pending);
                scores.push(self.step(&step)?);
                self.pending = step;
                self.pending.clear();
            }
        }
        Ok(scores)
    }

    fn step(&mut self, step: &[f32]) -> Result<f32> {
        self.raw.extend(step.iter().copied());
        while self.raw.len() > STEP + OVERLAP {
            self.raw.pop_front();
        }
        let raw: Vec<f32> = self.raw.iter().copied().collect();
        for frame in self.melspectrogram(&raw)? {
            if self.mels.len() == MEL_KEEP {
                self.mels.pop_front();
            }
            self.mels.push_back(frame);
        }
        let start = self.mels.len().saturating_sub(MEL_WINDOW);
        let window: Vec<[f32; MEL_BINS]> = self.mels.range(start..).copied().collect();
        let embedding = self.embed(window.iter())?;
        self.embeddings.pop_front();
        self.embeddings.push_back(embedding);
        self.steps += 1;
        let score = self.classify()?;
        Ok(if self.steps <= WARM_UP { 0.0 } else { score })
    }

    /// Mel frames (already scaled `x/10 + 2`) of int16-scale samples.
    fn melspectrogram(&mut self, samples: &[f32]) -> Result<Vec<[f32; MEL_BINS]>> {
        let err = run_error("wake word (melspectrogram)");
        let input =
            Tensor::from_array(([1_usize, samples.len()], samples.to_vec())).map_err(&err)?;
        let outputs = self.mel.run(ort::inputs![input]).map_err(&err)?;
        let values = crate::onnx::first_output(&outputs, "melspectrogram")?;
        Ok(values
            .chunks_exact(MEL_BINS)
            .map(|c| {
                let mut frame = [0.0; MEL_BINS];
                for (f, &v) in frame.iter_mut().zip(c) {
                    *f = v / 10.0 + 2.0;
                }
                frame
            })
            .collect())
    }

    fn embed<'f>(&mut self, frames: impl Iterator<Item = &'f [f32; MEL_BINS]>) -> Result<Vec<f32>> {
        let err = run_error("wake word (embedding)");
        let flat: Vec<f32> = frames.flatten().copied().collect();
        if flat.len() != MEL_WINDOW * MEL_BINS {
            return Err(VoiceError::Onnx(format!(
                "wake word: {} mel values, not {}",
                flat.len(),
                MEL_WINDOW * MEL_BINS
            )));
        }
        let input = Tensor::from_array(([1_usize, MEL_WINDOW, MEL_BINS, 1], flat)).map_err(&err)?;
        let outputs = self.embedding.run(ort::inputs![input]).map_err(&err)?;
        let values = crate::onnx::first_output(&outputs, "embedding")?;
        Ok(values)
    }

    fn classify(&mut self) -> Result<f32> {
        let err = run_error("wake word");
        let flat: Vec<f32> = self.embeddings.iter().flatten().copied().collect();
        let input = Tensor::from_array(([1_usize, self.window, EMBEDDING], flat)).map_err(&err)?;
        let name = self.classifier_input.clone();
        let outputs = self
            .classifier
            .run(ort::inputs![name => input])
            .map_err(&err)?;
        let values = crate::onnx::first_output(&outputs, "wake word")?;
        Ok(values.first().copied().unwrap_or(0.0))
    }
}
