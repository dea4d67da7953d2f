//! `corral-jobs`: requests accepted at once and answered later. (Being
//! built: see issue 17.)

/// `[jobs]`.
#[derive(Debug, Clone, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JobsConfig {}
