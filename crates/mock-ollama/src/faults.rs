//! Faults a single request asks for with `X-Mock-Fault`, and the dice of
//! the global fault rates.

use std::time::Duration;

/// Faults for one request, from `X-Mock-Fault: key=value, key, ...`.
///
/// - `status=N`: answer N at once with an error body in the path's shape
///   (Ollama's, OpenAI's or Anthropic's; `busy` is `status=503` with
///   Ollama's "server busy" text);
/// - `busy_attempts=N`: answer 503 "server busy" to the first N attempts
///   of a request (by `X-Mock-Id`), then serve it;
/// - `stall_after=N` (`stall_ms=M`): stop sending after N chunks, keeping
///   the connection open;
/// - `drop_after=N`: break the connection after N chunks, which reach the
///   client first;
/// - `pause_after=N`: after N chunks wait until released
///   (`POST /mock/release`);
/// - `slow_headers_ms=M`: wait M ms before the headers;
/// - `tokens=N`, `ttft_ms=M`, `tps=X`: this request's answer length and
///   speed.
///
/// A chunk is a frame of the stream: an NDJSON line, or one SSE event
/// (the first token of `/v1/messages` and `/v1/responses` comes after
/// their opening events, each a chunk of its own).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Faults {
    /// Answer with this status at once.
    pub status: Option<u16>,
    /// Answer 503 "server busy" to the first this many attempts of a
    /// request (attempts share an `X-Mock-Id`), then serve it.
    pub busy_attempts: Option<usize>,
    /// Stop sending after this many chunks.
    pub stall_after: Option<usize>,
    /// How long the stall lasts.
    pub stall: Option<Duration>,
    /// Break the connection after this many chunks.
    pub drop_after: Option<usize>,
    /// Wait for a release after this many chunks.
    pub pause_after: Option<usize>,
    /// Wait this long before the headers.
    pub slow_headers: Option<Duration>,
    /// Answer length in tokens.
    pub tokens: Option<usize>,
    /// Time to first token.
    pub ttft: Option<Duration>,
    /// Tokens per second.
    pub tokens_per_sec: Option<f64>,
    /// The test's name for the request (`X-Mock-Id`), which
    /// `busy_attempts` counts attempts by.
    pub mock_id: Option<String>,
}

impl Faults {
    /// Parses the header's value; unknown keys are an error naming them.
    pub fn parse(value: &str) -> Result<Self, String> {
        let mut faults = Faults::default();
        for item in value.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            let (key, val) = item.split_once('=').unwrap_or((item, ""));
            let num = || {
                val.trim()
                    .parse::<u64>()
                    .map_err(|_| format!("X-Mock-Fault: {key} needs a whole number"))
            };
            let ms = || num().map(Duration::from_millis);
            match key.trim() {
                "busy" => faults.status = Some(503),
                "busy_attempts" => faults.busy_attempts = Some(num()? as usize),
                "status" => faults.status = Some(num()? as u16),
                "stall_after" => faults.stall_after = Some(num()? as usize),
                "stall_ms" => faults.stall = Some(ms()?),
                "drop_after" => faults.drop_after = Some(num()? as usize),
                "pause_after" => faults.pause_after = Some(num()? as usize),
                "slow_headers_ms" => faults.slow_headers = Some(ms()?),
                "tokens" => faults.tokens = Some(num()? as usize),
                "ttft_ms" => faults.ttft = Some(ms()?),
                "tps" => {
                    faults.tokens_per_sec = Some(
                        val.trim()
                            .parse::<f64>()
                            .ok()
                            .filter(|v| *v > 0.0)
                            .ok_or("X-Mock-Fault: tps needs a positive number")?,
                    )
                }
                other => return Err(format!("X-Mock-Fault: unknown fault {other:?}")),
            }
        }
        Ok(faults)
    }
}

impl Faults {
    /// The faults for this attempt: `busy_attempts` becomes a 503 while
    /// the request has attempts left to fail.
    pub(crate) fn resolve(&self, state: &crate::state::State) -> Faults {
        let mut faults = self.clone();
        if let (Some(n), Some(id)) = (self.busy_attempts, &self.mock_id) {
            if state.attempt(id) < n {
                faults.status = Some(503);
            }
        }
        faults
    }
}

/// A small deterministic generator (xorshift64*), so that a seeded run
/// injects the same faults again.
#[derive(Debug)]
pub(crate) struct Dice(u64);

impl Dice {
    pub(crate) fn new(seed: u64) -> Self {
        Self(seed.max(1))
    }

    /// True with probability `p`.
    pub(crate) fn roll(&mut self, p: f64) -> bool {
        if p <= 0.0 {
            return false;
        }
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        let r = (x.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 11) as f64 / (1u64 << 53) as f64;
        r < p
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_fault_header_parses_every_key() {
        let f = Faults::parse("stall_after=3, stall_ms=50,drop_after=5,pause_after=1,slow_headers_ms=7,tokens=9,ttft_ms=2,tps=10.5").unwrap();
        assert_eq!(f.stall_after, Some(3));
        assert_eq!(f.stall, Some(Duration::from_millis(50)));
        assert_eq!(f.drop_after, Some(5));
        assert_eq!(f.pause_after, Some(1));
        assert_eq!(f.slow_headers, Some(Duration::from_millis(7)));
        assert_eq!(f.tokens, Some(9));
        assert_eq!(f.ttft, Some(Duration::from_millis(2)));
        assert_eq!(f.tokens_per_sec, Some(10.5));
        assert_eq!(Faults::parse("busy").unwrap().status, Some(503));
        assert!(Faults::parse("explode").unwrap_err().contains("explode"));
    }

    #[test]
    fn dice_follow_their_probability() {
        let mut dice = Dice::new(42);
        let hits = (0..10_000).filter(|_| dice.roll(0.25)).count();
        assert!((2_200..2_800).contains(&hits), "{hits}");
        assert!(!(0..100).any(|_| dice.roll(0.0)));
    }
}
