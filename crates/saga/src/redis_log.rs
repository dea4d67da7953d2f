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

/// Deletes the lease if `ARGV[1]` still holds it.
const RELEASE: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0";

/// Sagas' logs in Redis, shared by replicas.
///
/// Saga `id`'s transitions are the entries of the stream `saga:{id}` (one
/// field, `t`, its JSON), appended with an awaited `XADD` (durable as far
/// as Redis's persistence makes it: with `appendfsync everysec`, a Redis
/// crash may lose the last second). `started` adds the id to the set
/// `sagas:unfinished`; a final transition removes it and lets the stream
/// expire after `retention`. The lease is `saga:{id}:lease`, set with
/// `NX PX` and renewed or released only by its holder.
#[derive(Debug, Clone)]
pub struct RedisLog {
    state: RedisState,
    retention: Duration,
    renew: redis::Script,
    release: redis::Script,
}

impl RedisLog {
    /// A log on `state`; finished sagas are kept `retention`.
    pub fn new(state: RedisState, retention: Duration) -> Self {
        Self {
            state,
            retention,
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

impl SagaLog for RedisLog {
    fn append<'a>(
        &'a self,
        id: &'a str,
        transition: &'a Transition,
    ) -> BoxFuture<'a, LogResult<()>> {
        Box::pin(async move {
            let json = serde_json::to_string(transition).map_err(unavailable)?;
            let stream = self.stream(id);
            let mut pipeline = redis::pipe();
            pipeline.atomic();
            pipeline
                .cmd("XADD")
                .arg(&stream)
                .arg("*")
                .arg("t")
                .arg(json)
                .ignore();
            if matches!(transition, Transition::Started { .. }) {
                pipeline
                    .cmd("SADD")
                    .arg(self.unfinished_key())
                    .arg(id)
                    .ignore();
            }
            if transition.is_terminal() {
                pipeline
                    .cmd("SREM")
                    .arg(self.unfinished_key())
                    .arg(id)
                    .ignore();
                pipeline
                    .cmd("PEXPIRE")
                    .arg(&stream)
                    .arg(millis(self.retention))
                    .ignore();
            }
            self.state
                .pipeline::<()>(&pipeline)
                .await
                .map_err(unavailable)
        })
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
