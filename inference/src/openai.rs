//! The OpenAI chat-completions request, sans-IO: bytes in, the engine's request (or an error in
//! OpenAI's shape) out. The node's HTTP handlers (`node/src/openai.rs`) are the shell; this is
//! what the fuzzer drives.

use crate::protocol::{ChatMessage, Sampling};
use crate::supervisor::Request;

/// An error as OpenAI's API reports it: `{"error": {"message", "type", "param", "code"}}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    /// The HTTP status.
    pub status: u16,
    /// `invalid_request_error`, `rate_limit_error`, `server_error`.
    pub kind: &'static str,
    /// A machine-readable code, such as `model_not_found` or `context_length_exceeded`.
    pub code: Option<&'static str>,
    /// The request field at fault.
    pub param: Option<&'static str>,
    /// What is wrong and what to do, for a person.
    pub message: String,
}

impl ApiError {
    /// An error.
    pub fn new(
        status: u16,
        kind: &'static str,
        code: Option<&'static str>,
        param: Option<&'static str>,
        message: &str,
    ) -> Self {
        Self {
            status,
            kind,
            code,
            param,
            message: message.to_owned(),
        }
    }

    /// The JSON body.
    pub fn body(&self) -> serde_json::Value {
        serde_json::json!({
            "error": { "message": self.message, "type": self.kind, "param": self.param, "code": self.code }
        })
    }
}

/// A 400 `invalid_request_error`.
pub fn bad_request(message: &str, param: Option<&'static str>) -> ApiError {
    ApiError::new(400, "invalid_request_error", None, param, message)
}

/// A chat completion request, checked.
#[derive(Debug, Clone)]
pub struct ChatCompletion {
    /// What the engine is asked.
    pub request: Request,
    /// Server-sent events instead of one response.
    pub stream: bool,
    /// A last chunk with the token counts (`stream_options.include_usage`).
    pub include_usage: bool,
    /// The model asked for (one of those served).
    pub model: String,
}

/// Message content: a string, or (newer clients) a list of parts of which the text ones count.
#[derive(serde::Deserialize)]
#[serde(untagged)]
enum Content {
    Text(String),
    Parts(Vec<Part>),
}

#[derive(serde::Deserialize)]
struct Part {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    text: Option<String>,
}

#[derive(serde::Deserialize)]
struct InMessage {
    role: String,
    #[serde(default)]
    content: Option<Content>,
}

#[derive(serde::Deserialize)]
#[serde(untagged)]
enum Stop {
    One(String),
    Many(Vec<String>),
}

#[derive(serde::Deserialize)]
struct StreamOptions {
    #[serde(default)]
    include_usage: bool,
}

#[derive(serde::Deserialize)]
struct ChatRequest {
    model: String,
    messages: Vec<InMessage>,
    #[serde(default)]
    stream: bool,
    #[serde(default)]
    stream_options: Option<StreamOptions>,
    #[serde(default)]
    max_tokens: Option<u32>,
    #[serde(default)]
    max_completion_tokens: Option<u32>,
    #[serde(default)]
    temperature: Option<f32>,
    #[serde(default)]
    top_p: Option<f32>,
    #[serde(default)]
    seed: Option<i64>,
    #[serde(default)]
    stop: Option<Stop>,
    #[serde(default)]
    n: Option<u32>,
    #[serde(default)]
    user: Option<String>,
}

/// Reads the body of a `/v1/chat/completions` request for one of `models`, those this node
/// serves (its own, and its org's GPU peers').
///
/// # Errors
/// An [`ApiError`] (400, or 404 for another model) saying what is wrong, in OpenAI's terms.
pub fn parse_chat(body: &[u8], models: &[String]) -> Result<ChatCompletion, ApiError> {
    let body: ChatRequest = serde_json::from_slice(body).map_err(|e| {
        bad_request(
            &format!("The body is not a chat completion request: {e}."),
            None,
        )
    })?;
    if !models.contains(&body.model) {
        return Err(ApiError::new(
            404,
            "invalid_request_error",
            Some("model_not_found"),
            Some("model"),
            &format!(
                "The model `{}` does not exist on this node; it serves {} (GET /v1/models).",
                body.model,
                models
                    .iter()
                    .map(|m| format!("`{m}`"))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        ));
    }
    if body.n.is_some_and(|n| n != 1) {
        return Err(bad_request("Only n = 1 is supported.", Some("n")));
    }
    if body.messages.is_empty() {
        return Err(bad_request(
            "`messages` must hold at least one message.",
            Some("messages"),
        ));
    }
    let mut messages = Vec::with_capacity(body.messages.len());
    for (i, m) in body.messages.into_iter().enumerate() {
        let role = if m.role == "developer" {
            "system".to_owned()
        } else {
            m.role
        };
        if !matches!(role.as_str(), "system" | "user" | "assistant") {
            return Err(bad_request(
                &format!(
                    "messages[{i}].role must be system, developer, user or assistant, not {role:?}."
                ),
                Some("messages"),
            ));
        }
        let content = match m.content {
            None => String::new(),
            Some(Content::Text(text)) => text,
            Some(Content::Parts(parts)) => {
                let mut text = String::new();
                for part in parts {
                    if part.kind != "text" {
                        return Err(bad_request(
                            &format!(
                                "messages[{i}] has a {:?} part; this model reads text only.",
                                part.kind
                            ),
                            Some("messages"),
                        ));
                    }
                    text.push_str(part.text.as_deref().unwrap_or_default());
                }
                text
            }
        };
        if content.contains('\0') {
            return Err(bad_request(
                &format!("messages[{i}].content holds a NUL character."),
                Some("messages"),
            ));
        }
        messages.push(ChatMessage { role, content });
    }
    let temperature = body.temperature.unwrap_or(1.0);
    if !(0.0..=2.0).contains(&temperature) {
        return Err(bad_request(
            "temperature must be between 0 and 2.",
            Some("temperature"),
        ));
    }
    let top_p = body.top_p.unwrap_or(1.0);
    if !(0.0..=1.0).contains(&top_p) || top_p == 0.0 {
        return Err(bad_request(
            "top_p must be above 0 and at most 1.",
            Some("top_p"),
        ));
    }
    let stop = match body.stop {
        None => Vec::new(),
        Some(Stop::One(s)) => vec![s],
        Some(Stop::Many(v)) if v.len() <= 4 => v,
        Some(Stop::Many(_)) => return Err(bad_request("At most 4 stop sequences.", Some("stop"))),
    };
    let max_tokens = body
        .max_completion_tokens
        .or(body.max_tokens)
        .unwrap_or(1024);
    if max_tokens == 0 {
        return Err(bad_request(
            "max_tokens must be at least 1.",
            Some("max_tokens"),
        ));
    }
    let sampling = Sampling {
        max_tokens,
        temperature,
        top_p,
        // OpenAI seeds are 64-bit; llama.cpp's are 32-bit.
        seed: body.seed.map(|s| (s as u64 & u64::from(u32::MAX)) as u32),
        stop,
    };
    let include_usage = body.stream_options.is_some_and(|o| o.include_usage);
    let request = Request {
        client: body.user.unwrap_or_else(|| "openai".to_owned()),
        messages,
        sampling,
        prefix: String::new(),
        voice: false,
        traceparent: None,
    };
    Ok(ChatCompletion {
        request,
        stream: body.stream,
        include_usage,
        model: body.model,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_a_typical_request() {
        let body = br#"{"model":"m","messages":[{"role":"developer","content":"be brief"},
            {"role":"user","content":[{"type":"text","text":"hi "},{"type":"text","text":"there"}]}],
            "stream":true,"stream_options":{"include_usage":true},"max_tokens":7,"temperature":0,
            "seed":-1,"stop":"END","user":"alice"}"#;
        let chat = parse_chat(body, &["m".to_owned()]).unwrap();
        assert!(chat.stream && chat.include_usage);
        assert_eq!(chat.request.client, "alice");
        assert_eq!(
            chat.request.messages[0],
            ChatMessage::new("system", "be brief")
        );
        assert_eq!(chat.request.messages[1].content, "hi there");
        assert_eq!(chat.request.sampling.max_tokens, 7);
        assert_eq!(chat.request.sampling.seed, Some(u32::MAX));
        assert_eq!(chat.request.sampling.stop, vec!["END".to_owned()]);
    }

    #[test]
    fn says_what_is_wrong() {
        let cases: &[(&[u8], u16, Option<&str>)] = &[
            (b"{", 400, None),
            (br#"{"model":"m"}"#, 400, None),
            (br#"{"model":"x","messages":[{"role":"user","content":"hi"}]}"#, 404, Some("model")),
            (br#"{"model":"m","messages":[]}"#, 400, Some("messages")),
            (br#"{"model":"m","messages":[{"role":"tool","content":"hi"}]}"#, 400, Some("messages")),
            (br#"{"model":"m","messages":[{"role":"user","content":[{"type":"image_url"}]}]}"#, 400, Some("messages")),
            (br#"{"model":"m","n":2,"messages":[{"role":"user","content":"hi"}]}"#, 400, Some("n")),
            (br#"{"model":"m","temperature":3,"messages":[{"role":"user","content":"hi"}]}"#, 400, Some("temperature")),
            (br#"{"model":"m","max_tokens":0,"messages":[{"role":"user","content":"hi"}]}"#, 400, Some("max_tokens")),
            (br#"{"model":"m","stop":["a","b","c","d","e"],"messages":[{"role":"user","content":"hi"}]}"#, 400, Some("stop")),
        ];
        for (body, status, param) in cases {
            let error = parse_chat(body, &["m".to_owned()]).unwrap_err();
            assert_eq!(
                (error.status, error.param),
                (*status, *param),
                "{}",
                String::from_utf8_lossy(body)
            );
            assert!(!error.message.is_empty());
            assert_eq!(error.body()["error"]["type"], error.kind);
        }
    }
}
