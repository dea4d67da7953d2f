//! The headers a proxy owes the upstream on every request: none of the
//! hop-by-hop ones, who forwarded it (`X-Forwarded-For`,
//! `X-Forwarded-Proto`), and the request id.

use std::net::SocketAddr;

use corral_core::headers;
use http::HeaderValue;

use crate::hop::strip_hop_by_hop;

/// The headers a proxy owes the upstream: no hop-by-hop ones and who
/// forwarded it; and the request id, for the layers that read it there
/// (a signature covers it), which the upstream client takes off again.
pub(crate) fn forwarding_headers(
    head: &mut http::HeaderMap,
    request_id: Option<&HeaderValue>,
    peer: SocketAddr,
) {
    strip_hop_by_hop(head);
    if let Some(value) = request_id {
        head.insert(headers::X_REQUEST_ID, value.clone());
    }
    forwarded_for(head, peer);
    head.insert(headers::X_FORWARDED_PROTO, HeaderValue::from_static("http"));
}

/// Appends the client's address to `X-Forwarded-For`.
fn forwarded_for(headers: &mut http::HeaderMap, peer: SocketAddr) {
    let mut digits = [0u8; 15];
    let ip = match peer.ip() {
        std::net::IpAddr::V4(v4) => ipv4_text(v4, &mut digits),
        std::net::IpAddr::V6(v6) => std::borrow::Cow::Owned(v6.to_string()),
    };
    let value = match headers
        .get(headers::X_FORWARDED_FOR)
        .and_then(|v| v.to_str().ok())
    {
        Some(existing) if !existing.trim().is_empty() => {
            HeaderValue::from_str(&format!("{existing}, {ip}"))
        }
        _ => HeaderValue::from_str(&ip),
    };
    if let Ok(value) = value {
        headers.insert(headers::X_FORWARDED_FOR, value);
    }
}

/// An IPv4 address in dotted decimal, written into `out`: `Display` for
/// `Ipv4Addr` was ~1,500 instructions a request (callgrind,
/// benches/RESULTS.md), most of it the formatting machinery.
fn ipv4_text(ip: std::net::Ipv4Addr, out: &mut [u8; 15]) -> std::borrow::Cow<'_, str> {
    let mut len = 0;
    for (i, octet) in ip.octets().into_iter().enumerate() {
        if i > 0 {
            out[len] = b'.';
            len += 1;
        }
        let (hundreds, tens, ones) = (octet / 100, octet / 10 % 10, octet % 10);
        if hundreds > 0 {
            out[len] = b'0' + hundreds;
            len += 1;
        }
        if hundreds > 0 || tens > 0 {
            out[len] = b'0' + tens;
            len += 1;
        }
        out[len] = b'0' + ones;
        len += 1;
    }
    std::borrow::Cow::Borrowed(std::str::from_utf8(&out[..len]).unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_ipv4_address_is_written_as_display_writes_it() {
        for ip in [
            "0.0.0.0",
            "127.0.0.1",
            "10.20.30.40",
            "192.168.100.9",
            "255.255.255.255",
            "1.0.10.100",
        ] {
            let ip: std::net::Ipv4Addr = ip.parse().unwrap();
            let mut out = [0u8; 15];
            assert_eq!(ipv4_text(ip, &mut out), ip.to_string());
        }
    }

    #[test]
    fn the_client_address_is_appended_to_x_forwarded_for() {
        let peer: SocketAddr = "10.0.0.7:5000".parse().unwrap();
        let mut head = http::HeaderMap::new();
        forwarded_for(&mut head, peer);
        assert_eq!(head[headers::X_FORWARDED_FOR], "10.0.0.7");
        forwarded_for(&mut head, "[::1]:80".parse().unwrap());
        assert_eq!(head[headers::X_FORWARDED_FOR], "10.0.0.7, ::1");
    }
}
