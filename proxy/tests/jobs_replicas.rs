//! Async jobs on three `corral` processes sharing one Redis: a job
//! survives SIGKILL of the replica that accepted and ran it and ends on
//! another, run again from the start; any replica reads and streams any
//! job; a herd of jobs over three replicas keeps the upstream's capacity.

#![allow(clippy::unwrap_used)] // a test fails by panicking

mod support;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use corral_e2e::herd::{assert_priority_one_went_first, assert_the_upstream_kept_up, CLASSES};
use corral_e2e::jobs::until;
use corral_e2e::{open, request_with, send, text, within};
use serde_json::Value;
use support::replica::{Fleet, Replica};

const JOBS: &str = "[jobs]\nlease = \"1s\"\npoll_interval = \"200ms\"\n";

async fn submit(url: &str, agent: &str, body: &str) -> String {
    corral_e2e::jobs::submit(url, "/api/generate", body, agent).await
}

fn runner_of(view: &Value, replicas: &[Replica; 3]) -> usize {
    let name = view["replica"].as_str().unwrap();
    ["replica-a-", "replica-b-", "replica-c-"]
        .iter()
        .position(|prefix| name.starts_with(prefix))
        .filter(|&i| i < replicas.len())
        .unwrap_or_else(|| panic!("a replica of the three runs it: {name}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_survives_sigkill_of_the_replica_running_it_and_completes_on_another() {
    // 100 tokens at 25/s: four seconds of generation to kill it in.
    let fleet = Fleet::start_with(corral_e2e::streaming(100, 25.0), "jobs-kill", "2s", JOBS).await;
    let mut replicas = fleet.three().await;
    let id = submit(
        &replicas[0].url,
        "system-0",
        r#"{"model":"llama3","prompt":"a long one"}"#,
    )
    .await;
    let running = until(&replicas[0].url, &id, "system-0", "running").await;
    let runner = runner_of(&running, &replicas);
    // The replica that accepted it and the one running it (often the
    // same) die without a word.
    replicas[runner].kill();
    replicas[0].kill();
    let survivor = (0..3).find(|&i| i != runner && i != 0).unwrap();
    let url = replicas[survivor].url.clone();

    let done = until(&url, &id, "system-0", "done").await;
    assert_eq!(done["attempts"], 2, "run again from the start: {done}");
    let finisher = runner_of(&done, &replicas);
    assert!(
        finisher != runner && finisher != 0,
        "ended on a replica still alive: {done}"
    );
    let result = send(request_with(
        "GET",
        &format!("{url}/corral/jobs/{id}/result"),
        "",
        &[("x-agent-id", "system-0")],
    ))
    .await;
    let lines: Vec<Value> = result
        .text()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(
        lines.len(),
        101,
        "the whole answer of the second run, nothing of the first"
    );
    assert_eq!(lines.last().unwrap()["done"], true);
    let runs: Vec<_> = fleet
        .upstream
        .requests()
        .into_iter()
        .filter(|r| r.body.contains("a long one"))
        .collect();
    assert_eq!(
        runs.len(),
        2,
        "sent upstream twice: once cut by the kill, once whole"
    );
    assert!(runs.iter().filter(|r| r.completed).count() == 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn any_replica_reads_and_streams_a_job_submitted_to_another() {
    let fleet = Fleet::start_with(corral_e2e::streaming(40, 80.0), "jobs-read", "2s", JOBS).await;
    let replicas = fleet.three().await;
    let id = submit(
        &replicas[0].url,
        "opus-1",
        r#"{"model":"llama3","prompt":"hi"}"#,
    )
    .await;
    until(&replicas[1].url, &id, "opus-1", "running").await;
    let follow = open(request_with(
        "GET",
        &format!("{}/corral/jobs/{id}/stream", replicas[2].url),
        "",
        &[("x-agent-id", "opus-1")],
    ))
    .await;
    let followed = within(text(follow)).await;
    let result = send(request_with(
        "GET",
        &format!("{}/corral/jobs/{id}/result", replicas[1].url),
        "",
        &[("x-agent-id", "opus-1")],
    ))
    .await;
    assert_eq!(followed, result.text(), "every chunk, from another replica");
    assert_eq!(followed.lines().count(), 41);
    let other = send(request_with(
        "GET",
        &format!("{}/corral/jobs/{id}", replicas[2].url),
        "",
        &[("x-agent-id", "opus-2")],
    ))
    .await;
    assert_eq!(
        other.status, 404,
        "another agent does not see it on any replica"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jobs_of_131_agents_over_three_replicas_keep_the_upstream_capacity_and_the_priority_order()
{
    let upstream = corral_mock_ollama::MockConfig {
        ttft: Duration::from_millis(30),
        ..corral_e2e::herd::upstream()
    };
    let fleet = Fleet::start_with(upstream, "jobs-herd", "5s", JOBS).await;
    let replicas = Arc::new(fleet.three().await);
    let start = Arc::new(tokio::sync::Barrier::new(corral_e2e::herd::agents()));
    let mut submitted = Vec::new();
    let mut n = 0;
    for (class, priority, count) in CLASSES {
        for i in 0..count {
            let (replicas, start) = (replicas.clone(), start.clone());
            let at = n % 3;
            n += 1;
            submitted.push(tokio::spawn(async move {
                let agent = format!("{class}-{i}");
                start.wait().await;
                let body = format!(r#"{{"model":"llama3","prompt":"{agent}","stream":false}}"#);
                (
                    priority,
                    agent.clone(),
                    submit(&replicas[at].url, &agent, &body).await,
                    at,
                )
            }));
        }
    }
    let mut waits: BTreeMap<u8, Vec<u64>> = BTreeMap::new();
    for s in submitted {
        let (priority, agent, id, at) = within(s).await.unwrap();
        let done = until(&replicas[(at + 1) % 3].url, &id, &agent, "done").await;
        let wait = done["response"]["headers"]["x-corral-queue-ms"]
            .as_str()
            .map_or(0, |v| v.parse().unwrap());
        waits.entry(priority).or_default().push(wait);
    }
    let stats = fleet.upstream.stats();
    assert_the_upstream_kept_up(&stats, "from jobs over three replicas");
    assert_eq!(
        stats.completed as usize,
        corral_e2e::herd::agents(),
        "each job ran once"
    );
    assert_priority_one_went_first(waits, "of the jobs over three replicas");
}
