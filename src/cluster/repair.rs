//! Running a repair plan: each step sent to its node, written to the journal first,
//! logged with its result. Steps are idempotent, so a plan cut short (a crash of the
//! proxy or of a node) is simply planned and run again from the cluster's new state.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use tracing::{info, warn};

use super::authority::Step;
use super::journal::{self, Change, Journal, StepRecord};
use super::Error;
use crate::client::{Conn, ConnError, Dial};
use crate::protocol::Value;

/// Keys moved per MIGRATE, unless a [`Pace`] says otherwise.
pub const BATCH: usize = 100;
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
    pace: &Pace<'_>,
) -> Result<(), Error> {
    begin(slot, journal).await?;
    run_steps_paced(slot, plan, addrs, journal, dial, pace).await?;
    if let Some(owner) = new_owner(plan) {
        await_agreement(slot, owner, addrs, dial).await;
    }
    mark(slot, journal, false).await
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
pub async fn await_agreement(slot: u16, owner: &str, addrs: &HashMap<String, String>, dial: &Dial) {
    await_agreement_all(&[(slot, owner)], addrs, dial).await;
}

/// [`await_agreement`] for several slots and their new owners at once.
pub async fn await_agreement_all(
    moved: &[(u16, &str)],
    addrs: &HashMap<String, String>,
    dial: &Dial,
) {
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
            let lines = super::nodes::parse(text, "").unwrap_or_default();
            // Every slot bound to its new owner, and to no other master.
            let agrees = moved.iter().all(|&(slot, owner)| {
                let mut binds = lines.iter().filter(|l| l.master && l.owns(slot));
                binds.clone().next().is_some() && binds.all(|l| l.id == owner)
            });
            if !agrees {
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
        let slots: Vec<u16> = moved.iter().map(|&(slot, _)| slot).collect();
        warn!(
            ?slots,
            ?nodes,
            "not every node binds the slots to their new owners yet; going on"
        );
    }
}

/// Marks `slot` as being repaired or not, in the journal.
pub async fn mark(slot: u16, journal: &Mutex<Journal>, repairing: bool) -> Result<(), Error> {
    journal::commit(journal, Change::Repairing(slot, repairing)).await
}

/// Marks `slot` as being repaired: if the proxy dies before the repair ends, the next one
/// finishes it, even where the slot looks like a live migration.
pub async fn begin(slot: u16, journal: &Mutex<Journal>) -> Result<(), Error> {
    mark(slot, journal, true).await
}

/// How keys move: batch size, a rate limit, and where to count them.
pub struct Pace<'a> {
    /// Keys per MIGRATE.
    pub batch: usize,
    /// MIGRATEs sent together, one after the other on one connection, before the wait
    /// for the target's replicas.
    pub pipeline: usize,
    /// At most this many keys a second (none: as fast as the nodes go).
    pub max_keys_per_sec: Option<u64>,
    /// Counts every key moved, as it moves.
    pub moved: Option<&'a AtomicU64>,
    /// Asked between batches: true stops the move there (the slot stays migrating, and
    /// the move resumes from the cluster's state).
    pub stop: Option<&'a AtomicBool>,
    /// Counts every step sent.
    pub sent: Option<&'a prometheus::IntCounter>,
}

impl Default for Pace<'_> {
    fn default() -> Self {
        Pace {
            batch: BATCH,
            pipeline: PIPELINE,
            max_keys_per_sec: None,
            moved: None,
            stop: None,
            sent: None,
        }
    }
}

/// MIGRATEs of a batch each, sent together before each wait for the target's replicas.
/// Measured on 500 slots of 100,000 keys under writers: 4 moves 1.2-1.3x the keys a
/// second of 1, with the same longest stall.
pub const PIPELINE: usize = 4;

/// Runs steps, each written to the journal before it is sent and logged with its result.
pub async fn run_steps(
    slot: u16,
    plan: &[Step],
    addrs: &HashMap<String, String>,
    journal: &Mutex<Journal>,
    dial: &Dial,
) -> Result<(), Error> {
    run_steps_paced(slot, plan, addrs, journal, dial, &Pace::default()).await
}

/// [`run_steps`], with keys moved at `pace`.
pub async fn run_steps_paced(
    slot: u16,
    plan: &[Step],
    addrs: &HashMap<String, String>,
    journal: &Mutex<Journal>,
    dial: &Dial,
    pace: &Pace<'_>,
) -> Result<(), Error> {
    let mut nodes = Nodes {
        addrs,
        conns: HashMap::new(),
        dial,
    };
    for step in plan {
        journal::commit(journal, Change::Step(StepRecord::now(slot, step, "sent"))).await?;
        if let Some(sent) = pace.sent {
            sent.inc();
        }
        let result = run_step(step, &mut nodes, pace).await;
        let outcome = match &result {
            Ok(()) => "ok".to_string(),
            Err(e) => e.to_string(),
        };
        match &result {
            Ok(()) => info!(slot, step = ?step, "repair step done"),
            Err(e) => warn!(slot, step = ?step, error = %e, "repair step failed"),
        }
        let record = StepRecord::now(slot, step, &outcome);
        let _ = journal::commit(journal, Change::Step(record)).await;
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
    fn addr(&self, id: &str) -> Result<&str, Error> {
        self.addrs
            .get(id)
            .map(String::as_str)
            .ok_or_else(|| Error::NotReady(format!("no address known for node {id}")))
    }

    /// The connection to node `id`, opened on first use.
    async fn conn(&mut self, id: &str) -> Result<&mut Conn, Error> {
        if !self.conns.contains_key(id) {
            let c = Conn::dial(self.addr(id)?, self.dial).await?;
            self.conns.insert(id.to_string(), c);
        }
        Ok(self.conns.get_mut(id).expect("just inserted"))
    }
}

async fn run_step(step: &Step, nodes: &mut Nodes<'_>, pace: &Pace<'_>) -> Result<(), Error> {
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
        } => return move_keys(from, to, *slot, *replace, nodes, pace).await,
        Step::CopyKeys { from, to, slot } => return copy_keys(from, to, *slot, nodes).await,
        Step::MigrateSlots { on, ranges, target } => {
            return migrate_slots(on, ranges, target, nodes, pace).await
        }
    };
    let c = nodes.conn(&on).await?;
    c.call_ok(&cmd).await?;
    Ok(())
}

/// Moves every key of `slot` from `from` to `to`, a batch at a time; after each batch,
/// waits until `to`'s replicas have it, so that a failover of `to` loses none of it.
async fn move_keys(
    from: &str,
    to: &str,
    slot: u16,
    replace: bool,
    nodes: &mut Nodes<'_>,
    pace: &Pace<'_>,
) -> Result<(), Error> {
    let dial = nodes.dial;
    let target = nodes.addr(to)?.to_string();
    let (host, port) = target
        .rsplit_once(':')
        .ok_or_else(|| Error::Plan(format!("bad address {target}")))?;
    let (host, port) = (host.to_string(), port.to_string());
    let mut moved = 0usize;
    let started = Instant::now();
    loop {
        if pace.stop.is_some_and(|s| s.load(Ordering::Relaxed)) {
            return Err(Error::Stopped);
        }
        if let Some(rate) = pace.max_keys_per_sec.filter(|&r| r > 0) {
            let due = started + Duration::from_secs_f64(moved as f64 / rate as f64);
            tokio::time::sleep_until(due.into()).await;
        }
        let c = nodes.conn(from).await?;
        let (batch, depth) = (pace.batch.max(1), pace.pipeline.max(1));
        let keys = keys_in_slot(c, slot, (batch * depth) as i64).await?;
        if keys.is_empty() {
            break;
        }
        let keys = if replace {
            keys
        } else {
            // Giving keys back to their owner (S13, S14): a key the owner has too was
            // written there after the migration stopped, so the owner's copy is the newer
            // one. The older copy here is dropped, each by name in the log.
            let mut owner = Conn::dial(&target, dial).await?;
            let mut keep = Vec::new();
            for key in keys {
                let there = owner.call_ok(&[b"EXISTS".as_slice(), &key]).await?;
                if there.as_int() == Some(1) {
                    warn!(slot, key = %String::from_utf8_lossy(&key), from, to, "the owner has a newer copy; dropping the old one");
                    let c = nodes.conn(from).await?;
                    c.call_ok(&["ASKING"]).await?;
                    c.call_ok(&[b"DEL".as_slice(), &key]).await?;
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
        let migrate = |keys: &[bytes::Bytes], timeout: u64| {
            let mut cmd: Vec<Vec<u8>> = vec![
                b"MIGRATE".to_vec(),
                host.as_bytes().to_vec(),
                port.as_bytes().to_vec(),
                Vec::new(),
                b"0".to_vec(),
                timeout.to_string().into_bytes(),
            ];
            if replace {
                cmd.push(b"REPLACE".to_vec());
            }
            if let Some(auth) = &dial.auth {
                cmd.extend(auth.migrate_option());
            }
            cmd.push(b"KEYS".to_vec());
            cmd.extend(keys.iter().map(|k| k.to_vec()));
            cmd
        };
        // Up to `depth` MIGRATEs of `batch` keys in one write. The node giving keys back
        // may only be importing the slot: ASKING before each lets it act.
        let batches: Vec<&[bytes::Bytes]> = keys.chunks(batch).collect();
        let mut commands = Vec::with_capacity(2 * batches.len());
        for keys in &batches {
            commands.push(vec![b"ASKING".to_vec()]);
            commands.push(migrate(keys, MIGRATE_TIMEOUT_MS));
        }
        let limit = Duration::from_millis(MIGRATE_TIMEOUT_MS * batches.len() as u64) + dial.limit;
        let source = c.addr().to_string();
        let replies = c.pipeline(&commands, limit).await?;
        for (keys, reply) in batches.iter().zip(replies.iter().skip(1).step_by(2)) {
            match reply {
                Value::Error(e) if e.starts_with(b"IOERR") => {
                    // Too slow for the timeout: a big key. One key at a time, each with a
                    // timeout sized from its size.
                    for key in keys.iter() {
                        let c = nodes.conn(from).await?;
                        let timeout = migrate_timeout(c, key).await;
                        c.call_ok(&["ASKING"]).await?;
                        c.call_ok(&migrate(std::slice::from_ref(key), timeout))
                            .await?;
                    }
                }
                Value::Error(e) => return Err(ConnError::reply(&source, e).into()),
                _ => {}
            }
        }
        moved += keys.len();
        if let Some(counter) = pace.moved {
            counter.fetch_add(keys.len() as u64, Ordering::Relaxed);
        }
        let c = nodes.conn(to).await?;
        await_replicas(c, slot).await?;
    }
    info!(slot, from, to, moved, "keys moved");
    if moved == 0 {
        // Keys a move cut short had moved reach the replicas too.
        let c = nodes.conn(to).await?;
        await_replicas(c, slot).await?;
    }
    Ok(())
}

/// Valkey's atomic slot migration of `ranges` from `on` to `target`: started unless a job
/// for them is running already (a run cut short), then watched until it ends. The server
/// moves the keys, waits for the target's replicas and hands ownership over itself.
async fn migrate_slots(
    on: &str,
    ranges: &[(u16, u16)],
    target: &str,
    nodes: &mut Nodes<'_>,
    pace: &Pace<'_>,
) -> Result<(), Error> {
    let wanted: Vec<String> = ranges.iter().map(|(a, b)| format!("{a}-{b}")).collect();
    let wanted = wanted.join(" ");
    let c = nodes.conn(on).await?;
    let ours = |jobs: &[Job]| -> Option<Job> {
        (jobs.iter().rev())
            .find(|j| j.export && j.target == target && j.ranges == wanted)
            .cloned()
    };
    let running = ours(&slot_migrations(c).await?).is_some_and(|j| j.active());
    if !running {
        let mut cmd = vec![
            "CLUSTER".to_string(),
            "MIGRATESLOTS".into(),
            "SLOTSRANGE".into(),
        ];
        for (a, b) in ranges {
            cmd.extend([a.to_string(), b.to_string()]);
        }
        cmd.extend(["NODE".into(), target.to_string()]);
        c.call_ok(&cmd).await?;
    }
    loop {
        if pace.stop.is_some_and(|s| s.load(Ordering::Relaxed)) {
            // The server goes on with the job; the next run finds and watches it.
            return Err(Error::Stopped);
        }
        match ours(&slot_migrations(c).await?) {
            Some(job) if job.active() => {}
            Some(job) if job.state == "success" => return Ok(()),
            Some(job) => {
                return Err(Error::NotReady(format!(
                    "the slot migration to {target} ended {}: {}",
                    job.state, job.message
                )))
            }
            None => {
                let why = format!("no slot migration to {target} is listed on {on}");
                return Err(Error::NotReady(why));
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// One entry of `CLUSTER GETSLOTMIGRATIONS`.
#[derive(Clone, Debug, Default)]
pub struct Job {
    /// EXPORT (this node is the source), else IMPORT.
    pub export: bool,
    /// `0-99 200-299`.
    pub ranges: String,
    pub target: String,
    pub state: String,
    pub message: String,
}

impl Job {
    /// Still running: not yet succeeded, failed or cancelled.
    pub fn active(&self) -> bool {
        !matches!(
            self.state.as_str(),
            "success" | "failed" | "cancelled" | "canceled"
        )
    }

    /// The slots it moves.
    pub fn slots(&self) -> impl Iterator<Item = u16> + '_ {
        self.ranges.split_whitespace().flat_map(|r| {
            let (a, b) = r.split_once('-').unwrap_or((r, r));
            let (a, b) = (a.parse().unwrap_or(1), b.parse().unwrap_or(0));
            a..=b
        })
    }
}

/// The node's atomic slot migrations, oldest first (`CLUSTER GETSLOTMIGRATIONS`).
pub async fn slot_migrations(c: &mut Conn) -> Result<Vec<Job>, Error> {
    let reply = c.call_ok(&["CLUSTER", "GETSLOTMIGRATIONS"]).await?;
    Ok(parse_jobs(&reply))
}

fn parse_jobs(reply: &Value) -> Vec<Job> {
    let entries = reply.as_array().unwrap_or_default();
    entries
        .iter()
        .map(|entry| {
            let fields = entry.as_array().unwrap_or_default();
            let mut job = Job::default();
            for pair in fields.chunks(2) {
                let [k, v] = pair else { continue };
                let v = v.as_str().unwrap_or_default().to_string();
                match k.as_str().unwrap_or_default() {
                    "operation" => job.export = v.eq_ignore_ascii_case("EXPORT"),
                    "slot_ranges" => job.ranges = v,
                    "target_node" => job.target = v,
                    "state" => job.state = v,
                    "message" => job.message = v,
                    _ => {}
                }
            }
            job
        })
        .collect()
}

/// MIGRATE's timeout for a batch of ordinary keys.
const MIGRATE_TIMEOUT_MS: u64 = 10_000;

/// MIGRATE's timeout for one key: the usual one, plus a second for every 10 MB it holds
/// (MEMORY USAGE), so a big key is not cut off half sent.
async fn migrate_timeout(c: &mut Conn, key: &[u8]) -> u64 {
    let size = match c.call(&[b"MEMORY".as_slice(), b"USAGE", key]).await {
        Ok(v) => v.as_int().unwrap_or(0).max(0) as u64,
        Err(_) => 0,
    };
    MIGRATE_TIMEOUT_MS + size / 10_000
}

/// Up to `count` key names of `slot` on the node behind `c`.
async fn keys_in_slot(c: &mut Conn, slot: u16, count: i64) -> Result<Vec<bytes::Bytes>, Error> {
    let (slot, count) = (slot.to_string(), count.max(0).to_string());
    let keys = c
        .call_ok(&["CLUSTER", "GETKEYSINSLOT", &slot, &count])
        .await?;
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
async fn copy_keys(from: &str, to: &str, slot: u16, nodes: &mut Nodes<'_>) -> Result<(), Error> {
    let c = nodes.conn(from).await?;
    let info = c.call_ok(&["CLUSTER", "INFO"]).await?;
    let down = info
        .as_str()
        .is_some_and(|t| t.lines().any(|l| l.trim() == "cluster_state:fail"));
    if !down {
        return Err(Error::NotReady(format!(
            "{from} still takes writes (it has not seen it is cut off); the copy waits"
        )));
    }
    let allow = ["CONFIG", "GET", "cluster-allow-reads-when-down"];
    let before = match c.call_ok(&allow).await? {
        Value::Array(v) => v
            .get(1)
            .and_then(|v| v.as_str())
            .unwrap_or("no")
            .to_string(),
        _ => "no".to_string(),
    };
    let set =
        |value: &str| ["CONFIG", "SET", "cluster-allow-reads-when-down", value].map(str::to_string);
    c.call_ok(&set("yes")).await?;
    let copied = copy_each_key(from, to, slot, nodes).await;
    let c = nodes.conn(from).await?;
    c.call_ok(&set(&before)).await?;
    let copied = copied?;
    info!(slot, from, to, copied, "keys copied");
    let c = nodes.conn(to).await?;
    await_replicas(c, slot).await
}

async fn copy_each_key(
    from: &str,
    to: &str,
    slot: u16,
    nodes: &mut Nodes<'_>,
) -> Result<usize, Error> {
    let s = slot.to_string();
    let c = nodes.conn(from).await?;
    let count = c.call_ok(&["CLUSTER", "COUNTKEYSINSLOT", &s]).await?;
    let keys = keys_in_slot(c, slot, count.as_int().unwrap_or(0)).await?;
    let mut copied = 0;
    for key in keys {
        let c = nodes.conn(from).await?;
        let dump = c.call_ok(&[b"DUMP".as_slice(), &key]).await?;
        let Some(payload) = dump.as_bytes().cloned() else {
            continue; // expired meanwhile
        };
        let ttl = c.call_ok(&[b"PTTL".as_slice(), &key]).await?;
        let ttl = match ttl.as_int() {
            Some(-2) => continue,
            Some(ms) if ms > 0 => ms.to_string(),
            _ => "0".to_string(),
        };
        let c = nodes.conn(to).await?;
        let restore = [b"RESTORE".as_slice(), &key, ttl.as_bytes(), &payload];
        match c.call(&restore).await? {
            Value::Error(e) if e.starts_with(b"BUSYKEY") => {
                warn!(slot, key = %String::from_utf8_lossy(&key), from, to, "the winner has its own copy; keeping it");
            }
            Value::Error(e) => return Err(ConnError::reply(c.addr(), &e).into()),
            _ => copied += 1,
        }
    }
    Ok(copied)
}

/// Waits until every online replica of the node behind `c` has what the node holds now
/// (WAIT, for [`REPLICA_WAIT`] at most), so keys moved there survive its failover.
///
/// WAIT counts the writes of the connection that asks, and moved keys come on another
/// (the source's MIGRATE). So this connection first sets and deletes a key of slotguard's
/// own in `slot`, in one transaction that nobody can see half done: its offset is then
/// the node's, and WAIT asks the replicas at once rather than at their next
/// once-a-second report.
async fn await_replicas(c: &mut Conn, slot: u16) -> Result<(), Error> {
    let info = c.call_ok(&["INFO", "replication"]).await?;
    let text = info.as_str().unwrap_or_default();
    let online = text
        .lines()
        .filter(|l| l.starts_with("slave") && l.contains("state=online"))
        .count();
    if online == 0 {
        return Ok(());
    }
    let key = format!(
        "{{{}}}slotguard:wait",
        crate::protocol::slot::slot_tag(slot)
    );
    // ASKING holds for the whole transaction: the slot may be one the node imports. A
    // command refused in it makes EXEC fail, and ends the transaction all the same.
    c.call_ok(&["ASKING"]).await?;
    c.call_ok(&["MULTI"]).await?;
    c.call(&["SET", &key, "1"]).await?;
    c.call(&["DEL", &key]).await?;
    c.call_ok(&["EXEC"]).await?;
    let (n, ms) = (online.to_string(), REPLICA_WAIT.as_millis().to_string());
    let acked = c.call_ok(&["WAIT", &n, &ms]).await?;
    if acked.as_int().unwrap_or(0) < online as i64 {
        warn!(
            slot,
            online,
            ?acked,
            "replicas did not catch up with moved keys in time; going on"
        );
    }
    Ok(())
}
