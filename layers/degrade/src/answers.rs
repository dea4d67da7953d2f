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
        (Endpoint::AnthropicMessages | Endpoint::OpenAiResponses, stream) => {
            let no_fields = Default::default();
            let (_, frames) = if meta.endpoint == Endpoint::AnthropicMessages {
                corral_core::compat::anthropic_answer(model, text, &no_fields, stream)
            } else {
                corral_core::compat::responses_answer(model, text, &no_fields, stream)
            };
            let content_type = if stream {
                "text/event-stream"
            } else {
                "application/json"
            };
            (content_type, frames.concat())
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

#[cfg(test)]
mod tests {
    use super::*;
    use corral_core::RequestMeta;

    fn meta(endpoint: Endpoint, stream: bool) -> RequestMeta {
        let mut meta = RequestMeta::new("r".into(), endpoint).with_model(Some("llama3".into()));
        meta.stream = stream;
        meta
    }

    #[test]
    fn the_anthropic_and_responses_defaults_carry_every_event_their_sdks_build_a_turn_from() {
        let streamed = default_answer(&meta(Endpoint::AnthropicMessages, true), "Busy.").unwrap();
        let text = String::from_utf8(streamed.body().to_vec()).unwrap();
        let names: Vec<&str> = text
            .lines()
            .filter_map(|l| l.strip_prefix("event: "))
            .collect();
        assert_eq!(
            names,
            [
                "message_start",
                "content_block_start",
                "content_block_delta",
                "content_block_stop",
                "message_delta",
                "message_stop"
            ]
        );
        let streamed = default_answer(&meta(Endpoint::OpenAiResponses, true), "Busy.").unwrap();
        let text = String::from_utf8(streamed.body().to_vec()).unwrap();
        for event in [
            "response.created",
            "response.output_item.added",
            "response.content_part.added",
            "response.output_text.delta",
            "response.output_text.done",
            "response.output_item.done",
            "response.completed",
        ] {
            assert!(text.contains(&format!("event: {event}\n")), "{event}");
        }
        let whole = default_answer(&meta(Endpoint::AnthropicMessages, false), "Busy.").unwrap();
        let doc: serde_json::Value = serde_json::from_slice(whole.body()).unwrap();
        assert_eq!(doc["content"][0]["text"], "Busy.");
        assert_eq!(whole.headers()["x-corral-answer"], "default");
    }
}
