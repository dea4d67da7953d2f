//! API keys issued while serving (`POST /corral/keys`): kept as digests
//! where they survive a restart (Redis when the replicas share state,
//! else `[identity] keys_file`, else only in memory), known at once to
//! every replica (announced on the bus, and read again from Redis every
//! few seconds in case an announcement was missed). A revoked key is
//! kept, marked: it is refused as revoked, not served as an unknown key
//! when keys are optional.
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
    #[serde(default)]
    revoked: bool,
}

impl Record {
    fn of(key: IssuedKey) -> Self {
        Self {
            digest: key.digest,
            agent: key.agent.to_string(),
            class: key.class,
            created: key.created,
            revoked: key.revoked,
        }
    }
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
    /// Held across each change (kept, then applied) and each reading
    /// again from Redis: a reading taken before a revocation is not
    /// applied after it.
    changing: Arc<tokio::sync::Mutex<()>>,
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
            changing: Arc::default(),
        };
        match &keys.store {
            Store::File(path) => {
                for record in read_file(path)? {
                    apply(&keys.issued, &record);
                }
            }
            Store::Redis(_) => {
                let follower = Follower {
                    issued: Arc::downgrade(&keys.issued),
                    store: keys.store.clone(),
                    bus: keys.bus.clone(),
                    changing: keys.changing.clone(),
                };
                tokio::spawn(follower.run());
            }
            Store::Memory => {}
        }
        Ok(keys)
    }

    /// Where they are kept, for the answers.
    pub(crate) fn kept(&self) -> &'static str {
        match self.store {
            Store::Memory => "memory (gone at a restart: set [identity] keys_file)",
            Store::File(_) => "file",
            Store::Redis(_) => "redis",
        }
    }

    /// Every key issued, the revoked ones included.
    pub(crate) fn list(&self) -> Vec<IssuedKey> {
        self.issued.list()
    }

    /// Issues a new key for `agent` in `class` (checked by the caller):
    /// the key, shown this once, and its digest.
    pub(crate) async fn issue(&self, agent: &str, class: &str) -> Result<(String, String), String> {
        let key = crate::cli::keys::new_key()?;
        let record = Record {
            digest: corral_auth::key_digest(&key),
            agent: agent.to_string(),
            class: class.to_string(),
            created: corral_core::unix_now_f64(),
            revoked: false,
        };
        let _changing = self.changing.lock().await;
        self.keep(&record).await?;
        apply(&self.issued, &record);
        self.bus
            .publish(channels::KEYS_CHANGE, serde_json::json!({"key": record}));
        tracing::warn!(agent, class, digest = %record.digest, "API key issued by the operator");
        Ok((key, record.digest))
    }

    /// Revokes the keys of `who`: a digest, or every key of an agent;
    /// how many. Revoked here first: a store that cannot be written
    /// still stops the key on this replica.
    pub(crate) async fn revoke(&self, who: &str) -> Result<usize, String> {
        let _changing = self.changing.lock().await;
        let revoked: Vec<Record> = self
            .issued
            .list()
            .into_iter()
            .filter(|k| !k.revoked && (k.digest == who || k.agent.as_str() == who))
            .map(|k| Record {
                revoked: true,
                ..Record::of(k)
            })
            .collect();
        for record in &revoked {
            apply(&self.issued, record);
        }
        for record in &revoked {
            self.keep(record).await?;
            self.bus
                .publish(channels::KEYS_CHANGE, serde_json::json!({"key": record}));
            tracing::warn!(agent = %record.agent, digest = %record.digest, "API key revoked by the operator");
        }
        Ok(revoked.len())
    }

    /// Writes `record` (new, or revoked) where the keys are kept.
    async fn keep(&self, record: &Record) -> Result<(), String> {
        match &self.store {
            Store::Memory => Ok(()),
            Store::File(path) => {
                let (path, record) = (path.clone(), record.clone());
                tokio::task::spawn_blocking(move || {
                    let mut records = read_file(&path)?;
                    records.retain(|r| r.digest != record.digest);
                    records.push(record);
                    write_file(&path, &records)
                })
                .await
                .map_err(|e| e.to_string())?
            }
            Store::Redis(state) => {
                let json = serde_json::to_string(record).map_err(|e| e.to_string())?;
                state
                    .query::<()>(
                        redis::cmd("HSET")
                            .arg(state.key("keys"))
                            .arg(&record.digest)
                            .arg(json),
                    )
                    .await
                    .map_err(|e| format!("the keys are kept in Redis, which is unavailable: {e}"))
            }
        }
    }
}

/// Puts `record` in `issued`: a new key, or one revoked.
fn apply(issued: &IssuedKeys, record: &Record) {
    let Some(digest) = digest_from_hex(&record.digest) else {
        return;
    };
    issued.insert(
        digest,
        record.agent.as_str().into(),
        record.class.clone(),
        record.created,
    );
    if record.revoked {
        issued.revoke(&digest);
    }
}

/// With Redis: keeps a replica's table as Redis and the other replicas
/// have it, for as long as the table is in use.
struct Follower {
    issued: std::sync::Weak<IssuedKeys>,
    store: Store,
    bus: Arc<dyn Bus>,
    changing: Arc<tokio::sync::Mutex<()>>,
}

impl Follower {
    /// Reads every key now and every [`RESYNC`], and applies the other
    /// replicas' announcements as they come; ends when the table is no
    /// longer used.
    async fn run(self) {
        let mut bus = self.bus.subscribe();
        let mut resync = tokio::time::interval(RESYNC);
        loop {
            let message = tokio::select! {
                _ = resync.tick() => None,
                message = bus.recv() => match message {
                    Ok(message) => Some(message),
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => None,
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
                },
            };
            let Some(issued) = self.issued.upgrade() else {
                return;
            };
            match message {
                Some(message) => announced(&issued, &message),
                None => self.resync(&issued).await,
            }
        }
    }

    /// Makes the table what Redis holds.
    async fn resync(&self, issued: &IssuedKeys) {
        let Store::Redis(state) = &self.store else {
            return;
        };
        let _changing = self.changing.lock().await;
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
        let known = issued.list();
        for gone in known
            .iter()
            .filter(|k| !records.iter().any(|r| r.digest == k.digest))
        {
            if let Some(digest) = digest_from_hex(&gone.digest) {
                issued.remove(&digest);
            }
        }
        for record in &records {
            let same = known
                .iter()
                .any(|k| k.digest == record.digest && k.revoked == record.revoked);
            if !same {
                apply(issued, record);
            }
        }
    }
}

/// Another replica issued or revoked a key.
fn announced(issued: &IssuedKeys, message: &BusMessage) {
    if &*message.channel != channels::KEYS_CHANGE {
        return;
    }
    if let Ok(record) = serde_json::from_value::<Record>(message.message["key"].clone()) {
        apply(issued, &record);
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

/// Writes `records` to `path` whole, readable by its owner only,
/// through a file beside it synced and renamed over it: a crash leaves
/// the old file or the new, never half.
fn write_file(path: &std::path::Path, records: &[Record]) -> Result<(), String> {
    use std::io::Write;
    let text = serde_json::to_string_pretty(records).map_err(|e| e.to_string())?;
    let temporary = path.with_extension(format!("tmp{}", std::process::id()));
    let written = (|| {
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create(true).truncate(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
        let mut file = options.open(&temporary)?;
        file.write_all(text.as_bytes())?;
        file.sync_all()?;
        std::fs::rename(&temporary, path)
    })();
    written.map_err(|e| format!("{}: {e}", path.display()))
}
