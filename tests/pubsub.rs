//! Pub/Sub through the proxy: channels, patterns and shard channels, kept in place across
//! slot moves and failovers.

mod common;

use std::time::{Duration, Instant};

use common::{ask_raw, call, items, move_slot, tag_on, Harness, Raw};

fn strs(items: &[&str]) -> Vec<String> {
    items.iter().map(|s| s.to_string()).collect()
}

async fn publish(h: &Harness, command: &str, channel: &str, message: &str) -> i64 {
    let mut c = h.client().await;
    redis::cmd(command)
        .arg(channel)
        .arg(message)
        .query_async(&mut c)
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn channels_and_patterns_flow_through_the_proxy() {
    let h = Harness::start(3, 0).await;
    let mut sub = Raw::connect(&h).await;
    sub.send("SUBSCRIBE news sport\r\n").await;
    assert_eq!(sub.items().await, strs(&["subscribe", "news", "1"]));
    assert_eq!(sub.items().await, strs(&["subscribe", "sport", "2"]));
    sub.send("PSUBSCRIBE n*\r\n").await;
    assert_eq!(sub.items().await, strs(&["psubscribe", "n*", "3"]));

    // Published through the proxy, and straight to any master: a cluster delivers both.
    publish(&h, "PUBLISH", "news", "one").await;
    let mut got = vec![sub.items().await, sub.items().await];
    got.sort();
    assert_eq!(
        got,
        vec![
            strs(&["message", "news", "one"]),
            strs(&["pmessage", "n*", "news", "one"])
        ]
    );
    for node in &h.cluster.nodes {
        call(&node.addr(), &["PUBLISH", "sport", "direct"]).await;
        assert_eq!(sub.items().await, strs(&["message", "sport", "direct"]));
    }

    // Only subscription commands in RESP2's subscribed mode, as Redis says.
    sub.send("PING\r\n").await;
    assert_eq!(sub.items().await, strs(&["pong", ""]));
    sub.send("GET k\r\n").await;
    let refused = String::from_utf8_lossy(&sub.frame().await).into_owned();
    assert!(refused.starts_with("-ERR Can't execute 'get'"), "{refused}");

    // Unsubscribing from everything leaves subscribed mode: ordinary commands work again.
    sub.send("PUNSUBSCRIBE\r\n").await;
    assert_eq!(sub.items().await, strs(&["punsubscribe", "n*", "2"]));
    sub.send("UNSUBSCRIBE\r\n").await;
    assert_eq!(sub.items().await, strs(&["unsubscribe", "news", "1"]));
    assert_eq!(sub.items().await, strs(&["unsubscribe", "sport", "0"]));
    assert_eq!(
        ask_raw(&mut sub.s, b"SET k v\r\n", b"\r\n").await,
        "+OK\r\n"
    );
    sub.send("UNSUBSCRIBE\r\n").await;
    assert_eq!(sub.items().await, strs(&["unsubscribe", "nil", "0"]));
    // Nothing is left open on the nodes.
    common::wait_dedicated(&h, 0, "subscription connections are closed").await;
}

/// A name listed more than once is confirmed once per listing, as Redis does, without
/// waiting for the hold timeout (20 s; a frame is awaited 10 s at most), and a message
/// still arrives once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_name_listed_twice_is_confirmed_twice() {
    let h = Harness::start(3, 0).await;
    let shard = format!("{}sc", tag_on(1));
    for (command, name, kind, message) in [
        ("SUBSCRIBE", "chan1", "subscribe", "message"),
        ("PSUBSCRIBE", "chan*", "psubscribe", "pmessage"),
        ("SSUBSCRIBE", shard.as_str(), "ssubscribe", "smessage"),
    ] {
        let mut sub = Raw::connect(&h).await;
        sub.send(&format!("{command} {name} {name} {name}\r\n"))
            .await;
        for _ in 0..3 {
            assert_eq!(sub.items().await, strs(&[kind, name, "1"]));
        }
        // Subscribed again on a link already in place: confirmed by its node.
        sub.send(&format!("{command} {name} {name}\r\n")).await;
        for _ in 0..2 {
            assert_eq!(sub.items().await, strs(&[kind, name, "1"]));
        }
        let channel = if kind == "ssubscribe" { name } else { "chan1" };
        let publish_with = if kind == "ssubscribe" {
            "SPUBLISH"
        } else {
            "PUBLISH"
        };
        publish(&h, publish_with, channel, "once").await;
        let got = sub.items().await;
        assert_eq!(got[0], message, "{got:?}");
        assert_eq!(got.last().map(String::as_str), Some("once"), "{got:?}");
        assert!(sub.frame_within(Duration::from_millis(300)).await.is_none());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_redis_crate_subscribes_through_the_proxy() {
    let h = Harness::start(3, 0).await;
    let client = redis::Client::open(h.url()).unwrap();
    let mut pubsub = client.get_async_pubsub().await.unwrap();
    pubsub.subscribe("orders").await.unwrap();
    // The count is the receivers on the node that took the PUBLISH: any number here.
    publish(&h, "PUBLISH", "orders", "42").await;
    use futures_util::StreamExt;
    let msg = tokio::time::timeout(Duration::from_secs(10), pubsub.on_message().next())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(msg.get_channel_name(), "orders");
    assert_eq!(msg.get_payload::<String>().unwrap(), "42");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resp3_clients_get_pushes_and_may_run_commands_while_subscribed() {
    let h = Harness::start(3, 0).await;
    let mut sub = Raw::connect(&h).await;
    sub.send("HELLO 3\r\n").await;
    sub.frame().await;
    sub.send("SUBSCRIBE alerts\r\n").await;
    let confirm = sub.frame().await;
    assert!(confirm.starts_with(b">3\r\n"), "{confirm:?}");
    assert_eq!(items(&confirm), strs(&["subscribe", "alerts", "1"]));
    sub.send("SET {a}k 1\r\nGET {a}k\r\n").await;
    assert_eq!(&sub.frame().await[..], b"+OK\r\n");
    assert_eq!(&sub.frame().await[..], b"$1\r\n1\r\n");
    publish(&h, "PUBLISH", "alerts", "fire").await;
    let message = sub.frame().await;
    assert!(message.starts_with(b">3\r\n"), "{message:?}");
    assert_eq!(items(&message), strs(&["message", "alerts", "fire"]));
}

/// A RESP3 subscriber may block too: BLPOP and WAIT start in their turn (they never did
/// while subscribed, and the client waited forever), and INFO counts the client as
/// blocked meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscribed_resp3_client_may_block_and_counts_as_blocked() {
    let h = Harness::start(3, 0).await;
    let mut sub = Raw::connect(&h).await;
    sub.send("HELLO 3\r\n").await;
    sub.frame().await;
    sub.send("SUBSCRIBE alerts\r\n").await;
    sub.frame().await;
    let list = format!("{}jobs", tag_on(1));
    sub.send(&format!("BLPOP {list} 0\r\n")).await;
    let blocked = |h: &Harness| {
        let addr = h.proxy.addr.to_string();
        async move {
            let info = call(&addr, &["INFO", "clients"]).await;
            let slotguard::protocol::Value::Bulk(info) = info else {
                panic!("{info:?}")
            };
            String::from_utf8_lossy(&info)
                .lines()
                .find_map(|l| l.strip_prefix("blocked_clients:"))
                .map(|v| v.trim().to_string())
        }
    };
    let counted = slotguard::localcluster::wait_for(Duration::from_secs(5), || async {
        blocked(&h).await.as_deref() == Some("1")
    })
    .await;
    assert!(
        counted.is_ok(),
        "INFO shows the blocked client: {:?}",
        blocked(&h).await
    );
    let mut c = h.client().await;
    let () = redis::cmd("RPUSH")
        .arg(&list)
        .arg("job-1")
        .query_async(&mut c)
        .await
        .unwrap();
    let popped = sub.frame().await;
    assert_eq!(items(&popped), strs(&[&list, "job-1"]));
    assert_eq!(blocked(&h).await.as_deref(), Some("0"));
    sub.send("WAIT 0 0\r\n").await;
    assert_eq!(&sub.frame().await[..], b":0\r\n");
}

/// Publishes `message-N` on a shard channel until the subscriber gets one; returns what
/// it saw before. Messages published while a subscription moves are lost, as in Redis.
async fn spublish_until_received(h: &Harness, sub: &mut Raw, channel: &str) -> Vec<Vec<String>> {
    let mut seen = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut c = h.client().await;
    for n in 0.. {
        assert!(
            Instant::now() < deadline,
            "no message arrived; saw {seen:?}"
        );
        let _: i64 = redis::cmd("SPUBLISH")
            .arg(channel)
            .arg(format!("message-{n}"))
            .query_async(&mut c)
            .await
            .unwrap();
        while let Some(frame) = sub.frame_within(Duration::from_millis(100)).await {
            let items = items(&frame);
            let done = items.first().map(String::as_str) == Some("smessage");
            seen.push(items);
            if done {
                return seen;
            }
        }
    }
    unreachable!()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shard_subscription_follows_its_slot_to_a_new_owner() {
    let h = Harness::start(3, 0).await;
    let t = tag_on(0);
    let channel = format!("{t}events");
    let slot = slotguard::protocol::key_slot(channel.as_bytes());
    let mut sub = Raw::connect(&h).await;
    sub.send(&format!("SSUBSCRIBE {channel}\r\n")).await;
    assert_eq!(sub.items().await, strs(&["ssubscribe", &channel, "1"]));
    sub.send(&format!("SSUBSCRIBE {channel} {}x\r\n", tag_on(1)))
        .await;
    let refused = String::from_utf8_lossy(&sub.frame().await).into_owned();
    assert!(refused.starts_with("-CROSSSLOT"), "{refused}");
    let seen = spublish_until_received(&h, &mut sub, &channel).await;
    assert_eq!(seen, vec![strs(&["smessage", &channel, "message-0"])]);

    move_slot(&h, slot, 0, 1).await;
    // The old owner dropped the subscription with a `sunsubscribe`; the client never sees
    // it and keeps getting messages, now from the new owner.
    let seen = spublish_until_received(&h, &mut sub, &channel).await;
    assert!(
        seen.iter()
            .all(|items| items.first().map(String::as_str) == Some("smessage")),
        "only messages reach the client: {seen:?}"
    );
    let receivers: i64 = call(
        &h.cluster.nodes[1].addr(),
        &["SPUBLISH", &channel, "direct"],
    )
    .await
    .as_int()
    .unwrap();
    assert_eq!(receivers, 1, "subscribed on the new owner");
    assert_eq!(sub.items().await, strs(&["smessage", &channel, "direct"]));
    h.cluster_check().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscriptions_survive_the_failover_of_their_node() {
    let mut h = Harness::start(3, 1).await;
    let t = tag_on(0);
    let channel = format!("{t}feed");
    let mut sub = Raw::connect(&h).await;
    sub.send(&format!("SSUBSCRIBE {channel}\r\n")).await;
    assert_eq!(sub.items().await, strs(&["ssubscribe", &channel, "1"]));
    sub.send("SUBSCRIBE plain\r\n").await;
    assert_eq!(sub.items().await, strs(&["subscribe", "plain", "1"]));

    // Kill the master of the shard channel's slot, and the one carrying the plain channel
    // if that is another: both are failed over.
    h.cluster.nodes[0].kill();
    h.cluster.wait_promoted(0).await.unwrap();

    let seen = spublish_until_received(&h, &mut sub, &channel).await;
    assert!(
        seen.iter()
            .all(|items| items.first().map(String::as_str) == Some("smessage")),
        "only messages reach the client: {seen:?}"
    );
    // The plain channel works too, wherever its connection went.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        assert!(Instant::now() < deadline, "no message on the plain channel");
        publish(&h, "PUBLISH", "plain", "still here").await;
        if let Some(frame) = sub.frame_within(Duration::from_millis(200)).await {
            assert_eq!(items(&frame), strs(&["message", "plain", "still here"]));
            break;
        }
    }
    h.cluster.restart(0).await.unwrap();
    h.cluster
        .wait_healthy(Duration::from_secs(30))
        .await
        .unwrap();
    h.cluster_check().unwrap();
}

/// PUBSUB answers for the whole cluster: the proxy's subscribers are spread over the
/// masters, and a node knows only its own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pubsub_introspection_counts_every_master() {
    let h = Harness::start(3, 0).await;
    let mut subs = Vec::new();
    for _ in 0..4 {
        let mut sub = Raw::connect(&h).await;
        sub.send("SUBSCRIBE news\r\n").await;
        assert_eq!(sub.items().await, strs(&["subscribe", "news", "1"]));
        subs.push(sub);
    }
    subs[0].send("PSUBSCRIBE n*\r\n").await;
    assert_eq!(subs[0].items().await, strs(&["psubscribe", "n*", "2"]));
    // The same pattern from clients whose subscriptions live on other masters: still one
    // pattern.
    for sub in &mut subs[1..] {
        sub.send("PSUBSCRIBE n*\r\n").await;
        assert_eq!(sub.items().await, strs(&["psubscribe", "n*", "2"]));
    }
    let shard = format!("{}s", tag_on(2));
    let mut sharded = Raw::connect(&h).await;
    sharded.send(&format!("SSUBSCRIBE {shard}\r\n")).await;
    assert_eq!(sharded.items().await, strs(&["ssubscribe", &shard, "1"]));

    let mut c = h.client().await;
    let numsub: Vec<redis::Value> = redis::cmd("PUBSUB")
        .arg("NUMSUB")
        .arg("news")
        .arg("none")
        .query_async(&mut c)
        .await
        .unwrap();
    let numsub: Vec<String> = numsub
        .iter()
        .map(|v| redis::from_redis_value::<String>(v).unwrap())
        .collect();
    assert_eq!(numsub, strs(&["news", "4", "none", "0"]));
    let channels: Vec<String> = redis::cmd("PUBSUB")
        .arg("CHANNELS")
        .query_async(&mut c)
        .await
        .unwrap();
    assert_eq!(channels, strs(&["news"]));
    let numpat: i64 = redis::cmd("PUBSUB")
        .arg("NUMPAT")
        .query_async(&mut c)
        .await
        .unwrap();
    assert_eq!(numpat, 1);
    let shards: Vec<String> = redis::cmd("PUBSUB")
        .arg("SHARDCHANNELS")
        .query_async(&mut c)
        .await
        .unwrap();
    assert_eq!(shards, vec![shard.clone()]);
}

/// PUBLISH answers how many of the proxy's clients receive the message, as one node
/// would, although their subscriptions are spread over the masters.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_counts_every_receiver_of_the_proxy() {
    let h = Harness::start(3, 0).await;
    let mut subs = Vec::new();
    for _ in 0..3 {
        let mut s = Raw::connect(&h).await;
        s.send("SUBSCRIBE news\r\n").await;
        s.frame().await;
        subs.push(s);
    }
    let mut p = Raw::connect(&h).await;
    p.send("PSUBSCRIBE new?\r\n").await;
    p.frame().await;
    assert_eq!(publish(&h, "PUBLISH", "news", "a").await, 4);
    assert_eq!(
        publish(&h, "PUBLISH", "newt", "b").await,
        1,
        "the pattern alone"
    );
    subs[0].send("UNSUBSCRIBE news\r\n").await;
    subs[0].frame().await;
    drop(subs.pop()); // a subscriber that goes away is no longer counted
    let counted = slotguard::localcluster::wait_for(Duration::from_secs(5), || async {
        publish(&h, "PUBLISH", "news", "c").await == 2
    })
    .await;
    assert!(
        counted.is_ok(),
        "one channel subscriber and the pattern are left"
    );
    assert_eq!(publish(&h, "PUBLISH", "nobody-listens", "d").await, 0);
}

/// Keyspace notifications are published by each node to its own subscribers only: through
/// the proxy a subscriber hears them from every master, each once, and an ordinary
/// PUBLISH still arrives once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keyspace_notifications_come_from_every_master_once() {
    let h = Harness::start(3, 0).await;
    let mut c = h.client().await;
    let () = redis::cmd("CONFIG")
        .arg("SET")
        .arg("notify-keyspace-events")
        .arg("KEA")
        .query_async(&mut c)
        .await
        .unwrap();
    let keys: Vec<String> = (0..3).map(|i| format!("{}ks", tag_on(i))).collect();
    // The confirmation comes once every master has the subscription: a key written on
    // any master right after it is heard, by each of several fresh subscribers.
    for _ in 0..5 {
        let mut sub = Raw::connect(&h).await;
        sub.send("PSUBSCRIBE __keyevent@0__:*\r\n").await;
        assert_eq!(sub.items().await, ["psubscribe", "__keyevent@0__:*", "1"]);
        for k in &keys {
            let () = redis::cmd("SET")
                .arg(k)
                .arg("v")
                .query_async(&mut c)
                .await
                .unwrap();
        }
        // Each master publishes on its own connection: the three events may arrive in
        // any order, as they would from three servers, but each arrives once.
        let mut heard = Vec::new();
        for _ in &keys {
            let event = sub.items().await;
            assert_eq!(
                event[..3],
                ["pmessage", "__keyevent@0__:*", "__keyevent@0__:set"]
            );
            heard.push(event[3].clone());
        }
        heard.sort();
        let mut expected = keys.clone();
        expected.sort();
        assert_eq!(heard, expected);
    }
    let mut sub = Raw::connect(&h).await;
    sub.send("PSUBSCRIBE __keyevent@0__:* *\r\n").await;
    assert_eq!(sub.items().await, ["psubscribe", "__keyevent@0__:*", "1"]);
    assert_eq!(sub.items().await, ["psubscribe", "*", "2"]);
    // Counted: every event exactly once per pattern.
    let mut events: Vec<Vec<String>> = Vec::new();
    for k in &keys {
        let () = redis::cmd("SET")
            .arg(k)
            .arg("w")
            .query_async(&mut c)
            .await
            .unwrap();
    }
    let _: i64 = redis::cmd("PUBLISH")
        .arg("plain")
        .arg("hello")
        .query_async(&mut c)
        .await
        .unwrap();
    while let Some(frame) = sub.frame_within(Duration::from_millis(500)).await {
        events.push(items(&frame));
    }
    for k in &keys {
        for pattern in ["__keyevent@0__:*", "*"] {
            let n = events
                .iter()
                .filter(|e| e[1] == pattern && e[2] == "__keyevent@0__:set" && e[3] == *k)
                .count();
            assert_eq!(n, 1, "{pattern} {k}: {events:?}");
        }
    }
    let plain = events.iter().filter(|e| e[2] == "plain").count();
    assert_eq!(plain, 1, "an ordinary message once: {events:?}");
}
