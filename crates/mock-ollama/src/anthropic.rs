//! `/v1/messages`, the Anthropic Messages API, in the shapes Ollama's
//! compatibility layer gives it (`anthropic/anthropic.go`,
//! `middleware/anthropic.go`): the request checked and turned into a chat,
//! the answer as one `message` document or as SSE events with names.
//!
//! What Ollama writes, which this follows rather than Anthropic's own API:
//! `stop_sequence` is left out (Ollama omits it when empty), `stop_reason`
//! is `end_turn` or `max_tokens`, `content` is `null` when nothing was
//! generated, `message_delta` carries both `input_tokens` and
//! `output_tokens`, no `ping` is sent, a full queue is 503
//! `overloaded_error` (not Anthropic's 529).

use std::collections::VecDeque;

use bytes::Bytes;
use serde_json::{json, Value};

use crate::shapes::{event, Generation};

/// Ollama's own checks, in its order, before the model is looked up.
pub(crate) fn validate(request: &Value) -> Result<(), String> {
    match request.get("max_tokens") {
        None | Some(Value::Null) => return Err(MAX_TOKENS.into()),
        Some(Value::Number(n)) => match n.as_i64() {
            Some(n) if n > 0 => {}
            Some(_) => return Err(MAX_TOKENS.into()),
            None => return Err(unmarshal(&format!("number {n}"), "max_tokens", "int")),
        },
        Some(other) => return Err(unmarshal(kind(other), "max_tokens", "int")),
    }
    match request.get("messages") {
        Some(Value::Array(messages)) if !messages.is_empty() => Ok(()),
        None | Some(Value::Null | Value::Array(_)) => Err("messages is required".into()),
        Some(other) => Err(unmarshal(
            kind(other),
            "messages",
            "[]anthropic.MessageParam",
        )),
    }
}

const MAX_TOKENS: &str = "max_tokens is required and must be positive";

/// Go's message for a field of the wrong JSON type.
fn unmarshal(found: &str, field: &str, go_type: &str) -> String {
    format!("json: cannot unmarshal {found} into Go struct field MessagesRequest.{field} of type {go_type}")
}

fn kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "bool",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

/// The text blocks of a content list, joined as Ollama joins them.
fn text_of(content: &Value) -> String {
    match content {
        Value::String(s) => s.clone(),
        Value::Array(blocks) => blocks
            .iter()
            .filter(|b| b.get("type").and_then(Value::as_str) == Some("text"))
            .filter_map(|b| b.get("text").and_then(Value::as_str))
            .collect(),
        _ => String::new(),
    }
}

/// The conversation as `/api/chat` messages: `system` first, text blocks
/// joined, tool results as `tool` messages (before the text of a user
/// turn, after it otherwise), as Ollama's `FromMessagesRequest` does.
pub(crate) fn messages(request: &Value) -> Vec<Value> {
    let mut out = Vec::new();
    let system = request.get("system").map(text_of).unwrap_or_default();
    if !system.is_empty() {
        out.push(json!({"role": "system", "content": system}));
    }
    for message in request
        .get("messages")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let role = message
            .get("role")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_lowercase();
        let content = message.get("content").unwrap_or(&Value::Null);
        let results: Vec<Value> = content
            .as_array()
            .into_iter()
            .flatten()
            .filter(|b| b.get("type").and_then(Value::as_str) == Some("tool_result"))
            .map(|b| json!({"role": "tool", "content": text_of(b.get("content").unwrap_or(&Value::Null))}))
            .collect();
        let text = text_of(content);
        let user = role == "user";
        if user {
            out.extend(results.iter().cloned());
        }
        if !text.is_empty() {
            out.push(json!({"role": role, "content": text}));
        }
        if !user {
            out.extend(results);
        }
    }
    out
}

/// Ollama's `mapStopReason` for a text answer.
fn stop_reason(generation: &Generation) -> &'static str {
    match generation.done_reason() {
        "stop" => "end_turn",
        "length" => "max_tokens",
        _ => "stop_sequence",
    }
}

/// `message_start`, and `content_block_start` when there is text.
pub(crate) fn head(generation: &Generation, out: &mut VecDeque<Bytes>) {
    out.push_back(event(
        "message_start",
        &json!({
            "type": "message_start",
            "message": {
                "id": generation.id, "type": "message", "role": "assistant", "model": generation.model,
                "content": [],
                "usage": {"input_tokens": generation.prompt_tokens, "output_tokens": 0},
            },
        }),
    ));
    if generation.tokens > 0 {
        out.push_back(event(
            "content_block_start",
            &json!({"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}),
        ));
    }
}

/// One token: a `content_block_delta`.
pub(crate) fn delta(token: &str) -> Bytes {
    event(
        "content_block_delta",
        &json!({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": token}}),
    )
}

/// `content_block_stop` (when a block was open), `message_delta` with the
/// stop reason and usage, `message_stop`.
pub(crate) fn tail(generation: &Generation, out: &mut VecDeque<Bytes>) {
    if generation.tokens > 0 {
        out.push_back(event(
            "content_block_stop",
            &json!({"type": "content_block_stop", "index": 0}),
        ));
    }
    out.push_back(event(
        "message_delta",
        &json!({
            "type": "message_delta",
            "delta": {"stop_reason": stop_reason(generation)},
            "usage": {"input_tokens": generation.prompt_tokens, "output_tokens": generation.tokens},
        }),
    ));
    out.push_back(event("message_stop", &json!({"type": "message_stop"})));
}

/// The answer as one `message` document.
pub(crate) fn whole(generation: &Generation, text: String) -> Value {
    // Ollama builds the content from a nil slice: `null` when empty.
    let content = if text.is_empty() {
        Value::Null
    } else {
        json!([{"type": "text", "text": text}])
    };
    json!({
        "id": generation.id, "type": "message", "role": "assistant", "model": generation.model,
        "content": content,
        "stop_reason": stop_reason(generation),
        "usage": {"input_tokens": generation.prompt_tokens, "output_tokens": generation.tokens},
    })
}
