//! `[[upstreams]]` shared by three `corral` processes through one Redis:
//! two simulated Ollama servers that each hold one model loaded, three
//! models asked for through all three replicas at once. No server ever
//! runs more than its capacity or holds two models at once, whichever
//! replica sent the work; work stays grouped by model; a server that dies
//! costs no request, and every replica drains it.

#![allow(clippy::unwrap_used)] // a test fails by panicking

mod support;

use std::time::Duration;

use corral_e2e::{mock, send, within, Redis};
use corral_mock_ollama::{MockConfig, MockOllama, Stats};
use support::replica::{ask, prefix, Replica};

fn server(ttft: Duration) -> MockConfig {
    MockConfig {
        parallel: 2,
        max_loaded_models: 1,
        load_time: Duration::from_millis(150),
        ttft,
        tokens: 10,
        tokens_per_sec: 500.0,
        models: vec!["alpha".into(), "beta".into(), "gamma".into()],
        ..MockConfig::default()
    }
}

fn config(servers: &[&MockOllama], redis: &Redis, keys: &str, probe: &str) -> String {
    let mut text = format!(
        "[upstream]\nprobe_interval = \"{probe}\"\n\n[state]\nbackend = \"redis\"\nredis_url = \"{}\"\nkey_prefix = \"{keys}\"\nredis_timeout = \"500ms\"\n\n[[layers]]\nkind = \"priority\"\nlease_ttl = \"3s\"\n",
        redis.url
    );
    for (i, server) in servers.iter().enumerate() {
        text.push_str(&format!(
            "\n[[upstreams]]\nname = \"gpu-{i}\"\nurl = \"{}\"\ncapacity = 2\nmax_loaded_models = 1\n",
            server.url()
        ));
    }
    text
}

/// Three replicas of `text`, named after `test` (their config files are
/// named after them: tests running at once must not share them).
async fn three(test: &str, text: &str) -> [Replica; 3] {
    [
        Replica::start(&format!("{test}-a"), text).await,
        Replica::start(&format!("{test}-b"), text).await,
        Replica::start(&format!("{test}-c"), text).await,
    ]
}

/// Whether `replica` takes upstream `index` as healthy.
async fn healthy(replica: &Replica, index: usize) -> bool {
    let status = send(corral_e2e::request(
        "GET",
        &format!("{}/corral/upstreams", replica.url),
        "",
    ))
    .await;
    status.json()["upstreams"][index]["healthy"] == true
}

/// `rounds` × 3 models × 3 agents, spread over the replicas; the
/// statuses and bodies.
async fn herd(replicas: &[Replica; 3], rounds: usize) -> Vec<(u16, String)> {
    let mut calls = Vec::new();
    for round in 0..rounds {
        for (m, model) in ["alpha", "beta", "gamma"].into_iter().enumerate() {
            for agent in 0..3 {
                let url = replicas[(round + m + agent) % 3].url.clone();
                let agent = format!("agent-{model}-{agent}-{round}");
                let body = format!(r#"{{"model":"{model}","prompt":"hi","stream":false}}"#);
                calls.push(tokio::spawn(async move {
                    let reply = send(ask(&url, &agent, &body, &[])).await;
                    (reply.status.as_u16(), reply.text().to_string())
                }));
            }
        }
    }
    let mut answers = Vec::new();
    for call in calls {
        answers.push(within(call).await.unwrap());
    }
    answers
}

fn generated(stats: &Stats) -> u64 {
    stats.by_path.get("/api/generate").copied().unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_replicas_share_two_servers_without_overloading_or_thrashing_them() {
    let redis = Redis::start().await;
    let (a, b) = (
        mock(server(Duration::from_millis(5))).await,
        mock(server(Duration::from_millis(5))).await,
    );
    let text = config(&[&a, &b], &redis, &prefix("fleet-share"), "100ms");
    let replicas = three("fleet-share", &text).await;
    for (status, body) in herd(&replicas, 6).await {
        assert_eq!(status, 200, "{body}");
    }
    let (sa, sb) = (a.stats(), b.stats());
    for stats in [&sa, &sb] {
        // Three replicas, each thinking a server may run 2: together
        // they never sent it more, nor a second model while one ran.
        assert!(stats.peak_in_flight <= 2, "{stats:?}");
        assert_eq!(stats.peak_queued, 0, "nothing waited inside: {stats:?}");
        assert_eq!(stats.busy_rejections, 0, "{stats:?}");
    }
    assert_eq!(
        generated(&sa) + generated(&sb),
        54,
        "every request sent once"
    );
    // Round robin over the two would load a model for most of the 54.
    let loads = sa.model_loads + sb.model_loads;
    eprintln!("{loads} model loads for 54 requests through three replicas");
    assert!(
        loads <= 15,
        "grouped by model: {loads} loads for 54 requests"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_that_dies_costs_no_request_on_any_replica() {
    let redis = Redis::start().await;
    let slow = server(Duration::from_millis(300));
    let a = mock(slow.clone()).await;
    let b = mock(slow).await;
    let text = config(&[&a, &b], &redis, &prefix("fleet-dies"), "100ms");
    let replicas = three("fleet-dies", &text).await;
    let asked = {
        let replicas = &replicas;
        async move { herd(replicas, 2).await }
    };
    let killer = async {
        // While the first requests run (300 ms to their first token).
        tokio::time::sleep(Duration::from_millis(200)).await;
        drop(b);
    };
    let (answers, ()) = tokio::join!(asked, killer);
    for (status, body) in answers {
        assert_eq!(status, 200, "moved to the server alive: {body}");
    }
    // Every replica drained it: found failing, or told by another.
    for replica in &replicas {
        corral_e2e::eventually_async("the dead server drained everywhere", || async {
            !healthy(replica, 1).await
        })
        .await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_one_replica_finds_failing_is_drained_by_all() {
    let redis = Redis::start().await;
    let a = mock(server(Duration::from_millis(5))).await;
    let b = mock(server(Duration::from_millis(5))).await;
    // Probes too rare to find it: only the replica that sends to it can.
    let text = config(&[&a, &b], &redis, &prefix("fleet-down"), "1h");
    let replicas = three("fleet-down", &text).await;
    drop(b);
    // Through replica a only, until it has met the dead server.
    let mut met = false;
    for i in 0..20 {
        // Another model each time: a server that holds one is loaded with
        // the next where there is room, the dead one.
        let model = ["alpha", "beta", "gamma"][i % 3];
        let body = format!(r#"{{"model":"{model}","prompt":"{i}","stream":false}}"#);
        let reply = send(ask(&replicas[0].url, "agent", &body, &[])).await;
        assert_eq!(reply.status, 200, "{}", reply.text());
        if !healthy(&replicas[0], 1).await {
            met = true;
            break;
        }
    }
    assert!(met, "replica a sent to the dead server and drained it");
    for replica in &replicas[1..] {
        corral_e2e::eventually_async("the others drain it when told", || async {
            !healthy(replica, 1).await
        })
        .await;
    }
}
