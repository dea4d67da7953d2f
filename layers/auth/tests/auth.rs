//! The auth layer on its own: permissions, signatures, freshness,
//! replays, streamed bodies, and start-up errors.

#![allow(clippy::unwrap_used)] // a test fails by panicking

use std::convert::Infallible;
use std::sync::Arc;

use bytes::Bytes;
use corral_auth::{
    AuthConfig, AuthLayer, Forbidden, MemoryReplay, SignatureProblem, SignatureRefused, Signed,
};
use corral_core::{Body, BoxError, Endpoint, RequestMeta};
use http::{Request, Response};
use http_body_util::BodyExt;
use tower::{service_fn, Layer, Service, ServiceExt};

const SECRET: &str = "planner secret, long enough";
/// The tests' clock: a fixed moment.
const NOW: f64 = 1_764_115_200.0;

fn config(extra: &str) -> AuthConfig {
    toml::from_str(&format!(
        "{extra}\n[secrets]\nplanner = {{ value = \"{SECRET}\" }}\n"
    ))
    .unwrap()
}

/// The layer over a service that echoes the body it got.
fn service(
    config: &AuthConfig,
) -> impl Service<Request<Body>, Response = Response<Bytes>, Error = BoxError> + Clone {
    let layer = AuthLayer::new(config)
        .map(|l| {
            l.with_store(Arc::new(MemoryReplay::new(100)))
                .with_clock(|| NOW)
        })
        .unwrap();
    layer.layer(service_fn(|request: Request<Body>| async move {
        let body = request.into_body().collect().await.unwrap().to_bytes();
        Ok::<_, Infallible>(Response::new(body))
    }))
}

fn request(agent: &str, class: &str, endpoint: Endpoint, path: &str, body: Body) -> Request<Body> {
    let mut request = Request::post(path).body(body).unwrap();
    let mut meta =
        RequestMeta::new("id".into(), endpoint).with_agent(agent.into(), class.into(), true);
    meta.model = Some("llama3".into());
    request.extensions_mut().insert(meta);
    request
}

fn sign(request: &mut Request<Body>, agent: &str, timestamp: f64, id: &str, body: &[u8]) {
    let timestamp = format!("{timestamp}");
    let signature = Signed {
        agent,
        method: request.method().as_str(),
        path_and_query: request.uri().path_and_query().unwrap().as_str(),
        timestamp: &timestamp,
        request_id: id,
        body,
    }
    .sign(SECRET.as_bytes());
    let headers = request.headers_mut();
    headers.insert("x-timestamp", timestamp.parse().unwrap());
    headers.insert("x-request-id", id.parse().unwrap());
    headers.insert("x-signature", signature.parse().unwrap());
}

const BODY: &[u8] = br#"{"model":"llama3","prompt":"hi"}"#;

fn signed(id: &str, timestamp: f64) -> Request<Body> {
    let mut r = request(
        "planner",
        "opus",
        Endpoint::Generate,
        "/api/generate",
        Body::from(Bytes::from_static(BODY)),
    );
    sign(&mut r, "planner", timestamp, id, BODY);
    r
}

fn problem(error: &BoxError) -> SignatureProblem {
    error
        .downcast_ref::<SignatureRefused>()
        .unwrap_or_else(|| panic!("not a signature refusal: {error}"))
        .problem()
}

#[tokio::test]
async fn a_signed_request_passes_once_and_its_replay_is_refused() {
    let svc = service(&config(""));
    let answer = svc.clone().oneshot(signed("r1", NOW)).await.unwrap();
    assert_eq!(
        answer.body().as_ref(),
        BODY,
        "the body reaches the service whole"
    );
    let replay = svc.clone().oneshot(signed("r1", NOW)).await.unwrap_err();
    assert_eq!(problem(&replay), SignatureProblem::Replayed);
    assert!(svc.oneshot(signed("r2", NOW)).await.is_ok());
}

#[tokio::test]
async fn a_tampered_body_path_or_timestamp_is_a_bad_signature() {
    let svc = service(&config(""));
    let mut tampered = signed("t1", NOW);
    *tampered.body_mut() = Body::from(Bytes::from_static(br#"{"model":"llama3","prompt":"HI"}"#));
    assert_eq!(
        problem(&svc.clone().oneshot(tampered).await.unwrap_err()),
        SignatureProblem::Invalid
    );

    let mut moved = signed("t2", NOW);
    moved
        .headers_mut()
        .insert("x-timestamp", format!("{}", NOW - 1.0).parse().unwrap());
    assert_eq!(
        problem(&svc.clone().oneshot(moved).await.unwrap_err()),
        SignatureProblem::Invalid
    );

    let mut garbage = signed("t3", NOW);
    garbage
        .headers_mut()
        .insert("x-signature", "zz".parse().unwrap());
    assert_eq!(
        problem(&svc.clone().oneshot(garbage).await.unwrap_err()),
        SignatureProblem::Invalid
    );

    // A refused request spends no request id: the real one still passes.
    assert!(svc.oneshot(signed("t1", NOW)).await.is_ok());
}

#[tokio::test]
async fn timestamps_outside_the_window_are_stale_either_way() {
    let svc = service(&config("freshness = \"5m\""));
    for skew in [-301.0, 301.0] {
        let err = svc
            .clone()
            .oneshot(signed("s", NOW + skew))
            .await
            .unwrap_err();
        assert_eq!(problem(&err), SignatureProblem::Stale, "{skew}");
        assert!(err.to_string().contains("301 s"), "{err}");
    }
    assert!(svc.clone().oneshot(signed("s1", NOW - 299.0)).await.is_ok());
    assert!(svc.oneshot(signed("s2", NOW + 299.0)).await.is_ok());
}

#[tokio::test]
async fn an_agent_with_a_secret_must_sign_and_one_without_may_not() {
    let svc = service(&config(""));
    let unsigned = request(
        "planner",
        "opus",
        Endpoint::Generate,
        "/api/generate",
        Body::from(Bytes::from_static(BODY)),
    );
    assert_eq!(
        problem(&svc.clone().oneshot(unsigned).await.unwrap_err()),
        SignatureProblem::Missing
    );

    let plain = request(
        "writer",
        "sonnet",
        Endpoint::Generate,
        "/api/generate",
        Body::from(Bytes::from_static(BODY)),
    );
    assert!(
        svc.clone().oneshot(plain).await.is_ok(),
        "no secret, no signature needed"
    );

    let mut claims = request(
        "writer",
        "sonnet",
        Endpoint::Generate,
        "/api/generate",
        Body::from(Bytes::from_static(BODY)),
    );
    sign(&mut claims, "writer", NOW, "w1", BODY);
    assert_eq!(
        problem(&svc.oneshot(claims).await.unwrap_err()),
        SignatureProblem::Invalid
    );

    let strict = service(&config("require_signatures = true"));
    let plain = request(
        "writer",
        "sonnet",
        Endpoint::Generate,
        "/api/generate",
        Body::from(Bytes::from_static(BODY)),
    );
    assert_eq!(
        problem(&strict.oneshot(plain).await.unwrap_err()),
        SignatureProblem::Missing
    );
}

#[tokio::test]
async fn management_is_forbidden_unless_the_class_may_and_models_can_be_held() {
    let svc = service(&config(
        "[classes.ops]\nendpoints = [\"all\"]\n[classes.batch]\nmodels = [\"nomic*\"]\n",
    ));
    let delete = |class: &str| {
        request(
            "writer",
            class,
            Endpoint::Delete,
            "/api/delete",
            Body::empty(),
        )
    };
    let err = svc.clone().oneshot(delete("sonnet")).await.unwrap_err();
    let forbidden = err.downcast_ref::<Forbidden>().expect("403");
    assert!(forbidden
        .to_string()
        .contains("\"sonnet\" may not call POST /api/delete"));
    assert!(svc.clone().oneshot(delete("ops")).await.is_ok());

    let err = svc
        .oneshot(request(
            "b",
            "batch",
            Endpoint::Generate,
            "/api/generate",
            Body::empty(),
        ))
        .await
        .unwrap_err();
    assert!(
        err.to_string().contains("may not use the model \"llama3\""),
        "{err}"
    );
}

#[tokio::test]
async fn a_streamed_body_is_read_to_check_its_signature_and_passed_on_whole() {
    let svc = service(&config("[classes.opus]\nendpoints = [\"all\"]\n"));
    let blob: &'static [u8] = b"\x00\x01 a blob of bytes \xff";
    let streamed = || Body::streamed(http_body_util::Full::new(Bytes::from_static(blob)));
    let mut upload = request(
        "planner",
        "opus",
        Endpoint::Blobs,
        "/api/blobs/sha256:abc",
        streamed(),
    );
    sign(&mut upload, "planner", NOW, "b1", blob);
    let answer = svc.clone().oneshot(upload).await.unwrap();
    assert_eq!(answer.body().as_ref(), blob);

    let mut forged = request(
        "planner",
        "opus",
        Endpoint::Blobs,
        "/api/blobs/sha256:abc",
        streamed(),
    );
    sign(&mut forged, "planner", NOW, "b2", b"other bytes");
    assert_eq!(
        problem(&svc.oneshot(forged).await.unwrap_err()),
        SignatureProblem::Invalid
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn of_two_racing_copies_of_a_signed_request_exactly_one_passes() {
    let svc = service(&config(""));
    for round in 0..50 {
        let id = format!("race-{round}");
        let (a, b) = tokio::join!(
            svc.clone().oneshot(signed(&id, NOW)),
            svc.clone().oneshot(signed(&id, NOW))
        );
        assert_eq!(
            usize::from(a.is_ok()) + usize::from(b.is_ok()),
            1,
            "round {round}"
        );
    }
}

#[test]
fn secrets_that_cannot_be_read_or_are_short_stop_the_start() {
    let missing: AuthConfig =
        toml::from_str("[secrets]\nplanner = { env = \"CORRAL_TEST_NO_SUCH_VARIABLE\" }\n")
            .unwrap();
    let err = AuthLayer::new(&missing).unwrap_err();
    assert_eq!(err.key(), "secrets.planner.env");
    assert!(err.to_string().contains("CORRAL_TEST_NO_SUCH_VARIABLE"));

    let short: AuthConfig = toml::from_str("[secrets]\nplanner = { value = \"short\" }\n").unwrap();
    assert_eq!(AuthLayer::new(&short).unwrap_err().key(), "secrets.planner");

    let two: AuthConfig =
        toml::from_str("[secrets]\nplanner = { value = \"a long enough secret\", env = \"X\" }\n")
            .unwrap();
    assert!(AuthLayer::new(&two)
        .unwrap_err()
        .to_string()
        .contains("exactly one"));

    let file = std::env::temp_dir().join(format!("corral-auth-secret-{}", std::process::id()));
    std::fs::write(&file, "a secret read from a file\n").unwrap();
    let from_file: AuthConfig = toml::from_str(&format!(
        "[secrets]\nplanner = {{ file = {:?} }}\n",
        file.display().to_string()
    ))
    .unwrap();
    assert!(AuthLayer::new(&from_file).is_ok());
    std::fs::remove_file(file).unwrap();
}

#[tokio::test]
async fn without_classify_before_it_the_layer_refuses_rather_than_guess() {
    let svc = service(&config(""));
    let bare = Request::post("/api/generate").body(Body::empty()).unwrap();
    let err = svc.oneshot(bare).await.unwrap_err();
    assert!(err.to_string().contains("classify"));
}
