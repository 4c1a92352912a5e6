//! One abusive client never slows the others: every attack at once (9,000 idle
//! connections, 300 slowloris clients, 20 clients pipelining GETs of a 100 KB value and
//! never reading, a subscriber that never reads under a publisher's flood), a probe in a
//! process of its own, and the proxy's memory read from `/proc`. The probe's numbers
//! against a redis-server's in the same run are `benches/abuse.rs`'s; here the bound is
//! generous, for a loaded machine.

mod common;

use std::time::Duration;

use common::abuse::{self, metric, Shape};
use common::ProxyProcess as Proxy;
use slotguard::localcluster::{LocalCluster, Options};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const MB: u64 = 1024 * 1024;

/// This process's `ulimit -n`.
fn rlimit_nofile() -> u64 {
    let limits = std::fs::read_to_string("/proc/self/limits").unwrap_or_default();
    limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .and_then(|l| l.split_whitespace().nth(3)?.parse().ok())
        .unwrap_or(0)
}

/// A client that pipelines `n` GETs of the big value and reads every reply: heavy, but
/// well behaved. Returns the bytes it read.
async fn polite_reader(port: u16, n: usize) -> usize {
    let mut s = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    s.write_all(&b"*2\r\n$3\r\nGET\r\n$3\r\nbig\r\n".repeat(n))
        .await
        .unwrap();
    let whole = n * (abuse::BIG + format!("${}\r\n\r\n", abuse::BIG).len());
    let mut buf = vec![0u8; 1 << 20];
    let mut got = 0;
    while got < whole {
        let read = s.read(&mut buf).await.unwrap();
        assert!(
            read > 0,
            "the polite reader was disconnected after {got} bytes"
        );
        got += read;
    }
    got - whole
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_attack_at_once_leaves_others_served() {
    let limit = rlimit_nofile();
    assert!(
        limit >= 10_000,
        "the attack holds 9,400 connections: `ulimit -n` must be 10,000 or more (it is {limit}); .ci/run raises it"
    );
    let cluster = LocalCluster::start(Options::default())
        .await
        .expect("the cluster starts");
    let proxy = Proxy::start(&cluster, "").await;
    let m = abuse::measure(proxy.port, proxy.child.id(), Shape::FULL, 300, Some(&proxy)).await;
    eprintln!(
        "REPORT | every attack at once | probe p99 {:.2} ms before, {:.2} ms during; peak RSS {} MB",
        m.before_ms,
        m.during_ms,
        m.peak_rss / MB
    );
    assert!(
        m.peak_rss < 256 * MB,
        "the proxy's RSS reached {} MB",
        m.peak_rss / MB
    );
    assert!(
        m.during_ms <= m.before_ms * 100.0 + 100.0,
        "the probe's p99 went from {:.2} ms to {:.2} ms",
        m.before_ms,
        m.during_ms
    );
    let metrics = m.metrics.unwrap();
    let held = metric(&metrics, "slotguard_clients_held");
    let cut = metric(&metrics, "slotguard_clients_over_output_limit_total");
    assert!(
        held + cut >= 20.0,
        "each of the 20 readers that never read is held ({held}) or disconnected ({cut})"
    );
    // The subscriber that never reads is disconnected past the pub/sub limit (32 MB of
    // 10 KB messages; on a loaded machine the flood may take a while).
    let mut subscribers_cut = 0.0;
    for _ in 0..600 {
        subscribers_cut = metric(
            &proxy.metrics().await,
            "slotguard_subscribers_over_output_limit_total",
        );
        if subscribers_cut >= 1.0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        subscribers_cut >= 1.0,
        "the subscriber that never reads is disconnected"
    );
    assert!(
        proxy
            .log_text()
            .contains("client disconnected: it leaves its replies unread past"),
        "and logged"
    );
}

/// Under the same attack, a client that pipelines 200 GETs of 100 KB and reads them all
/// gets every byte; the clients held to their share are not disconnected for it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_heavy_client_that_reads_is_served_whole_beside_the_abusers() {
    let cluster = common::three_masters().await;
    let proxy = Proxy::start(&cluster, "").await;
    let shape = Shape {
        idle: 100,
        slowloris: 10,
        ..Shape::FULL
    };
    let attack = abuse::start(proxy.port, shape).await;
    assert_eq!(
        polite_reader(proxy.port, 200).await,
        0,
        "nothing after the replies"
    );
    let metrics = proxy.metrics().await;
    drop(attack);
    assert_eq!(
        metric(&metrics, "slotguard_clients_over_output_limit_total"),
        0.0,
        "the readers that never read are held, not disconnected"
    );
    assert!(
        metric(&metrics, "slotguard_clients_held") >= 20.0,
        "{metrics}"
    );
}
