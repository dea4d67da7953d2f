//! `corral-registry`: agents announce what they can do; others find the
//! live ones. (Being built: see issue 17.)

/// `[registry]`.
#[derive(Debug, Clone, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegistryConfig {}
