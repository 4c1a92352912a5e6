//! Test harness: a real Redis Cluster, the proxy in front of it (in this process), real
//! clients, and writers that record what was acknowledged.
#![allow(dead_code)]

pub mod abuse;
pub mod etcd;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use slotguard::client::Conn;
use slotguard::config::Config;
use slotguard::localcluster::{wait_for, LocalCluster, Options};
use slotguard::protocol::key_slot;
use slotguard::server::{self, Running};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

pub struct Harness {
    pub cluster: LocalCluster,
    pub proxy: Running,
}

impl Harness {
    /// A cluster of `masters` masters with `replicas` replicas each, and the proxy seeded
    /// with the first node only.
    pub async fn start(masters: usize, replicas: usize) -> Harness {
        Harness::start_with(
            Options {
                masters,
                replicas_per_master: replicas,
                node_timeout_ms: 1000,
                ..Options::default()
            },
            |_| {},
        )
        .await
    }

    /// Three masters without replicas (node timeout as `Options` has it), and the proxy's
    /// configuration as `tune` leaves it.
    pub async fn tuned(tune: impl FnOnce(&mut Config)) -> Harness {
        let options = Options {
            masters: 3,
            replicas_per_master: 0,
            ..Options::default()
        };
        Harness::start_with(options, tune).await
    }

    pub async fn start_with(options: Options, tune: impl FnOnce(&mut Config)) -> Harness {
        slotguard::logging::init("slotguard=info", false);
        let cluster = LocalCluster::start(options).await.expect("cluster starts");
        let mut config = Config {
            listen: "127.0.0.1:0".parse().unwrap(),
            seeds: vec![cluster.nodes[0].addr()],
            ..Config::default()
        };
        tune(&mut config);
        let proxy = start_proxy(config).await;
        Harness { cluster, proxy }
    }

    pub fn url(&self) -> String {
        format!("redis://{}/", self.proxy.addr)
    }

    pub fn port(&self) -> u16 {
        self.proxy.addr.port()
    }

    /// A plain (not cluster-aware) client of the proxy.
    pub async fn client(&self) -> redis::aio::MultiplexedConnection {
        redis::Client::open(self.url())
            .unwrap()
            .get_multiplexed_async_connection()
            .await
            .expect("connect to the proxy")
    }

    /// A plain client of one cluster node.
    pub async fn direct(&self, addr: &str) -> redis::aio::MultiplexedConnection {
        redis::Client::open(format!("redis://{addr}/"))
            .unwrap()
            .get_multiplexed_async_connection()
            .await
            .expect("connect to the node")
    }

    /// The address of the master that owns `slot`, asked of the cluster itself.
    pub async fn owner_of(&self, slot: u16) -> String {
        let node = self.cluster.nodes.iter().find(|n| n.pid().is_some());
        let mut conn = self.direct(&node.expect("a running node").addr()).await;
        let slots: Vec<(u16, u16, (String, u16))> = {
            let raw: redis::Value = redis::cmd("CLUSTER")
                .arg("SLOTS")
                .query_async(&mut conn)
                .await
                .unwrap();
            let redis::Value::Array(ranges) = raw else {
                panic!("CLUSTER SLOTS")
            };
            ranges
                .into_iter()
                .map(|r| {
                    let redis::Value::Array(f) = r else { panic!() };
                    let start: u16 = redis::from_redis_value(&f[0]).unwrap();
                    let end: u16 = redis::from_redis_value(&f[1]).unwrap();
                    let redis::Value::Array(node) = &f[2] else {
                        panic!()
                    };
                    let ip: String = redis::from_redis_value(&node[0]).unwrap();
                    let port: u16 = redis::from_redis_value(&node[1]).unwrap();
                    (start, end, (ip, port))
                })
                .collect()
        };
        let (_, _, (ip, port)) = slots
            .into_iter()
            .find(|(s, e, _)| (*s..=*e).contains(&slot))
            .expect("slot is covered");
        format!("{ip}:{port}")
    }

    /// `redis-cli --cluster check` against a running node: clean means no error, no
    /// warning (open slots are warnings) and every slot covered.
    pub fn cluster_check(&self) -> Result<(), String> {
        cluster_check(&self.cluster)
    }
}

/// Waits up to 10 s for [`cluster_check`] to come back clean, and asserts it does: a node
/// just restarted may come back with a slot open that the proxy closes at its next look
/// (a Valkey replica keeps what its nodes.conf says).
pub async fn assert_clean(cluster: &LocalCluster) {
    let clean = || async { cluster_check(cluster).is_ok() };
    if wait_for(Duration::from_secs(10), clean).await.is_err() {
        panic!(
            "the cluster check is not clean: {}",
            cluster_check(cluster).unwrap_err()
        );
    }
}

/// `redis-cli --cluster check` against a running node of `cluster` (see
/// [`Harness::cluster_check`]).
pub fn cluster_check(cluster: &LocalCluster) -> Result<(), String> {
    {
        let node = cluster
            .nodes
            .iter()
            .find(|n| n.pid().is_some())
            .expect("a running node");
        let mut cli = Command::new("redis-cli");
        if let Some(auth) = cluster.auth() {
            cli.args(["-a", &auth.password, "--no-auth-warning"]);
        }
        if let Some(tls) = &cluster.options.tls {
            cli.arg("--tls")
                .arg("--cacert")
                .arg(&tls.ca)
                .arg("--cert")
                .arg(&tls.cert)
                .arg("--key")
                .arg(&tls.key);
        }
        let out = cli
            .args(["--cluster", "check", &node.addr()])
            .output()
            .map_err(|e| format!("redis-cli: {e}"))?;
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        if out.status.success()
            && text.contains("[OK] All 16384 slots covered.")
            && !text.contains("[ERR]")
            && !text.contains("[WARNING]")
        {
            Ok(())
        } else {
            Err(text)
        }
    }
}

/// Starts a proxy and waits until it has learned the whole slot map.
pub async fn start_proxy(config: Config) -> Running {
    let proxy = server::start(config).await.expect("proxy starts");
    let p = proxy.proxy.clone();
    wait_for(Duration::from_secs(10), || {
        let covered = p.table.load().covered();
        async move { covered == 16384 }
    })
    .await
    .expect("the proxy learns the slot map");
    proxy
}

/// A plain client of `url` (for tasks that cannot borrow the harness).
pub async fn connect(url: &str) -> redis::aio::MultiplexedConnection {
    redis::Client::open(url)
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .expect("connect to the proxy")
}

/// A client of `url` that sends `BLPOP list 0` and waits for its answer.
pub fn blpop_in_background(
    url: String,
    list: &str,
) -> tokio::task::JoinHandle<redis::RedisResult<(String, String)>> {
    let list = list.to_string();
    tokio::spawn(async move {
        let mut c = redis::Client::open(url)
            .unwrap()
            .get_multiplexed_async_connection()
            .await
            .unwrap();
        redis::cmd("BLPOP")
            .arg(&list)
            .arg(0)
            .query_async(&mut c)
            .await
    })
}

/// Waits until the proxy holds `n` dedicated connections (5 s at most); `why` says what
/// that shows.
pub async fn wait_dedicated(h: &Harness, n: i64, why: &str) {
    let p = h.proxy.proxy.clone();
    let reached = wait_for(Duration::from_secs(5), || {
        let open = p.metrics.backend_dedicated_connections.get();
        async move { open == n }
    })
    .await;
    let now = h.proxy.proxy.metrics.backend_dedicated_connections.get();
    assert!(
        reached.is_ok(),
        "{why}: {n} dedicated connections, not {now}"
    );
}

/// MSET and MGET of two keys in two slots: a split command reaches two masters.
pub async fn mset_mget_across_slots(c: &mut redis::aio::MultiplexedConnection) {
    let () = redis::cmd("MSET")
        .arg("{a}1")
        .arg("x")
        .arg("{b}2")
        .arg("y")
        .query_async(c)
        .await
        .unwrap();
    let got: Vec<String> = redis::cmd("MGET")
        .arg("{a}1")
        .arg("{b}2")
        .query_async(c)
        .await
        .unwrap();
    assert_eq!(got, ["x", "y"]);
}

/// What writers saw.
#[derive(Debug, Default)]
pub struct Report {
    /// Last acknowledged value per key.
    pub acked: HashMap<String, String>,
    /// Errors a client received.
    pub errors: Vec<String>,
    /// Reads that did not return the writer's own last write.
    pub stale: Vec<String>,
    pub writes: u64,
    /// The longest a single SET or GET took: the stall a client felt.
    pub longest: Duration,
}

impl Report {
    /// Prints the `REPORT` line of a fault test: what writers saw, and how long after
    /// the fault the slot was clean.
    pub fn print(&self, name: &str, fault_at: std::time::Instant, clean_at: std::time::Instant) {
        eprintln!(
            "REPORT | {name} | writes {} | client errors {} | stale reads {} | longest stall {:.2}s | clean {:.2}s after the fault",
            self.writes,
            self.errors.len(),
            self.stale.len(),
            self.longest.as_secs_f64(),
            clean_at.duration_since(fault_at).as_secs_f64(),
        );
    }

    fn merge(&mut self, other: Report) {
        self.acked.extend(other.acked);
        self.errors.extend(other.errors);
        self.stale.extend(other.stale);
        self.writes += other.writes;
        self.longest = self.longest.max(other.longest);
    }
}

/// Keys named `prefix:N` whose slots all fall in `slots`.
pub fn keys_in_slots(
    prefix: &str,
    slots: std::ops::RangeInclusive<u16>,
    count: usize,
) -> Vec<String> {
    (0u64..)
        .map(|i| format!("{prefix}:{i}"))
        .filter(|k| slots.contains(&slotguard::protocol::key_slot(k.as_bytes())))
        .take(count)
        .collect()
}

/// Runs `n` writers through the proxy until `stop`. Writer `w` owns every `n`-th key of
/// `keys`; it SETs one, reads it back at once, and moves on.
pub async fn writers(url: String, n: usize, keys: Vec<String>, stop: Arc<AtomicBool>) -> Report {
    writers_counted(url, n, keys, stop, Arc::default()).await
}

/// [`writers`], counting acknowledged writes in `done` as they happen.
pub async fn writers_counted(
    url: String,
    n: usize,
    keys: Vec<String>,
    stop: Arc<AtomicBool>,
    done: Arc<std::sync::atomic::AtomicU64>,
) -> Report {
    let keys = Arc::new(keys);
    let mut tasks = Vec::new();
    for w in 0..n {
        let url = url.clone();
        let stop = stop.clone();
        let keys = keys.clone();
        let done = done.clone();
        let mine: Vec<usize> = (w..keys.len()).step_by(n).collect();
        tasks.push(tokio::spawn(async move {
            let mut report = Report::default();
            let client = redis::Client::open(url).unwrap();
            // Longer than any hold: a request that never returns is a failure, not a hang.
            let config =
                redis::AsyncConnectionConfig::new().set_response_timeout(Duration::from_secs(30));
            let mut conn = client
                .get_multiplexed_async_connection_with_config(&config)
                .await
                .expect("connect");
            let mut i: u64 = 0;
            let mut errors = 0;
            while !stop.load(Ordering::Relaxed) {
                let key = keys[mine[i as usize % mine.len()]].clone();
                let value = format!("{w}-{i}");
                let started = std::time::Instant::now();
                let set: redis::RedisResult<()> = redis::cmd("SET")
                    .arg(&key)
                    .arg(&value)
                    .query_async(&mut conn)
                    .await;
                report.longest = report.longest.max(started.elapsed());
                match set {
                    Ok(()) => {
                        report.writes += 1;
                        done.fetch_add(1, Ordering::Relaxed);
                        report.acked.insert(key.clone(), value.clone());
                        let started = std::time::Instant::now();
                        let got: redis::RedisResult<Option<String>> =
                            redis::cmd("GET").arg(&key).query_async(&mut conn).await;
                        report.longest = report.longest.max(started.elapsed());
                        match got {
                            Ok(Some(v)) if v == value => {}
                            Ok(other) => report
                                .stale
                                .push(format!("{key}: wrote {value}, read {other:?}")),
                            Err(e) => report.errors.push(format!("GET {key}: {e}")),
                        }
                    }
                    Err(e) => report.errors.push(format!("SET {key}: {e}")),
                }
                if report.errors.len() > errors {
                    errors = report.errors.len();
                    // A writer whose proxy is gone (the test failed and dropped it) gets
                    // its errors at once: without a pause it would never yield, and the
                    // test's runtime could not shut down. A failure must not hang.
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                i += 1;
            }
            report
        }));
    }
    let mut all = Report::default();
    for t in tasks {
        all.merge(t.await.expect("writer task"));
    }
    all
}

/// Reads every acknowledged key back through the proxy; returns the mismatches.
pub async fn lost_writes(
    conn: &mut redis::aio::MultiplexedConnection,
    acked: &HashMap<String, String>,
) -> Vec<String> {
    let mut lost = Vec::new();
    for (key, value) in acked {
        let got: Option<String> = redis::cmd("GET")
            .arg(key)
            .query_async(conn)
            .await
            .expect("GET after the fault");
        if got.as_deref() != Some(value.as_str()) {
            lost.push(format!("{key}: acknowledged {value}, read {got:?}"));
        }
    }
    lost
}

/// Waits until `done` is `more` above what it was when called, or `most` passed: writers
/// keep going after a fault until they have written enough to show it, however slow the
/// machine, rather than for a fixed time.
pub async fn until_more_writes(done: &std::sync::atomic::AtomicU64, more: u64, most: Duration) {
    let target = done.load(Ordering::Relaxed) + more;
    let started = std::time::Instant::now();
    while done.load(Ordering::Relaxed) < target && started.elapsed() < most {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// What every test with writers under a fault asserts: they ran, no client saw an error or
/// a stale read (unless `stale_allowed`), and every acknowledged write reads back.
pub async fn assert_unharmed(h: &Harness, report: &Report, min_writes: u64, stale_allowed: bool) {
    assert!(report.writes > min_writes, "writers ran: {}", report.writes);
    assert!(
        report.errors.is_empty(),
        "client errors: {:?}",
        &report.errors[..report.errors.len().min(10)]
    );
    if !stale_allowed {
        assert!(
            report.stale.is_empty(),
            "stale reads: {:?}",
            &report.stale[..report.stale.len().min(10)]
        );
    }
    let mut c = h.client().await;
    let lost = lost_writes(&mut c, &report.acked).await;
    assert!(lost.is_empty(), "lost writes: {lost:?}");
}

/// Sends raw bytes and reads until the reply ends with `until` (5 s per read at most).
pub async fn ask_raw(s: &mut tokio::net::TcpStream, req: &[u8], until: &[u8]) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    s.write_all(req).await.unwrap();
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    while !out.ends_with(until) {
        let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf))
            .await
            .unwrap()
            .unwrap();
        assert!(n > 0, "closed early: {:?}", String::from_utf8_lossy(&out));
        out.extend_from_slice(&buf[..n]);
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Runs a redis-py script (with a 60 s limit, so a client that hangs fails instead) and
/// asserts it succeeded. Returns false, saying so, when redis-py is not installed
/// (`.ci/run` installs it).
pub async fn redis_py(script: String) -> bool {
    let probe = Command::new("python3")
        .args(["-c", "import redis"])
        .status();
    if !probe.is_ok_and(|s| s.success()) {
        eprintln!("SKIPPED: redis-py is not installed (pip install redis); .ci/run installs it");
        return false;
    }
    let out = tokio::task::spawn_blocking(move || {
        Command::new("timeout")
            .args(["60", "python3", "-c", &script])
            .output()
            .expect("python3 runs")
    })
    .await
    .unwrap();
    assert!(
        out.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    true
}

/// A key tag whose slot is served by master `i` of a three-master cluster.
pub fn tag_on(i: usize) -> String {
    let range = match i {
        0 => 0..=5460,
        1 => 5461..=10922,
        _ => 10923..=16383,
    };
    (0..)
        .map(|n| format!("{{b{n}}}"))
        .find(|t| range.contains(&key_slot(t.as_bytes())))
        .unwrap()
}

/// Waits until the proxy's status shows a decision on `slot` that `holds`; panics with
/// `what` after `limit`.
pub async fn wait_decision(
    h: &Harness,
    slot: u16,
    limit: Duration,
    holds: impl Fn(&slotguard::routing::decision::Decision) -> bool,
    what: &str,
) {
    let p = h.proxy.proxy.clone();
    wait_for(limit, || {
        let found = p
            .routing
            .status
            .load()
            .decisions
            .iter()
            .any(|d| d.slot == slot && holds(d));
        async move { found }
    })
    .await
    .unwrap_or_else(|_| panic!("{what}"));
}

/// Waits until every running node binds the slot to one master (`owner`, if given) and
/// has nothing open; returns when that was seen, and the owner's id.
pub async fn settled(
    h: &Harness,
    slot: u16,
    owner: Option<&str>,
    limit: Duration,
) -> (std::time::Instant, String) {
    settled_in(&h.cluster, slot, owner, limit).await
}

/// [`settled`], for a cluster without a [`Harness`].
pub async fn settled_in(
    cluster: &LocalCluster,
    slot: u16,
    owner: Option<&str>,
    limit: Duration,
) -> (std::time::Instant, String) {
    let addrs: Vec<String> = cluster
        .nodes
        .iter()
        .filter(|n| n.pid().is_some())
        .map(|n| n.addr())
        .collect();
    let seen = std::sync::Mutex::new(String::new());
    let last = std::sync::Mutex::new(String::new());
    let waited = wait_for(limit, || {
        let addrs = addrs.clone();
        let (seen, last) = (&seen, &last);
        async move {
            let mut owners = std::collections::BTreeSet::new();
            let mut open = Vec::new();
            for addr in &addrs {
                let Ok(v) = slotguard::client::query(
                    addr,
                    &["CLUSTER", "NODES"],
                    &slotguard::client::Dial::new(Duration::from_secs(1)),
                )
                .await
                else {
                    return false;
                };
                let text = v.as_str().unwrap_or_default().to_string();
                let Ok(lines) = slotguard::cluster::nodes::parse(&text, "127.0.0.1") else {
                    return false;
                };
                let me = lines.iter().find(|l| l.myself).unwrap();
                if !me.migrating.is_empty() || !me.importing.is_empty() {
                    let role = if me.master { "master" } else { "replica" };
                    open.push(format!(
                        "{addr} ({role} {}) has open: migrating {:?}, importing {:?}",
                        &me.id[..8],
                        me.migrating,
                        me.importing
                    ));
                }
                let holder = lines.iter().find(|l| l.master && l.owns(slot));
                owners.insert(holder.map(|l| l.id.clone()));
            }
            if !open.is_empty() {
                *last.lock().unwrap() = open.join("; ");
                return false;
            }
            let one = match (owners.len(), owners.first()) {
                (1, Some(Some(id))) if owner.is_none_or(|o| o == id) => id.clone(),
                _ => {
                    *last.lock().unwrap() = format!("owners {owners:?}, wanted {owner:?}");
                    return false;
                }
            };
            *seen.lock().unwrap() = one;
            true
        }
    })
    .await;
    if waited.is_err() {
        panic!(
            "slot {slot} did not settle on one owner: {}",
            last.into_inner().unwrap()
        );
    }
    let id = seen.into_inner().unwrap();
    (std::time::Instant::now(), id)
}

/// Opens a migration of `slot` from the master at `a` to the master at `b` and moves
/// `keys` with one MIGRATE, as an operator's tool does; returns the two node ids.
pub async fn open_migration(a: &str, b: &str, slot: u16, keys: &[String]) -> (String, String) {
    let (source, target) = (node_id(a).await, node_id(b).await);
    let s = slot.to_string();
    call(b, &["CLUSTER", "SETSLOT", &s, "IMPORTING", &source]).await;
    call(a, &["CLUSTER", "SETSLOT", &s, "MIGRATING", &target]).await;
    if !keys.is_empty() {
        let (host, port) = b.rsplit_once(':').unwrap();
        let mut migrate = vec!["MIGRATE", host, port, "", "0", "5000", "KEYS"];
        migrate.extend(keys.iter().map(String::as_str));
        call(a, &migrate).await;
    }
    (source, target)
}

/// A cluster of three masters and no replica, started.
pub async fn three_masters() -> LocalCluster {
    LocalCluster::start(Options {
        masters: 3,
        replicas_per_master: 0,
        ..Options::default()
    })
    .await
    .expect("the cluster starts")
}

/// The node id of the node at `addr`.
pub async fn node_id(addr: &str) -> String {
    call(addr, &["CLUSTER", "MYID"])
        .await
        .as_str()
        .unwrap()
        .to_string()
}

pub async fn call(addr: &str, args: &[&str]) -> slotguard::protocol::Value {
    let mut c = Conn::connect(addr, Duration::from_secs(5)).await.unwrap();
    c.call_ok(args)
        .await
        .unwrap_or_else(|e| panic!("{args:?} on {addr}: {e}"))
}

/// Moves `slot` from master `from` to master `to` with the migration protocol.
pub async fn move_slot(h: &Harness, slot: u16, from: usize, to: usize) {
    let (a, b) = (h.cluster.nodes[from].addr(), h.cluster.nodes[to].addr());
    let ids = |addr: String| async move {
        call(&addr, &["CLUSTER", "MYID"])
            .await
            .as_str()
            .unwrap()
            .to_string()
    };
    let (source, target) = (ids(a.clone()).await, ids(b.clone()).await);
    let s = slot.to_string();
    call(&b, &["CLUSTER", "SETSLOT", &s, "IMPORTING", &source]).await;
    call(&a, &["CLUSTER", "SETSLOT", &s, "MIGRATING", &target]).await;
    let (host, port) = b.rsplit_once(':').unwrap();
    loop {
        let keys = call(&a, &["CLUSTER", "GETKEYSINSLOT", &s, "100"]).await;
        let slotguard::protocol::Value::Array(keys) = keys else {
            panic!("GETKEYSINSLOT")
        };
        if keys.is_empty() {
            break;
        }
        for k in keys {
            let k = k.as_str().unwrap().to_string();
            call(&a, &["MIGRATE", host, port, &k, "0", "5000"]).await;
        }
    }
    call(&b, &["CLUSTER", "SETSLOT", &s, "NODE", &target]).await;
    call(&a, &["CLUSTER", "SETSLOT", &s, "NODE", &target]).await;
    for n in h.cluster.nodes.iter().filter(|n| n.pid().is_some()) {
        let addr = n.addr();
        if addr != a && addr != b {
            call(&addr, &["CLUSTER", "SETSLOT", &s, "NODE", &target]).await;
        }
    }
}

/// A raw client connection that reads whole frames (replies and pushes).
/// A request as RESP.
pub fn resp(args: &[&str]) -> String {
    let mut out = format!("*{}\r\n", args.len());
    for a in args {
        out.push_str(&format!("${}\r\n{a}\r\n", a.len()));
    }
    out
}

pub struct Raw {
    pub s: tokio::net::TcpStream,
    buf: bytes::BytesMut,
    scanner: slotguard::protocol::ReplyScanner,
}

impl Raw {
    pub async fn connect(h: &Harness) -> Raw {
        Raw::connect_to(&h.proxy.addr.to_string()).await
    }

    /// A raw connection to `addr` (a node, say).
    pub async fn connect_to(addr: &str) -> Raw {
        Raw {
            s: tokio::net::TcpStream::connect(addr).await.unwrap(),
            buf: bytes::BytesMut::new(),
            scanner: slotguard::protocol::ReplyScanner::default(),
        }
    }

    pub async fn send(&mut self, req: &str) {
        self.s.write_all(req.as_bytes()).await.unwrap();
    }

    /// The next frame, or `None` after `limit` without one.
    pub async fn frame_within(&mut self, limit: Duration) -> Option<bytes::Bytes> {
        let deadline = std::time::Instant::now() + limit;
        loop {
            if let Some(len) = self.scanner.scan(&self.buf).unwrap() {
                return Some(self.buf.split_to(len).freeze());
            }
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match tokio::time::timeout(left, self.s.read_buf(&mut self.buf)).await {
                Ok(Ok(0)) => panic!("the proxy closed the connection"),
                Ok(Ok(_)) => {}
                Ok(Err(e)) => panic!("read: {e}"),
                Err(_) => return None,
            }
        }
    }

    pub async fn frame(&mut self) -> bytes::Bytes {
        self.frame_within(Duration::from_secs(10))
            .await
            .expect("a frame within 10 s")
    }

    /// Sends a request and reads the next frame.
    pub async fn ask(&mut self, req: &str) -> bytes::Bytes {
        self.send(req).await;
        self.frame().await
    }

    /// The next frame as text items: `["message", "ch", "payload"]`.
    pub async fn items(&mut self) -> Vec<String> {
        items(&self.frame().await)
    }
}

/// A push or array frame as text items.
pub fn items(frame: &bytes::Bytes) -> Vec<String> {
    match slotguard::protocol::Value::parse(frame).unwrap() {
        slotguard::protocol::Value::Array(items) => items
            .iter()
            .map(|v| match v {
                slotguard::protocol::Value::Int(n) => n.to_string(),
                slotguard::protocol::Value::Nil => "nil".into(),
                other => other
                    .as_str()
                    .map(str::to_string)
                    .unwrap_or_else(|| format!("{other:?}")),
            })
            .collect(),
        other => vec![format!("{other:?}")],
    }
}

/// The proxy as a process of its own (`slotguard --config`), so that its memory can be
/// measured, its log read, and several run. Its log goes to `proxy-<port>.log` in the
/// cluster's directory; the admin listener is on.
pub struct ProxyProcess {
    pub child: std::process::Child,
    pub port: u16,
    pub admin: u16,
    pub log: std::path::PathBuf,
    /// Sent as the admin bearer token, when the configuration sets one.
    pub token: Option<String>,
    /// Its configuration file, and that file's text around the `extra` it started with.
    config: (std::path::PathBuf, String, String),
}

impl ProxyProcess {
    /// Starts it on `cluster` with `extra` in its configuration (top-level keys first;
    /// it may open sections of its own but `[admin]`), and waits until it answers.
    pub async fn start(cluster: &LocalCluster, extra: &str) -> ProxyProcess {
        ProxyProcess::start_with_token(cluster, extra, None).await
    }

    /// As [`ProxyProcess::start`], with `admin.token` set to `token`.
    pub async fn start_with_token(
        cluster: &LocalCluster,
        extra: &str,
        token: Option<&str>,
    ) -> ProxyProcess {
        ProxyProcess::launch(cluster, 0, extra, token).await
    }

    /// As [`ProxyProcess::start`], seeded with node `seed` (node 0 may be down).
    pub async fn start_seeded(cluster: &LocalCluster, seed: usize, extra: &str) -> ProxyProcess {
        ProxyProcess::launch(cluster, seed, extra, None).await
    }

    async fn launch(
        cluster: &LocalCluster,
        seed: usize,
        extra: &str,
        token: Option<&str>,
    ) -> ProxyProcess {
        let free = || slotguard::localcluster::free_port().unwrap();
        let port = free();
        let admin = std::iter::repeat_with(free).find(|&p| p != port).unwrap();
        let path = cluster.dir.join(format!("proxy-{port}.toml"));
        let token_line = token
            .map(|t| format!("token = \"{t}\"\n"))
            .unwrap_or_default();
        let head = format!(
            "listen = \"127.0.0.1:{port}\"\nseeds = [\"{}\"]\n",
            cluster.nodes[seed].addr()
        );
        let tail = format!("\n[admin]\nlisten = \"127.0.0.1:{admin}\"\n{token_line}");
        std::fs::write(&path, format!("{head}{extra}{tail}")).unwrap();
        let log = cluster.dir.join(format!("proxy-{port}.log"));
        let child = Command::new(env!("CARGO_BIN_EXE_slotguard"))
            .args(["--config", path.to_str().unwrap()])
            .stderr(std::fs::File::create(&log).unwrap())
            .stdout(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let proxy = ProxyProcess {
            child,
            port,
            admin,
            log,
            token: token.map(str::to_string),
            config: (path, head, tail),
        };
        // Generous: tests of a file run two at a time, and may load the machine. (A proxy
        // that never serves is killed when `proxy` drops.)
        wait_for(Duration::from_secs(30), || async move {
            let Ok(mut s) = tokio::net::TcpStream::connect(("127.0.0.1", port)).await else {
                return false;
            };
            let _ = s.write_all(b"GET probe\r\n").await;
            let mut buf = [0u8; 16];
            // `$-1` once the map is known, `-NOAUTH` with a password.
            matches!(s.read(&mut buf).await, Ok(n) if n > 0 && (buf[0] == b'$' || buf[..n].starts_with(b"-NOAUTH")))
        })
        .await
        .unwrap_or_else(|_| panic!("the proxy serves: {}", proxy.log_text()));
        proxy
    }

    /// Rewrites its configuration with `extra` in place of what it started with, sends
    /// SIGHUP, and waits until the reload is logged.
    pub async fn reload(&self, extra: &str) {
        let (path, head, tail) = &self.config;
        std::fs::write(path, format!("{head}{extra}{tail}")).unwrap();
        let reloads = || self.log_text().matches("configuration reloaded").count();
        let before = reloads();
        let pid = self.child.id().to_string();
        let sent = Command::new("kill").args(["-HUP", &pid]).status().unwrap();
        assert!(sent.success(), "SIGHUP sent");
        wait_for(Duration::from_secs(10), || async { reloads() > before })
            .await
            .unwrap_or_else(|_| panic!("the reload is logged: {}", self.log_text()));
    }

    /// The body of admin path `path` (`/metrics`, `/status`).
    pub async fn admin_get(&self, path: &str) -> String {
        let mut s = tokio::net::TcpStream::connect(("127.0.0.1", self.admin))
            .await
            .unwrap();
        let auth = match &self.token {
            Some(t) => format!("Authorization: Bearer {t}\r\n"),
            None => String::new(),
        };
        s.write_all(format!("GET {path} HTTP/1.0\r\n{auth}\r\n").as_bytes())
            .await
            .unwrap();
        let mut text = String::new();
        s.read_to_string(&mut text).await.unwrap();
        text
    }

    pub async fn metrics(&self) -> String {
        self.admin_get("/metrics").await
    }

    /// What it has logged so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Its resident memory, in bytes.
    pub fn rss(&self) -> u64 {
        rss_of(self.child.id())
    }
}

/// The resident memory of process `pid`, in bytes (0 once it is gone).
pub fn rss_of(pid: u32) -> u64 {
    let statm = std::fs::read_to_string(format!("/proc/{pid}/statm")).unwrap_or_default();
    statm
        .split_whitespace()
        .nth(1)
        .and_then(|pages| pages.parse::<u64>().ok())
        .unwrap_or(0)
        * 4096
}

/// Field `field` (`calls`, `failed_calls`, ...) of `command`'s line in the `INFO
/// commandstats` of the node at `addr`; 0 when the command has not run.
pub async fn command_stat(addr: &str, command: &str, field: &str) -> u64 {
    let stats = call(addr, &["INFO", "commandstats"]).await;
    let prefix = format!("cmdstat_{command}:");
    stats
        .as_str()
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix(prefix.as_str()))
        .and_then(|rest| {
            rest.split(',')
                .find_map(|kv| kv.strip_prefix(field)?.strip_prefix('='))
        })
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

impl Drop for ProxyProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A GET over plain HTTP/1.1; returns (status code, body).
pub async fn http_get(addr: std::net::SocketAddr, path: &str) -> (u16, String) {
    http_get_with(addr, path, "").await
}

/// A GET with extra header lines (each ending in `\r\n`).
pub async fn http_get_with(addr: std::net::SocketAddr, path: &str, headers: &str) -> (u16, String) {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(format!("GET {path} HTTP/1.1\r\nhost: x\r\n{headers}\r\n").as_bytes())
        .await
        .unwrap();
    let mut out = Vec::new();
    s.read_to_end(&mut out).await.unwrap();
    let text = String::from_utf8(out).unwrap();
    let (head, body) = text.split_once("\r\n\r\n").unwrap();
    let code = head.split(' ').nth(1).unwrap().parse().unwrap();
    (code, body.to_string())
}

/// A CA, a certificate for 127.0.0.1 (nodes and the proxy), and a client certificate, as
/// PEM files in `dir`.
pub struct Certs {
    pub ca: PathBuf,
    pub server: (PathBuf, PathBuf),
    pub client: (PathBuf, PathBuf),
}

pub fn make_certs(dir: &Path) -> Certs {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair, SanType};
    use std::net::{IpAddr, Ipv4Addr};
    std::fs::create_dir_all(dir).unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "slotguard test CA");
    let ca_key = KeyPair::generate().unwrap();
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let write = |name: &str, pem: String| {
        let path = dir.join(name);
        std::fs::write(&path, pem).unwrap();
        path
    };
    let signed = |name: &str| {
        let mut params = CertificateParams::new(vec!["localhost".to_string()]).unwrap();
        params
            .subject_alt_names
            .push(SanType::IpAddress(IpAddr::V4(Ipv4Addr::LOCALHOST)));
        params.distinguished_name.push(DnType::CommonName, name);
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &ca, &ca_key).unwrap();
        (
            write(&format!("{name}.crt"), cert.pem()),
            write(&format!("{name}.key"), key.serialize_pem()),
        )
    };
    Certs {
        server: signed("server"),
        client: signed("client"),
        ca: write("ca.crt", ca.pem()),
    }
}
