//! The signing string and its HMAC-SHA256, the same on both sides.
//!
//! ```text
//! CORRAL-HMAC-SHA256
//! {agent id}
//! {METHOD}
//! {path and query, as sent}
//! {X-Timestamp, as sent}
//! {X-Request-Id}
//! {lowercase hex SHA-256 of the body}
//! ```
//!
//! Lines joined with `\n`, no trailing newline; `X-Signature` is the
//! lowercase hex HMAC-SHA256 of that string under the agent's secret.

use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};

type HmacSha256 = Hmac<Sha256>;

/// The first line of every signing string: names the scheme, so a
/// signature for something else never verifies here.
pub const SCHEME: &str = "CORRAL-HMAC-SHA256";

/// What a signature covers.
#[derive(Debug, Clone, Copy)]
pub struct Signed<'a> {
    /// The agent's id, as in `[[agents]] id`.
    pub agent: &'a str,
    /// The HTTP method, upper case.
    pub method: &'a str,
    /// The path and query exactly as sent (`/api/chat`, `/v1/models?x=1`).
    pub path_and_query: &'a str,
    /// `X-Timestamp`: seconds since the Unix epoch, as sent.
    pub timestamp: &'a str,
    /// `X-Request-Id`.
    pub request_id: &'a str,
    /// The request body.
    pub body: &'a [u8],
}

impl Signed<'_> {
    /// The signing string.
    ///
    /// ```
    /// use corral_auth::Signed;
    ///
    /// let signed = Signed {
    ///     agent: "planner-1",
    ///     method: "POST",
    ///     path_and_query: "/api/chat",
    ///     timestamp: "1764115200",
    ///     request_id: "req-42",
    ///     body: b"{}",
    /// };
    /// assert_eq!(
    ///     signed.string(),
    ///     "CORRAL-HMAC-SHA256\nplanner-1\nPOST\n/api/chat\n1764115200\nreq-42\n\
    ///      44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a"
    /// );
    /// ```
    pub fn string(&self) -> String {
        let body = hex(&Sha256::digest(self.body));
        format!(
            "{SCHEME}\n{}\n{}\n{}\n{}\n{}\n{body}",
            self.agent, self.method, self.path_and_query, self.timestamp, self.request_id
        )
    }

    /// Its signature under `secret`, lowercase hex: what a client puts in
    /// `X-Signature`.
    ///
    /// ```
    /// use corral_auth::Signed;
    ///
    /// let signed = Signed {
    ///     agent: "planner-1",
    ///     method: "POST",
    ///     path_and_query: "/api/chat",
    ///     timestamp: "1764115200",
    ///     request_id: "req-42",
    ///     body: b"{}",
    /// };
    /// let signature = signed.sign(b"a shared secret");
    /// assert_eq!(signature.len(), 64);
    /// assert!(signed.verify(b"a shared secret", &signature));
    /// assert!(!signed.verify(b"another secret", &signature));
    /// ```
    pub fn sign(&self, secret: &[u8]) -> String {
        hex(&self.mac(secret).finalize().into_bytes())
    }

    /// Whether `signature` (hex, either case) is this request's under
    /// `secret`; compared in constant time.
    pub fn verify(&self, secret: &[u8], signature: &str) -> bool {
        let Some(bytes) = unhex(signature.trim()) else {
            return false;
        };
        self.mac(secret).verify_slice(&bytes).is_ok()
    }

    fn mac(&self, secret: &[u8]) -> HmacSha256 {
        // HMAC takes a key of any length, so this cannot fail.
        let mut mac = <HmacSha256 as Mac>::new_from_slice(secret)
            .unwrap_or_else(|_| unreachable!("HMAC accepts keys of any length"));
        mac.update(self.string().as_bytes());
        mac
    }
}

fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for byte in bytes {
        out.push(char::from(DIGITS[usize::from(byte >> 4)]));
        out.push(char::from(DIGITS[usize::from(byte & 0xf)]));
    }
    out
}

fn unhex(text: &str) -> Option<Vec<u8>> {
    if text.len() % 2 != 0 || text.len() > 256 {
        return None;
    }
    let digit = |c: u8| char::from(c).to_digit(16).map(|d| d as u8);
    text.as_bytes()
        .chunks(2)
        .map(|pair| Some(digit(pair[0])? << 4 | digit(pair[1])?))
        .collect()
}

/// The SHA-256 of `key`, lowercase hex, as `[[agents]] key_sha256` holds
/// it: what `corral hash-key` prints.
///
/// ```
/// assert_eq!(
///     corral_auth::key_digest("sk-corral-example"),
///     "1ccf0cc57f35d568586579a28ccc88c3f5ae299b41f3f50726c101f970bc233e"
/// );
/// ```
pub fn key_digest(key: &str) -> String {
    hex(&Sha256::digest(key.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The README's worked example, computed there with Python's `hmac`.
    #[test]
    fn the_readme_example_signs_as_documented() {
        let body = br#"{"model":"llama3","messages":[{"role":"user","content":"hi"}]}"#;
        let signed = Signed {
            agent: "planner-1",
            method: "POST",
            path_and_query: "/api/chat",
            timestamp: "1764115200",
            request_id: "req-42",
            body,
        };
        assert!(signed
            .string()
            .ends_with("\n4bdbd87b7ed7b2d6a20949d5447c2cfc021f5e21278dd4320acfccd23d2b2a7a"));
        assert_eq!(
            signed.sign(b"a secret of sixteen bytes or more"),
            "10e38282835a68dbc04489e5b5b9edfa73db774b70d9a1ed2645d0b1e8038a30"
        );
    }

    fn signed(body: &[u8]) -> Signed<'_> {
        Signed {
            agent: "a",
            method: "POST",
            path_and_query: "/api/generate",
            timestamp: "1700000000",
            request_id: "r1",
            body,
        }
    }

    #[test]
    fn hex_round_trips_and_refuses_what_is_not_hex() {
        assert_eq!(hex(&[0x00, 0xab, 0xff]), "00abff");
        assert_eq!(unhex("00abFF"), Some(vec![0x00, 0xab, 0xff]));
        assert_eq!(unhex("abc"), None);
        assert_eq!(unhex("zz"), None);
        assert_eq!(unhex(&"a".repeat(258)), None);
    }

    #[test]
    fn any_change_to_what_is_signed_breaks_the_signature() {
        let secret = b"s3cret";
        let signature = signed(b"{\"model\":\"m\"}").sign(secret);
        assert!(signed(b"{\"model\":\"m\"}").verify(secret, &signature));
        assert!(!signed(b"{\"model\":\"M\"}").verify(secret, &signature));
        let mut other = signed(b"{\"model\":\"m\"}");
        other.timestamp = "1700000001";
        assert!(!other.verify(secret, &signature));
        other = signed(b"{\"model\":\"m\"}");
        other.request_id = "r2";
        assert!(!other.verify(secret, &signature));
        other = signed(b"{\"model\":\"m\"}");
        other.agent = "b";
        assert!(!other.verify(secret, &signature));
        other = signed(b"{\"model\":\"m\"}");
        other.path_and_query = "/api/chat";
        assert!(!other.verify(secret, &signature));
        assert!(!signed(b"{\"model\":\"m\"}").verify(secret, "not hex"));
        assert!(signed(b"{\"model\":\"m\"}").verify(secret, &signature.to_uppercase()));
    }
}
