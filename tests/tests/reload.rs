//! Reloading the configuration while serving: under the 131-agent herd a
//! reload raises the capacity and changes a class's priority with no
//! request failed or sent twice; the queue carries over in its order;
//! a bad configuration, or one that needs a restart, leaves the old one
//! serving; `POST /corral/reload` reloads every replica through the bus.

#![allow(clippy::unwrap_used)] // a test fails by panicking

use std::path::PathBuf;
use std::sync::Arc;

use corral::reload::ReloadError;
use corral::{Config, Running};
use corral_e2e::herd::{assert_the_upstream_kept_up, CLASSES};
use corral_e2e::{mock, request_with, send, upstream_until, within};
use tokio::sync::Barrier;

/// A file of its own for each test.
fn file(name: &str, text: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("corral-reload-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

/// The herd's configuration: its classes and agents, the scheduler, and
/// `capacity`; the batch class at `batch`.
fn herd_text(upstream: &str, capacity: usize, batch: u8) -> String {
    format!(
        "[server]\nlisten = \"127.0.0.1:0\"\n[upstream]\nurl = \"{upstream}\"\ncapacity = {capacity}\n\n[[layers]]\nkind = \"priority\"\n{}",
        corral_e2e::herd::classes_toml(|name, p| if name == "batch" { batch } else { p }, true)
    )
}

async fn start(path: &std::path::Path) -> Running {
    Running::start(&Config::load(path).unwrap()).await.unwrap()
}

const REQUESTS_PER_AGENT: usize = 3;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_under_the_herd_raises_capacity_and_moves_a_class_with_nothing_failed_or_sent_twice(
) {
    let upstream = mock(corral_e2e::herd::upstream()).await;
    let path = file("herd.toml", &herd_text(&upstream.url(), 2, 9));
    let corral = start(&path).await;
    let url = format!("{}/api/generate", corral.url());
    let agents = corral_e2e::herd::agents();
    let start = Arc::new(Barrier::new(agents));
    let mut calls = Vec::new();
    for (class, priority, count) in CLASSES {
        for i in 0..count {
            let (url, start) = (url.clone(), start.clone());
            calls.push(tokio::spawn(async move {
                let client = corral_e2e::client();
                start.wait().await;
                for n in 0..REQUESTS_PER_AGENT {
                    let request = corral_e2e::herd::ask(&url, class, i, n, priority);
                    let response = client.request(request).await.expect("answered");
                    let status = response.status();
                    let body = http_body_util::BodyExt::collect(response.into_body())
                        .await
                        .unwrap()
                        .to_bytes();
                    assert_eq!(status, 200, "every request is served: {body:?}");
                }
            }));
        }
    }
    // A third of the way through, capacity 2 → 4 and batch 9 → 1.
    upstream_until(&upstream, "a third of the herd served", |s| {
        s.completed as usize >= agents
    })
    .await;
    let before = upstream.stats();
    assert!(before.peak_in_flight <= 2, "capacity 2 held: {before:?}");
    std::fs::write(&path, herd_text(&upstream.url(), 4, 1)).unwrap();
    let changes = corral.reloader().reload().await.unwrap();
    let changes = changes.join("\n");
    assert!(
        changes.contains("layers[0] priority: carried over"),
        "{changes}"
    );
    assert!(changes.contains("[upstream] capacity: 2 → 4"), "{changes}");
    for call in calls {
        within(call).await.unwrap();
    }
    let stats = upstream.stats();
    assert_the_upstream_kept_up(&stats, "across the reload");
    assert!(
        stats.peak_in_flight > 2,
        "the new capacity is used: {stats:?}"
    );
    assert_eq!(
        stats.requests as usize,
        agents * REQUESTS_PER_AGENT,
        "each request reached the upstream once: none re-run"
    );
    assert_eq!(stats.completed as usize, agents * REQUESTS_PER_AGENT);
}

/// Capacity 1, classes `low` (9) and `mid` (5), an agent each, with the
/// given priority for `low`.
fn ordered_text(upstream: &str, low: u8, extra: &str) -> String {
    format!(
        "[server]\nlisten = \"127.0.0.1:0\"\n[upstream]\nurl = \"{upstream}\"\ncapacity = 1\n{extra}\n[[classes]]\nname = \"low\"\npriority = {low}\npriorities = [{low}, {low}]\n[[agents]]\nid = \"low-0\"\nclass = \"low\"\n\n[[classes]]\nname = \"mid\"\npriority = 5\npriorities = [5, 5]\n[[agents]]\nid = \"mid-0\"\nclass = \"mid\"\n\n[[layers]]\nkind = \"priority\"\n"
    )
}

fn generate(
    url: &str,
    agent: &str,
    id: &str,
    fault: Option<&str>,
) -> http::Request<http_body_util::Full<bytes::Bytes>> {
    let mut headers = vec![
        ("x-agent-id", agent),
        ("x-request-id", id),
        ("x-mock-id", id),
    ];
    if let Some(fault) = fault {
        headers.push(("x-mock-fault", fault));
    }
    // The simulated Ollama pauses streams only: a whole answer asked to
    // pause would be answered after its generation time, and under load
    // the holder then gave its permit back before the others queued.
    let stream = fault.is_some_and(|f| f.contains("pause_after"));
    request_with(
        "POST",
        &format!("{url}/api/generate"),
        format!(r#"{{"model":"llama3","prompt":"order","stream":{stream}}}"#),
        &headers,
    )
}

#[tokio::test]
async fn the_queue_keeps_its_place_across_a_reload_and_a_moved_class_goes_first() {
    let upstream = mock(corral_e2e::fast()).await;
    let path = file("ordered.toml", &ordered_text(&upstream.url(), 9, ""));
    let corral = start(&path).await;
    let url = corral.url();
    // The permit is held by a request the upstream stalls.
    let holder = tokio::spawn(send(generate(
        &url,
        "mid-0",
        "holder",
        Some("pause_after=1"),
    )));
    upstream_until(&upstream, "the holder runs", |s| s.in_flight == 1).await;
    // Queued before the reload: mid (5).
    let early = tokio::spawn(send(generate(&url, "mid-0", "early-mid", None)));
    eventually_queued(&url, 1).await;
    std::fs::write(&path, ordered_text(&upstream.url(), 1, "")).unwrap();
    corral.reloader().reload().await.unwrap();
    // After it: low, now at 1, goes before the mid queued earlier.
    let late = tokio::spawn(send(generate(&url, "low-0", "late-low", None)));
    eventually_queued(&url, 2).await;
    upstream.release(1);
    for call in [holder, early, late] {
        assert_eq!(within(call).await.unwrap().status, 200);
    }
    let order: Vec<String> = upstream
        .requests()
        .iter()
        .filter_map(|r| r.headers.get("x-mock-id").cloned())
        .collect();
    assert_eq!(
        order,
        ["holder", "late-low", "early-mid"],
        "one queue, in priority order"
    );
    assert_eq!(
        upstream.stats().peak_in_flight,
        1,
        "one permit across the reload"
    );
}

/// Waits until `n` requests wait in the scheduler.
async fn eventually_queued(url: &str, n: usize) {
    corral_e2e::eventually_async(&format!("{n} queued"), || async move {
        corral_e2e::metric_sum(url, "corral_queue_depth").await as usize == n
    })
    .await;
}

#[tokio::test]
async fn a_bad_configuration_is_refused_with_check_configs_message_and_the_old_one_serves_on() {
    let upstream = mock(corral_e2e::fast()).await;
    let path = file("bad.toml", &ordered_text(&upstream.url(), 9, ""));
    let corral = start(&path).await;
    // A bad value, on line 5.
    std::fs::write(
        &path,
        ordered_text(&upstream.url(), 9, "").replace("capacity = 1", "capacity = \"lots\""),
    )
    .unwrap();
    let refused = corral.reloader().reload().await.unwrap_err();
    let message = refused.to_string();
    assert!(matches!(refused, ReloadError::Refused(_)), "{message}");
    assert!(
        message.contains("bad.toml:5: upstream.capacity: invalid type"),
        "the file, line, key and reason: {message}"
    );
    // A setting only a restart applies.
    std::fs::write(
        &path,
        ordered_text(&upstream.url(), 9, "").replace("127.0.0.1:0", "127.0.0.1:1"),
    )
    .unwrap();
    let refused = corral.reloader().reload().await.unwrap_err();
    assert!(
        matches!(&refused, ReloadError::NeedsRestart(what) if what == &["[server]"]),
        "{refused}"
    );
    // The old one serves on.
    let answer = send(generate(&corral.url(), "low-0", "after", None)).await;
    assert_eq!(answer.status, 200);
    let config = corral_e2e::get(&format!("{}/corral/config", corral.url())).await;
    assert!(
        config.text().contains("\"capacity\":1"),
        "{}",
        config.text()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn post_reload_reloads_every_replica_through_the_bus() {
    let redis = corral_e2e::Redis::start().await;
    let upstream = mock(corral_e2e::fast()).await;
    let text = |capacity: usize| {
        format!(
            "[server]\nlisten = \"127.0.0.1:0\"\n[admin]\ntoken = \"reload-token-1234\"\n[upstream]\nurl = \"{}\"\ncapacity = {capacity}\n[state]\nbackend = \"redis\"\nredis_url = \"{}\"\nkey_prefix = \"reload-test\"\n\n[[layers]]\nkind = \"priority\"\n",
            upstream.url(),
            redis.url
        )
    };
    let path = file("replicas.toml", &text(2));
    let (a, b) = (start(&path).await, start(&path).await);
    std::fs::write(&path, text(5)).unwrap();
    let reload = corral_e2e::send(request_with(
        "POST",
        &format!("{}/corral/reload", a.url()),
        "",
        &[("authorization", "Bearer reload-token-1234")],
    ))
    .await;
    assert_eq!(reload.status, 200, "{}", reload.text());
    assert!(
        reload.text().contains("capacity: 2 → 5"),
        "{}",
        reload.text()
    );
    // The other replica read the file again too: its admin API shows it.
    corral_e2e::eventually_async("the other replica reloaded", || {
        let url = format!("{}/corral/config", b.url());
        async move {
            let config = corral_e2e::send(request_with(
                "GET",
                &url,
                "",
                &[("authorization", "Bearer reload-token-1234")],
            ))
            .await;
            config.text().contains("\"capacity\":5")
        }
    })
    .await;
    // Without the token: refused.
    let refused = corral_e2e::post(&format!("{}/corral/reload", a.url()), "").await;
    assert_eq!(refused.status, 401);
}

#[tokio::test]
async fn a_reload_that_would_build_a_second_scheduler_is_refused() {
    let upstream = mock(corral_e2e::fast()).await;
    let path = file("weights.toml", &ordered_text(&upstream.url(), 9, ""));
    let corral = start(&path).await;
    // A class's weight is the scheduler's: another scheduler beside the
    // one holding the permits would let twice the capacity run.
    std::fs::write(
        &path,
        ordered_text(&upstream.url(), 9, "")
            .replace("priority = 5\n", "priority = 5\nweight = 2.0\n"),
    )
    .unwrap();
    let refused = corral.reloader().reload().await.unwrap_err();
    assert!(
        matches!(&refused, ReloadError::NeedsRestart(what) if what.iter().any(|w| w.starts_with("the priority layer"))),
        "{refused}"
    );
    // Removing it too.
    std::fs::write(
        &path,
        ordered_text(&upstream.url(), 9, "")
            .replace("[[layers]]\nkind = \"priority\"\n", "layers = []\n"),
    )
    .unwrap();
    assert!(corral.reloader().reload().await.is_err());
}

#[tokio::test]
async fn the_agent_endpoints_know_the_agents_a_reload_adds() {
    let upstream = mock(corral_e2e::fast()).await;
    let key = "added-agent-key-0123456789";
    let text = |extra: &str| {
        format!(
            "[server]\nlisten = \"127.0.0.1:0\"\n[upstream]\nurl = \"{}\"\n[identity]\nrequire_key = true\n[[agents]]\nid = \"first\"\nkey_sha256 = \"{}\"\n{extra}",
            upstream.url(),
            corral_auth::key_digest("first-agent-key-0123456789")
        )
    };
    let path = file("agents.toml", &text(""));
    let corral = start(&path).await;
    let job = |key: &'static str| {
        request_with(
            "POST",
            &format!("{}/api/generate", corral.url()),
            r#"{"model":"llama3","prompt":"later","stream":false}"#,
            &[
                ("prefer", "respond-async"),
                ("authorization", &format!("Bearer {key}")),
            ],
        )
    };
    assert_eq!(send(job(key)).await.status, 401, "not an agent yet");
    std::fs::write(
        &path,
        text(&format!(
            "[[agents]]\nid = \"added\"\nkey_sha256 = \"{}\"\n",
            corral_auth::key_digest(key)
        )),
    )
    .unwrap();
    corral.reloader().reload().await.unwrap();
    let accepted = send(job(key)).await;
    assert_eq!(
        accepted.status,
        202,
        "the jobs endpoint knows it: {}",
        accepted.text()
    );
}

#[tokio::test]
async fn quotas_carry_over_a_reload_that_leaves_their_layer_alone() {
    let upstream = mock(corral_e2e::fast()).await;
    let text = |priority: u8, per_minute: u32| {
        format!(
            "[server]\nlisten = \"127.0.0.1:0\"\n[upstream]\nurl = \"{}\"\n\n[[classes]]\nname = \"metered\"\npriority = {priority}\nrate_limit = {{ requests_per_minute = {per_minute} }}\n[[agents]]\nid = \"meter\"\nclass = \"metered\"\n\n[[layers]]\nkind = \"ratelimit\"\n\n[[layers]]\nkind = \"priority\"\n",
            upstream.url()
        )
    };
    let path = file("quota.toml", &text(5, 2));
    let corral = start(&path).await;
    let ask = || generate(&corral.url(), "meter", "quota", None);
    assert_eq!(send(ask()).await.status, 200);
    assert_eq!(send(ask()).await.status, 200);
    assert_eq!(send(ask()).await.status, 429, "the quota is spent");
    // The class's priority changes: classify's, not the rate limiter's.
    std::fs::write(&path, text(3, 2)).unwrap();
    let changes = corral.reloader().reload().await.unwrap().join("\n");
    assert!(
        changes.contains("layers[0] ratelimit: carried over"),
        "{changes}"
    );
    assert_eq!(
        send(ask()).await.status,
        429,
        "still spent after the reload"
    );
    // Its own limit changes: built anew, its counters start empty.
    std::fs::write(&path, text(3, 5)).unwrap();
    let changes = corral.reloader().reload().await.unwrap().join("\n");
    assert!(
        changes.contains("layers[0] ratelimit: built anew"),
        "{changes}"
    );
    assert_eq!(send(ask()).await.status, 200);
}

#[tokio::test]
async fn an_announced_reload_is_answered_once_and_one_older_than_the_file_is_passed_by() {
    let upstream = mock(corral_e2e::fast()).await;
    let text = |capacity: usize| {
        format!(
            "[server]\nlisten = \"127.0.0.1:0\"\n[upstream]\nurl = \"{}\"\ncapacity = {capacity}\n\n[[layers]]\nkind = \"priority\"\n",
            upstream.url()
        )
    };
    let before = corral_core::unix_now_f64() - 1.0;
    let path = file("announced.toml", &text(2));
    let corral = start(&path).await;
    let reloader = corral.reloader();
    let capacity = || async {
        let config = corral_e2e::get(&format!("{}/corral/config", corral.url())).await;
        config.json()["upstream"]["capacity"].clone()
    };
    std::fs::write(&path, text(3)).unwrap();
    // Announced before the file was read: it is in the file already.
    assert!(reloader.reload_announced(before).await.is_none());
    assert_eq!(capacity().await, 2);
    // Announced by a replica whose clock runs a minute ahead: reloaded,
    // then passed by when the kept announcement is replayed, though this
    // replica's own clock says its file was read before it.
    let ahead = corral_core::unix_now_f64() + 60.0;
    assert!(reloader.reload_announced(ahead).await.unwrap().is_ok());
    assert_eq!(capacity().await, 3);
    std::fs::write(&path, text(4)).unwrap();
    assert!(reloader.reload_announced(ahead).await.is_none());
    assert_eq!(capacity().await, 3);
    // Refused, an announcement is answered too: not retried at each
    // replay, but a newer one is taken.
    std::fs::write(&path, text(4).replace("capacity = 4", "capacity = -1")).unwrap();
    let later = ahead + 1.0;
    assert!(reloader.reload_announced(later).await.unwrap().is_err());
    std::fs::write(&path, text(5)).unwrap();
    assert!(reloader.reload_announced(later).await.is_none());
    assert_eq!(capacity().await, 3);
    assert!(reloader
        .reload_announced(later + 1.0)
        .await
        .unwrap()
        .is_ok());
    assert_eq!(capacity().await, 5);
}
