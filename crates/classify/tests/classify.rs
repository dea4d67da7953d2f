//! The classify layer alone: identity, priority, deadline, body bounds and parsing.

#![allow(clippy::unwrap_used)] // a test fails by panicking

use std::convert::Infallible;
use std::time::Duration;

use bytes::Bytes;
use corral_classify::{
    BodyReadFailed, BodyTooLarge, ClassifyConfig, ClassifyLayer, InvalidRequest, Unauthenticated,
};
use corral_core::{Body, BoxError, Endpoint, RequestMeta};
use http::Request;
use http_body_util::StreamBody;
use tokio::time::Instant;
use tower::{service_fn, Layer, Service, ServiceExt};

/// What the inner service saw: the metadata and whether the body arrived
/// buffered.
#[derive(Debug)]
struct Seen {
    meta: RequestMeta,
    buffered: Option<Bytes>,
    request_id_header: Option<String>,
}

fn config(toml: &str) -> ClassifyConfig {
    toml::from_str(toml).expect("test config parses")
}

async fn classify(config: &ClassifyConfig, request: Request<Body>) -> Result<Seen, BoxError> {
    let layer = ClassifyLayer::new(config).expect("test config is valid");
    let service = layer.layer(service_fn(|request: Request<Body>| async move {
        Ok::<_, Infallible>(Seen {
            meta: request
                .extensions()
                .get::<RequestMeta>()
                .cloned()
                .expect("meta is set"),
            buffered: request.body().buffered().cloned(),
            request_id_header: request
                .headers()
                .get("x-request-id")
                .map(|v| v.to_str().unwrap().to_string()),
        })
    }));
    service.oneshot(request).await
}

fn chat(_body: &'static str) -> http::request::Builder {
    Request::post("/api/chat")
}

const FLEET: &str = r#"
    [[classes]]
    name = "opus"
    priority = 3
    priorities = [2, 5]
    [[classes]]
    name = "batch"
    priority = 9
    priorities = [7, 10]
    [[agents]]
    id = "planner"
    key = "sk-planner-secret"
    class = "opus"
    [[agents]]
    id = "nightly"
    class = "batch"
"#;

const CHAT: &str = r#"{"model":"llama3","messages":[{"role":"user","content":"hi"}]}"#;

#[tokio::test]
async fn an_agent_with_a_key_is_known_by_it_and_gets_its_class_priority() {
    let seen = classify(
        &config(FLEET),
        chat(CHAT)
            .header("authorization", "Bearer sk-planner-secret")
            .body(Body::from(CHAT))
            .unwrap(),
    )
    .await
    .unwrap();
    assert_eq!(seen.meta.agent.as_str(), "planner");
    assert_eq!(seen.meta.class.as_str(), "opus");
    assert!(seen.meta.authenticated);
    assert_eq!(seen.meta.priority.get(), 3);
    assert_eq!(seen.meta.model.as_deref(), Some("llama3"));
    assert!(seen.meta.stream);
    assert_eq!(seen.meta.endpoint, Endpoint::Chat);
}

#[tokio::test]
async fn an_unknown_key_is_ignored_unless_keys_are_required() {
    let seen = classify(
        &config(FLEET),
        chat(CHAT)
            .header("authorization", "Bearer ollama")
            .header("x-agent-id", "nightly")
            .body(Body::from(CHAT))
            .unwrap(),
    )
    .await
    .unwrap();
    assert_eq!(seen.meta.agent.as_str(), "nightly");
    assert!(!seen.meta.authenticated);

    let strict = config(&format!("require_key = true\n{FLEET}"));
    let err = classify(
        &strict,
        chat(CHAT)
            .header("authorization", "Bearer ollama")
            .body(Body::from(CHAT))
            .unwrap(),
    )
    .await
    .unwrap_err();
    assert!(err.is::<Unauthenticated>(), "{err}");
    let err = classify(&strict, chat(CHAT).body(Body::from(CHAT)).unwrap())
        .await
        .unwrap_err();
    assert!(err.to_string().contains("API key is required"), "{err}");
}

#[tokio::test]
async fn keys_kept_as_hashes_or_in_files_identify_and_revoked_ones_are_refused() {
    let file = std::env::temp_dir().join(format!("corral-classify-key-{}", std::process::id()));
    std::fs::write(&file, "sk-from-a-file-key\n").unwrap();
    let fleet = config(
        &format!(
            r#"
        [[agents]]
        id = "hashed"
        key_sha256 = "sha256:HASH"
        [[agents]]
        id = "filed"
        key_file = {:?}
        [[agents]]
        id = "gone"
        key = "sk-revoked-key-1"
        revoked = true
        "#,
            file.display().to_string()
        )
        .replace(
            "HASH",
            "c6b0df97c94d158eae9358897ac3f344638cb8305fb9260e8c93c6bb8a72d334",
        ),
    );
    let with_key = |key: &str| {
        chat(CHAT)
            .header("authorization", format!("Bearer {key}"))
            .body(Body::from(CHAT))
            .unwrap()
    };
    let seen = classify(&fleet, with_key("sk-hashed-agent-key"))
        .await
        .unwrap();
    assert_eq!(seen.meta.agent.as_str(), "hashed");
    assert!(seen.meta.authenticated);
    let seen = classify(&fleet, with_key("sk-from-a-file-key"))
        .await
        .unwrap();
    assert_eq!(seen.meta.agent.as_str(), "filed");
    let err = classify(&fleet, with_key("sk-revoked-key-1"))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("revoked"), "{err}");
    let err = classify(
        &fleet,
        chat(CHAT)
            .header("x-agent-id", "gone")
            .body(Body::from(CHAT))
            .unwrap(),
    )
    .await
    .unwrap_err();
    assert!(err.to_string().contains("revoked"), "{err}");
    std::fs::remove_file(file).unwrap();
}

#[tokio::test]
async fn naming_a_keyed_agent_without_its_key_is_refused() {
    let err = classify(
        &config(FLEET),
        chat(CHAT)
            .header("x-agent-id", "planner")
            .body(Body::from(CHAT))
            .unwrap(),
    )
    .await
    .unwrap_err();
    assert!(err.is::<Unauthenticated>(), "{err}");
}

#[tokio::test]
async fn unlisted_agents_are_in_the_default_class_and_may_ask_any_priority() {
    let seen = classify(
        &config(FLEET),
        chat(CHAT)
            .header("x-agent-id", "newcomer-42")
            .header("x-priority", "1")
            .body(Body::from(CHAT))
            .unwrap(),
    )
    .await
    .unwrap();
    assert_eq!(seen.meta.agent.as_str(), "newcomer-42");
    assert_eq!(seen.meta.class.as_str(), "default");
    assert_eq!(seen.meta.priority.get(), 1);

    let anonymous = classify(&config(FLEET), chat(CHAT).body(Body::from(CHAT)).unwrap())
        .await
        .unwrap();
    assert_eq!(anonymous.meta.agent.as_str(), "anonymous");
    assert_eq!(anonymous.meta.priority.get(), 5);
}

#[tokio::test]
async fn an_asked_priority_is_moved_into_the_class_range() {
    for (asked, got) in [("1", 7), ("8", 8), ("10", 10)] {
        let seen = classify(
            &config(FLEET),
            chat(CHAT)
                .header("x-agent-id", "nightly")
                .header("x-priority", asked)
                .body(Body::from(CHAT))
                .unwrap(),
        )
        .await
        .unwrap();
        assert_eq!(seen.meta.priority.get(), got, "asked {asked}");
    }
}

#[tokio::test]
async fn a_priority_that_is_not_one_to_ten_is_a_bad_request() {
    for bad in ["0", "11", "urgent"] {
        let err = classify(
            &config(FLEET),
            chat(CHAT)
                .header("x-priority", bad)
                .body(Body::from(CHAT))
                .unwrap(),
        )
        .await
        .unwrap_err();
        assert!(err.is::<InvalidRequest>(), "{err}");
        assert!(err.to_string().contains("X-Priority"), "{err}");
    }
}

#[tokio::test(start_paused = true)]
async fn a_deadline_is_counted_from_arrival() {
    let start = Instant::now();
    let seen = classify(
        &config(""),
        chat(CHAT)
            .header("x-deadline-ms", "1500")
            .body(Body::from(CHAT))
            .unwrap(),
    )
    .await
    .unwrap();
    assert_eq!(
        seen.meta.deadline,
        Some(start + Duration::from_millis(1500))
    );

    let err = classify(
        &config(""),
        chat(CHAT)
            .header("x-deadline-ms", "soon")
            .body(Body::from(CHAT))
            .unwrap(),
    )
    .await
    .unwrap_err();
    assert!(err.is::<InvalidRequest>());
}

#[tokio::test]
async fn a_request_id_is_kept_or_made() {
    let kept = classify(
        &config(""),
        chat(CHAT)
            .header("x-request-id", "abc-123")
            .body(Body::from(CHAT))
            .unwrap(),
    )
    .await
    .unwrap();
    assert_eq!(kept.meta.request_id.as_str(), "abc-123");

    let made = classify(&config(""), chat(CHAT).body(Body::from(CHAT)).unwrap())
        .await
        .unwrap();
    assert_eq!(
        made.request_id_header.as_deref(),
        Some(made.meta.request_id.as_str())
    );
    assert_eq!(made.meta.request_id.as_str().len(), 32);
}

fn chunked(chunks: Vec<&'static [u8]>) -> Body {
    let stream = futures_stream(
        chunks
            .into_iter()
            .map(|c| Ok::<_, Infallible>(http_body::Frame::data(Bytes::from_static(c)))),
    );
    Body::streamed(StreamBody::new(stream))
}

fn futures_stream<I: Iterator + Unpin>(iter: I) -> futures_util::stream::Iter<I> {
    futures_util::stream::iter(iter)
}

#[tokio::test]
async fn a_streamed_body_is_read_once_and_handed_on_buffered() {
    let seen = classify(
        &config(""),
        Request::post("/api/generate")
            .body(chunked(vec![
                b"{\"model\":",
                b"\"llama3\",\"prompt\":\"hi\"",
                b",\"stream\":false}",
            ]))
            .unwrap(),
    )
    .await
    .unwrap();
    assert_eq!(
        seen.buffered.as_deref(),
        Some(&b"{\"model\":\"llama3\",\"prompt\":\"hi\",\"stream\":false}"[..])
    );
    assert!(!seen.meta.stream);
    assert_eq!(seen.meta.body_bytes, seen.buffered.unwrap().len());
}

#[tokio::test]
async fn a_body_over_the_bound_is_refused_whether_declared_or_not() {
    let small = config("max_request_bytes = 16");
    let err = classify(
        &small,
        Request::post("/api/generate")
            .header("content-length", "1000000")
            .body(chunked(vec![b"{}"]))
            .unwrap(),
    )
    .await
    .unwrap_err();
    assert_eq!(
        err.downcast_ref::<BodyTooLarge>().map(|e| e.limit()),
        Some(16)
    );

    let err = classify(
        &small,
        Request::post("/api/generate")
            .body(chunked(vec![
                b"{\"model\":\"llama3\",",
                b"\"prompt\":\"long\"}",
            ]))
            .unwrap(),
    )
    .await
    .unwrap_err();
    assert!(err.is::<BodyTooLarge>(), "{err}");

    let err = classify(
        &small,
        Request::post("/api/generate")
            .body(Body::from("x".repeat(17)))
            .unwrap(),
    )
    .await
    .unwrap_err();
    assert!(err.is::<BodyTooLarge>(), "{err}");
}

#[tokio::test]
async fn blob_uploads_stream_through_unread_and_unbounded() {
    let seen = classify(
        &config("max_request_bytes = 4"),
        Request::post("/api/blobs/sha256:abc")
            .body(chunked(vec![b"0123456789"]))
            .unwrap(),
    )
    .await
    .unwrap();
    assert!(seen.buffered.is_none(), "blobs are not held in memory");
    assert_eq!(seen.meta.endpoint, Endpoint::Blobs);
}

#[tokio::test]
async fn malformed_json_is_a_bad_request_that_says_what_is_wrong() {
    let err = classify(
        &config(""),
        Request::post("/v1/chat/completions")
            .body(Body::from("{\"model\": llama3}"))
            .unwrap(),
    )
    .await
    .unwrap_err();
    let invalid = err
        .downcast_ref::<InvalidRequest>()
        .expect("invalid request");
    assert!(invalid.to_string().contains("invalid JSON"), "{invalid}");
}

#[tokio::test]
async fn a_broken_client_body_is_reported_as_a_read_failure() {
    let stream = futures_stream(
        vec![
            Ok(http_body::Frame::data(Bytes::from_static(b"{\"model\""))),
            Err::<http_body::Frame<Bytes>, BoxError>("connection reset".into()),
        ]
        .into_iter(),
    );
    let err = classify(
        &config(""),
        Request::post("/api/chat")
            .body(Body::streamed(StreamBody::new(stream)))
            .unwrap(),
    )
    .await
    .unwrap_err();
    assert!(err.is::<BodyReadFailed>(), "{err}");
}

#[tokio::test]
async fn metadata_reads_are_classified_without_a_body() {
    let seen = classify(
        &config(""),
        Request::get("/api/tags").body(Body::empty()).unwrap(),
    )
    .await
    .unwrap();
    assert_eq!(seen.meta.endpoint, Endpoint::Tags);
    assert!(seen.meta.model.is_none());
}

#[tokio::test]
async fn readiness_is_the_inner_services() {
    let (mock, mut handle) = tower_test::mock::pair::<Request<Body>, &'static str>();
    let mut service = ClassifyLayer::new(&config("")).unwrap().layer(mock);
    handle.allow(0);
    tokio_test::assert_pending!(tokio_test::task::spawn(()).enter(|cx, _| service.poll_ready(cx)));
    handle.allow(1);
    service.ready().await.unwrap();
    let response = service.call(Request::post("/api/chat").body(Body::from(CHAT)).unwrap());
    let (request, send) = handle.next_request().await.unwrap();
    assert_eq!(
        request
            .extensions()
            .get::<RequestMeta>()
            .unwrap()
            .model_str(),
        "llama3"
    );
    send.send_response("ok");
    assert_eq!(response.await.unwrap(), "ok");
}

#[test]
fn bad_configs_are_refused_with_the_key_and_reason() {
    let cases = [
        (
            "[[classes]]\nname = \"a\"\npriority = 11",
            "classes[0].priority",
        ),
        (
            "[[classes]]\nname = \"a\"\npriorities = [6, 2]",
            "classes[0].priorities",
        ),
        (
            "[[classes]]\nname = \"a\"\npriority = 1\npriorities = [2, 6]",
            "classes[0].priority",
        ),
        (
            "[[agents]]\nid = \"x\"\nclass = \"ghost\"",
            "agents[0].class",
        ),
        (
            "[[agents]]\nid = \"x\"\n[[agents]]\nid = \"x\"",
            "agents[1].id",
        ),
        ("[[agents]]\nid = \"x\"\nkey = \"short\"", "agents[0].key"),
        (
            "[[agents]]\nid = \"x\"\nkey_sha256 = \"abc\"",
            "agents[0].key_sha256",
        ),
        (
            "[[agents]]\nid = \"x\"\nkey = \"long enough\"\nkey_env = \"K\"",
            "agents[0].key",
        ),
        (
            "[[agents]]\nid = \"x\"\nkey_env = \"CORRAL_TEST_NO_SUCH_VAR\"",
            "agents[0].key_env",
        ),
        (
            "[[agents]]\nid = \"x\"\nkey_file = \"/no/such/key\"",
            "agents[0].key_file",
        ),
        ("default_class = \"nobody\"", "default_class"),
        ("max_request_bytes = 0", "max_request_bytes"),
    ];
    for (toml, key) in cases {
        let err = ClassifyLayer::new(&config(toml)).unwrap_err();
        assert_eq!(err.key(), key, "{toml}: {err}");
    }
}

#[test]
fn unknown_keys_are_errors() {
    let err = toml::from_str::<ClassifyConfig>("[[classes]]\nname = \"a\"\nprio = 3").unwrap_err();
    assert!(err.to_string().contains("unknown field `prio`"), "{err}");
}

#[tokio::test(start_paused = true)]
async fn a_body_that_stops_arriving_is_refused_with_408_after_the_timeout_and_not_before() {
    use futures_util::StreamExt;
    let config = config("body_read_timeout = \"10s\"");
    // A first chunk, then nothing: a slowloris sender.
    let stalled = futures_util::stream::iter(vec![Ok::<_, Infallible>(http_body::Frame::data(
        Bytes::from_static(b"{\"model\":"),
    ))])
    .chain(futures_util::stream::pending());
    let request = Request::post("/api/generate")
        .body(Body::streamed(StreamBody::new(stalled)))
        .unwrap();
    let start = Instant::now();
    let err = classify(&config, request).await.unwrap_err();
    assert_eq!(start.elapsed(), Duration::from_secs(10));
    let timed_out = err.downcast_ref::<corral_classify::BodyTimedOut>().unwrap();
    assert!(timed_out.to_string().contains("body_read_timeout"));
    assert_eq!(
        corral_core::Refusal::status(timed_out),
        http::StatusCode::REQUEST_TIMEOUT
    );

    // A body that arrives in time, however slowly, is read.
    let slow = futures_util::stream::iter([&b"{\"model\":"[..], b"\"llama3\"}"]).then(
        |chunk| async move {
            tokio::time::sleep(Duration::from_secs(4)).await;
            Ok::<_, Infallible>(http_body::Frame::data(Bytes::from_static(chunk)))
        },
    );
    let request = Request::post("/api/generate")
        .body(Body::streamed(StreamBody::new(Box::pin(slow))))
        .unwrap();
    let seen = classify(&config, request).await.unwrap();
    assert_eq!(seen.meta.model.as_deref(), Some("llama3"));
}

#[test]
fn a_private_class_takes_only_agents_that_prove_who_they_are() {
    let keyless = config(
        "[[classes]]\nname = \"ops\"\nprivate = true\n[[agents]]\nid = \"ops-a\"\nclass = \"ops\"\n",
    );
    let err = ClassifyLayer::new(&keyless).unwrap_err();
    assert_eq!(err.key(), "agents[0].key");
    let default_private =
        config("default_class = \"ops\"\n[[classes]]\nname = \"ops\"\nprivate = true\n");
    assert_eq!(
        ClassifyLayer::new(&default_private).unwrap_err().key(),
        "default_class"
    );
    let required = config(
        "require_key = true\ndefault_class = \"ops\"\n[[classes]]\nname = \"ops\"\nprivate = true\n[[agents]]\nid = \"ops-a\"\nkey = \"sk-ops-a-0123\"\n",
    );
    assert!(ClassifyLayer::new(&required).is_ok());
}
