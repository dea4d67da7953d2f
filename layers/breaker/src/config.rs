use std::time::Duration;

use corral_core::ConfigError;
use serde::Deserialize;

/// Consecutive failures that trip the breaker (the design's 5).
pub const DEFAULT_CONSECUTIVE_FAILURES: u32 = 5;
/// How long the breaker stays open before probing (the design's 60 s).
pub const DEFAULT_OPEN_FOR: Duration = Duration::from_secs(60);

/// When the breaker trips and how it recovers.
///
/// ```
/// use corral_breaker::BreakerConfig;
///
/// let config: BreakerConfig = toml::from_str(r#"
///     consecutive_failures = 5
///     failure_rate = 0.5
///     window_calls = 20
///     min_calls = 10
///     open_for = "60s"
///     open_backoff = 2.0
///     max_open_for = "10m"
///     half_open_probes = 2
///     per_model = true
/// "#).unwrap();
/// assert!(config.validate().is_ok());
/// ```
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BreakerConfig {
    /// One breaker per model instead of one for the upstream (at most
    /// 64; models beyond share the upstream's).
    pub per_model: bool,
    /// Trip after this many failures in a row; unset: never on a streak.
    pub consecutive_failures: Option<u32>,
    /// Trip when this share of the calls in the window failed (0..1);
    /// unset: never on a rate.
    pub failure_rate: Option<f64>,
    /// The window is the last this many calls...
    pub window_calls: usize,
    /// ...or, when set, the calls of the last this long.
    #[serde(with = "humantime_serde")]
    pub window_time: Option<Duration>,
    /// A rate needs at least this many calls in the window to count.
    pub min_calls: usize,
    /// A call whose first byte takes longer than this is slow; unset: no
    /// slow-call trip.
    #[serde(with = "humantime_serde")]
    pub slow_call_duration: Option<Duration>,
    /// Trip when this share of the window's calls were slow.
    pub slow_call_rate: f64,
    /// How long the breaker stays open before letting probes through.
    #[serde(with = "humantime_serde")]
    pub open_for: Duration,
    /// Each trip in a row (without closing between) stays open this many
    /// times longer than the one before; 1 keeps it constant.
    pub open_backoff: f64,
    /// The longest it stays open.
    #[serde(with = "humantime_serde")]
    pub max_open_for: Duration,
    /// Probe requests let through when half open; all must succeed to
    /// close, one failure reopens.
    pub half_open_probes: usize,
}

impl Default for BreakerConfig {
    fn default() -> Self {
        Self {
            per_model: false,
            consecutive_failures: Some(DEFAULT_CONSECUTIVE_FAILURES),
            failure_rate: Some(0.5),
            window_calls: 20,
            window_time: None,
            min_calls: 10,
            slow_call_duration: None,
            slow_call_rate: 0.8,
            open_for: DEFAULT_OPEN_FOR,
            open_backoff: 1.0,
            max_open_for: Duration::from_secs(600),
            half_open_probes: 1,
        }
    }
}

impl BreakerConfig {
    /// Checks the config, naming the key and the reason of the first
    /// problem.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.consecutive_failures == Some(0) {
            return Err(ConfigError::new(
                "consecutive_failures",
                "must be at least 1 (leave it out to disable)",
            ));
        }
        for (key, rate) in [
            ("failure_rate", self.failure_rate),
            ("slow_call_rate", Some(self.slow_call_rate)),
        ] {
            if let Some(rate) = rate {
                if !(rate > 0.0 && rate <= 1.0) {
                    return Err(ConfigError::new(key, "must be above 0 and at most 1"));
                }
            }
        }
        if self.window_calls == 0 {
            return Err(ConfigError::new("window_calls", "must be at least 1"));
        }
        if self.window_time.is_some_and(|d| d.is_zero()) {
            return Err(ConfigError::new("window_time", "must be more than zero"));
        }
        if self.open_for.is_zero() {
            return Err(ConfigError::new("open_for", "must be more than zero"));
        }
        if !(self.open_backoff >= 1.0 && self.open_backoff.is_finite()) {
            return Err(ConfigError::new("open_backoff", "must be at least 1"));
        }
        if self.max_open_for < self.open_for {
            return Err(ConfigError::new(
                "max_open_for",
                "must be at least open_for",
            ));
        }
        if self.half_open_probes == 0 {
            return Err(ConfigError::new("half_open_probes", "must be at least 1"));
        }
        Ok(())
    }
}
