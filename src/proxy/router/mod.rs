//! Routing: what to do with one client request.
//!
//! - answered by the proxy (PING, AUTH, CLIENT, CLUSTER views, ...): [`local`];
//! - one slot: the keys' common slot (multi-key commands across slots get `CROSSSLOT`);
//! - split by slot and merged (MGET, MSET, DEL, UNLINK, EXISTS, TOUCH);
//! - every master, merged (DBSIZE, KEYS, SCAN, FLUSHALL, RANDOMKEY, SCRIPT, INFO);
//! - any master (keyless commands);
//! - refused with a clear error (commands that need a connection of their own).
//!
//! The route of each command is its line in [`super::table`]; the families act on it:
//! [`send`] (one node, split by slot, every master, refusals), [`transaction`] (MULTI,
//! EXEC, WATCH), [`cluster_wide`] (what every master answers, merged) and [`server`]
//! (CONFIG, FUNCTION, CLIENT, WAIT, SLOTGUARD).

mod cluster_wide;
mod send;
mod server;
mod transaction;

use cluster_wide::*;
use send::*;
use server::*;
use transaction::*;

use bytes::Bytes;
use tokio::sync::oneshot;

use super::client::{Client, Tx};
use super::every_node::Reach;
use super::fan::SplitKind;
use super::local;
use super::merge::{Join, Merge};
use super::owed::{Pending, Start};
use super::table::{self, Multi, Route};
use super::Proxy;
use crate::config::Access;
use crate::metrics::Class;
use crate::protocol::{reply, Request};
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
