use std::collections::BTreeMap;
use std::sync::Arc;

use std::time::Duration;

use corral_core::{ConfigError, LoadSnapshot, RequestMeta, UpstreamLoad};
use tower::Layer;

use crate::config::PriorityConfig;
use crate::lengths::Lengths;
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
    /// What each agent's answers generate, for requests that do not say.
    pub(crate) lengths: Arc<Lengths>,
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
                lengths: Arc::default(),
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
                lengths: self.shared.lengths.clone(),
            }),
        }
    }

    /// The scheduler: its load, its capacity, its counters.
    pub fn scheduler(&self) -> &Arc<Scheduler> {
        &self.shared.scheduler
    }

    /// The scheduler's load as the layers around it read it, with the
    /// estimated wait of a request as this layer would reckon its cost
    /// and weight ([`UpstreamLoad::wait_estimate`]): what `degrade` asks
    /// before moving a request to a smaller model for its time to first
    /// token.
    ///
    /// ```
    /// use corral_core::{Endpoint, RequestMeta};
    /// use corral_priority::{PriorityConfig, PriorityLayer};
    ///
    /// let layer = PriorityLayer::new(&PriorityConfig::default()).unwrap();
    /// let load = layer.load();
    /// let meta = RequestMeta::new("r".into(), Endpoint::Chat);
    /// assert_eq!(load.wait_estimate(&meta), Some(std::time::Duration::ZERO), "room now");
    /// assert_eq!(load.snapshot().capacity, layer.scheduler().snapshot_for(None).capacity);
    /// ```
    pub fn load(&self) -> Arc<dyn UpstreamLoad> {
        self.shared.clone()
    }
}

impl UpstreamLoad for Scheduling {
    fn snapshot(&self) -> LoadSnapshot {
        self.scheduler.snapshot()
    }

    fn changes(&self) -> Option<&tokio::sync::Notify> {
        UpstreamLoad::changes(self.scheduler.as_ref())
    }

    fn wait_estimate(&self, meta: &RequestMeta) -> Option<Duration> {
        self.scheduler
            .estimate(&self.ticket_of(meta), meta.model.as_deref())?
            .eta
    }
}

impl<S> Layer<S> for PriorityLayer {
    type Service = PriorityService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        PriorityService::new(inner, self.shared.clone())
    }
}
