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

use super::job::Job;
use super::lease::{self, Lease};
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
const PING: &[u8] = b"*1\r\n$4\r\nPING\r\n";

/// What a client asked for with `CLIENT TRACKING ON`; a second ON adds to it, as on a node.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Mode {
    pub bcast: bool,
    pub optin: bool,
    pub optout: bool,
    pub noloop: bool,
    pub prefixes: Vec<Bytes>,
    /// `REDIRECT id`: the client of this proxy the invalidations go to.
    pub redirect: Option<u32>,
}

impl Mode {
    /// The `CLIENT TRACKING ON` a connection of the client's sends, redirected to the
    /// node's listener (`listener`, its client id there) if the client redirects.
    fn request(&self, listener: Option<i64>) -> Bytes {
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
        for p in &self.prefixes {
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

/// A client's tracking.
pub struct Tracker {
    pub mode: Mode,
    /// `CLIENT CACHING yes|no` was said: the next command's connection hears it first.
    pub caching: Option<bool>,
    /// Set while the command that `caching` applies to is routed.
    caching_now: Option<bool>,
    /// The connections the client's commands take while it tracks.
    pub lease: Arc<Lease>,
    /// The client's pushes: in-band invalidations, flushes, `tracking-redir-broken`.
    pushes: mpsc::Receiver<Bytes>,
    own: mpsc::Sender<Bytes>,
    /// The redirect's client is gone (`broken_redirect`).
    broken: Arc<AtomicBool>,
    /// The listeners and broadcasting connections, and the redirect's forwarding.
    task: JoinHandle<()>,
    /// Told when the task gave up (tracking could not start).
    gave_up: oneshot::Receiver<()>,
    /// What the client tracked before its last `ON` changed the options: those
    /// connections still report the keys read on them, until `OFF`.
    previous: Option<Box<Retired>>,
}

/// The connections of a tracking the client replaced by a second `ON`.
struct Retired {
    _lease: Arc<Lease>,
    task: JoinHandle<()>,
}

impl Drop for Retired {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl std::fmt::Debug for Tracker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tracker").field("mode", &self.mode).finish()
    }
}

impl Drop for Tracker {
    fn drop(&mut self) {
        self.task.abort(); // its connections are in its JoinSet: they end with it
    }
}

impl Tracker {
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
    let mode = match merge(tracking.as_ref().map(|t| &t.mode), asked) {
        Ok(mode) => mode,
        Err(error) => return Ok(reply::error(&error)),
    };
    if tracking.as_ref().is_some_and(|t| t.mode == mode) {
        return Ok(Bytes::from_static(reply::OK));
    }
    let Some(proxy) = proxy.me.upgrade() else {
        return Ok(reply::error("ERR slotguard is shutting down"));
    };
    let (tracker, ready) = start(proxy, mode, tracking.take());
    *tracking = Some(tracker);
    Err(ready)
}

/// The mode after `asked`, given the one in force (Redis's rules and words).
fn merge(current: Option<&Mode>, asked: Mode) -> Result<Mode, String> {
    if !asked.bcast && !asked.prefixes.is_empty() {
        return Err("ERR PREFIX option requires BCAST mode to be enabled".into());
    }
    if current.is_some_and(|c| c.bcast != asked.bcast) {
        return Err("ERR You can't switch BCAST mode on/off before disabling tracking for this client, and then re-enabling it with a different mode.".into());
    }
    if asked.bcast && (asked.optin || asked.optout) {
        return Err("ERR OPTIN and OPTOUT are not compatible with BCAST".into());
    }
    if asked.optin && asked.optout {
        return Err("ERR You can't specify both OPTIN mode and OPTOUT mode".into());
    }
    if current.is_some_and(|c| (asked.optin && c.optout) || (asked.optout && c.optin)) {
        return Err("ERR You can't switch OPTIN/OPTOUT mode before disabling tracking for this client, and then re-enabling it with a different mode.".into());
    }
    let mut prefixes: Vec<Bytes> = current.map(|c| c.prefixes.clone()).unwrap_or_default();
    if asked.bcast {
        // A prefix that is another's start would report keys twice: refused, as on a node.
        for (n, p) in asked.prefixes.iter().enumerate() {
            let earlier = asked.prefixes[..n].iter().chain(&prefixes);
            for q in earlier.chain(asked.prefixes[n + 1..].iter()) {
                if p != q && (p.starts_with(q) || q.starts_with(p)) {
                    return Err(format!(
                        "ERR Prefix '{}' overlaps with an existing prefix '{}'. Prefixes for a single client must not overlap.",
                        String::from_utf8_lossy(p),
                        String::from_utf8_lossy(q)
                    ));
                }
            }
        }
        for p in asked.prefixes {
            if !prefixes.contains(&p) {
                prefixes.push(p);
            }
        }
        if prefixes.is_empty() {
            prefixes.push(Bytes::new()); // every key
        }
    }
    let was = current.cloned().unwrap_or_default();
    Ok(Mode {
        bcast: asked.bcast,
        optin: was.optin || asked.optin,
        optout: was.optout || asked.optout,
        noloop: was.noloop || asked.noloop,
        prefixes,
        redirect: asked.redirect,
    })
}

/// Starts tracking in `mode`; gives the tracker and the receiver of the answer to
/// `CLIENT TRACKING ON`. A tracking `before` it keeps reporting what it tracked.
fn start(
    proxy: Arc<Proxy>,
    mode: Mode,
    before: Option<Tracker>,
) -> (Tracker, oneshot::Receiver<Bytes>) {
    let (own, pushes, previous) = match before {
        Some(mut old) => {
            let (tx, rx) = mpsc::channel(1);
            let pushes = std::mem::replace(&mut old.pushes, rx);
            let own = old.own.clone();
            // Only one generation is kept: what the one before it tracked is flushed.
            if old.previous.take().is_some() {
                let _ = own.try_send(Bytes::from_static(FLUSH_ALL));
            }
            let task = std::mem::replace(&mut old.task, tokio::spawn(async {}));
            let retired = Retired {
                _lease: old.lease.clone(),
                task,
            };
            drop(tx);
            (own, pushes, Some(Box::new(retired)))
        }
        None => {
            let (own, pushes) = mpsc::channel(QUEUE);
            (own, pushes, None)
        }
    };
    let lost = Arc::new(AtomicBool::new(false));
    let broken = Arc::new(AtomicBool::new(false));
    // Where invalidations go: the client's own pushes, or the redirect's client.
    let (dest, listeners) = match mode.redirect {
        Some(id) => {
            let (tx, rx) = mpsc::channel(QUEUE);
            let forwarded = Forward {
                clients: proxy.clients.clone(),
                id,
                own: own.clone(),
                broken: broken.clone(),
            };
            tokio::spawn(forwarded.run(rx));
            (tx, Some(Arc::new(Mutex::new(FxHashMap::default()))))
        }
        None => (own.clone(), None),
    };
    let starts = {
        let (mode, listeners) = (mode.clone(), listeners.clone());
        move |addr: &str| match &listeners {
            None => Some(mode.request(None)),
            Some(ids) => {
                let ids: &Mutex<FxHashMap<String, i64>> = ids;
                let id = *ids.lock().unwrap_or_else(|e| e.into_inner()).get(addr)?;
                Some(mode.request(Some(id)))
            }
        }
    };
    let lease = Arc::new(Lease::tracking(lease::Tracking {
        start: Box::new(starts),
        pushes: listeners.is_none().then(|| dest.clone()),
        lost: lost.clone(),
    }));
    let (ready_tx, ready) = oneshot::channel();
    let (gave_up_tx, gave_up) = oneshot::channel();
    let links = Links {
        proxy,
        lease: lease.clone(),
        bcast: mode.bcast,
        dest,
        lost,
        listeners,
        ready: Some(ready_tx),
        gave_up: Some(gave_up_tx),
    };
    let task = tokio::spawn(links.run());
    let tracker = Tracker {
        mode,
        caching: None,
        caching_now: None,
        lease,
        pushes,
        own,
        broken,
        task,
        gave_up,
        previous,
    };
    (tracker, ready)
}

/// Passes a tracking client's invalidations to the client it redirects them to, as
/// `message __redis__:invalidate [keys]` (a null for "flush everything"). Once that client
/// is gone, each tells the tracking client instead that its redirect is broken (in
/// RESP3), as a node does.
struct Forward {
    clients: Arc<super::clients::Clients>,
    id: u32,
    own: mpsc::Sender<Bytes>,
    broken: Arc<AtomicBool>,
}

impl Forward {
    async fn run(self, mut pushes: mpsc::Receiver<Bytes>) {
        while let Some(push) = pushes.recv().await {
            let Ok(Value::Array(items)) = Value::parse(&push) else {
                continue;
            };
            let Some(keys) = items.get(1) else { continue };
            match self.clients.inbox(self.id) {
                None => {
                    self.broken.store(true, Ordering::Relaxed);
                    let mut out = BytesMut::new();
                    out.extend_from_slice(b">2\r\n");
                    reply::bulk(&mut out, b"tracking-redir-broken");
                    out.extend_from_slice(format!(":{}\r\n", self.id).as_bytes());
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

/// `CLIENT GETREDIR`: -1 when not tracking, 0 without a redirect.
pub fn redirect(tracking: Option<&Tracker>) -> i64 {
    match tracking {
        Some(t) => t.mode.redirect.map_or(0, i64::from),
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
            let m = &t.mode;
            for (on, flag) in [
                (m.bcast, &b"bcast"[..]),
                (m.optin, b"optin"),
                (m.optin && t.caching == Some(true), b"caching-yes"),
                (m.optout, b"optout"),
                (m.optout && t.caching == Some(false), b"caching-no"),
                (m.noloop, b"noloop"),
                (t.broken.load(Ordering::Relaxed), b"broken_redirect"),
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
    let prefixes = tracking.map_or(&[][..], |t| &t.mode.prefixes);
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
/// when it redirects, a broadcasting connection on every node that may become a master,
/// and with BCAST its connections to every master open.
struct Links {
    proxy: Arc<Proxy>,
    lease: Arc<Lease>,
    bcast: bool,
    /// Where invalidations and flushes go.
    dest: mpsc::Sender<Bytes>,
    lost: Arc<AtomicBool>,
    /// The listeners' client ids, by node (with a redirect).
    listeners: Option<Arc<Mutex<FxHashMap<String, i64>>>>,
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
            let mut kinds = vec![(Kind::Standby, &standby)];
            let every: Vec<String> = masters.iter().chain(&standby).cloned().collect();
            if self.listeners.is_some() {
                kinds.push((Kind::Listener, &every));
            }
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
                        listeners: self.listeners.clone(),
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
            // With BCAST, every master reports to the client's own connection to it.
            let mut opened = Vec::new();
            if self.bcast {
                let open = self.lease.nodes();
                for addr in masters.iter().filter(|a| !open.contains(a)) {
                    let node = self.proxy.node(addr);
                    opened.push(self.lease.send_quiet(&node, PING, true));
                }
            }
            if let Some(reply_to) = self.ready.take() {
                // The first answer waits until every master tracks.
                let mut ok = !masters.is_empty();
                for (needed, started) in first {
                    ok &= started.await.unwrap_or(false) || !needed;
                }
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
                            if let Some(ids) = &self.listeners {
                                ids.lock().unwrap_or_else(|e| e.into_inner()).remove(&addr);
                            }
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
    listeners: Option<Arc<Mutex<FxHashMap<String, i64>>>>,
    proxy: Arc<Proxy>,
}

impl Link {
    /// Runs until the connection fails; returns the node's address, the link's kind, and
    /// whether it started before it failed.
    async fn run(mut self) -> (String, Kind, bool) {
        if let Err(why) = self.serve().await {
            debug!(addr = %self.addr, why, "tracking connection lost");
        }
        let started = self.started.is_none();
        if let Some(tell) = self.started.take() {
            let _ = tell.send(false);
        }
        (self.addr, self.kind, started)
    }

    async fn serve(&mut self) -> Result<(), String> {
        let config = self.proxy.config().clone();
        let setup: &[u8] = match self.kind {
            Kind::Standby => b"*4\r\n$6\r\nCLIENT\r\n$8\r\nTRACKING\r\n$2\r\nON\r\n$5\r\nBCAST\r\n",
            Kind::Listener => b"*2\r\n$6\r\nCLIENT\r\n$2\r\nID\r\n",
        };
        let (mut stream, mut skip) = dial(&self.addr, &config, true, setup).await?;
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
                } else if let Some(tell) = self.started.take() {
                    if let (Some(ids), Ok(Value::Int(id))) = (&self.listeners, Value::parse(&frame))
                    {
                        let mut ids = ids.lock().unwrap_or_else(|e| e.into_inner());
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
