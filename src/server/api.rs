//! The OpenAI-compatible request bodies qsparse accepts, their validation, and the JSON it
//! answers with. Unknown fields are ignored (clients send many); known fields of the wrong type or
//! out of range are a 400 naming the field.

use serde::Deserialize;
use serde_json::{json, Value};

use crate::runtime::template::Message;

/// A 4xx answer: status, OpenAI error type, message, and the offending field.
#[derive(Debug, Clone)]
pub struct ApiError {
    pub status: u16,
    pub kind: &'static str,
    pub message: String,
    pub param: Option<&'static str>,
    pub code: Option<&'static str>,
}

impl ApiError {
    pub fn invalid(message: impl Into<String>, param: Option<&'static str>) -> ApiError {
        ApiError {
            status: 400,
            kind: "invalid_request_error",
            message: message.into(),
            param,
            code: None,
        }
    }

    /// OpenAI's error body.
    pub fn body(&self) -> Value {
        json!({"error": {
            "message": self.message,
            "type": self.kind,
            "param": self.param,
            "code": self.code,
        }})
    }
}

/// `stop`: one string or several.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum Stop {
    One(String),
    Many(Vec<String>),
}

/// Message content: a string, or an array of parts of which the text ones are used.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum Content {
    Text(String),
    Parts(Vec<Part>),
}

#[derive(Debug, Clone, Deserialize)]
pub struct Part {
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default)]
    pub text: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct ChatMessage {
    pub role: String,
    pub content: Option<Content>,
}

/// The qsparse extension: `"qsparse": {"sparsity": 0.5}`.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct Extension {
    pub sparsity: Option<f32>,
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct StreamOptions {
    #[serde(default)]
    pub include_usage: bool,
}

/// The fields both endpoints share.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct Common {
    pub max_tokens: Option<u64>,
    pub max_completion_tokens: Option<u64>,
    pub temperature: Option<f32>,
    pub top_p: Option<f32>,
    pub seed: Option<u64>,
    pub stop: Option<Stop>,
    #[serde(default)]
    pub stream: bool,
    pub stream_options: Option<StreamOptions>,
    pub n: Option<u64>,
    pub qsparse: Option<Extension>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct ChatRequest {
    pub messages: Vec<ChatMessage>,
    #[serde(flatten)]
    pub common: Common,
}

/// `prompt`: a string or an array holding one string.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum Prompt {
    One(String),
    Many(Vec<String>),
}

#[derive(Debug, Clone, Deserialize)]
pub struct CompletionRequest {
    pub prompt: Prompt,
    #[serde(flatten)]
    pub common: Common,
}

/// Parse a JSON body into `T`, with errors a client can act on.
pub fn parse<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    let value: Value = serde_json::from_slice(body)
        .map_err(|e| ApiError::invalid(format!("the body is not valid JSON: {e}"), None))?;
    if !value.is_object() {
        return Err(ApiError::invalid("the body must be a JSON object", None));
    }
    serde_json::from_value(value)
        .map_err(|e| ApiError::invalid(format!("invalid request: {e}"), None))
}

/// Server-side limits and defaults for a request's settings.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// The longest reply a request may ask for.
    pub max_tokens: usize,
    /// The sparsity when a request names none.
    pub default_sparsity: f32,
}

/// A request's settings, validated.
#[derive(Debug, Clone)]
pub struct Settings {
    pub max_tokens: usize,
    pub temperature: Option<f32>,
    pub top_p: Option<f32>,
    pub seed: Option<u64>,
    pub stop: Vec<String>,
    pub stream: bool,
    pub include_usage: bool,
    pub sparsity: f32,
}

impl Common {
    pub fn validate(
        &self,
        default_max_tokens: usize,
        limits: Limits,
    ) -> Result<Settings, ApiError> {
        let max_tokens = match self.max_completion_tokens.or(self.max_tokens) {
            None => default_max_tokens.min(limits.max_tokens),
            Some(0) => {
                return Err(ApiError::invalid(
                    "max_tokens must be at least 1",
                    Some("max_tokens"),
                ))
            }
            Some(n) if n > limits.max_tokens as u64 => {
                return Err(ApiError::invalid(
                    format!(
                        "max_tokens {n} is above this server's limit of {}",
                        limits.max_tokens
                    ),
                    Some("max_tokens"),
                ))
            }
            Some(n) => n as usize,
        };
        if let Some(t) = self.temperature {
            if !(0.0..=2.0).contains(&t) {
                return Err(ApiError::invalid(
                    format!("temperature {t} is outside [0, 2]"),
                    Some("temperature"),
                ));
            }
        }
        if let Some(p) = self.top_p {
            if !(p > 0.0 && p <= 1.0) {
                return Err(ApiError::invalid(
                    format!("top_p {p} is outside (0, 1]"),
                    Some("top_p"),
                ));
            }
        }
        if let Some(n) = self.n {
            if n != 1 {
                return Err(ApiError::invalid("only n = 1 is supported", Some("n")));
            }
        }
        let stop = match &self.stop {
            None => Vec::new(),
            Some(Stop::One(s)) => vec![s.clone()],
            Some(Stop::Many(v)) if v.len() <= 4 => v.clone(),
            Some(Stop::Many(_)) => {
                return Err(ApiError::invalid("at most 4 stop sequences", Some("stop")))
            }
        };
        let sparsity = match self.qsparse.as_ref().and_then(|q| q.sparsity) {
            None => limits.default_sparsity,
            Some(s) if (0.0..1.0).contains(&s) => s,
            Some(s) => {
                return Err(ApiError::invalid(
                    format!("qsparse.sparsity {s} is outside [0, 1)"),
                    Some("qsparse.sparsity"),
                ))
            }
        };
        Ok(Settings {
            max_tokens,
            temperature: self.temperature,
            top_p: self.top_p,
            seed: self.seed,
            stop,
            stream: self.stream,
            include_usage: self
                .stream_options
                .as_ref()
                .is_some_and(|o| o.include_usage),
            sparsity,
        })
    }
}

impl ChatRequest {
    /// The conversation as template messages ("developer" counts as "system").
    pub fn messages(&self) -> Result<Vec<Message>, ApiError> {
        if self.messages.is_empty() {
            return Err(ApiError::invalid(
                "messages must not be empty",
                Some("messages"),
            ));
        }
        self.messages
            .iter()
            .map(|m| {
                let role = match m.role.as_str() {
                    "system" | "developer" => "system",
                    "user" => "user",
                    "assistant" => "assistant",
                    other => {
                        return Err(ApiError::invalid(
                            format!(
                                "message role `{other}` is not supported (system, user, assistant)"
                            ),
                            Some("messages"),
                        ))
                    }
                };
                let content = match &m.content {
                    None => String::new(),
                    Some(Content::Text(t)) => t.clone(),
                    Some(Content::Parts(parts)) => parts
                        .iter()
                        .filter(|p| p.kind == "text")
                        .filter_map(|p| p.text.clone())
                        .collect::<Vec<_>>()
                        .join(""),
                };
                Ok(Message::new(role, &content))
            })
            .collect()
    }
}

impl CompletionRequest {
    pub fn prompt(&self) -> Result<&str, ApiError> {
        match &self.prompt {
            Prompt::One(s) => Ok(s),
            Prompt::Many(v) if v.len() == 1 => Ok(&v[0]),
            Prompt::Many(_) => Err(ApiError::invalid(
                "prompt must be one string (batches are not supported)",
                Some("prompt"),
            )),
        }
    }
}

/// Token counts of a finished request.
pub fn usage(prompt: usize, completion: usize) -> Value {
    json!({"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion})
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: Limits = Limits {
        max_tokens: 100,
        default_sparsity: 0.0,
    };

    #[test]
    fn wrong_types_and_ranges_are_named() {
        let e = parse::<ChatRequest>(br#"{"messages": "hi"}"#).unwrap_err();
        assert!(e.message.contains("invalid request"), "{}", e.message);
        assert!(parse::<ChatRequest>(b"{not json")
            .unwrap_err()
            .message
            .contains("not valid JSON"));
        assert!(parse::<ChatRequest>(b"[1]")
            .unwrap_err()
            .message
            .contains("JSON object"));

        let r: ChatRequest =
            parse(br#"{"messages": [{"role": "user", "content": "x"}], "temperature": 3}"#)
                .unwrap();
        assert_eq!(
            r.common.validate(16, LIMITS).unwrap_err().param,
            Some("temperature")
        );
        let r: ChatRequest =
            parse(br#"{"messages": [{"role": "user", "content": "x"}], "max_tokens": 1000}"#)
                .unwrap();
        assert_eq!(
            r.common.validate(16, LIMITS).unwrap_err().param,
            Some("max_tokens")
        );
        let r: ChatRequest = parse(
            br#"{"messages": [{"role": "tool", "content": "x"}], "qsparse": {"sparsity": 0.5}, "stop": "\n", "extra": 1}"#,
        )
        .unwrap();
        let s = r.common.validate(16, LIMITS).unwrap();
        assert_eq!((s.sparsity, s.max_tokens, s.stop.len()), (0.5, 16, 1));
        assert!(r.messages().is_err());
    }

    #[test]
    fn content_parts_are_joined() {
        let r: ChatRequest = parse(
            br#"{"messages": [{"role": "developer", "content": [{"type": "text", "text": "a"}, {"type": "image_url"}, {"type": "text", "text": "b"}]}]}"#,
        )
        .unwrap();
        assert_eq!(r.messages().unwrap(), [Message::new("system", "ab")]);
    }
}
