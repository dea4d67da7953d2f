//! `corral keys new`: a fresh random API key, shown once, and the
//! `[[agents]]` entry that holds only its digest.
//!
//! ```
//! use corral::cli::keys::{agent_entry, new_key};
//!
//! let key = new_key().unwrap();
//! assert!(key.starts_with("sk-corral-") && key.len() == 74);
//! let entry = agent_entry(Some("planner-1"), Some("opus"), &key).unwrap();
//! assert!(entry.contains(&corral_auth::key_digest(&key)));
//! assert!(!entry.contains(&key), "the entry never holds the key");
//! ```

use std::process::ExitCode;

/// What every key `corral keys new` makes starts with, so a leaked one is
/// recognisable (by secret scanners, and by people).
pub const KEY_PREFIX: &str = "sk-corral-";

/// Random bytes in a key: 256 bits, written as 64 hex digits.
const KEY_BYTES: usize = 32;

/// The agent id written when `--agent` is not given.
const PLACEHOLDER_AGENT: &str = "new-agent";

/// A new key: [`KEY_PREFIX`] and 32 bytes from the operating system's
/// CSPRNG, in hex. Fails only when the system has no randomness to give.
pub fn new_key() -> Result<String, String> {
    let mut bytes = [0u8; KEY_BYTES];
    // ring's SystemRandom (getrandom(2) on Linux) through rustls, which
    // corral already links for https upstreams.
    rustls::crypto::ring::default_provider()
        .secure_random
        .fill(&mut bytes)
        .map_err(|_| "the system's random number generator failed".to_string())?;
    let mut key = String::with_capacity(KEY_PREFIX.len() + 2 * KEY_BYTES);
    key.push_str(KEY_PREFIX);
    for b in bytes {
        key.push_str(&format!("{b:02x}"));
    }
    Ok(key)
}

/// The `[[agents]]` entry for `agent` (a placeholder id when `None`) in
/// `class` (the default class when `None`) holding `key`'s SHA-256, as
/// TOML to paste into the config. Refuses names TOML or a log line would
/// mangle.
pub fn agent_entry(agent: Option<&str>, class: Option<&str>, key: &str) -> Result<String, String> {
    let name = |what: &str, value: &str| {
        if value.trim().is_empty() || value.chars().any(char::is_control) {
            return Err(format!(
                "--{what} must be non-empty and hold no control characters"
            ));
        }
        Ok(toml::Value::String(value.to_string()).to_string())
    };
    let mut entry = String::from("[[agents]]\n");
    match agent {
        Some(agent) => entry.push_str(&format!("id = {}\n", name("agent", agent)?)),
        None => entry.push_str(&format!(
            "id = \"{PLACEHOLDER_AGENT}\"   # the agent's name in logs and metrics\n"
        )),
    }
    entry.push_str(&format!(
        "key_sha256 = \"{}\"\n",
        corral_auth::key_digest(key)
    ));
    if let Some(class) = class {
        entry.push_str(&format!("class = {}\n", name("class", class)?));
    }
    Ok(entry)
}

/// Runs `corral keys new`: the key on the first line of standard output,
/// then the entry.
pub(crate) fn run_new(agent: Option<&str>, class: Option<&str>) -> ExitCode {
    let made = new_key().and_then(|key| Ok((agent_entry(agent, class, &key)?, key)));
    match made {
        Ok((entry, key)) => {
            println!("{key}");
            println!();
            println!("# The key above is shown once: give it to the agent (Authorization:");
            println!("# Bearer <key>, or the variable or file a key_env or key_file names)");
            println!("# and keep no other copy. The config needs only its digest:");
            print!("{entry}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("corral keys new: {e}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_long_hex_and_never_repeat() {
        let keys: std::collections::HashSet<String> = (0..64).map(|_| new_key().unwrap()).collect();
        assert_eq!(keys.len(), 64);
        for key in &keys {
            let hex = key.strip_prefix(KEY_PREFIX).unwrap();
            assert_eq!(hex.len(), 64);
            assert!(hex.bytes().all(|b| b.is_ascii_hexdigit()));
        }
    }

    #[test]
    fn the_entry_parses_as_an_agent_with_the_key_digest() {
        let key = new_key().unwrap();
        let entry = agent_entry(Some("ops \"lead\""), Some("system"), &key).unwrap();
        let table: toml::Table = entry.parse().unwrap();
        let agent = &table["agents"].as_array().unwrap()[0];
        assert_eq!(agent["id"].as_str(), Some("ops \"lead\""));
        assert_eq!(agent["class"].as_str(), Some("system"));
        assert_eq!(
            agent["key_sha256"].as_str(),
            Some(corral_auth::key_digest(&key).as_str())
        );

        let bare: toml::Table = agent_entry(None, None, &key).unwrap().parse().unwrap();
        let agent = &bare["agents"].as_array().unwrap()[0];
        assert_eq!(agent["id"].as_str(), Some(PLACEHOLDER_AGENT));
        assert!(agent.get("class").is_none(), "the default class");

        assert!(agent_entry(Some(""), None, &key).is_err());
        assert!(agent_entry(Some("a\nb"), None, &key).is_err());
        assert!(agent_entry(None, Some(" "), &key).is_err());
    }
}
