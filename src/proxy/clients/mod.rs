//! The proxy's clients, as CLIENT LIST, KILL and UNBLOCK see them.
//!
//! Each session registers an [`Entry`] while it lives. What other clients need to see of
//! it (name, user, protocol, last command, flags) is published by the session once per
//! batch of requests, and only what changed is copied, so the request path pays one
//! uncontended lock per read.
//!
//! - `CLIENT LIST [TYPE t] [ID id...]` and `CLIENT INFO`: in Redis's format. Fields that
//!   describe a node's buffers (`qbuf`, `omem`, ...) describe nothing here and are 0,
//!   except the asking client's own `qbuf`, its request's size, as on a node.
//! - `CLIENT KILL addr` and `CLIENT KILL [ID|TYPE|USER|ADDR|LADDR|SKIPME|MAXAGE ...]`:
//!   another client's session ends at once, the caller's own after this reply.
//! - `CLIENT UNBLOCK id [TIMEOUT|ERROR]`: a client blocked through the proxy waits on its
//!   own node connection; that connection is found in the node's CLIENT LIST by its
//!   address and unblocked there, so an element popped just before is never lost.

pub mod tracking;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::task::{Context, Poll, Waker};
use std::time::Instant;

use bytes::{Bytes, BytesMut};
use rustc_hash::FxHashMap;
use tokio::sync::{mpsc, oneshot};

use super::backend::lease::Lease;
use super::Proxy;
use crate::client::Conn;
use crate::protocol::{reply, Request, Value};

/// Every live client of the proxy.
#[derive(Default)]
pub struct Clients {
    entries: Mutex<FxHashMap<u32, Arc<Entry>>>,
}

/// One client, as others see it.
#[derive(Debug)]
pub struct Entry {
    pub id: u32,
    pub peer: SocketAddr,
    pub local: SocketAddr,
    since: Instant,
    seen: Mutex<Seen>,
    /// What others ask of the session: to end (CLIENT KILL) or to stop reading (shutdown).
    pub bell: Bell,
    /// The client's own node connection, once it had one (blocking commands, WATCH).
    lease: Mutex<Weak<Lease>>,
    /// While the client is subscribed to `__redis__:invalidate`: where other clients'
    /// tracking sends the keys they redirect to it (`CLIENT TRACKING ON REDIRECT id`).
    inbox: Mutex<Option<mpsc::Sender<Bytes>>>,
}

/// What the session last published.
#[derive(Debug, Clone)]
struct Seen {
    name: Option<Bytes>,
    user: String,
    resp3: bool,
    /// The last command, as CLIENT LIST names it (`get`, `client|list`).
    cmd: String,
    /// What `cmd` was made from: a batch whose last command is the same leaves it be.
    last: Option<LastCommand>,
    active: Instant,
    /// Commands queued in a transaction, when one is open.
    multi: Option<u32>,
    subscribed: bool,
    tracking: bool,
    /// `redir` of CLIENT LIST: -1 when not tracking, 0 without a redirect.
    redir: i64,
}

/// The asking session as it is now, fresher than what it published: what CLIENT LIST,
/// INFO and KILL show of it, and what it publishes after a batch. Borrowed from the
/// session, so that publishing copies only what changed.
pub struct Itself<'a> {
    pub id: u32,
    pub peer: SocketAddr,
    pub local: SocketAddr,
    pub name: &'a Option<Bytes>,
    pub user: &'a str,
    pub resp3: bool,
    /// Commands queued in a transaction, when one is open.
    pub multi: Option<u32>,
    /// `redir` of CLIENT LIST: -1 when not tracking, 0 without a redirect.
    pub redir: i64,
}

/// Removes its entry when the session ends.
pub struct Registered {
    clients: Weak<Clients>,
    id: u32,
}

impl Drop for Registered {
    fn drop(&mut self) {
        if let Some(clients) = self.clients.upgrade() {
            clients.lock().remove(&self.id);
        }
    }
}

/// What other tasks ask of one session. The session looks at it on every wake-up, so a
/// look is one atomic load: a `Notify` and a `watch` polled there instead cost about 7% of
/// a plain request's instructions (callgrind, SET at -P 1).
#[derive(Debug, Default)]
pub struct Bell {
    rung: AtomicU8,
    /// The session's task, woken by a ring.
    waker: Mutex<Option<Waker>>,
}

impl Bell {
    /// End the session now (CLIENT KILL).
    pub const KILL: u8 = 1;
    /// Stop reading, write what is owed, then end (shutdown).
    pub const STOP: u8 = 2;

    /// Asks `what` of the session and wakes it.
    pub fn ring(&self, what: u8) {
        self.rung.fetch_or(what, Ordering::Release);
        if let Some(waker) = &*self.waker.lock().unwrap_or_else(|e| e.into_inner()) {
            waker.wake_by_ref();
        }
    }

    /// Whether `what` was asked; no wake-up is registered.
    pub fn rung(&self, what: u8) -> bool {
        self.rung.load(Ordering::Acquire) & what != 0
    }

    /// Ready once `what` is asked; until then a ring wakes `cx`'s task.
    pub fn poll(&self, cx: &mut Context<'_>, what: u8) -> Poll<()> {
        if self.rung(what) {
            return Poll::Ready(());
        }
        {
            let mut waker = self.waker.lock().unwrap_or_else(|e| e.into_inner());
            if !waker.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
                *waker = Some(cx.waker().clone());
            }
        }
        // A ring between the first look and the registration found no waker.
        match self.rung(what) {
            true => Poll::Ready(()),
            false => Poll::Pending,
        }
    }
}

impl Entry {
    /// False once a CLIENT KILL rang it: to every other client it is gone.
    fn alive(&self) -> bool {
        !self.bell.rung(Bell::KILL)
    }

    pub fn new(id: u32, peer: SocketAddr, local: SocketAddr) -> Entry {
        let now = Instant::now();
        Entry {
            id,
            peer,
            local,
            since: now,
            seen: Mutex::new(Seen {
                name: None,
                user: "default".into(),
                resp3: false,
                cmd: "NULL".into(),
                last: None,
                active: now,
                multi: None,
                subscribed: false,
                tracking: false,
                redir: -1,
            }),
            bell: Bell::default(),
            lease: Mutex::new(Weak::new()),
            inbox: Mutex::new(None),
        }
    }

    /// The client's own node connection now exists.
    pub fn leased(&self, lease: &Arc<Lease>) {
        *self.lease.lock().unwrap_or_else(|e| e.into_inner()) = Arc::downgrade(lease);
    }

    /// Publishes the client's state after a batch, read at `now`, whose last request was
    /// `cmd` (its name and first argument).
    pub fn publish(&self, client: &Itself<'_>, cmd: Option<LastCommand>, now: Instant) {
        let mut seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        seen.active = now;
        if seen.name != *client.name {
            seen.name = client.name.clone();
        }
        if seen.user != client.user {
            seen.user = client.user.to_string();
        }
        seen.resp3 = client.resp3;
        seen.multi = client.multi;
        seen.tracking = client.redir >= 0;
        seen.redir = client.redir;
        let cmd = cmd.map(LastCommand::as_listed);
        if let Some(cmd) = cmd.filter(|&cmd| seen.last != Some(cmd)) {
            let (name, sub) = cmd.parts();
            seen.cmd.clear();
            command_name(&mut seen.cmd, name, sub);
            seen.last = Some(cmd);
        }
    }

    /// The client subscribed to `__redis__:invalidate` (`Some`: where redirected
    /// invalidations go), or no longer is.
    pub fn set_inbox(&self, inbox: Option<mpsc::Sender<Bytes>>) {
        *self.inbox.lock().unwrap_or_else(|e| e.into_inner()) = inbox;
    }

    /// The client entered (true) or left pub/sub mode.
    pub fn subscribed(&self, on: bool) {
        self.seen
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .subscribed = on;
    }

    fn seen(&self) -> Seen {
        self.seen.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

/// A command's name and first argument, copied small, for [`Entry::publish`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LastCommand {
    bytes: [u8; 32],
    name: u8,
    sub: u8,
}

impl LastCommand {
    pub fn of(req: &Request) -> LastCommand {
        let mut bytes = [0u8; 32];
        let name = req.arg(0);
        let name_len = name.len().min(16);
        bytes[..name_len].copy_from_slice(&name[..name_len]);
        let sub = if req.len() > 1 { req.arg(1) } else { b"" };
        let sub_len = sub.len().min(16);
        bytes[16..16 + sub_len].copy_from_slice(&sub[..sub_len]);
        LastCommand {
            bytes,
            name: name_len as u8,
            sub: sub_len as u8,
        }
    }

    /// Only what CLIENT LIST shows: the first argument of a container's command, none of
    /// another's (`set`, not its key).
    fn as_listed(mut self) -> LastCommand {
        let (name, _) = self.parts();
        if !CONTAINERS.iter().any(|c| c.eq_ignore_ascii_case(name)) {
            self.bytes[16..].fill(0);
            self.sub = 0;
        }
        self
    }

    fn parts(&self) -> (&[u8], &[u8]) {
        (
            &self.bytes[..self.name as usize],
            &self.bytes[16..16 + self.sub as usize],
        )
    }
}

/// Containers whose subcommand CLIENT LIST shows (`client|list`).
const CONTAINERS: &[&[u8]] = &[
    b"client",
    b"config",
    b"cluster",
    b"command",
    b"function",
    b"script",
    b"object",
    b"memory",
    b"xinfo",
    b"xgroup",
    b"pubsub",
    b"latency",
    b"slowlog",
    b"acl",
    b"module",
];

fn command_name(out: &mut String, name: &[u8], sub: &[u8]) {
    let push = |out: &mut String, text: &[u8]| {
        out.extend(text.iter().map(|b| b.to_ascii_lowercase() as char));
    };
    push(out, name);
    if !sub.is_empty() {
        out.push('|');
        push(out, sub);
    }
}

impl Clients {
    fn lock(&self) -> std::sync::MutexGuard<'_, FxHashMap<u32, Arc<Entry>>> {
        self.entries.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn register(self: &Arc<Self>, entry: Arc<Entry>) -> Registered {
        let id = entry.id;
        self.lock().insert(id, entry);
        Registered {
            clients: Arc::downgrade(self),
            id,
        }
    }

    /// Clients connected; one a CLIENT KILL rang is gone already (Redis frees it at once),
    /// though its session may take a moment to notice.
    pub fn count(&self) -> usize {
        self.lock().values().filter(|e| e.alive()).count()
    }

    /// How many clients track keys (`tracking_clients`).
    pub fn tracking(&self) -> usize {
        self.all().iter().filter(|e| e.seen().tracking).count()
    }

    /// Rings `what` on every client's bell.
    pub fn ring_all(&self, what: u8) {
        for entry in self.lock().values() {
            entry.bell.ring(what);
        }
    }

    /// Every entry, by id.
    fn all(&self) -> Vec<Arc<Entry>> {
        let mut all: Vec<Arc<Entry>> = self
            .lock()
            .values()
            .filter(|e| e.alive())
            .cloned()
            .collect();
        all.sort_by_key(|e| e.id);
        all
    }

    fn get(&self, id: u32) -> Option<Arc<Entry>> {
        self.lock().get(&id).filter(|e| e.alive()).cloned()
    }

    pub fn exists(&self, id: u32) -> bool {
        self.get(id).is_some()
    }

    /// Where invalidations redirected to client `id` go: `None` when there is no such
    /// client, `Some(None)` while it is not subscribed to `__redis__:invalidate`.
    pub fn inbox(&self, id: u32) -> Option<Option<mpsc::Sender<Bytes>>> {
        let entry = self.get(id)?;
        let inbox = entry
            .inbox
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        Some(inbox)
    }
}

/// Which clients a CLIENT LIST or KILL is about.
#[derive(Default)]
struct Filter {
    ids: Vec<u32>,
    kind: Option<Kind>,
    user: Option<String>,
    addr: Option<String>,
    laddr: Option<String>,
    max_age: Option<u64>,
    skip_me: bool,
}

#[derive(Clone, Copy, PartialEq)]
enum Kind {
    Normal,
    /// Master and replica: no proxy client is one.
    Replication,
    Pubsub,
}

impl Kind {
    fn parse(text: &[u8]) -> Result<Kind, Bytes> {
        match text.to_ascii_lowercase().as_slice() {
            b"normal" => Ok(Kind::Normal),
            b"master" | b"replica" | b"slave" => Ok(Kind::Replication),
            b"pubsub" => Ok(Kind::Pubsub),
            _ => Err(reply::error(&format!(
                "ERR Unknown client type '{}'",
                String::from_utf8_lossy(text)
            ))),
        }
    }
}

impl Filter {
    fn matches(&self, entry: &Entry, seen: &Seen, me: u32) -> bool {
        let kind = if seen.subscribed {
            Kind::Pubsub
        } else {
            Kind::Normal
        };
        (self.ids.is_empty() || self.ids.contains(&entry.id))
            && self.kind.is_none_or(|k| k == kind)
            && self.user.as_ref().is_none_or(|u| *u == seen.user)
            && self
                .addr
                .as_ref()
                .is_none_or(|a| *a == entry.peer.to_string())
            && self
                .laddr
                .as_ref()
                .is_none_or(|a| *a == entry.local.to_string())
            && self
                .max_age
                .is_none_or(|max| entry.since.elapsed().as_secs() >= max)
            && !(self.skip_me && entry.id == me)
    }
}

fn syntax() -> Bytes {
    reply::error("ERR syntax error")
}

fn client_id(arg: &[u8]) -> Result<u32, Bytes> {
    crate::protocol::request::parse_i64(arg)
        .filter(|&id| id > 0)
        .and_then(|id| u32::try_from(id).ok())
        .ok_or_else(|| reply::error("ERR client-id should be greater than 0"))
}

/// `CLIENT LIST [TYPE t] [ID id ...]`.
pub fn list(proxy: &Proxy, client: &Itself<'_>, req: &Request) -> Bytes {
    let mut filter = Filter::default();
    let mut at = 2;
    while at < req.len() {
        let option = req.arg(at).to_ascii_uppercase();
        match option.as_slice() {
            b"TYPE" if at + 1 < req.len() => match Kind::parse(req.arg(at + 1)) {
                Ok(kind) => filter.kind = Some(kind),
                Err(e) => return e,
            },
            b"ID" if at + 1 < req.len() => {
                for arg in req.args().skip(at + 1) {
                    match client_id(arg) {
                        Ok(id) => filter.ids.push(id),
                        Err(_) => return reply::error("ERR Invalid client ID"),
                    }
                }
                at = req.len();
                continue;
            }
            _ => return syntax(),
        }
        at += 2;
    }
    let mut text = String::new();
    for entry in proxy.clients.all() {
        let seen = if entry.id == client.id {
            own(client, "client|list")
        } else {
            entry.seen()
        };
        if filter.matches(&entry, &seen, 0) {
            line(&mut text, &entry, &seen, own_qbuf(client, &entry, req));
        }
    }
    let mut out = BytesMut::new();
    reply::text(&mut out, text.as_bytes(), client.resp3);
    out.freeze()
}

/// `CLIENT INFO`.
pub fn info(proxy: &Proxy, client: &Itself<'_>, req: &Request) -> Bytes {
    let entry = proxy
        .clients
        .get(client.id)
        .unwrap_or_else(|| Arc::new(Entry::new(client.id, client.peer, client.local)));
    let mut text = String::new();
    line(
        &mut text,
        &entry,
        &own(client, "client|info"),
        own_qbuf(client, &entry, req),
    );
    let mut out = BytesMut::new();
    reply::text(&mut out, text.as_bytes(), client.resp3);
    out.freeze()
}

/// The asking client's own state, fresher than what it published.
fn own(client: &Itself<'_>, cmd: &str) -> Seen {
    Seen {
        name: client.name.clone(),
        user: client.user.to_string(),
        resp3: client.resp3,
        cmd: cmd.into(),
        last: None,
        active: Instant::now(),
        multi: client.multi,
        subscribed: false,
        tracking: client.redir >= 0,
        redir: client.redir,
    }
}

fn own_qbuf(client: &Itself<'_>, entry: &Entry, req: &Request) -> usize {
    if entry.id == client.id {
        req.raw().len()
    } else {
        0
    }
}

/// One line of CLIENT LIST, in Redis's order of fields.
fn line(out: &mut String, entry: &Entry, seen: &Seen, qbuf: usize) {
    use std::fmt::Write;
    let mut flags = String::new();
    if seen.subscribed {
        flags.push('P');
    }
    if seen.multi.is_some() {
        flags.push('x');
    }
    if seen.tracking {
        flags.push('t');
    }
    if flags.is_empty() {
        flags.push('N');
    }
    let name = seen
        .name
        .as_ref()
        .map(|n| String::from_utf8_lossy(n).into_owned())
        .unwrap_or_default();
    let _ = writeln!(
        out,
        "id={} addr={} laddr={} fd=0 name={name} age={} idle={} flags={flags} db=0 sub=0 psub=0 \
         ssub=0 multi={} qbuf={qbuf} qbuf-free=0 argv-mem=0 multi-mem=0 rbs=0 rbp=0 obl=0 \
         oll=0 omem=0 tot-mem=0 events=r cmd={} user={} redir={} resp={}",
        entry.id,
        entry.peer,
        entry.local,
        entry.since.elapsed().as_secs(),
        seen.active.elapsed().as_secs(),
        seen.multi.map_or(-1, i64::from),
        seen.cmd,
        seen.user,
        seen.redir,
        if seen.resp3 { 3 } else { 2 },
    );
}

/// What CLIENT KILL answers, and whether the caller itself is to close after it.
pub struct Killed {
    pub reply: Bytes,
    pub me: bool,
}

/// `CLIENT KILL addr` (old form: OK or an error) and `CLIENT KILL <filter> ...` (new form:
/// how many were killed).
pub fn kill(proxy: &Proxy, client: &Itself<'_>, req: &Request) -> Killed {
    let answer = |reply: Bytes| Killed { reply, me: false };
    if req.len() < 3 {
        return answer(reply::arity("client|kill"));
    }
    let old = req.len() == 3;
    let filter = if old {
        Filter {
            addr: Some(String::from_utf8_lossy(req.arg(2)).into_owned()),
            ..Filter::default()
        }
    } else {
        match kill_filter(proxy, req) {
            Ok(filter) => filter,
            Err(e) => return answer(e),
        }
    };
    let mut killed = 0;
    let mut me = false;
    for entry in proxy.clients.all() {
        let seen = if entry.id == client.id {
            own(client, "client|kill")
        } else {
            entry.seen()
        };
        if !filter.matches(&entry, &seen, client.id) {
            continue;
        }
        killed += 1;
        if entry.id == client.id {
            me = true;
        } else {
            entry.bell.ring(Bell::KILL);
        }
    }
    let reply = match (old, killed) {
        (true, 0) => reply::error("ERR No such client"),
        (true, _) => Bytes::from_static(reply::OK),
        (false, n) => reply::int(n),
    };
    Killed { reply, me }
}

fn kill_filter(proxy: &Proxy, req: &Request) -> Result<Filter, Bytes> {
    let mut filter = Filter {
        skip_me: true,
        ..Filter::default()
    };
    if !(req.len() - 2).is_multiple_of(2) {
        return Err(syntax());
    }
    for pair in (2..req.len()).step_by(2) {
        let value = req.arg(pair + 1);
        let text = || String::from_utf8_lossy(value).into_owned();
        match req.arg(pair).to_ascii_uppercase().as_slice() {
            b"ID" => filter.ids.push(client_id(value)?),
            b"TYPE" => filter.kind = Some(Kind::parse(value)?),
            b"USER" => {
                let user = text();
                let config = proxy.config();
                if user != "default" && !config.users.iter().any(|u| u.name == user) {
                    return Err(reply::error(&format!("ERR No such user '{user}'")));
                }
                filter.user = Some(user);
            }
            b"ADDR" => filter.addr = Some(text()),
            b"LADDR" => filter.laddr = Some(text()),
            b"SKIPME" => {
                filter.skip_me = match value.to_ascii_lowercase().as_slice() {
                    b"yes" => true,
                    b"no" => false,
                    _ => return Err(syntax()),
                }
            }
            b"MAXAGE" => {
                filter.max_age = Some(
                    crate::protocol::request::parse_i64(value)
                        .and_then(|n| u64::try_from(n).ok())
                        .ok_or_else(syntax)?,
                )
            }
            _ => return Err(syntax()),
        }
    }
    Ok(filter)
}

/// `CLIENT UNBLOCK id [TIMEOUT|ERROR]`: answered once the node has unblocked (1) or found
/// nothing to unblock (0).
pub fn unblock(proxy: &Arc<Proxy>, req: &Request) -> Result<oneshot::Receiver<Bytes>, Bytes> {
    if !(3..=4).contains(&req.len()) {
        return Err(reply::arity("client|unblock"));
    }
    let id = client_id(req.arg(2)).map_err(|_| reply::error("ERR Invalid client ID"))?;
    let mode = match req.len() {
        4 => match req.arg(3).to_ascii_uppercase().as_slice() {
            m @ (b"TIMEOUT" | b"ERROR") => String::from_utf8_lossy(m).into_owned(),
            _ => {
                return Err(reply::error(
                    "ERR CLIENT UNBLOCK reason should be TIMEOUT or ERROR",
                ))
            }
        },
        _ => "TIMEOUT".into(),
    };
    let (tx, rx) = oneshot::channel();
    let conn = proxy.clients.get(id).and_then(|entry| {
        let lease = entry
            .lease
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .upgrade()?;
        lease.connection()
    });
    let Some((node, local)) = conn else {
        let _ = tx.send(reply::int(0));
        return Ok(rx);
    };
    let proxy = proxy.clone();
    tokio::spawn(async move {
        let dial = proxy.config().dial();
        let answer = match proxy.pool.take(&node, &dial).await {
            Some(mut conn) => {
                let answer = unblock_on(&mut conn, &local.to_string(), &mode).await;
                if answer.is_some() {
                    proxy.pool.give(conn);
                }
                answer
            }
            None => None,
        };
        let _ = tx.send(reply::int(answer.unwrap_or(0)));
    });
    Ok(rx)
}

/// Finds the connection from `local` in the node's CLIENT LIST and unblocks it there.
async fn unblock_on(conn: &mut Conn, local: &str, mode: &str) -> Option<i64> {
    let list = conn
        .call(&["CLIENT", "LIST", "TYPE", "normal"])
        .await
        .ok()?;
    let wanted = format!(" addr={local} ");
    let id = list
        .as_str()?
        .lines()
        .find(|l| l.contains(&wanted))?
        .strip_prefix("id=")?
        .split(' ')
        .next()?
        .to_string();
    match conn
        .call(&["CLIENT", "UNBLOCK", id.as_str(), mode])
        .await
        .ok()?
    {
        Value::Int(n) => Some(n),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn container_commands_are_named_with_their_subcommand() {
        let listed = |args: &[&str]| {
            let cmd = LastCommand::of(&Request::from_args(args)).as_listed();
            let (name, sub) = cmd.parts();
            let mut out = String::new();
            command_name(&mut out, name, sub);
            out
        };
        assert_eq!(listed(&["CLIENT", "LIST"]), "client|list");
        assert_eq!(listed(&["GET", "key"]), "get");
        // Two commands that differ only in a key are the same to CLIENT LIST.
        assert_eq!(
            LastCommand::of(&Request::from_args(&["SET", "a", "1"])).as_listed(),
            LastCommand::of(&Request::from_args(&["SET", "b", "2"])).as_listed()
        );
    }
}
