//! The layers listed, checked before any is built: every kind known,
//! each kind's rules on the others held, the scheduler there when
//! requests must be placed.

use corral_core::ConfigError;

use crate::config::LayerConfig;
use crate::registry::{check_order, LayerKind};
use crate::upstream::Upstream;

/// Several upstreams (or one holding few models) need the `priority`
/// layer: it places each request on a server.
pub(super) fn places_requests(
    upstream: &Upstream,
    kinds: &[&LayerKind],
) -> Result<(), ConfigError> {
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
pub(super) fn kinds_of<'r>(
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
