//! Command line: `run`, `check`, `sign` (SPEC §4).

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
use crate::secret::{Environment, ProcessEnv};
use crate::server;
use crate::verify::Key;

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
    /// Print the signature header value for a body (a testing aid).
    Sign {
        /// Environment variable holding the secret.
        #[arg(long)]
        secret_env: String,
        /// File holding the body; `-` or nothing reads stdin.
        file: Option<PathBuf>,
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
                ExitCode::SUCCESS
            }
            Err(e) => {
                for line in e.problems() {
                    eprintln!("{line}");
                }
                ExitCode::FAILURE
            }
        },
        Command::Sign { secret_env, file } => sign(&secret_env, file),
        Command::Run { config } => serve(&config),
    }
}

/// `file:line:col: warning: route "x": ...`, one per warning.
pub fn warning_lines(config: &Config) -> impl Iterator<Item = String> + '_ {
    config
        .warnings
        .iter()
        .map(|w| format!("{}: warning: {}", w.at, w.message))
}

fn sign(var: &str, file: Option<PathBuf>) -> ExitCode {
    let Some(secret) = ProcessEnv.var(var).filter(|v| !v.is_empty()) else {
        eprintln!(
            "hookgate sign: env var {var} is not set or empty; export the webhook secret in it"
        );
        return ExitCode::FAILURE;
    };
    let mut body = Vec::new();
    let read = match &file {
        Some(path) if path.as_os_str() != "-" => std::fs::read(path).map(|b| body = b),
        _ => std::io::stdin().read_to_end(&mut body).map(|_| ()),
    };
    if let Err(e) = read {
        let from = file.map_or("stdin".to_string(), |p| p.display().to_string());
        eprintln!("hookgate sign: cannot read {from}: {e}");
        return ExitCode::FAILURE;
    }
    let key = Key::new(secret.as_encoded_bytes());
    println!("{}", hex::encode(key.sign(&body)));
    ExitCode::SUCCESS
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
    runtime.block_on(async move {
        match serve_config(path, config).await {
            Ok(()) => ExitCode::SUCCESS,
            Err(message) => {
                tracing::error!("{message}");
                ExitCode::FAILURE
            }
        }
    })
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
    let proxy = Arc::new(Proxy::new(config, metrics.clone()));
    let ready = Arc::new(Readiness::default());
    let admin = tokio::spawn(admin::serve(admin_listener, metrics.clone(), ready.clone()));
    let env: Arc<dyn crate::secret::Environment + Send + Sync> = Arc::new(ProcessEnv);
    let reloader = tokio::spawn(lifecycle::reload_on_sighup(
        hup,
        proxy.clone(),
        path.to_path_buf(),
        env,
    ));
    let watchdog = tokio::spawn(lifecycle::watchdog());

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
        }
    };
    server::serve(listener, proxy, shutdown).await;
    reloader.abort();
    watchdog.abort();
    admin.abort();
    tracing::info!("hookgate stopped");
    Ok(())
}
