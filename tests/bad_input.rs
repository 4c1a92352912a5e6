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
