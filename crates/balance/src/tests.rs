use super::*;
use proptest::prelude::*;

fn addrs(n: usize) -> Vec<PodSpec> {
    (0..n)
        .map(|i| SocketAddr::from(([127, 0, 0, 1], 5000 + i as u16)).into())
        .collect()
}

fn settings(slots: u32) -> PoolSettings {
    PoolSettings {
        slots,
        ..PoolSettings::default()
    }
}

/// In a two-pod pool: one request on `on` (by avoiding the other pod) that answers in `ms`.
fn sample(p: &Pool, on: &Arc<PodState>, ms: u64) {
    let pods = p.pods();
    let other = pods.iter().find(|x| !Arc::ptr_eq(x, on)).expect("two pods");
    let l = p.try_acquire_avoiding(0, other).unwrap();
    assert!(Arc::ptr_eq(l.pod(), on));
    l.report(Outcome::Success(Duration::from_millis(ms)));
}

fn mk_pool(n: usize, limit: u32) -> Pool {
    Pool::new(&addrs(n), settings(limit))
}

#[test]
fn free_slots_are_taken_then_exhausted() {
    let p = mk_pool(2, 1);
    let a = p.try_acquire(0).unwrap();
    let b = p.try_acquire(0).unwrap();
    assert_ne!(
        a.pod().addr(),
        b.pod().addr(),
        "second lease goes to the idle pod"
    );
    assert!(p.try_acquire(7).is_none());
    assert_eq!(p.busy(), 2);
    drop(a);
    assert_eq!(p.busy(), 1);
    assert!(p.try_acquire(3).is_some());
}

#[test]
fn p2c_prefers_the_less_loaded_pod() {
    let p = mk_pool(2, 10);
    let _held: Vec<_> = (0..5).map(|_| p.try_acquire(0).unwrap()).collect();
    // whatever the roll, loads stay balanced within one
    let a = p.pods()[0].in_flight();
    let b = p.pods()[1].in_flight();
    assert!(a.abs_diff(b) <= 1, "{a} vs {b}");
}

#[tokio::test(start_paused = true)]
async fn waiter_times_out_at_the_deadline() {
    let p = mk_pool(1, 1);
    let _held = p.try_acquire(0).unwrap();
    let t0 = tokio::time::Instant::now();
    let e = p.acquire(0, Duration::from_millis(500)).await.unwrap_err();
    assert_eq!(e, AcquireError::QueueTimeout);
    assert_eq!(t0.elapsed(), Duration::from_millis(500));
    assert_eq!(p.busy(), 1);
}

#[tokio::test(start_paused = true)]
async fn waiters_are_served_in_fifo_order() {
    let p = mk_pool(1, 1);
    let held = p.try_acquire(0).unwrap();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    for i in 0..5 {
        let p = p.clone();
        let tx = tx.clone();
        tokio::spawn(async move {
            let lease = p.acquire(0, Duration::from_secs(60)).await.unwrap();
            tx.send(i).unwrap();
            tokio::time::sleep(Duration::from_millis(10)).await;
            drop(lease);
        });
        // make the enqueue order deterministic
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    assert_eq!(p.queued(), 5);
    // a newcomer cannot barge in while others wait
    drop(held);
    assert!(
        p.try_acquire(0).is_none(),
        "the freed slot went to the oldest waiter"
    );
    let mut order = vec![];
    for _ in 0..5 {
        order.push(rx.recv().await.unwrap());
    }
    assert_eq!(order, vec![0, 1, 2, 3, 4]);
    tokio::time::sleep(Duration::from_millis(20)).await;
    assert_eq!(p.busy(), 0);
}

#[tokio::test(start_paused = true)]
async fn queue_cap_refuses_at_once() {
    let p = Pool::new(
        &addrs(1),
        PoolSettings {
            max_queue: 2,
            ..settings(1)
        },
    );
    let _held = p.try_acquire(0).unwrap();
    let w1 = tokio::spawn({
        let p = p.clone();
        async move { p.acquire(0, Duration::from_secs(5)).await.map(|_| ()) }
    });
    let w2 = tokio::spawn({
        let p = p.clone();
        async move { p.acquire(0, Duration::from_secs(5)).await.map(|_| ()) }
    });
    tokio::time::sleep(Duration::from_millis(1)).await;
    assert_eq!(
        p.acquire(0, Duration::from_secs(5)).await.unwrap_err(),
        AcquireError::QueueFull
    );
    drop((w1, w2));
}

#[tokio::test]
async fn no_pods_is_an_error() {
    let p = mk_pool(0, 1);
    assert_eq!(
        p.acquire(0, Duration::from_millis(10)).await.unwrap_err(),
        AcquireError::NoPods
    );
}

fn cold(wait_ms: u64, max_queue: u32) -> PoolSettings {
    PoolSettings {
        max_queue,
        cold_start_wait: Some(Duration::from_millis(wait_ms)),
        ..settings(1)
    }
}

#[tokio::test(start_paused = true)]
async fn a_pod_less_pool_with_cold_start_queues_and_serves_fifo_when_pods_arrive() {
    let p = Pool::new(&[], cold(5000, 16));
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    for i in 0..3 {
        let p = p.clone();
        let tx = tx.clone();
        tokio::spawn(async move {
            // The queue wait (10 ms) does not apply: the request enqueued with no pods.
            let lease = p.acquire(0, Duration::from_millis(10)).await.unwrap();
            tx.send(i).unwrap();
            tokio::time::sleep(Duration::from_millis(10)).await;
            drop(lease);
        });
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(p.queued(), 3, "waiting for the first pod, and visible");
    assert!(rx.try_recv().is_err());
    let t0 = tokio::time::Instant::now();
    p.set_pods(&addrs(1), cold(5000, 16));
    let mut order = vec![];
    for _ in 0..3 {
        order.push(rx.recv().await.unwrap());
    }
    assert_eq!(order, vec![0, 1, 2], "served oldest first");
    assert_eq!(t0.elapsed(), Duration::from_millis(20), "the first at once");
    tokio::time::sleep(Duration::from_millis(20)).await;
    assert_eq!((p.busy(), p.queued()), (0, 0));
}

#[tokio::test(start_paused = true)]
async fn a_cold_start_wait_runs_out_with_cold_start_timeout() {
    let p = Pool::new(&[], cold(300, 16));
    let t0 = tokio::time::Instant::now();
    let e = p.acquire(0, Duration::from_secs(10)).await.unwrap_err();
    assert_eq!(e, AcquireError::ColdStartTimeout);
    assert_eq!(
        t0.elapsed(),
        Duration::from_millis(300),
        "the cold-start wait"
    );
    assert_eq!(p.queued(), 0, "the waiter that gave up is not counted");
}

#[tokio::test(start_paused = true)]
async fn a_cold_start_waiter_whose_pod_came_but_stayed_busy_gets_queue_timeout() {
    let p = Pool::new(&[], cold(300, 16));
    let w = tokio::spawn({
        let p = p.clone();
        async move { p.acquire(0, Duration::from_secs(10)).await.map(|_| ()) }
    });
    tokio::time::sleep(Duration::from_millis(1)).await;
    // The pod comes, but its one slot is taken by a request that does not queue.
    let settings = cold(300, 16);
    let pods = addrs(1);
    let held = {
        let _guard = p.shared.queue.lock();
        *p.shared.settings.write() = settings;
        p.shared
            .pods
            .store(Arc::new(pods.iter().map(PodState::new).collect()));
        let pod = p.pods()[0].clone();
        assert!(pod.try_take(1));
        p.shared.lease(pod)
    };
    let t0 = tokio::time::Instant::now();
    assert_eq!(w.await.unwrap().unwrap_err(), AcquireError::QueueTimeout);
    assert_eq!(t0.elapsed(), Duration::from_millis(299));
    drop(held);
}

#[tokio::test(start_paused = true)]
async fn a_cold_start_queue_respects_its_length_cap() {
    let p = Pool::new(&[], cold(5000, 2));
    let waiters: Vec<_> = (0..2)
        .map(|_| {
            tokio::spawn({
                let p = p.clone();
                async move { p.acquire(0, Duration::from_secs(1)).await.map(|_| ()) }
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(1)).await;
    assert_eq!(p.queued(), 2);
    assert_eq!(
        p.acquire(0, Duration::from_secs(1)).await.unwrap_err(),
        AcquireError::QueueFull
    );
    let none = Pool::new(&[], cold(5000, 0));
    assert_eq!(
        none.acquire(0, Duration::from_secs(1)).await.unwrap_err(),
        AcquireError::QueueFull,
        "maxQueueLength 0: no waiting, not even for a cold start"
    );
    p.set_pods(&addrs(1), cold(5000, 2));
    for w in waiters {
        assert!(w.await.unwrap().is_ok());
    }
}

#[tokio::test(start_paused = true)]
async fn without_cold_start_a_pod_less_pool_refuses_at_once() {
    let p = Pool::new(&[], settings(1));
    let t0 = tokio::time::Instant::now();
    assert_eq!(
        p.acquire(0, Duration::from_secs(10)).await.unwrap_err(),
        AcquireError::NoPods
    );
    assert_eq!(t0.elapsed(), Duration::ZERO);
    assert_eq!(p.queued(), 0);
    // Pods that all leave (a plain deployment scaled down) refuse new requests again.
    p.set_pods(&addrs(1), settings(1));
    p.set_pods(&[], settings(1));
    assert_eq!(
        p.acquire(0, Duration::from_secs(10)).await.unwrap_err(),
        AcquireError::NoPods
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thousands_of_cancelled_waiters_leak_nothing() {
    let p = mk_pool(3, 2);
    let mut tasks = vec![];
    for i in 0..3000u64 {
        let p = p.clone();
        tasks.push(tokio::spawn(async move {
            if let Ok(lease) = p
                .acquire(
                    i.wrapping_mul(0x9E37_79B9_7F4A_7C15),
                    Duration::from_millis(5),
                )
                .await
            {
                assert!(lease.pod().in_flight() <= 2);
                tokio::task::yield_now().await;
            }
        }));
        if i % 3 == 0 {
            tasks.pop().unwrap().abort();
        }
    }
    for t in tasks {
        let _ = t.await;
    }
    assert_eq!(p.busy(), 0, "every slot came back");
    assert!(p.pods().iter().all(|x| x.in_flight() == 0));
}

#[derive(Debug, Clone)]
enum Op {
    Take(u64),
    Release(usize),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        any::<u64>().prop_map(Op::Take),
        any::<usize>().prop_map(Op::Release)
    ]
}

proptest! {
    #[test]
    fn slots_never_exceed_the_limit_and_never_leak(
        pods in 1usize..6, limit in 1u32..4, ops in proptest::collection::vec(op(), 1..200)
    ) {
        let p = mk_pool(pods, limit);
        let mut live: Vec<Lease> = vec![];
        for o in ops {
            match o {
                Op::Take(roll) => match p.try_acquire(roll) {
                    Some(l) => live.push(l),
                    None => prop_assert_eq!(live.len(), pods * limit as usize, "refused while a slot was free"),
                },
                Op::Release(i) => if !live.is_empty() { live.swap_remove(i % live.len()); },
            }
            for pod in p.pods().iter() {
                let held = live.iter().filter(|l| l.pod().addr() == pod.addr()).count();
                prop_assert_eq!(pod.in_flight() as usize, held);
                prop_assert!(pod.in_flight() <= limit);
            }
        }
        drop(live);
        prop_assert_eq!(p.busy(), 0);
    }
}

#[tokio::test(start_paused = true)]
async fn set_pods_keeps_state_by_address_and_retires_removed_pods() {
    let p = mk_pool(2, 1);
    let a = p.try_acquire(0).unwrap();
    let b = p.try_acquire(0).unwrap();
    let a_addr = a.pod().addr();
    // keep a's pod, drop b's, add a new one
    let third = SocketAddr::from(([127, 0, 0, 1], 6000));
    p.set_pods(&[a_addr.into(), third.into()], settings(1));
    assert_eq!(p.pods().len(), 2);
    let kept = p
        .pods()
        .iter()
        .find(|x| x.addr() == a_addr)
        .unwrap()
        .clone();
    assert_eq!(kept.in_flight(), 1, "in-flight count survived the update");
    assert!(!b.pod().is_active(), "removed pod is retired");
    let c = p.try_acquire(0).unwrap();
    assert_eq!(c.pod().addr(), third, "only the new pod had a free slot");
    assert!(
        p.try_acquire(0).is_none(),
        "a's pod is still busy, b's is gone"
    );
    drop(b); // the retired pod's request ends: no new capacity
    assert!(p.try_acquire(0).is_none());
    drop(a);
    assert!(p.try_acquire(0).is_some());
    drop(c);
}

#[tokio::test(start_paused = true)]
async fn added_pods_serve_waiters_at_once() {
    let p = mk_pool(1, 1);
    let _held = p.try_acquire(0).unwrap();
    let waiter = tokio::spawn({
        let p = p.clone();
        async move {
            p.acquire(0, Duration::from_secs(60))
                .await
                .map(|l| l.pod().addr())
        }
    });
    tokio::time::sleep(Duration::from_millis(1)).await;
    assert_eq!(p.queued(), 1);
    let new = SocketAddr::from(([127, 0, 0, 1], 7000));
    let mut pods = addrs(1);
    pods.push(new.into());
    p.set_pods(&pods, settings(1));
    assert_eq!(waiter.await.unwrap().unwrap(), new);
    assert_eq!(p.queued(), 0);
}

#[tokio::test(start_paused = true)]
async fn ejection_max_overflow_does_not_panic() {
    // A tenant's `ejectionMaxMs` of 2^64 - 1 (what a CRD could carry before the ceilings):
    // ejections double up to it without overflowing the clock, and the pool keeps serving.
    let s = PoolSettings {
        eject_after: 1,
        ejection_base: Duration::from_millis(u64::MAX),
        ejection_max: Duration::from_millis(u64::MAX),
        ..settings(1)
    };
    let p = Pool::new(&addrs(2), s);
    tokio::time::advance(Duration::from_secs(3600)).await;
    let l = p.try_acquire_avoiding(0, &p.pods()[1]).expect("a pod");
    assert!(l.report(Outcome::Failure), "ejected");
    drop(l);
    assert_eq!(p.ejected(), 1, "ejected (for as long as the clock goes)");
    // Both ejected, then again and again (each ejection doubling): the pool fails open and
    // keeps serving; nothing overflows.
    for roll in 0..40 {
        let l = p.try_acquire(roll).expect("a pod, fail open");
        l.report(Outcome::Failure);
    }
    assert_eq!(p.ejected(), 2);
    assert!(p.try_acquire(7).is_some(), "fail open");
}

#[tokio::test(start_paused = true)]
async fn consecutive_failures_eject_with_exponential_back_in_and_fail_open() {
    let s = PoolSettings {
        eject_after: 3,
        ejection_base: Duration::from_secs(1),
        ejection_max: Duration::from_secs(3),
        ..settings(1)
    };
    let p = Pool::new(&addrs(2), s);
    let bad = p.pods()[0].clone();
    let fail_on_bad = || {
        let l = p
            .try_acquire_avoiding(0, &p.pods()[1])
            .expect("bad pod free");
        assert_eq!(l.pod().addr(), bad.addr());
        l.report(Outcome::Failure)
    };
    assert!(!fail_on_bad());
    assert!(!fail_on_bad());
    assert!(fail_on_bad(), "third consecutive failure ejects");
    assert_eq!(p.ejected(), 1);
    for roll in 0..20 {
        let l = p.try_acquire(roll).unwrap();
        assert_ne!(l.pod().addr(), bad.addr(), "ejected pod gets no traffic");
    }
    tokio::time::advance(Duration::from_millis(1001)).await;
    assert_eq!(p.ejected(), 0, "ejection over after the base time");
    // ejected again at once: this time for 2 s (doubled)
    for _ in 0..3 {
        fail_on_bad();
    }
    tokio::time::advance(Duration::from_millis(1500)).await;
    assert_eq!(p.ejected(), 1, "second ejection lasts twice as long");
    tokio::time::advance(Duration::from_millis(600)).await;
    assert_eq!(p.ejected(), 0);
    // third: capped at ejection_max (3 s, not 4 s)
    for _ in 0..3 {
        fail_on_bad();
    }
    tokio::time::advance(Duration::from_millis(3001)).await;
    assert_eq!(p.ejected(), 0, "capped at ejection_max");
    // a success resets the back-in
    let l = p.try_acquire_avoiding(0, &p.pods()[1]).unwrap();
    l.report(Outcome::Success(Duration::from_millis(5)));
    drop(l);
    for _ in 0..3 {
        fail_on_bad();
    }
    tokio::time::advance(Duration::from_millis(1001)).await;
    assert_eq!(p.ejected(), 0, "back to the base time after a success");

    // every pod ejected: fail open
    let p = Pool::new(&addrs(2), s);
    for pod in p.pods().iter() {
        for _ in 0..3 {
            let l = p
                .try_acquire_avoiding(
                    0,
                    &p.pods()
                        .iter()
                        .find(|x| x.addr() != pod.addr())
                        .unwrap()
                        .clone(),
                )
                .unwrap();
            l.report(Outcome::Failure);
        }
    }
    assert_eq!(p.ejected(), 2);
    assert!(
        p.try_acquire(0).is_some(),
        "all ejected: traffic goes to all"
    );
}

#[tokio::test(start_paused = true)]
async fn latency_breaks_ties_between_equally_loaded_pods() {
    let p = mk_pool(2, 4);
    let pods = p.pods();
    let (slow, fast) = (pods[0].clone(), pods[1].clone());
    sample(&p, &slow, 400);
    sample(&p, &fast, 10);
    assert!(slow.latency_estimate() > fast.latency_estimate());
    for roll in 0..50u64 {
        let l = p
            .try_acquire(roll.wrapping_mul(0x9E37_79B9_7F4A_7C15))
            .unwrap();
        assert_eq!(
            l.pod().addr(),
            fast.addr(),
            "idle pods: the faster one wins"
        );
    }
    // peak EWMA: a slow answer counts at once, then decays
    sample(&p, &fast, 900);
    assert_eq!(fast.latency_estimate(), Duration::from_millis(900));
    tokio::time::advance(Duration::from_secs(30)).await;
    sample(&p, &fast, 10);
    assert!(
        fast.latency_estimate() < Duration::from_millis(100),
        "{:?}",
        fast.latency_estimate()
    );
}

#[tokio::test(start_paused = true)]
async fn queue_length_zero_refuses_at_once_when_busy() {
    let p = Pool::new(
        &addrs(1),
        PoolSettings {
            max_queue: 0,
            ..settings(1)
        },
    );
    let _held = p.try_acquire(0).unwrap();
    assert_eq!(
        p.acquire(0, Duration::from_secs(1)).await.unwrap_err(),
        AcquireError::QueueFull
    );
}

proptest! {
    /// Waiters are served strictly in arrival order, whatever mix of arrivals and releases.
    #[test]
    fn waiters_are_served_fifo_under_any_schedule(
        pods in 1usize..4, limit in 1u32..3, steps in proptest::collection::vec(any::<bool>(), 1..60)
    ) {
        let rt = tokio::runtime::Builder::new_current_thread().enable_time().start_paused(true).build().unwrap();
        rt.block_on(async move {
            let p = mk_pool(pods, limit);
            let mut held: Vec<Lease> = (0..pods * limit as usize).map(|_| p.try_acquire(0).unwrap()).collect();
            let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
            let mut next_id = 0u32;
            let mut served = vec![];
            for arrive in steps {
                if arrive {
                    let (p, tx, id) = (p.clone(), tx.clone(), next_id);
                    next_id += 1;
                    tokio::spawn(async move {
                        let l = p.acquire(0, Duration::from_secs(3600)).await.unwrap();
                        tx.send((id, l)).unwrap();
                    });
                } else if let Some(l) = held.pop() {
                    drop(l);
                }
                tokio::time::sleep(Duration::from_millis(1)).await;
                while let Ok((id, l)) = rx.try_recv() {
                    served.push(id);
                    held.insert(0, l);
                }
            }
            let mut sorted = served.clone();
            sorted.sort();
            assert_eq!(served, sorted, "served out of order");
            assert!(p.pods().iter().all(|x| x.in_flight() <= limit));
        });
    }
}

#[tokio::test(start_paused = true)]
async fn a_waiter_avoiding_a_pod_is_served_by_another_and_lets_others_pass() {
    let p = mk_pool(2, 1);
    let a = p.try_acquire(0).unwrap();
    let b = p.try_acquire(0).unwrap();
    let (pa, pb) = (a.pod().clone(), b.pod().clone());
    let avoider = tokio::spawn({
        let p = p.clone();
        let pa = pa.clone();
        async move {
            p.acquire_avoiding(0, Duration::from_secs(60), Some(pa))
                .await
                .map(|l| l.pod().addr())
        }
    });
    tokio::time::sleep(Duration::from_millis(1)).await;
    let plain = tokio::spawn({
        let p = p.clone();
        async move {
            p.acquire(0, Duration::from_secs(60))
                .await
                .map(|l| l.pod().addr())
        }
    });
    tokio::time::sleep(Duration::from_millis(1)).await;
    drop(a); // only the avoided pod frees up: the younger, plain waiter takes it
    assert_eq!(plain.await.unwrap().unwrap(), pa.addr());
    drop(b);
    assert_eq!(avoider.await.unwrap().unwrap(), pb.addr());
}

#[tokio::test(start_paused = true)]
async fn a_much_slower_free_pod_is_skipped_while_a_fast_slot_will_free_sooner() {
    let p = mk_pool(2, 1);
    let pods = p.pods();
    let (fast, slow) = (pods[0].clone(), pods[1].clone());
    sample(&p, &fast, 20);
    sample(&p, &slow, 400);

    // light load: the fast pod is free, everyone goes there
    for roll in 0..20u64 {
        let l = p
            .try_acquire(roll.wrapping_mul(0x9E37_79B9_7F4A_7C15))
            .unwrap();
        assert_eq!(l.pod().addr(), fast.addr());
    }
    // the fast pod busy: the next request waits for it rather than taking the 400 ms pod
    let held = p.try_acquire(1).unwrap();
    assert_eq!(held.pod().addr(), fast.addr());
    assert!(
        p.try_acquire(2).is_none(),
        "20 ms queue wait + 20 ms beats 400 ms"
    );
    let w1 = tokio::spawn({
        let p = p.clone();
        async move { p.acquire(3, Duration::from_secs(60)).await.unwrap() }
    });
    tokio::time::sleep(Duration::from_millis(1)).await;
    // a deep queue: waiters far back are better off on the slow pod (position >= ~18 here)
    let mut deep = vec![];
    for k in 0..30u64 {
        let p = p.clone();
        deep.push(tokio::spawn(async move {
            let l = p.acquire(k, Duration::from_secs(60)).await.unwrap();
            let (addr, at) = (l.pod().addr(), tokio::time::Instant::now());
            tokio::time::sleep(Duration::from_secs(1)).await;
            drop(l);
            (k, addr, at)
        }));
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    drop(held);
    let first = w1.await.unwrap();
    assert_eq!(
        first.pod().addr(),
        fast.addr(),
        "the head of the queue waited for the fast pod"
    );
    tokio::time::sleep(Duration::from_millis(1)).await;
    assert_eq!(
        slow.in_flight(),
        1,
        "a waiter deep in the queue took the slow pod"
    );
    drop(first);
    let mut on_slow = vec![];
    for d in deep {
        let (k, addr, at) = d.await.unwrap();
        if addr == slow.addr() {
            on_slow.push((at, k));
        }
    }
    on_slow.sort();
    assert!(
        on_slow[0].1 >= 17,
        "the first waiter the slow pod took came from deep in the queue: {on_slow:?}"
    );

    // a pod not sampled for a while is probed again
    let p = mk_pool(2, 1);
    let pods = p.pods();
    let (fast, slow) = (pods[0].clone(), pods[1].clone());
    sample(&p, &fast, 20);
    sample(&p, &slow, 400);
    let held = p.try_acquire(1).unwrap();
    assert!(p.try_acquire(2).is_none());
    tokio::time::advance(Duration::from_secs(11)).await;
    let probe = p
        .try_acquire(2)
        .expect("stale estimate: the slow pod is tried again");
    assert_eq!(probe.pod().addr(), slow.addr());
    drop((held, probe));
}

#[tokio::test(start_paused = true)]
async fn the_fastest_latency_hint_skips_the_scan_for_a_while_then_the_exact_rule_applies() {
    let p = mk_pool(2, 1);
    let pods = p.pods();
    let (fast, slow) = (pods[0].clone(), pods[1].clone());
    // Only the slow pod has an estimate: a scan finds nothing faster, and the hint is 400 ms.
    sample(&p, &slow, 400);
    let l = p.try_acquire_avoiding(0, &fast).unwrap();
    drop(l);
    // Now the fast pod is known (20 ms) and busy. Within the hint's lifetime the slow pod is
    // judged against the hint (400 ms, "as fast as the fastest") and taken without a scan...
    sample(&p, &fast, 20);
    let held = p.try_acquire_avoiding(0, &slow).unwrap();
    let within = p.try_acquire(2);
    assert_eq!(within.as_ref().map(|l| l.pod().addr()), Some(slow.addr()));
    drop(within);
    // ...and once it has expired, the exact rule: 20 ms of waiting + 20 ms beats 400 ms.
    tokio::time::advance(Duration::from_millis(150)).await;
    assert!(
        p.try_acquire(2).is_none(),
        "a stale hint must not keep sending requests to a slow pod"
    );
    // The scan refreshed the hint to 20 ms: the slow pod stays skipped without waiting again.
    assert!(p.try_acquire(3).is_none());
    drop(held);
}
