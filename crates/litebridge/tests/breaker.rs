//! Circuit breaker behaviour, with time controlled by the test (no sleeping).

use std::time::Duration;

use litebridge::ErrorKind;
use litebridge::resilience::{BreakerConfig, BreakerRegistry, BreakerState};
use tokio::time::{Instant, advance};

fn config() -> BreakerConfig {
    BreakerConfig {
        enabled: true,
        window: 10,
        minimum_calls: 4,
        failure_rate: 0.5,
        consecutive_failures: None,
        slow_call_duration: Some(Duration::from_secs(1)),
        slow_call_rate: 1.1,
        open_for: Duration::from_secs(30),
        half_open_probes: 2,
    }
}

/// The deadline of a call made now: 5 s away.
fn later() -> Instant {
    Instant::now() + Duration::from_secs(5)
}

#[tokio::test(start_paused = true)]
async fn opens_at_the_failure_rate_once_minimum_calls_are_in() {
    let reg = BreakerRegistry::new(config());
    let b = reg.get("m");
    b.try_acquire(later()).unwrap().failure();
    b.try_acquire(later()).unwrap().failure();
    b.try_acquire(later()).unwrap().failure();
    assert_eq!(b.state(), BreakerState::Closed, "below minimum_calls");
    b.try_acquire(later()).unwrap().success();
    // 3 failures of 4 = 75 % >= 50 %.
    assert_eq!(b.state(), BreakerState::Open);
}

#[tokio::test(start_paused = true)]
async fn stays_closed_below_the_rate() {
    let reg = BreakerRegistry::new(config());
    let b = reg.get("m");
    for i in 0..20 {
        // One failure in three, never 50 % of any window prefix.
        b.try_acquire(later()).unwrap().record(i % 3 == 2);
    }
    assert_eq!(b.state(), BreakerState::Closed);
}

#[tokio::test(start_paused = true)]
async fn consecutive_failures_open_it_whatever_the_window() {
    let reg = BreakerRegistry::new(BreakerConfig {
        consecutive_failures: Some(3),
        minimum_calls: 100,
        ..config()
    });
    let b = reg.get("m");
    b.try_acquire(later()).unwrap().failure();
    b.try_acquire(later()).unwrap().failure();
    b.try_acquire(later()).unwrap().success();
    b.try_acquire(later()).unwrap().failure();
    b.try_acquire(later()).unwrap().failure();
    assert_eq!(b.state(), BreakerState::Closed);
    b.try_acquire(later()).unwrap().failure();
    assert_eq!(b.state(), BreakerState::Open);
}

#[tokio::test(start_paused = true)]
async fn rejects_with_retry_after_counting_down() {
    let reg = BreakerRegistry::new(config());
    let b = reg.get("analyze");
    for _ in 0..4 {
        b.try_acquire(later()).unwrap().failure();
    }
    assert_eq!(
        b.try_acquire(later()).unwrap_err().retry_after,
        Duration::from_secs(30)
    );
    advance(Duration::from_secs(12)).await;
    assert_eq!(
        b.try_acquire(later()).unwrap_err().retry_after,
        Duration::from_secs(18)
    );
    let e = b.acquire(later()).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::CircuitOpen);
    assert!(e.is_recoverable());
    assert_eq!(e.retry_after(), Some(Duration::from_secs(18)));
    assert!(e.to_string().contains("analyze"), "{e}");
}

#[tokio::test(start_paused = true)]
async fn half_open_admits_only_the_probes_then_closes_on_success() {
    let reg = BreakerRegistry::new(config());
    let b = reg.get("m");
    for _ in 0..4 {
        b.try_acquire(later()).unwrap().failure();
    }
    advance(Duration::from_secs(30)).await;
    let p1 = b.try_acquire(later()).expect("first probe");
    assert_eq!(b.state(), BreakerState::HalfOpen);
    let p2 = b.try_acquire(later()).expect("second probe");
    for _ in 0..10 {
        assert!(
            b.try_acquire(later()).is_err(),
            "only two probes may be out"
        );
    }
    p1.success();
    assert_eq!(b.state(), BreakerState::HalfOpen);
    p2.success();
    assert_eq!(b.state(), BreakerState::Closed);
    b.try_acquire(later()).unwrap().success();
}

#[tokio::test(start_paused = true)]
async fn a_failed_probe_opens_it_again() {
    let reg = BreakerRegistry::new(config());
    let b = reg.get("m");
    for _ in 0..4 {
        b.try_acquire(later()).unwrap().failure();
    }
    advance(Duration::from_secs(30)).await;
    let p1 = b.try_acquire(later()).unwrap();
    let p2 = b.try_acquire(later()).unwrap();
    p1.failure();
    p2.success();
    // 1 failure of 2 probes = 50 % >= 50 %.
    assert_eq!(b.state(), BreakerState::Open);
    assert_eq!(
        b.try_acquire(later()).unwrap_err().retry_after,
        Duration::from_secs(30)
    );
}

#[tokio::test(start_paused = true)]
async fn probes_not_back_by_their_own_deadline_reopen_it() {
    let reg = BreakerRegistry::new(config());
    let b = reg.get("m");
    for _ in 0..4 {
        b.try_acquire(later()).unwrap().failure();
    }
    advance(Duration::from_secs(30)).await;
    let stuck1 = b.try_acquire(later()).unwrap();
    let stuck2 = b.try_acquire(later()).unwrap();
    advance(Duration::from_secs(5)).await;
    assert!(b.try_acquire(later()).is_err());
    assert_eq!(b.state(), BreakerState::Open);
    // Their late outcomes belong to an old state and change nothing.
    stuck1.success();
    stuck2.success();
    assert_eq!(b.state(), BreakerState::Open);
}

#[tokio::test(start_paused = true)]
async fn a_probe_given_up_frees_its_slot() {
    let reg = BreakerRegistry::new(config());
    let b = reg.get("m");
    for _ in 0..4 {
        b.try_acquire(later()).unwrap().failure();
    }
    advance(Duration::from_secs(30)).await;
    let p1 = b.try_acquire(later()).unwrap();
    let p2 = b.try_acquire(later()).unwrap();
    assert!(b.try_acquire(later()).is_err());
    drop(p2);
    let p3 = b
        .try_acquire(later())
        .expect("the dropped probe's slot is free again");
    p1.success();
    p3.success();
    assert_eq!(b.state(), BreakerState::Closed);
}

#[tokio::test(start_paused = true)]
async fn slow_calls_open_it_at_the_slow_rate() {
    let reg = BreakerRegistry::new(BreakerConfig {
        slow_call_rate: 0.5,
        ..config()
    });
    let b = reg.get("m");
    for _ in 0..4 {
        let p = b.try_acquire(later()).unwrap();
        advance(Duration::from_secs(2)).await;
        p.success();
    }
    assert_eq!(b.state(), BreakerState::Open);
}

#[tokio::test(start_paused = true)]
async fn manual_reset_force_open_and_events() {
    let reg = BreakerRegistry::new(config());
    let mut events = reg.subscribe();
    let b = reg.get("m");
    b.force_open();
    assert_eq!(b.state(), BreakerState::ForcedOpen);
    advance(Duration::from_secs(3600)).await;
    assert!(b.try_acquire(later()).is_err(), "forced open ignores time");
    assert!(reg.reset("m"));
    assert!(!reg.reset("unknown"));
    assert_eq!(b.state(), BreakerState::Closed);
    b.try_acquire(later()).unwrap().success();
    let e1 = events.try_recv().unwrap();
    assert_eq!(
        (e1.from, e1.to),
        (BreakerState::Closed, BreakerState::ForcedOpen)
    );
    assert_eq!(&*e1.breaker, "m");
    let e2 = events.try_recv().unwrap();
    assert_eq!(
        (e2.from, e2.to),
        (BreakerState::ForcedOpen, BreakerState::Closed)
    );
    let statuses = reg.statuses();
    assert_eq!(statuses.len(), 1);
    assert_eq!(statuses[0].calls, 1);
}

#[tokio::test(start_paused = true)]
async fn breakers_are_per_name() {
    let reg = BreakerRegistry::new(config());
    for _ in 0..4 {
        reg.get("a").try_acquire(later()).unwrap().failure();
    }
    assert_eq!(reg.get("a").state(), BreakerState::Open);
    assert_eq!(reg.get("b").state(), BreakerState::Closed);
    assert!(std::sync::Arc::ptr_eq(&reg.get("a"), &reg.get("a")));
}

#[tokio::test(start_paused = true)]
async fn long_successful_calls_never_trip_it_with_the_defaults() {
    let reg = BreakerRegistry::new(BreakerConfig::default());
    let b = reg.get("llm");
    // LLM calls of one minute, each given two; a hundred of them, some at once.
    for _ in 0..50 {
        let deadline = Instant::now() + Duration::from_secs(120);
        let p1 = b.try_acquire(deadline).expect("closed");
        let p2 = b.try_acquire(deadline).expect("closed");
        advance(Duration::from_secs(60)).await;
        p1.success();
        p2.success();
    }
    assert_eq!(b.state(), BreakerState::Closed);
    assert_eq!(b.status().slow_call_rate, 0.0);
}

#[tokio::test(start_paused = true)]
async fn a_probe_is_given_its_own_calls_deadline() {
    let reg = BreakerRegistry::new(BreakerConfig::default());
    let b = reg.get("llm");
    for _ in 0..5 {
        b.try_acquire(later()).unwrap().failure();
    }
    assert_eq!(b.state(), BreakerState::Open);
    advance(Duration::from_secs(60)).await;
    // Three probes, each a two-minute call that takes 90 s.
    let deadline = Instant::now() + Duration::from_secs(120);
    let probes: Vec<_> = (0..3)
        .map(|_| b.try_acquire(deadline).expect("probe"))
        .collect();
    let refused = b.try_acquire(later()).expect_err("only the probes");
    assert_eq!(refused.retry_after, Duration::from_secs(120));
    advance(Duration::from_secs(90)).await;
    assert!(
        b.try_acquire(later()).is_err(),
        "still probing, not reopened"
    );
    assert_eq!(b.state(), BreakerState::HalfOpen);
    for p in probes {
        p.success();
    }
    assert_eq!(b.state(), BreakerState::Closed);
}

#[tokio::test(start_paused = true)]
async fn a_threshold_above_the_minimum_calls_is_reached_not_pre_empted() {
    // The seed's CIRCUIT_BREAKER_THRESHOLD=20 with the default window rule.
    let reg = BreakerRegistry::new(BreakerConfig {
        consecutive_failures: Some(20),
        ..BreakerConfig::default()
    });
    let b = reg.get("m");
    for i in 0..19 {
        b.try_acquire(later()).unwrap().failure();
        assert_eq!(b.state(), BreakerState::Closed, "after {} failures", i + 1);
    }
    b.try_acquire(later()).unwrap().failure();
    assert_eq!(b.state(), BreakerState::Open);
}
