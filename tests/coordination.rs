//! Several proxies in front of one cluster, one authority, through a real etcd (Debian's
//! `etcd-server`): exactly one proxy repairs, a new authority finishes a repair cut short
//! by the old one's death from the shared journal, a migration seen by one proxy is
//! repaired by another, and while etcd is down nothing is repaired and nothing else is
//! harmed.

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::etcd::Etcd;
use common::{make_certs, node_id, writers, ProxyProcess, Report};
use slotguard::localcluster::{wait_for, LocalCluster, Options};
use slotguard::protocol::key_slot;

/// The journal the proxies share, as the etcd at `url` holds it.
async fn shared_journal(url: String) -> String {
    let Ok(mut c) = etcd_client::Client::connect([url], None).await else {
        return String::new();
    };
    let Ok(got) = c.get(format!("{PREFIX}journal"), None).await else {
        return String::new();
    };
    got.kvs()
        .first()
        .map(|kv| String::from_utf8_lossy(kv.value()).into_owned())
        .unwrap_or_default()
}

/// The key prefix of the proxies of these tests.
const PREFIX: &str = "/t/";

/// The configuration of a proxy of the group: etcd, a short lease, repairs after 1 s.
fn member(etcd: &Etcd, name: &str) -> String {
    format!(
        "[coordination]\netcd = [\"{}\"]\nprefix = \"{PREFIX}\"\nname = \"{name}\"\nlease_ttl = \"2s\"\n[repair]\ngrace = \"1s\"\n",
        etcd.url()
    )
}

/// A client's URL of a proxy.
fn url_of(proxy: &ProxyProcess) -> String {
    format!("redis://127.0.0.1:{}/", proxy.port)
}

/// A metric's value on a proxy (0 when absent).
async fn metric(proxy: &ProxyProcess, name: &str) -> f64 {
    let text = proxy.metrics().await;
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
        .unwrap_or(0.0)
}

/// Waits until exactly one of `proxies` is the authority and every one names it; returns
/// its index.
async fn one_authority(proxies: &[ProxyProcess]) -> usize {
    let found = std::sync::Mutex::new(None);
    wait_for(Duration::from_secs(20), || async {
        let mut holders = Vec::new();
        let mut named = std::collections::BTreeSet::new();
        for (i, p) in proxies.iter().enumerate() {
            if metric(p, "slotguard_authority").await == 1.0 {
                holders.push(i);
            }
            let status: serde_json::Value =
                serde_json::from_str(body(&p.admin_get("/status").await)).unwrap_or_default();
            named.insert(status["authority"]["holder"].as_str().map(str::to_string));
        }
        let one = holders.len() == 1 && named.len() == 1 && !named.contains(&None);
        if one {
            *found.lock().unwrap() = Some(holders[0]);
        }
        one
    })
    .await
    .expect("one proxy holds the authority, and every proxy names it");
    found.into_inner().unwrap().unwrap()
}

/// The body of an HTTP/1.0 response.
fn body(response: &str) -> &str {
    response.split_once("\r\n\r\n").map_or("", |(_, b)| b)
}

/// A 3+3 cluster, node timeout 1 s, as the fault tests run.
async fn cluster() -> LocalCluster {
    LocalCluster::start(Options {
        masters: 3,
        replicas_per_master: 1,
        node_timeout_ms: 1000,
        ..Options::default()
    })
    .await
    .expect("cluster starts")
}

/// Starts the proxies named, each of the group through `etcd`, seeded with a node that
/// runs.
async fn proxies(cluster: &LocalCluster, etcd: &Etcd, names: &[&str]) -> Vec<ProxyProcess> {
    let seed = cluster
        .nodes
        .iter()
        .position(|n| n.pid().is_some())
        .unwrap();
    let mut out = Vec::new();
    for name in names {
        out.push(ProxyProcess::start_seeded(cluster, seed, &member(etcd, name)).await);
    }
    out
}

/// The index in `cluster.nodes` of the node with id `id`.
async fn index_of(cluster: &LocalCluster, id: &str) -> usize {
    for (i, n) in cluster.nodes.iter().enumerate() {
        if n.pid().is_some() && node_id(&n.addr()).await == id {
            return i;
        }
    }
    panic!("no running node {id}");
}

/// The replicas of the master at node `i` (Valkey may have moved one to a master left
/// without any).
async fn replicas_of(cluster: &LocalCluster, i: usize) -> Vec<usize> {
    let master = node_id(&cluster.nodes[i].addr()).await;
    let v = common::call(&cluster.nodes[i].addr(), &["CLUSTER", "REPLICAS", &master]).await;
    let slotguard::protocol::Value::Array(lines) = v else {
        panic!("CLUSTER REPLICAS: {v:?}");
    };
    let mut out = Vec::new();
    for line in lines.iter().filter_map(|l| l.as_str()) {
        let id = line.split(' ').next().unwrap().to_string();
        out.push(index_of(cluster, &id).await);
    }
    out
}

/// The indices in `cluster.nodes` of the running masters that own slots, in order.
async fn masters(cluster: &LocalCluster) -> Vec<usize> {
    let mut out = Vec::new();
    for (i, n) in cluster.nodes.iter().enumerate() {
        if n.pid().is_none() {
            continue;
        }
        let v = common::call(&n.addr(), &["CLUSTER", "NODES"]).await;
        let lines = slotguard::cluster::nodes::parse(v.as_str().unwrap(), "127.0.0.1").unwrap();
        if lines
            .iter()
            .any(|l| l.myself && l.master && !l.slots.is_empty())
        {
            out.push(i);
        }
    }
    assert_eq!(out.len(), 3, "three masters with slots");
    out
}

/// Waits until node `i` answers ROLE as a master.
async fn wait_master(cluster: &LocalCluster, i: usize) {
    let promoted = wait_heir(cluster, &[i]).await;
    assert_eq!(promoted, i);
}

/// Waits until one of the replicas `candidates` answers ROLE as a master: the one the
/// cluster promoted. A master may have two replicas (a killed master started again joins
/// its heir's shard), and either may win the election.
async fn wait_heir(cluster: &LocalCluster, candidates: &[usize]) -> usize {
    let promoted = std::sync::Mutex::new(None);
    wait_for(Duration::from_secs(30), || async {
        for &i in candidates {
            let addr = cluster.nodes[i].addr();
            let Ok(mut c) = slotguard::client::Conn::connect(&addr, Duration::from_secs(1)).await
            else {
                continue;
            };
            let role = tokio::time::timeout(Duration::from_secs(2), c.call(&["ROLE"])).await;
            if matches!(role, Ok(Ok(slotguard::protocol::Value::Array(r))) if r.first().and_then(|v| v.as_str()) == Some("master"))
            {
                *promoted.lock().unwrap() = Some(i);
                return true;
            }
        }
        false
    })
    .await
    .expect("a replica is promoted");
    promoted.into_inner().unwrap().expect("set with the wait")
}

/// `n` keys of a slot that master `i` owns (and that no earlier round used), set to
/// "initial" on it directly.
async fn keys_on(cluster: &LocalCluster, i: usize, round: usize, n: usize) -> (u16, Vec<String>) {
    let addr = cluster.nodes[i].addr();
    let v = common::call(&addr, &["CLUSTER", "NODES"]).await;
    let lines = slotguard::cluster::nodes::parse(v.as_str().unwrap(), "127.0.0.1").unwrap();
    let me = lines.iter().find(|l| l.myself).unwrap();
    assert!(!me.slots.is_empty(), "node {i} is not a master with slots");
    let tag = (0..)
        .map(|t| format!("r{round}x{t}"))
        .find(|t| me.owns(key_slot(t.as_bytes())))
        .unwrap();
    let keys: Vec<String> = (0..n).map(|k| format!("{{{tag}}}:{k}")).collect();
    let mut c = common::connect(&format!("redis://{addr}/")).await;
    for chunk in keys.chunks(1000) {
        let mut mset = redis::cmd("MSET");
        for k in chunk {
            mset.arg(k).arg("initial");
        }
        let () = mset.query_async(&mut c).await.unwrap();
    }
    (key_slot(tag.as_bytes()), keys)
}

/// Writers through every proxy, each proxy's on keys of its own.
fn writers_through(
    proxies: &[ProxyProcess],
    keys: &[String],
    stop: &Arc<AtomicBool>,
) -> Vec<tokio::task::JoinHandle<Report>> {
    let n = proxies.len();
    proxies
        .iter()
        .enumerate()
        .map(|(i, p)| {
            let mine: Vec<String> = keys.iter().skip(i).step_by(n).cloned().collect();
            tokio::spawn(writers(url_of(p), 2, mine, stop.clone()))
        })
        .collect()
}

/// What the writers saw, all proxies together; asserts that every proxy's writers ran,
/// and none saw an error or a stale read, and that every acknowledged write reads back
/// through `reader`. Returns the writes.
async fn unharmed(tasks: Vec<tokio::task::JoinHandle<Report>>, reader: &ProxyProcess) -> u64 {
    let mut writes = 0;
    let mut c = common::connect(&url_of(reader)).await;
    for task in tasks {
        let report = task.await.unwrap();
        assert!(report.writes > 0, "every proxy's writers ran");
        assert!(
            report.errors.is_empty(),
            "client errors: {:?}",
            report.errors
        );
        assert!(report.stale.is_empty(), "stale reads: {:?}", report.stale);
        let lost = common::lost_writes(&mut c, &report.acked).await;
        assert!(lost.is_empty(), "lost writes: {lost:?}");
        writes += report.writes;
    }
    writes
}

/// Keys nobody wrote kept their value.
async fn untouched(reader: &ProxyProcess, keys: &[String], written: usize) {
    let mut c = common::connect(&url_of(reader)).await;
    for k in &keys[written..] {
        let v: Option<String> = redis::cmd("GET").arg(k).query_async(&mut c).await.unwrap();
        assert_eq!(v.as_deref(), Some("initial"), "{k}");
    }
}

/// Brings killed nodes back and checks the cluster is whole and clean.
async fn restore(cluster: &mut LocalCluster, killed: &[usize]) {
    for &i in killed {
        cluster.restart(i).await.unwrap();
    }
    cluster.wait_healthy(Duration::from_secs(30)).await.unwrap();
    common::assert_clean(cluster).await;
}

/// Opens a migration of `slot` from node `a` to node `b`, moving `moved` of `keys`, and
/// waits until the shared journal has it.
async fn migrate_and_remember(
    cluster: &LocalCluster,
    etcd: &Etcd,
    (a, b): (usize, usize),
    slot: u16,
    keys: &[String],
    moved: usize,
) {
    let (a, b) = (cluster.nodes[a].addr(), cluster.nodes[b].addr());
    let (_, target) = common::open_migration(&a, &b, slot, &keys[..moved]).await;
    let url = etcd.url();
    let remembered = || {
        let (url, target) = (url.clone(), target.clone());
        async move {
            let journal: serde_json::Value =
                serde_json::from_str(&shared_journal(url).await).unwrap_or_default();
            journal["migrations"][slot.to_string()]["target"] == target.as_str()
        }
    };
    wait_for(Duration::from_secs(20), remembered)
        .await
        .expect("the shared journal remembers the migration");
}

/// A fault of the catalogue, on a migration from one master to another.
#[derive(Clone, Copy, Debug)]
enum Fault {
    /// S4: kill -9 of the source; its replica is promoted.
    KillSource,
    /// S2: kill -9 of the target.
    KillTarget,
    /// S5: CLUSTER FAILOVER of the source's replica.
    FailOverSource,
    /// S3: CLUSTER FAILOVER of the target's replica.
    FailOverTarget,
}

/// One fault under writers through every proxy: a slot of master `a` migrating to master
/// `b` with half its keys moved, the fault, and the slot settled where the catalogue
/// says. Returns the node killed, if any.
async fn round(
    cluster: &mut LocalCluster,
    etcd: &Etcd,
    proxies: &[ProxyProcess],
    (a, b): (usize, usize),
    fault: Fault,
    number: usize,
) -> Option<usize> {
    let (slot, keys) = keys_on(cluster, a, number, 120).await;
    migrate_and_remember(cluster, etcd, (a, b), slot, &keys, 60).await;
    let (victim, kill) = match fault {
        Fault::KillSource => (a, true),
        Fault::KillTarget => (b, true),
        Fault::FailOverSource => (a, false),
        Fault::FailOverTarget => (b, false),
    };
    let replicas = replicas_of(cluster, victim).await;
    // Writers write the first half of the keys: the rest show whether keys nobody wrote
    // kept their value.
    let written = &keys[..keys.len() / 2];
    let stop = Arc::new(AtomicBool::new(false));
    let load = writers_through(proxies, written, &stop);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let heir = if kill {
        cluster.nodes[victim].kill();
        wait_heir(cluster, &replicas).await
    } else {
        let heir = replicas[0];
        common::call(&cluster.nodes[heir].addr(), &["CLUSTER", "FAILOVER"]).await;
        wait_master(cluster, heir).await;
        heir
    };
    // On Valkey a migration whose target died is undone onto the source (the old target,
    // importing in its nodes.conf, could take the slot back: docs/VALKEY.md).
    let valkey = slotguard::localcluster::is_valkey();
    let owner = match fault {
        Fault::KillSource | Fault::FailOverSource => node_id(&cluster.nodes[b].addr()).await,
        Fault::KillTarget if valkey => node_id(&cluster.nodes[a].addr()).await,
        Fault::KillTarget | Fault::FailOverTarget => node_id(&cluster.nodes[heir].addr()).await,
    };
    common::settled_in(cluster, slot, Some(&owner), Duration::from_secs(30)).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, Ordering::Relaxed);
    let writes = unharmed(load, &proxies[number % proxies.len()]).await;
    untouched(&proxies[0], &keys, written.len()).await;
    eprintln!(
        "REPORT | {fault:?} through {} proxies | writes {writes} | client errors 0 | stale reads 0",
        proxies.len()
    );
    kill.then_some(victim)
}

/// Three proxies on one cluster, writers through all three while S4, S2, S3 and S5 happen
/// one after the other: exactly one proxy, the authority, sends repair steps; no writer
/// sees an error, a stale read or a lost write; the cluster ends clean.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_proxies_one_repairer_through_the_catalogue() {
    let mut cluster = cluster().await;
    let Some(etcd) = Etcd::start(&cluster.dir).await else {
        return;
    };
    let proxies = proxies(&cluster, &etcd, &["p1", "p2", "p3"]).await;
    let authority = one_authority(&proxies).await;
    // Each fault moves a master role (and Valkey may migrate a replica to a master left
    // without one), so each round picks its two ends from the masters as they are then.
    let faults = [
        Fault::KillSource,
        Fault::KillTarget,
        Fault::FailOverTarget,
        Fault::FailOverSource,
    ];
    for (number, fault) in faults.into_iter().enumerate() {
        let masters = masters(&cluster).await;
        let mut ends = None;
        for k in 0..masters.len() {
            let (a, b) = (masters[(number + k) % 3], masters[(number + k + 1) % 3]);
            let victim = match fault {
                Fault::KillSource | Fault::FailOverSource => a,
                Fault::KillTarget | Fault::FailOverTarget => b,
            };
            if !replicas_of(&cluster, victim).await.is_empty() {
                ends = Some((a, b));
                break;
            }
        }
        let ends = ends.expect("a master with a replica");
        let killed = round(&mut cluster, &etcd, &proxies, ends, fault, number).await;
        restore(&mut cluster, killed.as_slice()).await;
    }
    let mut steps = Vec::new();
    for proxy in &proxies {
        steps.push(metric(proxy, "slotguard_repair_steps_total").await);
    }
    eprintln!(
        "REPORT | repair steps sent, by proxy | {steps:?} | authority p{}",
        authority + 1
    );
    for (i, &n) in steps.iter().enumerate() {
        if i == authority {
            assert!(n > 0.0, "the authority repaired: {steps:?}");
        } else {
            assert_eq!(
                n,
                0.0,
                "p{} is not the authority but sent repair steps",
                i + 1
            );
        }
    }
}

/// Keys of `slot` on node `i`.
async fn count_keys(cluster: &LocalCluster, i: usize, slot: u16) -> i64 {
    let v = common::call(
        &cluster.nodes[i].addr(),
        &["CLUSTER", "COUNTKEYSINSLOT", &slot.to_string()],
    )
    .await;
    v.as_int().unwrap()
}

/// The authority is killed (kill -9) in the middle of a repair, while it moves 30,000
/// keys: the other proxy takes the lease once it runs out, and finishes the repair from
/// the shared journal; its clients saw no error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_authority_killed_mid_repair_is_succeeded_by_another_proxy() {
    let mut cluster = cluster().await;
    let Some(etcd) = Etcd::start(&cluster.dir).await else {
        return;
    };
    let mut proxies = proxies(&cluster, &etcd, &["p1", "p2"]).await;
    let authority = one_authority(&proxies).await;
    let (slot, keys) = keys_on(&cluster, 0, 0, 30_000).await;
    migrate_and_remember(&cluster, &etcd, (0, 1), slot, &keys, 100).await;
    let target = node_id(&cluster.nodes[1].addr()).await;

    // S4: the source dies; the authority finishes the migration onto the target. Once
    // it sends the fourth step, the key move, it dies too.
    cluster.nodes[0].kill();
    wait_master(&cluster, 3).await;
    let steps = "slotguard_repair_steps_total";
    let moving = || async { metric(&proxies[authority], steps).await >= 4.0 };
    // A bound for a box that is slow, not a measure of how fast it is.
    wait_for(Duration::from_secs(90), moving)
        .await
        .expect("the authority starts moving the keys");
    let mut killed = proxies.remove(authority);
    killed.child.kill().unwrap();
    let _ = killed.child.wait();
    let left = count_keys(&cluster, 3, slot).await;
    assert!(left > 0, "the repair was cut with keys still to move");
    eprintln!("REPORT | authority killed mid-repair | {left} keys left to move");

    // The other proxy takes the lease and finishes.
    let stop = Arc::new(AtomicBool::new(false));
    let load = writers_through(&proxies, &keys[..60], &stop);
    common::settled_in(&cluster, slot, Some(&target), Duration::from_secs(30)).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, Ordering::Relaxed);
    let writes = unharmed(load, &proxies[0]).await;
    assert_eq!(
        count_keys(&cluster, 1, slot).await,
        30_000,
        "every key moved"
    );
    untouched(&proxies[0], &keys, 60).await;
    assert_eq!(metric(&proxies[0], "slotguard_authority").await, 1.0);
    assert!(
        metric(&proxies[0], steps).await > 0.0,
        "the new authority repaired"
    );
    eprintln!("REPORT | repair finished by the new authority | writes {writes} | client errors 0");
    restore(&mut cluster, &[0]).await;
}

/// S7 seen by one proxy only: proxy 1 sees a migration and dies; both ends of the
/// migration then fail over with no proxy watching, so no node remembers it. Proxy 2,
/// started afterwards, finishes the migration onto the target's heir from the shared
/// journal (without it, the keys would go back to the source's heir).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_migration_seen_only_by_a_dead_proxy_is_repaired_by_another() {
    let mut cluster = cluster().await;
    let Some(etcd) = Etcd::start(&cluster.dir).await else {
        return;
    };
    let first = proxies(&cluster, &etcd, &["p1"]).await;
    one_authority(&first).await;
    let (slot, keys) = keys_on(&cluster, 0, 0, 200).await;
    migrate_and_remember(&cluster, &etcd, (0, 1), slot, &keys, 100).await;
    drop(first); // kill -9

    cluster.nodes[0].kill();
    wait_master(&cluster, 3).await;
    cluster.nodes[1].kill();
    wait_master(&cluster, 4).await;
    // The target's heir; on Valkey, where the target died importing, the source's.
    let heir = match slotguard::localcluster::is_valkey() {
        true => node_id(&cluster.nodes[3].addr()).await,
        false => node_id(&cluster.nodes[4].addr()).await,
    };

    let second = proxies(&cluster, &etcd, &["p2"]).await;
    let stop = Arc::new(AtomicBool::new(false));
    let load = writers_through(&second, &keys[..100], &stop);
    common::settled_in(&cluster, slot, Some(&heir), Duration::from_secs(30)).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, Ordering::Relaxed);
    let writes = unharmed(load, &second[0]).await;
    untouched(&second[0], &keys, 100).await;
    eprintln!("REPORT | S7 seen only by a dead proxy, repaired by another | writes {writes} | client errors 0");
    restore(&mut cluster, &[0, 1]).await;
}

/// etcd stops while a slot is broken: nobody repairs it (nobody holds the lease), its
/// requests wait, and requests for other slots flow as before. Once etcd is back, a proxy
/// takes the lease and repairs it; no client saw an error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_down_holds_repairs_and_nothing_else() {
    let mut cluster = cluster().await;
    let Some(mut etcd) = Etcd::start(&cluster.dir).await else {
        return;
    };
    let proxies = proxies(&cluster, &etcd, &["p1", "p2"]).await;
    one_authority(&proxies).await;
    let (slot, keys) = keys_on(&cluster, 0, 0, 120).await;
    migrate_and_remember(&cluster, &etcd, (0, 1), slot, &keys, 60).await;
    let target = node_id(&cluster.nodes[1].addr()).await;
    let (_, healthy) = keys_on(&cluster, 2, 1, 60).await;
    let stop = Arc::new(AtomicBool::new(false));
    let healthy_load = writers_through(&proxies, &healthy, &stop);

    etcd.stop();
    let nobody = || async {
        let mut holders = 0.0;
        for p in &proxies {
            holders += metric(p, "slotguard_authority").await;
        }
        holders == 0.0
    };
    wait_for(Duration::from_secs(10), nobody)
        .await
        .expect("no proxy counts itself the authority without etcd");
    cluster.nodes[0].kill();
    wait_master(&cluster, 3).await;
    let broken_load = writers_through(&proxies, &keys[..60], &stop);
    tokio::time::sleep(Duration::from_secs(3)).await;
    for p in &proxies {
        assert_eq!(
            metric(p, "slotguard_repair_steps_total").await,
            0.0,
            "nothing is repaired without etcd"
        );
        let status: serde_json::Value =
            serde_json::from_str(body(&p.admin_get("/status").await)).unwrap();
        assert!(
            status["authority"]["etcd_error"].is_string(),
            "{}",
            status["authority"]
        );
        let broken = status["unsettled"]
            .as_array()
            .unwrap()
            .iter()
            .any(|d| d["slot"] == slot && d["state"].get("Broken").is_some());
        assert!(
            broken,
            "the slot is reported broken: {}",
            status["unsettled"]
        );
    }
    assert!(
        count_keys(&cluster, 3, slot).await > 0,
        "the keys were not moved"
    );

    etcd.spawn().await;
    common::settled_in(&cluster, slot, Some(&target), Duration::from_secs(30)).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, Ordering::Relaxed);
    let healthy_writes = unharmed(healthy_load, &proxies[0]).await;
    let broken_writes = unharmed(broken_load, &proxies[1]).await;
    untouched(&proxies[0], &keys, 60).await;
    eprintln!("REPORT | etcd down while a slot was broken | healthy-slot writes {healthy_writes} | broken-slot writes {broken_writes} | client errors 0");
    restore(&mut cluster, &[0]).await;
}

/// etcd over TLS, asking for client certificates, with authentication on: a proxy with
/// the CA, its certificate and the password becomes the authority; one with a wrong
/// password never does, serves its clients all the same, and says why in `/status`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_over_tls_with_a_password() {
    let cluster = LocalCluster::start(Options {
        masters: 3,
        replicas_per_master: 0,
        ..Options::default()
    })
    .await
    .unwrap();
    let certs = make_certs(&cluster.dir.join("certs"));
    let Some(mut etcd) = Etcd::start_with(&cluster.dir, Some(certs)).await else {
        return;
    };
    etcd.require_auth("etcd secret").await;
    let certs = etcd.tls.as_ref().unwrap();
    let config = |password: &str| {
        format!(
            "[coordination]\netcd = [\"{}\"]\nprefix = \"{PREFIX}\"\nusername = \"root\"\npassword = \"{password}\"\ntls_ca = \"{}\"\ntls_cert = \"{}\"\ntls_key = \"{}\"\n",
            etcd.url(),
            certs.ca.display(),
            certs.client.0.display(),
            certs.client.1.display(),
        )
    };
    let good = ProxyProcess::start(&cluster, &config("etcd secret")).await;
    let wrong = ProxyProcess::start(&cluster, &config("a guess")).await;
    let proxies = [good, wrong];
    assert_eq!(one_authority(&proxies[..1]).await, 0);
    let status: serde_json::Value =
        serde_json::from_str(body(&proxies[1].admin_get("/status").await)).unwrap();
    let error = status["authority"]["etcd_error"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(
        error.contains("authentication failed"),
        "{}",
        status["authority"]
    );
    assert_eq!(metric(&proxies[1], "slotguard_authority").await, 0.0);
    let mut c = common::connect(&url_of(&proxies[1])).await;
    let () = redis::cmd("SET")
        .arg("k")
        .arg("v")
        .query_async(&mut c)
        .await
        .unwrap();
    eprintln!("REPORT | etcd over TLS with a password | the wrong password: {error}");
}

/// etcd keeps every revision of every key until someone compacts its history, and the
/// journal is rewritten whole at each change: a nemesis run filled etcd's 2 GiB space
/// quota in 18 minutes, after which etcd refused every write and nothing was repaired.
/// So the proxies compact etcd's history as they write the journal: after a few hundred
/// writes the first revisions are gone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writing_the_journal_compacts_etcds_history() {
    use slotguard::cluster::coordination::Coordinator;
    use slotguard::cluster::journal::{Change, Journal};
    let dir = std::env::temp_dir().join(format!("slotguard-compact-{}", std::process::id()));
    let Some(etcd) = Etcd::start(&dir).await else {
        return;
    };
    let coordinator = Coordinator::new(slotguard::config::Coordination {
        endpoints: vec![etcd.url()],
        prefix: PREFIX.into(),
        name: "compacting".into(),
        lease_ttl: Duration::from_secs(2),
        user: None,
        tls_ca: None,
        tls_identity: None,
    });
    let journal = std::sync::Mutex::new(Journal::shared(coordinator.clone()));
    for i in 0..1300 {
        let change = Change::Shard("master".into(), vec![format!("replica-{i}")]);
        journal.lock().unwrap().record(change);
        coordinator.sync(&journal).await.unwrap();
    }
    let mut c = etcd.client().await.unwrap();
    let first = c
        .get(
            format!("{PREFIX}journal"),
            Some(etcd_client::GetOptions::new().with_revision(2)),
        )
        .await;
    let error = first
        .expect_err("revision 2 was compacted away")
        .to_string();
    assert!(error.contains("compacted"), "{error}");
    // The latest journal is whole.
    let now = c.get(format!("{PREFIX}journal"), None).await.unwrap();
    let text = String::from_utf8_lossy(now.kvs()[0].value()).into_owned();
    assert!(text.contains("replica-1299"), "{text}");
    drop(etcd);
    let _ = std::fs::remove_dir_all(&dir);
}
