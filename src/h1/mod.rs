//! The HTTP/1.1 fast path: a purpose-built server loop for the plain
//! webhook request (`POST`, origin-form target, one `Content-Length`, no
//! `Transfer-Encoding`, `Expect` or `Upgrade`), with hyper kept as the
//! fallback for everything else.
//!
//! hyper's server side (dispatcher, parse, encode, read and flush
//! machinery) was about a third of hookgate's instructions per request; a
//! tokio + httparse loop doing the same work measured close to nginx
//! (README "Performance"). This loop does only what that request needs:
//!
//! - [`head`]: parse with httparse (hyper's settings and limits) and decide
//!   eligibility; encode the response head as hyper does (`date`,
//!   `content-length` or chunked, `connection: close`);
//! - `body`: the request body, `Bytes` frames split off the read buffer;
//! - `conn`: the keep-alive loop (pipelining, `request_timeout` for each
//!   head, graceful drain) and the hand-over: the first request that is not
//!   eligible, and the rest of its connection, go to hyper with every byte
//!   read so far, so each edge case keeps hyper's answer.
//!
//! `HOOKGATE_TEST_H1=hyper` (test-only, read once when the server starts)
//! turns the fast path off, so tests can compare the two.

mod body;
mod conn;
pub mod head;

pub use body::{Reader, RequestBody};
pub use conn::{serve, Conn, Ended};

/// Whether the fast path serves HTTP/1 connections: unless the test-only
/// switch `HOOKGATE_TEST_H1=hyper` is set.
pub fn enabled() -> bool {
    std::env::var_os("HOOKGATE_TEST_H1").is_none_or(|v| v != "hyper")
}
