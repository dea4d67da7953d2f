//! W3C trace context: a request's `traceparent` is accepted (a new trace
//! is started when it has none, or a malformed one), the request's span
//! carries its trace id, and the upstream is sent the same trace with
//! Corral's span as the parent, so a tracing backend shows the time
//! spent in Corral (queue included) between the agent's span and
//! Ollama's.
//!
//! With the `otlp` feature and `[traces] otlp_endpoint`, each request's
//! span is exported to an OpenTelemetry collector over OTLP/HTTP (JSON),
//! in batches, off the request's task. The OpenTelemetry SDK crates are
//! not used, by choice: one span per request, with the fields the access
//! line already has, is a few lines of JSON, where the SDK would bring a
//! second tracing pipeline and its own runtime hooks onto the hot path.

use http::{HeaderMap, HeaderValue};

/// What exports finished spans: OTLP with the `otlp` feature; without
/// it, a type no value has.
#[cfg(feature = "otlp")]
pub(crate) type Exporter = crate::otlp::SpanExporter;

/// What exports finished spans: without the `otlp` feature, nothing.
#[cfg(not(feature = "otlp"))]
#[derive(Debug)]
pub(crate) enum Exporter {}

#[cfg(not(feature = "otlp"))]
impl Exporter {
    pub(crate) fn export(&self, _: FinishedSpan) {
        match *self {}
    }
}

/// The exporter `config` asks for, started (inside a runtime only:
/// `check-config` exports nothing).
pub(crate) fn exporter(
    config: &crate::config::TracesConfig,
) -> Result<Option<std::sync::Arc<Exporter>>, corral_core::ConfigError> {
    let Some(endpoint) = &config.otlp_endpoint else {
        return Ok(None);
    };
    if tokio::runtime::Handle::try_current().is_err() {
        return Ok(None);
    }
    #[cfg(feature = "otlp")]
    {
        crate::otlp::SpanExporter::start(endpoint, &config.service_name)
            .map(Some)
            .map_err(|e| corral_core::ConfigError::new("traces.otlp_endpoint", e))
    }
    #[cfg(not(feature = "otlp"))]
    {
        let _ = endpoint;
        Err(corral_core::ConfigError::new(
            "traces.otlp_endpoint",
            "this build of corral has no `otlp` feature",
        ))
    }
}

/// One request's span, finished.
#[derive(Debug)]
pub(crate) struct FinishedSpan {
    pub(crate) context: TraceContext,
    pub(crate) name: String,
    pub(crate) start_unix_nanos: u128,
    pub(crate) end_unix_nanos: u128,
    pub(crate) attributes: Vec<(&'static str, serde_json::Value)>,
    /// The answer was a failure (5xx, or broken).
    pub(crate) error: bool,
}

/// The `traceparent` header.
pub(crate) const TRACEPARENT: http::HeaderName = http::HeaderName::from_static("traceparent");

/// Where a request's span sits in its trace.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct TraceContext {
    pub(crate) trace_id: [u8; 16],
    /// Corral's span for this request.
    pub(crate) span_id: [u8; 8],
    /// The caller's span, when it sent one.
    pub(crate) parent: Option<[u8; 8]>,
    /// The trace flags (bit 0: sampled), passed on as received.
    pub(crate) flags: u8,
}

impl TraceContext {
    /// The context of a request with `headers`: its `traceparent`'s
    /// trace, under a new span of Corral's; a new trace (sampled) when it
    /// sent none or one that is not valid.
    pub(crate) fn of(headers: &HeaderMap) -> Self {
        let span_id = random_id::<8>();
        match headers
            .get(TRACEPARENT)
            .and_then(|v| v.to_str().ok())
            .and_then(parse)
        {
            Some((trace_id, parent, flags)) => Self {
                trace_id,
                span_id,
                parent: Some(parent),
                flags,
            },
            None => Self {
                trace_id: random_id::<16>(),
                span_id,
                parent: None,
                flags: 1,
            },
        }
    }

    /// The `traceparent` for the upstream: the same trace, Corral's span
    /// as the parent. Written into a buffer of its exact length: with
    /// `format!` and a `write!` per byte it was ~1 % of the proxy's CPU
    /// under load (`perf record`, `core::fmt::write` under `hex`).
    pub(crate) fn header(&self) -> HeaderValue {
        // "00-" trace "-" span "-" flags
        let mut value = [0u8; 3 + 32 + 1 + 16 + 1 + 2];
        value[..3].copy_from_slice(b"00-");
        hex_into(&self.trace_id, &mut value[3..35]);
        value[35] = b'-';
        hex_into(&self.span_id, &mut value[36..52]);
        value[52] = b'-';
        hex_into(&[self.flags], &mut value[53..]);
        HeaderValue::from_bytes(&value).unwrap_or_else(|_| HeaderValue::from_static(""))
    }
}

/// A `traceparent` value's trace id, parent span id and flags, if it is
/// valid (version `00`, or a later one read as `00` as the spec asks;
/// ids not all zeros).
fn parse(value: &str) -> Option<([u8; 16], [u8; 8], u8)> {
    let mut parts = value.trim().split('-');
    let version = parts.next()?;
    let (trace, parent, flags) = (parts.next()?, parts.next()?, parts.next()?);
    if version.len() != 2
        || version.eq_ignore_ascii_case("ff")
        || (version == "00" && parts.next().is_some())
    {
        return None;
    }
    let trace_id: [u8; 16] = unhex(trace)?;
    let parent: [u8; 8] = unhex(parent)?;
    let [flags]: [u8; 1] = unhex(flags)?;
    if trace_id == [0; 16] || parent == [0; 8] {
        return None;
    }
    Some((trace_id, parent, flags))
}

fn unhex<const N: usize>(text: &str) -> Option<[u8; N]> {
    if text.len() != 2 * N
        || !text
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    {
        return None;
    }
    let mut out = [0u8; N];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&text[2 * i..2 * i + 2], 16).ok()?;
    }
    Some(out)
}

/// `bytes` in lowercase hex.
pub(crate) fn hex(bytes: &[u8]) -> String {
    let mut out = vec![0u8; 2 * bytes.len()];
    hex_into(bytes, &mut out);
    String::from_utf8(out).unwrap_or_default()
}

/// Writes `bytes` in lowercase hex into `out`, two digits a byte (`out`
/// is twice as long).
fn hex_into(bytes: &[u8], out: &mut [u8]) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    for (byte, pair) in bytes.iter().zip(out.chunks_exact_mut(2)) {
        pair[0] = DIGITS[usize::from(byte >> 4)];
        pair[1] = DIGITS[usize::from(byte & 0x0f)];
    }
}

/// A random id, never all zeros (W3C: an invalid id).
fn random_id<const N: usize>() -> [u8; N] {
    let mut id = [0u8; N];
    while id == [0u8; N] {
        for chunk in id.chunks_mut(8) {
            let random = fastrand::u64(..).to_le_bytes();
            chunk.copy_from_slice(&random[..chunk.len()]);
        }
    }
    id
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(traceparent: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(TRACEPARENT, HeaderValue::from_str(traceparent).unwrap());
        headers
    }

    #[test]
    fn a_valid_traceparent_is_continued_under_a_span_of_corrals() {
        let given = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let context = TraceContext::of(&headers(given));
        assert_eq!(hex(&context.trace_id), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(
            context.parent.map(|p| hex(&p)).as_deref(),
            Some("00f067aa0ba902b7")
        );
        let sent = context.header();
        let sent = sent.to_str().unwrap();
        assert!(
            sent.starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-"),
            "{sent}"
        );
        assert!(sent.ends_with("-01"));
        assert_ne!(
            &sent[36..52],
            "00f067aa0ba902b7",
            "Corral's span is the parent"
        );
        assert_eq!(&sent[36..52], hex(&context.span_id));
    }

    #[test]
    fn hex_is_two_lowercase_digits_a_byte() {
        assert_eq!(hex(&[0x00, 0x0f, 0xa5, 0xff]), "000fa5ff");
        let context = TraceContext {
            trace_id: [0xab; 16],
            span_id: [0x01; 8],
            parent: None,
            flags: 0x0c,
        };
        assert_eq!(
            context.header().to_str().unwrap(),
            format!("00-{}-{}-0c", "ab".repeat(16), "01".repeat(8))
        );
    }

    #[test]
    fn a_missing_or_invalid_traceparent_starts_a_new_trace() {
        for bad in [
            "",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "00-4bf92f-00f067aa0ba902b7-01",
        ] {
            let context = TraceContext::of(&headers(bad));
            assert_eq!(context.parent, None, "{bad:?}");
            assert_ne!(context.trace_id, [0; 16]);
            assert_eq!(context.flags, 1);
        }
        // A later version is read as version 00, extra fields ignored.
        let later = TraceContext::of(&headers(
            "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-what-else",
        ));
        assert!(later.parent.is_some());
    }
}
