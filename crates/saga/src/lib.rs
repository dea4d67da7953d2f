//! `corral-saga`: steps with compensations, run in order, compensated in
//! reverse on a failure, resumed from a log after a crash. (Being built:
//! see issue 17.)

/// `[sagas]`.
#[derive(Debug, Clone, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SagaConfig {}
