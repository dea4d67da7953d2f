use std::collections::BTreeMap;

use corral_core::ConfigError;
use serde::Deserialize;

use crate::budget::BudgetMode;

/// Tokens a generation is expected to produce when the request sets no
/// `num_predict`/`max_tokens`: what a token quota charges up front.
pub const DEFAULT_GENERATION_TOKENS: u64 = 256;

/// A class's limits. Per-agent limits apply to each agent of the class
/// separately; `class_*` limits to all of them together.
///
/// ```
/// use corral_ratelimit::Limits;
///
/// let opus: Limits = toml::from_str("requests_per_minute = 10\ntokens_per_minute = 20000").unwrap();
/// assert_eq!(opus.requests_per_minute, Some(10));
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Limits {
    /// Requests per minute, per agent.
    #[serde(default)]
    pub requests_per_minute: Option<u64>,
    /// Requests an agent may send at once before the rate applies
    /// (default: a whole minute's worth).
    #[serde(default)]
    pub burst: Option<u64>,
    /// Generated tokens per minute, per agent: charged from
    /// `num_predict`/`max_tokens` up front, corrected from `eval_count`.
    #[serde(default)]
    pub tokens_per_minute: Option<u64>,
    /// Requests per minute for the whole class.
    #[serde(default)]
    pub class_requests_per_minute: Option<u64>,
    /// Generated tokens per minute for the whole class.
    #[serde(default)]
    pub class_tokens_per_minute: Option<u64>,
    /// Generated tokens per UTC day, per agent: a budget, charged as the
    /// per-minute quota is, whole again at midnight UTC.
    #[serde(default)]
    pub tokens_per_day: Option<u64>,
    /// Generated tokens per UTC calendar month, per agent.
    #[serde(default)]
    pub tokens_per_month: Option<u64>,
    /// Generated tokens per UTC day for the whole class.
    #[serde(default)]
    pub class_tokens_per_day: Option<u64>,
    /// Generated tokens per UTC calendar month for the whole class.
    #[serde(default)]
    pub class_tokens_per_month: Option<u64>,
    /// `shadow`: this class's budgets only report when spent (default:
    /// the layer's `budget_mode`).
    #[serde(default)]
    pub budget_mode: Option<BudgetMode>,
}

/// Who may send how much.
///
/// ```
/// use corral_ratelimit::RateLimitConfig;
///
/// let config: RateLimitConfig = toml::from_str(r#"
///     [classes.opus]
///     requests_per_minute = 10
///     [classes.sonnet]
///     requests_per_minute = 20
///     [classes.system]
///     requests_per_minute = 50
/// "#).unwrap();
/// assert!(config.validate().is_ok());
/// ```
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RateLimitConfig {
    /// Limits by class name; a class without an entry is not limited.
    pub classes: BTreeMap<String, Limits>,
    /// Tokens charged up front for a generation that sets no
    /// `num_predict`/`max_tokens`.
    pub default_generation_tokens: u64,
    /// Whether spent day and month budgets refuse (`enforce`, the
    /// default) or are only reported (`shadow`).
    pub budget_mode: BudgetMode,
}

impl Default for RateLimitConfig {
    fn default() -> Self {
        Self {
            classes: BTreeMap::new(),
            default_generation_tokens: DEFAULT_GENERATION_TOKENS,
            budget_mode: BudgetMode::Enforce,
        }
    }
}

impl RateLimitConfig {
    /// Checks the config, naming the key and the reason of the first
    /// problem.
    pub fn validate(&self) -> Result<(), ConfigError> {
        for (class, limits) in &self.classes {
            let fields = [
                ("requests_per_minute", limits.requests_per_minute),
                ("burst", limits.burst),
                ("tokens_per_minute", limits.tokens_per_minute),
                (
                    "class_requests_per_minute",
                    limits.class_requests_per_minute,
                ),
                ("class_tokens_per_minute", limits.class_tokens_per_minute),
                ("tokens_per_day", limits.tokens_per_day),
                ("tokens_per_month", limits.tokens_per_month),
                ("class_tokens_per_day", limits.class_tokens_per_day),
                ("class_tokens_per_month", limits.class_tokens_per_month),
            ];
            for (name, value) in fields {
                if value == Some(0) {
                    return Err(ConfigError::new(
                        format!("classes.{class}.{name}"),
                        "must be at least 1 (leave it out for no limit)",
                    ));
                }
            }
            let budgets = [
                ("tokens_per_day", limits.tokens_per_day),
                ("tokens_per_month", limits.tokens_per_month),
                ("class_tokens_per_day", limits.class_tokens_per_day),
                ("class_tokens_per_month", limits.class_tokens_per_month),
            ];
            for (name, value) in budgets {
                // Redis' scripts count in doubles: exact up to 2^53.
                if value.is_some_and(|v| v > 1 << 53) {
                    return Err(ConfigError::new(
                        format!("classes.{class}.{name}"),
                        "must be at most 2^53 (9007199254740992)",
                    ));
                }
            }
            if limits.burst.is_some() && limits.requests_per_minute.is_none() {
                return Err(ConfigError::new(
                    format!("classes.{class}.burst"),
                    "needs requests_per_minute",
                ));
            }
        }
        Ok(())
    }
}
