//! Client-side caching: `CLIENT TRACKING`, in RESP3, or with `REDIRECT id` to another
//! client of the proxy subscribed to `__redis__:invalidate` (as RESP2 clients cache).
//!
//! A node tracks the keys read on a connection and tells that connection (or the client
//! it redirects to) when they change. A tracking client's commands therefore travel on
//! connections of its own, one per node it uses (a tracking [`Lease`]), each started with
//! the client's own `CLIENT TRACKING ON` and its options: the nodes track exactly what the
//! client read, `OPTIN`, `OPTOUT` and `NOLOOP` mean what they mean on one node, and
//! `CLIENT CACHING yes|no` is sent ahead of the client's next command, on the connection
//! that command takes.
//!
//! - **In-band** (RESP3, no redirect): the node pushes `invalidate` on the client's own
//!   connection, and the proxy passes it on in the order it came, after the reply before it.
//! - **Redirected** (`REDIRECT id`, to a client of this proxy): each node gets a listener,
//!   a RESP3 connection of the proxy's whose id the client's connections redirect to; what
//!   it hears goes to the redirect's client as `message __redis__:invalidate`.
//! - **BCAST**: the client's connections to every master are opened at once, since every
//!   master reports its changes, whether the client read there or not.
//!
//! Failovers. The nodes that may become a master (replicas; masters that serve no slot
//! yet) get a silent broadcasting connection each (`CLIENT TRACKING ON BCAST`): a write a
//! promoted replica took before the slot map named it is noticed, and the client is told to
//! flush its whole cache (`invalidate` with a null key) once the map names it. The same
//! flush follows whenever what changed meanwhile is unknown: a tracking connection lost,
//! its node no longer a master, a listener lost or made again, a push that found no room.
//! Lost connections are made again at most every [`RECONCILE`].

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use rustc_hash::{FxHashMap, FxHashSet};
use tokio::io::AsyncReadExt;
use tokio::sync::{mpsc, oneshot};
use tokio::task::{AbortHandle, JoinHandle, JoinSet};
use tracing::debug;

use crate::protocol::{reply, ReplyScanner, Request, Value};
use crate::proxy::backend::connection::Broken;
use crate::proxy::backend::job::Job;
use crate::proxy::backend::lease::{self, Lease};
use crate::proxy::backend::node::dial;
use crate::proxy::Proxy;
use crate::routing::status::{Health, Role};

/// Invalidations queued for a client that does not read them; past this, a flush.
const QUEUE: usize = 1024;
/// How often lost tracking connections are made again.
const RECONCILE: Duration = Duration::from_millis(100);
/// `invalidate` with a null key: flush every cached key.
const FLUSH_ALL: &[u8] = b">2\r\n$10\r\ninvalidate\r\n_\r\n";
const PING: &[u8] = b"*1\r\n$4\r\nPING\r\n";

/// What a client asked for with `CLIENT TRACKING ON`; a second ON replaces the options
/// and adds prefixes, as on a node.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Mode {
    pub bcast: bool,
    pub optin: bool,
    pub optout: bool,
    pub noloop: bool,
    /// With BCAST: the prefixes, `""` for every key.
    pub prefixes: Vec<Bytes>,
    /// `REDIRECT id`: the client of this proxy the invalidations go to.
    pub redirect: Option<u32>,
}

impl Mode {
    /// The `CLIENT TRACKING ON` with this mode's options and `prefixes`, redirected to the
    /// node's listener (`listener`, its client id there) when the client redirects.
    fn request(&self, prefixes: &[Bytes], listener: Option<i64>) -> Bytes {
        let listener = listener.map(|id| id.to_string());
        let mut args: Vec<&[u8]> = vec![b"CLIENT", b"TRACKING", b"ON"];
        for (on, flag) in [
            (self.bcast, &b"BCAST"[..]),
            (self.optin, b"OPTIN"),
            (self.optout, b"OPTOUT"),
            (self.noloop, b"NOLOOP"),
        ] {
            if on {
                args.push(flag);
            }
        }
        for p in prefixes.iter().filter(|p| !p.is_empty()) {
            args.push(b"PREFIX");
            args.push(p);
        }
        if let Some(id) = &listener {
            args.push(b"REDIRECT");
            args.push(id.as_bytes());
        }
        Request::from_args(&args).into_raw()
    }
}

/// What a tracking client's connections and links share.
#[derive(Default)]
struct Shared {
    mode: Mutex<Mode>,
    /// The listeners' client ids, by node.
    listeners: Mutex<FxHashMap<String, i64>>,
    /// The redirect's client is gone (`broken_redirect`).
    broken: AtomicBool,
}

impl Shared {
    fn mode(&self) -> Mode {
        self.mode.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// The `CLIENT TRACKING ON` a connection to `addr` says, with `prefixes`; `None` while
    /// the client redirects and the node's listener is not known yet.
    fn request(&self, addr: &str, prefixes: Option<&[Bytes]>) -> Option<Bytes> {
        let mode = self.mode();
        let listener = match mode.redirect {
            None => None,
            Some(_) => {
                let ids = self.listeners.lock().unwrap_or_else(|e| e.into_inner());
                Some(*ids.get(addr)?)
            }
        };
        Some(mode.request(prefixes.unwrap_or(&mode.prefixes), listener))
    }
}

/// A client's tracking.
pub struct Tracker {
    shared: Arc<Shared>,
    /// `CLIENT CACHING yes|no` was said: the next command's connection hears it first.
    pub caching: Option<bool>,
    /// Set while the command that `caching` applies to is routed.
    caching_now: Option<bool>,
    /// The connections the client's commands take while it tracks.
    pub lease: Arc<Lease>,
    /// The client's pushes: in-band invalidations, flushes, `tracking-redir-broken`.
    pushes: mpsc::Receiver<Bytes>,
    /// The listeners and broadcasting connections.
    links: JoinHandle<()>,
    /// Passes what listeners hear to the redirect's client.
    forward: JoinHandle<()>,
    /// Told when the links gave up (tracking could not start).
    gave_up: oneshot::Receiver<()>,
}

impl std::fmt::Debug for Tracker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tracker")
            .field("mode", &self.mode())
            .finish()
    }
}

impl Drop for Tracker {
    fn drop(&mut self) {
        // The links' connections are in their JoinSet: they end with it.
        self.links.abort();
        self.forward.abort();
    }
}

impl Tracker {
    pub fn mode(&self) -> Mode {
        self.shared.mode()
    }

    /// The next push for the client; `None` once tracking gave up.
    pub async fn next(&mut self) -> Option<Bytes> {
        tokio::select! {
            push = self.pushes.recv() => push,
            _ = &mut self.gave_up => None,
        }
    }

    /// What the client's jobs for the command being routed carry (see [`Carry`]).
    pub fn carry(&self) -> Carry {
        Carry {
            lease: self.lease.clone(),
            caching: self.caching_now,
        }
    }

    /// The next command is routed: a `CLIENT CACHING` said before it applies to it.
    pub fn next_command(&mut self) {
        self.caching_now = self.caching.take();
    }

    /// The `CLIENT CACHING` in force: said for the next command, or for this one.
    fn caching_said(&self) -> Option<bool> {
        self.caching.or(self.caching_now)
    }

    /// The command is routed.
    pub fn routed(&mut self) {
        self.caching_now = None;
    }
}

/// A tracking client's job takes the client's tracking connection, after the
/// `CLIENT CACHING` said for its command.
#[derive(Clone)]
pub struct Carry {
    lease: Arc<Lease>,
    caching: Option<bool>,
}

impl Carry {
    pub fn apply(&self, job: &mut Job) {
        let extra = job.extra();
        extra.lease = Some(self.lease.clone());
        if let Some(yes) = self.caching {
            extra.prefix = Some(Bytes::from_static(match yes {
                true => b"*3\r\n$6\r\nCLIENT\r\n$7\r\nCACHING\r\n$3\r\nyes\r\n",
                false => b"*3\r\n$6\r\nCLIENT\r\n$7\r\nCACHING\r\n$2\r\nno\r\n",
            }));
            extra.prefix_replies = 1;
        }
    }
}

/// `CLIENT TRACKING ON|OFF [REDIRECT id] [PREFIX p ...] [BCAST] [OPTIN] [OPTOUT] [NOLOOP]`.
/// Answers at once, or gives the receiver of the answer (once every master tracks).
pub fn command(
    proxy: &Proxy,
    tracking: &mut Option<Tracker>,
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
    let mut asked = Mode::default();
    let mut i = 3;
    while i < req.len() {
        match req.arg(i).to_ascii_uppercase().as_slice() {
            b"BCAST" => asked.bcast = true,
            b"OPTIN" => asked.optin = true,
            b"OPTOUT" => asked.optout = true,
            b"NOLOOP" => asked.noloop = true,
            b"PREFIX" if i + 1 < req.len() => {
                asked.prefixes.push(req.arg_bytes(i + 1));
                i += 1;
            }
            b"REDIRECT" if i + 1 < req.len() => {
                if asked.redirect.is_some() {
                    return Ok(reply::error(
                        "ERR A client can only redirect to a single other client",
                    ));
                }
                let Some(id) = crate::protocol::request::parse_i64(req.arg(i + 1)) else {
                    return Ok(reply::error("ERR value is not an integer or out of range"));
                };
                let id = u32::try_from(id)
                    .ok()
                    .filter(|&id| proxy.clients.exists(id));
                let Some(id) = id else {
                    return Ok(reply::error(
                        "ERR The client ID you want redirect to does not exist",
                    ));
                };
                asked.redirect = Some(id);
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
    let current = tracking.as_ref().map(|t| t.mode());
    let added = asked.prefixes.clone();
    let mode = match merge(current.as_ref(), asked) {
        Ok(mode) => mode,
        Err(error) => return Ok(error),
    };
    if let Some(tracker) = tracking {
        // A second ON changes the options of the connections already tracking, as it
        // does on a node: what they tracked stays tracked, reported the new way.
        if tracker.mode() != mode {
            *tracker
                .shared
                .mode
                .lock()
                .unwrap_or_else(|e| e.into_inner()) = mode;
            let shared = tracker.shared.clone();
            tracker
                .lease
                .retrack(|addr| shared.request(addr, Some(&added)));
        }
        return Ok(Bytes::from_static(reply::OK));
    }
    let Some(proxy) = proxy.me.upgrade() else {
        return Ok(reply::error("ERR slotguard is shutting down"));
    };
    let (tracker, ready) = start(proxy, mode);
    *tracking = Some(tracker);
    Err(ready)
}

/// The mode after `asked`, given the one in force; else the error reply (Redis's rules
/// and words).
fn merge(current: Option<&Mode>, asked: Mode) -> Result<Mode, Bytes> {
    if !asked.bcast && !asked.prefixes.is_empty() {
        return Err(reply::error(
            "ERR PREFIX option requires BCAST mode to be enabled",
        ));
    }
    if current.is_some_and(|c| c.bcast != asked.bcast) {
        return Err(reply::error("ERR You can't switch BCAST mode on/off before disabling tracking for this client, and then re-enabling it with a different mode."));
    }
    if asked.bcast && (asked.optin || asked.optout) {
        return Err(reply::error(
            "ERR OPTIN and OPTOUT are not compatible with BCAST",
        ));
    }
    if asked.optin && asked.optout {
        return Err(reply::error(
            "ERR You can't specify both OPTIN mode and OPTOUT mode",
        ));
    }
    if current.is_some_and(|c| (asked.optin && c.optout) || (asked.optout && c.optin)) {
        return Err(reply::error("ERR You can't switch OPTIN/OPTOUT mode before disabling tracking for this client, and then re-enabling it with a different mode."));
    }
    let mut prefixes: Vec<Bytes> = current.map(|c| c.prefixes.clone()).unwrap_or_default();
    if asked.bcast {
        // A prefix that begins another (or equals it) would report keys twice: refused,
        // as on a node, against the client's prefixes and the others given with it.
        for (n, p) in asked.prefixes.iter().enumerate() {
            let others = asked.prefixes.iter().enumerate().filter(|&(m, _)| m != n);
            let others = prefixes.iter().chain(others.map(|(_, q)| q));
            for q in others {
                if p.starts_with(q) || q.starts_with(p) {
                    return Err(reply::error(&format!(
                        "ERR Prefix '{}' overlaps with an existing prefix '{}'. Prefixes for a single client must not overlap.",
                        String::from_utf8_lossy(p),
                        String::from_utf8_lossy(q)
                    )));
                }
            }
        }
        prefixes.extend(asked.prefixes);
        if prefixes.is_empty() {
            prefixes.push(Bytes::new()); // every key
        }
    }
    // The options are those given now (a node keeps only the prefixes).
    Ok(Mode { prefixes, ..asked })
}

/// Starts tracking in `mode`; gives the tracker and the receiver of the answer to
/// `CLIENT TRACKING ON`.
fn start(proxy: Arc<Proxy>, mode: Mode) -> (Tracker, oneshot::Receiver<Bytes>) {
    let (own, pushes) = mpsc::channel(QUEUE);
    let shared = Arc::new(Shared {
        mode: Mutex::new(mode),
        ..Shared::default()
    });
    let lost = Arc::new(AtomicBool::new(false));
    // What the listeners hear, and the flushes: to the redirect's client, or in-band.
    let (heard, to_forward) = mpsc::channel(QUEUE);
    let forward = Forward {
        clients: proxy.clients.clone(),
        shared: shared.clone(),
        own: own.clone(),
    };
    let forward = tokio::spawn(forward.run(to_forward));
    let starts = {
        let shared = shared.clone();
        move |addr: &str| shared.request(addr, None)
    };
    let lease = Arc::new(Lease::tracking(lease::Tracking {
        start: Box::new(starts),
        pushes: Some(own),
        lost: lost.clone(),
    }));
    let (ready_tx, ready) = oneshot::channel();
    let (gave_up_tx, gave_up) = oneshot::channel();
    let links = Links {
        proxy,
        lease: lease.clone(),
        shared: shared.clone(),
        dest: heard,
        lost,
        ready: Some(ready_tx),
        gave_up: Some(gave_up_tx),
    };
    let links = tokio::spawn(links.run());
    let tracker = Tracker {
        shared,
        caching: None,
        caching_now: None,
        lease,
        pushes,
        links,
        forward,
        gave_up,
    };
    (tracker, ready)
}

/// Passes what a tracking client's listeners hear, and its flushes, to the client it
/// redirects to, as `message __redis__:invalidate [keys]` (a null for "flush
/// everything"), or to the client itself when it redirects no more. Once the redirect's
/// client is gone, each tells the tracking client instead that its redirect is broken
/// (heard in RESP3), as a node does.
struct Forward {
    clients: Arc<super::Clients>,
    shared: Arc<Shared>,
    own: mpsc::Sender<Bytes>,
}

impl Forward {
    async fn run(self, mut heard: mpsc::Receiver<Bytes>) {
        while let Some(push) = heard.recv().await {
            let Some(id) = self.shared.mode().redirect else {
                let _ = self.own.try_send(push);
                continue;
            };
            let Ok(Value::Array(items)) = Value::parse(&push) else {
                continue;
            };
            let Some(keys) = items.get(1) else { continue };
            match self.clients.inbox(id) {
                None => {
                    self.shared.broken.store(true, Ordering::Relaxed);
                    let mut out = BytesMut::new();
                    out.extend_from_slice(b">2\r\n");
                    reply::bulk(&mut out, b"tracking-redir-broken");
                    out.extend_from_slice(format!(":{id}\r\n").as_bytes());
                    let _ = self.own.try_send(out.freeze());
                }
                Some(None) => {} // not subscribed to __redis__:invalidate: dropped, as on a node
                Some(Some(inbox)) => {
                    let _ = inbox.try_send(keys.to_bytes());
                }
            }
        }
    }
}

/// What a client subscribed to `__redis__:invalidate` receives for `keys` (the encoded
/// array of keys, or a null), in its protocol.
pub fn invalidation(keys: &[u8], resp3: bool) -> Bytes {
    let mut out = BytesMut::new();
    if resp3 {
        // A RESP3 client hears the push a tracking client would, subscribed or not.
        out.extend_from_slice(b">2\r\n");
        reply::bulk(&mut out, b"invalidate");
    } else {
        out.extend_from_slice(b"*3\r\n");
        reply::bulk(&mut out, b"message");
        reply::bulk(&mut out, b"__redis__:invalidate");
    }
    if keys == b"$-1\r\n" || keys == b"_\r\n" {
        out.extend_from_slice(if resp3 { b"_\r\n" } else { b"$-1\r\n" });
    } else {
        out.extend_from_slice(keys);
    }
    out.freeze()
}

/// `CLIENT GETREDIR`: -1 when not tracking, 0 without a redirect.
pub fn redirect(tracking: Option<&Tracker>) -> i64 {
    match tracking {
        Some(t) => t.mode().redirect.map_or(0, i64::from),
        None => -1,
    }
}

/// `CLIENT TRACKINGINFO` of a client with this tracking.
pub fn info(tracking: Option<&Tracker>, resp3: bool) -> Bytes {
    let mut out = BytesMut::new();
    if resp3 {
        out.extend_from_slice(b"%3\r\n");
    } else {
        reply::array_header(&mut out, 6);
    }
    reply::bulk(&mut out, b"flags");
    let mut flags: Vec<&[u8]> = Vec::new();
    match tracking {
        None => flags.push(b"off"),
        Some(t) => {
            flags.push(b"on");
            let m = t.mode();
            for (on, flag) in [
                (m.bcast, &b"bcast"[..]),
                (m.optin, b"optin"),
                (m.optin && t.caching_said() == Some(true), b"caching-yes"),
                (m.optout, b"optout"),
                (m.optout && t.caching_said() == Some(false), b"caching-no"),
                (m.noloop, b"noloop"),
                (t.shared.broken.load(Ordering::Relaxed), b"broken_redirect"),
            ] {
                if on {
                    flags.push(flag);
                }
            }
        }
    }
    if resp3 {
        out.extend_from_slice(format!("~{}\r\n", flags.len()).as_bytes());
    } else {
        reply::array_header(&mut out, flags.len());
    }
    for flag in flags {
        reply::bulk(&mut out, flag);
    }
    reply::bulk(&mut out, b"redirect");
    out.extend_from_slice(format!(":{}\r\n", redirect(tracking)).as_bytes());
    reply::bulk(&mut out, b"prefixes");
    let prefixes = tracking.map_or(Vec::new(), |t| t.mode().prefixes);
    reply::array_header(&mut out, prefixes.len());
    for p in &prefixes {
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
    masters.dedup();
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

/// True while the node at `addr` is a master of the slot map.
fn is_master(proxy: &Proxy, addr: &str) -> bool {
    let table = proxy.table.load();
    let mut masters = table.masters();
    masters.any(|(_, n)| n.addr == addr)
}

/// Tells the client to flush its cache, now or as soon as its queue has room.
fn flush(pushes: &mpsc::Sender<Bytes>, lost: &AtomicBool) {
    if pushes.try_send(Bytes::from_static(FLUSH_ALL)).is_err() {
        lost.store(true, Ordering::Relaxed);
    }
}

/// What a tracking client needs besides its own connections: a listener on every node
/// (for a redirect, now or after a second `ON`), a broadcasting connection on every node
/// that may become a master, and with BCAST its connections to every master open.
struct Links {
    proxy: Arc<Proxy>,
    lease: Arc<Lease>,
    /// Where what the listeners hear, and flushes, go (see [`Forward`]).
    dest: mpsc::Sender<Bytes>,
    lost: Arc<AtomicBool>,
    shared: Arc<Shared>,
    ready: Option<oneshot::Sender<Bytes>>,
    gave_up: Option<oneshot::Sender<()>>,
}

/// A connection of the proxy's for a tracking client.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
enum Kind {
    /// Broadcasting on a node that may become a master: notices writes before the map
    /// names it.
    Standby,
    /// Receives what the client's connections to its node redirect.
    Listener,
}

impl Links {
    async fn run(mut self) {
        let mut links: JoinSet<(String, Kind, bool)> = JoinSet::new();
        let mut live: FxHashMap<(String, Kind), (AbortHandle, Arc<AtomicBool>)> =
            FxHashMap::default();
        // Links that ended: when to try again, and failures in a row.
        let mut retry_at: FxHashMap<(String, Kind), Instant> = FxHashMap::default();
        let mut failures: FxHashMap<(String, Kind), u32> = FxHashMap::default();
        let mut masters_before: FxHashSet<String> = FxHashSet::default();
        let mut tick = tokio::time::interval(RECONCILE);
        loop {
            let (masters, standby) = targets(&self.proxy);
            // A node the client's connection went to that is a master no more: what it
            // tracked may change elsewhere unseen.
            for addr in self.lease.nodes() {
                if masters_before.contains(&addr) && !masters.contains(&addr) {
                    self.lease.forget(&addr);
                    flush(&self.dest, &self.lost);
                }
            }
            masters_before = masters.iter().cloned().collect();
            let wanted = |addr: &String, kind: Kind| match kind {
                Kind::Standby => standby.contains(addr),
                Kind::Listener => masters.contains(addr) || standby.contains(addr),
            };
            let gone: Vec<_> = live
                .keys()
                .filter(|(a, k)| !wanted(a, *k))
                .cloned()
                .collect();
            for key in gone {
                if let Some((link, missed)) = live.remove(&key) {
                    link.abort();
                    if key.1 == Kind::Standby && missed.load(Ordering::Relaxed) {
                        // It heard a write while its node was not yet a master.
                        flush(&self.dest, &self.lost);
                    }
                }
            }
            let now = Instant::now();
            retry_at.retain(|_, at| *at > now);
            let every: Vec<String> = masters.iter().chain(&standby).cloned().collect();
            let kinds = [(Kind::Standby, &standby), (Kind::Listener, &every)];
            let mut first = Vec::new();
            for (kind, addrs) in kinds {
                for addr in addrs.iter() {
                    let key = (addr.clone(), kind);
                    if live.contains_key(&key) || retry_at.contains_key(&key) {
                        continue;
                    }
                    let Some(permit) = self.proxy.node(addr).dedicated_permit() else {
                        continue; // tried again on the next tick
                    };
                    let (started_tx, started) = oneshot::channel();
                    let missed = Arc::new(AtomicBool::new(false));
                    let link = Link {
                        addr: addr.clone(),
                        kind,
                        dest: self.dest.clone(),
                        lost: self.lost.clone(),
                        started: Some(started_tx),
                        late: self.ready.is_none(),
                        missed: missed.clone(),
                        shared: self.shared.clone(),
                        proxy: self.proxy.clone(),
                    };
                    let handle = links.spawn(async move {
                        let _permit = permit;
                        link.run().await
                    });
                    live.insert(key, (handle, missed));
                    first.push((kind == Kind::Listener && masters.contains(addr), started));
                }
            }
            // The first answer waits until every master tracks.
            let mut ok = !masters.is_empty();
            if self.ready.is_some() {
                for (needed, started) in first {
                    ok &= started.await.unwrap_or(false) || !needed;
                }
            }
            // With BCAST, every master reports to the client's own connection to it (made
            // once the node's listener is known, with a redirect).
            let mut opened = Vec::new();
            if self.shared.mode().bcast {
                let open = self.lease.nodes();
                let startable = |addr: &String| self.shared.request(addr, None).is_some();
                for addr in masters.iter().filter(|a| !open.contains(a) && startable(a)) {
                    let node = self.proxy.node(addr);
                    opened.push(self.lease.send_quiet(node.as_ref(), PING, true));
                }
            }
            if let Some(reply_to) = self.ready.take() {
                for pong in opened {
                    ok &= pong.await.is_ok_and(|r| !r.starts_with(b"-"));
                }
                let answer = match ok {
                    true => Bytes::from_static(reply::OK),
                    false => reply::error(
                        "ERR slotguard: could not start tracking on every master; try again",
                    ),
                };
                let _ = reply_to.send(answer);
                if !ok {
                    if let Some(gave_up) = self.gave_up.take() {
                        let _ = gave_up.send(());
                    }
                    return;
                }
            }
            if self.lost.load(Ordering::Relaxed)
                && self.dest.try_send(Bytes::from_static(FLUSH_ALL)).is_ok()
            {
                self.lost.store(false, Ordering::Relaxed);
            }
            tokio::select! {
                Some(ended) = links.join_next() => {
                    if let Ok((addr, kind, tracked)) = ended {
                        let key = (addr.clone(), kind);
                        live.remove(&key);
                        if kind == Kind::Listener {
                            // The client's connection to the node redirects to an id
                            // that is gone: it is made again with the next listener's.
                            let mut ids = self.shared.listeners.lock().unwrap_or_else(|e| e.into_inner());
                            ids.remove(&addr);
                            drop(ids);
                            self.lease.forget(&addr);
                        }
                        if is_master(&self.proxy, &addr) {
                            // What changed while the connection was down is unknown.
                            flush(&self.dest, &self.lost);
                        }
                        // A node that is down is asked less and less often.
                        let failed = failures.entry(key.clone()).or_default();
                        *failed = if tracked { 0 } else { (*failed + 1).min(4) };
                        retry_at.insert(key, Instant::now() + RECONCILE * (1 << *failed));
                    }
                }
                _ = tick.tick() => {}
                _ = self.dest.closed() => return,
            }
        }
    }
}

/// One connection of the proxy's for a tracking client (see [`Kind`]).
struct Link {
    addr: String,
    kind: Kind,
    dest: mpsc::Sender<Bytes>,
    lost: Arc<AtomicBool>,
    /// Told whether the link started.
    started: Option<oneshot::Sender<bool>>,
    /// Made after the client was told tracking is on.
    late: bool,
    /// A standby link heard a write while its node was not a master.
    missed: Arc<AtomicBool>,
    shared: Arc<Shared>,
    proxy: Arc<Proxy>,
}

impl Link {
    /// Runs until the connection fails; returns the node's address, the link's kind, and
    /// whether it started before it failed.
    async fn run(mut self) -> (String, Kind, bool) {
        if let Err(why) = self.serve().await {
            debug!(addr = %self.addr, %why, "tracking connection lost");
        }
        let started = self.started.is_none();
        if let Some(tell) = self.started.take() {
            let _ = tell.send(false);
        }
        (self.addr, self.kind, started)
    }

    async fn serve(&mut self) -> Result<(), Broken> {
        let config = self.proxy.config().clone();
        let setup: &[u8] = match self.kind {
            Kind::Standby => b"*4\r\n$6\r\nCLIENT\r\n$8\r\nTRACKING\r\n$2\r\nON\r\n$5\r\nBCAST\r\n",
            Kind::Listener => b"*2\r\n$6\r\nCLIENT\r\n$2\r\nID\r\n",
        };
        let (mut stream, mut skip) = dial(&self.addr, &config, true, setup).await?;
        let mut rbuf = BytesMut::with_capacity(4096);
        let mut scanner = ReplyScanner::default();
        loop {
            if stream.read_buf(&mut rbuf).await.map_err(Broken::Read)? == 0 {
                return Err(Broken::Closed);
            }
            while let Some(len) = scanner.scan(&rbuf).map_err(Broken::Unreadable)? {
                let frame = rbuf.split_to(len).freeze();
                if frame.first() == Some(&b'>') {
                    self.push(frame);
                    continue;
                }
                if frame.first() == Some(&b'-') {
                    return Err(Broken::refused(&frame));
                }
                if skip > 0 {
                    skip -= 1;
                } else if let Some(tell) = self.started.take() {
                    if let (Kind::Listener, Ok(Value::Int(id))) = (self.kind, Value::parse(&frame))
                    {
                        let mut ids = self
                            .shared
                            .listeners
                            .lock()
                            .unwrap_or_else(|e| e.into_inner());
                        debug!(addr = %self.addr, id, kind = ?self.kind, "listener id");
                        ids.insert(self.addr.clone(), id);
                    }
                    let _ = tell.send(true);
                    if self.late && is_master(&self.proxy, &self.addr) {
                        // Writes to this master before it was tracked were not reported.
                        flush(&self.dest, &self.lost);
                    }
                }
            }
            if rbuf.capacity() - rbuf.len() < 1024 {
                rbuf.reserve(4096);
            }
        }
    }

    /// A standby's pushes are remembered, not passed on; a listener's are passed on.
    fn push(&mut self, frame: Bytes) {
        if !frame.starts_with(b">2\r\n$10\r\ninvalidate\r\n") {
            return;
        }
        match self.kind {
            Kind::Standby => self.missed.store(true, Ordering::Relaxed),
            Kind::Listener => {
                if self.dest.try_send(frame).is_err() {
                    self.lost.store(true, Ordering::Relaxed);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn asked(f: impl FnOnce(&mut Mode)) -> Mode {
        let mut m = Mode::default();
        f(&mut m);
        m
    }

    #[test]
    fn a_second_on_replaces_the_options_and_adds_prefixes_as_a_node_does() {
        let on = merge(None, asked(|m| m.noloop = true)).unwrap();
        let again = merge(Some(&on), asked(|m| m.optin = true)).unwrap();
        assert!(again.optin && !again.noloop, "{again:?}");
        let text = |e: Bytes| String::from_utf8_lossy(&e).into_owned();
        let err = text(merge(Some(&again), asked(|m| m.optout = true)).unwrap_err());
        assert!(err.contains("switch OPTIN/OPTOUT"), "{err}");
        let err = text(merge(Some(&again), asked(|m| m.bcast = true)).unwrap_err());
        assert!(err.contains("switch BCAST"), "{err}");

        let bcast = merge(None, asked(|m| m.bcast = true)).unwrap();
        assert_eq!(bcast.prefixes, [Bytes::new()], "every key");
        let ab = asked(|m| {
            m.bcast = true;
            m.prefixes = vec![Bytes::from("a:"), Bytes::from("b:")];
        });
        let ab = merge(None, ab).unwrap();
        let c = merge(
            Some(&ab),
            asked(|m| {
                m.bcast = true;
                m.prefixes = vec![Bytes::from("c:")];
            }),
        )
        .unwrap();
        assert_eq!(c.prefixes, ["a:", "b:", "c:"].map(Bytes::from));
        for clash in ["a", "a:", "a:x"] {
            let err = text(
                merge(
                    Some(&ab),
                    asked(|m| {
                        m.bcast = true;
                        m.prefixes = vec![Bytes::from(clash)];
                    }),
                )
                .unwrap_err(),
            );
            assert!(err.contains("overlaps"), "{clash}: {err}");
        }
    }

    #[test]
    fn a_connection_says_the_options_and_its_nodes_listener() {
        let m = asked(|m| {
            m.optout = true;
            m.noloop = true;
            m.redirect = Some(9);
        });
        let raw = m.request(&[], Some(42));
        assert_eq!(
            &raw[..],
            b"*7\r\n$6\r\nCLIENT\r\n$8\r\nTRACKING\r\n$2\r\nON\r\n$6\r\nOPTOUT\r\n$6\r\nNOLOOP\r\n$8\r\nREDIRECT\r\n$2\r\n42\r\n"
        );
        let every = asked(|m| m.bcast = true).request(&[Bytes::new()], None);
        assert_eq!(
            &every[..],
            b"*4\r\n$6\r\nCLIENT\r\n$8\r\nTRACKING\r\n$2\r\nON\r\n$5\r\nBCAST\r\n"
        );
    }
}
