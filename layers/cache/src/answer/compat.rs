//! The Anthropic Messages and OpenAI Responses answers read into text
//! and final fields (streamed or whole); core's `compat` writes them back
//! in either form.

use corral_core::Endpoint;
use serde_json::{Map, Value};

use super::Answer;

/// The `(event, data)` pairs of an SSE body; `None` if one is not JSON.
fn events(body: &[u8]) -> Option<Vec<(String, Value)>> {
    let mut out = Vec::new();
    let text = std::str::from_utf8(body).ok()?;
    for block in text.split("\n\n").filter(|b| !b.trim().is_empty()) {
        let mut name = String::new();
        let mut data = None;
        for line in block.lines() {
            if let Some(n) = line.strip_prefix("event:") {
                name = n.trim().to_string();
            } else if let Some(d) = line.strip_prefix("data:") {
                data = Some(serde_json::from_str::<Value>(d.trim()).ok()?);
            }
        }
        out.push((name, data?));
    }
    Some(out)
}

/// The text of a list of content blocks, if they are all text.
fn text_of(blocks: &Value, kind: &str) -> Option<String> {
    let mut text = String::new();
    for block in blocks.as_array()? {
        if block.get("type")?.as_str()? != kind {
            return None;
        }
        text.push_str(block.get("text")?.as_str()?);
    }
    Some(text)
}

/// An Anthropic answer, whole (`message`) or streamed (its events).
pub(super) fn anthropic(content_type: &str, body: &[u8]) -> Option<Answer> {
    let mut fields = Map::new();
    let (model, text) = if content_type.starts_with("text/event-stream") {
        let mut model = None;
        let mut text = String::new();
        let mut stopped = false;
        let mut usage = Map::new();
        for (name, data) in events(body)? {
            match name.as_str() {
                "message_start" => {
                    let message = data.get("message")?;
                    model = Some(message.get("model")?.as_str()?.to_string());
                    if let Some(start) = message.get("usage").and_then(Value::as_object) {
                        usage.extend(start.clone());
                    }
                }
                "content_block_start"
                    if data.pointer("/content_block/type")?.as_str()? != "text" =>
                {
                    return None;
                }
                "content_block_delta" => {
                    text.push_str(data.pointer("/delta/text")?.as_str()?);
                }
                "message_delta" => {
                    if let Some(reason) = data.pointer("/delta/stop_reason") {
                        fields.insert("stop_reason".into(), reason.clone());
                    }
                    if let Some(end) = data.get("usage").and_then(Value::as_object) {
                        usage.extend(end.clone());
                    }
                }
                "message_stop" => stopped = true,
                "error" => return None,
                _ => {}
            }
        }
        if !stopped {
            return None;
        }
        fields.insert("usage".into(), Value::Object(usage));
        (model?, text)
    } else {
        let doc: Value = serde_json::from_slice(body).ok()?;
        if doc.get("type")?.as_str()? != "message" {
            return None;
        }
        let text = text_of(doc.get("content")?, "text")?;
        for key in ["stop_reason", "usage"] {
            if let Some(value) = doc.get(key) {
                fields.insert(key.into(), value.clone());
            }
        }
        (doc.get("model")?.as_str()?.to_string(), text)
    };
    Some(Answer::Text {
        endpoint: Endpoint::AnthropicMessages,
        model,
        text,
        fields,
    })
}

/// A Responses answer, whole or streamed (its `response.completed`
/// carries the whole response).
pub(super) fn responses(content_type: &str, body: &[u8]) -> Option<Answer> {
    let doc = if content_type.starts_with("text/event-stream") {
        events(body)?
            .into_iter()
            .find(|(name, _)| name == "response.completed")?
            .1
            .get("response")?
            .clone()
    } else {
        serde_json::from_slice(body).ok()?
    };
    if doc.get("status")?.as_str()? != "completed" {
        return None;
    }
    let [item] = doc.get("output")?.as_array()?.as_slice() else {
        return None;
    };
    if item.get("type")?.as_str()? != "message" {
        return None;
    }
    let text = text_of(item.get("content")?, "output_text")?;
    let mut fields = Map::new();
    if let Some(usage) = doc.get("usage") {
        fields.insert("usage".into(), usage.clone());
    }
    Some(Answer::Text {
        endpoint: Endpoint::OpenAiResponses,
        model: doc.get("model")?.as_str()?.to_string(),
        text,
        fields,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const MESSAGE: &[u8] = br#"{"id":"msg_1","type":"message","role":"assistant","model":"llama3","content":[{"type":"text","text":"Hello world"}],"stop_reason":"end_turn","usage":{"input_tokens":3,"output_tokens":2}}"#;

    #[test]
    fn an_anthropic_answer_is_kept_as_text_and_served_whole_or_as_its_events() {
        let answer =
            Answer::capture(Endpoint::AnthropicMessages, "application/json", MESSAGE).unwrap();
        let (ct, frames) = answer.render(true, false);
        assert_eq!(ct, "text/event-stream");
        let body: Vec<u8> = frames.iter().flat_map(|f| f.to_vec()).collect();
        // What was streamed reads back as the same answer.
        let again = Answer::capture(Endpoint::AnthropicMessages, &ct, &body).unwrap();
        assert_eq!(again, answer);
        let (_, whole) = again.render(false, false);
        let doc: Value = serde_json::from_slice(&whole[0]).unwrap();
        assert_eq!(doc["content"][0]["text"], "Hello world");
        assert_eq!(doc["usage"]["output_tokens"], 2);
        assert!(frames.iter().all(|f| f.ends_with(b"\n\n")));
    }

    #[test]
    fn a_responses_answer_is_kept_as_text_and_served_whole_or_as_its_events() {
        let body = br#"{"id":"resp_1","object":"response","status":"completed","model":"llama3","output":[{"type":"message","id":"m","status":"completed","role":"assistant","content":[{"type":"output_text","text":"Hi there","annotations":[]}]}],"usage":{"input_tokens":1,"output_tokens":2,"total_tokens":3}}"#;
        let answer = Answer::capture(Endpoint::OpenAiResponses, "application/json", body).unwrap();
        let (ct, frames) = answer.render(true, false);
        let streamed: Vec<u8> = frames.iter().flat_map(|f| f.to_vec()).collect();
        assert_eq!(
            Answer::capture(Endpoint::OpenAiResponses, &ct, &streamed).unwrap(),
            answer
        );
        let (_, whole) = answer.render(false, false);
        let doc: Value = serde_json::from_slice(&whole[0]).unwrap();
        assert_eq!(doc["output"][0]["content"][0]["text"], "Hi there");
    }

    #[test]
    fn cut_or_failed_answers_and_tool_use_are_not_kept() {
        let cut = b"event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"model\":\"m\"}}\n\nevent: content_block_delta\ndata: {\"delta\":{\"text\":\"a\"}}\n\n";
        assert!(Answer::capture(Endpoint::AnthropicMessages, "text/event-stream", cut).is_none());
        let tool = br#"{"type":"message","model":"m","content":[{"type":"tool_use","id":"t","name":"f","input":{}}]}"#;
        assert!(Answer::capture(Endpoint::AnthropicMessages, "application/json", tool).is_none());
        let incomplete = br#"{"status":"incomplete","model":"m","output":[]}"#;
        assert!(
            Answer::capture(Endpoint::OpenAiResponses, "application/json", incomplete).is_none()
        );
    }
}
