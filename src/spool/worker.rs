//! Redelivery (SPEC §8): per spooled route, take due records oldest first
//! and send them again, at most `redelivery_concurrency` at a time while the
//! route is up and one probe per backoff step while its circuit is open.
//!
//! - 2xx: delivered, the record is removed; a probe's 2xx closes the circuit
//!   and makes the route's whole backlog due (drain oldest first);
//! - 410: dead at once;
//! - anything else: the next step of `spool.retry` (± 20 % jitter, never
//!   sooner than a `Retry-After`, which is capped at the largest step), or
//!   dead once the schedule is exhausted or `max_age` has passed. Only the
//!   failures a sender counts (transport error, timeout, 5xx, 408, 429) open
//!   the circuit; a 400 is one record's problem, not the route's.
//!
//! Records of a route removed from the config stay pending (orphaned) and
//! are delivered again if it comes back; a route switched to `sync` still
//! drains what it had kept. The worker knows the [`Store`](super::Store)
//! trait only. It also keeps
//! the spool gauges current. Pending records are picked up at start, and a
//! record an operator retried with the CLI within a second (the loop never
//! sleeps longer). At shutdown nothing new starts; deliveries in flight get
//! until `shutdown_timeout`, after which they are dropped and stay pending;
//! a leasing store then gets its leases back ([`super::Store::return_leases`]).

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, Method, Request, StatusCode, Uri, Version};
use http_body_util::BodyExt;
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio::time::Instant;

use super::{
    decode_headers, failed_status, jitter, now_ms, Note, Record, Spool, X_HOOKGATE_ATTEMPT,
};
use crate::body::Frames;
use crate::config::{self, Route};
use crate::proxy::{Proxy, State};

/// The loop never sleeps longer than this, so CLI changes and newly due
/// records are seen within a second.
const TICK: Duration = Duration::from_secs(1);
/// Records past `max_age` are marked dead this often.
const EXPIRE_EVERY: Duration = Duration::from_secs(10);
/// Due records read ahead per route while it drains, so a delivery's end
/// does not cost a query; the read-ahead is dropped every [`TICK`], so an
/// operator's `drop` is seen within a second.
const READ_AHEAD: usize = 64;
/// Bound on returning the leases at shutdown (the caller waits
/// `shutdown_timeout` plus [`SHUTDOWN_MARGIN`] for the worker).
const RETURN_LEASES_WITHIN: Duration = Duration::from_secs(2);
/// How much longer than `shutdown_timeout` the worker may take to stop.
pub const SHUTDOWN_MARGIN: Duration = Duration::from_secs(3);
/// How much of a response body is read so the connection can be reused.
const MAX_DRAIN: usize = 1024 * 1024;

/// What one attempt came to.
enum Attempt {
    Status(StatusCode, Option<Duration>),
    Failed(String),
}

/// Runs redelivery until `stop` turns true, then lets deliveries in flight
/// finish within `shutdown_timeout` (read from the config in force).
pub async fn run(proxy: Arc<Proxy>, spool: Arc<Spool>, mut stop: watch::Receiver<bool>) {
    let circuits = AbortOnDrop(tokio::spawn(super::circuit_sync::run(spool.clone())));
    run_loop(proxy, spool, &mut stop).await;
    drop(circuits);
}

/// Aborts the task when dropped (the worker returns on every path).
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

async fn run_loop(proxy: Arc<Proxy>, spool: Arc<Spool>, stop: &mut watch::Receiver<bool>) {
    let mut in_flight: HashMap<String, HashSet<String>> = HashMap::new();
    let mut tasks: JoinSet<(String, String)> = JoinSet::new();
    let mut last_expire: Option<Instant> = None;
    let mut ahead: HashMap<String, std::collections::VecDeque<Record>> = HashMap::new();
    // Per route: requests on the wire to the upstream. A slot is free again
    // once the upstream answered; the record's id stays in `in_flight`
    // until the store has recorded the outcome, so it is never fetched and
    // sent twice meanwhile. Commits of many deliveries then share an fsync.
    let mut sending: HashMap<String, Arc<AtomicUsize>> = HashMap::new();
    let mut ahead_since = Instant::now();
    loop {
        if ahead_since.elapsed() >= TICK {
            ahead.clear();
            ahead_since = Instant::now();
        }
        let state = proxy.state();
        let Some(cfg) = state.config.spool.clone() else {
            return;
        };
        let expire = last_expire.is_none_or(|t| t.elapsed() >= EXPIRE_EVERY);
        if expire {
            last_expire = Some(Instant::now());
        }
        let mut wake_at = Instant::now() + TICK;
        // Every configured route: one switched to `sync` by a reload still
        // gets the records it had accepted.
        for route in &state.config.routes {
            if expire {
                expire_old(&state, route, &spool, &cfg).await;
            }
            let circuit = spool.circuit(&route.name);
            let flying = in_flight.entry(route.name.clone()).or_default();
            let on_wire = sending.entry(route.name.clone()).or_default().clone();
            let open = circuit.is_open();
            let slots = if open {
                match circuit.next_probe() {
                    Some(at) if at > Instant::now() => {
                        wake_at = wake_at.min(at);
                        0
                    }
                    _ if flying.is_empty() => 1,
                    _ => 0,
                }
            } else {
                // At most `redelivery_concurrency` on the wire, and twice that
                // delivered but not yet recorded: what a crash can repeat.
                let wire = cfg
                    .redelivery_concurrency
                    .saturating_sub(on_wire.load(Ordering::Acquire));
                wire.min((2 * cfg.redelivery_concurrency).saturating_sub(flying.len()))
            };
            if slots == 0 {
                continue;
            }
            // Several instances share the circuit: the probe goes from
            // whichever instance takes it first in the database.
            let mut took_probe = false;
            if let (true, Some(shared)) = (open, spool.store.shared_circuits()) {
                match shared.take_probe(&route.name).await {
                    Ok(Some(step)) => {
                        circuit.set_step(step);
                        took_probe = true;
                    }
                    Ok(None) => continue,
                    Err(e) => {
                        tracing::warn!(route = %route.name, error = %e, "spool: cannot take the circuit probe");
                        continue;
                    }
                }
            }
            let queue = ahead.entry(route.name.clone()).or_default();
            if open {
                // A probe is always the oldest record as of now.
                queue.clear();
            }
            if queue.is_empty() {
                // A leasing store (PostgreSQL) leases what it returns and
                // never returns records in flight: read only what goes out
                // now, or the rest would sit leased, out of every other
                // instance's reach, until the lease passes.
                let limit = if spool.store.leases() {
                    slots
                } else {
                    (if open { 1 } else { READ_AHEAD }) + flying.len()
                };
                match spool.store.due(&route.name, now_ms(), limit, open).await {
                    Ok(due) => queue.extend(due.into_iter().filter(|r| !flying.contains(&r.id))),
                    Err(e) => {
                        tracing::warn!(route = %route.name, error = %e, "spool: cannot read due records");
                        if took_probe {
                            circuit.probe_released();
                        }
                        continue;
                    }
                }
            }
            if took_probe && queue.is_empty() {
                circuit.probe_released();
            }
            let take = slots.min(queue.len());
            let fresh: Vec<Record> = queue.drain(..take).collect();
            for record in fresh {
                flying.insert(record.id.clone());
                on_wire.fetch_add(1, Ordering::AcqRel);
                tasks.spawn(deliver(
                    state.clone(),
                    route.clone(),
                    spool.clone(),
                    cfg.clone(),
                    record,
                    open,
                    on_wire.clone(),
                ));
            }
        }
        drop(state);
        tokio::select! {
            () = spool.wake.notified() => {}
            Some(done) = tasks.join_next() => forget(&mut in_flight, done),
            () = tokio::time::sleep_until(wake_at) => {}
            _ = stop.changed() => break,
        }
    }
    let grace = proxy.state().config.server.shutdown_timeout;
    let left = tasks.len();
    if left > 0 {
        tracing::info!(
            in_flight = left,
            "spool: waiting for redeliveries in flight"
        );
    }
    let drained =
        tokio::time::timeout(grace, async { while tasks.join_next().await.is_some() {} }).await;
    if drained.is_err() {
        tracing::warn!(
            in_flight = tasks.len(),
            "spool: redeliveries still in flight at shutdown_timeout; they stay pending"
        );
        tasks.abort_all();
        while tasks.join_next().await.is_some() {}
    }
    if spool.store.leases() {
        // Another instance may take at once what this one leased and did
        // not finish, rather than after `lease`.
        match tokio::time::timeout(RETURN_LEASES_WITHIN, spool.store.return_leases()).await {
            Ok(Ok(0)) => {}
            Ok(Ok(n)) => tracing::info!(
                records = n,
                "spool: returned this instance's leases; other instances take them now"
            ),
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "spool: cannot return leases; other instances take them after spool.lease")
            }
            Err(_) => tracing::warn!(
                "spool: returning leases timed out; other instances take them after spool.lease"
            ),
        }
    }
}

fn forget(
    in_flight: &mut HashMap<String, HashSet<String>>,
    done: Result<(String, String), tokio::task::JoinError>,
) {
    if let Ok((route, id)) = done {
        if let Some(set) = in_flight.get_mut(&route) {
            set.remove(&id);
        }
    }
}

async fn expire_old(state: &State, route: &Route, spool: &Spool, cfg: &config::Spool) {
    let max_age_ms = i64::try_from(cfg.max_age.as_millis()).unwrap_or(i64::MAX);
    match spool
        .store
        .expire(&route.name, now_ms().saturating_sub(max_age_ms))
        .await
    {
        Ok(0) => {}
        Ok(n) => {
            tracing::warn!(route = %route.name, records = n, "spool: undelivered past max_age; now dead");
            if let Some(m) = state.spool_metrics(route) {
                m.redeliveries_dead.inc_by(n);
            }
        }
        Err(e) => tracing::warn!(route = %route.name, error = %e, "spool: cannot expire records"),
    }
}

/// One redelivery attempt and what it means for the record and the route.
async fn deliver(
    state: Arc<State>,
    route: Arc<Route>,
    spool: Arc<Spool>,
    cfg: config::Spool,
    record: Record,
    probe: bool,
    on_wire: Arc<AtomicUsize>,
) -> (String, String) {
    let attempt = record.attempts.saturating_add(1);
    let result = send(&state, &route, &record, attempt).await;
    // The upstream answered: the slot is free for the next record.
    on_wire.fetch_sub(1, Ordering::AcqRel);
    spool.wake.notify_one();
    let circuit = spool.circuit(&route.name);
    let metrics = state.spool_metrics(&route);
    let id = record.id.clone();
    let (status, retry_after, error) = match result {
        Attempt::Status(status, retry_after) => (Some(status), retry_after, None),
        Attempt::Failed(e) => (None, None, Some(e)),
    };
    let code = status.map(|s| s.as_u16());
    let stored = if status.is_some_and(|s| s.is_success()) {
        if circuit.succeeded() {
            tracing::info!(route = %route.name, "spool: upstream answers again; draining the backlog");
            if let Err(e) = spool.store.release(&route.name, now_ms()).await {
                tracing::warn!(route = %route.name, error = %e, "spool: cannot release the backlog");
            }
            spool.wake.notify_one();
        }
        if let Some(m) = metrics {
            m.redeliveries_delivered.inc();
        }
        tracing::info!(route = %route.name, id = %id, attempt, status = code, "spool: delivered");
        spool.store.complete(&id).await
    } else {
        let note = Note {
            status: code,
            error: error.clone(),
        };
        let capped = retry_after.map(|d| d.min(cfg.largest_step()));
        if status.is_none_or(failed_status) {
            circuit.failed(&cfg.retry, probe, capped);
        } else if probe {
            // The app answered (a 4xx: this record's problem): the circuit
            // stays as it is and the next probe may go from any instance.
            circuit.probe_released();
        }
        let age = Duration::from_millis(u64::try_from(now_ms() - record.received_ms).unwrap_or(0));
        let step = usize::try_from(attempt)
            .unwrap_or(usize::MAX)
            .saturating_sub(1);
        let why_dead = if status == Some(StatusCode::GONE) {
            Some("410 Gone")
        } else if step >= cfg.retry.len() {
            Some("retry schedule exhausted")
        } else if age >= cfg.max_age {
            Some("max_age passed")
        } else {
            None
        };
        match why_dead {
            Some(why) => {
                if let Some(m) = metrics {
                    m.redeliveries_dead.inc();
                }
                tracing::warn!(route = %route.name, id = %id, attempt, status = code, error = error.as_deref(), reason = why, "spool: dead letter");
                spool.store.dead(&id, attempt, note).await
            }
            None => {
                let delay = jitter(cfg.retry[step]).max(capped.unwrap_or(Duration::ZERO));
                let next =
                    now_ms().saturating_add(i64::try_from(delay.as_millis()).unwrap_or(i64::MAX));
                if let Some(m) = metrics {
                    m.redeliveries_retry.inc();
                }
                tracing::info!(route = %route.name, id = %id, attempt, status = code, error = error.as_deref(), retry_in_ms = delay.as_millis() as u64, "spool: redelivery failed");
                spool.store.reschedule(&id, attempt, next, note).await
            }
        }
    };
    if let Err(e) = stored {
        // The record stays as it was (pending): it is tried again, at worst
        // delivered twice; at-least-once holds.
        tracing::error!(route = %route.name, id = %id, error = %e, "spool: cannot record the attempt");
    }
    (route.name.clone(), id)
}

/// Sends a stored request to the route's upstream as attempt `attempt`.
async fn send(state: &State, route: &Route, record: &Record, attempt: u32) -> Attempt {
    let mut headers = match decode_headers(&record.headers) {
        Ok(h) => h,
        Err(e) => return Attempt::Failed(format!("stored headers unreadable: {e}")),
    };
    headers.insert(&X_HOOKGATE_ATTEMPT, HeaderValue::from(attempt));
    let (Ok(method), Ok(uri)) = (
        Method::from_bytes(record.method.as_bytes()),
        record.target.parse::<Uri>(),
    ) else {
        return Attempt::Failed("stored method or target unreadable".into());
    };
    let mut req = Request::new(Frames::from_bytes(Bytes::from(record.body.clone())).into_body());
    *req.method_mut() = method;
    *req.uri_mut() = uri;
    *req.version_mut() = Version::HTTP_11;
    *req.headers_mut() = headers;
    let pool = state.pool(route);
    let sent = tokio::time::timeout(route.upstream_timeout, async {
        let response = pool.send(req).await.map_err(|e| e.to_string())?;
        let status = response.status();
        let retry_after = response
            .body()
            .fields()
            .get("retry-after")
            .and_then(|v| std::str::from_utf8(v).ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map(Duration::from_secs);
        // Read the answer to its end so the connection can carry the next
        // one (the body returns it to the pool when it ends cleanly; one
        // dropped unfinished closes it).
        let mut body = response.into_body();
        let mut read = 0usize;
        while let Some(Ok(frame)) = body.frame().await {
            read += frame.data_ref().map_or(0, Bytes::len);
            if read > MAX_DRAIN {
                break;
            }
        }
        Ok::<_, String>((status, retry_after))
    })
    .await;
    match sent {
        Err(_) => Attempt::Failed(format!(
            "no answer within upstream_timeout ({:?})",
            route.upstream_timeout
        )),
        Ok(Err(e)) => Attempt::Failed(e),
        Ok(Ok((status, retry_after))) => Attempt::Status(status, retry_after),
    }
}

/// Keeps the spool gauges current (every second) until dropped.
pub async fn gauges(proxy: Arc<Proxy>, spool: Arc<Spool>) {
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let state = proxy.state();
        let Some(cfg) = &state.config.spool else {
            return;
        };
        if let Some(check) = spool.store.health_check() {
            // A database server: /readyz follows whether it answers, also
            // while no request comes in to find out.
            let failing = check.await.is_err();
            if spool.health.is_failing() != failing {
                tracing::warn!(reachable = !failing, "spool: database reachability changed");
            }
            spool.health.set_failing(failing);
        }
        let stats = match spool.store.stats().await {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "spool: cannot read stats");
                continue;
            }
        };
        let metrics = proxy.metrics();
        metrics
            .spool_bytes
            .set(i64::try_from(stats.bytes).unwrap_or(i64::MAX));
        metrics
            .spool_capacity
            .set(i64::try_from(cfg.max_bytes).unwrap_or(i64::MAX));
        let now = now_ms();
        for route in state.config.routes.iter().filter(|r| r.delivery.spooled()) {
            let Some(m) = state.spool_metrics(route) else {
                continue;
            };
            let s = stats.routes.iter().find(|s| s.route == route.name);
            m.pending
                .set(s.map_or(0, |s| i64::try_from(s.pending).unwrap_or(i64::MAX)));
            m.dead
                .set(s.map_or(0, |s| i64::try_from(s.dead).unwrap_or(i64::MAX)));
            let age = s
                .and_then(|s| s.oldest_pending_ms)
                .map_or(0.0, |t| (now - t).max(0) as f64 / 1000.0);
            m.oldest_pending_age.set(age);
        }
    }
}
