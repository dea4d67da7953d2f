use std::sync::Arc;
use std::task::{Context, Poll};

use corral_core::{headers, Body, BoxError, Endpoint, MetaSlot, RequestId, RequestMeta};
use http::{HeaderValue, Request};
use http_body_util::{BodyExt, Limited};
use tokio::time::Instant;
use tower::Service;

use crate::error::{BodyTooLarge, InvalidRequest};
use crate::future::{Reading, ResponseFuture};
use crate::layer::Classifier;
use crate::parse;

corral_core::layer_service! {
    /// Reads a request once and stores its [`RequestMeta`] in the extensions.
    ///
    /// - identifies the agent by API key, else `X-Agent-Id`, else anonymous,
    ///   and gives it its class's priority (or the `X-Priority` it asks for,
    ///   moved into the class's range);
    /// - reads JSON bodies into memory, at most `max_request_bytes`, and
    ///   parses inference bodies once for model, stream flag and generation
    ///   options; blob uploads and unknown paths stream through unread;
    /// - keeps the client's `X-Request-Id` or sets a new one;
    /// - sets the deadline `X-Deadline-Ms` asks for.
    ///
    /// Refusals are [`BodyTooLarge`], [`InvalidRequest`],
    /// [`Unauthenticated`](crate::Unauthenticated) and
    /// [`BodyReadFailed`](crate::BodyReadFailed), boxed.
    #[derive(Debug)]
    pub struct Classify<S> {
        shared: Arc<Classifier>,
    }
}

impl<S> Service<Request<Body>> for Classify<S>
where
    S: Service<Request<Body>> + Clone,
    S::Error: Into<BoxError>,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = ResponseFuture<S, S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, mut request: Request<Body>) -> Self::Future {
        let endpoint = Endpoint::from_request(request.method(), request.uri().path());
        let meta = match self.head(endpoint, &mut request) {
            Ok(meta) => meta,
            Err(refusal) => return ResponseFuture::refused(refusal),
        };
        if !endpoint.has_json_body() {
            record(&meta);
            if let Some(slot) = request.extensions().get::<MetaSlot>() {
                slot.set(&meta);
            }
            request.extensions_mut().insert(meta);
            return ResponseFuture::calling(self.inner.call(request));
        }

        let limit = self.shared.max_request_bytes;
        if let Some(bytes) = request.body().buffered() {
            // Already in memory (a test, a replay): no second read.
            if bytes.len() > limit {
                return ResponseFuture::refused(BodyTooLarge { limit }.into());
            }
            let bytes = bytes.clone();
            return match complete(request.into_parts().0, meta, bytes, self.shared.bounds) {
                Ok(request) => ResponseFuture::calling(self.inner.call(request)),
                Err(refusal) => ResponseFuture::refused(refusal),
            };
        }
        if declared_length(&request).is_some_and(|len| len > limit as u64) {
            return ResponseFuture::refused(BodyTooLarge { limit }.into());
        }
        let (parts, body) = request.into_parts();
        let inner = corral_core::take_ready(&mut self.inner);
        ResponseFuture::reading(
            Limited::new(body, limit).collect(),
            Reading {
                limit,
                bounds: self.shared.bounds,
                timeout: self.shared.body_read_timeout,
            },
            parts,
            meta,
            inner,
        )
    }
}

/// The request's id: the one in its extensions (the proxy's front, or
/// any layer before this one, put it there), else its `X-Request-Id`,
/// else a new one, written into the header so the upstream sees it.
fn request_id_of<B>(request: &mut Request<B>) -> RequestId {
    if let Some(id) = request.extensions().get::<RequestId>() {
        return id.clone();
    }
    match request
        .headers()
        .get(headers::X_REQUEST_ID)
        .and_then(|v| v.to_str().ok())
    {
        Some(id) if !id.is_empty() => RequestId::from(id),
        _ => {
            let id = RequestId::generate();
            if let Ok(value) = HeaderValue::from_str(id.as_str()) {
                request.headers_mut().insert(headers::X_REQUEST_ID, value);
            }
            id
        }
    }
}

impl<S> Classify<S> {
    /// Everything the headers say; the body comes after.
    fn head(
        &self,
        endpoint: Endpoint,
        request: &mut Request<Body>,
    ) -> Result<RequestMeta, BoxError> {
        let now = Instant::now();
        let headers = request.headers();
        let identity = match request.extensions().get::<crate::Vouched>() {
            Some(vouched) => self
                .shared
                .identities
                .vouched(&vouched.agent, vouched.authenticated)?,
            None => self.shared.identities.identify(headers)?,
        };
        let priority = match self.shared.overrides.get(identity.agent.as_str()) {
            Some(priority) => priority,
            None => identity.class.priority_for(headers)?,
        };
        let deadline = match headers.get(headers::X_DEADLINE_MS) {
            None => identity.class.deadline.and_then(|d| now.checked_add(d)),
            Some(value) => {
                let ms = value
                    .to_str()
                    .ok()
                    .and_then(|v| v.trim().parse::<u64>().ok())
                    .ok_or_else(|| InvalidRequest {
                        message:
                            "invalid X-Deadline-Ms header: expected whole milliseconds from now"
                                .into(),
                    })?;
                // So far away it cannot be told from none.
                now.checked_add(std::time::Duration::from_millis(ms))
            }
        };
        let ttft = match headers.get(headers::X_CORRAL_TTFT_MS) {
            None => identity.class.ttft,
            Some(value) => Some(std::time::Duration::from_millis(
                value
                    .to_str()
                    .ok()
                    .and_then(|v| v.trim().parse::<u64>().ok())
                    .ok_or_else(|| InvalidRequest {
                        message: "invalid X-Corral-Ttft-Ms header: expected whole milliseconds"
                            .into(),
                    })?,
            )),
        };
        let request_id = request_id_of(request);
        let mut meta = RequestMeta::new(request_id, endpoint)
            .with_agent(
                identity.agent,
                identity.class.name.clone(),
                identity.authenticated,
            )
            .with_priority(priority)
            .with_deadline(deadline);
        meta.received_at = now;
        meta.ttft = ttft;
        meta.private = identity.class.private;
        Ok(meta)
    }
}

fn declared_length<B>(request: &Request<B>) -> Option<u64> {
    request
        .headers()
        .get(http::header::CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .parse()
        .ok()
}

/// Fills `meta` from the body and rebuilds the request around the bytes.
/// A body read as JSON without a `Content-Type` goes on labelled
/// `application/json`: Ollama reads it either way, an OpenAI-compatible
/// server may not (llama.cpp's answered 500, which counted against the
/// upstream and fed the breaker: a client's omission).
pub(crate) fn complete(
    mut parts: http::request::Parts,
    mut meta: RequestMeta,
    bytes: bytes::Bytes,
    bounds: parse::Bounds,
) -> Result<Request<Body>, BoxError> {
    let facts = parse::read(meta.endpoint, bounds, &bytes)?;
    meta.model = facts.model;
    meta.stream = facts.stream.unwrap_or(meta.endpoint.streams_by_default());
    meta.generation = facts.generation;
    meta.body_bytes = bytes.len();
    if !bytes.is_empty() && !parts.headers.contains_key(http::header::CONTENT_TYPE) {
        parts.headers.insert(
            http::header::CONTENT_TYPE,
            http::HeaderValue::from_static("application/json"),
        );
    }
    record(&meta);
    let mut request = Request::from_parts(parts, Body::from(bytes));
    if let Some(slot) = request.extensions().get::<MetaSlot>() {
        slot.set(&meta);
    }
    request.extensions_mut().insert(meta);
    Ok(request)
}

/// Fills in the request's span, when the caller opened one with these
/// fields.
fn record(meta: &RequestMeta) {
    let span = tracing::Span::current();
    span.record("agent", meta.agent.as_str());
    span.record("class", meta.class.as_str());
    span.record("priority", meta.priority.get());
    if let Some(model) = &meta.model {
        span.record("model", &**model);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_json_body_without_a_content_type_goes_on_labelled_json() {
        let meta = RequestMeta::new("r".into(), corral_core::Endpoint::Chat);
        let body = bytes::Bytes::from_static(br#"{"model":"m","messages":[]}"#);
        let label = |request: Request<()>| {
            let (parts, ()) = request.into_parts();
            let request =
                complete(parts, meta.clone(), body.clone(), parse::Bounds::default()).unwrap();
            request.headers()[http::header::CONTENT_TYPE].clone()
        };
        assert_eq!(label(Request::new(())), "application/json");
        // One the client set is kept as it is.
        let told = Request::builder()
            .header(
                http::header::CONTENT_TYPE,
                "application/json; charset=utf-8",
            )
            .body(())
            .unwrap();
        assert_eq!(label(told), "application/json; charset=utf-8");
    }

    #[test]
    fn the_id_a_layer_before_put_in_the_extensions_wins_over_the_header() {
        let mut request = Request::builder()
            .header(headers::X_REQUEST_ID, "from-the-header")
            .body(())
            .unwrap();
        request
            .extensions_mut()
            .insert(RequestId::from("from-the-front"));
        assert_eq!(request_id_of(&mut request).as_str(), "from-the-front");
    }

    #[test]
    fn without_one_the_header_gives_it_and_without_a_header_a_new_one_is_written_there() {
        let mut given = Request::builder()
            .header(headers::X_REQUEST_ID, "abc")
            .body(())
            .unwrap();
        assert_eq!(request_id_of(&mut given).as_str(), "abc");
        let mut bare = Request::new(());
        let made = request_id_of(&mut bare);
        assert_eq!(made.as_str().len(), 32);
        assert_eq!(bare.headers()[headers::X_REQUEST_ID], made.as_str());
    }
}
