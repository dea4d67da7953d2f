//! Request ids in Redis, shared by every replica: `SET key 1 NX EX ttl`,
//! new when Redis set it.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use corral_core::ConfigError;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};

use crate::metrics::REPLAY_STORE_ERRORS_TOTAL;
use crate::replay::{MemoryReplay, Remembered, ReplayStore};

/// Seen request ids in Redis, so a request replayed to another replica is
/// refused too.
///
/// The connection is the `redis` crate's reconnecting
/// [`ConnectionManager`], made lazily: Corral starts while Redis is down.
/// A command that fails or takes longer than `timeout` is answered from a
/// [`MemoryReplay`] of this replica instead (logged once when Redis goes
/// away and once when it is back, counted in
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
/// let layer = AuthLayer::with_store(&config, Arc::new(store)).unwrap();
/// # drop(layer);
/// ```
#[derive(Clone)]
pub struct RedisReplay {
    inner: Arc<Inner>,
}

struct Inner {
    client: redis::Client,
    config: ConnectionManagerConfig,
    /// Made on first use, inside the runtime: `new` may run outside one
    /// (`corral check-config`).
    manager: tokio::sync::OnceCell<ConnectionManager>,
    prefix: String,
    timeout: Duration,
    fallback: MemoryReplay,
    down: AtomicBool,
}

impl std::fmt::Debug for RedisReplay {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisReplay")
            .field("prefix", &self.inner.prefix)
            .field("timeout", &self.inner.timeout)
            .field("down", &self.inner.down.load(Ordering::Relaxed))
            .finish()
    }
}

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

    /// A store at `url` (`redis://host:port/db`), its keys under
    /// `prefix` + `replay:`, each command given `timeout`; `capacity` ids
    /// are remembered in memory while Redis is away. Nothing connects
    /// until the first request. Errors name the URL's problem.
    pub fn new(
        url: &str,
        prefix: &str,
        timeout: Duration,
        capacity: usize,
    ) -> Result<Self, ConfigError> {
        let client = redis::Client::open(url)
            .map_err(|e| ConfigError::new("redis_url", format!("{url:?}: {e}")))?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(timeout))
            .set_response_timeout(Some(timeout))
            .set_number_of_retries(2)
            .set_max_delay(Duration::from_secs(2));
        crate::metrics::describe();
        Ok(Self {
            inner: Arc::new(Inner {
                client,
                config,
                manager: tokio::sync::OnceCell::new(),
                prefix: format!("{prefix}replay:"),
                timeout,
                fallback: MemoryReplay::new(capacity),
                down: AtomicBool::new(false),
            }),
        })
    }
}

impl ReplayStore for RedisReplay {
    fn remember(&self, key: String, ttl: Duration) -> Remembered {
        let inner = self.inner.clone();
        Box::pin(async move {
            let manager = inner
                .manager
                .get_or_try_init(|| async {
                    ConnectionManager::new_lazy_with_config(
                        inner.client.clone(),
                        inner.config.clone(),
                    )
                })
                .await;
            let mut connection = match manager {
                Ok(manager) => manager.clone(),
                Err(error) => {
                    metrics::counter!(REPLAY_STORE_ERRORS_TOTAL).increment(1);
                    tracing::warn!(%error, "cannot set up the Redis connection: request ids are remembered by this replica alone");
                    return inner.fallback.remember(key, ttl).await;
                }
            };
            let mut command = redis::cmd("SET");
            command
                .arg(format!("{}{key}", inner.prefix))
                .arg(1)
                .arg("NX")
                .arg("EX")
                .arg(ttl.as_secs().max(1));
            let set = command.query_async::<Option<String>>(&mut connection);
            match tokio::time::timeout(inner.timeout, set).await {
                Ok(Ok(reply)) => {
                    if inner.down.swap(false, Ordering::Relaxed) {
                        tracing::info!("the replay memory is shared through Redis again");
                    }
                    Ok(reply.is_some())
                }
                failed => {
                    metrics::counter!(REPLAY_STORE_ERRORS_TOTAL).increment(1);
                    if !inner.down.swap(true, Ordering::Relaxed) {
                        let error = match failed {
                            Ok(Err(e)) => e.to_string(),
                            _ => format!("no answer within {:?}", inner.timeout),
                        };
                        tracing::warn!(%error, "Redis is away: request ids are remembered by this replica alone until it is back");
                    }
                    inner.fallback.remember(key, ttl).await
                }
            }
        })
    }
}
