use std::sync::Arc;

use corral_core::ConfigError;
use tower::Layer;

use crate::book::BudgetBook;
use crate::budget::Calendar;
use crate::config::RateLimitConfig;
use crate::gcra::{MemoryRates, RateStore};
use crate::plan::Plan;
use crate::service::RateLimitService;

/// Puts a [`RateLimitService`] in front of a service; all share one
/// store of quotas.
#[derive(Clone)]
pub struct RateLimitLayer {
    config: RateLimitConfig,
    store: Arc<dyn RateStore>,
    calendar: Calendar,
    plan: Arc<Plan>,
}

corral_core::impl_debug!(RateLimitLayer {});

impl RateLimitLayer {
    /// A layer for `config` keeping its quotas in memory.
    pub fn new(config: &RateLimitConfig) -> Result<Self, ConfigError> {
        config.validate()?;
        let store: Arc<dyn RateStore> = Arc::new(MemoryRates::new());
        Ok(Self {
            plan: Arc::new(Plan::new(config, store.clone(), Calendar::System)),
            config: config.clone(),
            store,
            calendar: Calendar::System,
        })
    }

    /// The same, keeping its quotas in `store` (shared between replicas
    /// when the store is).
    pub fn with_store(self, store: Arc<dyn RateStore>) -> Self {
        Self {
            plan: Arc::new(Plan::new(&self.config, store.clone(), self.calendar)),
            store,
            ..self
        }
    }

    /// Its budgets, to read how they stand without charging them.
    pub fn budgets(&self) -> BudgetBook {
        BudgetBook {
            plan: self.plan.clone(),
        }
    }

    /// The same, reading the day and month of its budgets from
    /// `calendar` (the system's wall clock by default).
    pub fn with_calendar(self, calendar: Calendar) -> Self {
        Self {
            plan: Arc::new(Plan::new(&self.config, self.store.clone(), calendar)),
            calendar,
            ..self
        }
    }
}

impl<S> Layer<S> for RateLimitLayer {
    type Service = RateLimitService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        RateLimitService::new(inner, self.plan.clone())
    }
}
