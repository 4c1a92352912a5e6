//! WAIT through the proxy.
//!
//! A node's WAIT counts the replicas that acknowledged the writes of the connection it
//! arrives on, and a client's writes travel on connections shared with other clients; a
//! WAIT there would stall them all until its timeout. So the proxy waits itself: once the
//! client's earlier replies are in (WAIT takes its turn), it reads the replication offset
//! each master written to has reached, then polls `INFO replication` until enough of that
//! master's replicas acknowledged it. The answer, like Redis's, is the number of replicas
//! that did (the fewest over the masters involved). Replicas acknowledge once a second
//! unless a node's own WAIT asks sooner, so a WAIT through the proxy may take up to a
//! second longer than on a single node.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::sync::oneshot;

use super::Proxy;
use crate::cluster::conn::Conn;
use crate::protocol::{reply, Value};

/// How often acknowledgements are looked at: at first, then at most (a long WAIT costs
/// its masters a few INFO calls a second, not a hundred).
const POLL_FIRST: Duration = Duration::from_millis(10);
const POLL_MAX: Duration = Duration::from_millis(200);

/// A WAIT to carry out.
pub struct Wait {
    /// Slots the client wrote to since its last WAIT; empty or `EVERY_MASTER`: every master.
    pub slots: Vec<u16>,
    pub replicas: i64,
    /// `None`: until enough replicas acknowledged (WAIT ... 0).
    pub timeout: Option<Duration>,
    pub reply: oneshot::Sender<Bytes>,
}

pub fn start(proxy: Arc<Proxy>, wait: Wait) {
    tokio::spawn(run(proxy, wait));
}

async fn run(proxy: Arc<Proxy>, wait: Wait) {
    let started = Instant::now();
    let table = proxy.table.load_full();
    let every = wait.slots.is_empty() || wait.slots.contains(&super::router::EVERY_MASTER);
    let mut addrs: Vec<String> = if every {
        table.masters().map(|(_, n)| n.addr.clone()).collect()
    } else {
        wait.slots
            .iter()
            .filter_map(|&s| table.owner(s).map(|n| n.addr.clone()))
            .collect()
    };
    addrs.sort();
    addrs.dedup();
    let dial = proxy.config().dial();
    // What each master had reached once the client's writes were answered.
    let mut masters = Vec::new();
    for addr in addrs {
        let Ok(mut conn) = Conn::dial(&addr, &dial).await else {
            let _ = wait.reply.send(reply::int(0));
            return;
        };
        let Some(offset) = replication(&mut conn).await.map(|r| r.0) else {
            let _ = wait.reply.send(reply::int(0));
            return;
        };
        masters.push((conn, offset));
    }
    let mut poll = POLL_FIRST;
    loop {
        let mut least = i64::MAX;
        for (conn, target) in &mut masters {
            let acked = match replication(conn).await {
                Some((_, replicas)) => replicas.iter().filter(|&&o| o >= *target).count() as i64,
                None => 0,
            };
            least = least.min(acked);
        }
        let least = if least == i64::MAX { 0 } else { least };
        let expired = wait.timeout.is_some_and(|t| started.elapsed() >= t);
        if least >= wait.replicas || expired || wait.reply.is_closed() {
            let _ = wait.reply.send(reply::int(least));
            return;
        }
        let left = wait
            .timeout
            .map_or(poll, |t| t.saturating_sub(started.elapsed()));
        tokio::time::sleep(poll.min(left)).await;
        poll = (poll * 2).min(POLL_MAX);
    }
}

/// A master's replication offset, and the offset each online replica acknowledged.
async fn replication(conn: &mut Conn) -> Option<(i64, Vec<i64>)> {
    let Ok(Value::Bulk(info)) = conn.call(&["INFO", "replication"]).await else {
        return None;
    };
    let info = String::from_utf8_lossy(&info);
    let mut offset = None;
    let mut replicas = Vec::new();
    for line in info.lines() {
        if let Some(v) = line.strip_prefix("master_repl_offset:") {
            offset = v.trim().parse().ok();
        } else if line.starts_with("slave") && line.contains("state=online") {
            let acked: Option<i64> = line
                .split(',')
                .find_map(|f| f.strip_prefix("offset="))
                .and_then(|v| v.trim().parse().ok());
            replicas.extend(acked);
        }
    }
    Some((offset?, replicas))
}
