//! Each class's quotas, compiled once.

use std::collections::HashMap;
use std::sync::Arc;

use corral_core::{ClassName, Endpoint, RequestMeta};
use http::HeaderValue;

use crate::config::RateLimitConfig;
use crate::error::RateLimited;
use crate::gcra::{Check, Checked, Quota, RateStore, Standing, Verdict};
use crate::metrics::RATE_LIMITED_TOTAL;

#[derive(Debug, Clone, Copy)]
enum Scope {
    Agent,
    Class,
}

#[derive(Debug, Clone)]
struct Item {
    policy: &'static str,
    scope: Scope,
    tokens: bool,
    quota: Quota,
}

#[derive(Debug)]
struct ClassPlan {
    items: Vec<Item>,
    policy_header: HeaderValue,
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
/// generated.
pub(crate) struct Settle {
    store: Arc<dyn RateStore>,
    charged: u64,
    keys: Vec<(String, Quota)>,
}

corral_core::impl_debug!(Settle { charged });

impl Settle {
    /// Charges `generated` when it is more than the estimate; never
    /// refunds (for answers that did not end well).
    pub(crate) fn settle_at_least(self, generated: u64) {
        if generated > self.charged {
            self.settle(generated);
        }
    }

    pub(crate) fn settle(self, generated: u64) {
        for (key, quota) in &self.keys {
            // A cost larger than the bucket was charged as the whole
            // bucket: correct from what was charged, not what was asked,
            // or the refund would leave more than a full bucket.
            let charged = self.charged.min(quota.burst.max(1));
            let delta = i64::try_from(generated).unwrap_or(i64::MAX)
                - i64::try_from(charged).unwrap_or(i64::MAX);
            if delta != 0 {
                self.store.adjust(key, quota, delta);
            }
        }
    }
}

/// One request's checks, before the store's verdict.
#[derive(Debug)]
pub(crate) struct Prepared {
    plan: Arc<ClassPlan>,
    class: ClassName,
    checks: Vec<Check>,
    tokens: u64,
}

pub(crate) struct Plan {
    classes: HashMap<String, Arc<ClassPlan>>,
    store: Arc<dyn RateStore>,
    default_generation_tokens: u64,
}

impl Plan {
    pub(crate) fn new(config: &RateLimitConfig, store: Arc<dyn RateStore>) -> Self {
        let classes = config
            .classes
            .iter()
            .map(|(name, limits)| {
                let mut items = Vec::new();
                let mut add = |policy, scope, tokens, limit: Option<u64>, burst: Option<u64>| {
                    if let Some(limit) = limit {
                        let mut quota = Quota::per_minute(limit);
                        if let Some(burst) = burst {
                            quota.burst = burst;
                        }
                        items.push(Item {
                            policy,
                            scope,
                            tokens,
                            quota,
                        });
                    }
                };
                add(
                    "agent-requests",
                    Scope::Agent,
                    false,
                    limits.requests_per_minute,
                    limits.burst,
                );
                add(
                    "agent-tokens",
                    Scope::Agent,
                    true,
                    limits.tokens_per_minute,
                    None,
                );
                add(
                    "class-requests",
                    Scope::Class,
                    false,
                    limits.class_requests_per_minute,
                    None,
                );
                add(
                    "class-tokens",
                    Scope::Class,
                    true,
                    limits.class_tokens_per_minute,
                    None,
                );
                let header = items
                    .iter()
                    .map(|i| {
                        format!(
                            "\"{}\";q={};w={}",
                            i.policy,
                            i.quota.limit,
                            i.quota.period.as_secs()
                        )
                    })
                    .collect::<Vec<_>>()
                    .join(", ");
                let policy_header =
                    HeaderValue::from_str(&header).unwrap_or(HeaderValue::from_static(""));
                (
                    name.clone(),
                    Arc::new(ClassPlan {
                        items,
                        policy_header,
                    }),
                )
            })
            .filter(|(_, plan)| !plan.items.is_empty())
            .collect();
        Self {
            classes,
            store,
            default_generation_tokens: config.default_generation_tokens,
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
        let checks: Vec<Check> = plan
            .items
            .iter()
            .map(|item| {
                let who = match item.scope {
                    Scope::Agent => format!("agent:{}", meta.agent),
                    Scope::Class => format!("class:{}", meta.class),
                };
                Check {
                    key: format!("{who}:{}", item.policy),
                    quota: item.quota,
                    cost: if item.tokens { tokens } else { 1 },
                }
            })
            .collect();
        Some(Prepared {
            plan: plan.clone(),
            class: meta.class.clone(),
            checks,
            tokens,
        })
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
                Err(RateLimited {
                    policy: item.policy,
                    limit: item.quota.limit,
                    retry_after,
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
        let keys: Vec<(String, Quota)> = plan
            .items
            .iter()
            .zip(checks)
            .filter(|(item, _)| item.tokens)
            .map(|(_, check)| (check.key.clone(), check.quota))
            .collect();
        Passed {
            policy: plan.policy_header.clone(),
            standing: HeaderValue::from_str(&standing).ok(),
            settle: (!keys.is_empty() && tokens > 0).then(|| Settle {
                store: self.store.clone(),
                charged: tokens,
                keys,
            }),
        }
    }
}
