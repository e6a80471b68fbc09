//! Connection-level timeouts beyond the request: idle HTTP/2 connections
//! are closed with GOAWAY after `request_timeout` with no stream open, and a
//! client that stops reading its response is cut after `send_timeout`
//! without write progress, the upstream request cancelled with it. Each test
//! runs the `hookgate run` binary.

mod common;

use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::*;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpSocket, TcpStream};

const BODY: &[u8] = br#"{"event":"generation.completed","generation_id":"conn"}"#;

/// A TCP stream that keeps a copy of every byte the server sent, so the
/// test can look at the HTTP/2 frames themselves.
struct Tap {
    inner: TcpStream,
    seen: Arc<Mutex<Vec<u8>>>,
}

impl AsyncRead for Tap {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        let new = buf.filled()[before..].to_vec();
        self.seen.lock().unwrap().extend_from_slice(&new);
        polled
    }
}

impl AsyncWrite for Tap {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// (type, error code) of the GOAWAY frames among the server's HTTP/2 bytes.
fn goaway_codes(bytes: &[u8]) -> Vec<u32> {
    let mut out = Vec::new();
    let mut at = 0;
    while at + 9 <= bytes.len() {
        let len = u32::from_be_bytes([0, bytes[at], bytes[at + 1], bytes[at + 2]]) as usize;
        let kind = bytes[at + 3];
        let payload = &bytes[(at + 9).min(bytes.len())..(at + 9 + len).min(bytes.len())];
        if kind == 0x7 && payload.len() >= 8 {
            out.push(u32::from_be_bytes([
                payload[4], payload[5], payload[6], payload[7],
            ]));
        }
        at += 9 + len;
    }
    out
}

/// Returns once the upstream saw its answer cut short (the gateway closed
/// the connection mid-body); fails after 10 s.
async fn wait_until_cancelled(upstream: &Upstream) {
    let started = Instant::now();
    while upstream.aborted.load(Ordering::SeqCst) == 0 {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "upstream request still running after 10 s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn config(upstream: std::net::SocketAddr, limits: &str) -> String {
    two_routes(upstream, "").replace(
        "[limits]\nrequest_timeout = \"2s\"\nupstream_timeout = \"2s\"\n",
        &format!("[limits]\n{limits}\n"),
    )
}

/// An h2c connection that has served its request and sits idle is closed
/// with GOAWAY (NO_ERROR) about `request_timeout` (1 s) later, not before;
/// a stream that stays open longer than that (the upstream answers after
/// 1.5 s) is not cut.
#[tokio::test]
async fn idle_http2_connection_gets_goaway() {
    let upstream = Upstream::start(Behaviour::Delay(Duration::from_millis(1500))).await;
    let gw = BinaryGateway::start(&config(
        upstream.addr,
        "request_timeout = \"1s\"\nupstream_timeout = \"5s\"",
    ));
    let seen = Arc::new(Mutex::new(Vec::new()));
    let tap = Tap {
        inner: TcpStream::connect(gw.addr).await.unwrap(),
        seen: seen.clone(),
    };
    let (mut sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tap))
            .await
            .unwrap();
    let conn = tokio::spawn(conn);
    let req = http::Request::post("http://hooks.test/webhooks/a")
        .header("x-adsumo-signature", sign(SECRET_A, BODY))
        .body(Full::new(Bytes::from_static(BODY)))
        .unwrap();
    let resp = sender.send_request(req).await.unwrap();
    assert_eq!(
        resp.status(),
        201,
        "a stream open past request_timeout is kept"
    );
    resp.into_body().collect().await.unwrap();
    let idle_since = Instant::now();
    let ended = tokio::time::timeout(Duration::from_secs(5), conn).await;
    let idle = idle_since.elapsed();
    assert!(ended.is_ok(), "idle HTTP/2 connection still open after 5 s");
    assert!(
        idle >= Duration::from_millis(800),
        "closed too early: {idle:?}"
    );
    assert_eq!(
        goaway_codes(&seen.lock().unwrap()),
        vec![0],
        "one GOAWAY, NO_ERROR"
    );
    assert_eq!(upstream.count(), 1);
    gw.stop().await;
}

/// A client with a tiny TCP receive buffer that never reads its response
/// (an 8 MiB body from the upstream) has its connection closed once no write
/// made progress for `send_timeout` (1 s), and the upstream request is
/// cancelled: the upstream sees its connection closed mid-body.
#[tokio::test]
async fn client_that_never_reads_is_cut_after_send_timeout() {
    let upstream = Upstream::start(Behaviour::Large(64 * 1024 * 1024)).await;
    let gw = BinaryGateway::start(&config(
        upstream.addr,
        "request_timeout = \"2s\"\nupstream_timeout = \"2s\"\nsend_timeout = \"1s\"",
    ));
    let socket = TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let mut stream = socket.connect(gw.addr).await.unwrap();
    stream
        .write_all(&post("/webhooks/a", Some(&sign(SECRET_A, BODY)), BODY, ""))
        .await
        .unwrap();
    let started = Instant::now();
    wait_until_cancelled(&upstream).await;
    assert!(
        started.elapsed() >= Duration::from_millis(900),
        "cut before send_timeout"
    );
    assert_eq!(upstream.count(), 1);
    // The client's connection was closed too: draining what is buffered
    // ends in EOF or a reset.
    assert!(closed_by_server(&mut stream).await);
    gw.stop().await;
}

/// An HTTP/2 client with a tiny stream window (1 KiB) that never reads the
/// response body, so it never sends WINDOW_UPDATE, while its connection
/// stays alive and read: once the stream has waited `send_timeout` (1 s)
/// for window, the connection is closed and the upstream request cancelled.
#[tokio::test]
async fn http2_stream_with_closed_window_is_cut_after_send_timeout() {
    let upstream = Upstream::start(Behaviour::Large(64 * 1024 * 1024)).await;
    let gw = BinaryGateway::start(&config(
        upstream.addr,
        "request_timeout = \"2s\"\nupstream_timeout = \"2s\"\nsend_timeout = \"1s\"",
    ));
    let stream = TcpStream::connect(gw.addr).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
        .initial_stream_window_size(1024)
        .handshake(TokioIo::new(stream))
        .await
        .unwrap();
    let conn = tokio::spawn(conn);
    let req = http::Request::post("http://hooks.test/webhooks/a")
        .header("x-adsumo-signature", sign(SECRET_A, BODY))
        .body(Full::new(Bytes::from_static(BODY)))
        .unwrap();
    // The head arrives; the body is never read.
    let resp = sender.send_request(req).await.unwrap();
    assert_eq!(resp.status(), 200);
    let started = Instant::now();
    wait_until_cancelled(&upstream).await;
    assert!(started.elapsed() >= Duration::from_millis(900));
    let ended = tokio::time::timeout(Duration::from_secs(5), conn).await;
    assert!(ended.is_ok(), "client connection still open");
    drop(resp);
    gw.stop().await;
}
