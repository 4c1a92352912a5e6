//! Client-side caching through the proxy: CLIENT TRACKING for RESP3 clients.

mod common;

use std::time::Duration;

use bytes::Bytes;
use common::{tag_on, Harness, Raw};
use slotguard::protocol::Value;

/// The keys an `invalidate` push names; `None` for a flush of everything.
fn invalidated(frame: &Bytes) -> Option<Vec<String>> {
    assert!(frame.starts_with(b">2\r\n"), "a push: {frame:?}");
    let Ok(Value::Array(items)) = Value::parse(frame) else {
        panic!("{frame:?}")
    };
    assert_eq!(items[0].as_str(), Some("invalidate"));
    match &items[1] {
        Value::Nil => None,
        Value::Array(keys) => Some(
            keys.iter()
                .map(|k| k.as_str().unwrap().to_string())
                .collect(),
        ),
        other => panic!("{other:?}"),
    }
}

async fn set(h: &Harness, key: &str, value: &str) {
    let mut c = h.client().await;
    let () = redis::cmd("SET")
        .arg(key)
        .arg(value)
        .query_async(&mut c)
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tracking_clients_hear_of_changed_keys_even_across_a_failover() {
    let mut h = Harness::start(3, 1).await;
    let mut c = Raw::connect(&h).await;
    // As on a node, RESP2 may track without a redirect (it hears nothing until HELLO 3).
    assert_eq!(&c.ask("CLIENT TRACKING ON\r\n").await[..], b"+OK\r\n");
    assert_eq!(&c.ask("CLIENT TRACKING OFF\r\n").await[..], b"+OK\r\n");
    assert!(c.ask("HELLO 3\r\n").await.starts_with(b"%"));
    assert_eq!(&c.ask("CLIENT TRACKING ON\r\n").await[..], b"+OK\r\n");
    let info = c.ask("CLIENT TRACKINGINFO\r\n").await;
    assert!(String::from_utf8_lossy(&info).contains("on"), "{info:?}");

    let keys: Vec<String> = (0..3).map(|i| format!("{}cached", tag_on(i))).collect();
    for key in &keys {
        assert_eq!(&c.ask(&format!("GET {key}\r\n")).await[..], b"_\r\n");
        set(&h, key, "new").await;
        assert_eq!(invalidated(&c.frame().await), Some(vec![key.clone()]));
    }
    // Exactly the keys read: one not read since it was reported, and one never read, are
    // not reported (a broadcast would report both).
    set(&h, &keys[0], "newer").await;
    set(&h, &format!("{}unread", tag_on(0)), "x").await;
    assert_eq!(&c.ask("PING\r\n").await[..], b"+PONG\r\n", "no push");

    // The master of the first key dies: the client is told to flush everything, and once
    // the replica took over, what it reads there is tracked there.
    h.cluster.nodes[0].kill();
    assert_eq!(invalidated(&c.frame().await), None);
    h.cluster.wait_promoted(0).await.unwrap();
    reread(&mut c, &keys[0]).await;
    set(&h, &keys[0], "after").await;
    loop {
        match invalidated(&c.frame().await) {
            None => continue, // more flushes while the map changed
            Some(named) => {
                assert_eq!(named, vec![keys[0].clone()]);
                break;
            }
        }
    }
    // The old master comes back as a replica and takes over again by a manual failover:
    // the master of the slot changed while every connection stayed up.
    h.cluster.restart(0).await.unwrap();
    h.cluster
        .wait_healthy(Duration::from_secs(30))
        .await
        .unwrap();
    // The proxy keeps a standby tracking connection on every replica, so that a promoted
    // one already tracks; this one must have it before it takes over.
    let old = h.cluster.nodes[0].addr();
    slotguard::localcluster::wait_for(Duration::from_secs(10), || {
        let old = old.clone();
        async move {
            let clients = common::call(&old, &["CLIENT", "LIST"]).await;
            let text = match clients {
                Value::Bulk(text) => String::from_utf8_lossy(&text).into_owned(),
                _ => String::new(),
            };
            text.lines().any(|l| {
                l.split(' ')
                    .any(|f| f.strip_prefix("flags=").is_some_and(|v| v.contains('t')))
            })
        }
    })
    .await
    .expect("the restarted replica tracks for the proxy");
    // A replica fresh from its full sync may time out its first manual failover: ask again.
    let mut promoted = false;
    for _ in 0..3 {
        common::call(&old, &["CLUSTER", "FAILOVER"]).await;
        promoted = slotguard::localcluster::wait_for(Duration::from_secs(8), || {
            let old = old.clone();
            async move {
                let role = common::call(&old, &["ROLE"]).await;
                matches!(role, Value::Array(ref r) if r[0].as_str() == Some("master"))
            }
        })
        .await
        .is_ok();
        if promoted {
            break;
        }
    }
    assert!(promoted, "node 0 is master again");
    let p = h.proxy.proxy.clone();
    let slot = slotguard::protocol::key_slot(keys[0].as_bytes());
    slotguard::localcluster::wait_for(Duration::from_secs(30), || {
        let owner = p.table.load().owner(slot).map(|n| n.addr.clone());
        let old = old.clone();
        async move { owner == Some(old) }
    })
    .await
    .expect("the proxy routes the slot to node 0 again");
    // The client's connection to the demoted master tracked its read there: it was told
    // to flush (a push that `reread` passes over, or that the loop below does).
    reread(&mut c, &keys[0]).await;
    set(&h, &keys[0], "after the manual failover").await;
    loop {
        match invalidated(&c.frame().await) {
            None => continue,
            Some(named) => {
                assert_eq!(named, vec![keys[0].clone()]);
                break;
            }
        }
    }

    // (A flush for the failover may still come before OFF's reply.)
    assert_eq!(&answer(&mut c, "CLIENT TRACKING OFF").await[..], b"+OK\r\n");
    set(&h, &keys[1], "unheard").await;
    assert_eq!(
        &c.ask("PING\r\n").await[..],
        b"+PONG\r\n",
        "no push after OFF"
    );
}

/// Reads `key` again (its cache was flushed), passing over pushes that come first.
async fn reread(c: &mut Raw, key: &str) {
    let frame = answer(c, &format!("GET {key}")).await;
    assert!(frame.starts_with(b"$"), "{frame:?}");
}

/// The reply to `req`, passing over pushes that come before it.
async fn answer(c: &mut Raw, req: &str) -> Bytes {
    c.send(&format!("{req}\r\n")).await;
    loop {
        let frame = c.frame().await;
        if !frame.starts_with(b">") {
            return frame;
        }
    }
}

/// A RESP3 client may subscribe while it tracks: invalidations keep coming, between its
/// messages.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalidations_reach_a_subscribed_client() {
    let h = Harness::start(3, 0).await;
    let mut c = Raw::connect(&h).await;
    assert!(c.ask("HELLO 3\r\n").await.starts_with(b"%"));
    assert_eq!(&c.ask("CLIENT TRACKING ON\r\n").await[..], b"+OK\r\n");
    let key = format!("{}k", tag_on(1));
    assert_eq!(&c.ask(&format!("GET {key}\r\n")).await[..], b"_\r\n");
    let confirm = c.ask("SUBSCRIBE news\r\n").await;
    assert_eq!(common::items(&confirm), ["subscribe", "news", "1"]);
    set(&h, &key, "changed").await;
    assert_eq!(invalidated(&c.frame().await), Some(vec![key.clone()]));
    let mut p = h.client().await;
    let _: i64 = redis::cmd("PUBLISH")
        .arg("news")
        .arg("hi")
        .query_async(&mut p)
        .await
        .unwrap();
    assert_eq!(common::items(&c.frame().await), ["message", "news", "hi"]);
}

/// RESP2 client-side caching, as Redis does it: the tracking client redirects its
/// invalidations to another client subscribed to `__redis__:invalidate`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resp2_tracking_redirects_invalidations_to_a_subscriber() {
    let h = Harness::start(3, 0).await;
    let key = format!("{}cached", tag_on(2));
    let mut listener = Raw::connect(&h).await;
    let id = listener.ask("CLIENT ID\r\n").await;
    let id = std::str::from_utf8(&id[1..id.len() - 2])
        .unwrap()
        .to_string();
    listener.send("SUBSCRIBE __redis__:invalidate\r\n").await;
    assert_eq!(
        listener.items().await,
        ["subscribe", "__redis__:invalidate", "1"]
    );
    let mut cache = Raw::connect(&h).await;
    assert_eq!(
        &cache.ask("CLIENT TRACKING ON REDIRECT 999999\r\n").await[..],
        b"-ERR The client ID you want redirect to does not exist\r\n"
    );
    assert_eq!(
        &cache
            .ask(&format!("CLIENT TRACKING ON REDIRECT {id}\r\n"))
            .await[..],
        b"+OK\r\n"
    );
    assert_eq!(
        cache.ask("CLIENT GETREDIR\r\n").await,
        Bytes::from(format!(":{id}\r\n"))
    );
    let info = cache.ask("CLIENT TRACKINGINFO\r\n").await;
    assert!(
        String::from_utf8_lossy(&info).contains(&format!("$8\r\nredirect\r\n:{id}\r\n")),
        "{info:?}"
    );
    let _ = cache.ask(&format!("GET {key}\r\n")).await;
    set(&h, &key, "changed").await;
    // The keys come as an array after the channel, as a node sends them.
    let message = listener.frame().await;
    let want = format!(
        "*3\r\n$7\r\nmessage\r\n$20\r\n__redis__:invalidate\r\n*1\r\n${}\r\n{key}\r\n",
        key.len()
    );
    assert_eq!(String::from_utf8_lossy(&message), want);
    // The listener leaves: the tracking client's invalidations go nowhere, and nothing
    // breaks for it; in RESP3 it is told its redirect broke, as by a node.
    drop(listener);
    let _ = cache.ask(&format!("GET {key}\r\n")).await;
    set(&h, &key, "again").await;
    assert_eq!(&cache.ask("PING\r\n").await[..], b"+PONG\r\n");
    assert!(cache.ask("HELLO 3\r\n").await.starts_with(b"%"));
    let _ = cache.ask(&format!("GET {key}\r\n")).await;
    set(&h, &key, "once more").await;
    let broken = cache.frame().await;
    assert_eq!(common::items(&broken), ["tracking-redir-broken", &id]);
    let info = cache.ask("CLIENT TRACKINGINFO\r\n").await;
    assert!(
        String::from_utf8_lossy(&info).contains("broken_redirect"),
        "{info:?}"
    );
}

/// redis-py 8, unmodified, in both protocols: `client_tracking_on(clientid=...)` with a
/// `__redis__:invalidate` subscriber hears of exactly the keys it read, whichever master
/// has them. (redis-py's own cache, `cache_config`, wants a server that says it is Redis
/// 7.4 or later; the proxy says what its nodes say: 7.0.15, or Valkey's 7.2.4.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_py_tracks_exactly_the_keys_it_read() {
    let h = Harness::start(3, 0).await;
    let script = format!(
        r#"
import time
import redis
port = {port}
other = redis.Redis(host="127.0.0.1", port=port, decode_responses=True)
keys = ["{{%s}}csc" % t for t in ("a", "b", "c", "d", "e", "f")]
for protocol in (2, 3):
    # A RESP2 subscriber hears `message`s (one in RESP3 hears `invalidate` pushes).
    listening = redis.Redis(host="127.0.0.1", port=port, protocol=2, client_name="csc-listener-%d" % protocol, decode_responses=True)
    sub = listening.pubsub()
    sub.subscribe("__redis__:invalidate")
    assert sub.get_message(timeout=5)["type"] == "subscribe"
    lid = next(c["id"] for c in other.client_list() if c["name"] == "csc-listener-%d" % protocol)
    c = redis.Redis(host="127.0.0.1", port=port, protocol=protocol, single_connection_client=True, decode_responses=True)
    assert c.client_tracking_on(clientid=lid) in ("OK", True)
    for k in keys:
        other.set(k, "old")
    for k in keys[:3]:
        assert c.get(k) == "old"
    for k in keys:
        other.set(k, "new")
    heard = set()
    deadline = time.time() + 5
    while len(heard) < 3 and time.time() < deadline:
        m = sub.get_message(timeout=0.2)
        if m and m["type"] == "message":
            heard.update(m["data"])
    assert heard == set(keys[:3]), (protocol, heard)
    m = sub.get_message(timeout=0.5)
    assert m is None, (protocol, m)  # keys[3:] were never read
    c.client_tracking_off()
    sub.close()
print("redis-py tracking ok")
"#,
        port = h.port()
    );
    common::redis_py(script).await;
}
