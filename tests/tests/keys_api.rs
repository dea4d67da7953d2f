//! API keys issued while serving: `POST /corral/keys` shows a key once
//! and it works at once, on every replica sharing Redis; `GET` lists
//! digests, classes and last use; `DELETE` revokes it everywhere; a keys
//! file keeps them across a restart; the file's own keys still work.

#![allow(clippy::unwrap_used)] // a test fails by panicking

use corral::{Config, Running};
use corral_e2e::{eventually_async, mock, request_with, send, Reply};

const TOKEN: &str = "keys-admin-token-1234";

fn admin(method: &str, url: &str, body: &str) -> http::Request<http_body_util::Full<bytes::Bytes>> {
    request_with(
        method,
        url,
        body.to_string(),
        &[("authorization", &format!("Bearer {TOKEN}"))],
    )
}

async fn generate_with(url: &str, key: &str) -> Reply {
    send(request_with(
        "POST",
        &format!("{url}/api/generate"),
        r#"{"model":"llama3","prompt":"hi","stream":false}"#,
        &[("authorization", &format!("Bearer {key}"))],
    ))
    .await
}

fn text(upstream: &str, extra: &str) -> String {
    format!(
        "[server]\nlisten = \"127.0.0.1:0\"\n[admin]\ntoken = \"{TOKEN}\"\n[upstream]\nurl = \"{upstream}\"\n[identity]\nrequire_key = true\n{extra}\n[[classes]]\nname = \"batch\"\npriority = 8\n[[agents]]\nid = \"from-the-file\"\nkey_sha256 = \"{}\"\n",
        corral_auth::key_digest("file-key-0123456789")
    )
}

async fn start(text: &str) -> Running {
    Running::start(&Config::parse(text, std::path::Path::new("keys.toml")).unwrap())
        .await
        .unwrap()
}

#[tokio::test]
async fn a_key_issued_works_at_once_is_listed_is_revoked_and_a_keys_file_keeps_it() {
    let upstream = mock(corral_e2e::fast()).await;
    let dir = std::env::temp_dir().join(format!("corral-keys-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("keys.json");
    let _ = std::fs::remove_file(&file);
    let text = text(
        &upstream.url(),
        &format!("keys_file = \"{}\"\n", file.display()),
    );
    let corral = start(&text).await;
    let url = corral.url();

    let issued = send(admin(
        "POST",
        &format!("{url}/corral/keys"),
        r#"{"agent":"night","class":"batch"}"#,
    ))
    .await;
    assert_eq!(issued.status, 201, "{}", issued.text());
    let body = issued.json();
    let key = body["key"].as_str().unwrap().to_string();
    assert_eq!(body["digest"], corral_auth::key_digest(&key));
    assert_eq!(body["kept"], "file");
    // Only the digest is kept.
    let kept = std::fs::read_to_string(&file).unwrap();
    assert!(
        kept.contains(body["digest"].as_str().unwrap()) && !kept.contains(&key),
        "{kept}"
    );

    assert_eq!(generate_with(&url, &key).await.status, 200, "works at once");
    assert_eq!(
        generate_with(&url, "file-key-0123456789").await.status,
        200,
        "the file's keys too"
    );
    assert_eq!(generate_with(&url, "not-a-key-at-all").await.status, 401);

    let listed = send(admin("GET", &format!("{url}/corral/keys"), ""))
        .await
        .json();
    let entry = &listed["keys"][0];
    assert_eq!(entry["agent"], "night");
    assert_eq!(entry["class"], "batch");
    assert!(entry["last_used"].as_f64().is_some(), "{listed}");
    assert!(!listed.to_string().contains(&key), "never the key again");
    // Its requests are the agent's, in its class.
    let agents = send(admin("GET", &format!("{url}/corral/agents"), ""))
        .await
        .json();
    assert_eq!(agents["night"]["class"], "batch", "{agents}");

    // A class that does not exist, or no agent: 400.
    let bad = send(admin(
        "POST",
        &format!("{url}/corral/keys"),
        r#"{"agent":"x","class":"nope"}"#,
    ))
    .await;
    assert_eq!(bad.status, 400);
    assert!(bad.error().contains("no class \"nope\""), "{}", bad.error());
    let bad = send(admin(
        "POST",
        &format!("{url}/corral/keys"),
        r#"{"class":"batch"}"#,
    ))
    .await;
    assert_eq!(bad.status, 400);
    // An agent of the file has the file's keys.
    let bad = send(admin(
        "POST",
        &format!("{url}/corral/keys"),
        r#"{"agent":"from-the-file"}"#,
    ))
    .await;
    assert_eq!(bad.status, 409, "{}", bad.text());
    // Without the admin token: 401.
    let refused = corral_e2e::post(&format!("{url}/corral/keys"), r#"{"agent":"x"}"#).await;
    assert_eq!(refused.status, 401);

    // A restart keeps it.
    corral.shutdown().await;
    let corral = start(&text).await;
    let url = corral.url();
    assert_eq!(
        generate_with(&url, &key).await.status,
        200,
        "kept across a restart"
    );

    // Revoked: refused at once.
    let revoked = send(admin("DELETE", &format!("{url}/corral/keys/night"), "")).await;
    assert_eq!(revoked.status, 200, "{}", revoked.text());
    assert_eq!(revoked.json()["revoked"], 1);
    assert_eq!(generate_with(&url, &key).await.status, 401);
    // Kept, marked: refused as revoked after a restart too.
    let kept: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&file).unwrap()).unwrap();
    assert_eq!(kept[0]["revoked"], true, "{kept}");
    corral.shutdown().await;
    let corral = start(&text).await;
    let url = corral.url();
    let refused = generate_with(&url, &key).await;
    assert_eq!(refused.status, 401);
    assert!(refused.error().contains("revoked"), "{}", refused.error());
    let again = send(admin("DELETE", &format!("{url}/corral/keys/night"), "")).await;
    assert_eq!(again.status, 404);
    let listed = send(admin("GET", &format!("{url}/corral/keys"), ""))
        .await
        .json();
    assert_eq!(listed["keys"][0]["revoked"], true, "{listed}");
}

#[tokio::test]
async fn with_keys_optional_an_issued_agent_is_not_taken_on_its_word_and_a_revoked_key_is_refused()
{
    let upstream = mock(corral_e2e::fast()).await;
    let text = text(&upstream.url(), "").replace("require_key = true", "require_key = false");
    let corral = start(&text).await;
    let url = corral.url();
    let issued = send(admin(
        "POST",
        &format!("{url}/corral/keys"),
        r#"{"agent":"keyed"}"#,
    ))
    .await;
    let key = issued.json()["key"].as_str().unwrap().to_string();
    // Keys optional: anyone may name an agent, but not one with a key.
    let claimed = send(request_with(
        "POST",
        &format!("{url}/api/generate"),
        r#"{"model":"llama3","prompt":"hi","stream":false}"#,
        &[("x-agent-id", "keyed")],
    ))
    .await;
    assert_eq!(claimed.status, 401, "{}", claimed.text());
    assert_eq!(generate_with(&url, &key).await.status, 200);
    send(admin("DELETE", &format!("{url}/corral/keys/keyed"), "")).await;
    // Revoked: refused as such, not served as an unknown key.
    let refused = generate_with(&url, &key).await;
    assert_eq!(refused.status, 401);
    assert!(refused.error().contains("revoked"), "{}", refused.error());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_issued_on_one_replica_works_on_the_other_and_stops_when_revoked_there() {
    let redis = corral_e2e::Redis::start().await;
    let upstream = mock(corral_e2e::fast()).await;
    let text = text(
        &upstream.url(),
        &format!(
            "[state]\nbackend = \"redis\"\nredis_url = \"{}\"\nkey_prefix = \"keys-test\"\n",
            redis.url
        ),
    );
    let (a, b) = (start(&text).await, start(&text).await);
    let issued = send(admin(
        "POST",
        &format!("{}/corral/keys", a.url()),
        r#"{"agent":"roamer"}"#,
    ))
    .await;
    assert_eq!(issued.status, 201, "{}", issued.text());
    assert_eq!(issued.json()["kept"], "redis");
    let key = issued.json()["key"].as_str().unwrap().to_string();
    let (b_url, a_url) = (b.url(), a.url());
    eventually_async("the other replica knows the key", || {
        let (url, key) = (b_url.clone(), key.clone());
        async move { generate_with(&url, &key).await.status == 200 }
    })
    .await;
    // A replica started later reads it from Redis.
    let c = start(&text).await;
    let c_url = c.url();
    eventually_async("a later replica knows the key", || {
        let (url, key) = (c_url.clone(), key.clone());
        async move { generate_with(&url, &key).await.status == 200 }
    })
    .await;
    // Revoked on B: refused on A too.
    let revoked = send(admin("DELETE", &format!("{b_url}/corral/keys/roamer"), "")).await;
    assert_eq!(revoked.status, 200);
    eventually_async("the first replica refuses the key", || {
        let (url, key) = (a_url.clone(), key.clone());
        async move { generate_with(&url, &key).await.status == 401 }
    })
    .await;
}
