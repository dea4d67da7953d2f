use std::collections::BTreeMap;
use std::time::Duration;

use super::ollama::go_duration;
use super::*;

fn mins(n: u64) -> KeepAlive {
    KeepAlive::For(Duration::from_secs(60 * n))
}

/// `llama3` pinned to 8192 and 30 minutes; `qwen3:4b` clamped to
/// [2048, 8192] and [5 minutes, 1 hour]; `open:1b` clamped with no
/// upper bound on keep_alive.
fn pinned() -> Pinned {
    let mut models = BTreeMap::new();
    models.insert(
        "llama3".to_string(),
        ModelOptions {
            num_ctx: Some(Setting::Set(8192)),
            keep_alive: Some(Setting::Set(mins(30))),
        },
    );
    models.insert(
        "qwen3:4b".to_string(),
        ModelOptions {
            num_ctx: Some(Setting::Clamp {
                min: Some(2048),
                max: Some(8192),
            }),
            keep_alive: Some(Setting::Clamp {
                min: Some(mins(5)),
                max: Some(mins(60)),
            }),
        },
    );
    models.insert(
        "open:1b".to_string(),
        ModelOptions {
            num_ctx: None,
            keep_alive: Some(Setting::Clamp {
                min: Some(KeepAlive::For(Duration::ZERO)),
                max: None,
            }),
        },
    );
    Pinned::new(&models)
}

fn pin(model: &str, body: &str) -> Option<String> {
    pinned_body(&pinned(), Endpoint::Chat, model, body.as_bytes())
        .map(|b| String::from_utf8(b).unwrap())
}

#[test]
fn a_pinned_model_gets_its_values_whatever_the_client_asks() {
    // (body, what the upstream gets; None: the body as it was)
    let table: [(&str, Option<&str>); 9] = [
        (
            r#"{"model":"llama3","prompt":"hi"}"#,
            Some(
                r#"{"model":"llama3","prompt":"hi","keep_alive":1800,"options":{"num_ctx":8192}}"#,
            ),
        ),
        (
            r#"{"model":"llama3","keep_alive":"5m","options":{"temperature":0,"num_ctx":2048}}"#,
            Some(
                r#"{"model":"llama3","options":{"temperature":0,"num_ctx":8192},"keep_alive":1800}"#,
            ),
        ),
        // Already as pinned, in another spelling Ollama reads the same.
        (
            r#"{"model":"llama3","keep_alive":"30m","options":{"num_ctx":8192}}"#,
            None,
        ),
        (
            r#"{"model":"llama3","keep_alive":1800,"options":{"num_ctx":8192.0}}"#,
            None,
        ),
        // Go matches `Keep_Alive` to the field: it goes too, and so do
        // repeats (Go keeps the last).
        (
            r#"{"model":"llama3","Keep_Alive":0,"keep_alive":"30m","options":{"num_ctx":8192}}"#,
            Some(r#"{"model":"llama3","options":{"num_ctx":8192},"keep_alive":1800}"#),
        ),
        // An unload request (empty prompt, keep_alive 0) becomes a load.
        (
            r#"{"model":"llama3","prompt":"","keep_alive":0,"options":{"num_ctx":8192}}"#,
            Some(r#"{"model":"llama3","prompt":"","options":{"num_ctx":8192},"keep_alive":1800}"#),
        ),
        // `options: null` is no options.
        (
            r#"{"model":"llama3","options":null,"keep_alive":"30m"}"#,
            Some(r#"{"model":"llama3","options":{"num_ctx":8192},"keep_alive":"30m"}"#),
        ),
        // Only `num_ctx` of the options, as written: `NUM_CTX` is no
        // option to Ollama (its options map is matched exactly).
        (
            r#"{"model":"llama3","keep_alive":1800,"options":{"NUM_CTX":1,"num_ctx":null}}"#,
            Some(r#"{"model":"llama3","keep_alive":1800,"options":{"NUM_CTX":1,"num_ctx":8192}}"#),
        ),
        (
            r#"{"model":"llama3","keep_alive":1800,"options":{}}"#,
            Some(r#"{"model":"llama3","keep_alive":1800,"options":{"num_ctx":8192}}"#),
        ),
    ];
    for (body, expected) in table {
        assert_eq!(pin("llama3", body).as_deref(), expected, "{body}");
    }
}

#[test]
fn a_clamped_model_moves_what_the_client_asks_into_the_range() {
    // (body, what the upstream gets; None: the body as it was)
    let table: [(&str, Option<&str>); 15] = [
        (
            r#"{"options":{"num_ctx":512}}"#,
            Some(r#"{"options":{"num_ctx":2048}}"#),
        ),
        (
            r#"{"options":{"num_ctx":32768}}"#,
            Some(r#"{"options":{"num_ctx":8192}}"#),
        ),
        (
            r#"{"options":{"num_ctx":1e300}}"#,
            Some(r#"{"options":{"num_ctx":8192}}"#),
        ),
        (
            r#"{"options":{"num_ctx":-1}}"#,
            Some(r#"{"options":{"num_ctx":2048}}"#),
        ),
        (r#"{"options":{"num_ctx":4096}}"#, None),
        (r#"{"options":{"num_ctx":8192.9}}"#, None),
        // Absent stays absent; what Ollama refuses is left for it to refuse.
        (r#"{"prompt":"x"}"#, None),
        (r#"{"options":{"num_ctx":"4096"}}"#, None),
        (r#"{"options":{"num_ctx":null}}"#, None),
        (r#"{"keep_alive":0}"#, Some(r#"{"keep_alive":300}"#)),
        (r#"{"keep_alive":"2h"}"#, Some(r#"{"keep_alive":3600}"#)),
        (r#"{"keep_alive":-1}"#, Some(r#"{"keep_alive":3600}"#)),
        (r#"{"keep_alive":"-5m"}"#, Some(r#"{"keep_alive":3600}"#)),
        (r#"{"keep_alive":"10m"}"#, None),
        (r#"{"keep_alive":"soon"}"#, None),
    ];
    for (body, expected) in table {
        assert_eq!(pin("qwen3:4b", body).as_deref(), expected, "{body}");
    }
    // Seconds past what Go's `time.Duration` holds are written as the
    // forever they mean, not left to overflow.
    assert_eq!(
        pin("open:1b", r#"{"keep_alive":1e300}"#).as_deref(),
        Some(r#"{"keep_alive":-1}"#)
    );
    assert_eq!(pin("open:1b", r#"{"keep_alive":-1}"#), None);
}

#[test]
fn the_rest_of_the_body_keeps_its_bytes_order_and_spacing() {
    let body = "{ \"prompt\" : \"caf\\u00e9 \\\"q\\\" {x}\" ,\n  \"keep_alive\" : 0 ,\n  \"model\": \"llama3\",\n  \"messages\": [{\"role\":\"user\",\"content\":\"}]\"}],\n  \"options\": { \"seed\" : 1 , \"num_ctx\" : 4096 }\n}\n";
    let expected = "{ \"prompt\" : \"caf\\u00e9 \\\"q\\\" {x}\" ,\n  \"model\": \"llama3\",\n  \"messages\": [{\"role\":\"user\",\"content\":\"}]\"}],\n  \"options\": { \"seed\" : 1,\"num_ctx\":8192 },\"keep_alive\":1800\n}\n";
    assert_eq!(pin("llama3", body).as_deref(), Some(expected));
    let parsed: serde_json::Value = serde_json::from_str(expected).unwrap();
    assert_eq!(parsed["options"]["num_ctx"], 8192);
    assert_eq!(parsed["prompt"], "café \"q\" {x}");
}

#[test]
fn only_the_pinned_models_on_the_endpoints_that_carry_the_options_are_touched() {
    let pinned = pinned();
    let body = br#"{"model":"llama3","options":{"num_ctx":2048}}"#;
    // (endpoint, model, rewritten)
    let table = [
        (Endpoint::Generate, "llama3", true),
        (Endpoint::Chat, "llama3:latest", true),
        (Endpoint::Embed, "llama3", true),
        (Endpoint::Embeddings, "llama3", true),
        (Endpoint::Chat, "llama3:70b", false),
        (Endpoint::Chat, "mistral", false),
        (Endpoint::OpenAiChat, "llama3", false),
        (Endpoint::OpenAiEmbeddings, "llama3", false),
        (Endpoint::AnthropicMessages, "llama3", false),
        (Endpoint::OpenAiResponses, "llama3", false),
        (Endpoint::Show, "llama3", false),
    ];
    for (endpoint, model, rewritten) in table {
        assert_eq!(
            pinned_body(&pinned, endpoint, model, body).is_some(),
            rewritten,
            "{endpoint:?} {model}"
        );
    }
}

#[test]
fn what_is_not_a_json_object_is_left_for_ollama_to_refuse() {
    for body in [
        "",
        "null",
        "[1,2]",
        "\"x\"",
        "{\"model\":",
        "{\"a\":1}}",
        "not json",
    ] {
        assert_eq!(pin("llama3", body), None, "{body}");
    }
    // A JSON object with a type Ollama refuses for `options`.
    assert_eq!(pin("qwen3:4b", r#"{"options":"num_ctx=1"}"#), None);
}

#[test]
fn go_durations_read_as_go_reads_them() {
    const S: i128 = 1_000_000_000;
    // (text, nanoseconds; None: Go's error)
    let table: [(&str, Option<i128>); 17] = [
        ("0", Some(0)),
        ("-0", Some(0)),
        ("5m", Some(300 * S)),
        ("1h30m", Some(5400 * S)),
        ("1.5h", Some(5400 * S)),
        (".5s", Some(S / 2)),
        ("1.s", Some(S)),
        ("+5s", Some(5 * S)),
        ("-1m", Some(-60 * S)),
        ("3\u{b5}s", Some(3000)),
        ("9223372036854775807ns", Some(i64::MAX as i128)),
        ("-9223372036854775808ns", Some(i64::MIN as i128)),
        ("9223372036854775808ns", None),
        ("-1", None),
        ("30", None),
        ("1d", None),
        (".s", None),
    ];
    for (text, nanos) in table {
        assert_eq!(go_duration(text), nanos, "{text}");
    }
    assert_eq!(go_duration(""), None);
}

#[test]
fn keep_alive_is_written_as_ollama_reads_it() {
    let table = [
        (KeepAlive::Forever, "-1"),
        (mins(30), "1800"),
        (KeepAlive::For(Duration::ZERO), "0"),
        (
            KeepAlive::For(Duration::from_millis(1500)),
            "\"1500000000ns\"",
        ),
    ];
    for (keep_alive, json) in table {
        assert_eq!(
            keep_alive_json(keep_alive),
            json.as_bytes(),
            "{keep_alive:?}"
        );
        if let Ok(serde_json::Value::String(text)) = serde_json::from_str(json) {
            assert_eq!(go_duration(&text), Some(1_500_000_000));
        }
    }
}

#[test]
fn pin_request_rewrites_the_buffered_body_and_its_content_length() {
    let pinned = pinned();
    let body = r#"{"model":"llama3","prompt":"hi"}"#;
    let mut request = Request::post("/api/generate")
        .header(CONTENT_LENGTH, body.len())
        .body(Body::from(body))
        .unwrap();
    pin_request(&pinned, &mut request);
    let sent = request.body().buffered().unwrap().clone();
    assert!(sent.ends_with(br#""keep_alive":1800,"options":{"num_ctx":8192}}"#));
    assert_eq!(
        request.headers()[CONTENT_LENGTH],
        sent.len().to_string().as_str()
    );

    // Without a Content-Length, none is added (the body's length says it).
    let mut request = Request::post("/api/chat").body(Body::from(body)).unwrap();
    pin_request(&pinned, &mut request);
    assert!(request.headers().get(CONTENT_LENGTH).is_none());
    assert_ne!(request.body().buffered().unwrap(), body.as_bytes());

    // Classify's model wins over the body's (it is the one routed).
    let mut request = Request::post("/api/chat").body(Body::from(body)).unwrap();
    let mut meta = RequestMeta::new(corral_core::RequestId::from("r"), Endpoint::Chat);
    meta.model = Some("mistral".into());
    request.extensions_mut().insert(meta);
    pin_request(&pinned, &mut request);
    assert_eq!(request.body().buffered().unwrap(), body.as_bytes());

    // A streamed body is not read here.
    let mut request = Request::post("/api/chat")
        .body(Body::streamed(http_body_util::Full::new(
            bytes::Bytes::from(body),
        )))
        .unwrap();
    pin_request(&pinned, &mut request);
    assert!(request.body().buffered().is_none());
}
