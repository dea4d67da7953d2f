//! The upstream's address in every form `OLLAMA_HOST` takes.

use std::fmt;

use http::uri::{Authority, Scheme};
use http::Uri;

/// A parsed upstream address: scheme, host and port, and a path prefix.
///
/// Follows the official clients' reading of `OLLAMA_HOST`: a bare host
/// gets Ollama's port 11434; a URL with a scheme and no port gets the
/// scheme's port (80 or 443); `:port` means 127.0.0.1.
///
/// ```
/// use corral::UpstreamUrl;
///
/// assert_eq!(UpstreamUrl::parse("gpu-box").unwrap().to_string(), "http://gpu-box:11434");
/// assert_eq!(UpstreamUrl::parse("gpu-box:8080").unwrap().to_string(), "http://gpu-box:8080");
/// assert_eq!(UpstreamUrl::parse(":11434").unwrap().to_string(), "http://127.0.0.1:11434");
/// assert_eq!(UpstreamUrl::parse("https://ollama.example/").unwrap().to_string(), "https://ollama.example:443");
/// assert_eq!(UpstreamUrl::parse("http://10.0.0.2:11434/ollama").unwrap().to_string(), "http://10.0.0.2:11434/ollama");
/// assert!(UpstreamUrl::parse("ftp://x").is_err());
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpstreamUrl {
    scheme: Scheme,
    authority: Authority,
    /// Empty, or a prefix starting with `/` and not ending with one.
    prefix: String,
}

impl UpstreamUrl {
    /// Parses `input`, or says why not.
    pub fn parse(input: &str) -> Result<Self, String> {
        let input = input.trim();
        if input.is_empty() {
            return Err("is empty; give host, host:port or http://host:port".into());
        }
        let (scheme, rest, default_port) = if let Some(rest) = input.strip_prefix("http://") {
            (Scheme::HTTP, rest, 80)
        } else if let Some(rest) = input.strip_prefix("https://") {
            (Scheme::HTTPS, rest, 443)
        } else if input.contains("://") {
            return Err(format!("{input:?}: the scheme must be http or https"));
        } else {
            (Scheme::HTTP, input, 11434)
        };
        let (host_port, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, ""),
        };
        let host_port = if host_port.starts_with(':') {
            format!("127.0.0.1{host_port}")
        } else {
            host_port.to_string()
        };
        let authority: Authority = host_port
            .parse()
            .map_err(|e| format!("{input:?}: not a host and port: {e}"))?;
        if authority.host().is_empty() {
            return Err(format!("{input:?}: no host"));
        }
        // `http` parses the port lazily: "host:x" is an authority whose
        // port() is None. Refuse it rather than append a default.
        let after_host = &authority.as_str()[authority.as_str().rfind(']').map_or(0, |i| i + 1)..];
        if after_host.contains(':') && authority.port_u16().is_none() {
            return Err(format!(
                "{input:?}: the port must be a number from 1 to 65535"
            ));
        }
        if authority.as_str().contains('@') {
            return Err(format!(
                "{input:?}: credentials in the URL are not supported"
            ));
        }
        let authority = if authority.port().is_some() {
            authority
        } else {
            let host = authority.host();
            let host = if host.contains(':') && !host.starts_with('[') {
                format!("[{host}]")
            } else {
                host.to_string()
            };
            format!("{host}:{default_port}")
                .parse()
                .map_err(|e| format!("{input:?}: {e}"))?
        };
        let prefix = path.trim_end_matches('/');
        if prefix.contains(['?', '#']) {
            return Err(format!(
                "{input:?}: a query or fragment has no meaning here"
            ));
        }
        Ok(Self {
            scheme,
            authority,
            prefix: prefix.to_string(),
        })
    }

    /// `http` or `https`.
    pub fn scheme(&self) -> &Scheme {
        &self.scheme
    }

    /// Host and port, as the upstream's `Host` header.
    pub fn authority(&self) -> &Authority {
        &self.authority
    }

    /// The URI for `path_and_query` on the upstream.
    pub fn join(&self, path_and_query: &str) -> Result<Uri, http::Error> {
        let mut pq = String::with_capacity(self.prefix.len() + path_and_query.len());
        pq.push_str(&self.prefix);
        pq.push_str(path_and_query);
        Uri::builder()
            .scheme(self.scheme.clone())
            .authority(self.authority.clone())
            .path_and_query(pq)
            .build()
    }
}

impl fmt::Display for UpstreamUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}://{}{}", self.scheme, self.authority, self.prefix)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ipv6_hosts_get_their_port() {
        assert_eq!(
            UpstreamUrl::parse("http://[::1]").unwrap().to_string(),
            "http://[::1]:80"
        );
        assert_eq!(
            UpstreamUrl::parse("[::1]:9000").unwrap().to_string(),
            "http://[::1]:9000"
        );
    }

    #[test]
    fn a_prefix_is_joined_before_the_path() {
        let url = UpstreamUrl::parse("http://h:1/base/").unwrap();
        assert_eq!(
            url.join("/api/tags?x=1").unwrap().to_string(),
            "http://h:1/base/api/tags?x=1"
        );
    }

    #[test]
    fn garbage_is_refused_with_a_reason() {
        for bad in [
            "",
            "http://",
            "host:notaport",
            "http://u:p@host",
            "http://h/p?q",
        ] {
            assert!(UpstreamUrl::parse(bad).is_err(), "{bad}");
        }
    }
}
