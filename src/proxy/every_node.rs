//! Commands for every node of the cluster, sent on request-reply connections from the
//! proxy's pool rather than the shared ones (where a node busy with a script would never
//! read them), at once, to every node of the cluster that the cluster has not failed.
//!
//! - `CONFIG SET`, `CONFIG RESETSTAT` and `CONFIG REWRITE` go to every node, replicas
//!   included (a replica promoted later must behave the same). The answer is `+OK` when
//!   every node said so; otherwise the first error, in node order, with the node's
//!   address after it. Each node is waited for up to `hold.timeout`; one that does not
//!   answer by then is named.
//! - `SCRIPT KILL` and `FUNCTION KILL` go to every master: the script runs on one. The
//!   answer is `+OK` when one master killed it, otherwise the first error (`NOTBUSY`).

use std::sync::Arc;

use bytes::Bytes;
use tokio::sync::oneshot;
use tokio::task::JoinSet;

use super::Proxy;
use crate::client::Failure;
use crate::protocol::{reply, Request, Value};
use crate::routing::status::{Health, Role};

/// Which nodes hear a command, and what the client is told.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reach {
    /// Every node: `+OK` when all said so.
    EveryNode,
    /// Every master: `+OK` when any said so.
    AnyMaster,
}

/// Sends `req` where `reach` says and answers on `reply_to`.
pub fn start(proxy: Arc<Proxy>, req: Request, reach: Reach, reply_to: oneshot::Sender<Bytes>) {
    tokio::spawn(async move {
        let answer = run(proxy, &req, reach).await;
        let _ = reply_to.send(answer);
    });
}

async fn run(proxy: Arc<Proxy>, req: &Request, reach: Reach) -> Bytes {
    let mut addrs: Vec<String> = proxy
        .routing
        .status
        .load()
        .view
        .nodes
        .iter()
        // A node that has not answered the proxy yet, or answers it only BUSY (running a
        // script), is still a node of the cluster; one the cluster failed is not.
        .filter(|n| n.health != Health::Fail)
        .filter(|n| reach == Reach::EveryNode || n.role == Role::Master)
        .map(|n| n.addr.clone())
        .collect();
    addrs.sort();
    if addrs.is_empty() {
        return reply::error(
            "CLUSTERDOWN slotguard: no node is known yet (is any seed reachable?)",
        );
    }
    let args: Arc<Vec<Bytes>> = Arc::new((0..req.len()).map(|i| req.arg_bytes(i)).collect());
    let dial = proxy.config().dial();
    // A node may take a while (a fork, a big CONFIG REWRITE, a busy replica): each is
    // waited for up to `hold.timeout`, and named if it gives no answer by then.
    let limit = proxy.config().hold_timeout;
    let mut calls = JoinSet::new();
    for (i, addr) in addrs.iter().enumerate() {
        let (addr, args, dial) = (addr.clone(), args.clone(), dial.clone());
        let proxy = proxy.clone();
        calls.spawn(async move {
            let Some(mut conn) = proxy.pool.take(&addr, &dial).await else {
                return (i, Err(Failure::Io("cannot connect".to_string())));
            };
            let answer = conn.call_within(&args, limit).await;
            if answer.is_ok() {
                proxy.pool.give(conn);
            }
            (i, answer.map_err(|e| e.failure))
        });
    }
    let mut answers: Vec<Option<Result<Value, Failure>>> = vec![None; addrs.len()];
    while let Some(done) = calls.join_next().await {
        if let Ok((i, answer)) = done {
            answers[i] = Some(answer);
        }
    }
    if reach == Reach::AnyMaster {
        if answers
            .iter()
            .any(|a| matches!(a, Some(Ok(Value::Simple(_)))))
        {
            return Bytes::from_static(reply::OK);
        }
        if let Some(Some(Ok(Value::Error(text)))) = answers
            .iter()
            .find(|a| matches!(a, Some(Ok(Value::Error(_)))))
        {
            return reply::error(&String::from_utf8_lossy(text));
        }
    }
    for (addr, answer) in addrs.iter().zip(answers) {
        match answer {
            Some(Ok(Value::Simple(_))) => {}
            Some(Ok(Value::Error(text))) => {
                return reply::error(&format!("{} (node {addr})", String::from_utf8_lossy(&text)));
            }
            Some(Ok(other)) => {
                return reply::error(&format!("ERR slotguard: node {addr} answered {other:?}"))
            }
            Some(Err(why)) => {
                return reply::error(&format!("ERR slotguard: node {addr} did not answer: {why}"))
            }
            None => return reply::error(&format!("ERR slotguard: node {addr} did not answer")),
        }
    }
    Bytes::from_static(reply::OK)
}
