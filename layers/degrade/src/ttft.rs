//! A request that aims for a time to first token the queue will not meet:
//! the smaller model, when its class allows it and that model's queue
//! would meet the objective. A pure decision over the scheduler's
//! estimates.

use corral_core::{RequestMeta, UpstreamLoad};

use crate::config::DegradeConfig;
use crate::treatment::generates;

/// The model `meta` should run on instead to meet its time-to-first-token
/// objective, if any: its class is in `ttft_fallback_classes` (or that
/// holds `*`) and not critical, its model has a smaller one (`l2_models`,
/// else `l2_model`), the wait for its own model is past the objective and
/// the wait for the smaller one is not. An unknown wait changes nothing.
pub(crate) fn ttft_fallback<'a>(
    config: &'a DegradeConfig,
    meta: &RequestMeta,
    load: &dyn UpstreamLoad,
) -> Option<&'a str> {
    let objective = meta.ttft?;
    // An embedding keeps its model: its vectors must match those stored.
    if !generates(meta.endpoint) {
        return None;
    }
    // What it already spent getting here counts against the objective.
    let objective = objective.saturating_sub(meta.received_at.elapsed());
    let class = meta.class.as_str();
    let allowed = config
        .ttft_fallback_classes
        .iter()
        .any(|c| c == "*" || c == class)
        && !config.critical_classes.iter().any(|c| c == class);
    if !allowed {
        return None;
    }
    let current = meta.model.as_deref().filter(|m| !m.is_empty())?;
    let smaller = config
        .l2_models
        .get(current)
        .or(config.l2_model.as_ref())
        .filter(|m| m.as_str() != current)?;
    if load.wait_estimate(meta)? <= objective {
        return None;
    }
    let moved = meta.clone().with_model(Some(smaller.as_str().into()));
    let wait = load.wait_estimate(&moved)?;
    (wait <= objective).then_some(smaller.as_str())
}

/// The objective as the answer's `X-Corral-Degraded` tells it.
pub(crate) const TTFT_MARK: &str = "ttft";

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::time::Duration;

    use corral_core::{Endpoint, LoadSnapshot, RequestId};

    use super::*;

    /// A scheduler whose wait depends on the model only.
    struct Waits(BTreeMap<&'static str, Duration>);

    impl UpstreamLoad for Waits {
        fn snapshot(&self) -> LoadSnapshot {
            LoadSnapshot::idle(1)
        }

        fn wait_estimate(&self, meta: &RequestMeta) -> Option<Duration> {
            self.0.get(meta.model.as_deref()?).copied()
        }
    }

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn the_smaller_model_only_where_it_meets_the_objective_and_the_class_allows() {
        let config: DegradeConfig = toml::from_str(
            r#"
            l2_model = "tinyllama"
            l2_models = { "llama3:70b" = "llama3:8b" }
            ttft_fallback_classes = ["interactive", "oncall"]
            critical_classes = ["oncall"]
            "#,
        )
        .unwrap();
        let waits = Waits(BTreeMap::from([
            ("llama3", ms(5000)),
            ("llama3:70b", ms(5000)),
            ("llama3:8b", ms(3000)),
            ("tinyllama", ms(100)),
        ]));
        let ask = |class: &str, model: &str, ttft: Option<u64>| {
            let mut meta = RequestMeta::new(RequestId::generate(), Endpoint::Chat)
                .with_agent("a".into(), class.into(), false)
                .with_model(Some(model.into()));
            meta.ttft = ttft.map(ms);
            meta
        };
        let table = [
            (
                "too slow: the smaller model",
                ask("interactive", "llama3", Some(1000)),
                Some("tinyllama"),
            ),
            (
                "fast enough as it is",
                ask("interactive", "llama3", Some(6000)),
                None,
            ),
            ("no objective", ask("interactive", "llama3", None), None),
            (
                "a class not allowed",
                ask("batch", "llama3", Some(1000)),
                None,
            ),
            (
                "a critical class is never moved",
                ask("oncall", "llama3", Some(1000)),
                None,
            ),
            (
                "the mapped smaller model is no faster enough",
                ask("interactive", "llama3:70b", Some(1000)),
                None,
            ),
            (
                "the mapped smaller model meets it",
                ask("interactive", "llama3:70b", Some(4000)),
                Some("llama3:8b"),
            ),
            (
                "already the smaller model",
                ask("interactive", "tinyllama", Some(10)),
                None,
            ),
            (
                "an unknown wait changes nothing",
                ask("interactive", "mistral", Some(10)),
                None,
            ),
            (
                "an embedding keeps its model",
                {
                    let mut embed = ask("interactive", "llama3", Some(1000));
                    embed.endpoint = Endpoint::Embed;
                    embed
                },
                None,
            ),
        ];
        for (case, meta, expected) in table {
            assert_eq!(ttft_fallback(&config, &meta, &waits), expected, "{case}");
        }
        let everyone: DegradeConfig = toml::from_str("ttft_fallback_classes = [\"*\"]").unwrap();
        assert_eq!(
            ttft_fallback(&everyone, &ask("batch", "llama3", Some(1000)), &waits),
            Some("tinyllama"),
            "`*` allows every class"
        );
    }
}
