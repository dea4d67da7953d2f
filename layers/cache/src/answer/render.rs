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
    let shape = OpenAi {
        chat: endpoint == Endpoint::OpenAiChat,
        model,
        created: unix_now(),
    };
    let finish = fields
        .get("finish_reason")
        .cloned()
        .unwrap_or(json!("stop"));
    let usage = fields.get("usage").cloned();
    if !stream {
        let doc = shape.document(false, json!([shape.choice(false, text, finish)]), usage);
        return (
            "application/json".into(),
            vec![Bytes::from(serde_json::to_vec(&doc).unwrap_or_default())],
        );
    }
    let mut frames = vec![
        shape.event(json!([shape.choice(true, text, Value::Null)]), None),
        shape.event(json!([shape.choice(true, "", finish)]), None),
    ];
    if let (true, Some(usage)) = (include_usage, usage) {
        frames.push(shape.event(json!([]), Some(usage)));
    }
    frames.push(Bytes::from_static(b"data: [DONE]\n\n"));
    ("text/event-stream".into(), frames)
}

/// OpenAI's chat or legacy completions, whole or as chunks.
struct OpenAi<'a> {
    chat: bool,
    model: &'a str,
    created: u64,
}

impl OpenAi<'_> {
    /// One choice saying `text`: a chat message (a delta in a chunk) or
    /// a completion's text.
    fn choice(&self, chunk: bool, text: &str, finish: Value) -> Value {
        let said = json!({"role": "assistant", "content": text});
        match (self.chat, chunk) {
            (true, false) => json!({"index": 0, "message": said, "finish_reason": finish}),
            (true, true) => json!({"index": 0, "delta": said, "finish_reason": finish}),
            (false, _) => json!({"text": text, "index": 0, "finish_reason": finish}),
        }
    }

    fn document(&self, chunk: bool, choices: Value, usage: Option<Value>) -> Value {
        let (id, object) = match (self.chat, chunk) {
            (true, false) => ("chatcmpl-corral-cache", "chat.completion"),
            (true, true) => ("chatcmpl-corral-cache", "chat.completion.chunk"),
            (false, _) => ("cmpl-corral-cache", "text_completion"),
        };
        let mut doc = json!({"id": id, "object": object, "created": self.created,
            "model": self.model, "system_fingerprint": "fp_ollama", "choices": choices});
        if let Some(usage) = usage {
            doc["usage"] = usage;
        }
        doc
    }

    fn event(&self, choices: Value, usage: Option<Value>) -> Bytes {
        Bytes::from(format!("data: {}\n\n", self.document(true, choices, usage)))
    }
}
