//! Who may win a failover (`durability.promote = "synced"`, the default).
//!
//! Redis and Valkey let any replica of a failed master stand for election, ranked by its
//! replication offset, and that offset can lie about what the replica holds:
//! - a replica killed and started again loads the RDB of its last full sync, and until it
//!   has synced again it lacks every write since (FAULTS.md S19);
//! - a replica that migrated to an orphaned master still holds the shard it came from
//!   (S18).
//!
//! Elected, either one loses writes the proxy acknowledged. So the proxy keeps
//! `cluster-replica-no-failover yes` on every replica that has not synced with its current
//! master since it last started or changed masters, and sets it back to `no` once it has.
//! A replica whose link dropped after it synced keeps its place: it holds every write up to
//! the drop, and with `ack = "replicated"` nothing was acknowledged after it without it.
//!
//! One exception: when the master refuses connections, its process is gone and with it
//! whatever only it held. An unsynced replica of that master is then the best copy left,
//! and may stand.
//!
//! A `CLUSTER FAILOVER` asked of a replica is not affected (without FORCE or TAKEOVER it
//! waits for the replica to catch up).
//! Only the proxy that holds the authority acts (with `[coordination]`). With
//! `promote = "any"`, the proxy lifts what it set and does nothing else. Replicas in
//! `durability.promote_exempt` are the operator's: the proxy never writes their setting.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use tokio::task::JoinSet;
use tracing::{info, warn};

use crate::client::{Conn, ConnError, Dial, Failure};
use crate::config::Promote;
use crate::protocol::Value;
use crate::routing::status::Role;
use crate::routing::Routing;

/// How often every replica is asked. A replica that changed masters is caught well
/// within the node timeout plus the election delay that would have to pass first.
const INTERVAL: Duration = Duration::from_millis(100);
/// The bound on one question to a node: a paused node must not hold up the others.
const LIMIT: Duration = Duration::from_millis(500);
const SETTING: &str = "cluster-replica-no-failover";

/// Runs for as long as the proxy does.
pub async fn run(routing: Arc<Routing>) {
    let mut guard = Guard::default();
    loop {
        tokio::time::sleep(INTERVAL).await;
        guard.look(&routing).await;
    }
}

/// What a replica says of itself (`ROLE`, and `INFO replication` when its link is down).
#[derive(Clone, Debug, PartialEq, Eq)]
struct Replication {
    /// `host:port` of its master.
    master: String,
    /// Its link to that master is up: it has synced, and streams.
    link_up: bool,
    /// A full sync is under way.
    syncing: bool,
    /// It has been linked to a master since it started (`master_link_down_since_seconds`
    /// is not -1, Redis's "never connected").
    linked_since_start: bool,
}

impl Replication {
    /// From `ROLE`: a replica's master, and whether its link is up (`connected`).
    /// `None`: the node is not a replica.
    fn from_role(role: &Value) -> Option<Replication> {
        let Value::Array(items) = role else {
            return None;
        };
        let [kind, host, port, state, ..] = items.as_slice() else {
            return None;
        };
        if kind.as_str()? != "slave" {
            return None;
        }
        let port = match port {
            Value::Int(p) => p.to_string(),
            other => other.as_str()?.to_string(),
        };
        let state = state.as_str()?;
        Some(Replication {
            master: format!("{}:{port}", host.as_str()?),
            link_up: state == "connected",
            syncing: state == "sync",
            linked_since_start: state == "connected",
        })
    }

    /// From `INFO replication`. `None`: the node is not a replica.
    fn parse(info: &str) -> Option<Replication> {
        let field = |name: &str| {
            info.lines().find_map(|line| {
                line.strip_prefix(name)
                    .and_then(|rest| rest.strip_prefix(':'))
                    .map(str::trim)
            })
        };
        if field("role")? != "slave" {
            return None;
        }
        Some(Replication {
            master: format!("{}:{}", field("master_host")?, field("master_port")?),
            link_up: field("master_link_status") == Some("up"),
            syncing: field("master_sync_in_progress") == Some("1"),
            linked_since_start: field("master_link_down_since_seconds") != Some("-1"),
        })
    }
}

/// Whether a replica may stand for election, from what it says now and the master the
/// proxy saw it synced with on the connection it asks on (`synced_with`).
fn may_stand(now: &Replication, synced_with: Option<&str>) -> bool {
    if now.link_up {
        return true;
    }
    // Started again and not linked since (its last RDB), or in a full sync.
    if now.syncing || !now.linked_since_start {
        return false;
    }
    // Its link is down: it stands only if this proxy saw it synced with its master of now
    // since it last connected to it. "Linked since start" alone does not say to which
    // master (a replica that migrated to an orphaned master was linked, to another), and
    // a reconnect may hide a restart. A replica this proxy never saw synced (it started
    // again, or the proxy did) waits for its link, or for its master to be gone.
    synced_with == Some(now.master.as_str())
}

#[derive(Default)]
struct Guard {
    /// Per replica address: the master it was seen synced with on the connection kept in
    /// `conns` (forgotten with the connection: the node may have started again).
    synced: HashMap<String, String>,
    /// Replicas this proxy set `cluster-replica-no-failover yes` on, and has not lifted.
    kept: HashSet<String>,
    conns: HashMap<String, Conn>,
    /// A replica whose setting could not be written, already logged.
    refused: HashSet<String>,
}

/// What one replica answered: its replication and whether it is kept from failover now.
type Said = (Replication, bool);

impl Guard {
    async fn look(&mut self, routing: &Routing) {
        if !routing.authority.load().this_proxy {
            return;
        }
        let config = routing.config().clone();
        let dial = config.dial().with_limit(LIMIT);
        let status = routing.status.load_full();
        let replicas: Vec<String> = status
            .view
            .nodes
            .iter()
            .filter(|n| n.role == Role::Replica && !config.promote_exempt.contains(&n.addr))
            .map(|n| n.addr.clone())
            .collect();
        self.synced.retain(|addr, _| replicas.contains(addr));
        self.conns.retain(|addr, _| replicas.contains(addr));
        if config.promote == Promote::Any {
            self.lift_all(&dial).await;
            routing.metrics.replicas_kept_from_failover.set(0);
            return;
        }
        let mut asks = JoinSet::new();
        for addr in replicas {
            let conn = self.conns.remove(&addr);
            if conn.is_none() {
                // A new connection: the node may have started again since it was seen
                // synced.
                self.synced.remove(&addr);
            }
            let dial = dial.clone();
            asks.spawn(async move { ask(addr, conn, dial).await });
        }
        let mut kept = 0;
        while let Some(joined) = asks.join_next().await {
            let Ok((addr, conn, said)) = joined else {
                continue;
            };
            let Some(mut conn) = conn else {
                self.synced.remove(&addr);
                continue;
            };
            let Some((now, is_kept)) = said else {
                self.conns.insert(addr, conn);
                continue;
            };
            if now.link_up {
                self.synced.insert(addr.clone(), now.master.clone());
            }
            let mut stand = may_stand(&now, self.synced.get(&addr).map(String::as_str));
            if !stand && master_gone(&now.master, &dial).await {
                stand = true;
            }
            if stand == is_kept {
                self.set(&mut conn, &now, !stand).await;
            }
            if !stand {
                kept += 1;
            }
            self.conns.insert(addr, conn);
        }
        routing.metrics.replicas_kept_from_failover.set(kept);
    }

    /// Writes the replica's setting: `keep` sets `cluster-replica-no-failover yes`.
    async fn set(&mut self, conn: &mut Conn, now: &Replication, keep: bool) {
        let addr = conn.addr().to_string();
        let value = if keep { "yes" } else { "no" };
        match conn.call_ok(&["CONFIG", "SET", SETTING, value]).await {
            Ok(_) => {
                self.refused.remove(&addr);
                if keep {
                    self.kept.insert(addr.clone());
                    warn!(replica = %addr, master = %now.master, "a replica not synced with its master since it started or changed masters is kept from winning a failover until it has synced (durability.promote = synced)");
                } else {
                    self.kept.remove(&addr);
                    info!(replica = %addr, master = %now.master, synced = now.link_up, "a replica may win a failover again");
                }
            }
            Err(e) => {
                if self.refused.insert(addr.clone()) {
                    warn!(replica = %addr, error = %e, "cannot set {SETTING} on a replica: it may win a failover with data it lacks");
                }
            }
        }
    }

    /// `promote = "any"`: gives back what this proxy set.
    async fn lift_all(&mut self, dial: &Dial) {
        for addr in std::mem::take(&mut self.kept) {
            let lifted = match Conn::dial(&addr, dial).await {
                Ok(mut conn) => conn.call_ok(&["CONFIG", "SET", SETTING, "no"]).await,
                Err(e) => Err(e),
            };
            match lifted {
                Ok(_) => {
                    info!(replica = %addr, "durability.promote = any: the replica may win a failover again")
                }
                Err(e) => {
                    warn!(replica = %addr, error = %e, "durability.promote = any, but {SETTING} could not be set back to no")
                }
            }
        }
    }
}

/// Asks one replica for its replication and its setting, on `conn` or a new connection:
/// `ROLE` and `CONFIG GET` in one round trip, and `INFO replication` only when its link
/// is down. The connection comes back unless it failed; a `None` answer: not a replica,
/// or nothing readable.
async fn ask(addr: String, conn: Option<Conn>, dial: Dial) -> (String, Option<Conn>, Option<Said>) {
    let mut conn = match conn {
        Some(conn) => conn,
        None => match Conn::dial(&addr, &dial).await {
            Ok(conn) => conn,
            Err(_) => return (addr, None, None),
        },
    };
    match said(&mut conn).await {
        Ok(said) => (addr, Some(conn), said),
        Err(_) => (addr, None, None),
    }
}

async fn said(conn: &mut Conn) -> Result<Option<Said>, ConnError> {
    let asked = [vec!["ROLE"], vec!["CONFIG", "GET", SETTING]];
    let replies = conn.pipeline(&asked, LIMIT).await?;
    let [role, setting] = replies.as_slice() else {
        return Ok(None);
    };
    let Some(mut now) = Replication::from_role(role) else {
        return Ok(None);
    };
    if !now.link_up {
        let Value::Bulk(info) = conn.call(&["INFO", "replication"]).await? else {
            return Ok(None);
        };
        match Replication::parse(&String::from_utf8_lossy(&info)) {
            Some(r) => now = r,
            None => return Ok(None),
        }
    }
    Ok(Some((now, kept(setting))))
}

/// True when `CONFIG GET cluster-replica-no-failover` says `yes`.
fn kept(reply: &Value) -> bool {
    let value = match reply {
        Value::Array(items) => items.get(1),
        Value::Map(pairs) => pairs.first().map(|(_, v)| v),
        _ => None,
    };
    matches!(value, Some(Value::Bulk(b)) if b.as_ref() == b"yes")
}

/// True when nothing listens at the master's address: its process is gone.
async fn master_gone(master: &str, dial: &Dial) -> bool {
    matches!(
        Conn::dial(master, dial).await,
        Err(ConnError {
            failure: Failure::Refused,
            ..
        })
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(role: &str, link: &str, syncing: u8, down_since: Option<i64>) -> String {
        let mut text = format!(
            "# Replication\r\nrole:{role}\r\nmaster_host:10.0.0.1\r\nmaster_port:7000\r\nmaster_link_status:{link}\r\nmaster_sync_in_progress:{syncing}\r\n"
        );
        if let Some(s) = down_since {
            text.push_str(&format!("master_link_down_since_seconds:{s}\r\n"));
        }
        text
    }

    #[test]
    fn reads_a_replica_and_not_a_master() {
        let r = Replication::parse(&info("slave", "down", 0, Some(3))).unwrap();
        assert_eq!(r.master, "10.0.0.1:7000");
        assert!(!r.link_up && !r.syncing && r.linked_since_start);
        assert!(Replication::parse(&info("master", "up", 0, None)).is_none());
    }

    #[test]
    fn a_replica_linked_to_its_master_stands() {
        let r = Replication::parse(&info("slave", "up", 0, None)).unwrap();
        assert!(may_stand(&r, None));
        assert!(may_stand(&r, Some("10.0.0.9:7000")));
    }

    #[test]
    fn s19_a_replica_started_again_stands_only_once_it_has_synced() {
        // Never linked since it started: it holds its last full sync's RDB.
        let r = Replication::parse(&info("slave", "down", 0, Some(-1))).unwrap();
        assert!(!may_stand(&r, None));
        assert!(!may_stand(&r, Some("10.0.0.1:7000")));
        // A full sync under way.
        let r = Replication::parse(&info("slave", "down", 1, Some(2))).unwrap();
        assert!(!may_stand(&r, None));
    }

    #[test]
    fn s18_a_replica_that_changed_masters_does_not_stand_on_its_old_link() {
        // Synced with another master in this run, now linked to 10.0.0.1:7000 but not synced.
        let r = Replication::parse(&info("slave", "down", 0, Some(1))).unwrap();
        assert!(!may_stand(&r, Some("10.0.0.2:7000")));
    }

    #[test]
    fn a_synced_replica_whose_master_failed_stands() {
        let r = Replication::parse(&info("slave", "down", 0, Some(1))).unwrap();
        assert!(may_stand(&r, Some("10.0.0.1:7000")));
        // Never seen synced (it or the proxy started again): it waits for its link, or
        // for its master to be gone.
        assert!(!may_stand(&r, None));
    }

    #[test]
    fn reads_role() {
        let bulk = |s: &str| Value::Bulk(s.as_bytes().to_vec().into());
        let role = |state: &str| {
            Value::Array(vec![
                bulk("slave"),
                bulk("10.0.0.1"),
                Value::Int(7000),
                bulk(state),
                Value::Int(10),
            ])
        };
        let up = Replication::from_role(&role("connected")).unwrap();
        assert_eq!(up.master, "10.0.0.1:7000");
        assert!(up.link_up && may_stand(&up, None));
        let syncing = Replication::from_role(&role("sync")).unwrap();
        assert!(!syncing.link_up && syncing.syncing);
        let master = Value::Array(vec![bulk("master"), Value::Int(10), Value::Array(vec![])]);
        assert!(Replication::from_role(&master).is_none());
    }

    #[test]
    fn reads_the_setting_in_resp2_and_resp3() {
        let name = || Value::Bulk(SETTING.as_bytes().to_vec().into());
        let value = |v: &str| Value::Bulk(v.as_bytes().to_vec().into());
        assert!(kept(&Value::Array(vec![name(), value("yes")])));
        assert!(!kept(&Value::Array(vec![name(), value("no")])));
        assert!(kept(&Value::Map(vec![(name(), value("yes"))])));
        assert!(!kept(&Value::Error("ERR".into())));
    }
}
