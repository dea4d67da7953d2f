use std::sync::Arc;

use corral_core::{Bus, ConfigError};
use tower::Layer;

use crate::breakers::Breakers;
use crate::circuit::State;
use crate::config::BreakerConfig;
use crate::service::BreakerService;

/// Puts a [`BreakerService`] in front of a service; all share the
/// breakers.
#[derive(Clone)]
pub struct BreakerLayer {
    breakers: Arc<Breakers>,
}

impl std::fmt::Debug for BreakerLayer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BreakerLayer")
            .field("states", &self.states())
            .finish()
    }
}

impl BreakerLayer {
    /// A layer for `config`, announcing transitions on `bus` when given
    /// (`ollama:breaker:state`).
    pub fn new(config: &BreakerConfig, bus: Option<Arc<dyn Bus>>) -> Result<Self, ConfigError> {
        config.validate()?;
        Ok(Self {
            breakers: Arc::new(Breakers::new(config.clone(), bus)),
        })
    }

    /// Each breaker's name and state.
    pub fn states(&self) -> Vec<(String, State)> {
        self.breakers.states()
    }
}

impl<S> Layer<S> for BreakerLayer {
    type Service = BreakerService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        BreakerService::new(inner, self.breakers.clone())
    }
}
