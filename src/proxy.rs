//! The request path of SPEC §1, top to bottom in `Proxy::handle_inner`:
//!
//! route (host, raw path) → method → Host → signature headers (shape,
//! timestamp, key windows) → Content-Length pre-check → body read under
//! limits with the MACs updated per frame → constant-time compare → replay
//! check (routes with `replay_window`) → forward the same frames → relay
//! the response. In shadow mode (`enforce = false`) a failed signature
//! check is logged and counted, and the request goes on (never recorded
//! for replay).
//! On a spooled route (SPEC §8) the request is kept instead of forwarded
//! (`always`, or while the route's circuit is open), or after the forward
//! failed (`on_failure`), and answered 202 once durable.
//!
//! Every step returns `Result<_, ProxyError>`; only [`Proxy::handle`] turns an
//! error into a status, an outcome and a log line, through the one exhaustive
//! match in [`ProxyError::classify`].

use std::borrow::Cow;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use arc_swap::ArcSwap;
use bytes::Bytes;
use http::uri::PathAndQuery;
use http::{header, HeaderValue, Method, Response, StatusCode, Uri, Version};
use http_body::{Body, Frame, SizeHint};
use tokio::time::{Instant, Sleep};

use crate::body::{self, BodyError};
use crate::config::{Config, Delivery, Route};
use crate::fields::Fields;
use crate::headers::{self, Forwarding, UpstreamHead};
use crate::logging::access::AccessLine;
use crate::metrics::{Metrics, RouteMetrics, SpoolRouteMetrics};
pub use crate::outcome::Outcome;
use crate::replay::{self, Claim, MemoryStore, Repeat, ReplayStore, Verified};
use crate::route::RouteTable;
use crate::scheme::{self, Field, VerifyError};
use crate::spool::{self, Circuit, NewRecord, Note, Spool, StoreError};
use crate::upstream::{Pool, UpstreamBody, UpstreamError, Upstreams, NO_FIELDS};

/// Why the gateway answered a request itself.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error("no route for this host and path")]
    NoRoute,
    #[error("method not allowed by the route")]
    MethodNotAllowed,
    #[error("HTTP/1.1 request without exactly one valid Host header")]
    BadHost,
    #[error("a header field's name is the signature header's with '_' for '-'")]
    HeaderLookalike,
    #[error(transparent)]
    Signature(VerifyError),
    #[error("Content-Length exceeds the route's max_body_bytes")]
    ContentLengthTooLarge,
    #[error(transparent)]
    Body(BodyError),
    #[error(transparent)]
    Upstream(UpstreamError),
    #[error("upstream did not answer within upstream_timeout")]
    UpstreamTimeout,
    #[error("cannot build the upstream URI: {0}")]
    UpstreamUri(#[source] http::Error),
    /// Not a failure: a repeat the gateway answers itself instead of
    /// forwarding (SPEC §10). It takes this path because, like every other
    /// answer the gateway makes up, it gets its status, outcome and headers
    /// in [`ProxyError::classify`] and `synthetic`.
    #[error(transparent)]
    Repeat(Repeat),
    #[error("spool is at max_bytes")]
    SpoolFull,
    #[error(transparent)]
    Spool(StoreError),
}

impl ProxyError {
    /// The one place errors become statuses. No catch-all arm: a new variant
    /// must be given its answer here.
    pub fn classify(&self) -> (StatusCode, Outcome) {
        match self {
            ProxyError::NoRoute => (StatusCode::NOT_FOUND, Outcome::Unmatched),
            ProxyError::MethodNotAllowed => {
                (StatusCode::METHOD_NOT_ALLOWED, Outcome::MethodNotAllowed)
            }
            ProxyError::BadHost | ProxyError::HeaderLookalike => {
                (StatusCode::BAD_REQUEST, Outcome::BadRequest)
            }
            ProxyError::Signature(VerifyError::Missing(Field::Signature)) => {
                (StatusCode::UNAUTHORIZED, Outcome::SignatureMissing)
            }
            ProxyError::Signature(
                VerifyError::Missing(Field::Timestamp)
                | VerifyError::Duplicated(Field::Timestamp)
                | VerifyError::TimestampUnparsable
                | VerifyError::TimestampOutside { .. },
            ) => (StatusCode::UNAUTHORIZED, Outcome::TimestampInvalid),
            ProxyError::Signature(
                VerifyError::Missing(Field::Id)
                | VerifyError::Duplicated(Field::Signature | Field::Id)
                | VerifyError::Malformed(_)
                | VerifyError::WrongPrefix
                | VerifyError::WrongLength
                | VerifyError::NotHex
                | VerifyError::NotBase64
                | VerifyError::NoSignature
                | VerifyError::TooManySignatures
                | VerifyError::NoKeyValid
                | VerifyError::BodyHashMismatch
                | VerifyError::Mismatch,
            ) => (StatusCode::UNAUTHORIZED, Outcome::SignatureInvalid),
            ProxyError::ContentLengthTooLarge | ProxyError::Body(BodyError::TooLarge) => {
                (StatusCode::PAYLOAD_TOO_LARGE, Outcome::BodyTooLarge)
            }
            ProxyError::Body(BodyError::Timeout) => (StatusCode::REQUEST_TIMEOUT, Outcome::Timeout),
            ProxyError::Body(BodyError::Read(_)) => (StatusCode::BAD_REQUEST, Outcome::BadRequest),
            ProxyError::Upstream(_) | ProxyError::UpstreamUri(_) => {
                (StatusCode::BAD_GATEWAY, Outcome::UpstreamError)
            }
            ProxyError::UpstreamTimeout => (StatusCode::GATEWAY_TIMEOUT, Outcome::UpstreamTimeout),
            ProxyError::Repeat(Repeat::Duplicate) => (StatusCode::OK, Outcome::Duplicate),
            ProxyError::Repeat(Repeat::InFlight) => {
                (StatusCode::CONFLICT, Outcome::DuplicateInFlight)
            }
            ProxyError::SpoolFull => (StatusCode::SERVICE_UNAVAILABLE, Outcome::SpoolFull),
            ProxyError::Spool(_) => (StatusCode::SERVICE_UNAVAILABLE, Outcome::SpoolError),
        }
    }
}

/// One configuration snapshot: what a request is served with from start to
/// end, even if a reload swaps in another meanwhile.
#[derive(Debug)]
pub struct State {
    pub config: Config,
    pub routes: RouteTable,
    /// Per-route metric handles, indexed by [`Route::index`].
    route_metrics: Vec<RouteMetrics>,
    /// Per-route upstream pools, indexed by [`Route::index`].
    route_pools: Vec<Arc<Pool>>,
    /// Per-route spool series and circuit, for spooled routes when the
    /// gateway has a spool; indexed by [`Route::index`].
    route_spool: Vec<Option<(SpoolRouteMetrics, Arc<Circuit>)>>,
}

impl State {
    /// Resolves everything a request will need per route: metric handles
    /// and upstream pools (shared with earlier states, so a reload keeps
    /// both the counters and the keep-alive connections). Publishes the
    /// certificate's expiry, since this state is about to be served.
    pub fn new(
        config: Config,
        metrics: &Metrics,
        upstreams: &Upstreams,
        spool: Option<&Spool>,
    ) -> State {
        let routes = RouteTable::new(&config.routes);
        metrics.tls_certificate(
            config
                .server
                .tls
                .as_ref()
                .map(|t| (t.files.cert.as_path(), t.leaf_not_after)),
        );
        let route_metrics = config
            .routes
            .iter()
            .map(|r| {
                let ids: Vec<&str> = r.check.keys.iter().map(|k| k.id.as_str()).collect();
                metrics.route(&r.name, &ids)
            })
            .collect();
        let route_pools = config
            .routes
            .iter()
            .map(|r| upstreams.pool(&r.upstream.authority))
            .collect();
        let route_spool = config
            .routes
            .iter()
            .map(|r| {
                let spool = spool.filter(|_| r.delivery.spooled())?;
                Some((metrics.spool_route(&r.name), spool.circuit(&r.name)))
            })
            .collect();
        State {
            config,
            routes,
            route_metrics,
            route_pools,
            route_spool,
        }
    }

    /// The upstream pool of a route of this state. Routes and pools are
    /// built from the same list, so the index is always in range.
    pub(crate) fn pool(&self, route: &Route) -> &Arc<Pool> {
        &self.route_pools[route.index]
    }

    /// The metric handles of a route of this state.
    fn route_metrics(&self, route: &Route) -> Option<&RouteMetrics> {
        self.route_metrics.get(route.index)
    }

    /// A spooled route's spool series (`None` for a `sync` route).
    pub fn spool_metrics(&self, route: &Route) -> Option<&SpoolRouteMetrics> {
        self.route_spool.get(route.index)?.as_ref().map(|(m, _)| m)
    }

    /// A spooled route's metrics and circuit (`None` for a `sync` route or
    /// without a spool).
    fn spooled(&self, route: &Route) -> Option<&(SpoolRouteMetrics, Arc<Circuit>)> {
        self.route_spool.get(route.index)?.as_ref()
    }
}

/// The client side of a connection, as the request path needs it. Built
/// once per connection, shared by its requests.
#[derive(Debug)]
pub struct ConnInfo {
    pub peer: SocketAddr,
    /// The peer's IP as an `X-Forwarded-For` value, formatted once.
    pub peer_ip: HeaderValue,
    /// `ip:port` for logs, formatted once.
    pub peer_text: String,
    /// "http" or "https": the `X-Forwarded-Proto` value.
    pub proto: &'static str,
}

impl ConnInfo {
    pub fn new(peer: SocketAddr, proto: &'static str) -> ConnInfo {
        let peer_ip = HeaderValue::from_str(&peer.ip().to_string())
            .unwrap_or(HeaderValue::from_static("unknown"));
        ConnInfo {
            peer,
            peer_ip,
            peer_text: peer.to_string(),
            proto,
        }
    }
}

/// A request without its body, as the request path reads it.
pub struct RequestHead {
    pub method: Method,
    pub uri: Uri,
    pub version: Version,
    pub fields: Fields,
}

impl RequestHead {
    /// The head of a request hyper parsed (HTTP/2, HTTP/1 off the fast path).
    pub fn from_parts(parts: http::request::Parts) -> RequestHead {
        RequestHead {
            fields: Fields::from_map(&parts.headers),
            method: parts.method,
            uri: parts.uri,
            version: parts.version,
        }
    }
}

/// The gateway's request handler: current state plus what outlives a
/// reload (the upstream pools, so keep-alive connections survive, and the
/// metrics).
pub struct Proxy {
    state: ArcSwap<State>,
    upstreams: Upstreams,
    metrics: Arc<Metrics>,
    /// Deliveries already handed over, for routes with `replay_window`.
    /// Outlives reloads, like the pools: keys carry the route's name.
    replay: MemoryStore,
    /// The spool database's replay store when it has one (PostgreSQL:
    /// shared by every instance; SQLite: survives restarts); used instead
    /// of `replay`.
    shared_replay: Option<Arc<dyn ReplayStore>>,
    spool: Option<Arc<Spool>>,
}

/// What the request path produced: the upstream's response to relay, or a
/// 202 for a request now durable in the spool.
enum Reply {
    Upstream(Response<UpstreamBody>),
    Accepted(String),
}

/// A spooled route's request as it is sent upstream: what the spool keeps
/// if that send fails (buffers shared, not copied).
struct Kept {
    id: String,
    method: Method,
    target: String,
    /// The fields as sent, in the spool's encoding (`name: value\r\n`).
    headers: Vec<u8>,
    frames: body::Frames,
}

/// What is known about a request as it moves along the path. It travels
/// inside the response body and, when that body is finished (or dropped),
/// records the metrics and writes the access-log line, so durations cover
/// the whole response.
struct Exchange {
    state: Arc<State>,
    _in_flight: InFlight,
    started: Instant,
    conn: Arc<ConnInfo>,
    method: Method,
    version: Version,
    route: Option<Arc<Route>>,
    /// Set once the body has been read.
    body_bytes: Option<u64>,
    /// The request body was read to its end (or was empty): the connection
    /// can be reused.
    body_done: bool,
    upstream_time: Option<Duration>,
    upstream_status: Option<StatusCode>,
    status: StatusCode,
    outcome: Outcome,
}

/// Counts a request in `hookgate_requests_in_flight` for as long as it lives
/// (also when the client goes away and the handler is dropped).
struct InFlight(prometheus_client::metrics::gauge::Gauge);

impl InFlight {
    fn new(metrics: &Metrics) -> InFlight {
        metrics.in_flight.inc();
        InFlight(metrics.in_flight.clone())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.dec();
    }
}

impl Exchange {
    /// Records the finished exchange: metrics, then one access-log line.
    fn finish(&self, metrics: &Metrics) {
        let duration = self.started.elapsed();
        match &self.route {
            None => {
                metrics.unmatched.inc();
            }
            Some(route) => {
                if let Some(m) = self.state.route_metrics.get(route.index) {
                    if let Some(c) = m.request(self.outcome) {
                        c.inc();
                    }
                    m.request_duration.observe(duration.as_secs_f64());
                    if let Some(bytes) = self.body_bytes {
                        m.body_bytes.observe(bytes as f64);
                    }
                    if let Some(t) = self.upstream_time {
                        m.upstream_duration.observe(t.as_secs_f64());
                    }
                    if let Some(status) = self.upstream_status {
                        m.upstream_response(status.as_u16());
                    }
                }
            }
        }
        // Plain data: the text format writes it without tracing's
        // per-event dispatch (`logging::access` says why).
        AccessLine {
            route: self.route.as_ref().map_or("-", |r| r.name.as_str()),
            method: self.method.as_str(),
            status: self.status.as_u16(),
            outcome: self.outcome.as_str(),
            body_bytes: self.body_bytes.unwrap_or(0),
            duration_us: micros(duration),
            upstream_us: self.upstream_time.map(micros),
            peer: self.conn.peer_text.as_str(),
            protocol: protocol(self.version),
        }
        .emit();
    }
}

impl Proxy {
    /// A proxy serving `config` without a spool (every route `sync`).
    pub fn new(config: Config, metrics: Arc<Metrics>) -> Proxy {
        Proxy::with_spool(config, metrics, None)
    }

    /// A proxy serving `config`, keeping the requests of spooled routes in
    /// `spool`.
    pub fn with_spool(config: Config, metrics: Arc<Metrics>, spool: Option<Arc<Spool>>) -> Proxy {
        let upstreams = Upstreams::default();
        let shared_replay = spool.as_ref().and_then(|s| s.store.replay_store());
        // One store reports `hookgate_replay_entries`: the unused memory
        // store would otherwise reset it to 0 on every reload.
        let memory_entries = match &shared_replay {
            Some(shared) => {
                shared.track(metrics.replay_entries.clone());
                Default::default()
            }
            None => metrics.replay_entries.clone(),
        };
        let replay = MemoryStore::new(
            config.limits.replay_max_entries,
            memory_entries,
            metrics.replay_evictions.clone(),
        );
        let state = State::new(config, &metrics, &upstreams, spool.as_deref());
        Proxy {
            state: ArcSwap::from_pointee(state),
            upstreams,
            metrics,
            replay,
            shared_replay,
            spool,
        }
    }

    pub fn spool(&self) -> Option<&Arc<Spool>> {
        self.spool.as_ref()
    }

    /// The current configuration snapshot.
    pub fn state(&self) -> Arc<State> {
        self.state.load_full()
    }

    /// Swaps in a new configuration; requests already in flight keep the
    /// state they started with.
    pub fn replace_config(&self, config: Config) {
        self.replay
            .set_max_entries(config.limits.replay_max_entries);
        if let (Some(spool), Some(cfg)) = (&self.spool, &config.spool) {
            spool.store.set_capacity(cfg.max_bytes);
        }
        let state = State::new(
            config,
            &self.metrics,
            &self.upstreams,
            self.spool.as_deref(),
        );
        self.state.store(Arc::new(state));
    }

    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// Serves one request; never fails and never panics on peer input.
    /// The body is hyper's (`Incoming`) or the HTTP/1.1 fast path's
    /// (`h1::RequestBody`): any body of `Bytes` frames whose errors box.
    /// `timer`: the connection's timer for the wait on the upstream, reused
    /// from request to request (the HTTP/1.1 fast path has one); `None`
    /// makes one for this request.
    pub async fn handle<B>(
        self: Arc<Self>,
        conn: Arc<ConnInfo>,
        head: RequestHead,
        body: B,
        timer: Option<&mut UpstreamTimer>,
    ) -> Response<ResponseBody>
    where
        B: Body<Data = Bytes> + Unpin,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let mut ex = Exchange {
            state: self.state(),
            _in_flight: InFlight::new(&self.metrics),
            started: Instant::now(),
            conn: conn.clone(),
            method: head.method.clone(),
            version: head.version,
            route: None,
            body_bytes: None,
            body_done: body.is_end_stream(),
            upstream_time: None,
            upstream_status: None,
            status: StatusCode::OK,
            outcome: Outcome::Forwarded,
        };
        let state = ex.state.clone();
        let (response, body) = match self
            .handle_inner(&state, &conn, head, body, timer, &mut ex)
            .await
        {
            Ok(Reply::Upstream(response)) => {
                let (parts, body) = response.into_parts();
                (Response::from_parts(parts, ()), Inner::Upstream(body))
            }
            Ok(Reply::Accepted(id)) => accepted(&id),
            Err(err) => {
                let (status, outcome) = err.classify();
                ex.outcome = outcome;
                tracing::debug!(
                    route = ex.route.as_ref().map_or("-", |r| r.name.as_str()),
                    peer = %conn.peer,
                    reason = %err,
                    "rejected"
                );
                let close = !ex.body_done && ex.version <= Version::HTTP_11;
                synthetic(status, &err, ex.route.as_deref(), close)
            }
        };
        ex.status = response.status();
        response.map(|()| ResponseBody {
            inner: body,
            exchange: Some(ex),
            proxy: self,
        })
    }

    async fn handle_inner<B>(
        &self,
        state: &State,
        conn: &ConnInfo,
        head: RequestHead,
        mut body: B,
        timer: Option<&mut UpstreamTimer>,
        ex: &mut Exchange,
    ) -> Result<Reply, ProxyError>
    where
        B: Body<Data = Bytes> + Unpin,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let (host, host_ok) = request_host(&head);

        let route = state
            .routes
            .find(host, head.uri.path())
            .ok_or(ProxyError::NoRoute)?;
        ex.route = Some(route.clone());
        if !route.methods.contains(&head.method) {
            return Err(ProxyError::MethodNotAllowed);
        }
        if !host_ok {
            return Err(ProxyError::BadHost);
        }
        // Every header the scheme reads, in every spelling: a look-alike
        // (`_` for `-`) could be read by the app instead of the one verified.
        let names = head.fields.iter().map(|(name, _)| name);
        if headers::has_lookalike(names, route.check.header_names()) {
            return Err(ProxyError::HeaderLookalike);
        }
        let now = scheme::timestamp::now();
        let mut verifier = match route.check.begin(&head.fields, head.uri.query(), now) {
            Ok(v) => Some(v),
            Err(e) => {
                signature_failed(route, e, ex)?;
                None
            }
        };
        if body.size_hint().lower() > route.max_body_bytes {
            return Err(ProxyError::ContentLengthTooLarge);
        }

        let deadline = ex.started + route.request_timeout;
        let frames =
            body::read_verified(&mut body, verifier.as_mut(), route.max_body_bytes, deadline)
                .await
                .map_err(ProxyError::Body)?;
        ex.body_done = true;
        ex.body_bytes = Some(frames.len());
        // The verifier (~2 KB) ends here: dropped before the awaits below, so
        // the future does not carry it through them.
        let verdict = verifier.as_mut().map(|v| v.finish(frames.bufs()));
        drop(verifier);
        let mut claim = None;
        if let Some(verdict) = verdict {
            match verdict {
                Ok(verified) => {
                    if let Some(m) = state.route_metrics(route) {
                        m.key_matched(verified.key);
                    }
                    claim = self.claim_delivery(route, &head.fields, &verified).await?;
                }
                Err(e) => signature_failed(route, e, ex)?,
            }
        }

        let target = upstream_target(route, &head.uri).map_err(ProxyError::UpstreamUri)?;
        // HTTP/2 has :authority instead of a Host field.
        let host_value = head.fields.get("host").or(host.map(str::as_bytes));
        let forwarding = route.forwarded_headers.then(|| Forwarding {
            peer: conn.peer_ip.as_bytes(),
            trusted: state
                .config
                .server
                .trusted_proxies
                .iter()
                .any(|net| net.contains(&conn.peer.ip())),
            proto: conn.proto,
            host: host_value,
        });

        // Spooled routes: one delivery id on every attempt, and a copy of
        // what is sent in case it has to be kept.
        let spooled = self.spool.as_ref().zip(state.spooled(route));
        let id = spooled.map(|_| spool::new_id());
        let own_fields;
        let own: &[(&http::HeaderName, &[u8])] = match &id {
            Some(id) => {
                own_fields = [
                    (&spool::X_HOOKGATE_DELIVERY, id.as_bytes()),
                    (&spool::X_HOOKGATE_ATTEMPT, &b"1"[..]),
                ];
                &own_fields
            }
            None => &[],
        };
        let upstream_head = UpstreamHead {
            method: &head.method,
            target: &target,
            fields: &head.fields,
            signature: route.check.header_names(),
            forwarding,
            authority: head.uri.authority().map(|a| a.as_str()),
            content_length: frames.len(),
            own,
        };
        let kept = id
            .as_ref()
            .map(|id| Kept::new(id, &head.method, &target, &upstream_head, &frames));
        if let (Some((spool, (_, circuit))), Some(kept)) = (spooled, &kept) {
            // `always`, or the route's circuit is open: keep it, skip the try.
            let skip = match route.delivery {
                Delivery::Always => Some(Outcome::Queued),
                _ if circuit.is_open() => Some(Outcome::Spooled),
                _ => None,
            };
            if let Some(outcome) = skip {
                let kept = self.keep(state, route, spool, kept, 0, Note::default(), outcome, ex);
                return kept.await.inspect(|_| commit(claim));
            }
        }

        let pool = state.pool(route);
        let sent = Instant::now();
        let encode = |out: &mut Vec<u8>| {
            headers::write_upstream_head(out, &upstream_head);
        };
        // `sent` also dates the pool's idle check and the upstream deadline:
        // one clock read for the three.
        let sending = pool.send_head(&head.method, encode, frames.into_body(), sent);
        let attempt = match timer {
            Some(timer) => within(timer, sent + route.upstream_timeout, sending).await,
            None => tokio::time::timeout(route.upstream_timeout, sending)
                .await
                .map_err(|_| TimedOut),
        };
        if let Ok(Ok(_)) = &attempt {
            // Upstream time is the time to response headers: only when some came.
            ex.upstream_time = Some(sent.elapsed());
        }
        if let (Some((spool, (_, circuit))), Some(kept)) = (spooled, &kept) {
            if let Some(note) = sync_failure(&attempt) {
                ex.upstream_status = note.status.and_then(|s| StatusCode::from_u16(s).ok());
                if let Some(cfg) = &state.config.spool {
                    circuit.failed(&cfg.retry, false, None);
                }
                let kept = self.keep(state, route, spool, kept, 1, note, Outcome::Spooled, ex);
                return kept.await.inspect(|_| commit(claim));
            }
            if circuit.succeeded() {
                spool.route_recovered(&route.name);
            }
        }
        // Interim 1xx answers were skipped by the client, and a 101 (no
        // upgrade was asked for) is its error: this is the final response.
        let response = attempt
            .map_err(|_| ProxyError::UpstreamTimeout)?
            .map_err(ProxyError::Upstream)?;
        ex.upstream_status = Some(response.status());
        // Recorded only once the app accepted it; otherwise the claim is
        // dropped and the next copy goes through.
        if response.status().is_success() {
            commit(claim);
        }

        // Its end-to-end fields travel with the body, hop-by-hop ones
        // already dropped by the client (`upstream::Fields`).
        Ok(Reply::Upstream(response))
    }

    /// The replay check of a route with `replay_window`: a claim on this
    /// delivery, or the repeat to answer. Routes without a window skip it.
    /// A delivery is known by the scheme's delivery id when it has one,
    /// else by the verified MAC (with its timestamp when signed).
    async fn claim_delivery(
        &self,
        route: &Route,
        headers: &Fields,
        verified: &scheme::Verified,
    ) -> Result<Option<Claim<'_>>, ProxyError> {
        let Some(window) = route.replay_window else {
            return Ok(None);
        };
        let material = match (route.check.delivery_id(headers), verified.timestamp) {
            (Some(id), _) => Verified::Id(id),
            (None, Some(t)) => Verified::MacAt(verified.tag.as_slice(), t),
            (None, None) => Verified::Mac(verified.tag.as_slice()),
        };
        let key = replay::key(&route.name, material);
        let store: &dyn ReplayStore = match &self.shared_replay {
            Some(shared) => shared.as_ref(),
            None => &self.replay,
        };
        replay::claim(store, key, window)
            .await
            .map(Some)
            .map_err(ProxyError::Repeat)
    }

    /// Writes a spooled route's request to the spool and answers 202 once
    /// it is durable; 503 when the spool is full or cannot be written.
    /// `attempts` counts the synchronous try (0 when it was skipped).
    #[allow(clippy::too_many_arguments)]
    async fn keep(
        &self,
        state: &State,
        route: &Route,
        spool: &Spool,
        kept: &Kept,
        attempts: u32,
        note: Note,
        outcome: Outcome,
        ex: &mut Exchange,
    ) -> Result<Reply, ProxyError> {
        let now = spool::now_ms();
        // A failed try waits one step of the schedule; a skipped one (or
        // `always`) is due at once (the circuit still limits probes).
        let wait = match (&state.config.spool, attempts) {
            (Some(cfg), 1..) => cfg.retry.first().map_or(0, |d| {
                i64::try_from(spool::jitter(*d).as_millis()).unwrap_or(i64::MAX)
            }),
            _ => 0,
        };
        let record = NewRecord {
            id: kept.id.clone(),
            route: route.name.clone(),
            received_ms: now,
            method: kept.method.as_str().to_string(),
            target: kept.target.clone(),
            headers: kept.headers.clone(),
            body: kept.frames.to_vec(),
            attempts,
            next_attempt_ms: now.saturating_add(wait),
            last_status: note.status,
            last_error: note.error,
        };
        let metrics = state.spool_metrics(route);
        match spool.put(record).await {
            Ok(()) => {
                if let Some(m) = metrics {
                    m.writes_ok.inc();
                }
                if wait == 0 {
                    spool.wake.notify_one();
                }
                ex.outcome = outcome;
                Ok(Reply::Accepted(kept.id.clone()))
            }
            Err(StoreError::Full) => {
                if let Some(m) = metrics {
                    m.writes_full.inc();
                }
                Err(ProxyError::SpoolFull)
            }
            Err(e) => {
                if let Some(m) = metrics {
                    m.writes_error.inc();
                }
                Err(ProxyError::Spool(e))
            }
        }
    }
}

impl Kept {
    /// Keeps a copy of the request as it is sent (with its delivery id
    /// and attempt 1 among the fields).
    fn new(
        id: &str,
        method: &Method,
        target: &str,
        head: &UpstreamHead<'_>,
        frames: &body::Frames,
    ) -> Kept {
        let mut encoded = Vec::new();
        let fields = headers::write_upstream_head(&mut encoded, head);
        Kept {
            id: id.to_string(),
            method: method.clone(),
            target: target.to_string(),
            headers: encoded[fields].to_vec(),
            frames: frames.clone(),
        }
    }
}

/// A connection's timer for the wait on the upstream, made at its first
/// request.
pub type UpstreamTimer = Option<Pin<Box<Sleep>>>;

/// No answer from the upstream within `upstream_timeout`.
#[derive(Debug)]
pub struct TimedOut;

/// `fut`, bounded by the deadline `at`, on the connection's `timer`. Each
/// request's deadline is later than the one before, so moving the timer
/// only updates its entry in tokio's timer wheel, where a new timer per
/// request was an insertion and a removal under the driver's lock.
async fn within<F: Future>(
    timer: &mut UpstreamTimer,
    at: Instant,
    fut: F,
) -> Result<F::Output, TimedOut> {
    let mut sleep = match timer {
        Some(sleep) => {
            sleep.as_mut().reset(at);
            sleep.as_mut()
        }
        None => timer
            .insert(Box::pin(tokio::time::sleep_until(at)))
            .as_mut(),
    };
    let mut fut = std::pin::pin!(fut);
    std::future::poll_fn(|cx| {
        if let Poll::Ready(out) = fut.as_mut().poll(cx) {
            return Poll::Ready(Ok(out));
        }
        sleep.as_mut().poll(cx).map(|()| Err(TimedOut))
    })
    .await
}

/// Records a delivery in the replay store: once the app answered 2xx, or
/// once the spool holds it (SPEC §10).
fn commit(claim: Option<Claim<'_>>) {
    if let Some(claim) = claim {
        claim.commit();
    }
}

/// How a synchronous try failed, the way a sender counts failure (SPEC §8):
/// no complete response headers (connect error, reset, timeout) or a 5xx,
/// 408 or 429. `None`: it did not fail.
fn sync_failure(
    attempt: &Result<Result<Response<UpstreamBody>, UpstreamError>, TimedOut>,
) -> Option<Note> {
    match attempt {
        Err(_) => Some(Note {
            status: None,
            error: Some("no answer within upstream_timeout".into()),
        }),
        Ok(Err(e)) => Some(Note {
            status: None,
            error: Some(e.to_string()),
        }),
        Ok(Ok(response)) if spool::failed_status(response.status()) => Some(Note {
            status: Some(response.status().as_u16()),
            error: None,
        }),
        Ok(Ok(_)) => None,
    }
}

/// The answer for a request now durable in the spool.
fn accepted(id: &str) -> (Response<()>, Inner) {
    let mut response = Response::new(());
    *response.status_mut() = StatusCode::ACCEPTED;
    let h = response.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    if let Ok(v) = HeaderValue::from_str(id) {
        h.insert(&spool::X_HOOKGATE_DELIVERY, v);
    }
    (
        response,
        Inner::Full(Some(Bytes::from_static(b"202 Accepted\n"))),
    )
}

/// A failed signature check: refused (401) on an enforcing route; on a
/// shadow route logged at warn with the reason (never a secret or an
/// expected value), counted as `shadow_invalid`, and let through.
fn signature_failed(route: &Route, err: VerifyError, ex: &mut Exchange) -> Result<(), ProxyError> {
    if route.enforce {
        return Err(ProxyError::Signature(err));
    }
    if ex.outcome != Outcome::ShadowInvalid {
        tracing::warn!(
            route = route.name.as_str(),
            peer = ex.conn.peer_text.as_str(),
            reason = %err,
            "shadow mode: signature check failed, forwarding anyway"
        );
    }
    ex.outcome = Outcome::ShadowInvalid;
    Ok(())
}

/// Whole microseconds: integers format far cheaper than floats in the
/// access log, which is written for every request.
fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

fn protocol(version: Version) -> &'static str {
    match version {
        Version::HTTP_09 => "HTTP/0.9",
        Version::HTTP_10 => "HTTP/1.0",
        Version::HTTP_11 => "HTTP/1.1",
        Version::HTTP_2 => "HTTP/2",
        Version::HTTP_3 => "HTTP/3",
        _ => "HTTP/?",
    }
}

/// The host a request is for, and whether its Host is acceptable: HTTP/1.1
/// needs exactly one valid Host (RFC 9112 §3.2); HTTP/1.0 may omit it;
/// HTTP/2 carries it as `:authority` (or Host).
fn request_host(head: &RequestHead) -> (Option<&str>, bool) {
    let mut hosts = head.fields.get_all("host");
    let first = hosts.next();
    let duplicated = hosts.next().is_some();
    let from_header = first
        .and_then(|v| std::str::from_utf8(v).ok())
        .filter(|h| valid_host(h));
    let host = from_header.or_else(|| {
        head.uri
            .authority()
            .map(|a| a.as_str())
            .filter(|h| valid_host(h))
    });
    let ok = !duplicated
        && match (head.version, first) {
            (_, Some(_)) => from_header.is_some(),
            (Version::HTTP_11, None) => false,
            (Version::HTTP_2 | Version::HTTP_3, None) => host.is_some(),
            (_, None) => true,
        };
    (host, ok)
}

/// A Host value is `host[:port]` with no userinfo; the port, when the
/// colon is there, is 1–5 digits and at most 65535 (`http`'s `Authority`
/// accepts `gw.test:8a`, which nginx and Envoy refuse with 400).
pub fn valid_host(h: &str) -> bool {
    if let Some(valid) = plain_host(h.as_bytes()) {
        return valid;
    }
    let parsed = h
        .parse::<http::uri::Authority>()
        .is_ok_and(|a| a.as_str() == h && !h.contains('@'));
    parsed && !h.is_empty() && valid_port(h)
}

/// The usual Host, decided without building an `Authority`: a name or
/// IPv4 address of letters, digits, `.` and `-`, then optionally `:` and
/// 1–5 digits. `Some(valid)` for that shape (what the full check answers
/// for it; `tests::plain_host_agrees` compares them), `None` for anything
/// else (IPv6 literals, other characters), which takes the full check.
fn plain_host(h: &[u8]) -> Option<bool> {
    let (name, port) = match h.iter().position(|&b| b == b':') {
        Some(colon) => (&h[..colon], Some(&h[colon + 1..])),
        None => (h, None),
    };
    let name_ok = !name.is_empty()
        && name
            .iter()
            .all(|&b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-');
    if !name_ok {
        return None;
    }
    match port {
        None => Some(true),
        Some(p) if (1..=5).contains(&p.len()) && p.iter().all(u8::is_ascii_digit) => {
            Some(p.iter().fold(0u32, |n, &d| n * 10 + u32::from(d - b'0')) <= 65535)
        }
        Some(_) => None,
    }
}

fn valid_port(h: &str) -> bool {
    // After an IPv6 literal's `]`, or after the only colon of a name.
    let tail = match h.rfind(']') {
        Some(end) => &h[end + 1..],
        None => h,
    };
    let Some(colon) = tail.rfind(':') else {
        return true;
    };
    let port = &tail[colon + 1..];
    (1..=5).contains(&port.len())
        && port.bytes().all(|b| b.is_ascii_digit())
        && port.parse::<u32>().is_ok_and(|p| p <= 65535)
}

/// The upstream request target in origin form: the request's path and
/// query, or the route's fixed path plus the request's query.
fn upstream_target<'a>(route: &'a Route, uri: &'a Uri) -> Result<Cow<'a, str>, http::Error> {
    Ok(match (&route.upstream.fixed_path, uri.query()) {
        (None, _) => Cow::Borrowed(uri.path_and_query().map_or("/", |pq| pq.as_str())),
        (Some(fixed), None) => Cow::Borrowed(fixed.as_str()),
        (Some(fixed), Some(query)) => {
            let joined = PathAndQuery::try_from(format!("{}?{query}", fixed.path()))
                .map_err(http::Error::from)?;
            Cow::Owned(joined.as_str().to_string())
        }
    })
}

/// Marks the gateway's 200 to a repeat of a recorded delivery.
const DUPLICATE: http::HeaderName = http::HeaderName::from_static("x-hookgate-duplicate");

/// A response the gateway writes itself: short `text/plain` naming only the
/// status, never which check failed (that goes to the log).
fn synthetic(
    status: StatusCode,
    err: &ProxyError,
    route: Option<&Route>,
    close: bool,
) -> (Response<()>, Inner) {
    let text = format!(
        "{} {}\n",
        status.as_u16(),
        status.canonical_reason().unwrap_or("")
    );
    let mut response = Response::new(());
    *response.status_mut() = status;
    let h = response.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    match (err, route) {
        (ProxyError::MethodNotAllowed, Some(route)) => {
            h.insert(header::ALLOW, route.allow.clone());
        }
        (ProxyError::Repeat(Repeat::Duplicate), _) => {
            h.insert(DUPLICATE, HeaderValue::from_static("true"));
        }
        // The first copy is normally answered within upstream_timeout; the
        // sender may retry after a second.
        (ProxyError::Repeat(Repeat::InFlight), _) => {
            h.insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        _ => {}
    }
    if let ProxyError::SpoolFull = err {
        h.insert(header::RETRY_AFTER, HeaderValue::from_static("60"));
    }
    if close {
        // Unread body bytes must never be parsed as the next request.
        h.insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    (response, Inner::Full(Some(Bytes::from(text))))
}

/// A response body: the upstream's, streamed, or the gateway's own. It
/// carries the request's `Exchange`, recorded when the body ends or is
/// dropped.
pub struct ResponseBody {
    inner: Inner,
    exchange: Option<Exchange>,
    proxy: Arc<Proxy>,
}

enum Inner {
    /// Owns the upstream connection while it streams; puts it back in its
    /// pool itself once read to a clean end.
    Upstream(UpstreamBody),
    Full(Option<Bytes>),
}

impl ResponseBody {
    /// The upstream's end-to-end header fields, for the HTTP/1.1 fast path
    /// to write after the response's own (none for the gateway's answers).
    pub fn fields(&self) -> &Fields {
        match &self.inner {
            Inner::Upstream(body) => body.fields(),
            Inner::Full(_) => &NO_FIELDS,
        }
    }

    /// Moves the upstream's fields into `response`'s map, for hyper, which
    /// writes only the map (HTTP/2, and HTTP/1 requests the fast path hands
    /// over). Before it, the map holds only the gateway's own fields.
    pub fn fields_into_map(response: &mut Response<ResponseBody>) {
        if let Inner::Upstream(body) = &mut response.body_mut().inner {
            let fields = body.take_fields();
            fields.append_to(response.headers_mut());
        }
    }

    fn finish(&mut self) {
        if let Some(ex) = self.exchange.take() {
            ex.finish(&self.proxy.metrics);
        }
    }
}

impl Drop for ResponseBody {
    fn drop(&mut self) {
        self.finish();
    }
}

impl Body for ResponseBody {
    type Data = Bytes;
    type Error = UpstreamError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, UpstreamError>>> {
        let this = self.get_mut();
        let polled = match &mut this.inner {
            Inner::Upstream(body) => Pin::new(body).poll_frame(cx),
            Inner::Full(data) => Poll::Ready(data.take().map(|d| Ok(Frame::data(d)))),
        };
        if let Poll::Ready(None) = polled {
            this.finish();
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        match &self.inner {
            Inner::Upstream(body) => body.is_end_stream(),
            Inner::Full(data) => data.is_none(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.inner {
            Inner::Upstream(body) => body.size_hint(),
            Inner::Full(data) => SizeHint::with_exact(data.as_ref().map_or(0, |d| d.len() as u64)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The full Host check without the `plain_host` shortcut.
    fn full_valid_host(h: &str) -> bool {
        let parsed = h
            .parse::<http::uri::Authority>()
            .is_ok_and(|a| a.as_str() == h && !h.contains('@'));
        parsed && !h.is_empty() && valid_port(h)
    }

    /// Wherever the shortcut decides, it answers what the full check
    /// answers: every string up to 6 bytes over an alphabet of the
    /// shortcut's characters and its edges, plus longer everyday hosts.
    #[test]
    fn plain_host_agrees() {
        let alphabet = b"a9.-:0_[]@ ";
        let mut decided = 0;
        let mut check = |h: &str| {
            if let Some(fast) = plain_host(h.as_bytes()) {
                decided += 1;
                assert_eq!(fast, full_valid_host(h), "{h:?}");
            }
            assert_eq!(valid_host(h), full_valid_host(h), "{h:?}");
        };
        let mut stack = vec![String::new()];
        while let Some(s) = stack.pop() {
            check(&s);
            if s.len() < 6 {
                for &c in alphabet {
                    stack.push(format!("{s}{}", c as char));
                }
            }
        }
        for h in [
            "gw.example.com",
            "gw.example.com:8443",
            "127.0.0.1:65535",
            "127.0.0.1:65536",
            "127.0.0.1:099999",
            "a:00080",
            "[::1]:80",
            "xn--bcher-kva.example",
        ] {
            check(h);
        }
        assert!(decided > 10_000, "the shortcut decided only {decided}");
    }

    /// Pins the status and outcome of every error the request path can
    /// produce (SPEC §2).
    #[test]
    fn status_table() {
        let refused = UpstreamError::Connect {
            authority: http::uri::Authority::from_static("127.0.0.1:9"),
            source: std::io::ErrorKind::ConnectionRefused.into(),
        };
        let uri_err = Uri::builder().scheme("http").build().unwrap_err();
        let cases: Vec<(ProxyError, u16, &str)> = vec![
            (ProxyError::NoRoute, 404, "unmatched"),
            (ProxyError::MethodNotAllowed, 405, "method_not_allowed"),
            (ProxyError::BadHost, 400, "bad_request"),
            (ProxyError::HeaderLookalike, 400, "bad_request"),
            (
                ProxyError::Upstream(UpstreamError::Request {
                    authority: http::uri::Authority::from_static("127.0.0.1:9"),
                    source: crate::upstream::h1::Error::Upgrade(StatusCode::SWITCHING_PROTOCOLS),
                }),
                502,
                "upstream_error",
            ),
            (
                ProxyError::Signature(VerifyError::Missing(Field::Signature)),
                401,
                "signature_missing",
            ),
            (
                ProxyError::Signature(VerifyError::Duplicated(Field::Signature)),
                401,
                "signature_invalid",
            ),
            (
                ProxyError::Signature(VerifyError::Missing(Field::Id)),
                401,
                "signature_invalid",
            ),
            (
                ProxyError::Signature(VerifyError::Missing(Field::Timestamp)),
                401,
                "timestamp_invalid",
            ),
            (
                ProxyError::Signature(VerifyError::TimestampOutside { skew: 412 }),
                401,
                "timestamp_invalid",
            ),
            (
                ProxyError::Signature(VerifyError::TimestampUnparsable),
                401,
                "timestamp_invalid",
            ),
            (
                ProxyError::Signature(VerifyError::TooManySignatures),
                401,
                "signature_invalid",
            ),
            (
                ProxyError::Signature(VerifyError::NoKeyValid),
                401,
                "signature_invalid",
            ),
            (
                ProxyError::Signature(VerifyError::WrongLength),
                401,
                "signature_invalid",
            ),
            (
                ProxyError::Signature(VerifyError::NotHex),
                401,
                "signature_invalid",
            ),
            (
                ProxyError::Signature(VerifyError::Mismatch),
                401,
                "signature_invalid",
            ),
            (ProxyError::ContentLengthTooLarge, 413, "body_too_large"),
            (ProxyError::Body(BodyError::TooLarge), 413, "body_too_large"),
            (ProxyError::Body(BodyError::Timeout), 408, "timeout"),
            (
                ProxyError::Body(BodyError::Read("x".into())),
                400,
                "bad_request",
            ),
            (ProxyError::Upstream(refused), 502, "upstream_error"),
            (ProxyError::UpstreamUri(uri_err), 502, "upstream_error"),
            (ProxyError::UpstreamTimeout, 504, "upstream_timeout"),
            (ProxyError::Repeat(Repeat::Duplicate), 200, "duplicate"),
            (
                ProxyError::Repeat(Repeat::InFlight),
                409,
                "duplicate_in_flight",
            ),
            (ProxyError::SpoolFull, 503, "spool_full"),
            (
                ProxyError::Spool(StoreError::Storage("disk full".into())),
                503,
                "spool_error",
            ),
        ];
        for (err, status, outcome) in cases {
            let (s, o) = err.classify();
            assert_eq!((s.as_u16(), o.as_str()), (status, outcome), "{err:?}");
        }
    }
}
