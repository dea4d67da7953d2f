//! `[[layers]] kind = "auth"`: signing secrets, the freshness window, the
//! replay memory, and what each class may call.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use corral_core::{ConfigError, Endpoint};
use serde::Deserialize;

/// How far a request's `X-Timestamp` may be from now: the design's
/// five minutes.
pub const DEFAULT_FRESHNESS: Duration = Duration::from_secs(300);
/// The widest freshness window `validate` accepts.
const MAX_FRESHNESS: Duration = Duration::from_secs(24 * 60 * 60);
/// Request ids remembered at most (100,000 agents' requests in twice the
/// freshness window: 166 a second).
pub const DEFAULT_REPLAY_MEMORY: usize = 100_000;
/// What a class may call when the config says nothing of it.
pub const DEFAULT_ENDPOINTS: [&str; 2] = ["inference", "metadata"];

/// The auth layer's options.
///
/// ```
/// use corral_auth::AuthConfig;
///
/// let config: AuthConfig = toml::from_str(r#"
///     freshness = "5m"
///     require_signatures = false
///     [secrets]
///     planner-1 = { env = "PLANNER_1_SECRET" }
///     [classes.system]
///     endpoints = ["inference", "metadata", "management"]
///     [classes.batch]
///     models = ["llama3*", "nomic-embed-text"]
/// "#).unwrap();
/// assert!(config.validate().is_ok());
/// ```
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    /// Every agent must sign: one without a secret is refused. Unset,
    /// only agents with a secret must sign.
    pub require_signatures: bool,
    /// How far `X-Timestamp` may be from Corral's clock, either way; at
    /// most 24 hours.
    #[serde(with = "humantime_serde")]
    pub freshness: Duration,
    /// Request ids remembered at most (see [`crate::MemoryReplay`]).
    pub replay_memory: usize,
    /// The largest body a signed request may have that is not already
    /// read (blob uploads): it must be read to check the signature.
    pub max_signed_body_bytes: usize,
    /// Each signing agent's secret, by agent id.
    pub secrets: BTreeMap<String, Secret>,
    /// What each class may call, by class name.
    pub classes: BTreeMap<String, ClassPermissions>,
    /// What a class not in `classes` may call: endpoint kinds
    /// (`inference`, `metadata`, `management`, `other`, `all`) or
    /// endpoint names (`chat`, `pull`, `v1_chat_completions`, ...).
    pub default_endpoints: Vec<String>,
}

impl Default for AuthConfig {
    fn default() -> Self {
        Self {
            require_signatures: false,
            freshness: DEFAULT_FRESHNESS,
            replay_memory: DEFAULT_REPLAY_MEMORY,
            max_signed_body_bytes: 32 << 20,
            secrets: BTreeMap::new(),
            classes: BTreeMap::new(),
            default_endpoints: DEFAULT_ENDPOINTS.iter().map(|s| s.to_string()).collect(),
        }
    }
}

/// Where a secret comes from: exactly one of `value`, `env`, `file`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Secret {
    /// The secret itself (keep the file private; prefer `env` or `file`).
    #[serde(default)]
    pub value: Option<String>,
    /// An environment variable that holds it.
    #[serde(default)]
    pub env: Option<String>,
    /// A file that holds it (trailing whitespace ignored).
    #[serde(default)]
    pub file: Option<PathBuf>,
}

impl Secret {
    /// The secret's bytes; `key` names it in errors.
    pub fn resolve(&self, key: &str) -> Result<Vec<u8>, ConfigError> {
        let secret = match (&self.value, &self.env, &self.file) {
            (Some(value), None, None) => value.clone(),
            (None, Some(var), None) => std::env::var(var).map_err(|_| {
                ConfigError::new(
                    format!("{key}.env"),
                    format!("the variable {var} is not set"),
                )
            })?,
            (None, None, Some(path)) => std::fs::read_to_string(path)
                .map_err(|e| {
                    ConfigError::new(
                        format!("{key}.file"),
                        format!("cannot read {}: {e}", path.display()),
                    )
                })?
                .trim_end()
                .to_string(),
            _ => {
                return Err(ConfigError::new(
                    key,
                    "give exactly one of value, env or file",
                ))
            }
        };
        if secret.len() < 16 {
            return Err(ConfigError::new(
                key,
                "must be at least 16 characters: a short secret can be guessed",
            ));
        }
        Ok(secret.into_bytes())
    }
}

/// What one class may call.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClassPermissions {
    /// Endpoint kinds or names it may call; unset, `default_endpoints`.
    #[serde(default)]
    pub endpoints: Option<Vec<String>>,
    /// Models it may use: names (`llama3` also matches `llama3:latest`)
    /// or prefixes ending in `*`; unset, any.
    #[serde(default)]
    pub models: Option<Vec<String>>,
}

impl AuthConfig {
    /// Checks the config, naming the key and reason of the first problem.
    /// Secrets are resolved when the layer is built.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.freshness.is_zero() {
            return Err(ConfigError::new("freshness", "must be more than zero"));
        }
        // Request ids are remembered for twice the window: a window near
        // `Duration::MAX` overflowed that on every signed request.
        if self.freshness > MAX_FRESHNESS {
            return Err(ConfigError::new(
                "freshness",
                "must be at most 24h (the design's window is 5m)",
            ));
        }
        if self.replay_memory == 0 {
            return Err(ConfigError::new("replay_memory", "must be at least 1"));
        }
        endpoint_set(&self.default_endpoints).map_err(|e| at("default_endpoints", e))?;
        for (class, permissions) in &self.classes {
            if let Some(endpoints) = &permissions.endpoints {
                endpoint_set(endpoints)
                    .map_err(|e| at(&format!("classes.{class}.endpoints"), e))?;
            }
            for model in permissions.models.iter().flatten() {
                if model.is_empty() || model.trim_end_matches('*').contains('*') {
                    return Err(ConfigError::new(
                        format!("classes.{class}.models"),
                        format!("{model:?}: a model name, or a prefix with one `*` at its end"),
                    ));
                }
            }
        }
        Ok(())
    }
}

fn at(key: &str, reason: String) -> ConfigError {
    ConfigError::new(key, reason)
}

/// The endpoints a list of kinds and names allows, as a table indexed
/// like [`Endpoint::ALL`].
pub(crate) fn endpoint_set(names: &[String]) -> Result<[bool; Endpoint::ALL.len()], String> {
    let mut allowed = [false; Endpoint::ALL.len()];
    for name in names {
        let mut matched = false;
        for (i, endpoint) in Endpoint::ALL.iter().enumerate() {
            let kind = match endpoint.kind() {
                corral_core::EndpointKind::Inference => "inference",
                corral_core::EndpointKind::Metadata => "metadata",
                corral_core::EndpointKind::Management => "management",
                corral_core::EndpointKind::Other => "other",
            };
            if name == "all" || name == kind || name == endpoint.as_str() {
                allowed[i] = true;
                matched = true;
            }
        }
        if !matched {
            return Err(format!(
                "{name:?} is neither an endpoint kind (inference, metadata, management, other, all) nor an endpoint name (chat, pull, v1_chat_completions, ...)"
            ));
        }
    }
    Ok(allowed)
}
