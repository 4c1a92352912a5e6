//! The slot map the data plane routes by: for each of the 16384 slots, the node serving it,
//! as a connection handle.
//!
//! Made from the control plane's [`SlotMap`] (addresses) each time a new one is published,
//! and immutable after; it is swapped in through `ArcSwap`, so a lookup is a few loads with
//! no lock.

use std::sync::Arc;

use bytes::Bytes;

use super::backend::node::Node;
use crate::protocol::slot::slot_tag;
use crate::protocol::Request;
use crate::routing::map::SlotMap;

const NONE: u16 = u16::MAX;

/// Which node serves each slot.
#[derive(Debug)]
pub struct SlotTable {
    /// Index into `nodes` per slot, `NONE` when unassigned.
    owner: Box<[u16]>,
    nodes: Vec<Arc<Node>>,
    /// Each master once, with the lowest slot it serves, in slot order.
    masters: Vec<(u16, u16)>,
    /// The replicas that are up, per entry of `nodes`; empty unless reads may go there.
    replicas: Vec<Vec<Arc<Node>>>,
    /// Per entry of `nodes`, a master's fences: the write sent before each `WAIT` with
    /// `durability.ack = "replicated"` (see [`fence_write`]), to its lowest slot, then, if
    /// the node refuses it (that slot is being moved), to its highest and to one between.
    fences: Vec<Option<Arc<[Bytes]>>>,
    /// The generation of the map it was made from.
    pub generation: u64,
}

/// A write that always reaches the replication stream, to a key of `slot`: sent before a
/// `WAIT`, it makes the `WAIT` cover every write the master applied before it, not only
/// the connection's own. Valkey 9 counts in `WAIT` only the writes of
/// the connection that asks; a read, a write that changed nothing (`SET ... NX` on a key
/// that exists) or a write answered from its run-once marker writes nothing, and its
/// `WAIT` would not wait for what it saw. One key per master, which lives a minute after
/// the last fence.
fn fence_write(slot: u16) -> Bytes {
    let key = format!("{{{}}}slotguard:fence", slot_tag(slot));
    Request::from_args(&["SET", &key, "1", "PX", "60000"]).into_raw()
}

/// Where a master's fences go, in the order tried, of the slots it serves (ascending):
/// its lowest, its highest, and the one halfway through, without repeats. A migration
/// moves one slot at a time, so one of three is nearly always the master's own.
fn fence_slots(served: &[u16]) -> Vec<u16> {
    let (Some(&first), Some(&last)) = (served.first(), served.last()) else {
        return Vec::new();
    };
    let mut picked = vec![first, last, served[served.len() / 2]];
    let mut seen = Vec::with_capacity(3);
    picked.retain(|s| {
        let new = !seen.contains(s);
        seen.push(*s);
        new
    });
    picked
}

impl SlotTable {
    pub fn empty() -> SlotTable {
        SlotTable::from_map(&SlotMap::default(), |_| {
            unreachable!("an empty map names no node")
        })
    }

    /// The published map, with `node` giving the handle for an address.
    pub fn from_map(map: &SlotMap, mut node: impl FnMut(&str) -> Arc<Node>) -> SlotTable {
        let owner: Box<[u16]> = map.owner_indices().into();
        let nodes: Vec<Arc<Node>> = map.nodes().iter().map(|addr| node(addr)).collect();
        let replicas = (0..nodes.len())
            .map(|i| map.replicas(i).iter().map(|addr| node(addr)).collect())
            .collect();
        let mut masters: Vec<(u16, u16)> = Vec::new();
        for (slot, &idx) in owner.iter().enumerate() {
            if idx != NONE && !masters.iter().any(|&(_, i)| i == idx) {
                masters.push((slot as u16, idx));
            }
        }
        let mut served: Vec<Vec<u16>> = vec![Vec::new(); nodes.len()];
        for (slot, &idx) in owner.iter().enumerate() {
            if idx != NONE {
                served[idx as usize].push(slot as u16);
            }
        }
        let fences = served
            .iter()
            .map(|slots| {
                let picked = fence_slots(slots);
                (!picked.is_empty()).then(|| picked.into_iter().map(fence_write).collect())
            })
            .collect();
        SlotTable {
            owner,
            nodes,
            masters,
            replicas,
            fences,
            generation: map.generation,
        }
    }

    /// A replica of the master of `slot`, spread by `pin`.
    #[inline]
    pub fn replica(&self, slot: u16, pin: u32) -> Option<&Arc<Node>> {
        let idx = *self.owner.get(slot as usize)?;
        let replicas = self.replicas.get(idx as usize)?;
        if replicas.is_empty() {
            return None;
        }
        replicas.get(pin as usize % replicas.len())
    }

    /// The node serving `slot`.
    #[inline]
    pub fn owner(&self, slot: u16) -> Option<&Arc<Node>> {
        let idx = *self.owner.get(slot as usize)?;
        self.nodes.get(idx as usize)
    }

    /// Each master with the lowest slot it serves, in slot order.
    pub fn masters(&self) -> impl Iterator<Item = (u16, &Arc<Node>)> + '_ {
        self.masters
            .iter()
            .map(|&(slot, i)| (slot, &self.nodes[i as usize]))
    }

    /// A master for a keyless request, spread by `pin`.
    pub fn any_master(&self, pin: u32) -> Option<&Arc<Node>> {
        if self.masters.is_empty() {
            return None;
        }
        let (_, idx) = self.masters[pin as usize % self.masters.len()];
        self.nodes.get(idx as usize)
    }

    /// The lowest slot of the master after the one serving `slot`, in slot order.
    pub fn next_master_slot(&self, slot: u16) -> Option<u16> {
        let current = self.owner.get(slot as usize).copied()?;
        let pos = self.masters.iter().position(|&(_, i)| i == current)?;
        self.masters.get(pos + 1).map(|&(s, _)| s)
    }

    /// The fences of the master at `addr`, if it serves a slot: to try in order.
    pub fn fences(&self, addr: &str) -> Option<Arc<[Bytes]>> {
        let idx = self.nodes.iter().position(|n| n.addr == addr)?;
        self.fences[idx].clone()
    }

    /// Slots with an owner.
    pub fn covered(&self) -> usize {
        self.owner.iter().filter(|&&i| i != NONE).count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fences_go_to_the_lowest_the_highest_and_a_middle_slot() {
        let served: Vec<u16> = (0..100).chain(200..300).collect();
        assert_eq!(fence_slots(&served), [0, 299, 200]);
        assert_eq!(fence_slots(&[7, 8]), [7, 8]);
        assert_eq!(fence_slots(&[7]), [7]);
        assert!(fence_slots(&[]).is_empty());
    }
}
