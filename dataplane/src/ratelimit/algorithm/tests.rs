use super::*;

const S: u64 = 1_000_000;

fn quota(algorithm: Algorithm, requests: u64, interval_us: u64, burst: u64) -> Quota {
    Quota {
        algorithm,
        requests,
        interval_us,
        burst,
    }
}

/// Admits `n` requests at `now` and returns how many passed.
fn burst_at(q: &Quota, state: &mut State, now: u64, n: usize) -> usize {
    (0..n).filter(|_| q.admit(state, now).allowed).count()
}

#[test]
fn each_algorithm_admits_exactly_the_limit_at_once() {
    for algorithm in [
        Algorithm::TokenBucket,
        Algorithm::SlidingWindow,
        Algorithm::FixedWindow,
    ] {
        let q = quota(algorithm, 10, S, 10);
        let now = 100 * S + 1;
        let mut st = q.fresh(now);
        assert_eq!(burst_at(&q, &mut st, now, 25), 10, "{algorithm:?}");
    }
}

#[test]
fn token_bucket_refills_at_its_rate_and_holds_at_most_the_burst() {
    let q = quota(Algorithm::TokenBucket, 10, S, 3);
    let mut st = q.fresh(0);
    assert_eq!(burst_at(&q, &mut st, 0, 5), 3);
    // 0.1 s later: one token back.
    let out = q.admit(&mut st, S / 10);
    assert!(out.allowed);
    assert!(!q.admit(&mut st, S / 10).allowed);
    // A long pause refills to the burst, not beyond.
    assert_eq!(burst_at(&q, &mut st, 100 * S, 10), 3);
    let denied = q.admit(&mut st, 100 * S);
    assert_eq!(denied.retry_after_us, S / 10);
    assert_eq!(denied.remaining, 0);
}

#[test]
fn fixed_window_admits_twice_the_limit_around_a_boundary_and_sliding_does_not() {
    let (limit, interval) = (10, S);
    let end_of_window = 50 * S + S - 1000;
    let start_of_next = 51 * S + 1000;
    let fixed = quota(Algorithm::FixedWindow, limit, interval, limit);
    let mut st = fixed.fresh(end_of_window);
    let admitted =
        burst_at(&fixed, &mut st, end_of_window, 20) + burst_at(&fixed, &mut st, start_of_next, 20);
    assert_eq!(
        admitted, 20,
        "fixed window: the limit on each side of the boundary"
    );

    let sliding = quota(Algorithm::SlidingWindow, limit, interval, limit);
    let mut st = sliding.fresh(end_of_window);
    let admitted = burst_at(&sliding, &mut st, end_of_window, 20)
        + burst_at(&sliding, &mut st, start_of_next, 20);
    assert_eq!(
        admitted, 10,
        "sliding window: the limit within any interval"
    );
    // Half a window later, half of the previous window has slid out.
    let halfway = 51 * S + S / 2;
    assert_eq!(burst_at(&sliding, &mut st, halfway, 20), 5);
}

#[test]
fn retry_after_points_at_the_first_moment_a_request_would_pass() {
    for algorithm in [
        Algorithm::TokenBucket,
        Algorithm::SlidingWindow,
        Algorithm::FixedWindow,
    ] {
        let q = quota(algorithm, 4, S, 4);
        let start = 10 * S + S / 4;
        let mut st = q.fresh(start);
        burst_at(&q, &mut st, start, 4);
        let denied = q.admit(&mut st, start);
        assert!(!denied.allowed);
        let wait = denied.retry_after_us;
        assert!(wait > 0, "{algorithm:?}");
        let mut probe = st;
        assert!(
            !q.admit(&mut probe, start + wait - wait.min(2000)).allowed,
            "{algorithm:?}: admitted before Retry-After"
        );
        let mut probe = st;
        assert!(
            q.admit(&mut probe, start + wait + 1).allowed,
            "{algorithm:?}: still denied after Retry-After ({wait} us)"
        );
    }
}

#[test]
fn remaining_and_reset_count_down() {
    let q = quota(Algorithm::FixedWindow, 3, S, 3);
    let t = 7 * S + S / 4;
    let mut st = q.fresh(t);
    let out: Vec<u64> = (0..3).map(|_| q.admit(&mut st, t).remaining).collect();
    assert_eq!(out, [2, 1, 0]);
    assert_eq!(q.admit(&mut st, t).reset_us, S * 3 / 4);
}

#[test]
fn idle_state_is_recognised_so_it_can_be_dropped() {
    let q = quota(Algorithm::TokenBucket, 10, S, 10);
    let mut st = q.fresh(0);
    q.admit(&mut st, 0);
    assert!(!q.is_idle(&st, 0));
    assert!(q.is_idle(&st, S));
    let w = quota(Algorithm::SlidingWindow, 10, S, 10);
    let mut st = w.fresh(0);
    w.admit(&mut st, 0);
    assert!(!w.is_idle(&st, S + 1), "still weighs in the next window");
    assert!(w.is_idle(&st, 2 * S));
}
