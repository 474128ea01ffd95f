//! Voice activity with silero VAD (v6, ONNX): the probability that a 32 ms frame is speech.
//!
//! The model keeps a recurrent state and wants each 512-sample frame preceded by the last 64
//! samples of the one before (its "context"); this wrapper carries both between calls.

use std::path::Path;

use ort::session::Session;
use ort::value::Tensor;

use crate::onnx::run_error;
use crate::{Result, VoiceError};

/// Samples per frame at 16 kHz (32 ms).
pub const FRAME: usize = 512;
const CONTEXT: usize = 64;
const STATE: usize = 2 * 128;

/// A silero VAD session with its state.
pub struct Vad {
    session: Session,
    state: Vec<f32>,
    context: [f32; CONTEXT],
}

impl Vad {
    /// Loads `model` (silero_vad.onnx, v5 or v6).
    ///
    /// # Errors
    /// onnxruntime's, or a model without silero's inputs.
    pub fn load(environment: &ort::environment::Environment, model: &Path) -> Result<Self> {
        let session = crate::onnx::session(environment, model)?;
        for name in ["input", "state", "sr"] {
            if !session.inputs().iter().any(|i| i.name() == name) {
                return Err(VoiceError::Model(format!(
                    "{} is not a silero VAD model (it has no input {name:?})",
                    model.display()
                )));
            }
        }
        Ok(Self {
            session,
            state: vec![0.0; STATE],
            context: [0.0; CONTEXT],
        })
    }

    /// Forgets the audio so far.
    pub fn reset(&mut self) {
        self.state.fill(0.0);
        self.context = [0.0; CONTEXT];
    }

    /// The speech probability of one frame of [`FRAME`] samples (a shorter one is padded with
    /// silence).
    ///
    /// # Errors
    /// onnxruntime's.
    pub fn probability(&mut self, frame: &[f32]) -> Result<f32> {
        let mut input = Vec::with_capacity(CONTEXT + FRAME);
        input.extend_from_slice(&self.context);
        input.extend(frame.iter().take(FRAME));
        input.resize(CONTEXT + FRAME, 0.0);
        if let Some(tail) = input.get(FRAME..) {
            self.context.copy_from_slice(tail);
        }
        let err = run_error("silero VAD");
        let inputs = ort::inputs![
            "input" => Tensor::from_array(([1_usize, CONTEXT + FRAME], input)).map_err(&err)?,
            "state" => Tensor::from_array(([2_usize, 1, 128], self.state.clone())).map_err(&err)?,
            "sr" => Tensor::from_array(([0_usize; 0], vec![16_000_i64])).map_err(&err)?,
        ];
        let outputs = self.session.run(inputs).map_err(&err)?;
        let (_, probability) = outputs
            .get("output")
            .ok_or_else(|| VoiceError::Onnx("silero VAD: no output".into()))?
            .try_extract_tensor::<f32>()
            .map_err(&err)?;
        let probability = probability.first().copied().unwrap_or(0.0);
        let (_, state) = outputs
            .get("stateN")
            .ok_or_else(|| VoiceError::Onnx("silero VAD: no state".into()))?
            .try_extract_tensor::<f32>()
            .map_err(&err)?;
        if state.len() == STATE {
            self.state.copy_from_slice(state);
        }
        Ok(probability)
    }
}
