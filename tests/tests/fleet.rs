//! `[[upstreams]]` through real sockets: two simulated Ollama servers
//! that each hold one model loaded, three models asked for by many
//! agents at once. Work is grouped by model (few loads), nothing waits
//! inside either server, a server that dies costs no request that had
//! not started, and it takes requests again once it answers.

#![allow(clippy::unwrap_used)] // a test fails by panicking

use std::time::Duration;

use corral::{Config, Running};
use corral_e2e::{get, mock, request_with, send, within};
use corral_mock_ollama::{MockConfig, MockOllama};

fn server() -> MockConfig {
    MockConfig {
        parallel: 2,
        max_loaded_models: 1,
        load_time: Duration::from_millis(150),
        ttft: Duration::from_millis(5),
        tokens: 10,
        tokens_per_sec: 500.0,
        models: vec!["alpha".into(), "beta".into(), "gamma".into()],
        ..MockConfig::default()
    }
}

async fn corral_over(servers: &[&MockOllama]) -> Running {
    let mut text = String::from(
        "[server]\nlisten = \"127.0.0.1:0\"\n[upstream]\nprobe_interval = \"100ms\"\n",
    );
    for (i, server) in servers.iter().enumerate() {
        text.push_str(&format!(
            "[[upstreams]]\nname = \"gpu-{i}\"\nurl = \"{}\"\ncapacity = 2\nmax_loaded_models = 1\n",
            server.url()
        ));
    }
    let config = Config::parse(&text, std::path::Path::new("fleet.toml")).unwrap();
    Running::start(&config).await.unwrap()
}

async fn generate(url: &str, agent: &str, model: &str, stream: bool) -> (u16, String) {
    let body = format!(r#"{{"model":"{model}","prompt":"hi","stream":{stream}}}"#);
    let reply = send(request_with(
        "POST",
        &format!("{url}/api/generate"),
        body,
        &[("x-agent-id", agent)],
    ))
    .await;
    (reply.status.as_u16(), reply.text().to_string())
}

#[tokio::test]
async fn three_models_on_two_single_model_servers_are_grouped_and_nothing_waits_inside() {
    let (a, b) = (mock(server()).await, mock(server()).await);
    let corral = corral_over(&[&a, &b]).await;
    let url = corral.url();
    let mut calls = Vec::new();
    for round in 0..6 {
        for model in ["alpha", "beta", "gamma"] {
            for agent in 0..3 {
                let url = url.clone();
                let agent = format!("agent-{model}-{agent}-{round}");
                calls.push(tokio::spawn(async move {
                    generate(&url, &agent, model, round % 2 == 0).await
                }));
            }
        }
    }
    for call in calls {
        let (status, body) = within(call).await.unwrap();
        assert_eq!(status, 200, "{body}");
    }
    let (sa, sb) = (a.stats(), b.stats());
    for stats in [&sa, &sb] {
        assert_eq!(
            stats.peak_queued, 0,
            "nothing waited inside a server: {stats:?}"
        );
        assert_eq!(stats.busy_rejections, 0);
        assert!(stats.peak_in_flight <= 2, "{stats:?}");
    }
    let generated =
        |s: &corral_mock_ollama::Stats| s.by_path.get("/api/generate").copied().unwrap_or(0);
    assert_eq!(
        generated(&sa) + generated(&sb),
        54,
        "every request sent once"
    );
    // Round robin would load a model for most of the 54 requests.
    let loads = sa.model_loads + sb.model_loads;
    assert!(
        loads <= 12,
        "grouped by model: {loads} loads for 54 requests"
    );
    // The status says what is loaded where.
    let status = get(&format!("{url}/corral/upstreams")).await;
    assert_eq!(status.status, 200);
    let status: serde_json::Value = serde_json::from_slice(&status.body).unwrap();
    let names: Vec<&str> = status["upstreams"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| u["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["gpu-0", "gpu-1"]);
}

#[tokio::test]
async fn a_server_that_dies_costs_no_request_that_had_not_started_and_rejoins() {
    let slow = MockConfig {
        ttft: Duration::from_millis(300),
        ..server()
    };
    let a = mock(slow.clone()).await;
    let b = mock(slow.clone()).await;
    let b_addr = b.addr();
    let corral = corral_over(&[&a, &b]).await;
    let url = corral.url();
    // Warm both: one model, loaded on each.
    let mut calls = Vec::new();
    for i in 0..8 {
        let url = url.clone();
        calls.push(tokio::spawn(async move {
            generate(&url, &format!("agent-{i}"), "alpha", false).await
        }));
    }
    // While they run (each takes 300 ms to its first token), b dies.
    tokio::time::sleep(Duration::from_millis(100)).await;
    drop(b);
    for call in calls {
        let (status, body) = within(call).await.unwrap();
        assert_eq!(status, 200, "moved to the server alive: {body}");
    }
    let metrics = get(&format!("{url}/metrics")).await;
    let moved = metrics
        .text()
        .lines()
        .find(|l| l.starts_with("corral_fleet_failovers_total{upstream=\"gpu-1\"}"))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|n| n.parse::<f64>().ok())
        .unwrap_or(0.0);
    assert!(moved >= 1.0, "requests moved off the dead server: {moved}");
    // Its next connections are refused: drained.
    let mut drained = false;
    for _ in 0..50 {
        let upstreams = get(&format!("{url}/corral/upstreams")).await;
        let upstreams: serde_json::Value = serde_json::from_slice(&upstreams.body).unwrap();
        if upstreams["upstreams"][1]["healthy"] == false {
            drained = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(drained, "the dead server is drained");
    // Back on the same address: within a few probes it takes requests.
    let b = MockOllama::bind(b_addr, slow).await.unwrap();
    let mut back = false;
    for _ in 0..50 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let upstreams = get(&format!("{url}/corral/upstreams")).await;
        let upstreams: serde_json::Value = serde_json::from_slice(&upstreams.body).unwrap();
        if upstreams["upstreams"][1]["healthy"] == true {
            back = true;
            break;
        }
    }
    assert!(back, "the server back is probed back in");
    let mut calls = Vec::new();
    // Enough waiting that a load there is sooner than the queue (a load
    // is taken to cost 2 s until measured).
    for i in 0..24 {
        let url = url.clone();
        calls.push(tokio::spawn(async move {
            generate(&url, &format!("agent-{i}"), "alpha", false).await
        }));
    }
    for call in calls {
        let (status, body) = within(call).await.unwrap();
        assert_eq!(status, 200, "{body}");
    }
    let generated = b.stats().by_path.get("/api/generate").copied().unwrap_or(0);
    assert!(generated > 0, "the server back took some of the work");
}

#[tokio::test]
async fn lists_are_every_servers_and_a_model_none_serves_is_refused() {
    let alpha_only = MockConfig {
        models: vec!["alpha".into()],
        ..server()
    };
    let beta_only = MockConfig {
        models: vec!["beta".into()],
        ..server()
    };
    let (a, b) = (mock(alpha_only).await, mock(beta_only).await);
    let corral = corral_over(&[&a, &b]).await;
    let url = corral.url();
    // Once probed, each server is known to have its own model.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let tags = get(&format!("{url}/api/tags")).await;
    assert_eq!(tags.status, 200);
    let tags: serde_json::Value = serde_json::from_slice(&tags.body).unwrap();
    let mut names: Vec<&str> = tags["models"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["name"].as_str().unwrap())
        .collect();
    names.sort();
    assert_eq!(
        names,
        ["alpha:latest", "beta:latest"],
        "both servers' models"
    );
    // Each model goes where it is.
    for (model, server) in [("alpha", "gpu-0"), ("beta", "gpu-1")] {
        let reply = send(request_with(
            "POST",
            &format!("{url}/api/generate"),
            format!(r#"{{"model":"{model}","prompt":"hi","stream":false}}"#),
            &[],
        ))
        .await;
        assert_eq!(reply.status, 200, "{}", reply.text());
        assert_eq!(reply.headers["x-corral-upstream"], server);
    }
    // A model no server has: refused at once, in Ollama's shape.
    let reply = send(request_with(
        "POST",
        &format!("{url}/api/generate"),
        r#"{"model":"gamma","prompt":"hi","stream":false}"#,
        &[],
    ))
    .await;
    assert_eq!(reply.status, 404, "{}", reply.text());
    assert_eq!(reply.headers["x-corral-reason"], "model_not_served");
    assert!(reply.text().contains("gamma"), "{}", reply.text());
    // A read aimed at one server by name.
    let one = send(request_with(
        "GET",
        &format!("{url}/api/tags"),
        "",
        &[("x-corral-upstream", "gpu-1")],
    ))
    .await;
    let one: serde_json::Value = serde_json::from_slice(&one.body).unwrap();
    assert_eq!(one["models"].as_array().unwrap().len(), 1);
    let none = send(request_with(
        "GET",
        &format!("{url}/api/tags"),
        "",
        &[("x-corral-upstream", "gpu-9")],
    ))
    .await;
    assert_eq!(none.status, 404);
    // The admin sets one server's capacity.
    let set = send(request_with(
        "POST",
        &format!("{url}/corral/capacity"),
        r#"{"upstream":"gpu-0","model":"alpha","capacity":3}"#,
        &[],
    ))
    .await;
    assert_eq!(set.status, 200, "{}", set.text());
    let set: serde_json::Value = serde_json::from_slice(&set.body).unwrap();
    assert_eq!(set["upstreams"][0]["models"][0]["capacity"], 3, "{set}");
    let unnamed = send(request_with(
        "POST",
        &format!("{url}/corral/capacity"),
        r#"{"capacity":3}"#,
        &[],
    ))
    .await;
    assert_eq!(unnamed.status, 400);
}

#[tokio::test]
async fn one_server_holding_one_model_gets_its_work_grouped_by_model() {
    let server = mock(server()).await;
    let text = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\n[upstream]\nurl = \"{}\"\ncapacity = 2\nmax_loaded_models = 1\n",
        server.url()
    );
    let config = Config::parse(&text, std::path::Path::new("one.toml")).unwrap();
    let corral = Running::start(&config).await.unwrap();
    let url = corral.url();
    let mut calls = Vec::new();
    for round in 0..4 {
        for model in ["alpha", "beta", "gamma"] {
            for agent in 0..3 {
                let url = url.clone();
                let agent = format!("agent-{model}-{agent}-{round}");
                calls.push(tokio::spawn(async move {
                    generate(&url, &agent, model, false).await
                }));
            }
        }
    }
    for call in calls {
        let (status, body) = within(call).await.unwrap();
        assert_eq!(status, 200, "{body}");
    }
    let stats = server.stats();
    assert_eq!(
        stats.peak_queued, 0,
        "no model loaded over a busy one: {stats:?}"
    );
    // 36 requests over three models, all at once: each model loaded a
    // few times, not once per request.
    assert!(
        stats.model_loads <= 9,
        "grouped by model: {} loads",
        stats.model_loads
    );
}

#[tokio::test]
async fn a_client_leaving_while_its_model_loads_does_not_abort_the_load_others_wait_for() {
    let server = mock(MockConfig {
        parallel: 1,
        load_time: Duration::from_millis(400),
        ..server()
    })
    .await;
    let text = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\n[upstream]\nurl = \"{}\"\ncapacity = 1\nmax_loaded_models = 1\n",
        server.url()
    );
    let config = Config::parse(&text, std::path::Path::new("one.toml")).unwrap();
    let corral = Running::start(&config).await.unwrap();
    let url = corral.url();
    // The first asks for alpha (not loaded) and leaves during the load.
    let leaving = {
        let url = url.clone();
        tokio::spawn(async move {
            tokio::time::timeout(
                Duration::from_millis(150),
                generate(&url, "leaver", "alpha", true),
            )
            .await
        })
    };
    tokio::time::sleep(Duration::from_millis(50)).await;
    // The second waits in Corral's queue for the one permit.
    let (status, body) = generate(&url, "stayer", "alpha", true).await;
    assert_eq!(status, 200, "{body}");
    assert!(leaving.await.unwrap().is_err(), "the first client left");
    let stats = server.stats();
    assert_eq!(stats.aborted_loads, 0, "the load went on: {stats:?}");
    assert_eq!(stats.model_loads, 1, "alpha loaded once: {stats:?}");
}
