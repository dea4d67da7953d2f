//! The pure part: from a saga's log to its state and what to do next.

use serde::Serialize;
use serde_json::Value;

use crate::Transition;

/// Where a saga stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SagaStatus {
    /// Running its steps.
    Running,
    /// A step failed or it was cancelled: undoing what it did.
    Compensating,
    /// Every step succeeded.
    Completed,
    /// Every step that ran was compensated.
    Compensated,
    /// A compensation kept failing: an operator must look.
    Failed,
}

impl SagaStatus {
    /// Whether the saga is over.
    pub fn is_final(self) -> bool {
        matches!(
            self,
            SagaStatus::Completed | SagaStatus::Compensated | SagaStatus::Failed
        )
    }
}

/// Where an action or a compensation stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    /// Not run.
    #[default]
    Pending,
    /// Started, not known to be over (running now, or its runner died).
    Running,
    /// Succeeded.
    Done,
    /// Failed.
    Failed,
}

/// One step's state, as the log tells it.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct StepState {
    /// The action's.
    pub action: Phase,
    /// The compensation's.
    pub compensation: Phase,
    /// What the action returned.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub output: Option<Value>,
    /// Why the action or its compensation failed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// What a runner does next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Next {
    /// Run step `i`'s action (again, with the same idempotency key, if it
    /// was started before a crash).
    Run(usize),
    /// Run step `j`'s compensation.
    Compensate(usize),
    /// Write `completed`: every step succeeded.
    Complete,
    /// Write `compensated_all`: nothing is left to compensate.
    FinishCompensation,
    /// Nothing: the saga is over, with this status.
    Over(SagaStatus),
}

/// Each of `steps` steps' state after `log`; entries about steps past
/// the end are ignored.
pub fn step_states(log: &[Transition], steps: usize) -> Vec<StepState> {
    let mut states = vec![StepState::default(); steps];
    for transition in log {
        let Some(state) = transition.step().and_then(|i| states.get_mut(i)) else {
            continue;
        };
        match transition {
            // `Done` is sticky: a stale runner's later start or failure of
            // the same step must not hide an effect that happened, or it
            // would never be compensated.
            Transition::StepStarted { .. } if state.action != Phase::Done => {
                state.action = Phase::Running;
            }
            Transition::StepDone { output, .. } => {
                state.action = Phase::Done;
                state.output = Some(output.clone());
            }
            Transition::StepFailed { reason, .. } if state.action != Phase::Done => {
                state.action = Phase::Failed;
                state.error = Some(reason.clone());
            }
            Transition::Compensating { .. } => state.compensation = Phase::Running,
            Transition::Compensated { .. } => state.compensation = Phase::Done,
            Transition::Failed { reason, .. } => {
                state.compensation = Phase::Failed;
                state.error = Some(reason.clone());
            }
            _ => {}
        }
    }
    states
}

/// The saga's status after `log`.
pub fn status(log: &[Transition]) -> SagaStatus {
    let mut status = SagaStatus::Running;
    for transition in log {
        status = match transition {
            Transition::Completed => return SagaStatus::Completed,
            Transition::CompensatedAll => return SagaStatus::Compensated,
            Transition::Failed { .. } => return SagaStatus::Failed,
            Transition::StepFailed { .. } | Transition::Cancelled { .. } => {
                SagaStatus::Compensating
            }
            _ => status,
        };
    }
    status
}

/// What to do after `log`, for a saga of `steps` steps.
///
/// Going forward, the first step whose action is not done runs (a step
/// started before a crash runs again). Once a step failed or the saga
/// was cancelled, compensation goes in reverse over the steps whose
/// action is done *or was started and never ended* (its effect is
/// unknown; its compensation, called with its idempotency key, is safe);
/// a failed step is not compensated. A compensation started before a
/// crash runs again.
///
/// ```
/// use corral_saga::{decide, Next, Transition::*};
///
/// let log = [
///     Started { steps: vec!["a".into(), "b".into()], agent: None, definition: Default::default(), authenticated: false, },
///     StepStarted { step: 0 },
///     StepDone { step: 0, output: Default::default() },
///     StepStarted { step: 1 },
///     StepFailed { step: 1, reason: "409".into() },
/// ];
/// assert_eq!(decide(&log, 2), Next::Compensate(0));
/// ```
pub fn decide(log: &[Transition], steps: usize) -> Next {
    let status = status(log);
    if status.is_final() {
        return Next::Over(status);
    }
    let states = step_states(log, steps);
    if status == SagaStatus::Running {
        return match states.iter().position(|s| s.action != Phase::Done) {
            Some(i) => Next::Run(i),
            None => Next::Complete,
        };
    }
    let owed = states.iter().rposition(|s| {
        matches!(s.action, Phase::Done | Phase::Running) && s.compensation != Phase::Done
    });
    match owed {
        Some(j) => Next::Compensate(j),
        None => Next::FinishCompensation,
    }
}
