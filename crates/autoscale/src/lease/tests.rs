//! The election's state machine, without I/O.

use super::*;

const MS: Duration = Duration::from_millis(1);

fn timing() -> Timing {
    Timing {
        lease_duration: 1500 * MS,
        retry_period: 300 * MS,
        renew_deadline: 1000 * MS,
    }
}

fn wall(s: i64) -> MicroTime {
    MicroTime(Timestamp::from_second(s).unwrap())
}

fn held_by(who: &str, rv: &str) -> LeaseRecord {
    LeaseRecord {
        holder: Some(who.into()),
        lease_duration: Some(1500 * MS),
        acquire_time: Some(wall(100)),
        renew_time: Some(wall(100)),
        transitions: 2,
        resource_version: Some(rv.into()),
    }
}

/// A server's answer to a write: the record with a new resourceVersion.
fn stored(rec: LeaseRecord, rv: &str) -> LeaseRecord {
    LeaseRecord {
        resource_version: Some(rv.into()),
        ..rec
    }
}

#[test]
fn timing_defaults_and_validation() {
    let d = Timing::default();
    assert_eq!(
        (d.lease_duration, d.retry_period, d.renew_deadline),
        (15_000 * MS, 5_000 * MS, 10_000 * MS)
    );
    assert!(d.validate().is_ok());
    assert!(timing().validate().is_ok());
    let bad = Timing {
        renew_deadline: 1500 * MS,
        ..timing()
    };
    assert!(bad.validate().is_err());
    let bad = Timing {
        retry_period: 1000 * MS,
        ..timing()
    };
    assert!(bad.validate().is_err());
    let cfg = LeaseConfig::new("ns", "me");
    assert_eq!(cfg.name, "infergate-autoscaler");
    assert_eq!(cfg.timing(), Timing::default());
}

#[test]
fn reads_first_then_creates_a_missing_lease() {
    let mut e = Elector::new("a", timing());
    assert_eq!(e.next(Duration::ZERO, wall(1)), Action::Read);
    e.observe(None, Duration::ZERO);
    let Action::Create(rec) = e.next(Duration::ZERO, wall(1)) else {
        panic!("create expected");
    };
    assert_eq!(rec.holder(), Some("a"));
    assert_eq!(rec.lease_duration, Some(1500 * MS));
    assert_eq!((rec.transitions, rec.resource_version.clone()), (0, None));
    assert_eq!(rec.acquire_time, Some(wall(1)));
    assert!(
        !e.is_leader(Duration::ZERO),
        "not before the write succeeded"
    );
    e.written(stored(rec, "5"), Duration::ZERO);
    assert!(e.is_leader(10 * MS));
    assert_eq!(e.leader_until(), Some(1000 * MS));
}

#[test]
fn acquires_a_free_lease_at_once() {
    let mut e = Elector::new("a", timing());
    e.next(Duration::ZERO, wall(1));
    let mut free = held_by("", "7");
    free.holder = Some(String::new());
    e.observe(Some(free), Duration::ZERO);
    let Action::Update(rec) = e.next(Duration::ZERO, wall(1)) else {
        panic!("take over expected");
    };
    assert_eq!(rec.holder(), Some("a"));
    assert_eq!(
        rec.resource_version.as_deref(),
        Some("7"),
        "CAS on what was read"
    );
    assert_eq!(rec.transitions, 3);
    e.written(stored(rec, "8"), Duration::ZERO);
    assert!(e.is_leader(Duration::ZERO));
}

#[test]
fn waits_while_another_holds_an_unexpired_lease() {
    let mut e = Elector::new("a", timing());
    e.next(Duration::ZERO, wall(1));
    e.observe(Some(held_by("b", "7")), Duration::ZERO);
    assert_eq!(e.next(Duration::ZERO, wall(1)), Action::Wait);
    assert!(!e.is_leader(Duration::ZERO));
    // After a wait, read again.
    assert_eq!(e.next(300 * MS, wall(1)), Action::Read);
    // b renews (new resourceVersion): the expiry clock restarts.
    e.observe(Some(held_by("b", "9")), 1000 * MS);
    assert_eq!(e.next(1000 * MS, wall(1)), Action::Wait);
    e.next(2000 * MS, wall(1));
    e.observe(Some(held_by("b", "9")), 2000 * MS);
    assert_eq!(
        e.next(2000 * MS, wall(1)),
        Action::Wait,
        "1000 ms + 1500 ms not reached"
    );
}

#[test]
fn takes_over_after_expiry_measured_on_our_clock() {
    let mut e = Elector::new("a", timing());
    e.next(Duration::ZERO, wall(1));
    // The renewTime inside is far in the future (a skewed clock): irrelevant.
    let mut rec = held_by("b", "7");
    rec.renew_time = Some(wall(1_000_000));
    e.observe(Some(rec.clone()), 100 * MS);
    for t in [400, 900, 1500] {
        assert_eq!(e.next(t * MS, wall(1)), Action::Wait, "at {t} ms");
        e.observe(Some(rec.clone()), t * MS);
    }
    // Unchanged since 100 ms: expired at 1600 ms.
    assert_eq!(e.next(1599 * MS, wall(1)), Action::Wait);
    e.observe(Some(rec.clone()), 1600 * MS);
    let Action::Update(next) = e.next(1600 * MS, wall(2)) else {
        panic!("take over expected");
    };
    assert_eq!(next.holder(), Some("a"));
    assert_eq!(next.transitions, 3);
    assert_eq!(next.acquire_time, Some(wall(2)));
    assert_eq!(next.resource_version.as_deref(), Some("7"));
    // A renewTime in the past is no shortcut either: a lease first seen now is waited out.
    let mut e = Elector::new("a", timing());
    e.next(Duration::ZERO, wall(1));
    let mut old = held_by("b", "7");
    old.renew_time = Some(wall(0));
    e.observe(Some(old), 10_000 * MS);
    assert_eq!(e.next(10_000 * MS, wall(1)), Action::Wait);
}

#[test]
fn a_conflict_rereads_and_another_holder_ends_leadership() {
    let mut e = Elector::new("a", timing());
    e.next(Duration::ZERO, wall(1));
    e.observe(None, Duration::ZERO);
    let Action::Create(rec) = e.next(Duration::ZERO, wall(1)) else {
        panic!()
    };
    // AlreadyExists: read, then wait out b's lease.
    e.conflict();
    assert_eq!(e.next(10 * MS, wall(1)), Action::Read);
    e.observe(Some(held_by("b", "3")), 10 * MS);
    assert_eq!(e.next(10 * MS, wall(1)), Action::Wait);
    drop(rec);

    // A leader whose renew conflicts re-reads; another holder there ends leadership.
    let mut e = Elector::new("a", timing());
    e.next(Duration::ZERO, wall(1));
    e.observe(Some(held_by("a", "3")), Duration::ZERO);
    let Action::Update(r) = e.next(Duration::ZERO, wall(1)) else {
        panic!()
    };
    e.written(stored(r, "4"), Duration::ZERO);
    assert!(e.is_leader(300 * MS));
    let Action::Update(r) = e.next(300 * MS, wall(1)) else {
        panic!("a leader renews")
    };
    assert_eq!(
        r.resource_version.as_deref(),
        Some("4"),
        "renews with the rv it wrote"
    );
    e.conflict();
    assert!(
        e.is_leader(300 * MS),
        "a conflict alone does not end leadership"
    );
    assert_eq!(e.next(300 * MS, wall(1)), Action::Read);
    e.observe(Some(held_by("b", "6")), 310 * MS);
    assert!(!e.is_leader(310 * MS));
    assert_eq!(e.leader_until(), None);
}

#[test]
fn renew_failures_end_leadership_before_others_could_take_over() {
    let t = timing();
    let mut a = Elector::new("a", t);
    let mut b = Elector::new("b", t);
    a.next(Duration::ZERO, wall(1));
    a.observe(None, Duration::ZERO);
    let Action::Create(r) = a.next(Duration::ZERO, wall(1)) else {
        panic!()
    };
    // The write starts at 0 and is stored at 50 ms; b reads it right away.
    let rec = stored(r, "2");
    a.written(rec.clone(), Duration::ZERO);
    b.next(50 * MS, wall(1));
    b.observe(Some(rec.clone()), 50 * MS);
    // Every renew from now on fails (outage).
    let mut now = Duration::ZERO;
    let mut a_lost = None;
    let mut b_took = None;
    while now < 5000 * MS {
        now += 10 * MS;
        if a_lost.is_none() && !a.is_leader(now) {
            a_lost = Some(now);
        }
        if now.as_millis().is_multiple_of(300) {
            if a.next(now, wall(1)) != Action::Wait {
                a.failed();
            }
            // b keeps reading the unchanged lease.
            if b.next(now, wall(1)) == Action::Read {
                b.observe(Some(rec.clone()), now);
            }
            if b_took.is_none() && matches!(b.next(now, wall(1)), Action::Update(_)) {
                b_took = Some(now);
            }
        }
    }
    let (a_lost, b_took) = (a_lost.unwrap(), b_took.unwrap());
    assert_eq!(
        a_lost,
        1000 * MS,
        "renew deadline after the last renew's start"
    );
    assert!(b_took >= 50 * MS + t.lease_duration, "{b_took:?}");
    assert!(a_lost < b_took);
}

#[test]
fn release_clears_the_holder_and_leadership() {
    let mut e = Elector::new("a", timing());
    assert_eq!(e.release(wall(1)), None, "nothing held");
    e.next(Duration::ZERO, wall(1));
    e.observe(Some(held_by("a", "3")), Duration::ZERO);
    let Action::Update(r) = e.next(Duration::ZERO, wall(1)) else {
        panic!()
    };
    e.written(stored(r, "4"), Duration::ZERO);
    let rel = e.release(wall(2)).unwrap();
    assert!(!e.is_leader(Duration::ZERO));
    assert_eq!(rel.holder(), None);
    assert_eq!(rel.resource_version.as_deref(), Some("4"));
    assert_eq!(rel.transitions, 2);
    // A successor takes a free lease at once.
    let mut b = Elector::new("b", timing());
    b.next(Duration::ZERO, wall(1));
    b.observe(Some(stored(rel, "5")), Duration::ZERO);
    assert!(
        matches!(b.next(Duration::ZERO, wall(1)), Action::Update(r) if r.holder() == Some("b"))
    );
}

#[test]
fn records_round_trip_through_lease_objects() {
    let mut rec = held_by("a", "12");
    let mut lease = Lease::default();
    lease.metadata.labels = Some([("x".to_string(), "y".to_string())].into());
    rec.apply_to(&mut lease);
    let s = lease.spec.as_ref().unwrap();
    assert_eq!(s.lease_duration_seconds, Some(2), "1500 ms rounds up");
    rec.lease_duration = Some(2000 * MS);
    assert_eq!(LeaseRecord::from_lease(&lease), rec);
    assert!(lease.metadata.labels.is_some(), "other fields kept");
}
