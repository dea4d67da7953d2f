//! Several upstreams (`[[upstreams]]`): the fleet built from them, the
//! way a request is sent and moved when its server fails, and the watch
//! on each server's health and loaded models.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use corral_core::{
    canonical_model, Body, BoxBody, BoxError, ConfigError, RequestMeta, UpstreamFailed,
};
use corral_fleet::{Fleet, Route, UpstreamSpec};
use http::{Request, Response};

use crate::config::{Capacity, UpstreamConfig, UpstreamEntry};
use crate::upstream::{aim, passed_through, root_cause, Target, Upstream};
use crate::upstream_url::UpstreamUrl;

impl Upstream {
    /// A client for each of `entries`, with the connection settings of
    /// `config`, and the fleet of their permits.
    pub fn with_fleet(
        config: &UpstreamConfig,
        entries: &[UpstreamEntry],
    ) -> Result<Self, ConfigError> {
        let mut targets = Vec::with_capacity(entries.len());
        let mut specs = Vec::with_capacity(entries.len());
        for (i, entry) in entries.iter().enumerate() {
            let url = UpstreamUrl::parse(&entry.url)
                .map_err(|r| ConfigError::new(format!("upstreams[{i}].url"), r))?;
            let name = entry.display_name();
            targets.push(Target {
                name: Arc::from(name.as_str()),
                url: Arc::new(url),
            });
            specs.push(spec_of(&name, entry));
        }
        let fleet = Fleet::new(specs);
        fleet.set_load_cost(config.model_load_time);
        Self::to(config, targets, Some(fleet))
    }

    /// Sends `request` where its permit is (else to the best server for
    /// it), and, when that server fails before answering, to another.
    pub(crate) async fn send_in_fleet(
        self,
        request: Request<Body>,
    ) -> Result<Response<BoxBody>, BoxError> {
        let Some(fleet) = self.fleet.clone() else {
            return Err("no fleet".into());
        };
        let route = request.extensions().get::<Arc<Route>>().cloned();
        let model = request
            .extensions()
            .get::<RequestMeta>()
            .and_then(|m| m.model.as_deref().map(canonical_model));
        let (parts, body) = request.into_parts();
        // A buffered body can be sent again; a streamed one only once.
        let replay = body.try_clone();
        let mut body = Some(body);
        let mut tried = 0;
        loop {
            let index = match &route {
                Some(route) => route.upstream().unwrap_or(0),
                None => fleet.pick(model.as_deref()),
            };
            let target = &self.targets[index];
            let body = match (body.take(), &replay) {
                (Some(body), _) => body,
                (None, Some(replay)) => replay.try_clone().unwrap_or_default(),
                (None, None) => return Err("the request body cannot be sent again".into()),
            };
            let mut attempt = Request::from_parts(parts.clone(), body);
            aim(&mut attempt, &target.url)?;
            let error = match self.client.request(attempt).await {
                Ok(response) => return Ok(passed_through(response)),
                Err(error) => error,
            };
            tried += 1;
            let failed = UpstreamFailed::new(
                target.url.to_string(),
                error.is_connect(),
                root_cause(&error),
            );
            if replay.is_none() || tried >= self.targets.len() {
                return Err(Box::new(failed));
            }
            // Nothing was answered: the server failed, not the request.
            let moved = match &route {
                Some(route) => route.failover().await,
                None => {
                    fleet.set_healthy(index, false);
                    (0..self.targets.len()).any(|u| u != index && fleet.is_healthy(u))
                }
            };
            if !moved {
                return Err(Box::new(failed));
            }
            tracing::warn!(upstream = %target.name, error = %failed, "upstream failed before answering: sending the request to another");
        }
    }
}

/// What the fleet knows of an entry.
fn spec_of(name: &str, entry: &UpstreamEntry) -> UpstreamSpec {
    let capacity = match entry.capacity {
        Capacity::Fixed(n) => n,
        // Refused by the configuration's checks until it is measured.
        Capacity::Auto => crate::config::DEFAULT_CAPACITY_PER_MODEL,
    };
    let mut spec = UpstreamSpec::new(name, capacity)
        .with_models(&entry.models)
        .with_max_loaded(entry.max_loaded_models);
    spec.weight = entry.weight;
    spec.model_capacity = entry
        .model_capacity
        .iter()
        .map(|(model, capacity)| (canonical_model(model), *capacity))
        .collect();
    spec
}

/// Asks each upstream for its version and what it has loaded every
/// `period`: one that does not answer is drained, one that answers again
/// takes requests, and the fleet learns what `/api/ps` lists.
pub(crate) async fn watch(upstream: Upstream, period: Duration) {
    let Some(fleet) = upstream.fleet().cloned() else {
        return;
    };
    let mut every = tokio::time::interval(period);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        every.tick().await;
        for (index, target) in upstream.targets().iter().enumerate() {
            let up = upstream.probe_target(index).await.is_ok();
            metrics::gauge!(crate::telemetry::UPSTREAM_UP, "upstream" => target.name.to_string())
                .set(if up { 1.0 } else { 0.0 });
            fleet.set_healthy(index, up);
            if !up {
                continue;
            }
            if let Ok(body) = upstream.get(index, "/api/ps").await {
                fleet.observe_loaded(index, loaded_models(&body));
            }
        }
    }
}

/// The models `/api/ps` lists, by canonical name, with when each
/// unloads.
pub(crate) fn loaded_models(body: &[u8]) -> Vec<(String, Option<SystemTime>)> {
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
