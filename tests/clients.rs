//! Unmodified clients against the proxy: redis-benchmark, redis-cli, redis-py.

mod common;

use std::process::Command;

use common::Harness;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_benchmark_default_tests_run_without_errors() {
    let h = Harness::start(3, 0).await;
    let port = h.port().to_string();
    let out = tokio::task::spawn_blocking(move || {
        Command::new("redis-benchmark")
            .args([
                "-p", &port, "-n", "2000", "-c", "20", "-r", "10000", "--csv",
            ])
            .output()
            .expect("redis-benchmark runs")
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    assert!(!stderr.contains("rror"), "errors: {stderr}");
    for test in [
        "PING_INLINE",
        "PING_MBULK",
        "SET",
        "GET",
        "INCR",
        "LPUSH",
        "RPUSH",
        "LPOP",
        "RPOP",
        "SADD",
        "HSET",
        "SPOP",
        "ZADD",
        "ZPOPMIN",
        "LRANGE_100",
        "LRANGE_600",
        "MSET (10 keys)",
    ] {
        assert!(
            stdout.contains(&format!("\"{test}")),
            "{test} missing from:\n{stdout}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_cli_talks_to_the_proxy() {
    let h = Harness::start(3, 0).await;
    let port = h.port().to_string();
    let cli = |args: &[&str]| {
        let out = Command::new("redis-cli")
            .arg("-p")
            .arg(&port)
            .args(args)
            .output()
            .expect("redis-cli runs");
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    assert_eq!(cli(&["set", "greeting", "hello world"]), "OK");
    assert_eq!(cli(&["get", "greeting"]), "hello world");
    assert_eq!(cli(&["mset", "a", "1", "b", "2", "c", "3"]), "OK");
    assert_eq!(cli(&["mget", "a", "b", "c"]), "1\n2\n3");
    assert_eq!(cli(&["dbsize"]), "4");
    assert_eq!(
        cli(&["cluster", "keyslot", "greeting"]),
        slotguard::protocol::key_slot(b"greeting").to_string()
    );
    // redis-cli -c (cluster mode) follows no redirect: the proxy never sends one.
    assert_eq!(cli(&["-c", "get", "greeting"]), "hello world");
    // A multi-line session, as piped input.
    let out = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "printf 'incr n\\nincr n\\nget n\\n' | redis-cli -p {port}"
        ))
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "1\n2\n2");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_py_works_unmodified() {
    let h = Harness::start(3, 0).await;
    let script = format!(
        r#"
import redis
r = redis.Redis(host="127.0.0.1", port={port}, decode_responses=True)
assert r.ping()
r.set("py:a", "1")
assert r.get("py:a") == "1"
r.mset({{"py:%d" % i: i for i in range(100)}})
assert r.mget(["py:%d" % i for i in range(100)]) == [str(i) for i in range(100)]
p = r.pipeline(transaction=False)
for i in range(500):
    p.incr("py:counter")
assert p.execute()[-1] == 500
r.hset("py:h", mapping={{"x": "1", "y": "2"}})
assert r.hgetall("py:h") == {{"x": "1", "y": "2"}}
assert set(r.scan_iter("py:*")) >= {{"py:a", "py:h", "py:counter"}}
assert r.delete(*["py:%d" % i for i in range(100)]) == 100
rc = redis.RedisCluster(host="127.0.0.1", port={port}, decode_responses=True)
rc.set("py:cluster", "ok")
assert rc.get("py:cluster") == "ok"
print("redis-py ok")
"#,
        port = h.port()
    );
    common::redis_py(script).await;
}

/// What the proxy builds itself (merged replies, CLIENT answers) is in the client's
/// protocol: redis-py 8 in RESP3 and in RESP2, with keys spread over every master and
/// missing keys among them. (A RESP2 null in a RESP3 reply made redis-py wait forever.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_py_gets_merged_replies_in_its_protocol() {
    let h = Harness::start(3, 0).await;
    let script = format!(
        r#"
import redis
for proto in (3, 2):
    r = redis.Redis(host="127.0.0.1", port={port}, protocol=proto, decode_responses=True,
                    socket_timeout=5)
    p = "p%d:" % proto
    keys = [p + str(i) for i in range(20)]
    assert r.mset({{k: i for i, k in enumerate(keys)}})
    got = r.mget([keys[0], p + "nope", keys[1], p + "missing", keys[19]])
    assert got == ["0", None, "1", None, "19"], got
    assert r.mget([p + "a", p + "b", p + "c"]) == [None, None, None]
    assert r.exists(keys[0], p + "nope", keys[5]) == 2
    assert r.delete(keys[0], p + "nope", keys[5]) == 2
    assert r.client_getname() is None
    r.client_setname("py" + str(proto))
    assert r.client_getname() == "py" + str(proto)
    info = r.client_info()
    assert info["name"] == "py" + str(proto), info
    assert any(c["name"] == "py" + str(proto) for c in r.client_list())
    assert r.info("keyspace")["db0"]["keys"] >= 17
    assert r.pubsub_numsub("nobody") == [("nobody", 0)]
    assert r.dbsize() >= 17
print("ok")
"#,
        port = h.port()
    );
    common::redis_py(script).await;
}

/// A merged MGET is, byte for byte, what one node sends for the same keys in the same
/// protocol.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn merged_replies_match_a_node_byte_for_byte() {
    let h = Harness::start(3, 0).await;
    // Keys of one slot on one node, and keys of three slots through the proxy, with the
    // same values and the same gap.
    let local: Vec<String> = (0..3).map(|i| format!("{{same}}k{i}")).collect();
    let spread: Vec<String> = (0..3).map(|i| common::tag_on(i) + "k").collect();
    let owner = h
        .owner_of(slotguard::protocol::key_slot(local[0].as_bytes()))
        .await;
    let mut c = h.client().await;
    for i in [0, 2] {
        common::call(&owner, &["SET", &local[i], &format!("v{i}")]).await;
        let () = redis::cmd("SET")
            .arg(&spread[i])
            .arg(format!("v{i}"))
            .query_async(&mut c)
            .await
            .unwrap();
    }
    for proto in ["2", "3"] {
        let mget = |keys: &[String]| format!("HELLO {proto}\r\nMGET {}\r\n", keys.join(" "));
        let direct = second_reply(&owner, &mget(&local)).await;
        let proxied = second_reply(&h.proxy.addr.to_string(), &mget(&spread)).await;
        assert_eq!(
            String::from_utf8_lossy(&proxied),
            String::from_utf8_lossy(&direct),
            "HELLO {proto}"
        );
    }
}

/// Sends `req` (two commands) to `addr` and gives the second reply.
async fn second_reply(addr: &str, req: &str) -> Vec<u8> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(req.as_bytes()).await.unwrap();
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let mut scanner = slotguard::protocol::ReplyScanner::default();
        if let Some(first) = scanner.scan(&buf).unwrap() {
            let mut scanner = slotguard::protocol::ReplyScanner::default();
            if let Some(second) = scanner.scan(&buf[first..]).unwrap() {
                return buf[first..first + second].to_vec();
            }
        }
        let n = tokio::time::timeout(std::time::Duration::from_secs(5), s.read(&mut chunk))
            .await
            .expect("a reply within 5 s")
            .unwrap();
        assert!(n > 0, "closed early");
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// CLIENT LIST, INFO, KILL and UNBLOCK see the proxy's own clients, in Redis's format.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_list_kill_and_unblock_see_the_proxys_clients() {
    use common::Raw;
    let h = Harness::start(3, 0).await;
    let mut me = Raw::connect(&h).await;
    let mut other = Raw::connect(&h).await;
    assert_eq!(
        &other.ask("CLIENT SETNAME worker\r\n").await[..],
        b"+OK\r\n"
    );
    let id_of = |frame: bytes::Bytes| -> i64 {
        std::str::from_utf8(&frame[1..frame.len() - 2])
            .unwrap()
            .parse()
            .unwrap()
    };
    let other_id = id_of(other.ask("CLIENT ID\r\n").await);
    let my_id = id_of(me.ask("CLIENT ID\r\n").await);

    let list = String::from_utf8(me.ask("CLIENT LIST\r\n").await.to_vec()).unwrap();
    let mine = list
        .lines()
        .find(|l| l.contains(&format!("id={my_id} ")))
        .unwrap_or_else(|| panic!("{list}"));
    // Redis's own test pattern for CLIENT LIST (unit/introspection).
    for field in [
        "flags=N db=0 sub=0 psub=0 ssub=0 multi=-1 qbuf=26 ",
        "obl=0 oll=0 omem=0 tot-mem=0 events=r cmd=client|list user=default redir=-1 resp=2",
    ] {
        assert!(mine.contains(field), "{mine}");
    }
    let theirs = list
        .lines()
        .find(|l| l.contains(&format!("id={other_id} ")))
        .unwrap_or_else(|| panic!("{list}"));
    assert!(theirs.contains(" name=worker "), "{theirs}");
    assert!(theirs.contains(" cmd=client|id "), "{theirs}");
    let one = me.ask(&format!("CLIENT LIST ID {other_id}\r\n")).await;
    assert_eq!(String::from_utf8_lossy(&one).matches("id=").count(), 1);
    let info = me.ask("CLIENT INFO\r\n").await;
    assert!(String::from_utf8_lossy(&info).contains("cmd=client|info"));

    // A client blocked through the proxy is unblocked on its node, with a timeout or an
    // error, as the node would say it.
    let mut blocked = Raw::connect(&h).await;
    let blocked_id = id_of(blocked.ask("CLIENT ID\r\n").await);
    blocked.send("BLPOP unblock-me 0\r\n").await;
    let mut unblocked = 0;
    for _ in 0..50 {
        let answer = me
            .ask(&format!("CLIENT UNBLOCK {blocked_id} ERROR\r\n"))
            .await;
        unblocked = id_of(answer);
        if unblocked == 1 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert_eq!(unblocked, 1, "the BLPOP was unblocked");
    let error = blocked.frame().await;
    assert!(error.starts_with(b"-UNBLOCKED"), "{error:?}");
    assert_eq!(
        &me.ask(&format!("CLIENT UNBLOCK {blocked_id}\r\n")).await[..],
        b":0\r\n",
        "nothing left to unblock"
    );

    // KILL: the errors Redis gives, another client by id, then everyone but me.
    for (req, want) in [
        (
            "CLIENT KILL\r\n",
            "-ERR wrong number of arguments for 'client|kill' command",
        ),
        (
            "CLIENT KILL ID 0\r\n",
            "-ERR client-id should be greater than 0",
        ),
        (
            "CLIENT KILL TYPE nope\r\n",
            "-ERR Unknown client type 'nope'",
        ),
        ("CLIENT KILL USER nobody\r\n", "-ERR No such user 'nobody'"),
        ("CLIENT KILL SKIPME maybe\r\n", "-ERR syntax error"),
        ("CLIENT KILL 10.0.0.1:1\r\n", "-ERR No such client"),
    ] {
        let got = me.ask(req).await;
        assert!(
            String::from_utf8_lossy(&got).starts_with(want),
            "{req}: {got:?}"
        );
    }
    assert_eq!(
        &me.ask(&format!("CLIENT KILL ID {other_id}\r\n")).await[..],
        b":1\r\n"
    );
    let mut buf = [0u8; 16];
    use tokio::io::AsyncReadExt;
    let closed = tokio::time::timeout(std::time::Duration::from_secs(5), other.s.read(&mut buf))
        .await
        .unwrap();
    assert!(
        matches!(closed, Ok(0) | Err(_)),
        "the killed client was closed"
    );
    let left = id_of(me.ask("CLIENT KILL SKIPME yes\r\n").await);
    assert_eq!(left, 1, "the blocked client was the only other one");
    assert_eq!(&me.ask("PING\r\n").await[..], b"+PONG\r\n");
    // And myself: the reply comes, then the connection closes.
    assert_eq!(&me.ask("CLIENT KILL SKIPME no\r\n").await[..], b":1\r\n");
    let closed = tokio::time::timeout(std::time::Duration::from_secs(5), me.s.read(&mut buf))
        .await
        .unwrap();
    assert!(matches!(closed, Ok(0) | Err(_)));
}

/// redis-py's CLIENT helpers parse the proxy's answers in both protocols; CLIENT PAUSE
/// reaches every master.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_py_lists_kills_and_pauses_clients() {
    let h = Harness::start(3, 0).await;
    let script = format!(
        r#"
import redis
for proto in (2, 3):
    r = redis.Redis(host="127.0.0.1", port={port}, protocol=proto, decode_responses=True,
                    socket_timeout=5)
    other = redis.Redis(host="127.0.0.1", port={port}, protocol=proto, decode_responses=True,
                        socket_timeout=5)
    other.client_setname("victim")
    me = r.client_info()
    assert me["cmd"] == "client|info", me
    assert me["resp"] == str(proto), me
    names = [c["name"] for c in r.client_list()]
    assert "victim" in names, names
    victim = other.client_id()
    killed = r.client_kill_filter(_id=victim)
    assert killed == 1, (killed, victim, r.client_list())
    assert r.client_pause(50) is True
    unpaused = r.client_unpause()
    assert unpaused == "OK", unpaused  # redis-py has no callback for it
    assert r.info("clients")["connected_clients"] >= 1
print("ok")
"#,
        port = h.port()
    );
    common::redis_py(script).await;
    // Every master heard the pause: CLIENT PAUSE shows in each one's command stats.
    for addr in h.cluster.addrs() {
        let info = common::call(&addr, &["INFO", "commandstats"]).await;
        let text = info.as_str().unwrap_or_default().to_string();
        assert!(
            text.contains("cmdstat_client|pause:calls=2"),
            "{addr}: {text}"
        );
    }
}
