//! Addresses an agent may aim the proxy at.

use std::net::IpAddr;

/// Whether `ip` is loopback, private, link-local, shared, multicast or
/// reserved: an address a request that an agent aims (a job's callback,
/// a saga's step, a registered endpoint) must not reach unless the
/// operator allows it, lest the proxy become a way into its own network.
/// IPv4 addresses embedded in IPv6 (mapped, NAT64, 6to4, compatible)
/// are judged as the IPv4 address they carry.
///
/// ```
/// use corral_core::net::private_address;
///
/// assert!(private_address("169.254.169.254".parse().unwrap()));
/// assert!(private_address("::ffff:10.0.0.1".parse().unwrap()));
/// assert!(!private_address("1.1.1.1".parse().unwrap()));
/// ```
pub fn private_address(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            v4.is_loopback()
                || v4.is_private()
                || v4.is_link_local()
                || v4.is_unspecified()
                || v4.is_broadcast()
                || v4.octets()[0] == 100 && (64..128).contains(&v4.octets()[1])
        }
        IpAddr::V6(v6) => {
            v6.is_loopback()
                || v6.is_unspecified()
                || (v6.segments()[0] & 0xfe00) == 0xfc00
                || (v6.segments()[0] & 0xffc0) == 0xfe80
                || v6
                    .to_ipv4_mapped()
                    .is_some_and(|v4| private_address(IpAddr::V4(v4)))
        }
    }
}

/// The private address `host` names literally (an IP, bracketed or
/// not), if it does: a name is only known once resolved.
///
/// ```
/// use corral_core::net::literal_private;
///
/// assert!(literal_private("[::1]").is_some());
/// assert!(literal_private("10.0.0.7").is_some());
/// assert!(literal_private("inventory.internal").is_none(), "a name: checked when resolved");
/// ```
pub fn literal_private(host: &str) -> Option<IpAddr> {
    host.trim_matches(['[', ']'])
        .parse::<IpAddr>()
        .ok()
        .filter(|ip| private_address(*ip))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn private_addresses_are_told_apart_from_public_ones() {
        for ip in [
            "127.0.0.1",
            "10.1.2.3",
            "192.168.0.1",
            "172.16.5.4",
            "169.254.169.254",
            "0.0.0.0",
            "::1",
            "fd00::1",
            "fe80::1",
            "100.64.0.1",
            "::ffff:127.0.0.1",
        ] {
            assert!(private_address(ip.parse().unwrap()), "{ip}");
        }
        for ip in [
            "8.8.8.8",
            "1.1.1.1",
            "2606:4700::1111",
            "64:ff9b::808:808",
            "2002:808:808::",
        ] {
            assert!(!private_address(ip.parse().unwrap()), "{ip}");
        }
    }
}
