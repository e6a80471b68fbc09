//! Log output on stderr through `tracing`: `HOOKGATE_LOG` (EnvFilter syntax)
//! chooses what is logged, `--log-format` how.
//!
//! The text format is a small hand-tuned [`FormatEvent`]: the access log
//! writes a line for every request, and the stock formatter's colour
//! handling and float/Debug formatting cost more CPU than the rest of the
//! request path's bookkeeping. JSON uses tracing-subscriber's own encoder.
//! The access line skips tracing's event path in the text format
//! ([`access`]), written with the same functions as [`TextLine`].

pub mod access;

use std::cell::RefCell;
use std::fmt;
use std::io::IsTerminal;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tracing::field::{Field, Visit};
use tracing::{Event, Level, Subscriber};
use tracing_log::NormalizeEvent;
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::EnvFilter;

use crate::cli::LogFormat;

/// rustls warns once per connection about things a peer controls (e.g. an
/// IP address sent as SNI, which wrk and many clients do): kept at error
/// level unless `HOOKGATE_LOG` names rustls itself, so peers cannot flood
/// the log.
const RUSTLS_QUIET: &str = "rustls=error";

/// Installs the global subscriber.
pub fn init(format: LogFormat) {
    let directives = match std::env::var("HOOKGATE_LOG") {
        Ok(d) if !d.trim().is_empty() && d.contains("rustls") => d,
        Ok(d) if !d.trim().is_empty() => format!("{d},{RUSTLS_QUIET}"),
        _ => format!("info,{RUSTLS_QUIET}"),
    };
    let filter = EnvFilter::builder()
        .with_default_directive(Level::INFO.into())
        .parse_lossy(directives);
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        // Buffered access lines first: stderr keeps the order lines were
        // made in (`access::coalesce`).
        .with_writer(|| {
            access::flush();
            std::io::stderr()
        })
        // On a failed write tracing-subscriber reports with `eprintln!`,
        // which panics when stderr itself is the closed pipe: a log reader
        // that went away would kill every connection in the middle of its
        // response. A lost log line is the lesser harm.
        .log_internal_errors(false);
    match format {
        LogFormat::Text => {
            let ansi = std::io::stderr().is_terminal();
            builder.event_format(TextLine { ansi }).init();
            access::write_text_directly(ansi);
        }
        LogFormat::Json => builder.json().flatten_event(true).init(),
    }
}

/// `2026-11-27T21:00:09.432836Z  INFO hookgate::access: route="a" status=201 …`
pub struct TextLine {
    /// Colour the level when writing to a terminal.
    pub ansi: bool,
}

impl<S, N> FormatEvent<S, N> for TextLine
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        _ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        // Records bridged from the `log` crate (rustls) carry their real
        // target and level in normalized metadata.
        let normalized = event.normalized_metadata();
        let meta = normalized.as_ref().unwrap_or_else(|| event.metadata());
        write_prefix(
            &mut writer,
            SystemTime::now(),
            *meta.level(),
            self.ansi,
            meta.target(),
        )?;
        let mut fields = Fields {
            writer: &mut writer,
            result: Ok(()),
        };
        event.record(&mut fields);
        fields.result?;
        writer.write_char('\n')
    }
}

/// `2026-11-27T21:00:09.432836Z  INFO hookgate::access:`, the level
/// coloured when `ansi`.
fn write_prefix(
    writer: &mut impl fmt::Write,
    now: SystemTime,
    level: Level,
    ansi: bool,
    target: &str,
) -> fmt::Result {
    write_timestamp(writer, now)?;
    let level = match level {
        Level::ERROR => ("ERROR", "\x1b[31m"),
        Level::WARN => (" WARN", "\x1b[33m"),
        Level::INFO => (" INFO", "\x1b[32m"),
        Level::DEBUG => ("DEBUG", "\x1b[34m"),
        Level::TRACE => ("TRACE", "\x1b[35m"),
    };
    if ansi {
        writer.write_str(level.1)?;
        writer.write_str(level.0)?;
        writer.write_str("\x1b[0m ")?;
    } else {
        writer.write_str(level.0)?;
        writer.write_char(' ')?;
    }
    writer.write_str(target)?;
    writer.write_char(':')
}

/// ` name=`: how every field but the message starts.
fn write_name(writer: &mut impl fmt::Write, name: &str) -> fmt::Result {
    writer.write_char(' ')?;
    writer.write_str(name)?;
    writer.write_char('=')
}

/// A string value bare when it is one non-empty token that cannot be
/// mistaken for another field (no space, quote, backslash or `=`);
/// otherwise quoted and escaped as Rust's `Debug` does.
fn write_str_value(writer: &mut impl fmt::Write, value: &str) -> fmt::Result {
    let plain = !value.is_empty() && value.bytes().all(|b| PLAIN[usize::from(b)]);
    if plain {
        writer.write_str(value)
    } else {
        write!(writer, "{value:?}")
    }
}

/// The bytes a bare value may hold: ASCII graphic, but not `"`, `\` or
/// `=`. A table because every string field of every access line is
/// checked byte by byte.
const PLAIN: [bool; 256] = {
    let mut table = [false; 256];
    let mut b = 0;
    while b < 256 {
        let byte = b as u8;
        table[b] = byte.is_ascii_graphic() && byte != b'"' && byte != b'\\' && byte != b'=';
        b += 1;
    }
    table
};

fn write_u64_value(writer: &mut impl fmt::Write, value: u64) -> fmt::Result {
    writer.write_str(itoa::Buffer::new().format(value))
}

/// `2026-11-27T21:00:09.432836Z `: RFC 3339 in UTC with microseconds.
/// The date and time of day are formatted once per second per thread
/// (humantime's formatter does the calendar arithmetic on every call);
/// only the microseconds are written per line.
fn write_timestamp(writer: &mut impl fmt::Write, now: SystemTime) -> fmt::Result {
    thread_local! {
        static SECOND: RefCell<(u64, String)> = const { RefCell::new((u64::MAX, String::new())) };
    }
    let since_epoch = now.duration_since(UNIX_EPOCH).unwrap_or_default();
    let (secs, micros) = (since_epoch.as_secs(), since_epoch.subsec_micros());
    // Without the cache (a thread being torn down) the line is still
    // written, not a panic.
    let cached = SECOND.try_with(|second| {
        let mut second = second.try_borrow_mut().ok()?;
        let (cached, prefix) = &mut *second;
        if *cached != secs {
            *prefix = date_and_time(secs);
            *cached = secs;
        }
        Some(writer.write_str(prefix))
    });
    match cached {
        Ok(Some(written)) => written?,
        _ => writer.write_str(&date_and_time(secs))?,
    }
    // One more digit than the six, dropped again: the leading zeros.
    let mut digits = itoa::Buffer::new();
    let digits = digits.format(1_000_000 + micros);
    writer.write_str(digits.get(1..).unwrap_or(digits))?;
    writer.write_str("Z ")
}

/// `2026-11-27T21:00:09.`: the part of a timestamp that changes once a
/// second.
fn date_and_time(secs: u64) -> String {
    let whole = UNIX_EPOCH + Duration::from_secs(secs);
    let mut text = humantime::format_rfc3339_seconds(whole).to_string();
    // "…:09Z" → "…:09."
    text.pop();
    text.push('.');
    text
}

/// Writes ` name=value` for each field; the message bare.
struct Fields<'a, 'w> {
    writer: &'a mut Writer<'w>,
    result: fmt::Result,
}

impl Fields<'_, '_> {
    /// After an error, and for the `log.*` fields of bridged `log` records
    /// (already shown as target and level).
    fn skip(&self, field: &Field) -> bool {
        self.result.is_err() || field.name().starts_with("log.")
    }

    fn name(&mut self, field: &Field) -> fmt::Result {
        if field.name() == "message" {
            self.writer.write_char(' ')
        } else {
            write_name(self.writer, field.name())
        }
    }
}

impl Visit for Fields<'_, '_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        if self.skip(field) {
            return;
        }
        self.result = self.name(field).and_then(|()| {
            if field.name() == "message" {
                self.writer.write_str(value)
            } else {
                write_str_value(self.writer, value)
            }
        });
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        if self.skip(field) {
            return;
        }
        self.result = self
            .name(field)
            .and_then(|()| write_u64_value(self.writer, value));
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        if self.skip(field) {
            return;
        }
        self.result = self
            .name(field)
            .and_then(|()| self.writer.write_str(itoa::Buffer::new().format(value)));
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        if self.skip(field) {
            return;
        }
        self.result = self
            .name(field)
            .and_then(|()| self.writer.write_str(if value { "true" } else { "false" }));
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        if self.skip(field) {
            return;
        }
        self.result = self
            .name(field)
            .and_then(|()| write!(self.writer, "{value:?}"));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    #[derive(Clone, Default)]
    pub(super) struct Buf(pub(super) Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Buf {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    fn timestamp(t: SystemTime) -> String {
        let mut out = String::new();
        write_timestamp(&mut out, t).unwrap();
        out
    }

    /// The cached per-second prefix is the one humantime writes, in the
    /// same second, in the next one, and back again.
    #[test]
    fn timestamps_match_humantime() {
        let base = UNIX_EPOCH + Duration::from_secs(1_795_900_809);
        for t in [
            base + Duration::from_micros(432_836),
            base + Duration::from_micros(999_999),
            base + Duration::from_micros(1_000_000),
            base + Duration::from_micros(5),
            base + Duration::from_secs(86_400 * 40) + Duration::from_micros(70),
        ] {
            assert_eq!(
                timestamp(t),
                format!("{} ", humantime::format_rfc3339_micros(t))
            );
        }
    }

    #[test]
    fn text_line_shape() {
        let buf = Buf::default();
        let out = buf.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(move || buf.clone())
            .event_format(TextLine { ansi: false })
            .finish();
        tracing::subscriber::with_default(subscriber, || {
            tracing::info!(target: "hookgate::access", route = "adsumo-prod", status = 201u16, peer = %"127.0.0.1:5", odd = "a b", up = Option::<u64>::None, "done");
        });
        let text = String::from_utf8(out.0.lock().unwrap().clone()).unwrap();
        let line = text.trim_end();
        let (ts, rest) = line.split_once(' ').unwrap();
        assert!(ts.ends_with('Z') && ts.contains('T'), "{line}");
        assert_eq!(
            rest,
            " INFO hookgate::access: done route=adsumo-prod status=201 peer=127.0.0.1:5 odd=\"a b\""
        );
    }
}
