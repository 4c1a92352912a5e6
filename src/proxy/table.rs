//! The commands the proxy knows by name, one line each: how it is routed, whether it may
//! be sent before `AUTH`, what a transaction does with it, and who may run it.
//! [`super::router`] acts on the route; the transaction check and the ACL check
//! ([`super::local::forbidden`]) read the same line.
//!
//! A command with no line is routed by the server's own table (`routing::command`: where
//! its keys are, its flags, whether it may run twice, whether it blocks), so a command the
//! server adds with key specs needs none.

use std::sync::OnceLock;

use rustc_hash::FxHashMap;

use crate::protocol::Request;

/// What the proxy does with one command it knows by name.
#[derive(Debug)]
pub struct Entry {
    pub name: &'static str,
    pub route: Route,
    /// It may be sent before the client has authenticated.
    pub before_auth: bool,
    pub multi: Multi,
    pub acl: Acl,
}

/// How a command is routed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Route {
    // Answered by the proxy, about the client's own connection.
    Reset,
    Ping,
    Echo,
    Quit,
    Select,
    Auth,
    Hello,
    /// CLIENT: the proxy's clients, tracking, or the client's own connection.
    Client,
    /// READONLY, READWRITE, ASKING: connection flags the proxy keeps itself.
    ConnectionFlag,
    /// SLOTGUARD: moves of slots (`cluster::mover`).
    Slotguard,
    /// CLUSTER: the proxy's view; key counts from the slot's owner.
    Cluster,
    // Split by slot, merged.
    MGet,
    MSet,
    /// DEL, UNLINK, EXISTS, TOUCH: their counts summed.
    Counted,
    // Every master, merged.
    /// DBSIZE, KEYS, FLUSHALL, FLUSHDB, RANDOMKEY, SCAN, SCRIPT, INFO.
    WholeCluster,
    PubsubIntrospection,
    /// LATENCY, SLOWLOG.
    Diagnostics,
    Publish,
    /// CONFIG: SET, RESETSTAT and REWRITE to every node; GET from one.
    Config,
    /// FUNCTION: LOAD, DELETE, FLUSH, RESTORE to every master (and remembered); KILL on
    /// connections of their own.
    Function,
    Command,
    // Transactions.
    Multi,
    Exec,
    Discard,
    Watch,
    Unwatch,
    // The session changes mode.
    Subscribe,
    Unsubscribe,
    Monitor,
    /// WAIT: carried out by the proxy.
    Wait,
    /// Refused, with the reason.
    Refused(&'static str),
    /// By the server's table: its keys' slot, or any master.
    Keyed,
}

/// What a transaction (between MULTI and EXEC) does with a command.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Multi {
    /// Queued, and sent with the transaction.
    Queue,
    /// Refused, and the transaction fails (EXECABORT): answered by the proxy or spread over
    /// nodes, it cannot run in a transaction that runs on one node.
    Refuse,
    /// Refused, and the transaction stays as it was (WATCH, as on a node).
    NotInside,
    /// Runs at once, in a transaction or not (MULTI, EXEC, DISCARD, QUIT, RESET).
    Now,
}

/// Who may run a command, beyond authenticating (`[[users]]`' access).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Acl {
    /// By the server's flags: a read-only user may not run a write.
    Flags,
    /// It may write whatever its flags say (scripts, functions): not for read-only users.
    Writes,
    /// Admin users only: it wipes data, or touches the nodes' settings, their diagnostics
    /// (which show other clients' commands) or other clients.
    Admin,
    /// By its subcommand (the second argument); `other` for any not listed.
    BySub {
        subs: &'static [(&'static str, Acl)],
        other: &'static Acl,
    },
}

impl Acl {
    /// The class that applies to `req` (a [`Acl::BySub`] resolved).
    pub fn of(self, req: &Request) -> Acl {
        match self {
            Acl::BySub { subs, other } => {
                let sub: &[u8] = if req.len() > 1 { req.arg(1) } else { b"" };
                subs.iter()
                    .find(|(name, _)| sub.eq_ignore_ascii_case(name.as_bytes()))
                    .map_or(*other, |(_, acl)| *acl)
                    .of(req)
            }
            acl => acl,
        }
    }
}

const fn entry(name: &'static str, route: Route, multi: Multi, acl: Acl) -> Entry {
    Entry {
        name,
        route,
        before_auth: false,
        multi,
        acl,
    }
}

const fn pre_auth(name: &'static str, route: Route, multi: Multi) -> Entry {
    Entry {
        name,
        route,
        before_auth: true,
        multi,
        acl: Acl::Flags,
    }
}

const TAKES_OVER: Route = Route::Refused("it takes over the connection");
const ONE_DATABASE: Route = Route::Refused("a cluster has only database 0");

use Acl::{Admin, Flags, Writes};
use Multi::{Now, Queue, Refuse};

/// Every command the proxy knows by name, sorted by name (kept so for the reader; a test
/// checks it).
static TABLE: &[Entry] = &[
    entry("ASKING", Route::ConnectionFlag, Queue, Flags),
    pre_auth("AUTH", Route::Auth, Refuse),
    entry(
        "CLIENT",
        Route::Client,
        Refuse,
        Acl::BySub {
            subs: &[
                ("KILL", Admin),
                ("UNBLOCK", Admin),
                ("PAUSE", Admin),
                ("UNPAUSE", Admin),
            ],
            other: &Flags,
        },
    ),
    entry("CLUSTER", Route::Cluster, Refuse, Flags),
    entry("COMMAND", Route::Command, Refuse, Flags),
    entry("CONFIG", Route::Config, Refuse, Admin),
    entry("DBSIZE", Route::WholeCluster, Refuse, Flags),
    entry("DEBUG", Route::Keyed, Queue, Admin),
    entry("DEL", Route::Counted, Queue, Flags),
    entry("DISCARD", Route::Discard, Now, Flags),
    entry("ECHO", Route::Echo, Queue, Flags),
    entry("EVAL", Route::Keyed, Queue, Writes),
    entry("EVALSHA", Route::Keyed, Queue, Writes),
    entry("EXEC", Route::Exec, Now, Flags),
    entry("EXISTS", Route::Counted, Queue, Flags),
    entry("FCALL", Route::Keyed, Queue, Writes),
    entry("FLUSHALL", Route::WholeCluster, Queue, Admin),
    entry("FLUSHDB", Route::WholeCluster, Queue, Admin),
    entry(
        "FUNCTION",
        Route::Function,
        Queue,
        Acl::BySub {
            subs: &[
                ("FLUSH", Admin),
                ("DELETE", Admin),
                ("LOAD", Admin),
                ("RESTORE", Admin),
            ],
            other: &Writes,
        },
    ),
    pre_auth("HELLO", Route::Hello, Refuse),
    entry("INFO", Route::WholeCluster, Refuse, Flags),
    entry("KEYS", Route::WholeCluster, Refuse, Flags),
    entry("LATENCY", Route::Diagnostics, Refuse, Admin),
    entry("MGET", Route::MGet, Queue, Flags),
    entry("MONITOR", Route::Monitor, Queue, Admin),
    entry("MOVE", ONE_DATABASE, Queue, Flags),
    entry("MSET", Route::MSet, Queue, Flags),
    entry("MULTI", Route::Multi, Now, Flags),
    entry("PING", Route::Ping, Queue, Flags),
    entry("PSUBSCRIBE", Route::Subscribe, Queue, Flags),
    entry("PSYNC", TAKES_OVER, Queue, Flags),
    entry("PUBLISH", Route::Publish, Queue, Flags),
    entry("PUBSUB", Route::PubsubIntrospection, Queue, Flags),
    entry("PUNSUBSCRIBE", Route::Unsubscribe, Queue, Flags),
    pre_auth("QUIT", Route::Quit, Now),
    entry("RANDOMKEY", Route::WholeCluster, Refuse, Flags),
    entry("READONLY", Route::ConnectionFlag, Refuse, Flags),
    entry("READWRITE", Route::ConnectionFlag, Refuse, Flags),
    entry("REPLCONF", TAKES_OVER, Queue, Flags),
    // Runs at once, before AUTH and inside MULTI too, as on a node; it changes this
    // client's state only (see `Client::reset`).
    pre_auth("RESET", Route::Reset, Now),
    entry("SCAN", Route::WholeCluster, Refuse, Flags),
    entry(
        "SCRIPT",
        Route::WholeCluster,
        Refuse,
        Acl::BySub {
            subs: &[("FLUSH", Admin), ("EXISTS", Flags)],
            other: &Writes,
        },
    ),
    entry("SELECT", Route::Select, Refuse, Flags),
    entry("SLOTGUARD", Route::Slotguard, Refuse, Flags),
    entry("SLOWLOG", Route::Diagnostics, Refuse, Admin),
    entry("SSUBSCRIBE", Route::Subscribe, Queue, Flags),
    entry("SUBSCRIBE", Route::Subscribe, Queue, Flags),
    entry("SUNSUBSCRIBE", Route::Unsubscribe, Queue, Flags),
    entry("SWAPDB", ONE_DATABASE, Queue, Flags),
    entry("SYNC", TAKES_OVER, Queue, Flags),
    entry("TOUCH", Route::Counted, Queue, Flags),
    entry("UNLINK", Route::Counted, Queue, Flags),
    entry("UNSUBSCRIBE", Route::Unsubscribe, Queue, Flags),
    entry("UNWATCH", Route::Unwatch, Refuse, Flags),
    entry("WAIT", Route::Wait, Queue, Flags),
    entry(
        "WAITAOF",
        Route::Refused("it waits on one connection of one node"),
        Queue,
        Flags,
    ),
    entry("WATCH", Route::Watch, Multi::NotInside, Flags),
];

/// The line for a command name, upper-cased. Every request asks, and most (GET, SET,
/// ...) have none: one hash and at most one comparison, not a search of the table.
pub fn lookup(name: &[u8]) -> Option<&'static Entry> {
    static INDEX: OnceLock<FxHashMap<&'static [u8], &'static Entry>> = OnceLock::new();
    INDEX
        .get_or_init(|| TABLE.iter().map(|e| (e.name.as_bytes(), e)).collect())
        .get(name)
        .copied()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_is_sorted_and_names_each_command_once() {
        for pair in TABLE.windows(2) {
            assert!(
                pair[0].name < pair[1].name,
                "{} / {}",
                pair[0].name,
                pair[1].name
            );
        }
        for e in TABLE {
            assert_eq!(e.name, e.name.to_ascii_uppercase());
            assert!(std::ptr::eq(lookup(e.name.as_bytes()).unwrap(), e));
        }
        assert!(lookup(b"GET").is_none(), "routed by the server's table");
    }

    #[test]
    fn a_subcommand_picks_its_class() {
        let req = |args: &[&str]| Request::from_args(args);
        let function = lookup(b"FUNCTION").unwrap().acl;
        assert_eq!(function.of(&req(&["FUNCTION", "flush"])), Acl::Admin);
        assert_eq!(function.of(&req(&["FUNCTION", "LIST"])), Acl::Writes);
        assert_eq!(function.of(&req(&["FUNCTION"])), Acl::Writes);
        let script = lookup(b"SCRIPT").unwrap().acl;
        assert_eq!(script.of(&req(&["SCRIPT", "EXISTS", "x"])), Acl::Flags);
        let client = lookup(b"CLIENT").unwrap().acl;
        assert_eq!(client.of(&req(&["CLIENT", "kill", "x"])), Acl::Admin);
        assert_eq!(client.of(&req(&["CLIENT", "SETNAME", "x"])), Acl::Flags);
    }
}
