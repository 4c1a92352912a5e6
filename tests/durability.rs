//! Acknowledged means it survives (`durability.ack = "replicated"`), and no write is
//! applied twice when a connection breaks with it in flight.

mod common;

use std::time::Duration;

use common::{tag_on, Harness, Raw};
use slotguard::config::{Ack, Config};
use slotguard::localcluster::Options;

async fn start(ack: Ack) -> Harness {
    let options = Options {
        masters: 3,
        replicas_per_master: 1,
        ..Options::default()
    };
    Harness::start_with(options, |c: &mut Config| c.ack = ack).await
}

/// The replica of master `i` (the harness starts master `i`'s replica as node `i + 3`).
async fn replica_of(h: &Harness, i: usize) -> redis::aio::MultiplexedConnection {
    let mut replica = h.direct(&h.cluster.nodes[i + 3].addr()).await;
    let () = redis::cmd("READONLY")
        .query_async(&mut replica)
        .await
        .unwrap();
    replica
}

/// Every INCR the proxy acknowledged is on the replica when the client hears of it: the
/// master may die at any moment after and the promoted replica has it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replicated_ack_means_the_replica_has_the_write() {
    let h = start(Ack::Replicated).await;
    let status = slotguard::admin::status(&h.proxy.proxy);
    assert_eq!(status["durability"]["ack"], "replicated");
    // Once the proxy has seen every replica up, no master is left unprotected.
    slotguard::localcluster::wait_for(Duration::from_secs(10), || {
        let status = slotguard::admin::status(&h.proxy.proxy);
        let none = status["durability"]["masters_without_replica"] == serde_json::json!([]);
        async move { none }
    })
    .await
    .expect("every master has its replica");
    let key = format!("{}counter", tag_on(0));
    let mut c = h.client().await;
    let mut replica = replica_of(&h, 0).await;
    for expected in 1..=200i64 {
        let n: i64 = redis::cmd("INCR")
            .arg(&key)
            .query_async(&mut c)
            .await
            .unwrap();
        assert_eq!(n, expected);
        let there: i64 = redis::cmd("GET")
            .arg(&key)
            .query_async(&mut replica)
            .await
            .unwrap();
        assert_eq!(
            there, n,
            "the replica had write {n} when it was acknowledged"
        );
    }
    // Pipelines too: one WAIT per batch, every reply after it.
    let mut pipe = redis::pipe();
    for _ in 0..500 {
        pipe.cmd("INCR").arg(&key);
    }
    let replies: Vec<i64> = pipe.query_async(&mut c).await.unwrap();
    assert_eq!(replies.last(), Some(&700));
    let there: i64 = redis::cmd("GET")
        .arg(&key)
        .query_async(&mut replica)
        .await
        .unwrap();
    assert_eq!(there, 700);
    let master = common::call(&h.cluster.nodes[0].addr(), &["INFO", "commandstats"]).await;
    let stats = master.as_str().unwrap_or_default().to_string();
    let waits: u64 = stats
        .lines()
        .find_map(|l| l.strip_prefix("cmdstat_wait:calls="))
        .and_then(|rest| rest.split(',').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    assert!(
        (200..700).contains(&waits),
        "a WAIT per batch of writes, not per write: {waits}"
    );
}

/// A master dies while busy in a script. The script was read and was running: it may or
/// may not have applied its writes, the client is told so, and it is not sent twice. An
/// INCR queued behind it was never read (the node resets that connection): it cannot have
/// run, and is sent again to the promoted replica and answered once. A SET can run twice
/// without harm: it is sent again too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_in_flight_on_a_dying_master_is_never_applied_twice() {
    let mut h = start(Ack::Master).await;
    let tag = tag_on(0);
    let (counter, plain, scripted) = (format!("{tag}n"), format!("{tag}s"), format!("{tag}e"));
    let mut c = h.client().await;
    let () = redis::cmd("SET")
        .arg(&counter)
        .arg(10)
        .query_async(&mut c)
        .await
        .unwrap();
    // Replicated before the fault, so that the promoted replica starts from it.
    let _: i64 = redis::cmd("WAIT")
        .arg(1)
        .arg(5000)
        .query_async(&mut c)
        .await
        .unwrap();

    // The master runs a script for 3 s: what the proxy writes to it meanwhile stays unread.
    let mut script = Raw::connect(&h).await;
    script
        .send(&format!(
            "EVAL \"redis.call('incr', KEYS[1]) local t = redis.call('time')[1] while redis.call('time')[1] - t < 3 do end return 1\" 1 {scripted}\r\n"
        ))
        .await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut set = Raw::connect(&h).await;
    set.send(&format!("SET {plain} v\r\n")).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    // Written last: on whichever connection it travels, nothing follows it.
    let mut incr = Raw::connect(&h).await;
    incr.send(&format!("INCR {counter}\r\n")).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    h.cluster.nodes[0].kill();
    h.cluster.wait_promoted(0).await.unwrap();

    let answer = script.frame_within(Duration::from_secs(30)).await.unwrap();
    let text = String::from_utf8_lossy(&answer);
    assert!(
        text.starts_with("-ERR slotguard: the connection to ")
            && text.contains("may or may not have been applied")
            && text.contains("not sent again"),
        "{text}"
    );
    assert_eq!(
        &incr.frame_within(Duration::from_secs(30)).await.unwrap()[..],
        b":11\r\n"
    );
    assert_eq!(
        &set.frame_within(Duration::from_secs(30)).await.unwrap()[..],
        b"+OK\r\n"
    );
    // Applied once: the dead master never read it; the promoted replica ran it once.
    let n: i64 = redis::cmd("GET")
        .arg(&counter)
        .query_async(&mut c)
        .await
        .unwrap();
    assert_eq!(n, 11);
    assert_eq!(h.proxy.proxy.metrics.writes_not_retried.get(), 1);
    // The promoted replica has no replica of its own: /status names it.
    let heir = h.cluster.nodes[3].addr();
    slotguard::localcluster::wait_for(Duration::from_secs(10), || {
        let status = slotguard::admin::status(&h.proxy.proxy);
        let listed = status["durability"]["masters_without_replica"] == serde_json::json!([heir]);
        async move { listed }
    })
    .await
    .expect("the unprotected master is listed");
    h.cluster.restart(0).await.unwrap();
    h.cluster
        .wait_healthy(Duration::from_secs(30))
        .await
        .unwrap();
    h.cluster_check().unwrap();
}
