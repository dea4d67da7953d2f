//! Reading answers: an answer's status, `Location` and body, a job's
//! end, and the verdict (2xx: success) with the output as logged, cut
//! to [`MAX_OUTPUT_BYTES`].

use bytes::Bytes;
use corral_core::{BoxBody, BoxError};
use http::{header, StatusCode};
use http_body_util::{BodyExt, Limited};
use serde_json::{json, Value};

use crate::log::BoxFuture;
use crate::saga::StepResult;

/// The most bytes of a step's answer kept (and parsed).
const MAX_ANSWER_BYTES: usize = 1 << 20;
/// The most bytes of a step's output kept in the log: a longer body is
/// cut and the output marked `"truncated": true`.
pub const MAX_OUTPUT_BYTES: usize = 64 << 10;
/// The most characters of a failed answer quoted in the reason.
const MAX_REASON_CHARS: usize = 300;

/// One answer, read whole (up to [`MAX_ANSWER_BYTES`]).
pub(super) struct Answer {
    pub(super) status: StatusCode,
    pub(super) location: Option<String>,
    pub(super) body: Value,
}

/// The status, `Location` and body (up to [`MAX_ANSWER_BYTES`]).
pub(super) async fn read_answer<B>(response: http::Response<B>) -> Result<Answer, String>
where
    B: http_body::Body<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    let status = response.status();
    let location = response
        .headers()
        .get(header::LOCATION)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let bytes = Limited::new(response.into_body(), MAX_ANSWER_BYTES)
        .collect()
        .await
        .map_err(|e| e.to_string())?
        .to_bytes();
    Ok(Answer {
        status,
        location,
        body: parse_body(&bytes),
    })
}

/// [`read_answer`] boxed: named as `Send + 'static`, the boxed error in
/// the body does not trip the `Send` check of the futures awaiting it.
pub(super) fn read_local(
    response: http::Response<BoxBody>,
) -> BoxFuture<'static, Result<Answer, String>> {
    Box::pin(read_answer(response))
}

/// A job's end, once its `status` says it ended.
pub(super) fn job_result(url: &str, job: &Value) -> Option<StepResult> {
    match job.get("status").and_then(Value::as_str)? {
        "done" => {
            let response = job.get("response").cloned().unwrap_or(Value::Null);
            let status = response
                .get("status")
                .and_then(Value::as_u64)
                .and_then(|s| u16::try_from(s).ok())
                .and_then(|s| StatusCode::from_u16(s).ok())
                .unwrap_or(StatusCode::OK);
            let body = response.get("body").cloned().unwrap_or(Value::Null);
            Some(verdict("job", url, status, body))
        }
        ended @ ("failed" | "cancelled") => {
            let why = job.get("error").map(excerpt).unwrap_or_default();
            Some(Err(format!("job {url} {ended} {why}")
                .trim_end()
                .to_string()
                .into()))
        }
        _ => None,
    }
}

/// Success on 2xx, with the status and body as the step's output.
pub(super) fn verdict(method: &str, uri: &str, status: StatusCode, body: Value) -> StepResult {
    if status.is_success() {
        Ok(capped(json!({"status": status.as_u16(), "body": body})))
    } else {
        Err(format!("{method} {uri} answered {status}: {}", excerpt(&body)).into())
    }
}

/// `output` as logged: a body past [`MAX_OUTPUT_BYTES`] is replaced by
/// its text cut to that size, and the output marked truncated (the log
/// is read between steps: it must stay small).
fn capped(mut output: Value) -> Value {
    let text = output["body"].to_string();
    if text.len() <= MAX_OUTPUT_BYTES {
        return output;
    }
    let mut end = MAX_OUTPUT_BYTES;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    output["body"] = Value::String(text[..end].to_string());
    output["truncated"] = Value::Bool(true);
    output
}

fn parse_body(bytes: &[u8]) -> Value {
    if bytes.is_empty() {
        return Value::Null;
    }
    serde_json::from_slice(bytes)
        .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(bytes).into_owned()))
}

fn excerpt(body: &Value) -> String {
    let text = match body {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    text.chars().take(MAX_REASON_CHARS).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_large_output_is_cut_and_marked_truncated() {
        let small = json!({"status": 200, "body": {"ok": true}});
        assert_eq!(capped(small.clone()), small);
        let big = capped(json!({"status": 200, "body": "é".repeat(MAX_OUTPUT_BYTES)}));
        assert_eq!(big["truncated"], true);
        assert!(big["body"].as_str().unwrap().len() <= MAX_OUTPUT_BYTES);
        assert_eq!(big["status"], 200);
    }

    #[test]
    fn jobs_end_on_done_failed_or_cancelled() {
        let url = "http://c/corral/jobs/1";
        assert!(job_result(url, &json!({"status": "running"})).is_none());
        let done = json!({"status": "done", "response": {"status": 200, "body": {"ok": true}}});
        assert_eq!(
            job_result(url, &done).unwrap().unwrap(),
            json!({"status": 200, "body": {"ok": true}})
        );
        let refused = json!({"status": "done", "response": {"status": 503, "body": "busy"}});
        assert!(job_result(url, &refused).unwrap().is_err());
        assert!(job_result(url, &json!({"status": "failed", "error": "x"}))
            .unwrap()
            .is_err());
    }
}
