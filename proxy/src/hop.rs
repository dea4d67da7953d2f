//! Hop-by-hop headers (RFC 9110 §7.6.1): meaningful for one connection
//! only, so a proxy drops them in both directions.

use http::header::{self, HeaderMap, HeaderName};

const ALWAYS: [HeaderName; 8] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::UPGRADE,
];

/// Removes the hop-by-hop headers, those the `Connection` header names
/// among them, and `Transfer-Encoding` (hyper frames each hop itself).
///
/// ```
/// use http::HeaderMap;
///
/// let mut headers = HeaderMap::new();
/// headers.insert("connection", "keep-alive, x-hop".parse().unwrap());
/// headers.insert("x-hop", "1".parse().unwrap());
/// headers.insert("keep-alive", "timeout=5".parse().unwrap());
/// headers.insert("x-request-id", "abc".parse().unwrap());
/// corral::strip_hop_by_hop(&mut headers);
/// assert_eq!(headers.len(), 1);
/// assert!(headers.contains_key("x-request-id"));
/// ```
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    // One pass over the few headers a request has, comparing names (an
    // enum compare for the standard ones), instead of nine removals that
    // each hash a name: most requests have none of them.
    let hop = |name: &HeaderName| {
        name == header::TRANSFER_ENCODING || ALWAYS.iter().any(|always| always == name)
    };
    if !headers.keys().any(hop) {
        return;
    }
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok())
        .collect();
    for name in named.iter().chain(ALWAYS.iter()) {
        headers.remove(name);
    }
    headers.remove(header::TRANSFER_ENCODING);
}
