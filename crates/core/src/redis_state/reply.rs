//! What Redis answers, as the layers see it: a refusal or an absence,
//! and the messages pushed on subscribed channels.

use redis::{PushInfo, PushKind, Value};

/// Why a Redis call gave no answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StateUnavailable {
    /// What went wrong: the Redis error, or the timeout.
    pub reason: String,
    /// Redis answered and refused this command (a wrong type, a script
    /// error): sending it again would be refused again. `false` when
    /// Redis did not answer or is not ready (loading, read-only, busy):
    /// worth sending again once it is back.
    pub refused: bool,
}

impl std::fmt::Display for StateUnavailable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "shared state unavailable: {}", self.reason)
    }
}

impl std::error::Error for StateUnavailable {}

/// A message from a Redis channel this replica subscribed to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pushed {
    /// The channel, without the key prefix.
    pub channel: String,
    /// The payload, as published.
    pub payload: String,
}

/// Whether Redis answered and refused the command itself (out of memory
/// for a write counts: reads still work, and the same write would be
/// refused again). A server that is loading its data, read-only, busy
/// with a script or without its primary answers too, but is not there
/// for us: that counts as away, so layers fall back and retry when it is
/// ready.
pub(super) fn is_reply_error(error: &redis::RedisError) -> bool {
    if error.is_io_error()
        || error.is_timeout()
        || error.is_connection_dropped()
        || error.is_connection_refusal()
        || error.is_unrecoverable_error()
    {
        return false;
    }
    !matches!(
        error.code(),
        Some(
            "LOADING"
                | "BUSY"
                | "MASTERDOWN"
                | "TRYAGAIN"
                | "READONLY"
                | "CLUSTERDOWN"
                | "NOREPLICAS"
                | "MISCONF"
        )
    )
}

pub(super) fn decode_push(info: PushInfo, prefix_len: usize) -> Option<Pushed> {
    if info.kind != PushKind::Message {
        return None;
    }
    let mut data = info.data.into_iter();
    let text = |value: Value| match value {
        Value::BulkString(bytes) => String::from_utf8(bytes).ok(),
        Value::SimpleString(s) => Some(s),
        _ => None,
    };
    let channel = text(data.next()?)?;
    let payload = text(data.next()?)?;
    Some(Pushed {
        channel: channel.get(prefix_len..)?.to_string(),
        payload,
    })
}

#[cfg(test)]
mod tests {
    use super::is_reply_error;

    fn error(reply: &str) -> redis::RedisError {
        let value = redis::parse_redis_value(format!("-{reply}\r\n").as_bytes())
            .expect("an error reply parses");
        value.extract_error().expect_err("an error reply")
    }

    #[test]
    fn a_server_that_is_not_ready_counts_as_away_and_a_refused_command_does_not() {
        for away in [
            "LOADING Redis is loading the dataset in memory",
            "BUSY Redis is busy running a script",
            "READONLY You can't write against a read only replica.",
            "MASTERDOWN Link with MASTER is down",
            "TRYAGAIN Multiple keys request during rehashing of slot",
        ] {
            assert!(!is_reply_error(&error(away)), "{away}");
        }
        for refused in [
            "WRONGTYPE Operation against a key holding the wrong kind of value",
            "ERR Error running script",
            "OOM command not allowed when used memory > 'maxmemory'.",
        ] {
            assert!(is_reply_error(&error(refused)), "{refused}");
        }
    }
}
