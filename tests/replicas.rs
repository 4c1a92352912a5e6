//! Reads from replicas (`backend.read_from`).

mod common;

use std::time::Duration;

use common::{call, tag_on, Harness};
use slotguard::config::ReadFrom;
use slotguard::localcluster::{wait_for, Options};

/// How many GETs the node at `addr` has run since its stats were reset.
async fn gets_on(addr: &str) -> u64 {
    common::command_stat(addr, "get", "calls").await
}

/// Waits until the replica at `addr` has `key` = `value`.
async fn replicated(addr: &str, key: &str, value: &str) {
    let (addr, key, value) = (addr.to_string(), key.to_string(), value.to_string());
    wait_for(Duration::from_secs(10), || {
        let (addr, key, value) = (addr.clone(), key.clone(), value.clone());
        async move {
            let mut c = slotguard::client::Conn::connect(&addr, Duration::from_secs(1))
                .await
                .unwrap();
            c.call_ok(&["READONLY"]).await.unwrap();
            let v = c.call_ok(&["GET", &key]).await.unwrap();
            v.as_str() == Some(value.as_str())
        }
    })
    .await
    .expect("the write reaches the replica");
}

async fn start(read_from: ReadFrom) -> Harness {
    Harness::start_with(
        Options {
            masters: 3,
            replicas_per_master: 1,
            node_timeout_ms: 1000,
            ..Options::default()
        },
        |c| c.read_from = read_from,
    )
    .await
}

/// Waits until the proxy's slot map lists a replica for master 0's slots.
async fn replicas_known(h: &Harness, slot: u16) {
    let p = h.proxy.proxy.clone();
    wait_for(Duration::from_secs(10), || {
        let known = p.table.load().replica(slot, 0).is_some();
        async move { known }
    })
    .await
    .expect("the proxy knows the replicas");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_go_to_replicas_and_fall_back_to_the_master() {
    let mut h = start(ReadFrom::PreferReplica).await;
    let key = format!("{}r", tag_on(0));
    let slot = slotguard::protocol::key_slot(key.as_bytes());
    replicas_known(&h, slot).await;
    let (master, replica) = (h.cluster.nodes[0].addr(), h.cluster.nodes[3].addr());
    let mut c = h.client().await;
    let () = redis::cmd("SET")
        .arg(&key)
        .arg("v")
        .query_async(&mut c)
        .await
        .unwrap();
    replicated(&replica, &key, "v").await;
    for addr in [&master, &replica] {
        call(addr, &["CONFIG", "RESETSTAT"]).await;
    }
    for _ in 0..20 {
        let v: String = redis::cmd("GET")
            .arg(&key)
            .query_async(&mut c)
            .await
            .unwrap();
        assert_eq!(v, "v");
    }
    assert_eq!(gets_on(&master).await, 0, "no read reached the master");
    assert_eq!(
        gets_on(&replica).await,
        20,
        "every read reached the replica"
    );
    // Writes still go to the master.
    let () = redis::cmd("SET")
        .arg(&key)
        .arg("w")
        .query_async(&mut c)
        .await
        .unwrap();

    // The replica dies: reads go on, served by the master, with no error.
    h.cluster.nodes[3].kill();
    for _ in 0..20 {
        let v: String = redis::cmd("GET")
            .arg(&key)
            .query_async(&mut c)
            .await
            .unwrap();
        assert_eq!(v, "w");
    }
    assert!(gets_on(&master).await > 0, "the master took the reads");
    h.cluster.restart(3).await.unwrap();
    h.cluster
        .wait_healthy(Duration::from_secs(30))
        .await
        .unwrap();
    h.cluster_check().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replica_mode_reads_only_from_replicas() {
    let h = start(ReadFrom::Replica).await;
    let keys: Vec<String> = (0..3).map(|i| format!("{}k", tag_on(i))).collect();
    let mut c = h.client().await;
    for k in &keys {
        replicas_known(&h, slotguard::protocol::key_slot(k.as_bytes())).await;
        let () = redis::cmd("SET")
            .arg(k)
            .arg(k)
            .query_async(&mut c)
            .await
            .unwrap();
    }
    for (i, k) in keys.iter().enumerate() {
        replicated(&h.cluster.nodes[i + 3].addr(), k, k).await;
    }
    for node in &h.cluster.nodes {
        call(&node.addr(), &["CONFIG", "RESETSTAT"]).await;
    }
    for k in &keys {
        let v: String = redis::cmd("GET").arg(k).query_async(&mut c).await.unwrap();
        assert_eq!(&v, k);
    }
    for (i, node) in h.cluster.nodes.iter().enumerate() {
        let gets = gets_on(&node.addr()).await;
        let expected = if i < 3 { 0 } else { 1 };
        assert_eq!(gets, expected, "GETs on node {i}");
    }
}
