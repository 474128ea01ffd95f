//! Output for people or for scripts (`--json`): one JSON object per result on stdout; text for
//! people on stdout; errors always on stderr.

use serde_json::Value;

#[derive(Debug, Clone, Copy)]
pub struct Output {
    pub json: bool,
}

impl Output {
    /// Prints `value` as one JSON line, or `human` as text. A reader that went away (a closed
    /// pipe) is not an error worth dying for: a node keeps running and stops cleanly.
    pub fn emit(&self, value: &Value, human: impl FnOnce() -> String) {
        use std::io::Write;
        let mut stdout = std::io::stdout().lock();
        let _ = if self.json {
            writeln!(stdout, "{value}")
        } else {
            let text = human();
            if text.is_empty() {
                Ok(())
            } else {
                writeln!(stdout, "{text}")
            }
        };
        let _ = stdout.flush();
    }

    /// A note for people (stderr, so a script reading stdout never sees it); silent with --json.
    pub fn note(&self, text: &str) {
        use std::io::Write;
        if !self.json {
            let _ = writeln!(std::io::stderr(), "{text}");
        }
    }
}
