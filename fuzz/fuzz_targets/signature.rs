//! `signature`: corral-auth's signature check, through the public
//! `AuthLayer` with a fixed clock.
//!
//! Input (see `src/lib.rs` for the common format):
//!
//! ```text
//! CMPF                     C picks the class ('a' opus: default
//!                          permissions, 'b' ops: everything, 'c' batch:
//!                          nomic* models only, else a class no config
//!                          names); M is a mode digit: bit 0 streams the
//!                          body, bit 1 requires every agent to sign;
//!                          P and F pick the byte of the body flipped and
//!                          the bits flipped in the differential check
//! METHOD                   as sent; unparsable means POST
//! /path?query              as sent; unparsable means /api/generate
//! name: value              X-Agent-Id (the agent classify would have
//!                          found; "planner" has the secret), X-Timestamp,
//!                          X-Request-Id, X-Signature, X-Model (the model
//!                          classify would have read from the body), any
//!                          other
//!
//! body
//! ```
//!
//! Properties:
//!
//! 1. The request as given: never a panic; refused only with `Forbidden`
//!    or `SignatureRefused` (or, streamed, for a body over the limit);
//!    accepted only with the body untouched and, for an agent with a
//!    secret, a fresh timestamp, a request id and a signature that
//!    `Signed::verify` accepts.
//! 2. Differential: the same method, path, request id, timestamp (when
//!    fresh) and body, signed by `Signed::sign` with the agent's secret,
//!    is accepted; sent again, it is a replay; with any one byte of the
//!    body flipped it is refused as a bad signature.

#![no_main]

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::sync::{Arc, OnceLock};

use bytes::Bytes;
use corral_auth::{
    AuthConfig, AuthLayer, ClassPermissions, Forbidden, MemoryReplay, Secret, SignatureProblem,
    SignatureRefused, Signed,
};
use corral_core::{Body, BoxError, Endpoint, RequestMeta};
use corral_fuzz::{block_on, headers, line, streamed};
use http::{HeaderMap, HeaderValue, Method, Request, Uri};
use http_body_util::BodyExt;
use libfuzzer_sys::fuzz_target;
use tower::{service_fn, Layer, Service, ServiceExt};

const AGENT: &str = "planner";
const SECRET: &str = "planner secret, long enough";
/// The layer's clock: a fixed moment, as in layers/auth/tests.
const NOW: f64 = 1_764_115_200.0;
const FRESHNESS: f64 = 300.0;
/// Small, so that libFuzzer's inputs cross it.
const MAX_SIGNED_BODY: usize = 2048;
const CLASSES: [&str; 4] = ["opus", "ops", "batch", "stranger"];

fn config(require_signatures: bool) -> &'static AuthConfig {
    static CONFIGS: OnceLock<[AuthConfig; 2]> = OnceLock::new();
    let configs = CONFIGS.get_or_init(|| {
        let make = |require_signatures| {
            let mut secrets = BTreeMap::new();
            secrets.insert(
                AGENT.to_string(),
                Secret {
                    value: Some(SECRET.into()),
                    ..Secret::default()
                },
            );
            let mut classes = BTreeMap::new();
            classes.insert(
                "ops".to_string(),
                ClassPermissions {
                    endpoints: Some(vec!["all".into()]),
                    models: None,
                },
            );
            classes.insert(
                "batch".to_string(),
                ClassPermissions {
                    endpoints: None,
                    models: Some(vec!["nomic*".into(), "llama3".into()]),
                },
            );
            AuthConfig {
                require_signatures,
                freshness: std::time::Duration::from_secs_f64(FRESHNESS),
                replay_memory: 64,
                max_signed_body_bytes: MAX_SIGNED_BODY,
                secrets,
                classes,
                ..AuthConfig::default()
            }
        };
        [make(false), make(true)]
    });
    &configs[usize::from(require_signatures)]
}

/// A fresh layer (and replay memory) per input, so an input's outcome
/// does not depend on the ones before it; it answers with the body it got.
fn service(
    require_signatures: bool,
) -> impl Service<Request<Body>, Response = Bytes, Error = BoxError> + Clone {
    fn clock() -> f64 {
        NOW
    }
    let layer = AuthLayer::new(config(require_signatures))
        .map(|l| {
            l.with_store(Arc::new(MemoryReplay::new(64)))
                .with_clock(clock)
        })
        .expect("the fuzz config is valid");
    layer.layer(service_fn(|request: Request<Body>| async move {
        let body = match request.into_body().collect().await {
            Ok(collected) => collected.to_bytes(),
            Err(e) => panic!("the body auth passed on cannot be read: {e}"),
        };
        Ok::<_, Infallible>(body)
    }))
}

fn text(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
}

fn fresh(timestamp: &str) -> bool {
    timestamp
        .trim()
        .parse::<f64>()
        .is_ok_and(|t| t.is_finite() && (NOW - t).abs() <= FRESHNESS)
}

struct Sent<'a> {
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    agent: String,
    class: &'a str,
    model: Option<String>,
    body: &'a [u8],
    stream: bool,
}

impl Sent<'_> {
    fn request(&self) -> Request<Body> {
        let mut request = Request::builder()
            .method(self.method.clone())
            .uri(self.uri.clone())
            .body(if self.stream {
                streamed(self.body, 100)
            } else {
                Body::from(self.body.to_vec())
            })
            .expect("method and uri are valid");
        *request.headers_mut() = self.headers.clone();
        let endpoint = Endpoint::from_request(&self.method, self.uri.path());
        let mut meta = RequestMeta::new("fuzz".into(), endpoint).with_agent(
            self.agent.as_str().into(),
            self.class.into(),
            true,
        );
        meta.model = self.model.as_deref().map(Into::into);
        request.extensions_mut().insert(meta);
        request
    }

    fn signed<'s>(&'s self, timestamp: &'s str, request_id: &'s str, body: &'s [u8]) -> Signed<'s> {
        Signed {
            agent: &self.agent,
            method: self.method.as_str(),
            path_and_query: self.uri.path_and_query().map_or("/", |p| p.as_str()),
            timestamp,
            request_id,
            body,
        }
    }
}

fn problem(error: &BoxError) -> Option<SignatureProblem> {
    error
        .downcast_ref::<SignatureRefused>()
        .map(SignatureRefused::problem)
}

fuzz_target!(|data: &[u8]| {
    let mut input = data;
    let control = line(&mut input).unwrap_or_default();
    let class = CLASSES
        [usize::from(control.first().copied().unwrap_or(b'a').wrapping_sub(b'a')) % CLASSES.len()];
    let mode = control.get(1).copied().unwrap_or(b'0');
    let stream = mode & 1 != 0;
    let require_signatures = mode & 2 != 0;
    let flip_at = control.get(2).copied().unwrap_or(0);
    let flip_bits = control.get(3).copied().filter(|&b| b != 0).unwrap_or(1);

    let method = line(&mut input)
        .and_then(|m| Method::from_bytes(m).ok())
        .unwrap_or(Method::POST);
    // The path as sent: only one that is kept verbatim, since a client
    // signs what it sends.
    let uri = line(&mut input)
        .and_then(|p| {
            let uri = Uri::try_from(p).ok()?;
            let kept = uri.path_and_query()?.as_str().as_bytes() == p && p.starts_with(b"/");
            kept.then_some(uri)
        })
        .unwrap_or_else(|| Uri::from_static("/api/generate"));
    let headers = headers(&mut input);
    let body = input;
    let agent = text(&headers, "x-agent-id")
        .map(|a| a.trim().to_string())
        .filter(|a| !a.is_empty())
        .unwrap_or_else(|| "anonymous".into());
    let model = text(&headers, "x-model");

    // 1. The request as given.
    let sent = Sent {
        method,
        uri,
        headers,
        agent,
        class,
        model,
        body,
        stream,
    };
    let answer = block_on(service(require_signatures).oneshot(sent.request()));
    let signature = text(&sent.headers, "x-signature");
    match answer {
        Ok(passed) => {
            assert_eq!(passed.as_ref(), body, "auth changed the body it passed on");
            if sent.agent == AGENT {
                let timestamp = text(&sent.headers, "x-timestamp").expect("signed: a timestamp");
                assert!(fresh(&timestamp), "a stale timestamp passed: {timestamp:?}");
                let id = text(&sent.headers, "x-request-id").expect("signed: a request id");
                assert!(!id.is_empty());
                let signature = signature.expect("an agent with a secret passed unsigned");
                assert!(
                    sent.signed(&timestamp, &id, body)
                        .verify(SECRET.as_bytes(), &signature),
                    "a signature Signed::verify refuses passed the layer"
                );
            } else {
                assert!(
                    !require_signatures,
                    "an unsigned agent passed require_signatures"
                );
                assert!(signature.is_none(), "an agent without a secret signed");
            }
        }
        Err(error) => {
            let known = error.is::<Forbidden>()
                || error.is::<SignatureRefused>()
                || (stream && body.len() > MAX_SIGNED_BODY);
            assert!(known, "not one of auth's refusals: {error}");
        }
    }

    // 2. Differential: signed properly by the agent with the secret, in a
    // class that may call anything.
    let signer = Sent {
        agent: AGENT.into(),
        class: "ops",
        ..sent
    };
    let timestamp = text(&signer.headers, "x-timestamp")
        .filter(|t| fresh(t))
        .unwrap_or_else(|| format!("{NOW}"));
    let request_id = text(&signer.headers, "x-request-id")
        .filter(|id| !id.is_empty())
        .unwrap_or_else(|| "req-fuzz".into());
    let signature = signer
        .signed(&timestamp, &request_id, body)
        .sign(SECRET.as_bytes());
    assert!(signer
        .signed(&timestamp, &request_id, body)
        .verify(SECRET.as_bytes(), &signature.to_uppercase()));
    let mut headers = signer.headers.clone();
    for (name, value) in [
        ("x-timestamp", &timestamp),
        ("x-request-id", &request_id),
        ("x-signature", &signature),
    ] {
        let value = HeaderValue::from_str(value).expect("came from a header, or is plain");
        headers.insert(name, value);
    }
    let signer = Sent { headers, ..signer };
    let service = service(require_signatures);
    let answer = block_on(service.clone().oneshot(signer.request()));
    if stream && body.len() > MAX_SIGNED_BODY {
        let error = answer.expect_err("a streamed body over the limit was read");
        assert!(problem(&error).is_none(), "{error}");
        return;
    }
    match answer {
        Ok(passed) => assert_eq!(passed.as_ref(), body),
        Err(error) => panic!("a correctly signed request was refused: {error}"),
    }
    let again = block_on(service.clone().oneshot(signer.request()));
    assert_eq!(
        again.err().as_ref().and_then(problem),
        Some(SignatureProblem::Replayed),
        "the same signed request was accepted twice"
    );
    if body.is_empty() {
        return;
    }
    let picked = usize::from(flip_at) * body.len() / 256;
    for at in [picked, 0, body.len() - 1] {
        let mut flipped = body.to_vec();
        flipped[at] ^= flip_bits;
        let tampered = Sent {
            body: &flipped,
            method: signer.method.clone(),
            uri: signer.uri.clone(),
            headers: signer.headers.clone(),
            agent: signer.agent.clone(),
            class: signer.class,
            model: signer.model.clone(),
            stream,
        };
        let answer = block_on(service.clone().oneshot(tampered.request()));
        assert_eq!(
            answer.err().as_ref().and_then(problem),
            Some(SignatureProblem::Invalid),
            "byte {at} of the body flipped, and the signature still held"
        );
    }
});
