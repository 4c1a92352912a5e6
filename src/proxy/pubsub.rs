//! Subscriptions.
//!
//! A client that subscribes leaves the request-reply loop of [`super::session`] for this
//! one, until it has no subscription left. Its subscriptions live on connections of its own,
//! and the proxy keeps them in place while the cluster changes under them:
//!
//! - SUBSCRIBE and PSUBSCRIBE: a cluster delivers every PUBLISH to every node, so one
//!   connection to any master carries them all. When it breaks, another master takes over.
//! - Keyspace notifications (`__keyspace@0__:key`, `__keyevent@0__:set`) are the one
//!   exception: a node publishes them to its own subscribers only. A channel or pattern
//!   that can name one is subscribed on every master too, and from those other masters
//!   only keyspace notifications are passed on, so nothing arrives twice.
//! - SSUBSCRIBE: a shard channel lives on the master of its slot, one connection per such
//!   master. When the slot moves or its master fails over, the node drops the subscription
//!   (`sunsubscribe`) or the connection breaks; the proxy subscribes again on the slot's
//!   owner as soon as its slot map names it. The client sees neither.
//!
//! What the client is told (confirmations, subscription counts) comes from the proxy's own
//! record, in the order of the client's commands. A confirmation is written only once every
//! node asked has confirmed (the other masters too, for a name that can carry keyspace
//! notifications), so a message or notification published after the client saw it is
//! delivered. A name listed twice is subscribed twice on the node, as Redis confirms each.
//! Messages are at-most-once, as in Redis: what is published while a subscription is
//! being moved is lost.

use std::collections::{BTreeSet, VecDeque};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::{Buf, Bytes, BytesMut};
use rustc_hash::FxHashMap;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::{mpsc, OwnedSemaphorePermit};
use tracing::debug;

use super::backend::connection::Broken;
use super::backend::node::dial;
use super::client::Client;
use super::local::{confirmation, push, Item};
use super::output::{write_now, Backlog};
use super::owed::Pending;
use super::router::route;
use super::{Hint, Proxy};
use crate::config::Config;
use crate::protocol::{key_slot, reply, ReplyScanner, Request, Scanner, Value};
use crate::tls::{write, Stream};

/// How often subscriptions that lost their place are put back.
const RECONCILE: Duration = Duration::from_millis(100);
/// Frames from nodes waiting to be taken into the client's output; past this, the node
/// connections stop reading. A subscriber that does not read has its messages gathered
/// until `client.output_buffer_limit.pubsub` disconnects it (see [`write_out`]).
const EVENTS: usize = 64;

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Kind {
    Channel,
    Pattern,
    Shard,
}

impl Kind {
    fn subscribe(self) -> &'static str {
        match self {
            Kind::Channel => "subscribe",
            Kind::Pattern => "psubscribe",
            Kind::Shard => "ssubscribe",
        }
    }

    fn unsubscribe(self) -> &'static str {
        match self {
            Kind::Channel => "unsubscribe",
            Kind::Pattern => "punsubscribe",
            Kind::Shard => "sunsubscribe",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// The channel redirected tracking invalidations are published on.
const INVALIDATE: &[u8] = b"__redis__:invalidate";

/// The channels a node publishes keyspace notifications on.
const NOTIFICATIONS: [&[u8]; 2] = [b"__keyspace@", b"__keyevent@"];

/// A keyspace notification's channel.
fn notification(channel: &[u8]) -> bool {
    NOTIFICATIONS.iter().any(|p| channel.starts_with(p))
}

/// A channel or pattern that can name a keyspace notification: subscribed on every
/// master. A pattern can when its text before the first wildcard is a prefix of a
/// notification channel, or starts with one.
fn local(kind: Kind, name: &[u8]) -> bool {
    match kind {
        Kind::Channel => notification(name),
        Kind::Pattern => {
            let wildcard = name
                .iter()
                .position(|b| matches!(b, b'*' | b'?' | b'[' | b'\\'));
            let Some(at) = wildcard else {
                return notification(name);
            };
            let literal = &name[..at];
            NOTIFICATIONS
                .iter()
                .any(|p| p.starts_with(literal) || literal.starts_with(p))
        }
        Kind::Shard => false,
    }
}

/// A connection to one node carrying some of the client's subscriptions.
struct Link {
    addr: String,
    commands: mpsc::UnboundedSender<Bytes>,
}

/// What a link task reports.
enum Event {
    Frame(u32, Bytes),
    Closed(u32, Broken),
}

/// Something owed to the client, in order.
enum Out {
    Ready(Bytes),
    /// A confirmation written once every link asked to subscribe `name` for it has
    /// confirmed (or after the hold timeout).
    Confirm {
        kind: Kind,
        name: Bytes,
        bytes: Bytes,
        /// The links asked, and whether each has confirmed.
        links: Vec<(u32, bool)>,
        since: Instant,
    },
    /// A RESP3 client's ordinary command, answered while subscribed.
    Reply(Pending),
}

/// Why [`serve`] returned.
pub enum Left {
    /// No subscription is left: back to ordinary requests.
    Unsubscribed,
    /// QUIT, a protocol error, or the client or the proxy went away: close.
    Close,
}

struct Subscriber<'a> {
    proxy: &'a Proxy,
    /// The client speaks RESP3, and so do its links.
    resp3: bool,
    /// Spreads subscribers' channel connections over the masters.
    pin: u32,
    /// Channels, patterns and shard channels, as the client was told.
    sets: [BTreeSet<Bytes>; 3],
    links: FxHashMap<u32, Link>,
    next_link: u32,
    /// The link carrying channels and patterns.
    global: Option<u32>,
    /// Links to the other masters, for keyspace notifications (see [`local`]).
    locals: Vec<u32>,
    /// Shard channel -> the link it is subscribed on (or being subscribed on).
    placed: FxHashMap<Bytes, u32>,
    out: VecDeque<Out>,
    events: mpsc::Sender<Event>,
    quit: bool,
    /// What other clients' tracking redirects here, while subscribed to
    /// `__redis__:invalidate` (see [`super::clients::tracking`]).
    invalidations: Option<mpsc::Receiver<Bytes>>,
    entry: Arc<super::clients::Entry>,
}

impl Drop for Subscriber<'_> {
    /// A client that leaves subscribed mode, or goes away, no longer receives anything.
    fn drop(&mut self) {
        self.entry.set_inbox(None);
        for (kind, pattern) in [(Kind::Channel, false), (Kind::Pattern, true)] {
            for name in &self.sets[kind.index()] {
                self.proxy.subscribers.remove(pattern, name);
            }
        }
    }
}

/// Serves a client in subscribed mode, starting with the command that subscribed it.
pub async fn serve(
    proxy: &Proxy,
    client: &mut Client,
    stream: &mut Stream,
    scanner: &mut Scanner,
    rbuf: &mut BytesMut,
    first: Request,
) -> std::io::Result<Left> {
    let (events, mut inbox) = mpsc::channel(EVENTS);
    let mut sub = Subscriber {
        proxy,
        resp3: client.resp3,
        pin: client.id,
        sets: Default::default(),
        links: FxHashMap::default(),
        next_link: 0,
        global: None,
        locals: Vec::new(),
        placed: FxHashMap::default(),
        out: VecDeque::new(),
        events,
        quit: false,
        invalidations: None,
        entry: client.entry.clone(),
    };
    let mut shutdown = proxy.shutdown_signal();
    let mut tick = tokio::time::interval(RECONCILE);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut wbuf = BytesMut::new();
    sub.command(client, first);
    loop {
        sub.drain(&mut wbuf);
        if !wbuf.is_empty() {
            write_out(stream, &mut wbuf, &mut sub, &mut inbox).await?;
        }
        if sub.quit || *shutdown.borrow() {
            return Ok(Left::Close);
        }
        if sub.sets.iter().all(|s| s.is_empty()) && sub.out.is_empty() {
            return Ok(Left::Unsubscribed);
        }
        match scanner.next(rbuf) {
            Ok(Some(req)) => {
                sub.command(client, req);
                continue;
            }
            Ok(None) => {}
            Err(e) => {
                write(stream, &reply::error(&format!("ERR {e}"))).await?;
                return Ok(Left::Close);
            }
        }
        // Out of `sub` while it is polled; only commands, handled above, change it.
        let mut invalidations = sub.invalidations.take();
        tokio::select! {
            read = stream.read_buf(rbuf) => if read? == 0 {
                return Ok(Left::Close);
            },
            Some(event) = inbox.recv() => sub.event(event),
            Some(keys) = async {
                match &mut invalidations {
                    Some(rx) => rx.recv().await,
                    None => std::future::pending().await,
                }
            } => sub.ready(super::clients::tracking::invalidation(&keys, sub.resp3)),
            () = std::future::poll_fn(|cx| sub.poll_front(cx)) => {}
            _ = tick.tick() => sub.reconcile(),
            // A RESP3 client may track keys while subscribed: its invalidations go out too.
            push = client.next_push(), if client.tracking.is_some() => match push {
                Some(push) => sub.ready(push),
                None => client.tracking = None,
            },
            _ = shutdown.changed() => {}
        }
        sub.invalidations = invalidations;
    }
}

/// Writes `wbuf` to the client, leaving it empty. While the client does not take it, the
/// messages that arrive meanwhile join it (the node connections are read on) and nothing
/// more of the client is read. Past `client.output_buffer_limit.pubsub` (read live) the
/// subscriber is disconnected, as Redis disconnects one.
async fn write_out(
    stream: &mut Stream,
    wbuf: &mut BytesMut,
    sub: &mut Subscriber<'_>,
    inbox: &mut mpsc::Receiver<Event>,
) -> std::io::Result<()> {
    while !wbuf.is_empty() {
        let Some(n) = write_now(stream, wbuf).await? else {
            break;
        };
        wbuf.advance(n);
    }
    if !wbuf.is_empty() {
        // The subscriber does not take what it is sent.
        let metrics = &sub.proxy.metrics;
        let mut backlog = Backlog::new(metrics, "client.output_buffer_limit.pubsub");
        while !wbuf.is_empty() {
            let look_again = backlog.look_again(sub.proxy.config().output_limit_pubsub);
            tokio::select! {
                biased;
                n = stream.write(wbuf) => match n? {
                    0 => return Err(std::io::ErrorKind::WriteZero.into()),
                    n => {
                        wbuf.advance(n);
                        continue;
                    }
                },
                Some(event) = inbox.recv() => {
                    sub.event(event);
                    sub.drain(wbuf);
                }
                () = tokio::time::sleep_until(look_again.into()) => {}
            }
            let limit = sub.proxy.config().output_limit_pubsub;
            if let Err(over) = backlog.look(wbuf.len(), limit) {
                metrics.subscribers_over_output_limit.inc();
                return Err(std::io::Error::other(over));
            }
        }
    }
    wbuf.clear(); // its room is used again from the start
    if !matches!(stream, Stream::Tcp(_)) {
        stream.flush().await?;
    }
    Ok(())
}

impl Subscriber<'_> {
    fn count(&self, kind: Kind) -> usize {
        match kind {
            Kind::Shard => self.sets[Kind::Shard.index()].len(),
            _ => self.sets[Kind::Channel.index()].len() + self.sets[Kind::Pattern.index()].len(),
        }
    }

    /// One command from the client.
    fn command(&mut self, client: &mut Client, req: Request) {
        let name = req.arg(0).to_ascii_uppercase();
        let kind = match name.as_slice() {
            b"SUBSCRIBE" | b"UNSUBSCRIBE" => Some(Kind::Channel),
            b"PSUBSCRIBE" | b"PUNSUBSCRIBE" => Some(Kind::Pattern),
            b"SSUBSCRIBE" | b"SUNSUBSCRIBE" => Some(Kind::Shard),
            _ => None,
        };
        let names: Vec<Bytes> = (1..req.len()).map(|i| req.arg_bytes(i)).collect();
        match (name.as_slice(), kind) {
            (b"SUBSCRIBE" | b"PSUBSCRIBE" | b"SSUBSCRIBE", Some(kind)) => {
                if names.is_empty() {
                    let name = String::from_utf8_lossy(&name).to_lowercase();
                    self.ready(reply::arity(&name));
                } else {
                    self.subscribe(kind, names);
                }
            }
            (_, Some(kind)) => self.unsubscribe(kind, names),
            (b"PING", _) => {
                let bytes = if client.resp3 {
                    match names.first() {
                        Some(text) => reply::bulk_reply(text),
                        None => Bytes::from_static(b"+PONG\r\n"),
                    }
                } else {
                    let text = names.first().cloned().unwrap_or_default();
                    push(false, &[Item::Text(b"pong"), Item::Bulk(Some(&text))])
                };
                self.ready(bytes);
            }
            (b"QUIT", _) => {
                self.ready(Bytes::from_static(reply::OK));
                self.quit = true;
            }
            (b"RESET", _) => {
                for kind in [Kind::Channel, Kind::Pattern, Kind::Shard] {
                    self.sets[kind.index()].clear();
                }
                self.links.clear();
                self.global = None;
                self.locals.clear();
                self.placed.clear();
                self.redirected(false);
                client.reset(&self.proxy.config());
                self.ready(Bytes::from_static(b"+RESET\r\n"));
            }
            _ if client.resp3 => {
                let (pending, _) = route(self.proxy, client, req);
                self.out.push_back(Out::Reply(pending));
                // HELLO 2 is allowed here: what the proxy sends from now on is RESP2.
                self.resp3 = client.resp3;
            }
            _ => self.ready(reply::error(&format!(
                "ERR Can't execute '{}': only (P|S)SUBSCRIBE / (P|S)UNSUBSCRIBE / PING / QUIT / RESET are allowed in this context",
                String::from_utf8_lossy(&name).to_lowercase()
            ))),
        }
    }

    /// Starts (or stops) taking the invalidations other clients redirect here.
    fn redirected(&mut self, on: bool) {
        if on == self.invalidations.is_some() {
            return;
        }
        if on {
            let (tx, rx) = mpsc::channel(EVENTS * 16);
            self.entry.set_inbox(Some(tx));
            self.invalidations = Some(rx);
        } else {
            self.entry.set_inbox(None);
            self.invalidations = None;
        }
    }

    fn ready(&mut self, bytes: Bytes) {
        self.out.push_back(Out::Ready(bytes));
    }

    fn subscribe(&mut self, kind: Kind, names: Vec<Bytes>) {
        if kind == Kind::Shard {
            let slot = key_slot(&names[0]);
            if names.iter().any(|n| key_slot(n) != slot) {
                self.ready(reply::error(
                    "CROSSSLOT Keys in request don't hash to the same slot",
                ));
                return;
            }
        }
        let now = Instant::now();
        if kind == Kind::Channel && names.iter().any(|n| &n[..] == INVALIDATE) {
            self.redirected(true);
        }
        for name in &names {
            if self.sets[kind.index()].insert(name.clone()) && kind != Kind::Shard {
                self.proxy.subscribers.add(kind == Kind::Pattern, name);
            }
            let count = self.count(kind);
            let bytes = confirmation(self.resp3, kind.subscribe(), Some(name), count);
            self.out.push_back(Out::Confirm {
                kind,
                name: name.clone(),
                bytes,
                links: Vec::new(),
                since: now,
            });
        }
        // Subscriptions already in place are confirmed again by their node; the others are
        // put in place now.
        match kind {
            Kind::Shard => {
                for name in names {
                    if let Some(&id) = self.placed.get(&name) {
                        self.place(id, kind, &[name]);
                    }
                }
            }
            _ => {
                if let Some(id) = self.global {
                    self.place(id, kind, &names);
                }
                let locals: Vec<Bytes> = names.into_iter().filter(|n| local(kind, n)).collect();
                for id in self.locals.clone() {
                    self.place(id, kind, &locals);
                }
            }
        }
        self.reconcile();
    }

    /// Subscribes `names` on link `id`, each as many times as it is listed; each listing
    /// is one more link the oldest of the name's confirmations not yet waiting for `id`
    /// waits for.
    fn place(&mut self, id: u32, kind: Kind, names: &[Bytes]) {
        if names.is_empty() {
            return;
        }
        for name in names {
            let waiting = self.out.iter_mut().find_map(|out| match out {
                Out::Confirm {
                    kind: k,
                    name: n,
                    links,
                    ..
                } if *k == kind && n == name && links.iter().all(|&(l, _)| l != id) => Some(links),
                _ => None,
            });
            if let Some(links) = waiting {
                links.push((id, false));
            }
        }
        let mut args: Vec<&[u8]> = vec![kind.subscribe().as_bytes()];
        args.extend(names.iter().map(|n| &n[..]));
        self.send(id, &args);
    }

    /// What a new link subscribes: the client's names of `kind` that `keep` keeps, each
    /// listed once for every confirmation of it still owed to the client, and once when
    /// none is.
    fn listing(&self, kind: Kind, keep: impl Fn(&Bytes) -> bool) -> Vec<Bytes> {
        let mut out = Vec::new();
        for name in self.sets[kind.index()].iter().filter(|n| keep(n)) {
            let owed = self.owed(kind, name).max(1);
            out.extend(std::iter::repeat_n(name.clone(), owed));
        }
        out
    }

    /// Confirmations of `name` still owed to the client.
    fn owed(&self, kind: Kind, name: &Bytes) -> usize {
        (self.out.iter())
            .filter(|out| matches!(out, Out::Confirm { kind: k, name: n, .. } if *k == kind && n == name))
            .count()
    }

    fn unsubscribe(&mut self, kind: Kind, names: Vec<Bytes>) {
        let names = if names.is_empty() {
            self.sets[kind.index()].iter().cloned().collect()
        } else {
            names
        };
        if names.is_empty() {
            let count = self.count(kind);
            self.ready(confirmation(self.resp3, kind.unsubscribe(), None, count));
        }
        if kind == Kind::Channel && names.iter().any(|n| &n[..] == INVALIDATE) {
            self.redirected(false);
        }
        for name in names {
            if self.sets[kind.index()].remove(&name) && kind != Kind::Shard {
                self.proxy.subscribers.remove(kind == Kind::Pattern, &name);
            }
            let count = self.count(kind);
            self.ready(confirmation(
                self.resp3,
                kind.unsubscribe(),
                Some(&name),
                count,
            ));
            let link = match kind {
                Kind::Shard => self.placed.remove(&name),
                _ => self.global,
            };
            if let Some(id) = link {
                self.send(id, &[kind.unsubscribe().as_bytes(), &name]);
            }
            if kind != Kind::Shard && local(kind, &name) {
                for &id in &self.locals {
                    self.send(id, &[kind.unsubscribe().as_bytes(), &name]);
                }
            }
        }
    }

    /// Sends a command on a link; a link whose task is gone is noticed by its event.
    fn send(&self, id: u32, args: &[&[u8]]) {
        if let Some(link) = self.links.get(&id) {
            let _ = link.commands.send(Request::from_args(args).into_raw());
        }
    }

    /// Opens a link to `addr`, out of the node's allowance of dedicated connections.
    fn open(&mut self, addr: &str, resp3: bool) -> Option<u32> {
        let node = self.proxy.node(addr);
        let permit = node.dedicated_permit()?;
        let id = self.next_link;
        self.next_link += 1;
        let (commands, rx) = mpsc::unbounded_channel();
        let task = LinkTask {
            id,
            addr: addr.to_string(),
            resp3,
            config: self.proxy.config().clone(),
            events: self.events.clone(),
            _permit: permit,
        };
        let metrics = self.proxy.metrics.clone();
        tokio::spawn(async move {
            metrics.backend_dedicated_connections.inc();
            task.run(rx).await;
            metrics.backend_dedicated_connections.dec();
        });
        self.links.insert(
            id,
            Link {
                addr: addr.to_string(),
                commands,
            },
        );
        Some(id)
    }

    /// Puts every subscription where the slot map says it belongs.
    fn reconcile(&mut self) {
        let resp3 = self.resp3;
        let table = self.proxy.table.load_full();
        let globals = self.count(Kind::Channel) > 0;
        if globals && self.global.is_none() {
            let addr = table.any_master(self.pin).map(|n| n.addr.clone());
            if let Some(id) = addr.and_then(|addr| self.open(&addr, resp3)) {
                self.global = Some(id);
                for kind in [Kind::Channel, Kind::Pattern] {
                    let names = self.listing(kind, |_| true);
                    self.place(id, kind, &names);
                }
            }
        }
        self.reconcile_locals(&table);
        let shard: Vec<Bytes> = self.sets[Kind::Shard.index()].iter().cloned().collect();
        for name in shard {
            let Some(owner) = table.owner(key_slot(&name)) else {
                continue;
            };
            let current = self.placed.get(&name).copied();
            if let Some(id) = current {
                if self.links.get(&id).is_some_and(|l| l.addr == owner.addr) {
                    continue;
                }
                self.send(id, &[b"SUNSUBSCRIBE", &name]);
                self.placed.remove(&name);
            }
            let existing = self
                .links
                .iter()
                .find(|(id, l)| l.addr == owner.addr && Some(**id) != self.global)
                .map(|(id, _)| *id);
            let Some(id) = existing.or_else(|| self.open(&owner.addr, resp3)) else {
                continue;
            };
            let times = self.owed(Kind::Shard, &name).max(1);
            self.placed.insert(name.clone(), id);
            self.place(id, Kind::Shard, &vec![name; times]);
        }
    }

    /// Keeps a link to every master but the global link's while a channel or pattern can
    /// name a keyspace notification, and none otherwise.
    fn reconcile_locals(&mut self, table: &super::slot_table::SlotTable) {
        let global = self
            .global
            .and_then(|id| self.links.get(&id))
            .map(|l| l.addr.clone());
        let wanted: Vec<String> = match &global {
            Some(global) if self.wants_locals() => table
                .masters()
                .map(|(_, n)| n.addr.clone())
                .filter(|a| a != global)
                .collect(),
            _ => Vec::new(),
        };
        let stale: Vec<u32> = self
            .locals
            .iter()
            .copied()
            .filter(|id| self.links.get(id).is_none_or(|l| !wanted.contains(&l.addr)))
            .collect();
        for id in stale {
            self.drop_link(id);
        }
        for addr in wanted {
            let linked = self
                .locals
                .iter()
                .any(|id| self.links.get(id).is_some_and(|l| l.addr == addr));
            if linked {
                continue;
            }
            let Some(id) = self.open(&addr, self.resp3) else {
                continue;
            };
            self.locals.push(id);
            for kind in [Kind::Channel, Kind::Pattern] {
                let names = self.listing(kind, |n| local(kind, n));
                self.place(id, kind, &names);
            }
        }
    }

    fn wants_locals(&self) -> bool {
        [Kind::Channel, Kind::Pattern]
            .iter()
            .any(|&k| self.sets[k.index()].iter().any(|n| local(k, n)))
    }

    /// A frame or the end of a link.
    fn event(&mut self, event: Event) {
        match event {
            Event::Frame(id, frame) => self.frame(id, frame),
            Event::Closed(id, why) => {
                debug!(%why, "subscription connection lost");
                self.drop_link(id);
                self.proxy.hint(Hint::Refresh);
                self.reconcile();
            }
        }
    }

    fn drop_link(&mut self, id: u32) {
        self.forget(id, |_| true);
        self.links.remove(&id);
        self.locals.retain(|&l| l != id);
        if self.global == Some(id) {
            self.global = None;
        }
        self.placed.retain(|_, l| *l != id);
    }

    fn frame(&mut self, id: u32, frame: Bytes) {
        if !self.links.contains_key(&id) {
            return; // a link already given up
        }
        if frame.first() == Some(&b'-') {
            if Some(id) == self.global {
                // Refused (ACL, say): the client hears it.
                self.ready(frame);
            } else {
                // Most likely MOVED: the slot map is behind. Subscribe again once it is not.
                self.proxy.hint(Hint::Refresh);
                self.placed.retain(|_, l| *l != id);
                self.forget(id, |confirmed| !confirmed);
            }
            return;
        }
        let Ok(Value::Array(items)) = Value::parse(&frame) else {
            return;
        };
        let text = |i: usize| items.get(i).and_then(|v| v.as_bytes()).cloned();
        let (Some(kind), Some(name)) = (text(0), text(1)) else {
            return;
        };
        let message = matches!(kind.as_ref(), b"message" | b"pmessage");
        if message && self.locals.contains(&id) {
            // Another master: only its keyspace notifications, which the global link's
            // master does not see. Its confirmations (and a shard channel it carries) are
            // taken as any link's, below.
            let forward = match kind.as_ref() {
                b"message" => self.sets[Kind::Channel.index()].contains(&name),
                _ => {
                    self.sets[Kind::Pattern.index()].contains(&name)
                        && text(2).is_some_and(|channel| notification(&channel))
                }
            };
            if forward {
                self.ready(frame);
            }
            return;
        }
        let forward = match kind.as_ref() {
            b"message" => self.sets[Kind::Channel.index()].contains(&name),
            b"pmessage" => self.sets[Kind::Pattern.index()].contains(&name),
            b"smessage" => self.placed.get(&name) == Some(&id),
            b"subscribe" => self.confirmed(id, Kind::Channel, &name),
            b"psubscribe" => self.confirmed(id, Kind::Pattern, &name),
            b"ssubscribe" => self.confirmed(id, Kind::Shard, &name),
            b"sunsubscribe" => {
                // The node gave the channel up (its slot moved): put it back where it lives.
                if self.placed.get(&name) == Some(&id) {
                    self.placed.remove(&name);
                    self.proxy.hint(Hint::Refresh);
                }
                false
            }
            _ => false,
        };
        if forward {
            self.ready(frame);
        }
    }

    /// Link `id` confirmed a subscription: so much of the oldest confirmation of it that
    /// waits for `id` is done. Never forwarded: the client's confirmations are the proxy's.
    fn confirmed(&mut self, id: u32, kind: Kind, name: &Bytes) -> bool {
        for out in self.out.iter_mut() {
            if let Out::Confirm {
                kind: k,
                name: n,
                links,
                ..
            } = out
            {
                let asked = links.iter_mut().find(|(l, done)| *l == id && !*done);
                if let Some((_, done)) = asked.filter(|_| *k == kind && n == name) {
                    *done = true;
                    break;
                }
            }
        }
        false
    }

    /// Confirmations stop waiting for link `id` (gone, or refused what it was asked) where
    /// `which` says of whether it had confirmed; one left waiting for no link waits to be
    /// placed again.
    fn forget(&mut self, id: u32, which: impl Fn(bool) -> bool) {
        for out in self.out.iter_mut() {
            if let Out::Confirm { links, .. } = out {
                links.retain(|&(l, done)| l != id || !which(done));
            }
        }
    }

    /// Moves what is ready at the front into `wbuf`.
    fn drain(&mut self, wbuf: &mut BytesMut) {
        let timeout = self.proxy.config().hold_timeout;
        let mut cx = Context::from_waker(std::task::Waker::noop());
        while let Some(front) = self.out.front_mut() {
            match front {
                Out::Ready(bytes) => wbuf.extend_from_slice(bytes),
                Out::Confirm {
                    bytes,
                    links,
                    since,
                    ..
                } => {
                    let done = !links.is_empty() && links.iter().all(|&(_, done)| done);
                    if !done && since.elapsed() < timeout {
                        break;
                    }
                    wbuf.extend_from_slice(bytes);
                }
                Out::Reply(pending) => {
                    // A request that waits for its turn (a blocking command, WAIT)
                    // starts once every earlier reply is out.
                    pending.launch(self.proxy);
                    match pending.poll(&mut cx) {
                        Poll::Ready(bytes) => wbuf.extend_from_slice(&bytes),
                        Poll::Pending => break,
                    }
                }
            }
            self.out.pop_front();
        }
    }

    /// Ready when the ordinary reply at the front is.
    fn poll_front(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        match self.out.front_mut() {
            Some(Out::Reply(pending)) => pending.poll(cx).map(|bytes| {
                self.out[0] = Out::Ready(bytes);
            }),
            _ => Poll::Pending,
        }
    }
}

/// The task of one link: writes the commands it is given, reports every frame the node
/// sends, and reports when the connection ends.
struct LinkTask {
    id: u32,
    addr: String,
    resp3: bool,
    config: Arc<Config>,
    events: mpsc::Sender<Event>,
    /// Returned to the node's allowance when the task ends.
    _permit: OwnedSemaphorePermit,
}

impl LinkTask {
    async fn run(self, commands: mpsc::UnboundedReceiver<Bytes>) {
        if let Err(why) = self.serve(commands).await {
            let _ = self.events.send(Event::Closed(self.id, why)).await;
        }
    }

    /// Runs until the subscriber drops the link (`Ok`) or the connection fails.
    async fn serve(&self, mut commands: mpsc::UnboundedReceiver<Bytes>) -> Result<(), Broken> {
        let (mut stream, mut skip) = dial(&self.addr, &self.config, self.resp3, b"").await?;
        let mut rbuf = BytesMut::with_capacity(16 * 1024);
        let mut scanner = ReplyScanner::default();
        loop {
            tokio::select! {
                command = commands.recv() => match command {
                    Some(command) => write(&mut stream, &command).await.map_err(Broken::Write)?,
                    None => return Ok(()),
                },
                read = stream.read_buf(&mut rbuf) => {
                    match read {
                        Ok(0) => return Err(Broken::Closed),
                        Ok(_) => {}
                        Err(e) => return Err(Broken::Read(e)),
                    }
                    while let Some(len) = scanner.scan(&rbuf).map_err(Broken::Unreadable)? {
                        let frame = rbuf.split_to(len).freeze();
                        if skip > 0 {
                            skip -= 1;
                            if frame.first() == Some(&b'-') {
                                return Err(Broken::refused(&frame));
                            }
                            continue;
                        }
                        if self.events.send(Event::Frame(self.id, frame)).await.is_err() {
                            return Ok(()); // the subscriber is gone
                        }
                    }
                    if rbuf.capacity() - rbuf.len() < 4096 {
                        rbuf.reserve(16 * 1024);
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn channels_and_patterns_that_can_name_a_keyspace_notification() {
        assert!(local(Kind::Channel, b"__keyspace@0__:foo"));
        assert!(!local(Kind::Channel, b"news"));
        for pattern in [
            &b"*"[..],
            b"__key*",
            b"__keyevent@0__:*",
            b"__k?y*",
            b"__keyspace@*__:user:*",
        ] {
            assert!(
                local(Kind::Pattern, pattern),
                "{}",
                String::from_utf8_lossy(pattern)
            );
        }
        for pattern in [&b"news.*"[..], b"_x*", b"__keys"] {
            assert!(
                !local(Kind::Pattern, pattern),
                "{}",
                String::from_utf8_lossy(pattern)
            );
        }
    }
}
