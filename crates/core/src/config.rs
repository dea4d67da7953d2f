use std::fmt;

/// A configuration value refused, with the key it was found under and why.
///
/// Layer constructors return this instead of panicking; the proxy prefixes
/// the file and the layer's position so an operator reads, for example,
/// `corral.toml: layers[2].max_queue: must be at least 1`.
///
/// ```
/// use corral_core::ConfigError;
///
/// let err = ConfigError::new("max_queue", "must be at least 1").within("layers[2]");
/// assert_eq!(err.to_string(), "layers[2].max_queue: must be at least 1");
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    key: String,
    reason: String,
}

impl ConfigError {
    /// A refusal of the value at `key` for `reason`.
    pub fn new(key: impl Into<String>, reason: impl Into<String>) -> Self {
        Self {
            key: key.into(),
            reason: reason.into(),
        }
    }

    /// The same refusal, with its key placed under `parent`.
    pub fn within(mut self, parent: impl fmt::Display) -> Self {
        self.key = if self.key.is_empty() {
            parent.to_string()
        } else if self.key.starts_with('[') {
            format!("{parent}{}", self.key)
        } else {
            format!("{parent}.{}", self.key)
        };
        self
    }

    /// The dotted key of the refused value (`classes[1].priority`).
    pub fn key(&self) -> &str {
        &self.key
    }

    /// Why the value was refused.
    pub fn reason(&self) -> &str {
        &self.reason
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.key.is_empty() {
            f.write_str(&self.reason)
        } else {
            write!(f, "{}: {}", self.key, self.reason)
        }
    }
}

impl std::error::Error for ConfigError {}
