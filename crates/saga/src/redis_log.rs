//! The log in Redis: a stream per saga, a set of unfinished sagas, a
//! lease key per saga.

use std::time::Duration;

use corral_core::RedisState;

use crate::log::{BoxFuture, LogResult, LogUnavailable, SagaLog};
use crate::Transition;

/// Renews the lease if `ARGV[1]` still holds it.
const RENEW: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0";

/// Appends `ARGV[3]` to the stream `KEYS[1]` if the mode `ARGV[1]`
/// allows it (`held`: the lease `KEYS[3]` is `ARGV[2]`'s; `open`: the
/// saga `ARGV[7]` is in the unfinished set `KEYS[2]`), keeping the set
/// and the stream's expiry in step; 1 if appended. One script, so the
/// check and the write are atomic.
const APPEND: &str = r"
if ARGV[1] == 'held' and redis.call('GET', KEYS[3]) ~= ARGV[2] then
  return 0
end
if ARGV[1] == 'open' and redis.call('SISMEMBER', KEYS[2], ARGV[7]) == 0 then
  return 0
end
redis.call('XADD', KEYS[1], '*', 't', ARGV[3])
if ARGV[4] == '1' then
  redis.call('SADD', KEYS[2], ARGV[7])
end
if ARGV[5] == '1' then
  redis.call('SREM', KEYS[2], ARGV[7])
  redis.call('PEXPIRE', KEYS[1], ARGV[6])
end
return 1";

/// Deletes the lease if `ARGV[1]` still holds it.
const RELEASE: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0";

/// Sagas' logs in Redis, shared by replicas.
///
/// Saga `id`'s transitions are the entries of the stream `saga:{id}` (one
/// field, `t`, its JSON), appended with an awaited `XADD` in a script
/// that, for a runner, first checks it holds the lease (durable as far
/// as Redis's persistence makes it: with `appendfsync everysec`, a Redis
/// crash may lose the last second). `started` adds the id to the set
/// `sagas:unfinished`; a final transition removes it and lets the stream
/// expire after `retention`. The lease is `saga:{id}:lease`, set with
/// `NX PX` and renewed or released only by its holder.
#[derive(Debug, Clone)]
pub struct RedisLog {
    state: RedisState,
    retention: Duration,
    append: redis::Script,
    renew: redis::Script,
    release: redis::Script,
}

impl RedisLog {
    /// A log on `state`; finished sagas are kept `retention`.
    pub fn new(state: RedisState, retention: Duration) -> Self {
        Self {
            state,
            retention,
            append: redis::Script::new(APPEND),
            renew: redis::Script::new(RENEW),
            release: redis::Script::new(RELEASE),
        }
    }

    fn stream(&self, id: &str) -> String {
        self.state.key(&format!("saga:{id}"))
    }

    fn lease(&self, id: &str) -> String {
        self.state.key(&format!("saga:{id}:lease"))
    }

    fn unfinished_key(&self) -> String {
        self.state.key("sagas:unfinished")
    }
}

fn unavailable(e: impl std::fmt::Display) -> LogUnavailable {
    LogUnavailable::new(e.to_string())
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX).max(1)
}

impl RedisLog {
    /// Appends `transition` in one script, if `when` allows it.
    async fn append_when(
        &self,
        id: &str,
        when: When<'_>,
        transition: &Transition,
    ) -> LogResult<bool> {
        let json = serde_json::to_string(transition).map_err(unavailable)?;
        let (mode, owner) = match when {
            When::Always => ("always", ""),
            When::Held(owner) => ("held", owner),
            When::Open => ("open", ""),
        };
        let flag = |b: bool| if b { "1" } else { "0" }.to_string();
        let keys = [self.stream(id), self.unfinished_key(), self.lease(id)];
        let args = [
            mode.to_string(),
            owner.to_string(),
            json,
            flag(matches!(transition, Transition::Started { .. })),
            flag(transition.is_terminal()),
            millis(self.retention).to_string(),
            id.to_string(),
        ];
        let appended: i64 = self
            .state
            .script(&self.append, &keys, &args)
            .await
            .map_err(unavailable)?;
        Ok(appended == 1)
    }
}

/// The condition of an append.
#[derive(Clone, Copy)]
enum When<'a> {
    Always,
    /// While this owner holds the lease.
    Held(&'a str),
    /// While the saga is unfinished (started, not over).
    Open,
}

impl SagaLog for RedisLog {
    fn append<'a>(
        &'a self,
        id: &'a str,
        transition: &'a Transition,
    ) -> BoxFuture<'a, LogResult<()>> {
        Box::pin(async move {
            self.append_when(id, When::Always, transition)
                .await
                .map(drop)
        })
    }

    fn append_held<'a>(
        &'a self,
        id: &'a str,
        owner: &'a str,
        transition: &'a Transition,
    ) -> BoxFuture<'a, LogResult<bool>> {
        Box::pin(self.append_when(id, When::Held(owner), transition))
    }

    fn append_open<'a>(
        &'a self,
        id: &'a str,
        transition: &'a Transition,
    ) -> BoxFuture<'a, LogResult<bool>> {
        Box::pin(self.append_when(id, When::Open, transition))
    }

    fn read<'a>(&'a self, id: &'a str) -> BoxFuture<'a, LogResult<Vec<Transition>>> {
        Box::pin(async move {
            let mut command = redis::cmd("XRANGE");
            command.arg(self.stream(id)).arg("-").arg("+");
            let entries: Vec<(String, Vec<(String, String)>)> =
                self.state.query(&command).await.map_err(unavailable)?;
            let mut log = Vec::with_capacity(entries.len());
            for (entry, fields) in entries {
                for (_, json) in fields.iter().filter(|(name, _)| name == "t") {
                    let transition = serde_json::from_str(json).map_err(|e| {
                        LogUnavailable::new(format!("saga {id}: entry {entry} unreadable: {e}"))
                    })?;
                    log.push(transition);
                }
            }
            Ok(log)
        })
    }

    fn unfinished(&self) -> BoxFuture<'_, LogResult<Vec<String>>> {
        Box::pin(async move {
            let mut command = redis::cmd("SMEMBERS");
            command.arg(self.unfinished_key());
            self.state.query(&command).await.map_err(unavailable)
        })
    }

    fn claim<'a>(
        &'a self,
        id: &'a str,
        owner: &'a str,
        ttl: Duration,
    ) -> BoxFuture<'a, LogResult<bool>> {
        Box::pin(async move {
            let mut command = redis::cmd("SET");
            command
                .arg(self.lease(id))
                .arg(owner)
                .arg("NX")
                .arg("PX")
                .arg(millis(ttl));
            let set: Option<String> = self.state.query(&command).await.map_err(unavailable)?;
            Ok(set.is_some())
        })
    }

    fn renew<'a>(
        &'a self,
        id: &'a str,
        owner: &'a str,
        ttl: Duration,
    ) -> BoxFuture<'a, LogResult<bool>> {
        Box::pin(async move {
            let keys = [self.lease(id)];
            let args = [owner.to_string(), millis(ttl).to_string()];
            let renewed: i64 = self
                .state
                .script(&self.renew, &keys, &args)
                .await
                .map_err(unavailable)?;
            Ok(renewed == 1)
        })
    }

    fn release<'a>(&'a self, id: &'a str, owner: &'a str) -> BoxFuture<'a, LogResult<()>> {
        Box::pin(async move {
            let keys = [self.lease(id)];
            let args = [owner.to_string()];
            let _: i64 = self
                .state
                .script(&self.release, &keys, &args)
                .await
                .map_err(unavailable)?;
            Ok(())
        })
    }
}
