//! Running a repair plan: each step sent to its node, written to the journal first,
//! logged with its result. Steps are idempotent, so a plan cut short (a crash of the
//! proxy or of a node) is simply planned and run again from the cluster's new state.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use tracing::{info, warn};

use super::authority::Step;
use super::journal::Journal;
use crate::client::{Conn, Dial};
use crate::protocol::Value;

/// Keys moved per MIGRATE.
const BATCH: usize = 100;
/// How long a moved batch may take to reach the target's replicas.
const REPLICA_WAIT: Duration = Duration::from_secs(2);
/// How long a repair waits for every node to hear of the slot's new owner.
const AGREEMENT_WAIT: Duration = Duration::from_secs(3);

/// Runs `plan` for `slot`: marks the slot as being repaired in the journal, runs the
/// steps, and clears the mark once every step succeeded. `addrs` maps node ids to
/// addresses.
pub async fn run(
    slot: u16,
    plan: &[Step],
    addrs: &HashMap<String, String>,
    journal: &Mutex<Journal>,
    dial: &Dial,
) -> Result<(), String> {
    begin(slot, journal)?;
    run_steps(slot, plan, addrs, journal, dial).await?;
    if let Some(owner) = new_owner(plan) {
        await_agreement(slot, owner, addrs, dial).await;
    }
    mark(slot, journal, false)
}

/// The master a plan binds the slot to last: its new owner.
fn new_owner(plan: &[Step]) -> Option<&str> {
    plan.iter().rev().find_map(|step| match step {
        Step::Bind { owner, .. } => Some(owner.as_str()),
        _ => None,
    })
}

/// Waits until every node that answers, replicas included, binds the slot to `owner`
/// (the news travels by gossip), for [`AGREEMENT_WAIT`] at most. The slot stays held
/// until the repair ends, so no write is acknowledged on the new owner before the source
/// shard's replicas know of it: none of them, elected later, can claim the slot back
/// with a higher epoch (S11) and take acknowledged writes with it.
async fn await_agreement(slot: u16, owner: &str, addrs: &HashMap<String, String>, dial: &Dial) {
    let quick = dial.with_limit(Duration::from_millis(500));
    let deadline = Instant::now() + AGREEMENT_WAIT;
    // One connection per node that answers, asked again until it agrees; a node that
    // does not answer is down, and learns when it comes back.
    let mut waiting: Vec<Conn> = Vec::new();
    for addr in addrs.values() {
        if let Ok(conn) = Conn::dial(addr, &quick).await {
            waiting.push(conn);
        }
    }
    while !waiting.is_empty() && Instant::now() < deadline {
        let mut still = Vec::new();
        for mut conn in waiting {
            let Ok(v) = conn.call_ok(&["CLUSTER", "NODES"]).await else {
                continue;
            };
            let text = v.as_str().unwrap_or_default();
            let binds = super::nodes::parse(text, "")
                .ok()
                .and_then(|lines| lines.into_iter().find(|l| l.master && l.owns(slot)))
                .map(|l| l.id);
            if binds.as_deref() != Some(owner) {
                still.push(conn);
            }
        }
        waiting = still;
        if !waiting.is_empty() {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    if !waiting.is_empty() {
        let nodes: Vec<&str> = waiting.iter().map(Conn::addr).collect();
        warn!(
            slot,
            owner,
            ?nodes,
            "not every node binds the slot to its new owner yet; going on"
        );
    }
}

fn mark(slot: u16, journal: &Mutex<Journal>, repairing: bool) -> Result<(), String> {
    let mut j = journal.lock().unwrap_or_else(|e| e.into_inner());
    j.set_repairing(slot, repairing)
        .map_err(|e| format!("cannot write the journal: {e}"))
}

/// Marks `slot` as being repaired: if the proxy dies before the repair ends, the next one
/// finishes it, even where the slot looks like a live migration.
pub fn begin(slot: u16, journal: &Mutex<Journal>) -> Result<(), String> {
    mark(slot, journal, true)
}

/// Runs steps, each written to the journal before it is sent and logged with its result.
pub async fn run_steps(
    slot: u16,
    plan: &[Step],
    addrs: &HashMap<String, String>,
    journal: &Mutex<Journal>,
    dial: &Dial,
) -> Result<(), String> {
    let mut nodes = Nodes {
        addrs,
        conns: HashMap::new(),
        dial,
    };
    for step in plan {
        {
            let mut j = journal.lock().unwrap_or_else(|e| e.into_inner());
            j.step(slot, step, "sent")
                .map_err(|e| format!("cannot write the journal: {e}"))?;
        }
        let result = run_step(step, &mut nodes).await;
        let outcome = match &result {
            Ok(()) => "ok".to_string(),
            Err(e) => e.clone(),
        };
        match &result {
            Ok(()) => info!(slot, step = ?step, "repair step done"),
            Err(e) => warn!(slot, step = ?step, error = %e, "repair step failed"),
        }
        let mut j = journal.lock().unwrap_or_else(|e| e.into_inner());
        let _ = j.step(slot, step, &outcome);
        result?;
    }
    Ok(())
}

/// The nodes a repair talks to: their addresses, the connections opened so far, and how
/// to open more.
struct Nodes<'a> {
    addrs: &'a HashMap<String, String>,
    conns: HashMap<String, Conn>,
    dial: &'a Dial,
}

impl Nodes<'_> {
    fn addr(&self, id: &str) -> Result<&str, String> {
        self.addrs
            .get(id)
            .map(String::as_str)
            .ok_or_else(|| format!("no address known for node {id}"))
    }

    /// The connection to node `id`, opened on first use.
    async fn conn(&mut self, id: &str) -> Result<&mut Conn, String> {
        if !self.conns.contains_key(id) {
            let c = Conn::dial(self.addr(id)?, self.dial)
                .await
                .map_err(|e| e.to_string())?;
            self.conns.insert(id.to_string(), c);
        }
        Ok(self.conns.get_mut(id).expect("just inserted"))
    }
}

async fn run_step(step: &Step, nodes: &mut Nodes<'_>) -> Result<(), String> {
    let setslot = |on: &str, slot: u16, args: Vec<String>| {
        let mut cmd = vec!["CLUSTER".to_string(), "SETSLOT".into(), slot.to_string()];
        cmd.extend(args);
        (on.to_string(), cmd)
    };
    let (on, cmd) = match step {
        Step::Bind { on, slot, owner } => setslot(on, *slot, vec!["NODE".into(), owner.clone()]),
        Step::Importing { on, slot, source } => {
            setslot(on, *slot, vec!["IMPORTING".into(), source.clone()])
        }
        Step::Migrating { on, slot, target } => {
            setslot(on, *slot, vec!["MIGRATING".into(), target.clone()])
        }
        Step::Stable { on, slot } => setslot(on, *slot, vec!["STABLE".into()]),
        Step::MoveKeys {
            from,
            to,
            slot,
            replace,
        } => return move_keys(from, to, *slot, *replace, nodes).await,
        Step::CopyKeys { from, to, slot } => return copy_keys(from, to, *slot, nodes).await,
    };
    let c = nodes.conn(&on).await?;
    c.call_ok(&cmd).await.map_err(|e| e.to_string())?;
    Ok(())
}

async fn move_keys(
    from: &str,
    to: &str,
    slot: u16,
    replace: bool,
    nodes: &mut Nodes<'_>,
) -> Result<(), String> {
    let dial = nodes.dial;
    let target = nodes.addr(to)?.to_string();
    let (host, port) = target
        .rsplit_once(':')
        .ok_or_else(|| format!("bad address {target}"))?;
    let (host, port) = (host.to_string(), port.to_string());
    let mut moved = 0usize;
    loop {
        let c = nodes.conn(from).await?;
        let keys = keys_in_slot(c, slot, BATCH as i64).await?;
        if keys.is_empty() {
            break;
        }
        let keys = if replace {
            keys
        } else {
            // Giving keys back to their owner (S13, S14): a key the owner has too was
            // written there after the migration stopped, so the owner's copy is the newer
            // one. The older copy here is dropped, each by name in the log.
            let mut owner = Conn::dial(&target, dial).await.map_err(|e| e.to_string())?;
            let mut keep = Vec::new();
            for key in keys {
                let there = owner
                    .call_ok(&[b"EXISTS".as_slice(), &key])
                    .await
                    .map_err(|e| e.to_string())?;
                if there.as_int() == Some(1) {
                    warn!(slot, key = %String::from_utf8_lossy(&key), from, to, "the owner has a newer copy; dropping the old one");
                    let c = nodes.conn(from).await?;
                    c.call_ok(&["ASKING"]).await.map_err(|e| e.to_string())?;
                    c.call_ok(&[b"DEL".as_slice(), &key])
                        .await
                        .map_err(|e| e.to_string())?;
                } else {
                    keep.push(key);
                }
            }
            if keep.is_empty() {
                continue;
            }
            keep
        };
        let c = nodes.conn(from).await?;
        let mut cmd: Vec<Vec<u8>> = vec![
            b"MIGRATE".to_vec(),
            host.as_bytes().to_vec(),
            port.as_bytes().to_vec(),
            Vec::new(),
            b"0".to_vec(),
            b"10000".to_vec(),
        ];
        if replace {
            cmd.push(b"REPLACE".to_vec());
        }
        if let Some(auth) = &dial.auth {
            cmd.extend(auth.migrate_option());
        }
        cmd.push(b"KEYS".to_vec());
        cmd.extend(keys.iter().map(|k| k.to_vec()));
        // The node giving keys back may only be importing the slot: ASKING lets it act.
        c.call_ok(&["ASKING"]).await.map_err(|e| e.to_string())?;
        c.call_ok(&cmd).await.map_err(|e| e.to_string())?;
        moved += keys.len();
    }
    info!(slot, from, to, moved, "keys moved");
    let c = nodes.conn(to).await?;
    await_replicas(c).await
}

/// Up to `count` key names of `slot` on the node behind `c`.
async fn keys_in_slot(c: &mut Conn, slot: u16, count: i64) -> Result<Vec<bytes::Bytes>, String> {
    let (slot, count) = (slot.to_string(), count.max(0).to_string());
    let keys = c
        .call_ok(&["CLUSTER", "GETKEYSINSLOT", &slot, &count])
        .await
        .map_err(|e| e.to_string())?;
    Ok(keys
        .as_array()
        .unwrap_or_default()
        .iter()
        .filter_map(|k| k.as_bytes().cloned())
        .collect())
}

/// Copies every key of `slot` from `from` to `to` through this process (S11: the two
/// cannot reach each other). Keys `to` has already are left as they are.
///
/// Only once `from` knows it is cut off (`cluster_state:fail`): until then it still
/// acknowledges writes, and one sent before the slot was held may still be on its way.
/// Once it refuses them, what it has is final until the partition heals: a write that
/// arrives later gets CLUSTERDOWN, and the proxy holds it with the slot.
async fn copy_keys(from: &str, to: &str, slot: u16, nodes: &mut Nodes<'_>) -> Result<(), String> {
    let fail = |e: crate::client::ConnError| e.to_string();
    let c = nodes.conn(from).await?;
    let info = c.call_ok(&["CLUSTER", "INFO"]).await.map_err(fail)?;
    let down = info
        .as_str()
        .is_some_and(|t| t.lines().any(|l| l.trim() == "cluster_state:fail"));
    if !down {
        return Err(format!(
            "{from} still takes writes (it has not seen it is cut off); the copy waits"
        ));
    }
    let allow = ["CONFIG", "GET", "cluster-allow-reads-when-down"];
    let before = match c.call_ok(&allow).await.map_err(fail)? {
        Value::Array(v) => v
            .get(1)
            .and_then(|v| v.as_str())
            .unwrap_or("no")
            .to_string(),
        _ => "no".to_string(),
    };
    let set =
        |value: &str| ["CONFIG", "SET", "cluster-allow-reads-when-down", value].map(str::to_string);
    c.call_ok(&set("yes")).await.map_err(fail)?;
    let copied = copy_each_key(from, to, slot, nodes).await;
    let c = nodes.conn(from).await?;
    c.call_ok(&set(&before)).await.map_err(fail)?;
    let copied = copied?;
    info!(slot, from, to, copied, "keys copied");
    let c = nodes.conn(to).await?;
    await_replicas(c).await
}

async fn copy_each_key(
    from: &str,
    to: &str,
    slot: u16,
    nodes: &mut Nodes<'_>,
) -> Result<usize, String> {
    let fail = |e: crate::client::ConnError| e.to_string();
    let s = slot.to_string();
    let c = nodes.conn(from).await?;
    let count = c
        .call_ok(&["CLUSTER", "COUNTKEYSINSLOT", &s])
        .await
        .map_err(fail)?;
    let keys = keys_in_slot(c, slot, count.as_int().unwrap_or(0)).await?;
    let mut copied = 0;
    for key in keys {
        let c = nodes.conn(from).await?;
        let dump = c.call_ok(&[b"DUMP".as_slice(), &key]).await.map_err(fail)?;
        let Some(payload) = dump.as_bytes().cloned() else {
            continue; // expired meanwhile
        };
        let ttl = c.call_ok(&[b"PTTL".as_slice(), &key]).await.map_err(fail)?;
        let ttl = match ttl.as_int() {
            Some(-2) => continue,
            Some(ms) if ms > 0 => ms.to_string(),
            _ => "0".to_string(),
        };
        let c = nodes.conn(to).await?;
        let restore = [b"RESTORE".as_slice(), &key, ttl.as_bytes(), &payload];
        match c.call(&restore).await.map_err(fail)? {
            Value::Error(e) if e.starts_with(b"BUSYKEY") => {
                warn!(slot, key = %String::from_utf8_lossy(&key), from, to, "the winner has its own copy; keeping it");
            }
            Value::Error(e) => return Err(String::from_utf8_lossy(&e).into_owned()),
            _ => copied += 1,
        }
    }
    Ok(copied)
}

/// Waits until every online replica of the node behind `c` has its replication offset as
/// of now, so the moved keys survive that node's failover.
async fn await_replicas(c: &mut Conn) -> Result<(), String> {
    let offsets = |v: Value| -> Option<(u64, Vec<u64>)> {
        let text = String::from_utf8_lossy(v.as_bytes()?).into_owned();
        let master = text
            .lines()
            .find_map(|l| l.strip_prefix("master_repl_offset:"))?
            .trim()
            .parse()
            .ok()?;
        let replicas = text
            .lines()
            .filter(|l| l.starts_with("slave") && l.contains("state=online"))
            .filter_map(|l| {
                l.split(',')
                    .find_map(|f| f.strip_prefix("offset="))?
                    .parse()
                    .ok()
            })
            .collect();
        Some((master, replicas))
    };
    let info = c
        .call_ok(&["INFO", "replication"])
        .await
        .map_err(|e| e.to_string())?;
    let Some((goal, _)) = offsets(info) else {
        return Ok(());
    };
    let deadline = Instant::now() + REPLICA_WAIT;
    while Instant::now() < deadline {
        let info = c
            .call_ok(&["INFO", "replication"])
            .await
            .map_err(|e| e.to_string())?;
        match offsets(info) {
            Some((_, replicas)) if replicas.iter().all(|&o| o >= goal) => return Ok(()),
            None => return Ok(()),
            Some(_) => tokio::time::sleep(Duration::from_millis(10)).await,
        }
    }
    warn!("replicas did not catch up with moved keys in time; going on");
    Ok(())
}
