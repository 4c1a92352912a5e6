//! Commands through the proxy answer as the cluster's own nodes do.

mod common;

use common::{ask_raw, Harness};
use redis::Value;

/// Each line is one command; `K` stands for the test's key prefix. Keys share the hash tag
/// `{t}`, so the sequence runs on one slot whose owner can be asked directly too.
const SCRIPT: &str = "
SET K:s hello
GET K:s
APPEND K:s -world
STRLEN K:s
GETRANGE K:s 0 4
SETRANGE K:s 0 J
GETDEL K:s
GET K:s
INCR K:n
INCRBY K:n 41
DECR K:n
INCRBYFLOAT K:n 0.5
SETNX K:n 7
MSETNX K:a 1 K:b 2
HSET K:h f1 v1 f2 v2 f3 3
HGET K:h f1
HMGET K:h f1 nope f2
HINCRBY K:h f3 4
HDEL K:h f2
HLEN K:h
HEXISTS K:h f1
HKEYS K:h
RPUSH K:l a b c d e
LPUSH K:l z
LRANGE K:l 0 -1
LINDEX K:l 2
LPOP K:l
RPOP K:l 2
LLEN K:l
LPOS K:l c
LMOVE K:l K:l2 LEFT RIGHT
LRANGE K:l2 0 -1
SADD K:set a b c
SISMEMBER K:set b
SMISMEMBER K:set a x
SCARD K:set
SREM K:set a
SADD K:set2 c d
SINTERCARD 2 K:set K:set2
SMOVE K:set K:set2 b
SCARD K:set2
ZADD K:z 1 one 2 two 3 three
ZSCORE K:z two
ZRANK K:z three
ZRANGE K:z 0 -1 WITHSCORES
ZRANGEBYSCORE K:z 2 +inf
ZINCRBY K:z 10 one
ZREVRANGE K:z 0 0
ZPOPMIN K:z
ZCARD K:z
ZUNIONSTORE K:z3 2 K:z K:z
ZRANGE K:z3 0 -1 WITHSCORES
XADD K:x 1-1 f v
XADD K:x 2-1 g w
XLEN K:x
XRANGE K:x - +
XREAD COUNT 1 STREAMS K:x 0
XGROUP CREATE K:x grp 0
XREADGROUP GROUP grp c1 COUNT 1 STREAMS K:x >
XACK K:x grp 1-1
XDEL K:x 2-1
EXPIREAT K:h 4102444800
EXPIRETIME K:h
PERSIST K:h
TTL K:h
TYPE K:z
EXISTS K:h K:l K:nope
RENAME K:set2 K:set3
SMEMBERS K:set3
OBJECT ENCODING K:a
EVAL \"return redis.call('incr', KEYS[1])\" 1 K:n2
PFADD K:hll a b c
PFCOUNT K:hll
SETBIT K:bits 7 1
BITCOUNT K:bits
DEL K:a K:b K:l2
COPY K:z K:zc
ZCARD K:zc
GETSET K:z oops
SET K:s bad EX notanumber
LPUSH K:s x
UNKNOWNCOMMAND K:s
";

fn split_line(line: &str, prefix: &str) -> Vec<String> {
    slotguard::protocol::request::split_inline(line.replace("K:", &format!("{prefix}:")).as_bytes())
        .expect("test line parses")
        .into_iter()
        .map(|w| String::from_utf8(w).unwrap())
        .collect()
}

/// Replaces the key prefix inside replies, so the two runs can be compared.
fn normalize(v: Value, from: &str, to: &str) -> Value {
    match v {
        Value::BulkString(b) => {
            Value::BulkString(String::from_utf8_lossy(&b).replace(from, to).into_bytes())
        }
        Value::Array(items) => {
            Value::Array(items.into_iter().map(|i| normalize(i, from, to)).collect())
        }
        Value::SimpleString(s) => Value::SimpleString(s.replace(from, to)),
        other => other,
    }
}

async fn run(conn: &mut redis::aio::MultiplexedConnection, args: &[String]) -> Value {
    let mut cmd = redis::cmd(&args[0]);
    for a in &args[1..] {
        cmd.arg(a);
    }
    match cmd.query_async::<Value>(conn).await {
        Ok(v) => v,
        Err(e) => Value::SimpleString(format!("error: {}", e.detail().unwrap_or_default())),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commands_answer_as_the_owning_node_does() {
    let h = Harness::start(3, 0).await;
    let slot = slotguard::protocol::key_slot(b"{t}");
    let owner = h.owner_of(slot).await;
    let mut proxy = h.client().await;
    let mut direct = h.direct(&owner).await;
    for line in SCRIPT.lines().map(str::trim).filter(|l| !l.is_empty()) {
        let via_proxy = run(&mut proxy, &split_line(line, "{t}p")).await;
        let via_node = run(&mut direct, &split_line(line, "{t}d")).await;
        assert_eq!(
            normalize(via_proxy, "{t}p", "{t}d"),
            via_node,
            "`{line}` answered differently through the proxy"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn multi_key_commands_work_across_slots() {
    let h = Harness::start(3, 0).await;
    let mut c = h.client().await;
    let keys: Vec<String> = (0..50).map(|i| format!("cross:{i}")).collect();
    let slots: std::collections::HashSet<u16> = keys
        .iter()
        .map(|k| slotguard::protocol::key_slot(k.as_bytes()))
        .collect();
    assert!(slots.len() > 10, "the keys spread over many slots");

    let mut mset = redis::cmd("MSET");
    for (i, k) in keys.iter().enumerate() {
        mset.arg(k).arg(format!("v{i}"));
    }
    let () = mset.query_async(&mut c).await.unwrap();

    let mut mget = redis::cmd("MGET");
    mget.arg(&keys[..]).arg("cross:missing");
    let got: Vec<Option<String>> = mget.query_async(&mut c).await.unwrap();
    let mut want: Vec<Option<String>> = (0..50).map(|i| Some(format!("v{i}"))).collect();
    want.push(None);
    assert_eq!(got, want);

    let exists: i64 = redis::cmd("EXISTS")
        .arg(&keys[..10])
        .arg("cross:missing")
        .query_async(&mut c)
        .await
        .unwrap();
    assert_eq!(exists, 10);
    let touched: i64 = redis::cmd("TOUCH")
        .arg(&keys[..5])
        .query_async(&mut c)
        .await
        .unwrap();
    assert_eq!(touched, 5);
    let unlinked: i64 = redis::cmd("UNLINK")
        .arg(&keys[..20])
        .query_async(&mut c)
        .await
        .unwrap();
    assert_eq!(unlinked, 20);
    let deleted: i64 = redis::cmd("DEL")
        .arg(&keys[..])
        .query_async(&mut c)
        .await
        .unwrap();
    assert_eq!(deleted, 30);

    // Other multi-key commands must share a slot; the error names the keys.
    let err = redis::cmd("SUNIONSTORE")
        .arg("cross:a")
        .arg("cross:b")
        .query_async::<Value>(&mut c)
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some("CROSSSLOT"));
    assert!(err.to_string().contains("cross:a"), "{err}");
    let _: i64 = redis::cmd("SADD")
        .arg("{x}1")
        .arg("m")
        .query_async(&mut c)
        .await
        .unwrap();
    let n: i64 = redis::cmd("SUNIONSTORE")
        .arg("{x}2")
        .arg("{x}1")
        .query_async(&mut c)
        .await
        .unwrap();
    assert_eq!(n, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn whole_cluster_commands_cover_every_master() {
    let h = Harness::start(3, 0).await;
    let mut c = h.client().await;
    let () = redis::cmd("FLUSHALL").query_async(&mut c).await.unwrap();
    let mut mset = redis::cmd("MSET");
    for i in 0..300 {
        mset.arg(format!("all:{i}")).arg(i);
    }
    let () = mset.query_async(&mut c).await.unwrap();

    let size: i64 = redis::cmd("DBSIZE").query_async(&mut c).await.unwrap();
    assert_eq!(size, 300);
    let mut keys: Vec<String> = redis::cmd("KEYS")
        .arg("all:*")
        .query_async(&mut c)
        .await
        .unwrap();
    keys.sort();
    let mut want: Vec<String> = (0..300).map(|i| format!("all:{i}")).collect();
    want.sort();
    assert_eq!(keys, want);

    // SCAN walks every master, one after the other, and returns every key once.
    let mut seen = Vec::new();
    let mut cursor = "0".to_string();
    let mut rounds = 0;
    loop {
        let (next, batch): (String, Vec<String>) = redis::cmd("SCAN")
            .arg(&cursor)
            .arg("MATCH")
            .arg("all:*")
            .arg("COUNT")
            .arg(50)
            .query_async(&mut c)
            .await
            .unwrap();
        seen.extend(batch);
        rounds += 1;
        assert!(rounds < 1000, "SCAN terminates");
        if next == "0" {
            break;
        }
        cursor = next;
    }
    seen.sort();
    seen.dedup();
    assert_eq!(seen, want);

    let random: Option<String> = redis::cmd("RANDOMKEY").query_async(&mut c).await.unwrap();
    assert!(random.is_some_and(|k| k.starts_with("all:")));

    let sha: String = redis::cmd("SCRIPT")
        .arg("LOAD")
        .arg("return 1")
        .query_async(&mut c)
        .await
        .unwrap();
    let exists: Vec<i64> = redis::cmd("SCRIPT")
        .arg("EXISTS")
        .arg(&sha)
        .arg("0000")
        .query_async(&mut c)
        .await
        .unwrap();
    assert_eq!(exists, vec![1, 0]);
    // The script is on every master, so EVALSHA works whatever slot the key is in.
    for i in 0..20 {
        let one: i64 = redis::cmd("EVALSHA")
            .arg(&sha)
            .arg(1)
            .arg(format!("k{i}"))
            .query_async(&mut c)
            .await
            .unwrap();
        assert_eq!(one, 1);
    }

    let info: String = redis::cmd("INFO").query_async(&mut c).await.unwrap();
    assert!(info.contains("db0:keys=300,"), "{info}");
    let () = redis::cmd("FLUSHALL").query_async(&mut c).await.unwrap();
    let size: i64 = redis::cmd("DBSIZE").query_async(&mut c).await.unwrap();
    assert_eq!(size, 0);
}

/// A fan-out over more slots than the proxy sends at once (it goes a window at a time)
/// keeps its place in a pipeline: it sees the writes before it and none after it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_fan_out_keeps_its_place_in_a_pipeline() {
    let h = Harness::start(3, 0).await;
    let mut c = h.client().await;
    let keys: Vec<String> = (0..5000).map(|i| format!("fan:{i}")).collect();
    let slots: std::collections::HashSet<u16> = keys
        .iter()
        .map(|k| slotguard::protocol::key_slot(k.as_bytes()))
        .collect();
    assert!(slots.len() > 1000, "far more slots than one window");
    let mset = |value: &str| {
        let mut cmd = redis::cmd("MSET");
        for k in &keys {
            cmd.arg(k).arg(format!("{value}{k}"));
        }
        cmd
    };
    let mut pipe = redis::pipe();
    pipe.add_command(mset("old:")).ignore();
    pipe.cmd("SET").arg(&keys[4999]).arg("before");
    pipe.cmd("MGET").arg(&keys);
    pipe.add_command(mset("new:")).ignore();
    pipe.cmd("MGET").arg(&keys);
    pipe.cmd("DEL").arg(&keys[..2500]);
    pipe.cmd("EXISTS").arg(&keys);
    let (set, first, second, deleted, exist): (String, Vec<String>, Vec<String>, i64, i64) =
        pipe.query_async(&mut c).await.unwrap();
    assert_eq!(set, "OK");
    let want = |value: &str| -> Vec<String> {
        let mut want: Vec<String> = keys.iter().map(|k| format!("{value}{k}")).collect();
        if value == "old:" {
            want[4999] = "before".into();
        }
        want
    };
    assert!(
        first == want("old:"),
        "the first MGET sees what was written before it"
    );
    assert!(second == want("new:"), "the second sees the second MSET");
    assert_eq!((deleted, exist), (2500, 2500));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pipeline_of_1000_is_answered_in_order() {
    let h = Harness::start(3, 0).await;
    let mut c = h.client().await;
    let mut pipe = redis::pipe();
    for i in 0..1000 {
        pipe.cmd("SET").arg(format!("p:{i}")).arg(i).ignore();
        pipe.cmd("INCR").arg(format!("p:{i}"));
        pipe.cmd("GET").arg(format!("p:{}", 999 - i));
    }
    let got: Vec<(i64, Option<i64>)> = {
        let flat: Vec<Value> = pipe.query_async(&mut c).await.unwrap();
        flat.chunks(2)
            .map(|pair| {
                (
                    redis::from_redis_value(&pair[0]).unwrap(),
                    redis::from_redis_value(&pair[1]).unwrap(),
                )
            })
            .collect()
    };
    for (i, (incr, other)) in got.iter().enumerate() {
        assert_eq!(*incr, i as i64 + 1);
        let j = 999 - i;
        // Keys set earlier in the pipeline are visible, later ones are not yet.
        let want = if j < i {
            Some(j as i64 + 1)
        } else if j == i {
            Some(i as i64 + 1)
        } else {
            None
        };
        assert_eq!(*other, want, "GET p:{j} at step {i}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_proxy_presents_itself_as_a_one_node_cluster() {
    let h = Harness::start(3, 0).await;
    let mut c = h.client().await;
    let slots: Value = redis::cmd("CLUSTER")
        .arg("SLOTS")
        .query_async(&mut c)
        .await
        .unwrap();
    let Value::Array(ranges) = slots else {
        panic!("{slots:?}")
    };
    assert_eq!(ranges.len(), 1);
    let Value::Array(range) = &ranges[0] else {
        panic!()
    };
    assert_eq!(range[0], Value::Int(0));
    assert_eq!(range[1], Value::Int(16383));
    let Value::Array(node) = &range[2] else {
        panic!()
    };
    assert_eq!(node[1], Value::Int(h.port() as i64));

    let nodes: String = redis::cmd("CLUSTER")
        .arg("NODES")
        .query_async(&mut c)
        .await
        .unwrap();
    assert!(nodes.contains(&format!("127.0.0.1:{}", h.port())) && nodes.contains("0-16383"));
    let info: String = redis::cmd("CLUSTER")
        .arg("INFO")
        .query_async(&mut c)
        .await
        .unwrap();
    assert!(info.contains("cluster_state:ok"));
    let myid: String = redis::cmd("CLUSTER")
        .arg("MYID")
        .query_async(&mut c)
        .await
        .unwrap();
    assert_eq!(myid.len(), 40);
    let slot: i64 = redis::cmd("CLUSTER")
        .arg("KEYSLOT")
        .arg("foo")
        .query_async(&mut c)
        .await
        .unwrap();
    assert_eq!(slot, 12182);
    let shards: Value = redis::cmd("CLUSTER")
        .arg("SHARDS")
        .query_async(&mut c)
        .await
        .unwrap();
    assert!(matches!(shards, Value::Array(ref s) if s.len() == 1));

    // A cluster-aware client is content with that and sends everything to the proxy.
    let cluster = redis::cluster::ClusterClient::new(vec![h.url()]).unwrap();
    let mut cc = cluster.get_async_connection().await.unwrap();
    for i in 0..100 {
        let () = redis::cmd("SET")
            .arg(format!("cc:{i}"))
            .arg(i)
            .query_async(&mut cc)
            .await
            .unwrap();
    }
    let v: Vec<i64> = redis::cmd("MGET")
        .arg("cc:1")
        .arg("cc:99")
        .query_async(&mut cc)
        .await
        .unwrap();
    assert_eq!(v, vec![1, 99]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_commands_are_answered_locally() {
    let h = Harness::start(3, 0).await;
    let mut c = h.client().await;
    let pong: String = redis::cmd("PING").query_async(&mut c).await.unwrap();
    assert_eq!(pong, "PONG");
    let echo: String = redis::cmd("ECHO")
        .arg("hi")
        .query_async(&mut c)
        .await
        .unwrap();
    assert_eq!(echo, "hi");
    let () = redis::cmd("SELECT")
        .arg(0)
        .query_async(&mut c)
        .await
        .unwrap();
    let err = redis::cmd("SELECT")
        .arg(1)
        .query_async::<()>(&mut c)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("not allowed in cluster mode"));
    let () = redis::cmd("CLIENT")
        .arg("SETNAME")
        .arg("tester")
        .query_async(&mut c)
        .await
        .unwrap();
    let name: String = redis::cmd("CLIENT")
        .arg("GETNAME")
        .query_async(&mut c)
        .await
        .unwrap();
    assert_eq!(name, "tester");
    let hello: Value = redis::cmd("HELLO")
        .arg(2)
        .query_async(&mut c)
        .await
        .unwrap();
    assert!(format!("{hello:?}").contains("proto"));
    // SYNC would take the connection over (MONITOR, the proxy's own, has a test of its own).
    let err = redis::cmd("SYNC")
        .query_async::<Value>(&mut c)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("not supported"), "{err}");
    let err = redis::cmd("SHUTDOWN")
        .query_async::<Value>(&mut c)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("admin"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_proxy_password_is_required_when_set() {
    let h = Harness::start_with(
        slotguard::localcluster::Options {
            masters: 3,
            replicas_per_master: 0,
            ..Default::default()
        },
        |c| c.password = Some("s3cret".into()),
    )
    .await;
    let mut c = h.client().await;
    let err = redis::cmd("GET")
        .arg("k")
        .query_async::<Value>(&mut c)
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some("NOAUTH"));
    let err = redis::cmd("AUTH")
        .arg("wrong")
        .query_async::<Value>(&mut c)
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some("WRONGPASS"));
    let () = redis::cmd("AUTH")
        .arg("s3cret")
        .query_async(&mut c)
        .await
        .unwrap();
    let v: Option<String> = redis::cmd("GET")
        .arg("k")
        .query_async(&mut c)
        .await
        .unwrap();
    assert_eq!(v, None);

    let url = format!("redis://:s3cret@{}/", h.proxy.addr);
    let mut authed = redis::Client::open(url)
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let () = redis::cmd("SET")
        .arg("k")
        .arg("v")
        .query_async(&mut authed)
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hello_3_switches_a_client_to_resp3_replies() {
    let h = Harness::start(3, 0).await;
    let mut s = tokio::net::TcpStream::connect(h.proxy.addr).await.unwrap();
    let hello = ask_raw(&mut s, b"HELLO 3\r\n", b"modules\r\n*0\r\n").await;
    assert!(hello.starts_with("%7\r\n"), "{hello}");
    assert!(hello.contains("proto\r\n:3\r\n"), "{hello}");
    let _ = ask_raw(&mut s, b"HSET r3 f v\r\n", b"\r\n").await;
    // RESP3: HGETALL is a map, a missing key is `_`, a score is a double.
    assert_eq!(
        ask_raw(&mut s, b"HGETALL r3\r\n", b"v\r\n").await,
        "%1\r\n$1\r\nf\r\n$1\r\nv\r\n"
    );
    assert_eq!(
        ask_raw(&mut s, b"GET nothing-here\r\n", b"\r\n").await,
        "_\r\n"
    );
    let _ = ask_raw(&mut s, b"ZADD z3 1.5 m\r\n", b"\r\n").await;
    assert_eq!(
        ask_raw(&mut s, b"ZSCORE z3 m\r\n", b"\r\n").await,
        ",1.5\r\n"
    );
    let back = ask_raw(&mut s, b"HELLO 2\r\n", b"modules\r\n*0\r\n").await;
    assert!(back.starts_with("*14\r\n"), "{back}");
    assert_eq!(
        ask_raw(&mut s, b"GET nothing-here\r\n", b"\r\n").await,
        "$-1\r\n"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn noscript_is_healed_from_the_proxys_script_cache() {
    let h = Harness::start(3, 0).await;
    let mut c = h.client().await;
    let () = redis::cmd("SET")
        .arg("sk")
        .arg("v")
        .query_async(&mut c)
        .await
        .unwrap();
    let sha: String = redis::cmd("SCRIPT")
        .arg("LOAD")
        .arg("return redis.call('get', KEYS[1])")
        .query_async(&mut c)
        .await
        .unwrap();
    // The node serving the key loses its scripts (as after a failover or a restart).
    let owner = h.owner_of(slotguard::protocol::key_slot(b"sk")).await;
    let mut direct = h.direct(&owner).await;
    let () = redis::cmd("SCRIPT")
        .arg("FLUSH")
        .query_async(&mut direct)
        .await
        .unwrap();
    let got: String = redis::cmd("EVALSHA")
        .arg(&sha)
        .arg(1)
        .arg("sk")
        .query_async(&mut c)
        .await
        .unwrap();
    assert_eq!(got, "v", "NOSCRIPT was healed by loading the script again");

    // A script the proxy saw only through EVAL is healed too.
    let two: i64 = redis::cmd("EVAL")
        .arg("return 2")
        .arg(0)
        .query_async(&mut c)
        .await
        .unwrap();
    assert_eq!(two, 2);
    for node in h.cluster.addrs() {
        let mut d = h.direct(&node).await;
        let () = redis::cmd("SCRIPT")
            .arg("FLUSH")
            .query_async(&mut d)
            .await
            .unwrap();
    }
    let sha2 = "7f923f79fe76194c868d7e1d0820de36700eb649"; // SHA1 of "return 2"
    let two: i64 = redis::cmd("EVALSHA")
        .arg(sha2)
        .arg(0)
        .query_async(&mut c)
        .await
        .unwrap();
    assert_eq!(two, 2);

    // A script nobody knows still gets NOSCRIPT.
    let err = redis::cmd("EVALSHA")
        .arg("0000000000000000000000000000000000000000")
        .arg(0)
        .query_async::<redis::Value>(&mut c)
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some("NOSCRIPT"));

    // SCRIPT EXISTS: known where it ran (one master) is known, since it runs anywhere.
    let exists: Vec<i64> = redis::cmd("SCRIPT")
        .arg("EXISTS")
        .arg(sha2)
        .arg("0000000000000000000000000000000000000000")
        .query_async(&mut c)
        .await
        .unwrap();
    assert_eq!(exists, [1, 0]);
    // A client's SCRIPT FLUSH empties the proxy's cache too: then NOSCRIPT, as on a node.
    let () = redis::cmd("SCRIPT")
        .arg("FLUSH")
        .query_async(&mut c)
        .await
        .unwrap();
    let err = redis::cmd("EVALSHA")
        .arg(sha2)
        .arg(0)
        .query_async::<redis::Value>(&mut c)
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some("NOSCRIPT"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_script_reply_nested_1000_deep_reaches_the_client_whole() {
    let h = Harness::start(3, 0).await;
    let mut raw = common::Raw::connect(&h).await;
    let script = "local top = {} local at = top for i = 1, 1000 do local t = {} at[1] = t at = t end return top";
    let eval = format!("EVAL \"{script}\" 0\r\n");
    let through = raw.ask(&eval).await;
    let mut direct = tokio::net::TcpStream::connect(&h.cluster.addrs()[0])
        .await
        .unwrap();
    let node = common::ask_raw(&mut direct, eval.as_bytes(), b"*0\r\n").await;
    assert!(through.starts_with(b"*1\r\n*1\r\n*1\r\n"));
    assert_eq!(through, node.as_bytes(), "the node's bytes, as they came");
    // The node connection the reply came on still serves this client and others.
    assert_eq!(&raw.ask("PING\r\n").await[..], b"+PONG\r\n");
    let mut other = h.client().await;
    let pong: String = redis::cmd("PING").query_async(&mut other).await.unwrap();
    assert_eq!(pong, "PONG");
}

/// A script that declares no key but touches one runs on the master that serves it, as
/// on one node; its write is applied once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_script_touching_an_undeclared_key_finds_its_master() {
    let h = Harness::start(3, 0).await;
    let mut c = h.client().await;
    if slotguard::localcluster::is_valkey() {
        // Valkey refuses such a script with an error that names no node, not MOVED:
        // there is nothing to follow, and the client gets Valkey's own answer.
        let key = format!("{}undeclared", common::tag_on(2));
        let err = redis::cmd("EVAL")
            .arg("return redis.call('incr', ARGV[1])")
            .arg(0)
            .arg(&key)
            .query_async::<i64>(&mut c)
            .await;
        if let Err(e) = err {
            assert!(e.to_string().contains("non local key"), "{e}");
        }
        return;
    }
    for i in 0..3 {
        let key = format!("{}undeclared", common::tag_on(i));
        for expected in 1..=3 {
            let n: i64 = redis::cmd("EVAL")
                .arg("return redis.call('incr', ARGV[1])")
                .arg(0)
                .arg(&key)
                .query_async(&mut c)
                .await
                .unwrap();
            assert_eq!(n, expected, "{key}");
        }
    }
    // A script that touches keys of two masters still fails, as in any cluster.
    let err = redis::cmd("EVAL")
        .arg("redis.call('get', ARGV[1]) return redis.call('get', ARGV[2])")
        .arg(0)
        .arg(format!("{}a", common::tag_on(0)))
        .arg(format!("{}b", common::tag_on(1)))
        .query_async::<Value>(&mut c)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("non local key"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transactions_run_whole_on_their_slots_owner() {
    let h = Harness::start(3, 0).await;
    let mut c = h.client().await;
    // The redis crate's atomic pipeline: MULTI, the commands, EXEC.
    let (set, incr, get): ((), i64, String) = redis::pipe()
        .atomic()
        .cmd("SET")
        .arg("{tx}a")
        .arg(1)
        .cmd("INCR")
        .arg("{tx}a")
        .cmd("GET")
        .arg("{tx}a")
        .query_async(&mut c)
        .await
        .unwrap();
    assert_eq!((set, incr, get.as_str()), ((), 2, "2"));

    // Raw: QUEUED per command, EXEC's array as the reply.
    let mut s = tokio::net::TcpStream::connect(h.proxy.addr).await.unwrap();
    assert_eq!(
        ask_raw(&mut s, b"EXEC\r\n", b"\r\n").await,
        "-ERR EXEC without MULTI\r\n"
    );
    assert_eq!(ask_raw(&mut s, b"MULTI\r\n", b"\r\n").await, "+OK\r\n");
    assert_eq!(
        ask_raw(&mut s, b"MULTI\r\n", b"\r\n").await,
        "-ERR MULTI calls can not be nested\r\n"
    );
    assert_eq!(
        ask_raw(&mut s, b"INCR {tx}n\r\n", b"\r\n").await,
        "+QUEUED\r\n"
    );
    assert_eq!(
        ask_raw(&mut s, b"INCRBY {tx}n 10\r\n", b"\r\n").await,
        "+QUEUED\r\n"
    );
    assert_eq!(
        ask_raw(&mut s, b"EXEC\r\n", b":11\r\n").await,
        "*2\r\n:1\r\n:11\r\n"
    );

    // A command no node runs in a transaction is refused with the node's words.
    assert_eq!(ask_raw(&mut s, b"MULTI\r\n", b"\r\n").await, "+OK\r\n");
    assert_eq!(
        ask_raw(&mut s, b"SAVE\r\n", b"\r\n").await,
        "-ERR Command not allowed inside a transaction\r\n"
    );
    assert!(ask_raw(&mut s, b"EXEC\r\n", b"\r\n")
        .await
        .starts_with("-EXECABORT"));

    // A key of another slot is refused before EXEC; the transaction is discarded whole.
    assert_eq!(ask_raw(&mut s, b"MULTI\r\n", b"\r\n").await, "+OK\r\n");
    assert_eq!(
        ask_raw(&mut s, b"SET {tx}n 100\r\n", b"\r\n").await,
        "+QUEUED\r\n"
    );
    let refused = ask_raw(&mut s, b"SET {other}m 1\r\n", b"\r\n").await;
    assert!(refused.starts_with("-CROSSSLOT"), "{refused}");
    assert_eq!(
        ask_raw(&mut s, b"EXEC\r\n", b"\r\n").await,
        "-EXECABORT Transaction discarded because of previous errors.\r\n"
    );
    let n: i64 = redis::cmd("GET")
        .arg("{tx}n")
        .query_async(&mut c)
        .await
        .unwrap();
    assert_eq!(n, 11, "nothing of the aborted transaction ran");

    // A wrong number of arguments, or an unknown command, is answered at once in a node's
    // words, and fails the transaction, as on a node.
    let mut node = tokio::net::TcpStream::connect(h.cluster.nodes[0].addr())
        .await
        .unwrap();
    for req in [
        &b"GET\r\n"[..],
        b"GET {tx}n extra\r\n",
        b"OBJECT ENCODING\r\n",
        b"NOSUCHCOMMAND {tx}n 1 2\r\n",
    ] {
        let mut both = Vec::new();
        for s in [&mut s, &mut node] {
            assert_eq!(ask_raw(s, b"MULTI\r\n", b"\r\n").await, "+OK\r\n");
            let refused = ask_raw(s, req, b"\r\n").await;
            let exec = ask_raw(s, b"EXEC\r\n", b"\r\n").await;
            both.push((refused, exec));
        }
        assert!(both[0].0.starts_with("-ERR "), "{both:?}");
        assert_eq!(both[0], both[1], "through the proxy and on a node");
    }
    // The proxy's own command is the proxy's to refuse there.
    assert_eq!(ask_raw(&mut s, b"MULTI\r\n", b"\r\n").await, "+OK\r\n");
    let own = ask_raw(&mut s, b"SLOTGUARD MOVES\r\n", b"\r\n").await;
    assert!(
        own.starts_with("-ERR slotguard: 'slotguard' is not supported: not inside a transaction"),
        "{own}"
    );
    assert!(ask_raw(&mut s, b"EXEC\r\n", b"\r\n")
        .await
        .starts_with("-EXECABORT"));

    // DISCARD drops what was queued.
    assert_eq!(ask_raw(&mut s, b"MULTI\r\n", b"\r\n").await, "+OK\r\n");
    assert_eq!(
        ask_raw(&mut s, b"SET {tx}n 0\r\n", b"\r\n").await,
        "+QUEUED\r\n"
    );
    assert_eq!(ask_raw(&mut s, b"DISCARD\r\n", b"\r\n").await, "+OK\r\n");
    assert_eq!(
        ask_raw(&mut s, b"DISCARD\r\n", b"\r\n").await,
        "-ERR DISCARD without MULTI\r\n"
    );
    let n: i64 = redis::cmd("GET")
        .arg("{tx}n")
        .query_async(&mut c)
        .await
        .unwrap();
    assert_eq!(n, 11);
}

/// A cluster built by `options` behind a proxy with password `root-pw` (the admin
/// `default` user) and a user `writer` (`writer-pw`) who may read and write but not
/// administer.
async fn with_root_and_a_writer(options: slotguard::localcluster::Options) -> Harness {
    use slotguard::config::{Access, User};
    Harness::start_with(options, |c| {
        c.password = Some("root-pw".into());
        c.users = vec![User {
            name: "writer".into(),
            password: "writer-pw".into(),
            access: Access::ReadWrite,
        }];
    })
    .await
}

/// CONFIG SET, RESETSTAT and REWRITE reach every node, replicas included; CONFIG GET is
/// answered by a master; a node's refusal comes back naming the node; users without admin
/// access may not touch the nodes' settings.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn config_set_reaches_every_node() {
    let h = with_root_and_a_writer(slotguard::localcluster::Options::default()).await;
    let nodes: Vec<String> = h.cluster.nodes.iter().map(|n| n.addr()).collect();
    assert_eq!(nodes.len(), 6, "three masters and their replicas");
    let mut s = tokio::net::TcpStream::connect(h.proxy.addr).await.unwrap();
    let mut ask = async |req: &str| ask_raw(&mut s, req.as_bytes(), b"\r\n").await;
    assert_eq!(ask("AUTH writer writer-pw\r\n").await, "+OK\r\n");
    for (req, name) in [
        ("CONFIG SET maxmemory-policy allkeys-lru\r\n", "config"),
        ("CONFIG GET maxmemory\r\n", "config"),
        ("SLOWLOG GET\r\n", "slowlog"),
        ("LATENCY RESET\r\n", "latency"),
    ] {
        assert_eq!(
            ask(req).await,
            format!("-NOPERM User writer has no permissions to run the '{name}' command\r\n")
        );
    }
    assert_eq!(ask("AUTH root-pw\r\n").await, "+OK\r\n");
    assert_eq!(
        ask("CONFIG SET maxmemory-policy allkeys-lru\r\n").await,
        "+OK\r\n"
    );
    for addr in &nodes {
        let got = common::call(addr, &["CONFIG", "GET", "maxmemory-policy"]).await;
        let slotguard::protocol::Value::Array(pair) = got else {
            panic!("{got:?}")
        };
        assert_eq!(pair[1].as_str(), Some("allkeys-lru"), "{addr}");
    }
    // A node's output limits for replicas and subscribers pass on; its normal clients'
    // limit would govern the proxy's shared connections, and is the proxy's own.
    assert_eq!(
        ask("CONFIG SET client-output-buffer-limit \"pubsub 64mb 16mb 90 replica 300mb 64mb 70\"\r\n").await,
        "+OK\r\n"
    );
    for addr in &nodes {
        let got = common::call(addr, &["CONFIG", "GET", "client-output-buffer-limit"]).await;
        let slotguard::protocol::Value::Array(pair) = got else {
            panic!("{got:?}")
        };
        let limits = pair[1].as_str().unwrap_or_default();
        assert!(
            limits.contains("pubsub 67108864 16777216 90"),
            "{addr}: {limits}"
        );
        assert!(
            // Redis 7.0 names the class `slave` here.
            limits.contains(" 314572800 67108864 70"),
            "{addr}: {limits}"
        );
    }
    let refused = ask("CONFIG SET client-output-buffer-limit \"normal 1 1 1\"\r\n").await;
    assert!(
        refused.starts_with("-ERR slotguard: CONFIG SET client-output-buffer-limit is refused")
            && refused.contains("client.output_buffer_limit.normal"),
        "{refused}"
    );
    let refused = ask("CONFIG SET no-such-option 1\r\n").await;
    assert!(refused.starts_with("-ERR "), "{refused}");
    assert!(refused.contains("(node 127.0.0.1:"), "{refused}");
    assert_eq!(ask("CONFIG RESETSTAT\r\n").await, "+OK\r\n");
    // A node slower than a connect timeout (a replica busy for 2 s) is waited for.
    let replica = nodes[5].clone();
    let busy = tokio::spawn(async move { common::call(&replica, &["DEBUG", "SLEEP", "2"]).await });
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    assert_eq!(
        ask("CONFIG SET maxmemory-policy volatile-lru\r\n").await,
        "+OK\r\n"
    );
    busy.await.unwrap();

    // redis-py, in both protocols.
    let script = format!(
        r#"
import redis
for proto in (2, 3):
    r = redis.Redis(host="127.0.0.1", port={port}, password="root-pw", protocol=proto,
                    decode_responses=True, socket_timeout=5)
    assert r.config_set("slowlog-log-slower-than", 1000 + proto) is True
    assert r.config_get("slowlog-log-slower-than") == {{"slowlog-log-slower-than": str(1000 + proto)}}
    assert r.config_resetstat() is True
print("ok")
"#,
        port = h.port()
    );
    if !common::redis_py(script).await {
        return;
    }
    for addr in &nodes {
        let got = common::call(addr, &["CONFIG", "GET", "slowlog-log-slower-than"]).await;
        let slotguard::protocol::Value::Array(pair) = got else {
            panic!("{got:?}")
        };
        assert_eq!(pair[1].as_str(), Some("1003"), "{addr}");
    }
}

/// CLIENT REPLY OFF, ON and SKIP, as Redis keeps them: only the replies the client wants
/// are written, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_reply_off_on_and_skip() {
    let h = Harness::start(3, 0).await;
    let mut s = tokio::net::TcpStream::connect(h.proxy.addr).await.unwrap();
    let got = ask_raw(
        &mut s,
        b"CLIENT REPLY SKIP\r\nSET {r}a 1\r\nGET {r}a\r\n",
        b"\r\n1\r\n",
    )
    .await;
    assert_eq!(
        got, "$1\r\n1\r\n",
        "SKIP and the SET after it answer nothing"
    );
    let got = ask_raw(
        &mut s,
        b"CLIENT REPLY OFF\r\nSET {r}b 2\r\nGET {r}b\r\nCLIENT REPLY ON\r\nGET {r}b\r\n",
        b"\r\n2\r\n",
    )
    .await;
    assert_eq!(got, "+OK\r\n$1\r\n2\r\n", "nothing between OFF and ON");
}

/// SCRIPT KILL reaches the master running the script, on a connection of its own (the
/// shared ones to that master wait behind the script): the script stops, the client that
/// ran it gets Redis's error, and with nothing running SCRIPT KILL answers NOTBUSY.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn script_kill_reaches_the_busy_master() {
    let h = Harness::start(3, 0).await;
    let mut c = h.client().await;
    let () = redis::cmd("CONFIG")
        .arg("SET")
        .arg("busy-reply-threshold")
        .arg(100)
        .query_async(&mut c)
        .await
        .unwrap();
    let url = h.url();
    let busy = tokio::spawn(async move {
        let mut c = common::connect(&url).await;
        redis::cmd("EVAL")
            .arg("while true do end")
            .arg(0)
            .query_async::<()>(&mut c)
            .await
    });
    let killed = slotguard::localcluster::wait_for(std::time::Duration::from_secs(10), || {
        let url = h.url();
        async move {
            let mut c = common::connect(&url).await;
            redis::cmd("SCRIPT")
                .arg("KILL")
                .query_async::<()>(&mut c)
                .await
                .is_ok()
        }
    })
    .await;
    assert!(killed.is_ok(), "SCRIPT KILL stopped the script");
    let err = busy.await.unwrap().unwrap_err();
    assert!(err.to_string().contains("killed"), "{err}");
    let idle = redis::cmd("SCRIPT")
        .arg("KILL")
        .query_async::<()>(&mut c)
        .await
        .unwrap_err();
    assert!(
        idle.to_string().to_lowercase().contains("notbusy"),
        "{idle}"
    );
}

/// A library loaded through the proxy is on every master, so FCALL works whatever master
/// its keys are on; FUNCTION DELETE removes it everywhere.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn functions_are_loaded_on_every_master() {
    let h = Harness::start(3, 0).await;
    let mut c = h.client().await;
    let lib = "#!lua name=echolib\nredis.register_function('echokey', function(keys, args) return redis.call('SET', keys[1], args[1]) end)";
    let name: String = redis::cmd("FUNCTION")
        .arg("LOAD")
        .arg(lib)
        .query_async(&mut c)
        .await
        .unwrap();
    assert_eq!(name, "echolib");
    for i in 0..3 {
        let key = format!("{}f", common::tag_on(i));
        let () = redis::cmd("FCALL")
            .arg("echokey")
            .arg(1)
            .arg(&key)
            .arg("v")
            .query_async(&mut c)
            .await
            .unwrap_or_else(|e| panic!("FCALL on master {i}: {e}"));
    }
    // A master that lost its libraries (a promoted replica that missed the load, a new
    // master) gets them from the proxy on the first FCALL that misses them.
    let key = format!("{}f", common::tag_on(1));
    let owner = h
        .owner_of(slotguard::protocol::key_slot(key.as_bytes()))
        .await;
    common::call(&owner, &["FUNCTION", "FLUSH"]).await;
    let () = redis::cmd("FCALL")
        .arg("echokey")
        .arg(1)
        .arg(&key)
        .arg("again")
        .query_async(&mut c)
        .await
        .expect("the library is loaded again where it was missing");
    let listed = common::call(&owner, &["FUNCTION", "LIST"]).await;
    assert_eq!(listed.as_array().map(<[_]>::len), Some(1), "{listed:?}");
    let () = redis::cmd("FUNCTION")
        .arg("DELETE")
        .arg("echolib")
        .query_async(&mut c)
        .await
        .unwrap();
    for node in &h.cluster.nodes {
        let listed = common::call(&node.addr(), &["FUNCTION", "LIST"]).await;
        assert_eq!(
            listed,
            slotguard::protocol::Value::Array(vec![]),
            "{}",
            node.addr()
        );
    }
    // Deleted through the proxy: not loaded again; the node's own error comes back.
    let err = redis::cmd("FCALL")
        .arg("echokey")
        .arg(1)
        .arg(&key)
        .arg("v")
        .query_async::<Value>(&mut c)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("Function not found"), "{err}");

    // FUNCTION RESTORE ... FLUSH leaves only what the dump holds: a library loaded after
    // the dump stays gone, and the proxy does not load it again where an FCALL misses it.
    let () = redis::cmd("FUNCTION")
        .arg("LOAD")
        .arg(lib)
        .query_async(&mut c)
        .await
        .map(|_: String| ())
        .unwrap();
    let dump: Vec<u8> = redis::cmd("FUNCTION")
        .arg("DUMP")
        .query_async(&mut c)
        .await
        .unwrap();
    let later =
        "#!lua name=laterlib\nredis.register_function('later', function(keys, args) return 1 end)";
    let () = redis::cmd("FUNCTION")
        .arg("LOAD")
        .arg(later)
        .query_async(&mut c)
        .await
        .map(|_: String| ())
        .unwrap();
    let () = redis::cmd("FUNCTION")
        .arg("RESTORE")
        .arg(dump)
        .arg("FLUSH")
        .query_async(&mut c)
        .await
        .unwrap();
    let err = redis::cmd("FCALL")
        .arg("later")
        .arg(1)
        .arg(&key)
        .query_async::<Value>(&mut c)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("Function not found"), "{err}");
    let () = redis::cmd("FCALL")
        .arg("echokey")
        .arg(1)
        .arg(&key)
        .arg("restored")
        .query_async(&mut c)
        .await
        .expect("the dump's library runs");
}

/// LATENCY and SLOWLOG answer for the whole cluster: every master's slow commands and
/// histograms, merged; in both protocols, with redis-py too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn latency_and_slowlog_cover_every_master() {
    let h = Harness::start(3, 0).await;
    let mut c = h.client().await;
    let mut run = async |args: &[&str]| -> Value {
        let mut cmd = redis::cmd(args[0]);
        for a in &args[1..] {
            cmd.arg(*a);
        }
        cmd.query_async(&mut c).await.unwrap()
    };
    run(&["CONFIG", "SET", "slowlog-log-slower-than", "0"]).await;
    // Room for the proxy's own commands to the masters (topology looks, the stray-key
    // audit) alongside the test's, however they interleave.
    run(&["CONFIG", "SET", "slowlog-max-len", "100000"]).await;
    run(&["SLOWLOG", "RESET"]).await;
    run(&["CONFIG", "RESETSTAT"]).await;
    let keys: Vec<String> = (0..3).map(|i| format!("{}k", common::tag_on(i))).collect();
    for k in &keys {
        run(&["SET", k, "v"]).await;
    }
    // Every master logged its SET; newest first (by the second: ties come in any order).
    let log = run(&["SLOWLOG", "GET", "-1"]).await;
    let Value::Array(entries) = &log else {
        panic!("{log:?}")
    };
    let args_of = |e: &Value| -> Vec<String> {
        let Value::Array(fields) = e else { panic!() };
        redis::from_redis_value(&fields[3]).unwrap()
    };
    let sets: Vec<Vec<String>> = entries
        .iter()
        .map(args_of)
        .filter(|a| a[0] == "SET")
        .collect();
    let mut logged: Vec<&String> = sets.iter().map(|a| &a[1]).collect();
    logged.sort();
    let mut want: Vec<&String> = keys.iter().collect();
    want.sort();
    assert_eq!(logged, want);
    let times: Vec<i64> = entries
        .iter()
        .map(|e| redis::from_redis_value(&e.as_sequence().unwrap()[1]).unwrap())
        .collect();
    assert!(times.is_sorted_by(|a, b| a >= b), "{times:?}");
    assert_eq!(
        run(&["SLOWLOG", "GET", "1"])
            .await
            .as_sequence()
            .unwrap()
            .len(),
        1
    );
    let len: i64 = redis::from_redis_value(&run(&["SLOWLOG", "LEN"]).await).unwrap();
    assert!(len >= 3, "{len}");

    // Three SETs on three masters are three calls; CONFIG RESETSTAT, sent once to each
    // master, is one.
    let histogram = run(&["LATENCY", "HISTOGRAM", "set", "config|resetstat"]).await;
    let map: std::collections::HashMap<String, Value> =
        redis::from_redis_value(&histogram).unwrap();
    let calls = |name: &str| -> i64 {
        let figures: std::collections::HashMap<String, Value> =
            redis::from_redis_value(&map[name]).unwrap();
        redis::from_redis_value(&figures["calls"]).unwrap()
    };
    assert_eq!(calls("set"), 3);
    assert_eq!(calls("config|resetstat"), 1);
    let doctor: String = redis::from_redis_value(&run(&["LATENCY", "DOCTOR"]).await).unwrap();
    for addr in h.cluster.addrs() {
        assert!(doctor.contains(&format!("# {addr}\n")), "{doctor}");
    }
    let reset: i64 = redis::from_redis_value(&run(&["LATENCY", "RESET"]).await).unwrap();
    assert!(reset >= 0);
    assert_eq!(run(&["LATENCY", "LATEST"]).await, Value::Array(vec![]));

    let script = format!(
        r#"
import redis
for proto in (2, 3):
    r = redis.Redis(host="127.0.0.1", port={port}, protocol=proto, decode_responses=True,
                    socket_timeout=5)
    assert r.slowlog_reset() is True
    for i in range(3):
        r.set("{keys0}" if i == 0 else "{keys1}", "v")
    log = r.slowlog_get(2)
    assert len(log) == 2, log
    assert r.slowlog_len() >= 3
    h = r.execute_command("LATENCY", "HISTOGRAM", "set")
    assert "set" in h, h
    assert r.execute_command("LATENCY", "LATEST") == []
    assert isinstance(r.execute_command("LATENCY", "DOCTOR"), str)
print("ok")
"#,
        port = h.port(),
        keys0 = keys[0],
        keys1 = keys[1],
    );
    common::redis_py(script).await;
}

/// DEBUG: what only looks at a key, or waits, reaches the key's master (or any); what can
/// crash, restart or rewrite a node is refused with the reason; users without admin access
/// may not run it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn debug_that_only_looks_reaches_a_node_and_the_rest_is_refused() {
    let h = with_root_and_a_writer(slotguard::localcluster::Options {
        replicas_per_master: 0,
        ..Default::default()
    })
    .await;
    let mut s = tokio::net::TcpStream::connect(h.proxy.addr).await.unwrap();
    let mut ask = async |req: &str| ask_raw(&mut s, req.as_bytes(), b"\r\n").await;
    assert_eq!(ask("AUTH writer writer-pw\r\n").await, "+OK\r\n");
    assert_eq!(
        ask("DEBUG OBJECT {d}k\r\n").await,
        "-NOPERM User writer has no permissions to run the 'debug' command\r\n"
    );
    assert_eq!(ask("AUTH root-pw\r\n").await, "+OK\r\n");
    // On every master in turn: each key's own master answers for it.
    for key in ["{a}k", "{b}k", "{c}k"] {
        assert_eq!(ask(&format!("SET {key} 12345\r\n")).await, "+OK\r\n");
        let object = ask(&format!("DEBUG OBJECT {key}\r\n")).await;
        assert!(
            object.starts_with("+Value at:") && object.contains("encoding:int"),
            "{object}"
        );
    }
    assert_eq!(
        ask("DEBUG OBJECT {a}missing\r\n").await,
        "-ERR no such key\r\n"
    );
    assert_eq!(ask("DEBUG SLEEP 0\r\n").await, "+OK\r\n");
    let digest = ask_raw(&mut s, b"DEBUG DIGEST-VALUE {a}k\r\n", b"\r\n").await;
    assert!(digest.starts_with("*1\r\n"), "{digest}");
    let crossslot = ask_raw(&mut s, b"DEBUG DIGEST-VALUE {a}k {b}k\r\n", b"\r\n").await;
    assert!(crossslot.starts_with("-CROSSSLOT"), "{crossslot}");
    for (req, name) in [
        ("DEBUG SEGFAULT\r\n", "debug segfault"),
        ("DEBUG RELOAD\r\n", "debug reload"),
        ("DEBUG SET-ACTIVE-EXPIRE 0\r\n", "debug set-active-expire"),
    ] {
        let refused = ask_raw(&mut s, req.as_bytes(), b"\r\n").await;
        assert!(
            refused.starts_with(&format!(
                "-ERR slotguard: '{name}' is not supported: it can crash"
            )),
            "{refused}"
        );
    }
    // Every master still answers.
    for key in ["{a}k", "{b}k", "{c}k"] {
        assert_eq!(
            ask_raw(&mut s, format!("GET {key}\r\n").as_bytes(), b"45\r\n").await,
            "$5\r\n12345\r\n"
        );
    }
}

/// A small keyspace comes back from SCAN in one call, as from one node: when a master's
/// walk ends short of COUNT, the next master's keys join the reply. Three keys, one on
/// each master, and SCAN's default COUNT of 10.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scan_of_a_small_keyspace_is_one_call() {
    let h = Harness::start(3, 0).await;
    let mut c = h.client().await;
    let mut small = tokio::net::TcpStream::connect(h.proxy.addr).await.unwrap();
    for key in ["few:{a}", "few:{b}", "few:{c}"] {
        let set = format!("SET {key} 1\r\n");
        assert_eq!(
            ask_raw(&mut small, set.as_bytes(), b"\r\n").await,
            "+OK\r\n"
        );
    }
    let (next, mut few): (String, Vec<String>) = redis::cmd("SCAN")
        .arg(0)
        .arg("MATCH")
        .arg("few:*")
        .query_async(&mut c)
        .await
        .unwrap();
    few.sort();
    assert_eq!(
        (next.as_str(), few),
        (
            "0",
            vec!["few:{a}".into(), "few:{b}".into(), "few:{c}".into()]
        ),
        "one call, every master, cursor 0"
    );
}

/// MONITOR shows every command that passes through the proxy, from any client, in
/// Redis's format, passwords redacted; in MONITOR mode PING is answered, other commands
/// refused as a node refuses them, and RESET makes an ordinary client again. Users
/// without admin access may not monitor. redis-cli's MONITOR reads it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn monitor_shows_every_client_s_commands() {
    let h = with_root_and_a_writer(slotguard::localcluster::Options {
        replicas_per_master: 0,
        ..Default::default()
    })
    .await;
    let mut writer = tokio::net::TcpStream::connect(h.proxy.addr).await.unwrap();
    let auth = ask_raw(&mut writer, b"AUTH writer writer-pw\r\n", b"\r\n").await;
    assert_eq!(auth, "+OK\r\n");
    assert_eq!(
        ask_raw(&mut writer, b"MONITOR\r\n", b"\r\n").await,
        "-NOPERM User writer has no permissions to run the 'monitor' command\r\n"
    );
    let mut monitor = tokio::net::TcpStream::connect(h.proxy.addr).await.unwrap();
    assert_eq!(
        ask_raw(&mut monitor, b"AUTH root-pw\r\n", b"\r\n").await,
        "+OK\r\n"
    );
    assert_eq!(
        ask_raw(&mut monitor, b"MONITOR\r\n", b"\r\n").await,
        "+OK\r\n"
    );
    // redis-cli monitors too, for a while.
    let cli = std::process::Command::new("timeout")
        .args([
            "3",
            "redis-cli",
            "-p",
            &h.port().to_string(),
            "-a",
            "root-pw",
        ])
        .args(["--no-auth-warning", "MONITOR"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    let set = b"*3\r\n$3\r\nSET\r\n$5\r\nmon:k\r\n$4\r\na \"b\r\n";
    assert_eq!(ask_raw(&mut writer, set, b"\r\n").await, "+OK\r\n");
    let wrong = ask_raw(&mut writer, b"AUTH writer hunter2\r\n", b"\r\n").await;
    assert!(wrong.starts_with("-WRONGPASS"), "{wrong}");
    let got = ask_raw(&mut writer, b"GET mon:k\r\n", b"b\r\n").await;
    assert_eq!(got, "$4\r\na \"b\r\n");
    let lines = ask_raw(&mut monitor, b"", b"\"GET\" \"mon:k\"\r\n").await;
    // The writer's lines (redis-cli's own AUTH shows too, from its address).
    let peer = writer.local_addr().unwrap();
    let lines: Vec<&str> = lines
        .lines()
        .filter(|l| l.contains(&format!("[0 {peer}]")))
        .collect();
    assert_eq!(lines.len(), 3, "{lines:?}");
    for (line, shown) in lines.iter().zip([
        r#""SET" "mon:k" "a \"b""#,
        r#""AUTH" "(redacted)" "(redacted)""#,
        r#""GET" "mon:k""#,
    ]) {
        let (time, rest) = line.strip_prefix('+').unwrap().split_once(' ').unwrap();
        assert!(time.parse::<f64>().is_ok(), "{line}");
        assert_eq!(rest, format!("[0 {peer}] {shown}"));
    }
    // In MONITOR mode.
    // PING is answered, and shown (the monitor's own line follows its PONG, as on a node).
    let pong = ask_raw(&mut monitor, b"PING\r\n", b"\"PING\"\r\n").await;
    assert!(pong.starts_with("+PONG\r\n+"), "{pong}");
    let refused = ask_raw(&mut monitor, b"GET mon:k\r\n", b"keyspace\r\n").await;
    assert!(
        refused.ends_with("-ERR Replica can't interact with the keyspace\r\n"),
        "{refused}"
    );
    let reset = ask_raw(&mut monitor, b"RESET\r\n", b"+RESET\r\n").await;
    assert!(reset.ends_with("+RESET\r\n"), "{reset}");
    assert_eq!(
        ask_raw(&mut monitor, b"AUTH root-pw\r\n", b"\r\n").await,
        "+OK\r\n"
    );
    let got = ask_raw(&mut monitor, b"GET mon:k\r\n", b"b\r\n").await;
    assert_eq!(got, "$4\r\na \"b\r\n");
    let out = cli.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains(r#""SET" "mon:k" "a \"b""#),
        "redis-cli saw it: {text}"
    );
}
