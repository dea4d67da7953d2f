//! Waiting for a shared permit: the ticket in Redis, the grant heard on
//! this replica's channel, and the way out when the waiter leaves, its
//! deadline passes or Redis goes away.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use tokio::sync::oneshot;
use tokio::time::Instant;

use super::{lock, RedisPool, Waiting, SEQ};
use crate::error::DeadlineExceeded;
use crate::permit::{Acquire, Permit};
use crate::pool::Ticket;

impl RedisPool {
    /// Waits for a permit in Redis; in the local pool when Redis is away
    /// (or goes away while it waits).
    pub(crate) async fn acquire(
        self: Arc<Self>,
        ticket: Ticket,
    ) -> Result<Permit, DeadlineExceeded> {
        if !self.state.is_up() {
            return self.local_acquire(ticket).await;
        }
        let level = usize::from(ticket.priority.get() - 1);
        let id = self.ticket_id(level + self.local.lend(&ticket).mark(), &ticket);
        let since = Instant::now();
        let (tell, mut told) = oneshot::channel();
        lock(&self.waiting).insert(
            id.clone(),
            Waiting {
                level,
                since,
                granted: Some(tell),
            },
        );
        // From here, leaving early (a disconnect drops this future) takes
        // the ticket out of the queue, or gives back its permit.
        let mut guard = Guard {
            pool: self.clone(),
            ticket: Some(id.clone()),
        };
        match self.run("enqueue", &id, level, &[]).await {
            Ok(report) if report.granted.contains(&id) => {}
            Ok(_) => {
                let mut health = self.state.health();
                let deadline = ticket.deadline;
                let expired = async move {
                    match deadline {
                        Some(d) => tokio::time::sleep_until(d).await,
                        None => std::future::pending().await,
                    }
                };
                tokio::pin!(expired);
                loop {
                    tokio::select! {
                        _ = &mut told => break,
                        () = &mut expired => {
                            drop(guard);
                            return Err(DeadlineExceeded { waited: since.elapsed() });
                        }
                        changed = health.changed() => {
                            if changed.is_ok() && !*health.borrow_and_update() {
                                drop(guard);
                                return self.local_acquire(ticket).await;
                            }
                        }
                    }
                }
            }
            Err(()) => {
                // The script may have run before the answer was lost: the
                // guard's cancel takes the ticket out if it did.
                drop(guard);
                return self.local_acquire(ticket).await;
            }
        }
        let ticket_id = guard.ticket.take().unwrap_or_default();
        // Held before it stops waiting: a grant message heard in between
        // must not find it nobody's.
        lock(&self.held).insert(ticket_id.clone());
        self.forget(&ticket_id);
        Ok(Permit::shared(
            self.clone(),
            ticket_id,
            ticket.agent,
            ticket.cost,
            since.elapsed(),
        ))
    }

    /// `replica|seq|level|agent`: who to tell, which, how urgent, whose.
    /// `level` is the priority - 1, plus [`Lend::mark`] when the ticket
    /// may borrow a reserved permit.
    ///
    /// [`Lend::mark`]: crate::pool::Lend::mark
    fn ticket_id(&self, level: usize, ticket: &Ticket) -> String {
        format!(
            "{}|{}|{}|{}",
            self.state.replica(),
            SEQ.fetch_add(1, Ordering::Relaxed),
            level,
            ticket.agent
        )
    }

    /// Waits in the fallback pool; the permit is also held under a
    /// ticket of its own, which the next renewal tells Redis about.
    async fn local_acquire(self: &Arc<Self>, ticket: Ticket) -> Result<Permit, DeadlineExceeded> {
        let level = usize::from(ticket.priority.get() - 1);
        let id = self.ticket_id(level, &ticket);
        let permit = Acquire::local(self.local.clone(), ticket, None, false).await?;
        lock(&self.held).insert(id.clone());
        Ok(permit.into_shared(self.clone(), id))
    }
}

/// Takes a ticket out of the shared queue if its waiter leaves.
struct Guard {
    pool: Arc<RedisPool>,
    ticket: Option<String>,
}

impl Drop for Guard {
    fn drop(&mut self) {
        if let Some(ticket) = self.ticket.take() {
            self.pool.give_back(ticket, "cancel");
        }
    }
}

impl RedisPool {
    /// Delivers the grants heard on this pool's channel to its waiters,
    /// for as long as it runs.
    pub(crate) async fn hear_grants(self: Arc<Self>) {
        let channel = self.own_grants();
        let mut pushed = self.state.subscribe(&channel).await;
        loop {
            match pushed.recv().await {
                Ok(message) if message.channel == channel => self.granted(&message.payload),
                Ok(_) | Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
            }
        }
    }
}
