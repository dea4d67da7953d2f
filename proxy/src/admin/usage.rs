//! `GET /corral/usage?agent=ID&since=WHEN`: tokens and requests per agent
//! over a span, from the event log's hourly usage (shared by replicas
//! with Redis).

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use http::{Response, StatusCode};
use serde_json::json;

use corral_core::BoxBody;
use corral_events::AgentUsage;

use super::{error, json_response, percent_decode, Admin};

impl Admin {
    pub(super) async fn usage(&self, query: &str) -> Response<BoxBody> {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        let mut agent = None;
        let mut since = start_of_day(now);
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            let value = percent_decode(value);
            match key {
                "agent" => agent = Some(value),
                "since" => match parse_since(&value, now) {
                    Ok(at) => since = at,
                    Err(reason) => {
                        return error(StatusCode::BAD_REQUEST, format!("since: {reason}"))
                    }
                },
                other => {
                    return error(
                        StatusCode::BAD_REQUEST,
                        format!("unknown parameter {other:?}: use agent, since"),
                    )
                }
            }
        }
        // Counted by the hour: the span starts at its hour, at the
        // earliest the retention's first.
        let retained = now.saturating_sub(Duration::from_secs(
            (corral_events::USAGE_RETENTION_HOURS - 1) * 3600,
        ));
        let since = since.min(now).max(retained);
        let from = Duration::from_secs(since.as_secs() / 3600 * 3600);
        let agents = self
            .events
            .usage_since(from.as_secs_f64(), agent.clone())
            .await;
        let mut answer = answer(&agents, from, now, agent.clone());
        if let Some(book) = self.controls.budgets.get() {
            // The agent asked for, even idle in the span; else those seen.
            let mut who: Vec<(String, String)> = match &agent {
                Some(agent) => vec![(agent.clone(), self.classes.class_of(agent, &agents))],
                None => agents
                    .keys()
                    .map(|a| (a.clone(), self.classes.class_of(a, &agents)))
                    .collect(),
            };
            who.dedup();
            answer["budgets"] = budgets(book, &who).await;
        }
        json_response(StatusCode::OK, &answer)
    }
}

/// Whose class an agent is in, for its budgets.
pub(super) struct Classes {
    configured: std::collections::HashMap<String, String>,
    default: String,
}

impl Classes {
    pub(super) fn of(config: &crate::config::Config) -> Self {
        Self {
            configured: config
                .agents
                .iter()
                .filter_map(|a| Some((a.id.clone(), a.class.clone()?)))
                .collect(),
            default: config.identity.default_class.clone(),
        }
    }

    /// A configured agent's class; else the class its requests were last
    /// seen in; else the default class.
    fn class_of(&self, agent: &str, seen: &BTreeMap<String, AgentUsage>) -> String {
        self.configured
            .get(agent)
            .cloned()
            .or_else(|| seen.get(agent).and_then(|u| u.class.clone()))
            .unwrap_or_else(|| self.default.clone())
    }
}

/// Each agent's day and month budgets (its own and its class's) as they
/// stand now, whatever span the usage covers: one read of the store.
async fn budgets(
    book: &corral_ratelimit::BudgetBook,
    who: &[(String, String)],
) -> serde_json::Value {
    let mut all = serde_json::Map::new();
    let standings = book.standing_of(who).await;
    for ((agent, _), standing) in who.iter().zip(standings) {
        if standing.is_empty() {
            continue;
        }
        let list = standing
            .iter()
            .map(|b| {
                json!({
                    "policy": b.policy,
                    "window": b.window,
                    "limit": b.limit,
                    "spent": b.spent,
                    "remaining": b.limit.saturating_sub(b.spent),
                    "resets_at": humantime::format_rfc3339_seconds(b.resets_at).to_string(),
                    "mode": if b.shadow { "shadow" } else { "enforce" },
                })
            })
            .collect();
        all.insert(agent.clone(), serde_json::Value::Array(list));
    }
    serde_json::Value::Object(all)
}

/// The answer: the span, each agent's usage and the total.
fn answer(
    agents: &BTreeMap<String, AgentUsage>,
    from: Duration,
    now: Duration,
    agent: Option<String>,
) -> serde_json::Value {
    let mut total = AgentUsage::default();
    for usage in agents.values() {
        total.merge(usage);
    }
    total.class = None;
    json!({
        "since": rfc3339(from),
        "until": rfc3339(now),
        "agent": agent,
        "agents": agents,
        "total": total,
    })
}

fn rfc3339(at: Duration) -> String {
    humantime::format_rfc3339_seconds(UNIX_EPOCH + at).to_string()
}

fn start_of_day(now: Duration) -> Duration {
    Duration::from_secs(now.as_secs() / 86_400 * 86_400)
}

/// `since` as seconds since the Unix epoch: a timestamp (`1796515200`),
/// an RFC 3339 time in UTC (`2026-12-06T08:00:00Z`), a UTC date
/// (`2026-12-01`) or a span back from now (`24h`, `7d`).
fn parse_since(value: &str, now: Duration) -> Result<Duration, String> {
    if let Ok(secs) = value.parse::<f64>() {
        if secs.is_finite() && secs >= 0.0 {
            return Ok(Duration::from_secs_f64(secs.min(now.as_secs_f64())));
        }
    }
    let time = if value.len() == 10 {
        format!("{value}T00:00:00Z")
    } else {
        value.to_string()
    };
    if let Ok(at) = humantime::parse_rfc3339_weak(&time) {
        return Ok(at.duration_since(UNIX_EPOCH).unwrap_or_default());
    }
    if let Ok(back) = humantime::parse_duration(value) {
        return Ok(now.saturating_sub(back));
    }
    Err(format!(
        "{value:?} is not a timestamp, an RFC 3339 time in UTC (2026-12-06T08:00:00Z), a date (2026-12-01) or a span back (24h, 7d)"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn since_reads_timestamps_times_dates_and_spans() {
        // 2026-12-06 17:00:00 UTC.
        let now = Duration::from_secs(1_796_576_400);
        let day = Duration::from_secs(1_796_515_200);
        assert_eq!(parse_since("1796515200", now), Ok(day));
        assert_eq!(parse_since("2026-12-06", now), Ok(day));
        assert_eq!(parse_since("2026-12-06T00:00:00Z", now), Ok(day));
        assert_eq!(parse_since("17h", now), Ok(day));
        assert_eq!(start_of_day(now), day);
        let wrong = parse_since("yesterday", now).unwrap_err();
        assert!(
            wrong.contains("\"yesterday\" is not a timestamp"),
            "{wrong}"
        );
        assert!(parse_since("-5", now).is_err());
    }
}
