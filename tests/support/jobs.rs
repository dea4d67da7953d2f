//! Async jobs as a test drives them: submitted with `Prefer:
//! respond-async`, read as their agent, waited for.

use std::time::Duration;

use serde_json::Value;

use crate::{request_with, send, Reply, STEP};

/// Submits `body` to `url` + `path` as a job from `agent`, checks the
/// `202` a job gets, and returns its id.
pub async fn submit(url: &str, path: &str, body: &str, agent: &str) -> String {
    let reply = send(request_with(
        "POST",
        &format!("{url}{path}"),
        body.to_string(),
        &[("prefer", "respond-async"), ("x-agent-id", agent)],
    ))
    .await;
    assert_eq!(reply.status, 202, "{}", reply.text());
    assert_eq!(reply.header("preference-applied"), Some("respond-async"));
    let view = reply.json();
    let id = view["id"].as_str().expect("a job has an id").to_string();
    assert_eq!(
        reply.header("location"),
        Some(&*format!("/corral/jobs/{id}"))
    );
    assert_eq!(view["status"], "queued");
    id
}

/// `GET {url}/corral/jobs/{id}` as `agent`.
pub async fn read(url: &str, id: &str, agent: &str) -> Reply {
    send(request_with(
        "GET",
        &format!("{url}/corral/jobs/{id}"),
        "",
        &[("x-agent-id", agent)],
    ))
    .await
}

/// Waits until the job, read on `url` as `agent`, has `status`; its view.
pub async fn until(url: &str, id: &str, agent: &str, status: &str) -> Value {
    let deadline = tokio::time::Instant::now() + STEP;
    loop {
        let reply = read(url, id, agent).await;
        // Another replica may not answer for a moment (one was killed).
        if reply.status == 200 {
            let view = reply.json();
            if view["status"] == status {
                return view;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "job {id} never {status}: {view}"
            );
        } else {
            assert!(
                tokio::time::Instant::now() < deadline,
                "job {id} unreadable: {}",
                reply.text()
            );
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
