//! The log keeps order and ids, bounds memory, filters replays, survives
//! a restart through its file, and projects usage.

#![allow(clippy::unwrap_used)] // a test fails by panicking

use corral_core::{EventSink, NewEvent};
use corral_events::{project, EventLog, EventsConfig, Query};
use serde_json::json;

fn request(log: &EventLog, agent: &str, id: &str, generated: u64) {
    log.record(NewEvent::new("received", json!({"endpoint": "chat"})).about(agent, id));
    log.record(
        NewEvent::new(
            "completed",
            json!({"outcome": "completed", "prompt_tokens": 5, "generated_tokens": generated}),
        )
        .about(agent, id),
    );
}

#[test]
fn ids_grow_and_memory_keeps_the_last_events() {
    let log = EventLog::open(&EventsConfig {
        capacity: 3,
        file: None,
    })
    .unwrap();
    for i in 0..5 {
        log.record(NewEvent::new("tick", json!({ "i": i })));
    }
    let events = log.replay(&Query::default());
    assert_eq!(events.iter().map(|e| e.id).collect::<Vec<_>>(), [3, 4, 5]);
    assert_eq!(log.size(), (3, 6));
}

#[test]
fn replays_filter_by_agent_kind_time_and_limit() {
    let log = EventLog::open(&EventsConfig::default()).unwrap();
    request(&log, "a", "1", 10);
    let middle = log.replay(&Query::default()).last().unwrap().timestamp;
    request(&log, "b", "2", 20);
    assert_eq!(
        log.replay(&Query {
            agent: Some("b".into()),
            ..Query::default()
        })
        .len(),
        2
    );
    assert_eq!(
        log.replay(&Query {
            kind: Some("completed".into()),
            ..Query::default()
        })
        .len(),
        2
    );
    assert!(
        log.replay(&Query {
            since: Some(middle),
            ..Query::default()
        })
        .len()
            >= 2
    );
    assert_eq!(
        log.replay(&Query {
            limit: Some(1),
            ..Query::default()
        })[0]
            .kind,
        "received"
    );
}

#[test]
fn the_projection_of_the_log_is_the_live_usage_even_after_a_restart() {
    let dir = std::env::temp_dir().join(format!("corral-events-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("events.jsonl");
    let _ = std::fs::remove_file(&file);
    let config = EventsConfig {
        capacity: 100,
        file: Some(file.clone()),
    };
    {
        let log = EventLog::open(&config).unwrap();
        request(&log, "a", "1", 10);
        request(&log, "a", "2", 7);
        log.record(NewEvent::new("refused", json!({"reason": "shed"})).about("b", "3"));
        assert_eq!(project(&log.replay(&Query::default())), log.usage());
    }
    let reopened = EventLog::open(&config).unwrap();
    let usage = reopened.usage();
    assert_eq!(usage["a"].generated_tokens, 17);
    assert_eq!(usage["a"].completed, 2);
    assert_eq!(usage["b"].refused, 1);
    request(&reopened, "a", "4", 1);
    let ids: Vec<u64> = reopened
        .replay(&Query::default())
        .iter()
        .map(|e| e.id)
        .collect();
    assert_eq!(
        ids,
        (1..=7).collect::<Vec<_>>(),
        "ids continue after the restart"
    );
    assert_eq!(std::fs::read_to_string(&file).unwrap().lines().count(), 7);
}
