//! The upstream client's HTTP/1.1 response framing (RFC 9112 §6.3) and
//! keep-alive rules, against an upstream answering with exact bytes: what
//! the client receives, and how many connections the upstream accepted.

mod common;

use std::sync::atomic::Ordering;
use std::time::Duration;

use common::*;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

const JSON: &[u8] = br#"{"event":"generation.completed"}"#;

fn webhook() -> Vec<u8> {
    post("/webhooks/a", Some(&sign(SECRET_A, JSON)), JSON, "")
}

/// Sends one signed webhook on a new client connection.
async fn deliver(gw: &Gateway) -> RawResponse {
    raw(gw.addr, &webhook()).await.0
}

/// Sends `n` webhooks through a gateway in front of an upstream answering
/// `answer` (connection kept open), returning the responses and how many
/// connections the upstream accepted.
async fn exchange(answer: &'static [u8], n: usize) -> (Vec<RawResponse>, usize) {
    let upstream = Upstream::start(Behaviour::ReplyKeep(answer)).await;
    let gw = Gateway::start(&two_routes(upstream.addr, "")).await;
    let mut out = Vec::new();
    for _ in 0..n {
        out.push(deliver(&gw).await);
    }
    assert_eq!(upstream.count(), n, "requests the upstream received");
    let accepted = upstream.connections.load(Ordering::SeqCst);
    gw.stop().await;
    (out, accepted)
}

/// A chunked response reaches the client with the same body bytes (hyper
/// re-frames it for the client), and the connection carries the next
/// request: one accept for two requests.
#[tokio::test]
async fn chunked_response_is_relayed_and_connection_reused() {
    let (got, accepted) = exchange(
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nX-App: 1\r\n\r\n5;ext=1\r\nhello\r\n6\r\n world\r\n0\r\n\r\n",
        2,
    )
    .await;
    for r in &got {
        assert_eq!(r.status, 200, "{}", r.head);
        assert_eq!(r.body, b"hello world");
        assert_eq!(r.header("x-app"), Some("1"));
    }
    assert_eq!(accepted, 1);
}

/// Trailers of a chunked response are read and dropped; the connection is
/// still reused.
#[tokio::test]
async fn chunked_response_with_trailers() {
    let (got, accepted) = exchange(
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTrailer: X-Sum\r\n\r\n3\r\nabc\r\n0\r\nX-Sum: 42\r\nX-More: y\r\n\r\n",
        2,
    )
    .await;
    for r in &got {
        assert_eq!(r.status, 200, "{}", r.head);
        assert_eq!(r.body, b"abc");
        assert_eq!(r.header("x-sum"), None);
    }
    assert_eq!(accepted, 1);
}

/// A response without Content-Length or Transfer-Encoding is read until
/// the upstream closes, relayed whole, and its connection is not reused.
#[tokio::test]
async fn close_delimited_response() {
    let upstream = Upstream::start(Behaviour::Reply(
        b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\nuntil the end",
    ))
    .await;
    let gw = Gateway::start(&two_routes(upstream.addr, "")).await;
    for _ in 0..2 {
        let r = deliver(&gw).await;
        assert_eq!(r.status, 200, "{}", r.head);
        assert_eq!(r.body, b"until the end");
    }
    assert_eq!(upstream.connections.load(Ordering::SeqCst), 2);
    gw.stop().await;
}

/// 204 and 304 have no body whatever their Content-Length says: nothing is
/// read as body, so the connection stays in step and is reused.
#[tokio::test]
async fn no_content_and_not_modified_have_no_body() {
    for answer in [
        &b"HTTP/1.1 204 No Content\r\nContent-Length: 5\r\n\r\n"[..],
        b"HTTP/1.1 304 Not Modified\r\nContent-Length: 5\r\nETag: \"x\"\r\n\r\n",
    ] {
        let (got, accepted) = exchange(answer, 2).await;
        for r in &got {
            assert!(r.status == 204 || r.status == 304, "{}", r.head);
            assert_eq!(r.body, b"");
        }
        assert_eq!(accepted, 1, "{}", String::from_utf8_lossy(answer));
    }
}

/// Two different Content-Length values: 502, and the bytes are not
/// relayed.
#[tokio::test]
async fn conflicting_content_lengths_are_502() {
    let upstream = Upstream::start(Behaviour::Reply(
        b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!",
    ))
    .await;
    let gw = Gateway::start(&two_routes(upstream.addr, "")).await;
    let r = deliver(&gw).await;
    assert_eq!(r.status, 502, "{}", r.head);
    assert!(!r.body.windows(5).any(|w| w == b"hello"));
    let metrics = gw.metrics().await;
    assert!(
        metrics.contains("hookgate_requests_total{route=\"a\",outcome=\"upstream_error\"} 1"),
        "{metrics}"
    );
    gw.stop().await;
}

/// A chunk size that overflows 64 bits comes after the head, which is
/// already on its way to the client: the client connection is cut, no
/// complete response arrives, and the upstream connection is dropped.
#[tokio::test]
async fn chunk_size_overflow_cuts_the_client_connection() {
    let upstream = Upstream::start(Behaviour::ReplyKeep(
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n1ffffffffffffffff\r\nxx\r\n0\r\n\r\n",
    ))
    .await;
    let gw = Gateway::start(&two_routes(upstream.addr, "")).await;
    let mut stream = TcpStream::connect(gw.addr).await.unwrap();
    stream.write_all(&webhook()).await.unwrap();
    let got = try_read_response(&mut stream, Duration::from_secs(5)).await;
    assert!(got.is_err(), "a complete response arrived: {got:?}");
    assert!(got.unwrap_err().contains("closed"));
    upstream.wait_closed(1).await;
    gw.stop().await;
}

/// Interim 100 and 103 answers before the final one are skipped; the
/// connection is reused afterwards.
#[tokio::test]
async fn interim_responses_are_skipped() {
    let (got, accepted) = exchange(
        b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </a.css>; rel=preload\r\n\r\nHTTP/1.1 201 Created\r\nContent-Length: 2\r\n\r\nok",
        2,
    )
    .await;
    for r in &got {
        assert_eq!(r.status, 201, "{}", r.head);
        assert_eq!(r.body, b"ok");
        assert_eq!(r.header("link"), None);
    }
    assert_eq!(accepted, 1);
}

/// `Connection: close` in the response: the next request goes on a new
/// connection, even though the upstream left this one open.
#[tokio::test]
async fn connection_close_is_not_reused() {
    let (got, accepted) = exchange(
        b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\nok",
        2,
    )
    .await;
    assert!(got.iter().all(|r| r.status == 200 && r.body == b"ok"));
    assert_eq!(accepted, 2);
}

/// A keep-alive response (HTTP/1.1 default, and HTTP/1.0 with
/// `Connection: keep-alive`): two requests, one accept. HTTP/1.0 without
/// it: two accepts.
#[tokio::test]
async fn keep_alive_connection_is_reused() {
    let (got, accepted) = exchange(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok", 2).await;
    assert!(got.iter().all(|r| r.status == 200 && r.body == b"ok"));
    assert_eq!(accepted, 1);
    let (_, accepted) = exchange(
        b"HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 2\r\n\r\nok",
        2,
    )
    .await;
    assert_eq!(accepted, 1);
    let (got, accepted) = exchange(b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nok", 2).await;
    assert!(got.iter().all(|r| r.status == 200 && r.body == b"ok"));
    assert_eq!(accepted, 2);
}

/// The upstream closes its keep-alive connection after the first answer:
/// the second request does not fail on it but goes on a new connection.
#[tokio::test]
async fn idle_connection_closed_by_upstream_is_not_used() {
    let upstream = Upstream::start(Behaviour::RespondThenClose).await;
    let gw = Gateway::start(&two_routes(upstream.addr, "")).await;
    assert_eq!(deliver(&gw).await.status, 201);
    upstream.wait_closed(1).await;
    let r = deliver(&gw).await;
    assert_eq!(r.status, 201, "{}", r.head);
    assert_eq!(r.body, UPSTREAM_BODY);
    assert_eq!(upstream.count(), 2);
    assert_eq!(upstream.connections.load(Ordering::SeqCst), 2);
    gw.stop().await;
}

/// Bytes beyond the Content-Length: the client gets exactly the declared
/// body, and the connection is not used again (the next request gets its
/// own answer, on a new connection).
#[tokio::test]
async fn extra_bytes_after_the_body_retire_the_connection() {
    let (got, accepted) = exchange(
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nokHTTP/1.1 500 Smuggled\r\nContent-Length: 0\r\n\r\n",
        2,
    )
    .await;
    for r in &got {
        assert_eq!(r.status, 200, "{}", r.head);
        assert_eq!(r.body, b"ok");
    }
    assert_eq!(accepted, 2);
}

/// Malformed heads and framings are 502 (`upstream_error`): a bad status
/// line, more than 100 header fields, Transfer-Encoding in HTTP/1.0, a
/// close before the head completes, a Content-Length that is no number.
#[tokio::test]
async fn malformed_responses_are_502() {
    let many: &'static [u8] = Box::leak(
        format!(
            "HTTP/1.1 200 OK\r\n{}Content-Length: 0\r\n\r\n",
            "X-F: 1\r\n".repeat(100)
        )
        .into_bytes()
        .into_boxed_slice(),
    );
    for answer in [
        &b"HTTP/1.1 2000 OK\r\nContent-Length: 0\r\n\r\n"[..],
        many,
        b"HTTP/1.0 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Le",
        b"HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\n",
    ] {
        let upstream = Upstream::start(Behaviour::Reply(answer)).await;
        let gw = Gateway::start(&two_routes(upstream.addr, "")).await;
        let r = deliver(&gw).await;
        assert_eq!(r.status, 502, "{}", String::from_utf8_lossy(answer));
        gw.stop().await;
    }
    // 99 fields plus Content-Length (100) is accepted.
    let hundred: &'static [u8] = Box::leak(
        format!(
            "HTTP/1.1 200 OK\r\n{}Content-Length: 0\r\n\r\n",
            "X-F: 1\r\n".repeat(99)
        )
        .into_bytes()
        .into_boxed_slice(),
    );
    let upstream = Upstream::start(Behaviour::Reply(hundred)).await;
    let gw = Gateway::start(&two_routes(upstream.addr, "")).await;
    // (More fields than the raw client parses: read the head as bytes.)
    let mut stream = TcpStream::connect(gw.addr).await.unwrap();
    stream.write_all(&webhook()).await.unwrap();
    let mut head = Vec::new();
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        let mut chunk = [0u8; 4096];
        let n = tokio::io::AsyncReadExt::read(&mut stream, &mut chunk)
            .await
            .unwrap();
        assert!(n > 0, "closed: {}", String::from_utf8_lossy(&head));
        head.extend_from_slice(&chunk[..n]);
    }
    assert!(head.starts_with(b"HTTP/1.1 200 "));
    assert_eq!(head.windows(5).filter(|w| w == b"x-f: ").count(), 99);
    gw.stop().await;
}

/// An upstream that answers a body larger than the socket buffers before
/// reading it (its own 413) and then reads nothing: the gateway stops
/// writing, relays the 413, and does not reuse that connection. (Writing
/// the whole request first would wait until `upstream_timeout`: 504.)
#[tokio::test]
async fn early_answer_to_a_large_body_is_relayed() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (held_tx, mut held_rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok((mut sock, _)) = listener.accept().await {
            let mut head = Vec::new();
            let mut byte = [0u8; 1];
            while !head.ends_with(b"\r\n\r\n") {
                if tokio::io::AsyncReadExt::read(&mut sock, &mut byte)
                    .await
                    .unwrap_or(0)
                    == 0
                {
                    break;
                }
                head.push(byte[0]);
            }
            let _ = sock
                .write_all(b"HTTP/1.1 413 Payload Too Large\r\ncontent-length: 4\r\n\r\nbig!")
                .await;
            // Held open, never read again, until the test ends.
            let _ = held_tx.send(sock);
        }
    });
    let config = format!(
        r#"
[server]
listen = "127.0.0.1:0"

[limits]
request_timeout = "60s"
upstream_timeout = "30s"
max_body_bytes = 33554432

[[route]]
name = "a"
path = "/webhooks/a"
upstream = "http://{addr}"
secret = {{ env = "SECRET_A" }}
"#
    );
    let gw = Gateway::start(&config).await;
    // 24 MiB: more than loopback's send and receive buffers together.
    let body = vec![b'x'; 24 * 1024 * 1024];
    let request = post("/webhooks/a", Some(&sign(SECRET_A, &body)), &body, "");
    let (response, _) = raw(gw.addr, &request).await;
    assert_eq!(response.status, 413, "{}", response.head);
    assert_eq!(response.body, b"big!");
    assert!(held_rx.recv().await.is_some());
    gw.stop().await;
}
