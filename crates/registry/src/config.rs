//! `[registry]`: how long entries live and how many there may be.

use std::time::Duration;

use corral_core::ConfigError;
use serde::{Deserialize, Serialize};

/// The TTL of an entry announced without one.
pub const DEFAULT_TTL: Duration = Duration::from_secs(30);
/// The longest TTL an agent may ask for.
pub const DEFAULT_MAX_TTL: Duration = Duration::from_secs(60 * 60);
/// How many agents the registry holds at most.
pub const DEFAULT_MAX_AGENTS: usize = 10_000;
/// How often expired entries are noticed (events, the gauge).
pub const DEFAULT_SWEEP_INTERVAL: Duration = Duration::from_secs(1);

/// Above this many agents the registry would be a database, not a
/// directory of live agents: refused at load.
const MAX_MAX_AGENTS: usize = 1_000_000;

/// `[registry]`.
///
/// ```
/// let config: corral_registry::RegistryConfig =
///     toml_like(r#"{"default_ttl": "10s", "max_agents": 500}"#);
/// assert_eq!(config.default_ttl, std::time::Duration::from_secs(10));
/// assert_eq!(config.max_ttl, corral_registry::DEFAULT_MAX_TTL);
/// assert!(config.validate().is_ok());
/// # fn toml_like(s: &str) -> corral_registry::RegistryConfig { serde_json::from_str(s).unwrap() }
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RegistryConfig {
    /// The TTL of an entry whose `PUT` names none: without a heartbeat
    /// or another `PUT` within it, the entry expires.
    #[serde(with = "humantime_serde")]
    pub default_ttl: Duration,
    /// The longest TTL an entry may ask for; longer is refused (400), so
    /// a dead agent cannot stay listed for a day.
    #[serde(with = "humantime_serde")]
    pub max_ttl: Duration,
    /// How many live agents the registry holds; a new agent beyond it is
    /// refused (503) until one leaves or expires. Renewals always pass.
    pub max_agents: usize,
    /// How often the registry looks for expired entries: their
    /// `registry_expired` event and the gauge follow within this.
    /// Lookups never list an expired entry, whatever the interval.
    #[serde(with = "humantime_serde")]
    pub sweep_interval: Duration,
    /// Whether a `PUT`, heartbeat or `DELETE` needs the agent's API key
    /// (an `X-Agent-Id` alone is a claim anyone can make, and a listed
    /// endpoint is where others send work). Unset: on when any
    /// `[[agents]]` entry has a key, off otherwise; the proxy decides.
    /// Writes from the shared `anonymous` agent are refused either way.
    pub require_key: Option<bool>,
    /// Whether an endpoint may be a loopback, private, link-local or
    /// metadata address written out (`http://127.0.0.1:8080`,
    /// `http://169.254.169.254`); refused (400) otherwise, lest an agent
    /// aim the others, and the proxy's sagas, into the proxy's own
    /// network. Names are not resolved: only literal addresses (and
    /// `localhost`) are judged.
    pub allow_private_endpoints: bool,
}

impl Default for RegistryConfig {
    fn default() -> Self {
        Self {
            default_ttl: DEFAULT_TTL,
            max_ttl: DEFAULT_MAX_TTL,
            max_agents: DEFAULT_MAX_AGENTS,
            sweep_interval: DEFAULT_SWEEP_INTERVAL,
            require_key: None,
            allow_private_endpoints: false,
        }
    }
}

impl RegistryConfig {
    /// Checks the bounds, naming the key and the reason of the first
    /// problem.
    ///
    /// ```
    /// let config = corral_registry::RegistryConfig {
    ///     default_ttl: std::time::Duration::from_secs(7200),
    ///     ..Default::default()
    /// };
    /// assert_eq!(config.validate().unwrap_err().key(), "default_ttl");
    /// ```
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.max_ttl.is_zero() {
            return Err(ConfigError::new("max_ttl", "must be more than zero"));
        }
        if self.default_ttl.is_zero() {
            return Err(ConfigError::new("default_ttl", "must be more than zero"));
        }
        if self.default_ttl > self.max_ttl {
            return Err(ConfigError::new(
                "default_ttl",
                format!(
                    "{} is above max_ttl ({}): an entry announced without a TTL would be refused",
                    humantime::format_duration(self.default_ttl),
                    humantime::format_duration(self.max_ttl)
                ),
            ));
        }
        if self.max_agents == 0 || self.max_agents > MAX_MAX_AGENTS {
            return Err(ConfigError::new(
                "max_agents",
                format!("must be between 1 and {MAX_MAX_AGENTS}"),
            ));
        }
        if self.sweep_interval < Duration::from_millis(10) {
            return Err(ConfigError::new(
                "sweep_interval",
                "must be at least 10ms: each sweep reads every entry",
            ));
        }
        if self.sweep_interval > self.max_ttl {
            return Err(ConfigError::new(
                "sweep_interval",
                "must not be above max_ttl: expiries would be noticed long after they happen",
            ));
        }
        Ok(())
    }
}
