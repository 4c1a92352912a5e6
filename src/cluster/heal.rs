//! Healing: after every refresh, remember what the cluster shows (open migrations, shard
//! members), decide every unsettled slot, hold the broken ones, and repair them one at a
//! time (`repair.mode = "auto"`). [`assess`] is also what `slotguard check` and
//! `slotguard repair` run.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::task::JoinHandle;
use tracing::{error, info, warn};

use super::authority::{self, Cluster, Decision, Migration, State};
use super::coordination::Coordinator;
use super::journal::{lock, Change, Journal};
use super::nodes::NodeLine;
use super::repair;
use crate::client::{Conn, Dial};
use crate::routing::{Hint, Routing};

/// The healer's state between refreshes.
pub struct Healer {
    journal: Arc<Mutex<Journal>>,
    /// The link to etcd that shares the journal and the authority (`[coordination]`).
    coordinator: Option<Arc<Coordinator>>,
    /// Since when each unsettled slot has been unsettled (for `repair.grace`).
    unsettled_since: HashMap<u16, Instant>,
    /// The repair running now, if any.
    repair: Option<JoinHandle<()>>,
    /// Repairs that failed in a row, and when the next may start: a node that refuses a
    /// step (a restarted node whose cluster is still down) is not asked again at once.
    retry: Arc<Mutex<(u32, Instant)>>,
    /// The slot whose repair failed last: the next repair starts after it, so that one
    /// that keeps failing does not starve the others (the step it fails on may wait for
    /// another slot's repair: a target that refuses keys while a second slot it imports
    /// is bound, in its own view, to a failed master).
    failed: Arc<Mutex<Option<u16>>>,
    strays: Strays,
    /// The slots held at the last look, and those of them a repair was planned for.
    held: BTreeSet<u16>,
    planned: BTreeSet<u16>,
    /// Some slot was held for the first time at the last look.
    fresh: bool,
}

/// The wait after the first failed repair, doubled after each further one up to
/// [`RETRY_MAX`].
const RETRY_FIRST: Duration = Duration::from_millis(100);
const RETRY_MAX: Duration = Duration::from_secs(2);

impl Healer {
    pub fn new(journal: Journal, coordinator: Option<Arc<Coordinator>>) -> Healer {
        Healer {
            journal: Arc::new(Mutex::new(journal)),
            coordinator,
            unsettled_since: HashMap::new(),
            repair: None,
            retry: Arc::new(Mutex::new((0, Instant::now()))),
            failed: Arc::new(Mutex::new(None)),
            strays: Strays::default(),
            held: BTreeSet::new(),
            planned: BTreeSet::new(),
            fresh: false,
        }
    }

    /// True while a repair runs.
    pub fn repairing(&self) -> bool {
        self.repair.as_ref().is_some_and(|r| !r.is_finished())
    }

    /// True when the last look held a slot the look before did not: the next look comes
    /// soon, to confirm it (see [`Healer::assess`]).
    pub fn confirming(&self) -> bool {
        self.fresh
    }

    /// Decides every unsettled slot from fresh views; holds the broken ones and starts a
    /// repair when allowed. Returns the decisions that are not stable.
    pub async fn assess(
        &mut self,
        routing: &Arc<Routing>,
        views: &[(String, Vec<NodeLine>)],
    ) -> Vec<Decision> {
        let config = routing.config().clone();
        let now = Instant::now();
        let since = &mut self.unsettled_since;
        let grace = |candidates: &BTreeSet<u16>| {
            since.retain(|slot, _| candidates.contains(slot));
            for &slot in candidates {
                since.entry(slot).or_insert(now);
            }
            since
                .iter()
                .filter(|(_, t)| now.duration_since(**t) >= config.repair_grace)
                .map(|(slot, _)| *slot)
                .collect()
        };
        let dial = config.dial();
        // A shared journal is read first: what other proxies saw counts here too. Without
        // etcd the journal as last read serves.
        let coordinator = self.coordinator.clone();
        if let Some(c) = &coordinator {
            let _ = c.sync(&self.journal).await;
        }
        let takes_back = routing
            .importer_takes_back
            .load(std::sync::atomic::Ordering::Relaxed);
        let (decisions, interesting) = assess(
            views,
            &self.journal,
            grace,
            &dial,
            &mut self.strays,
            takes_back,
        )
        .await;
        if let Some(c) = coordinator
            .as_ref()
            .filter(|_| lock(&self.journal).has_outbox())
        {
            let _ = c.sync(&self.journal).await;
        }
        // Held: broken and conflicted slots, and any slot of a migration that waits for the
        // cluster to settle (the map may name a node that lacks moved keys). A slot that
        // is merely unowned waits by itself, through the failures it meets.
        let held: BTreeSet<u16> = decisions
            .iter()
            .filter(|d| match d.state {
                State::Broken { .. } | State::Conflicted { .. } => true,
                State::Orphaned { .. } => interesting.contains(&d.slot),
                State::Stable { .. } | State::Migrating { .. } => false,
            })
            .map(|d| d.slot)
            .collect();
        routing.set_watched(&interesting);
        routing.set_blocked(&held);
        let slots = &routing.metrics.slots;
        let broken = decisions
            .iter()
            .filter(|d| matches!(d.state, State::Broken { .. }))
            .count();
        slots.with_label_values(&["held"]).set(held.len() as i64);
        slots.with_label_values(&["broken"]).set(broken as i64);
        let due = self.retry.lock().unwrap_or_else(|e| e.into_inner()).1 <= now;
        // With several proxies, only the one that holds the authority's lease repairs.
        let authority = coordinator.is_none_or(|c| c.is_authority());
        // The views and the key counts of one look are read a few milliseconds apart, and
        // a migration moves on in between: a target seen importing before its source was
        // told to migrate, and counted after keys arrived, looks like S13. A slot is held
        // as soon as it looks broken, but repaired only when the next look, read afresh,
        // plans a repair for it too.
        let planned: BTreeSet<u16> = decisions
            .iter()
            .filter(|d| !d.plan.is_empty())
            .map(|d| d.slot)
            .collect();
        let confirmed = std::mem::replace(&mut self.planned, planned);
        self.fresh = !held.is_subset(&self.held) || !self.planned.is_subset(&confirmed);
        self.held = held;
        if config.repair_auto && due && authority && !self.repairing() {
            if self.planned.is_empty() {
                close_on_replicas(routing, views, &dial).await;
            } else if let Some(d) = self.next_repair(&decisions, &confirmed) {
                let addrs = addresses(views);
                self.start_repair(routing, addrs, d);
            }
        }
        decisions
    }

    /// The confirmed repair to run next: the first after the slot whose repair failed
    /// last, else the first.
    fn next_repair<'d>(
        &self,
        decisions: &'d [Decision],
        confirmed: &BTreeSet<u16>,
    ) -> Option<&'d Decision> {
        let mut ready = decisions
            .iter()
            .filter(|d| !d.plan.is_empty() && confirmed.contains(&d.slot));
        let failed = *self.failed.lock().unwrap_or_else(|e| e.into_inner());
        let first = ready.clone().next();
        failed.and_then(|f| ready.find(|d| d.slot > f)).or(first)
    }

    fn start_repair(
        &mut self,
        routing: &Arc<Routing>,
        addrs: HashMap<String, String>,
        d: &Decision,
    ) {
        let (slot, plan) = (d.slot, d.plan.clone());
        if let State::Broken { case, why } = &d.state {
            info!(slot, %case, why, steps = plan.len(), "repair starts");
        }
        let journal = self.journal.clone();
        let retry = self.retry.clone();
        let failed = self.failed.clone();
        let routing = routing.clone();
        let config = routing.config();
        let dial = config
            .dial()
            .with_limit(config.connect_timeout.max(Duration::from_secs(5)));
        self.repair = Some(tokio::spawn(async move {
            let pace = repair::Pace {
                sent: Some(&routing.metrics.repair_steps),
                ..repair::Pace::default()
            };
            let result = repair::run(slot, &plan, &addrs, &journal, &dial, &pace).await;
            let outcome = if result.is_ok() { "ok" } else { "failed" };
            routing.metrics.repairs.with_label_values(&[outcome]).inc();
            {
                // What may pass (a node not reached, a TRYAGAIN, the journal's etcd) is
                // tried again soon, then less and less often; what will not (a node's
                // refusal of the step, not being the authority) waits the longest.
                let mut retry = retry.lock().unwrap_or_else(|e| e.into_inner());
                let failures = if result.is_ok() { 0 } else { retry.0 + 1 };
                let wait = match (&result, failures) {
                    (_, 0) => Duration::ZERO,
                    (Err(e), _) if !e.may_pass() => RETRY_MAX,
                    (_, n) => RETRY_FIRST
                        .saturating_mul(1 << (n - 1).min(5))
                        .min(RETRY_MAX),
                };
                *retry = (failures, Instant::now() + wait);
                *failed.lock().unwrap_or_else(|e| e.into_inner()) = result.is_err().then_some(slot);
            }
            match result {
                Ok(()) => info!(slot, "repair finished"),
                Err(e) if e.may_pass() => {
                    warn!(slot, error = %e, "repair stopped; it will be planned again")
                }
                Err(e) => error!(
                    slot,
                    error = %e,
                    retry_in = ?RETRY_MAX,
                    "repair refused; it will be planned again from the cluster as it is then"
                ),
            }
            routing.hint(Hint::Refresh);
        }));
    }
}

/// Closes what replicas show open and their masters have closed: the master is told
/// `CLUSTER SETSLOT <slot> STABLE` again, which Valkey replicates. The slot is served
/// meanwhile (a replica's open state routes nothing), so nothing is held for it.
async fn close_on_replicas(routing: &Routing, views: &[(String, Vec<NodeLine>)], dial: &Dial) {
    let cluster = Cluster::new(views);
    for (master, slot) in cluster.stale_on_replicas() {
        let Some(addr) = cluster.addr(&master) else {
            continue;
        };
        info!(slot, master = %master, "a replica shows the slot open and its master does not; closing it again");
        routing.metrics.repair_steps.inc();
        let stable = ["CLUSTER", "SETSLOT", &slot.to_string(), "STABLE"];
        let closed = async { Conn::dial(addr, dial).await?.call_ok(&stable).await };
        if let Err(e) = closed.await {
            warn!(slot, addr, error = %e, "cannot close the slot again");
        }
    }
}

/// Keys on masters that do not own their slot, with nothing open there: what a migration
/// leaves on the target's heir when both its ends failed over unwatched (S7). Found by an
/// audit of a master's key counts, once each time a node becomes a live master (a
/// failover, a restart, the proxy's first look at it); the slots found stay of interest
/// until they are settled.
#[derive(Default)]
pub struct Strays {
    /// The live masters already audited.
    masters: BTreeSet<String>,
    /// Slots found with keys on a master that does not own them.
    slots: BTreeSet<u16>,
}

impl Strays {
    /// Audits the live masters not audited yet, and forgets those that are no longer
    /// live masters (audited again if they become one). A master that does not answer is
    /// audited at a later look.
    async fn audit(
        &mut self,
        cluster: &Cluster<'_>,
        views: &[(String, Vec<NodeLine>)],
        dial: &Dial,
    ) {
        self.masters.retain(|id| cluster.is_live_master(id));
        for (addr, lines) in views {
            let Some(line) = lines.iter().find(|l| l.myself) else {
                continue;
            };
            if !cluster.is_live_master(&line.id) || self.masters.contains(&line.id) {
                continue;
            }
            let id = line.id.as_str();
            let open = |slot: u16| {
                line.migrating
                    .iter()
                    .chain(&line.importing)
                    .any(|(s, _)| *s == slot)
            };
            let slots: Vec<u16> = (0..crate::protocol::SLOTS as u16)
                .filter(|&s| !line.owns(s) && !open(s))
                .collect();
            let commands: Vec<Vec<String>> = slots
                .iter()
                .map(|s| vec!["CLUSTER".into(), "COUNTKEYSINSLOT".into(), s.to_string()])
                .collect();
            let mut importing = BTreeSet::new();
            let counts = match Conn::dial(addr, dial).await {
                Ok(mut conn) => {
                    // Keys a running atomic slot migration (Valkey 9) brings in are not
                    // strays: the job hands the slot over when it ends.
                    if let Ok(jobs) = super::repair::slot_migrations(&mut conn).await {
                        let running = jobs.iter().filter(|j| !j.export && j.active());
                        importing.extend(running.flat_map(|j| j.slots().collect::<Vec<_>>()));
                    }
                    conn.pipeline(&commands, AUDIT_LIMIT).await
                }
                Err(e) => Err(e),
            };
            let counts = match counts {
                Ok(counts) => counts,
                Err(e) => {
                    warn!(node = id, error = %e, "cannot count keys for the stray-key audit");
                    continue;
                }
            };
            let found: Vec<u16> = slots
                .iter()
                .zip(counts)
                .filter(|(_, n)| n.as_int().is_some_and(|n| n > 0))
                .map(|(&slot, _)| slot)
                .filter(|slot| !importing.contains(slot))
                .collect();
            if !found.is_empty() {
                let first: Vec<u16> = found.iter().copied().take(10).collect();
                warn!(
                    node = id,
                    slots = found.len(),
                    ?first,
                    "keys of slots this master does not own"
                );
                self.slots.extend(found);
            }
            self.masters.insert(line.id.clone());
        }
    }
}

/// The longest a stray-key audit of one master may take.
const AUDIT_LIMIT: Duration = Duration::from_secs(2);

/// (id, address) of every node that answered as a master, live or flagged failed.
fn answering_masters<'v>(
    views: &'v [(String, Vec<NodeLine>)],
) -> impl Iterator<Item = (&'v str, &'v str)> + 'v {
    views.iter().filter_map(|(addr, lines)| {
        let me = lines.iter().find(|l| l.myself && l.master)?;
        Some((me.id.as_str(), addr.as_str()))
    })
}

/// The authority's assessment of fresh views: remembers what they show in the journal,
/// counts keys where it matters, decides every unsettled slot, and forgets migrations that
/// have settled. `grace` gets the candidate slots and returns those past `repair.grace`.
/// `strays` carries the stray-key audit from one look to the next. Returns the decisions
/// that are not stable, and the slots with a migration open or remembered. `takes_back`:
/// the servers are Valkey 8+ (`authority::Memory::importer_takes_back`).
pub async fn assess(
    views: &[(String, Vec<NodeLine>)],
    journal: &Mutex<Journal>,
    grace: impl FnOnce(&BTreeSet<u16>) -> BTreeSet<u16>,
    dial: &Dial,
    strays: &mut Strays,
    takes_back: bool,
) -> (Vec<Decision>, BTreeSet<u16>) {
    let cluster = Cluster::new(views);
    let remembered = remember(journal, &cluster);
    let mut interesting: BTreeSet<u16> = remembered.migrations.keys().copied().collect();
    interesting.extend(cluster.open_migrations().into_keys());
    strays.audit(&cluster, views, dial).await;
    let contested = cluster.contested();
    let candidates: BTreeSet<u16> = cluster
        .candidates()
        .into_iter()
        .chain(interesting.iter().copied())
        .chain(strays.slots.iter().copied())
        .chain(contested.iter().copied())
        .collect();
    // Slots bound to a failed master and explained by no migration are decided by where
    // their keys are. After a migration nobody saw there are a few; a shard down with no
    // heir has thousands, which wait for their master uncounted.
    let stray: BTreeSet<u16> = candidates
        .iter()
        .copied()
        .filter(|s| !interesting.contains(s) && !cluster.bound_to_dead(*s).is_empty())
        .collect();
    let mut counted = interesting.clone();
    counted.extend(&strays.slots);
    counted.extend(contested);
    if stray.len() <= STRAYS_COUNTED {
        counted.extend(stray);
    }
    let keys = count_keys(views, &counted, dial).await;
    let grace = grace(&candidates);
    let memory = authority::Memory {
        migrations: &remembered.migrations,
        shards: &remembered.shards,
        keys: &keys,
        settled_long_enough: &grace,
        repairing: &remembered.repairing,
        interrupted: &remembered.interrupted,
        importer_takes_back: takes_back,
    };
    let decisions: Vec<Decision> = candidates
        .iter()
        .map(|&slot| authority::decide(&cluster, &memory, slot))
        .filter(|d| !matches!(d.state, State::Stable { .. }))
        .collect();
    // A remembered migration whose slot is stable again is over.
    let unsettled: BTreeSet<u16> = decisions.iter().map(|d| d.slot).collect();
    strays.slots.retain(|slot| unsettled.contains(slot));
    let mut j = lock(journal);
    let m = j.memory();
    let remembered = m
        .migrations
        .keys()
        .chain(&m.repairing)
        .chain(&m.interrupted);
    let settled: BTreeSet<u16> = remembered
        .filter(|slot| !unsettled.contains(slot))
        .copied()
        .collect();
    if !settled.is_empty() {
        info!(slots = settled.len(), "migrations settled");
        for slot in settled {
            j.record(Change::Settled(slot));
        }
        save(&j);
    }
    (decisions, interesting)
}

/// Most slots bound to a failed master whose keys are counted at each refresh.
const STRAYS_COUNTED: usize = 128;

/// What the authority needs from the journal (not its step log).
struct Remembered {
    migrations: BTreeMap<u16, Migration>,
    shards: BTreeMap<String, Vec<String>>,
    repairing: BTreeSet<u16>,
    interrupted: BTreeSet<u16>,
}

/// Records open migrations and shard members in the journal (saving only when something
/// changed); returns what the authority needs of it.
fn remember(journal: &Mutex<Journal>, cluster: &Cluster) -> Remembered {
    let mut j = lock(journal);
    let mut changed = false;
    for (master, replicas) in cluster.shards() {
        if !replicas.is_empty() {
            changed |= j.record(Change::Shard(master, replicas));
        }
    }
    for (slot, (source, target)) in cluster.open_migrations() {
        if !j.memory().migrations.contains_key(&slot) {
            let members = |id: &str| j.memory().shards.get(id).cloned().unwrap_or_default();
            let m = Migration {
                source_members: members(&source),
                target_members: members(&target),
                source,
                target,
            };
            info!(slot, source = %m.source, target = %m.target, "migration seen; remembered");
            changed |= j.record(Change::Seen(slot, m));
        }
    }
    // Entries that name no node of this cluster belong to another one: dropped.
    let known = |id: &String| cluster.addr(id).is_some();
    let mut interrupted = Vec::new();
    let mut foreign = Vec::new();
    for (&slot, m) in &j.memory().migrations {
        if cluster.is_gone(&m.source) || cluster.is_gone(&m.target) {
            interrupted.push(slot);
        }
        let members = m.source_members.iter().chain(&m.target_members);
        if !(known(&m.source) || known(&m.target) || members.clone().any(known)) {
            foreign.push(slot);
        }
    }
    for slot in interrupted {
        changed |= j.record(Change::Interrupted(slot));
    }
    for slot in foreign {
        changed |= j.record(Change::Foreign(slot));
    }
    if changed {
        save(&j);
    }
    let memory = j.memory();
    Remembered {
        migrations: memory.migrations.clone(),
        shards: memory.shards.clone(),
        repairing: ours(&j, cluster),
        interrupted: memory.interrupted.clone(),
    }
}

/// The slots whose repair by this proxy started and did not finish, less those where a
/// migration now open moves keys the other way from the repair's last move: someone
/// else's migration (an operator's that began as the repair failed), not the repair cut
/// short, and left to whoever runs it.
fn ours(j: &Journal, cluster: &Cluster) -> BTreeSet<u16> {
    let open = cluster.open_migrations();
    let last_move = |slot: u16| {
        j.memory().steps.iter().rev().find_map(|r| match &r.step {
            authority::Step::MoveKeys { from, to, .. } if r.slot == slot => Some((from, to)),
            _ => None,
        })
    };
    j.memory()
        .repairing
        .iter()
        .copied()
        .filter(|&slot| match (open.get(&slot), last_move(slot)) {
            (Some((source, target)), Some((from, to))) => source == from && target == to,
            _ => true,
        })
        .collect()
}

/// Node id to address, from the views.
pub fn addresses(views: &[(String, Vec<NodeLine>)]) -> HashMap<String, String> {
    views
        .iter()
        .flat_map(|(_, lines)| lines)
        .filter(|l| !l.addr.is_empty())
        .map(|l| (l.id.clone(), l.addr.clone()))
        .collect()
}

fn save(j: &Journal) {
    if let Err(e) = j.save() {
        warn!(error = %e, "cannot write the journal");
    }
}

/// `CLUSTER COUNTKEYSINSLOT` for each slot of interest on every master that answered: one
/// pipelined exchange a master, all masters at once. A look during a move of 64 slots
/// counts 64 slots on every master, and every request held for the look waits for it.
async fn count_keys(
    views: &[(String, Vec<NodeLine>)],
    slots: &BTreeSet<u16>,
    dial: &Dial,
) -> HashMap<(String, u16), u64> {
    let mut out = HashMap::new();
    if slots.is_empty() {
        return out;
    }
    let commands: Arc<Vec<Vec<String>>> = Arc::new(
        slots
            .iter()
            .map(|s| vec!["CLUSTER".into(), "COUNTKEYSINSLOT".into(), s.to_string()])
            .collect(),
    );
    // Masters cut off by a partition count too: their keys decide S11.
    let mut asks = tokio::task::JoinSet::new();
    for (id, addr) in answering_masters(views) {
        let (id, addr) = (id.to_string(), addr.to_string());
        let (commands, dial) = (commands.clone(), dial.clone());
        asks.spawn(async move {
            let mut conn = Conn::dial(&addr, &dial).await.ok()?;
            let replies = conn.pipeline(&commands, dial.limit).await.ok()?;
            Some((id, replies))
        });
    }
    while let Some(done) = asks.join_next().await {
        let Ok(Some((id, replies))) = done else {
            continue;
        };
        for (&slot, reply) in slots.iter().zip(replies) {
            if let Some(n) = reply.as_int() {
                out.insert((id.clone(), slot), n.max(0) as u64);
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::authority::Step;
    use crate::cluster::journal::StepRecord;

    /// Seed 115: the repair of slot 6075 kept failing on a target that refused keys
    /// because slot 16309, which it imported, was bound in its own view to a failed
    /// master; 16309's repair, which would have bound it to the live one, never ran,
    /// since the lowest slot went first each time.
    #[test]
    fn a_repair_that_failed_lets_the_next_slot_go_first() {
        let healer = Healer::new(Journal::open(None).unwrap(), None);
        let repair = |slot| Decision {
            slot,
            state: State::Broken {
                case: authority::Case::SourceLost,
                why: String::new(),
            },
            plan: vec![Step::Stable {
                on: "A".into(),
                slot,
            }],
        };
        let decisions = vec![repair(6075), repair(6683), repair(16309)];
        let confirmed = BTreeSet::from([6075, 16309]);
        let next = |h: &Healer| h.next_repair(&decisions, &confirmed).map(|d| d.slot);
        assert_eq!(next(&healer), Some(6075));
        *healer.failed.lock().unwrap() = Some(6075);
        assert_eq!(next(&healer), Some(16309), "unconfirmed 6683 is skipped");
        *healer.failed.lock().unwrap() = Some(16309);
        assert_eq!(next(&healer), Some(6075), "and round again");
    }

    /// A migrating slot 50 to B, as each of them sees itself.
    fn views() -> Vec<(String, Vec<NodeLine>)> {
        let line = |id: &str, port: u16| NodeLine {
            id: id.into(),
            addr: format!("127.0.0.1:{port}"),
            myself: true,
            master: true,
            connected: true,
            ..NodeLine::default()
        };
        let mut a = line("A", 1);
        a.slots = vec![(0, 100)];
        a.migrating = vec![(50, "B".into())];
        let mut b = line("B", 2);
        b.importing = vec![(50, "A".into())];
        vec![
            ("127.0.0.1:1".into(), vec![a]),
            ("127.0.0.1:2".into(), vec![b]),
        ]
    }

    #[test]
    fn a_repair_cut_short_is_ours_only_if_it_moved_keys_the_same_way() {
        let views = views();
        let cluster = Cluster::new(&views);
        let mut j = Journal::open(None).unwrap();
        j.record(Change::Repairing(50, true));
        assert_eq!(ours(&j, &cluster), BTreeSet::from([50]), "no move recorded");
        let moving = |from: &str, to: &str| Step::MoveKeys {
            from: from.into(),
            to: to.into(),
            slot: 50,
            replace: false,
        };
        j.record(Change::Step(StepRecord::now(50, &moving("A", "B"), "ok")));
        assert_eq!(ours(&j, &cluster), BTreeSet::from([50]), "the same way");
        // A stray-key repair gave keys back from B to A and failed; then an operator's
        // migration from A to B is open: not ours to finish.
        j.record(Change::Step(StepRecord::now(50, &moving("B", "A"), "ASK")));
        assert_eq!(ours(&j, &cluster), BTreeSet::new());
    }
}
