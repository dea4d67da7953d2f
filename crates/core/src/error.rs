use bytes::Bytes;
use http::StatusCode;
use serde::Serialize;

use crate::ApiFamily;

/// An error answer in the shape the client expects from Ollama.
///
/// Ollama's native API answers `{"error": "..."}`; its OpenAI-compatible
/// `/v1` API answers `{"error": {"message", "type", "param", "code"}}`,
/// which the OpenAI SDKs parse (the Responses API too); its Anthropic
/// Messages API `{"type": "error", "error": {"type", "message"}}`. Corral answers each family in its own
/// shape, so a client cannot tell a refusal by Corral from one by Ollama
/// except by the `X-Corral-Reason` header.
///
/// ```
/// use corral_core::{ApiFamily, ErrorBody};
/// use http::StatusCode;
///
/// let body = ErrorBody::new(StatusCode::BAD_REQUEST, "model is required");
/// let anthropic: serde_json::Value = serde_json::from_slice(&body.to_bytes(ApiFamily::Anthropic)).unwrap();
/// assert_eq!(anthropic["type"], "error");
/// assert_eq!(anthropic["error"]["type"], "invalid_request_error");
/// assert_eq!(body.to_bytes(ApiFamily::Ollama), r#"{"error":"model is required"}"#);
/// let openai: serde_json::Value = serde_json::from_slice(&body.to_bytes(ApiFamily::OpenAi)).unwrap();
/// assert_eq!(openai["error"]["message"], "model is required");
/// assert_eq!(openai["error"]["type"], "invalid_request_error");
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ErrorBody {
    status: StatusCode,
    message: String,
    code: Option<&'static str>,
}

#[derive(Serialize)]
struct Native<'a> {
    error: &'a str,
}

#[derive(Serialize)]
struct OpenAi<'a> {
    error: OpenAiError<'a>,
}

#[derive(Serialize)]
struct Anthropic<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    error: AnthropicError<'a>,
}

#[derive(Serialize)]
struct AnthropicError<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    message: &'a str,
}

/// The Responses API's stream error event.
#[derive(Serialize)]
struct ResponsesEvent<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    code: &'a str,
    message: &'a str,
    param: Option<()>,
}

#[derive(Serialize)]
struct OpenAiError<'a> {
    message: &'a str,
    #[serde(rename = "type")]
    kind: &'static str,
    param: Option<()>,
    code: Option<&'static str>,
}

impl ErrorBody {
    /// An error with `status` saying `message`.
    pub fn new(status: StatusCode, message: impl Into<String>) -> Self {
        Self {
            status,
            message: message.into(),
            code: None,
        }
    }

    /// The same, with a machine-readable code (Corral's reason), which the
    /// OpenAI shape carries in `error.code`.
    pub fn with_code(mut self, code: &'static str) -> Self {
        self.code = Some(code);
        self
    }

    /// The status the answer goes out with.
    pub fn status(&self) -> StatusCode {
        self.status
    }

    /// The message.
    pub fn message(&self) -> &str {
        &self.message
    }

    /// The JSON document for `family`.
    pub fn to_bytes(&self, family: ApiFamily) -> Bytes {
        let json = match family {
            ApiFamily::Ollama => serde_json::to_vec(&Native {
                error: &self.message,
            }),
            ApiFamily::Anthropic => serde_json::to_vec(&Anthropic {
                kind: "error",
                error: AnthropicError {
                    kind: anthropic_type(self.status),
                    message: &self.message,
                },
            }),
            ApiFamily::OpenAi | ApiFamily::OpenAiResponses => serde_json::to_vec(&OpenAi {
                error: OpenAiError {
                    message: &self.message,
                    kind: openai_type(self.status),
                    param: None,
                    code: self.code,
                },
            }),
        };
        // Serializing a struct of strings cannot fail; should it ever,
        // a fixed body is better than a panic in the error path.
        Bytes::from(json.unwrap_or_else(|_| br#"{"error":"internal error"}"#.to_vec()))
    }
}

/// The error type OpenAI's API (and Ollama's `/v1`) gives for a status.
fn openai_type(status: StatusCode) -> &'static str {
    match status.as_u16() {
        400 | 413 | 422 => "invalid_request_error",
        401 => "authentication_error",
        403 => "permission_error",
        404 => "not_found_error",
        429 => "rate_limit_error",
        _ => "api_error",
    }
}

/// The error type Anthropic's API gives for a status.
fn anthropic_type(status: StatusCode) -> &'static str {
    match status.as_u16() {
        400 | 422 => "invalid_request_error",
        401 => "authentication_error",
        403 => "permission_error",
        404 => "not_found_error",
        413 => "request_too_large",
        429 => "rate_limit_error",
        503 | 529 => "overloaded_error",
        _ => "api_error",
    }
}

/// The frame that ends a stream with an error, one whole line (or SSE
/// event) so that clients which parse each read on its own still see it.
///
/// Ollama reports an error after a stream has started as a last NDJSON line
/// `{"error": "..."}` inside the 200 response; the OpenAI-compatible API
/// sends it as an SSE `data:` event; the Anthropic Messages API and the
/// Responses API as a named `error` event in their own shapes.
///
/// ```
/// use corral_core::{stream_error_frame, ApiFamily};
///
/// assert_eq!(stream_error_frame(ApiFamily::Ollama, "upstream closed"), "{\"error\":\"upstream closed\"}\n");
/// assert!(stream_error_frame(ApiFamily::OpenAi, "x").starts_with(b"data: {\"error\":{"));
/// assert!(stream_error_frame(ApiFamily::Anthropic, "x").starts_with(b"event: error\ndata: {\"type\":\"error\""));
/// assert!(stream_error_frame(ApiFamily::OpenAiResponses, "x").starts_with(b"event: error\ndata: {\"type\":\"error\""));
/// ```
pub fn stream_error_frame(family: ApiFamily, message: &str) -> Bytes {
    let body = ErrorBody::new(StatusCode::INTERNAL_SERVER_ERROR, message).to_bytes(family);
    let mut frame = Vec::with_capacity(body.len() + 8);
    match family {
        ApiFamily::Ollama => {
            frame.extend_from_slice(&body);
            frame.push(b'\n');
        }
        ApiFamily::OpenAi => {
            frame.extend_from_slice(b"data: ");
            frame.extend_from_slice(&body);
            frame.extend_from_slice(b"\n\n");
        }
        ApiFamily::Anthropic | ApiFamily::OpenAiResponses => {
            let body = match family {
                ApiFamily::OpenAiResponses => serde_json::to_vec(&ResponsesEvent {
                    kind: "error",
                    code: "upstream_error",
                    message,
                    param: None,
                })
                .map(Bytes::from)
                .unwrap_or(body),
                _ => body,
            };
            frame.extend_from_slice(b"event: error\ndata: ");
            frame.extend_from_slice(&body);
            frame.extend_from_slice(b"\n\n");
        }
    }
    Bytes::from(frame)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_are_escaped_as_json() {
        let body = ErrorBody::new(StatusCode::BAD_REQUEST, "bad \"quote\"\n");
        let parsed: serde_json::Value =
            serde_json::from_slice(&body.to_bytes(ApiFamily::Ollama)).unwrap();
        assert_eq!(parsed["error"], "bad \"quote\"\n");
    }

    #[test]
    fn the_openai_shape_carries_type_param_and_code() {
        let body =
            ErrorBody::new(StatusCode::TOO_MANY_REQUESTS, "slow down").with_code("rate_limited");
        let parsed: serde_json::Value =
            serde_json::from_slice(&body.to_bytes(ApiFamily::OpenAi)).unwrap();
        assert_eq!(
            parsed,
            serde_json::json!({"error": {"message": "slow down", "type": "rate_limit_error", "param": null, "code": "rate_limited"}})
        );
    }
}
