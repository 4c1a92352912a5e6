//! Memory stays bounded whatever a client sends: measured on the proxy as its own process.

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::ProxyProcess as Proxy;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A well-behaved client's latency: the 99th percentile of `n` GETs, one at a time.
async fn probe(port: u16, n: usize) -> Duration {
    let mut s = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    let mut took = Vec::with_capacity(n);
    let mut buf = [0u8; 64];
    // The first few open the proxy's connections to the node: not counted.
    for i in 0..n + 20 {
        let at = std::time::Instant::now();
        s.write_all(b"GET probe\r\n").await.unwrap();
        let got = s.read(&mut buf).await.unwrap();
        assert!(got > 0 && buf[0] == b'$', "the probe is answered");
        if i >= 20 {
            took.push(at.elapsed());
        }
    }
    took.sort();
    took[(n * 99 / 100).min(n - 1)]
}

/// Tests that time the probe run one at a time: two clusters and two proxies under
/// attack on a two-core machine would measure the machine, not the proxy.
static TIMED: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// The probe's p99 under attack against its p99 before, in the same run: other clients
/// are served about as before (a generous bound: the other test binaries still run
/// beside this one; the attacks measured in the issue took a 0.5 ms p99 to 713 ms).
fn served_as_before(before: Duration, under: Duration, what: &str) {
    eprintln!("REPORT | {what} | probe p99 {before:?} before, {under:?} under attack");
    assert!(
        under <= before * 100 + Duration::from_millis(100),
        "{what}: the probe's p99 went from {before:?} to {under:?}"
    );
}

const MB: u64 = 1024 * 1024;

/// The proxy's memory grew by `grown` bytes under `what`: reported, and under
/// `bound_mb` MB.
fn memory_within(grown: u64, bound_mb: u64, what: &str) {
    eprintln!(
        "REPORT | {what} | RSS grew {} MB (bound {bound_mb} MB)",
        grown / MB
    );
    assert!(
        grown < bound_mb * MB,
        "{what}: memory grew by {} MB",
        grown / MB
    );
}

/// 10,000 idle client connections.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_idle_clients_cost_little() {
    let _alone = TIMED.lock().await;
    let limit = std::process::Command::new("sh")
        .args(["-c", "ulimit -n"])
        .output()
        .map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .trim()
                .parse::<u64>()
                .unwrap_or(0)
        })
        .unwrap_or(0);
    assert!(
        limit >= 10_200,
        "10,000 connections need `ulimit -n` of 10,200 or more (it is {limit}); .ci/run raises it"
    );
    let cluster = common::three_masters().await;
    let proxy = Proxy::start(&cluster, "[client]\nmax_clients = 10100\n").await;
    let before = probe(proxy.port, 300).await;
    let rss = proxy.rss();
    let mut idle = Vec::new();
    for _ in 0..10_000 {
        idle.push(TcpStream::connect(("127.0.0.1", proxy.port)).await.unwrap());
    }
    // Each is accepted and served (a PING on the last one is answered).
    let last = idle.last_mut().unwrap();
    last.write_all(b"PING\r\n").await.unwrap();
    let mut pong = [0u8; 7];
    last.read_exact(&mut pong).await.unwrap();
    assert_eq!(&pong, b"+PONG\r\n");
    let grown = proxy.rss().saturating_sub(rss);
    memory_within(grown, 64, "10,000 idle clients");
    let under = probe(proxy.port, 300).await;
    served_as_before(before, under, "10,000 idle clients");
}

/// 500 slowloris clients: each announces a 100 MB bulk and sends one byte a second.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slowloris_clients_cost_what_they_sent() {
    let _alone = TIMED.lock().await;
    let cluster = common::three_masters().await;
    let proxy = Proxy::start(&cluster, "").await;
    let before = probe(proxy.port, 300).await;
    let rss = proxy.rss();
    let mut slow = Vec::new();
    for _ in 0..500 {
        let mut s = TcpStream::connect(("127.0.0.1", proxy.port)).await.unwrap();
        s.write_all(b"*3\r\n$3\r\nSET\r\n$4\r\nslow\r\n$104857600\r\n")
            .await
            .unwrap();
        slow.push(s);
    }
    let mut worst = Duration::ZERO;
    for _ in 0..3 {
        for s in &mut slow {
            s.write_all(b"x").await.unwrap();
        }
        worst = worst.max(probe(proxy.port, 100).await);
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    let grown = proxy.rss().saturating_sub(rss);
    memory_within(grown, 32, "500 slowloris clients");
    served_as_before(before, worst, "500 slowloris clients");
}

/// Sets `big` to a 100 KB value through the proxy.
async fn set_big(port: u16) {
    set_value(port, 100 * 1024).await;
}

/// Sets the key `big` to `size` bytes. A test that counts on replies waiting in the proxy
/// past what the sockets hold uses values of megabytes: the first 32 GETs a client
/// pipelines must outweigh the kernel's buffers on loopback (several MB), or they fit
/// there and little is left waiting.
async fn set_value(port: u16, size: usize) {
    let mut setup = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    let big = "x".repeat(size);
    let set = format!(
        "*3\r\n$3\r\nSET\r\n$3\r\nbig\r\n${}\r\n{big}\r\n",
        big.len()
    );
    setup.write_all(set.as_bytes()).await.unwrap();
    let mut ok = [0u8; 5];
    setup.read_exact(&mut ok).await.unwrap();
    assert_eq!(&ok, b"+OK\r\n");
}

/// A client that pipelines `count` GETs of `big` and never reads; returns its socket
/// once the requests are written or 20 s have passed.
fn hog(port: u16, count: usize) -> tokio::task::JoinHandle<TcpStream> {
    tokio::spawn(async move {
        let mut s = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
        let get = b"*2\r\n$3\r\nGET\r\n$3\r\nbig\r\n".repeat(count);
        let _ = tokio::time::timeout(Duration::from_secs(20), s.write_all(&get)).await;
        s
    })
}

/// 20 clients pipeline GETs of a 100 KB value and never read (40 GB of replies asked
/// for): the proxy stops reading a client while its replies do not go out, and holds at
/// most `client.max_output_bytes` of replies for it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_that_never_read_hold_bounded_memory() {
    let _alone = TIMED.lock().await;
    let cluster = common::three_masters().await;
    let proxy = Proxy::start(&cluster, "").await;
    set_big(proxy.port).await;
    let before = probe(proxy.port, 300).await;
    let rss = proxy.rss();
    let hogs: Vec<_> = (0..20).map(|_| hog(proxy.port, 20_000)).collect();
    let under = probe(proxy.port, 300).await;
    let mut peak = 0;
    for _ in 0..30 {
        peak = peak.max(proxy.rss().saturating_sub(rss));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    memory_within(peak, 256, "20 clients that never read");
    served_as_before(before, under, "20 clients that never read");
    for hog in hogs {
        hog.abort();
    }
}

/// Reads what the socket still holds until the proxy's end is closed: the bytes read, or
/// `None` if it stays open 20 s.
async fn read_until_closed(s: &mut TcpStream) -> Option<usize> {
    let mut sink = vec![0u8; 1 << 20];
    let mut read = 0;
    tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            match s.read(&mut sink).await {
                Ok(0) | Err(_) => return read,
                Ok(n) => read += n,
            }
        }
    })
    .await
    .ok()
}

/// A disconnection is counted (`metric` is a line of `/metrics`) and logged (`logged` is in
/// the proxy's log).
async fn counted_and_logged(proxy: &Proxy, metric: &str, logged: &str) {
    let metrics = proxy.metrics().await;
    assert!(metrics.contains(metric), "{metric} in {metrics}");
    assert!(proxy.log_text().contains(logged), "{logged:?} in the log");
}

/// A client whose unread replies pass `client.output_buffer_limit.normal`'s hard limit is
/// disconnected, as Redis disconnects a client over its output buffer limit; others are
/// served on. (Its share of the node connections, `client.max_inflight_bytes`, is set
/// above the limit: at the default 1 MB a client that never reads is held to less.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_past_the_output_limit_is_disconnected() {
    let cluster = common::three_masters().await;
    let limits = "[client]\nmax_inflight_bytes = 16777216\n\
                  [client.output_buffer_limit]\nnormal = \"1mb 0 0\"\n";
    let proxy = Proxy::start(&cluster, limits).await;
    set_big(proxy.port).await;
    let mut s = hog(proxy.port, 2_000).await.unwrap();
    // Its connection was closed: reading what the socket still holds comes to an end.
    let read = read_until_closed(&mut s)
        .await
        .expect("the client was disconnected");
    assert!(
        read < 2_000 * 100 * 1024,
        "it did not get every reply: {read} bytes"
    );
    let metrics = proxy.metrics().await;
    assert!(
        metrics.contains("slotguard_clients_over_output_limit_total 1"),
        "counted in the metrics"
    );
    probe(proxy.port, 10).await;
}

/// Past the soft limit for its seconds, a client that leaves its replies unread is
/// disconnected too, though no further reply comes to push it over the hard one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_past_the_soft_output_limit_for_its_seconds_is_disconnected() {
    let cluster = common::three_masters().await;
    let limits = "[client]\nmax_inflight_bytes = 16777216\n\
                  [client.output_buffer_limit]\nnormal = \"0 256kb 1\"\n";
    let proxy = Proxy::start(&cluster, limits).await;
    set_value(proxy.port, 2 << 20).await;
    // 1,000 GETs at once (2 GB, far more than the sockets hold), then nothing: the
    // replies wait over the soft limit, and once the last is in none comes to add to them.
    let mut s = hog(proxy.port, 1_000).await.unwrap();
    // Not read until the proxy says it cut the client off: reading would take the
    // replies under the limit.
    wait_for_metric(&proxy, "slotguard_clients_over_output_limit_total 1").await;
    read_until_closed(&mut s)
        .await
        .expect("the client was disconnected");
    counted_and_logged(
        &proxy,
        "slotguard_clients_over_output_limit_total 1",
        "(soft limit;",
    )
    .await;
}

/// A SIGHUP that lowers the output limit is in force on a client already connected and
/// held: with none at first, a client that never reads is held; once the limit is 1 MB,
/// it is disconnected, though no new reply comes to it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_lowers_the_output_limit_of_clients_already_connected() {
    let cluster = common::three_masters().await;
    let unlimited = "[client]\nmax_inflight_bytes = 16777216\n\
                     [client.output_buffer_limit]\nnormal = \"0 0 0\"\n";
    let proxy = Proxy::start(&cluster, unlimited).await;
    set_value(proxy.port, 2 << 20).await;
    let mut s = hog(proxy.port, 1_000).await.unwrap();
    let held = "slotguard_clients_held 1";
    wait_for_metric(&proxy, held).await;
    proxy
        .reload(&unlimited.replace("\"0 0 0\"", "\"1mb 0 0\""))
        .await;
    wait_for_metric(&proxy, "slotguard_clients_over_output_limit_total 1").await;
    read_until_closed(&mut s)
        .await
        .expect("the client was disconnected");
}

/// Waits up to 60 s for `line` in the proxy's `/metrics`.
async fn wait_for_metric(proxy: &Proxy, line: &str) {
    for _ in 0..600 {
        if proxy.metrics().await.contains(line) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("{line} in {}", proxy.metrics().await);
}

/// A subscriber that leaves more messages unread than `client.output_buffer_limit.pubsub`
/// is disconnected, logged and counted; one that reads gets every message.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscriber_past_the_pubsub_output_limit_is_disconnected() {
    let cluster = common::three_masters().await;
    let limits = "[client.output_buffer_limit]\npubsub = \"1mb 0 0\"\n";
    let proxy = Proxy::start(&cluster, limits).await;
    let subscribe = |port| async move {
        let mut s = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
        s.write_all(b"SUBSCRIBE flood\r\n").await.unwrap();
        let mut confirm = [0u8; 34]; // `*3 subscribe flood :1`
        s.read_exact(&mut confirm).await.unwrap();
        assert!(confirm.starts_with(b"*3\r\n$9\r\nsubscribe"));
        s
    };
    let mut deaf = subscribe(proxy.port).await;
    let mut reader = subscribe(proxy.port).await;
    let payload = "y".repeat(10 * 1024);
    let message = format!(
        "*3\r\n$7\r\nmessage\r\n$5\r\nflood\r\n${}\r\n{payload}\r\n",
        payload.len()
    );
    let count = 3_000; // 30 MB: more than the sockets hold
    let reading = tokio::spawn(async move {
        let mut got = vec![0u8; count * message.len()];
        reader.read_exact(&mut got).await.unwrap();
        got.chunks(message.len()).all(|m| m == message.as_bytes())
    });
    let node = cluster.nodes[1].addr();
    let mut publisher = slotguard::client::Conn::connect(&node, Duration::from_secs(5))
        .await
        .unwrap();
    for _ in 0..count {
        publisher
            .call(&["PUBLISH", "flood", &payload])
            .await
            .unwrap();
    }
    assert!(
        reading.await.unwrap(),
        "the subscriber that reads got every message"
    );
    read_until_closed(&mut deaf)
        .await
        .expect("the subscriber that never read was disconnected");
    counted_and_logged(
        &proxy,
        "slotguard_subscribers_over_output_limit_total 1",
        "client.output_buffer_limit.pubsub",
    )
    .await;
}

/// Samples the proxy's RSS growth over `rss` every 50 ms until `done`; the peak.
fn sample_peak(proxy: &Proxy, done: Arc<AtomicBool>) -> tokio::task::JoinHandle<u64> {
    let pid = proxy.child.id();
    let rss = proxy.rss();
    tokio::spawn(async move {
        let mut peak = 0;
        while !done.load(Ordering::Relaxed) {
            peak = peak.max(common::rss_of(pid).saturating_sub(rss));
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        peak
    })
}

/// A client sends a 500 MB value in 1 MB pieces (under Redis's 512 MB
/// `proto-max-bulk-len`): it is stored, and read back. The proxy holds one copy of it
/// while it passes, and half of one more while its buffer grows (which the allocator may
/// keep a little longer); once passed, none. Its key is on another master than the
/// probe's: the probe measures the proxy, not a node busy with 500 MB.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_500_mb_value_passes_through_both_ways() {
    let _alone = TIMED.lock().await;
    let cluster = common::three_masters().await;
    let proxy = Proxy::start(&cluster, "").await;
    let before = probe(proxy.port, 300).await;
    let rss = proxy.rss();
    let done = Arc::new(AtomicBool::new(false));
    let peak = sample_peak(&proxy, done.clone());
    let size = 500 * MB as usize;
    let port = proxy.port;
    let sender = tokio::spawn(async move {
        let mut s = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
        let head = format!("*3\r\n$3\r\nSET\r\n$5\r\nwhale\r\n${size}\r\n");
        s.write_all(head.as_bytes()).await.unwrap();
        let piece = vec![b'h'; MB as usize];
        for _ in 0..size / MB as usize {
            s.write_all(&piece).await.unwrap();
        }
        s.write_all(b"\r\n").await.unwrap();
        let mut ok = [0u8; 5];
        s.read_exact(&mut ok).await.unwrap();
        (ok, s)
    });
    let under = probe(proxy.port, 300).await;
    let (ok, sender_connection) = sender.await.unwrap();
    assert_eq!(&ok, b"+OK\r\n");
    done.store(true, Ordering::Relaxed);
    let peak = peak.await.unwrap();
    let mut c = TcpStream::connect(("127.0.0.1", proxy.port)).await.unwrap();
    c.write_all(b"STRLEN whale\r\n").await.unwrap();
    let mut len = [0u8; 12];
    let n = c.read(&mut len).await.unwrap();
    assert_eq!(&len[..n], format!(":{size}\r\n").as_bytes(), "stored whole");
    memory_within(peak, 1000, "a 500 MB value in pieces");
    served_as_before(before, under, "a 500 MB value in pieces");
    // Once passed, the value's memory is let go, though its sender stays connected.
    let mut after = u64::MAX;
    for _ in 0..100 {
        after = proxy.rss().saturating_sub(rss);
        if after < 100 * MB {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    memory_within(after, 100, "after a 500 MB value passed");
    drop(sender_connection);

    // And read back whole, the proxy passing the reply on as it did the request.
    let done = Arc::new(AtomicBool::new(false));
    let peak = sample_peak(&proxy, done.clone());
    let reader = tokio::spawn(async move {
        let mut s = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
        s.write_all(b"GET whale\r\n").await.unwrap();
        let (mut got, mut buf) = (0, vec![0u8; MB as usize]);
        let whole = size + format!("${size}\r\n\r\n").len();
        while got < whole {
            let n = s.read(&mut buf).await.unwrap();
            assert!(n > 0, "the reply is cut short");
            got += n;
        }
        got - whole
    });
    let under = probe(proxy.port, 300).await;
    assert_eq!(reader.await.unwrap(), 0, "nothing after the value");
    done.store(true, Ordering::Relaxed);
    memory_within(peak.await.unwrap(), 1000, "a 500 MB value read back");
    served_as_before(before, under, "a 500 MB value read back");
}

/// MGET of 100,000 keys across every slot: answered whole, in order, with memory about
/// the size of the reply.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_mget_of_100000_keys_is_answered_whole() {
    let _alone = TIMED.lock().await;
    let cluster = common::three_masters().await;
    let proxy = Proxy::start(&cluster, "").await;
    let client = redis::Client::open(format!("redis://127.0.0.1:{}/", proxy.port)).unwrap();
    let mut c = client.get_multiplexed_async_connection().await.unwrap();
    let keys: Vec<String> = (0..100_000).map(|i| format!("m:{i}")).collect();
    for chunk in keys.chunks(5_000) {
        let mut mset = redis::cmd("MSET");
        for k in chunk {
            mset.arg(k).arg(&k[2..]);
        }
        let () = mset.query_async(&mut c).await.unwrap();
    }
    let before = probe(proxy.port, 300).await;
    let done = Arc::new(AtomicBool::new(false));
    let peak = sample_peak(&proxy, done.clone());
    // MGETs one after another for as long as the probe runs.
    let probing = Arc::new(AtomicBool::new(true));
    let mget = {
        let (keys, probing) = (keys.clone(), probing.clone());
        let mut c = c.clone();
        tokio::spawn(async move {
            let mut sent = 0;
            loop {
                let all = redis::cmd("MGET")
                    .arg(&keys)
                    .query_async::<Vec<String>>(&mut c)
                    .await
                    .unwrap();
                sent += 1;
                if !probing.load(Ordering::Relaxed) {
                    return (all, sent);
                }
            }
        })
    };
    let under = probe(proxy.port, 300).await;
    probing.store(false, Ordering::Relaxed);
    let (values, sent) = mget.await.unwrap();
    done.store(true, Ordering::Relaxed);
    eprintln!("REPORT | MGET of 100,000 keys | {sent} MGETs while the probe ran");
    let peak = peak.await.unwrap();
    assert_eq!(values.len(), keys.len());
    assert!(
        values.iter().zip(&keys).all(|(v, k)| *v == k[2..]),
        "every value in order"
    );
    memory_within(peak, 128, "MGET of 100,000 keys");
    served_as_before(before, under, "MGET of 100,000 keys");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_huge_announced_bulk_costs_only_what_arrives() {
    let cluster = common::three_masters().await;
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
    let cluster = common::three_masters().await;
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
    let _alone = TIMED.lock().await;
    let cluster = common::three_masters().await;
    let proxy = Proxy::start(&cluster, "").await;
    let before = probe(proxy.port, 300).await;
    let mut sub = TcpStream::connect(("127.0.0.1", proxy.port)).await.unwrap();
    sub.write_all(b"SUBSCRIBE flood\r\n").await.unwrap();
    let mut confirm = [0u8; 32];
    let n = sub.read(&mut confirm).await.unwrap();
    assert!(confirm[..n].starts_with(b"*3\r\n$9\r\nsubscribe"));
    let rss = proxy.rss();
    // Published straight to a node: 10,000 messages of 64 KiB, none read.
    let node = cluster.nodes[1].addr();
    let payload = "y".repeat(64 * 1024);
    let mut publisher = slotguard::client::Conn::connect(&node, Duration::from_secs(5))
        .await
        .unwrap();
    let port = proxy.port;
    let under = tokio::spawn(async move { probe(port, 300).await });
    for _ in 0..10_000 {
        publisher
            .call(&["PUBLISH", "flood", &payload])
            .await
            .unwrap();
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    memory_within(
        proxy.rss().saturating_sub(rss),
        64,
        "a subscriber that never reads",
    );
    served_as_before(
        before,
        under.await.unwrap(),
        "a subscriber that never reads",
    );
    drop(sub);
}
