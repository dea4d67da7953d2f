//! Letting a request in at arrival, or refusing it for its deadline with
//! a reservation in the waiting room.

use std::sync::Arc;
use std::time::Duration;

use corral_core::RequestId;
use tokio::time::Instant;

use super::{canonical_model, Scheduler};
use crate::permit::Acquire;
use crate::pool::{Me, Pool, Ticket, Verdict};
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

impl Scheduler {
    /// Whether `ticket`, a request for `model` arriving now, is let in:
    /// refused with [`DeadlineUnreachable`] when its wait (the work ahead
    /// of it and the reservations due before it is served) is beyond its
    /// deadline. Refused, a request named `id` (its client's
    /// `X-Request-Id`; pass `None` for an id Corral made) gets a
    /// reservation under its agent and id: half its deadline before a
    /// permit will be free for it, behind the work ahead and the
    /// reservations booked before it. Back before then, it is refused with the time left; back then
    /// (up to a few seconds late), it is let in whatever its deadline,
    /// ahead of its level's fresh arrivals. A queue in Redis lets every
    /// request in.
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
        let Some(pool) = self.local_pool_of(model) else {
            return Ok(Admitted {
                estimate: self.estimate(ticket, model),
                reserved: false,
            });
        };
        let budget = ticket
            .deadline
            .map(|deadline| deadline.saturating_duration_since(Instant::now()));
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
            } => Err(DeadlineUnreachable {
                estimate,
                budget: budget.unwrap_or(Duration::ZERO),
                retry_after,
                reserved,
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

    /// The pool a request for `model` would wait in, if it is made and
    /// its queue is here (not in Redis).
    fn local_pool_of(&self, model: Option<&str>) -> Option<Arc<Pool>> {
        let pool = self.pool_for(model, false);
        #[cfg(feature = "redis")]
        if self.shared_of(&pool).is_some() {
            return None;
        }
        let name = model.filter(|m| !m.is_empty()).map(canonical_model);
        if self.on_demand.is_some() && name.is_some_and(|n| n != pool.name()) {
            return None;
        }
        Some(pool)
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
