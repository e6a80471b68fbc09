//! The replay defence's store (SPEC §10) in the SQLite spool file, so a
//! delivery handed over before a restart is still a duplicate after it.
//! The sibling of `postgres_replay.rs`, for the embedded backend:
//!
//! - In-flight marks live in memory: one process owns the file, so a
//!   repeat while the first copy is being forwarded is answered 409 without
//!   touching the disk, and a crash leaves no stale mark behind.
//! - [`ReplayStore::begin`] marks the key, then reads `hookgate_replay` on
//!   its own connection, inline: a primary-key read of a 16-byte key from a
//!   WAL file (readers never wait for the writer) takes microseconds, less
//!   than handing it to the blocking pool did (measured: README).
//! - `commit` does not write at once: records are gathered for
//!   [`FLUSH_AFTER`] and written in one job of the spool's writer thread
//!   (one statement per row, one transaction and one fsync for the lot),
//!   so a busy route costs a few transactions a second instead of one per
//!   delivery. The 2xx does not wait for that: the trait's commit is
//!   synchronous. Until the write landed the key stays in memory as
//!   "recorded" with its expiry, so a copy arriving meanwhile is already
//!   answered as a duplicate (never forwarded, never a spurious 409). What
//!   a crash (power cut) loses is the records of that last moment, not a
//!   webhook: a copy sent after such a crash would be forwarded once more.
//!   A clean shutdown writes them (`SqliteStore::close` flushes first).
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
/// Records committed within this time of each other are written together.
pub const FLUSH_AFTER: Duration = Duration::from_millis(20);

pub struct SqliteReplay {
    inner: Arc<Inner>,
    tasks: [tokio::task::JoinHandle<()>; 2],
}

struct Inner {
    /// The spool writer's queue: record batches and sweeps join its group
    /// commit.
    jobs: Jobs,
    /// Lookups only; one at a time (each is a primary-key read).
    reader: Mutex<Connection>,
    /// Keys being forwarded, and keys whose record has not landed yet.
    marks: Mutex<HashMap<ReplayKey, Mark>>,
    /// Records committed and not yet handed to the writer.
    pending: Mutex<Vec<Record>>,
    /// Wakes the flusher when `pending` stops being empty.
    flush: tokio::sync::Notify,
    /// `hookgate_replay_entries`: rows in the table (counted at start and
    /// at every sweep, plus rows added since) and marks in memory.
    entries: OnceLock<Gauge>,
}

impl Drop for SqliteReplay {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

impl SqliteReplay {
    /// Opens a read connection on the spool file at `path`; records go
    /// through `jobs`. Starts the flusher and the sweeper on the current
    /// runtime (there must be one).
    pub fn open(path: &Path, jobs: Jobs) -> Result<SqliteReplay, OpenError> {
        let rt = tokio::runtime::Handle::try_current().map_err(|e| OpenError {
            path: path.to_path_buf(),
            message: format!("the replay store needs a running runtime: {e}"),
        })?;
        let reader = super::sqlite::connect(path)?;
        let inner = Arc::new(Inner {
            jobs,
            reader: Mutex::new(reader),
            marks: Mutex::new(HashMap::new()),
            pending: Mutex::new(Vec::new()),
            flush: tokio::sync::Notify::new(),
            entries: OnceLock::new(),
        });
        let sweeper = rt.spawn({
            let inner = inner.clone();
            async move {
                let mut tick = tokio::time::interval(SWEEP_EVERY);
                loop {
                    tick.tick().await;
                    inner.sweep().await;
                }
            }
        });
        let flusher = rt.spawn({
            let inner = inner.clone();
            async move {
                loop {
                    inner.flush.notified().await;
                    tokio::time::sleep(FLUSH_AFTER).await;
                    if let Some(written) = inner.write_pending() {
                        inner.landed(written.await);
                    }
                }
            }
        });
        Ok(SqliteReplay {
            inner,
            tasks: [sweeper, flusher],
        })
    }

    /// Hands the records not yet written to the writer now, without
    /// waiting (a clean shutdown, before the writer's queue closes).
    pub fn flush_now(&self) {
        drop(self.inner.write_pending());
    }
}

fn storage(e: rusqlite::Error) -> StoreError {
    StoreError::Storage(e.to_string())
}

/// A committed key, its expiry, and whether its lookup found a row (an
/// expired one, renewed in place: not a new entry for the gauge).
type Record = (ReplayKey, i64, bool);

/// A written batch: each record, its expiry and whether its row is new.
type Written = Result<Vec<(ReplayKey, i64, bool)>, (Vec<Record>, StoreError)>;

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
    /// again meanwhile (a window shorter than the write's wait).
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

    /// Queues a record for the next batch.
    fn record(&self, key: ReplayKey, expires: i64, row: bool) {
        let mut pending = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        pending.push((key, expires, row));
        if pending.len() == 1 {
            self.flush.notify_one();
        }
    }

    /// Takes the pending records and queues their write on the writer
    /// thread (sent now); `None` when there were none.
    fn write_pending(&self) -> Option<impl std::future::Future<Output = Written>> {
        let batch = std::mem::take(&mut *self.pending.lock().unwrap_or_else(|e| e.into_inner()));
        if batch.is_empty() {
            return None;
        }
        let keys = batch.clone();
        let write = self.jobs.with_conn(move |w| {
            let conn = w.conn();
            // One statement per row: an expired row not yet swept is
            // renewed in place (measured: half the writer's cost of an
            // UPDATE that misses and then an INSERT; README).
            let mut upsert = conn
                .prepare_cached(
                    "INSERT INTO hookgate_replay(key, expires_ms) VALUES (?1, ?2)
                     ON CONFLICT(key) DO UPDATE SET expires_ms = excluded.expires_ms",
                )
                .map_err(storage)?;
            let mut written = Vec::with_capacity(batch.len());
            for (key, expires, existed) in batch {
                upsert
                    .execute(params![&key.as_bytes()[..], expires])
                    .map_err(storage)?;
                written.push((key, expires, !existed));
            }
            Ok(written)
        });
        Some(async move { write.await.map_err(|e| (keys, e)) })
    }

    /// A batch's write returned: its rows count, its marks go.
    fn landed(&self, written: Written) {
        match written {
            Ok(rows) => {
                for (key, expires, added) in rows {
                    if added {
                        self.gauge_add(1);
                    }
                    self.recorded_landed(&key, expires);
                }
            }
            Err((keys, e)) => {
                tracing::warn!(error = %e, records = keys.len(), "replay store: recording deliveries failed; a copy of one of them would be forwarded again");
                for (key, expires, _) in keys {
                    self.recorded_landed(&key, expires);
                }
            }
        }
    }

    /// The expiry of `key`'s row, if it has one.
    fn recorded(&self, key: &ReplayKey) -> Result<Option<i64>, rusqlite::Error> {
        let conn = self.reader.lock().unwrap_or_else(|e| e.into_inner());
        let expires = conn
            .prepare_cached("SELECT expires_ms FROM hookgate_replay WHERE key = ?1")?
            .query_row(params![&key.as_bytes()[..]], |r| r.get(0))
            .optional()?;
        Ok(expires)
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
    /// Being forwarded (a copy now is answered 409); whether the key has
    /// a row (an expired one).
    InFlight { row: bool },
    /// Committed, its row not yet written: recorded until this Unix ms.
    Recording(i64),
}

impl ReplayStore for SqliteReplay {
    fn begin(&self, key: &ReplayKey) -> Lookup<'_> {
        {
            let mut marks = self.inner.marks();
            match marks.get(key) {
                Some(Mark::InFlight { .. }) => return Lookup::Ready(Seen::InFlight),
                Some(Mark::Recording(expires)) if *expires > now_ms() => {
                    return Lookup::Ready(Seen::Duplicate)
                }
                // A window shorter than the write's wait: the row lands
                // expired; nothing is in flight, so look it up as usual.
                Some(Mark::Recording(_)) | None => {}
            }
            // Marked before the read: a concurrent copy now sees it in
            // flight, so of identical requests only this one reads on.
            if marks.insert(*key, Mark::InFlight { row: false }).is_none() {
                self.inner.gauge_add(1);
            }
        }
        let seen = match self.inner.recorded(key) {
            Ok(Some(expires)) if expires > now_ms() => Seen::Duplicate,
            Ok(Some(_)) => {
                // Expired, not yet swept: the commit renews it.
                if let Some(mark) = self.inner.marks().get_mut(key) {
                    *mark = Mark::InFlight { row: true };
                }
                Seen::Fresh
            }
            Ok(None) => Seen::Fresh,
            Err(e) => {
                tracing::warn!(error = %e, "replay store: cannot read the spool file; forwarding without the replay check");
                Seen::Fresh
            }
        };
        if seen == Seen::Duplicate {
            self.inner.unmark(key);
        }
        Lookup::Ready(seen)
    }

    fn commit(&self, key: &ReplayKey, window: Duration) {
        let window_ms = i64::try_from(window.as_millis()).unwrap_or(i64::MAX / 2);
        let expires = now_ms().saturating_add(window_ms.max(1));
        let row = match self.inner.marks().get_mut(key) {
            Some(mark) => {
                let row = matches!(mark, Mark::InFlight { row: true });
                *mark = Mark::Recording(expires);
                row
            }
            // Only the claim's owner commits, and its mark stays until
            // then; nothing to record otherwise.
            None => return,
        };
        self.inner.record(*key, expires, row);
    }

    fn forget(&self, key: &ReplayKey) {
        let mut marks = self.inner.marks();
        if matches!(marks.get(key), Some(Mark::InFlight { .. })) {
            marks.remove(key);
            drop(marks);
            self.inner.gauge_add(-1);
        }
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

    /// What the flusher does, now: the pending records written, their
    /// marks dropped.
    async fn settle(store: &SqliteStore) {
        let sqlite = store.replay.get().cloned().flatten().unwrap();
        if let Some(written) = sqlite.inner.write_pending() {
            sqlite.inner.landed(written.await);
        }
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
        settle(&store).await;
        assert_eq!(rows(&store).await, 2);
        assert!(store
            .replay
            .get()
            .cloned()
            .flatten()
            .unwrap()
            .inner
            .marks()
            .is_empty());
        // Marks became rows one for one: two deliveries throughout.
        assert_eq!(gauge.get(), 2);
        assert_eq!(
            claim(replay.as_ref(), k(2), HOUR).await.err(),
            Some(Repeat::Duplicate)
        );
        // Not yet written when the store closes: close writes it.
        claim(replay.as_ref(), k(4), HOUR).await.unwrap().commit();
        drop(replay);
        store.close();
        drop(store);

        let store = SqliteStore::open(&path, 1 << 20, false).unwrap();
        let replay = store.replay_store().unwrap();
        for n in [1, 2, 4] {
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
        settle(&store).await;
        assert_eq!(rows(&store).await, 1);
        tokio::time::sleep(Duration::from_millis(30)).await;
        claim(replay.as_ref(), k(1), window).await.unwrap().commit();
        settle(&store).await;
        assert_eq!(rows(&store).await, 1);
        tokio::time::sleep(Duration::from_millis(30)).await;
        let sqlite = store.replay.get().cloned().flatten().unwrap();
        sqlite.inner.sweep().await;
        assert_eq!(rows(&store).await, 0);
        store.close();
    }
}
