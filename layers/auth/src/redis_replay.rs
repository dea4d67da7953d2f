//! Request ids in Redis, shared by every replica: `SET key 1 NX EX ttl`,
//! new when Redis set it.

use std::sync::Arc;
use std::time::Duration;

use corral_core::{ConfigError, RedisState};

use crate::metrics::REPLAY_STORE_ERRORS_TOTAL;
use crate::replay::{MemoryReplay, Remembered, ReplayStore};

/// Seen request ids in Redis, so a request replayed to another replica is
/// refused too.
///
/// Commands go through a [`RedisState`]: the replica's one reconnecting
/// connection, made lazily (Corral starts while Redis is down). A command
/// that fails or takes longer than the state's timeout is answered from a
/// [`MemoryReplay`] of this replica instead (the state logs once when
/// Redis goes away and once when it is back; each miss is counted in
/// `corral_replay_store_errors_total`): requests keep flowing, and
/// replays to the same replica are still refused. While Redis is away a
/// request replayed to another replica is not caught.
///
/// ```no_run
/// use std::sync::Arc;
/// use std::time::Duration;
/// use corral_auth::{AuthConfig, AuthLayer, RedisReplay};
///
/// let config = AuthConfig::default();
/// let store = RedisReplay::new("redis://127.0.0.1:6379", "corral:", Duration::from_millis(200), config.replay_memory).unwrap();
/// let layer = AuthLayer::new(&config).map(|l| l.with_store(Arc::new(store))).unwrap();
/// # drop(layer);
/// ```
#[derive(Clone)]
pub struct RedisReplay {
    inner: Arc<Inner>,
}

struct Inner {
    state: RedisState,
    fallback: MemoryReplay,
}

corral_core::impl_debug!(RedisReplay { state: inner.state });

impl RedisReplay {
    /// Whether `url` is a Redis URL this store can use; why not.
    ///
    /// ```
    /// assert!(corral_auth::RedisReplay::check_url("redis://127.0.0.1:6379/0").is_ok());
    /// assert!(corral_auth::RedisReplay::check_url("nonsense").is_err());
    /// ```
    pub fn check_url(url: &str) -> Result<(), String> {
        redis::Client::open(url)
            .map(drop)
            .map_err(|e| e.to_string())
    }

    /// A store at `url` (`redis://host:port/db`) with a connection of its
    /// own, its keys under `prefix` + `replay:`, each command given
    /// `timeout`; `capacity` ids are remembered in memory while Redis is
    /// away. Nothing connects until the first request. Errors name the
    /// URL's problem.
    pub fn new(
        url: &str,
        prefix: &str,
        timeout: Duration,
        capacity: usize,
    ) -> Result<Self, ConfigError> {
        let state = RedisState::new(url, prefix, "replay", timeout)?;
        Ok(Self::with_state(state, capacity))
    }

    /// A store on the replica's shared Redis `state` (the connection the
    /// other layers use), its keys under the state's prefix + `replay:`.
    pub fn with_state(state: RedisState, capacity: usize) -> Self {
        crate::metrics::describe();
        Self {
            inner: Arc::new(Inner {
                state,
                fallback: MemoryReplay::new(capacity),
            }),
        }
    }
}

impl ReplayStore for RedisReplay {
    fn remember(&self, key: String, ttl: Duration) -> Remembered {
        let inner = self.inner.clone();
        Box::pin(async move {
            let mut command = redis::cmd("SET");
            command
                .arg(inner.state.key(&format!("replay:{key}")))
                .arg(1)
                .arg("NX")
                .arg("EX")
                .arg(ttl.as_secs().max(1));
            match inner.state.query::<Option<String>>(&command).await {
                Ok(reply) => Ok(reply.is_some()),
                Err(_) => {
                    metrics::counter!(REPLAY_STORE_ERRORS_TOTAL).increment(1);
                    inner.fallback.remember(key, ttl).await
                }
            }
        })
    }
}
