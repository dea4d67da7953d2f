//! The admin paths that change what the stack does: the degradation
//! level and the upstream's capacity. With shared state each change
//! reaches every replica.

use http::{Method, Request, Response, StatusCode};
use http_body_util::BodyExt;
use serde::de::DeserializeOwned;
use serde_json::json;

use corral_core::{channels, BoxBody, Level};

use super::{error, json_response, Admin};

/// The JSON body of an admin `POST`, or the 400 that says what to send.
pub(super) async fn read_json<T, B>(
    request: Request<B>,
    expected: &str,
) -> Result<T, Response<BoxBody>>
where
    T: DeserializeOwned,
    B: http_body::Body<Data = bytes::Bytes>,
    B::Error: Into<corral_core::BoxError>,
{
    let body = match http_body_util::Limited::new(request.into_body(), 64 * 1024)
        .collect()
        .await
    {
        Ok(body) => body.to_bytes(),
        Err(e) => {
            return Err(error(
                StatusCode::BAD_REQUEST,
                format!("cannot read the body: {e}"),
            ))
        }
    };
    serde_json::from_slice(&body)
        .map_err(|e| error(StatusCode::BAD_REQUEST, format!("expected {expected}: {e}")))
}

impl Admin {
    /// `GET` the degradation level; `POST {"level": "L2"}` forces one,
    /// `POST {"level": null}` or `DELETE` releases it.
    pub(super) async fn degrade<B>(&self, request: Request<B>) -> Response<BoxBody>
    where
        B: http_body::Body<Data = bytes::Bytes>,
        B::Error: Into<corral_core::BoxError>,
    {
        let Some(controller) = self.controls.degrade.get() else {
            return error(
                StatusCode::NOT_FOUND,
                "the stack has no degrade layer".into(),
            );
        };
        let method = request.method().clone();
        if method == Method::POST {
            #[derive(serde::Deserialize)]
            #[serde(deny_unknown_fields)]
            struct Force {
                level: Option<String>,
            }
            let force: Force =
                match read_json(request, "{\"level\": \"Normal|L1|L2|Critical\" or null}").await {
                    Ok(force) => force,
                    Err(response) => return response,
                };
            let level = match force.level.as_deref().map(str::parse::<Level>).transpose() {
                Ok(level) => level,
                Err(e) => return error(StatusCode::BAD_REQUEST, e),
            };
            controller.force(level);
        } else if method == Method::DELETE {
            controller.force(None);
        } else if method != Method::GET {
            return error(
                StatusCode::METHOD_NOT_ALLOWED,
                "use GET, POST or DELETE".into(),
            );
        }
        let status = controller.status();
        json_response(
            StatusCode::OK,
            &json!({
                "level": status.level.as_str(),
                "load": status.load,
                "forced": status.forced.map(|l| l.as_str()),
            }),
        )
    }

    /// `GET` each pool's capacity and load; `POST {"capacity": 8}` sets
    /// the default pool's, `POST {"capacity": 1, "model": "llama3:70b"}`
    /// a model pool's. Announced on `ollama:capacity:update`; with shared
    /// state the capacity lives in Redis, so every replica uses it.
    pub(super) async fn capacity<B>(&self, request: Request<B>) -> Response<BoxBody>
    where
        B: http_body::Body<Data = bytes::Bytes>,
        B::Error: Into<corral_core::BoxError>,
    {
        let Some(scheduler) = self.controls.scheduler.get() else {
            return error(
                StatusCode::NOT_FOUND,
                "the stack has no priority layer".into(),
            );
        };
        let method = request.method().clone();
        if method == Method::POST {
            #[derive(serde::Deserialize)]
            #[serde(deny_unknown_fields)]
            struct SetCapacity {
                capacity: usize,
                model: Option<String>,
                upstream: Option<String>,
            }
            let set: SetCapacity = match read_json(
                request,
                "{\"capacity\": 1 or more, \"model\": optional model with a pool of its own}",
            )
            .await
            {
                Ok(set) => set,
                Err(response) => return response,
            };
            if set.capacity == 0 {
                return error(
                    StatusCode::BAD_REQUEST,
                    "capacity must be 1 or more: to stop traffic, force the Critical level".into(),
                );
            }
            if let Some(fleet) = scheduler.fleet() {
                return self.fleet_capacity(
                    fleet,
                    set.upstream.as_deref(),
                    set.model.as_deref(),
                    set.capacity,
                );
            }
            if set.upstream.is_some() {
                return error(
                    StatusCode::BAD_REQUEST,
                    "\"upstream\" names one of [[upstreams]]; this proxy has one [upstream]".into(),
                );
            }
            let pool = match &set.model {
                None => {
                    scheduler.set_capacity(set.capacity);
                    "*".to_string()
                }
                Some(model) if scheduler.set_model_capacity(model, set.capacity) => model.clone(),
                Some(model) => {
                    return error(
                        StatusCode::NOT_FOUND,
                        format!(
                            "model {model:?} has no pool of its own ([upstream] model_capacity)"
                        ),
                    )
                }
            };
            tracing::warn!(
                pool,
                capacity = set.capacity,
                "upstream capacity set by the operator"
            );
            self.bus.publish_state(
                channels::CAPACITY_UPDATE,
                &pool,
                json!({"pool": pool, "capacity": set.capacity}),
            );
        } else if method != Method::GET {
            return error(StatusCode::METHOD_NOT_ALLOWED, "use GET or POST".into());
        }
        json_response(StatusCode::OK, &json!({ "pools": pools_of(scheduler) }))
    }

    /// With `[[upstreams]]`: sets one upstream's capacity (for `model`, or
    /// every model without one of its own there).
    fn fleet_capacity(
        &self,
        fleet: &corral_fleet::Fleet,
        upstream: Option<&str>,
        model: Option<&str>,
        capacity: usize,
    ) -> Response<BoxBody> {
        let Some(index) = upstream.and_then(|u| fleet.index_of(u)) else {
            return error(
                StatusCode::BAD_REQUEST,
                format!(
                    "with [[upstreams]], name the upstream: {{\"upstream\": one of {:?}, \"capacity\": N, \"model\": optional}}",
                    fleet.specs().iter().map(|s| s.name.to_string()).collect::<Vec<_>>()
                ),
            );
        };
        if self.upstream.measures(index) {
            return error(
                StatusCode::CONFLICT,
                format!(
                    "{} finds its capacity by measuring (capacity = \"auto\"): a value set here would be overwritten",
                    fleet.specs()[index].name
                ),
            );
        }
        let model = model.map(corral_core::canonical_model);
        fleet.set_capacity(index, model.as_deref(), capacity);
        tracing::warn!(
            upstream = %fleet.specs()[index].name,
            model = model.as_deref().unwrap_or("every model"),
            capacity,
            "upstream capacity set by the operator"
        );
        json_response(
            StatusCode::OK,
            &json!({"upstreams": super::view::upstreams(&self.upstream)}),
        )
    }

    /// `GET` the agents' priorities set at run time; `POST {"agent":
    /// "planner", "priority": 1}` sets one (its requests get it whatever
    /// they ask), `"priority": null` clears it. Announced on
    /// `agent:priority:change`: with shared state every replica applies
    /// it.
    pub(super) async fn priority<B>(&self, request: Request<B>) -> Response<BoxBody>
    where
        B: http_body::Body<Data = bytes::Bytes>,
        B::Error: Into<corral_core::BoxError>,
    {
        // Without a scheduler a priority orders nothing: say so rather
        // than accept a setting that does nothing.
        let (Some(overrides), Some(_)) = (
            self.controls.priorities.get(),
            self.controls.scheduler.get(),
        ) else {
            return error(
                StatusCode::NOT_FOUND,
                "the stack has no priority layer: an agent's priority would order nothing".into(),
            );
        };
        let method = request.method().clone();
        if method == Method::POST {
            #[derive(serde::Deserialize)]
            #[serde(deny_unknown_fields)]
            struct SetPriority {
                agent: String,
                priority: Option<u8>,
            }
            let set: SetPriority = match read_json(
                request,
                "{\"agent\": \"name\", \"priority\": 1 to 10 or null}",
            )
            .await
            {
                Ok(set) => set,
                Err(response) => return response,
            };
            if set.agent.is_empty() {
                return error(StatusCode::BAD_REQUEST, "agent must not be empty".into());
            }
            let priority = match set.priority.map(corral_core::Priority::new).transpose() {
                Ok(priority) => priority,
                Err(e) => return error(StatusCode::BAD_REQUEST, format!("priority: {e}")),
            };
            overrides.set(&set.agent, priority);
            tracing::warn!(agent = set.agent, priority = ?set.priority, "agent priority set by the operator");
            self.bus.publish_state(
                channels::PRIORITY_CHANGE,
                &set.agent,
                json!({"agent": set.agent, "priority": set.priority}),
            );
        } else if method != Method::GET {
            return error(StatusCode::METHOD_NOT_ALLOWED, "use GET or POST".into());
        }
        let agents: serde_json::Map<String, serde_json::Value> = overrides
            .list()
            .into_iter()
            .map(|(agent, priority)| (agent, json!(priority.get())))
            .collect();
        json_response(StatusCode::OK, &json!({ "agents": agents }))
    }
}

/// Each pool of the scheduler: its capacity, what runs and what waits.
fn pools_of(scheduler: &corral_priority::Scheduler) -> Vec<serde_json::Value> {
    scheduler
        .pools()
        .into_iter()
        .map(|(name, load)| {
            json!({
                "pool": name,
                "capacity": load.capacity,
                "in_flight": load.in_flight,
                "queued": load.queued_total(),
            })
        })
        .collect()
}

impl Admin {
    /// `POST`: reads the configuration again and takes it over, then asks
    /// every other replica to (through the bus). 200 with what changed;
    /// 400 with `check-config`'s message for a bad configuration, 409
    /// naming the settings that need a restart: the old one serves on.
    pub(super) async fn reload(&self, method: &Method) -> Response<BoxBody> {
        if method != Method::POST {
            return error(StatusCode::METHOD_NOT_ALLOWED, "use POST".into());
        }
        let Some(reloader) = self.reloader.get() else {
            return error(
                StatusCode::NOT_FOUND,
                "this proxy was not started with a configuration to reload".into(),
            );
        };
        match reloader.reload().await {
            Ok(changes) => {
                // Kept as a setting, a replica away from Redis now
                // reloads when it is back. Under this replica's own field:
                // Redis keeps a field's newest value only, and a shared
                // field could hold another replica's reload stamped by a
                // clock ahead of this one, and swallow this one.
                self.bus.publish_state(
                    channels::CONFIG_RELOAD,
                    &self.replica,
                    json!({"by": "operator"}),
                );
                json_response(
                    StatusCode::OK,
                    &json!({"reloaded": true, "changes": changes}),
                )
            }
            Err(e @ crate::reload::ReloadError::NeedsRestart(_)) => {
                error(StatusCode::CONFLICT, e.to_string())
            }
            Err(e) => error(StatusCode::BAD_REQUEST, e.to_string()),
        }
    }
}
