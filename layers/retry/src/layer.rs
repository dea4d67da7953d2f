use std::sync::Arc;

use corral_core::ConfigError;
use tower::retry::budget::TpsBudget;
use tower::Layer;

use crate::config::RetryConfig;
use crate::service::{RetryService, RetryState};

/// Puts a [`RetryService`] in front of a service; all share one retry
/// budget.
#[derive(Clone)]
pub struct RetryLayer {
    shared: Arc<RetryState>,
}

corral_core::impl_debug!(RetryLayer {
    config: shared.config
});

impl RetryLayer {
    /// A layer for `config`, or the key and reason it is refused for.
    pub fn new(config: &RetryConfig) -> Result<Self, ConfigError> {
        config.validate()?;
        Ok(Self::build(config.clone(), None))
    }

    /// The same, recording a `retry` event for each retry in `events`.
    pub fn with_events(self, events: Arc<dyn corral_core::EventSink>) -> Self {
        Self::build(self.shared.config.clone(), Some(events))
    }

    /// A layer with a full retry budget of its own.
    fn build(config: RetryConfig, events: Option<Arc<dyn corral_core::EventSink>>) -> Self {
        let budget = TpsBudget::new(
            config.budget_window,
            config.budget_min_per_sec,
            config.budget_ratio,
        );
        Self {
            shared: Arc::new(RetryState {
                config,
                budget,
                events,
            }),
        }
    }
}

impl<S> Layer<S> for RetryLayer {
    type Service = RetryService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        RetryService::new(inner, self.shared.clone())
    }
}
