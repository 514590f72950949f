//! Pod picking: a lease taken with `try_acquire` and given back by dropping it, for pools of
//! several sizes; the slow path when every slot is taken; the async `acquire` fast path; and a
//! released slot handed straight to a queued waiter.

use std::future::Future as _;
use std::hint::black_box;
use std::net::{Ipv4Addr, SocketAddr};
use std::pin::pin;
use std::task::Poll;
use std::time::Duration;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use infergate_balance::{Lease, Outcome, PodSpec, Pool, PoolSettings};

fn pods(n: usize) -> Vec<PodSpec> {
    (0..n)
        .map(|i| {
            PodSpec::from(SocketAddr::from((
                Ipv4Addr::new(10, 0, (i / 250) as u8, (i % 250) as u8 + 1),
                5001,
            )))
        })
        .collect()
}

fn settings(slots: u32) -> PoolSettings {
    PoolSettings {
        slots,
        ..PoolSettings::default()
    }
}

/// xorshift64: a cheap stand-in for the router's per-request random roll.
fn next(roll: &mut u64) -> u64 {
    *roll ^= *roll << 13;
    *roll ^= *roll >> 7;
    *roll ^= *roll << 17;
    *roll
}

fn pick(c: &mut Criterion) {
    let mut g = c.benchmark_group("balancer_pick");
    for n in [2usize, 16, 256] {
        // Plenty of slots (like `maxConcurrentRequestsPerInstance: 1000`): the two-choice path.
        let pool = Pool::new(&pods(n), settings(1000));
        let mut roll = 0x9E37_79B9_7F4A_7C15u64;
        g.bench_function(format!("try_acquire_drop/{n}_pods"), |b| {
            b.iter(|| drop(black_box(pool.try_acquire(next(&mut roll)))))
        });
        // The same with a latency report, as the proxy does for every answered request.
        g.bench_function(format!("try_acquire_report_drop/{n}_pods"), |b| {
            b.iter(|| {
                let l = pool.try_acquire(next(&mut roll)).expect("free slot");
                black_box(l.report(Outcome::Success(Duration::from_micros(250))));
            })
        });
    }
    // One slot per pod and all but one pod busy: both random choices usually miss, so the pick
    // falls back to scanning every pod for the free one.
    for n in [16usize, 256] {
        let pool = Pool::new(&pods(n), settings(1));
        let mut held: Vec<Lease> = Vec::new();
        while let Some(l) = pool.try_acquire(held.len() as u64 * 7919) {
            held.push(l);
        }
        let free = held.pop().expect("n >= 1");
        drop(free);
        let mut roll = 1u64;
        g.bench_function(format!("try_acquire_drop_one_free/{n}_pods"), |b| {
            b.iter(|| {
                drop(black_box(
                    pool.try_acquire(next(&mut roll)).expect("one free"),
                ))
            })
        });
        // Every slot taken: the miss (the request then queues).
        let last = pool.try_acquire(0).expect("one free");
        g.bench_function(format!("try_acquire_all_busy/{n}_pods"), |b| {
            b.iter(|| black_box(pool.try_acquire(next(&mut roll)).is_none()))
        });
        drop(last);
        drop(held);
    }

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    // The async entry point when nobody waits (the proxy's common case).
    let pool = Pool::new(&pods(16), settings(1000));
    let mut roll = 7u64;
    g.bench_function("acquire_no_waiters/16_pods", |b| {
        b.iter(|| {
            let l = rt
                .block_on(pool.acquire(next(&mut roll), Duration::from_millis(500)))
                .expect("free slot");
            drop(black_box(l));
        })
    });
    // A full pool (1 pod x 1 slot) with a waiter: the waiter queues (first poll), the holder drops
    // its lease, the slot goes straight to the waiter (oneshot), which then holds it for the next
    // round. Measures queue + handoff + wake-up.
    let pool = Pool::new(&pods(1), settings(1));
    let mut held = Some(pool.try_acquire(0).expect("free"));
    g.bench_function("acquire_handoff_to_waiter/1_waiter", |b| {
        b.iter(|| {
            rt.block_on(async {
                let mut waiter = pin!(pool.acquire(1, Duration::from_secs(5)));
                let queued =
                    std::future::poll_fn(|cx| Poll::Ready(waiter.as_mut().poll(cx).is_pending()))
                        .await;
                assert!(queued, "the pool is full, so the waiter queues");
                drop(held.take());
                held = Some(waiter.await.expect("handed the slot"));
            })
        })
    });
    drop(held);
    // 64 requests queue behind one busy slot, then are served in FIFO order, each handing the
    // slot on when done: the time per batch of 64 (throughput = queued acquires per second).
    let pool = Pool::new(&pods(1), settings(1));
    g.throughput(Throughput::Elements(64));
    g.bench_function("acquire_fifo_drain/64_waiters", |b| {
        b.iter(|| {
            rt.block_on(async {
                let held = pool.try_acquire(0).expect("free");
                let mut waiters: Vec<_> = (0..64)
                    .map(|_| Box::pin(pool.acquire(1, Duration::from_secs(5))))
                    .collect();
                for w in &mut waiters {
                    let queued =
                        std::future::poll_fn(|cx| Poll::Ready(w.as_mut().poll(cx).is_pending()))
                            .await;
                    assert!(queued);
                }
                drop(held);
                for w in waiters {
                    drop(black_box(w.await.expect("served in turn")));
                }
            })
        })
    });
    g.finish();
}

criterion_group!(benches, pick);
criterion_main!(benches);
