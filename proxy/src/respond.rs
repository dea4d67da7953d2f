//! The one place errors become answers.
//!
//! Every layer returns its refusal as a boxed error; here the chain of
//! sources is searched for a known refusal, in order, and answered in the
//! shape the client's API uses (Ollama's `{"error": "..."}`, or OpenAI's
//! for `/v1`), with `X-Corral-Reason` and, when known, `Retry-After`.
//! Anything unrecognised is a 500 `unexpected` and is logged.

use corral_core::{
    as_refusal, find_refusal, headers, ApiFamily, BoxBody, BoxError, Endpoint, ErrorBody,
    RefusalCast,
};
use http::{header, HeaderValue, Response, StatusCode};

/// The refusals of the layers that are always there; the registry adds
/// each optional layer's own.
pub(crate) const BUILT_IN: &[RefusalCast] = &[
    as_refusal::<corral_classify::BodyTooLarge>,
    as_refusal::<corral_classify::InvalidRequest>,
    as_refusal::<corral_classify::Unauthenticated>,
    as_refusal::<corral_classify::BodyReadFailed>,
    as_refusal::<corral_classify::BodyTimedOut>,
    as_refusal::<corral_core::UpstreamFailed>,
    as_refusal::<corral_core::Timeout>,
];

/// The answer to `err` for a request to `endpoint`.
pub fn error_response(
    err: &BoxError,
    endpoint: Endpoint,
    refusals: &[RefusalCast],
) -> Response<BoxBody> {
    let family = endpoint.family();
    match find_refusal(&**err, refusals) {
        Some(refusal) => {
            let body =
                ErrorBody::new(refusal.status(), refusal.to_string()).with_code(refusal.reason());
            let mut response = answer(&body, family);
            response.headers_mut().insert(
                headers::X_CORRAL_REASON,
                HeaderValue::from_static(refusal.reason()),
            );
            for (name, value) in refusal.headers() {
                response.headers_mut().insert(name, value);
            }
            if let Some(wait) = refusal.retry_after() {
                // Whole seconds, rounded up: "0" would invite a stampede.
                let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
                response
                    .headers_mut()
                    .insert(header::RETRY_AFTER, HeaderValue::from(secs.max(1)));
            }
            response
        }
        None => {
            tracing::error!(error = %err, "unexpected error in the stack");
            unexpected(format!("unexpected error in corral: {err}"), family)
        }
    }
}

/// A 500 for what no refusal explains: a bug, logged by the caller.
fn unexpected(message: String, family: ApiFamily) -> Response<BoxBody> {
    let body = ErrorBody::new(StatusCode::INTERNAL_SERVER_ERROR, message).with_code("unexpected");
    let mut response = answer(&body, family);
    response.headers_mut().insert(
        headers::X_CORRAL_REASON,
        HeaderValue::from_static("unexpected"),
    );
    response
}

/// The answer to a request whose handling panicked: a 500, logged with
/// the panic's message.
pub fn panic_response(
    panic: Box<dyn std::any::Any + Send + 'static>,
    family: ApiFamily,
) -> Response<BoxBody> {
    let message = panic
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic with no message".into());
    tracing::error!(panic = %message, "a layer panicked while handling a request");
    unexpected(
        "unexpected error in corral (a bug: it is logged)".into(),
        family,
    )
}

/// `body` as a JSON response.
pub(crate) fn answer(body: &ErrorBody, family: ApiFamily) -> Response<BoxBody> {
    let mut response = Response::new(corral_core::full(body.to_bytes(family)));
    *response.status_mut() = body.status();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json; charset=utf-8"),
    );
    response
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    #[tokio::test]
    async fn an_unknown_error_is_a_500_that_says_so() {
        let err: BoxError = "boom".into();
        let response = error_response(&err, Endpoint::Chat, BUILT_IN);
        assert_eq!(response.status(), StatusCode::INTERNAL_SERVER_ERROR);
        assert_eq!(response.headers()[headers::X_CORRAL_REASON], "unexpected");
        let body = response.into_body().collect().await.unwrap().to_bytes();
        let json: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert!(json["error"].as_str().unwrap().contains("boom"));
    }

    #[derive(Debug)]
    struct Slow;
    impl std::fmt::Display for Slow {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("wait a little")
        }
    }
    impl std::error::Error for Slow {}
    impl corral_core::Refusal for Slow {
        fn status(&self) -> StatusCode {
            StatusCode::TOO_MANY_REQUESTS
        }
        fn reason(&self) -> &'static str {
            "rate_limited"
        }
        fn retry_after(&self) -> Option<std::time::Duration> {
            Some(std::time::Duration::from_millis(1200))
        }
    }

    #[tokio::test]
    async fn a_refusal_gets_its_status_reason_and_a_rounded_up_retry_after() {
        let err: BoxError = Box::new(Slow);
        let response = error_response(&err, Endpoint::OpenAiChat, &[as_refusal::<Slow>]);
        assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(response.headers()[header::RETRY_AFTER], "2");
        assert_eq!(response.headers()[headers::X_CORRAL_REASON], "rate_limited");
        let body = response.into_body().collect().await.unwrap().to_bytes();
        let json: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(json["error"]["message"], "wait a little");
        assert_eq!(json["error"]["code"], "rate_limited");
    }
}
