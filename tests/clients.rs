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
    let probe = Command::new("python3")
        .args(["-c", "import redis"])
        .status();
    if !probe.is_ok_and(|s| s.success()) {
        eprintln!("SKIPPED: redis-py is not installed (pip install redis); .ci/run installs it");
        return;
    }
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
    let out = tokio::task::spawn_blocking(move || {
        Command::new("python3")
            .arg("-c")
            .arg(script)
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    assert!(
        out.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
