use std::sync::Arc;

use corral_core::ConfigError;
use tower::Layer;

use crate::config::RateLimitConfig;
use crate::gcra::{MemoryStore, RateStore};
use crate::plan::Plan;
use crate::service::RateLimitService;

/// Puts a [`RateLimitService`] in front of a service; all share one
/// store of quotas.
#[derive(Clone)]
pub struct RateLimitLayer {
    plan: Arc<Plan>,
}

impl std::fmt::Debug for RateLimitLayer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RateLimitLayer").finish()
    }
}

impl RateLimitLayer {
    /// A layer for `config` keeping its quotas in memory.
    pub fn new(config: &RateLimitConfig) -> Result<Self, ConfigError> {
        Self::with_store(config, Arc::new(MemoryStore::new()))
    }

    /// A layer for `config` keeping its quotas in `store` (shared between
    /// replicas when the store is).
    pub fn with_store(
        config: &RateLimitConfig,
        store: Arc<dyn RateStore>,
    ) -> Result<Self, ConfigError> {
        config.validate()?;
        Ok(Self {
            plan: Arc::new(Plan::new(config, store)),
        })
    }
}

impl<S> Layer<S> for RateLimitLayer {
    type Service = RateLimitService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        RateLimitService::new(inner, self.plan.clone())
    }
}
