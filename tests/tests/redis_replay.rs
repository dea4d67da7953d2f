//! The replay memory shared through a real `redis-server` (started here
//! on a free port, or `REDIS_URL`): a request replayed to another replica
//! is refused, through the layer and through two `corral` proxies with
//! `[state] backend = "redis"`; with Redis away each replica still
//! refuses replays to itself and keeps serving, and shares again when
//! Redis is back.

#![allow(clippy::unwrap_used)] // a test fails by panicking

use std::convert::Infallible;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use corral_auth::{AuthConfig, AuthLayer, RedisReplay, SignatureRefused, Signed};
use corral_core::{Body, Endpoint, RequestMeta};
use corral_e2e::Redis;
use http::Request;
use tower::{service_fn, Layer, ServiceExt};

const SECRET: &str = "planner secret, long enough";

/// A prefix no other run shares, for a shared `REDIS_URL`.
fn prefix() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!("corral-test-{}-{nanos}:", std::process::id())
}

fn now() -> String {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        .to_string()
}

fn signed(id: &str, timestamp: &str) -> Request<Body> {
    let body: &'static [u8] = br#"{"model":"llama3","prompt":"hi"}"#;
    let signature = Signed {
        agent: "planner",
        method: "POST",
        path_and_query: "/api/generate",
        timestamp,
        request_id: id,
        body,
    }
    .sign(SECRET.as_bytes());
    let mut request = Request::post("/api/generate")
        .header("x-timestamp", timestamp)
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

/// A replica: the auth layer over a service that answers 200, its
/// request ids in `url`.
fn replica(
    url: &str,
    prefix: &str,
) -> impl tower::Service<
    Request<Body>,
    Response = http::Response<()>,
    Error = corral_core::BoxError,
    Future = impl Send,
> + Clone {
    let config: AuthConfig = toml::from_str(&format!(
        "[secrets]\nplanner = {{ value = \"{SECRET}\" }}\n"
    ))
    .unwrap();
    let store = RedisReplay::new(url, prefix, Duration::from_millis(300), 1000).unwrap();
    AuthLayer::new(&config)
        .map(|l| l.with_store(Arc::new(store)))
        .unwrap()
        .layer(service_fn(|_request: Request<Body>| async {
            Ok::<_, Infallible>(http::Response::new(()))
        }))
}

fn reason(err: &corral_core::BoxError) -> &'static str {
    corral_core::Refusal::reason(err.downcast_ref::<SignatureRefused>().unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_replayed_to_another_replica_is_refused() {
    let redis = Redis::start().await;
    let prefix = prefix();
    let a = replica(&redis.url, &prefix);
    let b = replica(&redis.url, &prefix);
    let timestamp = now();
    assert!(a.clone().oneshot(signed("r-1", &timestamp)).await.is_ok());
    let err = b
        .clone()
        .oneshot(signed("r-1", &timestamp))
        .await
        .unwrap_err();
    assert_eq!(reason(&err), "replayed_request");
    // Another id goes through either replica.
    assert!(b.clone().oneshot(signed("r-2", &timestamp)).await.is_ok());
    let err = a.oneshot(signed("r-2", &timestamp)).await.unwrap_err();
    assert_eq!(reason(&err), "replayed_request");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_redis_away_a_replica_serves_and_still_refuses_replays_to_itself() {
    // Nothing listens here.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let url = format!("redis://127.0.0.1:{port}");
    let a = replica(&url, &prefix());
    let timestamp = now();
    assert!(a.clone().oneshot(signed("r-1", &timestamp)).await.is_ok());
    let err = a.oneshot(signed("r-1", &timestamp)).await.unwrap_err();
    assert_eq!(reason(&err), "replayed_request");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_stopped_and_started_again_is_shared_again() {
    if std::env::var("REDIS_URL").is_ok() {
        // Stopping a server this test did not start is not its to do.
        return;
    }
    let mut redis = Redis::start().await;
    let prefix = prefix();
    let a = replica(&redis.url, &prefix);
    let b = replica(&redis.url, &prefix);
    let timestamp = now();
    assert!(a.clone().oneshot(signed("r-1", &timestamp)).await.is_ok());

    // Away: each replica on its own.
    let url = redis.url.clone();
    if let Some(child) = &mut redis.child {
        child.kill().unwrap();
        child.wait().unwrap();
    }
    assert!(b.clone().oneshot(signed("r-9", &timestamp)).await.is_ok());

    // Back on the same port: shared again (the manager reconnects).
    let port = url.rsplit(':').next().unwrap().to_string();
    let child = Command::new("redis-server")
        .args([
            "--port",
            &port,
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
        ])
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    redis.child = Some(child);
    let mut shared = false;
    for i in 0..100 {
        // Until a request remembered by one is refused by the other.
        let id = format!("after-{i}");
        if a.clone().oneshot(signed(&id, &timestamp)).await.is_ok() {
            if let Err(err) = b.clone().oneshot(signed(&id, &timestamp)).await {
                assert_eq!(reason(&err), "replayed_request");
                shared = true;
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(shared, "the replicas share their memory again");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_proxies_sharing_redis_refuse_a_request_replayed_from_one_to_the_other() {
    let redis = Redis::start().await;
    let upstream = corral_e2e::mock(corral_e2e::fast()).await;
    let text = format!(
        r#"
[server]
listen = "127.0.0.1:0"
[upstream]
url = "{}"
[state]
backend = "redis"
redis_url = "{}"
key_prefix = "{}"
[[layers]]
kind = "auth"
secrets = {{ planner = {{ value = "{SECRET}" }} }}
"#,
        upstream.url(),
        redis.url,
        prefix()
    );
    let config = corral::Config::parse(&text, std::path::Path::new("replicas.toml")).unwrap();
    let a = corral::Running::start(&config).await.unwrap();
    let b = corral::Running::start(&config).await.unwrap();
    let body = r#"{"model":"llama3","prompt":"hi","stream":false}"#;
    let timestamp = now();
    let send_to = |url: String| {
        let signature = Signed {
            agent: "planner",
            method: "POST",
            path_and_query: "/api/generate",
            timestamp: &timestamp,
            request_id: "shared-1",
            body: body.as_bytes(),
        }
        .sign(SECRET.as_bytes());
        let mut r = corral_e2e::request("POST", &format!("{url}/api/generate"), body);
        let headers = r.headers_mut();
        headers.insert("x-agent-id", "planner".parse().unwrap());
        headers.insert("x-timestamp", timestamp.parse().unwrap());
        headers.insert("x-request-id", "shared-1".parse().unwrap());
        headers.insert("x-signature", signature.parse().unwrap());
        corral_e2e::send(r)
    };
    assert_eq!(send_to(a.url()).await.status, 200);
    let replayed = send_to(b.url()).await;
    assert_eq!(replayed.status, 401);
    assert_eq!(replayed.header("x-corral-reason"), Some("replayed_request"));
    assert_eq!(upstream.requests().len(), 1);
}
