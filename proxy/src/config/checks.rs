//! What the types alone cannot check: bounds, combinations, and whether
//! the admin API would be open to the network.

use std::time::Duration;

use corral_core::ConfigError;

use super::{AdminConfig, Backend, Config, ServerConfig, StateConfig, UpstreamConfig};
use crate::upstream_url::UpstreamUrl;

/// The longest a client timeout may be set to.
const MAX_CLIENT_TIMEOUT: Duration = Duration::from_secs(24 * 60 * 60);

impl Config {
    /// Checks what types alone cannot, section by section.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.upstream.validate()?;
        self.server.validate()?;
        for (i, class) in self.classes.iter().enumerate() {
            if !class.weight.is_finite() || class.weight <= 0.0 {
                return Err(ConfigError::new(
                    format!("classes[{i}].weight"),
                    "must be a number above 0",
                ));
            }
        }
        self.state.validate()?;
        self.jobs.validate().map_err(|e| e.within("jobs"))?;
        self.registry.validate().map_err(|e| e.within("registry"))?;
        self.sagas.validate().map_err(|e| e.within("sagas"))?;
        super::models::validate(&self.models)?;
        super::upstreams::validate(&self.upstreams)?;
        self.check_upstreams()?;
        self.check_traces()?;
        self.admin.validate(self.server.listen)
    }

    /// `[traces] otlp_endpoint` is an `http://` address, in a build that
    /// can export.
    fn check_traces(&self) -> Result<(), ConfigError> {
        let Some(endpoint) = &self.traces.otlp_endpoint else {
            return Ok(());
        };
        if !cfg!(feature = "otlp") {
            return Err(ConfigError::new(
                "traces.otlp_endpoint",
                "this build of corral has no `otlp` feature",
            ));
        }
        let ok = endpoint
            .parse::<http::Uri>()
            .is_ok_and(|u| u.scheme_str() == Some("http") && u.host().is_some());
        if !ok {
            return Err(ConfigError::new(
                "traces.otlp_endpoint",
                format!("{endpoint:?}: give the collector's OTLP/HTTP address, http://host:4318"),
            ));
        }
        Ok(())
    }

    /// `[[upstreams]]` stand alone: `[upstream]` then keeps the connection
    /// settings only.
    fn check_upstreams(&self) -> Result<(), ConfigError> {
        if self.upstream.max_loaded_models == Some(0) {
            return Err(ConfigError::new(
                "upstream.max_loaded_models",
                "must be at least 1",
            ));
        }
        if self.upstreams.is_empty() {
            return Ok(());
        }
        if self.upstream.max_loaded_models.is_some() {
            return Err(ConfigError::new(
                "upstream.max_loaded_models",
                "with [[upstreams]], each upstream has its own max_loaded_models: move it there",
            ));
        }
        if self.upstream.capacity.is_some() || !self.upstream.model_capacity.is_empty() {
            return Err(ConfigError::new(
                "upstream.capacity",
                "with [[upstreams]], each upstream has its own capacity and model_capacity: move them there",
            ));
        }
        Ok(())
    }

    /// Refuses an admin API open to the network: where `/corral/*` and
    /// `/metrics` are served (`admin.listen`, else `server.listen`) is not
    /// a loopback address and no token guards them. Checked when the proxy
    /// starts, after the flags and environment (a file may leave the token
    /// to `CORRAL_ADMIN_TOKEN`), not by `check-config`.
    ///
    /// ```
    /// let mut config = corral::Config::default();
    /// assert!(config.check_admin_exposure().is_ok(), "127.0.0.1 by default");
    /// config.server.listen = "0.0.0.0:11435".parse().unwrap();
    /// assert_eq!(config.check_admin_exposure().unwrap_err().key(), "admin.token");
    /// config.admin.listen = Some("127.0.0.1:9464".parse().unwrap());
    /// assert!(config.check_admin_exposure().is_ok(), "admin on loopback only");
    /// ```
    pub fn check_admin_exposure(&self) -> Result<(), ConfigError> {
        let (address, key) = match self.admin.listen {
            Some(admin) => (admin, "admin.listen"),
            None => (self.server.listen, "server.listen"),
        };
        if self.admin.token.is_some() || address.ip().is_loopback() {
            return Ok(());
        }
        Err(ConfigError::new(
            "admin.token",
            format!(
                "the admin API (/corral/*, /metrics) would be open on {address} ({key}), which is not a loopback address: set a token (CORRAL_ADMIN_TOKEN or [admin] token) or put admin.listen on 127.0.0.1"
            ),
        ))
    }
}

impl ServerConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        if self.max_request_bytes == 0 {
            return Err(ConfigError::new(
                "server.max_request_bytes",
                "must be at least 1",
            ));
        }
        if self.max_header_bytes < 8192 {
            // hyper's smallest read buffer; a request line alone can
            // take a few KiB.
            return Err(ConfigError::new(
                "server.max_header_bytes",
                "must be at least 8192",
            ));
        }
        // Upper bounds too: hyper sizes its header arrays by max_headers
        // on every parse, and a deadline past the clock's range panics.
        for (key, value, most) in [
            ("server.max_headers", self.max_headers, 10_000),
            ("server.max_json_depth", self.max_json_depth, 100_000),
            ("server.max_messages", self.max_messages, usize::MAX),
        ] {
            if value == 0 || value > most {
                return Err(ConfigError::new(
                    key,
                    format!("must be between 1 and {most}"),
                ));
            }
        }
        for (key, value) in [
            ("server.body_read_timeout", self.body_read_timeout),
            ("server.write_stall_timeout", self.write_stall_timeout),
            ("server.header_read_timeout", self.header_read_timeout),
        ] {
            if value.is_zero() || value > MAX_CLIENT_TIMEOUT {
                return Err(ConfigError::new(
                    key,
                    "must be more than zero and at most a day",
                ));
            }
        }
        Ok(())
    }
}

impl UpstreamConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        UpstreamUrl::parse(&self.url).map_err(|reason| ConfigError::new("upstream.url", reason))?;
        for (key, value) in [
            ("upstream.probe_interval", self.probe_interval),
            ("upstream.connect_timeout", self.connect_timeout),
        ] {
            if value.is_zero() {
                return Err(ConfigError::new(key, "must be more than zero"));
            }
        }
        if self.capacity == Some(0) {
            return Err(ConfigError::new("upstream.capacity", "must be at least 1"));
        }
        for (model, capacity) in &self.model_capacity {
            if *capacity == 0 {
                return Err(ConfigError::new(
                    format!("upstream.model_capacity.{model}"),
                    "must be at least 1",
                ));
            }
        }
        Ok(())
    }
}

impl StateConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        match (&self.backend, &self.redis_url) {
            (Backend::Redis, None) => {
                return Err(ConfigError::new(
                    "state.redis_url",
                    "is required with backend = \"redis\"",
                ))
            }
            (_, Some(url)) => corral_auth::RedisReplay::check_url(url)
                .map_err(|e| ConfigError::new("state.redis_url", format!("{url:?}: {e}")))?,
            _ => {}
        }
        if self.replicas == 0 {
            return Err(ConfigError::new(
                "state.replicas",
                "must be at least 1: this replica is one",
            ));
        }
        if self.redis_timeout.is_zero() {
            return Err(ConfigError::new(
                "state.redis_timeout",
                "must be more than zero",
            ));
        }
        Ok(())
    }
}

impl AdminConfig {
    fn validate(&self, server_listen: std::net::SocketAddr) -> Result<(), ConfigError> {
        if let Some(admin) = self.listen {
            // Port 0 is any free port: two of them never collide.
            if admin == server_listen && admin.port() != 0 {
                return Err(ConfigError::new(
                    "admin.listen",
                    "is the same address as server.listen; leave it out to serve admin paths on the main listener",
                ));
            }
        }
        if let Some(token) = &self.token {
            if token.trim().is_empty() || token.chars().any(|c| c.is_whitespace() || c.is_control())
            {
                return Err(ConfigError::new(
                    "admin.token",
                    "must be non-empty and hold no spaces or control characters (it travels in an Authorization header)",
                ));
            }
        }
        Ok(())
    }
}
