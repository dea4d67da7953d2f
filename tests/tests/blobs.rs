//! Blob uploads are streamed through, never bounded by the body limit
//! nor held in memory, and checked by the upstream.

#![allow(clippy::unwrap_used)] // a test fails by panicking

use corral_e2e::{fast, mock, post, proxy_with, request, send};
use http::Request;
use http_body_util::StreamBody;
use hyper::body::Frame;
use sha2::{Digest, Sha256};

#[tokio::test]
async fn a_blob_larger_than_the_body_limit_streams_through_and_is_verified() {
    let upstream = mock(fast()).await;
    let corral = proxy_with(&upstream.url(), |c| c.server.max_request_bytes = 64 * 1024).await;

    // 8 MiB in 64 KiB chunks, without a Content-Length.
    let chunk: Vec<u8> = (0..64 * 1024).map(|i| (i % 251) as u8).collect();
    let mut hasher = Sha256::new();
    for _ in 0..128 {
        hasher.update(&chunk);
    }
    let digest = format!("sha256:{}", hex(&hasher.finalize()));
    let url = format!("{}/api/blobs/{digest}", corral.url());

    let missing = send(request("HEAD", &url, "")).await;
    assert_eq!(missing.status, 404);

    let frames = (0..128).map(move |_| {
        Ok::<_, std::convert::Infallible>(Frame::data(bytes::Bytes::from(chunk.clone())))
    });
    let body = StreamBody::new(futures_util::stream::iter(frames));
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<StreamBody<_>>();
    let created = corral_e2e::within(client.request(Request::post(&url).body(body).unwrap()))
        .await
        .unwrap();
    assert_eq!(created.status(), 201);

    let present = send(request("HEAD", &url, "")).await;
    assert_eq!(present.status, 200);
    let log = upstream.requests();
    let upload = log.iter().find(|r| r.method == "POST").unwrap();
    assert_eq!(upload.body_len, 8 * 1024 * 1024);
}

#[tokio::test]
async fn a_blob_with_the_wrong_digest_is_refused_by_the_upstream() {
    let upstream = mock(fast()).await;
    let corral = proxy_with(&upstream.url(), |_| {}).await;
    let url = format!("{}/api/blobs/sha256:{}", corral.url(), "0".repeat(64));
    let reply = post(&url, "not matching").await;
    assert_eq!(reply.status, 400);
    assert!(reply.error().contains("digest mismatch"));
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
