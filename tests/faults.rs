//! The fault catalogue (docs/FAULTS.md) with real processes: a slot migration cut by a crash,
//! writers through the proxy the whole time (each SETs a key of the migrating slot and
//! reads it back at once). Each test asserts that no client saw an error or a stale read,
//! that every acknowledged write reads back, that keys nobody touched kept their value,
//! and that the cluster ends clean (`redis-cli --cluster check`, no open slot). Each prints
//! a `REPORT` line: errors, stale reads, the longest a client waited, and how long after
//! the fault the slot was clean again.

mod common;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{assert_unharmed, node_id, writers_counted, Harness, Report};
use slotguard::client::Conn;
use slotguard::config::Promote;
use slotguard::localcluster::{wait_for, LocalCluster, Options};
use slotguard::protocol::key_slot;
use slotguard::routing::decision::{Decision, Orphan, State};

/// A slot of node 0 being migrated to node 1, and its keys.
struct Setup {
    slot: u16,
    keys: Vec<String>,
    /// Node id of the target master (node 1).
    target: String,
}

impl Setup {
    /// The keys writers write: every other one, so that moved and unmoved keys nobody
    /// writes are there to show whether they kept their value.
    fn written(&self) -> Vec<String> {
        self.keys.iter().step_by(2).cloned().collect()
    }
}

async fn call(addr: &str, args: &[&str]) -> slotguard::protocol::Value {
    let mut c = Conn::connect(addr, Duration::from_secs(5)).await.unwrap();
    c.call_ok(args)
        .await
        .unwrap_or_else(|e| panic!("{args:?} on {addr}: {e}"))
}

async fn migrating(moved: usize) -> (Harness, Setup) {
    migrating_with(moved, Options::default(), |_| {}).await
}

/// Starts a 3+3 cluster with the proxy, writes 200 keys of one slot of node 0 through the
/// proxy, and opens a migration of that slot from node 0 to node 1, moving `moved` keys.
async fn migrating_with(
    moved: usize,
    options: Options,
    tune: impl FnOnce(&mut slotguard::config::Config),
) -> (Harness, Setup) {
    let h = with_keys(options, tune).await;
    let setup = open_migration(&h.cluster, moved).await;
    // The proxy sees the migration and remembers it.
    let (limit, seen) = (Duration::from_secs(10), "the proxy sees the open slot");
    common::wait_decision(&h, setup.slot, limit, |_| true, seen).await;
    (h, setup)
}

/// The slot of node 0 whose 200 keys the fault tests use, and the keys.
fn the_slot() -> (u16, Vec<String>) {
    let tag = (0..)
        .map(|i| format!("t{i}"))
        .find(|t| key_slot(t.as_bytes()) < 5000)
        .unwrap();
    let keys = (0..200).map(|i| format!("{{{tag}}}:{i}")).collect();
    (key_slot(tag.as_bytes()), keys)
}

/// A 3+3 cluster with the proxy, and the slot's 200 keys written through it.
async fn with_keys(options: Options, tune: impl FnOnce(&mut slotguard::config::Config)) -> Harness {
    let h = Harness::start_with(
        Options {
            masters: 3,
            replicas_per_master: 1,
            node_timeout_ms: 1000,
            ..options
        },
        |c| {
            c.repair_grace = Duration::from_secs(1);
            tune(c);
        },
    )
    .await;
    set_initial(&h, &the_slot().1).await;
    h
}

/// Opens a migration of the slot from node 0 to node 1 and moves `moved` of its keys, as
/// an operator's tool does.
async fn open_migration(cluster: &LocalCluster, moved: usize) -> Setup {
    let (slot, keys) = the_slot();
    let (a, b) = (cluster.nodes[0].addr(), cluster.nodes[1].addr());
    let (_, target) = common::open_migration(&a, &b, slot, &keys[..moved]).await;
    Setup { slot, keys, target }
}

/// Sets every key to "initial" through the proxy.
async fn set_initial(h: &Harness, keys: &[String]) {
    let mut c = h.client().await;
    for k in keys {
        let () = redis::cmd("SET")
            .arg(k)
            .arg("initial")
            .query_async(&mut c)
            .await
            .unwrap();
    }
}

/// Waits until every live node agrees the slot is owned by `owner` and nothing is open;
/// returns when that was seen.
async fn settled(h: &Harness, slot: u16, owner: &str) -> Instant {
    common::settled(h, slot, Some(owner), Duration::from_secs(30))
        .await
        .0
}

/// Waits for the slot to settle on `owner`, asserts everything a fault test asserts, and
/// prints the report line. `stale_allowed`: S13 only, see there.
async fn conclude(
    name: &str,
    h: &Harness,
    report: &Report,
    setup: &Setup,
    owner: &str,
    fault_at: Instant,
    stale_allowed: bool,
) {
    let clean_at = settled(h, setup.slot, owner).await;
    outcome(name, h, report, setup, fault_at, clean_at, stale_allowed).await;
}

/// Prints the report line and asserts everything a fault test asserts.
async fn outcome(
    name: &str,
    h: &Harness,
    report: &Report,
    setup: &Setup,
    fault_at: Instant,
    clean_at: Instant,
    stale_allowed: bool,
) {
    report.print(name, fault_at, clean_at);
    // Enough writes that the test is not vacuous; how many a slow machine manages while
    // the slot is held (most of the run, in S1) is no guarantee.
    assert_unharmed(h, report, 20, stale_allowed).await;
    assert_kept(h, report, setup).await;
}

/// Runs writers on the slot's keys while `fault` happens, and after it until they have
/// written [`AFTER`] more (1.5 s at least). Returns what they saw and when the fault
/// began.
async fn writers_around(
    h: &Harness,
    setup: &Setup,
    fault: impl std::future::Future<Output = ()>,
) -> (Report, Instant) {
    let load = Load::start(h.url(), setup.written()).await;
    let fault_at = Instant::now();
    fault.await;
    (load.finish().await, fault_at)
}

/// Writes the writers make after a fault before they stop: more than [`outcome`] asks
/// for, so that a slow machine (the writers held through the fault) still shows them.
const AFTER: u64 = 30;

/// Six writers on a slot's keys, under a fault.
struct Load {
    stop: Arc<AtomicBool>,
    done: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<Report>,
}

impl Load {
    /// Starts the writers, and gives them 300 ms before the fault.
    async fn start(url: String, keys: Vec<String>) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let done = Arc::new(AtomicU64::new(0));
        let task = tokio::spawn(writers_counted(url, 6, keys, stop.clone(), done.clone()));
        tokio::time::sleep(Duration::from_millis(300)).await;
        Load { stop, done, task }
    }

    /// After the fault: 1.5 s, and until the writers have written [`AFTER`] more (at most
    /// a minute: writers held that long fail on their own); then stops them and returns
    /// what they saw.
    async fn finish(self) -> Report {
        let before = self.done.load(Ordering::Relaxed);
        tokio::time::sleep(Duration::from_millis(1500)).await;
        let since = self.done.load(Ordering::Relaxed) - before;
        let more = AFTER.saturating_sub(since);
        common::until_more_writes(&self.done, more, Duration::from_secs(60)).await;
        self.stop.store(true, Ordering::Relaxed);
        self.task.await.unwrap()
    }
}

/// kill -9 of master `victim` (by pid), until its replica is promoted.
async fn kill_and_fail_over(cluster: &mut LocalCluster, victim: usize) {
    cluster.nodes[victim].kill();
    wait_promoted(cluster, victim).await;
}

async fn wait_promoted(cluster: &LocalCluster, i: usize) {
    cluster
        .wait_promoted(i)
        .await
        .expect("the replica is promoted");
}

/// Writers on the slot's keys while master `victim` is killed and failed over, and 1.5 s
/// more. Returns what they saw and when the kill happened.
async fn kill_under_load(h: &mut Harness, setup: &Setup, victim: usize) -> (Report, Instant) {
    let load = Load::start(h.url(), setup.written()).await;
    let at = Instant::now();
    kill_and_fail_over(&mut h.cluster, victim).await;
    (load.finish().await, at)
}

/// A manual failover: the replica of master `i` takes over (`CLUSTER FAILOVER`).
async fn manual_failover(cluster: &LocalCluster, i: usize) {
    let replica = cluster.nodes[i + cluster.options.masters].addr();
    call(&replica, &["CLUSTER", "FAILOVER"]).await;
    wait_promoted(cluster, i).await;
}

async fn heir_of(h: &Harness, i: usize) -> String {
    node_id(&h.cluster.nodes[i + h.cluster.options.masters].addr()).await
}

/// Brings every killed node back, checks the cluster is whole and clean, and that what
/// the writers were told is kept still reads back: a node that returns must not take
/// its stale copy back (Valkey lets a master that died importing a slot do that).
async fn restore_and_check(h: &mut Harness, killed: &[usize], report: &Report, setup: &Setup) {
    for &i in killed {
        h.cluster.restart(i).await.unwrap();
    }
    h.cluster
        .wait_healthy(Duration::from_secs(30))
        .await
        .unwrap();
    common::assert_clean(&h.cluster).await;
    assert_kept(h, report, setup).await;
}

/// Every acknowledged write reads back, and every key no writer touched kept its value.
async fn assert_kept(h: &Harness, report: &Report, setup: &Setup) {
    let mut c = h.client().await;
    let lost = common::lost_writes(&mut c, &report.acked).await;
    assert!(lost.is_empty(), "lost writes: {lost:?}");
    for k in &setup.keys {
        if !report.acked.contains_key(k) {
            let v: Option<String> = redis::cmd("GET").arg(k).query_async(&mut c).await.unwrap();
            assert_eq!(v.as_deref(), Some("initial"), "{k}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s4_source_killed_mid_migration_is_finished_onto_the_target() {
    let (mut h, setup) = migrating(100).await;
    let (report, at) = kill_under_load(&mut h, &setup, 0).await;
    conclude(
        "S4 source killed, replica promoted",
        &h,
        &report,
        &setup,
        &setup.target,
        at,
        false,
    )
    .await;
    restore_and_check(&mut h, &[0], &report, &setup).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s15_same_with_full_coverage_off() {
    let options = Options {
        extra_args: vec![("cluster-require-full-coverage".into(), "no".into())],
        ..Options::default()
    };
    let (mut h, setup) = migrating_with(100, options, |_| {}).await;
    let (report, at) = kill_under_load(&mut h, &setup, 0).await;
    conclude(
        "S15 (S4 with full coverage off)",
        &h,
        &report,
        &setup,
        &setup.target,
        at,
        false,
    )
    .await;
    restore_and_check(&mut h, &[0], &report, &setup).await;
}

/// Where a migration whose target died ends: finished onto the heir on Redis; undone onto
/// the source on Valkey, where the old target, started again importing, could take it
/// back (`authority::target_may_take_it_back`).
async fn owner_after_target_lost(h: &Harness) -> String {
    match slotguard::localcluster::is_valkey() {
        true => node_id(&h.cluster.nodes[0].addr()).await,
        false => heir_of(h, 1).await,
    }
}

/// S2 under writers, up to the slot settled and every guarantee asserted.
async fn s2(name: &str) -> (Harness, Setup, Report) {
    let (mut h, setup) = migrating(100).await;
    let (report, at) = kill_under_load(&mut h, &setup, 1).await;
    let owner = owner_after_target_lost(&h).await;
    conclude(name, &h, &report, &setup, &owner, at, false).await;
    (h, setup, report)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s2_target_killed_mid_migration_is_finished_onto_its_replica() {
    let (mut h, setup, report) = s2("S2 target killed, replica promoted").await;
    restore_and_check(&mut h, &[1], &report, &setup).await;
}

/// S2, and then a second fault while the cluster heals: the dead target is started again
/// while every node but the source is paused, so the first node it hears from is the
/// source. On Valkey a master that comes back importing a slot its source no longer
/// claims takes the slot, and with the bumped epoch its whole shard, back from its heir,
/// which then resyncs from the stale copy: had the repair finished the migration onto
/// the heir, every write of the shard since the kill would be lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s2_the_dead_target_comes_back_hearing_only_the_source() {
    let (mut h, setup, report) = s2("S2, the target back hearing only the source").await;
    let paused: Vec<usize> = (2..h.cluster.nodes.len()).collect();
    for &i in &paused {
        h.cluster.nodes[i].signal("STOP").unwrap();
    }
    let restarted = h.cluster.restart(1).await;
    // Well inside the node timeout (2 s): nobody is failed over meanwhile.
    tokio::time::sleep(Duration::from_millis(600)).await;
    for &i in &paused {
        h.cluster.nodes[i].signal("CONT").unwrap();
    }
    restarted.unwrap();
    restore_and_check(&mut h, &[], &report, &setup).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_target_manually_failed_over_mid_migration() {
    let (mut h, setup) = migrating(100).await;
    let (report, at) = writers_around(&h, &setup, manual_failover(&h.cluster, 1)).await;
    // B lives on as B2's replica: no take-back to fear, finished onto B2 everywhere.
    let owner = heir_of(&h, 1).await;
    conclude(
        "S3 target manually failed over",
        &h,
        &report,
        &setup,
        &owner,
        at,
        false,
    )
    .await;
    restore_and_check(&mut h, &[], &report, &setup).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s5_source_manually_failed_over_mid_migration() {
    let (mut h, setup) = migrating(100).await;
    let (report, at) = writers_around(&h, &setup, manual_failover(&h.cluster, 0)).await;
    conclude(
        "S5 source manually failed over",
        &h,
        &report,
        &setup,
        &setup.target,
        at,
        false,
    )
    .await;
    restore_and_check(&mut h, &[], &report, &setup).await;
}

/// S5 on a migration the proxy has not looked at yet (it refreshes once a minute): the
/// first ASK tells it a migration is open, and it looks before the failover's MOVED can
/// send a request to the promoted source, which lacks the moved keys.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s5_on_a_migration_the_proxy_learns_of_by_an_ask() {
    let mut h = with_keys(Options::default(), |c| {
        c.refresh_interval = Duration::from_secs(60);
    })
    .await;
    let setup = open_migration(&h.cluster, 100).await;
    let (report, at) = writers_around(&h, &setup, manual_failover(&h.cluster, 0)).await;
    conclude(
        "S5 on a migration learnt of by an ASK",
        &h,
        &report,
        &setup,
        &setup.target,
        at,
        false,
    )
    .await;
    restore_and_check(&mut h, &[], &report, &setup).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s6_source_killed_after_every_key_moved() {
    let (mut h, setup) = migrating(200).await;
    let (report, at) = kill_under_load(&mut h, &setup, 0).await;
    conclude(
        "S6 source killed after all keys moved",
        &h,
        &report,
        &setup,
        &setup.target,
        at,
        false,
    )
    .await;
    restore_and_check(&mut h, &[0], &report, &setup).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s9_target_finalizes_then_segfaults_before_telling_anyone() {
    let (mut h, setup) = migrating(200).await;
    let b = h.cluster.nodes[1].addr();
    let slot = setup.slot.to_string();
    let load = Load::start(h.url(), setup.written()).await;
    let at = Instant::now();
    finalize_and_crash(&b, &slot, &setup.target).await;
    h.cluster.nodes[1].kill(); // reaps the crashed process
    wait_promoted(&h.cluster, 1).await;
    let report = load.finish().await;
    // On Valkey B's nodes.conf still says it imports the slot (the crash came before it
    // was saved): undone onto the source, as S2.
    let owner = owner_after_target_lost(&h).await;
    conclude(
        "S9 target finalized, then DEBUG SEGFAULT",
        &h,
        &report,
        &setup,
        &owner,
        at,
        false,
    )
    .await;
    restore_and_check(&mut h, &[1], &report, &setup).await;
}

/// MULTI; CLUSTER SETSLOT x NODE B; DEBUG SEGFAULT; EXEC on B (`addr`): B takes the slot
/// and dies before its first PING carries the news.
async fn finalize_and_crash(addr: &str, slot: &str, target: &str) {
    let mut c = Conn::connect(addr, Duration::from_secs(5)).await.unwrap();
    c.call_ok(&["MULTI"]).await.unwrap();
    c.call_ok(&["CLUSTER", "SETSLOT", slot, "NODE", target])
        .await
        .unwrap();
    c.call_ok(&["DEBUG", "SEGFAULT"]).await.unwrap();
    let _ = c.call(&["EXEC"]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s10_slot_bound_to_a_target_that_then_dies() {
    let (mut h, setup) = migrating(200).await;
    let slot = setup.slot.to_string();
    let (a, c) = (h.cluster.nodes[0].addr(), h.cluster.nodes[2].addr());
    let load = Load::start(h.url(), setup.written()).await;
    let at = Instant::now();
    // SETSLOT NODE B reaches A and C but not B (no epoch bump), then B dies.
    call(&a, &["CLUSTER", "SETSLOT", &slot, "NODE", &setup.target]).await;
    call(&c, &["CLUSTER", "SETSLOT", &slot, "NODE", &setup.target]).await;
    kill_and_fail_over(&mut h.cluster, 1).await;
    let report = load.finish().await;
    let heir = heir_of(&h, 1).await;
    conclude(
        "S10 slot bound to a dead target",
        &h,
        &report,
        &setup,
        &heir,
        at,
        false,
    )
    .await;
    restore_s10(&mut h, &report, &setup).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s12_a_key_on_both_sides_after_a_cut_migrate_keeps_the_source_copy() {
    let (mut h, setup) = migrating(100).await;
    // A MIGRATE cut after the target stored the key but before the source deleted it: the
    // key is on both sides, the target's copy older.
    let key = setup.keys[150].clone();
    let b = h.cluster.nodes[1].addr();
    {
        let mut c = Conn::connect(&b, Duration::from_secs(5)).await.unwrap();
        c.call_ok(&["ASKING"]).await.unwrap();
        c.call_ok(&["SET", &key, "older copy"]).await.unwrap();
    }
    let (report, at) = kill_under_load(&mut h, &setup, 0).await;
    conclude(
        "S12 a key on both sides",
        &h,
        &report,
        &setup,
        &setup.target,
        at,
        false,
    )
    .await;
    let mut c = h.client().await;
    let v: String = redis::cmd("GET")
        .arg(&key)
        .query_async(&mut c)
        .await
        .unwrap();
    assert_ne!(v, "older copy", "the source copy won");
    restore_and_check(&mut h, &[0], &report, &setup).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s13_a_migration_aborted_on_the_source_only_is_rolled_back() {
    let (mut h, setup) = migrating(100).await;
    let a = h.cluster.nodes[0].addr();
    let slot = setup.slot.to_string();
    let source = node_id(&a).await;
    let abort = ["CLUSTER", "SETSLOT", slot.as_str(), "STABLE"];
    let (report, at) = writers_around(&h, &setup, async {
        call(&a, &abort).await;
    })
    .await;
    // Between the abort and the proxy's next look (100 ms while a migration is open), the
    // source answers nil for keys it no longer has: the proxy cannot know before it looks,
    // so stale reads in that window are reported, not failed on. Everything else holds.
    conclude(
        "S13 migration aborted on the source only",
        &h,
        &report,
        &setup,
        &source,
        at,
        true,
    )
    .await;
    restore_and_check(&mut h, &[], &report, &setup).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_proxy_restarted_in_the_middle_of_a_repair_finishes_it() {
    let state = std::env::temp_dir().join(format!("slotguard-midrepair-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&state);
    let dir = state.clone();
    // The first proxy detects and plans, but is not allowed to repair.
    let (mut h, setup) = migrating_with(100, Options::default(), move |c| {
        c.state_dir = Some(dir);
        c.repair_auto = false;
    })
    .await;
    kill_and_fail_over(&mut h.cluster, 0).await;
    let p = h.proxy.proxy.clone();
    let slot = setup.slot;
    let planned = |d: &Decision| !d.plan.is_empty();
    let limit = Duration::from_secs(20);
    common::wait_decision(&h, slot, limit, planned, "the repair is planned").await;
    let plan = p
        .routing
        .status
        .load()
        .decisions
        .iter()
        .find(|d| d.slot == slot)
        .unwrap()
        .plan
        .clone();
    assert!(plan.len() >= 5, "{plan:?}");
    // The repair runs its first three steps (bind, import, migrate), then the proxy dies.
    let views = slotguard::cluster::topology::collect_views(
        &h.cluster.dial(Duration::from_secs(2)),
        &h.cluster.addrs(),
    )
    .await
    .unwrap();
    let addrs = slotguard::cluster::heal::addresses(&views);
    let journal =
        std::sync::Mutex::new(slotguard::cluster::journal::Journal::open(Some(&state)).unwrap());
    slotguard::cluster::repair::begin(slot, &journal)
        .await
        .unwrap();
    // A node may not have heard of the promotion yet (gossip): the steps are idempotent,
    // and are tried again, as the proxy's own repair would on its next look.
    let mut tries = 0;
    while let Err(e) = slotguard::cluster::repair::run_steps(
        slot,
        &plan[..3],
        &addrs,
        &journal,
        &h.cluster.dial(Duration::from_secs(5)),
    )
    .await
    {
        tries += 1;
        assert!(tries < 50, "the first steps keep failing: {e}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    drop(journal);
    let mut config = h.proxy.proxy.config().as_ref().clone();
    let Harness { cluster, proxy } = h;
    proxy.stop();

    // A new proxy, repairs allowed, same journal: it plans from where the cluster is.
    config.repair_auto = true;
    config.seeds = vec![cluster.nodes[2].addr()];
    let proxy = common::start_proxy(config).await;
    let mut h = Harness { cluster, proxy };
    let (report, at) = writers_around(&h, &setup, async {}).await;
    conclude(
        "restart mid-repair (clock from the new proxy)",
        &h,
        &report,
        &setup,
        &setup.target,
        at,
        false,
    )
    .await;
    restore_and_check(&mut h, &[0], &report, &setup).await;
    let _ = std::fs::remove_dir_all(&state);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s7_both_ends_failed_over_is_repaired_from_the_journal_by_a_restarted_proxy() {
    let state = std::env::temp_dir().join(format!("slotguard-s7-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&state);
    let dir = state.clone();
    // The first proxy only watches: it sees the migration and writes it down.
    let (h, setup) = migrating_with(100, Options::default(), move |c| {
        c.state_dir = Some(dir);
        c.repair_auto = false;
    })
    .await;
    let journal = std::fs::read_to_string(state.join("journal.json")).unwrap();
    assert!(
        journal.contains(&setup.target),
        "the migration is in the journal"
    );
    let mut config = h.proxy.proxy.config().as_ref().clone();
    let Harness { mut cluster, proxy } = h;
    proxy.stop();

    // Both ends die, one after the other (a majority must remain to elect), and fail over
    // while no proxy watches: no node remembers the migration any more.
    let at = Instant::now();
    kill_and_fail_over(&mut cluster, 0).await;
    kill_and_fail_over(&mut cluster, 1).await;

    // A new proxy with the same journal finds the orphaned keys and finishes the move.
    config.repair_auto = true;
    config.seeds = vec![cluster.nodes[2].addr()];
    let proxy = common::start_proxy(config).await;
    let mut h = Harness { cluster, proxy };
    let (report, _) = writers_around(&h, &setup, async {}).await;
    // On Valkey the target died importing: undone onto the source's heir (as S2).
    let owner = match slotguard::localcluster::is_valkey() {
        true => heir_of(&h, 0).await,
        false => heir_of(&h, 1).await,
    };
    conclude(
        "S7 both ends failed over, no proxy watching",
        &h,
        &report,
        &setup,
        &owner,
        at,
        false,
    )
    .await;
    restore_and_check(&mut h, &[0, 1], &report, &setup).await;
    let _ = std::fs::remove_dir_all(&state);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s8_no_majority_holds_then_fails_clearly_then_recovers() {
    s8(false).await;
}

/// S8 has no migration to miss: its other variant is a proxy started while the cluster
/// has no majority, seeded with every node.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s8_a_proxy_started_without_a_majority_holds_then_fails_clearly_then_recovers() {
    s8(true).await;
}

async fn s8(started_after: bool) {
    let mut h = Harness::start_with(
        Options {
            masters: 3,
            replicas_per_master: 0,
            node_timeout_ms: 1000,
            ..Options::default()
        },
        |c| c.hold_timeout = Duration::from_secs(3),
    )
    .await;
    let mut c = h.client().await;
    let key = common::keys_in_slots("s8", 12000..=16383, 1).remove(0);
    let () = redis::cmd("SET")
        .arg(&key)
        .arg("before")
        .query_async(&mut c)
        .await
        .unwrap();
    h.cluster.nodes[0].kill();
    h.cluster.nodes[1].kill();
    let survivor = h.cluster.nodes[2].addr();
    wait_for(Duration::from_secs(20), || {
        let survivor = survivor.clone();
        async move {
            let info = slotguard::client::query(
                &survivor,
                &["CLUSTER", "INFO"],
                &slotguard::client::Dial::new(Duration::from_secs(1)),
            )
            .await;
            info.ok()
                .and_then(|v| v.as_str().map(|s| s.contains("cluster_state:fail")))
                .unwrap_or(false)
        }
    })
    .await
    .expect("the survivor sees it has no majority");
    if started_after {
        let mut config = h.proxy.proxy.config().as_ref().clone();
        config.seeds = h.cluster.addrs();
        let Harness { cluster, proxy } = h;
        proxy.stop();
        h = Harness {
            cluster,
            proxy: common::start_proxy(config).await,
        };
        c = h.client().await;
    }
    let start = Instant::now();
    let err = redis::cmd("GET")
        .arg(&key)
        .query_async::<Option<String>>(&mut c)
        .await
        .unwrap_err();
    let waited = start.elapsed();
    assert!(
        waited >= Duration::from_secs(3),
        "held until the timeout, not failed at once: {waited:?}"
    );
    let text = err.to_string();
    assert!(
        text.contains("CLUSTERDOWN") && text.contains("slot") && text.contains("held"),
        "{text}"
    );
    h.cluster.restart(0).await.unwrap();
    h.cluster.restart(1).await.unwrap();
    h.cluster
        .wait_healthy(Duration::from_secs(30))
        .await
        .unwrap();
    let v: String = redis::cmd("GET")
        .arg(&key)
        .query_async(&mut c)
        .await
        .unwrap();
    assert_eq!(v, "before");
}

fn slotguard(args: &[&str]) -> (i32, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_slotguard"))
        .args(args)
        .env("RUST_LOG", "warn")
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code().unwrap_or(-1), text)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_and_repair_commands_diagnose_and_fix_a_cut_migration_without_a_proxy() {
    let mut cluster = slotguard::localcluster::LocalCluster::start(Options {
        masters: 3,
        replicas_per_master: 1,
        node_timeout_ms: 1000,
        ..Options::default()
    })
    .await
    .unwrap();
    let (a, b) = (cluster.nodes[0].addr(), cluster.nodes[1].addr());
    let tag = (0..)
        .map(|i| format!("c{i}"))
        .find(|t| key_slot(t.as_bytes()) < 5000)
        .unwrap();
    let slot = key_slot(tag.as_bytes()).to_string();
    let keys: Vec<String> = (0..50).map(|i| format!("{{{tag}}}:{i}")).collect();
    for k in &keys {
        call(&a, &["SET", k, "v"]).await;
    }
    let (source, target) = (node_id(&a).await, node_id(&b).await);
    call(&b, &["CLUSTER", "SETSLOT", &slot, "IMPORTING", &source]).await;
    call(&a, &["CLUSTER", "SETSLOT", &slot, "MIGRATING", &target]).await;
    let (host, port) = b.rsplit_once(':').unwrap();
    for k in &keys[..20] {
        call(&a, &["MIGRATE", host, port, k, "0", "5000"]).await;
    }
    // Wait for A's replica to have every key A still holds, then kill A.
    let replica = cluster.nodes[3].addr();
    wait_for(Duration::from_secs(10), || {
        let replica = replica.clone();
        async move {
            let mut c = Conn::connect(&replica, Duration::from_secs(1))
                .await
                .unwrap();
            c.call_ok(&["READONLY"]).await.unwrap();
            let n = c.call_ok(&["DBSIZE"]).await.unwrap().as_int().unwrap_or(0);
            n == 30
        }
    })
    .await
    .unwrap();
    cluster.nodes[0].kill();
    cluster.wait_promoted(0).await.unwrap();

    let seed = cluster.nodes[2].addr();
    if slotguard::localcluster::is_valkey() {
        // Valkey replicated MIGRATING to A's replica: the migration is whole, from the
        // promoted replica to B, and is left to whoever runs it. The operator finishes it.
        let (code, out) = slotguard(&["check", "--seed", &seed]);
        assert_eq!(code, 1, "{out}");
        assert!(out.contains(&format!("slot {slot}: migrating")), "{out}");
        let args = [
            "migrate", "--seed", &seed, "--slots", &slot, "--to", &target,
        ];
        let (code, out) = slotguard(&args);
        assert_eq!(code, 0, "{out}");
    } else {
        assert_cut_migration_repaired(&seed, &slot).await;
    }
    let (code, out) = slotguard(&["check", "--seed", &seed]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("healthy"), "{out}");
    for k in &keys {
        let v = call(&b, &["GET", k]).await;
        assert_eq!(v.as_str(), Some("v"), "{k} is on the new owner");
    }
    cluster.restart(0).await.unwrap();
    cluster.wait_healthy(Duration::from_secs(30)).await.unwrap();
    common::assert_clean(&cluster).await;
}

/// `slotguard check` finds the cut migration of `slot` broken and shows the plan; a dry
/// run of `slotguard repair` changes nothing; `slotguard repair` repairs it.
async fn assert_cut_migration_repaired(seed: &str, slot: &str) {
    let (code, out) = slotguard(&["check", "--seed", seed]);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains(&format!("slot {slot}: broken (S4/S5/S6)")),
        "{out}"
    );
    assert!(
        out.contains("MIGRATE ... REPLACE"),
        "the plan is shown: {out}"
    );

    let (code, out) = slotguard(&["repair", "--dry-run", "--seed", seed]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("broken"), "a dry run changes nothing: {out}");
    let (code, out) = slotguard(&["repair", "--seed", seed]);
    assert_eq!(code, 0, "{out}");
}

/// S4 with a client blocked in BLPOP on a list of the migrating slot, and another
/// subscribed to a shard channel of that slot: the source dies, the proxy repairs the
/// migration onto the target, and both clients carry on there without an error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s4_with_a_blocked_client_and_a_shard_subscriber() {
    let (mut h, setup) = migrating(100).await;
    let tag = setup.keys[0].split(':').next().unwrap().to_string(); // "{tN}"
    let list = format!("{tag}:queue");
    let channel = format!("{tag}:events");
    // The list does not exist yet: the source still owns its name, so BLPOP blocks there.
    let blocked = common::blpop_in_background(h.url(), &list);
    let mut sub = common::Raw::connect(&h).await;
    sub.send(&format!("SSUBSCRIBE {channel}\r\n")).await;
    assert_eq!(
        sub.items().await,
        ["ssubscribe", channel.as_str(), "1"].map(String::from)
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!blocked.is_finished(), "BLPOP is blocked");

    kill_and_fail_over(&mut h.cluster, 0).await;
    settled(&h, setup.slot, &setup.target).await;

    let mut c = h.client().await;
    let () = redis::cmd("RPUSH")
        .arg(&list)
        .arg("after the repair")
        .query_async(&mut c)
        .await
        .unwrap();
    let got = tokio::time::timeout(Duration::from_secs(20), blocked)
        .await
        .expect("BLPOP returns")
        .unwrap()
        .expect("no error reaches the blocked client");
    assert_eq!(got.1, "after the repair");
    // The subscription moved with the slot: a message published now arrives, and nothing
    // but messages reached the subscriber.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        assert!(Instant::now() < deadline, "no message after the repair");
        let _: i64 = redis::cmd("SPUBLISH")
            .arg(&channel)
            .arg("hello")
            .query_async(&mut c)
            .await
            .unwrap();
        if let Some(frame) = sub.frame_within(Duration::from_millis(200)).await {
            assert_eq!(
                common::items(&frame),
                ["smessage", channel.as_str(), "hello"].map(String::from)
            );
            break;
        }
    }
    restore_and_check(&mut h, &[0], &Report::default(), &setup).await;
}

/// S10 as an operator's tool does it, unseen by the proxy: one slot of node 0 with 60 keys
/// migrated whole to node 1 and bound to it on nodes 0 and 2 but not on 1 itself, then
/// node 1 killed and failed over, all within about a second. Its replica holds the keys
/// but never heard of the slot; the live nodes bind it to the dead node. With `watching`
/// the proxy runs throughout (refreshing too seldom to see the migration open); without,
/// it starts only after the fault, with an empty journal.
async fn s10_unseen(watching: bool) {
    let h = Harness::start_with(
        Options {
            masters: 3,
            replicas_per_master: 1,
            node_timeout_ms: 1000,
            ..Options::default()
        },
        |c| {
            c.repair_grace = Duration::from_secs(1);
            c.refresh_interval = Duration::from_secs(30);
        },
    )
    .await;
    let tag = common::tag_on(0);
    let slot = key_slot(tag.as_bytes());
    let keys: Vec<String> = (0..60).map(|i| format!("{tag}:{i}")).collect();
    set_initial(&h, &keys).await;
    let mut config = h.proxy.proxy.config().as_ref().clone();
    let Harness { mut cluster, proxy } = h;
    let proxy = match watching {
        true => Some(proxy),
        false => {
            proxy.stop();
            None
        }
    };
    let (a, b, c) = (
        cluster.nodes[0].addr(),
        cluster.nodes[1].addr(),
        cluster.nodes[2].addr(),
    );
    let s = slot.to_string();
    let at = Instant::now();
    let (_, target) = common::open_migration(&a, &b, slot, &keys).await;
    for on in [&a, &c] {
        call(on, &["CLUSTER", "SETSLOT", &s, "NODE", &target]).await;
    }
    kill_and_fail_over(&mut cluster, 1).await;
    let proxy = match proxy {
        Some(proxy) => proxy,
        None => {
            config.repair_auto = true;
            common::start_proxy(config).await
        }
    };
    let mut h = Harness { cluster, proxy };
    let setup = Setup { slot, keys, target };
    let (report, _) = writers_around(&h, &setup, async {}).await;
    let heir = heir_of(&h, 1).await;
    let name = match watching {
        true => "S10 migration faster than a refresh",
        false => "S10 proxy started after the fault",
    };
    conclude(name, &h, &report, &setup, &heir, at, false).await;
    restore_s10(&mut h, &report, &setup).await;
}

/// The end of S10. On Valkey the cluster itself gave the slot to B's heir as it failed B
/// over, while B died importing it: started again with its nodes.conf, B would take the
/// slot, and its shard, back (docs/VALKEY.md). So the operator does not start it again as
/// it was: the dead node is forgotten (to rejoin, it is wiped first).
async fn restore_s10(h: &mut Harness, report: &Report, setup: &Setup) {
    if !slotguard::localcluster::is_valkey() {
        return restore_and_check(h, &[1], report, setup).await;
    }
    let dead = node_id_of_dead(h, 1).await;
    for n in h.cluster.nodes.iter().filter(|n| n.pid().is_some()) {
        call(&n.addr(), &["CLUSTER", "FORGET", &dead]).await;
    }
    restore_and_check(h, &[], report, setup).await;
}

/// The id of node `i`, which is down, as a live node lists it.
async fn node_id_of_dead(h: &Harness, i: usize) -> String {
    let port = format!(":{}@", h.cluster.nodes[i].port);
    let live = h.cluster.nodes.iter().find(|n| n.pid().is_some()).unwrap();
    let nodes = call(&live.addr(), &["CLUSTER", "NODES"]).await;
    let text = String::from_utf8_lossy(nodes.as_bytes().unwrap()).into_owned();
    let line = text
        .lines()
        .find(|l| l.contains(&port))
        .expect("the dead node is listed");
    line.split(' ').next().unwrap().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s10_unseen_by_a_proxy_started_after_the_fault() {
    s10_unseen(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s10_unseen_by_a_proxy_refreshing_too_seldom() {
    s10_unseen(true).await;
}

/// A fault of the catalogue, for the variants no proxy watches.
enum Fault {
    /// kill -9 of master `i`, failed over to its replica.
    Kill(usize),
    /// `CLUSTER FAILOVER` on the replica of master `i`.
    ManualFailover(usize),
    /// S9: the target finalizes and crashes before telling anyone; its replica takes over.
    FinalizeAndCrash,
    /// S13: the source closes the migration on its side only.
    AbortOnSource,
    /// S7: the source dies and fails over, then the target: no node remembers the
    /// migration, and the moved keys sit on a master that does not own their slot.
    KillBothEnds,
    /// S12: a MIGRATE cut after the target stored a key and before the source deleted it
    /// (the target's copy older), then the source killed.
    CutMigrateThenKill,
    /// S1: the target killed with its replica barred from failing over; it restarts
    /// (persistence on) once the proxy holds the slot.
    TargetDownNoFailover,
    /// S14: 20 keys copied to the target, the migration closed on both ends, and the target
    /// restarted (persistence on), its replica barred from failing over: it reloads keys
    /// of a slot it does not own.
    StrayCopies,
}

/// The key S12 puts on both sides.
const BOTH_SIDES: usize = 150;

/// Where the slot must end up.
enum Owner {
    /// Node 0, which owned the slot.
    Source,
    /// Node 1.
    Target,
    /// The replica of master `i`, promoted.
    ReplicaOf(usize),
}

/// How the proxy misses the migration.
#[derive(Clone, Copy, PartialEq)]
enum Missed {
    /// No proxy runs while the migration opens and the fault happens; one with an empty
    /// journal starts after the fault, every node a seed (the dead one among them).
    StartedAfter,
    /// The proxy runs throughout but looks every 10 s: the migration opens and the fault
    /// happens between two looks.
    FasterThanRefresh,
}

/// One fault test the proxy did not watch: the migration of the slot from node 0 to node 1
/// opens (`moved` keys moved), `fault` happens, and the proxy must find `owner` from what
/// the cluster shows, with the outcomes every fault test asserts.
async fn unseen(name: &str, moved: usize, fault: Fault, owner: Owner, missed: Missed) {
    let extra_args = match fault {
        Fault::TargetDownNoFailover | Fault::StrayCopies => {
            vec![("appendonly".into(), "yes".into())]
        }
        _ if name.starts_with("S15") => {
            vec![("cluster-require-full-coverage".into(), "no".into())]
        }
        _ => vec![],
    };
    let options = Options {
        extra_args,
        ..Options::default()
    };
    let pinned = matches!(fault, Fault::TargetDownNoFailover | Fault::StrayCopies);
    let h = with_keys(options, |c| {
        if missed == Missed::FasterThanRefresh {
            c.refresh_interval = Duration::from_secs(10);
        }
        if pinned {
            // The target's replica is barred from failing over by hand below: the proxy
            // must leave that to the operator (`promote = "synced"` owns the setting).
            c.promote = Promote::Any;
        }
    })
    .await;
    let mut config = h.proxy.proxy.config().as_ref().clone();
    let Harness { mut cluster, proxy } = h;
    let watching = match missed {
        Missed::FasterThanRefresh => Some(proxy),
        Missed::StartedAfter => {
            proxy.stop();
            None
        }
    };
    let setup = open_migration(&cluster, moved).await;
    let slot = setup.slot.to_string();
    if let Some(p) = &watching {
        let seen = p
            .proxy
            .routing
            .status
            .load()
            .decisions
            .iter()
            .any(|d| d.slot == setup.slot);
        assert!(!seen, "the migration opened between two looks of the proxy");
    }
    let (a, b) = (cluster.nodes[0].addr(), cluster.nodes[1].addr());
    let source = node_id(&a).await;
    let at = Instant::now();
    let target_replica = cluster.nodes[1 + cluster.options.masters].addr();
    let no_failover = ["CONFIG", "SET", "cluster-replica-no-failover", "yes"];
    let mut killed = vec![];
    match fault {
        Fault::Kill(i) => {
            kill_and_fail_over(&mut cluster, i).await;
            killed.push(i);
        }
        Fault::ManualFailover(i) => manual_failover(&cluster, i).await,
        Fault::FinalizeAndCrash => {
            finalize_and_crash(&b, &slot, &setup.target).await;
            cluster.nodes[1].kill(); // reaps the crashed process
            wait_promoted(&cluster, 1).await;
            killed.push(1);
        }
        Fault::AbortOnSource => {
            call(&a, &["CLUSTER", "SETSLOT", &slot, "STABLE"]).await;
        }
        Fault::KillBothEnds => {
            kill_and_fail_over(&mut cluster, 0).await;
            kill_and_fail_over(&mut cluster, 1).await;
            killed.extend([0, 1]);
        }
        Fault::CutMigrateThenKill => {
            let mut c = Conn::connect(&b, Duration::from_secs(5)).await.unwrap();
            c.call_ok(&["ASKING"]).await.unwrap();
            let key = &setup.keys[BOTH_SIDES];
            c.call_ok(&["SET", key, "older copy"]).await.unwrap();
            kill_and_fail_over(&mut cluster, 0).await;
            killed.push(0);
        }
        Fault::TargetDownNoFailover => {
            call(&target_replica, &no_failover).await;
            cluster.nodes[1].kill();
        }
        Fault::StrayCopies => {
            let (host, port) = b.rsplit_once(':').unwrap();
            let mut copy = vec!["MIGRATE", host, port, "", "0", "5000", "COPY", "KEYS"];
            copy.extend(setup.keys.iter().skip(moved).take(20).map(String::as_str));
            call(&a, &copy).await;
            for on in [&a, &b] {
                call(on, &["CLUSTER", "SETSLOT", &slot, "STABLE"]).await;
            }
            call(&target_replica, &no_failover).await;
            cluster.restart(1).await.unwrap();
            let copies = call(&b, &["CLUSTER", "COUNTKEYSINSLOT", &slot]).await;
            if slotguard::localcluster::is_valkey() {
                // Valkey deletes, as it loads them, keys of a slot another node owns: S14
                // cannot arise there, and the slot is simply stable on A.
                assert_eq!(copies.as_int(), Some(0), "Valkey dropped B's copies");
            } else {
                assert_eq!(copies.as_int(), Some(20), "B reloaded its copies");
            }
        }
    }
    let proxy = match watching {
        Some(proxy) => proxy,
        None => {
            config.repair_auto = true;
            config.seeds = cluster.nodes.iter().map(|n| n.addr()).collect();
            common::start_proxy(config).await
        }
    };
    let mut h = Harness { cluster, proxy };
    // S7 on Valkey: both promoted replicas kept the migration (SETSLOT is replicated), so
    // it is still whole between them and goes on to the target's heir.
    let owner = match fault {
        Fault::KillBothEnds if slotguard::localcluster::is_valkey() => ReplicaOf(1),
        _ => owner,
    };
    let mut owner = match owner {
        Owner::Source => source.clone(),
        Owner::Target => setup.target.clone(),
        Owner::ReplicaOf(i) => heir_of(&h, i).await,
    };
    // Writers run until the slot is clean, and after it as after any fault.
    let load = Load::start(h.url(), setup.written()).await;
    if let Fault::TargetDownNoFailover = fault {
        // The cluster fails the target, the proxy holds the slot, and the target comes
        // back as it was: importing the slot.
        wait_held_for_target(&h, setup.slot).await;
        h.cluster.restart(1).await.unwrap();
    }
    if slotguard::localcluster::is_valkey() {
        // The operator brings the dead nodes back before finishing what they left open:
        // on Valkey a master started again importing a slot its source gave away since
        // takes it, and its shard, back (see s2_the_dead_target_comes_back_hearing_only_the_source).
        for i in killed.drain(..) {
            h.cluster.restart(i).await.unwrap();
        }
        if let Some(to) = finish_whole_migration(&h, setup.slot).await {
            let shard = [setup.target.clone(), heir_of(&h, 1).await];
            assert!(
                shard.contains(&to),
                "the migration still goes to the target's shard"
            );
            owner = to;
        }
    }
    let target_lost = matches!(
        fault,
        Fault::Kill(1) | Fault::ManualFailover(1) | Fault::KillBothEnds | Fault::FinalizeAndCrash
    );
    let clean_at = if slotguard::localcluster::is_valkey() && target_lost {
        // A proxy that remembers the migration's target (it looked between the opening
        // and the fault) undoes it onto the source's shard; one that does not sees a live
        // migration, which goes on to the target's.
        let limit = Duration::from_secs(30);
        let (at, got) = common::settled(&h, setup.slot, None, limit).await;
        let undone = [source.clone(), heir_of(&h, 0).await];
        assert!(got == owner || undone.contains(&got), "settled on {got}");
        at
    } else {
        settled(&h, setup.slot, &owner).await
    };
    let report = load.finish().await;
    outcome(name, &h, &report, &setup, at, clean_at, false).await;
    if let Fault::CutMigrateThenKill = fault {
        let v = call(&h.proxy.addr.to_string(), &["GET", &setup.keys[BOTH_SIDES]]).await;
        assert_ne!(v.as_str(), Some("older copy"), "the source copy won");
    }
    restore_and_check(&mut h, &killed, &report, &setup).await;
}

/// Valkey replicates SETSLOT: a promoted replica keeps the slot's migrating or importing
/// state, and a fault the proxy did not see may leave a migration that is still whole,
/// between two live masters. A proxy cannot tell it from an operator's migration in
/// progress and leaves it to its driver, serving it through ASK; nobody drives it any
/// more, so the test finishes it as an operator would, with `slotguard migrate`. Returns
/// where it went, or `None` when the proxy settled the slot itself.
async fn finish_whole_migration(h: &Harness, slot: u16) -> Option<String> {
    let mut whole_since: Option<(Instant, String)> = None;
    let deadline = Instant::now() + Duration::from_secs(15);
    while Instant::now() < deadline {
        let status = h.proxy.proxy.routing.status.load();
        let decision = status.decisions.iter().find(|d| d.slot == slot);
        match decision.map(|d| &d.state) {
            None if !open_anywhere(h, slot).await => return None,
            None => whole_since = None,
            Some(State::Migrating { to, .. }) => {
                let since = whole_since.get_or_insert_with(|| (Instant::now(), to.clone()));
                if since.1 == *to && since.0.elapsed() >= Duration::from_secs(3) {
                    let seed = h.cluster.nodes.iter().find(|n| n.pid().is_some()).unwrap();
                    let args = [
                        "migrate",
                        "--seed",
                        &seed.addr(),
                        "--slots",
                        &slot.to_string(),
                        "--to",
                        to,
                    ];
                    let (code, text) = slotguard(&args);
                    assert_eq!(code, 0, "slotguard migrate: {text}");
                    eprintln!(
                        "REPORT | a whole migration left after the fault, finished to {}",
                        &to[..8]
                    );
                    return Some(to.clone());
                }
            }
            Some(_) => whole_since = None,
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    None
}

/// True when a running node shows the slot migrating or importing.
async fn open_anywhere(h: &Harness, slot: u16) -> bool {
    for node in h.cluster.nodes.iter().filter(|n| n.pid().is_some()) {
        let dial = slotguard::client::Dial::new(Duration::from_secs(1));
        let Ok(v) = slotguard::client::query(&node.addr(), &["CLUSTER", "NODES"], &dial).await
        else {
            return true; // not known yet
        };
        let lines = slotguard::cluster::nodes::parse(v.as_str().unwrap_or_default(), "127.0.0.1");
        let me = lines.unwrap_or_default().into_iter().find(|l| l.myself);
        let open = |l: &slotguard::cluster::nodes::NodeLine| {
            l.migrating
                .iter()
                .chain(&l.importing)
                .any(|(s, _)| *s == slot)
        };
        if me.is_none_or(|l| open(&l)) {
            return true;
        }
    }
    false
}

/// Waits until the proxy holds the slot because the migration's target is down.
async fn wait_held_for_target(h: &Harness, slot: u16) {
    let waiting = |d: &Decision| {
        matches!(
            &d.state,
            State::Orphaned {
                why: Orphan::TargetShardDown { .. } | Orphan::Unbound
            }
        )
    };
    let what = "the proxy holds the slot while its target is failed";
    common::wait_decision(h, slot, Duration::from_secs(30), waiting, what).await;
}

use Missed::{FasterThanRefresh, StartedAfter};
use Owner::{ReplicaOf, Source, Target};

macro_rules! unseen_tests {
    ($($after:ident, $fast:ident: $name:literal, $moved:expr, $fault:expr, $owner:expr;)*) => {$(
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $after() {
            unseen(concat!($name, " unseen, proxy started after"), $moved, $fault, $owner, StartedAfter).await;
        }

        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $fast() {
            unseen(concat!($name, " unseen, faster than a refresh"), $moved, $fault, $owner, FasterThanRefresh).await;
        }
    )*};
}

unseen_tests! {
    s1_unseen_started_after, s1_unseen_faster: "S1", 100, Fault::TargetDownNoFailover, Target;
    s2_unseen_started_after, s2_unseen_faster: "S2", 100, Fault::Kill(1), ReplicaOf(1);
    s3_unseen_started_after, s3_unseen_faster: "S3", 100, Fault::ManualFailover(1), ReplicaOf(1);
    s4_unseen_started_after, s4_unseen_faster: "S4", 100, Fault::Kill(0), Target;
    s5_unseen_started_after, s5_unseen_faster: "S5", 100, Fault::ManualFailover(0), Target;
    s6_unseen_started_after, s6_unseen_faster: "S6", 200, Fault::Kill(0), Target;
    s7_unseen_started_after, s7_unseen_faster: "S7", 100, Fault::KillBothEnds, ReplicaOf(0);
    s9_unseen_started_after, s9_unseen_faster: "S9", 200, Fault::FinalizeAndCrash, ReplicaOf(1);
    s12_unseen_started_after, s12_unseen_faster: "S12", 100, Fault::CutMigrateThenKill, Target;
    s13_unseen_started_after, s13_unseen_faster: "S13", 100, Fault::AbortOnSource, Source;
    s14_unseen_started_after, s14_unseen_faster: "S14", 0, Fault::StrayCopies, Source;
    s15_unseen_started_after, s15_unseen_faster: "S15", 100, Fault::Kill(0), Target;
}

/// S1: the target is killed mid-migration, its replica may not fail over, and it restarts
/// (persistence on) with `[x-<-A]` from nodes.conf. Requests for moved keys wait for it;
/// then the proxy finishes the migration, which nobody drives any more.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s1_target_restarts_without_failover_and_the_migration_is_finished() {
    let options = Options {
        extra_args: vec![
            ("appendonly".into(), "yes".into()),
            ("appendfsync".into(), "always".into()),
        ],
        ..Options::default()
    };
    let (mut h, setup) = migrating_with(100, options, |c| c.promote = Promote::Any).await;
    let replica = h.cluster.nodes[1 + h.cluster.options.masters].addr();
    call(
        &replica,
        &["CONFIG", "SET", "cluster-replica-no-failover", "yes"],
    )
    .await;
    let load = Load::start(h.url(), setup.written()).await;
    let at = Instant::now();
    h.cluster.nodes[1].kill();
    // The cluster fails it, and the proxy sees the migration lost its target.
    wait_held_for_target(&h, setup.slot).await;
    h.cluster.restart(1).await.unwrap();
    let report = load.finish().await;
    conclude(
        "S1 target restarted, no failover",
        &h,
        &report,
        &setup,
        &setup.target,
        at,
        false,
    )
    .await;
    restore_and_check(&mut h, &[], &report, &setup).await;
}

/// S14: a master restarts holding keys of a slot it does not own (copies left by an
/// aborted import). On load it marks itself importing the slot from its owner; the proxy
/// gives the keys back without replacing the owner's, and closes the slot.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s14_a_master_restarts_holding_keys_of_a_slot_it_does_not_own() {
    let options = Options {
        extra_args: vec![("appendonly".into(), "yes".into())],
        ..Options::default()
    };
    let (mut h, setup) = migrating_with(0, options, |c| c.promote = Promote::Any).await;
    let (a, b) = (h.cluster.nodes[0].addr(), h.cluster.nodes[1].addr());
    let source = node_id(&a).await;
    let s = setup.slot.to_string();
    // Copies of some keys reach B, then the import is aborted on both sides.
    let (host, port) = b.rsplit_once(':').unwrap();
    let mut copy = vec!["MIGRATE", host, port, "", "0", "5000", "COPY", "KEYS"];
    copy.extend(setup.keys.iter().take(20).map(String::as_str));
    call(&a, &copy).await;
    for on in [&a, &b] {
        call(on, &["CLUSTER", "SETSLOT", &s, "STABLE"]).await;
    }
    let replica = h.cluster.nodes[1 + h.cluster.options.masters].addr();
    call(
        &replica,
        &["CONFIG", "SET", "cluster-replica-no-failover", "yes"],
    )
    .await;
    let (report, at) = writers_around(&h, &setup, async {}).await;
    h.cluster.restart(1).await.unwrap();
    let owned_elsewhere = call(&b, &["CLUSTER", "COUNTKEYSINSLOT", &s]).await;
    // Valkey deletes, as it loads them, keys of a slot another node owns (S14 cannot
    // arise there); Redis 7 keeps them, and flags the slot importing.
    let reloaded = if slotguard::localcluster::is_valkey() {
        0
    } else {
        20
    };
    assert_eq!(
        owned_elsewhere.as_int(),
        Some(reloaded),
        "B reloaded its copies"
    );
    let (after, _) = writers_around(&h, &setup, async {}).await;
    conclude(
        "S14 a master restarts with stray keys",
        &h,
        &after,
        &setup,
        &source,
        at,
        false,
    )
    .await;
    assert!(report.errors.is_empty());
    restore_and_check(&mut h, &[], &after, &setup).await;
}
