//! hookgate: a reverse proxy that forwards only webhooks whose HMAC
//! signature is valid.
//!
//! # Layout
//!
//! The request path (SPEC §1) runs through these modules in order:
//!
//! - [`server`]: accepts connections, caps them, terminates TLS ([`tls`],
//!   over [`read_ahead`]: one socket read for rustls' many small ones),
//!   serves HTTP/1.1 (the plain webhook request on the [`h1`] fast path,
//!   everything else with hyper) and HTTP/2 with hyper (told apart by
//!   [`sniff`]), cuts
//!   clients that stop reading ([`send_timeout`]), closes idle or stalled
//!   HTTP/2 connections ([`streams`]), drains on shutdown;
//! - [`proxy`]: the request path top to bottom, and the one mapping from
//!   errors to statuses and outcomes;
//! - [`route`]: (host, raw path) → route;
//! - [`scheme`]: signature schemes (presets, custom), keys with rotation
//!   windows, the per-request verifier (no I/O; no allocation on the
//!   streaming HMAC path);
//! - [`body`]: reads the body frame by frame under the limits, keeps the
//!   frames and replays them upstream;
//! - [`headers`]: hop-by-hop removal and `X-Forwarded-*`;
//! - [`replay`]: the replay defence of routes with `replay_window` (a
//!   delivery is forwarded once; repeats are answered by the gateway);
//! - [`upstream`]: keep-alive connection pools per upstream origin;
//! - [`spool`]: on spooled routes (SPEC §8), the durable store of requests
//!   the upstream could not take, their redelivery worker and the `spool` CLI.
//!
//! Around it: [`config`] (TOML → validated config with prepared keys),
//! [`secret`] (env/file/credential secrets that never print), [`metrics`]
//! (Prometheus, handles resolved at load), [`outcome`] (the outcome label), [`admin`] (`/metrics`, `/healthz`,
//! `/readyz`), [`logging`] (stderr lines, text or JSON), [`cli`] and
//! [`lifecycle`] (signals, reload, systemd notify).

#![forbid(unsafe_code)]

pub mod admin;
pub mod body;
pub mod cli;
pub mod config;
pub mod fields;
pub mod h1;
pub mod headers;
pub mod lifecycle;
pub mod logging;
pub mod metrics;
pub mod outcome;
pub mod proxy;
pub mod read_ahead;
pub mod replay;
pub mod route;
pub mod scheme;
pub mod secret;
pub mod send_timeout;
pub mod server;
pub mod sniff;
pub mod spool;
pub mod streams;
pub mod tls;
pub mod upstream;
