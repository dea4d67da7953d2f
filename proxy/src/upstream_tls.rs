//! The TLS settings of the upstream client: the system's roots and the
//! operator's `ca_file`.

use std::sync::Arc;

use crate::config::UpstreamConfig;

pub(crate) fn tls_config(
    config: &UpstreamConfig,
) -> Result<rustls::ClientConfig, corral_core::ConfigError> {
    use corral_core::ConfigError;
    let mut roots = rustls::RootCertStore::empty();
    let native = rustls_native_certs::load_native_certs();
    for cert in native.certs {
        let _ = roots.add(cert);
    }
    if let Some(path) = &config.ca_file {
        let pem = std::fs::read(path).map_err(|e| {
            ConfigError::new(
                "upstream.ca_file",
                format!("cannot read {}: {e}", path.display()),
            )
        })?;
        let mut found = 0;
        for cert in rustls_pemfile::certs(&mut pem.as_slice()) {
            let cert = cert.map_err(|e| {
                ConfigError::new(
                    "upstream.ca_file",
                    format!("{}: not PEM certificates: {e}", path.display()),
                )
            })?;
            roots.add(cert).map_err(|e| {
                ConfigError::new(
                    "upstream.ca_file",
                    format!("{}: unusable certificate: {e}", path.display()),
                )
            })?;
            found += 1;
        }
        if found == 0 {
            return Err(ConfigError::new(
                "upstream.ca_file",
                format!("{}: holds no PEM certificate", path.display()),
            ));
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| ConfigError::new("upstream", format!("TLS setup failed: {e}")))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(tls)
}
