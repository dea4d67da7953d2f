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
/// A reserved permit is lent to a lower priority only if the request is
/// predicted to give it back within this long: the most an urgent
/// arrival should wait for it. Chosen from the benches
/// (`benches/RESULTS.md`): the closed-loop herd's 40 ms requests are lent
/// it, the 131-agent scenario's generations of 0.4 s and more are not; at
/// 1 s priority 1 waited behind lent generations there (p99 1.19 →
/// 1.44 s), and 250 ms stays within the slack the design's latency target
/// leaves it (1.5 × its unloaded 626 ms).
pub const DEFAULT_LEND_WITHIN: Duration = Duration::from_millis(250);
/// The longest `lend_within` accepted: a permit lent for longer is not
/// held back.
pub const MAX_LEND_WITHIN: Duration = Duration::from_secs(60);

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
///     reserve = { permits = 1, up_to_priority = 2, lend_within = "250ms" }
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
    /// Tokens a generation is expected to produce when the request carries
    /// no metadata (no `classify` before the layer). A request that sets
    /// no `num_predict`/`max_tokens` is predicted what its agent's answers
    /// from its model generated lately (or every agent's, or nothing
    /// before any answer from the model was seen); the charge is corrected
    /// from the response's `eval_count`.
    pub default_generation_tokens: u64,
    /// Fair-share weight by class name (default 1.0): a class of weight 2
    /// gets twice the service of weight 1 at the same priority.
    pub class_weights: BTreeMap<String, f64>,
    /// Permits held back for high priorities, so an urgent request finds
    /// one free instead of waiting for a long generation to end (lent to
    /// short requests while no urgent one waits); unset, none.
    pub reserve: Option<Reserve>,
}

/// `reserve = { permits = 1, up_to_priority = 2, lend_within = "250ms" }`:
/// the last `permits` of each pool are held back for requests of
/// priority `up_to_priority` or higher (by the priority they asked for,
/// not one earned by aging). A pool keeps at least one permit for
/// everyone, whatever its size: with capacity 1 the reserve holds
/// nothing back.
///
/// **Lending.** While no request of the reserve's priorities waits, a
/// reserved permit is lent to the next lower-priority request predicted
/// to give it back within `lend_within`, so a reserve costs the others
/// nothing when no urgent work comes. The prediction is made from what
/// the pool measures, the time from grant to release of every permit:
///
/// - an agent with history: its exponentially weighted average hold per
///   unit of cost, times the request's cost estimate (prompt tokens +
///   2 × the tokens it may generate), made when the request arrives;
/// - an agent without: the pool's average hold, when the permit is
///   granted; a pool that has never had a permit back lends nothing.
///
/// How it comes back: the reserve is counted, not named. Whichever
/// permit frees next while the pool is down to its reserve goes to a
/// request of the reserve's priorities if one waits, never to a lower
/// one; an urgent arrival waits for the first of the running requests to
/// end, and one of those, the borrower, was predicted to end within
/// `lend_within`. The long generations the reserve exists for are
/// predicted long and never lent it. `lend_within = "0s"` lends nothing:
/// the strict reserve.
///
/// ```
/// use std::time::Duration;
/// use corral_priority::{PriorityConfig, Reserve, DEFAULT_LEND_WITHIN};
///
/// let config: PriorityConfig = toml::from_str("reserve = { permits = 1, up_to_priority = 2 }").unwrap();
/// let reserve = config.reserve.unwrap();
/// assert_eq!(reserve.lend_within, DEFAULT_LEND_WITHIN);
///
/// let strict: Reserve = toml::from_str(r#"
///     permits = 1
///     up_to_priority = 2
///     lend_within = "0s"
/// "#).unwrap();
/// assert_eq!(strict.lend_within, Duration::ZERO);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Reserve {
    /// How many permits are held back.
    pub permits: usize,
    /// The lowest priority (largest number) that may take them.
    pub up_to_priority: u8,
    /// A lower priority may borrow a reserved permit while no request of
    /// the reserve's priorities waits, if it is predicted to give it
    /// back within this long; `0s` never lends. At most
    /// [`MAX_LEND_WITHIN`]; [`DEFAULT_LEND_WITHIN`] when unset.
    #[serde(default = "default_lend_within", with = "humantime_serde")]
    pub lend_within: Duration,
}

fn default_lend_within() -> Duration {
    DEFAULT_LEND_WITHIN
}

impl Reserve {
    /// `permits` held back for priorities up to `up_to_priority`, lent
    /// within [`DEFAULT_LEND_WITHIN`].
    pub fn new(permits: usize, up_to_priority: u8) -> Self {
        Self {
            permits,
            up_to_priority,
            lend_within: DEFAULT_LEND_WITHIN,
        }
    }
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
            if reserve.lend_within > MAX_LEND_WITHIN {
                return Err(ConfigError::new(
                    "reserve.lend_within",
                    "must be at most 60s: a permit lent for longer is not held back \
                     (leave `reserve` out for none, `0s` never lends)",
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
