//! Ids that are also secrets.

/// A random UUID (version 4) from the operating system's generator: an id
/// that is also a secret (an async job's, a saga's), which agents
/// without keys, who share one identity, hold as their only proof. A
/// UUID, because it goes upstream as an `X-Request-Id` and some servers
/// accept no other shape there.
///
/// ```
/// let id = corral_core::secret_uuid();
/// assert_eq!(id.len(), 36);
/// assert_eq!(&id[14..15], "4", "version 4");
/// assert_ne!(id, corral_core::secret_uuid());
/// ```
pub fn secret_uuid() -> String {
    let mut bits = [0u8; 16];
    if getrandom::getrandom(&mut bits).is_err() {
        // No OS generator (never seen on Linux): still unique.
        let (high, low) = (scrambled(unix_nanos()), scrambled(!unix_nanos()));
        bits[..8].copy_from_slice(&high.to_le_bytes());
        bits[8..].copy_from_slice(&low.to_le_bytes());
    }
    bits[6] = (bits[6] & 0x0f) | 0x40;
    bits[8] = (bits[8] & 0x3f) | 0x80;
    let hex: String = bits.iter().map(|b| format!("{b:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &hex[..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..]
    )
}

fn unix_nanos() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

/// A process-random scramble of `n`, for the fallback only.
fn scrambled(n: u64) -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u64(n);
    hasher.finish()
}
