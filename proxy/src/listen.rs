//! Where to listen, in the forms Ollama users write for `OLLAMA_HOST`:
//! `host`, `host:port`, `:port`, `[v6]:port`, with or without `http://`.

use std::net::{SocketAddr, ToSocketAddrs};

/// The port when only a host is given: next to Ollama's 11434.
pub const DEFAULT_PORT: u16 = 11435;

/// The address `text` names, as Ollama reads `OLLAMA_HOST`: a missing
/// host is every interface (`:11435` is `0.0.0.0:11435`, as Ollama binds
/// it), a missing port is [`DEFAULT_PORT`], a name is looked up.
///
/// ```
/// use corral::listen::parse_listen;
///
/// assert_eq!(parse_listen("127.0.0.1:8080").unwrap().to_string(), "127.0.0.1:8080");
/// assert_eq!(parse_listen(":11435").unwrap().to_string(), "0.0.0.0:11435");
/// assert_eq!(parse_listen("0.0.0.0").unwrap().to_string(), "0.0.0.0:11435");
/// assert_eq!(parse_listen("localhost:9000").unwrap().port(), 9000);
/// assert_eq!(parse_listen("http://[::1]:9000/").unwrap().to_string(), "[::1]:9000");
/// assert!(parse_listen("127.0.0.1:99999").unwrap_err().contains("port"));
/// assert!(parse_listen("").is_err(), "an unset variable opens nothing");
/// assert!(parse_listen("https://0.0.0.0").unwrap_err().contains("plain HTTP"));
/// ```
pub fn parse_listen(text: &str) -> Result<SocketAddr, String> {
    let trimmed = text.trim();
    if trimmed.starts_with("https://") {
        return Err(format!(
            "{text:?}: corral serves plain HTTP; put TLS in front of it (a load balancer, a sidecar)"
        ));
    }
    let rest = trimmed.strip_prefix("http://").unwrap_or(trimmed);
    let hostport = rest.trim_end_matches('/');
    if hostport.is_empty() {
        // An unset variable must not open every interface.
        return Err(format!(
            "{text:?} is empty: give an address such as 127.0.0.1:11435"
        ));
    }
    if hostport.contains('/') {
        return Err(format!("{text:?}: a listen address has no path"));
    }
    if let Ok(addr) = hostport.parse::<SocketAddr>() {
        return Ok(addr);
    }
    if let Ok(ip) = hostport
        .trim_matches(['[', ']'])
        .parse::<std::net::IpAddr>()
    {
        return Ok(SocketAddr::new(ip, DEFAULT_PORT));
    }
    let (host, port) = match hostport.rsplit_once(':') {
        Some((host, port)) if !host.contains(':') || host.ends_with(']') => {
            let port = port
                .parse::<u16>()
                .map_err(|_| format!("{text:?}: the port must be a number from 0 to 65535"))?;
            (host.trim_matches(['[', ']']), port)
        }
        _ => (hostport, DEFAULT_PORT),
    };
    if host.is_empty() {
        return Ok(SocketAddr::from(([0, 0, 0, 0], port)));
    }
    let addresses: Vec<SocketAddr> = (host, port)
        .to_socket_addrs()
        .map_err(|e| format!("{text:?}: cannot resolve {host:?}: {e}"))?
        .collect();
    // `localhost` is often `::1` first; the clients that say it try
    // 127.0.0.1 at least as often, and it is what Ollama binds.
    addresses
        .iter()
        .find(|a| a.is_ipv4())
        .or_else(|| addresses.first())
        .copied()
        .ok_or_else(|| format!("{text:?}: {host:?} resolves to no address"))
}

/// For serde: a listen address in any of [`parse_listen`]'s forms.
pub(crate) mod serde_listen {
    use std::net::SocketAddr;

    use serde::{Deserialize, Deserializer};

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<SocketAddr, D::Error> {
        let text = String::deserialize(d)?;
        super::parse_listen(&text).map_err(serde::de::Error::custom)
    }

    pub(crate) mod option {
        use std::net::SocketAddr;

        use serde::{Deserialize, Deserializer};

        pub(crate) fn deserialize<'de, D: Deserializer<'de>>(
            d: D,
        ) -> Result<Option<SocketAddr>, D::Error> {
            Option::<String>::deserialize(d)?
                .map(|text| super::super::parse_listen(&text).map_err(serde::de::Error::custom))
                .transpose()
        }
    }
}
