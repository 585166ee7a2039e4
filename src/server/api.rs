//! The OpenAI-compatible request bodies qsparse accepts, their validation, and the JSON it
//! answers with. Every OpenAI parameter is either honoured or refused with a 400 naming it (a
//! neutral value, e.g. `frequency_penalty: 0`, is accepted); fields OpenAI does not define are
//! ignored; known fields of the wrong type or out of range are a 400 naming the field.

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
    /// llama.cpp's sampling extensions.
    pub top_k: Option<u64>,
    pub min_p: Option<f32>,
    pub repeat_penalty: Option<f32>,
    /// Chat: `true` for each token's log-probability; completions: the number of candidates.
    pub logprobs: Option<Value>,
    /// Chat: the number of candidates per token (with `logprobs: true`).
    pub top_logprobs: Option<u64>,
    /// OpenAI parameters qsparse does not implement: refused unless neutral.
    pub frequency_penalty: Option<f32>,
    pub presence_penalty: Option<f32>,
    pub logit_bias: Option<Value>,
    pub response_format: Option<Value>,
    pub tools: Option<Value>,
    pub tool_choice: Option<Value>,
    pub functions: Option<Value>,
    pub function_call: Option<Value>,
    pub echo: Option<bool>,
    pub best_of: Option<u64>,
    pub suffix: Option<Value>,
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
    /// The sparsity when a request names none (with a profile: the S whose bytes it reads).
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
    /// Whether the request named its sparsity (else the server's default, maybe a profile).
    pub sparsity_named: bool,
    pub top_k: Option<usize>,
    pub min_p: Option<f32>,
    pub repeat_penalty: Option<f32>,
    /// Log-probabilities: None, or the number of candidates per token.
    pub logprobs: Option<usize>,
}

/// The most candidates per token a request may ask for (OpenAI's limit).
const MAX_TOP_LOGPROBS: u64 = 20;

impl Common {
    /// Refuse an OpenAI parameter this server does not implement, unless its value changes
    /// nothing.
    fn refuse_unsupported(&self) -> Result<(), ApiError> {
        let unsupported = |param: &'static str| {
            Err(ApiError::invalid(
                format!("`{param}` is not supported by this server"),
                Some(param),
            ))
        };
        let empty = |v: &Option<Value>| match v {
            None | Some(Value::Null) => true,
            Some(Value::Object(o)) => o.is_empty(),
            Some(Value::Array(a)) => a.is_empty(),
            Some(Value::String(s)) => s.is_empty(),
            Some(_) => false,
        };
        if self.frequency_penalty.is_some_and(|v| v != 0.0) {
            return unsupported("frequency_penalty");
        }
        if self.presence_penalty.is_some_and(|v| v != 0.0) {
            return unsupported("presence_penalty");
        }
        let text_format = self
            .response_format
            .as_ref()
            .is_some_and(|f| f.get("type").and_then(Value::as_str) == Some("text"));
        for (param, value) in [
            ("logit_bias", &self.logit_bias),
            ("tools", &self.tools),
            ("functions", &self.functions),
            ("suffix", &self.suffix),
        ] {
            if !empty(value) {
                return unsupported(param);
            }
        }
        if !empty(&self.response_format) && !text_format {
            return unsupported("response_format");
        }
        let no_tool =
            |v: &Option<Value>| empty(v) || v.as_ref().and_then(Value::as_str) == Some("none");
        if !no_tool(&self.tool_choice) {
            return unsupported("tool_choice");
        }
        if !no_tool(&self.function_call) {
            return unsupported("function_call");
        }
        if self.echo == Some(true) {
            return unsupported("echo");
        }
        if self.best_of.is_some_and(|n| n != 1) {
            return unsupported("best_of");
        }
        Ok(())
    }

    /// The log-probabilities asked for: chat's `logprobs: true` (+ `top_logprobs`), or
    /// completions' `logprobs: N`.
    fn logprobs(&self, chat: bool) -> Result<Option<usize>, ApiError> {
        let asked = match (&self.logprobs, chat) {
            (None | Some(Value::Null), _) | (Some(Value::Bool(false)), true) => None,
            (Some(Value::Bool(true)), true) => Some(self.top_logprobs.unwrap_or(0)),
            (Some(v), false) if v.is_u64() => Some(v.as_u64().unwrap_or(0)),
            (Some(_), true) => {
                return Err(ApiError::invalid(
                    "logprobs must be a boolean",
                    Some("logprobs"),
                ))
            }
            (Some(_), false) => {
                return Err(ApiError::invalid(
                    "logprobs must be a number of candidates (0 to 20)",
                    Some("logprobs"),
                ))
            }
        };
        if self.top_logprobs.is_some() && !(chat && asked.is_some()) {
            return Err(ApiError::invalid(
                "top_logprobs needs logprobs: true (chat completions)",
                Some("top_logprobs"),
            ));
        }
        match asked {
            Some(n) if n > MAX_TOP_LOGPROBS => Err(ApiError::invalid(
                format!("at most {MAX_TOP_LOGPROBS} log-probability candidates per token"),
                Some(if chat { "top_logprobs" } else { "logprobs" }),
            )),
            Some(_) if self.stream => Err(ApiError::invalid(
                "logprobs with stream is not supported by this server",
                Some("logprobs"),
            )),
            n => Ok(n.map(|n| n as usize)),
        }
    }

    /// The request's settings, checked against `limits` (`chat`: the chat endpoint).
    pub fn validate(
        &self,
        default_max_tokens: usize,
        limits: Limits,
        chat: bool,
    ) -> Result<Settings, ApiError> {
        self.refuse_unsupported()?;
        let logprobs = self.logprobs(chat)?;
        if let Some(p) = self.min_p {
            if !(0.0..=1.0).contains(&p) {
                return Err(ApiError::invalid(
                    format!("min_p {p} is outside [0, 1]"),
                    Some("min_p"),
                ));
            }
        }
        if let Some(p) = self.repeat_penalty {
            if !(p > 0.0 && p.is_finite()) {
                return Err(ApiError::invalid(
                    format!("repeat_penalty {p} is not positive"),
                    Some("repeat_penalty"),
                ));
            }
        }
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
            sparsity_named: self.qsparse.as_ref().is_some_and(|q| q.sparsity.is_some()),
            top_k: self.top_k.map(|k| usize::try_from(k).unwrap_or(usize::MAX)),
            min_p: self.min_p,
            repeat_penalty: self.repeat_penalty,
            logprobs,
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
                    Some(Content::Parts(parts)) => {
                        if let Some(p) = parts.iter().find(|p| p.kind != "text") {
                            return Err(ApiError::invalid(
                                format!(
                                    "content parts of type `{}` are not supported (text only)",
                                    p.kind
                                ),
                                Some("messages"),
                            ));
                        }
                        parts
                            .iter()
                            .filter_map(|p| p.text.clone())
                            .collect::<Vec<_>>()
                            .join("")
                    }
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
            r.common.validate(16, LIMITS, true).unwrap_err().param,
            Some("temperature")
        );
        let r: ChatRequest =
            parse(br#"{"messages": [{"role": "user", "content": "x"}], "max_tokens": 1000}"#)
                .unwrap();
        assert_eq!(
            r.common.validate(16, LIMITS, true).unwrap_err().param,
            Some("max_tokens")
        );
        let r: ChatRequest = parse(
            br#"{"messages": [{"role": "tool", "content": "x"}], "qsparse": {"sparsity": 0.5}, "stop": "\n", "extra": 1}"#,
        )
        .unwrap();
        let s = r.common.validate(16, LIMITS, true).unwrap();
        assert_eq!((s.sparsity, s.max_tokens, s.stop.len()), (0.5, 16, 1));
        assert!(r.messages().is_err());
    }

    #[test]
    fn content_parts_are_joined_and_images_refused() {
        let r: ChatRequest = parse(
            br#"{"messages": [{"role": "developer", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]}]}"#,
        )
        .unwrap();
        assert_eq!(r.messages().unwrap(), [Message::new("system", "ab")]);
        let r: ChatRequest = parse(
            br#"{"messages": [{"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "image_url"}]}]}"#,
        )
        .unwrap();
        assert!(r.messages().unwrap_err().message.contains("image_url"));
    }

    /// Each parameter qsparse does not implement is refused, naming it, unless neutral; the
    /// ones it implements reach the settings.
    #[test]
    fn parameters_are_honoured_or_refused_by_name() {
        let validate = |extra: &str, chat: bool| {
            let body = format!(
                r#"{{"messages": [{{"role": "user", "content": "x"}}], "prompt": "x" {extra}}}"#
            );
            let r: ChatRequest = parse(body.as_bytes()).unwrap();
            r.common.validate(16, LIMITS, chat)
        };
        for (extra, param) in [
            (r#", "frequency_penalty": 0.5"#, "frequency_penalty"),
            (r#", "presence_penalty": -1"#, "presence_penalty"),
            (r#", "logit_bias": {"50256": -100}"#, "logit_bias"),
            (
                r#", "response_format": {"type": "json_object"}"#,
                "response_format",
            ),
            (r#", "tools": [{"type": "function"}]"#, "tools"),
            (r#", "tool_choice": "auto""#, "tool_choice"),
            (r#", "echo": true"#, "echo"),
            (r#", "best_of": 2"#, "best_of"),
            (r#", "min_p": 2"#, "min_p"),
            (r#", "logprobs": 3"#, "logprobs"),
            (r#", "top_logprobs": 2"#, "top_logprobs"),
            (r#", "logprobs": true, "top_logprobs": 21"#, "top_logprobs"),
            (r#", "logprobs": true, "stream": true"#, "logprobs"),
        ] {
            assert_eq!(
                validate(extra, true).unwrap_err().param,
                Some(param),
                "{extra}"
            );
        }
        let neutral = r#", "frequency_penalty": 0, "presence_penalty": 0, "logit_bias": {}, "response_format": {"type": "text"}, "tool_choice": "none", "echo": false, "best_of": 1"#;
        assert!(validate(neutral, true).is_ok());
        let s = validate(r#", "top_k": 5, "min_p": 0.1, "repeat_penalty": 1.2, "logprobs": true, "top_logprobs": 3"#, true).unwrap();
        assert_eq!(
            (s.top_k, s.min_p, s.repeat_penalty, s.logprobs),
            (Some(5), Some(0.1), Some(1.2), Some(3))
        );
        assert_eq!(
            validate(r#", "logprobs": 2"#, false).unwrap().logprobs,
            Some(2)
        );
        assert_eq!(
            validate(r#", "logprobs": true"#, false).unwrap_err().param,
            Some("logprobs")
        );
    }
}
