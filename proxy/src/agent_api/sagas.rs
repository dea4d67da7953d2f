//! `/corral/sagas`: steps with their compensations, run by any replica.
//!
//! `POST /corral/sagas` with a [`corral_saga::Definition`] starts a saga
//! (`202`, `Location: /corral/sagas/{id}`); `GET /corral/sagas/{id}` tells
//! its status and each step's state and output; `DELETE` asks it to stop
//! and compensate what it did. Only the agent that submitted a saga sees
//! it (others get `404`, so ids do not leak). With `[state] backend =
//! "redis"` the log is in Redis and every replica resumes the sagas whose
//! runner died; without, sagas live in this process and die with it.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::{Arc, OnceLock};

use bytes::Bytes;
use corral_classify::{Caller, Vouched};
use corral_core::{AgentId, Body, BoxBody, EventSink};
use corral_saga::{
    status, step_states, BoxFuture, Definition, HttpSteps, Local, MemoryLog, RedisLog, Resolve,
    Runner, SagaError, SagaLog, SagaStatus, Transition,
};
use http::{header, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use serde_json::{json, Value};

use crate::admin::json_response;
use crate::config::Config;
use crate::front::Proxying;
use crate::stack::Stack;

use super::registry::RegistryApi;
use super::WeakAgentApi;

/// The largest saga definition accepted.
const MAX_DEFINITION_BYTES: usize = 1 << 20;

/// The sagas' endpoints.
#[derive(Clone)]
pub(crate) struct SagasApi {
    shared: Arc<Shared>,
}

struct Shared {
    runner: Runner,
    steps: HttpSteps,
    max_steps: usize,
    allow_private_targets: bool,
}

impl SagasApi {
    /// The endpoints; with Redis, also the task that resumes sagas whose
    /// runner died (when built inside a runtime).
    pub(crate) fn new(
        stack: &Stack,
        config: &Config,
        registry: &RegistryApi,
        agents: Arc<OnceLock<WeakAgentApi>>,
    ) -> Self {
        let sagas = &config.sagas;
        let log: Arc<dyn SagaLog> = match stack.state() {
            Some(state) => Arc::new(RedisLog::new(state.clone(), sagas.retention)),
            None => Arc::new(MemoryLog::new()),
        };
        // Unique per process: a restarted replica waits for its former
        // self's leases to lapse like any other replica.
        let owner = format!("{}-{:08x}", stack.replica(), fastrand::u32(..));
        let events = stack.events().clone() as Arc<dyn EventSink>;
        let runner = Runner::new(log, owner, sagas.clone()).with_events(events);
        let found = Arc::new(FromRegistry(registry.registry().clone()));
        let steps = HttpSteps::new(corral_base(config.server.listen), found, sagas);
        steps.set_local(Arc::new(ThroughStack {
            proxying: Proxying::new(stack),
            agents,
        }));
        if stack.state().is_some() && tokio::runtime::Handle::try_current().is_ok() {
            runner.spawn_resumer(steps.rebuild());
        }
        Self {
            shared: Arc::new(Shared {
                runner,
                steps,
                max_steps: sagas.max_steps,
                allow_private_targets: sagas.allow_private_targets,
            }),
        }
    }

    /// The address the proxy listens on, once bound: `path` steps run in
    /// process as the saga's agent, so this is used only by a saga
    /// without an agent (until then, `server.listen`, wrong only when its
    /// port is 0).
    pub(crate) fn set_local_address(&self, address: SocketAddr) {
        self.shared.steps.set_corral(corral_base(address));
    }

    pub(crate) async fn handle(
        &self,
        request: Request<Body>,
        caller: Caller,
        _peer: SocketAddr,
    ) -> Response<BoxBody> {
        let rest = request
            .uri()
            .path()
            .strip_prefix("/corral/sagas")
            .unwrap_or("");
        let id = rest.strip_prefix('/').filter(|id| !id.is_empty());
        match (request.method().clone(), id) {
            (Method::POST, None) => self.submit(request, &caller).await,
            (_, None) => not_allowed("POST"),
            (_, Some(id)) if !is_id(id) => no_saga(id),
            (Method::GET | Method::HEAD, Some(id)) => self.show(id, &caller).await,
            (Method::DELETE, Some(id)) => self.cancel(id, &caller).await,
            (_, Some(_)) => not_allowed("GET, DELETE"),
        }
    }

    async fn submit(&self, request: Request<Body>, caller: &Caller) -> Response<BoxBody> {
        let shared = &self.shared;
        let read = read_definition(request, shared.max_steps, shared.allow_private_targets);
        let definition = match read.await {
            Ok(definition) => definition,
            Err(message) => return super::refuse(StatusCode::BAD_REQUEST, message),
        };
        let id = corral_saga::new_saga_id();
        let agent = caller.agent.as_ref();
        let saga = (self.shared.steps.saga(&id, &definition))
            .with_agent(agent)
            .with_authenticated(caller.authenticated);
        if let Err(error) = self.shared.runner.start(&saga).await {
            return unavailable(&error);
        }
        let runner = self.shared.runner.clone();
        tokio::spawn(async move {
            if let Err(error) = runner.drive(&saga).await {
                tracing::warn!(saga = saga.id(), %error, "saga interrupted; it will be resumed");
            }
        });
        tracing::debug!(saga = %id, %agent, steps = definition.steps.len(), "saga submitted");
        let mut response = json_response(
            StatusCode::ACCEPTED,
            &json!({"id": id, "status": SagaStatus::Running}),
        );
        if let Ok(location) = HeaderValue::from_str(&format!("/corral/sagas/{id}")) {
            response.headers_mut().insert(header::LOCATION, location);
        }
        response
    }

    async fn show(&self, id: &str, caller: &Caller) -> Response<BoxBody> {
        match self.read_own(id, caller).await {
            Ok(log) => json_response(StatusCode::OK, &view(id, &log)),
            Err(response) => response,
        }
    }

    async fn cancel(&self, id: &str, caller: &Caller) -> Response<BoxBody> {
        if let Err(response) = self.read_own(id, caller).await {
            return response;
        }
        let reason = format!("cancelled by {}", caller.agent);
        match self.shared.runner.cancel(id, &reason).await {
            Ok(Some(SagaStatus::Compensating)) => json_response(
                StatusCode::ACCEPTED,
                &json!({"id": id, "status": SagaStatus::Compensating}),
            ),
            Ok(Some(over)) => super::refuse(
                StatusCode::CONFLICT,
                format!("saga {id} is already over: {}", status_name(over)),
            ),
            Ok(None) => no_saga(id),
            Err(error) => unavailable(&error),
        }
    }

    /// Saga `id`'s log, if `caller` submitted it; else the answer.
    async fn read_own(
        &self,
        id: &str,
        caller: &Caller,
    ) -> Result<Vec<Transition>, Response<BoxBody>> {
        let log = self
            .shared
            .runner
            .log()
            .read(id)
            .await
            .map_err(|e| unavailable(&SagaError::Log(e)))?;
        match log.first() {
            Some(Transition::Started {
                agent: Some(agent), ..
            }) if agent.as_str() == caller.agent.as_ref() => Ok(log),
            _ => Err(no_saga(id)),
        }
    }
}

/// Calls to Corral served in this process as the submitting agent
/// vouched for (no key needed, none stored): the agent API's paths and
/// async calls by the agent API, the rest through the stack.
struct ThroughStack {
    proxying: Proxying,
    agents: Arc<OnceLock<WeakAgentApi>>,
}

/// Where a step's request comes from, for the stack.
const STEP_PEER: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 0);

impl Local for ThroughStack {
    fn call(
        &self,
        agent: &str,
        authenticated: bool,
        mut request: Request<Full<Bytes>>,
    ) -> BoxFuture<'static, Response<BoxBody>> {
        request.extensions_mut().insert(Vouched {
            agent: AgentId::from(agent),
            authenticated,
        });
        let agents = self.agents.get().and_then(WeakAgentApi::upgrade);
        let proxying = self.proxying.clone();
        Box::pin(async move {
            match agents
                .as_ref()
                .and_then(|a| a.route(&request).map(|r| (a, r)))
            {
                Some((agents, route)) => agents.handle(route, request, STEP_PEER).await,
                None => proxying.serve(request, STEP_PEER).await,
            }
        })
    }
}

/// Agent targets found in the registry: one of the live agents with the
/// capability, at random, so steps spread over them (picked once per
/// step and logged: a re-run and the compensation go to the same one).
struct FromRegistry(corral_registry::Registry);

impl Resolve for FromRegistry {
    fn resolve<'a>(&'a self, capability: &'a str) -> BoxFuture<'a, Result<String, String>> {
        Box::pin(async move {
            let live = (self.0.try_find(Some(capability)).await)
                .map_err(|e| format!("registry unavailable: {e}"))?;
            if live.is_empty() {
                return Err(format!(
                    "no live agent in the registry has capability {capability:?}"
                ));
            }
            Ok(live[fastrand::usize(..live.len())].endpoint.clone())
        })
    }
}

/// The body as a definition, checked, or what is wrong with it.
async fn read_definition(
    request: Request<Body>,
    max_steps: usize,
    allow_private_targets: bool,
) -> Result<Definition, String> {
    let body = http_body_util::Limited::new(request.into_body(), MAX_DEFINITION_BYTES)
        .collect()
        .await
        .map_err(|e| format!("cannot read the saga definition: {e}"))?
        .to_bytes();
    let definition: Definition =
        serde_json::from_slice(&body).map_err(|e| format!("invalid saga definition: {e}"))?;
    definition
        .validate(max_steps)
        .map_err(|e| format!("invalid saga definition: {e}"))?;
    if !allow_private_targets {
        definition
            .refuse_private()
            .map_err(|e| format!("invalid saga definition: {e}"))?;
    }
    Ok(definition)
}

/// What `GET` answers: the status, and each step's state and output.
fn view(id: &str, log: &[Transition]) -> Value {
    let names = match log.first() {
        Some(Transition::Started { steps, .. }) => steps.as_slice(),
        _ => &[],
    };
    let steps: Vec<Value> = names
        .iter()
        .zip(step_states(log, names.len()))
        .map(|(name, state)| {
            json!({
                "name": name,
                "state": state.action,
                "compensation": state.compensation,
                "output": state.output,
                "error": state.error,
            })
        })
        .collect();
    let mut view = json!({"id": id, "status": status(log), "steps": steps});
    if let Some(reason) = log.iter().find_map(|t| match t {
        Transition::Cancelled { reason } => Some(reason),
        _ => None,
    }) {
        view["cancelled"] = json!(reason);
    }
    view
}

fn status_name(status: SagaStatus) -> String {
    serde_json::to_value(status)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_default()
}

fn is_id(id: &str) -> bool {
    id.len() <= 64 && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
}

fn no_saga(id: &str) -> Response<BoxBody> {
    super::refuse(StatusCode::NOT_FOUND, format!("no saga {id}"))
}

fn not_allowed(allow: &'static str) -> Response<BoxBody> {
    let mut response = super::refuse(StatusCode::METHOD_NOT_ALLOWED, "method not allowed");
    response
        .headers_mut()
        .insert(header::ALLOW, HeaderValue::from_static(allow));
    response
}

fn unavailable(error: &SagaError) -> Response<BoxBody> {
    if *error == SagaError::Full {
        // Not a fault: room comes back as sagas end.
        tracing::debug!(%error, "saga refused");
        let mut response = super::refuse(StatusCode::SERVICE_UNAVAILABLE, error.to_string());
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        return response;
    }
    tracing::warn!(%error, "saga request failed");
    super::refuse(StatusCode::SERVICE_UNAVAILABLE, error.to_string())
}

/// `http://address`, with an unspecified IP (`0.0.0.0`, `::`) made the
/// loopback: where this process answers.
fn corral_base(address: SocketAddr) -> String {
    let ip = match address.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(ip) if ip.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
        ip => ip,
    };
    format!("http://{}", SocketAddr::new(ip, address.port()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn steps_go_to_where_this_process_answers() {
        assert_eq!(
            corral_base("0.0.0.0:11435".parse().unwrap()),
            "http://127.0.0.1:11435"
        );
        assert_eq!(corral_base("[::]:80".parse().unwrap()), "http://[::1]:80");
        assert_eq!(
            corral_base("10.0.0.2:1".parse().unwrap()),
            "http://10.0.0.2:1"
        );
    }

    #[test]
    fn ids_are_checked_before_any_lookup() {
        assert!(is_id(&corral_saga::new_saga_id()));
        assert!(!is_id("a/b"));
        assert!(!is_id(&"a".repeat(65)));
    }
}
