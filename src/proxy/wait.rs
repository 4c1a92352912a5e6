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
//!
//! The offsets are read on request-reply connections ([`Conn`]) kept in a [`Pool`], so a
//! client that WAITs after every write costs no connection set-up each time.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::sync::oneshot;

use super::Proxy;
use crate::client::{Conn, Dial, Pool};
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
    let every = wait.slots.is_empty() || wait.slots.contains(&super::client::EVERY_MASTER);
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
    let pool = &proxy.pool;
    // What each master had reached once the client's writes were answered; a master whose
    // offset cannot be read makes the answer 0, as a WAIT that saw no replica would.
    let mut masters: Vec<Master> = Vec::new();
    for addr in addrs {
        match Master::start(pool, &addr, &dial).await {
            Some(master) => masters.push(master),
            None => {
                masters.clear();
                break;
            }
        }
    }
    let acked = if masters.is_empty() {
        0
    } else {
        poll(&mut masters, &wait, started).await
    };
    for master in masters.into_iter().filter(|m| m.answers) {
        pool.give(master.conn);
    }
    let _ = wait.reply.send(reply::int(acked));
}

/// A master a WAIT waits on.
struct Master {
    conn: Conn,
    /// Its replication offset when the WAIT started.
    target: i64,
    /// Its last call answered: the connection may go back to the pool.
    answers: bool,
}

impl Master {
    /// Reads the master's offset, on a pooled connection if one still answers.
    async fn start(pool: &Pool, addr: &str, dial: &Dial) -> Option<Master> {
        let mut conn = pool.take(addr, dial).await?;
        let offset = match replication(&mut conn).await {
            Some((offset, _)) => offset,
            None => {
                // A pooled connection may have gone stale (a restarted node): one new try.
                conn = Conn::dial(addr, dial).await.ok()?;
                replication(&mut conn).await?.0
            }
        };
        Some(Master {
            conn,
            target: offset,
            answers: true,
        })
    }
}

/// Polls until enough replicas of every master acknowledged its offset, the timeout
/// passes, or the client is gone; the fewest replicas that did, over the masters.
async fn poll(masters: &mut [Master], wait: &Wait, started: Instant) -> i64 {
    let mut pause = POLL_FIRST;
    loop {
        let mut least = i64::MAX;
        for master in masters.iter_mut() {
            let acked = match replication(&mut master.conn).await {
                Some((_, replicas)) => {
                    replicas.iter().filter(|&&o| o >= master.target).count() as i64
                }
                None => {
                    master.answers = false;
                    0
                }
            };
            least = least.min(acked);
        }
        let expired = wait.timeout.is_some_and(|t| started.elapsed() >= t);
        if least >= wait.replicas || expired || wait.reply.is_closed() {
            return least;
        }
        let left = wait
            .timeout
            .map_or(pause, |t| t.saturating_sub(started.elapsed()));
        tokio::time::sleep(pause.min(left)).await;
        pause = (pause * 2).min(POLL_MAX);
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
