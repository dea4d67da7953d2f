//! GCRA state in Redis: one Lua script per check, atomic across
//! replicas.

use std::sync::{Arc, LazyLock};
use std::time::Duration;

use corral_core::RedisState;

use crate::gcra::{rate_standing, Check, Checked, Limit, MemoryRates, RateStore, Verdict};

static CHECK: LazyLock<redis::Script> =
    LazyLock::new(|| redis::Script::new(include_str!("gcra.lua")));
static ADJUST: LazyLock<redis::Script> =
    LazyLock::new(|| redis::Script::new(include_str!("adjust.lua")));
static SPEND: LazyLock<redis::Script> =
    LazyLock::new(|| redis::Script::new(include_str!("spend.lua")));

/// Quotas kept in Redis, so an agent's quota is one quota whichever
/// replica its requests go through.
///
/// Each request's checks run as one Lua script (`gcra.lua`): the clock is
/// Redis' own `TIME`, so replicas whose clocks differ still agree, and all
/// the checks (rates and budgets) are charged or none. A budget's window
/// is named in its key by the replica's wall clock; its key expires a
/// minute after the window ends. A check that Redis does not answer
/// within the state's timeout is decided by a [`MemoryRates`] of this
/// replica instead: limits keep holding per replica while Redis is away
/// (an agent spreading over N replicas may then get up to N times its
/// quota), and requests never wait on a dead Redis.
///
/// ```no_run
/// use std::sync::Arc;
/// use std::time::Duration;
/// use corral_core::RedisState;
/// use corral_ratelimit::{RateLimitConfig, RateLimitLayer, RedisRates};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let state = RedisState::new("redis://127.0.0.1:6379", "corral:", "replica-1", Duration::from_millis(200)).unwrap();
/// let config: RateLimitConfig = toml::from_str("[classes.opus]\nrequests_per_minute = 10").unwrap();
/// let layer = RateLimitLayer::new(&config).map(|l| l.with_store(Arc::new(RedisRates::new(state)))).unwrap();
/// # drop(layer);
/// # }
/// ```
#[derive(Debug, Clone)]
pub struct RedisRates {
    state: RedisState,
    fallback: Arc<MemoryRates>,
}

impl RedisRates {
    /// Quotas under the state's key prefix + `rate:`.
    pub fn new(state: RedisState) -> Self {
        Self {
            state,
            fallback: Arc::new(MemoryRates::new()),
        }
    }
}

/// Microseconds with their fraction: whole ones would round 8.57 µs per
/// token (7M a minute) down to 8 and let 7 % more through.
fn micros(d: Duration) -> f64 {
    (d.as_nanos().max(1) as f64) / 1000.0
}

impl RateStore for RedisRates {
    fn check(&self, checks: &[Check]) -> Checked {
        if !self.state.is_up() {
            return Checked::Now(self.fallback.decide(checks));
        }
        let keys: Vec<String> = checks
            .iter()
            .map(|c| self.state.key(&format!("rate:{}", c.key)))
            .collect();
        let mut args = Vec::with_capacity(checks.len() * 4);
        for check in checks {
            // As the memory store: a cost above the bucket (the budget)
            // charges the whole of it, or it could never pass.
            let cost = check.limit.charge(check.cost);
            match &check.limit {
                Limit::Rate(quota) => args.extend([
                    "r".to_string(),
                    micros(quota.interval()).to_string(),
                    micros(quota.tolerance()).to_string(),
                ]),
                Limit::Budget(budget) => args.extend([
                    if budget.shadow { "s" } else { "b" }.to_string(),
                    budget.limit.to_string(),
                    budget.resets_in.as_millis().max(1).to_string(),
                ]),
            }
            args.push(cost.to_string());
        }
        let limits: Vec<Limit> = checks.iter().map(|c| c.limit).collect();
        let checks = checks.to_vec();
        let store = self.clone();
        Checked::Later(Box::pin(async move {
            match store.state.script::<Vec<i64>>(&CHECK, &keys, &args).await {
                Ok(reply) => {
                    store.remember(&checks, &reply);
                    verdict(&reply, &limits)
                }
                Err(_) => store.fallback.decide(&checks),
            }
        }))
    }

    fn spent(
        &self,
        keys: &[String],
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Vec<u64>> + Send + '_>> {
        let keys = keys.to_vec();
        Box::pin(async move { self.read_spent(&keys).await })
    }

    fn adjust(&self, key: &str, limit: &Limit, delta: i64) {
        if !self.state.is_up() {
            self.fallback.adjust(key, limit, delta);
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let keys = vec![self.state.key(&format!("rate:{key}"))];
        let (script, args) = match limit {
            Limit::Rate(quota) => (
                &*ADJUST,
                vec![micros(quota.interval()).to_string(), delta.to_string()],
            ),
            Limit::Budget(_) => (&*SPEND, vec![delta.to_string()]),
        };
        let state = self.state.clone();
        runtime.spawn(async move {
            // A correction that is lost leaves the charge made up front.
            let _ = state.script::<i64>(script, &keys, &args).await;
        });
    }
}

impl RedisRates {
    /// Keeps the budgets Redis counted in the fallback store, so a budget
    /// spent across the replicas stays spent here while Redis is away.
    fn remember(&self, checks: &[Check], reply: &[i64]) {
        let as_spent = |n: i64| u64::try_from(n).unwrap_or(0);
        match reply {
            [1, counts @ ..] => {
                for (check, count) in checks.iter().zip(counts) {
                    if let Limit::Budget(budget) = &check.limit {
                        self.fallback.remember_spent(
                            &check.key,
                            as_spent(*count),
                            budget.resets_in,
                        );
                    }
                }
            }
            [0, index, ..] => {
                let check = usize::try_from(*index).ok().and_then(|i| checks.get(i));
                if let Some(Check {
                    key,
                    limit: Limit::Budget(budget),
                    ..
                }) = check
                {
                    self.fallback
                        .remember_spent(key, budget.limit, budget.resets_in);
                }
            }
            _ => {}
        }
    }

    async fn read_spent(&self, keys: &[String]) -> Vec<u64> {
        if keys.is_empty() {
            return Vec::new();
        }
        if self.state.is_up() {
            let mut command = redis::cmd("MGET");
            for key in keys {
                command.arg(self.state.key(&format!("rate:{key}")));
            }
            if let Ok(values) = self.state.query::<Vec<Option<String>>>(&command).await {
                return values
                    .iter()
                    .map(|v| v.as_deref().and_then(|v| v.parse().ok()).unwrap_or(0))
                    .collect();
            }
        }
        self.fallback.spent(keys).await
    }
}

fn verdict(reply: &[i64], limits: &[Limit]) -> Verdict {
    let micros_to = |n: i64| Duration::from_micros(u64::try_from(n).unwrap_or(0));
    match reply {
        [0, index, wait, ..] => Verdict::Denied {
            index: usize::try_from(*index).unwrap_or(0),
            retry_after: micros_to(*wait),
        },
        [1, used @ ..] => Verdict::Allowed(
            used.iter()
                .zip(limits)
                .map(|(used, limit)| match limit {
                    Limit::Rate(quota) => rate_standing(quota, micros_to(*used)),
                    Limit::Budget(budget) => budget.standing(u64::try_from(*used).unwrap_or(0)),
                })
                .collect(),
        ),
        // Not the script's shape: let it through rather than refuse on a
        // reply nobody can read.
        _ => Verdict::Allowed(Vec::new()),
    }
}
