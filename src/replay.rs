//! Replay defence (SPEC §10): a route with `replay_window` hands each
//! delivery to its upstream once. No HTTP in here: the request path asks
//! [`claim`] after the signature verified, and either forwards (holding a
//! [`Claim`]) or answers the repeat itself.
//!
//! ```text
//!   verified ──key()──▶ ReplayKey ──claim()──▶ Fresh(Claim) ─▶ forward ─▶ 2xx: commit()
//!                                          │                        └▶ else: drop = forget
//!                                          ├▶ Repeat::Duplicate   (recorded, inside the window)
//!                                          └▶ Repeat::InFlight    (another copy is being forwarded)
//! ```
//!
//! A key is claimed (marked in flight) and looked up in one step, so of any
//! number of identical requests at once exactly one is forwarded. It is
//! recorded until now + window only when the upstream answered 2xx; a claim
//! dropped without commit (upstream error, timeout, non-2xx, client gone)
//! forgets the mark so the next copy goes through.
//!
//! The store is a trait ([`ReplayStore`]) so a database-backed store (the
//! spool's SQLite, SPEC §8/§11) can replace [`MemoryStore`]: its lookup may
//! be a database read ([`Lookup::Pending`]), while the memory store answers
//! without a future or an allocation ([`Lookup::Ready`]).

use std::collections::hash_map::Entry;
use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Mutex, MutexGuard};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use fnv::FnvHashMap;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use sha2::{Digest, Sha256};

/// What a route remembers of one delivery: a 16-byte digest of the route's
/// name and what its scheme verified. 128 bits keep accidental collisions
/// out of reach (2^64 deliveries for an even chance) at a fixed size.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct ReplayKey([u8; 16]);

impl ReplayKey {
    /// The digest, for a store that keeps keys outside this process.
    pub fn as_bytes(&self) -> &[u8; 16] {
        &self.0
    }
}

impl std::fmt::Debug for ReplayKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // A digest of a MAC is not a secret, but there is nothing to gain
        // from printing it either.
        f.write_str("ReplayKey(..)")
    }
}

/// What the route's scheme verified, the material a delivery is known by:
/// the scheme's delivery id when it has one (`webhook-id`,
/// `X-GitHub-Delivery`, ...), else the verified MAC, with the signed
/// timestamp for timestamped schemes (SPEC §10).
#[derive(Debug, Clone, Copy)]
pub enum Verified<'a> {
    /// The full MAC (or signature) the request carried and the gateway
    /// recomputed or checked.
    Mac(&'a [u8]),
    /// A MAC over a signed timestamp, with that timestamp.
    MacAt(&'a [u8], i64),
    /// The delivery id header's value.
    Id(&'a [u8]),
}

/// The one derivation of replay keys: per route (the same delivery on two
/// routes is not a repeat), then a tag for the kind of material, so an id
/// can never equal a MAC's key.
pub fn key(route: &str, verified: Verified<'_>) -> ReplayKey {
    let mut h = Sha256::new();
    // Length-prefixed so ("ab", x) and ("a", "b" ++ x) differ.
    h.update((route.len() as u64).to_le_bytes());
    h.update(route.as_bytes());
    match verified {
        Verified::Mac(mac) => {
            h.update(b"mac");
            h.update(mac);
        }
        Verified::MacAt(mac, timestamp) => {
            h.update(b"mat");
            h.update(timestamp.to_le_bytes());
            h.update(mac);
        }
        Verified::Id(id) => {
            h.update(b"id\0");
            h.update(id);
        }
    }
    let digest = h.finalize();
    let mut out = [0u8; 16];
    out.copy_from_slice(&digest[..16]);
    ReplayKey(out)
}

/// The answer of a store's lookup.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Seen {
    /// Unknown (or expired): now marked in flight for the caller.
    Fresh,
    /// Recorded and inside its window.
    Duplicate,
    /// Another request with this key is being forwarded right now.
    InFlight,
}

/// A store's lookup: ready at once (memory) or a future (a database read).
pub enum Lookup<'a> {
    Ready(Seen),
    Pending(Pin<Box<dyn Future<Output = Seen> + Send + 'a>>),
}

impl Future for Lookup<'_> {
    type Output = Seen;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Seen> {
        match self.get_mut() {
            Lookup::Ready(seen) => Poll::Ready(*seen),
            Lookup::Pending(fut) => fut.as_mut().poll(cx),
        }
    }
}

/// Where recorded deliveries live. Implementations make [`begin`] atomic:
/// of concurrent callers with one key, at most one sees [`Seen::Fresh`]
/// until that caller's claim is committed or forgotten.
///
/// [`begin`]: ReplayStore::begin
pub trait ReplayStore: Send + Sync {
    /// Looks `key` up; when it is unknown or expired, marks it in flight.
    fn begin(&self, key: &ReplayKey) -> Lookup<'_>;
    /// Records a key this caller marked in flight, until now + `window`.
    /// Synchronous: a durable store queues the write and keeps the in-flight
    /// mark until it lands, so no repeat slips through meanwhile.
    fn commit(&self, key: &ReplayKey, window: Duration);
    /// Drops the in-flight mark of a claim that was not committed.
    fn forget(&self, key: &ReplayKey);
    /// Reports the store's size through `entries`
    /// (`hookgate_replay_entries`) from now on; a store that cannot count
    /// cheaply leaves it alone (the README says which do).
    fn track(&self, _entries: Gauge) {}
}

/// Why a request was not forwarded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Repeat {
    #[error("delivery already forwarded within the route's replay_window")]
    Duplicate,
    #[error("the same delivery is being forwarded right now")]
    InFlight,
}

/// A key marked in flight for one request. [`Claim::commit`] records it;
/// dropping it without commit forgets it, so the next copy is forwarded.
pub struct Claim<'a> {
    store: &'a dyn ReplayStore,
    key: ReplayKey,
    window: Duration,
    done: bool,
}

impl Claim<'_> {
    /// The upstream accepted the delivery (2xx): remember it for the window.
    pub fn commit(mut self) {
        self.done = true;
        self.store.commit(&self.key, self.window);
    }
}

impl Drop for Claim<'_> {
    fn drop(&mut self) {
        if !self.done {
            self.store.forget(&self.key);
        }
    }
}

/// Claims `key` for one delivery inside `window`, or says why not.
pub async fn claim(
    store: &dyn ReplayStore,
    key: ReplayKey,
    window: Duration,
) -> Result<Claim<'_>, Repeat> {
    match store.begin(&key).await {
        Seen::Fresh => Ok(Claim {
            store,
            key,
            window,
            done: false,
        }),
        Seen::Duplicate => Err(Repeat::Duplicate),
        Seen::InFlight => Err(Repeat::InFlight),
    }
}

// ---------------------------------------------------------------------------
// In-memory store.

/// Default of `limits.replay_max_entries`.
pub const DEFAULT_MAX_ENTRIES: usize = 1_000_000;

/// Map value of a key being forwarded (never a real expiry: that would be
/// 584 million years after start).
const IN_FLIGHT: u64 = u64::MAX;

/// Deliveries recorded in memory, process-wide, bounded by
/// `limits.replay_max_entries`: beyond it the oldest recorded entry is
/// evicted (`hookgate_replay_evictions_total`). Entries in flight are not
/// counted against the bound and never evicted (that would let a concurrent
/// copy through); there are at most as many as requests in flight.
///
/// Per entry: the map's 16-byte key + 8-byte expiry (plus hashbrown's
/// control byte and free slots) and a 24-byte (key, expiry) in the
/// insertion-order queue.
///
/// Expiry is lazy: a lookup treats an expired entry as absent, and every
/// lookup and commit first drops expired entries from the front of the
/// queue (amortised O(1)). With one window for all routes the queue is in
/// expiry order and memory follows the traffic of the last window; an entry
/// with a shorter window queued behind longer ones is dropped when reached,
/// looked up, or evicted. Nothing survives a restart (the durable store
/// comes with the spool).
pub struct MemoryStore {
    inner: Mutex<Inner>,
    /// Milliseconds are counted from here.
    epoch: Instant,
    entries: Gauge,
    evictions: Counter,
}

struct Inner {
    /// Key → expiry in ms since `epoch`, or [`IN_FLIGHT`].
    map: FnvHashMap<ReplayKey, u64>,
    /// Recorded entries, oldest first, with the expiry they were recorded
    /// with. An item whose expiry no longer matches the map's value is
    /// stale (its entry expired and was claimed again) and is skipped.
    order: VecDeque<(ReplayKey, u64)>,
    /// Entries in `map` that are recorded (not in flight).
    recorded: usize,
    max: usize,
}

impl std::fmt::Debug for MemoryStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryStore")
            .field("entries", &self.entries.get())
            .finish_non_exhaustive()
    }
}

/// Expired entries dropped from the queue's front per lookup or commit:
/// enough to keep up (each commit adds one), small enough that no request
/// pays for a backlog at once.
const SWEEP_PER_CALL: usize = 8;

impl MemoryStore {
    /// An empty store holding at most `max_entries` recorded deliveries,
    /// reporting its size and evictions through the given metric handles.
    pub fn new(max_entries: usize, entries: Gauge, evictions: Counter) -> MemoryStore {
        entries.set(0);
        MemoryStore {
            inner: Mutex::new(Inner {
                map: FnvHashMap::default(),
                order: VecDeque::new(),
                recorded: 0,
                max: max_entries.max(1),
            }),
            epoch: Instant::now(),
            entries,
            evictions,
        }
    }

    /// Applies a reloaded `limits.replay_max_entries`; a smaller bound
    /// evicts the oldest entries now.
    pub fn set_max_entries(&self, max_entries: usize) {
        let mut inner = self.lock();
        inner.max = max_entries.max(1);
        let evicted = inner.evict_over_bound();
        self.publish(&inner, evicted);
    }

    /// Entries held (recorded, in flight, and expired ones not yet dropped).
    pub fn len(&self) -> usize {
        self.lock().map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(IN_FLIGHT - 1)
    }

    /// The map stays consistent under every operation, so a panic elsewhere
    /// while the lock was held leaves nothing half-done: keep serving.
    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn publish(&self, inner: &Inner, evicted: u64) {
        self.entries
            .set(i64::try_from(inner.map.len()).unwrap_or(i64::MAX));
        if evicted > 0 {
            self.evictions.inc_by(evicted);
        }
    }
}

impl Inner {
    /// Drops up to `limit` expired entries from the front of the queue.
    fn sweep(&mut self, now: u64, limit: usize) {
        for _ in 0..limit {
            match self.order.front() {
                Some(&(_, expires)) if expires <= now => {}
                _ => return,
            }
            self.pop_front();
        }
    }

    /// Removes the oldest queue item; true if it removed a live entry.
    fn pop_front(&mut self) -> bool {
        let Some((key, expires)) = self.order.pop_front() else {
            return false;
        };
        if self.map.get(&key) == Some(&expires) {
            self.map.remove(&key);
            self.recorded -= 1;
            return true;
        }
        false
    }

    /// Evicts the oldest recorded entries while over the bound.
    fn evict_over_bound(&mut self) -> u64 {
        let mut evicted = 0;
        while self.recorded > self.max && !self.order.is_empty() {
            if self.pop_front() {
                evicted += 1;
            }
        }
        // Stale items (entries that expired and were claimed again) only
        // leave the queue when reached; keep them from piling up.
        if self.order.len() > 2 * self.max + 1024 {
            let map = &self.map;
            self.order.retain(|(k, e)| map.get(k) == Some(e));
        }
        evicted
    }
}

impl ReplayStore for MemoryStore {
    fn begin(&self, key: &ReplayKey) -> Lookup<'_> {
        let now = self.now_ms();
        let mut guard = self.lock();
        let inner = &mut *guard;
        inner.sweep(now, SWEEP_PER_CALL);
        let seen = match inner.map.entry(*key) {
            Entry::Vacant(e) => {
                e.insert(IN_FLIGHT);
                Seen::Fresh
            }
            Entry::Occupied(e) if *e.get() == IN_FLIGHT => Seen::InFlight,
            Entry::Occupied(e) if *e.get() > now => Seen::Duplicate,
            Entry::Occupied(mut e) => {
                // Expired but not yet swept: claim it again. Its queue item
                // goes stale (the expiry no longer matches).
                e.insert(IN_FLIGHT);
                inner.recorded -= 1;
                Seen::Fresh
            }
        };
        self.publish(inner, 0);
        Lookup::Ready(seen)
    }

    fn commit(&self, key: &ReplayKey, window: Duration) {
        let now = self.now_ms();
        // At least 1 ms, so a re-recorded key never reuses the expiry of its
        // stale queue item.
        let window_ms = u64::try_from(window.as_millis()).unwrap_or(u64::MAX / 2);
        let expires = now.saturating_add(window_ms.max(1)).min(IN_FLIGHT - 1);
        let mut inner = self.lock();
        match inner.map.get_mut(key) {
            Some(v) if *v == IN_FLIGHT => *v = expires,
            // Only the claim's owner commits, and an in-flight mark is never
            // swept or evicted; nothing to record otherwise.
            _ => return,
        }
        inner.recorded += 1;
        inner.order.push_back((*key, expires));
        inner.sweep(now, SWEEP_PER_CALL);
        let evicted = inner.evict_over_bound();
        self.publish(&inner, evicted);
    }

    fn forget(&self, key: &ReplayKey) {
        let mut inner = self.lock();
        if inner.map.get(key) == Some(&IN_FLIGHT) {
            inner.map.remove(key);
        }
        self.publish(&inner, 0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store(max: usize) -> (MemoryStore, Gauge, Counter) {
        let (g, c) = (Gauge::default(), Counter::default());
        (MemoryStore::new(max, g.clone(), c.clone()), g, c)
    }

    fn k(n: u8) -> ReplayKey {
        key("r", Verified::Mac(&[n; 32]))
    }

    fn seen(s: &MemoryStore, key: &ReplayKey) -> Seen {
        match s.begin(key) {
            Lookup::Ready(seen) => seen,
            Lookup::Pending(_) => unreachable!("the memory store never waits"),
        }
    }

    const HOUR: Duration = Duration::from_secs(3600);

    #[test]
    fn keys_are_per_route_and_per_material() {
        let mac = [7u8; 32];
        assert_eq!(key("a", Verified::Mac(&mac)), key("a", Verified::Mac(&mac)));
        assert_ne!(key("a", Verified::Mac(&mac)), key("b", Verified::Mac(&mac)));
        assert_ne!(
            key("a", Verified::Mac(&mac)),
            key("a", Verified::Mac(&[8u8; 32]))
        );
        // The length prefix keeps route names from running into the material.
        assert_ne!(
            key("ab", Verified::Mac(&mac)),
            key("a", Verified::Mac(&mac))
        );
        assert_eq!(format!("{:?}", k(1)), "ReplayKey(..)");
        // An id, a MAC and a timestamped MAC never share a key.
        assert_ne!(key("a", Verified::Id(&mac)), key("a", Verified::Mac(&mac)));
        assert_ne!(
            key("a", Verified::MacAt(&mac, 1)),
            key("a", Verified::Mac(&mac))
        );
        assert_ne!(
            key("a", Verified::MacAt(&mac, 1)),
            key("a", Verified::MacAt(&mac, 2))
        );
    }

    #[tokio::test]
    async fn fresh_then_in_flight_then_duplicate() {
        let (s, gauge, _) = store(10);
        let c = claim(&s, k(1), HOUR).await.unwrap();
        assert_eq!(claim(&s, k(1), HOUR).await.err(), Some(Repeat::InFlight));
        c.commit();
        assert_eq!(claim(&s, k(1), HOUR).await.err(), Some(Repeat::Duplicate));
        assert_eq!(gauge.get(), 1);
    }

    #[tokio::test]
    async fn dropped_claim_is_forgotten() {
        let (s, gauge, _) = store(10);
        drop(claim(&s, k(1), HOUR).await.unwrap());
        assert_eq!(gauge.get(), 0);
        claim(&s, k(1), HOUR).await.unwrap().commit();
        assert_eq!(gauge.get(), 1);
    }

    #[test]
    fn expired_entry_is_fresh_again_and_swept() {
        let (s, gauge, _) = store(10);
        assert_eq!(seen(&s, &k(1)), Seen::Fresh);
        s.commit(&k(1), Duration::from_millis(1));
        std::thread::sleep(Duration::from_millis(5));
        // Expired: claimed again (its old queue item is now stale).
        assert_eq!(seen(&s, &k(1)), Seen::Fresh);
        s.commit(&k(1), Duration::from_millis(1));
        std::thread::sleep(Duration::from_millis(5));
        // Another key's lookup sweeps both queue items away.
        assert_eq!(seen(&s, &k(2)), Seen::Fresh);
        s.forget(&k(2));
        assert_eq!(gauge.get(), 0);
        assert!(s.is_empty());
        assert!(s.lock().order.is_empty());
    }

    #[test]
    fn oldest_recorded_is_evicted_and_in_flight_never() {
        let (s, gauge, evictions) = store(2);
        assert_eq!(seen(&s, &k(9)), Seen::Fresh); // stays in flight throughout
        for n in 1..=4 {
            assert_eq!(seen(&s, &k(n)), Seen::Fresh);
            s.commit(&k(n), HOUR);
        }
        assert_eq!(evictions.get(), 2);
        assert_eq!(gauge.get(), 3); // 2 recorded + 1 in flight
        assert_eq!(seen(&s, &k(9)), Seen::InFlight);
        assert_eq!(seen(&s, &k(4)), Seen::Duplicate);
        assert_eq!(seen(&s, &k(3)), Seen::Duplicate);
        assert_eq!(seen(&s, &k(1)), Seen::Fresh); // evicted: new again
    }

    #[test]
    fn smaller_bound_on_reload_evicts_now() {
        let (s, gauge, evictions) = store(10);
        for n in 1..=5 {
            assert_eq!(seen(&s, &k(n)), Seen::Fresh);
            s.commit(&k(n), HOUR);
        }
        s.set_max_entries(2);
        assert_eq!((gauge.get(), evictions.get()), (2, 3));
        assert_eq!(seen(&s, &k(5)), Seen::Duplicate);
        assert_eq!(seen(&s, &k(3)), Seen::Fresh);
    }

    /// A store whose lookup is a future (as a database read would be) works
    /// through the same claim path.
    #[tokio::test]
    async fn a_pending_lookup_is_awaited() {
        struct Slow(MemoryStore);
        impl ReplayStore for Slow {
            fn begin(&self, key: &ReplayKey) -> Lookup<'_> {
                let key = *key;
                Lookup::Pending(Box::pin(async move {
                    tokio::task::yield_now().await;
                    self.0.begin(&key).await
                }))
            }
            fn commit(&self, key: &ReplayKey, window: Duration) {
                self.0.commit(key, window)
            }
            fn forget(&self, key: &ReplayKey) {
                self.0.forget(key)
            }
        }
        let (inner, _, _) = store(10);
        let s = Slow(inner);
        claim(&s, k(1), HOUR).await.unwrap().commit();
        assert_eq!(claim(&s, k(1), HOUR).await.err(), Some(Repeat::Duplicate));
    }
}
