//! Output for people or for scripts (`--json`): one JSON object per result on stdout; text for
//! people on stdout; errors always on stderr.

use serde_json::Value;

#[derive(Debug, Clone, Copy)]
pub struct Output {
    pub json: bool,
}

impl Output {
    /// Prints `value` as one JSON line, or `human` as text.
    pub fn emit(&self, value: &Value, human: impl FnOnce() -> String) {
        if self.json {
            println!("{value}");
        } else {
            let text = human();
            if !text.is_empty() {
                println!("{text}");
            }
        }
    }

    /// A note for people (stderr, so a script reading stdout never sees it); silent with --json.
    pub fn note(&self, text: &str) {
        if !self.json {
            eprintln!("{text}");
        }
    }
}
