//! The event bus: state changes one layer announces and others (and other
//! replicas, through Redis) listen to.
//!
//! Messages carry the design's shape: a channel, a timestamp, the
//! publisher (the replica) and a JSON payload. The in-memory bus is a
//! `tokio::sync::broadcast` channel: publishing never blocks, a slow
//! subscriber loses the oldest messages and is told how many.

use std::sync::Arc;

use serde::{Deserialize, Serialize};
use tokio::sync::broadcast;

/// The channels of the design.
pub mod channels {
    /// Load shedding: refusals and their counts, so agents slow down.
    pub const BACKPRESSURE: &str = "system:backpressure";
    /// The degradation level changed.
    pub const DEGRADATION_LEVEL: &str = "system:degradation:level";
    /// The upstream's capacity changed.
    pub const CAPACITY_UPDATE: &str = "ollama:capacity:update";
    /// An agent's priority changed.
    pub const PRIORITY_CHANGE: &str = "agent:priority:change";
    /// A circuit breaker changed state.
    pub const BREAKER_STATE: &str = "ollama:breaker:state";
    /// An operator asked every replica to reload its configuration.
    pub const CONFIG_RELOAD: &str = "system:config:reload";
    /// An API key was issued or revoked at run time.
    pub const KEYS_CHANGE: &str = "agent:keys:change";
}

/// One message on the bus.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BusMessage {
    /// Its channel (`system:backpressure`, ...).
    pub channel: Arc<str>,
    /// When it was published, seconds since the Unix epoch.
    pub timestamp: f64,
    /// Who published it: the replica's id.
    pub publisher: Arc<str>,
    /// What it says.
    pub message: serde_json::Value,
}

/// Where layers publish and listen.
pub trait Bus: Send + Sync + 'static {
    /// Publishes `message` on `channel`. Never blocks and never fails the
    /// request path: a bus that cannot deliver counts what it lost.
    fn publish(&self, channel: &str, message: serde_json::Value);

    /// Publishes a setting: `message` is also kept as the value of
    /// `field` on `channel` (the forced level, one pool's capacity, one
    /// agent's priority), so a replica that starts or reconnects later
    /// reads it. In one process that is just [`Bus::publish`].
    fn publish_state(&self, channel: &str, field: &str, message: serde_json::Value) {
        let _ = field;
        self.publish(channel, message);
    }

    /// Every message published from now on.
    fn subscribe(&self) -> broadcast::Receiver<BusMessage>;
}

/// The bus inside one process.
///
/// ```
/// use corral_core::{channels, Bus, MemoryBus};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let bus = MemoryBus::new("replica-1");
/// let mut listener = bus.subscribe();
/// bus.publish(channels::BACKPRESSURE, serde_json::json!({"refused": 3}));
/// let message = listener.recv().await.unwrap();
/// assert_eq!(&*message.channel, "system:backpressure");
/// assert_eq!(&*message.publisher, "replica-1");
/// assert_eq!(message.message["refused"], 3);
/// # }
/// ```
#[derive(Debug, Clone)]
pub struct MemoryBus {
    sender: broadcast::Sender<BusMessage>,
    publisher: Arc<str>,
}

impl MemoryBus {
    /// How many messages a subscriber may fall behind before losing the
    /// oldest.
    pub const CAPACITY: usize = 1024;

    /// A bus whose messages say they come from `publisher`.
    pub fn new(publisher: &str) -> Self {
        Self {
            sender: broadcast::channel(Self::CAPACITY).0,
            publisher: Arc::from(publisher),
        }
    }
}

impl Bus for MemoryBus {
    fn publish(&self, channel: &str, message: serde_json::Value) {
        let timestamp = crate::unix_now_f64();
        // No subscriber is not an error: nobody listens yet.
        let _ = self.sender.send(BusMessage {
            channel: Arc::from(channel),
            timestamp,
            publisher: self.publisher.clone(),
            message,
        });
    }

    fn subscribe(&self) -> broadcast::Receiver<BusMessage> {
        self.sender.subscribe()
    }
}
