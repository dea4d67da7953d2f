//! Letting a request in at arrival, or refusing it for its deadline with
//! a reservation in the waiting room.

use std::time::Duration;

use corral_core::RequestId;
use tokio::time::Instant;

use super::{Queue, Scheduler};
use crate::permit::Acquire;
use crate::pool::{Me, Ticket, Verdict};
use crate::{DeadlineUnreachable, Estimate};

/// A request let in by [`Scheduler::admit`]: where it stands, and
/// whether it came back for its reservation (then it is served before
/// its level's fresh arrivals).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Admitted {
    /// Its place and wait as it arrives; `None` while its queue is in
    /// Redis.
    pub estimate: Option<Estimate>,
    /// It came back for its reservation.
    pub reserved: bool,
}

/// Let in unless `estimate` is past `budget`; refused, told to come back
/// when the work ahead is down to it (no reservation).
fn by_estimate(
    estimate: Option<Estimate>,
    budget: Option<Duration>,
) -> Result<Admitted, DeadlineUnreachable> {
    match (estimate, budget) {
        (Some(estimate), Some(budget)) if estimate.eta.is_some_and(|eta| eta > budget) => {
            Err(DeadlineUnreachable {
                estimate,
                budget,
                retry_after: estimate.eta.map(|eta| eta - budget),
                reserved: false,
                early: false,
            })
        }
        _ => Ok(Admitted {
            estimate,
            reserved: false,
        }),
    }
}

impl Scheduler {
    /// Whether `ticket`, a request for `model` arriving now, is let in:
    /// refused with [`DeadlineUnreachable`] when its wait (the work ahead
    /// of it and the reservations due before it is served) is beyond its
    /// deadline. Refused, a request named `id` (its client's
    /// `X-Request-Id`; pass `None` for an id Corral made) gets a
    /// reservation under its agent and id: when a permit will be free
    /// for it, behind the work ahead and the reservations booked before
    /// it. Back before then, it is refused with the time left; back then
    /// (up to a few seconds late), it is let in whatever its deadline,
    /// ahead of its level's fresh arrivals. A queue in Redis refuses by
    /// the same estimate ([`Scheduler::estimate`]) but keeps no
    /// reservation: `Retry-After` is when the work ahead is down to the
    /// deadline.
    ///
    /// ```
    /// use std::time::Duration;
    /// use corral_core::{Priority, RequestId};
    /// use corral_priority::{PriorityConfig, Scheduler, Ticket};
    ///
    /// let scheduler = Scheduler::new(&PriorityConfig::default()).unwrap();
    /// let ticket = Ticket {
    ///     agent: "a".into(),
    ///     priority: Priority::DEFAULT,
    ///     weight: 1.0,
    ///     cost: 100.0,
    ///     bytes: 0,
    ///     deadline: Some(tokio::time::Instant::now() + Duration::from_secs(5)),
    /// };
    /// # let runtime = tokio::runtime::Builder::new_current_thread().enable_time().build().unwrap();
    /// # let _guard = runtime.enter();
    /// let admitted = scheduler.admit(&ticket, None, Some(&RequestId::from("req-1"))).unwrap();
    /// assert!(!admitted.reserved);
    /// assert_eq!(admitted.estimate.unwrap().position, 0, "nothing waits");
    /// ```
    pub fn admit(
        &self,
        ticket: &Ticket,
        model: Option<&str>,
        id: Option<&RequestId>,
    ) -> Result<Admitted, DeadlineUnreachable> {
        let budget = ticket
            .deadline
            .map(|deadline| deadline.saturating_duration_since(Instant::now()));
        let pool = match self.queue_of(model) {
            Queue::Local(pool) => pool,
            #[cfg(feature = "redis")]
            Queue::Shared(shared) if !shared.may_refuse() => {
                return Ok(Admitted {
                    estimate: self.estimate(ticket, model),
                    reserved: false,
                })
            }
            _ => return by_estimate(self.estimate(ticket, model), budget),
        };
        let me = Me::Arriving {
            agent: &ticket.agent,
            cost: ticket.cost,
            weight: ticket.weight,
        };
        let key = id.map(|id| (ticket.agent.clone(), id.clone()));
        let level = usize::from(ticket.priority.get() - 1);
        let (estimate, verdict) = pool.admit(level, me, budget, key.as_ref());
        match verdict {
            Verdict::Admit { front } => Ok(Admitted {
                estimate: Some(estimate),
                reserved: front,
            }),
            Verdict::Refuse {
                retry_after,
                reserved,
                early,
            } => Err(DeadlineUnreachable {
                estimate,
                budget: budget.unwrap_or(Duration::ZERO),
                retry_after,
                reserved,
                early,
            }),
        }
    }

    /// Reservations kept in the waiting room, over all pools: requests
    /// refused for their deadline that may come back for their place.
    ///
    /// ```
    /// use corral_priority::{PriorityConfig, Scheduler};
    ///
    /// # let runtime = tokio::runtime::Builder::new_current_thread().enable_time().build().unwrap();
    /// # let _guard = runtime.enter();
    /// let scheduler = Scheduler::new(&PriorityConfig::default()).unwrap();
    /// assert_eq!(scheduler.reservations(), 0);
    /// ```
    pub fn reservations(&self) -> usize {
        let mut total = 0;
        self.each_pool(|pool| total += pool.reservations());
        total
    }

    /// [`Scheduler::acquire_in`] for a request [`Scheduler::admit`] let
    /// in: it carries its estimate, and one back for its reservation
    /// waits at its level's front.
    pub fn acquire_admitted(
        &self,
        ticket: Ticket,
        model: Option<&str>,
        session: Option<u64>,
        admitted: Admitted,
    ) -> Acquire {
        let acquire = if admitted.reserved {
            let pool = self.pool(model);
            #[cfg(feature = "redis")]
            if self.shared_of(&pool).is_some() {
                return self
                    .acquire_in(ticket, model, session)
                    .with_estimate(admitted.estimate);
            }
            Acquire::local(pool, ticket, session, true)
        } else {
            self.acquire_in(ticket, model, session)
        };
        acquire.with_estimate(admitted.estimate)
    }
}
