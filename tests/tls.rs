//! TLS towards clients and towards the cluster, with certificates made here.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::{ask_raw, make_certs, Certs, Harness};
use slotguard::config::Config;
use slotguard::localcluster::{Options, TlsFiles};

fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("slotguard-tls-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

fn path(p: &Path) -> String {
    p.to_string_lossy().into_owned()
}

/// redis-cli over TLS against the proxy; stdout, or stderr when it failed.
fn cli(port: u16, certs: &Certs, with_cert: bool, args: &[&str]) -> Result<String, String> {
    let mut cmd = Command::new("redis-cli");
    cmd.args(["-h", "127.0.0.1", "-p", &port.to_string(), "--tls"])
        .arg("--cacert")
        .arg(&certs.ca);
    if with_cert {
        cmd.arg("--cert")
            .arg(&certs.client.0)
            .arg("--key")
            .arg(&certs.client.1);
    }
    let out = cmd.args(args).output().expect("redis-cli runs");
    let stdout = String::from_utf8_lossy(&out.stdout).trim().to_string();
    if out.status.success() && !stdout.starts_with("ERR") && !stdout.is_empty() {
        Ok(stdout)
    } else {
        Err(format!(
            "{stdout} {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_speak_tls_to_the_proxy() {
    let dir = temp_dir("clients");
    let certs = make_certs(&dir);
    let (cert, key) = (path(&certs.server.0), path(&certs.server.1));
    let h = Harness::tuned(|c| c.tls = Some(slotguard::tls::acceptor(&cert, &key, None).unwrap()))
        .await;
    let port = h.port();
    let out = tokio::task::spawn_blocking({
        let certs = make_paths(&certs);
        move || {
            (
                cli(port, &certs, false, &["SET", "tls-key", "over tls"]),
                cli(port, &certs, false, &["GET", "tls-key"]),
            )
        }
    })
    .await
    .unwrap();
    assert_eq!(out.0.as_deref(), Ok("OK"));
    assert_eq!(out.1.as_deref(), Ok("over tls"));

    // A client in the clear gets no answer: the connection is closed.
    let mut plain = tokio::net::TcpStream::connect(h.proxy.addr).await.unwrap();
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    plain.write_all(b"PING\r\n").await.unwrap();
    let mut buf = [0u8; 64];
    let read = tokio::time::timeout(Duration::from_secs(5), plain.read(&mut buf)).await;
    assert!(
        matches!(read, Ok(Ok(0)) | Ok(Err(_))) || !buf.starts_with(b"+PONG"),
        "a plain client is not served"
    );

    // With a client CA, a certificate is required.
    let mut config = Config {
        listen: "127.0.0.1:0".parse().unwrap(),
        seeds: vec![h.cluster.nodes[0].addr()],
        ..Config::default()
    };
    config.tls = Some(slotguard::tls::acceptor(&cert, &key, Some(&path(&certs.ca))).unwrap());
    let strict = common::start_proxy(config).await;
    let port = strict.addr.port();
    let out = tokio::task::spawn_blocking({
        let certs = make_paths(&certs);
        move || {
            (
                cli(port, &certs, false, &["GET", "tls-key"]),
                cli(port, &certs, true, &["GET", "tls-key"]),
            )
        }
    })
    .await
    .unwrap();
    assert!(
        out.0.is_err(),
        "no client certificate, no service: {:?}",
        out.0
    );
    assert_eq!(out.1.as_deref(), Ok("over tls"));
    let _ = std::fs::remove_dir_all(&dir);
}

fn make_paths(c: &Certs) -> Certs {
    Certs {
        ca: c.ca.clone(),
        server: c.server.clone(),
        client: c.client.clone(),
    }
}

/// A cluster that speaks only TLS: data, dedicated and subscription connections, the
/// control plane, and a failover.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tls_cluster_is_served() {
    let dir = temp_dir("cluster");
    let certs = make_certs(&dir);
    let files = TlsFiles {
        ca: certs.ca.clone(),
        cert: certs.server.0.clone(),
        key: certs.server.1.clone(),
    };
    let (ca, cert, key) = (
        path(&certs.ca),
        path(&certs.server.0),
        path(&certs.server.1),
    );
    let mut h = Harness::start_with(
        Options {
            masters: 3,
            replicas_per_master: 1,
            node_timeout_ms: 1000,
            tls: Some(files),
            ..Options::default()
        },
        |c| {
            c.backend_tls =
                Some(slotguard::tls::backend(&ca, Some(&cert), Some(&key), None).unwrap())
        },
    )
    .await;
    // The nodes refuse plain clients.
    assert!(slotguard::client::query(
        &h.cluster.nodes[0].addr(),
        &["PING"],
        &slotguard::client::Dial::new(Duration::from_secs(1))
    )
    .await
    .is_err());
    let mut c = h.client().await;
    common::mset_mget_across_slots(&mut c).await;
    let () = redis::cmd("RPUSH")
        .arg("{q}l")
        .arg("job")
        .query_async(&mut c)
        .await
        .unwrap();
    let popped: (String, String) = redis::cmd("BLPOP")
        .arg("{q}l")
        .arg(1)
        .query_async(&mut c)
        .await
        .unwrap();
    assert_eq!(popped.1, "job");
    let mut sub = tokio::net::TcpStream::connect(h.proxy.addr).await.unwrap();
    assert!(ask_raw(&mut sub, b"SUBSCRIBE news\r\n", b":1\r\n")
        .await
        .contains("subscribe"));
    let _: i64 = redis::cmd("PUBLISH")
        .arg("news")
        .arg("hello")
        .query_async(&mut c)
        .await
        .unwrap();
    assert!(ask_raw(&mut sub, b"", b"hello\r\n")
        .await
        .contains("message"));

    // A failover, over TLS too: writes keep being acknowledged.
    let key = (0..)
        .map(|i| format!("k{i}"))
        .find(|k| slotguard::protocol::key_slot(k.as_bytes()) <= 5460)
        .unwrap();
    h.cluster.nodes[0].kill();
    let writes = tokio::spawn({
        let url = h.url();
        let key = key.clone();
        async move {
            let mut c = redis::Client::open(url)
                .unwrap()
                .get_multiplexed_async_connection()
                .await
                .unwrap();
            redis::cmd("SET")
                .arg(&key)
                .arg("after")
                .query_async::<()>(&mut c)
                .await
        }
    });
    h.cluster.wait_promoted(0).await.unwrap();
    writes
        .await
        .unwrap()
        .expect("the write waits out the failover");
    let v: String = redis::cmd("GET")
        .arg(&key)
        .query_async(&mut c)
        .await
        .unwrap();
    assert_eq!(v, "after");
    h.cluster.restart(0).await.unwrap();
    h.cluster
        .wait_healthy(Duration::from_secs(30))
        .await
        .unwrap();
    h.cluster_check().unwrap();
    let _ = std::fs::remove_dir_all(&dir);
}

/// A connection holds its place under `client.max_clients` from the moment it is
/// accepted: clients that never finish their TLS handshake cannot push the proxy past it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unfinished_handshakes_count_toward_max_clients() {
    use tokio::io::AsyncReadExt;
    let dir = temp_dir("max-clients");
    let certs = make_certs(&dir);
    let (cert, key) = (path(&certs.server.0), path(&certs.server.1));
    let h = Harness::tuned(|c| {
        c.max_clients = 2;
        c.tls = Some(slotguard::tls::acceptor(&cert, &key, None).unwrap());
    })
    .await;
    // Two connections that never say a word: their handshakes are pending.
    let silent: Vec<tokio::net::TcpStream> = futures_util::future::join_all(
        (0..2).map(|_| tokio::net::TcpStream::connect(h.proxy.addr)),
    )
    .await
    .into_iter()
    .map(Result::unwrap)
    .collect();
    let mut third = tokio::net::TcpStream::connect(h.proxy.addr).await.unwrap();
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), third.read_to_end(&mut out))
        .await
        .expect("refused at once, before any handshake")
        .unwrap();
    assert_eq!(out, b"-ERR max number of clients reached\r\n");
    // Their places come back when they go.
    drop(silent);
    let port = h.port();
    let certs = make_paths(&certs);
    let served = slotguard::localcluster::wait_for(Duration::from_secs(10), || {
        let certs = make_paths(&certs);
        async move {
            tokio::task::spawn_blocking(move || cli(port, &certs, false, &["PING"]))
                .await
                .unwrap()
                .is_ok_and(|out| out == "PONG")
        }
    })
    .await;
    assert!(
        served.is_ok(),
        "a TLS client is served once the silent ones left"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
