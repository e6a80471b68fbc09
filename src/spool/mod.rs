//! The spool (SPEC §8): requests the upstream could not take (or that a
//! `delivery = "always"` route hands over at once), kept durably and
//! redelivered until the app answers 2xx.
//!
//! - this file: the backend-neutral [`Store`] trait and its types, the
//!   per-route [`Circuit`], and [`Spool`], what the request path and the
//!   worker share;
//! - the embedded backend, [`sqlite`] (one writer thread, group commit);
//! - redelivery, [`worker`] (backoff, circuit probes, drain, dead letters)
//!   and the spool gauges; it sees only the [`Store`] trait, so a second
//!   backend (PostgreSQL, SPEC §11) plugs in without touching it;
//! - the shared backend, [`postgres`] (SPEC §11), with [`postgres_tls`],
//!   [`postgres_replay`] and [`postgres_circuit`] (each route's circuit in
//!   the database, kept in line locally by [`circuit_sync`]);
//! - the operator commands, [`cli`] (`hookgate spool stats|list|show|retry|drop`).
//!
//! The one rule: the request path answers 202 only after [`Store::put`]
//! returned `Ok`, which a backend may return only once the record is durable
//! (SQLite: the commit's fsync returned).

pub mod circuit_sync;
pub mod cli;
pub mod postgres;
pub mod postgres_circuit;
pub mod postgres_replay;
pub mod postgres_tls;
pub mod sqlite;
pub mod sqlite_replay;
pub mod worker;

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use http::HeaderName;
use tokio::sync::{mpsc, Notify};
use tokio::time::Instant;

/// Carries the delivery id on every attempt of a spooled route.
pub static X_HOOKGATE_DELIVERY: HeaderName = HeaderName::from_static("x-hookgate-delivery");
/// Carries the attempt number (1 for the first try).
pub static X_HOOKGATE_ATTEMPT: HeaderName = HeaderName::from_static("x-hookgate-attempt");

/// A future returned by a [`Store`]: boxed so the trait stays object safe
/// and an async backend (PostgreSQL) can implement it directly.
pub type StoreFuture<'a, T> = Pin<Box<dyn Future<Output = Result<T, StoreError>> + Send + 'a>>;

/// Why a store operation failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    /// Writing would pass `spool.max_bytes`: nothing was written.
    #[error("spool is full (max_bytes reached)")]
    Full,
    /// The storage failed (disk full, I/O error, corrupt file, closed).
    #[error("spool storage error: {0}")]
    Storage(String),
    /// The database was written by another version of hookgate.
    #[error("{0}")]
    Incompatible(String),
    #[error("no record with id {0}")]
    NotFound(String),
}

/// `pending` records are due for delivery; `dead` ones wait for an operator.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RecordState {
    Pending,
    Dead,
}

impl RecordState {
    pub fn as_str(self) -> &'static str {
        match self {
            RecordState::Pending => "pending",
            RecordState::Dead => "dead",
        }
    }

    pub fn parse(text: &str) -> Option<RecordState> {
        match text {
            "pending" => Some(RecordState::Pending),
            "dead" => Some(RecordState::Dead),
            _ => None,
        }
    }
}

/// One request as the upstream would have received it: method, target
/// (path and query as forwarded), header fields as forwarded (wire form,
/// `X-Hookgate-Delivery`/`-Attempt` included), body bytes.
#[derive(Debug, Clone)]
pub struct NewRecord {
    pub id: String,
    pub route: String,
    pub received_ms: i64,
    pub method: String,
    pub target: String,
    pub headers: Vec<u8>,
    pub body: Vec<u8>,
    /// Attempts already made (1 when the synchronous try failed).
    pub attempts: u32,
    pub next_attempt_ms: i64,
    pub last_status: Option<u16>,
    pub last_error: Option<String>,
}

impl NewRecord {
    /// What the record counts against `max_bytes`.
    pub fn bytes(&self) -> u64 {
        (self.headers.len() + self.body.len()) as u64
    }
}

/// A stored record.
#[derive(Debug, Clone)]
pub struct Record {
    pub id: String,
    pub route: String,
    pub received_ms: i64,
    pub method: String,
    pub target: String,
    pub headers: Vec<u8>,
    pub body: Vec<u8>,
    pub state: RecordState,
    pub attempts: u32,
    pub next_attempt_ms: i64,
    pub last_status: Option<u16>,
    pub last_error: Option<String>,
}

/// What one failed attempt left behind, kept on the record.
#[derive(Debug, Clone, Default)]
pub struct Note {
    pub status: Option<u16>,
    pub error: Option<String>,
}

/// Counts per route and state, as the gauges and `spool stats` show them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RouteStats {
    pub route: String,
    pub pending: u64,
    pub dead: u64,
    pub bytes: u64,
    pub oldest_pending_ms: Option<i64>,
}

#[derive(Debug, Clone, Default)]
pub struct Stats {
    pub routes: Vec<RouteStats>,
    pub bytes: u64,
}

/// Which records an operator command applies to.
#[derive(Debug, Clone)]
pub enum Selection {
    Ids(Vec<String>),
    Route {
        route: String,
        state: Option<RecordState>,
    },
}

/// Durable storage of spooled requests. Every method is async-friendly
/// (boxed futures); an `Ok` from [`Store::put`] means durable.
pub trait Store: Send + Sync + 'static {
    /// Stores a new record durably, or fails with [`StoreError::Full`] when
    /// it would pass the byte budget.
    fn put(&self, record: NewRecord) -> StoreFuture<'_, ()>;
    /// Up to `limit` pending records of `route`, oldest first, that are due
    /// at `now_ms` (all pending ones with `ignore_schedule`: a circuit probe
    /// takes the oldest whatever its own schedule).
    fn due(
        &self,
        route: &str,
        now_ms: i64,
        limit: usize,
        ignore_schedule: bool,
    ) -> StoreFuture<'_, Vec<Record>>;
    /// Delivered: the record is removed.
    fn complete(&self, id: &str) -> StoreFuture<'_, ()>;
    /// A failed attempt: count it and set the next one.
    fn reschedule(
        &self,
        id: &str,
        attempts: u32,
        next_attempt_ms: i64,
        note: Note,
    ) -> StoreFuture<'_, ()>;
    /// A failed attempt that ends the record's retries.
    fn dead(&self, id: &str, attempts: u32, note: Note) -> StoreFuture<'_, ()>;
    /// Marks the pending records of `route` received before `before_ms`
    /// dead (`max_age` passed); returns how many.
    fn expire(&self, route: &str, before_ms: i64) -> StoreFuture<'_, u64>;
    /// Makes every pending record of `route` due now (the route is back:
    /// drain the backlog).
    fn release(&self, route: &str, now_ms: i64) -> StoreFuture<'_, u64>;
    fn stats(&self) -> StoreFuture<'_, Stats>;
    /// Records (headers and bodies included) matching `selection`, oldest first.
    fn list(&self, selection: Selection, limit: usize) -> StoreFuture<'_, Vec<Record>>;
    /// Back to pending, attempts reset, due now. Returns how many.
    fn retry(&self, selection: Selection, now_ms: i64) -> StoreFuture<'_, u64>;
    /// Removed for good. Returns how many.
    fn drop_records(&self, selection: Selection) -> StoreFuture<'_, u64>;
    /// Applies a new `max_bytes` (reload).
    fn set_capacity(&self, bytes: u64);
    /// Whether [`Store::due`] leases what it returns (several instances
    /// share the store): records in flight are then never returned again
    /// until completed or the lease passed, so the worker asks for exactly
    /// as many as it will send.
    fn leases(&self) -> bool {
        false
    }
    /// For a store behind a server (PostgreSQL): a cheap round trip whose
    /// `Ok` means writes can work again, so `/readyz` recovers without
    /// waiting for a request to succeed. `None`: health follows writes only.
    fn health_check(&self) -> Option<StoreFuture<'_, ()>> {
        None
    }
    /// A replay store (SPEC §10) in this store's database, shared by every
    /// instance that uses it; `None`: the replay defence stays in memory.
    fn replay_store(&self) -> Option<Arc<dyn crate::replay::ReplayStore>> {
        None
    }
    /// At a graceful stop, after the worker stopped: gives up the leases
    /// (and a circuit probe) this instance still holds, so another
    /// instance takes those records at once instead of after `lease`.
    /// Returns how many records.
    fn return_leases(&self) -> StoreFuture<'_, u64> {
        Box::pin(async { Ok(0) })
    }
    /// The circuits, when several instances share them through this store
    /// (one probe per route and step across instances); `None`: each
    /// instance keeps its own (SQLite, one host).
    fn shared_circuits(&self) -> Option<&dyn SharedCircuits> {
        None
    }
    /// Finishes queued writes and releases the storage (may block).
    fn close(&self) {}
    /// Group-commit counters so far: (commits, writes, largest batch).
    fn group_commits(&self) -> Option<(u64, u64, u64)> {
        None
    }
}

/// Opens the store `cfg` names (`create`: SQLite creates a missing file;
/// PostgreSQL always creates or migrates the schema). Errors are one line
/// naming the file or the database (password masked).
pub async fn open(cfg: &crate::config::Spool, create: bool) -> Result<Arc<dyn Store>, String> {
    match &cfg.backend {
        crate::config::Backend::Sqlite => {
            let store = sqlite::SqliteStore::open(&cfg.path, cfg.max_bytes, create)
                .map_err(|e| e.to_string())?;
            Ok(Arc::new(store))
        }
        crate::config::Backend::Postgres { url, lease } => {
            let store = postgres::PgStore::open(url, cfg.max_bytes, *lease).await?;
            Ok(Arc::new(store))
        }
    }
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// A new delivery id: a UUIDv7 (time-ordered, 74 random bits), so ids sort
/// roughly by arrival and never repeat across restarts.
pub fn new_id() -> String {
    let ms = u64::try_from(now_ms()).unwrap_or(0) & 0xFFFF_FFFF_FFFF;
    let rand_a = fastrand::u16(..) & 0x0FFF;
    let rand_b = fastrand::u64(..) & 0x3FFF_FFFF_FFFF_FFFF;
    format!(
        "{:08x}-{:04x}-7{:03x}-{:04x}-{:012x}",
        ms >> 16,
        ms & 0xFFFF,
        rand_a,
        0x8000 | (rand_b >> 48),
        rand_b & 0xFFFF_FFFF_FFFF
    )
}

/// `d` ± 20 %, uniformly.
pub fn jitter(d: Duration) -> Duration {
    d.mul_f64(0.8 + 0.4 * fastrand::f64())
}

/// Header fields in wire form (`name: value\r\n`), the form they are stored
/// and shown in. The gateway stores the block `headers::write_upstream_head`
/// wrote for the upstream; this map encoder is the tests' reference.
#[cfg(test)]
pub fn encode_headers(headers: &http::HeaderMap) -> Vec<u8> {
    let mut out = Vec::with_capacity(headers.len() * 32);
    for (name, value) in headers {
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out
}

/// Reads a stored field block (`name: value\r\n` lines); a field that does not parse is an
/// error (the record is corrupt).
pub fn decode_headers(bytes: &[u8]) -> Result<http::HeaderMap, String> {
    let mut map = http::HeaderMap::new();
    for line in bytes.split(|b| *b == b'\n') {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.is_empty() {
            continue;
        }
        let colon = line
            .iter()
            .position(|b| *b == b':')
            .ok_or("stored header field without ':'")?;
        let name = HeaderName::from_bytes(&line[..colon]).map_err(|e| e.to_string())?;
        let value = http::HeaderValue::from_bytes(line[colon + 1..].trim_ascii_start())
            .map_err(|e| e.to_string())?;
        map.append(name, value);
    }
    Ok(map)
}

/// Whether an upstream answer counts as a failure the way a sender counts
/// it (SPEC §8): 5xx, 408, 429.
pub fn failed_status(status: http::StatusCode) -> bool {
    status.is_server_error()
        || status == http::StatusCode::REQUEST_TIMEOUT
        || status == http::StatusCode::TOO_MANY_REQUESTS
}

/// One route's circuit: after a failed attempt, new `on_failure` requests
/// skip the synchronous try, and the worker sends one probe per backoff
/// step until an attempt succeeds.
///
/// On a store shared by several instances ([`Store::shared_circuits`]) the
/// circuit is also the route's row in the database: every change made here
/// is queued for [`circuit_sync::run`], which writes it and, every second,
/// brings this copy in line with what the other instances did; the probe
/// itself is taken with [`SharedCircuits::take_probe`], so one instance
/// probes per step. The request path reads only this copy.
#[derive(Debug, Default)]
pub struct Circuit {
    open: AtomicBool,
    probe: Mutex<Probe>,
    /// Where changes go when the circuit is shared (route name, queue).
    shared: Option<(String, mpsc::UnboundedSender<CircuitWrite>)>,
    /// Bumped after every local change (after its write was queued), so
    /// the sync never overwrites a change it has not written yet.
    version: AtomicU64,
}

#[derive(Debug, Default)]
struct Probe {
    /// Index into `spool.retry` of the current step.
    step: usize,
    /// When the next probe may go.
    next: Option<Instant>,
}

impl Circuit {
    fn shared(route: &str, writes: mpsc::UnboundedSender<CircuitWrite>) -> Circuit {
        Circuit {
            shared: Some((route.to_string(), writes)),
            ..Circuit::default()
        }
    }

    pub fn is_open(&self) -> bool {
        self.open.load(Ordering::Acquire)
    }

    /// Queues `write` for the shared row (no-op when not shared).
    fn share(&self, write: impl FnOnce(String) -> CircuitWrite) {
        if let Some((route, writes)) = &self.shared {
            let _ = writes.send(write(route.clone()));
        }
        self.version.fetch_add(1, Ordering::AcqRel);
    }

    /// Records a failed attempt. Opening schedules the first probe after
    /// the schedule's first step; a failed probe moves to the next step.
    /// `at_least` is a `Retry-After` already capped by the caller.
    pub fn failed(&self, retry: &[Duration], probe: bool, at_least: Option<Duration>) {
        let mut p = self.probe.lock().unwrap_or_else(|e| e.into_inner());
        let was_open = self.open.swap(true, Ordering::AcqRel);
        if was_open && !probe {
            return;
        }
        p.step = if was_open {
            (p.step + 1).min(retry.len().saturating_sub(1))
        } else {
            0
        };
        let step = retry.get(p.step).copied().unwrap_or(Duration::from_secs(1));
        let delay = jitter(step).max(at_least.unwrap_or(Duration::ZERO));
        p.next = Some(Instant::now() + delay);
        let step = p.step;
        self.share(|route| {
            if was_open {
                CircuitWrite::ProbeFailed { route, step, delay }
            } else {
                CircuitWrite::Open { route, delay }
            }
        });
    }

    /// Records a successful attempt; true when this closed the circuit.
    pub fn succeeded(&self) -> bool {
        if !self.open.load(Ordering::Acquire) {
            return false;
        }
        let mut p = self.probe.lock().unwrap_or_else(|e| e.into_inner());
        p.step = 0;
        p.next = None;
        let closed = self.open.swap(false, Ordering::AcqRel);
        if closed {
            self.share(|route| CircuitWrite::Close { route });
        }
        closed
    }

    /// A probe that neither failed nor succeeded (e.g. a 400, one record's
    /// problem) or found nothing to send: another instance may probe.
    pub fn probe_released(&self) {
        if self.shared.is_some() {
            self.share(|route| CircuitWrite::ReleaseProbe { route });
        }
    }

    /// When the next probe may go, while open.
    pub fn next_probe(&self) -> Option<Instant> {
        if !self.is_open() {
            return None;
        }
        self.probe.lock().unwrap_or_else(|e| e.into_inner()).next
    }

    /// The step the shared row is at, read when this instance took the
    /// probe: a failure moves on from there.
    pub fn set_step(&self, step: usize) {
        self.probe.lock().unwrap_or_else(|e| e.into_inner()).step = step;
    }

    fn version(&self) -> u64 {
        self.version.load(Ordering::Acquire)
    }

    /// Takes the shared row's state (`None`: closed), unless this copy
    /// changed since `seen` (that change is written first).
    fn sync(&self, shared: Option<&SharedCircuit>, seen: u64) {
        let mut p = self.probe.lock().unwrap_or_else(|e| e.into_inner());
        if self.version() != seen {
            return;
        }
        match shared {
            Some(s) => {
                p.step = s.step;
                // A little after the database's time, so the worker's
                // take_probe does not arrive just before it and wait a tick.
                p.next = Some(Instant::now() + s.next_probe_in + Duration::from_millis(50));
                self.open.store(true, Ordering::Release);
            }
            None => {
                p.step = 0;
                p.next = None;
                self.open.store(false, Ordering::Release);
            }
        }
    }
}

/// A route's circuit as another instance may have left it in the shared
/// store: open, at `step`, the next probe in `next_probe_in`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SharedCircuit {
    pub route: String,
    pub step: usize,
    pub next_probe_in: Duration,
}

/// A change to a route's shared circuit, written in the order made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CircuitWrite {
    /// Open it, unless another instance already did (its schedule stays).
    Open { route: String, delay: Duration },
    /// The probe this instance held failed: `step`, next probe after `delay`.
    ProbeFailed {
        route: String,
        step: usize,
        delay: Duration,
    },
    /// An attempt succeeded: closed for every instance.
    Close { route: String },
    /// Give up the probe this instance held.
    ReleaseProbe { route: String },
}

/// Circuits kept in a store that several instances share (PostgreSQL).
pub trait SharedCircuits: Send + Sync {
    /// Applies one change.
    fn write(&self, change: CircuitWrite) -> StoreFuture<'_, ()>;
    /// The routes whose circuit is open.
    fn open_circuits(&self) -> StoreFuture<'_, Vec<SharedCircuit>>;
    /// Takes the route's probe for this instance if it is due and no
    /// other instance holds it (a conditional update: one winner per
    /// step); the step it is at, or `None`.
    fn take_probe(&self, route: &str) -> StoreFuture<'_, Option<usize>>;
}

/// Whether the spool can be written: `/readyz` answers 503 while not.
#[derive(Debug, Default)]
pub struct Health {
    failing: AtomicBool,
}

impl Health {
    pub fn set_failing(&self, failing: bool) {
        self.failing.store(failing, Ordering::Release);
    }
    pub fn is_failing(&self) -> bool {
        self.failing.load(Ordering::Acquire)
    }
}

/// What the request path and the worker share: the store, each route's
/// circuit (by name, so it survives reloads), the worker's wake-up and the
/// write health.
pub struct Spool {
    pub store: Arc<dyn Store>,
    circuits: Mutex<HashMap<String, Arc<Circuit>>>,
    /// Shared circuits' changes, for [`circuit_sync::run`] (which takes the
    /// receiver); `None` when each instance keeps its own.
    circuit_writes: Option<mpsc::UnboundedSender<CircuitWrite>>,
    circuit_queue: Mutex<Option<mpsc::UnboundedReceiver<CircuitWrite>>>,
    /// Wakes the worker (a record became due now).
    pub wake: Notify,
    pub health: Arc<Health>,
}

impl std::fmt::Debug for Spool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Spool").finish_non_exhaustive()
    }
}

impl Spool {
    pub fn new(store: Arc<dyn Store>) -> Spool {
        let (circuit_writes, circuit_queue) = match store.shared_circuits() {
            Some(_) => {
                let (tx, rx) = mpsc::unbounded_channel();
                (Some(tx), Some(rx))
            }
            None => (None, None),
        };
        Spool {
            store,
            circuits: Mutex::new(HashMap::new()),
            circuit_writes,
            circuit_queue: Mutex::new(circuit_queue),
            wake: Notify::new(),
            health: Arc::new(Health::default()),
        }
    }

    /// The circuit of the route called `name`, created closed.
    pub fn circuit(&self, name: &str) -> Arc<Circuit> {
        let mut c = self.circuits.lock().unwrap_or_else(|e| e.into_inner());
        c.entry(name.to_string())
            .or_insert_with(|| match &self.circuit_writes {
                Some(writes) => Arc::new(Circuit::shared(name, writes.clone())),
                None => Arc::default(),
            })
            .clone()
    }

    /// Every circuit made so far, with its version (see [`Circuit::sync`]).
    fn circuits_now(&self) -> Vec<(String, Arc<Circuit>, u64)> {
        let c = self.circuits.lock().unwrap_or_else(|e| e.into_inner());
        c.iter()
            .map(|(name, circuit)| (name.clone(), circuit.clone(), circuit.version()))
            .collect()
    }

    /// A route's circuit closed after a synchronous success: make its
    /// backlog due now and wake the worker (in the background: the request
    /// that closed it does not wait).
    pub fn route_recovered(self: &Arc<Self>, route: &str) {
        let spool = self.clone();
        let route = route.to_string();
        tokio::spawn(async move {
            if let Err(e) = spool.store.release(&route, now_ms()).await {
                tracing::warn!(route = %route, error = %e, "spool: cannot release the backlog");
            }
            spool.wake.notify_one();
        });
    }

    /// Stores a record; the answer is the caller's to give only on `Ok`.
    /// A storage failure marks the spool unhealthy (and is logged at error
    /// level); the next successful write clears that.
    pub async fn put(&self, record: NewRecord) -> Result<(), StoreError> {
        let route = record.route.clone();
        match self.store.put(record).await {
            Ok(()) => {
                self.health.set_failing(false);
                Ok(())
            }
            Err(StoreError::Full) => Err(StoreError::Full),
            Err(e) => {
                self.health.set_failing(true);
                tracing::error!(route = %route, error = %e, "spool write failed; answering 503");
                Err(e)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_uuid_v7() {
        let a = new_id();
        let b = new_id();
        assert_ne!(a, b);
        assert_eq!(a.len(), 36);
        assert_eq!(&a[14..15], "7");
        assert!(matches!(&a[19..20], "8" | "9" | "a" | "b"), "{a}");
    }

    #[test]
    fn jitter_stays_within_20_percent() {
        for _ in 0..1000 {
            let d = jitter(Duration::from_secs(10));
            assert!(
                d >= Duration::from_secs(8) && d <= Duration::from_secs(12),
                "{d:?}"
            );
        }
    }

    #[test]
    fn headers_round_trip_in_order() {
        let mut h = http::HeaderMap::new();
        h.append("host", "a.test".parse().unwrap());
        h.append("x-b", "1".parse().unwrap());
        h.append("x-a", "2: three".parse().unwrap());
        h.append("x-b", "4".parse().unwrap());
        let bytes = encode_headers(&h);
        assert_eq!(
            bytes,
            b"host: a.test\r\nx-b: 1\r\nx-b: 4\r\nx-a: 2: three\r\n".to_vec()
        );
        let back = decode_headers(&bytes).unwrap();
        assert_eq!(encode_headers(&back), bytes);
    }

    #[test]
    fn circuit_probes_one_step_at_a_time() {
        let retry = [Duration::from_secs(10), Duration::from_secs(60)];
        let c = Circuit::default();
        assert!(!c.is_open());
        c.failed(&retry, false, None);
        assert!(c.is_open());
        let first = c.next_probe().unwrap();
        // Another non-probe failure does not move the probe.
        c.failed(&retry, false, None);
        assert_eq!(c.next_probe(), Some(first));
        c.failed(&retry, true, None);
        assert!(c.next_probe().unwrap() > first + Duration::from_secs(30));
        assert!(c.succeeded());
        assert!(!c.is_open());
        assert!(!c.succeeded());
    }

    #[test]
    fn shared_circuit_queues_its_changes_and_sync_never_undoes_a_newer_one() {
        let (tx, mut rx) = mpsc::unbounded_channel();
        let c = Circuit::shared("a", tx);
        let retry = [Duration::from_secs(10), Duration::from_secs(60)];
        let before = c.version();
        c.failed(&retry, false, None);
        assert!(
            matches!(rx.try_recv(), Ok(CircuitWrite::Open { route, .. }) if route == "a"),
            "opening is shared"
        );
        // A read from before the change (closed) does not undo it.
        c.sync(None, before);
        assert!(c.is_open());
        // Another instance's probe moved the row on: taken as it is.
        let elsewhere = SharedCircuit {
            route: "a".into(),
            step: 1,
            next_probe_in: Duration::from_secs(30),
        };
        c.sync(Some(&elsewhere), c.version());
        let next = c.next_probe().unwrap();
        assert!(next > Instant::now() + Duration::from_secs(29), "{next:?}");
        c.failed(&retry, true, None);
        assert!(matches!(
            rx.try_recv(),
            Ok(CircuitWrite::ProbeFailed { step: 1, .. })
        ));
        // Closed by another instance: closed here, nothing written back.
        c.sync(None, c.version());
        assert!(!c.is_open());
        assert!(rx.try_recv().is_err());
        // A closed circuit's success changes nothing, so shares nothing.
        assert!(!c.succeeded());
        assert!(rx.try_recv().is_err());
    }
}
