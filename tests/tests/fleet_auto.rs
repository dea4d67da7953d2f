//! `capacity = "auto"` through the proxy, on the clock of the test (time
//! paused: a minute passes in a moment): against a simulated Ollama of
//! parallelism 3, the capacity Corral hands out settles at 3, and at 6
//! after the server is restarted with 6, with no request refused by the
//! server and no more than one per slot waiting inside it, while one
//! agent's requests all fail.

#![allow(clippy::unwrap_used)] // a test fails by panicking

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use corral::{Config, Running};
use corral_e2e::{get, mock, request_with, send};
use corral_mock_ollama::MockConfig;

fn capacity_of(status: &serde_json::Value) -> Option<u64> {
    status["upstreams"][0]["models"]
        .as_array()?
        .iter()
        .find(|m| m["model"] == "alpha:latest")?["capacity"]
        .as_u64()
}

#[tokio::test(start_paused = true)]
async fn auto_capacity_settles_at_the_servers_parallelism_and_follows_a_restart() {
    let server = mock(MockConfig {
        parallel: 3,
        ttft: Duration::from_millis(200),
        tokens: 20,
        tokens_per_sec: 50.0,
        models: vec!["alpha".into()],
        ..MockConfig::default()
    })
    .await;
    let text = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\n[upstream]\nprobe_interval = \"1s\"\n[[upstreams]]\nname = \"gpu\"\nurl = \"{}\"\ncapacity = \"auto\"\n",
        server.url()
    );
    let config = Config::parse(&text, std::path::Path::new("auto.toml")).unwrap();
    let corral = Running::start(&config).await.unwrap();
    let url = corral.url();
    // A fleet that always wants more than the server runs.
    let stop = Arc::new(AtomicBool::new(false));
    let mut agents = Vec::new();
    for agent in 0..12 {
        let (url, stop) = (url.clone(), stop.clone());
        agents.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let reply = send(request_with(
                    "POST",
                    &format!("{url}/api/generate"),
                    r#"{"model":"alpha","prompt":"hi"}"#,
                    &[("x-agent-id", &format!("agent-{agent}"))],
                ))
                .await;
                assert_eq!(reply.status, 200, "{}", reply.text());
            }
        }));
    }
    // And one agent whose every request the server fails at once: error
    // answers are not measured (nor charged as work: its requests are
    // not queued behind every other agent's fair share, `send` bounds
    // each).
    {
        let (url, stop) = (url.clone(), stop.clone());
        agents.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let reply = send(request_with(
                    "POST",
                    &format!("{url}/api/generate"),
                    r#"{"model":"alpha","prompt":"hi"}"#,
                    &[("x-agent-id", "broken"), ("x-mock-fault", "status=500")],
                ))
                .await;
                assert_eq!(reply.status, 500, "{}", reply.text());
                tokio::time::sleep(Duration::from_secs(2)).await;
            }
        }));
    }
    let status = || async {
        let reply = get(&format!("{url}/corral/upstreams")).await;
        serde_json::from_slice::<serde_json::Value>(&reply.body).unwrap()
    };
    tokio::time::sleep(Duration::from_secs(60)).await;
    let settled = capacity_of(&status().await);
    assert_eq!(settled, Some(3), "settled at the server's parallelism");
    let before = server.stats();
    assert_eq!(before.busy_rejections, 0);
    assert!(
        before.peak_queued <= 3,
        "at most one per slot waited inside: {before:?}"
    );
    // Restarted with 6.
    server.set_parallel(6);
    server.reset();
    tokio::time::sleep(Duration::from_secs(60)).await;
    let settled = capacity_of(&status().await);
    assert!(
        settled.is_some_and(|c| (5..=7).contains(&c)),
        "settled near 6: {settled:?}"
    );
    let after = server.stats();
    assert_eq!(after.busy_rejections, 0);
    assert!(
        after.peak_queued <= 6,
        "at most one per slot waited inside: {after:?}"
    );
    stop.store(true, Ordering::Relaxed);
    for agent in agents {
        agent.await.unwrap();
    }
}
