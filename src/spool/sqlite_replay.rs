//! The replay defence's store (SPEC §10) in the SQLite spool file, so a
//! delivery handed over before a restart is still a duplicate after it.
//! The sibling of `postgres_replay.rs`, for the embedded backend:
//!
//! - In-flight marks live in memory: one process owns the file, so a
//!   repeat while the first copy is being forwarded is answered 409 without
//!   touching the disk, and a crash leaves no stale mark behind.
//! - [`ReplayStore::begin`] marks the key, then, only when the in-memory
//!   filter of the rows' key prefixes has its prefix (a delivery seen for
//!   the first time usually does not), reads `hookgate_replay` on its own
//!   connection, inline: a primary-key read of a 16-byte key from a WAL
//!   file (readers never wait for the writer) takes microseconds, less
//!   than handing it to the blocking pool did (measured: README).
//! - `commit` does not write at once: records are gathered for
//!   [`FLUSH_AFTER`] and written in one job of the spool's writer thread
//!   (one upsert per row, one transaction and one fsync for the lot),
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

use std::collections::{HashMap, HashSet};
use std::hash::{BuildHasherDefault, Hasher};
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
    /// Marks and the row filter, under one lock (the lookup takes it once).
    /// Shared with the sweep's job on the writer thread.
    state: Arc<Mutex<State>>,
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
        let rows = load_rows(&reader).map_err(|e| OpenError {
            path: path.to_path_buf(),
            message: format!("cannot read the replay table: {e}"),
        })?;
        let inner = Arc::new(Inner {
            jobs,
            reader: Mutex::new(reader),
            state: Arc::new(Mutex::new(State {
                marks: HashMap::default(),
                rows,
                trusted: true,
            })),
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
    fn state(&self) -> MutexGuard<'_, State> {
        lock(&self.state)
    }

    fn unmark(&self, key: &ReplayKey) {
        if self.state().marks.remove(key).is_some() {
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

    /// A batch's write returned: its rows count, their prefixes enter the
    /// filter before their marks go (under one lock: a lookup never sees
    /// neither).
    fn landed(&self, written: Written) {
        let (records, added) = match written {
            Ok(rows) => {
                let added = rows.iter().filter(|(_, _, new)| *new).count();
                (rows, added)
            }
            Err((keys, e)) => {
                tracing::warn!(error = %e, records = keys.len(), "replay store: recording deliveries failed; a copy of one of them would be forwarded again");
                // Their prefixes still enter the filter: whatever the
                // failed write left behind, the filter stays a superset of
                // the rows (an extra prefix only costs a read).
                (keys, 0)
            }
        };
        let mut dropped = 0usize;
        {
            let mut state = self.state();
            for (key, expires, _) in records {
                state.rows.insert(prefix(key.as_bytes()));
                // Unless the key was claimed again meanwhile (a window
                // shorter than the write's wait).
                if matches!(state.marks.get(&key), Some(Mark::Recording(e)) if *e == expires) {
                    state.marks.remove(&key);
                    dropped += 1;
                }
            }
        }
        let delta = i64::try_from(added).unwrap_or(i64::MAX) - i64::try_from(dropped).unwrap_or(0);
        self.gauge_add(delta);
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

    /// Deletes expired rows, drops their prefixes from the filter, and
    /// recounts the table for the gauge.
    async fn sweep(&self) {
        let now = now_ms();
        let state = self.state.clone();
        let swept = self
            .jobs
            .with_conn(move |w| {
                let conn = w.conn();
                let gone: Vec<u64> = conn
                    .prepare("DELETE FROM hookgate_replay WHERE expires_ms <= ?1 RETURNING key")
                    .and_then(|mut delete| {
                        delete
                            .query_map(params![now], |r| r.get::<_, Vec<u8>>(0))?
                            .map(|key| key.map(|k| prefix(&k)))
                            .collect()
                    })
                    .map_err(storage)?;
                let deleted = gone.len();
                // A prefix goes only when no row keeps it (two keys may share
                // one). Decided and applied here, on the writer thread, so no
                // record written after this job can land in between; a
                // rollback of this commit is repaired by the caller.
                let mut kept = conn
                    .prepare_cached(
                        "SELECT 1 FROM hookgate_replay WHERE key BETWEEN ?1 AND ?2 LIMIT 1",
                    )
                    .map_err(storage)?;
                let mut unused = Vec::with_capacity(gone.len());
                for p in gone {
                    let (lo, hi) = prefix_range(p);
                    if !kept.exists(params![&lo[..], &hi[..]]).map_err(storage)? {
                        unused.push(p);
                    }
                }
                {
                    let mut state = lock(&state);
                    for p in &unused {
                        state.rows.remove(p);
                    }
                }
                let rows: i64 = conn
                    .query_row("SELECT count(*) FROM hookgate_replay", [], |r| r.get(0))
                    .map_err(storage)?;
                Ok((deleted, rows))
            })
            .await;
        match swept {
            Ok((deleted, rows)) => {
                if let Some(g) = self.entries.get() {
                    let marks = i64::try_from(self.state().marks.len()).unwrap_or(i64::MAX);
                    g.set(rows.saturating_add(marks));
                }
                tracing::debug!(deleted, rows, "replay store: expired entries removed");
            }
            Err(e) => {
                tracing::warn!(error = %e, "replay store: removing expired entries failed; retried in a minute");
                // The deletes may have been rolled back after their
                // prefixes left the filter: put back every row's prefix.
                let rows = load_rows(&self.reader.lock().unwrap_or_else(|e| e.into_inner()));
                match rows {
                    Ok(rows) => {
                        let mut state = self.state();
                        state.rows.extend(rows);
                        state.trusted = true;
                    }
                    Err(e) => {
                        // No filter can be trusted now: every lookup reads.
                        tracing::warn!(error = %e, "replay store: cannot reload the row filter; every lookup reads the file");
                        self.state().trusted = false;
                    }
                }
            }
        }
    }
}

/// What [`SqliteReplay::begin`] consults before the file.
struct State {
    /// Keys being forwarded, and keys whose record has not landed yet.
    marks: HashMap<ReplayKey, Mark, DigestBuild>,
    /// The first 8 bytes of every row's key (a superset: a prefix may
    /// outlive its row, never the other way round). A key whose prefix is
    /// absent has no row, so its lookup needs no read: the common case, a
    /// delivery seen for the first time (measured: README). Loaded at open
    /// (this process is the table's only writer), grown as records land,
    /// shrunk by the sweep. About 10–21 bytes per row (8 plus hashbrown's
    /// control byte, at 7/8 to 7/16 load).
    rows: HashSet<u64, DigestBuild>,
    /// False while the filter may lack a row's prefix (a sweep's rollback
    /// it could not repair yet): lookups then always read the file.
    trusted: bool,
}

impl State {
    /// Whether `key` may have a row.
    fn may_have_row(&self, key: &ReplayKey) -> bool {
        !self.trusted || self.rows.contains(&prefix(key.as_bytes()))
    }
}

fn lock(state: &Mutex<State>) -> MutexGuard<'_, State> {
    // Consistent after every operation (a superset filter, marks the
    // requests own): keep serving.
    state.lock().unwrap_or_else(|e| e.into_inner())
}

/// The filter's entry for a key: its first 8 bytes (0 for a row too short
/// to be a key, which no lookup can match anyway).
fn prefix(key: &[u8]) -> u64 {
    key.get(..8)
        .and_then(|b| b.try_into().ok())
        .map(u64::from_be_bytes)
        .unwrap_or(0)
}

/// The smallest and the largest 16-byte key with prefix `p` (BLOBs compare
/// bytewise, so every key with this prefix lies between them).
fn prefix_range(p: u64) -> ([u8; 16], [u8; 16]) {
    let mut lo = [0u8; 16];
    let mut hi = [0xffu8; 16];
    lo[..8].copy_from_slice(&p.to_be_bytes());
    hi[..8].copy_from_slice(&p.to_be_bytes());
    (lo, hi)
}

/// Every row's prefix, for the filter.
fn load_rows(conn: &Connection) -> Result<HashSet<u64, DigestBuild>, rusqlite::Error> {
    let mut select = conn.prepare("SELECT key FROM hookgate_replay")?;
    let rows = select.query_map([], |r| r.get::<_, Vec<u8>>(0))?;
    rows.map(|key| key.map(|k| prefix(&k))).collect()
}

/// Hashes a [`ReplayKey`] (or its prefix) by its leading bytes. The keys are
/// SHA-256 digests, already uniform, and only a valid signature puts one
/// in these maps, so SipHash's defence against chosen keys buys nothing
/// here and costs more than the rest of a map operation (measured: README).
#[derive(Default)]
struct DigestHasher(u64);

type DigestBuild = BuildHasherDefault<DigestHasher>;

impl Hasher for DigestHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        // A `[u8; 16]` arrives as its length, then its bytes: fold in
        // every 8-byte word (a plain multiply-xor, cheap next to SipHash).
        for word in bytes.chunks(8) {
            let mut w = [0u8; 8];
            w[..word.len()].copy_from_slice(word);
            self.write_u64(u64::from_le_bytes(w));
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = (self.0.rotate_left(26) ^ n).wrapping_mul(0x9e37_79b9_7f4a_7c15);
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
        let may_have_row = {
            let mut state = self.inner.state();
            match state.marks.get(key) {
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
            if state
                .marks
                .insert(*key, Mark::InFlight { row: false })
                .is_none()
            {
                self.inner.gauge_add(1);
            }
            state.may_have_row(key)
        };
        if !may_have_row {
            return Lookup::Ready(Seen::Fresh);
        }
        let seen = match self.inner.recorded(key) {
            Ok(Some(expires)) if expires > now_ms() => Seen::Duplicate,
            Ok(Some(_)) => {
                // Expired, not yet swept: the commit renews it.
                if let Some(mark) = self.inner.state().marks.get_mut(key) {
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
        let row = match self.inner.state().marks.get_mut(key) {
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
        let mut state = self.inner.state();
        if matches!(state.marks.get(key), Some(Mark::InFlight { .. })) {
            state.marks.remove(key);
            drop(state);
            self.inner.gauge_add(-1);
        }
    }

    fn track(&self, entries: Gauge) {
        if self.inner.entries.set(entries.clone()).is_ok() {
            let marks = i64::try_from(self.inner.state().marks.len()).unwrap_or(i64::MAX);
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
            .state()
            .marks
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

    fn filter(store: &SqliteStore) -> Arc<Mutex<State>> {
        store
            .replay
            .get()
            .cloned()
            .flatten()
            .unwrap()
            .inner
            .state
            .clone()
    }

    /// The row filter: a recorded key's prefix enters when its row lands
    /// and is loaded again on reopen; an unseen key is fresh without a
    /// read; the sweep drops a prefix with its last row, and keeps one that
    /// another row (a key sharing its first 8 bytes) still has.
    #[tokio::test]
    async fn row_filter_follows_the_table() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.db");
        let store = SqliteStore::open(&path, 1 << 20, true).unwrap();
        let replay = store.replay_store().unwrap();
        let p1 = prefix(k(1).as_bytes());
        claim(replay.as_ref(), k(1), HOUR).await.unwrap().commit();
        assert!(!lock(&filter(&store)).rows.contains(&p1));
        settle(&store).await;
        assert!(lock(&filter(&store)).rows.contains(&p1));
        drop(replay);
        store.close();
        drop(store);

        let store = SqliteStore::open(&path, 1 << 20, false).unwrap();
        let replay = store.replay_store().unwrap();
        assert_eq!(lock(&filter(&store)).rows.len(), 1);
        assert!(lock(&filter(&store)).rows.contains(&p1));
        assert_eq!(
            claim(replay.as_ref(), k(1), HOUR).await.err(),
            Some(Repeat::Duplicate)
        );
        let (window, short) = (Duration::from_millis(20), k(2));
        let p2 = prefix(short.as_bytes());
        claim(replay.as_ref(), short, window)
            .await
            .unwrap()
            .commit();
        settle(&store).await;
        // A second row with k(2)'s prefix and another tail, long-lived.
        let (_, hi) = prefix_range(p2);
        store
            .with_conn(move |w| {
                w.conn()
                    .execute(
                        "INSERT INTO hookgate_replay(key, expires_ms) VALUES (?1, ?2)",
                        params![&hi[..], i64::MAX],
                    )
                    .map_err(storage)
            })
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(30)).await;
        let sqlite = store.replay.get().cloned().flatten().unwrap();
        sqlite.inner.sweep().await;
        assert_eq!(rows(&store).await, 2, "k(1) and the long-lived twin stay");
        assert!(lock(&filter(&store)).rows.contains(&p2));
        // The twin gone, k(2) recorded again and expired: the sweep drops it.
        store
            .with_conn(move |w| {
                w.conn()
                    .execute(
                        "DELETE FROM hookgate_replay WHERE key = ?1",
                        params![&hi[..]],
                    )
                    .map_err(storage)
            })
            .await
            .unwrap();
        claim(replay.as_ref(), short, window)
            .await
            .unwrap()
            .commit();
        settle(&store).await;
        tokio::time::sleep(Duration::from_millis(30)).await;
        sqlite.inner.sweep().await;
        assert!(!lock(&filter(&store)).rows.contains(&p2));
        assert!(lock(&filter(&store)).rows.contains(&p1));
        assert_eq!(rows(&store).await, 1);
        // No prefix, no read: a row written behind the store's back (which
        // nothing does: this process is the table's only writer) is not
        // consulted, so the filter alone answered.
        let k3 = k(3);
        store
            .with_conn(move |w| {
                w.conn()
                    .execute(
                        "INSERT INTO hookgate_replay(key, expires_ms) VALUES (?1, ?2)",
                        params![&k3.as_bytes()[..], i64::MAX],
                    )
                    .map_err(storage)
            })
            .await
            .unwrap();
        assert!(!lock(&filter(&store)).may_have_row(&k3));
        claim(replay.as_ref(), k3, HOUR).await.unwrap();
        store.close();
    }

    /// The hasher spreads digests and tells keys apart (any two of 1000
    /// keys collide in 64 bits only by accident: none here).
    #[test]
    fn digest_hasher_distinguishes_keys() {
        use std::hash::BuildHasher;
        let build = DigestBuild::default();
        let hashes: HashSet<u64> = (0..=255u8)
            .flat_map(|a| [0u8, 1, 2, 3].map(move |b| key("r", Verified::Mac(&[a, b]))))
            .map(|k| build.hash_one(k))
            .collect();
        assert_eq!(hashes.len(), 1024);
    }
    /// A batch of 45 records writes every row, each a duplicate afterwards,
    /// also after a reopen.
    #[tokio::test]
    async fn a_large_batch_is_written_whole() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.db");
        let store = SqliteStore::open(&path, 1 << 20, true).unwrap();
        let replay = store.replay_store().unwrap();
        for n in 0..45 {
            claim(replay.as_ref(), k(n), HOUR).await.unwrap().commit();
        }
        settle(&store).await;
        assert_eq!(rows(&store).await, 45);
        drop(replay);
        store.close();
        drop(store);
        let store = SqliteStore::open(&path, 1 << 20, false).unwrap();
        let replay = store.replay_store().unwrap();
        for n in 0..45 {
            assert_eq!(
                claim(replay.as_ref(), k(n), HOUR).await.err(),
                Some(Repeat::Duplicate)
            );
        }
        store.close();
    }
}
