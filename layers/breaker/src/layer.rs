use std::sync::Arc;

use corral_core::{Bus, ConfigError};
use tower::Layer;

use crate::breakers::{Breakers, UPSTREAM};
use crate::circuit::State;
use crate::config::BreakerConfig;
use crate::service::BreakerService;

/// Puts a [`BreakerService`] in front of a service; all share the
/// breakers.
#[derive(Clone)]
pub struct BreakerLayer {
    breakers: Arc<Breakers>,
}

corral_core::impl_debug!(BreakerLayer { states: states() });

impl BreakerLayer {
    /// A layer for `config`.
    pub fn new(config: &BreakerConfig) -> Result<Self, ConfigError> {
        config.validate()?;
        Ok(Self {
            breakers: Arc::new(Breakers::new(config.clone(), None)),
        })
    }

    /// The same, announcing transitions on `bus` (`ollama:breaker:state`).
    /// Set it when building the stack: the breakers start closed again.
    pub fn with_bus(self, bus: Arc<dyn Bus>) -> Self {
        Self {
            breakers: Arc::new(Breakers::new(self.breakers.config.clone(), Some(bus))),
        }
    }

    /// Opens `breaker` (`upstream`, or a model's) for `open_for` because
    /// another replica's opened (heard on `ollama:breaker:state`): the
    /// replicas front the same upstream, so one's failures are everyone's.
    /// A breaker already open or probing keeps its own course; the change
    /// is not announced on the bus again.
    ///
    /// ```
    /// use std::time::Duration;
    /// use corral_breaker::{BreakerConfig, BreakerLayer};
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// let layer = BreakerLayer::new(&BreakerConfig::default()).unwrap();
    /// layer.follow("upstream", Duration::from_secs(30));
    /// assert_eq!(layer.states()[0].1.as_str(), "open");
    /// # }
    /// ```
    pub fn follow(&self, breaker: &str, open_for: std::time::Duration) {
        self.breakers.follow(breaker, open_for);
    }

    /// Each breaker's name and state.
    pub fn states(&self) -> Vec<(String, State)> {
        self.breakers.states()
    }
}

impl<S> Layer<S> for BreakerLayer {
    type Service = BreakerService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        BreakerService::new(inner, self.breakers.clone(), Arc::from(UPSTREAM))
    }
}
