//! Sagas whose steps are HTTP calls: [`HttpSteps`], which builds a
//! [`Saga`] from a [`Definition`] and rebuilds it from the log, the
//! traits finding agents ([`Resolve`]) and serving calls to Corral in
//! process ([`Local`]), and the step actions making the calls. The
//! definition, the making of a call, the client and the reading of
//! answers live in the submodules.

use std::sync::{Arc, OnceLock, RwLock};
use std::time::Duration;

use bytes::Bytes;
use corral_core::{BoxBody, BoxError};
use http::Request;
use http_body_util::Full;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use serde_json::json;

use crate::log::BoxFuture;
use crate::runner::Rebuild;
use crate::saga::{Action, StepContext, StepResult};
use crate::{Saga, SagaConfig, Transition};

mod answer;
mod client;
mod definition;
mod request;

pub use answer::MAX_OUTPUT_BYTES;
pub use definition::{AgentTarget, Call, Definition, StepDefinition};

use client::StepClient;
pub use client::{https_or_http, Checked};

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

/// A new saga id from the OS's generator, shaped as a UUID v4.
pub fn new_saga_id() -> String {
    corral_core::secret_uuid()
}

fn join(base: &str, path: &str) -> String {
    format!("{}{path}", base.trim_end_matches('/'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn saga_ids_are_uuid_v4_shaped_and_differ() {
        let (a, b) = (new_saga_id(), new_saga_id());
        assert_ne!(a, b);
        assert_eq!(a.len(), 36);
        assert_eq!(&a[14..15], "4");
    }
}
