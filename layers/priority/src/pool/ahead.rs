//! The work ahead of a request in the order of service, for its
//! estimate ([`crate::Estimate`]).

use std::time::Duration;

use corral_core::{lock, AgentId};
use tokio::time::Instant;

use super::index::Vtc;
use super::{Pool, State, LEVELS};
use crate::estimate::{eta, free_slots, Ahead, Estimate, Throughput};

/// At most this many agents, or requests, of one level are counted one
/// by one: an estimate must not walk a queue of thousands under the
/// pool's lock (past it, the position and wait are too low).
const MAX_COUNTED: usize = 256;

/// Permits given back before the served waits teach the correction of
/// the estimates ([`Estimate::teaches`]).
pub(super) const TEACHING: u64 = 16;

/// The request an estimate is for.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Me<'a> {
    /// One arriving now: its agent, predicted cost and weight.
    Arriving {
        agent: &'a AgentId,
        cost: f64,
        weight: f64,
    },
    /// One waiting here, by ticket.
    Waiting(u64),
    /// One arriving now for its reservation: at its level's front,
    /// behind only those let in for theirs before it.
    Front,
}

impl Pool {
    /// Whether ticket `id` still waits (neither granted nor gone).
    pub(crate) fn waits(&self, id: u64) -> bool {
        lock(&self.state)
            .waiters
            .get(&id)
            .is_some_and(|w| !w.granted)
    }
}

impl Pool {
    /// Where a request at `level` stands: the requests ahead of it (every
    /// better level; at its own, the agents next whose service once their
    /// next request is served is less than its agent's once it is, as the
    /// order of service goes; worse levels' requests aged past it) and
    /// its wait.
    /// The reservations due before it would be served are ahead of it
    /// too (they are let in ahead of it when they come back).
    pub(crate) fn estimate(&self, level: usize, me: Me<'_>) -> Estimate {
        let now = Instant::now();
        let level = level.min(LEVELS - 1);
        let state = lock(&self.state);
        let throughput = self.throughput(&state, now);
        let mut ahead = self.ahead(&state, level, me, now);
        if !matches!(me, Me::Front) {
            ahead = state.room.due_ahead(level, ahead, &throughput, now);
        }
        let cost = match me {
            Me::Arriving { cost, .. } => cost,
            Me::Waiting(id) => state.waiters.get(&id).map_or(0.0, |w| w.cost),
            Me::Front => 0.0,
        };
        self.corrected(&state, ahead.count, eta(ahead, &throughput), cost)
    }

    /// An estimate of `raw` for a request of predicted `cost`, corrected
    /// by what requests of its size really waited.
    pub(super) fn corrected(
        &self,
        state: &State,
        position: usize,
        raw: Option<Duration>,
        cost: f64,
    ) -> Estimate {
        Estimate {
            position,
            eta: self.calibration.correct(cost, raw),
            raw,
            teaches: state.holds.seen() >= TEACHING,
        }
    }

    /// What the pool measured of its throughput, now.
    pub(super) fn throughput(&self, state: &State, now: Instant) -> Throughput {
        let capacity = match &self.fleet {
            Some(link) => link.fleet.capacity_for(&link.model),
            None => state.capacity,
        };
        let model = state.holds.model();
        // The slots are read only when what runs and what could be ahead
        // of a request fill the capacity ([`eta`] answers "now" before
        // looking at them): the requests waiting, counted twice to be
        // safe, and the reservations bound what any request has ahead.
        // Built at every admission, they were a vector of `capacity`
        // zeros and a sort: 8,750 of the default stack's 132,000
        // instructions a request with `capacity` 1024 (callgrind,
        // benches/RESULTS.md, "The changes, each measured").
        let could_queue =
            state.waiters.len() + state.queued.iter().sum::<usize>() + state.room.len();
        let needed = state.in_flight + could_queue >= capacity;
        let slots = model.filter(|_| needed).map_or_else(Vec::new, |model| {
            let left = state.running.values().map(|(since, cost)| {
                let elapsed = now.saturating_duration_since(*since).as_secs_f64();
                state
                    .overruns
                    .left(model.hold(*cost), elapsed)
                    .unwrap_or_else(|| model.remaining(*cost, elapsed))
            });
            let untracked = state.in_flight.saturating_sub(state.running.len());
            free_slots(capacity, left, untracked, model.average)
        });
        Throughput {
            capacity,
            in_flight: state.in_flight,
            model,
            slots,
            completions_per_sec: state.drain_rate(now),
        }
    }

    pub(super) fn ahead(&self, state: &State, level: usize, me: Me<'_>, now: Instant) -> Ahead {
        let mut ahead = Ahead::default();
        for better in 0..level {
            ahead.count += state.queued[better];
            ahead.cost += state.queued_cost[better];
        }
        // Its own level, in the order of service: an agent's requests
        // there go one after another, each when its service so far plus
        // that request's cost is the least. Those of each agent ahead of
        // it whose turn comes before its own, as far as the agent's next
        // request's cost tells (the rest of its queue taken alike).
        let (mine, me_id) = finish_of(state, level, me);
        // Those let in for their reservation go first, in the order they
        // came back.
        for id in state.front[level].iter().take(MAX_COUNTED) {
            if Some(*id) == me_id {
                break;
            }
            if let Some(waiter) = state.waiters.get(id) {
                ahead.count += 1;
                ahead.cost += waiter.cost;
            }
        }
        // Equal service goes by arrival: one arriving now is behind all
        // of its equals; one waiting, behind those that came before it.
        let before = |entry: &(Vtc, Instant, AgentId)| match &mine {
            (key, None) => entry.0 <= *key,
            (key, Some((at, agent))) => (entry.0, entry.1, &entry.2) < (*key, *at, agent),
        };
        let my_key = mine.0 .0;
        for (first, _, agent_id) in state.ready[level]
            .iter()
            .take_while(|entry| before(entry))
            .take(MAX_COUNTED)
        {
            let Some(agent) = state.agents.get(agent_id) else {
                continue;
            };
            let queue = &agent.levels[level];
            let Some(head) = queue.front().and_then(|(id, _)| state.waiters.get(id)) else {
                continue;
            };
            let each = head.cost / head.weight;
            // Its first request goes before; each next one while its
            // service then is still under this request's.
            let turns = if each > 0.0 && my_key.is_finite() {
                1 + ((my_key - first.0) / each).max(0.0).floor() as usize
            } else {
                queue.len()
            };
            let mut counted = 0;
            for (id, _) in queue.iter().take(turns.min(MAX_COUNTED)) {
                if Some(*id) == me_id {
                    break;
                }
                let waiter = state.waiters.get(id);
                if waiter.is_some_and(|w| w.front) {
                    // Counted with the front lane.
                    continue;
                }
                counted += 1;
                ahead.cost += waiter.map_or(each, |w| w.cost);
            }
            ahead.count += counted;
        }
        // A worse level's request that waited `steps` aging periods is
        // `steps` levels better: past this one's level, it is ahead.
        if !self.aging.is_zero() {
            for (steps, worse) in (level + 1..LEVELS).enumerate() {
                let Some(until) = u32::try_from(steps + 1)
                    .ok()
                    .and_then(|steps| self.aging.checked_mul(steps))
                    .and_then(|aged| now.checked_sub(aged))
                else {
                    continue;
                };
                for (_, id) in state.oldest[worse]
                    .iter()
                    .take_while(|(at, _)| *at <= until)
                    .take(MAX_COUNTED)
                {
                    ahead.count += 1;
                    ahead.cost += state.waiters.get(id).map_or(0.0, |w| w.cost);
                }
            }
        }
        ahead
    }
}

/// An agent's service once its request is served, and, for a request
/// that waits, when it came and whose it is (the order's tie-breakers).
type Place = (Vtc, Option<(Instant, AgentId)>);

/// Where `me` stands in its level's order of service: its agent's service
/// once its request is served (an agent back from idle starts level with
/// the least served; one arriving now comes after its agent's own queued
/// requests there) and, if it waits, when it came; and its ticket.
fn finish_of(state: &State, level: usize, me: Me<'_>) -> (Place, Option<u64>) {
    let floor = state.active.first().map_or(0.0, |(vtc, _)| vtc.0);
    match me {
        Me::Arriving {
            agent,
            cost,
            weight,
        } => {
            let (vtc, queued) = state.agents.get(agent).map_or((floor, 0.0), |a| {
                let vtc = if a.queued == 0 && a.in_flight == 0 {
                    a.vtc.max(floor)
                } else {
                    a.vtc
                };
                // Its own requests there go first, one after another.
                let queued: f64 = a.levels[level]
                    .iter()
                    .take(MAX_COUNTED)
                    .filter_map(|(id, _)| state.waiters.get(id))
                    .map(|w| w.cost / w.weight)
                    .sum();
                (vtc, queued)
            });
            ((Vtc(vtc + queued + cost / weight.max(1e-9)), None), None)
        }
        // At the front, no fresh arrival is before it.
        Me::Front => ((Vtc(f64::NEG_INFINITY), None), None),
        Me::Waiting(id) => {
            let Some(waiter) = state.waiters.get(&id) else {
                return ((Vtc(f64::INFINITY), None), Some(id));
            };
            if waiter.front {
                return ((Vtc(f64::NEG_INFINITY), None), Some(id));
            }
            let vtc = state.agents.get(&waiter.agent).map_or(floor, |a| a.vtc);
            let key = Vtc(vtc + waiter.cost / waiter.weight);
            (
                (key, Some((waiter.enqueued, waiter.agent.clone()))),
                Some(id),
            )
        }
    }
}
