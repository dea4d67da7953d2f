//! Why the registry refused.

use corral_core::StateUnavailable;

/// Why the registry refused a call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RegistryError {
    /// What the agent sent breaks a rule; the message says which (400).
    Invalid(String),
    /// The registry holds `max_agents` live agents already (503).
    Full {
        /// The limit.
        max_agents: usize,
    },
    /// The shared Redis did not answer (503).
    Unavailable(StateUnavailable),
}

impl std::fmt::Display for RegistryError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RegistryError::Invalid(message) => f.write_str(message),
            RegistryError::Full { max_agents } => write!(
                f,
                "the registry is full ({max_agents} live agents): try again once one leaves or expires"
            ),
            RegistryError::Unavailable(e) => write!(f, "the registry is unavailable: {e}"),
        }
    }
}

impl std::error::Error for RegistryError {}

impl From<StateUnavailable> for RegistryError {
    fn from(e: StateUnavailable) -> Self {
        RegistryError::Unavailable(e)
    }
}
