use std::collections::BTreeMap;
use std::time::Duration;

use corral_core::ConfigError;
use serde::Deserialize;

/// Permits when nothing says otherwise: Ollama's `OLLAMA_NUM_PARALLEL`
/// on a machine with memory for it.
pub const DEFAULT_CAPACITY: usize = 4;
/// A waiting request's priority rises one step per this much waiting.
pub const DEFAULT_AGING: Duration = Duration::from_secs(30);
/// Tokens a generation is expected to produce when it sets no
/// `num_predict`/`max_tokens`, for the fair-share estimate.
pub const DEFAULT_GENERATION_TOKENS: u64 = 256;

/// How the scheduler shares the upstream.
///
/// ```
/// use corral_priority::PriorityConfig;
///
/// let config: PriorityConfig = toml::from_str(r#"
///     capacity = 4
///     aging = "20s"
///     max_in_flight_per_agent = 2
///     model_capacity = { "llama3:70b" = 1 }
///     class_weights = { opus = 2.0, batch = 0.5 }
///     reserve = { permits = 1, up_to_priority = 2 }
/// "#).unwrap();
/// assert!(config.validate().is_ok());
/// ```
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PriorityConfig {
    /// Requests the upstream runs at once: what the operator set as
    /// `OLLAMA_NUM_PARALLEL`.
    pub capacity: usize,
    /// Models with a pool of their own, and its capacity; every other
    /// model shares the default pool (or, with `per_model`, gets one of
    /// `capacity`).
    pub model_capacity: BTreeMap<String, usize>,
    /// Every model not in `model_capacity` gets a pool of its own of
    /// `capacity` permits, made when first asked for, as Ollama's
    /// `OLLAMA_NUM_PARALLEL` is per loaded model; off, they share one
    /// pool of `capacity`. At most [`MAX_MODEL_POOLS`](crate::MAX_MODEL_POOLS)
    /// are made; further models share the default pool.
    pub per_model: bool,
    /// A waiting request's priority rises one step per `aging` waited, so
    /// low priorities are delayed, never starved; `0s` turns aging off.
    #[serde(with = "humantime_serde")]
    pub aging: Duration,
    /// The most requests one agent may have running in a pool, so fair
    /// share holds even for an agent that sends many at once; unset, no
    /// cap beyond the pool's.
    pub max_in_flight_per_agent: Option<usize>,
    /// Tokens a generation is expected to produce when the request sets
    /// no `num_predict`/`max_tokens` (the estimate is corrected from the
    /// response's `eval_count`).
    pub default_generation_tokens: u64,
    /// Fair-share weight by class name (default 1.0): a class of weight 2
    /// gets twice the service of weight 1 at the same priority.
    pub class_weights: BTreeMap<String, f64>,
    /// Permits only high priorities may take, so an urgent request finds
    /// one free instead of waiting for a long generation to end; unset,
    /// none.
    pub reserve: Option<Reserve>,
}

/// `reserve = { permits = 1, up_to_priority = 2 }`: the last `permits` of
/// each pool go only to requests of priority `up_to_priority` or higher
/// (by the priority they asked for, not one earned by aging). A pool
/// keeps at least one permit for everyone, whatever its size: with
/// capacity 1 the reserve holds nothing back.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Reserve {
    /// How many permits are held back.
    pub permits: usize,
    /// The lowest priority (largest number) that may take them.
    pub up_to_priority: u8,
}

impl Default for PriorityConfig {
    fn default() -> Self {
        Self {
            capacity: DEFAULT_CAPACITY,
            model_capacity: BTreeMap::new(),
            per_model: false,
            aging: DEFAULT_AGING,
            max_in_flight_per_agent: None,
            default_generation_tokens: DEFAULT_GENERATION_TOKENS,
            class_weights: BTreeMap::new(),
            reserve: None,
        }
    }
}

impl PriorityConfig {
    /// Checks the config, naming the key and the reason of the first
    /// problem.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.capacity == 0 {
            return Err(ConfigError::new("capacity", "must be at least 1"));
        }
        for (model, capacity) in &self.model_capacity {
            if *capacity == 0 {
                return Err(ConfigError::new(
                    format!("model_capacity.{model}"),
                    "must be at least 1",
                ));
            }
        }
        if self.max_in_flight_per_agent == Some(0) {
            return Err(ConfigError::new(
                "max_in_flight_per_agent",
                "must be at least 1 (leave it out for no cap)",
            ));
        }
        if let Some(reserve) = self.reserve {
            // Above the capacity is allowed: `--capacity` may lower the
            // capacity under a file written for a larger one, and each
            // pool holds back at most all but one of its permits.
            if reserve.permits == 0 {
                return Err(ConfigError::new(
                    "reserve.permits",
                    "must be at least 1 (leave `reserve` out for none)",
                ));
            }
            if !(1..=10).contains(&reserve.up_to_priority) {
                return Err(ConfigError::new(
                    "reserve.up_to_priority",
                    "must be a priority from 1 to 10",
                ));
            }
        }
        for (class, weight) in &self.class_weights {
            if !weight.is_finite() || *weight <= 0.0 {
                return Err(ConfigError::new(
                    format!("class_weights.{class}"),
                    "must be a number above 0",
                ));
            }
        }
        Ok(())
    }
}
