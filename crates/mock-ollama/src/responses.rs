//! `/v1/responses`, the OpenAI Responses API, in the shapes Ollama's
//! compatibility layer gives it (`openai/responses.go`,
//! `middleware/openai.go`): the input turned into a chat, the answer as
//! one `response` document or as SSE events with names, each carrying its
//! `sequence_number`.
//!
//! What Ollama writes, which this follows: `status` is `completed` even
//! when `max_output_tokens` cut the answer (`incomplete_details` stays
//! `null`), the request's settings are echoed (`instructions`,
//! `temperature`, `top_p`, `max_output_tokens`, `tools`, `text`,
//! `truncation`, `reasoning`, `background`), and an empty input only
//! loads the model and answers an empty text.

use std::collections::VecDeque;

use bytes::Bytes;
use serde_json::{json, Value};

use crate::respond;
use crate::shapes::{event, Generation};

/// The text of a message's content: a string, or its text parts joined.
fn text_of(content: &Value) -> String {
    match content {
        Value::String(s) => s.clone(),
        Value::Array(parts) => parts
            .iter()
            .filter(|p| {
                matches!(
                    p.get("type").and_then(Value::as_str),
                    Some("input_text" | "output_text")
                )
            })
            .filter_map(|p| p.get("text").and_then(Value::as_str))
            .collect(),
        _ => String::new(),
    }
}

/// The input as `/api/chat` messages, as Ollama's `FromResponsesRequest`
/// builds them: `instructions` as the system message, a string input as
/// the user's message, items as messages (tool outputs as `tool`).
pub(crate) fn messages(request: &Value) -> Vec<Value> {
    let mut out = Vec::new();
    let instructions = request
        .get("instructions")
        .and_then(Value::as_str)
        .unwrap_or("");
    if !instructions.is_empty() {
        out.push(json!({"role": "system", "content": instructions}));
    }
    match request.get("input") {
        Some(Value::String(s)) if !s.is_empty() => {
            out.push(json!({"role": "user", "content": s}));
        }
        Some(Value::Array(items)) => {
            for item in items {
                let role = item.get("role").and_then(Value::as_str);
                match (item.get("type").and_then(Value::as_str), role) {
                    (Some("message"), Some(role)) | (None, Some(role)) => {
                        let content = text_of(item.get("content").unwrap_or(&Value::Null));
                        out.push(json!({"role": role, "content": content}));
                    }
                    (Some("function_call_output"), _) => {
                        let output = item.get("output").map(text_of).unwrap_or_default();
                        out.push(json!({"role": "tool", "content": output}));
                    }
                    _ => {}
                }
            }
        }
        _ => {}
    }
    out
}

fn item_id(generation: &Generation) -> String {
    format!("msg_{}", generation.id.trim_start_matches("resp_"))
}

fn part(text: &str) -> Value {
    json!({"type": "output_text", "text": text, "annotations": [], "logprobs": []})
}

fn message_item(generation: &Generation, status: &str, content: Value) -> Value {
    json!({"id": item_id(generation), "type": "message", "status": status, "role": "assistant", "content": content})
}

fn usage(generation: &Generation) -> Value {
    json!({
        "input_tokens": generation.prompt_tokens,
        "output_tokens": generation.tokens,
        "total_tokens": generation.prompt_tokens + generation.tokens as u64,
        "input_tokens_details": {"cached_tokens": 0},
        "output_tokens_details": {"reasoning_tokens": 0},
    })
}

/// The `response` object with the request's settings echoed, as Ollama's
/// `ToResponse` and its stream converter build it.
fn object(generation: &Generation, status: &str, output: Value, usage: Value) -> Value {
    let request = &generation.request;
    let field = |name: &str| request.get(name).filter(|v| !v.is_null());
    let instructions = field("instructions")
        .filter(|v| v.as_str() != Some(""))
        .cloned()
        .unwrap_or(Value::Null);
    let effort = request.pointer("/reasoning/effort").and_then(Value::as_str);
    let summary = request
        .pointer("/reasoning/summary")
        .and_then(Value::as_str);
    let reasoning = match (
        effort.filter(|s| !s.is_empty()),
        summary.filter(|s| !s.is_empty()),
    ) {
        (None, None) => Value::Null,
        (effort, summary) => json!({"effort": effort, "summary": summary}),
    };
    let completed_at = if status == "completed" {
        json!(respond::unix_now())
    } else {
        Value::Null
    };
    json!({
        "id": generation.id,
        "object": "response",
        "created_at": generation.created,
        "completed_at": completed_at,
        "status": status,
        "incomplete_details": null,
        "model": generation.model,
        "previous_response_id": null,
        "instructions": instructions,
        "output": output,
        "error": null,
        "tools": field("tools").cloned().unwrap_or_else(|| json!([])),
        "tool_choice": "auto",
        "truncation": field("truncation").cloned().unwrap_or_else(|| json!("disabled")),
        "parallel_tool_calls": true,
        "text": {"format": request.pointer("/text/format").cloned().unwrap_or_else(|| json!({"type": "text"}))},
        "top_p": field("top_p").cloned().unwrap_or_else(|| json!(1.0)),
        "presence_penalty": 0,
        "frequency_penalty": 0,
        "top_logprobs": 0,
        "temperature": field("temperature").cloned().unwrap_or_else(|| json!(1.0)),
        "reasoning": reasoning,
        "usage": usage,
        "max_output_tokens": field("max_output_tokens").cloned().unwrap_or(Value::Null),
        "max_tool_calls": null,
        "store": false,
        "background": field("background").cloned().unwrap_or(json!(false)),
        "service_tier": "default",
        "metadata": {},
        "safety_identifier": null,
        "prompt_cache_key": null,
    })
}

/// An event whose data carries its name as `type` and its place in the
/// stream as `sequence_number`.
fn numbered(name: &str, sequence: usize, mut data: Value) -> Bytes {
    if let Value::Object(map) = &mut data {
        map.insert("type".into(), json!(name));
        map.insert("sequence_number".into(), json!(sequence));
    }
    event(name, &data)
}

/// Events before the first delta: two when nothing is generated, four
/// when a message is.
fn opening(generation: &Generation) -> usize {
    if generation.tokens > 0 {
        4
    } else {
        2
    }
}

/// `response.created`, `response.in_progress`, and when there is text
/// `response.output_item.added` and `response.content_part.added`.
pub(crate) fn head(generation: &Generation, out: &mut VecDeque<Bytes>) {
    let pending = object(generation, "in_progress", json!([]), Value::Null);
    out.push_back(numbered(
        "response.created",
        0,
        json!({"response": pending}),
    ));
    out.push_back(numbered(
        "response.in_progress",
        1,
        json!({"response": pending}),
    ));
    if generation.tokens > 0 {
        out.push_back(numbered(
            "response.output_item.added",
            2,
            json!({"output_index": 0, "item": message_item(generation, "in_progress", json!([]))}),
        ));
        out.push_back(numbered(
            "response.content_part.added",
            3,
            json!({"item_id": item_id(generation), "output_index": 0, "content_index": 0, "part": part("")}),
        ));
    }
}

/// Token `i`: a `response.output_text.delta`.
pub(crate) fn delta(generation: &Generation, i: usize, token: &str) -> Bytes {
    numbered(
        "response.output_text.delta",
        opening(generation) + i,
        json!({"item_id": item_id(generation), "output_index": 0, "content_index": 0, "delta": token, "logprobs": []}),
    )
}

/// The closing events of the text (when there is text), then
/// `response.completed` with the whole response and its usage.
pub(crate) fn tail(generation: &Generation, out: &mut VecDeque<Bytes>) {
    let mut sequence = opening(generation) + generation.tokens;
    let mut output = json!([]);
    if generation.tokens > 0 {
        let text = generation.text();
        let id = item_id(generation);
        let item = message_item(generation, "completed", json!([part(&text)]));
        for (name, data) in [
            (
                "response.output_text.done",
                json!({"item_id": id, "output_index": 0, "content_index": 0, "text": text, "logprobs": []}),
            ),
            (
                "response.content_part.done",
                json!({"item_id": id, "output_index": 0, "content_index": 0, "part": part(&text)}),
            ),
            (
                "response.output_item.done",
                json!({"output_index": 0, "item": item}),
            ),
        ] {
            out.push_back(numbered(name, sequence, data));
            sequence += 1;
        }
        output = json!([item]);
    }
    let response = object(generation, "completed", output, usage(generation));
    out.push_back(numbered(
        "response.completed",
        sequence,
        json!({"response": response}),
    ));
}

/// The answer as one `response` document: always one message item, its
/// text empty when nothing was generated.
pub(crate) fn whole(generation: &Generation, text: String) -> Value {
    let item = message_item(generation, "completed", json!([part(&text)]));
    object(generation, "completed", json!([item]), usage(generation))
}
