//! The slot map as the control plane publishes it: for each of the 16384 slots, the
//! address of the master serving it, and each master's replicas that reads may go to.
//!
//! Addresses only: the data plane turns them into its own connection handles when a new
//! map comes out (`proxy::slot_table`), so nothing here knows how nodes are reached.

use crate::protocol::SLOTS;

const NONE: u16 = u16::MAX;

/// Which node serves each slot, by address.
#[derive(Debug, Clone)]
pub struct SlotMap {
    /// Index into `nodes` per slot, `NONE` when unassigned.
    owner: Box<[u16]>,
    /// Every master named by `owner`, each once, in order of first appearance.
    nodes: Vec<String>,
    /// The replicas that are up, per entry of `nodes`; empty unless reads may go there.
    replicas: Vec<Vec<String>>,
    /// Increases with every map published (0: none yet).
    pub generation: u64,
}

impl Default for SlotMap {
    fn default() -> SlotMap {
        SlotMap::build(&[], &[], 0)
    }
}

impl SlotMap {
    /// A map from an owner address per slot (index = slot; missing or `None`: no owner)
    /// and (master, replica) address pairs.
    pub fn build(
        owners: &[Option<String>],
        replicas: &[(String, String)],
        generation: u64,
    ) -> SlotMap {
        let mut owner = vec![NONE; SLOTS].into_boxed_slice();
        let mut nodes: Vec<String> = Vec::new();
        for (slot, addr) in owners.iter().enumerate().take(SLOTS) {
            let Some(addr) = addr else { continue };
            // Owners come in long runs of one address: look at the last one first.
            let idx = match nodes.iter().rposition(|n| n == addr) {
                Some(i) => i,
                None => {
                    nodes.push(addr.clone());
                    nodes.len() - 1
                }
            };
            owner[slot] = idx as u16;
        }
        let replicas = nodes
            .iter()
            .map(|master| {
                replicas
                    .iter()
                    .filter(|(m, _)| m == master)
                    .map(|(_, r)| r.clone())
                    .collect()
            })
            .collect();
        SlotMap {
            owner,
            nodes,
            replicas,
            generation,
        }
    }

    /// The address serving `slot`.
    pub fn owner(&self, slot: u16) -> Option<&str> {
        let idx = *self.owner.get(slot as usize)?;
        self.nodes.get(idx as usize).map(String::as_str)
    }

    /// Per slot, an index into [`SlotMap::nodes`], or `u16::MAX` when unassigned.
    pub fn owner_indices(&self) -> &[u16] {
        &self.owner
    }

    /// Every master address the map names.
    pub fn nodes(&self) -> &[String] {
        &self.nodes
    }

    /// The readable replicas of the master at `nodes()[idx]`.
    pub fn replicas(&self, idx: usize) -> &[String] {
        self.replicas.get(idx).map_or(&[], Vec::as_slice)
    }

    /// Every address the map names: masters and replicas.
    pub fn addresses(&self) -> impl Iterator<Item = &str> {
        self.nodes
            .iter()
            .chain(self.replicas.iter().flatten())
            .map(String::as_str)
    }

    /// Slots with an owner.
    pub fn covered(&self) -> usize {
        self.owner.iter().filter(|&&i| i != NONE).count()
    }

    /// Runs of consecutive slots with one owner: (first, last, address).
    pub fn ranges(&self) -> Vec<(u16, u16, &str)> {
        let mut ranges: Vec<(u16, u16, &str)> = Vec::new();
        for slot in 0..SLOTS as u16 {
            let Some(addr) = self.owner(slot) else {
                continue;
            };
            match ranges.last_mut() {
                Some((_, end, a)) if *a == addr && *end + 1 == slot => *end = slot,
                _ => ranges.push((slot, slot, addr)),
            }
        }
        ranges
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn owners_become_indices_and_ranges() {
        let mut owners = vec![None; SLOTS];
        owners[..100].fill(Some("a:1".to_string()));
        owners[100..200].fill(Some("b:1".to_string()));
        owners[300] = Some("a:1".to_string());
        let replicas = vec![("a:1".to_string(), "a2:1".to_string())];
        let map = SlotMap::build(&owners, &replicas, 7);
        assert_eq!(map.owner(0), Some("a:1"));
        assert_eq!(map.owner(150), Some("b:1"));
        assert_eq!(map.owner(250), None);
        assert_eq!(map.covered(), 201);
        assert_eq!(map.nodes(), ["a:1", "b:1"]);
        assert_eq!(map.replicas(0), ["a2:1"]);
        assert!(map.replicas(1).is_empty());
        assert_eq!(
            map.ranges(),
            [(0, 99, "a:1"), (100, 199, "b:1"), (300, 300, "a:1")]
        );
        let all: Vec<&str> = map.addresses().collect();
        assert_eq!(all, ["a:1", "b:1", "a2:1"]);
        assert_eq!(SlotMap::default().covered(), 0);
    }
}
