//! How long permits are held, learnt from every permit given back: the
//! prediction that decides whether a request may borrow a reserved
//! permit, and the pool's line of hold against cost that estimates
//! read.

use std::collections::HashMap;
use std::time::Duration;

use corral_core::AgentId;

use crate::config::Reserve;
use crate::estimate::HoldModel;

/// The weight of the newest hold in an agent's average: an agent's
/// requests change with its task, so its recent ones count most.
const AGENT_SMOOTHING: f64 = 0.5;
/// The weight of the newest hold in the pool's average.
pub(crate) const POOL_SMOOTHING: f64 = 0.2;
/// How much each older hold counts less in the pool's line of hold
/// against cost: about the last forty holds decide it.
const FIT_DECAY: f64 = 0.975;
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
    /// The pool's hold against cost.
    fit: Fit,
}

/// A least-squares line through (cost, seconds held), older holds
/// counting less: a request's hold is a fixed part (the time to the
/// first token, the round trips) and a part per unit of cost. A rate
/// alone (seconds per unit of cost) makes short requests look nearly
/// free and long ones dearer than they are: a queue of short requests
/// was estimated at a fraction of its wait.
#[derive(Debug, Default, Clone, Copy)]
struct Fit {
    weight: f64,
    x: f64,
    y: f64,
    xx: f64,
    xy: f64,
    seen: u64,
}

impl Fit {
    fn add(&mut self, cost: f64, seconds: f64) {
        let decay = |v: &mut f64| *v *= FIT_DECAY;
        for v in [
            &mut self.weight,
            &mut self.x,
            &mut self.y,
            &mut self.xx,
            &mut self.xy,
        ] {
            decay(v);
        }
        self.weight += 1.0;
        self.x += cost;
        self.y += seconds;
        self.xx += cost * cost;
        self.xy += cost * seconds;
        self.seen += 1;
    }

    /// The line, once a hold was seen: through the origin while the
    /// costs seen are all alike (no slope to tell), flat if holds fall
    /// with cost, never with a negative fixed part.
    fn model(&self) -> Option<HoldModel> {
        if self.seen == 0 || self.weight <= 0.0 {
            return None;
        }
        let mean_x = self.x / self.weight;
        let mean_y = self.y / self.weight;
        let variance = self.xx / self.weight - mean_x * mean_x;
        let through_origin = || HoldModel {
            fixed: 0.0,
            per_cost: if self.xx > 0.0 {
                self.xy / self.xx
            } else {
                0.0
            },
            average: mean_y,
        };
        if self.seen < 2 || variance <= 1e-9 * mean_x * mean_x.max(1.0) {
            return Some(if mean_x > 0.0 {
                through_origin()
            } else {
                HoldModel::flat(mean_y)
            });
        }
        let slope = (self.xy / self.weight - mean_x * mean_y) / variance;
        if slope <= 0.0 {
            return Some(HoldModel::flat(mean_y));
        }
        let fixed = mean_y - slope * mean_x;
        if fixed < 0.0 {
            return Some(through_origin());
        }
        Some(HoldModel {
            fixed,
            per_cost: slope,
            average: mean_y,
        })
    }
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
        self.fit.add(cost.max(0.0), seconds);
        let entry = self.agents.get(agent).copied();
        self.agents
            .insert(agent.clone(), average(entry, rate, AGENT_SMOOTHING));
    }

    /// The pool's hold against cost; `None` before any permit came
    /// back.
    pub(crate) fn model(&self) -> Option<HoldModel> {
        self.fit.model()
    }

    /// How many holds the pool's line was fitted through.
    pub(crate) fn seen(&self) -> u64 {
        self.fit.seen
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

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-6
    }

    #[test]
    fn the_pools_line_has_a_fixed_part_and_a_part_per_cost() {
        let mut holds = Holds::default();
        let agent: AgentId = "a".into();
        assert!(holds.model().is_none());
        // One hold: through the origin.
        holds.record(&agent, 100.0, Duration::from_millis(300));
        let one = holds.model().unwrap();
        assert!(
            close(one.fixed, 0.0) && close(one.per_cost, 0.003),
            "{one:?}"
        );
        // 50 ms to start, 5 ms per unit of cost: the line found again.
        for cost in [10.0, 200.0, 40.0, 800.0, 120.0, 20.0, 400.0] {
            let held = 0.05 + 0.005 * cost;
            holds.record(&agent, cost, Duration::from_secs_f64(held));
        }
        let model = holds.model().unwrap();
        // The first hold (300 ms at 100, off the line) counts less but
        // still a little; older holds fade.
        assert!((model.per_cost - 0.005).abs() < 0.0005, "{model:?}");
        for _ in 0..200 {
            for cost in [10.0, 800.0] {
                holds.record(&agent, cost, Duration::from_secs_f64(0.05 + 0.005 * cost));
            }
        }
        let model = holds.model().unwrap();
        assert!(
            close(model.fixed, 0.05) && close(model.per_cost, 0.005),
            "{model:?}"
        );
        assert!((model.hold(100.0) - 0.55).abs() < 1e-6);
    }

    #[test]
    fn holds_alike_or_falling_with_cost_give_no_slope() {
        let agent: AgentId = "a".into();
        let mut alike = Holds::default();
        for _ in 0..5 {
            alike.record(&agent, 50.0, Duration::from_millis(500));
        }
        let model = alike.model().unwrap();
        assert!(
            close(model.per_cost, 0.01) && close(model.fixed, 0.0),
            "{model:?}"
        );
        let mut falling = Holds::default();
        falling.record(&agent, 10.0, Duration::from_millis(900));
        falling.record(&agent, 1000.0, Duration::from_millis(100));
        let model = falling.model().unwrap();
        assert!(close(model.per_cost, 0.0), "{model:?}");
        assert!(close(model.hold(10.0), model.hold(1000.0)));
        // Nothing but free requests: their average hold.
        let mut free = Holds::default();
        free.record(&agent, 0.0, Duration::from_millis(40));
        assert!(close(free.model().unwrap().hold(0.0), 0.04));
    }
}
