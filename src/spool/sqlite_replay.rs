//! The replay defence's store (SPEC §10) in the SQLite spool file, so a
//! delivery handed over before a restart is still a duplicate after it.
//! The sibling of `postgres_replay.rs`, for the embedded backend:
//!
//! - In-flight marks live in memory: one process owns the file, so a
//!   repeat while the first copy is being forwarded is answered 409 without
//!   touching the disk, and a crash leaves no stale mark behind.
//! - [`ReplayStore::begin`] marks the key, then reads `hookgate_replay` on
//!   its own connection on a blocking thread (WAL: readers never wait for
//!   the writer, and the writer thread never waits for a lookup).
//! - `commit` is one write through the spool's writer thread, so it joins
//!   the group commit of spooled requests. The 2xx does not wait for that
//!   fsync: the trait's commit is synchronous. Until the write landed the
//!   mark stays in memory as "recorded" with its expiry, so a copy arriving
//!   meanwhile is already answered as a duplicate (never forwarded, never a
//!   spurious 409). What is lost on a crash (power cut) in that window of
//!   one group commit (milliseconds) is the record, not a webhook: a copy
//!   sent after such a crash would be forwarded once more.
//! - Lookup failed (the file unreadable): the request is forwarded without
//!   the check and a warning is logged (fail open, as the PostgreSQL store
//!   does). Refusing would lose the webhook for a sender that does not
//!   retry; a spooled route's write fails on the same file and answers 503.
//!
//! Expired rows are deleted once a minute (the lookup compares the expiry
//! itself, so an expired row that is not yet deleted is never a duplicate).

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::Duration;

use prometheus_client::metrics::gauge::Gauge;
use rusqlite::{params, Connection, OptionalExtension};

use super::sqlite::{Jobs, OpenError};
use super::{now_ms, StoreError};
use crate::replay::{Lookup, ReplayKey, ReplayStore, Seen};

/// Created with the spool's schema (and by the version 1 → 2 migration).
pub const SCHEMA: &str = "
CREATE TABLE hookgate_replay(
    key        BLOB PRIMARY KEY,           -- ReplayKey: 16-byte digest of route + delivery id or MAC
    expires_ms INTEGER NOT NULL            -- Unix ms: a copy before this is a duplicate
) WITHOUT ROWID;
CREATE INDEX hookgate_replay_expiry ON hookgate_replay(expires_ms);
";

/// Expired rows are removed this often.
const SWEEP_EVERY: Duration = Duration::from_secs(60);

pub struct SqliteReplay {
    inner: Arc<Inner>,
    sweeper: Option<tokio::task::JoinHandle<()>>,
}

struct Inner {
    /// The spool writer's queue: commits and sweeps join its group commit.
    jobs: Jobs,
    /// Lookups only; one at a time (each is a primary-key read).
    reader: Mutex<Connection>,
    /// Keys being forwarded, and keys whose record has not landed yet.
    marks: Mutex<HashMap<ReplayKey, Mark>>,
    /// `hookgate_replay_entries`: rows in the table (counted at start and
    /// at every sweep, plus rows added since) and marks in flight.
    entries: OnceLock<Gauge>,
}

impl Drop for SqliteReplay {
    fn drop(&mut self) {
        if let Some(sweeper) = &self.sweeper {
            sweeper.abort();
        }
    }
}

impl SqliteReplay {
    /// Opens a read connection on the spool file at `path`; commits go
    /// through `jobs`. Starts the sweeper when called inside a runtime.
    pub fn open(path: &Path, jobs: Jobs) -> Result<SqliteReplay, OpenError> {
        let reader = super::sqlite::connect(path)?;
        let inner = Arc::new(Inner {
            jobs,
            reader: Mutex::new(reader),
            marks: Mutex::new(HashMap::new()),
            entries: OnceLock::new(),
        });
        let sweeper = tokio::runtime::Handle::try_current().ok().map(|rt| {
            let inner = inner.clone();
            rt.spawn(async move {
                let mut tick = tokio::time::interval(SWEEP_EVERY);
                loop {
                    tick.tick().await;
                    inner.sweep().await;
                }
            })
        });
        Ok(SqliteReplay { inner, sweeper })
    }
}

fn storage(e: rusqlite::Error) -> StoreError {
    StoreError::Storage(e.to_string())
}

impl Inner {
    fn marks(&self) -> MutexGuard<'_, HashMap<ReplayKey, Mark>> {
        // The map is consistent after every operation: keep serving.
        self.marks.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn unmark(&self, key: &ReplayKey) {
        if self.marks().remove(key).is_some() {
            self.gauge_add(-1);
        }
    }

    /// Drops the mark of a record that landed, unless the key was claimed
    /// again meanwhile (a window shorter than the commit's wait).
    fn recorded_landed(&self, key: &ReplayKey, expires: i64) {
        let mut marks = self.marks();
        if matches!(marks.get(key), Some(Mark::Recording(e)) if *e == expires) {
            marks.remove(key);
            drop(marks);
            self.gauge_add(-1);
        }
    }

    fn gauge_add(&self, n: i64) {
        if let Some(g) = self.entries.get() {
            g.inc_by(n);
        }
    }

    /// Whether `key` is recorded and its window has not passed at `now`.
    fn recorded(&self, key: &ReplayKey, now: i64) -> Result<bool, rusqlite::Error> {
        let conn = self.reader.lock().unwrap_or_else(|e| e.into_inner());
        let expires: Option<i64> = conn
            .prepare_cached("SELECT expires_ms FROM hookgate_replay WHERE key = ?1")?
            .query_row(params![&key.as_bytes()[..]], |r| r.get(0))
            .optional()?;
        Ok(expires.is_some_and(|e| e > now))
    }

    /// Deletes expired rows and recounts the table for the gauge.
    async fn sweep(&self) {
        let now = now_ms();
        let swept = self
            .jobs
            .with_conn(move |w| {
                let conn = w.conn();
                let deleted = conn
                    .execute(
                        "DELETE FROM hookgate_replay WHERE expires_ms <= ?1",
                        params![now],
                    )
                    .map_err(storage)?;
                let rows: i64 = conn
                    .query_row("SELECT count(*) FROM hookgate_replay", [], |r| r.get(0))
                    .map_err(storage)?;
                Ok((deleted, rows))
            })
            .await;
        match swept {
            Ok((deleted, rows)) => {
                if let Some(g) = self.entries.get() {
                    let marks = i64::try_from(self.marks().len()).unwrap_or(i64::MAX);
                    g.set(rows.saturating_add(marks));
                }
                tracing::debug!(deleted, rows, "replay store: expired entries removed");
            }
            Err(e) => {
                tracing::warn!(error = %e, "replay store: removing expired entries failed; retried in a minute")
            }
        }
    }
}

/// What this process knows of a key before the table does.
#[derive(Clone, Copy)]
enum Mark {
    /// Being forwarded (a copy now is answered 409).
    InFlight,
    /// Committed, its row not yet written: recorded until this Unix ms.
    Recording(i64),
}

/// An in-flight mark taken by `begin`, released unless the lookup said
/// fresh: also when the lookup's future is dropped (client gone), so no
/// mark outlives its request.
struct Taken {
    inner: Arc<Inner>,
    key: ReplayKey,
    keep: bool,
}

impl Taken {
    /// The claim now owns the mark (released by its commit or forget).
    fn hold(mut self) {
        self.keep = true;
    }
}

impl Drop for Taken {
    fn drop(&mut self) {
        if !self.keep {
            self.inner.unmark(&self.key);
        }
    }
}

impl ReplayStore for SqliteReplay {
    fn begin(&self, key: &ReplayKey) -> Lookup<'_> {
        {
            let mut marks = self.inner.marks();
            match marks.get(key) {
                Some(Mark::InFlight) => return Lookup::Ready(Seen::InFlight),
                Some(Mark::Recording(expires)) if *expires > now_ms() => {
                    return Lookup::Ready(Seen::Duplicate)
                }
                // A window shorter than the commit's wait: the row lands
                // expired; nothing is in flight, so look it up as usual.
                Some(Mark::Recording(_)) | None => {}
            }
            if marks.insert(*key, Mark::InFlight).is_none() {
                self.inner.gauge_add(1);
            }
        }
        let mark = Taken {
            inner: self.inner.clone(),
            key: *key,
            keep: false,
        };
        Lookup::Pending(Box::pin(async move {
            let inner = mark.inner.clone();
            let key = mark.key;
            let now = now_ms();
            let found = tokio::task::spawn_blocking(move || inner.recorded(&key, now)).await;
            match found {
                Ok(Ok(true)) => Seen::Duplicate,
                Ok(Ok(false)) => {
                    mark.hold();
                    Seen::Fresh
                }
                Ok(Err(e)) => {
                    tracing::warn!(error = %e, "replay store: cannot read the spool file; forwarding without the replay check");
                    mark.hold();
                    Seen::Fresh
                }
                Err(e) => {
                    tracing::warn!(error = %e, "replay store: lookup did not finish; forwarding without the replay check");
                    mark.hold();
                    Seen::Fresh
                }
            }
        }))
    }

    fn commit(&self, key: &ReplayKey, window: Duration) {
        let window_ms = i64::try_from(window.as_millis()).unwrap_or(i64::MAX / 2);
        let expires = now_ms().saturating_add(window_ms.max(1));
        if let Some(mark) = self.inner.marks().get_mut(key) {
            *mark = Mark::Recording(expires);
        }
        let bytes = key.as_bytes().to_vec();
        let write = self.inner.jobs.with_conn(move |w| {
            let conn = w.conn();
            // An expired row not yet swept is renewed in place.
            let renewed = conn
                .prepare_cached("UPDATE hookgate_replay SET expires_ms = ?2 WHERE key = ?1")
                .and_then(|mut s| s.execute(params![&bytes[..], expires]))
                .map_err(storage)?;
            if renewed == 0 {
                conn.prepare_cached("INSERT INTO hookgate_replay(key, expires_ms) VALUES (?1, ?2)")
                    .and_then(|mut s| s.execute(params![&bytes[..], expires]))
                    .map_err(storage)?;
            }
            Ok(renewed == 0)
        });
        let inner = self.inner.clone();
        let key = *key;
        tokio::spawn(async move {
            match write.await {
                Ok(added) => {
                    if added {
                        inner.gauge_add(1);
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "replay store: recording a delivery failed; a copy of it would be forwarded again")
                }
            }
            // Only now: until the row is on disk, the mark answers copies.
            inner.recorded_landed(&key, expires);
        });
    }

    fn forget(&self, key: &ReplayKey) {
        self.inner.unmark(key);
    }

    fn track(&self, entries: Gauge) {
        if self.inner.entries.set(entries.clone()).is_ok() {
            let marks = i64::try_from(self.inner.marks().len()).unwrap_or(i64::MAX);
            entries.set(marks);
            // The table's count, now (the sweeper's first pass may have run
            // before there was a gauge to set).
            if let Ok(rt) = tokio::runtime::Handle::try_current() {
                let inner = self.inner.clone();
                rt.spawn(async move { inner.sweep().await });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::sqlite::SqliteStore;
    use super::super::Store;
    use crate::replay::{claim, key, Repeat, Verified};

    use super::*;

    const HOUR: Duration = Duration::from_secs(3600);

    fn k(n: u8) -> ReplayKey {
        key("r", Verified::Mac(&[n; 32]))
    }

    /// Rows in the table, read through the writer (after every queued write).
    async fn rows(store: &SqliteStore) -> i64 {
        store
            .read(|w| {
                w.conn()
                    .query_row("SELECT count(*) FROM hookgate_replay", [], |r| r.get(0))
                    .map_err(storage)
            })
            .await
            .unwrap()
    }

    /// In flight → 409; committed → a duplicate at once (before its row is
    /// written) and after; forgotten → fresh; a reopened file still knows
    /// what was recorded; the gauge counts rows and marks.
    #[tokio::test]
    async fn claim_commit_forget_and_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.db");
        let store = SqliteStore::open(&path, 1 << 20, true).unwrap();
        let replay = store.replay_store().unwrap();
        let gauge = Gauge::default();
        replay.track(gauge.clone());

        let c = claim(replay.as_ref(), k(1), HOUR).await.unwrap();
        assert_eq!(gauge.get(), 1);
        assert_eq!(
            claim(replay.as_ref(), k(1), HOUR).await.err(),
            Some(Repeat::InFlight)
        );
        c.commit();
        // The row is queued, not yet written: the mark answers.
        assert_eq!(
            claim(replay.as_ref(), k(1), HOUR).await.err(),
            Some(Repeat::Duplicate)
        );
        drop(claim(replay.as_ref(), k(2), HOUR).await.unwrap());
        claim(replay.as_ref(), k(2), HOUR).await.unwrap().commit();
        // Both writes are behind this read in the writer's queue.
        assert_eq!(rows(&store).await, 2);
        // Marks became rows one for one: two deliveries throughout.
        assert_eq!(gauge.get(), 2);
        assert_eq!(
            claim(replay.as_ref(), k(2), HOUR).await.err(),
            Some(Repeat::Duplicate)
        );
        drop(replay);
        store.close();
        drop(store);

        let store = SqliteStore::open(&path, 1 << 20, false).unwrap();
        let replay = store.replay_store().unwrap();
        for n in [1, 2] {
            assert_eq!(
                claim(replay.as_ref(), k(n), HOUR).await.err(),
                Some(Repeat::Duplicate)
            );
        }
        claim(replay.as_ref(), k(3), HOUR).await.unwrap();
        store.close();
    }

    /// A recorded row whose window passed is fresh again, renewed in place
    /// when committed, and deleted by the sweep once expired.
    #[tokio::test]
    async fn expired_rows_are_fresh_renewed_and_swept() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(&dir.path().join("s.db"), 1 << 20, true).unwrap();
        let replay = store.replay_store().unwrap();
        let window = Duration::from_millis(20);
        claim(replay.as_ref(), k(1), window).await.unwrap().commit();
        assert_eq!(rows(&store).await, 1);
        tokio::time::sleep(Duration::from_millis(30)).await;
        claim(replay.as_ref(), k(1), window).await.unwrap().commit();
        assert_eq!(rows(&store).await, 1);
        tokio::time::sleep(Duration::from_millis(30)).await;
        let sqlite = store.replay.get().cloned().flatten().unwrap();
        sqlite.inner.sweep().await;
        assert_eq!(rows(&store).await, 0);
        store.close();
    }
}
