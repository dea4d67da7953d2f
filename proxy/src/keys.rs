//! API keys issued while serving (`POST /corral/keys`): kept as digests
//! where they survive a restart (Redis when the replicas share state,
//! else `[identity] keys_file`, else only in memory), known at once to
//! every replica (announced on the bus, and read again from Redis every
//! few seconds in case an announcement was missed).
//!
//! The keys in the configuration file are not these: they stay as the
//! file has them, and a reload reads them again.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use corral_classify::{digest_from_hex, IssuedKey, IssuedKeys};
use corral_core::{channels, redis, Bus, BusMessage, RedisState};
use serde::{Deserialize, Serialize};

/// How often the keys are read again from Redis.
const RESYNC: Duration = Duration::from_secs(5);

/// One issued key as kept: its digest, never the key.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Record {
    digest: String,
    agent: String,
    class: String,
    created: f64,
}

/// Where the issued keys are kept.
#[derive(Clone)]
enum Store {
    /// Nowhere: gone at a restart.
    Memory,
    /// A JSON file, rewritten whole on each change.
    File(PathBuf),
    /// A Redis hash every replica reads.
    Redis(RedisState),
}

/// The keys issued at run time, and where they are kept.
#[derive(Clone)]
pub(crate) struct Keys {
    issued: Arc<IssuedKeys>,
    store: Store,
    bus: Arc<dyn Bus>,
    /// Serializes changes to the file.
    writing: Arc<tokio::sync::Mutex<()>>,
}

corral_core::impl_debug!(Keys {});

/// What a new key is issued for.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Issue {
    pub(crate) agent: String,
    #[serde(default)]
    pub(crate) class: Option<String>,
}

impl Keys {
    /// The keys of `issued`, kept in Redis (`state`), else in `file`,
    /// else in memory; those already kept are read now (from Redis, in
    /// the background).
    pub(crate) fn start(
        issued: Arc<IssuedKeys>,
        file: Option<PathBuf>,
        state: Option<&RedisState>,
        bus: Arc<dyn Bus>,
    ) -> Result<Self, String> {
        let store = match (state, file) {
            (Some(state), _) => Store::Redis(state.clone()),
            (None, Some(path)) => Store::File(path),
            (None, None) => Store::Memory,
        };
        let keys = Self {
            issued,
            store,
            bus,
            writing: Arc::default(),
        };
        match &keys.store {
            Store::File(path) => {
                for record in read_file(path)? {
                    keys.apply(&record);
                }
            }
            Store::Redis(_) => {
                tokio::spawn(keys.clone().follow());
            }
            Store::Memory => {}
        }
        Ok(keys)
    }

    /// Where they are kept, for the answer that shows a new key.
    pub(crate) fn kept(&self) -> &'static str {
        match self.store {
            Store::Memory => "memory (gone at a restart: set [identity] keys_file)",
            Store::File(_) => "file",
            Store::Redis(_) => "redis",
        }
    }

    /// Every key issued.
    pub(crate) fn list(&self) -> Vec<IssuedKey> {
        self.issued.list()
    }

    /// Issues a new key for `issue.agent` in `class` (checked by the
    /// caller): the key, shown this once, and its digest.
    pub(crate) async fn issue(&self, agent: &str, class: &str) -> Result<(String, String), String> {
        let key = crate::cli::keys::new_key()?;
        let record = Record {
            digest: corral_auth::key_digest(&key),
            agent: agent.to_string(),
            class: class.to_string(),
            created: corral_core::unix_now_f64(),
        };
        self.keep(Some(&record), None).await?;
        self.apply(&record);
        self.bus
            .publish(channels::KEYS_CHANGE, serde_json::json!({"issued": record}));
        Ok((key, record.digest))
    }

    /// Revokes the keys of `who`: a digest, or every key of an agent.
    /// How many.
    pub(crate) async fn revoke(&self, who: &str) -> Result<usize, String> {
        let digests: Vec<String> = self
            .issued
            .list()
            .into_iter()
            .filter(|k| k.digest == who || k.agent.as_str() == who)
            .map(|k| k.digest)
            .collect();
        for digest in &digests {
            self.keep(None, Some(digest)).await?;
            if let Some(bytes) = digest_from_hex(digest) {
                self.issued.remove(&bytes);
            }
            self.bus.publish(
                channels::KEYS_CHANGE,
                serde_json::json!({"revoked": digest}),
            );
        }
        Ok(digests.len())
    }

    /// Writes `add` or takes `remove` out where the keys are kept.
    async fn keep(&self, add: Option<&Record>, remove: Option<&str>) -> Result<(), String> {
        match &self.store {
            Store::Memory => Ok(()),
            Store::File(path) => {
                let _writing = self.writing.lock().await;
                let mut records = read_file(path)?;
                records.retain(|r| Some(r.digest.as_str()) != remove);
                records.extend(add.cloned());
                write_file(path, &records)
            }
            Store::Redis(state) => {
                let hash = state.key("keys");
                let command = match (add, remove) {
                    (Some(record), _) => redis::cmd("HSET")
                        .arg(&hash)
                        .arg(&record.digest)
                        .arg(serde_json::to_string(record).map_err(|e| e.to_string())?)
                        .clone(),
                    (None, Some(digest)) => redis::cmd("HDEL").arg(&hash).arg(digest).clone(),
                    (None, None) => return Ok(()),
                };
                state
                    .query::<()>(&command)
                    .await
                    .map_err(|e| format!("the keys are kept in Redis, which is unavailable: {e}"))
            }
        }
    }

    fn apply(&self, record: &Record) {
        if let Some(digest) = digest_from_hex(&record.digest) {
            self.issued.insert(
                digest,
                record.agent.as_str().into(),
                record.class.clone(),
                record.created,
            );
        }
    }

    /// With Redis: reads every key now and every [`RESYNC`], and applies
    /// the other replicas' announcements as they come; for as long as
    /// the bus runs.
    async fn follow(self) {
        let mut bus = self.bus.subscribe();
        let mut resync = tokio::time::interval(RESYNC);
        loop {
            tokio::select! {
                _ = resync.tick() => self.resync().await,
                message = bus.recv() => match message {
                    Ok(message) => self.announced(&message),
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => self.resync().await,
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
                },
            }
        }
    }

    /// Another replica issued or revoked a key.
    fn announced(&self, message: &BusMessage) {
        if &*message.channel != channels::KEYS_CHANGE {
            return;
        }
        if let Ok(record) = serde_json::from_value::<Record>(message.message["issued"].clone()) {
            self.apply(&record);
        }
        if let Some(digest) = message.message["revoked"]
            .as_str()
            .and_then(digest_from_hex)
        {
            self.issued.remove(&digest);
        }
    }

    /// Makes the table what Redis holds.
    async fn resync(&self) {
        let Store::Redis(state) = &self.store else {
            return;
        };
        let Ok(kept) = state
            .query::<std::collections::HashMap<String, String>>(
                redis::cmd("HGETALL").arg(state.key("keys")),
            )
            .await
        else {
            // Redis away: the keys known stay as they are.
            return;
        };
        let records: Vec<Record> = kept
            .values()
            .filter_map(|json| serde_json::from_str(json).ok())
            .collect();
        for known in self.issued.list() {
            if !records.iter().any(|r| r.digest == known.digest) {
                if let Some(digest) = digest_from_hex(&known.digest) {
                    self.issued.remove(&digest);
                }
            }
        }
        for record in &records {
            if !self.issued.list().iter().any(|k| k.digest == record.digest) {
                self.apply(record);
            }
        }
    }
}

fn read_file(path: &std::path::Path) -> Result<Vec<Record>, String> {
    match std::fs::read_to_string(path) {
        Ok(text) if text.trim().is_empty() => Ok(Vec::new()),
        Ok(text) => serde_json::from_str(&text)
            .map_err(|e| format!("{}: not a keys file: {e}", path.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(e) => Err(format!("{}: {e}", path.display())),
    }
}

/// Writes `records` to `path` whole, through a file beside it renamed
/// over it: a crash leaves the old file or the new, never half.
fn write_file(path: &std::path::Path, records: &[Record]) -> Result<(), String> {
    let text = serde_json::to_string_pretty(records).map_err(|e| e.to_string())?;
    let temporary = path.with_extension("tmp");
    std::fs::write(&temporary, text)
        .and_then(|()| std::fs::rename(&temporary, path))
        .map_err(|e| format!("{}: {e}", path.display()))
}
