//! What every master answers, merged: DBSIZE, KEYS, FLUSHALL, RANDOMKEY, SCAN, SCRIPT,
//! INFO, PUBSUB's counts, LATENCY and SLOWLOG.

use tokio::sync::oneshot;

use super::send::*;
use crate::protocol::{reply, Request};
use crate::proxy::client::Client;
use crate::proxy::diagnostics::Diagnostic;
use crate::proxy::every_node::Reach;
use crate::proxy::local;
use crate::proxy::merge::{Join, Merge};
use crate::proxy::owed::{Pending, Start};
use crate::proxy::scan;
use crate::proxy::Proxy;

/// Commands that run on every master.
pub(super) fn whole_cluster(proxy: &Proxy, client: &Client, name: &[u8], req: Request) -> Pending {
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
            let wanted = crate::proxy::info::Wanted::from_request(&req);
            all_masters(proxy, client, &req, Merge::Info { own, wanted })
        }
    }
}

/// PUBSUB CHANNELS|NUMSUB|NUMPAT|SHARDCHANNELS|SHARDNUMSUB: a node knows only its own
/// subscribers, and the proxy's are spread over the masters, so every master is asked.
pub(super) fn pubsub_introspection(proxy: &Proxy, client: &Client, req: Request) -> Pending {
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

/// LATENCY and SLOWLOG: the masters' events, histograms and slow commands, merged (see
/// [`super::diagnostics`]); HELP and anything unknown from one master.
pub(super) fn diagnostics(proxy: &Proxy, client: &Client, name: &[u8], req: Request) -> Pending {
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
pub(super) fn kill_script(req: Request) -> Pending {
    let (tx, rx) = oneshot::channel();
    Pending::turn(Start::EveryNode(req, Reach::AnyMaster, tx), rx)
}

/// RANDOMKEY: every master is asked for its key count and a random key, in that order on
/// one connection, and one master's key is chosen in proportion to its count, so every
/// key is as likely as on one node.
pub(super) fn random_key(proxy: &Proxy, client: &Client) -> Pending {
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

pub(super) fn script(proxy: &Proxy, client: &Client, req: &Request) -> Pending {
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
