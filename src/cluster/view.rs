//! Merges every node's `CLUSTER NODES` into the one view the control plane publishes for
//! `/status`, the slot page and the data plane's question about node health
//! (`routing::status`). A node's own line is trusted for its flags and open slots (only it
//! knows them).

use super::nodes::NodeLine;
use crate::routing::status::{ClusterView, Health, NodeStatus, Role};

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
            Health::Fail
        } else if flagged(|l| l.pfail) {
            Health::Pfail
        } else if mine.is_some() {
            Health::Ok
        } else {
            Health::Unreachable
        };
        let src = mine.unwrap_or(line);
        nodes.push(NodeStatus {
            id: src.id.clone(),
            addr: src.addr.clone(),
            hostname: src.hostname.clone(),
            role: if src.master {
                Role::Master
            } else {
                Role::Replica
            },
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
