//! Builds the stack from the configuration, as a request travels it:
//! `classify`, then the `[[layers]]` in order, then the upstream.
//!
//! `build` returns the service; serving it is separate, so tests can call
//! it with `oneshot`.

use std::path::Path;
use std::sync::Arc;

use corral_classify::ClassifyLayer;
use corral_core::{Bus, ConfigError, LoadCell, MemoryBus, RefusalCast};
use tower::util::BoxCloneSyncService;
use tower::Layer;

use crate::config::{Config, LayerConfig, LoadError, NO_FILE};
use crate::registry::{check_order, LayerKind, LAYERS};
use crate::respond;
use crate::svc::{BuildContext, Controls, StackLayer};
use crate::upstream::Upstream;

pub use crate::svc::{HttpRequest, HttpResponse, StackService};

/// A built stack.
#[derive(Clone)]
pub struct Stack {
    service: StackService,
    upstream: Upstream,
    layers: Vec<(String, String)>,
    refusals: Vec<RefusalCast>,
    load: LoadCell,
    bus: Arc<dyn Bus>,
    controls: Arc<Controls>,
    events: Arc<dyn corral_events::EventStore>,
    replica: Arc<str>,
    classify: ClassifyLayer,
    state: Option<corral_core::RedisState>,
}

corral_core::impl_debug!(Stack { layers });

impl Stack {
    /// The service: send it requests.
    pub fn service(&self) -> StackService {
        self.service.clone()
    }

    /// The upstream at the bottom of the stack.
    pub fn upstream(&self) -> &Upstream {
        &self.upstream
    }

    /// The layers, outermost first, as `(kind, how it is configured)`.
    pub fn layers(&self) -> &[(String, String)] {
        &self.layers
    }

    /// The event log.
    pub fn events(&self) -> &Arc<dyn corral_events::EventStore> {
        &self.events
    }

    /// This replica's id: the publisher of its bus messages, the owner of
    /// its tickets in Redis.
    pub fn replica(&self) -> &Arc<str> {
        &self.replica
    }

    /// The handles the admin API drives.
    pub fn controls(&self) -> &Arc<Controls> {
        &self.controls
    }

    /// The bus the stack's layers publish on.
    pub fn bus(&self) -> &Arc<dyn Bus> {
        &self.bus
    }

    /// The scheduler's load, when the stack has a `priority` layer.
    pub fn load(&self) -> &LoadCell {
        &self.load
    }

    /// Who requests come from, by the stack's own rules: for the
    /// endpoints Corral answers itself.
    pub fn classify(&self) -> &ClassifyLayer {
        &self.classify
    }

    /// The shared Redis, when `[state] backend = "redis"`.
    pub fn state(&self) -> Option<&corral_core::RedisState> {
        self.state.as_ref()
    }

    /// The refusal types of every layer in the stack, for the answers.
    pub fn refusals(&self) -> &[RefusalCast] {
        &self.refusals
    }
}

/// Builds the stack for `config` from the layers this build knows.
pub fn build(config: &Config, file: Option<&Path>) -> Result<Stack, LoadError> {
    build_with(config, file, LAYERS)
}

/// Builds the stack for `config` from the layer kinds in `registry`.
pub fn build_with(
    config: &Config,
    file: Option<&Path>,
    registry: &[LayerKind],
) -> Result<Stack, LoadError> {
    let file = file.unwrap_or(Path::new(NO_FILE));
    let refuse = |e: ConfigError, line| LoadError::from_config(file, e, line);
    // Layers set gauges as they are built: the recorder must be there.
    let _ = crate::telemetry::metrics_handle();

    // The way down: classify, the layers listed, the upstream.
    let classify = classify_layer(config).map_err(|e| refuse(e, None))?;
    let listed = config.layers();
    let kinds = kinds_of(&listed, registry)
        .map_err(|(at, e)| refuse(e.within(format!("layers[{at}]")), listed[at].line))?;
    let fleet = config.fleet_entries();
    let upstream = if fleet.is_empty() {
        Upstream::new(&config.upstream)
    } else {
        Upstream::with_fleet(&config.upstream, &fleet)
    }
    .map_err(|e| refuse(e, None))?;

    places_requests(&upstream, &kinds).map_err(|e| refuse(e, None))?;

    // What the layers share: the event log, the load, the bus, Redis.
    let events = event_log(config).map_err(|e| refuse(e, None))?;
    let load = LoadCell::default();
    let controls = Arc::new(Controls::default());
    let _ = controls.priorities.set(classify.overrides().clone());
    let replica = replica_id();
    let state = shared_state(config, &replica).map_err(|e| refuse(e, None))?;
    let events: Arc<dyn corral_events::EventStore> = match &state {
        Some(state) => corral_events::RedisEvents::start(state.clone(), events),
        None => events,
    };
    let sink: Arc<dyn corral_core::EventSink> = events.clone();
    let bus: Arc<dyn Bus> = match &state {
        Some(state) => corral_core::RedisBus::start(state.clone()),
        None => Arc::new(MemoryBus::new(&replica)),
    };
    let context = BuildContext {
        config,
        load: &load,
        bus: &bus,
        controls: &controls,
        events: &sink,
        state: state.as_ref(),
        fleet: upstream.fleet(),
    };

    // Each layer from its options; the refusals they answer with.
    let (built, refusals) = build_layers(&listed, &kinds, &context)
        .map_err(|(at, e, line)| refuse(e.within(format!("layers[{at}]")), line))?;

    // Wrapped from the inside out: the upstream, the layers, classify.
    let mut service: StackService = BoxCloneSyncService::new(upstream.clone());
    for (_, layer) in built.iter().rev() {
        service = layer.wrap(service);
    }
    // Pinned load options (`[models."name"]`), on the body classify read.
    let service = crate::pin::wrap(&config.models, service);
    let service = BoxCloneSyncService::new(classify.layer(service));
    crate::telemetry::export_classes(classify.classes().map(|(name, _, _)| name));
    if let Some(state) = &state {
        tokio::spawn(crate::follow::follow(
            bus.subscribe(),
            controls.clone(),
            state.replica().clone(),
        ));
    }

    let layers = summaries(config, &classify, &built);
    Ok(Stack {
        service,
        upstream,
        layers,
        refusals,
        load,
        bus,
        controls,
        events,
        replica: Arc::from(replica),
        classify,
        state,
    })
}

/// The classify layer, from the sections it is assembled of; an error
/// names the section the operator wrote.
fn classify_layer(config: &Config) -> Result<ClassifyLayer, ConfigError> {
    ClassifyLayer::new(&config.classify()).map_err(|e| match e.key() {
        "max_request_bytes" => ConfigError::new("server.max_request_bytes", e.reason()),
        "default_class" => ConfigError::new("identity.default_class", e.reason()),
        _ => e,
    })
}

/// Builds each layer listed from its options, with the refusals the
/// stack answers with. An error gives the layer's index and the line of
/// the key it names (else the layer's header's).
#[allow(clippy::type_complexity)]
fn build_layers(
    listed: &[LayerConfig],
    kinds: &[&LayerKind],
    context: &BuildContext<'_>,
) -> Result<(Vec<(&'static str, StackLayer)>, Vec<RefusalCast>), (usize, ConfigError, Option<usize>)>
{
    let mut refusals: Vec<RefusalCast> = respond::built_in();
    let mut built = Vec::with_capacity(listed.len());
    for (at, (layer, kind)) in listed.iter().zip(kinds).enumerate() {
        let stack_layer = (kind.build)(layer, context).map_err(|e| {
            let line = layer.line_of(e.key());
            (at, e, line)
        })?;
        for cast in kind.refusals {
            if !refusals.iter().any(|c| std::ptr::fn_addr_eq(*c, *cast)) {
                refusals.push(*cast);
            }
        }
        built.push((kind.name, stack_layer));
    }
    Ok((built, refusals))
}

/// Several upstreams (or one holding few models) need the `priority`
/// layer: it places each request on a server.
fn places_requests(upstream: &Upstream, kinds: &[&LayerKind]) -> Result<(), ConfigError> {
    if upstream.fleet().is_none() || kinds.iter().any(|k| k.name == "priority") {
        return Ok(());
    }
    Err(ConfigError::new(
        "layers",
        "with [[upstreams]] (or [upstream] max_loaded_models) the stack needs the priority layer: it places each request on a server",
    ))
}

/// The kind of each layer listed, in order, once every rule holds:
/// classify is not listed, every kind is known, each kind's own rules on
/// the others ([`check_order`]). An error gives the layer's index.
fn kinds_of<'r>(
    listed: &[LayerConfig],
    registry: &'r [LayerKind],
) -> Result<Vec<&'r LayerKind>, (usize, ConfigError)> {
    let mut kinds = Vec::with_capacity(listed.len());
    for (at, layer) in listed.iter().enumerate() {
        if layer.kind == "classify" {
            return Err((at, ConfigError::new(
                "kind",
                "classify is always the first layer and is not listed; configure it with [server], [identity], [[classes]] and [[agents]]",
            )));
        }
        let Some(kind) = registry.iter().find(|k| k.name == layer.kind) else {
            let known: Vec<&str> = registry.iter().map(|k| k.name).collect();
            let known = if known.is_empty() {
                "this build has no optional layers".to_string()
            } else {
                format!("known kinds: {}", known.join(", "))
            };
            return Err((
                at,
                ConfigError::new(
                    "kind",
                    format!("unknown layer kind {:?} ({known})", layer.kind),
                ),
            ));
        };
        kinds.push(kind);
    }
    check_order(listed, registry)?;
    Ok(kinds)
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

mod describe;

pub use describe::describe;
use describe::summaries;
