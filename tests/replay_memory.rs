//! Memory per entry of the in-memory replay store (SPEC §10), measured with
//! a counting global allocator: the heap bytes held after recording 1M
//! deliveries (the default `limits.replay_max_entries`), divided by 1M; then
//! half a million more, which must evict instead of growing.
//!
//! `cargo test --release --test replay_memory -- --nocapture` prints the
//! figures.

use std::time::Duration;

use hookgate::replay::{self, Lookup, MemoryStore, ReplayStore, Seen, Verified};
use prometheus_client::metrics::{counter::Counter, gauge::Gauge};
use stats_alloc::{Region, StatsAlloc, INSTRUMENTED_SYSTEM};

#[global_allocator]
static GLOBAL: &StatsAlloc<std::alloc::System> = &INSTRUMENTED_SYSTEM;

/// Bytes held per entry at 1M entries. The payload is 48 bytes (the map's
/// 16-byte key + 8-byte expiry, the queue's 24-byte copy); the rest is the
/// map's control bytes and free buckets (hashbrown keeps at most 7/8 of its
/// power-of-two buckets full: 1M entries sit in 2^21) and the queue's
/// power-of-two capacity.
const LIMIT_PER_ENTRY: usize = 96;

fn record(store: &MemoryStore, n: u64) {
    let mut mac = [0u8; 32];
    mac[..8].copy_from_slice(&n.to_le_bytes());
    let key = replay::key("adsumo-prod", Verified::Mac(&mac));
    match store.begin(&key) {
        Lookup::Ready(Seen::Fresh) => {}
        _ => panic!("delivery {n} not fresh"),
    }
    store.commit(&key, Duration::from_secs(86_400));
}

fn held(region: &Region<'_, std::alloc::System>) -> usize {
    // stats_alloc counts a realloc's growth in bytes_allocated (and its
    // shrinking in bytes_deallocated).
    let s = region.change();
    s.bytes_allocated - s.bytes_deallocated
}

#[test]
fn a_million_entries_fit_the_budget_and_more_evict() {
    const MAX: usize = 1_000_000;
    let (entries, evictions) = (Gauge::default(), Counter::default());
    let region = Region::new(GLOBAL);
    let store = MemoryStore::new(MAX, entries.clone(), evictions.clone());
    for n in 0..MAX as u64 {
        record(&store, n);
    }
    let at_max = held(&region);
    let full = entries.get();
    for n in MAX as u64..(MAX + MAX / 2) as u64 {
        record(&store, n);
    }
    // Both readings before any output: a captured println! allocates too.
    let after = held(&region);
    let per_entry = at_max / MAX;
    println!(
        "replay store: {MAX} entries hold {at_max} bytes = {per_entry} bytes per entry ({:.1} MiB); \
         after {} more: {after} bytes",
        at_max as f64 / (1024.0 * 1024.0),
        MAX / 2
    );
    assert_eq!(full, MAX as i64);
    assert!(
        per_entry <= LIMIT_PER_ENTRY,
        "{per_entry} bytes per entry, limit {LIMIT_PER_ENTRY}"
    );
    assert_eq!(entries.get(), MAX as i64);
    assert_eq!(evictions.get(), (MAX / 2) as u64);
    assert!(after <= at_max, "grew from {at_max} to {after} bytes");
}
