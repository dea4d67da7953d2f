//! What the proxy's probes tell the fleet: `/api/ps` answers asked
//! before a load are stale, `/api/tags` limits what a server is sent.

use corral_fleet::{Fleet, UpstreamSpec, Urgency, Want};

fn want() -> Want {
    Want {
        urgency: Urgency {
            level: 4,
            since: tokio::time::Instant::now(),
        },
        waiting: 1,
        session: None,
        hold: None,
    }
}

fn loaded(fleet: &Fleet) -> Vec<String> {
    fleet.status()[0]
        .models
        .iter()
        .map(|m| m.model.to_string())
        .collect()
}

#[tokio::test(start_paused = true)]
async fn an_api_ps_asked_before_a_load_does_not_bring_back_the_model_it_evicted() {
    let fleet = Fleet::new(vec![UpstreamSpec::new("a", 1).with_max_loaded(Some(1))]);
    let alpha = fleet.place("alpha:latest", &want()).unwrap();
    fleet.free(alpha);
    // A probe asks /api/ps now; before it answers, beta evicts alpha.
    let asked = fleet.loads_sent(0);
    let beta = fleet.place("beta:latest", &want()).unwrap();
    fleet.observe_loaded(0, asked, vec![("alpha:latest".into(), None)]);
    assert_eq!(
        loaded(&fleet),
        ["beta:latest"],
        "the stale answer is ignored"
    );
    // With beta busy, alpha cannot be placed there.
    assert!(fleet.place("alpha:latest", &want()).is_none());
    // A fresh answer is taken: the server unloaded beta once it was idle.
    fleet.free(beta);
    fleet.observe_loaded(0, fleet.loads_sent(0), vec![]);
    assert!(loaded(&fleet).is_empty());
}

#[tokio::test(start_paused = true)]
async fn a_server_is_sent_only_models_it_has_once_its_tags_are_read() {
    let fleet = Fleet::new(vec![UpstreamSpec::new("a", 1), UpstreamSpec::new("b", 1)]);
    assert!(fleet.serves_anywhere("gamma:latest"), "unknown until read");
    fleet.observe_available(0, vec!["alpha:latest".into()]);
    fleet.observe_available(1, vec!["beta:latest".into()]);
    assert!(!fleet.serves_anywhere("gamma:latest"));
    let alpha = fleet.place("alpha:latest", &want()).unwrap();
    let beta = fleet.place("beta:latest", &want()).unwrap();
    assert_eq!((alpha.upstream(), beta.upstream()), (0, 1));
    fleet.free(alpha);
    fleet.free(beta);
}

#[test]
fn a_load_costs_what_streams_waiting_for_one_took_more_than_the_others() {
    use std::time::Duration;
    let ms = Duration::from_millis;
    let fleet = Fleet::new(vec![UpstreamSpec::new("a", 1)]);
    assert_eq!(
        fleet.load_cost(),
        corral_fleet::DEFAULT_LOAD_COST,
        "until measured"
    );
    fleet.first_token(ms(1600), true);
    assert_eq!(
        fleet.load_cost(),
        corral_fleet::DEFAULT_LOAD_COST,
        "one kind seen only"
    );
    fleet.first_token(ms(100), false);
    assert_eq!(fleet.load_cost(), ms(1500));
    // Averaged: one slow load moves it an eighth of the way.
    fleet.first_token(ms(3200), true);
    assert_eq!(fleet.load_cost(), ms(1700));
    // Never below 100 ms, whatever the noise.
    let quick = Fleet::new(vec![UpstreamSpec::new("a", 1)]);
    quick.first_token(ms(90), true);
    quick.first_token(ms(120), false);
    assert_eq!(quick.load_cost(), ms(100));
}

#[tokio::test(start_paused = true)]
async fn a_model_corral_evicted_is_not_taken_back_from_api_ps_while_the_server_unloads_it() {
    let fleet = Fleet::new(vec![UpstreamSpec::new("a", 1).with_max_loaded(Some(1))]);
    let alpha = fleet.place("alpha:latest", &want()).unwrap();
    fleet.free(alpha);
    let beta = fleet.place("beta:latest", &want()).unwrap();
    // Asked after beta was sent, answered while alpha still unloads.
    let asked = fleet.loads_sent(0);
    fleet.observe_loaded(
        0,
        asked,
        vec![("alpha:latest".into(), None), ("beta:latest".into(), None)],
    );
    assert_eq!(loaded(&fleet), ["beta:latest"]);
    assert!(
        fleet.place("alpha:latest", &want()).is_none(),
        "beta is busy"
    );
    // Once unloaded, a later listing of alpha (loaded again by someone
    // else) counts.
    fleet.observe_loaded(0, asked, vec![("beta:latest".into(), None)]);
    fleet.observe_loaded(
        0,
        asked,
        vec![("alpha:latest".into(), None), ("beta:latest".into(), None)],
    );
    assert_eq!(loaded(&fleet), ["alpha:latest", "beta:latest"]);
    fleet.free(beta);
}
