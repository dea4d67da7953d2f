//! `/corral/registry`: agents announce themselves; others find them.
//!
//! | call | answer |
//! | --- | --- |
//! | `PUT /corral/registry/{agent}` | 201 and the entry when it joins, 200 when it renews |
//! | `POST /corral/registry/{agent}/heartbeat` | 200 and the entry, 404 when not listed |
//! | `DELETE /corral/registry/{agent}` | 204 |
//! | `GET /corral/registry/{agent}` | 200 and the entry, 404 when not listed |
//! | `GET /corral/registry?capability=X` | 200 and `{"agents": [...]}` |
//!
//! An agent changes only its own entry (403 otherwise), never as the
//! shared `anonymous` agent, and with its API key when `[registry]
//! require_key` is on (by default, when any agent has a key); any caller
//! reads. Each entry says whether a key proved its agent
//! (`authenticated`).

use std::sync::Arc;
use std::time::Duration;

use corral_classify::Caller;
use corral_core::{Body, BoxBody, EventSink, NewEvent};
use corral_events::EventStore;
use corral_registry::{Entry, Registry, RegistryError};
use http::{header, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::BodyExt;
use serde_json::json;

use crate::admin::json_response;
use crate::config::Config;
use crate::stack::Stack;

/// The most bytes of a `PUT` body: an entry's limits (metadata 16 KiB)
/// with room for its lists.
const MAX_BODY_BYTES: usize = 64 * 1024;

/// The registry's endpoints.
#[derive(Clone)]
pub(crate) struct RegistryApi {
    registry: Registry,
    /// Writes need the agent's API key (`[registry] require_key`, as
    /// resolved against `[[agents]]`).
    require_key: bool,
}

/// What a `PUT` carries; the times are the registry's.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Announce {
    #[serde(default)]
    capabilities: Vec<String>,
    #[serde(default)]
    models: Vec<String>,
    endpoint: String,
    ttl_secs: Option<f64>,
    metadata: Option<serde_json::Value>,
}

/// Which registry path a request is for.
#[derive(Debug, PartialEq, Eq)]
enum Target {
    /// `/corral/registry`.
    All,
    /// `/corral/registry/{agent}`.
    Agent(String),
    /// `/corral/registry/{agent}/heartbeat`.
    Heartbeat(String),
}

/// The event log, as the registry records into it.
struct Events(Arc<dyn EventStore>);

impl EventSink for Events {
    fn record(&self, event: NewEvent) {
        self.0.record(event);
    }
}

impl RegistryApi {
    pub(crate) fn new(stack: &Stack, config: &Config) -> Self {
        let events: Arc<dyn EventSink> = Arc::new(Events(stack.events().clone()));
        let state = stack.state().cloned();
        let registry = Registry::new(config.registry.clone(), state.clone(), events.clone())
            .unwrap_or_else(|error| {
                // Config::validate refuses this at load; a config built
                // in code may not have been through it.
                tracing::error!(%error, "[registry] refused: the registry runs with its defaults");
                Registry::with_defaults(state, events)
            });
        if tokio::runtime::Handle::try_current().is_ok() {
            registry.spawn_sweeper();
        } else {
            tracing::warn!("no runtime: registry expiries are not swept (no events, no gauge)");
        }
        let require_key = require_key(config);
        Self {
            registry,
            require_key,
        }
    }

    /// The registry, for the sagas' lookups by capability.
    pub(crate) fn registry(&self) -> &Registry {
        &self.registry
    }

    pub(crate) async fn handle(&self, request: Request<Body>, caller: Caller) -> Response<BoxBody> {
        self.answer(request, caller)
            .await
            .unwrap_or_else(Refused::answer)
    }

    async fn answer(
        &self,
        request: Request<Body>,
        caller: Caller,
    ) -> Result<Response<BoxBody>, Refused> {
        let target = Target::parse(request.uri().path())?;
        let method = request.method().clone();
        match (target, method) {
            (Target::All, Method::GET) => self.list(request.uri().query()).await,
            (Target::Agent(agent), Method::GET) => self.show(&agent).await,
            (Target::Agent(agent), Method::PUT) => {
                self.writer(&caller, &agent)?;
                self.put(agent, caller.authenticated, request).await
            }
            (Target::Agent(agent), Method::DELETE) => {
                self.writer(&caller, &agent)?;
                self.delete(&agent).await
            }
            (Target::Heartbeat(agent), Method::POST) => {
                self.writer(&caller, &agent)?;
                self.heartbeat(&agent).await
            }
            (Target::All, _) => Ok(not_allowed("GET")),
            (Target::Agent(_), _) => Ok(not_allowed("GET, PUT, DELETE")),
            (Target::Heartbeat(_), _) => Ok(not_allowed("POST")),
        }
    }

    /// Whether `caller` may change `agent`'s entry: not as `anonymous`
    /// (every keyless caller without `X-Agent-Id` shares it, so any of
    /// them could replace the others' endpoint), with a key when one is
    /// required, and only its own.
    fn writer(&self, caller: &Caller, agent: &str) -> Result<(), Refused> {
        let forbidden = |message: String| Refused {
            status: StatusCode::FORBIDDEN,
            message,
        };
        if caller.agent.as_str() == ANONYMOUS && !caller.authenticated {
            return Err(forbidden(format!(
                "the shared {ANONYMOUS:?} agent may not change the registry: send X-Agent-Id (or the agent's API key) to name the agent"
            )));
        }
        if self.require_key && !caller.authenticated {
            return Err(forbidden(format!(
                "changing {agent:?}'s registry entry needs the agent's API key ([registry] require_key): X-Agent-Id alone is a claim anyone can make"
            )));
        }
        owner(caller, agent)
    }

    async fn list(&self, query: Option<&str>) -> Result<Response<BoxBody>, Refused> {
        let capability = capability(query)?;
        let agents = self.registry.try_find(capability.as_deref()).await?;
        Ok(json_response(StatusCode::OK, &json!({ "agents": agents })))
    }

    async fn show(&self, agent: &str) -> Result<Response<BoxBody>, Refused> {
        match self.registry.get(agent).await? {
            Some(entry) => Ok(entry_response(StatusCode::OK, &entry)),
            None => Err(not_listed(agent)),
        }
    }

    async fn put(
        &self,
        agent: String,
        authenticated: bool,
        request: Request<Body>,
    ) -> Result<Response<BoxBody>, Refused> {
        let announce = read_announce(request).await?;
        let ttl = match announce.ttl_secs {
            None => self.registry.config().default_ttl,
            Some(secs) => Duration::try_from_secs_f64(secs).map_err(|_| {
                Refused::bad(format!(
                    "ttl_secs must be a number of seconds above 0, not {secs}"
                ))
            })?,
        };
        let mut entry = Entry::new(agent, announce.endpoint, ttl)
            .with_capabilities(announce.capabilities)
            .with_models(announce.models)
            .with_authenticated(authenticated);
        entry.metadata = announce.metadata;
        let put = self.registry.put(entry).await?;
        let status = if put.joined() {
            StatusCode::CREATED
        } else {
            StatusCode::OK
        };
        Ok(entry_response(status, put.entry()))
    }

    async fn heartbeat(&self, agent: &str) -> Result<Response<BoxBody>, Refused> {
        match self.registry.heartbeat(agent).await? {
            Some(entry) => Ok(entry_response(StatusCode::OK, &entry)),
            None => Err(not_listed(agent)),
        }
    }

    async fn delete(&self, agent: &str) -> Result<Response<BoxBody>, Refused> {
        self.registry.remove(agent).await?;
        let mut response = Response::new(corral_core::empty());
        *response.status_mut() = StatusCode::NO_CONTENT;
        Ok(response)
    }
}

/// A refusal, answered in Ollama's error shape at the top of `handle`.
#[derive(Debug)]
struct Refused {
    status: StatusCode,
    message: String,
}

impl Refused {
    fn bad(message: String) -> Self {
        Self {
            status: StatusCode::BAD_REQUEST,
            message,
        }
    }

    fn answer(self) -> Response<BoxBody> {
        super::refuse(self.status, self.message)
    }
}

impl From<RegistryError> for Refused {
    fn from(error: RegistryError) -> Self {
        let status = match error {
            RegistryError::Invalid(_) => StatusCode::BAD_REQUEST,
            RegistryError::Full { .. } | RegistryError::Unavailable(_) => {
                StatusCode::SERVICE_UNAVAILABLE
            }
        };
        Self {
            status,
            message: error.to_string(),
        }
    }
}

impl Target {
    /// The target of `path` (under `/corral/registry`).
    fn parse(path: &str) -> Result<Self, Refused> {
        let rest = path.strip_prefix("/corral/registry").unwrap_or(path);
        let segments: Vec<&str> = rest.split('/').filter(|s| !s.is_empty()).collect();
        let no_such = || {
            Refused {
            status: StatusCode::NOT_FOUND,
            message: format!("no registry path {path:?}: use /corral/registry, /corral/registry/{{agent}} or /corral/registry/{{agent}}/heartbeat"),
        }
        };
        let agent = |segment: &str| percent_decode(segment).ok_or_else(no_such);
        match segments.as_slice() {
            [] => Ok(Target::All),
            [name] => Ok(Target::Agent(agent(name)?)),
            [name, "heartbeat"] => Ok(Target::Heartbeat(agent(name)?)),
            _ => Err(no_such()),
        }
    }
}

/// The agent a caller is without a key or `X-Agent-Id`.
const ANONYMOUS: &str = "anonymous";

/// `[registry] require_key`, or, unset, whether any `[[agents]]` entry
/// has a key: once keys are in use, a name without one proves nothing.
fn require_key(config: &Config) -> bool {
    config.registry.require_key.unwrap_or_else(|| {
        config.agents.iter().any(|agent| {
            agent.key.is_some()
                || agent.key_sha256.is_some()
                || agent.key_env.is_some()
                || agent.key_file.is_some()
        })
    })
}

/// Only the agent itself changes its entry: another could hijack its
/// endpoint.
fn owner(caller: &Caller, agent: &str) -> Result<(), Refused> {
    if caller.agent.as_str() == agent {
        return Ok(());
    }
    Err(Refused {
        status: StatusCode::FORBIDDEN,
        message: format!(
            "agent {:?} may only change its own registry entry, not {agent:?}",
            caller.agent.as_str()
        ),
    })
}

/// The `capability` of `?capability=X`, if any.
fn capability(query: Option<&str>) -> Result<Option<String>, Refused> {
    let mut capability = None;
    for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        match (key, percent_decode(&value.replace('+', " "))) {
            ("capability", Some(value)) => capability = Some(value),
            _ => {
                return Err(Refused::bad(format!(
                    "unknown or malformed parameter {pair:?}: use capability=NAME"
                )))
            }
        }
    }
    Ok(capability)
}

async fn read_announce(request: Request<Body>) -> Result<Announce, Refused> {
    let body = http_body_util::Limited::new(request.into_body(), MAX_BODY_BYTES)
        .collect()
        .await
        .map_err(|e| {
            Refused::bad(format!(
                "cannot read the body (at most {MAX_BODY_BYTES} bytes): {e}"
            ))
        })?
        .to_bytes();
    serde_json::from_slice(&body).map_err(|e| {
        Refused::bad(format!(
            "expected {{\"endpoint\": \"http://...\", \"capabilities\": [...], \"models\": [...], \"ttl_secs\": 30, \"metadata\": {{...}}}}: {e}"
        ))
    })
}

/// `%XX` escapes decoded; `None` when they do not make UTF-8.
fn percent_decode(value: &str) -> Option<String> {
    let bytes = value.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let escaped = (bytes[i] == b'%')
            .then(|| bytes.get(i + 1..i + 3))
            .flatten()
            .and_then(|hex| u8::from_str_radix(std::str::from_utf8(hex).ok()?, 16).ok());
        match escaped {
            Some(byte) => {
                out.push(byte);
                i += 3;
            }
            None => {
                out.push(bytes[i]);
                i += 1;
            }
        }
    }
    String::from_utf8(out).ok()
}

fn entry_response(status: StatusCode, entry: &Entry) -> Response<BoxBody> {
    json_response(status, &json!(entry))
}

fn not_listed(agent: &str) -> Refused {
    Refused {
        status: StatusCode::NOT_FOUND,
        message: format!("agent {agent:?} is not in the registry (never joined, left or expired): PUT its entry again"),
    }
}

fn not_allowed(allow: &'static str) -> Response<BoxBody> {
    let mut response = super::refuse(
        StatusCode::METHOD_NOT_ALLOWED,
        format!("this registry path answers {allow}"),
    );
    response
        .headers_mut()
        .insert(header::ALLOW, HeaderValue::from_static(allow));
    response
}

#[cfg(test)]
#[path = "registry_tests.rs"]
mod tests;
