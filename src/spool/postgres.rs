//! The shared spool (SPEC §11): records in a PostgreSQL database that
//! several gateway instances use at once (`tokio-postgres` through a
//! `deadpool-postgres` pool, TLS through rustls as the URL's `sslmode`
//! asks: [`super::postgres_tls`]).
//!
//! - Durable means the COMMIT returned with `synchronous_commit` on (it is
//!   forced on for the spool's writes when the server has it off).
//! - Group commit: `put`s waiting at the same moment go to one writer task,
//!   which inserts them with one `INSERT … SELECT FROM unnest(…)` statement
//!   (one round trip, one commit) and answers each caller after it.
//! - Leases: [`Store::due`] takes records with `FOR UPDATE SKIP LOCKED` and
//!   stamps `locked_until` (the database's clock, so instance clocks do not
//!   matter); no other instance takes them until then. Completing or
//!   rescheduling clears the lease; a crashed instance's records become
//!   due again once `lease` has passed.
//! - The schema is versioned ([`MIGRATIONS`], embedded) and migrated at
//!   start under an advisory lock, so instances starting together migrate
//!   once. A database whose schema is newer than this binary is refused.
//! - `max_bytes` is checked against the shared total as last read (every
//!   second, by the writer between its commits) plus this instance's writes
//!   and deliveries since: instances writing at the same moment can pass it
//!   by what they wrote in that second.
//!
//! Every operation has a deadline ([`OP_TIMEOUT`]); a database that is down
//! or hangs makes the operation fail (the request path answers 503), and the
//! pool reconnects by itself once it is back.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use deadpool_postgres::{Manager, Pool, Runtime};
use tokio::sync::{mpsc, oneshot};
use tokio_postgres::types::ToSql;
use tokio_postgres::Row;

use super::postgres_tls::Settings;
use super::{
    NewRecord, Note, Record, RecordState, RouteStats, Selection, Stats, Store, StoreError,
    StoreFuture,
};
use crate::config::DatabaseUrl;

/// The schema, one entry per version: entry `i` takes a database from
/// version `i` to `i + 1`. Never edit an entry that has shipped; add one.
pub const MIGRATIONS: &[&str] = &[
    "
CREATE TABLE hookgate_webhook(
    seq             bigserial PRIMARY KEY,   -- arrival order: drain oldest first
    id              text NOT NULL UNIQUE,    -- X-Hookgate-Delivery
    route           text NOT NULL,
    received_ms     bigint NOT NULL,
    method          text NOT NULL,
    target          text NOT NULL,           -- path and query as forwarded
    headers         bytea NOT NULL,          -- wire form, as forwarded
    body            bytea NOT NULL,
    bytes           bigint NOT NULL,         -- headers + body: counts against max_bytes
    state           text NOT NULL,           -- 'pending' | 'dead'
    attempts        integer NOT NULL,
    next_attempt_ms bigint NOT NULL,
    last_status     integer,
    last_error      text,
    locked_until    timestamptz              -- leased by an instance until then
);
CREATE INDEX hookgate_webhook_route ON hookgate_webhook(route, state, seq);
",
    "
-- v2: the replay defence's deliveries (SPEC §10), shared by every instance.
CREATE TABLE hookgate_replay(
    key         bytea PRIMARY KEY,            -- replay::key digest (route + verified material)
    expires_at  timestamptz NOT NULL,         -- end of the window (or of the in-flight mark)
    in_flight   boolean NOT NULL              -- being forwarded now, not yet recorded
);
CREATE INDEX hookgate_replay_expires ON hookgate_replay(expires_at);
",
    "
-- v3: each route's circuit (SPEC §8), shared by every instance, so a down
-- app gets one probe per backoff step, not one per instance.
CREATE TABLE hookgate_route_state(
    route          text PRIMARY KEY,
    open           boolean NOT NULL,
    step           integer NOT NULL,          -- index into spool.retry
    next_probe_at  timestamptz NOT NULL,      -- the next probe may go then
    probe_until    timestamptz,               -- an instance holds the probe until then
    probe_owner    text                       -- which one (its instance id)
);
-- Which instance holds a record's lease, so a stopping instance returns
-- its own leases (and only those) for another to take at once.
ALTER TABLE hookgate_webhook ADD COLUMN lease_owner text;
",
];

/// The schema version this build reads and writes.
pub fn schema_version() -> i32 {
    i32::try_from(MIGRATIONS.len()).unwrap_or(i32::MAX)
}

/// Key of the advisory lock held while migrating ("hkgt").
const MIGRATION_LOCK: i64 = 0x686b_6774;
/// How often the writer re-reads the stored total (other instances write
/// and deliver too).
const RESYNC_EVERY: Duration = Duration::from_secs(1);
/// Puts committed together at most.
const MAX_BATCH: usize = 512;
/// Deadline of one database operation (connecting included).
pub const OP_TIMEOUT: Duration = Duration::from_secs(5);
/// Connections per instance: the writer, the worker's deliveries, the CLI.
const POOL_SIZE: usize = 16;

const COLUMNS: &str = "seq, id, route, received_ms, method, target, headers, body, state, attempts, next_attempt_ms, last_status, last_error";

/// Checks a connection string at config load: it parses, names a host,
/// and its TLS settings are usable (`sslrootcert` read). The message never
/// repeats the string.
pub fn check_url(url: &DatabaseUrl) -> Result<(), String> {
    let settings = super::postgres_tls::settings(url)?;
    if settings.config.get_hosts().is_empty() {
        return Err(
            "names no host; write e.g. postgres://hookgate:PASSWORD@db.internal:5432/hookgate"
                .into(),
        );
    }
    Ok(())
}

pub(super) fn storage(e: impl std::fmt::Display) -> StoreError {
    StoreError::Storage(format!("database: {e}"))
}

/// Runs `f` with the deadline: a database that hangs is an error, not a
/// request that waits forever.
pub(super) async fn deadline<T>(
    f: impl std::future::Future<Output = Result<T, StoreError>>,
) -> Result<T, StoreError> {
    tokio::time::timeout(OP_TIMEOUT, f)
        .await
        .unwrap_or_else(|_| {
            Err(StoreError::Storage(format!(
                "database did not answer within {}s",
                OP_TIMEOUT.as_secs()
            )))
        })
}

/// A put waiting for the next group commit.
type PutJob = (NewRecord, oneshot::Sender<Result<(), StoreError>>);

/// Group-commit counters, for the shutdown log line and benchmarks.
#[derive(Debug, Default)]
pub struct CommitStats {
    pub commits: AtomicU64,
    pub jobs: AtomicU64,
    pub max_batch: AtomicU64,
}

/// The PostgreSQL [`Store`].
pub struct PgStore {
    pool: Pool,
    /// Masked, for messages.
    where_: String,
    lease_ms: i64,
    /// This process among the instances (a UUIDv7 made at open): the owner
    /// of its leases and probes.
    instance: String,
    puts: mpsc::UnboundedSender<PutJob>,
    capacity: Arc<AtomicU64>,
    /// Stored bytes: the shared total as last read plus this instance's
    /// writes and removals since.
    used: Arc<AtomicI64>,
    schema_version: i32,
    pub commit_stats: Arc<CommitStats>,
    circuits: super::postgres_circuit::PgCircuits,
}

impl std::fmt::Debug for PgStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgStore")
            .field("database", &self.where_)
            .finish_non_exhaustive()
    }
}

fn pool(url: &DatabaseUrl) -> Result<(Pool, Settings), String> {
    let settings = super::postgres_tls::settings(url)
        .map_err(|e| format!("spool.url ({}): {e}", url.source))?;
    let mut config = settings.config.clone();
    if config.get_connect_timeout().is_none() {
        config.connect_timeout(OP_TIMEOUT);
    }
    if config.get_application_name().is_none() {
        config.application_name("hookgate");
    }
    let pool = Pool::builder(Manager::new(config, settings.tls.clone()))
        .max_size(POOL_SIZE)
        .runtime(Runtime::Tokio1)
        .wait_timeout(Some(OP_TIMEOUT))
        .create_timeout(Some(OP_TIMEOUT))
        .recycle_timeout(Some(OP_TIMEOUT))
        .build()
        .map_err(|e| format!("cannot set up the database pool: {e}"))?;
    Ok((pool, settings))
}

/// Whether this connection is encrypted, as the server sees it
/// (`pg_stat_ssl`): e.g. `TLS TLSv1.3, sslmode=verify-full, CA /etc/ca.pem`
/// or `no TLS, sslmode=prefer`.
async fn tls_in_use<C: deadpool_postgres::GenericClient + Sync>(
    client: &C,
    settings: &Settings,
) -> Result<String, StoreError> {
    let row = client
        .query_opt(
            "SELECT version FROM pg_stat_ssl WHERE pid = pg_backend_pid() AND ssl",
            &[],
        )
        .await
        .map_err(storage)?;
    let version: Option<String> = match row {
        Some(r) => r.try_get(0).map_err(storage)?,
        None => None,
    };
    Ok(match version {
        Some(v) => format!("TLS {v}, {}", settings.describe()),
        None => format!("no TLS, {}", settings.describe()),
    })
}

/// What [`inspect`] found.
#[derive(Debug)]
pub struct Inspected {
    /// 0: empty, `hookgate run` creates the schema.
    pub schema_version: i32,
    /// Whether the connection is encrypted, as the server sees it.
    pub tls: String,
}

/// What `hookgate check` reports: the schema version found in the database
/// and whether the connection is encrypted, without changing anything.
pub async fn inspect(url: &DatabaseUrl) -> Result<Inspected, String> {
    let masked = url.masked();
    let (pool, settings) = pool(url)?;
    let (found, tls) = deadline(async {
        let client = pool
            .get()
            .await
            .map_err(|e| StoreError::Storage(format!("database: {}", connect_error(e))))?;
        Ok((
            read_version(&client).await?,
            tls_in_use(&client, &settings).await?,
        ))
    })
    .await
    .map_err(|e| format!("{masked}: {e}"))?;
    if found > schema_version() {
        return Err(newer_message(&masked, found));
    }
    Ok(Inspected {
        schema_version: found,
        tls,
    })
}

/// A connection that could not be made, with a hint when TLS is why.
fn connect_error(e: deadpool_postgres::PoolError) -> String {
    // The TLS reason sits in the error's sources, not its Display.
    let mut text = e.to_string();
    let mut source = std::error::Error::source(&e);
    while let Some(cause) = source {
        let more = cause.to_string();
        if !text.contains(&more) {
            text = format!("{text}: {more}");
        }
        source = cause.source();
    }
    let hint = if text.contains("invalid peer certificate") {
        "; check that sslrootcert names the CA that signed the database server's certificate and, for verify-full, that the URL's host is a name in it"
    } else if text.contains("server does not support TLS") {
        "; the server has ssl = off: turn it on, or lower sslmode (prefer: encrypted only when offered)"
    } else {
        ""
    };
    format!("cannot connect: {text}{hint}")
}

fn newer_message(masked: &str, found: i32) -> String {
    format!(
        "{masked}: the spool schema is at version {found}, newer than this hookgate reads (version {}); run the newer hookgate binary, or point spool.url at another database",
        schema_version()
    )
}

async fn read_version<C: deadpool_postgres::GenericClient + Sync>(
    client: &C,
) -> Result<i32, StoreError> {
    let exists: bool = client
        .query_one("SELECT to_regclass('hookgate_schema') IS NOT NULL", &[])
        .await
        .map_err(storage)?
        .get(0);
    if !exists {
        return Ok(0);
    }
    let row = client
        .query_one("SELECT coalesce(max(version), 0) FROM hookgate_schema", &[])
        .await
        .map_err(storage)?;
    Ok(row.get(0))
}

/// Brings the schema to this build's version under an advisory lock;
/// returns the version it found.
async fn migrate(pool: &Pool, masked: &str) -> Result<i32, String> {
    let mut client = pool
        .get()
        .await
        .map_err(|e| format!("{masked}: {}", connect_error(e)))?;
    let tx = client
        .transaction()
        .await
        .map_err(|e| format!("{masked}: {e}"))?;
    let fail = |e: tokio_postgres::Error| format!("{masked}: migrating the spool schema: {e}");
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
        .await
        .map_err(fail)?;
    let found = read_version(&tx)
        .await
        .map_err(|e| format!("{masked}: {e}"))?;
    if found > schema_version() {
        return Err(newer_message(masked, found));
    }
    if found == 0 {
        tx.batch_execute("CREATE TABLE IF NOT EXISTS hookgate_schema(version integer NOT NULL)")
            .await
            .map_err(fail)?;
    }
    for step in MIGRATIONS.iter().skip(usize::try_from(found).unwrap_or(0)) {
        tx.batch_execute(step).await.map_err(fail)?;
    }
    if found < schema_version() {
        tx.batch_execute("DELETE FROM hookgate_schema")
            .await
            .map_err(fail)?;
        tx.execute(
            "INSERT INTO hookgate_schema(version) VALUES ($1)",
            &[&schema_version()],
        )
        .await
        .map_err(fail)?;
    }
    tx.commit().await.map_err(fail)?;
    Ok(found)
}

impl PgStore {
    /// Connects, migrates the schema (refusing a newer one) and starts the
    /// group-commit writer. Errors name the database (password masked).
    pub async fn open(
        url: &DatabaseUrl,
        capacity: u64,
        lease: Duration,
    ) -> Result<PgStore, String> {
        let masked = url.masked();
        let (pool, settings) = pool(url)?;
        let found = tokio::time::timeout(OP_TIMEOUT * 3, migrate(&pool, &masked))
            .await
            .map_err(|_| {
                format!(
                    "{masked}: the database did not answer within {}s",
                    OP_TIMEOUT.as_secs() * 3
                )
            })??;
        if found < schema_version() {
            tracing::info!(database = %masked, from = found, to = schema_version(), "spool schema migrated");
        }
        let client = pool.get().await.map_err(|e| format!("{masked}: {e}"))?;
        let used: i64 = client
            .query_one(
                "SELECT coalesce(sum(bytes), 0)::bigint FROM hookgate_webhook",
                &[],
            )
            .await
            .map_err(|e| format!("{masked}: cannot read the spool: {e}"))?
            .get(0);
        // Durable means the commit returned with synchronous_commit on:
        // a server that has it off gets it switched on for our writes.
        let sync: String = client
            .query_one("SHOW synchronous_commit", &[])
            .await
            .map_err(|e| format!("{masked}: {e}"))?
            .get(0);
        let tls = tls_in_use(&client, &settings)
            .await
            .map_err(|e| format!("{masked}: {e}"))?;
        drop(client);
        tracing::info!(database = %masked, tls = %tls, "spool: connected to the database");
        let force_sync = sync == "off";
        if force_sync {
            tracing::warn!(database = %masked, "synchronous_commit is off on the server; the spool turns it on for its own writes");
        }
        let instance = super::new_id();
        let capacity = Arc::new(AtomicU64::new(capacity));
        let used = Arc::new(AtomicI64::new(used));
        let commit_stats = Arc::new(CommitStats::default());
        let (puts, rx) = mpsc::unbounded_channel();
        tokio::spawn(write_loop(
            Writer {
                pool: pool.clone(),
                capacity: capacity.clone(),
                used: used.clone(),
                force_sync,
                stats: commit_stats.clone(),
                failing: AtomicBool::new(false),
            },
            rx,
        ));
        Ok(PgStore {
            pool: pool.clone(),
            where_: masked,
            lease_ms: i64::try_from(lease.as_millis()).unwrap_or(i64::MAX),
            instance: instance.clone(),
            puts,
            capacity,
            used,
            schema_version: schema_version(),
            commit_stats,
            circuits: super::postgres_circuit::PgCircuits {
                pool: pool.clone(),
                hold_ms: lease.as_millis() as f64,
                instance,
            },
        })
    }

    pub fn schema_version(&self) -> i32 {
        self.schema_version
    }

    /// The database, password masked.
    pub fn describe(&self) -> &str {
        &self.where_
    }

    async fn client(&self) -> Result<deadpool_postgres::Client, StoreError> {
        self.pool.get().await.map_err(storage)
    }

    /// One statement that changes rows; returns how many.
    fn execute(
        &self,
        sql: &'static str,
        args: Vec<Box<dyn ToSql + Send + Sync>>,
    ) -> StoreFuture<'_, u64> {
        Box::pin(deadline(async move {
            let client = self.client().await?;
            let stmt = client.prepare_cached(sql).await.map_err(storage)?;
            let refs: Vec<&(dyn ToSql + Sync)> = args
                .iter()
                .map(|a| a.as_ref() as &(dyn ToSql + Sync))
                .collect();
            client.execute(&stmt, &refs).await.map_err(storage)
        }))
    }

    /// A `DELETE … RETURNING bytes`: frees the bytes, returns how many rows.
    async fn delete(&self, sql: &str, args: &[&(dyn ToSql + Sync)]) -> Result<u64, StoreError> {
        let client = self.client().await?;
        let stmt = client.prepare_cached(sql).await.map_err(storage)?;
        let rows = client.query(&stmt, args).await.map_err(storage)?;
        let freed: i64 = rows.iter().map(|r| r.get::<_, i64>(0)).sum();
        self.used.fetch_sub(freed, Ordering::Relaxed);
        Ok(rows.len() as u64)
    }

    async fn records(
        &self,
        sql: &str,
        args: &[&(dyn ToSql + Sync)],
    ) -> Result<Vec<Record>, StoreError> {
        let client = self.client().await?;
        let stmt = client.prepare_cached(sql).await.map_err(storage)?;
        let rows = client.query(&stmt, args).await.map_err(storage)?;
        let mut out: Vec<(i64, Record)> =
            rows.iter().map(record_from_row).collect::<Result<_, _>>()?;
        out.sort_by_key(|(seq, _)| *seq);
        Ok(out.into_iter().map(|(_, r)| r).collect())
    }
}

fn record_from_row(r: &Row) -> Result<(i64, Record), StoreError> {
    let get = |e: tokio_postgres::Error| storage(e);
    let state: String = r.try_get(8).map_err(get)?;
    let attempts: i32 = r.try_get(9).map_err(get)?;
    let last_status: Option<i32> = r.try_get(11).map_err(get)?;
    Ok((
        r.try_get(0).map_err(get)?,
        Record {
            id: r.try_get(1).map_err(get)?,
            route: r.try_get(2).map_err(get)?,
            received_ms: r.try_get(3).map_err(get)?,
            method: r.try_get(4).map_err(get)?,
            target: r.try_get(5).map_err(get)?,
            headers: r.try_get(6).map_err(get)?,
            body: r.try_get(7).map_err(get)?,
            state: RecordState::parse(&state).unwrap_or(RecordState::Dead),
            attempts: u32::try_from(attempts).unwrap_or(0),
            next_attempt_ms: r.try_get(10).map_err(get)?,
            last_status: last_status.and_then(|s| u16::try_from(s).ok()),
            last_error: r.try_get(12).map_err(get)?,
        },
    ))
}

/// The group-commit writer's state.
struct Writer {
    pool: Pool,
    capacity: Arc<AtomicU64>,
    used: Arc<AtomicI64>,
    force_sync: bool,
    stats: Arc<CommitStats>,
    /// Logged once per outage, not once per batch.
    failing: AtomicBool,
}

async fn shared_total(pool: &Pool) -> Result<i64, StoreError> {
    let client = pool.get().await.map_err(storage)?;
    let row = client
        .query_one(
            "SELECT coalesce(sum(bytes), 0)::bigint FROM hookgate_webhook",
            &[],
        )
        .await
        .map_err(storage)?;
    row.try_get(0).map_err(storage)
}

/// Takes every put waiting, inserts those within the budget in one
/// statement, and answers each once the commit returned.
async fn write_loop(w: Writer, mut rx: mpsc::UnboundedReceiver<PutJob>) {
    let mut last_resync = tokio::time::Instant::now();
    while let Some(first) = rx.recv().await {
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(job) => batch.push(job),
                Err(_) => break,
            }
        }
        if last_resync.elapsed() >= RESYNC_EVERY {
            // Other instances' writes and deliveries: read the shared
            // total here, between this writer's own commits, so it is
            // never older than a put this writer already counted.
            last_resync = tokio::time::Instant::now();
            if let Ok(total) = deadline(shared_total(&w.pool)).await {
                w.used.store(total, Ordering::Relaxed);
            }
        }
        let capacity = i64::try_from(w.capacity.load(Ordering::Relaxed)).unwrap_or(i64::MAX);
        let mut planned = w.used.load(Ordering::Relaxed);
        let mut accepted = Vec::with_capacity(batch.len());
        for (record, reply) in batch {
            let bytes = i64::try_from(record.bytes()).unwrap_or(i64::MAX);
            if planned.saturating_add(bytes) > capacity {
                let _ = reply.send(Err(StoreError::Full));
            } else {
                planned += bytes;
                accepted.push((record, reply));
            }
        }
        if accepted.is_empty() {
            continue;
        }
        let n = accepted.len() as u64;
        let result = deadline(insert(&w, accepted.iter().map(|(r, _)| r))).await;
        match &result {
            Ok(()) => {
                let added: i64 = accepted
                    .iter()
                    .map(|(r, _)| i64::try_from(r.bytes()).unwrap_or(0))
                    .sum();
                w.used.fetch_add(added, Ordering::Relaxed);
                w.stats.commits.fetch_add(1, Ordering::Relaxed);
                w.stats.jobs.fetch_add(n, Ordering::Relaxed);
                w.stats.max_batch.fetch_max(n, Ordering::Relaxed);
                w.failing.store(false, Ordering::Relaxed);
            }
            Err(e) => {
                if !w.failing.swap(true, Ordering::Relaxed) {
                    tracing::warn!(error = %e, records = n, "spool: group commit to the database failed");
                }
            }
        }
        for (_, reply) in accepted {
            let _ = reply.send(result.clone());
        }
    }
}

async fn insert<'a>(
    w: &Writer,
    records: impl Iterator<Item = &'a NewRecord>,
) -> Result<(), StoreError> {
    let mut ids = Vec::new();
    let mut routes = Vec::new();
    let mut received = Vec::new();
    let mut methods = Vec::new();
    let mut targets = Vec::new();
    let mut headers: Vec<&[u8]> = Vec::new();
    let mut bodies: Vec<&[u8]> = Vec::new();
    let mut bytes = Vec::new();
    let mut attempts = Vec::new();
    let mut next = Vec::new();
    let mut statuses = Vec::new();
    let mut errors = Vec::new();
    for r in records {
        ids.push(r.id.as_str());
        routes.push(r.route.as_str());
        received.push(r.received_ms);
        methods.push(r.method.as_str());
        targets.push(r.target.as_str());
        headers.push(&r.headers);
        bodies.push(&r.body);
        bytes.push(i64::try_from(r.bytes()).unwrap_or(i64::MAX));
        attempts.push(i32::try_from(r.attempts).unwrap_or(i32::MAX));
        next.push(r.next_attempt_ms);
        statuses.push(r.last_status.map(i32::from));
        errors.push(r.last_error.as_deref());
    }
    const INSERT: &str = "INSERT INTO hookgate_webhook(id, route, received_ms, method, target, headers, body, bytes, state, attempts, next_attempt_ms, last_status, last_error)
        SELECT id, route, received_ms, method, target, headers, body, bytes, 'pending', attempts, next_attempt_ms, last_status, last_error
        FROM unnest($1::text[], $2::text[], $3::int8[], $4::text[], $5::text[], $6::bytea[], $7::bytea[], $8::int8[], $9::int4[], $10::int8[], $11::int4[], $12::text[])
             AS t(id, route, received_ms, method, target, headers, body, bytes, attempts, next_attempt_ms, last_status, last_error)";
    let mut client = w.pool.get().await.map_err(storage)?;
    let args: [&(dyn ToSql + Sync); 12] = [
        &ids, &routes, &received, &methods, &targets, &headers, &bodies, &bytes, &attempts, &next,
        &statuses, &errors,
    ];
    if w.force_sync {
        let tx = client.transaction().await.map_err(storage)?;
        tx.batch_execute("SET LOCAL synchronous_commit = on")
            .await
            .map_err(storage)?;
        let stmt = tx.prepare_cached(INSERT).await.map_err(storage)?;
        tx.execute(&stmt, &args).await.map_err(storage)?;
        tx.commit().await.map_err(storage)
    } else {
        // One statement outside a transaction block is its own commit.
        let stmt = client.prepare_cached(INSERT).await.map_err(storage)?;
        client
            .execute(&stmt, &args)
            .await
            .map(|_| ())
            .map_err(storage)
    }
}

/// `WHERE` clause (numbered from `$first`) and arguments for a selection.
fn selection_filter(sel: &Selection, first: usize) -> (String, Vec<Box<dyn ToSql + Send + Sync>>) {
    match sel {
        Selection::Ids(ids) => (format!("id = ANY(${first})"), vec![Box::new(ids.clone())]),
        Selection::Route { route, state: None } => {
            (format!("route = ${first}"), vec![Box::new(route.clone())])
        }
        Selection::Route {
            route,
            state: Some(s),
        } => (
            format!("route = ${first} AND state = ${}", first + 1),
            vec![Box::new(route.clone()), Box::new(s.as_str().to_string())],
        ),
    }
}

fn refs(args: &[Box<dyn ToSql + Send + Sync>]) -> Vec<&(dyn ToSql + Sync)> {
    args.iter()
        .map(|a| a.as_ref() as &(dyn ToSql + Sync))
        .collect()
}

impl Store for PgStore {
    fn put(&self, record: NewRecord) -> StoreFuture<'_, ()> {
        let (tx, rx) = oneshot::channel();
        let sent = self.puts.send((record, tx)).is_ok();
        Box::pin(async move {
            if !sent {
                return Err(StoreError::Storage("spool is closed".into()));
            }
            rx.await
                .unwrap_or_else(|_| Err(StoreError::Storage("spool writer stopped".into())))
        })
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
        let lease = self.lease_ms;
        let owner = self.instance.clone();
        Box::pin(deadline(async move {
            // Taken records are leased in the same statement: another
            // instance skips them (SKIP LOCKED now, locked_until after).
            let sql = format!(
                "UPDATE hookgate_webhook SET locked_until = clock_timestamp() + $4::float8 * interval '1 millisecond', lease_owner = $5
                 WHERE seq IN (
                     SELECT seq FROM hookgate_webhook
                     WHERE route = $1 AND state = 'pending' AND next_attempt_ms <= $2
                       AND (locked_until IS NULL OR locked_until <= clock_timestamp())
                     ORDER BY seq LIMIT $3
                     FOR UPDATE SKIP LOCKED)
                 RETURNING {COLUMNS}"
            );
            let lease = lease as f64;
            self.records(&sql, &[&route, &horizon, &limit, &lease, &owner])
                .await
        }))
    }

    fn complete(&self, id: &str) -> StoreFuture<'_, ()> {
        let id = id.to_string();
        Box::pin(deadline(async move {
            self.delete(
                "DELETE FROM hookgate_webhook WHERE id = $1 RETURNING bytes",
                &[&id],
            )
            .await
            .map(|_| ())
        }))
    }

    fn reschedule(
        &self,
        id: &str,
        attempts: u32,
        next_attempt_ms: i64,
        note: Note,
    ) -> StoreFuture<'_, ()> {
        let fut = self.execute(
            "UPDATE hookgate_webhook SET attempts = $2, next_attempt_ms = $3, last_status = $4, last_error = $5, locked_until = NULL WHERE id = $1",
            vec![
                Box::new(id.to_string()),
                Box::new(i32::try_from(attempts).unwrap_or(i32::MAX)),
                Box::new(next_attempt_ms),
                Box::new(note.status.map(i32::from)),
                Box::new(note.error),
            ],
        );
        Box::pin(async move { fut.await.map(|_| ()) })
    }

    fn dead(&self, id: &str, attempts: u32, note: Note) -> StoreFuture<'_, ()> {
        let fut = self.execute(
            "UPDATE hookgate_webhook SET state = 'dead', attempts = $2, last_status = $3, last_error = $4, locked_until = NULL WHERE id = $1",
            vec![
                Box::new(id.to_string()),
                Box::new(i32::try_from(attempts).unwrap_or(i32::MAX)),
                Box::new(note.status.map(i32::from)),
                Box::new(note.error),
            ],
        );
        Box::pin(async move { fut.await.map(|_| ()) })
    }

    fn expire(&self, route: &str, before_ms: i64) -> StoreFuture<'_, u64> {
        self.execute(
            "UPDATE hookgate_webhook SET state = 'dead', last_error = 'max_age passed', locked_until = NULL WHERE route = $1 AND state = 'pending' AND received_ms < $2",
            vec![Box::new(route.to_string()), Box::new(before_ms)],
        )
    }

    fn release(&self, route: &str, now_ms: i64) -> StoreFuture<'_, u64> {
        self.execute(
            "UPDATE hookgate_webhook SET next_attempt_ms = $2 WHERE route = $1 AND state = 'pending' AND next_attempt_ms > $2",
            vec![Box::new(route.to_string()), Box::new(now_ms)],
        )
    }

    fn stats(&self) -> StoreFuture<'_, Stats> {
        Box::pin(deadline(async move {
            let client = self.client().await?;
            let stmt = client
                .prepare_cached("SELECT route, state, count(*)::bigint, sum(bytes)::bigint, min(received_ms) FROM hookgate_webhook GROUP BY route, state ORDER BY route")
                .await
                .map_err(storage)?;
            let rows = client.query(&stmt, &[]).await.map_err(storage)?;
            let mut by_route: HashMap<String, RouteStats> = HashMap::new();
            let mut order = Vec::new();
            let mut total = 0u64;
            for row in rows {
                let route: String = row.try_get(0).map_err(storage)?;
                let state: String = row.try_get(1).map_err(storage)?;
                let count = u64::try_from(row.try_get::<_, i64>(2).map_err(storage)?).unwrap_or(0);
                let bytes = u64::try_from(row.try_get::<_, i64>(3).map_err(storage)?).unwrap_or(0);
                let oldest: i64 = row.try_get(4).map_err(storage)?;
                let entry = by_route.entry(route.clone()).or_insert_with(|| {
                    order.push(route.clone());
                    RouteStats {
                        route,
                        ..RouteStats::default()
                    }
                });
                entry.bytes += bytes;
                total += bytes;
                match RecordState::parse(&state) {
                    Some(RecordState::Pending) => {
                        entry.pending += count;
                        entry.oldest_pending_ms = Some(oldest);
                    }
                    Some(RecordState::Dead) => entry.dead += count,
                    None => {}
                }
            }
            Ok(Stats {
                routes: order
                    .into_iter()
                    .filter_map(|r| by_route.remove(&r))
                    .collect(),
                bytes: total,
            })
        }))
    }

    fn list(&self, selection: Selection, limit: usize) -> StoreFuture<'_, Vec<Record>> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        Box::pin(deadline(async move {
            let (filter, args) = selection_filter(&selection, 1);
            let mut r = refs(&args);
            r.push(&limit);
            let sql = format!(
                "SELECT {COLUMNS} FROM hookgate_webhook WHERE {filter} ORDER BY seq LIMIT ${}",
                r.len()
            );
            self.records(&sql, &r).await
        }))
    }

    fn retry(&self, selection: Selection, now_ms: i64) -> StoreFuture<'_, u64> {
        Box::pin(deadline(async move {
            let (filter, args) = selection_filter(&selection, 2);
            let mut r: Vec<&(dyn ToSql + Sync)> = vec![&now_ms];
            r.extend(refs(&args));
            let sql = format!("UPDATE hookgate_webhook SET state = 'pending', attempts = 0, next_attempt_ms = $1, locked_until = NULL WHERE {filter}");
            let client = self.client().await?;
            client.execute(sql.as_str(), &r).await.map_err(storage)
        }))
    }

    fn drop_records(&self, selection: Selection) -> StoreFuture<'_, u64> {
        Box::pin(deadline(async move {
            let (filter, args) = selection_filter(&selection, 1);
            let sql = format!("DELETE FROM hookgate_webhook WHERE {filter} RETURNING bytes");
            self.delete(&sql, &refs(&args)).await
        }))
    }

    fn set_capacity(&self, bytes: u64) {
        self.capacity.store(bytes, Ordering::Relaxed);
    }

    fn leases(&self) -> bool {
        true
    }

    fn replay_store(&self) -> Option<Arc<dyn crate::replay::ReplayStore>> {
        Some(Arc::new(super::postgres_replay::PgReplay::new(
            self.pool.clone(),
        )))
    }

    fn return_leases(&self) -> StoreFuture<'_, u64> {
        Box::pin(deadline(async move {
            let client = self.client().await?;
            // Leases another instance took over after they passed are
            // theirs now (lease_owner changed): untouched.
            let records = client
                .execute(
                    "UPDATE hookgate_webhook SET locked_until = NULL
                     WHERE lease_owner = $1 AND locked_until > clock_timestamp()",
                    &[&self.instance],
                )
                .await
                .map_err(storage)?;
            client
                .execute(
                    "UPDATE hookgate_route_state SET probe_until = NULL
                     WHERE probe_owner = $1 AND probe_until > clock_timestamp()",
                    &[&self.instance],
                )
                .await
                .map_err(storage)?;
            Ok(records)
        }))
    }

    fn shared_circuits(&self) -> Option<&dyn super::SharedCircuits> {
        Some(&self.circuits)
    }

    fn health_check(&self) -> Option<StoreFuture<'_, ()>> {
        Some(Box::pin(deadline(async move {
            let client = self.client().await?;
            client
                .simple_query("SELECT 1")
                .await
                .map(|_| ())
                .map_err(storage)
        })))
    }

    fn close(&self) {
        self.pool.close();
        tracing::debug!(database = %self.where_, "spool closed");
    }

    fn group_commits(&self) -> Option<(u64, u64, u64)> {
        let s = &self.commit_stats;
        Some((
            s.commits.load(Ordering::Relaxed),
            s.jobs.load(Ordering::Relaxed),
            s.max_batch.load(Ordering::Relaxed),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::mask_password;

    #[test]
    fn passwords_are_masked_in_every_form() {
        assert_eq!(
            mask_password("postgres://hg:s3cr%40t@db:5432/hookgate?sslmode=disable"),
            "postgres://hg:***@db:5432/hookgate?sslmode=disable"
        );
        assert_eq!(
            mask_password("postgresql://hg@db/x"),
            "postgresql://hg@db/x"
        );
        assert_eq!(
            mask_password("postgres://db/x?user=hg&password=s3cret"),
            "postgres://db/x?user=hg&password=***"
        );
        assert_eq!(
            mask_password("host=db user=hg password=s3cret dbname=x"),
            "host=db user=hg password=*** dbname=x"
        );
    }

    #[test]
    fn urls_are_checked_without_repeating_them() {
        let url = |t: &str| DatabaseUrl::new(t.into(), "env X".into());
        assert!(check_url(&url("postgres://hg:pw@127.0.0.1:5432/x")).is_ok());
        assert!(check_url(&url("postgres://hg:pw@db/x?sslmode=require")).is_ok());
        let e = check_url(&url("postgres://hg:pw@db/x?sslmode=verify-full")).unwrap_err();
        assert!(e.contains("needs sslrootcert") && !e.contains("pw"), "{e}");
        let e = check_url(&url("postgres://hg:pw@db:notaport/x")).unwrap_err();
        assert!(
            e.contains("not a PostgreSQL connection string") && !e.contains("pw@"),
            "{e}"
        );
    }
}
