use std::collections::BTreeMap;
use std::sync::Arc;

use corral_core::ConfigError;
use tower::Layer;

use crate::config::PriorityConfig;
use crate::scheduler::Scheduler;
use crate::service::PriorityService;

/// Puts a [`PriorityService`] in front of a service, all sharing one
/// [`Scheduler`].
#[derive(Debug, Clone)]
pub struct PriorityLayer {
    shared: Arc<Scheduling>,
}

/// What every clone of the service shares: the scheduler and how a
/// request's cost and weight are reckoned.
#[derive(Debug)]
pub(crate) struct Scheduling {
    pub(crate) scheduler: Arc<Scheduler>,
    pub(crate) weights: BTreeMap<String, f64>,
    pub(crate) default_generation_tokens: u64,
}

impl PriorityLayer {
    /// A layer with a new scheduler for `config`, or the key and reason
    /// it is refused for.
    pub fn new(config: &PriorityConfig) -> Result<Self, ConfigError> {
        Ok(Self {
            shared: Arc::new(Scheduling {
                scheduler: Scheduler::new(config)?,
                weights: config.class_weights.clone(),
                default_generation_tokens: config.default_generation_tokens,
            }),
        })
    }

    /// The same, sharing an existing `scheduler` (kept across a reload,
    /// shared through Redis, or shared by several stacks in front of one
    /// upstream).
    pub fn with_scheduler(self, scheduler: Arc<Scheduler>) -> Self {
        Self {
            shared: Arc::new(Scheduling {
                scheduler,
                weights: self.shared.weights.clone(),
                default_generation_tokens: self.shared.default_generation_tokens,
            }),
        }
    }

    /// The scheduler: its load, its capacity, its counters.
    pub fn scheduler(&self) -> &Arc<Scheduler> {
        &self.shared.scheduler
    }
}

impl<S> Layer<S> for PriorityLayer {
    type Service = PriorityService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        PriorityService::new(inner, self.shared.clone())
    }
}
