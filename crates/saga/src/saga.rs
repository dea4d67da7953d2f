//! A saga: ordered steps, each an action and its compensation.

use std::future::Future;
use std::sync::Arc;

use corral_core::BoxError;
use serde_json::Value;

use crate::log::BoxFuture;

/// What an action or a compensation is told.
#[derive(Debug, Clone, PartialEq)]
pub struct StepContext {
    /// The saga's id.
    pub saga_id: Arc<str>,
    /// The step's index, from 0.
    pub step: usize,
    /// The step's name.
    pub name: Arc<str>,
    /// `{saga_id}:{step}:action` or `{saga_id}:{step}:compensate`: the
    /// same each time this action (or compensation) is run again after a
    /// crash, so the server behind it can apply it once.
    pub idempotency_key: String,
    /// The agent that submitted the saga, if known.
    pub agent: Option<Arc<str>>,
    /// Whether a key proved that agent when it submitted the saga.
    pub authenticated: bool,
    /// Where the step's call goes, when it was resolved once and logged
    /// ([`Action::resolve`]): the same for every attempt and for the
    /// compensation.
    pub target: Option<String>,
    /// For a compensation, what the action returned (`None` when the
    /// action's end was never logged).
    pub output: Option<Value>,
}

/// What an action or a compensation answers: its output, or why it
/// failed.
pub type StepResult = Result<Value, BoxError>;

/// An action or a compensation. Any `Fn(StepContext) -> impl Future`
/// returning a [`StepResult`] is one.
pub trait Action: Send + Sync + 'static {
    /// Runs it.
    fn call(&self, context: StepContext) -> BoxFuture<'static, StepResult>;

    /// Where the call goes, picked once before the step's first attempt
    /// and logged (`resolved`), so a re-run and the compensation go to
    /// the same place; `None`: nothing to pick (the default).
    fn resolve(&self) -> BoxFuture<'static, Result<Option<String>, BoxError>> {
        Box::pin(async { Ok(None) })
    }
}

impl<F, Fut> Action for F
where
    F: Fn(StepContext) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = StepResult> + Send + 'static,
{
    fn call(&self, context: StepContext) -> BoxFuture<'static, StepResult> {
        Box::pin(self(context))
    }
}

/// One step.
#[derive(Clone)]
pub struct Step {
    pub(crate) name: Arc<str>,
    pub(crate) action: Arc<dyn Action>,
    pub(crate) compensation: Option<Arc<dyn Action>>,
}

corral_core::impl_debug!(Step { name });

/// A saga: an id, ordered steps, and what rebuilds it elsewhere.
///
/// ```
/// use corral_saga::{Saga, StepContext};
/// use serde_json::json;
///
/// let saga = Saga::new("s1")
///     .step("reserve", |_: StepContext| async { Ok(json!({"seat": 12})) },
///           |_: StepContext| async { Ok(json!(null)) })
///     .step_without_compensation("notify", |_: StepContext| async { Ok(json!(null)) });
/// assert_eq!(saga.len(), 2);
/// ```
#[derive(Clone, Debug)]
pub struct Saga {
    pub(crate) id: Arc<str>,
    pub(crate) agent: Option<String>,
    pub(crate) authenticated: bool,
    pub(crate) definition: Value,
    pub(crate) steps: Vec<Step>,
}

impl Saga {
    /// A saga with no steps yet.
    pub fn new(id: impl Into<Arc<str>>) -> Self {
        Self {
            id: id.into(),
            agent: None,
            authenticated: false,
            definition: Value::Null,
            steps: Vec::new(),
        }
    }

    /// Submitted by `agent` (logged, and on its events).
    pub fn with_agent(mut self, agent: impl Into<String>) -> Self {
        self.agent = Some(agent.into());
        self
    }

    /// Whose agent a key proved when it submitted the saga (logged;
    /// calls made as the agent carry it).
    pub fn with_authenticated(mut self, authenticated: bool) -> Self {
        self.authenticated = authenticated;
        self
    }

    /// Carrying `definition` in its `started` entry, so another process
    /// can rebuild it from the log.
    pub fn with_definition(mut self, definition: Value) -> Self {
        self.definition = definition;
        self
    }

    /// Adds a step `name` doing `action`, undone by `compensation`.
    pub fn step(
        mut self,
        name: impl Into<Arc<str>>,
        action: impl Action,
        compensation: impl Action,
    ) -> Self {
        self.steps.push(Step {
            name: name.into(),
            action: Arc::new(action),
            compensation: Some(Arc::new(compensation)),
        });
        self
    }

    /// Adds a step `name` doing `action` with nothing to undo.
    pub fn step_without_compensation(
        mut self,
        name: impl Into<Arc<str>>,
        action: impl Action,
    ) -> Self {
        self.steps.push(Step {
            name: name.into(),
            action: Arc::new(action),
            compensation: None,
        });
        self
    }

    /// Adds a step from its parts (shared actions, or no compensation).
    pub fn push(
        mut self,
        name: impl Into<Arc<str>>,
        action: Arc<dyn Action>,
        compensation: Option<Arc<dyn Action>>,
    ) -> Self {
        self.steps.push(Step {
            name: name.into(),
            action,
            compensation,
        });
        self
    }

    /// Its id.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// Who submitted it.
    pub fn agent(&self) -> Option<&str> {
        self.agent.as_deref()
    }

    /// Whether a key proved its agent.
    pub fn authenticated(&self) -> bool {
        self.authenticated
    }

    /// How many steps.
    pub fn len(&self) -> usize {
        self.steps.len()
    }

    /// Whether it has no step.
    pub fn is_empty(&self) -> bool {
        self.steps.is_empty()
    }

    /// Its steps' names, in order.
    pub fn step_names(&self) -> Vec<String> {
        self.steps.iter().map(|s| s.name.to_string()).collect()
    }

    pub(crate) fn context(
        &self,
        step: usize,
        what: &str,
        target: Option<String>,
        output: Option<Value>,
    ) -> StepContext {
        StepContext {
            saga_id: self.id.clone(),
            step,
            name: self
                .steps
                .get(step)
                .map_or_else(|| Arc::from(""), |s| s.name.clone()),
            idempotency_key: format!("{}:{step}:{what}", self.id),
            agent: self.agent.as_deref().map(Arc::from),
            authenticated: self.authenticated,
            target,
            output,
        }
    }
}
