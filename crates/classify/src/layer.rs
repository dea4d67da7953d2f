use std::sync::Arc;

use corral_core::ConfigError;
use tower::Layer;

use crate::config::ClassifyConfig;
use crate::identity::{Identities, IssuedKeys};
use crate::overrides::PriorityOverrides;
use crate::service::Classify;

/// Puts a [`Classify`] in front of a service.
///
/// Built once from a validated [`ClassifyConfig`]; every service it makes
/// shares the same agent and class tables.
#[derive(Debug, Clone)]
pub struct ClassifyLayer {
    shared: Arc<Classifier>,
}

/// What every clone of the service shares: who the agents are, the body
/// bounds and the operators' priority overrides.
#[derive(Debug)]
pub(crate) struct Classifier {
    pub(crate) identities: Identities,
    pub(crate) max_request_bytes: usize,
    pub(crate) bounds: crate::parse::Bounds,
    pub(crate) body_read_timeout: std::time::Duration,
    pub(crate) overrides: Arc<PriorityOverrides>,
    pub(crate) issued: Arc<IssuedKeys>,
}

impl ClassifyLayer {
    /// A layer for `config`, or the key and reason it is refused for.
    pub fn new(config: &ClassifyConfig) -> Result<Self, ConfigError> {
        Self::sharing(config, Arc::default(), Arc::default())
    }

    /// A layer for `config` reading the priorities `overrides` holds and
    /// the keys `issued` at run time: what an operator set while serving
    /// outlives a reload of the configuration.
    ///
    /// ```
    /// use corral_classify::{ClassifyConfig, ClassifyLayer};
    ///
    /// let before = ClassifyLayer::new(&ClassifyConfig::default()).unwrap();
    /// let after = ClassifyLayer::sharing(
    ///     &ClassifyConfig::default(),
    ///     before.overrides().clone(),
    ///     before.issued().clone(),
    /// )
    /// .unwrap();
    /// assert!(std::sync::Arc::ptr_eq(before.overrides(), after.overrides()));
    /// assert!(std::sync::Arc::ptr_eq(before.issued(), after.issued()));
    /// ```
    pub fn sharing(
        config: &ClassifyConfig,
        overrides: Arc<PriorityOverrides>,
        issued: Arc<IssuedKeys>,
    ) -> Result<Self, ConfigError> {
        config.validate()?;
        Ok(Self {
            shared: Arc::new(Classifier {
                identities: Identities::with_issued(config, issued.clone())?,
                max_request_bytes: config.max_request_bytes,
                bounds: crate::parse::Bounds {
                    max_json_depth: config.max_json_depth,
                    max_messages: config.max_messages,
                },
                body_read_timeout: config.body_read_timeout,
                overrides,
                issued,
            }),
        })
    }

    /// The API keys issued at run time: every service this layer makes
    /// knows them.
    pub fn issued(&self) -> &Arc<IssuedKeys> {
        &self.shared.issued
    }

    /// The priorities an operator set for agents at run time: every
    /// service this layer makes reads them.
    pub fn overrides(&self) -> &Arc<PriorityOverrides> {
        &self.shared.overrides
    }

    /// The classes this layer knows, as `(name, default priority,
    /// [highest, lowest])`, the built-in default class included.
    pub fn classes(&self) -> impl Iterator<Item = (&str, u8, [u8; 2])> + '_ {
        self.shared.identities.classes().iter().map(|c| {
            (
                c.name.as_str(),
                c.priority.get(),
                [c.highest.get(), c.lowest.get()],
            )
        })
    }
}

/// Who a request comes from, as classify names it: for Corral's own
/// agent-facing endpoints (jobs, the registry, sagas), which answer the
/// caller without going through the stack.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    /// The agent.
    pub agent: corral_core::AgentId,
    /// Its class.
    pub class: corral_core::ClassName,
    /// Whether an API key proved it (else it was claimed or anonymous).
    pub authenticated: bool,
}

pub use corral_core::Vouched;

impl ClassifyLayer {
    /// The agent `headers` come from, by the same rules as a proxied
    /// request: its key, else its `X-Agent-Id`, else anonymous; refused as
    /// a proxied request would be.
    ///
    /// ```
    /// use corral_classify::{AgentConfig, ClassifyConfig, ClassifyLayer};
    ///
    /// let mut config = ClassifyConfig::default();
    /// let mut agent = AgentConfig::new("planner", None);
    /// agent.key = Some("sk-planner-0123456789".into());
    /// config.agents.push(agent);
    /// let layer = ClassifyLayer::new(&config).unwrap();
    ///
    /// let mut headers = http::HeaderMap::new();
    /// headers.insert("authorization", "Bearer sk-planner-0123456789".parse().unwrap());
    /// let caller = layer.identify(&headers).unwrap();
    /// assert_eq!(caller.agent.as_str(), "planner");
    /// assert!(caller.authenticated);
    ///
    /// headers.insert("x-agent-id", "planner".parse().unwrap());
    /// headers.remove("authorization");
    /// assert!(layer.identify(&headers).is_err(), "a keyed agent cannot be claimed");
    /// ```
    pub fn identify(&self, headers: &http::HeaderMap) -> Result<Caller, crate::Unauthenticated> {
        let identity = self.shared.identities.identify(headers)?;
        Ok(Caller {
            agent: identity.agent,
            class: identity.class.name.clone(),
            authenticated: identity.authenticated,
        })
    }

    /// The agent the proxy vouches for (see [`Vouched`]), as the config
    /// has it now: refused if it has been revoked since, or if keys are
    /// required and it has none.
    pub fn vouch(&self, vouched: &Vouched) -> Result<Caller, crate::Unauthenticated> {
        let identity = self
            .shared
            .identities
            .vouched(&vouched.agent, vouched.authenticated)?;
        Ok(Caller {
            agent: identity.agent,
            class: identity.class.name.clone(),
            authenticated: identity.authenticated,
        })
    }
}

impl ClassifyConfig {
    /// Checks the config, naming the key and the reason of the first
    /// problem.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.max_request_bytes == 0 {
            return Err(ConfigError::new("max_request_bytes", "must be at least 1"));
        }
        if self.max_json_depth == 0 {
            return Err(ConfigError::new(
                "max_json_depth",
                "must be at least 1: a request body is a JSON object",
            ));
        }
        if self.max_messages == 0 {
            return Err(ConfigError::new("max_messages", "must be at least 1"));
        }
        if self.body_read_timeout.is_zero() {
            return Err(ConfigError::new(
                "body_read_timeout",
                "must be more than zero",
            ));
        }
        Identities::new(self).map(|_| ())
    }
}

impl<S> Layer<S> for ClassifyLayer {
    type Service = Classify<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Classify::new(inner, self.shared.clone())
    }
}
