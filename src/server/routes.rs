//! The server's smaller endpoints and its access check: `GET /v1/models/{id}`, `POST /tokenize`
//! and `POST /detokenize` (llama.cpp's server forms), and `--api-key`.

use serde::Deserialize;
use serde_json::{json, Value};
use tiny_http::Request;

use super::api::{parse, ApiError};
use super::Shared;

/// `GET /v1/models/{id}`: the model, if `id` names it.
pub(super) fn model(id: &str, shared: &Shared) -> Result<Value, ApiError> {
    if id == shared.config.model_id {
        Ok(model_object(shared))
    } else {
        Err(ApiError {
            status: 404,
            code: Some("model_not_found"),
            ..ApiError::invalid(
                format!(
                    "no model `{id}` here (this server runs `{}`)",
                    shared.config.model_id
                ),
                Some("model"),
            )
        })
    }
}

/// The model as `/v1/models` lists it.
pub(super) fn model_object(shared: &Shared) -> Value {
    json!({"id": shared.config.model_id, "object": "model", "created": 0, "owned_by": "qsparse"})
}

#[derive(Debug, Deserialize)]
struct TokenizeRequest {
    content: String,
}

#[derive(Debug, Deserialize)]
struct DetokenizeRequest {
    tokens: Vec<u64>,
}

/// `POST /tokenize` `{"content": TEXT}` -> `{"tokens": [ids]}`, as a prompt is encoded.
pub(super) fn tokenize(body: &[u8], shared: &Shared) -> Result<Value, ApiError> {
    let r: TokenizeRequest = parse(body)?;
    let tokens = shared
        .tokenizer
        .encode(&r.content)
        .map_err(|e| ApiError::invalid(e.to_string(), Some("content")))?;
    Ok(json!({ "tokens": tokens }))
}

/// `POST /detokenize` `{"tokens": [ids]}` -> `{"content": TEXT}`; an id outside the vocabulary
/// is a 400 naming it.
pub(super) fn detokenize(body: &[u8], shared: &Shared) -> Result<Value, ApiError> {
    let r: DetokenizeRequest = parse(body)?;
    let vocab = shared.tokenizer.vocab_size() as u64;
    if let Some(&bad) = r.tokens.iter().find(|&&t| t >= vocab) {
        return Err(ApiError::invalid(
            format!("token {bad} is outside the vocabulary ({vocab} tokens)"),
            Some("tokens"),
        ));
    }
    let ids: Vec<u32> = r.tokens.iter().map(|&t| t as u32).collect();
    Ok(json!({ "content": shared.tokenizer.decode(&ids) }))
}

/// With `--api-key`: whether the request carries `Authorization: Bearer KEY`, compared in time
/// that does not depend on where the two differ.
pub(super) fn authorized(request: &Request, key: Option<&str>) -> bool {
    let Some(key) = key else {
        return true;
    };
    let given = request
        .headers()
        .iter()
        .find(|h| h.field.equiv("Authorization"))
        .and_then(|h| h.value.as_str().strip_prefix("Bearer "))
        .unwrap_or("");
    constant_time_eq(given.as_bytes(), key.as_bytes())
}

/// Equal bytes, every byte compared whatever the first difference.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    let mut diff = a.len() ^ b.len();
    for (i, &k) in b.iter().enumerate() {
        diff |= usize::from(a.get(i).copied().unwrap_or(0) ^ k);
    }
    diff == 0
}

/// The 401 answer to a request without the key.
pub(super) fn unauthorized() -> ApiError {
    ApiError {
        status: 401,
        kind: "invalid_request_error",
        message: "a valid API key is needed: send `Authorization: Bearer KEY`".into(),
        param: None,
        code: Some("invalid_api_key"),
    }
}

#[cfg(test)]
mod tests {
    use super::constant_time_eq;

    #[test]
    fn keys_compare_whole() {
        assert!(constant_time_eq(b"secret", b"secret"));
        for other in [&b"secreT"[..], b"secre", b"secrets", b""] {
            assert!(!constant_time_eq(other, b"secret"), "{other:?}");
        }
    }
}
