//! What each replica's queue waits for, shared: a drain is decided
//! against the most urgent request waiting for the models loaded on
//! every replica, not on one.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use corral_core::lock;
use tokio::time::Instant;

use crate::fleet::Fleet;
use crate::place::Urgency;

/// The hash of every replica's wants: `model\treplica` ->
/// `level\tsince (ms)\texpires (ms)`.
const WANTS: &str = "fleet:wants";

fn wall_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

impl Fleet {
    /// Writes the most urgent request waiting here per model, reads the
    /// other replicas': an entry lives one lease, so a replica that died
    /// wants nothing.
    pub(super) async fn share_wants(&self) {
        let Some(shared) = self.shared.get() else {
            return;
        };
        let replica = shared.state.replica().clone();
        let (now, wall) = (Instant::now(), wall_ms());
        let ttl = u64::try_from(shared.ttl.as_millis()).unwrap_or(u64::MAX);
        let mine: Vec<(String, String)> = {
            let state = lock(&self.state);
            state
                .heads
                .iter()
                .filter_map(|(model, head)| {
                    let urgency = head.urgency(now)?;
                    let waited = now.saturating_duration_since(urgency.since).as_millis();
                    let since = wall.saturating_sub(u64::try_from(waited).unwrap_or(0));
                    Some((
                        format!("{model}\t{replica}"),
                        format!("{}\t{since}\t{}", urgency.level, wall + ttl),
                    ))
                })
                .collect()
        };
        let key = shared.state.key(WANTS);
        let fields: HashSet<String> = mine.iter().map(|(f, _)| f.clone()).collect();
        let gone: Vec<String> = lock(&shared.wanted).difference(&fields).cloned().collect();
        let mut pipeline = redis::pipe();
        if !mine.is_empty() {
            pipeline.cmd("HSET").arg(&key).arg(&mine).ignore();
        }
        if !gone.is_empty() {
            pipeline.cmd("HDEL").arg(&key).arg(&gone).ignore();
        }
        pipeline.cmd("HGETALL").arg(&key);
        let Ok((all,)) = shared
            .state
            .pipeline::<(HashMap<String, String>,)>(&pipeline)
            .await
        else {
            return;
        };
        *lock(&shared.wanted) = fields;
        let mut others: HashMap<std::sync::Arc<str>, Urgency> = HashMap::new();
        // Entries of replicas that stopped renewing them: gone for good.
        let mut dead = Vec::new();
        for (field, value) in all {
            let Some((model, from)) = field.split_once('\t') else {
                continue;
            };
            let mut parts = value.split('\t').map(|p| p.parse::<u64>().ok());
            let (Some(Some(level)), Some(Some(since)), Some(Some(expires))) =
                (parts.next(), parts.next(), parts.next())
            else {
                continue;
            };
            if expires < wall {
                dead.push(field.clone());
                continue;
            }
            if from == &*replica {
                continue;
            }
            let waited = Duration::from_millis(wall.saturating_sub(since));
            let urgency = Urgency {
                level: usize::try_from(level).unwrap_or(usize::MAX),
                since: now.checked_sub(waited).unwrap_or(now),
            };
            let best = others.entry(std::sync::Arc::from(model)).or_insert(urgency);
            *best = (*best).min(urgency);
        }
        lock(&self.state).remote_heads = others;
        if !dead.is_empty() {
            let mut command = redis::cmd("HDEL");
            command.arg(&key).arg(&dead);
            let _ = shared.state.query::<i64>(&command).await;
        }
    }
}
