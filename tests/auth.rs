//! Credentials: a password-protected cluster behind the proxy, and the proxy's own users.

mod common;

use std::time::Duration;

use common::{ask_raw, tag_on, Harness};
use slotguard::client::{Auth, Conn};
use slotguard::config::{Access, User};
use slotguard::localcluster::{wait_for, Options};
use slotguard::protocol::key_slot;
use tokio::net::TcpStream;

const SECRET: &str = "cluster-secret";

async fn node_call(h: &Harness, addr: &str, args: &[&str]) -> slotguard::protocol::Value {
    let mut c = Conn::dial(addr, &h.cluster.dial(Duration::from_secs(5)))
        .await
        .unwrap();
    c.call_ok(args)
        .await
        .unwrap_or_else(|e| panic!("{args:?} on {addr}: {e}"))
}

/// Everything a client does goes through connections that authenticate: shared ones,
/// dedicated ones (BLPOP), subscription ones, the control plane, and a repair's MIGRATE.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_password_protected_cluster_is_served_and_repaired() {
    let mut h = Harness::start_with(
        Options {
            masters: 3,
            replicas_per_master: 1,
            node_timeout_ms: 1000,
            password: Some(SECRET.into()),
            ..Options::default()
        },
        |c| {
            c.backend_auth = Some(Auth {
                username: None,
                password: SECRET.into(),
            });
            c.repair_grace = Duration::from_secs(1);
        },
    )
    .await;
    // The nodes refuse a client without the password.
    let mut bare = Conn::connect(&h.cluster.nodes[0].addr(), Duration::from_secs(5))
        .await
        .unwrap();
    let refused = bare.call(&["GET", "k"]).await.unwrap();
    assert!(format!("{refused:?}").contains("NOAUTH"), "{refused:?}");

    let mut c = h.client().await;
    common::mset_mget_across_slots(&mut c).await;

    // A dedicated connection.
    let list = format!("{}q", tag_on(1));
    let () = redis::cmd("RPUSH")
        .arg(&list)
        .arg("job")
        .query_async(&mut c)
        .await
        .unwrap();
    let popped: (String, String) = redis::cmd("BLPOP")
        .arg(&list)
        .arg(1)
        .query_async(&mut c)
        .await
        .unwrap();
    assert_eq!(popped.1, "job");

    // A subscription connection.
    let mut sub = TcpStream::connect(h.proxy.addr).await.unwrap();
    assert!(ask_raw(&mut sub, b"SUBSCRIBE news\r\n", b":1\r\n")
        .await
        .contains("subscribe"));
    let _: i64 = redis::cmd("PUBLISH")
        .arg("news")
        .arg("hello")
        .query_async(&mut c)
        .await
        .unwrap();
    let message = ask_raw(&mut sub, b"", b"hello\r\n").await;
    assert!(message.contains("message"), "{message}");

    // A repair: a migration cut by the source's death is finished with MIGRATE ... AUTH.
    let tag = (0..)
        .map(|i| format!("m{i}"))
        .find(|t| key_slot(t.as_bytes()) < 5000)
        .unwrap();
    let slot = key_slot(tag.as_bytes());
    let keys: Vec<String> = (0..50).map(|i| format!("{{{tag}}}:{i}")).collect();
    for k in &keys {
        let () = redis::cmd("SET")
            .arg(k)
            .arg(k)
            .query_async(&mut c)
            .await
            .unwrap();
    }
    let (a, b) = (h.cluster.nodes[0].addr(), h.cluster.nodes[1].addr());
    let id = |v: slotguard::protocol::Value| v.as_str().unwrap().to_string();
    let source = id(node_call(&h, &a, &["CLUSTER", "MYID"]).await);
    let target = id(node_call(&h, &b, &["CLUSTER", "MYID"]).await);
    let s = slot.to_string();
    node_call(&h, &b, &["CLUSTER", "SETSLOT", &s, "IMPORTING", &source]).await;
    node_call(&h, &a, &["CLUSTER", "SETSLOT", &s, "MIGRATING", &target]).await;
    let (host, port) = b.rsplit_once(':').unwrap();
    for k in keys.iter().take(20) {
        node_call(
            &h,
            &a,
            &["MIGRATE", host, port, k, "0", "5000", "AUTH", SECRET],
        )
        .await;
    }
    let (limit, seen) = (Duration::from_secs(10), "the proxy sees the migration");
    common::wait_decision(&h, slot, limit, |_| true, seen).await;
    h.cluster.nodes[0].kill();
    h.cluster.wait_promoted(0).await.unwrap();
    // The proxy finishes the migration onto the target: every key is there.
    let dial = h.cluster.dial(Duration::from_secs(1));
    wait_for(Duration::from_secs(30), || {
        let (b, s, dial) = (b.clone(), s.clone(), dial.clone());
        async move {
            let Ok(mut conn) = Conn::dial(&b, &dial).await else {
                return false;
            };
            let count = conn.call_ok(&["CLUSTER", "COUNTKEYSINSLOT", &s]).await;
            matches!(count, Ok(slotguard::protocol::Value::Int(50)))
        }
    })
    .await
    .expect("every key of the slot reaches the target");
    for k in &keys {
        let v: String = redis::cmd("GET").arg(k).query_async(&mut c).await.unwrap();
        assert_eq!(&v, k);
    }
    h.cluster.restart(0).await.unwrap();
    h.cluster
        .wait_healthy(Duration::from_secs(30))
        .await
        .unwrap();
    wait_for(Duration::from_secs(20), || async {
        h.cluster_check().is_ok()
    })
    .await
    .unwrap_or_else(|_| panic!("{}", h.cluster_check().unwrap_err()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxy_users_get_the_access_they_were_given() {
    let user = |name: &str, access| User {
        name: name.into(),
        password: format!("{name}-pw"),
        access,
    };
    let h = Harness::tuned(|c| {
        c.password = Some("root-pw".into());
        c.users = vec![
            user("reader", Access::ReadOnly),
            user("writer", Access::ReadWrite),
        ];
    })
    .await;
    let mut s = TcpStream::connect(h.proxy.addr).await.unwrap();
    let mut ask = async |req: &str| ask_raw(&mut s, req.as_bytes(), b"\r\n").await;
    assert!(ask("GET k\r\n").await.starts_with("-NOAUTH"));
    assert!(ask("AUTH reader nope\r\n").await.starts_with("-WRONGPASS"));
    assert!(ask("AUTH nobody reader-pw\r\n")
        .await
        .starts_with("-WRONGPASS"));

    assert_eq!(ask("AUTH reader reader-pw\r\n").await, "+OK\r\n");
    assert_eq!(ask("GET k\r\n").await, "$-1\r\n");
    assert_eq!(ask("MGET {a}1 {b}2\r\n").await, "*2\r\n$-1\r\n$-1\r\n");
    let denied = ask("SET k v\r\n").await;
    assert_eq!(
        denied,
        "-NOPERM User reader has no permissions to run the 'set' command\r\n"
    );
    for req in [
        "DEL k\r\n",
        "EVAL \"return 1\" 0\r\n",
        "FLUSHALL\r\n",
        "SCRIPT LOAD \"return 1\"\r\n",
    ] {
        assert!(ask(req).await.starts_with("-NOPERM"), "{req}");
    }
    // Inside a transaction the refusal aborts it, as in Redis.
    assert_eq!(ask("MULTI\r\n").await, "+OK\r\n");
    assert!(ask("INCR n\r\n").await.starts_with("-NOPERM"));
    assert!(ask("EXEC\r\n").await.starts_with("-EXECABORT"));

    assert_eq!(ask("AUTH writer writer-pw\r\n").await, "+OK\r\n");
    assert_eq!(ask("SET k v\r\n").await, "+OK\r\n");
    assert_eq!(ask("DEL k\r\n").await, ":1\r\n");
    assert!(ask("FLUSHALL\r\n").await.starts_with("-NOPERM"));
    assert!(ask("FLUSHDB\r\n").await.starts_with("-NOPERM"));

    // The password alone is the default user, who may do anything.
    assert_eq!(ask("AUTH root-pw\r\n").await, "+OK\r\n");
    assert_eq!(ask("FLUSHALL\r\n").await, "+OK\r\n");

    // HELLO ... AUTH logs in too.
    let mut s = TcpStream::connect(h.proxy.addr).await.unwrap();
    let hello = ask_raw(
        &mut s,
        b"HELLO 3 AUTH reader reader-pw\r\n",
        b"modules\r\n*0\r\n",
    )
    .await;
    assert!(hello.starts_with('%'), "{hello}");
    let denied = ask_raw(&mut s, b"SET k v\r\n", b"\r\n").await;
    assert!(denied.starts_with("-NOPERM"), "{denied}");
}

/// Failed AUTH attempts are limited per source address: after a burst of ten, AUTH is
/// refused (even with the right password, so a guesser learns nothing) until a second
/// passes; a client already logged in carries on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_auth_attempts_are_limited_per_address() {
    let h = Harness::tuned(|c| c.password = Some("right".into())).await;
    let mut good = TcpStream::connect(h.proxy.addr).await.unwrap();
    assert_eq!(
        ask_raw(&mut good, b"AUTH right\r\n", b"\r\n").await,
        "+OK\r\n"
    );
    let mut s = TcpStream::connect(h.proxy.addr).await.unwrap();
    for _ in 0..10 {
        let wrong = ask_raw(&mut s, b"AUTH wrong\r\n", b"\r\n").await;
        assert!(wrong.starts_with("-WRONGPASS"), "{wrong}");
    }
    let limited = ask_raw(&mut s, b"AUTH right\r\n", b"\r\n").await;
    assert!(
        limited.starts_with("-ERR slotguard: too many failed AUTH attempts from 127.0.0.1"),
        "{limited}"
    );
    let inline = ask_raw(&mut s, b"GET k\r\n", b"\r\n").await;
    assert!(
        inline.starts_with("-NOAUTH"),
        "still not logged in: {inline}"
    );
    assert_eq!(ask_raw(&mut good, b"PING\r\n", b"\r\n").await, "+PONG\r\n");
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(ask_raw(&mut s, b"AUTH right\r\n", b"\r\n").await, "+OK\r\n");
}

/// An ACL user (username and password) for the proxy's connections.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_acl_user_reaches_the_cluster() {
    let h = Harness::start_with(
        Options {
            masters: 3,
            replicas_per_master: 0,
            password: Some(SECRET.into()),
            ..Options::default()
        },
        |c| {
            c.backend_auth = Some(Auth {
                username: None,
                password: SECRET.into(),
            })
        },
    )
    .await;
    for node in &h.cluster.nodes {
        node_call(
            &h,
            &node.addr(),
            &[
                "ACL",
                "SETUSER",
                "slotguard",
                "on",
                ">proxy-pw",
                "~*",
                "&*",
                "+@all",
            ],
        )
        .await;
    }
    let mut config = slotguard::config::Config {
        listen: "127.0.0.1:0".parse().unwrap(),
        seeds: vec![h.cluster.nodes[0].addr()],
        backend_auth: Some(Auth {
            username: Some("slotguard".into()),
            password: "proxy-pw".into(),
        }),
        ..slotguard::config::Config::default()
    };
    config.dedicated_connections = 4;
    // It reads the slot map as the ACL user, and serves with it.
    let proxy = common::start_proxy(config).await;
    let mut c = redis::Client::open(format!("redis://{}/", proxy.addr))
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    common::mset_mget_across_slots(&mut c).await;
    // The nodes see the proxy's connections as the user's.
    let mut lists = String::new();
    for node in &h.cluster.nodes {
        let list = node_call(&h, &node.addr(), &["CLIENT", "LIST"]).await;
        lists.push_str(list.as_str().unwrap_or_default());
    }
    assert!(lists.contains("user=slotguard"), "{lists}");
}

/// Secrets never show: not in the log (at debug level), `/status`, `/metrics`, `INFO`
/// or `CLIENT LIST`, whatever clients send (right and wrong passwords, `HELLO ... AUTH`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secrets_never_show() {
    let cluster = slotguard::localcluster::LocalCluster::start(Options {
        masters: 3,
        replicas_per_master: 0,
        password: Some(SECRET.into()),
        ..Options::default()
    })
    .await
    .unwrap();
    let (root, user, token) = ("root-Secret-1", "user-Secret-2", "admin-Secret-3");
    let extra = format!(
        "password = \"{root}\"\n[log]\nlevel = \"debug\"\n[backend]\npassword = \"{SECRET}\"\n[[users]]\nname = \"app\"\npassword = \"{user}\"\naccess = \"read-write\"\n"
    );
    let proxy = common::ProxyProcess::start_with_token(&cluster, &extra, Some(token)).await;
    let mut s = TcpStream::connect(("127.0.0.1", proxy.port)).await.unwrap();
    let mut ask = async |req: &str| ask_raw(&mut s, req.as_bytes(), b"\r\n").await;
    assert!(ask("AUTH wrong-Secret-4\r\n")
        .await
        .starts_with("-WRONGPASS"));
    assert!(ask(&format!("AUTH app {root}\r\n"))
        .await
        .starts_with("-WRONGPASS"));
    assert_eq!(ask(&format!("AUTH {root}\r\n")).await, "+OK\r\n");
    assert_eq!(ask(&format!("AUTH app {user}\r\n")).await, "+OK\r\n");
    assert_eq!(ask("SET k v\r\n").await, "+OK\r\n");
    let mut other = TcpStream::connect(("127.0.0.1", proxy.port)).await.unwrap();
    let hello = format!("HELLO 2 AUTH app {user}\r\n");
    let hello = ask_raw(&mut other, hello.as_bytes(), b"modules\r\n*0\r\n").await;
    assert!(hello.starts_with('*'), "{hello}");
    let list = ask("CLIENT LIST\r\n").await;
    assert!(list.contains("cmd=client|list"), "{list}");
    let info = ask("INFO all\r\n").await;
    assert!(info.contains("# Clients"), "{info}");
    let status = proxy.admin_get("/status").await;
    assert!(status.contains("200 OK"), "{status}");
    let metrics = proxy.metrics().await;
    let log = proxy.log_text();
    assert!(log.contains("DEBUG"), "the log is at debug level");
    for secret in [SECRET, root, user, token, "wrong-Secret-4"] {
        for (what, text) in [
            ("the log", &log),
            ("CLIENT LIST", &list),
            ("INFO", &info),
            ("/status", &status),
            ("/metrics", &metrics),
        ] {
            assert!(!text.contains(secret), "{secret} shows in {what}");
        }
    }
}
