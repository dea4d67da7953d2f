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

#[test]
fn replay_gives_back_each_event_exactly_as_recorded() {
    let log = EventLog::open(&EventsConfig::default()).unwrap();
    let received = json!({"endpoint": "generate", "model": "llama3", "priority": 5,
                          "class": "default", "received_at": 1795645877.9998765});
    let breaker = json!({"breaker": "upstream", "to": "open", "detail": {"failures": [1, 2]}});
    log.record(NewEvent::new("received", received.clone()).about("a", "r-1"));
    log.record(NewEvent::new("breaker", breaker.clone()));
    let events = log.replay(&Query::default());
    assert_eq!(events[0].data, received);
    assert_eq!(events[0].agent.as_deref(), Some("a"));
    assert_eq!(events[0].request_id.as_deref(), Some("r-1"));
    assert_eq!(events[1].data, breaker);
    assert_eq!(
        (events[1].agent.as_deref(), events[1].request_id.as_deref()),
        (None, None)
    );
}

#[test]
fn fields_are_recorded_as_the_value_they_stand_for() {
    use corral_core::EventValue;
    let by_value = EventLog::open(&EventsConfig::default()).unwrap();
    let by_fields = EventLog::open(&EventsConfig::default()).unwrap();
    let model: Option<&str> = Some("llama3");
    let events: [(&'static str, Vec<(&'static str, EventValue<'_>)>); 3] = [
        (
            "received",
            vec![
                ("endpoint", "chat".into()),
                ("model", model.into()),
                ("priority", Some(3u8).into()),
                ("class", "opus".into()),
                ("received_at", 1795645877.9998765.into()),
            ],
        ),
        ("first_byte", vec![("ttfb_ms", 12.345.into())]),
        (
            "completed",
            vec![
                ("outcome", "completed".into()),
                ("status", 200u16.into()),
                ("duration_ms", 80.5.into()),
                ("prompt_tokens", 26u64.into()),
                ("generated_tokens", 298u64.into()),
            ],
        ),
    ];
    for (kind, fields) in &events {
        let data = fields
            .iter()
            .map(|(name, value)| (name.to_string(), value.to_json()))
            .collect::<serde_json::Map<_, _>>();
        by_value.record(NewEvent::new(kind, data.into()).about("planner", "r-1"));
        by_fields.record_fields(kind, "planner", "r-1", fields);
    }
    let strip = |log: &EventLog| {
        log.replay(&Query::default())
            .into_iter()
            .map(|e| (e.id, e.kind, e.agent, e.request_id, e.data))
            .collect::<Vec<_>>()
    };
    assert_eq!(strip(&by_value), strip(&by_fields));
    assert_eq!(by_value.usage(), by_fields.usage());
    assert_eq!(by_fields.usage()["planner"].generated_tokens, 298);
    assert_eq!(by_fields.usage()["planner"].class.as_deref(), Some("opus"));
}

#[test]
fn usage_since_counts_by_the_hour_and_forgets_past_the_retention() {
    let dir = std::env::temp_dir().join(format!("corral-usage-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("events.jsonl");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    let day = 86_400.0;
    // Written 40, 3 and 0 days ago: the first is past the 35 days kept.
    let lines: Vec<String> = [
        (1, now - 40.0 * day, 100),
        (2, now - 3.0 * day, 20),
        (3, now, 3),
    ]
    .iter()
    .map(|(id, at, generated)| {
        json!({"id": id, "timestamp": at, "kind": "completed", "agent": "a",
                   "data": {"outcome": "completed", "generated_tokens": generated}})
        .to_string()
    })
    .collect();
    std::fs::write(&file, lines.join("\n") + "\n").unwrap();
    let log = EventLog::open(&EventsConfig {
        capacity: 10,
        file: Some(file),
    })
    .unwrap();
    assert_eq!(log.usage()["a"].generated_tokens, 123, "all time keeps all");
    assert_eq!(log.usage_since(0.0, None)["a"].generated_tokens, 23);
    assert_eq!(
        log.usage_since(now - 4.0 * day, Some("a"))["a"].generated_tokens,
        23
    );
    assert_eq!(log.usage_since(now - day, None)["a"].generated_tokens, 3);
    // `since` counts from the start of its hour.
    let hour_start = (now / 3600.0).floor() * 3600.0;
    assert_eq!(
        log.usage_since(hour_start + 1.0, None)["a"].generated_tokens,
        3
    );
    assert!(log.usage_since(hour_start + 3600.0, None).is_empty());
    assert!(log.usage_since(0.0, Some("b")).is_empty());
    request(&log, "b", "r", 7);
    let usage = log.usage_since(now - 60.0, None);
    assert_eq!((usage["b"].requests, usage["b"].generated_tokens), (1, 7));
    assert_eq!(usage["a"].requests, 0);
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Threads record at once while another reads: every read holds ids
/// 1, 2, 3, ... without a gap (the last `capacity` of them), each
/// thread's events in its order, and at the end every event is counted.
#[test]
fn events_recorded_by_many_threads_read_back_in_order_without_gaps() {
    const THREADS: usize = 6;
    const EACH: usize = 30_000;
    for capacity in [usize::MAX, 1_000] {
        let log = std::sync::Arc::new(
            EventLog::open(&EventsConfig {
                capacity,
                file: None,
            })
            .unwrap(),
        );
        let start = std::sync::Arc::new(std::sync::Barrier::new(THREADS + 1));
        let recorders: Vec<_> = (0..THREADS)
            .map(|t| {
                let (log, start) = (log.clone(), start.clone());
                std::thread::spawn(move || {
                    start.wait();
                    for i in 0..EACH {
                        let agent = format!("agent-{t}");
                        log.record_fields(
                            "received",
                            &agent,
                            &i.to_string(),
                            &[("class", "c".into())],
                        );
                    }
                })
            })
            .collect();
        start.wait();
        let check = |events: &[corral_core::Event]| {
            let (held, next) = (events.len() as u64, log.size().1);
            let ids: Vec<u64> = events.iter().map(|e| e.id).collect();
            let first = ids.first().copied().unwrap_or(1);
            assert!(
                ids.iter().copied().eq(first..first + held),
                "a gap or a disorder"
            );
            assert!(first + held <= next);
            let mut last_of = std::collections::HashMap::new();
            for event in events {
                let i: i64 = event.request_id.as_deref().unwrap().parse().unwrap();
                let last = last_of.entry(event.agent.clone().unwrap()).or_insert(i - 1);
                assert_eq!(i, *last + 1, "a thread's events out of its order");
                *last = i;
            }
        };
        let mut reads = 0;
        while !recorders.iter().all(std::thread::JoinHandle::is_finished) {
            let events = log.replay(&Query::default());
            if capacity == usize::MAX {
                // Nothing evicted: each thread's events from its first.
                let mut firsts = std::collections::HashSet::new();
                for event in &events {
                    if firsts.insert(event.agent.clone()) {
                        assert_eq!(event.request_id.as_deref(), Some("0"));
                    }
                }
            }
            check(&events);
            reads += 1;
        }
        for recorder in recorders {
            recorder.join().unwrap();
        }
        let events = log.replay(&Query::default());
        check(&events);
        assert_eq!(events.len(), (THREADS * EACH).min(capacity));
        assert_eq!(events.last().unwrap().id, (THREADS * EACH) as u64);
        let usage = log.usage();
        for t in 0..THREADS {
            assert_eq!(usage[&format!("agent-{t}")].requests, EACH as u64);
        }
        assert!(reads > 0);
    }
}
