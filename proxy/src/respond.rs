//! Errors become answers: the proxy's side of core's responder
//! ([`corral_core::respond`]), with the refusals of the layers this build
//! knows and the answer to a panic.

use corral_core::respond::unexpected;
use corral_core::{ApiFamily, BoxBody, BoxError, Endpoint, ErrorBody, RefusalCast};
use http::Response;

/// The refusals of what is always there (classify, the upstream); the
/// registry adds each optional layer's own.
pub(crate) fn built_in() -> Vec<RefusalCast> {
    let mut casts = corral_classify::REFUSALS.to_vec();
    casts.extend_from_slice(corral_core::respond::CORE_REFUSALS);
    casts
}

/// The answer to `err` for a request to `endpoint` (core's responder).
pub fn error_response(
    err: &BoxError,
    endpoint: Endpoint,
    refusals: &[RefusalCast],
) -> Response<BoxBody> {
    corral_core::respond::error_response(err, endpoint.family(), refusals)
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
    corral_core::respond::error_answer(body, family)
}

#[cfg(test)]
mod tests {
    use super::*;
    use corral_core::headers;
    use http::StatusCode;
    use http_body_util::BodyExt;

    #[tokio::test]
    async fn an_unknown_error_is_a_500_in_the_endpoints_shape() {
        let err: BoxError = "boom".into();
        let response = error_response(&err, Endpoint::OpenAiChat, &built_in());
        assert_eq!(response.status(), StatusCode::INTERNAL_SERVER_ERROR);
        assert_eq!(response.headers()[headers::X_CORRAL_REASON], "unexpected");
        let body = response.into_body().collect().await.unwrap().to_bytes();
        let json: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert!(json["error"]["message"].as_str().unwrap().contains("boom"));
    }
}
