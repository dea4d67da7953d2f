//! Whether a request is let in at arrival, from its deadline, its wait
//! and its reservation in the waiting room.

use std::time::Duration;

use corral_core::lock;
use tokio::time::Instant;

use super::ahead::Me;
use super::room::{Claim, Key, HOLD_AHEAD};
use super::{Pool, LEVELS};
use crate::estimate::{eta, Estimate};

/// What becomes of a request at arrival.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// Let in; at its level's front if it came back for its reservation.
    Admit { front: bool },
    /// Refused: its deadline cannot be met, or (`early`) it came back
    /// before its reservation is due. `retry_after`: when it would be let
    /// in; `reserved`: it holds a reservation for then.
    Refuse {
        retry_after: Option<Duration>,
        reserved: bool,
        early: bool,
    },
}

/// The waits a verdict is made from.
#[derive(Debug, Clone, Copy)]
struct Waits {
    /// Its wait as a fresh arrival (the reservations due before it is
    /// served counted): what admission decides on.
    fresh: Option<Duration>,
    /// The same, corrected by what requests of its size waited: what it
    /// is told.
    told: Option<Duration>,
    /// Its wait behind every reservation booked before it, as it would
    /// be if it booked one now.
    booked: Option<Duration>,
}

/// The decision, as a table: a due reservation is let in; an early one
/// refused with the time left; a fresh arrival let in if its wait is
/// unknown or within `budget`, else refused, with a reservation when it
/// can hold one (`book`: it named itself and the room has space).
///
/// A reservation falls due when a permit is expected free for it. (Due
/// half its deadline before, an estimate could run low by that much and
/// still serve it; but the deadline covers the answer too, not only the
/// wait, and in the `waits` bench only 51–77 % of those let in back
/// early answered in time, against 79–87 % due on time.)
fn decide(claim: Claim, budget: Option<Duration>, waits: Waits, book: bool) -> Verdict {
    match claim {
        Claim::Due => return Verdict::Admit { front: true },
        Claim::Early(left) => {
            return Verdict::Refuse {
                retry_after: Some(left),
                reserved: true,
                early: true,
            }
        }
        Claim::Fresh => {}
    }
    let (Some(budget), Some(fresh)) = (budget, waits.fresh) else {
        return Verdict::Admit { front: false };
    };
    if fresh <= budget {
        return Verdict::Admit { front: false };
    }
    let booked = waits
        .booked
        .unwrap_or(fresh)
        .max(fresh)
        .max(waits.told.unwrap_or(fresh));
    if book {
        Verdict::Refuse {
            retry_after: Some(booked),
            reserved: true,
            early: false,
        }
    } else {
        // Back as a fresh arrival, when the work ahead of it is down
        // to its budget.
        Verdict::Refuse {
            retry_after: Some(booked.saturating_sub(budget)),
            reserved: false,
            early: false,
        }
    }
}

impl Pool {
    /// Decides for a request arriving now at `level` (`me`, an arrival)
    /// whose deadline is `budget` away: its estimate, and whether it is
    /// let in. `key` names it (agent and the id its client gave) for its
    /// reservation: one it holds is claimed, one is booked if it is
    /// refused. One take of the lock: no arrival slips between the
    /// decision and the booking.
    pub(crate) fn admit(
        &self,
        level: usize,
        me: Me<'_>,
        budget: Option<Duration>,
        key: Option<&Key>,
    ) -> (Estimate, Verdict) {
        let now = Instant::now();
        let level = level.min(LEVELS - 1);
        let mut state = lock(&self.state);
        state.room.expire(now);
        let claim = key.map_or(Claim::Fresh, |key| match state.room.claim(key, now) {
            // Back a little early with a permit free that is not kept
            // for a reservation due before its own: its time.
            Claim::Early(left)
                if left <= HOLD_AHEAD
                    && self.fleet.is_none()
                    && state.capacity.saturating_sub(state.in_flight)
                        > state.room.held_for(level, now, Some(now + left)).0 =>
            {
                state.room.claim(key, now + left)
            }
            claim => claim,
        });
        let throughput = self.throughput(&state, now);
        let me = if claim == Claim::Due { Me::Front } else { me };
        let own = self.ahead(&state, level, me, now);
        let ahead = match me {
            Me::Front => own,
            _ => state.room.due_ahead(level, own, &throughput, now),
        };
        let cost = match me {
            Me::Arriving { cost, .. } => cost,
            _ => 0.0,
        };
        let mut estimate = self.corrected(&state, ahead.count, eta(ahead, &throughput), cost);
        if matches!(me, Me::Front) {
            // Back for its reservation, it waits behind what runs, not
            // behind what the order of service puts ahead: its wait says
            // nothing of the fresh arrivals' estimates.
            estimate.raw = None;
        }
        // Decided on the uncorrected waits: the correction is learned
        // from the requests let in, which the decision chooses; fed back
        // into it, it would refuse more, learn from fewer and luckier
        // ones, and grow (seen in the `waits` bench: ×4, nearly every
        // request refused).
        let waits = Waits {
            fresh: estimate.raw,
            told: estimate.eta,
            booked: eta(state.room.all_ahead(level, own), &throughput),
        };
        let verdict = decide(claim, budget, waits, key.is_some());
        if let (
            Verdict::Refuse {
                reserved: true,
                retry_after,
                ..
            },
            Claim::Fresh,
            Some(key),
        ) = (verdict, claim, key)
        {
            let due = now + retry_after.unwrap_or_default();
            if !state.room.book(key.clone(), level, cost, due) {
                // The room is full: told when to come back as a fresh
                // arrival instead.
                return (estimate, decide(claim, budget, waits, false));
            }
        }
        (estimate, verdict)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secs(s: u64) -> Option<Duration> {
        Some(Duration::from_secs(s))
    }

    #[test]
    fn the_verdict_by_reservation_deadline_and_wait() {
        let admit = Verdict::Admit { front: false };
        let refuse = |after: u64, reserved| Verdict::Refuse {
            retry_after: secs(after),
            reserved,
            early: false,
        };
        let waits = |fresh, booked| Waits {
            fresh,
            told: fresh,
            booked,
        };
        let cases = [
            // Its reservation is due: let in at the front, whatever waits.
            (
                Claim::Due,
                secs(1),
                waits(secs(9), secs(20)),
                true,
                Verdict::Admit { front: true },
            ),
            // Early: the time left, whatever waits.
            (
                Claim::Early(Duration::from_secs(3)),
                secs(60),
                waits(secs(0), secs(0)),
                true,
                Verdict::Refuse {
                    retry_after: secs(3),
                    reserved: true,
                    early: true,
                },
            ),
            // No deadline, or a wait not known: let in.
            (Claim::Fresh, None, waits(secs(9), secs(20)), true, admit),
            (Claim::Fresh, secs(1), waits(None, None), true, admit),
            // Within its deadline: let in.
            (Claim::Fresh, secs(6), waits(secs(6), secs(20)), true, admit),
            // Beyond: a reservation for when a permit is free for it,
            // behind those booked before.
            (
                Claim::Fresh,
                secs(6),
                waits(secs(8), secs(20)),
                true,
                refuse(20, true),
            ),
            (
                Claim::Fresh,
                secs(6),
                waits(secs(8), None),
                true,
                refuse(8, true),
            ),
            // Told a longer wait (the correction) than decided on: the
            // longer.
            (
                Claim::Fresh,
                secs(6),
                Waits {
                    fresh: secs(8),
                    told: secs(12),
                    booked: secs(10),
                },
                true,
                refuse(12, true),
            ),
            // No name to keep a place under: when the work ahead is down
            // to its deadline.
            (
                Claim::Fresh,
                secs(6),
                waits(secs(8), secs(20)),
                false,
                refuse(14, false),
            ),
        ];
        for (claim, budget, waits, book, expected) in cases {
            assert_eq!(
                decide(claim, budget, waits, book),
                expected,
                "{claim:?}, budget {budget:?}, {waits:?}, book {book}"
            );
        }
    }
}
