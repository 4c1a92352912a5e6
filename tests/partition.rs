//! S11 with a real network partition. Every node runs in a network namespace of its own,
//! on a bridge this process reaches; a link between two nodes is cut with a blackhole
//! route on each side.
//!
//! The seed's second case: slot x migrates from A to B, every key moves, and B finalizes
//! (`SETSLOT x NODE B`, which bumps B's epoch). Before anyone hears of it, B is cut off
//! from every other node, and A dies. A's replica A' is elected by masters that never
//! heard B's claim, and claims x with a higher epoch and none of its keys. When the
//! partition heals, Redis gives x to the higher epoch and B deletes every key of x as
//! dirty: every write to x that was ever acknowledged is gone.
//!
//! slotguard reaches both sides. It sees B claim x with the keys while A' claims it
//! without them, copies the keys from B to A' while they are apart (B refuses reads while
//! its side is down: the copy allows them for its length), and holds the slot until the
//! partition heals: which side then keeps it is decided by config epochs and the bumps
//! that settle their collisions, and either has every key. Nothing is lost, and no
//! client sees an error.
//!
//! Five masters, so that A' can win an election without B: three of the five (C, D, E)
//! vote. B's replica, on the majority's side, takes over B's other slots. On Valkey, whose
//! `SETSLOT NODE` waits for the node's replicas, B's replica is cut off with B instead
//! (else B could not finalize), A' still migrates the slot to B when it is elected
//! (Valkey replicates SETSLOT), and the cluster does not require full coverage (B's other
//! slots have no owner on the majority's side).

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{assert_unharmed, call, node_id, wait_decision, writers, Harness};
use slotguard::cluster::nodes;
use slotguard::config::Config;
use slotguard::localcluster::{wait_for, LocalCluster, Options};
use slotguard::protocol::key_slot;
use slotguard::routing::decision::{Case, Decision, State};

const MASTERS: usize = 5;
const A: usize = 0;
const B: usize = 1;

/// Runs S11 with writers through the proxy. With `watching`, the proxy runs throughout;
/// without, it starts only once the partition is there, with an empty journal.
async fn s11(watching: bool) {
    slotguard::logging::init("slotguard=info", false);
    let mut cluster = LocalCluster::start(Options {
        masters: MASTERS,
        replicas_per_master: 1,
        node_timeout_ms: 1000,
        namespaces: true,
        ..Options::default()
    })
    .await
    .expect("a cluster in network namespaces starts");
    let config = Config {
        listen: "127.0.0.1:0".parse().unwrap(),
        seeds: cluster.addrs(),
        repair_grace: Duration::from_secs(1),
        hold_timeout: Duration::from_secs(60),
        // B's replica is barred from failing over below, by hand: the proxy must not
        // lift what the operator set (`promote = "synced"` owns the setting).
        promote: slotguard::config::Promote::Any,
        ..Config::default()
    };
    let (a, b) = (cluster.nodes[A].addr(), cluster.nodes[B].addr());
    let tag = (0..)
        .map(|i| format!("{{p{i}}}"))
        .find(|t| key_slot(t.as_bytes()) < 3000)
        .unwrap();
    let slot = key_slot(tag.as_bytes());
    let keys: Vec<String> = (0..100).map(|i| format!("{tag}:{i}")).collect();
    for k in &keys {
        call(&a, &["SET", k, "initial"]).await;
    }
    let mut proxy = match watching {
        true => Some(common::start_proxy(config.clone()).await),
        false => None,
    };

    // The migration, every key moved; A's replica has the deletions.
    let s = slot.to_string();
    let (_, target) = common::open_migration(&a, &b, slot, &keys).await;
    call(&a, &["WAIT", "1", "5000"]).await;

    let written: Vec<String> = keys.iter().step_by(2).cloned().collect();
    let stop = Arc::new(AtomicBool::new(false));
    let writers_through = |p: &slotguard::server::Running| {
        let url = format!("redis://{}/", p.addr);
        tokio::spawn(writers(url, 4, written.clone(), stop.clone()))
    };
    let mut load = None;
    if let Some(p) = &proxy {
        let seen = p.proxy.clone();
        wait_for(Duration::from_secs(10), || {
            let seen = seen
                .routing
                .status
                .load()
                .decisions
                .iter()
                .any(|d| d.slot == slot);
            async move { seen }
        })
        .await
        .expect("the proxy sees the migration");
        load = Some(writers_through(p));
        tokio::time::sleep(Duration::from_millis(300)).await;
    }

    // B is cut off from every node, then finalizes; the others raise their epoch (as any
    // failover on their side would), and A dies: A' is elected without hearing of B. B's
    // replica waits until then: were it promoted first, holding the moved keys, the
    // proxy would give it the slot (S10) before A' could claim it, and S11 would not
    // happen at all.
    //
    // Valkey's `SETSLOT NODE` waits for the node's replicas (NOREPLICAS when none
    // answers), so there B's replica is cut off with B, on B's side: B can finalize, and
    // the majority has no heir for B's other slots.
    let valkey = slotguard::localcluster::is_valkey();
    let b_replica = cluster.nodes[B + MASTERS].addr();
    let barred = |no: &'static str| ["CONFIG", "SET", "cluster-replica-no-failover", no];
    call(&b_replica, &barred("yes")).await;
    let at = Instant::now();
    let total = cluster.nodes.len();
    let minority: &[usize] = if valkey { &[B, B + MASTERS] } else { &[B] };
    if valkey {
        // B's other slots have no owner on the majority's side: a cluster that requires
        // full coverage would refuse every write there, A' and the copy to it included.
        for node in &cluster.nodes {
            let relaxed = ["CONFIG", "SET", "cluster-require-full-coverage", "no"];
            call(&node.addr(), &relaxed).await;
        }
    }
    let cuts: Vec<(usize, usize)> = (minority.iter())
        .flat_map(|&m| {
            (0..total)
                .filter(|i| !minority.contains(i))
                .map(move |o| (m, o))
        })
        .collect();
    for &(m, other) in &cuts {
        cluster.cut(m, other).unwrap();
    }
    call(&b, &["CLUSTER", "SETSLOT", &s, "NODE", &target]).await;
    call(&cluster.nodes[2].addr(), &["CLUSTER", "BUMPEPOCH"]).await;
    cluster.nodes[A].kill();
    cluster.wait_promoted(A).await.unwrap();
    let heir = cluster.nodes[A + MASTERS].addr();
    let c_addr = cluster.nodes[2].addr();
    wait_for(Duration::from_secs(20), || {
        let c_addr = c_addr.clone();
        let target = target.clone();
        async move {
            let nodes = call(&c_addr, &["CLUSTER", "NODES"]).await;
            let text = nodes.as_str().unwrap_or_default().to_string();
            text.lines()
                .any(|l| l.starts_with(&target) && l.contains(",fail") && !l.contains("fail?"))
        }
    })
    .await
    .expect("the majority fails B");
    assert_eq!(
        owner_in_view_of(&heir, slot).await.as_deref(),
        Some(node_id(&heir).await.as_str()),
        "A' claims the slot: S11 is set up"
    );
    // B's replica, on the majority's side too, takes B's other slots.
    call(&b_replica, &barred("no")).await;
    if !valkey {
        cluster.wait_promoted(B).await.unwrap();
    }

    let proxy = match proxy.take() {
        Some(p) => p,
        None => {
            let p = common::start_proxy(config).await;
            load = Some(writers_through(&p));
            p
        }
    };
    let mut h = Harness { cluster, proxy };
    let partitioned = |d: &Decision| {
        matches!(
            &d.state,
            State::Broken {
                case: Case::Partitioned,
                ..
            }
        )
    };
    let what = "the proxy sees S11";
    wait_decision(&h, slot, Duration::from_secs(20), partitioned, what).await;
    // While they are apart, the keys are copied to A', and the slot is held.
    let all = keys.len() as i64;
    wait_for(Duration::from_secs(20), || {
        let (heir, s) = (heir.clone(), s.clone());
        async move {
            let n = call(&heir, &["CLUSTER", "COUNTKEYSINSLOT", &s]).await;
            n.as_int() == Some(all)
        }
    })
    .await
    .expect("A' gets every key of the slot");
    tokio::time::sleep(Duration::from_secs(1)).await;

    // The partition heals. Which side keeps the slot is Redis's choice (config epochs,
    // and the bumps that settle their collisions); both have every key.
    for &(m, other) in &cuts {
        h.cluster.mend(m, other).unwrap();
    }
    let (clean_at, _) = common::settled(&h, slot, None, Duration::from_secs(60)).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    stop.store(true, Ordering::Relaxed);
    let report = load.unwrap().await.unwrap();
    let name = match watching {
        true => "S11 watched",
        false => "S11 unseen, proxy started after",
    };
    report.print(name, at, clean_at);
    assert_unharmed(&h, &report, 10, false).await;
    let mut c = h.client().await;
    for k in keys.iter().skip(1).step_by(2) {
        let v: Option<String> = redis::cmd("GET").arg(k).query_async(&mut c).await.unwrap();
        assert_eq!(v.as_deref(), Some("initial"), "{k} kept its value");
    }
    h.cluster.restart(A).await.unwrap();
    h.cluster
        .wait_healthy(Duration::from_secs(30))
        .await
        .unwrap();
    h.cluster_check().unwrap();
}

/// The master that node `addr` binds the slot to.
async fn owner_in_view_of(addr: &str, slot: u16) -> Option<String> {
    let text = call(addr, &["CLUSTER", "NODES"]).await;
    let lines = nodes::parse(text.as_str().unwrap_or_default(), "127.0.0.1").ok()?;
    lines
        .into_iter()
        .find(|l| l.master && l.owns(slot))
        .map(|l| l.id)
}

/// Writers run through the cut. B acknowledges writes until it notices it lost the
/// majority, which may be after the majority flags it: the copy waits for B to refuse
/// writes, or a write it acknowledged after the copy would be lost if A' wins.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s11_watched_the_cut_off_target_keeps_the_slot_and_every_key() {
    s11(true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s11_unseen_a_proxy_started_during_the_partition_keeps_every_key() {
    s11(false).await;
}
