use std::collections::BTreeMap;
use std::time::Duration;

use corral_core::{ConfigError, Endpoint};
use serde::Deserialize;

/// How long an answer is fresh unless its endpoint says otherwise.
pub const DEFAULT_TTL: Duration = Duration::from_secs(600);
/// How long past its lifetime an answer may still be served stale (at
/// degradation L2 and above).
pub const DEFAULT_STALE_FOR: Duration = Duration::from_secs(3600);
/// The most bytes of answers kept.
pub const DEFAULT_MAX_BYTES: u64 = 256 * 1024 * 1024;

/// Whose answers may be shared.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Namespace {
    /// Everyone's: the same question gets the same answer whoever asks.
    #[default]
    None,
    /// Each agent's own.
    Agent,
    /// Each class's own.
    Class,
}

/// What is cached, for how long, in how much memory.
///
/// ```
/// use corral_cache::CacheConfig;
///
/// let config: CacheConfig = toml::from_str(r#"
///     ttl = "10m"
///     ttl_by_endpoint = { embed = "1h", v1_embeddings = "1h" }
///     stale_for = "1h"
///     max_bytes = 268435456
///     namespace = "class"
/// "#).unwrap();
/// assert!(config.validate().is_ok());
/// ```
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CacheConfig {
    /// How long an answer stays fresh.
    #[serde(with = "humantime_serde")]
    pub ttl: Duration,
    /// Lifetimes by endpoint name (`embed`, `chat`, `v1_chat_completions`,
    /// ...), over `ttl`.
    #[serde(with = "ttl_map")]
    pub ttl_by_endpoint: BTreeMap<String, Duration>,
    /// How long past its lifetime an answer may be served stale, when
    /// degradation allows it.
    #[serde(with = "humantime_serde")]
    pub stale_for: Duration,
    /// The most bytes of answers kept; the least used go first.
    pub max_bytes: u64,
    /// Whose answers are shared.
    pub namespace: Namespace,
    /// Join identical requests in flight to one upstream call.
    pub coalesce: bool,
    /// The largest answer kept, in bytes.
    pub max_entry_bytes: usize,
}

mod ttl_map {
    use std::collections::BTreeMap;
    use std::time::Duration;

    use serde::{Deserialize, Deserializer};

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<BTreeMap<String, Duration>, D::Error> {
        #[derive(Deserialize)]
        struct Wrapped(#[serde(with = "humantime_serde")] Duration);
        let map = BTreeMap::<String, Wrapped>::deserialize(d)?;
        Ok(map.into_iter().map(|(k, Wrapped(v))| (k, v)).collect())
    }
}

impl Default for CacheConfig {
    fn default() -> Self {
        Self {
            ttl: DEFAULT_TTL,
            ttl_by_endpoint: BTreeMap::new(),
            stale_for: DEFAULT_STALE_FOR,
            max_bytes: DEFAULT_MAX_BYTES,
            namespace: Namespace::None,
            coalesce: true,
            max_entry_bytes: 8 * 1024 * 1024,
        }
    }
}

impl CacheConfig {
    /// Checks the config, naming the key and the reason of the first
    /// problem.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.ttl.is_zero() {
            return Err(ConfigError::new("ttl", "must be more than zero"));
        }
        for (endpoint, ttl) in &self.ttl_by_endpoint {
            if !Endpoint::ALL.iter().any(|e| e.as_str() == endpoint) {
                return Err(ConfigError::new(
                    format!("ttl_by_endpoint.{endpoint}"),
                    "is not an endpoint name",
                ));
            }
            if ttl.is_zero() {
                return Err(ConfigError::new(
                    format!("ttl_by_endpoint.{endpoint}"),
                    "must be more than zero",
                ));
            }
        }
        if self.max_bytes == 0 {
            return Err(ConfigError::new("max_bytes", "must be at least 1"));
        }
        Ok(())
    }

    pub(crate) fn ttl_for(&self, endpoint: Endpoint) -> Duration {
        self.ttl_by_endpoint
            .get(endpoint.as_str())
            .copied()
            .unwrap_or(self.ttl)
    }
}
