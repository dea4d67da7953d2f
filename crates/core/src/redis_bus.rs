//! The bus across replicas: Redis pub/sub, and a hash per channel that
//! keeps the settings in force.

use std::collections::HashMap;
use std::sync::Arc;

use tokio::sync::{broadcast, mpsc};

use crate::bus::{channels, Bus, BusMessage};
use crate::redis_state::RedisState;

/// Messages waiting for Redis; past this, plain messages are dropped (and
/// counted), settings keep only their latest value.
const OUTBOX: usize = 1024;

/// The counter of bus messages that never reached Redis.
pub const BUS_DROPPED_TOTAL: &str = "corral_bus_dropped_total";

/// The channels whose settings are kept and replayed on (re)connect.
/// Each replica's last reload is kept too: a replica cut from Redis when
/// one was announced reloads when it is back (one that read its file
/// after the reload, or started after it, lets the replayed one pass).
const STATE_CHANNELS: [&str; 6] = [
    channels::DEGRADATION_LEVEL,
    channels::CAPACITY_UPDATE,
    channels::PRIORITY_CHANGE,
    channels::BREAKER_STATE,
    channels::BACKPRESSURE,
    channels::CONFIG_RELOAD,
];

/// Every channel the other replicas' messages are forwarded from: the
/// settings, and the key changes, which are not kept (each replica reads
/// the keys from Redis itself).
const CHANNELS: [&str; 7] = [
    channels::DEGRADATION_LEVEL,
    channels::CAPACITY_UPDATE,
    channels::PRIORITY_CHANGE,
    channels::BREAKER_STATE,
    channels::BACKPRESSURE,
    channels::CONFIG_RELOAD,
    channels::KEYS_CHANGE,
];

struct Outgoing {
    channel: String,
    field: Option<String>,
    envelope: String,
    timestamp: f64,
}

/// Keeps a setting and publishes it, unless Redis holds a newer one for
/// the field: a replica back from an outage must not undo what another
/// set meanwhile.
static SET_IF_NEWER: std::sync::LazyLock<redis::Script> = std::sync::LazyLock::new(|| {
    redis::Script::new(
        r"
        local kept = redis.call('HGET', KEYS[1], ARGV[1])
        if kept then
          local ok, message = pcall(cjson.decode, kept)
          if ok and type(message) == 'table' and tonumber(message.timestamp)
            and tonumber(message.timestamp) > tonumber(ARGV[3]) then
            return 0
          end
        end
        redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
        redis.call('PUBLISH', KEYS[2], ARGV[2])
        return 1
        ",
    )
});

/// The bus shared by every replica of a deployment.
///
/// A message published here reaches this replica's subscribers at once
/// and the other replicas through Redis `PUBLISH` on the channel (under
/// the key prefix), as JSON with `channel`, `timestamp`, `publisher` and
/// `message`. A setting ([`Bus::publish_state`]) is also kept in the hash
/// `state:<channel>` under its field, and every replica replays those
/// hashes to its subscribers when it starts, whenever one subscribes and
/// whenever Redis comes back, so it reads the truth before it listens. Publishing never waits
/// for Redis: messages go through a bounded outbox; while Redis is away
/// settings are kept (latest per field) and written when it returns,
/// other messages are counted in `corral_bus_dropped_total`.
///
/// ```no_run
/// use std::time::Duration;
/// use corral_core::{channels, Bus, RedisBus, RedisState};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let state = RedisState::new("redis://127.0.0.1:6379", "corral:", "replica-1", Duration::from_millis(200)).unwrap();
/// let bus = RedisBus::start(state);
/// let mut listener = bus.subscribe();
/// bus.publish_state(channels::DEGRADATION_LEVEL, "forced", serde_json::json!({"forced": "L2"}));
/// assert_eq!(listener.recv().await.unwrap().message["forced"], "L2");
/// # }
/// ```
#[derive(Clone)]
pub struct RedisBus {
    local: broadcast::Sender<BusMessage>,
    outbox: mpsc::Sender<Outgoing>,
    state: RedisState,
    /// Asks the bus's task to replay the kept settings: a subscriber
    /// gets them whenever it subscribes, not only if it did before the
    /// start-up replay (a replica under load started its follower after
    /// that replay and never read the forced level).
    replay: Arc<tokio::sync::Notify>,
}

crate::impl_debug!(RedisBus { state });

impl RedisBus {
    /// A bus over `state`; spawns its writer and listener on the current
    /// runtime.
    pub fn start(state: RedisState) -> Arc<Self> {
        let (local, _) = broadcast::channel(crate::MemoryBus::CAPACITY);
        let (outbox, pending) = mpsc::channel(OUTBOX);
        metrics::describe_counter!(
            BUS_DROPPED_TOTAL,
            "bus messages that could not be sent to the other replicas"
        );
        let replay = Arc::new(tokio::sync::Notify::new());
        tokio::spawn(run(state.clone(), local.clone(), pending, replay.clone()));
        Arc::new(Self {
            local,
            outbox,
            state,
            replay,
        })
    }

    fn send(&self, channel: &str, field: Option<&str>, message: serde_json::Value) {
        let message = BusMessage {
            channel: Arc::from(channel),
            timestamp: crate::unix_now_f64(),
            publisher: self.state.replica().clone(),
            message,
        };
        let envelope = serde_json::to_string(&message).unwrap_or_default();
        let timestamp = message.timestamp;
        let _ = self.local.send(message);
        let outgoing = Outgoing {
            channel: channel.to_string(),
            field: field.map(str::to_string),
            envelope,
            timestamp,
        };
        if self.outbox.try_send(outgoing).is_err() {
            metrics::counter!(BUS_DROPPED_TOTAL).increment(1);
        }
    }
}

impl Bus for RedisBus {
    fn publish(&self, channel: &str, message: serde_json::Value) {
        self.send(channel, None, message);
    }

    fn publish_state(&self, channel: &str, field: &str, message: serde_json::Value) {
        self.send(channel, Some(field), message);
    }

    fn subscribe(&self) -> broadcast::Receiver<BusMessage> {
        let receiver = self.local.subscribe();
        self.replay.notify_one();
        receiver
    }
}

async fn send_one(state: &RedisState, outgoing: Outgoing) -> Result<(), Outgoing> {
    let written = match &outgoing.field {
        Some(field) => {
            let keys = [
                state.key(&format!("state:{}", outgoing.channel)),
                state.key(&outgoing.channel),
            ];
            let args = [
                field.clone(),
                outgoing.envelope.clone(),
                outgoing.timestamp.to_string(),
            ];
            state
                .script::<i64>(&SET_IF_NEWER, &keys, &args)
                .await
                .map(drop)
        }
        None => state.publish(&outgoing.channel, &outgoing.envelope).await,
    };
    written.map_err(|_| outgoing)
}

/// The bus's one task: sends the outbox to Redis, forwards the other
/// replicas' messages to this replica's subscribers, and on every return
/// of Redis first writes the settings it could not write, then replays
/// the kept ones (so a setting changed here while apart is not undone by
/// the older one Redis kept).
async fn run(
    state: RedisState,
    local: broadcast::Sender<BusMessage>,
    mut pending: mpsc::Receiver<Outgoing>,
    replays: Arc<tokio::sync::Notify>,
) {
    let mut pushed = state.subscribe(CHANNELS[0]).await;
    for channel in &CHANNELS[1..] {
        drop(state.subscribe(channel).await);
    }
    let mut unsent: HashMap<(String, String), Outgoing> = HashMap::new();
    replay(&state, &local).await;
    let mut health = state.health();
    loop {
        tokio::select! {
            next = pending.recv() => {
                let Some(outgoing) = next else { return };
                let field = outgoing.field.clone().map(|f| (outgoing.channel.clone(), f));
                match send_one(&state, outgoing).await {
                    Ok(()) => {
                        // A newer value is in: an older one kept must not
                        // overwrite it later.
                        if let Some(key) = field {
                            unsent.remove(&key);
                        }
                    }
                    Err(outgoing) => match field {
                        Some(key) => {
                            unsent.insert(key, outgoing);
                        }
                        None => metrics::counter!(BUS_DROPPED_TOTAL).increment(1),
                    },
                }
            }
            // A new subscriber: the settings in force, again (those
            // subscribed before read them twice; settings are idempotent).
            () = replays.notified() => replay(&state, &local).await,
            message = pushed.recv() => match message {
                Ok(pushed) => {
                    if !CHANNELS.contains(&pushed.channel.as_str()) {
                        continue;
                    }
                    let Ok(message) = serde_json::from_str::<BusMessage>(&pushed.payload) else {
                        continue;
                    };
                    if message.publisher != *state.replica() {
                        let _ = local.send(message);
                    }
                }
                Err(broadcast::error::RecvError::Lagged(_)) => continue,
                Err(broadcast::error::RecvError::Closed) => return,
            },
            changed = health.changed() => {
                if changed.is_err() {
                    return;
                }
                if !*health.borrow_and_update() {
                    continue;
                }
                let kept: Vec<((String, String), Outgoing)> = unsent.drain().collect();
                for (key, outgoing) in kept {
                    if let Err(outgoing) = send_one(&state, outgoing).await {
                        unsent.insert(key, outgoing);
                    }
                }
                replay(&state, &local).await;
            }
        }
    }
}

async fn replay(state: &RedisState, local: &broadcast::Sender<BusMessage>) {
    for channel in STATE_CHANNELS {
        let mut command = redis::cmd("HGETALL");
        command.arg(state.key(&format!("state:{channel}")));
        let Ok(kept) = state.query::<HashMap<String, String>>(&command).await else {
            return;
        };
        let mut messages: Vec<BusMessage> = kept
            .values()
            .filter_map(|v| serde_json::from_str(v).ok())
            .collect();
        messages.sort_by(|a, b| a.timestamp.total_cmp(&b.timestamp));
        for message in messages {
            let _ = local.send(message);
        }
    }
}
