//! `[models."name"]` through the proxy: whatever `num_ctx` or
//! `keep_alive` a client sends for a pinned model, the server gets the
//! operator's (or the client's, moved into the operator's range), so no
//! client reloads or unloads a runner the others share. The rest of the
//! body arrives as the client wrote it, the cache keys the pinned body,
//! and a bad value in the file is refused with the file, line, key and
//! reason.

#![allow(clippy::unwrap_used)] // a test fails by panicking

use corral_e2e::{fast, get, mock, proxy_toml, request_with, send, upstream_saw};
use corral_mock_ollama::MockOllama;

const PINS: &str = r#"
[models."llama3"]
num_ctx = 8192
keep_alive = "30m"

[models."tinyllama:latest"]
num_ctx = { min = 2048, max = 8192 }
keep_alive = { min = "5m", max = "1h" }

[models."nomic-embed-text"]
keep_alive = -1
"#;

/// Sends `body` to `path` as request `id` and returns what the upstream
/// got, parsed, with its length as sent.
async fn upstream_got(
    upstream: &MockOllama,
    url: &str,
    path: &str,
    id: &str,
    body: &str,
) -> (serde_json::Value, String) {
    let reply = send(request_with(
        "POST",
        &format!("{url}{path}"),
        body.to_string(),
        &[("x-mock-id", id)],
    ))
    .await;
    assert_eq!(reply.status, 200, "{path} {body}: {}", reply.text());
    let seen = upstream_saw(upstream, id);
    assert_eq!(seen.body_len, seen.body.len() as u64, "{id}");
    assert_eq!(
        seen.headers.get("content-length").map(String::as_str),
        Some(seen.body.len().to_string().as_str()),
        "{id}: the length sent is the rewritten body's"
    );
    (serde_json::from_str(&seen.body).unwrap(), seen.body)
}

#[tokio::test]
async fn a_client_asking_another_num_ctx_or_keep_alive_gets_the_pinned_ones() {
    let upstream = mock(fast()).await;
    let corral = proxy_toml(&upstream.url(), PINS).await;
    let url = corral.url();

    let (seen, raw) = upstream_got(
        &upstream,
        &url,
        "/api/generate",
        "gen",
        r#"{"model":"llama3","prompt":"why?","stream":false,"keep_alive":0,"options":{"temperature":0.5,"num_ctx":2048}}"#,
    )
    .await;
    assert_eq!(seen["options"]["num_ctx"], 8192);
    assert_eq!(seen["keep_alive"], 1800);
    assert_eq!(
        raw,
        r#"{"model":"llama3","prompt":"why?","stream":false,"options":{"temperature":0.5,"num_ctx":8192},"keep_alive":1800}"#,
        "the rest as the client wrote it"
    );

    // `llama3:latest` is `llama3`; a chat with no options gets them.
    let (seen, _) = upstream_got(
        &upstream,
        &url,
        "/api/chat",
        "chat",
        r#"{"model":"llama3:latest","messages":[{"role":"user","content":"hi"}],"stream":false}"#,
    )
    .await;
    assert_eq!(seen["options"]["num_ctx"], 8192);
    assert_eq!(seen["keep_alive"], 1800);

    // Clamped: too much is cut to the most; what is absent stays absent.
    let (seen, _) = upstream_got(
        &upstream,
        &url,
        "/api/generate",
        "clamped",
        r#"{"model":"tinyllama","prompt":"x","stream":false,"options":{"num_ctx":131072}}"#,
    )
    .await;
    assert_eq!(seen["options"]["num_ctx"], 8192);
    assert!(seen.get("keep_alive").is_none(), "{seen}");

    let (seen, _) = upstream_got(
        &upstream,
        &url,
        "/api/embed",
        "embed",
        r#"{"model":"nomic-embed-text","input":"x","keep_alive":"10s"}"#,
    )
    .await;
    assert_eq!(seen["keep_alive"], -1);

    // A model with no pins, and the OpenAI API (which carries neither
    // option to Ollama), go through untouched.
    let body = r#"{"model":"tinyllama:1b" ,"prompt":"x","stream":false,"options":{"num_ctx":1}}"#;
    let reply = send(request_with(
        "POST",
        &format!("{url}/api/generate"),
        body,
        &[("x-mock-id", "other")],
    ))
    .await;
    assert_eq!(
        upstream_saw(&upstream, "other").body,
        body,
        "{}",
        reply.text()
    );
    let body = r#"{"model":"llama3","messages":[{"role":"user","content":"hi"}]}"#;
    send(request_with(
        "POST",
        &format!("{url}/v1/chat/completions"),
        body,
        &[("x-mock-id", "openai")],
    ))
    .await;
    assert_eq!(upstream_saw(&upstream, "openai").body, body);
}

#[tokio::test]
async fn one_client_cannot_unload_a_pinned_model_the_others_use() {
    let upstream = mock(fast()).await;
    let corral = proxy_toml(&upstream.url(), PINS).await;
    let url = corral.url();
    let load = r#"{"model":"llama3","prompt":"","stream":false}"#;
    let unload = r#"{"model":"llama3","prompt":"","keep_alive":0,"stream":false}"#;
    let loaded = || async {
        let ps = get(&format!("{}/api/ps", upstream.url())).await.json();
        ps["models"]
            .as_array()
            .unwrap()
            .iter()
            .any(|m| m["name"].as_str().is_some_and(|n| n.starts_with("llama3")))
    };

    let reply = send(request_with(
        "POST",
        &format!("{url}/api/generate"),
        load,
        &[],
    ))
    .await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert!(loaded().await);
    let reply = send(request_with(
        "POST",
        &format!("{url}/api/generate"),
        unload,
        &[],
    ))
    .await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert!(loaded().await, "keep_alive: 0 became the pinned 30 minutes");

    // Straight to the server, the same request does unload it: the
    // mock is Ollama enough for the test to mean something.
    let reply = send(request_with(
        "POST",
        &format!("{}/api/generate", upstream.url()),
        unload,
        &[],
    ))
    .await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert!(!loaded().await);
}

#[tokio::test]
async fn the_cache_keys_the_pinned_body_so_clients_differing_only_in_num_ctx_share_an_answer() {
    let upstream = mock(fast()).await;
    let layers = "[[layers]]\nkind = \"cache\"\n[[layers]]\nkind = \"priority\"\n";
    let corral = proxy_toml(&upstream.url(), &format!("{layers}{PINS}")).await;
    let url = format!("{}/api/embed", corral.url());
    let mut labels = Vec::new();
    for num_ctx in [512, 4096, 8192] {
        let body =
            format!(r#"{{"model":"llama3","input":"same","options":{{"num_ctx":{num_ctx}}}}}"#);
        let reply = send(request_with("POST", &url, body, &[])).await;
        assert_eq!(reply.status, 200, "{}", reply.text());
        labels.push(reply.header("x-corral-cache").unwrap().to_string());
    }
    assert_eq!(labels, ["miss", "hit", "hit"]);
    assert_eq!(upstream.stats().requests, 1);
}

#[test]
fn a_bad_pin_in_the_file_is_refused_with_its_file_line_key_and_reason() {
    let dir = std::env::temp_dir().join(format!("corral-pins-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("corral.toml");
    // (the file's models section, the key refused, its line, the reason)
    let table = [
        (
            "[models.\"llama3:8b\"]\nkeep_alive = \"30m\"\nnum_ctx = { min = 8192, max = 4096 }\n",
            "models.\"llama3:8b\".num_ctx.min",
            5,
            "must be at most max (4096)",
        ),
        (
            "[models.\"llama3\"]\nnum_ctx = 0\n",
            "models.\"llama3\".num_ctx",
            4,
            "must be between 1 and 2147483647",
        ),
        (
            "[models.\"llama3\"]\n\nkeep_alive = \"later\"\n",
            "models.llama3.keep_alive",
            5,
            "\"later\" is not a duration",
        ),
    ];
    for (models, key, line, reason) in table {
        let text = format!("[server]\nlisten = \"127.0.0.1:0\"\n{models}");
        std::fs::write(&path, &text).unwrap();
        let err = corral::Config::load(&path).unwrap_err();
        assert_eq!(err.file, path, "{text}");
        assert_eq!(err.key, key, "{text}");
        assert_eq!(err.line, Some(line), "{text}");
        assert!(err.reason.starts_with(reason), "{text}: {err}");
        let said = err.to_string();
        assert!(
            said.starts_with(&format!("{}:{line}: {key}: ", path.display())),
            "{said}"
        );
    }
    std::fs::remove_dir_all(&dir).unwrap();
}
