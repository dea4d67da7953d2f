//! The waiting room: a request refused because its deadline cannot be
//! met is given a reservation, a time when a permit will be free for it
//! (the work ahead of it now and the reservations booked before it
//! drained). Kept under its agent and request id, it is let in when it
//! comes back then, ahead of fresh arrivals at its level; until then
//! fresh arrivals count the reservations due before they would be
//! served as work ahead of them, so the capacity promised stays free.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use corral_core::{AgentId, RequestId};
use tokio::time::Instant;

use super::LEVELS;
use crate::estimate::{eta, Ahead, Throughput};

/// At most this many reservations per pool; past it, refusals book none.
pub(crate) const MAX_RESERVATIONS: usize = 10_000;
/// A reservation is kept this long past its time, then forgotten (its
/// request, back later, is a fresh arrival).
pub(crate) const GRACE: Duration = Duration::from_secs(5);
/// A request back this little before its time is let in.
pub(crate) const EARLY: Duration = Duration::from_millis(200);
/// A permit that frees this little before a reservation at its level or
/// better falls due is kept for it rather than given to the queue: the
/// estimate ran a little high, and the request, back when told, would
/// otherwise wait behind a whole hold it was promised to go before
/// (seen against a real model server: let in, then 504).
pub(crate) const HOLD_AHEAD: Duration = Duration::from_secs(1);
/// ...and kept this long past the reservation's time for its request to
/// come back (then it goes to the queue; the reservation stays until
/// its grace ends).
pub(crate) const HOLD_LATE: Duration = Duration::from_millis(500);
/// At most this many reservations are walked for one estimate: past it
/// the wait is far longer than any deadline.
const MAX_WALKED: usize = 256;

/// Who holds a reservation: the request's agent and id.
pub(crate) type Key = (AgentId, RequestId);

/// The reservations of one pool.
#[derive(Debug, Default)]
pub(super) struct Room {
    /// By holder: when each falls due, and its number.
    by_key: HashMap<Key, (Instant, u64)>,
    /// In the order they fall due.
    by_due: BTreeMap<(Instant, u64), Booking>,
    /// Per level, the predicted cost of the reservations there.
    cost: [f64; LEVELS],
    /// Per level, how many.
    count: [usize; LEVELS],
    next: u64,
}

#[derive(Debug)]
struct Booking {
    key: Key,
    level: usize,
    cost: f64,
}

/// What a request's reservation says when it arrives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Claim {
    /// None (or one forgotten): a fresh arrival.
    Fresh,
    /// Back too early: this long to go.
    Early(Duration),
    /// Its time: let in, the reservation used up.
    Due,
}

impl Room {
    /// Forgets the reservations more than [`GRACE`] past their time.
    pub(super) fn expire(&mut self, now: Instant) {
        while let Some(entry) = self.by_due.first_entry() {
            if entry.key().0 + GRACE >= now {
                break;
            }
            let booking = entry.remove();
            self.forget(&booking);
        }
    }

    fn forget(&mut self, booking: &Booking) {
        self.by_key.remove(&booking.key);
        self.count[booking.level] -= 1;
        // Back to exactly nothing when the level empties: no drift.
        self.cost[booking.level] = if self.count[booking.level] == 0 {
            0.0
        } else {
            (self.cost[booking.level] - booking.cost).max(0.0)
        };
    }

    /// What `key`'s reservation says at `now` (expired ones forgotten
    /// first); a due one is used up.
    pub(super) fn claim(&mut self, key: &Key, now: Instant) -> Claim {
        let Some(&(due, number)) = self.by_key.get(key) else {
            return Claim::Fresh;
        };
        if now + EARLY < due {
            return Claim::Early(due - now);
        }
        if let Some(booking) = self.by_due.remove(&(due, number)) {
            self.forget(&booking);
        }
        Claim::Due
    }

    /// Books a reservation for `key` at `level`, costing `cost`, due at
    /// `due`; `false` when the room is full (or `key` holds one).
    pub(super) fn book(&mut self, key: Key, level: usize, cost: f64, due: Instant) -> bool {
        if self.by_key.len() >= MAX_RESERVATIONS || self.by_key.contains_key(&key) {
            return false;
        }
        let number = self.next;
        self.next += 1;
        self.by_key.insert(key.clone(), (due, number));
        self.by_due
            .insert((due, number), Booking { key, level, cost });
        self.count[level] += 1;
        self.cost[level] += cost;
        true
    }

    /// `ahead` with every reservation at `level` or better: those booked
    /// before a new one at `level`.
    pub(super) fn all_ahead(&self, level: usize, mut ahead: Ahead) -> Ahead {
        for better in 0..=level.min(LEVELS - 1) {
            ahead.count += self.count[better];
            ahead.cost += self.cost[better];
        }
        ahead
    }

    /// `ahead` with the reservations at `level` or better that fall due
    /// before a request with `ahead` ahead of it would be served (each
    /// counted pushes its service later).
    pub(super) fn due_ahead(
        &self,
        level: usize,
        mut ahead: Ahead,
        throughput: &Throughput,
        now: Instant,
    ) -> Ahead {
        if self.by_due.is_empty() {
            return ahead;
        }
        let mut served = now + eta(ahead, throughput).unwrap_or(Duration::ZERO);
        for ((due, _), booking) in self.by_due.iter().take(MAX_WALKED) {
            // Due up to [`HOLD_AHEAD`] after it would be served, a
            // reservation has a free permit kept for it: ahead of it too.
            if *due > served + HOLD_AHEAD {
                break;
            }
            if booking.level > level {
                continue;
            }
            ahead.count += 1;
            ahead.cost += booking.cost;
            served = now + eta(ahead, throughput).unwrap_or(Duration::ZERO);
        }
        ahead
    }

    /// How many permits are kept for reservations at `level` or better
    /// due from [`HOLD_LATE`] ago to [`HOLD_AHEAD`] from `now` (and
    /// before `before`, if given), and when the first of those holds
    /// ends.
    pub(super) fn held_for(
        &self,
        level: usize,
        now: Instant,
        before: Option<Instant>,
    ) -> (usize, Option<Instant>) {
        let from = now.checked_sub(HOLD_LATE).unwrap_or(now);
        let mut held = 0;
        let mut ends: Option<Instant> = None;
        for ((due, _), booking) in self
            .by_due
            .range((from, 0)..)
            .take_while(|((due, _), _)| *due <= now + HOLD_AHEAD)
            .take(MAX_WALKED)
        {
            // A hold ends at its end, not after: a timer set for then
            // finds it over.
            if booking.level > level
                || *due + HOLD_LATE <= now
                || before.is_some_and(|before| *due >= before)
            {
                continue;
            }
            held += 1;
            let end = *due + HOLD_LATE;
            ends = Some(ends.map_or(end, |e| e.min(end)));
        }
        (held, ends)
    }

    /// How many reservations are kept.
    pub(super) fn len(&self) -> usize {
        self.by_key.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::estimate::HoldModel;

    fn key(id: &str) -> Key {
        ("a".into(), id.into())
    }

    fn throughput() -> Throughput {
        // One slot, free in half a second; 10 ms per unit of cost.
        Throughput {
            capacity: 1,
            in_flight: 1,
            model: Some(HoldModel {
                fixed: 0.0,
                per_cost: 0.01,
                average: 1.0,
            }),
            slots: vec![0.5],
            completions_per_sec: 0.0,
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_reservation_is_early_then_due_then_used_up() {
        let now = Instant::now();
        let mut room = Room::default();
        assert!(room.book(key("r"), 4, 100.0, now + Duration::from_secs(3)));
        assert!(!room.book(key("r"), 4, 100.0, now), "one per request");
        let cases = [
            (0, Claim::Early(Duration::from_secs(3))),
            (2_000, Claim::Early(Duration::from_secs(1))),
            (2_900, Claim::Due),
            (2_900, Claim::Fresh),
        ];
        for (ms, expected) in cases {
            let at = now + Duration::from_millis(ms);
            assert_eq!(room.claim(&key("r"), at), expected, "at {ms} ms");
        }
        assert_eq!(room.len(), 0);
        assert_eq!(room.all_ahead(9, Ahead::default()), Ahead::default());
    }

    #[tokio::test(start_paused = true)]
    async fn reservations_past_their_grace_are_forgotten() {
        let now = Instant::now();
        let mut room = Room::default();
        room.book(key("old"), 4, 100.0, now + Duration::from_secs(1));
        room.book(key("new"), 4, 50.0, now + Duration::from_secs(10));
        room.expire(now + Duration::from_secs(1) + GRACE + Duration::from_millis(1));
        assert_eq!(room.claim(&key("old"), now), Claim::Fresh);
        assert_eq!(room.len(), 1);
        let all = room.all_ahead(4, Ahead::default());
        assert_eq!((all.count, all.cost), (1, 50.0));
    }

    #[tokio::test(start_paused = true)]
    async fn only_reservations_due_before_a_request_is_served_are_ahead_of_it() {
        let now = Instant::now();
        let mut room = Room::default();
        // Due at 1 s (level 5), 2 s (level 2), 30 s (level 5); each 1 s.
        room.book(key("a"), 4, 100.0, now + Duration::from_secs(1));
        room.book(key("b"), 1, 100.0, now + Duration::from_secs(2));
        room.book(key("c"), 4, 100.0, now + Duration::from_secs(30));
        // One of 1 s queued, the running one done in 0.5 s: served at 1.5 s,
        // so behind "a" (due at 1 s): at 2.5 s, so behind "b" too: at
        // 3.5 s, before "c".
        let queued = Ahead {
            count: 1,
            cost: 100.0,
        };
        let ahead = room.due_ahead(4, queued, &throughput(), now);
        assert_eq!((ahead.count, ahead.cost), (3, 300.0));
        // Served at 0.5 s with nothing queued: "a", due within the
        // second a freed permit is kept for it, is ahead of it all the
        // same, and so "b" (due at 2 s, within a second of "a"'s end at
        // 1.5 s); not "c".
        assert_eq!(
            room.due_ahead(4, Ahead::default(), &throughput(), now)
                .count,
            2
        );
        // At level 1, the reservations at 2 and 5 are behind it.
        assert_eq!(room.due_ahead(0, queued, &throughput(), now).count, 1);
        // A new reservation at level 5 comes after all three.
        assert_eq!(room.all_ahead(4, Ahead::default()).count, 3);
        assert_eq!(room.all_ahead(0, Ahead::default()).count, 0);
    }

    #[tokio::test(start_paused = true)]
    async fn permits_are_kept_for_reservations_due_soon_at_their_level_or_better() {
        let now = Instant::now();
        let mut room = Room::default();
        room.book(key("soon"), 4, 1.0, now + Duration::from_millis(800));
        room.book(key("urgent"), 1, 1.0, now + Duration::from_millis(900));
        room.book(key("later"), 4, 1.0, now + Duration::from_secs(3));
        // At level 5: both due within a second, the first hold ending
        // 500 ms after the first is due.
        assert_eq!(
            room.held_for(4, now, None),
            (2, Some(now + Duration::from_millis(1_300)))
        );
        // At level 2, only the one there.
        assert_eq!(room.held_for(1, now, None).0, 1);
        assert_eq!(room.held_for(0, now, None).0, 0);
        // Past their time by the hold: none.
        assert_eq!(
            room.held_for(4, now + Duration::from_millis(1_300), None).0,
            1
        );
        assert_eq!(
            room.held_for(4, now + Duration::from_millis(1_400), None).0,
            0
        );
        // "later" comes into the window.
        assert_eq!(
            room.held_for(4, now + Duration::from_millis(2_100), None).0,
            1
        );
    }

    #[tokio::test(start_paused = true)]
    async fn the_room_holds_a_bounded_number() {
        let now = Instant::now();
        let mut room = Room::default();
        for n in 0..MAX_RESERVATIONS {
            assert!(room.book(key(&n.to_string()), 4, 1.0, now));
        }
        assert!(!room.book(key("one more"), 4, 1.0, now));
        assert_eq!(room.len(), MAX_RESERVATIONS);
    }
}
