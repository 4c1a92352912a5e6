//! A Jepsen-style nemesis and checker: faults that overlap, on a 3-master, 3-replica
//! cluster, while clients run registers, counters, lists and transactions through the
//! proxy and record every operation; then a checker reads the history.
//!
//! The proxy runs as a process of its own (it is killed with -9 and restarted on its
//! journal, and reloaded with SIGHUP). A new fault starts every 1-4 s whether or not the
//! cluster has healed from the last: a node killed is started again 2-8 s later, a
//! stopped one continued, a partition mended, and meanwhile the next fault comes.
//!
//! Faults: kill -9 of a master or a replica; SIGSTOP of a master shorter and longer than
//! the node timeout; `CLUSTER FAILOVER`; a slot migration, whole or cut after IMPORTING,
//! after MIGRATING, mid-keys, after the target's `SETSLOT NODE` or after the source's
//! (left for the proxy, or with the source or target killed); a master cut from every
//! other node in network namespaces (as root); kill -9 of the proxy; SIGHUP with changed
//! settings; SIGSTOP of etcd, when it is installed: the proxy then runs with
//! `[coordination]`, its authority a lease there and its journal shared there.
//!
//! The fault model: a node killed with -9 loses its memory (the nodes run without
//! persistence, as caches do), so a kill never takes a shard's last copy: a master is
//! killed only while its replica is linked and streaming. Anything else may come at any
//! time, on any shard, healing or not.
//!
//! `nemesis_short` is CI's run (75 s). Longer runs are started by hand:
//!
//! ```text
//! scripts/nemesis --minutes 30 --seed 42 [--ack master] [--valkey]
//! ```
//!
//! Every run prints its seed and its timeline, and writes an HTML report (the picture,
//! the counts, every anomaly with its operations) to `target/nemesis/`.

#[path = "../common/mod.rs"]
mod common;

mod checker;
mod history;
mod report;

use std::process::{Child, Command};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::etcd::Etcd;
use history::{Op, Rng, Shared};
use report::Fault;
use slotguard::client::{query, Dial};
use slotguard::config::Ack;
use slotguard::localcluster::{free_port, ping, wait_for, LocalCluster, Options};
use slotguard::protocol::Value;

const HOLD_TIMEOUT: Duration = Duration::from_secs(20);
const NODE_TIMEOUT_MS: u64 = 1000;
const MASTERS: usize = 3;

/// The proxy under test: a process of its own, on a port that stays across restarts.
struct Proxy {
    child: Option<Child>,
    port: u16,
    path: std::path::PathBuf,
    log: std::path::PathBuf,
    seeds: Vec<String>,
    state: std::path::PathBuf,
    ack: Ack,
    /// Which of the reloadable settings' variants is in the file.
    variant: usize,
    /// etcd's URL when the proxy coordinates through it.
    etcd: Option<String>,
}

/// `durability.wait_timeout` and `log.level` as each SIGHUP leaves them.
const VARIANTS: [(&str, &str); 3] = [
    ("100ms", "info"),
    ("50ms", "slotguard=info,warn"),
    ("200ms", "info"),
];

impl Proxy {
    fn new(cluster: &LocalCluster, ack: Ack, etcd: Option<String>) -> Proxy {
        let port = free_port().expect("a free port");
        Proxy {
            child: None,
            port,
            path: cluster.dir.join("nemesis-proxy.toml"),
            log: cluster.dir.join("nemesis-proxy.log"),
            seeds: cluster.addrs(),
            state: cluster.dir.join("nemesis-proxy-state"),
            ack,
            variant: 0,
            etcd,
        }
    }

    fn write_config(&self) {
        let (wait, level) = VARIANTS[self.variant % VARIANTS.len()];
        let seeds: Vec<String> = self.seeds.iter().map(|s| format!("\"{s}\"")).collect();
        let mut text = format!(
            "listen = \"127.0.0.1:{port}\"\nseeds = [{seeds}]\nstate_dir = \"{state}\"\n\
             [repair]\nmode = \"auto\"\n[hold]\ntimeout = \"{hold}s\"\n\
             [durability]\nack = \"{ack}\"\nwait_timeout = \"{wait}\"\n[log]\nlevel = \"{level}\"\n",
            port = self.port,
            seeds = seeds.join(", "),
            state = self.state.display(),
            hold = HOLD_TIMEOUT.as_secs(),
            ack = match self.ack {
                Ack::Master => "master",
                Ack::Replicated => "replicated",
            },
        );
        if let Some(url) = &self.etcd {
            text += &format!(
                "[coordination]\netcd = [\"{url}\"]\nprefix = \"/nemesis/\"\nname = \"nemesis\"\nlease_ttl = \"2s\"\n"
            );
        }
        std::fs::write(&self.path, text).expect("write the proxy's configuration");
    }

    /// Starts it and waits until it answers (once it has its first slot map). One
    /// running already is killed first: two would share the port, and the nemesis would
    /// kill only the one it knows.
    async fn start(&mut self) {
        self.kill();
        self.write_config();
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_slotguard"))
            .args(["--config", self.path.to_str().unwrap()])
            .stderr(log)
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("the proxy starts");
        self.child = Some(child);
        let addr = format!("127.0.0.1:{}", self.port);
        let dial = Dial::new(Duration::from_secs(2));
        wait_for(Duration::from_secs(60), || ping(&addr, &dial))
            .await
            .expect("the proxy answers");
    }

    /// kill -9 by pid.
    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Changes the reloadable settings in its file and sends SIGHUP.
    fn reload(&mut self) {
        self.variant += 1;
        self.write_config();
        if let Some(child) = &self.child {
            let _ = Command::new("kill")
                .args(["-HUP", &child.id().to_string()])
                .status();
        }
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.kill();
    }
}

/// What the nemesis does next, at a time of its choosing.
#[derive(Debug, Clone)]
enum Action {
    /// Start a new fault.
    Fault,
    /// A killed node starts again, once its heir (the replica of a killed master) took
    /// over, or past the deadline (seconds since the run began).
    Restart(usize, Option<usize>, f64),
    /// A stopped node continues.
    Continue(usize),
    /// A master cut from the others is joined again.
    Mend(usize),
    /// The killed proxy starts again on its journal.
    ProxyStart,
    /// The stopped etcd continues.
    EtcdContinue,
}

/// A node's role and replication, as it says (`ROLE`).
#[derive(Debug, Clone)]
enum Role {
    Master,
    /// Its master's port, and whether the link is up (`connected`).
    Replica {
        master_port: u16,
        connected: bool,
    },
    Unknown,
}

struct Nemesis {
    cluster: LocalCluster,
    proxy: Proxy,
    rng: Rng,
    shared: Arc<Shared>,
    faults: Vec<Fault>,
    /// Actions due, with when (seconds since the run began) and the fault they end.
    due: Vec<(f64, Action, Option<usize>)>,
    /// Nodes with a fault still on them (down, stopped, cut): no second one for now.
    busy: Vec<bool>,
    partitions: bool,
    /// The etcd the proxy coordinates through, and whether it is stopped.
    etcd: Option<Etcd>,
    etcd_stopped: bool,
    dial: Dial,
    /// Since when the next fault has waited for the cluster to serve every slot again.
    waiting_since: Option<f64>,
}

/// The longest a new fault waits for the cluster to say `cluster_state:ok` everywhere.
const MOST_WAIT_FOR_OK: f64 = 15.0;

impl Nemesis {
    fn log(&self, what: &str) {
        eprintln!("nemesis {:>7.1}s: {what}", self.shared.now());
    }

    fn begin(&mut self, what: String) -> usize {
        self.log(&what);
        let now = self.shared.now();
        self.faults.push(Fault {
            start: now,
            end: now,
            what,
        });
        self.faults.len() - 1
    }

    fn end(&mut self, fault: Option<usize>) {
        if let Some(i) = fault {
            self.faults[i].end = self.shared.now();
        }
    }

    fn after(&mut self, min_ms: u64, max_ms: u64, action: Action, fault: Option<usize>) {
        let wait = (min_ms + self.rng.below(max_ms - min_ms + 1)) as f64 / 1000.0;
        self.due.push((self.shared.now() + wait, action, fault));
    }

    /// True when every node with no fault on it says `cluster_state:ok`.
    async fn cluster_ok(&self) -> bool {
        for (i, node) in self.cluster.nodes.iter().enumerate() {
            if self.busy[i] {
                continue;
            }
            match ask(&node.addr(), &["CLUSTER", "INFO"], &self.dial).await {
                Ok(Value::Bulk(info)) if info.windows(16).any(|w| w == b"cluster_state:ok") => {}
                _ => return false,
            }
        }
        true
    }

    async fn role(&self, i: usize) -> Role {
        let node = &self.cluster.nodes[i];
        if node.pid().is_none() {
            return Role::Unknown;
        }
        match ask(&node.addr(), &["ROLE"], &self.dial).await {
            Ok(Value::Array(role)) => match role.first().and_then(Value::as_str) {
                Some("master") => Role::Master,
                Some("slave") => Role::Replica {
                    master_port: role.get(2).and_then(Value::as_int).unwrap_or(0) as u16,
                    connected: role.get(3).and_then(Value::as_str) == Some("connected"),
                },
                _ => Role::Unknown,
            },
            _ => Role::Unknown,
        }
    }

    /// Each master that owns slots (by index), with its replica and whether that replica
    /// is linked and streaming.
    async fn shards(&self) -> Vec<(usize, Option<(usize, bool)>)> {
        let mut roles = Vec::new();
        for i in 0..self.cluster.nodes.len() {
            roles.push(self.role(i).await);
        }
        let mut shards = Vec::new();
        for (m, role) in roles.iter().enumerate() {
            if !matches!(role, Role::Master) || self.owned(m).await.is_empty() {
                continue;
            }
            let port = self.cluster.nodes[m].port;
            let replica = roles.iter().enumerate().find_map(|(r, role)| match role {
                Role::Replica {
                    master_port,
                    connected,
                } if *master_port == port => Some((r, *connected)),
                _ => None,
            });
            shards.push((m, replica));
        }
        shards
    }

    /// The slot ranges node `i` says it owns.
    async fn owned(&self, i: usize) -> Vec<(u16, u16)> {
        let node = &self.cluster.nodes[i];
        let Ok(Value::Array(ranges)) = ask(&node.addr(), &["CLUSTER", "SLOTS"], &self.dial).await
        else {
            return Vec::new();
        };
        ranges
            .iter()
            .filter_map(|r| {
                let r = r.as_array()?;
                let owner = r.get(2)?.as_array()?;
                (owner.get(1)?.as_int()? == node.port as i64)
                    .then(|| Some((r[0].as_int()? as u16, r[1].as_int()? as u16)))?
            })
            .collect()
    }

    /// A master may be killed only while its replica is linked (else the kill takes the
    /// shard's last copy) and every other master is up (else no majority elects the
    /// replica, and the killed master, started again empty, keeps its slots and wipes
    /// its replica: a seed-1 run lost 49,000 writes that way).
    async fn may_kill_master(&self, m: usize) -> Option<usize> {
        let shards = self.shards().await;
        let others_up = shards.len() == MASTERS
            && shards
                .iter()
                .all(|&(master, _)| master == m || !self.busy[master]);
        let replica = shards.iter().find_map(|&(master, replica)| match replica {
            Some((r, true)) if master == m && !self.busy[r] => Some(r),
            _ => None,
        });
        replica.filter(|_| others_up)
    }

    /// A node that exited on its own (the server crashed: Valkey 9.1.2 once failed an
    /// assertion in `replicationSendAck` while a replica's RDB download broke, seed 213's
    /// second run) is started again 2 s later, as an operator's supervisor would, and is a
    /// fault of its own in the report: the run goes on measuring the proxy, not a shard
    /// left without its node. A master waits for its replica to take over first, as after
    /// a kill.
    async fn revive_crashed(&mut self) {
        for i in 0..self.cluster.nodes.len() {
            let Some(status) = self.cluster.nodes[i].exited() else {
                continue;
            };
            let addr = self.cluster.nodes[i].addr();
            let fault = self.begin(format!(
                "node {i} ({addr}) exited on its own ({status}): the server crashed (its log says why); it starts again"
            ));
            let port = self.cluster.nodes[i].port;
            let mut heir = None;
            for r in (0..self.cluster.nodes.len()).filter(|&r| r != i) {
                if let Role::Replica { master_port, .. } = self.role(r).await {
                    if master_port == port {
                        heir = Some(r);
                    }
                }
            }
            self.busy[i] = true;
            if let Some(r) = heir {
                self.busy[r] = true;
            }
            let due = self.shared.now() + 2.0;
            self.due
                .push((due, Action::Restart(i, heir, due + 30.0), Some(fault)));
        }
    }

    /// Migrations still open at the end with both ends alive (a cut one left to the proxy,
    /// or one stopped by an error, as in seed 117's last second) are finished with
    /// `slotguard migrate`, as an operator would: the proxy serves a live migration
    /// through and leaves it to whoever runs it, so without this the final check would
    /// fail on the nemesis's own unfinished work.
    async fn finish_open_migrations(&mut self) {
        let mut open: Vec<(String, String, String)> = Vec::new();
        for node in &self.cluster.nodes {
            let Ok(Value::Bulk(text)) = ask(&node.addr(), &["CLUSTER", "NODES"], &self.dial).await
            else {
                continue;
            };
            let text = String::from_utf8_lossy(&text).into_owned();
            let addr_of = |id: &str| {
                text.lines().find_map(|l| {
                    let mut f = l.split(' ');
                    (f.next() == Some(id))
                        .then(|| f.next())?
                        .map(|a| a.split('@').next().unwrap_or(a).to_string())
                })
            };
            let Some(me) = text.lines().find(|l| l.contains("myself")) else {
                continue;
            };
            for field in me.split(' ').filter(|f| f.contains("->-")) {
                let inner = field.trim_matches(|c| c == '[' || c == ']');
                if let Some((slot, target)) = inner.split_once("->-") {
                    if let Some(to) = addr_of(target) {
                        open.push((slot.to_string(), node.addr(), to));
                    }
                }
            }
        }
        for (slot, from, to) in open {
            let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_slotguard"))
                .args([
                    "migrate", "--legacy", "--seed", &from, "--slots", &slot, "--to", &to,
                ])
                .env("RUST_LOG", "slotguard=warn")
                .output()
                .await;
            let ok = out.as_ref().is_ok_and(|o| o.status.success());
            self.log(&format!(
                "slot {slot} left open (migrating from {from} to {to}): finished with `slotguard migrate`, as an operator would: {}",
                if ok { "done" } else { "it failed" }
            ));
        }
    }

    /// kill -9 of a node; it starts again 2-8 s later. A master's replica is held busy
    /// (no fault of its own) until it took over.
    fn kill(&mut self, i: usize, why: &str, heir: Option<usize>) {
        let addr = self.cluster.nodes[i].addr();
        let fault = self.begin(format!("kill -9 of {why} {addr} (node {i})"));
        self.cluster.nodes[i].kill();
        self.busy[i] = true;
        if let Some(r) = heir {
            self.busy[r] = true;
        }
        let due = self.shared.now() + (2000 + self.rng.below(6001)) as f64 / 1000.0;
        self.due
            .push((due, Action::Restart(i, heir, due + 30.0), Some(fault)));
    }

    async fn run(&mut self, action: Action, fault: Option<usize>) {
        match action {
            Action::Fault => {
                self.revive_crashed().await;
                // The next fault comes once every node the nemesis has not faulted says
                // the cluster is up, as in the issue's soak; replicas may still sync,
                // killed nodes may still be down, repairs may be half done. Faults that
                // keep the cluster down beyond hold.timeout would only measure the
                // cluster's own downtime. What ends a fault is never held up by this.
                let now = self.shared.now();
                let since = *self.waiting_since.get_or_insert(now);
                if now - since < MOST_WAIT_FOR_OK && !self.cluster_ok().await {
                    self.due.push((now + 0.25, Action::Fault, None));
                    return;
                }
                if now - since >= MOST_WAIT_FOR_OK {
                    self.log(&format!(
                        "the cluster was still down after {MOST_WAIT_FOR_OK} s: a fault comes anyway"
                    ));
                }
                self.waiting_since = None;
                self.fault().await;
                self.after(1000, 4000, Action::Fault, None);
            }
            Action::Restart(i, Some(heir), deadline)
                if !matches!(self.role(heir).await, Role::Master) =>
            {
                // Started again before its replica took over, an empty master would keep
                // its slots: later, unless the deadline passed.
                let now = self.shared.now();
                if now < deadline {
                    self.due
                        .push((now + 0.5, Action::Restart(i, Some(heir), deadline), fault));
                    return;
                }
                self.log(&format!("node {heir} never took over from node {i}"));
                self.busy[heir] = false;
                Box::pin(self.run(Action::Restart(i, None, deadline), fault)).await;
            }
            Action::Restart(i, heir, _) => {
                if let Some(heir) = heir {
                    self.busy[heir] = false;
                }
                if let Err(e) = self.cluster.restart(i).await {
                    self.log(&format!("restart of node {i} failed: {e}"));
                }
                self.busy[i] = false;
                self.end(fault);
                self.log(&format!("node {i} started again"));
            }
            Action::Continue(i) => {
                let _ = self.cluster.nodes[i].signal("CONT");
                self.busy[i] = false;
                self.end(fault);
                self.log(&format!("node {i} continued"));
            }
            Action::Mend(m) => {
                for j in 0..self.cluster.nodes.len() {
                    if j != m {
                        let _ = self.cluster.mend(m, j);
                    }
                }
                self.busy[m] = false;
                self.end(fault);
                self.log(&format!("node {m} joined again"));
            }
            Action::EtcdContinue => {
                if let Some(etcd) = &self.etcd {
                    etcd.signal("CONT");
                }
                self.etcd_stopped = false;
                self.end(fault);
                self.log("etcd continued");
            }
            Action::ProxyStart => {
                self.proxy.start().await;
                self.shared.proxy_down.store(false, Ordering::SeqCst);
                self.end(fault);
                self.log("the proxy started again on its journal");
            }
        }
    }

    /// Picks a fault and starts it; what ends it is scheduled.
    async fn fault(&mut self) {
        let shards = self.shards().await;
        let layout: Vec<String> = shards
            .iter()
            .map(|(m, r)| match r {
                Some((r, true)) => format!("{m}+{r}"),
                Some((r, false)) => format!("{m}+({r} syncing)"),
                None => format!("{m} alone"),
            })
            .collect();
        self.log(&format!("shards: {}", layout.join(", ")));
        let free: Vec<_> = shards.iter().filter(|(m, _)| !self.busy[*m]).collect();
        let Some(&&(m, replica)) = free.get(self.rng.below(free.len() as u64) as usize) else {
            self.log("every master is busy: no fault this time");
            return;
        };
        let addr = self.cluster.nodes[m].addr();
        let mut kinds = 9;
        let mut optional = |on: bool| {
            kinds += on as u64;
            on.then_some(kinds - 1)
        };
        let partition = optional(self.partitions);
        let etcd_pause = optional(self.etcd.is_some());
        match self.rng.below(kinds) {
            0 => match self.may_kill_master(m).await {
                Some(heir) => self.kill(m, "master", Some(heir)),
                None => self.log("no master to kill: a replica is not linked or a master is down"),
            },
            1 => match replica {
                Some((r, _)) if !self.busy[r] => self.kill(r, "replica", None),
                _ => self.log("no replica to kill"),
            },
            kind @ (2 | 3) => {
                let (what, min, max) = if kind == 2 {
                    ("shorter", 200, 800)
                } else {
                    ("longer", 2000, 4000)
                };
                let fault = self.begin(format!(
                    "SIGSTOP of master {addr} (node {m}), {what} than the node timeout"
                ));
                let _ = self.cluster.nodes[m].signal("STOP");
                self.busy[m] = true;
                self.after(min, max, Action::Continue(m), Some(fault));
            }
            4 => match replica {
                Some((r, true)) if !self.busy[r] => {
                    let raddr = self.cluster.nodes[r].addr();
                    let fault = self.begin(format!(
                        "CLUSTER FAILOVER on {raddr} (node {r}), replica of {addr}"
                    ));
                    let _ = ask(&raddr, &["CLUSTER", "FAILOVER"], &self.dial).await;
                    self.end(Some(fault));
                }
                _ => self.log("no linked replica to fail over to"),
            },
            kind @ (5 | 6) => {
                let targets: Vec<usize> = shards
                    .iter()
                    .map(|s| s.0)
                    .filter(|&t| t != m && !self.busy[t])
                    .collect();
                if targets.is_empty() {
                    self.log("no target for a migration");
                    return;
                }
                let to = targets[self.rng.below(targets.len() as u64) as usize];
                let cut = (kind == 6).then(|| self.rng.below(5) as usize);
                self.migrate(m, to, cut).await;
            }
            7 if self.shared.proxy_down.load(Ordering::SeqCst) => {
                self.log("the proxy is down already");
            }
            7 => {
                let fault = self.begin("kill -9 of the proxy".into());
                // Before the kill: a client that sees its connection go sees the bump.
                self.shared.proxy_down.store(true, Ordering::SeqCst);
                self.shared.proxy_epoch.fetch_add(1, Ordering::SeqCst);
                self.proxy.kill();
                self.after(300, 2000, Action::ProxyStart, Some(fault));
            }
            8 => {
                let (wait, level) = VARIANTS[(self.proxy.variant + 1) % VARIANTS.len()];
                let fault = self.begin(format!(
                    "SIGHUP of the proxy: durability.wait_timeout = {wait}, log.level = {level}"
                ));
                self.proxy.reload();
                self.end(Some(fault));
            }
            kind if Some(kind) == etcd_pause => {
                if self.etcd_stopped {
                    self.log("etcd is stopped already");
                    return;
                }
                let (min, max) = if self.rng.below(2) == 0 {
                    (500, 1500)
                } else {
                    (2500, 5000)
                };
                let fault = self.begin(format!(
                    "SIGSTOP of etcd, {min}-{max} ms (the proxy's lease lasts 2 s)"
                ));
                if let Some(etcd) = &self.etcd {
                    etcd.signal("STOP");
                }
                self.etcd_stopped = true;
                self.after(min, max, Action::EtcdContinue, Some(fault));
            }
            kind if Some(kind) == partition => {
                let fault = self.begin(format!(
                    "partition: master {addr} (node {m}) cut from every other node"
                ));
                for j in 0..self.cluster.nodes.len() {
                    if j != m {
                        let _ = self.cluster.cut(m, j);
                    }
                }
                self.busy[m] = true;
                self.after(1500, 4000, Action::Mend(m), Some(fault));
            }
            _ => unreachable!("below(kinds)"),
        }
    }

    /// Moves one slot of master `from` (with keys, when it finds one) to master `to`,
    /// cut after step `cut` when given: 0 after IMPORTING, 1 after MIGRATING, 2 after the
    /// first keys, 3 after the target's SETSLOT NODE, 4 after the source's. A cut
    /// migration is left for the proxy, or its source or target is killed.
    async fn migrate(&mut self, from: usize, to: usize, cut: Option<usize>) {
        let (a, b) = (
            self.cluster.nodes[from].addr(),
            self.cluster.nodes[to].addr(),
        );
        let ranges = self.owned(from).await;
        if ranges.is_empty() {
            return;
        }
        let mut slot = 0;
        for _ in 0..20 {
            let (lo, hi) = ranges[self.rng.below(ranges.len() as u64) as usize];
            slot = lo + self.rng.below((hi - lo + 1) as u64) as u16;
            let keys = ask(
                &a,
                &["CLUSTER", "COUNTKEYSINSLOT", &slot.to_string()],
                &self.dial,
            )
            .await;
            if matches!(keys, Ok(Value::Int(n)) if n > 0) {
                break;
            }
        }
        let slot = slot.to_string();
        const STEPS: [&str; 5] = [
            "after IMPORTING",
            "after MIGRATING",
            "mid-keys",
            "after the target's SETSLOT NODE",
            "after the source's SETSLOT NODE",
        ];
        let fault = self.begin(match cut {
            None => format!("migration of slot {slot} from {a} to {b}"),
            Some(step) => format!(
                "migration of slot {slot} from {a} to {b}, cut {}",
                STEPS[step]
            ),
        });
        let id = |addr: String, dial: Dial| async move {
            match ask(&addr, &["CLUSTER", "MYID"], &dial).await {
                Ok(Value::Bulk(id)) => Some(String::from_utf8_lossy(&id).into_owned()),
                _ => None,
            }
        };
        let (Some(source), Some(target)) = (
            id(a.clone(), self.dial.clone()).await,
            id(b.clone(), self.dial.clone()).await,
        ) else {
            self.end(Some(fault));
            return;
        };
        let mut step = 0;
        let ran = async {
            let call = |addr: &str, args: Vec<&str>| {
                let (addr, dial) = (addr.to_string(), self.dial.clone());
                let args: Vec<String> = args.into_iter().map(String::from).collect();
                async move {
                    match ask(&addr, &args, &dial).await {
                        Ok(Value::Error(e)) => Err(String::from_utf8_lossy(&e).into_owned()),
                        Ok(v) => Ok(v),
                        Err(e) => Err(e.to_string()),
                    }
                }
            };
            call(&b, vec!["CLUSTER", "SETSLOT", &slot, "IMPORTING", &source]).await?;
            if cut == Some(0) {
                return Ok(());
            }
            step = 1;
            call(&a, vec!["CLUSTER", "SETSLOT", &slot, "MIGRATING", &target]).await?;
            if cut == Some(1) {
                return Ok(());
            }
            step = 2;
            let (host, port) = b.rsplit_once(':').unwrap();
            loop {
                let Value::Array(keys) =
                    call(&a, vec!["CLUSTER", "GETKEYSINSLOT", &slot, "10"]).await?
                else {
                    return Err("GETKEYSINSLOT".into());
                };
                if keys.is_empty() {
                    break;
                }
                let keys: Vec<String> = keys
                    .iter()
                    .filter_map(|k| k.as_str().map(String::from))
                    .collect();
                let mut args = vec!["MIGRATE", host, port, "", "0", "5000", "KEYS"];
                args.extend(keys.iter().map(String::as_str));
                call(&a, args).await?;
                if cut == Some(2) {
                    return Ok(());
                }
            }
            step = 3;
            call(&b, vec!["CLUSTER", "SETSLOT", &slot, "NODE", &target]).await?;
            if cut == Some(3) {
                return Ok(());
            }
            step = 4;
            call(&a, vec!["CLUSTER", "SETSLOT", &slot, "NODE", &target]).await?;
            if cut == Some(4) {
                return Ok(());
            }
            step = 5;
            Ok::<(), String>(())
        }
        .await;
        if let Err(e) = ran {
            self.log(&format!("the migration stopped at step {step}: {e}"));
        }
        self.end(Some(fault));
        if cut.is_some() {
            let (node, which) = match self.rng.below(3) {
                0 => (Some(from), "source"),
                1 => (Some(to), "target"),
                _ => (None, ""),
            };
            let heir = match node {
                Some(n) => self.may_kill_master(n).await.map(|heir| (n, heir)),
                None => None,
            };
            match heir {
                Some((n, heir)) => {
                    self.kill(n, &format!("the cut migration's {which}"), Some(heir))
                }
                None => self.log("the cut migration is left for the proxy"),
            }
        }
    }

    /// Runs the faults for `length`; every one still on then ends as planned (nodes
    /// started, continued, joined, the proxy started).
    async fn unleash(&mut self, length: Duration) {
        self.due
            .push((self.shared.now() + 2.0, Action::Fault, None));
        let stop_at = self.shared.now() + length.as_secs_f64();
        loop {
            let next = self
                .due
                .iter()
                .enumerate()
                .min_by(|a, b| a.1 .0.total_cmp(&b.1 .0))
                .map(|(i, _)| i);
            let Some(i) = next else { break };
            let (at, action, fault) = self.due.swap_remove(i);
            if at >= stop_at && matches!(action, Action::Fault) {
                continue; // no new fault past the end; what ends the others still comes
            }
            let wait = at - self.shared.now();
            if wait > 0.0 {
                tokio::time::sleep(Duration::from_secs_f64(wait)).await;
            }
            self.run(action, fault).await;
        }
    }
}

struct Outcome {
    /// Keys the last reads did not get to in time.
    unread: usize,
    history: Vec<Op>,
    faults: Vec<Fault>,
    verdict: checker::Verdict,
    client_errors: usize,
    check: Result<(), String>,
    summary: String,
}

/// One run: the cluster, the proxy, the clients and the nemesis for `length`.
async fn nemesis(length: Duration, seed: u64, ack: Ack) -> Outcome {
    let partitions = std::env::var("NEMESIS_PARTITIONS").as_deref() != Ok("0") && is_root();
    let coordinate = std::env::var("NEMESIS_ETCD").as_deref() != Ok("0");
    eprintln!(
        "nemesis: seed {seed}, {}s, ack = {ack:?}, partitions {}, server {}",
        length.as_secs(),
        if partitions { "on" } else { "off (not root)" },
        slotguard::localcluster::server_binary()
    );
    let cluster = LocalCluster::start(Options {
        masters: MASTERS,
        replicas_per_master: 1,
        node_timeout_ms: NODE_TIMEOUT_MS,
        namespaces: partitions,
        ..Options::default()
    })
    .await
    .expect("the cluster starts");
    let etcd = match coordinate {
        true => Etcd::start(&cluster.dir).await,
        false => None,
    };
    eprintln!(
        "nemesis: [coordination] {}",
        match &etcd {
            Some(etcd) => format!("through etcd at {} (and SIGSTOP of etcd)", etcd.url()),
            None => "off".into(),
        }
    );
    let mut proxy = Proxy::new(&cluster, ack, etcd.as_ref().map(Etcd::url));
    proxy.start().await;
    let shared = Arc::new(Shared {
        url: format!("redis://127.0.0.1:{}/", proxy.port),
        t0: Instant::now(),
        stop: AtomicBool::new(false),
        proxy_epoch: AtomicU64::new(0),
        proxy_down: AtomicBool::new(false),
        lanes: (0..history::REGISTER_LANES + history::PAIRS)
            .map(|_| (AtomicU64::new(0), AtomicUsize::new(0)))
            .collect(),
        op_limit: HOLD_TIMEOUT + Duration::from_secs(10),
    });
    let mut rng = Rng(seed | 1);
    let mut clients = tokio::task::JoinSet::new();
    for id in 0..6 {
        clients.spawn(history::registers(shared.clone(), id, Rng(rng.next() | 1)));
    }
    for id in 6..9 {
        clients.spawn(history::counter(shared.clone(), id));
    }
    for id in 9..11 {
        clients.spawn(history::lists(shared.clone(), id, Rng(rng.next() | 1)));
    }
    for id in 11..13 {
        clients.spawn(history::transactions(
            shared.clone(),
            id,
            history::PAIRS,
            Rng(rng.next() | 1),
        ));
    }
    let nodes = cluster.nodes.len();
    let mut nemesis = Nemesis {
        cluster,
        proxy,
        rng: Rng(rng.next() | 1),
        shared: shared.clone(),
        faults: Vec::new(),
        due: Vec::new(),
        busy: vec![false; nodes],
        partitions,
        etcd,
        etcd_stopped: false,
        waiting_since: None,
        dial: Dial::new(Duration::from_secs(1)),
    };
    nemesis.unleash(length).await;
    nemesis.log("faults over; waiting for the cluster to heal");
    let healed = nemesis.cluster.wait_healthy(Duration::from_secs(90)).await;
    nemesis.log(&format!("healed: {healed:?}"));
    nemesis.finish_open_migrations().await;
    // A few seconds of work on the healed cluster, then the last reads.
    tokio::time::sleep(Duration::from_secs(3)).await;
    shared.stop.store(true, Ordering::SeqCst);
    let mut history = Vec::new();
    while let Some(ops) = clients.join_next().await {
        history.extend(ops.expect("a client task"));
    }
    let (last, unread) = history::final_reads(shared.clone(), &history).await;
    if unread > 0 {
        nemesis.log(&format!(
            "{unread} keys left unread: the last reads ran out of time (slots still held?)"
        ));
    }
    history.extend(last);
    let check = wait_for(Duration::from_secs(30), || async {
        common::cluster_check(&nemesis.cluster).is_ok()
    })
    .await
    .map_err(|_| common::cluster_check(&nemesis.cluster).unwrap_err());
    let verdict = checker::check(&history);
    let client_errors = history.iter().filter(|o| o.blamed).count();
    if !verdict.anomalies.is_empty() || client_errors > 0 || check.is_err() {
        // The nodes' and the proxy's logs, for whoever looks into it.
        nemesis.cluster.keep_dir();
        eprintln!(
            "REPORT | logs kept: {} (the proxy's: {})",
            nemesis.cluster.dir.display(),
            nemesis.proxy.log.display()
        );
    }
    let run = report::Run {
        title: format!(
            "slotguard nemesis, {}s, ack = {ack:?}, {}{}",
            length.as_secs(),
            if slotguard::localcluster::is_valkey() {
                "Valkey"
            } else {
                "Redis"
            },
            if nemesis.etcd.is_some() {
                ", coordinated through etcd"
            } else {
                ""
            }
        ),
        seed,
        replay: format!(
            "scripts/nemesis --minutes {} --seed {seed} --ack {}{}{}{}",
            length.as_secs_f64() / 60.0,
            match ack {
                Ack::Master => "master",
                Ack::Replicated => "replicated",
            },
            if slotguard::localcluster::is_valkey() {
                " --valkey"
            } else {
                ""
            },
            if nemesis.partitions {
                ""
            } else {
                " --no-partitions"
            },
            if nemesis.etcd.is_some() {
                ""
            } else {
                " --no-etcd"
            }
        ),
        history: &history,
        faults: &nemesis.faults,
        verdict: &verdict,
        client_errors,
        cluster_check: &check,
    };
    let summary = run.summary();
    let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("../nemesis");
    let _ = std::fs::create_dir_all(&dir);
    let page = dir.join(format!("nemesis-{seed}.html"));
    let _ = std::fs::write(&page, run.html());
    eprintln!("REPORT | {summary}");
    eprintln!("REPORT | {}", page.display());
    for a in verdict.anomalies.iter().take(20) {
        eprintln!("REPORT | {}: {}: {}", a.kind, a.key, a.detail);
    }
    for op in history.iter().filter(|o| o.blamed).take(20) {
        eprintln!(
            "REPORT | client error at {:.3}s on {}: {:?}",
            op.end, op.key, op.outcome
        );
    }
    if unread > 0 {
        eprintln!("REPORT | {unread} keys left unread by the last reads");
    }
    Outcome {
        unread,
        faults: nemesis.faults.clone(),
        history,
        verdict,
        client_errors,
        check,
        summary,
    }
}

/// One command to a node, given up after 2 s: a node the nemesis stopped answers nothing
/// until continued, and the nemesis, waiting on it, would never continue it (a seed-112
/// run held a master stopped for 89 s instead of 2-4, and stopped a second meanwhile).
async fn ask<A: AsRef<[u8]>>(
    addr: &str,
    args: &[A],
    dial: &Dial,
) -> Result<Value, slotguard::client::ConnError> {
    match tokio::time::timeout(Duration::from_secs(2), query(addr, args, dial)).await {
        Ok(answer) => answer,
        Err(_) => Err(slotguard::client::ConnError {
            addr: addr.to_string(),
            failure: slotguard::client::Failure::Timeout,
        }),
    }
}

fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Uid:"))
                .map(|l| l.split_whitespace().nth(1) == Some("0"))
        })
        .unwrap_or(false)
}

fn seed() -> u64 {
    std::env::var("NEMESIS_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
                % 1_000_000_007
        })
}

/// What every run asserts. With `ack = "replicated"`: no client error, nothing lost,
/// duplicated or torn, every register linearizable, a clean cluster. With `ack =
/// "master"`, losses are Redis's own and are counted, not failed on; nothing is ever
/// applied twice.
fn assert_guarantees(run: &Outcome, ack: Ack) {
    let v = &run.verdict;
    assert_eq!(v.duplicated, 0, "{}", run.summary);
    assert_eq!(v.count("duplicated write"), 0, "{}", run.summary);
    assert_eq!(v.count("never written"), 0, "{}", run.summary);
    assert!(run.check.is_ok(), "{}", run.summary);
    assert_eq!(
        run.unread, 0,
        "keys the last reads did not get to: {}",
        run.summary
    );
    assert!(
        run.history.iter().filter(|o| o.ok().is_some()).count() > 1000,
        "too little work to prove anything: {}",
        run.summary
    );
    if ack == Ack::Replicated {
        assert_eq!(run.client_errors, 0, "{}", run.summary);
        assert!(
            v.anomalies.is_empty(),
            "{}: {:?}",
            run.summary,
            v.anomalies.first()
        );
        assert_eq!(v.keys_undecided, 0, "{}", run.summary);
    }
    assert!(!run.faults.is_empty());
}

/// CI's run: 75 s of faults with `ack = "replicated"`, every guarantee asserted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nemesis_short() {
    slotguard::logging::init("slotguard=warn", false);
    let run = nemesis(Duration::from_secs(75), seed(), Ack::Replicated).await;
    assert_guarantees(&run, Ack::Replicated);
}

/// A long run: `NEMESIS_SECS` (1800), `NEMESIS_SEED`, `NEMESIS_ACK` (`replicated` or
/// `master`). See `scripts/nemesis`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore]
async fn nemesis_long() {
    slotguard::logging::init("slotguard=warn", false);
    let secs = std::env::var("NEMESIS_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1800);
    let ack = match std::env::var("NEMESIS_ACK").as_deref() {
        Ok("master") => Ack::Master,
        _ => Ack::Replicated,
    };
    let run = nemesis(Duration::from_secs(secs), seed(), ack).await;
    assert_guarantees(&run, ack);
}
