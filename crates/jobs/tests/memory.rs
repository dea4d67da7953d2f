//! The memory store with paused time: its bounds (jobs, bytes of
//! answers), expiry, cancellation, followers, idempotency keys.

#![allow(clippy::unwrap_used)] // a test fails by panicking

use std::time::Duration;

use corral_jobs::{Head, JobRequest, Jobs, JobsConfig, JobsRefused, Outcome, Status};

fn request(body: &str) -> JobRequest {
    JobRequest {
        method: "POST".into(),
        path: "/api/generate".into(),
        headers: vec![],
        body: body.to_string().into(),
        agent: "planner".into(),
        authenticated: false,
        callback_url: None,
        client: None,
        idempotency_key: None,
    }
}

fn config(max_jobs: usize, max_result_bytes: usize) -> JobsConfig {
    JobsConfig {
        max_jobs,
        max_result_bytes,
        result_ttl: Duration::from_secs(60),
        ..JobsConfig::default()
    }
}

#[tokio::test(start_paused = true)]
async fn finished_jobs_make_room_oldest_first_and_running_ones_never_do() {
    let (jobs, mut claims) = Jobs::memory(config(2, 1024));
    let first = jobs.submit(request("1")).await.unwrap().state;
    let second = jobs.submit(request("2")).await.unwrap().state;
    assert!(matches!(
        jobs.submit(request("3")).await,
        Err(JobsRefused::Full { held: 2 })
    ));
    let claim = claims.recv().await.unwrap();
    assert_eq!(claim.id, first.id);
    jobs.started(&claim, "r").await;
    jobs.finish(&claim, &Outcome::Done).await;
    // The finished one gives its place; the queued one keeps its own.
    let third = jobs.submit(request("3")).await.unwrap().state;
    assert!(jobs.state(&first.id).await.unwrap().is_none());
    assert!(jobs.state(&second.id).await.unwrap().is_some());
    assert!(jobs.state(&third.id).await.unwrap().is_some());
}

#[tokio::test(start_paused = true)]
async fn a_finished_job_is_readable_for_result_ttl_then_gone() {
    let (jobs, mut claims) = Jobs::memory(config(10, 1024));
    let job = jobs.submit(request("1")).await.unwrap().state;
    let claim = claims.recv().await.unwrap();
    jobs.started(&claim, "r").await;
    jobs.finish(&claim, &Outcome::Done).await;
    tokio::time::advance(Duration::from_secs(59)).await;
    assert_eq!(
        jobs.state(&job.id).await.unwrap().unwrap().status,
        Status::Done
    );
    tokio::time::advance(Duration::from_secs(2)).await;
    assert!(jobs.state(&job.id).await.unwrap().is_none());
}

#[tokio::test(start_paused = true)]
async fn an_answer_over_its_bound_is_refused_and_marked_truncated() {
    let (jobs, mut claims) = Jobs::memory(config(10, 8));
    let job = jobs.submit(request("1")).await.unwrap().state;
    let claim = claims.recv().await.unwrap();
    jobs.started(&claim, "r").await;
    assert!(jobs.append(&claim, vec!["12345".into()]).await);
    assert!(!jobs.append(&claim, vec!["6789".into()]).await);
    let state = jobs.state(&job.id).await.unwrap().unwrap();
    assert!(state.truncated);
    assert_eq!(state.bytes, 5);
    assert_eq!(
        jobs.chunks(&job.id, 0)
            .await
            .unwrap()
            .unwrap()
            .chunks
            .concat(),
        b"12345"
    );
}

#[tokio::test(start_paused = true)]
async fn answers_held_together_stay_under_max_total_bytes_finished_ones_making_room() {
    let config = JobsConfig {
        max_total_bytes: 20,
        max_result_bytes: 12,
        ..config(10, 12)
    };
    let (jobs, mut claims) = Jobs::memory(config);
    let old = jobs.submit(request("")).await.unwrap().state;
    let claim = claims.recv().await.unwrap();
    jobs.started(&claim, "r").await;
    assert!(jobs.append(&claim, vec!["0123456789".into()]).await);
    jobs.finish(&claim, &Outcome::Done).await;
    let running = jobs.submit(request("")).await.unwrap().state;
    let claim = claims.recv().await.unwrap();
    jobs.started(&claim, "r").await;
    assert!(jobs.append(&claim, vec!["0123456789".into()]).await);
    // 20 held: the finished job makes room for more.
    assert!(jobs.append(&claim, vec!["ab".into()]).await);
    assert!(jobs.state(&old.id).await.unwrap().is_none());
    let other = jobs.submit(request("")).await.unwrap().state;
    let third = claims.recv().await.unwrap();
    jobs.started(&third, "r").await;
    // 12 held by a running job and 9 more: nothing finished to drop.
    assert!(!jobs.append(&third, vec!["012345678".into()]).await);
    assert!(jobs.state(&other.id).await.unwrap().unwrap().truncated);
    assert_eq!(jobs.state(&running.id).await.unwrap().unwrap().bytes, 12);
}

#[tokio::test(start_paused = true)]
async fn the_same_idempotency_key_from_the_same_agent_gets_the_same_job() {
    let (jobs, _claims) = Jobs::memory(config(10, 1024));
    let keyed = |agent: &str| JobRequest {
        agent: agent.into(),
        idempotency_key: Some("saga-7:2:action".into()),
        ..request("1")
    };
    let first = jobs.submit(keyed("planner")).await.unwrap();
    let again = jobs.submit(keyed("planner")).await.unwrap();
    assert!(!first.repeated && again.repeated);
    assert_eq!(first.state.id, again.state.id);
    let other = jobs.submit(keyed("writer")).await.unwrap();
    assert!(!other.repeated, "another agent's key is its own");
    assert_ne!(other.state.id, first.state.id);
}

#[tokio::test(start_paused = true)]
async fn a_job_cancelled_before_it_ran_ends_at_once_and_a_running_one_is_told() {
    let (jobs, mut claims) = Jobs::memory(config(10, 1024));
    let queued = jobs.submit(request("1")).await.unwrap().state;
    let cancelled = jobs.cancel(&queued.id).await.unwrap().unwrap();
    assert_eq!(cancelled.status, Status::Cancelled);
    // Its claim still comes; starting it is refused.
    let stale = claims.recv().await.unwrap();
    assert!(!jobs.started(&stale, "r").await);

    let running = jobs.submit(request("2")).await.unwrap().state;
    let claim = claims.recv().await.unwrap();
    jobs.started(&claim, "r").await;
    jobs.dispatched(&claim).await;
    let mut told = claim.cancelled.clone();
    let state = jobs.cancel(&running.id).await.unwrap().unwrap();
    assert_eq!(state.status, Status::Running, "its runner ends it");
    told.wait_for(|c| *c).await.unwrap();
    jobs.finish(&claim, &Outcome::Cancelled).await;
    assert_eq!(
        jobs.state(&running.id).await.unwrap().unwrap().status,
        Status::Cancelled
    );
}

#[tokio::test(start_paused = true)]
async fn a_follower_is_woken_by_each_change_and_an_error_status_fails_the_job() {
    let (jobs, mut claims) = Jobs::memory(config(10, 1024));
    let job = jobs.submit(request("1")).await.unwrap().state;
    let mut follow = jobs.follow(&job.id).unwrap();
    let claim = claims.recv().await.unwrap();
    jobs.started(&claim, "r").await;
    follow.changed().await;
    jobs.head(
        &claim,
        Head {
            status: 404,
            headers: vec![],
        },
    )
    .await;
    follow.changed().await;
    let ended = jobs.finish(&claim, &Outcome::Done).await.unwrap();
    assert_eq!(ended.status, Status::Failed);
    assert_eq!(ended.reason.as_deref(), Some("answered 404"));
}

#[tokio::test(start_paused = true)]
async fn one_agent_holds_at_most_max_jobs_per_agent_not_yet_ended() {
    let config = JobsConfig {
        max_jobs_per_agent: 2,
        ..config(10, 1024)
    };
    let (jobs, mut claims) = Jobs::memory(config);
    jobs.submit(request("1")).await.unwrap();
    jobs.submit(request("2")).await.unwrap();
    assert!(matches!(
        jobs.submit(request("3")).await,
        Err(JobsRefused::AgentFull { held: 2 })
    ));
    let other = JobRequest {
        agent: "writer".into(),
        ..request("4")
    };
    assert!(
        jobs.submit(other).await.is_ok(),
        "another agent is not held back"
    );
    // One ends: room for one more.
    let claim = claims.recv().await.unwrap();
    jobs.started(&claim, "r").await;
    jobs.finish(&claim, &Outcome::Done).await;
    assert!(jobs.submit(request("5")).await.is_ok());
}
