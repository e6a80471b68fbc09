//! Shared circuits (several instances on one PostgreSQL store): writes
//! this instance's circuit changes to the store in the order they were
//! made, and every second brings every local circuit in line with the
//! store, so a route that another instance found down is open here too,
//! on the same schedule, and one that another instance's probe found up
//! again is closed here too.
//!
//! The request path never waits for the database for its circuit: it
//! reads the local copy ([`super::Circuit::is_open`]); only the worker's probe is
//! decided by the database ([`super::SharedCircuits::take_probe`]).

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;

use super::{CircuitWrite, Spool};

/// How often the local copies are brought in line.
const SYNC_EVERY: Duration = Duration::from_secs(1);

/// Runs until the spool is dropped (the worker aborts it at shutdown);
/// returns at once when the store does not share circuits.
pub async fn run(spool: Arc<Spool>) {
    let queue = spool
        .circuit_queue
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .take();
    let Some(mut queue) = queue else {
        return;
    };
    let mut tick = tokio::time::interval(SYNC_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut failing = false;
    loop {
        tokio::select! {
            change = queue.recv() => match change {
                Some(change) => write(&spool, change).await,
                None => return,
            },
            _ = tick.tick() => sync(&spool, &mut queue, &mut failing).await,
        }
    }
}

async fn write(spool: &Spool, change: CircuitWrite) {
    let Some(shared) = spool.store.shared_circuits() else {
        return;
    };
    if let Err(e) = shared.write(change.clone()).await {
        // The other instances go on with the state they have; the next
        // sync takes whatever the store holds.
        tracing::warn!(error = %e, change = ?change, "spool: cannot share a circuit change");
    }
}

async fn sync(
    spool: &Spool,
    queue: &mut mpsc::UnboundedReceiver<CircuitWrite>,
    failing: &mut bool,
) {
    let Some(shared) = spool.store.shared_circuits() else {
        return;
    };
    // Versions first, then the queued writes: a change made after this
    // point is newer than what the read below can show, and is kept.
    let seen = spool.circuits_now();
    while let Ok(change) = queue.try_recv() {
        write(spool, change).await;
    }
    match shared.open_circuits().await {
        Ok(open) => {
            *failing = false;
            for (route, circuit, version) in seen {
                circuit.sync(open.iter().find(|s| s.route == route), version);
            }
        }
        Err(e) => {
            if !std::mem::replace(failing, true) {
                tracing::warn!(error = %e, "spool: cannot read the shared circuits; each instance keeps its own meanwhile");
            }
        }
    }
}
