//! `/corral/config`: the configuration in force, as an operator may read
//! it: the flags and environment applied, secrets redacted.

use serde_json::json;

use crate::config::Config;

/// The configuration in force, secrets redacted: the file as written, with
/// the flags and environment applied over it.
pub(super) fn resolved_config(config: &Config) -> serde_json::Value {
    let mut value = config
        .raw
        .as_ref()
        .and_then(|raw| serde_json::to_value(raw).ok())
        .unwrap_or_else(|| json!({}));
    redact(&mut value);
    if let Some(object) = value.as_object_mut() {
        object.insert(
            "source".into(),
            json!(config.source.as_ref().map(|p| p.display().to_string())),
        );
        let server = object.entry("server").or_insert_with(|| json!({}));
        server["listen"] = json!(config.server.listen.to_string());
        let upstream = object.entry("upstream").or_insert_with(|| json!({}));
        upstream["url"] = json!(config.upstream.url);
        let (capacity, per_model) = config.capacity();
        upstream["capacity"] = json!(capacity);
        upstream["capacity_per_model"] = json!(per_model);
        upstream["capacity_is"] = json!(config.capacity_summary());
        // The environment may have set these (CORRAL_REDIS_URL).
        let state = object.entry("state").or_insert_with(|| json!({}));
        state["backend"] = json!(match config.state.backend {
            crate::config::Backend::Memory => "memory",
            crate::config::Backend::Redis => "redis",
        });
        if let Some(url) = &config.state.redis_url {
            state["redis_url"] = json!(without_credentials(url));
        }
    }
    value
}

/// `redis://user:secret@host/0` as `redis://<redacted>@host/0`; a
/// query (`redis+unix:///sock?pass=secret`) as `?<redacted>`.
pub(crate) fn without_credentials(url: &str) -> String {
    let (url, query) = match url.split_once('?') {
        Some((url, _)) => (url, "?<redacted>"),
        None => (url, ""),
    };
    match (url.split_once("://"), url.rfind('@')) {
        (Some((scheme, _)), Some(at)) => {
            format!("{scheme}://<redacted>{}{query}", &url[at..])
        }
        _ => format!("{url}{query}"),
    }
}

/// Replaces every key, token, secret or password by `<redacted>`.
fn redact(value: &mut serde_json::Value) {
    match value {
        serde_json::Value::Object(map) => {
            for (key, v) in map.iter_mut() {
                let k = key.to_ascii_lowercase();
                // `key_sha256` too: a digest of a short key can be
                // searched for.
                // `token`, `admin_token`, not `tokens_per_minute`.
                if k == "key"
                    || k.starts_with("key_")
                    || k.ends_with("_key")
                    || k == "token"
                    || k.ends_with("_token")
                    || k.contains("secret")
                    || k.contains("password")
                {
                    *v = json!("<redacted>");
                } else {
                    redact(v);
                }
            }
        }
        serde_json::Value::Array(items) => items.iter_mut().for_each(redact),
        _ => {}
    }
}

/// Each upstream: its address, whether it takes requests, the model it
/// is drained for, and what is loaded there (running, capacity, and when
/// Ollama unloads it). One upstream without `[[upstreams]]`: its address.
pub(crate) fn upstreams(upstream: &crate::upstream::Upstream) -> serde_json::Value {
    let Some(fleet) = upstream.fleet() else {
        return json!([{"name": upstream.targets()[0].name.as_ref(), "url": upstream.url().to_string()}]);
    };
    let status = fleet.status();
    let list: Vec<serde_json::Value> = status
        .iter()
        .zip(upstream.targets())
        .map(|(u, target)| {
            let models: Vec<serde_json::Value> = u
                .models
                .iter()
                .filter(|m| &*m.model != corral_fleet::ANY_MODEL)
                .map(|m| {
                    json!({
                        "model": m.model.as_ref(),
                        "in_flight": m.in_flight,
                        "capacity": m.capacity,
                        "expires_at": m.expires_at.map(|t| humantime::format_rfc3339_seconds(t).to_string()),
                    })
                })
                .collect();
            json!({
                "name": u.name.as_ref(),
                "url": target.url.to_string(),
                "healthy": u.healthy,
                "draining_for": u.switching_to.as_deref(),
                "models": models,
            })
        })
        .collect();
    json!(list)
}

impl super::Admin {
    /// `GET /corral/requests/{id}`: where a waiting request stands (its
    /// place in the order of service, its wait so far and to come); 404
    /// once it runs, or if no request of that id waits.
    pub(super) fn waiting_request(&self, id: &str) -> http::Response<corral_core::BoxBody> {
        use http::StatusCode;
        let found = self
            .controls
            .scheduler
            .get()
            .and_then(|scheduler| scheduler.waiting(id));
        match found {
            Some(waiter) => super::json_response(
                StatusCode::OK,
                &json!({
                    "request_id": id,
                    "state": "queued",
                    "agent": waiter.agent.as_str(),
                    "priority": waiter.priority.get(),
                    "queue": waiter.pool,
                    "waited_ms": u64::try_from(waiter.waited.as_millis()).unwrap_or(u64::MAX),
                    "position": waiter.estimate.position,
                    "eta_ms": waiter.estimate.eta_ms(),
                }),
            ),
            None => crate::respond::answer(
                &corral_core::ErrorBody::new(
                    StatusCode::NOT_FOUND,
                    format!("no request {id:?} is waiting here (it runs, ended, or waits in another replica)"),
                ),
                corral_core::ApiFamily::Ollama,
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::without_credentials;

    #[test]
    fn a_redis_url_is_shown_without_its_credentials() {
        assert_eq!(
            without_credentials("redis://corral:s3cret@redis.internal:6379/0"),
            "redis://<redacted>@redis.internal:6379/0"
        );
        assert_eq!(
            without_credentials("redis://127.0.0.1:6379"),
            "redis://127.0.0.1:6379"
        );
        assert_eq!(
            without_credentials("redis+unix:///run/redis.sock?db=0&pass=s3cret"),
            "redis+unix:///run/redis.sock?<redacted>"
        );
    }
}
