//! `CLUSTER NODES`: one node's view of the cluster.
//!
//! Line format: `<id> <ip>:<port>@<cport>[,<hostname>] <flags> <master-id|-> <ping-sent>
//! <pong-recv> <config-epoch> <link-state> <slot>...`. Open slots (`[x->-id]`, `[x-<-id]`)
//! appear only on the `myself` line, which is why every master must be asked itself.

/// One line of `CLUSTER NODES`.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct NodeLine {
    pub id: String,
    /// `host:port`, or empty when the node has no known address (`noaddr`).
    pub addr: String,
    /// The hostname it announces (`cluster-announce-hostname`), or empty: redirects name
    /// it instead of the address when the cluster prefers hostnames.
    pub hostname: String,
    pub myself: bool,
    pub master: bool,
    /// Flagged `fail` (agreed down) or `fail?` (suspected by this viewer).
    pub fail: bool,
    pub pfail: bool,
    /// The master this replica follows.
    pub master_id: Option<String>,
    pub config_epoch: u64,
    pub connected: bool,
    /// Owned slot ranges, inclusive.
    pub slots: Vec<(u16, u16)>,
    /// Slots this node is migrating away: (slot, target id).
    pub migrating: Vec<(u16, String)>,
    /// Slots this node is importing: (slot, source id).
    pub importing: Vec<(u16, String)>,
}

impl NodeLine {
    /// True when this line lists `slot` among the node's slots.
    pub fn owns(&self, slot: u16) -> bool {
        self.slots.iter().any(|&(a, b)| (a..=b).contains(&slot))
    }
}

/// Most nodes a `CLUSTER NODES` reply may list. Redis suggests clusters of up to 1,000
/// nodes; a reply listing more comes from a broken or hostile node, and the work of
/// merging it grows with every line.
pub const MAX_NODES: usize = 10_000;

/// Why a `CLUSTER NODES` reply could not be read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Unreadable {
    /// More than [`MAX_NODES`] lines.
    TooMany,
    /// A line that does not parse.
    Line(String),
    /// A node listed twice (its id).
    Twice(String),
}

impl std::fmt::Display for Unreadable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Unreadable::TooMany => write!(f, "more than {MAX_NODES} nodes listed"),
            Unreadable::Line(l) => write!(f, "bad CLUSTER NODES line: {l:?}"),
            Unreadable::Twice(id) => write!(f, "node {id} listed twice"),
        }
    }
}

/// Parses a `CLUSTER NODES` reply. `default_host` fills in an empty host (a node that
/// has not learned its own address reports `:port`). A line that does not parse, a node
/// listed twice or more than [`MAX_NODES`] lines make the whole reply unreadable.
pub fn parse(text: &str, default_host: &str) -> Result<Vec<NodeLine>, Unreadable> {
    let mut out: Vec<NodeLine> = Vec::new();
    let mut ids = std::collections::HashSet::new();
    for l in text.lines().filter(|l| !l.trim().is_empty()) {
        if out.len() == MAX_NODES {
            return Err(Unreadable::TooMany);
        }
        let line = parse_line(l, default_host).ok_or_else(|| Unreadable::Line(l.to_string()))?;
        if !ids.insert(line.id.clone()) {
            return Err(Unreadable::Twice(line.id));
        }
        out.push(line);
    }
    Ok(out)
}

fn parse_line(line: &str, default_host: &str) -> Option<NodeLine> {
    let mut f = line.split_ascii_whitespace();
    let id = f.next()?.to_string();
    let addr_field = f.next()?;
    let flags = f.next()?;
    let master_id = f.next()?;
    let _ping = f.next()?;
    let _pong = f.next()?;
    let config_epoch = f.next()?.parse().ok()?;
    let link = f.next()?;

    let hostport = addr_field.split(['@', ',']).next()?;
    let (host, port) = hostport.rsplit_once(':')?;
    let port: u16 = port.parse().ok()?;
    let addr = if port == 0 {
        String::new()
    } else if host.is_empty() {
        format!("{default_host}:{port}")
    } else {
        format!("{host}:{port}")
    };

    // `ip:port@cport[,hostname[,key=value...]]`
    let hostname = addr_field
        .split(',')
        .nth(1)
        .filter(|h| !h.contains('='))
        .unwrap_or_default()
        .to_string();
    let mut node = NodeLine {
        id,
        addr,
        hostname,
        master_id: (master_id != "-").then(|| master_id.to_string()),
        config_epoch,
        connected: link == "connected",
        ..NodeLine::default()
    };
    for flag in flags.split(',') {
        match flag {
            "myself" => node.myself = true,
            "master" => node.master = true,
            "fail" => node.fail = true,
            "fail?" => node.pfail = true,
            "noaddr" => node.addr.clear(),
            _ => {}
        }
    }
    for slot in f {
        if let Some(open) = slot.strip_prefix('[').and_then(|s| s.strip_suffix(']')) {
            if let Some((s, target)) = open.split_once("->-") {
                node.migrating.push((s.parse().ok()?, target.to_string()));
            } else if let Some((s, source)) = open.split_once("-<-") {
                node.importing.push((s.parse().ok()?, source.to_string()));
            } else {
                return None;
            }
        } else if let Some((a, b)) = slot.split_once('-') {
            let (a, b): (u16, u16) = (a.parse().ok()?, b.parse().ok()?);
            if a > b || b >= 16384 {
                return None;
            }
            node.slots.push((a, b));
        } else {
            let s: u16 = slot.parse().ok()?;
            if s >= 16384 {
                return None;
            }
            node.slots.push((s, s));
        }
    }
    Some(node)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_masters_replicas_and_open_slots() {
        let text = "\
07c37dfeb235213a872192d90877d0cd55635b91 127.0.0.1:30004@31004 slave e7d1eecce10fd6bb5eb35b9f99a514335d9ba9ca 0 1426238317239 4 connected
67ed2db8d677e59ec4a4cefb06858cf2a1a89fa1 127.0.0.1:30002@31002,host2 master - 0 1426238316232 2 connected 5461-10922
e7d1eecce10fd6bb5eb35b9f99a514335d9ba9ca 127.0.0.1:30001@31001 myself,master - 0 0 1 connected 0-5460 [93->-67ed2db8d677e59ec4a4cefb06858cf2a1a89fa1] [77-<-67ed2db8d677e59ec4a4cefb06858cf2a1a89fa1]
292f8b365bb7edb5e285caf0b7e6ddc7265d2f4f :30003@31003 master,fail - 1426238316232 0 3 disconnected 10923 10924-16383
";
        let nodes = parse(text, "10.0.0.1").unwrap();
        assert_eq!(nodes.len(), 4);
        assert_eq!(
            nodes[0].master_id.as_deref(),
            Some("e7d1eecce10fd6bb5eb35b9f99a514335d9ba9ca")
        );
        assert!(!nodes[0].master);
        assert_eq!(nodes[1].addr, "127.0.0.1:30002");
        assert_eq!(nodes[2].slots, vec![(0, 5460)]);
        assert!(nodes[2].myself);
        assert_eq!(
            nodes[2].migrating,
            vec![(93, "67ed2db8d677e59ec4a4cefb06858cf2a1a89fa1".into())]
        );
        assert_eq!(
            nodes[2].importing,
            vec![(77, "67ed2db8d677e59ec4a4cefb06858cf2a1a89fa1".into())]
        );
        assert_eq!(nodes[3].addr, "10.0.0.1:30003");
        assert!(nodes[3].fail && !nodes[3].connected);
        assert_eq!(nodes[3].slots, vec![(10923, 10923), (10924, 16383)]);
        assert_eq!(nodes[3].config_epoch, 3);
    }

    #[test]
    fn rejects_malformed_lines() {
        assert!(parse("abc", "h").is_err());
        assert!(parse("id 1.2.3.4:1@2 master - 0 0 x connected", "h").is_err());
        let line = "id 1.2.3.4:1@2 master - 0 0 1 connected\n";
        assert!(matches!(
            parse(&line.repeat(2), "h"),
            Err(Unreadable::Twice(_))
        ));
        let many: String = (0..=MAX_NODES)
            .map(|i| format!("n{i} 1.2.3.4:1@2 master - 0 0 1 connected\n"))
            .collect();
        assert!(parse(&many, "h") == Err(Unreadable::TooMany));
        let hosted = parse(
            "id 1.2.3.4:1@2,db-1,shard-id=x master - 0 0 1 connected",
            "h",
        );
        assert_eq!(hosted.unwrap()[0].hostname, "db-1");
        assert!(parse("id 1.2.3.4:1@2 master - 0 0 1 connected 16384", "h").is_err());
        assert!(parse("id 1.2.3.4:1@2 master - 0 0 1 connected 9-3", "h").is_err());
    }
}
