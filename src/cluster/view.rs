//! The cluster as the proxy last saw it, for `/status` and the slot page: every node with
//! its role, health, slots and open migrations, merged from all nodes' `CLUSTER NODES`.
//! A node's own line is trusted for its flags and open slots (only it knows them).

use serde::Serialize;

use super::nodes::NodeLine;

/// One node, as reported.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct NodeStatus {
    pub id: String,
    pub addr: String,
    /// `master` or `replica`.
    pub role: &'static str,
    pub master_id: Option<String>,
    /// `ok` (answered), `pfail` or `fail` (as other nodes flag it), or `unreachable`.
    pub health: &'static str,
    pub config_epoch: u64,
    /// Owned slot ranges, inclusive.
    pub slots: Vec<(u16, u16)>,
    /// (slot, target node id) this node migrates away.
    pub migrating: Vec<(u16, String)>,
    /// (slot, source node id) this node imports.
    pub importing: Vec<(u16, String)>,
}

/// The merged view.
#[derive(Clone, Debug, Default, Serialize)]
pub struct ClusterView {
    pub nodes: Vec<NodeStatus>,
    /// Nodes that answered the last refresh.
    pub answered: usize,
}

impl ClusterView {
    /// Merges the views of the nodes that answered (queried address, lines).
    pub fn merge(views: &[(String, Vec<NodeLine>)]) -> ClusterView {
        let mut nodes: Vec<NodeStatus> = Vec::new();
        let own: Vec<&NodeLine> = views
            .iter()
            .filter_map(|(_, lines)| lines.iter().find(|l| l.myself))
            .collect();
        for line in views.iter().flat_map(|(_, lines)| lines) {
            if nodes.iter().any(|n| n.id == line.id) {
                continue;
            }
            let mine = own.iter().find(|o| o.id == line.id).copied();
            let flagged = |f: fn(&NodeLine) -> bool| {
                views
                    .iter()
                    .flat_map(|(_, ls)| ls)
                    .any(|l| l.id == line.id && !l.myself && f(l))
            };
            let health = if flagged(|l| l.fail) {
                "fail"
            } else if mine.is_some() {
                if flagged(|l| l.pfail) {
                    "pfail"
                } else {
                    "ok"
                }
            } else if flagged(|l| l.pfail) {
                "pfail"
            } else {
                "unreachable"
            };
            let src = mine.unwrap_or(line);
            nodes.push(NodeStatus {
                id: src.id.clone(),
                addr: src.addr.clone(),
                role: if src.master { "master" } else { "replica" },
                master_id: src.master_id.clone(),
                health,
                config_epoch: src.config_epoch,
                slots: src.slots.clone(),
                migrating: src.migrating.clone(),
                importing: src.importing.clone(),
            });
        }
        nodes.sort_by(|a, b| a.addr.cmp(&b.addr));
        ClusterView {
            nodes,
            answered: views.len(),
        }
    }

    /// The address of the node with this id.
    pub fn addr_of(&self, id: &str) -> Option<&str> {
        self.nodes
            .iter()
            .find(|n| n.id == id)
            .map(|n| n.addr.as_str())
    }
}
