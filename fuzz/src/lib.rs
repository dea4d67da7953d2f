//! What the fuzz targets share: the input format and a runtime.
//!
//! Every input reads like a tiny HTTP message, so seeds and crashes stay
//! readable in an editor:
//!
//! ```text
//! CONTROL                  one line: a few selector bytes (see each target)
//! [target-specific lines]  the signature target: method, then path and query
//! name: value              header lines, until an empty line
//!
//! body                     every byte after the empty line, as it is
//! ```
//!
//! A header line without `:`, or whose name or value `http` refuses, is
//! skipped; a missing empty line means the body is empty. Values lose
//! their surrounding spaces and tabs, as an HTTP/1 parser strips them.

use std::convert::Infallible;
use std::future::Future;
use std::sync::OnceLock;

use bytes::Bytes;
use corral_core::Body;
use http::{HeaderMap, HeaderName, HeaderValue};
use http_body::Frame;
use http_body_util::StreamBody;

/// The next line of `input` (without its `\n`), `None` at the end.
pub fn line<'a>(input: &mut &'a [u8]) -> Option<&'a [u8]> {
    if input.is_empty() {
        return None;
    }
    match input.iter().position(|&b| b == b'\n') {
        Some(end) => {
            let line = &input[..end];
            *input = &input[end + 1..];
            Some(line)
        }
        None => {
            let line = *input;
            *input = &[];
            Some(line)
        }
    }
}

/// Header lines up to the first empty line; `input` is left at the body.
#[must_use]
pub fn headers(input: &mut &[u8]) -> HeaderMap {
    let mut map = HeaderMap::new();
    while let Some(line) = line(input) {
        if line.is_empty() {
            break;
        }
        let Some(colon) = line.iter().position(|&b| b == b':') else {
            continue;
        };
        let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(&line[..colon]),
            HeaderValue::from_bytes(trim(&line[colon + 1..])),
        ) else {
            continue;
        };
        map.append(name, value);
    }
    map
}

fn trim(mut value: &[u8]) -> &[u8] {
    while let [b' ' | b'\t', rest @ ..] = value {
        value = rest;
    }
    while let [rest @ .., b' ' | b'\t'] = value {
        value = rest;
    }
    value
}

/// Runs `future` to its end on a current-thread runtime made once per
/// process.
///
/// # Panics
///
/// If tokio cannot make the runtime (no more file descriptors).
pub fn block_on<F: Future>(future: F) -> F::Output {
    static RUNTIME: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RUNTIME
        .get_or_init(|| {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("a current-thread runtime")
        })
        .block_on(future)
}

/// `body` as a streamed [`Body`] that arrives in chunks of `size` bytes
/// (the last one shorter), as a client's body comes off the socket.
#[must_use]
pub fn streamed(body: &[u8], size: usize) -> Body {
    let frames: Vec<Result<Frame<Bytes>, Infallible>> = body
        .chunks(size.max(1))
        .map(|c| Ok(Frame::data(Bytes::copy_from_slice(c))))
        .collect();
    Body::streamed(StreamBody::new(futures_util::stream::iter(frames)))
}
