//! How long permits are held, learnt from every permit given back: the
//! prediction that decides whether a request may borrow a reserved
//! permit.

use std::collections::HashMap;
use std::time::Duration;

use corral_core::AgentId;

use crate::config::Reserve;

/// The weight of the newest hold in an agent's average: an agent's
/// requests change with its task, so its recent ones count most.
const AGENT_SMOOTHING: f64 = 0.5;
/// The weight of the newest hold in the pool's average.
pub(crate) const POOL_SMOOTHING: f64 = 0.2;
/// Above this many agents remembered, their averages are forgotten (the
/// pool's average stands in for them until they are learnt again).
const MAX_AGENTS: usize = 10_000;

/// Whether a waiting request may borrow a reserved permit, as decided
/// when it arrives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Lend {
    /// Never: the reserve is its own, lending is off, or it is predicted
    /// to hold its permit longer than `lend_within`.
    Never,
    /// Its agent's history predicts it gives the permit back within
    /// `lend_within`.
    Short,
    /// Its agent has no history: decided when a permit is granted, by
    /// the pool's average hold.
    Unknown,
}

impl Lend {
    /// What a ticket in Redis adds to its level field to say so (levels
    /// are 0 to 9, so a script that knows nothing of lending reads a
    /// marked ticket as a level below every reserve, as before).
    #[cfg(feature = "redis")]
    pub(crate) fn mark(self) -> usize {
        match self {
            Self::Never => 0,
            Self::Short => 10,
            Self::Unknown => 20,
        }
    }
}

/// Holds measured: per agent, seconds per unit of cost; for the pool,
/// seconds.
#[derive(Debug, Default)]
pub(crate) struct Holds {
    agents: HashMap<AgentId, f64>,
    pool: Option<f64>,
    /// The pool's seconds per unit of cost.
    pool_rate: Option<f64>,
}

impl Holds {
    /// A permit of `agent`, granted for a request estimated to cost
    /// `cost`, was held for `held`.
    pub(crate) fn record(&mut self, agent: &AgentId, cost: f64, held: Duration) {
        let seconds = held.as_secs_f64();
        self.pool = Some(average(self.pool, seconds, POOL_SMOOTHING));
        if self.agents.len() >= MAX_AGENTS && !self.agents.contains_key(agent) {
            self.agents.clear();
        }
        let rate = seconds / cost.max(1.0);
        self.pool_rate = Some(average(self.pool_rate, rate, POOL_SMOOTHING));
        let entry = self.agents.get(agent).copied();
        self.agents
            .insert(agent.clone(), average(entry, rate, AGENT_SMOOTHING));
    }

    /// The pool's seconds per unit of predicted cost; `None` before any
    /// permit came back.
    pub(crate) fn pool_rate(&self) -> Option<f64> {
        self.pool_rate
    }

    /// The pool's average hold; `None` before any permit came back.
    pub(crate) fn pool(&self) -> Option<Duration> {
        self.pool.map(Duration::from_secs_f64)
    }

    /// Whether a request of `agent` at `priority` costing `cost` may
    /// borrow a reserved permit.
    pub(crate) fn lend(
        &self,
        reserve: Option<Reserve>,
        agent: &str,
        priority: u8,
        cost: f64,
    ) -> Lend {
        let Some(reserve) = reserve else {
            return Lend::Never;
        };
        if reserve.lend_within.is_zero() || priority <= reserve.up_to_priority {
            return Lend::Never;
        }
        match self.agents.get(agent) {
            None => Lend::Unknown,
            Some(rate) => {
                let predicted =
                    Duration::try_from_secs_f64(rate * cost.max(1.0)).unwrap_or(Duration::MAX);
                if predicted <= reserve.lend_within {
                    Lend::Short
                } else {
                    Lend::Never
                }
            }
        }
    }
}

fn average(old: Option<f64>, new: f64, weight: f64) -> f64 {
    match old {
        Some(old) => old + weight * (new - old),
        None => new,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reserve(lend_within_ms: u64) -> Option<Reserve> {
        Some(Reserve {
            lend_within: Duration::from_millis(lend_within_ms),
            ..Reserve::new(1, 2)
        })
    }

    #[test]
    fn a_prediction_is_the_agents_hold_per_cost_times_the_requests_cost() {
        let mut holds = Holds::default();
        let agent: AgentId = "a".into();
        assert_eq!(holds.lend(reserve(250), "a", 5, 100.0), Lend::Unknown);
        holds.record(&agent, 100.0, Duration::from_millis(40));
        // 0.4 ms per unit of cost.
        let cases = [
            (100.0, 250, Lend::Short),
            (600.0, 250, Lend::Short),
            (700.0, 250, Lend::Never),
            (100.0, 0, Lend::Never),
        ];
        for (cost, within, expected) in cases {
            assert_eq!(
                holds.lend(reserve(within), "a", 5, cost),
                expected,
                "cost {cost}, within {within} ms"
            );
        }
        // The reserve's own priorities never borrow; other agents are
        // unknown; no reserve, nothing to lend.
        assert_eq!(holds.lend(reserve(250), "a", 2, 100.0), Lend::Never);
        assert_eq!(holds.lend(reserve(250), "b", 5, 100.0), Lend::Unknown);
        assert_eq!(holds.lend(None, "a", 5, 100.0), Lend::Never);
    }

    #[test]
    fn averages_lean_to_the_newest_holds() {
        let mut holds = Holds::default();
        let agent: AgentId = "a".into();
        assert_eq!(holds.pool(), None);
        holds.record(&agent, 1.0, Duration::from_millis(100));
        assert_eq!(holds.pool(), Some(Duration::from_millis(100)));
        holds.record(&agent, 1.0, Duration::from_millis(600));
        // Pool: 100 + 0.2 × 500; agent: 100 + 0.5 × 500 (per unit).
        let pool = holds.pool().unwrap().as_secs_f64();
        assert!((pool - 0.2).abs() < 1e-9, "{pool}");
        assert_eq!(holds.lend(reserve(349), "a", 5, 1.0), Lend::Never);
        assert_eq!(holds.lend(reserve(350), "a", 5, 1.0), Lend::Short);
    }
}
