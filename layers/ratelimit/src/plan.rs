//! Each class's quotas, compiled once.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use corral_core::{ClassName, Endpoint, RequestMeta};
use http::HeaderValue;

use crate::budget::{Budget, BudgetMode, Calendar, Period};
use crate::config::{Limits, RateLimitConfig};
use crate::error::RateLimited;
use crate::gcra::{Check, Checked, Limit, Quota, RateStore, Standing, Verdict};
use crate::metrics::{BUDGET_OVERRUN_TOTAL, RATE_LIMITED_TOTAL};

#[derive(Debug, Clone, Copy)]
enum Scope {
    Agent,
    Class,
}

/// What an item is held to.
#[derive(Debug, Clone, Copy)]
enum Measure {
    Rate(Quota),
    Budget {
        limit: u64,
        period: Period,
        shadow: bool,
    },
}

#[derive(Debug, Clone)]
struct Item {
    policy: &'static str,
    scope: Scope,
    tokens: bool,
    measure: Measure,
}

impl Item {
    /// Shadow budgets stay out of the `RateLimit` headers: a client that
    /// paces itself by them would slow down for a limit that is not
    /// enforced.
    fn in_headers(&self) -> bool {
        !matches!(self.measure, Measure::Budget { shadow: true, .. })
    }

    /// `"policy";q=limit;w=window seconds`, for `RateLimit-Policy`.
    fn policy_entry(&self) -> String {
        let (limit, window) = match self.measure {
            Measure::Rate(quota) => (quota.limit, quota.period.as_secs()),
            Measure::Budget { limit, period, .. } => (limit, period.seconds()),
        };
        format!("\"{}\";q={limit};w={window}", self.policy)
    }
}

#[derive(Debug)]
struct ClassPlan {
    items: Vec<Item>,
    policy_header: HeaderValue,
    budgets: bool,
}

impl ClassPlan {
    /// A class's quotas and budgets, in the order they are checked.
    fn new(limits: &Limits, mode: BudgetMode) -> Self {
        let mut items = Vec::new();
        let rate = |limit: Option<u64>, burst: Option<u64>| {
            limit.map(|limit| {
                let mut quota = Quota::per_minute(limit);
                if let Some(burst) = burst {
                    quota.burst = burst;
                }
                Measure::Rate(quota)
            })
        };
        let shadow = limits.budget_mode.unwrap_or(mode) == BudgetMode::Shadow;
        let budget = |limit: Option<u64>, period| {
            limit.map(|limit| Measure::Budget {
                limit,
                period,
                shadow,
            })
        };
        let wanted = [
            (
                "agent-requests",
                Scope::Agent,
                false,
                rate(limits.requests_per_minute, limits.burst),
            ),
            (
                "agent-tokens",
                Scope::Agent,
                true,
                rate(limits.tokens_per_minute, None),
            ),
            (
                "class-requests",
                Scope::Class,
                false,
                rate(limits.class_requests_per_minute, None),
            ),
            (
                "class-tokens",
                Scope::Class,
                true,
                rate(limits.class_tokens_per_minute, None),
            ),
            (
                "agent-tokens-day",
                Scope::Agent,
                true,
                budget(limits.tokens_per_day, Period::Day),
            ),
            (
                "agent-tokens-month",
                Scope::Agent,
                true,
                budget(limits.tokens_per_month, Period::Month),
            ),
            (
                "class-tokens-day",
                Scope::Class,
                true,
                budget(limits.class_tokens_per_day, Period::Day),
            ),
            (
                "class-tokens-month",
                Scope::Class,
                true,
                budget(limits.class_tokens_per_month, Period::Month),
            ),
        ];
        for (policy, scope, tokens, measure) in wanted {
            if let Some(measure) = measure {
                items.push(Item {
                    policy,
                    scope,
                    tokens,
                    measure,
                });
            }
        }
        let header = items
            .iter()
            .filter(|i| i.in_headers())
            .map(Item::policy_entry)
            .collect::<Vec<_>>()
            .join(", ");
        Self {
            budgets: items
                .iter()
                .any(|i| matches!(i.measure, Measure::Budget { .. })),
            items,
            policy_header: HeaderValue::from_str(&header).unwrap_or(HeaderValue::from_static("")),
        }
    }
}

/// What a passed request carries to its answer: the headers to add and
/// the token charges to correct.
#[derive(Debug)]
pub(crate) struct Passed {
    pub(crate) policy: HeaderValue,
    pub(crate) standing: Option<HeaderValue>,
    pub(crate) settle: Option<Settle>,
}

/// Token charges made up front, corrected when the answer says what was
/// generated. One that is dropped uncorrected (the request was refused
/// further in, failed before an answer, or its client left while it
/// waited) gives the charge back: nothing was generated.
pub(crate) struct Settle {
    store: Arc<dyn RateStore>,
    charged: u64,
    keys: Vec<(String, Limit)>,
    settled: bool,
}

corral_core::impl_debug!(Settle { charged, settled });

impl Settle {
    /// Charges `generated` when it is more than the estimate; never
    /// refunds (for answers that did not end well).
    pub(crate) fn settle_at_least(mut self, generated: u64) {
        if generated > self.charged {
            self.correct(generated);
        }
        self.settled = true;
    }

    pub(crate) fn settle(mut self, generated: u64) {
        self.correct(generated);
    }

    /// Keeps the charge made up front: an answer that says nothing of
    /// what it generated.
    pub(crate) fn keep(mut self) {
        self.settled = true;
    }

    fn correct(&mut self, generated: u64) {
        self.settled = true;
        for (key, limit) in &self.keys {
            // A cost larger than the bucket was charged as the whole
            // bucket: correct from what was charged, not what was asked,
            // or the refund would leave more than a full bucket.
            let charged = limit.charge(self.charged);
            let delta = i64::try_from(generated).unwrap_or(i64::MAX)
                - i64::try_from(charged).unwrap_or(i64::MAX);
            if delta != 0 {
                self.store.adjust(key, limit, delta);
            }
        }
    }
}

impl Drop for Settle {
    fn drop(&mut self) {
        if !self.settled {
            self.correct(0);
        }
    }
}

/// A budget's key and window, as read now.
pub(crate) struct BudgetKey {
    pub(crate) policy: &'static str,
    pub(crate) key: String,
    pub(crate) window: String,
    pub(crate) budget: Budget,
}

/// One request's checks, before the store's verdict.
#[derive(Debug)]
pub(crate) struct Prepared {
    plan: Arc<ClassPlan>,
    class: ClassName,
    checks: Vec<Check>,
    tokens: u64,
    /// The wall clock when the budgets' windows were read.
    now: Duration,
}

pub(crate) struct Plan {
    classes: HashMap<String, Arc<ClassPlan>>,
    store: Arc<dyn RateStore>,
    default_generation_tokens: u64,
    calendar: Calendar,
}

impl Plan {
    pub(crate) fn new(
        config: &RateLimitConfig,
        store: Arc<dyn RateStore>,
        calendar: Calendar,
    ) -> Self {
        let classes = config
            .classes
            .iter()
            .map(|(name, limits)| {
                (
                    name.clone(),
                    Arc::new(ClassPlan::new(limits, config.budget_mode)),
                )
            })
            .filter(|(_, plan)| !plan.items.is_empty())
            .collect();
        Self {
            classes,
            store,
            default_generation_tokens: config.default_generation_tokens,
            calendar,
        }
    }

    /// The checks `meta`'s quotas ask for. `None`: its class has no
    /// limits.
    pub(crate) fn prepare(&self, meta: &RequestMeta) -> Option<Prepared> {
        let plan = self.classes.get(meta.class.as_str())?;
        let generates = !matches!(
            meta.endpoint,
            Endpoint::Embed | Endpoint::Embeddings | Endpoint::OpenAiEmbeddings
        );
        let tokens = if generates {
            meta.generation
                .max_tokens
                .unwrap_or(self.default_generation_tokens)
        } else {
            0
        };
        // The wall clock is read only for a class with budgets.
        let now = if plan.budgets {
            self.calendar.now()
        } else {
            Duration::ZERO
        };
        let checks: Vec<Check> = plan
            .items
            .iter()
            .map(|item| {
                let who = match item.scope {
                    Scope::Agent => format!("agent:{}", meta.agent),
                    Scope::Class => format!("class:{}", meta.class),
                };
                let cost = if item.tokens { tokens } else { 1 };
                match item.measure {
                    Measure::Rate(quota) => Check {
                        key: format!("{who}:{}", item.policy),
                        limit: Limit::Rate(quota),
                        cost,
                    },
                    Measure::Budget {
                        limit,
                        period,
                        shadow,
                    } => {
                        // The key names the window: a new day is a new
                        // counter, the old one expires.
                        let (window, resets_in) = period.window(now);
                        Check {
                            key: format!("{who}:{}:{window}", item.policy),
                            limit: Limit::Budget(Budget {
                                limit,
                                resets_in,
                                shadow,
                            }),
                            cost,
                        }
                    }
                }
            })
            .collect();
        Some(Prepared {
            plan: plan.clone(),
            class: meta.class.clone(),
            checks,
            tokens,
            now,
        })
    }

    pub(crate) fn store(&self) -> &Arc<dyn RateStore> {
        &self.store
    }

    /// The budgets of `agent` of `class` and their windows now, and the
    /// wall clock they were read at.
    pub(crate) fn budgets_of(&self, agent: &str, class: &str) -> (Duration, Vec<BudgetKey>) {
        let now = self.calendar.now();
        let Some(plan) = self.classes.get(class) else {
            return (now, Vec::new());
        };
        let budgets = plan
            .items
            .iter()
            .filter_map(|item| match item.measure {
                Measure::Budget {
                    limit,
                    period,
                    shadow,
                } => {
                    let who = match item.scope {
                        Scope::Agent => format!("agent:{agent}"),
                        Scope::Class => format!("class:{class}"),
                    };
                    let (window, resets_in) = period.window(now);
                    Some(BudgetKey {
                        policy: item.policy,
                        key: format!("{who}:{}:{window}", item.policy),
                        window,
                        budget: Budget {
                            limit,
                            resets_in,
                            shadow,
                        },
                    })
                }
                Measure::Rate(_) => None,
            })
            .collect();
        (now, budgets)
    }

    /// Asks the store.
    pub(crate) fn check(&self, prepared: &Prepared) -> Checked {
        self.store.check(&prepared.checks)
    }

    /// What the store's verdict means: what to carry to the answer, or
    /// the refusal.
    pub(crate) fn conclude(
        &self,
        prepared: &Prepared,
        verdict: Verdict,
    ) -> Result<Passed, RateLimited> {
        let plan = &prepared.plan;
        match verdict {
            Verdict::Allowed(standings) => {
                for (item, _) in plan.items.iter().zip(&standings).filter(|(_, s)| s.over) {
                    // A shadow budget: the request passes, the overrun is
                    // counted.
                    metrics::counter!(BUDGET_OVERRUN_TOTAL, "class" => prepared.class.to_string(), "quota" => item.policy)
                        .increment(1);
                }
                Ok(self.passed(plan, &prepared.checks, &standings, prepared.tokens))
            }
            Verdict::Denied { index, retry_after } => {
                // The store answers with the index of one of the checks,
                // which are the plan's items in order.
                let Some(item) = plan.items.get(index).or(plan.items.last()) else {
                    return Ok(self.passed(plan, &[], &[], 0));
                };
                metrics::counter!(RATE_LIMITED_TOTAL, "class" => prepared.class.to_string(), "quota" => item.policy)
                    .increment(1);
                let (limit, resets_at) = match (item.measure, prepared.checks.get(index)) {
                    (
                        Measure::Budget { limit, period, .. },
                        Some(Check {
                            limit: Limit::Budget(budget),
                            ..
                        }),
                    ) => (limit, Some((period, prepared.now + budget.resets_in))),
                    (Measure::Budget { limit, .. }, _) => (limit, None),
                    (Measure::Rate(quota), _) => (quota.limit, None),
                };
                Err(RateLimited {
                    policy: item.policy,
                    limit,
                    retry_after,
                    resets_at,
                    policies: plan.policy_header.clone(),
                })
            }
        }
    }

    fn passed(
        &self,
        plan: &ClassPlan,
        checks: &[Check],
        standings: &[Standing],
        tokens: u64,
    ) -> Passed {
        let standing = plan
            .items
            .iter()
            .zip(standings)
            .filter(|(item, _)| item.in_headers())
            .map(|(item, s)| {
                format!(
                    "\"{}\";r={};t={}",
                    item.policy,
                    s.remaining,
                    s.reset.as_secs_f64().ceil() as u64
                )
            })
            .collect::<Vec<_>>()
            .join(", ");
        let keys: Vec<(String, Limit)> = plan
            .items
            .iter()
            .zip(checks)
            .filter(|(item, _)| item.tokens)
            .map(|(_, check)| (check.key.clone(), check.limit))
            .collect();
        Passed {
            policy: plan.policy_header.clone(),
            standing: HeaderValue::from_str(&standing).ok(),
            settle: (!keys.is_empty() && tokens > 0).then(|| Settle {
                store: self.store.clone(),
                charged: tokens,
                keys,
                settled: false,
            }),
        }
    }
}
