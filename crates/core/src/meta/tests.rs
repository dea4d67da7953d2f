use super::*;

#[test]
fn a_made_id_is_the_process_half_then_the_mixed_counter_in_hex() {
    let id = RequestId::generate();
    let (seed, prefix) = process_seed();
    assert!(id.as_str().starts_with(prefix));
    let counter = u64::from_str_radix(&id.as_str()[16..], 16).unwrap();
    // The next id mixes the next counter value.
    let next = RequestId::generate();
    let next_counter = u64::from_str_radix(&next.as_str()[16..], 16).unwrap();
    assert_ne!(counter, next_counter);
    assert!(
        (0..1_000_000u64).any(|n| splitmix64(seed ^ n) == counter),
        "{id} is not a mixed counter"
    );
    assert!(id
        .as_str()
        .bytes()
        .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()));
}

#[test]
fn priorities_clamp_into_a_class_range() {
    let p = |v| Priority::new(v).unwrap();
    assert_eq!(p(1).clamp_to(p(3), p(6)), p(3));
    assert_eq!(p(9).clamp_to(p(3), p(6)), p(6));
    assert_eq!(p(4).clamp_to(p(3), p(6)), p(4));
}

#[test]
fn priority_text_outside_the_range_is_refused_with_the_value() {
    for bad in ["0", "11", "-1", "high", ""] {
        let err = bad.parse::<Priority>().unwrap_err();
        assert!(err.to_string().contains(&format!("{bad:?}")), "{err}");
    }
}

#[tokio::test(start_paused = true)]
async fn time_left_counts_down_to_zero() {
    let now = Instant::now();
    let meta = RequestMeta::new("r".into(), Endpoint::Generate)
        .with_deadline(Some(now + std::time::Duration::from_secs(2)));
    assert_eq!(meta.time_left(now), Some(std::time::Duration::from_secs(2)));
    tokio::time::advance(std::time::Duration::from_secs(3)).await;
    assert_eq!(
        meta.time_left(Instant::now()),
        Some(std::time::Duration::ZERO)
    );
}
