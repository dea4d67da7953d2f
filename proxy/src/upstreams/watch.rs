//! The watch on each upstream: its health, what it has, what it has
//! loaded.

use std::time::{Duration, SystemTime};

use corral_core::canonical_model;

use crate::upstream::Upstream;

/// Probes missed in a row before an upstream is drained: one slow answer
/// is not a failure.
const MISSED_PROBES_BEFORE_DRAINING: u32 = 2;

/// Asks each upstream, at once, for its version, what it has and what it
/// has loaded every `period`: one that misses
/// [`MISSED_PROBES_BEFORE_DRAINING`] probes in a row is drained, one that
/// answers again takes requests, and the fleet learns what `/api/tags`
/// and `/api/ps` list.
pub(crate) async fn watch(upstream: Upstream, period: Duration) {
    let Some(fleet) = upstream.fleet().cloned() else {
        return;
    };
    let mut every = tokio::time::interval(period);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut missed = vec![0u32; upstream.targets().len()];
    loop {
        every.tick().await;
        let mut probes = tokio::task::JoinSet::new();
        for index in 0..upstream.targets().len() {
            let upstream = upstream.clone();
            probes.spawn(async move { (index, probe(&upstream, index).await) });
        }
        while let Some(Ok((index, seen))) = probes.join_next().await {
            let name = upstream.targets()[index].name.to_string();
            metrics::gauge!(crate::telemetry::UPSTREAM_UP, "upstream" => name)
                .set(if seen.is_some() { 1.0 } else { 0.0 });
            match seen {
                Some(seen) => {
                    missed[index] = 0;
                    fleet.set_healthy(index, true);
                    if let Some(available) = seen.available {
                        fleet.observe_available(index, available);
                    }
                    if let Some((asked, loaded)) = seen.loaded {
                        fleet.observe_loaded(index, asked, loaded);
                    }
                }
                None => {
                    missed[index] += 1;
                    if missed[index] >= MISSED_PROBES_BEFORE_DRAINING {
                        fleet.set_healthy(index, false);
                    }
                }
            }
        }
    }
}

/// What one probe of an upstream learned.
struct Seen {
    /// What `/api/tags` lists, when it answers.
    available: Option<Vec<String>>,
    /// What `/api/ps` lists, when it answers, with the fleet's mark of
    /// the loads sent before it was asked.
    loaded: Option<(u64, Loaded)>,
}

/// Models loaded, by canonical name, with when each unloads.
type Loaded = Vec<(String, Option<SystemTime>)>;

/// What one probe of upstream `index` learns: `None` if it does not
/// answer.
async fn probe(upstream: &Upstream, index: usize) -> Option<Seen> {
    // Any answer is a server up: one that is not Ollama (llama.cpp's
    // server) answers /api/version with a 404, and /api/tags and /api/ps
    // too, which leaves what it has and has loaded unknown.
    // A 5xx is a proxy in front of a dead Ollama (502, 503, 504).
    let status = upstream.answers(index, "/api/version").await.ok()?;
    if status.is_server_error() {
        return None;
    }
    let available = upstream
        .get(index, "/api/tags")
        .await
        .ok()
        .filter(|body| listed(body))
        .map(|body| loaded_models(&body).into_iter().map(|(m, _)| m).collect());
    let asked = upstream.fleet().map_or(0, |f| f.loads_sent(index));
    let loaded = upstream
        .get(index, "/api/ps")
        .await
        .ok()
        .filter(|body| listed(body))
        .map(|body| (asked, loaded_models(&body)));
    Some(Seen { available, loaded })
}

/// Whether `body` is a list of models in Ollama's shape: anything else
/// (another server's 200) leaves what it has unknown, not empty.
fn listed(body: &[u8]) -> bool {
    serde_json::from_slice::<serde_json::Value>(body)
        .is_ok_and(|v| v.get("models").is_some_and(|m| m.is_array()))
}

/// The models `/api/ps` (or `/api/tags`) lists, by canonical name, with
/// when each unloads.
pub(crate) fn loaded_models(body: &[u8]) -> Loaded {
    let Ok(answer) = serde_json::from_slice::<serde_json::Value>(body) else {
        return Vec::new();
    };
    let Some(models) = answer.get("models").and_then(|m| m.as_array()) else {
        return Vec::new();
    };
    models
        .iter()
        .filter_map(|m| {
            let name = m
                .get("model")
                .or_else(|| m.get("name"))
                .and_then(|n| n.as_str())?;
            let expires = m
                .get("expires_at")
                .and_then(|e| e.as_str())
                .and_then(rfc3339);
            Some((canonical_model(name), expires))
        })
        .collect()
}

/// An RFC 3339 time with any offset, as Go writes it
/// (`2024-06-04T14:38:31.83753-07:00`).
fn rfc3339(text: &str) -> Option<SystemTime> {
    let text = text.trim();
    if let Some(utc) = text.strip_suffix('Z') {
        return humantime::parse_rfc3339_weak(&format!("{utc}Z")).ok();
    }
    let (local, sign, offset) = match text.rfind(['+', '-']) {
        Some(at) if at > 10 => (&text[..at], &text[at..at + 1], &text[at + 1..]),
        _ => return None,
    };
    let (hours, minutes) = offset.split_once(':')?;
    let shift =
        Duration::from_secs(hours.parse::<u64>().ok()? * 3600 + minutes.parse::<u64>().ok()? * 60);
    let as_utc = humantime::parse_rfc3339_weak(&format!("{local}Z")).ok()?;
    // Local time ahead of UTC (`+`) is later on the clock than UTC.
    if sign == "+" {
        as_utc.checked_sub(shift)
    } else {
        as_utc.checked_add(shift)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn api_ps_is_read_with_when_each_model_unloads() {
        let body = br#"{"models":[{"name":"llama3:latest","model":"llama3:latest","expires_at":"2024-06-04T14:38:31.83753-07:00"},{"name":"qwen2.5","expires_at":"2024-06-04T21:38:31Z"},{"model":"odd","expires_at":"soon"}]}"#;
        let loaded = loaded_models(body);
        let at = |s| humantime::parse_rfc3339_weak(s).ok();
        assert_eq!(
            loaded,
            vec![
                (
                    "llama3:latest".to_string(),
                    at("2024-06-04T21:38:31.83753Z")
                ),
                ("qwen2.5:latest".to_string(), at("2024-06-04T21:38:31Z")),
                ("odd:latest".to_string(), None),
            ]
        );
        assert!(loaded_models(b"not json").is_empty());
        assert_eq!(
            rfc3339("2024-06-04T23:38:31+02:00"),
            at("2024-06-04T21:38:31Z")
        );
    }
}
