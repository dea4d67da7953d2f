//! One Redis connection a replica's layers share: commands with a
//! deadline, scripts, pub/sub, and whether Redis is reachable now.
//!
//! Built on the `redis` crate's reconnecting [`ConnectionManager`] over
//! RESP3, so commands and subscriptions share one connection and the
//! manager subscribes again after a reconnect. A command that fails or
//! outlasts the timeout marks Redis down; the next one that succeeds
//! (every layer's own work, and a watchdog's `PING` while down) marks it
//! up. Each transition is logged once, kept in the
//! `corral_state_backend_up` gauge, and told to whoever watches
//! [`RedisState::health`], so layers fall back to their local state and
//! resynchronise when it returns.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{FromRedisValue, ProtocolVersion, PushInfo};
use tokio::sync::{broadcast, watch, OnceCell};

use crate::ConfigError;

mod reply;

use reply::{decode_push, is_reply_error};
pub use reply::{Pushed, StateUnavailable};

/// The gauge: 1 while Redis answers, 0 while this replica runs on its
/// own state.
pub const STATE_BACKEND_UP: &str = "corral_state_backend_up";
/// The counter of Redis commands that failed or timed out.
pub const STATE_BACKEND_ERRORS_TOTAL: &str = "corral_state_backend_errors_total";

/// A replica's handle on the shared Redis: cheap to clone.
///
/// Nothing connects until the first command (inside a runtime), so
/// `corral` starts, and serves from local state, while Redis is down.
///
/// ```no_run
/// use std::time::Duration;
/// use corral_core::RedisState;
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let state = RedisState::new("redis://127.0.0.1:6379", "corral:", "replica-1", Duration::from_millis(200)).unwrap();
/// let pong: String = state.query(&redis::cmd("PING")).await.unwrap();
/// assert_eq!(pong, "PONG");
/// assert!(state.is_up());
/// # }
/// ```
#[derive(Clone)]
pub struct RedisState {
    inner: Arc<Inner>,
}

struct Inner {
    client: redis::Client,
    config: ConnectionManagerConfig,
    manager: OnceCell<ConnectionManager>,
    prefix: String,
    replica: Arc<str>,
    timeout: Duration,
    up: watch::Sender<bool>,
    pushes: broadcast::Sender<Pushed>,
    channels: Mutex<BTreeSet<String>>,
}

impl std::fmt::Debug for RedisState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisState")
            .field("prefix", &self.inner.prefix)
            .field("replica", &self.inner.replica)
            .field("up", &self.is_up())
            .finish()
    }
}

impl RedisState {
    /// A handle on `url`, its keys and channels under `prefix`, messages
    /// signed as `replica`, every command given `timeout`. Errors name
    /// the URL's problem.
    pub fn new(
        url: &str,
        prefix: &str,
        replica: &str,
        timeout: Duration,
    ) -> Result<Self, ConfigError> {
        let refuse = |e: redis::RedisError| ConfigError::new("redis_url", format!("{url:?}: {e}"));
        let parsed = redis::Client::open(url).map_err(refuse)?;
        let info = parsed.get_connection_info().clone();
        let settings = info.redis_settings().clone();
        let client = redis::Client::open(
            info.set_redis_settings(settings.set_protocol(ProtocolVersion::RESP3)),
        )
        .map_err(refuse)?;
        let (pushes, _) = broadcast::channel(4096);
        let sender = pushes.clone();
        let prefix_len = prefix.len();
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(timeout))
            .set_response_timeout(Some(timeout))
            .set_number_of_retries(2)
            .set_max_delay(Duration::from_secs(2))
            .set_push_sender(move |info: PushInfo| {
                if let Some(pushed) = decode_push(info, prefix_len) {
                    // Nobody listening is not an error.
                    let _ = sender.send(pushed);
                }
                Ok::<(), std::convert::Infallible>(())
            })
            .set_automatic_resubscription();
        metrics::describe_gauge!(
            STATE_BACKEND_UP,
            "1 while the shared Redis answers, 0 while this replica serves from its own state"
        );
        metrics::describe_counter!(
            STATE_BACKEND_ERRORS_TOTAL,
            "Redis commands that failed or outlasted the timeout"
        );
        Ok(Self {
            inner: Arc::new(Inner {
                client,
                config,
                manager: OnceCell::new(),
                prefix: prefix.to_string(),
                replica: Arc::from(replica),
                timeout,
                up: watch::channel(true).0,
                pushes,
                channels: Mutex::new(BTreeSet::new()),
            }),
        })
    }

    /// `prefix` + `name`: the key (or channel) `name` of this deployment.
    pub fn key(&self, name: &str) -> String {
        format!("{}{name}", self.inner.prefix)
    }

    /// The replica's id, as messages and tickets carry it.
    pub fn replica(&self) -> &Arc<str> {
        &self.inner.replica
    }

    /// How long a command may take.
    pub fn timeout(&self) -> Duration {
        self.inner.timeout
    }

    /// Whether the last command was answered.
    pub fn is_up(&self) -> bool {
        *self.inner.up.borrow()
    }

    /// Told each time Redis goes away or comes back.
    pub fn health(&self) -> watch::Receiver<bool> {
        self.inner.up.subscribe()
    }

    async fn connection(&self) -> Result<ConnectionManager, StateUnavailable> {
        let inner = &self.inner;
        inner
            .manager
            .get_or_try_init(|| async {
                ConnectionManager::new_lazy_with_config(inner.client.clone(), inner.config.clone())
            })
            .await
            .cloned()
            .map_err(|e| StateUnavailable {
                reason: e.to_string(),
                refused: false,
            })
    }

    /// Runs `command`, within the timeout.
    pub async fn query<T: FromRedisValue>(
        &self,
        command: &redis::Cmd,
    ) -> Result<T, StateUnavailable> {
        let mut connection = self.connection_or_down().await?;
        self.within(command.query_async(&mut connection)).await
    }

    /// Runs `pipeline` (in `MULTI`/`EXEC` when it was built `atomic()`),
    /// within the timeout.
    pub async fn pipeline<T: FromRedisValue>(
        &self,
        pipeline: &redis::Pipeline,
    ) -> Result<T, StateUnavailable> {
        let mut connection = self.connection_or_down().await?;
        self.within(pipeline.query_async(&mut connection)).await
    }

    /// Runs `script` with `keys` and `args`, within the timeout; the
    /// script is loaded on first use and again after a Redis restart.
    pub async fn script<T: FromRedisValue>(
        &self,
        script: &redis::Script,
        keys: &[String],
        args: &[String],
    ) -> Result<T, StateUnavailable> {
        let args: Vec<&[u8]> = args.iter().map(|a| a.as_bytes()).collect();
        self.script_bytes(script, keys, &args).await
    }

    /// [`script`](Self::script) with arguments that are bytes, not text
    /// (chunks of an answer, which may split a UTF-8 character).
    pub async fn script_bytes<T: FromRedisValue>(
        &self,
        script: &redis::Script,
        keys: &[String],
        args: &[&[u8]],
    ) -> Result<T, StateUnavailable> {
        let mut connection = self.connection_or_down().await?;
        let mut invocation = script.prepare_invoke();
        for key in keys {
            invocation.key(key);
        }
        for arg in args {
            invocation.arg(*arg);
        }
        self.within(invocation.invoke_async(&mut connection)).await
    }

    /// Publishes `payload` on `channel` (prefixed).
    pub async fn publish(&self, channel: &str, payload: &str) -> Result<(), StateUnavailable> {
        let mut command = redis::cmd("PUBLISH");
        command.arg(self.key(channel)).arg(payload);
        self.query::<i64>(&command).await.map(drop)
    }

    /// Messages on `channel` (prefixed) from now on, across reconnects;
    /// the subscription is made now if Redis answers, else at the next
    /// reconnect.
    pub async fn subscribe(&self, channel: &str) -> broadcast::Receiver<Pushed> {
        let receiver = self.inner.pushes.subscribe();
        let new = self
            .inner
            .channels
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(channel.to_string());
        if new {
            let _ = self.subscribe_all().await;
        }
        receiver
    }

    async fn subscribe_all(&self) -> Result<(), StateUnavailable> {
        let channels: Vec<String> = self
            .inner
            .channels
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .map(|c| self.key(c))
            .collect();
        if channels.is_empty() {
            return Ok(());
        }
        let mut connection = self.connection_or_down().await?;
        self.within(connection.subscribe(&channels)).await
    }

    /// While it runs, checks Redis every `every` while it is marked down,
    /// so that it is marked up (and subscriptions renewed) when it
    /// returns even if nothing else asks. The proxy spawns it.
    pub async fn watch_health(self, every: Duration) {
        let mut ticks = tokio::time::interval(every);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut health = self.health();
        loop {
            tokio::select! {
                _ = ticks.tick() => {
                    if !self.is_up() {
                        let _ = self.query::<String>(&redis::cmd("PING")).await;
                    }
                }
                changed = health.changed() => {
                    if changed.is_err() {
                        return;
                    }
                    if *health.borrow_and_update() {
                        // The manager resubscribes on its own reconnects;
                        // this covers a first connection made while down.
                        let _ = self.subscribe_all().await;
                    }
                }
            }
        }
    }

    async fn connection_or_down(&self) -> Result<ConnectionManager, StateUnavailable> {
        match self.connection().await {
            Ok(connection) => Ok(connection),
            Err(error) => {
                self.mark(false, Some(&error.reason));
                Err(error)
            }
        }
    }

    /// Waits for `run` at most the timeout; what its outcome says of
    /// Redis is recorded.
    async fn within<T>(
        &self,
        run: impl std::future::Future<Output = redis::RedisResult<T>>,
    ) -> Result<T, StateUnavailable> {
        match tokio::time::timeout(self.inner.timeout, run).await {
            Ok(Ok(value)) => {
                self.mark(true, None);
                Ok(value)
            }
            Ok(Err(error)) if is_reply_error(&error) => {
                // Redis answered: it is up, the command was wrong.
                self.mark(true, None);
                Err(StateUnavailable {
                    reason: error.to_string(),
                    refused: true,
                })
            }
            Ok(Err(error)) => {
                let reason = error.to_string();
                self.mark(false, Some(&reason));
                Err(StateUnavailable {
                    reason,
                    refused: false,
                })
            }
            Err(_) => {
                let reason = format!("no answer within {:?}", self.inner.timeout);
                self.mark(false, Some(&reason));
                Err(StateUnavailable {
                    reason,
                    refused: false,
                })
            }
        }
    }

    fn mark(&self, up: bool, reason: Option<&str>) {
        if !up {
            metrics::counter!(STATE_BACKEND_ERRORS_TOTAL).increment(1);
        }
        let changed = self.inner.up.send_if_modified(|now| {
            let changed = *now != up;
            *now = up;
            changed
        });
        metrics::gauge!(STATE_BACKEND_UP).set(if up { 1.0 } else { 0.0 });
        if changed {
            if up {
                tracing::info!("Redis answers again: shared state resumes");
            } else {
                let info = self.inner.client.get_connection_info();
                tracing::warn!(
                    reason = reason.unwrap_or("unknown"),
                    redis = %info.addr(),
                    timeout = ?self.inner.timeout,
                    "Redis is unreachable: this replica serves from its own state until it returns \
                     (check that Redis is up at [state] redis_url, or raise [state] redis_timeout \
                     if it is only slow)"
                );
            }
        }
    }
}
