//! The microphone and the speaker, through cpal (ALSA on Linux, CoreAudio on macOS, WASAPI on
//! Windows). Each stream lives on a thread of its own (cpal streams cannot move between threads
//! on every platform): the microphone's delivers 16 kHz mono chunks through a bounded channel
//! (a listener that falls behind loses audio, counted, rather than memory); the speaker's pulls
//! from a [`Playback`].
//!
//! Devices are named as cpal names them (`alsa:default`, `alsa:hw:0,0`, `coreaudio:…`);
//! [`devices`] lists them.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};
use std::thread::JoinHandle;
use std::time::Duration;

use cpal::traits::{DeviceTrait, HostTrait, StreamTrait};
use cpal::{FromSample, SampleFormat, SizedSample, StreamConfig};

use crate::audio::{RATE, downmix, resample};
use crate::playback::Playback;
use crate::{Result, VoiceError};

/// Samples per chunk sent from the microphone (20 ms at 16 kHz), whatever the device's period.
const MIC_CHUNK: usize = 320;
/// Chunks of microphone audio buffered before new ones are dropped (about 10 s).
const MIC_QUEUE: usize = 500;

fn fail(message: impl Into<String>) -> VoiceError {
    VoiceError::Audio(message.into())
}

/// The input and output devices: `(id, description, is input)`.
pub fn devices() -> Vec<(String, String, bool)> {
    let host = cpal::default_host();
    let mut out = Vec::new();
    for (input, list) in [
        (true, host.input_devices().ok()),
        (false, host.output_devices().ok()),
    ] {
        for d in list.into_iter().flatten() {
            let id = d.id().map(|i| i.to_string()).unwrap_or_default();
            let description = d.description().map(|d| d.to_string()).unwrap_or_default();
            out.push((id, description, input));
        }
    }
    out
}

fn find(name: Option<&str>, input: bool) -> Result<cpal::Device> {
    let host = cpal::default_host();
    let what = if input { "microphone" } else { "speaker" };
    match name {
        Some(name) => {
            let id = name.parse().map_err(|e| {
                fail(format!(
                    "{name:?} is not a device name ({e}); `jarvis listen --list-devices` shows them"
                ))
            })?;
            host.device_by_id(&id).ok_or_else(|| {
                fail(format!(
                    "no {what} called {name}; `jarvis listen --list-devices` shows them"
                ))
            })
        }
        None => if input {
            host.default_input_device()
        } else {
            host.default_output_device()
        }
        .ok_or_else(|| {
            fail(format!(
                "no {what} found; connect one, or name one (`jarvis listen --list-devices`), or use \
                 a recording (`jarvis listen --file WAV`)"
            ))
        }),
    }
}

/// Picks a configuration at `rate` if the device takes it (then no conversion is needed here),
/// else the device's default.
fn config(device: &cpal::Device, rate: u32, input: bool) -> Result<(StreamConfig, SampleFormat)> {
    let ranges: Vec<_> = if input {
        device.supported_input_configs().map(Iterator::collect)
    } else {
        device.supported_output_configs().map(Iterator::collect)
    }
    .unwrap_or_default();
    let usable =
        |f: SampleFormat| matches!(f, SampleFormat::F32 | SampleFormat::I16 | SampleFormat::I32);
    if let Some(c) = ranges
        .into_iter()
        .filter(|r| usable(r.sample_format()))
        .find_map(|r| r.try_with_sample_rate(rate))
    {
        return Ok((c.config(), c.sample_format()));
    }
    let default = if input {
        device.default_input_config()
    } else {
        device.default_output_config()
    }
    .map_err(|e| fail(format!("the device has no usable configuration: {e}")))?;
    Ok((default.config(), default.sample_format()))
}

/// Checks that the microphone `name` (or a default one) exists and has a usable configuration,
/// without opening it; returns its id.
///
/// # Errors
/// As [`open_microphone`].
pub fn find_microphone(name: Option<&str>) -> Result<String> {
    let device = find(name, true)?;
    config(&device, RATE, true)?;
    Ok(device.id().map(|i| i.to_string()).unwrap_or_default())
}

/// Runs a stream on a thread of its own (cpal streams cannot move between threads everywhere):
/// `open` builds and starts it there; the thread keeps it until `stop` is set. Returns what
/// `open` said (the device's id), or its error.
fn stream_thread<T: Send + 'static>(
    name: &str,
    stop: Arc<AtomicBool>,
    open: impl FnOnce() -> Result<(cpal::Stream, T)> + Send + 'static,
) -> Result<(T, JoinHandle<()>)> {
    let (ready_tx, ready_rx) = sync_channel::<Result<T>>(1);
    let thread = std::thread::Builder::new()
        .name(name.to_owned())
        .spawn(move || match open() {
            Ok((stream, info)) => {
                let _ = ready_tx.send(Ok(info));
                while !stop.load(Ordering::Relaxed) {
                    std::thread::sleep(Duration::from_millis(20));
                }
                drop(stream);
            }
            Err(e) => {
                let _ = ready_tx.send(Err(e));
            }
        })
        .map_err(|e| fail(format!("starting the {name} thread: {e}")))?;
    let info = ready_rx
        .recv()
        .map_err(|_| fail(format!("the {name} thread ended")))??;
    Ok((info, thread))
}

/// A running microphone; dropping it stops the stream.
pub struct Microphone {
    /// The device's id.
    pub name: String,
    /// Its rate (audio is converted to 16 kHz mono).
    pub rate: u32,
    /// Chunks dropped because the listener fell behind.
    pub dropped: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Drop for Microphone {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn on_input<T>(
    data: &[T],
    channels: usize,
    rate: u32,
    pending: &mut Vec<f32>,
    tx: &SyncSender<Vec<f32>>,
    dropped: &AtomicU64,
) where
    T: SizedSample,
    f32: FromSample<T>,
{
    let samples: Vec<f32> = data.iter().map(|&s| s.to_sample::<f32>()).collect();
    pending.extend(resample(&downmix(&samples, channels), rate, RATE));
    while pending.len() >= MIC_CHUNK {
        let rest = pending.split_off(MIC_CHUNK);
        let chunk = std::mem::replace(pending, rest);
        if tx.try_send(chunk).is_err() {
            dropped.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// Opens the microphone `name` (or the default) and starts it; its audio arrives on the
/// receiver as 16 kHz mono chunks.
///
/// # Errors
/// No such device, or it cannot be opened; the message says what to do.
pub fn open_microphone(name: Option<&str>) -> Result<(Microphone, Receiver<Vec<f32>>)> {
    let (tx, rx) = sync_channel(MIC_QUEUE);
    let stop = Arc::new(AtomicBool::new(false));
    let dropped = Arc::new(AtomicU64::new(0));
    let name = name.map(str::to_owned);
    let counter = Arc::clone(&dropped);
    let ((name, rate), thread) = stream_thread("microphone", Arc::clone(&stop), move || {
        let device = find(name.as_deref(), true)?;
        let id = device.id().map(|i| i.to_string()).unwrap_or_default();
        let (config, format) = config(&device, RATE, true)?;
        let (channels, rate) = (usize::from(config.channels), config.sample_rate);
        let err = |e: cpal::Error| tracing::warn!(error = %e, "microphone");
        macro_rules! build {
            ($t:ty) => {{
                let (tx, dropped) = (tx.clone(), Arc::clone(&counter));
                let mut pending = Vec::with_capacity(2 * MIC_CHUNK);
                device.build_input_stream::<$t, _, _>(
                    config,
                    move |data, _| on_input(data, channels, rate, &mut pending, &tx, &dropped),
                    err,
                    None,
                )
            }};
        }
        let stream = match format {
            SampleFormat::I16 => build!(i16),
            SampleFormat::I32 => build!(i32),
            _ => build!(f32),
        }
        .map_err(|e| fail(format!("cannot open the microphone {id}: {e}")))?;
        stream
            .play()
            .map_err(|e| fail(format!("cannot start the microphone {id}: {e}")))?;
        Ok((stream, (id, rate)))
    })?;
    Ok((
        Microphone {
            name,
            rate,
            dropped,
            stop,
            thread: Some(thread),
        },
        rx,
    ))
}

/// A running speaker; dropping it stops the stream.
pub struct Speaker {
    /// The device's id.
    pub name: String,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Drop for Speaker {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn on_output<T>(data: &mut [T], channels: usize, rate: u32, playback: &Playback)
where
    T: SizedSample + FromSample<f32>,
{
    let mut mono = vec![0.0_f32; data.len() / channels.max(1)];
    playback.render(&mut mono, rate);
    for (frame, &s) in data.chunks_mut(channels.max(1)).zip(&mono) {
        for out in frame {
            *out = T::from_sample(s);
        }
    }
}

/// Opens the speaker `name` (or the default), playing `playback` as it is queued.
///
/// # Errors
/// No such device, or it cannot be opened.
pub fn open_speaker(name: Option<&str>, playback: Arc<Playback>, rate: u32) -> Result<Speaker> {
    let stop = Arc::new(AtomicBool::new(false));
    let name = name.map(str::to_owned);
    let (name, thread) = stream_thread("speaker", Arc::clone(&stop), move || {
        let device = find(name.as_deref(), false)?;
        let id = device.id().map(|i| i.to_string()).unwrap_or_default();
        let (config, format) = config(&device, rate, false)?;
        let (channels, rate) = (usize::from(config.channels), config.sample_rate);
        let err = |e: cpal::Error| tracing::warn!(error = %e, "speaker");
        macro_rules! build {
            ($t:ty) => {{
                let playback = Arc::clone(&playback);
                device.build_output_stream::<$t, _, _>(
                    config,
                    move |data, _| on_output(data, channels, rate, &playback),
                    err,
                    None,
                )
            }};
        }
        let stream = match format {
            SampleFormat::I16 => build!(i16),
            SampleFormat::I32 => build!(i32),
            _ => build!(f32),
        }
        .map_err(|e| fail(format!("cannot open the speaker {id}: {e}")))?;
        stream
            .play()
            .map_err(|e| fail(format!("cannot start the speaker {id}: {e}")))?;
        Ok((stream, id))
    })?;
    Ok(Speaker {
        name,
        stop,
        thread: Some(thread),
    })
}
