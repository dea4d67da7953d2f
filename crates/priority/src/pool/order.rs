//! The order of service: which waiting request the next free permit
//! goes to.

use std::task::Waker;

use corral_core::AgentId;
use tokio::time::Instant;

use super::{Pool, State};

impl Pool {
    /// Grants permits while there is capacity and a request can take one;
    /// the wakers of the granted.
    pub(super) fn dispatch(&self, state: &mut State, now: Instant) -> Vec<Waker> {
        let mut wakers = Vec::new();
        while state.in_flight < state.capacity {
            let levels = self.open_levels(state);
            let Some((agent_id, level)) = self.pick(state, now, levels) else {
                break;
            };
            state.unindex(&agent_id);
            let Some(agent) = state.agents.get_mut(&agent_id) else {
                break;
            };
            let Some((id, _)) = agent.levels[level].pop_front() else {
                break;
            };
            let Some(waiter) = state.waiters.get_mut(&id) else {
                continue;
            };
            waiter.granted = true;
            agent.queued -= 1;
            agent.in_flight += 1;
            agent.vtc += waiter.cost / waiter.weight;
            state.queued[level] -= 1;
            state.queued_bytes -= waiter.bytes;
            state.oldest[level].remove(&(waiter.enqueued, id));
            state.in_flight += 1;
            if let Some(waker) = waiter.waker.take() {
                wakers.push(waker);
            }
            state.index(&agent_id, self.per_agent_cap);
        }
        wakers
    }

    /// How many priority levels, from the top, may take the next permit:
    /// all while more than the reserve is free, then only those the
    /// reserve is for. A pool smaller than the reserve keeps one permit
    /// for everyone.
    fn open_levels(&self, state: &State) -> usize {
        let Some(reserve) = self.reserve else {
            return 10;
        };
        let held_back = reserve.permits.min(state.capacity.saturating_sub(1));
        if state.in_flight + held_back < state.capacity {
            10
        } else {
            usize::from(reserve.up_to_priority).min(10)
        }
    }

    /// The next request to serve among the first `levels` priority
    /// levels: from the level whose oldest request has the best effective
    /// priority (its priority raised one step per `aging` waited; ties to
    /// the older), the agent with the least weighted service, its oldest
    /// request at that level.
    fn pick(&self, state: &State, now: Instant, levels: usize) -> Option<(AgentId, usize)> {
        let mut best: Option<(usize, Instant, usize)> = None;
        for level in 0..levels {
            if state.ready[level].is_empty() {
                continue;
            }
            let Some((oldest, _)) = state.oldest[level].first() else {
                continue;
            };
            let key = (self.effective_level(level, *oldest, now), *oldest);
            if best.is_none_or(|(e, t, _)| key < (e, t)) {
                best = Some((key.0, key.1, level));
            }
        }
        let (_, _, level) = best?;
        let (_, _, agent) = state.ready[level].first()?;
        Some((agent.clone(), level))
    }

    fn effective_level(&self, level: usize, enqueued: Instant, now: Instant) -> usize {
        if self.aging.is_zero() {
            return level;
        }
        let steps = now.saturating_duration_since(enqueued).as_nanos() / self.aging.as_nanos();
        level.saturating_sub(usize::try_from(steps).unwrap_or(usize::MAX))
    }
}
