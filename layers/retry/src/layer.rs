use std::sync::Arc;

use corral_core::ConfigError;
use tower::retry::budget::TpsBudget;
use tower::Layer;

use crate::config::RetryConfig;
use crate::service::{RetryService, Shared};

/// Puts a [`RetryService`] in front of a service; all share one retry
/// budget.
#[derive(Clone)]
pub struct RetryLayer {
    shared: Arc<Shared>,
}

corral_core::impl_debug!(RetryLayer {
    config: shared.config
});

impl RetryLayer {
    /// A layer for `config`, or the key and reason it is refused for.
    pub fn new(config: &RetryConfig) -> Result<Self, ConfigError> {
        config.validate()?;
        Ok(Self {
            shared: Arc::new(Shared {
                budget: TpsBudget::new(
                    config.budget_window,
                    config.budget_min_per_sec,
                    config.budget_ratio,
                ),
                config: config.clone(),
                events: None,
            }),
        })
    }

    /// The same, recording a `retry` event for each retry in `events`.
    pub fn with_events(self, events: Arc<dyn corral_core::EventSink>) -> Self {
        let shared = Shared {
            config: self.shared.config.clone(),
            budget: TpsBudget::new(
                self.shared.config.budget_window,
                self.shared.config.budget_min_per_sec,
                self.shared.config.budget_ratio,
            ),
            events: Some(events),
        };
        Self {
            shared: Arc::new(shared),
        }
    }
}

impl<S> Layer<S> for RetryLayer {
    type Service = RetryService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        RetryService::new(inner, self.shared.clone())
    }
}
