//! Each route's circuit in the PostgreSQL spool database (SPEC §8, §11),
//! one row per route in `hookgate_route_state`, so instances behind a load
//! balancer share one circuit per route: a route one instance found down
//! is open on every instance, and the app gets one probe per backoff step,
//! not one per instance.
//!
//! - Opening is an upsert that changes nothing when the row is open
//!   already: the first instance's schedule stands.
//! - The probe is taken with one conditional `UPDATE … RETURNING`: due
//!   (`next_probe_at` passed), not held (`probe_until` passed) and with a
//!   pending record not leased by anyone, it is
//!   stamped held for `lease`; of instances asking at once, one gets a row
//!   back. The holder writes the next step (failure) or closes the row
//!   (success); a holder that dies loses the probe after `lease`.
//! - Times are the database's clock, as for leases.

use std::time::Duration;

use deadpool_postgres::Pool;

use super::postgres::{deadline, storage};
use super::{CircuitWrite, SharedCircuit, SharedCircuits, StoreFuture};

pub struct PgCircuits {
    pub(super) pool: Pool,
    /// How long a probe is held: the spool's `lease` (longer than any
    /// route's upstream_timeout, checked at load).
    pub(super) hold_ms: f64,
    /// This instance's id, stamped on the probe it holds (returned at a
    /// graceful stop: [`super::Store::return_leases`]).
    pub(super) instance: String,
}

fn ms(d: Duration) -> f64 {
    d.as_millis() as f64
}

impl SharedCircuits for PgCircuits {
    fn write(&self, change: CircuitWrite) -> StoreFuture<'_, ()> {
        Box::pin(deadline(async move {
            let client = self.pool.get().await.map_err(storage)?;
            match change {
                CircuitWrite::Open { route, delay } => client.execute(
                    "INSERT INTO hookgate_route_state(route, open, step, next_probe_at)
                     VALUES ($1, true, 0, clock_timestamp() + $2::float8 * interval '1 millisecond')
                     ON CONFLICT (route) DO UPDATE
                       SET open = true, step = 0, next_probe_at = EXCLUDED.next_probe_at, probe_until = NULL
                       WHERE NOT hookgate_route_state.open",
                    &[&route, &ms(delay)],
                ).await,
                CircuitWrite::ProbeFailed { route, step, delay } => client.execute(
                    "UPDATE hookgate_route_state
                     SET step = $2, next_probe_at = clock_timestamp() + $3::float8 * interval '1 millisecond', probe_until = NULL
                     WHERE route = $1 AND open",
                    &[&route, &i32::try_from(step).unwrap_or(i32::MAX), &ms(delay)],
                ).await,
                CircuitWrite::Close { route } => client.execute(
                    "UPDATE hookgate_route_state SET open = false, step = 0, probe_until = NULL
                     WHERE route = $1 AND open",
                    &[&route],
                ).await,
                CircuitWrite::ReleaseProbe { route } => client.execute(
                    "UPDATE hookgate_route_state SET probe_until = NULL WHERE route = $1",
                    &[&route],
                ).await,
            }
            .map(|_| ())
            .map_err(storage)
        }))
    }

    fn open_circuits(&self) -> StoreFuture<'_, Vec<SharedCircuit>> {
        Box::pin(deadline(async move {
            let client = self.pool.get().await.map_err(storage)?;
            let rows = client
                .query(
                    "SELECT route, step,
                            greatest(0, extract(epoch FROM next_probe_at - clock_timestamp()) * 1000)::int8
                     FROM hookgate_route_state WHERE open",
                    &[],
                )
                .await
                .map_err(storage)?;
            rows.iter()
                .map(|r| {
                    let step: i32 = r.try_get(1).map_err(storage)?;
                    let next_ms: i64 = r.try_get(2).map_err(storage)?;
                    Ok(SharedCircuit {
                        route: r.try_get(0).map_err(storage)?,
                        step: usize::try_from(step).unwrap_or(0),
                        next_probe_in: Duration::from_millis(u64::try_from(next_ms).unwrap_or(0)),
                    })
                })
                .collect()
        }))
    }

    fn take_probe(&self, route: &str) -> StoreFuture<'_, Option<usize>> {
        let route = route.to_string();
        Box::pin(deadline(async move {
            let client = self.pool.get().await.map_err(storage)?;
            let row = client
                .query_opt(
                    "UPDATE hookgate_route_state
                     SET probe_until = clock_timestamp() + $2::float8 * interval '1 millisecond', probe_owner = $3
                     WHERE route = $1 AND open AND next_probe_at <= clock_timestamp()
                       AND (probe_until IS NULL OR probe_until <= clock_timestamp())
                       -- Something to probe with: no take-and-give-back every
                       -- tick while the route has no record to send.
                       AND EXISTS (SELECT 1 FROM hookgate_webhook w
                                   WHERE w.route = $1 AND w.state = 'pending'
                                     AND (w.locked_until IS NULL OR w.locked_until <= clock_timestamp()))
                     RETURNING step",
                    &[&route, &self.hold_ms, &self.instance],
                )
                .await
                .map_err(storage)?;
            match row {
                Some(r) => {
                    let step: i32 = r.try_get(0).map_err(storage)?;
                    Ok(Some(usize::try_from(step).unwrap_or(0)))
                }
                None => Ok(None),
            }
        }))
    }
}
