use std::time::Duration;

use corral_core::{ConfigError, Priority};
use serde::Deserialize;

/// Waiting requests beyond which arrivals are refused (the design's
/// `max_queue_size`).
pub const DEFAULT_MAX_QUEUE: usize = 1000;
/// Priorities above this (8, 9, 10) are refused at once when the queue is
/// full; the others may wait for room.
pub const DEFAULT_DROP_ABOVE: u8 = 7;
/// How long a request of priority up to `drop_above` may wait for room.
pub const DEFAULT_WAIT_FOR_SPACE: Duration = Duration::from_secs(5);
/// Queue delay above which CoDel starts counting.
pub const DEFAULT_CODEL_TARGET: Duration = Duration::from_secs(10);
/// How long the delay must stay above target before shedding starts.
pub const DEFAULT_CODEL_INTERVAL: Duration = Duration::from_secs(30);
/// At most one backpressure event per this interval on the bus.
pub const DEFAULT_EVENT_INTERVAL: Duration = Duration::from_secs(1);

/// How much may wait, and who is refused first.
///
/// ```
/// use corral_shed::ShedConfig;
///
/// let config: ShedConfig = toml::from_str(r#"
///     max_queue = 200
///     drop_above = 7
///     wait_for_space = "5s"
///     codel_target = "10s"
///     codel_interval = "30s"
///     max_waiting_per_agent = 20
/// "#).unwrap();
/// assert!(config.validate().is_ok());
/// ```
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ShedConfig {
    /// Requests that may wait for the upstream; beyond it the queue is
    /// full.
    pub max_queue: usize,
    /// Bytes of request bodies that may wait; beyond it the queue is full
    /// too. Unset: no byte bound.
    pub max_queue_bytes: Option<usize>,
    /// When the queue is full, priorities above this number are refused at
    /// once; the others wait up to `wait_for_space` for room.
    pub drop_above: u8,
    /// How long a request of priority up to `drop_above` waits for room in
    /// a full queue before it is refused.
    #[serde(with = "humantime_serde")]
    pub wait_for_space: Duration,
    /// Delay shedding in the manner of CoDel: when the oldest waiting
    /// request has waited longer than `codel_target` for a whole
    /// `codel_interval`, priorities above `drop_above` are refused at
    /// arrival until the delay falls back under target.
    pub codel: bool,
    /// The queue delay CoDel tolerates.
    #[serde(with = "humantime_serde")]
    pub codel_target: Duration,
    /// How long the delay must stay above target before shedding.
    #[serde(with = "humantime_serde")]
    pub codel_interval: Duration,
    /// The most requests one agent may have waiting (or running, before
    /// their first byte); one more is its own quota's problem: 429.
    /// Unset: no per-agent bound.
    pub max_waiting_per_agent: Option<usize>,
    /// At most one `system:backpressure` event per this interval.
    #[serde(with = "humantime_serde")]
    pub event_interval: Duration,
}

impl Default for ShedConfig {
    fn default() -> Self {
        Self {
            max_queue: DEFAULT_MAX_QUEUE,
            max_queue_bytes: None,
            drop_above: DEFAULT_DROP_ABOVE,
            wait_for_space: DEFAULT_WAIT_FOR_SPACE,
            codel: true,
            codel_target: DEFAULT_CODEL_TARGET,
            codel_interval: DEFAULT_CODEL_INTERVAL,
            max_waiting_per_agent: None,
            event_interval: DEFAULT_EVENT_INTERVAL,
        }
    }
}

impl ShedConfig {
    /// Checks the config, naming the key and the reason of the first
    /// problem.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.max_queue == 0 {
            return Err(ConfigError::new("max_queue", "must be at least 1"));
        }
        if self.max_queue_bytes == Some(0) {
            return Err(ConfigError::new(
                "max_queue_bytes",
                "must be at least 1 (leave it out for no bound)",
            ));
        }
        Priority::new(self.drop_above)
            .map_err(|e| ConfigError::new("drop_above", e.to_string()))?;
        if self.codel && (self.codel_target.is_zero() || self.codel_interval.is_zero()) {
            return Err(ConfigError::new(
                "codel_target",
                "codel_target and codel_interval must be more than zero (or set codel = false)",
            ));
        }
        if self.max_waiting_per_agent == Some(0) {
            return Err(ConfigError::new(
                "max_waiting_per_agent",
                "must be at least 1 (leave it out for no bound)",
            ));
        }
        Ok(())
    }
}
