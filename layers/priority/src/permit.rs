//! Waiting for an upstream permit, and holding one: the future a ticket
//! waits in, and the permit that gives itself back when dropped.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use corral_core::AgentId;
use tokio::time::{Instant, Sleep};

use crate::error::DeadlineExceeded;
use crate::pool::{self, Hold, Pool, Ticket};
#[cfg(feature = "redis")]
use crate::redis::RedisPool;
use crate::Estimate;
use corral_fleet::{Route, Urgency, Want};

/// A request waiting for its permit. Resolves to the [`Permit`], or to
/// [`DeadlineExceeded`] when the ticket's deadline passes first.
#[must_use = "a ticket waits only while its Acquire is polled or held"]
pub struct Acquire {
    pub(crate) kind: AcquireKind,
    /// Where it stood when it arrived, for its answer's headers.
    pub(crate) estimate: Option<Estimate>,
    /// Its entry among the requests waiting, while it waits.
    pub(crate) listed: Option<crate::scheduler::Listed>,
}

pub(crate) enum AcquireKind {
    Local {
        pool: Arc<Pool>,
        id: u64,
        deadline: Option<Pin<Box<Sleep>>>,
        done: bool,
        /// With a fleet: where the request will run, once granted.
        route: Option<Arc<Route>>,
        /// Its level, arrival and conversation, for a fleet shared through
        /// Redis: how it is placed again if another replica's claim wins
        /// its permit.
        want: Want,
        /// In a fleet shared through Redis: the permit granted here, held
        /// while its upstream permit is claimed in Redis.
        claiming: Option<Box<(Permit, Claiming)>>,
    },
    /// Waiting in Redis: the shared pool's own future, which leaves the
    /// queue when dropped.
    #[cfg(feature = "redis")]
    Redis(Pin<Box<dyn Future<Output = Result<Permit, DeadlineExceeded>> + Send>>),
}

/// A fleet permit being claimed in Redis ([`Route::claimed`]).
pub(crate) type Claiming = Pin<Box<dyn Future<Output = ()> + Send>>;

impl std::fmt::Debug for Acquire {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.kind {
            AcquireKind::Local { id, done, .. } => f
                .debug_struct("Acquire")
                .field("ticket", id)
                .field("done", done)
                .finish(),
            #[cfg(feature = "redis")]
            AcquireKind::Redis(_) => f.debug_struct("Acquire").field("redis", &true).finish(),
        }
    }
}

impl Acquire {
    /// Queues `ticket` in `pool` (at its level's front if it came back
    /// for its reservation).
    pub(crate) fn local(
        pool: Arc<Pool>,
        ticket: Ticket,
        session: Option<u64>,
        front: bool,
    ) -> Self {
        let deadline = ticket.deadline;
        let route = pool.fleet().map(|link| Route::pending(link.fleet.clone()));
        let want = Want {
            urgency: Urgency {
                level: usize::from(ticket.priority.get() - 1),
                since: Instant::now(),
            },
            waiting: 1,
            session,
            hold: None,
        };
        let id = pool.enqueue(ticket, session, front);
        Self {
            estimate: None,
            listed: None,
            kind: AcquireKind::Local {
                pool,
                id,
                deadline: deadline.map(|d| Box::pin(tokio::time::sleep_until(d))),
                done: false,
                route,
                want,
                claiming: None,
            },
        }
    }

    /// Remembers where the request stood when it arrived: its answer
    /// carries it (`X-Corral-Queue-Position`, `X-Corral-Queue-Eta-Ms`).
    pub fn with_estimate(mut self, estimate: Option<Estimate>) -> Self {
        self.estimate = estimate;
        self
    }

    /// The pool it waits in, its ticket there and when it arrived,
    /// unless its queue is in Redis.
    pub(crate) fn waits_in(&self) -> Option<(&Arc<Pool>, u64, Instant)> {
        match &self.kind {
            AcquireKind::Local { pool, id, want, .. } => Some((pool, *id, want.urgency.since)),
            #[cfg(feature = "redis")]
            AcquireKind::Redis(_) => None,
        }
    }

    /// With several upstreams: where the request will run once granted,
    /// for the upstream client to read from the request's extensions.
    pub fn route(&self) -> Option<&Arc<Route>> {
        match &self.kind {
            AcquireKind::Local { route, .. } => route.as_ref(),
            #[cfg(feature = "redis")]
            AcquireKind::Redis(_) => None,
        }
    }
}

impl Future for Acquire {
    type Output = Result<Permit, DeadlineExceeded>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let polled = self.as_mut().poll_permit(cx);
        if polled.is_ready() {
            // Granted or refused: it waits no more.
            self.listed = None;
        }
        polled
    }
}

impl Acquire {
    fn poll_permit(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Result<Permit, DeadlineExceeded>> {
        let estimate = self.estimate;
        let (pool, id, deadline, done, route, want, claiming) = match &mut self.kind {
            AcquireKind::Local {
                pool,
                id,
                deadline,
                done,
                route,
                want,
                claiming,
            } => (pool, *id, deadline, done, route, *want, claiming),
            #[cfg(feature = "redis")]
            AcquireKind::Redis(future) => return future.as_mut().poll(cx),
        };
        if let Some(boxed) = claiming {
            let (permit, claim) = &mut **boxed;
            if claim.as_mut().poll(cx).is_ready() {
                let (permit, _) = *claiming.take().expect("claiming");
                return Poll::Ready(Ok(permit));
            }
            // Refused by Redis and waiting again: its deadline still
            // holds. The permit goes back with the claim.
            let expired = deadline
                .as_mut()
                .is_some_and(|d| d.as_mut().poll(cx).is_ready());
            if expired {
                let waited = permit.waited();
                *claiming = None;
                return Poll::Ready(Err(DeadlineExceeded { waited }));
            }
            return Poll::Pending;
        }
        if *done {
            return Poll::Ready(Err(DeadlineExceeded {
                waited: Duration::ZERO,
            }));
        }
        let expired = deadline
            .as_mut()
            .is_some_and(|d| d.as_mut().poll(cx).is_ready());
        if expired {
            *done = true;
            // Granted at the last instant or not: the answer would come too
            // late. Give the place (or the permit) to someone else.
            let waited = pool.withdraw(id).unwrap_or_default();
            return Poll::Ready(Err(DeadlineExceeded { waited }));
        }
        match pool.poll(id, cx.waker()) {
            pool::Poll::Waiting => Poll::Pending,
            pool::Poll::Granted(grant) => {
                *done = true;
                let route = match (route.clone(), grant.slot) {
                    (Some(route), Some(slot)) => {
                        route.grant(slot);
                        Some(route)
                    }
                    (None, Some(slot)) => pool
                        .fleet()
                        .map(|link| Route::new(link.fleet.clone(), slot)),
                    (route, None) => route,
                };
                // What it was told against what it waited: the
                // correction of the next estimates for its size.
                if let Some(raw) = estimate.filter(|e| e.teaches).and_then(|e| e.raw) {
                    pool.learn_wait(grant.cost, raw, grant.waited);
                }
                let permit = Permit {
                    holder: Holder::Local(pool.clone()),
                    ticket: Some(grant.ticket),
                    route: route.clone(),
                    agent: grant.agent,
                    cost: grant.cost,
                    since: Instant::now(),
                    charged: grant.charged,
                    weight: grant.weight,
                    waited: grant.waited,
                    actual: None,
                    hold_cost: None,
                    estimate,
                    failed: false,
                };
                match route.filter(|r| r.fleet().is_shared()) {
                    // Claimed in Redis before the request is sent; dropped
                    // meanwhile, the permit gives everything back.
                    Some(route) => {
                        let want = Want {
                            hold: pool.average_hold(),
                            ..want
                        };
                        let claim = Box::pin(async move { route.claimed(want).await });
                        *claiming = Some(Box::new((permit, claim)));
                        self.poll(cx)
                    }
                    None => Poll::Ready(Ok(permit)),
                }
            }
            pool::Poll::Gone => {
                *done = true;
                Poll::Ready(Err(DeadlineExceeded {
                    waited: Duration::ZERO,
                }))
            }
        }
    }
}

impl Drop for Acquire {
    fn drop(&mut self) {
        match &self.kind {
            AcquireKind::Local { pool, id, done, .. } => {
                if !*done {
                    pool.withdraw(*id);
                }
            }
            // Its own future leaves the queue when dropped.
            #[cfg(feature = "redis")]
            AcquireKind::Redis(_) => {}
        }
    }
}

/// A running request's hold on the upstream. Dropping it gives the permit
/// back and lets the next waiting request in.
pub struct Permit {
    holder: Holder,
    /// Its ticket in the local pool, if granted there.
    ticket: Option<u64>,
    /// With several upstreams: the upstream permit, where it runs.
    route: Option<Arc<Route>>,
    agent: AgentId,
    /// The request's estimated cost, and when the permit was taken: how
    /// long it is held teaches the pool its predictions.
    cost: f64,
    since: Instant,
    charged: f64,
    weight: f64,
    waited: Duration,
    actual: Option<f64>,
    /// What it cost as its hold is learnt: the generated tokens reported,
    /// the prompt as predicted (see `Settling::hold_cost`).
    hold_cost: Option<f64>,
    /// Where its request stood when it arrived.
    estimate: Option<Estimate>,
    /// Its answer was an error.
    failed: bool,
}

corral_core::impl_debug!(Permit { agent, waited });

enum Holder {
    Local(Arc<Pool>),
    /// A lease in Redis, by its ticket; `local` when the permit came
    /// from the fallback pool while Redis was away (the ticket then
    /// tells Redis about it once it is back).
    #[cfg(feature = "redis")]
    Redis {
        pool: Arc<RedisPool>,
        ticket: String,
        local: bool,
    },
}

impl Permit {
    #[cfg(feature = "redis")]
    pub(crate) fn shared(
        pool: Arc<RedisPool>,
        ticket: String,
        agent: AgentId,
        cost: f64,
        waited: Duration,
    ) -> Self {
        pool.local.occupy();
        Self {
            holder: Holder::Redis {
                pool,
                ticket,
                local: false,
            },
            ticket: None,
            route: None,
            agent,
            cost,
            since: Instant::now(),
            charged: 0.0,
            weight: 1.0,
            waited,
            actual: None,
            hold_cost: None,
            estimate: None,
            failed: false,
        }
    }

    /// A permit of the fallback pool, also held under `ticket` so that
    /// Redis counts it once it is back.
    #[cfg(feature = "redis")]
    pub(crate) fn into_shared(mut self, pool: Arc<RedisPool>, ticket: String) -> Self {
        self.holder = Holder::Redis {
            pool,
            ticket,
            local: true,
        };
        self
    }

    /// With several upstreams: where the request runs.
    pub fn route(&self) -> Option<&Arc<Route>> {
        self.route.as_ref()
    }

    /// With several upstreams: the upstream the request runs on, by
    /// index in the fleet.
    pub fn upstream(&self) -> Option<usize> {
        self.route.as_ref().and_then(|r| r.upstream())
    }

    /// Where the request stood when it arrived: the requests ahead and
    /// its estimated wait ([`Scheduler::estimate`](crate::Scheduler::estimate)).
    pub fn estimate(&self) -> Option<Estimate> {
        self.estimate
    }

    /// How long the request waited for this permit.
    pub fn waited(&self) -> Duration {
        self.waited
    }

    /// Records what the request really cost (prompt tokens + 2 × generated
    /// tokens, once the response says), so the agent's counter is
    /// corrected when the permit is given back.
    pub fn settle(&mut self, cost: f64) {
        self.actual = Some(cost);
    }

    /// Records the cost its hold is learnt against, when it differs from
    /// what [`settle`](Self::settle) recorded.
    pub(crate) fn settle_hold(&mut self, cost: f64) {
        self.hold_cost = Some(cost);
    }

    /// The answer was an error: its agent is charged `cost` (about
    /// nothing), and how long it held the permit is not learnt (a fast
    /// error would teach the pool that requests cost nothing).
    pub(crate) fn settle_failed(&mut self, cost: f64) {
        self.actual = Some(cost);
        self.failed = true;
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        let hold = Hold {
            // Seconds per unit of the work it really did, when its answer
            // said: a prediction that was far off (a length not yet
            // learned) must not teach every estimate after it a rate
            // scaled by its error.
            cost: self.hold_cost.or(self.actual).unwrap_or(self.cost),
            held: self.since.elapsed(),
            failed: self.failed,
        };
        let correction = self
            .actual
            .map_or(0.0, |actual| actual / self.weight - self.charged);
        match &mut self.holder {
            Holder::Local(pool) => {
                let slot = self.route.as_ref().and_then(|r| r.take());
                pool.release(self.ticket, &self.agent, correction, hold, slot)
            }
            #[cfg(feature = "redis")]
            Holder::Redis {
                pool,
                ticket,
                local,
            } => {
                pool.release(std::mem::take(ticket), hold.held);
                if *local {
                    pool.local
                        .release(self.ticket, &self.agent, correction, hold, None);
                } else {
                    pool.local.vacate(&self.agent, hold);
                }
            }
        }
    }
}
