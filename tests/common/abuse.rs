//! Every abusive client at once, and a well-behaved probe in a process of its own
//! (`redis-benchmark`, one connection, one GET at a time) that times what the others get.
//! Used by `tests/fairness.rs` and `benches/abuse.rs`, against slotguard and against one
//! redis-server with Redis's output buffer limits.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::task::JoinHandle;

/// The attack's shape; [`Shape::FULL`] is the one in the fairness issue.
#[derive(Clone, Copy, Debug)]
pub struct Shape {
    /// Connections that send nothing.
    pub idle: usize,
    /// Clients that announce a 100 MB value and send one byte of it a second.
    pub slowloris: usize,
    /// Clients that pipeline GETs of a 100 KB value as fast as they can and never read.
    pub hogs: usize,
    /// One subscriber that never reads, and a publisher flooding its channel with 10 KB
    /// messages.
    pub pubsub: bool,
    /// Connections opened at once and closed, again and again (0: none).
    pub churn: usize,
}

impl Shape {
    pub const FULL: Shape = Shape {
        idle: 9_000,
        slowloris: 300,
        hogs: 20,
        pubsub: true,
        churn: 0,
    };

    /// [`Shape::FULL`], and bursts of 200 new connections, opened and closed as fast as
    /// they are accepted.
    pub const FULL_WITH_CHURN: Shape = Shape {
        churn: 200,
        ..Shape::FULL
    };
}

/// The value the hogs ask for.
pub const BIG: usize = 100 * 1024;

/// An attack under way; stops when dropped.
pub struct Attack {
    stop: Arc<AtomicBool>,
    tasks: Vec<JoinHandle<()>>,
    _idle: Vec<TcpStream>,
    /// Abusive clients that found themselves disconnected (they do not come back).
    pub disconnected: Arc<AtomicU64>,
}

impl Drop for Attack {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for task in &self.tasks {
            task.abort();
        }
    }
}

async fn connect(port: u16) -> TcpStream {
    loop {
        match TcpStream::connect(("127.0.0.1", port)).await {
            Ok(s) => return s,
            Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
        }
    }
}

/// Sets `big` to a [`BIG`]-byte value on the server at `port`.
pub async fn set_big(port: u16) {
    let mut s = connect(port).await;
    let value = "x".repeat(BIG);
    let set = format!("*3\r\n$3\r\nSET\r\n$3\r\nbig\r\n${BIG}\r\n{value}\r\n");
    s.write_all(set.as_bytes()).await.unwrap();
    let mut ok = [0u8; 5];
    s.read_exact(&mut ok).await.unwrap();
    assert_eq!(&ok, b"+OK\r\n");
}

/// Starts every attack of `shape` on the server at `port`; returns once each abusive
/// client is connected and sending.
pub async fn start(port: u16, shape: Shape) -> Attack {
    set_big(port).await;
    let stop = Arc::new(AtomicBool::new(false));
    let disconnected = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    let mut idle = Vec::with_capacity(shape.idle);
    for _ in 0..shape.idle {
        idle.push(connect(port).await);
    }
    let mut slow = Vec::with_capacity(shape.slowloris);
    for _ in 0..shape.slowloris {
        let mut s = connect(port).await;
        s.write_all(b"*3\r\n$3\r\nSET\r\n$4\r\nslow\r\n$104857600\r\n")
            .await
            .unwrap();
        slow.push(s);
    }
    tasks.push(tokio::spawn(async move {
        loop {
            tokio::time::sleep(Duration::from_secs(1)).await;
            for s in &mut slow {
                let _ = s.write_all(b"x").await;
            }
        }
    }));
    for _ in 0..shape.hogs {
        let disconnected = disconnected.clone();
        let mut s = connect(port).await;
        tasks.push(tokio::spawn(async move {
            let gets = b"*2\r\n$3\r\nGET\r\n$3\r\nbig\r\n".repeat(1000);
            while s.write_all(&gets).await.is_ok() {}
            disconnected.fetch_add(1, Ordering::Relaxed);
        }));
    }
    if shape.pubsub {
        let disconnected = disconnected.clone();
        let mut s = connect(port).await;
        s.write_all(b"SUBSCRIBE flood\r\n").await.unwrap();
        // The subscriber never reads; a PING now and then finds out whether it was
        // disconnected.
        tasks.push(tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_millis(200)).await;
                if s.write_all(b"PING\r\n").await.is_err() {
                    break;
                }
            }
            disconnected.fetch_add(1, Ordering::Relaxed);
        }));
        let stop = stop.clone();
        // The publisher: 16 PUBLISHes of 10 KB at a time, as fast as they are answered.
        tasks.push(tokio::spawn(async move {
            let message = "m".repeat(10 * 1024);
            let publish = format!(
                "*3\r\n$7\r\nPUBLISH\r\n$5\r\nflood\r\n${}\r\n{message}\r\n",
                message.len()
            )
            .repeat(16);
            let mut buf = vec![0u8; 4096];
            while !stop.load(Ordering::Relaxed) {
                let mut s = connect(port).await;
                'session: loop {
                    if s.write_all(publish.as_bytes()).await.is_err() {
                        break;
                    }
                    // 16 integer replies, each ending in CRLF.
                    let mut lines = 0;
                    while lines < 16 {
                        match s.read(&mut buf).await {
                            Ok(0) | Err(_) => break 'session,
                            Ok(n) => lines += buf[..n].iter().filter(|&&b| b == b'\n').count(),
                        }
                    }
                }
            }
        }));
    }
    if shape.churn > 0 {
        tasks.push(tokio::spawn(async move {
            loop {
                let burst: Vec<_> = (0..shape.churn)
                    .map(|_| TcpStream::connect(("127.0.0.1", port)))
                    .collect();
                for connecting in burst {
                    drop(connecting.await);
                }
            }
        }));
    }
    // Let the hogs' first pipelines land.
    tokio::time::sleep(Duration::from_secs(2)).await;
    Attack {
        stop,
        tasks,
        _idle: idle,
        disconnected,
    }
}

/// The probe: `requests` GETs, one at a time on one connection, from `redis-benchmark` (a
/// process of its own); their 99th percentile in milliseconds.
pub fn probe(port: u16, requests: usize) -> f64 {
    let out = Command::new("redis-benchmark")
        .args(["-h", "127.0.0.1", "-p", &port.to_string(), "-c", "1"])
        .args(["-n", &requests.to_string(), "-t", "get", "--csv"])
        .output()
        .expect("redis-benchmark runs (scripts/install-deps installs it)");
    let text = String::from_utf8_lossy(&out.stdout);
    // "test","rps","avg_latency_ms","min_latency_ms","p50_latency_ms","p95_latency_ms",
    // "p99_latency_ms","max_latency_ms"
    let row = text
        .lines()
        .find(|l| l.starts_with("\"GET\""))
        .unwrap_or_else(|| panic!("the probe was answered: {text}"));
    let field = row.split(',').nth(6).expect("a p99 column");
    field.trim_matches('"').parse().expect("a number")
}

/// One redis-server, limited as the fairness issue measured it: `client-output-buffer-limit
/// normal 64mb 16mb 10` and `pubsub 32mb 8mb 60`, room for the attack's clients. Killed by
/// pid when dropped.
pub struct LimitedRedis {
    child: Child,
    pub port: u16,
}

impl LimitedRedis {
    pub async fn start(dir: &Path) -> LimitedRedis {
        let port = slotguard::localcluster::free_port().unwrap();
        let child = Command::new(slotguard::localcluster::server_binary())
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no", "--maxclients", "10200"])
            .args(["--client-output-buffer-limit", "normal 64mb 16mb 10"])
            .args(["--client-output-buffer-limit", "pubsub 32mb 8mb 60"])
            .arg("--dir")
            .arg(dir)
            .stdout(Stdio::null())
            .spawn()
            .expect("redis-server starts");
        let redis = LimitedRedis { child, port };
        for _ in 0..100 {
            if TcpStream::connect(("127.0.0.1", port)).await.is_ok() {
                return redis;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("redis-server on {port} did not start");
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for LimitedRedis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The highest RSS of process `pid` seen every 100 ms until `done`.
pub fn peak_rss(pid: u32, done: Arc<AtomicBool>) -> JoinHandle<u64> {
    tokio::spawn(async move {
        let mut peak = 0;
        while !done.load(Ordering::Relaxed) {
            peak = peak.max(super::rss_of(pid));
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        peak
    })
}

/// What one target got under attack.
#[derive(Debug)]
pub struct Measured {
    pub before_ms: f64,
    pub during_ms: f64,
    pub peak_rss: u64,
    /// Abusive clients disconnected by the server.
    pub disconnected: u64,
    /// `/metrics` as the attack ended, for a proxy.
    pub metrics: Option<String>,
}

/// Probes the server at `port` (process `pid`) before and during the attack: the worst
/// p99 of three probes a few seconds apart. `proxy`: a slotguard whose metrics are read
/// before the attack stops.
pub async fn measure(
    port: u16,
    pid: u32,
    shape: Shape,
    requests: usize,
    proxy: Option<&super::ProxyProcess>,
) -> Measured {
    let before_ms = tokio::task::spawn_blocking(move || probe(port, requests))
        .await
        .unwrap();
    let done = Arc::new(AtomicBool::new(false));
    let peak = peak_rss(pid, done.clone());
    let attack = start(port, shape).await;
    let mut during_ms: f64 = 0.0;
    for _ in 0..3 {
        let p99 = tokio::task::spawn_blocking(move || probe(port, requests))
            .await
            .unwrap();
        during_ms = during_ms.max(p99);
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    let metrics = match proxy {
        Some(proxy) => Some(proxy.metrics().await),
        None => None,
    };
    let disconnected = attack.disconnected.load(Ordering::Relaxed);
    drop(attack);
    done.store(true, Ordering::Relaxed);
    Measured {
        before_ms,
        during_ms,
        peak_rss: peak.await.unwrap(),
        disconnected,
        metrics,
    }
}

/// The value of metric `name` (its whole name, labels included) in `/metrics` text.
pub fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or(0.0)
}
