//! The controller against a simulated Ollama, in virtual time: a
//! discrete-event loop, deterministic (a seeded generator), so a run of
//! several virtual minutes takes milliseconds and repeats exactly.
//!
//! The server has `P` slots per model (changed at run time, as a restart
//! with another `OLLAMA_NUM_PARALLEL` would: running answers end in their
//! slots, new ones get the new number), a first token after ~200 ms ±
//! 15 % (+3 % per other request running), tokens every ~25 ms (+4 % per
//! other request running), and a FIFO queue beyond `P` bounded by 512
//! (Ollama's `OLLAMA_MAX_QUEUE`). In front of it, Corral as the caller
//! does it: 131 clients always waiting, dispatch while fewer than the
//! limit are in flight, one sample per request at its end, and a
//! `Sample::waiting` for a request still without first byte after
//! `overdue_after` (checked every 100 ms).
//!
//! `SIM_TRACE=1` prints each decision (with `--nocapture`).

#![allow(clippy::unwrap_used)] // a test fails by panicking

mod sim;

use std::time::Duration;

use corral_adaptive::AdaptiveConfig;
use sim::Sim;

fn secs(s: u64) -> Duration {
    Duration::from_secs(s)
}

/// Runs P=3 for 90 s, then P=6 for 90 s, then P=2 for 90 s, from
/// `initial`; checks each phase and prints what it saw.
fn three_phases(initial: usize, seed: u64) -> Sim {
    let config = AdaptiveConfig {
        initial,
        ..AdaptiveConfig::default()
    };
    let mut sim = Sim::new(config, 3, seed);
    sim.run(&[(secs(90), 6), (secs(180), 2)], secs(270));
    assert_eq!(sim.refused, 0, "the server's queue bound was never reached");
    for phase in &sim.phases {
        let settled = phase.settled_after();
        let share = phase.share_at_parallel(secs(30));
        let most_settled = settled.map(|s| phase.most_queued_after(s));
        println!(
            "initial {initial}, seed {seed}, P={}: settled within ±1 after {settled:?}, {:.0} % at P in the last 30 s, most queued inside at a dispatch: {} overall, {most_settled:?} once settled",
            phase.parallel,
            share * 100.0,
            phase.most_queued_after(Duration::ZERO),
        );
        let settled = settled.expect("settles");
        assert!(
            settled <= secs(60),
            "P={}: settled after {settled:?}",
            phase.parallel
        );
        assert!(share >= 0.5, "P={}: at P only {share}", phase.parallel);
        assert!(
            most_settled.unwrap() <= 1,
            "P={}: once settled, at most one request waits inside (a probe)",
            phase.parallel
        );
    }
    sim
}

/// At each dispatch, at most one request per slot waits inside the
/// server, but after the server loses slots while answers run: those are
/// dispatched into slots that vanish until the first is seen late, so up
/// to `lost` may wait for a few seconds.
fn assert_one_per_slot(sim: &Sim, from_phase: usize) {
    for pair in sim.phases[from_phase..].windows(2) {
        let (before, phase) = (&pair[0], &pair[1]);
        let lost = before.parallel.saturating_sub(phase.parallel);
        let most = phase.most_queued_after(Duration::ZERO);
        assert!(
            most <= phase.parallel.max(lost),
            "P {} -> {}: {most} waited inside at once",
            before.parallel,
            phase.parallel
        );
    }
}

#[test]
fn from_one_the_limit_settles_at_3_then_6_then_2_within_a_minute_each() {
    for seed in [1, 2, 3, 42, 1234] {
        let sim = three_phases(1, seed);
        assert!(sim.phases[0].most_queued_after(Duration::ZERO) <= 1);
        assert_one_per_slot(&sim, 0);
    }
}

#[test]
fn from_16_the_limit_comes_down_to_3_then_follows_the_restarts() {
    for seed in [1, 2, 3, 42, 1234] {
        let sim = three_phases(16, seed);
        // Until the first answers, the 13 beyond the 3 slots wait inside
        // (the documented cost of a high `initial`); the first back-off
        // comes with the first answer.
        let first = &sim.phases[0];
        let backed_off = first
            .limits
            .iter()
            .find(|(_, l)| *l < 16)
            .map(|(t, _)| *t)
            .unwrap();
        assert!(backed_off <= secs(5), "backed off after {backed_off:?}");
        assert!(first.most_queued_after(backed_off) <= 13);
        assert_one_per_slot(&sim, 0);
    }
}

#[test]
fn a_gpu_saturated_at_3_holds_the_limit_near_3_though_ollama_has_6_slots() {
    for seed in [1, 2, 3] {
        let mut sim = Sim::new(AdaptiveConfig::default(), 6, seed);
        sim.saturates_at = Some(3.0);
        sim.run(&[], secs(120));
        let phase = &sim.phases[0];
        let tail: Vec<usize> = phase
            .limits
            .iter()
            .filter(|(t, _)| *t >= secs(60))
            .map(|(_, l)| *l)
            .collect();
        let mean = tail.iter().sum::<usize>() as f64 / tail.len() as f64;
        println!(
            "saturated at 3, 6 slots, seed {seed}: limit {:?}..{:?} in the last minute, mean {mean:.2}",
            tail.iter().min(),
            tail.iter().max()
        );
        assert!(tail.iter().all(|l| (2..=4).contains(l)), "{tail:?}");
        assert_eq!(phase.most_queued_after(Duration::ZERO), 0, "never above 6");
    }
}

#[test]
fn after_restarts_seen_as_such_it_climbs_again_from_initial_with_at_most_one_waiting() {
    for seed in [1, 2, 3, 42, 1234] {
        let mut sim = Sim::new(AdaptiveConfig::default(), 3, seed);
        sim.hard_restarts = true;
        sim.run(&[(secs(90), 6), (secs(180), 2)], secs(270));
        assert_eq!(sim.refused, 0);
        for phase in &sim.phases {
            let settled = phase.settled_after().unwrap();
            let most = phase.most_queued_after(Duration::ZERO);
            println!(
                "hard restarts, seed {seed}, P={}: settled within ±1 after {settled:?}, most queued inside {most}",
                phase.parallel
            );
            assert!(settled <= secs(60));
            assert!(most <= 1, "P={}: {most} waited inside", phase.parallel);
        }
    }
}
