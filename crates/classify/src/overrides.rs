//! Priorities an operator set for agents at run time.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::RwLock;

use corral_core::{AgentId, Priority};

/// An operator's priority per agent, set at run time (the admin API, or
/// another replica through the bus): while set, the agent's requests get
/// it whatever their class's default and whatever `X-Priority` they send.
///
/// ```
/// use corral_classify::{ClassifyConfig, ClassifyLayer};
/// use corral_core::Priority;
///
/// let layer = ClassifyLayer::new(&ClassifyConfig::default()).unwrap();
/// let overrides = layer.overrides();
/// overrides.set("planner", Some(Priority::new(1).unwrap()));
/// assert_eq!(overrides.get("planner"), Some(Priority::new(1).unwrap()));
/// overrides.set("planner", None);
/// assert!(overrides.list().is_empty());
/// ```
#[derive(Debug, Default)]
pub struct PriorityOverrides {
    /// Whether any is set: most stacks never set one, and their requests
    /// should not take a lock for it.
    any: AtomicBool,
    by_agent: RwLock<HashMap<AgentId, Priority>>,
}

impl PriorityOverrides {
    /// Sets `agent`'s priority, or clears it with `None`; the previous
    /// one.
    pub fn set(&self, agent: &str, priority: Option<Priority>) -> Option<Priority> {
        let mut map = self.by_agent.write().unwrap_or_else(|p| p.into_inner());
        let previous = match priority {
            Some(priority) => map.insert(AgentId::from(agent), priority),
            None => map.remove(agent),
        };
        self.any.store(!map.is_empty(), Ordering::Release);
        previous
    }

    /// `agent`'s priority, if the operator set one.
    pub fn get(&self, agent: &str) -> Option<Priority> {
        if !self.any.load(Ordering::Acquire) {
            return None;
        }
        self.by_agent
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(agent)
            .copied()
    }

    /// Every agent with a priority set, by name.
    pub fn list(&self) -> Vec<(String, Priority)> {
        let mut list: Vec<(String, Priority)> = self
            .by_agent
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .map(|(agent, priority)| (agent.to_string(), *priority))
            .collect();
        list.sort();
        list
    }
}
