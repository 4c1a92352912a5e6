//! The data plane: client sessions, routing, node connections, the hold queue.
//!
//! [`Proxy`] is what every task of this plane shares: its slot table (connection handles
//! made from the map `routing` publishes), the node registry, the hold queue and the
//! script cache. A request becomes a [`Job`]; [`Proxy::dispatch`] sends it to the node
//! serving its slot, or parks it in the hold queue when the slot already has waiting
//! requests, is blocked by the authority, or has no owner. Redirects come back through
//! [`Proxy::redirect`].
//!
//! The files, by what they hold: `session` (one client connection), `client` (its state),
//! `owed` (the replies it is owed), `router` (what to do with a request), `local` (what
//! the proxy answers itself), `merge` (joining split replies), `backend` (the way to a
//! node and back: `job`, `node`, `connection`, and `lease`, a client's own connection),
//! `redirect`, `hold`, `slot_table`, `clients` (the registry CLIENT LIST sees, and
//! `tracking`), `pubsub`, `wait`, `every_node` (CONFIG SET), `snapshot` (what the admin
//! listener shows).
//!
//! A job that cannot be sent is handed back by value (`Result<(), Job>`); boxing it to
//! please `clippy::result_large_err` would cost an allocation per request.
#![allow(clippy::result_large_err)]

mod auth_limit;
pub mod backend;
mod buffers;
mod client;
mod clients;
mod diagnostics;
mod every_node;
mod fan;
pub mod hold;
mod info;
mod local;
mod merge;
mod monitor;
mod once;
mod output;
mod owed;
mod pubsub;
pub mod redirect;
mod router;
mod scan;
pub mod session;
mod share;
pub mod slot_table;
pub mod snapshot;
mod subscribers;
mod table;
mod wait;

#[doc(hidden)]
pub mod fuzzing {
    //! Entry points for the fuzz targets in `fuzz/`; not part of the API.

    use bytes::Bytes;

    use super::merge::Merge;

    /// Merges `parts` as the merge numbered `kind` does (those that need no other state).
    /// For MGET, part `i` answers for key `i`.
    pub fn merge(kind: u8, parts: &[Bytes], resp3: bool) -> Bytes {
        let how = match kind % 9 {
            0 => Merge::MGet {
                positions: (0..parts.len()).map(|i| vec![i]).collect(),
                total: parts.len(),
            },
            1 => Merge::AllOk,
            2 => Merge::Largest { local: 1 },
            3 => Merge::SumInts,
            4 => Merge::Concat,
            5 => Merge::Union,
            6 => Merge::SumPairs,
            7 => Merge::First,
            _ => Merge::MaxEach,
        };
        super::merge::merge(&how, parts, resp3)
    }

    /// MGET's verbatim merge agrees with decoding the parts (part `i` for key `i`).
    pub fn mget_paths_agree(parts: &[Bytes], resp3: bool) -> bool {
        let positions = (0..parts.len()).map(|i| vec![i]).collect();
        super::merge::mget_paths_agree(parts, positions, parts.len(), resp3)
    }
}

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use rustc_hash::FxHashMap;
use tokio::sync::watch;

use backend::connection::{self, Dispatch};
pub use backend::job::Job;
pub use backend::node::Node;
use hold::Hold;
pub use redirect::{Reason, Redirect};
use slot_table::SlotTable;
use subscribers::Subscribers;

use crate::client::Pool;
use crate::config::{Config, ReadFrom};
use crate::metrics::{Metrics, RedirectKind};
use crate::routing::command::Commands;
use crate::routing::status::Health;
use crate::routing::{Hint, Routing};

/// Redirects one request may follow before it waits for the slot map to settle.
const MAX_HOPS: u8 = 5;
/// Most script bodies remembered for NOSCRIPT healing.
const MAX_SCRIPTS: usize = 10_000;
/// A node that for this long the slot map has not named and the cluster's view has not
/// shown up is forgotten, and its connections close (a node removed from the cluster, or
/// down for good).
const FORGET_NODE: Duration = Duration::from_secs(60);

/// A node connection pool, and when the map or the view last named it.
struct Known {
    node: Arc<Node>,
    named: Instant,
}

/// State shared by every task of the data plane.
pub struct Proxy {
    /// What the control plane publishes: read, never written, here.
    pub routing: Arc<Routing>,
    /// The slot map with this plane's connection handles, made from `routing`'s.
    pub table: ArcSwap<SlotTable>,
    pub hold: Hold,
    pub metrics: Arc<Metrics>,
    /// The proxy's node id in the one-node cluster it shows clients.
    pub id: String,
    pub started: Instant,
    nodes: Mutex<FxHashMap<String, Known>>,
    /// Script bodies by SHA1 (lower-case hex), to heal NOSCRIPT; bounded.
    scripts: Mutex<FxHashMap<String, bytes::Bytes>>,
    /// Addresses outside the cluster that redirects named, each logged once.
    outside_warned: Mutex<rustc_hash::FxHashSet<String>>,
    /// Names the markers of writes sent as scripts that run once (`ack = "replicated"`).
    markers: once::Markers,
    /// Function libraries' code by library name, to heal a missing function; bounded.
    libraries: Mutex<FxHashMap<String, bytes::Bytes>>,
    /// Request-reply connections to nodes, for what the proxy asks them itself (WAIT's
    /// replication offsets, CONFIG SET on every node).
    pool: Pool,
    /// The proxy's clients' channel and pattern subscriptions, counted (for PUBLISH).
    subscribers: Subscribers,
    /// Clients in MONITOR mode.
    pub monitors: monitor::Monitors,
    /// Every client connection, as CLIENT LIST and KILL see them.
    clients: Arc<clients::Clients>,
    /// Becomes true when the proxy shuts down.
    shutdown: watch::Sender<bool>,
    /// Becomes true when the first slot map is in `table`.
    mapped: watch::Sender<bool>,
    /// `durability.ack = "replicated"` is in force: node connections fence every batch
    /// (read at each batch; a reload changes it).
    replicated: Arc<AtomicBool>,
    next_session: AtomicU32,
    /// Client connections accepted and not yet closed (`client.max_clients`).
    admitted: Arc<AtomicUsize>,
    /// Failed AUTH attempts per source address.
    auth_limit: auth_limit::AuthLimit,
    me: std::sync::Weak<Proxy>,
}

/// A client connection's place under `client.max_clients`, given back when dropped.
pub struct Admission(Arc<AtomicUsize>);

impl Drop for Admission {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Proxy {
    /// The data plane over the shared routing state.
    pub fn new(routing: Arc<Routing>) -> Arc<Proxy> {
        let config = routing.config();
        let id = node_id(&config.listen.to_string());
        let metrics = routing.metrics.clone();
        let hold = Hold::new(
            config.hold_timeout,
            config.hold_max_bytes,
            routing.clone(),
            metrics.clone(),
        );
        let replicated = Arc::new(AtomicBool::new(
            config.ack == crate::config::Ack::Replicated,
        ));
        drop(config);
        let markers = once::Markers::new();
        Arc::new_cyclic(|me| Proxy {
            table: ArcSwap::from_pointee(SlotTable::empty()),
            hold,
            metrics,
            id,
            started: Instant::now(),
            nodes: Mutex::new(FxHashMap::default()),
            scripts: Mutex::new(FxHashMap::from_iter([(
                markers.sha().to_string(),
                bytes::Bytes::from_static(once::SCRIPT.as_bytes()),
            )])),
            markers,
            outside_warned: Mutex::default(),
            libraries: Mutex::new(FxHashMap::default()),
            pool: Pool::default(),
            subscribers: Subscribers::default(),
            monitors: monitor::Monitors::default(),
            clients: Arc::default(),
            shutdown: watch::Sender::new(false),
            mapped: watch::Sender::new(false),
            replicated,
            next_session: AtomicU32::new(1),
            admitted: Arc::new(AtomicUsize::new(0)),
            auth_limit: auth_limit::AuthLimit::default(),
            me: me.clone(),
            routing,
        })
    }

    /// The configuration in force.
    pub fn config(&self) -> arc_swap::Guard<Arc<Config>> {
        self.routing.config()
    }

    /// The server's command table.
    pub fn commands(&self) -> arc_swap::Guard<Arc<Commands>> {
        self.routing.commands.load()
    }

    /// Takes a reloaded configuration. Settings read at run time (seeds, hold, durability,
    /// password and users, limits of new clients, the listener's TLS certificate) apply at
    /// once, on connections that exist too; the rest wait for a restart and are named in
    /// the returned list.
    pub fn reload(&self, new: Config) -> Vec<&'static str> {
        let old = self.config();
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
        // Copied into each node's connection tasks, and the lease allowance, when the node
        // is first used.
        if new.connect_timeout != old.connect_timeout {
            restart.push("backend.connect_timeout");
        }
        if new.dedicated_idle != old.dedicated_idle {
            restart.push("backend.dedicated_idle");
        }
        if new.dedicated_connections != old.dedicated_connections {
            restart.push("backend.dedicated_connections");
        }
        // Read once at start-up.
        if new.state_dir != old.state_dir {
            restart.push("state_dir");
        }
        if new.log_json != old.log_json {
            restart.push("log.format");
        }
        if new.coordination != old.coordination {
            restart.push("coordination*");
        }
        self.hold.set_limits(new.hold_timeout, new.hold_max_bytes);
        self.replicated
            .store(new.ack == crate::config::Ack::Replicated, Ordering::Relaxed);
        crate::logging::set_level(&new.log_level);
        self.routing.set_config(new);
        restart
    }

    /// The node at `addr`, connecting to it on first use.
    pub fn node(&self, addr: &str) -> Arc<Node> {
        let mut nodes = self.nodes.lock().unwrap_or_else(|e| e.into_inner());
        nodes
            .entry(addr.to_string())
            .or_insert_with(|| Known {
                node: Arc::new(Node::spawn(
                    addr.to_string(),
                    &self.config(),
                    self.me.clone(),
                    &self.metrics,
                    &self.replicated,
                )),
                named: Instant::now(),
            })
            .node
            .clone()
    }

    /// Follows what the control plane publishes: a new slot map becomes this plane's
    /// table, and the hold queue tries again whenever the map or the blocked set changed.
    /// Nodes neither the map nor the cluster's view name are forgotten after
    /// [`FORGET_NODE`].
    pub async fn follow_routing(self: Arc<Self>) {
        let mut changes = self.routing.changes();
        let mut sweep = tokio::time::interval(FORGET_NODE / 4);
        sweep.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        self.take_routing(); // what was published before this task began
        loop {
            tokio::select! {
                changed = changes.changed() => {
                    if changed.is_err() {
                        return;
                    }
                    self.take_routing();
                }
                _ = sweep.tick() => self.forget_nodes(Instant::now()),
            }
        }
    }

    /// Makes the table from a map of a new generation, and lets held requests try again.
    fn take_routing(&self) {
        let map = self.routing.map();
        if map.generation != self.table.load().generation {
            let table = SlotTable::from_map(&map, |addr| self.node(addr));
            self.table.store(Arc::new(table));
            if map.generation != 0 {
                self.mapped
                    .send_if_modified(|mapped| !std::mem::replace(mapped, true));
            }
        }
        self.hold.map_changed();
    }

    /// Waits, up to `limit`, until the first slot map is loaded. A client that connects as
    /// soon as the port opens (as in a rolling restart) is read only then, so that none of
    /// its requests meets a proxy that knows no master: each is routed as it would be a
    /// moment later, or, when no map came within `limit`, answered as without one.
    pub async fn first_map(&self, limit: Duration) {
        let _ = tokio::time::timeout(limit, self.mapped()).await;
    }

    /// Completes once the first slot map is loaded (`/readyz`, systemd's READY=1).
    pub async fn mapped(&self) {
        if self.table.load().generation != 0 {
            return;
        }
        let mut mapped = self.mapped.subscribe();
        let _ = mapped.wait_for(|&m| m).await;
    }

    /// Notes that these nodes are named now.
    fn named<'a>(&self, addrs: impl Iterator<Item = &'a str>, now: Instant) {
        let mut nodes = self.nodes.lock().unwrap_or_else(|e| e.into_inner());
        for addr in addrs {
            if let Some(known) = nodes.get_mut(addr) {
                known.named = now;
            }
        }
    }

    /// Drops the nodes that for [`FORGET_NODE`] the map has not named and the cluster's
    /// view has not shown up (a replica is not in the map unless reads go to replicas, but
    /// tracking and CONFIG SET reach it). Their connection tasks end once the last table
    /// naming them is gone and what they have in flight is answered.
    fn forget_nodes(&self, now: Instant) {
        let map = self.routing.map();
        self.named(map.addresses(), now);
        let status = self.routing.status.load();
        let up = status
            .view
            .nodes
            .iter()
            .filter(|n| n.health != Health::Fail && n.health != Health::Unreachable);
        self.named(up.map(|n| n.addr.as_str()), now);
        let mut nodes = self.nodes.lock().unwrap_or_else(|e| e.into_inner());
        nodes.retain(|addr, known| {
            let keep = now.duration_since(known.named) < FORGET_NODE;
            if !keep {
                tracing::info!(%addr, "node no longer in the cluster; closing its connections");
            }
            keep
        });
    }

    /// Request-reply connections the proxy keeps to nodes (WAIT, CONFIG SET).
    pub fn wait_connections(&self) -> usize {
        self.pool.idle()
    }

    /// Nodes with connection pools now.
    pub fn nodes_known(&self) -> usize {
        self.nodes.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    /// Tells every session to stop reading and finish what it owes.
    pub fn begin_shutdown(&self) {
        // The signal first: a session registered after the ring finds it set (see
        // `stopping`).
        self.shutdown.send_replace(true);
        self.clients.ring_all(clients::Bell::STOP);
    }

    /// Whether shutdown has begun.
    pub fn stopping(&self) -> bool {
        *self.shutdown.borrow()
    }

    /// Watches for shutdown.
    pub fn shutdown_signal(&self) -> watch::Receiver<bool> {
        self.shutdown.subscribe()
    }

    /// A place for a new client connection; `None` at `client.max_clients`.
    pub fn admit(&self) -> Option<Admission> {
        let max = self.config().max_clients;
        self.admitted
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < max).then_some(n + 1)
            })
            .ok()
            .map(|_| Admission(self.admitted.clone()))
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
                let reason = if self.routing.is_blocked(slot) {
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
        let redirect = match redirect {
            Redirect::Moved { slot, addr } => match self.in_cluster(&addr) {
                Some(addr) => Redirect::Moved { slot, addr },
                None => return self.outside(job, slot, &addr),
            },
            Redirect::Ask { slot, addr } => match self.in_cluster(&addr) {
                Some(addr) => Redirect::Ask { slot, addr },
                None => return self.outside(job, slot, &addr),
            },
            hold => hold,
        };
        match redirect {
            Redirect::Moved { slot, .. } | Redirect::Ask { slot, .. }
                if self.hold.is_held(slot) =>
            {
                // The slot waits for earlier requests or a repair: so does this one.
                self.hold.push(job, Reason::Queued);
            }
            Redirect::Moved { slot, addr }
                if self.routing.is_watched(slot)
                    && self.routing.map().owner(slot) != Some(addr.as_str()) =>
            {
                // A slot in migration moved: that is the cluster's epoch speaking, and the
                // authority must look before anything is sent there (the new owner may
                // lack keys). Wait for the next refresh instead. Once the slot map names
                // the new owner (a look newer than this request's routing), it is
                // followed: the request crossed the map's change in flight.
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
            Redirect::Ask { slot, addr } => {
                if !self.routing.is_watched(slot) {
                    // A migration the control plane has not seen yet: until it has, a
                    // MOVED for the slot would be followed blindly.
                    self.hint(Hint::Refresh);
                }
                let extra = job.extra();
                extra.prefix = Some(bytes::Bytes::from_static(redirect::ASKING));
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

    /// The address of the node that a redirect names as `endpoint`, if the cluster's last
    /// view has such a node.
    fn in_cluster(&self, endpoint: &str) -> Option<String> {
        let status = self.routing.status.load();
        status.view.resolve(endpoint).map(str::to_string)
    }

    /// A redirect to an address that is not a node of the cluster, as the proxy last saw
    /// it: not followed (a node sending it may be misconfigured or hostile, and the proxy
    /// opens connections only to the cluster's nodes). The cluster is looked at again and
    /// the request waits: if a node at that address has joined, the new map sends it
    /// there; if not, it fails at `hold.timeout`.
    fn outside(&self, job: Job, slot: u16, endpoint: &str) {
        self.metrics.redirects_outside.inc();
        let first = {
            let mut warned = self
                .outside_warned
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            if warned.len() >= 1024 {
                warned.clear(); // bounded, whatever a node sends
            }
            warned.insert(endpoint.to_string())
        };
        if first {
            tracing::warn!(
                slot,
                endpoint,
                "a node redirected to an address that is not a node of the cluster; not followed"
            );
        }
        self.hint(Hint::Refresh);
        let why = format!("redirected to {endpoint}, which is not a node of the cluster");
        self.hold.push(job, Reason::NotReady(why));
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

    /// With `durability.ack = "replicated"`, a write that must not run twice as a script
    /// that runs it once however often it is sent (see [`once`]); `None` when it is sent
    /// as it is.
    pub fn run_once(&self, req: &crate::protocol::Request, slot: u16) -> Option<bytes::Bytes> {
        let config = self.config();
        if config.ack != crate::config::Ack::Replicated {
            return None;
        }
        let commands = self.commands();
        let spec = commands.lookup(req)?;
        self.markers.wrap(spec, req, slot, config.hold_timeout)
    }

    /// Forgets every script body (SCRIPT FLUSH) but the proxy's own.
    pub fn forget_scripts(&self) {
        let mut scripts = self.scripts.lock().unwrap_or_else(|e| e.into_inner());
        scripts.retain(|sha, _| sha == self.markers.sha());
    }

    /// `FUNCTION LOAD`, `DELETE`, `FLUSH` and `RESTORE` as they go to every master: the
    /// proxy keeps each library's code (by its name, from its `#!engine name=...` line), to
    /// load it where an FCALL finds it missing (a promoted replica that missed it, a new
    /// master). A RESTORE's payload is opaque here: what it flushed or replaced cannot be
    /// told, so every library is forgotten rather than one removed brought back (or old
    /// code loaded over the restored).
    pub fn remember_functions(&self, req: &crate::protocol::Request) {
        let mut libraries = self.libraries.lock().unwrap_or_else(|e| e.into_inner());
        let sub = req.arg(1).to_ascii_uppercase();
        match sub.as_slice() {
            b"LOAD" if req.len() >= 3 => {
                let code = req.arg_bytes(req.len() - 1);
                let Some(name) = library_name(&code) else {
                    return;
                };
                if libraries.len() < MAX_SCRIPTS || libraries.contains_key(&name) {
                    libraries.insert(name, code);
                }
            }
            b"DELETE" if req.len() == 3 => {
                libraries.remove(String::from_utf8_lossy(req.arg(2)).as_ref());
            }
            b"FLUSH" | b"RESTORE" => libraries.clear(),
            _ => {}
        }
    }

    /// What restores on a node what `raw` needs: for an EVALSHA whose script the proxy
    /// knows, its `SCRIPT LOAD`; for an FCALL, a `FUNCTION LOAD REPLACE` of every library
    /// the proxy knows. With how many replies they get.
    pub fn script_load_for(&self, raw: &bytes::Bytes) -> Option<(bytes::Bytes, u8)> {
        let mut buf = bytes::BytesMut::from(&raw[..]);
        let req = crate::protocol::Scanner::default().next(&mut buf).ok()??;
        let name = req.arg(0).to_ascii_uppercase();
        match name.as_slice() {
            b"EVALSHA" | b"EVALSHA_RO" if req.len() >= 2 => {
                let sha = std::str::from_utf8(req.arg(1)).ok()?.to_ascii_lowercase();
                let scripts = self.scripts.lock().unwrap_or_else(|e| e.into_inner());
                let body = scripts.get(&sha)?;
                let load = crate::protocol::Request::from_args(&[&b"SCRIPT"[..], b"LOAD", body]);
                Some((load.into_raw(), 1))
            }
            b"FCALL" | b"FCALL_RO" => {
                let libraries = self.libraries.lock().unwrap_or_else(|e| e.into_inner());
                if libraries.is_empty() || libraries.len() > u8::MAX as usize {
                    return None;
                }
                let mut loads = bytes::BytesMut::new();
                for code in libraries.values() {
                    let args: [&[u8]; 4] = [b"FUNCTION", b"LOAD", b"REPLACE", code];
                    loads.extend_from_slice(crate::protocol::Request::from_args(&args).raw());
                }
                Some((loads.freeze(), libraries.len() as u8))
            }
            _ => None,
        }
    }

    /// True when the cluster agrees the node at `addr` has failed, or it is a replica now.
    pub fn node_failed(&self, addr: &str) -> bool {
        self.routing.status.load().node_failed(addr)
    }

    pub fn hint(&self, hint: Hint) {
        self.routing.hint(hint);
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

/// What connection tasks hand back to the proxy.
impl Dispatch for Proxy {
    fn dispatch(&self, job: Job) {
        Proxy::dispatch(self, job);
    }

    fn park(&self, job: Job, reason: Reason) {
        self.hold.push(job, reason);
    }

    fn redirect(&self, job: Job, redirect: Redirect) {
        Proxy::redirect(self, job, redirect);
    }

    fn send_to(&self, addr: &str, job: Job) -> Result<(), Job> {
        self.node(addr).send(job)
    }

    fn node_failed(&self, addr: &str) -> bool {
        Proxy::node_failed(self, addr)
    }

    fn hold_timeout(&self) -> Duration {
        self.config().hold_timeout
    }

    fn script_load_for(&self, raw: &bytes::Bytes) -> Option<(bytes::Bytes, u8)> {
        Proxy::script_load_for(self, raw)
    }

    fn durability(&self, addr: &str) -> Option<connection::Durability> {
        let config = self.config();
        (config.ack == crate::config::Ack::Replicated).then(|| connection::Durability {
            replicas: self.routing.status.load().view.replicas_to_wait(addr),
            wait_timeout: config.wait_timeout,
            hold_timeout: config.hold_timeout,
            fences: self.table.load().fences(addr),
        })
    }

    fn not_retried(&self) {
        self.metrics.writes_not_retried.inc();
    }

    fn next_master(&self, mut job: Job) -> Result<(), Job> {
        if job.hops as usize + 1 >= self.table.load().masters().count() {
            return Err(job);
        }
        job.hops += 1;
        job.pin = job.pin.wrapping_add(1);
        self.dispatch(job);
        Ok(())
    }

    fn hint(&self, hint: Hint) {
        Proxy::hint(self, hint);
    }
}

/// A library's name, from the first line of its code: `#!lua name=mylib`.
fn library_name(code: &[u8]) -> Option<String> {
    let first = code.split(|&b| b == b'\n').next()?;
    let first = std::str::from_utf8(first).ok()?.strip_prefix("#!")?;
    first
        .split_whitespace()
        .find_map(|word| word.strip_prefix("name="))
        .map(String::from)
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::SLOTS;
    use crate::routing::status::{ClusterView, NodeStatus, Role, Status};

    #[tokio::test]
    async fn nodes_neither_the_map_nor_the_view_shows_are_forgotten() {
        let (routing, _hints) = Routing::new(Config::default());
        let owners = vec![Some("127.0.0.1:1".to_string()); SLOTS];
        routing.publish(&owners, &[]);
        let proxy = Proxy::new(routing);
        let start = Instant::now();
        let node = |addr: &str, role, health| NodeStatus {
            id: addr.into(),
            addr: addr.into(),
            hostname: String::new(),
            role,
            master_id: None,
            health,
            config_epoch: 0,
            slots: vec![],
            migrating: vec![],
            importing: vec![],
        };
        proxy.routing.status.store(Arc::new(Status {
            view: ClusterView {
                nodes: vec![
                    node("127.0.0.1:1", Role::Master, Health::Ok),
                    node("127.0.0.1:3", Role::Replica, Health::Ok),
                    node("127.0.0.1:4", Role::Master, Health::Fail),
                ],
                answered: 2,
            },
            decisions: vec![],
        }));
        for addr in ["127.0.0.1:1", "127.0.0.1:2", "127.0.0.1:3", "127.0.0.1:4"] {
            proxy.node(addr); // :2 is a redirect's target, never in the map or the view
        }
        assert_eq!(proxy.nodes_known(), 4);
        proxy.forget_nodes(start + FORGET_NODE / 2);
        assert_eq!(proxy.nodes_known(), 4, "not yet");
        proxy.forget_nodes(start + FORGET_NODE + Duration::from_secs(1));
        let mut known: Vec<String> = proxy.nodes.lock().unwrap().keys().cloned().collect();
        known.sort();
        assert_eq!(
            known,
            ["127.0.0.1:1", "127.0.0.1:3"],
            "the map's master and a replica that is up stay"
        );
    }
}
