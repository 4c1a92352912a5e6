//! A real Redis Cluster on this machine, for `slotguard demo` and the tests.
//!
//! Starts `redis-server` processes from PATH in a temporary directory on free ports (below
//! 22767, so that each bus port, data port + 10000, is valid), assigns slots evenly to the
//! masters, joins the nodes, attaches replicas, and waits until every node reports the
//! cluster ok and every replica's link is up. Nodes are stopped by pid on drop.
//!
//! `SLOTGUARD_SERVER` names another server binary (a path, or a name on PATH), such as
//! Valkey's `valkey-server`: every cluster this module starts then runs it.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use crate::client::{Auth, Conn, Dial};
use crate::cluster::nodes;
use crate::protocol::Value;

/// How to build the cluster.
#[derive(Clone, Debug)]
pub struct Options {
    pub masters: usize,
    pub replicas_per_master: usize,
    /// `cluster-node-timeout` in milliseconds.
    pub node_timeout_ms: u64,
    /// Extra `--name value` arguments for every node.
    pub extra_args: Vec<(String, String)>,
    /// `requirepass` (and `masterauth`) for every node.
    pub password: Option<String>,
    /// TLS only: every node (data, cluster bus, replication) speaks TLS with these files.
    pub tls: Option<TlsFiles>,
    /// Each node in a network namespace of its own, joined by a bridge that this process
    /// reaches too, so that links between nodes can be cut ([`LocalCluster::cut`]). Root
    /// only (`ip netns`).
    pub namespaces: bool,
}

/// PEM files for a TLS cluster. The nodes use the same certificate as server and as client
/// (Redis asks clients for a certificate), so it must name 127.0.0.1.
#[derive(Clone, Debug)]
pub struct TlsFiles {
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            masters: 3,
            replicas_per_master: 1,
            node_timeout_ms: 2000,
            extra_args: Vec::new(),
            password: None,
            tls: None,
            namespaces: false,
        }
    }
}

/// One redis-server process.
#[derive(Debug)]
pub struct LocalNode {
    pub port: u16,
    pub dir: PathBuf,
    /// The address it listens on: 127.0.0.1, or its own in its namespace.
    pub ip: String,
    /// Its network namespace, with `Options::namespaces`.
    netns: Option<String>,
    child: Option<Child>,
}

impl LocalNode {
    pub fn addr(&self) -> String {
        format!("{}:{}", self.ip, self.port)
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// The status of a process that ended without being killed here (a crash), once.
    pub fn exited(&mut self) -> Option<std::process::ExitStatus> {
        let status = self.child.as_mut()?.try_wait().ok().flatten()?;
        self.child = None;
        Some(status)
    }

    /// `kill -9` by pid.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Sends a signal (`STOP`, `CONT`, ...) by pid.
    pub fn signal(&self, name: &str) -> std::io::Result<()> {
        let Some(pid) = self.pid() else {
            return Err(std::io::Error::other("node is not running"));
        };
        let status = Command::new("kill")
            .arg(format!("-{name}"))
            .arg(pid.to_string())
            .status()?;
        if !status.success() {
            return Err(std::io::Error::other(format!("kill -{name} {pid} failed")));
        }
        Ok(())
    }
}

/// A running cluster; stopped and removed on drop.
#[derive(Debug)]
pub struct LocalCluster {
    pub nodes: Vec<LocalNode>,
    pub dir: PathBuf,
    pub options: Options,
    /// How to speak TLS to the nodes, loaded once from `options.tls`.
    tls: Option<crate::tls::BackendTls>,
    /// The bridge and subnet of `Options::namespaces`.
    network: Option<Network>,
    keep_dir: bool,
    /// A node started since the last [`LocalCluster::wait_healthy`]: a replica may have
    /// synced that its master does not stream to yet (see `wait_healthy`).
    started: std::sync::atomic::AtomicBool,
}

/// A bridge in this process's namespace, and a /24 on it: `prefix.1` is the bridge's
/// address, `prefix.(10 + i)` node i's, each in a namespace of its own.
#[derive(Debug)]
struct Network {
    name: String,
    prefix: String,
    namespaces: Vec<String>,
}

/// Runs `ip` (or, with `netns`, `ip netns exec NS ip`) with `args`.
fn ip(netns: Option<&str>, args: &[&str]) -> Result<(), StartError> {
    let mut cmd = Command::new("ip");
    if let Some(ns) = netns {
        cmd.args(["netns", "exec", ns, "ip"]);
    }
    let out = cmd
        .args(args)
        .output()
        .map_err(|e| fail(format!("ip: {e}")))?;
    if !out.status.success() {
        return Err(fail(format!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(())
}

impl Network {
    /// A bridge named and numbered after this process and a counter.
    fn create() -> Result<Network, StartError> {
        let n = NEXT_DIR.fetch_add(1, Ordering::Relaxed);
        let id = (std::process::id().wrapping_mul(16).wrapping_add(n)) % (192 * 256);
        let network = Network {
            name: format!("sgb{id}"),
            prefix: format!("10.{}.{}", 64 + id / 256, id % 256),
            namespaces: Vec::new(),
        };
        let _ = ip(None, &["link", "del", &network.name]); // a leftover of a killed run
        ip(None, &["link", "add", &network.name, "type", "bridge"])?;
        let bridge_ip = format!("{}.1/24", network.prefix);
        ip(None, &["addr", "add", &bridge_ip, "dev", &network.name])?;
        ip(None, &["link", "set", &network.name, "up"])?;
        Ok(network)
    }

    /// A namespace for node `i` on the bridge; returns its name and the node's address.
    fn attach(&mut self, i: usize) -> Result<(String, String), StartError> {
        let ns = format!("{}n{i}", self.name);
        let veth = format!("{}v{i}", self.name);
        let node_ip = format!("{}.{}", self.prefix, 10 + i);
        let _ = ip(None, &["netns", "del", &ns]);
        ip(None, &["netns", "add", &ns])?;
        self.namespaces.push(ns.clone());
        ip(
            None,
            &[
                "link", "add", &veth, "type", "veth", "peer", "name", "eth0", "netns", &ns,
            ],
        )?;
        ip(None, &["link", "set", &veth, "master", &self.name, "up"])?;
        ip(
            Some(&ns),
            &["addr", "add", &format!("{node_ip}/24"), "dev", "eth0"],
        )?;
        ip(Some(&ns), &["link", "set", "eth0", "up"])?;
        ip(Some(&ns), &["link", "set", "lo", "up"])?;
        Ok((ns, node_ip))
    }
}

impl Drop for Network {
    fn drop(&mut self) {
        for (i, ns) in self.namespaces.iter().enumerate() {
            let _ = ip(None, &["link", "del", &format!("{}v{i}", self.name)]);
            let _ = ip(None, &["netns", "del", ns]);
        }
        let _ = ip(None, &["link", "del", &self.name]);
    }
}

/// Why a cluster could not be started.
#[derive(Debug)]
pub struct StartError(pub String);

impl std::fmt::Display for StartError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for StartError {}

fn fail(what: impl std::fmt::Display) -> StartError {
    StartError(what.to_string())
}

/// The server binary the clusters run: `SLOTGUARD_SERVER`, or `redis-server`.
pub fn server_binary() -> String {
    std::env::var("SLOTGUARD_SERVER")
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "redis-server".to_string())
}

/// True when the clusters run Valkey.
pub fn is_valkey() -> bool {
    server_binary().contains("valkey")
}

/// Checks that the server can be run, with instructions when it cannot.
pub fn check_redis_server() -> Result<String, StartError> {
    let server = server_binary();
    if server != "redis-server" {
        return match Command::new(&server).arg("--version").output() {
            Ok(out) if out.status.success() => {
                Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
            }
            _ => Err(fail(format!(
                "SLOTGUARD_SERVER={server} cannot be run (scripts/install-deps installs Valkey's server; see the README)"
            ))),
        };
    }
    match Command::new("redis-server").arg("--version").output() {
        Ok(out) if out.status.success() => {
            Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
        }
        _ => Err(fail(
            "redis-server was not found on PATH. Install it with:\n  \
             sudo apt-get install -y redis-server redis-tools   (Debian, Ubuntu)\n  \
             brew install redis                                  (macOS)",
        )),
    }
}

static NEXT_DIR: AtomicU32 = AtomicU32::new(0);

impl LocalCluster {
    /// Starts a cluster and waits until it is ready.
    pub async fn start(options: Options) -> Result<LocalCluster, StartError> {
        check_redis_server()?;
        let dir = std::env::temp_dir().join(format!(
            "slotguard-{}-{}",
            std::process::id(),
            NEXT_DIR.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).map_err(|e| fail(format!("{}: {e}", dir.display())))?;
        let tls = match &options.tls {
            Some(files) => {
                let path = |p: &PathBuf| p.to_string_lossy().into_owned();
                let tls = crate::tls::backend(
                    &path(&files.ca),
                    Some(&path(&files.cert)),
                    Some(&path(&files.key)),
                    None,
                )
                .map_err(|e| fail(e.0))?;
                Some(tls)
            }
            None => None,
        };
        let network = match options.namespaces {
            true => Some(Network::create()?),
            false => None,
        };
        let mut cluster = LocalCluster {
            nodes: Vec::new(),
            dir,
            options,
            tls,
            network,
            // SLOTGUARD_KEEP_DIRS=1 keeps every test's logs and nodes.conf to read after.
            keep_dir: std::env::var_os("SLOTGUARD_KEEP_DIRS").is_some(),
            started: std::sync::atomic::AtomicBool::new(false),
        };
        let total = cluster.options.masters * (1 + cluster.options.replicas_per_master);
        for i in 0..total {
            let port = free_port_pair().ok_or_else(|| fail("no free port pair below 22767"))?;
            let node_dir = cluster.dir.join(port.to_string());
            std::fs::create_dir_all(&node_dir).map_err(fail)?;
            let (netns, ip) = match &mut cluster.network {
                Some(network) => {
                    let (ns, ip) = network.attach(i)?;
                    (Some(ns), ip)
                }
                None => (None, "127.0.0.1".to_string()),
            };
            let mut node = LocalNode {
                port,
                dir: node_dir,
                ip,
                netns,
                child: None,
            };
            cluster.spawn(&mut node)?;
            cluster.nodes.push(node);
        }
        cluster.form().await?;
        Ok(cluster)
    }

    /// Starts one more node and joins it as a master without slots, as an operator adds
    /// one before a rebalance (not with network namespaces). Returns its index in `nodes`.
    pub async fn add_master(&mut self) -> Result<usize, StartError> {
        let port = free_port_pair().ok_or_else(|| fail("no free port pair below 22767"))?;
        let node_dir = self.dir.join(port.to_string());
        std::fs::create_dir_all(&node_dir).map_err(fail)?;
        let mut node = LocalNode {
            port,
            dir: node_dir,
            ip: "127.0.0.1".to_string(),
            netns: None,
            child: None,
        };
        self.spawn(&mut node)?;
        let addr = node.addr();
        self.nodes.push(node);
        let quick = self.dial(Duration::from_secs(1));
        wait_for(Duration::from_secs(10), || ping(&addr, &quick))
            .await
            .map_err(|_| fail(format!("the server at {addr} did not start")))?;
        let (ip, port) = (self.nodes[0].ip.clone(), self.nodes[0].port.to_string());
        let mut conn = connect(&addr, &self.dial(Duration::from_secs(5))).await?;
        call(&mut conn, &["CLUSTER", "MEET", &ip, &port]).await?;
        let total = self.nodes.len();
        let running: Vec<String> = (self.nodes.iter())
            .filter(|n| n.pid().is_some())
            .map(LocalNode::addr)
            .collect();
        for a in running {
            wait_for(Duration::from_secs(20), || knows_all(&a, total, &quick))
                .await
                .map_err(|_| fail(format!("{a} did not meet the new node")))?;
        }
        Ok(self.nodes.len() - 1)
    }

    /// Keeps the directory (logs, nodes.conf) after drop.
    pub fn keep_dir(&mut self) {
        self.keep_dir = true;
    }

    fn spawn(&self, node: &mut LocalNode) -> Result<(), StartError> {
        self.started
            .store(true, std::sync::atomic::Ordering::Relaxed);
        let mut cmd = match &node.netns {
            // `ip netns exec` execs the server: the child's pid is the server's.
            Some(ns) => {
                let mut cmd = Command::new("ip");
                cmd.args(["netns", "exec", ns, &server_binary()]);
                cmd
            }
            None => Command::new(server_binary()),
        };
        cmd.current_dir(&node.dir);
        match &self.options.tls {
            None => {
                cmd.args(["--port", &node.port.to_string()]);
            }
            Some(tls) => {
                cmd.args(["--port", "0", "--tls-port", &node.port.to_string()])
                    .args(["--tls-cluster", "yes", "--tls-replication", "yes"])
                    .arg("--tls-cert-file")
                    .arg(&tls.cert)
                    .arg("--tls-key-file")
                    .arg(&tls.key)
                    .arg("--tls-ca-cert-file")
                    .arg(&tls.ca);
            }
        }
        if node.netns.is_some() {
            // Reached over the bridge, not loopback: only this process's sandbox can.
            cmd.args(["--protected-mode", "no"]);
        }
        cmd.args(["--bind", &node.ip])
            .args(["--cluster-enabled", "yes"])
            .args(["--cluster-config-file", "nodes.conf"])
            .args([
                "--cluster-node-timeout",
                &self.options.node_timeout_ms.to_string(),
            ])
            .args(["--dir", &node.dir.to_string_lossy()])
            .args(["--logfile", "redis.log"])
            .args(["--save", ""])
            .args(["--appendonly", "no"])
            .args(["--enable-debug-command", "yes"])
            .args(["--repl-diskless-sync-delay", "0"])
            .args(["--daemonize", "no"]);
        if let Some(password) = &self.options.password {
            cmd.args(["--requirepass", password, "--masterauth", password]);
        }
        for (k, v) in &self.options.extra_args {
            cmd.arg(format!("--{k}")).arg(v);
        }
        let child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| fail(format!("cannot start redis-server: {e}")))?;
        node.child = Some(child);
        Ok(())
    }

    /// Starts a stopped node again, with its data directory and nodes.conf.
    pub async fn restart(&mut self, i: usize) -> Result<(), StartError> {
        let mut node = std::mem::replace(
            &mut self.nodes[i],
            LocalNode {
                port: 0,
                dir: PathBuf::new(),
                ip: String::new(),
                netns: None,
                child: None,
            },
        );
        node.kill();
        let result = self.spawn(&mut node);
        let addr = node.addr();
        self.nodes[i] = node;
        result?;
        let dial = self.dial(Duration::from_secs(1));
        wait_for(Duration::from_secs(10), || ping(&addr, &dial)).await
    }

    /// Waits until the replica of master `i` (node `i + masters`) answers `ROLE` as a master.
    pub async fn wait_promoted(&self, i: usize) -> Result<(), StartError> {
        let replica = self.nodes[i + self.options.masters].addr();
        let dial = self.dial(Duration::from_secs(1));
        wait_for(Duration::from_secs(30), || {
            let replica = replica.clone();
            let dial = dial.clone();
            async move {
                let Ok(mut conn) = Conn::dial(&replica, &dial).await else {
                    return false;
                };
                let Ok(Value::Array(role)) = conn.call(&["ROLE"]).await else {
                    return false;
                };
                role.first().and_then(Value::as_str) == Some("master")
            }
        })
        .await
        .map_err(|_| fail(format!("the replica of master {i} was not promoted")))
    }

    /// The credentials the nodes require, if any.
    pub fn auth(&self) -> Option<Auth> {
        self.options.password.clone().map(|password| Auth {
            username: None,
            password,
        })
    }

    /// How to reach the nodes, `limit` for each step.
    pub fn dial(&self, limit: Duration) -> Dial {
        Dial {
            limit,
            auth: self.auth(),
            tls: self.tls.clone(),
        }
    }

    /// Addresses of every node.
    pub fn addrs(&self) -> Vec<String> {
        self.nodes.iter().map(LocalNode::addr).collect()
    }

    async fn form(&mut self) -> Result<(), StartError> {
        let addrs = self.addrs();
        let quick = self.dial(Duration::from_secs(1));
        let dial = self.dial(Duration::from_secs(5));
        for addr in &addrs {
            let addr = addr.clone();
            wait_for(Duration::from_secs(10), || ping(&addr, &quick))
                .await
                .map_err(|_| fail(format!("redis-server at {addr} did not start")))?;
        }
        let masters = self.options.masters;
        let per = crate::protocol::SLOTS / masters;
        let mut ids = Vec::new();
        for (i, addr) in addrs.iter().enumerate() {
            let mut conn = connect(addr, &dial).await?;
            if i < masters {
                let start = i * per;
                let end = if i + 1 == masters {
                    crate::protocol::SLOTS - 1
                } else {
                    start + per - 1
                };
                call(
                    &mut conn,
                    &[
                        "CLUSTER",
                        "ADDSLOTSRANGE",
                        &start.to_string(),
                        &end.to_string(),
                    ],
                )
                .await?;
            }
            let id = call(&mut conn, &["CLUSTER", "MYID"]).await?;
            ids.push(id.as_str().unwrap_or_default().to_string());
        }
        let (first_ip, first_port) = (&self.nodes[0].ip, self.nodes[0].port.to_string());
        for addr in &addrs[1..] {
            let mut conn = connect(addr, &dial).await?;
            call(&mut conn, &["CLUSTER", "MEET", first_ip, &first_port]).await?;
        }
        let total = addrs.len();
        for addr in &addrs {
            let addr = addr.clone();
            wait_for(Duration::from_secs(20), || knows_all(&addr, total, &quick))
                .await
                .map_err(|_| fail(format!("{addr} did not meet every node")))?;
        }
        for (i, addr) in addrs.iter().enumerate().skip(masters) {
            let master = &ids[(i - masters) % masters];
            let mut conn = connect(addr, &dial).await?;
            call(&mut conn, &["CLUSTER", "REPLICATE", master]).await?;
        }
        self.wait_healthy(Duration::from_secs(30)).await
    }

    /// Waits until every running node says `cluster_state:ok` and agrees on who owns every
    /// slot, and every replica's link to its master is up and streaming.
    ///
    /// After a diskless full sync a master streams nothing to the replica until a
    /// `REPLCONF ACK` that comes after the transfer ("Waiting for REPLCONF ACK from slave to
    /// enable streaming"). The replica sends one as it finishes loading, which may reach
    /// the master first and count for nothing; the next comes with the replica's cron, up
    /// to a second later. A master killed in that second leaves an heir with none of the
    /// writes since the sync (the coordination test lost acknowledged writes so). So when a
    /// node was started since the last wait, the wait lasts a second and a bit longer.
    pub async fn wait_healthy(&self, limit: Duration) -> Result<(), StartError> {
        let addrs: Vec<String> = self
            .nodes
            .iter()
            .filter(|n| n.child.is_some())
            .map(LocalNode::addr)
            .collect();
        let dial = self.dial(Duration::from_secs(1));
        let settle = || async {
            wait_for(limit, || healthy(&addrs, &dial))
                .await
                .map_err(|_| fail("the cluster did not become healthy in time"))
        };
        settle().await?;
        if self
            .started
            .swap(false, std::sync::atomic::Ordering::Relaxed)
        {
            tokio::time::sleep(Duration::from_millis(1200)).await;
            settle().await?;
        }
        Ok(())
    }
}

impl LocalCluster {
    /// Cuts the link between nodes `i` and `j` both ways (a blackhole route to the other
    /// in each one's namespace); this process still reaches both. `Options::namespaces`
    /// only.
    pub fn cut(&self, i: usize, j: usize) -> Result<(), StartError> {
        self.route("add", i, j)?;
        self.route("add", j, i)
    }

    /// Mends a link [`LocalCluster::cut`] cut.
    pub fn mend(&self, i: usize, j: usize) -> Result<(), StartError> {
        self.route("del", i, j)?;
        self.route("del", j, i)
    }

    fn route(&self, op: &str, from: usize, to: usize) -> Result<(), StartError> {
        let ns = self.nodes[from]
            .netns
            .as_deref()
            .ok_or_else(|| fail("links can be cut only between nodes in namespaces"))?;
        let to = format!("{}/32", self.nodes[to].ip);
        ip(Some(ns), &["route", op, "blackhole", &to])
    }
}

impl Drop for LocalCluster {
    fn drop(&mut self) {
        for node in &mut self.nodes {
            node.kill();
        }
        if !self.keep_dir {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

async fn connect(addr: &str, dial: &Dial) -> Result<Conn, StartError> {
    Conn::dial(addr, dial).await.map_err(fail)
}

async fn call(conn: &mut Conn, args: &[&str]) -> Result<Value, StartError> {
    conn.call_ok(args).await.map_err(fail)
}

/// True when the server at `addr` answers `PING`.
pub async fn ping(addr: &str, dial: &Dial) -> bool {
    match Conn::dial(addr, dial).await {
        Ok(mut conn) => matches!(conn.call(&["PING"]).await, Ok(Value::Simple(_))),
        Err(_) => false,
    }
}

async fn knows_all(addr: &str, total: usize, dial: &Dial) -> bool {
    let Ok(mut conn) = Conn::dial(addr, dial).await else {
        return false;
    };
    let Ok(Value::Bulk(text)) = conn.call(&["CLUSTER", "NODES"]).await else {
        return false;
    };
    let text = String::from_utf8_lossy(&text);
    text.lines().count() == total && !text.contains("handshake")
}

/// Each master's address and slot ranges, as one node sees them.
type OwnerView = Vec<(String, Vec<(u16, u16)>)>;

/// True when every node answers `cluster_state:ok`, every replica's link is up and it has
/// acknowledged its master's stream (see [`replicas_streaming`]), and the nodes' views
/// agree on which address owns each slot.
pub async fn healthy(addrs: &[String], dial: &Dial) -> bool {
    let mut first_view: Option<OwnerView> = None;
    for addr in addrs {
        let Ok(mut conn) = Conn::dial(addr, dial).await else {
            return false;
        };
        let Ok(Value::Bulk(info)) = conn.call(&["CLUSTER", "INFO"]).await else {
            return false;
        };
        if !String::from_utf8_lossy(&info).contains("cluster_state:ok") {
            return false;
        }
        let Ok(Value::Bulk(repl)) = conn.call(&["INFO", "replication"]).await else {
            return false;
        };
        let repl = String::from_utf8_lossy(&repl);
        if repl.contains("role:slave") && !repl.contains("master_link_status:up") {
            return false;
        }
        if !replicas_streaming(&repl) {
            return false;
        }
        let Ok(Value::Bulk(text)) = conn.call(&["CLUSTER", "NODES"]).await else {
            return false;
        };
        let Ok(lines) = nodes::parse(&String::from_utf8_lossy(&text), "127.0.0.1") else {
            return false;
        };
        let mut view: OwnerView = lines
            .into_iter()
            .filter(|l| l.master && !l.slots.is_empty() && !l.fail)
            .map(|l| (l.addr, l.slots))
            .collect();
        view.sort();
        match &first_view {
            None => first_view = Some(view),
            Some(first) if *first != view => return false,
            Some(_) => {}
        }
    }
    true
}

/// True when a master's `INFO replication` shows every replica online and having
/// acknowledged some offset (`offset=0` until its first `REPLCONF ACK`). Not proof that the
/// master streams to it yet: see [`LocalCluster::wait_healthy`].
fn replicas_streaming(repl: &str) -> bool {
    repl.lines()
        .filter(|l| l.starts_with("slave") && l.contains("state="))
        .all(|l| {
            let field = |name: &str| {
                l.split([':', ','])
                    .find_map(|kv| kv.strip_prefix(name)?.strip_prefix('='))
            };
            field("state") == Some("online")
                && field("offset")
                    .and_then(|o| o.parse::<u64>().ok())
                    .is_some_and(|o| o > 0)
        })
}

/// Polls `check` every 50 ms until it is true or `limit` passes.
pub async fn wait_for<F, Fut>(limit: Duration, mut check: F) -> Result<(), StartError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + limit;
    loop {
        if check().await {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(fail("timed out"));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Ports (data and bus) already given to a node of this process, not yet bound maybe.
static HANDED_OUT: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());

/// A port `p` in 10000..22000 such that `p` and `p + 10000` (the cluster bus) are free now.
pub fn free_port_pair() -> Option<u16> {
    use std::net::TcpListener;
    let seed = std::process::id() as u64 ^ Instant::now().elapsed().as_nanos() as u64;
    let mut x = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407)
        ^ (std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64));
    for _ in 0..1000 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let port = 10000 + (x % 12000) as u16;
        let mut taken = HANDED_OUT.lock().unwrap_or_else(|e| e.into_inner());
        // Data ports (10000..22000) and bus ports (20000..32000) overlap: neither port of
        // the pair may be one already promised to another node, as either.
        if taken.contains(&port) || taken.contains(&(port + 10000)) {
            continue;
        }
        let data = TcpListener::bind(("127.0.0.1", port));
        let bus = TcpListener::bind(("127.0.0.1", port + 10000));
        if data.is_ok() && bus.is_ok() {
            taken.push(port);
            taken.push(port + 10000);
            return Some(port);
        }
    }
    None
}

/// A free port for a listener (the proxy's), picked by the OS.
pub fn free_port() -> Option<u16> {
    std::net::TcpListener::bind("127.0.0.1:0")
        .ok()?
        .local_addr()
        .ok()
        .map(|a| a.port())
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_replica_counts_as_streaming_once_it_has_acknowledged() {
        let line = |state: &str, offset: u64| {
            format!(
                "role:master\nslave0:ip=127.0.0.1,port=10256,state={state},offset={offset},lag=0\n"
            )
        };
        assert!(!super::replicas_streaming(&line("online", 0)), "no ACK yet");
        assert!(super::replicas_streaming(&line("online", 5310)));
        assert!(!super::replicas_streaming(&line("wait_bgsave", 0)));
        assert!(super::replicas_streaming(
            "role:slave\nslave_repl_offset:10\n"
        ));
    }
}
