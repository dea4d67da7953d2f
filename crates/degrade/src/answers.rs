//! Default answers at Critical, in the endpoint's own shape: Ollama's
//! JSON or NDJSON, OpenAI's JSON or SSE, one whole line per frame.

use bytes::Bytes;
use corral_core::{Endpoint, RequestMeta};
use http::{header, HeaderValue, Response};
use serde_json::json;

fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// The default answer `text` for `meta`'s request, or `None` if its
/// endpoint has no such shape.
pub(crate) fn default_answer(meta: &RequestMeta, text: &str) -> Option<Response<Bytes>> {
    let model = meta.model_str();
    let created = now_secs();
    let line = |v: serde_json::Value| {
        let mut bytes = serde_json::to_vec(&v).unwrap_or_default();
        bytes.push(b'\n');
        bytes
    };
    let event = |v: serde_json::Value| format!("data: {v}\n\n").into_bytes();
    let done = json!({"model": model, "created_at": created_at(), "done": true, "done_reason": "stop",
        "total_duration": 0, "load_duration": 0, "prompt_eval_count": 0, "prompt_eval_duration": 0,
        "eval_count": 0, "eval_duration": 0});
    let (content_type, body): (&'static str, Vec<u8>) = match (meta.endpoint, meta.stream) {
        (Endpoint::Generate, false) => {
            let mut doc = done.clone();
            doc["response"] = json!(text);
            ("application/json; charset=utf-8", serde_json::to_vec(&doc).unwrap_or_default())
        }
        (Endpoint::Generate, true) => {
            let mut body = line(json!({"model": model, "created_at": created_at(), "response": text, "done": false}));
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
            let mut body = line(json!({"model": model, "created_at": created_at(),
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
        _ => return None,
    };
    let mut response = Response::new(Bytes::from(body));
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    Some(response)
}

fn created_at() -> String {
    // RFC 3339 in UTC from the system clock, as Ollama writes it.
    let secs = now_secs();
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// Howard Hinnant's days-to-civil.
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_are_civil() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(20_454), (2026, 1, 1));
    }
}
