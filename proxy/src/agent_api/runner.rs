//! Runs the jobs this replica claims, through the same way as a live
//! request, and tells the store how each goes.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use corral_classify::Vouched;
use corral_core::respond::Framing;
use corral_core::{stream_error_frame, AgentId, Dispatched, EventSink, NewEvent, RequestId};
use corral_jobs::metrics::{
    JOBS_FINISHED_TOTAL, JOBS_RUNNING, JOBS_SUBMITTED_TOTAL, JOBS_TAKEN_OVER_TOTAL,
};
use corral_jobs::{Claim, Claims, Head, JobState, Jobs, Outcome, Renewal};
use futures_util::FutureExt;
use http::Request;
use http_body_util::{BodyExt, Full};
use serde_json::json;

use super::callback::Callbacks;
use crate::config::Config;
use crate::front::Proxying;
use crate::stack::Stack;

/// How often a waiting job looks whether its request has left for the
/// upstream (then it is `running`).
const DISPATCH_CHECK: Duration = Duration::from_millis(50);

/// Who runs this replica's jobs.
pub(crate) struct Runner {
    jobs: Jobs,
    proxying: Proxying,
    replica: Arc<str>,
    events: Arc<dyn EventSink>,
    callbacks: Callbacks,
}

impl Runner {
    /// The store for `config` (Redis when the state is shared), and a
    /// task that runs every job it hands this replica.
    pub(crate) fn start(stack: &Stack, config: &Config, proxying: Proxying) -> (Jobs, Arc<Self>) {
        corral_jobs::metrics::describe();
        let (jobs, claims) = match stack.state() {
            Some(state) => Jobs::redis(state.clone(), config.jobs.clone()),
            None => Jobs::memory(config.jobs.clone()),
        };
        let runner = Arc::new(Self {
            jobs: jobs.clone(),
            proxying,
            replica: stack.replica().clone(),
            events: stack.events().clone() as Arc<dyn EventSink>,
            callbacks: Callbacks::new(&config.jobs),
        });
        tokio::spawn(runner.clone().take(claims));
        (jobs, runner)
    }

    async fn take(self: Arc<Self>, mut claims: Claims) {
        while let Some(claim) = claims.recv().await {
            tokio::spawn(self.clone().run(claim));
        }
    }

    /// Runs one claim to its end, unless it is lost to another replica.
    async fn run(self: Arc<Self>, claim: Claim) {
        if !self.jobs.started(&claim, &self.replica).await {
            self.jobs.abandon(&claim);
            return;
        }
        if claim.attempt > 1 {
            metrics::counter!(JOBS_TAKEN_OVER_TOTAL).increment(1);
        }
        let gauge = metrics::gauge!(JOBS_RUNNING);
        gauge.increment(1.0);
        let outcome = self.attempt(&claim).await;
        gauge.decrement(1.0);
        let Some(outcome) = outcome else {
            tracing::info!(job = %claim.id, "job taken over by another replica: stopped here");
            self.jobs.abandon(&claim);
            return;
        };
        if let Some(state) = self.jobs.finish(&claim, &outcome).await {
            self.ended(claim.request.callback_url.as_deref(), &state);
        }
    }

    /// Records a job's end, and calls back if asked: its runner's, or
    /// the owner's cancel of a job no runner had.
    pub(crate) fn ended(&self, callback_url: Option<&str>, state: &JobState) {
        let status = state.status.as_str();
        metrics::counter!(JOBS_FINISHED_TOTAL, "status" => status).increment(1);
        self.events.record(
            NewEvent::new(
                "job_finished",
                json!({"job": state.id, "status": status, "attempts": state.attempts, "reason": state.reason}),
            )
            .about(&state.agent, state.id.as_str()),
        );
        if let Some(url) = callback_url {
            self.callbacks
                .deliver(url.to_string(), super::jobs::view_of(state));
        }
    }

    /// One attempt: the outcome, or `None` when the job was lost to
    /// another replica (it is not this one's to end).
    async fn attempt(&self, claim: &Claim) -> Option<Outcome> {
        let mut cancelled = claim.cancelled.clone();
        let renew = async {
            let Some(every) = self.jobs.renew_every() else {
                return std::future::pending().await;
            };
            loop {
                tokio::time::sleep(every).await;
                match self.jobs.renew(claim).await {
                    Renewal::Kept => {}
                    Renewal::Lost => return None,
                    // The message was missed; the flag was not.
                    Renewal::Cancelled => return Some(Outcome::Cancelled),
                }
            }
        };
        // Dropping the work drops the upstream's answer: the generation
        // stops, as when a live client leaves. A job cancelled before it
        // was claimed never starts.
        tokio::select! {
            biased;
            _ = cancelled.wait_for(|c| *c) => Some(Outcome::Cancelled),
            outcome = renew => outcome,
            outcome = self.work(claim) => outcome,
        }
    }

    /// Sends the job's request through the stack and keeps its answer.
    async fn work(&self, claim: &Claim) -> Option<Outcome> {
        let dispatched = Dispatched::default();
        let request = request_of(claim, &dispatched);
        let peer = claim
            .request
            .client
            .as_deref()
            .and_then(|ip| ip.parse::<IpAddr>().ok())
            .map_or(SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 0), |ip| {
                SocketAddr::new(ip, 0)
            });
        let serve = self.proxying.serve_unrendered(request, peer);
        tokio::pin!(serve);
        let mut marked = false;
        let mut checks = tokio::time::interval(DISPATCH_CHECK);
        let (response, framing) = loop {
            tokio::select! {
                served = &mut serve => break served,
                _ = checks.tick() => {
                    if !marked && dispatched.is_marked() {
                        marked = true;
                        if !self.jobs.dispatched(claim).await {
                            return None;
                        }
                    }
                }
            }
        };
        let (parts, mut body) = response.into_parts();
        let head = Head {
            status: parts.status.as_u16(),
            headers: parts
                .headers
                .iter()
                .filter_map(|(n, v)| Some((n.as_str().to_string(), v.to_str().ok()?.to_string())))
                .collect(),
        };
        if marked || dispatched.is_marked() {
            // A cache hit never leaves; a request that did is running.
            let _ = self.jobs.dispatched(claim).await;
        }
        if !self.jobs.head(claim, head).await {
            return None;
        }
        loop {
            let mut chunks = Vec::new();
            let mut failed = None;
            let mut ended = false;
            // What is ready now goes in one write.
            match body.frame().await {
                None => ended = true,
                Some(frame) => collect(frame, &mut chunks, &mut failed),
            }
            while failed.is_none() && !ended {
                match body.frame().now_or_never() {
                    Some(None) => ended = true,
                    Some(Some(frame)) => collect(frame, &mut chunks, &mut failed),
                    None => break,
                }
            }
            if let (Some(reason), Framing::Frame(family)) = (&failed, framing) {
                // What a live client would have read last.
                chunks.push(stream_error_frame(family, reason));
            }
            if !chunks.is_empty() && !self.jobs.append(claim, chunks).await {
                return Some(Outcome::Failed(
                    "the answer is larger than [jobs] max_result_bytes, or the job ended elsewhere"
                        .into(),
                ));
            }
            if let Some(reason) = failed {
                return Some(Outcome::Failed(reason));
            }
            if ended {
                return Some(Outcome::Done);
            }
        }
    }
}

fn collect(
    frame: Result<http_body::Frame<Bytes>, corral_core::BoxError>,
    chunks: &mut Vec<Bytes>,
    failed: &mut Option<String>,
) {
    match frame {
        Ok(frame) => {
            if let Ok(data) = frame.into_data() {
                if !data.is_empty() {
                    chunks.push(data);
                }
            }
        }
        Err(e) => *failed = Some(e.to_string()),
    }
}

/// The job's request as the stack takes it: its head and body, the agent
/// it was accepted from, its id as the request id, the dispatch flag.
fn request_of(claim: &Claim, dispatched: &Dispatched) -> Request<Full<Bytes>> {
    let job = &claim.request;
    let mut request = Request::new(Full::new(job.body.clone()));
    *request.method_mut() = job.method.parse().unwrap_or(http::Method::POST);
    *request.uri_mut() = job
        .path
        .parse()
        .unwrap_or_else(|_| http::Uri::from_static("/"));
    for (name, value) in &job.headers {
        if let (Ok(name), Ok(value)) = (
            http::HeaderName::from_bytes(name.as_bytes()),
            http::HeaderValue::from_str(value),
        ) {
            request.headers_mut().append(name, value);
        }
    }
    let extensions = request.extensions_mut();
    extensions.insert(Vouched {
        agent: AgentId::from(job.agent.as_str()),
        authenticated: job.authenticated,
    });
    extensions.insert(RequestId::from(claim.id.as_str()));
    extensions.insert(dispatched.clone());
    request
}

/// Records a submission.
pub(crate) fn submitted(events: &dyn EventSink, state: &JobState) {
    metrics::counter!(JOBS_SUBMITTED_TOTAL).increment(1);
    events.record(
        NewEvent::new(
            "job_submitted",
            json!({"job": state.id, "endpoint": state.endpoint}),
        )
        .about(&state.agent, state.id.as_str()),
    );
}
