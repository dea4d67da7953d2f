//! The classify layer and request bodies: read once and bounded, streamed
//! uploads passed through, malformed or broken bodies refused, and a body
//! that stops arriving timed out.

#![allow(clippy::unwrap_used)] // a test fails by panicking

mod common;

use std::convert::Infallible;
use std::time::Duration;

use bytes::Bytes;
use corral_classify::{BodyReadFailed, BodyTooLarge, InvalidRequest};
use corral_core::{Body, BoxError, Endpoint};
use http::Request;
use http_body_util::StreamBody;
use tokio::time::Instant;

use common::{admitted, config, post, refused};

fn chunked(chunks: Vec<&'static [u8]>) -> Body {
    let stream = futures_stream(
        chunks
            .into_iter()
            .map(|c| Ok::<_, Infallible>(http_body::Frame::data(Bytes::from_static(c)))),
    );
    Body::streamed(StreamBody::new(stream))
}

fn futures_stream<I: Iterator + Unpin>(iter: I) -> futures_util::stream::Iter<I> {
    futures_util::stream::iter(iter)
}

#[tokio::test]
async fn a_streamed_body_is_read_once_and_handed_on_buffered() {
    let seen = admitted(
        &config(""),
        post(
            "/api/generate",
            chunked(vec![
                b"{\"model\":",
                b"\"llama3\",\"prompt\":\"hi\"",
                b",\"stream\":false}",
            ]),
        ),
    )
    .await;
    assert_eq!(
        seen.buffered.as_deref(),
        Some(&b"{\"model\":\"llama3\",\"prompt\":\"hi\",\"stream\":false}"[..])
    );
    assert!(!seen.meta.stream);
    assert_eq!(seen.meta.body_bytes, seen.buffered.unwrap().len());
}

#[tokio::test]
async fn a_body_over_the_bound_is_refused_whether_declared_or_not() {
    let small = config("max_request_bytes = 16");
    let mut declared = post("/api/generate", chunked(vec![b"{}"]));
    declared
        .headers_mut()
        .insert("content-length", "1000000".parse().unwrap());
    let err = refused(&small, declared).await;
    assert_eq!(
        err.downcast_ref::<BodyTooLarge>().map(|e| e.limit()),
        Some(16)
    );

    let err = refused(
        &small,
        post(
            "/api/generate",
            chunked(vec![b"{\"model\":\"llama3\",", b"\"prompt\":\"long\"}"]),
        ),
    )
    .await;
    assert!(err.is::<BodyTooLarge>(), "{err}");

    let err = refused(&small, post("/api/generate", Body::from("x".repeat(17)))).await;
    assert!(err.is::<BodyTooLarge>(), "{err}");
}

#[tokio::test]
async fn blob_uploads_stream_through_unread_and_unbounded() {
    let seen = admitted(
        &config("max_request_bytes = 4"),
        post("/api/blobs/sha256:abc", chunked(vec![b"0123456789"])),
    )
    .await;
    assert!(seen.buffered.is_none(), "blobs are not held in memory");
    assert_eq!(seen.meta.endpoint, Endpoint::Blobs);
}

#[tokio::test]
async fn malformed_json_is_a_bad_request_that_says_what_is_wrong() {
    let err = refused(
        &config(""),
        post("/v1/chat/completions", Body::from("{\"model\": llama3}")),
    )
    .await;
    let invalid = err
        .downcast_ref::<InvalidRequest>()
        .expect("invalid request");
    assert!(invalid.to_string().contains("invalid JSON"), "{invalid}");
}

#[tokio::test]
async fn a_broken_client_body_is_reported_as_a_read_failure() {
    let stream = futures_stream(
        vec![
            Ok(http_body::Frame::data(Bytes::from_static(b"{\"model\""))),
            Err::<http_body::Frame<Bytes>, BoxError>("connection reset".into()),
        ]
        .into_iter(),
    );
    let err = refused(
        &config(""),
        post("/api/chat", Body::streamed(StreamBody::new(stream))),
    )
    .await;
    assert!(err.is::<BodyReadFailed>(), "{err}");
}

#[tokio::test]
async fn metadata_reads_are_classified_without_a_body() {
    let tags = Request::get("/api/tags").body(Body::empty()).unwrap();
    let seen = admitted(&config(""), tags).await;
    assert_eq!(seen.meta.endpoint, Endpoint::Tags);
    assert!(seen.meta.model.is_none());
}

#[tokio::test(start_paused = true)]
async fn a_body_that_stops_arriving_is_refused_with_408_after_the_timeout_and_not_before() {
    use futures_util::StreamExt;
    let config = config("body_read_timeout = \"10s\"");
    // A first chunk, then nothing: a slowloris sender.
    let stalled = futures_util::stream::iter(vec![Ok::<_, Infallible>(http_body::Frame::data(
        Bytes::from_static(b"{\"model\":"),
    ))])
    .chain(futures_util::stream::pending());
    let request = post("/api/generate", Body::streamed(StreamBody::new(stalled)));
    let start = Instant::now();
    let err = refused(&config, request).await;
    assert_eq!(start.elapsed(), Duration::from_secs(10));
    let timed_out = err.downcast_ref::<corral_classify::BodyTimedOut>().unwrap();
    assert!(timed_out.to_string().contains("body_read_timeout"));
    assert_eq!(
        corral_core::Refusal::status(timed_out),
        http::StatusCode::REQUEST_TIMEOUT
    );

    // A body that arrives in time, however slowly, is read.
    let slow = futures_util::stream::iter([&b"{\"model\":"[..], b"\"llama3\"}"]).then(
        |chunk| async move {
            tokio::time::sleep(Duration::from_secs(4)).await;
            Ok::<_, Infallible>(http_body::Frame::data(Bytes::from_static(chunk)))
        },
    );
    let request = post(
        "/api/generate",
        Body::streamed(StreamBody::new(Box::pin(slow))),
    );
    let seen = admitted(&config, request).await;
    assert_eq!(seen.meta.model.as_deref(), Some("llama3"));
}
