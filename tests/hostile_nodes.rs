//! The control and data planes facing a node that misbehaves: garbage, a truncated or a
//! 100 MB `CLUSTER NODES`, a 100 MB reply, a redirect to an address outside the cluster.
//!
//! A real Redis never sends these, so the node here is a small fake one written for the
//! test: a TCP server that claims every slot in its `CLUSTER NODES` and answers each
//! request by its key. The proxy in front of it must stay up, keep serving what it can,
//! answer the rest with a clear error, and never connect where the redirect points.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use slotguard::config::Config;
use slotguard::protocol::Scanner;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// What the fake node answers to `CLUSTER NODES`.
const WHOLE: usize = 0;
const TRUNCATED: usize = 1;
const GARBAGE: usize = 2;
const HUGE: usize = 3;

const BIG: usize = 100 * 1024 * 1024;

struct FakeNode {
    addr: String,
    /// One of WHOLE, TRUNCATED, GARBAGE, HUGE.
    nodes_reply: Arc<AtomicUsize>,
}

impl FakeNode {
    async fn start(trap: String) -> FakeNode {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let nodes_reply = Arc::new(AtomicUsize::new(WHOLE));
        let (me, mode) = (addr.clone(), nodes_reply.clone());
        tokio::spawn(async move {
            while let Ok((s, _)) = listener.accept().await {
                tokio::spawn(serve(s, me.clone(), trap.clone(), mode.clone()));
            }
        });
        FakeNode { addr, nodes_reply }
    }
}

async fn serve(mut s: TcpStream, me: String, trap: String, mode: Arc<AtomicUsize>) {
    let mut buf = BytesMut::new();
    let mut scanner = Scanner::new(Default::default());
    loop {
        let req = match scanner.next(&mut buf) {
            Ok(Some(req)) => req,
            Ok(None) => {
                if s.read_buf(&mut buf).await.unwrap_or(0) == 0 {
                    return;
                }
                continue;
            }
            Err(_) => return,
        };
        let name = String::from_utf8_lossy(req.arg(0)).to_uppercase();
        let arg = |i: usize| String::from_utf8_lossy(req.arg(i)).to_string();
        let bulk = |text: &[u8]| {
            let mut out = format!("${}\r\n", text.len()).into_bytes();
            out.extend_from_slice(text);
            out.extend_from_slice(b"\r\n");
            out
        };
        let line = format!(
            "0123456789012345678901234567890123456789 {me}@1 myself,master - 0 0 1 connected 0-16383\n"
        );
        let reply: Vec<u8> = match (name.as_str(), req.len()) {
            ("CLUSTER", 2) if arg(1).eq_ignore_ascii_case("NODES") => {
                match mode.load(Ordering::Relaxed) {
                    WHOLE => bulk(line.as_bytes()),
                    TRUNCATED => bulk(&line.as_bytes()[..line.len() / 2]),
                    GARBAGE => b"}}}{{{ not RESP at all\r\n".to_vec(),
                    _ => bulk(&line.repeat(BIG / line.len()).into_bytes()),
                }
            }
            ("PING", _) => b"+PONG\r\n".to_vec(),
            ("GET", 2) => match arg(1).as_str() {
                "moved" => format!("-MOVED 3999 {trap}\r\n").into_bytes(),
                "asked" => format!("-ASK 3999 {trap}\r\n").into_bytes(),
                "garbage" => b"}}}{{{ not RESP at all\r\n".to_vec(),
                "big" => bulk(&vec![b'b'; BIG]),
                _ => b"$-1\r\n".to_vec(),
            },
            _ => b"-ERR the fake node does not know this command\r\n".to_vec(),
        };
        if s.write_all(&reply).await.is_err() {
            return;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hostile_node_does_not_take_the_proxy_down() {
    slotguard::logging::init("slotguard=info", false);
    // Where the redirects point: a listener that counts who connects (nobody should).
    let trap = TcpListener::bind("127.0.0.2:0").await.unwrap();
    let trap_addr = trap.local_addr().unwrap().to_string();
    let trapped = Arc::new(AtomicUsize::new(0));
    let count = trapped.clone();
    tokio::spawn(async move {
        while let Ok((_s, _)) = trap.accept().await {
            count.fetch_add(1, Ordering::Relaxed);
        }
    });
    let node = FakeNode::start(trap_addr.clone()).await;
    let config = Config {
        listen: "127.0.0.1:0".parse().unwrap(),
        seeds: vec![node.addr.clone()],
        hold_timeout: Duration::from_secs(1),
        ..Config::default()
    };
    let proxy = common::start_proxy(config).await;
    let mut c = TcpStream::connect(proxy.addr).await.unwrap();
    let mut ask = async |req: &str| common::ask_raw(&mut c, req.as_bytes(), b"\r\n").await;
    assert_eq!(ask("GET k\r\n").await, "$-1\r\n");

    // Redirects outside the cluster are not followed: held, then a clear error.
    for key in ["moved", "asked"] {
        let refused = ask(&format!("GET {key}\r\n")).await;
        assert!(
            refused.contains("not a node of the cluster") && refused.contains(&trap_addr),
            "{refused}"
        );
    }
    assert_eq!(
        trapped.load(Ordering::Relaxed),
        0,
        "nothing connected there"
    );
    assert!(proxy.proxy.metrics.redirects_outside.get() >= 2);

    // A reply that is not RESP: the connection is dropped, the client gets an error.
    let garbage = ask("GET garbage\r\n").await;
    assert!(garbage.starts_with('-'), "{garbage}");
    assert_eq!(ask("GET k\r\n").await, "$-1\r\n");

    // A 100 MB reply passes through whole.
    a_100_mb_reply_arrives_whole(&proxy).await;

    // A truncated, a garbled and a 100 MB CLUSTER NODES: the map stays as it was.
    for mode in [TRUNCATED, GARBAGE, HUGE] {
        node.nodes_reply.store(mode, Ordering::Relaxed);
        tokio::time::sleep(Duration::from_millis(1500)).await;
        assert_eq!(proxy.proxy.table.load().covered(), 16384, "mode {mode}");
        assert_eq!(ask("GET k\r\n").await, "$-1\r\n", "mode {mode}");
    }
    node.nodes_reply.store(WHOLE, Ordering::Relaxed);
}

/// `GET big` through the proxy: 100 MB, every byte.
async fn a_100_mb_reply_arrives_whole(proxy: &slotguard::server::Running) {
    let mut s = TcpStream::connect(proxy.addr).await.unwrap();
    s.write_all(b"GET big\r\n").await.unwrap();
    let head = format!("${BIG}\r\n");
    let mut got = vec![0u8; head.len() + BIG + 2];
    s.read_exact(&mut got).await.unwrap();
    assert!(got.starts_with(head.as_bytes()));
    assert!(got[head.len()..head.len() + BIG].iter().all(|&b| b == b'b'));
    assert!(got.ends_with(b"\r\n"));
}
