//! How long each agent's answers from each model are, learned from what
//! they generated: the predicted length of a request that sets no
//! `num_predict`/`max_tokens` (or an unbounded one), so that shorter-first
//! and the wait estimates know a summarizer from a classifier.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use corral_core::AgentId;

/// The weight of the newest answer in an agent's moving average: its
/// lengths follow its work within a few answers.
const ALPHA: f64 = 0.25;
/// The weight of the newest answer in every agent's average for a model,
/// which agents new to it are predicted: slow, so that requests from
/// agents without a history of their own are predicted alike (served by
/// arrival among themselves) rather than ordered by the chance of which
/// answers came last.
const MODEL_ALPHA: f64 = 0.02;
/// Pairs of agent and model remembered at most; past it the table starts
/// again (a fleet has a few hundred).
const MAX_PAIRS: usize = 10_000;

/// An agent (`None`: any agent), and the model it asked for.
type Pair = (Option<AgentId>, Option<Arc<str>>);

/// Generated tokens per answer, averaged per agent and model.
#[derive(Debug, Default)]
pub(crate) struct Lengths {
    /// The average and how many answers it is of.
    averages: Mutex<HashMap<Pair, (f64, u32)>>,
}

impl Lengths {
    /// The tokens `agent`'s next answer from `model` is expected to
    /// generate: what its answers from that model generated lately, else
    /// (an agent new to it) what every agent's did; `None` before any
    /// answer from that model ended.
    pub(crate) fn predict(&self, agent: &AgentId, model: Option<&Arc<str>>) -> Option<f64> {
        let averages = corral_core::lock(&self.averages);
        averages
            .get(&(Some(agent.clone()), model.cloned()))
            .or_else(|| averages.get(&(None, model.cloned())))
            .map(|(average, _)| *average)
    }

    /// An answer of `agent` from `model` generated `generated` tokens.
    pub(crate) fn learn(&self, agent: &AgentId, model: Option<&Arc<str>>, generated: u64) {
        let mut averages = corral_core::lock(&self.averages);
        if averages.len() >= MAX_PAIRS {
            averages.clear();
        }
        let generated = generated as f64;
        for (who, alpha) in [(Some(agent.clone()), ALPHA), (None, MODEL_ALPHA)] {
            let (average, n) = averages.entry((who, model.cloned())).or_insert((0.0, 0));
            *n = n.saturating_add(1);
            // The plain mean until it is of enough answers, then a
            // moving average: the first answers do not set it for long.
            let weight = (1.0 / f64::from(*n)).max(alpha);
            *average += weight * (generated - *average);
        }
    }
}

/// What an answer teaches [`Lengths`] once it ends in full.
#[derive(Debug)]
pub(crate) struct Learning {
    pub(crate) lengths: Arc<Lengths>,
    pub(crate) agent: AgentId,
    pub(crate) model: Option<Arc<str>>,
    /// The prompt's part of the request's predicted cost.
    pub(crate) prompt: f64,
}

impl Learning {
    pub(crate) fn learn(self, generated: u64) {
        self.lengths
            .learn(&self.agent, self.model.as_ref(), generated);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_average_follows_each_agent_and_model() {
        let lengths = Lengths::default();
        let summarizer = AgentId::from("summarizer");
        let big: Arc<str> = "llama3".into();
        assert_eq!(lengths.predict(&summarizer, Some(&big)), None);
        lengths.learn(&summarizer, Some(&big), 400);
        assert_eq!(lengths.predict(&summarizer, Some(&big)), Some(400.0));
        lengths.learn(&summarizer, Some(&big), 800);
        assert_eq!(
            lengths.predict(&summarizer, Some(&big)),
            Some(600.0),
            "the plain mean of the first answers"
        );
        assert_eq!(lengths.predict(&summarizer, None), None, "another model");
        let classifier = AgentId::from("classifier");
        assert_eq!(
            lengths.predict(&classifier, Some(&big)),
            Some(600.0),
            "an agent new to the model: every agent's average"
        );
        lengths.learn(&classifier, Some(&big), 10);
        assert_eq!(lengths.predict(&classifier, Some(&big)), Some(10.0));
        assert_eq!(lengths.predict(&summarizer, Some(&big)), Some(600.0));
        // Past a few answers, the newest weighs a quarter.
        for _ in 0..10 {
            lengths.learn(&summarizer, Some(&big), 100);
        }
        let moved = lengths.predict(&summarizer, Some(&big)).unwrap();
        assert!((100.0..130.0).contains(&moved), "{moved}");
    }
}
