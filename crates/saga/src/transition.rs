//! What a saga's log holds: one transition per entry, written before it
//! takes effect.

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// One entry of a saga's log.
///
/// ```
/// use corral_saga::Transition;
///
/// let json = serde_json::to_string(&Transition::StepDone { step: 1, output: serde_json::json!({"id": 7}) }).unwrap();
/// assert_eq!(json, r#"{"transition":"step_done","step":1,"output":{"id":7}}"#);
/// assert_eq!(serde_json::from_str::<Transition>(&json).unwrap().name(), "step_done");
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "transition", rename_all = "snake_case")]
pub enum Transition {
    /// The saga began: its steps' names, who submitted it, and its
    /// definition (whatever lets another replica rebuild it).
    Started {
        /// The steps' names, in order.
        steps: Vec<String>,
        /// The agent that submitted it.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        agent: Option<String>,
        /// Whether a key proved the agent when it submitted the saga
        /// (calls made as the agent carry it; the key itself is never
        /// logged).
        #[serde(default, skip_serializing_if = "is_false")]
        authenticated: bool,
        /// The definition, serialized.
        #[serde(default)]
        definition: Value,
    },
    /// Step `step`'s call goes to `target` (an agent's base URL, picked
    /// once in the registry before its first attempt): a re-run after a
    /// crash, and its compensation, go to the same agent.
    Resolved {
        /// Which step.
        step: usize,
        /// The base URL chosen.
        target: String,
    },
    /// Step `step`'s action is about to run (again, after a crash).
    StepStarted {
        /// Which step, from 0.
        step: usize,
    },
    /// Step `step`'s action succeeded.
    StepDone {
        /// Which step.
        step: usize,
        /// What it returned.
        #[serde(default)]
        output: Value,
    },
    /// Step `step`'s action failed: the saga compensates.
    StepFailed {
        /// Which step.
        step: usize,
        /// Why.
        reason: String,
    },
    /// Someone asked the saga to stop: it compensates what it did.
    Cancelled {
        /// Why.
        reason: String,
    },
    /// Step `step`'s compensation is about to run (again, after a crash).
    Compensating {
        /// Which step.
        step: usize,
    },
    /// Step `step`'s compensation succeeded.
    Compensated {
        /// Which step.
        step: usize,
    },
    /// A replica could not rebuild the saga from its log (a definition it
    /// cannot read, say during an upgrade): it stays unfinished for
    /// another try; after [`MAX_RESUME_FAILURES`](crate::MAX_RESUME_FAILURES)
    /// of these it ends `failed`.
    ResumeFailed {
        /// Why.
        reason: String,
    },
    /// Every step succeeded: the saga is `completed`.
    Completed,
    /// Every step that needed it was compensated: the saga is
    /// `compensated`.
    CompensatedAll,
    /// A compensation kept failing (or the saga cannot be rebuilt): the
    /// saga is `failed` and needs an operator.
    Failed {
        /// The step whose compensation failed, if one did.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        step: Option<usize>,
        /// Why.
        reason: String,
    },
}

fn is_false(b: &bool) -> bool {
    !*b
}

impl Transition {
    /// Its name, as the log and events spell it.
    pub fn name(&self) -> &'static str {
        match self {
            Transition::Started { .. } => "started",
            Transition::Resolved { .. } => "resolved",
            Transition::StepStarted { .. } => "step_started",
            Transition::StepDone { .. } => "step_done",
            Transition::StepFailed { .. } => "step_failed",
            Transition::Cancelled { .. } => "cancelled",
            Transition::ResumeFailed { .. } => "resume_failed",
            Transition::Compensating { .. } => "compensating",
            Transition::Compensated { .. } => "compensated",
            Transition::Completed => "completed",
            Transition::CompensatedAll => "compensated_all",
            Transition::Failed { .. } => "failed",
        }
    }

    /// The step it is about, if any.
    pub fn step(&self) -> Option<usize> {
        match self {
            Transition::StepStarted { step }
            | Transition::Resolved { step, .. }
            | Transition::StepDone { step, .. }
            | Transition::StepFailed { step, .. }
            | Transition::Compensating { step }
            | Transition::Compensated { step } => Some(*step),
            Transition::Failed { step, .. } => *step,
            _ => None,
        }
    }

    /// Whether the saga ends with it.
    pub fn is_terminal(&self) -> bool {
        matches!(
            self,
            Transition::Completed | Transition::CompensatedAll | Transition::Failed { .. }
        )
    }
}
