use std::sync::Arc;

use corral_core::{Bus, ConfigError, LoadCell};
use tower::Layer;

use crate::config::ShedConfig;
use crate::gate::Gate;
use crate::service::ShedService;

/// Puts a [`ShedService`] in front of a service.
#[derive(Debug, Clone)]
pub struct ShedLayer {
    gate: Arc<Gate>,
}

impl ShedLayer {
    /// A layer for `config` that counts the requests it lets through (see
    /// [`ShedLayer::with_load`] to watch a scheduler instead).
    pub fn new(config: &ShedConfig) -> Result<Self, ConfigError> {
        config.validate()?;
        metrics::gauge!(crate::metrics::QUEUE_LIMIT).set(config.max_queue as f64);
        Ok(Self::build(config.clone(), LoadCell::default(), None))
    }

    /// The same, watching the scheduler published in `load` (the
    /// `priority` layer's), or counting itself while none is.
    pub fn with_load(self, load: LoadCell) -> Self {
        let bus = self.gate.bus.clone();
        Self::build(self.gate.config.clone(), load, bus)
    }

    /// The same, announcing backpressure on `bus`.
    pub fn with_bus(self, bus: Arc<dyn Bus>) -> Self {
        let load = self.gate.load.clone();
        Self::build(self.gate.config.clone(), load, Some(bus))
    }

    /// A new gate: a layer's settings are changed by building it
    /// again, before any service is made.
    fn build(config: ShedConfig, load: LoadCell, bus: Option<Arc<dyn Bus>>) -> Self {
        Self {
            gate: Arc::new(Gate::new(config, load, bus)),
        }
    }
}

impl<S> Layer<S> for ShedLayer {
    type Service = ShedService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        ShedService::new(inner, self.gate.clone())
    }
}
