//! The pool's bookkeeping: the sorted sets kept in step with its agents'
//! counters, the counters forgotten once they cannot matter, and the
//! rate at which permits come back.

use std::cmp::Ordering;

use corral_core::AgentId;
use tokio::time::Instant;

use super::State;

/// Above this many remembered agents, idle ones are forgotten.
const MAX_IDLE_AGENTS: usize = 10_000;

/// A counter in a sorted set: `f64` ordered totally.
#[derive(Debug, Clone, Copy)]
pub(super) struct Vtc(pub(super) f64);

impl PartialEq for Vtc {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}

impl Eq for Vtc {}

impl PartialOrd for Vtc {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Vtc {
    fn cmp(&self, other: &Self) -> Ordering {
        self.0.total_cmp(&other.0)
    }
}

impl State {
    /// Takes `agent` out of the sorted sets before its counter, queues or
    /// running count change.
    pub(super) fn unindex(&mut self, agent_id: &AgentId) {
        let Some(agent) = self.agents.get(agent_id) else {
            return;
        };
        let vtc = Vtc(agent.vtc);
        for (level, queue) in agent.levels.iter().enumerate() {
            if let Some((id, since)) = queue.front() {
                let finish = self.finish(agent.vtc, *id);
                self.ready[level].remove(&(finish, *since, agent_id.clone()));
            }
        }
        self.active.remove(&(vtc, agent_id.clone()));
    }

    /// Where an agent whose counter is `vtc` stands at a level whose next
    /// request is ticket `id`: its counter once that request is served
    /// (its predicted cost over its weight). The least goes first: at
    /// equal service, the shorter request; an agent that asks long
    /// requests waits longer for each, not more often.
    pub(super) fn finish(&self, vtc: f64, id: u64) -> Vtc {
        // A ticket is in `waiters` while it heads an agent's queue: the
        // key is the same when it is indexed and when it is taken out.
        let work = self.waiters.get(&id).map_or(0.0, |w| w.cost / w.weight);
        Vtc(vtc + work)
    }

    /// Puts `agent` back in the sorted sets, as it is now.
    pub(super) fn index(&mut self, agent_id: &AgentId, per_agent_cap: Option<usize>) {
        let Some(agent) = self.agents.get(agent_id) else {
            return;
        };
        let key = (Vtc(agent.vtc), agent_id.clone());
        if agent.queued > 0 || agent.in_flight > 0 {
            self.active.insert(key.clone());
        }
        if per_agent_cap.is_some_and(|cap| agent.in_flight >= cap) {
            return;
        }
        for (level, queue) in agent.levels.iter().enumerate() {
            if let Some((id, since)) = queue.front() {
                let finish = self.finish(agent.vtc, *id);
                self.ready[level].insert((finish, *since, agent_id.clone()));
            }
        }
    }

    /// Forgets counters that can no longer matter: all of them when the
    /// pool falls idle, idle agents when too many are remembered.
    pub(super) fn forget_idle(&mut self) {
        if self.in_flight == 0 && self.waiters.is_empty() {
            self.agents.clear();
            self.active.clear();
            return;
        }
        if self.agents.len() > MAX_IDLE_AGENTS {
            // An idle agent's counter would be lifted to the least active
            // one on return anyway, unless it was ahead: that is the only
            // memory lost, and only past this many agents.
            self.agents.retain(|_, a| a.queued > 0 || a.in_flight > 0);
        }
    }

    /// Completions per second over the last few, fading when none come.
    pub(super) fn drain_rate(&self, now: Instant) -> f64 {
        let Some(first) = self.completions.front() else {
            return 0.0;
        };
        let span = now.saturating_duration_since(*first).as_secs_f64();
        if span <= 0.0 {
            return 0.0;
        }
        self.completions.len() as f64 / span
    }
}
