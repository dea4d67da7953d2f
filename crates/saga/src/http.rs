//! Sagas whose steps are HTTP calls: the definition agents submit, and
//! the client that runs it.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::{Arc, OnceLock, RwLock};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use corral_core::{BoxBody, BoxError};
use http::{header, HeaderName, HeaderValue, Method, Request, StatusCode, Uri};
use http_body_util::{BodyExt, Full, Limited};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::dns::{GaiResolver, Name};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::log::BoxFuture;
use crate::runner::Rebuild;
use crate::saga::{Action, StepContext, StepResult};
use crate::{Saga, SagaConfig, Transition};

/// The most bytes of a step's answer kept (and parsed).
const MAX_ANSWER_BYTES: usize = 1 << 20;
/// The most bytes of a step's output kept in the log: a longer body is
/// cut and the output marked `"truncated": true`.
pub const MAX_OUTPUT_BYTES: usize = 64 << 10;
/// Headers a step may not set: Corral sets them (the key, who the agent
/// is, the body's framing, async), or they would carry a secret into
/// the log.
const RESERVED_HEADERS: [&str; 7] = [
    "idempotency-key",
    "x-agent-id",
    "host",
    "content-length",
    "prefer",
    "authorization",
    "x-api-key",
];
/// The most characters of a failed answer quoted in the reason.
const MAX_REASON_CHARS: usize = 300;

/// A saga of HTTP calls, as agents submit it.
///
/// ```
/// use corral_saga::Definition;
///
/// let definition: Definition = serde_json::from_str(r#"{"steps": [
///     {"name": "reserve", "action": {"method": "POST", "url": "http://inventory:8080/reserve", "body": {"sku": 7}},
///      "compensation": {"method": "POST", "url": "http://inventory:8080/release"}},
///     {"name": "summarize", "action": {"path": "/api/chat", "body": {"model": "llama3", "messages": []}, "async": true}},
///     {"name": "notify", "action": {"agent": {"capability": "email"}, "path": "/send"}}
/// ]}"#).unwrap();
/// assert!(definition.validate(32).is_ok());
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Definition {
    /// The steps, in order.
    pub steps: Vec<StepDefinition>,
}

/// One step: a call and the call that undoes it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StepDefinition {
    /// Its name, unique in the saga.
    pub name: String,
    /// What it does.
    pub action: Call,
    /// What undoes it; none: nothing to undo.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub compensation: Option<Call>,
}

/// One HTTP call: a method, a target (`url`; `path` on Corral; or
/// `agent` + `path`), headers and a JSON body. It succeeded if it was
/// answered 2xx.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Call {
    /// The method; `POST` if unset.
    #[serde(default = "post")]
    pub method: String,
    /// An absolute `http://` or `https://` URL.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    /// A path (and query): on Corral itself, as the submitting agent,
    /// through the whole stack (in process with [`HttpSteps::set_local`],
    /// else with `X-Agent-Id`); or on the agent found by `agent`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// Send to an agent with this capability, found in the registry.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent: Option<AgentTarget>,
    /// Headers to send.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub headers: BTreeMap<String, String>,
    /// The JSON body.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body: Option<Value>,
    /// For a `path` on Corral: send with `Prefer: respond-async` and wait
    /// for the job it becomes.
    #[serde(default, rename = "async", skip_serializing_if = "is_false")]
    pub respond_async: bool,
}

/// Which agent a call goes to.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentTarget {
    /// A capability it announced in the registry.
    pub capability: String,
}

fn post() -> String {
    "POST".into()
}

fn is_false(b: &bool) -> bool {
    !*b
}

impl Definition {
    /// Why the definition cannot run, naming the field; `max_steps` is
    /// the most steps allowed.
    pub fn validate(&self, max_steps: usize) -> Result<(), String> {
        if self.steps.is_empty() {
            return Err("steps: a saga needs at least one step".into());
        }
        if self.steps.len() > max_steps {
            return Err(format!(
                "steps: at most {max_steps} steps, got {}",
                self.steps.len()
            ));
        }
        let mut names = BTreeSet::new();
        for (i, step) in self.steps.iter().enumerate() {
            if step.name.trim().is_empty() || step.name.len() > 128 {
                return Err(format!("steps[{i}].name: 1 to 128 characters"));
            }
            if !names.insert(step.name.as_str()) {
                return Err(format!("steps[{i}].name: {:?} is used twice", step.name));
            }
            step.action
                .validate()
                .map_err(|e| format!("steps[{i}].action: {e}"))?;
            if let Some(compensation) = &step.compensation {
                compensation
                    .validate()
                    .map_err(|e| format!("steps[{i}].compensation: {e}"))?;
            }
        }
        Ok(())
    }
}

impl Definition {
    /// Refuses a `url` naming a loopback, private, link-local or
    /// metadata address literally, naming the step and field (names are
    /// checked once resolved, before each call); for submissions unless
    /// `[sagas] allow_private_targets`.
    pub fn refuse_private(&self) -> Result<(), String> {
        for (i, step) in self.steps.iter().enumerate() {
            let calls = [
                ("action", Some(&step.action)),
                ("compensation", step.compensation.as_ref()),
            ];
            for (field, call) in calls {
                let Some(url) = call.and_then(|c| c.url.as_deref()) else {
                    continue;
                };
                let host = url
                    .parse::<Uri>()
                    .ok()
                    .and_then(|u| u.host().map(str::to_string));
                if let Some(ip) = host.as_deref().and_then(corral_core::net::literal_private) {
                    return Err(format!(
                        "steps[{i}].{field}.url: {ip} is a private address (allow_private_targets is off)"
                    ));
                }
            }
        }
        Ok(())
    }

    /// A stored definition read leniently: fields this version does not
    /// know (written by a newer replica during a rolling upgrade) are
    /// dropped instead of failing the saga. Submissions stay strict.
    pub fn from_stored(value: &Value) -> Result<Self, serde_json::Error> {
        let mut value = value.clone();
        if let Some(steps) = value.get_mut("steps").and_then(Value::as_array_mut) {
            for step in steps {
                keep(step, &["name", "action", "compensation"]);
                for field in ["action", "compensation"] {
                    if let Some(call) = step.get_mut(field) {
                        keep(call, CALL_FIELDS);
                        if let Some(agent) = call.get_mut("agent") {
                            keep(agent, &["capability"]);
                        }
                    }
                }
            }
        }
        keep(&mut value, &["steps"]);
        serde_json::from_value(value)
    }
}

/// A [`Call`]'s fields, as serialized.
const CALL_FIELDS: &[&str] = &["method", "url", "path", "agent", "headers", "body", "async"];

/// Drops the keys of `object` not in `known`.
fn keep(object: &mut Value, known: &[&str]) {
    if let Some(map) = object.as_object_mut() {
        map.retain(|key, _| known.contains(&key.as_str()));
    }
}

impl Call {
    fn validate(&self) -> Result<(), String> {
        Method::from_bytes(self.method.as_bytes())
            .map_err(|_| format!("method: {:?} is not an HTTP method", self.method))?;
        match (&self.url, &self.path, &self.agent) {
            (Some(url), None, None) => check_url(url)?,
            (None, Some(path), _) => check_path(path)?,
            (None, None, Some(_)) => return Err("agent: needs a path".into()),
            _ => return Err("give either url, or path (with agent or not)".into()),
        }
        if self.respond_async && (self.url.is_some() || self.agent.is_some()) {
            return Err("async: only for a path on Corral".into());
        }
        if let Some(agent) = &self.agent {
            if agent.capability.trim().is_empty() {
                return Err("agent.capability: empty".into());
            }
        }
        for (name, value) in &self.headers {
            let header = HeaderName::from_bytes(name.as_bytes())
                .map_err(|_| format!("headers: {name:?} is not a header name"))?;
            if RESERVED_HEADERS.contains(&header.as_str()) {
                return Err(format!("headers.{name}: set by Corral, not by a step"));
            }
            HeaderValue::from_str(value)
                .map_err(|_| format!("headers.{name}: not a header value"))?;
        }
        Ok(())
    }
}

fn check_url(url: &str) -> Result<(), String> {
    let uri: Uri = url.parse().map_err(|e| format!("url: {e}"))?;
    if !matches!(uri.scheme_str(), Some("http" | "https")) || uri.authority().is_none() {
        return Err(format!("url: {url:?} is not an absolute http(s):// URL"));
    }
    Ok(())
}

fn check_path(path: &str) -> Result<(), String> {
    if !path.starts_with('/') {
        return Err(format!("path: {path:?} does not start with /"));
    }
    path.parse::<http::uri::PathAndQuery>()
        .map(drop)
        .map_err(|e| format!("path: {e}"))
}

/// Finds the agents a call with `{"agent": {"capability": ...}}` goes to.
pub trait Resolve: Send + Sync + 'static {
    /// The base URL (`http://host:port`) of an agent with `capability`,
    /// or why there is none.
    fn resolve<'a>(&'a self, capability: &'a str) -> BoxFuture<'a, Result<String, String>>;
}

/// No registry: every agent target fails with "no agent has capability".
#[derive(Debug, Clone, Copy, Default)]
pub struct NoAgents;

impl Resolve for NoAgents {
    fn resolve<'a>(&'a self, capability: &'a str) -> BoxFuture<'a, Result<String, String>> {
        Box::pin(async move { Err(format!("no agent has capability {capability:?}")) })
    }
}

/// Serves calls to Corral in the process itself: through its stack, as
/// an agent vouched for, so the agent's key is neither needed nor stored.
pub trait Local: Send + Sync + 'static {
    /// Answers `request` (its URI a path and query) as `agent`, whom a key
    /// proved when the saga was submitted if `authenticated`.
    fn call(
        &self,
        agent: &str,
        authenticated: bool,
        request: Request<Full<Bytes>>,
    ) -> BoxFuture<'static, http::Response<BoxBody>>;
}

/// Runs HTTP sagas: builds a [`Saga`] from a [`Definition`] whose
/// actions are calls made with a pooled HTTP/1 client.
#[derive(Clone)]
pub struct HttpSteps {
    inner: Arc<Inner>,
}

struct Inner {
    /// For targets: refuses names resolving to private addresses at
    /// connection time unless allowed.
    client: StepClient,
    /// For Corral's own address.
    corral_client: StepClient,
    corral: RwLock<String>,
    local: OnceLock<Arc<dyn Local>>,
    resolve: Arc<dyn Resolve>,
    call_timeout: Duration,
    allow_private_targets: bool,
    job_timeout: Duration,
    job_poll_interval: Duration,
}

corral_core::impl_debug!(HttpSteps {
    call_timeout: inner.call_timeout
});

/// One answer, read whole (up to [`MAX_ANSWER_BYTES`]).
struct Answer {
    status: StatusCode,
    location: Option<String>,
    body: Value,
}

impl HttpSteps {
    /// Calls `path` targets on `corral` (`http://host:port`, Corral's own
    /// address), agent targets where `resolve` says, each call within
    /// `config.call_timeout`.
    pub fn new(corral: impl Into<String>, resolve: Arc<dyn Resolve>, config: &SagaConfig) -> Self {
        let client = |allow_private| {
            Client::builder(TokioExecutor::new())
                .pool_timer(TokioTimer::new())
                .timer(TokioTimer::new())
                .build(https_or_http(config.call_timeout, allow_private))
        };
        Self {
            inner: Arc::new(Inner {
                client: client(config.allow_private_targets),
                corral_client: client(true),
                corral: RwLock::new(corral.into()),
                local: OnceLock::new(),
                resolve,
                call_timeout: config.call_timeout,
                allow_private_targets: config.allow_private_targets,
                job_timeout: config.job_timeout,
                job_poll_interval: config.job_poll_interval,
            }),
        }
    }

    /// Corral's own address changed (known once its listener is bound).
    pub fn set_corral(&self, corral: impl Into<String>) {
        *self.inner.corral.write().unwrap_or_else(|p| p.into_inner()) = corral.into();
    }

    /// Serves calls to Corral (`path` targets, async ones and the agent
    /// API's `/corral/` paths included) with `local` instead of over the
    /// network (set once; later calls are ignored).
    pub fn set_local(&self, local: Arc<dyn Local>) {
        let _ = self.inner.local.set(local);
    }

    fn corral(&self) -> String {
        self.inner
            .corral
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// The saga `id` running `definition`; its calls to Corral are made
    /// as the saga's agent ([`Saga::with_agent`]). The definition rides in
    /// its `started` entry.
    pub fn saga(&self, id: &str, definition: &Definition) -> Saga {
        let mut saga = Saga::new(id).with_definition(json!(definition));
        for step in &definition.steps {
            let action = self.action(&step.action, None);
            let compensation =
                (step.compensation.as_ref()).map(|c| self.action(c, Some(&step.action)));
            saga = saga.push(step.name.as_str(), action, compensation);
        }
        saga
    }

    /// The action (`undoes`: none) or compensation (`undoes`: its
    /// step's action) making `call`.
    fn action(&self, call: &Call, undoes: Option<&Call>) -> Arc<dyn Action> {
        // A compensation to the action's capability goes to the agent the
        // action went to (logged); to another capability, it picks its own.
        let same_agent = undoes.is_some_and(|a| a.agent.is_some() && a.agent == call.agent);
        Arc::new(HttpAction {
            steps: self.clone(),
            call: Arc::new(call.clone()),
            picks: undoes.is_none() && call.agent.is_some(),
            uses_target: undoes.is_none() || same_agent,
        })
    }

    /// Rebuilds HTTP sagas from their `started` entry, for
    /// [`Runner::resume_unfinished`](crate::Runner::resume_unfinished).
    pub fn rebuild(&self) -> Rebuild {
        let steps = self.clone();
        Arc::new(move |id: &str, log: &[Transition]| {
            let Some(Transition::Started {
                agent,
                authenticated,
                definition,
                ..
            }) = log.first()
            else {
                return Err("its log does not begin with started".into());
            };
            let definition = Definition::from_stored(definition)
                .map_err(|e| format!("its definition is unreadable: {e}"))?;
            let mut saga = steps
                .saga(id, &definition)
                .with_authenticated(*authenticated);
            if let Some(agent) = agent {
                saga = saga.with_agent(agent.as_str());
            }
            Ok(saga)
        })
    }

    /// Makes `call` with the context's key, as the saga's agent when it
    /// goes to Corral.
    async fn execute(&self, call: &Call, context: &StepContext) -> StepResult {
        let key = &context.idempotency_key;
        let (uri, on_corral) = self.target(call, context.target.as_deref()).await?;
        if !on_corral && !self.inner.allow_private_targets {
            self.refuse_private(&call.method, &uri).await?;
        }
        let via = self.via(on_corral, context);
        let mut request = match via {
            Via::Local { .. } => build(call, call.path.as_deref().unwrap_or("/"), key)?,
            Via::Network { .. } => build(call, &uri, key)?,
        };
        if let Via::Network {
            agent: Some(agent), ..
        } = via
        {
            identify(&mut request, Some(agent));
        }
        if call.respond_async && on_corral {
            let prefer = HeaderValue::from_static("respond-async");
            request.headers_mut().insert("prefer", prefer);
        }
        let answer = self.exchange(request, via).await?;
        match (&answer.location, answer.status) {
            (Some(location), StatusCode::ACCEPTED) if call.respond_async && on_corral => {
                self.await_job(location, via).await
            }
            _ => verdict(&call.method, &uri, answer.status, answer.body),
        }
    }

    /// How a call reaches its target: in process for Corral when a
    /// [`Local`] is set and the saga has an agent, else over the network.
    fn via<'a>(&'a self, on_corral: bool, context: &'a StepContext) -> Via<'a> {
        let agent = context.agent.as_deref();
        match (on_corral, self.inner.local.get(), agent) {
            (true, Some(local), Some(agent)) => Via::Local {
                local,
                agent,
                authenticated: context.authenticated,
            },
            (true, _, agent) => Via::Network {
                agent,
                corral: true,
            },
            (false, _, _) => Via::Network {
                agent: None,
                corral: false,
            },
        }
    }

    async fn exchange(
        &self,
        request: Request<Full<Bytes>>,
        via: Via<'_>,
    ) -> Result<Answer, String> {
        match via {
            Via::Local {
                local,
                agent,
                authenticated,
            } => {
                self.local(local.clone(), agent, authenticated, request)
                    .await
            }
            Via::Network { corral, .. } => self.send(request, corral).await,
        }
    }

    /// Where `call` goes, and whether that is Corral itself; an agent
    /// target goes to `picked` (logged for the step) when given.
    async fn target(&self, call: &Call, picked: Option<&str>) -> Result<(String, bool), String> {
        let path = call.path.as_deref().unwrap_or("/");
        match (&call.url, &call.agent) {
            (Some(url), _) => Ok((url.clone(), false)),
            (None, Some(agent)) => {
                let base = match picked {
                    Some(base) => base.to_string(),
                    None => self.inner.resolve.resolve(&agent.capability).await?,
                };
                Ok((join(&base, path), false))
            }
            (None, None) => Ok((join(&self.corral(), path), true)),
        }
    }

    /// Refuses `uri` when its host resolves (within the call timeout) to
    /// any private address: checked before each call, since a name may
    /// point anywhere, and a registry entry is whatever an agent wrote.
    async fn refuse_private(&self, method: &str, uri: &str) -> Result<(), String> {
        let parsed: Uri = uri.parse().map_err(|e| format!("{method} {uri}: {e}"))?;
        let host = parsed
            .host()
            .unwrap_or("")
            .trim_matches(['[', ']'])
            .to_string();
        let https = parsed.scheme_str() == Some("https");
        let port = parsed.port_u16().unwrap_or(if https { 443 } else { 80 });
        let lookup = tokio::net::lookup_host((host.as_str(), port));
        let addresses = match tokio::time::timeout(self.inner.call_timeout, lookup).await {
            Ok(Ok(addresses)) => addresses,
            Ok(Err(e)) => return Err(format!("{method} {uri}: cannot resolve {host}: {e}")),
            Err(_) => return Err(format!("{method} {uri}: {host} not resolved in time")),
        };
        for address in addresses {
            if corral_core::net::private_address(address.ip()) {
                return Err(format!(
                    "{method} {uri}: {host} is the private address {} (allow_private_targets is off)",
                    address.ip()
                ));
            }
        }
        Ok(())
    }

    async fn send(&self, request: Request<Full<Bytes>>, corral: bool) -> Result<Answer, String> {
        let what = format!("{} {}", request.method(), request.uri());
        let client = if corral {
            &self.inner.corral_client
        } else {
            &self.inner.client
        };
        let exchange = async {
            let response = client.request(request).await.map_err(|e| root(&e))?;
            read_answer(response).await
        };
        self.within(&what, exchange).await
    }

    async fn local(
        &self,
        local: Arc<dyn Local>,
        agent: &str,
        authenticated: bool,
        request: Request<Full<Bytes>>,
    ) -> Result<Answer, String> {
        let what = format!("{} {}", request.method(), request.uri());
        let exchange = async {
            let response = local.call(agent, authenticated, request).await;
            read_local(response).await
        };
        self.within(&what, exchange).await
    }

    async fn within(
        &self,
        what: &str,
        exchange: impl std::future::Future<Output = Result<Answer, String>>,
    ) -> Result<Answer, String> {
        match tokio::time::timeout(self.inner.call_timeout, exchange).await {
            Ok(answer) => answer.map_err(|e| format!("{what}: {e}")),
            Err(_) => Err(format!(
                "{what}: no answer within {:?}",
                self.inner.call_timeout
            )),
        }
    }

    /// Polls the job at `location` (on Corral) until it ends.
    async fn await_job(&self, location: &str, via: Via<'_>) -> StepResult {
        let url = match via {
            Via::Local { .. } => location.to_string(),
            Via::Network { .. } => join(&self.corral(), location),
        };
        let poll = async {
            loop {
                let mut request = Request::get(&url)
                    .body(Full::default())
                    .map_err(|e| format!("GET {url}: {e}"))?;
                if let Via::Network { agent, .. } = via {
                    identify(&mut request, agent);
                }
                let answer = self.exchange(request, via).await?;
                if !answer.status.is_success() {
                    return Err(format!("GET {url} answered {}", answer.status).into());
                }
                if let Some(result) = job_result(&url, &answer.body) {
                    return result;
                }
                tokio::time::sleep(self.inner.job_poll_interval).await;
            }
        };
        match tokio::time::timeout(self.inner.job_timeout, poll).await {
            Ok(result) => result,
            Err(_) => Err(format!("job {url} not done within {:?}", self.inner.job_timeout).into()),
        }
    }
}

/// One call of a step, as an [`Action`].
struct HttpAction {
    steps: HttpSteps,
    call: Arc<Call>,
    /// Whether it picks its agent before the step's first attempt.
    picks: bool,
    /// Whether it goes to the target logged for its step.
    uses_target: bool,
}

impl Action for HttpAction {
    fn call(&self, mut context: StepContext) -> BoxFuture<'static, StepResult> {
        if !self.uses_target {
            context.target = None;
        }
        let (steps, call) = (self.steps.clone(), self.call.clone());
        Box::pin(async move { steps.execute(&call, &context).await })
    }

    fn resolve(&self) -> BoxFuture<'static, Result<Option<String>, BoxError>> {
        let capability = match (&self.call.agent, self.picks) {
            (Some(agent), true) => agent.capability.clone(),
            _ => return Box::pin(async { Ok(None) }),
        };
        let resolve = self.steps.inner.resolve.clone();
        Box::pin(async move { Ok(Some(resolve.resolve(&capability).await?)) })
    }
}

/// How a call reaches its target.
#[derive(Clone, Copy)]
enum Via<'a> {
    /// In process, as the saga's agent.
    Local {
        local: &'a Arc<dyn Local>,
        agent: &'a str,
        authenticated: bool,
    },
    /// Over the network, naming the agent with `X-Agent-Id` to Corral
    /// (`corral`: to Corral's own address, which may be loopback).
    Network {
        agent: Option<&'a str>,
        corral: bool,
    },
}

/// The status, `Location` and body (up to [`MAX_ANSWER_BYTES`]).
async fn read_answer<B>(response: http::Response<B>) -> Result<Answer, String>
where
    B: http_body::Body<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    let status = response.status();
    let location = response
        .headers()
        .get(header::LOCATION)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let bytes = Limited::new(response.into_body(), MAX_ANSWER_BYTES)
        .collect()
        .await
        .map_err(|e| e.to_string())?
        .to_bytes();
    Ok(Answer {
        status,
        location,
        body: parse_body(&bytes),
    })
}

/// [`read_answer`] boxed: named as `Send + 'static`, the boxed error in
/// the body does not trip the `Send` check of the futures awaiting it.
fn read_local(response: http::Response<BoxBody>) -> BoxFuture<'static, Result<Answer, String>> {
    Box::pin(read_answer(response))
}

/// The request for `call` to `uri`, carrying the idempotency key.
fn build(call: &Call, uri: &str, key: &str) -> Result<Request<Full<Bytes>>, String> {
    let mut builder = Request::builder().method(call.method.as_str()).uri(uri);
    for (name, value) in &call.headers {
        builder = builder.header(name.as_str(), value.as_str());
    }
    builder = builder.header("idempotency-key", key);
    let body = match &call.body {
        Some(body) => {
            builder = builder.header(header::CONTENT_TYPE, "application/json");
            Full::new(Bytes::from(body.to_string()))
        }
        None => Full::default(),
    };
    builder
        .body(body)
        .map_err(|e| format!("{} {uri}: {e}", call.method))
}

/// A call to Corral is made as the submitting agent.
fn identify<B>(request: &mut Request<B>, agent: Option<&str>) {
    if let Some(value) = agent.and_then(|a| HeaderValue::from_str(a).ok()) {
        request.headers_mut().insert("x-agent-id", value);
    }
}

/// A job's end, once its `status` says it ended.
fn job_result(url: &str, job: &Value) -> Option<StepResult> {
    match job.get("status").and_then(Value::as_str)? {
        "done" => {
            let response = job.get("response").cloned().unwrap_or(Value::Null);
            let status = response
                .get("status")
                .and_then(Value::as_u64)
                .and_then(|s| u16::try_from(s).ok())
                .and_then(|s| StatusCode::from_u16(s).ok())
                .unwrap_or(StatusCode::OK);
            let body = response.get("body").cloned().unwrap_or(Value::Null);
            Some(verdict("job", url, status, body))
        }
        ended @ ("failed" | "cancelled") => {
            let why = job.get("error").map(excerpt).unwrap_or_default();
            Some(Err(format!("job {url} {ended} {why}")
                .trim_end()
                .to_string()
                .into()))
        }
        _ => None,
    }
}

/// Success on 2xx, with the status and body as the step's output.
fn verdict(method: &str, uri: &str, status: StatusCode, body: Value) -> StepResult {
    if status.is_success() {
        Ok(capped(json!({"status": status.as_u16(), "body": body})))
    } else {
        Err(format!("{method} {uri} answered {status}: {}", excerpt(&body)).into())
    }
}

/// `output` as logged: a body past [`MAX_OUTPUT_BYTES`] is replaced by
/// its text cut to that size, and the output marked truncated (the log
/// is read between steps: it must stay small).
fn capped(mut output: Value) -> Value {
    let text = output["body"].to_string();
    if text.len() <= MAX_OUTPUT_BYTES {
        return output;
    }
    let mut end = MAX_OUTPUT_BYTES;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    output["body"] = Value::String(text[..end].to_string());
    output["truncated"] = Value::Bool(true);
    output
}

/// The connector for steps' calls: `https://` with the system's roots
/// (registry endpoints and URLs may be https), and `http://`.
fn https_or_http(
    connect_timeout: Duration,
    allow_private: bool,
) -> HttpsConnector<HttpConnector<Checked>> {
    let mut http = HttpConnector::new_with_resolver(Checked {
        gai: GaiResolver::new(),
        allow_private,
    });
    http.set_nodelay(true);
    http.set_connect_timeout(Some(connect_timeout));
    http.enforce_http(false);
    let builder = hyper_rustls::HttpsConnectorBuilder::new();
    match builder.with_native_roots() {
        Ok(builder) => builder.https_or_http().enable_http1().wrap_connector(http),
        Err(error) => {
            // No system roots: https calls fail on the certificate, http works.
            tracing::warn!(%error, "no native TLS roots: https saga steps will fail");
            let tls = rustls::ClientConfig::builder()
                .with_root_certificates(rustls::RootCertStore::empty())
                .with_no_client_auth();
            hyper_rustls::HttpsConnectorBuilder::new()
                .with_tls_config(tls)
                .https_or_http()
                .enable_http1()
                .wrap_connector(http)
        }
    }
}

/// The client of steps' calls.
type StepClient = Client<HttpsConnector<HttpConnector<Checked>>, Full<Bytes>>;

/// The system's resolver, refusing a name that resolves to a private
/// address unless allowed: checked again when connecting, so a name
/// that changed since [`HttpSteps`]'s check (DNS rebinding) is caught.
/// (IP literals skip the resolver: they are checked before the call.)
#[derive(Clone)]
struct Checked {
    gai: GaiResolver,
    allow_private: bool,
}

impl tower::Service<Name> for Checked {
    type Response = std::vec::IntoIter<SocketAddr>;
    type Error = std::io::Error;
    type Future = BoxFuture<'static, Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.gai.poll_ready(cx)
    }

    fn call(&mut self, name: Name) -> Self::Future {
        let (allow_private, host) = (self.allow_private, name.to_string());
        let resolving = self.gai.call(name);
        Box::pin(async move {
            let addresses: Vec<SocketAddr> = resolving.await?.collect();
            let private = addresses
                .iter()
                .find(|a| corral_core::net::private_address(a.ip()));
            match private {
                Some(address) if !allow_private => Err(std::io::Error::new(
                    std::io::ErrorKind::PermissionDenied,
                    format!(
                        "{host} is the private address {} (allow_private_targets is off)",
                        address.ip()
                    ),
                )),
                _ => Ok(addresses.into_iter()),
            }
        })
    }
}

/// A new saga id from the OS's generator, shaped as a UUID v4.
pub fn new_saga_id() -> String {
    corral_core::secret_uuid()
}

fn parse_body(bytes: &[u8]) -> Value {
    if bytes.is_empty() {
        return Value::Null;
    }
    serde_json::from_slice(bytes)
        .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(bytes).into_owned()))
}

fn excerpt(body: &Value) -> String {
    let text = match body {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    text.chars().take(MAX_REASON_CHARS).collect()
}

fn join(base: &str, path: &str) -> String {
    format!("{}{path}", base.trim_end_matches('/'))
}

fn root(err: &(dyn std::error::Error + 'static)) -> String {
    let mut current = err;
    while let Some(next) = current.source() {
        current = next;
    }
    current.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn call(json: Value) -> Result<(), String> {
        let call: Call = serde_json::from_value(json).map_err(|e| e.to_string())?;
        call.validate()
    }

    #[test]
    fn calls_are_checked_field_by_field() {
        let table = [
            (json!({"url": "http://a:1/x"}), None),
            (json!({"path": "/api/chat", "async": true}), None),
            (
                json!({"agent": {"capability": "mail"}, "path": "/send"}),
                None,
            ),
            (json!({"url": "https://a/x"}), None),
            (json!({"url": "ftp://a/x"}), Some("url")),
            (
                json!({"path": "/x", "headers": {"Authorization": "Bearer k"}}),
                Some("headers.Authorization: set by Corral"),
            ),
            (
                json!({"path": "/x", "headers": {"idempotency-key": "k"}}),
                Some("set by Corral"),
            ),
            (json!({"url": "/x"}), Some("url")),
            (json!({"path": "x"}), Some("path")),
            (json!({}), Some("either url")),
            (
                json!({"url": "http://a/", "path": "/x"}),
                Some("either url"),
            ),
            (json!({"agent": {"capability": "m"}}), Some("needs a path")),
            (json!({"url": "http://a/", "async": true}), Some("async")),
            (json!({"path": "/x", "method": "GE T"}), Some("method")),
            (
                json!({"path": "/x", "headers": {"a b": "c"}}),
                Some("headers"),
            ),
            (json!({"path": "/x", "bogus": 1}), Some("unknown field")),
        ];
        for (json, expected) in table {
            let result = call(json.clone());
            match expected {
                None => assert_eq!(result, Ok(()), "{json}"),
                Some(part) => assert!(
                    result.as_ref().is_err_and(|e| e.contains(part)),
                    "{json}: {result:?}"
                ),
            }
        }
    }

    #[test]
    fn definitions_name_the_step_at_fault() {
        let step = |name: &str| StepDefinition {
            name: name.into(),
            action: serde_json::from_value(json!({"path": "/x"})).unwrap(),
            compensation: None,
        };
        let empty = Definition { steps: vec![] };
        assert!(empty.validate(4).unwrap_err().contains("at least one"));
        let twice = Definition {
            steps: vec![step("a"), step("a")],
        };
        assert!(twice.validate(4).unwrap_err().starts_with("steps[1].name"));
        let long = Definition {
            steps: vec![step("a"), step("b"), step("c")],
        };
        assert!(long.validate(2).unwrap_err().contains("at most 2"));
    }

    #[test]
    fn a_literal_private_url_is_refused_naming_the_step_and_field() {
        let definition: Definition = serde_json::from_value(json!({"steps": [
            {"name": "a", "action": {"url": "http://inventory.example/x"}},
            {"name": "b", "action": {"path": "/x"}, "compensation": {"url": "http://169.254.169.254/latest"}}
        ]}))
        .unwrap();
        let refused = definition.refuse_private().unwrap_err();
        assert!(
            refused.starts_with("steps[1].compensation.url: 169.254.169.254"),
            "{refused}"
        );
        let public: Definition = serde_json::from_value(
            json!({"steps": [{"name": "a", "action": {"url": "https://[2606:4700::1111]/x"}}]}),
        )
        .unwrap();
        assert_eq!(public.refuse_private(), Ok(()));
    }

    #[test]
    fn a_stored_definition_with_fields_this_version_does_not_know_is_read() {
        let stored = json!({"steps": [{"name": "a", "retries": 3,
            "action": {"path": "/x", "timeout": "5s", "agent": {"capability": "m", "zone": "eu"}}}],
            "labels": {}});
        assert!(
            serde_json::from_value::<Definition>(stored.clone()).is_err(),
            "submissions stay strict"
        );
        let read = Definition::from_stored(&stored).unwrap();
        assert_eq!(read.steps[0].action.agent.as_ref().unwrap().capability, "m");
    }

    #[test]
    fn a_large_output_is_cut_and_marked_truncated() {
        let small = json!({"status": 200, "body": {"ok": true}});
        assert_eq!(capped(small.clone()), small);
        let big = capped(json!({"status": 200, "body": "é".repeat(MAX_OUTPUT_BYTES)}));
        assert_eq!(big["truncated"], true);
        assert!(big["body"].as_str().unwrap().len() <= MAX_OUTPUT_BYTES);
        assert_eq!(big["status"], 200);
    }

    #[tokio::test]
    async fn the_connection_resolver_refuses_a_name_of_a_private_address_unless_allowed() {
        use std::str::FromStr;
        use tower::ServiceExt;
        let resolve = |allow_private| {
            let checked = Checked {
                gai: GaiResolver::new(),
                allow_private,
            };
            checked.oneshot(Name::from_str("localhost").unwrap())
        };
        let refused = resolve(false).await.unwrap_err();
        assert_eq!(refused.kind(), std::io::ErrorKind::PermissionDenied);
        assert!(refused.to_string().contains("private address"), "{refused}");
        assert!(resolve(true).await.unwrap().next().is_some());
    }

    #[test]
    fn saga_ids_are_uuid_v4_shaped_and_differ() {
        let (a, b) = (new_saga_id(), new_saga_id());
        assert_ne!(a, b);
        assert_eq!(a.len(), 36);
        assert_eq!(&a[14..15], "4");
    }

    #[test]
    fn jobs_end_on_done_failed_or_cancelled() {
        let url = "http://c/corral/jobs/1";
        assert!(job_result(url, &json!({"status": "running"})).is_none());
        let done = json!({"status": "done", "response": {"status": 200, "body": {"ok": true}}});
        assert_eq!(
            job_result(url, &done).unwrap().unwrap(),
            json!({"status": 200, "body": {"ok": true}})
        );
        let refused = json!({"status": "done", "response": {"status": 503, "body": "busy"}});
        assert!(job_result(url, &refused).unwrap().is_err());
        assert!(job_result(url, &json!({"status": "failed", "error": "x"}))
            .unwrap()
            .is_err());
    }
}
