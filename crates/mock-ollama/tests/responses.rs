//! `/v1/responses`, the OpenAI Responses API, as Ollama serves it: one
//! `response` document or named SSE events numbered by
//! `sequence_number`, OpenAI's error shape, and the same slots, faults
//! and words as `/api/chat`.

#![allow(clippy::unwrap_used)] // a test fails by panicking

mod common;

use common::{
    assert_errors, assert_holds, busy, call, events_ok, events_until_broken, fast_at, fast_slots,
    invalid, json_ok, names, not_json, spawn_call, unknown_model, wait_for,
};
use corral_mock_ollama::BUSY_MESSAGE;
use serde_json::{json, Value};

const ASK: &str = r#"{"model":"llama3","instructions":"be brief","input":"why is the sky blue","temperature":0.2}"#;
const ASK_ITEMS: &str = r#"{"model":"llama3","instructions":"be brief","stream":true,"input":[{"type":"message","role":"user","content":[{"type":"input_text","text":"why is the sky "},{"type":"input_text","text":"blue"}]}]}"#;
const CHAT: &str = r#"{"model":"llama3","stream":false,"messages":[{"role":"system","content":"be brief"},{"role":"user","content":"why is the sky blue"}]}"#;

fn output_text(response: &Value) -> &str {
    response["output"][0]["content"][0]["text"]
        .as_str()
        .unwrap()
}

#[tokio::test]
async fn a_response_answers_the_words_chat_gives_the_same_conversation() {
    let (mock, url) = fast_at("/v1/responses").await;
    let response = json_ok(&url, ASK).await;
    let expected = json!({
        "object": "response", "status": "completed", "model": "llama3", "instructions": "be brief"
    });
    assert_holds(&response, &expected);
    assert!(response["id"].as_str().unwrap().starts_with("resp_"));
    assert_eq!(
        response["temperature"], 0.2,
        "the request's settings echoed"
    );
    assert_eq!(response["parallel_tool_calls"], true);
    assert_eq!(response["tools"], Value::Array(vec![]));
    let item = &response["output"][0];
    assert_eq!(
        (&item["type"], &item["role"], &item["status"]),
        (&"message".into(), &"assistant".into(), &"completed".into())
    );
    assert!(item["id"].as_str().unwrap().starts_with("msg_"));
    assert_eq!(item["content"][0]["type"], "output_text");
    assert_eq!(item["content"][0]["annotations"], Value::Array(vec![]));

    let chat = call(&format!("{}/api/chat", mock.url()), CHAT, None)
        .await
        .json();
    assert_eq!(output_text(&response), chat["message"]["content"]);
    let usage = &response["usage"];
    assert_eq!(usage["input_tokens"], chat["prompt_eval_count"]);
    assert_eq!(usage["output_tokens"], 24);
    assert_eq!(
        usage["total_tokens"].as_u64(),
        Some(usage["input_tokens"].as_u64().unwrap() + 24)
    );
    assert_eq!(mock.stats().by_path["/v1/responses"], 1);
    assert!(mock.requests()[0].completed);
}

#[tokio::test]
async fn a_streamed_response_sends_numbered_named_events_whose_deltas_make_the_text() {
    let (_mock, url) = fast_at("/v1/responses").await;
    let whole = json_ok(&url, ASK).await;
    let events = events_ok(&url, ASK_ITEMS).await;
    let mut expected = vec![
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
    ];
    expected.extend(["response.output_text.delta"; 24]);
    expected.extend([
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.completed",
    ]);
    assert_eq!(names(&events), expected);
    for (i, (name, data)) in events.iter().enumerate() {
        assert_eq!(data["type"], name.as_str());
        assert_eq!(data["sequence_number"], i, "{name}");
    }
    assert_eq!(events[0].1["response"]["status"], "in_progress");

    let text: String = events
        .iter()
        .filter(|(n, _)| n == "response.output_text.delta")
        .map(|(_, d)| d["delta"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(
        text,
        output_text(&whole),
        "input parts join as Ollama joins them"
    );
    assert_eq!(events[28].1["text"], text.as_str());
    let completed = &events.last().unwrap().1["response"];
    assert_eq!(completed["status"], "completed");
    assert_eq!(output_text(completed), text);
    assert_eq!(completed["usage"], whole["usage"]);
}

#[tokio::test]
async fn max_output_tokens_cuts_the_answer_and_ollama_still_says_completed() {
    let (_mock, url) = fast_at("/v1/responses").await;
    let cut = ASK.replace("\"temperature\":0.2", "\"max_output_tokens\":3");
    let response = json_ok(&url, &cut).await;
    assert_eq!(response["usage"]["output_tokens"], 3);
    assert_eq!(output_text(&response).split(' ').count(), 3);
    assert_eq!(response["max_output_tokens"], 3);
    // Ollama's ToResponse never reports `incomplete`.
    assert_eq!(response["status"], "completed");
    assert_eq!(response["incomplete_details"], Value::Null);

    let cut = ASK_ITEMS.replace("\"stream\":true", "\"stream\":true,\"max_output_tokens\":3");
    let events = events_ok(&url, &cut).await;
    let deltas = events
        .iter()
        .filter(|(n, _)| n == "response.output_text.delta");
    assert_eq!(deltas.count(), 3);
    assert_eq!(
        events.last().unwrap().1["response"]["usage"]["output_tokens"],
        3
    );
}

#[tokio::test]
async fn an_empty_input_only_loads_the_model_and_answers_no_text() {
    let (mock, url) = fast_at("/v1/responses").await;
    let response = json_ok(&url, r#"{"model":"llama3","input":""}"#).await;
    assert_eq!(response["status"], "completed");
    assert_eq!(output_text(&response), "");
    assert_eq!(response["usage"]["total_tokens"], 0);
    let events = events_ok(&url, r#"{"model":"llama3","input":[],"stream":true}"#).await;
    assert_eq!(
        names(&events),
        [
            "response.created",
            "response.in_progress",
            "response.completed"
        ]
    );
    let stats = mock.stats();
    assert_eq!((stats.model_loads, stats.peak_in_flight), (1, 0));
}

#[tokio::test]
async fn errors_come_in_openais_shape() {
    let (_mock, url) = fast_at("/v1/responses").await;
    let cases = [
        unknown_model(ASK),
        invalid(r#"{"input":"hi"}"#, "model is required"),
        not_json("[1,"),
        busy(ASK, "api_error"),
    ];
    assert_errors(&url, &cases, |body| {
        let error = &body["error"];
        assert_eq!(
            (&error["param"], &error["code"]),
            (&Value::Null, &Value::Null)
        );
    })
    .await;
}

#[tokio::test]
async fn drop_after_breaks_the_stream_and_slots_are_shared_with_messages() {
    let mock = fast_slots(2, 0).await;
    let url = format!("{}/v1/responses", mock.url());
    let events = events_until_broken(&url, ASK_ITEMS, 6).await;
    assert!(events.iter().all(|(n, _)| n != "response.completed"));
    assert_eq!(mock.stats().in_flight, 0);

    // A response and a message hold the model's two slots; a third call
    // finds no room in a queue of zero.
    let held = [
        (url.clone(), ASK_ITEMS),
        (
            format!("{}/v1/messages", mock.url()),
            r#"{"model":"llama3","max_tokens":9,"stream":true,"messages":[{"role":"user","content":"hi"}]}"#,
        ),
    ]
    .map(|(url, body)| spawn_call(url, body, Some("pause_after=1")));
    wait_for(&mock, "two paused streams", |s| s.paused == 2).await;
    let refused = call(&url, ASK, None).await;
    assert_eq!(refused.status, 503);
    assert_eq!(refused.json()["error"]["message"], BUSY_MESSAGE);
    mock.release(2);
    for stream in held {
        assert!(!stream.await.unwrap().broken);
    }
    let stats = mock.stats();
    assert_eq!(stats.peak_in_flight_by_model["llama3:latest"], 2);
    assert_eq!(stats.busy_rejections, 1);
    assert_eq!(stats.in_flight, 0);
}
