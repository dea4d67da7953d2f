//! The pure decision, as a table: from a log to what comes next.

#![allow(clippy::unwrap_used)] // a test fails by panicking

use corral_saga::Transition::{self, *};
use corral_saga::{decide, status, step_states, Next, Phase, SagaStatus};
use serde_json::json;

fn started() -> Transition {
    Started {
        steps: vec!["a".into(), "b".into(), "c".into(), "d".into()],
        agent: None,
        definition: json!(null),
        authenticated: false,
    }
}

fn done(step: usize) -> [Transition; 2] {
    [
        StepStarted { step },
        StepDone {
            step,
            output: json!(step),
        },
    ]
}

fn log(parts: &[&[Transition]]) -> Vec<Transition> {
    let mut log = vec![started()];
    for part in parts {
        log.extend_from_slice(part);
    }
    log
}

#[test]
fn each_log_leads_to_one_next_move() {
    let failed = |step| StepFailed {
        step,
        reason: "500".into(),
    };
    let cancelled = Cancelled {
        reason: "asked".into(),
    };
    let table: Vec<(&str, Vec<Transition>, Next)> =
        vec![
        ("just started: run the first step", log(&[]), Next::Run(0)),
        (
            "two done: run the third",
            log(&[&done(0), &done(1)]),
            Next::Run(2),
        ),
        (
            "started, no end (a crash): run it again",
            log(&[&done(0), &[StepStarted { step: 1 }]]),
            Next::Run(1),
        ),
        (
            "all done: complete",
            log(&[&done(0), &done(1), &done(2), &done(3)]),
            Next::Complete,
        ),
        (
            "step 3 failed: compensate step 2",
            log(&[&done(0), &done(1), &[StepStarted { step: 2 }, failed(2)]]),
            Next::Compensate(1),
        ),
        (
            "step 2 compensated: compensate step 1",
            log(&[
                &done(0),
                &done(1),
                &[
                    StepStarted { step: 2 },
                    failed(2),
                    Compensating { step: 1 },
                    Compensated { step: 1 },
                ],
            ]),
            Next::Compensate(0),
        ),
        (
            "compensating, no end (a crash): again",
            log(&[&done(0), &done(1), &[failed(2), Compensating { step: 1 }]]),
            Next::Compensate(1),
        ),
        (
            "everything compensated: finish",
            log(&[
                &done(0),
                &[failed(1), Compensating { step: 0 }, Compensated { step: 0 }],
            ]),
            Next::FinishCompensation,
        ),
        (
            "first step failed: nothing to compensate",
            log(&[&[StepStarted { step: 0 }, failed(0)]]),
            Next::FinishCompensation,
        ),
        (
            "cancelled mid-step: that step is compensated too",
            log(&[&done(0), &[StepStarted { step: 1 }, cancelled.clone()]]),
            Next::Compensate(1),
        ),
        (
            "cancelled before anything: finish",
            log(&[std::slice::from_ref(&cancelled)]),
            Next::FinishCompensation,
        ),
        (
            "cancelled, then the step ended: compensate it",
            log(&[
                &done(0),
                &[
                    StepStarted { step: 1 },
                    cancelled,
                    StepDone {
                        step: 1,
                        output: json!(1),
                    },
                ],
            ]),
            Next::Compensate(1),
        ),
        (
            "completed: over",
            log(&[&done(0), &[Completed]]),
            Next::Over(SagaStatus::Completed),
        ),
        (
            "compensated: over",
            log(&[&[failed(0), CompensatedAll]]),
            Next::Over(SagaStatus::Compensated),
        ),
        (
            "failed: over",
            log(&[&[
                failed(0),
                Failed {
                    step: Some(0),
                    reason: "x".into(),
                },
            ]]),
            Next::Over(SagaStatus::Failed),
        ),
        (
            "a stale runner restarts a done step: it stays done, the next runs",
            log(&[&done(0), &[StepStarted { step: 0 }]]),
            Next::Run(1),
        ),
        (
            "a stale runner fails a done step: the done step is compensated",
            log(&[&done(0), &done(1), &[failed(1)]]),
            Next::Compensate(1),
        ),
        (
            "a stale start then failure after done, with step 0 done: both compensated, 1 first",
            log(&[&done(0), &done(1), &[StepStarted { step: 1 }, failed(1)]]),
            Next::Compensate(1),
        ),
        (
            "a picked target and a failed rebuild change nothing",
            log(&[
                &[Resolved { step: 0, target: "http://a".into() }],
                &done(0),
                &[ResumeFailed { reason: "x".into() }],
            ]),
            Next::Run(1),
        ),
        (
            "entries past the last step are ignored",
            log(&[&done(9)]),
            Next::Run(0),
        ),
    ];
    for (case, log, expected) in table {
        assert_eq!(decide(&log, 4), expected, "{case}");
    }
}

#[test]
fn status_follows_the_log() {
    assert_eq!(status(&log(&[&done(0)])), SagaStatus::Running);
    assert_eq!(
        status(&log(&[&[StepFailed {
            step: 0,
            reason: "x".into()
        }]])),
        SagaStatus::Compensating
    );
    assert_eq!(
        status(&log(&[&[Cancelled { reason: "x".into() }]])),
        SagaStatus::Compensating
    );
    assert_eq!(status(&log(&[&[Completed]])), SagaStatus::Completed);
    assert_eq!(status(&[]), SagaStatus::Running);
}

#[test]
fn step_states_carry_outputs_and_errors() {
    let log = log(&[
        &done(0),
        &[
            StepStarted { step: 1 },
            StepFailed {
                step: 1,
                reason: "409".into(),
            },
            Compensating { step: 0 },
        ],
    ]);
    let states = step_states(&log, 4);
    assert_eq!(states[0].action, Phase::Done);
    assert_eq!(states[0].output, Some(json!(0)));
    assert_eq!(states[0].compensation, Phase::Running);
    assert_eq!(states[1].action, Phase::Failed);
    assert_eq!(states[1].error.as_deref(), Some("409"));
    assert_eq!(states[2].action, Phase::Pending);
}

#[test]
fn done_is_sticky_against_a_stale_runners_later_entries() {
    let stale = log(&[
        &done(0),
        &[
            StepStarted { step: 0 },
            StepFailed {
                step: 0,
                reason: "stale".into(),
            },
        ],
    ]);
    let states = step_states(&stale, 4);
    assert_eq!(states[0].action, Phase::Done);
    assert_eq!(states[0].output, Some(json!(0)));
    assert_eq!(decide(&stale, 4), Next::Compensate(0));
}
