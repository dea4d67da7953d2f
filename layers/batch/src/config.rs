use std::time::Duration;

use corral_core::ConfigError;
use serde::Deserialize;

/// How long to gather, and how much.
///
/// ```
/// use corral_batch::BatchConfig;
///
/// let config: BatchConfig = toml::from_str("window = \"5ms\"\nmax_inputs = 64").unwrap();
/// assert!(config.validate().is_ok());
/// ```
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BatchConfig {
    /// How long the first request of a batch waits for others.
    #[serde(with = "humantime_serde")]
    pub window: Duration,
    /// The most inputs in one upstream call; a batch that reaches it goes
    /// at once.
    pub max_inputs: usize,
}

impl Default for BatchConfig {
    fn default() -> Self {
        Self {
            window: Duration::from_millis(5),
            max_inputs: 64,
        }
    }
}

impl BatchConfig {
    /// Checks the config, naming the key and the reason of the first
    /// problem.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.window.is_zero() || self.window > Duration::from_secs(1) {
            return Err(ConfigError::new(
                "window",
                "must be more than zero and at most 1 s",
            ));
        }
        if self.max_inputs < 2 {
            return Err(ConfigError::new("max_inputs", "must be at least 2"));
        }
        Ok(())
    }
}
