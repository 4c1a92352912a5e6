//! A chaos soak: random faults on a 3-master, 3-replica cluster while writers go through
//! the proxy. SET/GET writers check their own reads; INCR writers count what the proxy
//! acknowledged, so a write lost (a counter below it) or applied twice (above what was
//! attempted) shows where SET would hide it.
//!
//! `soak_short` runs in CI (about 30 s). The long run is ignored by default:
//!
//! ```text
//! SOAK_SECS=1800 SOAK_ACK=replicated cargo test --release --test soak -- --ignored --nocapture
//! ```
//!
//! Faults: kill -9 of a master (restarted once its replica took over), SIGSTOP of a
//! master (continued once failed over), a manual `CLUSTER FAILOVER`, and a slot moved
//! between masters. The cluster is let heal between two faults.

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{call, keys_in_slots, lost_writes, tag_on, writers, Harness};
use slotguard::config::Ack;
use slotguard::localcluster::Options;
use slotguard::protocol::Value;

/// A small deterministic generator (xorshift), seeded per run and printed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

/// What one INCR writer saw.
#[derive(Default, Debug)]
struct Counted {
    key: String,
    acked: i64,
    /// Answered that it may or may not have run (not sent twice).
    in_doubt: i64,
    errors: Vec<String>,
}

/// Increments its own counter until `stop`.
async fn counter(url: String, key: String, stop: Arc<AtomicBool>) -> Counted {
    let client = redis::Client::open(url).unwrap();
    let config = redis::AsyncConnectionConfig::new().set_response_timeout(Duration::from_secs(30));
    let mut c = client
        .get_multiplexed_async_connection_with_config(&config)
        .await
        .unwrap();
    let mut seen = Counted {
        key: key.clone(),
        ..Counted::default()
    };
    while !stop.load(Ordering::Relaxed) {
        match redis::cmd("INCR")
            .arg(&key)
            .query_async::<i64>(&mut c)
            .await
        {
            Ok(_) => seen.acked += 1,
            Err(e) if in_doubt(&e.to_string()) => seen.in_doubt += 1,
            Err(e) => {
                seen.errors.push(format!("INCR {key}: {e}"));
                // A proxy gone errs at once: yield, so that a failure does not hang.
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    }
    seen
}

/// The proxy's answer to a write it cannot know ran, and will not send twice.
fn in_doubt(error: &str) -> bool {
    error.contains("may or may not have been applied")
        || error.contains("not confirmed by its replicas")
}

/// Each master's node index, with its replica's, as the nodes now say (`ROLE`).
async fn shards(h: &Harness) -> Vec<(usize, Option<usize>)> {
    let mut masters = Vec::new();
    let mut replicas = Vec::new(); // (replica index, its master's port)
    for (i, node) in h.cluster.nodes.iter().enumerate() {
        if node.pid().is_none() {
            continue;
        }
        let Value::Array(role) = call(&node.addr(), &["ROLE"]).await else {
            continue;
        };
        match role.first().and_then(Value::as_str) {
            Some("master") => masters.push(i),
            Some("slave") => {
                if let Some(port) = role.get(2).and_then(Value::as_int) {
                    replicas.push((i, port));
                }
            }
            _ => {}
        }
    }
    masters
        .into_iter()
        .map(|m| {
            let port = h.cluster.nodes[m]
                .addr()
                .rsplit_once(':')
                .unwrap()
                .1
                .to_string();
            let replica = replicas
                .iter()
                .find(|(_, p)| p.to_string() == port)
                .map(|(r, _)| *r);
            (m, replica)
        })
        .collect()
}

/// Waits until node `i` says it is a master.
async fn until_master(h: &Harness, i: usize) {
    let addr = h.cluster.nodes[i].addr();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let role =
            slotguard::client::query(&addr, &["ROLE"], &h.cluster.dial(Duration::from_secs(1)))
                .await;
        if let Ok(Value::Array(role)) = role {
            if role.first().and_then(Value::as_str) == Some("master") {
                return;
            }
        }
        assert!(Instant::now() < deadline, "node {i} never became a master");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Moves one slot of master `from` to master `to` with the migration protocol.
async fn migrate(h: &Harness, rng: &mut Rng, from: usize, to: usize) -> String {
    let (a, b) = (h.cluster.nodes[from].addr(), h.cluster.nodes[to].addr());
    let Value::Array(ranges) = call(&a, &["CLUSTER", "SLOTS"]).await else {
        return "no CLUSTER SLOTS".into();
    };
    let port = a.rsplit_once(':').unwrap().1.parse::<i64>().unwrap();
    let owned: Vec<(i64, i64)> = ranges
        .iter()
        .filter_map(|r| {
            let r = r.as_array()?;
            let owner = r.get(2)?.as_array()?;
            (owner.get(1)?.as_int()? == port).then(|| Some((r[0].as_int()?, r[1].as_int()?)))?
        })
        .collect();
    if owned.is_empty() {
        return format!("{a} owns no slot");
    }
    let (lo, hi) = owned[rng.below(owned.len())];
    let slot = (lo + rng.below((hi - lo + 1) as usize) as i64).to_string();
    let id = |addr: &str| {
        let addr = addr.to_string();
        async move {
            call(&addr, &["CLUSTER", "MYID"])
                .await
                .as_str()
                .unwrap()
                .to_string()
        }
    };
    let (source, target) = (id(&a).await, id(&b).await);
    call(&b, &["CLUSTER", "SETSLOT", &slot, "IMPORTING", &source]).await;
    call(&a, &["CLUSTER", "SETSLOT", &slot, "MIGRATING", &target]).await;
    let (host, port) = b.rsplit_once(':').unwrap();
    loop {
        let Value::Array(keys) = call(&a, &["CLUSTER", "GETKEYSINSLOT", &slot, "100"]).await else {
            break;
        };
        if keys.is_empty() {
            break;
        }
        let mut args = vec!["MIGRATE", host, port, "", "0", "5000", "KEYS"];
        let keys: Vec<String> = keys
            .iter()
            .filter_map(|k| k.as_str().map(String::from))
            .collect();
        args.extend(keys.iter().map(String::as_str));
        call(&a, &args).await;
    }
    call(&b, &["CLUSTER", "SETSLOT", &slot, "NODE", &target]).await;
    call(&a, &["CLUSTER", "SETSLOT", &slot, "NODE", &target]).await;
    for (m, _) in shards(h).await {
        let addr = h.cluster.nodes[m].addr();
        if addr != a && addr != b {
            call(&addr, &["CLUSTER", "SETSLOT", &slot, "NODE", &target]).await;
        }
    }
    format!("slot {slot} moved from {a} to {b}")
}

/// Waits until every replica has synced with its master (`ROLE` says `connected`): a
/// replica still loading its first copy cannot take over, and a fault then would take the
/// shard down for good, which is not what the soak is about.
async fn until_synced(h: &Harness) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let mut synced = true;
        for node in h.cluster.nodes.iter().filter(|n| n.pid().is_some()) {
            let role = slotguard::client::query(
                &node.addr(),
                &["ROLE"],
                &h.cluster.dial(Duration::from_secs(1)),
            )
            .await;
            if let Ok(Value::Array(role)) = role {
                if role.first().and_then(Value::as_str) == Some("slave") {
                    synced &= role.get(3).and_then(Value::as_str) == Some("connected");
                }
            }
        }
        if synced {
            return;
        }
        assert!(Instant::now() < deadline, "replicas did not sync");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Injects one random fault and waits for the cluster to heal from it.
async fn fault(h: &mut Harness, rng: &mut Rng) -> String {
    until_synced(h).await;
    let shards = shards(h).await;
    let (m, replica) = shards[rng.below(shards.len())];
    let addr = h.cluster.nodes[m].addr();
    let what = match (rng.below(4), replica) {
        (0, Some(r)) => {
            h.cluster.nodes[m].kill();
            until_master(h, r).await;
            h.cluster.restart(m).await.unwrap();
            format!("kill -9 of master {addr}")
        }
        (1, Some(r)) => {
            h.cluster.nodes[m].signal("STOP").unwrap();
            until_master(h, r).await;
            h.cluster.nodes[m].signal("CONT").unwrap();
            format!("SIGSTOP of master {addr}")
        }
        (2, Some(r)) => {
            call(&h.cluster.nodes[r].addr(), &["CLUSTER", "FAILOVER"]).await;
            until_master(h, r).await;
            format!("CLUSTER FAILOVER of master {addr}")
        }
        _ => {
            let others: Vec<usize> = shards.iter().map(|s| s.0).filter(|&o| o != m).collect();
            let to = others[rng.below(others.len())];
            migrate(h, rng, m, to).await
        }
    };
    h.cluster
        .wait_healthy(Duration::from_secs(60))
        .await
        .unwrap_or_else(|e| panic!("the cluster did not heal after {what}: {e:?}"));
    what
}

/// Runs the soak for `length` and asserts what it must: the short run every guarantee
/// the long one does.
async fn soak(length: Duration, ack: Ack) {
    let options = Options {
        masters: 3,
        replicas_per_master: 1,
        node_timeout_ms: 1000,
        ..Options::default()
    };
    let mut h = Harness::start_with(options, |c| c.ack = ack).await;
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
        | 1;
    let mut rng = Rng(seed);
    let stop = Arc::new(AtomicBool::new(false));
    let keys = keys_in_slots("soak", 0..=16383, 600);
    let sets = tokio::spawn(writers(h.url(), 6, keys, stop.clone()));
    let counters: Vec<_> = (0..3)
        .map(|i| {
            tokio::spawn(counter(
                h.url(),
                format!("{}counter", tag_on(i)),
                stop.clone(),
            ))
        })
        .collect();
    let started = Instant::now();
    let mut faults = Vec::new();
    tokio::time::sleep(Duration::from_secs(2)).await;
    while started.elapsed() < length {
        let what = fault(&mut h, &mut rng).await;
        eprintln!("soak {:>6.1}s: {what}", started.elapsed().as_secs_f64());
        faults.push(what);
        tokio::time::sleep(Duration::from_millis(500 + rng.below(2000) as u64)).await;
    }
    stop.store(true, Ordering::Relaxed);
    let report = sets.await.unwrap();
    let mut c = h.client().await;
    let mut lost = Vec::new();
    let mut doubled = Vec::new();
    let (mut increments, mut in_doubt, mut errors) = (0, 0, Vec::new());
    for task in counters {
        let seen = task.await.unwrap();
        let n: i64 = redis::cmd("GET")
            .arg(&seen.key)
            .query_async::<Option<i64>>(&mut c)
            .await
            .unwrap()
            .unwrap_or(0);
        if n < seen.acked {
            lost.push(format!("{}: {n} < {} acknowledged", seen.key, seen.acked));
        }
        if n > seen.acked + seen.in_doubt {
            doubled.push(format!(
                "{}: {n} > {} acknowledged + {} in doubt",
                seen.key, seen.acked, seen.in_doubt
            ));
        }
        increments += seen.acked;
        in_doubt += seen.in_doubt;
        errors.extend(seen.errors);
    }
    let lost_sets = lost_writes(&mut c, &report.acked).await;
    eprintln!(
        "REPORT | soak {:.0}s ack={ack:?} seed={seed} | faults {} | SET/GET {} | INCR {} | in doubt {} | lost INCR {} | doubled INCR {} | lost SET {} | client errors {} | stale {} | longest stall {:.2}s",
        started.elapsed().as_secs_f64(),
        faults.len(),
        report.writes,
        increments,
        in_doubt,
        lost.len(),
        doubled.len(),
        lost_sets.len(),
        report.errors.len() + errors.len(),
        report.stale.len(),
        report.longest.as_secs_f64(),
    );
    for line in report
        .errors
        .iter()
        .chain(&errors)
        .chain(&report.stale)
        .chain(&lost)
        .take(20)
    {
        eprintln!("REPORT | {line}");
    }
    assert!(doubled.is_empty(), "applied twice: {doubled:?}");
    assert!(
        report.errors.is_empty() && errors.is_empty(),
        "client errors: {:?} {:?}",
        &report.errors[..report.errors.len().min(5)],
        &errors[..errors.len().min(5)]
    );
    // With `ack = "master"` a master that dies takes the writes its replica had not
    // received: lost SETs and INCRs, and reads of older values, are reported, not failed
    // on. Nothing is ever applied twice, in either mode.
    if ack == Ack::Replicated {
        assert!(lost_sets.is_empty(), "lost SETs: {lost_sets:?}");
        // Each INCR travels as a script that runs it once: sent again after a break, it is
        // answered, never left in doubt.
        assert_eq!(in_doubt, 0, "INCRs answered in doubt");
        assert!(report.stale.is_empty(), "stale reads: {:?}", report.stale);
        assert!(lost.is_empty(), "lost acknowledged INCRs: {lost:?}");
    }
    h.cluster_check().unwrap();
}

/// The short run CI does: a few faults in about 30 s.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn soak_short() {
    soak(Duration::from_secs(25), Ack::Replicated).await;
}

/// The long run: `SOAK_SECS` (default 1800) with `SOAK_ACK` (`replicated` or `master`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore]
async fn soak_long() {
    let secs = std::env::var("SOAK_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1800);
    let ack = match std::env::var("SOAK_ACK").as_deref() {
        Ok("master") => Ack::Master,
        _ => Ack::Replicated,
    };
    soak(Duration::from_secs(secs), ack).await;
}
