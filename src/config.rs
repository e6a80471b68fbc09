//! Configuration: TOML text → raw serde structs → validated [`Config`].
//!
//! ```text
//!   hookgate.toml ──parse──▶ RawConfig ──validate + load secrets──▶ Config
//! ```
//! Parsing rejects unknown keys. Validation collects *every* problem before
//! failing, so one `hookgate check` run reports all of them, each on one line
//! naming `file:line:col` and, for a route, its name, plus what to do.
//! Nothing here ever prints a secret or file content: messages name keys,
//! paths and env var names only.
//!
//! Values are chosen per route as: the route's own key, else `[limits]`,
//! else the default shown in SPEC §3.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::net::SocketAddr;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use http::uri::{Authority, PathAndQuery};
use http::{HeaderValue, Method, Uri};
use ipnet::IpNet;
use serde::Deserialize;
use toml::Spanned;

use crate::scheme::{self, timestamp, Key, SignatureCheck, MAX_KEYS};
use crate::secret::{Environment, KeySource, Secret, SecretSource};

pub const DEFAULT_CONFIG_PATH: &str = "/etc/hookgate/hookgate.toml";

const DEFAULT_MAX_BODY_BYTES: u64 = 1024 * 1024;
const DEFAULT_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
// The sender gives up after 10 s; answering 504 before that lets it see why.
const DEFAULT_UPSTREAM_TIMEOUT: Duration = Duration::from_secs(9);
const DEFAULT_SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(30);
// nginx's send_timeout default is 60 s; the sender gives up after 10 s
// anyway, so 30 s only has to outlast a slow but live client.
const DEFAULT_SEND_TIMEOUT: Duration = Duration::from_secs(30);
const DEFAULT_MAX_CONNECTIONS: usize = 10_000;
const DEFAULT_ADMIN_LISTEN: &str = "127.0.0.1:9464";
/// Secrets shorter than this are warned about (Standard Webhooks asks for
/// at least 24 random bytes; 16 is the floor below which we speak up).
const MIN_SECRET_BYTES: usize = 16;
const DEFAULT_SPOOL_MAX_BYTES: u64 = 1024 * 1024 * 1024;
const DEFAULT_SPOOL_RETRY: [u64; 10] = [
    10,
    60,
    5 * 60,
    15 * 60,
    3600,
    2 * 3600,
    4 * 3600,
    8 * 3600,
    12 * 3600,
    24 * 3600,
];
const DEFAULT_SPOOL_MAX_AGE: Duration = Duration::from_secs(72 * 3600);
const DEFAULT_REDELIVERY_CONCURRENCY: usize = 4;
const DEFAULT_SPOOL_LEASE: Duration = Duration::from_secs(30);

// ---------------------------------------------------------------------------
// Raw form: exactly what the file says.

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    server: RawServer,
    admin: Option<RawAdmin>,
    #[serde(default)]
    limits: RawLimits,
    spool: Option<Spanned<RawSpool>>,
    #[serde(default, rename = "route")]
    routes: Vec<Spanned<RawRoute>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSpool {
    backend: Option<Spanned<String>>,
    path: Option<Spanned<PathBuf>>,
    url: Option<Spanned<SecretSource>>,
    lease: Option<Spanned<String>>,
    max_bytes: Option<Spanned<RawSize>>,
    retry: Option<Spanned<Vec<String>>>,
    max_age: Option<Spanned<String>>,
    redelivery_concurrency: Option<Spanned<u64>>,
}

/// A byte size: a plain integer or a string with a unit ("64MiB").
#[derive(Deserialize)]
#[serde(untagged)]
enum RawSize {
    Bytes(u64),
    Text(String),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawServer {
    listen: Spanned<String>,
    #[serde(default)]
    trusted_proxies: Vec<Spanned<String>>,
    shutdown_timeout: Option<Spanned<String>>,
    tls: Option<RawTls>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTls {
    cert: Spanned<PathBuf>,
    key: Spanned<PathBuf>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAdmin {
    listen: Option<Spanned<String>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawLimits {
    max_body_bytes: Option<Spanned<u64>>,
    handshake_timeout: Option<Spanned<String>>,
    request_timeout: Option<Spanned<String>>,
    upstream_timeout: Option<Spanned<String>>,
    send_timeout: Option<Spanned<String>>,
    max_connections: Option<Spanned<u64>>,
    replay_max_entries: Option<Spanned<u64>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRoute {
    name: Spanned<String>,
    path: Spanned<String>,
    host: Option<Spanned<String>>,
    upstream: Spanned<String>,
    secret: Option<Spanned<SecretSource>>,
    secrets: Option<Spanned<Vec<KeySource>>>,
    scheme: Option<Spanned<toml::Value>>,
    public_url: Option<Spanned<String>>,
    enforce: Option<bool>,
    methods: Option<Spanned<Vec<String>>>,
    forwarded_headers: Option<bool>,
    max_body_bytes: Option<Spanned<u64>>,
    request_timeout: Option<Spanned<String>>,
    upstream_timeout: Option<Spanned<String>>,
    replay_window: Option<Spanned<String>>,
    delivery: Option<Spanned<String>>,
}

// ---------------------------------------------------------------------------
// Validated form: what the gateway runs on.

/// A loaded, validated configuration with every route's HMAC key prepared.
#[derive(Debug)]
pub struct Config {
    /// The file this came from (used in messages).
    pub origin: PathBuf,
    pub server: Server,
    pub admin: Admin,
    pub limits: Limits,
    /// `[spool]` (SPEC §8); `None`: every route is `sync`.
    pub spool: Option<Spool>,
    /// May be empty (the packaged default config): every request then gets
    /// 404, like a web server with no site configured.
    pub routes: Vec<Arc<Route>>,
    /// Foot-guns that do not stop loading (shared or short secrets, loose
    /// secret file modes, upstream hosts that do not resolve), each naming
    /// its route. `check` prints them (and fails with `--strict`), `run`
    /// and reload log them.
    pub warnings: Vec<Problem>,
}

/// `[spool]`: where undeliverable webhooks are kept and how they are retried.
#[derive(Debug, Clone, PartialEq)]
pub struct Spool {
    /// Where the records live (SPEC §8 SQLite, §11 PostgreSQL).
    pub backend: Backend,
    /// The SQLite file, as written (relative to the working directory);
    /// empty with `backend = "postgres"`.
    pub path: PathBuf,
    /// Stored bytes (headers + bodies, pending + dead) beyond which writes get 503.
    pub max_bytes: u64,
    /// Delay after each failed attempt (before jitter); never empty.
    pub retry: Vec<Duration>,
    /// Undelivered after this long: dead.
    pub max_age: Duration,
    /// Deliveries in flight per route once its upstream answers again.
    pub redelivery_concurrency: usize,
}

/// `spool.backend`.
#[derive(Debug, Clone, PartialEq)]
pub enum Backend {
    /// One SQLite file on this host (`spool.path`).
    Sqlite,
    /// A PostgreSQL database shared by every instance (SPEC §11).
    Postgres {
        /// `spool.url`, loaded from where it says (env, file, credential).
        url: DatabaseUrl,
        /// How long a record taken for delivery stays this instance's
        /// before another instance may take it over.
        lease: Duration,
    },
}

/// A PostgreSQL connection string. It usually carries a password, so it is
/// never printed: `Debug` and [`DatabaseUrl::masked`] show it without one.
#[derive(Clone, PartialEq, Eq)]
pub struct DatabaseUrl {
    text: String,
    /// Where it was loaded from, for messages.
    pub source: String,
}

impl DatabaseUrl {
    pub fn new(text: String, source: String) -> DatabaseUrl {
        DatabaseUrl { text, source }
    }

    /// The full string, password included: only for connecting.
    pub fn expose(&self) -> &str {
        &self.text
    }

    /// The string with any password replaced by `***` (URL form
    /// `scheme://user:password@host`, or a `password=` key/value pair).
    pub fn masked(&self) -> String {
        mask_password(&self.text)
    }
}

impl fmt::Debug for DatabaseUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "DatabaseUrl({})", self.masked())
    }
}

/// Replaces the password of a PostgreSQL connection string with `***`.
pub fn mask_password(text: &str) -> String {
    if let Some(scheme_end) = text.find("://") {
        let rest = &text[scheme_end + 3..];
        // The userinfo ends at the last '@' before the path.
        let authority_end = rest.find(['/', '?']).unwrap_or(rest.len());
        let authority = &rest[..authority_end];
        let mut out = text.to_string();
        if let Some(at) = authority.rfind('@') {
            if let Some(colon) = authority[..at].find(':') {
                let start = scheme_end + 3 + colon + 1;
                out.replace_range(start..scheme_end + 3 + at, "***");
            }
        }
        // A password may also ride in the query (`?password=`).
        return mask_query_password(&out);
    }
    // key=value form: mask the value of `password`.
    let mut out = Vec::new();
    for word in text.split_whitespace() {
        match word.split_once('=') {
            Some((k, _)) if k.trim().eq_ignore_ascii_case("password") => {
                out.push(format!("{k}=***"))
            }
            _ => out.push(word.to_string()),
        }
    }
    out.join(" ")
}

fn mask_query_password(url: &str) -> String {
    let Some(q) = url.find('?') else {
        return url.to_string();
    };
    let (head, query) = url.split_at(q + 1);
    let parts: Vec<String> = query
        .split('&')
        .map(|p| match p.split_once('=') {
            Some((k, _)) if k.eq_ignore_ascii_case("password") => format!("{k}=***"),
            _ => p.to_string(),
        })
        .collect();
    format!("{head}{}", parts.join("&"))
}

impl Spool {
    /// The largest step of the schedule: the cap for `Retry-After`.
    pub fn largest_step(&self) -> Duration {
        self.retry.iter().copied().max().unwrap_or(Duration::ZERO)
    }
}

/// `route.delivery` (SPEC §8).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Delivery {
    /// Forward and relay; nothing is kept.
    Sync,
    /// Forward; keep the request and answer 202 when the upstream fails.
    OnFailure,
    /// Keep the request, answer 202, let the redelivery worker forward it.
    Always,
}

impl Delivery {
    pub fn as_str(self) -> &'static str {
        match self {
            Delivery::Sync => "sync",
            Delivery::OnFailure => "on_failure",
            Delivery::Always => "always",
        }
    }

    /// Whether requests of this route may end up in the spool (and so carry
    /// `X-Hookgate-Delivery` on every attempt).
    pub fn spooled(self) -> bool {
        !matches!(self, Delivery::Sync)
    }
}

#[derive(Debug, Clone)]
pub struct Server {
    pub listen: SocketAddr,
    pub trusted_proxies: Vec<IpNet>,
    pub shutdown_timeout: Duration,
    pub tls: Option<Tls>,
}

/// `[server.tls]`: the files and the rustls config built from them at load.
#[derive(Debug, Clone)]
pub struct Tls {
    pub files: TlsFiles,
    pub server_config: Arc<rustls::ServerConfig>,
    /// The served leaf certificate's notAfter, Unix seconds.
    pub leaf_not_after: i64,
}

/// Paths of the PEM files for `[server.tls]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

#[derive(Debug, Clone)]
pub struct Admin {
    pub listen: SocketAddr,
}

/// Global limits (`[limits]`); each route carries its effective copy.
#[derive(Debug, Clone)]
pub struct Limits {
    pub max_body_bytes: u64,
    pub handshake_timeout: Duration,
    pub request_timeout: Duration,
    pub upstream_timeout: Duration,
    /// A write to the client that makes no progress for this long closes
    /// the connection (and cancels the upstream request it relays).
    pub send_timeout: Duration,
    pub max_connections: usize,
    /// Bound of the in-memory replay store, process-wide (not per route).
    pub replay_max_entries: usize,
}

/// Where a route forwards to.
#[derive(Debug, Clone)]
pub struct Upstream {
    pub authority: Authority,
    /// `None`: keep the request's path and query. `Some(p)`: send to `p`,
    /// keeping the request's query.
    pub fixed_path: Option<PathAndQuery>,
}

/// One `[[route]]`, ready to serve.
#[derive(Debug)]
pub struct Route {
    /// Position in [`Config::routes`] (indexes per-route state such as metrics).
    pub index: usize,
    pub name: String,
    pub path: String,
    /// Lower-case host without port; `None` matches any host.
    pub host: Option<String>,
    pub upstream: Upstream,
    /// The scheme and the route's keys, prepared at load.
    pub check: SignatureCheck,
    /// `false`: shadow mode (verify, count, log, forward anyway).
    pub enforce: bool,
    pub methods: Vec<Method>,
    /// Pre-rendered `Allow` header for 405 answers.
    pub allow: HeaderValue,
    pub forwarded_headers: bool,
    pub max_body_bytes: u64,
    pub request_timeout: Duration,
    pub upstream_timeout: Duration,
    /// `Some`: each delivery is forwarded once within this window (SPEC §10).
    pub replay_window: Option<Duration>,
    pub delivery: Delivery,
}

// ---------------------------------------------------------------------------
// Errors.

/// One problem in a config file: where, and what to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub at: String,
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.at, self.message)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{}: cannot read config: {source}; check the path given to --config", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// Every problem found, one per line.
    #[error("{}", display_problems(.0))]
    Invalid(Vec<Problem>),
}

fn display_problems(problems: &[Problem]) -> String {
    let lines: Vec<String> = problems.iter().map(Problem::to_string).collect();
    lines.join("\n")
}

impl ConfigError {
    pub fn problems(&self) -> Vec<String> {
        match self {
            ConfigError::Read { .. } => vec![self.to_string()],
            ConfigError::Invalid(p) => p.iter().map(Problem::to_string).collect(),
        }
    }
}

/// Turns byte spans into `file:line:col` and collects problems and
/// warnings.
struct Report<'a> {
    origin: String,
    text: &'a str,
    problems: Vec<Problem>,
    warnings: Vec<Problem>,
}

impl Report<'_> {
    fn at(&self, span: Range<usize>) -> String {
        format!("{}:{}", self.origin, self.line_col(span))
    }

    fn line_col(&self, span: Range<usize>) -> String {
        let start = span.start.min(self.text.len());
        let before = &self.text[..start];
        let line = before.matches('\n').count() + 1;
        let col = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
        format!("{line}:{col}")
    }

    fn add(&mut self, span: Range<usize>, message: impl Into<String>) {
        let at = self.at(span);
        self.problems.push(Problem {
            at,
            message: message.into(),
        });
    }

    fn warn(&mut self, span: Range<usize>, message: impl Into<String>) {
        let at = self.at(span);
        self.warnings.push(Problem {
            at,
            message: message.into(),
        });
    }
}

// ---------------------------------------------------------------------------
// Loading.

impl Config {
    /// Reads and validates the file at `path`, loading every secret.
    pub fn load(path: &Path, env: &dyn Environment) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Config::from_toml_str(&text, path, env)
    }

    /// Parses and validates config text; `origin` only names it in messages.
    pub fn from_toml_str(
        text: &str,
        origin: &Path,
        env: &dyn Environment,
    ) -> Result<Config, ConfigError> {
        let mut report = Report {
            origin: origin.display().to_string(),
            text,
            problems: Vec::new(),
            warnings: Vec::new(),
        };
        let raw: RawConfig = match toml::from_str(text) {
            Ok(raw) => raw,
            Err(e) => {
                // Only the message, never toml's snippet of the file's text.
                report.add(e.span().unwrap_or(0..0), e.message().trim_end());
                return Err(ConfigError::Invalid(report.problems));
            }
        };
        let config = build(raw, origin, env, &mut report);
        if report.problems.is_empty() {
            // build returns Some whenever no problem was recorded.
            if let Some(mut config) = config {
                config.warnings = report.warnings;
                return Ok(config);
            }
        }
        Err(ConfigError::Invalid(report.problems))
    }
}

fn build(
    raw: RawConfig,
    origin: &Path,
    env: &dyn Environment,
    r: &mut Report<'_>,
) -> Option<Config> {
    let listen = socket_addr(&raw.server.listen, "server.listen", r);
    let mut trusted_proxies = Vec::new();
    for cidr in &raw.server.trusted_proxies {
        match parse_cidr(cidr.get_ref()) {
            Some(net) => trusted_proxies.push(net),
            None => r.add(
                cidr.span(),
                format!(
                    "server.trusted_proxies: {:?} is not an IP address or CIDR; write e.g. \"10.0.0.0/8\" or \"192.0.2.7\"",
                    cidr.get_ref()
                ),
            ),
        }
    }
    let shutdown_timeout = duration(
        raw.server.shutdown_timeout.as_ref(),
        "server.shutdown_timeout",
        DEFAULT_SHUTDOWN_TIMEOUT,
        r,
    );
    let tls = raw.server.tls.and_then(|t| {
        let span = t.cert.span();
        let files = TlsFiles {
            cert: t.cert.into_inner(),
            key: t.key.into_inner(),
        };
        match crate::tls::load(&files) {
            Ok(loaded) => Some(Tls {
                files,
                server_config: loaded.server_config,
                leaf_not_after: loaded.leaf_not_after,
            }),
            Err(e) => {
                r.add(span, e.to_string());
                None
            }
        }
    });

    let admin_listen = match raw.admin.and_then(|a| a.listen) {
        Some(l) => socket_addr(&l, "admin.listen", r),
        None => DEFAULT_ADMIN_LISTEN.parse().ok(),
    };

    let l = &raw.limits;
    let max_connections = match &l.max_connections {
        None => DEFAULT_MAX_CONNECTIONS,
        Some(v) if *v.get_ref() == 0 => {
            r.add(v.span(), "limits.max_connections must be at least 1");
            DEFAULT_MAX_CONNECTIONS
        }
        Some(v) => usize::try_from(*v.get_ref()).unwrap_or(usize::MAX),
    };
    let replay_max_entries = match &l.replay_max_entries {
        None => crate::replay::DEFAULT_MAX_ENTRIES,
        Some(v) if *v.get_ref() == 0 => {
            r.add(
                v.span(),
                "limits.replay_max_entries must be at least 1; remove it for the default (1000000)",
            );
            crate::replay::DEFAULT_MAX_ENTRIES
        }
        Some(v) => usize::try_from(*v.get_ref()).unwrap_or(usize::MAX),
    };
    let limits = Limits {
        max_body_bytes: l
            .max_body_bytes
            .as_ref()
            .map_or(DEFAULT_MAX_BODY_BYTES, |v| *v.get_ref()),
        handshake_timeout: duration(
            l.handshake_timeout.as_ref(),
            "limits.handshake_timeout",
            DEFAULT_HANDSHAKE_TIMEOUT,
            r,
        ),
        request_timeout: duration(
            l.request_timeout.as_ref(),
            "limits.request_timeout",
            DEFAULT_REQUEST_TIMEOUT,
            r,
        ),
        upstream_timeout: duration(
            l.upstream_timeout.as_ref(),
            "limits.upstream_timeout",
            DEFAULT_UPSTREAM_TIMEOUT,
            r,
        ),
        send_timeout: duration(
            l.send_timeout.as_ref(),
            "limits.send_timeout",
            DEFAULT_SEND_TIMEOUT,
            r,
        ),
        max_connections,
        replay_max_entries,
    };

    let spool_span = raw.spool.as_ref().map_or(0..0, Spanned::span);
    if let (Some(_), Some(v)) = (&raw.spool, &raw.limits.replay_max_entries) {
        // With [spool] the replay store is the spool's database (SPEC §10):
        // the bound would look like it applies, and does not.
        r.warn(
            v.span(),
            "limits.replay_max_entries bounds the in-memory replay store only; with [spool] replay_window routes keep their records in the spool's database until the window passes; remove it",
        );
    }
    let spool = raw.spool.map(|s| build_spool(s, env, r));

    let mut names: HashMap<String, Range<usize>> = HashMap::new();
    let mut places: HashSet<(Option<String>, String)> = HashSet::new();
    let mut routes = Vec::new();
    // (route name, secret) of the routes so far, to spot a shared secret.
    // Dropped at the end of loading; only the keyed HMAC states stay.
    let mut secrets: Vec<(String, Secret)> = Vec::new();
    for raw_route in raw.routes {
        let span = raw_route.span();
        let raw_route = raw_route.into_inner();
        let name = raw_route.name.get_ref().clone();
        if let Some(first) = names.get(&name) {
            let first_at = r.line_col(first.clone());
            r.add(
                raw_route.name.span(),
                format!("route {name:?}: duplicate route name (first defined at line:column {first_at}); give each route a unique name"),
            );
        } else {
            names.insert(name.clone(), raw_route.name.span());
        }
        if let Some(route) = build_route(
            raw_route,
            routes.len(),
            &limits,
            spool.is_some(),
            env,
            &mut secrets,
            r,
        ) {
            if !places.insert((route.host.clone(), route.path.clone())) {
                let host = route.host.as_deref().unwrap_or("any host");
                r.add(
                    span.clone(),
                    format!(
                        "route {:?}: another route already serves path {:?} on {host}; change its path or host",
                        route.name, route.path
                    ),
                );
            }
            routes.push(Arc::new(route));
        }
    }
    if let Some(Some(Spool {
        backend: Backend::Postgres { lease, .. },
        ..
    })) = &spool
    {
        // A lease shorter than a delivery's wait would let a second
        // instance send the same record while the first still waits.
        for route in routes.iter().filter(|r| r.delivery.spooled()) {
            if route.upstream_timeout >= *lease {
                r.add(spool_span.clone(), format!("spool.lease ({}) must be longer than route {:?}'s upstream_timeout ({}), or another instance takes over deliveries still waiting for their answer; raise lease", humantime::format_duration(*lease), route.name, humantime::format_duration(route.upstream_timeout)));
            }
        }
    }

    Some(Config {
        origin: origin.to_path_buf(),
        server: Server {
            listen: listen?,
            trusted_proxies,
            shutdown_timeout,
            tls,
        },
        admin: Admin {
            listen: admin_listen?,
        },
        limits,
        spool: match spool {
            Some(s) => Some(s?),
            None => None,
        },
        routes,
        warnings: Vec::new(),
    })
}

fn build_spool(raw: Spanned<RawSpool>, env: &dyn Environment, r: &mut Report<'_>) -> Option<Spool> {
    let span = raw.span();
    let raw = raw.into_inner();
    let before = r.problems.len();
    let (backend, path) = spool_backend(&raw, span, env, r);
    let max_bytes = match &raw.max_bytes {
        None => DEFAULT_SPOOL_MAX_BYTES,
        Some(v) => {
            let parsed = match v.get_ref() {
                RawSize::Bytes(n) => Some(*n),
                RawSize::Text(t) => parse_size(t),
            };
            match parsed {
                Some(n) if n > 0 => n,
                _ => {
                    r.add(
                        v.span(),
                        "spool.max_bytes must be a positive size, e.g. \"1GiB\", \"512MiB\" or a number of bytes",
                    );
                    DEFAULT_SPOOL_MAX_BYTES
                }
            }
        }
    };
    let retry = match &raw.retry {
        None => DEFAULT_SPOOL_RETRY
            .iter()
            .map(|s| Duration::from_secs(*s))
            .collect(),
        Some(list) => {
            if list.get_ref().is_empty() {
                r.add(
                    list.span(),
                    "spool.retry is empty; list at least one delay, e.g. [\"10s\", \"1m\"]",
                );
            }
            let mut out = Vec::new();
            for step in list.get_ref() {
                match humantime::parse_duration(step) {
                    Ok(d) if !d.is_zero() => out.push(d),
                    _ => r.add(
                        list.span(),
                        format!("spool.retry: {step:?} is not a positive duration; write e.g. \"10s\", \"5m\", \"1h\""),
                    ),
                }
            }
            out
        }
    };
    let max_age = duration(
        raw.max_age.as_ref(),
        "spool.max_age",
        DEFAULT_SPOOL_MAX_AGE,
        r,
    );
    let redelivery_concurrency = match &raw.redelivery_concurrency {
        None => DEFAULT_REDELIVERY_CONCURRENCY,
        Some(v) if *v.get_ref() == 0 || *v.get_ref() > 1024 => {
            r.add(
                v.span(),
                "spool.redelivery_concurrency must be between 1 and 1024",
            );
            DEFAULT_REDELIVERY_CONCURRENCY
        }
        Some(v) => usize::try_from(*v.get_ref()).unwrap_or(DEFAULT_REDELIVERY_CONCURRENCY),
    };
    (r.problems.len() == before).then_some(Spool {
        backend: backend?,
        path,
        max_bytes,
        retry,
        max_age,
        redelivery_concurrency,
    })
}

/// `spool.backend` with its keys: `path` for SQLite; `url` and `lease`
/// for PostgreSQL. A key of the other backend is refused rather than
/// silently ignored.
fn spool_backend(
    raw: &RawSpool,
    span: Range<usize>,
    env: &dyn Environment,
    r: &mut Report<'_>,
) -> (Option<Backend>, PathBuf) {
    let backend = raw
        .backend
        .as_ref()
        .map_or("sqlite", |b| b.get_ref().as_str());
    match backend {
        "sqlite" => {
            for (key, at) in [
                ("url", raw.url.as_ref().map(Spanned::span)),
                ("lease", raw.lease.as_ref().map(Spanned::span)),
            ] {
                if let Some(at) = at {
                    r.add(at, format!("spool.{key} applies to backend = \"postgres\" only; remove it or set backend = \"postgres\""));
                }
            }
            let Some(path) = &raw.path else {
                r.add(span, "[spool] needs path = \"...\" (the SQLite file), e.g. path = \"hookgate-spool.db\"; or backend = \"postgres\" with url");
                return (None, PathBuf::new());
            };
            if path.get_ref().as_os_str().is_empty() {
                r.add(
                    path.span(),
                    "spool.path is empty; write a file name, e.g. \"hookgate-spool.db\"",
                );
            }
            (Some(Backend::Sqlite), path.get_ref().clone())
        }
        "postgres" => {
            if let Some(path) = &raw.path {
                r.add(path.span(), "spool.path is the SQLite file; with backend = \"postgres\" the records live in the database named by spool.url; remove path");
            }
            let lease = duration(raw.lease.as_ref(), "spool.lease", DEFAULT_SPOOL_LEASE, r);
            let Some(url) = &raw.url else {
                r.add(span, "backend = \"postgres\" needs url = { env = \"HOOKGATE_DATABASE_URL\" } (or { file = \"...\" } / { credential = \"...\" }); the URL carries the password, so it is never written inline");
                return (None, PathBuf::new());
            };
            let source = url.get_ref().describe();
            let text = match url.get_ref().load(env) {
                Ok(secret) => match String::from_utf8(secret.as_bytes().to_vec()) {
                    Ok(t) => t.trim().to_string(),
                    Err(_) => {
                        r.add(url.span(), format!("spool.url ({source}) is not UTF-8 text; write a URL such as postgres://hookgate:PASSWORD@db.internal:5432/hookgate"));
                        return (None, PathBuf::new());
                    }
                },
                Err(e) => {
                    r.add(
                        url.span(),
                        format!("spool.url: cannot load the database URL ({e})"),
                    );
                    return (None, PathBuf::new());
                }
            };
            let url = DatabaseUrl::new(text, source);
            if let Err(problem) = crate::spool::postgres::check_url(&url) {
                r.add(
                    raw.url.as_ref().map_or(span, Spanned::span),
                    format!("spool.url ({}): {problem}", url.source),
                );
                return (None, PathBuf::new());
            }
            (Some(Backend::Postgres { url, lease }), PathBuf::new())
        }
        other => {
            let at = raw.backend.as_ref().map_or(span, Spanned::span);
            r.add(at, format!("spool.backend = {other:?} is not known; write \"sqlite\" (one host) or \"postgres\" (several instances, SPEC §11)"));
            (None, PathBuf::new())
        }
    }
}

/// Parses "1GiB", "512MiB", "64KiB", "10MB", "1000B" or "1000".
fn parse_size(text: &str) -> Option<u64> {
    let t = text.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (digits, unit) = t.split_at(split);
    let n: u64 = digits.parse().ok()?;
    let factor: u64 = match unit.trim() {
        "" | "B" => 1,
        "KiB" => 1 << 10,
        "MiB" => 1 << 20,
        "GiB" => 1 << 30,
        "TiB" => 1 << 40,
        "KB" | "kB" => 1_000,
        "MB" => 1_000_000,
        "GB" => 1_000_000_000,
        "TB" => 1_000_000_000_000,
        _ => return None,
    };
    n.checked_mul(factor)
}

fn build_route(
    raw: RawRoute,
    index: usize,
    limits: &Limits,
    has_spool: bool,
    env: &dyn Environment,
    secrets: &mut Vec<(String, Secret)>,
    r: &mut Report<'_>,
) -> Option<Route> {
    let name = raw.name.get_ref().clone();
    let before = r.problems.len();
    let route_ctx = format!("route {name:?}");

    // Route names become metric labels: keep them short and plain.
    let name_ok = !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
    if !name_ok {
        r.add(
            raw.name.span(),
            format!(
                "{route_ctx}: name must be 1-64 characters of letters, digits, '-', '_' or '.'"
            ),
        );
    }

    let path = raw.path.get_ref();
    let path_ok =
        path.starts_with('/') && !path.contains(['?', '#']) && path.parse::<PathAndQuery>().is_ok();
    if !path_ok {
        r.add(
            raw.path.span(),
            format!(
                "{route_ctx}: path {path:?} must start with '/' and contain no spaces, '?' or '#'"
            ),
        );
    }

    let host = raw.host.as_ref().and_then(|h| {
        let value = h.get_ref();
        match value.parse::<Authority>() {
            Ok(a) if a.port().is_none() && !a.host().is_empty() && a.as_str() == a.host() => {
                Some(a.host().to_ascii_lowercase())
            }
            _ => {
                r.add(
                    h.span(),
                    format!("{route_ctx}: host {value:?} must be a bare host name like \"hooks.example.com\" (no scheme, port or path)"),
                );
                None
            }
        }
    });

    let upstream = parse_upstream(raw.upstream.get_ref()).map_err(|why| {
        // The URL is shown with any userinfo masked: a password typed into
        // it must not reach a terminal or a journal.
        r.add(
            raw.upstream.span(),
            format!(
                "{route_ctx}: upstream {:?} {why}",
                mask_userinfo(raw.upstream.get_ref())
            ),
        );
    });

    let scheme = match &raw.scheme {
        None => scheme::presets::preset("adsumo"),
        Some(v) => scheme::config::build(v.get_ref())
            .map_err(|e| r.add(v.span(), format!("{route_ctx}: {e}")))
            .ok(),
    };

    let methods: Vec<Method> = match &raw.methods {
        None => vec![Method::POST],
        Some(list) => {
            if list.get_ref().is_empty() {
                r.add(
                    list.span(),
                    format!("{route_ctx}: methods is empty; list at least one, e.g. [\"POST\"]"),
                );
            }
            let mut out = Vec::new();
            for m in list.get_ref() {
                let upper = !m.is_empty() && m.bytes().all(|b| b.is_ascii_uppercase());
                match Method::from_bytes(m.as_bytes()) {
                    Ok(method) if upper => {
                        if !out.contains(&method) {
                            out.push(method)
                        }
                    }
                    _ => r.add(
                        list.span(),
                        format!("{route_ctx}: method {m:?} is not an upper-case HTTP method like \"POST\""),
                    ),
                }
            }
            out
        }
    };
    let allow_text: Vec<&str> = methods.iter().map(Method::as_str).collect();
    let allow = HeaderValue::from_str(&allow_text.join(", ")).ok();

    if let Ok(upstream) = &upstream {
        if let Some(why) = unresolvable(&upstream.authority) {
            r.warn(
                raw.upstream.span(),
                format!("{route_ctx}: upstream host {why}; requests on this route will get 502 until it resolves"),
            );
        }
    }

    let keys = scheme
        .as_ref()
        .and_then(|scheme| load_keys(&raw, scheme, &route_ctx, env, secrets, r));
    let public_url = scheme
        .as_ref()
        .and_then(|scheme| public_url(&raw, scheme, &route_ctx, r));

    let max_body_bytes = raw
        .max_body_bytes
        .as_ref()
        .map_or(limits.max_body_bytes, |v| *v.get_ref());
    let request_timeout = duration(
        raw.request_timeout.as_ref(),
        &format!("{route_ctx}: request_timeout"),
        limits.request_timeout,
        r,
    );
    let upstream_timeout = duration(
        raw.upstream_timeout.as_ref(),
        &format!("{route_ctx}: upstream_timeout"),
        limits.upstream_timeout,
        r,
    );

    // Absent means off; a present value goes through the same checks as
    // every duration (zero or unparsable is an error naming the line).
    let replay_window = raw.replay_window.as_ref().map(|w| {
        duration(
            Some(w),
            &format!("{route_ctx}: replay_window"),
            Duration::ZERO,
            r,
        )
    });
    let delivery = match &raw.delivery {
        None if has_spool => Delivery::OnFailure,
        None => Delivery::Sync,
        Some(d) => {
            let parsed = match d.get_ref().as_str() {
                "sync" => Some(Delivery::Sync),
                "on_failure" => Some(Delivery::OnFailure),
                "always" => Some(Delivery::Always),
                _ => None,
            };
            match parsed {
                None => {
                    r.add(
                        d.span(),
                        format!("{route_ctx}: delivery {:?} is not one of \"sync\", \"on_failure\", \"always\"", d.get_ref()),
                    );
                    Delivery::Sync
                }
                Some(p) if p.spooled() && !has_spool => {
                    r.add(
                        d.span(),
                        format!("{route_ctx}: delivery = {:?} needs a [spool] section to keep requests in; add [spool] with path = \"hookgate-spool.db\", or set delivery = \"sync\"", p.as_str()),
                    );
                    Delivery::Sync
                }
                Some(p) => p,
            }
        }
    };

    if r.problems.len() != before {
        return None;
    }
    let check = SignatureCheck::new(scheme?, keys?, public_url?);
    Some(Route {
        index,
        name,
        path: path.clone(),
        host,
        upstream: upstream.ok()?,
        check,
        enforce: raw.enforce.unwrap_or(true),
        methods,
        allow: allow?,
        forwarded_headers: raw.forwarded_headers.unwrap_or(true),
        max_body_bytes,
        request_timeout,
        upstream_timeout,
        replay_window,
        delivery,
    })
}

/// Warnings about a route's secret: the same bytes as an earlier route's,
/// shorter than [`MIN_SECRET_BYTES`], or a file group or others may read.
/// Never the secret itself, nor its length.
fn secret_warnings(
    route_ctx: &str,
    secret: &Secret,
    earlier: &[(String, Secret)],
    span: Range<usize>,
    r: &mut Report<'_>,
) {
    // Not on the request path and both values are ours: a plain compare.
    if let Some((first, _)) = earlier
        .iter()
        .find(|(_, s)| s.as_bytes() == secret.as_bytes())
    {
        r.warn(
            span.clone(),
            format!("{route_ctx}: uses the same secret as route {first:?}; give each route its own secret (one secret per endpoint, as Standard Webhooks advises)"),
        );
    }
    if secret.as_bytes().len() < MIN_SECRET_BYTES {
        r.warn(
            span.clone(),
            format!("{route_ctx}: secret is shorter than {MIN_SECRET_BYTES} bytes; ask the sender for a longer one (at least 24 random bytes)"),
        );
    }
    if let Some((path, mode)) = secret.loose_file() {
        r.warn(
            span,
            format!(
                "{route_ctx}: secret file {} is readable by group or others (mode {mode:04o}); chmod 600 it",
                path.display()
            ),
        );
    }
}

/// `Some(why)` when the upstream's host name does not resolve now (an IP
/// literal always does). Checked at load only: DNS may recover later, so
/// this warns rather than fails.
fn unresolvable(authority: &Authority) -> Option<String> {
    use std::net::ToSocketAddrs;
    let host = authority.host();
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    if bare.parse::<std::net::IpAddr>().is_ok() {
        return None;
    }
    let port = authority.port_u16().unwrap_or(80);
    match (host, port).to_socket_addrs().map(|mut a| a.next()) {
        Ok(Some(_)) => None,
        Ok(None) => Some(format!("{host} resolves to no address")),
        Err(e) => Some(format!("{host} does not resolve ({e})")),
    }
}

/// The route's keys: `secret = ...` (one key, id "default") or
/// `secrets = [...]` (rotation), each loaded and prepared for the scheme.
fn load_keys(
    raw: &RawRoute,
    scheme: &scheme::Scheme,
    ctx: &str,
    env: &dyn Environment,
    secrets: &mut Vec<(String, Secret)>,
    r: &mut Report<'_>,
) -> Option<Vec<Key>> {
    let entries: Vec<(Range<usize>, KeySource)> = match (&raw.secret, &raw.secrets) {
        (Some(one), None) => vec![(
            one.span(),
            KeySource {
                source: one.get_ref().clone(),
                id: Some("default".into()),
                not_before: None,
                not_after: None,
            },
        )],
        (None, Some(list)) => {
            if list.get_ref().is_empty() || list.get_ref().len() > MAX_KEYS {
                r.add(
                    list.span(),
                    format!("{ctx}: secrets must list 1 to {MAX_KEYS} keys (rotation needs two: the new and the old)"),
                );
                return None;
            }
            list.get_ref()
                .iter()
                .map(|k| (list.span(), k.clone()))
                .collect()
        }
        (Some(one), Some(_)) => {
            r.add(
                one.span(),
                format!("{ctx}: set either secret (one key) or secrets (rotation), not both"),
            );
            return None;
        }
        (None, None) => {
            r.add(
                raw.name.span(),
                format!("{ctx}: no secret; add secret = {{ env = \"VAR\" }} (or secrets = [...] to rotate)"),
            );
            return None;
        }
    };
    let before = r.problems.len();
    let mut keys = Vec::new();
    for (span, entry) in entries {
        let id = entry.key_id();
        let key_ctx = format!("{ctx}: key {id:?}");
        if keys.iter().any(|k: &Key| k.id == id) {
            r.add(
                span.clone(),
                format!("{key_ctx}: duplicate key id; give each entry of secrets a unique id"),
            );
        }
        let instant = |key: &str, text: &Option<String>, r: &mut Report<'_>| {
            text.as_ref().and_then(|t| {
                let parsed = timestamp::parse_instant(t);
                if parsed.is_none() {
                    r.add(span.clone(), format!("{key_ctx}: {key} {t:?} is not a time; write RFC 3339 like \"2027-01-31T00:00:00Z\""));
                }
                parsed
            })
        };
        let not_before = instant("not_before", &entry.not_before, r);
        let not_after = instant("not_after", &entry.not_after, r);
        if let (Some(nb), Some(na)) = (not_before, not_after) {
            if nb >= na {
                r.add(
                    span.clone(),
                    format!("{key_ctx}: not_before must be earlier than not_after"),
                );
            }
        }
        match entry.source.load(env) {
            Ok(secret) => {
                match Key::new(scheme, id, secret.as_bytes(), not_before, not_after) {
                    Ok(key) => keys.push(key),
                    Err(e) => r.add(span.clone(), format!("{key_ctx}: {e}")),
                }
                secret_warnings(ctx, &secret, secrets, span.clone(), r);
                secrets.push((raw.name.get_ref().clone(), secret));
            }
            Err(e) => r.add(span.clone(), format!("{ctx}: {e}")),
        }
    }
    (r.problems.len() == before).then_some(keys)
}

/// `public_url`: required by twilio (it signs the URL it called), refused
/// elsewhere (it would do nothing).
fn public_url(
    raw: &RawRoute,
    scheme: &scheme::Scheme,
    ctx: &str,
    r: &mut Report<'_>,
) -> Option<Option<String>> {
    let needs = scheme.signed == scheme::Signed::Twilio;
    match (&raw.public_url, needs) {
        (None, false) => Some(None),
        (None, true) => {
            r.add(
                raw.name.span(),
                format!("{ctx}: scheme {:?} signs the URL the sender calls; set public_url = \"https://hooks.example.com{}\"", scheme.name, raw.path.get_ref()),
            );
            None
        }
        (Some(u), false) => {
            r.add(
                u.span(),
                format!("{ctx}: public_url is only used by the twilio scheme; remove it"),
            );
            None
        }
        (Some(u), true) => {
            let text = u.get_ref();
            let ok = text.parse::<Uri>().is_ok_and(|uri| {
                matches!(uri.scheme_str(), Some("http" | "https"))
                    && uri.authority().is_some()
                    && uri.query().is_none()
            });
            if ok {
                Some(Some(text.clone()))
            } else {
                r.add(u.span(), format!("{ctx}: public_url {text:?} must be the full http(s) URL the sender calls, without a query, e.g. \"https://hooks.example.com/webhooks/twilio\""));
                None
            }
        }
    }
}

impl Config {
    /// Keys that expire within `within` of `now`, as warn lines (route, key
    /// id, time; never the secret).
    pub fn expiring_keys(&self, now: i64, within: Duration) -> Vec<String> {
        let horizon = now.saturating_add(i64::try_from(within.as_secs()).unwrap_or(i64::MAX));
        let mut out = Vec::new();
        for route in &self.routes {
            for key in &route.check.keys {
                if let Some(na) = key.not_after.filter(|na| *na > now && *na <= horizon) {
                    out.push(format!(
                        "route {:?}: key {:?} expires at {} (in {} h); once hookgate_signature_key_matches_total{{route={:?},key={:?}}} stops rising, remove it from secrets",
                        route.name,
                        key.id,
                        timestamp::format(na),
                        (na - now) / 3600,
                        route.name,
                        key.id,
                    ));
                }
            }
        }
        out
    }
}

fn parse_upstream(text: &str) -> Result<Upstream, &'static str> {
    let uri: Uri = text
        .parse()
        .map_err(|_| "is not a URL; write e.g. \"http://127.0.0.1:3000\"")?;
    match uri.scheme_str() {
        Some("http") => {}
        Some("https") => return Err(
            "uses https, which is not supported for upstreams; point it at a local http:// service",
        ),
        _ => return Err("must start with http://, e.g. \"http://127.0.0.1:3000\""),
    }
    let authority = uri
        .authority()
        .cloned()
        .ok_or("has no host; write e.g. \"http://127.0.0.1:3000\"")?;
    if authority.as_str().contains('@') {
        return Err("must not contain credentials; remove the user:password@ part (hookgate sends no upstream authentication)");
    }
    let fixed_path = match uri.path_and_query() {
        Some(pq) if pq.query().is_some() => {
            return Err("must not contain a query; the request's query is forwarded as is")
        }
        Some(pq) if pq.path() != "/" && !pq.path().is_empty() => Some(pq.clone()),
        _ => None,
    };
    // "http://h:3000" and "http://h:3000/" both keep the request's path.
    if text.ends_with('#') || text.contains('#') {
        return Err("must not contain a fragment ('#')");
    }
    Ok(Upstream {
        authority,
        fixed_path,
    })
}

/// `scheme://user:pass@host/p` → `scheme://***@host/p`. Works on text that
/// is not a valid URL too (everything before the authority's last `@` is
/// masked), so no error message can carry a password typed into a URL.
pub fn mask_userinfo(url: &str) -> String {
    let start = url.find("://").map_or(0, |i| i + 3);
    let rest = &url[start..];
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    match rest[..end].rfind('@') {
        Some(at) => format!("{}***{}", &url[..start], &rest[at..]),
        None => url.to_string(),
    }
}

fn parse_cidr(text: &str) -> Option<IpNet> {
    text.parse::<IpNet>()
        .ok()
        .or_else(|| text.parse::<std::net::IpAddr>().ok().map(IpNet::from))
}

fn socket_addr(value: &Spanned<String>, key: &str, r: &mut Report<'_>) -> Option<SocketAddr> {
    match value.get_ref().parse() {
        Ok(a) => Some(a),
        Err(_) => {
            r.add(
                value.span(),
                format!(
                    "{key}: {:?} is not an IP:port address; write e.g. \"127.0.0.1:8080\" or \"[::]:8443\"",
                    value.get_ref()
                ),
            );
            None
        }
    }
}

/// Parses "250ms", "10s", "1m". Zero is refused: every timeout must be able to fire.
fn duration(
    value: Option<&Spanned<String>>,
    key: &str,
    default: Duration,
    r: &mut Report<'_>,
) -> Duration {
    let Some(value) = value else { return default };
    match humantime::parse_duration(value.get_ref()) {
        Ok(d) if !d.is_zero() => d,
        Ok(_) => {
            r.add(value.span(), format!("{key} must be greater than zero"));
            default
        }
        Err(_) => {
            r.add(
                value.span(),
                format!(
                    "{key}: {:?} is not a duration; write a number with a unit, e.g. \"250ms\", \"10s\", \"1m\"",
                    value.get_ref()
                ),
            );
            default
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env() -> HashMap<String, String> {
        [("S".to_string(), "sekrit".to_string())].into()
    }

    const MINIMAL: &str = r#"
[server]
listen = "127.0.0.1:0"

[[route]]
name = "a"
path = "/hooks/a"
upstream = "http://127.0.0.1:3000"
secret = { env = "S" }
"#;

    #[test]
    fn minimal_config_gets_defaults() {
        let c = Config::from_toml_str(MINIMAL, Path::new("t.toml"), &env()).unwrap();
        assert_eq!(c.limits.max_body_bytes, 1024 * 1024);
        assert_eq!(c.limits.upstream_timeout, Duration::from_secs(9));
        assert_eq!(c.admin.listen, "127.0.0.1:9464".parse().unwrap());
        let r = &c.routes[0];
        assert_eq!(r.methods, vec![Method::POST]);
        assert_eq!(r.allow, "POST");
        assert!(r.upstream.fixed_path.is_none());
        assert!(r.forwarded_headers);
        assert_eq!(r.replay_window, None);
        assert_eq!(c.limits.replay_max_entries, 1_000_000);
    }

    #[test]
    fn replay_keys_are_read() {
        let text = MINIMAL
            .replace("[server]", "[limits]\nreplay_max_entries = 5\n[server]")
            .replace("secret = ", "replay_window = \"90m\"\nsecret = ");
        let c = Config::from_toml_str(&text, Path::new("t.toml"), &env()).unwrap();
        assert_eq!(c.limits.replay_max_entries, 5);
        assert_eq!(c.routes[0].replay_window, Some(Duration::from_secs(5400)));
    }

    #[test]
    fn upstream_forms() {
        assert!(parse_upstream("http://h:1").unwrap().fixed_path.is_none());
        assert!(parse_upstream("http://h:1/").unwrap().fixed_path.is_none());
        assert_eq!(
            parse_upstream("http://h:1/in/a")
                .unwrap()
                .fixed_path
                .unwrap(),
            "/in/a"
        );
        assert!(parse_upstream("https://h").is_err());
        assert!(parse_upstream("http://h/x?q=1").is_err());
        assert!(parse_upstream("h:1").is_err());
    }

    #[test]
    fn spool_defaults_and_delivery() {
        let c = Config::from_toml_str(MINIMAL, Path::new("t.toml"), &env()).unwrap();
        assert!(c.spool.is_none());
        assert_eq!(c.routes[0].delivery, Delivery::Sync);
        let text = format!("{MINIMAL}\n[spool]\npath = \"s.db\"\n");
        let c = Config::from_toml_str(&text, Path::new("t.toml"), &env()).unwrap();
        let s = c.spool.unwrap();
        assert_eq!(s.max_bytes, 1 << 30);
        assert_eq!(s.retry.len(), 10);
        assert_eq!(s.largest_step(), Duration::from_secs(24 * 3600));
        assert_eq!(s.max_age, Duration::from_secs(72 * 3600));
        assert_eq!(s.redelivery_concurrency, 4);
        assert_eq!(c.routes[0].delivery, Delivery::OnFailure);
    }

    #[test]
    fn postgres_spool_url_by_reference_lease_and_refusals() {
        let mut e = env();
        e.insert(
            "DB".into(),
            "postgres://hg:pa55word@db.internal:5432/hookgate\n".into(),
        );
        e.insert(
            "TLS_DB".into(),
            "postgres://hg:pa55word@db/x?sslmode=verify-full".into(),
        );
        let load = |spool: &str| {
            let text = format!("{MINIMAL}\n[spool]\n{spool}\n");
            Config::from_toml_str(&text, Path::new("t.toml"), &e)
        };
        let c = load("backend = \"postgres\"\nurl = { env = \"DB\" }").unwrap();
        let s = c.spool.unwrap();
        let Backend::Postgres { url, lease } = &s.backend else {
            panic!("{:?}", s.backend)
        };
        assert_eq!(
            url.expose(),
            "postgres://hg:pa55word@db.internal:5432/hookgate"
        );
        assert_eq!(*lease, Duration::from_secs(30));
        let shown = format!("{s:?}");
        assert!(
            shown.contains("hg:***@db.internal") && !shown.contains("pa55word"),
            "{shown}"
        );

        let problems = |spool: &str| load(spool).unwrap_err().problems();
        let p = problems("backend = \"postgres\"");
        assert!(p[0].contains("needs url = { env"), "{p:?}");
        let p = problems("backend = \"postgres\"\nurl = { env = \"DB\" }\npath = \"s.db\"");
        assert!(p[0].contains("remove path"), "{p:?}");
        let p = problems("path = \"s.db\"\nlease = \"10s\"");
        assert!(
            p[0].contains("spool.lease applies to backend = \"postgres\" only"),
            "{p:?}"
        );
        let p = problems("backend = \"mysql\"\npath = \"s.db\"");
        assert!(p[0].contains("\"mysql\" is not known"), "{p:?}");
        let p = problems("backend = \"postgres\"\nurl = { env = \"NOPE\" }");
        assert!(p[0].contains("spool.url") && p[0].contains("NOPE"), "{p:?}");
        // The default upstream_timeout is 9 s: a 5 s lease would hand
        // deliveries still waiting to another instance.
        let p = problems("backend = \"postgres\"\nurl = { env = \"DB\" }\nlease = \"5s\"");
        assert!(
            p[0].contains(
                "spool.lease (5s) must be longer than route \"a\"'s upstream_timeout (9s)"
            ),
            "{p:?}"
        );
        let p = problems("backend = \"postgres\"\nurl = { env = \"TLS_DB\" }");
        assert!(
            p[0].contains("sslmode=verify-full needs sslrootcert") && !p[0].contains("pa55word"),
            "{p:?}"
        );
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("1GiB"), Some(1 << 30));
        assert_eq!(parse_size("64 KiB"), Some(64 << 10));
        assert_eq!(parse_size("10MB"), Some(10_000_000));
        assert_eq!(parse_size("123"), Some(123));
        assert_eq!(parse_size("1 GB!"), None);
        assert_eq!(parse_size("GiB"), None);
    }

    #[test]
    fn spooled_delivery_without_spool_names_route_and_line() {
        let text = MINIMAL.replace(
            "secret = { env = \"S\" }",
            "secret = { env = \"S\" }\ndelivery = \"always\"",
        );
        let err = Config::from_toml_str(&text, Path::new("t.toml"), &env()).unwrap_err();
        let p = err.problems();
        assert_eq!(p.len(), 1, "{p:?}");
        assert!(
            p[0].starts_with("t.toml:10:12: route \"a\": delivery = \"always\" needs a [spool]"),
            "{p:?}"
        );
    }

    #[test]
    fn positions_are_line_and_column() {
        let r = Report {
            origin: "f".into(),
            text: "ab\ncd\nefg",
            problems: vec![],
            warnings: vec![],
        };
        assert_eq!(r.at(0..1), "f:1:1");
        assert_eq!(r.at(4..5), "f:2:2");
        assert_eq!(r.at(8..9), "f:3:3");
    }
}
