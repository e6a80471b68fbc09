//! The replay defence's store (SPEC §10) in the PostgreSQL spool database
//! (SPEC §11): every instance sees every delivery, so the same signed
//! request sent to instance A and then to B is forwarded once.
//!
//! - [`ReplayStore::begin`] is one statement: insert the key in flight, or
//!   take over a row whose window (or in-flight mark) has passed; when
//!   neither happened, the row says duplicate or in flight. The primary key
//!   makes it atomic across instances.
//! - `commit` and `forget` are synchronous in the trait: they are sent in
//!   the background, and until the commit lands the row stays in flight,
//!   so a copy arriving meanwhile gets 409 + `Retry-After`, never through.
//! - An in-flight mark expires after [`IN_FLIGHT_FOR`], so marks left by a
//!   crashed instance do not block a delivery forever.
//! - Database unreachable: the lookup answers fresh (fail open, logged).
//!   Refusing would lose the webhook (the sender does not retry); a request
//!   that must be spooled gets 503 from the spool write anyway.
//!
//! Expired rows are deleted once a minute; `hookgate_replay_entries` is the
//! table's unexpired rows, counted every 10 s.

use std::time::Duration;

use deadpool_postgres::Pool;
use prometheus_client::metrics::gauge::Gauge;

use crate::replay::{Lookup, ReplayKey, ReplayStore, Seen};

/// How long an in-flight mark holds when its instance never commits or
/// forgets it: well past any request_timeout + upstream_timeout.
pub const IN_FLIGHT_FOR: Duration = Duration::from_secs(120);
/// Expired rows are removed this often.
const SWEEP_EVERY: Duration = Duration::from_secs(60);
/// `hookgate_replay_entries` is counted this often (one `count(*)`).
const COUNT_EVERY: Duration = Duration::from_secs(10);

pub struct PgReplay {
    pool: Pool,
    sweeper: tokio::task::JoinHandle<()>,
    /// Keeps `hookgate_replay_entries` ([`ReplayStore::track`]).
    counter: std::sync::Mutex<Option<tokio::task::JoinHandle<()>>>,
}

impl Drop for PgReplay {
    fn drop(&mut self) {
        self.sweeper.abort();
        if let Some(counter) = self
            .counter
            .get_mut()
            .unwrap_or_else(|e| e.into_inner())
            .take()
        {
            counter.abort();
        }
    }
}

fn ms(d: Duration) -> f64 {
    d.as_millis() as f64
}

impl PgReplay {
    pub fn new(pool: Pool) -> PgReplay {
        let sweep_pool = pool.clone();
        let sweeper = tokio::spawn(async move {
            let mut tick = tokio::time::interval(SWEEP_EVERY);
            loop {
                tick.tick().await;
                if let Ok(client) = sweep_pool.get().await {
                    let _ = client
                        .execute(
                            "DELETE FROM hookgate_replay WHERE expires_at < clock_timestamp()",
                            &[],
                        )
                        .await;
                }
            }
        });
        PgReplay {
            pool,
            sweeper,
            counter: std::sync::Mutex::new(None),
        }
    }

    async fn lookup(&self, key: Vec<u8>) -> Result<Seen, String> {
        let client = self.pool.get().await.map_err(|e| e.to_string())?;
        let claimed = client
            .query_opt(
                "INSERT INTO hookgate_replay(key, expires_at, in_flight)
                 VALUES ($1, clock_timestamp() + $2::float8 * interval '1 millisecond', true)
                 ON CONFLICT (key) DO UPDATE
                     SET expires_at = EXCLUDED.expires_at, in_flight = true
                     WHERE hookgate_replay.expires_at <= clock_timestamp()
                 RETURNING 1",
                &[&key, &ms(IN_FLIGHT_FOR)],
            )
            .await
            .map_err(|e| e.to_string())?;
        if claimed.is_some() {
            return Ok(Seen::Fresh);
        }
        let row = client
            .query_opt(
                "SELECT in_flight FROM hookgate_replay WHERE key = $1",
                &[&key],
            )
            .await
            .map_err(|e| e.to_string())?;
        // Gone between the two statements: forgotten by its owner just
        // now; asking the sender to come back in a second is safe.
        Ok(match row.map(|r| r.get::<_, bool>(0)) {
            Some(false) => Seen::Duplicate,
            Some(true) | None => Seen::InFlight,
        })
    }

    /// Runs one statement on `key` in the background.
    fn send(&self, sql: &'static str, key: &ReplayKey, window: Option<Duration>) {
        let pool = self.pool.clone();
        let key = key.as_bytes().to_vec();
        tokio::spawn(async move {
            let done = tokio::time::timeout(super::postgres::OP_TIMEOUT, async {
                let client = pool.get().await.map_err(|e| e.to_string())?;
                match window {
                    Some(w) => client.execute(sql, &[&key, &ms(w)]).await,
                    None => client.execute(sql, &[&key]).await,
                }
                .map_err(|e| e.to_string())
            })
            .await;
            match done {
                Ok(Ok(_)) => {}
                Ok(Err(e)) => {
                    tracing::warn!(error = %e, "replay store: write to the database failed; the mark expires on its own")
                }
                Err(_) => tracing::warn!(
                    "replay store: the database did not answer; the mark expires on its own"
                ),
            }
        });
    }
}

impl ReplayStore for PgReplay {
    /// Every `COUNT_EVERY` (first at once) the table's unexpired rows,
    /// every instance's: each instance reports the same number.
    fn track(&self, entries: Gauge) {
        let pool = self.pool.clone();
        let counter = tokio::spawn(async move {
            let mut tick = tokio::time::interval(COUNT_EVERY);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let counted = tokio::time::timeout(super::postgres::OP_TIMEOUT, async {
                    let client = pool.get().await.map_err(|e| e.to_string())?;
                    client
                        .query_one(
                            "SELECT count(*) FROM hookgate_replay WHERE expires_at > clock_timestamp()",
                            &[],
                        )
                        .await
                        .map(|row| row.get::<_, i64>(0))
                        .map_err(|e| e.to_string())
                })
                .await;
                match counted {
                    Ok(Ok(n)) => {
                        entries.set(n);
                    }
                    Ok(Err(e)) => tracing::debug!(error = %e, "replay store: cannot count entries"),
                    Err(_) => tracing::debug!("replay store: counting entries timed out"),
                }
            }
        });
        let mut slot = self.counter.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(old) = slot.replace(counter) {
            old.abort();
        }
    }

    fn begin(&self, key: &ReplayKey) -> Lookup<'_> {
        let key = key.as_bytes().to_vec();
        Lookup::Pending(Box::pin(async move {
            match tokio::time::timeout(super::postgres::OP_TIMEOUT, self.lookup(key)).await {
                Ok(Ok(seen)) => seen,
                Ok(Err(e)) => {
                    tracing::warn!(error = %e, "replay store unreachable; forwarding without the replay check");
                    Seen::Fresh
                }
                Err(_) => {
                    tracing::warn!(
                        "replay store did not answer; forwarding without the replay check"
                    );
                    Seen::Fresh
                }
            }
        }))
    }

    fn commit(&self, key: &ReplayKey, window: Duration) {
        self.send(
            "UPDATE hookgate_replay SET in_flight = false, expires_at = clock_timestamp() + $2::float8 * interval '1 millisecond' WHERE key = $1",
            key,
            Some(window),
        );
    }

    fn forget(&self, key: &ReplayKey) {
        self.send(
            "DELETE FROM hookgate_replay WHERE key = $1 AND in_flight",
            key,
            None,
        );
    }
}
