//! Command line: `run`, `check`, `sign`, `verify` (SPEC §4, §9), `spool` (SPEC §8).

use std::io::Read;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use clap::{Parser, Subcommand, ValueEnum};

use std::net::SocketAddr;
use std::path::Path;

use sd_notify::NotifyState;
use tokio::net::TcpListener;

use crate::admin::{self, Readiness};
use crate::config::{Config, DEFAULT_CONFIG_PATH};
use crate::lifecycle::{self, StopSignals};
use crate::metrics::Metrics;
use crate::proxy::Proxy;
use crate::scheme::{self, presets, timestamp, Field, Key, SignatureCheck, VerifyError};
use crate::secret::{Environment, ProcessEnv};
use crate::server;
use crate::spool::cli::SpoolCommand;
use crate::spool::{worker, Spool};

#[derive(Debug, Parser)]
#[command(
    name = "hookgate",
    version,
    about = "Forwards only webhooks whose HMAC signature is valid",
    after_long_help = MORE_HELP
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
    /// Log line format on stderr.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
}

/// `hookgate --help` and the man page (generated from these definitions by
/// `examples/deb_assets.rs`) end with this.
const MORE_HELP: &str = "\
Files:
  /etc/hookgate/hookgate.toml   the configuration (--config); every key is described in
                                /usr/share/doc/hookgate/examples/config.example.toml

Environment:
  HOOKGATE_LOG                  log filter (EnvFilter syntax), default \"info\"
  CREDENTIALS_DIRECTORY         where secret = { credential = \"NAME\" } is read (systemd sets it)

Signals (run):
  SIGHUP                        reload the configuration, secrets and certificates
  SIGTERM, SIGINT               stop accepting, drain in-flight requests, exit 0";

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Serve the configured routes.
    Run {
        /// The configuration file (TOML).
        #[arg(long, short, default_value = DEFAULT_CONFIG_PATH)]
        config: PathBuf,
    },
    /// Validate the config, its secrets and certificates, then exit.
    Check {
        /// The configuration file (TOML).
        #[arg(long, short, default_value = DEFAULT_CONFIG_PATH)]
        config: PathBuf,
        /// Fail (exit 1) on any warning too, e.g. in CI.
        #[arg(long)]
        strict: bool,
    },
    /// Print the signature header value for a body (a testing aid); with
    /// --scheme, every header the scheme needs, one `Name: value` per line.
    Sign {
        /// Environment variable holding the secret.
        #[arg(long)]
        secret_env: String,
        /// A preset name (see `hookgate check` for the list).
        #[arg(long)]
        scheme: Option<String>,
        /// Unix seconds to sign with (default: now).
        #[arg(long)]
        timestamp: Option<i64>,
        /// Delivery id, for schemes that sign one (default: msg_<timestamp>).
        // The doc line is clap's --help text, so it stays plain (no backticks).
        #[allow(rustdoc::invalid_html_tags)]
        #[arg(long)]
        id: Option<String>,
        /// The URL the sender calls (twilio signs it).
        #[arg(long)]
        url: Option<String>,
        /// File holding the body; `-` or nothing reads stdin.
        file: Option<PathBuf>,
    },
    /// Check a captured delivery offline against a route's scheme and keys.
    Verify {
        #[arg(long, short, default_value = DEFAULT_CONFIG_PATH)]
        config: PathBuf,
        /// The route (its name) the delivery was sent to.
        #[arg(long)]
        route: String,
        /// A received header, `Name: value`; repeat for each.
        #[arg(long = "header", short = 'H')]
        headers: Vec<String>,
        /// The URL the delivery was sent to (its query counts for twilio).
        #[arg(long)]
        url: Option<String>,
        /// Verify as of this time (RFC 3339 or unix seconds; default: now).
        #[arg(long)]
        at: Option<String>,
        /// File holding the body; `-` or nothing reads stdin.
        file: Option<PathBuf>,
    },
    /// Inspect and replay the spool (works while the gateway runs).
    Spool {
        #[command(subcommand)]
        command: SpoolCommand,
    },
}

/// Runs a parsed command line; errors are printed here, one per line.
pub fn run(cli: Cli) -> ExitCode {
    match cli.command {
        Command::Check { config, strict } => match Config::load(&config, &ProcessEnv) {
            Ok(c) if c.routes.is_empty() => {
                // Valid (the packaged default is like this), but say plainly
                // that nothing will be forwarded yet.
                println!(
                    "{}: configuration OK; no routes configured: every request will be answered 404 until a [[route]] is added",
                    config.display()
                );
                ExitCode::SUCCESS
            }
            Ok(c) => {
                for line in warning_lines(&c) {
                    eprintln!("{line}");
                }
                for line in c.expiring_keys(timestamp::now(), KEY_EXPIRY_WARNING) {
                    eprintln!("warning: {line}");
                }
                if strict && !c.warnings.is_empty() {
                    return ExitCode::FAILURE;
                }
                let warnings = match c.warnings.len() {
                    0 => String::new(),
                    1 => ", 1 warning".to_string(),
                    n => format!(", {n} warnings"),
                };
                println!(
                    "{}: configuration OK ({} route{}{warnings})",
                    config.display(),
                    c.routes.len(),
                    if c.routes.len() == 1 { "" } else { "s" }
                );
                check_database(&c)
            }
            Err(e) => {
                for line in e.problems() {
                    eprintln!("{line}");
                }
                ExitCode::FAILURE
            }
        },
        Command::Sign {
            secret_env,
            scheme,
            timestamp,
            id,
            url,
            file,
        } => sign(
            &secret_env,
            scheme.as_deref(),
            timestamp,
            id,
            url.as_deref(),
            file,
        ),
        Command::Verify {
            config,
            route,
            headers,
            url,
            at,
            file,
        } => verify(
            &config,
            &route,
            &headers,
            url.as_deref(),
            at.as_deref(),
            file,
        ),
        Command::Run { config } => serve(&config),
        Command::Spool { command } => crate::spool::cli::run(command),
    }
}

/// `hookgate check` with a PostgreSQL spool: connects and reports the
/// schema version it finds (without changing it).
fn check_database(config: &Config) -> ExitCode {
    let Some(crate::config::Backend::Postgres { url, .. }) =
        config.spool.as_ref().map(|s| &s.backend)
    else {
        return ExitCode::SUCCESS;
    };
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("hookgate check: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let current = crate::spool::postgres::schema_version();
    let found = match runtime.block_on(crate::spool::postgres::inspect(url)) {
        Ok(found) => found,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::FAILURE;
        }
    };
    let masked = url.masked();
    let tls = &found.tls;
    match found.schema_version {
        0 => println!(
            "{masked}: spool database reachable ({tls}); schema not created yet (hookgate run creates version {current})"
        ),
        v if v < current => println!(
            "{masked}: spool database reachable ({tls}); schema version {v} (hookgate run migrates it to {current})"
        ),
        v => println!("{masked}: spool database reachable ({tls}); schema version {v} (current)"),
    }
    ExitCode::SUCCESS
}

/// `file:line:col: warning: route "x": ...`, one per warning.
pub fn warning_lines(config: &Config) -> impl Iterator<Item = String> + '_ {
    config
        .warnings
        .iter()
        .map(|w| format!("{}: warning: {}", w.at, w.message))
}

/// Keys expiring within this window are warned about at load, on reload,
/// daily while serving, and by `check`.
pub const KEY_EXPIRY_WARNING: std::time::Duration = std::time::Duration::from_secs(7 * 24 * 3600);

fn read_body(command: &str, file: Option<PathBuf>) -> Result<Vec<u8>, ExitCode> {
    let mut body = Vec::new();
    let read = match &file {
        Some(path) if path.as_os_str() != "-" => std::fs::read(path).map(|b| body = b),
        _ => std::io::stdin().read_to_end(&mut body).map(|_| ()),
    };
    match read {
        Ok(()) => Ok(body),
        Err(e) => {
            let from = file.map_or("stdin".to_string(), |p| p.display().to_string());
            eprintln!("hookgate {command}: cannot read {from}: {e}");
            Err(ExitCode::FAILURE)
        }
    }
}

fn sign(
    var: &str,
    scheme_name: Option<&str>,
    ts: Option<i64>,
    id: Option<String>,
    url: Option<&str>,
    file: Option<PathBuf>,
) -> ExitCode {
    let Some(secret) = ProcessEnv.var(var).filter(|v| !v.is_empty()) else {
        eprintln!(
            "hookgate sign: env var {var} is not set or empty; export the webhook secret in it"
        );
        return ExitCode::FAILURE;
    };
    let scheme = match scheme_name.map(|n| (n, presets::preset(n))) {
        None => presets::preset("adsumo"),
        Some((_, Some(s))) => Some(s),
        Some((n, None)) => {
            eprintln!(
                "hookgate sign: unknown scheme {n:?}; use one of {}",
                presets::NAMES.join(", ")
            );
            return ExitCode::FAILURE;
        }
    };
    let Some(scheme) = scheme else {
        return ExitCode::FAILURE;
    };
    let key = match Key::new(&scheme, "cli".into(), secret.as_encoded_bytes(), None, None) {
        Ok(k) => k,
        Err(e) => {
            eprintln!("hookgate sign: {var}: {e}");
            return ExitCode::FAILURE;
        }
    };
    let body = match read_body("sign", file) {
        Ok(b) => b,
        Err(code) => return code,
    };
    let ts = ts.unwrap_or_else(timestamp::now);
    let id = id.unwrap_or_else(|| format!("msg_{ts}"));
    match scheme::sign(&scheme, &key, ts, &id, url, &body) {
        // Without --scheme: the bare value, as before (SPEC §4).
        Ok(fields) if scheme_name.is_none() => {
            for (_, value) in fields {
                println!("{value}");
            }
            ExitCode::SUCCESS
        }
        Ok(fields) => {
            for (name, value) in fields {
                println!("{name}: {value}");
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("hookgate sign: {e}");
            ExitCode::FAILURE
        }
    }
}

/// `hookgate verify`: exit 0 and `valid (key <id>)`, or exit 1 and the
/// precise reason. Never prints a secret or an expected signature.
fn verify(
    config: &Path,
    route_name: &str,
    header_args: &[String],
    url: Option<&str>,
    at: Option<&str>,
    file: Option<PathBuf>,
) -> ExitCode {
    let fail = |msg: String| {
        eprintln!("hookgate verify: {msg}");
        ExitCode::FAILURE
    };
    let config = match Config::load(config, &ProcessEnv) {
        Ok(c) => c,
        Err(e) => {
            for line in e.problems() {
                eprintln!("{line}");
            }
            return ExitCode::FAILURE;
        }
    };
    let Some(route) = config.routes.iter().find(|r| r.name == route_name) else {
        let names: Vec<&str> = config.routes.iter().map(|r| r.name.as_str()).collect();
        return fail(format!(
            "no route named {route_name:?}; the routes are {}",
            names.join(", ")
        ));
    };
    let mut headers = http::HeaderMap::new();
    for h in header_args {
        let Some((name, value)) = h.split_once(':') else {
            return fail(format!("--header {h:?} is not `Name: value`"));
        };
        match (
            http::HeaderName::from_bytes(name.trim().as_bytes()),
            http::HeaderValue::from_str(value.trim()),
        ) {
            (Ok(n), Ok(v)) => {
                headers.append(n, v);
            }
            _ => {
                return fail(format!(
                    "--header {name:?}: not a valid header name or value"
                ))
            }
        }
    }
    let now = match at {
        None => timestamp::now(),
        Some(t) => match timestamp::parse_instant(t) {
            Some(t) => t,
            None => return fail(format!("--at {t:?} is not RFC 3339 or unix seconds")),
        },
    };
    let (query, owned);
    let check = match url {
        None => {
            query = None;
            &route.check
        }
        Some(u) => {
            let Ok(uri) = u.parse::<http::Uri>() else {
                return fail(format!("--url {u:?} is not a URL"));
            };
            query = uri.query().map(str::to_string);
            // Twilio signs the URL it called: the one given here wins over
            // the route's public_url.
            let base = u.split('?').next().unwrap_or(u).to_string();
            owned = SignatureCheck::new(
                route.check.scheme.clone(),
                route.check.keys.clone(),
                route.check.public_url.as_ref().map(|_| base),
            );
            &owned
        }
    };
    let body = match read_body("verify", file) {
        Ok(b) => b,
        Err(code) => return code,
    };
    match scheme::verify_whole(check, &headers, query.as_deref(), &body, now) {
        Ok(v) => {
            let id = check.keys.get(v.key).map_or("?", |k| k.id.as_str());
            println!("valid (key {id})");
            ExitCode::SUCCESS
        }
        Err(e) => {
            println!("invalid: {}", explain(check, e, now));
            ExitCode::FAILURE
        }
    }
}

/// The precise reason, naming the header, the check and the key windows.
pub fn explain(check: &SignatureCheck, err: VerifyError, now: i64) -> String {
    let scheme = &check.scheme;
    let sig = scheme.field_header_text(Field::Signature);
    let windows = || {
        let list: Vec<String> = check
            .keys
            .iter()
            .map(|k| {
                let from = k.not_before.map(timestamp::format);
                let to = k.not_after.map(timestamp::format);
                let state = if k.valid_at(now) {
                    "valid"
                } else {
                    "not valid"
                };
                match (from, to) {
                    (None, None) => format!("{} ({state}, no window)", k.id),
                    (f, t) => format!(
                        "{} ({state}: {} .. {})",
                        k.id,
                        f.unwrap_or_else(|| "-".into()),
                        t.unwrap_or_else(|| "-".into())
                    ),
                }
            })
            .collect();
        format!("[{}] at {}", list.join(", "), timestamp::format(now))
    };
    match err {
        VerifyError::Missing(f) => format!(
            "header {} is missing (scheme {})",
            scheme.field_header_text(f),
            scheme.name
        ),
        VerifyError::Duplicated(f) => format!(
            "header {} is present more than once; exactly one is expected",
            scheme.field_header_text(f)
        ),
        VerifyError::Malformed(f) => format!(
            "header {} is malformed for scheme {}",
            scheme.field_header_text(f),
            scheme.name
        ),
        VerifyError::WrongPrefix => match &scheme.format {
            scheme::Format::Single { prefix } => {
                format!("header {sig} does not start with {prefix:?}")
            }
            _ => format!("header {sig} has the wrong prefix"),
        },
        VerifyError::WrongLength => format!(
            "header {sig}: the signature has the wrong length for {} {} ({} bytes)",
            scheme.encoding.as_str(),
            scheme.algorithm.as_str(),
            scheme.algorithm.mac_len()
        ),
        VerifyError::NotHex => format!("header {sig}: the signature is not hexadecimal"),
        VerifyError::NotBase64 => format!("header {sig}: the signature is not base64"),
        VerifyError::NoSignature => {
            format!("header {sig} carries no signature of a version this scheme accepts")
        }
        VerifyError::TooManySignatures => {
            format!("header {sig} carries more than {} items", scheme::MAX_ITEMS)
        }
        VerifyError::TimestampUnparsable => format!(
            "header {}: the timestamp is not parsable",
            scheme.field_header_text(Field::Timestamp)
        ),
        VerifyError::TimestampOutside { skew } => {
            let tolerance = scheme.tolerance.map_or(0, |t| t.as_secs());
            format!(
                "timestamp {} s {}, {} s outside the {tolerance} s tolerance (header {}, checked at {})",
                skew.unsigned_abs(),
                if skew > 0 { "old" } else { "in the future" },
                skew.unsigned_abs().saturating_sub(tolerance),
                scheme.field_header_text(Field::Timestamp),
                timestamp::format(now)
            )
        }
        VerifyError::NoKeyValid => {
            format!("no key is valid at this time; key windows {}", windows())
        }
        VerifyError::BodyHashMismatch => {
            "the body's SHA-256 differs from the URL's bodySHA256 parameter".to_string()
        }
        VerifyError::Mismatch => format!("header {sig}: no key matched among ids {}", windows()),
    }
}

fn serve(path: &std::path::Path) -> ExitCode {
    crate::tls::install_default_provider();
    let config = match Config::load(path, &ProcessEnv) {
        Ok(c) => c,
        Err(e) => {
            for line in e.problems() {
                tracing::error!("{line}");
            }
            return ExitCode::FAILURE;
        }
    };
    for line in warning_lines(&config) {
        tracing::warn!("{line}");
    }
    // With one CPU to run on (a 1-vCPU host, or pinned with taskset), a
    // work-stealing pool of one worker is pure overhead: the single-threaded
    // scheduler measured ~12 % less CPU per request in the load benchmark.
    let one_cpu = std::thread::available_parallelism().is_ok_and(|n| n.get() == 1);
    let mut builder = if one_cpu {
        tokio::runtime::Builder::new_current_thread()
    } else {
        tokio::runtime::Builder::new_multi_thread()
    };
    let runtime = match builder.enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            tracing::error!("cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let code = runtime.block_on(async move {
        match serve_config(path, config).await {
            Ok(()) => ExitCode::SUCCESS,
            Err(message) => {
                tracing::error!("{message}");
                ExitCode::FAILURE
            }
        }
    });
    // Whatever way serving ended, no access line stays in the buffer.
    crate::logging::access::stop_coalescing();
    code
}

async fn bind(addr: SocketAddr, key: &str, path: &Path) -> Result<TcpListener, String> {
    TcpListener::bind(addr).await.map_err(|e| {
        format!(
            "{}: cannot listen on {addr} ({key}): {e}; free the port or change {key}",
            path.display()
        )
    })
}

/// Binds the listeners, serves until SIGTERM/SIGINT, drains, returns.
async fn serve_config(path: &Path, config: Config) -> Result<(), String> {
    let stop =
        StopSignals::install().map_err(|e| format!("cannot install signal handlers: {e}"))?;
    let hup =
        lifecycle::hangup_signal().map_err(|e| format!("cannot install SIGHUP handler: {e}"))?;
    let listener = bind(config.server.listen, "server.listen", path).await?;
    let admin_listener = bind(config.admin.listen, "admin.listen", path).await?;

    let admin_addr = admin_listener.local_addr().map_err(|e| e.to_string())?;
    let metrics = Arc::new(Metrics::new());
    metrics.config_loaded(true);
    let routes = config.routes.len();
    let tls = config.server.tls.is_some();
    let shutdown_timeout = config.server.shutdown_timeout;
    // A spool that cannot be opened (corrupt, another version's, not a
    // spool) stops the start: it is never replaced.
    let store = match &config.spool {
        Some(s) => Some(crate::spool::open(s, true).await?),
        None => None,
    };
    let spool = store.clone().map(|s| Arc::new(Spool::new(s)));
    let proxy = Arc::new(Proxy::with_spool(config, metrics.clone(), spool.clone()));
    let ready = Arc::new(Readiness::default());
    let (stop_worker, worker_stop) = tokio::sync::watch::channel(false);
    let mut background = Vec::new();
    let mut redelivery = None;
    if let Some(spool) = &spool {
        ready.watch_spool(spool.health.clone());
        redelivery = Some(tokio::spawn(worker::run(
            proxy.clone(),
            spool.clone(),
            worker_stop,
        )));
        background.push(tokio::spawn(worker::gauges(proxy.clone(), spool.clone())));
    }
    let admin = tokio::spawn(admin::serve(admin_listener, metrics.clone(), ready.clone()));
    let env: Arc<dyn crate::secret::Environment + Send + Sync> = Arc::new(ProcessEnv);
    let reloader = tokio::spawn(lifecycle::reload_on_sighup(
        hup,
        proxy.clone(),
        path.to_path_buf(),
        env,
    ));
    let watchdog = tokio::spawn(lifecycle::watchdog());
    let access_lines = tokio::spawn(crate::logging::access::coalesce());
    let expiry = tokio::spawn(lifecycle::key_expiry_warnings(proxy.clone()));

    let listen = listener.local_addr().map_err(|e| e.to_string())?;
    tracing::info!(%listen, admin = %admin_addr, routes, tls, version = env!("CARGO_PKG_VERSION"), "hookgate serving");
    if routes == 0 {
        tracing::warn!(
            "no routes configured: every request is answered 404; add a [[route]] and reload"
        );
    }
    ready.set(true);
    let status = format!("serving {routes} routes");
    lifecycle::notify(&[NotifyState::Ready, NotifyState::Status(&status)]);

    let shutdown = {
        let ready = ready.clone();
        async move {
            stop.recv().await;
            ready.set(false);
            lifecycle::notify(&[NotifyState::Stopping, NotifyState::Status("draining")]);
            // Redeliveries drain alongside the requests in flight.
            let _ = stop_worker.send(true);
        }
    };
    server::serve(listener, proxy, shutdown).await;
    if let Some(redelivery) = redelivery {
        // The worker bounds its own drain by shutdown_timeout; this bound
        // only guards against a worker that does not return.
        let _ = tokio::time::timeout(shutdown_timeout + worker::SHUTDOWN_MARGIN, redelivery).await;
    }
    for task in background {
        task.abort();
    }
    if let Some(store) = store {
        // Off the runtime: joining the writer thread blocks.
        let _ = tokio::task::spawn_blocking(move || {
            store.close();
            if let Some((commits, writes, max_batch)) = store.group_commits() {
                tracing::info!(commits, writes, max_batch, "spool closed");
            }
        })
        .await;
    }
    crate::logging::access::stop_coalescing();
    access_lines.abort();
    reloader.abort();
    watchdog.abort();
    expiry.abort();
    admin.abort();
    tracing::info!("hookgate stopped");
    Ok(())
}
