//! Client-side caching: `CLIENT TRACKING`, in RESP3, or with `REDIRECT id` to another
//! client of the proxy subscribed to `__redis__:invalidate` (as RESP2 clients cache).
//!
//! A node tracks the keys read on a connection and tells that connection when they
//! change; a client's reads travel on shared connections, so the node cannot track them
//! per client. Instead a tracking client gets connections of its own, one per master, in
//! broadcasting mode (`CLIENT TRACKING ON BCAST`, with the client's prefixes if it gave
//! any): every change of a key on that master is pushed as an `invalidate` message and
//! passed to the client between its replies. A client that asked for the default mode thus
//! hears of more keys than it read; it drops from its cache what it does not have, which
//! is always safe.
//!
//! The replicas of those masters get such a connection too, kept silent: when one is
//! promoted, it already tracks, so a write to it right after the failover is reported
//! like any other (a connection made only after the failover would miss the writes that
//! came first).
//!
//! The reply to `CLIENT TRACKING ON` waits until every master's connection tracks, and
//! nothing the client sends after it runs before. When a master's tracking connection is
//! lost (a failover, a node that restarts), when one is made only after its node became a
//! master, when a standby dropped an invalidation before its node became a master, or
//! when a push cannot be queued for the client, the client is told to flush its whole
//! cache (`invalidate` with a null key): what changed meanwhile is unknown. Lost
//! connections are made again at most every [`RECONCILE`].

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use rustc_hash::FxHashMap;
use tokio::io::AsyncReadExt;
use tokio::sync::{mpsc, oneshot};
use tokio::task::{AbortHandle, JoinHandle, JoinSet};
use tracing::debug;

use super::node::dial;
use super::Proxy;
use crate::protocol::{reply, ReplyScanner, Request, Value};
use crate::routing::status::{Health, Role};

/// Invalidations queued for a client that does not read them; past this, a flush.
const QUEUE: usize = 1024;
/// How often lost tracking connections are made again.
const RECONCILE: Duration = Duration::from_millis(100);
/// `invalidate` with a null key: flush every cached key.
const FLUSH_ALL: &[u8] = b">2\r\n$10\r\ninvalidate\r\n_\r\n";

/// A client's tracking: its connections' task and the pushes they send it.
pub struct Tracker {
    /// `None` with a redirect: the invalidations go to the other client.
    pushes: Option<mpsc::Receiver<Bytes>>,
    task: JoinHandle<()>,
    prefixes: Vec<Bytes>,
    bcast: bool,
    /// The client the invalidations go to (`REDIRECT id`).
    pub redirect: Option<u32>,
}

impl std::fmt::Debug for Tracker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tracker")
            .field("bcast", &self.bcast)
            .finish()
    }
}

impl Drop for Tracker {
    fn drop(&mut self) {
        self.task.abort(); // its connections are in its JoinSet: they end with it
    }
}

impl Tracker {
    /// The next push for the client.
    pub async fn next(&mut self) -> Option<Bytes> {
        match &mut self.pushes {
            Some(pushes) => pushes.recv().await,
            None => std::future::pending().await,
        }
    }
}

/// `CLIENT TRACKING ON|OFF [REDIRECT id] [PREFIX p ...] [BCAST] [OPTIN] [OPTOUT] [NOLOOP]`.
/// Answers at once, or gives the receiver of the answer (once every master tracks).
pub fn command(
    proxy: &Proxy,
    tracking: &mut Option<Tracker>,
    resp3: bool,
    req: &Request,
) -> Result<Bytes, oneshot::Receiver<Bytes>> {
    if req.len() < 3 {
        return Ok(reply::arity("client|tracking"));
    }
    let on = match req.arg(2).to_ascii_uppercase().as_slice() {
        b"ON" => true,
        b"OFF" => false,
        _ => return Ok(reply::error("ERR syntax error")),
    };
    let mut prefixes = Vec::new();
    let mut bcast = false;
    let mut redirect = None;
    let mut i = 3;
    while i < req.len() {
        match req.arg(i).to_ascii_uppercase().as_slice() {
            b"BCAST" => bcast = true,
            b"PREFIX" if i + 1 < req.len() => {
                prefixes.push(req.arg_bytes(i + 1));
                i += 1;
            }
            // The proxy broadcasts: these only narrow what a node would send.
            b"OPTIN" | b"OPTOUT" | b"NOLOOP" => {}
            b"REDIRECT" if i + 1 < req.len() => {
                let id = crate::protocol::request::parse_i64(req.arg(i + 1))
                    .and_then(|id| u32::try_from(id).ok());
                redirect = match id.filter(|&id| proxy.clients.exists(id)) {
                    Some(id) => Some(id),
                    None => {
                        return Ok(reply::error(
                            "ERR The client ID you want redirect to does not exist",
                        ))
                    }
                };
                i += 1;
            }
            _ => return Ok(reply::error("ERR syntax error")),
        }
        i += 1;
    }
    if !on {
        *tracking = None;
        return Ok(Bytes::from_static(reply::OK));
    }
    if !resp3 && redirect.is_none() {
        return Ok(reply::error(
            "ERR Client tracking in RESP2 needs a redirect: CLIENT TRACKING ON REDIRECT <id>, to a client subscribed to __redis__:invalidate (or HELLO 3)",
        ));
    }
    if !prefixes.is_empty() && !bcast {
        return Ok(reply::error(
            "ERR PREFIX option requires BCAST mode to be enabled",
        ));
    }
    let Some(proxy) = proxy.me.upgrade() else {
        return Ok(reply::error("ERR slotguard is shutting down"));
    };
    let mut args: Vec<&[u8]> = vec![b"CLIENT", b"TRACKING", b"ON", b"BCAST"];
    for p in &prefixes {
        args.push(b"PREFIX");
        args.push(p);
    }
    let setup = Request::from_args(&args).into_raw();
    let (pushes_tx, pushes) = mpsc::channel(QUEUE);
    let (ready_tx, ready) = oneshot::channel();
    let proxy_clients = proxy.clients.clone();
    let task = tokio::spawn(run(proxy, setup, pushes_tx, ready_tx));
    let (pushes, redirect) = match redirect {
        Some(id) => {
            tokio::spawn(forward(pushes, proxy_clients, id));
            (None, Some(id))
        }
        None => (Some(pushes), None),
    };
    *tracking = Some(Tracker {
        pushes,
        task,
        prefixes,
        bcast,
        redirect,
    });
    Err(ready)
}

/// Passes a tracking client's invalidations to the client it redirects them to, as
/// `message __redis__:invalidate [keys]` (a null for "flush everything"), until either
/// goes away.
async fn forward(
    mut pushes: mpsc::Receiver<Bytes>,
    clients: Arc<super::clients::Clients>,
    id: u32,
) {
    while let Some(push) = pushes.recv().await {
        let Ok(Value::Array(items)) = Value::parse(&push) else {
            continue;
        };
        let Some(keys) = items.get(1) else { continue };
        match clients.inbox(id) {
            // Gone: the redirect is broken; nothing more goes anywhere.
            None => return,
            Some(None) => {} // not subscribed to __redis__:invalidate: dropped, as on a node
            Some(Some(inbox)) => {
                let _ = inbox.try_send(keys.to_bytes());
            }
        }
    }
}

/// What a client subscribed to `__redis__:invalidate` receives for `keys` (the encoded
/// array of keys, or a null), in its protocol.
pub fn invalidation(keys: &[u8], resp3: bool) -> Bytes {
    let mut out = BytesMut::new();
    out.extend_from_slice(if resp3 { b">3\r\n" } else { b"*3\r\n" });
    reply::bulk(&mut out, b"message");
    reply::bulk(&mut out, b"__redis__:invalidate");
    if keys == b"$-1\r\n" || keys == b"_\r\n" {
        out.extend_from_slice(if resp3 { b"_\r\n" } else { b"$-1\r\n" });
    } else {
        out.extend_from_slice(keys);
    }
    out.freeze()
}

/// `CLIENT TRACKINGINFO` of a client with this tracking.
pub fn info(tracking: Option<&Tracker>, resp3: bool) -> Bytes {
    let mut out = BytesMut::new();
    let map = |out: &mut BytesMut, n: usize| {
        if resp3 {
            out.extend_from_slice(format!("%{n}\r\n").as_bytes());
        } else {
            reply::array_header(out, n * 2);
        }
    };
    map(&mut out, 3);
    reply::bulk(&mut out, b"flags");
    match tracking {
        None => {
            reply::array_header(&mut out, 1);
            reply::bulk(&mut out, b"off");
        }
        Some(t) => {
            reply::array_header(&mut out, if t.bcast { 2 } else { 1 });
            reply::bulk(&mut out, b"on");
            if t.bcast {
                reply::bulk(&mut out, b"bcast");
            }
        }
    }
    reply::bulk(&mut out, b"redirect");
    let redirect = match tracking {
        Some(t) => t.redirect.map_or(0, i64::from),
        None => -1,
    };
    out.extend_from_slice(format!(":{redirect}\r\n").as_bytes());
    reply::bulk(&mut out, b"prefixes");
    let prefixes = tracking.map_or(&[][..], |t| &t.prefixes);
    reply::array_header(&mut out, prefixes.len());
    for p in prefixes {
        reply::bulk(&mut out, p);
    }
    out.freeze()
}

/// The masters of the slot map, and the other nodes that may become one: every replica
/// (as it reports itself, so a restarted one counts before the cluster clears its `fail`
/// flag), and every master that is up but serves no slot in the map yet (a replica
/// promoted a moment before the map shows it).
fn targets(proxy: &Proxy) -> (Vec<String>, Vec<String>) {
    let mut masters: Vec<String> = proxy
        .table
        .load()
        .masters()
        .map(|(_, n)| n.addr.clone())
        .collect();
    masters.sort();
    let status = proxy.routing.status.load();
    let standby = status
        .view
        .nodes
        .iter()
        .filter(|n| n.role == Role::Replica || matches!(n.health, Health::Ok | Health::Pfail))
        .map(|n| n.addr.clone())
        .filter(|addr| !masters.contains(addr))
        .collect();
    (masters, standby)
}

/// Keeps one tracking connection to every master of the slot map and to every node that
/// may become one.
async fn run(
    proxy: Arc<Proxy>,
    setup: Bytes,
    pushes: mpsc::Sender<Bytes>,
    ready: oneshot::Sender<Bytes>,
) {
    let overflow = Arc::new(AtomicBool::new(false));
    let mut links: JoinSet<(String, bool)> = JoinSet::new();
    // The node each connection tracks, and how to stop it.
    let mut live: FxHashMap<String, AbortHandle> = FxHashMap::default();
    // Nodes whose connection ended: when to try again, and failures in a row.
    let mut retry_at: FxHashMap<String, Instant> = FxHashMap::default();
    let mut failures: FxHashMap<String, u32> = FxHashMap::default();
    let mut ready = Some(ready);
    let mut tick = tokio::time::interval(RECONCILE);
    loop {
        let (masters, replicas) = targets(&proxy);
        let wanted = |addr: &String| masters.contains(addr) || replicas.contains(addr);
        let gone: Vec<String> = live.keys().filter(|a| !wanted(a)).cloned().collect();
        for addr in gone {
            if let Some(link) = live.remove(&addr) {
                link.abort();
            }
        }
        let now = Instant::now();
        retry_at.retain(|_, at| *at > now);
        let mut first = Vec::new();
        for addr in masters.iter().chain(&replicas) {
            if live.contains_key(addr) || retry_at.contains_key(addr) {
                continue;
            }
            let Some(permit) = proxy.node(addr).dedicated_permit() else {
                continue; // tried again on the next tick
            };
            let (tracking_tx, tracking) = oneshot::channel();
            let link = Link {
                addr: addr.clone(),
                setup: setup.clone(),
                pushes: pushes.clone(),
                overflow: overflow.clone(),
                tracking: Some(tracking_tx),
                late: ready.is_none(),
                missed: false,
                proxy: proxy.clone(),
            };
            let handle = links.spawn(async move {
                let _permit = permit;
                link.run().await
            });
            live.insert(addr.clone(), handle);
            first.push((masters.contains(addr), tracking));
        }
        if let Some(reply_to) = ready.take() {
            // The first answer waits for every connection; every master's must track.
            let mut ok = !masters.is_empty();
            for (master, tracking) in first {
                let tracks = tracking.await.unwrap_or(false);
                ok &= tracks || !master;
            }
            let answer = if ok {
                Bytes::from_static(reply::OK)
            } else {
                reply::error("ERR slotguard: could not start tracking on every master; try again")
            };
            let _ = reply_to.send(answer);
            if !ok {
                return;
            }
        }
        if overflow.load(Ordering::Relaxed)
            && pushes.try_send(Bytes::from_static(FLUSH_ALL)).is_ok()
        {
            overflow.store(false, Ordering::Relaxed);
        }
        tokio::select! {
            Some(ended) = links.join_next() => {
                if let Ok((addr, tracked)) = ended {
                    live.remove(&addr);
                    if is_master(&proxy, &addr) {
                        // What changed while the connection was down is unknown: flush.
                        flush(&pushes, &overflow);
                    }
                    // A node that is down is asked less and less often.
                    let failed = failures.entry(addr.clone()).or_default();
                    *failed = if tracked { 0 } else { (*failed + 1).min(4) };
                    retry_at.insert(addr, Instant::now() + RECONCILE * (1 << *failed));
                }
            }
            _ = tick.tick() => {}
            _ = pushes.closed() => return,
        }
    }
}

/// True while the node at `addr` is a master of the slot map.
fn is_master(proxy: &Proxy, addr: &str) -> bool {
    let table = proxy.table.load();
    let mut masters = table.masters();
    masters.any(|(_, n)| n.addr == addr)
}

/// Tells the client to flush its cache, now or as soon as its queue has room.
fn flush(pushes: &mpsc::Sender<Bytes>, overflow: &AtomicBool) {
    if pushes.try_send(Bytes::from_static(FLUSH_ALL)).is_err() {
        overflow.store(true, Ordering::Relaxed);
    }
}

/// One master's tracking connection.
struct Link {
    addr: String,
    setup: Bytes,
    pushes: mpsc::Sender<Bytes>,
    overflow: Arc<AtomicBool>,
    /// Told whether tracking started.
    tracking: Option<oneshot::Sender<bool>>,
    /// Made after the client was told tracking is on.
    late: bool,
    /// An invalidation was dropped while the node was not a master.
    missed: bool,
    proxy: Arc<Proxy>,
}

impl Link {
    /// Runs until the connection fails; returns the node's address, and whether it
    /// tracked before it failed.
    async fn run(mut self) -> (String, bool) {
        if let Err(why) = self.serve().await {
            debug!(addr = %self.addr, why, "tracking connection lost");
        }
        let tracked = self.tracking.is_none();
        if let Some(tracking) = self.tracking.take() {
            let _ = tracking.send(false);
        }
        (self.addr, tracked)
    }

    async fn serve(&mut self) -> Result<(), String> {
        let config = self.proxy.config().clone();
        let (mut stream, mut skip) = dial(&self.addr, &config, true, &self.setup).await?;
        let mut rbuf = BytesMut::with_capacity(4096);
        let mut scanner = ReplyScanner::default();
        loop {
            if stream
                .read_buf(&mut rbuf)
                .await
                .map_err(|e| format!("read: {e}"))?
                == 0
            {
                return Err("connection closed by the node".into());
            }
            while let Some(len) = scanner.scan(&rbuf).map_err(|e| e.to_string())? {
                let frame = rbuf.split_to(len).freeze();
                if frame.first() == Some(&b'>') {
                    self.push(frame);
                    continue;
                }
                if frame.first() == Some(&b'-') {
                    return Err(String::from_utf8_lossy(&frame).trim_end().to_string());
                }
                if skip > 0 {
                    skip -= 1;
                } else if let Some(tracking) = self.tracking.take() {
                    let _ = tracking.send(true); // +OK to CLIENT TRACKING
                    if self.late && is_master(&self.proxy, &self.addr) {
                        // Writes to this master before it tracked were not reported.
                        flush(&self.pushes, &self.overflow);
                    }
                }
            }
            if rbuf.capacity() - rbuf.len() < 1024 {
                rbuf.reserve(4096);
            }
        }
    }

    /// Passes an `invalidate` push to the client while the node is a master of the slot
    /// map. A standby's are dropped, but remembered: the first push after its node became a
    /// master is preceded by a flush (what was dropped may have been a write the proxy sent
    /// there before its map named the node, after a MOVED).
    fn push(&mut self, frame: Bytes) {
        let invalidate = matches!(
            Value::parse(&frame),
            Ok(Value::Array(items)) if items.first().and_then(|v| v.as_bytes()).is_some_and(|k| &k[..] == b"invalidate")
        );
        if !invalidate {
            return;
        }
        if !is_master(&self.proxy, &self.addr) {
            self.missed = true;
            return;
        }
        if std::mem::take(&mut self.missed) {
            flush(&self.pushes, &self.overflow);
        }
        if self.pushes.try_send(frame).is_err() {
            self.overflow.store(true, Ordering::Relaxed);
        }
    }
}
