use std::collections::BTreeMap;
use std::time::Duration;

use corral_core::{ConfigError, Endpoint, Priority};
use serde::Deserialize;

/// What each level does, and when the levels change.
///
/// Load is `(in flight + waiting) / (capacity × saturation)`, capped at 1,
/// smoothed over `smoothing`. Levels rise above `up` and fall below
/// `down` (the design's 60/80/95 % up, 50/70/90 % down), so a load that
/// hovers at a threshold does not flap.
///
/// ```
/// use corral_degrade::DegradeConfig;
///
/// let config: DegradeConfig = toml::from_str(r#"
///     up = [0.60, 0.80, 0.95]
///     down = [0.50, 0.70, 0.90]
///     l1_max_tokens = 512
///     l2_model = "tinyllama"
///     l2_refuse_above = 7
///     critical_keep_up_to = 2
///     critical_classes = ["system"]
///     [defaults]
///     chat = "The service is overloaded; this is a default answer."
/// "#).unwrap();
/// assert!(config.validate().is_ok());
/// ```
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DegradeConfig {
    /// Load above which Normal→L1, L1→L2, L2→Critical.
    pub up: [f64; 3],
    /// Load below which L1→Normal, L2→L1, Critical→L2.
    pub down: [f64; 3],
    /// Work in the system, as a multiple of capacity, that is 100 % load
    /// (4: a queue three times the capacity).
    pub saturation: f64,
    /// The time constant of the load's smoothing (exponential moving
    /// average); `0s` for none.
    #[serde(with = "humantime_serde")]
    pub smoothing: Duration,
    /// From L1: `num_predict`/`max_tokens` capped at this.
    pub l1_max_tokens: Option<u64>,
    /// At L1: cache lifetimes multiplied by this.
    pub l1_cache_ttl_factor: f64,
    /// From L2: non-critical requests go to this model...
    pub l2_model: Option<String>,
    /// ...or, for the models named here, to the one given.
    pub l2_models: BTreeMap<String, String>,
    /// From L2: priorities above this are refused (503).
    pub l2_refuse_above: Option<u8>,
    /// From L2: cache lifetimes multiplied by this; stale entries served.
    pub l2_cache_ttl_factor: f64,
    /// At Critical: only priorities up to this are processed.
    pub critical_keep_up_to: u8,
    /// At Critical, the answer to the others by endpoint name (`generate`,
    /// `chat`, `v1_chat_completions`, `v1_completions`): a default text in
    /// the endpoint's shape; an endpoint without one gets 503.
    pub defaults: BTreeMap<String, String>,
    /// The longest `Retry-After` on degraded refusals. A refusal is told
    /// when the load, draining at its recent rate, will have fallen below
    /// the threshold of the level that lets it in; this when that is
    /// longer, nothing drains, or the level is forced.
    #[serde(with = "humantime_serde")]
    pub retry_after: Duration,
    /// Classes never rewritten nor refused.
    pub critical_classes: Vec<String>,
    /// Classes whose requests may run on the smaller model (`l2_models`,
    /// else `l2_model`) at any level, when the queue would keep them past
    /// their time-to-first-token objective (`X-Corral-Ttft-Ms` or the
    /// class's `ttft`) and the smaller model's would not; `*` for all.
    pub ttft_fallback_classes: Vec<String>,
}

impl Default for DegradeConfig {
    fn default() -> Self {
        Self {
            up: [0.60, 0.80, 0.95],
            down: [0.50, 0.70, 0.90],
            saturation: 4.0,
            smoothing: Duration::from_secs(5),
            l1_max_tokens: Some(512),
            l1_cache_ttl_factor: 2.0,
            l2_model: Some("tinyllama".into()),
            l2_models: BTreeMap::new(),
            l2_refuse_above: Some(7),
            l2_cache_ttl_factor: 4.0,
            critical_keep_up_to: 2,
            defaults: BTreeMap::new(),
            retry_after: Duration::from_secs(30),
            critical_classes: Vec::new(),
            ttft_fallback_classes: Vec::new(),
        }
    }
}

impl DegradeConfig {
    /// Checks the config, naming the key and the reason of the first
    /// problem.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let in_range = |v: f64| (0.0..=1.0).contains(&v);
        if !self.up.iter().chain(&self.down).all(|v| in_range(*v)) {
            return Err(ConfigError::new(
                "up",
                "thresholds are shares of full load, from 0 to 1",
            ));
        }
        if !(self.up[0] < self.up[1] && self.up[1] < self.up[2]) {
            return Err(ConfigError::new(
                "up",
                "must rise: [to L1, to L2, to Critical]",
            ));
        }
        if !(self.down[0] < self.down[1] && self.down[1] < self.down[2]) {
            return Err(ConfigError::new(
                "down",
                "must rise: [to Normal, to L1, to L2]",
            ));
        }
        for i in 0..3 {
            if self.down[i] >= self.up[i] {
                return Err(ConfigError::new(
                    format!("down[{i}]"),
                    format!(
                        "must be below up[{i}] ({}), or the level would flap",
                        self.up[i]
                    ),
                ));
            }
        }
        if !(self.saturation > 0.0 && self.saturation.is_finite()) {
            return Err(ConfigError::new("saturation", "must be a number above 0"));
        }
        if self.l1_max_tokens == Some(0) {
            return Err(ConfigError::new("l1_max_tokens", "must be at least 1"));
        }
        for (key, factor) in [
            ("l1_cache_ttl_factor", self.l1_cache_ttl_factor),
            ("l2_cache_ttl_factor", self.l2_cache_ttl_factor),
        ] {
            if !(factor >= 1.0 && factor.is_finite()) {
                return Err(ConfigError::new(key, "must be at least 1"));
            }
        }
        if let Some(p) = self.l2_refuse_above {
            Priority::new(p).map_err(|e| ConfigError::new("l2_refuse_above", e.to_string()))?;
        }
        Priority::new(self.critical_keep_up_to)
            .map_err(|e| ConfigError::new("critical_keep_up_to", e.to_string()))?;
        for endpoint in self.defaults.keys() {
            let known = [
                Endpoint::Generate,
                Endpoint::Chat,
                Endpoint::OpenAiChat,
                Endpoint::OpenAiCompletions,
            ];
            if !known.iter().any(|e| e.as_str() == endpoint) {
                return Err(ConfigError::new(
                    format!("defaults.{endpoint}"),
                    "default answers exist for generate, chat, v1_chat_completions and v1_completions",
                ));
            }
        }
        Ok(())
    }
}
