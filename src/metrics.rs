//! Prometheus metrics (SPEC §6): one registry owned by the app, no globals.
//!
//! Every labelled handle the request path touches is resolved once when a
//! config is loaded ([`Metrics::route`] → [`RouteMetrics`]), so serving a
//! request increments plain atomics and never looks up a label set. Label
//! values come only from configured route names and fixed enums.
//!
//! `prometheus-client` (the Prometheus project's own Rust client) keys each
//! series by its full label set, so distinct label tuples can never collapse
//! into one series (the tikv `prometheus` crate hashes the concatenated values
//! without a separator: `["ab","c"]` and `["a","bc"]` share a counter).

use std::sync::atomic::AtomicU64;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::{Registry, Unit};

use crate::outcome::Outcome;

pub use prometheus_client::encoding::prometheus_text::CONTENT_TYPE;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteOutcome {
    route: String,
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteKey {
    route: String,
    key: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteLabel {
    route: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteCode {
    route: String,
    code: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteState {
    route: String,
    state: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteResult {
    route: String,
    result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabel {
    result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CertLabel {
    /// `server.tls.cert` as configured.
    path: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct VersionLabel {
    version: &'static str,
}

type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

/// Durations from 1 ms to ~16 s: a webhook answered within the sender's 10 s.
fn duration_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.001, 2.0, 15))
}

/// Body sizes from 64 B to 4 MiB.
fn bytes_histogram() -> Histogram {
    Histogram::new(exponential_buckets(64.0, 4.0, 9))
}

/// Status classes for `hookgate_upstream_responses_total{code}`.
const CODE_CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];

/// All of the gateway's metrics and the registry that encodes them.
pub struct Metrics {
    registry: Registry,
    requests: Family<RouteOutcome, Counter>,
    request_duration: HistogramFamily<RouteLabel>,
    upstream_duration: HistogramFamily<RouteLabel>,
    upstream_responses: Family<RouteCode, Counter>,
    body_bytes: HistogramFamily<RouteLabel>,
    key_matches: Family<RouteKey, Counter>,
    pub unmatched: Counter,
    pub in_flight: Gauge,
    pub tls_handshake_errors: Counter,
    pub connections_rejected: Counter,
    reloads: Family<ResultLabel, Counter>,
    pub last_reload_success: Gauge<f64, AtomicU64>,
    /// Entries in the replay store (SPEC §10): memory, SQLite spool file,
    /// or the shared PostgreSQL table as last counted.
    pub replay_entries: Gauge,
    /// Recorded deliveries evicted from it before their window ended.
    pub replay_evictions: Counter,
    cert_expiry: Family<CertLabel, Gauge>,
    /// The expiry series now exposed, so a reload can drop it when the path
    /// changes.
    cert_in_service: std::sync::Mutex<Option<CertLabel>>,
    spool_messages: Family<RouteState, Gauge>,
    spool_writes: Family<RouteResult, Counter>,
    redeliveries: Family<RouteResult, Counter>,
    spool_oldest_age: Family<RouteLabel, Gauge<f64, AtomicU64>>,
    pub spool_bytes: Gauge,
    pub spool_capacity: Gauge,
}

/// One spooled route's spool series (SPEC §8), resolved at config load.
#[derive(Clone, Debug)]
pub struct SpoolRouteMetrics {
    pub pending: Gauge,
    pub dead: Gauge,
    pub writes_ok: Counter,
    pub writes_full: Counter,
    pub writes_error: Counter,
    pub redeliveries_delivered: Counter,
    pub redeliveries_retry: Counter,
    pub redeliveries_dead: Counter,
    pub oldest_pending_age: Gauge<f64, AtomicU64>,
}

/// One route's handles, resolved at config load.
#[derive(Clone, Debug)]
pub struct RouteMetrics {
    /// Indexed like [`Outcome::ROUTED`].
    requests: [Counter; Outcome::ROUTED.len()],
    pub request_duration: Histogram,
    pub upstream_duration: Histogram,
    upstream_responses: [Counter; CODE_CLASSES.len()],
    pub body_bytes: Histogram,
    /// Indexed like the route's keys.
    key_matches: Vec<Counter>,
}

impl RouteMetrics {
    pub fn request(&self, outcome: Outcome) -> Option<&Counter> {
        let i = Outcome::ROUTED.iter().position(|o| *o == outcome)?;
        self.requests.get(i)
    }

    /// Counts a request verified under the route's key at `index`.
    pub fn key_matched(&self, index: usize) {
        if let Some(c) = self.key_matches.get(index) {
            c.inc();
        }
    }

    /// Counts an upstream response by status class.
    pub fn upstream_response(&self, status: u16) {
        if let 100..=599 = status {
            self.upstream_responses[usize::from(status / 100) - 1].inc();
        }
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut registry = Registry::default();
        let requests = Family::<RouteOutcome, Counter>::default();
        registry.register(
            "hookgate_requests",
            "Requests that matched a route, by route and outcome",
            requests.clone(),
        );
        let unmatched = Counter::default();
        registry.register(
            "hookgate_unmatched_requests",
            "Requests that matched no route (404)",
            unmatched.clone(),
        );
        let request_duration: HistogramFamily<RouteLabel> =
            Family::new_with_constructor(duration_histogram);
        registry.register_with_unit(
            "hookgate_request_duration",
            "Time from receipt of the request headers to the end of the response",
            Unit::Seconds,
            request_duration.clone(),
        );
        let upstream_duration: HistogramFamily<RouteLabel> =
            Family::new_with_constructor(duration_histogram);
        registry.register_with_unit(
            "hookgate_upstream_duration",
            "Time from sending the request upstream to its response headers",
            Unit::Seconds,
            upstream_duration.clone(),
        );
        let upstream_responses = Family::<RouteCode, Counter>::default();
        registry.register(
            "hookgate_upstream_responses",
            "Upstream responses by route and status class",
            upstream_responses.clone(),
        );
        let body_bytes: HistogramFamily<RouteLabel> = Family::new_with_constructor(bytes_histogram);
        registry.register_with_unit(
            "hookgate_request_body",
            "Request body sizes read",
            Unit::Bytes,
            body_bytes.clone(),
        );
        let key_matches = Family::<RouteKey, Counter>::default();
        registry.register(
            "hookgate_signature_key_matches",
            "Requests verified, by route and the key id that matched (which key still signs traffic)",
            key_matches.clone(),
        );
        let in_flight = Gauge::default();
        registry.register(
            "hookgate_requests_in_flight",
            "Requests being served",
            in_flight.clone(),
        );
        let tls_handshake_errors = Counter::default();
        registry.register(
            "hookgate_tls_handshake_errors",
            "TLS handshakes that failed or timed out",
            tls_handshake_errors.clone(),
        );
        let connections_rejected = Counter::default();
        registry.register(
            "hookgate_connections_rejected",
            "Connections closed at accept because limits.max_connections were open",
            connections_rejected.clone(),
        );
        let reloads = Family::<ResultLabel, Counter>::default();
        for result in ["success", "failure"] {
            reloads.get_or_create_owned(&ResultLabel { result });
        }
        registry.register(
            "hookgate_config_reloads",
            "Configuration reloads by result",
            reloads.clone(),
        );
        let last_reload_success = Gauge::<f64, AtomicU64>::default();
        registry.register(
            "hookgate_config_last_reload_success_timestamp_seconds",
            "Unix time of the last successful configuration load",
            last_reload_success.clone(),
        );
        let cert_expiry = Family::<CertLabel, Gauge>::default();
        registry.register(
            "hookgate_tls_certificate_expiry_timestamp_seconds",
            "Unix time after which the served leaf certificate is no longer valid (notAfter); absent without TLS",
            cert_expiry.clone(),
        );
        let build_info = Family::<VersionLabel, Gauge>::default();
        build_info
            .get_or_create(&VersionLabel {
                version: env!("CARGO_PKG_VERSION"),
            })
            .set(1);
        registry.register("hookgate_build_info", "Build information", build_info);
        let replay_entries = Gauge::default();
        registry.register(
            "hookgate_replay_entries",
            "Deliveries held by the replay store (recorded and in flight): in memory, in the SQLite spool file, or the shared PostgreSQL table's (every instance's)",
            replay_entries.clone(),
        );
        let replay_evictions = Counter::default();
        registry.register(
            "hookgate_replay_evictions",
            "Recorded deliveries evicted from the replay store at limits.replay_max_entries",
            replay_evictions.clone(),
        );

        let spool_messages = Family::<RouteState, Gauge>::default();
        registry.register(
            "hookgate_spool_messages",
            "Spooled requests by route and state (pending, dead)",
            spool_messages.clone(),
        );
        let spool_bytes = Gauge::default();
        registry.register(
            "hookgate_spool_bytes",
            "Bytes stored in the spool (headers and bodies, pending and dead)",
            spool_bytes.clone(),
        );
        let spool_capacity = Gauge::default();
        registry.register(
            "hookgate_spool_capacity_bytes",
            "spool.max_bytes: stored bytes beyond which new requests get 503",
            spool_capacity.clone(),
        );
        let spool_writes = Family::<RouteResult, Counter>::default();
        registry.register(
            "hookgate_spool_writes",
            "Requests written to the spool, by route and result (ok, full, error)",
            spool_writes.clone(),
        );
        let redeliveries = Family::<RouteResult, Counter>::default();
        registry.register(
            "hookgate_redeliveries",
            "Redelivery attempts from the spool, by route and result (delivered, retry, dead)",
            redeliveries.clone(),
        );
        let spool_oldest_age = Family::<RouteLabel, Gauge<f64, AtomicU64>>::default();
        registry.register(
            "hookgate_spool_oldest_pending_age_seconds",
            "Age of the oldest pending spooled request per route (0 when none)",
            spool_oldest_age.clone(),
        );

        Metrics {
            registry,
            requests,
            request_duration,
            upstream_duration,
            upstream_responses,
            body_bytes,
            key_matches,
            unmatched,
            in_flight,
            tls_handshake_errors,
            connections_rejected,
            reloads,
            last_reload_success,
            replay_entries,
            replay_evictions,
            cert_expiry,
            cert_in_service: std::sync::Mutex::new(None),
            spool_messages,
            spool_writes,
            redeliveries,
            spool_oldest_age,
            spool_bytes,
            spool_capacity,
        }
    }

    /// Resolves (creating at zero) the spool series of one spooled route.
    pub fn spool_route(&self, name: &str) -> SpoolRouteMetrics {
        let state = |state| RouteState {
            route: name.to_string(),
            state,
        };
        let result = |result| RouteResult {
            route: name.to_string(),
            result,
        };
        SpoolRouteMetrics {
            pending: self.spool_messages.get_or_create_owned(&state("pending")),
            dead: self.spool_messages.get_or_create_owned(&state("dead")),
            writes_ok: self.spool_writes.get_or_create_owned(&result("ok")),
            writes_full: self.spool_writes.get_or_create_owned(&result("full")),
            writes_error: self.spool_writes.get_or_create_owned(&result("error")),
            redeliveries_delivered: self.redeliveries.get_or_create_owned(&result("delivered")),
            redeliveries_retry: self.redeliveries.get_or_create_owned(&result("retry")),
            redeliveries_dead: self.redeliveries.get_or_create_owned(&result("dead")),
            oldest_pending_age: self.spool_oldest_age.get_or_create_owned(&RouteLabel {
                route: name.to_string(),
            }),
        }
    }

    /// Publishes the certificate now served: its path and notAfter, or no
    /// series at all for plain HTTP (a 0 would read as "expired" to an
    /// alert). Called for every config that is put into service, so a reload
    /// with a renewed certificate moves the value. The new value is set
    /// before an old path's series is removed: a scrape never sees the
    /// series missing across a reload (which would restart an alert's `for`).
    pub fn tls_certificate(&self, cert: Option<(&std::path::Path, i64)>) {
        let new = cert.map(|(path, not_after)| {
            let label = CertLabel {
                path: path.display().to_string(),
            };
            self.cert_expiry.get_or_create(&label).set(not_after);
            label
        });
        // A poisoned lock only means another thread panicked while holding
        // it; the label inside is still the one exposed.
        let mut current = self
            .cert_in_service
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if let Some(old) = current.take() {
            if new.as_ref() != Some(&old) {
                self.cert_expiry.remove(&old);
            }
        }
        *current = new;
    }

    /// Resolves (creating at zero) every series of one route, with one
    /// key-match series per key id.
    pub fn route(&self, name: &str, key_ids: &[&str]) -> RouteMetrics {
        let route = || RouteLabel {
            route: name.to_string(),
        };
        RouteMetrics {
            requests: Outcome::ROUTED.map(|o| {
                self.requests.get_or_create_owned(&RouteOutcome {
                    route: name.to_string(),
                    outcome: o.as_str(),
                })
            }),
            request_duration: self.request_duration.get_or_create_owned(&route()),
            upstream_duration: self.upstream_duration.get_or_create_owned(&route()),
            upstream_responses: CODE_CLASSES.map(|code| {
                self.upstream_responses.get_or_create_owned(&RouteCode {
                    route: name.to_string(),
                    code,
                })
            }),
            body_bytes: self.body_bytes.get_or_create_owned(&route()),
            key_matches: key_ids
                .iter()
                .map(|key| {
                    self.key_matches.get_or_create_owned(&RouteKey {
                        route: name.to_string(),
                        key: key.to_string(),
                    })
                })
                .collect(),
        }
    }

    /// Records a configuration load or reload.
    pub fn config_loaded(&self, success: bool) {
        let result = if success { "success" } else { "failure" };
        self.reloads.get_or_create(&ResultLabel { result }).inc();
        if success {
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0.0, |d| d.as_secs_f64());
            self.last_reload_success.set(now);
        }
    }

    /// The Prometheus text format (0.0.4) exposition.
    pub fn encode(&self) -> String {
        let mut out = String::with_capacity(16 * 1024);
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::prometheus_text::encode(&mut out, &self.registry);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Route names that would collide if label values were concatenated
    /// stay separate series.
    #[test]
    fn label_tuples_are_distinct_series() {
        let m = Metrics::new();
        let ab = m.route("ab", &[]);
        let a = m.route("a", &[]);
        ab.request(Outcome::Forwarded).unwrap().inc();
        a.request(Outcome::Forwarded).unwrap().inc_by(2);
        let text = m.encode();
        assert!(
            text.contains("hookgate_requests_total{route=\"ab\",outcome=\"forwarded\"} 1\n"),
            "{text}"
        );
        assert!(
            text.contains("hookgate_requests_total{route=\"a\",outcome=\"forwarded\"} 2\n"),
            "{text}"
        );
    }

    /// The expiry series follows the certificate in service: set, replaced
    /// by another path (the old series gone), removed for plain HTTP.
    #[test]
    fn certificate_expiry_follows_the_served_certificate() {
        let m = Metrics::new();
        let name = "hookgate_tls_certificate_expiry_timestamp_seconds";
        m.tls_certificate(Some((std::path::Path::new("/a.pem"), 1_900_000_000)));
        assert!(m
            .encode()
            .contains(&format!("{name}{{path=\"/a.pem\"}} 1900000000\n")));
        m.tls_certificate(Some((std::path::Path::new("/b.pem"), 1_950_000_000)));
        let text = m.encode();
        assert!(text.contains(&format!("{name}{{path=\"/b.pem\"}} 1950000000\n")));
        assert!(!text.contains("/a.pem"), "{text}");
        m.tls_certificate(None);
        assert!(!m.encode().contains(&format!("{name}{{")));
    }

    #[test]
    fn upstream_status_classes() {
        let m = Metrics::new();
        let r = m.route("r", &[]);
        for s in [100, 204, 302, 404, 503, 999, 0] {
            r.upstream_response(s);
        }
        let text = m.encode();
        for class in CODE_CLASSES {
            assert!(
                text.contains(&format!(
                    "hookgate_upstream_responses_total{{route=\"r\",code=\"{class}\"}} 1\n"
                )),
                "{class}: {text}"
            );
        }
    }
}
