//! Usage by the hour in Redis: each event's counts added to its hour's
//! hash (`<prefix>usage:<hour>`, a field `agent␟counter` each, kept for the
//! retention), written with the stream's batches; read back a day of
//! hours per round trip.

use std::collections::{BTreeMap, BTreeSet};

use corral_core::RedisState;

use crate::projection::{hour_of, AgentUsage, USAGE_RETENTION_HOURS};

/// What one event adds to an agent's hourly usage.
pub(crate) struct Tally {
    pub(crate) hour: u64,
    pub(crate) agent: String,
    pub(crate) usage: AgentUsage,
}

/// The hash of `hour`'s usage.
fn usage_key(state: &RedisState, hour: u64) -> String {
    state.key(&format!("usage:{hour}"))
}

/// Adds an event's usage to its hour's hash, which lives as long as the
/// retention.
pub(crate) fn add_tally(state: &RedisState, pipeline: &mut redis::Pipeline, tally: &Tally) {
    let key = usage_key(state, tally.hour);
    for (name, n) in tally.usage.counters() {
        if n > 0 {
            pipeline
                .cmd("HINCRBY")
                .arg(&key)
                .arg(format!("{}\u{1f}{name}", tally.agent))
                .arg(n)
                .ignore();
        }
    }
    if let Some(class) = &tally.usage.class {
        pipeline
            .cmd("HSET")
            .arg(&key)
            .arg(format!("{}\u{1f}class", tally.agent))
            .arg(class)
            .ignore();
    }
}

/// Each hour's hash lives as long as the retention: once per batch.
pub(crate) fn expire_hours(
    state: &RedisState,
    pipeline: &mut redis::Pipeline,
    hours: &BTreeSet<u64>,
) {
    for hour in hours {
        pipeline
            .cmd("EXPIRE")
            .arg(usage_key(state, *hour))
            .arg(USAGE_RETENTION_HOURS * 3600)
            .ignore();
    }
}

/// Hours read in one pipeline: a month of a fleet's hashes in one reply
/// would outlast the state's timeout, which marks Redis down.
const HOURS_PER_READ: u64 = 24;

/// Usage since `hour` from the hourly hashes every replica adds to: one
/// agent's fields (`HMGET`) or every agent's (`HGETALL`), a day of hours
/// per round trip.
pub(crate) async fn usage_since(
    state: &RedisState,
    hour: u64,
    agent: Option<&str>,
) -> Result<BTreeMap<String, AgentUsage>, corral_core::StateUnavailable> {
    let now = hour_of(corral_core::unix_now_f64());
    let first = hour.max(now.saturating_sub(USAGE_RETENTION_HOURS - 1));
    let names: Vec<&str> = AgentUsage::default()
        .counters()
        .iter()
        .map(|(name, _)| *name)
        .chain(["class"])
        .collect();
    let mut usage: BTreeMap<String, AgentUsage> = BTreeMap::new();
    let mut start = first;
    while start <= now {
        let end = (start + HOURS_PER_READ - 1).min(now);
        let mut pipeline = redis::pipe();
        for hour in start..=end {
            let key = usage_key(state, hour);
            match agent {
                Some(agent) => {
                    let command = pipeline.cmd("HMGET").arg(key);
                    for name in &names {
                        command.arg(format!("{agent}\u{1f}{name}"));
                    }
                }
                None => {
                    pipeline.cmd("HGETALL").arg(key);
                }
            }
        }
        match agent {
            Some(agent) => {
                let hours: Vec<Vec<Option<String>>> = state.pipeline(&pipeline).await?;
                for values in hours {
                    let fields = names.iter().zip(values).filter_map(|(n, v)| Some((*n, v?)));
                    add_fields(&mut usage, agent, fields);
                }
            }
            None => {
                let hours: Vec<Vec<(String, String)>> = state.pipeline(&pipeline).await?;
                for (field, value) in hours.into_iter().flatten() {
                    if let Some((name, counter)) = field.split_once('\u{1f}') {
                        add_fields(&mut usage, name, [(counter, value)]);
                    }
                }
            }
        }
        start = end + 1;
    }
    Ok(usage)
}

/// Adds an hour's `(counter, value)` fields of `agent` to `usage`.
fn add_fields<'a>(
    usage: &mut BTreeMap<String, AgentUsage>,
    agent: &str,
    fields: impl IntoIterator<Item = (&'a str, String)>,
) {
    for (counter, value) in fields {
        let entry = match usage.get_mut(agent) {
            Some(entry) => entry,
            None => usage.entry(agent.to_string()).or_default(),
        };
        if counter == "class" {
            entry.class = Some(value);
        } else {
            entry.add(counter, value.parse().unwrap_or(0));
        }
    }
}
