//! Bad input gets a clear error or a clean close, never a crash, a hang or unbounded
//! memory, and other clients keep being served.

mod common;

use std::time::Duration;

use common::Harness;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Sends `input`, then reads until the proxy closes the connection (or 5 s pass).
async fn exchange(addr: std::net::SocketAddr, input: &[u8], then_close: bool) -> (String, bool) {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(input).await.unwrap();
    if then_close {
        s.shutdown().await.unwrap();
    }
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    let closed = loop {
        match tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => break true,
            Ok(Ok(n)) => out.extend_from_slice(&buf[..n]),
            Err(_) => break false,
        }
    };
    (String::from_utf8_lossy(&out).into_owned(), closed)
}

fn rss_bytes() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: u64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|p| p.parse().ok())
        .unwrap_or(0);
    pages * 4096
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn protocol_violations_get_redis_errors_and_a_close() {
    let h = Harness::start(3, 0).await;
    let addr = h.proxy.addr;
    let cases: &[(&[u8], &str)] = &[
        (
            b"*1\r\n$-5\r\n",
            "-ERR Protocol error: invalid bulk length\r\n",
        ),
        (
            b"*99999999999\r\n",
            "-ERR Protocol error: invalid multibulk length\r\n",
        ),
        (
            b"*abc\r\n",
            "-ERR Protocol error: invalid multibulk length\r\n",
        ),
        (
            b"*2\r\n+GET\r\n",
            "-ERR Protocol error: expected '$', got '+'\r\n",
        ),
        (
            b"*1\r\n$1073741824\r\n",
            "-ERR Protocol error: invalid bulk length\r\n",
        ),
        (
            b"*1\r\n$4\r\nPINGxx",
            "-ERR Protocol error: bulk string not terminated by CRLF\r\n",
        ),
        (
            b"SET 'unbalanced\r\n",
            "-ERR Protocol error: unbalanced quotes in request\r\n",
        ),
        // Requests before the violation are still answered, in order.
        (
            b"PING\r\n*1\r\n$-5\r\n",
            "+PONG\r\n-ERR Protocol error: invalid bulk length\r\n",
        ),
    ];
    for (input, want) in cases {
        let (got, closed) = exchange(addr, input, false).await;
        assert_eq!(got, *want, "input {:?}", String::from_utf8_lossy(input));
        assert!(
            closed,
            "the proxy closes after {:?}",
            String::from_utf8_lossy(input)
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn endless_lines_and_junk_are_bounded() {
    let h = Harness::start(3, 0).await;
    let addr = h.proxy.addr;

    // An inline command that never ends.
    let (got, closed) = exchange(addr, &vec![b'a'; 100 * 1024], false).await;
    assert_eq!(got, "-ERR Protocol error: too big inline request\r\n");
    assert!(closed);

    // A header that never ends.
    let mut header = b"*1\r\n$".to_vec();
    header.extend(vec![b'9'; 100 * 1024]);
    let (got, closed) = exchange(addr, &header, false).await;
    assert_eq!(got, "-ERR Protocol error: too big bulk count string\r\n");
    assert!(closed);

    // Binary junk: an error or a close, never a hang.
    let junk: Vec<u8> = (0..20_000u32)
        .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
        .collect();
    let (got, closed) = exchange(addr, &junk, true).await;
    assert!(closed, "junk ends with a close");
    assert!(
        got.is_empty() || got.starts_with('-'),
        "junk gets errors only: {got:?}"
    );

    // Truncated frames followed by a hang-up.
    for cut in [
        b"*3\r\n$3\r\nSET\r\n$1".as_slice(),
        b"*2\r\n$3\r\nGET\r\n$100\r\nabc",
        b"*",
    ] {
        let (got, closed) = exchange(addr, cut, true).await;
        assert!(closed && got.is_empty(), "{cut:?}: {got:?}");
    }

    let mut c = h.client().await;
    let pong: String = redis::cmd("PING").query_async(&mut c).await.unwrap();
    assert_eq!(pong, "PONG", "the proxy still serves other clients");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_huge_announced_bulk_costs_only_what_arrives() {
    let h = Harness::start(3, 0).await;
    let before = rss_bytes();
    // Announce 500 MB (under the 512 MB limit), send 3 bytes, and keep the connection.
    let mut idle = Vec::new();
    for _ in 0..4 {
        let mut s = TcpStream::connect(h.proxy.addr).await.unwrap();
        s.write_all(b"*2\r\n$3\r\nGET\r\n$524288000\r\nabc")
            .await
            .unwrap();
        idle.push(s);
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let grown = rss_bytes().saturating_sub(before);
    assert!(
        grown < 64 * 1024 * 1024,
        "memory grew by {grown} bytes for 4 announced 500 MB bulks"
    );
    let mut c = h.client().await;
    let pong: String = redis::cmd("PING").query_async(&mut c).await.unwrap();
    assert_eq!(pong, "PONG");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_never_reads_is_not_buffered_without_bound() {
    let h = Harness::start_with(
        slotguard::localcluster::Options {
            masters: 3,
            replicas_per_master: 0,
            ..Default::default()
        },
        |c| c.max_pending = 100,
    )
    .await;
    let mut c = h.client().await;
    let big = "x".repeat(64 * 1024);
    let () = redis::cmd("SET")
        .arg("big")
        .arg(&big)
        .query_async(&mut c)
        .await
        .unwrap();
    let before = rss_bytes();
    // 20,000 pipelined GETs of a 64 KiB value (1.3 GB of replies), never read.
    let mut s = TcpStream::connect(h.proxy.addr).await.unwrap();
    let get = b"*2\r\n$3\r\nGET\r\n$3\r\nbig\r\n".repeat(20_000);
    let writer = tokio::spawn(async move {
        let _ = tokio::time::timeout(Duration::from_secs(3), s.write_all(&get)).await;
        s
    });
    tokio::time::sleep(Duration::from_secs(3)).await;
    let grown = rss_bytes().saturating_sub(before);
    assert!(grown < 256 * 1024 * 1024, "memory grew by {grown} bytes");
    drop(writer.await.unwrap());
    let pong: String = redis::cmd("PING").query_async(&mut c).await.unwrap();
    assert_eq!(pong, "PONG");
}
