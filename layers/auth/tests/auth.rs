//! The auth layer on its own: permissions, signatures, freshness,
//! replays, streamed bodies, and start-up errors.

#![allow(clippy::unwrap_used)] // a test fails by panicking

mod common;

use bytes::Bytes;
use corral_auth::{AuthConfig, AuthLayer, Forbidden, SignatureProblem};
use corral_core::{Body, Endpoint};
use http::Request;
use tower::ServiceExt;

use common::{
    config, generate, passes, problem, refused, request, service, sign, signed, BODY, NOW,
};

#[tokio::test]
async fn a_signed_request_passes_once_and_its_replay_is_refused() {
    let svc = service(&config(""));
    let answer = svc.clone().oneshot(signed("r1", NOW)).await.unwrap();
    assert_eq!(
        answer.body().as_ref(),
        BODY,
        "the body reaches the service whole"
    );
    let replay = refused(&svc, signed("r1", NOW)).await;
    assert_eq!(problem(&replay), SignatureProblem::Replayed);
    assert!(passes(&svc, signed("r2", NOW)).await);
}

#[tokio::test]
async fn a_tampered_body_path_or_timestamp_is_a_bad_signature() {
    let svc = service(&config(""));
    let mut tampered = signed("t1", NOW);
    *tampered.body_mut() = Body::from(Bytes::from_static(br#"{"model":"llama3","prompt":"HI"}"#));
    let mut moved = signed("t2", NOW);
    moved
        .headers_mut()
        .insert("x-timestamp", format!("{}", NOW - 1.0).parse().unwrap());
    let mut garbage = signed("t3", NOW);
    garbage
        .headers_mut()
        .insert("x-signature", "zz".parse().unwrap());
    for (case, request) in [
        ("body", tampered),
        ("timestamp", moved),
        ("signature", garbage),
    ] {
        let err = refused(&svc, request).await;
        assert_eq!(problem(&err), SignatureProblem::Invalid, "{case}");
    }

    // A refused request spends no request id: the real one still passes.
    assert!(passes(&svc, signed("t1", NOW)).await);
}

#[tokio::test]
async fn timestamps_outside_the_window_are_stale_either_way() {
    let svc = service(&config("freshness = \"5m\""));
    for skew in [-301.0, 301.0] {
        let err = refused(&svc, signed("s", NOW + skew)).await;
        assert_eq!(problem(&err), SignatureProblem::Stale, "{skew}");
        assert!(err.to_string().contains("301 s"), "{err}");
    }
    assert!(passes(&svc, signed("s1", NOW - 299.0)).await);
    assert!(passes(&svc, signed("s2", NOW + 299.0)).await);
}

#[tokio::test]
async fn an_agent_with_a_secret_must_sign_and_one_without_may_not() {
    let svc = service(&config(""));
    let unsigned = refused(&svc, generate("planner", "opus")).await;
    assert_eq!(problem(&unsigned), SignatureProblem::Missing);

    assert!(
        passes(&svc, generate("writer", "sonnet")).await,
        "no secret, no signature needed"
    );

    let mut claims = generate("writer", "sonnet");
    sign(&mut claims, "writer", NOW, "w1", BODY);
    assert_eq!(
        problem(&refused(&svc, claims).await),
        SignatureProblem::Invalid
    );

    let strict = service(&config("require_signatures = true"));
    let plain = refused(&strict, generate("writer", "sonnet")).await;
    assert_eq!(problem(&plain), SignatureProblem::Missing);
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
    let err = refused(&svc, delete("sonnet")).await;
    let forbidden = err.downcast_ref::<Forbidden>().expect("403");
    assert!(forbidden
        .to_string()
        .contains("\"sonnet\" may not call POST /api/delete"));
    assert!(passes(&svc, delete("ops")).await);

    let held = request(
        "b",
        "batch",
        Endpoint::Generate,
        "/api/generate",
        Body::empty(),
    );
    let err = refused(&svc, held).await;
    assert!(
        err.to_string().contains("may not use the model \"llama3\""),
        "{err}"
    );
}

#[tokio::test]
async fn a_streamed_body_is_read_to_check_its_signature_and_passed_on_whole() {
    let svc = service(&config("[classes.opus]\nendpoints = [\"all\"]\n"));
    let blob: &'static [u8] = b"\x00\x01 a blob of bytes \xff";
    let upload = |id: &str, signed_bytes: &[u8]| {
        let streamed = Body::streamed(http_body_util::Full::new(Bytes::from_static(blob)));
        let mut upload = request(
            "planner",
            "opus",
            Endpoint::Blobs,
            "/api/blobs/sha256:abc",
            streamed,
        );
        sign(&mut upload, "planner", NOW, id, signed_bytes);
        upload
    };
    let answer = svc.clone().oneshot(upload("b1", blob)).await.unwrap();
    assert_eq!(answer.body().as_ref(), blob);

    let forged = refused(&svc, upload("b2", b"other bytes")).await;
    assert_eq!(problem(&forged), SignatureProblem::Invalid);
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
    let err = refused(&svc, bare).await;
    assert!(err.to_string().contains("classify"));
}
