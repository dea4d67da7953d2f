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
    let (content_type, body) = match meta.endpoint {
        Endpoint::Generate | Endpoint::Chat => ollama(meta.endpoint, meta.stream, model, text),
        Endpoint::OpenAiChat => openai_chat(meta.stream, model, text),
        Endpoint::OpenAiCompletions => openai_completions(meta.stream, model, text),
        Endpoint::AnthropicMessages | Endpoint::OpenAiResponses => {
            compat(meta.endpoint, meta.stream, model, text)
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

/// Content type and body, as the answer goes out.
type Shaped = (&'static str, Vec<u8>);

/// `/api/generate` or `/api/chat`: one document, or a line saying `text`
/// then the closing line.
fn ollama(endpoint: Endpoint, stream: bool, model: &str, text: &str) -> Shaped {
    let says = |text: &str| match endpoint {
        Endpoint::Chat => ("message", json!({"role": "assistant", "content": text})),
        _ => ("response", json!(text)),
    };
    let mut done = json!({"model": model, "created_at": corral_core::rfc3339_now(), "done": true,
        "done_reason": "stop", "total_duration": 0, "load_duration": 0, "prompt_eval_count": 0,
        "prompt_eval_duration": 0, "eval_count": 0, "eval_duration": 0});
    let (field, said) = says(if stream { "" } else { text });
    done[field] = said;
    if !stream {
        return (
            "application/json; charset=utf-8",
            serde_json::to_vec(&done).unwrap_or_default(),
        );
    }
    let (field, said) = says(text);
    let mut first =
        json!({"model": model, "created_at": corral_core::rfc3339_now(), "done": false});
    first[field] = said;
    ("application/x-ndjson", [line(&first), line(&done)].concat())
}

/// `/v1/chat/completions`: one completion, or a chunk saying `text`, a
/// closing chunk and `[DONE]`.
fn openai_chat(stream: bool, model: &str, text: &str) -> Shaped {
    let created = corral_core::unix_now();
    if !stream {
        let doc = json!({"id": "chatcmpl-corral-default", "object": "chat.completion",
            "created": created, "model": model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0}});
        return (
            "application/json",
            serde_json::to_vec(&doc).unwrap_or_default(),
        );
    }
    let chunk = |choice: serde_json::Value| {
        event(
            &json!({"id": "chatcmpl-corral-default", "object": "chat.completion.chunk",
            "created": created, "model": model, "choices": [choice]}),
        )
    };
    let says = chunk(
        json!({"index": 0, "delta": {"role": "assistant", "content": text}, "finish_reason": null}),
    );
    let stops = chunk(json!({"index": 0, "delta": {}, "finish_reason": "stop"}));
    ("text/event-stream", [says, stops, DONE.to_vec()].concat())
}

/// `/v1/completions`: one completion, or one chunk and `[DONE]`.
fn openai_completions(stream: bool, model: &str, text: &str) -> Shaped {
    let mut doc = json!({"id": "cmpl-corral-default", "object": "text_completion",
        "created": corral_core::unix_now(), "model": model,
        "choices": [{"text": text, "index": 0, "finish_reason": "stop"}]});
    if !stream {
        doc["usage"] = json!({"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0});
        return (
            "application/json",
            serde_json::to_vec(&doc).unwrap_or_default(),
        );
    }
    ("text/event-stream", [event(&doc), DONE.to_vec()].concat())
}

/// `/v1/messages` and `/v1/responses`: the shapes core writes for every
/// answer Corral gives itself.
fn compat(endpoint: Endpoint, stream: bool, model: &str, text: &str) -> Shaped {
    let no_fields = Default::default();
    let (_, frames) = if endpoint == Endpoint::AnthropicMessages {
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

/// The end of an OpenAI stream.
const DONE: &[u8] = b"data: [DONE]\n\n";

/// One NDJSON line.
fn line(value: &serde_json::Value) -> Vec<u8> {
    let mut bytes = serde_json::to_vec(value).unwrap_or_default();
    bytes.push(b'\n');
    bytes
}

/// One SSE event.
fn event(value: &serde_json::Value) -> Vec<u8> {
    format!("data: {value}\n\n").into_bytes()
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
