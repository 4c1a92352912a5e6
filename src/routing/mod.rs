//! Where the two planes meet.
//!
//! The control plane (`cluster`) learns what the cluster looks like and decides what may be
//! served; the data plane (`proxy`) serves clients by it. Neither imports the other: what
//! they share lives here, written by the control plane and read by the data plane and the
//! admin listener.
//!
//! - the slot map, by address ([`map::SlotMap`]); the data plane makes its own connection
//!   handles from it;
//! - two per-slot flags the authority sets: *blocked* (held for a repair: nothing is sent
//!   for it) and *watched* (a migration is open or remembered: a `MOVED` for it is not
//!   followed blindly);
//! - the server's command table ([`command::Commands`]) and version;
//! - a status snapshot ([`status::Status`]) for `/status` and for the data plane's one
//!   question about node health;
//! - the settings in force and the metrics registry, which both planes use.
//!
//! Every change to the map or to the blocked set bumps [`Routing::changes`], which the data
//! plane follows. The data plane speaks back only through [`Hint`]s on a channel.

pub mod command;
pub mod decision;
pub mod map;
pub mod status;

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use arc_swap::{ArcSwap, Guard};
use tokio::sync::{mpsc, watch};

use crate::config::Config;
use crate::metrics::Metrics;
use crate::protocol::SLOTS;
use command::Commands;
use map::SlotMap;
use status::Status;

/// What the data plane tells the control plane.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Hint {
    /// A node answered MOVED: `slot` is served by `addr` now.
    Moved { slot: u16, addr: String },
    /// Something failed; the slot map may be stale.
    Refresh,
}

/// Slots to move, asked for through the proxy (`SLOTGUARD MIGRATE | REBALANCE | DRAIN`);
/// the control plane plans and runs it (`cluster::mover`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MoveOrder {
    /// `slots` (`100-199,300`) to the master `to` (id, prefix or `host:port`).
    Migrate { slots: String, to: String },
    /// Weights, each `NODE=N`.
    Rebalance { weights: Vec<String> },
    /// Every slot off `node`.
    Drain { node: String },
}

/// A [`MoveOrder`] and where its answer goes: the plan as a RESP bulk string, or an error.
#[derive(Debug)]
pub struct MoveRequest {
    pub order: MoveOrder,
    pub reply: tokio::sync::oneshot::Sender<bytes::Bytes>,
}

/// The last move of slots asked for through the proxy, as the control plane last saw it.
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize)]
pub struct MoveProgress {
    /// `idle`, `running`, `done`, `stopped` or `failed`.
    pub state: String,
    /// The plan, as `slotguard migrate` prints it.
    pub plan: String,
    pub slots_done: usize,
    pub slots_total: usize,
    pub keys_moved: u64,
    pub keys_per_sec: f64,
    pub seconds: f64,
    /// Why it failed or stopped.
    pub message: String,
}

/// The state the planes share.
pub struct Routing {
    config: ArcSwap<Config>,
    /// Bumped by every reload: a session that copied the configuration takes it again.
    config_generation: std::sync::atomic::AtomicU64,
    pub metrics: Arc<Metrics>,
    map: ArcSwap<SlotMap>,
    /// Per slot: the authority holds it (broken, being repaired): nothing is sent for it,
    /// whatever the slot map says, until it is unblocked.
    blocked: Box<[AtomicBool]>,
    /// Per slot: a migration is open or remembered. Redirects for it are not followed
    /// blindly: the authority decides where it is served.
    watched: Box<[AtomicBool]>,
    /// The server's command table (a built-in one until it is loaded).
    pub commands: ArcSwap<Commands>,
    /// Version of the servers behind, for `INFO` and `HELLO`.
    pub server_version: ArcSwap<String>,
    /// The servers are Valkey 8 or later: see `cluster::authority::Memory::importer_takes_back`.
    pub importer_takes_back: AtomicBool,
    pub status: ArcSwap<Status>,
    hints: mpsc::UnboundedSender<Hint>,
    /// Moves of slots asked for through the proxy, to the control plane.
    moves: mpsc::UnboundedSender<MoveRequest>,
    moves_rx: std::sync::Mutex<Option<mpsc::UnboundedReceiver<MoveRequest>>>,
    /// The running move is to stop at its next step boundary (`SLOTGUARD CANCEL`).
    pub moves_stop: AtomicBool,
    /// The last move's progress, published by the control plane.
    pub moves_progress: ArcSwap<MoveProgress>,
    /// Who repairs and moves slots.
    pub authority: ArcSwap<status::Authority>,
    /// Bumped when the map or the blocked set changes.
    changes: watch::Sender<u64>,
}

impl Routing {
    /// The shared state; the receiver carries the data plane's hints to the control plane.
    pub fn new(config: Config) -> (Arc<Routing>, mpsc::UnboundedReceiver<Hint>) {
        let (hints, rx) = mpsc::unbounded_channel();
        let (moves, moves_rx) = mpsc::unbounded_channel();
        let flags = || (0..SLOTS).map(|_| AtomicBool::new(false)).collect();
        let routing = Routing {
            config: ArcSwap::from_pointee(config),
            config_generation: std::sync::atomic::AtomicU64::new(0),
            metrics: Arc::new(Metrics::new()),
            map: ArcSwap::from_pointee(SlotMap::default()),
            blocked: flags(),
            watched: flags(),
            commands: ArcSwap::from_pointee(Commands::builtin()),
            server_version: ArcSwap::from_pointee("7.0.0".to_string()),
            importer_takes_back: AtomicBool::new(false),
            status: ArcSwap::from_pointee(Status::default()),
            hints,
            moves,
            moves_rx: std::sync::Mutex::new(Some(moves_rx)),
            moves_stop: AtomicBool::new(false),
            authority: ArcSwap::from_pointee(status::Authority::default()),
            moves_progress: ArcSwap::from_pointee(MoveProgress {
                state: "idle".into(),
                ..MoveProgress::default()
            }),
            changes: watch::Sender::new(0),
        };
        (Arc::new(routing), rx)
    }

    /// The configuration in force.
    pub fn config(&self) -> Guard<Arc<Config>> {
        self.config.load()
    }

    /// Puts a reloaded configuration in force.
    pub fn set_config(&self, config: Config) {
        self.config.store(Arc::new(config));
        self.config_generation
            .fetch_add(1, std::sync::atomic::Ordering::Release);
    }

    /// How many reloads have been put in force: a plain load, cheap to ask once a batch.
    pub fn config_generation(&self) -> u64 {
        self.config_generation
            .load(std::sync::atomic::Ordering::Acquire)
    }

    /// The slot map last published.
    pub fn map(&self) -> Arc<SlotMap> {
        self.map.load_full()
    }

    /// Publishes a slot map built from an owner per slot and readable replicas; it gets
    /// the next generation.
    pub fn publish(&self, owners: &[Option<String>], replicas: &[(String, String)]) {
        let generation = self.map.load().generation + 1;
        self.map
            .store(Arc::new(SlotMap::build(owners, replicas, generation)));
        self.changes.send_modify(|n| *n += 1);
    }

    /// Publishes who repairs and moves slots, to `/status` and the metrics.
    pub fn publish_authority(&self, authority: status::Authority) {
        let m = &self.metrics;
        m.authority.set(i64::from(authority.this_proxy));
        m.authority_lease_age
            .set(authority.lease_age_seconds.unwrap_or(0) as i64);
        for source in ["etcd", "file", "memory"] {
            let on = i64::from(source == authority.journal);
            m.journal_source.with_label_values(&[source]).set(on);
        }
        self.authority.store(Arc::new(authority));
    }

    /// Makes exactly `slots` blocked.
    pub fn set_blocked(&self, slots: &BTreeSet<u16>) {
        let mut changed = false;
        for (slot, flag) in self.blocked.iter().enumerate() {
            let want = slots.contains(&(slot as u16));
            if flag.swap(want, Ordering::AcqRel) != want {
                changed = true;
            }
        }
        if changed {
            self.changes.send_modify(|n| *n += 1);
        }
    }

    /// True when the authority holds `slot` for a repair.
    #[inline]
    pub fn is_blocked(&self, slot: u16) -> bool {
        self.blocked[slot as usize].load(Ordering::Acquire)
    }

    /// Makes exactly `slots` watched.
    pub fn set_watched(&self, slots: &BTreeSet<u16>) {
        for (slot, flag) in self.watched.iter().enumerate() {
            flag.store(slots.contains(&(slot as u16)), Ordering::Release);
        }
    }

    /// True when a migration of `slot` is open or remembered.
    #[inline]
    pub fn is_watched(&self, slot: u16) -> bool {
        self.watched[slot as usize].load(Ordering::Acquire)
    }

    /// Wakes when the map or the blocked set changed.
    pub fn changes(&self) -> watch::Receiver<u64> {
        self.changes.subscribe()
    }

    /// Tells the control plane something (the data plane's only way back).
    pub fn hint(&self, hint: Hint) {
        let _ = self.hints.send(hint);
    }

    /// Asks the control plane to move slots; the answer comes on the request's `reply`.
    pub fn request_move(&self, request: MoveRequest) {
        let _ = self.moves.send(request);
    }

    /// The control plane's end of the move requests (once).
    pub fn take_moves(&self) -> Option<mpsc::UnboundedReceiver<MoveRequest>> {
        self.moves_rx
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_published_map_and_a_blocked_change_wake_the_follower() {
        let (routing, _hints) = Routing::new(Config::default());
        let mut changes = routing.changes();
        let owners = vec![Some("a:1".to_string()); SLOTS];
        routing.publish(&owners, &[]);
        assert!(changes.has_changed().unwrap());
        changes.borrow_and_update();
        assert_eq!(routing.map().generation, 1);
        assert_eq!(routing.map().covered(), SLOTS);

        routing.set_blocked(&BTreeSet::from([5]));
        assert!(routing.is_blocked(5) && !routing.is_blocked(6));
        assert!(changes.has_changed().unwrap());
        changes.borrow_and_update();
        // The same set again changes nothing.
        routing.set_blocked(&BTreeSet::from([5]));
        assert!(!changes.has_changed().unwrap());

        routing.set_watched(&BTreeSet::from([9]));
        assert!(routing.is_watched(9) && !routing.is_watched(5));
    }
}
