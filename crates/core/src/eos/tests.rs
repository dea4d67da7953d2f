//! The watcher's tests: every way a body ends, and what its guards are told.

use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http_body_util::{BodyExt, StreamBody};

use super::*;

#[derive(Clone, Default)]
struct Log(Arc<Mutex<Vec<String>>>);

impl Log {
    fn taken(&self) -> Vec<String> {
        std::mem::take(&mut *self.0.lock().unwrap())
    }
}

impl OnEnd for Log {
    fn on_data(&mut self, chunk: &[u8]) {
        self.0.lock().unwrap().push(format!("data {}", chunk.len()));
    }
    fn on_end(self, end: End<'_>) {
        self.0.lock().unwrap().push(format!("{end:?}"));
    }
}

fn chunks(
    items: Vec<Result<&'static str, &'static str>>,
) -> impl Body<Data = Bytes, Error = BoxError> {
    StreamBody::new(futures_util::stream::iter(items.into_iter().map(|item| {
        item.map(|s| Frame::data(Bytes::from(s)))
            .map_err(BoxError::from)
    })))
}

#[tokio::test]
async fn a_stream_read_to_its_end_is_complete_after_its_last_chunk() {
    let log = Log::default();
    let body = WatchBody::new(chunks(vec![Ok("ab"), Ok("c")]), log.clone());
    body.collect().await.unwrap();
    assert_eq!(log.taken(), ["data 2", "data 1", "Complete"]);
}

#[tokio::test]
async fn a_broken_stream_is_failed_once_and_the_error_goes_on_up() {
    let log = Log::default();
    let mut body = WatchBody::new(chunks(vec![Ok("ab"), Err("cut"), Ok("x")]), log.clone());
    assert!(body.frame().await.unwrap().is_ok());
    let err = body.frame().await.unwrap().unwrap_err();
    assert_eq!(err.to_string(), "cut");
    drop(body);
    assert_eq!(log.taken(), ["data 2", "Failed(cut)"]);
}

#[tokio::test]
async fn a_body_dropped_midway_is_cancelled() {
    let log = Log::default();
    let mut body = WatchBody::new(chunks(vec![Ok("ab"), Ok("c")]), log.clone());
    body.frame().await.unwrap().unwrap();
    drop(body);
    assert_eq!(log.taken(), ["data 2", "Cancelled"]);
}

#[tokio::test]
async fn every_promised_byte_delivered_is_complete_though_the_body_never_said_end() {
    // What hyper does with a Content-Length answer: it stops polling
    // once the length is written, and drops the body.
    let log = Log::default();
    let mut headers = HeaderMap::new();
    headers.insert(header::CONTENT_LENGTH, "3".parse().unwrap());
    let mut body = WatchBody::with_headers(chunks(vec![Ok("ab"), Ok("c")]), &headers, log.clone());
    body.frame().await.unwrap().unwrap();
    assert!(!body.has_ended());
    body.frame().await.unwrap().unwrap();
    assert!(body.has_ended());
    drop(body);
    assert_eq!(log.taken(), ["data 2", "data 1", "Complete"]);
}

#[tokio::test]
async fn a_stream_dropped_after_its_terminal_frame_is_complete_and_before_it_cancelled() {
    // The client read `[DONE]` and closed the connection before the
    // upstream's body said it ended.
    let mut headers = HeaderMap::new();
    headers.insert(header::CONTENT_TYPE, "text/event-stream".parse().unwrap());
    for (read, end) in [(1, "Cancelled"), (2, "Complete")] {
        let log = Log::default();
        let frames = vec![Ok("data: {}\n\n"), Ok("data: [DONE]\n\n"), Ok("")];
        let mut body = WatchBody::with_headers(chunks(frames), &headers, log.clone());
        for _ in 0..read {
            body.frame().await.unwrap().unwrap();
        }
        drop(body);
        assert_eq!(log.taken().last().unwrap(), end, "{read} frame(s) read");
    }
}

#[test]
fn an_empty_body_is_complete_at_once() {
    let log = Log::default();
    let body = WatchBody::new(http_body_util::Empty::<Bytes>::new(), log.clone());
    assert!(body.has_ended());
    drop(body);
    assert_eq!(log.taken(), ["Complete"]);
}

#[test]
fn a_guard_of_none_is_told_nothing_and_some_is_told_once() {
    let log = Log::default();
    drop(WatchBody::new(chunks(vec![]), None::<Log>));
    drop(WatchBody::new(chunks(vec![Ok("a")]), Some(log.clone())));
    assert_eq!(log.taken(), ["Cancelled"]);
}
