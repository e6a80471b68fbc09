//! The access-log line: one per request, so its cost is paid at every
//! request rate.
//!
//! Through `tracing::info!` the line cost ~3.5k instructions per request
//! (callgrind, 1 KiB requests): the event is dispatched through the
//! subscriber's layers and formatted into the fmt layer's buffer by
//! visiting its nine fields as `dyn Value`. In the text format this module
//! writes the same bytes from plain data instead (~1.3k): the timestamp and
//! the values through the functions [`TextLine`](super::TextLine) uses,
//! into a reused buffer, then to stderr with one `write_all`, so a line
//! never interleaves with another. Whether the line is wanted is still
//! tracing's decision (`HOOKGATE_LOG`), asked through its cached callsite
//! check (~130 instructions). The JSON format, and a process that never
//! called [`init`](super::init) (the in-process tests, an embedder with its
//! own subscriber), keep the tracing event.
//!
//! While the server runs, the lines of one scheduler pass share one write
//! ([`coalesce`]): a request appends its line to a buffer, and a task that
//! yields once before writing flushes it after the other ready tasks have
//! run, so with many connections busy one `write` carries the lines of
//! all the requests that ended in that pass, where each line was a system
//! call of its own (about 1 µs of kernel time per request on the
//! benchmark's VM). Nothing waits on a timer: an idle server writes a
//! line as soon as its scheduler has nothing else to run. Every other log
//! line flushes the buffer before it is written, so the order on stderr is
//! the order the lines were made in, and the server flushes it before it
//! exits.

use std::cell::RefCell;
use std::fmt;
use std::io::Write;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::Mutex;
use std::time::SystemTime;

use tokio::sync::Notify;

use tracing::Level;

use super::{write_str_value, write_timestamp, write_u64_value};

/// The target operators filter on (`HOOKGATE_LOG=hookgate::access=off`).
const TARGET: &str = "hookgate::access";

/// How lines are written: through tracing, or straight to stderr as text
/// (with or without colour). Set once by [`init`](super::init).
static DIRECT: AtomicU8 = AtomicU8::new(THROUGH_TRACING);
const THROUGH_TRACING: u8 = 0;
const TEXT_PLAIN: u8 = 1;
const TEXT_ANSI: u8 = 2;

/// Called by [`init`](super::init) once the global text subscriber is
/// installed: from now on access lines are written here, coloured like
/// [`TextLine`](super::TextLine) when `ansi`.
pub(super) fn write_text_directly(ansi: bool) {
    DIRECT.store(if ansi { TEXT_ANSI } else { TEXT_PLAIN }, Ordering::Relaxed);
}

/// Lines waiting for the flushing task ([`coalesce`]).
static PENDING: Mutex<Vec<u8>> = Mutex::new(Vec::new());
/// The flushing task is running: lines go to [`PENDING`].
static COALESCING: AtomicBool = AtomicBool::new(false);
/// A flush has been asked for and not yet begun.
static SCHEDULED: AtomicBool = AtomicBool::new(false);
static FLUSH: Notify = Notify::const_new();
/// Past this many bytes the request that adds a line writes the buffer
/// itself: the buffer stays small whatever the flushing task's delay.
const PENDING_MAX: usize = 64 * 1024;

/// A lost line beats a panic or a stalled request (the subscriber runs
/// with `log_internal_errors(false)` for the same reason): a closed stderr
/// must not stop serving.
fn to_stderr(bytes: &[u8]) {
    if !bytes.is_empty() {
        let _ = std::io::stderr().write_all(bytes);
    }
}

/// The pending lines, locked (a panic elsewhere while it was held leaves
/// bytes that are still lines).
fn pending() -> std::sync::MutexGuard<'static, Vec<u8>> {
    PENDING.lock().unwrap_or_else(|e| e.into_inner())
}

/// One access line (newline included): into the pending buffer while
/// [`coalesce`] runs, else straight to stderr.
fn write_line(line: &[u8]) {
    let mut buf = pending();
    if !COALESCING.load(Ordering::Acquire) || buf.len() + line.len() > PENDING_MAX {
        to_stderr(&buf);
        buf.clear();
        to_stderr(line);
        return;
    }
    buf.extend_from_slice(line);
    drop(buf);
    if !SCHEDULED.swap(true, Ordering::AcqRel) {
        FLUSH.notify_one();
    }
}

/// Writes the pending access lines now: before any other log line (so
/// stderr keeps the order lines were made in) and at exit.
pub fn flush() {
    let mut buf = pending();
    to_stderr(&buf);
    buf.clear();
}

/// The flushing task, for the server's runtime: from its start, access
/// lines are buffered, and each time one is added it yields once (the
/// other ready tasks run and add theirs: tokio runs a yielded task again
/// after the tasks that were ready, and after polling for I/O) and writes
/// them all. It runs until the server stops it with [`stop_coalescing`].
pub async fn coalesce() {
    COALESCING.store(true, Ordering::Release);
    loop {
        FLUSH.notified().await;
        tokio::task::yield_now().await;
        SCHEDULED.store(false, Ordering::Release);
        flush();
    }
}

/// Lines go straight to stderr again, after the pending ones: called when
/// the server has stopped, before the flushing task is dropped.
pub fn stop_coalescing() {
    COALESCING.store(false, Ordering::Release);
    flush();
}

/// One finished request, as the access line shows it (fields in this order).
#[derive(Debug, Clone, Copy)]
pub struct AccessLine<'a> {
    /// The route's name, `-` when none matched.
    pub route: &'a str,
    pub method: &'a str,
    pub status: u16,
    pub outcome: &'a str,
    pub body_bytes: u64,
    pub duration_us: u64,
    /// Left out of the line when the upstream was never asked.
    pub upstream_us: Option<u64>,
    pub peer: &'a str,
    pub protocol: &'a str,
}

impl AccessLine<'_> {
    /// Logs the line at info level on target `hookgate::access`.
    pub fn emit(&self) {
        let ansi = match DIRECT.load(Ordering::Relaxed) {
            TEXT_PLAIN => false,
            TEXT_ANSI => true,
            _ => return self.event(),
        };
        // The same fields as the event's callsite, so a filter that names
        // fields decides alike.
        if !tracing::enabled!(
            kind: tracing::metadata::Kind::EVENT,
            target: TARGET,
            Level::INFO,
            route,
            method,
            status,
            outcome,
            body_bytes,
            duration_us,
            upstream_us,
            peer,
            protocol
        ) {
            return;
        }
        thread_local! {
            static LINE: RefCell<String> = const { RefCell::new(String::new()) };
        }
        let write = |line: &mut String| {
            line.clear();
            if self.write_text(line, SystemTime::now(), ansi).is_ok() {
                write_line(line.as_bytes());
            }
        };
        // `try_`: while the thread is being torn down (a response dropped
        // with its runtime), or if ever reentered, a fresh buffer will do.
        let written = LINE.try_with(|line| match line.try_borrow_mut() {
            Ok(mut line) => write(&mut line),
            Err(_) => write(&mut String::new()),
        });
        if written.is_err() {
            write(&mut String::new());
        }
    }

    /// The line as a tracing event: for the JSON format, and for whatever
    /// subscriber a process without [`init`](super::init) has.
    fn event(&self) {
        tracing::info!(
            target: TARGET,
            route = self.route,
            method = self.method,
            status = self.status,
            outcome = self.outcome,
            body_bytes = self.body_bytes,
            duration_us = self.duration_us,
            upstream_us = self.upstream_us,
            peer = self.peer,
            protocol = self.protocol,
        );
    }

    /// The bytes [`TextLine`](super::TextLine) writes for [`Self::event`]
    /// at time `now`, newline included. Level, target and field names are
    /// constants here (one copy each instead of the several small writes
    /// `TextLine` makes); the values go through `TextLine`'s own functions.
    fn write_text(&self, out: &mut impl fmt::Write, now: SystemTime, ansi: bool) -> fmt::Result {
        write_timestamp(out, now)?;
        out.write_str(if ansi {
            "\x1b[32m INFO\x1b[0m hookgate::access: route="
        } else {
            " INFO hookgate::access: route="
        })?;
        write_str_value(out, self.route)?;
        out.write_str(" method=")?;
        write_str_value(out, self.method)?;
        out.write_str(" status=")?;
        write_u64_value(out, u64::from(self.status))?;
        out.write_str(" outcome=")?;
        write_str_value(out, self.outcome)?;
        out.write_str(" body_bytes=")?;
        write_u64_value(out, self.body_bytes)?;
        out.write_str(" duration_us=")?;
        write_u64_value(out, self.duration_us)?;
        if let Some(us) = self.upstream_us {
            out.write_str(" upstream_us=")?;
            write_u64_value(out, us)?;
        }
        out.write_str(" peer=")?;
        write_str_value(out, self.peer)?;
        out.write_str(" protocol=")?;
        write_str_value(out, self.protocol)?;
        out.write_str("\n")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::logging::tests::Buf;
    use crate::logging::TextLine;
    use crate::outcome::Outcome;

    /// The line as `tracing::info!` and [`TextLine`] write it (the path the
    /// text format took before, and the JSON format still takes).
    fn through_tracing(line: &AccessLine<'_>, ansi: bool) -> String {
        let buf = Buf::default();
        let out = buf.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(move || buf.clone())
            .event_format(TextLine { ansi })
            .finish();
        tracing::subscriber::with_default(subscriber, || line.event());
        let bytes = out.0.lock().unwrap().clone();
        String::from_utf8(bytes).unwrap()
    }

    const FORWARDED: AccessLine<'static> = AccessLine {
        route: "adsumo-prod",
        method: "POST",
        status: 201,
        outcome: "forwarded",
        body_bytes: 1024,
        duration_us: 512,
        upstream_us: Some(301),
        peer: "127.0.0.1:50412",
        protocol: "HTTP/1.1",
    };

    /// A 404: no route, the body not read, the upstream not asked.
    const UNMATCHED: AccessLine<'static> = AccessLine {
        route: "-",
        status: 404,
        outcome: "unmatched",
        body_bytes: 0,
        upstream_us: None,
        ..FORWARDED
    };

    /// For every outcome, with and without the upstream's time, coloured or
    /// not, and for route names, methods and peers that need quoting or
    /// escaping: the direct writer's bytes are the tracing path's, with
    /// the timestamp taken from the tracing line.
    #[test]
    fn text_line_is_byte_identical_to_the_tracing_event() {
        let mut lines = vec![
            // 401: the upstream never asked.
            AccessLine {
                status: 401,
                outcome: "signature_invalid",
                upstream_us: None,
                ..FORWARDED
            },
            UNMATCHED,
            // An upstream that failed after 5 s.
            AccessLine {
                status: 504,
                outcome: "upstream_timeout",
                upstream_us: Some(5_000_000),
                ..FORWARDED
            },
            AccessLine {
                route: "a b",
                method: "M\"=\\",
                status: 0,
                body_bytes: u64::MAX,
                duration_us: 0,
                upstream_us: Some(u64::MAX),
                peer: "[::1]:8443",
                protocol: "HTTP/2",
                ..FORWARDED
            },
            AccessLine {
                route: "",
                method: "é\u{1b}[31m\t\n",
                peer: "x=y",
                protocol: "HTTP/?",
                ..FORWARDED
            },
        ];
        for outcome in Outcome::ROUTED {
            lines.push(AccessLine {
                outcome: outcome.as_str(),
                ..FORWARDED
            });
        }
        for line in &lines {
            for ansi in [false, true] {
                let old = through_tracing(line, ansi);
                let (stamp, _) = old.split_once(' ').unwrap();
                let now = humantime::parse_rfc3339(stamp).unwrap();
                let mut new = String::new();
                line.write_text(&mut new, now, ansi).unwrap();
                assert_eq!(new, old, "{line:?}");
            }
        }
    }

    /// Pins the bytes themselves, so that a change to the shared functions
    /// shows up here and not only as two paths changing together.
    #[test]
    fn text_line_bytes() {
        let now = humantime::parse_rfc3339("2026-11-27T21:00:09.432836Z").unwrap();
        let mut out = String::new();
        UNMATCHED.write_text(&mut out, now, false).unwrap();
        assert_eq!(
            out,
            "2026-11-27T21:00:09.432836Z  INFO hookgate::access: route=- method=POST status=404 \
             outcome=unmatched body_bytes=0 duration_us=512 peer=127.0.0.1:50412 protocol=HTTP/1.1\n"
        );
        out.clear();
        AccessLine {
            route: "a b",
            ..FORWARDED
        }
        .write_text(&mut out, now, true)
        .unwrap();
        assert_eq!(
            out,
            "2026-11-27T21:00:09.432836Z \x1b[32m INFO\x1b[0m hookgate::access: route=\"a b\" \
             method=POST status=201 outcome=forwarded body_bytes=1024 duration_us=512 \
             upstream_us=301 peer=127.0.0.1:50412 protocol=HTTP/1.1\n"
        );
    }
}
