//! Lock-table benches: cache hit, cache miss to sled, and first-contact locks
//! (compare-and-swap plus group-commit flush) at 1, 16 and 64 concurrent.
//!
//! Runs on a `current_thread` runtime, as one thread-per-core worker does.
//! Every first-contact key is fresh, so each lock is a real CAS from empty.

use std::hint::black_box;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use whatsapp_router::locks::Locks;
use whatsapp_router::route::Sender;
use whatsapp_router::sender::SenderKey;
use whatsapp_router::store::Store;

/// Senders locked before the lookup benches run.
const PRELOCKED: u64 = 100_000;
const BASE: u64 = 971_500_000_000;

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap()
}

fn open() -> (tempfile::TempDir, Arc<Store>) {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(Store::open(&dir.path().join("db")).unwrap());
    (dir, store)
}

fn lookups(c: &mut Criterion) {
    let rt = runtime();
    let (_dir, store) = open();
    for i in 0..PRELOCKED {
        store.lock_if_absent(&[SenderKey::Phone(BASE + i)], (i % 1000) as u32 + 1).unwrap();
    }
    store.flush().unwrap();
    let locks = Locks::new(Arc::clone(&store));
    let hot = SenderKey::Phone(BASE + 4242);
    rt.block_on(locks.lookup(hot)).unwrap();

    let mut group = c.benchmark_group("lookup");
    group.bench_function("cache_hit", |b| b.to_async(&rt).iter(|| locks.lookup(black_box(hot))));
    // A locked sender not yet in the cache: what the first message after a
    // restart costs. Read through the store, so the cache stays cold.
    let mut n = 0u64;
    group.bench_function("miss_locked_in_sled", |b| {
        b.iter(|| {
            n = (n + 7919) % PRELOCKED;
            store.get_lock(black_box(SenderKey::Phone(BASE + n))).unwrap()
        })
    });
    // A sender who never used a link: not cached, so every message reads sled.
    let stranger = SenderKey::Phone(BASE + PRELOCKED + 17);
    group.bench_function("miss_unlocked", |b| b.to_async(&rt).iter(|| locks.lookup(black_box(stranger))));
    group.finish();
}

fn first_contact(c: &mut Criterion) {
    let rt = runtime();
    let (_dir, store) = open();
    let locks = Arc::new(Locks::new(store));
    let next = Arc::new(AtomicU64::new(BASE));
    let mut group = c.benchmark_group("first_contact_lock");
    group.sample_size(10).measurement_time(Duration::from_secs(3));
    group.throughput(Throughput::Elements(1));
    for concurrency in [1u64, 16, 64] {
        group.bench_with_input(BenchmarkId::new("concurrent", concurrency), &concurrency, |b, &conc| {
            b.iter_custom(|iters| {
                let started = Instant::now();
                rt.block_on(async {
                    let mut tasks = tokio::task::JoinSet::new();
                    for t in 0..conc {
                        let share = iters / conc + u64::from(t < iters % conc);
                        let (locks, next) = (Arc::clone(&locks), Arc::clone(&next));
                        tasks.spawn(async move {
                            for _ in 0..share {
                                let key = SenderKey::Phone(next.fetch_add(1, Ordering::Relaxed));
                                let lock = locks.lock(Sender { key, alias: None }, 1).await.unwrap();
                                assert!(lock.created);
                            }
                        });
                    }
                    while let Some(r) = tasks.join_next().await {
                        r.unwrap();
                    }
                });
                started.elapsed()
            })
        });
    }
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().warm_up_time(Duration::from_millis(500)).measurement_time(Duration::from_secs(1));
    targets = lookups, first_contact
}
criterion_main!(benches);
