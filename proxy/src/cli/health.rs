//! `corral health [URL]`: asks a running `corral` whether it is alive (or
//! ready), for container health checks that have no shell or curl.
//!
//! Exits 0 only when `/corral/healthz` answers 200 with `"status":"ok"`
//! (`/corral/readyz` with `--ready`: 200 with `"status":"ready"`), 1 on
//! anything else, with one line on stderr saying why.
//!
//! ```
//! use corral::cli::health::{verdict, Probe};
//!
//! let ok = verdict(Probe::Alive, 200, br#"{"status":"ok"}"#);
//! assert_eq!(ok.unwrap(), "ok");
//! // The words matter, not a substring: "not ready" is not "ready".
//! let down = verdict(Probe::Ready, 503, br#"{"status":"not ready","error":"connection refused"}"#);
//! assert_eq!(down.unwrap_err(), "503 Service Unavailable: not ready: connection refused");
//! ```

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::process::ExitCode;
use std::time::Duration;

use bytes::Bytes;
use http::{header, Request, StatusCode};
use http_body_util::{BodyExt, Empty, Limited};
use hyper_util::rt::TokioIo;

/// Where `corral health` looks without a URL (and without
/// `CORRAL_LISTEN`): where `corral` listens by default.
pub const DEFAULT_HEALTH_URL: &str = "http://127.0.0.1:11435";

/// How long the whole check may take unless `--timeout` says otherwise:
/// well within the probe timeouts of Docker (30 s) and compose.
pub const DEFAULT_HEALTH_TIMEOUT: Duration = Duration::from_secs(5);

/// The most bytes of the probe's answer read: healthz and readyz answer
/// a few dozen.
const MAX_ANSWER_BYTES: usize = 64 * 1024;

/// Which probe to ask.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Probe {
    /// `/corral/healthz`: the process serves (liveness).
    Alive,
    /// `/corral/readyz`: the upstream answers too (readiness).
    Ready,
}

impl Probe {
    /// The probe's path.
    pub fn path(self) -> &'static str {
        match self {
            Probe::Alive => "/corral/healthz",
            Probe::Ready => "/corral/readyz",
        }
    }

    /// The `status` a healthy answer carries.
    fn expected(self) -> &'static str {
        match self {
            Probe::Alive => "ok",
            Probe::Ready => "ready",
        }
    }
}

/// The address to connect to for `text`, in any form `--listen` and
/// `OLLAMA_HOST` take (`host`, `host:port`, `:port`, `http://host:port`);
/// an unspecified address (`0.0.0.0`, `::`, a bare `:port`), which a
/// server listens on but a client cannot reach, is asked on loopback.
///
/// ```
/// use corral::cli::health::probe_address;
///
/// assert_eq!(probe_address("0.0.0.0:11435").unwrap().to_string(), "127.0.0.1:11435");
/// assert_eq!(probe_address(":8080").unwrap().to_string(), "127.0.0.1:8080");
/// assert_eq!(probe_address("http://[::]:9464/").unwrap().to_string(), "[::1]:9464");
/// assert_eq!(probe_address("10.0.0.7").unwrap().to_string(), "10.0.0.7:11435");
/// assert!(probe_address("https://corral.example").unwrap_err().contains("plain HTTP"));
/// ```
pub fn probe_address(text: &str) -> Result<SocketAddr, String> {
    if text.trim().starts_with("https://") {
        return Err(format!(
            "{text:?}: corral serves plain HTTP; check it directly, not through a TLS proxy"
        ));
    }
    let mut addr = crate::listen::parse_listen(text)?;
    match addr.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => addr.set_ip(Ipv4Addr::LOCALHOST.into()),
        IpAddr::V6(ip) if ip.is_unspecified() => addr.set_ip(Ipv6Addr::LOCALHOST.into()),
        _ => {}
    }
    if addr.port() == 0 {
        return Err(format!("{text:?}: port 0 names no listener; give its port"));
    }
    Ok(addr)
}

/// Whether a probe's answer (`status` and body) is healthy: `Ok` with
/// what it said, or `Err` with one line saying why not.
///
/// Healthy is HTTP 200 with a JSON body whose `status` is exactly `ok`
/// (for [`Probe::Alive`]) or `ready` (for [`Probe::Ready`]).
pub fn verdict(probe: Probe, status: u16, body: &[u8]) -> Result<String, String> {
    let json: Option<serde_json::Value> = serde_json::from_slice(body).ok();
    let said = json
        .as_ref()
        .and_then(|j| j.get("status"))
        .and_then(|s| s.as_str());
    let status_line = StatusCode::from_u16(status)
        .map(|s| s.to_string())
        .unwrap_or_else(|_| status.to_string());
    if status != 200 {
        let error = json.as_ref().and_then(|j| j.get("error")).map(|e| match e {
            serde_json::Value::String(s) => s.clone(),
            other => other.to_string(),
        });
        return Err(match (said, error) {
            (Some(said), Some(error)) => format!("{status_line}: {said}: {error}"),
            (Some(said), None) => format!("{status_line}: {said}"),
            (None, Some(error)) => format!("{status_line}: {error}"),
            (None, None) => status_line,
        });
    }
    match said {
        Some(said) if said == probe.expected() => {
            let mut line = said.to_string();
            if let Some(version) = json
                .as_ref()
                .and_then(|j| j.get("version"))
                .and_then(|v| v.as_str())
            {
                line.push_str(&format!(" (upstream version {version})"));
            }
            Ok(line)
        }
        Some(said) => Err(format!(
            "{status_line} but status {said:?}, not {:?}",
            probe.expected()
        )),
        None => Err(format!(
            "{status_line} but no JSON status in the answer: is this corral?"
        )),
    }
}

/// Asks `addr` for `probe` within `timeout`; the verdict.
pub async fn check(addr: SocketAddr, probe: Probe, timeout: Duration) -> Result<String, String> {
    match tokio::time::timeout(timeout, ask(addr, probe)).await {
        Ok(answer) => {
            let (status, body) = answer?;
            verdict(probe, status, &body)
        }
        Err(_) => Err(format!(
            "no answer within {}",
            humantime::format_duration(timeout)
        )),
    }
}

async fn ask(addr: SocketAddr, probe: Probe) -> Result<(u16, Bytes), String> {
    let stream = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|e| format!("cannot connect: {e}"))?;
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| format!("cannot speak HTTP: {e}"))?;
    let driver = tokio::spawn(connection);
    let request = Request::get(probe.path())
        .header(header::HOST, addr.to_string())
        .header(
            header::USER_AGENT,
            concat!("corral-health/", env!("CARGO_PKG_VERSION")),
        )
        .body(Empty::<Bytes>::new())
        .map_err(|e| e.to_string())?;
    let response = sender
        .send_request(request)
        .await
        .map_err(|e| format!("no answer: {}", crate::upstream::root_cause(&e)))?;
    let status = response.status().as_u16();
    let body = Limited::new(response.into_body(), MAX_ANSWER_BYTES)
        .collect()
        .await
        .map_err(|e| format!("the answer broke off: {e}"))?
        .to_bytes();
    driver.abort();
    Ok((status, body))
}

/// Runs `corral health`: 0 when healthy, 1 otherwise.
pub(crate) fn run(url: Option<&str>, probe: Probe, timeout: Duration) -> ExitCode {
    let url = url.unwrap_or(DEFAULT_HEALTH_URL);
    let addr = match probe_address(url) {
        Ok(addr) => addr,
        Err(e) => {
            eprintln!("corral health: {e}");
            return ExitCode::FAILURE;
        }
    };
    let target = format!("http://{addr}{}", probe.path());
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("corral health: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(check(addr, probe, timeout)) {
        Ok(said) => {
            println!("{target}: {said}");
            ExitCode::SUCCESS
        }
        Err(why) => {
            eprintln!("corral health: {target}: {why}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_200_that_says_the_right_word_is_healthy() {
        let cases: [(Probe, u16, &str, Result<&str, &str>); 9] = [
            (Probe::Alive, 200, r#"{"status":"ok"}"#, Ok("ok")),
            (
                Probe::Ready,
                200,
                r#"{"status":"ready","version":"0.9.0"}"#,
                Ok("ready (upstream version 0.9.0)"),
            ),
            (
                Probe::Ready,
                503,
                r#"{"status":"not ready","error":"timed out"}"#,
                Err("503 Service Unavailable: not ready: timed out"),
            ),
            (
                Probe::Ready,
                200,
                r#"{"status":"not ready"}"#,
                Err("200 OK but status \"not ready\", not \"ready\""),
            ),
            (
                Probe::Alive,
                200,
                r#"{"status":"ready"}"#,
                Err("200 OK but status \"ready\", not \"ok\""),
            ),
            (
                Probe::Alive,
                200,
                "ok",
                Err("200 OK but no JSON status in the answer: is this corral?"),
            ),
            (Probe::Alive, 404, "", Err("404 Not Found")),
            (
                Probe::Alive,
                401,
                r#"{"error":"the admin API needs the admin token"}"#,
                Err("401 Unauthorized: the admin API needs the admin token"),
            ),
            (Probe::Alive, 599, "", Err("599 <unknown status code>")),
        ];
        for (probe, status, body, expected) in cases {
            let got = verdict(probe, status, body.as_bytes());
            assert_eq!(
                got.as_deref().map_err(String::as_str),
                expected,
                "{probe:?} {status} {body}"
            );
        }
    }

    #[test]
    fn addresses_take_the_listen_forms_and_unspecified_means_loopback() {
        for (given, expected) in [
            ("127.0.0.1:11435", "127.0.0.1:11435"),
            ("http://127.0.0.1:9000", "127.0.0.1:9000"),
            (":11435", "127.0.0.1:11435"),
            ("0.0.0.0", "127.0.0.1:11435"),
            ("[::]:1", "[::1]:1"),
            ("localhost:7", "127.0.0.1:7"),
        ] {
            assert_eq!(
                probe_address(given).unwrap().to_string(),
                expected,
                "{given}"
            );
        }
        for bad in ["127.0.0.1:0", "https://x", "http://h:1/path", "h:port"] {
            assert!(probe_address(bad).is_err(), "{bad}");
        }
    }
}
