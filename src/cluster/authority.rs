//! The authority: one decision per unsettled slot, from every node's own view, the journal
//! of migrations, and where the keys are.
//!
//! Redis Cluster settles ownership by config epochs, which cannot tell the right owner of
//! a slot whose migration was cut by a crash (docs/FAULTS.md). The authority decides by the
//! migration it remembers (its direction, and which nodes formed each shard when it was
//! seen) and by key presence, never by comparing epochs across shards:
//!
//! - a migration whose two ends are live and agree is left alone (someone is running it),
//!   unless an end was failed by the cluster while it was open and came back (S1): its
//!   driver gave up, and it is finished forward;
//! - when one end of a migration failed over, the migration is finished forward onto the
//!   live master of the target shard (S2, S3, S4, S5, S6, S9, S10);
//! - a migration no node remembers any more but the journal does, with keys left on the
//!   target shard, is finished forward too (S7);
//! - a node importing a slot that its owner is not migrating gets its keys moved back to
//!   the owner (S13, S14), once that has lasted `grace` (a starting migration looks the
//!   same for a moment); so does a master holding keys of a slot another owns with
//!   nothing open (S7 when no journal remembers the migration);
//! - a slot bound to a failed master, with no migration open or remembered (S10 when the
//!   proxy never saw the migration), goes where its keys are: to the one live master that
//!   holds keys of it (the dead master's successor, which replicated them), or, with no
//!   keys anywhere, to the dead master's remembered successor;
//! - two live masters claiming the slot, keys on two, or no live master for it, is
//!   reported and held: nothing safe can be done without a human or a returning node (S1,
//!   S8).
//!
//! This module is pure: it takes views and key counts and returns decisions and plans.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use serde::{Deserialize, Serialize};

use super::nodes::NodeLine;
pub use crate::routing::decision::{Case, Decision, Orphan, State, Step};

/// A remembered migration of one slot, between two shards.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Migration {
    /// Master that was migrating the slot away, and its replicas when first seen.
    pub source: String,
    pub source_members: Vec<String>,
    /// Master that was importing it, and its replicas when first seen.
    pub target: String,
    pub target_members: Vec<String>,
}

/// What the cluster looks like right now, from the nodes that answered.
pub struct Cluster<'a> {
    /// Each answering node's own view.
    views: Vec<&'a [NodeLine]>,
    /// id -> the node's own line (from its own view).
    own: HashMap<&'a str, &'a NodeLine>,
    /// id -> the node's whole view.
    view_of: HashMap<&'a str, &'a [NodeLine]>,
    /// ids flagged `fail` by some answering node.
    failed: BTreeSet<&'a str>,
    /// id -> address, from any view.
    addrs: HashMap<&'a str, &'a str>,
}

impl<'a> Cluster<'a> {
    pub fn new(views: &'a [(String, Vec<NodeLine>)]) -> Cluster<'a> {
        let mut own = HashMap::new();
        let mut view_of = HashMap::new();
        let mut failed = BTreeSet::new();
        let mut addrs = HashMap::new();
        for (_, lines) in views {
            for l in lines {
                if l.myself {
                    own.insert(l.id.as_str(), l);
                    view_of.insert(l.id.as_str(), lines.as_slice());
                } else if l.fail {
                    failed.insert(l.id.as_str());
                }
                if !l.addr.is_empty() {
                    addrs.entry(l.id.as_str()).or_insert(l.addr.as_str());
                }
            }
        }
        Cluster {
            views: views.iter().map(|(_, l)| l.as_slice()).collect(),
            own,
            view_of,
            failed,
            addrs,
        }
    }

    /// A master that answered and that no answering node flags as failed.
    pub fn is_live_master(&self, id: &str) -> bool {
        self.own.get(id).is_some_and(|l| l.master) && !self.failed.contains(id)
    }

    /// Answers (as a master or a replica) and is not flagged `fail`.
    fn answers(&self, id: &str) -> bool {
        self.own.contains_key(id) && !self.failed.contains(id)
    }

    /// Known to be out of the game: flagged `fail` by the cluster, or answering as a
    /// replica. A node that only fails to answer is neither live nor gone: unknown.
    pub fn is_gone(&self, id: &str) -> bool {
        self.failed.contains(id) || self.own.get(id).is_some_and(|l| !l.master)
    }

    /// Every live master's own line.
    pub fn live_masters(&self) -> impl Iterator<Item = &'a NodeLine> + '_ {
        self.own
            .values()
            .copied()
            .filter(|l| self.is_live_master(&l.id))
    }

    pub fn addr(&self, id: &str) -> Option<&'a str> {
        self.addrs.get(id).copied()
    }

    /// The live master among the members of a shard.
    fn shard_master(&self, members: &[String]) -> Option<&'a NodeLine> {
        members
            .iter()
            .find(|m| self.is_live_master(m))
            .and_then(|m| self.own.get(m.as_str()).copied())
    }

    /// Replicas of each live master, as the views show them now.
    pub fn shards(&self) -> BTreeMap<String, Vec<String>> {
        let mut shards: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for m in self.live_masters() {
            shards.entry(m.id.clone()).or_default();
        }
        for l in self.views.iter().flat_map(|v| v.iter()) {
            if let Some(master) = &l.master_id {
                if let Some(replicas) = shards.get_mut(master) {
                    if !replicas.contains(&l.id) {
                        replicas.push(l.id.clone());
                    }
                }
            }
        }
        shards
    }

    /// Open migrations as the live masters' own lines show them: slot -> (source, target).
    pub fn open_migrations(&self) -> BTreeMap<u16, (String, String)> {
        let mut out = BTreeMap::new();
        for m in self.live_masters() {
            for (slot, target) in &m.migrating {
                out.insert(*slot, (m.id.clone(), target.clone()));
            }
        }
        for m in self.live_masters() {
            for (slot, source) in &m.importing {
                out.entry(*slot).or_insert((source.clone(), m.id.clone()));
            }
        }
        out
    }

    /// Masters that answer but that the cluster flags failed: cut off from it by a
    /// partition (or just back, and not yet cleared).
    fn cut_off(&self) -> impl Iterator<Item = &'a NodeLine> + '_ {
        self.own
            .values()
            .copied()
            .filter(|l| l.master && self.failed.contains(l.id.as_str()))
    }

    /// Slots that a cut-off master claims in its own view while a live master that is not
    /// its replica (as the cut-off master last saw its shard) claims them too: the claim
    /// of one side of a partition that the other never heard (S11).
    pub fn contested(&self) -> BTreeSet<u16> {
        let mut out = BTreeSet::new();
        for n in self.cut_off() {
            for o in self.live_masters() {
                if self.was_replica_of(&o.id, &n.id) {
                    continue;
                }
                for &(a, b) in &o.slots {
                    out.extend((a..=b).filter(|&s| n.owns(s)));
                }
            }
        }
        out
    }

    /// True when `id` is a replica of `master` in `master`'s own view.
    fn was_replica_of(&self, id: &str, master: &str) -> bool {
        self.view_of.get(master).is_some_and(|v| {
            v.iter()
                .any(|l| l.id == id && l.master_id.as_deref() == Some(master))
        })
    }

    /// Slots that need a look: open on any live master, without a live owner, or claimed
    /// by two (the two sides of a healed partition, until Redis settles which keeps it).
    pub fn candidates(&self) -> BTreeSet<u16> {
        let mut out: BTreeSet<u16> = self.open_migrations().into_keys().collect();
        let mut claims = vec![0u8; crate::protocol::SLOTS];
        for m in self.live_masters() {
            for &(a, b) in &m.slots {
                for c in &mut claims[a as usize..=b as usize] {
                    *c = c.saturating_add(1);
                }
            }
        }
        out.extend(
            claims
                .iter()
                .enumerate()
                .filter(|(_, &c)| c != 1)
                .map(|(s, _)| s as u16),
        );
        out
    }

    /// Slots a replica shows open while its master, live and answering, has nothing open
    /// for them: (master id, slot). Valkey replicates the open states to replicas, and a
    /// replica that was away when they were closed keeps them (a restarted node comes
    /// back with them from its nodes.conf).
    pub fn stale_on_replicas(&self) -> BTreeSet<(String, u16)> {
        let open = |l: &NodeLine| -> BTreeSet<u16> {
            l.migrating
                .iter()
                .chain(&l.importing)
                .map(|(s, _)| *s)
                .collect()
        };
        let mut out = BTreeSet::new();
        for replica in self.own.values().filter(|l| !l.master) {
            let Some(master) = replica.master_id.as_deref() else {
                continue;
            };
            let Some(line) = self.own.get(master).filter(|_| self.is_live_master(master)) else {
                continue;
            };
            let closed = open(replica)
                .into_iter()
                .filter(|s| !open(line).contains(s));
            out.extend(closed.map(|slot| (master.to_string(), slot)));
        }
        out
    }

    /// The master `viewer`'s own view binds `slot` to, if it answered and binds it.
    pub fn bound_in_view_of(&self, viewer: &str, slot: u16) -> Option<&'a str> {
        let view = self.view_of.get(viewer)?;
        let owner = view.iter().find(|l| l.master && l.owns(slot))?;
        Some(owner.id.as_str())
    }

    /// The live masters that own `slot` in their own view.
    pub fn claims(&self, slot: u16) -> Vec<&'a NodeLine> {
        self.live_masters().filter(|m| m.owns(slot)).collect()
    }

    /// True when some view shows `id` as a master that owns slots.
    fn claims_any(&self, id: &str) -> bool {
        self.views
            .iter()
            .flat_map(|v| v.iter())
            .any(|l| l.id == id && l.master && !l.slots.is_empty())
    }

    /// The live master that every view binding `slot` binds it to, when its own view binds
    /// it to no one: it lost the slot from its own table, so it serves the slot to nobody
    /// and (with full coverage) says the whole cluster is down, while every other node
    /// sends the slot's clients to it.
    pub fn disowned(&self, slot: u16) -> Option<&'a str> {
        let mut bound = self
            .views
            .iter()
            .flat_map(|v| v.iter())
            .filter(|l| l.master && l.owns(slot))
            .map(|l| l.id.as_str());
        let owner = bound.next()?;
        if bound.any(|id| id != owner) || !self.is_live_master(owner) {
            return None;
        }
        let own = self.view_of.get(owner)?;
        own.iter()
            .all(|l| !(l.master && l.owns(slot)))
            .then_some(owner)
    }

    /// Masters, not live, that some view binds the slot to.
    pub fn bound_to_dead(&self, slot: u16) -> BTreeSet<&'a str> {
        self.views
            .iter()
            .flat_map(|v| v.iter())
            .filter(|l| l.master && l.owns(slot) && !self.is_live_master(&l.id))
            .map(|l| l.id.as_str())
            .collect()
    }
}

/// Inputs beyond the views.
pub struct Memory<'a> {
    /// Remembered migrations by slot.
    pub migrations: &'a BTreeMap<u16, Migration>,
    /// Replicas of each master when last seen healthy, to follow a shard across failovers.
    pub shards: &'a BTreeMap<String, Vec<String>>,
    /// Keys per (node id, slot), for the nodes and slots asked about.
    pub keys: &'a HashMap<(String, u16), u64>,
    /// Slots whose importing-without-migrating shape has lasted past the grace period.
    pub settled_long_enough: &'a BTreeSet<u16>,
    /// Slots whose repair by this proxy started and did not finish.
    pub repairing: &'a BTreeSet<u16>,
    /// Slots whose migration had an end failed by the cluster while it was open.
    pub interrupted: &'a BTreeSet<u16>,
    /// The servers are Valkey 8 or later. There a master that died importing a slot keeps
    /// that in its nodes.conf and, started again, takes the slot if the first news it has
    /// is that the source no longer claims it, bumping its config epoch without consensus
    /// ("Clear my importing source for the slot"); with that epoch it wins its whole shard
    /// back from its heir, which resyncs from its stale copy. So a migration whose target
    /// died importing is never finished onto the target's heir there: it is undone.
    pub importer_takes_back: bool,
}

impl Memory<'_> {
    /// Keys of `slot` counted on `id` (0 when not counted).
    fn keys(&self, id: &str, slot: u16) -> u64 {
        self.keys.get(&(id.to_string(), slot)).copied().unwrap_or(0)
    }

    /// Every node known to have belonged to the shard `id` led or belonged to.
    fn shard(&self, slot: u16, id: &str) -> Vec<String> {
        let mut out = Vec::new();
        if let Some(m) = self.migrations.get(&slot) {
            for (master, members) in [
                (&m.source, &m.source_members),
                (&m.target, &m.target_members),
            ] {
                if master == id || members.iter().any(|x| x == id) {
                    out.push(master.clone());
                    out.extend(members.iter().cloned());
                }
            }
        }
        for (master, replicas) in self.shards {
            if master == id || replicas.iter().any(|x| x == id) {
                out.push(master.clone());
                out.extend(replicas.iter().cloned());
            }
        }
        out.sort();
        out.dedup();
        out.retain(|x| x != id);
        // `id` first: a live master is its own shard's master, whoever the remembered
        // lineage (which keeps old relations: a node once this one's master, or replica,
        // may serve another shard now) also names.
        out.insert(0, id.to_string());
        out
    }
}

/// A migration between its two finalizes: the target has bound the slot to itself with a
/// newer epoch, and the source, which still claims it, migrates it there and has none of
/// its keys left (counted in this look). Both claims are live, but they agree on where
/// every key is: the target has them all, and the source sends whatever it is asked for
/// there (ASK, or MOVED once gossip reaches it). Nothing is held: the slot map, which
/// follows the newer epoch, already names the target. Returns (source, target).
///
/// Any other second claim is a conflict. In S11 the claim that matters is the source's
/// heir's, which is newer than the target's; a source with keys left would lose them
/// when it hears of the target's claim.
fn finalizing<'a>(
    claims: &[&'a NodeLine],
    memory: &Memory,
    slot: u16,
) -> Option<(&'a str, &'a str)> {
    let [x, y] = claims else {
        return None;
    };
    [(x, y), (y, x)].into_iter().find_map(|(source, target)| {
        let migrates = source
            .migrating
            .iter()
            .any(|(s, to)| *s == slot && *to == target.id);
        let importing = target.importing.iter().any(|(s, _)| *s == slot);
        let emptied = memory.keys.get(&(source.id.clone(), slot)) == Some(&0);
        (migrates && !importing && emptied && target.config_epoch > source.config_epoch)
            .then_some((source.id.as_str(), target.id.as_str()))
    })
}

/// Decides one slot.
pub fn decide(cluster: &Cluster, memory: &Memory, slot: u16) -> Decision {
    let decision = |state, plan| Decision { slot, state, plan };
    let keys = |id: &str| memory.keys(id, slot);
    let claims = cluster.claims(slot);
    if let Some((from, to)) = finalizing(&claims, memory, slot) {
        let (from, to) = (from.to_string(), to.to_string());
        return decision(State::Migrating { from, to }, vec![]);
    }
    if claims.len() > 1 {
        let claims = claims.iter().map(|c| c.id.clone()).collect();
        return decision(State::Conflicted { claims }, vec![]);
    }
    let owner = claims.first().copied();
    if let Some(d) = claimed_across_a_partition(cluster, memory, slot, owner) {
        return d;
    }
    let open = |pick: fn(&NodeLine) -> &Vec<(u16, String)>| -> Vec<(&NodeLine, String)> {
        cluster
            .live_masters()
            .flat_map(|m| {
                pick(m)
                    .iter()
                    .filter(|(s, _)| *s == slot)
                    .map(move |(_, other)| (m, other.clone()))
            })
            .collect()
    };
    let migrating = open(|m| &m.migrating);
    let importing = open(|m| &m.importing);
    let nothing_open = migrating.is_empty() && importing.is_empty();

    // A live migration whose ends agree: left to whoever runs it, unless that was this
    // proxy's own repair, cut short, or an end went down under it and came back (S1: the
    // target restarts and reloads its importing state): then it is finished.
    if let ([(a, to)], [(b, from)]) = (&migrating[..], &importing[..]) {
        if *to == b.id && *from == a.id && owner.is_some_and(|o| o.id == a.id) {
            let (from, to) = (&a.id, &b.id);
            let cut = if memory.repairing.contains(&slot) {
                Some(format!(
                    "a repair moving the slot from {from} to {to} was cut short"
                ))
            } else if memory.interrupted.contains(&slot) {
                Some(format!(
                    "the migration from {from} to {to} lost an end that came back"
                ))
            } else {
                None
            };
            if let Some(why) = cut {
                if target_may_take_it_back(cluster, memory, slot, b) {
                    let why = format!(
                        "the migration from {from} to {to} lost its target's master, which may come back importing the slot: undone"
                    );
                    return undo(cluster, slot, a, Case::TargetLost, why, &keys);
                }
                let plan = finish_forward(cluster, slot, Some(a), b, &keys);
                return decision(
                    State::Broken {
                        case: Case::Resume,
                        why,
                    },
                    plan,
                );
            }
            let state = State::Migrating {
                from: a.id.clone(),
                to: b.id.clone(),
            };
            return decision(state, vec![]);
        }
    }

    // S13 / S14: a node imports the slot from its live owner, which does not migrate it.
    if let ([(b, from)], true) = (&importing[..], migrating.is_empty()) {
        if let Some(o) = owner.filter(|o| o.id == *from) {
            if !memory.settled_long_enough.contains(&slot) && keys(&b.id) == 0 {
                // A migration about to start looks the same for a moment (but has no keys
                // on the target yet).
                let state = State::Migrating {
                    from: o.id.clone(),
                    to: b.id.clone(),
                };
                return decision(state, vec![]);
            }
            let mut plan = Vec::new();
            if keys(&b.id) > 0 {
                // Giving keys back: the owner may hold newer copies, so nothing is replaced.
                plan.push(Step::MoveKeys {
                    from: b.id.clone(),
                    to: o.id.clone(),
                    slot,
                    replace: false,
                });
            }
            plan.push(Step::Stable {
                on: b.id.clone(),
                slot,
            });
            let why = format!(
                "{} imports the slot but its owner {} does not migrate it",
                b.id, o.id
            );
            return decision(
                State::Broken {
                    case: Case::StrayImport,
                    why,
                },
                plan,
            );
        }
    }

    // The migration's two ends: from the open flags, else from the journal.
    let ends = migrating
        .first()
        .map(|(a, t)| (a.id.clone(), t.clone()))
        .or_else(|| importing.first().map(|(b, s)| (s.clone(), b.id.clone())))
        .or_else(|| {
            memory
                .migrations
                .get(&slot)
                .map(|m| (m.source.clone(), m.target.clone()))
        });
    let Some((source, target)) = ends else {
        return match owner {
            Some(o) => strays(cluster, memory, slot, o),
            None => unremembered(cluster, memory, slot),
        };
    };
    // Act only on what the cluster has settled: a silent node may be back in a moment, or
    // about to be failed over; either way, guessing now would strand keys.
    for end in [&source, &target] {
        if !cluster.is_live_master(end) && !cluster.is_gone(end) {
            let why = Orphan::Silent { node: end.clone() };
            return decision(State::Orphaned { why }, vec![]);
        }
    }
    let t = match cluster.shard_master(&memory.shard(slot, &target)) {
        Some(t) => t,
        // Nothing remembers the target's shard. Its heir, if it has one, replicated the
        // keys the migration moved: it is the live master holding keys of the slot.
        None => {
            let moved: Vec<&NodeLine> = cluster
                .live_masters()
                .filter(|m| m.id != source && keys(&m.id) > 0)
                .collect();
            match moved[..] {
                [t] => t,
                // No keys moved, and the dead target's slots all went to an heir: the
                // migration is undone on the source, which still has every key.
                [] if cluster.is_gone(&target)
                    && !cluster.claims_any(&target)
                    && owner.is_some_and(|o| o.id == source) =>
                {
                    let why = format!(
                        "migration {source} -> {target} was cut; {target} failed over and its heir holds no key of the slot: undone"
                    );
                    let source = owner.expect("the source owns the slot");
                    return undo(cluster, slot, source, Case::TargetLost, why, &keys);
                }
                [] => {
                    let why = Orphan::TargetShardDown { target };
                    return decision(State::Orphaned { why }, vec![]);
                }
                _ => {
                    let claims = moved.iter().map(|m| m.id.clone()).collect();
                    return decision(State::Conflicted { claims }, vec![]);
                }
            }
        }
    };
    let source_shard = memory.shard(slot, &source);
    if let Some(o) = owner.filter(|o| source_shard.contains(&o.id)) {
        if nothing_open && keys(&t.id) == 0 {
            // Undone: the source's shard owns it, nothing is open, and the target shard
            // holds none of its keys (`undo`, or a migration given up before it moved any).
            return decision(
                State::Stable {
                    owner: o.id.clone(),
                },
                vec![],
            );
        }
    }
    if nothing_open && owner.is_some_and(|o| o.id == t.id) {
        // Finished: the target shard owns it and nothing is open.
        return decision(
            State::Stable {
                owner: t.id.clone(),
            },
            vec![],
        );
    }
    // The source shard's live master: remembered members, or else whoever owns the slot now
    // (the target aside): only a failover of the source shard hands its slot to another.
    let source_master = cluster
        .shard_master(&memory.shard(slot, &source))
        .or(owner.filter(|o| o.id != t.id));
    let Some(source_master) = source_master else {
        let why = Orphan::SourceShardDown { source };
        return decision(State::Orphaned { why }, vec![]);
    };

    let source_gone = !cluster.is_live_master(&source);
    let target_gone = !cluster.is_live_master(&target);
    // Keys left on the target shard are orphans of a cut migration, unless both ends are
    // the ones that ran it, alive all along, and closed it: then its driver undid it on
    // purpose, and what it left on the target is not the proxy's to move (S14 when the
    // target restarts).
    let closed_by_its_ends =
        !source_gone && !target_gone && nothing_open && !memory.interrupted.contains(&slot);
    let orphan_keys = owner.is_some_and(|o| o.id != t.id) && keys(&t.id) > 0 && !closed_by_its_ends;
    if !(source_gone || target_gone || orphan_keys || owner.is_none()) {
        // Both ends live, nothing remembered is wrong: the migration was finished or
        // undone by someone else.
        return match owner {
            Some(o) if nothing_open => decision(
                State::Stable {
                    owner: o.id.clone(),
                },
                vec![],
            ),
            _ => {
                let state = State::Migrating {
                    from: source,
                    to: target,
                };
                decision(state, vec![])
            }
        };
    }
    let case = match (source_gone, target_gone, owner.is_none()) {
        (true, true, _) => Case::Remembered,
        (true, false, _) => Case::SourceLost,
        (false, _, true) => Case::BoundToDead,
        (false, true, false) => Case::TargetLost,
        (false, false, false) => Case::Remembered,
    };
    // With no live owner (S10), Valkey itself gives the slot to the heir before anyone
    // could undo it: finished forward, as everywhere (docs/VALKEY.md).
    if let Some(o) = owner.filter(|o| o.id != t.id) {
        if target_may_take_it_back(cluster, memory, slot, t) {
            let why = format!(
                "migration {source} -> {target} was cut and its target died importing; undone onto {}",
                o.id
            );
            return undo(cluster, slot, o, case, why, &keys);
        }
    }
    let s = owner.or(Some(source_master)).filter(|s| s.id != t.id);
    let why = format!(
        "migration {source} -> {target} was cut; finishing it onto {}",
        t.id
    );
    let plan = finish_forward(cluster, slot, s, t, &keys);
    decision(State::Broken { case, why }, plan)
}

/// S11: a master finalized a migration and was cut off before anyone heard of it; the
/// source's replica, elected without hearing it, claims the slot too, with none of its
/// keys. When the two meet, Redis gives the slot to the higher config epoch, and the loser
/// deletes its keys of the slot as dirty. Which one wins is not for the proxy to know: a
/// node whose epoch collides with another's bumps its own after the partition heals, and
/// then wins every claim it makes. So, while they are apart, the keys are copied, through
/// the proxy, to the live claimant, and the slot is held: whichever side wins has every
/// key, and no write reaches the side that may lose. Not when the live claimant is the
/// cut-off master's own heir (an ordinary failover across a partition).
fn claimed_across_a_partition(
    cluster: &Cluster,
    memory: &Memory,
    slot: u16,
    owner: Option<&NodeLine>,
) -> Option<Decision> {
    let mut cut_off: Vec<&NodeLine> = cluster
        .cut_off()
        .filter(|n| n.owns(slot) && memory.keys(&n.id, slot) > 0)
        .collect();
    cut_off.sort_by(|a, b| a.id.cmp(&b.id));
    let [n] = cut_off[..] else {
        return None;
    };
    // With no live claimant yet, the other side may be electing one: acting now could make
    // its voters refuse an heir, and a whole shard would stay down.
    let o = owner?;
    if memory.shard(slot, &n.id).contains(&o.id) || cluster.was_replica_of(&o.id, &n.id) {
        return None;
    }
    // A copy cut short is run again: the keys the claimant has came from it (the cut-off
    // side changes nothing once it knows it is cut off, and the copy waits for that).
    let copy = memory.keys(&o.id, slot) == 0 || memory.repairing.contains(&slot);
    // On Valkey the claimant, a promoted replica of the source, still migrates the slot to
    // the cut-off target (SETSLOT is replicated), and would answer the copy's writes with
    // ASK: its side of the migration is closed first. The slot stays held.
    let migrating = o.migrating.iter().any(|(s, _)| *s == slot);
    let close = migrating.then(|| Step::Stable {
        on: o.id.clone(),
        slot,
    });
    let (plan, why) = match copy {
        true => (
            close
                .into_iter()
                .chain([Step::CopyKeys {
                    from: n.id.clone(),
                    to: o.id.clone(),
                    slot,
                }])
                .collect(),
            format!(
                "{} claims the slot with its keys and is cut off; {} claims it without them: the keys are copied there, and the slot is held until the partition heals",
                n.id, o.id
            ),
        ),
        false => (
            vec![],
            format!(
                "{} claims the slot with its keys and is cut off; {} claims it too and has keys: held until the partition heals",
                n.id, o.id
            ),
        ),
    };
    let state = State::Broken {
        case: Case::Partitioned,
        why,
    };
    Some(Decision { slot, state, plan })
}

/// A slot no live master owns and no migration explains. Bound to a failed master, it
/// goes where its keys are: a migration finished on that master, or a slot it was given,
/// that its replica never heard of when it took over (S10, the migration unseen). The
/// replica holds the keys, replicated; nobody else should.
fn unremembered(cluster: &Cluster, memory: &Memory, slot: u16) -> Decision {
    let decision = |state, plan| Decision { slot, state, plan };
    let orphaned = |why: Orphan| decision(State::Orphaned { why }, vec![]);
    let dead = cluster.bound_to_dead(slot);
    if let (true, Some(owner)) = (dead.is_empty(), cluster.disowned(slot)) {
        let why = format!(
            "every node binds the slot to {owner} but {owner} itself, which binds it to no one: it claims it again"
        );
        let claim = Step::Bind {
            on: owner.to_string(),
            slot,
            owner: owner.to_string(),
        };
        let state = State::Broken {
            case: Case::Disowned,
            why,
        };
        return decision(state, vec![claim]);
    }
    if dead.is_empty() {
        return orphaned(Orphan::Unbound);
    }
    if let Some(d) = dead.iter().find(|d| !cluster.is_gone(d)) {
        return orphaned(Orphan::Silent {
            node: d.to_string(),
        });
    }
    let dead: Vec<&str> = dead.into_iter().collect();
    let named = || dead.iter().map(|d| d.to_string()).collect();
    let mut holders = Vec::new();
    for m in cluster.live_masters() {
        match memory.keys.get(&(m.id.clone(), slot)) {
            Some(0) => {}
            Some(_) => holders.push(m),
            None => return orphaned(Orphan::Uncounted { dead: named() }),
        }
    }
    // Those known to have replicated the dead masters (journal), if known at all.
    let lineage: Vec<String> = dead.iter().flat_map(|d| memory.shard(slot, d)).collect();
    let known = lineage.len() > dead.len();
    let heir = match &holders[..] {
        [t] if !known || lineage.contains(&t.id) => *t,
        [] => match cluster.shard_master(&lineage) {
            Some(t) => t,
            None => return orphaned(Orphan::NoHeir { dead: named() }),
        },
        // Keys on several, or on a node outside the dead master's shard: never guessed.
        _ => {
            let claims = holders.iter().map(|h| h.id.clone()).collect();
            return decision(State::Conflicted { claims }, vec![]);
        }
    };
    let why = format!(
        "bound to {}, failed; {} holds its keys and takes it",
        dead.join(", "),
        heir.id
    );
    let plan = finish_forward(cluster, slot, None, heir, &|id| memory.keys(id, slot));
    decision(
        State::Broken {
            case: Case::BoundToDead,
            why,
        },
        plan,
    )
}

/// A slot its owner serves while other live masters hold keys of it, nothing open and no
/// migration remembered: S7 unseen (both ends failed over, the moved keys on the target's
/// heir, which never heard of the migration), or S14 on a node that did not mark itself
/// importing. The keys go to the owner without replacing its own, which were written
/// after: each holder imports the slot for the move (so that it may act on its keys),
/// then closes it.
fn strays(cluster: &Cluster, memory: &Memory, slot: u16, owner: &NodeLine) -> Decision {
    let mut holders: Vec<&NodeLine> = cluster
        .live_masters()
        .filter(|m| m.id != owner.id && memory.keys(&m.id, slot) > 0)
        .collect();
    let owner = owner.id.clone();
    if holders.is_empty() {
        let state = State::Stable { owner };
        return Decision {
            slot,
            state,
            plan: vec![],
        };
    }
    holders.sort_by(|a, b| a.id.cmp(&b.id));
    let mut plan = Vec::new();
    for h in &holders {
        let on = h.id.clone();
        plan.extend([
            Step::Importing {
                on: on.clone(),
                slot,
                source: owner.clone(),
            },
            Step::MoveKeys {
                from: on.clone(),
                to: owner.clone(),
                slot,
                replace: false,
            },
            Step::Stable { on, slot },
        ]);
    }
    let names: Vec<&str> = holders.iter().map(|h| h.id.as_str()).collect();
    let why = format!(
        "{} holds keys of the slot, which {owner} owns; they go to the owner",
        names.join(", ")
    );
    let state = State::Broken {
        case: Case::StrayKeys,
        why,
    };
    Decision { slot, state, plan }
}

/// Undoes a migration whose target shard lost its master. The source closes the slot first
/// (a migrating node answers a RESTORE of a key it lacks with ASK), then every other live
/// master gives back the keys of the slot it holds (the source's copy wins: a key on both
/// sides is one a MIGRATE left there, and clients wrote the source's since) and closes it.
/// Cut after the first step, what is left is a stray import, undone the same way.
fn undo(
    cluster: &Cluster,
    slot: u16,
    source: &NodeLine,
    case: Case,
    why: String,
    keys: &dyn Fn(&str) -> u64,
) -> Decision {
    let mut open: Vec<&NodeLine> = cluster
        .live_masters()
        .filter(|m| {
            let this = |v: &Vec<(u16, String)>| v.iter().any(|(s, _)| *s == slot);
            m.id != source.id && (this(&m.migrating) || this(&m.importing))
        })
        .collect();
    open.sort_by(|a, b| a.id.cmp(&b.id));
    let mut plan = Vec::new();
    if source.migrating.iter().any(|(s, _)| *s == slot) {
        plan.push(Step::Stable {
            on: source.id.clone(),
            slot,
        });
    }
    plan.extend(
        cluster
            .live_masters()
            .filter(|m| m.id != source.id && keys(&m.id) > 0)
            .map(|m| Step::MoveKeys {
                from: m.id.clone(),
                to: source.id.clone(),
                slot,
                replace: false,
            }),
    );
    plan.extend(open.iter().map(|m| Step::Stable {
        on: m.id.clone(),
        slot,
    }));
    Decision {
        slot,
        state: State::Broken { case, why },
        plan,
    }
}

/// True when finishing the migration onto `t` would let its old target take the slot,
/// and its shard, back (`Memory::importer_takes_back`): on Valkey 8+, `t` took over the
/// target's shard from the master the migration was remembered going to, which died
/// importing, and `t` does not own the slot yet (the old target never finalized: S9,
/// where it did, is finished forward as everywhere). An old target that answers, as the
/// replica a manual failover made it (S3), takes the finalize from `t` like any replica:
/// finished forward too.
fn target_may_take_it_back(cluster: &Cluster, memory: &Memory, slot: u16, t: &NodeLine) -> bool {
    memory.importer_takes_back
        && !t.owns(slot)
        && memory.migrations.get(&slot).is_some_and(|m| {
            m.target != t.id
                && !cluster.answers(&m.target)
                && memory.shard(slot, &m.target).contains(&t.id)
        })
}

/// Finishes a migration onto `t`, the live master of the target shard, from `s`, the
/// node that still owns the slot (if any). Keys move with REPLACE: the source copy is the
/// one clients last wrote through the proxy, since the slot was held.
fn finish_forward(
    cluster: &Cluster,
    slot: u16,
    s: Option<&NodeLine>,
    t: &NodeLine,
    keys: &dyn Fn(&str) -> u64,
) -> Vec<Step> {
    let mut plan = Vec::new();
    let importing_from = s
        .map(|s| s.id.clone())
        .or_else(|| {
            cluster
                .live_masters()
                .filter(|m| m.id != t.id)
                .map(|m| m.id.clone())
                .min()
        })
        .unwrap_or_else(|| t.id.clone());
    // The target may already own the slot (a promoted replica that heard its master's
    // finalize before the master died, S9): then only the others are left to tell.
    let t_owns = t.owns(slot);
    if t_owns {
        return bind_others(cluster, slot, t, plan);
    }
    if let Some(s) = s.filter(|s| s.owns(slot)) {
        // The target first binds the slot to the live source (it may bind it to a dead
        // node and refuse everything as CLUSTERDOWN), then imports from it.
        plan.push(Step::Bind {
            on: t.id.clone(),
            slot,
            owner: s.id.clone(),
        });
        plan.push(Step::Importing {
            on: t.id.clone(),
            slot,
            source: s.id.clone(),
        });
        if keys(&s.id) > 0 {
            plan.push(Step::Migrating {
                on: s.id.clone(),
                slot,
                target: t.id.clone(),
            });
            plan.push(Step::MoveKeys {
                from: s.id.clone(),
                to: t.id.clone(),
                slot,
                replace: true,
            });
        }
    } else {
        plan.push(Step::Importing {
            on: t.id.clone(),
            slot,
            source: importing_from,
        });
    }
    // Finalize on the target first: it bumps its epoch, so its claim wins everywhere.
    plan.push(Step::Bind {
        on: t.id.clone(),
        slot,
        owner: t.id.clone(),
    });
    bind_others(cluster, slot, t, plan)
}

/// Binds the slot to `t` on every other live master, after `plan`.
fn bind_others(cluster: &Cluster, slot: u16, t: &NodeLine, mut plan: Vec<Step>) -> Vec<Step> {
    let mut others: Vec<&NodeLine> = cluster.live_masters().filter(|m| m.id != t.id).collect();
    others.sort_by(|a, b| a.id.cmp(&b.id));
    for m in others {
        plan.push(Step::Bind {
            on: m.id.clone(),
            slot,
            owner: t.id.clone(),
        });
    }
    plan
}

#[cfg(test)]
mod tests;
