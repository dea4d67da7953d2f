//! Default answers at Critical, in the endpoint's own shape: Ollama's
//! JSON or NDJSON, OpenAI's JSON or SSE, one whole line per frame.

use bytes::Bytes;
use corral_core::{Endpoint, RequestMeta};
use http::{header, HeaderValue, Response};
use serde_json::json;

/// The default answer `text` for `meta`'s request, or `None` if its
/// endpoint has no such shape.
pub(crate) fn default_answer(meta: &RequestMeta, text: &str) -> Option<Response<Bytes>> {
    let model = meta.model_str();
    let created = corral_core::unix_now();
    let line = |v: serde_json::Value| {
        let mut bytes = serde_json::to_vec(&v).unwrap_or_default();
        bytes.push(b'\n');
        bytes
    };
    let event = |v: serde_json::Value| format!("data: {v}\n\n").into_bytes();
    let done = json!({"model": model, "created_at": corral_core::rfc3339_now(), "done": true, "done_reason": "stop",
        "total_duration": 0, "load_duration": 0, "prompt_eval_count": 0, "prompt_eval_duration": 0,
        "eval_count": 0, "eval_duration": 0});
    let (content_type, body): (&'static str, Vec<u8>) = match (meta.endpoint, meta.stream) {
        (Endpoint::Generate, false) => {
            let mut doc = done.clone();
            doc["response"] = json!(text);
            ("application/json; charset=utf-8", serde_json::to_vec(&doc).unwrap_or_default())
        }
        (Endpoint::Generate, true) => {
            let mut body = line(json!({"model": model, "created_at": corral_core::rfc3339_now(), "response": text, "done": false}));
            let mut last = done.clone();
            last["response"] = json!("");
            body.extend(line(last));
            ("application/x-ndjson", body)
        }
        (Endpoint::Chat, false) => {
            let mut doc = done.clone();
            doc["message"] = json!({"role": "assistant", "content": text});
            ("application/json; charset=utf-8", serde_json::to_vec(&doc).unwrap_or_default())
        }
        (Endpoint::Chat, true) => {
            let mut body = line(json!({"model": model, "created_at": corral_core::rfc3339_now(),
                "message": {"role": "assistant", "content": text}, "done": false}));
            let mut last = done.clone();
            last["message"] = json!({"role": "assistant", "content": ""});
            body.extend(line(last));
            ("application/x-ndjson", body)
        }
        (Endpoint::OpenAiChat, false) => (
            "application/json",
            serde_json::to_vec(&json!({"id": "chatcmpl-corral-default", "object": "chat.completion", "created": created,
                "model": model, "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
                "usage": {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0}}))
            .unwrap_or_default(),
        ),
        (Endpoint::OpenAiChat, true) => {
            let mut body = event(json!({"id": "chatcmpl-corral-default", "object": "chat.completion.chunk", "created": created,
                "model": model, "choices": [{"index": 0, "delta": {"role": "assistant", "content": text}, "finish_reason": null}]}));
            body.extend(event(json!({"id": "chatcmpl-corral-default", "object": "chat.completion.chunk", "created": created,
                "model": model, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]})));
            body.extend_from_slice(b"data: [DONE]\n\n");
            ("text/event-stream", body)
        }
        (Endpoint::OpenAiCompletions, false) => (
            "application/json",
            serde_json::to_vec(&json!({"id": "cmpl-corral-default", "object": "text_completion", "created": created,
                "model": model, "choices": [{"text": text, "index": 0, "finish_reason": "stop"}],
                "usage": {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0}}))
            .unwrap_or_default(),
        ),
        (Endpoint::OpenAiCompletions, true) => {
            let mut body = event(json!({"id": "cmpl-corral-default", "object": "text_completion", "created": created,
                "model": model, "choices": [{"text": text, "index": 0, "finish_reason": "stop"}]}));
            body.extend_from_slice(b"data: [DONE]\n\n");
            ("text/event-stream", body)
        }
        (Endpoint::AnthropicMessages, false) => (
            "application/json",
            serde_json::to_vec(&anthropic_message(model, text)).unwrap_or_default(),
        ),
        (Endpoint::AnthropicMessages, true) => {
            let mut start = anthropic_message(model, "");
            start["content"] = json!([]);
            let mut body = named("message_start", json!({"type": "message_start", "message": start}));
            body.extend(named("content_block_start", json!({"type": "content_block_start", "index": 0,
                "content_block": {"type": "text", "text": ""}})));
            body.extend(named("content_block_delta", json!({"type": "content_block_delta", "index": 0,
                "delta": {"type": "text_delta", "text": text}})));
            body.extend(named("content_block_stop", json!({"type": "content_block_stop", "index": 0})));
            body.extend(named("message_delta", json!({"type": "message_delta",
                "delta": {"stop_reason": "end_turn"}, "usage": {"output_tokens": 0}})));
            body.extend(named("message_stop", json!({"type": "message_stop"})));
            ("text/event-stream", body)
        }
        (Endpoint::OpenAiResponses, false) => (
            "application/json",
            serde_json::to_vec(&response_document(model, text, created, "completed"))
                .unwrap_or_default(),
        ),
        (Endpoint::OpenAiResponses, true) => {
            let mut body = named("response.created", json!({"type": "response.created", "sequence_number": 0,
                "response": response_document(model, "", created, "in_progress")}));
            body.extend(named("response.output_text.delta", json!({"type": "response.output_text.delta",
                "sequence_number": 1, "item_id": "msg_corral_default", "output_index": 0, "content_index": 0,
                "delta": text})));
            body.extend(named("response.completed", json!({"type": "response.completed", "sequence_number": 2,
                "response": response_document(model, text, created, "completed")})));
            ("text/event-stream", body)
        }
        _ => return None,
    };
    let mut response = Response::new(Bytes::from(body));
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert(
        crate::service::X_CORRAL_ANSWER,
        HeaderValue::from_static("default"),
    );
    Some(response)
}

/// One SSE event with a name, as the Anthropic and Responses APIs send.
fn named(name: &str, data: serde_json::Value) -> Vec<u8> {
    format!("event: {name}\ndata: {data}\n\n").into_bytes()
}

/// An Anthropic Messages answer saying `text`.
fn anthropic_message(model: &str, text: &str) -> serde_json::Value {
    json!({"id": "msg_corral_default", "type": "message", "role": "assistant", "model": model,
        "content": [{"type": "text", "text": text}], "stop_reason": "end_turn",
        "usage": {"input_tokens": 0, "output_tokens": 0}})
}

/// A Responses API answer saying `text`.
fn response_document(model: &str, text: &str, created: u64, status: &str) -> serde_json::Value {
    json!({"id": "resp_corral_default", "object": "response", "created_at": created, "status": status,
        "model": model, "output": [{"type": "message", "id": "msg_corral_default", "status": "completed",
            "role": "assistant", "content": [{"type": "output_text", "text": text, "annotations": []}]}],
        "parallel_tool_calls": true, "tool_choice": "auto", "tools": [],
        "usage": {"input_tokens": 0, "output_tokens": 0, "total_tokens": 0}})
}
