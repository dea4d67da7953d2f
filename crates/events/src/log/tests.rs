//! The log's merging, from inside.

use super::held::{BATCH, SHARD_LIMIT};
use super::*;

fn received(log: &EventLog, n: usize) {
    for i in 0..n {
        log.record_fields(
            "received",
            "planner",
            &i.to_string(),
            &[("class", "batch".into())],
        );
    }
}

#[test]
fn a_full_batch_is_merged_off_the_recording_thread_and_the_merger_ends_with_the_log() {
    let log = EventLog::open(&EventsConfig::default()).unwrap();
    received(&log, BATCH - 1);
    assert!(
        log.inner.merger.get().is_none(),
        "no thread for fewer events"
    );
    assert_eq!(lock(&log.inner.state).events.len(), 0, "held, not merged");
    received(&log, 1);
    assert!(matches!(log.inner.merger.get(), Some(Some(_))));
    // Merged by the log's thread, not by a read: the state fills up
    // without `merged()` being called.
    // (Waited for by yielding, a bounded number of times: a thread
    // that never merges fails the test instead of hanging it.)
    let merged = (0..10_000_000).any(|_| {
        std::thread::yield_now();
        lock(&log.inner.state).events.len() == BATCH
    });
    assert!(merged, "the batch was never merged");
    // The thread ends when the log is dropped: its handle taken here
    // (so the drop does not join it) and joined on a helper, so a
    // thread that lives on fails the test instead of hanging it.
    let merger = lock(&log.inner.joiner).take().expect("a merging thread");
    drop(log);
    let (done, ended) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = done.send(merger.join().is_ok());
    });
    assert_eq!(
        ended.recv_timeout(std::time::Duration::from_secs(10)),
        Ok(true),
        "the merging thread did not end with the log"
    );
}

#[test]
fn a_log_that_keeps_nothing_still_counts_usage_through_the_shards() {
    let log = EventLog::open(&EventsConfig {
        capacity: 0,
        file: None,
    })
    .unwrap();
    received(&log, BATCH + 10);
    log.record(
        NewEvent::new(
            "received",
            serde_json::json!({"class": "interactive", "endpoint": "chat"}),
        )
        .about("planner", "r"),
    );
    log.record(
        NewEvent::new(
            "completed",
            serde_json::json!({"outcome": "completed", "prompt_tokens": 3, "generated_tokens": 9}),
        )
        .about("planner", "r"),
    );
    let usage = &log.usage()["planner"];
    assert_eq!(usage.requests, BATCH as u64 + 11);
    assert_eq!(
        (usage.completed, usage.prompt_tokens, usage.generated_tokens),
        (1, 3, 9)
    );
    assert_eq!(
        usage.class.as_deref(),
        Some("interactive"),
        "the last class named"
    );
    assert_eq!(log.size(), (0, BATCH as u64 + 13));
    assert!(log.replay(&Query::default()).is_empty());
}

#[test]
fn a_shard_past_its_limit_is_merged_by_the_recording_thread() {
    let log = EventLog::open(&EventsConfig::default()).unwrap();
    // As if the merging thread could not be started.
    log.inner.merger.set(None).unwrap();
    received(&log, SHARD_LIMIT - 1);
    assert_eq!(lock(&log.inner.state).events.len(), 0);
    received(&log, 1);
    assert_eq!(lock(&log.inner.state).events.len(), SHARD_LIMIT);
    assert_eq!(log.usage()["planner"].requests, SHARD_LIMIT as u64);
}
