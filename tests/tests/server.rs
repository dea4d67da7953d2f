//! The server around the stack: h2c, a separate admin listener, metrics,
//! graceful shutdown.

#![allow(clippy::unwrap_used)] // a test fails by panicking

use std::time::Duration;

use bytes::Bytes;
use corral_e2e::{
    eventually, fast, fast_proxy, get, metrics, mock, open, post, proxy, proxy_with, request, send,
    streaming, text, upstream_until, within,
};
use http_body_util::{BodyExt, Full};

#[tokio::test]
async fn http2_clients_with_prior_knowledge_are_served() {
    let (_upstream, corral) = fast_proxy().await;
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .http2_only(true)
        .build_http::<Full<Bytes>>();
    let response = within(client.request(request(
        "POST",
        &format!("{}/api/generate", corral.url()),
        r#"{"model":"llama3","prompt":"h2"}"#,
    )))
    .await
    .unwrap();
    assert_eq!(response.version(), http::Version::HTTP_2);
    assert_eq!(response.status(), 200);
    assert_eq!(text(response).await.lines().count(), 9);
}

#[tokio::test]
async fn admin_paths_can_have_their_own_listener() {
    let upstream = mock(fast()).await;
    let corral = proxy_with(&upstream.url(), |c| {
        c.admin.listen = Some("127.0.0.1:0".parse().unwrap())
    })
    .await;
    let admin = corral.admin_addr().expect("an admin listener");

    let healthz = get(&format!("http://{admin}/corral/healthz")).await;
    assert_eq!(healthz.status, 200);
    let metrics = get(&format!("http://{admin}/metrics")).await;
    assert_eq!(metrics.status, 200);
    // Not proxied on the admin listener...
    assert_eq!(get(&format!("http://{admin}/api/tags")).await.status, 404);
    // ...and not answered by Corral on the main one: forwarded like any
    // unknown path.
    let main = get(&format!("{}/corral/healthz", corral.url())).await;
    assert_eq!(main.status, 404);
    assert_eq!(main.text(), "404 page not found");
}

#[tokio::test]
async fn metrics_count_requests_by_endpoint_and_status() {
    let (_upstream, corral) = fast_proxy().await;
    // The recorder is global to the test process: count what this test
    // adds, on an endpoint no other test in this file uses.
    let before = count(&corral.url(), "ps", "200").await;
    for _ in 0..3 {
        get(&format!("{}/api/ps", corral.url())).await;
    }
    assert_eq!(count(&corral.url(), "ps", "200").await, before + 3);
    let text = metrics(&corral.url()).await;
    assert!(
        text.lines()
            .any(|l| l.starts_with("corral_request_duration_seconds_bucket{")
                && l.contains("endpoint=\"ps\"")
                && l.contains("outcome=\"completed\"")),
        "{text}"
    );
}

async fn count(url: &str, endpoint: &str, status: &str) -> u64 {
    let (endpoint, status) = (
        format!("endpoint=\"{endpoint}\""),
        format!("status=\"{status}\""),
    );
    metrics(url)
        .await
        .lines()
        .filter(|l| {
            l.starts_with("corral_requests_total{") && l.contains(&endpoint) && l.contains(&status)
        })
        .map(|l| l.rsplit(' ').next().unwrap().parse::<u64>().unwrap())
        .sum()
}

#[tokio::test]
async fn on_shutdown_a_stream_in_flight_finishes_and_new_connections_are_refused() {
    let upstream = mock(streaming(30, 100.0)).await;
    let corral = proxy(&upstream.url()).await;
    let url = corral.url();
    let response = open(request(
        "POST",
        &format!("{url}/api/chat"),
        r#"{"model":"llama3","messages":[{"role":"user","content":"x"}]}"#,
    ))
    .await;

    let stopped = corral.begin_shutdown();
    eventually("the listener closes", || {
        std::net::TcpStream::connect(url.trim_start_matches("http://")).is_err()
    })
    .await;

    let text = text(response).await;
    assert!(
        text.lines().last().unwrap().contains("\"done\":true"),
        "{text}"
    );
    within(stopped).await.unwrap();
}

#[tokio::test]
async fn a_stream_longer_than_the_grace_period_is_cut() {
    let upstream = mock(streaming(10_000, 10.0)).await;
    let corral = proxy_with(&upstream.url(), |c| {
        c.server.shutdown_grace = Duration::from_millis(200)
    })
    .await;
    let response = open(request(
        "POST",
        &format!("{}/api/generate", corral.url()),
        r#"{"model":"llama3","prompt":"forever"}"#,
    ))
    .await;
    let stopped = corral.begin_shutdown();
    let result = within(response.into_body().collect()).await;
    assert!(
        result.is_err(),
        "the client sees a cut stream, not a complete one"
    );
    within(stopped).await.unwrap();
    upstream_until(&upstream, "the upstream generation is cancelled", |s| {
        s.cancelled == 1
    })
    .await;
}

#[tokio::test]
async fn an_admin_token_locks_everything_but_the_probes() {
    let upstream = mock(fast()).await;
    let corral = proxy_with(&upstream.url(), |c| {
        c.admin.token = Some("s3cret-admin".into())
    })
    .await;
    let with = |path: &str, auth: Option<&str>| {
        let mut r = request("GET", &format!("{}{path}", corral.url()), "");
        if let Some(auth) = auth {
            r.headers_mut()
                .insert(http::header::AUTHORIZATION, auth.parse().unwrap());
        }
        r
    };
    for path in [
        "/corral/status",
        "/corral/events",
        "/corral/config",
        "/metrics",
    ] {
        let bare = send(with(path, None)).await;
        assert_eq!(bare.status, 401, "{path}");
        assert_eq!(
            bare.header("www-authenticate"),
            Some("Bearer realm=\"corral-admin\"")
        );
        assert!(bare.error().contains("admin token"));
        for wrong in ["Bearer s3cret-admiN", "Bearer s3cret", "Basic s3cret-admin"] {
            assert_eq!(
                send(with(path, Some(wrong))).await.status,
                401,
                "{path} {wrong}"
            );
        }
        assert_eq!(
            send(with(path, Some("bearer s3cret-admin"))).await.status,
            200,
            "{path}"
        );
    }
    // Forcing a level is refused too, and changes nothing.
    let force = post(
        &format!("{}/corral/degrade", corral.url()),
        r#"{"level":"Critical"}"#,
    )
    .await;
    assert_eq!(force.status, 401);
    // Probes have no token to give.
    for path in ["/corral/healthz", "/corral/readyz"] {
        assert_eq!(send(with(path, None)).await.status, 200, "{path}");
    }
    // The resolved config never shows the token.
    let config = send(with("/corral/config", Some("Bearer s3cret-admin"))).await;
    assert!(!config.text().contains("s3cret"));
    // Inference is not the admin API's business.
    let served = post(
        &format!("{}/api/generate", corral.url()),
        r#"{"model":"llama3","prompt":"hi"}"#,
    )
    .await;
    assert_eq!(served.status, 200);
}

#[tokio::test]
async fn sockets_that_never_sent_a_byte_do_not_hold_up_a_shutdown() {
    let (_upstream, corral) = fast_proxy().await;
    let addr = corral.addr();
    let mut silent = Vec::new();
    for _ in 0..3 {
        silent.push(tokio::net::TcpStream::connect(addr).await.unwrap());
    }
    // One that sent the start of an HTTP/2 preface, then nothing.
    let mut partial = tokio::net::TcpStream::connect(addr).await.unwrap();
    tokio::io::AsyncWriteExt::write_all(&mut partial, b"PRI * HTTP/2")
        .await
        .unwrap();
    silent.push(partial);
    // Without the sniff being cancelled, shutdown would wait for the
    // 30 s header timeout or the 30 s grace, past `within`'s 15 s.
    within(corral.begin_shutdown()).await.unwrap();
}

#[tokio::test]
async fn idle_kept_alive_connections_are_closed_at_once_on_shutdown() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (_upstream, corral) = fast_proxy().await;
    let addr = corral.addr();
    // HTTP/1.1: one request answered, the connection kept alive, idle.
    let mut idle = tokio::net::TcpStream::connect(addr).await.unwrap();
    idle.write_all(b"GET /api/version HTTP/1.1\r\nHost: corral\r\n\r\n")
        .await
        .unwrap();
    let mut answer = Vec::new();
    let mut buf = [0u8; 4096];
    while !String::from_utf8_lossy(&answer).contains("\"version\"") {
        let n = within(idle.read(&mut buf)).await.unwrap();
        assert!(n > 0, "closed before answering");
        answer.extend_from_slice(&buf[..n]);
    }
    // h2c: a client whose pooled connection stays open after its answer.
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .http2_only(true)
        .build_http::<Full<Bytes>>();
    let response =
        within(client.request(request("GET", &format!("{}/api/version", corral.url()), "")))
            .await
            .unwrap();
    assert_eq!(response.status(), 200);
    text(response).await;
    // Both would hold the shutdown for the 30 s header timeout or the
    // 30 s grace, past `within`'s 15 s, if they were not told to close.
    within(corral.begin_shutdown()).await.unwrap();
    drop(idle);
}
