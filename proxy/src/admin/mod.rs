//! The admin paths. Read: `/corral/status`, `/corral/agents`,
//! `/corral/usage`, `/corral/events`, `/corral/config`, the probes `/corral/healthz` and
//! `/corral/readyz` (open without the admin token), and `/metrics` (also
//! as `/corral/metrics`). Read and set: `/corral/degrade`,
//! `/corral/capacity`, `/corral/priority`. `POST /corral/reload` reloads
//! the configuration on every replica. `GET`/`POST /corral/keys` and
//! `DELETE /corral/keys/{digest or agent}` list, issue and revoke API
//! keys at run time. `/corral/ui` is the status page (open: it holds no
//! data), `/corral/ui/stream` what it shows, live.
//!
//! They live under `/corral/`, which no Ollama path uses, and answer on
//! the main listener unless `[admin] listen` gives them their own.

use http::{header, HeaderValue, Method, Request, Response, StatusCode};
use metrics_exporter_prometheus::PrometheusHandle;
use serde_json::json;

use std::sync::Arc;

use corral_core::{full, ApiFamily, BoxBody, ErrorBody, LoadCell};

use crate::config::Config;
use crate::respond;
use crate::stack::Stack;
use crate::svc::Controls;
use crate::telemetry;
use crate::upstream::Upstream;

mod control;
mod keys;
mod ui;
mod usage;
mod view;

pub(crate) use view::without_credentials;

use view::resolved_config;

/// The admin endpoints.
#[derive(Clone)]
pub struct Admin {
    upstream: Upstream,
    metrics: PrometheusHandle,
    load: LoadCell,
    controls: Arc<Controls>,
    bus: Arc<dyn corral_core::Bus>,
    /// This replica's id: its field in the kept reloads.
    replica: Arc<str>,
    events: Arc<dyn corral_events::EventStore>,
    config: Arc<serde_json::Value>,
    token: Option<Arc<str>>,
    /// Each configured agent's class, and the class of the others: whose
    /// budgets `/corral/usage` reads.
    classes: Arc<usage::Classes>,
    /// What `POST /corral/reload` calls, when the proxy serves with one.
    reloader: crate::reload::ReloadHandle,
    /// The API keys issued at run time.
    keys: crate::keys::Keys,
    /// The classes a key may be issued for, the default first.
    class_names: Arc<[String]>,
    /// The agents of the configuration file: their keys are the file's.
    file_agents: Arc<std::collections::HashSet<String>>,
}

corral_core::impl_debug!(Admin { upstream });

impl Admin {
    /// Whether the request carries the admin token, or none is needed.
    fn authorized(&self, headers: &http::HeaderMap) -> bool {
        let Some(token) = &self.token else {
            return true;
        };
        headers
            .get_all(header::AUTHORIZATION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .filter_map(|v| {
                let (scheme, credentials) = v.split_once(' ')?;
                scheme
                    .eq_ignore_ascii_case("bearer")
                    .then(|| credentials.trim())
            })
            .any(|given| constant_time_eq(given.as_bytes(), token.as_bytes()))
    }
    /// Admin endpoints for `stack` run with `config`, exporting `metrics`.
    pub fn new(stack: &Stack, metrics: PrometheusHandle, config: &Config) -> Self {
        Self {
            upstream: stack.upstream().clone(),
            metrics,
            load: stack.load().clone(),
            controls: stack.controls().clone(),
            bus: stack.bus().clone(),
            replica: stack.replica().clone(),
            events: stack.events().clone() as Arc<dyn corral_events::EventStore>,
            config: Arc::new(resolved_config(config)),
            token: config.admin.token.as_deref().map(Arc::from),
            classes: Arc::new(usage::Classes::of(config)),
            reloader: crate::reload::ReloadHandle::default(),
            keys: stack.keys().clone(),
            class_names: std::iter::once(config.identity.default_class.clone())
                .chain(config.classes.iter().map(|c| c.name.clone()))
                .collect(),
            file_agents: Arc::new(config.agents.iter().map(|a| a.id.clone()).collect()),
        }
    }

    /// The same endpoints, `POST /corral/reload` calling `reloader`.
    pub(crate) fn reloading(mut self, reloader: crate::reload::ReloadHandle) -> Self {
        self.reloader = reloader;
        self
    }

    /// Whether `path` is an admin path.
    pub fn owns(path: &str) -> bool {
        path.starts_with("/corral/") || path == "/metrics"
    }

    /// Answers an admin request.
    pub async fn handle<B>(&self, request: Request<B>) -> Response<BoxBody>
    where
        B: http_body::Body<Data = bytes::Bytes>,
        B::Error: Into<corral_core::BoxError>,
    {
        let get = request.method() == Method::GET || request.method() == Method::HEAD;
        let path = request.uri().path();
        // Probes stay open: a kubelet or load balancer has no token; so
        // does the status page, which holds no data (its script asks for
        // the token).
        let probe =
            matches!(path, "/corral/healthz" | "/corral/readyz") || (get && path == "/corral/ui");
        if !probe && !self.authorized(request.headers()) {
            let mut response = respond::answer(
                &ErrorBody::new(
                    StatusCode::UNAUTHORIZED,
                    "the admin API needs the admin token: Authorization: Bearer <token>",
                ),
                ApiFamily::Ollama,
            );
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"corral-admin\""),
            );
            return response;
        }
        match path {
            "/corral/degrade" => self.degrade(request).await,
            "/corral/capacity" => self.capacity(request).await,
            "/corral/priority" => self.priority(request).await,
            "/corral/reload" => self.reload(request.method()).await,
            "/corral/ui" if get => ui::page(),
            "/corral/ui/stream" if get => self.ui_stream(),
            "/corral/keys" => self.keys(request).await,
            path if path.starts_with("/corral/keys/") => {
                let who = percent_decode(&path["/corral/keys/".len()..]);
                self.revoke_key(request.method(), &who).await
            }
            "/corral/status" if get => json_response(StatusCode::OK, &self.status().await),
            "/corral/upstreams" if get => json_response(
                StatusCode::OK,
                &json!({"upstreams": view::upstreams(&self.upstream)}),
            ),
            "/corral/agents" if get => {
                json_response(StatusCode::OK, &json!(self.events.usage().await))
            }
            "/corral/events" if get => self.events(request.uri().query().unwrap_or("")).await,
            "/corral/usage" if get => self.usage(request.uri().query().unwrap_or("")).await,
            "/corral/config" if get => json_response(StatusCode::OK, &self.config),
            "/corral/healthz" if get => json_response(StatusCode::OK, &json!({"status": "ok"})),
            "/corral/readyz" if get => match self.upstream.probe().await {
                Ok(version) => json_response(
                    StatusCode::OK,
                    &json!({"status": "ready", "upstream": self.upstream.url().to_string(), "version": version}),
                ),
                Err(error) => json_response(
                    StatusCode::SERVICE_UNAVAILABLE,
                    &json!({"status": "not ready", "upstream": self.upstream.url().to_string(), "error": error}),
                ),
            },
            path if get && path.starts_with("/corral/requests/") => {
                self.waiting_request(&path["/corral/requests/".len()..])
            }
            "/metrics" | "/corral/metrics" if get => {
                if let Some(load) = self.load.get() {
                    telemetry::record_load(&load.snapshot());
                }
                if let Some(scheduler) = self.controls.scheduler.get() {
                    telemetry::record_pools(&scheduler.pools());
                }
                if let Some(cache) = self.controls.cache.get() {
                    let (entries, bytes) = cache.size();
                    metrics::gauge!(corral_cache::metrics::CACHE_ENTRIES).set(entries as f64);
                    metrics::gauge!(corral_cache::metrics::CACHE_BYTES).set(bytes as f64);
                }
                let mut response = Response::new(full(self.metrics.render()));
                response.headers_mut().insert(
                    header::CONTENT_TYPE,
                    HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
                );
                response
            }
            path => respond::answer(
                &ErrorBody::new(
                    StatusCode::NOT_FOUND,
                    format!("no admin endpoint {} {path}", request.method()),
                ),
                ApiFamily::Ollama,
            ),
        }
    }
}

impl Admin {
    /// Everything at a glance: the upstream's load, degradation, breakers,
    /// cache, per-class usage, the event log.
    async fn status(&self) -> serde_json::Value {
        let load = self.load.get().map(|l| l.snapshot());
        let queued: serde_json::Map<String, serde_json::Value> = load
            .as_ref()
            .map(|l| {
                l.queued
                    .iter()
                    .enumerate()
                    .map(|(i, n)| ((i + 1).to_string(), json!(n)))
                    .collect()
            })
            .unwrap_or_default();
        let usage = self.events.usage().await;
        let mut classes: std::collections::BTreeMap<String, corral_events::AgentUsage> =
            Default::default();
        for agent in usage.values() {
            let class = classes
                .entry(agent.class.clone().unwrap_or_else(|| "none".into()))
                .or_default();
            class.merge(agent);
            // A class's own usage names no class.
            class.class = None;
        }
        let hits: u64 = usage.values().map(|u| u.cache_hits).sum();
        let (held, next) = self.events.size().await;
        json!({
            "upstream": self.upstream.url().to_string(),
            "capacity": load.as_ref().map(|l| l.capacity),
            "in_flight": load.as_ref().map(|l| l.in_flight),
            "queued": load.as_ref().map(|l| l.queued_total()),
            "queued_by_priority": queued,
            "queued_bytes": load.as_ref().map(|l| l.queued_bytes),
            "completions_per_sec": load.as_ref().map(|l| l.completions_per_sec),
            "degradation": self.controls.degrade.get().map(|d| {
                let s = d.status();
                json!({"level": s.level.as_str(), "load": s.load, "forced": s.forced.map(|l| l.as_str())})
            }),
            "breakers": self.controls.breaker.get().map(|b| {
                b.states().into_iter().map(|(name, state)| json!({"breaker": name, "state": state.as_str()})).collect::<Vec<_>>()
            }),
            "cache": self.controls.cache.get().map(|c| {
                let (entries, bytes) = c.size();
                let requests: u64 = usage.values().filter(|u| u.requests > 0).map(|u| u.requests).sum();
                json!({"entries": entries, "bytes": bytes, "hits": hits,
                       "hit_ratio": if requests == 0 { 0.0 } else { hits as f64 / requests as f64 }})
            }),
            "classes": classes,
            "upstreams": view::upstreams(&self.upstream),
            "events": {"held": held, "recorded": next.saturating_sub(1)},
        })
    }

    /// `GET /corral/events?since=TIMESTAMP&agent=ID&kind=K&limit=N`.
    async fn events(&self, query: &str) -> Response<BoxBody> {
        let mut q = corral_events::Query::default();
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            let value = percent_decode(value);
            match key {
                "since" => match value.parse() {
                    Ok(since) => q.since = Some(since),
                    Err(_) => {
                        return error(
                            StatusCode::BAD_REQUEST,
                            format!("since: not a timestamp: {value:?}"),
                        )
                    }
                },
                "agent" => q.agent = Some(value),
                "kind" => q.kind = Some(value),
                "limit" => match value.parse() {
                    Ok(limit) => q.limit = Some(limit),
                    Err(_) => {
                        return error(
                            StatusCode::BAD_REQUEST,
                            format!("limit: not a number: {value:?}"),
                        )
                    }
                },
                other => {
                    return error(
                        StatusCode::BAD_REQUEST,
                        format!("unknown parameter {other:?}: use since, agent, kind, limit"),
                    )
                }
            }
        }
        json_response(StatusCode::OK, &json!(self.events.replay(q).await))
    }
}

pub(crate) fn error(status: StatusCode, message: String) -> Response<BoxBody> {
    respond::answer(&ErrorBody::new(status, message), ApiFamily::Ollama)
}

pub(crate) fn json_response(status: StatusCode, value: &serde_json::Value) -> Response<BoxBody> {
    let mut response = Response::new(full(serde_json::to_vec(value).unwrap_or_default()));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json; charset=utf-8"),
    );
    response
}

/// `%XX` escapes and `+` decoded, for query values.
fn percent_decode(value: &str) -> String {
    let bytes = value.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => {
                match u8::from_str_radix(
                    std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap_or("zz"),
                    16,
                ) {
                    Ok(b) => {
                        out.push(b);
                        i += 2;
                    }
                    Err(_) => out.push(b'%'),
                }
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Compares without returning early, so the time taken tells nothing of
/// how much of a guess was right (the length still shows; it is public
/// knowledge for any token format anyway).
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}
