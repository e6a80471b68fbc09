//! h1_floor: a MEASURING INSTRUMENT for the README's performance section
//! ("The floor of a purpose-built HTTP/1.1 path"), not a server to deploy.
//!
//! It answers one question: how little CPU can a tokio + httparse
//! verify-and-forward proxy spend per request? Per request it does the work
//! hookgate must do and nothing else: parse the head (httparse), route it
//! (hookgate's `RouteTable`), check Host and signature look-alikes, read a
//! Content-Length body, verify the signature with hookgate's own verifier
//! (`SignatureCheck::begin` / `update` / `finish`, as `proxy.rs` calls them),
//! forward head + body upstream in one vectored write over a keep-alive
//! connection, relay the response in one write, write one access line and
//! count the request.
//!
//! What it deliberately lacks: limits, timeouts, TLS, HTTP/2, chunked
//! bodies (answered 400 + close), `Expect: 100-continue`, trusted proxies,
//! shadow mode, replay, spool, reload, graceful shutdown, HTTP/1.0, every
//! framing rule of SPEC §1 beyond the minimum. Do not put it in front of
//! anything.
//!
//! `h1_floor run --config FILE`: FILE is a hookgate config whose first route
//! is served (loaded by hookgate's config loader, so keys and scheme are the
//! real ones). `/metrics` on `[admin] listen` answers one counter line so
//! `benches/load/profile.py` and `icount.py` can drive it like hookgate.
//! `HOOKGATE_LOG=warn` (or `error`, `off`) turns the access line off.

use std::io::Write;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::{Buf, BufMut, Bytes, BytesMut};
use hookgate::config::{Config, Route};
use hookgate::route::RouteTable;
use hookgate::scheme;
use hookgate::secret::ProcessEnv;
use http::{HeaderMap, HeaderValue, Method};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Requests answered by the upstream and relayed (the `/metrics` counter).
static FORWARDED: AtomicU64 = AtomicU64::new(0);
const MAX_HEADERS: usize = 100;
/// Free space guaranteed before each read (hyper's first read is 8 KiB and
/// grows; 32 KiB takes a whole 16 KiB request in one `recv`).
const READ_SPACE: usize = 32 * 1024;
/// Dropped on the way upstream (hop-by-hop, or set by the proxy itself).
/// The first seven are hop-by-hop (RFC 9110 §7.6.1), also dropped from
/// the response.
const DROPPED: [&str; 12] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "expect",
    "content-length",
    "x-forwarded-for",
    "x-forwarded-proto",
    "x-forwarded-host",
];
const HOP_BY_HOP: &[&str] = DROPPED.split_at(7).0;

struct Ctx {
    /// The one route served, in hookgate's own table (so a route with a
    /// `host` is matched as hookgate matches it).
    route: Arc<Route>,
    routes: RouteTable,
    route_name: String,
    access_log: bool,
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let path = match args.as_slice() {
        [run, flag, path] if run == "run" && flag == "--config" => path,
        _ => {
            eprintln!("usage: h1_floor run --config FILE");
            return ExitCode::FAILURE;
        }
    };
    let config = match Config::load(path.as_ref(), &ProcessEnv) {
        Ok(c) => c,
        Err(e) => {
            e.problems().iter().for_each(|p| eprintln!("{p}"));
            return ExitCode::FAILURE;
        }
    };
    let Some(route) = config.routes.first() else {
        eprintln!("{path}: h1_floor needs one [[route]]");
        return ExitCode::FAILURE;
    };
    let level = std::env::var("HOOKGATE_LOG").unwrap_or_default();
    let ctx: &'static Ctx = Box::leak(Box::new(Ctx {
        route: route.clone(),
        routes: RouteTable::new(&config.routes[..1]),
        route_name: route.name.clone(),
        access_log: !matches!(level.trim(), "warn" | "error" | "off"),
    }));
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("h1_floor: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(serve(ctx, config.server.listen, config.admin.listen)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("h1_floor: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Accepts until SIGTERM (a clean exit, so callgrind writes its counts).
async fn serve(ctx: &'static Ctx, listen: SocketAddr, admin: SocketAddr) -> std::io::Result<()> {
    let listener = TcpListener::bind(listen).await?;
    let admin = TcpListener::bind(admin).await?;
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    loop {
        tokio::select! {
            accepted = listener.accept() => if let Ok((stream, peer)) = accepted {
                let _ = stream.set_nodelay(true);
                tokio::spawn(connection(ctx, stream, peer));
            },
            accepted = admin.accept() => if let Ok((stream, _)) = accepted {
                tokio::spawn(metrics(ctx, stream));
            },
            _ = term.recv() => return Ok(()),
        }
    }
}

/// Any request on the admin listener gets the counter.
async fn metrics(ctx: &'static Ctx, mut stream: TcpStream) {
    let mut buf = [0u8; 1024];
    let _ = stream.read(&mut buf).await;
    let body = format!(
        "hookgate_requests_total{{route=\"{}\",outcome=\"forwarded\"}} {}\n",
        ctx.route_name,
        FORWARDED.load(Ordering::Relaxed)
    );
    let head = format!("HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: {}\r\nconnection: close\r\n\r\n", body.len());
    let _ = stream.write_all((head + &body).as_bytes()).await;
}

/// The upstream side of one client connection.
struct Upstream {
    stream: TcpStream,
    buf: BytesMut,
}

/// Buffers reused by every request of a connection.
struct Conn {
    peer_ip: String,
    peer: String,
    buf: BytesMut,
    up: Option<Upstream>,
    head: BytesMut,
    reply: BytesMut,
    line: Vec<u8>,
    signed: HeaderMap,
    target: String,
    host: String,
    upstream_us: Option<u128>,
    /// The access line's timestamp up to the second, and that second.
    second: (u64, String),
}

async fn connection(ctx: &'static Ctx, mut client: TcpStream, peer: SocketAddr) {
    let mut c = Conn {
        peer_ip: peer.ip().to_string(),
        peer: peer.to_string(),
        buf: BytesMut::with_capacity(2 * READ_SPACE),
        up: None,
        head: BytesMut::with_capacity(4096),
        reply: BytesMut::with_capacity(4096),
        line: Vec::with_capacity(256),
        signed: HeaderMap::new(),
        target: String::new(),
        host: String::new(),
        second: (u64::MAX, String::new()),
        upstream_us: None,
    };
    // Any error (peer gone, bad framing after the 400 was sent) ends the connection.
    while let Ok(true) = request(ctx, &mut c, &mut client).await {}
}

/// One request: `Ok(true)` to keep the connection.
async fn request(ctx: &'static Ctx, c: &mut Conn, client: &mut TcpStream) -> std::io::Result<bool> {
    // The head, parsed from the start on every read (as hyper does).
    let (head_len, body_len, route, keep) = loop {
        if !c.buf.is_empty() {
            match parse_head(ctx, c) {
                Ok(Some(parsed)) => break parsed,
                Ok(None) => {}
                Err(status) => {
                    client.write_all(status).await?;
                    return Ok(false);
                }
            }
        }
        c.buf.reserve(READ_SPACE);
        if client.read_buf(&mut c.buf).await? == 0 {
            return Ok(false);
        }
    };
    let started = Instant::now();
    c.upstream_us = None;
    while c.buf.len() < head_len + body_len {
        c.buf.reserve(READ_SPACE);
        if client.read_buf(&mut c.buf).await? == 0 {
            return Ok(false);
        }
    }
    c.buf.advance(head_len);
    let body: Bytes = c.buf.split_to(body_len).freeze();
    let Some(route) = route else {
        return answer(ctx, c, client, 404, body.len(), started, keep).await;
    };

    // The same calls as Proxy::handle_inner; a failure is a 401 either way.
    let query = c.target.split_once('?').map(|(_, q)| q);
    let verified = route
        .check
        .begin(&c.signed, query, scheme::timestamp::now())
        .and_then(|mut v| {
            v.update(&body);
            v.finish(std::slice::from_ref(&body))
        });
    if verified.is_err() {
        return answer(ctx, c, client, 401, body.len(), started, keep).await;
    }

    c.head.put_slice(b"Content-Length: ");
    c.head
        .put_slice(itoa::Buffer::new().format(body.len()).as_bytes());
    c.head.put_slice(b"\r\n\r\n");
    match forward(route, c, &body).await {
        Ok(status) => {
            FORWARDED.fetch_add(1, Ordering::Relaxed);
            client.write_all(&c.reply).await?;
            access(ctx, c, status, body.len(), started);
            Ok(keep)
        }
        Err(_) => {
            c.up = None;
            answer(ctx, c, client, 502, body.len(), started, keep).await
        }
    }
}

/// Parses the head in `c.buf`; when complete, fills `c.head` (the upstream
/// request head without its Content-Length line), `c.signed` (the fields
/// the scheme reads) and `c.target`. `Ok(None)`: incomplete. `Err`: the
/// answer to send before closing.
#[allow(clippy::type_complexity)]
fn parse_head(
    ctx: &'static Ctx,
    c: &mut Conn,
) -> Result<Option<(usize, usize, Option<&'static Route>, bool)>, &'static [u8]> {
    const BAD: &[u8] =
        b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\nconnection: close\r\n\r\n";
    let mut fields = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut fields);
    let head_len = match req.parse(&c.buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(_) => return Err(BAD),
    };
    let (Some(method), Some(path), Some(1)) = (req.method, req.path, req.version) else {
        return Err(BAD);
    };
    let mut body_len = None;
    let mut hosts = 0;
    let mut keep = true;
    c.signed.clear();
    c.host.clear();
    c.head.clear();
    c.target.clear();
    c.target.push_str(path);
    // The one route's fields and target; whether it matches (path and
    // Host) is known once the Host field has been read.
    let names = ctx.route.check.header_names();
    c.head.put_slice(method.as_bytes());
    c.head.put_u8(b' ');
    match ctx.route.upstream.fixed_path.as_ref() {
        Some(fixed) => {
            c.head.put_slice(fixed.path().as_bytes());
            if let Some((_, q)) = path.split_once('?') {
                c.head.put_u8(b'?');
                c.head.put_slice(q.as_bytes());
            }
        }
        None => c.head.put_slice(path.as_bytes()),
    }
    c.head.put_slice(b" HTTP/1.1\r\n");
    for f in req.headers.iter() {
        let name = f.name;
        if name.eq_ignore_ascii_case("content-length") {
            let n = std::str::from_utf8(f.value)
                .ok()
                .and_then(|v| v.parse::<usize>().ok());
            if body_len.is_some() || n.is_none() {
                return Err(BAD);
            }
            body_len = n;
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            return Err(BAD);
        } else if name.eq_ignore_ascii_case("host") {
            hosts += 1;
            c.host
                .push_str(std::str::from_utf8(f.value).map_err(|_| BAD)?);
        } else if name.eq_ignore_ascii_case("connection") {
            keep &= !f.value.eq_ignore_ascii_case(b"close");
        }
        // A look-alike (`_` for `-`) of a field the scheme reads.
        if name.contains('_') && names.iter().any(|n| same_but_underscore(n.as_str(), name)) {
            return Err(BAD);
        }
        if let Some(n) = names.iter().find(|n| n.as_str().eq_ignore_ascii_case(name)) {
            c.signed.append(
                n.clone(),
                HeaderValue::from_bytes(f.value).map_err(|_| BAD)?,
            );
        }
        if !DROPPED.iter().any(|d| d.eq_ignore_ascii_case(name)) {
            c.head.put_slice(name.as_bytes());
            c.head.put_slice(b": ");
            c.head.put_slice(f.value);
            c.head.put_slice(b"\r\n");
        }
    }
    if hosts != 1 || !hookgate::proxy::valid_host(&c.host) {
        return Err(BAD);
    }
    // Routes match the raw path without the query (as RouteTable::find is fed).
    let route_path = path.split_once('?').map_or(path, |(p, _)| p);
    let route = ctx.routes.find(Some(&c.host), route_path).map(|r| &**r);
    let method_ok = Method::from_bytes(method.as_bytes())
        .is_ok_and(|m| route.is_none_or(|r| r.methods.contains(&m)));
    if !method_ok {
        return Err(
            b"HTTP/1.1 405 Method Not Allowed\r\ncontent-length: 0\r\nconnection: close\r\n\r\n",
        );
    }
    if route.is_some_and(|r| r.forwarded_headers) {
        c.head.put_slice(b"X-Forwarded-For: ");
        c.head.put_slice(c.peer_ip.as_bytes());
        c.head
            .put_slice(b"\r\nX-Forwarded-Proto: http\r\nX-Forwarded-Host: ");
        c.head.put_slice(c.host.as_bytes());
        c.head.put_slice(b"\r\n");
    }
    Ok(Some((head_len, body_len.unwrap_or(0), route, keep)))
}

/// Sends head + body upstream (one vectored write) and reads the response
/// into `c.reply`, ready to relay; returns its status. Errors drop the
/// upstream connection (502).
async fn forward(route: &Route, c: &mut Conn, body: &Bytes) -> std::io::Result<u16> {
    let mut up = match c.up.take() {
        Some(up) => up,
        None => {
            let a = &route.upstream.authority;
            let stream = TcpStream::connect((a.host(), a.port_u16().unwrap_or(80))).await?;
            stream.set_nodelay(true)?;
            Upstream {
                stream,
                buf: BytesMut::with_capacity(READ_SPACE),
            }
        }
    };
    let mut out = Buf::chain(&c.head[..], &body[..]);
    let sent = Instant::now();
    up.stream.write_all_buf(&mut out).await?;
    let bad = || std::io::Error::other("upstream response out of the instrument's scope");
    c.reply.clear();
    let (head_len, body_len, status, keep) = loop {
        if !up.buf.is_empty() {
            let mut fields = [httparse::EMPTY_HEADER; MAX_HEADERS];
            let mut res = httparse::Response::new(&mut fields);
            if let httparse::Status::Complete(n) = res.parse(&up.buf).map_err(|_| bad())? {
                let status = res.code.filter(|s| *s >= 200).ok_or_else(bad)?;
                let mut len = matches!(status, 204 | 304).then_some(0);
                let mut keep = true;
                c.reply.put_slice(b"HTTP/1.1 ");
                c.reply
                    .put_slice(itoa::Buffer::new().format(status).as_bytes());
                c.reply.put_u8(b' ');
                c.reply.put_slice(res.reason.unwrap_or("").as_bytes());
                c.reply.put_slice(b"\r\n");
                for f in res.headers.iter() {
                    if f.name.eq_ignore_ascii_case("content-length") {
                        len = std::str::from_utf8(f.value)
                            .ok()
                            .and_then(|v| v.parse().ok());
                    } else if f.name.eq_ignore_ascii_case("connection") {
                        keep &= !f.value.eq_ignore_ascii_case(b"close");
                    }
                    if !HOP_BY_HOP.iter().any(|d| d.eq_ignore_ascii_case(f.name)) {
                        c.reply.put_slice(f.name.as_bytes());
                        c.reply.put_slice(b": ");
                        c.reply.put_slice(f.value);
                        c.reply.put_slice(b"\r\n");
                    }
                }
                c.reply.put_slice(b"\r\n");
                // Time to the response head, as hookgate's upstream_us.
                c.upstream_us = Some(sent.elapsed().as_micros());
                break (n, len.ok_or_else(bad)?, status, keep);
            }
        }
        up.buf.reserve(READ_SPACE);
        if up.stream.read_buf(&mut up.buf).await? == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
    };
    while up.buf.len() < head_len + body_len {
        up.buf.reserve(READ_SPACE);
        if up.stream.read_buf(&mut up.buf).await? == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
    }
    c.reply.put_slice(&up.buf[head_len..head_len + body_len]);
    up.buf.advance(head_len + body_len);
    if keep {
        c.up = Some(up);
    }
    Ok(status)
}

/// The proxy's own answer (no body), then the access line.
async fn answer(
    ctx: &Ctx,
    c: &mut Conn,
    client: &mut TcpStream,
    status: u16,
    body_bytes: usize,
    started: Instant,
    keep: bool,
) -> std::io::Result<bool> {
    let head: &[u8] = match status {
        401 => b"HTTP/1.1 401 Unauthorized\r\ncontent-length: 0\r\n\r\n",
        404 => b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\n\r\n",
        _ => b"HTTP/1.1 502 Bad Gateway\r\ncontent-length: 0\r\n\r\n",
    };
    client.write_all(head).await?;
    access(ctx, c, status, body_bytes, started);
    Ok(keep)
}

/// One access line, as hookgate's text format writes it, built in a reused
/// buffer and written to stderr with one `write`.
fn access(ctx: &Ctx, c: &mut Conn, status: u16, body_bytes: usize, started: Instant) {
    if !ctx.access_log {
        return;
    }
    let since = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    if c.second.0 != since.as_secs() {
        // "2026-11-27T21:00:09" once per second, as src/logging.rs does.
        let whole = UNIX_EPOCH + Duration::from_secs(since.as_secs());
        c.second = (
            since.as_secs(),
            humantime::format_rfc3339_seconds(whole).to_string(),
        );
        c.second.1.pop();
    }
    let method = c.head[..].split(|b| *b == b' ').next().unwrap_or_default();
    let outcome = match status {
        200..=299 => "forwarded",
        401 => "signature_invalid",
        404 => "unmatched",
        _ => "upstream_error",
    };
    let mut n = itoa::Buffer::new();
    let l = &mut c.line;
    l.clear();
    l.extend_from_slice(c.second.1.as_bytes());
    let micros = since.subsec_micros();
    let route = if status == 404 { "-" } else { &ctx.route_name };
    let _ = write!(
        l,
        ".{micros:06}Z  INFO hookgate::access: route=\"{route}\" method="
    );
    l.extend_from_slice(method);
    l.extend_from_slice(b" status=");
    l.extend_from_slice(n.format(status).as_bytes());
    l.extend_from_slice(b" outcome=");
    l.extend_from_slice(outcome.as_bytes());
    l.extend_from_slice(b" body_bytes=");
    l.extend_from_slice(n.format(body_bytes).as_bytes());
    l.extend_from_slice(b" duration_us=");
    l.extend_from_slice(n.format(started.elapsed().as_micros()).as_bytes());
    if let Some(us) = c.upstream_us {
        l.extend_from_slice(b" upstream_us=");
        l.extend_from_slice(n.format(us).as_bytes());
    }
    l.extend_from_slice(b" peer=");
    l.extend_from_slice(c.peer.as_bytes());
    l.extend_from_slice(b" protocol=HTTP/1.1\n");
    // A lost log line is the lesser harm (as in hookgate).
    let _ = std::io::stderr().write_all(l);
}

/// `x_adsumo_signature` against `x-adsumo-signature`: equal once `_` is `-`.
fn same_but_underscore(scheme_name: &str, name: &str) -> bool {
    scheme_name.len() == name.len()
        && scheme_name
            .bytes()
            .zip(name.bytes())
            .all(|(a, b)| a == b.to_ascii_lowercase() || (a == b'-' && b == b'_'))
}
