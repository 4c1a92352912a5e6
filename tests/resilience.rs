//! Topology changes under load: clients of the proxy see no error and lose no write.

mod common;

use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::{assert_unharmed, keys_in_slots, resp, writers, Harness};
use slotguard::localcluster::wait_for;

async fn node_id(h: &Harness, i: usize) -> String {
    let mut c = h.direct(&h.cluster.nodes[i].addr()).await;
    redis::cmd("CLUSTER")
        .arg("MYID")
        .query_async(&mut c)
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reshard_under_load_is_invisible_to_clients() {
    let h = Harness::start(3, 0).await;
    let from = node_id(&h, 0).await;
    let to = node_id(&h, 1).await;
    // redis-cli moves the source's lowest slots first: aim the writers at those.
    let mut keys = keys_in_slots("rs", 0..=299, 600);
    keys.extend(keys_in_slots("other", 0..=16383, 200));
    let stop = Arc::new(AtomicBool::new(false));
    let load = tokio::spawn(writers(h.url(), 8, keys, stop.clone()));
    tokio::time::sleep(Duration::from_millis(300)).await;

    let addr = h.cluster.nodes[0].addr();
    let reshard = tokio::task::spawn_blocking(move || {
        Command::new("redis-cli")
            .args(["--cluster", "reshard", &addr])
            .args(["--cluster-from", &from, "--cluster-to", &to])
            .args(["--cluster-slots", "300", "--cluster-yes"])
            .output()
            .expect("redis-cli runs")
    })
    .await
    .unwrap();
    assert!(
        reshard.status.success(),
        "reshard failed: {}",
        String::from_utf8_lossy(&reshard.stdout)
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, Ordering::Relaxed);
    let report = load.await.unwrap();

    assert_unharmed(&h, &report, 1000, false).await;
    assert_eq!(
        h.owner_of(0).await,
        h.cluster.nodes[1].addr(),
        "slot 0 moved"
    );
    let absorbed = h.proxy.proxy.metrics.redirects_total();
    assert!(
        absorbed > 0,
        "the writers met the migration (ASK/MOVED absorbed: {absorbed})"
    );
    h.cluster_check().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_master_fails_over_without_client_errors() {
    let mut h = Harness::start(3, 1).await;
    // Half the keys on the master that will die, half anywhere.
    let mut keys = keys_in_slots("ko", 0..=5460, 300);
    keys.extend(keys_in_slots("any", 0..=16383, 300));
    let stop = Arc::new(AtomicBool::new(false));
    let load = tokio::spawn(writers(h.url(), 8, keys, stop.clone()));
    tokio::time::sleep(Duration::from_millis(500)).await;

    let victim = h.cluster.nodes[0].addr();
    h.cluster.nodes[0].kill();
    // Wait until the cluster itself has promoted the replica.
    let survivor = h.cluster.nodes[1].addr();
    wait_for(Duration::from_secs(30), || {
        let survivor = survivor.clone();
        let victim = victim.clone();
        async move {
            let Ok(reply) = slotguard::client::query(
                &survivor,
                &["CLUSTER", "NODES"],
                &slotguard::client::Dial::new(Duration::from_secs(1)),
            )
            .await
            else {
                return false;
            };
            let text = reply.as_str().unwrap_or_default().to_string();
            text.lines()
                .any(|l| l.contains(&victim) && l.contains("fail") && !l.contains("fail?"))
                && text
                    .lines()
                    .filter(|l| {
                        l.contains("master") && !l.contains("fail") && l.split(' ').count() > 8
                    })
                    .count()
                    == 3
        }
    })
    .await
    .expect("the replica is promoted");
    tokio::time::sleep(Duration::from_secs(1)).await;
    stop.store(true, Ordering::Relaxed);
    let report = load.await.unwrap();

    assert_unharmed(&h, &report, 500, false).await;
    let parked = h.proxy.proxy.metrics.held_total.get();
    assert!(
        parked > 0,
        "requests waited out the failover ({parked} parked)"
    );

    // The old master comes back as a replica; the cluster is whole again.
    h.cluster.restart(0).await.unwrap();
    h.cluster
        .wait_healthy(Duration::from_secs(30))
        .await
        .unwrap();
    h.cluster_check().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_seed_is_skipped() {
    let dead = format!(
        "127.0.0.1:{}",
        slotguard::localcluster::free_port().unwrap()
    );
    let h = Harness::tuned(|c| c.seeds.insert(0, dead)).await;
    let mut c = h.client().await;
    let () = redis::cmd("SET")
        .arg("seeded")
        .arg("yes")
        .query_async(&mut c)
        .await
        .unwrap();
    let v: String = redis::cmd("GET")
        .arg("seeded")
        .query_async(&mut c)
        .await
        .unwrap();
    assert_eq!(v, "yes");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_master_fails_over_without_client_errors() {
    let h = Harness::start(3, 1).await;
    let mut keys = keys_in_slots("st", 0..=5460, 300);
    keys.extend(keys_in_slots("any", 0..=16383, 100));
    let stop = Arc::new(AtomicBool::new(false));
    let load = tokio::spawn(writers(h.url(), 8, keys, stop.clone()));
    tokio::time::sleep(Duration::from_millis(500)).await;

    // SIGSTOP: the master keeps its connections open and answers nothing.
    h.cluster.nodes[0].signal("STOP").unwrap();
    h.cluster
        .wait_promoted(0)
        .await
        .expect("the replica is promoted");
    tokio::time::sleep(Duration::from_secs(2)).await;
    stop.store(true, Ordering::Relaxed);
    let report = load.await.unwrap();

    assert_unharmed(&h, &report, 500, false).await;
    eprintln!(
        "REPORT | SIGSTOP of a master | writes {} | client errors 0 | longest stall {:.2}s",
        report.writes,
        report.longest.as_secs_f64()
    );

    // It wakes up as a replica of its successor; the cluster is whole again.
    h.cluster.nodes[0].signal("CONT").unwrap();
    h.cluster
        .wait_healthy(Duration::from_secs(30))
        .await
        .unwrap();
    h.cluster_check().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transactions_wait_out_a_failover_and_run_whole() {
    let mut h = Harness::start(3, 1).await;
    // A hash tag on node 0's slots: both keys of each transaction share it.
    let key = (0..)
        .map(|i| format!("{{tx{i}}}"))
        .find(|k| slotguard::protocol::key_slot(k.as_bytes()) <= 5460)
        .unwrap();
    let url = h.url();
    let stop = Arc::new(AtomicBool::new(false));
    let flag = stop.clone();
    let k = key.clone();
    let load = tokio::spawn(async move {
        let mut c = redis::Client::open(url)
            .unwrap()
            .get_multiplexed_async_connection()
            .await
            .unwrap();
        let (mut acked, mut errors) = (0i64, Vec::new());
        while !flag.load(Ordering::Relaxed) {
            let before = errors.len();
            let r: redis::RedisResult<(i64, i64)> = redis::pipe()
                .atomic()
                .cmd("INCR")
                .arg(&k)
                .cmd("INCR")
                .arg(format!("{k}:shadow"))
                .query_async(&mut c)
                .await;
            match r {
                Ok((a, b)) if a == b => acked += 1,
                // redis-rs reads an error reply to EXEC as a malformed transaction.
                Err(e) if e.kind() == redis::ErrorKind::ResponseError => {
                    errors.push(format!("ResponseError: {e}"))
                }
                Ok(other) => errors.push(format!("the two halves disagree: {other:?}")),
                Err(e) => errors.push(e.to_string()),
            }
            if errors.len() > before {
                // A proxy gone (the test failed) errs at once: yield, so that the
                // runtime can shut down rather than hang.
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
        (acked, errors)
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    h.cluster.nodes[0].kill();
    h.cluster.wait_promoted(0).await.unwrap();
    tokio::time::sleep(Duration::from_secs(1)).await;
    stop.store(true, Ordering::Relaxed);
    let (acked, errors) = load.await.unwrap();
    // Only a transaction written to the master as it died may fail: it may or may not
    // have run, and it is not sent twice (the proxy says so; redis-rs reports the error
    // reply to EXEC as a ResponseError).
    assert!(
        errors.len() <= 1 && errors.iter().all(|e| e.contains("ResponseError")),
        "{errors:?}"
    );
    assert!(acked > 50, "transactions ran: {acked}");
    let mut c = h.client().await;
    let n: i64 = redis::cmd("GET")
        .arg(&key)
        .query_async(&mut c)
        .await
        .unwrap();
    let shadow: i64 = redis::cmd("GET")
        .arg(format!("{key}:shadow"))
        .query_async(&mut c)
        .await
        .unwrap();
    assert_eq!(n, shadow, "every transaction ran whole or not at all");
    let in_doubt = errors.len() as i64;
    assert!(
        (acked..=acked + in_doubt).contains(&n),
        "every acknowledged transaction is in, none twice: {n} for {acked} acknowledged, {in_doubt} in doubt"
    );
    h.cluster.restart(0).await.unwrap();
    h.cluster
        .wait_healthy(Duration::from_secs(30))
        .await
        .unwrap();
    h.cluster_check().unwrap();
}

/// A transaction on a slot in migration, some of its keys moved already: the node would
/// answer ASK inside MULTI and discard it; the proxy holds the transaction until the slot
/// has moved, then runs it whole on the new owner. The client sees its results, no error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transaction_during_a_migration_waits_and_runs_whole() {
    let h = Harness::start(3, 0).await;
    let tag = common::tag_on(0);
    let slot = slotguard::protocol::key_slot(tag.as_bytes());
    let (moved, stays) = (format!("{tag}moved"), format!("{tag}stays"));
    let mut c = h.client().await;
    for k in [&moved, &stays] {
        let () = redis::cmd("SET")
            .arg(k)
            .arg(10)
            .query_async(&mut c)
            .await
            .unwrap();
    }
    let (a, b) = (h.cluster.nodes[0].addr(), h.cluster.nodes[1].addr());
    let (source, target) = (node_id(&h, 0).await, node_id(&h, 1).await);
    let s = slot.to_string();
    common::call(&b, &["CLUSTER", "SETSLOT", &s, "IMPORTING", &source]).await;
    common::call(&a, &["CLUSTER", "SETSLOT", &s, "MIGRATING", &target]).await;
    let (host, port) = b.rsplit_once(':').unwrap();
    common::call(&a, &["MIGRATE", host, port, &moved, "0", "5000"]).await;

    let tx = tokio::spawn({
        let url = h.url();
        let (moved, stays) = (moved.clone(), stays.clone());
        async move {
            let mut c = redis::Client::open(url)
                .unwrap()
                .get_multiplexed_async_connection()
                .await
                .unwrap();
            redis::pipe()
                .atomic()
                .cmd("INCR")
                .arg(&moved)
                .cmd("INCR")
                .arg(&stays)
                .query_async::<(i64, i64)>(&mut c)
                .await
        }
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        !tx.is_finished(),
        "the transaction waits for the slot to settle"
    );
    // Finish the migration: the last key, then the slot.
    common::call(&a, &["MIGRATE", host, port, &stays, "0", "5000"]).await;
    for addr in [&b, &a, &h.cluster.nodes[2].addr()] {
        common::call(addr, &["CLUSTER", "SETSLOT", &s, "NODE", &target]).await;
    }
    let result = tokio::time::timeout(Duration::from_secs(20), tx)
        .await
        .expect("the transaction completes")
        .unwrap();
    assert_eq!(result.expect("no error reaches the client"), (11, 11));
    h.cluster_check().unwrap();
}

/// Two masters of three stopped: the one left is no majority, so the cluster fails neither
/// over, and a request sent to one of them would wait for as long as it stays stopped. The
/// proxy answers it at `hold.timeout`: a read as a slot it cannot reach, a write that must
/// not run twice with what is known of it. Once the nodes wake, the key serves again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_to_a_node_no_majority_can_fail_over_is_answered_at_the_hold_timeout() {
    let h = Harness::tuned(|c| c.hold_timeout = Duration::from_secs(2)).await;
    let key = keys_in_slots("stuck", 0..=16383, 1).remove(0);
    let slot = slotguard::protocol::key_slot(key.as_bytes());
    let owner = h.owner_of(slot).await;
    let stopped: Vec<usize> = {
        let i = (0..3)
            .find(|&i| h.cluster.nodes[i].addr() == owner)
            .unwrap();
        vec![i, (i + 1) % 3]
    };
    let mut raw = common::Raw::connect(&h).await;
    assert_eq!(&raw.ask(&resp(&["SET", &key, "7"])).await[..], b"+OK\r\n");

    for &i in &stopped {
        h.cluster.nodes[i].signal("STOP").unwrap();
    }
    raw.send(&(resp(&["GET", &key]) + &resp(&["INCR", &key])))
        .await;
    let within = Duration::from_secs(15);
    let get = raw.frame_within(within).await;
    let incr = raw.frame_within(within).await;
    for &i in &stopped {
        h.cluster.nodes[i].signal("CONT").unwrap();
    }
    let text = |f: Option<bytes::Bytes>| f.map(|f| String::from_utf8_lossy(&f).into_owned());
    let (get, incr) = (text(get), text(incr));
    let get = get.expect("the GET is answered while its node is stopped");
    assert!(
        get.starts_with("-CLUSTERDOWN") && get.contains("hold.timeout"),
        "{get}"
    );
    let incr = incr.expect("the INCR is answered while its node is stopped");
    assert!(incr.contains("may or may not have been applied"), "{incr}");

    h.cluster
        .wait_healthy(Duration::from_secs(30))
        .await
        .unwrap();
    let mut c = h.client().await;
    let value: i64 = redis::cmd("GET")
        .arg(&key)
        .query_async(&mut c)
        .await
        .unwrap();
    assert!(value == 7 || value == 8, "{value}");
}
