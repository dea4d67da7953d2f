//! Corral's own counters at the end of a run, read from `/metrics` as
//! Prometheus would.

use std::collections::BTreeMap;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

/// What Corral counted.
#[derive(Debug, Clone, Default)]
pub struct CorralCounters {
    /// `corral_cache_hits_total`, all freshness.
    pub cache_hits: f64,
    /// `corral_cache_misses_total`.
    pub cache_misses: f64,
    /// `corral_cache_coalesced_total`.
    pub coalesced: f64,
    /// `corral_batched_requests_total`.
    pub batched: f64,
    /// `corral_retries_total`.
    pub retries: f64,
    /// `corral_degraded_requests_total` by `level/action`.
    pub degraded: BTreeMap<String, f64>,
    /// `corral_refusals_total` by reason.
    pub refusals: BTreeMap<String, f64>,
    /// `corral_degradation_level` at the end.
    pub degradation_level: f64,
    /// `corral_state_backend_errors_total`: Redis commands that failed or
    /// outlasted `redis_timeout` (replicas only).
    pub state_errors: f64,
    /// `corral_priority_reserve_lent_total`, all pools: reserved permits
    /// lent to a lower priority.
    pub reserve_lent: f64,
}

impl CorralCounters {
    /// What was counted since `before`: stacks in one process share one
    /// recorder, so a run's counters are the difference of two readings
    /// (the level is the one at the end).
    pub fn since(mut self, before: &Self) -> Self {
        self.cache_hits -= before.cache_hits;
        self.cache_misses -= before.cache_misses;
        self.coalesced -= before.coalesced;
        self.batched -= before.batched;
        self.retries -= before.retries;
        for (key, value) in &before.degraded {
            *self.degraded.entry(key.clone()).or_default() -= value;
        }
        for (key, value) in &before.refusals {
            *self.refusals.entry(key.clone()).or_default() -= value;
        }
        self.degraded.retain(|_, v| *v != 0.0);
        self.refusals.retain(|_, v| *v != 0.0);
        self.state_errors -= before.state_errors;
        self.reserve_lent -= before.reserve_lent;
        self
    }
}

/// Scrapes `base/metrics`.
pub(crate) async fn scrape(base: &str) -> Result<CorralCounters, super::Error> {
    let client = Client::builder(TokioExecutor::new()).build_http::<Empty<Bytes>>();
    let response = client.get(format!("{base}/metrics").parse()?).await?;
    let body = response.into_body().collect().await?.to_bytes();
    Ok(parse(std::str::from_utf8(&body)?))
}

/// Reads the counters from Prometheus text.
fn parse(text: &str) -> CorralCounters {
    let mut counters = CorralCounters::default();
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let Some((series, value)) = line.rsplit_once(' ') else {
            continue;
        };
        let Ok(value) = value.parse::<f64>() else {
            continue;
        };
        let (name, labels) = series.split_once('{').unwrap_or((series, ""));
        let label = |key: &str| {
            labels
                .split(',')
                .filter_map(|pair| pair.split_once('='))
                .find(|(k, _)| k.trim() == key)
                .map(|(_, v)| v.trim_end_matches('}').trim_matches('"').to_string())
                .unwrap_or_default()
        };
        match name {
            "corral_cache_hits_total" => counters.cache_hits += value,
            "corral_cache_misses_total" => counters.cache_misses += value,
            "corral_state_backend_errors_total" => counters.state_errors += value,
            "corral_cache_coalesced_total" => counters.coalesced += value,
            "corral_batched_requests_total" => counters.batched += value,
            "corral_retries_total" => counters.retries += value,
            "corral_priority_reserve_lent_total" => counters.reserve_lent += value,
            "corral_degradation_level" => counters.degradation_level = value,
            "corral_degraded_requests_total" if value > 0.0 => {
                *counters
                    .degraded
                    .entry(format!("{}/{}", label("level"), label("action")))
                    .or_default() += value;
            }
            "corral_refusals_total" if value > 0.0 => {
                *counters.refusals.entry(label("reason")).or_default() += value;
            }
            _ => {}
        }
    }
    counters
}

#[cfg(test)]
mod tests {
    use super::parse;

    #[test]
    fn counters_are_summed_over_their_labels() {
        let text = "# TYPE corral_cache_hits_total counter\n\
            corral_cache_hits_total{freshness=\"fresh\"} 3\n\
            corral_cache_hits_total{freshness=\"stale\"} 2\n\
            corral_refusals_total{reason=\"shed\",priority=\"9\"} 4\n\
            corral_refusals_total{reason=\"shed\",priority=\"8\"} 1\n\
            corral_refusals_total{reason=\"degraded\",priority=\"9\"} 0\n\
            corral_degraded_requests_total{level=\"L1\",action=\"capped\"} 7\n\
            corral_degradation_level 2\n";
        let counters = parse(text);
        assert_eq!(counters.cache_hits, 5.0);
        assert_eq!(counters.refusals.len(), 1);
        assert_eq!(counters.refusals["shed"], 5.0);
        assert_eq!(counters.degraded["L1/capped"], 7.0);
        assert_eq!(counters.degradation_level, 2.0);
    }
}
