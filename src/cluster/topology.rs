//! Topology: keeps the slot map in step with the cluster.
//!
//! Asks every known node (seeds, then every node the views name) for `CLUSTER NODES`, on
//! an interval and at once when the data plane hints that something changed (a MOVED, a
//! lost connection, CLUSTERDOWN). For each slot it takes the claim with the highest config
//! epoch among all views, which is what the cluster itself converges to after a failover
//! or a finished migration. A MOVED is applied to the map at once, before the next refresh.
//!
//! This is the plain cluster view. Deciding slots the cluster cannot decide for itself
//! (a master lost mid-migration) is the authority's job, and the epoch rule is not enough
//! there.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tracing::{debug, error, info, warn};

use super::coordination::Coordinator;
use super::heal::Healer;
use super::journal::Journal;
use super::nodes::{self, NodeLine};
use super::view;
use crate::client::{query, Conn, Dial};
use crate::config::ReadFrom;
use crate::protocol::{Value, SLOTS};
use crate::routing::command::Commands;
use crate::routing::status::{Authority, ClusterView, Health, Role, Status};
use crate::routing::{Hint, Routing};

/// Shortest pause between two refreshes prompted by hints.
const MIN_GAP: Duration = Duration::from_millis(20);
/// Refresh interval while a slot is unsettled or a repair runs.
const UNSETTLED_INTERVAL: Duration = Duration::from_millis(100);

/// Owner address per slot, as last published.
type Assignment = Vec<Option<String>>;

/// Runs until the data plane is gone (its hint channel closes).
/// With `durability.ack = "replicated"`, names the masters that have no replica but
/// failed ones each time that set changes: their writes wait until a replica is back.
fn warn_unprotected(routing: &Routing, view: &ClusterView, last: &mut Vec<String>) {
    if routing.config().ack != crate::config::Ack::Replicated {
        return;
    }
    let now = view.unprotected();
    if now != *last {
        if now.is_empty() {
            info!("every master has a replica: every write waits for its replicas");
        } else {
            warn!(masters = ?now, "masters with no replica but failed ones: their writes wait for a replica to sync, up to hold.timeout (durability.ack = replicated)");
        }
        *last = now;
    }
}

pub async fn run(routing: Arc<Routing>, mut hints: mpsc::UnboundedReceiver<Hint>) {
    let mut known: Vec<String> = routing.config().seeds.clone();
    let (journal, coordinator) = open_journal(&routing);
    let mut healer = Healer::new(journal, coordinator);
    let mut unsettled = false;
    let mut published: Assignment = vec![None; SLOTS];
    let mut replicas = Replicas::new();
    let mut have_commands = false;
    let mut unprotected: Vec<String> = Vec::new();
    loop {
        for seed in &routing.config().seeds {
            if !known.contains(seed) {
                known.push(seed.clone());
            }
        }
        let asked = known.len();
        let views = collect_views(&routing.config().dial(), &known).await;
        match &views {
            Some(_) => routing.metrics.refreshes_ok.inc(),
            None => routing.metrics.refreshes_failed.inc(),
        }
        if let Some(views) = views {
            let view = view::merge(&views);
            record_slot_states(&routing, &view);
            warn_unprotected(&routing, &view, &mut unprotected);
            let readable = readable_replicas(&routing, &view);
            // The data plane asks the view whether a silent node has failed: it goes out
            // before the authority looks (which may take a round of key counts).
            let before = routing.status.load().decisions.clone();
            routing.status.store(Arc::new(Status {
                view: view.clone(),
                decisions: before,
            }));
            // Broken slots are held before the new map can route them anywhere.
            let decisions = healer.assess(&routing, &views).await;
            unsettled = !decisions.is_empty() || healer.repairing();
            let shown = decisions.iter().take(Status::MAX_DECISIONS).cloned();
            routing.status.store(Arc::new(Status {
                view,
                decisions: shown.collect(),
            }));
            let assignment = decide(&views);
            for (_, lines) in &views {
                for line in lines.iter().filter(|l| !l.addr.is_empty()) {
                    if !known.contains(&line.addr) {
                        known.push(line.addr.clone());
                    }
                }
            }
            // The server's command table first: until it is loaded, only the built-in one
            // knows where keys are and which commands block or must not be forwarded.
            if !have_commands {
                have_commands = load_commands(&routing, &views[0].0).await;
            }
            if assignment != published || readable != replicas {
                let covered = assignment.iter().filter(|o| o.is_some()).count();
                info!(covered, nodes = known.len(), "slot map updated");
                replicas = readable;
                routing.publish(&assignment, &replicas);
                published = assignment;
            }
        }
        if known.len() > asked {
            continue; // nodes just learned of are asked at once
        }
        let last = Instant::now();
        let interval = if healer.confirming() {
            MIN_GAP
        } else if unsettled {
            UNSETTLED_INTERVAL
        } else {
            routing.config().refresh_interval
        };
        let wait = tokio::time::sleep(interval);
        tokio::select! {
            hint = hints.recv() => {
                let Some(hint) = hint else { return };
                let mut moved = Vec::new();
                let mut take = |hint| if let Hint::Moved { slot, addr } = hint { moved.push((slot, addr)) };
                take(hint);
                while let Ok(hint) = hints.try_recv() {
                    take(hint);
                }
                if !moved.is_empty() {
                    for (slot, addr) in &moved {
                        published[*slot as usize] = Some(addr.clone());
                    }
                    debug!(slots = moved.len(), "applying MOVED");
                    routing.publish(&published, &replicas);
                }
                tokio::time::sleep(MIN_GAP.saturating_sub(last.elapsed())).await;
            }
            _ = wait => {}
        }
    }
}

/// The journal: shared through etcd with `[coordination]` (whose lease this starts
/// campaigning for), else this proxy's own, under `state_dir`.
fn open_journal(routing: &Arc<Routing>) -> (Journal, Option<Arc<Coordinator>>) {
    let config = routing.config();
    if let Some(coordination) = config.coordination.clone() {
        info!(etcd = ?coordination.endpoints, name = %coordination.name, "the journal and the authority are shared through etcd");
        let coordinator = Coordinator::new(coordination);
        routing.publish_authority(coordinator.authority());
        tokio::spawn(coordinator.clone().run(routing.clone()));
        return (Journal::shared(coordinator.clone()), Some(coordinator));
    }
    if config.state_dir.is_none() {
        warn!("state_dir is not set: the migration journal lives in memory only and a restart forgets it");
    }
    let journal = Journal::open(config.state_dir.as_deref()).unwrap_or_else(|e| {
        error!(error = %e, "cannot open the journal; keeping it in memory");
        Journal::open(None).expect("an in-memory journal always opens")
    });
    routing.publish_authority(Authority {
        journal: journal.source(),
        this_proxy: true,
        ..Authority::default()
    });
    (journal, None)
}

/// Sets the slot-state gauges from a fresh view.
fn record_slot_states(routing: &Routing, view: &ClusterView) {
    let mut owned = vec![false; SLOTS];
    let (mut migrating, mut importing) = (0i64, 0i64);
    for node in view.nodes.iter().filter(|n| n.role == Role::Master) {
        for &(a, b) in &node.slots {
            owned[a as usize..=b as usize].fill(true);
        }
        migrating += node.migrating.len() as i64;
        importing += node.importing.len() as i64;
    }
    let served = owned.iter().filter(|&&o| o).count() as i64;
    let slots = &routing.metrics.slots;
    slots.with_label_values(&["served"]).set(served);
    slots
        .with_label_values(&["unassigned"])
        .set(SLOTS as i64 - served);
    slots.with_label_values(&["migrating"]).set(migrating);
    slots.with_label_values(&["importing"]).set(importing);
}

/// (master address, replica address) for every replica reads may go to.
type Replicas = Vec<(String, String)>;

/// The replicas that are up, when `backend.read_from` sends reads to them.
fn readable_replicas(routing: &Routing, view: &ClusterView) -> Replicas {
    if routing.config().read_from == ReadFrom::Master {
        return Replicas::new();
    }
    let mut replicas: Replicas = view
        .nodes
        .iter()
        .filter(|n| n.role == Role::Replica && n.health == Health::Ok)
        .filter_map(|n| {
            let master = view
                .nodes
                .iter()
                .find(|m| Some(&m.id) == n.master_id.as_ref())?;
            Some((master.addr.clone(), n.addr.clone()))
        })
        .collect();
    replicas.sort();
    replicas
}

/// Asks every known node for its view, in parallel. `None` when no node answered.
pub async fn collect_views(dial: &Dial, known: &[String]) -> Option<Vec<(String, Vec<NodeLine>)>> {
    let mut asks = JoinSet::new();
    for addr in known.iter().cloned() {
        let dial = dial.clone();
        asks.spawn(async move {
            let reply = query(&addr, &["CLUSTER", "NODES"], &dial).await;
            (addr, reply)
        });
    }
    let mut views = Vec::new();
    while let Some(done) = asks.join_next().await {
        let Ok((addr, reply)) = done else { continue };
        let text = match reply {
            Ok(Value::Bulk(text)) => text,
            Ok(other) => {
                debug!(%addr, reply = ?other, "CLUSTER NODES refused");
                continue;
            }
            Err(e) => {
                debug!(error = %e, "node did not answer");
                continue;
            }
        };
        let host = addr.rsplit_once(':').map_or(addr.as_str(), |(h, _)| h);
        match nodes::parse(&String::from_utf8_lossy(&text), host) {
            Ok(lines) => views.push((addr, lines)),
            Err(e) => warn!(%addr, error = %e, "unreadable CLUSTER NODES"),
        }
    }
    if views.is_empty() {
        warn!(
            tried = known.len(),
            "no cluster node answered CLUSTER NODES"
        );
        return None;
    }
    // Seeds first, so that the command table comes from a node the operator named.
    views.sort_by_key(|(addr, _)| known.iter().position(|k| k == addr));
    Some(views)
}

/// Per slot, the owner claimed with the highest config epoch in any view.
pub fn decide(views: &[(String, Vec<NodeLine>)]) -> Assignment {
    let mut best: Vec<Option<(u64, &str)>> = vec![None; SLOTS];
    for (_, lines) in views {
        for line in lines.iter().filter(|l| l.master && !l.addr.is_empty()) {
            for &(start, end) in &line.slots {
                for slot in start..=end {
                    let entry = &mut best[slot as usize];
                    if entry.is_none_or(|(epoch, _)| line.config_epoch > epoch) {
                        *entry = Some((line.config_epoch, &line.addr));
                    }
                }
            }
        }
    }
    best.into_iter()
        .map(|b| b.map(|(_, addr)| addr.to_string()))
        .collect()
}

/// True when `INFO server` is Valkey's, 8.0 or later: there a master that comes back
/// importing a slot its source gave up takes the slot (`authority::Memory`).
pub fn importer_takes_back(info: &str) -> bool {
    info.lines()
        .find_map(|l| l.strip_prefix("valkey_version:"))
        .and_then(|v| v.trim().split('.').next()?.parse::<u32>().ok())
        .is_some_and(|major| major >= 8)
}

/// Loads the command table and server version from one node; false if it failed.
async fn load_commands(routing: &Routing, addr: &str) -> bool {
    let Ok(mut conn) = Conn::dial(addr, &routing.config().dial()).await else {
        return false;
    };
    if let Ok(Value::Bulk(info)) = conn.call(&["INFO", "server"]).await {
        let info = String::from_utf8_lossy(&info);
        if let Some(v) = info.lines().find_map(|l| l.strip_prefix("redis_version:")) {
            routing.server_version.store(Arc::new(v.trim().to_string()));
        }
        let takes_back = importer_takes_back(&info);
        routing
            .importer_takes_back
            .store(takes_back, std::sync::atomic::Ordering::Relaxed);
    }
    match conn.call(&["COMMAND"]).await {
        Ok(reply) => match Commands::from_command_reply(&reply) {
            Some(commands) => {
                info!(%addr, commands = commands.len(), "command table loaded");
                routing.commands.store(Arc::new(commands));
                true
            }
            None => {
                warn!(%addr, "COMMAND reply unreadable; using the built-in table");
                true
            }
        },
        Err(e) => {
            debug!(error = %e, "COMMAND failed");
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(addr: &str, epoch: u64, slots: &[(u16, u16)]) -> NodeLine {
        NodeLine {
            id: addr.to_string(),
            addr: addr.to_string(),
            master: true,
            config_epoch: epoch,
            slots: slots.to_vec(),
            ..NodeLine::default()
        }
    }

    #[test]
    fn the_highest_epoch_claim_wins_across_views() {
        // A stale view still names the failed master; the promoted replica claims the
        // same slots with a higher epoch.
        let stale = vec![line("a:1", 1, &[(0, 99)]), line("b:1", 2, &[(100, 199)])];
        let fresh = vec![line("a2:1", 7, &[(0, 99)]), line("b:1", 2, &[(100, 199)])];
        let views = vec![("x".to_string(), stale), ("y".to_string(), fresh)];
        let got = decide(&views);
        assert_eq!(got[0].as_deref(), Some("a2:1"));
        assert_eq!(got[150].as_deref(), Some("b:1"));
        assert_eq!(got[200], None);
    }
}
