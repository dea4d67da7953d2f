//! Panics found while writing the fuzz targets for the signature check
//! (`fuzz/`), kept as tests so they stay fixed.

#![allow(clippy::unwrap_used)] // a test fails by panicking

use std::convert::Infallible;

use bytes::Bytes;
use corral_auth::{AuthConfig, AuthLayer};
use corral_core::{Body, Endpoint, RequestMeta};
use http::Request;
use tower::{service_fn, Layer, ServiceExt};

mod common;

use common::{config, echo, layer, service, signed, NOW};

/// An auth config with planner's secret and a freshness window of `freshness`.
fn fresh_for(freshness: &str) -> AuthConfig {
    config(&format!("freshness = \"{freshness}\""))
}

/// A freshness window near `Duration::MAX` passed `validate`, and every
/// signed request then panicked: request ids are remembered for twice
/// the window, and `freshness * 2` overflowed ("overflow when
/// multiplying duration by scalar"). Whatever the config, a layer that
/// starts must answer.
#[tokio::test]
async fn a_freshness_window_too_wide_to_double_never_panics_a_request() {
    let huge = fresh_for("500000000000y");
    match layer(&huge) {
        Err(err) => assert_eq!(err.key(), "freshness"),
        Ok(layer) => {
            let _answer = echo(layer).oneshot(signed("huge-1", NOW)).await;
        }
    }
}

/// The fix: such a window is refused at start-up.
#[test]
fn a_freshness_window_wider_than_a_day_is_refused_at_start_up() {
    let err = fresh_for("500000000000y").validate().unwrap_err();
    assert_eq!(err.key(), "freshness");
    assert!(err.to_string().contains("at most 24h"), "{err}");
    assert!(fresh_for("25h").validate().is_err());
    assert!(fresh_for("24h").validate().is_ok());
}

#[tokio::test]
async fn the_widest_freshness_window_allowed_still_answers_signed_requests() {
    let service = service(&fresh_for("24h"));
    assert!(service.clone().oneshot(signed("wide-1", NOW)).await.is_ok());
    assert!(
        service.oneshot(signed("wide-1", NOW)).await.is_err(),
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
