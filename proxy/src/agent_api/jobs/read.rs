//! Reading a job: where it stands, its answer whole, its answer as it
//! comes.

use bytes::Bytes;
use corral_core::{full, BoxBody};
use corral_jobs::{JobId, JobState, Jobs, Status};
use http::{header, HeaderValue, Response, StatusCode};
use http_body_util::BodyExt;
use serde_json::json;

use super::{refuse, unavailable, JobsApi};
use crate::admin::json_response;

impl JobsApi {
    /// `GET /corral/jobs/{id}`.
    pub(super) async fn describe(&self, state: JobState) -> Response<BoxBody> {
        let mut view = view_of(&state);
        if state.status == Status::Queued {
            view["queue"] = match self.waiting_for_permit(&state.id) {
                Some(queue) => queue,
                None => self.queue_estimate().await,
            };
        }
        if state.status.is_final() {
            if let Ok(Some(answer)) = self.jobs.chunks(&state.id, 0).await {
                if let Some(response) = view.get_mut("response") {
                    response["body"] = body_view(&answer.chunks.concat());
                }
            }
        }
        json_response(StatusCode::OK, &view)
    }

    /// Where a job a runner sent waits for its permit, as the scheduler
    /// orders its queue (its request's id is the job's): the requests
    /// ahead of it and its wait so far and to come.
    fn waiting_for_permit(&self, id: &JobId) -> Option<serde_json::Value> {
        let waiter = self.controls.scheduler.get()?.waiting(id.as_str())?;
        let ahead = waiter.estimate.position;
        Some(json!({
            "position": ahead + 1,
            "ahead": ahead,
            "eta_ms": waiter.estimate.eta_ms(),
            "waited_ms": u64::try_from(waiter.waited.as_millis()).unwrap_or(u64::MAX),
            "priority": waiter.priority.get(),
        }))
    }

    /// Roughly what is ahead of a queued job not yet sent: jobs no runner has taken
    /// yet and requests waiting for the upstream, over the rate the queue
    /// drains at. Rough: it does not know the job's priority's place.
    async fn queue_estimate(&self) -> serde_json::Value {
        let waiting_jobs = self.jobs.waiting().await;
        let load = self.load.get().map(|l| l.snapshot());
        let queued = load.as_ref().map_or(0, |l| l.queued_total());
        // The job itself is one of those waiting, for a runner or a permit.
        let position = (waiting_jobs + queued).max(1);
        let ahead = position - 1;
        let rate = load.as_ref().map_or(0.0, |l| l.completions_per_sec);
        let eta_ms = (rate > 0.0).then(|| (position as f64 / rate * 1000.0).round() as u64);
        json!({"position": position, "ahead": ahead, "eta_ms": eta_ms})
    }

    /// `GET /corral/jobs/{id}/result`: the answer as a live request would
    /// have received it.
    pub(super) async fn result(&self, state: JobState) -> Response<BoxBody> {
        if !state.status.is_final() {
            let mut response = json_response(StatusCode::CONFLICT, &view_of(&state));
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
            return response;
        }
        let head = match (&state.response, state.truncated) {
            // What was kept is not what a live client would have read.
            (_, true) => {
                return refuse(
                    StatusCode::BAD_GATEWAY,
                    format!(
                    "job {}: its answer was larger than [jobs] max_result_bytes and was not kept",
                    state.id
                ),
                )
            }
            (Some(head), false) => head.clone(),
            // Cancelled (or refused) before any answer came.
            (None, false) => return json_response(StatusCode::CONFLICT, &view_of(&state)),
        };
        let body = match self.jobs.chunks(&state.id, 0).await {
            Ok(Some(answer)) => answer.chunks.concat(),
            Ok(None) => {
                return refuse(
                    StatusCode::NOT_FOUND,
                    format!("no job {} (expired)", state.id),
                )
            }
            Err(e) => return unavailable(&e),
        };
        let mut response = Response::new(full(body));
        *response.status_mut() = StatusCode::from_u16(head.status).unwrap_or(StatusCode::OK);
        copy_headers(&head.headers, response.headers_mut());
        response
    }

    /// `GET /corral/jobs/{id}/stream`: every chunk from the first, then
    /// live until the job ends. A job taken over by another replica
    /// starts its answer again: a reader who had some of the first
    /// attempt's gets an error rather than two answers spliced.
    pub(super) async fn stream(&self, state: JobState) -> Response<BoxBody> {
        let id = state.id.clone();
        let Some(follow) = self.jobs.follow(&id) else {
            return refuse(StatusCode::NOT_FOUND, format!("no job {id}"));
        };
        let content_type = state
            .response
            .as_ref()
            .and_then(|h| h.header("content-type").map(str::to_string))
            .unwrap_or_else(|| "application/x-ndjson".into());
        let reader = Reader {
            jobs: self.jobs.clone(),
            id,
            follow,
            next: 0,
            attempt: None,
            ended: false,
        };
        let chunks = futures_util::stream::unfold(reader, |mut reader| async move {
            let frame = reader.next_frame().await?;
            Some((frame, reader))
        });
        let mut response = Response::new(http_body_util::StreamBody::new(chunks).boxed_unsync());
        if let Ok(value) = HeaderValue::from_str(&content_type) {
            response.headers_mut().insert(header::CONTENT_TYPE, value);
        }
        response
    }
}

/// One `/stream` reader's place in a job's answer.
struct Reader {
    jobs: Jobs,
    id: JobId,
    follow: corral_jobs::Follow,
    next: usize,
    /// The attempt whose chunks it has read.
    attempt: Option<u32>,
    ended: bool,
}

type Frame = Result<http_body::Frame<Bytes>, corral_core::BoxError>;

impl Reader {
    /// The next chunks, once there are some; `None` at the end.
    async fn next_frame(&mut self) -> Option<Frame> {
        loop {
            if self.ended {
                return None;
            }
            let answer = match self.jobs.chunks(&self.id, self.next).await {
                Ok(Some(answer)) => answer,
                Ok(None) => return self.fail(format!("job {} expired while read", self.id)),
                Err(e) => return self.fail(e.to_string()),
            };
            match self.attempt {
                Some(read) if read != answer.attempt && self.next > 0 => {
                    return self.fail(format!(
                        "job {} was taken over by another replica and started again: read it again from the start",
                        self.id
                    ))
                }
                _ => self.attempt = Some(answer.attempt),
            }
            self.ended = answer.ended;
            if !answer.chunks.is_empty() {
                self.next += answer.chunks.len();
                self.follow.progressed();
                let bytes = Bytes::from(answer.chunks.concat());
                return Some(Ok(http_body::Frame::data(bytes)));
            }
            if self.ended {
                return None;
            }
            self.follow.changed().await;
        }
    }

    fn fail(&mut self, message: String) -> Option<Frame> {
        self.ended = true;
        Some(Err(message.into()))
    }
}

fn copy_headers(from: &[(String, String)], to: &mut http::HeaderMap) {
    for (name, value) in from {
        if let (Ok(name), Ok(value)) = (
            http::HeaderName::from_bytes(name.as_bytes()),
            HeaderValue::from_str(value),
        ) {
            if name != header::CONTENT_LENGTH && name != header::TRANSFER_ENCODING {
                to.append(name, value);
            }
        }
    }
}

/// A job as its owner reads it.
pub(crate) fn view_of(state: &JobState) -> serde_json::Value {
    let location = format!("/corral/jobs/{}", state.id);
    let mut view = json!({
        "id": state.id,
        "status": state.status.as_str(),
        "endpoint": state.endpoint,
        "agent": state.agent,
        "submitted_at": state.submitted_at,
        "started_at": state.started_at,
        "finished_at": state.finished_at,
        "attempts": state.attempts,
        "replica": state.replica,
        "reason": state.reason,
        "bytes": state.bytes,
        "links": {
            "self": location,
            "result": format!("{location}/result"),
            "stream": format!("{location}/stream"),
        },
    });
    if let Some(head) = &state.response {
        let headers: serde_json::Map<String, serde_json::Value> = head
            .headers
            .iter()
            .map(|(n, v)| (n.clone(), json!(v)))
            .collect();
        view["response"] = json!({"status": head.status, "headers": headers});
    }
    if state.truncated {
        view["truncated"] = json!(true);
    }
    view
}

/// The answer's body in the JSON view: the JSON document it is, else
/// its text (NDJSON, SSE), else its size.
fn body_view(bytes: &[u8]) -> serde_json::Value {
    if let Ok(value) = serde_json::from_slice::<serde_json::Value>(bytes) {
        return value;
    }
    match std::str::from_utf8(bytes) {
        Ok(text) => json!(text),
        Err(_) => json!({"bytes": bytes.len(), "read": "GET .../result"}),
    }
}
