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
    let waits = common::command_stat(&h.cluster.nodes[0].addr(), "wait", "calls").await;
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

/// A write that must not run twice, in flight when its connection broke after the node
/// ran it: its reply is lost with the connection. With `ack = "master"` the client hears
/// that it may or may not have been applied. With `ack = "replicated"` it travelled as a
/// script that runs it once: sent again, it answers the reply of its first run, and the
/// counter moved once.
///
/// The node is stopped while the INCR, and then a `CLIENT KILL` of the proxy's
/// connections, reach it: continued, it reads both in one turn of its loop and, when it
/// reads the INCR first, runs it and frees the proxy's connection before writing the
/// reply. Read the other way round, the INCR never ran and is simply sent again; so the
/// fault is repeated until the INCR ran, and every round must count once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_whose_reply_was_lost_is_answered_once() {
    for ack in [Ack::Master, Ack::Replicated] {
        let h = start(ack).await;
        let node = h.cluster.nodes[0].addr();
        let mut client = Raw::connect(&h).await;
        let mut ran_then_lost = false;
        for round in 0..8 {
            let counter = format!("{}n{round}", tag_on(0));
            assert_eq!(
                &client.ask(&format!("SET {counter} 9\r\n")).await[..],
                b"+OK\r\n"
            );
            // The first INCR also has the node learn the script (NOSCRIPT, then loaded).
            let first = client.ask(&format!("INCR {counter}\r\n")).await;
            assert_eq!(&first[..], b":10\r\n");
            let runs_before = script_runs(&node).await;
            let mut killer = Raw::connect_to(&node).await;
            h.cluster.nodes[0].signal("STOP").unwrap();
            client.send(&format!("INCR {counter}\r\n")).await;
            tokio::time::sleep(Duration::from_millis(300)).await;
            killer.send("CLIENT KILL TYPE normal SKIPME yes\r\n").await;
            tokio::time::sleep(Duration::from_millis(200)).await;
            h.cluster.nodes[0].signal("CONT").unwrap();
            // Once CLIENT KILL is answered it ran: a connection opened after it is not
            // killed (Valkey's I/O threads may run it after the proxy's INCR is answered).
            let killed = killer.frame_within(Duration::from_secs(30)).await;
            assert!(killed.is_some(), "CLIENT KILL is answered");
            let reply = client.frame_within(Duration::from_secs(30)).await.unwrap();
            let reply = String::from_utf8_lossy(&reply).into_owned();
            let n = common::call(&node, &["GET", &counter]).await;
            assert_eq!(n.as_int(), Some(11), "the INCR ran once ({ack:?})");
            match ack {
                Ack::Master if reply == ":11\r\n" => {} // never read: sent again
                Ack::Master => {
                    assert!(
                        reply.contains("may or may not have been applied"),
                        "{reply}"
                    );
                    ran_then_lost = true;
                }
                Ack::Replicated => {
                    assert_eq!(reply, ":11\r\n");
                    // Run, then answered from its marker; or run once, never read before.
                    let runs = script_runs(&node).await - runs_before;
                    assert!(matches!(runs, 1 | 2), "script runs: {runs}");
                    ran_then_lost = runs == 2;
                }
            }
            if ran_then_lost {
                break;
            }
        }
        assert!(
            ran_then_lost,
            "the INCR ran and lost its reply in some round ({ack:?})"
        );
    }
}

/// How many `EVALSHA`s the node at `addr` ran without an error.
async fn script_runs(addr: &str) -> u64 {
    let calls = common::command_stat(addr, "evalsha", "calls").await;
    calls - common::command_stat(addr, "evalsha", "failed_calls").await
}

/// In replicated mode the writes that must not run twice travel as a script; what the
/// client reads is byte for byte what the node answers for the write itself, in RESP2
/// and RESP3, errors included.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_run_once_answers_as_the_node_does() {
    let h = start(Ack::Replicated).await;
    let node = h.cluster.nodes[0].addr();
    let tag = tag_on(0);
    let cases = [
        "INCR K",
        "INCRBY K 5",
        "DECR K",
        "DECRBY K 2",
        "INCRBYFLOAT F 1.5",
        "APPEND S abc",
        "INCR S",
        "LPUSH S x",
        "SETNX T v",
        "SETNX T v",
        "SET T w NX",
        "SET T w XX GET",
        "SET U w NX",
        "GETSET T z",
        "GETDEL T",
        "GETDEL T",
        "RPUSH Q a b c",
        "LPUSHX Q z",
        "RPUSHX Q9 z",
        "LINSERT Q BEFORE a y",
        "LPOP Q",
        "RPOP Q",
        "RPOPLPUSH Q Q2",
        "LMOVE Q Q2 LEFT RIGHT",
        "LPOP Q9",
        "HINCRBY H f 2",
        "HINCRBYFLOAT H g 0.5",
        "HSETNX H f 1",
        "SPOP Z",
        "XADD X 1-1 f v",
        "XADD X 1-1 f v",
        "XADD X2 NOMKSTREAM 1-1 f v",
    ];
    for resp3 in [false, true] {
        let mut proxy = Raw::connect(&h).await;
        let mut direct = Raw::connect_to(&node).await;
        if resp3 {
            proxy.ask("HELLO 3\r\n").await;
            direct.ask("HELLO 3\r\n").await;
        }
        for case in cases {
            let with = |side: &str| {
                let mut out = String::new();
                for word in case.split(' ') {
                    let word = match word {
                        "K" | "F" | "S" | "T" | "U" | "Q" | "Q2" | "Q9" | "H" | "Z" | "X"
                        | "X2" => format!("{tag}{side}{resp3}{word}"),
                        w => w.to_string(),
                    };
                    out.push_str(&format!("${}\r\n{word}\r\n", word.len()));
                }
                format!("*{}\r\n{out}", case.split(' ').count())
            };
            let through = proxy.ask(&with("p")).await;
            let there = direct.ask(&with("d")).await;
            assert_eq!(
                String::from_utf8_lossy(&through),
                String::from_utf8_lossy(&there),
                "{case} (RESP{})",
                if resp3 { 3 } else { 2 }
            );
        }
    }
    // They did travel as scripts: one marker per write, on the node and on its replica.
    let stats = common::call(&node, &["INFO", "commandstats"]).await;
    let stats = stats.as_str().unwrap_or_default().to_string();
    assert!(stats.contains("cmdstat_evalsha:"), "{stats}");
    let markers = common::call(&node, &["KEYS", "*slotguard:once:*"]).await;
    let markers = markers.as_array().map(|a| a.len()).unwrap_or(0);
    assert!(markers >= 40, "markers on the master: {markers}");
}

/// Reads `key` on the node at `addr`, a replica or a master.
async fn read_on(addr: &str, key: &str) -> Option<String> {
    let mut conn = Raw::connect_to(addr).await;
    conn.ask("READONLY\r\n").await;
    let reply = conn.ask(&format!("GET {key}\r\n")).await;
    let text = String::from_utf8_lossy(&reply).into_owned();
    text.strip_prefix('$')
        .and_then(|rest| rest.split("\r\n").nth(1))
        .map(String::from)
}

/// A master that lost its last replica holds its writes (and its reads, which could see
/// them) until a replica has them: a write acknowledged on it alone would be lost with it. Its old master comes back as its
/// replica, syncs, and only then is the write acknowledged; the master dies next, and the
/// write is on the node that takes over. Without a replica back within `hold.timeout`
/// (read live: it is shortened by a reload), the client hears that the write is on the
/// master alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_master_without_a_replica_holds_writes_until_one_has_them() {
    let mut h = start(Ack::Replicated).await;
    let tag = tag_on(0);
    let (kept, alone) = (format!("{tag}kept"), format!("{tag}alone"));
    h.cluster.nodes[0].kill();
    h.cluster.wait_promoted(0).await.unwrap();
    let heir = h.cluster.nodes[3].addr();

    let mut writer = Raw::connect(&h).await;
    writer.send(&format!("SET {kept} v1\r\n")).await;
    assert_eq!(
        writer.frame_within(Duration::from_secs(2)).await,
        None,
        "a write acknowledged on a master with no replica"
    );
    h.cluster.restart(0).await.unwrap();
    let reply = writer.frame_within(Duration::from_secs(30)).await;
    assert_eq!(reply.as_deref(), Some(&b"+OK\r\n"[..]));
    assert_eq!(
        read_on(&h.cluster.nodes[0].addr(), &kept).await.as_deref(),
        Some("v1"),
        "acknowledged once the returning replica had it"
    );
    h.cluster.nodes[3].kill();
    h.cluster
        .wait_healthy(Duration::from_secs(30))
        .await
        .unwrap();
    let survivor = h.cluster.nodes[0].addr();
    assert_eq!(
        read_on(&survivor, &kept).await.as_deref(),
        Some("v1"),
        "the write survived its master"
    );

    // The new master is alone again, and the hold is shortened by a reload: a write, and
    // a read (which could see an unconfirmed write), are answered that no replica has
    // confirmed what the master holds.
    let config = Config {
        hold_timeout: Duration::from_secs(2),
        ..h.proxy.proxy.config().as_ref().clone()
    };
    assert!(h.proxy.proxy.reload(config).is_empty());
    let reply = writer.ask(&format!("SET {alone} v2\r\n")).await;
    let text = String::from_utf8_lossy(&reply);
    assert!(
        text.starts_with(&format!(
            "-ERR slotguard: applied on the master {survivor} but not confirmed by its replicas"
        )),
        "{text}"
    );
    assert_eq!(read_on(&survivor, &alone).await.as_deref(), Some("v2"));
    let reply = writer.ask(&format!("GET {kept}\r\n")).await;
    let text = String::from_utf8_lossy(&reply);
    assert!(
        text.starts_with(&format!("-ERR slotguard: read on the master {survivor}")),
        "{text}"
    );
    h.cluster.restart(3).await.unwrap();
    h.cluster
        .wait_healthy(Duration::from_secs(30))
        .await
        .unwrap();
    let _ = heir;
    common::assert_clean(&h.cluster).await;
}

/// `n` SETs of `key`, one at a time.
async fn sets(c: &mut redis::aio::MultiplexedConnection, key: &str, n: usize) {
    for i in 0..n {
        let () = redis::cmd("SET")
            .arg(key)
            .arg(i)
            .query_async(c)
            .await
            .unwrap();
    }
}

/// `ack` changed by a reload is in force on the connections that exist: the writes after
/// it are each followed by a `WAIT`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_to_replicated_waits_on_connections_that_exist() {
    let h = start(Ack::Master).await;
    let node = h.cluster.nodes[0].addr();
    let key = format!("{}r", tag_on(0));
    let mut c = h.client().await;
    sets(&mut c, &key, 50).await;
    assert_eq!(common::command_stat(&node, "wait", "calls").await, 0);
    let config = Config {
        ack: Ack::Replicated,
        ..h.proxy.proxy.config().as_ref().clone()
    };
    assert!(h.proxy.proxy.reload(config).is_empty());
    sets(&mut c, &key, 50).await;
    let waits = common::command_stat(&node, "wait", "calls").await;
    assert!(waits >= 50, "one WAIT per write after the reload: {waits}");
    // What connections copied when they were made is named, not silently dropped.
    let config = Config {
        connect_timeout: Duration::from_secs(3),
        ..h.proxy.proxy.config().as_ref().clone()
    };
    assert_eq!(h.proxy.proxy.reload(config), ["backend.connect_timeout"]);
}

/// A client that connects before the proxy has its first slot map (its seed is slow to
/// answer) waits for it: a command for every master is answered as it would be a moment
/// later, not with "no master is known yet".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_before_the_first_slot_map_wait_for_it() {
    let cluster = slotguard::localcluster::LocalCluster::start(Options {
        masters: 3,
        replicas_per_master: 0,
        ..Options::default()
    })
    .await
    .unwrap();
    let seed = &cluster.nodes[0];
    seed.signal("STOP").unwrap();
    let proxy = slotguard::server::start(Config {
        listen: "127.0.0.1:0".parse().unwrap(),
        seeds: vec![seed.addr()],
        ..Config::default()
    })
    .await
    .unwrap();
    let mut early = Raw::connect_to(&proxy.addr.to_string()).await;
    early.send("DBSIZE\r\n").await;
    early.send(&format!("SET {}k v\r\n", tag_on(1))).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    seed.signal("CONT").unwrap();
    let dbsize = early.frame_within(Duration::from_secs(20)).await;
    assert_eq!(dbsize.as_deref(), Some(&b":0\r\n"[..]));
    let set = early.frame_within(Duration::from_secs(20)).await;
    assert_eq!(set.as_deref(), Some(&b"+OK\r\n"[..]));
}

/// A read sees only what a replica has: while the master's replica is stopped, another
/// client's write is applied on the master but not confirmed, and a read of that key
/// through the proxy waits (answered at once, it would show a write that a failover can
/// still lose). Once the replica has it, both are answered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_waits_until_what_it_saw_is_on_a_replica() {
    let h = start(Ack::Replicated).await;
    let key = format!("{}dirty", tag_on(0));
    let mut writer = Raw::connect(&h).await;
    let mut reader = Raw::connect(&h).await;
    assert_eq!(
        &writer.ask(&format!("SET {key} v1\r\n")).await[..],
        b"+OK\r\n"
    );
    h.cluster.nodes[3].signal("STOP").unwrap();
    writer.send(&format!("SET {key} v2\r\n")).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    reader.send(&format!("GET {key}\r\n")).await;
    let early = reader.frame_within(Duration::from_secs(1)).await;
    h.cluster.nodes[3].signal("CONT").unwrap();
    assert_eq!(early, None, "a read of a write no replica has");
    let read = reader.frame_within(Duration::from_secs(15)).await;
    assert_eq!(read.as_deref(), Some(&b"$2\r\nv2\r\n"[..]));
    let wrote = writer.frame_within(Duration::from_secs(15)).await;
    assert_eq!(wrote.as_deref(), Some(&b"+OK\r\n"[..]));
}

/// A write sent again to the master that ran it waits for the replica like the first
/// try: the marker the script finds there says the write ran, not that a replica has it.
/// The replica is stopped, an INCR runs on the master and is held for it, and the proxy's
/// connections to the master are killed: the INCR is sent again on a new connection and
/// answered from its marker. That answer must wait for the replica. (Answered at once, as
/// it was: the new connection had written nothing, its `WAIT` asked for nothing, and a
/// failover then lost the acknowledged write; seed 213's lost append.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_sent_again_to_the_master_that_ran_it_waits_for_its_replica() {
    let h = start(Ack::Replicated).await;
    let node = h.cluster.nodes[0].addr();
    let counter = format!("{}again", tag_on(0));
    let mut client = Raw::connect(&h).await;
    assert_eq!(
        &client.ask(&format!("SET {counter} 9\r\n")).await[..],
        b"+OK\r\n"
    );
    assert_eq!(
        &client.ask(&format!("INCR {counter}\r\n")).await[..],
        b":10\r\n"
    );
    let runs_before = script_runs(&node).await;
    h.cluster.nodes[3].signal("STOP").unwrap();
    client.send(&format!("INCR {counter}\r\n")).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut killer = Raw::connect_to(&node).await;
    killer.send("CLIENT KILL TYPE normal SKIPME yes\r\n").await;
    assert!(killer.frame_within(Duration::from_secs(10)).await.is_some());
    let early = client.frame_within(Duration::from_secs(2)).await;
    let runs = script_runs(&node).await - runs_before;
    h.cluster.nodes[3].signal("CONT").unwrap();
    assert_eq!(runs, 2, "run, then answered from its marker");
    assert_eq!(early, None, "answered while no replica had the write");
    let reply = client.frame_within(Duration::from_secs(15)).await;
    assert_eq!(reply.as_deref(), Some(&b":11\r\n"[..]));
    let mut replica = replica_of(&h, 0).await;
    let on_replica: i64 = redis::cmd("GET")
        .arg(&counter)
        .query_async(&mut replica)
        .await
        .unwrap();
    assert_eq!(on_replica, 11);
}

/// A read waits for its replica even when what it saw was written past this proxy's
/// connection: by a client of the node itself, another proxy, or this one on another
/// connection. Valkey 9 counts in `WAIT` only the asking connection's
/// own writes, so the proxy writes a fence of its own before each `WAIT`; without it a
/// read on a connection that wrote nothing lately was answered at once (seed 213's stale
/// reads).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_waits_for_a_write_made_past_the_proxy_to_reach_a_replica() {
    let h = start(Ack::Replicated).await;
    let key = format!("{}past", tag_on(0));
    let mut reader = Raw::connect(&h).await;
    assert_eq!(
        &reader.ask(&format!("SET {key} v1\r\n")).await[..],
        b"+OK\r\n"
    );
    assert_eq!(
        &reader.ask(&format!("GET {key}\r\n")).await[..],
        b"$2\r\nv1\r\n"
    );
    h.cluster.nodes[3].signal("STOP").unwrap();
    let mut direct = Raw::connect_to(&h.cluster.nodes[0].addr()).await;
    assert_eq!(
        &direct.ask(&format!("SET {key} v2\r\n")).await[..],
        b"+OK\r\n"
    );
    reader.send(&format!("GET {key}\r\n")).await;
    let early = reader.frame_within(Duration::from_secs(1)).await;
    h.cluster.nodes[3].signal("CONT").unwrap();
    assert_eq!(early, None, "a read of a write no replica has");
    let read = reader.frame_within(Duration::from_secs(15)).await;
    assert_eq!(read.as_deref(), Some(&b"$2\r\nv2\r\n"[..]));
}

/// The fence goes to the master's lowest slot; while that slot is being moved the master
/// refuses it (ASK, once its key has gone to the target), and the next fence, in the
/// master's highest slot, keeps reads waiting for their replica. (With one fence the
/// `WAIT` counted only the connection's own writes for as long as the move lasted.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_stays_fenced_while_the_masters_lowest_slot_is_moved() {
    let h = start(Ack::Replicated).await;
    let (source, target) = (h.cluster.nodes[0].addr(), h.cluster.nodes[1].addr());
    let key = format!("{}moved", tag_on(0));
    let mut reader = Raw::connect(&h).await;
    assert_eq!(
        &reader.ask(&format!("SET {key} v1\r\n")).await[..],
        b"+OK\r\n"
    );
    assert_eq!(
        &reader.ask(&format!("GET {key}\r\n")).await[..],
        b"$2\r\nv1\r\n"
    );
    // Slot 0 (master 0's lowest) mid-move, its fence key already on the target.
    let fence = format!(
        "{{{}}}slotguard:fence",
        slotguard::protocol::slot::slot_tag(0)
    );
    assert_eq!(
        common::call(&source, &["EXISTS", &fence]).await.as_int(),
        Some(1)
    );
    let (source_id, target_id) = (
        common::node_id(&source).await,
        common::node_id(&target).await,
    );
    common::call(
        &target,
        &["CLUSTER", "SETSLOT", "0", "IMPORTING", &source_id],
    )
    .await;
    common::call(
        &source,
        &["CLUSTER", "SETSLOT", "0", "MIGRATING", &target_id],
    )
    .await;
    let (host, port) = target.rsplit_once(':').unwrap();
    let migrated = common::call(
        &source,
        &["MIGRATE", host, port, "", "0", "5000", "KEYS", &fence],
    )
    .await;
    assert_eq!(migrated.as_str(), Some("OK"), "{migrated:?}");
    h.cluster.nodes[3].signal("STOP").unwrap();
    let mut direct = Raw::connect_to(&source).await;
    assert_eq!(
        &direct.ask(&format!("SET {key} v2\r\n")).await[..],
        b"+OK\r\n"
    );
    reader.send(&format!("GET {key}\r\n")).await;
    let early = reader.frame_within(Duration::from_secs(1)).await;
    h.cluster.nodes[3].signal("CONT").unwrap();
    assert_eq!(early, None, "a read of a write no replica has");
    let read = reader.frame_within(Duration::from_secs(15)).await;
    assert_eq!(read.as_deref(), Some(&b"$2\r\nv2\r\n"[..]));
}

/// The role a node reports (`master` or `slave`).
async fn role(addr: &str) -> String {
    match common::call(addr, &["ROLE"]).await {
        slotguard::protocol::Value::Array(items) => items[0].as_str().unwrap().to_string(),
        other => panic!("ROLE on {addr}: {other:?}"),
    }
}

/// `cluster-replica-no-failover` on the node at `addr`; `None` while it does not answer.
async fn kept(addr: &str) -> Option<bool> {
    let mut c = slotguard::client::Conn::connect(addr, Duration::from_secs(2))
        .await
        .ok()?;
    let v = c
        .call_ok(&["CONFIG", "GET", "cluster-replica-no-failover"])
        .await
        .ok()?;
    Some(v.as_array()?.get(1)?.as_str()? == "yes")
}

/// S18 (FAULTS.md): a replica that moved to an orphaned master, as replica migration
/// moves one, still holds the shard it came from. When that master stops before the
/// replica has synced with it, the cluster elects the replica, and every key of the master
/// goes with the vote (the master wakes up as the replica of an empty copy). The proxy
/// keeps such a replica from standing until it has synced (`durability.promote`, whose
/// default this is): the master's slots wait for it instead, and it keeps its keys.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s18_a_replica_that_moved_to_an_orphaned_master_is_not_elected_before_it_syncs() {
    let mut h = start(Ack::Master).await;
    let tag = tag_on(2);
    let keys: Vec<String> = (0..200).map(|i| format!("{tag}k{i}")).collect();
    let mut c = h.client().await;
    for k in &keys {
        let () = redis::cmd("SET")
            .arg(k)
            .arg(k)
            .query_async(&mut c)
            .await
            .unwrap();
    }
    // Master 2 loses its replica (node 5), and master 0's replica (node 3), synced with
    // master 0 and seen so by the proxy since the harness started, moves to master 2 just
    // as master 2 stops: it cannot sync.
    h.cluster.nodes[5].kill();
    let (moved, orphan) = (h.cluster.nodes[3].addr(), h.cluster.nodes[2].addr());
    let orphan_id = common::node_id(&orphan).await;
    h.cluster.nodes[2].signal("STOP").unwrap();
    common::call(&moved, &["CLUSTER", "REPLICATE", &orphan_id]).await;
    // The node timeout (2 s), the failure reports and an election's delay: a replica
    // allowed to stand is elected well within this.
    tokio::time::sleep(Duration::from_secs(8)).await;
    let elected = role(&moved).await;
    // S19's shape too: master 2's own replica starts again (with no data: the nodes keep
    // none) while master 2 is still stopped. It cannot sync either, and is kept.
    let restarted = h.cluster.nodes[5].addr();
    h.cluster.restart(5).await.unwrap();
    let kept_both =
        slotguard::localcluster::wait_for(Duration::from_secs(10), || {
            let (moved, restarted) = (moved.clone(), restarted.clone());
            let status = slotguard::admin::status(&h.proxy.proxy);
            let shown = status["durability"]["replicas_kept_from_failover"] == 2;
            async move {
                shown && kept(&moved).await == Some(true) && kept(&restarted).await == Some(true)
            }
        })
        .await;
    h.cluster.nodes[2].signal("CONT").unwrap();
    assert_eq!(
        elected, "slave",
        "the moved replica was elected for master 2's slots"
    );
    kept_both.expect("the proxy keeps both replicas from standing while they cannot sync");

    // Master 2 kept every key, read through the proxy once it is back.
    for k in &keys {
        let v: String = redis::cmd("GET").arg(k).query_async(&mut c).await.unwrap();
        assert_eq!(&v, k);
    }
    // Synced with master 2, both may stand again.
    slotguard::localcluster::wait_for(Duration::from_secs(30), || {
        let (moved, restarted) = (moved.clone(), restarted.clone());
        async move { kept(&moved).await == Some(false) && kept(&restarted).await == Some(false) }
    })
    .await
    .expect("a synced replica may stand again");
    h.cluster
        .wait_healthy(Duration::from_secs(30))
        .await
        .unwrap();
    common::assert_clean(&h.cluster).await;
}

/// A replica an operator bars from failing over by hand keeps its bar when listed in
/// `durability.promote_exempt`; one not listed is the proxy's, and synced, is lifted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_in_promote_exempt_keeps_the_bar_its_operator_set() {
    let h = start(Ack::Master).await;
    let (exempt, owned) = (h.cluster.nodes[3].addr(), h.cluster.nodes[4].addr());
    let config = Config {
        promote_exempt: vec![exempt.clone()],
        ..h.proxy.proxy.config().as_ref().clone()
    };
    assert!(h.proxy.proxy.reload(config).is_empty());
    let bar = ["CONFIG", "SET", "cluster-replica-no-failover", "yes"];
    common::call(&exempt, &bar).await;
    common::call(&owned, &bar).await;
    slotguard::localcluster::wait_for(Duration::from_secs(10), || {
        let owned = owned.clone();
        async move { kept(&owned).await == Some(false) }
    })
    .await
    .expect("the synced replica the proxy owns is lifted");
    // Many looks later (one every 100 ms), the exempt one is as its operator left it.
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(kept(&exempt).await, Some(true));
}
