use std::sync::Arc;

use corral_core::ConfigError;
use tower::Layer;

use crate::config::CacheConfig;
use crate::service::{Cache, CacheService};
use crate::store::{CacheStore, MemoryCache};

/// Puts a [`CacheService`] in front of a service; all share one store and
/// one table of leaders.
#[derive(Clone)]
pub struct CacheLayer {
    shared: Arc<Cache>,
}

corral_core::impl_debug!(CacheLayer {
    config: shared.config
});

impl CacheLayer {
    /// A layer for `config` keeping answers in memory.
    pub fn new(config: &CacheConfig) -> Result<Self, ConfigError> {
        config.validate()?;
        let store = Arc::new(MemoryCache::new(config.max_bytes));
        Ok(Self {
            shared: Arc::new(Cache::new(config.clone(), store)),
        })
    }

    /// The same, keeping answers in `store` (shared between replicas when
    /// the store is).
    pub fn with_store(self, store: Arc<dyn CacheStore>) -> Self {
        Self {
            shared: Arc::new(Cache::new(self.shared.config.clone(), store)),
        }
    }

    /// The store: its size, for status and metrics.
    pub fn store(&self) -> &Arc<dyn CacheStore> {
        &self.shared.store
    }
}

impl<S> Layer<S> for CacheLayer {
    type Service = CacheService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        CacheService::new(inner, self.shared.clone())
    }
}
