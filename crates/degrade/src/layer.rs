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
    /// A layer for `config` reading the scheduler's load from `load` and
    /// announcing level changes on `bus` (`system:degradation:level`).
    pub fn new(
        config: &DegradeConfig,
        load: LoadCell,
        bus: Option<Arc<dyn Bus>>,
    ) -> Result<Self, ConfigError> {
        config.validate()?;
        Ok(Self {
            controller: Arc::new(Controller::new(config.clone(), load, bus)),
        })
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
