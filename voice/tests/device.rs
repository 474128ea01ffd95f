//! The microphone path (cpal, ALSA) with a real capture device and no sound card: ALSA's `file`
//! plugin behind `plug` (testing.md) plays a recording into the capture stream. The device is
//! declared in `$HOME/.asoundrc`, which ALSA reads once per process, so this test runs in a
//! child process of its own with HOME pointing at a temporary directory.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

/// An `.asoundrc` declaring `jarvis_mic`, which captures `raw` (16 kHz mono s16le).
pub fn asoundrc(raw: &Path) -> String {
    format!(
        "pcm.jarvis_mic {{\n  type plug\n  slave {{\n    pcm {{\n      type file\n      slave.pcm null\n      file \"/dev/null\"\n      infile \"{}\"\n      format \"raw\"\n    }}\n    format S16_LE\n    rate 16000\n    channels 1\n  }}\n}}\n",
        raw.display()
    )
}

#[test]
fn a_capture_device_delivers_its_audio_as_16k_chunks() {
    if std::env::var_os("JARVIS_MIC_CHILD").is_some() {
        // In the child: read what the microphone delivers.
        let (mic, rx) = jarvis_voice::device::open_microphone(Some("alsa:jarvis_mic")).unwrap();
        assert_eq!(mic.name, "alsa:jarvis_mic");
        let mut samples = Vec::new();
        let start = Instant::now();
        // The file plugin does not pace: the recording arrives at once, then silence.
        while samples.len() < 32_000 && start.elapsed() < Duration::from_secs(10) {
            if let Ok(chunk) = rx.recv_timeout(Duration::from_millis(100)) {
                assert_eq!(chunk.len(), 320);
                samples.extend(chunk);
            }
        }
        let loud = samples.iter().filter(|s| s.abs() > 0.2).count();
        let crossings = samples[..16_000]
            .windows(2)
            .filter(|w| (w[0] < 0.0) != (w[1] < 0.0))
            .count();
        println!("RESULT {} {loud} {crossings}", samples.len());
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    // One second of a 440 Hz tone at half scale, then the child reads two seconds.
    let raw = dir.path().join("tone.raw");
    let tone: Vec<u8> = (0..16_000)
        .flat_map(|i| {
            let s = (i as f32 * 440.0 * std::f32::consts::TAU / 16_000.0).sin() * 0.5;
            ((s * 32767.0) as i16).to_le_bytes()
        })
        .collect();
    std::fs::write(&raw, tone).unwrap();
    std::fs::write(dir.path().join(".asoundrc"), asoundrc(&raw)).unwrap();
    let out = Command::new(std::env::current_exe().unwrap())
        .args([
            "a_capture_device_delivers_its_audio_as_16k_chunks",
            "--exact",
            "--nocapture",
        ])
        .env("HOME", dir.path())
        .env("JARVIS_MIC_CHILD", "1")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let result = stdout
        .lines()
        .find_map(|l| l.strip_prefix("RESULT "))
        .expect("no result");
    let n: Vec<usize> = result.split(' ').map(|n| n.parse().unwrap()).collect();
    let (total, loud, crossings) = (n[0], n[1], n[2]);
    assert!(total >= 32_000);
    // The tone at its level (above 0.2 for 74% of its samples; the file plugin may deliver the
    // recording more than once) and its pitch: 440 Hz crosses zero 880 times a second.
    assert!(loud >= 11_000, "{loud} loud samples");
    assert!(
        (860..=900).contains(&crossings),
        "{crossings} zero crossings"
    );
}

#[test]
fn a_missing_microphone_is_a_clear_error() {
    let Err(e) = jarvis_voice::device::open_microphone(Some("alsa:no_such_device_here")) else {
        panic!("opened a device that does not exist")
    };
    let e = e.to_string();
    assert!(
        e.contains("no_such_device_here") && e.contains("--list-devices"),
        "{e}"
    );
    let Err(e) = jarvis_voice::device::open_microphone(Some("not a device name")) else {
        panic!("parsed a bad name")
    };
    assert!(e.to_string().contains("--list-devices"), "{e}");
}
