//! The order of service: which waiting request the next free permit
//! goes to, and when a reserved permit is lent.

use std::task::Waker;

use corral_core::{lock, AgentId};
use tokio::time::Instant;

use super::index::Vtc;
use super::{Lend, Pool, State, LEVELS};
use crate::metrics::RESERVE_LENT_TOTAL;

/// At most this many of a level's oldest requests are looked at for one
/// that has waited an aging period and could be served now.
const AGED_SCAN: usize = 64;
/// At most this many waiting agents are looked at for one that may
/// borrow a reserved permit: a queue of requests predicted long must
/// not make every grant walk all of it.
const LEND_SCAN: usize = 64;

impl Pool {
    /// Grants permits while there is capacity and a request can take one;
    /// the wakers of the granted.
    pub(super) fn dispatch(&self, state: &mut State, now: Instant) -> Vec<Waker> {
        let mut wakers = Vec::new();
        if let Some(link) = &self.fleet {
            // The fleet's permits for the model, on the upstreams up.
            state.capacity = link.fleet.capacity_for(&link.model);
        }
        while self.fleet.is_some() || state.in_flight < state.capacity {
            let levels = self.open_levels(state);
            let (agent_id, level, lent) = match self.pick(state, now, levels) {
                Some((agent, level)) => (agent, level, false),
                None => match self.borrower(state, now, levels) {
                    Some((agent, level)) => (agent, level, true),
                    None => break,
                },
            };
            if self.kept_for_room(state, &agent_id, level, now) {
                break;
            }
            let slot = match &self.fleet {
                None => None,
                Some(link) => {
                    let Some(want) = self.want(state, &agent_id, level, now) else {
                        break;
                    };
                    match link.fleet.place(&link.model, &want) {
                        Some(slot) => Some(slot),
                        None => break,
                    }
                }
            };
            state.unindex(&agent_id);
            let Some(agent) = state.agents.get_mut(&agent_id) else {
                self.give_back(slot);
                break;
            };
            let Some((id, _)) = agent.levels[level].pop_front() else {
                self.give_back(slot);
                break;
            };
            let Some(waiter) = state.waiters.get_mut(&id) else {
                self.give_back(slot);
                continue;
            };
            waiter.granted = true;
            waiter.slot = slot;
            if waiter.front {
                state.front[level].retain(|t| *t != id);
            }
            agent.queued -= 1;
            agent.in_flight += 1;
            agent.vtc += waiter.cost / waiter.weight;
            state.queued[level] -= 1;
            // Back to exactly nothing when the level empties: no drift.
            state.queued_cost[level] = if state.queued[level] == 0 {
                0.0
            } else {
                (state.queued_cost[level] - waiter.cost).max(0.0)
            };
            state.queued_bytes -= waiter.bytes;
            state.oldest[level].remove(&(waiter.enqueued, id));
            state.in_flight += 1;
            state.running.insert(id, (now, waiter.cost));
            if let Some(waker) = waiter.waker.take() {
                wakers.push(waker);
            }
            if lent {
                state.lent += 1;
                metrics::counter!(RESERVE_LENT_TOTAL, "pool" => self.name.clone()).increment(1);
            }
            state.index(&agent_id, self.per_agent_cap);
        }
        if let Some(link) = &self.fleet {
            // Only agents under their cap can be served: those at it do
            // not make the model wanted.
            let servable = state.ready.iter().map(|r| r.len()).sum();
            let oldest = std::array::from_fn(|level| state.oldest[level].first().map(|(t, _)| *t));
            link.fleet
                .publish(&link.model, oldest, servable, self.aging);
        }
        wakers
    }

    /// Whether the free permits are kept for reservations due soon at
    /// `level` or better, rather than granted to `agent`'s next request
    /// there (one let in for its reservation is never kept out). With a
    /// fleet, the fleet places every permit: nothing is kept. Kept, a
    /// timer lets the queue have them once the holds end.
    fn kept_for_room(
        &self,
        state: &mut State,
        agent: &AgentId,
        level: usize,
        now: Instant,
    ) -> bool {
        if self.fleet.is_some() {
            return false;
        }
        let front = state
            .agents
            .get(agent)
            .and_then(|a| a.levels[level].front())
            .and_then(|(id, _)| state.waiters.get(id))
            .is_some_and(|w| w.front);
        if front {
            return false;
        }
        let (held, ends) = state.room.held_for(level, now, None);
        if held == 0 || state.capacity.saturating_sub(state.in_flight) > held {
            return false;
        }
        // Kept only with a timer to end the hold: else nothing might
        // dispatch again.
        ends.is_some_and(|ends| self.end_hold_at(state, ends))
    }

    /// Dispatches again at `at`, when a permit's hold for a reservation
    /// ends (unless a timer fires sooner); whether one is set. The clock
    /// is read afresh: `at` may have passed since the caller's `now`.
    fn end_hold_at(&self, state: &mut State, at: Instant) -> bool {
        let now = Instant::now();
        if at <= now {
            return false;
        }
        // A timer set for a time gone by never ran (its runtime ended):
        // replaced.
        if state.hold_timer.is_some_and(|set| set <= at && set > now) {
            return true;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return false;
        };
        state.hold_timer = Some(at);
        let me = self.me.clone();
        runtime.spawn(async move {
            tokio::time::sleep_until(at).await;
            if let Some(pool) = me.upgrade() {
                pool.hold_ended(at);
            }
        });
        true
    }

    fn hold_ended(&self, at: Instant) {
        let mut state = lock(&self.state);
        if state.hold_timer == Some(at) {
            state.hold_timer = None;
        }
        let wakers = self.dispatch(&mut state, Instant::now());
        drop(state);
        super::wake_all(wakers);
    }

    /// A fleet permit taken for a grant that could not be made.
    fn give_back(&self, slot: Option<corral_fleet::Slot>) {
        if let (Some(link), Some(slot)) = (&self.fleet, slot) {
            link.fleet.free(slot);
        }
    }

    /// What the fleet weighs for `agent`'s next request at `level`: how
    /// urgent it is, how many wait with it.
    fn want(
        &self,
        state: &State,
        agent: &AgentId,
        level: usize,
        now: Instant,
    ) -> Option<corral_fleet::Want> {
        let (id, enqueued) = *state.agents.get(agent)?.levels[level].front()?;
        Some(corral_fleet::Want {
            urgency: corral_fleet::Urgency {
                level: self.effective_level(level, enqueued, now),
                since: enqueued,
            },
            waiting: state.queued.iter().sum(),
            session: state.waiters.get(&id).and_then(|w| w.session),
            hold: state.holds.pool(),
        })
    }

    /// How many priority levels, from the top, may take the next permit:
    /// all while more than the reserve is free, then only those the
    /// reserve is for. A pool smaller than the reserve keeps one permit
    /// for everyone.
    fn open_levels(&self, state: &State) -> usize {
        let Some(reserve) = self.reserve else {
            return LEVELS;
        };
        let held_back = reserve.permits.min(state.capacity.saturating_sub(1));
        if state.in_flight + held_back < state.capacity {
            LEVELS
        } else {
            usize::from(reserve.up_to_priority).min(LEVELS)
        }
    }

    /// With only reserved permits free (levels below `open` closed) and
    /// no request of the reserve's priorities waiting (not even one at
    /// its agent's cap), the next request that may borrow one: in the
    /// order of service, the first whose agent's next request there is
    /// predicted to give the permit back within `lend_within` (an agent
    /// without history: the pool's average hold), looking at no more
    /// than [`LEND_SCAN`] agents.
    fn borrower(&self, state: &State, now: Instant, open: usize) -> Option<(AgentId, usize)> {
        let reserve = self.reserve?;
        if open >= LEVELS || state.queued[..open].iter().any(|q| *q > 0) {
            return None;
        }
        let unknown_lent = state
            .holds
            .pool()
            .is_some_and(|hold| hold <= reserve.lend_within);
        let mut levels: Vec<(usize, Instant, usize)> = (open..LEVELS)
            .filter(|level| !state.ready[*level].is_empty())
            .filter_map(|level| {
                let (oldest, _) = state.oldest[level].first()?;
                Some((self.effective_level(level, *oldest, now), *oldest, level))
            })
            .collect();
        levels.sort_unstable();
        let candidates = levels.iter().flat_map(|(_, _, level)| {
            state.ready[*level]
                .iter()
                .map(move |(_, _, agent)| (agent, *level))
        });
        for (agent_id, level) in candidates.take(LEND_SCAN) {
            let lend = state
                .agents
                .get(agent_id)
                .and_then(|agent| agent.levels[level].front())
                .and_then(|(id, _)| state.waiters.get(id))
                .map_or(Lend::Never, |waiter| waiter.lend);
            if lend == Lend::Short || (lend == Lend::Unknown && unknown_lent) {
                return Some((agent_id.clone(), level));
            }
        }
        None
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
        if let Some(agent) = self.front_of(state, level) {
            return Some((agent, level));
        }
        let (first, _, agent) = state.ready[level].first()?;
        if let Some(aged) = self.aged(state, level, *first, now) {
            return Some((aged, level));
        }
        Some((agent.clone(), level))
    }

    /// Shorter requests first holds only for `aging`: the level's oldest
    /// request, once it has waited that long, competes by its agent's
    /// service alone, and goes first if no agent ready there is served
    /// less once its own next request is (`first`). A long request is so
    /// overtaken by short ones for at most one aging period, as a low
    /// priority by high ones for one step.
    fn aged(&self, state: &State, level: usize, first: Vtc, now: Instant) -> Option<AgentId> {
        if self.aging.is_zero() {
            return None;
        }
        // The oldest request that could be served now: its agent's next
        // there, and its agent not at its cap (a few looked at).
        let waited_long = state.oldest[level]
            .iter()
            .take_while(|(at, _)| now.saturating_duration_since(*at) >= self.aging)
            .take(AGED_SCAN);
        for (oldest, id) in waited_long {
            let Some(agent_id) = state.waiters.get(id).map(|w| &w.agent) else {
                continue;
            };
            let Some(agent) = state.agents.get(agent_id) else {
                continue;
            };
            let key = (state.finish(agent.vtc, *id), *oldest, agent_id.clone());
            if state.ready[level].contains(&key) {
                return (Vtc(agent.vtc) <= first).then(|| agent_id.clone());
            }
        }
        None
    }

    /// The agent of the first request let in for its reservation at
    /// `level` that can be served now (its agent under its cap): it goes
    /// before the level's fresh arrivals (its agent's own requests there
    /// first, one after another).
    fn front_of(&self, state: &State, level: usize) -> Option<AgentId> {
        state.front[level]
            .iter()
            .take(AGED_SCAN)
            .filter_map(|id| state.waiters.get(id))
            .filter(|waiter| !waiter.granted)
            .find(|waiter| {
                let running = state.agents.get(&waiter.agent).map_or(0, |a| a.in_flight);
                self.per_agent_cap.is_none_or(|cap| running < cap)
            })
            .map(|waiter| waiter.agent.clone())
    }

    fn effective_level(&self, level: usize, enqueued: Instant, now: Instant) -> usize {
        if self.aging.is_zero() {
            return level;
        }
        let steps = now.saturating_duration_since(enqueued).as_nanos() / self.aging.as_nanos();
        level.saturating_sub(usize::try_from(steps).unwrap_or(usize::MAX))
    }
}
