//! `hookgate spool stats|list|show|retry|drop` (SPEC §8): inspect and
//! replay the spool, also while the gateway runs (SQLite WAL lets both
//! open the file; writes wait for each other's commit). A `retry` is picked
//! up by the running gateway within a second.
//!
//! The config is read only for `[spool] path`: the spool can be inspected
//! without the routes' secrets at hand.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, UNIX_EPOCH};

use clap::{Args, Subcommand};

use std::sync::Arc;

use super::postgres::{check_url, PgStore};
use super::sqlite::SqliteStore;
use super::{now_ms, Record, RecordState, Selection, Stats, Store, StoreError};
use crate::config::{DatabaseUrl, DEFAULT_CONFIG_PATH};
use crate::secret::{ProcessEnv, SecretSource};

/// Records `list` prints at most.
const LIST_LIMIT: usize = 100_000;

#[derive(Debug, Subcommand)]
pub enum SpoolCommand {
    /// Counts and bytes per route.
    Stats {
        #[command(flatten)]
        common: Common,
        #[arg(long)]
        json: bool,
    },
    /// One line per record, oldest first.
    List {
        #[command(flatten)]
        common: Common,
        #[arg(long)]
        route: Option<String>,
        #[arg(long, value_parser = parse_state)]
        state: Option<RecordState>,
        #[arg(long)]
        json: bool,
    },
    /// A record's header fields, a blank line, then its body bytes.
    Show {
        #[command(flatten)]
        common: Common,
        id: String,
    },
    /// Back to pending, attempts reset, due now.
    Retry {
        #[command(flatten)]
        common: Common,
        #[command(flatten)]
        target: Target,
    },
    /// Removed for good.
    Drop {
        #[command(flatten)]
        common: Common,
        #[command(flatten)]
        target: Target,
    },
}

#[derive(Debug, Args)]
pub struct Common {
    #[arg(long, short, default_value = DEFAULT_CONFIG_PATH)]
    config: PathBuf,
}

#[derive(Debug, Args)]
pub struct Target {
    /// Record ids (X-Hookgate-Delivery).
    ids: Vec<String>,
    /// Every record of this route (with --state: only those).
    #[arg(long, conflicts_with = "ids")]
    route: Option<String>,
    #[arg(long, value_parser = parse_state, requires = "route")]
    state: Option<RecordState>,
}

fn parse_state(text: &str) -> Result<RecordState, String> {
    RecordState::parse(text).ok_or_else(|| format!("{text:?} is not pending or dead"))
}

/// Runs a spool subcommand; errors are one line on stderr and exit 1.
pub fn run(command: SpoolCommand) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("hookgate spool: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(execute(command)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("hookgate spool: {message}");
            ExitCode::FAILURE
        }
    }
}

/// The `[spool]` table of the config file, without loading the routes'
/// secrets.
fn spool_table(config: &Path) -> Result<toml::Table, String> {
    let text = std::fs::read_to_string(config).map_err(|e| {
        format!(
            "{}: cannot read config: {e}; check the path given to --config",
            config.display()
        )
    })?;
    let table: toml::Table = toml::from_str(&text).map_err(|e| {
        format!(
            "{}: not valid TOML ({}); run hookgate check --config {}",
            config.display(),
            e.message().trim_end(),
            config.display()
        )
    })?;
    match table.get("spool") {
        Some(toml::Value::Table(t)) => Ok(t.clone()),
        _ => Err(format!("{}: no [spool] is configured", config.display())),
    }
}

async fn open(common: &Common) -> Result<Arc<dyn Store>, String> {
    let config = &common.config;
    let spool = spool_table(config)?;
    match spool.get("backend").and_then(|b| b.as_str()) {
        Some("postgres") => {
            let source: SecretSource = spool
                .get("url")
                .cloned()
                .ok_or_else(|| {
                    format!(
                        "{}: backend = \"postgres\" needs spool.url",
                        config.display()
                    )
                })?
                .try_into()
                .map_err(|e: toml::de::Error| {
                    format!(
                        "{}: spool.url: {}",
                        config.display(),
                        e.message().trim_end()
                    )
                })?;
            let text = source
                .load(&ProcessEnv)
                .map_err(|e| format!("{}: spool.url: {e}", config.display()))?;
            let text = String::from_utf8(text.as_bytes().to_vec())
                .map_err(|_| format!("{}: spool.url is not UTF-8 text", config.display()))?;
            let url = DatabaseUrl::new(text.trim().to_string(), source.describe());
            check_url(&url)
                .map_err(|e| format!("{}: spool.url ({}): {e}", config.display(), url.source))?;
            // The lease only matters to deliveries, which the CLI never makes.
            let store = PgStore::open(&url, u64::MAX, Duration::from_secs(30)).await?;
            Ok(Arc::new(store))
        }
        _ => {
            let path = spool
                .get("path")
                .and_then(|p| p.as_str())
                .map(PathBuf::from)
                .ok_or_else(|| format!("{}: no [spool] path is configured", config.display()))?;
            // The budget is the gateway's business; the CLI never adds records.
            let store = SqliteStore::open(&path, u64::MAX, false).map_err(|e| e.to_string())?;
            Ok(Arc::new(store))
        }
    }
}

fn selection(target: Target) -> Result<Selection, String> {
    match (target.route, target.ids.is_empty()) {
        (Some(route), _) => Ok(Selection::Route {
            route,
            state: target.state,
        }),
        (None, false) => Ok(Selection::Ids(target.ids)),
        (None, true) => Err("name record ids, or --route NAME [--state dead]".into()),
    }
}

async fn execute(command: SpoolCommand) -> Result<(), String> {
    let err = |e: StoreError| e.to_string();
    match command {
        SpoolCommand::Stats { common, json } => {
            let store = open(&common).await?;
            let stats = store.stats().await.map_err(err)?;
            store.close();
            print_stats(&stats, json);
        }
        SpoolCommand::List {
            common,
            route,
            state,
            json,
        } => {
            let store = open(&common).await?;
            let records = match route {
                Some(route) => store
                    .list(Selection::Route { route, state }, LIST_LIMIT)
                    .await
                    .map_err(err)?,
                None => {
                    // Every route: list route by route, from the stats.
                    let stats = store.stats().await.map_err(err)?;
                    let mut all = Vec::new();
                    for r in stats.routes {
                        let sel = Selection::Route {
                            route: r.route,
                            state,
                        };
                        all.extend(store.list(sel, LIST_LIMIT).await.map_err(err)?);
                    }
                    all.sort_by_key(|r| r.received_ms);
                    all
                }
            };
            store.close();
            print_list(&records, json);
        }
        SpoolCommand::Show { common, id } => {
            let store = open(&common).await?;
            let found = store
                .list(Selection::Ids(vec![id.clone()]), 1)
                .await
                .map_err(err)?;
            store.close();
            let record = found
                .into_iter()
                .next()
                .ok_or_else(|| format!("no record with id {id} in the spool"))?;
            let mut out = std::io::stdout().lock();
            let written = out
                .write_all(&record.headers)
                .and_then(|()| out.write_all(b"\r\n"))
                .and_then(|()| out.write_all(&record.body))
                .and_then(|()| out.flush());
            written.map_err(|e| format!("cannot write to stdout: {e}"))?;
        }
        SpoolCommand::Retry { common, target } => {
            let sel = selection(target)?;
            let store = open(&common).await?;
            let missing = missing_ids(store.as_ref(), &sel).await?;
            let n = store.retry(sel, now_ms()).await.map_err(err)?;
            store.close();
            println!("{n} record(s) pending again; the gateway picks them up within a second");
            if let Some(m) = missing {
                return Err(m);
            }
        }
        SpoolCommand::Drop { common, target } => {
            if let (Some(_), None) = (&target.route, &target.state) {
                return Err("drop --route needs --state dead (pending records are still being delivered; name ids to drop those)".into());
            }
            let sel = selection(target)?;
            let store = open(&common).await?;
            let missing = missing_ids(store.as_ref(), &sel).await?;
            let n = store.drop_records(sel).await.map_err(err)?;
            store.close();
            tracing::info!(records = n, "spool: records dropped by operator");
            println!("{n} record(s) dropped");
            if let Some(m) = missing {
                return Err(m);
            }
        }
    }
    Ok(())
}

/// Ids of a selection that are not in the spool, as an error message.
async fn missing_ids(store: &dyn Store, sel: &Selection) -> Result<Option<String>, String> {
    let Selection::Ids(ids) = sel else {
        return Ok(None);
    };
    let found = store
        .list(sel.clone(), ids.len())
        .await
        .map_err(|e| e.to_string())?;
    let missing: Vec<&str> = ids
        .iter()
        .filter(|id| !found.iter().any(|r| &r.id == *id))
        .map(String::as_str)
        .collect();
    Ok((!missing.is_empty())
        .then(|| format!("no record with id {} in the spool", missing.join(", "))))
}

fn rfc3339(ms: i64) -> String {
    let t = UNIX_EPOCH + Duration::from_millis(u64::try_from(ms).unwrap_or(0));
    humantime::format_rfc3339_millis(t).to_string()
}

fn print_stats(stats: &Stats, json: bool) {
    let now = now_ms();
    if json {
        let routes: Vec<String> = stats
            .routes
            .iter()
            .map(|r| {
                format!(
                    "{{\"route\":{},\"pending\":{},\"dead\":{},\"bytes\":{},\"oldest_pending_age_seconds\":{}}}",
                    json_str(&r.route),
                    r.pending,
                    r.dead,
                    r.bytes,
                    r.oldest_pending_ms.map_or(0.0, |t| (now - t).max(0) as f64 / 1000.0)
                )
            })
            .collect();
        println!(
            "{{\"bytes\":{},\"routes\":[{}]}}",
            stats.bytes,
            routes.join(",")
        );
        return;
    }
    println!(
        "{:<24} {:>10} {:>10} {:>14} {:>12}",
        "ROUTE", "PENDING", "DEAD", "BYTES", "OLDEST_AGE"
    );
    for r in &stats.routes {
        let age = r
            .oldest_pending_ms
            .map_or("-".to_string(), |t| format!("{}s", (now - t).max(0) / 1000));
        println!(
            "{:<24} {:>10} {:>10} {:>14} {:>12}",
            r.route, r.pending, r.dead, r.bytes, age
        );
    }
    println!("total bytes: {}", stats.bytes);
}

fn print_list(records: &[Record], json: bool) {
    if json {
        let items: Vec<String> = records
            .iter()
            .map(|r| {
                format!(
                    "{{\"id\":{},\"route\":{},\"state\":\"{}\",\"attempts\":{},\"received_at\":\"{}\",\"next_attempt_at\":\"{}\",\"last_status\":{},\"last_error\":{},\"body_bytes\":{}}}",
                    json_str(&r.id),
                    json_str(&r.route),
                    r.state.as_str(),
                    r.attempts,
                    rfc3339(r.received_ms),
                    rfc3339(r.next_attempt_ms),
                    r.last_status.map_or("null".to_string(), |s| s.to_string()),
                    r.last_error.as_deref().map_or("null".to_string(), json_str),
                    r.body.len()
                )
            })
            .collect();
        println!("[{}]", items.join(","));
        return;
    }
    for r in records {
        let last = match (&r.last_status, &r.last_error) {
            (Some(s), _) => s.to_string(),
            (None, Some(e)) => e.clone(),
            (None, None) => "-".into(),
        };
        println!(
            "{}  {}  {}  attempts={}  received={}  next={}  last={}",
            r.id,
            r.route,
            r.state.as_str(),
            r.attempts,
            rfc3339(r.received_ms),
            rfc3339(r.next_attempt_ms),
            last
        );
    }
}

/// A JSON string literal.
fn json_str(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}
