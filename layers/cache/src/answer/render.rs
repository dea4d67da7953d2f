//! An answer as a request wants it: streamed or whole, in the shape of
//! its endpoint.

use bytes::Bytes;
use corral_core::{rfc3339_now, unix_now, Endpoint};
use serde_json::{json, Map, Value};

use super::Answer;

impl Answer {
    /// The answer for a request to its endpoint, streamed or whole; its
    /// content type and bytes. Streams go out one whole line (or event)
    /// per frame: the frames are the items of the returned list.
    pub fn render(&self, stream: bool, include_usage: bool) -> (String, Vec<Bytes>) {
        match self {
            Answer::Whole { content_type, body } => (content_type.clone(), vec![body.clone()]),
            Answer::Text {
                endpoint,
                model,
                text,
                fields,
            } => match endpoint {
                Endpoint::Generate | Endpoint::Chat => {
                    native(*endpoint, model, text, fields, stream)
                }
                Endpoint::AnthropicMessages => {
                    corral_core::compat::anthropic_answer(model, text, fields, stream)
                }
                Endpoint::OpenAiResponses => {
                    corral_core::compat::responses_answer(model, text, fields, stream)
                }
                _ => openai(*endpoint, model, text, fields, stream, include_usage),
            },
        }
    }
}

fn line(value: &Value) -> Bytes {
    let mut bytes = serde_json::to_vec(value).unwrap_or_default();
    bytes.push(b'\n');
    Bytes::from(bytes)
}

fn native(
    endpoint: Endpoint,
    model: &str,
    text: &str,
    fields: &Map<String, Value>,
    stream: bool,
) -> (String, Vec<Bytes>) {
    let content = |t: &str| match endpoint {
        Endpoint::Generate => ("response", json!(t)),
        _ => ("message", json!({"role": "assistant", "content": t})),
    };
    let last = |t: &str| {
        let mut doc = Map::new();
        doc.insert("model".into(), json!(model));
        doc.insert("created_at".into(), json!(rfc3339_now()));
        let (k, v) = content(t);
        doc.insert(k.into(), v);
        doc.insert("done".into(), json!(true));
        doc.extend(fields.clone());
        Value::Object(doc)
    };
    if stream {
        let (k, v) = content(text);
        let first = json!({"model": model, "created_at": rfc3339_now(), k: v, "done": false});
        (
            "application/x-ndjson".into(),
            vec![line(&first), line(&last(""))],
        )
    } else {
        (
            "application/json; charset=utf-8".into(),
            vec![Bytes::from(
                serde_json::to_vec(&last(text)).unwrap_or_default(),
            )],
        )
    }
}

fn openai(
    endpoint: Endpoint,
    model: &str,
    text: &str,
    fields: &Map<String, Value>,
    stream: bool,
    include_usage: bool,
) -> (String, Vec<Bytes>) {
    let chat = endpoint == Endpoint::OpenAiChat;
    let created = unix_now();
    let id = if chat {
        "chatcmpl-corral-cache"
    } else {
        "cmpl-corral-cache"
    };
    let finish = fields
        .get("finish_reason")
        .cloned()
        .unwrap_or(json!("stop"));
    let usage = fields.get("usage").cloned();
    if !stream {
        let choice = if chat {
            json!({"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": finish})
        } else {
            json!({"text": text, "index": 0, "finish_reason": finish})
        };
        let object = if chat {
            "chat.completion"
        } else {
            "text_completion"
        };
        let mut doc = json!({"id": id, "object": object, "created": created, "model": model,
            "system_fingerprint": "fp_ollama", "choices": [choice]});
        if let Some(usage) = usage {
            doc["usage"] = usage;
        }
        return (
            "application/json".into(),
            vec![Bytes::from(serde_json::to_vec(&doc).unwrap_or_default())],
        );
    }
    let object = if chat {
        "chat.completion.chunk"
    } else {
        "text_completion"
    };
    let event = |choices: Value, usage: Option<Value>| {
        let mut chunk = json!({"id": id, "object": object, "created": created, "model": model,
            "system_fingerprint": "fp_ollama", "choices": choices});
        if let Some(usage) = usage {
            chunk["usage"] = usage;
        }
        Bytes::from(format!("data: {chunk}\n\n"))
    };
    let mut frames = if chat {
        vec![
            event(
                json!([{"index": 0, "delta": {"role": "assistant", "content": text}, "finish_reason": null}]),
                None,
            ),
            event(
                json!([{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": finish}]),
                None,
            ),
        ]
    } else {
        vec![
            event(
                json!([{"text": text, "index": 0, "finish_reason": null}]),
                None,
            ),
            event(
                json!([{"text": "", "index": 0, "finish_reason": finish}]),
                None,
            ),
        ]
    };
    if include_usage {
        if let Some(usage) = usage {
            frames.push(event(json!([]), Some(usage)));
        }
    }
    frames.push(Bytes::from_static(b"data: [DONE]\n\n"));
    ("text/event-stream".into(), frames)
}
