//! Memory stays bounded whatever a client sends: measured on the proxy as its own process.

use std::io::Write;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use slotguard::localcluster::{free_port, wait_for, LocalCluster, Options};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

struct Proxy {
    child: Child,
    port: u16,
}

impl Proxy {
    async fn start(cluster: &LocalCluster, extra: &str) -> Proxy {
        let port = free_port().unwrap();
        let path = cluster.dir.join("memory.toml");
        let text = format!(
            "listen = \"127.0.0.1:{port}\"\nseeds = [\"{}\"]\n{extra}",
            cluster.nodes[0].addr()
        );
        std::fs::File::create(&path)
            .unwrap()
            .write_all(text.as_bytes())
            .unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_slotguard"))
            .args(["--config", path.to_str().unwrap()])
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        wait_for(Duration::from_secs(10), || async move {
            let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)).await else {
                return false;
            };
            let _ = s.write_all(b"GET probe\r\n").await;
            let mut buf = [0u8; 16];
            matches!(s.read(&mut buf).await, Ok(n) if n > 0 && buf[0] == b'$')
        })
        .await
        .expect("the proxy serves");
        Proxy { child, port }
    }

    fn rss(&self) -> u64 {
        let statm = std::fs::read_to_string(format!("/proc/{}/statm", self.child.id())).unwrap();
        statm
            .split_whitespace()
            .nth(1)
            .unwrap()
            .parse::<u64>()
            .unwrap()
            * 4096
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_huge_announced_bulk_costs_only_what_arrives() {
    let cluster = LocalCluster::start(Options {
        masters: 3,
        replicas_per_master: 0,
        ..Options::default()
    })
    .await
    .unwrap();
    let proxy = Proxy::start(&cluster, "").await;
    let before = proxy.rss();
    // Announce 500 MB (under the 512 MB limit) four times, send 3 bytes each, and wait.
    let mut idle = Vec::new();
    for _ in 0..4 {
        let mut s = TcpStream::connect(("127.0.0.1", proxy.port)).await.unwrap();
        s.write_all(b"*2\r\n$3\r\nGET\r\n$524288000\r\nabc")
            .await
            .unwrap();
        idle.push(s);
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let grown = proxy.rss().saturating_sub(before);
    assert!(
        grown < 32 * 1024 * 1024,
        "memory grew by {grown} bytes for 4 announced 500 MB bulks"
    );
    let mut s = TcpStream::connect(("127.0.0.1", proxy.port)).await.unwrap();
    s.write_all(b"PING\r\n").await.unwrap();
    let mut buf = [0u8; 7];
    s.read_exact(&mut buf).await.unwrap();
    assert_eq!(&buf, b"+PONG\r\n");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_never_reads_is_not_buffered_without_bound() {
    let cluster = LocalCluster::start(Options {
        masters: 3,
        replicas_per_master: 0,
        ..Options::default()
    })
    .await
    .unwrap();
    let proxy = Proxy::start(&cluster, "[client]\nmax_pending = 100\n").await;
    let mut setup = TcpStream::connect(("127.0.0.1", proxy.port)).await.unwrap();
    let big = "x".repeat(64 * 1024);
    setup
        .write_all(
            format!(
                "*3\r\n$3\r\nSET\r\n$3\r\nbig\r\n${}\r\n{big}\r\n",
                big.len()
            )
            .as_bytes(),
        )
        .await
        .unwrap();
    let mut ok = [0u8; 5];
    setup.read_exact(&mut ok).await.unwrap();
    assert_eq!(&ok, b"+OK\r\n");
    let before = proxy.rss();
    // 20,000 pipelined GETs of a 64 KiB value (1.3 GB of replies), never read.
    let mut s = TcpStream::connect(("127.0.0.1", proxy.port)).await.unwrap();
    let get = b"*2\r\n$3\r\nGET\r\n$3\r\nbig\r\n".repeat(20_000);
    let _ = tokio::time::timeout(Duration::from_secs(3), s.write_all(&get)).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let grown = proxy.rss().saturating_sub(before);
    // 100 replies of 64 KiB outstanding, plus buffers: far below the 1.3 GB asked for.
    assert!(grown < 64 * 1024 * 1024, "memory grew by {grown} bytes");
    setup.write_all(b"PING\r\n").await.unwrap();
    let mut buf = [0u8; 7];
    setup.read_exact(&mut buf).await.unwrap();
    assert_eq!(&buf, b"+PONG\r\n", "other clients are still served");
}

/// A subscriber that never reads while 640 MB of messages are published to it: the proxy
/// stops reading its node connection (bounded queues), the node's own output-buffer limit
/// for pub/sub clients cuts that connection, and the proxy's memory stays put.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscriber_that_never_reads_is_not_buffered_without_bound() {
    let cluster = LocalCluster::start(Options {
        masters: 3,
        replicas_per_master: 0,
        ..Options::default()
    })
    .await
    .unwrap();
    let proxy = Proxy::start(&cluster, "").await;
    let mut sub = TcpStream::connect(("127.0.0.1", proxy.port)).await.unwrap();
    sub.write_all(b"SUBSCRIBE flood\r\n").await.unwrap();
    let mut confirm = [0u8; 32];
    let n = sub.read(&mut confirm).await.unwrap();
    assert!(confirm[..n].starts_with(b"*3\r\n$9\r\nsubscribe"));
    let before = proxy.rss();
    // Published straight to a node: 10,000 messages of 64 KiB, none read.
    let node = cluster.nodes[1].addr();
    let payload = "y".repeat(64 * 1024);
    let mut publisher = slotguard::client::Conn::connect(&node, Duration::from_secs(5))
        .await
        .unwrap();
    for _ in 0..10_000 {
        publisher
            .call(&["PUBLISH", "flood", &payload])
            .await
            .unwrap();
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let grown = proxy.rss().saturating_sub(before);
    assert!(grown < 64 * 1024 * 1024, "memory grew by {grown} bytes");
    let mut other = TcpStream::connect(("127.0.0.1", proxy.port)).await.unwrap();
    other.write_all(b"PING\r\n").await.unwrap();
    let mut buf = [0u8; 7];
    other.read_exact(&mut buf).await.unwrap();
    assert_eq!(&buf, b"+PONG\r\n", "other clients are still served");
    drop(sub);
}
