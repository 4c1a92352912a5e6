//! The slot map the data plane routes by: for each of the 16384 slots, the node serving it.
//!
//! Immutable once built; the control plane publishes a new one through `ArcSwap`, so a
//! lookup is a few loads with no lock.

use std::sync::Arc;

use super::backend::Node;
use crate::protocol::SLOTS;

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
    /// Increases with every table published.
    pub generation: u64,
}

impl SlotTable {
    pub fn empty() -> SlotTable {
        SlotTable::build(std::iter::empty(), 0)
    }

    /// Builds a table from (slot, node) assignments; later ones win.
    pub fn build(assign: impl IntoIterator<Item = (u16, Arc<Node>)>, generation: u64) -> SlotTable {
        let mut owner = vec![NONE; SLOTS].into_boxed_slice();
        let mut nodes: Vec<Arc<Node>> = Vec::new();
        for (slot, node) in assign {
            let idx = match nodes.iter().position(|n| Arc::ptr_eq(n, &node)) {
                Some(i) => i,
                None => {
                    nodes.push(node);
                    nodes.len() - 1
                }
            };
            owner[slot as usize] = idx as u16;
        }
        let mut masters: Vec<(u16, u16)> = Vec::new();
        for (slot, &idx) in owner.iter().enumerate() {
            if idx != NONE && !masters.iter().any(|&(_, i)| i == idx) {
                masters.push((slot as u16, idx));
            }
        }
        SlotTable {
            replicas: vec![Vec::new(); nodes.len()],
            owner,
            nodes,
            masters,
            generation,
        }
    }

    /// Adds each master's replicas, for reads.
    pub fn with_replicas(mut self, replicas_of: impl Fn(&Node) -> Vec<Arc<Node>>) -> SlotTable {
        self.replicas = self.nodes.iter().map(|n| replicas_of(n)).collect();
        self
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

    /// Slots with an owner.
    pub fn covered(&self) -> usize {
        self.owner.iter().filter(|&&i| i != NONE).count()
    }
}
