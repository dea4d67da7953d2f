//! Keeping this replica's permits: its leases and liveness renewed
//! every third of the TTL, and what a renewal finds (grants whose message
//! was lost, tickets Redis lost).

use std::sync::Arc;

use super::{lock, RedisPool};

impl RedisPool {
    /// Renews this replica's leases and liveness, grants what expired
    /// leases freed: every third of the TTL, for as long as it runs.
    pub(crate) async fn keep_alive(self: Arc<Self>) {
        let mut ticks = tokio::time::interval(self.ttl / 3);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut health = self.state.health();
        loop {
            tokio::select! {
                _ = ticks.tick() => {}
                // Back from an outage: count the permits running here at
                // once, before other replicas are granted more.
                changed = health.changed() => {
                    if changed.is_err() {
                        return;
                    }
                    if !*health.borrow_and_update() {
                        continue;
                    }
                }
            }
            self.renew().await;
        }
    }

    /// One renewal: leases and liveness, a capacity Redis has not taken,
    /// grants whose message was lost, tickets Redis lost.
    async fn renew(self: &Arc<Self>) {
        let pending = *lock(&self.pending_capacity);
        if let Some(capacity) = pending {
            self.write_capacity(capacity).await;
        }
        // Every permit running here is (re-)added: after Redis lost its
        // data, or a permit of the local pool, it counts again. One
        // released while the script ran would be brought back: released
        // again after it.
        let renewing: Vec<String> = lock(&self.held).iter().cloned().collect();
        let Ok(report) = self.run("renew", "", 0, &renewing).await else {
            return;
        };
        let released: Vec<String> = {
            let held = lock(&self.held);
            renewing.into_iter().filter(|t| !held.contains(t)).collect()
        };
        for ticket in released {
            let pool = self.clone();
            tokio::spawn(async move {
                let _ = pool.run("release", &ticket, 0, &[]).await;
            });
        }
        for ticket in &report.granted {
            self.granted(ticket);
        }
        // Waiting long enough to have been heard of: granted (the message
        // was lost in a reconnect), still queued, or lost by Redis
        // (evicted, flushed), then queued again.
        let waiting: Vec<(String, usize)> = lock(&self.waiting)
            .iter()
            .filter(|(_, w)| w.granted.is_some() && w.since.elapsed() > self.ttl / 3)
            .map(|(ticket, w)| (ticket.clone(), w.level))
            .collect();
        if waiting.is_empty() {
            return;
        }
        let tickets: Vec<&String> = waiting.iter().map(|(t, _)| t).collect();
        let mut pipeline = redis::pipe();
        pipeline
            .atomic()
            .cmd("ZMSCORE")
            .arg(&self.keys[1])
            .arg(&tickets)
            .cmd("ZMSCORE")
            .arg(&self.keys[0])
            .arg(&tickets);
        let Ok((leased, queued)) = self
            .state
            .pipeline::<(Vec<Option<f64>>, Vec<Option<f64>>)>(&pipeline)
            .await
        else {
            return;
        };
        for ((ticket, level), (leased, queued)) in
            waiting.iter().zip(leased.into_iter().zip(queued))
        {
            if leased.is_some() {
                self.granted(ticket);
            } else if queued.is_none() {
                tracing::warn!(ticket, "Redis lost a waiting ticket: queued again");
                if let Ok(report) = self.run("enqueue", ticket, *level, &[]).await {
                    for granted in &report.granted {
                        self.granted(granted);
                    }
                }
            }
        }
    }
}
