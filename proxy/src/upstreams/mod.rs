//! Several upstreams (`[[upstreams]]`): the fleet built from them, the
//! way a request is sent and moved when its server fails, and the watch
//! on each server's health and loaded models.

use std::sync::Arc;

use corral_core::headers::X_CORRAL_UPSTREAM;
use corral_core::{
    canonical_model, Body, BoxBody, BoxError, ConfigError, RequestMeta, UpstreamFailed,
};
use corral_fleet::{Fleet, Route, UpstreamSpec};
use http::{HeaderValue, Request, Response};

use crate::config::{Capacity, UpstreamConfig, UpstreamEntry};
use crate::upstream::{aim, passed_through, root_cause, Target, Upstream};
use crate::upstream_url::UpstreamUrl;

mod auto;
mod loading;
mod measure;
mod merge;
mod watch;

pub(crate) use auto::Measured;
pub(crate) use watch::watch;

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
        if let Some(load) = config.model_load_time {
            fleet.set_load_cost(load);
        }
        let learns_load = config.model_load_time.is_none();
        let mut upstream = Self::to(config, targets, Some(fleet))?;
        upstream.learns_load = learns_load;
        let auto: Vec<_> = entries.iter().map(auto_of).collect();
        if auto.iter().any(Option::is_some) {
            upstream.measured = Some(Arc::new(auto::Measured::new(auto)));
        }
        Ok(upstream)
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
        let named = match aimed_at(&fleet, &request, route.is_some()) {
            Ok(named) => named,
            Err(unknown) => return Ok(no_such_upstream(&unknown)),
        };
        if route.is_none()
            && named.is_none()
            && request.method() == http::Method::GET
            && merge::merged_list(request.uri().path()).is_some()
        {
            return merge::gather(&self, request.uri().path()).await;
        }
        let meta = request.extensions().get::<RequestMeta>();
        let model = meta.and_then(|m| m.model.as_deref().map(canonical_model));
        let streamed = meta.is_some_and(|m| m.stream);
        let (parts, body) = request.into_parts();
        // A buffered body can be sent again; a streamed one only once.
        let replay = body.try_clone();
        let mut body = Some(body);
        let mut tried = Vec::new();
        loop {
            let index = match (&route, named) {
                (Some(route), _) => route
                    .upstream()
                    .ok_or("the request's upstream permit was given back")?,
                (None, Some(index)) => index,
                (None, None) => fleet.pick(model.as_deref(), &tried),
            };
            let target = &self.targets[index];
            let body = match (body.take(), &replay) {
                (Some(body), _) => body,
                (None, Some(replay)) => replay.try_clone().unwrap_or_default(),
                (None, None) => return Err("the request body cannot be sent again".into()),
            };
            let mut attempt = Request::from_parts(parts.clone(), body);
            aim(&mut attempt, &target.url)?;
            let error = match self
                .attempt(&fleet, route.as_ref(), index, attempt, streamed)
                .await?
            {
                Ok(response) => return Ok(response),
                Err(error) => error,
            };
            tried.push(index);
            let connect = error.is_connect();
            let failed = UpstreamFailed::new(target.url.to_string(), connect, root_cause(&error));
            if replay.is_none() || named.is_some() || tried.len() >= self.targets.len() {
                if route.is_none() {
                    fleet.failed(index, connect);
                }
                return Err(Box::new(failed));
            }
            // Nothing was answered: the server failed, not the request.
            let moved = match &route {
                Some(route) => route.failover(connect).await,
                None => {
                    fleet.failed(index, connect);
                    (0..self.targets.len()).any(|u| !tried.contains(&u) && fleet.is_healthy(u))
                }
            };
            if !moved {
                return Err(Box::new(failed));
            }
            tracing::warn!(upstream = %target.name, error = %failed, "upstream failed before answering: sending the request to another");
        }
    }

    /// With `capacity = "auto"` where the request runs: what measures it.
    fn measuring(
        &self,
        fleet: &Arc<Fleet>,
        route: Option<&Arc<Route>>,
        streamed: bool,
        dispatched: tokio::time::Instant,
    ) -> Option<measure::Measure> {
        let measured = self.measured.as_ref()?;
        let (upstream, model, concurrency, loaded) = route?.placement()?;
        measured.measures(upstream).then(|| {
            measure::Measure::new(
                fleet.clone(),
                measured.clone(),
                upstream,
                model,
                concurrency,
                dispatched,
                loaded,
                streamed,
            )
        })
    }

    /// One try of `request` on upstream `index`: its answer, named and
    /// measured, or the client's error (nothing answered).
    async fn attempt(
        &self,
        fleet: &Arc<Fleet>,
        route: Option<&Arc<Route>>,
        index: usize,
        request: Request<Body>,
        streamed: bool,
    ) -> Result<Result<Response<BoxBody>, hyper_util::client::legacy::Error>, BoxError> {
        let dispatched = tokio::time::Instant::now();
        let sent = match loading_model(route, streamed) {
            Some((upstream, model)) => {
                loading::send_loading(self.client.clone(), request, fleet.clone(), upstream, model)
                    .await?
            }
            None => self.client.request(request).await,
        };
        let response = match sent {
            Ok(response) => response,
            Err(error) => return Ok(Err(error)),
        };
        fleet.answered(index);
        // An error answer comes at once: it says nothing of how long a
        // generation waits.
        let generating = response.status().is_success();
        if self.learns_load && streamed && generating {
            // A stream's headers come with its first token.
            if let Some((_, _, _, loads)) = route.and_then(|r| r.placement()) {
                fleet.first_token(dispatched.elapsed(), loads);
            }
        }
        let mut response = passed_through(response);
        let measure = generating
            .then(|| self.measuring(fleet, route, streamed, dispatched))
            .flatten();
        if let Some(measure) = measure {
            response = corral_core::WatchBody::response(response, measure)
                .map(http_body_util::BodyExt::boxed_unsync);
        }
        if let Ok(name) = HeaderValue::from_str(&self.targets[index].name) {
            response.headers_mut().insert(X_CORRAL_UPSTREAM, name);
        }
        Ok(Ok(response))
    }
}

/// The model a streamed request loads on its server, if it does: its
/// load is kept going should its client leave (see [`loading`]).
fn loading_model(route: Option<&Arc<Route>>, streamed: bool) -> Option<(usize, Arc<str>)> {
    let (upstream, model, _, loads) = route?.placement()?;
    (loads && streamed).then_some((upstream, model))
}

/// Ollama's answer to a name it does not know, for an upstream.
fn no_such_upstream(name: &str) -> Response<BoxBody> {
    let body = serde_json::json!({"error": format!("no upstream is named {name:?}")});
    let mut response = Response::new(corral_core::full(body.to_string()));
    *response.status_mut() = http::StatusCode::NOT_FOUND;
    response.headers_mut().insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/json; charset=utf-8"),
    );
    response
}

/// The upstream a request nobody scheduled names in `X-Corral-Upstream`
/// (an operator aiming a read or a pull at one server); `Err` with the
/// name when no upstream has it.
fn aimed_at(
    fleet: &Fleet,
    request: &Request<Body>,
    scheduled: bool,
) -> Result<Option<usize>, String> {
    match request.headers().get(&X_CORRAL_UPSTREAM) {
        Some(name) if !scheduled => {
            let name = name.to_str().unwrap_or_default();
            fleet
                .index_of(name)
                .map(Some)
                .ok_or_else(|| name.to_string())
        }
        _ => Ok(None),
    }
}

/// With `capacity = "auto"`: how it is measured.
fn auto_of(entry: &UpstreamEntry) -> Option<corral_adaptive::AdaptiveConfig> {
    match entry.capacity {
        Capacity::Fixed(_) => None,
        Capacity::Auto => Some(entry.auto.clone().unwrap_or_default()),
    }
}

/// What the fleet knows of an entry.
fn spec_of(name: &str, entry: &UpstreamEntry) -> UpstreamSpec {
    let capacity = match (&entry.capacity, auto_of(entry)) {
        (Capacity::Fixed(n), _) => *n,
        (Capacity::Auto, Some(auto)) => auto.initial,
        (Capacity::Auto, None) => crate::config::DEFAULT_CAPACITY_PER_MODEL,
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
