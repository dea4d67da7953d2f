use std::collections::HashSet;
use std::time::Duration;

use corral_core::{ConfigError, Endpoint};
use serde::Deserialize;

/// Compartments and the rules that put requests in them.
///
/// ```
/// use corral_bulkhead::BulkheadConfig;
///
/// let config: BulkheadConfig = toml::from_str(r#"
///     [[compartments]]
///     name = "opus_agents"
///     max_concurrent = 10
///     [[compartments]]
///     name = "batch_ops"
///     max_concurrent = 15
///     max_waiting = 30
///     max_wait = "10s"
///
///     [[rules]]
///     compartment = "opus_agents"
///     class = "opus"
///     [[rules]]
///     compartment = "batch_ops"
///     endpoint = "embed"
/// "#).unwrap();
/// assert!(config.validate().is_ok());
/// ```
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BulkheadConfig {
    /// The compartments.
    pub compartments: Vec<CompartmentConfig>,
    /// Which requests go where, first match wins; a request no rule
    /// matches is not confined.
    pub rules: Vec<RuleConfig>,
    /// Confine metadata reads and model management too (by default only
    /// inference is confined).
    pub all_endpoints: bool,
}

/// One compartment.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CompartmentConfig {
    /// Its name, as rules refer to it and metrics label it.
    pub name: String,
    /// Requests running in it at once.
    pub max_concurrent: usize,
    /// Requests that may wait when it is full; 0 refuses at once.
    #[serde(default)]
    pub max_waiting: usize,
    /// How long a waiting request waits before it is refused.
    #[serde(default, with = "humantime_serde")]
    pub max_wait: Duration,
}

/// One rule: every field given must match.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleConfig {
    /// The compartment a matching request goes to.
    pub compartment: String,
    /// The agent's class.
    #[serde(default)]
    pub class: Option<String>,
    /// The agent.
    #[serde(default)]
    pub agent: Option<String>,
    /// The endpoint's name (`generate`, `chat`, `embed`, `v1_chat_completions`, ...).
    #[serde(default)]
    pub endpoint: Option<String>,
    /// The model, as the request names it (`llama3` matches `llama3:latest`).
    #[serde(default)]
    pub model: Option<String>,
}

impl BulkheadConfig {
    /// Checks the config, naming the key and the reason of the first
    /// problem (an unknown compartment in a rule among them).
    pub fn validate(&self) -> Result<(), ConfigError> {
        let mut names = HashSet::new();
        for (i, c) in self.compartments.iter().enumerate() {
            let at = |key: &str| format!("compartments[{i}].{key}");
            if c.name.trim().is_empty() {
                return Err(ConfigError::new(at("name"), "must not be empty"));
            }
            if !names.insert(c.name.as_str()) {
                return Err(ConfigError::new(
                    at("name"),
                    format!("compartment {:?} is defined twice", c.name),
                ));
            }
            if c.max_concurrent == 0 {
                return Err(ConfigError::new(at("max_concurrent"), "must be at least 1"));
            }
            if c.max_waiting > 0 && c.max_wait.is_zero() {
                return Err(ConfigError::new(
                    at("max_wait"),
                    "must be more than zero when max_waiting is set",
                ));
            }
        }
        for (i, rule) in self.rules.iter().enumerate() {
            if !names.contains(rule.compartment.as_str()) {
                let known: Vec<&str> = self.compartments.iter().map(|c| c.name.as_str()).collect();
                return Err(ConfigError::new(
                    format!("rules[{i}].compartment"),
                    format!(
                        "unknown compartment {:?} (known: {})",
                        rule.compartment,
                        known.join(", ")
                    ),
                ));
            }
            if let Some(endpoint) = &rule.endpoint {
                if !Endpoint::ALL.iter().any(|e| e.as_str() == endpoint) {
                    let known: Vec<&str> = Endpoint::ALL.iter().map(|e| e.as_str()).collect();
                    return Err(ConfigError::new(
                        format!("rules[{i}].endpoint"),
                        format!(
                            "unknown endpoint {endpoint:?} (known: {})",
                            known.join(", ")
                        ),
                    ));
                }
            }
        }
        Ok(())
    }
}
