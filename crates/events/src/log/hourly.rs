//! Usage by hour and agent, for the last [`USAGE_RETENTION_HOURS`].

use std::collections::BTreeMap;
use std::sync::Arc;

use super::State;
use crate::projection::{AgentUsage, USAGE_RETENTION_HOURS};

impl State {
    /// Folds an event into its agent's usage of `hour` (its class is
    /// the all-time usage's: one string per agent, not per hour); the
    /// hours past the retention go when a new hour starts.
    pub(super) fn count_hourly(
        &mut self,
        hour: u64,
        agent: &Arc<str>,
        fold: impl Fn(&mut AgentUsage),
    ) {
        if hour > self.hour {
            self.hour = hour;
            let oldest = hour.saturating_sub(USAGE_RETENTION_HOURS - 1);
            if self.first_hour < oldest {
                self.hourly.retain(|(_, at), _| *at >= oldest);
                self.first_hour = oldest;
            }
        }
        if self.hourly.is_empty() || hour < self.first_hour {
            self.first_hour = hour;
        }
        let entry = self.hourly.entry((agent.clone(), hour)).or_default();
        fold(entry);
        entry.class = None;
    }

    /// Usage since `hour` (included, and within the retention), per
    /// agent or for one.
    pub(super) fn usage_since(
        &self,
        hour: u64,
        agent: Option<&str>,
    ) -> BTreeMap<String, AgentUsage> {
        let hour = hour.max(self.hour.saturating_sub(USAGE_RETENTION_HOURS - 1));
        let mut usage: BTreeMap<String, AgentUsage> = BTreeMap::new();
        let range = match agent {
            Some(agent) => {
                let agent: Arc<str> = Arc::from(agent);
                (
                    std::ops::Bound::Included((agent.clone(), hour)),
                    std::ops::Bound::Included((agent, u64::MAX)),
                )
            }
            None => (std::ops::Bound::Unbounded, std::ops::Bound::Unbounded),
        };
        let counted = self
            .hourly
            .range::<(Arc<str>, u64), _>(range)
            .filter(|((_, at), _)| *at >= hour);
        for ((name, _), counted) in counted {
            let total = usage.entry(name.to_string()).or_insert_with(|| AgentUsage {
                class: self.usage.get(name).and_then(|u| u.class.clone()),
                ..AgentUsage::default()
            });
            total.merge(counted);
        }
        usage
    }
}
