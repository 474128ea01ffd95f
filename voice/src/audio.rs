//! Audio files and formats: every stage downstream takes 16 kHz mono `f32` in [-1, 1].

use std::path::Path;

use crate::{Result, VoiceError};

/// The rate every stage of the pipeline works at.
pub const RATE: u32 = 16_000;

/// Mono samples at a rate.
#[derive(Debug, Clone, PartialEq)]
pub struct Audio {
    /// Samples in [-1, 1].
    pub samples: Vec<f32>,
    /// Samples per second.
    pub rate: u32,
}

impl Audio {
    /// Its length in milliseconds.
    pub fn millis(&self) -> u64 {
        if self.rate == 0 {
            return 0;
        }
        self.samples.len() as u64 * 1000 / u64::from(self.rate)
    }
}

/// Reads a WAV file (8/16/24/32-bit integer or 32-bit float, any rate, any channels) as 16 kHz
/// mono.
///
/// # Errors
/// A message naming the file when it cannot be read or is not a WAV file.
pub fn read_wav(path: &Path) -> Result<Audio> {
    let file = std::fs::File::open(path)
        .map_err(|e| VoiceError::Audio(format!("{}: {e}", path.display())))?;
    decode_wav(std::io::BufReader::new(file)).map_err(|e| {
        VoiceError::Audio(format!(
            "{}: {e} (a WAV file is expected; convert other formats with `sox IN -r 16000 -c 1 OUT.wav`)",
            path.display()
        ))
    })
}

/// Decodes WAV bytes as [`read_wav`] does (untrusted input: errors, never panics).
///
/// # Errors
/// hound's message when the bytes are not a WAV file it can read.
pub fn decode_wav(reader: impl std::io::Read) -> Result<Audio, hound::Error> {
    let mut reader = hound::WavReader::new(reader)?;
    let spec = reader.spec();
    let channels = usize::from(spec.channels.max(1));
    let interleaved: Vec<f32> = match spec.sample_format {
        hound::SampleFormat::Float => reader.samples::<f32>().collect::<Result<_, _>>()?,
        hound::SampleFormat::Int => {
            let scale = 1.0 / (1_i64 << (spec.bits_per_sample.clamp(1, 32) - 1)) as f32;
            reader
                .samples::<i32>()
                .map(|s| s.map(|s| s as f32 * scale))
                .collect::<Result<_, _>>()?
        }
    };
    let mono = downmix(&interleaved, channels);
    Ok(Audio {
        samples: resample(&mono, spec.sample_rate, RATE),
        rate: RATE,
    })
}

/// Writes mono samples as a 16-bit WAV file.
///
/// # Errors
/// A message naming the file.
pub fn write_wav(path: &Path, audio: &Audio) -> Result<()> {
    let fail = |e: hound::Error| VoiceError::Audio(format!("writing {}: {e}", path.display()));
    let spec = hound::WavSpec {
        channels: 1,
        sample_rate: audio.rate,
        bits_per_sample: 16,
        sample_format: hound::SampleFormat::Int,
    };
    let mut writer = hound::WavWriter::create(path, spec).map_err(fail)?;
    for &s in &audio.samples {
        writer.write_sample(to_i16(s)).map_err(fail)?;
    }
    writer.finalize().map_err(fail)
}

/// A sample in [-1, 1] as 16-bit PCM (clipped).
pub fn to_i16(sample: f32) -> i16 {
    (sample.clamp(-1.0, 1.0) * f32::from(i16::MAX)).round() as i16
}

/// The mean of each frame's channels.
pub fn downmix(interleaved: &[f32], channels: usize) -> Vec<f32> {
    if channels <= 1 {
        return interleaved.to_vec();
    }
    interleaved
        .chunks(channels)
        .map(|frame| frame.iter().sum::<f32>() / frame.len() as f32)
        .collect()
}

/// Half-width of the resampling filter, in input samples at the lower of the two rates.
const TAPS: usize = 16;

/// Resamples with a windowed-sinc (Blackman) low-pass at the lower rate's Nyquist frequency, so
/// downsampling from 44.1 or 48 kHz does not fold high frequencies into speech. Quality is that of
/// a 32-tap filter: plenty for speech recognition and voice detection, which is all this is for.
pub fn resample(input: &[f32], from: u32, to: u32) -> Vec<f32> {
    if from == to || from == 0 || to == 0 || input.is_empty() {
        return input.to_vec();
    }
    let ratio = f64::from(to) / f64::from(from);
    // The cut-off, relative to the input's rate.
    let cutoff = ratio.min(1.0);
    let half = (TAPS as f64 / cutoff).ceil() as isize;
    let out_len = (input.len() as f64 * ratio).round() as usize;
    let mut out = Vec::with_capacity(out_len);
    for n in 0..out_len {
        let centre = n as f64 / ratio;
        let first = centre.floor() as isize - half + 1;
        let mut acc = 0.0_f64;
        let mut weight = 0.0_f64;
        for i in first..first + 2 * half {
            let Some(&x) = usize::try_from(i).ok().and_then(|i| input.get(i)) else {
                continue;
            };
            let t = i as f64 - centre;
            let w = sinc(t * cutoff) * blackman(t / half as f64);
            acc += f64::from(x) * w;
            weight += w;
        }
        out.push(if weight.abs() > 1e-9 {
            (acc / weight) as f32
        } else {
            0.0
        });
    }
    out
}

fn sinc(x: f64) -> f64 {
    if x.abs() < 1e-9 {
        1.0
    } else {
        let px = std::f64::consts::PI * x;
        px.sin() / px
    }
}

/// The Blackman window on [-1, 1].
fn blackman(x: f64) -> f64 {
    if x.abs() >= 1.0 {
        return 0.0;
    }
    let a = std::f64::consts::PI * (x + 1.0);
    0.42 - 0.5 * a.cos() + 0.08 * (2.0 * a).cos()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sine(freq: f64, rate: u32, seconds: f64) -> Vec<f32> {
        (0..(f64::from(rate) * seconds) as usize)
            .map(|i| {
                (2.0 * std::f64::consts::PI * freq * i as f64 / f64::from(rate)).sin() as f32 * 0.5
            })
            .collect()
    }

    fn rms(x: &[f32]) -> f64 {
        (x.iter().map(|&s| f64::from(s) * f64::from(s)).sum::<f64>() / x.len() as f64).sqrt()
    }

    /// Zero crossings per second of a sine are twice its frequency.
    fn frequency(x: &[f32], rate: u32) -> f64 {
        let crossings = x
            .windows(2)
            .filter(|w| (w[0] < 0.0) != (w[1] < 0.0))
            .count();
        crossings as f64 * f64::from(rate) / x.len() as f64 / 2.0
    }

    #[test]
    fn a_tone_keeps_its_pitch_and_level_across_rates() {
        for from in [8_000, 22_050, 44_100, 48_000] {
            let out = resample(&sine(440.0, from, 1.0), from, RATE);
            assert_eq!(out.len(), RATE as usize, "from {from}");
            let inner = &out[1000..15000];
            assert!(
                (frequency(inner, RATE) - 440.0).abs() < 2.0,
                "from {from}: {}",
                frequency(inner, RATE)
            );
            assert!(
                (rms(inner) - 0.5 / 2f64.sqrt()).abs() < 0.01,
                "from {from}: {}",
                rms(inner)
            );
        }
    }

    #[test]
    fn frequencies_above_the_new_nyquist_are_removed_not_folded() {
        // 12 kHz at 48 kHz would fold to 4 kHz at 16 kHz without the filter.
        let out = resample(&sine(12_000.0, 48_000, 1.0), 48_000, RATE);
        assert!(rms(&out[1000..15000]) < 0.01, "{}", rms(&out[1000..15000]));
    }

    #[test]
    fn wav_files_round_trip_as_16k_mono() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.wav");
        let audio = Audio {
            samples: sine(300.0, RATE, 0.5),
            rate: RATE,
        };
        write_wav(&path, &audio).unwrap();
        let back = read_wav(&path).unwrap();
        assert_eq!(back.samples.len(), audio.samples.len());
        let worst = back
            .samples
            .iter()
            .zip(&audio.samples)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0, f32::max);
        assert!(worst < 1e-4, "{worst}");
    }

    #[test]
    fn stereo_is_mixed_down() {
        assert_eq!(downmix(&[1.0, 0.0, 0.5, 0.5], 2), vec![0.5, 0.5]);
    }

    #[test]
    fn a_file_that_is_not_wav_is_refused_with_its_name() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("song.mp3");
        std::fs::write(&path, b"ID3 not a wav").unwrap();
        let err = read_wav(&path).unwrap_err().to_string();
        assert!(err.contains("song.mp3") && err.contains("WAV"), "{err}");
    }
}
