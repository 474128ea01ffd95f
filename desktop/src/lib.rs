//! The desktop app's link to the node, without the window: find the running node of a home or
//! start one, and talk to its local API (voice state, push-to-talk, mute). The window itself
//! (`main.rs`) only shows the node's own UI, so the app and the browser show the same thing and
//! the app has no API of its own.
//!
//! The node is found and its token read by the `jarvis` command itself (`jarvis ui --print
//! --json`), so the app never duplicates where the node keeps them.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use serde_json::Value;

/// How long a node the app started may take to open its API.
const START_TIMEOUT: Duration = Duration::from_secs(60);

/// The `jarvis` command: next to this executable (an installed app bundles both), else on PATH.
pub fn jarvis_command(explicit: Option<&Path>) -> PathBuf {
    if let Some(path) = explicit {
        return path.to_owned();
    }
    let sibling = std::env::current_exe()
        .ok()
        .and_then(|exe| exe.parent().map(|dir| dir.join("jarvis")));
    match sibling {
        Some(path) if path.is_file() => path,
        _ => PathBuf::from("jarvis"),
    }
}

/// The running node's UI address, split into what the window opens and what the app's own
/// requests need.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Link {
    /// `http://127.0.0.1:PORT/#token=…`, what the window opens.
    pub url: String,
    /// `http://127.0.0.1:PORT`.
    pub origin: String,
    pub token: String,
}

impl Link {
    /// From `jarvis ui --print --json`'s output.
    ///
    /// # Errors
    /// Output that is not the UI's address.
    pub fn parse(output: &[u8]) -> Result<Self> {
        let value: Value =
            serde_json::from_slice(output).context("`jarvis ui --json` printed no JSON")?;
        let url = value
            .get("url")
            .and_then(Value::as_str)
            .ok_or_else(|| anyhow!("`jarvis ui --json` printed no url"))?;
        let (origin, token) = url
            .split_once("/#token=")
            .ok_or_else(|| anyhow!("the UI address {url} carries no token"))?;
        if !origin.starts_with("http://127.0.0.1:") && !origin.starts_with("http://[::1]:") {
            bail!("the node's UI is not on a loopback address: {origin}");
        }
        Ok(Self {
            url: url.to_owned(),
            origin: origin.to_owned(),
            token: token.to_owned(),
        })
    }
}

/// How to reach or start the node.
#[derive(Debug, Clone, Default)]
pub struct NodeConfig {
    /// The `jarvis` executable.
    pub jarvis: PathBuf,
    /// The node's home (default: `jarvis`'s own, `JARVIS_HOME` or the platform's).
    pub home: Option<PathBuf>,
    /// Extra arguments for `jarvis up` when the app starts the node.
    pub up_args: Vec<String>,
}

impl NodeConfig {
    fn command(&self) -> Command {
        let mut cmd = Command::new(&self.jarvis);
        if let Some(home) = &self.home {
            cmd.arg("--home").arg(home);
        }
        cmd
    }

    /// The running node's link, if one is running and answers.
    ///
    /// # Errors
    /// `jarvis` missing or failing for another reason than no node running.
    pub fn running(&self) -> Result<Option<Link>> {
        let out = self
            .command()
            .args(["ui", "--print", "--json"])
            .stdin(Stdio::null())
            .output()
            .with_context(|| {
                format!(
                    "cannot run {} (install Jarvis, or pass --jarvis PATH)",
                    self.jarvis.display()
                )
            })?;
        if !out.status.success() {
            let stderr = String::from_utf8_lossy(&out.stderr);
            // No node, or a home with nothing in it yet (`jarvis up` makes a personal one).
            if stderr.contains("no node is running") || stderr.contains("not a Jarvis home yet") {
                return Ok(None);
            }
            bail!("`jarvis ui` failed: {}", stderr.trim());
        }
        let link = Link::parse(&out.stdout)?;
        // api.json can outlive a node that was killed: it counts only if it answers.
        Ok(get(&link, "/v1/status").is_ok().then_some(link))
    }

    /// Starts `jarvis up` and waits until its API answers. The node's log goes to `log`.
    ///
    /// # Errors
    /// The node failing to start (its last log line says why) or not answering in time.
    pub fn start(&self, log: &Path) -> Result<(Link, Child)> {
        let log_file = {
            let mut options = std::fs::OpenOptions::new();
            options.write(true).create(true).truncate(true);
            #[cfg(unix)]
            std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
            options
                .open(log)
                .with_context(|| format!("cannot write the node's log {}", log.display()))?
        };
        let mut child = self
            .command()
            .arg("up")
            .args(&self.up_args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log_file)
            .spawn()
            .with_context(|| format!("cannot start {} up", self.jarvis.display()))?;
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Some(status) = child.try_wait()? {
                let log = std::fs::read_to_string(log).unwrap_or_default();
                let why = log
                    .lines()
                    .rev()
                    .find(|l| !l.trim().is_empty())
                    .unwrap_or("no output");
                bail!("the node stopped ({status}): {why}");
            }
            if let Some(link) = self.running()? {
                return Ok((link, child));
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                bail!(
                    "the node did not open its API within {}s (log: {})",
                    START_TIMEOUT.as_secs(),
                    log.display()
                );
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

fn client() -> Result<reqwest::blocking::Client> {
    reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .context("making an HTTP client")
}

/// GET a JSON route of the node's API.
///
/// # Errors
/// The node not answering, or answering with an error.
pub fn get(link: &Link, path: &str) -> Result<Value> {
    let response = client()?
        .get(format!("{}{path}", link.origin))
        .bearer_auth(&link.token)
        .send()
        .with_context(|| format!("the node at {} does not answer", link.origin))?;
    answer(response)
}

/// POST JSON to a route of the node's API.
///
/// # Errors
/// The node not answering, or answering with an error.
pub fn post(link: &Link, path: &str, body: &Value) -> Result<Value> {
    let response = client()?
        .post(format!("{}{path}", link.origin))
        .bearer_auth(&link.token)
        .json(body)
        .send()
        .with_context(|| format!("the node at {} does not answer", link.origin))?;
    answer(response)
}

fn answer(response: reqwest::blocking::Response) -> Result<Value> {
    let status = response.status();
    let body: Value = response.json().unwrap_or(Value::Null);
    if !status.is_success() {
        let message = body
            .get("error")
            .and_then(Value::as_str)
            .unwrap_or("no reason given");
        bail!("the node refused ({status}): {message}");
    }
    Ok(body)
}

/// The tray's tooltip for a voice state (`GET /v1/voice`).
pub fn tray_tooltip(voice: &Value) -> String {
    let state = voice.get("state").and_then(Value::as_str).unwrap_or("?");
    let muted = voice.get("muted").and_then(Value::as_bool).unwrap_or(false);
    let wake_word = voice
        .get("wake_word")
        .and_then(Value::as_bool)
        .unwrap_or(true);
    match (muted, state) {
        (true, _) => "Jarvis: microphone muted".to_owned(),
        (false, "idle") if !wake_word => "Jarvis: press Push to talk".to_owned(),
        (false, "idle") => "Jarvis: say \"hey Jarvis\"".to_owned(),
        (false, "off") => "Jarvis: voice off".to_owned(),
        (false, state) => format!("Jarvis: {state}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_link_is_parsed_from_jarvis_ui() {
        let link = Link::parse(br#"{"url":"http://127.0.0.1:7767/#token=abc","opened":false}"#)
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(link.origin, "http://127.0.0.1:7767");
        assert_eq!(link.token, "abc");
    }

    #[test]
    fn a_link_elsewhere_or_without_a_token_is_refused() {
        for bad in [
            &br#"{"url":"http://example.com:7767/#token=abc"}"#[..],
            br#"{"url":"http://127.0.0.1:7767/"}"#,
            br#"{"opened":false}"#,
            b"not json",
        ] {
            assert!(
                Link::parse(bad).is_err(),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn the_tray_says_what_voice_is_doing() {
        let tip = |v: &str| tray_tooltip(&serde_json::from_str(v).unwrap_or(Value::Null));
        assert_eq!(
            tip(r#"{"state":"idle","muted":false}"#),
            "Jarvis: say \"hey Jarvis\""
        );
        assert_eq!(
            tip(r#"{"state":"speaking","muted":false}"#),
            "Jarvis: speaking"
        );
        assert_eq!(
            tip(r#"{"state":"idle","muted":true}"#),
            "Jarvis: microphone muted"
        );
        assert_eq!(
            tip(r#"{"state":"idle","muted":false,"wake_word":false}"#),
            "Jarvis: press Push to talk"
        );
    }
}
