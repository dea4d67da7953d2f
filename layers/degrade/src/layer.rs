use std::sync::Arc;

use corral_core::{Bus, ConfigError, LoadCell};
use tower::Layer;

use crate::config::DegradeConfig;
use crate::controller::Controller;
use crate::service::DegradeService;

/// Puts a [`DegradeService`] in front of a service; all share one
/// [`Controller`].
#[derive(Clone, Debug)]
pub struct DegradeLayer {
    controller: Arc<Controller>,
}

impl DegradeLayer {
    /// A layer for `config`; its level moves with the load it reads (see
    /// [`DegradeLayer::with_load`]) or by hand ([`Controller::force`]).
    pub fn new(config: &DegradeConfig) -> Result<Self, ConfigError> {
        config.validate()?;
        Ok(Self::build(config.clone(), LoadCell::default(), None))
    }

    /// The same, reading the scheduler's load from `load`.
    pub fn with_load(self, load: LoadCell) -> Self {
        let bus = self.controller.bus.clone();
        Self::build(self.controller.config.clone(), load, bus)
    }

    /// The same, announcing level changes on `bus`
    /// (`system:degradation:level`).
    pub fn with_bus(self, bus: Arc<dyn Bus>) -> Self {
        let load = self.controller.load.clone();
        Self::build(self.controller.config.clone(), load, Some(bus))
    }

    /// A new controller: a layer's settings are changed by building it
    /// again, before any service is made.
    fn build(config: DegradeConfig, load: LoadCell, bus: Option<Arc<dyn Bus>>) -> Self {
        Self {
            controller: Arc::new(Controller::new(config, load, bus)),
        }
    }

    /// The controller: the level, and forcing it.
    pub fn controller(&self) -> &Arc<Controller> {
        &self.controller
    }
}

impl<S> Layer<S> for DegradeLayer {
    type Service = DegradeService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        DegradeService::new(inner, self.controller.clone())
    }
}
