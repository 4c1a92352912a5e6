//! The cluster as the control plane last saw it: every node with its role, health, slots
//! and open migrations, and every slot the authority does not call stable. The admin
//! listener renders it (`/status`, the slot page); the data plane asks it one question:
//! has the cluster given up on a node (`Status::node_failed`).

use serde::Serialize;

use super::decision::Decision;

/// A node's role, as it reports it.
#[derive(Clone, Copy, Debug, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Master,
    Replica,
}

/// A node's health, as the cluster sees it.
#[derive(Clone, Copy, Debug, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Health {
    /// It answered the last refresh and no node suspects it.
    Ok,
    /// Some node suspects it (`fail?`).
    Pfail,
    /// The cluster agreed it failed.
    Fail,
    /// It did not answer, and no node flags it.
    Unreachable,
}

/// One node, as reported.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct NodeStatus {
    pub id: String,
    pub addr: String,
    /// The hostname it announces, if any.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub hostname: String,
    pub role: Role,
    pub master_id: Option<String>,
    pub health: Health,
    pub config_epoch: u64,
    /// Owned slot ranges, inclusive.
    pub slots: Vec<(u16, u16)>,
    /// (slot, target node id) this node migrates away.
    pub migrating: Vec<(u16, String)>,
    /// (slot, source node id) this node imports.
    pub importing: Vec<(u16, String)>,
}

/// The merged view of every node that answered.
#[derive(Clone, Debug, Default, Serialize)]
pub struct ClusterView {
    pub nodes: Vec<NodeStatus>,
    /// Nodes that answered the last refresh.
    pub answered: usize,
}

impl ClusterView {
    /// The address of the node a redirect names by `endpoint` (`host:port`): its address,
    /// or its announced hostname with its port. `None`: not a node of the cluster.
    pub fn resolve(&self, endpoint: &str) -> Option<&str> {
        let node = self.nodes.iter().find(|n| {
            n.addr == endpoint
                || (!n.hostname.is_empty()
                    && n.addr.rsplit_once(':').is_some_and(|(_, port)| {
                        endpoint
                            .strip_prefix(n.hostname.as_str())
                            .and_then(|rest| rest.strip_prefix(':'))
                            == Some(port)
                    }))
        })?;
        Some(&node.addr)
    }

    /// The address of the node with this id.
    pub fn addr_of(&self, id: &str) -> Option<&str> {
        self.nodes
            .iter()
            .find(|n| n.id == id)
            .map(|n| n.addr.as_str())
    }

    /// How many replicas of the master at `addr` a write must reach before it is
    /// acknowledged (`durability.ack = "replicated"`): every one that is up, and never
    /// fewer than one. A master with no replica up (its replicas failed, rejoining, still
    /// syncing, or none at all) holds its writes until one has them: acknowledged on the
    /// master alone, they would be lost with it.
    pub fn replicas_to_wait(&self, addr: &str) -> usize {
        let up = self
            .nodes
            .iter()
            .find(|n| n.addr == addr)
            .map_or(0, |master| {
                self.replicas_of(master)
                    .filter(|n| n.health == Health::Ok)
                    .count()
            });
        up.max(1)
    }

    /// Masters serving slots with no replica but failed ones: with
    /// `durability.ack = "replicated"` their writes wait (up to `hold.timeout`) until a
    /// replica is back and has them.
    pub fn unprotected(&self) -> Vec<String> {
        self.nodes
            .iter()
            .filter(|n| n.role == Role::Master && !n.slots.is_empty() && n.health != Health::Fail)
            .filter(|master| self.replicas_of(master).all(|n| n.health == Health::Fail))
            .map(|n| n.addr.clone())
            .collect()
    }

    /// The replicas that name `master` as theirs.
    fn replicas_of<'a>(&'a self, master: &'a NodeStatus) -> impl Iterator<Item = &'a NodeStatus> {
        self.nodes.iter().filter(move |n| {
            n.role == Role::Replica && n.master_id.as_deref() == Some(master.id.as_str())
        })
    }

    /// True when the cluster agrees the node at `addr` has failed, or it is a replica now.
    pub fn node_failed(&self, addr: &str) -> bool {
        self.nodes
            .iter()
            .any(|n| n.addr == addr && (n.health == Health::Fail || n.role == Role::Replica))
    }
}

/// Who repairs and moves slots, as the control plane last published it.
#[derive(Clone, Debug, Default, Serialize, PartialEq, Eq)]
pub struct Authority {
    /// Where the journal is kept: `etcd`, `file` or `memory`.
    pub journal: &'static str,
    /// This proxy repairs and moves slots: it holds the authority's lease, or it works
    /// alone.
    pub this_proxy: bool,
    /// The proxy that holds the authority's lease (`[coordination]` only).
    pub holder: Option<String>,
    /// How long the holder has held it, in seconds.
    pub lease_age_seconds: Option<u64>,
    /// Why etcd is not answering, while it is not.
    pub etcd_error: Option<String>,
}

/// What the control plane last published about the cluster.
#[derive(Clone, Debug, Default)]
pub struct Status {
    pub view: ClusterView,
    /// The authority's decisions for the slots it does not call stable, with their
    /// repair plans; at most [`Status::MAX_DECISIONS`], lowest slots first.
    pub decisions: Vec<Decision>,
}

impl Status {
    /// Most decisions kept (a broken cluster can have 16384 unsettled slots).
    pub const MAX_DECISIONS: usize = 1000;

    /// True when the cluster agrees the node at `addr` has failed, or it is a replica now.
    pub fn node_failed(&self, addr: &str) -> bool {
        self.view.node_failed(addr)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles_and_health_render_as_before() {
        let node = NodeStatus {
            id: "n".into(),
            addr: "a:1".into(),
            hostname: String::new(),
            role: Role::Replica,
            master_id: None,
            health: Health::Pfail,
            config_epoch: 0,
            slots: vec![],
            migrating: vec![],
            importing: vec![],
        };
        let json = serde_json::to_value(&node).unwrap();
        assert_eq!(json["role"], "replica");
        assert_eq!(json["health"], "pfail");
        let view = ClusterView {
            nodes: vec![node],
            answered: 1,
        };
        assert!(view.node_failed("a:1"), "a replica serves no writes");
        assert!(!view.node_failed("b:1"));
    }

    #[test]
    fn a_redirect_names_a_node_by_address_or_announced_hostname() {
        let node = |addr: &str, hostname: &str| NodeStatus {
            id: addr.into(),
            addr: addr.into(),
            hostname: hostname.into(),
            role: Role::Master,
            master_id: None,
            health: Health::Ok,
            config_epoch: 0,
            slots: vec![],
            migrating: vec![],
            importing: vec![],
        };
        let view = ClusterView {
            nodes: vec![node("10.0.0.1:7000", "db-1"), node("10.0.0.2:7000", "")],
            answered: 2,
        };
        assert_eq!(view.resolve("10.0.0.2:7000"), Some("10.0.0.2:7000"));
        assert_eq!(view.resolve("db-1:7000"), Some("10.0.0.1:7000"));
        assert_eq!(view.resolve("db-1:7001"), None, "another port");
        assert_eq!(view.resolve("db-10:7000"), None);
        assert_eq!(
            view.resolve("10.0.0.3:7000"),
            None,
            "not a node of the cluster"
        );
    }

    #[test]
    fn a_write_waits_for_every_replica_up_or_one_that_has_not_failed() {
        let node = |id: &str, role: Role, master: Option<&str>, health: Health| NodeStatus {
            id: id.into(),
            addr: format!("{id}:1"),
            hostname: String::new(),
            role,
            master_id: master.map(String::from),
            health,
            config_epoch: 0,
            slots: if role == Role::Master {
                vec![(0, 1)]
            } else {
                vec![]
            },
            migrating: vec![],
            importing: vec![],
        };
        let view = |replicas: &[Health]| ClusterView {
            nodes: std::iter::once(node("m", Role::Master, None, Health::Ok))
                .chain(
                    replicas
                        .iter()
                        .enumerate()
                        .map(|(i, &h)| node(&format!("r{i}"), Role::Replica, Some("m"), h)),
                )
                .collect(),
            answered: 1,
        };
        assert_eq!(view(&[Health::Ok, Health::Ok]).replicas_to_wait("m:1"), 2);
        assert_eq!(
            view(&[Health::Ok, Health::Pfail]).replicas_to_wait("m:1"),
            1
        );
        // Rejoining or suspected: the write waits for it rather than go unprotected.
        assert_eq!(view(&[Health::Unreachable]).replicas_to_wait("m:1"), 1);
        // Failed, or none: the write still waits for one, and the master is named.
        let failed = view(&[Health::Fail]);
        assert_eq!(failed.replicas_to_wait("m:1"), 1);
        assert_eq!(view(&[]).replicas_to_wait("m:1"), 1);
        assert_eq!(failed.unprotected(), ["m:1"]);
        assert_eq!(view(&[]).unprotected(), ["m:1"]);
        assert!(view(&[Health::Ok]).unprotected().is_empty());
    }
}
