//! GCRA state in Redis: one Lua script per check, atomic across
//! replicas.

use std::sync::{Arc, LazyLock};
use std::time::Duration;

use corral_core::RedisState;

use crate::gcra::{Check, Checked, MemoryRates, Quota, RateStore, Standing, Verdict};

static CHECK: LazyLock<redis::Script> =
    LazyLock::new(|| redis::Script::new(include_str!("gcra.lua")));
static ADJUST: LazyLock<redis::Script> =
    LazyLock::new(|| redis::Script::new(include_str!("adjust.lua")));

/// Quotas kept in Redis, so an agent's quota is one quota whichever
/// replica its requests go through.
///
/// Each request's checks run as one Lua script (`gcra.lua`): the clock is
/// Redis' own `TIME`, so replicas whose clocks differ still agree, and all
/// the checks are charged or none. A check that Redis does not answer
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
        let mut args = Vec::with_capacity(checks.len() * 3);
        for check in checks {
            // As the memory store: a cost above the bucket charges the
            // whole bucket, or it could never pass.
            let cost = check.cost.min(check.quota.burst.max(1));
            args.push(micros(check.quota.interval()).to_string());
            args.push(micros(check.quota.tolerance()).to_string());
            args.push(cost.to_string());
        }
        let quotas: Vec<Quota> = checks.iter().map(|c| c.quota).collect();
        let checks = checks.to_vec();
        let store = self.clone();
        Checked::Later(Box::pin(async move {
            match store.state.script::<Vec<i64>>(&CHECK, &keys, &args).await {
                Ok(reply) => verdict(&reply, &quotas),
                Err(_) => store.fallback.decide(&checks),
            }
        }))
    }

    fn adjust(&self, key: &str, quota: &Quota, delta: i64) {
        if !self.state.is_up() {
            self.fallback.shift(key, quota, delta);
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let keys = vec![self.state.key(&format!("rate:{key}"))];
        let args = vec![micros(quota.interval()).to_string(), delta.to_string()];
        let state = self.state.clone();
        runtime.spawn(async move {
            // A correction that is lost leaves the charge made up front.
            let _ = state.script::<i64>(&ADJUST, &keys, &args).await;
        });
    }
}

fn verdict(reply: &[i64], quotas: &[Quota]) -> Verdict {
    let micros_to = |n: i64| Duration::from_micros(u64::try_from(n).unwrap_or(0));
    match reply {
        [0, index, wait, ..] => Verdict::Denied {
            index: usize::try_from(*index).unwrap_or(0),
            retry_after: micros_to(*wait),
        },
        [1, used @ ..] => Verdict::Allowed(
            used.iter()
                .zip(quotas)
                .map(|(used, quota)| {
                    let used = micros_to(*used);
                    let left = quota.tolerance().saturating_sub(used);
                    Standing {
                        remaining: u64::try_from(
                            left.as_nanos() / quota.interval().as_nanos().max(1),
                        )
                        .unwrap_or(u64::MAX),
                        reset: used,
                    }
                })
                .collect(),
        ),
        // Not the script's shape: let it through rather than refuse on a
        // reply nobody can read.
        _ => Verdict::Allowed(Vec::new()),
    }
}
