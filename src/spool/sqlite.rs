//! The embedded spool: one SQLite file (`rusqlite`, bundled SQLite), WAL,
//! `synchronous=FULL`, mode 0600.
//!
//! One writer thread owns the connection. Every operation is a job sent to
//! it; the thread takes all jobs waiting at that moment, runs them in one
//! transaction and commits once, so concurrent requests share one fsync
//! (group commit). Each caller is answered only after that commit returned:
//! a `put` answered `Ok` is on disk. A second thread checkpoints the WAL
//! into the database every second (PASSIVE: it never blocks the writer), so
//! no request waits for a checkpoint.
//!
//! Later parts that keep their own rows in the spool's database (the replay
//! defence, SPEC §10) get the same writer through [`SqliteStore::with_conn`]:
//! their tables go next to `webhook`, created by their own module, and their
//! writes share the group commit.

use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use rusqlite::{params, Connection, OpenFlags, OptionalExtension};
use tokio::sync::oneshot;

use super::{
    NewRecord, Note, Record, RecordState, RouteStats, Selection, Stats, Store, StoreError,
    StoreFuture,
};

/// `PRAGMA application_id`: marks the file as a hookgate spool ("hkgt").
const APPLICATION_ID: i64 = 0x686b_6774;
/// `PRAGMA user_version`: the schema this build reads and writes.
/// 2: `hookgate_replay` (SPEC §10); a version 1 file is migrated in place.
pub const SCHEMA_VERSION: i64 = 2;
/// Jobs committed together at most (bounds one transaction's latency).
const MAX_BATCH: usize = 512;

const SCHEMA: &str = "
CREATE TABLE webhook(
    seq             INTEGER PRIMARY KEY,   -- arrival order: drain oldest first
    id              TEXT NOT NULL UNIQUE,  -- X-Hookgate-Delivery
    route           TEXT NOT NULL,
    received_ms     INTEGER NOT NULL,
    method          TEXT NOT NULL,
    target          TEXT NOT NULL,         -- path and query as forwarded
    headers         BLOB NOT NULL,         -- wire form, one 'name: value' line each, as forwarded
    body            BLOB NOT NULL,
    bytes           INTEGER NOT NULL,      -- headers + body: counts against max_bytes
    state           TEXT NOT NULL,         -- 'pending' | 'dead'
    attempts        INTEGER NOT NULL,
    next_attempt_ms INTEGER NOT NULL,
    last_status     INTEGER,
    last_error      TEXT
);
CREATE INDEX webhook_route ON webhook(route, state, seq);
-- Covers the per-second stats (counts, bytes, oldest) without reading bodies.
CREATE INDEX webhook_stats ON webhook(route, state, received_ms, bytes);
";

/// Version 1 → 2: adds the replay table; spooled records stay as they are.
const MIGRATE_1_TO_2: &str = super::sqlite_replay::SCHEMA;

const COLUMNS: &str = "id, route, received_ms, method, target, headers, body, state, attempts, next_attempt_ms, last_status, last_error";

/// Writer-thread state: the connection and the byte budget.
pub struct Writer {
    conn: Connection,
    /// Stored bytes as of the last statement (resynchronised from the table
    /// after a failed commit and on every `stats`).
    used: u64,
    capacity: Arc<AtomicU64>,
}

type Reply = Box<dyn FnOnce(Result<(), StoreError>) + Send>;
/// A write: runs in the transaction; returns its reply (sent after the
/// commit) and whether it failed at the storage level.
type WriteJob = Box<dyn FnOnce(&mut Writer) -> (Reply, bool) + Send>;

/// Work for the writer thread. Reads run first, outside the transaction,
/// and are answered at once (they see committed rows only); writes run in
/// the batch's transaction and are answered after its commit.
enum Job {
    Read(Box<dyn FnOnce(&mut Writer) + Send>),
    Write(WriteJob),
}

/// Group-commit counters, for the shutdown log line and benchmarks.
#[derive(Debug, Default)]
pub struct CommitStats {
    pub commits: AtomicU64,
    pub jobs: AtomicU64,
    pub max_batch: AtomicU64,
}

/// The SQLite [`Store`].
pub struct SqliteStore {
    path: PathBuf,
    jobs: Jobs,
    writer: Mutex<Option<JoinHandle<()>>>,
    checkpointer: Mutex<Option<(mpsc::Sender<()>, JoinHandle<()>)>>,
    capacity: Arc<AtomicU64>,
    pub commit_stats: Arc<CommitStats>,
    /// The replay store in this file, made on first use (it starts a task).
    pub(super) replay: std::sync::OnceLock<Option<Arc<super::sqlite_replay::SqliteReplay>>>,
}

/// The writer's job queue, shared with the replay store so its writes join
/// the group commit; `close` empties it for every holder at once (the
/// writer thread ends when the last sender is gone).
#[derive(Clone)]
pub struct Jobs(Arc<Mutex<Option<mpsc::Sender<Job>>>>);

impl std::fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteStore")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

/// Opening failed; the message names the file.
#[derive(Debug, thiserror::Error)]
#[error("{}: {message}", path.display())]
pub struct OpenError {
    pub path: PathBuf,
    pub message: String,
}

fn open_error(path: &Path, message: impl Into<String>) -> OpenError {
    OpenError {
        path: path.to_path_buf(),
        message: message.into(),
    }
}

impl SqliteStore {
    /// Opens (creating it with mode 0600 when `create` and missing) and
    /// checks the spool file. A file that is not a hookgate spool, another
    /// version's, or corrupt is refused, never replaced.
    pub fn open(path: &Path, capacity: u64, create: bool) -> Result<SqliteStore, OpenError> {
        let exists = path.exists();
        if !exists && !create {
            return Err(open_error(
                path,
                "no spool database here (hookgate run creates it); check [spool] path and the working directory",
            ));
        }
        if !exists {
            std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(path)
                .map_err(|e| open_error(path, format!("cannot create the spool file: {e}")))?;
        }
        let conn = connect(path)?;
        let fresh = prepare(&conn, path)?;
        if exists && !fresh {
            // An existing file that was made with a looser mode is tightened.
            if let Ok(meta) = std::fs::metadata(path) {
                if meta.permissions().mode() & 0o077 != 0 {
                    let _ = std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600));
                }
            }
        }
        let used: i64 = conn
            .query_row("SELECT coalesce(sum(bytes), 0) FROM webhook", [], |r| {
                r.get(0)
            })
            .map_err(|e| open_error(path, format!("cannot read the spool: {e}")))?;
        let capacity = Arc::new(AtomicU64::new(capacity));
        let mut writer = Writer {
            conn,
            used: u64::try_from(used).unwrap_or(0),
            capacity: capacity.clone(),
        };
        let commit_stats = Arc::new(CommitStats::default());
        let (tx, rx) = mpsc::channel::<Job>();
        let stats = commit_stats.clone();
        let writer_thread = std::thread::Builder::new()
            .name("spool-writer".into())
            .spawn(move || write_loop(&mut writer, rx, &stats))
            .map_err(|e| open_error(path, format!("cannot start the writer thread: {e}")))?;
        let checkpointer = spawn_checkpointer(path)?;
        Ok(SqliteStore {
            path: path.to_path_buf(),
            jobs: Jobs(Arc::new(Mutex::new(Some(tx)))),
            writer: Mutex::new(Some(writer_thread)),
            checkpointer: Mutex::new(Some(checkpointer)),
            capacity,
            commit_stats,
            replay: std::sync::OnceLock::new(),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Runs `f` on the writer thread inside the next group commit; its
    /// result is returned once that commit returned. For modules that keep
    /// their own tables in this database.
    pub fn with_conn<T, F>(&self, f: F) -> StoreFuture<'static, T>
    where
        T: Send + 'static,
        F: FnOnce(&mut Writer) -> Result<T, StoreError> + Send + 'static,
    {
        self.jobs.with_conn(f)
    }

    /// Runs `f` on the writer thread outside any transaction and returns
    /// its result at once: for reads, which need not wait for a commit.
    pub fn read<T, F>(&self, f: F) -> StoreFuture<'static, T>
    where
        T: Send + 'static,
        F: FnOnce(&mut Writer) -> Result<T, StoreError> + Send + 'static,
    {
        self.jobs.read(f)
    }

    /// Finishes the queued jobs, stops both threads and closes the file.
    pub fn close(&self) {
        // Records the replay store has not handed over yet go first, into
        // the queue the writer finishes below.
        if let Some(Some(replay)) = self.replay.get() {
            replay.flush_now();
        }
        self.jobs.0.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(t) = self.writer.lock().unwrap_or_else(|e| e.into_inner()).take() {
            let _ = t.join();
        }
        if let Some((stop, t)) = self
            .checkpointer
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
        {
            drop(stop);
            let _ = t.join();
        }
        let s = &self.commit_stats;
        tracing::debug!(
            path = %self.path.display(),
            commits = s.commits.load(Ordering::Relaxed),
            writes = s.jobs.load(Ordering::Relaxed),
            max_batch = s.max_batch.load(Ordering::Relaxed),
            "spool closed"
        );
    }
}

impl Jobs {
    /// Runs `f` on the writer thread inside the next group commit; its
    /// result is returned once that commit returned. For modules that keep
    /// their own tables in this database.
    pub fn with_conn<T, F>(&self, f: F) -> StoreFuture<'static, T>
    where
        T: Send + 'static,
        F: FnOnce(&mut Writer) -> Result<T, StoreError> + Send + 'static,
    {
        let (tx, rx) = oneshot::channel();
        let job = Job::Write(Box::new(move |w: &mut Writer| {
            let result = f(w);
            let failed = matches!(result, Err(StoreError::Storage(_)));
            let reply: Reply = Box::new(move |commit: Result<(), StoreError>| {
                let _ = tx.send(commit.and(result));
            });
            (reply, failed)
        }));
        self.submit(job, rx)
    }

    /// Runs `f` on the writer thread outside any transaction and returns
    /// its result at once: for reads, which need not wait for a commit.
    pub fn read<T, F>(&self, f: F) -> StoreFuture<'static, T>
    where
        T: Send + 'static,
        F: FnOnce(&mut Writer) -> Result<T, StoreError> + Send + 'static,
    {
        let (tx, rx) = oneshot::channel();
        let job = Job::Read(Box::new(move |w: &mut Writer| {
            let _ = tx.send(f(w));
        }));
        self.submit(job, rx)
    }

    fn submit<T: Send + 'static>(
        &self,
        job: Job,
        rx: oneshot::Receiver<Result<T, StoreError>>,
    ) -> StoreFuture<'static, T> {
        let sent = self
            .0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
            .map(|jobs| jobs.send(job).is_ok())
            .unwrap_or(false);
        Box::pin(async move {
            if !sent {
                return Err(StoreError::Storage("spool is closed".into()));
            }
            rx.await.unwrap_or_else(|_| {
                Err(StoreError::Storage(
                    "spool write not done (the transaction could not start)".into(),
                ))
            })
        })
    }
}

impl Drop for SqliteStore {
    fn drop(&mut self) {
        self.jobs.0.lock().unwrap_or_else(|e| e.into_inner()).take();
        self.checkpointer
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
    }
}

pub(super) fn connect(path: &Path) -> Result<Connection, OpenError> {
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_WRITE
            | OpenFlags::SQLITE_OPEN_NO_MUTEX
            | OpenFlags::SQLITE_OPEN_URI,
    )
    .map_err(|e| open_error(path, format!("cannot open the spool: {e}")))?;
    // The CLI and the gateway share the file: wait for the other's commit
    // instead of failing with "database is locked".
    conn.busy_timeout(Duration::from_secs(5))
        .map_err(|e| open_error(path, e.to_string()))?;
    Ok(conn)
}

/// Checks the file and sets it up; true when the schema was just created.
fn prepare(conn: &Connection, path: &Path) -> Result<bool, OpenError> {
    let not_ours = |e: rusqlite::Error| {
        open_error(
            path,
            format!("not a readable SQLite spool ({e}); move it away or point [spool] path elsewhere — hookgate never replaces it"),
        )
    };
    let app_id: i64 = conn
        .query_row("PRAGMA application_id", [], |r| r.get(0))
        .map_err(not_ours)?;
    let version: i64 = conn
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .map_err(not_ours)?;
    let tables: i64 = conn
        .query_row("SELECT count(*) FROM sqlite_schema", [], |r| r.get(0))
        .map_err(not_ours)?;
    let fresh = tables == 0 && app_id == 0 && version == 0;
    if !fresh && app_id != APPLICATION_ID {
        return Err(open_error(
            path,
            "is an SQLite database but not a hookgate spool; point [spool] path at another file",
        ));
    }
    if !fresh && version != SCHEMA_VERSION && version != 1 {
        return Err(open_error(
            path,
            format!("spool schema version {version} was written by another hookgate version (this one reads version {SCHEMA_VERSION}); use the matching hookgate binary"),
        ));
    }
    conn.execute_batch(
        "PRAGMA journal_mode=WAL; PRAGMA synchronous=FULL; PRAGMA wal_autocheckpoint=0; PRAGMA journal_size_limit=67108864;",
    )
    .map_err(not_ours)?;
    if fresh {
        conn.execute_batch(&format!(
            "BEGIN; {SCHEMA} {MIGRATE_1_TO_2} PRAGMA application_id={APPLICATION_ID}; PRAGMA user_version={SCHEMA_VERSION}; COMMIT;"
        ))
        .map_err(|e| open_error(path, format!("cannot create the spool schema: {e}")))?;
    } else {
        if version == 1 {
            // One transaction: a crash leaves the file at version 1, and
            // the next start migrates again.
            conn.execute_batch(&format!(
                "BEGIN IMMEDIATE; {MIGRATE_1_TO_2} PRAGMA user_version=2; COMMIT;"
            ))
            .map_err(|e| {
                open_error(
                    path,
                    format!("cannot migrate the spool from schema version 1 to 2: {e}"),
                )
            })?;
        }
        let check: String = conn
            .query_row("PRAGMA quick_check", [], |r| r.get(0))
            .map_err(not_ours)?;
        if check != "ok" {
            return Err(open_error(
                path,
                format!("spool is corrupt (quick_check: {check}); move it away and inspect it with sqlite3 — hookgate never replaces it"),
            ));
        }
    }
    Ok(fresh)
}

fn spawn_checkpointer(path: &Path) -> Result<(mpsc::Sender<()>, JoinHandle<()>), OpenError> {
    let conn = connect(path)?;
    let (stop, stopped) = mpsc::channel::<()>();
    let thread = std::thread::Builder::new()
        .name("spool-checkpoint".into())
        .spawn(move || {
            while let Err(mpsc::RecvTimeoutError::Timeout) =
                stopped.recv_timeout(Duration::from_secs(1))
            {
                if let Err(e) = conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(())) {
                    tracing::warn!(error = %e, "spool checkpoint failed; will try again");
                }
            }
        })
        .map_err(|e| open_error(path, format!("cannot start the checkpoint thread: {e}")))?;
    Ok((stop, thread))
}

/// Takes every job waiting, runs them in one transaction, commits once,
/// then answers each.
fn write_loop(w: &mut Writer, rx: mpsc::Receiver<Job>, stats: &CommitStats) {
    while let Ok(first) = rx.recv() {
        let mut batch = Vec::new();
        let mut next = Some(first);
        while let Some(job) = next.take() {
            match job {
                Job::Read(read) => read(w),
                Job::Write(write) => batch.push(write),
            }
            if batch.len() < MAX_BATCH {
                next = rx.try_recv().ok();
            }
        }
        if batch.is_empty() {
            continue;
        }
        let n = batch.len() as u64;
        let begin = begin_write(&w.conn);
        let mut replies = Vec::with_capacity(batch.len());
        let mut failed = begin.is_err();
        if !failed {
            for job in batch {
                let (reply, job_failed) = job(w);
                failed |= job_failed;
                replies.push(reply);
            }
        }
        let commit = match (&begin, failed) {
            (Err(e), _) => Err(StoreError::Storage(e.to_string())),
            // Prepared once (cached): parsing COMMIT and BEGIN anew cost
            // about as much as a replay record's row (measured: README).
            (Ok(()), false) => w
                .conn
                .prepare_cached("COMMIT")
                .and_then(|mut commit| commit.execute([]))
                .map(drop)
                .map_err(|e| StoreError::Storage(e.to_string())),
            (Ok(()), true) => Err(StoreError::Storage(
                "a write in this batch failed; batch rolled back".into(),
            )),
        };
        if commit.is_err() {
            let _ = w.conn.execute_batch("ROLLBACK");
            w.resync();
            if begin.is_err() {
                // The jobs never ran: answer them with the error all the same.
                continue;
            }
        }
        stats.commits.fetch_add(1, Ordering::Relaxed);
        stats.jobs.fetch_add(n, Ordering::Relaxed);
        stats.max_batch.fetch_max(n, Ordering::Relaxed);
        for reply in replies {
            reply(commit.clone());
        }
    }
}

/// Starts the batch's write transaction. The checkpoint thread's
/// connection can hold a lock for a moment (WAL recovery, a wal-index
/// restart) in ways SQLite reports as busy without waiting on the busy
/// handler; a few short retries ride that out instead of failing a batch.
fn begin_write(conn: &Connection) -> rusqlite::Result<()> {
    let mut tries = 0;
    loop {
        match conn
            .prepare_cached("BEGIN IMMEDIATE")
            .and_then(|mut begin| begin.execute([]))
        {
            Ok(_) => return Ok(()),
            Err(e) if tries < 50 => {
                if tries == 0 {
                    tracing::debug!(error = %e, "spool: write transaction busy; retrying");
                }
                tries += 1;
                std::thread::sleep(Duration::from_millis(2));
            }
            Err(e) => return Err(e),
        }
    }
}

fn storage(e: rusqlite::Error) -> StoreError {
    StoreError::Storage(e.to_string())
}

impl Writer {
    pub fn conn(&self) -> &Connection {
        &self.conn
    }

    fn resync(&mut self) {
        if let Ok(used) =
            self.conn
                .query_row("SELECT coalesce(sum(bytes), 0) FROM webhook", [], |r| {
                    r.get::<_, i64>(0)
                })
        {
            self.used = u64::try_from(used).unwrap_or(0);
        }
    }

    fn put(&mut self, r: &NewRecord) -> Result<(), StoreError> {
        let bytes = r.bytes();
        if self.used.saturating_add(bytes) > self.capacity.load(Ordering::Relaxed) {
            return Err(StoreError::Full);
        }
        self.conn
            .prepare_cached(
                "INSERT INTO webhook(id, route, received_ms, method, target, headers, body, bytes, state, attempts, next_attempt_ms, last_status, last_error)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, 'pending', ?9, ?10, ?11, ?12)",
            )
            .and_then(|mut s| {
                s.execute(params![
                    r.id,
                    r.route,
                    r.received_ms,
                    r.method,
                    r.target,
                    r.headers,
                    r.body,
                    bytes as i64,
                    r.attempts,
                    r.next_attempt_ms,
                    r.last_status,
                    r.last_error
                ])
            })
            .map_err(storage)?;
        self.used += bytes;
        Ok(())
    }

    fn delete_where(
        &mut self,
        filter: &str,
        args: &[&dyn rusqlite::ToSql],
    ) -> Result<u64, StoreError> {
        let sql = format!("DELETE FROM webhook WHERE {filter} RETURNING bytes");
        let mut stmt = self.conn.prepare_cached(&sql).map_err(storage)?;
        let freed: Vec<i64> = stmt
            .query_map(args, |r| r.get(0))
            .and_then(|rows| rows.collect())
            .map_err(storage)?;
        let total: i64 = freed.iter().sum();
        self.used = self.used.saturating_sub(u64::try_from(total).unwrap_or(0));
        Ok(freed.len() as u64)
    }

    fn query(&self, sql: &str, args: &[&dyn rusqlite::ToSql]) -> Result<Vec<Record>, StoreError> {
        let mut stmt = self.conn.prepare_cached(sql).map_err(storage)?;
        let rows = stmt
            .query_map(args, record_from_row)
            .and_then(|rows| rows.collect::<Result<Vec<_>, _>>())
            .map_err(storage)?;
        Ok(rows)
    }

    fn stats(&mut self) -> Result<Stats, StoreError> {
        let mut stmt = self
            .conn
            .prepare_cached(
                "SELECT route, state, count(*), sum(bytes), min(received_ms) FROM webhook GROUP BY route, state ORDER BY route",
            )
            .map_err(storage)?;
        let rows = stmt
            .query_map([], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, i64>(2)?,
                    r.get::<_, i64>(3)?,
                    r.get::<_, i64>(4)?,
                ))
            })
            .and_then(|rows| rows.collect::<Result<Vec<_>, _>>())
            .map_err(storage)?;
        drop(stmt);
        let mut out = Stats::default();
        for (route, state, count, bytes, oldest) in rows {
            if out.routes.last().map(|r: &RouteStats| &r.route) != Some(&route) {
                out.routes.push(RouteStats {
                    route,
                    ..RouteStats::default()
                });
            }
            let Some(entry) = out.routes.last_mut() else {
                continue;
            };
            let count = u64::try_from(count).unwrap_or(0);
            let bytes = u64::try_from(bytes).unwrap_or(0);
            entry.bytes += bytes;
            out.bytes += bytes;
            match RecordState::parse(&state) {
                Some(RecordState::Pending) => {
                    entry.pending += count;
                    entry.oldest_pending_ms = Some(oldest);
                }
                Some(RecordState::Dead) => entry.dead += count,
                None => {}
            }
        }
        self.used = out.bytes;
        Ok(out)
    }
}

fn record_from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Record> {
    let state: String = r.get(7)?;
    Ok(Record {
        id: r.get(0)?,
        route: r.get(1)?,
        received_ms: r.get(2)?,
        method: r.get(3)?,
        target: r.get(4)?,
        headers: r.get(5)?,
        body: r.get(6)?,
        state: RecordState::parse(&state).unwrap_or(RecordState::Dead),
        attempts: r.get(8)?,
        next_attempt_ms: r.get(9)?,
        last_status: r.get(10)?,
        last_error: r.get(11)?,
    })
}

/// `WHERE` clause and arguments for a selection.
fn selection_filter(sel: &Selection) -> (String, Vec<Box<dyn rusqlite::ToSql + Send>>) {
    match sel {
        Selection::Ids(ids) => {
            let marks = vec!["?"; ids.len().max(1)].join(",");
            let args = ids
                .iter()
                .map(|id| Box::new(id.clone()) as Box<dyn rusqlite::ToSql + Send>)
                .collect();
            (format!("id IN ({marks})"), args)
        }
        Selection::Route { route, state } => {
            let mut args: Vec<Box<dyn rusqlite::ToSql + Send>> = vec![Box::new(route.clone())];
            let filter = match state {
                Some(s) => {
                    args.push(Box::new(s.as_str()));
                    "route = ? AND state = ?".to_string()
                }
                None => "route = ?".to_string(),
            };
            (filter, args)
        }
    }
}

fn arg_refs(args: &[Box<dyn rusqlite::ToSql + Send>]) -> Vec<&dyn rusqlite::ToSql> {
    args.iter()
        .map(|a| a.as_ref() as &dyn rusqlite::ToSql)
        .collect()
}

impl Store for SqliteStore {
    fn put(&self, record: NewRecord) -> StoreFuture<'_, ()> {
        self.with_conn(move |w| w.put(&record))
    }

    fn due(
        &self,
        route: &str,
        now_ms: i64,
        limit: usize,
        ignore_schedule: bool,
    ) -> StoreFuture<'_, Vec<Record>> {
        let route = route.to_string();
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let horizon = if ignore_schedule { i64::MAX } else { now_ms };
        self.read(move |w| {
            w.query(
                &format!("SELECT {COLUMNS} FROM webhook WHERE route = ?1 AND state = 'pending' AND next_attempt_ms <= ?2 ORDER BY seq LIMIT ?3"),
                &[&route, &horizon, &limit],
            )
        })
    }

    fn complete(&self, id: &str) -> StoreFuture<'_, ()> {
        let id = id.to_string();
        self.with_conn(move |w| w.delete_where("id = ?1", &[&id]).map(|_| ()))
    }

    fn reschedule(
        &self,
        id: &str,
        attempts: u32,
        next_attempt_ms: i64,
        note: Note,
    ) -> StoreFuture<'_, ()> {
        let id = id.to_string();
        self.with_conn(move |w| {
            w.conn
                .prepare_cached("UPDATE webhook SET attempts = ?2, next_attempt_ms = ?3, last_status = ?4, last_error = ?5 WHERE id = ?1")
                .and_then(|mut s| s.execute(params![id, attempts, next_attempt_ms, note.status, note.error]))
                .map(|_| ())
                .map_err(storage)
        })
    }

    fn dead(&self, id: &str, attempts: u32, note: Note) -> StoreFuture<'_, ()> {
        let id = id.to_string();
        self.with_conn(move |w| {
            w.conn
                .prepare_cached("UPDATE webhook SET state = 'dead', attempts = ?2, last_status = ?3, last_error = ?4 WHERE id = ?1")
                .and_then(|mut s| s.execute(params![id, attempts, note.status, note.error]))
                .map(|_| ())
                .map_err(storage)
        })
    }

    fn expire(&self, route: &str, before_ms: i64) -> StoreFuture<'_, u64> {
        let route = route.to_string();
        self.with_conn(move |w| {
            w.conn
                .prepare_cached("UPDATE webhook SET state = 'dead', last_error = 'max_age passed' WHERE route = ?1 AND state = 'pending' AND received_ms < ?2")
                .and_then(|mut s| s.execute(params![route, before_ms]))
                .map(|n| n as u64)
                .map_err(storage)
        })
    }

    fn release(&self, route: &str, now_ms: i64) -> StoreFuture<'_, u64> {
        let route = route.to_string();
        self.with_conn(move |w| {
            w.conn
                .prepare_cached("UPDATE webhook SET next_attempt_ms = ?2 WHERE route = ?1 AND state = 'pending' AND next_attempt_ms > ?2")
                .and_then(|mut s| s.execute(params![route, now_ms]))
                .map(|n| n as u64)
                .map_err(storage)
        })
    }

    fn stats(&self) -> StoreFuture<'_, Stats> {
        self.read(|w| w.stats())
    }

    fn list(&self, selection: Selection, limit: usize) -> StoreFuture<'_, Vec<Record>> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        self.read(move |w| {
            let (filter, args) = selection_filter(&selection);
            let mut refs = arg_refs(&args);
            refs.push(&limit);
            w.query(
                &format!("SELECT {COLUMNS} FROM webhook WHERE {filter} ORDER BY seq LIMIT ?"),
                &refs,
            )
        })
    }

    fn retry(&self, selection: Selection, now_ms: i64) -> StoreFuture<'_, u64> {
        self.with_conn(move |w| {
            let (filter, args) = selection_filter(&selection);
            let mut refs: Vec<&dyn rusqlite::ToSql> = vec![&now_ms];
            refs.extend(arg_refs(&args));
            w.conn
                .prepare_cached(&format!(
                    "UPDATE webhook SET state = 'pending', attempts = 0, next_attempt_ms = ? WHERE {filter}"
                ))
                .and_then(|mut s| s.execute(refs.as_slice()))
                .map(|n| n as u64)
                .map_err(storage)
        })
    }

    fn drop_records(&self, selection: Selection) -> StoreFuture<'_, u64> {
        self.with_conn(move |w| {
            let (filter, args) = selection_filter(&selection);
            w.delete_where(&filter, &arg_refs(&args))
        })
    }

    fn set_capacity(&self, bytes: u64) {
        self.capacity.store(bytes, Ordering::Relaxed);
    }

    fn close(&self) {
        SqliteStore::close(self);
    }

    fn group_commits(&self) -> Option<(u64, u64, u64)> {
        let s = &self.commit_stats;
        Some((
            s.commits.load(Ordering::Relaxed),
            s.jobs.load(Ordering::Relaxed),
            s.max_batch.load(Ordering::Relaxed),
        ))
    }

    fn replay_store(&self) -> Option<Arc<dyn crate::replay::ReplayStore>> {
        let replay = self.replay.get_or_init(|| {
            super::sqlite_replay::SqliteReplay::open(&self.path, self.jobs.clone())
                .map(Arc::new)
                .map_err(|e| tracing::error!(error = %e, "replay store: cannot open a read connection to the spool; replay_window routes use memory"))
                .ok()
        });
        replay
            .clone()
            .map(|r| r as Arc<dyn crate::replay::ReplayStore>)
    }
}

/// `PRAGMA integrity_check` on a spool file (tests and operators).
pub fn integrity_check(path: &Path) -> Result<String, String> {
    let conn = Connection::open_with_flags(path, OpenFlags::SQLITE_OPEN_READ_ONLY)
        .map_err(|e| e.to_string())?;
    conn.query_row("PRAGMA integrity_check", [], |r| r.get::<_, String>(0))
        .optional()
        .map_err(|e| e.to_string())
        .map(|v| v.unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(id: &str, route: &str, body: &[u8]) -> NewRecord {
        NewRecord {
            id: id.into(),
            route: route.into(),
            received_ms: 1,
            method: "POST".into(),
            target: "/x".into(),
            headers: b"host: h\r\n".to_vec(),
            body: body.to_vec(),
            attempts: 1,
            next_attempt_ms: 0,
            last_status: Some(503),
            last_error: None,
        }
    }

    #[tokio::test]
    async fn put_due_complete_and_budget() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.db");
        let store = SqliteStore::open(&path, 100, true).unwrap();
        assert_eq!(
            std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
        store.put(record("a", "r", &[1; 40])).await.unwrap();
        store.put(record("b", "r", &[2; 40])).await.unwrap();
        // 2 × 49 bytes stored; a third passes 100.
        assert!(matches!(
            store.put(record("c", "r", &[3; 40])).await,
            Err(StoreError::Full)
        ));
        let due = store.due("r", 10, 10, false).await.unwrap();
        assert_eq!(
            due.iter().map(|r| r.id.as_str()).collect::<Vec<_>>(),
            ["a", "b"]
        );
        assert_eq!(due[0].body, vec![1; 40]);
        store.complete("a").await.unwrap();
        store.put(record("c", "r", &[3; 40])).await.unwrap();
        store.dead("b", 3, Note::default()).await.unwrap();
        let s = store.stats().await.unwrap();
        assert_eq!(s.bytes, 98);
        assert_eq!(s.routes[0].pending, 1);
        assert_eq!(s.routes[0].dead, 1);
        let n = store
            .retry(Selection::Ids(vec!["b".into()]), 5)
            .await
            .unwrap();
        assert_eq!(n, 1);
        assert_eq!(
            store
                .drop_records(Selection::Route {
                    route: "r".into(),
                    state: None
                })
                .await
                .unwrap(),
            2
        );
        store.close();
        assert_eq!(integrity_check(&path).unwrap(), "ok");
    }

    /// A file written by the version 1 schema (no replay table) is
    /// migrated in place on open: its records stay, the table appears.
    #[tokio::test]
    async fn version_1_file_is_migrated_keeping_records() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.db");
        let store = SqliteStore::open(&path, 1 << 20, true).unwrap();
        store.put(record("a", "r", &[1; 40])).await.unwrap();
        store.close();
        drop(store);
        // Exactly what version 1 wrote: the same webhook table, no replay.
        let conn = Connection::open(&path).unwrap();
        conn.execute_batch("DROP TABLE hookgate_replay; PRAGMA user_version = 1;")
            .unwrap();
        drop(conn);

        let store = SqliteStore::open(&path, 1 << 20, false).unwrap();
        let due = store.due("r", 10, 10, false).await.unwrap();
        assert_eq!(due.len(), 1);
        assert_eq!(due[0].body, vec![1; 40]);
        let (version, replay_rows) = store
            .read(|w| {
                let c = w.conn();
                let v: i64 = c
                    .query_row("PRAGMA user_version", [], |r| r.get(0))
                    .map_err(storage)?;
                let n: i64 = c
                    .query_row("SELECT count(*) FROM hookgate_replay", [], |r| r.get(0))
                    .map_err(storage)?;
                Ok((v, n))
            })
            .await
            .unwrap();
        assert_eq!((version, replay_rows), (SCHEMA_VERSION, 0));
        store.close();
        assert_eq!(integrity_check(&path).unwrap(), "ok");
    }

    #[test]
    fn not_a_spool_is_refused_and_kept() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.db");
        std::fs::write(&path, b"this is not a database, just text. ".repeat(200)).unwrap();
        let err = SqliteStore::open(&path, 100, true).unwrap_err().to_string();
        assert!(err.starts_with(&path.display().to_string()), "{err}");
        assert!(err.contains("not a readable SQLite spool"), "{err}");
        assert_eq!(std::fs::read(&path).unwrap().len(), 35 * 200);
    }
}
