use std::sync::Arc;

use corral_core::ConfigError;
use tower::Layer;

use crate::config::ClassifyConfig;
use crate::identity::Identities;
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
}

impl ClassifyLayer {
    /// A layer for `config`, or the key and reason it is refused for.
    pub fn new(config: &ClassifyConfig) -> Result<Self, ConfigError> {
        config.validate()?;
        Ok(Self {
            shared: Arc::new(Classifier {
                identities: Identities::new(config)?,
                max_request_bytes: config.max_request_bytes,
                bounds: crate::parse::Bounds {
                    max_json_depth: config.max_json_depth,
                    max_messages: config.max_messages,
                },
                body_read_timeout: config.body_read_timeout,
                overrides: Arc::default(),
            }),
        })
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
