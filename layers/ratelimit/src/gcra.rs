//! The Generic Cell Rate Algorithm, and the store it keeps its state in.
//!
//! GCRA keeps one instant per key, the theoretical arrival time (TAT) of
//! the next request: a request of cost `n` conforms if
//! `max(TAT, now) + n·T − τ ≤ now`, where `T` is the emission interval
//! (period / limit) and `τ` the burst tolerance (`burst · T`). One number
//! per key, no background refill, exact at any rate: the algorithm of
//! `governor` and of Redis' `redis-cell`.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

use crate::budget::{Budget, Budgets};

/// A quota: `limit` per `period`, up to `burst` at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Quota {
    /// How much per period.
    pub limit: u64,
    /// The period.
    pub period: Duration,
    /// How much may be spent at once (a full bucket); at least 1.
    pub burst: u64,
}

impl Quota {
    /// `limit` per minute, the whole minute's worth at once.
    pub fn per_minute(limit: u64) -> Self {
        Self {
            limit,
            period: Duration::from_secs(60),
            burst: limit,
        }
    }

    pub(crate) fn interval(&self) -> Duration {
        self.period / u32::try_from(self.limit.max(1)).unwrap_or(u32::MAX)
    }

    pub(crate) fn tolerance(&self) -> Duration {
        self.interval() * u32::try_from(self.burst.max(1)).unwrap_or(u32::MAX)
    }
}

/// What a check is held to: a rate (GCRA) or a budget over a window.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Limit {
    /// So much per period, refilled continuously.
    Rate(Quota),
    /// So much until a calendar window ends.
    Budget(Budget),
}

impl From<Quota> for Limit {
    fn from(quota: Quota) -> Self {
        Limit::Rate(quota)
    }
}

impl From<Budget> for Limit {
    fn from(budget: Budget) -> Self {
        Limit::Budget(budget)
    }
}

impl Limit {
    /// What a request of `cost` is charged: no more than a full bucket
    /// or a whole budget, or it could never pass.
    pub(crate) fn charge(&self, cost: u64) -> u64 {
        match self {
            Limit::Rate(quota) => cost.min(quota.burst.max(1)),
            Limit::Budget(budget) => budget.charge(cost),
        }
    }
}

/// One check: spend `cost` of `limit` under `key`.
#[derive(Debug, Clone)]
pub struct Check {
    /// Whose quota (`agent:planner:requests`).
    pub key: String,
    /// The quota or budget.
    pub limit: Limit,
    /// What this request spends.
    pub cost: u64,
}

/// How a quota stands after a check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Standing {
    /// What is left to spend now.
    pub remaining: u64,
    /// Until the bucket is full again (a budget: until its window ends).
    pub reset: Duration,
    /// A shadow budget this request went over: it passed, and is
    /// reported.
    pub over: bool,
}

/// The answer to a set of checks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Every check passed and was charged; how each quota stands.
    Allowed(Vec<Standing>),
    /// Check `index` failed (nothing was charged); when it would pass.
    Denied {
        /// Which check.
        index: usize,
        /// How long until it conforms.
        retry_after: Duration,
    },
}

/// A verdict known at once (memory), or one that is on its way (Redis).
pub enum Checked {
    /// Decided.
    Now(Verdict),
    /// Being decided elsewhere.
    Later(Pin<Box<dyn Future<Output = Verdict> + Send>>),
}

impl std::fmt::Debug for Checked {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Checked::Now(verdict) => f.debug_tuple("Now").field(verdict).finish(),
            Checked::Later(_) => f.write_str("Later"),
        }
    }
}

/// Where GCRA state lives: in memory by default, in Redis to share it
/// between replicas. Checks are atomic as a set: all are charged or none.
pub trait RateStore: Send + Sync + 'static {
    /// Charges every check, or none if one does not conform.
    fn check(&self, checks: &[Check]) -> Checked;

    /// Adds `delta` (negative: gives back) to what `key` has spent, when
    /// the real cost is known.
    fn adjust(&self, key: &str, limit: &Limit, delta: i64);

    /// What each budget window in `keys` has spent (0 for one never
    /// charged or ended), for those who read budgets without charging.
    fn spent(&self, keys: &[String]) -> Pin<Box<dyn Future<Output = Vec<u64>> + Send + '_>>;
}

/// GCRA state and budgets in this process.
#[derive(Debug, Default)]
pub struct MemoryRates {
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    tat: HashMap<String, Instant>,
    budgets: Budgets,
}

impl MemoryRates {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }
}

/// The refusal for a spent budget at `index`: when every budget of the set
/// that is spent is whole again (a day's and a month's both spent: the
/// month's end, or the client told "midnight" is refused again).
fn spent_budget(checks: &[Check], index: usize, budgets: &Budgets) -> Verdict {
    let (index, retry_after) = checks
        .iter()
        .enumerate()
        .skip(index)
        .filter_map(|(i, check)| match &check.limit {
            Limit::Budget(budget) if !budget.allows(budgets.spent(&check.key)) => {
                Some((i, budget.resets_in))
            }
            _ => None,
        })
        .max_by_key(|(_, resets_in)| *resets_in)
        .unwrap_or((index, Duration::ZERO));
    Verdict::Denied { index, retry_after }
}

/// How a rate stands with `used` of its tolerance taken.
pub(crate) fn rate_standing(quota: &Quota, used: Duration) -> Standing {
    let left = quota.tolerance().saturating_sub(used);
    Standing {
        remaining: u64::try_from(left.as_nanos() / quota.interval().as_nanos().max(1))
            .unwrap_or(u64::MAX),
        reset: used,
        over: false,
    }
}

fn scaled(interval: Duration, n: u64) -> Duration {
    interval.saturating_mul(u32::try_from(n).unwrap_or(u32::MAX))
}

impl RateStore for MemoryRates {
    fn check(&self, checks: &[Check]) -> Checked {
        Checked::Now(self.decide(checks))
    }

    fn adjust(&self, key: &str, limit: &Limit, delta: i64) {
        match limit {
            Limit::Rate(quota) => self.shift(key, quota, delta),
            Limit::Budget(_) => corral_core::lock(&self.state).budgets.add(key, delta),
        }
    }

    fn spent(&self, keys: &[String]) -> Pin<Box<dyn Future<Output = Vec<u64>> + Send + '_>> {
        let state = corral_core::lock(&self.state);
        let spent = keys.iter().map(|key| state.budgets.spent(key)).collect();
        Box::pin(std::future::ready(spent))
    }
}

impl MemoryRates {
    /// Charges every check, or none if one does not conform: at once.
    ///
    /// ```
    /// use corral_ratelimit::{Check, MemoryRates, Quota, Verdict};
    ///
    /// let store = MemoryRates::new();
    /// let check = [Check { key: "agent:a:requests".into(), limit: Quota::per_minute(1).into(), cost: 1 }];
    /// assert!(matches!(store.decide(&check), Verdict::Allowed(_)));
    /// assert!(matches!(store.decide(&check), Verdict::Denied { index: 0, .. }));
    /// ```
    pub fn decide(&self, checks: &[Check]) -> Verdict {
        let now = Instant::now();
        let mut state = corral_core::lock(&self.state);
        let State { tat: tats, budgets } = &mut *state;
        // Old entries whose bucket is full again carry no information.
        if tats.len() > 100_000 {
            tats.retain(|_, tat| *tat > now);
        }
        budgets.forget_ended(now);
        let mut next = Vec::with_capacity(checks.len());
        for (index, check) in checks.iter().enumerate() {
            let cost = check.limit.charge(check.cost);
            match &check.limit {
                Limit::Rate(quota) => {
                    let (interval, tolerance) = (quota.interval(), quota.tolerance());
                    let tat = tats.get(&check.key).copied().unwrap_or(now).max(now);
                    let new_tat = tat + scaled(interval, cost);
                    let allowed_at = new_tat.checked_sub(tolerance).unwrap_or(now);
                    if allowed_at > now {
                        return Verdict::Denied {
                            index,
                            retry_after: allowed_at - now,
                        };
                    }
                    next.push(new_tat);
                }
                Limit::Budget(budget) => {
                    // What generates nothing (an embedding) spends nothing.
                    if cost > 0 && !budget.allows(budgets.spent(&check.key)) {
                        return spent_budget(checks, index, budgets);
                    }
                    next.push(now);
                }
            }
        }
        let standings = checks
            .iter()
            .zip(next)
            .map(|(check, new_tat)| match &check.limit {
                Limit::Rate(quota) => {
                    tats.insert(check.key.clone(), new_tat);
                    rate_standing(quota, new_tat.saturating_duration_since(now))
                }
                Limit::Budget(budget) => {
                    let cost = budget.charge(check.cost);
                    let spent = budgets.charge(&check.key, cost, now + budget.resets_in);
                    budget.standing(spent)
                }
            })
            .collect();
        Verdict::Allowed(standings)
    }

    /// Takes what a budget window has spent from the store shared by the
    /// replicas: the count this store goes on from while that one is
    /// away, so a spent budget stays spent.
    pub fn remember_spent(&self, key: &str, spent: u64, resets_in: Duration) {
        let ends = Instant::now() + resets_in;
        corral_core::lock(&self.state)
            .budgets
            .remember(key, spent, ends);
    }

    /// Adds `delta` to what `key` has spent (negative: gives back).
    pub fn shift(&self, key: &str, quota: &Quota, delta: i64) {
        let now = Instant::now();
        let mut state = corral_core::lock(&self.state);
        let tats = &mut state.tat;
        let interval = quota.interval();
        let tat = tats.get(key).copied().unwrap_or(now).max(now);
        let moved = scaled(interval, delta.unsigned_abs());
        let new_tat = if delta >= 0 {
            tat + moved
        } else {
            tat.checked_sub(moved).unwrap_or(now).max(now)
        };
        tats.insert(key.to_string(), new_tat);
    }
}
