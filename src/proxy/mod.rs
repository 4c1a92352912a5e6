//! The data plane: client sessions, routing, backend connections, the hold queue.
//!
//! [`Proxy`] is what every task shares: the slot map, the command table, the node
//! registry and the hold queue. A request becomes a [`Job`]; [`Proxy::dispatch`] sends it
//! to the node serving its slot, or parks it in the hold queue when the slot already has
//! waiting requests or no owner. Redirects come back through [`Proxy::redirect`].
//!
//! A job that cannot be sent is handed back by value (`Result<(), Job>`); boxing it to
//! please `clippy::result_large_err` would cost an allocation per request.
#![allow(clippy::result_large_err)]

pub mod backend;
pub mod command;
pub mod hold;
pub mod lease;
mod local;
mod merge;
mod pubsub;
mod router;
pub mod session;
pub mod slot_table;
mod tracking;
mod wait;

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use arc_swap::ArcSwap;
use rustc_hash::FxHashMap;
use tokio::sync::{mpsc, watch};

pub use backend::{Job, Node, Redirect};
use command::Commands;
use hold::{Hold, Reason};
use slot_table::SlotTable;

use crate::cluster::view::ClusterView;
use crate::config::{Config, ReadFrom};
use crate::metrics::{Metrics, RedirectKind};

/// Redirects one request may follow before it waits for the slot map to settle.
const MAX_HOPS: u8 = 5;
/// Most script bodies remembered for NOSCRIPT healing.
const MAX_SCRIPTS: usize = 10_000;

/// What the data plane tells the control plane.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Hint {
    /// A node answered MOVED: `slot` is served by `addr` now.
    Moved { slot: u16, addr: String },
    /// Something failed; the slot map may be stale.
    Refresh,
}

/// State shared by every task of the proxy.
pub struct Proxy {
    config: ArcSwap<Config>,
    pub table: ArcSwap<SlotTable>,
    pub commands: ArcSwap<Commands>,
    pub hold: Hold,
    pub metrics: Arc<Metrics>,
    /// The cluster as last seen, for `/status`.
    pub view: ArcSwap<ClusterView>,
    /// The authority's decisions for unsettled slots, for `/status`.
    pub decisions: ArcSwap<Vec<crate::cluster::authority::Decision>>,
    /// The proxy's node id in the one-node cluster it shows clients.
    pub id: String,
    /// Version of the servers behind, for `INFO` and `HELLO`.
    pub server_version: ArcSwap<String>,
    pub started: Instant,
    nodes: Mutex<FxHashMap<String, Arc<Node>>>,
    /// Script bodies by SHA1 (lower-case hex), to heal NOSCRIPT; bounded.
    scripts: Mutex<FxHashMap<String, bytes::Bytes>>,
    hints: mpsc::UnboundedSender<Hint>,
    /// Becomes true when the proxy shuts down.
    shutdown: watch::Sender<bool>,
    next_session: AtomicU32,
    generation: AtomicU64,
    me: std::sync::Weak<Proxy>,
}

impl Proxy {
    /// Creates the shared state; the receiver carries hints to the topology task.
    pub fn new(config: Config) -> (Arc<Proxy>, mpsc::UnboundedReceiver<Hint>) {
        let (hints, rx) = mpsc::unbounded_channel();
        let id = node_id(&config.listen.to_string());
        let metrics = Arc::new(Metrics::new());
        let proxy = Arc::new_cyclic(|me| Proxy {
            table: ArcSwap::from_pointee(SlotTable::empty()),
            commands: ArcSwap::from_pointee(Commands::builtin()),
            hold: Hold::new(config.hold_timeout, config.hold_max_bytes, metrics.clone()),
            metrics,
            view: ArcSwap::from_pointee(ClusterView::default()),
            decisions: ArcSwap::from_pointee(Vec::new()),
            id,
            server_version: ArcSwap::from_pointee("7.0.0".to_string()),
            started: Instant::now(),
            nodes: Mutex::new(FxHashMap::default()),
            scripts: Mutex::new(FxHashMap::default()),
            hints,
            shutdown: watch::Sender::new(false),
            next_session: AtomicU32::new(1),
            generation: AtomicU64::new(1),
            me: me.clone(),
            config: ArcSwap::from_pointee(config),
        });
        (proxy, rx)
    }

    /// The configuration in force.
    pub fn config(&self) -> arc_swap::Guard<Arc<Config>> {
        self.config.load()
    }

    /// Takes a reloaded configuration. Settings read at run time (seeds, timeouts, hold,
    /// password and users, limits of new clients, the listener's TLS certificate) apply at
    /// once; the rest wait for a restart and are
    /// named in the returned list.
    pub fn reload(&self, new: Config) -> Vec<&'static str> {
        let old = self.config.load();
        let mut restart = Vec::new();
        if new.listen != old.listen {
            restart.push("listen");
        }
        if new.admin_listen != old.admin_listen {
            restart.push("admin.listen");
        }
        if new.threads != old.threads {
            restart.push("threads");
        }
        if new.backend_connections != old.backend_connections {
            restart.push("backend.connections");
        }
        if new.backend_tls.is_some() || old.backend_tls.is_some() {
            restart.push("tls.backend*");
        }
        if new.read_from != old.read_from {
            restart.push("backend.read_from");
        }
        if new.backend_auth != old.backend_auth {
            restart.push("backend.username/password");
        }
        self.hold.set_limits(new.hold_timeout, new.hold_max_bytes);
        crate::logging::set_level(&new.log_level);
        self.config.store(Arc::new(new));
        restart
    }

    /// The node at `addr`, connecting to it on first use.
    pub fn node(&self, addr: &str) -> Arc<Node> {
        let mut nodes = self.nodes.lock().unwrap_or_else(|e| e.into_inner());
        nodes
            .entry(addr.to_string())
            .or_insert_with(|| {
                let config = self.config();
                Arc::new(Node::spawn(
                    addr.to_string(),
                    &config,
                    self.me.clone(),
                    &self.metrics,
                ))
            })
            .clone()
    }

    /// Publishes a new slot map and lets held requests try again.
    pub fn publish(&self, build: impl FnOnce(u64) -> SlotTable) {
        let generation = self.generation.fetch_add(1, Ordering::AcqRel) + 1;
        let table = build(generation);
        self.table.store(Arc::new(table));
        self.hold.map_changed();
    }

    /// Tells every session to stop reading and finish what it owes.
    pub fn begin_shutdown(&self) {
        self.shutdown.send_replace(true);
    }

    /// Watches for shutdown.
    pub fn shutdown_signal(&self) -> watch::Receiver<bool> {
        self.shutdown.subscribe()
    }

    /// A fresh id for a client session; it also pins the session's backend connections.
    pub fn session_id(&self) -> u32 {
        self.next_session.fetch_add(1, Ordering::Relaxed)
    }

    /// Sends a job, or queues it behind the waiting requests of its slot.
    #[inline]
    pub fn dispatch(&self, job: Job) {
        match job.slot {
            Some(slot) if self.hold.is_held(slot) => {
                let reason = if self.hold.is_blocked(slot) {
                    Reason::Repair
                } else {
                    Reason::Queued
                };
                self.hold.push(job, reason);
            }
            _ => self.send(job),
        }
    }

    /// Sends a job to the node the slot map names, without looking at the hold queue.
    fn send(&self, job: Job) {
        if let Err((job, reason)) = self.try_send(job) {
            self.hold.push(job, reason);
        }
    }

    /// Like `send`, but gives back a job that cannot be sent now, with the reason.
    fn try_send(&self, job: Job) -> Result<(), (Job, Reason)> {
        let table = self.table.load();
        let node = match (job.slot, job.read_from) {
            (Some(slot), ReadFrom::Master) => table.owner(slot),
            (Some(slot), ReadFrom::Replica) => table.replica(slot, job.pin),
            // A read a replica failed goes to the master.
            (Some(slot), ReadFrom::PreferReplica) if job.held_since.is_none() => {
                table.replica(slot, job.pin).or_else(|| table.owner(slot))
            }
            (Some(slot), ReadFrom::PreferReplica) => table.owner(slot),
            (None, _) => table.any_master(job.pin),
        };
        match node {
            Some(node) => node
                .send(job)
                .map_err(|job| (job, Reason::Unreachable(node.addr.clone()))),
            None => {
                self.hint(Hint::Refresh);
                Err((job, Reason::NoOwner))
            }
        }
    }

    /// Acts on a redirect a node answered for `job`.
    pub fn redirect(&self, mut job: Job, redirect: Redirect) {
        self.metrics.redirect(match &redirect {
            Redirect::Moved { .. } => RedirectKind::Moved,
            Redirect::Ask { .. } => RedirectKind::Ask,
            Redirect::Hold(Reason::TryAgain) => RedirectKind::TryAgain,
            Redirect::Hold(Reason::ClusterDown(_)) => RedirectKind::ClusterDown,
            Redirect::Hold(_) => RedirectKind::NotReady,
        });
        job.hops += 1;
        if job.hops > MAX_HOPS {
            self.hint(Hint::Refresh);
            self.hold.push(job, Reason::Redirects);
            return;
        }
        match redirect {
            Redirect::Moved { slot, .. } | Redirect::Ask { slot, .. }
                if self.hold.is_held(slot) =>
            {
                // The slot waits for earlier requests or a repair: so does this one.
                self.hold.push(job, Reason::Queued);
            }
            Redirect::Moved { slot, addr } if self.hold.is_watched(slot) => {
                // A slot in migration moved: that is the cluster's epoch speaking, and the
                // authority must look before anything is sent there (the new owner may
                // lack keys). Wait for the next refresh instead.
                self.hint(Hint::Refresh);
                let why = format!("slot moved to {addr} during a migration; checking");
                self.hold.push(job, Reason::NotReady(why));
            }
            Redirect::Moved { slot, addr } => {
                if let Some(extra) = &mut job.extra {
                    extra.prefix = None;
                    extra.prefix_replies = 0;
                }
                // Forward before the map changes, so that this client's later requests,
                // routed by the new map, cannot overtake this one.
                if let Err(job) = self.node(&addr).send(job) {
                    self.hold.push(job, Reason::Unreachable(addr.clone()));
                }
                self.hint(Hint::Moved { slot, addr });
            }
            Redirect::Ask { .. } if job.lead().is_some() => {
                // ASKING does not last across a transaction's queued commands: wait for
                // the migration of the slot to move on, then run it whole at the owner.
                self.hold.push(job, Reason::TryAgain);
            }
            Redirect::Ask { addr, .. } => {
                let extra = job.extra();
                extra.prefix = Some(bytes::Bytes::from_static(backend::ASKING));
                extra.prefix_replies = 1;
                if let Err(job) = self.node(&addr).send(job) {
                    self.hold.push(job, Reason::Unreachable(addr));
                }
            }
            Redirect::Hold(reason) => {
                if !matches!(reason, Reason::TryAgain) {
                    self.hint(Hint::Refresh);
                }
                self.hold.push(job, reason);
            }
        }
    }

    /// Remembers a script body (from EVAL or SCRIPT LOAD) so that a node that lost it can be
    /// given it again.
    pub fn remember_script(&self, body: &bytes::Bytes) {
        let sha = sha1_smol::Sha1::from(&body[..]).digest().to_string();
        let mut scripts = self.scripts.lock().unwrap_or_else(|e| e.into_inner());
        if scripts.len() < MAX_SCRIPTS || scripts.contains_key(&sha) {
            scripts.insert(sha, body.clone());
        }
    }

    /// For an EVALSHA whose script the proxy knows: the `SCRIPT LOAD` request that restores
    /// it on a node.
    pub fn script_load_for(&self, raw: &bytes::Bytes) -> Option<bytes::Bytes> {
        let mut buf = bytes::BytesMut::from(&raw[..]);
        let req = crate::protocol::Scanner::default().next(&mut buf).ok()??;
        let name = req.arg(0);
        if req.len() < 2
            || !(name.eq_ignore_ascii_case(b"EVALSHA") || name.eq_ignore_ascii_case(b"EVALSHA_RO"))
        {
            return None;
        }
        let sha = std::str::from_utf8(req.arg(1)).ok()?.to_ascii_lowercase();
        let scripts = self.scripts.lock().unwrap_or_else(|e| e.into_inner());
        let body = scripts.get(&sha)?;
        Some(crate::protocol::Request::from_args(&[&b"SCRIPT"[..], b"LOAD", body]).into_raw())
    }

    /// True when the cluster agrees the node at `addr` has failed, or it is a replica now.
    pub fn node_failed(&self, addr: &str) -> bool {
        self.view
            .load()
            .nodes
            .iter()
            .any(|n| n.addr == addr && (n.health == "fail" || n.role == "replica"))
    }

    pub fn hint(&self, hint: Hint) {
        let _ = self.hints.send(hint);
    }

    /// Runs the hold queue: sends due requests again, fails those past the deadline.
    pub async fn run_hold(self: Arc<Self>) {
        loop {
            self.hold.wait(std::time::Duration::from_millis(100)).await;
            self.hold.release(Instant::now(), |job| self.try_send(job));
            self.metrics.held_now.set(self.hold.len() as i64);
        }
    }
}

/// A stable 40-hex-digit node id derived from the listen address.
fn node_id(seed: &str) -> String {
    let mut h: u64 = 0xcbf29ce484222325;
    let mut out = String::with_capacity(40);
    while out.len() < 40 {
        for b in seed.bytes().chain(out.len().to_le_bytes()) {
            h ^= b as u64;
            h = h.wrapping_mul(0x100000001b3);
        }
        out.push_str(&format!("{h:016x}"));
    }
    out.truncate(40);
    out
}
