//! Route table: (host, raw path) → route.
//!
//! Matching is exact on the raw request path: no percent-decoding, no dot
//! segment or slash folding, case-sensitive. A route with a `host` matches
//! only that Host/`:authority` (port ignored, case-insensitive) and wins over
//! a route without one on the same path.

use std::collections::HashMap;
use std::sync::Arc;

use crate::config::Route;

/// FNV rather than SipHash: the table is built from the config, so a peer
/// cannot make keys collide; it can only pay for hashing its own path, and
/// FNV does that several times cheaper for short paths.
#[derive(Debug, Default)]
pub struct RouteTable {
    by_path: HashMap<Box<str>, PathRoutes, fnv::FnvBuildHasher>,
}

#[derive(Debug, Default)]
struct PathRoutes {
    by_host: Vec<Arc<Route>>,
    any_host: Option<Arc<Route>>,
}

impl RouteTable {
    pub fn new(routes: &[Arc<Route>]) -> RouteTable {
        let mut by_path: HashMap<Box<str>, PathRoutes, fnv::FnvBuildHasher> = HashMap::default();
        for route in routes {
            let entry = by_path.entry(route.path.as_str().into()).or_default();
            match route.host {
                Some(_) => entry.by_host.push(route.clone()),
                None => entry.any_host = Some(route.clone()),
            }
        }
        RouteTable { by_path }
    }

    /// `host` is the request's Host or `:authority`, possibly with a port.
    pub fn find(&self, host: Option<&str>, path: &str) -> Option<&Arc<Route>> {
        let entry = self.by_path.get(path)?;
        if let Some(host) = host.map(strip_port) {
            let by_host = entry.by_host.iter().find(|r| {
                r.host
                    .as_deref()
                    .is_some_and(|h| h.eq_ignore_ascii_case(host))
            });
            if by_host.is_some() {
                return by_host;
            }
        }
        entry.any_host.as_ref()
    }
}

/// "example.com:8443" → "example.com"; `"[::1]:80"` → `"[::1]"`.
fn strip_port(host: &str) -> &str {
    match host.rfind(':') {
        Some(i)
            if !host[i..].contains(']') && host[i + 1..].bytes().all(|b| b.is_ascii_digit()) =>
        {
            &host[..i]
        }
        _ => host,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strip_port_cases() {
        assert_eq!(strip_port("a.com:80"), "a.com");
        assert_eq!(strip_port("a.com"), "a.com");
        assert_eq!(strip_port("[::1]:80"), "[::1]");
        assert_eq!(strip_port("[::1]"), "[::1]");
    }
}
