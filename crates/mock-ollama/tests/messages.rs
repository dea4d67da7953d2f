//! `/v1/messages`, the Anthropic Messages API, as Ollama serves it: one
//! `message` document or named SSE events, Anthropic's error shape, and
//! the same slots, faults and words as `/api/chat`.

#![allow(clippy::unwrap_used)] // a test fails by panicking

mod common;

use common::Says::Anything;
use common::{
    assert_errors, assert_holds, busy, call, events_ok, events_until_broken, fast_at, fast_slots,
    invalid, json_ok, names, not_json, send, spawn_call, unknown_model, wait_for,
};
use http_body_util::BodyExt;
use serde_json::{json, Value};

const ASK: &str = r#"{"model":"llama3","max_tokens":100,"system":"be brief","messages":[{"role":"user","content":[{"type":"text","text":"why is the sky "},{"type":"text","text":"blue"}]}]}"#;
const ASK_STREAM: &str = r#"{"model":"llama3","max_tokens":100,"system":"be brief","stream":true,"messages":[{"role":"user","content":"why is the sky blue"}]}"#;
const CHAT: &str = r#"{"model":"llama3","stream":false,"messages":[{"role":"system","content":"be brief"},{"role":"user","content":"why is the sky blue"}]}"#;

/// Asserts the `message_delta` event, last but one, says the answer
/// stopped for `reason` after `tokens` tokens.
fn assert_stopped(events: &[(String, Value)], reason: &str, tokens: u64) {
    let delta = &events[events.len() - 2].1;
    assert_eq!(delta["delta"]["stop_reason"], reason);
    assert_eq!(delta["usage"]["output_tokens"], tokens);
}

#[tokio::test]
async fn a_message_answers_the_words_chat_gives_the_same_conversation() {
    let (mock, url) = fast_at("/v1/messages").await;
    let message = json_ok(&url, ASK).await;
    let expected = json!({
        "type": "message", "role": "assistant", "model": "llama3", "stop_reason": "end_turn",
        "content": [{"type": "text"}], "usage": {"output_tokens": 24}
    });
    assert_holds(&message, &expected);
    assert!(message["id"].as_str().unwrap().starts_with("msg_"));
    assert!(message["usage"]["input_tokens"].as_u64().unwrap() > 0);

    let chat = call(&format!("{}/api/chat", mock.url()), CHAT, None)
        .await
        .json();
    assert_eq!(
        message["content"][0]["text"], chat["message"]["content"],
        "text blocks join and `system` leads, as Ollama converts them"
    );
    assert_eq!(message["usage"]["input_tokens"], chat["prompt_eval_count"]);

    let stats = mock.stats();
    assert_eq!(stats.by_path["/v1/messages"], 1);
    assert_eq!(stats.tokens_generated, 48);
    let recorded = &mock.requests()[0];
    assert_eq!(recorded.uri, "/v1/messages");
    assert_eq!(recorded.status, 200);
    assert!(recorded.completed);
    assert!(recorded
        .response
        .contains(message["content"][0]["text"].as_str().unwrap()));
}

#[tokio::test]
async fn a_streamed_message_sends_named_events_whose_deltas_make_the_text() {
    let (_mock, url) = fast_at("/v1/messages").await;
    let whole = json_ok(&url, ASK).await;
    let events = events_ok(&url, ASK_STREAM).await;
    let mut expected = vec!["message_start", "content_block_start"];
    expected.extend(["content_block_delta"; 24]);
    expected.extend(["content_block_stop", "message_delta", "message_stop"]);
    assert_eq!(names(&events), expected);
    for (name, data) in &events {
        assert_eq!(data["type"], name.as_str(), "each event's data names it");
    }

    let start = &events[0].1["message"];
    assert_eq!(start["content"], Value::Array(vec![]));
    assert_eq!(
        start["usage"]["input_tokens"],
        whole["usage"]["input_tokens"]
    );
    assert_eq!(events[1].1["content_block"]["type"], "text");
    let text: String = events
        .iter()
        .filter(|(n, _)| n == "content_block_delta")
        .map(|(_, d)| {
            assert_eq!(d["delta"]["type"], "text_delta");
            d["delta"]["text"].as_str().unwrap().to_string()
        })
        .collect();
    assert_eq!(text, whole["content"][0]["text"].as_str().unwrap());
    assert_stopped(&events, "end_turn", 24);
}

#[tokio::test]
async fn max_tokens_cuts_the_answer_with_stop_reason_max_tokens() {
    let (_mock, url) = fast_at("/v1/messages").await;
    let cut = ASK.replace("\"max_tokens\":100", "\"max_tokens\":3");
    let message = json_ok(&url, &cut).await;
    assert_eq!(message["stop_reason"], "max_tokens");
    assert_eq!(message["usage"]["output_tokens"], 3);
    assert_eq!(
        message["content"][0]["text"]
            .as_str()
            .unwrap()
            .split(' ')
            .count(),
        3
    );

    let cut = ASK_STREAM.replace("\"max_tokens\":100", "\"max_tokens\":3");
    let events = events_ok(&url, &cut).await;
    let deltas = events.iter().filter(|(n, _)| n == "content_block_delta");
    assert_eq!(deltas.count(), 3);
    assert_stopped(&events, "max_tokens", 3);
}

#[tokio::test]
async fn errors_come_in_anthropics_shape_with_ollamas_statuses() {
    let (mock, url) = fast_at("/v1/messages").await;
    let cases = [
        unknown_model(ASK),
        invalid(
            r#"{"max_tokens":100,"messages":[{"role":"user","content":"hi"}]}"#,
            "model is required",
        ),
        // Ollama requires max_tokens, as Anthropic does.
        invalid(
            r#"{"model":"llama3","messages":[{"role":"user","content":"hi"}]}"#,
            "max_tokens is required and must be positive",
        ),
        invalid(
            r#"{"model":"llama3","max_tokens":10,"messages":[]}"#,
            "messages is required",
        ),
        not_json("{not json"),
        busy(ASK, "overloaded_error"),
        (ASK.into(), Some("status=500"), 500, "api_error", Anything),
    ];
    assert_errors(&url, &cases, |body| {
        assert_eq!(body["type"], "error", "{body}");
        assert!(body["request_id"].as_str().unwrap().starts_with("req_"));
    })
    .await;
    assert_eq!(mock.stats().tokens_generated, 0);
}

#[tokio::test]
async fn drop_after_breaks_the_stream_mid_events() {
    let (mock, url) = fast_at("/v1/messages").await;
    let events = events_until_broken(&url, ASK_STREAM, 5).await;
    assert!(events.iter().all(|(n, _)| n != "message_stop"));
    let stats = mock.stats();
    assert_eq!(stats.faults_injected, 1);
    assert_eq!(stats.in_flight, 0, "the slot is free again");
    assert!(!mock.requests()[0].completed);
}

#[tokio::test]
async fn messages_and_chats_share_the_models_slots_and_a_client_leaving_frees_one() {
    let mock = fast_slots(2, 1).await;
    let url = format!("{}/v1/messages", mock.url());
    // Two streams hold both slots, paused after their first event.
    let held: Vec<_> = (0..2)
        .map(|_| spawn_call(url.clone(), ASK_STREAM, Some("pause_after=1")))
        .collect();
    wait_for(&mock, "two paused streams", |s| s.paused == 2).await;
    // A chat for the same model waits for one of them; one more is refused.
    let queued = spawn_call(format!("{}/api/chat", mock.url()), CHAT, None);
    wait_for(&mock, "a queued chat", |s| s.queued == 1).await;
    let refused = call(&url, ASK, None).await;
    assert_eq!(refused.status, 503);
    assert_eq!(refused.json()["error"]["type"], "overloaded_error");

    mock.release(2);
    for stream in held {
        let events = stream.await.unwrap().events();
        assert_eq!(events.last().unwrap().0, "message_stop");
    }
    assert_eq!(queued.await.unwrap().status, 200);
    let stats = mock.stats();
    assert_eq!(stats.peak_in_flight, 2);
    assert_eq!(stats.peak_in_flight_by_model["llama3:latest"], 2);
    assert_eq!(stats.busy_rejections, 1);

    // A client that goes away mid-stream frees its slot.
    let response = send(&url, ASK_STREAM, Some("pause_after=2")).await;
    let mut body = response.into_body();
    body.frame().await.unwrap().unwrap();
    wait_for(&mock, "a paused stream", |s| {
        s.paused == 1 && s.in_flight == 1
    })
    .await;
    drop(body);
    wait_for(&mock, "the slot freed", |s| {
        s.in_flight == 0 && s.cancelled == 1
    })
    .await;
}
