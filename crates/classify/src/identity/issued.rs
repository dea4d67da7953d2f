//! API keys issued while serving (`POST /corral/keys`), next to the
//! configuration's: looked up by digest when the configuration does not
//! know a key.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::RwLock;

use corral_core::AgentId;

/// The API keys issued at run time, by the SHA-256 of the key (never the
/// key itself). Filled and emptied by whoever keeps them (the proxy,
/// from its keys file or Redis, and the other replicas' announcements);
/// read by every request whose key the configuration does not know.
///
/// ```
/// use corral_classify::IssuedKeys;
///
/// let keys = IssuedKeys::default();
/// let digest = [7u8; 32];
/// keys.insert(digest, "night-batch".into(), "batch".into(), 1_700_000_000.0);
/// assert_eq!(keys.list()[0].agent.as_str(), "night-batch");
/// // Revoked, it is kept to be refused as such.
/// assert!(keys.revoke(&digest));
/// assert!(keys.list()[0].revoked);
/// assert!(!keys.revoke(&digest), "once");
/// assert!(keys.remove(&digest));
/// assert!(keys.list().is_empty());
/// ```
#[derive(Debug, Default)]
pub struct IssuedKeys {
    by_digest: RwLock<HashMap<[u8; 32], Entry>>,
}

#[derive(Debug)]
struct Entry {
    agent: AgentId,
    class: String,
    created: f64,
    /// Seconds since the Unix epoch, as `f64` bits; 0: never.
    last_used: AtomicU64,
    /// Refused as revoked, not taken for an unknown key.
    revoked: bool,
}

/// What a key's digest finds.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Found {
    /// A key issued for this agent, of this class.
    Valid(AgentId, String),
    /// A key that was revoked.
    Revoked,
}

/// One issued key, as listed.
#[derive(Debug, Clone, PartialEq)]
pub struct IssuedKey {
    /// The SHA-256 of the key, in hex.
    pub digest: String,
    /// The agent it names.
    pub agent: AgentId,
    /// Its class.
    pub class: String,
    /// When it was issued, seconds since the Unix epoch.
    pub created: f64,
    /// When a request last came with it, if one did (on this replica).
    pub last_used: Option<f64>,
    /// It was revoked: refused (401) as such.
    pub revoked: bool,
}

impl IssuedKeys {
    /// Adds (or replaces) the key of SHA-256 `digest`, for `agent` of
    /// `class`, issued at `created`.
    pub fn insert(&self, digest: [u8; 32], agent: AgentId, class: String, created: f64) {
        let entry = Entry {
            agent,
            class,
            created,
            last_used: AtomicU64::new(0),
            revoked: false,
        };
        write(&self.by_digest).insert(digest, entry);
    }

    /// Revokes the key of SHA-256 `digest`: refused from now on, as
    /// revoked; whether a valid one was there.
    pub fn revoke(&self, digest: &[u8; 32]) -> bool {
        match write(&self.by_digest).get_mut(digest) {
            Some(entry) if !entry.revoked => {
                entry.revoked = true;
                true
            }
            _ => false,
        }
    }

    /// Forgets the key of SHA-256 `digest` (then an unknown key);
    /// whether there was one.
    pub fn remove(&self, digest: &[u8; 32]) -> bool {
        write(&self.by_digest).remove(digest).is_some()
    }

    /// Every key issued, oldest first.
    pub fn list(&self) -> Vec<IssuedKey> {
        let table = read(&self.by_digest);
        let mut keys: Vec<IssuedKey> = table
            .iter()
            .map(|(digest, entry)| IssuedKey {
                digest: digest.iter().map(|b| format!("{b:02x}")).collect(),
                agent: entry.agent.clone(),
                class: entry.class.clone(),
                created: entry.created,
                last_used: match entry.last_used.load(Ordering::Relaxed) {
                    0 => None,
                    bits => Some(f64::from_bits(bits)),
                },
                revoked: entry.revoked,
            })
            .collect();
        keys.sort_by(|a, b| {
            a.created
                .total_cmp(&b.created)
                .then(a.digest.cmp(&b.digest))
        });
        keys
    }

    /// What the key of SHA-256 `digest` is, noting its use now.
    pub(crate) fn find(&self, digest: &[u8; 32]) -> Option<Found> {
        let table = read(&self.by_digest);
        let entry = table.get(digest)?;
        if entry.revoked {
            return Some(Found::Revoked);
        }
        entry
            .last_used
            .store(corral_core::unix_now_f64().to_bits(), Ordering::Relaxed);
        Some(Found::Valid(entry.agent.clone(), entry.class.clone()))
    }

    /// The class of `agent`, if a key was issued for it and is still
    /// valid.
    pub(crate) fn class_of(&self, agent: &str) -> Option<String> {
        read(&self.by_digest)
            .values()
            .find(|e| !e.revoked && e.agent.as_str() == agent)
            .map(|e| e.class.clone())
    }

    /// Whether a key was ever issued for `agent` (valid or revoked): its
    /// id is then not taken from `X-Agent-Id` alone.
    pub(crate) fn names(&self, agent: &str) -> bool {
        read(&self.by_digest)
            .values()
            .any(|e| e.agent.as_str() == agent)
    }

    /// Whether any key was issued.
    pub(crate) fn is_empty(&self) -> bool {
        read(&self.by_digest).is_empty()
    }
}

/// A SHA-256 in hex, as `corral hash-key` prints it, as bytes.
///
/// ```
/// let digest = corral_classify::digest_from_hex(&"ab".repeat(32)).unwrap();
/// assert_eq!(digest, [0xab; 32]);
/// assert!(corral_classify::digest_from_hex("not hex").is_none());
/// ```
pub fn digest_from_hex(hex: &str) -> Option<[u8; 32]> {
    let hex = hex.trim();
    if hex.len() != 64 || !hex.is_ascii() {
        return None;
    }
    let mut digest = [0u8; 32];
    for (i, byte) in digest.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).ok()?;
    }
    Some(digest)
}

fn read<T>(lock: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    lock.read()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn write<T>(lock: &RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    lock.write()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}
