//! Corral's own endpoints for agents, beside the Ollama API it proxies:
//! `/corral/jobs` (requests answered later, and any inference call sent
//! with `Prefer: respond-async`), `/corral/registry` (which agents are
//! alive and what they can do) and `/corral/sagas` (steps with their
//! compensations).
//!
//! Unlike the admin API they answer agents, identified by their API key
//! or `X-Agent-Id` exactly as a proxied request is ([`Caller`]); what one
//! agent starts, only it can read or cancel.

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use corral_classify::{Caller, ClassifyLayer, Vouched};
use corral_core::{ApiFamily, Body, BoxBody, BoxError, Endpoint, ErrorBody};
use http::{Request, Response, StatusCode};
use http_body_util::BodyExt;

use crate::config::Config;
use crate::front::Proxying;
use crate::respond;
use crate::stack::Stack;

mod callback;
pub(crate) mod jobs;
mod registry;
mod runner;
mod sagas;

/// The agent-facing endpoints.
#[derive(Clone)]
pub struct AgentApi {
    shared: Arc<Shared>,
}

struct Shared {
    /// What a reload replaces: who the callers are, the signatures'
    /// checker, the refusals' answers.
    live: arc_swap::ArcSwap<Live>,
    max_body: usize,
    jobs: jobs::JobsApi,
    registry: registry::RegistryApi,
    sagas: sagas::SagasApi,
}

/// The parts of the stack the endpoints read, as the last reload built
/// them.
struct Live {
    classify: ClassifyLayer,
    controls: Arc<crate::svc::Controls>,
    refusals: Vec<corral_core::RefusalCast>,
}

impl Live {
    fn of(stack: &Stack) -> Self {
        Self {
            classify: stack.classify().clone(),
            controls: stack.controls().clone(),
            refusals: stack.refusals().to_vec(),
        }
    }
}

corral_core::impl_debug!(AgentApi {});

/// The endpoints, held without keeping them alive.
#[derive(Clone)]
pub(crate) struct WeakAgentApi(std::sync::Weak<Shared>);

impl WeakAgentApi {
    pub(crate) fn upgrade(&self) -> Option<AgentApi> {
        self.0.upgrade().map(|shared| AgentApi { shared })
    }
}

/// Which of the agent endpoints a request is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Route {
    /// `/corral/jobs...`.
    Jobs,
    /// An inference call with `Prefer: respond-async`: a job.
    AsyncCall,
    /// `/corral/registry...`.
    Registry,
    /// `/corral/sagas...`.
    Sagas,
}

impl AgentApi {
    /// The endpoints for `stack`, as `config` sets them up.
    pub fn new(stack: &Stack, config: &Config) -> Self {
        Self::through(stack, config, Proxying::new(stack))
    }

    /// [`AgentApi::new`], its jobs sent the way the proxied requests go
    /// (which a reload switches to the new stack).
    pub(crate) fn through(stack: &Stack, config: &Config, proxying: Proxying) -> Self {
        let registry = registry::RegistryApi::new(stack, config);
        // Sagas call these endpoints in process: they hold them weakly.
        let handle = Arc::new(std::sync::OnceLock::new());
        let api = Self {
            shared: Arc::new(Shared {
                live: arc_swap::ArcSwap::from_pointee(Live::of(stack)),
                max_body: config.server.max_request_bytes,
                jobs: jobs::JobsApi::new(stack, config, proxying),
                sagas: sagas::SagasApi::new(stack, config, &registry, handle.clone()),
                registry,
            }),
        };
        let _ = handle.set(WeakAgentApi(Arc::downgrade(&api.shared)));
        api
    }

    /// From now on, callers are identified (and signatures checked) by
    /// `stack`'s rules: a reloaded configuration's.
    pub(crate) fn switch(&self, stack: &Stack) {
        self.shared.live.store(Arc::new(Live::of(stack)));
    }

    /// Tells the endpoints where this proxy listens, once bound.
    pub fn set_local_address(&self, address: SocketAddr) {
        self.shared.sagas.set_local_address(address);
    }

    /// The endpoint `request` is for, if it is one of these.
    pub(crate) fn route<B>(&self, request: &Request<B>) -> Option<Route> {
        let path = request.uri().path();
        let under = |root: &str| {
            path.strip_prefix(root)
                .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
        };
        if under("/corral/jobs") {
            Some(Route::Jobs)
        } else if under("/corral/registry") {
            Some(Route::Registry)
        } else if under("/corral/sagas") {
            Some(Route::Sagas)
        } else if jobs::asks_async(request) {
            Some(Route::AsyncCall)
        } else {
            None
        }
    }

    /// Answers `request`, from `peer`, for `route`.
    pub(crate) async fn handle<B>(
        &self,
        route: Route,
        request: Request<B>,
        peer: SocketAddr,
    ) -> Response<BoxBody>
    where
        B: http_body::Body<Data = Bytes> + Send + 'static,
        B::Error: Into<BoxError>,
    {
        let family = match route {
            Route::AsyncCall => {
                Endpoint::from_request(request.method(), request.uri().path()).family()
            }
            _ => ApiFamily::Ollama,
        };
        // A request the proxy makes itself for an agent (a saga's step)
        // carries the agent it vouches for; none from the wire can.
        let vouched = request.extensions().get::<Vouched>().cloned();
        let caller = match &vouched {
            Some(vouched) => self.shared.live.load().classify.vouch(vouched),
            None => self.shared.live.load().classify.identify(request.headers()),
        };
        let caller = match caller {
            Ok(caller) => caller,
            Err(refusal) => {
                return respond::answer(
                    &ErrorBody::new(StatusCode::UNAUTHORIZED, refusal.to_string()),
                    family,
                )
            }
        };
        let mut request = request.map(Body::streamed);
        if vouched.is_none() {
            request = match self.signed(request, &caller, family).await {
                Ok(request) => request,
                Err(refused) => return refused,
            };
        }
        let shared = &self.shared;
        match route {
            Route::Jobs => shared.jobs.handle(request, caller, peer).await,
            Route::AsyncCall => shared.jobs.submit_call(request, caller, peer).await,
            Route::Registry => shared.registry.handle(request, caller).await,
            Route::Sagas => shared.sagas.handle(request, caller, peer).await,
        }
    }
}

impl AgentApi {
    /// `request` once its signature is checked, when the stack's auth
    /// layer asks `caller` to sign (as it would a proxied request); the
    /// body is read whole for it.
    async fn signed(
        &self,
        request: Request<Body>,
        caller: &Caller,
        family: ApiFamily,
    ) -> Result<Request<Body>, Response<BoxBody>> {
        let live = self.shared.live.load();
        let Some(auth) = live.controls.auth.get() else {
            return Ok(request);
        };
        let (parts, body) = request.into_parts();
        let bytes = http_body_util::Limited::new(body, self.shared.max_body)
            .collect()
            .await
            .map_err(|e| {
                respond::answer(
                    &ErrorBody::new(
                        StatusCode::PAYLOAD_TOO_LARGE,
                        format!(
                            "cannot read the body (at most {} bytes): {e}",
                            self.shared.max_body
                        ),
                    ),
                    family,
                )
            })?
            .to_bytes();
        let request = Request::from_parts(parts, Body::from(bytes.clone()));
        let checked = auth.check_signature(&request, caller.agent.as_str(), &bytes);
        match checked.await {
            Ok(()) => Ok(request),
            Err(refused) => Err(corral_core::respond::error_response(
                &refused,
                family,
                &self.shared.live.load().refusals,
            )),
        }
    }
}

/// An Ollama-shaped error answer.
pub(crate) fn refuse(status: StatusCode, message: impl Into<String>) -> Response<BoxBody> {
    respond::answer(&ErrorBody::new(status, message.into()), ApiFamily::Ollama)
}
