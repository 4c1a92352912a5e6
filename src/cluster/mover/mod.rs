//! Moving slots: `slotguard migrate`, `rebalance` and `drain`.
//!
//! `redis-cli --cluster reshard` is what leaves the catalogue's broken states behind when
//! a node dies mid-way (docs/FAULTS.md). Here every slot moves in the order that cannot produce
//! them ("Ordering that avoids faults"):
//!
//! 1. `IMPORTING` on the target, then `MIGRATING` on the source;
//! 2. keys in batches, each one waited for on the target's replicas before the next;
//! 3. the target finalizes first (`SETSLOT NODE` itself, bumping its epoch), and its
//!    replicas must see it;
//! 4. then the source, then every other master, and every node is waited for.
//!
//! Every step is written to the journal before it is sent, and the slot is marked as being
//! repaired while it moves. Each step is idempotent and each slot's plan is made from what
//! the cluster shows at that moment, so a move cut short (by Ctrl-C, a crash of this
//! process or of a node) resumes when the same command runs again; a proxy in front of the
//! cluster finishes a move whose source or target died (the authority's S2-S6 plans).

//
//! - [`plan`]: slot lists, the moves an order makes, each slot's steps;
//! - this file: running them, a group of slots at a time;
//! - [`serve`]: moves asked for through the proxy (`SLOTGUARD MIGRATE`, ...);
//! - [`progress`]: what a move has done, as a bar or as lines.

mod plan;
mod progress;
mod serve;

pub use plan::{
    describe, drain_moves, find_master, owned, parse_slots, plan, rebalance_moves, slot_plan,
    SlotPlan,
};
pub use progress::Progress;
pub use serve::serve;

use std::collections::{BTreeMap, HashMap};
use std::io::IsTerminal;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::authority::{Cluster, Step};
use super::diagnose::discover;
use super::heal::addresses;
use super::journal::Journal;
use super::repair::{self, Pace};
use super::Error;
use crate::config::Config;
pub use crate::routing::MoveOrder as Order;
use tracing::info;

/// One slot to move, and the master (id) it goes to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Move {
    pub slot: u16,
    pub to: String,
}

/// How keys move.
#[derive(Clone, Debug)]
pub struct Options {
    /// Keys per MIGRATE.
    pub batch: usize,
    /// MIGRATEs sent together before each wait for the target's replicas.
    pub pipeline: usize,
    /// At most this many keys a second (moves slot by slot with MIGRATE).
    pub max_keys_per_sec: Option<u64>,
    /// Move slot by slot with MIGRATE even where every master can migrate slots
    /// atomically (Valkey 9's `CLUSTER MIGRATESLOTS`).
    pub legacy: bool,
}

/// Attempts at one group of slots before giving up (a step fails while gossip catches up).
const ATTEMPTS: usize = 8;
/// What a run did.
#[derive(Debug, Default)]
pub struct Summary {
    pub slots: usize,
    pub keys: u64,
    pub took: Duration,
    /// Through Valkey's `CLUSTER MIGRATESLOTS`.
    pub atomic: bool,
}

/// `slotguard migrate | rebalance | drain`: plans from the cluster as it is, prints the
/// plan, and (unless `dry_run`) carries it out; Ctrl-C stops at the next step boundary.
pub async fn run(
    config: &Config,
    order: Order,
    dry_run: bool,
    options: Options,
) -> Result<(), Error> {
    let views = discover(config).await?;
    let cluster = Cluster::new(&views);
    let moves = plan(&cluster, order)?;
    print!("{}", describe(&owned(&cluster), &moves, &addresses(&views)));
    if dry_run || moves.is_empty() {
        return Ok(());
    }
    let stop = Arc::new(AtomicBool::new(false));
    let watch = {
        let stop = stop.clone();
        tokio::spawn(async move {
            let _ = tokio::signal::ctrl_c().await;
            stop.store(true, Ordering::Relaxed);
            eprintln!("\nstopping at the next step boundary (Ctrl-C again quits at once)");
            let _ = tokio::signal::ctrl_c().await;
            std::process::exit(130);
        })
    };
    let journal = Mutex::new(Journal::open(config.state_dir.as_deref())?);
    let progress = Arc::new(Progress::new(moves.len(), std::io::stderr().is_terminal()));
    let shown = progress.clone().show();
    let summary = run_moves(config, &moves, &options, &stop, &journal, &progress).await;
    shown.abort();
    progress.finish();
    watch.abort();
    let summary = summary?;
    println!(
        "moved {} slots and {} keys in {:.1} s{}",
        summary.slots,
        summary.keys,
        summary.took.as_secs_f64(),
        match summary.atomic {
            true => " (CLUSTER MIGRATESLOTS)",
            false => "",
        }
    );
    Ok(())
}

/// Runs `moves`, one slot after another, showing progress on stderr. `stop` (Ctrl-C)
/// ends the run between two steps.
pub async fn run_moves(
    config: &Config,
    moves: &[Move],
    options: &Options,
    stop: &AtomicBool,
    journal: &Mutex<Journal>,
    progress: &Progress,
) -> Result<Summary, Error> {
    let dial = config
        .dial()
        .with_limit(config.connect_timeout.max(Duration::from_secs(5)));
    let pace = Pace {
        batch: options.batch,
        pipeline: options.pipeline,
        max_keys_per_sec: options.max_keys_per_sec,
        moved: Some(&progress.keys),
        stop: Some(stop),
        sent: None,
    };
    // Each target's shard as it is now: a target that fails over mid-run is followed to
    // its replica, the shard's new master.
    let shards = {
        let views = discover(config).await?;
        Cluster::new(&views).shards()
    };
    let atomic = !options.legacy
        && options.max_keys_per_sec.is_none()
        && atomic_everywhere(config, &dial).await;
    if atomic {
        info!("every master migrates slots atomically (CLUSTER MIGRATESLOTS): using it");
    }
    let mut result = Ok(());
    for group in moves.chunks(GROUP) {
        if stop.load(Ordering::Relaxed) {
            result = Err(Error::Stopped);
            break;
        }
        let mut mover = Group {
            config,
            shards: &shards,
            journal,
            dial: &dial,
            pace: &pace,
            done: &progress.done,
            atomic,
        };
        if let Err(e) = mover.run(group).await {
            result = Err(e);
            break;
        }
    }
    result?;
    Ok(Summary {
        slots: moves.len(),
        keys: progress.keys.load(Ordering::Relaxed),
        took: progress.started.elapsed(),
        atomic,
    })
}

/// Slots moved together: their keys one slot after another, then one wait for the
/// targets' replicas and one for every node, for the whole group. Gossip carries a new
/// owner to the other nodes in a fraction of a second; waiting once a group rather than
/// once a slot makes a move of thousands of slots take minutes, not hours.
const GROUP: usize = 64;

/// What moving a group of slots needs.
struct Group<'a> {
    config: &'a Config,
    /// Each target's shard when the run started (see [`successor`]).
    shards: &'a BTreeMap<String, Vec<String>>,
    journal: &'a Mutex<Journal>,
    dial: &'a crate::client::Dial,
    pace: &'a Pace<'a>,
    /// Slots whose keys have moved.
    done: &'a AtomicUsize,
    /// Through `CLUSTER MIGRATESLOTS` (see [`Group::atomically`]).
    atomic: bool,
}

impl Group<'_> {
    /// Moves `group`, looking at the cluster again after a step that failed (a node that
    /// has not heard the news yet, a failover under way), for up to [`ATTEMPTS`] tries.
    /// Each try plans from the cluster as it is, so what is done is not done again.
    async fn run(&mut self, group: &[Move]) -> Result<(), Error> {
        let mut last = None;
        let mut counted = std::collections::BTreeSet::new();
        for attempt in 0..ATTEMPTS {
            if attempt > 0 {
                tokio::time::sleep(Duration::from_millis(300 * attempt as u64)).await;
            }
            let tried = match self.atomic {
                true => self.both_ways(group, &mut counted).await,
                false => self.once(group, &mut counted).await,
            };
            match tried {
                Ok(()) => {
                    let uncounted = group.len() - counted.len();
                    self.done.fetch_add(uncounted, Ordering::Relaxed);
                    return Ok(());
                }
                Err(e @ Error::Stopped) => return Err(e),
                Err(e) => last = Some(e),
            }
        }
        Err(last.expect("at least one attempt"))
    }

    /// Counts `slot` as done once, whichever try moved its keys.
    fn count(&self, counted: &mut std::collections::BTreeSet<u16>, slot: u16) {
        if counted.insert(slot) {
            self.done.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// One try: plans every slot of the group, then runs the plans part by part.
    async fn once(
        &mut self,
        group: &[Move],
        counted: &mut std::collections::BTreeSet<u16>,
    ) -> Result<(), Error> {
        let views = discover(self.config).await?;
        let cluster = Cluster::new(&views);
        let mut plans = Vec::new();
        for m in group {
            let to = successor(&cluster, &m.to, self.shards).to_string();
            let plan = slot_plan(&cluster, m.slot, &to)
                .map_err(|e| Error::Plan(format!("slot {}: {e}", m.slot)))?;
            if !plan.is_done() {
                plans.push((m.slot, to, plan));
            }
        }
        let addrs = addresses(&views);
        let (journal, dial, pace) = (self.journal, self.dial, self.pace);
        for (slot, _, plan) in &plans {
            repair::mark(*slot, journal, true).await?;
            repair::run_steps_paced(*slot, &plan.keys, &addrs, journal, dial, pace).await?;
            self.count(counted, *slot);
        }
        for (slot, _, plan) in &plans {
            repair::run_steps(*slot, &plan.finalize, &addrs, journal, dial).await?;
        }
        // The targets' replicas bind the slots to them before the sources let go: a
        // failover of a target now cannot forget a move.
        let shards = cluster.shards();
        let mut by_target: BTreeMap<&str, Vec<(u16, &str)>> = BTreeMap::new();
        for (slot, to, _) in &plans {
            by_target.entry(to).or_default().push((*slot, to));
        }
        for (to, moved) in &by_target {
            let replicas: HashMap<String, String> = (shards.get(*to).into_iter().flatten())
                .filter_map(|id| Some((id.clone(), addrs.get(id)?.clone())))
                .collect();
            repair::await_agreement_all(moved, &replicas, dial).await;
        }
        for (slot, _, plan) in &plans {
            repair::run_steps(*slot, &plan.rest, &addrs, journal, dial).await?;
        }
        let moved: Vec<(u16, &str)> = plans.iter().map(|(s, to, _)| (*s, to.as_str())).collect();
        repair::await_agreement_all(&moved, &addrs, dial).await;
        for (slot, _, _) in &plans {
            repair::mark(*slot, journal, false).await?;
        }
        Ok(())
    }

    /// One try on a cluster that migrates atomically: slots a migration left open with
    /// `SETSLOT` (an operator's tool cut short, a failover in the middle of one) are
    /// finished the same way, with MIGRATE, since the server refuses to start an atomic
    /// migration of a slot being migrated by hand; the others move atomically.
    async fn both_ways(
        &mut self,
        group: &[Move],
        counted: &mut std::collections::BTreeSet<u16>,
    ) -> Result<(), Error> {
        let views = discover(self.config).await?;
        let open = Cluster::new(&views).open_migrations();
        let (by_hand, rest): (Vec<Move>, Vec<Move>) = group
            .iter()
            .cloned()
            .partition(|m| open.contains_key(&m.slot));
        if !by_hand.is_empty() {
            self.once(&by_hand, counted).await?;
        }
        self.atomically(&rest, counted).await
    }

    /// One try with Valkey's atomic slot migration: one job a source and target, each
    /// journalled before it is sent and watched until it ends. The server moves the keys,
    /// waits for the target's replicas and hands the slots over itself; a job already
    /// running (a run cut short) is watched rather than started again.
    async fn atomically(
        &mut self,
        group: &[Move],
        counted: &mut std::collections::BTreeSet<u16>,
    ) -> Result<(), Error> {
        let views = discover(self.config).await?;
        let cluster = Cluster::new(&views);
        let mut jobs: BTreeMap<(String, String), Vec<u16>> = BTreeMap::new();
        for m in group {
            let to = successor(&cluster, &m.to, self.shards).to_string();
            let claims = cluster.claims(m.slot);
            let [owner] = claims[..] else {
                let why = format!("slot {}: {} live owners", m.slot, claims.len());
                return Err(Error::Plan(why));
            };
            if owner.id != to {
                jobs.entry((owner.id.clone(), to)).or_default().push(m.slot);
            }
        }
        let addrs = addresses(&views);
        for ((source, target), slots) in &jobs {
            let step = Step::MigrateSlots {
                on: source.clone(),
                ranges: ranges_of(slots),
                target: target.clone(),
            };
            let first = slots[0];
            repair::run_steps_paced(first, &[step], &addrs, self.journal, self.dial, self.pace)
                .await?;
            for slot in slots {
                self.count(counted, *slot);
            }
        }
        Ok(())
    }
}

/// `[1, 2, 3, 7]` as `[(1, 3), (7, 7)]`.
fn ranges_of(slots: &[u16]) -> Vec<(u16, u16)> {
    let mut out: Vec<(u16, u16)> = Vec::new();
    for &s in slots {
        match out.last_mut() {
            Some((_, end)) if *end + 1 == s => *end = s,
            _ => out.push((s, s)),
        }
    }
    out
}

/// True when every live master knows `CLUSTER MIGRATESLOTS` (Valkey 9).
async fn atomic_everywhere(config: &Config, dial: &crate::client::Dial) -> bool {
    let Ok(views) = discover(config).await else {
        return false;
    };
    let cluster = Cluster::new(&views);
    let addrs = addresses(&views);
    for m in cluster.live_masters() {
        let Some(addr) = addrs.get(&m.id) else {
            return false;
        };
        let Ok(mut c) = crate::client::Conn::dial(addr, dial).await else {
            return false;
        };
        let known = match c.call(&["COMMAND", "INFO", "CLUSTER|MIGRATESLOTS"]).await {
            Ok(crate::protocol::Value::Array(info)) => {
                info.first().is_some_and(|i| i.as_array().is_some())
            }
            _ => false,
        };
        if !known {
            return false;
        }
    }
    true
}

/// `to`, or, when it is no longer a live master, the replica of its shard that now is.
fn successor<'a>(
    cluster: &Cluster,
    to: &'a str,
    shards: &'a BTreeMap<String, Vec<String>>,
) -> &'a str {
    if cluster.is_live_master(to) {
        return to;
    }
    let replicas = shards.get(to).into_iter().flatten();
    replicas
        .map(String::as_str)
        .find(|r| cluster.is_live_master(r))
        .unwrap_or(to)
}
