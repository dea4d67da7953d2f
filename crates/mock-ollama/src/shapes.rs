//! The shapes of generated answers: Ollama's NDJSON lines and final
//! `done` message, OpenAI's SSE chunks and completion documents. The
//! Anthropic Messages and OpenAI Responses shapes are in `anthropic.rs`
//! and `responses.rs`.

use std::collections::VecDeque;
use std::time::Duration;

use bytes::Bytes;
use serde_json::{json, Value};
use tokio::time::Instant;

use crate::respond::{self, ErrorShape};
use crate::{anthropic, responses, text};

/// Which generation call, which decides the shapes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Call {
    Generate,
    Chat,
    OpenAiChat,
    OpenAiCompletion,
    /// `/v1/messages`, Anthropic's Messages API.
    Anthropic,
    /// `/v1/responses`, OpenAI's Responses API.
    Responses,
}

impl Call {
    pub(crate) fn error_shape(self) -> ErrorShape {
        match self {
            Call::Generate | Call::Chat => ErrorShape::Ollama,
            Call::OpenAiChat | Call::OpenAiCompletion | Call::Responses => ErrorShape::OpenAi,
            Call::Anthropic => ErrorShape::Anthropic,
        }
    }

    /// Whether its streams are SSE (else NDJSON).
    pub(crate) fn sse(self) -> bool {
        !matches!(self, Call::Generate | Call::Chat)
    }

    /// What Ollama checks of the body before looking the model up (its
    /// compatibility middlewares run before the handler).
    pub(crate) fn validate(self, request: &Value) -> Result<(), String> {
        match self {
            Call::OpenAiChat if request.get("messages").is_none() => {
                Err("[] is too short - 'messages'".into())
            }
            Call::Anthropic => anthropic::validate(request),
            _ => Ok(()),
        }
    }

    /// The conversation as `/api/chat` messages, for the calls that are
    /// chats underneath (as Ollama converts them).
    fn messages(self, request: &Value) -> Vec<Value> {
        match self {
            Call::Chat | Call::OpenAiChat => request
                .get("messages")
                .and_then(Value::as_array)
                .cloned()
                .unwrap_or_default(),
            Call::Anthropic => anthropic::messages(request),
            Call::Responses => responses::messages(request),
            Call::Generate | Call::OpenAiCompletion => Vec::new(),
        }
    }

    /// Whether the request only loads the model: an empty prompt or
    /// conversation. `/v1/messages` refuses an empty one first.
    pub(crate) fn only_loads(self, request: &Value) -> bool {
        match self {
            Call::Generate => request
                .get("prompt")
                .and_then(Value::as_str)
                .unwrap_or("")
                .is_empty(),
            Call::Chat | Call::Responses => self.messages(request).is_empty(),
            _ => false,
        }
    }
}

/// The text the deterministic answer is drawn from. The calls that are
/// chats underneath give the same prompt for the same conversation, so
/// `/v1/messages` and `/api/chat` answer the same words.
pub(crate) fn prompt_of(call: Call, request: &Value) -> String {
    match call {
        Call::Generate | Call::OpenAiCompletion => {
            let system = request.get("system").and_then(Value::as_str).unwrap_or("");
            let prompt = match request.get("prompt") {
                Some(Value::String(s)) => s.clone(),
                Some(Value::Array(parts)) => parts
                    .iter()
                    .filter_map(Value::as_str)
                    .collect::<Vec<_>>()
                    .join("\n"),
                _ => String::new(),
            };
            if system.is_empty() {
                prompt
            } else {
                format!("{system}\n{prompt}")
            }
        }
        _ => call
            .messages(request)
            .iter()
            .map(|m| match m.get("content") {
                Some(Value::String(s)) => format!(
                    "{}: {s}",
                    m.get("role").and_then(Value::as_str).unwrap_or("")
                ),
                Some(other) => other.to_string(),
                None => String::new(),
            })
            .collect::<Vec<_>>()
            .join("\n"),
    }
}

pub(crate) fn wants_stream(call: Call, request: &Value) -> bool {
    match request.get("stream").and_then(Value::as_bool) {
        Some(stream) => stream,
        None => !call.sse(),
    }
}

/// The request's bound on generated tokens, Ollama's `num_predict`.
pub(crate) fn max_tokens(call: Call, request: &Value) -> Option<i64> {
    let n = match call {
        Call::Generate | Call::Chat => request.get("options").and_then(|o| o.get("num_predict")),
        Call::OpenAiChat | Call::OpenAiCompletion => request
            .get("max_tokens")
            .or_else(|| request.get("max_completion_tokens")),
        Call::Anthropic => request.get("max_tokens"),
        Call::Responses => request.get("max_output_tokens"),
    };
    n.and_then(Value::as_f64).map(|n| n as i64)
}

/// One SSE event with a name, written whole: `event: NAME\ndata: JSON\n\n`.
pub(crate) fn event(name: &str, data: &Value) -> Bytes {
    Bytes::from(format!("event: {name}\ndata: {data}\n\n"))
}

/// The whole generation: timing, tokens, and its final statistics.
pub(crate) struct Generation {
    pub(crate) call: Call,
    pub(crate) model: String,
    pub(crate) prompt: String,
    pub(crate) tokens: usize,
    pub(crate) truncated: bool,
    pub(crate) interval: Duration,
    pub(crate) started: Instant,
    pub(crate) load: Duration,
    pub(crate) ttft: Duration,
    pub(crate) prompt_tokens: u64,
    pub(crate) id: String,
    pub(crate) created: u64,
    pub(crate) include_usage: bool,
    /// The request, which a Responses answer echoes parts of.
    pub(crate) request: Value,
}

impl Generation {
    /// Whether the answer goes out as a stream.
    pub(crate) fn stream(&self) -> bool {
        wants_stream(self.call, &self.request)
    }

    pub(crate) fn token(&self, i: usize) -> String {
        text::token(&self.model, &self.prompt, i)
    }

    pub(crate) fn text(&self) -> String {
        (0..self.tokens).map(|i| self.token(i)).collect()
    }

    pub(crate) fn done_reason(&self) -> &'static str {
        if self.truncated {
            "length"
        } else {
            "stop"
        }
    }

    pub(crate) fn stats(&self) -> serde_json::Map<String, Value> {
        let nanos = |d: Duration| d.as_nanos() as u64;
        let eval = self.interval * self.tokens as u32;
        let mut stats = serde_json::Map::new();
        stats.insert(
            "total_duration".into(),
            json!(nanos(self.started.elapsed())),
        );
        stats.insert("load_duration".into(), json!(nanos(self.load)));
        stats.insert("prompt_eval_count".into(), json!(self.prompt_tokens));
        stats.insert("prompt_eval_duration".into(), json!(nanos(self.ttft)));
        stats.insert("eval_count".into(), json!(self.tokens));
        stats.insert("eval_duration".into(), json!(nanos(eval)));
        stats
    }

    pub(crate) fn usage(&self) -> Value {
        json!({
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.tokens,
            "total_tokens": self.prompt_tokens + self.tokens as u64,
        })
    }

    fn ndjson(value: Value) -> Bytes {
        let mut line = serde_json::to_vec(&value).unwrap_or_default();
        line.push(b'\n');
        Bytes::from(line)
    }

    fn sse(value: &Value) -> Bytes {
        Bytes::from(format!("data: {value}\n\n"))
    }

    /// The frames that open a stream, sent with its first token (or its
    /// end, when there is no token): Anthropic's and Responses' opening
    /// events.
    fn head(&self, out: &mut VecDeque<Bytes>) {
        match self.call {
            Call::Anthropic => anthropic::head(self, out),
            Call::Responses => responses::head(self, out),
            _ => {}
        }
    }

    /// The frames of token `i` in a stream, one event or line each.
    pub(crate) fn frames(&self, i: usize, out: &mut VecDeque<Bytes>) {
        if i == 0 {
            self.head(out);
        }
        let token = self.token(i);
        let frame = match self.call {
            Call::Generate => Self::ndjson(json!({
                "model": self.model, "created_at": respond::now_rfc3339(), "response": token, "done": false,
            })),
            Call::Chat => Self::ndjson(json!({
                "model": self.model, "created_at": respond::now_rfc3339(),
                "message": {"role": "assistant", "content": token}, "done": false,
            })),
            Call::OpenAiChat => Self::sse(&json!({
                "id": self.id, "object": "chat.completion.chunk", "created": self.created, "model": self.model,
                "system_fingerprint": "fp_ollama",
                "choices": [{"index": 0, "delta": {"role": "assistant", "content": token}, "finish_reason": null}],
            })),
            Call::OpenAiCompletion => Self::sse(&json!({
                "id": self.id, "object": "text_completion", "created": self.created, "model": self.model,
                "system_fingerprint": "fp_ollama",
                "choices": [{"text": token, "index": 0, "finish_reason": null}],
            })),
            Call::Anthropic => anthropic::delta(&token),
            Call::Responses => responses::delta(self, i, &token),
        };
        out.push_back(frame);
    }

    /// The frames after the last token.
    pub(crate) fn tail(&self, out: &mut VecDeque<Bytes>) {
        if self.tokens == 0 {
            self.head(out);
        }
        match self.call {
            Call::Generate | Call::Chat => {
                let mut last = serde_json::Map::new();
                last.insert("model".into(), json!(self.model));
                last.insert("created_at".into(), json!(respond::now_rfc3339()));
                if self.call == Call::Generate {
                    last.insert("response".into(), json!(""));
                } else {
                    last.insert(
                        "message".into(),
                        json!({"role": "assistant", "content": ""}),
                    );
                }
                last.insert("done".into(), json!(true));
                last.insert("done_reason".into(), json!(self.done_reason()));
                if self.call == Call::Generate {
                    last.insert("context".into(), json!([1, 2, 3]));
                }
                last.extend(self.stats());
                out.push_back(Self::ndjson(Value::Object(last)));
            }
            Call::OpenAiChat | Call::OpenAiCompletion => {
                let (object, choice) = if self.call == Call::OpenAiChat {
                    (
                        "chat.completion.chunk",
                        json!({"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": self.done_reason()}),
                    )
                } else {
                    (
                        "text_completion",
                        json!({"text": "", "index": 0, "finish_reason": self.done_reason()}),
                    )
                };
                out.push_back(Self::sse(&json!({
                    "id": self.id, "object": object, "created": self.created, "model": self.model,
                    "system_fingerprint": "fp_ollama", "choices": [choice],
                })));
                if self.include_usage {
                    out.push_back(Self::sse(&json!({
                        "id": self.id, "object": object, "created": self.created, "model": self.model,
                        "system_fingerprint": "fp_ollama", "choices": [], "usage": self.usage(),
                    })));
                }
                out.push_back(Bytes::from_static(b"data: [DONE]\n\n"));
            }
            Call::Anthropic => anthropic::tail(self, out),
            Call::Responses => responses::tail(self, out),
        }
    }

    /// The whole answer in one document.
    pub(crate) fn whole(&self) -> Value {
        let text = self.text();
        match self.call {
            Call::Generate | Call::Chat => {
                let mut doc = serde_json::Map::new();
                doc.insert("model".into(), json!(self.model));
                doc.insert("created_at".into(), json!(respond::now_rfc3339()));
                if self.call == Call::Generate {
                    doc.insert("response".into(), json!(text));
                } else {
                    doc.insert(
                        "message".into(),
                        json!({"role": "assistant", "content": text}),
                    );
                }
                doc.insert("done".into(), json!(true));
                doc.insert("done_reason".into(), json!(self.done_reason()));
                if self.call == Call::Generate {
                    doc.insert("context".into(), json!([1, 2, 3]));
                }
                doc.extend(self.stats());
                Value::Object(doc)
            }
            Call::OpenAiChat => json!({
                "id": self.id, "object": "chat.completion", "created": self.created, "model": self.model,
                "system_fingerprint": "fp_ollama",
                "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": self.done_reason()}],
                "usage": self.usage(),
            }),
            Call::OpenAiCompletion => json!({
                "id": self.id, "object": "text_completion", "created": self.created, "model": self.model,
                "system_fingerprint": "fp_ollama",
                "choices": [{"text": text, "index": 0, "finish_reason": self.done_reason()}],
                "usage": self.usage(),
            }),
            Call::Anthropic => anthropic::whole(self, text),
            Call::Responses => responses::whole(self, text),
        }
    }
}
