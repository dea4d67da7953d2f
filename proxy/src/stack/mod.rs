//! Builds the stack from the configuration, as a request travels it:
//! `classify`, then the `[[layers]]` in order, then the upstream.
//!
//! `build` returns the service; serving it is separate, so tests can call
//! it with `oneshot`.

use std::path::Path;
use std::sync::Arc;

use corral_classify::ClassifyLayer;
use corral_core::{Bus, ConfigError, LoadCell, RefusalCast};
use tower::Layer;

use crate::config::{Config, LayerConfig, LoadError, NO_FILE};
use crate::registry::{LayerKind, LAYERS};

mod carry;
mod kinds;
mod shared;

use crate::respond;
use crate::svc::{BuildContext, Controls};
use crate::upstream::Upstream;
pub(crate) use carry::keeps_scheduler;
use kinds::{kinds_of, places_requests};
use shared::Shared;

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
    /// Each layer as built, with what it was built from: what a reload
    /// carries over.
    built: Arc<[carry::Built]>,
    /// The API keys issued at run time, and where they are kept.
    keys: crate::keys::Keys,
    /// Where each request's span goes, with `[traces] otlp_endpoint`.
    exporter: Option<Arc<crate::trace::Exporter>>,
    /// Applies the other replicas' settings to this stack's controls;
    /// stopped when the last clone of the stack goes (a reload's new
    /// stack has its own).
    _follower: Option<Arc<carry::StopOnDrop>>,
    /// Moves the degradation level with the load between requests.
    _ticker: Option<Arc<carry::StopOnDrop>>,
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

    /// The API keys issued at run time.
    pub(crate) fn keys(&self) -> &crate::keys::Keys {
        &self.keys
    }

    /// Where each request's span goes, if anywhere.
    pub(crate) fn exporter(&self) -> Option<&Arc<crate::trace::Exporter>> {
        self.exporter.as_ref()
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
    assemble(config, file, registry, None).map(|(stack, _)| stack)
}

/// Builds the stack for `config` to take over from `previous` (built
/// from `before`), carrying over what still fits: the upstream, the bus,
/// the event log, shared state and this replica's name always; the
/// priorities set at run time; each layer whose options and what it
/// reads of the config are unchanged, as it is (its queue, counters,
/// cache, breakers). A new `[upstream] capacity` is set on a scheduler
/// carried over. The answer says, line by line, what was carried and
/// what was built anew.
pub fn rebuild(
    previous: &Stack,
    before: &Config,
    config: &Config,
    file: Option<&Path>,
) -> Result<(Stack, Vec<String>), LoadError> {
    assemble(config, file, LAYERS, Some((previous, before)))
}

fn assemble(
    config: &Config,
    file: Option<&Path>,
    registry: &[LayerKind],
    previous: Option<(&Stack, &Config)>,
) -> Result<(Stack, Vec<String>), LoadError> {
    let file = file.unwrap_or(Path::new(NO_FILE));
    let refuse = |e: ConfigError, line| LoadError::from_config(file, e, line);
    // Layers set gauges as they are built: the recorder must be there.
    let _ = crate::telemetry::metrics_handle();

    // The way down: classify, the layers listed, the upstream.
    let (overrides, issued) = previous.map_or_else(Default::default, |(p, _)| {
        (p.classify.overrides().clone(), p.classify.issued().clone())
    });
    let classify = classify_layer(config, overrides, issued).map_err(|e| refuse(e, None))?;
    let listed = config.layers();
    let kinds = kinds_of(&listed, registry)
        .map_err(|(at, e)| refuse(e.within(format!("layers[{at}]")), listed[at].line))?;
    let upstream = match previous {
        Some((previous, _)) => previous.upstream.clone(),
        None => {
            let fleet = config.fleet_entries();
            if fleet.is_empty() {
                Upstream::new(&config.upstream)
            } else {
                Upstream::with_fleet(&config.upstream, &fleet)
            }
            .map_err(|e| refuse(e, None))?
        }
    };

    places_requests(&upstream, &kinds).map_err(|e| refuse(e, None))?;

    let carry = previous
        .map(|(previous, before)| carry::Plan::new(previous, before, config, &listed, &kinds));
    // What the layers share: the event log, the load, the bus, Redis.
    let keeps_load = carry.as_ref().is_some_and(carry::Plan::keeps_load);
    let shared =
        Shared::of(config, previous.map(|(p, _)| p), keeps_load).map_err(|e| refuse(e, None))?;
    let Shared {
        events,
        load,
        replica,
        state,
        bus,
        exporter,
    } = shared;
    let keys = match previous {
        Some((previous, _)) => previous.keys.clone(),
        None => crate::keys::Keys::start(
            classify.issued().clone(),
            config.identity.keys_file.clone(),
            state.as_ref(),
            bus.clone(),
        )
        .map_err(|reason| refuse(ConfigError::new("identity.keys_file", reason), None))?,
    };
    let controls = Arc::new(Controls::default());
    let _ = controls.priorities.set(classify.overrides().clone());
    let sink: Arc<dyn corral_core::EventSink> = events.clone();
    let context = BuildContext {
        config,
        load: &load,
        bus: &bus,
        controls: &controls,
        events: &sink,
        state: state.as_ref(),
        fleet: upstream.fleet(),
    };

    // Each layer from its options (or carried over); the refusals they
    // answer with.
    let (built, refusals, notes) = build_layers(&listed, &kinds, &context, carry.as_ref())
        .map_err(|(at, e, line)| refuse(e.within(format!("layers[{at}]")), line))?;

    // Wrapped from the inside out: the upstream, the layers, classify.
    let mut service: StackService = crate::svc::shared(upstream.clone());
    for built in built.iter().rev() {
        service = built.layer.wrap(service);
    }
    // Pinned load options (`[models."name"]`), on the body classify read.
    let service = crate::pin::wrap(&config.models, service);
    let service = crate::svc::shared(classify.layer(service));
    crate::telemetry::export_classes(classify.classes().map(|(name, _, _)| name));
    let (follower, ticker) = background(state.as_ref(), &bus, &controls);

    let layers = summaries(config, &classify, &built);
    Ok((
        Stack {
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
            built: built.into(),
            keys,
            exporter,
            _follower: follower,
            _ticker: ticker,
        },
        notes,
    ))
}

/// What runs beside the stack while it serves, stopped with it: the
/// follower that applies the other replicas' settings to its controls
/// (with shared state), and the ticker that moves its degradation level
/// with the load when no request samples it.
#[allow(clippy::type_complexity)]
fn background(
    state: Option<&corral_core::RedisState>,
    bus: &Arc<dyn Bus>,
    controls: &Arc<Controls>,
) -> (
    Option<Arc<carry::StopOnDrop>>,
    Option<Arc<carry::StopOnDrop>>,
) {
    let follower = state.map(|state| {
        Arc::new(carry::StopOnDrop(tokio::spawn(crate::follow::follow(
            bus.subscribe(),
            controls.clone(),
            state.replica().clone(),
        ))))
    });
    let ticker = controls
        .degrade
        .get()
        .filter(|_| tokio::runtime::Handle::try_current().is_ok())
        .map(|controller| {
            let every = std::time::Duration::from_secs(1);
            Arc::new(carry::StopOnDrop(tokio::spawn(
                controller.clone().keep_current(every),
            )))
        });
    (follower, ticker)
}

/// The classify layer, from the sections it is assembled of; an error
/// names the section the operator wrote.
fn classify_layer(
    config: &Config,
    overrides: Arc<corral_classify::PriorityOverrides>,
    issued: Arc<corral_classify::IssuedKeys>,
) -> Result<ClassifyLayer, ConfigError> {
    ClassifyLayer::sharing(&config.classify(), overrides, issued).map_err(|e| match e.key() {
        "max_request_bytes" => ConfigError::new("server.max_request_bytes", e.reason()),
        "default_class" => ConfigError::new("identity.default_class", e.reason()),
        _ => e,
    })
}

/// Builds each layer listed from its options, or carries it over from
/// the stack a reload replaces, with the refusals the stack answers
/// with and a note per layer carried or rebuilt. An error gives the
/// layer's index and the line of the key it names (else the layer's
/// header's).
#[allow(clippy::type_complexity)]
fn build_layers(
    listed: &[LayerConfig],
    kinds: &[&LayerKind],
    context: &BuildContext<'_>,
    carry: Option<&carry::Plan>,
) -> Result<(Vec<carry::Built>, Vec<RefusalCast>, Vec<String>), (usize, ConfigError, Option<usize>)>
{
    let mut refusals: Vec<RefusalCast> = respond::built_in();
    let mut built = Vec::with_capacity(listed.len());
    let mut notes = Vec::new();
    for (at, (layer, kind)) in listed.iter().zip(kinds).enumerate() {
        let reads = (kind.reads)(context.config);
        let carried = carry.and_then(|plan| plan.carried(at, context.controls));
        let stack_layer = match carried {
            Some(layer) => layer,
            None => (kind.build)(layer, context).map_err(|e| {
                let line = layer.line_of(e.key());
                (at, e, line)
            })?,
        };
        if let Some(plan) = carry {
            notes.push(plan.note(at, kind.name));
        }
        for cast in kind.refusals {
            if !refusals.iter().any(|c| std::ptr::fn_addr_eq(*c, *cast)) {
                refusals.push(*cast);
            }
        }
        built.push(carry::Built {
            kind: kind.name,
            options: layer.options.clone(),
            reads,
            layer: stack_layer,
        });
    }
    if let Some(plan) = carry {
        notes.extend(plan.after(context.config, context.controls));
    }
    Ok((built, refusals, notes))
}

mod describe;

pub use describe::describe;
use describe::summaries;
