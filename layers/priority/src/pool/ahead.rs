//! The work ahead of a request in the order of service, for its
//! estimate ([`crate::Estimate`]).

use corral_core::{lock, AgentId};
use tokio::time::Instant;

use super::index::Vtc;
use super::{Pool, State, LEVELS};
use crate::estimate::{eta, Ahead, Estimate, Throughput};

/// At most this many requests of one level are counted one by one: an
/// estimate must not walk a queue of thousands under the pool's lock.
const MAX_COUNTED: usize = 1024;

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
}

impl Pool {
    /// Where a request at `level` stands: the requests ahead of it (every
    /// better level; at its own, the agents next whose service once their
    /// next request is served is less than its agent's once it is, as the
    /// order of service goes; worse levels' requests aged past it) and
    /// its wait.
    pub(crate) fn estimate(&self, level: usize, me: Me<'_>) -> Estimate {
        let now = Instant::now();
        let state = lock(&self.state);
        let ahead = self.ahead(&state, level.min(LEVELS - 1), me, now);
        let capacity = match &self.fleet {
            Some(link) => link.fleet.capacity_for(&link.model),
            None => state.capacity,
        };
        let throughput = Throughput {
            capacity,
            in_flight: state.in_flight,
            seconds_per_cost: state.holds.pool_rate(),
            average_hold: state.holds.pool().map(|d| d.as_secs_f64()),
            completions_per_sec: state.drain_rate(now),
        };
        Estimate {
            position: ahead.count,
            eta: eta(ahead, throughput),
        }
    }

    fn ahead(&self, state: &State, level: usize, me: Me<'_>, now: Instant) -> Ahead {
        let mut ahead = Ahead::default();
        for better in 0..level {
            ahead.count += state.queued[better];
            ahead.cost += state.queued_cost[better];
        }
        // Its own level, in the order of service: the agents whose next
        // request there goes before its own.
        let (mine, me_id) = finish_of(state, me);
        // Equal service goes by arrival: one arriving now is behind all
        // of its equals; one waiting, behind those that came before it.
        let before = |entry: &(Vtc, Instant, AgentId)| match &mine {
            (key, None) => entry.0 <= *key,
            (key, Some((at, agent))) => (entry.0, entry.1, &entry.2) < (*key, *at, agent),
        };
        for (_, _, agent) in state.ready[level]
            .iter()
            .take_while(|entry| before(entry))
            .take(MAX_COUNTED)
        {
            let head = state
                .agents
                .get(agent)
                .and_then(|a| a.levels[level].front())
                .filter(|(id, _)| Some(*id) != me_id);
            if let Some((id, _)) = head {
                ahead.count += 1;
                ahead.cost += state.waiters.get(id).map_or(0.0, |w| w.cost);
            }
        }
        // A worse level's request that waited `steps` aging periods is
        // `steps` levels better: past this one's level, it is ahead.
        if !self.aging.is_zero() {
            for (steps, worse) in (level + 1..LEVELS).enumerate() {
                let aged = self.aging * u32::try_from(steps + 1).unwrap_or(u32::MAX);
                let Some(until) = now.checked_sub(aged) else {
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
/// the least served) and, if it waits, when it came; and its ticket.
fn finish_of(state: &State, me: Me<'_>) -> (Place, Option<u64>) {
    let floor = state.active.first().map_or(0.0, |(vtc, _)| vtc.0);
    match me {
        Me::Arriving {
            agent,
            cost,
            weight,
        } => {
            let vtc = state.agents.get(agent).map_or(floor, |a| {
                if a.queued == 0 && a.in_flight == 0 {
                    a.vtc.max(floor)
                } else {
                    a.vtc
                }
            });
            ((Vtc(vtc + cost / weight.max(1e-9)), None), None)
        }
        Me::Waiting(id) => {
            let Some(waiter) = state.waiters.get(&id) else {
                return ((Vtc(f64::INFINITY), None), Some(id));
            };
            let vtc = state.agents.get(&waiter.agent).map_or(floor, |a| a.vtc);
            let key = Vtc(vtc + waiter.cost / waiter.weight);
            (
                (key, Some((waiter.enqueued, waiter.agent.clone()))),
                Some(id),
            )
        }
    }
}
