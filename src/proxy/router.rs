//! Routing: what to do with one client request.
//!
//! - answered by the proxy (PING, AUTH, CLIENT, CLUSTER views, ...): [`local`];
//! - one slot: the keys' common slot (multi-key commands across slots get `CROSSSLOT`);
//! - split by slot and merged (MGET, MSET, DEL, UNLINK, EXISTS, TOUCH);
//! - every master, merged (DBSIZE, KEYS, SCAN, FLUSHALL, RANDOMKEY, SCRIPT, INFO);
//! - any master (keyless commands);
//! - refused with a clear error (commands that need a connection of their own).

use bytes::Bytes;
use tokio::sync::oneshot;

use super::client::{Client, Tx};
use super::clients;
use super::diagnostics::Diagnostic;
use super::every_node::Reach;
use super::fan::{self, Split, SplitKind};
use super::job::Job;
use super::local;
use super::merge::{Join, Merge};
use super::owed::{Pending, Start};
use super::scan;
use super::table::{self, Multi, Route};
use super::wait::Wait;
use super::Proxy;
use crate::config::{Access, ReadFrom};
use crate::metrics::Class;
use crate::protocol::{key_slot, reply, Request, SLOTS};
use crate::routing::command::KeyPositions;
use crate::routing::{MoveOrder, MoveRequest};

/// Most commands one transaction may queue.
const MAX_QUEUED: u32 = 100_000;

const EXEC: &[u8] = b"*1\r\n$4\r\nEXEC\r\n";

fn ready(bytes: Bytes) -> Pending {
    Pending::Ready(bytes)
}

/// Upper-cases a command name into a stack buffer.
fn upper(name: &[u8], buf: &mut [u8; 24]) -> usize {
    let n = name.len().min(buf.len());
    for (o, c) in buf.iter_mut().zip(&name[..n]) {
        *o = c.to_ascii_uppercase();
    }
    if name.len() > buf.len() {
        0
    } else {
        n
    }
}

/// Routes one request; also says what class of request it was, for the metrics.
pub fn route(proxy: &Proxy, client: &mut Client, req: Request) -> (Pending, Class) {
    let Some(tracker) = &mut client.tracking else {
        return route_one(proxy, client, req);
    };
    // A `CLIENT CACHING` applies to the next command, or to the next transaction whole.
    let caching = req.arg(0).eq_ignore_ascii_case(b"CLIENT")
        && req.len() > 1
        && req.arg(1).eq_ignore_ascii_case(b"CACHING");
    let queued = client.tx.is_some() && !req.arg(0).eq_ignore_ascii_case(b"EXEC");
    if caching || queued || req.arg(0).eq_ignore_ascii_case(b"MULTI") {
        return route_one(proxy, client, req);
    }
    tracker.next_command();
    let routed = route_one(proxy, client, req);
    if let Some(tracker) = &mut client.tracking {
        tracker.routed();
    }
    routed
}

fn route_one(proxy: &Proxy, client: &mut Client, req: Request) -> (Pending, Class) {
    let mut buf = [0u8; 24];
    let n = upper(req.arg(0), &mut buf);
    let name = &buf[..n];
    let entry = table::lookup(name);
    if !client.authenticated && !entry.is_some_and(|e| e.before_auth) {
        return (ready(local::noauth()), Class::Local);
    }
    if client.access != Access::Admin {
        if let Some(error) = local::forbidden(proxy, client, entry, name, &req) {
            if let Some(tx) = &mut client.tx {
                tx.failed = true; // as Redis does: EXEC then answers EXECABORT
            }
            return (ready(error), Class::Other);
        }
    }
    let multi = entry.map_or(Multi::Queue, |e| e.multi);
    if client.tx.is_some() && multi != Multi::Now {
        return queue(proxy, client, name, multi, req);
    }
    let route = match entry {
        Some(e) => e.route,
        None if name.is_empty() => {
            return (ready(reply::error("ERR unknown command")), Class::Other)
        }
        None => Route::Keyed,
    };
    let local = |bytes: Bytes| (ready(bytes), Class::Local);
    match route {
        Route::Reset => {
            client.reset(&proxy.config());
            local(Bytes::from_static(b"+RESET\r\n"))
        }
        Route::Ping => local(local::ping(&req)),
        Route::Echo => local(local::echo(&req)),
        Route::Quit => {
            client.quit = true;
            local(Bytes::from_static(reply::OK))
        }
        Route::Select => local(local::select(&req)),
        Route::Auth => local(local::auth(proxy, client, &req)),
        Route::Hello => local(local::hello(proxy, client, &req)),
        Route::Client => client_command(proxy, client, req),
        // Connection flags on a node: the proxy routes reads and follows ASK itself, and
        // a shared connection must not carry one client's flag into another's request.
        Route::ConnectionFlag => local(Bytes::from_static(reply::OK)),
        Route::Slotguard => (moving(proxy, client, &req), Class::Local),
        Route::Cluster => match local::cluster(proxy, client, &req) {
            Some(answer) => local(answer),
            // COUNTKEYSINSLOT / GETKEYSINSLOT: asked of the slot's owner.
            None => match (req.len() >= 3).then(|| parse_slot(req.arg(2))).flatten() {
                Some(slot) => (one(proxy, client, req, Some(slot)), Class::Read),
                None => local(reply::error("ERR Invalid or out of range slot")),
            },
        },
        Route::MGet => (
            split(proxy, client, req, 1, SplitKind::MGet),
            Class::MultiKey,
        ),
        Route::MSet => {
            client.wrote(None); // writes to several slots: WAIT will ask every master
            (
                split(proxy, client, req, 2, SplitKind::MSet),
                Class::MultiKey,
            )
        }
        Route::Counted => {
            if matches!(name, b"DEL" | b"UNLINK") {
                client.wrote(None);
            }
            (
                split(proxy, client, req, 1, SplitKind::Sum),
                Class::MultiKey,
            )
        }
        Route::WholeCluster => (whole_cluster(proxy, client, name, req), Class::Cluster),
        Route::PubsubIntrospection if req.len() >= 2 => {
            (pubsub_introspection(proxy, client, req), Class::Cluster)
        }
        Route::Diagnostics if req.len() >= 2 => {
            (diagnostics(proxy, client, name, req), Class::Cluster)
        }
        Route::Publish if req.len() == 3 => {
            // Counted as one node would: every client of this proxy that receives it.
            let local = proxy.subscribers.receivers(req.arg(1));
            let (job, rx) = job(client, req, None);
            proxy.dispatch(job);
            let merge = Merge::Largest { local };
            (
                Pending::Join(Join::new(vec![rx], merge, client.resp3)),
                Class::Other,
            )
        }
        Route::Config if req.len() >= 2 && reconfigures(&req) => {
            if let Some(error) = relied_on(&req) {
                return local(error);
            }
            // Every node hears it, in its turn: nothing the client sent after it runs on
            // the old setting.
            let (tx, rx) = oneshot::channel();
            let start = Start::EveryNode(req, Reach::EveryNode, tx);
            (Pending::turn(start, rx), Class::Other)
        }
        Route::Config if req.len() >= 2 && req.arg(1).eq_ignore_ascii_case(b"GET") => {
            (one(proxy, client, req, None), Class::Other)
        }
        Route::Function if req.len() >= 2 => function(proxy, client, req),
        Route::Command => (one(proxy, client, req, None), Class::Other),
        Route::Multi if client.tx.is_some() => {
            local(reply::error("ERR MULTI calls can not be nested"))
        }
        Route::Multi => {
            client.tx = Some(Tx::new());
            local(Bytes::from_static(reply::OK))
        }
        Route::Exec => match client.tx.take() {
            Some(tx) => (exec(proxy, client, tx), Class::Write),
            None => local(reply::error("ERR EXEC without MULTI")),
        },
        Route::Discard => match client.tx.take() {
            Some(_) => {
                client.unwatch();
                local(Bytes::from_static(reply::OK))
            }
            None => local(reply::error("ERR DISCARD without MULTI")),
        },
        Route::Watch => watch(client, req),
        Route::Unwatch => {
            client.unwatch();
            local(Bytes::from_static(reply::OK))
        }
        Route::Subscribe if req.len() >= 2 => (Pending::Subscribe(Some(req)), Class::Other),
        Route::Subscribe => local(reply::arity(&String::from_utf8_lossy(name).to_lowercase())),
        Route::Unsubscribe => local(local::not_subscribed(client.resp3, &req)),
        Route::Wait => wait(client, &req),
        // Once every earlier reply is written, the session turns to `monitor`.
        Route::Monitor => (Pending::Subscribe(Some(req)), Class::Other),
        Route::Refused(why) => refused(name, why),
        // Without the arguments their routes need, as the node says it.
        Route::PubsubIntrospection
        | Route::Diagnostics
        | Route::Publish
        | Route::Config
        | Route::Function
        | Route::Keyed => keyed(proxy, client, req),
    }
}

/// FUNCTION: every master must have a library, since FCALL runs where its keys are; the
/// proxy keeps them for masters that come later. KILL goes to every master on connections
/// of their own.
fn function(proxy: &Proxy, client: &mut Client, req: Request) -> (Pending, Class) {
    match req.arg(1).to_ascii_uppercase().as_slice() {
        b"KILL" if req.len() == 2 => (kill_script(req), Class::Cluster),
        b"LOAD" => {
            proxy.remember_functions(&req);
            (
                all_masters(proxy, client, &req, Merge::First),
                Class::Cluster,
            )
        }
        b"DELETE" | b"FLUSH" | b"RESTORE" => {
            proxy.remember_functions(&req);
            (
                all_masters(proxy, client, &req, Merge::AllOk),
                Class::Cluster,
            )
        }
        _ => keyed(proxy, client, req),
    }
}

/// A command between MULTI and EXEC: checked as it would be routed, then queued.
fn queue(
    proxy: &Proxy,
    client: &mut Client,
    name: &[u8],
    multi: Multi,
    req: Request,
) -> (Pending, Class) {
    let tx = client
        .tx
        .as_mut()
        .expect("queue() runs inside a transaction");
    let mut fail = |error: Bytes| {
        tx.failed = true;
        (ready(error), Class::Other)
    };
    match multi {
        // As Redis refuses WATCH inside MULTI: the transaction stays as it was.
        Multi::NotInside => {
            return (
                ready(reply::error(&format!(
                    "ERR {} inside MULTI is not allowed",
                    String::from_utf8_lossy(name)
                ))),
                Class::Other,
            )
        }
        Multi::Refuse => return fail(unsupported_error(name, "not inside a transaction")),
        Multi::Queue | Multi::Now => {}
    }
    // As a node refuses it at once, and fails the transaction: an unknown command, a
    // wrong number of arguments, a command a transaction may not hold.
    let commands = proxy.commands();
    match commands.lookup(&req) {
        None if commands.is_complete() => return fail(reply::unknown_command(&req)),
        Some(spec) if !spec.arity_fits(req.len()) => {
            return fail(reply::arity(&spec.name.to_ascii_lowercase()))
        }
        Some(spec) if spec.flags.no_multi => {
            return fail(reply::error("ERR Command not allowed inside a transaction"))
        }
        _ => {}
    }
    drop(commands);
    if matches!(name, b"FLUSHALL" | b"FLUSHDB") {
        tx.flush = Some(req.clone());
    }
    let slot = match place(proxy, &req) {
        Ok(placed) => {
            tx.once |= placed.once;
            tx.writes |= placed.class == Class::Write || placed.once;
            placed.slot
        }
        Err(error) => return fail(error),
    };
    if let Some(s) = slot {
        match tx.slot {
            None => tx.slot = Some(s),
            Some(first) if first != s => {
                return fail(reply::error(&format!(
                    "CROSSSLOT Keys in a transaction must all be in one slot: this command's keys are in slot {s}, the transaction's in slot {first}"
                )))
            }
            Some(_) => {}
        }
    }
    if tx.queued >= MAX_QUEUED {
        return fail(reply::error(
            "ERR slotguard: too many commands in one transaction",
        ));
    }
    tx.body.extend_from_slice(req.raw());
    tx.queued += 1;
    (ready(reply::simple("QUEUED")), Class::Other)
}

/// EXEC: the transaction goes to its slot's owner as one unit (`MULTI`, the commands,
/// `EXEC`); the client gets EXEC's reply. A hold holds it whole. After WATCH it runs on the
/// connection that holds the watch.
///
/// A transaction that flushes (`FLUSHALL`, `FLUSHDB`) flushes its own node inside it, and
/// every other master as it is sent: not at one instant across the cluster (no cluster
/// can), but before any later command of the client's.
fn exec(proxy: &Proxy, client: &mut Client, mut tx: Tx) -> Pending {
    let watched = client.watch;
    if tx.failed {
        client.unwatch();
        return ready(reply::error(
            "EXECABORT Transaction discarded because of previous errors.",
        ));
    }
    let slot = match (watched, tx.slot) {
        (Some(w), Some(s)) if w != s => {
            client.unwatch();
            return ready(reply::error(&format!(
                "CROSSSLOT slotguard: the transaction's keys are in slot {s}, the watched keys in slot {w}; EXEC discarded"
            )));
        }
        (w, s) => s.or(w),
    };
    // Keyless, one that flushes runs on a master the client tracks keys on (a node tells
    // its tracking clients of a flush after EXEC's reply), or where slot 0 lives.
    let slot = slot.or(tx
        .flush
        .as_ref()
        .map(|_| tracked_slot(proxy, client).unwrap_or(0)));
    if let (Some(flush), Some(slot)) = (tx.flush.take(), slot) {
        flush_elsewhere(proxy, client, flush, slot);
    }
    if slot.is_some() {
        client.wrote(slot);
    }
    let (mut job, rx) = job_raw(client, Bytes::from_static(EXEC), slot);
    job.once = tx.once;
    job.write = tx.writes;
    let extra = job.extra();
    extra.lead = Some(tx.body.freeze());
    extra.lead_replies = tx.queued + 1;
    if watched.is_some() {
        client.watch = None;
        let extra = job.extra();
        extra.watch = true;
        extra.lease = Some(client.lease());
    }
    Pending::turn(Start::Job(job), rx)
}

/// A slot of a master the client has a tracking connection to.
fn tracked_slot(proxy: &Proxy, client: &Client) -> Option<u16> {
    let nodes = client.tracking.as_ref()?.lease.nodes();
    let table = proxy.table.load();
    let mut masters = table.masters();
    masters
        .find(|(_, node)| nodes.contains(&node.addr))
        .map(|(slot, _)| slot)
}

/// Sends a transaction's `FLUSHALL` or `FLUSHDB` to every master but the one that serves
/// `slot` (where the transaction runs), on shared connections (a tracking client's own
/// would hear the flush before EXEC's reply). The client does not wait for them.
fn flush_elsewhere(proxy: &Proxy, client: &Client, flush: Request, slot: u16) {
    let table = proxy.table.load();
    let owner = table.owner(slot).map(|n| n.addr.clone());
    let replies: Vec<_> = table
        .masters()
        .filter(|(_, node)| Some(&node.addr) != owner.as_ref())
        .map(|(slot, _)| {
            let raw = flush.raw().clone();
            let (job, rx) = Job::new(raw, Some(slot), client.id, client.resp3);
            proxy.dispatch(job);
            rx
        })
        .collect();
    tokio::spawn(async move {
        for rx in replies {
            let _ = rx.await;
        }
    });
}

/// WAIT numreplicas timeout: carried out by the proxy (see [`super::wait`]) once every
/// earlier reply is in.
fn wait(client: &mut Client, req: &Request) -> (Pending, Class) {
    if req.len() != 3 {
        return (ready(reply::arity("wait")), Class::Other);
    }
    let (Some(replicas), Some(ms)) = (
        crate::protocol::request::parse_i64(req.arg(1)),
        crate::protocol::request::parse_i64(req.arg(2)),
    ) else {
        return (
            ready(reply::error("ERR value is not an integer or out of range")),
            Class::Other,
        );
    };
    if ms < 0 {
        return (ready(reply::error("ERR timeout is negative")), Class::Other);
    }
    let (tx, rx) = oneshot::channel();
    let wait = Wait {
        slots: std::mem::take(&mut client.wrote),
        replicas,
        timeout: (ms > 0).then(|| std::time::Duration::from_millis(ms as u64)),
        reply: tx,
    };
    (Pending::turn(Start::Wait(wait), rx), Class::Other)
}

/// WATCH: sent on the client's own connection to the owner of the keys' slot; the
/// transaction's EXEC will run there.
fn watch(client: &mut Client, req: Request) -> (Pending, Class) {
    if req.len() < 2 {
        return (ready(reply::arity("watch")), Class::Other);
    }
    // Every argument is a key.
    let slot = key_slot(req.arg(1));
    if let Some(other) = req.args().skip(2).find(|k| key_slot(k) != slot) {
        return (
            ready(reply::error(&format!(
                "CROSSSLOT Keys in request don't hash to the same slot (key '{}' is in slot {slot}, key '{}' in slot {})",
                String::from_utf8_lossy(req.arg(1)),
                String::from_utf8_lossy(other),
                key_slot(other)
            ))),
            Class::Other,
        );
    }
    if let Some(first) = client.watch.filter(|&w| w != slot) {
        return (
            ready(reply::error(&format!(
                "CROSSSLOT slotguard: watched keys must all be in one slot: these are in slot {slot}, the ones watched already in slot {first}"
            ))),
            Class::Other,
        );
    }
    client.watch = Some(slot);
    let (mut job, rx) = job(client, req, Some(slot));
    let extra = job.extra();
    extra.watch = true;
    extra.lease = Some(client.lease());
    (Pending::turn(Start::Job(job), rx), Class::Read)
}

/// Commands that run on every master.
fn whole_cluster(proxy: &Proxy, client: &Client, name: &[u8], req: Request) -> Pending {
    match name {
        b"DBSIZE" => all_masters(proxy, client, &req, Merge::SumInts),
        b"KEYS" => all_masters(proxy, client, &req, Merge::Concat),
        b"FLUSHALL" | b"FLUSHDB" => all_masters(proxy, client, &req, Merge::AllOk),
        b"RANDOMKEY" => random_key(proxy, client),
        b"SCAN" => {
            let asker = scan::Asker {
                id: client.id,
                resp3: client.resp3,
                carry: client.tracking.as_ref().map(|t| t.carry()),
            };
            scan::scan(proxy, asker, req)
        }
        b"SCRIPT" => script(proxy, client, &req),
        _ => {
            let own = local::info_sections(proxy, client);
            let wanted = super::info::Wanted::from_request(&req);
            all_masters(proxy, client, &req, Merge::Info { own, wanted })
        }
    }
}

/// PUBSUB CHANNELS|NUMSUB|NUMPAT|SHARDCHANNELS|SHARDNUMSUB: a node knows only its own
/// subscribers, and the proxy's are spread over the masters, so every master is asked.
fn pubsub_introspection(proxy: &Proxy, client: &Client, req: Request) -> Pending {
    let merge = match req.arg(1).to_ascii_uppercase().as_slice() {
        b"CHANNELS" | b"SHARDCHANNELS" => Merge::Union,
        b"NUMSUB" | b"SHARDNUMSUB" => Merge::SumPairs,
        // Unique patterns: a pattern subscribed through two masters is one.
        b"NUMPAT" => Merge::Largest {
            local: proxy.subscribers.patterns(),
        },
        _ => return one(proxy, client, req, None),
    };
    all_masters(proxy, client, &req, merge)
}

/// CLIENT subcommands about the proxy's clients (see [`clients`]) or the whole cluster;
/// the rest concern only the client that asks ([`local::client`]).
fn client_command(proxy: &Proxy, client: &mut Client, req: Request) -> (Pending, Class) {
    let local = |bytes: Bytes| (ready(bytes), Class::Local);
    if req.len() < 2 {
        return local(local::client(client, &req));
    }
    match req.arg(1).to_ascii_uppercase().as_slice() {
        b"TRACKING" => match super::tracking::command(proxy, &mut client.tracking, &req) {
            Ok(answer) => local(answer),
            // Nothing after it runs before every master tracks.
            Err(rx) => (Pending::turn_for(rx), Class::Local),
        },
        b"TRACKINGINFO" => local(super::tracking::info(
            client.tracking.as_ref(),
            client.resp3,
        )),
        b"LIST" => local(clients::list(proxy, &client.itself(), &req)),
        b"INFO" if req.len() == 2 => local(clients::info(proxy, &client.itself(), &req)),
        b"KILL" => {
            let killed = clients::kill(proxy, &client.itself(), &req);
            // Killed by its own hand: closed once this reply is written, as on a node.
            client.quit |= killed.me;
            local(killed.reply)
        }
        b"UNBLOCK" => match proxy.me.upgrade().map(|p| clients::unblock(&p, &req)) {
            Some(Ok(rx)) => (Pending::Wait(rx), Class::Other),
            Some(Err(error)) => local(error),
            None => local(reply::error(super::merge::GONE)),
        },
        // Every master stops serving clients for a while: so do the proxy's.
        b"PAUSE" | b"UNPAUSE" => (
            all_masters(proxy, client, &req, Merge::AllOk),
            Class::Cluster,
        ),
        _ => local(local::client(client, &req)),
    }
}

/// `SLOTGUARD MIGRATE <slots> <node>`, `REBALANCE [NODE=N ...]`, `DRAIN <node>`: slots
/// moved by the control plane (`cluster::mover`), answered with the plan;
/// `MIGRATIONS`: the last move's progress; `CANCEL`: stops it at its next step. Admin
/// users only.
fn moving(proxy: &Proxy, client: &Client, req: &Request) -> Pending {
    let sub = req.arg(1).to_ascii_uppercase();
    if client.access != Access::Admin {
        return ready(reply::error(
            "NOPERM slotguard: moving slots is for admin users",
        ));
    }
    let text = |i: usize| String::from_utf8_lossy(req.arg(i)).into_owned();
    let order = match (sub.as_slice(), req.len()) {
        (b"MIGRATE", 4) => MoveOrder::Migrate {
            slots: text(2),
            to: text(3),
        },
        (b"REBALANCE", _) => MoveOrder::Rebalance {
            weights: (2..req.len()).map(text).collect(),
        },
        (b"DRAIN", 3) => MoveOrder::Drain { node: text(2) },
        (b"MIGRATIONS", 2) => {
            let now = proxy.routing.moves_progress.load();
            let lines = format!(
                "state:{}\nslots:{}/{}\nkeys:{}\nkeys_per_sec:{:.0}\nseconds:{:.1}\nmessage:{}\nplan:\n{}",
                now.state,
                now.slots_done,
                now.slots_total,
                now.keys_moved,
                now.keys_per_sec,
                now.seconds,
                now.message,
                now.plan
            );
            return ready(reply::bulk_reply(lines.as_bytes()));
        }
        (b"CANCEL", 2) => {
            let running = proxy.routing.moves_progress.load().state == "running";
            proxy
                .routing
                .moves_stop
                .store(running, std::sync::atomic::Ordering::Relaxed);
            return ready(match running {
                true => Bytes::from_static(reply::OK),
                false => reply::error("ERR slotguard: no move of slots is running"),
            });
        }
        _ => {
            return ready(reply::error(
                "ERR slotguard: SLOTGUARD MIGRATE <slots> <node> | REBALANCE [<node>=<weight> ...] | DRAIN <node> | MIGRATIONS | CANCEL",
            ))
        }
    };
    let (tx, rx) = oneshot::channel();
    proxy.routing.request_move(MoveRequest { order, reply: tx });
    Pending::Wait(rx)
}

/// LATENCY and SLOWLOG: the masters' events, histograms and slow commands, merged (see
/// [`super::diagnostics`]); HELP and anything unknown from one master.
fn diagnostics(proxy: &Proxy, client: &Client, name: &[u8], req: Request) -> Pending {
    let sub = req.arg(1).to_ascii_uppercase();
    let merge = match (name, sub.as_slice()) {
        (b"LATENCY", b"LATEST") => Merge::Diagnostic(Diagnostic::Latest),
        (b"LATENCY", b"HISTORY") => Merge::Diagnostic(Diagnostic::History),
        (b"LATENCY", b"HISTOGRAM") => Merge::Diagnostic(Diagnostic::Histogram),
        (b"LATENCY", b"DOCTOR" | b"GRAPH") => {
            let table = proxy.table.load();
            let nodes = table.masters().map(|(_, n)| n.addr.clone()).collect();
            Merge::Diagnostic(Diagnostic::Texts { nodes })
        }
        (b"LATENCY", b"RESET") | (b"SLOWLOG", b"LEN") => Merge::SumInts,
        (b"SLOWLOG", b"RESET") => Merge::AllOk,
        (b"SLOWLOG", b"GET") => {
            // Each master gives its `count` newest; the newest `count` of them all are
            // kept. A count the nodes refuse comes back as their error.
            let count = match req.len() {
                2 => Some(10),
                _ => crate::protocol::request::parse_i64(req.arg(2))
                    .and_then(|n| usize::try_from(n).ok()),
            };
            Merge::Diagnostic(Diagnostic::Slowlog { count })
        }
        _ => return one(proxy, client, req, None),
    };
    all_masters(proxy, client, &req, merge)
}

/// SCRIPT KILL, FUNCTION KILL: to every master, on connections of their own (the shared
/// ones to the busy master wait behind the script).
fn kill_script(req: Request) -> Pending {
    let (tx, rx) = oneshot::channel();
    Pending::turn(Start::EveryNode(req, Reach::AnyMaster, tx), rx)
}

/// CONFIG SET, RESETSTAT and REWRITE: what every node must hear.
fn reconfigures(req: &Request) -> bool {
    [&b"SET"[..], b"RESETSTAT", b"REWRITE"]
        .iter()
        .any(|sub| req.arg(1).eq_ignore_ascii_case(sub))
}

/// Node-wide settings the proxy itself depends on, and why: set through one client, they
/// would change what every other client gets, or cut the proxy off from its cluster.
const RELIED_ON: &[(&str, &str)] = &[
    ("requirepass", "the proxy's own connections to the nodes authenticate with it ([backend] password); change it on each node and in slotguard's configuration"),
    ("masterauth", "the nodes' replication depends on it; change it on each node"),
    ("masteruser", "the nodes' replication depends on it; change it on each node"),
    ("cluster-", "the cluster's settings are the operator's; change them on each node"),
    ("timeout", "a node would close the proxy's shared connections while idle; client.idle_timeout is the proxy's"),
    ("maxclients", "the proxy's own connections count against it; client.max_clients is the proxy's"),
    ("protected-mode", "the proxy's connections to the nodes depend on it; change it on each node"),
    ("client-output-buffer-limit", "the proxy's shared connections are the nodes' normal clients and carry every client's replies; client.output_buffer_limit.normal is the proxy's (the replica and pubsub classes pass to the nodes)"),
];

/// `CONFIG SET client-output-buffer-limit` value `value` sets the normal class, which on a
/// node governs the proxy's shared connections. The replica class (replication) and the
/// pubsub class (each subscriber's own connections) reach the nodes as they are.
fn sets_normal_class(value: &[u8]) -> bool {
    value
        .split(|b| b.is_ascii_whitespace())
        .any(|word| word.eq_ignore_ascii_case(b"normal"))
}

/// `CONFIG SET` of a setting in [`RELIED_ON`]: the refusal, naming where to change it.
fn relied_on(req: &Request) -> Option<Bytes> {
    if !req.arg(1).eq_ignore_ascii_case(b"SET") {
        return None;
    }
    (2..req.len()).step_by(2).find_map(|i| {
        let name = String::from_utf8_lossy(req.arg(i)).to_ascii_lowercase();
        if name == "client-output-buffer-limit" && !sets_normal_class(req.arg(i + 1)) {
            return None;
        }
        let (_, why) = RELIED_ON.iter().find(|(setting, _)| {
            name == *setting || (setting.ends_with('-') && name.starts_with(setting))
        })?;
        Some(reply::error(&format!(
            "ERR slotguard: CONFIG SET {name} is refused through the proxy: {why}"
        )))
    })
}

fn refused(name: &[u8], why: &str) -> (Pending, Class) {
    (unsupported(name, why), Class::Other)
}

fn parse_slot(arg: &[u8]) -> Option<u16> {
    let slot: u16 = std::str::from_utf8(arg).ok()?.parse().ok()?;
    ((slot as usize) < SLOTS).then_some(slot)
}

fn unsupported(name: &[u8], why: &str) -> Pending {
    ready(unsupported_error(name, why))
}

fn unsupported_error(name: &[u8], why: &str) -> Bytes {
    reply::error(&format!(
        "ERR slotguard: '{}' is not supported: {why}",
        String::from_utf8_lossy(name).to_lowercase()
    ))
}

/// Any other command: by its keys' slot, or to any master when it has none. A blocking
/// command runs on the client's own connection.
fn keyed(proxy: &Proxy, client: &mut Client, req: Request) -> (Pending, Class) {
    let placed = match place(proxy, &req) {
        Ok(placed) => placed,
        Err(error) => return (ready(error), Class::Other),
    };
    let once = match (placed.once, placed.slot) {
        (true, Some(slot)) if !placed.blocking => proxy.run_once(&req, slot),
        _ => None,
    };
    let (mut job, rx) = job(client, req, placed.slot);
    job.write = placed.class == Class::Write || placed.once;
    match once {
        // Sent again as often as need be, it runs once.
        Some(script) => job.raw = script,
        None => job.once = placed.once,
    }
    // A blocking command, or a request so large that on a shared connection other
    // clients' requests would wait while it is written, runs on the client's own
    // connection, in its turn.
    if placed.blocking || job.raw.len() > LARGE_REQUEST {
        if let (false, Some(slot), Class::Write) = (placed.blocking, placed.slot, placed.class) {
            client.wrote(Some(slot));
        }
        job.extra().lease = Some(client.lease());
        let start = match placed.blocking {
            true => Start::Block(job),
            false => Start::Job(job),
        };
        return (Pending::turn(start, rx), placed.class);
    }
    match (placed.slot, placed.class) {
        (Some(_), Class::Read) if client.read_from != ReadFrom::Master => {
            job.read_from = client.read_from;
        }
        (Some(slot), Class::Write) => client.wrote(Some(slot)),
        _ => {}
    }
    proxy.dispatch(job);
    (Pending::Wait(rx), placed.class)
}

/// Requests larger than this travel on the client's own connection (see [`keyed`]).
const LARGE_REQUEST: usize = 1024 * 1024;

/// Where a command goes.
struct Placed {
    /// The slot of its keys; `None`: keyless.
    slot: Option<u16>,
    class: Class,
    /// It may block: it needs a connection of its own.
    blocking: bool,
    /// It must not run twice (see [`Job::once`]).
    once: bool,
}

/// Where a command goes, or the error to answer instead (refused, or keys in more than one
/// slot).
fn place(proxy: &Proxy, req: &Request) -> Result<Placed, Bytes> {
    let commands = proxy.commands();
    let Some(spec) = commands.lookup(req) else {
        // Unknown here, maybe known to the server: it will answer for itself.
        // Nothing is known of what it does: it is not sent twice.
        return Ok(Placed {
            slot: None,
            class: Class::Other,
            blocking: false,
            once: true,
        });
    };
    let flags = spec.flags;
    let class = if flags.write {
        Class::Write
    } else if flags.readonly {
        Class::Read
    } else {
        Class::Other
    };
    let refuse = |why: &str| Err(unsupported_error(spec.name.as_bytes(), why));
    if spec.name == "DEBUG" {
        return debug(req);
    }
    // Flagged admin, but they only look: answered by a master (PFDEBUG by its key's).
    if flags.admin && !matches!(spec.name.as_str(), "PFSELFTEST" | "PFDEBUG") {
        return refuse("admin commands are not forwarded; run them on the nodes");
    }
    let blocking = flags.blocking && !is_xread_without_block(&spec.name, req);
    if flags.pubsub
        && !matches!(spec.name.as_str(), "PUBLISH" | "SPUBLISH" | "PUBSUB")
        && !spec.name.starts_with("PUBSUB|")
    {
        return refuse("pub/sub subscriptions are not supported through slotguard yet");
    }
    if matches!(spec.name.as_str(), "EVAL" | "EVAL_RO") && req.len() > 1 {
        proxy.remember_script(&req.arg_bytes(1));
    }
    let mut keys = KeyPositions::new();
    spec.key_positions(req, &mut keys);
    let mut slot = None;
    for &pos in &keys {
        let s = key_slot(req.arg(pos));
        match slot {
            None => slot = Some((s, pos)),
            Some((first, first_pos)) if first != s => {
                return Err(reply::error(&format!(
                    "CROSSSLOT Keys in request don't hash to the same slot (key '{}' is in slot {first}, key '{}' in slot {s})",
                    String::from_utf8_lossy(req.arg(first_pos)),
                    String::from_utf8_lossy(req.arg(pos)),
                )))
            }
            Some(_) => {}
        }
    }
    Ok(Placed {
        slot: slot.map(|(s, _)| s),
        class,
        blocking,
        once: spec.runs_once(req),
    })
}

/// DEBUG subcommands that look at one key (or a few of one slot): its master answers.
const DEBUG_KEYED: &[&str] = &["OBJECT", "DIGEST-VALUE", "SDSLEN", "LISTPACK", "ZIPLIST"];
/// DEBUG subcommands that only look, log or wait: any master answers.
const DEBUG_KEYLESS: &[&str] = &["HELP", "SLEEP", "LOG", "STRINGMATCH-LEN", "JMAP"];

/// Where a DEBUG goes: to the master of its key, or to any master, for what only looks or
/// waits. What can crash, restart or rewrite a node, or change how it works for every
/// client (SEGFAULT, RELOAD, SET-ACTIVE-EXPIRE, ...), stays refused: run it on the node.
fn debug(req: &Request) -> Result<Placed, Bytes> {
    let sub = String::from_utf8_lossy(req.arg(1)).to_ascii_uppercase();
    let placed = |slot| Placed {
        slot,
        class: Class::Other,
        blocking: false,
        once: false,
    };
    if DEBUG_KEYLESS.contains(&sub.as_str()) {
        return Ok(placed(None));
    }
    if !DEBUG_KEYED.contains(&sub.as_str()) {
        let name = format!("debug {}", sub.to_lowercase());
        let why = "it can crash, restart or rewrite a node, or change it for every client; run it on the node";
        return Err(unsupported_error(name.trim_end().as_bytes(), why));
    }
    if req.len() < 3 {
        return Err(reply::error(&format!(
            "ERR wrong number of arguments for 'debug|{}' command",
            sub.to_lowercase()
        )));
    }
    let slot = key_slot(req.arg(2));
    if (3..req.len()).any(|i| key_slot(req.arg(i)) != slot) {
        return Err(reply::error(
            "CROSSSLOT Keys in request don't hash to the same slot",
        ));
    }
    Ok(placed(Some(slot)))
}

/// XREAD and XREADGROUP are flagged blocking, but only block with a BLOCK option.
fn is_xread_without_block(name: &str, req: &Request) -> bool {
    matches!(name, "XREAD" | "XREADGROUP") && !req.args().any(|a| a.eq_ignore_ascii_case(b"BLOCK"))
}

fn job(client: &Client, req: Request, slot: Option<u16>) -> (Job, oneshot::Receiver<Bytes>) {
    job_raw(client, req.into_raw(), slot)
}

/// The client's job for `raw`; a tracking client's takes its tracking connections.
fn job_raw(client: &Client, raw: Bytes, slot: Option<u16>) -> (Job, oneshot::Receiver<Bytes>) {
    let (mut job, rx) = Job::new(raw, slot, client.id, client.resp3);
    if let Some(tracker) = &client.tracking {
        tracker.carry().apply(&mut job);
    }
    (job, rx)
}

/// Sends a request to one slot's owner (or any master for `None`).
fn one(proxy: &Proxy, client: &Client, req: Request, slot: Option<u16>) -> Pending {
    let (job, rx) = job(client, req, slot);
    proxy.dispatch(job);
    Pending::Wait(rx)
}

/// A multi-key command split by slot (see [`fan`]). One slot: sent as it is.
fn split(proxy: &Proxy, client: &Client, req: Request, stride: usize, kind: SplitKind) -> Pending {
    if req.len() < 2 || !(req.len() - 1).is_multiple_of(stride) {
        return ready(reply::arity(
            &String::from_utf8_lossy(req.arg(0)).to_lowercase(),
        ));
    }
    let first = key_slot(req.arg(1));
    let groups_needed = (1..req.len())
        .step_by(stride)
        .any(|i| key_slot(req.arg(i)) != first);
    if !groups_needed {
        return one(proxy, client, req, Some(first));
    }
    let carry = client.tracking.as_ref().map(|t| t.carry());
    let split = Split::new(req, stride, kind, client.id, client.resp3, carry);
    // So many parts that sent at once they would keep other clients waiting: a window
    // at a time, in the client's turn.
    if split.parts() > fan::WINDOW {
        let (reply, rx) = oneshot::channel();
        return Pending::turn(Start::Fan(split, reply), rx);
    }
    let parts = (0..split.parts())
        .map(|g| {
            let (job, rx) = split.part(g);
            proxy.dispatch(job);
            rx
        })
        .collect();
    Pending::Join(Join::new(parts, split.merge(), client.resp3))
}

/// Sends the same request to every master; each part follows its master's lowest slot,
/// so a failover in between re-routes it to the promoted replica.
fn all_masters(proxy: &Proxy, client: &Client, req: &Request, merge: Merge) -> Pending {
    let table = proxy.table.load();
    let parts: Vec<_> = table
        .masters()
        .map(|(slot, _)| {
            let (job, rx) = job(client, req.clone(), Some(slot));
            proxy.dispatch(job);
            rx
        })
        .collect();
    if parts.is_empty() {
        return ready(reply::error(
            "CLUSTERDOWN slotguard: no master is known yet (is any seed reachable?)",
        ));
    }
    Pending::Join(Join::new(parts, merge, client.resp3))
}

/// RANDOMKEY: every master is asked for its key count and a random key, in that order on
/// one connection, and one master's key is chosen in proportion to its count, so every
/// key is as likely as on one node.
fn random_key(proxy: &Proxy, client: &Client) -> Pending {
    let table = proxy.table.load();
    let mut parts = Vec::new();
    for (slot, _) in table.masters() {
        for args in [["DBSIZE"], ["RANDOMKEY"]] {
            let (job, rx) = job(client, Request::from_args(&args), Some(slot));
            proxy.dispatch(job);
            parts.push(rx);
        }
    }
    if parts.is_empty() {
        return ready(reply::error(
            "CLUSTERDOWN slotguard: no master is known yet (is any seed reachable?)",
        ));
    }
    Pending::Join(Join::new(parts, Merge::RandomKey, client.resp3))
}

fn script(proxy: &Proxy, client: &Client, req: &Request) -> Pending {
    if req.len() < 2 {
        return ready(reply::arity("script"));
    }
    let sub = req.arg(1).to_ascii_uppercase();
    match sub.as_slice() {
        b"LOAD" => {
            if req.len() > 2 {
                proxy.remember_script(&req.arg_bytes(2));
            }
            all_masters(proxy, client, req, Merge::First)
        }
        b"FLUSH" => {
            // Gone for the client too: an EVALSHA after it gets NOSCRIPT, as from a node.
            proxy.forget_scripts();
            all_masters(proxy, client, req, Merge::AllOk)
        }
        b"EXISTS" => all_masters(proxy, client, req, Merge::MaxEach),
        b"KILL" => kill_script(req.clone()),
        _ => unsupported(
            b"script",
            "only SCRIPT LOAD, FLUSH, EXISTS and KILL go through the proxy",
        ),
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::config::Config;
    use crate::routing::Routing;

    /// What kind of reply a request is owed.
    #[derive(Debug, Clone, PartialEq, Eq)]
    enum Kind {
        /// Answered by the proxy, with this first line.
        Local(String),
        /// From one node.
        One,
        /// Joined from several.
        Joined,
        /// On the client's own connection, after every earlier reply.
        Turn,
        Subscribe,
    }

    fn proxy() -> Arc<Proxy> {
        let (routing, _hints) = Routing::new(Config::default());
        Proxy::new(routing)
    }

    fn client() -> Client {
        let addr = "127.0.0.1:1".parse().unwrap();
        Client::new(1, addr, addr, &Config::default())
    }

    fn routed(proxy: &Proxy, client: &mut Client, args: &[&str]) -> (Kind, Class) {
        let (pending, class) = route(proxy, client, Request::from_args(args));
        let kind = match pending {
            Pending::Ready(bytes) => {
                let text = String::from_utf8_lossy(&bytes);
                Kind::Local(text.lines().next().unwrap_or_default().to_string())
            }
            Pending::Wait(_) => Kind::One,
            Pending::Join(_) => Kind::Joined,
            Pending::Turn(..) => Kind::Turn,
            Pending::Subscribe(_) => Kind::Subscribe,
        };
        (kind, class)
    }

    #[test]
    fn requests_are_classified_by_where_they_go() {
        let proxy = proxy();
        let mut c = client();
        let local = |text: &str| Kind::Local(text.to_string());
        let cases: &[(&[&str], Kind, Class)] = &[
            (&["PING"], local("+PONG"), Class::Local),
            (&["get", "k"], Kind::One, Class::Read),
            (&["SET", "k", "v"], Kind::One, Class::Write),
            // Keys of one slot stay one request; of several, they are split and joined.
            (&["MGET", "{t}a", "{t}b"], Kind::One, Class::MultiKey),
            (&["MGET", "a", "b"], Kind::Joined, Class::MultiKey),
            (&["MSET", "a", "1", "b", "2"], Kind::Joined, Class::MultiKey),
            (&["DEL", "a", "b"], Kind::Joined, Class::MultiKey),
            (&["BLPOP", "l", "0"], Kind::Turn, Class::Write),
            (&["XREAD", "STREAMS", "s", "0"], Kind::One, Class::Read),
            (&["SUBSCRIBE", "ch"], Kind::Subscribe, Class::Other),
            (&["WAIT", "1", "0"], Kind::Turn, Class::Other),
            (&["WATCH", "k"], Kind::Turn, Class::Read),
            (
                &["SUNION", "a", "b"],
                local("-CROSSSLOT Keys in request don't hash to the same slot (key 'a' is in slot 15495, key 'b' in slot 3300)"),
                Class::Other,
            ),
            (
                &["SHUTDOWN"],
                local("-ERR slotguard: 'shutdown' is not supported: admin commands are not forwarded; run them on the nodes"),
                Class::Other,
            ),
            (&["PFSELFTEST"], Kind::One, Class::Other),
            (&["MONITOR"], Kind::Subscribe, Class::Other),
            // No master known yet: a command for every master says so.
            (
                &["DBSIZE"],
                local("-CLUSTERDOWN slotguard: no master is known yet (is any seed reachable?)"),
                Class::Cluster,
            ),
        ];
        for (args, kind, class) in cases {
            assert_eq!(
                routed(&proxy, &mut c, args),
                (kind.clone(), *class),
                "{args:?}"
            );
        }
    }

    #[test]
    fn a_transaction_queues_in_the_session_and_refuses_a_second_slot() {
        let proxy = proxy();
        let mut c = client();
        let ok = Kind::Local("+OK".into());
        let queued = Kind::Local("+QUEUED".into());
        assert_eq!(routed(&proxy, &mut c, &["MULTI"]).0, ok);
        assert_eq!(routed(&proxy, &mut c, &["SET", "{t}a", "1"]).0, queued);
        assert_eq!(routed(&proxy, &mut c, &["INCR", "{t}b"]).0, queued);
        let (Kind::Local(error), _) = routed(&proxy, &mut c, &["SET", "other", "1"]) else {
            panic!("refused at once");
        };
        assert!(error.starts_with("-CROSSSLOT Keys in a transaction must all be in one slot"));
        let (Kind::Local(abort), _) = routed(&proxy, &mut c, &["EXEC"]) else {
            panic!("EXEC after a refused command answers at once");
        };
        assert_eq!(
            abort,
            "-EXECABORT Transaction discarded because of previous errors."
        );
        assert!(c.tx.is_none());
    }

    #[test]
    fn an_unauthenticated_client_may_only_authenticate() {
        let proxy = proxy();
        let mut c = client();
        c.authenticated = false;
        let (kind, _) = routed(&proxy, &mut c, &["GET", "k"]);
        assert_eq!(kind, Kind::Local("-NOAUTH Authentication required.".into()));
        let (kind, _) = routed(&proxy, &mut c, &["QUIT"]);
        assert_eq!(kind, Kind::Local("+OK".into()));
    }
}
