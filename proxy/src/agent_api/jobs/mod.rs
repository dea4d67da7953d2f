//! `/corral/jobs` and `Prefer: respond-async`: requests answered later.
//!
//! - an inference call with `Prefer: respond-async` (RFC 7240), or
//!   `POST /corral/jobs` with `{"endpoint": "/api/chat", "body": {...}}`,
//!   is answered `202` with `Location: /corral/jobs/{id}`;
//! - `GET /corral/jobs/{id}`: where it stands (queued with the work ahead
//!   and a rough wait, running, done with the answer, failed with why,
//!   cancelled); `GET .../result`: the answer exactly as a live request
//!   would have received it (status, headers, bytes); `GET .../stream`:
//!   the answer's chunks from the start, then live until it ends;
//! - `DELETE /corral/jobs/{id}`: cancels it; a running generation stops.
//!
//! Only the agent that submitted a job can see it: to any other it does
//! not exist (404), so ids do not leak.

use std::net::SocketAddr;

use bytes::Bytes;
use corral_classify::Caller;
use corral_core::{Body, BoxBody, Endpoint, EndpointKind, LoadCell};
use corral_jobs::{JobId, JobRequest, JobState, Jobs, JobsRefused, Status};
use http::{header, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::BodyExt;

use super::{refuse, runner::Runner};
use crate::admin::json_response;
use crate::config::Config;
use crate::front::Proxying;
use crate::stack::Stack;

mod read;
pub(crate) use read::view_of;

/// Headers a job does not keep: credentials (the job runs as the agent
/// identified at submission; Redis never holds a key), the preference
/// that made it a job, and what the connection owns.
const NOT_KEPT: &[&str] = &[
    "authorization",
    "x-api-key",
    "prefer",
    "host",
    "content-length",
    "x-signature",
    "x-timestamp",
    "x-corral-callback-url",
    "cookie",
];

/// The jobs' endpoints.
#[derive(Clone)]
pub(crate) struct JobsApi {
    jobs: Jobs,
    runner: std::sync::Arc<Runner>,
    events: std::sync::Arc<dyn corral_core::EventSink>,
    load: LoadCell,
    controls: std::sync::Arc<crate::svc::Controls>,
    max_body: usize,
    allow_private_callbacks: bool,
}

/// Whether `request` is an inference call that asks to be answered later
/// (`Prefer: respond-async`, RFC 7240).
pub(crate) fn asks_async<B>(request: &Request<B>) -> bool {
    let prefers = request
        .headers()
        .get_all("prefer")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|p| {
            p.split(';')
                .next()
                .is_some_and(|token| token.trim().eq_ignore_ascii_case("respond-async"))
        });
    prefers
        && Endpoint::from_request(request.method(), request.uri().path()).kind()
            == EndpointKind::Inference
}

impl JobsApi {
    /// The store `config` asks for (Redis when the state is shared), with
    /// its runner started.
    pub(crate) fn new(stack: &Stack, config: &Config, proxying: Proxying) -> Self {
        let (jobs, runner) = Runner::start(stack, config, proxying);
        Self {
            jobs,
            runner,
            events: stack.events().clone() as std::sync::Arc<dyn corral_core::EventSink>,
            load: stack.load().clone(),
            controls: stack.controls().clone(),
            max_body: config.server.max_request_bytes,
            allow_private_callbacks: config.jobs.allow_private_callbacks,
        }
    }

    /// `/corral/jobs...`.
    pub(crate) async fn handle(
        &self,
        request: Request<Body>,
        caller: Caller,
        peer: SocketAddr,
    ) -> Response<BoxBody> {
        let path = request.uri().path().trim_end_matches('/');
        let rest = path.strip_prefix("/corral/jobs").unwrap_or_default();
        let method = request.method().clone();
        if rest.is_empty() {
            return match method {
                Method::POST => self.submit_described(request, caller, peer).await,
                _ => refuse(
                    StatusCode::METHOD_NOT_ALLOWED,
                    "POST /corral/jobs submits a job; GET /corral/jobs/{id} reads one",
                ),
            };
        }
        let mut parts = rest.trim_start_matches('/').splitn(2, '/');
        let id = parts.next().unwrap_or_default();
        let view = parts.next();
        let Some(id) = JobId::parse(id) else {
            return refuse(StatusCode::NOT_FOUND, format!("no job {id:?}"));
        };
        let state = match self.owned(&id, &caller).await {
            Ok(state) => state,
            Err(response) => return response,
        };
        match (method, view) {
            (Method::GET | Method::HEAD, None) => self.describe(state).await,
            (Method::GET | Method::HEAD, Some("result")) => self.result(state).await,
            (Method::GET, Some("stream")) => self.stream(state).await,
            (Method::DELETE, None) => self.cancel(state).await,
            (_, Some(view)) if !matches!(view, "result" | "stream") => refuse(
                StatusCode::NOT_FOUND,
                format!("no such view of a job: {view:?} (there are /result and /stream)"),
            ),
            (method, view) => refuse(
                StatusCode::METHOD_NOT_ALLOWED,
                format!(
                    "{method} /corral/jobs/{{id}}{}: use GET (and /result, /stream) or DELETE",
                    view.map(|v| format!("/{v}")).unwrap_or_default()
                ),
            ),
        }
    }

    /// `DELETE /corral/jobs/{id}`: a job no runner had ends here, and is
    /// told as one that ended; a running one is stopped by its runner.
    async fn cancel(&self, before: JobState) -> Response<BoxBody> {
        let id = &before.id;
        match self.jobs.cancel(id).await {
            Ok(Some(after)) => {
                if !before.status.is_final() && after.status == Status::Cancelled {
                    let request = self.jobs.request(id).await.ok().flatten();
                    let callback = request.and_then(|r| r.callback_url);
                    self.runner.ended(callback.as_deref(), &after);
                }
                json_response(StatusCode::OK, &view_of(&after))
            }
            Ok(None) => refuse(StatusCode::NOT_FOUND, format!("no job {id}")),
            Err(e) => unavailable(&e),
        }
    }

    /// The job, if `caller` submitted it.
    async fn owned(&self, id: &JobId, caller: &Caller) -> Result<JobState, Response<BoxBody>> {
        match self.jobs.state(id).await {
            Ok(Some(state)) if state.agent == caller.agent.as_str() => Ok(state),
            Ok(_) => Err(refuse(
                StatusCode::NOT_FOUND,
                format!("no job {id} (or it has expired)"),
            )),
            Err(e) => Err(unavailable(&e)),
        }
    }

    /// An inference call with `Prefer: respond-async`.
    pub(crate) async fn submit_call(
        &self,
        request: Request<Body>,
        caller: Caller,
        peer: SocketAddr,
    ) -> Response<BoxBody> {
        let (parts, body) = request.into_parts();
        let body = match http_body_util::Limited::new(body, self.max_body)
            .collect()
            .await
        {
            Ok(body) => body.to_bytes(),
            Err(e) => {
                return refuse(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    format!(
                        "cannot read the body (at most {} bytes): {e}",
                        self.max_body
                    ),
                )
            }
        };
        let callback_url = parts
            .headers
            .get("x-corral-callback-url")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let job = JobRequest {
            method: parts.method.to_string(),
            path: parts
                .uri
                .path_and_query()
                .map_or_else(|| parts.uri.path().to_string(), |pq| pq.to_string()),
            headers: kept_headers(&parts.headers),
            body,
            agent: caller.agent.as_str().to_string(),
            authenticated: caller.authenticated,
            callback_url,
            client: Some(peer.ip().to_string()),
            idempotency_key: idempotency_key(&parts.headers),
        };
        self.accept(job).await
    }

    /// `POST /corral/jobs` with `{"endpoint", "body", "method"?,
    /// "headers"?, "callback_url"?}`.
    async fn submit_described(
        &self,
        request: Request<Body>,
        caller: Caller,
        peer: SocketAddr,
    ) -> Response<BoxBody> {
        let (parts, body) = request.into_parts();
        let bytes = match read_body(body, self.max_body).await {
            Ok(bytes) => bytes,
            Err(response) => return response,
        };
        let described: Described = match serde_json::from_slice(&bytes) {
            Ok(d) => d,
            Err(e) => {
                return refuse(
                    StatusCode::BAD_REQUEST,
                    format!("expected {{\"endpoint\": \"/api/chat\", \"body\": {{...}}, \"callback_url\": optional}}: {e}"),
                )
            }
        };
        match described.into_job(&parts.headers, &caller, peer) {
            Ok(job) => self.accept(job).await,
            Err(reason) => refuse(StatusCode::BAD_REQUEST, reason),
        }
    }

    /// Accepts `job`: `202` with its place, or the refusal.
    async fn accept(&self, job: JobRequest) -> Response<BoxBody> {
        if let Some(url) = &job.callback_url {
            if let Err(reason) = super::callback::check_url(url, self.allow_private_callbacks) {
                return refuse(StatusCode::BAD_REQUEST, format!("callback_url: {reason}"));
            }
        }
        match self.jobs.submit(job).await {
            Ok(corral_jobs::Submitted { state, repeated }) => {
                if !repeated {
                    super::runner::submitted(self.events.as_ref(), &state);
                }
                let location = format!("/corral/jobs/{}", state.id);
                let mut response = json_response(StatusCode::ACCEPTED, &view_of(&state));
                if let Ok(value) = HeaderValue::from_str(&location) {
                    response.headers_mut().insert(header::LOCATION, value);
                }
                response.headers_mut().insert(
                    "preference-applied",
                    HeaderValue::from_static("respond-async"),
                );
                response
            }
            Err(e) => {
                metrics::counter!(corral_jobs::metrics::JOBS_REFUSED_TOTAL).increment(1);
                unavailable(&e)
            }
        }
    }
}

/// A job as `POST /corral/jobs` describes it.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Described {
    endpoint: String,
    #[serde(default)]
    body: serde_json::Value,
    #[serde(default)]
    method: Option<String>,
    #[serde(default)]
    headers: std::collections::BTreeMap<String, String>,
    #[serde(default)]
    callback_url: Option<String>,
}

impl Described {
    /// The job it describes, sent with `headers` by `caller`; or why it
    /// cannot be one.
    fn into_job(
        self,
        headers: &http::HeaderMap,
        caller: &Caller,
        peer: SocketAddr,
    ) -> Result<JobRequest, String> {
        let method = self
            .method
            .unwrap_or_else(|| "POST".into())
            .to_ascii_uppercase();
        let parsed = Method::from_bytes(method.as_bytes())
            .map_err(|_| format!("method: {method:?} is not an HTTP method"))?;
        if !self.endpoint.starts_with('/') || self.endpoint.starts_with("/corral/") {
            return Err(format!(
                "endpoint: {:?} is not an Ollama or OpenAI path (such as /api/chat)",
                self.endpoint
            ));
        }
        let path_only = self.endpoint.split('?').next().unwrap_or_default();
        if Endpoint::from_request(&parsed, path_only).kind() != EndpointKind::Inference {
            return Err(format!("endpoint: {method} {path_only} is not an inference call; jobs run generate, chat, embeddings and their OpenAI and Anthropic forms"));
        }
        let mut kept = kept_headers(headers);
        kept.retain(|(name, _)| !name.eq_ignore_ascii_case("content-type"));
        kept.push(("content-type".into(), "application/json".into()));
        for (name, value) in self.headers {
            if NOT_KEPT.contains(&name.to_ascii_lowercase().as_str()) {
                continue;
            }
            kept.retain(|(n, _)| !n.eq_ignore_ascii_case(&name));
            kept.push((name, value));
        }
        let body = match self.body {
            serde_json::Value::String(text) => Bytes::from(text),
            serde_json::Value::Null => Bytes::new(),
            value => Bytes::from(serde_json::to_vec(&value).unwrap_or_default()),
        };
        Ok(JobRequest {
            method,
            path: self.endpoint,
            headers: kept,
            body,
            agent: caller.agent.as_str().to_string(),
            authenticated: caller.authenticated,
            callback_url: self.callback_url,
            client: Some(peer.ip().to_string()),
            idempotency_key: idempotency_key(headers),
        })
    }
}

/// The submission's `Idempotency-Key`, when it has a usable one.
fn idempotency_key(headers: &http::HeaderMap) -> Option<String> {
    headers
        .get("idempotency-key")
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
        .filter(|k| !k.is_empty() && k.len() <= 256)
        .map(str::to_string)
}

/// The request's body, at most `max` bytes, or the 413 that says so.
async fn read_body(body: Body, max: usize) -> Result<Bytes, Response<BoxBody>> {
    match http_body_util::Limited::new(body, max).collect().await {
        Ok(body) => Ok(body.to_bytes()),
        Err(e) => Err(refuse(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("cannot read the body (at most {max} bytes): {e}"),
        )),
    }
}

/// The headers a job keeps, as text.
fn kept_headers(headers: &http::HeaderMap) -> Vec<(String, String)> {
    let mut headers = headers.clone();
    crate::hop::strip_hop_by_hop(&mut headers);
    let mut kept = Vec::new();
    for (name, value) in &headers {
        if NOT_KEPT.contains(&name.as_str()) {
            continue;
        }
        if let Ok(value) = value.to_str() {
            kept.push((name.as_str().to_string(), value.to_string()));
        }
    }
    kept
}

/// The refusal of a job the store would not take (or read), with the
/// reason and a time to come back, as every refusal of Corral's has.
fn unavailable(e: &JobsRefused) -> Response<BoxBody> {
    let (status, reason) = match e {
        JobsRefused::AgentFull { .. } => (StatusCode::TOO_MANY_REQUESTS, "agent_jobs_full"),
        JobsRefused::Full { .. } => (StatusCode::SERVICE_UNAVAILABLE, "jobs_full"),
        JobsRefused::Unavailable(_) => (StatusCode::SERVICE_UNAVAILABLE, "jobs_unavailable"),
    };
    let mut response = refuse(status, e.to_string());
    let headers = response.headers_mut();
    headers.insert(header::RETRY_AFTER, HeaderValue::from_static("5"));
    headers.insert(
        corral_core::headers::X_CORRAL_REASON,
        HeaderValue::from_static(reason),
    );
    response
}
