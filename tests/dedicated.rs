//! Commands that need a connection of their own: blocking commands and WATCH.

mod common;

use std::time::Duration;

use common::{ask_raw, blpop_in_background, call, move_slot, tag_on, wait_dedicated, Harness};
use slotguard::localcluster::wait_for;
use slotguard::protocol::key_slot;
use tokio::net::TcpStream;

/// How many clients are blocked on the node at `addr`.
async fn blocked_on(addr: &str) -> usize {
    let info = call(addr, &["INFO", "clients"]).await;
    let text = info.as_str().unwrap_or_default().to_string();
    text.lines()
        .find_map(|l| l.strip_prefix("blocked_clients:"))
        .and_then(|n| n.trim().parse().ok())
        .expect("INFO clients has blocked_clients")
}

async fn wait_blocked(addr: &str, n: usize) {
    let addr = addr.to_string();
    wait_for(Duration::from_secs(10), || {
        let addr = addr.clone();
        async move { blocked_on(&addr).await == n }
    })
    .await
    .unwrap_or_else(|_| panic!("{n} clients blocked on {addr}"));
}

async fn ask(s: &mut TcpStream, req: impl AsRef<[u8]>, until: &[u8]) -> String {
    ask_raw(s, req.as_ref(), until).await
}

fn dedicated_gauge(h: &Harness) -> i64 {
    h.proxy.proxy.metrics.backend_dedicated_connections.get()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blocking_commands_run_on_a_connection_of_their_own() {
    let h = Harness::start(3, 0).await;
    let owner = h.cluster.nodes[0].addr();
    let t = tag_on(0);
    let list = format!("{t}list");

    let blocked = blpop_in_background(h.url(), &list);
    wait_blocked(&owner, 1).await;

    // Other clients' requests to the same node (one shared connection) are not stalled.
    let mut c = h.client().await;
    let mut pipe = redis::pipe();
    for i in 0..200 {
        pipe.cmd("SET").arg(format!("{t}:{i}")).arg(i).ignore();
    }
    pipe.cmd("GET").arg(format!("{t}:199"));
    let (last,): (i64,) = pipe.query_async(&mut c).await.unwrap();
    assert_eq!(last, 199);
    assert!(!blocked.is_finished(), "BLPOP waits for a push");

    let () = redis::cmd("RPUSH")
        .arg(&list)
        .arg("job")
        .query_async(&mut c)
        .await
        .unwrap();
    let got = tokio::time::timeout(Duration::from_secs(10), blocked)
        .await
        .expect("BLPOP returns once the list has an element")
        .unwrap()
        .unwrap();
    assert_eq!(got, (list.clone(), "job".to_string()));

    // A timeout answers nil, as Redis does.
    let none: Option<(String, String)> = redis::cmd("BLPOP")
        .arg(&list)
        .arg(0.1)
        .query_async(&mut c)
        .await
        .unwrap();
    assert_eq!(none, None);

    // More of the family, each answering at once because there is data.
    let () = redis::cmd("RPUSH")
        .arg(format!("{t}src"))
        .arg("a")
        .query_async(&mut c)
        .await
        .unwrap();
    let moved: String = redis::cmd("BLMOVE")
        .arg(format!("{t}src"))
        .arg(format!("{t}dst"))
        .arg("LEFT")
        .arg("RIGHT")
        .arg(0)
        .query_async(&mut c)
        .await
        .unwrap();
    assert_eq!(moved, "a");
    let () = redis::cmd("ZADD")
        .arg(format!("{t}z"))
        .arg(1)
        .arg("one")
        .query_async(&mut c)
        .await
        .unwrap();
    let popped: (String, String, String) = redis::cmd("BZPOPMIN")
        .arg(format!("{t}z"))
        .arg(0)
        .query_async(&mut c)
        .await
        .unwrap();
    assert_eq!(popped.1, "one");
    let _: String = redis::cmd("XADD")
        .arg(format!("{t}s"))
        .arg("*")
        .arg("f")
        .arg("v")
        .query_async(&mut c)
        .await
        .unwrap();
    let read: redis::Value = redis::cmd("XREAD")
        .arg("BLOCK")
        .arg(0)
        .arg("STREAMS")
        .arg(format!("{t}s"))
        .arg("0")
        .query_async(&mut c)
        .await
        .unwrap();
    assert!(
        matches!(read, redis::Value::Array(ref a) if a.len() == 1),
        "{read:?}"
    );
    let nothing: redis::Value = redis::cmd("XREAD")
        .arg("BLOCK")
        .arg(100)
        .arg("STREAMS")
        .arg(format!("{t}s"))
        .arg("$")
        .query_async(&mut c)
        .await
        .unwrap();
    assert_eq!(nothing, redis::Value::Nil);

    // Keys of two slots: refused before anything blocks.
    let err = redis::cmd("BLMOVE")
        .arg(format!("{t}src"))
        .arg(format!("{}dst", tag_on(1)))
        .arg("LEFT")
        .arg("RIGHT")
        .arg(0)
        .query_async::<redis::Value>(&mut c)
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some("CROSSSLOT"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blocked_client_that_disconnects_frees_its_connection() {
    let h = Harness::start(3, 0).await;
    let owner = h.cluster.nodes[1].addr();
    let list = format!("{}gone", tag_on(1));
    let mut s = TcpStream::connect(h.proxy.addr).await.unwrap();
    use tokio::io::AsyncWriteExt;
    s.write_all(format!("BLPOP {list} 0\r\n").as_bytes())
        .await
        .unwrap();
    wait_blocked(&owner, 1).await;
    wait_dedicated(&h, 1, "the blocked client has its own connection").await;
    drop(s);
    // The proxy closes the node's connection: the node unblocks and forgets the client.
    wait_blocked(&owner, 0).await;
    wait_dedicated(&h, 0, "the dedicated connection is closed").await;
    // Nothing was popped on the client's behalf.
    let mut c = h.client().await;
    let () = redis::cmd("RPUSH")
        .arg(&list)
        .arg("kept")
        .query_async(&mut c)
        .await
        .unwrap();
    let len: i64 = redis::cmd("LLEN")
        .arg(&list)
        .query_async(&mut c)
        .await
        .unwrap();
    assert_eq!(len, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dedicated_connections_are_bounded_per_node() {
    let h = Harness::tuned(|c| c.dedicated_connections = 2).await;
    let owner = h.cluster.nodes[2].addr();
    let list = format!("{}full", tag_on(2));
    let mut held = Vec::new();
    for _ in 0..2 {
        let mut s = TcpStream::connect(h.proxy.addr).await.unwrap();
        use tokio::io::AsyncWriteExt;
        s.write_all(format!("BLPOP {list} 0\r\n").as_bytes())
            .await
            .unwrap();
        held.push(s);
    }
    wait_blocked(&owner, 2).await;
    // A third is told why at once, and the proxy still serves everything else.
    let mut s = TcpStream::connect(h.proxy.addr).await.unwrap();
    let answer = ask_raw(&mut s, format!("BLPOP {list} 0\r\n").as_bytes(), b"\r\n").await;
    assert!(
        answer.starts_with("-ERR") && answer.contains("backend.dedicated_connections"),
        "{answer}"
    );
    assert_eq!(
        ask_raw(&mut s, format!("SET {list}x 1\r\n").as_bytes(), b"\r\n").await,
        "+OK\r\n"
    );
    // One leaves: its place is free again.
    held.pop();
    wait_blocked(&owner, 1).await;
    wait_dedicated(&h, 1, "its place is given back").await;
    let answer = ask_raw(&mut s, format!("BLPOP {list} 0.05\r\n").as_bytes(), b"\r\n").await;
    assert_eq!(answer, "*-1\r\n");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_makes_exec_conditional() {
    let h = Harness::start(3, 0).await;
    let t = tag_on(1);
    let mut other = h.client().await;
    let mut s = TcpStream::connect(h.proxy.addr).await.unwrap();

    // Nothing changed: EXEC runs.
    assert_eq!(
        ask(&mut s, format!("WATCH {t}a\r\n"), b"\r\n").await,
        "+OK\r\n"
    );
    assert_eq!(
        ask(&mut s, format!("GET {t}a\r\n"), b"\r\n").await,
        "$-1\r\n"
    );
    assert_eq!(ask(&mut s, "MULTI\r\n", b"\r\n").await, "+OK\r\n");
    assert_eq!(
        ask(&mut s, format!("SET {t}a 1\r\n"), b"\r\n").await,
        "+QUEUED\r\n"
    );
    assert_eq!(ask(&mut s, "EXEC\r\n", b"+OK\r\n").await, "*1\r\n+OK\r\n");

    // Another client changed the key: EXEC answers nil and runs nothing.
    assert_eq!(
        ask(&mut s, format!("WATCH {t}a\r\n"), b"\r\n").await,
        "+OK\r\n"
    );
    let () = redis::cmd("SET")
        .arg(format!("{t}a"))
        .arg(2)
        .query_async(&mut other)
        .await
        .unwrap();
    assert_eq!(ask(&mut s, "MULTI\r\n", b"\r\n").await, "+OK\r\n");
    assert_eq!(
        ask(&mut s, format!("SET {t}a 3\r\n"), b"\r\n").await,
        "+QUEUED\r\n"
    );
    assert_eq!(ask(&mut s, "EXEC\r\n", b"\r\n").await, "*-1\r\n");
    let a: i64 = redis::cmd("GET")
        .arg(format!("{t}a"))
        .query_async(&mut other)
        .await
        .unwrap();
    assert_eq!(a, 2);

    // UNWATCH forgets; DISCARD too.
    assert_eq!(
        ask(&mut s, format!("WATCH {t}a\r\n"), b"\r\n").await,
        "+OK\r\n"
    );
    assert_eq!(ask(&mut s, "UNWATCH\r\n", b"\r\n").await, "+OK\r\n");
    let () = redis::cmd("SET")
        .arg(format!("{t}a"))
        .arg(4)
        .query_async(&mut other)
        .await
        .unwrap();
    assert_eq!(ask(&mut s, "MULTI\r\n", b"\r\n").await, "+OK\r\n");
    assert_eq!(
        ask(&mut s, format!("INCR {t}a\r\n"), b"\r\n").await,
        "+QUEUED\r\n"
    );
    assert_eq!(ask(&mut s, "EXEC\r\n", b":5\r\n").await, "*1\r\n:5\r\n");

    // Errors, with Redis's words where Redis has them.
    let cross = ask(&mut s, format!("WATCH {t}a {}b\r\n", tag_on(2)), b"\r\n").await;
    assert!(cross.starts_with("-CROSSSLOT"), "{cross}");
    assert_eq!(
        ask(&mut s, format!("WATCH {t}a\r\n"), b"\r\n").await,
        "+OK\r\n"
    );
    let cross = ask(&mut s, format!("WATCH {}b\r\n", tag_on(2)), b"\r\n").await;
    assert!(cross.starts_with("-CROSSSLOT"), "{cross}");
    assert_eq!(ask(&mut s, "MULTI\r\n", b"\r\n").await, "+OK\r\n");
    assert_eq!(
        ask(&mut s, format!("WATCH {t}a\r\n"), b"\r\n").await,
        "-ERR WATCH inside MULTI is not allowed\r\n"
    );
    // As in Redis, the refused WATCH leaves the transaction as it was.
    assert_eq!(
        ask(&mut s, format!("SET {t}a 1\r\n"), b"\r\n").await,
        "+QUEUED\r\n"
    );
    assert_eq!(ask(&mut s, "EXEC\r\n", b"+OK\r\n").await, "*1\r\n+OK\r\n");
    assert_eq!(
        ask(&mut s, "WATCH\r\n", b"\r\n").await,
        "-ERR wrong number of arguments for 'watch' command\r\n"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn optimistic_locking_through_the_proxy_loses_no_update() {
    let h = Harness::start(3, 0).await;
    let key = format!("{}counter", tag_on(0));
    let mut tasks = Vec::new();
    for _ in 0..3 {
        let url = h.url();
        let key = key.clone();
        tasks.push(tokio::spawn(async move {
            let client = redis::Client::open(url).unwrap();
            let mut c = client.get_multiplexed_async_connection().await.unwrap();
            let mut retries = 0;
            for _ in 0..40 {
                loop {
                    let () = redis::cmd("WATCH")
                        .arg(&key)
                        .query_async(&mut c)
                        .await
                        .unwrap();
                    let n: Option<i64> = redis::cmd("GET")
                        .arg(&key)
                        .query_async(&mut c)
                        .await
                        .unwrap();
                    let done: Option<((),)> = redis::pipe()
                        .atomic()
                        .cmd("SET")
                        .arg(&key)
                        .arg(n.unwrap_or(0) + 1)
                        .query_async(&mut c)
                        .await
                        .unwrap();
                    if done.is_some() {
                        break;
                    }
                    retries += 1;
                }
            }
            retries
        }));
    }
    let mut retries = 0;
    for t in tasks {
        retries += t.await.unwrap();
    }
    let mut c = h.client().await;
    let n: i64 = redis::cmd("GET")
        .arg(&key)
        .query_async(&mut c)
        .await
        .unwrap();
    assert_eq!(n, 120, "every increment is in ({retries} retries)");
}

/// A client blocked in BLPOP while the list's slot moves to another master.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blocked_call_follows_its_slot_to_a_new_owner() {
    let h = Harness::start(3, 0).await;
    let list = format!("{}moving", tag_on(0));
    let slot = key_slot(list.as_bytes());
    let mut c = h.client().await;
    // A few keys in the slot, so that the migration has something to move.
    for i in 0..20 {
        let () = redis::cmd("SET")
            .arg(format!("{}:{i}", tag_on(0)))
            .arg(i)
            .query_async(&mut c)
            .await
            .unwrap();
    }
    let blocked = blpop_in_background(h.url(), &list);
    wait_blocked(&h.cluster.nodes[0].addr(), 1).await;
    move_slot(&h, slot, 0, 1).await;
    // The old owner gives the blocked client up; the proxy sends it on to the new one.
    wait_blocked(&h.cluster.nodes[1].addr(), 1).await;
    let () = redis::cmd("RPUSH")
        .arg(&list)
        .arg("after the move")
        .query_async(&mut c)
        .await
        .unwrap();
    let got = tokio::time::timeout(Duration::from_secs(10), blocked)
        .await
        .expect("BLPOP returns")
        .unwrap()
        .expect("no error reaches the client");
    assert_eq!(got.1, "after the move");
    h.cluster_check().unwrap();
}

/// A client blocked in BLPOP on a master that is killed: it keeps waiting on the promoted
/// replica and gets the element pushed there. A WATCH on the dead master makes EXEC answer
/// nil (the transaction did not run), never an error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blocked_call_and_a_watch_survive_a_failover() {
    let mut h = Harness::start(3, 1).await;
    let t = tag_on(0);
    let list = format!("{t}failover");
    let blocked = blpop_in_background(h.url(), &list);
    wait_blocked(&h.cluster.nodes[0].addr(), 1).await;
    let mut s = TcpStream::connect(h.proxy.addr).await.unwrap();
    assert_eq!(
        ask_raw(&mut s, format!("WATCH {t}w\r\n").as_bytes(), b"\r\n").await,
        "+OK\r\n"
    );

    h.cluster.nodes[0].kill();
    h.cluster.wait_promoted(0).await.unwrap();
    let heir = h.cluster.nodes[3].addr();
    wait_blocked(&heir, 1).await;

    let mut c = h.client().await;
    let () = redis::cmd("RPUSH")
        .arg(&list)
        .arg("after the failover")
        .query_async(&mut c)
        .await
        .unwrap();
    let got = tokio::time::timeout(Duration::from_secs(10), blocked)
        .await
        .expect("BLPOP returns")
        .unwrap()
        .expect("no error reaches the client");
    assert_eq!(got.1, "after the failover");

    assert_eq!(ask_raw(&mut s, b"MULTI\r\n", b"\r\n").await, "+OK\r\n");
    assert_eq!(
        ask_raw(&mut s, format!("SET {t}w 1\r\n").as_bytes(), b"\r\n").await,
        "+QUEUED\r\n"
    );
    assert_eq!(ask_raw(&mut s, b"EXEC\r\n", b"\r\n").await, "*-1\r\n");
    // The client retries, as optimistic locking does, and it runs.
    assert_eq!(
        ask_raw(&mut s, format!("WATCH {t}w\r\n").as_bytes(), b"\r\n").await,
        "+OK\r\n"
    );
    assert_eq!(ask_raw(&mut s, b"MULTI\r\n", b"\r\n").await, "+OK\r\n");
    assert_eq!(
        ask_raw(&mut s, format!("SET {t}w 1\r\n").as_bytes(), b"\r\n").await,
        "+QUEUED\r\n"
    );
    assert_eq!(
        ask_raw(&mut s, b"EXEC\r\n", b"+OK\r\n").await,
        "*1\r\n+OK\r\n"
    );

    h.cluster.restart(0).await.unwrap();
    h.cluster
        .wait_healthy(Duration::from_secs(30))
        .await
        .unwrap();
    h.cluster_check().unwrap();
}

/// WAIT counts the replicas that acknowledged the client's writes, without stalling the
/// shared connections: a stopped replica is not counted, and the timeout is kept.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wait_counts_replicas_that_acknowledged() {
    let h = Harness::start(3, 1).await;
    let key = format!("{}w", tag_on(0));
    let mut c = h.client().await;
    let () = redis::cmd("SET")
        .arg(&key)
        .arg(1)
        .query_async(&mut c)
        .await
        .unwrap();
    let acked: i64 = redis::cmd("WAIT")
        .arg(1)
        .arg(5000)
        .query_async(&mut c)
        .await
        .unwrap();
    assert_eq!(acked, 1);
    // Asking for more replicas than there are: the timeout answers with what there is.
    let started = std::time::Instant::now();
    let acked: i64 = redis::cmd("WAIT")
        .arg(2)
        .arg(200)
        .query_async(&mut c)
        .await
        .unwrap();
    assert_eq!(acked, 1);
    assert!(started.elapsed() >= Duration::from_millis(200));

    // The replica stops: a new write is not acknowledged, and WAIT says so.
    let replica = &h.cluster.nodes[3];
    replica.signal("STOP").unwrap();
    let () = redis::cmd("SET")
        .arg(&key)
        .arg(2)
        .query_async(&mut c)
        .await
        .unwrap();
    let acked: i64 = redis::cmd("WAIT")
        .arg(1)
        .arg(300)
        .query_async(&mut c)
        .await
        .unwrap();
    replica.signal("CONT").unwrap();
    assert_eq!(acked, 0);

    let err = redis::cmd("WAIT")
        .arg(1)
        .arg(-1)
        .query_async::<i64>(&mut c)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("timeout is negative"), "{err}");
}

/// WAIT reads replication offsets on connections it keeps: a client that WAITs after
/// every write makes the master accept no new connection for it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wait_reuses_its_connections_to_the_masters() {
    let h = Harness::start(3, 1).await;
    let key = format!("{}pooled", tag_on(0));
    let master = h.cluster.nodes[0].addr();
    let mut c = h.client().await;
    let accepted = || async {
        let info = call(&master, &["INFO", "stats"]).await;
        let slotguard::protocol::Value::Bulk(info) = info else {
            panic!("{info:?}")
        };
        let info = String::from_utf8_lossy(&info).into_owned();
        info.lines()
            .find_map(|l| l.strip_prefix("total_connections_received:"))
            .and_then(|v| v.trim().parse::<u64>().ok())
            .expect("INFO stats counts connections")
    };
    write_and_wait(&mut c, &key, 0).await;
    assert_eq!(
        h.proxy.proxy.wait_connections(),
        1,
        "kept for the next WAIT"
    );
    let metrics = &h.proxy.proxy.metrics;
    let refreshes = || metrics.refreshes_ok.get() + metrics.refreshes_failed.get();
    let (before, refreshed) = (accepted().await, refreshes());
    for n in 1..=5 {
        write_and_wait(&mut c, &key, n).await;
    }
    // The master accepted this test's own INFO call and one connection per topology
    // refresh (one more if a refresh was under way), none for the five WAITs.
    let (after, refreshed) = (accepted().await, refreshes() - refreshed);
    assert!(
        after - before <= 2 + refreshed,
        "{} connections for {refreshed} refreshes",
        after - before
    );
    assert_eq!(h.proxy.proxy.wait_connections(), 1);
}

/// SET, then WAIT for one replica.
async fn write_and_wait(c: &mut redis::aio::MultiplexedConnection, key: &str, n: i64) {
    let () = redis::cmd("SET")
        .arg(key)
        .arg(n)
        .query_async(c)
        .await
        .unwrap();
    let acked: i64 = redis::cmd("WAIT")
        .arg(1)
        .arg(5000)
        .query_async(c)
        .await
        .unwrap();
    assert_eq!(acked, 1);
}

/// A client's own connection goes back to the node's allowance once idle, unless it holds
/// a WATCH; the client's next blocking command opens another.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_dedicated_connections_are_given_back() {
    let h = Harness::tuned(|c| c.dedicated_idle = Duration::from_millis(500)).await;
    let t = tag_on(0);
    let mut c = h.client().await;
    let none: Option<(String, String)> = redis::cmd("BLPOP")
        .arg(format!("{t}idle"))
        .arg(0.05)
        .query_async(&mut c)
        .await
        .unwrap();
    assert_eq!(none, None);
    assert_eq!(dedicated_gauge(&h), 1);
    wait_dedicated(&h, 0, "the idle connection is given back").await;
    let () = redis::cmd("RPUSH")
        .arg(format!("{t}idle"))
        .arg("x")
        .query_async(&mut c)
        .await
        .unwrap();
    let got: (String, String) = redis::cmd("BLPOP")
        .arg(format!("{t}idle"))
        .arg(1)
        .query_async(&mut c)
        .await
        .unwrap();
    assert_eq!(got.1, "x");

    // A WATCH keeps its connection however long the client thinks.
    let mut s = TcpStream::connect(h.proxy.addr).await.unwrap();
    assert_eq!(
        ask(&mut s, format!("WATCH {t}w\r\n"), b"\r\n").await,
        "+OK\r\n"
    );
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(ask(&mut s, "MULTI\r\n", b"\r\n").await, "+OK\r\n");
    assert_eq!(
        ask(&mut s, format!("SET {t}w 1\r\n"), b"\r\n").await,
        "+QUEUED\r\n"
    );
    assert_eq!(ask(&mut s, "EXEC\r\n", b"+OK\r\n").await, "*1\r\n+OK\r\n");
}

/// The addresses of the node's client connections that have run no command yet.
async fn idle_connections(addr: &str) -> Vec<String> {
    let list = call(addr, &["CLIENT", "LIST"]).await;
    let text = list.as_str().unwrap_or_default().to_string();
    text.lines()
        .filter(|l| l.contains(" cmd=NULL "))
        .filter_map(|l| l.split(' ').find_map(|f| f.strip_prefix("addr=")))
        .map(String::from)
        .collect()
}

/// After a node's first dedicated connection the proxy keeps connected spares, and the
/// next blocking command starts on one: as soon as a shared request would, not after a
/// connect (so a write another client sends at once cannot overtake it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blocking_command_starts_on_a_connected_spare() {
    let h = Harness::start(3, 0).await;
    let t = tag_on(0);
    let node = h.cluster.nodes[0].addr();
    let first = blpop_in_background(h.url(), &format!("{t}first"));
    wait_blocked(&node, 1).await;
    let node_addr = node.clone();
    wait_for(Duration::from_secs(5), || {
        let node = node_addr.clone();
        async move { idle_connections(&node).await.len() >= 2 }
    })
    .await
    .expect("two spare connections wait on the node");
    let spares = idle_connections(&node).await;
    let second = blpop_in_background(h.url(), &format!("{t}second"));
    wait_blocked(&node, 2).await;
    let list = call(&node, &["CLIENT", "LIST"]).await;
    let text = list.as_str().unwrap_or_default().to_string();
    let blocked: Vec<&str> = text
        .lines()
        .filter(|l| l.contains(" cmd=blpop "))
        .filter_map(|l| l.split(' ').find_map(|f| f.strip_prefix("addr=")))
        .collect();
    assert!(
        blocked.iter().any(|a| spares.iter().any(|s| s == a)),
        "the second BLPOP runs on a spare: blocked {blocked:?}, spares {spares:?}"
    );
    for (list, task) in [("first", first), ("second", second)] {
        let mut c = h.client().await;
        let () = redis::cmd("RPUSH")
            .arg(format!("{t}{list}"))
            .arg("x")
            .query_async(&mut c)
            .await
            .unwrap();
        let (_, got) = task.await.unwrap().unwrap();
        assert_eq!(got, "x");
    }
}

/// Two clients send a blocking command each, one right after the other, and a third pushes
/// at once. The node serves blocked clients first come, first served; through the proxy the
/// first must still be first (Redis's suite: "BRPOPLPUSH with multiple blocked clients"),
/// though each gets a new connection, and the scheduler may run the task of the second
/// first. The second sends once the proxy has taken the first's request (it counts the
/// client as blocked): the order is the proxy's to keep from there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blocked_clients_reach_the_node_in_the_order_they_came() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let h = Harness::start(3, 0).await;
    let t = tag_on(0);
    let (list, wrong, right) = (format!("{t}list"), format!("{t}wrong"), format!("{t}right"));
    let blocked = h.proxy.proxy.metrics.clients_blocked.clone();
    let mut r = TcpStream::connect(h.proxy.addr).await.unwrap();
    for round in 0..20 {
        ask(&mut r, cmd(&["DEL", &list, &wrong, &right]), b"\r\n").await;
        ask(&mut r, cmd(&["SET", &wrong, "not a list"]), b"\r\n").await;
        let mut first = TcpStream::connect(h.proxy.addr).await.unwrap();
        let mut second = TcpStream::connect(h.proxy.addr).await.unwrap();
        let pop = |to: &str| cmd(&["BRPOPLPUSH", &list, to, "0"]);
        first.write_all(&pop(&wrong)).await.unwrap();
        wait_for(Duration::from_secs(5), || {
            let n = blocked.get();
            async move { n == 1 }
        })
        .await
        .expect("the proxy takes the first request");
        second.write_all(&pop(&right)).await.unwrap();
        ask(&mut r, cmd(&["LPUSH", &list, "foo"]), b"\r\n").await;
        // The first is served first and fails; the element stays for the second.
        let mut buf = [0u8; 256];
        let n = tokio::time::timeout(Duration::from_secs(5), first.read(&mut buf))
            .await
            .unwrap_or_else(|_| panic!("round {round}: the first client is still blocked"))
            .unwrap();
        let answer = String::from_utf8_lossy(&buf[..n]);
        assert!(answer.starts_with("-WRONGTYPE"), "round {round}: {answer}");
        let answer = ask(&mut second, b"", b"foo\r\n").await;
        assert_eq!(answer, "$3\r\nfoo\r\n", "round {round}");
        drop((first, second));
        wait_for(Duration::from_secs(5), || {
            let n = blocked.get();
            async move { n == 0 }
        })
        .await
        .expect("no client blocked between rounds");
    }
}

fn cmd(args: &[&str]) -> Vec<u8> {
    let mut out = format!("*{}\r\n", args.len()).into_bytes();
    for a in args {
        out.extend_from_slice(format!("${}\r\n{a}\r\n", a.len()).as_bytes());
    }
    out
}
