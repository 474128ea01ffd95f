//! What the node's integration tests share: the `jarvis` binary on a home, and a started
//! `jarvis up --json` read up to its "up" line.
// Each test file uses part of this.
#![allow(
    dead_code,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

use std::io::{BufRead, BufReader, Lines};
use std::path::Path;
use std::process::{Child, ChildStdout, Command, Stdio};

use serde_json::Value;

/// The passphrase of every test home.
pub const PASSPHRASE: &str = "pw";

/// `jarvis --home HOME`, with the test passphrase and a low scrypt work factor (new key files
/// only; the library's tests cover the default).
pub fn jarvis(home: &Path) -> Command {
    let mut cmd = Command::new(assert_cmd::cargo::cargo_bin("jarvis"));
    cmd.env_remove("JARVIS_HOME")
        .env("JARVIS_PASSPHRASE", PASSPHRASE)
        .env("JARVIS_KDF_WORK_FACTOR", "10")
        .arg("--home")
        .arg(home);
    cmd
}

/// Spawns `cmd` (a `jarvis … up --json …`) and reads its first line, which must be the "up"
/// event; returns the process, the rest of its output, and that event.
pub fn spawn_up(cmd: &mut Command) -> (Child, Lines<BufReader<ChildStdout>>, Value) {
    let mut child = cmd.stdout(Stdio::piped()).spawn().unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let first: Value = serde_json::from_str(&lines.next().unwrap().unwrap()).unwrap();
    assert_eq!(first["event"], "up", "{first}");
    (child, lines, first)
}

/// Runs `cmd ARGS --json`, which must succeed, and returns its JSON.
pub fn json_ok(mut cmd: Command, args: &[&str]) -> Value {
    let out = cmd.args(args).arg("--json").output().unwrap();
    assert!(
        out.status.success(),
        "jarvis {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// Polls `f` until it returns Some (generous deadline: these machines are shared and slow).
pub fn wait_for<T>(what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}

/// Enrols a GPU peer `name` in the org of `admin`, in `home`.
pub fn enrol_gpu(admin: &Path, home: &Path, name: &str) {
    let request = json_ok(jarvis(home), &["gpu", "request", "--name", name])["request"]
        .as_str()
        .unwrap()
        .to_owned();
    let bundle = json_ok(
        jarvis(admin),
        &["admin", "enroll", "--request", &request, "--role", "gpu"],
    )["bundle"]
        .as_str()
        .unwrap()
        .to_owned();
    json_ok(jarvis(home), &["gpu", "install", &bundle]);
}

/// Starts `cmd` (a `jarvis … gpu up --json --listen ONE_ADDRESS …`), which must have its model
/// ready; returns the process, its peer id and its address.
pub fn gpu_up(cmd: &mut Command) -> (Child, String, String) {
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let up: Value = serde_json::from_str(&lines.next().unwrap().unwrap()).unwrap();
    assert_eq!(up["event"], "up", "{up}");
    assert_eq!(
        up["model"]["state"], "ready",
        "run `jarvis models pull` first: {up}"
    );
    let listening: Value = serde_json::from_str(&lines.next().unwrap().unwrap()).unwrap();
    assert_eq!(listening["event"], "listening", "{listening}");
    let address = listening["address"].as_str().unwrap().to_owned();
    (child, up["peer_id"].as_str().unwrap().to_owned(), address)
}

/// A microphone the test speaks into: `alsa:jarvis_mic` (declared in `DIR/.asoundrc`; run the
/// node with HOME=DIR) reads raw 16 kHz samples from a FIFO, which a thread fills in real time
/// with `sample(i)` for i = 0, 1, 2, … (from -1 to 1) until `stop`.
pub fn fifo_microphone(
    dir: &Path,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    sample: impl Fn(u64) -> f32 + Send + 'static,
) -> std::thread::JoinHandle<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    /// `O_NONBLOCK` on Linux.
    const O_NONBLOCK: i32 = 0o4000;
    let fifo = dir.join("mic.fifo");
    assert!(
        Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .unwrap()
            .success()
    );
    std::fs::write(
        dir.join(".asoundrc"),
        format!(
            "pcm.jarvis_mic {{\n type plug\n slave {{\n  pcm {{ type file; slave.pcm null; file \"/dev/null\"; infile \"{}\"; format \"raw\" }}\n  format S16_LE\n  rate 16000\n  channels 1\n }}\n}}\n",
            fifo.display()
        ),
    )
    .unwrap();
    // Read and write: opening does not wait for a reader, and the FIFO stays open while the
    // node opens and closes the device.
    // Non-blocking: if the node stops reading, the writer drops audio (as a real microphone
    // overruns) instead of hanging the test.
    let mut pipe = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(O_NONBLOCK)
        .open(&fifo)
        .unwrap();
    std::thread::spawn(move || {
        let started = std::time::Instant::now();
        let mut sent = 0u64;
        while !stop.load(std::sync::atomic::Ordering::Relaxed) {
            // 100 ms at a time, paced like a real microphone.
            let chunk: Vec<u8> = (sent..sent + 1600)
                .flat_map(|i| {
                    ((sample(i).clamp(-1.0, 1.0) * f32::from(i16::MAX)) as i16).to_le_bytes()
                })
                .collect();
            match pipe.write(&chunk) {
                Ok(_) => {}
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                Err(_) => return,
            }
            sent += 1600;
            let due = started + std::time::Duration::from_millis(sent / 16);
            std::thread::sleep(due.saturating_duration_since(std::time::Instant::now()));
        }
    })
}
