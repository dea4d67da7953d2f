//! What a built stack says of itself: the summary of each layer, and
//! the text `check-config` and the startup print.

use corral_classify::ClassifyLayer;

use super::Stack;
use crate::config::Config;

/// Each layer, outermost first, as `(kind, how it is configured)`.
pub(super) fn summaries(
    config: &Config,
    classify: &ClassifyLayer,
    built: &[super::carry::Built],
) -> Vec<(String, String)> {
    let mut layers = vec![("classify".to_string(), classify_summary(config, classify))];
    layers.extend(
        built
            .iter()
            .map(|b| (b.kind.to_string(), b.layer.summary().to_string())),
    );
    layers
}

/// How classify is configured, for `check-config`.
fn classify_summary(config: &Config, classify: &ClassifyLayer) -> String {
    format!(
        "identity, priority and deadline; bodies up to {} bytes; {} class(es), {} agent(s){}",
        config.server.max_request_bytes,
        classify.classes().count(),
        config.agents.len(),
        if config.identity.require_key {
            "; API key required"
        } else {
            ""
        }
    )
}

/// Renders `stack` as `check-config` prints it.
pub fn describe(config: &Config, stack: &Stack) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    let _ = writeln!(out, "listen     {}", config.server.listen);
    let _ = match config.admin.listen {
        Some(admin) => writeln!(out, "admin      {admin} (/corral/*, /metrics)"),
        None => writeln!(out, "admin      on the main listener (/corral/*, /metrics)"),
    };
    let _ = writeln!(out, "upstream   {}", config.upstreams_summary());
    let _ = writeln!(out, "capacity   {}", config.capacity_summary());
    let _ = writeln!(out, "state      {}", config.state.summary());
    for agent in &config.agents {
        if let Some(var) = &agent.key_env {
            if std::env::var(var).map_or(true, |v| v.trim().is_empty()) {
                let _ = writeln!(
                    out,
                    "disabled   agent {:?}: {var} is not set (its key comes from it)",
                    agent.id
                );
            }
        }
    }
    let classify = config.classify();
    if let Ok(layer) = ClassifyLayer::new(&classify) {
        let classes: Vec<String> = layer
            .classes()
            .map(|(name, p, [hi, lo])| format!("{name} (priority {p}, may ask {hi}..{lo})"))
            .collect();
        let _ = writeln!(out, "classes    {}", classes.join(", "));
    }
    let _ = match &config.layers {
        None => writeln!(
            out,
            "stack, outermost first (the default: no [[layers]] listed; `layers = []` for none):"
        ),
        Some(_) => writeln!(out, "stack, outermost first:"),
    };
    for (i, (kind, summary)) in stack.layers.iter().enumerate() {
        let _ = writeln!(out, "  {i}. {kind:<10} {summary}");
    }
    let _ = writeln!(out, "  -> upstream {}", config.upstreams_summary());
    out
}
