//! A scripted run through the full stack (served, cached, rate limited,
//! shed, retried, breaker open), then: `/metrics` shows each with the
//! expected values; the Grafana dashboard names only metrics the proxy
//! exports; the event log replayed gives the per-agent usage the admin
//! API reports.

#![allow(clippy::unwrap_used)] // a test fails by panicking

use std::collections::BTreeSet;
use std::path::Path;

use corral::Config;
use corral_e2e::{eventually, fast, get, metrics, mock, request_with, send};

const STACK: &str = r#"
[upstream]
capacity = 1
probe_interval = "20ms"

[[classes]]
name = "opus"
compartment = "opus_agents"
rate_limit = { requests_per_minute = 2 }
[[agents]]
id = "planner"
class = "opus"

[[layers]]
kind = "ratelimit"
[[layers]]
kind = "degrade"
up = [0.97, 0.98, 0.99]
down = [0.10, 0.20, 0.30]
[[layers]]
kind = "cache"
[[layers]]
kind = "batch"
[[layers]]
kind = "bulkhead"
[[layers.compartments]]
name = "opus_agents"
max_concurrent = 10
[[layers]]
kind = "shed"
max_queue = 1
wait_for_space = "100ms"
[[layers]]
kind = "priority"
[[layers]]
kind = "retry"
initial_backoff = "10ms"
max_backoff = "20ms"
[[layers]]
kind = "breaker"
consecutive_failures = 3
open_for = "60s"
"#;

fn generate(
    url: &str,
    agent: &str,
    priority: u8,
    body: &str,
    fault: Option<&str>,
) -> http::Request<http_body_util::Full<bytes::Bytes>> {
    let priority = priority.to_string();
    let mut headers = vec![("x-agent-id", agent), ("x-priority", &priority)];
    headers.extend(fault.map(|fault| ("x-mock-fault", fault)));
    request_with(
        "POST",
        &format!("{url}/api/generate"),
        body.to_string(),
        &headers,
    )
}

const PLAIN: &str = r#"{"model":"llama3","prompt":"hello","stream":false}"#;
const FIXED: &str =
    r#"{"model":"llama3","prompt":"same","stream":false,"options":{"temperature":0}}"#;

/// A metric, the labels its samples must have, and their expected sum.
type Expected<'a> = (&'a str, &'a [(&'a str, &'a str)], f64);

/// The sum of the samples of `name` whose labels include all of `labels`.
fn value(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| l.starts_with(&format!("{name}{{")) || l.starts_with(&format!("{name} ")))
        .filter(|l| {
            labels
                .iter()
                .all(|(k, v)| l.contains(&format!("{k}=\"{v}\"")))
        })
        .map(|l| l.rsplit(' ').next().unwrap().parse::<f64>().unwrap())
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scripted_run_shows_in_metrics_events_and_the_admin_api() {
    let upstream = mock(fast()).await;
    let text = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\n{}",
        STACK.replace(
            "[upstream]",
            &format!("[upstream]\nurl = \"{}\"", upstream.url())
        )
    );
    let corral =
        corral::Running::start(&Config::parse(&text, Path::new("observability.toml")).unwrap())
            .await
            .unwrap();
    let url = corral.url();

    // Served, twice the same deterministic question: one miss, one hit.
    assert_eq!(
        send(generate(&url, "writer", 5, PLAIN, None)).await.status,
        200
    );
    assert_eq!(
        send(generate(&url, "writer", 5, FIXED, None))
            .await
            .header("x-corral-cache"),
        Some("miss")
    );
    assert_eq!(
        send(generate(&url, "writer", 5, FIXED, None))
            .await
            .header("x-corral-cache"),
        Some("hit")
    );

    // Rate limited: the planner may send 2 a minute.
    for expected in [200, 200, 429] {
        assert_eq!(
            send(generate(&url, "planner", 5, PLAIN, None)).await.status,
            expected
        );
    }

    // Shed: one holds the upstream, one waits, a priority 9 is refused.
    let holder = {
        let url = url.clone();
        tokio::spawn(async move {
            send(generate(
                &url,
                "holder",
                5,
                r#"{"model":"llama3","prompt":"hold","stream":true}"#,
                Some("pause_after=1"),
            ))
            .await
        })
    };
    eventually("the holder runs", || upstream.stats().paused == 1).await;
    let waiter = {
        let url = url.clone();
        tokio::spawn(async move { send(generate(&url, "waiter", 5, PLAIN, None)).await })
    };
    corral_e2e::within(async {
        loop {
            let metrics = metrics(&url).await;
            if value(&metrics, "corral_queue_depth", &[]) == 1.0 {
                return;
            }
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
    })
    .await;
    let shed = send(generate(&url, "batcher", 9, PLAIN, None)).await;
    assert_eq!(shed.status, 503);
    assert_eq!(shed.header("x-corral-reason"), Some("shed"));
    upstream.release(1);
    assert_eq!(holder.await.unwrap().status, 200);
    assert_eq!(waiter.await.unwrap().status, 200);

    // Retried: the first attempt meets a busy upstream.
    let mut retried = generate(&url, "writer", 5, PLAIN, Some("busy_attempts=1"));
    // Attempts are one request to the mock by their `X-Mock-Id`.
    for name in ["x-request-id", "x-mock-id"] {
        retried
            .headers_mut()
            .insert(name, "retried-1".parse().unwrap());
    }
    assert_eq!(send(retried).await.status, 200);

    // Breaker: three upstream 500s open it; the next request fails fast.
    for _ in 0..3 {
        assert_eq!(
            send(generate(&url, "writer", 5, PLAIN, Some("status=500")))
                .await
                .status,
            500
        );
    }
    let open = send(generate(&url, "writer", 5, PLAIN, None)).await;
    assert_eq!(
        (open.status.as_u16(), open.header("x-corral-reason")),
        (503, Some("breaker_open"))
    );

    let metrics = metrics(&url).await;
    let checks: &[Expected<'_>] = &[
        (
            "corral_requests_total",
            &[("endpoint", "generate"), ("status", "200")],
            8.0,
        ),
        ("corral_refusals_total", &[("reason", "rate_limited")], 1.0),
        (
            "corral_refusals_total",
            &[("reason", "shed"), ("priority", "9")],
            1.0,
        ),
        ("corral_refusals_total", &[("reason", "breaker_open")], 1.0),
        (
            "corral_rate_limited_total",
            &[("class", "opus"), ("quota", "agent-requests")],
            1.0,
        ),
        (
            "corral_dropped_requests_total",
            &[("reason", "queue_full"), ("priority", "9")],
            1.0,
        ),
        ("corral_retries_total", &[("reason", "503")], 1.0),
        ("corral_cache_hits_total", &[], 1.0),
        (
            "corral_circuit_breaker_state",
            &[("breaker", "upstream")],
            2.0,
        ),
        ("corral_queue_limit", &[], 1.0),
        ("corral_upstream_capacity", &[], 1.0),
        ("corral_degradation_level", &[], 0.0),
    ];
    for (name, labels, expected) in checks {
        assert_eq!(
            value(&metrics, name, labels),
            *expected,
            "{name} {labels:?}\n{metrics}"
        );
    }
    assert!(value(&metrics, "corral_cache_misses_total", &[]) >= 1.0);
    assert!(
        value(
            &metrics,
            "corral_tokens_generated_total",
            &[("model", "llama3")]
        ) >= 8.0 * 8.0
    );
    assert!(value(&metrics, "corral_backpressure_events_total", &[]) >= 1.0);
    assert!(
        value(
            &metrics,
            "corral_time_to_first_byte_seconds_count",
            &[("endpoint", "generate")]
        ) >= 8.0
    );
    // Exported, and empty again once every answer has ended.
    assert!(metrics
        .lines()
        .any(|l| l.starts_with("corral_bulkhead_saturation{")
            && l.contains("compartment=\"opus_agents\"")));
    assert_eq!(
        value(
            &metrics,
            "corral_bulkhead_saturation",
            &[("compartment", "opus_agents")]
        ),
        0.0
    );

    // The dashboard asks only for what is exported.
    let dashboard: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(deploy("grafana/corral-dashboard.json")).unwrap(),
    )
    .unwrap();
    let exported: BTreeSet<String> = metrics
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .map(|l| l.split(['{', ' ']).next().unwrap().to_string())
        .collect();
    let mut asked = 0;
    for panel in dashboard["panels"].as_array().unwrap() {
        for target in panel["targets"].as_array().unwrap() {
            for name in metric_names(target["expr"].as_str().unwrap()) {
                asked += 1;
                assert!(
                    exported.contains(&name),
                    "the dashboard's {name} is not exported"
                );
            }
        }
    }
    assert!(asked > 20);

    // Replaying the event log gives the usage the admin API reports.
    let events: Vec<corral_core::Event> =
        serde_json::from_slice(&get(&format!("{url}/corral/events")).await.body).unwrap();
    let agents: serde_json::Value = get(&format!("{url}/corral/agents")).await.json();
    assert_eq!(
        serde_json::to_value(corral_events::project(&events)).unwrap(),
        agents
    );
    assert_eq!(agents["planner"]["refused"], 1);
    assert_eq!(agents["planner"]["requests"], 3);
    assert_eq!(agents["writer"]["cache_hits"], 1);
    assert!(events
        .iter()
        .any(|e| e.kind == "retry" && e.request_id.as_deref() == Some("retried-1")));
    assert!(events
        .iter()
        .any(|e| e.kind == "breaker" && e.data["to"] == "open"));
    let planner: Vec<corral_core::Event> = serde_json::from_slice(
        &get(&format!("{url}/corral/events?agent=planner&kind=refused"))
            .await
            .body,
    )
    .unwrap();
    assert_eq!(planner.len(), 1);
    assert_eq!(planner[0].data["reason"], "rate_limited");

    let status = get(&format!("{url}/corral/status")).await.json();
    assert_eq!(status["capacity"], 1);
    assert_eq!(status["degradation"]["level"], "Normal");
    assert_eq!(status["breakers"][0]["state"], "open");
    assert_eq!(status["classes"]["opus"]["refused"], 1);
    let config = get(&format!("{url}/corral/config")).await.json();
    assert_eq!(config["upstream"]["capacity"], 1);
}

/// The `corral_*` metric names in a PromQL expression, without the
/// histogram suffixes.
fn metric_names(expr: &str) -> Vec<String> {
    let mut names = Vec::new();
    let mut rest = expr;
    while let Some(at) = rest.find("corral_") {
        let name: String = rest[at..]
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect();
        rest = &rest[at + name.len()..];
        let base = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|s| name.strip_suffix(s).filter(|b| b.ends_with("_seconds")))
            .unwrap_or(&name)
            .to_string();
        // Histograms are exported as their parts.
        names.push(if base != name {
            format!("{base}_count")
        } else {
            name
        });
    }
    names
}

fn deploy(path: &str) -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../deploy")
        .join(path)
}

/// `corral_requests_in_flight{class}` once the requests of `class` add up
/// to `n`, polled: the proxy has no event to wait on.
async fn until_in_flight(url: &str, class: &str, n: f64) {
    let series = format!("corral_requests_in_flight{{class=\"{class}\"}}");
    corral_e2e::within(async {
        while corral_e2e::metric_sum(url, &series).await != n {
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_is_in_flight_for_its_class_while_queued_and_generating_not_only_answering() {
    let upstream = mock(fast()).await;
    let text = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\n[upstream]\nurl = \"{}\"\ncapacity = 1\n[[classes]]\nname = \"opus\"\n[[agents]]\nid = \"planner\"\nclass = \"opus\"\n[[layers]]\nkind = \"priority\"\n",
        upstream.url()
    );
    let config = Config::parse(&text, Path::new("in-flight.toml")).unwrap();
    let corral = corral::Running::start(&config).await.unwrap();
    let url = corral.url();
    let slow = |ms: u64| {
        request_with(
            "POST",
            &format!("{url}/api/generate"),
            r#"{"model":"llama3","prompt":"hi","stream":false}"#,
            &[
                ("x-agent-id", "planner"),
                ("x-mock-fault", &format!("ttft_ms={ms}")),
            ],
        )
    };
    // One generating (no headers until it is done), one waiting for the
    // only permit.
    let generating = tokio::spawn(send(slow(1500)));
    until_in_flight(&url, "opus", 1.0).await;
    let waiting = tokio::spawn(send(slow(0)));
    until_in_flight(&url, "opus", 2.0).await;
    // The waiting client leaves: it is no longer in flight.
    waiting.abort();
    until_in_flight(&url, "opus", 1.0).await;
    assert_eq!(generating.await.unwrap().status, 200);
    until_in_flight(&url, "opus", 0.0).await;
}

/// Seconds since the Unix epoch now, with the fraction.
fn unix_now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

#[tokio::test]
async fn a_requests_received_at_is_when_it_was_sent_to_the_millisecond() {
    let (_upstream, corral) = corral_e2e::fast_proxy().await;
    let url = corral.url();
    // Three requests 300 ms apart, each between two readings of the clock.
    let mut sent = Vec::new();
    for i in 0..3 {
        let id = format!("sent-{i}");
        let before = unix_now();
        let reply = send(request_with(
            "POST",
            &format!("{url}/api/generate"),
            r#"{"model":"llama3","prompt":"hi","stream":false}"#,
            &[("x-request-id", &id)],
        ))
        .await;
        let after = unix_now();
        assert_eq!(reply.status, 200);
        sent.push((id, before, after));
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    }
    let received = corral_e2e::events(&url, "kind=received").await;
    for (id, before, after) in sent {
        let event = received
            .iter()
            .find(|e| e["request_id"] == id.as_str())
            .unwrap_or_else(|| panic!("{id} received: {received:?}"));
        let at = event["data"]["received_at"].as_f64().unwrap();
        // A few milliseconds either side: the clocks are read apart.
        assert!(
            before - 0.005 <= at && at <= after + 0.005,
            "{id} received at {at}, sent between {before} and {after}"
        );
    }
}

#[tokio::test]
async fn the_in_flight_gauge_is_described_as_it_counts_on_the_metrics_page_and_in_the_docs() {
    // What the gauge counts (see the test above): a request queued,
    // generating, or sending its answer.
    const COUNTS: &str = "waiting for a permit, generating, or sending the answer";
    let (_upstream, corral) = corral_e2e::fast_proxy().await;
    let page = metrics(&corral.url()).await;
    let help = page
        .lines()
        .find(|l| l.starts_with("# HELP corral_requests_in_flight "))
        .unwrap_or_else(|| panic!("the gauge is described: {page}"));
    assert!(help.contains(COUNTS), "{help}");
    let operations = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/operations.md"),
    )
    .unwrap();
    let row = operations
        .lines()
        .find(|l| l.starts_with("| `corral_requests_in_flight` |"))
        .unwrap();
    assert!(row.contains(COUNTS), "{row}");
}
