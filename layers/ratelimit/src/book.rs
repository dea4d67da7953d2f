//! Budgets read without being charged: how much of its day and month an
//! agent and its class have spent, for the admin API.

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use crate::plan::Plan;

/// A budget as it stands now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BudgetStanding {
    /// Which budget: `agent-tokens-day`, `class-tokens-month`, ...
    pub policy: &'static str,
    /// Its window: `2026-12-06`, `2026-12`.
    pub window: String,
    /// What the window allows.
    pub limit: u64,
    /// What it has spent (charged up front, corrected by the answers).
    pub spent: u64,
    /// When the window ends and the budget is whole again.
    pub resets_at: SystemTime,
    /// Only reported, never refused.
    pub shadow: bool,
}

/// Reads a rate-limit layer's budgets
/// ([`RateLimitLayer::budgets`](crate::RateLimitLayer::budgets)).
///
/// ```
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// use corral_ratelimit::{RateLimitConfig, RateLimitLayer};
///
/// let config: RateLimitConfig = toml::from_str("[classes.batch]\ntokens_per_day = 1000").unwrap();
/// let book = RateLimitLayer::new(&config).unwrap().budgets();
/// let standing = book.standing("summarizer", "batch").await;
/// assert_eq!(standing[0].policy, "agent-tokens-day");
/// assert_eq!((standing[0].limit, standing[0].spent), (1000, 0));
/// assert!(book.standing("summarizer", "interactive").await.is_empty(), "no budget there");
/// # }
/// ```
#[derive(Clone)]
pub struct BudgetBook {
    pub(crate) plan: Arc<Plan>,
}

corral_core::impl_debug!(BudgetBook {});

impl BudgetBook {
    /// `agent`'s budgets and those of its `class`, as they stand.
    pub async fn standing(&self, agent: &str, class: &str) -> Vec<BudgetStanding> {
        let who = [(agent.to_string(), class.to_string())];
        self.standing_of(&who).await.pop().unwrap_or_default()
    }

    /// The same for each `(agent, class)`, in one read of the store.
    pub async fn standing_of(&self, who: &[(String, String)]) -> Vec<Vec<BudgetStanding>> {
        let read: Vec<_> = who
            .iter()
            .map(|(agent, class)| self.plan.budgets_of(agent, class))
            .collect();
        let keys: Vec<String> = read
            .iter()
            .flat_map(|(_, budgets)| budgets.iter().map(|b| b.key.clone()))
            .collect();
        let mut spent = self
            .plan
            .store()
            .spent(&keys)
            .await
            .into_iter()
            .chain(std::iter::repeat(0));
        read.into_iter()
            .map(|(now, budgets)| {
                budgets
                    .into_iter()
                    .map(|budget| BudgetStanding {
                        policy: budget.policy,
                        window: budget.window,
                        limit: budget.budget.limit,
                        spent: spent.next().unwrap_or(0),
                        resets_at: UNIX_EPOCH + now + budget.budget.resets_in,
                        shadow: budget.budget.shadow,
                    })
                    .collect()
            })
            .collect()
    }
}
