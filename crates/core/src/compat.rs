//! Answers Corral writes itself (a cached answer, a default under load)
//! in the shapes of Ollama's Anthropic Messages and OpenAI Responses
//! endpoints: whole, or as the SSE events their official SDKs' stream
//! helpers build a turn from, one event per frame.
//!
//! ```
//! use corral_core::compat::{anthropic_answer, responses_answer};
//!
//! let (content_type, frames) = anthropic_answer("llama3", "Hi", &Default::default(), true);
//! assert_eq!(content_type, "text/event-stream");
//! assert!(frames[0].starts_with(b"event: message_start\n"));
//! assert!(frames.last().unwrap().starts_with(b"event: message_stop\n"));
//!
//! let (_, whole) = responses_answer("llama3", "Hi", &Default::default(), false);
//! let doc: serde_json::Value = serde_json::from_slice(&whole[0]).unwrap();
//! assert_eq!(doc["output"][0]["content"][0]["text"], "Hi");
//! ```

use bytes::Bytes;
use serde_json::{json, Map, Value};

use crate::unix_now;

fn event(name: &str, data: &Value) -> Bytes {
    Bytes::from(format!("event: {name}\ndata: {data}\n\n"))
}

/// An Anthropic answer saying `text`, whole or as its events.
/// An Anthropic Messages answer saying `text` (`fields`: its `stop_reason`
/// and `usage`, when known), whole or as its events; its content type
/// and frames.
pub fn anthropic_answer(
    model: &str,
    text: &str,
    fields: &Map<String, Value>,
    stream: bool,
) -> (String, Vec<Bytes>) {
    let stop = fields
        .get("stop_reason")
        .cloned()
        .unwrap_or(json!("end_turn"));
    let usage = fields
        .get("usage")
        .cloned()
        .unwrap_or(json!({"input_tokens": 0, "output_tokens": 0}));
    let message = |content: Value, stop: Value| {
        json!({"id": "msg_corral_cache", "type": "message", "role": "assistant", "model": model,
            "content": content, "stop_reason": stop, "usage": usage})
    };
    if !stream {
        let doc = message(json!([{"type": "text", "text": text}]), stop);
        return (
            "application/json".into(),
            vec![Bytes::from(serde_json::to_vec(&doc).unwrap_or_default())],
        );
    }
    let output = usage.get("output_tokens").cloned().unwrap_or(json!(0));
    let frames = vec![
        event(
            "message_start",
            &json!({"type": "message_start", "message": message(json!([]), Value::Null)}),
        ),
        event(
            "content_block_start",
            &json!({"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}),
        ),
        event(
            "content_block_delta",
            &json!({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": text}}),
        ),
        event(
            "content_block_stop",
            &json!({"type": "content_block_stop", "index": 0}),
        ),
        event(
            "message_delta",
            &json!({"type": "message_delta", "delta": {"stop_reason": stop}, "usage": {"output_tokens": output}}),
        ),
        event("message_stop", &json!({"type": "message_stop"})),
    ];
    ("text/event-stream".into(), frames)
}

/// A Responses answer saying `text`, whole or as its events.
/// A Responses API answer saying `text` (`fields`: its `usage`, when
/// known), whole or as its events; its content type and frames.
pub fn responses_answer(
    model: &str,
    text: &str,
    fields: &Map<String, Value>,
    stream: bool,
) -> (String, Vec<Bytes>) {
    let created = unix_now();
    let usage = fields.get("usage").cloned().unwrap_or(Value::Null);
    let part = |t: &str| json!({"type": "output_text", "text": t, "annotations": []});
    let item = |t: &str, status: &str| {
        json!({"id": "msg_corral_cache", "type": "message", "status": status, "role": "assistant",
            "content": [part(t)]})
    };
    let response = |status: &str, output: Value, usage: Value| {
        json!({"id": "resp_corral_cache", "object": "response", "created_at": created,
            "status": status, "model": model, "output": output, "parallel_tool_calls": true,
            "tool_choice": "auto", "tools": [], "usage": usage})
    };
    if !stream {
        let doc = response("completed", json!([item(text, "completed")]), usage);
        return (
            "application/json".into(),
            vec![Bytes::from(serde_json::to_vec(&doc).unwrap_or_default())],
        );
    }
    let at = |n: u64, mut data: Value| {
        data["sequence_number"] = json!(n);
        data
    };
    let ids = json!({"item_id": "msg_corral_cache", "output_index": 0, "content_index": 0});
    let with_ids = |mut data: Value| {
        if let (Some(d), Some(i)) = (data.as_object_mut(), ids.as_object()) {
            d.extend(i.clone());
        }
        data
    };
    let frames = vec![
        event(
            "response.created",
            &at(
                0,
                json!({"type": "response.created", "response": response("in_progress", json!([]), Value::Null)}),
            ),
        ),
        event(
            "response.output_item.added",
            &at(
                1,
                json!({"type": "response.output_item.added", "output_index": 0,
                "item": {"id": "msg_corral_cache", "type": "message", "status": "in_progress",
                    "role": "assistant", "content": []}}),
            ),
        ),
        event(
            "response.content_part.added",
            &at(
                2,
                with_ids(json!({"type": "response.content_part.added", "part": part("")})),
            ),
        ),
        event(
            "response.output_text.delta",
            &at(
                3,
                with_ids(json!({"type": "response.output_text.delta", "delta": text})),
            ),
        ),
        event(
            "response.output_text.done",
            &at(
                4,
                with_ids(json!({"type": "response.output_text.done", "text": text})),
            ),
        ),
        event(
            "response.content_part.done",
            &at(
                5,
                with_ids(json!({"type": "response.content_part.done", "part": part(text)})),
            ),
        ),
        event(
            "response.output_item.done",
            &at(
                6,
                json!({"type": "response.output_item.done", "output_index": 0,
                "item": item(text, "completed")}),
            ),
        ),
        event(
            "response.completed",
            &at(
                7,
                json!({"type": "response.completed",
                "response": response("completed", json!([item(text, "completed")]), usage)}),
            ),
        ),
    ];
    ("text/event-stream".into(), frames)
}
