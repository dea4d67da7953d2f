//! Answers as the cache keeps them: a generation's text and final fields,
//! which render as a stream or as one document in the shape of the
//! endpoint (one entry serves both forms), or any other answer as it came.

mod compat;
mod render;

use bytes::Bytes;
use corral_core::Endpoint;
use serde_json::{Map, Value};

/// A cached answer. Serialized (JSON) where a shared store keeps it.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub enum Answer {
    /// A generation: its text and the fields of its final message
    /// (`done_reason` and the statistics; OpenAI's `finish_reason` and
    /// `usage`).
    Text {
        /// The endpoint it answers.
        endpoint: Endpoint,
        /// The model that wrote it.
        model: String,
        /// What it says.
        text: String,
        /// The final message's fields.
        fields: Map<String, Value>,
    },
    /// Anything else (embeddings), as the upstream sent it.
    Whole {
        /// Its content type.
        content_type: String,
        /// Its bytes.
        #[serde(with = "text_bytes")]
        body: Bytes,
    },
}

fn lines(body: &[u8]) -> impl Iterator<Item = Result<Value, ()>> + '_ {
    body.split(|b| *b == b'\n')
        .filter(|l| !l.iter().all(u8::is_ascii_whitespace))
        .map(|l| serde_json::from_slice::<Value>(l).map_err(|_| ()))
}

/// The message's content, if the message is only text (tool calls,
/// images and thinking are not cached as text).
fn plain_content(message: &Value) -> Option<&str> {
    let object = message.as_object()?;
    if object.keys().any(|k| k != "role" && k != "content") {
        return None;
    }
    object.get("content")?.as_str()
}

impl Answer {
    /// How many bytes it holds, for the cache's bound.
    pub fn weight(&self) -> usize {
        match self {
            Answer::Text {
                text,
                fields,
                model,
                ..
            } => text.len() + model.len() + 256 + fields.len() * 32,
            Answer::Whole { body, content_type } => body.len() + content_type.len(),
        }
    }

    /// Reads a complete 200 answer of `endpoint` with `content_type`;
    /// `None` when it cannot be kept (an error inside, tool calls, more
    /// than one choice).
    pub fn capture(endpoint: Endpoint, content_type: &str, body: &[u8]) -> Option<Answer> {
        match endpoint {
            Endpoint::Embed | Endpoint::Embeddings | Endpoint::OpenAiEmbeddings => {
                let value: Value = serde_json::from_slice(body).ok()?;
                value.get("error").is_none().then(|| Answer::Whole {
                    content_type: content_type.to_string(),
                    body: Bytes::copy_from_slice(body),
                })
            }
            Endpoint::Generate | Endpoint::Chat => Self::native(endpoint, body),
            Endpoint::OpenAiChat | Endpoint::OpenAiCompletions => {
                if content_type.starts_with("text/event-stream") {
                    Self::events(endpoint, body)
                } else {
                    Self::openai_document(endpoint, body)
                }
            }
            Endpoint::AnthropicMessages => compat::anthropic(content_type, body),
            Endpoint::OpenAiResponses => compat::responses(content_type, body),
            _ => None,
        }
    }

    fn native(endpoint: Endpoint, body: &[u8]) -> Option<Answer> {
        let mut text = String::new();
        for line in lines(body) {
            let line = line.ok()?;
            if line.get("error").is_some() {
                return None;
            }
            match endpoint {
                Endpoint::Generate => text.push_str(line.get("response")?.as_str()?),
                _ => text.push_str(plain_content(line.get("message")?)?),
            }
            if line.get("done").and_then(Value::as_bool) == Some(true) {
                let model = line.get("model")?.as_str()?.to_string();
                let mut fields = line.as_object()?.clone();
                for k in ["model", "created_at", "response", "message", "done"] {
                    fields.remove(k);
                }
                return Some(Answer::Text {
                    endpoint,
                    model,
                    text,
                    fields,
                });
            }
        }
        None
    }

    fn openai_document(endpoint: Endpoint, body: &[u8]) -> Option<Answer> {
        let doc: Value = serde_json::from_slice(body).ok()?;
        let choices = doc.get("choices")?.as_array()?;
        let [choice] = choices.as_slice() else {
            return None;
        };
        let text = match endpoint {
            Endpoint::OpenAiChat => plain_content(choice.get("message")?)?,
            _ => choice.get("text")?.as_str()?,
        };
        let mut fields = Map::new();
        fields.insert(
            "finish_reason".into(),
            choice.get("finish_reason").cloned().unwrap_or(Value::Null),
        );
        if let Some(usage) = doc.get("usage") {
            fields.insert("usage".into(), usage.clone());
        }
        Some(Answer::Text {
            endpoint,
            model: doc.get("model")?.as_str()?.to_string(),
            text: text.to_string(),
            fields,
        })
    }

    fn events(endpoint: Endpoint, body: &[u8]) -> Option<Answer> {
        let mut text = String::new();
        let mut model = None;
        let mut fields = Map::new();
        let mut done = false;
        for line in body.split(|b| *b == b'\n') {
            let Some(data) = line.strip_prefix(b"data: ") else {
                continue;
            };
            if data == b"[DONE]" {
                done = true;
                break;
            }
            let chunk: Value = serde_json::from_slice(data).ok()?;
            if chunk.get("error").is_some() {
                return None;
            }
            model = model.or_else(|| {
                chunk
                    .get("model")
                    .and_then(Value::as_str)
                    .map(str::to_string)
            });
            if let Some(usage) = chunk.get("usage").filter(|u| !u.is_null()) {
                fields.insert("usage".into(), usage.clone());
            }
            let choices = chunk.get("choices")?.as_array()?;
            if choices.len() > 1 {
                return None;
            }
            if let Some(choice) = choices.first() {
                match endpoint {
                    Endpoint::OpenAiChat => {
                        let delta = choice.get("delta")?;
                        if let Some(content) = delta.get("content").and_then(Value::as_str) {
                            text.push_str(content);
                        }
                        if delta.get("tool_calls").is_some() {
                            return None;
                        }
                    }
                    _ => text.push_str(choice.get("text").and_then(Value::as_str).unwrap_or("")),
                }
                if let Some(reason) = choice.get("finish_reason").filter(|r| !r.is_null()) {
                    fields.insert("finish_reason".into(), reason.clone());
                }
            }
        }
        done.then_some(Answer::Text {
            endpoint,
            model: model?,
            text,
            fields,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const STREAM: &[u8] = b"{\"model\":\"llama3\",\"created_at\":\"t\",\"response\":\"Hello\",\"done\":false}\n{\"model\":\"llama3\",\"created_at\":\"t\",\"response\":\" world\",\"done\":false}\n{\"model\":\"llama3\",\"created_at\":\"t\",\"response\":\"\",\"done\":true,\"done_reason\":\"stop\",\"context\":[1],\"eval_count\":2}\n";

    #[test]
    fn a_streamed_generation_is_kept_as_text_and_served_whole_or_streamed() {
        let answer = Answer::capture(Endpoint::Generate, "application/x-ndjson", STREAM).unwrap();
        let Answer::Text { text, fields, .. } = &answer else {
            panic!()
        };
        assert_eq!(text, "Hello world");
        assert_eq!(fields["eval_count"], 2);

        let (ct, frames) = answer.render(false, false);
        assert!(ct.starts_with("application/json"));
        let doc: Value = serde_json::from_slice(&frames[0]).unwrap();
        assert_eq!(
            (
                doc["response"].as_str(),
                doc["done"].as_bool(),
                doc["done_reason"].as_str()
            ),
            (Some("Hello world"), Some(true), Some("stop"))
        );

        let (ct, frames) = answer.render(true, false);
        assert_eq!(ct, "application/x-ndjson");
        assert_eq!(frames.len(), 2);
        assert!(frames
            .iter()
            .all(|f| f.ends_with(b"\n") && f.iter().filter(|b| **b == b'\n').count() == 1));
    }

    #[test]
    fn a_whole_openai_answer_is_served_as_events() {
        let body = br#"{"id":"x","object":"chat.completion","created":1,"model":"llama3","choices":[{"index":0,"message":{"role":"assistant","content":"Hi"},"finish_reason":"stop"}],"usage":{"prompt_tokens":1,"completion_tokens":1,"total_tokens":2}}"#;
        let answer = Answer::capture(Endpoint::OpenAiChat, "application/json", body).unwrap();
        let (ct, frames) = answer.render(true, true);
        assert_eq!(ct, "text/event-stream");
        assert_eq!(frames.last().unwrap(), "data: [DONE]\n\n");
        assert!(std::str::from_utf8(&frames[2])
            .unwrap()
            .contains("\"total_tokens\":2"));
    }

    #[test]
    fn errors_and_tool_calls_are_not_kept() {
        assert!(Answer::capture(
            Endpoint::Chat,
            "application/x-ndjson",
            b"{\"error\":\"boom\"}\n"
        )
        .is_none());
        let tools = br#"{"model":"m","message":{"role":"assistant","content":"","tool_calls":[]},"done":true}"#;
        assert!(Answer::capture(Endpoint::Chat, "application/json", tools).is_none());
        assert!(Answer::capture(
            Endpoint::Generate,
            "application/x-ndjson",
            b"{\"model\":\"m\",\"response\":\"cut\",\"done\":false}\n"
        )
        .is_none());
    }
}

/// Bytes as a JSON string: what `Whole` keeps is the upstream's JSON, so
/// it is text; bytes that are not UTF-8 are refused, not mangled.
mod text_bytes {
    use bytes::Bytes;
    use serde::{Deserialize, Deserializer, Serializer};

    pub(super) fn serialize<S: Serializer>(
        bytes: &Bytes,
        serializer: S,
    ) -> Result<S::Ok, S::Error> {
        match std::str::from_utf8(bytes) {
            Ok(text) => serializer.serialize_str(text),
            Err(_) => Err(serde::ser::Error::custom("the answer is not UTF-8 text")),
        }
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<Bytes, D::Error> {
        String::deserialize(deserializer).map(Bytes::from)
    }
}
