//! Planning moves: slot lists, the moves an order makes of the cluster as it is, and
//! each slot's steps in the order that cannot leave a broken slot behind.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;

use crate::cluster::authority::{Cluster, Step};
use crate::cluster::nodes::NodeLine;
use crate::cluster::Error;
use crate::protocol::SLOTS;
pub use crate::routing::MoveOrder as Order;

use super::{ranges_of, Move};

/// Parses a slot list: `100-199,300`.
pub fn parse_slots(spec: &str) -> Result<Vec<u16>, Error> {
    let slot = |s: &str| -> Result<u16, Error> {
        s.trim()
            .parse::<u16>()
            .ok()
            .filter(|&n| (n as usize) < SLOTS)
            .ok_or_else(|| Error::Plan(format!("'{s}' is not a slot (0-{})", SLOTS - 1)))
    };
    let mut out = Vec::new();
    for part in spec.split(',').filter(|p| !p.trim().is_empty()) {
        match part.split_once('-') {
            Some((a, b)) => {
                let (a, b) = (slot(a)?, slot(b)?);
                if a > b {
                    return Err(Error::Plan(format!("'{part}' is an empty range")));
                }
                out.extend(a..=b);
            }
            None => out.push(slot(part)?),
        }
    }
    out.sort_unstable();
    out.dedup();
    if out.is_empty() {
        return Err(Error::Plan("no slots given".into()));
    }
    Ok(out)
}

/// A live master named by its id, a unique prefix of it, or its `host:port`.
pub fn find_master(cluster: &Cluster, name: &str) -> Result<String, Error> {
    let found: Vec<&NodeLine> = cluster
        .live_masters()
        .filter(|m| m.id == name || m.addr == name || (name.len() >= 4 && m.id.starts_with(name)))
        .collect();
    match found[..] {
        [m] => Ok(m.id.clone()),
        [] => Err(Error::Plan(format!("no live master is {name}"))),
        _ => Err(Error::Plan(format!("{name} names more than one master"))),
    }
}

/// One slot's move to `to`, in three parts, each run for a group of slots before the
/// next starts (see [`run_moves`]).
#[derive(Debug, Default, PartialEq, Eq)]
pub struct SlotPlan {
    /// IMPORTING, MIGRATING, and the keys.
    pub keys: Vec<Step>,
    /// The target binds the slot to itself.
    pub finalize: Vec<Step>,
    /// The source and every other master bind it to the target.
    pub rest: Vec<Step>,
}

impl SlotPlan {
    /// Nothing to do: the slot is the target's already, and nothing is open on it.
    pub fn is_done(&self) -> bool {
        self.keys.is_empty() && self.finalize.is_empty() && self.rest.is_empty()
    }
}

/// The plan that moves `slot` to `to` from where the cluster has it now.
pub fn slot_plan(cluster: &Cluster, slot: u16, to: &str) -> Result<SlotPlan, Error> {
    if !cluster.is_live_master(to) {
        return Err(Error::Plan(format!("{to} is not a live master")));
    }
    let claims = cluster.claims(slot);
    let owner = match claims[..] {
        [owner] => owner,
        // Finalized on the target, and the source has not heard yet: the target's.
        [a, b]
            if [a, b].iter().any(|m| m.id == to)
                && [a, b]
                    .iter()
                    .any(|m| m.migrating.contains(&(slot, to.to_string()))) =>
        {
            if a.id == to {
                a
            } else {
                b
            }
        }
        _ => {
            return Err(Error::Plan(format!(
                "slot {slot} has {} live owners; `slotguard repair` settles it first",
                claims.len()
            )))
        }
    };
    let mut others: Vec<&NodeLine> = cluster.live_masters().filter(|m| m.id != to).collect();
    others.sort_by(|a, b| a.id.cmp(&b.id));
    let open = |m: &NodeLine| {
        m.migrating.iter().any(|(s, _)| *s == slot) || m.importing.iter().any(|(s, _)| *s == slot)
    };
    let bind = |on: &str| Step::Bind {
        on: on.to_string(),
        slot,
        owner: to.to_string(),
    };
    if owner.id == to {
        // Moved, or finalized on the target only: the others are told, and whatever is
        // left open is closed by the same SETSLOT NODE.
        if !cluster.live_masters().any(open) {
            return Ok(SlotPlan::default());
        }
        let mut rest: Vec<Step> = others.iter().map(|m| bind(&m.id)).collect();
        if open(owner) {
            rest.push(Step::Stable {
                on: to.to_string(),
                slot,
            });
        }
        return Ok(SlotPlan {
            rest,
            ..SlotPlan::default()
        });
    }
    let source = owner.id.as_str();
    if let Some((from, into)) = cluster.open_migrations().get(&slot) {
        if (from.as_str(), into.as_str()) != (source, to) {
            return Err(Error::Plan(format!(
                "slot {slot} is already migrating from {from} to {into}; `slotguard repair` settles it first"
            )));
        }
    }
    let mut keys = Vec::new();
    // A node that imports a slot takes no news of its owner from gossip, so a target that
    // has not heard who owns it yet (a master just added) would answer the keys' RESTORE
    // with CLUSTERDOWN for as long as the slot stays open. It binds the slot to the source
    // first, as gossip would have.
    if cluster.bound_in_view_of(to, slot) != Some(source) {
        keys.push(Step::Bind {
            on: to.to_string(),
            slot,
            owner: source.to_string(),
        });
    }
    keys.extend([
        Step::Importing {
            on: to.to_string(),
            slot,
            source: source.to_string(),
        },
        Step::Migrating {
            on: source.to_string(),
            slot,
            target: to.to_string(),
        },
        Step::MoveKeys {
            from: source.to_string(),
            to: to.to_string(),
            slot,
            replace: true,
        },
    ]);
    let mut rest = vec![bind(source)];
    rest.extend(
        others
            .iter()
            .filter(|m| m.id != source)
            .map(|m| bind(&m.id)),
    );
    Ok(SlotPlan {
        keys,
        finalize: vec![bind(to)],
        rest,
    })
}

/// The slots each live master owns.
pub fn owned(cluster: &Cluster) -> BTreeMap<String, Vec<u16>> {
    let mut out: BTreeMap<String, Vec<u16>> = BTreeMap::new();
    for m in cluster.live_masters() {
        let slots = out.entry(m.id.clone()).or_default();
        for &(a, b) in &m.slots {
            slots.extend(a..=b);
        }
    }
    for slots in out.values_mut() {
        slots.sort_unstable();
    }
    out
}

/// The fewest moves that leave each master with slots in proportion to its weight
/// (1 unless given): every move takes a slot from a master over its share to one under
/// it, each giving its highest slots.
pub fn rebalance_moves(
    owned: &BTreeMap<String, Vec<u16>>,
    weights: &HashMap<String, u32>,
) -> Vec<Move> {
    let weight = |id: &str| u64::from(weights.get(id).copied().unwrap_or(1));
    let total: u64 = owned.values().map(|s| s.len() as u64).sum();
    let sum: u64 = owned.keys().map(|id| weight(id)).sum();
    if sum == 0 {
        return vec![];
    }
    // Shares by largest remainder: floors first, then one more to the largest fractions.
    let mut share: BTreeMap<&str, u64> = owned
        .keys()
        .map(|id| (id.as_str(), total * weight(id) / sum))
        .collect();
    let mut by_fraction: Vec<&str> = owned.keys().map(String::as_str).collect();
    by_fraction.sort_by_key(|id| std::cmp::Reverse(total * weight(id) % sum));
    let left = total - share.values().sum::<u64>();
    for id in by_fraction.into_iter().take(left as usize) {
        *share.get_mut(id).expect("every master has a share") += 1;
    }
    let mut given: Vec<u16> = Vec::new();
    for (id, slots) in owned {
        let surplus = (slots.len() as u64).saturating_sub(share[id.as_str()]) as usize;
        given.extend(&slots[slots.len() - surplus..]);
    }
    let mut given = given.into_iter();
    let mut moves = Vec::new();
    for (id, slots) in owned {
        let deficit = share[id.as_str()].saturating_sub(slots.len() as u64);
        for slot in given.by_ref().take(deficit as usize) {
            moves.push(Move {
                slot,
                to: id.clone(),
            });
        }
    }
    moves
}

/// Every slot of `node` to the other masters, each to whichever has fewest at the time.
pub fn drain_moves(owned: &BTreeMap<String, Vec<u16>>, node: &str) -> Vec<Move> {
    let mut counts: Vec<(usize, &String)> = owned
        .iter()
        .filter(|(id, _)| id.as_str() != node)
        .map(|(id, slots)| (slots.len(), id))
        .collect();
    let Some(slots) = owned.get(node).filter(|_| !counts.is_empty()) else {
        return vec![];
    };
    let mut moves = Vec::with_capacity(slots.len());
    for &slot in slots {
        let fewest = counts.iter_mut().min().expect("another master");
        fewest.0 += 1;
        moves.push(Move {
            slot,
            to: fewest.1.clone(),
        });
    }
    moves
}

/// The moves as an operator reads them: slot ranges from each master to each.
pub fn describe(
    owned: &BTreeMap<String, Vec<u16>>,
    moves: &[Move],
    addrs: &HashMap<String, String>,
) -> String {
    let owner: HashMap<u16, &str> = owned
        .iter()
        .flat_map(|(id, slots)| slots.iter().map(move |&s| (s, id.as_str())))
        .collect();
    let name = |id: &str| match addrs.get(id) {
        Some(addr) => format!("{addr} ({})", &id[..id.len().min(8)]),
        None => id.to_string(),
    };
    let mut by_pair: BTreeMap<(&str, &str), Vec<u16>> = BTreeMap::new();
    for m in moves {
        let from = owner.get(&m.slot).copied().unwrap_or("?");
        by_pair
            .entry((from, m.to.as_str()))
            .or_default()
            .push(m.slot);
    }
    let mut out = format!("{} slots to move\n", moves.len());
    for ((from, to), mut slots) in by_pair {
        slots.sort_unstable();
        let _ = writeln!(
            out,
            "  {} slots from {} to {}: {}",
            slots.len(),
            name(from),
            name(to),
            ranges(&slots)
        );
    }
    out
}

/// `1-3,7`.
fn ranges(slots: &[u16]) -> String {
    let parts: Vec<String> = ranges_of(slots)
        .iter()
        .map(|&(a, b)| {
            if a == b {
                a.to_string()
            } else {
                format!("{a}-{b}")
            }
        })
        .collect();
    parts.join(",")
}

/// The moves an order makes of the cluster as it is. A slot of `migrate` left open by an
/// earlier run (stopped, or cut by a crash) is finished where it was going. `rebalance`
/// and `drain` weigh the whole cluster, so they first finish every migration left open
/// between two live masters, where it was going.
pub fn plan(cluster: &Cluster, order: Order) -> Result<Vec<Move>, Error> {
    let mut owned = owned(cluster);
    let (mut moves, more) = match order {
        Order::Migrate { slots, to } => {
            let to = find_master(cluster, &to)?;
            let theirs = owned.get(&to).cloned().unwrap_or_default();
            let moves = parse_slots(&slots)?
                .into_iter()
                .filter(|s| theirs.binary_search(s).is_err())
                .map(|slot| Move {
                    slot,
                    to: to.clone(),
                });
            return Ok(moves.collect());
        }
        Order::Rebalance { weights } => {
            let mut by_id = HashMap::new();
            for w in weights {
                let (node, n) = w
                    .split_once('=')
                    .ok_or_else(|| Error::Plan(format!("--weight {w}: expected NODE=N")))?;
                let n: u32 = n
                    .parse()
                    .map_err(|_| Error::Plan(format!("--weight {w}: {n} is not a whole number")))?;
                by_id.insert(find_master(cluster, node)?, n);
            }
            let open = finish_open(cluster, &mut owned);
            (open, rebalance_moves(&owned, &by_id))
        }
        Order::Drain { node } => {
            let node = find_master(cluster, &node)?;
            if owned.len() < 2 {
                return Err(Error::Plan("no other master to take the slots".into()));
            }
            let open = finish_open(cluster, &mut owned);
            (open, drain_moves(&owned, &node))
        }
    };
    moves.retain(|m| !more.iter().any(|n| n.slot == m.slot));
    moves.extend(more);
    Ok(moves)
}

/// Every migration open between two live masters, as a move to where it was going; `owned`
/// is changed as if they had ended.
fn finish_open(cluster: &Cluster, owned: &mut BTreeMap<String, Vec<u16>>) -> Vec<Move> {
    let mut moves = Vec::new();
    for (slot, (from, to)) in cluster.open_migrations() {
        if !cluster.is_live_master(&from) || !cluster.is_live_master(&to) {
            continue;
        }
        if let Some(slots) = owned.get_mut(&from) {
            slots.retain(|&s| s != slot);
        }
        if let Some(slots) = owned.get_mut(&to) {
            slots.push(slot);
            slots.sort_unstable();
        }
        moves.push(Move { slot, to });
    }
    moves
}

#[cfg(test)]
mod tests {
    use super::*;

    fn owned_of(counts: &[(&str, std::ops::Range<u16>)]) -> BTreeMap<String, Vec<u16>> {
        counts
            .iter()
            .map(|(id, r)| (id.to_string(), r.clone().collect()))
            .collect()
    }

    fn counts_after(owned: &BTreeMap<String, Vec<u16>>, moves: &[Move]) -> BTreeMap<String, usize> {
        let mut owner: HashMap<u16, String> = HashMap::new();
        for (id, slots) in owned {
            for &s in slots {
                owner.insert(s, id.clone());
            }
        }
        for m in moves {
            owner.insert(m.slot, m.to.clone());
        }
        let mut out: BTreeMap<String, usize> = owned.keys().map(|id| (id.clone(), 0)).collect();
        for id in owner.values() {
            *out.get_mut(id).unwrap() += 1;
        }
        out
    }

    /// Each node's own view of a cluster of masters A (slots 0-99), B (100-199) and C
    /// (200-16383); `extra` is appended to a node's line (`[50->-B]` and the like), and
    /// `owns` moves slot 50 to another master.
    fn views(extra: &[(&str, &str)], owns: &[(&str, &str)]) -> Vec<(String, Vec<NodeLine>)> {
        let ids = ["A", "B", "C"];
        let slots = |id: &str| match (id, owns.iter().find(|(o, _)| *o == id)) {
            (_, Some((_, s))) => s.to_string(),
            ("A", _) => "0-99".into(),
            ("B", _) => "100-199".into(),
            _ => "200-16383".into(),
        };
        ids.iter()
            .map(|me| {
                let text: String = ids
                    .iter()
                    .enumerate()
                    .map(|(i, id)| {
                        let flags = if id == me { "myself,master" } else { "master" };
                        let more = extra.iter().find(|(n, _)| n == id).map_or("", |(_, e)| e);
                        format!(
                            "{id} 127.0.0.1:{}@1 {flags} - 0 0 {} connected {} {more}\n",
                            7000 + i,
                            i + 1,
                            slots(id)
                        )
                    })
                    .collect();
                let lines = crate::cluster::nodes::parse(&text, "").unwrap();
                (format!("127.0.0.1:{}", 7000), lines)
            })
            .collect()
    }

    #[test]
    fn a_slot_moves_target_first_and_resumes_from_any_step() {
        let fresh = views(&[], &[]);
        let plan = slot_plan(&Cluster::new(&fresh), 50, "B").unwrap();
        let bind = |on: &str| Step::Bind {
            on: on.into(),
            slot: 50,
            owner: "B".into(),
        };
        assert_eq!(
            plan.keys,
            vec![
                Step::Importing {
                    on: "B".into(),
                    slot: 50,
                    source: "A".into()
                },
                Step::Migrating {
                    on: "A".into(),
                    slot: 50,
                    target: "B".into()
                },
                Step::MoveKeys {
                    from: "A".into(),
                    to: "B".into(),
                    slot: 50,
                    replace: true
                },
            ]
        );
        assert_eq!(plan.finalize, vec![bind("B")]);
        assert_eq!(plan.rest, vec![bind("A"), bind("C")]);
        let fresh_plan_keys = plan.keys.clone();
        // Cut in the middle of the keys: the same plan, every step idempotent.
        let open = views(&[("A", "[50->-B]"), ("B", "[50-<-A]")], &[]);
        assert_eq!(slot_plan(&Cluster::new(&open), 50, "B").unwrap(), plan);
        // Cut after the target finalized, before the source heard: the others are told.
        let finalized = views(&[("A", "[50->-B]")], &[("B", "50 100-199")]);
        let rest = slot_plan(&Cluster::new(&finalized), 50, "B").unwrap();
        assert!(rest.keys.is_empty() && rest.finalize.is_empty());
        assert_eq!(rest.rest, vec![bind("A"), bind("C")]);
        // Done: nothing.
        let done = views(&[], &[("A", "0-49 51-99"), ("B", "50 100-199")]);
        assert!(slot_plan(&Cluster::new(&done), 50, "B").unwrap().is_done());
        // Someone else's migration is not taken over.
        let other = views(&[("A", "[50->-C]"), ("C", "[50-<-A]")], &[]);
        assert!(slot_plan(&Cluster::new(&other), 50, "B")
            .unwrap_err()
            .to_string()
            .contains("already migrating"));
        assert!(slot_plan(&Cluster::new(&fresh), 50, "Z")
            .unwrap_err()
            .to_string()
            .contains("not a live master"));
        // A target that has not heard who owns the slot (a master just added) binds it to
        // the source before it imports: importing, it would not learn it from gossip.
        let mut unheard = views(&[], &[]);
        let b_view = &mut unheard[1].1;
        let a_in_b = b_view.iter_mut().find(|l| l.id == "A").unwrap();
        a_in_b.slots = vec![(0, 49), (51, 99)];
        let plan = slot_plan(&Cluster::new(&unheard), 50, "B").unwrap();
        assert_eq!(
            plan.keys[0],
            Step::Bind {
                on: "B".into(),
                slot: 50,
                owner: "A".into()
            }
        );
        assert_eq!(plan.keys[1..], fresh_plan_keys[..]);
    }

    #[test]
    fn slot_lists_parse_and_bad_ones_say_why() {
        assert_eq!(parse_slots("3,1-2, 7").unwrap(), vec![1, 2, 3, 7]);
        assert!(parse_slots("16384")
            .unwrap_err()
            .to_string()
            .contains("not a slot"));
        assert!(parse_slots("9-3")
            .unwrap_err()
            .to_string()
            .contains("empty range"));
        assert!(parse_slots("")
            .unwrap_err()
            .to_string()
            .contains("no slots"));
        assert!(parse_slots("a").is_err());
    }

    #[test]
    fn rebalance_to_a_new_empty_master_moves_a_quarter_only_from_the_others() {
        let owned = owned_of(&[
            ("a", 0..5461),
            ("b", 5461..10923),
            ("c", 10923..16384),
            ("d", 0..0),
        ]);
        let moves = rebalance_moves(&owned, &HashMap::new());
        let counts = counts_after(&owned, &moves);
        assert!(counts.values().all(|&n| n == 4096), "{counts:?}");
        assert_eq!(moves.len(), 4096, "only what d must get moves");
        assert!(moves.iter().all(|m| m.to == "d"));
        // Balanced already: nothing moves.
        let again = rebalance_moves(
            &owned_of(&[
                ("a", 0..4096),
                ("b", 4096..8192),
                ("c", 8192..12288),
                ("d", 12288..16384),
            ]),
            &HashMap::new(),
        );
        assert!(again.is_empty());
    }

    #[test]
    fn weights_give_shares_in_proportion() {
        let owned = owned_of(&[("a", 0..8192), ("b", 8192..16384)]);
        let weights = HashMap::from([("b".to_string(), 3)]);
        let counts = counts_after(&owned, &rebalance_moves(&owned, &weights));
        assert_eq!(counts["a"], 4096);
        assert_eq!(counts["b"], 12288);
    }

    #[test]
    fn a_drained_master_ends_empty_and_the_others_even() {
        let owned = owned_of(&[
            ("a", 0..4096),
            ("b", 4096..8192),
            ("c", 8192..12288),
            ("d", 12288..16384),
        ]);
        let moves = drain_moves(&owned, "d");
        let counts = counts_after(&owned, &moves);
        assert_eq!(counts["d"], 0);
        let (min, max) = (
            counts
                .iter()
                .filter(|(id, _)| *id != "d")
                .map(|(_, &n)| n)
                .min()
                .unwrap(),
            counts.values().copied().max().unwrap(),
        );
        assert!(max - min <= 1, "{counts:?}");
        assert!(
            drain_moves(&owned_of(&[("a", 0..16384)]), "a").is_empty(),
            "nowhere to go"
        );
    }

    #[test]
    fn ranges_fold() {
        assert_eq!(ranges(&[1, 2, 3, 7, 9, 10]), "1-3,7,9-10");
    }
}
