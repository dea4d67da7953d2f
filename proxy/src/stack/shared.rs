//! What every layer of a stack shares, made at its first build and
//! kept by a reload: the event log, the load cell, this replica's name,
//! Redis, the bus, the span exporter.

use std::sync::Arc;

use corral_core::{Bus, ConfigError, LoadCell, MemoryBus};

use crate::config::Config;

/// What every layer shares: the event log, the load, this replica's
/// name, Redis, the bus.
pub(super) struct Shared {
    pub(super) events: Arc<dyn corral_events::EventStore>,
    pub(super) load: LoadCell,
    pub(super) replica: String,
    pub(super) state: Option<corral_core::RedisState>,
    pub(super) bus: Arc<dyn Bus>,
    pub(super) exporter: Option<Arc<crate::trace::Exporter>>,
}

impl Shared {
    /// What a stack for `config` shares: `previous`'s, when a reload
    /// replaces it (its load cell too when the scheduler is carried
    /// over, `keeps_load`), else made now.
    pub(super) fn of(
        config: &Config,
        previous: Option<&super::Stack>,
        keeps_load: bool,
    ) -> Result<Self, ConfigError> {
        let Some(previous) = previous else {
            return Self::new(config);
        };
        Ok(Self {
            events: previous.events.clone(),
            load: if keeps_load {
                previous.load.clone()
            } else {
                LoadCell::default()
            },
            replica: previous.replica.to_string(),
            state: previous.state.clone(),
            bus: previous.bus.clone(),
            exporter: previous.exporter.clone(),
        })
    }

    /// Made for a stack's first build.
    fn new(config: &Config) -> Result<Self, ConfigError> {
        let events = event_log(config)?;
        let replica = replica_id();
        let state = shared_state(config, &replica)?;
        let events: Arc<dyn corral_events::EventStore> = match &state {
            Some(state) => corral_events::RedisEvents::start(state.clone(), events),
            None => events,
        };
        let bus: Arc<dyn Bus> = match &state {
            Some(state) => corral_core::RedisBus::start(state.clone()),
            None => Arc::new(MemoryBus::new(&replica)),
        };
        Ok(Self {
            events,
            load: LoadCell::default(),
            replica,
            state,
            bus,
            exporter: crate::trace::exporter(&config.traces)?,
        })
    }
}

/// The event log of `[events]`.
fn event_log(config: &Config) -> Result<Arc<corral_events::EventLog>, ConfigError> {
    corral_events::EventLog::open(&config.events)
        .map(Arc::new)
        .map_err(|e| ConfigError::new("events.file", format!("cannot open the event file: {e}")))
}

/// The shared Redis of `[state] backend = "redis"`, when the stack is
/// built to serve (inside a runtime), with its health watchdog and the
/// follower that applies the other replicas' settings.
fn shared_state(
    config: &Config,
    replica: &str,
) -> Result<Option<corral_core::RedisState>, corral_core::ConfigError> {
    let (crate::config::Backend::Redis, Some(url)) =
        (&config.state.backend, &config.state.redis_url)
    else {
        return Ok(None);
    };
    if tokio::runtime::Handle::try_current().is_err() {
        // `check-config`: nothing to connect; the URL was checked.
        return Ok(None);
    }
    let state = corral_core::RedisState::new(
        url,
        &config.state.key_prefix,
        replica,
        config.state.redis_timeout,
    )
    .map_err(|e| corral_core::ConfigError::new(format!("state.{}", e.key()), e.reason()))?;
    tokio::spawn(
        state
            .clone()
            .watch_health(std::time::Duration::from_millis(500)),
    );
    Ok(Some(state))
}

/// This replica's name on the bus and in Redis: host, process and a
/// nonce of this start.
fn replica_id() -> String {
    // Stacks built in one process (tests, a reload) are replicas of
    // their own: their tickets and messages must not be taken for each
    // other's.
    static BUILT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    match BUILT.fetch_add(1, std::sync::atomic::Ordering::Relaxed) {
        0 => replica_name(),
        n => format!("{}-{n}", replica_name()),
    }
}

fn replica_name() -> String {
    let host = std::env::var("HOSTNAME")
        .ok()
        .filter(|h| !h.is_empty())
        .or_else(|| {
            std::fs::read_to_string("/etc/hostname")
                .ok()
                .map(|h| h.trim().to_string())
        })
        .unwrap_or_else(|| "corral".to_string());
    // A container restarted under the same name and pid (often 1) must
    // not be taken for the one before it: its tickets and leases in Redis
    // are not ours.
    static NONCE: std::sync::OnceLock<u32> = std::sync::OnceLock::new();
    let nonce = NONCE.get_or_init(|| fastrand::u32(..));
    format!("{host}-{}-{nonce:08x}", std::process::id())
}
