//! Panics found while writing the fuzz targets for the signature check
//! (`fuzz/`), kept as tests so they stay fixed.

#![allow(clippy::unwrap_used)] // a test fails by panicking

use std::convert::Infallible;
use std::sync::Arc;

use bytes::Bytes;
use corral_auth::{AuthConfig, AuthLayer, MemoryReplay, Signed};
use corral_core::{Body, Endpoint, RequestMeta};
use http::Request;
use tower::{service_fn, Layer, ServiceExt};

const SECRET: &str = "planner secret, long enough";
const NOW: f64 = 1_764_115_200.0;

fn config(freshness: &str) -> AuthConfig {
    toml::from_str(&format!(
        "freshness = \"{freshness}\"\n[secrets]\nplanner = {{ value = \"{SECRET}\" }}\n"
    ))
    .unwrap()
}

fn signed_generate(id: &str) -> Request<Body> {
    let body: &'static [u8] = br#"{"model":"llama3","prompt":"hi"}"#;
    let timestamp = format!("{NOW}");
    let signature = Signed {
        agent: "planner",
        method: "POST",
        path_and_query: "/api/generate",
        timestamp: &timestamp,
        request_id: id,
        body,
    }
    .sign(SECRET.as_bytes());
    let mut request = Request::post("/api/generate")
        .header("x-timestamp", &timestamp)
        .header("x-request-id", id)
        .header("x-signature", signature)
        .body(Body::from(Bytes::from_static(body)))
        .unwrap();
    request
        .extensions_mut()
        .insert(RequestMeta::new(id.into(), Endpoint::Generate).with_agent(
            "planner".into(),
            "opus".into(),
            true,
        ));
    request
}

/// A freshness window near `Duration::MAX` passed `validate`, and every
/// signed request then panicked: request ids are remembered for twice
/// the window, and `freshness * 2` overflowed ("overflow when
/// multiplying duration by scalar"). Whatever the config, a layer that
/// starts must answer.
#[tokio::test]
async fn a_freshness_window_too_wide_to_double_never_panics_a_request() {
    let huge = config("500000000000y");
    match AuthLayer::new(&huge).map(|l| {
        l.with_store(Arc::new(MemoryReplay::new(10)))
            .with_clock(|| NOW)
    }) {
        Err(err) => assert_eq!(err.key(), "freshness"),
        Ok(layer) => {
            let service = layer.layer(service_fn(|_request: Request<Body>| async {
                Ok::<_, Infallible>(())
            }));
            let _answer = service.oneshot(signed_generate("huge-1")).await;
        }
    }
}

/// The fix: such a window is refused at start-up.
#[test]
fn a_freshness_window_wider_than_a_day_is_refused_at_start_up() {
    let err = config("500000000000y").validate().unwrap_err();
    assert_eq!(err.key(), "freshness");
    assert!(err.to_string().contains("at most 24h"), "{err}");
    assert!(config("25h").validate().is_err());
    assert!(config("24h").validate().is_ok());
}

#[tokio::test]
async fn the_widest_freshness_window_allowed_still_answers_signed_requests() {
    let layer = AuthLayer::new(&config("24h"))
        .map(|l| {
            l.with_store(Arc::new(MemoryReplay::new(10)))
                .with_clock(|| NOW)
        })
        .unwrap();
    let service = layer.layer(service_fn(|_request: Request<Body>| async {
        Ok::<_, Infallible>(())
    }));
    assert!(service
        .clone()
        .oneshot(signed_generate("wide-1"))
        .await
        .is_ok());
    assert!(
        service.oneshot(signed_generate("wide-1")).await.is_err(),
        "a replay within twice the window"
    );
}

/// A class limited to some models could delete any model with a body
/// classify reads leniently and finds no model in (repeated keys, bad
/// UTF-8), and copy or create one under any name.
#[tokio::test]
async fn a_class_limited_to_some_models_cannot_manage_others_by_an_unreadable_body() {
    let config: AuthConfig =
        toml::from_str("[classes.curator]\nendpoints = [\"all\"]\nmodels = [\"nomic*\"]\n")
            .unwrap();
    let layer = AuthLayer::new(&config).unwrap();
    let service = layer.layer(service_fn(|_request: Request<Body>| async {
        Ok::<_, Infallible>(http::Response::new(()))
    }));
    let call = |method: &str, path: &str, endpoint: Endpoint, body: &'static [u8]| {
        let mut request = Request::builder()
            .method(method)
            .uri(path)
            .body(Body::from(Bytes::from_static(body)))
            .unwrap();
        let mut meta = RequestMeta::new("r".into(), endpoint).with_agent(
            "curator-1".into(),
            "curator".into(),
            true,
        );
        // What classify reads of such bodies: at most the first name.
        meta.model = serde_json::from_slice::<serde_json::Value>(body)
            .ok()
            .and_then(|v| v.get("model").or(v.get("source"))?.as_str().map(Into::into));
        request.extensions_mut().insert(meta);
        service.clone().oneshot(request)
    };
    for (method, path, endpoint, body) in [
        (
            "DELETE",
            "/api/delete",
            Endpoint::Delete,
            &br#"{"model":"llama3","model":"llama3"}"#[..],
        ),
        (
            "DELETE",
            "/api/delete",
            Endpoint::Delete,
            b"{\"model\":\"llama3\xff\"}",
        ),
        ("DELETE", "/api/delete", Endpoint::Delete, br#"{}"#),
        (
            "DELETE",
            "/api/delete",
            Endpoint::Delete,
            br#"{"model":"nomic-embed-text","Model":"llama3"}"#,
        ),
        (
            "POST",
            "/api/copy",
            Endpoint::Copy,
            br#"{"source":"nomic-embed-text","destination":"llama3"}"#,
        ),
        (
            "POST",
            "/api/create",
            Endpoint::Create,
            br#"{"model":"nomic-2","from":"llama3"}"#,
        ),
    ] {
        let err = call(method, path, endpoint, body).await.unwrap_err();
        assert!(
            err.downcast_ref::<corral_auth::Forbidden>().is_some(),
            "{}: {err}",
            String::from_utf8_lossy(body)
        );
    }
    for (method, path, endpoint, body) in [
        (
            "DELETE",
            "/api/delete",
            Endpoint::Delete,
            &br#"{"model":"nomic-embed-text"}"#[..],
        ),
        (
            "POST",
            "/api/copy",
            Endpoint::Copy,
            br#"{"source":"nomic-embed-text","destination":"nomic-2"}"#,
        ),
    ] {
        assert!(
            call(method, path, endpoint, body).await.is_ok(),
            "{}",
            String::from_utf8_lossy(body)
        );
    }
}
