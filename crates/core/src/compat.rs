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

/// A Responses API answer saying `text` (`fields`: its `usage`, when
/// known), whole or as its events; its content type and frames.
pub fn responses_answer(
    model: &str,
    text: &str,
    fields: &Map<String, Value>,
    stream: bool,
) -> (String, Vec<Bytes>) {
    let usage = fields.get("usage").cloned().unwrap_or(Value::Null);
    let answer = Responses {
        model,
        created: unix_now(),
    };
    if !stream {
        let doc = answer.response("completed", json!([output_item(text, "completed")]), usage);
        return (
            "application/json".into(),
            vec![Bytes::from(serde_json::to_vec(&doc).unwrap_or_default())],
        );
    }
    let frames = answer
        .events(text, usage)
        .into_iter()
        .enumerate()
        .map(|(n, mut data)| {
            data["sequence_number"] = json!(n);
            let name = data["type"].as_str().unwrap_or_default().to_string();
            event(&name, &data)
        })
        .collect();
    ("text/event-stream".into(), frames)
}

/// The response object every Responses event that carries one repeats.
struct Responses<'a> {
    model: &'a str,
    created: u64,
}

impl Responses<'_> {
    fn response(&self, status: &str, output: Value, usage: Value) -> Value {
        json!({"id": "resp_corral_cache", "object": "response", "created_at": self.created,
            "status": status, "model": self.model, "output": output, "parallel_tool_calls": true,
            "tool_choice": "auto", "tools": [], "usage": usage})
    }

    /// The events of a one-message answer, in the order OpenAI's stream
    /// helpers expect them (their sequence numbers are their places).
    fn events(&self, text: &str, usage: Value) -> [Value; 8] {
        let in_progress = self.response("in_progress", json!([]), Value::Null);
        let completed = self.response("completed", json!([output_item(text, "completed")]), usage);
        [
            json!({"type": "response.created", "response": in_progress}),
            json!({"type": "response.output_item.added", "output_index": 0,
                "item": {"id": "msg_corral_cache", "type": "message", "status": "in_progress",
                    "role": "assistant", "content": []}}),
            in_text_part(json!({"type": "response.content_part.added", "part": output_text("")})),
            in_text_part(json!({"type": "response.output_text.delta", "delta": text})),
            in_text_part(json!({"type": "response.output_text.done", "text": text})),
            in_text_part(json!({"type": "response.content_part.done", "part": output_text(text)})),
            json!({"type": "response.output_item.done", "output_index": 0,
                "item": output_item(text, "completed")}),
            json!({"type": "response.completed", "response": completed}),
        ]
    }
}

fn output_text(text: &str) -> Value {
    json!({"type": "output_text", "text": text, "annotations": []})
}

fn output_item(text: &str, status: &str) -> Value {
    json!({"id": "msg_corral_cache", "type": "message", "status": status, "role": "assistant",
        "content": [output_text(text)]})
}

/// An event about the answer's one text part: it names the part.
fn in_text_part(mut data: Value) -> Value {
    if let Some(fields) = data.as_object_mut() {
        fields.insert("item_id".into(), json!("msg_corral_cache"));
        fields.insert("output_index".into(), json!(0));
        fields.insert("content_index".into(), json!(0));
    }
    data
}
