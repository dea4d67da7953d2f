use std::time::Duration;

use corral_core::ConfigError;
use serde::Deserialize;

/// Attempts in all, the first included (the design's 3).
pub const DEFAULT_MAX_ATTEMPTS: u32 = 3;
/// The first retry waits up to this (the design's base 2).
pub const DEFAULT_INITIAL_BACKOFF: Duration = Duration::from_secs(2);
/// No retry waits longer than this (the design's 30 s).
pub const DEFAULT_MAX_BACKOFF: Duration = Duration::from_secs(30);
/// How long an attempt may take to send its first byte, when it streams:
/// Ollama's own limit on loading a model (`OLLAMA_LOAD_TIMEOUT`, 5 min),
/// since a stream's first chunk waits for the load.
pub const DEFAULT_FIRST_BYTE_TIMEOUT: Duration = Duration::from_secs(300);
/// How long a metadata read (tags, ps, show, version, models) may take
/// per attempt: answered from memory, it needs no model load.
pub const DEFAULT_METADATA_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a stream may go without a chunk.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(60);

/// When and how to try again.
///
/// ```
/// use corral_retry::RetryConfig;
///
/// let config: RetryConfig = toml::from_str(r#"
///     max_attempts = 3
///     initial_backoff = "2s"
///     max_backoff = "30s"
///     budget_ratio = 0.2
///     first_byte_timeout = "30s"
///     idle_timeout = "60s"
///     fallback_models = ["llama3:8b", "tinyllama"]
/// "#).unwrap();
/// assert!(config.validate().is_ok());
/// ```
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RetryConfig {
    /// Attempts in all on one model, the first included.
    pub max_attempts: u32,
    /// The longest wait before the first retry; retry `n` waits a random
    /// time up to `initial_backoff × multiplier^(n-1)` (full jitter),
    /// capped by `max_backoff`.
    #[serde(with = "humantime_serde")]
    pub initial_backoff: Duration,
    /// How much longer each retry may wait than the one before.
    pub backoff_multiplier: f64,
    /// The longest any retry waits.
    #[serde(with = "humantime_serde")]
    pub max_backoff: Duration,
    /// Retries allowed as a share of recent requests (0.2: one retry per
    /// five requests), shared by all requests through the layer.
    pub budget_ratio: f32,
    /// Retries allowed per second whatever the traffic, so a quiet
    /// upstream can still be retried.
    pub budget_min_per_sec: u32,
    /// How long a request counts towards the budget (1 to 60 s).
    #[serde(with = "humantime_serde")]
    pub budget_window: Duration,
    /// Wait what the upstream's `Retry-After` asks before retrying (when it
    /// is no longer than `max_backoff`; longer, the answer goes back).
    pub honor_retry_after: bool,
    /// How long an attempt may take to send its first byte; unset: no
    /// limit. Not applied to a non-streamed generation (`"stream": false`),
    /// which sends nothing until it is done: `total_timeout` and the
    /// request's deadline bound that one.
    #[serde(with = "humantime_serde")]
    pub first_byte_timeout: Option<Duration>,
    /// How long a metadata read (`/api/tags`, `/api/ps`, `/api/show`,
    /// `/api/version`, `/v1/models`) may take per attempt, instead of
    /// `first_byte_timeout` (which waits for model loads); unset: no
    /// limit.
    #[serde(with = "humantime_serde")]
    pub metadata_timeout: Option<Duration>,
    /// Send a generation again after it timed out (or a gateway answered
    /// 504). Off by default: the first attempt may have run to its end on
    /// the GPU, and a second pays for it again. Metadata reads are retried
    /// after a timeout either way.
    pub rerun_timed_out: bool,
    /// How long a stream may go without a chunk before it is ended with
    /// an error line; unset: no limit.
    #[serde(with = "humantime_serde")]
    pub idle_timeout: Option<Duration>,
    /// How long the whole request may take, retries and stream included;
    /// unset: no limit.
    #[serde(with = "humantime_serde")]
    pub total_timeout: Option<Duration>,
    /// Models to try, in order, once the attempts on the requested one
    /// failed with overload (503; 504 and timeouts too with
    /// `rerun_timed_out`).
    pub fallback_models: Vec<String>,
}

impl Default for RetryConfig {
    fn default() -> Self {
        Self {
            max_attempts: DEFAULT_MAX_ATTEMPTS,
            initial_backoff: DEFAULT_INITIAL_BACKOFF,
            backoff_multiplier: 2.0,
            max_backoff: DEFAULT_MAX_BACKOFF,
            budget_ratio: 0.2,
            budget_min_per_sec: 1,
            budget_window: Duration::from_secs(10),
            honor_retry_after: true,
            first_byte_timeout: Some(DEFAULT_FIRST_BYTE_TIMEOUT),
            metadata_timeout: Some(DEFAULT_METADATA_TIMEOUT),
            rerun_timed_out: false,
            idle_timeout: Some(DEFAULT_IDLE_TIMEOUT),
            total_timeout: None,
            fallback_models: Vec::new(),
        }
    }
}

impl RetryConfig {
    /// Checks the config, naming the key and the reason of the first
    /// problem.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.max_attempts == 0 {
            return Err(ConfigError::new(
                "max_attempts",
                "must be at least 1 (1: no retries)",
            ));
        }
        if !(self.backoff_multiplier >= 1.0 && self.backoff_multiplier.is_finite()) {
            return Err(ConfigError::new("backoff_multiplier", "must be at least 1"));
        }
        if self.max_backoff < self.initial_backoff {
            return Err(ConfigError::new(
                "max_backoff",
                "must be at least initial_backoff",
            ));
        }
        if !(0.0..=1000.0).contains(&self.budget_ratio) {
            return Err(ConfigError::new("budget_ratio", "must be from 0 to 1000"));
        }
        if self.budget_window < Duration::from_secs(1)
            || self.budget_window > Duration::from_secs(60)
        {
            return Err(ConfigError::new(
                "budget_window",
                "must be from 1 s to 60 s",
            ));
        }
        for (key, value) in [
            ("first_byte_timeout", self.first_byte_timeout),
            ("metadata_timeout", self.metadata_timeout),
            ("idle_timeout", self.idle_timeout),
            ("total_timeout", self.total_timeout),
        ] {
            if value.is_some_and(|d| d.is_zero()) {
                return Err(ConfigError::new(
                    key,
                    "must be more than zero (leave it out for no limit)",
                ));
            }
        }
        if let Some(i) = self
            .fallback_models
            .iter()
            .position(|m| m.trim().is_empty())
        {
            return Err(ConfigError::new(
                format!("fallback_models[{i}]"),
                "must not be empty",
            ));
        }
        Ok(())
    }

    /// The longest wait before retry `n` (1 for the first retry).
    pub fn backoff_ceiling(&self, n: u32) -> Duration {
        let factor = self
            .backoff_multiplier
            .powi(i32::try_from(n.saturating_sub(1)).unwrap_or(i32::MAX));
        let ceiling = self.initial_backoff.as_secs_f64() * factor;
        Duration::from_secs_f64(ceiling.min(self.max_backoff.as_secs_f64()))
    }
}
