//! The registry in this process's memory: a map of entries with their
//! deadlines on tokio's clock, so paused-time tests drive expiry.

use std::collections::HashMap;
use std::sync::Mutex;

use corral_core::lock;
use tokio::time::Instant;

use crate::{Entry, Put, RegistryError};

pub(crate) struct Memory {
    state: Mutex<State>,
    max_agents: usize,
}

#[derive(Default)]
struct State {
    slots: HashMap<String, Slot>,
    /// Entries found expired by a call before the sweeper saw them: the
    /// sweeper tells them, so each expiry is told once.
    ended: Vec<Entry>,
}

struct Slot {
    entry: Entry,
    deadline: Instant,
}

impl State {
    /// Moves `agent`'s entry to `ended` if it expired; whether one is
    /// left.
    fn live(&mut self, agent: &str, now: Instant) -> bool {
        match self.slots.get(agent) {
            Some(slot) if slot.deadline <= now => {
                if let Some(slot) = self.slots.remove(agent) {
                    self.ended.push(slot.entry);
                }
                false
            }
            Some(_) => true,
            None => false,
        }
    }

    fn purge(&mut self, now: Instant) {
        let expired: Vec<String> = self
            .slots
            .iter()
            .filter(|(_, slot)| slot.deadline <= now)
            .map(|(agent, _)| agent.clone())
            .collect();
        for agent in expired {
            self.live(&agent, now);
        }
    }
}

impl Memory {
    pub(crate) fn new(max_agents: usize) -> Self {
        Self {
            state: Mutex::new(State::default()),
            max_agents,
        }
    }

    pub(crate) fn put(&self, mut entry: Entry, unix_now: f64) -> Result<Put, RegistryError> {
        let now = Instant::now();
        let mut state = lock(&self.state);
        let renewing = state.live(&entry.agent, now);
        if !renewing && state.slots.len() >= self.max_agents {
            // Only when full: purging reads every entry.
            state.purge(now);
            if state.slots.len() >= self.max_agents {
                return Err(RegistryError::Full {
                    max_agents: self.max_agents,
                });
            }
        }
        entry.registered_at = match state.slots.get(&entry.agent) {
            Some(slot) => slot.entry.registered_at,
            None => unix_now,
        };
        entry.expires_at = unix_now + entry.ttl.as_secs_f64();
        let slot = Slot {
            deadline: now + entry.ttl,
            entry: entry.clone(),
        };
        state.slots.insert(entry.agent.clone(), slot);
        Ok(if renewing {
            Put::Renewed(entry)
        } else {
            Put::Joined(entry)
        })
    }

    pub(crate) fn heartbeat(&self, agent: &str, unix_now: f64) -> Option<Entry> {
        let now = Instant::now();
        let mut state = lock(&self.state);
        if !state.live(agent, now) {
            return None;
        }
        let slot = state.slots.get_mut(agent)?;
        slot.deadline = now + slot.entry.ttl;
        slot.entry.expires_at = unix_now + slot.entry.ttl.as_secs_f64();
        Some(slot.entry.clone())
    }

    pub(crate) fn remove(&self, agent: &str) -> Option<Entry> {
        let mut state = lock(&self.state);
        if !state.live(agent, Instant::now()) {
            return None;
        }
        state.slots.remove(agent).map(|slot| slot.entry)
    }

    pub(crate) fn get(&self, agent: &str) -> Option<Entry> {
        let now = Instant::now();
        let state = lock(&self.state);
        state
            .slots
            .get(agent)
            .filter(|slot| slot.deadline > now)
            .map(|slot| slot.entry.clone())
    }

    /// Live entries, by agent.
    pub(crate) fn find(&self, capability: Option<&str>) -> Vec<Entry> {
        let now = Instant::now();
        let state = lock(&self.state);
        let mut found: Vec<Entry> = state
            .slots
            .values()
            .filter(|slot| slot.deadline > now)
            .filter(|slot| capability.is_none_or(|c| slot.entry.can(c)))
            .map(|slot| slot.entry.clone())
            .collect();
        found.sort_by(|a, b| a.agent.cmp(&b.agent));
        found
    }

    /// The entries that expired since the last sweep, and the live ones.
    pub(crate) fn sweep(&self) -> (Vec<Entry>, Vec<Entry>) {
        let expired = {
            let mut state = lock(&self.state);
            state.purge(Instant::now());
            std::mem::take(&mut state.ended)
        };
        (expired, self.find(None))
    }
}
