use std::time::Duration;

use corral_core::ConfigError;
use serde::Deserialize;

/// Limit to start from when none is configured: one request at a time,
/// so nothing waits inside Ollama before the first measurement.
pub const DEFAULT_INITIAL: usize = 1;
/// Lowest limit when none is configured.
pub const DEFAULT_MIN: usize = 1;
/// Highest limit when none is configured.
pub const DEFAULT_MAX: usize = 32;
/// A time to first token above `queue_ratio` times the baseline (plus
/// `queue_margin`) means the request waited for a slot.
pub const DEFAULT_QUEUE_RATIO: f64 = 2.0;
/// Added to the queue threshold, so a very short baseline (tens of
/// milliseconds) does not turn jitter into queueing.
pub const DEFAULT_QUEUE_MARGIN: Duration = Duration::from_millis(50);
/// How long after a probe found a queue before probing that level again.
pub const DEFAULT_PROBE_INTERVAL: Duration = Duration::from_secs(5);
/// The longest wait between probes, as failed probes double it.
pub const DEFAULT_MAX_PROBE_INTERVAL: Duration = Duration::from_secs(20);
/// Least share of one request's tokens per second that one more request
/// at once must add to the server's total to keep it.
pub const DEFAULT_MIN_GAIN: f64 = 0.2;
/// How long a measured rate (tokens per second at a concurrency) counts.
pub const DEFAULT_RATE_MEMORY: Duration = Duration::from_secs(30);
/// How often the baseline time to first token is taken afresh from the
/// fastest sample of the last period, so it follows a lasting change.
pub const DEFAULT_BASELINE_WINDOW: Duration = Duration::from_secs(30);

/// How the [`Controller`](crate::Controller) searches; every field has a
/// default (`DEFAULT_*`), so `capacity = "auto"` needs none of them.
///
/// ```
/// use corral_adaptive::AdaptiveConfig;
/// use std::time::Duration;
///
/// let config: AdaptiveConfig = toml::from_str(r#"
///     initial = 2
///     max = 8
///     probe_interval = "3s"
/// "#).unwrap();
/// assert!(config.validate().is_ok());
/// assert_eq!(config.probe_interval, Duration::from_secs(3));
///
/// let err = AdaptiveConfig { initial: 9, ..config }.validate().unwrap_err();
/// assert_eq!(err.to_string(), "initial: must be between min (1) and max (8)");
/// ```
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AdaptiveConfig {
    /// The limit before any measurement. Above the server's parallelism,
    /// requests wait inside it until the first answers come back.
    pub initial: usize,
    /// The limit never goes below this.
    pub min: usize,
    /// The limit never goes above this.
    pub max: usize,
    /// A time to first token above `queue_ratio` × baseline +
    /// `queue_margin` counts as queued inside the server (at least 1).
    pub queue_ratio: f64,
    /// See `queue_ratio`.
    #[serde(with = "humantime_serde")]
    pub queue_margin: Duration,
    /// After a level was seen to queue (or to add no throughput), how
    /// long before it is probed again; each failed probe of the same level
    /// doubles it, up to `max_probe_interval`.
    #[serde(with = "humantime_serde")]
    pub probe_interval: Duration,
    /// The longest wait between probes: how long at most before a server
    /// given more slots is noticed.
    #[serde(with = "humantime_serde")]
    pub max_probe_interval: Duration,
    /// Least share (0 to 1) of one request's tokens per second that the
    /// last request let in at once must add to the total; below it, the
    /// limit steps back. 0 judges by queueing alone.
    pub min_gain: f64,
    /// How long a measured tokens-per-second rate counts.
    #[serde(with = "humantime_serde")]
    pub rate_memory: Duration,
    /// How often the baseline time to first token is renewed from the
    /// fastest of the last period's samples.
    #[serde(with = "humantime_serde")]
    pub baseline_window: Duration,
}

impl Default for AdaptiveConfig {
    fn default() -> Self {
        Self {
            initial: DEFAULT_INITIAL,
            min: DEFAULT_MIN,
            max: DEFAULT_MAX,
            queue_ratio: DEFAULT_QUEUE_RATIO,
            queue_margin: DEFAULT_QUEUE_MARGIN,
            probe_interval: DEFAULT_PROBE_INTERVAL,
            max_probe_interval: DEFAULT_MAX_PROBE_INTERVAL,
            min_gain: DEFAULT_MIN_GAIN,
            rate_memory: DEFAULT_RATE_MEMORY,
            baseline_window: DEFAULT_BASELINE_WINDOW,
        }
    }
}

impl AdaptiveConfig {
    /// Checks the config, naming the key and the reason of the first
    /// problem.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.min == 0 {
            return Err(ConfigError::new("min", "must be at least 1"));
        }
        if self.max < self.min {
            return Err(ConfigError::new(
                "max",
                format!("must be at least min ({})", self.min),
            ));
        }
        if !(self.min..=self.max).contains(&self.initial) {
            return Err(ConfigError::new(
                "initial",
                format!("must be between min ({}) and max ({})", self.min, self.max),
            ));
        }
        if !(self.queue_ratio.is_finite() && self.queue_ratio >= 1.0) {
            return Err(ConfigError::new(
                "queue_ratio",
                "must be a number of at least 1",
            ));
        }
        if !(0.0..=1.0).contains(&self.min_gain) {
            return Err(ConfigError::new("min_gain", "must be between 0 and 1"));
        }
        for (key, value) in [
            ("probe_interval", self.probe_interval),
            ("rate_memory", self.rate_memory),
            ("baseline_window", self.baseline_window),
        ] {
            if value.is_zero() {
                return Err(ConfigError::new(key, "must be more than zero"));
            }
        }
        if self.max_probe_interval < self.probe_interval {
            return Err(ConfigError::new(
                "max_probe_interval",
                "must be at least probe_interval",
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_refusal_names_its_key() {
        let ok = AdaptiveConfig::default();
        assert_eq!(ok.validate(), Ok(()));
        let cases = [
            (
                AdaptiveConfig {
                    min: 0,
                    initial: 0,
                    ..ok.clone()
                },
                "min",
            ),
            (
                AdaptiveConfig {
                    max: 0,
                    ..ok.clone()
                },
                "max",
            ),
            (
                AdaptiveConfig {
                    initial: 33,
                    ..ok.clone()
                },
                "initial",
            ),
            (
                AdaptiveConfig {
                    queue_ratio: 0.5,
                    ..ok.clone()
                },
                "queue_ratio",
            ),
            (
                AdaptiveConfig {
                    queue_ratio: f64::NAN,
                    ..ok.clone()
                },
                "queue_ratio",
            ),
            (
                AdaptiveConfig {
                    min_gain: 1.5,
                    ..ok.clone()
                },
                "min_gain",
            ),
            (
                AdaptiveConfig {
                    min_gain: f64::NAN,
                    ..ok.clone()
                },
                "min_gain",
            ),
            (
                AdaptiveConfig {
                    probe_interval: Duration::ZERO,
                    ..ok.clone()
                },
                "probe_interval",
            ),
            (
                AdaptiveConfig {
                    rate_memory: Duration::ZERO,
                    ..ok.clone()
                },
                "rate_memory",
            ),
            (
                AdaptiveConfig {
                    baseline_window: Duration::ZERO,
                    ..ok.clone()
                },
                "baseline_window",
            ),
            (
                AdaptiveConfig {
                    max_probe_interval: Duration::from_secs(1),
                    ..ok.clone()
                },
                "max_probe_interval",
            ),
        ];
        for (config, key) in cases {
            assert_eq!(config.validate().unwrap_err().key(), key, "{config:?}");
        }
    }

    #[test]
    fn unknown_keys_are_refused() {
        assert!(toml::from_str::<AdaptiveConfig>("capacity = 3").is_err());
        let config: AdaptiveConfig = toml::from_str("").unwrap();
        assert_eq!(config, AdaptiveConfig::default());
    }
}
