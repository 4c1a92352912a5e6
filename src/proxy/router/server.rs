//! Commands about the server and the connection that the proxy answers or spreads itself:
//! CONFIG, FUNCTION, CLIENT, WAIT, SLOTGUARD.

use bytes::Bytes;
use tokio::sync::oneshot;

use super::cluster_wide::kill_script;
use super::send::*;
use crate::config::Access;
use crate::metrics::Class;
use crate::protocol::{reply, Request};
use crate::proxy::client::Client;
use crate::proxy::clients;
use crate::proxy::local;
use crate::proxy::merge::Merge;
use crate::proxy::owed::{Pending, Start};
use crate::proxy::wait::Wait;
use crate::proxy::Proxy;
use crate::routing::{MoveOrder, MoveRequest};

/// FUNCTION: every master must have a library, since FCALL runs where its keys are; the
/// proxy keeps them for masters that come later. KILL goes to every master on connections
/// of their own.
pub(super) fn function(proxy: &Proxy, client: &mut Client, req: Request) -> (Pending, Class) {
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

/// WAIT numreplicas timeout: carried out by the proxy (see [`super::wait`]) once every
/// earlier reply is in.
pub(super) fn wait(client: &mut Client, req: &Request) -> (Pending, Class) {
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

/// CLIENT subcommands about the proxy's clients (see [`clients`]) or the whole cluster;
/// the rest concern only the client that asks ([`local::client`]).
pub(super) fn client_command(proxy: &Proxy, client: &mut Client, req: Request) -> (Pending, Class) {
    let local = |bytes: Bytes| (ready(bytes), Class::Local);
    if req.len() < 2 {
        return local(local::client(client, &req));
    }
    match req.arg(1).to_ascii_uppercase().as_slice() {
        b"TRACKING" => {
            match crate::proxy::clients::tracking::command(proxy, &mut client.tracking, &req) {
                Ok(answer) => local(answer),
                // Nothing after it runs before every master tracks.
                Err(rx) => (Pending::turn_for(rx), Class::Local),
            }
        }
        b"TRACKINGINFO" => local(crate::proxy::clients::tracking::info(
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
            None => local(reply::error(crate::proxy::merge::GONE)),
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
pub(super) fn moving(proxy: &Proxy, client: &Client, req: &Request) -> Pending {
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

/// CONFIG SET, RESETSTAT and REWRITE: what every node must hear.
pub(super) fn reconfigures(req: &Request) -> bool {
    [&b"SET"[..], b"RESETSTAT", b"REWRITE"]
        .iter()
        .any(|sub| req.arg(1).eq_ignore_ascii_case(sub))
}

/// Node-wide settings the proxy itself depends on, and why: set through one client, they
/// would change what every other client gets, or cut the proxy off from its cluster.
pub(super) const RELIED_ON: &[(&str, &str)] = &[
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
pub(super) fn sets_normal_class(value: &[u8]) -> bool {
    value
        .split(|b| b.is_ascii_whitespace())
        .any(|word| word.eq_ignore_ascii_case(b"normal"))
}

/// `CONFIG SET` of a setting in [`RELIED_ON`]: the refusal, naming where to change it.
pub(super) fn relied_on(req: &Request) -> Option<Bytes> {
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
