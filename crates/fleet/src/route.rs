//! A request's permit on the fleet: which upstream it runs on, moved
//! elsewhere if that one fails before answering.

use std::sync::{Arc, Mutex};

use corral_core::lock;

use std::time::Duration;

use crate::fleet::{Fleet, Slot};
use crate::Want;

/// Where a scheduled request runs. The scheduler puts it in the
/// request's extensions (as `Arc<Route>`); the upstream client reads
/// [`Route::upstream`] and, when the upstream fails before answering,
/// calls [`Route::failover`]. The permit it holds is given back by
/// whoever owns the request's permit, with [`Route::take`].
///
/// ```
/// use corral_fleet::{Fleet, Route, UpstreamSpec, Urgency, Want};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let fleet = Fleet::new(vec![UpstreamSpec::new("a", 1), UpstreamSpec::new("b", 1)]);
/// let want = Want {
///     urgency: Urgency { level: 4, since: tokio::time::Instant::now() },
///     waiting: 1,
///     session: None,
///     hold: None,
/// };
/// let slot = fleet.place("llama3:latest", &want).unwrap();
/// let route = Route::new(fleet.clone(), slot);
/// let first = route.upstream().unwrap();
/// // Its upstream refuses the connection: the request moves.
/// assert!(route.failover(true).await);
/// assert_ne!(route.upstream(), Some(first));
/// assert!(!fleet.is_healthy(first));
/// fleet.free(route.take().unwrap());
/// # }
/// ```
#[derive(Debug)]
pub struct Route {
    fleet: Arc<Fleet>,
    slot: Mutex<Option<Slot>>,
}

impl Route {
    /// A request runs on `slot` of `fleet`.
    pub fn new(fleet: Arc<Fleet>, slot: Slot) -> Arc<Self> {
        Arc::new(Self {
            fleet,
            slot: Mutex::new(Some(slot)),
        })
    }

    /// A request that will run in `fleet` once granted a permit.
    pub fn pending(fleet: Arc<Fleet>) -> Arc<Self> {
        Arc::new(Self {
            fleet,
            slot: Mutex::new(None),
        })
    }

    /// The request was granted `slot`. One it held already is given back.
    pub fn grant(&self, slot: Slot) {
        let old = lock(&self.slot).replace(slot);
        if let Some(old) = old {
            self.fleet.free(old);
            self.fleet.kick();
        }
    }

    /// The upstream it runs on, by index; `None` once given back.
    pub fn upstream(&self) -> Option<usize> {
        lock(&self.slot).as_ref().map(|s| s.upstream)
    }

    /// Its upstream, model, the requests of the model running there when
    /// it was granted (itself included), and whether the model had to be
    /// loaded: what a measurement of it needs.
    pub fn placement(&self) -> Option<(usize, Arc<str>, usize, bool)> {
        lock(&self.slot)
            .as_ref()
            .map(|s| (s.upstream, s.model.clone(), s.concurrency, s.load))
    }

    /// The fleet it runs in.
    pub fn fleet(&self) -> &Arc<Fleet> {
        &self.fleet
    }

    /// Takes its permit out, to give it back.
    pub fn take(&self) -> Option<Slot> {
        lock(&self.slot).take()
    }

    /// Its upstream failed before answering (`connect`: refused the
    /// connection): waits for a permit on another one that may serve the
    /// model, ahead of every waiting request ([`Fleet::failover`]).
    /// `false` when there is none (the request fails as it would have):
    /// its permit is kept, to be given back as usual.
    pub async fn failover(&self, connect: bool) -> bool {
        let Some(slot) = self.take() else {
            return false;
        };
        let failed = slot.upstream;
        match self.fleet.failover(slot, connect) {
            Err(slot) => {
                *lock(&self.slot) = Some(slot);
                false
            }
            Ok(answer) => {
                let mut answer = Answer {
                    fleet: &self.fleet,
                    answer,
                };
                match (&mut answer.answer).await {
                    Ok(slot) => {
                        *lock(&self.slot) = Some(slot);
                        self.claim_from(Want::moved(), Some(failed)).await;
                        true
                    }
                    Err(_) => false,
                }
            }
        }
    }

    /// In a fleet shared through Redis ([`Fleet::share`]): claims the
    /// permit this replica's view placed the request on; refused (other
    /// replicas took what it needs), the request waits again, ahead of
    /// this replica's queue, placed as `want` says, and claims the next.
    /// Returns once it holds a permit it may use: at once when the fleet
    /// is not shared, and when Redis does not answer (the replica then
    /// places alone, with its share of the capacities).
    ///
    /// Dropping the future gives back whatever it held or claimed.
    pub async fn claimed(&self, want: Want) {
        self.claim_from(want, None).await;
    }

    /// [`Route::claimed`], never again on `avoid` (an upstream that
    /// failed the request).
    async fn claim_from(&self, want: Want, avoid: Option<usize>) {
        let mut refusals = 0u32;
        loop {
            let Some(key) = lock(&self.slot).as_ref().map(Slot::key) else {
                return;
            };
            let claim = self.fleet.claim(&key).await;
            if !claim.refused() {
                return;
            }
            let Some(slot) = self.take() else {
                return;
            };
            self.fleet.free(slot);
            self.fleet.after_refused(key.upstream, &claim);
            self.fleet.kick();
            // The view now agrees with Redis; should it not, a request
            // refused again and again backs off a little more each time
            // rather than spin.
            refusals += 1;
            if refusals > 2 {
                let pause = Duration::from_millis(u64::from(refusals.min(50)) * 10);
                tokio::time::sleep(pause).await;
            }
            let mut answer = Answer {
                fleet: &self.fleet,
                answer: self.fleet.requeue(&key.model, want, avoid),
            };
            match (&mut answer.answer).await {
                Ok(slot) => *lock(&self.slot) = Some(slot),
                Err(_) => return,
            }
        }
    }
}

/// The permit a displaced request waits for: if the request leaves after
/// the permit was sent but before it was read, it is given back.
struct Answer<'a> {
    fleet: &'a Fleet,
    answer: tokio::sync::oneshot::Receiver<Slot>,
}

impl Drop for Answer<'_> {
    fn drop(&mut self) {
        self.answer.close();
        if let Ok(slot) = self.answer.try_recv() {
            self.fleet.free(slot);
            self.fleet.kick();
        }
    }
}
