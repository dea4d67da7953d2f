use std::sync::Arc;

use corral_core::{Bus, ConfigError, LoadCell};
use tower::Layer;

use crate::config::ShedConfig;
use crate::service::ShedService;
use crate::shared::Shared;

/// Puts a [`ShedService`] in front of a service.
#[derive(Debug, Clone)]
pub struct ShedLayer {
    shared: Arc<Shared>,
}

impl ShedLayer {
    /// A layer for `config` that watches the scheduler published in
    /// `load` (or, if none is, counts the requests it lets through), and
    /// publishes backpressure on `bus` when given.
    pub fn new(
        config: &ShedConfig,
        load: LoadCell,
        bus: Option<Arc<dyn Bus>>,
    ) -> Result<Self, ConfigError> {
        config.validate()?;
        metrics::gauge!(crate::metrics::QUEUE_LIMIT).set(config.max_queue as f64);
        Ok(Self {
            shared: Arc::new(Shared::new(config.clone(), load, bus)),
        })
    }
}

impl<S> Layer<S> for ShedLayer {
    type Service = ShedService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        ShedService::from_shared(inner, self.shared.clone())
    }
}
