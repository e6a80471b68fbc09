//! Process lifecycle (SPEC §5): stop signals, SIGHUP reload, and systemd
//! notifications (`sd-notify`, a no-op without `NOTIFY_SOCKET`).
//!
//! Reload builds the complete new state first, with the same validation as
//! `hookgate check`, then swaps it in atomically; requests in flight finish
//! on the state they started with. Anything wrong leaves the old state
//! serving and is logged as one line.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use sd_notify::NotifyState;
use tokio::signal::unix::{signal, Signal, SignalKind};

use crate::config::{Config, ConfigError};
use crate::proxy::Proxy;
use crate::secret::Environment;

/// Installs the SIGTERM and SIGINT handlers. Done before the listeners are
/// bound so a stop request is never lost.
pub struct StopSignals {
    term: Signal,
    int: Signal,
}

impl StopSignals {
    pub fn install() -> std::io::Result<StopSignals> {
        Ok(StopSignals {
            term: signal(SignalKind::terminate())?,
            int: signal(SignalKind::interrupt())?,
        })
    }

    /// Resolves at the first SIGTERM or SIGINT.
    pub async fn recv(mut self) {
        tokio::select! {
            _ = self.term.recv() => tracing::info!("SIGTERM received; draining"),
            _ = self.int.recv() => tracing::info!("SIGINT received; draining"),
        }
    }
}

/// Why a reload was refused. The old configuration keeps serving.
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("{0} changed from {1} to {2}; a listen address cannot change on reload, restart hookgate to apply it")]
    ListenChanged(&'static str, std::net::SocketAddr, std::net::SocketAddr),
    #[error(
        "[server.tls] was {0} and is now {1}; switching between TLS and plain HTTP needs a restart"
    )]
    TlsToggled(&'static str, &'static str),
    #[error("spool.path changed from {0} to {1}; the spool file cannot change on reload, restart hookgate to apply it")]
    SpoolChanged(String, String),
    #[error("spool.backend, url or lease changed ({0} → {1}); the spool store cannot change on reload, restart hookgate to apply it")]
    SpoolBackendChanged(String, String),
}

/// Loads `path` and, if it is valid and compatible with the running
/// listeners, swaps it in. Returns the number of routes now served.
pub fn reload(proxy: &Proxy, path: &Path, env: &dyn Environment) -> Result<usize, ReloadError> {
    let new = Config::load(path, env)?;
    let old = proxy.state();
    let (o, n) = (&old.config, &new);
    if o.server.listen != n.server.listen {
        return Err(ReloadError::ListenChanged(
            "server.listen",
            o.server.listen,
            n.server.listen,
        ));
    }
    if o.admin.listen != n.admin.listen {
        return Err(ReloadError::ListenChanged(
            "admin.listen",
            o.admin.listen,
            n.admin.listen,
        ));
    }
    let tls_word = |c: &Config| {
        if c.server.tls.is_some() {
            "present"
        } else {
            "absent"
        }
    };
    if o.server.tls.is_some() != n.server.tls.is_some() {
        return Err(ReloadError::TlsToggled(tls_word(o), tls_word(n)));
    }
    let spool_path = |c: &Config| {
        c.spool
            .as_ref()
            .map_or("(no [spool])".to_string(), |s| format!("{:?}", s.path))
    };
    if o.spool.as_ref().map(|s| &s.path) != n.spool.as_ref().map(|s| &s.path) {
        return Err(ReloadError::SpoolChanged(spool_path(o), spool_path(n)));
    }
    if o.spool.as_ref().map(|s| &s.backend) != n.spool.as_ref().map(|s| &s.backend) {
        // The URL's password stays masked in the message.
        let describe = |c: &Config| match c.spool.as_ref().map(|s| &s.backend) {
            None => "(no [spool])".to_string(),
            Some(crate::config::Backend::Sqlite) => "sqlite".to_string(),
            Some(crate::config::Backend::Postgres { url, lease }) => format!(
                "postgres {} lease {}",
                url.masked(),
                humantime::format_duration(*lease)
            ),
        };
        return Err(ReloadError::SpoolBackendChanged(describe(o), describe(n)));
    }
    if o.limits.max_connections != n.limits.max_connections {
        tracing::warn!("limits.max_connections changed; the new value applies after a restart");
    }
    for line in crate::cli::warning_lines(&new) {
        tracing::warn!("{line}");
    }
    let routes = new.routes.len();
    proxy.replace_config(new);
    Ok(routes)
}

/// Reloads on every SIGHUP until the task is dropped, telling systemd
/// RELOADING=1 (with MONOTONIC_USEC) before and READY=1 after, also when the
/// reload failed and the old configuration stays.
pub async fn reload_on_sighup(
    mut hup: Signal,
    proxy: Arc<Proxy>,
    path: PathBuf,
    env: Arc<dyn Environment + Send + Sync>,
) {
    while hup.recv().await.is_some() {
        let mut reloading = vec![NotifyState::Reloading];
        if let Ok(now) = NotifyState::monotonic_usec_now() {
            reloading.push(now);
        }
        notify(&reloading);
        let status = match reload(&proxy, &path, env.as_ref()) {
            Ok(routes) => {
                proxy.metrics().config_loaded(true);
                tracing::info!(routes, "configuration reloaded");
                warn_expiring_keys(&proxy.state().config);
                format!("serving {routes} routes; last reload ok")
            }
            Err(e) => {
                proxy.metrics().config_loaded(false);
                // ConfigError may hold several problems: one line each.
                for line in e.to_string().lines() {
                    tracing::error!("reload failed, old configuration kept: {line}");
                }
                let routes = proxy.state().config.routes.len();
                format!("serving {routes} routes; last reload FAILED (see log)")
            }
        };
        notify(&[NotifyState::Ready, NotifyState::Status(&status)]);
    }
}

/// Logs a warn line per key that expires within 7 days (never the secret).
pub fn warn_expiring_keys(config: &Config) {
    let now = crate::scheme::timestamp::now();
    for line in config.expiring_keys(now, crate::cli::KEY_EXPIRY_WARNING) {
        tracing::warn!("{line}");
    }
}

/// Warns about soon-expiring keys at start, then once a day, so a rotation
/// left half-done is noticed before the old key stops verifying.
pub async fn key_expiry_warnings(proxy: Arc<Proxy>) {
    let mut daily = tokio::time::interval(std::time::Duration::from_secs(24 * 3600));
    loop {
        daily.tick().await;
        warn_expiring_keys(&proxy.state().config);
    }
}

/// SIGHUP's handler; installed before READY=1 so a reload request is never
/// taken as the default "terminate".
pub fn hangup_signal() -> std::io::Result<Signal> {
    signal(SignalKind::hangup())
}

/// Sends WATCHDOG=1 at half the interval systemd asks for, if it asks.
pub async fn watchdog() {
    let Some(interval) = sd_notify::watchdog_enabled() else {
        return std::future::pending().await;
    };
    let mut tick = tokio::time::interval(interval / 2);
    loop {
        tick.tick().await;
        notify(&[NotifyState::Watchdog]);
    }
}

/// Sends a notification to systemd; without `NOTIFY_SOCKET` it does nothing.
pub fn notify(states: &[NotifyState<'_>]) {
    if let Err(e) = sd_notify::notify(states) {
        tracing::warn!(error = %e, "systemd notification failed");
    }
}
