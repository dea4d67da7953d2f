//! 131 agents of mixed classes at once through the proxy, against a
//! simulated Ollama with `--parallel 4`: the upstream never sees more
//! than 4, never answers 503, every request is answered, and priority 1
//! waits a small fraction of what priority 9 waits.

#![allow(clippy::unwrap_used)] // a test fails by panicking

use std::sync::Arc;

use corral::Config;
use corral_e2e::herd::{assert_priority_one_went_first, assert_the_upstream_kept_up, CLASSES};
use corral_e2e::{mock, within};
use tokio::sync::Barrier;

const REQUESTS_PER_AGENT: usize = 3;

fn fleet_config(upstream: &str) -> Config {
    let text = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\n[upstream]\nurl = \"{upstream}\"\ncapacity = 4\n\n[[layers]]\nkind = \"priority\"\n{}",
        corral_e2e::herd::classes_toml(|_, p| p, true)
    );
    Config::parse(&text, std::path::Path::new("herd.toml")).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_herd_of_131_agents_never_overloads_the_upstream_and_priority_one_goes_first() {
    herd(fleet_config).await;
}

/// The same herd through the shipped `deploy/corral.toml` (rate limits,
/// bulkheads, shedding, the scheduler): the herd's agents are not in its
/// `[[agents]]`, so they are in the default class and ask for their
/// priority with `X-Priority`, as the design's agents do.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_shipped_default_stack_keeps_the_herd_in_order() {
    herd(|upstream| {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/corral.toml");
        let mut config = Config::load(&path).unwrap();
        config.server.listen = "127.0.0.1:0".parse().unwrap();
        config.upstream.url = upstream.to_string();
        config.upstream.capacity = Some(4);
        config
    })
    .await;
}

async fn herd(make_config: impl FnOnce(&str) -> Config) {
    let upstream = mock(corral_e2e::herd::upstream()).await;
    let corral = corral::Running::start(&make_config(&upstream.url()))
        .await
        .unwrap();
    let url = format!("{}/api/generate", corral.url());
    let agents = corral_e2e::herd::agents();
    assert_eq!(agents, 131);
    let start = Arc::new(Barrier::new(agents));

    let mut calls = Vec::new();
    for (class, priority, count) in CLASSES {
        for i in 0..count {
            let (url, start) = (url.clone(), start.clone());
            calls.push(tokio::spawn(async move {
                let client = corral_e2e::client();
                // Connect first, so every agent is ready when the herd
                // starts: a metadata read, which never queues.
                let warm = client
                    .request(corral_e2e::request(
                        "GET",
                        &url.replace("/api/generate", "/api/version"),
                        "",
                    ))
                    .await
                    .expect("answered");
                assert_eq!(warm.status(), 200);
                let _ = http_body_util::BodyExt::collect(warm.into_body()).await;
                start.wait().await;
                let mut waits = Vec::new();
                for n in 0..REQUESTS_PER_AGENT {
                    let request = corral_e2e::herd::ask(&url, class, i, n, priority);
                    let response = client.request(request).await.expect("answered");
                    let status = response.status();
                    let wait: u64 = response
                        .headers()
                        .get("x-corral-queue-ms")
                        .map(|v| v.to_str().unwrap().parse().unwrap())
                        .unwrap_or(0);
                    let reason = response.headers().get("x-corral-reason").cloned();
                    let body = http_body_util::BodyExt::collect(response.into_body())
                        .await
                        .unwrap()
                        .to_bytes();
                    assert!(
                        status == 200 || reason.is_some(),
                        "{status} without a reason: {body:?}"
                    );
                    assert_eq!(status, 200, "nothing is refused here: {body:?}");
                    waits.push(wait);
                }
                (priority, waits)
            }));
        }
    }
    let mut by_priority: std::collections::BTreeMap<u8, Vec<u64>> = Default::default();
    for call in calls {
        let (priority, waits) = within(call).await.unwrap();
        // The first request of each agent meets the whole herd at once:
        // that is where priority must show. Later ones meet a thinner
        // crowd.
        by_priority.entry(priority).or_default().push(waits[0]);
    }

    let stats = upstream.stats();
    assert_the_upstream_kept_up(&stats, "from one proxy");
    assert_eq!(
        stats.peak_queued, 0,
        "nothing ever waited inside the upstream"
    );
    assert_eq!(
        stats.completed as usize,
        agents * (REQUESTS_PER_AGENT + 1),
        "every request was served (and each agent's warm-up read)"
    );
    assert_priority_one_went_first(by_priority, "of the herd's first requests");
}
