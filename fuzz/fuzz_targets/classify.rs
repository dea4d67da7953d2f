//! `classify`: any request through the public `ClassifyLayer`.
//!
//! Input (see `src/lib.rs` for the common format):
//!
//! ```text
//! EM                       E picks the endpoint from ENDPOINTS by
//!                          (E - 'a') mod its length: 'a' generate,
//!                          'b' chat, 'm' OpenAI chat...; M is a mode
//!                          digit: bit 0 streams the body (else it is
//!                          buffered), bit 1 uses the require_key config,
//!                          bit 2 declares Content-Length on a streamed
//!                          body; M's bits 3..5 pick the chunk size
//! name: value              Authorization, X-Agent-Id, X-Priority,
//!                          X-Deadline-Ms, X-Request-Id, any other
//!
//! body
//! ```
//!
//! Property: never a panic; the answer is the inner service's, with a
//! `RequestMeta` that agrees with the request and the body untouched, or
//! one of the layer's four refusals, each a 4xx.

#![no_main]

use std::convert::Infallible;
use std::sync::OnceLock;

use bytes::Bytes;
use corral_classify::{
    AgentConfig, BodyReadFailed, BodyTooLarge, ClassConfig, ClassifyConfig, ClassifyLayer,
    InvalidRequest, Unauthenticated,
};
use corral_core::{Body, BoxError, Endpoint, EndpointKind, Refusal, RequestMeta};
use corral_fuzz::{block_on, headers, line, streamed};
use http::{HeaderValue, Method, Request};
use http_body_util::BodyExt;
use libfuzzer_sys::fuzz_target;
use tower::{service_fn, Layer, ServiceExt};

/// Small, so that libFuzzer's inputs (4 KiB by default) cross it.
const LIMIT: usize = 1024;

/// Method and path of each selectable endpoint, Corral's and a few that
/// are not.
const ENDPOINTS: [(&str, &str); 26] = [
    ("POST", "/api/generate"),            // a
    ("POST", "/api/chat"),                // b
    ("POST", "/api/embed"),               // c
    ("POST", "/api/embeddings"),          // d
    ("POST", "/api/show"),                // e
    ("POST", "/api/pull"),                // f
    ("POST", "/api/push"),                // g
    ("POST", "/api/create"),              // h
    ("POST", "/api/copy"),                // i
    ("DELETE", "/api/delete"),            // j
    ("POST", "/api/blobs/sha256:abc"),    // k
    ("HEAD", "/api/blobs/sha256:abc"),    // l
    ("POST", "/v1/chat/completions"),     // m
    ("POST", "/v1/completions"),          // n
    ("POST", "/v1/embeddings"),           // o
    ("GET", "/v1/models"),                // p
    ("GET", "/v1/models/llama3"),         // q
    ("GET", "/"),                         // r
    ("HEAD", "/"),                        // s
    ("GET", "/api/tags"),                 // t
    ("GET", "/api/ps"),                   // u
    ("GET", "/api/version"),              // v
    ("GET", "/api/generate"),             // w: Other, the wrong method
    ("POST", "/api/unknown"),             // x: Other
    ("PUT", "/api/chat"),                 // y: Other
    ("POST", "/v1/chat/completions?x=1"), // z: a query
];

/// Two fleets: keys optional, and keys required.
fn layers() -> &'static [ClassifyLayer; 2] {
    static LAYERS: OnceLock<[ClassifyLayer; 2]> = OnceLock::new();
    LAYERS.get_or_init(|| {
        let fleet = |require_key| {
            let mut opus = ClassConfig::new("opus");
            opus.priority = 3;
            opus.priorities = [2, 5];
            let mut batch = ClassConfig::new("batch");
            batch.priority = 9;
            batch.priorities = [7, 10];
            let mut planner = AgentConfig::new("planner", Some("opus".into()));
            planner.key = Some("sk-planner-secret".into());
            let nightly = AgentConfig::new("nightly", Some("batch".into()));
            let mut gone = AgentConfig::new("gone", Some("batch".into()));
            gone.key = Some("sk-gone-revoked".into());
            gone.revoked = true;
            let config = ClassifyConfig {
                max_request_bytes: LIMIT,
                require_key,
                classes: vec![opus, batch],
                agents: vec![planner, nightly, gone],
                ..ClassifyConfig::default()
            };
            ClassifyLayer::new(&config).expect("the fuzz fleet is a valid config")
        };
        [fleet(false), fleet(true)]
    })
}

/// What the inner service saw.
struct Seen {
    meta: Option<RequestMeta>,
    buffered: bool,
    body: Bytes,
    request_id: Option<HeaderValue>,
}

fuzz_target!(|data: &[u8]| {
    let mut input = data;
    let control = line(&mut input).unwrap_or_default();
    let selector = control.first().copied().unwrap_or(b'a');
    let mode = control.get(1).copied().unwrap_or(b'0');
    let (method, path) = ENDPOINTS[usize::from(selector.wrapping_sub(b'a')) % ENDPOINTS.len()];
    let stream = mode & 1 != 0;
    let require_key = mode & 2 != 0;
    let declare_length = mode & 4 != 0;
    let chunk = 1 << ((mode >> 3) & 7);
    let headers = headers(&mut input);
    let body = input;

    let mut request = Request::builder()
        .method(Method::from_bytes(method.as_bytes()).expect("a valid method"))
        .uri(path)
        .body(if stream {
            streamed(body, chunk)
        } else {
            Body::from(body.to_vec())
        })
        .expect("a valid request");
    *request.headers_mut() = headers;
    if stream && declare_length {
        request
            .headers_mut()
            .insert(http::header::CONTENT_LENGTH, HeaderValue::from(body.len()));
    }
    let declared = request
        .headers()
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    let endpoint = Endpoint::from_request(request.method(), request.uri().path());

    let layer = &layers()[usize::from(require_key)];
    let service = layer.layer(service_fn(|request: Request<Body>| async move {
        let meta = request.extensions().get::<RequestMeta>().cloned();
        let request_id = request.headers().get("x-request-id").cloned();
        let buffered = request.body().buffered().is_some();
        let body = match request.into_body().collect().await {
            Ok(collected) => collected.to_bytes(),
            Err(e) => panic!("the body classify passed on cannot be read: {e}"),
        };
        Ok::<_, Infallible>(Seen {
            meta,
            buffered,
            body,
            request_id,
        })
    }));
    let answer = block_on(service.oneshot(request));

    match answer {
        Ok(seen) => {
            let meta = seen
                .meta
                .expect("classify let a request through without its RequestMeta");
            assert_eq!(meta.endpoint, endpoint);
            assert_eq!(
                seen.body.as_ref(),
                body,
                "classify changed the body it passed on"
            );
            let (_, _, [highest, lowest]) = layer
                .classes()
                .find(|(name, _, _)| *name == meta.class.as_str())
                .unwrap_or_else(|| panic!("class {:?} is not configured", meta.class.as_str()));
            let priority = meta.priority.get();
            assert!(
                (highest..=lowest).contains(&priority),
                "priority {priority} outside its class's [{highest}, {lowest}]"
            );
            let id = seen.request_id.expect("every request leaves with an id");
            assert_eq!(id.to_str().ok(), Some(meta.request_id.as_str()));
            assert!(!meta.request_id.as_str().is_empty());
            if require_key {
                assert!(meta.authenticated, "require_key let an unknown key in");
            }
            if endpoint.has_json_body() {
                assert!(seen.buffered, "a JSON body must arrive buffered");
                assert!(body.len() <= LIMIT, "a body over the limit was read");
                assert_eq!(meta.body_bytes, body.len());
                if endpoint.kind() == EndpointKind::Inference {
                    assert!(
                        meta.model.as_deref().is_some_and(|m| !m.is_empty()),
                        "an inference request passed without a model"
                    );
                }
            } else {
                assert_eq!(seen.buffered, !stream, "a pass-through body was read");
            }
        }
        Err(error) => check_refusal(&error, endpoint, body.len(), declared),
    }
});

fn check_refusal(error: &BoxError, endpoint: Endpoint, len: usize, declared: Option<u64>) {
    let status = if let Some(too_large) = error.downcast_ref::<BodyTooLarge>() {
        assert!(
            endpoint.has_json_body(),
            "{endpoint:?} is not read: {error}"
        );
        assert!(
            len > LIMIT || declared.is_some_and(|d| d > LIMIT as u64),
            "{len} bytes refused as too large"
        );
        too_large.status()
    } else if let Some(invalid) = error.downcast_ref::<InvalidRequest>() {
        invalid.status()
    } else if let Some(unauthenticated) = error.downcast_ref::<Unauthenticated>() {
        unauthenticated.status()
    } else if error.is::<BodyReadFailed>() {
        panic!("a body that cannot fail failed to read: {error}")
    } else {
        panic!("not one of classify's refusals: {error:?}")
    };
    assert!(status.is_client_error(), "{status} for {error}");
}
