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
    mark(slot, journal, false)
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
    let mut conns: HashMap<String, Conn> = HashMap::new();
    for step in plan {
        {
            let mut j = journal.lock().unwrap_or_else(|e| e.into_inner());
            j.step(slot, step, "sent")
                .map_err(|e| format!("cannot write the journal: {e}"))?;
        }
        let result = run_step(step, addrs, &mut conns, dial).await;
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

async fn conn<'a>(
    id: &str,
    addrs: &HashMap<String, String>,
    conns: &'a mut HashMap<String, Conn>,
    dial: &Dial,
) -> Result<&'a mut Conn, String> {
    let addr = addrs
        .get(id)
        .ok_or_else(|| format!("no address known for node {id}"))?;
    if !conns.contains_key(id) {
        let c = Conn::dial(addr, dial).await.map_err(|e| e.to_string())?;
        conns.insert(id.to_string(), c);
    }
    Ok(conns.get_mut(id).expect("just inserted"))
}

async fn run_step(
    step: &Step,
    addrs: &HashMap<String, String>,
    conns: &mut HashMap<String, Conn>,
    dial: &Dial,
) -> Result<(), String> {
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
        } => return move_keys(from, to, *slot, *replace, addrs, conns, dial).await,
    };
    let c = conn(&on, addrs, conns, dial).await?;
    c.call_ok(&cmd).await.map_err(|e| e.to_string())?;
    Ok(())
}

async fn move_keys(
    from: &str,
    to: &str,
    slot: u16,
    replace: bool,
    addrs: &HashMap<String, String>,
    conns: &mut HashMap<String, Conn>,
    dial: &Dial,
) -> Result<(), String> {
    let target = addrs
        .get(to)
        .ok_or_else(|| format!("no address known for node {to}"))?
        .clone();
    let (host, port) = target
        .rsplit_once(':')
        .ok_or_else(|| format!("bad address {target}"))?;
    let (host, port) = (host.to_string(), port.to_string());
    let mut moved = 0usize;
    loop {
        let c = conn(from, addrs, conns, dial).await?;
        let keys = c
            .call_ok(&[
                "CLUSTER",
                "GETKEYSINSLOT",
                &slot.to_string(),
                &BATCH.to_string(),
            ])
            .await
            .map_err(|e| e.to_string())?;
        let keys: Vec<bytes::Bytes> = keys
            .as_array()
            .unwrap_or_default()
            .iter()
            .filter_map(|k| k.as_bytes().cloned())
            .collect();
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
                    let c = conn(from, addrs, conns, dial).await?;
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
        let c = conn(from, addrs, conns, dial).await?;
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
    let c = conn(to, addrs, conns, dial).await?;
    await_replicas(c).await
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
