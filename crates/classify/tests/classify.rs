//! The classify layer alone: identity, classes, priority, deadline,
//! request ids and its config. Bodies are in `bodies.rs`.

#![allow(clippy::unwrap_used)] // a test fails by panicking

mod common;

use std::time::Duration;

use corral_classify::{ClassifyConfig, ClassifyLayer, InvalidRequest, Unauthenticated};
use corral_core::{Body, Endpoint, RequestMeta};
use http::Request;
use tokio::time::Instant;
use tower::{Layer, Service, ServiceExt};

use common::{admitted, chat, config, refused, FLEET};

/// A config with one agent, `id`, and one more line of its settings.
fn one_agent(id: &str, setting: &str) -> ClassifyConfig {
    config(&format!("[[agents]]\nid = {id:?}\n{setting}\n"))
}

#[tokio::test]
async fn an_agent_with_a_key_is_known_by_it_and_gets_its_class_priority() {
    let seen = admitted(
        &config(FLEET),
        chat(&[("authorization", "Bearer sk-planner-secret")]),
    )
    .await;
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
    let unknown_key = ("authorization", "Bearer ollama");
    let seen = admitted(
        &config(FLEET),
        chat(&[unknown_key, ("x-agent-id", "nightly")]),
    )
    .await;
    assert_eq!(seen.meta.agent.as_str(), "nightly");
    assert!(!seen.meta.authenticated);

    let strict = config(&format!("require_key = true\n{FLEET}"));
    let err = refused(&strict, chat(&[unknown_key])).await;
    assert!(err.is::<Unauthenticated>(), "{err}");
    let err = refused(&strict, chat(&[])).await;
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
    let with_key = |key: &str| chat(&[("authorization", &format!("Bearer {key}"))]);
    let seen = admitted(&fleet, with_key("sk-hashed-agent-key")).await;
    assert_eq!(seen.meta.agent.as_str(), "hashed");
    assert!(seen.meta.authenticated);
    let seen = admitted(&fleet, with_key("sk-from-a-file-key")).await;
    assert_eq!(seen.meta.agent.as_str(), "filed");
    let err = refused(&fleet, with_key("sk-revoked-key-1")).await;
    assert!(err.to_string().contains("revoked"), "{err}");
    let err = refused(&fleet, chat(&[("x-agent-id", "gone")])).await;
    assert!(err.to_string().contains("revoked"), "{err}");
    std::fs::remove_file(file).unwrap();
}

#[tokio::test]
async fn an_anthropic_clients_x_api_key_identifies_its_agent() {
    let fleet = one_agent("claude-1", r#"key = "sk-claude-agent-key""#);
    let seen = admitted(&fleet, chat(&[("x-api-key", "sk-claude-agent-key")])).await;
    assert_eq!(seen.meta.agent.as_str(), "claude-1");
    assert!(seen.meta.authenticated);
}

#[tokio::test]
async fn an_agent_whose_key_variable_is_unset_is_disabled_not_claimable() {
    // The proxy starts (an image run without the managing key serves the
    // others); the agent's id cannot be claimed without its key.
    let fleet = one_agent("ops", r#"key_env = "CORRAL_TEST_KEY_NEVER_SET""#);
    let err = refused(&fleet, chat(&[("x-agent-id", "ops")])).await;
    assert!(err.is::<Unauthenticated>(), "{err}");
}

#[tokio::test]
async fn naming_a_keyed_agent_without_its_key_is_refused() {
    let err = refused(&config(FLEET), chat(&[("x-agent-id", "planner")])).await;
    assert!(err.is::<Unauthenticated>(), "{err}");
}

#[tokio::test]
async fn unlisted_agents_are_in_the_default_class_and_may_ask_any_priority() {
    let seen = admitted(
        &config(FLEET),
        chat(&[("x-agent-id", "newcomer-42"), ("x-priority", "1")]),
    )
    .await;
    assert_eq!(seen.meta.agent.as_str(), "newcomer-42");
    assert_eq!(seen.meta.class.as_str(), "default");
    assert_eq!(seen.meta.priority.get(), 1);

    let anonymous = admitted(&config(FLEET), chat(&[])).await;
    assert_eq!(anonymous.meta.agent.as_str(), "anonymous");
    assert_eq!(anonymous.meta.priority.get(), 5);
}

#[tokio::test]
async fn an_asked_priority_is_moved_into_the_class_range() {
    for (asked, got) in [("1", 7), ("8", 8), ("10", 10)] {
        let seen = admitted(
            &config(FLEET),
            chat(&[("x-agent-id", "nightly"), ("x-priority", asked)]),
        )
        .await;
        assert_eq!(seen.meta.priority.get(), got, "asked {asked}");
    }
}

#[tokio::test]
async fn a_priority_that_is_not_one_to_ten_is_a_bad_request() {
    for bad in ["0", "11", "urgent"] {
        let err = refused(&config(FLEET), chat(&[("x-priority", bad)])).await;
        assert!(err.is::<InvalidRequest>(), "{err}");
        assert!(err.to_string().contains("X-Priority"), "{err}");
    }
}

#[tokio::test(start_paused = true)]
async fn a_deadline_is_counted_from_arrival() {
    let start = Instant::now();
    let seen = admitted(&config(""), chat(&[("x-deadline-ms", "1500")])).await;
    assert_eq!(
        seen.meta.deadline,
        Some(start + Duration::from_millis(1500))
    );

    let err = refused(&config(""), chat(&[("x-deadline-ms", "soon")])).await;
    assert!(err.is::<InvalidRequest>());
    // As far as a client may ask: never a panic.
    let far = admitted(
        &config(""),
        chat(&[("x-deadline-ms", &u64::MAX.to_string())]),
    )
    .await;
    assert!(far
        .meta
        .deadline
        .is_none_or(|d| d > start + Duration::from_secs(1 << 40)));
}

#[tokio::test(start_paused = true)]
async fn a_class_deadline_holds_for_requests_that_set_none() {
    let start = Instant::now();
    let classes =
        config("default_class = \"batch\"\n[[classes]]\nname = \"batch\"\ndeadline = \"2m\"\n");
    let seen = admitted(&classes, chat(&[])).await;
    assert_eq!(seen.meta.deadline, Some(start + Duration::from_secs(120)));
    // The request's own wins.
    let seen = admitted(&classes, chat(&[("x-deadline-ms", "1500")])).await;
    assert_eq!(
        seen.meta.deadline,
        Some(start + Duration::from_millis(1500))
    );
}

#[tokio::test]
async fn a_ttft_objective_comes_from_the_header_else_the_class() {
    let classes =
        config("default_class = \"chat\"\n[[classes]]\nname = \"chat\"\nttft = \"800ms\"\n");
    let seen = admitted(&classes, chat(&[])).await;
    assert_eq!(seen.meta.ttft, Some(Duration::from_millis(800)));
    let seen = admitted(&classes, chat(&[("x-corral-ttft-ms", "250")])).await;
    assert_eq!(seen.meta.ttft, Some(Duration::from_millis(250)));
    assert_eq!(admitted(&config(""), chat(&[])).await.meta.ttft, None);
    let err = refused(&classes, chat(&[("x-corral-ttft-ms", "fast")])).await;
    assert!(err.to_string().contains("X-Corral-Ttft-Ms"), "{err}");
}

#[tokio::test]
async fn a_request_id_is_kept_or_made() {
    let kept = admitted(&config(""), chat(&[("x-request-id", "abc-123")])).await;
    assert_eq!(kept.meta.request_id.as_str(), "abc-123");

    let made = admitted(&config(""), chat(&[])).await;
    assert_eq!(
        made.request_id_header.as_deref(),
        Some(made.meta.request_id.as_str())
    );
    assert_eq!(made.meta.request_id.as_str().len(), 32);
}

#[tokio::test]
async fn readiness_is_the_inner_services() {
    let (mock, mut handle) = tower_test::mock::pair::<Request<Body>, &'static str>();
    let mut service = ClassifyLayer::new(&config("")).unwrap().layer(mock);
    handle.allow(0);
    tokio_test::assert_pending!(tokio_test::task::spawn(()).enter(|cx, _| service.poll_ready(cx)));
    handle.allow(1);
    service.ready().await.unwrap();
    let response = service.call(chat(&[]));
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
